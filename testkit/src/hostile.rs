//! Hostile and broken disk images for tests, built at test time from copies of the tiny
//! images in [`crate::images`], so that no binary image is kept in the repository.
//!
//! [`Ext4Editor`] changes the tree of an ext filesystem inside a raw image with one
//! `debugfs -w` run: symlinks aimed at host paths, account files without a final newline,
//! missing files. The builders below patch partition tables, headers and superblocks byte
//! by byte, or fill a filesystem up. Nothing here mounts or attaches anything.
//!
//! Every builder writes into a directory the caller owns, usually the test's temporary
//! directory, and returns a [`TestImage`] that describes where the root filesystem would be
//! if the image were sound.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use tempfile::TempDir;
use vfs_core::image::{DiskFormat, ImageMeta};

use crate::images::{self, Ext4Reader, Result, TestFilesystem, TestImage, TestImageError};

const SECTOR_BYTES: u64 = 512;

/// The offset of the four primary entries in an MBR, and the size of each entry.
const MBR_ENTRIES_OFFSET: u64 = 446;
const MBR_ENTRY_BYTES: u64 = 16;

/// The MBR partition type of an extended partition (CHS addressing, as `sfdisk` writes it).
const MBR_EXTENDED_TYPE: u8 = 0x05;

/// The offset of the ext superblock inside its filesystem, its size, and the offset of
/// `s_feature_incompat` inside it.
const EXT_SUPERBLOCK_OFFSET: u64 = 1024;
const EXT_SUPERBLOCK_BYTES: usize = 1024;
const EXT_FEATURE_INCOMPAT_OFFSET: u64 = 0x60;

/// An ext4 incompatible-feature bit that neither Linux 6.1 nor e2fsprogs 1.47 defines. The
/// highest bit they define is `CASEFOLD` (0x20000), and `debugfs` refuses to open a
/// filesystem with this bit set.
pub const UNKNOWN_INCOMPAT_FEATURE: u32 = 0x4000_0000;

/// The size of the area at the start of an ext filesystem that the filesystem never uses
/// (the boot block), which a foreign header can occupy without damaging the filesystem.
const EXT_BOOT_BLOCK_BYTES: usize = 1024;

/// How many blocks [`full_filesystem`] leaves free: room for the filler's extent tree and a
/// little more, so that the filesystem is full for any file of a few hundred KiB.
const FULL_FS_SPARE_BLOCKS: u64 = 64;

/// Edits of one ext filesystem inside a raw image, collected and then applied with one
/// `debugfs -w` run by [`Ext4Editor::apply`].
///
/// New directories and symlinks belong to root, and new files to the owners given.
/// Paths are guest paths without white space or quotes, which `debugfs` requests cannot
/// carry reliably.
#[derive(Debug)]
pub struct Ext4Editor {
    image: PathBuf,
    reader: Ext4Reader,
    requests: Vec<String>,
    /// Paths created or removed by earlier calls, which the reader cannot see yet.
    created: BTreeSet<String>,
    removed: BTreeSet<String>,
    /// Host copies of the file contents that `write` requests read.
    staging: TempDir,
}

impl Ext4Editor {
    /// Starts editing the filesystem in partition `partition` of the raw image `image`, or
    /// the whole image when `partition` is `None`.
    pub fn open(image: &Path, partition: Option<u32>) -> Result<Self> {
        if is_qcow2(image)? {
            return Err(invalid_input(
                image,
                "debugfs edits raw images only; edit the raw image, then convert it",
            ));
        }
        Ok(Self {
            image: image.to_owned(),
            reader: Ext4Reader::open(image, partition)?,
            requests: Vec::new(),
            created: BTreeSet::new(),
            removed: BTreeSet::new(),
            staging: tempfile::tempdir().map_err(|source| file_error("creating", image, source))?,
        })
    }

    /// Starts editing the root filesystem of `image`.
    pub fn root_of(image: &TestImage) -> Result<Self> {
        Self::open(&image.path, image.root.partition)
    }

    /// Creates `path` and its missing parents as directories with `mode`.
    pub fn create_dir_all(&mut self, path: &str, mode: u32) -> Result<&mut Self> {
        let path = checked(&self.image, path)?;
        let mut current = String::new();
        for name in path.split('/').filter(|name| !name.is_empty()) {
            current.push('/');
            current.push_str(name);
            if self.exists(&current)? {
                continue;
            }
            self.requests.push(format!("mkdir {current}"));
            self.requests.push(format!(
                "set_inode_field {current} mode 0{:o}",
                0o040000 | mode
            ));
            self.mark_created(&current);
        }
        Ok(self)
    }

    /// Sets the permission bits of an existing directory.
    pub fn set_dir_mode(&mut self, path: &str, mode: u32) -> Result<&mut Self> {
        let path = checked(&self.image, path)?;
        self.requests.push(format!(
            "set_inode_field {path} mode 0{:o}",
            0o040000 | mode
        ));
        Ok(self)
    }

    /// Writes a regular file with `contents`, `mode` and owners `uid` and `gid`, replacing
    /// whatever is at `path`. The parent must exist.
    pub fn write_file(
        &mut self,
        path: &str,
        contents: &[u8],
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> Result<&mut Self> {
        let path = checked(&self.image, path)?.to_owned();
        self.remove_if_present(&path)?;

        let host = self
            .staging
            .path()
            .join(format!("file{}", self.requests.len()));
        fs::write(&host, contents).map_err(|source| file_error("writing", &host, source))?;
        let host_text = host.to_str().ok_or_else(|| {
            invalid_input(
                &host,
                "the staging path is not UTF-8, so debugfs cannot take it",
            )
        })?;
        checked(&host, host_text)?;

        self.requests.push(format!("write {host_text} {path}"));
        for (field, value) in [
            ("mode", format!("0{:o}", 0o100000 | mode)),
            ("uid", uid.to_string()),
            ("gid", gid.to_string()),
        ] {
            self.requests
                .push(format!("set_inode_field {path} {field} {value}"));
        }
        self.mark_created(&path);
        Ok(self)
    }

    /// Creates a symlink at `link` whose target is `target`, stored as given, replacing
    /// whatever is at `link`. The parent must exist.
    pub fn symlink(&mut self, link: &str, target: &str) -> Result<&mut Self> {
        let link = checked(&self.image, link)?.to_owned();
        let target = checked(&self.image, target)?;
        self.remove_if_present(&link)?;
        self.requests.push(format!("symlink {link} {target}"));
        self.mark_created(&link);
        Ok(self)
    }

    /// Removes a file or symlink. A missing path makes [`Ext4Editor::apply`] fail.
    pub fn remove_file(&mut self, path: &str) -> Result<&mut Self> {
        let path = checked(&self.image, path)?.to_owned();
        self.requests.push(format!("rm {path}"));
        self.created.remove(&path);
        self.removed.insert(path);
        Ok(self)
    }

    /// Sets a superblock field, as `debugfs set_super_value` names it, to `value`.
    pub fn set_super_value(&mut self, field: &str, value: &str) -> Result<&mut Self> {
        let field = checked(&self.image, field)?;
        let value = checked(&self.image, value)?;
        self.requests
            .push(format!("set_super_value {field} {value}"));
        Ok(self)
    }

    /// Applies every edit with one `debugfs -w` run, failing when `debugfs` reports an
    /// error for any of them.
    pub fn apply(self) -> Result<()> {
        let mut target = self.image.as_os_str().to_owned();
        target.push(format!("?offset={}", self.reader.offset()));
        let mut script = self.requests.join("\n");
        script.push('\n');

        let mut debugfs = tool("debugfs");
        debugfs.args(["-w", "-f", "-"]).arg(&target);
        let output = run(&mut debugfs, Some(script.as_bytes()))?;

        // debugfs exits with status 0 even when a request fails, and reports it on stderr
        // after its version banner.
        let stderr = String::from_utf8_lossy(&output.stderr);
        let problems: Vec<&str> = stderr
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty() && !line.starts_with("debugfs 1."))
            .collect();
        if !problems.is_empty() {
            return Err(TestImageError::CommandReportedError {
                command: describe(&debugfs),
                stderr: problems.join("\n"),
            });
        }
        Ok(())
    }

    fn exists(&self, path: &str) -> Result<bool> {
        if self.created.contains(path) {
            return Ok(true);
        }
        if self.removed.contains(path) {
            return Ok(false);
        }
        self.reader.exists(path)
    }

    fn remove_if_present(&mut self, path: &str) -> Result<()> {
        if self.exists(path)? {
            self.requests.push(format!("rm {path}"));
        }
        Ok(())
    }

    fn mark_created(&mut self, path: &str) {
        self.removed.remove(path);
        self.created.insert(path.to_owned());
    }
}

/// The host paths that the guest symlinks of [`host_symlinks`] aim at, and where in the
/// guest each request lands when the links are followed inside the guest.
#[derive(Debug)]
pub struct HostSymlinks {
    pub image: TestImage,
    /// A host directory that must stay empty, and the target of the guest's `/root/.ssh`.
    pub ssh_dir: PathBuf,
    /// A host file that must stay unchanged, and the target of the guest's
    /// `authorized_keys`.
    pub authorized_keys: PathBuf,
    /// A host directory that must stay empty, which the guest's `/etc/network` reaches
    /// with a relative link.
    pub network_dir: PathBuf,
    /// A host file that must stay unchanged; the guest's `/meta.js` points at it.
    pub meta: PathBuf,
    /// A host directory that must stay empty; a link inside the mode 0700 directory
    /// `/srv/private` climbs to it.
    pub conf_dir: PathBuf,
}

/// Whether the guest of [`host_symlinks`] also has the host paths, so that its links
/// resolve inside the guest, or lacks them, so that every link dangles.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkTargets {
    /// The guest has a directory or file at each host path the links name.
    InGuest,
    /// The guest has nothing at those paths.
    Dangling,
}

/// The contents of the host files of [`host_symlinks`], and of their guest copies.
pub const HOST_AUTHORIZED_KEYS: &[u8] = b"ssh-ed25519 AAAA-host-file-must-not-change host\n";
pub const HOST_META: &[u8] = b"{\"host\": \"must not change\"}\n";

/// The guest path of the link inside a mode 0700 directory, and the `--file` guest path
/// that writes through it.
pub const PRIVATE_LINK: &str = "/srv/private/conf";
pub const PRIVATE_LINK_FILE: &str = "/srv/private/conf/app.cfg";

/// Builds a copy of the tiny GPT image in `dir` whose guest symlinks aim at host paths
/// under `host`, which this creates:
///
/// - `/root/.ssh` -> `HOST/ssh` (absolute);
/// - `HOST/ssh/authorized_keys` -> `HOST/authorized_keys` (absolute, inside the guest's
///   copy of `HOST/ssh` when the targets are in the guest);
/// - `/etc/network` -> `../../../../../../..HOST/network` (relative, climbing past the
///   guest root);
/// - `/meta.js` -> `HOST/meta.js` (absolute);
/// - `/srv/private/conf` -> `../../../../../..HOST/conf`, in a mode 0700 directory.
pub fn host_symlinks(dir: &Path, host: &Path, targets: LinkTargets) -> Result<HostSymlinks> {
    let links = HostSymlinks {
        image: images::tiny_gpt_raw()?.fresh_copy(dir)?,
        ssh_dir: host.join("ssh"),
        authorized_keys: host.join("authorized_keys"),
        network_dir: host.join("network"),
        meta: host.join("meta.js"),
        conf_dir: host.join("conf"),
    };
    for dir in [&links.ssh_dir, &links.network_dir, &links.conf_dir] {
        fs::create_dir_all(dir).map_err(|source| file_error("creating", dir, source))?;
    }
    fs::write(&links.authorized_keys, HOST_AUTHORIZED_KEYS)
        .map_err(|source| file_error("writing", &links.authorized_keys, source))?;
    fs::write(&links.meta, HOST_META)
        .map_err(|source| file_error("writing", &links.meta, source))?;

    let text = |path: &Path| -> Result<String> {
        path.to_str()
            .map(str::to_owned)
            .ok_or_else(|| invalid_input(path, "the host path is not UTF-8"))
    };
    let ssh_dir = text(&links.ssh_dir)?;
    let authorized_keys = text(&links.authorized_keys)?;
    let network_dir = text(&links.network_dir)?;
    let meta = text(&links.meta)?;
    let conf_dir = text(&links.conf_dir)?;

    let mut editor = Ext4Editor::root_of(&links.image)?;
    editor
        .symlink("/root/.ssh", &ssh_dir)?
        .symlink(
            "/etc/network",
            &format!("../../../../../../..{network_dir}"),
        )?
        .symlink("/meta.js", &meta)?
        .create_dir_all("/srv/private", 0o700)?
        .symlink(PRIVATE_LINK, &format!("../../../../../..{conf_dir}"))?;
    if targets == LinkTargets::InGuest {
        editor
            .create_dir_all(&ssh_dir, 0o700)?
            .create_dir_all(&network_dir, 0o755)?
            .create_dir_all(&conf_dir, 0o755)?
            .write_file(&authorized_keys, HOST_AUTHORIZED_KEYS, 0o600, 0, 0)?
            .write_file(&meta, HOST_META, 0o644, 0, 0)?
            .symlink(&format!("{ssh_dir}/authorized_keys"), &authorized_keys)?;
    }
    editor.apply()?;
    Ok(links)
}

/// Builds a copy of the tiny whole-disk ext4 image in `dir` whose first bytes are a qcow2
/// header naming `backing` as its raw backing file, as [`write_qcow2_header`] writes it.
/// The sidecar declares the image raw.
pub fn raw_with_qcow2_header(dir: &Path, backing: &Path) -> Result<TestImage> {
    let image = images::tiny_whole_ext4()?.fresh_copy(dir)?;
    write_qcow2_header(&image.path, backing)?;
    Ok(image)
}

/// Writes a qcow2 header (made by `qemu-img create`) naming `backing` as its raw backing
/// file over the first 1024 bytes of `image`, a raw image whose filesystem starts at byte
/// 0. An ext filesystem stays intact, because it never uses its first 1024 bytes.
///
/// Edit the filesystem before this: [`Ext4Editor`] and [`Ext4Reader`] take an image that
/// starts with the qcow2 magic for a qcow2 image.
pub fn write_qcow2_header(image: &Path, backing: &Path) -> Result<()> {
    let scratch = tempfile::tempdir().map_err(|source| file_error("creating", image, source))?;
    let overlay = scratch.path().join("header.qcow2");
    run(
        tool("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(backing)
            .arg(&overlay)
            .arg("64M"),
        None,
    )?;

    let mut header = vec![0u8; EXT_BOOT_BLOCK_BYTES];
    File::open(&overlay)
        .and_then(|mut file| file.read_exact(&mut header))
        .map_err(|source| file_error("reading", &overlay, source))?;
    // The header, its extensions and the backing file name must all fit in the boot
    // block, or the copy would cut the name or overwrite the superblock.
    let backing_end = qcow2_backing_name_end(&header);
    if backing_end.is_none_or(|end| end > EXT_BOOT_BLOCK_BYTES as u64) {
        return Err(invalid_input(
            backing,
            "the qcow2 header naming this backing file does not fit in 1024 bytes",
        ));
    }
    patch(image, 0, &header)
}

/// Returns where the backing file name of a qcow2 header ends, if it names one.
fn qcow2_backing_name_end(header: &[u8]) -> Option<u64> {
    let offset = u64::from_be_bytes(header.get(8..16)?.try_into().ok()?);
    let size = u32::from_be_bytes(header.get(16..20)?.try_into().ok()?);
    (offset != 0).then_some(offset + u64::from(size))
}

/// Builds, in `dir`, a qcow2 overlay without a sidecar whose backing file is a copy of the
/// tiny GPT raw image in `backing_dir`, named by its absolute path. `backing_dir` should lie
/// outside `dir`.
pub fn qcow2_with_outside_backing(dir: &Path, backing_dir: &Path) -> Result<TestImage> {
    let base = images::tiny_gpt_raw()?.fresh_copy(backing_dir)?;
    let base_path = fs::canonicalize(&base.path)
        .map_err(|source| file_error("resolving", &base.path, source))?;
    let path = dir.join("overlay.qcow2");
    run(
        tool("qemu-img")
            .args(["create", "-q", "-f", "qcow2", "-F", "raw", "-b"])
            .arg(&base_path)
            .arg(&path),
        None,
    )?;
    Ok(TestImage {
        path,
        format: DiskFormat::Qcow2,
        sidecar: None,
        ..base
    })
}

/// Builds a copy of the tiny GPT qcow2 image in `dir` cut to half its length, as an
/// interrupted download leaves it: the header is whole, but clusters its tables point to
/// lie past the end of the file.
pub fn truncated_qcow2(dir: &Path) -> Result<TestImage> {
    let image = images::tiny_gpt_qcow2()?.fresh_copy(dir)?;
    let length = file_length(&image.path)?;
    let file = fs::OpenOptions::new()
        .write(true)
        .open(&image.path)
        .map_err(|source| file_error("opening", &image.path, source))?;
    file.set_len(length / 2)
        .map_err(|source| file_error("truncating", &image.path, source))?;
    Ok(image)
}

/// Builds a copy of the tiny MBR image in `dir` whose partition 2 (the root) claims 32 MiB
/// more than the disk has left. Both filesystems are intact.
pub fn mbr_partition_past_end(dir: &Path) -> Result<TestImage> {
    let image = images::tiny_mbr_boot_first()?.fresh_copy(dir)?;
    let sectors = read_mbr_sectors(&image.path, 1)?;
    write_mbr_sectors(
        &image.path,
        1,
        sectors + 32 * 1024 * 1024 / SECTOR_BYTES as u32,
    )?;
    Ok(image)
}

/// Builds a copy of the tiny MBR image in `dir` whose partition 1 (`/boot`) runs 2 MiB into
/// partition 2 (the root). Both filesystems are intact, because each still starts where
/// it did.
pub fn mbr_overlapping_partitions(dir: &Path) -> Result<TestImage> {
    let image = images::tiny_mbr_boot_first()?.fresh_copy(dir)?;
    let sectors = read_mbr_sectors(&image.path, 0)?;
    write_mbr_sectors(
        &image.path,
        0,
        sectors + 2 * 1024 * 1024 / SECTOR_BYTES as u32,
    )?;
    Ok(image)
}

/// Builds a copy of the tiny GPT image in `dir` whose primary and backup GPT headers both
/// have a wrong CRC32, so that neither copy of the table can be trusted.
pub fn gpt_bad_crc(dir: &Path) -> Result<TestImage> {
    let image = images::tiny_gpt_raw()?.fresh_copy(dir)?;
    // The header's own CRC32 is at byte 16, and the primary header (LBA 1) records where
    // the backup header is at byte 32.
    let primary = SECTOR_BYTES;
    let backup_lba = u64::from_le_bytes(
        read_at(&image.path, primary + 32, 8)?
            .try_into()
            .expect("8 bytes"),
    );
    for header in [primary, backup_lba * SECTOR_BYTES] {
        let crc = read_at(&image.path, header + 16, 4)?;
        let flipped: Vec<u8> = crc.iter().map(|byte| byte ^ 0xff).collect();
        patch(&image.path, header + 16, &flipped)?;
    }
    Ok(image)
}

/// Builds, in `dir`, an MBR disk whose root (the tiny GPT image's root filesystem) is the
/// logical partition 5, and whose chain of extended boot records loops. Its sidecar
/// selects partition 5.
///
/// The first extended boot record contains partition 5 and links to a second one, which
/// contains a small logical partition and links to itself. The loop is not at the first
/// record, because a link with relative start 0 is read as the end of the chain by some
/// parsers and as a link back to the first record by Linux.
pub fn mbr_extended_loop(dir: &Path) -> Result<TestImage> {
    let source = images::tiny_gpt_raw()?;
    let root = images::partition(&source.path, 2)?;
    // The extended partition starts at 1 MiB with its boot record, and the logical
    // partition starts 1 MiB later. The disk has 1 MiB spare at the end.
    let extended_start = 2048;
    let logical_start = 4096;
    let root_sectors = root.size / SECTOR_BYTES;
    let disk_bytes = (logical_start + root_sectors + 2048) * SECTOR_BYTES;

    let path = dir.join("mbr-extended-loop.raw");
    let file = File::create(&path).map_err(|source| file_error("creating", &path, source))?;
    file.set_len(disk_bytes)
        .map_err(|source| file_error("resizing", &path, source))?;
    drop(file);
    let script = format!(
        "label: dos\nunit: sectors\n\
         start={extended_start}, type=5\n\
         start={logical_start}, size={root_sectors}, type=83\n"
    );
    run(
        tool("sfdisk").arg("--quiet").arg(&path),
        Some(script.as_bytes()),
    )?;
    let logical = images::partition(&path, 5)?;
    if logical.start != logical_start * SECTOR_BYTES {
        return Err(invalid_input(
            &path,
            "sfdisk put the logical partition elsewhere",
        ));
    }
    copy_range(&source.path, root.start, root.size, &path, logical.start)?;

    // In an extended boot record, the first entry describes a logical partition relative to
    // the record's own sector, and the second links to the next record relative to the
    // extended partition's start.
    let second_record = 1;
    let link = mbr_entry(MBR_EXTENDED_TYPE, second_record, 1);
    patch(
        &path,
        extended_start * SECTOR_BYTES + MBR_ENTRIES_OFFSET + MBR_ENTRY_BYTES,
        &link,
    )?;
    let mut record = vec![0u8; SECTOR_BYTES as usize];
    let entries = MBR_ENTRIES_OFFSET as usize;
    let entry = MBR_ENTRY_BYTES as usize;
    record[entries..entries + entry].copy_from_slice(&mbr_entry(0x83, 1, 1024));
    record[entries + entry..entries + 2 * entry].copy_from_slice(&link);
    record[510..].copy_from_slice(&[0x55, 0xaa]);
    patch(
        &path,
        (extended_start + u64::from(second_record)) * SECTOR_BYTES,
        &record,
    )?;
    write_sidecar(&path, r#"{"disk_format":"raw","inject_partition":5}"#)?;

    Ok(TestImage {
        sidecar: Some(ImageMeta::sidecar_path(&path)),
        path,
        format: DiskFormat::Raw,
        root: TestFilesystem {
            partition: Some(5),
            ..source.root
        },
        boot: None,
    })
}

/// Builds a copy of the tiny GPT image in `dir` whose root filesystem (partition 2) has its
/// primary superblock zeroed. The backup superblocks remain, as after a stray write.
pub fn zeroed_superblock(dir: &Path) -> Result<TestImage> {
    let image = images::tiny_gpt_raw()?.fresh_copy(dir)?;
    let root = images::partition(&image.path, 2)?;
    patch(
        &image.path,
        root.start + EXT_SUPERBLOCK_OFFSET,
        &[0u8; EXT_SUPERBLOCK_BYTES],
    )?;
    Ok(image)
}

/// Builds a copy of the tiny GPT image in `dir` whose root filesystem has the
/// incompatible-feature bit [`UNKNOWN_INCOMPAT_FEATURE`] set, with a valid superblock
/// checksum, so that only the feature keeps a kernel from mounting it.
pub fn unknown_incompat_feature(dir: &Path) -> Result<TestImage> {
    let image = images::tiny_gpt_raw()?.fresh_copy(dir)?;
    let root = images::partition(&image.path, 2)?;
    let bytes = read_at(
        &image.path,
        root.start + EXT_SUPERBLOCK_OFFSET + EXT_FEATURE_INCOMPAT_OFFSET,
        4,
    )?;
    let features = u32::from_le_bytes(bytes.try_into().expect("4 bytes"));
    let mut editor = Ext4Editor::root_of(&image)?;
    editor.set_super_value(
        "feature_incompat",
        &format!("{:#x}", features | UNKNOWN_INCOMPAT_FEATURE),
    )?;
    editor.apply()?;
    Ok(image)
}

/// Builds a copy of the tiny whole-disk ext4 image in `dir` filled with one file,
/// `/filler`, until [`FULL_FS_SPARE_BLOCKS`] blocks or fewer are free. Returns the image and
/// the free bytes left, as `dumpe2fs` counts them (reserved blocks included).
pub fn full_filesystem(dir: &Path) -> Result<(TestImage, u64)> {
    let image = images::tiny_whole_ext4()?.fresh_copy(dir)?;
    let (block_size, free_blocks) = ext_free_blocks(&image.path)?;
    let filler_blocks = free_blocks.saturating_sub(FULL_FS_SPARE_BLOCKS);
    // A pattern rather than zeros, so that debugfs allocates every block instead of
    // leaving holes.
    let filler = vec![0xa5u8; (filler_blocks * block_size) as usize];
    let mut editor = Ext4Editor::root_of(&image)?;
    editor.write_file("/filler", &filler, 0o644, 0, 0)?;
    editor.apply()?;

    let (_, left) = ext_free_blocks(&image.path)?;
    Ok((image, left * block_size))
}

/// Returns the block size and free block count of the ext filesystem at the start of
/// `image`, from `dumpe2fs -h`.
fn ext_free_blocks(image: &Path) -> Result<(u64, u64)> {
    let output = run(tool("dumpe2fs").arg("-h").arg(image), None)?;
    let text = String::from_utf8_lossy(&output.stdout);
    let field = |name: &str| -> Result<u64> {
        text.lines()
            .find_map(|line| line.strip_prefix(name))
            .and_then(|rest| rest.trim().parse().ok())
            .ok_or_else(|| invalid_input(image, &format!("dumpe2fs printed no {name}")))
    };
    Ok((field("Block size:")?, field("Free blocks:")?))
}

/// Returns the SHA-256 digest of a file in hex, from `sha256sum`.
pub fn sha256(path: &Path) -> Result<String> {
    let output = run(tool("sha256sum").arg("--").arg(path), None)?;
    let text = String::from_utf8_lossy(&output.stdout);
    text.split_whitespace()
        .next()
        .map(str::to_owned)
        .ok_or_else(|| invalid_input(path, "sha256sum printed no digest"))
}

/// Writes `bytes` into the file at byte `offset`, leaving the rest of it as it is.
pub fn patch(path: &Path, offset: u64, bytes: &[u8]) -> Result<()> {
    let file = fs::OpenOptions::new()
        .write(true)
        .open(path)
        .map_err(|source| file_error("opening", path, source))?;
    file.write_all_at(bytes, offset)
        .map_err(|source| file_error("patching", path, source))
}

/// Reads `length` bytes of the file at byte `offset`.
pub fn read_at(path: &Path, offset: u64, length: usize) -> Result<Vec<u8>> {
    let file = File::open(path).map_err(|source| file_error("opening", path, source))?;
    let mut bytes = vec![0u8; length];
    file.read_exact_at(&mut bytes, offset)
        .map_err(|source| file_error("reading", path, source))?;
    Ok(bytes)
}

/// Returns the sector count of MBR entry `index` (0 for partition 1).
fn read_mbr_sectors(path: &Path, index: u64) -> Result<u32> {
    let offset = MBR_ENTRIES_OFFSET + index * MBR_ENTRY_BYTES + 12;
    let bytes = read_at(path, offset, 4)?;
    Ok(u32::from_le_bytes(bytes.try_into().expect("4 bytes")))
}

fn write_mbr_sectors(path: &Path, index: u64, sectors: u32) -> Result<()> {
    let offset = MBR_ENTRIES_OFFSET + index * MBR_ENTRY_BYTES + 12;
    patch(path, offset, &sectors.to_le_bytes())
}

/// Returns a 16-byte MBR entry addressed by LBA. Its CHS fields contain FE FF FF, the value
/// partitioning tools write when CHS cannot address a sector, so parsers use the LBA fields.
fn mbr_entry(type_id: u8, start: u32, sectors: u32) -> [u8; 16] {
    let mut entry = [0u8; 16];
    entry[1..4].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[4] = type_id;
    entry[5..8].copy_from_slice(&[0xfe, 0xff, 0xff]);
    entry[8..12].copy_from_slice(&start.to_le_bytes());
    entry[12..16].copy_from_slice(&sectors.to_le_bytes());
    entry
}

/// Copies `length` bytes from `source` at `from` into `target` at `to`, in place.
fn copy_range(source: &Path, from: u64, length: u64, target: &Path, to: u64) -> Result<()> {
    const CHUNK: u64 = 1024 * 1024;
    let input =
        File::open(source).map_err(|source_err| file_error("opening", source, source_err))?;
    let output = fs::OpenOptions::new()
        .write(true)
        .open(target)
        .map_err(|source| file_error("opening", target, source))?;
    let mut buffer = vec![0u8; CHUNK as usize];
    let mut done = 0;
    while done < length {
        let size = CHUNK.min(length - done) as usize;
        input
            .read_exact_at(&mut buffer[..size], from + done)
            .map_err(|err| file_error("reading", source, err))?;
        // Zero chunks stay holes, as in the source images.
        if buffer[..size].iter().any(|byte| *byte != 0) {
            output
                .write_all_at(&buffer[..size], to + done)
                .map_err(|err| file_error("writing", target, err))?;
        }
        done += size as u64;
    }
    Ok(())
}

fn write_sidecar(image: &Path, json: &str) -> Result<()> {
    let sidecar = ImageMeta::sidecar_path(image);
    fs::write(&sidecar, format!("{json}\n"))
        .map_err(|source| file_error("writing", &sidecar, source))
}

fn file_length(path: &Path) -> Result<u64> {
    fs::metadata(path)
        .map(|metadata| metadata.len())
        .map_err(|source| file_error("inspecting", path, source))
}

fn is_qcow2(path: &Path) -> Result<bool> {
    let mut magic = [0u8; 4];
    let mut file = File::open(path).map_err(|source| file_error("opening", path, source))?;
    match file.read_exact(&mut magic) {
        Ok(()) => Ok(magic == vfs_core::image::QCOW2_MAGIC),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(source) => Err(file_error("reading", path, source)),
    }
}

/// Returns `text` when a `debugfs` request can carry it as one word.
fn checked<'t>(context: &Path, text: &'t str) -> Result<&'t str> {
    if text.is_empty() || text.contains(|c: char| c.is_whitespace() || c == '"' || c == '\'') {
        return Err(invalid_input(
            context,
            &format!("{text:?} is empty or has white space or quotes, which debugfs splits on"),
        ));
    }
    Ok(text)
}

fn tool(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env("LC_ALL", "C");
    command
}

/// Runs `command`, feeding it `input`, and returns its output when it exits with status 0.
fn run(command: &mut Command, input: Option<&[u8]>) -> Result<Output> {
    use std::io::Write;

    let command_line = describe(command);
    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let starting = |source| TestImageError::StartingCommand {
        command: command_line.clone(),
        source,
    };
    let mut child = command.spawn().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            TestImageError::MissingTool {
                tool: command.get_program().to_string_lossy().into_owned(),
                package: None,
            }
        } else {
            starting(source)
        }
    })?;
    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin was set to piped");
        stdin.write_all(input).map_err(starting)?;
    }
    let output = child.wait_with_output().map_err(starting)?;
    if !output.status.success() {
        return Err(TestImageError::RunningCommand {
            command: command_line,
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).trim().to_owned(),
        });
    }
    Ok(output)
}

fn describe(command: &Command) -> String {
    let mut words: Vec<OsString> = vec![command.get_program().to_owned()];
    words.extend(command.get_args().map(ToOwned::to_owned));
    words
        .iter()
        .map(|word| word.to_string_lossy())
        .collect::<Vec<_>>()
        .join(" ")
}

fn file_error(action: &'static str, path: &Path, source: io::Error) -> TestImageError {
    TestImageError::FileOperation {
        action,
        path: path.to_owned(),
        source,
    }
}

fn invalid_input(path: &Path, reason: &str) -> TestImageError {
    file_error(
        "building a hostile image from",
        path,
        io::Error::new(io::ErrorKind::InvalidInput, reason.to_owned()),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mbr_entry_places_lba_fields() {
        let entry = mbr_entry(MBR_EXTENDED_TYPE, 0x0102_0304, 7);

        assert_eq!(entry[4], 0x05);
        assert_eq!(&entry[8..12], &[0x04, 0x03, 0x02, 0x01]);
        assert_eq!(&entry[12..16], &[7, 0, 0, 0]);
    }

    #[test]
    fn backing_name_end_adds_offset_and_size() {
        let mut header = vec![0u8; 20];
        header[8..16].copy_from_slice(&528u64.to_be_bytes());
        header[16..20].copy_from_slice(&22u32.to_be_bytes());

        assert_eq!(qcow2_backing_name_end(&header), Some(550));
    }

    #[test]
    fn backing_name_end_is_none_without_backing() {
        assert_eq!(qcow2_backing_name_end(&[0u8; 20]), None);
    }

    #[test]
    fn checked_rejects_white_space_and_quotes() {
        let context = Path::new("disk.raw");

        assert!(checked(context, "/etc/my file").is_err());
        assert!(checked(context, "/etc/\"x").is_err());
        assert!(checked(context, "").is_err());
        assert_eq!(checked(context, "/etc/shadow").unwrap(), "/etc/shadow");
    }
}
