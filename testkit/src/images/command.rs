//! Running the host tools that build and inspect images, with errors that name the
//! command, its stderr, and the Debian package to install when the tool is missing.

use std::ffi::OsStr;
use std::io::{self, Write};
use std::process::{Command, Output, Stdio};

use super::{Result, TestImageError};

/// How many trailing lines of stderr an error keeps, so a chatty tool such as
/// `debootstrap` does not flood the message.
const STDERR_TAIL_LINES: usize = 20;

/// Returns a command for `program` with a fixed locale, so parsed output is stable.
pub(super) fn new(program: &str) -> Command {
    let mut command = Command::new(program);
    command.env("LC_ALL", "C");
    command
}

/// Runs `command` with no input and returns its output when it exits with status 0.
pub(super) fn run(command: &mut Command) -> Result<Output> {
    run_with_input(command, None)
}

/// Runs `command`, writes `input` to its stdin, and returns its output when it exits
/// with status 0.
pub(super) fn run_with_input(command: &mut Command, input: Option<&[u8]>) -> Result<Output> {
    let command_line = describe(command);
    tracing::debug!(command = %command_line, "running");

    command
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = command
        .spawn()
        .map_err(|source| spawn_error(command, &command_line, source))?;

    if let Some(input) = input {
        let mut stdin = child.stdin.take().expect("stdin was set to piped");
        stdin
            .write_all(input)
            .map_err(|source| TestImageError::StartingCommand {
                command: command_line.clone(),
                source,
            })?;
    }
    let output = child
        .wait_with_output()
        .map_err(|source| TestImageError::StartingCommand {
            command: command_line.clone(),
            source,
        })?;

    if !output.status.success() {
        return Err(TestImageError::RunningCommand {
            command: command_line,
            status: output.status,
            stderr: stderr_tail(&output),
        });
    }
    Ok(output)
}

/// Returns the last lines of the command's stderr, or of its stdout when stderr is empty.
pub(super) fn stderr_tail(output: &Output) -> String {
    let text = if output.stderr.iter().all(u8::is_ascii_whitespace) {
        String::from_utf8_lossy(&output.stdout)
    } else {
        String::from_utf8_lossy(&output.stderr)
    };
    let lines: Vec<&str> = text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .collect();
    let start = lines.len().saturating_sub(STDERR_TAIL_LINES);
    lines[start..].join("\n")
}

/// Returns the command line as one string for messages, with arguments that contain
/// white space in single quotes.
pub(super) fn describe(command: &Command) -> String {
    let mut text = command.get_program().to_string_lossy().into_owned();
    for arg in command.get_args() {
        let arg = arg.to_string_lossy();
        text.push(' ');
        if arg.is_empty() || arg.contains(char::is_whitespace) {
            text.push_str(&format!("'{arg}'"));
        } else {
            text.push_str(&arg);
        }
    }
    text
}

fn spawn_error(command: &Command, command_line: &str, source: io::Error) -> TestImageError {
    let program = command.get_program();
    if source.kind() == io::ErrorKind::NotFound {
        return TestImageError::MissingTool {
            tool: program.to_string_lossy().into_owned(),
            package: package_of(program),
        };
    }
    TestImageError::StartingCommand {
        command: command_line.to_owned(),
        source,
    }
}

/// Returns the Debian package that ships `program`, for the tools this module runs.
fn package_of(program: &OsStr) -> Option<&'static str> {
    match program.to_str()? {
        "debootstrap" => Some("debootstrap"),
        "sfdisk" => Some("fdisk"),
        "mkfs.ext4" | "debugfs" => Some("e2fsprogs"),
        "qemu-img" => Some("qemu-utils"),
        "cp" | "dd" => Some("coreutils"),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_tool_names_package() {
        let mut command = new("sfdisk-that-does-not-exist");

        let err = run(&mut command).unwrap_err();

        assert!(matches!(err, TestImageError::MissingTool { .. }));
    }

    #[test]
    fn package_of_maps_e2fsprogs_tools() {
        assert_eq!(package_of(OsStr::new("debugfs")), Some("e2fsprogs"));
        assert_eq!(package_of(OsStr::new("mkfs.ext4")), Some("e2fsprogs"));
    }

    #[test]
    fn failed_command_error_contains_stderr() {
        let mut command = new("sh");
        command.args(["-c", "echo broken disk >&2; exit 3"]);

        let err = run(&mut command).unwrap_err().to_string();

        assert!(err.contains("broken disk"), "{err}");
        assert!(err.starts_with("sh -c"), "{err}");
    }

    #[test]
    fn input_reaches_stdin() {
        let mut command = new("cat");

        let output = run_with_input(&mut command, Some(b"label: gpt\n")).unwrap();

        assert_eq!(output.stdout, b"label: gpt\n");
    }
}
