//! Developer and CI tasks for guest-inject, run as `cargo xtask TASK` (the alias is in
//! `.cargo/config.toml`). Each task is a module; this file parses the command line, runs
//! host commands for the tasks, and turns errors into the exit status.

mod bench;
mod demo;
mod images;
mod setup;
mod test;

use std::error::Error;
use std::ffi::OsStr;
use std::io;
use std::process::{Command, ExitCode, ExitStatus};

use clap::{Parser, Subcommand};

/// Developer and CI tasks for guest-inject.
#[derive(Debug, Parser)]
#[command(name = "cargo xtask", bin_name = "cargo xtask")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Debug, Subcommand)]
enum Task {
    /// Install the Debian packages the tests need (libguestfs, qemu, nbdfuse,
    /// debootstrap, filesystem tools) when they are missing; needs root.
    Setup,
    /// Build the test images that are missing, into $GUEST_INJECT_IMAGE_DIR or
    /// target/test-images.
    Images,
    /// Run everything CI runs: setup, rustfmt, clippy, unit and property tests, then
    /// the integration tests.
    Test,
    /// Run setup, build the images, start the libguestfs appliance once to fill its
    /// cache, then run the ignored tests one at a time.
    Integration,
    /// Show guest-inject changing a test image.
    Demo,
    /// Time guest-inject against a hand-written script and virt-customize.
    Bench(bench::BenchArgs),
}

/// Errors from running a task.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TaskError {
    /// A host command could not be started.
    #[error("starting {command} failed")]
    StartingCommand {
        command: String,
        #[source]
        source: io::Error,
    },
    /// A host command exited with a failure status.
    #[error("{command} failed ({status})")]
    RunningCommand { command: String, status: ExitStatus },
    /// Installing packages needs root.
    #[error("packages are missing ({packages}): run `cargo xtask setup` as root to install them")]
    NeedsRoot { packages: String },
    /// The apt configuration could not be read or written.
    #[error("{action} {path} failed")]
    AptSources {
        action: &'static str,
        path: String,
        #[source]
        source: io::Error,
    },
    /// No Debian archive URI was found for the backports line.
    #[error(
        "no Debian archive for bookworm found in {searched}: add a bookworm-backports line by hand"
    )]
    NoDebianArchive { searched: String },
    /// A task's log file could not be written.
    #[error("{action} log file {path} failed")]
    WritingLog {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// The demo cannot go on.
    #[error("demo failed: {reason}")]
    Demo { reason: String },
    /// The benchmark cannot go on.
    #[error("benchmark failed: {reason}")]
    Bench { reason: String },
    /// A file or directory of a task could not be used.
    #[error("{action} {path} failed")]
    Io {
        action: &'static str,
        path: std::path::PathBuf,
        #[source]
        source: io::Error,
    },
    /// Building a test image failed.
    #[error("building test image {image} failed")]
    BuildingImage {
        image: &'static str,
        #[source]
        source: testkit::images::TestImageError,
    },
}

impl TaskError {
    /// Wraps an I/O error with what was being done to which path.
    pub(crate) fn io(action: &'static str, path: &std::path::Path, source: io::Error) -> Self {
        Self::Io {
            action,
            path: path.to_owned(),
            source,
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(io::stderr)
        .with_ansi(io::IsTerminal::is_terminal(&io::stderr()))
        .with_target(false)
        .init();

    let result = match cli.task {
        Task::Setup => setup::run(),
        Task::Images => images::run(),
        Task::Test => test::run(),
        Task::Integration => test::integration(),
        Task::Demo => demo::run(),
        Task::Bench(args) => bench::run(args),
    };

    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err}");
            let mut source = err.source();
            while let Some(cause) = source {
                eprintln!("  caused by: {cause}");
                source = cause.source();
            }
            ExitCode::FAILURE
        }
    }
}

/// Prints `command` with the environment it sets, then runs it with inherited stdio and
/// fails unless it exits with status 0.
pub(crate) fn run_command(command: &mut Command) -> Result<(), TaskError> {
    let command_line = describe(command);
    eprintln!("$ {command_line}");
    let status = command
        .status()
        .map_err(|source| TaskError::StartingCommand {
            command: command_line.clone(),
            source,
        })?;
    if !status.success() {
        return Err(TaskError::RunningCommand {
            command: command_line,
            status,
        });
    }
    Ok(())
}

/// Returns a command for the cargo that runs this task, so a toolchain override applies
/// to the nested builds too.
pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

/// Returns the command line with the environment variables it sets in front, quoting
/// words that contain white space.
pub(crate) fn describe(command: &Command) -> String {
    let mut words = Vec::new();
    for (name, value) in command.get_envs() {
        if let Some(value) = value {
            words.push(format!("{}={}", name.to_string_lossy(), quote(value)));
        }
    }
    let program = command.get_program();
    let program = if program == std::env::var_os("CARGO").unwrap_or_default() {
        OsStr::new("cargo")
    } else {
        program
    };
    words.push(quote(program));
    words.extend(command.get_args().map(quote));
    words.join(" ")
}

fn quote(word: &OsStr) -> String {
    let word = word.to_string_lossy();
    if word.is_empty() || word.contains(char::is_whitespace) {
        format!("'{word}'")
    } else {
        word.into_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn describe_puts_environment_first() {
        let mut command = Command::new("apt-get");
        command
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y"]);

        assert_eq!(
            describe(&command),
            "DEBIAN_FRONTEND=noninteractive apt-get install -y"
        );
    }

    #[test]
    fn describe_quotes_words_with_spaces() {
        let mut command = Command::new("debugfs");
        command.args(["-R", "cat /etc/shadow"]);

        assert_eq!(describe(&command), "debugfs -R 'cat /etc/shadow'");
    }

    #[test]
    fn failed_command_returns_status() {
        let err = run_command(&mut Command::new("false")).unwrap_err();

        assert!(matches!(err, TaskError::RunningCommand { .. }), "{err}");
    }

    #[test]
    fn cli_parses_every_task() {
        for task in ["setup", "images", "test", "integration", "demo", "bench"] {
            assert!(
                Cli::try_parse_from(["cargo xtask", task]).is_ok(),
                "{task} does not parse"
            );
        }
    }
}
