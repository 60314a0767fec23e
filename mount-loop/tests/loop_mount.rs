//! Attaching, mounting, writing, unmounting and detaching real ext4 images, checked with
//! `debugfs` and against sysfs and `/proc/self/mountinfo` for leftovers.

use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::thread;

use mount_loop::{loop_devices_backed_by, AttachOptions, LoopDevice, Mount, MountError};

/// Size of each test filesystem: small, but above the ext4 minimum for the default
/// 1 KiB-block small profile.
const FS_BYTES: u64 = 8 * 1024 * 1024;

/// Where the partition starts in the partitioned test image: sector 2048, as sfdisk
/// aligns it.
const PARTITION_OFFSET: u64 = 2048 * 512;

fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

/// Creates an empty ext4 filesystem image of `FS_BYTES` at `path`.
fn make_ext4(path: &Path) {
    File::create(path).unwrap().set_len(FS_BYTES).unwrap();
    run("mkfs.ext4", &["-q", "-F", path.to_str().unwrap()]);
}

/// Creates a disk image with an MBR and one Linux partition at `PARTITION_OFFSET` holding
/// an ext4 filesystem of `FS_BYTES`.
fn make_partitioned_disk(path: &Path, scratch: &Path) {
    let disk_bytes = PARTITION_OFFSET + FS_BYTES + 1024 * 1024;
    File::create(path).unwrap().set_len(disk_bytes).unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", path.to_str().unwrap()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let layout = format!("label: dos\nstart=2048, size={}, type=83\n", FS_BYTES / 512);
    sfdisk
        .stdin
        .take()
        .unwrap()
        .write_all(layout.as_bytes())
        .unwrap();
    assert!(sfdisk.wait().unwrap().success());

    let filesystem = scratch.join("partition.ext4");
    make_ext4(&filesystem);
    let bytes = fs::read(&filesystem).unwrap();
    let disk = OpenOptions::new().write(true).open(path).unwrap();
    disk.write_all_at(&bytes, PARTITION_OFFSET).unwrap();
    fs::remove_file(filesystem).unwrap();
}

/// Reads `guest_path` from the ext filesystem at `offset` in `image` without mounting.
fn debugfs_cat(image: &Path, offset: u64, guest_path: &str) -> Vec<u8> {
    let spec = format!("{}?offset={offset}", image.display());
    run("debugfs", &["-R", &format!("cat {guest_path}"), &spec])
}

/// Returns the mount points listed in `/proc/self/mountinfo`, with octal escapes decoded.
fn mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|line| {
            let field = line.split(' ').nth(4).unwrap();
            PathBuf::from(
                field
                    .replace("\\040", " ")
                    .replace("\\011", "\t")
                    .replace("\\012", "\n")
                    .replace("\\134", "\\"),
            )
        })
        .collect()
}

fn assert_not_mounted_under(dir: &Path) {
    let leftovers: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|point| point.starts_with(dir))
        .collect();
    assert!(leftovers.is_empty(), "still mounted: {leftovers:?}");
}

fn assert_not_attached(image: &Path) {
    let devices = loop_devices_backed_by(image).unwrap();
    assert!(devices.is_empty(), "still attached: {devices:?}");
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn whole_image_write_lands_in_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.ext4");
    make_ext4(&image);

    let device = LoopDevice::attach(&image, &AttachOptions::default()).unwrap();
    let mount = Mount::new(device.path(), "ext4", false).unwrap();
    let mount_dir = mount.path().to_owned();
    fs::write(mount_dir.join("hello"), b"written through a loop device\n").unwrap();
    mount.close().unwrap();
    device.close().unwrap();

    assert_eq!(
        debugfs_cat(&image, 0, "/hello"),
        b"written through a loop device\n"
    );
    assert_not_attached(&image);
    assert_not_mounted_under(&mount_dir);
    assert!(!mount_dir.exists(), "{} still exists", mount_dir.display());
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn fresh_mount_dir_is_private_with_safe_flags() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.ext4");
    make_ext4(&image);

    let device = LoopDevice::attach(&image, &AttachOptions::default()).unwrap();
    let mount = Mount::new(device.path(), "ext4", true).unwrap();
    let options = mount_options(mount.path());
    let mode = covered_dir_mode(mount.path());
    mount.close().unwrap();
    device.close().unwrap();

    assert_eq!(mode & 0o7777, 0o700);
    assert!(options.contains("nosuid"), "{options}");
    assert!(options.contains("nodev"), "{options}");
    assert!(options.contains("noexec"), "{options}");
    assert!(options.split(',').any(|option| option == "ro"), "{options}");
}

/// Returns the per-mount options of the mount at `point`.
fn mount_options(point: &Path) -> String {
    let text = fs::read_to_string("/proc/self/mountinfo").unwrap();
    let line = text
        .lines()
        .find(|line| Path::new(line.split(' ').nth(4).unwrap()) == point)
        .unwrap();
    line.split(' ').nth(5).unwrap().to_owned()
}

/// Returns the mode of the directory `dir` itself rather than of the filesystem mounted on
/// it, by looking through a non-recursive bind mount of its parent, which does not carry
/// the mounts beneath.
fn covered_dir_mode(dir: &Path) -> u32 {
    use std::os::unix::fs::MetadataExt;

    let scratch = tempfile::tempdir().unwrap();
    let bind = scratch.path().join("parent");
    fs::create_dir(&bind).unwrap();
    nix::mount::mount(
        Some(dir.parent().unwrap()),
        &bind,
        None::<&str>,
        nix::mount::MsFlags::MS_BIND,
        None::<&str>,
    )
    .unwrap();
    let mode = fs::metadata(bind.join(dir.file_name().unwrap()))
        .unwrap()
        .mode();
    nix::mount::umount2(&bind, nix::mount::MntFlags::empty()).unwrap();
    mode
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn partition_at_offset_write_lands_in_partition() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    make_partitioned_disk(&image, dir.path());
    let options = AttachOptions {
        offset: PARTITION_OFFSET,
        size_limit: Some(FS_BYTES),
        read_only: false,
    };

    let device = LoopDevice::attach(&image, &options).unwrap();
    assert_eq!(device.size(), FS_BYTES);
    assert_eq!(device.offset(), PARTITION_OFFSET);
    let mount = Mount::new(device.path(), "ext4", false).unwrap();
    fs::create_dir(mount.path().join("etc")).unwrap();
    fs::write(mount.path().join("etc/hostname"), b"guest\n").unwrap();
    mount.close().unwrap();
    device.close().unwrap();

    assert_eq!(
        debugfs_cat(&image, PARTITION_OFFSET, "/etc/hostname"),
        b"guest\n"
    );
    assert_not_attached(&image);
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn partition_of_block_device_write_lands_in_image() {
    // The kernel NBD path attaches a loop device at a partition's offset on /dev/nbdN. A
    // loop device over the whole disk replaces /dev/nbdN here.
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    make_partitioned_disk(&image, dir.path());
    let disk = LoopDevice::attach(&image, &AttachOptions::default()).unwrap();
    let options = AttachOptions {
        offset: PARTITION_OFFSET,
        size_limit: Some(FS_BYTES),
        read_only: false,
    };

    let partition = LoopDevice::attach(disk.path(), &options).unwrap();
    let partition_size = partition.size();
    let mount = Mount::new(partition.path(), "ext4", false).unwrap();
    fs::write(mount.path().join("nested"), b"loop over loop\n").unwrap();
    mount.close().unwrap();
    partition.close().unwrap();
    disk.close().unwrap();

    assert_eq!(partition_size, FS_BYTES);
    assert_eq!(
        debugfs_cat(&image, PARTITION_OFFSET, "/nested"),
        b"loop over loop\n"
    );
    assert_not_attached(&image);
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn range_past_end_of_block_device_is_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.ext4");
    make_ext4(&image);
    let disk = LoopDevice::attach(&image, &AttachOptions::default()).unwrap();
    let options = AttachOptions {
        offset: 1024 * 1024,
        size_limit: Some(FS_BYTES),
        read_only: false,
    };

    let result = LoopDevice::attach(disk.path(), &options);
    disk.close().unwrap();

    assert!(
        matches!(result, Err(mount_loop::LoopError::RangeOutsideImage { .. })),
        "{result:?}"
    );
    assert_not_attached(&image);
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn remount_read_write_allows_writes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.ext4");
    make_ext4(&image);
    let before = fs::read(&image).unwrap();
    let device = LoopDevice::attach(&image, &AttachOptions::default()).unwrap();

    let mut mount = Mount::new(device.path(), "ext4", true).unwrap();
    let rejected = fs::write(mount.path().join("early"), b"rejected");
    let image_while_read_only = fs::read(&image).unwrap();
    mount.remount_read_write().unwrap();
    let options = mount_options(mount.path());
    fs::write(mount.path().join("late"), b"written after the remount\n").unwrap();
    let read_only_after = mount.is_read_only();
    mount.close().unwrap();
    device.close().unwrap();

    assert_eq!(rejected.unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert!(
        image_while_read_only == before,
        "the read-only mount changed the image"
    );
    assert!(!read_only_after);
    assert!(options.split(',').any(|option| option == "rw"), "{options}");
    assert!(options.contains("nosuid"), "{options}");
    assert!(options.contains("nodev"), "{options}");
    assert!(options.contains("noexec"), "{options}");
    assert_eq!(
        debugfs_cat(&image, 0, "/late"),
        b"written after the remount\n"
    );
    assert_not_attached(&image);
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn read_only_attach_rejects_writes() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.ext4");
    make_ext4(&image);
    let before = fs::read(&image).unwrap();
    let options = AttachOptions {
        read_only: true,
        ..AttachOptions::default()
    };

    let device = LoopDevice::attach(&image, &options).unwrap();
    assert!(device.is_read_only());
    // Linux lets a read-only block device be opened for writing and rejects the write.
    let device_write = OpenOptions::new()
        .write(true)
        .open(device.path())
        .and_then(|file| file.write_all_at(&[0xff; 512], 0));
    let read_write_mount = Mount::new(device.path(), "ext4", false);
    let mount = Mount::new(device.path(), "ext4", true).unwrap();
    let file_write = fs::write(mount.path().join("hello"), b"rejected");
    mount.close().unwrap();
    device.close().unwrap();

    assert_eq!(
        device_write.unwrap_err().raw_os_error(),
        Some(libc::EPERM),
        "writing to the device"
    );
    assert!(
        matches!(read_write_mount, Err(MountError::Mounting { .. })),
        "{read_write_mount:?}"
    );
    assert_eq!(file_write.unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert!(fs::read(&image).unwrap() == before, "image changed");
    assert_not_attached(&image);
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn dropping_device_before_mount_releases_both() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.ext4");
    make_ext4(&image);

    let device = LoopDevice::attach(&image, &AttachOptions::default()).unwrap();
    let mount = Mount::new(device.path(), "ext4", false).unwrap();
    let mount_dir = mount.path().to_owned();
    drop(device);
    // The autoclear flag keeps the device until the unmount.
    let still_attached = loop_devices_backed_by(&image).unwrap();
    fs::write(mount_dir.join("late"), b"still writable").unwrap();
    drop(mount);

    assert_eq!(still_attached.len(), 1);
    assert_eq!(debugfs_cat(&image, 0, "/late"), b"still writable");
    assert_not_attached(&image);
    assert_not_mounted_under(&mount_dir);
    assert!(!mount_dir.exists());
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn close_with_busy_mount_detaches_lazily_and_fails() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.ext4");
    make_ext4(&image);
    let device = LoopDevice::attach(&image, &AttachOptions::default()).unwrap();
    let mount = Mount::new(device.path(), "ext4", false).unwrap();
    let mount_dir = mount.path().to_owned();
    let open_file = File::create(mount_dir.join("busy")).unwrap();

    let result = mount.close();
    let mounted_after_close = mount_points().contains(&mount_dir);
    drop(open_file);
    device.close().unwrap();

    assert!(
        matches!(result, Err(MountError::Unmounting { .. })),
        "{result:?}"
    );
    assert!(!mounted_after_close);
    assert_not_attached(&image);
    assert!(!mount_dir.exists());
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn mount_at_nested_dir_and_placeholder() {
    let dir = tempfile::tempdir().unwrap();
    let root_image = dir.path().join("root.ext4");
    let boot_image = dir.path().join("boot.ext4");
    make_ext4(&root_image);
    make_ext4(&boot_image);

    let root_device = LoopDevice::attach(&root_image, &AttachOptions::default()).unwrap();
    let root = Mount::new(root_device.path(), "ext4", false).unwrap();
    let boot_dir = root.path().join("boot");
    fs::create_dir(&boot_dir).unwrap();
    let boot_device = LoopDevice::attach(&boot_image, &AttachOptions::default()).unwrap();
    let boot = Mount::mount_at(boot_device.path(), "ext4", &boot_dir, false).unwrap();
    fs::write(boot_dir.join("grub.cfg"), b"boot partition\n").unwrap();
    boot.close().unwrap();
    boot_device.close().unwrap();

    let placeholder = Mount::placeholder(&boot_dir).unwrap();
    let blocked = fs::write(boot_dir.join("grub.cfg"), b"would hide under the mount");
    placeholder.close().unwrap();
    let boot_dir_kept = boot_dir.is_dir();
    let root_boot_entries = fs::read_dir(&boot_dir).unwrap().count();
    root.close().unwrap();
    root_device.close().unwrap();

    assert_eq!(blocked.unwrap_err().raw_os_error(), Some(libc::EROFS));
    assert!(boot_dir_kept);
    assert_eq!(root_boot_entries, 0);
    assert_eq!(
        debugfs_cat(&boot_image, 0, "/grub.cfg"),
        b"boot partition\n"
    );
    assert_not_attached(&root_image);
    assert_not_attached(&boot_image);
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn eight_threads_attaching_get_distinct_devices() {
    const THREADS: usize = 8;
    let dir = tempfile::tempdir().unwrap();
    let images: Vec<PathBuf> = (0..THREADS)
        .map(|index| {
            let image = dir.path().join(format!("disk{index}.raw"));
            File::create(&image).unwrap().set_len(1024 * 1024).unwrap();
            image
        })
        .collect();
    let barrier = Arc::new(Barrier::new(THREADS));

    let handles: Vec<_> = images
        .iter()
        .cloned()
        .map(|image| {
            let barrier = Arc::clone(&barrier);
            thread::spawn(move || {
                barrier.wait();
                LoopDevice::attach(&image, &AttachOptions::default()).unwrap()
            })
        })
        .collect();
    let devices: Vec<LoopDevice> = handles
        .into_iter()
        .map(|handle| handle.join().unwrap())
        .collect();
    let mut numbers: Vec<u32> = devices.iter().map(LoopDevice::number).collect();
    let backed: Vec<Vec<PathBuf>> = images
        .iter()
        .map(|image| loop_devices_backed_by(image).unwrap())
        .collect();
    for device in devices {
        device.close().unwrap();
    }

    numbers.sort_unstable();
    numbers.dedup();
    assert_eq!(numbers.len(), THREADS);
    for (image, devices) in images.iter().zip(&backed) {
        assert_eq!(devices.len(), 1, "{}", image.display());
    }
    for image in &images {
        assert_not_attached(image);
    }
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn mounting_wrong_fs_type_names_device_and_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("fs.ext4");
    make_ext4(&image);
    let device = LoopDevice::attach(&image, &AttachOptions::default()).unwrap();
    let device_path = device.path().to_str().unwrap().to_owned();

    let err = Mount::new(device.path(), "xfs", false).unwrap_err();
    device.close().unwrap();

    let message = err.to_string();
    assert!(message.contains(&device_path), "{message}");
    assert!(message.contains(image.to_str().unwrap()), "{message}");
    assert_not_attached(&image);
}
