//! Integration tests of `LocalMount` on real images: `auto` with `/boot` on its own
//! partition, mount points whose filesystem is missing, hostile symlinks in a mounted
//! guest, images in use by qemu, read-only access, and teardown.

mod common;

use std::fs;
use std::os::unix::fs::symlink;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{
    debugfs_cat, mkfs, place, sfdisk, write_root_tree, Layout, Scratch, BOOT_UUID, MBR_BOOT_OFFSET,
    MBR_ROOT_OFFSET, MIB, MISSING_UUID, ROOT_UUID,
};
use vfs_core::image::{DiskFormat, PartitionSelector};
use vfs_core::registry::BackendChoice;
use vfs_core::{GuestFs, GuestPath, VfsError};
use vfs_localmount::{LocalMountError, LockError};

fn guest(path: &str) -> GuestPath {
    GuestPath::new(path).unwrap()
}

fn write(fs: &mut dyn GuestFs, path: &str, contents: &[u8]) -> Result<u64, VfsError> {
    fs.write_file(&guest(path), &mut &contents[..], 0o644)
}

// ----- auto and /etc/fstab -----

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn auto_writes_under_boot_to_partition_1() {
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Raw);
    let mut fs = vfs_localmount::open(&scratch.options(PartitionSelector::Auto)).unwrap();

    write(
        &mut fs,
        "/boot/grub/injected.cfg",
        b"on the boot partition\n",
    )
    .unwrap();
    write(&mut fs, "/etc/injected", b"on the root partition\n").unwrap();
    let mounts = fs.mounts();
    let boot_type = fs.fs_type(&guest("/boot/grub")).unwrap();
    let host_root = fs.host_root_dir().unwrap().to_owned();
    Box::new(fs).close().unwrap();

    scratch.assert_no_leaks();
    assert!(
        !host_root.exists(),
        "{} was not removed",
        host_root.display()
    );
    let image = scratch.raw_view();
    assert_eq!(
        debugfs_cat(&image, MBR_BOOT_OFFSET, "/grub/injected.cfg").as_deref(),
        Some(&b"on the boot partition\n"[..])
    );
    assert_eq!(
        debugfs_cat(&image, MBR_ROOT_OFFSET, "/boot/grub/injected.cfg"),
        None
    );
    assert_eq!(
        debugfs_cat(&image, MBR_ROOT_OFFSET, "/etc/injected").as_deref(),
        Some(&b"on the root partition\n"[..])
    );
    let points: Vec<&str> = mounts.iter().map(|m| m.mount_point.as_str()).collect();
    assert_eq!(points, ["/", "/boot"]);
    assert_eq!(boot_type, "ext4");
}

#[test]
#[ignore = "needs root, loop devices, qemu-nbd and nbdfuse; run by cargo xtask integration"]
fn auto_on_qcow2_writes_under_boot_to_partition_1() {
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Qcow2);
    let mut fs = vfs_localmount::open(&scratch.options(PartitionSelector::Auto)).unwrap();

    write(&mut fs, "/boot/grub/injected.cfg", b"through qemu-nbd\n").unwrap();
    Box::new(fs).close().unwrap();

    scratch.assert_no_leaks();
    let image = scratch.raw_view();
    assert_eq!(
        debugfs_cat(&image, MBR_BOOT_OFFSET, "/grub/injected.cfg").as_deref(),
        Some(&b"through qemu-nbd\n"[..])
    );
    assert_eq!(
        debugfs_cat(&image, MBR_ROOT_OFFSET, "/boot/grub/injected.cfg"),
        None
    );
}

/// Builds an MBR disk in the scratch directory: `/boot` on partition 1 and a root on
/// partition 2 whose `/etc/fstab` is `fstab`, after `prepare` has changed the root tree.
fn custom_mbr(scratch: &Scratch, fstab: &str, prepare: impl FnOnce(&std::path::Path)) {
    let dir = scratch.dir.path();
    let tree = dir.join("root-tree");
    write_root_tree(&tree, fstab);
    fs::create_dir_all(tree.join("boot")).unwrap();
    prepare(&tree);
    let boot_tree = dir.join("boot-tree");
    fs::create_dir_all(boot_tree.join("grub")).unwrap();

    let disk = &scratch.image;
    fs::remove_file(disk).unwrap();
    fs::File::create(disk).unwrap().set_len(256 * MIB).unwrap();
    sfdisk(
        disk,
        "label: dos\nstart=2048, size=131072, type=83\nstart=133120, size=389120, type=83\n",
    );
    let boot = dir.join("boot.part");
    fs::File::create(&boot).unwrap().set_len(64 * MIB).unwrap();
    mkfs(&boot, &boot_tree, BOOT_UUID, "boot");
    place(&boot, disk, MBR_BOOT_OFFSET);
    let root = dir.join("root.part");
    fs::File::create(&root).unwrap().set_len(190 * MIB).unwrap();
    mkfs(&root, &tree, ROOT_UUID, "root");
    place(&root, disk, MBR_ROOT_OFFSET);
    fs::remove_dir_all(tree).unwrap();
    fs::remove_dir_all(boot_tree).unwrap();
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn missing_fstab_filesystems_reject_writes() {
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Raw);
    let fstab = format!(
        "UUID={ROOT_UUID} / ext4 defaults 0 1\n\
         UUID={BOOT_UUID} /boot ext4 defaults 0 2\n\
         UUID={MISSING_UUID} /data ext4 defaults 0 2\n\
         UUID={MISSING_UUID} /srv/absent ext4 defaults 0 2\n\
         UUID={MISSING_UUID} /data/nested ext4 defaults 0 2\n"
    );
    custom_mbr(&scratch, &fstab, |tree| {
        fs::create_dir_all(tree.join("data")).unwrap();
        fs::write(tree.join("data/underneath"), b"hidden by the mount").unwrap();
        fs::create_dir_all(tree.join("srv")).unwrap();
    });
    let mut fs = vfs_localmount::open(&scratch.options(PartitionSelector::Auto)).unwrap();

    let into_data = write(&mut fs, "/data/new", b"x");
    let into_absent = fs.create_dir_all(&guest("/srv/absent/dir"), 0o755);
    let read_underneath = fs.read_file(&guest("/data/underneath"));
    let beside = write(&mut fs, "/srv/present", b"x");
    Box::new(fs).close().unwrap();

    assert!(
        matches!(&into_data, Err(VfsError::NotMounted { mount_point, .. }) if mount_point.as_str() == "/data"),
        "{into_data:?}"
    );
    assert!(
        matches!(&into_absent, Err(VfsError::NotMounted { mount_point, .. }) if mount_point.as_str() == "/srv/absent"),
        "{into_absent:?}"
    );
    assert!(read_underneath.is_err(), "{read_underneath:?}");
    assert!(beside.is_ok(), "{beside:?}");
    scratch.assert_no_leaks();
    let image = scratch.raw_view();
    assert_eq!(debugfs_cat(&image, MBR_ROOT_OFFSET, "/data/new"), None);
    assert_eq!(debugfs_cat(&image, MBR_ROOT_OFFSET, "/srv/absent"), None);
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn missing_mount_point_waits_for_enable_writes() {
    // /data is listed in /etc/fstab but missing from the root filesystem. Creating it is
    // a write, so with writes deferred it is created and mounted by enable_writes.
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Raw);
    let fstab =
        format!("UUID={ROOT_UUID} / ext4 defaults 0 1\nUUID={BOOT_UUID} /data ext4 defaults 0 2\n");
    custom_mbr(&scratch, &fstab, |_| {});
    let before = fs::read(&scratch.image).unwrap();
    let mut options = scratch.options(PartitionSelector::Auto);
    options.defer_writes = true;
    let mut fs = vfs_localmount::open(&options).unwrap();

    let points_deferred = mount_point_names(&fs.mounts());
    let data_deferred = fs.exists(&guest("/data")).unwrap();
    let unchanged_while_deferred = fs::read(&scratch.image).unwrap() == before;
    fs.enable_writes().unwrap();
    let points_enabled = mount_point_names(&fs.mounts());
    write(&mut fs, "/data/new", b"on the boot filesystem\n").unwrap();
    Box::new(fs).close().unwrap();

    assert_eq!(points_deferred, ["/"]);
    assert!(!data_deferred);
    assert!(
        unchanged_while_deferred,
        "the image changed before enable_writes"
    );
    assert_eq!(points_enabled, ["/", "/data"]);
    scratch.assert_no_leaks();
    assert_eq!(
        debugfs_cat(&scratch.image, MBR_BOOT_OFFSET, "/new").as_deref(),
        Some(&b"on the boot filesystem\n"[..])
    );
    assert_eq!(
        debugfs_cat(&scratch.image, MBR_ROOT_OFFSET, "/data/new"),
        None
    );
}

fn mount_point_names(mounts: &[vfs_core::MountInfo]) -> Vec<String> {
    mounts
        .iter()
        .map(|mount| mount.mount_point.to_string())
        .collect()
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn symlinked_mount_point_mounts_inside_guest() {
    // The guest's /boot is a symlink to a host directory's absolute path. The boot
    // filesystem must be mounted on that path inside the guest, never on the host
    // directory.
    let host_dir = tempfile::tempdir().unwrap();
    fs::write(host_dir.path().join("host-file"), b"host").unwrap();
    let host_path = host_dir.path().to_owned();
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Raw);
    let fstab =
        format!("UUID={ROOT_UUID} / ext4 defaults 0 1\nUUID={BOOT_UUID} /boot ext4 defaults 0 2\n");
    custom_mbr(&scratch, &fstab, |tree| {
        fs::remove_dir(tree.join("boot")).unwrap();
        symlink(&host_path, tree.join("boot")).unwrap();
    });
    let mut fs = vfs_localmount::open(&scratch.options(PartitionSelector::Auto)).unwrap();

    let mounted_on_host = mount_points().iter().any(|point| point == &host_path);
    write(&mut fs, "/boot/grub/injected.cfg", b"boot\n").unwrap();
    Box::new(fs).close().unwrap();

    assert!(
        !mounted_on_host,
        "the boot filesystem was mounted on the host directory"
    );
    let names: Vec<_> = fs::read_dir(&host_path)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["host-file"]);
    scratch.assert_no_leaks();
    assert_eq!(
        debugfs_cat(&scratch.image, MBR_BOOT_OFFSET, "/grub/injected.cfg").as_deref(),
        Some(&b"boot\n"[..])
    );
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn auto_without_os_root_lists_volumes() {
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Raw);
    custom_mbr(&scratch, "", |tree| {
        fs::remove_file(tree.join("etc/fstab")).unwrap();
        fs::remove_file(tree.join("etc/os-release")).unwrap();
    });

    let err = vfs_localmount::open(&scratch.options(PartitionSelector::Auto)).unwrap_err();

    assert!(matches!(err, LocalMountError::NoOsRoot { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("partition 1 (ext4, label boot)"), "{text}");
    assert!(text.contains("partition 2 (ext4, label root)"), "{text}");
    scratch.assert_no_leaks();
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn auto_with_two_os_roots_names_both() {
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Raw);
    let dir = scratch.dir.path();
    let second_root = dir.join("second-root");
    write_root_tree(&second_root, "");
    let part = dir.join("second.part");
    fs::File::create(&part).unwrap().set_len(64 * MIB).unwrap();
    mkfs(&part, &second_root, MISSING_UUID, "second");
    // Overwrite the boot filesystem of partition 1 with a second OS root.
    place(&part, &scratch.image, MBR_BOOT_OFFSET);

    let err = vfs_localmount::open(&scratch.options(PartitionSelector::Auto)).unwrap_err();

    assert!(
        matches!(err, LocalMountError::SeveralOsRoots { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("partition 1"), "{text}");
    assert!(text.contains("partition 2"), "{text}");
    scratch.assert_no_leaks();
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn auto_on_whole_disk_opens_it() {
    let scratch = Scratch::new(Layout::WholeDisk, DiskFormat::Raw);

    let mut fs = vfs_localmount::open(&scratch.options(PartitionSelector::Auto)).unwrap();

    let os_release = fs.read_file(&guest("/etc/os-release")).unwrap();
    let mounts = fs.mounts();
    Box::new(fs).close().unwrap();
    assert_eq!(os_release, b"ID=test\n");
    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].source, "the whole disk (ext4, label root)");
    scratch.assert_no_leaks();
}

// ----- selection -----

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn uuid_and_label_select_the_root() {
    let scratch = Scratch::new(Layout::Gpt, DiskFormat::Raw);
    let by_uuid = PartitionSelector::Uuid(ROOT_UUID.to_uppercase());
    let by_label = PartitionSelector::Label("root".to_owned());

    let mut sources = Vec::new();
    for selector in [by_uuid, by_label] {
        let fs = vfs_localmount::open(&scratch.options(selector)).unwrap();
        sources.push(fs.mounts()[0].source.clone());
        Box::new(fs).close().unwrap();
    }

    assert_eq!(sources, ["partition 2 (ext4, label root)"; 2]);
    scratch.assert_no_leaks();
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn explicit_partition_writes_boot_to_partition_1() {
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Raw);
    let mut fs = vfs_localmount::open(&scratch.options(PartitionSelector::Number(2))).unwrap();

    write(&mut fs, "/boot/explicit.txt", b"on the boot partition\n").unwrap();
    let points = mount_point_names(&fs.mounts());
    Box::new(fs).close().unwrap();

    scratch.assert_no_leaks();
    assert_eq!(points, ["/", "/boot"]);
    assert_eq!(
        debugfs_cat(&scratch.image, MBR_BOOT_OFFSET, "/explicit.txt").as_deref(),
        Some(&b"on the boot partition\n"[..])
    );
    assert_eq!(
        debugfs_cat(&scratch.image, MBR_ROOT_OFFSET, "/boot/explicit.txt"),
        None
    );
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn explicit_partition_rejects_missing_fstab_mount() {
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Raw);
    let fstab = format!(
        "UUID={ROOT_UUID} / ext4 defaults 0 1\n\
         UUID={MISSING_UUID} /data ext4 defaults 0 2\n"
    );
    custom_mbr(&scratch, &fstab, |tree| {
        fs::create_dir_all(tree.join("data")).unwrap();
    });
    let mut fs = vfs_localmount::open(&scratch.options(PartitionSelector::Number(2))).unwrap();

    let into_data = write(&mut fs, "/data/new", b"x");
    Box::new(fs).close().unwrap();

    assert!(
        matches!(&into_data, Err(VfsError::NotMounted { mount_point, .. }) if mount_point.as_str() == "/data"),
        "{into_data:?}"
    );
    scratch.assert_no_leaks();
    assert_eq!(
        debugfs_cat(&scratch.image, MBR_ROOT_OFFSET, "/data/new"),
        None
    );
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn partition_without_filesystem_is_an_error() {
    let scratch = Scratch::new(Layout::Gpt, DiskFormat::Raw);

    let err = vfs_localmount::open(&scratch.options(PartitionSelector::Number(1))).unwrap_err();

    assert!(
        matches!(err, LocalMountError::ReadingLayout { .. }),
        "{err:?}"
    );
    let chain = format!("{err}: {}", std::error::Error::source(&err).unwrap());
    assert!(chain.contains("partition 1 has no filesystem"), "{chain}");
    scratch.assert_no_leaks();
}

// ----- hostile symlinks on a mounted guest -----

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn ssh_link_to_host_dir_writes_into_image() {
    let host_dir = tempfile::tempdir().unwrap();
    let host_path = host_dir.path().to_owned();
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Raw);
    let fstab = format!("UUID={ROOT_UUID} / ext4 defaults 0 1\n");
    custom_mbr(&scratch, &fstab, |tree| {
        symlink(&host_path, tree.join("root/.ssh")).unwrap();
        let same_path = tree.join(host_path.strip_prefix("/").unwrap());
        fs::create_dir_all(same_path).unwrap();
    });
    let mut fs = vfs_localmount::open(&scratch.options(PartitionSelector::Number(2))).unwrap();

    write(
        &mut fs,
        "/root/.ssh/authorized_keys",
        b"ssh-ed25519 AAAA test\n",
    )
    .unwrap();
    Box::new(fs).close().unwrap();

    assert_eq!(fs::read_dir(&host_path).unwrap().count(), 0);
    scratch.assert_no_leaks();
    let in_guest = format!("{}/authorized_keys", host_path.display());
    assert_eq!(
        debugfs_cat(&scratch.image, MBR_ROOT_OFFSET, &in_guest).as_deref(),
        Some(&b"ssh-ed25519 AAAA test\n"[..])
    );
}

// ----- images in use -----

/// Starts `qemu-nbd` serving `image` on a socket in `dir` and waits until it holds the
/// image's locks.
fn serve_with_qemu_nbd(image: &std::path::Path, format: &str, dir: &std::path::Path) -> Child {
    let socket = dir.join("busy.sock");
    let child = Command::new("qemu-nbd")
        .args(["--persistent", "--format", format, "--socket"])
        .arg(&socket)
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start qemu-nbd");
    let started = Instant::now();
    while !socket.exists() {
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "qemu-nbd did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn stop(mut child: Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    child.wait().unwrap();
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn raw_image_served_by_qemu_is_rejected() {
    let scratch = Scratch::new(Layout::WholeDisk, DiskFormat::Raw);
    let qemu = serve_with_qemu_nbd(&scratch.image, "raw", scratch.dir.path());

    let result = vfs_localmount::open(&scratch.options(PartitionSelector::None));
    stop(qemu);

    let err = result.unwrap_err();
    assert!(
        matches!(err, LocalMountError::Locking(LockError::InUse { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&scratch.image.display().to_string()),
        "{err}"
    );
    scratch.assert_no_leaks();
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn qcow2_image_served_by_qemu_is_rejected() {
    let scratch = Scratch::new(Layout::Gpt, DiskFormat::Qcow2);
    let qemu = serve_with_qemu_nbd(&scratch.image, "qcow2", scratch.dir.path());

    let result = vfs_localmount::open(&scratch.options(PartitionSelector::Number(2)));
    stop(qemu);

    let err = result.unwrap_err();
    assert!(
        matches!(err, LocalMountError::Locking(LockError::InUse { .. })),
        "{err:?}"
    );
    assert!(
        err.to_string()
            .contains(&scratch.image.display().to_string()),
        "{err}"
    );
    scratch.assert_no_leaks();
}

/// Runs a writing `qemu-nbd` on `image` and returns whether it succeeded and its standard
/// error when it exits within 1.5 s, or `None` when it is still serving (then it is
/// stopped). A rejected `qemu-nbd` exits within milliseconds.
fn try_qemu_writer(image: &std::path::Path, dir: &std::path::Path) -> Option<(bool, String)> {
    let mut child = Command::new("qemu-nbd")
        .args(["--format", "raw", "--socket"])
        .arg(dir.join("writer.sock"))
        .arg(image)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu-nbd");
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(1500) {
        if let Some(status) = child.try_wait().unwrap() {
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            return Some((status.success(), stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    stop(child);
    None
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn qemu_rejects_image_while_mounted() {
    let scratch = Scratch::new(Layout::WholeDisk, DiskFormat::Raw);
    let fs = vfs_localmount::open(&scratch.options(PartitionSelector::None)).unwrap();

    let while_mounted = try_qemu_writer(&scratch.image, scratch.dir.path());
    Box::new(fs).close().unwrap();
    let after_close = try_qemu_writer(&scratch.image, scratch.dir.path());

    let (succeeded, stderr) = while_mounted.expect("qemu-nbd exits at once when rejected");
    assert!(!succeeded);
    assert!(stderr.contains("Failed to get \"write\" lock"), "{stderr}");
    assert_eq!(
        after_close, None,
        "qemu-nbd serves the image once it is closed"
    );
    scratch.assert_no_leaks();
}

// ----- read-only, registry, teardown -----

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn read_only_open_rejects_writes_and_keeps_image() {
    let scratch = Scratch::new(Layout::Gpt, DiskFormat::Raw);
    let before = fs::read(&scratch.image).unwrap();
    let mut options = scratch.options(PartitionSelector::Number(2));
    options.read_only = true;
    let mut fs = vfs_localmount::open(&options).unwrap();

    let passwd = fs.read_file(&guest("/etc/passwd"));
    let written = write(&mut fs, "/etc/new", b"x");
    Box::new(fs).close().unwrap();

    assert!(passwd.is_ok(), "{passwd:?}");
    assert!(
        matches!(written, Err(VfsError::ReadOnly { .. })),
        "{written:?}"
    );
    assert!(
        fs::read(&scratch.image).unwrap() == before,
        "the image changed"
    );
    scratch.assert_no_leaks();
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn registry_opens_localmount_by_name() {
    let scratch = Scratch::new(Layout::WholeDisk, DiskFormat::Raw);
    let choice = BackendChoice::Named("localmount".to_owned());

    let mut fs =
        vfs_core::registry::open(&choice, &scratch.options(PartitionSelector::None)).unwrap();

    assert_eq!(fs.backend_name(), "localmount");
    assert!(fs.exists(&guest("/etc/os-release")).unwrap());
    fs.close().unwrap();
    scratch.assert_no_leaks();
}

#[test]
#[ignore = "needs root, loop devices, qemu-nbd and nbdfuse; run by cargo xtask integration"]
fn dropped_qcow2_mount_leaves_nothing() {
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Qcow2);
    let mut fs = vfs_localmount::open(&scratch.options(PartitionSelector::Auto)).unwrap();
    write(&mut fs, "/boot/dropped", b"flushed on drop\n").unwrap();
    let host_root = fs.host_root_dir().unwrap().to_owned();

    drop(fs);

    scratch.assert_no_leaks();
    assert!(
        !host_root.exists(),
        "{} was not removed",
        host_root.display()
    );
    assert_eq!(
        debugfs_cat(&scratch.raw_view(), MBR_BOOT_OFFSET, "/dropped").as_deref(),
        Some(&b"flushed on drop\n"[..])
    );
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn failed_open_leaves_nothing() {
    // The root filesystem mounts, then the mount of /boot fails: its superblock still
    // names ext4, but the metadata after it is zeroed. Everything set up is released.
    let scratch = Scratch::new(Layout::MbrBootFirst, DiskFormat::Raw);
    let err = {
        // Zero the 64 KiB after the superblock (bytes 1024 to 2047 of the filesystem).
        let file = fs::OpenOptions::new()
            .write(true)
            .open(&scratch.image)
            .unwrap();
        let zeros = vec![0u8; 64 * 1024];
        std::os::unix::fs::FileExt::write_all_at(&file, &zeros, MBR_BOOT_OFFSET + 2048).unwrap();
        drop(file);
        vfs_localmount::open(&scratch.options(PartitionSelector::Auto)).unwrap_err()
    };

    assert!(
        matches!(err, LocalMountError::MountingGuestDir { .. }),
        "{err:?}"
    );
    scratch.assert_no_leaks();
}

fn mount_points() -> Vec<std::path::PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|line| line.split(' ').nth(4).map(std::path::PathBuf::from))
        .collect()
}
