//! Filesystem detection from superblock magic numbers, with the type, label and UUID that
//! `blkid` would report.
//!
//! Recognised: ext2, ext3 and ext4 (told apart by feature flags as `blkid` does), xfs,
//! btrfs, vfat, Linux swap (as `swap`) and squashfs. Only fixed-size superblocks are read,
//! so hostile contents cannot make the probe allocate or loop. A magic number is backed by
//! one or two plausibility checks, but no checksum is verified: the result says what the
//! filesystem claims to be, not that it is intact.

use std::io::{self, Read, Seek, SeekFrom};

/// A filesystem found on a disk range.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsInfo {
    /// The type as `blkid` and `mount -t` name it: `ext4`, `xfs`, `btrfs`, `vfat`, ...
    pub fs_type: String,
    /// The filesystem label, when set.
    pub label: Option<String>,
    /// The filesystem UUID as `blkid` prints it: lowercase and hyphenated, except vfat's
    /// volume id, which `blkid` prints as `XXXX-XXXX` in uppercase.
    pub uuid: Option<String>,
}

/// Detects the filesystem in the `size` bytes at `offset` of `disk`.
///
/// Returns `Ok(None)` when no known filesystem is found, including when the range is too
/// short to hold a filesystem's superblock. Fails only when reading the disk fails.
pub fn probe_filesystem<R: Read + Seek>(
    disk: &mut R,
    offset: u64,
    size: u64,
) -> io::Result<Option<FsInfo>> {
    let mut range = Range { disk, offset, size };
    let probes: [Probe<R>; 6] = [
        probe_xfs,
        probe_squashfs,
        probe_ext,
        probe_btrfs,
        probe_swap,
        probe_vfat,
    ];
    for probe in probes {
        if let Some(info) = probe(&mut range)? {
            return Ok(Some(info));
        }
    }
    Ok(None)
}

/// One filesystem's detector. The order in [`probe_filesystem`] puts the types with the
/// strongest magic numbers first and vfat, whose boot sector resembles an MBR, last.
type Probe<R> = for<'a, 'b> fn(&'a mut Range<'b, R>) -> io::Result<Option<FsInfo>>;

/// A byte range of a disk; reads outside it return `None`.
struct Range<'a, R> {
    disk: &'a mut R,
    offset: u64,
    size: u64,
}

impl<R: Read + Seek> Range<'_, R> {
    /// Reads `N` bytes at `at` within the range, or `None` when they do not fit in it.
    fn read<const N: usize>(&mut self, at: u64) -> io::Result<Option<[u8; N]>> {
        let fits = at.checked_add(N as u64).is_some_and(|end| end <= self.size);
        let Some(position) = self.offset.checked_add(at).filter(|_| fits) else {
            return Ok(None);
        };
        let mut buf = [0u8; N];
        self.disk.seek(SeekFrom::Start(position))?;
        self.disk.read_exact(&mut buf)?;
        Ok(Some(buf))
    }
}

// ext2/3/4 feature flags, from the kernel's `fs/ext4/ext4.h`.
const EXT_COMPAT_HAS_JOURNAL: u32 = 0x0004;
const EXT_INCOMPAT_FILETYPE: u32 = 0x0002;
const EXT_INCOMPAT_RECOVER: u32 = 0x0004;
const EXT_INCOMPAT_JOURNAL_DEV: u32 = 0x0008;
const EXT_INCOMPAT_META_BG: u32 = 0x0010;
const EXT_RO_COMPAT_SPARSE_SUPER: u32 = 0x0001;
const EXT_RO_COMPAT_LARGE_FILE: u32 = 0x0002;
const EXT_RO_COMPAT_BTREE_DIR: u32 = 0x0004;

/// The features that ext3 drivers understand; any other feature makes the filesystem ext4,
/// which is how `blkid` decides.
const EXT3_INCOMPAT_SUPPORTED: u32 =
    EXT_INCOMPAT_FILETYPE | EXT_INCOMPAT_RECOVER | EXT_INCOMPAT_META_BG;
const EXT3_RO_COMPAT_SUPPORTED: u32 =
    EXT_RO_COMPAT_SPARSE_SUPER | EXT_RO_COMPAT_LARGE_FILE | EXT_RO_COMPAT_BTREE_DIR;

/// The ext superblock: 1024 bytes at byte 1024.
fn probe_ext<R: Read + Seek>(range: &mut Range<'_, R>) -> io::Result<Option<FsInfo>> {
    let Some(sb) = range.read::<1024>(1024)? else {
        return Ok(None);
    };
    let magic = u16::from_le_bytes([sb[0x38], sb[0x39]]);
    let log_block_size = u32_le(&sb, 0x18);
    // Block sizes run from 1 KiB (0) to 64 KiB (6).
    if magic != 0xEF53 || log_block_size > 6 {
        return Ok(None);
    }

    let compat = u32_le(&sb, 0x5C);
    let incompat = u32_le(&sb, 0x60);
    let ro_compat = u32_le(&sb, 0x64);
    let fs_type = if incompat & EXT_INCOMPAT_JOURNAL_DEV != 0 {
        "jbd"
    } else if incompat & !EXT3_INCOMPAT_SUPPORTED != 0 || ro_compat & !EXT3_RO_COMPAT_SUPPORTED != 0
    {
        "ext4"
    } else if compat & EXT_COMPAT_HAS_JOURNAL != 0 {
        "ext3"
    } else {
        "ext2"
    };

    Ok(Some(FsInfo {
        fs_type: fs_type.into(),
        label: nul_padded_label(&sb[0x78..0x88]),
        uuid: uuid_in_order(&sb[0x68..0x78]),
    }))
}

/// The xfs superblock at byte 0 (big-endian).
fn probe_xfs<R: Read + Seek>(range: &mut Range<'_, R>) -> io::Result<Option<FsInfo>> {
    let Some(sb) = range.read::<512>(0)? else {
        return Ok(None);
    };
    let block_size = u32::from_be_bytes([sb[4], sb[5], sb[6], sb[7]]);
    if &sb[0..4] != b"XFSB" || !block_size.is_power_of_two() || !(512..=65536).contains(&block_size)
    {
        return Ok(None);
    }
    Ok(Some(FsInfo {
        fs_type: "xfs".into(),
        label: nul_padded_label(&sb[108..120]),
        uuid: uuid_in_order(&sb[32..48]),
    }))
}

/// The btrfs superblock at 64 KiB; the fields used sit in its first 4 KiB.
fn probe_btrfs<R: Read + Seek>(range: &mut Range<'_, R>) -> io::Result<Option<FsInfo>> {
    let Some(sb) = range.read::<4096>(0x10000)? else {
        return Ok(None);
    };
    // The magic at 0x40, and the superblock's own address at 0x30.
    let own_address = u64::from_le_bytes(sb[0x30..0x38].try_into().unwrap_or_default());
    if &sb[0x40..0x48] != b"_BHRfS_M" || own_address != 0x10000 {
        return Ok(None);
    }
    Ok(Some(FsInfo {
        fs_type: "btrfs".into(),
        label: nul_padded_label(&sb[0x12B..0x22B]),
        uuid: uuid_in_order(&sb[0x20..0x30]),
    }))
}

/// The page sizes at whose end a swap signature may sit, as `blkid` tries them.
const SWAP_PAGE_SIZES: [u64; 5] = [4096, 8192, 16384, 32768, 65536];

/// Linux swap: the signature ends the first page; a version 1 header at byte 1024 holds
/// the UUID (at 1036) and the label (at 1052).
fn probe_swap<R: Read + Seek>(range: &mut Range<'_, R>) -> io::Result<Option<FsInfo>> {
    for page_size in SWAP_PAGE_SIZES {
        let Some(signature) = range.read::<10>(page_size - 10)? else {
            return Ok(None);
        };
        if &signature == b"SWAP-SPACE" {
            return Ok(Some(FsInfo {
                fs_type: "swap".into(),
                label: None,
                uuid: None,
            }));
        }
        if &signature == b"SWAPSPACE2" {
            let Some(header) = range.read::<44>(1024)? else {
                return Ok(None);
            };
            return Ok(Some(FsInfo {
                fs_type: "swap".into(),
                label: nul_padded_label(&header[28..44]),
                uuid: uuid_in_order(&header[12..28]),
            }));
        }
    }
    Ok(None)
}

/// squashfs: the little-endian magic `hsqs` at byte 0. It has no label or UUID.
fn probe_squashfs<R: Read + Seek>(range: &mut Range<'_, R>) -> io::Result<Option<FsInfo>> {
    match range.read::<4>(0)? {
        Some(magic) if &magic == b"hsqs" => Ok(Some(FsInfo {
            fs_type: "squashfs".into(),
            label: None,
            uuid: None,
        })),
        _ => Ok(None),
    }
}

/// FAT12, FAT16 and FAT32 boot sectors, identified by the BIOS parameter block and the
/// `FAT` type string.
///
/// NOTE: the label comes from the boot sector only. `blkid` prefers the volume-label entry
/// of the root directory, which differs when a tool other than `mkfs.vfat` or `fatlabel`
/// changed one of the two.
fn probe_vfat<R: Read + Seek>(range: &mut Range<'_, R>) -> io::Result<Option<FsInfo>> {
    let Some(boot) = range.read::<512>(0)? else {
        return Ok(None);
    };
    let bytes_per_sector = u16::from_le_bytes([boot[0x0B], boot[0x0C]]);
    let sectors_per_cluster = boot[0x0D];
    let reserved_sectors = u16::from_le_bytes([boot[0x0E], boot[0x0F]]);
    let fat_count = boot[0x10];
    let plausible = matches!(boot[0], 0xEB | 0xE9)
        && boot[510] == 0x55
        && boot[511] == 0xAA
        && bytes_per_sector.is_power_of_two()
        && (512..=4096).contains(&bytes_per_sector)
        && sectors_per_cluster.is_power_of_two()
        && reserved_sectors != 0
        && (1..=2).contains(&fat_count);
    if !plausible {
        return Ok(None);
    }

    // FAT32 keeps its extended parameter block at 0x40, FAT12 and FAT16 at 0x24; 0x29 at
    // the block's signature byte says the volume id and label follow.
    let signature_at = if &boot[0x52..0x57] == b"FAT32" {
        0x42
    } else if &boot[0x36..0x39] == b"FAT" {
        0x26
    } else {
        return Ok(None);
    };
    let (label, uuid) = if boot[signature_at] == 0x29 {
        let id = u32_le(&boot, signature_at + 1);
        let label = String::from_utf8_lossy(&boot[signature_at + 5..signature_at + 16])
            .trim_end_matches([' ', '\0'])
            .to_owned();
        let label = (!label.is_empty() && label != "NO NAME").then_some(label);
        (label, Some(format!("{:04X}-{:04X}", id >> 16, id & 0xFFFF)))
    } else {
        (None, None)
    };
    Ok(Some(FsInfo {
        fs_type: "vfat".into(),
        label,
        uuid,
    }))
}

fn u32_le(bytes: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([bytes[at], bytes[at + 1], bytes[at + 2], bytes[at + 3]])
}

/// Decodes a label stored as bytes padded with NULs; `None` when empty.
fn nul_padded_label(bytes: &[u8]) -> Option<String> {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    let label = String::from_utf8_lossy(&bytes[..end]).into_owned();
    (!label.is_empty()).then_some(label)
}

/// Formats 16 bytes stored in order as a lowercase UUID; `None` when all are zero, as
/// `blkid` reports no UUID then.
fn uuid_in_order(bytes: &[u8]) -> Option<String> {
    if bytes.len() != 16 || bytes.iter().all(|&b| b == 0) {
        return None;
    }
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Some(format!(
        "{}-{}-{}-{}-{}",
        &hex[0..8],
        &hex[8..12],
        &hex[12..16],
        &hex[16..20],
        &hex[20..32]
    ))
}
