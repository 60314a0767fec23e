//! `cargo xtask test` and `cargo xtask integration`: every check CI runs, in order.

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use testkit::images::{image_dir, IMAGE_DIR_ENV};

use crate::{cargo, images, run_command, setup, TaskError};

/// The libguestfs settings for this kind of machine: qemu under KVM aborts or hangs
/// there, so the appliance runs under TCG, and the `direct` backend needs no libvirt.
const LIBGUESTFS_ENV: [(&str, &str); 2] = [
    ("LIBGUESTFS_BACKEND", "direct"),
    ("LIBGUESTFS_BACKEND_SETTINGS", "force_tcg"),
];

/// How many lines of the `libguestfs-test-tool` log to print when it fails.
const LOG_TAIL_LINES: usize = 40;

/// Runs setup, rustfmt, clippy, the unit and property tests, then the integration tests.
pub(crate) fn run() -> Result<(), TaskError> {
    // The workspace links libguestfs, so clippy already needs its packages.
    setup::run()?;
    run_command(cargo().args(["fmt", "--all", "--check"]))?;
    run_command(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    run_command(cargo().args(["test", "--workspace"]))?;
    run_integration()
}

/// Runs setup, then the integration tests.
pub(crate) fn integration() -> Result<(), TaskError> {
    setup::run()?;
    run_integration()
}

/// Builds the images, starts the libguestfs appliance once, and runs the ignored tests
/// one at a time, because they share loop devices and the appliance cache.
fn run_integration() -> Result<(), TaskError> {
    images::run()?;
    warm_appliance()?;

    let mut tests = cargo();
    tests
        .args(["test", "--workspace", "--", "--ignored", "--test-threads=1"])
        .env(IMAGE_DIR_ENV, image_dir())
        .envs(LIBGUESTFS_ENV);
    run_command(&mut tests)?;

    // The failpoint tests need the CLI built with its failpoints, which the run above
    // leaves out.
    let mut failpoint_tests = cargo();
    failpoint_tests
        .args([
            "test",
            "-p",
            "cli",
            "--features",
            "failpoints",
            "--test",
            "failpoints",
        ])
        .args(["--", "--ignored", "--test-threads=1"])
        .env(IMAGE_DIR_ENV, image_dir())
        .envs(LIBGUESTFS_ENV);
    run_command(&mut failpoint_tests)
}

/// Launches the libguestfs appliance once with `libguestfs-test-tool`, which builds the
/// supermin appliance cache on the first run, so no test pays for it or times out on it.
/// Its long trace goes to a log file, and only its tail is printed when it fails.
fn warm_appliance() -> Result<(), TaskError> {
    let log_path = workspace_target().join("libguestfs-test-tool.log");
    let log_error = |action, source| TaskError::WritingLog {
        action,
        path: log_path.clone(),
        source,
    };
    let log = File::create(&log_path).map_err(|source| log_error("creating", source))?;
    let log_for_stderr = log
        .try_clone()
        .map_err(|source| log_error("opening", source))?;

    let mut command = Command::new("libguestfs-test-tool");
    command
        .envs(LIBGUESTFS_ENV)
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(log_for_stderr));
    eprintln!(
        "warming the libguestfs appliance, output in {}",
        log_path.display()
    );
    let result = run_command(&mut command);
    if result.is_err() {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        let start = lines.len().saturating_sub(LOG_TAIL_LINES);
        eprintln!("last lines of {}:", log_path.display());
        for line in &lines[start..] {
            eprintln!("  {line}");
        }
    }
    result
}

/// Returns the workspace's `target` directory, creating it when missing.
fn workspace_target() -> PathBuf {
    let target = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("target");
    // A failure here shows up as a clearer error when the log file is created.
    let _ = fs::create_dir_all(&target);
    target
}
