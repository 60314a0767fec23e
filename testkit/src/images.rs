//! Real disk images for tests, built without mounting anything and cached on disk.
//!
//! Every builder returns a [`TestImage`] from the image directory ([`image_dir`]: the
//! `GUEST_INJECT_IMAGE_DIR` environment variable, or `target/test-images` in the
//! workspace). An image is built only when its file is missing. Each build writes to a
//! `.partial` name and renames the result into place, and a lock file serialises builders
//! across threads and processes, so an interrupted build never leaves a file that looks
//! finished.
//!
//! Two families share the same layouts:
//!
//! - the full images ([`gpt_raw`], [`gpt_qcow2`], [`whole_ext4`], [`mbr_boot_first`]) hold
//!   a Debian bookworm minbase tree from `debootstrap` (needs root and the Debian archive);
//! - the tiny images ([`tiny_gpt_raw`], [`tiny_gpt_qcow2`], [`tiny_whole_ext4`],
//!   [`tiny_mbr_boot_first`]) hold a small hand-made tree and build in a second or two.
//!
//! Tests modify images, so they take a [`fresh_copy`] into their own temporary directory.
//! [`Ext4Reader`] reads results back with `debugfs`, independently of any backend, and
//! [`leak_check`] lists loop devices, mounts and helper processes left behind.
//!
//! NOTE: the cache is keyed by file name only. After changing a recipe here, delete the
//! image directory so the images are rebuilt.

mod command;
mod disk;
mod inspect;
mod leaks;
mod tree;

use std::fs::{self, File};
use std::io;
use std::path::{Path, PathBuf};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use vfs_core::image::{DiskFormat, ImageMeta};

use disk::{Disk, PartitionSpec, PartitionTable};
use tree::Tree;

pub use inspect::{
    debugfs_cat, debugfs_stat, partition, partitions, Ext4Reader, FileStat, PartitionInfo,
};
pub use leaks::{leak_check, LeakedLoopDevice, LeakedMount, LeakedProcess, Leaks};

/// The environment variable that overrides the image directory.
pub const IMAGE_DIR_ENV: &str = "GUEST_INJECT_IMAGE_DIR";

/// The partition type GUID of a BIOS boot partition.
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";

/// The partition type GUID of a Linux filesystem partition.
const LINUX_FILESYSTEM_TYPE: &str = "0FC63DAF-8483-4772-8E79-3D69D8477DE4";

/// The label of every root filesystem built here.
pub const ROOT_LABEL: &str = "root";

/// The label of every `/boot` filesystem built here.
pub const BOOT_LABEL: &str = "boot";

const MIB: u64 = 1024 * 1024;
const GIB: u64 = 1024 * MIB;

/// The fixed size of the full images.
const FULL_DISK_BYTES: u64 = GIB;

/// The fixed size of the tiny images.
const TINY_DISK_BYTES: u64 = 64 * MIB;

/// Filesystem UUIDs, fixed so that tests can look for them in `/etc/fstab` and select
/// partitions with `uuid:`. Each image has its own, so two images attached at once never
/// share one.
pub mod uuids {
    /// The root filesystem of [`super::gpt_raw`] and [`super::gpt_qcow2`].
    pub const GPT_ROOT: &str = "6a4e1c2b-9d3f-4b8a-a1c5-0e7f2d9b3c41";
    /// The filesystem of [`super::whole_ext4`].
    pub const WHOLE_ROOT: &str = "3f9b2d7e-5c1a-4e68-b4d2-8a6c0f1e7b52";
    /// The root filesystem of [`super::mbr_boot_first`].
    pub const MBR_ROOT: &str = "c2d8e4f1-7a3b-4c95-9e16-5b0a3d8f2c63";
    /// The `/boot` filesystem of [`super::mbr_boot_first`].
    pub const MBR_BOOT: &str = "8e1f5a3c-2b7d-4f09-a6e4-1c9d7b5e0f74";
    /// The root filesystem of [`super::tiny_gpt_raw`] and [`super::tiny_gpt_qcow2`].
    pub const TINY_GPT_ROOT: &str = "1b7c3e9a-4d2f-4a86-8c5b-f3e0a6d1b985";
    /// The filesystem of [`super::tiny_whole_ext4`].
    pub const TINY_WHOLE_ROOT: &str = "5d0a8f2e-6c4b-4e17-b9a3-2f7e1c6d0a96";
    /// The root filesystem of [`super::tiny_mbr_boot_first`].
    pub const TINY_MBR_ROOT: &str = "9f3e6b1d-0a5c-4d28-a7f6-4e2b8c1a5d07";
    /// The `/boot` filesystem of [`super::tiny_mbr_boot_first`].
    pub const TINY_MBR_BOOT: &str = "e4b2a9c7-3f6d-4b31-8d0e-7a5c2f9e1b18";
}

/// Errors from building and inspecting test images.
#[derive(Debug, thiserror::Error)]
pub enum TestImageError {
    /// A command is not installed.
    #[error("{tool} not found: {}", install_hint(*.package))]
    MissingTool {
        tool: String,
        /// The Debian package that ships the tool, when known.
        package: Option<&'static str>,
    },
    /// A command could not be started.
    #[error("starting {command} failed")]
    StartingCommand {
        command: String,
        #[source]
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("{command} failed ({status}): {stderr}")]
    RunningCommand {
        command: String,
        status: ExitStatus,
        stderr: String,
    },
    /// A command printed an error although it exited with status 0 (`debugfs` does this).
    #[error("{command} reported an error: {stderr}")]
    CommandReportedError { command: String, stderr: String },
    /// Building this image needs root.
    #[error("building {image} needs root: debootstrap and root-owned trees need uid 0")]
    NeedsRoot { image: String },
    /// Creating, writing or removing a file or directory failed.
    #[error("{action} {path} failed")]
    FileOperation {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Taking the build lock failed.
    #[error("locking {path} failed")]
    Locking {
        path: PathBuf,
        #[source]
        source: Errno,
    },
    /// A partial tree from an interrupted build still has mounts inside.
    #[error("partial tree {path} still has mounts inside ({mounts}): unmount them, then retry")]
    MountsInPartialTree { path: PathBuf, mounts: String },
    /// The partition table could not be read or parsed.
    #[error("reading the partition table of {image} failed: {reason}")]
    ReadingPartitionTable { image: PathBuf, reason: String },
    /// The image has no partition with this number.
    #[error("{image} has no partition {number}")]
    PartitionNotFound { image: PathBuf, number: u32 },
    /// The path does not exist inside the image's filesystem.
    #[error("{guest_path} not found in {image} at offset {offset}")]
    GuestPathNotFound {
        image: PathBuf,
        offset: u64,
        guest_path: String,
    },
    /// `debugfs stat` printed something this module cannot parse.
    #[error("parsing debugfs stat output for {guest_path} failed: {reason}")]
    ParsingStat { guest_path: String, reason: String },
    /// Reading `/proc` or `/sys` for the leak check failed.
    #[error("reading {path} failed")]
    ReadingSystemState {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

fn install_hint(package: Option<&str>) -> String {
    match package {
        Some(package) => {
            format!("install the Debian package {package}, or run `cargo xtask setup`")
        }
        None => "install it, or run `cargo xtask setup`".to_owned(),
    }
}

/// The result type of this module.
pub type Result<T, E = TestImageError> = std::result::Result<T, E>;

/// One filesystem inside a test image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestFilesystem {
    /// The partition number (1-based), or `None` when the filesystem is the whole disk.
    pub partition: Option<u32>,
    /// The filesystem UUID, as `mkfs.ext4 -U` set it and `/etc/fstab` lists it.
    pub uuid: &'static str,
    /// The filesystem label.
    pub label: &'static str,
}

/// A built test image and what it contains.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TestImage {
    /// The image file.
    pub path: PathBuf,
    /// The image's format.
    pub format: DiskFormat,
    /// The metadata sidecar beside the image, when the image has one.
    pub sidecar: Option<PathBuf>,
    /// The root filesystem.
    pub root: TestFilesystem,
    /// The `/boot` filesystem, when it is separate from the root.
    pub boot: Option<TestFilesystem>,
}

impl TestImage {
    /// Copies the image (and its sidecar) into `dir`, as [`fresh_copy`] does, and returns
    /// the copy's description.
    pub fn fresh_copy(&self, dir: &Path) -> Result<TestImage> {
        let path = fresh_copy(&self.path, dir)?;
        let sidecar = self
            .sidecar
            .as_ref()
            .map(|_| ImageMeta::sidecar_path(&path));
        Ok(TestImage {
            path,
            sidecar,
            ..self.clone()
        })
    }

    /// Opens a reader on the root filesystem.
    pub fn root_reader(&self) -> Result<Ext4Reader> {
        Ext4Reader::open(&self.path, self.root.partition)
    }

    /// Opens a reader on the `/boot` filesystem, when the image has a separate one.
    pub fn boot_reader(&self) -> Result<Option<Ext4Reader>> {
        self.boot
            .as_ref()
            .map(|boot| Ext4Reader::open(&self.path, boot.partition))
            .transpose()
    }
}

/// Returns the directory that contains the cached images: `GUEST_INJECT_IMAGE_DIR` when set,
/// otherwise `target/test-images` in the workspace.
pub fn image_dir() -> PathBuf {
    match std::env::var_os(IMAGE_DIR_ENV) {
        Some(dir) if !dir.is_empty() => PathBuf::from(dir),
        _ => Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .unwrap_or(Path::new("."))
            .join("target")
            .join("test-images"),
    }
}

/// Returns the 1 GiB GPT raw disk: a 1 MiB BIOS boot partition first, then the ext4 root
/// (label `root`) with the Debian minbase tree. Its sidecar gives
/// `{"disk_format":"raw","inject_partition":2}`.
pub fn gpt_raw() -> Result<TestImage> {
    let dir = image_dir();
    let image = gpt_description(dir.join("gpt.raw"), DiskFormat::Raw, uuids::GPT_ROOT);
    build_gpt(
        &image,
        Tree::Debian,
        FULL_DISK_BYTES,
        r#""inject_partition":2"#,
    )?;
    Ok(image)
}

/// Returns [`gpt_raw`] converted to qcow2. Its sidecar gives
/// `{"disk_format":"qcow2","inject_partition":"2"}`.
pub fn gpt_qcow2() -> Result<TestImage> {
    let raw = gpt_raw()?;
    let image = gpt_description(
        image_dir().join("gpt.qcow2"),
        DiskFormat::Qcow2,
        uuids::GPT_ROOT,
    );
    build_qcow2(&raw, &image)?;
    Ok(image)
}

/// Returns the 1 GiB whole-disk ext4 image (no partition table) with the Debian minbase
/// tree. Its sidecar gives `{"disk_format":"raw","inject_partition":"none"}`.
pub fn whole_ext4() -> Result<TestImage> {
    let image = whole_description(image_dir().join("whole-ext4.raw"), uuids::WHOLE_ROOT);
    build_whole(&image, Tree::Debian, FULL_DISK_BYTES)?;
    Ok(image)
}

/// Returns the 1 GiB MBR disk with `/boot` (ext4, label `boot`, a fake kernel and
/// initrd) on partition 1 and the root (the Debian minbase tree) on partition 2. The
/// root's `/etc/fstab` lists both by UUID. It has no sidecar, so tests select `auto`.
pub fn mbr_boot_first() -> Result<TestImage> {
    let image = mbr_description(
        image_dir().join("mbr-boot-first.raw"),
        uuids::MBR_ROOT,
        uuids::MBR_BOOT,
    );
    build_mbr_boot_first(&image, Tree::Debian, FULL_DISK_BYTES, 256 * MIB)?;
    Ok(image)
}

/// Returns the 64 MiB variant of [`gpt_raw`] with the tiny hand-made tree.
pub fn tiny_gpt_raw() -> Result<TestImage> {
    let image = gpt_description(
        image_dir().join("tiny-gpt.raw"),
        DiskFormat::Raw,
        uuids::TINY_GPT_ROOT,
    );
    build_gpt(
        &image,
        Tree::Tiny,
        TINY_DISK_BYTES,
        r#""inject_partition":2"#,
    )?;
    Ok(image)
}

/// Returns [`tiny_gpt_raw`] converted to qcow2.
pub fn tiny_gpt_qcow2() -> Result<TestImage> {
    let raw = tiny_gpt_raw()?;
    let image = gpt_description(
        image_dir().join("tiny-gpt.qcow2"),
        DiskFormat::Qcow2,
        uuids::TINY_GPT_ROOT,
    );
    build_qcow2(&raw, &image)?;
    Ok(image)
}

/// Returns the 64 MiB variant of [`whole_ext4`] with the tiny hand-made tree: `/etc/passwd`,
/// `/etc/group`, `/etc/shadow`, `/etc/gshadow`, `/etc/os-release`, `/etc/fstab`, `/root`.
pub fn tiny_whole_ext4() -> Result<TestImage> {
    let image = whole_description(
        image_dir().join("tiny-whole-ext4.raw"),
        uuids::TINY_WHOLE_ROOT,
    );
    build_whole(&image, Tree::Tiny, TINY_DISK_BYTES)?;
    Ok(image)
}

/// Returns the 64 MiB variant of [`mbr_boot_first`] with the tiny hand-made tree.
pub fn tiny_mbr_boot_first() -> Result<TestImage> {
    let image = mbr_description(
        image_dir().join("tiny-mbr-boot-first.raw"),
        uuids::TINY_MBR_ROOT,
        uuids::TINY_MBR_BOOT,
    );
    build_mbr_boot_first(&image, Tree::Tiny, TINY_DISK_BYTES, 16 * MIB)?;
    Ok(image)
}

/// One image that [`build_all`] produced.
#[derive(Debug, Clone)]
pub struct BuildReport {
    /// The builder's name, such as `gpt_raw`.
    pub name: &'static str,
    /// The image.
    pub image: TestImage,
    /// How long the builder took, including images it depends on that were missing.
    pub elapsed: Duration,
}

/// A function that returns one test image, building it when missing.
pub type Builder = fn() -> Result<TestImage>;

/// Every image builder with its name, tiny images first.
pub const BUILDERS: [(&str, Builder); 8] = [
    ("tiny_whole_ext4", tiny_whole_ext4),
    ("tiny_gpt_raw", tiny_gpt_raw),
    ("tiny_gpt_qcow2", tiny_gpt_qcow2),
    ("tiny_mbr_boot_first", tiny_mbr_boot_first),
    ("gpt_raw", gpt_raw),
    ("gpt_qcow2", gpt_qcow2),
    ("whole_ext4", whole_ext4),
    ("mbr_boot_first", mbr_boot_first),
];

/// Builds every image that is missing, in the order of [`BUILDERS`], and reports each.
pub fn build_all() -> Result<Vec<BuildReport>> {
    let mut reports = Vec::with_capacity(BUILDERS.len());
    for (name, builder) in BUILDERS {
        let started = Instant::now();
        let image = builder()?;
        reports.push(BuildReport {
            name,
            image,
            elapsed: started.elapsed(),
        });
    }
    Ok(reports)
}

/// Copies `image`, and its `IMAGE.meta.json` sidecar when there is one, into `dir` under
/// the same file name, keeping holes (`cp --sparse=always --reflink=auto`). Returns the
/// copy's path.
pub fn fresh_copy(image: &Path, dir: &Path) -> Result<PathBuf> {
    let name = image
        .file_name()
        .ok_or_else(|| TestImageError::FileOperation {
            action: "copying",
            path: image.to_owned(),
            source: io::Error::new(io::ErrorKind::InvalidInput, "the path has no file name"),
        })?;
    let copy = dir.join(name);
    copy_sparse(image, &copy)?;

    let sidecar = ImageMeta::sidecar_path(image);
    if sidecar.exists() {
        copy_sparse(&sidecar, &ImageMeta::sidecar_path(&copy))?;
    }
    Ok(copy)
}

fn copy_sparse(from: &Path, to: &Path) -> Result<()> {
    command::run(
        command::new("cp")
            .arg("--sparse=always")
            .arg("--reflink=auto")
            .arg("--")
            .arg(from)
            .arg(to),
    )?;
    Ok(())
}

fn gpt_description(path: PathBuf, format: DiskFormat, root_uuid: &'static str) -> TestImage {
    TestImage {
        sidecar: Some(ImageMeta::sidecar_path(&path)),
        path,
        format,
        root: TestFilesystem {
            partition: Some(2),
            uuid: root_uuid,
            label: ROOT_LABEL,
        },
        boot: None,
    }
}

fn whole_description(path: PathBuf, root_uuid: &'static str) -> TestImage {
    TestImage {
        sidecar: Some(ImageMeta::sidecar_path(&path)),
        path,
        format: DiskFormat::Raw,
        root: TestFilesystem {
            partition: None,
            uuid: root_uuid,
            label: ROOT_LABEL,
        },
        boot: None,
    }
}

fn mbr_description(path: PathBuf, root_uuid: &'static str, boot_uuid: &'static str) -> TestImage {
    TestImage {
        path,
        format: DiskFormat::Raw,
        sidecar: None,
        root: TestFilesystem {
            partition: Some(2),
            uuid: root_uuid,
            label: ROOT_LABEL,
        },
        boot: Some(TestFilesystem {
            partition: Some(1),
            uuid: boot_uuid,
            label: BOOT_LABEL,
        }),
    }
}

fn build_gpt(image: &TestImage, tree: Tree, size: u64, partition_json: &str) -> Result<()> {
    cached(&image.path, |partial| {
        let root = tree.stage(partial, &fstab(image))?;
        let disk = Disk {
            size,
            table: PartitionTable::Gpt,
            partitions: vec![
                PartitionSpec {
                    size: Some(MIB),
                    type_id: BIOS_BOOT_TYPE,
                    name: "bios",
                    filesystem: None,
                },
                PartitionSpec {
                    size: None,
                    type_id: LINUX_FILESYSTEM_TYPE,
                    name: ROOT_LABEL,
                    filesystem: Some(root.filesystem(&image.root)),
                },
            ],
        };
        disk.build(partial)?;
        root.remove()?;

        write_sidecar(image, partition_json)
    })
}

fn build_qcow2(raw: &TestImage, image: &TestImage) -> Result<()> {
    cached(&image.path, |partial| {
        command::run(
            command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw.path)
                .arg(partial),
        )?;
        write_sidecar(image, r#""inject_partition":"2""#)
    })
}

fn build_whole(image: &TestImage, tree: Tree, size: u64) -> Result<()> {
    cached(&image.path, |partial| {
        let root = tree.stage(partial, &fstab(image))?;
        disk::make_ext4(partial, size, &root.filesystem(&image.root))?;
        root.remove()?;

        write_sidecar(image, r#""inject_partition":"none""#)
    })
}

fn build_mbr_boot_first(image: &TestImage, tree: Tree, size: u64, boot_size: u64) -> Result<()> {
    let boot_fs = image
        .boot
        .as_ref()
        .expect("an MBR boot-first image has /boot");
    cached(&image.path, |partial| {
        let root = tree.stage(partial, &fstab(image))?;
        let boot = tree::stage_boot(partial)?;
        let disk = Disk {
            size,
            table: PartitionTable::Mbr,
            partitions: vec![
                PartitionSpec {
                    size: Some(boot_size),
                    type_id: "83",
                    name: BOOT_LABEL,
                    filesystem: Some(boot.filesystem(boot_fs)),
                },
                PartitionSpec {
                    size: None,
                    type_id: "83",
                    name: ROOT_LABEL,
                    filesystem: Some(root.filesystem(&image.root)),
                },
            ],
        };
        disk.build(partial)?;
        root.remove()?;
        boot.remove()
    })
}

/// Returns the `/etc/fstab` for an image: the root, and `/boot` when separate, by UUID.
fn fstab(image: &TestImage) -> String {
    let mut text = String::from("# <file system> <mount point> <type> <options> <dump> <pass>\n");
    text.push_str(&format!(
        "UUID={} / ext4 errors=remount-ro 0 1\n",
        image.root.uuid
    ));
    if let Some(boot) = &image.boot {
        text.push_str(&format!("UUID={} /boot ext4 defaults 0 2\n", boot.uuid));
    }
    text
}

/// Writes the image's sidecar with its format and the given `inject_partition` member.
fn write_sidecar(image: &TestImage, partition_json: &str) -> Result<()> {
    let Some(sidecar) = &image.sidecar else {
        return Ok(());
    };
    let text = format!(
        "{{\"disk_format\":\"{}\",{partition_json}}}\n",
        image.format.as_str()
    );
    let partial = partial_path(sidecar);
    write_file(&partial, text.as_bytes())?;
    rename(&partial, sidecar)
}

/// Builds `path` with `build` unless it already exists.
///
/// `build` gets a `.partial` path to write the image to, and the result is renamed into
/// place only when `build` succeeds. An exclusive `flock` on `PATH.lock` keeps other
/// threads and processes from building the same image at the same time.
fn cached(path: &Path, build: impl FnOnce(&Path) -> Result<()>) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    create_dir_all(dir)?;

    let lock_path = with_suffix(path, ".lock");
    let lock_file = File::create(&lock_path).map_err(|source| TestImageError::FileOperation {
        action: "creating",
        path: lock_path.clone(),
        source,
    })?;
    let _lock = Flock::lock(lock_file, FlockArg::LockExclusive).map_err(|(_, errno)| {
        TestImageError::Locking {
            path: lock_path.clone(),
            source: errno,
        }
    })?;

    if path.exists() {
        return Ok(());
    }

    let _span = tracing::info_span!("building test image", image = %path.display()).entered();
    let started = Instant::now();
    let partial = partial_path(path);
    remove_stale(&partial)?;
    build(&partial)?;
    rename(&partial, path)?;
    tracing::info!(
        image = %path.display(),
        seconds = started.elapsed().as_secs_f64(),
        "built test image"
    );
    Ok(())
}

fn partial_path(path: &Path) -> PathBuf {
    with_suffix(path, ".partial")
}

fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(suffix);
    path.with_file_name(name)
}

/// Removes a file or a directory tree left by an interrupted build.
fn remove_stale(path: &Path) -> Result<()> {
    let metadata = match fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(TestImageError::FileOperation {
                action: "inspecting",
                path: path.to_owned(),
                source,
            })
        }
    };

    let result = if metadata.is_dir() {
        // An interrupted debootstrap can leave /proc or /sys mounted inside its target,
        // and removing files through such a mount would reach the host's.
        let mounts = leaks::mounts_under(path)?;
        if !mounts.is_empty() {
            return Err(TestImageError::MountsInPartialTree {
                path: path.to_owned(),
                mounts: mounts.join(", "),
            });
        }
        fs::remove_dir_all(path)
    } else {
        fs::remove_file(path)
    };
    result.map_err(|source| TestImageError::FileOperation {
        action: "removing",
        path: path.to_owned(),
        source,
    })
}

fn create_dir_all(path: &Path) -> Result<()> {
    fs::create_dir_all(path).map_err(|source| TestImageError::FileOperation {
        action: "creating directory",
        path: path.to_owned(),
        source,
    })
}

fn write_file(path: &Path, contents: &[u8]) -> Result<()> {
    fs::write(path, contents).map_err(|source| TestImageError::FileOperation {
        action: "writing",
        path: path.to_owned(),
        source,
    })
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).map_err(|source| TestImageError::FileOperation {
        action: "renaming to final name",
        path: from.to_owned(),
        source,
    })
}

#[cfg(test)]
mod built_tests;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fstab_lists_root_by_uuid() {
        let image = gpt_description(PathBuf::from("gpt.raw"), DiskFormat::Raw, uuids::GPT_ROOT);

        let text = fstab(&image);

        assert!(text.contains(&format!("UUID={} / ext4", uuids::GPT_ROOT)));
        assert!(!text.contains("/boot"));
    }

    #[test]
    fn fstab_lists_boot_by_uuid_when_separate() {
        let image = mbr_description(PathBuf::from("mbr.raw"), uuids::MBR_ROOT, uuids::MBR_BOOT);

        let text = fstab(&image);

        assert!(text.contains(&format!("UUID={} / ext4", uuids::MBR_ROOT)));
        assert!(text.contains(&format!("UUID={} /boot ext4", uuids::MBR_BOOT)));
    }

    #[test]
    fn sidecar_parses_as_image_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let image = gpt_description(dir.path().join("gpt.qcow2"), DiskFormat::Qcow2, "x");

        write_sidecar(&image, r#""inject_partition":"2""#).unwrap();
        let meta = ImageMeta::load(image.sidecar.as_ref().unwrap()).unwrap();

        assert_eq!(meta.disk_format, Some(DiskFormat::Qcow2));
        assert_eq!(
            meta.inject_partition,
            Some(vfs_core::image::PartitionSelector::Number(2))
        );
    }

    #[test]
    fn cached_keeps_nothing_when_build_fails() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("broken.raw");

        let result = cached(&path, |partial| {
            write_file(partial, b"half")?;
            Err(TestImageError::NeedsRoot {
                image: "broken".into(),
            })
        });

        assert!(result.is_err());
        assert!(!path.exists());
    }

    #[test]
    fn cached_skips_build_when_image_exists() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("done.raw");
        cached(&path, |partial| write_file(partial, b"first")).unwrap();

        cached(&path, |partial| write_file(partial, b"second")).unwrap();

        assert_eq!(fs::read(&path).unwrap(), b"first");
    }

    #[test]
    fn cached_replaces_stale_partial_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("retry.raw");
        fs::write(partial_path(&path), b"left over").unwrap();

        cached(&path, |partial| {
            let mut file = fs::OpenOptions::new()
                .create_new(true)
                .write(true)
                .open(partial)
                .unwrap();
            io::Write::write_all(&mut file, b"fresh").unwrap();
            Ok(())
        })
        .unwrap();

        assert_eq!(fs::read(&path).unwrap(), b"fresh");
    }
}
