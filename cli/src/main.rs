//! `guest-inject`: writes SSH keys, the root password, network settings, metadata and files
//! into a VM disk image before its first boot.
//!
//! Exit status: 0 when everything requested was applied, 1 when the request failed, 2 for a
//! usage error.

mod args;
mod commands;
mod failure;
mod progress;
mod transaction;

use std::process::ExitCode;

use clap::Parser;

// The backends register themselves with the registry when linked; naming the crates here
// makes sure the linker keeps them.
use vfs_guestfs as _;
use vfs_localmount as _;

use args::{Cli, Command};

fn main() -> ExitCode {
    // Reads FAILPOINTS, such as `loop::attach=return`, and keeps the failpoints set until
    // the end of main.
    #[cfg(feature = "failpoints")]
    let _failpoints = fail::FailScenario::setup();

    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help and version on stdout with status 0, usage errors with 2.
            let _ = err.print();
            return ExitCode::from(err.exit_code().clamp(0, 255) as u8);
        }
    };
    init_logging(cli.verbose, cli.quiet);
    if matches!(cli.command, Command::Inject(_) | Command::Inspect(_)) {
        isolate_mounts();
    }

    let result = match cli.command {
        Command::Inject(args) => commands::inject::run(args),
        Command::Inspect(args) => commands::inspect::run(args),
        Command::Backends(args) => commands::backends::run(args),
    };
    match result {
        Ok(code) => code,
        Err(failure) => failure.report(),
    }
}

/// Moves this process into a mount namespace of its own, when running as root, so that
/// the host mounts the localmount backend makes vanish with the process even when it is
/// killed. Without this, the kernel keeps the mounts of a killed process, and the mounts
/// keep their loop devices attached.
///
/// Must run before any thread starts, because `unshare(CLONE_NEWNS)` fails in a process
/// with several threads. Mounts are made slaves rather than private: none of ours reaches
/// the host, but a host filesystem unmounted meanwhile is unmounted here too instead of
/// staying busy until this process exits. Mounts made here are invisible to other
/// processes. A failure only warns, since mounts in the host's namespace still work.
fn isolate_mounts() {
    use nix::mount::{mount, MsFlags};
    use nix::sched::{unshare, CloneFlags};

    if !nix::unistd::geteuid().is_root() {
        return;
    }
    if let Err(errno) = unshare(CloneFlags::CLONE_NEWNS) {
        tracing::warn!(error = %errno, "creating a private mount namespace failed; mounts of a killed run may stay behind");
        return;
    }
    let flags = MsFlags::MS_REC | MsFlags::MS_SLAVE;
    if let Err(errno) = mount(None::<&str>, "/", None::<&str>, flags, None::<&str>) {
        tracing::warn!(error = %errno, "making mounts one-way in the new mount namespace failed; mounts may reach the host");
        return;
    }
    tracing::debug!("running in a private mount namespace");
}

/// Sends `tracing` output to stderr: warnings by default, more with `-v`, errors only with
/// `-q`; `RUST_LOG` overrides both.
fn init_logging(verbose: u8, quiet: bool) {
    use tracing_subscriber::EnvFilter;

    let default_level = match (quiet, verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        (false, 2) => "debug",
        (false, _) => "trace",
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
}
