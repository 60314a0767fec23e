//! MBR and GPT partition-table parsing, for disks whose contents may be hostile.
//!
//! The parser reads through any `Read + Seek`, so it works on a raw image file, a loop
//! device or a qcow2 image exposed by a user-space NBD client. Every table field is checked
//! before use. Entries must lie inside the disk and must not overlap. The extended-partition
//! chain must not loop and has a length limit. GPT headers and entry arrays must carry
//! correct CRC32s, and their sizes have a fixed cap. No input makes the parser panic, loop
//! without bound or allocate more than [`MAX_GPT_ENTRY_ARRAY_BYTES`].
//!
//! Partitions are numbered as Linux numbers them: MBR primaries 1 to 4 by slot, logical
//! partitions from 5 in chain order, and GPT entries by their index in the entry array plus
//! one. The extended-partition container itself is not listed because it holds no
//! filesystem. The sector size is always 512 bytes.
//!
//! # Why not the `gpt` or `mbrman` crates
//!
//! Both were tried against hand-built hostile images (`gpt` 4.1.0, `mbrman` 0.6.1).
//! `gpt` panics (an `assert_eq!` on the entry size) on a header with a valid CRC and a
//! 256-byte entry size, allocates `entries x entry size` bytes as the header declares them
//! (512 GiB for `u32::MAX` entries), and needs `Write` on the device even to read.
//! `mbrman` accepts primaries that overlap or end beyond the disk without complaint, so
//! every check here would still be needed on top of it. The formats are small enough that
//! an own parser with explicit limits is the safer choice.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Read, Seek, SeekFrom};

/// The sector size that every table offset is counted in.
pub const SECTOR_SIZE: u64 = 512;

/// The maximum number of links followed in an extended-partition chain. Linux handles at
/// most 256 partitions per disk (`DISK_MAX_PARTS`), so a longer chain has no use.
pub const MAX_EXTENDED_CHAIN: usize = 256;

/// The largest GPT entry array read into memory, in bytes. The usual array is 128 entries
/// of 128 bytes (16 KiB); this allows 64 times that.
pub const MAX_GPT_ENTRY_ARRAY_BYTES: u64 = 1024 * 1024;

/// The largest GPT entry size accepted, in bytes. The UEFI specification allows 128 times
/// any power of two, while `sfdisk` writes 128 and Linux accepts only 128.
pub const MAX_GPT_ENTRY_SIZE: u32 = 1024;

/// MBR partition types that mark an extended partition (DOS, Windows LBA, Linux).
const EXTENDED_TYPES: [u8; 3] = [0x05, 0x0F, 0x85];

/// The MBR partition type of a GPT protective entry.
const GPT_PROTECTIVE_TYPE: u8 = 0xEE;

/// The kind of a partition table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    /// A DOS master boot record, with logical partitions in an extended partition.
    Mbr,
    /// A GUID partition table.
    Gpt,
}

impl fmt::Display for TableKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Mbr => "MBR",
            Self::Gpt => "GPT",
        })
    }
}

/// One partition of a table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Partition {
    /// The partition number, as in `/dev/sda<number>`.
    pub number: u32,
    /// Start on the disk, in bytes.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
    /// The partition type: a GPT type GUID in uppercase, or an MBR type byte such as `0x83`.
    pub type_id: String,
    /// The GPT partition name, when it is not empty. MBR partitions have none.
    pub label: Option<String>,
    /// The GPT unique partition GUID in lowercase, or the MBR form `xxxxxxxx-NN` (disk
    /// signature and partition number in hex), as Linux reports `PARTUUID`.
    pub uuid: Option<String>,
}

/// A parsed partition table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartitionTable {
    /// The kind of table.
    pub kind: TableKind,
    /// The GPT disk GUID in lowercase, or the MBR disk signature as 8 hex digits; `None` for
    /// an MBR whose signature is zero.
    pub disk_id: Option<String>,
    /// The partitions, in the order of their numbers.
    pub partitions: Vec<Partition>,
}

/// Errors from reading a partition table.
#[derive(Debug, thiserror::Error)]
pub enum PartitionError {
    /// Reading the disk failed.
    #[error("reading the disk at byte {offset} failed")]
    Io {
        offset: u64,
        #[source]
        source: io::Error,
    },
    /// A partition ends beyond the end of the disk.
    #[error(
        "partition {number} ends at byte {end}, beyond the end of the disk at byte {disk_size}"
    )]
    BeyondDisk {
        number: u32,
        end: u64,
        disk_size: u64,
    },
    /// Two partitions share sectors.
    #[error("partition {first} (bytes {first_start}..{first_end}) overlaps partition {second} (bytes {second_start}..{second_end})")]
    Overlap {
        first: u32,
        first_start: u64,
        first_end: u64,
        second: u32,
        second_start: u64,
        second_end: u64,
    },
    /// A partition entry is inconsistent in itself.
    #[error("partition {number} is invalid: {reason}")]
    InvalidEntry { number: u32, reason: String },
    /// The chain of extended boot records leads back to one already read.
    #[error("the extended partition chain loops back to the boot record at sector {lba}")]
    ExtendedChainLoop { lba: u64 },
    /// The chain of extended boot records is longer than the limit.
    #[error("the extended partition chain has more than {limit} links")]
    ExtendedChainTooLong { limit: usize },
    /// A link of the extended chain points outside the extended partition.
    #[error("the extended partition chain points to sector {lba}, outside the extended partition (sectors {start}..{end})")]
    ExtendedChainOutside { lba: u64, start: u64, end: u64 },
    /// A GPT header is damaged or inconsistent.
    #[error("the GPT header at sector {lba} is invalid: {reason}")]
    InvalidGptHeader { lba: u64, reason: String },
    /// A GPT header's CRC32 does not match its contents.
    #[error("the GPT header at sector {lba} has CRC32 {stored:#010x}, but its contents give {computed:#010x}")]
    GptHeaderCrc {
        lba: u64,
        stored: u32,
        computed: u32,
    },
    /// The GPT entry array's CRC32 does not match the header.
    #[error("the GPT entry array at sector {lba} has CRC32 {computed:#010x}, but its header records {stored:#010x}")]
    GptEntriesCrc {
        lba: u64,
        stored: u32,
        computed: u32,
    },
    /// The GPT header declares an entry array that is too large or malformed.
    #[error(
        "the GPT header at sector {lba} declares {count} entries of {entry_size} bytes: {reason}"
    )]
    GptEntryArray {
        lba: u64,
        count: u32,
        entry_size: u32,
        reason: String,
    },
}

/// Reads the partition table of a disk of `disk_size` bytes.
///
/// Returns `Ok(None)` when sector 0 holds no partition table: no `0x55AA` signature, a
/// boot flag other than `0x00` or `0x80` in any of the four MBR entries (a FAT boot sector
/// or other boot code, not a table), or four empty entries. A protective MBR entry (type
/// `0xEE`) means GPT. The primary GPT header is used; when it is damaged the backup header
/// in the last sector is tried, and when both are damaged the primary's error is returned.
pub fn read_partition_table<R: Read + Seek>(
    disk: &mut R,
    disk_size: u64,
) -> Result<Option<PartitionTable>, PartitionError> {
    if disk_size < SECTOR_SIZE {
        return Ok(None);
    }
    let mbr = read_sector(disk, 0)?;
    if !has_boot_signature(&mbr) {
        return Ok(None);
    }

    let entries = mbr_entries(&mbr);
    if entries.iter().any(|entry| entry.boot_flag & 0x7F != 0) {
        tracing::debug!("sector 0 has the boot signature but invalid boot flags; no MBR");
        return Ok(None);
    }
    if entries
        .iter()
        .any(|entry| entry.kind == GPT_PROTECTIVE_TYPE)
    {
        return read_gpt(disk, disk_size).map(Some);
    }
    if entries.iter().all(MbrEntry::is_empty) {
        return Ok(None);
    }
    let signature = u32::from_le_bytes(le_bytes(&mbr, 440));
    read_mbr(disk, disk_size, &entries, signature).map(Some)
}

/// One 16-byte MBR or EBR partition entry.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    boot_flag: u8,
    kind: u8,
    start_lba: u32,
    sectors: u32,
}

impl MbrEntry {
    fn is_empty(&self) -> bool {
        self.kind == 0 || self.sectors == 0
    }

    fn is_extended(&self) -> bool {
        EXTENDED_TYPES.contains(&self.kind)
    }
}

/// Decodes the four entries at byte 446 of an MBR or EBR.
fn mbr_entries(sector: &[u8; 512]) -> [MbrEntry; 4] {
    std::array::from_fn(|slot| {
        let base = 446 + 16 * slot;
        MbrEntry {
            boot_flag: sector[base],
            kind: sector[base + 4],
            start_lba: u32::from_le_bytes(le_bytes(sector, base + 8)),
            sectors: u32::from_le_bytes(le_bytes(sector, base + 12)),
        }
    })
}

fn read_mbr<R: Read + Seek>(
    disk: &mut R,
    disk_size: u64,
    entries: &[MbrEntry; 4],
    signature: u32,
) -> Result<PartitionTable, PartitionError> {
    let partuuid = |number: u32| Some(format!("{signature:08x}-{number:02x}"));
    let mut primaries = Vec::new();
    let mut extended = Vec::new();
    for (slot, entry) in (1u32..).zip(entries) {
        if entry.is_empty() {
            continue;
        }
        let partition = mbr_partition(slot, entry, 0, disk_size, partuuid(slot))?;
        if entry.is_extended() {
            extended.push(partition.clone());
        }
        primaries.push(partition);
    }
    // The extended containers take part in the overlap check against the primaries; the
    // logical partitions are checked to lie inside their container instead.
    check_overlaps(&primaries)?;

    let mut partitions: Vec<Partition> = primaries
        .into_iter()
        .filter(|partition| !extended.iter().any(|ext| ext.number == partition.number))
        .collect();
    let mut logicals = Vec::new();
    let mut next_number = 5;
    for container in &extended {
        read_extended_chain(
            disk,
            disk_size,
            container,
            &mut next_number,
            &partuuid,
            &mut logicals,
        )?;
    }
    check_overlaps(&logicals)?;
    partitions.extend(logicals);

    Ok(PartitionTable {
        kind: TableKind::Mbr,
        disk_id: (signature != 0).then(|| format!("{signature:08x}")),
        partitions,
    })
}

/// Builds a partition from an MBR entry whose start is relative to `base_lba`.
fn mbr_partition(
    number: u32,
    entry: &MbrEntry,
    base_lba: u64,
    disk_size: u64,
    uuid: Option<String>,
) -> Result<Partition, PartitionError> {
    let start_lba = base_lba + u64::from(entry.start_lba);
    if start_lba == 0 {
        return Err(PartitionError::InvalidEntry {
            number,
            reason: "it starts at sector 0, on the partition table itself".into(),
        });
    }
    let offset = start_lba * SECTOR_SIZE;
    let size = u64::from(entry.sectors) * SECTOR_SIZE;
    let end = offset + size;
    if end > disk_size {
        return Err(PartitionError::BeyondDisk {
            number,
            end,
            disk_size,
        });
    }
    Ok(Partition {
        number,
        offset,
        size,
        type_id: format!("0x{:02x}", entry.kind),
        label: None,
        uuid,
    })
}

/// Follows the chain of extended boot records of one extended partition.
///
/// Each EBR holds the logical partition in its first entry, relative to the EBR's own
/// sector, and the link to the next EBR in its second entry, relative to the start of the
/// extended partition. The third and fourth entries are ignored, as every partitioning
/// tool leaves them empty. An EBR without the boot signature ends the chain, as in Linux.
fn read_extended_chain<R: Read + Seek>(
    disk: &mut R,
    disk_size: u64,
    container: &Partition,
    next_number: &mut u32,
    partuuid: &dyn Fn(u32) -> Option<String>,
    logicals: &mut Vec<Partition>,
) -> Result<(), PartitionError> {
    let ext_start = container.offset / SECTOR_SIZE;
    let ext_end = ext_start + container.size / SECTOR_SIZE;
    let mut visited = HashSet::new();
    let mut ebr_lba = ext_start;

    for _ in 0..MAX_EXTENDED_CHAIN {
        if ebr_lba < ext_start || ebr_lba >= ext_end {
            return Err(PartitionError::ExtendedChainOutside {
                lba: ebr_lba,
                start: ext_start,
                end: ext_end,
            });
        }
        if !visited.insert(ebr_lba) {
            return Err(PartitionError::ExtendedChainLoop { lba: ebr_lba });
        }
        let ebr = read_sector(disk, ebr_lba)?;
        if !has_boot_signature(&ebr) {
            tracing::debug!(
                lba = ebr_lba,
                "extended boot record without signature ends the chain"
            );
            return Ok(());
        }
        let [data, link, _, _] = mbr_entries(&ebr);

        if !data.is_empty() && !data.is_extended() {
            let number = *next_number;
            let logical = mbr_partition(number, &data, ebr_lba, disk_size, partuuid(number))?;
            if logical.offset < container.offset
                || logical.offset + logical.size > container.offset + container.size
            {
                return Err(PartitionError::InvalidEntry {
                    number,
                    reason: format!(
                        "it lies outside its extended partition {} (bytes {}..{})",
                        container.number,
                        container.offset,
                        container.offset + container.size
                    ),
                });
            }
            logicals.push(logical);
            *next_number += 1;
        }

        if link.is_empty() || !link.is_extended() || link.start_lba == 0 {
            return Ok(());
        }
        ebr_lba = ext_start + u64::from(link.start_lba);
    }
    Err(PartitionError::ExtendedChainTooLong {
        limit: MAX_EXTENDED_CHAIN,
    })
}

/// The fields of a GPT header that the parser uses.
#[derive(Debug, Clone, Copy)]
struct GptHeader {
    lba: u64,
    first_usable: u64,
    last_usable: u64,
    disk_guid: [u8; 16],
    entries_lba: u64,
    entry_count: u32,
    entry_size: u32,
    entries_crc: u32,
}

fn read_gpt<R: Read + Seek>(
    disk: &mut R,
    disk_size: u64,
) -> Result<PartitionTable, PartitionError> {
    let total_sectors = disk_size / SECTOR_SIZE;
    let primary = read_gpt_header(disk, 1, total_sectors)
        .and_then(|header| read_gpt_entries(disk, &header, total_sectors).map(|e| (header, e)));
    let (header, entries) = match primary {
        Ok(found) => found,
        Err(primary_err) => {
            let backup_lba = total_sectors - 1;
            tracing::warn!(error = %primary_err, "primary GPT is damaged; trying the backup header");
            match read_gpt_header(disk, backup_lba, total_sectors).and_then(|header| {
                read_gpt_entries(disk, &header, total_sectors).map(|e| (header, e))
            }) {
                Ok(found) => found,
                Err(backup_err) => {
                    tracing::debug!(error = %backup_err, "backup GPT is damaged too");
                    return Err(primary_err);
                }
            }
        }
    };

    let mut partitions = Vec::new();
    for (number, entry) in (1u32..).zip(entries.chunks_exact(header.entry_size as usize)) {
        if let Some(partition) = gpt_partition(number, entry, &header, total_sectors)? {
            partitions.push(partition);
        }
    }
    check_overlaps(&partitions)?;

    Ok(PartitionTable {
        kind: TableKind::Gpt,
        disk_id: Some(format_guid(&header.disk_guid, false)),
        partitions,
    })
}

/// Reads and checks the GPT header at `lba`.
fn read_gpt_header<R: Read + Seek>(
    disk: &mut R,
    lba: u64,
    total_sectors: u64,
) -> Result<GptHeader, PartitionError> {
    let invalid = |reason: String| PartitionError::InvalidGptHeader { lba, reason };
    if lba < 1 || lba >= total_sectors {
        return Err(invalid(format!(
            "the disk has only {total_sectors} sectors"
        )));
    }
    let sector = read_sector(disk, lba)?;
    if &sector[0..8] != b"EFI PART" {
        return Err(invalid("the signature \"EFI PART\" is missing".into()));
    }
    let header_size = u32::from_le_bytes(le_bytes(&sector, 12));
    if !(92..=512).contains(&header_size) {
        return Err(invalid(format!(
            "header size {header_size} is outside 92..=512"
        )));
    }

    let stored = u32::from_le_bytes(le_bytes(&sector, 16));
    let mut hashed = sector;
    hashed[16..20].fill(0);
    let computed = crc32fast::hash(&hashed[..header_size as usize]);
    if stored != computed {
        return Err(PartitionError::GptHeaderCrc {
            lba,
            stored,
            computed,
        });
    }

    let header = GptHeader {
        lba,
        first_usable: u64::from_le_bytes(le_bytes(&sector, 40)),
        last_usable: u64::from_le_bytes(le_bytes(&sector, 48)),
        disk_guid: le_bytes(&sector, 56),
        entries_lba: u64::from_le_bytes(le_bytes(&sector, 72)),
        entry_count: u32::from_le_bytes(le_bytes(&sector, 80)),
        entry_size: u32::from_le_bytes(le_bytes(&sector, 84)),
        entries_crc: u32::from_le_bytes(le_bytes(&sector, 88)),
    };
    let my_lba = u64::from_le_bytes(le_bytes(&sector, 24));
    if my_lba != lba {
        return Err(invalid(format!("it records its own sector as {my_lba}")));
    }
    if header.first_usable > header.last_usable {
        return Err(invalid(format!(
            "the usable area starts at sector {} after it ends at sector {}",
            header.first_usable, header.last_usable
        )));
    }
    if header.last_usable >= total_sectors {
        return Err(invalid(format!(
            "the usable area ends at sector {}, beyond the disk's last sector {}",
            header.last_usable,
            total_sectors - 1
        )));
    }
    Ok(header)
}

/// Reads the entry array of a checked header and verifies its CRC32.
fn read_gpt_entries<R: Read + Seek>(
    disk: &mut R,
    header: &GptHeader,
    total_sectors: u64,
) -> Result<Vec<u8>, PartitionError> {
    let bad_array = |reason: String| PartitionError::GptEntryArray {
        lba: header.lba,
        count: header.entry_count,
        entry_size: header.entry_size,
        reason,
    };
    let entry_size = header.entry_size;
    let valid_size = entry_size % 128 == 0
        && (entry_size / 128).is_power_of_two()
        && entry_size <= MAX_GPT_ENTRY_SIZE;
    if !valid_size {
        return Err(bad_array(format!(
            "the entry size must be 128 times a power of two, at most {MAX_GPT_ENTRY_SIZE}"
        )));
    }
    let array_bytes = u64::from(header.entry_count) * u64::from(entry_size);
    if array_bytes > MAX_GPT_ENTRY_ARRAY_BYTES {
        return Err(bad_array(format!(
            "{array_bytes} bytes is more than the {MAX_GPT_ENTRY_ARRAY_BYTES} bytes accepted"
        )));
    }
    let array_sectors = array_bytes.div_ceil(SECTOR_SIZE);
    let array_end = header.entries_lba.saturating_add(array_sectors);
    if header.entries_lba < 2 || array_end > total_sectors {
        return Err(bad_array(format!(
            "the array at sectors {}..{array_end} does not fit between sector 2 and the disk's end at sector {total_sectors}",
            header.entries_lba
        )));
    }
    if (header.entries_lba..array_end).contains(&header.lba) {
        return Err(bad_array("the array covers the header itself".into()));
    }

    let mut entries = vec![0u8; array_bytes as usize];
    read_at(disk, header.entries_lba * SECTOR_SIZE, &mut entries)?;
    let computed = crc32fast::hash(&entries);
    if computed != header.entries_crc {
        return Err(PartitionError::GptEntriesCrc {
            lba: header.entries_lba,
            stored: header.entries_crc,
            computed,
        });
    }
    Ok(entries)
}

/// Decodes one GPT entry; `None` for an unused entry (type GUID all zero).
fn gpt_partition(
    number: u32,
    entry: &[u8],
    header: &GptHeader,
    total_sectors: u64,
) -> Result<Option<Partition>, PartitionError> {
    let type_guid: [u8; 16] = le_bytes(entry, 0);
    if type_guid == [0; 16] {
        return Ok(None);
    }
    let unique_guid: [u8; 16] = le_bytes(entry, 16);
    let first_lba = u64::from_le_bytes(le_bytes(entry, 32));
    let last_lba = u64::from_le_bytes(le_bytes(entry, 40));
    let invalid = |reason: String| PartitionError::InvalidEntry { number, reason };

    if first_lba > last_lba {
        return Err(invalid(format!(
            "it starts at sector {first_lba} after it ends at sector {last_lba}"
        )));
    }
    if last_lba >= total_sectors {
        return Err(PartitionError::BeyondDisk {
            number,
            end: last_lba.saturating_add(1).saturating_mul(SECTOR_SIZE),
            disk_size: total_sectors * SECTOR_SIZE,
        });
    }
    if first_lba < header.first_usable || last_lba > header.last_usable {
        return Err(invalid(format!(
            "sectors {first_lba}..={last_lba} lie outside the usable area {}..={}",
            header.first_usable, header.last_usable
        )));
    }

    let name_units: Vec<u16> = entry[56..128]
        .chunks_exact(2)
        .map(|pair| u16::from_le_bytes([pair[0], pair[1]]))
        .take_while(|&unit| unit != 0)
        .collect();
    let name = String::from_utf16_lossy(&name_units);

    Ok(Some(Partition {
        number,
        offset: first_lba * SECTOR_SIZE,
        size: (last_lba - first_lba + 1) * SECTOR_SIZE,
        type_id: format_guid(&type_guid, true),
        label: (!name.is_empty()).then_some(name),
        uuid: Some(format_guid(&unique_guid, false)),
    }))
}

/// Fails when any two partitions share a byte.
fn check_overlaps(partitions: &[Partition]) -> Result<(), PartitionError> {
    let mut sorted: Vec<&Partition> = partitions.iter().collect();
    sorted.sort_by_key(|partition| (partition.offset, partition.number));
    for pair in sorted.windows(2) {
        let (before, after) = (pair[0], pair[1]);
        if after.offset < before.offset + before.size {
            let (first, second) = if before.number < after.number {
                (before, after)
            } else {
                (after, before)
            };
            return Err(PartitionError::Overlap {
                first: first.number,
                first_start: first.offset,
                first_end: first.offset + first.size,
                second: second.number,
                second_start: second.offset,
                second_end: second.offset + second.size,
            });
        }
    }
    Ok(())
}

/// Formats a GUID stored in the mixed-endian GPT layout: the first three fields are
/// little-endian, the last eight bytes are in order.
pub(crate) fn format_guid(bytes: &[u8; 16], uppercase: bool) -> String {
    let text = format!(
        "{:08x}-{:04x}-{:04x}-{:02x}{:02x}-{:02x}{:02x}{:02x}{:02x}{:02x}{:02x}",
        u32::from_le_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]),
        u16::from_le_bytes([bytes[4], bytes[5]]),
        u16::from_le_bytes([bytes[6], bytes[7]]),
        bytes[8],
        bytes[9],
        bytes[10],
        bytes[11],
        bytes[12],
        bytes[13],
        bytes[14],
        bytes[15],
    );
    if uppercase {
        text.to_ascii_uppercase()
    } else {
        text
    }
}

fn has_boot_signature(sector: &[u8; 512]) -> bool {
    sector[510] == 0x55 && sector[511] == 0xAA
}

/// Copies `N` bytes at `offset`; every caller passes an offset that fits in `bytes`.
fn le_bytes<const N: usize>(bytes: &[u8], offset: usize) -> [u8; N] {
    let mut out = [0u8; N];
    if let Some(source) = bytes.get(offset..offset + N) {
        out.copy_from_slice(source);
    }
    out
}

fn read_sector<R: Read + Seek>(disk: &mut R, lba: u64) -> Result<[u8; 512], PartitionError> {
    let mut sector = [0u8; 512];
    read_at(disk, lba * SECTOR_SIZE, &mut sector)?;
    Ok(sector)
}

fn read_at<R: Read + Seek>(
    disk: &mut R,
    offset: u64,
    buf: &mut [u8],
) -> Result<(), PartitionError> {
    disk.seek(SeekFrom::Start(offset))
        .and_then(|_| disk.read_exact(buf))
        .map_err(|source| PartitionError::Io { offset, source })
}

/// Builders of MBR and GPT images in memory, shared by the tests of this crate.
#[cfg(test)]
pub(crate) mod test_images {
    use super::SECTOR_SIZE;

    /// The Linux filesystem partition type GUID, as stored on disk (mixed-endian) for
    /// `0FC63DAF-8483-4772-8E79-3D69D8477DE4`.
    pub(crate) const LINUX_FS_TYPE: [u8; 16] = [
        0xAF, 0x3D, 0xC6, 0x0F, 0x83, 0x84, 0x72, 0x47, 0x8E, 0x79, 0x3D, 0x69, 0xD8, 0x47, 0x7D,
        0xE4,
    ];

    /// The BIOS boot partition type GUID, as stored on disk, for
    /// `21686148-6E6F-6E6F-744E-656564454649`.
    pub(crate) const BIOS_BOOT_TYPE: [u8; 16] = [
        0x48, 0x61, 0x68, 0x21, 0x6F, 0x6E, 0x6F, 0x6E, 0x74, 0x4E, 0x65, 0x65, 0x64, 0x45, 0x46,
        0x49,
    ];

    /// Entries in the array of a built GPT, and their size: the values every tool uses.
    pub(crate) const GPT_ENTRY_COUNT: u32 = 128;
    pub(crate) const GPT_ENTRY_SIZE: u32 = 128;
    /// Sectors taken by the entry array: 128 x 128 bytes / 512.
    const GPT_ARRAY_SECTORS: u64 = 32;

    /// Writes the boot signature `55 AA` at the end of a sector.
    pub(crate) fn put_boot_signature(disk: &mut [u8], lba: u64) {
        let end = ((lba + 1) * SECTOR_SIZE) as usize;
        disk[end - 2] = 0x55;
        disk[end - 1] = 0xAA;
    }

    /// Writes one 16-byte MBR/EBR entry into `slot` (0-3) of the sector at `lba`.
    pub(crate) fn put_mbr_entry(
        disk: &mut [u8],
        lba: u64,
        slot: usize,
        kind: u8,
        start: u32,
        sectors: u32,
    ) {
        let base = (lba * SECTOR_SIZE) as usize + 446 + 16 * slot;
        disk[base] = 0x00; // boot flag: not active
        disk[base + 4] = kind; // partition type byte
        disk[base + 8..base + 12].copy_from_slice(&start.to_le_bytes()); // first sector, LBA
        disk[base + 12..base + 16].copy_from_slice(&sectors.to_le_bytes()); // sector count
    }

    /// Builds an MBR disk of `sectors` sectors with disk signature `0x12345678` and the
    /// given primary entries `(slot, type, start, sectors)`.
    pub(crate) fn mbr_disk(sectors: u64, entries: &[(usize, u8, u32, u32)]) -> Vec<u8> {
        let mut disk = vec![0u8; (sectors * SECTOR_SIZE) as usize];
        disk[440..444].copy_from_slice(&0x1234_5678u32.to_le_bytes()); // disk signature
        for &(slot, kind, start, count) in entries {
            put_mbr_entry(&mut disk, 0, slot, kind, start, count);
        }
        put_boot_signature(&mut disk, 0);
        disk
    }

    /// Writes an EBR at `lba`: the logical partition `(start relative to this EBR,
    /// sectors)` and the link `(start relative to the extended partition, sectors)`.
    pub(crate) fn put_ebr(
        disk: &mut [u8],
        lba: u64,
        logical: Option<(u32, u32)>,
        link: Option<(u32, u32)>,
    ) {
        if let Some((start, sectors)) = logical {
            put_mbr_entry(disk, lba, 0, 0x83, start, sectors);
        }
        if let Some((start, sectors)) = link {
            put_mbr_entry(disk, lba, 1, 0x05, start, sectors);
        }
        put_boot_signature(disk, lba);
    }

    /// One GPT entry to write: its index in the array (number - 1), type, sectors and name.
    pub(crate) struct GptEntry<'a> {
        pub(crate) index: usize,
        pub(crate) type_guid: [u8; 16],
        pub(crate) first_lba: u64,
        pub(crate) last_lba: u64,
        pub(crate) name: &'a str,
    }

    /// Unique GUID of the entry at `index`: bytes 0x10 + index, then 1, 2, ... 15.
    pub(crate) fn unique_guid(index: usize) -> [u8; 16] {
        std::array::from_fn(|i| if i == 0 { 0x10 + index as u8 } else { i as u8 })
    }

    /// Builds a GPT disk of `sectors` sectors the way `sfdisk` lays it out: protective MBR,
    /// primary header at LBA 1 with its array at LBA 2, backup array and header at the end.
    pub(crate) fn gpt_disk(sectors: u64, entries: &[GptEntry<'_>]) -> Vec<u8> {
        let mut disk = vec![0u8; (sectors * SECTOR_SIZE) as usize];
        // Protective MBR: one 0xEE entry from LBA 1 to the end of the disk.
        put_mbr_entry(&mut disk, 0, 0, 0xEE, 1, (sectors - 1) as u32);
        put_boot_signature(&mut disk, 0);

        let mut array = vec![0u8; (GPT_ENTRY_COUNT * GPT_ENTRY_SIZE) as usize];
        for entry in entries {
            let base = entry.index * GPT_ENTRY_SIZE as usize;
            let slot = &mut array[base..base + GPT_ENTRY_SIZE as usize];
            slot[0..16].copy_from_slice(&entry.type_guid); // partition type GUID
            slot[16..32].copy_from_slice(&unique_guid(entry.index)); // unique partition GUID
            slot[32..40].copy_from_slice(&entry.first_lba.to_le_bytes()); // first LBA
            slot[40..48].copy_from_slice(&entry.last_lba.to_le_bytes()); // last LBA, inclusive
            for (i, unit) in entry.name.encode_utf16().take(36).enumerate() {
                slot[56 + 2 * i..58 + 2 * i].copy_from_slice(&unit.to_le_bytes());
                // name, UTF-16LE
            }
        }

        let last = sectors - 1;
        let backup_array = last - GPT_ARRAY_SECTORS;
        for (header_lba, array_lba, alternate) in [(1, 2, last), (last, backup_array, 1)] {
            let at = (array_lba * SECTOR_SIZE) as usize;
            disk[at..at + array.len()].copy_from_slice(&array);
            put_gpt_header(&mut disk, header_lba, array_lba, alternate, sectors);
        }
        disk
    }

    fn put_gpt_header(disk: &mut [u8], lba: u64, array_lba: u64, alternate: u64, sectors: u64) {
        let base = (lba * SECTOR_SIZE) as usize;
        let header = &mut disk[base..base + 92];
        header[0..8].copy_from_slice(b"EFI PART"); // signature
        header[8..12].copy_from_slice(&0x0001_0000u32.to_le_bytes()); // revision 1.0
        header[12..16].copy_from_slice(&92u32.to_le_bytes()); // header size
        header[24..32].copy_from_slice(&lba.to_le_bytes()); // this header's LBA
        header[32..40].copy_from_slice(&alternate.to_le_bytes()); // the other header's LBA
        header[40..48].copy_from_slice(&(2 + GPT_ARRAY_SECTORS).to_le_bytes()); // first usable LBA
        header[48..56].copy_from_slice(&(sectors - 2 - GPT_ARRAY_SECTORS).to_le_bytes()); // last usable LBA
        header[56..72].copy_from_slice(&[0xD1; 16]); // disk GUID
        header[72..80].copy_from_slice(&array_lba.to_le_bytes()); // entry array LBA
        header[80..84].copy_from_slice(&GPT_ENTRY_COUNT.to_le_bytes()); // entry count
        header[84..88].copy_from_slice(&GPT_ENTRY_SIZE.to_le_bytes()); // entry size
        reseal_gpt(disk, lba);
    }

    /// Recomputes the entry-array CRC and then the header CRC of the header at `lba`, so
    /// that a test can change a field and still pass the CRC checks.
    pub(crate) fn reseal_gpt(disk: &mut [u8], lba: u64) {
        let base = (lba * SECTOR_SIZE) as usize;
        let field = |offset: usize, disk: &[u8]| {
            u64::from_le_bytes(disk[base + offset..base + offset + 8].try_into().unwrap())
        };
        let array_lba = field(72, disk);
        let count = u32::from_le_bytes(disk[base + 80..base + 84].try_into().unwrap());
        let size = u32::from_le_bytes(disk[base + 84..base + 88].try_into().unwrap());
        let array_start = (array_lba * SECTOR_SIZE) as usize;
        let array_len = (u64::from(count) * u64::from(size)) as usize;
        if let Some(array) = disk.get(array_start..array_start.saturating_add(array_len)) {
            let crc = crc32fast::hash(array);
            disk[base + 88..base + 92].copy_from_slice(&crc.to_le_bytes()); // entry array CRC32
        }
        disk[base + 16..base + 20].fill(0);
        let crc = crc32fast::hash(&disk[base..base + 92]);
        disk[base + 16..base + 20].copy_from_slice(&crc.to_le_bytes()); // header CRC32
    }
}

#[cfg(test)]
mod tests {
    use std::io::Cursor;

    use proptest::prelude::*;

    use super::test_images::*;
    use super::*;

    fn read(disk: &[u8]) -> Result<Option<PartitionTable>, PartitionError> {
        read_partition_table(&mut Cursor::new(disk), disk.len() as u64)
    }

    fn numbers(table: &PartitionTable) -> Vec<u32> {
        table.partitions.iter().map(|p| p.number).collect()
    }

    /// A 256-sector GPT disk with Linux partitions 1 (sectors 40..=99) and 3 (100..=199).
    fn two_partition_gpt() -> Vec<u8> {
        gpt_disk(
            256,
            &[
                GptEntry {
                    index: 0,
                    type_guid: BIOS_BOOT_TYPE,
                    first_lba: 40,
                    last_lba: 99,
                    name: "boot",
                },
                GptEntry {
                    index: 2,
                    type_guid: LINUX_FS_TYPE,
                    first_lba: 100,
                    last_lba: 199,
                    name: "",
                },
            ],
        )
    }

    #[test]
    fn disk_without_signature_has_no_table() {
        let disk = vec![0u8; 4096];
        assert!(read(&disk).unwrap().is_none());
    }

    #[test]
    fn disk_shorter_than_a_sector_has_no_table() {
        assert!(read(&[0x55; 100]).unwrap().is_none());
    }

    #[test]
    fn boot_sector_with_invalid_boot_flags_is_not_a_table() {
        // A FAT boot sector: boot code fills the entry area, the signature is present.
        let mut disk = mbr_disk(64, &[(0, 0x83, 1, 10)]);
        disk[446] = 0x4F; // a boot flag other than 0x00 or 0x80
        assert!(read(&disk).unwrap().is_none());
    }

    #[test]
    fn mbr_with_only_empty_entries_is_not_a_table() {
        let disk = mbr_disk(64, &[]);
        assert!(read(&disk).unwrap().is_none());
    }

    #[test]
    fn mbr_primaries_are_numbered_by_slot() {
        // Slots 0 and 2 used: partitions 1 and 3.
        let disk = mbr_disk(200, &[(0, 0x83, 2, 50), (2, 0x0C, 100, 60)]);
        let table = read(&disk).unwrap().unwrap();

        assert_eq!(table.kind, TableKind::Mbr);
        assert_eq!(table.disk_id.as_deref(), Some("12345678"));
        assert_eq!(numbers(&table), [1, 3]);
        let first = &table.partitions[0];
        assert_eq!(first.offset, 2 * 512);
        assert_eq!(first.size, 50 * 512);
        assert_eq!(first.type_id, "0x83");
        assert_eq!(first.uuid.as_deref(), Some("12345678-01"));
        assert_eq!(first.label, None);
        assert_eq!(table.partitions[1].type_id, "0x0c");
        assert_eq!(table.partitions[1].uuid.as_deref(), Some("12345678-03"));
    }

    #[test]
    fn mbr_logicals_are_numbered_from_five() {
        // Primary 1 at 2..50; extended 2 at 100..300 with EBRs at 100 and 200, each holding
        // a logical partition that starts 2 sectors after its EBR.
        let mut disk = mbr_disk(400, &[(0, 0x83, 2, 48), (1, 0x05, 100, 200)]);
        put_ebr(&mut disk, 100, Some((2, 50)), Some((100, 100)));
        put_ebr(&mut disk, 200, Some((2, 60)), None);

        let table = read(&disk).unwrap().unwrap();

        assert_eq!(numbers(&table), [1, 5, 6]);
        assert_eq!(table.partitions[1].offset, 102 * 512);
        assert_eq!(table.partitions[1].size, 50 * 512);
        assert_eq!(table.partitions[2].offset, 202 * 512);
        assert_eq!(table.partitions[2].uuid.as_deref(), Some("12345678-06"));
    }

    #[test]
    fn mbr_entry_beyond_disk_is_rejected() {
        let disk = mbr_disk(100, &[(1, 0x83, 50, 51)]);
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(
                err,
                PartitionError::BeyondDisk {
                    number: 2,
                    end: 51712,
                    disk_size: 51200
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("partition 2"), "{err}");
    }

    #[test]
    fn mbr_overlapping_primaries_are_rejected() {
        let disk = mbr_disk(200, &[(0, 0x83, 10, 50), (3, 0x83, 59, 10)]);
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(
                err,
                PartitionError::Overlap {
                    first: 1,
                    second: 4,
                    ..
                }
            ),
            "{err:?}"
        );
        assert!(err.to_string().contains("partition 1"), "{err}");
        assert!(err.to_string().contains("partition 4"), "{err}");
    }

    #[test]
    fn mbr_entry_at_sector_zero_is_rejected() {
        let disk = mbr_disk(100, &[(0, 0x83, 0, 10)]);
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(err, PartitionError::InvalidEntry { number: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn extended_chain_loop_is_rejected() {
        // The EBR at 110 links to itself (relative start 10 within the extended partition).
        let mut disk = mbr_disk(300, &[(0, 0x05, 100, 150)]);
        put_ebr(&mut disk, 100, Some((2, 5)), Some((10, 20)));
        put_ebr(&mut disk, 110, Some((2, 5)), Some((10, 20)));
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(err, PartitionError::ExtendedChainLoop { lba: 110 }),
            "{err:?}"
        );
    }

    #[test]
    fn extended_chain_longer_than_limit_is_rejected() {
        // 300 EBRs in consecutive sectors, each linking to the next and holding no logical.
        let links = 300u32;
        let mut disk = mbr_disk(u64::from(links) + 10, &[(0, 0x05, 2, links + 1)]);
        for i in 0..links {
            put_ebr(&mut disk, 2 + u64::from(i), None, Some((i + 1, 1)));
        }
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(
                err,
                PartitionError::ExtendedChainTooLong {
                    limit: MAX_EXTENDED_CHAIN
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn extended_chain_link_outside_container_is_rejected() {
        let mut disk = mbr_disk(400, &[(0, 0x05, 100, 50)]);
        put_ebr(&mut disk, 100, Some((2, 5)), Some((200, 10)));
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(err, PartitionError::ExtendedChainOutside { lba: 300, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn logical_outside_extended_is_rejected() {
        // The logical ends at sector 100 + 2 + 60 = 162, past the container's end at 150.
        let mut disk = mbr_disk(300, &[(0, 0x05, 100, 50)]);
        put_ebr(&mut disk, 100, Some((2, 60)), None);
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(err, PartitionError::InvalidEntry { number: 5, .. }),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("outside its extended partition 1"),
            "{err}"
        );
    }

    #[test]
    fn gpt_entries_are_numbered_by_index() {
        let table = read(&two_partition_gpt()).unwrap().unwrap();

        assert_eq!(table.kind, TableKind::Gpt);
        assert_eq!(
            table.disk_id.as_deref(),
            Some("d1d1d1d1-d1d1-d1d1-d1d1-d1d1d1d1d1d1")
        );
        assert_eq!(numbers(&table), [1, 3]);
        let boot = &table.partitions[0];
        assert_eq!(boot.type_id, "21686148-6E6F-6E6F-744E-656564454649");
        assert_eq!(boot.label.as_deref(), Some("boot"));
        assert_eq!(
            boot.uuid.as_deref(),
            Some("03020110-0504-0706-0809-0a0b0c0d0e0f")
        );
        assert_eq!(boot.offset, 40 * 512);
        assert_eq!(boot.size, 60 * 512);
        let linux = &table.partitions[1];
        assert_eq!(linux.type_id, "0FC63DAF-8483-4772-8E79-3D69D8477DE4");
        assert_eq!(linux.label, None);
    }

    #[test]
    fn gpt_with_damaged_primary_header_uses_backup() {
        let mut disk = two_partition_gpt();
        disk[512 + 56] ^= 0xFF; // a disk GUID byte, without resealing the CRC
        let table = read(&disk).unwrap().unwrap();
        assert_eq!(numbers(&table), [1, 3]);
    }

    #[test]
    fn gpt_with_both_headers_damaged_reports_primary_crc() {
        let mut disk = two_partition_gpt();
        disk[512 + 56] ^= 0xFF;
        disk[255 * 512 + 56] ^= 0xFF;
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(err, PartitionError::GptHeaderCrc { lba: 1, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn gpt_with_damaged_entry_arrays_is_rejected() {
        let mut disk = two_partition_gpt();
        disk[2 * 512 + 40] ^= 0x01; // partition 1's last LBA in the primary array
        disk[(255 - 32) * 512 + 40] ^= 0x01; // and in the backup array
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(err, PartitionError::GptEntriesCrc { lba: 2, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn gpt_with_absurd_entry_count_is_rejected() {
        let mut disk = two_partition_gpt();
        for lba in [1, 255] {
            let at = lba * 512 + 80;
            disk[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes()); // entry count
            reseal_gpt(&mut disk, lba as u64);
        }
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(
                err,
                PartitionError::GptEntryArray {
                    lba: 1,
                    count: u32::MAX,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn gpt_with_odd_entry_size_is_rejected() {
        let mut disk = two_partition_gpt();
        for lba in [1, 255] {
            let at = lba * 512 + 84;
            disk[at..at + 4].copy_from_slice(&200u32.to_le_bytes()); // entry size
            reseal_gpt(&mut disk, lba as u64);
        }
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(
                err,
                PartitionError::GptEntryArray {
                    entry_size: 200,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn gpt_entry_beyond_disk_is_rejected() {
        let disk = gpt_disk(
            256,
            &[GptEntry {
                index: 1,
                type_guid: LINUX_FS_TYPE,
                first_lba: 100,
                last_lba: 300,
                name: "",
            }],
        );
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(err, PartitionError::BeyondDisk { number: 2, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("partition 2"), "{err}");
    }

    #[test]
    fn gpt_entry_outside_usable_area_is_rejected() {
        // Sector 10 lies in the primary entry array, before the first usable sector 34.
        let disk = gpt_disk(
            256,
            &[GptEntry {
                index: 0,
                type_guid: LINUX_FS_TYPE,
                first_lba: 10,
                last_lba: 60,
                name: "",
            }],
        );
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(err, PartitionError::InvalidEntry { number: 1, .. }),
            "{err:?}"
        );
        assert!(err.to_string().contains("usable area"), "{err}");
    }

    #[test]
    fn gpt_entry_ending_before_start_is_rejected() {
        let disk = gpt_disk(
            256,
            &[GptEntry {
                index: 4,
                type_guid: LINUX_FS_TYPE,
                first_lba: 100,
                last_lba: 99,
                name: "",
            }],
        );
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(err, PartitionError::InvalidEntry { number: 5, .. }),
            "{err:?}"
        );
    }

    #[test]
    fn gpt_overlapping_entries_are_rejected() {
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
                    first_lba: 120,
                    last_lba: 200,
                    name: "",
                },
            ],
        );
        let err = read(&disk).unwrap_err();
        assert!(
            matches!(
                err,
                PartitionError::Overlap {
                    first: 1,
                    second: 2,
                    ..
                }
            ),
            "{err:?}"
        );
    }

    #[test]
    fn gpt_read_error_is_reported_with_offset() {
        // The disk claims more bytes than the reader holds, so the backup header is missing
        // and the damaged primary leaves nothing to read.
        let mut disk = two_partition_gpt();
        disk[512 + 56] ^= 0xFF;
        let err = read_partition_table(&mut Cursor::new(&disk), 1024 * 512).unwrap_err();
        assert!(
            matches!(err, PartitionError::GptHeaderCrc { lba: 1, .. }),
            "{err:?}"
        );
        let short = &disk[..600];
        let err = read_partition_table(&mut Cursor::new(short), 256 * 512).unwrap_err();
        assert!(
            matches!(err, PartitionError::Io { offset: 512, .. }),
            "{err:?}"
        );
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let _ = read(&bytes);
        }

        #[test]
        fn arbitrary_mbr_sector_never_panics(
            entries in proptest::collection::vec(any::<[u8; 16]>(), 4),
            size_sectors in 1u64..2048,
        ) {
            let mut sector = vec![0u8; 512];
            for (slot, entry) in entries.iter().enumerate() {
                sector[446 + 16 * slot..462 + 16 * slot].copy_from_slice(entry);
                sector[446 + 16 * slot] &= 0x80; // keep boot flags valid so parsing goes on
            }
            sector[510] = 0x55;
            sector[511] = 0xAA;
            // The reader is short of the claimed size, so reads past 512 bytes fail.
            let _ = read_partition_table(&mut Cursor::new(&sector), size_sectors * 512);
        }

        #[test]
        fn mutated_gpt_never_panics(
            changes in proptest::collection::vec((0usize..256 * 512, any::<u8>()), 1..16),
            reseal in any::<bool>(),
        ) {
            let mut disk = two_partition_gpt();
            for (at, byte) in changes {
                disk[at] = byte;
            }
            if reseal {
                reseal_gpt(&mut disk, 1);
            }
            let _ = read(&disk);
        }
    }
}
