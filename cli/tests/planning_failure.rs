//! Requests that fail while planning, through `guest-inject` on both backends: the command
//! exits with status 1, names the cause, and leaves the image byte-identical (SHA-256),
//! because the filesystems stay mounted read-only until the plan is complete.
//!
//! A guestfs run launches an appliance (about 20 s under TCG), and the leak check counts
//! every helper process that descends from this test process, so a lock runs the cases one
//! at a time.

use std::path::Path;
use std::process::{Command, Output};
use std::sync::{Mutex, MutexGuard};

use testkit::hostile::{self, Ext4Editor};
use testkit::images::{self, TestImage};

/// The backends every case runs on.
const BACKENDS: [&str; 2] = ["localmount", "guestfs"];

/// The root password of the requests; it must never be printed.
const PASSWORD: &str = "Planning-failure-pa55word";

/// The GID of `shadow` in the tiny images, which owns `/etc/shadow`.
const SHADOW_GID: u32 = 42;

/// An `/etc/shadow` with every account of the tiny images except root.
const SHADOW_WITHOUT_ROOT: &str = "daemon:*:19000:0:99999:7:::\n\
    bin:*:19000:0:99999:7:::\n\
    sys:*:19000:0:99999:7:::\n\
    nobody:*:19000:0:99999:7:::\n";

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Runs `guest-inject inject --backend BACKEND ARGS... IMAGE`.
fn inject(backend: &str, image: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guest-inject"))
        .args(["inject", "--backend", backend])
        .args(args)
        .arg(image)
        .output()
        .expect("guest-inject runs")
}

/// Runs the request on a copy of `image` in its own directory for each backend, and checks
/// that it fails with status 1, that the message names `cause`, and that the copy kept its
/// bytes.
fn check_fails_without_change(image: &TestImage, args: &[&str], cause: &str) {
    for backend in BACKENDS {
        let dir = tempfile::tempdir().unwrap();
        let copy = image.fresh_copy(dir.path()).unwrap();
        let before = hostile::sha256(&copy.path).unwrap();

        let output = inject(backend, &copy.path, args);

        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(1), "{backend}: {stderr}");
        assert!(stderr.contains(cause), "{backend}: {stderr}");
        assert!(
            !stderr.contains(PASSWORD),
            "{backend} printed the password: {stderr}"
        );
        let leaks = images::leak_check(dir.path()).unwrap();
        assert!(leaks.is_empty(), "{backend} left behind:\n{leaks}");
        assert_eq!(
            hostile::sha256(&copy.path).unwrap(),
            before,
            "{backend} changed the image"
        );
    }
}

#[test]
#[ignore = "needs root, loop devices and libguestfs (one appliance launch); run by cargo xtask integration"]
fn shadow_without_root_leaves_image_unchanged() {
    let _serial = serial();
    let work = tempfile::tempdir().unwrap();
    let image = images::tiny_gpt_raw()
        .unwrap()
        .fresh_copy(work.path())
        .unwrap();
    let mut editor = Ext4Editor::root_of(&image).unwrap();
    editor
        .write_file(
            "/etc/shadow",
            SHADOW_WITHOUT_ROOT.as_bytes(),
            0o640,
            0,
            SHADOW_GID,
        )
        .unwrap();
    editor.apply().unwrap();
    let password = work.path().join("password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();

    check_fails_without_change(
        &image,
        &["--admin-password-file", password.to_str().unwrap()],
        "/etc/shadow",
    );
}

#[test]
#[ignore = "needs root, loop devices and libguestfs (one appliance launch); run by cargo xtask integration"]
fn oversized_file_leaves_image_unchanged() {
    let _serial = serial();
    let work = tempfile::tempdir().unwrap();
    let (image, free_bytes) = hostile::full_filesystem(work.path()).unwrap();
    // Twice the free space plus a MiB, so that no rounding of either backend makes it fit.
    let large = work.path().join("large.bin");
    let file = std::fs::File::create(&large).unwrap();
    file.set_len(2 * free_bytes + 1024 * 1024).unwrap();
    let password = work.path().join("password");
    std::fs::write(&password, format!("{PASSWORD}\n")).unwrap();
    let file_spec = format!("/large.bin={}", large.display());

    check_fails_without_change(
        &image,
        &[
            "--admin-password-file",
            password.to_str().unwrap(),
            "--file",
            &file_spec,
        ],
        "free",
    );
}
