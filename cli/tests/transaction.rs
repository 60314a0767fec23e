//! `guest-inject inject --transactional` on real images: a request that fails while
//! applying leaves the image byte-identical, a request that succeeds lands every change,
//! and an image that a running qemu uses is rejected before any work.
//!
//! The apply-time failure is real, not simulated: the image gets a directory `/locked`
//! with the ext4 immutable flag, which `debugfs` sets without mounting. Planning finds an
//! ordinary directory, so the request passes planning, and then the guest kernel (the
//! host's for localmount, the appliance's for guestfs) rejects creating the file in it.
//! The items before that file (key, password, network, metadata) are written first, so
//! without `--transactional` the image is left half changed, as the control test shows.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use testkit::images::{self, Ext4Reader, TestImage};

/// The ext4 inode flag `EXT4_IMMUTABLE_FL`.
const IMMUTABLE_FLAG: u32 = 0x10;

/// The directory whose immutable flag makes the request fail while applying.
const LOCKED_DIR: &str = "/locked";

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXW5j1kzKpSYQ+3VYpwqPC6fQ6sl1ub+f4Gfa26V1zN ops@example";
const INTERFACES: &str = "auto eth0\niface eth0 inet dhcp\n";
const METADATA: &str = "{\"uuid\": \"0b5e2a1c\", \"name\": \"vm-1\"}\n";
const CONFIG: &str = "setting = 1\n";

/// Serialises the tests, because [`images::leak_check`] counts the helper processes of
/// every run this test process started, whichever test started it.
static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// A test's directory: the image, the host input files, and `tmp`, the runs' `TMPDIR`.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        let work = Self { dir };
        work.write("key.pub", SSH_KEY);
        work.write("password", "correct horse battery staple\n");
        work.write("interfaces", INTERFACES);
        work.write("meta.json", METADATA);
        work.write("x.cfg", CONFIG);
        work
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn tmp(&self) -> PathBuf {
        self.path().join("tmp")
    }

    fn write(&self, name: &str, contents: &str) {
        std::fs::write(self.path().join(name), contents).unwrap();
    }

    fn input(&self, name: &str) -> String {
        self.path().join(name).display().to_string()
    }
}

/// Runs `guest-inject inject` with every kind of item, the file going to `file_target`.
fn run_inject(
    work: &Workspace,
    image: &Path,
    backend: &str,
    transactional: bool,
    file_target: &str,
) -> Output {
    let mut command = Command::new(env!("CARGO_BIN_EXE_guest-inject"));
    command
        .args(["inject", "--backend", backend, "--partition", "2"])
        .args(["--ssh-key", &work.input("key.pub")])
        .args(["--admin-password-file", &work.input("password")])
        .args(["--net", &work.input("interfaces")])
        .args(["--metadata", &work.input("meta.json")])
        .args(["--file", &format!("{file_target}={}", work.input("x.cfg"))])
        .arg(image)
        .env("TMPDIR", work.tmp())
        // A TMPDIR of its own would make libguestfs rebuild its appliance cache there.
        .env("LIBGUESTFS_CACHEDIR", "/var/tmp");
    if transactional {
        command.arg("--transactional");
    }
    command.output().expect("guest-inject runs")
}

fn sha256(path: &Path) -> String {
    let output = Command::new("sha256sum").arg(path).output().unwrap();
    assert!(output.status.success());
    let text = String::from_utf8(output.stdout).unwrap();
    text.split_whitespace().next().unwrap().to_owned()
}

/// Copies the tiny GPT raw image into the workspace and adds [`LOCKED_DIR`] with the
/// immutable flag, through `debugfs` on the root partition.
fn raw_image_with_locked_dir(work: &Workspace) -> TestImage {
    let image = images::tiny_gpt_raw()
        .unwrap()
        .fresh_copy(work.path())
        .unwrap();
    let offset = image.root_reader().unwrap().offset();
    let target = format!("{}?offset={offset}", image.path.display());

    debugfs_write(&target, &format!("mkdir {LOCKED_DIR}"));
    let flags = debugfs_flags(&target, LOCKED_DIR);
    debugfs_write(
        &target,
        &format!(
            "set_inode_field {LOCKED_DIR} flags {:#x}",
            flags | IMMUTABLE_FLAG
        ),
    );
    assert_eq!(debugfs_flags(&target, LOCKED_DIR), flags | IMMUTABLE_FLAG);
    image
}

/// Converts [`raw_image_with_locked_dir`] to qcow2 next to it.
fn qcow2_image_with_locked_dir(work: &Workspace) -> TestImage {
    let raw = raw_image_with_locked_dir(work);
    let path = work.path().join("locked.qcow2");
    let status = Command::new("qemu-img")
        .args(["convert", "-f", "raw", "-O", "qcow2"])
        .arg(&raw.path)
        .arg(&path)
        .status()
        .unwrap();
    assert!(status.success());
    std::fs::remove_file(&raw.path).unwrap();
    TestImage {
        path,
        format: vfs_core::image::DiskFormat::Qcow2,
        sidecar: None,
        ..raw
    }
}

fn debugfs_write(target: &str, request: &str) {
    let output = Command::new("debugfs")
        .args(["-w", "-R", request, target])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    // debugfs exits with 0 even when the command failed, so its errors are read from
    // stderr, after the version banner.
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| !line.starts_with("debugfs "))
        .collect();
    assert!(
        output.status.success() && errors.is_empty(),
        "debugfs {request}: {stderr}"
    );
}

/// Returns the inode flags of `path`, from the `Flags: 0x...` field of `debugfs stat`.
fn debugfs_flags(target: &str, path: &str) -> u32 {
    let output = Command::new("debugfs")
        .args(["-R", &format!("stat {path}"), target])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&output.stdout);
    let field = text
        .split("Flags: 0x")
        .nth(1)
        .unwrap_or_else(|| panic!("no Flags field for {path}: {text}"));
    let hex: String = field.chars().take_while(char::is_ascii_hexdigit).collect();
    u32::from_str_radix(&hex, 16).unwrap()
}

/// Checks that nothing stayed attached, running or in the runs' `TMPDIR`.
fn assert_nothing_left(work: &Workspace) {
    let leaks = images::leak_check(work.path()).unwrap();
    assert!(leaks.is_empty(), "{leaks}");
    let leftovers: Vec<PathBuf> = std::fs::read_dir(work.tmp())
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    assert!(leftovers.is_empty(), "left in TMPDIR: {leftovers:?}");
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).into_owned()
}

/// Runs a request that fails while applying with `--transactional` and checks that the
/// image is byte-identical afterwards.
fn check_apply_failure_keeps_image(work: &Workspace, image: &TestImage, backend: &str) {
    let before = sha256(&image.path);

    let output = run_inject(work, &image.path, backend, true, "/locked/x.cfg");
    let text = stderr(&output);

    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("failed"), "{text}");
    assert!(text.contains("/locked/x.cfg"), "{text}");
    assert!(text.contains("unchanged"), "{text}");
    assert_eq!(sha256(&image.path), before, "{backend} changed the image");
    assert_nothing_left(work);
}

/// Checks with debugfs that every item of [`run_inject`] landed in the image.
fn check_every_change_landed(image: &TestImage, file_target: &str) {
    let reader = Ext4Reader::open(&image.path, image.root.partition).unwrap();

    let keys = reader.cat_string("/root/.ssh/authorized_keys").unwrap();
    assert!(keys.contains(SSH_KEY), "authorized_keys: {keys}");
    let shadow = reader.cat_string("/etc/shadow").unwrap();
    let root = shadow
        .lines()
        .find(|line| line.starts_with("root:"))
        .unwrap();
    assert!(
        root.starts_with("root:$6$"),
        "root has no SHA-512 hash: {} bytes",
        root.len()
    );
    assert_eq!(
        reader.cat_string("/etc/network/interfaces").unwrap(),
        INTERFACES
    );
    let metadata = reader.cat_string("/meta.js").unwrap();
    assert!(metadata.contains("0b5e2a1c"), "/meta.js: {metadata}");
    assert_eq!(reader.cat_string(file_target).unwrap(), CONFIG);
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn apply_failure_without_transaction_changes_image() {
    let _serial = serial();
    let work = Workspace::new();
    let image = raw_image_with_locked_dir(&work);
    let before = sha256(&image.path);

    let output = run_inject(&work, &image.path, "localmount", false, "/locked/x.cfg");
    let text = stderr(&output);

    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("/locked/x.cfg"), "{text}");
    assert_ne!(sha256(&image.path), before);
    let reader = image.root_reader().unwrap();
    let keys = reader.cat_string("/root/.ssh/authorized_keys").unwrap();
    assert!(
        keys.contains(SSH_KEY),
        "the key before the failure was not written"
    );
    assert!(!reader.exists("/locked/x.cfg").unwrap());
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn apply_failure_leaves_raw_image_identical() {
    let _serial = serial();
    let work = Workspace::new();
    let image = raw_image_with_locked_dir(&work);

    check_apply_failure_keeps_image(&work, &image, "localmount");
}

#[test]
#[ignore = "needs root, loop devices, qemu-nbd and nbdfuse; run by cargo xtask integration"]
fn apply_failure_leaves_qcow2_image_identical() {
    let _serial = serial();
    let work = Workspace::new();
    let image = qcow2_image_with_locked_dir(&work);

    check_apply_failure_keeps_image(&work, &image, "localmount");
}

#[test]
#[ignore = "needs a libguestfs appliance launch; run by cargo xtask integration"]
fn apply_failure_leaves_image_identical_with_guestfs() {
    let _serial = serial();
    let work = Workspace::new();
    let image = raw_image_with_locked_dir(&work);

    check_apply_failure_keeps_image(&work, &image, "guestfs");
}

#[test]
#[ignore = "needs root, loop devices, qemu-nbd and nbdfuse; run by cargo xtask integration"]
fn transactional_raw_request_lands_every_change() {
    let _serial = serial();
    let work = Workspace::new();
    let image = raw_image_with_locked_dir(&work);

    let output = run_inject(&work, &image.path, "localmount", true, "/opt/app/x.cfg");

    assert!(output.status.success(), "{}", stderr(&output));
    check_every_change_landed(&image, "/opt/app/x.cfg");
    assert_nothing_left(&work);
}

#[test]
#[ignore = "needs root, loop devices, qemu-nbd and nbdfuse; run by cargo xtask integration"]
fn transactional_qcow2_request_lands_every_change() {
    let _serial = serial();
    let work = Workspace::new();
    let image = qcow2_image_with_locked_dir(&work);

    let output = run_inject(&work, &image.path, "localmount", true, "/opt/app/x.cfg");

    assert!(output.status.success(), "{}", stderr(&output));
    check_every_change_landed(&image, "/opt/app/x.cfg");
    assert_nothing_left(&work);
}

#[test]
#[ignore = "needs a libguestfs appliance launch; run by cargo xtask integration"]
fn transactional_request_lands_with_guestfs() {
    let _serial = serial();
    let work = Workspace::new();
    let image = qcow2_image_with_locked_dir(&work);

    let output = run_inject(&work, &image.path, "guestfs", true, "/opt/app/x.cfg");

    assert!(output.status.success(), "{}", stderr(&output));
    check_every_change_landed(&image, "/opt/app/x.cfg");
    assert_nothing_left(&work);
}

/// A paused qemu virtual machine with the image as its writable disk, killed when dropped.
struct RunningVm {
    child: Child,
}

impl RunningVm {
    /// Starts the machine and waits until qemu holds the image's write lock.
    fn start(image: &Path) -> Self {
        let child = Command::new("qemu-system-x86_64")
            .args([
                "-S",
                "-machine",
                "accel=tcg",
                "-nodefaults",
                "-display",
                "none",
            ])
            .arg("-drive")
            .arg(format!("file={},format=raw,if=virtio", image.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("qemu-system-x86_64 starts");
        let vm = Self { child };

        let deadline = Instant::now() + Duration::from_secs(30);
        while vfs_core::imagelock::ImageLock::check(image, false).is_ok() {
            assert!(
                Instant::now() < deadline,
                "qemu never locked {}",
                image.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        vm
    }
}

impl Drop for RunningVm {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
#[ignore = "needs root and qemu-system-x86_64; run by cargo xtask integration"]
fn image_used_by_running_vm_is_rejected() {
    let _serial = serial();
    let work = Workspace::new();
    let image = raw_image_with_locked_dir(&work);
    let before = sha256(&image.path);
    let vm = RunningVm::start(&image.path);

    let output = run_inject(&work, &image.path, "localmount", true, "/opt/app/x.cfg");
    drop(vm);
    let text = stderr(&output);

    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("in use"), "{text}");
    assert!(text.contains(&image.path.display().to_string()), "{text}");
    assert_eq!(sha256(&image.path), before);
    assert_nothing_left(&work);
}

#[test]
#[ignore = "needs root and qemu-system-x86_64; run by cargo xtask integration"]
fn image_used_by_running_vm_is_rejected_by_each_backend() {
    let _serial = serial();
    let work = Workspace::new();
    let image = raw_image_with_locked_dir(&work);
    let before = sha256(&image.path);
    let vm = RunningVm::start(&image.path);

    let outputs: Vec<(&str, Output)> = ["guestfs", "localmount"]
        .into_iter()
        .map(|backend| {
            (
                backend,
                run_inject(&work, &image.path, backend, false, "/opt/app/x.cfg"),
            )
        })
        .collect();
    drop(vm);

    for (backend, output) in &outputs {
        let text = stderr(output);
        assert_eq!(output.status.code(), Some(1), "{backend}: {text}");
        assert!(text.contains("in use"), "{backend}: {text}");
        assert!(
            text.contains(&image.path.display().to_string()),
            "{backend}: {text}"
        );
    }
    assert_eq!(sha256(&image.path), before);
    assert_nothing_left(&work);
}
