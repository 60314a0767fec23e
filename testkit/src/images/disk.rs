//! Laying out disks on plain files: a partition table written by `sfdisk`, and ext4
//! filesystems made by `mkfs.ext4 -d` in files of their own, then copied into place with
//! `dd`. Nothing is mounted or attached.

use std::fs::{self, File};
use std::path::{Path, PathBuf};

use super::{command, inspect, Result, TestImageError};

const SECTOR_BYTES: u64 = 512;

/// The first usable sector: 1 MiB, the alignment partitioning tools use by default.
const FIRST_SECTOR: u64 = 2048;

/// The kind of partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum PartitionTable {
    Gpt,
    Mbr,
}

/// The file owner and group to set on one path of a new filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Ownership {
    pub(super) guest_path: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
}

/// An ext4 filesystem to make from a host directory.
#[derive(Debug, Clone)]
pub(super) struct FilesystemSpec {
    /// The directory whose contents become the filesystem's root.
    pub(super) tree: PathBuf,
    pub(super) label: &'static str,
    pub(super) uuid: &'static str,
    /// Owners set after `mkfs.ext4 -d`, which records the host owners it finds. Empty when
    /// the host tree already has the owners the guest needs.
    pub(super) ownership: Vec<Ownership>,
}

/// One partition of a [`Disk`], in table order from partition 1.
#[derive(Debug, Clone)]
pub(super) struct PartitionSpec {
    /// The size in bytes, a multiple of 512, or `None` for the rest of the disk.
    pub(super) size: Option<u64>,
    /// A GPT type GUID, or an MBR type byte in hex such as `83`.
    pub(super) type_id: &'static str,
    /// The GPT partition name; MBR tables have none, so it is ignored there.
    pub(super) name: &'static str,
    pub(super) filesystem: Option<FilesystemSpec>,
}

/// A partitioned disk to build in a plain file.
#[derive(Debug, Clone)]
pub(super) struct Disk {
    /// The disk size in bytes.
    pub(super) size: u64,
    pub(super) table: PartitionTable,
    pub(super) partitions: Vec<PartitionSpec>,
}

impl Disk {
    /// Builds the disk in `path`: a sparse file, the partition table, then each
    /// filesystem copied to its partition's offset.
    pub(super) fn build(&self, path: &Path) -> Result<()> {
        create_sparse(path, self.size)?;
        command::run_with_input(
            command::new("sfdisk").arg("--quiet").arg(path),
            Some(self.sfdisk_script().as_bytes()),
        )?;

        let table = inspect::partitions(path)?;
        for (index, spec) in self.partitions.iter().enumerate() {
            let Some(filesystem) = &spec.filesystem else {
                continue;
            };
            let number = index as u32 + 1;
            let info = table
                .iter()
                .find(|info| info.number == number)
                .ok_or_else(|| TestImageError::PartitionNotFound {
                    image: path.to_owned(),
                    number,
                })?;

            let part_file = super::with_suffix(path, &format!(".part{number}"));
            make_ext4(&part_file, info.size, filesystem)?;
            copy_into(&part_file, path, info.start)?;
            fs::remove_file(&part_file).map_err(|source| TestImageError::FileOperation {
                action: "removing",
                path: part_file.clone(),
                source,
            })?;
        }
        Ok(())
    }

    /// Returns the `sfdisk` input that creates this table.
    fn sfdisk_script(&self) -> String {
        let mut script = String::new();
        match self.table {
            PartitionTable::Gpt => script.push_str("label: gpt\n"),
            PartitionTable::Mbr => script.push_str("label: dos\n"),
        }
        script.push_str("unit: sectors\n");
        if self.table == PartitionTable::Gpt {
            script.push_str(&format!("first-lba: {FIRST_SECTOR}\n"));
        }

        for (index, spec) in self.partitions.iter().enumerate() {
            let mut fields = Vec::new();
            if index == 0 {
                fields.push(format!("start={FIRST_SECTOR}"));
            }
            if let Some(size) = spec.size {
                fields.push(format!("size={}", size / SECTOR_BYTES));
            }
            fields.push(format!("type={}", spec.type_id));
            match self.table {
                PartitionTable::Gpt => fields.push(format!("name=\"{}\"", spec.name)),
                // The first partition of an MBR disk carries the boot flag, as installers
                // set it on /boot.
                PartitionTable::Mbr if index == 0 => fields.push("bootable".to_owned()),
                PartitionTable::Mbr => {}
            }
            script.push_str(&fields.join(", "));
            script.push('\n');
        }
        script
    }
}

/// Makes an ext4 filesystem of `size` bytes in the file `path` from `spec.tree`, then sets
/// the owners `spec.ownership` lists.
pub(super) fn make_ext4(path: &Path, size: u64, spec: &FilesystemSpec) -> Result<()> {
    create_sparse(path, size)?;
    // `-T default` keeps 4 KiB blocks and 256-byte inodes even on small filesystems, as
    // on real root filesystems.
    command::run(
        command::new("mkfs.ext4")
            .args([
                "-F", "-q", "-T", "default", "-L", spec.label, "-U", spec.uuid, "-d",
            ])
            .arg(&spec.tree)
            .arg(path),
    )?;

    if spec.ownership.is_empty() {
        return Ok(());
    }
    let mut requests = String::new();
    for entry in &spec.ownership {
        let guest_path = inspect::debugfs_quote(&entry.guest_path);
        requests.push_str(&format!("set_inode_field {guest_path} uid {}\n", entry.uid));
        requests.push_str(&format!("set_inode_field {guest_path} gid {}\n", entry.gid));
    }
    let mut debugfs = command::new("debugfs");
    debugfs.args(["-w", "-f", "-"]).arg(path);
    let output = command::run_with_input(&mut debugfs, Some(requests.as_bytes()))?;
    inspect::check_debugfs_stderr(&debugfs, &output, path, 0, None)
}

/// Copies `source` into `disk` at byte `offset`, leaving zero blocks as holes.
fn copy_into(source: &Path, disk: &Path, offset: u64) -> Result<()> {
    let mut input = std::ffi::OsString::from("if=");
    input.push(source);
    let mut output = std::ffi::OsString::from("of=");
    output.push(disk);
    command::run(
        command::new("dd")
            .arg(input)
            .arg(output)
            .args([
                "bs=1M",
                "oflag=seek_bytes",
                "conv=notrunc,sparse",
                "status=none",
            ])
            .arg(format!("seek={offset}")),
    )?;
    Ok(())
}

fn create_sparse(path: &Path, size: u64) -> Result<()> {
    let file = File::create(path).map_err(|source| TestImageError::FileOperation {
        action: "creating",
        path: path.to_owned(),
        source,
    })?;
    file.set_len(size)
        .map_err(|source| TestImageError::FileOperation {
            action: "resizing",
            path: path.to_owned(),
            source,
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(size: Option<u64>, type_id: &'static str, name: &'static str) -> PartitionSpec {
        PartitionSpec {
            size,
            type_id,
            name,
            filesystem: None,
        }
    }

    #[test]
    fn gpt_script_starts_at_one_mib() {
        let disk = Disk {
            size: 64 << 20,
            table: PartitionTable::Gpt,
            partitions: vec![
                spec(Some(1 << 20), "BIOS", "bios"),
                spec(None, "LINUX", "root"),
            ],
        };

        let script = disk.sfdisk_script();

        assert_eq!(
            script,
            "label: gpt\nunit: sectors\nfirst-lba: 2048\n\
             start=2048, size=2048, type=BIOS, name=\"bios\"\n\
             type=LINUX, name=\"root\"\n"
        );
    }

    #[test]
    fn mbr_script_marks_first_partition_bootable() {
        let disk = Disk {
            size: 64 << 20,
            table: PartitionTable::Mbr,
            partitions: vec![spec(Some(16 << 20), "83", "boot"), spec(None, "83", "root")],
        };

        let script = disk.sfdisk_script();

        assert_eq!(
            script,
            "label: dos\nunit: sectors\nstart=2048, size=32768, type=83, bootable\ntype=83\n"
        );
    }
}
