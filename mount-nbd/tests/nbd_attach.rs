//! Serving and attaching real raw and qcow2 images with `qemu-nbd` and `nbdfuse` (or the
//! kernel NBD client where there is one), with loop devices and mounts on top, checked
//! with `debugfs` and for leftover processes, mounts, loop devices and directories.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use mount_loop::{loop_devices_backed_by, AttachOptions, LoopDevice, Mount};
use mount_nbd::{
    query_export_size, AttachedExport, NbdAttachment, NbdError, NbdOptions, NbdServer,
};
use vfs_core::image::DiskFormat;

/// Size of each test filesystem.
const FS_BYTES: u64 = 8 * 1024 * 1024;

/// Where the partition starts in the partitioned test disk: sector 2048, as sfdisk aligns
/// it.
const PARTITION_OFFSET: u64 = 2048 * 512;

/// Size of the partitioned test disk: the partition plus 1 MiB on each side.
const DISK_BYTES: u64 = PARTITION_OFFSET + FS_BYTES + 1024 * 1024;

/// Set in the environment of the child process that `sigkill_leaves_no_helpers` starts.
const SIGKILL_CHILD_ENV: &str = "MOUNT_NBD_TEST_SIGKILL_IMAGE";

fn run(program: &str, args: &[&str]) -> Vec<u8> {
    let output = Command::new(program).args(args).output().unwrap();
    assert!(
        output.status.success(),
        "{program} {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    output.stdout
}

fn make_ext4(path: &Path) {
    File::create(path).unwrap().set_len(FS_BYTES).unwrap();
    run("mkfs.ext4", &["-q", "-F", path.to_str().unwrap()]);
}

/// Creates a raw disk with an MBR and one ext4 partition at `PARTITION_OFFSET`.
fn make_partitioned_disk(path: &Path, scratch: &Path) {
    File::create(path).unwrap().set_len(DISK_BYTES).unwrap();
    let mut sfdisk = Command::new("sfdisk")
        .args(["--quiet", path.to_str().unwrap()])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
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

fn convert(from: &Path, from_format: &str, to: &Path, to_format: &str) {
    run(
        "qemu-img",
        &[
            "convert",
            "-f",
            from_format,
            "-O",
            to_format,
            from.to_str().unwrap(),
            to.to_str().unwrap(),
        ],
    );
}

fn debugfs_cat(image: &Path, offset: u64, guest_path: &str) -> Vec<u8> {
    let spec = format!("{}?offset={offset}", image.display());
    run("debugfs", &["-R", &format!("cat {guest_path}"), &spec])
}

/// Returns the mount points in `/proc/self/mountinfo`, with octal escapes decoded.
fn mount_points() -> Vec<PathBuf> {
    fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .map(|line| {
            let field = line.split(' ').nth(4).unwrap();
            PathBuf::from(field.replace("\\040", " ").replace("\\134", "\\"))
        })
        .collect()
}

/// Returns the command lines of all processes that mention `needle` in an argument.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in fs::read_dir("/proc").unwrap() {
        let entry = entry.unwrap();
        if !entry
            .file_name()
            .to_string_lossy()
            .bytes()
            .all(|b| b.is_ascii_digit())
        {
            continue;
        }
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

/// Returns the pids of processes that mention `needle` in an argument.
fn pids_mentioning(needle: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap() {
        let entry = entry.unwrap();
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let Ok(cmdline) = fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmdline).contains(needle) {
            pids.push(pid);
        }
    }
    pids
}

/// Returns those of `pids` that still exist, zombies included: a helper that was stopped
/// but not reaped stays in /proc until its parent waits for it.
fn still_existing(pids: &[u32]) -> Vec<u32> {
    pids.iter()
        .copied()
        .filter(|pid| Path::new(&format!("/proc/{pid}")).exists())
        .collect()
}

/// Checks that nothing is left of `attachment` of `image` after it was closed.
fn assert_nothing_left(image: &Path, attachment: &Leftovers) {
    if let Some(socket_dir) = &attachment.socket_dir {
        assert!(
            !socket_dir.exists(),
            "{} still exists",
            socket_dir.display()
        );
    }
    let unreaped = still_existing(&attachment.helper_pids);
    assert!(unreaped.is_empty(), "helpers not reaped: {unreaped:?}");
    assert_no_helpers_or_mounts(image, &attachment.export);
}

/// What an attachment made on the host, recorded before closing it.
struct Leftovers {
    export: PathBuf,
    socket_dir: Option<PathBuf>,
    helper_pids: Vec<u32>,
}

impl Leftovers {
    fn of(attachment: &NbdAttachment) -> Self {
        let export = attachment.path().to_owned();
        let mut helper_pids = pids_mentioning(attachment.image().to_str().unwrap());
        helper_pids.extend(pids_mentioning(export.parent().unwrap().to_str().unwrap()));
        assert!(!helper_pids.is_empty(), "no helper process found");
        Self {
            export,
            socket_dir: attachment
                .socket()
                .map(|socket| socket.parent().unwrap().to_owned()),
            helper_pids,
        }
    }
}

/// Checks that no helper, mount or private FUSE directory is left of an attachment of
/// `image` whose FUSE file or device was `export`.
fn assert_no_helpers_or_mounts(image: &Path, export: &Path) {
    let image_text = image.to_str().unwrap();
    let helpers = processes_mentioning(image_text);
    assert!(helpers.is_empty(), "helpers still running: {helpers:?}");
    let export_dir = export.parent().unwrap();
    let fuse_helpers = processes_mentioning(export_dir.to_str().unwrap());
    assert!(
        fuse_helpers.is_empty(),
        "nbdfuse still running: {fuse_helpers:?}"
    );
    let mounted: Vec<PathBuf> = mount_points()
        .into_iter()
        .filter(|point| point.starts_with(export_dir.parent().unwrap()))
        .collect();
    assert!(mounted.is_empty(), "still mounted: {mounted:?}");
    if let AttachedExport::FuseFile(_) = fuse_or_device(export) {
        let private_dir = export_dir.parent().unwrap();
        assert!(
            !private_dir.exists(),
            "{} still exists",
            private_dir.display()
        );
    }
}

fn fuse_or_device(export: &Path) -> AttachedExport {
    if export.starts_with("/dev") {
        AttachedExport::BlockDevice(export.to_owned())
    } else {
        AttachedExport::FuseFile(export.to_owned())
    }
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn qcow2_partition_write_lands_in_image() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("disk.raw");
    let qcow2 = dir.path().join("disk.qcow2");
    make_partitioned_disk(&raw, dir.path());
    convert(&raw, "raw", &qcow2, "qcow2");

    let attachment = NbdAttachment::attach(&qcow2, &NbdOptions::new(DiskFormat::Qcow2)).unwrap();
    let leftovers = Leftovers::of(&attachment);
    let export = leftovers.export.clone();
    let size = attachment.size();
    let options = AttachOptions {
        offset: PARTITION_OFFSET,
        size_limit: Some(FS_BYTES),
        read_only: false,
    };
    let device = LoopDevice::attach(&export, &options).unwrap();
    let mount = Mount::new(device.path(), "ext4", false).unwrap();
    fs::create_dir(mount.path().join("root")).unwrap();
    fs::write(mount.path().join("root/note"), b"through qemu-nbd\n").unwrap();
    mount.close().unwrap();
    device.close().unwrap();
    attachment.close().unwrap();

    assert_eq!(size, DISK_BYTES);
    let back = dir.path().join("back.raw");
    convert(&qcow2, "qcow2", &back, "raw");
    assert_eq!(
        debugfs_cat(&back, PARTITION_OFFSET, "/root/note"),
        b"through qemu-nbd\n"
    );
    assert!(loop_devices_backed_by(&qcow2).unwrap().is_empty());
    assert_nothing_left(&qcow2, &leftovers);
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn attach_on_this_host_uses_fuse_file_or_device() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("fs.ext4");
    make_ext4(&raw);
    let kernel_has_nbd = Path::new("/sys/block/nbd0").exists();

    let attachment = NbdAttachment::attach(&raw, &NbdOptions::new(DiskFormat::Raw)).unwrap();
    let leftovers = Leftovers::of(&attachment);
    let export = attachment.export().clone();
    attachment.close().unwrap();

    match export {
        AttachedExport::BlockDevice(ref path) => {
            assert!(kernel_has_nbd, "block device {path:?} without kernel NBD")
        }
        AttachedExport::FuseFile(ref path) => {
            assert!(!kernel_has_nbd, "FUSE file {path:?} despite kernel NBD");
            assert_eq!(path.file_name().unwrap(), "disk");
        }
    }
    assert_nothing_left(&raw, &leftovers);
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn raw_image_write_through_nbd() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("fs.ext4");
    make_ext4(&raw);

    let attachment = NbdAttachment::attach(&raw, &NbdOptions::new(DiskFormat::Raw)).unwrap();
    let leftovers = Leftovers::of(&attachment);
    let export = leftovers.export.clone();
    let device = LoopDevice::attach(&export, &AttachOptions::default()).unwrap();
    let mount = Mount::new(device.path(), "ext4", false).unwrap();
    fs::write(mount.path().join("hello"), b"raw over nbd\n").unwrap();
    mount.close().unwrap();
    device.close().unwrap();
    attachment.close().unwrap();

    assert_eq!(debugfs_cat(&raw, 0, "/hello"), b"raw over nbd\n");
    assert_nothing_left(&raw, &leftovers);
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn read_only_attachment_rejects_writes() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("fs.ext4");
    let qcow2 = dir.path().join("fs.qcow2");
    make_ext4(&raw);
    let seed = dir.path().join("seed");
    fs::write(&seed, b"original\n").unwrap();
    run(
        "debugfs",
        &[
            "-w",
            "-R",
            &format!("write {} seed", seed.display()),
            raw.to_str().unwrap(),
        ],
    );
    convert(&raw, "raw", &qcow2, "qcow2");
    let before = fs::read(&qcow2).unwrap();
    let options = NbdOptions {
        read_only: true,
        ..NbdOptions::new(DiskFormat::Qcow2)
    };

    let attachment = NbdAttachment::attach(&qcow2, &options).unwrap();
    let leftovers = Leftovers::of(&attachment);
    let export = leftovers.export.clone();
    let writable_open = OpenOptions::new().write(true).open(&export);
    let writable_loop = LoopDevice::attach(&export, &AttachOptions::default());
    let read_only = AttachOptions {
        read_only: true,
        ..AttachOptions::default()
    };
    let device = LoopDevice::attach(&export, &read_only).unwrap();
    let mount = Mount::new(device.path(), "ext4", true).unwrap();
    let contents = fs::read(mount.path().join("seed")).unwrap();
    mount.close().unwrap();
    device.close().unwrap();
    attachment.close().unwrap();

    assert!(
        writable_open.is_err(),
        "opened the read-only export for writing"
    );
    assert!(writable_loop.is_err(), "attached a writable loop device");
    assert_eq!(contents, b"original\n");
    assert!(fs::read(&qcow2).unwrap() == before, "image changed");
    assert_nothing_left(&qcow2, &leftovers);
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn server_answers_handshakes_until_closed() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("fs.ext4");
    make_ext4(&raw);

    let server = NbdServer::start(&raw, &NbdOptions::new(DiskFormat::Raw)).unwrap();
    let pid = server.pid();
    let socket = server.socket().to_owned();
    let socket_dir = socket.parent().unwrap().to_owned();
    let socket_mode = fs::metadata(&socket_dir).unwrap().permissions();
    // A second and third client after the readiness check: the server is persistent.
    let first = query_export_size(&mut UnixStream::connect(&socket).unwrap()).unwrap();
    let second = query_export_size(&mut UnixStream::connect(&socket).unwrap()).unwrap();
    let export_size = server.export_size();
    server.close().unwrap();

    use std::os::unix::fs::PermissionsExt;
    assert_eq!(socket_mode.mode() & 0o777, 0o700);
    assert_eq!(export_size, FS_BYTES);
    assert_eq!(first, FS_BYTES);
    assert_eq!(second, FS_BYTES);
    assert!(
        !socket_dir.exists(),
        "{} still exists",
        socket_dir.display()
    );
    assert!(processes_mentioning(raw.to_str().unwrap()).is_empty());
    assert!(
        still_existing(&[pid]).is_empty(),
        "qemu-nbd {pid} not reaped"
    );
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn corrupt_qcow2_reports_qemu_nbd_output() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("broken.qcow2");
    // A qcow2 magic followed by garbage: qemu-nbd rejects the header.
    let mut bytes = b"QFI\xfb".to_vec();
    bytes.extend_from_slice(&[0xff; 4092]);
    fs::write(&image, bytes).unwrap();

    let err = NbdAttachment::attach(&image, &NbdOptions::new(DiskFormat::Qcow2)).unwrap_err();

    let NbdError::ExitedEarly {
        ref program,
        ref stderr,
        ..
    } = err
    else {
        panic!("expected ExitedEarly, got {err:?}");
    };
    assert_eq!(program, "qemu-nbd");
    assert!(stderr.contains("qemu-nbd"), "{stderr}");
    assert!(err.to_string().contains(image.to_str().unwrap()), "{err}");
    assert!(processes_mentioning(image.to_str().unwrap()).is_empty());
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn missing_image_fails_before_starting_helpers() {
    let err = NbdAttachment::attach(
        Path::new("/nonexistent/guest-inject/disk.qcow2"),
        &NbdOptions::new(DiskFormat::Qcow2),
    )
    .unwrap_err();

    assert!(matches!(err, NbdError::ResolvingImage { .. }), "{err:?}");
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn close_with_loop_still_attached_fails_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("fs.ext4");
    make_ext4(&raw);
    let options = NbdOptions {
        stop_timeout: Duration::from_secs(1),
        ..NbdOptions::new(DiskFormat::Raw)
    };
    let attachment = NbdAttachment::attach(&raw, &options).unwrap();
    let leftovers = Leftovers::of(&attachment);
    let export = leftovers.export.clone();
    let device = LoopDevice::attach(&export, &AttachOptions::default()).unwrap();

    // Wrong order: the loop device still uses the FUSE file.
    let result = attachment.close();
    device.close().unwrap();

    match fuse_or_device(&export) {
        AttachedExport::FuseFile(_) => assert!(result.is_err(), "close succeeded while busy"),
        AttachedExport::BlockDevice(_) => {}
    }
    wait_until(|| processes_mentioning(raw.to_str().unwrap()).is_empty());
    assert_nothing_left(&raw, &leftovers);
}

#[test]
#[ignore = "needs root, loop devices and qemu-nbd; run by cargo xtask integration"]
fn sigkill_leaves_no_helpers() {
    if let Ok(image) = std::env::var(SIGKILL_CHILD_ENV) {
        // The child role: attach, report, and wait to be killed.
        let attachment =
            NbdAttachment::attach(Path::new(&image), &NbdOptions::new(DiskFormat::Raw)).unwrap();
        let socket_dir = attachment
            .socket()
            .map(|socket| socket.parent().unwrap().to_owned());
        println!("SOCKET_DIR {}", socket_dir.unwrap_or_default().display());
        println!("ATTACHED {}", attachment.path().display());
        std::io::stdout().flush().unwrap();
        loop {
            thread::sleep(Duration::from_secs(60));
        }
    }

    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("fs.ext4");
    make_ext4(&raw);
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "sigkill_leaves_no_helpers",
            "--ignored",
            "--nocapture",
        ])
        .env(SIGKILL_CHILD_ENV, &raw)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let mut socket_dir = PathBuf::new();
    let export = loop {
        let line = lines
            .next()
            .expect("child exited before attaching")
            .unwrap();
        if let Some(path) = line.strip_prefix("SOCKET_DIR ") {
            socket_dir = PathBuf::from(path);
        }
        if let Some(path) = line.strip_prefix("ATTACHED ") {
            break PathBuf::from(path);
        }
    };
    let helpers_while_running = processes_mentioning(raw.to_str().unwrap()).len();
    child.kill().unwrap();
    child.wait().unwrap();

    wait_until(|| {
        processes_mentioning(raw.to_str().unwrap()).is_empty()
            && processes_mentioning(export.parent().unwrap().to_str().unwrap()).is_empty()
            && !mount_points()
                .iter()
                .any(|point| export.starts_with(point) && point != Path::new("/"))
    });
    let fuse_helpers = processes_mentioning(export.parent().unwrap().to_str().unwrap());
    let mounted = mount_points()
        .into_iter()
        .any(|point| point == export.parent().unwrap());
    // No process is left to remove the private directories after SIGKILL. qemu-nbd
    // removes its socket when SIGTERM stops it, so the directories are empty.
    let socket_left = socket_dir.join("nbd.sock").exists();
    if let AttachedExport::FuseFile(_) = fuse_or_device(&export) {
        let private_dir = export.parent().unwrap().parent().unwrap();
        fs::remove_dir(export.parent().unwrap()).unwrap();
        fs::remove_dir(private_dir).unwrap();
        fs::remove_dir(&socket_dir).unwrap();
    }

    assert!(
        helpers_while_running >= 1,
        "no qemu-nbd seen while attached"
    );
    assert!(processes_mentioning(raw.to_str().unwrap()).is_empty());
    assert!(fuse_helpers.is_empty(), "{fuse_helpers:?}");
    assert!(!mounted, "FUSE mount left after SIGKILL");
    assert!(!socket_left, "qemu-nbd did not remove its socket");
}

/// Polls `condition` for up to ten seconds.
fn wait_until(mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !condition() && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}
