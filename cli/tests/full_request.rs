//! The full request (SSH key, root password, network, metadata, a 64 MiB file and a small
//! one) through `guest-inject` on the Debian test images, with each backend, read back with
//! debugfs independently of the backends. After each run nothing may be left attached.

use std::path::Path;
use std::process::Command;

use testkit::images::{self, Ext4Reader, TestImage};

const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXW5j1kzKpSYQ+3VYpwqPC6fQ6sl1ub+f4Gfa26V1zN ops@example";
const INTERFACES: &str = "auto eth0\niface eth0 inet static\n    address 192.0.2.10/24\n";
const METADATA: &str = "{\"uuid\": \"4c1d9f7e\", \"hostname\": \"vm-7\"}";
const SMALL_FILE: &[u8] = b"small = true\n";
/// The large file's size: 64 MiB, the size the backends must write without holding copies.
const LARGE_SIZE: usize = 64 * 1024 * 1024;

/// Host inputs for one request, in a temporary directory.
struct Inputs {
    dir: tempfile::TempDir,
    large: Vec<u8>,
}

impl Inputs {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let large = pseudo_random_bytes(LARGE_SIZE);
        for (name, contents) in [
            ("key.pub", format!("{KEY}\n").into_bytes()),
            ("password", b"full-request-password\n".to_vec()),
            ("interfaces", INTERFACES.as_bytes().to_vec()),
            ("meta.json", METADATA.as_bytes().to_vec()),
            ("small", SMALL_FILE.to_vec()),
            ("large", large.clone()),
        ] {
            std::fs::write(dir.path().join(name), contents).unwrap();
        }
        Self { dir, large }
    }

    fn path(&self, name: &str) -> String {
        self.dir.path().join(name).display().to_string()
    }
}

/// Returns `len` bytes from a fixed xorshift sequence, so a misplaced block shows up.
fn pseudo_random_bytes(len: usize) -> Vec<u8> {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut bytes = Vec::with_capacity(len);
    while bytes.len() < len {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        bytes.extend_from_slice(&state.to_le_bytes());
    }
    bytes.truncate(len);
    bytes
}

/// Runs the full request and returns guest-inject's stderr; panics when it fails.
fn inject(backend: &str, image: &Path, inputs: &Inputs, extra: &[String]) {
    let output = Command::new(env!("CARGO_BIN_EXE_guest-inject"))
        .args(["inject", "--backend", backend])
        .args(["--ssh-key", &inputs.path("key.pub")])
        .args(["--admin-password-file", &inputs.path("password")])
        .args(["--net", &inputs.path("interfaces")])
        .args(["--metadata", &inputs.path("meta.json")])
        .args([
            "--file",
            &format!("/opt/app/conf/small.cfg={}", inputs.path("small")),
        ])
        .args([
            "--file",
            &format!("/srv/data/large.bin={}", inputs.path("large")),
        ])
        .args(extra)
        .arg(image)
        .output()
        .expect("guest-inject runs");
    assert!(
        output.status.success(),
        "{backend} on {} failed:\n{}",
        image.display(),
        String::from_utf8_lossy(&output.stderr)
    );
}

/// Checks every item of the request on the root filesystem, against the untouched image.
fn check_root(reader: &Ext4Reader, original: &Ext4Reader, inputs: &Inputs) {
    let keys = reader.cat_string("/root/.ssh/authorized_keys").unwrap();
    assert!(keys.lines().any(|line| line == KEY), "key missing:\n{keys}");
    assert_eq!(reader.stat("/root/.ssh").unwrap().mode, 0o700);
    assert_eq!(
        reader.stat("/root/.ssh/authorized_keys").unwrap().mode,
        0o600
    );

    let before = original.cat_string("/etc/shadow").unwrap();
    let after = reader.cat_string("/etc/shadow").unwrap();
    let before_lines: Vec<&str> = before.split('\n').collect();
    let after_lines: Vec<&str> = after.split('\n').collect();
    assert_eq!(before_lines.len(), after_lines.len());
    for (old, new) in before_lines.iter().zip(&after_lines) {
        if old.starts_with("root:") {
            assert!(
                new.starts_with("root:$6$"),
                "root hash is not SHA-512 crypt"
            );
            assert_eq!(
                old.split(':').skip(2).collect::<Vec<_>>(),
                new.split(':').skip(2).collect::<Vec<_>>()
            );
        } else {
            assert_eq!(old, new, "a line other than root's changed");
        }
    }
    let shadow_before = original.stat("/etc/shadow").unwrap();
    let shadow_after = reader.stat("/etc/shadow").unwrap();
    assert_eq!(
        (shadow_before.mode, shadow_before.uid, shadow_before.gid),
        (shadow_after.mode, shadow_after.uid, shadow_after.gid)
    );

    assert_eq!(
        reader.cat_string("/etc/network/interfaces").unwrap(),
        INTERFACES
    );
    assert_eq!(reader.cat_string("/meta.js").unwrap(), METADATA);
    assert_eq!(reader.cat("/opt/app/conf/small.cfg").unwrap(), SMALL_FILE);
    assert_eq!(reader.stat("/opt/app/conf").unwrap().mode, 0o755);
    let large = reader.cat("/srv/data/large.bin").unwrap();
    assert_eq!(
        large.len(),
        inputs.large.len(),
        "the 64 MiB file arrived with the wrong size"
    );
    assert!(
        large == inputs.large,
        "the 64 MiB file arrived with wrong contents"
    );
}

fn run_case(backend: &str, base: TestImage, extra: &[String], boot_file: bool) {
    let work = tempfile::tempdir().unwrap();
    let image = base.fresh_copy(work.path()).unwrap();
    let inputs = Inputs::new();
    let mut extra = extra.to_vec();
    if boot_file {
        extra.extend([
            "--file".to_owned(),
            format!("/boot/injected.txt={}", inputs.path("small")),
        ]);
    }

    inject(backend, &image.path, &inputs, &extra);

    check_root(
        &image.root_reader().unwrap(),
        &base.root_reader().unwrap(),
        &inputs,
    );
    if boot_file {
        let boot = image
            .boot_reader()
            .unwrap()
            .expect("the image has a /boot partition");
        assert_eq!(
            boot.cat("/injected.txt").unwrap(),
            SMALL_FILE,
            "the /boot file is not on the boot partition"
        );
        let root = image.root_reader().unwrap();
        assert!(
            !root.exists("/boot/injected.txt").unwrap(),
            "the /boot file landed on the root filesystem"
        );
    }
    let leaks = images::leak_check(work.path()).unwrap();
    assert!(leaks.is_empty(), "{backend} left {leaks}");
}

fn image(result: images::Result<TestImage>) -> TestImage {
    result.expect("building the test image")
}

fn no_args() -> Vec<String> {
    Vec::new()
}

#[test]
#[ignore = "needs root, loop devices and debootstrap images; run by cargo xtask integration"]
fn localmount_gpt_raw_partition_from_metadata() {
    run_case("localmount", image(images::gpt_raw()), &no_args(), false);
}

#[test]
#[ignore = "needs root, loop devices, qemu-nbd and nbdfuse; run by cargo xtask integration"]
fn localmount_gpt_qcow2_partition_from_metadata() {
    run_case("localmount", image(images::gpt_qcow2()), &no_args(), false);
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn localmount_whole_disk_ext4() {
    run_case("localmount", image(images::whole_ext4()), &no_args(), false);
}

#[test]
#[ignore = "needs root and loop devices; run by cargo xtask integration"]
fn localmount_mbr_boot_first_auto() {
    let args = vec!["--partition".to_owned(), "auto".to_owned()];
    run_case("localmount", image(images::mbr_boot_first()), &args, true);
}

#[test]
#[ignore = "needs libguestfs and an appliance launch; run by cargo xtask integration"]
fn guestfs_gpt_qcow2_partition_from_metadata() {
    run_case("guestfs", image(images::gpt_qcow2()), &no_args(), false);
}

#[test]
#[ignore = "needs libguestfs and an appliance launch; run by cargo xtask integration"]
fn guestfs_mbr_boot_first_auto() {
    let args = vec!["--partition".to_owned(), "auto".to_owned()];
    run_case("guestfs", image(images::mbr_boot_first()), &args, true);
}
