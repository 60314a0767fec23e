//! The command line without any image work: help, usage errors and their exit statuses.

use std::process::{Command, Output};

fn guest_inject(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_guest-inject"))
        .args(args)
        .output()
        .expect("guest-inject runs")
}

#[test]
fn inject_help_lists_every_option() {
    let output = guest_inject(&["inject", "--help"]);
    let help = String::from_utf8_lossy(&output.stdout);

    assert!(output.status.success());
    for option in [
        "--backend",
        "--format",
        "--partition",
        "--image-meta",
        "--ssh-key",
        "--admin-password-file",
        "--net",
        "--metadata",
        "--file",
        "--best-effort",
        "--json",
        "--transactional",
        "--password-hash",
    ] {
        assert!(help.contains(option), "help lacks {option}:\n{help}");
    }
}

#[test]
fn unknown_option_exits_2() {
    let output = guest_inject(&["inject", "--no-such-option", "disk.raw"]);

    assert_eq!(output.status.code(), Some(2));
}

#[test]
fn dotdot_guest_path_exits_2_naming_path() {
    let output = guest_inject(&["inject", "--file", "/etc/../../x=/dev/null", "missing.raw"]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("/etc/../../x"), "{stderr}");
}

#[test]
fn bad_partition_exits_2() {
    let output = guest_inject(&["inject", "--partition", "sda1", "disk.raw"]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(2));
    assert!(stderr.contains("sda1"), "{stderr}");
}

#[test]
fn missing_image_exits_1_naming_image() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pub");
    std::fs::write(
        &key,
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXW5j1kzKpSYQ+3VYpwqPC6fQ6sl1ub+f4Gfa26V1zN test\n",
    )
    .unwrap();
    let image = dir.path().join("missing.raw");

    let output = guest_inject(&[
        "inject",
        "--ssh-key",
        key.to_str().unwrap(),
        image.to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("missing.raw"), "{stderr}");
    assert!(stderr.contains("no such file"), "{stderr}");
}

#[test]
fn malformed_key_exits_1_before_opening_image() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("key.pub");
    std::fs::write(&key, "ssh-ed25519 not-base64!!\n").unwrap();

    // The image does not exist: the key must be rejected first.
    let output = guest_inject(&["inject", "--ssh-key", key.to_str().unwrap(), "missing.raw"]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(1));
    assert!(!stderr.contains("missing.raw"), "{stderr}");
    assert!(stderr.to_lowercase().contains("key"), "{stderr}");
}

#[test]
fn nothing_requested_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let image = dir.path().join("disk.raw");
    std::fs::write(&image, vec![0u8; 4096]).unwrap();

    let output = guest_inject(&["inject", image.to_str().unwrap()]);
    let stderr = String::from_utf8_lossy(&output.stderr);

    assert_eq!(output.status.code(), Some(1));
    assert!(stderr.contains("nothing to inject"), "{stderr}");
}

#[test]
fn backends_lists_both_backends() {
    let output = guest_inject(&["backends", "--json"]);
    let rows: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    let names: Vec<&str> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|row| row["name"].as_str().unwrap())
        .collect();

    assert!(output.status.success());
    assert_eq!(names, ["guestfs", "localmount"]);
}
