//! Tests of the guestfs backend on real images in a real libguestfs appliance.
//!
//! Each launch takes about 20 s under TCG, so the tests launch few appliances. One runs the
//! whole conformance suite and a few backend checks on one handle. The others open an MBR
//! disk by inspection, open read-only by label, open with writes deferred, fail on a
//! missing partition, and do the test launch. Results are
//! checked after close with `debugfs`, independently of libguestfs, and every test checks
//! that no qemu process outlives it. A lock runs the tests one at a time, because the leak
//! check counts every qemu process this test binary started.

use std::path::Path;
use std::sync::Mutex;

use testkit::images::{self, TestImage};
use vfs_core::image::{PartitionSelector, ResolvedImage, SettingSource};
use vfs_core::registry::OpenOptions;
use vfs_core::{FileKind, GuestFs, GuestPath, VfsError};

/// Serialises the tests, so one appliance runs at a time and each leak check finds only
/// its own test's processes.
static APPLIANCE: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    APPLIANCE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn path(text: &str) -> GuestPath {
    GuestPath::new(text).unwrap()
}

fn options(image: &TestImage, partition: PartitionSelector) -> OpenOptions {
    OpenOptions::new(ResolvedImage {
        path: image.path.clone(),
        format: image.format,
        format_source: SettingSource::Flag,
        partition,
        partition_source: SettingSource::Flag,
        file_size: std::fs::metadata(&image.path).unwrap().len(),
    })
}

fn assert_no_leaks(dir: &Path) {
    let leaks = images::leak_check(dir).expect("leak check");
    assert!(leaks.is_empty(), "left behind:\n{leaks}");
}

#[test]
#[ignore = "needs libguestfs and an appliance launch (~20 s); run by cargo xtask integration"]
fn conformance_suite_passes_in_one_appliance() {
    let _lock = lock();
    let dir = tempfile::tempdir().unwrap();
    // The full image: the suite streams a 64 MiB file, more than the tiny images hold.
    let image = images::gpt_qcow2()
        .expect("build the GPT qcow2 image")
        .fresh_copy(dir.path())
        .unwrap();
    let mut fs =
        vfs_guestfs::open(&options(&image, PartitionSelector::Number(2))).expect("open the image");

    for (name, check) in testkit::conformance::CHECKS {
        eprintln!("conformance check {name}");
        check(&mut fs);
    }

    // The appliance has its own /etc; a write through a guest symlink to /etc must land in
    // the guest's.
    fs.symlink("/etc", &path("/etc-alias")).unwrap();
    fs.write_file(
        &path("/etc-alias/written-through-alias"),
        &mut &b"guest\n"[..],
        0o600,
    )
    .unwrap();
    let landed = fs.read_file(&path("/etc/written-through-alias")).unwrap();
    assert_eq!(landed, b"guest\n");

    // A dangling symlink is followed: the file is created at its target.
    fs.symlink("../run-target", &path("/etc/dangling")).unwrap();
    fs.write_file(&path("/etc/dangling"), &mut &b"created\n"[..], 0o644)
        .unwrap();
    assert_eq!(fs.read_file(&path("/run-target")).unwrap(), b"created\n");
    assert_eq!(
        fs.symlink_metadata(&path("/etc/dangling")).unwrap().kind,
        FileKind::Symlink
    );

    // Replacing /etc/shadow keeps its group and mode (root:shadow 0640).
    fs.write_file(
        &path("/etc/shadow"),
        &mut &b"root:$6$x$y:19800:0:99999:7:::\n"[..],
        0o600,
    )
    .unwrap();
    let shadow = fs.metadata(&path("/etc/shadow")).unwrap();
    assert_eq!((shadow.mode, shadow.uid, shadow.gid), (0o640, 0, 42));

    // A missing directory on the way is NotFound, as on every backend.
    let missing = fs.read_file(&path("/etc/missing-dir/file"));
    assert!(
        missing.as_ref().is_err_and(VfsError::is_not_found),
        "{missing:?}"
    );

    Box::new(fs).close().expect("close");
    assert_no_leaks(dir.path());

    let root = image_as_raw(&image, dir.path()).root_reader().unwrap();
    assert_eq!(
        root.cat_string("/conformance-write-new/new").unwrap(),
        "hello\n"
    );
    assert_eq!(
        root.cat_string("/etc/written-through-alias").unwrap(),
        "guest\n"
    );
    let stat = root.stat("/etc/written-through-alias").unwrap();
    assert_eq!(stat.mode & 0o7777, 0o600);
    assert_eq!(
        root.cat_string("/etc/shadow").unwrap(),
        "root:$6$x$y:19800:0:99999:7:::\n"
    );
}

/// Converts a qcow2 test image to raw beside it, for reading with `debugfs`.
fn image_as_raw(image: &TestImage, dir: &Path) -> TestImage {
    if image.format == vfs_core::image::DiskFormat::Raw {
        return image.clone();
    }
    let raw = dir.join("converted.raw");
    let status = std::process::Command::new("qemu-img")
        .args(["convert", "-f", "qcow2", "-O", "raw"])
        .arg(&image.path)
        .arg(&raw)
        .status()
        .expect("run qemu-img");
    assert!(status.success(), "qemu-img convert failed");
    TestImage {
        path: raw,
        format: vfs_core::image::DiskFormat::Raw,
        sidecar: None,
        ..image.clone()
    }
}

#[test]
#[ignore = "needs libguestfs and an appliance launch (~20 s); run by cargo xtask integration"]
fn auto_mode_writes_boot_files_to_boot_partition() {
    let _lock = lock();
    let dir = tempfile::tempdir().unwrap();
    let image = images::tiny_mbr_boot_first()
        .expect("build the tiny MBR image")
        .fresh_copy(dir.path())
        .unwrap();
    let mut fs =
        vfs_guestfs::open(&options(&image, PartitionSelector::Auto)).expect("open by inspection");

    let mounts = fs.mounts();
    let points: Vec<(&str, &str)> = mounts
        .iter()
        .map(|mount| (mount.mount_point.as_str(), mount.source.as_str()))
        .collect();
    assert_eq!(points, [("/", "/dev/sda2"), ("/boot", "/dev/sda1")]);
    assert_eq!(fs.fs_type(&path("/boot")).unwrap(), "ext4");
    fs.write_file(
        &path("/boot/injected"),
        &mut &b"on the boot partition\n"[..],
        0o644,
    )
    .unwrap();
    fs.write_file(
        &path("/etc/injected"),
        &mut &b"on the root partition\n"[..],
        0o644,
    )
    .unwrap();
    Box::new(fs).close().expect("close");
    assert_no_leaks(dir.path());

    let boot = image.boot_reader().unwrap().expect("a separate /boot");
    let root = image.root_reader().unwrap();
    assert_eq!(
        boot.cat_string("/injected").unwrap(),
        "on the boot partition\n"
    );
    assert!(!root.exists("/boot/injected").unwrap());
    assert_eq!(
        root.cat_string("/etc/injected").unwrap(),
        "on the root partition\n"
    );
}

#[test]
#[ignore = "needs libguestfs and an appliance launch (~20 s); run by cargo xtask integration"]
fn explicit_root_partition_writes_boot_files_to_boot_partition() {
    let _lock = lock();
    let dir = tempfile::tempdir().unwrap();
    let image = images::tiny_mbr_boot_first()
        .expect("build the tiny MBR image")
        .fresh_copy(dir.path())
        .unwrap();
    let mut options = options(&image, PartitionSelector::Number(2));
    options.defer_writes = true;
    let mut fs = vfs_guestfs::open(&options).expect("open partition 2");

    let mounts = fs.mounts();
    let points: Vec<(&str, &str)> = mounts
        .iter()
        .map(|mount| (mount.mount_point.as_str(), mount.source.as_str()))
        .collect();
    assert_eq!(points, [("/", "/dev/sda2"), ("/boot", "/dev/sda1")]);
    fs.enable_writes().expect("enable writes");
    fs.write_file(
        &path("/boot/explicit.txt"),
        &mut &b"on the boot partition\n"[..],
        0o644,
    )
    .unwrap();
    Box::new(fs).close().expect("close");
    assert_no_leaks(dir.path());

    let boot = image.boot_reader().unwrap().expect("a separate /boot");
    let root = image.root_reader().unwrap();
    assert_eq!(
        boot.cat_string("/explicit.txt").unwrap(),
        "on the boot partition\n"
    );
    assert!(!root.exists("/boot/explicit.txt").unwrap());
}

#[test]
#[ignore = "needs libguestfs and an appliance launch (~20 s); run by cargo xtask integration"]
fn read_only_label_open_rejects_writes() {
    let _lock = lock();
    let dir = tempfile::tempdir().unwrap();
    let image = images::tiny_mbr_boot_first()
        .expect("build the tiny MBR image")
        .fresh_copy(dir.path())
        .unwrap();
    let before = std::fs::read(&image.path).unwrap();
    let mut options = options(&image, PartitionSelector::Label(images::ROOT_LABEL.into()));
    options.read_only = true;
    let mut fs = vfs_guestfs::open(&options).expect("open read-only by label");

    let mounts = fs.mounts();
    assert_eq!(mounts.len(), 2);
    assert_eq!(mounts[0].source, "/dev/sda2");
    let os_release = fs.read_file(&path("/etc/os-release")).unwrap();
    assert!(String::from_utf8_lossy(&os_release).contains("bookworm"));
    let written = fs.write_file(&path("/etc/hostname"), &mut &b"changed\n"[..], 0o644);
    assert!(
        matches!(written, Err(VfsError::ReadOnly { .. })),
        "{written:?}"
    );
    Box::new(fs).close().expect("close");
    assert_no_leaks(dir.path());

    let after = std::fs::read(&image.path).unwrap();
    assert!(before == after, "a read-only open changed the image");
}

#[test]
#[ignore = "needs libguestfs and an appliance launch (~20 s); run by cargo xtask integration"]
fn deferred_writes_wait_for_enable_writes() {
    let _lock = lock();
    let dir = tempfile::tempdir().unwrap();
    let image = images::tiny_mbr_boot_first()
        .expect("build the tiny MBR image")
        .fresh_copy(dir.path())
        .unwrap();
    let before = testkit::hostile::sha256(&image.path).unwrap();
    let mut options = options(&image, PartitionSelector::Auto);
    options.defer_writes = true;
    let mut fs = vfs_guestfs::open(&options).expect("open with writes deferred");

    let shadow = fs.read_file(&path("/etc/shadow"));
    let into_root = fs.write_file(&path("/etc/deferred"), &mut &b"x"[..], 0o644);
    let into_boot = fs.create_dir_all(&path("/boot/deferred"), 0o755);
    // The sync pushes the appliance's cached writes to qemu, which writes them into the raw
    // image file, so the hash below sees every change made so far.
    fs.sync().unwrap();
    let while_deferred = testkit::hostile::sha256(&image.path).unwrap();
    fs.enable_writes().expect("enable writes");
    fs.write_file(&path("/etc/enabled"), &mut &b"root\n"[..], 0o644)
        .unwrap();
    fs.write_file(&path("/boot/enabled"), &mut &b"boot\n"[..], 0o644)
        .unwrap();
    Box::new(fs).close().expect("close");

    assert!(shadow.is_ok(), "{shadow:?}");
    assert!(
        matches!(into_root, Err(VfsError::ReadOnly { .. })),
        "{into_root:?}"
    );
    assert!(
        matches!(into_boot, Err(VfsError::ReadOnly { .. })),
        "{into_boot:?}"
    );
    assert_eq!(
        while_deferred, before,
        "the image changed before enable_writes"
    );
    assert_no_leaks(dir.path());
    let root = image.root_reader().unwrap();
    let boot = image.boot_reader().unwrap().expect("a /boot filesystem");
    assert_eq!(root.cat_string("/etc/enabled").unwrap(), "root\n");
    assert_eq!(boot.cat_string("/enabled").unwrap(), "boot\n");
    assert!(!root.exists("/etc/deferred").unwrap());
}

#[test]
#[ignore = "needs libguestfs and an appliance launch (~20 s); run by cargo xtask integration"]
fn check_launch_reports_launch_time() {
    let _lock = lock();
    let dir = tempfile::tempdir().unwrap();

    let elapsed = vfs_guestfs::check_launch().expect("test launch");

    assert!(elapsed.as_millis() > 0);
    assert_no_leaks(dir.path());
}

#[test]
#[ignore = "needs libguestfs and an appliance launch (~20 s); run by cargo xtask integration"]
fn missing_partition_fails_and_leaves_no_qemu() {
    let _lock = lock();
    let dir = tempfile::tempdir().unwrap();
    let image = images::tiny_whole_ext4()
        .expect("build the tiny whole-disk image")
        .fresh_copy(dir.path())
        .unwrap();

    let error = vfs_guestfs::open(&options(&image, PartitionSelector::Number(3))).unwrap_err();

    assert!(
        matches!(
            error,
            vfs_guestfs::GuestfsError::PartitionNotFound { number: 3, .. }
        ),
        "{error}"
    );
    assert_no_leaks(dir.path());
}

#[test]
#[ignore = "needs libguestfs, supermin and a readable kernel under /boot; run by cargo xtask integration"]
fn probe_finds_libguestfs_usable() {
    let availability = vfs_guestfs::probe(None);

    assert_eq!(availability, vfs_core::registry::Availability::Available);
}
