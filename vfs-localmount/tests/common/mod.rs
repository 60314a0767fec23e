//! Shared helpers of the integration tests: small disk images built with `mkfs.ext4 -d`,
//! `sfdisk`, `dd` and `qemu-img`, a wrapper that checks for leftovers when a filesystem is
//! closed, and a token that runs these tests one at a time.
//!
//! Tests run one at a time because the leak check counts every `qemu-nbd` and `nbdfuse`
//! that descends from the test process, whichever test started it.

#![allow(dead_code)]

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Condvar, Mutex};

use vfs_core::image::{DiskFormat, PartitionSelector, ResolvedImage, SettingSource};
use vfs_core::registry::OpenOptions;
use vfs_core::{GuestFs, GuestPath, Metadata, MountInfo, Result};

pub const MIB: u64 = 1024 * 1024;

/// The UUID of every root filesystem built here.
pub const ROOT_UUID: &str = "2c6b1f0e-8a4d-4e3b-9f71-5d0c3a9e7b14";
/// The UUID of the `/boot` filesystem of [`Layout::MbrBootFirst`].
pub const BOOT_UUID: &str = "7e3a9c51-0b2f-4d86-a4e8-1f6c9b3d5a20";
/// A UUID that no filesystem built here has.
pub const MISSING_UUID: &str = "0d4f8b2a-6e1c-4a97-b3d5-9c2e7f0a1b36";

/// The disk layouts built here.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Layout {
    /// One ext4 filesystem over the whole 256 MiB disk, no partition table.
    WholeDisk,
    /// GPT: a 1 MiB BIOS boot partition at 1 MiB, then the 250 MiB ext4 root at 2 MiB as
    /// partition 2.
    Gpt,
    /// MBR: `/boot` (ext4, 64 MiB) at 1 MiB as partition 1, the 190 MiB root at 65 MiB as
    /// partition 2, and an `/etc/fstab` that lists `/boot` by UUID.
    MbrBootFirst,
}

/// Byte offsets of the filesystems in the layouts.
pub const GPT_ROOT_OFFSET: u64 = 2 * MIB;
pub const MBR_BOOT_OFFSET: u64 = MIB;
pub const MBR_ROOT_OFFSET: u64 = 65 * MIB;

const DISK_BYTES: u64 = 256 * MIB;

/// One-at-a-time token for the tests of this binary; released when dropped, also on a
/// panic.
pub struct SerialToken(());

static SERIAL: Mutex<bool> = Mutex::new(false);
static SERIAL_FREED: Condvar = Condvar::new();

impl SerialToken {
    pub fn take() -> Self {
        let mut busy = SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        while *busy {
            busy = SERIAL_FREED
                .wait(busy)
                .unwrap_or_else(|poisoned| poisoned.into_inner());
        }
        *busy = true;
        SerialToken(())
    }
}

impl Drop for SerialToken {
    fn drop(&mut self) {
        *SERIAL
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = false;
        SERIAL_FREED.notify_one();
    }
}

/// A test's own directory with a fresh copy of an image, checked for leftovers and removed
/// at the end.
pub struct Scratch {
    pub dir: tempfile::TempDir,
    pub image: PathBuf,
    pub format: DiskFormat,
    _token: SerialToken,
}

impl Scratch {
    /// Copies the base image of `layout` in `format` into a new directory.
    pub fn new(layout: Layout, format: DiskFormat) -> Self {
        let token = SerialToken::take();
        let base = base_image(layout, format);
        let dir = tempfile::Builder::new()
            .prefix("localmount-test-")
            .tempdir()
            .expect("temporary directory");
        let image = dir.path().join(base.file_name().unwrap());
        run(Command::new("cp")
            .arg("--sparse=always")
            .arg(&base)
            .arg(&image));
        Self {
            dir,
            image,
            format,
            _token: token,
        }
    }

    /// Builds options to open the image with `partition`, read-write.
    pub fn options(&self, partition: PartitionSelector) -> OpenOptions {
        OpenOptions::new(ResolvedImage {
            path: self.image.clone(),
            format: self.format,
            format_source: SettingSource::Flag,
            partition,
            partition_source: SettingSource::Flag,
            file_size: fs::metadata(&self.image).unwrap().len(),
        })
    }

    /// Panics when a loop device, mount or helper process of this image is left.
    pub fn assert_no_leaks(&self) {
        let leaks = testkit::images::leak_check(self.dir.path()).expect("leak check");
        assert!(leaks.is_empty(), "left behind:\n{leaks}");
    }

    /// Returns the image converted to raw, for reading it back with `debugfs`.
    pub fn raw_view(&self) -> PathBuf {
        match self.format {
            DiskFormat::Raw => self.image.clone(),
            DiskFormat::Qcow2 => {
                let raw = self.dir.path().join("view.raw");
                let _ = fs::remove_file(&raw);
                run(Command::new("qemu-img")
                    .args(["convert", "-f", "qcow2", "-O", "raw"])
                    .arg(&self.image)
                    .arg(&raw));
                raw
            }
        }
    }
}

/// Reads a file from the ext4 filesystem at `offset` of a raw image with `debugfs`,
/// independently of any backend; `None` when it does not exist.
pub fn debugfs_cat(image: &Path, offset: u64, guest_path: &str) -> Option<Vec<u8>> {
    match testkit::images::debugfs_cat(image, offset, guest_path) {
        Ok(contents) => Some(contents),
        Err(testkit::images::TestImageError::GuestPathNotFound { .. }) => None,
        Err(err) => panic!("debugfs on {}: {err}", image.display()),
    }
}

/// The version of the base image recipes; bump it after changing them so that cached
/// images are rebuilt.
const BASE_VERSION: u32 = 1;

/// Returns the base image of a layout, building every base image first when they are
/// missing. They are cached in Cargo's temporary directory for integration tests, and a
/// file lock serialises builders across test processes.
pub fn base_image(layout: Layout, format: DiskFormat) -> PathBuf {
    let cache = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let dir = cache.join(format!("localmount-images-v{BASE_VERSION}"));
    let lock_file = fs::File::create(cache.join(format!("localmount-images-v{BASE_VERSION}.lock")))
        .expect("create the image lock file");
    let _lock = nix::fcntl::Flock::lock(lock_file, nix::fcntl::FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .expect("lock the image cache");

    if !dir.exists() {
        let partial = cache.join(format!("localmount-images-v{BASE_VERSION}.partial"));
        let _ = fs::remove_dir_all(&partial);
        fs::create_dir_all(&partial).unwrap();
        for layout in [Layout::WholeDisk, Layout::Gpt, Layout::MbrBootFirst] {
            build_raw(&partial, layout);
        }
        fs::rename(&partial, &dir).unwrap();
    }

    let raw = dir.join(raw_name(layout));
    match format {
        DiskFormat::Raw => raw,
        DiskFormat::Qcow2 => {
            let qcow2 = raw.with_extension("qcow2");
            if !qcow2.exists() {
                let partial = raw.with_extension("qcow2.partial");
                run(Command::new("qemu-img")
                    .args(["convert", "-f", "raw", "-O", "qcow2"])
                    .arg(&raw)
                    .arg(&partial));
                fs::rename(&partial, &qcow2).unwrap();
            }
            qcow2
        }
    }
}

fn raw_name(layout: Layout) -> &'static str {
    match layout {
        Layout::WholeDisk => "whole.raw",
        Layout::Gpt => "gpt.raw",
        Layout::MbrBootFirst => "mbr.raw",
    }
}

fn build_raw(dir: &Path, layout: Layout) {
    let disk = dir.join(raw_name(layout));
    let tree = dir.join(format!("{}-tree", raw_name(layout)));
    let root_fstab = match layout {
        Layout::MbrBootFirst => format!(
            "UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\nUUID={BOOT_UUID} /boot ext4 defaults 0 2\n"
        ),
        _ => format!("UUID={ROOT_UUID} / ext4 errors=remount-ro 0 1\n"),
    };
    write_root_tree(&tree, &root_fstab);
    fs::File::create(&disk)
        .unwrap()
        .set_len(DISK_BYTES)
        .unwrap();

    match layout {
        Layout::WholeDisk => mkfs(&disk, &tree, ROOT_UUID, "root"),
        Layout::Gpt => {
            sfdisk(
                &disk,
                "label: gpt\n\
                 start=2048, size=2048, type=21686148-6449-6E6F-744E-656564454649\n\
                 start=4096, size=512000, type=0FC63DAF-8483-4772-8E79-3D69D8477DE4\n",
            );
            let part = dir.join("gpt-root.part");
            fs::File::create(&part).unwrap().set_len(250 * MIB).unwrap();
            mkfs(&part, &tree, ROOT_UUID, "root");
            place(&part, &disk, GPT_ROOT_OFFSET);
        }
        Layout::MbrBootFirst => {
            sfdisk(
                &disk,
                "label: dos\n\
                 start=2048, size=131072, type=83\n\
                 start=133120, size=389120, type=83\n",
            );
            let boot_tree = dir.join("mbr-boot-tree");
            fs::create_dir_all(boot_tree.join("grub")).unwrap();
            fs::write(boot_tree.join("vmlinuz-test"), b"not a kernel\n").unwrap();
            let boot = dir.join("mbr-boot.part");
            fs::File::create(&boot).unwrap().set_len(64 * MIB).unwrap();
            mkfs(&boot, &boot_tree, BOOT_UUID, "boot");
            place(&boot, &disk, MBR_BOOT_OFFSET);

            fs::create_dir_all(tree.join("boot")).unwrap();
            let root = dir.join("mbr-root.part");
            fs::File::create(&root).unwrap().set_len(190 * MIB).unwrap();
            mkfs(&root, &tree, ROOT_UUID, "root");
            place(&root, &disk, MBR_ROOT_OFFSET);
        }
    }
}

/// Writes a minimal guest root: accounts, `/etc/os-release`, `/etc/fstab` and `/root`.
pub fn write_root_tree(tree: &Path, fstab: &str) {
    fs::create_dir_all(tree.join("etc")).unwrap();
    fs::create_dir_all(tree.join("root")).unwrap();
    fs::write(tree.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
    fs::write(tree.join("etc/group"), "root:x:0:\n").unwrap();
    fs::write(tree.join("etc/os-release"), "ID=test\n").unwrap();
    fs::write(tree.join("etc/fstab"), fstab).unwrap();
}

/// Makes an ext4 filesystem filled from `tree` in `file`.
pub fn mkfs(file: &Path, tree: &Path, uuid: &str, label: &str) {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-U", uuid, "-L", label, "-d"])
        .arg(tree)
        .arg(file));
}

/// Writes a partition table from an `sfdisk` script.
pub fn sfdisk(disk: &Path, script: &str) {
    use std::io::Write;
    let mut child = Command::new("sfdisk")
        .arg("--quiet")
        .arg(disk)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("run sfdisk");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
}

/// Copies a filesystem image into a disk image at `offset`, keeping holes.
pub fn place(part: &Path, disk: &Path, offset: u64) {
    assert_eq!(offset % MIB, 0, "offsets are whole MiB");
    run(Command::new("dd")
        .arg(format!("if={}", part.display()))
        .arg(format!("of={}", disk.display()))
        .args(["bs=1M", "conv=notrunc,sparse", "status=none"])
        .arg(format!("seek={}", offset / MIB)));
    fs::remove_file(part).unwrap();
}

pub fn run(command: &mut Command) {
    let output = command.output().expect("start command");
    assert!(
        output.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A filesystem opened on a [`Scratch`] image; closing it also checks that nothing is left
/// attached and removes the directory.
pub struct CheckedFs {
    inner: Option<Box<dyn GuestFs>>,
    scratch: Scratch,
}

impl CheckedFs {
    pub fn new(inner: Box<dyn GuestFs>, scratch: Scratch) -> Self {
        Self {
            inner: Some(inner),
            scratch,
        }
    }

    fn fs(&mut self) -> &mut dyn GuestFs {
        self.inner.as_mut().expect("open").as_mut()
    }
}

impl GuestFs for CheckedFs {
    fn backend_name(&self) -> &'static str {
        self.inner.as_ref().expect("open").backend_name()
    }
    fn mounts(&self) -> Vec<MountInfo> {
        self.inner.as_ref().expect("open").mounts()
    }
    fn fs_type(&mut self, path: &GuestPath) -> Result<String> {
        self.fs().fs_type(path)
    }
    fn exists(&mut self, path: &GuestPath) -> Result<bool> {
        self.fs().exists(path)
    }
    fn metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        self.fs().metadata(path)
    }
    fn symlink_metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        self.fs().symlink_metadata(path)
    }
    fn read_file(&mut self, path: &GuestPath) -> Result<Vec<u8>> {
        self.fs().read_file(path)
    }
    fn create_dir_all(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        self.fs().create_dir_all(path, mode)
    }
    fn write_file(&mut self, path: &GuestPath, contents: &mut dyn Read, mode: u32) -> Result<u64> {
        self.fs().write_file(path, contents, mode)
    }
    fn append_file(&mut self, path: &GuestPath, data: &[u8], mode: u32) -> Result<()> {
        self.fs().append_file(path, data, mode)
    }
    fn set_mode(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        self.fs().set_mode(path, mode)
    }
    fn set_owner_ids(
        &mut self,
        path: &GuestPath,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        self.fs().set_owner_ids(path, uid, gid)
    }
    fn symlink(&mut self, target: &str, link: &GuestPath) -> Result<()> {
        self.fs().symlink(target, link)
    }
    fn remove_file(&mut self, path: &GuestPath) -> Result<()> {
        self.fs().remove_file(path)
    }
    fn xattrs(&mut self, path: &GuestPath) -> Result<Vec<(String, Vec<u8>)>> {
        self.fs().xattrs(path)
    }
    fn set_xattr(&mut self, path: &GuestPath, name: &str, value: &[u8]) -> Result<()> {
        self.fs().set_xattr(path, name, value)
    }
    fn free_space(&mut self, path: &GuestPath) -> Result<u64> {
        self.fs().free_space(path)
    }
    fn enable_writes(&mut self) -> Result<()> {
        self.fs().enable_writes()
    }
    fn sync(&mut self) -> Result<()> {
        self.fs().sync()
    }
    fn close(mut self: Box<Self>) -> Result<()> {
        let closed = self.inner.take().expect("open").close();
        self.scratch.assert_no_leaks();
        closed
    }
}
