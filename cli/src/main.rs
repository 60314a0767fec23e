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
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            // clap prints help and version on stdout with status 0, usage errors with 2.
            let _ = err.print();
            return ExitCode::from(err.exit_code().clamp(0, 255) as u8);
        }
    };
    init_logging(cli.verbose, cli.quiet);

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
