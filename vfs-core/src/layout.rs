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
    /// The requested partition holds no recognised filesystem.
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
