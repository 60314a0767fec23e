//! Tests that build the real images and check them with `sfdisk`, `blkid`, `debugfs` and
//! `qemu-img`, independently of the builders' own inspection code where it matters.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::os::unix::fs::MetadataExt;
use std::process::Command;

use super::*;

/// Returns the `blkid` probe of the filesystem at `offset` of a raw image as KEY=VALUE.
fn blkid(image: &Path, offset: u64) -> HashMap<String, String> {
    let output = Command::new("blkid")
        .args(["--probe", "--output", "export", "--offset"])
        .arg(offset.to_string())
        .arg(image)
        .output()
        .unwrap();
    assert!(output.status.success(), "blkid failed: {output:?}");
    String::from_utf8(output.stdout)
        .unwrap()
        .lines()
        .filter_map(|line| line.split_once('='))
        .map(|(key, value)| (key.to_owned(), value.to_owned()))
        .collect()
}

fn qemu_img_format(image: &Path) -> String {
    let output = Command::new("qemu-img")
        .args(["info", "--output=json"])
        .arg(image)
        .output()
        .unwrap();
    assert!(output.status.success(), "qemu-img info failed: {output:?}");
    let info: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    info["format"].as_str().unwrap().to_owned()
}

fn assert_filesystem(image: &Path, offset: u64, expected: &TestFilesystem) {
    let probe = blkid(image, offset);
    assert_eq!(probe.get("TYPE").map(String::as_str), Some("ext4"));
    assert_eq!(probe.get("UUID").map(String::as_str), Some(expected.uuid));
    assert_eq!(probe.get("LABEL").map(String::as_str), Some(expected.label));
}

fn assert_root_tree(image: &TestImage) {
    let reader = image.root_reader().unwrap();

    let shadow = reader.cat_string("/etc/shadow").unwrap();
    assert!(shadow.starts_with("root:"), "{shadow}");
    let stat = reader.stat("/etc/shadow").unwrap();
    assert_eq!(stat.kind, "regular");
    assert_eq!(stat.mode, 0o640);
    assert_eq!(stat.uid, 0);
    assert_eq!(stat.gid, 42);
    let root_home = reader.stat("/root").unwrap();
    assert_eq!(root_home.kind, "directory");
    assert_eq!(root_home.mode, 0o700);
    assert_eq!(root_home.uid, 0);

    let fstab = reader.cat_string("/etc/fstab").unwrap();
    assert!(
        fstab.contains(&format!("UUID={} / ext4", image.root.uuid)),
        "{fstab}"
    );
    if let Some(boot) = &image.boot {
        assert!(
            fstab.contains(&format!("UUID={} /boot ext4", boot.uuid)),
            "{fstab}"
        );
    }
    let version = reader.cat_string("/etc/debian_version").unwrap();
    assert!(version.starts_with("12"), "{version}");
    assert!(!reader.exists("/root/.ssh").unwrap());
}

fn assert_gpt_layout(image: &TestImage, disk_bytes: u64) {
    assert_eq!(fs::metadata(&image.path).unwrap().len(), disk_bytes);
    let table = partitions(&image.path).unwrap();
    assert_eq!(table.len(), 2);
    assert_eq!(table[0].type_id, BIOS_BOOT_TYPE);
    assert_eq!(table[0].start, MIB);
    assert_eq!(table[0].size, MIB);
    assert_eq!(table[1].number, 2);
    assert_eq!(table[1].name.as_deref(), Some("root"));
    assert_filesystem(&image.path, table[1].start, &image.root);
}

fn assert_mbr_layout(image: &TestImage, disk_bytes: u64) {
    assert_eq!(fs::metadata(&image.path).unwrap().len(), disk_bytes);
    assert_eq!(image.sidecar, None);
    assert!(!ImageMeta::sidecar_path(&image.path).exists());
    let table = partitions(&image.path).unwrap();
    assert_eq!(table.len(), 2);
    assert_eq!(table[0].type_id, "83");
    assert!(table[0].bootable);
    assert_eq!(table[1].type_id, "83");
    assert_filesystem(&image.path, table[0].start, image.boot.as_ref().unwrap());
    assert_filesystem(&image.path, table[1].start, &image.root);

    let boot = image.boot_reader().unwrap().unwrap();
    assert!(boot.exists("/vmlinuz-6.1.0-test-amd64").unwrap());
    assert!(boot.exists("/grub/grub.cfg").unwrap());
    assert_eq!(boot.stat("/").unwrap().uid, 0);
}

fn assert_sidecar(image: &TestImage, format: DiskFormat, partition: &str) {
    let meta = ImageMeta::load(image.sidecar.as_ref().unwrap()).unwrap();
    assert_eq!(meta.disk_format, Some(format));
    assert_eq!(
        meta.inject_partition,
        Some(partition.parse().unwrap()),
        "sidecar of {}",
        image.path.display()
    );
}

#[test]
#[ignore = "needs e2fsprogs, fdisk and qemu-utils; run by cargo xtask integration"]
fn tiny_whole_ext4_is_bare_filesystem() {
    let image = tiny_whole_ext4().unwrap();

    assert_eq!(fs::metadata(&image.path).unwrap().len(), TINY_DISK_BYTES);
    assert!(partitions(&image.path).unwrap().is_empty());
    assert_filesystem(&image.path, 0, &image.root);
    assert_sidecar(&image, DiskFormat::Raw, "none");
    assert_root_tree(&image);
}

#[test]
#[ignore = "needs e2fsprogs, fdisk and qemu-utils; run by cargo xtask integration"]
fn tiny_gpt_raw_has_bios_boot_then_root() {
    let image = tiny_gpt_raw().unwrap();

    assert_gpt_layout(&image, TINY_DISK_BYTES);
    assert_sidecar(&image, DiskFormat::Raw, "2");
    assert_root_tree(&image);
}

#[test]
#[ignore = "needs e2fsprogs, fdisk and qemu-utils; run by cargo xtask integration"]
fn tiny_gpt_qcow2_matches_raw_contents() {
    let image = tiny_gpt_qcow2().unwrap();

    assert_eq!(qemu_img_format(&image.path), "qcow2");
    assert_sidecar(&image, DiskFormat::Qcow2, "2");
    assert_root_tree(&image);
    assert_eq!(partition(&image.path, 2).unwrap().start, 2 * MIB);
}

#[test]
#[ignore = "needs e2fsprogs, fdisk and qemu-utils; run by cargo xtask integration"]
fn tiny_mbr_has_boot_first() {
    let image = tiny_mbr_boot_first().unwrap();

    assert_mbr_layout(&image, TINY_DISK_BYTES);
    assert_root_tree(&image);
}

#[test]
#[ignore = "needs root, debootstrap and the Debian archive; run by cargo xtask integration"]
fn gpt_raw_holds_debian_root() {
    let image = gpt_raw().unwrap();

    assert_gpt_layout(&image, FULL_DISK_BYTES);
    assert_sidecar(&image, DiskFormat::Raw, "2");
    assert_root_tree(&image);
    let reader = image.root_reader().unwrap();
    assert!(reader.exists("/usr/bin/bash").unwrap());
    assert_eq!(reader.stat("/usr/bin/passwd").unwrap().mode, 0o4755);
}

#[test]
#[ignore = "needs root, debootstrap and the Debian archive; run by cargo xtask integration"]
fn gpt_qcow2_holds_debian_root() {
    let image = gpt_qcow2().unwrap();

    assert_eq!(qemu_img_format(&image.path), "qcow2");
    assert_sidecar(&image, DiskFormat::Qcow2, "2");
    assert_root_tree(&image);
}

#[test]
#[ignore = "needs root, debootstrap and the Debian archive; run by cargo xtask integration"]
fn whole_ext4_holds_debian_root() {
    let image = whole_ext4().unwrap();

    assert_eq!(fs::metadata(&image.path).unwrap().len(), FULL_DISK_BYTES);
    assert_filesystem(&image.path, 0, &image.root);
    assert_sidecar(&image, DiskFormat::Raw, "none");
    assert_root_tree(&image);
}

#[test]
#[ignore = "needs root, debootstrap and the Debian archive; run by cargo xtask integration"]
fn mbr_boot_first_holds_debian_root() {
    let image = mbr_boot_first().unwrap();

    assert_mbr_layout(&image, FULL_DISK_BYTES);
    assert_root_tree(&image);
    assert_eq!(
        image.root_reader().unwrap().stat("/boot").unwrap().kind,
        "directory"
    );
}

#[test]
#[ignore = "needs e2fsprogs, fdisk and qemu-utils; run by cargo xtask integration"]
fn fresh_copy_keeps_holes_and_sidecar() {
    let image = tiny_gpt_raw().unwrap();
    let dir = tempfile::tempdir().unwrap();

    let copy = image.fresh_copy(dir.path()).unwrap();

    let original = fs::metadata(&image.path).unwrap();
    let copied = fs::metadata(&copy.path).unwrap();
    assert_eq!(copied.len(), original.len());
    assert!(
        copied.blocks() <= original.blocks(),
        "the copy lost its holes"
    );
    assert_eq!(copy.sidecar, Some(ImageMeta::sidecar_path(&copy.path)));
    assert_sidecar(&copy, DiskFormat::Raw, "2");
    assert_eq!(
        fs::read(&copy.path).unwrap(),
        fs::read(&image.path).unwrap()
    );
}

#[test]
#[ignore = "needs e2fsprogs, fdisk and qemu-utils; run by cargo xtask integration"]
fn debugfs_cat_reports_missing_path() {
    let image = tiny_whole_ext4().unwrap();

    let err = debugfs_cat(&image.path, 0, "/etc/no-such-file").unwrap_err();

    assert!(
        matches!(err, TestImageError::GuestPathNotFound { .. }),
        "{err}"
    );
}

#[test]
#[ignore = "needs e2fsprogs, fdisk and qemu-utils; run by cargo xtask integration"]
fn debugfs_stat_at_wrong_offset_fails() {
    let image = tiny_gpt_raw().unwrap();

    let err = debugfs_stat(&image.path, 0, "/etc/shadow").unwrap_err();

    assert!(
        matches!(err, TestImageError::RunningCommand { .. }),
        "{err}"
    );
    assert!(err.to_string().contains("Bad magic number"), "{err}");
}

/// Runs a host command that must succeed and returns its stdout.
fn run_ok(program: &str, args: &[&OsStr]) -> String {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(output.status.success(), "{program} failed: {output:?}");
    String::from_utf8(output.stdout).unwrap()
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn leak_check_finds_loop_device_and_mount() {
    let image = tiny_whole_ext4().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let copy = image.fresh_copy(dir.path()).unwrap();
    let mount_point = dir.path().join("mnt");
    fs::create_dir(&mount_point).unwrap();
    let device = run_ok(
        "losetup",
        &["--find".as_ref(), "--show".as_ref(), copy.path.as_os_str()],
    );
    let device = device.trim();
    run_ok("mount", &[device.as_ref(), mount_point.as_os_str()]);

    let attached = leak_check(dir.path());
    run_ok("umount", &[mount_point.as_os_str()]);
    run_ok("losetup", &["--detach".as_ref(), device.as_ref()]);
    let released = leak_check(dir.path()).unwrap();

    let attached = attached.unwrap();
    assert_eq!(attached.loop_devices.len(), 1, "{attached}");
    assert_eq!(attached.loop_devices[0].device, Path::new(device));
    assert_eq!(attached.mounts.len(), 1, "{attached}");
    assert_eq!(attached.mounts[0].source, device);
    assert!(released.is_empty(), "{released}");
}
