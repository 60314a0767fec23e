//! Hostile and broken images through `guest-inject`, on each backend.
//!
//! Each case builds its image at test time (see `testkit::hostile`) and runs the command
//! line on a fresh copy. It then checks the outcome independently of the backends: guest
//! files through debugfs, host files by their bytes, images by SHA-256, and leftover loop
//! devices, mounts and helper processes through `leak_check`. [`backend_tests!`] turns each
//! case into one test per backend, `guestfs::CASE` and `localmount::CASE`, so that a fault
//! of one backend never hides the result of the other.
//!
//! A guestfs run launches an appliance (about 20 s under TCG), so each case makes one
//! request that exercises all of its faults at once. The check that a failed request left
//! the image byte-identical comes last in each case, after the checks of the message.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, SystemTime};

use testkit::hostile::{self, Ext4Editor, HostSymlinks, LinkTargets};
use testkit::images::{self, Ext4Reader, TestImage};

/// The backends of the tests that only check the command line.
const BACKENDS: [&str; 2] = ["guestfs", "localmount"];

/// The SSH key every request injects.
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXW5j1kzKpSYQ+3VYpwqPC6fQ6sl1ub+f4Gfa26V1zN ops@example";

/// The root password of the requests that set one. It must never be printed.
const PASSWORD: &str = "Hostile-pa55word-never-printed";

/// The GID of `shadow` in the tiny images, which owns `/etc/shadow`.
const SHADOW_GID: u32 = 42;

/// An atime far in the past (2001-01-01). With `relatime`, a read of a file whose atime is
/// older than its mtime moves the atime to now, so an unchanged atime shows that nothing
/// read the file.
const OLD_ATIME_SECONDS: u64 = 978_307_200;

/// Defines, for each case `fn CASE(backend: &'static str)`, the tests `guestfs::CASE` and
/// `localmount::CASE`. Both need root, so both are ignored in plain `cargo test`.
macro_rules! backend_tests {
    ($($case:ident),* $(,)?) => {
        mod guestfs {
            $(
                #[test]
                #[ignore = "needs root and a libguestfs appliance launch; run by cargo xtask integration"]
                fn $case() {
                    super::$case("guestfs");
                }
            )*
        }

        mod localmount {
            $(
                #[test]
                #[ignore = "needs root, loop devices and nbdfuse; run by cargo xtask integration"]
                fn $case() {
                    super::$case("localmount");
                }
            )*
        }
    };
}

backend_tests!(
    host_symlinks_resolve_inside_guest,
    dangling_host_symlinks_warn_per_item,
    declared_raw_never_opens_backing_file,
    truncated_qcow2_exits_1,
    partition_past_disk_end_exits_1,
    overlapping_partitions_exit_1,
    gpt_bad_crc_exits_1,
    looping_extended_partitions_exit_1,
    zeroed_superblock_exits_1,
    unknown_ext4_feature_exits_1,
    files_without_final_newline_keep_bytes,
    shadow_without_root_exits_1_silently,
    missing_passwd_creates_no_ssh_dir,
    boot_file_lands_on_boot_partition,
    bios_boot_partition_has_no_filesystem,
    oversized_file_fails_in_planning,
);

/// The host files a request reads: key, password, network file, metadata and a file.
struct Inputs {
    dir: tempfile::TempDir,
}

impl Inputs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let write =
            |name: &str, contents: &[u8]| fs::write(dir.path().join(name), contents).unwrap();
        write("key.pub", format!("{KEY}\n").as_bytes());
        write("password", format!("{PASSWORD}\n").as_bytes());
        write("interfaces", b"auto eth0\niface eth0 inet dhcp\n");
        write(
            "meta.json",
            b"{\"uuid\": \"0b5e2a1c\", \"name\": \"vm-1\"}\n",
        );
        write("x.cfg", b"setting = 1\n");
        Self { dir }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }

    /// Writes a host file of `size` bytes, not all zero, and returns its path.
    fn large(&self, name: &str, size: usize) -> String {
        fs::write(self.dir.path().join(name), vec![0x5au8; size]).unwrap();
        self.path(name)
    }
}

/// What one run of the command printed and how it ended.
struct Run {
    backend: &'static str,
    output: Output,
}

impl Run {
    fn code(&self) -> Option<i32> {
        self.output.status.code()
    }

    fn stdout(&self) -> String {
        String::from_utf8_lossy(&self.output.stdout).into_owned()
    }

    fn stderr(&self) -> String {
        String::from_utf8_lossy(&self.output.stderr).into_owned()
    }

    /// Returns the error report the command printed last, from its `error: ` line on, or
    /// an empty string. Log lines before it are left out, because they name the image too.
    fn error_report(&self) -> String {
        let stderr = self.stderr();
        match stderr.rfind("\nerror: ") {
            Some(start) => stderr[start + 1..].to_owned(),
            None if stderr.starts_with("error: ") => stderr,
            None => String::new(),
        }
    }
}

/// Runs `guest-inject inject --backend BACKEND ARGS... IMAGE` with its temporary files in
/// `tmp`.
fn inject(backend: &'static str, image: &Path, args: &[&str], tmp: &Path) -> Run {
    fs::create_dir_all(tmp).unwrap();
    let output = Command::new(env!("CARGO_BIN_EXE_guest-inject"))
        .args(["inject", "--backend", backend])
        .args(args)
        .arg(image)
        .env("TMPDIR", tmp)
        // With TMPDIR alone, libguestfs would build a new appliance cache under it.
        .env("LIBGUESTFS_CACHEDIR", "/var/tmp")
        .env_remove("RUST_LOG")
        .output()
        .expect("guest-inject runs");
    Run { backend, output }
}

/// A case's image in a temporary directory of its own, with its digest before the run.
struct Copy {
    backend: &'static str,
    work: tempfile::TempDir,
    image: TestImage,
    digest_before: String,
}

impl Copy {
    /// Builds the image with `build`, which gets the directory to build it in.
    fn new(backend: &'static str, build: impl FnOnce(&Path) -> TestImage) -> Self {
        let work = tempfile::tempdir().unwrap();
        let image = build(work.path());
        let digest_before = hostile::sha256(&image.path).unwrap();
        Self {
            backend,
            work,
            image,
            digest_before,
        }
    }

    fn dir(&self) -> &Path {
        self.work.path()
    }

    fn tmp(&self) -> PathBuf {
        self.dir().join("tmp")
    }

    fn run(&self, args: &[&str]) -> Run {
        inject(self.backend, &self.image.path, args, &self.tmp())
    }

    fn root(&self) -> Ext4Reader {
        self.image.root_reader().unwrap()
    }

    fn assert_unchanged(&self) {
        let after = hostile::sha256(&self.image.path).unwrap();
        assert_eq!(
            after,
            self.digest_before,
            "{} changed image {}",
            self.backend,
            self.image.path.display()
        );
    }

    fn assert_no_leaks(&self) {
        let leaks = images::leak_check(self.dir()).unwrap();
        assert!(leaks.is_empty(), "{} left {leaks}", self.backend);
    }
}

/// Returns a fresh copy of one of the tiny images, for builders that edit it further.
fn tiny_copy(builder: images::Builder, dir: &Path) -> TestImage {
    builder().unwrap().fresh_copy(dir).unwrap()
}

fn assert_no_panic(run: &Run) {
    let stderr = run.stderr();
    assert!(
        !stderr.contains("panicked"),
        "{} panicked:\n{stderr}",
        run.backend
    );
}

fn assert_succeeded(run: &Run) {
    assert_eq!(
        run.code(),
        Some(0),
        "{} failed:\n{}",
        run.backend,
        run.stderr()
    );
}

fn assert_failed_with_1(run: &Run) {
    assert_eq!(
        run.code(),
        Some(1),
        "{} exit status:\nstdout: {}\nstderr: {}",
        run.backend,
        run.stdout(),
        run.stderr()
    );
}

/// Asserts that the error report contains at least one of `words`, compared without regard
/// to case.
fn assert_report_mentions(run: &Run, fault: &str, words: &[&str]) {
    let report = run.error_report().to_lowercase();
    assert!(
        words
            .iter()
            .any(|word| report.contains(&word.to_lowercase())),
        "{}'s error does not say {fault} (expected one of {words:?}):\n{}",
        run.backend,
        run.error_report()
    );
}

/// Asserts that the error report names partition `number`, as `partition N` or as the
/// appliance's `/dev/sdaN`.
fn assert_report_names_partition(run: &Run, number: u32) {
    let report = run.error_report();
    assert!(
        report.contains(&format!("partition {number}"))
            || report.contains(&format!("/dev/sda{number}")),
        "{}'s error does not name partition {number}:\n{report}",
        run.backend
    );
}

fn assert_report_names_image(run: &Run, image: &Path) {
    let report = run.error_report();
    assert!(
        report.contains(&image.display().to_string()),
        "{}'s error does not name the image {}:\n{report}",
        run.backend,
        image.display()
    );
}

/// Returns a directory tree on the host, each path with its symlink target or file bytes,
/// so that two snapshots compare equal only when nothing under `root` changed.
fn host_snapshot(root: &Path) -> BTreeMap<PathBuf, String> {
    let mut entries = BTreeMap::new();
    let mut pending = vec![root.to_owned()];
    while let Some(path) = pending.pop() {
        let metadata = fs::symlink_metadata(&path).unwrap();
        let description = if metadata.is_symlink() {
            format!("symlink to {}", fs::read_link(&path).unwrap().display())
        } else if metadata.is_dir() {
            for entry in fs::read_dir(&path).unwrap() {
                pending.push(entry.unwrap().path());
            }
            "directory".to_owned()
        } else {
            format!("file {:?}", fs::read(&path).unwrap())
        };
        entries.insert(path, description);
    }
    entries
}

fn set_old_atime(path: &Path) {
    let old = SystemTime::UNIX_EPOCH + Duration::from_secs(OLD_ATIME_SECONDS);
    let file = fs::File::options().write(true).open(path).unwrap();
    file.set_times(fs::FileTimes::new().set_accessed(old))
        .unwrap();
}

fn atime(path: &Path) -> SystemTime {
    fs::metadata(path).unwrap().accessed().unwrap()
}

/// Returns `/etc/shadow` with the second field of root's line replaced by `HASH`, after
/// checking that the field is a SHA-512 crypt hash. Each run draws its own salt.
fn mask_root_hash(shadow: &str) -> String {
    let mut lines = Vec::new();
    for line in shadow.split('\n') {
        let mut fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&"root") && fields.len() > 1 {
            assert!(
                fields[1].starts_with("$6$"),
                "root's field is not a SHA-512 hash ({} bytes)",
                fields[1].len()
            );
            fields[1] = "HASH";
        }
        lines.push(fields.join(":"));
    }
    lines.join("\n")
}

/// Returns the index of the relabel command for `/root/.ssh` among `lines`.
fn relabel_line(lines: &[&str]) -> Option<usize> {
    lines
        .iter()
        .position(|line| line.contains("restorecon") && line.contains("/root/.ssh"))
}

// --- Guest paths and image paths rejected before any image is opened ---------------------

#[test]
fn unsafe_guest_paths_exit_2_before_opening_image() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    fs::write(&image, vec![0x33u8; 1 << 20]).unwrap();
    let digest = hostile::sha256(&image).unwrap();
    let host_file = dir.path().join("x.cfg");
    fs::write(&host_file, b"x\n").unwrap();
    let host = host_file.display().to_string();
    set_old_atime(&image);
    let atime_before = atime(&image);
    let guest_paths = [
        "/etc/../x",
        "..",
        "/opt/app/../../etc/shadow",
        "/etc//x",
        "/etc/x/",
        "",
        "//",
    ];

    for backend in BACKENDS {
        for guest_path in guest_paths {
            let spec = format!("{guest_path}={host}");
            let run = inject(backend, &image, &["--file", &spec], &dir.path().join("tmp"));

            assert_eq!(run.code(), Some(2), "{backend} {spec:?}: {}", run.stderr());
            assert!(
                run.stderr().contains(&format!("{guest_path:?}")),
                "{backend} {spec:?} not named: {}",
                run.stderr()
            );
            assert_no_panic(&run);
        }
    }

    assert_eq!(atime(&image), atime_before, "something read the image");
    assert_eq!(
        hostile::sha256(&image).unwrap(),
        digest,
        "the image changed"
    );
}

#[test]
fn unusable_image_paths_exit_1_naming_image() {
    let dir = tempfile::tempdir().unwrap();
    let inputs = Inputs::new();
    let empty = dir.path().join("empty.raw");
    fs::write(&empty, b"").unwrap();
    let directory = dir.path().join("directory.raw");
    fs::create_dir(&directory).unwrap();
    let plain_file = dir.path().join("plain-file");
    fs::write(&plain_file, b"not a directory").unwrap();
    // The tests run as root, which reads a mode-000 image anyway, so the unreadable path
    // goes through a regular file instead.
    let cases = [
        (empty, "empty"),
        (directory, "directory"),
        (dir.path().join("missing.raw"), "no such file"),
        (plain_file.join("disk.raw"), "not a directory"),
    ];

    for backend in BACKENDS {
        for (image, word) in &cases {
            let run = inject(
                backend,
                image,
                &["--ssh-key", &inputs.path("key.pub")],
                &dir.path().join("tmp"),
            );

            assert_failed_with_1(&run);
            assert_no_panic(&run);
            assert_report_names_image(&run, image);
            assert_report_mentions(&run, "what is wrong with the path", &[word]);
        }
    }
}

// --- Symlinks aimed at the host -------------------------------------------------------------

/// Returns the arguments of a request that writes through every link of
/// `hostile::host_symlinks`.
fn through_links_args(inputs: &Inputs) -> Vec<String> {
    vec![
        "--ssh-key".into(),
        inputs.path("key.pub"),
        "--net".into(),
        inputs.path("interfaces"),
        "--metadata".into(),
        inputs.path("meta.json"),
        "--file".into(),
        format!("{}={}", hostile::PRIVATE_LINK_FILE, inputs.path("x.cfg")),
    ]
}

/// Builds the image of `hostile::host_symlinks` with its host targets in `COPY/host`.
fn host_symlinks_copy(backend: &'static str, targets: LinkTargets) -> (Copy, HostSymlinks) {
    let mut links = None;
    let copy = Copy::new(backend, |dir| {
        let built = hostile::host_symlinks(dir, &dir.join("host"), targets).unwrap();
        let image = built.image.clone();
        links = Some(built);
        image
    });
    (copy, links.unwrap())
}

fn assert_empty_dir(backend: &str, dir: &Path) {
    let count = fs::read_dir(dir).unwrap().count();
    assert_eq!(
        count,
        0,
        "{backend} wrote into host directory {}",
        dir.display()
    );
}

fn host_symlinks_resolve_inside_guest(backend: &'static str) {
    let inputs = Inputs::new();
    let args = through_links_args(&inputs);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (copy, links) = host_symlinks_copy(backend, LinkTargets::InGuest);
    let host = copy.dir().join("host");
    let host_before = host_snapshot(&host);

    let run = copy.run(&args);

    assert_succeeded(&run);
    assert_no_panic(&run);
    assert_eq!(
        host_snapshot(&host),
        host_before,
        "{backend} changed the host under {}",
        host.display()
    );
    assert_empty_dir(backend, &links.ssh_dir);
    assert_empty_dir(backend, &links.network_dir);
    assert_empty_dir(backend, &links.conf_dir);
    assert_eq!(
        fs::read(&links.authorized_keys).unwrap(),
        hostile::HOST_AUTHORIZED_KEYS,
        "{backend} changed host authorized_keys"
    );
    assert_eq!(
        fs::read(&links.meta).unwrap(),
        hostile::HOST_META,
        "{backend} changed host meta.js"
    );
    copy.assert_no_leaks();

    // Each link resolved inside the guest, so the data is in the guest's copies of the host
    // paths, and every link is still a link.
    let guest = copy.root();
    let text = |path: &Path| guest.cat_string(path.to_str().unwrap()).unwrap();
    let keys = text(&links.authorized_keys);
    assert!(
        keys.starts_with(std::str::from_utf8(hostile::HOST_AUTHORIZED_KEYS).unwrap()),
        "{backend}: {keys}"
    );
    assert!(keys.ends_with(&format!("{KEY}\n")), "{backend}: {keys}");
    assert_eq!(
        text(&links.network_dir.join("interfaces")),
        "auto eth0\niface eth0 inet dhcp\n",
        "{backend}"
    );
    assert_eq!(
        text(&links.meta),
        "{\"uuid\": \"0b5e2a1c\", \"name\": \"vm-1\"}\n",
        "{backend}"
    );
    assert_eq!(
        text(&links.conf_dir.join("app.cfg")),
        "setting = 1\n",
        "{backend}"
    );
    let ssh_link = format!("{}/authorized_keys", links.ssh_dir.display());
    for link in [
        "/root/.ssh",
        "/etc/network",
        "/meta.js",
        hostile::PRIVATE_LINK,
        &ssh_link,
    ] {
        assert_eq!(
            guest.stat(link).unwrap().kind,
            "symlink",
            "{backend} replaced guest {link}"
        );
    }
}

fn dangling_host_symlinks_warn_per_item(backend: &'static str) {
    let inputs = Inputs::new();
    let mut args = through_links_args(&inputs);
    args.extend([
        "--best-effort".to_owned(),
        "key,net,metadata,files".to_owned(),
    ]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let (copy, links) = host_symlinks_copy(backend, LinkTargets::Dangling);
    let host = copy.dir().join("host");
    let host_before = host_snapshot(&host);

    let run = copy.run(&args);

    // Every item is best-effort, so each failure is a warning that names its link.
    assert_succeeded(&run);
    assert_no_panic(&run);
    let stdout = run.stdout();
    for link in [
        "/root/.ssh",
        "/etc/network",
        "/meta.js",
        hostile::PRIVATE_LINK,
    ] {
        let warned = stdout.lines().any(|line| {
            line.starts_with("warning") && line.contains(&format!("{link} is a symlink"))
        });
        assert!(warned, "{backend} gave no warning for {link}:\n{stdout}");
    }
    assert_eq!(
        host_snapshot(&host),
        host_before,
        "{backend} changed the host under {}",
        host.display()
    );
    assert_empty_dir(backend, &links.ssh_dir);
    assert_eq!(
        fs::read(&links.authorized_keys).unwrap(),
        hostile::HOST_AUTHORIZED_KEYS,
        "{backend} changed host authorized_keys"
    );
    copy.assert_no_leaks();

    let guest = copy.root();
    for created in [
        &links.ssh_dir,
        &links.network_dir,
        &links.conf_dir,
        &links.meta,
    ] {
        let path = created.to_str().unwrap();
        assert!(
            !guest.exists(path).unwrap(),
            "{backend} created guest {path}"
        );
    }
}

// --- Image formats ----------------------------------------------------------------------

fn declared_raw_never_opens_backing_file(backend: &'static str) {
    let inputs = Inputs::new();
    let backing_dir = tempfile::tempdir().unwrap();
    let backing = backing_dir.path().join("host-backing.raw");
    fs::write(&backing, vec![0x77u8; 1 << 20]).unwrap();
    // The guest also has /etc/selinux and /etc/rc.d but no rc.local, as Red Hat guests
    // have, so the key brings a new /etc/rc.d/rc.local.
    let copy = Copy::new(backend, |dir| {
        let image = tiny_copy(images::tiny_whole_ext4, dir);
        let mut editor = Ext4Editor::root_of(&image).unwrap();
        editor
            .create_dir_all("/etc/selinux", 0o755)
            .unwrap()
            .create_dir_all("/etc/rc.d", 0o755)
            .unwrap();
        editor.apply().unwrap();
        hostile::write_qcow2_header(&image.path, &backing).unwrap();
        image
    });
    let header = hostile::read_at(&copy.image.path, 0, 1024).unwrap();
    set_old_atime(&backing);
    let atime_before = atime(&backing);

    // The sidecar declares the image raw.
    let run = copy.run(&["--ssh-key", &inputs.path("key.pub")]);

    assert_succeeded(&run);
    assert_no_panic(&run);
    assert_eq!(
        atime(&backing),
        atime_before,
        "{backend} read the backing file that the header names"
    );
    assert!(
        !run.stderr().contains(&backing.display().to_string()),
        "{backend} mentioned the backing file:\n{}",
        run.stderr()
    );
    assert_eq!(
        hostile::read_at(&copy.image.path, 0, 1024).unwrap(),
        header,
        "{backend} changed the first 1024 bytes"
    );
    copy.assert_no_leaks();

    // The readers take an image that starts with the qcow2 magic for qcow2, so the result
    // is read from a copy without the header.
    let readable = copy.dir().join("readable.raw");
    fs::copy(&copy.image.path, &readable).unwrap();
    hostile::patch(&readable, 0, &[0u8; 1024]).unwrap();
    let guest = Ext4Reader::open(&readable, None).unwrap();
    let keys = guest.cat_string("/root/.ssh/authorized_keys").unwrap();
    assert!(keys.ends_with(&format!("{KEY}\n")), "{backend}: {keys}");
    let rc_local = guest.cat_string("/etc/rc.d/rc.local").unwrap();
    let lines: Vec<&str> = rc_local.lines().collect();
    assert_eq!(lines.first(), Some(&"#!/bin/sh"), "{backend}: {rc_local}");
    assert!(
        relabel_line(&lines).is_some(),
        "{backend} added no relabel command: {rc_local}"
    );
    assert_eq!(
        guest.stat("/etc/rc.d/rc.local").unwrap().mode,
        0o755,
        "{backend}"
    );
    assert!(
        !guest.exists("/etc/rc.local").unwrap(),
        "{backend} created /etc/rc.local"
    );

    // The check above proves something only if a read moves the atime here.
    fs::read(&backing).unwrap();
    assert_ne!(
        atime(&backing),
        atime_before,
        "reading does not move the atime here"
    );
}

#[test]
#[ignore = "needs qemu-img and the tiny test images; run by cargo xtask integration"]
fn undeclared_qcow2_with_outside_backing_exits_1() {
    let inputs = Inputs::new();

    for backend in BACKENDS {
        let backing_dir = tempfile::tempdir().unwrap();
        let copy = Copy::new(backend, |dir| {
            hostile::qcow2_with_outside_backing(dir, backing_dir.path()).unwrap()
        });
        let backing = fs::canonicalize(backing_dir.path().join("tiny-gpt.raw")).unwrap();
        set_old_atime(&backing);
        let atime_before = atime(&backing);

        let run = copy.run(&["--ssh-key", &inputs.path("key.pub")]);

        assert_failed_with_1(&run);
        assert_no_panic(&run);
        assert_report_names_image(&run, &copy.image.path);
        let report = run.error_report();
        assert!(
            report.contains(&backing.display().to_string()),
            "{backend}'s error does not name the backing file:\n{report}"
        );
        assert_eq!(
            atime(&backing),
            atime_before,
            "{backend} read the backing file"
        );
        copy.assert_no_leaks();
        copy.assert_unchanged();
    }
}

// --- Broken images ----------------------------------------------------------------------

/// Runs a key request on a broken image and checks that it fails with status 1. The report
/// must name the image, the partition (when given) and one of `words`, and the run must
/// leave no panic, no leftovers and no change to the image.
fn assert_broken_image_rejected(
    backend: &'static str,
    build: fn(&Path) -> images::Result<TestImage>,
    partition: Option<u32>,
    fault: &str,
    words: &[&str],
) {
    let inputs = Inputs::new();
    let copy = Copy::new(backend, |dir| build(dir).unwrap());

    let run = copy.run(&["--ssh-key", &inputs.path("key.pub")]);

    assert_failed_with_1(&run);
    assert_no_panic(&run);
    assert_report_names_image(&run, &copy.image.path);
    if let Some(number) = partition {
        assert_report_names_partition(&run, number);
    }
    assert_report_mentions(&run, fault, words);
    copy.assert_no_leaks();
    copy.assert_unchanged();
}

fn truncated_qcow2_exits_1(backend: &'static str) {
    let words = [
        "truncated",
        "end of the file",
        "end of file",
        "shorter than",
    ];
    assert_broken_image_rejected(
        backend,
        hostile::truncated_qcow2,
        None,
        "that the qcow2 file is truncated",
        &words,
    );
}

fn partition_past_disk_end_exits_1(backend: &'static str) {
    let words = ["beyond the end", "past the end", "outside the disk"];
    assert_broken_image_rejected(
        backend,
        hostile::mbr_partition_past_end,
        Some(2),
        "that the partition ends past the disk",
        &words,
    );
}

fn overlapping_partitions_exit_1(backend: &'static str) {
    assert_broken_image_rejected(
        backend,
        hostile::mbr_overlapping_partitions,
        Some(1),
        "that partitions overlap",
        &["overlap"],
    );
}

fn gpt_bad_crc_exits_1(backend: &'static str) {
    assert_broken_image_rejected(
        backend,
        hostile::gpt_bad_crc,
        None,
        "that the GPT checksum is wrong",
        &["crc", "checksum"],
    );
}

fn looping_extended_partitions_exit_1(backend: &'static str) {
    assert_broken_image_rejected(
        backend,
        hostile::mbr_extended_loop,
        None,
        "that the extended partition chain loops",
        &["loop"],
    );
}

fn zeroed_superblock_exits_1(backend: &'static str) {
    assert_broken_image_rejected(
        backend,
        hostile::zeroed_superblock,
        Some(2),
        "that no filesystem was found",
        &["no filesystem"],
    );
}

fn unknown_ext4_feature_exits_1(backend: &'static str) {
    assert_broken_image_rejected(
        backend,
        hostile::unknown_incompat_feature,
        Some(2),
        "that the filesystem has an unsupported feature",
        &["feature"],
    );
}

// --- Guest content that must come out right ------------------------------------------------

/// A key already in `authorized_keys`, without a final newline.
const OLD_KEY: &str = "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQC7old old@host";

/// A shadow file with root locked (`!!`) and no final newline.
const LOCKED_SHADOW: &str =
    "root:!!:19800:0:99999:7:::\ndaemon:*:19800:0:99999:7:::\nnobody:*:19800:0:99999:7:::";

/// An rc.local that ends in `exit 0` without a final newline.
const RC_LOCAL_NO_NEWLINE: &str = "#!/bin/sh -e\n# site commands\nexit 0";

fn files_without_final_newline_keep_bytes(backend: &'static str) {
    let inputs = Inputs::new();
    let file_spec = format!("/opt/app/conf/x.cfg={}", inputs.path("x.cfg"));
    let copy = Copy::new(backend, |dir| {
        let image = tiny_copy(images::tiny_gpt_raw, dir);
        let mut editor = Ext4Editor::root_of(&image).unwrap();
        editor
            .create_dir_all("/root/.ssh", 0o700)
            .unwrap()
            .write_file(
                "/root/.ssh/authorized_keys",
                OLD_KEY.as_bytes(),
                0o600,
                0,
                0,
            )
            .unwrap()
            .write_file(
                "/etc/shadow",
                LOCKED_SHADOW.as_bytes(),
                0o640,
                0,
                SHADOW_GID,
            )
            .unwrap()
            .create_dir_all("/etc/selinux", 0o755)
            .unwrap()
            .write_file("/etc/rc.local", RC_LOCAL_NO_NEWLINE.as_bytes(), 0o755, 0, 0)
            .unwrap();
        editor.apply().unwrap();
        image
    });

    // `auto` must pass over the BIOS boot partition 1 and find the root on partition 2.
    let run = copy.run(&[
        "--partition",
        "auto",
        "--ssh-key",
        &inputs.path("key.pub"),
        "--admin-password-file",
        &inputs.path("password"),
        "--file",
        &file_spec,
    ]);

    assert_succeeded(&run);
    assert_no_panic(&run);
    copy.assert_no_leaks();
    let guest = copy.root();

    let keys = guest.cat_string("/root/.ssh/authorized_keys").unwrap();
    assert!(
        keys.starts_with(&format!("{OLD_KEY}\n")),
        "{backend} damaged the old key line:\n{keys}"
    );
    assert!(keys.ends_with(&format!("\n{KEY}\n")), "{backend}:\n{keys}");
    assert_eq!(
        keys.lines().filter(|line| line.starts_with("ssh-")).count(),
        2,
        "{backend}:\n{keys}"
    );

    let shadow = guest.cat_string("/etc/shadow").unwrap();
    assert_eq!(
        mask_root_hash(&shadow),
        LOCKED_SHADOW.replacen("!!", "HASH", 1),
        "{backend}"
    );
    let shadow_stat = guest.stat("/etc/shadow").unwrap();
    assert_eq!(shadow_stat.mode, 0o640, "{backend} /etc/shadow mode");
    assert_eq!(shadow_stat.gid, SHADOW_GID, "{backend} /etc/shadow group");
    assert_eq!(shadow_stat.uid, 0, "{backend} /etc/shadow owner");

    let rc_local = guest.cat_string("/etc/rc.local").unwrap();
    let lines: Vec<&str> = rc_local.lines().collect();
    let exit = lines.iter().position(|line| *line == "exit 0");
    assert!(
        relabel_line(&lines).is_some(),
        "{backend} added no relabel command:\n{rc_local}"
    );
    assert_eq!(
        exit,
        Some(lines.len() - 1),
        "{backend} moved exit 0:\n{rc_local}"
    );
    assert!(
        relabel_line(&lines) < exit,
        "{backend} put the relabel command after exit 0:\n{rc_local}"
    );
    assert!(
        rc_local.ends_with("\nexit 0"),
        "{backend} changed the end of rc.local:\n{rc_local}"
    );
    assert_eq!(lines[0], "#!/bin/sh -e", "{backend}:\n{rc_local}");
    assert_eq!(
        lines.iter().filter(|line| line.starts_with("#!")).count(),
        1,
        "{backend}:\n{rc_local}"
    );
    assert_eq!(
        guest.stat("/etc/rc.local").unwrap().mode,
        0o755,
        "{backend}"
    );

    assert_eq!(
        guest.cat_string("/opt/app/conf/x.cfg").unwrap(),
        "setting = 1\n",
        "{backend}"
    );
    for dir in ["/opt", "/opt/app", "/opt/app/conf"] {
        let stat = guest.stat(dir).unwrap();
        assert_eq!(stat.kind, "directory", "{backend} {dir}");
        assert_eq!(stat.mode, 0o755, "{backend} {dir}");
        assert_eq!((stat.uid, stat.gid), (0, 0), "{backend} {dir}");
    }
}

fn shadow_without_root_exits_1_silently(backend: &'static str) {
    let inputs = Inputs::new();
    let shadow = "daemon:*:19800:0:99999:7:::\nnobody:*:19800:0:99999:7:::\n";
    let copy = Copy::new(backend, |dir| {
        let image = tiny_copy(images::tiny_gpt_raw, dir);
        let mut editor = Ext4Editor::root_of(&image).unwrap();
        editor
            .write_file("/etc/shadow", shadow.as_bytes(), 0o640, 0, SHADOW_GID)
            .unwrap();
        editor.apply().unwrap();
        image
    });
    fs::create_dir_all(copy.tmp()).unwrap();

    // Full logging, on the path where the guest rejects the password item.
    let output = Command::new(env!("CARGO_BIN_EXE_guest-inject"))
        .args(["-vvv", "inject", "--backend", backend])
        .args(["--admin-password-file", &inputs.path("password")])
        .arg(&copy.image.path)
        .env("RUST_LOG", "trace")
        .env("LIBGUESTFS_TRACE", "1")
        .env("TMPDIR", copy.tmp())
        .env("LIBGUESTFS_CACHEDIR", "/var/tmp")
        .output()
        .unwrap();
    let run = Run { backend, output };

    assert_failed_with_1(&run);
    assert_no_panic(&run);
    let report = run.error_report();
    assert!(
        report.contains("no entry for root in /etc/shadow"),
        "{backend}:\n{report}"
    );
    assert!(
        !run.stdout().contains(PASSWORD),
        "{backend} printed the password on stdout"
    );
    assert!(
        !run.stderr().contains(PASSWORD),
        "{backend} printed the password on stderr"
    );
    assert!(
        run.stderr().contains("DEBUG"),
        "{backend} ran without debug logging"
    );
    copy.assert_no_leaks();
    assert_eq!(
        copy.root().cat_string("/etc/shadow").unwrap(),
        shadow,
        "{backend} changed /etc/shadow"
    );
    copy.assert_unchanged();
}

fn missing_passwd_creates_no_ssh_dir(backend: &'static str) {
    let inputs = Inputs::new();
    let copy = Copy::new(backend, |dir| {
        let image = tiny_copy(images::tiny_gpt_raw, dir);
        let mut editor = Ext4Editor::root_of(&image).unwrap();
        editor.remove_file("/etc/passwd").unwrap();
        editor.apply().unwrap();
        image
    });

    let run = copy.run(&["--ssh-key", &inputs.path("key.pub")]);

    assert_failed_with_1(&run);
    assert_no_panic(&run);
    let report = run.error_report();
    assert!(
        report.contains("/etc/passwd not found"),
        "{backend}:\n{report}"
    );
    copy.assert_no_leaks();
    assert!(
        !copy.root().exists("/root/.ssh").unwrap(),
        "{backend} created /root/.ssh"
    );
    copy.assert_unchanged();
}

fn boot_file_lands_on_boot_partition(backend: &'static str) {
    let inputs = Inputs::new();
    let rc_local = "#!/bin/sh\necho started\nexit 0\n";
    let file_spec = format!("/boot/extra.cfg={}", inputs.path("x.cfg"));
    let copy = Copy::new(backend, |dir| {
        let image = tiny_copy(images::tiny_mbr_boot_first, dir);
        let mut editor = Ext4Editor::root_of(&image).unwrap();
        editor
            .create_dir_all("/etc/selinux", 0o755)
            .unwrap()
            .write_file("/etc/rc.local", rc_local.as_bytes(), 0o755, 0, 0)
            .unwrap();
        editor.apply().unwrap();
        image
    });

    let run = copy.run(&[
        "--partition",
        "auto",
        "--ssh-key",
        &inputs.path("key.pub"),
        "--file",
        &file_spec,
    ]);

    assert_succeeded(&run);
    assert_no_panic(&run);
    copy.assert_no_leaks();
    let boot = copy
        .image
        .boot_reader()
        .unwrap()
        .expect("the MBR image has /boot");
    let root = copy.root();
    assert_eq!(
        boot.cat_string("/extra.cfg").unwrap(),
        "setting = 1\n",
        "{backend}"
    );
    assert!(
        !root.exists("/boot/extra.cfg").unwrap(),
        "{backend} wrote /boot/extra.cfg on the root partition"
    );
    let keys = root.cat_string("/root/.ssh/authorized_keys").unwrap();
    assert!(keys.ends_with(&format!("{KEY}\n")), "{backend}: {keys}");

    let written = root.cat_string("/etc/rc.local").unwrap();
    let lines: Vec<&str> = written.lines().collect();
    assert!(
        relabel_line(&lines).is_some(),
        "{backend} added no relabel command:\n{written}"
    );
    assert!(
        relabel_line(&lines) < Some(lines.len() - 1),
        "{backend}:\n{written}"
    );
    assert!(written.ends_with("\nexit 0\n"), "{backend}:\n{written}");
    assert!(
        written.starts_with("#!/bin/sh\necho started\n"),
        "{backend}:\n{written}"
    );
}

fn bios_boot_partition_has_no_filesystem(backend: &'static str) {
    let inputs = Inputs::new();
    let copy = Copy::new(backend, |dir| tiny_copy(images::tiny_gpt_raw, dir));

    let run = copy.run(&["--partition", "1", "--ssh-key", &inputs.path("key.pub")]);

    assert_failed_with_1(&run);
    assert_no_panic(&run);
    assert_report_names_image(&run, &copy.image.path);
    assert_report_names_partition(&run, 1);
    assert_report_mentions(
        &run,
        "that partition 1 has no filesystem",
        &["no filesystem"],
    );
    copy.assert_no_leaks();
    copy.assert_unchanged();
}

// --- A full filesystem --------------------------------------------------------------------

fn oversized_file_fails_in_planning(backend: &'static str) {
    let inputs = Inputs::new();
    let mut free = 0;
    let copy = Copy::new(backend, |dir| {
        let (image, left) = hostile::full_filesystem(dir).unwrap();
        free = left;
        image
    });
    // One MiB more than the filesystem has free, reserved blocks included.
    let big = inputs.large("big.bin", free as usize + (1 << 20));

    let run = copy.run(&["--file", &format!("/big.bin={big}")]);

    assert_failed_with_1(&run);
    assert_no_panic(&run);
    assert_report_mentions(&run, "that space ran out", &["free", "space"]);
    assert_report_mentions(&run, "that nothing was written", &["nothing was written"]);
    copy.assert_no_leaks();
    assert!(
        !copy.root().exists("/big.bin").unwrap(),
        "{backend} left /big.bin"
    );
    copy.assert_unchanged();
}
