//! Filesystem detection from superblock magic numbers, with the type, label and UUID that
//! `blkid` would report.
//!
//! Recognised: ext2, ext3 and ext4 (distinguished by feature flags as `blkid` does), xfs,
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

/// Detects ext2, ext3 and ext4 from the 1024-byte superblock at byte 1024.
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

/// Detects xfs from its big-endian superblock at byte 0.
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

/// Detects btrfs from its superblock at 64 KiB. The fields used lie in its first 4 KiB.
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

/// Detects Linux swap from the signature that ends the first page. A version 1 header at
/// byte 1024 contains the UUID (at 1036) and the label (at 1052).
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

/// Detects squashfs from the little-endian magic `hsqs` at byte 0. It has no label or UUID.
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

/// Detects FAT12, FAT16 and FAT32 from the boot sector's BIOS parameter block and its
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

    // FAT32 keeps its extended parameter block at 0x40, FAT12 and FAT16 at 0x24. The value
    // 0x29 in the block's signature byte means that the volume id and label follow.
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

/// Builders of superblocks in memory, shared by the tests of this crate.
#[cfg(test)]
pub(crate) mod test_superblocks {
    /// ext feature flags to set in a built superblock.
    #[derive(Debug, Clone, Copy, Default)]
    pub(crate) struct ExtFeatures {
        pub(crate) compat: u32,
        pub(crate) incompat: u32,
        pub(crate) ro_compat: u32,
    }

    /// Features of a default `mkfs.ext4`: has_journal; filetype, extents, 64bit, flex_bg;
    /// sparse_super, large_file, huge_file, dir_nlink, extra_isize, metadata_csum.
    pub(crate) const EXT4_FEATURES: ExtFeatures = ExtFeatures {
        compat: 0x0004,
        incompat: 0x0002 | 0x0040 | 0x0080 | 0x0200,
        ro_compat: 0x0001 | 0x0002 | 0x0008 | 0x0020 | 0x0040 | 0x0400,
    };

    /// Writes an ext superblock at byte `at + 1024` of `disk`.
    pub(crate) fn put_ext_superblock(
        disk: &mut [u8],
        at: usize,
        features: ExtFeatures,
        label: &[u8],
        uuid: [u8; 16],
    ) {
        let sb = &mut disk[at + 1024..at + 2048];
        sb[0x18..0x1C].copy_from_slice(&2u32.to_le_bytes()); // log2(block size) - 10: 4 KiB
        sb[0x38..0x3A].copy_from_slice(&0xEF53u16.to_le_bytes()); // magic
        sb[0x4C..0x50].copy_from_slice(&1u32.to_le_bytes()); // revision: dynamic
        sb[0x5C..0x60].copy_from_slice(&features.compat.to_le_bytes()); // compatible features
        sb[0x60..0x64].copy_from_slice(&features.incompat.to_le_bytes()); // incompatible features
        sb[0x64..0x68].copy_from_slice(&features.ro_compat.to_le_bytes()); // read-only compatible features
        sb[0x68..0x78].copy_from_slice(&uuid); // filesystem UUID
        sb[0x78..0x78 + label.len()].copy_from_slice(label); // volume name, NUL-padded to 16
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;
    use std::path::Path;

    use proptest::prelude::*;

    use super::test_superblocks::*;
    use super::*;
    use crate::layout::host_tools::{blkid, run, sparse_file};

    const UUID_BYTES: [u8; 16] = [
        0x01, 0x23, 0x45, 0x67, 0x89, 0xAB, 0xCD, 0xEF, 0x10, 0x32, 0x54, 0x76, 0x98, 0xBA, 0xDC,
        0xFE,
    ];
    const UUID_TEXT: &str = "01234567-89ab-cdef-1032-547698badcfe";

    fn probe(disk: &[u8]) -> Option<FsInfo> {
        probe_filesystem(&mut Cursor::new(disk), 0, disk.len() as u64).unwrap()
    }

    fn ext_with(features: ExtFeatures) -> Option<FsInfo> {
        let mut disk = vec![0u8; 8192];
        put_ext_superblock(&mut disk, 0, features, b"root", UUID_BYTES);
        probe(&disk)
    }

    #[test]
    fn ext4_features_give_ext4_with_label_and_uuid() {
        let info = ext_with(EXT4_FEATURES).unwrap();
        assert_eq!(info.fs_type, "ext4");
        assert_eq!(info.label.as_deref(), Some("root"));
        assert_eq!(info.uuid.as_deref(), Some(UUID_TEXT));
    }

    #[test]
    fn ext_kind_follows_feature_flags() {
        let journal_only = ExtFeatures {
            compat: 0x0004,
            incompat: 0x0002,
            ro_compat: 0x0003,
        };
        let no_journal = ExtFeatures {
            compat: 0,
            incompat: 0x0002,
            ro_compat: 0x0003,
        };
        let extents_without_journal = ExtFeatures {
            compat: 0,
            incompat: 0x0002 | 0x0040,
            ro_compat: 0,
        };
        let huge_file_only = ExtFeatures {
            compat: 0x0004,
            incompat: 0,
            ro_compat: 0x0008,
        };
        let journal_device = ExtFeatures {
            compat: 0,
            incompat: 0x0008,
            ro_compat: 0,
        };

        assert_eq!(ext_with(journal_only).unwrap().fs_type, "ext3");
        assert_eq!(ext_with(no_journal).unwrap().fs_type, "ext2");
        assert_eq!(ext_with(extents_without_journal).unwrap().fs_type, "ext4");
        assert_eq!(ext_with(huge_file_only).unwrap().fs_type, "ext4");
        assert_eq!(ext_with(journal_device).unwrap().fs_type, "jbd");
    }

    #[test]
    fn ext_without_label_or_uuid_reports_none() {
        let mut disk = vec![0u8; 4096];
        put_ext_superblock(&mut disk, 0, EXT4_FEATURES, b"", [0; 16]);
        let info = probe(&disk).unwrap();
        assert_eq!(info.label, None);
        assert_eq!(info.uuid, None);
    }

    #[test]
    fn probe_reads_at_the_given_offset() {
        // The superblock lies in a range starting at byte 4096; the range 0.. holds nothing.
        let mut disk = vec![0u8; 16384];
        put_ext_superblock(&mut disk, 4096, EXT4_FEATURES, b"data", UUID_BYTES);
        let at_offset = probe_filesystem(&mut Cursor::new(&disk), 4096, 8192).unwrap();
        let at_start = probe_filesystem(&mut Cursor::new(&disk), 0, 4096).unwrap();
        assert_eq!(at_offset.unwrap().label.as_deref(), Some("data"));
        assert_eq!(at_start, None);
    }

    #[test]
    fn range_shorter_than_superblock_gives_none() {
        let mut disk = vec![0u8; 8192];
        put_ext_superblock(&mut disk, 0, EXT4_FEATURES, b"root", UUID_BYTES);
        // 2047 bytes end one byte before the superblock does.
        let info = probe_filesystem(&mut Cursor::new(&disk), 0, 2047).unwrap();
        assert_eq!(info, None);
    }

    #[test]
    fn range_beyond_reader_is_an_io_error() {
        let disk = vec![0u8; 1000];
        let err = probe_filesystem(&mut Cursor::new(&disk), 0, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn xfs_superblock_is_recognised() {
        let mut disk = vec![0u8; 4096];
        disk[0..4].copy_from_slice(b"XFSB"); // magic
        disk[4..8].copy_from_slice(&4096u32.to_be_bytes()); // block size
        disk[32..48].copy_from_slice(&UUID_BYTES); // filesystem UUID
        disk[108..112].copy_from_slice(b"home"); // label, NUL-padded to 12
        let info = probe(&disk).unwrap();
        assert_eq!(info.fs_type, "xfs");
        assert_eq!(info.label.as_deref(), Some("home"));
        assert_eq!(info.uuid.as_deref(), Some(UUID_TEXT));
    }

    #[test]
    fn btrfs_superblock_is_recognised() {
        let mut disk = vec![0u8; 0x10000 + 4096];
        let sb = &mut disk[0x10000..];
        sb[0x20..0x30].copy_from_slice(&UUID_BYTES); // filesystem UUID (fsid)
        sb[0x30..0x38].copy_from_slice(&0x10000u64.to_le_bytes()); // this superblock's address
        sb[0x40..0x48].copy_from_slice(b"_BHRfS_M"); // magic
        sb[0x12B..0x12F].copy_from_slice(b"pool"); // label, NUL-padded to 256
        let info = probe(&disk).unwrap();
        assert_eq!(info.fs_type, "btrfs");
        assert_eq!(info.label.as_deref(), Some("pool"));
        assert_eq!(info.uuid.as_deref(), Some(UUID_TEXT));
    }

    #[test]
    fn fat32_boot_sector_is_recognised() {
        let mut disk = vec![0u8; 4096];
        disk[0] = 0xEB; // jump instruction
        disk[0x0B..0x0D].copy_from_slice(&512u16.to_le_bytes()); // bytes per sector
        disk[0x0D] = 8; // sectors per cluster
        disk[0x0E..0x10].copy_from_slice(&32u16.to_le_bytes()); // reserved sectors
        disk[0x10] = 2; // number of FATs
        disk[0x42] = 0x29; // extended boot signature: id and label follow
        disk[0x43..0x47].copy_from_slice(&0x1A2B_3C4Du32.to_le_bytes()); // volume id
        disk[0x47..0x52].copy_from_slice(b"EFI        "); // label, space-padded to 11
        disk[0x52..0x5A].copy_from_slice(b"FAT32   "); // filesystem type string
        disk[510] = 0x55; // boot signature
        disk[511] = 0xAA;
        let info = probe(&disk).unwrap();
        assert_eq!(info.fs_type, "vfat");
        assert_eq!(info.label.as_deref(), Some("EFI"));
        assert_eq!(info.uuid.as_deref(), Some("1A2B-3C4D"));
    }

    #[test]
    fn swap_signature_is_recognised() {
        let mut disk = vec![0u8; 8192];
        disk[1024..1028].copy_from_slice(&1u32.to_le_bytes()); // header version 1
        disk[1036..1052].copy_from_slice(&UUID_BYTES); // UUID
        disk[1052..1056].copy_from_slice(b"swap"); // label, NUL-padded to 16
        disk[4086..4096].copy_from_slice(b"SWAPSPACE2"); // signature at the end of a 4 KiB page
        let info = probe(&disk).unwrap();
        assert_eq!(info.fs_type, "swap");
        assert_eq!(info.label.as_deref(), Some("swap"));
        assert_eq!(info.uuid.as_deref(), Some(UUID_TEXT));
    }

    #[test]
    fn zeroed_range_has_no_filesystem() {
        assert_eq!(probe(&vec![0u8; 128 * 1024]), None);
    }

    /// Probes `file` and compares type, label and UUID with what `blkid -p` reports.
    fn assert_matches_blkid(file: &Path, expected_type: &str) {
        let size = std::fs::metadata(file).unwrap().len();
        let mut reader = std::fs::File::open(file).unwrap();
        let info = probe_filesystem(&mut reader, 0, size)
            .unwrap()
            .expect("a filesystem");
        let reported = blkid(file, None);

        assert_eq!(info.fs_type, expected_type);
        assert_eq!(Some(&info.fs_type), reported.get("TYPE"));
        assert_eq!(info.uuid.as_ref(), reported.get("UUID"));
        assert_eq!(info.label.as_ref(), reported.get("LABEL"));
    }

    #[test]
    fn mkfs_ext_types_match_blkid() {
        let dir = tempfile::tempdir().unwrap();
        for kind in ["ext2", "ext3", "ext4"] {
            let file = sparse_file(dir.path(), kind, 32 << 20);
            let tool = format!("mkfs.{kind}");
            run(
                &tool,
                "e2fsprogs",
                &["-q", "-L", "label-of-ext", file.to_str().unwrap()],
                "",
            );
            assert_matches_blkid(&file, kind);
        }
    }

    #[test]
    fn mkfs_xfs_matches_blkid() {
        let dir = tempfile::tempdir().unwrap();
        // mkfs.xfs 6.1.0 rejects filesystems under 300 MB.
        let file = sparse_file(dir.path(), "xfs", 320 << 20);
        run(
            "mkfs.xfs",
            "xfsprogs",
            &["-q", "-L", "xfs-label", file.to_str().unwrap()],
            "",
        );
        assert_matches_blkid(&file, "xfs");
    }

    #[test]
    fn mkfs_btrfs_matches_blkid() {
        let dir = tempfile::tempdir().unwrap();
        let file = sparse_file(dir.path(), "btrfs", 256 << 20);
        run(
            "mkfs.btrfs",
            "btrfs-progs",
            &["-q", "-L", "btrfs-label", file.to_str().unwrap()],
            "",
        );
        assert_matches_blkid(&file, "btrfs");
    }

    #[test]
    fn mkfs_vfat_and_mkswap_match_blkid() {
        let dir = tempfile::tempdir().unwrap();
        let fat32 = sparse_file(dir.path(), "fat32", 64 << 20);
        run(
            "mkfs.vfat",
            "dosfstools",
            &["-F", "32", "-n", "ESP", fat32.to_str().unwrap()],
            "",
        );
        let fat16 = sparse_file(dir.path(), "fat16", 32 << 20);
        run(
            "mkfs.vfat",
            "dosfstools",
            &["-F", "16", fat16.to_str().unwrap()],
            "",
        );
        let swap = sparse_file(dir.path(), "swap", 16 << 20);
        run(
            "mkswap",
            "util-linux",
            &["-L", "swap-label", swap.to_str().unwrap()],
            "",
        );

        assert_matches_blkid(&fat32, "vfat");
        assert_matches_blkid(&fat16, "vfat");
        assert_matches_blkid(&swap, "swap");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..0x12000),
            offset in 0u64..0x2000,
            size in 0u64..0x20000,
        ) {
            // Reads past the buffer are I/O errors; only a panic fails the property.
            let _ = probe_filesystem(&mut Cursor::new(&bytes), offset, size);
        }

        #[test]
        fn superblock_magic_with_random_fields_never_panics(
            fields in proptest::collection::vec(any::<u8>(), 4096),
            magic in 0usize..6,
        ) {
            let mut disk = vec![0u8; 0x11000];
            disk[..4096].copy_from_slice(&fields);
            disk[1024 + 1024..1024 + 2048].copy_from_slice(&fields[..1024]);
            match magic {
                0 => disk[0..4].copy_from_slice(b"XFSB"),
                1 => disk[1024 + 0x38..1024 + 0x3A].copy_from_slice(&[0x53, 0xEF]),
                2 => disk[0x10040..0x10048].copy_from_slice(b"_BHRfS_M"),
                3 => disk[4086..4096].copy_from_slice(b"SWAPSPACE2"),
                4 => { disk[0] = 0xEB; disk[510] = 0x55; disk[511] = 0xAA; }
                _ => disk[0..4].copy_from_slice(b"hsqs"),
            }
            let len = disk.len() as u64;
            prop_assert!(probe_filesystem(&mut Cursor::new(&disk), 0, len).is_ok());
        }
    }
}
