//! MBR and GPT partition-table parsing, for disks whose contents may be hostile.
//!
//! The parser reads through any `Read + Seek`, so it works on a raw image file, a loop
//! device or a qcow2 image exposed by a user-space NBD client. Every table field is checked
//! before use: entries must lie inside the disk and must not overlap, the extended-partition
//! chain must not loop and has a length limit, and GPT headers and entry arrays must carry
//! correct CRC32s and sizes under a fixed cap. No input makes it panic, loop without bound
//! or allocate more than [`MAX_GPT_ENTRY_ARRAY_BYTES`].
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

/// The most links followed in an extended-partition chain. Real disks carry a few dozen
/// logical partitions at most, and Linux stops at 256 partitions per disk.
pub const MAX_EXTENDED_CHAIN: usize = 256;

/// The largest GPT entry array read into memory, in bytes. The usual array is 128 entries
/// of 128 bytes (16 KiB); this allows 64 times that.
pub const MAX_GPT_ENTRY_ARRAY_BYTES: u64 = 1024 * 1024;

/// The largest GPT entry size accepted, in bytes. The UEFI specification allows 128 times
/// any power of two; every tool writes 128.
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
    /// Which kind of table the disk has.
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
