//! Reading images back without any backend: partition tables through `sfdisk --json`, and
//! ext4 files through `debugfs` at a byte offset. qcow2 images are converted to a raw
//! temporary file first, because neither tool reads qcow2.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use tempfile::TempDir;

use super::{command, Result, TestImageError};

/// The first bytes of a qcow2 file: `QFI` and 0xfb.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// One partition of a disk image, from `sfdisk --json`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionInfo {
    /// The partition number (1-based).
    pub number: u32,
    /// The offset of the partition's first byte from the start of the disk.
    pub start: u64,
    /// The partition size in bytes.
    pub size: u64,
    /// The partition type: a GUID on GPT, a hex byte such as `83` on MBR.
    pub type_id: String,
    /// The GPT partition GUID; MBR partitions have none.
    pub uuid: Option<String>,
    /// The GPT partition name; MBR partitions have none.
    pub name: Option<String>,
    /// Whether the MBR boot flag is set; always false on GPT.
    pub bootable: bool,
}

/// Lists the partitions of a raw or qcow2 disk image; the list is empty when the image
/// has no partition table.
pub fn partitions(image: &Path) -> Result<Vec<PartitionInfo>> {
    let raw = RawImage::open(image)?;
    match command::run(command::new("sfdisk").arg("--json").arg(raw.path())) {
        Ok(output) => parse_sfdisk_json(&output.stdout, image),
        Err(TestImageError::RunningCommand { stderr, .. })
            if stderr.contains("does not contain a recognized partition table") =>
        {
            Ok(Vec::new())
        }
        Err(err) => Err(err),
    }
}

/// Returns partition `number` of a raw or qcow2 disk image.
pub fn partition(image: &Path, number: u32) -> Result<PartitionInfo> {
    partitions(image)?
        .into_iter()
        .find(|info| info.number == number)
        .ok_or_else(|| TestImageError::PartitionNotFound {
            image: image.to_owned(),
            number,
        })
}

/// The type, permission bits and owners of a file inside an ext filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileStat {
    /// The file type as `debugfs` names it: `regular`, `directory`, `symlink`, ...
    pub kind: String,
    /// The permission bits, including set-user-ID, set-group-ID and sticky (`0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// The size in bytes.
    pub size: u64,
}

/// Reads the file `guest_path` from the ext filesystem at byte `offset` of a raw or qcow2
/// image, without following a symlink in the last component.
pub fn debugfs_cat(image: &Path, offset: u64, guest_path: &str) -> Result<Vec<u8>> {
    let raw = RawImage::open(image)?;
    cat_at(raw.path(), image, offset, guest_path)
}

/// Returns the type, permission bits and owners of `guest_path` in the ext filesystem at
/// byte `offset` of a raw or qcow2 image. A missing path gives
/// [`TestImageError::GuestPathNotFound`].
pub fn debugfs_stat(image: &Path, offset: u64, guest_path: &str) -> Result<FileStat> {
    let raw = RawImage::open(image)?;
    stat_at(raw.path(), image, offset, guest_path)
}

/// A reader on one ext filesystem of an image, for many reads: a qcow2 image is converted
/// to raw once, when the reader opens.
#[derive(Debug)]
pub struct Ext4Reader {
    image: PathBuf,
    raw: RawImage,
    offset: u64,
}

impl Ext4Reader {
    /// Opens the filesystem in partition `partition` of `image`, or the whole image when
    /// `partition` is `None`.
    pub fn open(image: &Path, partition: Option<u32>) -> Result<Self> {
        let raw = RawImage::open(image)?;
        let offset = match partition {
            Some(number) => self::partition(raw.path(), number)?.start,
            None => 0,
        };
        Ok(Self {
            image: image.to_owned(),
            raw,
            offset,
        })
    }

    /// Returns the filesystem's offset in bytes from the start of the disk.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Reads a file. Like `debugfs cat`, this does not follow a symlink in the last
    /// component, and reading a fast symlink fails.
    pub fn cat(&self, guest_path: &str) -> Result<Vec<u8>> {
        cat_at(self.raw.path(), &self.image, self.offset, guest_path)
    }

    /// Reads a file as UTF-8 text, replacing invalid sequences.
    pub fn cat_string(&self, guest_path: &str) -> Result<String> {
        Ok(String::from_utf8_lossy(&self.cat(guest_path)?).into_owned())
    }

    /// Returns a file's type, permission bits and owners.
    pub fn stat(&self, guest_path: &str) -> Result<FileStat> {
        stat_at(self.raw.path(), &self.image, self.offset, guest_path)
    }

    /// Returns whether `guest_path` exists (a dangling symlink counts, as with `lstat`).
    pub fn exists(&self, guest_path: &str) -> Result<bool> {
        match self.stat(guest_path) {
            Ok(_) => Ok(true),
            Err(TestImageError::GuestPathNotFound { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }
}

/// A raw view of an image: the image itself, or a raw conversion of a qcow2 image in a
/// temporary directory that is removed on drop.
#[derive(Debug)]
struct RawImage {
    path: PathBuf,
    _converted: Option<TempDir>,
}

impl RawImage {
    fn open(image: &Path) -> Result<Self> {
        if !is_qcow2(image)? {
            return Ok(Self {
                path: image.to_owned(),
                _converted: None,
            });
        }

        let dir = tempfile::tempdir().map_err(|source| TestImageError::FileOperation {
            action: "creating a temporary directory for",
            path: image.to_owned(),
            source,
        })?;
        let path = dir.path().join("converted.raw");
        command::run(
            command::new("qemu-img")
                .args(["convert", "-f", "qcow2", "-O", "raw"])
                .arg(image)
                .arg(&path),
        )?;
        Ok(Self {
            path,
            _converted: Some(dir),
        })
    }

    fn path(&self) -> &Path {
        &self.path
    }
}

fn is_qcow2(image: &Path) -> Result<bool> {
    let read_error = |source| TestImageError::FileOperation {
        action: "reading",
        path: image.to_owned(),
        source,
    };
    let mut file = File::open(image).map_err(read_error)?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(magic == QCOW2_MAGIC),
        Err(err) if err.kind() == std::io::ErrorKind::UnexpectedEof => Ok(false),
        Err(err) => Err(read_error(err)),
    }
}

fn cat_at(raw: &Path, image: &Path, offset: u64, guest_path: &str) -> Result<Vec<u8>> {
    let (command, output) =
        run_debugfs(raw, offset, &format!("cat {}", debugfs_quote(guest_path)))?;
    check_debugfs_stderr(&command, &output, image, offset, Some(guest_path))?;
    Ok(output.stdout)
}

fn stat_at(raw: &Path, image: &Path, offset: u64, guest_path: &str) -> Result<FileStat> {
    let (command, output) =
        run_debugfs(raw, offset, &format!("stat {}", debugfs_quote(guest_path)))?;
    check_debugfs_stderr(&command, &output, image, offset, Some(guest_path))?;
    parse_stat(&String::from_utf8_lossy(&output.stdout), guest_path)
}

fn run_debugfs(raw: &Path, offset: u64, request: &str) -> Result<(Command, Output)> {
    let mut target = raw.as_os_str().to_owned();
    target.push(format!("?offset={offset}"));
    let mut debugfs = command::new("debugfs");
    // Without a pager setting, `stat` may pipe its output through `less`.
    debugfs
        .env("DEBUGFS_PAGER", "__none__")
        .arg("-R")
        .arg(request)
        .arg(target);
    let output = command::run(&mut debugfs)?;
    Ok((debugfs, output))
}

/// Quotes a path for a `debugfs` request, which splits words on white space.
pub(super) fn debugfs_quote(guest_path: &str) -> String {
    if guest_path.contains(char::is_whitespace) {
        format!("\"{guest_path}\"")
    } else {
        guest_path.to_owned()
    }
}

/// Turns what `debugfs` printed on stderr into an error. `debugfs` exits with status 0
/// even when a request fails, and always prints its version banner on stderr.
pub(super) fn check_debugfs_stderr(
    debugfs: &Command,
    output: &Output,
    image: &Path,
    offset: u64,
    guest_path: Option<&str>,
) -> Result<()> {
    let stderr = String::from_utf8_lossy(&output.stderr);
    let problems: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !is_debugfs_banner(line))
        .collect();
    if problems.is_empty() {
        return Ok(());
    }

    if let Some(guest_path) = guest_path {
        if problems
            .iter()
            .any(|line| line.contains("File not found by ext2_lookup"))
        {
            return Err(TestImageError::GuestPathNotFound {
                image: image.to_owned(),
                offset,
                guest_path: guest_path.to_owned(),
            });
        }
    }
    Err(TestImageError::CommandReportedError {
        command: command::describe(debugfs),
        stderr: problems.join("\n"),
    })
}

/// Returns whether `line` is the banner `debugfs 1.47.0 (5-Feb-2023)`.
fn is_debugfs_banner(line: &str) -> bool {
    let Some(rest) = line.strip_prefix("debugfs ") else {
        return false;
    };
    rest.starts_with(|c: char| c.is_ascii_digit()) && rest.ends_with(')')
}

/// Parses the fields this module uses from `debugfs stat` output, such as
/// `Inode: 13   Type: regular    Mode:  0640   Flags: 0x80000` and
/// `User:     0   Group:    42   Project:     0   Size: 3`.
fn parse_stat(text: &str, guest_path: &str) -> Result<FileStat> {
    let invalid = |reason: String| TestImageError::ParsingStat {
        guest_path: guest_path.to_owned(),
        reason,
    };
    let field = |name: &str| -> Result<&str> {
        let key = format!("{name}:");
        let mut words = text.split_whitespace();
        words
            .by_ref()
            .find(|word| *word == key)
            .and_then(|_| words.next())
            .ok_or_else(|| invalid(format!("no {name} field")))
    };
    let number = |name: &str| -> Result<u64> {
        let value = field(name)?;
        value
            .parse()
            .map_err(|_| invalid(format!("{name} {value:?} is not a number")))
    };

    let mode_text = field("Mode")?;
    let mode = u32::from_str_radix(mode_text, 8)
        .map_err(|_| invalid(format!("mode {mode_text:?} is not octal")))?;
    let uid = number("User")?;
    let gid = number("Group")?;
    Ok(FileStat {
        kind: field("Type")?.to_owned(),
        mode,
        uid: u32::try_from(uid).map_err(|_| invalid(format!("user {uid} is out of range")))?,
        gid: u32::try_from(gid).map_err(|_| invalid(format!("group {gid} is out of range")))?,
        size: number("Size")?,
    })
}

fn parse_sfdisk_json(json: &[u8], image: &Path) -> Result<Vec<PartitionInfo>> {
    let invalid = |reason: String| TestImageError::ReadingPartitionTable {
        image: image.to_owned(),
        reason,
    };
    let value: serde_json::Value =
        serde_json::from_slice(json).map_err(|err| invalid(format!("invalid JSON: {err}")))?;
    let table = &value["partitiontable"];
    let device = table["device"]
        .as_str()
        .ok_or_else(|| invalid("no device member".into()))?;
    // Tables written before util-linux 2.38 have no sectorsize member, and they used
    // 512-byte sectors for image files.
    let sector_size = table["sectorsize"].as_u64().unwrap_or(512);
    let Some(entries) = table["partitions"].as_array() else {
        return Ok(Vec::new());
    };

    let mut partitions = Vec::with_capacity(entries.len());
    for entry in entries {
        let node = entry["node"]
            .as_str()
            .ok_or_else(|| invalid("a partition has no node member".into()))?;
        let number = partition_number(node, device)
            .ok_or_else(|| invalid(format!("no partition number in node {node:?}")))?;
        let sectors = |name: &str| {
            entry[name]
                .as_u64()
                .ok_or_else(|| invalid(format!("partition {number} has no {name} member")))
        };
        let text = |name: &str| entry[name].as_str().map(str::to_owned);
        partitions.push(PartitionInfo {
            number,
            start: sectors("start")? * sector_size,
            size: sectors("size")? * sector_size,
            type_id: text("type")
                .ok_or_else(|| invalid(format!("partition {number} has no type member")))?,
            uuid: text("uuid"),
            name: text("name"),
            bootable: entry["bootable"].as_bool().unwrap_or(false),
        });
    }
    Ok(partitions)
}

/// Returns the number in a partition node name: `disk.raw2` for device `disk.raw`, or
/// `disk1p2` for a device whose name ends in a digit.
fn partition_number(node: &str, device: &str) -> Option<u32> {
    let suffix = node.strip_prefix(device)?;
    let digits = suffix.strip_prefix('p').unwrap_or(suffix);
    digits.parse().ok().filter(|&number| number >= 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    const STAT_OUTPUT: &str = "\
Inode: 13   Type: regular    Mode:  0640   Flags: 0x80000
Generation: 0    Version: 0x00000000:00000000
User:     0   Group:    42   Project:     0   Size: 3
File ACL: 0
Links: 1   Blockcount: 2
";

    #[test]
    fn parse_stat_reads_mode_and_owners() {
        let stat = parse_stat(STAT_OUTPUT, "/etc/shadow").unwrap();

        assert_eq!(stat.kind, "regular");
        assert_eq!(stat.mode, 0o640);
        assert_eq!(stat.uid, 0);
        assert_eq!(stat.gid, 42);
        assert_eq!(stat.size, 3);
    }

    #[test]
    fn parse_stat_rejects_missing_mode() {
        let err = parse_stat("Inode: 13   Type: regular\n", "/x").unwrap_err();

        assert!(matches!(err, TestImageError::ParsingStat { .. }));
    }

    #[test]
    fn sfdisk_json_gives_byte_offsets() {
        let json = br#"{"partitiontable": {"label":"gpt","device":"d.raw","unit":"sectors",
            "sectorsize":512,"partitions":[
            {"node":"d.raw1","start":2048,"size":2048,"type":"T1","uuid":"U1","name":"bios"},
            {"node":"d.raw2","start":4096,"size":124928,"type":"T2","uuid":"U2","name":"root"}]}}"#;

        let partitions = parse_sfdisk_json(json, Path::new("d.raw")).unwrap();

        assert_eq!(partitions.len(), 2);
        assert_eq!(partitions[1].number, 2);
        assert_eq!(partitions[1].start, 4096 * 512);
        assert_eq!(partitions[1].size, 124928 * 512);
        assert_eq!(partitions[1].name.as_deref(), Some("root"));
    }

    #[test]
    fn sfdisk_json_reads_mbr_boot_flag() {
        let json = br#"{"partitiontable": {"label":"dos","device":"m.raw","unit":"sectors",
            "partitions":[{"node":"m.raw1","start":2048,"size":32768,"type":"83",
            "bootable":true}]}}"#;

        let partitions = parse_sfdisk_json(json, Path::new("m.raw")).unwrap();

        assert!(partitions[0].bootable);
        assert_eq!(partitions[0].uuid, None);
    }

    #[test]
    fn partition_number_handles_trailing_digit() {
        assert_eq!(partition_number("disk1p2", "disk1"), Some(2));
        assert_eq!(partition_number("disk.raw12", "disk.raw"), Some(12));
        assert_eq!(partition_number("other3", "disk"), None);
    }

    #[test]
    fn banner_is_not_an_error() {
        assert!(is_debugfs_banner("debugfs 1.47.0 (5-Feb-2023)"));
        assert!(!is_debugfs_banner(
            "debugfs: Bad magic number in super-block"
        ));
    }

    #[test]
    fn quote_wraps_paths_with_spaces() {
        assert_eq!(debugfs_quote("/etc/my file"), "\"/etc/my file\"");
        assert_eq!(debugfs_quote("/etc/shadow"), "/etc/shadow");
    }
}
