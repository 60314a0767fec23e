//! Integration tests of `LocalMount` opened with `defer_writes` on fresh copies of the tiny
//! test images: until `enable_writes` every change fails and the image stays
//! byte-identical, and after it writes land on the right filesystem.
//!
//! A lock runs the tests one at a time, because the leak check counts every `qemu-nbd` and
//! `nbdfuse` that descends from this test process, whichever test started it.

use std::path::Path;
use std::sync::{Mutex, MutexGuard};

use testkit::hostile::sha256;
use testkit::images::{self, TestImage};
use vfs_core::image::{PartitionSelector, ResolvedImage, SettingSource};
use vfs_core::registry::OpenOptions;
use vfs_core::{GuestFs, GuestPath, VfsError};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn guest(path: &str) -> GuestPath {
    GuestPath::new(path).unwrap()
}

/// Returns options that open `image` writable with writes deferred.
fn deferred(image: &TestImage, partition: PartitionSelector) -> OpenOptions {
    let mut options = OpenOptions::new(ResolvedImage {
        path: image.path.clone(),
        format: image.format,
        format_source: SettingSource::Flag,
        partition,
        partition_source: SettingSource::Flag,
        file_size: std::fs::metadata(&image.path).unwrap().len(),
    });
    options.defer_writes = true;
    options
}

fn write(fs: &mut dyn GuestFs, path: &str, contents: &[u8]) -> Result<u64, VfsError> {
    fs.write_file(&guest(path), &mut &contents[..], 0o644)
}

fn assert_no_leaks(dir: &Path) {
    let leaks = images::leak_check(dir).expect("leak check");
    assert!(leaks.is_empty(), "left behind:\n{leaks}");
}

/// Opens `image` with writes deferred, reads `/etc/shadow`, tries three changes, closes,
/// and checks that every change failed with `ReadOnly` and the image kept its bytes.
fn check_deferred_open_keeps_image(image: &TestImage, partition: PartitionSelector) {
    let before = sha256(&image.path).unwrap();
    let mut fs = vfs_localmount::open(&deferred(image, partition)).unwrap();

    let shadow = fs.read_file(&guest("/etc/shadow"));
    let written = write(&mut fs, "/etc/deferred", b"x");
    let created = fs.create_dir_all(&guest("/root/.ssh"), 0o700);
    let chmod = fs.set_mode(&guest("/etc/shadow"), 0o600);
    Box::new(fs).close().unwrap();

    assert!(shadow.is_ok(), "{shadow:?}");
    assert!(
        matches!(written, Err(VfsError::ReadOnly { .. })),
        "{written:?}"
    );
    assert!(
        matches!(created, Err(VfsError::ReadOnly { .. })),
        "{created:?}"
    );
    assert!(matches!(chmod, Err(VfsError::ReadOnly { .. })), "{chmod:?}");
    assert_eq!(sha256(&image.path).unwrap(), before, "the image changed");
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn deferred_raw_image_stays_byte_identical() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let image = images::tiny_gpt_raw()
        .unwrap()
        .fresh_copy(dir.path())
        .unwrap();

    check_deferred_open_keeps_image(&image, PartitionSelector::Number(2));

    assert_no_leaks(dir.path());
}

#[test]
#[ignore = "needs root, loop devices, qemu-nbd and nbdfuse; run by cargo xtask integration"]
fn deferred_qcow2_image_stays_byte_identical() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let image = images::tiny_gpt_qcow2()
        .unwrap()
        .fresh_copy(dir.path())
        .unwrap();

    check_deferred_open_keeps_image(&image, PartitionSelector::Number(2));

    assert_no_leaks(dir.path());
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn deferred_auto_image_stays_byte_identical() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let image = images::tiny_mbr_boot_first()
        .unwrap()
        .fresh_copy(dir.path())
        .unwrap();
    let before = sha256(&image.path).unwrap();
    let mut fs = vfs_localmount::open(&deferred(&image, PartitionSelector::Auto)).unwrap();

    let points: Vec<String> = fs
        .mounts()
        .iter()
        .map(|mount| mount.mount_point.to_string())
        .collect();
    let into_boot = write(&mut fs, "/boot/deferred", b"x");
    Box::new(fs).close().unwrap();

    assert_eq!(points, ["/", "/boot"]);
    assert!(
        matches!(into_boot, Err(VfsError::ReadOnly { .. })),
        "{into_boot:?}"
    );
    assert_eq!(sha256(&image.path).unwrap(), before, "the image changed");
    assert_no_leaks(dir.path());
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn enabled_writes_land_on_root_and_boot() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let image = images::tiny_mbr_boot_first()
        .unwrap()
        .fresh_copy(dir.path())
        .unwrap();
    let mut fs = vfs_localmount::open(&deferred(&image, PartitionSelector::Auto)).unwrap();

    let before_enabling = write(&mut fs, "/etc/enabled", b"root\n");
    fs.enable_writes().unwrap();
    // Already writable: the second call changes nothing.
    fs.enable_writes().unwrap();
    write(&mut fs, "/etc/enabled", b"root\n").unwrap();
    write(&mut fs, "/boot/enabled", b"boot\n").unwrap();
    Box::new(fs).close().unwrap();

    assert!(
        matches!(before_enabling, Err(VfsError::ReadOnly { .. })),
        "{before_enabling:?}"
    );
    assert_no_leaks(dir.path());
    let root = image.root_reader().unwrap();
    let boot = image.boot_reader().unwrap().expect("a /boot filesystem");
    assert_eq!(root.cat_string("/etc/enabled").unwrap(), "root\n");
    assert_eq!(boot.cat_string("/enabled").unwrap(), "boot\n");
    assert!(!root.exists("/boot/enabled").unwrap());
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn enable_writes_on_read_only_open_fails() {
    let _serial = serial();
    let dir = tempfile::tempdir().unwrap();
    let image = images::tiny_gpt_raw()
        .unwrap()
        .fresh_copy(dir.path())
        .unwrap();
    let mut options = deferred(&image, PartitionSelector::Number(2));
    options.read_only = true;
    let mut fs = vfs_localmount::open(&options).unwrap();

    let enabled = fs.enable_writes();
    let written = write(&mut fs, "/etc/enabled", b"x");
    Box::new(fs).close().unwrap();

    assert!(
        matches!(enabled, Err(VfsError::ReadOnly { .. })),
        "{enabled:?}"
    );
    assert!(
        matches!(written, Err(VfsError::ReadOnly { .. })),
        "{written:?}"
    );
    assert_no_leaks(dir.path());
}
