//! One view of a disk's volumes: its partitions with the filesystems probed on them, or the
//! whole disk when it has no partition table, and the choice of one volume by a
//! [`PartitionSelector`].

use std::fmt;
use std::io::{self, Read, Seek};

use crate::fsprobe::{probe_filesystem, FsInfo};
use crate::image::PartitionSelector;
use crate::partition::{read_partition_table, Partition, PartitionError};

/// A place on the disk that may hold a filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The partition, or `None` for a whole-disk filesystem.
    pub partition: Option<Partition>,
    /// Start on the disk, in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// The filesystem found on it, if one was recognised.
    pub fs: Option<FsInfo>,
}

impl Volume {
    /// Describes the volume for messages: `partition 2` or `the whole disk`.
    pub fn describe(&self) -> String {
        match &self.partition {
            Some(partition) => format!("partition {}", partition.number),
            None => "the whole disk".into(),
        }
    }
}

/// Errors from listing a disk's volumes or choosing one.
#[derive(Debug, thiserror::Error)]
pub enum LayoutError {
    /// The partition table could not be read or is invalid.
    #[error("reading the partition table failed")]
    ReadingPartitionTable(#[source] PartitionError),
    /// Reading a volume's superblock failed.
    #[error("probing the filesystem of {volume} at byte {offset} failed")]
    ProbingFilesystem {
        volume: String,
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// The whole disk was requested, but the disk is partitioned.
    #[error("the whole disk was requested (partition none), but the disk has a partition table with {}; choose a partition", PartitionList(.partitions))]
    DiskIsPartitioned { partitions: Vec<u32> },
    /// The whole disk was requested and has no partition table, but no filesystem on it
    /// was recognised.
    #[error("the whole disk has no partition table and no filesystem that can be recognised")]
    NoWholeDiskFilesystem,
    /// A partition number was requested, but the disk has no partition table.
    #[error("partition {number} not found; the disk has no partition table (use partition none for the whole disk)")]
    NoPartitionTable { number: u32 },
    /// A partition number was requested that the table does not have.
    #[error("partition {number} not found; the disk has {}", PartitionList(.partitions))]
    PartitionNotFound { number: u32, partitions: Vec<u32> },
    /// The requested partition contains no recognised filesystem.
    #[error("partition {number} has no filesystem that can be recognised (type {type_id})")]
    NoFilesystem { number: u32, type_id: String },
    /// No filesystem has the requested label or UUID.
    #[error("no filesystem has {selector}; found {}", FilesystemList(.found))]
    NoMatch {
        selector: String,
        found: Vec<String>,
    },
    /// More than one filesystem has the requested label or UUID.
    #[error("{selector} matches more than one filesystem: {}", .matches.join(", "))]
    AmbiguousMatch {
        selector: String,
        matches: Vec<String>,
    },
    /// `auto` cannot be settled from the layout alone.
    #[error(
        "partition auto needs the backend to inspect the filesystems for an operating system root"
    )]
    AutoNeedsInspection,
}

/// Formats a list of partition numbers: `partitions 1, 2`, `partition 1` or `no partitions`.
struct PartitionList<'a>(&'a [u32]);

impl fmt::Display for PartitionList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            [] => f.write_str("no partitions"),
            [only] => write!(f, "partition {only}"),
            numbers => {
                f.write_str("partitions ")?;
                for (index, number) in numbers.iter().enumerate() {
                    if index > 0 {
                        f.write_str(", ")?;
                    }
                    write!(f, "{number}")?;
                }
                Ok(())
            }
        }
    }
}

/// Formats the filesystems found, for a failed label or UUID match.
struct FilesystemList<'a>(&'a [String]);

impl fmt::Display for FilesystemList<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            f.write_str("no recognised filesystems")
        } else {
            f.write_str(&self.0.join(", "))
        }
    }
}

/// Lists the volumes of a disk of `disk_size` bytes: every partition with the filesystem
/// probed on it, or one whole-disk volume when the disk has no partition table.
pub fn list_volumes<R: Read + Seek>(
    disk: &mut R,
    disk_size: u64,
) -> Result<Vec<Volume>, LayoutError> {
    let table =
        read_partition_table(disk, disk_size).map_err(LayoutError::ReadingPartitionTable)?;
    let Some(table) = table else {
        let fs = probe_volume(disk, "the whole disk", 0, disk_size)?;
        return Ok(vec![Volume {
            partition: None,
            offset: 0,
            size: disk_size,
            fs,
        }]);
    };

    let mut volumes = Vec::with_capacity(table.partitions.len());
    for partition in table.partitions {
        let name = format!("partition {}", partition.number);
        let fs = probe_volume(disk, &name, partition.offset, partition.size)?;
        volumes.push(Volume {
            offset: partition.offset,
            size: partition.size,
            partition: Some(partition),
            fs,
        });
    }
    Ok(volumes)
}

fn probe_volume<R: Read + Seek>(
    disk: &mut R,
    name: &str,
    offset: u64,
    size: u64,
) -> Result<Option<FsInfo>, LayoutError> {
    probe_filesystem(disk, offset, size).map_err(|source| LayoutError::ProbingFilesystem {
        volume: name.to_owned(),
        offset,
        source,
    })
}

/// Chooses the volume that `selector` names among those from [`list_volumes`].
///
/// - `None` is the whole-disk volume, and an error on a partitioned disk.
/// - `Number(n)` is partition `n`, which must hold a recognised filesystem.
/// - `Label` and `Uuid` match the filesystem's label (exactly) or UUID (without regard to
///   case) and must match exactly one volume.
/// - `Auto` is an error: only a backend that can look inside the filesystems can settle it.
pub fn select_volume<'a>(
    volumes: &'a [Volume],
    selector: &PartitionSelector,
) -> Result<&'a Volume, LayoutError> {
    let numbers = || -> Vec<u32> {
        volumes
            .iter()
            .filter_map(|volume| volume.partition.as_ref().map(|p| p.number))
            .collect()
    };
    let whole_disk = volumes.iter().find(|volume| volume.partition.is_none());

    match selector {
        PartitionSelector::Auto => Err(LayoutError::AutoNeedsInspection),
        PartitionSelector::None => match whole_disk {
            Some(volume) if volume.fs.is_some() => Ok(volume),
            Some(_) => Err(LayoutError::NoWholeDiskFilesystem),
            None => Err(LayoutError::DiskIsPartitioned {
                partitions: numbers(),
            }),
        },
        PartitionSelector::Number(number) => {
            if whole_disk.is_some() {
                return Err(LayoutError::NoPartitionTable { number: *number });
            }
            let volume = volumes
                .iter()
                .find(|volume| volume.partition.as_ref().map(|p| p.number) == Some(*number))
                .ok_or_else(|| LayoutError::PartitionNotFound {
                    number: *number,
                    partitions: numbers(),
                })?;
            if volume.fs.is_none() {
                let type_id = volume
                    .partition
                    .as_ref()
                    .map(|p| p.type_id.clone())
                    .unwrap_or_default();
                return Err(LayoutError::NoFilesystem {
                    number: *number,
                    type_id,
                });
            }
            Ok(volume)
        }
        PartitionSelector::Label(label) => select_by(volumes, &selector.to_string(), |fs| {
            fs.label.as_deref() == Some(label.as_str())
        }),
        PartitionSelector::Uuid(uuid) => select_by(volumes, &selector.to_string(), |fs| {
            fs.uuid
                .as_deref()
                .is_some_and(|found| found.eq_ignore_ascii_case(uuid))
        }),
    }
}

/// Returns the one volume whose filesystem satisfies `matches`.
fn select_by<'a>(
    volumes: &'a [Volume],
    selector: &str,
    matches: impl Fn(&FsInfo) -> bool,
) -> Result<&'a Volume, LayoutError> {
    let found: Vec<&Volume> = volumes
        .iter()
        .filter(|volume| volume.fs.as_ref().is_some_and(&matches))
        .collect();
    match found.as_slice() {
        [only] => Ok(only),
        [] => Err(LayoutError::NoMatch {
            selector: selector.to_owned(),
            found: volumes.iter().filter_map(summarize_filesystem).collect(),
        }),
        several => Err(LayoutError::AmbiguousMatch {
            selector: selector.to_owned(),
            matches: several.iter().map(|volume| volume.describe()).collect(),
        }),
    }
}

/// Summarizes a volume's filesystem for a message: `partition 2 (ext4, label root, uuid
/// ...)`; `None` when it has no recognised filesystem.
fn summarize_filesystem(volume: &Volume) -> Option<String> {
    let fs = volume.fs.as_ref()?;
    let mut text = format!("{} ({}", volume.describe(), fs.fs_type);
    if let Some(label) = &fs.label {
        text.push_str(&format!(", label {label:?}"));
    }
    if let Some(uuid) = &fs.uuid {
        text.push_str(&format!(", uuid {uuid}"));
    }
    text.push(')');
    Some(text)
}

/// Running the host's partitioning, mkfs and blkid tools from tests. A missing tool fails
/// the test with the package to install, because a skipped comparison would pass silently.
#[cfg(test)]
pub(crate) mod host_tools {
    use std::collections::HashMap;
    use std::ffi::OsStr;
    use std::io::Write;
    use std::path::{Path, PathBuf};
    use std::process::{Command, Stdio};

    /// Finds `name` in `PATH`, then in `/usr/sbin` and `/sbin`, which a non-root `PATH`
    /// often lacks.
    pub(crate) fn tool_path(name: &str, package: &str) -> PathBuf {
        let path = std::env::var_os("PATH").unwrap_or_default();
        let mut dirs: Vec<PathBuf> = std::env::split_paths(&path).collect();
        dirs.extend([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")]);
        dirs.into_iter()
            .map(|dir| dir.join(name))
            .find(|candidate| candidate.is_file())
            .unwrap_or_else(|| {
                panic!("{name} not found in PATH, /usr/sbin or /sbin; install {package} to run this test")
            })
    }

    /// Runs a tool with `args` and `stdin`, and returns its standard output; panics with
    /// the tool's standard error when it fails.
    pub(crate) fn run<S: AsRef<OsStr>>(
        name: &str,
        package: &str,
        args: &[S],
        stdin: &str,
    ) -> String {
        let mut child = Command::new(tool_path(name, package))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|err| panic!("starting {name} failed: {err}"));
        child
            .stdin
            .take()
            .expect("stdin is piped")
            .write_all(stdin.as_bytes())
            .unwrap_or_else(|err| panic!("writing to {name} failed: {err}"));
        let output = child
            .wait_with_output()
            .unwrap_or_else(|err| panic!("waiting for {name} failed: {err}"));
        assert!(
            output.status.success(),
            "{name} failed with {}: {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Creates a sparse file of `size` bytes.
    pub(crate) fn sparse_file(dir: &Path, name: &str, size: u64) -> PathBuf {
        let path = dir.join(name);
        let file = std::fs::File::create(&path).expect("creating a sparse file");
        file.set_len(size).expect("sizing a sparse file");
        path
    }

    /// Returns the `KEY=value` pairs of `blkid -p -o export FILE`, or of the range at
    /// `offset` when given.
    pub(crate) fn blkid(file: &Path, offset: Option<u64>) -> HashMap<String, String> {
        let mut args = vec!["-p".to_owned(), "-o".into(), "export".into()];
        if let Some(offset) = offset {
            args.extend(["-O".to_owned(), offset.to_string()]);
        }
        args.push(file.display().to_string());
        run("blkid", "util-linux", &args, "")
            .lines()
            .filter_map(|line| line.split_once('='))
            .map(|(key, value)| (key.to_owned(), value.to_owned()))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use std::io::{Cursor, Seek, SeekFrom};
    use std::path::Path;

    use super::host_tools::{blkid, run, sparse_file};
    use super::*;
    use crate::fsprobe::test_superblocks::{put_ext_superblock, EXT4_FEATURES};
    use crate::partition::test_images::{gpt_disk, GptEntry, BIOS_BOOT_TYPE, LINUX_FS_TYPE};
    use crate::partition::TableKind;

    const ROOT_UUID: [u8; 16] = [0xAB; 16];
    const ROOT_UUID_TEXT: &str = "abababab-abab-abab-abab-abababababab";

    /// A 256-sector GPT disk: a BIOS boot partition 1 (sectors 40..=99) and a Linux
    /// partition 2 (sectors 100..=199) holding ext4 labelled `root`.
    fn gpt_with_root() -> Vec<u8> {
        let mut disk = gpt_disk(
            256,
            &[
                GptEntry {
                    index: 0,
                    type_guid: BIOS_BOOT_TYPE,
                    first_lba: 40,
                    last_lba: 99,
                    name: "bios",
                },
                GptEntry {
                    index: 1,
                    type_guid: LINUX_FS_TYPE,
                    first_lba: 100,
                    last_lba: 199,
                    name: "linux",
                },
            ],
        );
        put_ext_superblock(&mut disk, 100 * 512, EXT4_FEATURES, b"root", ROOT_UUID);
        disk
    }

    fn volumes_of(disk: &[u8]) -> Vec<Volume> {
        list_volumes(&mut Cursor::new(disk), disk.len() as u64).unwrap()
    }

    #[test]
    fn unpartitioned_disk_is_one_whole_disk_volume() {
        let mut disk = vec![0u8; 64 * 1024];
        put_ext_superblock(&mut disk, 0, EXT4_FEATURES, b"root", ROOT_UUID);
        let volumes = volumes_of(&disk);

        assert_eq!(volumes.len(), 1);
        assert_eq!(volumes[0].partition, None);
        assert_eq!(volumes[0].size, 64 * 1024);
        assert_eq!(volumes[0].fs.as_ref().unwrap().fs_type, "ext4");
        let chosen = select_volume(&volumes, &PartitionSelector::None).unwrap();
        assert_eq!(chosen.offset, 0);
    }

    #[test]
    fn partition_number_on_unpartitioned_disk_is_rejected() {
        let mut disk = vec![0u8; 64 * 1024];
        put_ext_superblock(&mut disk, 0, EXT4_FEATURES, b"root", ROOT_UUID);
        let err = select_volume(&volumes_of(&disk), &PartitionSelector::Number(1)).unwrap_err();
        assert!(
            matches!(err, LayoutError::NoPartitionTable { number: 1 }),
            "{err:?}"
        );
        assert!(err.to_string().contains("no partition table"), "{err}");
    }

    #[test]
    fn whole_disk_without_filesystem_is_rejected() {
        let disk = vec![0u8; 64 * 1024];
        let err = select_volume(&volumes_of(&disk), &PartitionSelector::None).unwrap_err();
        assert!(matches!(err, LayoutError::NoWholeDiskFilesystem), "{err:?}");
    }

    #[test]
    fn partitions_carry_their_filesystems() {
        let volumes = volumes_of(&gpt_with_root());

        assert_eq!(volumes.len(), 2);
        assert_eq!(volumes[0].fs, None);
        assert_eq!(volumes[1].offset, 100 * 512);
        assert_eq!(volumes[1].size, 100 * 512);
        let fs = volumes[1].fs.as_ref().unwrap();
        assert_eq!(fs.label.as_deref(), Some("root"));
        assert_eq!(
            volumes[1].partition.as_ref().unwrap().label.as_deref(),
            Some("linux")
        );
    }

    #[test]
    fn whole_disk_on_partitioned_disk_lists_partitions() {
        let err =
            select_volume(&volumes_of(&gpt_with_root()), &PartitionSelector::None).unwrap_err();
        assert!(
            matches!(err, LayoutError::DiskIsPartitioned { .. }),
            "{err:?}"
        );
        assert!(
            err.to_string()
                .contains("partition table with partitions 1, 2"),
            "{err}"
        );
    }

    #[test]
    fn missing_partition_number_lists_partitions() {
        let err = select_volume(&volumes_of(&gpt_with_root()), &PartitionSelector::Number(3))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "partition 3 not found; the disk has partitions 1, 2"
        );
    }

    #[test]
    fn bios_boot_partition_has_no_filesystem() {
        let err = select_volume(&volumes_of(&gpt_with_root()), &PartitionSelector::Number(1))
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "partition 1 has no filesystem that can be recognised (type 21686148-6E6F-6E6F-744E-656564454649)"
        );
    }

    #[test]
    fn number_label_and_uuid_select_the_same_volume() {
        let volumes = volumes_of(&gpt_with_root());
        let by_number = select_volume(&volumes, &PartitionSelector::Number(2)).unwrap();
        let by_label = select_volume(&volumes, &PartitionSelector::Label("root".into())).unwrap();
        let by_uuid = select_volume(
            &volumes,
            &PartitionSelector::Uuid(ROOT_UUID_TEXT.to_uppercase()),
        )
        .unwrap();

        assert_eq!(by_number.offset, 100 * 512);
        assert_eq!(by_label.offset, 100 * 512);
        assert_eq!(by_uuid.offset, 100 * 512);
    }

    #[test]
    fn unknown_label_lists_found_filesystems() {
        let volumes = volumes_of(&gpt_with_root());
        let err = select_volume(&volumes, &PartitionSelector::Label("home".into())).unwrap_err();
        assert!(matches!(err, LayoutError::NoMatch { .. }), "{err:?}");
        assert!(err.to_string().contains("label:home"), "{err}");
        assert!(
            err.to_string()
                .contains("partition 2 (ext4, label \"root\""),
            "{err}"
        );
    }

    #[test]
    fn duplicate_label_is_ambiguous() {
        let mut disk = gpt_disk(
            256,
            &[
                GptEntry {
                    index: 0,
                    type_guid: LINUX_FS_TYPE,
                    first_lba: 40,
                    last_lba: 99,
                    name: "",
                },
                GptEntry {
                    index: 1,
                    type_guid: LINUX_FS_TYPE,
                    first_lba: 100,
                    last_lba: 199,
                    name: "",
                },
            ],
        );
        put_ext_superblock(&mut disk, 40 * 512, EXT4_FEATURES, b"root", [1; 16]);
        put_ext_superblock(&mut disk, 100 * 512, EXT4_FEATURES, b"root", [2; 16]);
        let err = select_volume(&volumes_of(&disk), &PartitionSelector::Label("root".into()))
            .unwrap_err();
        assert!(matches!(err, LayoutError::AmbiguousMatch { .. }), "{err:?}");
        assert!(
            err.to_string().contains("partition 1, partition 2"),
            "{err}"
        );
    }

    #[test]
    fn auto_needs_backend_inspection() {
        let err =
            select_volume(&volumes_of(&gpt_with_root()), &PartitionSelector::Auto).unwrap_err();
        assert!(matches!(err, LayoutError::AutoNeedsInspection), "{err:?}");
    }

    #[test]
    fn invalid_table_is_a_layout_error() {
        let disk = gpt_disk(
            256,
            &[
                GptEntry {
                    index: 0,
                    type_guid: LINUX_FS_TYPE,
                    first_lba: 40,
                    last_lba: 120,
                    name: "",
                },
                GptEntry {
                    index: 1,
                    type_guid: LINUX_FS_TYPE,
                    first_lba: 100,
                    last_lba: 199,
                    name: "",
                },
            ],
        );
        let err = list_volumes(&mut Cursor::new(&disk), disk.len() as u64).unwrap_err();
        assert!(
            matches!(
                err,
                LayoutError::ReadingPartitionTable(PartitionError::Overlap { .. })
            ),
            "{err:?}"
        );
    }

    /// Copies the filesystem image `fs` into `disk` at byte `offset`.
    fn copy_into(disk: &Path, offset: u64, fs: &Path) {
        let mut target = std::fs::OpenOptions::new().write(true).open(disk).unwrap();
        target.seek(SeekFrom::Start(offset)).unwrap();
        std::io::copy(&mut std::fs::File::open(fs).unwrap(), &mut target).unwrap();
    }

    fn open_volumes(disk: &Path) -> Vec<Volume> {
        let size = std::fs::metadata(disk).unwrap().len();
        list_volumes(&mut std::fs::File::open(disk).unwrap(), size).unwrap()
    }

    /// Returns the `partitiontable` object of `sfdisk --json DISK`.
    fn sfdisk_json(disk: &Path) -> serde_json::Value {
        let text = run("sfdisk", "fdisk", &["--json", disk.to_str().unwrap()], "");
        let mut value: serde_json::Value = serde_json::from_str(&text).unwrap();
        value["partitiontable"].take()
    }

    /// Returns the partition number at the end of an sfdisk node name such as `disk.raw5`.
    fn node_number(partition: &serde_json::Value) -> u32 {
        let node = partition["node"].as_str().unwrap();
        let start = node.len() - node.chars().rev().take_while(char::is_ascii_digit).count();
        node[start..].parse().unwrap()
    }

    #[test]
    fn sfdisk_gpt_disk_matches_sfdisk_and_blkid() {
        let dir = tempfile::tempdir().unwrap();
        let disk = sparse_file(dir.path(), "disk.raw", 64 << 20);
        let script = "label: gpt\n\
            size=1MiB, type=21686148-6E6F-6E6F-744E-656564454649, name=bios\n\
            type=0FC63DAF-8483-4772-8E79-3D69D8477DE4, name=root\n";
        run(
            "sfdisk",
            "fdisk",
            &["--quiet", disk.to_str().unwrap()],
            script,
        );
        let table = sfdisk_json(&disk);
        let root_entry = &table["partitions"][1];
        let root_offset = root_entry["start"].as_u64().unwrap() * 512;
        let root_size = root_entry["size"].as_u64().unwrap() * 512;
        let fs = sparse_file(dir.path(), "root.ext4", root_size);
        run(
            "mkfs.ext4",
            "e2fsprogs",
            &["-q", "-L", "rootfs", fs.to_str().unwrap()],
            "",
        );
        copy_into(&disk, root_offset, &fs);

        let volumes = open_volumes(&disk);
        let parsed = read_partition_table(&mut std::fs::File::open(&disk).unwrap(), 64 << 20)
            .unwrap()
            .unwrap();

        assert_eq!(parsed.kind, TableKind::Gpt);
        assert_eq!(parsed.disk_id, table["id"].as_str().map(str::to_lowercase));
        let expected = table["partitions"].as_array().unwrap();
        assert_eq!(volumes.len(), expected.len());
        for (volume, entry) in volumes.iter().zip(expected) {
            let partition = volume.partition.as_ref().unwrap();
            assert_eq!(partition.number, node_number(entry));
            assert_eq!(partition.offset, entry["start"].as_u64().unwrap() * 512);
            assert_eq!(partition.size, entry["size"].as_u64().unwrap() * 512);
            assert_eq!(partition.type_id, entry["type"].as_str().unwrap());
            assert_eq!(
                partition.uuid,
                entry["uuid"].as_str().map(str::to_lowercase)
            );
            assert_eq!(partition.label.as_deref(), entry["name"].as_str());
        }
        let whole = blkid(&disk, None);
        assert_eq!(whole.get("PTTYPE").map(String::as_str), Some("gpt"));
        assert_eq!(parsed.disk_id.as_ref(), whole.get("PTUUID"));
        let root = blkid(&disk, Some(root_offset));
        let root_fs = volumes[1].fs.as_ref().unwrap();
        assert_eq!(volumes[0].fs, None);
        assert_eq!(Some(&root_fs.fs_type), root.get("TYPE"));
        assert_eq!(root_fs.uuid.as_ref(), root.get("UUID"));
        assert_eq!(root_fs.label.as_deref(), Some("rootfs"));
    }

    #[test]
    fn sfdisk_mbr_disk_with_logicals_matches_sfdisk_and_blkid() {
        let dir = tempfile::tempdir().unwrap();
        let disk = sparse_file(dir.path(), "disk.raw", 64 << 20);
        // A primary, then an extended partition filling the rest of the disk, so that
        // sfdisk makes the next two partitions logical ones inside it.
        let script = "label: dos\nlabel-id: 0x1234abcd\n\
            size=8MiB, type=83\n\
            type=5\n\
            size=10MiB, type=83\n\
            size=10MiB, type=82\n";
        run(
            "sfdisk",
            "fdisk",
            &["--quiet", disk.to_str().unwrap()],
            script,
        );
        let table = sfdisk_json(&disk);
        let logical = table["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|entry| node_number(entry) == 5)
            .unwrap();
        let logical_offset = logical["start"].as_u64().unwrap() * 512;
        let fs = sparse_file(
            dir.path(),
            "data.ext4",
            logical["size"].as_u64().unwrap() * 512,
        );
        run(
            "mkfs.ext4",
            "e2fsprogs",
            &["-q", "-L", "data", fs.to_str().unwrap()],
            "",
        );
        copy_into(&disk, logical_offset, &fs);

        let volumes = open_volumes(&disk);
        let parsed = read_partition_table(&mut std::fs::File::open(&disk).unwrap(), 64 << 20)
            .unwrap()
            .unwrap();

        assert_eq!(parsed.kind, TableKind::Mbr);
        assert_eq!(parsed.disk_id.as_deref(), Some("1234abcd"));
        // sfdisk also lists the extended container (type 5), which holds no filesystem.
        let expected: Vec<&serde_json::Value> = table["partitions"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|entry| entry["type"] != "5")
            .collect();
        let numbers: Vec<u32> = volumes
            .iter()
            .map(|v| v.partition.as_ref().unwrap().number)
            .collect();
        assert_eq!(numbers, [1, 5, 6]);
        assert_eq!(volumes.len(), expected.len());
        for (volume, entry) in volumes.iter().zip(expected) {
            let partition = volume.partition.as_ref().unwrap();
            let sfdisk_type = u8::from_str_radix(entry["type"].as_str().unwrap(), 16).unwrap();
            assert_eq!(partition.number, node_number(entry));
            assert_eq!(partition.offset, entry["start"].as_u64().unwrap() * 512);
            assert_eq!(partition.size, entry["size"].as_u64().unwrap() * 512);
            assert_eq!(partition.type_id, format!("0x{sfdisk_type:02x}"));
        }
        let whole = blkid(&disk, None);
        assert_eq!(whole.get("PTTYPE").map(String::as_str), Some("dos"));
        assert_eq!(parsed.disk_id.as_ref(), whole.get("PTUUID"));
        let data = blkid(&disk, Some(logical_offset));
        let data_fs = volumes[1].fs.as_ref().unwrap();
        assert_eq!(Some(&data_fs.fs_type), data.get("TYPE"));
        assert_eq!(data_fs.uuid.as_ref(), data.get("UUID"));
        assert_eq!(data_fs.label.as_ref(), data.get("LABEL"));
        assert_eq!(
            volumes[1].partition.as_ref().unwrap().uuid.as_deref(),
            Some("1234abcd-05")
        );
    }
}
