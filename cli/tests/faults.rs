//! What `guest-inject` leaves behind when it is killed mid-write, and how it behaves when
//! many runs share the host at once.
//!
//! Each test gives its runs a `TMPDIR` inside the test's own directory, so every mount
//! point, socket and overlay they create is found by [`images::leak_check`] and by listing
//! that directory, and nothing of other processes on the host is counted.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::thread;
use std::time::{Duration, Instant};

use testkit::images::{self, Ext4Reader, Leaks, TestImage};

/// Serialises the tests of this file: they count loop devices and helper processes, and
/// the load tests would slow the killed run past its deadlines.
static SERIAL: Mutex<()> = Mutex::new(());

/// The size of the file a killed run writes: large enough that copying it takes seconds.
const PAYLOAD_BYTES: usize = 512 * 1024 * 1024;

/// How much of the payload the run must have read before it is killed, so that the kill
/// lands in the middle of the copy into the guest.
const KILL_AFTER_READ_BYTES: u64 = 64 * 1024 * 1024;

/// How long the kernel and the helpers get to release everything after the kill.
const RELEASE_TIMEOUT: Duration = Duration::from_secs(10);

/// How often a waiting test looks again.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXW5j1kzKpSYQ+3VYpwqPC6fQ6sl1ub+f4Gfa26V1zN ops@example";

/// A test's directory: the image copies, the host input files, and `tmp`, the `TMPDIR`
/// of every run.
struct Workspace {
    dir: tempfile::TempDir,
}

impl Workspace {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tmp")).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn tmp(&self) -> PathBuf {
        self.path().join("tmp")
    }

    fn write(&self, name: &str, contents: &[u8]) -> PathBuf {
        let path = self.path().join(name);
        std::fs::write(&path, contents).unwrap();
        path
    }
}

/// Returns a `guest-inject` command whose temporary files go to `tmp`. libguestfs would
/// also put its appliance cache there and rebuild it, so the cache stays in `/var/tmp`.
fn guest_inject(tmp: &Path) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_guest-inject"));
    command
        .env("TMPDIR", tmp)
        .env("LIBGUESTFS_CACHEDIR", "/var/tmp");
    command
}

/// Writes `bytes` random bytes to `path`, so that no layer can compress or skip them.
fn write_random_file(path: &Path, bytes: usize) {
    let mut random = File::open("/dev/urandom").unwrap();
    let mut file = File::create(path).unwrap();
    let mut buffer = vec![0u8; 4 * 1024 * 1024];
    let mut left = bytes;
    while left > 0 {
        let chunk = left.min(buffer.len());
        random.read_exact(&mut buffer[..chunk]).unwrap();
        file.write_all(&buffer[..chunk]).unwrap();
        left -= chunk;
    }
    file.sync_all().unwrap();
}

/// Returns how many bytes the process has read through `read` calls (`rchar` in
/// `/proc/PID/io`), or `None` once it is gone.
fn bytes_read(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/io")).ok()?;
    text.lines()
        .find_map(|line| line.strip_prefix("rchar: "))
        .and_then(|value| value.trim().parse().ok())
}

/// Polls `condition` until it is true or `timeout` passes, and returns whether it became
/// true.
fn wait_for(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits until nothing under `dir` is attached, mounted or served, and returns what was
/// still there at the deadline.
fn wait_for_release(dir: &Path) -> Leaks {
    let mut leaks = Leaks::default();
    wait_for(RELEASE_TIMEOUT, || {
        leaks = images::leak_check(dir).unwrap();
        leaks.is_empty()
    });
    leaks
}

/// Lists everything a run left in its `TMPDIR`, recursively, each entry with whether it
/// is a directory.
fn tmp_leftovers(tmp: &Path) -> Vec<(PathBuf, bool)> {
    let mut leftovers = Vec::new();
    let mut pending = vec![tmp.to_owned()];
    while let Some(dir) = pending.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            let is_dir = std::fs::symlink_metadata(&path).unwrap().is_dir();
            if is_dir {
                pending.push(path.clone());
            }
            leftovers.push((path, is_dir));
        }
    }
    leftovers.sort();
    leftovers
}

/// Lists the names in a guest directory with `debugfs ls`, independently of the backends.
fn guest_dir_names(image: &TestImage, dir: &str) -> Vec<String> {
    let reader = image.root_reader().unwrap();
    let raw = if image.format == vfs_core::image::DiskFormat::Raw {
        image.path.clone()
    } else {
        let converted = image.path.with_extension("listing.raw");
        let status = Command::new("qemu-img")
            .args(["convert", "-f", "qcow2", "-O", "raw"])
            .arg(&image.path)
            .arg(&converted)
            .status()
            .unwrap();
        assert!(status.success());
        converted
    };
    let output = Command::new("debugfs")
        .args(["-R", &format!("ls {dir}")])
        .arg(format!("{}?offset={}", raw.display(), reader.offset()))
        .output()
        .unwrap();
    if raw != image.path {
        std::fs::remove_file(&raw).unwrap();
    }
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .filter(|word| !word.starts_with('(') && word.parse::<u64>().is_err())
        .map(str::to_owned)
        .collect()
}

/// Starts a run that copies a large file into `image`, kills it with SIGKILL once it has
/// read [`KILL_AFTER_READ_BYTES`] of it, and returns its pid and how much it had read.
fn kill_mid_write(work: &Workspace, image: &TestImage) -> (u32, u64) {
    let payload = work.path().join("payload.bin");
    write_random_file(&payload, PAYLOAD_BYTES);
    let stderr = File::create(work.path().join("killed-run.stderr")).unwrap();

    let mut child: Child = guest_inject(&work.tmp())
        .args(["-v", "inject", "--backend", "localmount"])
        .arg("--file")
        .arg(format!("/opt/payload.bin={}", payload.display()))
        .arg(&image.path)
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap();
    let pid = child.id();

    let mut read = 0;
    let started = wait_for(Duration::from_secs(60), || {
        read = bytes_read(pid).unwrap_or(0);
        read >= KILL_AFTER_READ_BYTES
    });
    let still_running = child.try_wait().unwrap().is_none();
    child.kill().unwrap();
    child.wait().unwrap();

    let log = std::fs::read_to_string(work.path().join("killed-run.stderr")).unwrap();
    assert!(
        started,
        "the run never read {KILL_AFTER_READ_BYTES} bytes:\n{log}"
    );
    assert!(still_running, "the run ended before it was killed:\n{log}");
    assert!(
        (read as usize) < PAYLOAD_BYTES,
        "the whole payload was read before the kill"
    );
    (pid, read)
}

/// Runs a small request on `image` and checks that it lands.
fn run_after_kill(work: &Workspace, image: &TestImage) {
    let key = work.write("key.pub", SSH_KEY.as_bytes());
    let config = work.write("after.cfg", b"written after the kill\n");

    let output = guest_inject(&work.tmp())
        .args(["inject", "--backend", "localmount", "--ssh-key"])
        .arg(&key)
        .arg("--file")
        .arg(format!("/opt/after.cfg={}", config.display()))
        .arg(&image.path)
        .output()
        .unwrap();

    assert_success(&output, "the run after the kill");
    let reader = image.root_reader().unwrap();
    let keys = reader.cat_string("/root/.ssh/authorized_keys").unwrap();
    assert!(keys.contains(SSH_KEY), "authorized_keys: {keys}");
    assert_eq!(
        reader.cat("/opt/after.cfg").unwrap(),
        b"written after the kill\n"
    );
}

/// Returns the private directories in `tmp` whose names carry `pid`, such as
/// `guest-inject-mnt-<pid>-*`.
fn private_dirs_of(tmp: &Path, pid: u32) -> Vec<PathBuf> {
    let marker = format!("-{pid}-");
    std::fs::read_dir(tmp)
        .unwrap()
        .map(|entry| entry.unwrap())
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            name.starts_with("guest-inject-") && name.contains(&marker)
        })
        .map(|entry| entry.path())
        .collect()
}

fn assert_success(output: &Output, what: &str) {
    assert!(
        output.status.success(),
        "{what} failed ({}):\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Prints what a killed run left behind and checks that it is nothing but directories.
fn check_tmp_leftovers(work: &Workspace, image: &TestImage) {
    let leftovers = tmp_leftovers(&work.tmp());
    for (path, is_dir) in &leftovers {
        let kind = if *is_dir { "directory" } else { "file" };
        eprintln!("left in TMPDIR after the kill: {kind} {}", path.display());
    }
    let guest_leftovers: Vec<String> = guest_dir_names(image, "/opt")
        .into_iter()
        .filter(|name| name.starts_with(".guest-inject"))
        .collect();
    eprintln!("left in the guest's /opt after the kill: {guest_leftovers:?}");

    let files: Vec<_> = leftovers.iter().filter(|(_, is_dir)| !is_dir).collect();
    assert!(
        files.is_empty(),
        "the killed run left files in TMPDIR: {files:?}"
    );
}

#[test]
#[ignore = "needs root, loop devices and the 1 GiB gpt_raw image; run by cargo xtask integration"]
fn killed_raw_run_releases_loop_and_mount() {
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let work = Workspace::new();
    let image = images::gpt_raw().unwrap().fresh_copy(work.path()).unwrap();

    let (pid, read) = kill_mid_write(&work, &image);
    eprintln!("killed after reading {read} of {PAYLOAD_BYTES} bytes");
    let leaks = wait_for_release(work.path());

    assert!(leaks.loop_devices.is_empty(), "{leaks}");
    assert!(leaks.mounts.is_empty(), "{leaks}");
    assert!(leaks.processes.is_empty(), "{leaks}");
    check_tmp_leftovers(&work, &image);
    run_after_kill(&work, &image);
    let leaks = images::leak_check(work.path()).unwrap();
    assert!(leaks.is_empty(), "the run after the kill left {leaks}");
    let stale = private_dirs_of(&work.tmp(), pid);
    assert!(stale.is_empty(), "the run after the kill kept {stale:?}");
}

#[test]
#[ignore = "needs root, loop devices, qemu-nbd, nbdfuse and the 1 GiB gpt_qcow2 image; run by cargo xtask integration"]
fn killed_qcow2_run_releases_helpers() {
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let work = Workspace::new();
    let image = images::gpt_qcow2()
        .unwrap()
        .fresh_copy(work.path())
        .unwrap();

    let (pid, read) = kill_mid_write(&work, &image);
    eprintln!("killed after reading {read} of {PAYLOAD_BYTES} bytes");
    let leaks = wait_for_release(work.path());

    assert!(leaks.loop_devices.is_empty(), "{leaks}");
    assert!(leaks.mounts.is_empty(), "{leaks}");
    assert!(leaks.processes.is_empty(), "{leaks}");
    check_tmp_leftovers(&work, &image);
    run_after_kill(&work, &image);
    let leaks = images::leak_check(work.path()).unwrap();
    assert!(leaks.is_empty(), "the run after the kill left {leaks}");
    let stale = private_dirs_of(&work.tmp(), pid);
    assert!(stale.is_empty(), "the run after the kill kept {stale:?}");
}

/// One image of a load test and the instance name its run writes into it.
struct LoadRun {
    image: TestImage,
    instance: String,
    stderr_path: PathBuf,
}

/// Starts one run per image at once, each writing `/etc/instance-id` with its own name,
/// waits for all of them, and returns the runs with the time they took together.
fn run_at_once(
    work: &Workspace,
    sources: &[TestImage],
    backend: &str,
) -> (Vec<(LoadRun, Output)>, Duration) {
    let mut prepared = Vec::new();
    for (index, source) in sources.iter().enumerate() {
        let dir = work.path().join(format!("run-{index:02}"));
        std::fs::create_dir(&dir).unwrap();
        let image = source.fresh_copy(&dir).unwrap();
        let instance = format!("instance-{index:02}-{}\n", source.format);
        let input = dir.join("instance-id");
        std::fs::write(&input, &instance).unwrap();
        prepared.push((image, instance, input, dir));
    }

    let started = Instant::now();
    let mut runs = Vec::new();
    for (image, instance, input, dir) in prepared {
        let stderr_path = dir.join("stderr.log");
        let child = guest_inject(&work.tmp())
            .args(["inject", "--backend", backend, "--file"])
            .arg(format!("/etc/instance-id={}", input.display()))
            .arg(&image.path)
            .env("RUST_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(File::create(&stderr_path).unwrap())
            .spawn()
            .unwrap();
        let run = LoadRun {
            image,
            instance,
            stderr_path,
        };
        runs.push((run, child));
    }

    let mut finished = Vec::new();
    for (run, child) in runs {
        let mut output = child.wait_with_output().unwrap();
        output.stderr = std::fs::read(&run.stderr_path).unwrap();
        finished.push((run, output));
    }
    (finished, started.elapsed())
}

/// Returns the loop devices named in a run's `attached loop device` log lines.
fn attached_loop_devices(stderr: &[u8]) -> Vec<String> {
    let text = String::from_utf8_lossy(stderr);
    text.lines()
        .filter(|line| line.contains("attached loop device"))
        .filter_map(|line| {
            let start = line.find("/dev/loop")?;
            let digits: String = line[start + "/dev/loop".len()..]
                .chars()
                .take_while(char::is_ascii_digit)
                .collect();
            Some(format!("/dev/loop{digits}"))
        })
        .collect()
}

/// Checks that every run succeeded and that each image contains its own instance name,
/// which a loop device shared by two runs at once would break.
fn check_runs(runs: &[(LoadRun, Output)]) {
    for (run, output) in runs {
        assert_success(output, &format!("the run on {}", run.image.path.display()));
    }
    for (run, _) in runs {
        let reader = Ext4Reader::open(&run.image.path, run.image.root.partition).unwrap();
        let written = reader.cat_string("/etc/instance-id").unwrap();
        assert_eq!(
            written,
            run.instance,
            "{} contains another run's file",
            run.image.path.display()
        );
    }
}

#[test]
#[ignore = "needs root, loop devices, qemu-nbd and nbdfuse; run by cargo xtask integration"]
fn sixteen_localmount_runs_at_once_succeed() {
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let work = Workspace::new();
    let raw = images::tiny_gpt_raw().unwrap();
    let qcow2 = images::tiny_gpt_qcow2().unwrap();
    let sources: Vec<TestImage> = (0..16)
        .map(|index| {
            if index % 2 == 0 {
                raw.clone()
            } else {
                qcow2.clone()
            }
        })
        .collect();

    let (runs, elapsed) = run_at_once(&work, &sources, "localmount");

    check_runs(&runs);
    let mut devices: Vec<String> = runs
        .iter()
        .flat_map(|(_, output)| attached_loop_devices(&output.stderr))
        .collect();
    let attachments = devices.len();
    devices.sort();
    devices.dedup();
    eprintln!(
        "16 localmount runs at once: {:.2} s, {:.1} images/s, {attachments} loop attachments on {} devices",
        elapsed.as_secs_f64(),
        16.0 / elapsed.as_secs_f64(),
        devices.len()
    );
    assert!(
        attachments >= 16,
        "the logs name {attachments} loop attachments"
    );
    let leaks = wait_for_release(work.path());
    assert!(leaks.is_empty(), "{leaks}");
    assert!(
        tmp_leftovers(&work.tmp()).is_empty(),
        "{:?}",
        tmp_leftovers(&work.tmp())
    );
}

#[test]
#[ignore = "needs libguestfs and about four appliance launches' worth of time; run by cargo xtask integration"]
fn four_guestfs_runs_at_once_succeed() {
    let _serial = SERIAL.lock().unwrap_or_else(|poison| poison.into_inner());
    let work = Workspace::new();
    let qcow2 = images::tiny_gpt_qcow2().unwrap();
    let sources = vec![qcow2; 4];

    let (runs, elapsed) = run_at_once(&work, &sources, "guestfs");

    check_runs(&runs);
    eprintln!(
        "4 guestfs runs at once: {:.1} s, {:.3} images/s",
        elapsed.as_secs_f64(),
        4.0 / elapsed.as_secs_f64()
    );
    let leaks = wait_for_release(work.path());
    assert!(leaks.is_empty(), "{leaks}");
}
