//! Checks of an image that run before any backend opens it, so that a damaged or hostile
//! image gets the same clear error on every backend and nothing is attached or launched for
//! it.
//!
//! - No other process may use the image in a way that conflicts with the request, as qemu's
//!   image locks show (see [`crate::imagelock`]), so an image in use by a running virtual
//!   machine is rejected the same way on every backend.
//! - A qcow2 image must pass `qemu-img check` (leaked clusters are accepted, because they
//!   waste space but lose nothing). A truncated or corrupt qcow2 would otherwise reach the
//!   guest kernel as a disk with holes, and a failed mount may then record an error in the
//!   guest filesystem's superblock, changing the image.
//! - A raw image's partition table must parse (no entries past the end of the disk, no
//!   overlaps, no loops in the extended chain, correct GPT checksums), and the ext
//!   filesystems that a request may mount must have no incompatible feature this program
//!   does not know.
//!
//! NOTE: the partition table and filesystem features of a qcow2 image are not checked here,
//! because reading its virtual disk needs qemu; the backends' own errors apply to those.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::image::{DiskFormat, PartitionSelector, ResolvedImage};
use crate::layout::{self, LayoutError, Volume};

/// The qemu-img exit status that reports leaked clusters only.
const QEMU_IMG_CHECK_LEAKS_ONLY: i32 = 3;

/// How many of qemu-img's error lines an error message quotes.
const QUOTED_ERROR_LINES: usize = 3;

/// Every ext2/3/4 incompatible feature bit defined by e2fsprogs 1.47 (compression, filetype,
/// recover, journal_dev, meta_bg, extents, 64bit, mmp, flex_bg, ea_inode, dirdata,
/// metadata_csum_seed, large_dir, inline_data, encrypt, casefold).
const KNOWN_EXT_INCOMPAT: u32 = 0x0003_F7DF;

/// The ext superblock's offset in its filesystem, its magic number and field offsets.
const EXT_SUPERBLOCK_OFFSET: u64 = 1024;
const EXT_MAGIC: u16 = 0xEF53;
const EXT_MAGIC_FIELD: usize = 0x38;
const EXT_INCOMPAT_FIELD: usize = 0x60;

/// An image that must not be opened.
#[derive(Debug, thiserror::Error)]
pub enum PreflightError {
    /// `qemu-img check` found the qcow2 image damaged.
    #[error("image {image}: the qcow2 file is damaged (qemu-img check: {detail}); repair it with `qemu-img check -r all` on a copy, or restore it")]
    CorruptQcow2 { image: PathBuf, detail: String },
    /// `qemu-img check` could not check the image.
    #[error("image {image}: qemu-img check failed: {detail}")]
    CheckingQcow2 { image: PathBuf, detail: String },
    /// Another process holds the image, as `qemu-img` reports through qemu's image locks.
    #[error(
        "image {image} is in use by another process, such as a running virtual machine: {detail}"
    )]
    InUse { image: PathBuf, detail: String },
    /// `qemu-img` could not be started.
    #[error(
        "running qemu-img to check image {image} failed; install qemu-img (Debian: qemu-utils)"
    )]
    StartingQemuImg {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading the raw image failed.
    #[error("reading image {image} failed")]
    Reading {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The image is in use, or its locks could not be tested.
    #[error(transparent)]
    Locked(#[from] crate::imagelock::LockError),
    /// The raw image's partition table is invalid.
    #[error("image {image} has an invalid partition table")]
    PartitionTable {
        image: PathBuf,
        #[source]
        source: LayoutError,
    },
    /// An ext filesystem uses incompatible features this program does not know.
    #[error("image {image}: {volume} holds an ext filesystem with unknown incompatible feature bits {bits:#x}; no kernel this program knows can mount it, so it is not opened")]
    UnknownExtFeatures {
        image: PathBuf,
        volume: String,
        bits: u32,
    },
}

/// Checks an image before a backend opens it, for reading only or for writing.
pub fn check_image(image: &ResolvedImage, read_only: bool) -> Result<(), PreflightError> {
    crate::imagelock::ImageLock::check(&image.path, read_only)?;
    match image.format {
        DiskFormat::Qcow2 => check_qcow2(&image.path),
        DiskFormat::Raw => check_raw(&image.path, &image.partition),
    }
}

fn check_qcow2(path: &Path) -> Result<(), PreflightError> {
    let output = Command::new("qemu-img")
        .args(["check", "-f", "qcow2"])
        .arg(path)
        .output()
        .map_err(|source| PreflightError::StartingQemuImg {
            image: path.to_owned(),
            source,
        })?;
    let code = output.status.code();
    if code == Some(0) || code == Some(QEMU_IMG_CHECK_LEAKS_ONLY) {
        return Ok(());
    }

    let stderr = String::from_utf8_lossy(&output.stderr);
    let stdout = String::from_utf8_lossy(&output.stdout);
    let detail: Vec<&str> = stderr
        .lines()
        .chain(stdout.lines())
        .map(str::trim)
        .filter(|line| !line.is_empty())
        .take(QUOTED_ERROR_LINES)
        .collect();
    let detail = detail.join("; ");
    let image = path.to_owned();
    if stderr.contains("lock") {
        return Err(PreflightError::InUse { image, detail });
    }
    if code == Some(2) {
        return Err(PreflightError::CorruptQcow2 { image, detail });
    }
    Err(PreflightError::CheckingQcow2 { image, detail })
}

fn check_raw(path: &Path, selector: &PartitionSelector) -> Result<(), PreflightError> {
    let reading = |source| PreflightError::Reading {
        image: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(reading)?;
    let size = file.metadata().map_err(reading)?.len();
    let volumes =
        layout::list_volumes(&mut file, size).map_err(|source| PreflightError::PartitionTable {
            image: path.to_owned(),
            source,
        })?;

    let candidates: Vec<&Volume> = match selector {
        PartitionSelector::Auto => volumes.iter().collect(),
        other => match layout::select_volume(&volumes, other) {
            Ok(volume) => vec![volume],
            // The backend reports a selection that matches nothing, in its own words.
            Err(_) => Vec::new(),
        },
    };
    for volume in candidates {
        let bits = unknown_ext_incompat(&mut file, volume).map_err(reading)?;
        if bits != 0 {
            return Err(PreflightError::UnknownExtFeatures {
                image: path.to_owned(),
                volume: volume.describe(),
                bits,
            });
        }
    }
    Ok(())
}

/// Returns the unknown incompatible feature bits of an ext filesystem on `volume`, or 0
/// when the volume holds no ext filesystem.
fn unknown_ext_incompat<R: Read + Seek>(disk: &mut R, volume: &Volume) -> io::Result<u32> {
    if volume.size < EXT_SUPERBLOCK_OFFSET + 1024 {
        return Ok(0);
    }
    let mut superblock = [0u8; 1024];
    disk.seek(SeekFrom::Start(volume.offset + EXT_SUPERBLOCK_OFFSET))?;
    disk.read_exact(&mut superblock)?;
    let magic = u16::from_le_bytes([superblock[EXT_MAGIC_FIELD], superblock[EXT_MAGIC_FIELD + 1]]);
    if magic != EXT_MAGIC {
        return Ok(0);
    }
    let field = &superblock[EXT_INCOMPAT_FIELD..EXT_INCOMPAT_FIELD + 4];
    let incompat = u32::from_le_bytes(field.try_into().expect("4 bytes"));
    Ok(incompat & !KNOWN_EXT_INCOMPAT)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn ext_volume_bytes(incompat: u32) -> Vec<u8> {
        let mut bytes = vec![0u8; 8192];
        let superblock = EXT_SUPERBLOCK_OFFSET as usize;
        bytes[superblock + EXT_MAGIC_FIELD..superblock + EXT_MAGIC_FIELD + 2]
            .copy_from_slice(&EXT_MAGIC.to_le_bytes());
        bytes[superblock + EXT_INCOMPAT_FIELD..superblock + EXT_INCOMPAT_FIELD + 4]
            .copy_from_slice(&incompat.to_le_bytes());
        bytes
    }

    fn whole_disk(size: u64) -> Volume {
        Volume {
            partition: None,
            offset: 0,
            size,
            fs: None,
        }
    }

    #[test]
    fn known_ext4_features_pass() {
        // filetype, extents, 64bit, flex_bg, metadata_csum_seed: a mkfs.ext4 default set.
        let bytes = ext_volume_bytes(0x0002 | 0x0040 | 0x0080 | 0x0200 | 0x2000);
        let bits = unknown_ext_incompat(&mut Cursor::new(&bytes), &whole_disk(8192)).unwrap();
        assert_eq!(bits, 0);
    }

    #[test]
    fn unknown_ext_feature_bit_is_reported() {
        let bytes = ext_volume_bytes(0x0002 | 0x4000_0000);
        let bits = unknown_ext_incompat(&mut Cursor::new(&bytes), &whole_disk(8192)).unwrap();
        assert_eq!(bits, 0x4000_0000);
    }

    #[test]
    fn non_ext_volume_is_ignored() {
        let bytes = vec![0u8; 8192];
        let bits = unknown_ext_incompat(&mut Cursor::new(&bytes), &whole_disk(8192)).unwrap();
        assert_eq!(bits, 0);
    }

    #[test]
    fn raw_image_with_unknown_feature_is_rejected_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.raw");
        std::fs::write(&image, ext_volume_bytes(0x0002 | 0x4000_0000)).unwrap();

        let err = check_raw(&image, &PartitionSelector::None).unwrap_err();

        assert!(matches!(
            err,
            PreflightError::UnknownExtFeatures {
                bits: 0x4000_0000,
                ..
            }
        ));
        assert!(err.to_string().contains("0x40000000"), "{err}");
        assert!(err.to_string().contains("disk.raw"), "{err}");
    }

    #[test]
    fn truncated_qcow2_is_reported_as_damaged() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.qcow2");
        let created = Command::new("qemu-img")
            .args(["create", "-q", "-f", "qcow2"])
            .arg(&image)
            .arg("64M")
            .status()
            .expect("qemu-img is installed (Debian: qemu-utils)");
        assert!(created.success());
        let write = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c", "write -P 0xab 0 4M"])
            .arg(&image)
            .output()
            .expect("qemu-io is installed (Debian: qemu-utils)");
        assert!(write.status.success());
        let size = std::fs::metadata(&image).unwrap().len();
        File::options()
            .write(true)
            .open(&image)
            .unwrap()
            .set_len(size / 2)
            .unwrap();

        let err = check_qcow2(&image).unwrap_err();

        assert!(matches!(err, PreflightError::CorruptQcow2 { .. }), "{err}");
        assert!(err.to_string().contains("disk.qcow2"), "{err}");
    }
}
