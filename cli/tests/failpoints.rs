//! Each step of opening and closing an image, failed in turn through the failpoints that
//! the `failpoints` feature compiles in. Every failed run must exit with status 1 and name
//! the failed step on stderr. It must leave nothing attached (loop devices, mounts,
//! `qemu-nbd`, `nbdfuse`, qemu) and none of its temporary directories behind.
//!
//! Each run gets a `TMPDIR` inside the test's own directory, so every mount point, socket
//! and FUSE directory it creates is found by [`images::leak_check`] and by listing that
//! directory. The runs unshare their mount namespace, so a mount left inside a run's
//! namespace vanishes with the process; its loop device and helper processes do not, and
//! those are what the checks below find.
#![cfg(feature = "failpoints")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use testkit::hostile::sha256;
use testkit::images::{self, Leaks, TestImage};

/// Serialises the tests of this file: they count loop devices and helper processes.
static SERIAL: Mutex<()> = Mutex::new(());

/// How long the kernel and the helpers get to release everything after a run exits.
/// Released devices usually disappear at once. The wait covers autoclear and helpers that
/// exit after their FUSE mount goes.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a waiting test looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXW5j1kzKpSYQ+3VYpwqPC6fQ6sl1ub+f4Gfa26V1zN ops@example";

/// A test's directory: the image copy, the key file, and `tmp`, the run's `TMPDIR`.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        std::fs::write(dir.path().join("key.pub"), SSH_KEY).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn tmp(&self) -> PathBuf {
        self.path().join("tmp")
    }
}

/// What a run with one failpoint set returned, and the state it left.
struct FailedRun {
    output: Output,
    stderr: String,
    image_before: String,
    image_after: String,
    leaks: Leaks,
    /// Entries whose name starts with `guest-inject` left in the run's `TMPDIR`.
    temp_dirs: Vec<PathBuf>,
}

/// Injects an SSH key into a fresh copy of `image` with `backend`, with the failpoint
/// `point` set to fail, and records what the run left.
fn run_with_failpoint(image: &TestImage, backend: &str, point: &str) -> FailedRun {
    let work = Workspace::new();
    let image = image.fresh_copy(work.path()).unwrap();
    let image_before = sha256(&image.path).unwrap();

    let output = Command::new(env!("CARGO_BIN_EXE_guest-inject"))
        .env("TMPDIR", work.tmp())
        // libguestfs would otherwise put its appliance cache in TMPDIR and rebuild it.
        .env("LIBGUESTFS_CACHEDIR", "/var/tmp")
        .env("FAILPOINTS", format!("{point}=return"))
        .args(["inject", "--backend", backend, "--ssh-key"])
        .arg(work.path().join("key.pub"))
        .arg(&image.path)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
    eprintln!("{point}: {stderr}");

    let leaks = wait_for_release(work.path());
    let temp_dirs = guest_inject_entries(&work.tmp());
    let image_after = sha256(&image.path).unwrap();
    FailedRun {
        output,
        stderr,
        image_before,
        image_after,
        leaks,
        temp_dirs,
    }
}

/// Waits until nothing under `dir` is attached, mounted or served, and returns what was
/// still there at the deadline.
fn wait_for_release(dir: &Path) -> Leaks {
    let deadline = Instant::now() + RELEASE_TIMEOUT;
    loop {
        let leaks = images::leak_check(dir).unwrap();
        if leaks.is_empty() || Instant::now() >= deadline {
            return leaks;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Lists the entries of `tmp` that guest-inject creates: mount directories, NBD socket
/// directories and FUSE directories, all named `guest-inject-*`.
fn guest_inject_entries(tmp: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .filter(|path| {
            path.file_name()
                .is_some_and(|name| name.to_string_lossy().starts_with("guest-inject"))
        })
        .collect()
}

/// Checks the outcome every failed run must have: status 1, `step` on stderr, nothing
/// attached and no temporary directory left.
fn assert_failed_cleanly(run: &FailedRun, step: &str) {
    assert_eq!(run.output.status.code(), Some(1), "{}", run.stderr);
    assert!(
        run.stderr.contains(step),
        "stderr does not name {step:?}: {}",
        run.stderr
    );
    assert!(run.leaks.loop_devices.is_empty(), "{}", run.leaks);
    assert!(run.leaks.mounts.is_empty(), "{}", run.leaks);
    assert!(run.leaks.processes.is_empty(), "{}", run.leaks);
    assert!(run.temp_dirs.is_empty(), "{:?}", run.temp_dirs);
}

/// Checks that a run that failed before writing left the image byte for byte as it was.
fn assert_image_unchanged(run: &FailedRun) {
    assert_eq!(run.image_before, run.image_after, "{}", run.stderr);
}

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poison| poison.into_inner())
}

fn raw() -> TestImage {
    images::tiny_gpt_raw().unwrap()
}

fn qcow2() -> TestImage {
    images::tiny_gpt_qcow2().unwrap()
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_lock_names_locking() {
    let _serial = serial();
    let run = run_with_failpoint(&raw(), "localmount", "localmount::lock");
    assert_failed_cleanly(&run, "locking image");
    assert_image_unchanged(&run);
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_loop_attach_names_attaching() {
    let _serial = serial();
    let run = run_with_failpoint(&raw(), "localmount", "loop::attach");
    assert_failed_cleanly(&run, "to a loop device failed");
    assert_image_unchanged(&run);
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_mount_names_mounting() {
    let _serial = serial();
    let run = run_with_failpoint(&raw(), "localmount", "loop::mount");
    assert_failed_cleanly(&run, "mounting /dev/loop");
    assert_image_unchanged(&run);
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_remount_names_remounting() {
    let _serial = serial();
    let run = run_with_failpoint(&raw(), "localmount", "loop::remount");
    assert_failed_cleanly(&run, "remounting");
    assert_image_unchanged(&run);
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_write_names_writing() {
    let _serial = serial();
    let run = run_with_failpoint(&raw(), "localmount", "localmount::write");
    assert_failed_cleanly(&run, "writing");
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_unmount_names_unmounting() {
    let _serial = serial();
    let run = run_with_failpoint(&raw(), "localmount", "loop::unmount");
    assert_failed_cleanly(&run, "unmounting");
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_detach_names_detaching() {
    let _serial = serial();
    let run = run_with_failpoint(&raw(), "localmount", "loop::detach");
    assert_failed_cleanly(&run, "detaching loop device");
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_qemu_nbd_start_names_qemu_nbd() {
    let _serial = serial();
    let run = run_with_failpoint(&qcow2(), "localmount", "nbd::serve");
    assert_failed_cleanly(&run, "starting qemu-nbd");
    assert_image_unchanged(&run);
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_nbdfuse_start_names_nbdfuse() {
    let _serial = serial();
    let run = run_with_failpoint(&qcow2(), "localmount", "nbd::fuse");
    assert_failed_cleanly(&run, "starting nbdfuse");
    assert_image_unchanged(&run);
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_qcow2_detach_stops_helpers() {
    let _serial = serial();
    let run = run_with_failpoint(&qcow2(), "localmount", "loop::detach");
    assert_failed_cleanly(&run, "detaching loop device");
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_appliance_launch_names_launching() {
    let _serial = serial();
    let run = run_with_failpoint(&qcow2(), "guestfs", "guestfs::launch");
    assert_failed_cleanly(&run, "launching the libguestfs appliance");
    assert_image_unchanged(&run);
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_appliance_mount_names_mounting() {
    let _serial = serial();
    let run = run_with_failpoint(&qcow2(), "guestfs", "guestfs::mount");
    assert_failed_cleanly(&run, "mounting /dev/sda");
    assert_image_unchanged(&run);
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_appliance_write_names_writing() {
    let _serial = serial();
    let run = run_with_failpoint(&qcow2(), "guestfs", "guestfs::write");
    assert_failed_cleanly(&run, "write_file /root/.ssh/authorized_keys failed");
}

#[test]
#[ignore = "needs root, loop devices and libguestfs; run by cargo xtask integration"]
fn failed_appliance_shutdown_names_shutdown() {
    let _serial = serial();
    let run = run_with_failpoint(&qcow2(), "guestfs", "guestfs::shutdown");
    assert_failed_cleanly(&run, "shutting down the appliance");
}
