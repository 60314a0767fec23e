//! Parsing a guest's `/etc/fstab`, matching its device specs to the disk's volumes, and
//! choosing the entries that a backend should mount beneath the root filesystem.

use crate::layout::Volume;

/// One line of `/etc/fstab`, with octal escapes such as `\040` decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FstabEntry {
    /// The device: `UUID=...`, `LABEL=...`, `/dev/sda1`, ...
    pub spec: String,
    /// The mount point in the guest tree.
    pub mount_point: String,
    /// The filesystem type, such as `ext4` or `auto`.
    pub fs_type: String,
    /// The mount options, split at commas; `defaults` when the field is missing.
    pub options: Vec<String>,
}

/// Parses `/etc/fstab` contents.
///
/// Blank lines and comments are skipped, and so are malformed lines: fewer than three
/// fields, more than six, or a dump or pass field that is not a number. The guest's file is
/// untrusted, so nothing here fails; a line that cannot be read is left out.
pub fn parse_fstab(contents: &[u8]) -> Vec<FstabEntry> {
    contents
        .split(|&byte| byte == b'\n')
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &[u8]) -> Option<FstabEntry> {
    let fields: Vec<&[u8]> = line
        .split(|byte| byte.is_ascii_whitespace())
        .filter(|field| !field.is_empty())
        .collect();
    if fields.first().is_none_or(|first| first.starts_with(b"#")) {
        return None;
    }
    if !(3..=6).contains(&fields.len()) {
        tracing::debug!(
            fields = fields.len(),
            "skipping an fstab line with a wrong field count"
        );
        return None;
    }
    let numeric = |field: &&[u8]| field.iter().all(u8::is_ascii_digit);
    if !fields[4.min(fields.len())..].iter().all(numeric) {
        tracing::debug!("skipping an fstab line whose dump or pass field is not a number");
        return None;
    }

    let options = match fields.get(3) {
        Some(field) => unescape(field).split(',').map(str::to_owned).collect(),
        None => vec!["defaults".to_owned()],
    };
    Some(FstabEntry {
        spec: unescape(fields[0]),
        mount_point: unescape(fields[1]),
        fs_type: unescape(fields[2]),
        options,
    })
}

/// Decodes the octal escapes `\NNN` that fstab uses for spaces, tabs and backslashes.
fn unescape(field: &[u8]) -> String {
    let mut out = Vec::with_capacity(field.len());
    let mut index = 0;
    while index < field.len() {
        let octal = field
            .get(index + 1..index + 4)
            .filter(|digits| {
                field[index] == b'\\' && digits.iter().all(|d| (b'0'..=b'7').contains(d))
            })
            .map(|digits| {
                digits
                    .iter()
                    .fold(0u32, |value, d| value * 8 + u32::from(d - b'0'))
            });
        match octal {
            Some(value) if value <= 0xFF => {
                out.push(value as u8);
                index += 4;
            }
            _ => {
                out.push(field[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Finds the volume that an fstab device spec names; `None` when no volume or more than one
/// matches.
///
/// Understood: `UUID=`, `LABEL=`, `PARTUUID=` and `PARTLABEL=` (values may be quoted), the
/// `/dev/disk/by-uuid/`, `by-label/`, `by-partuuid/` and `by-partlabel/` links, and kernel
/// names such as `/dev/sda2`, `/dev/vdb1`, `/dev/xvda1`, `/dev/nvme0n1p2` and
/// `/dev/mmcblk0p1`. The disk letter or index is ignored, since the guest is given this
/// one disk, and a name without a partition number (`/dev/vda`) means the whole-disk
/// volume. UUIDs compare without regard to case.
pub fn find_volume_for_spec(spec: &str, volumes: &[Volume]) -> Option<usize> {
    let spec = spec.trim();
    let target = if let Some(value) = tagged(spec, "UUID=", "/dev/disk/by-uuid/") {
        Target::FsUuid(value)
    } else if let Some(value) = tagged(spec, "LABEL=", "/dev/disk/by-label/") {
        Target::FsLabel(value)
    } else if let Some(value) = tagged(spec, "PARTUUID=", "/dev/disk/by-partuuid/") {
        Target::PartUuid(value)
    } else if let Some(value) = tagged(spec, "PARTLABEL=", "/dev/disk/by-partlabel/") {
        Target::PartLabel(value)
    } else {
        Target::Partition(kernel_partition_number(spec)?)
    };

    let mut found = volumes
        .iter()
        .enumerate()
        .filter(|(_, volume)| target.matches(volume))
        .map(|(index, _)| index);
    let first = found.next()?;
    if found.next().is_some() {
        tracing::debug!(spec, "fstab spec matches more than one volume");
        return None;
    }
    Some(first)
}

/// The volume property that an fstab spec names.
enum Target {
    FsUuid(String),
    FsLabel(String),
    PartUuid(String),
    PartLabel(String),
    /// A partition number, or `None` for the whole disk.
    Partition(Option<u32>),
}

impl Target {
    fn matches(&self, volume: &Volume) -> bool {
        let fs = volume.fs.as_ref();
        let partition = volume.partition.as_ref();
        match self {
            Self::FsUuid(uuid) => fs
                .and_then(|fs| fs.uuid.as_deref())
                .is_some_and(|found| found.eq_ignore_ascii_case(uuid)),
            Self::FsLabel(label) => fs.and_then(|fs| fs.label.as_deref()) == Some(label),
            Self::PartUuid(uuid) => partition
                .and_then(|p| p.uuid.as_deref())
                .is_some_and(|found| found.eq_ignore_ascii_case(uuid)),
            Self::PartLabel(label) => partition.and_then(|p| p.label.as_deref()) == Some(label),
            Self::Partition(number) => partition.map(|p| p.number) == *number,
        }
    }
}

/// Returns the value of `TAG=value` (without quotes) or of a `/dev/disk/by-*/` link (with
/// udev's `\xNN` escapes decoded).
fn tagged(spec: &str, tag: &str, link_dir: &str) -> Option<String> {
    if let Some(value) = spec.strip_prefix(tag) {
        let unquoted = value
            .strip_prefix('"')
            .and_then(|v| v.strip_suffix('"'))
            .unwrap_or(value);
        return Some(unquoted.to_owned());
    }
    spec.strip_prefix(link_dir).map(decode_udev_escapes)
}

/// Decodes `\xNN`, which udev uses in `/dev/disk/by-label` names for `/`, spaces and other
/// unsafe bytes.
fn decode_udev_escapes(name: &str) -> String {
    let bytes = name.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = bytes
            .get(index..index + 4)
            .filter(|chunk| chunk.starts_with(b"\\x"))
            .and_then(|chunk| std::str::from_utf8(&chunk[2..]).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                out.push(byte);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Parses a kernel block device name: `Some(Some(n))` for partition `n`, `Some(None)` for
/// the whole disk, `None` when the spec is not such a name.
fn kernel_partition_number(spec: &str) -> Option<Option<u32>> {
    let name = spec.strip_prefix("/dev/")?;

    // sdX, vdX, hdX, xvdX: letters name the disk, digits the partition.
    for prefix in ["xvd", "sd", "vd", "hd"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            let digits_at = rest
                .find(|c: char| !c.is_ascii_lowercase())
                .unwrap_or(rest.len());
            if digits_at == 0 {
                return None;
            }
            return partition_suffix(&rest[digits_at..], "");
        }
    }
    // nvmeXnY and mmcblkX: digits name the disk, `pN` the partition.
    let rest = if let Some(rest) = name.strip_prefix("nvme") {
        let (_, after_controller) = split_digits(rest)?;
        let (_, after_namespace) = split_digits(after_controller.strip_prefix('n')?)?;
        after_namespace
    } else {
        let (_, after_index) = split_digits(name.strip_prefix("mmcblk")?)?;
        after_index
    };
    partition_suffix(rest, "p")
}

/// Splits leading ASCII digits (at least one) from `text`.
fn split_digits(text: &str) -> Option<(&str, &str)> {
    let end = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    (end > 0).then(|| text.split_at(end))
}

/// Reads the partition suffix after a disk name: empty for the whole disk, otherwise
/// `marker` followed by a partition number from 1.
fn partition_suffix(rest: &str, marker: &str) -> Option<Option<u32>> {
    if rest.is_empty() {
        return Some(None);
    }
    let digits = rest.strip_prefix(marker)?;
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let number: u32 = digits.parse().ok()?;
    (number >= 1).then_some(Some(number))
}

/// Filesystem types that live on a local disk and can be mounted from a volume.
const LOCAL_FS_TYPES: [&str; 16] = [
    "ext2", "ext3", "ext4", "xfs", "btrfs", "vfat", "msdos", "fat", "exfat", "ntfs", "ntfs3",
    "f2fs", "jfs", "reiserfs", "squashfs", "erofs",
];

/// Returns the entries to mount beneath the root, parents before children.
///
/// Kept: an absolute mount point, a local disk filesystem type (or `auto` with a device
/// spec), and no `noauto`, `bind` or `rbind` option. Swap, pseudo and network filesystems
/// are left out. The order is by path depth, so `/` comes first and `/var` before
/// `/var/log`, and by path within one depth.
pub fn local_mounts(entries: &[FstabEntry]) -> Vec<&FstabEntry> {
    let mut mounts: Vec<&FstabEntry> = entries
        .iter()
        .filter(|entry| is_local_mount(entry))
        .collect();
    mounts.sort_by(|a, b| {
        mount_depth(&a.mount_point)
            .cmp(&mount_depth(&b.mount_point))
            .then_with(|| a.mount_point.cmp(&b.mount_point))
    });
    mounts
}

fn is_local_mount(entry: &FstabEntry) -> bool {
    if !entry.mount_point.starts_with('/') {
        return false;
    }
    let skipped_option = entry
        .options
        .iter()
        .any(|option| matches!(option.as_str(), "noauto" | "bind" | "rbind"));
    if skipped_option {
        return false;
    }
    let fs_type = entry.fs_type.as_str();
    if LOCAL_FS_TYPES.contains(&fs_type) {
        return true;
    }
    // `auto` lets mount probe the type, which is local only when the spec is a device.
    fs_type == "auto"
        && ["UUID=", "LABEL=", "PARTUUID=", "PARTLABEL=", "/dev/"]
            .iter()
            .any(|prefix| entry.spec.starts_with(prefix))
}

/// Counts the names in a mount point: 0 for `/`, 2 for `/var/log/`.
fn mount_depth(mount_point: &str) -> usize {
    mount_point
        .split('/')
        .filter(|name| !name.is_empty())
        .count()
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;
    use crate::fsprobe::FsInfo;
    use crate::partition::Partition;

    fn entry(spec: &str, mount_point: &str, fs_type: &str, options: &str) -> FstabEntry {
        FstabEntry {
            spec: spec.into(),
            mount_point: mount_point.into(),
            fs_type: fs_type.into(),
            options: options.split(',').map(str::to_owned).collect(),
        }
    }

    fn volume(number: u32, part_label: &str, fs_label: &str, fs_uuid: &str) -> Volume {
        Volume {
            partition: Some(Partition {
                number,
                offset: u64::from(number) << 20,
                size: 1 << 20,
                type_id: "0FC63DAF-8483-4772-8E79-3D69D8477DE4".into(),
                label: Some(part_label.into()),
                uuid: Some(format!("{number:08x}-0000-4000-8000-00000000000{number}")),
            }),
            offset: u64::from(number) << 20,
            size: 1 << 20,
            fs: Some(FsInfo {
                fs_type: "ext4".into(),
                label: Some(fs_label.into()),
                uuid: Some(fs_uuid.into()),
            }),
        }
    }

    /// Partition 1 is /boot (label `boot`), partition 2 is / (label `my root`).
    fn two_volumes() -> Vec<Volume> {
        vec![
            volume(
                1,
                "esp part",
                "boot",
                "11111111-2222-3333-4444-555555555555",
            ),
            volume(
                2,
                "root-part",
                "my root",
                "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
            ),
        ]
    }

    #[test]
    fn fstab_lines_parse_with_escapes() {
        let text = b"# /etc/fstab\n\
            \n\
            UUID=abc / ext4 errors=remount-ro 0 1\n\
            \t/dev/sda1\t/mnt/my\\040disk  vfat  defaults,noatime  0  2\r\n\
            LABEL=data /data xfs\n";
        let entries = parse_fstab(text);

        assert_eq!(entries.len(), 3);
        assert_eq!(
            entries[0],
            entry("UUID=abc", "/", "ext4", "errors=remount-ro")
        );
        assert_eq!(entries[1].mount_point, "/mnt/my disk");
        assert_eq!(entries[1].options, ["defaults", "noatime"]);
        assert_eq!(entries[2].options, ["defaults"]);
    }

    #[test]
    fn malformed_fstab_lines_are_skipped() {
        let text = b"/dev/sda1 /\n\
            /dev/sda1 / ext4 defaults 0 1 extra\n\
            /dev/sda1 / ext4 defaults x 1\n\
            /dev/sda2 /home ext4 defaults 0 two\n\
            /dev/sda3 /srv ext4 defaults 0 2\n";
        let entries = parse_fstab(text);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].mount_point, "/srv");
    }

    #[test]
    fn escapes_out_of_byte_range_stay_literal() {
        // \777 is 511, which is no byte, so the text stays as written.
        let entries = parse_fstab(b"/dev/sda1 /a\\777b ext4\n");
        assert_eq!(entries[0].mount_point, "/a\\777b");
    }

    #[test]
    fn tagged_specs_find_their_volumes() {
        let volumes = two_volumes();
        let cases = [
            ("UUID=AAAAAAAA-BBBB-CCCC-DDDD-EEEEEEEEEEEE", Some(1)),
            ("UUID=\"11111111-2222-3333-4444-555555555555\"", Some(0)),
            ("LABEL=boot", Some(0)),
            ("LABEL=Boot", None),
            ("PARTUUID=00000002-0000-4000-8000-000000000002", Some(1)),
            ("PARTLABEL=root-part", Some(1)),
            (
                "/dev/disk/by-uuid/aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee",
                Some(1),
            ),
            ("/dev/disk/by-label/my\\x20root", Some(1)),
            ("/dev/disk/by-partlabel/esp\\x20part", Some(0)),
            ("UUID=00000000-0000-0000-0000-000000000000", None),
        ];
        for (spec, expected) in cases {
            assert_eq!(find_volume_for_spec(spec, &volumes), expected, "{spec}");
        }
    }

    #[test]
    fn kernel_names_find_partitions_by_number() {
        let volumes = two_volumes();
        let cases = [
            ("/dev/sda1", Some(0)),
            ("/dev/vdb2", Some(1)),
            ("/dev/hda2", Some(1)),
            ("/dev/xvda1", Some(0)),
            ("/dev/nvme0n1p2", Some(1)),
            ("/dev/mmcblk0p1", Some(0)),
            ("/dev/sda3", None),
            ("/dev/sda0", None),
            ("/dev/sda", None),
            ("/dev/sd1", None),
            ("/dev/nvme0n1", None),
            ("/dev/loop0", None),
            ("tmpfs", None),
        ];
        for (spec, expected) in cases {
            assert_eq!(find_volume_for_spec(spec, &volumes), expected, "{spec}");
        }
    }

    #[test]
    fn bare_disk_name_finds_whole_disk_volume() {
        let whole = Volume {
            partition: None,
            offset: 0,
            size: 1 << 30,
            fs: None,
        };
        let volumes = [whole];
        assert_eq!(find_volume_for_spec("/dev/vda", &volumes), Some(0));
        assert_eq!(find_volume_for_spec("/dev/sdb", &volumes), Some(0));
        assert_eq!(find_volume_for_spec("/dev/vda1", &volumes), None);
    }

    #[test]
    fn spec_matching_two_volumes_finds_none() {
        let volumes = vec![
            volume(1, "a", "same", "11111111-2222-3333-4444-555555555555"),
            volume(2, "b", "same", "aaaaaaaa-bbbb-cccc-dddd-eeeeeeeeeeee"),
        ];
        assert_eq!(find_volume_for_spec("LABEL=same", &volumes), None);
    }

    #[test]
    fn local_mounts_keep_disk_filesystems_parents_first() {
        let entries = parse_fstab(
            b"UUID=3 /var/log ext4 defaults 0 2\n\
              UUID=2 /var xfs defaults 0 2\n\
              proc /proc proc defaults 0 0\n\
              UUID=9 none swap sw 0 0\n\
              tmpfs /tmp tmpfs defaults 0 0\n\
              server:/export /mnt/nfs nfs defaults 0 0\n\
              //server/share /mnt/smb cifs defaults 0 0\n\
              /srv/a /srv/b none bind 0 0\n\
              /dev/sdb1 /media/usb vfat noauto,user 0 0\n\
              LABEL=boot /boot auto defaults 0 2\n\
              /var/data /mnt/bound ext4 rbind 0 0\n\
              UUID=1 / btrfs defaults 0 1\n\
              UUID=4 relative ext4 defaults 0 2\n",
        );
        let kept: Vec<&str> = local_mounts(&entries)
            .iter()
            .map(|entry| entry.mount_point.as_str())
            .collect();
        assert_eq!(kept, ["/", "/boot", "/var", "/var/log"]);
    }

    #[test]
    fn auto_type_without_device_spec_is_not_local() {
        let entries = [entry("none", "/mnt", "auto", "defaults")];
        assert!(local_mounts(&entries).is_empty());
    }

    proptest! {
        #[test]
        fn arbitrary_fstab_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..2048)) {
            let entries = parse_fstab(&bytes);
            let _ = local_mounts(&entries);
            for entry in &entries {
                let _ = find_volume_for_spec(&entry.spec, &two_volumes());
            }
        }

        #[test]
        fn fstab_like_text_never_panics(text in "([ \\t]{0,2}[a-zA-Z0-9=/\\\\#\"x:._-]{0,12}){0,8}(\n([ \\t]{0,2}[a-zA-Z0-9=/\\\\#\"x:._-]{0,12}){0,8}){0,6}") {
            let entries = parse_fstab(text.as_bytes());
            let _ = local_mounts(&entries);
            for entry in &entries {
                let _ = find_volume_for_spec(&entry.spec, &two_volumes());
            }
        }

        #[test]
        fn arbitrary_specs_never_panic(spec in "(/dev/|UUID=|LABEL=|/dev/disk/by-label/)?[a-z0-9\\\\x\"p]{0,16}") {
            let _ = find_volume_for_spec(&spec, &two_volumes());
        }
    }
}
