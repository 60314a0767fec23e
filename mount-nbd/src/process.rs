//! The process layer: starting and stopping the helper programs (`qemu-nbd`, `nbdfuse`,
//! `fusermount3`) behind the [`CommandRunner`] and [`ChildProcess`] traits, so that tests
//! can replace them.

use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::process::{Command, ExitStatus, Stdio};
use std::sync::{Arc, Condvar, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use nix::sys::signal::{self, Signal};
use nix::unistd::Pid;

/// How long the polling loops here and in the callers sleep between checks.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(10);

/// Most bytes of a child's standard error kept for error messages; later output is
/// dropped.
const STDERR_CAPTURE_BYTES: usize = 64 * 1024;

/// How long [`ChildProcess::stderr`] waits for the rest of an exited child's output.
const STDERR_DRAIN_TIMEOUT: Duration = Duration::from_secs(1);

/// A program and its arguments, run without a shell.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandLine {
    /// The program, looked up in `PATH`.
    pub program: String,
    /// The arguments, in order.
    pub args: Vec<OsString>,
}

impl CommandLine {
    /// Creates a command line for `program` with no arguments.
    pub fn new(program: &str) -> Self {
        Self {
            program: program.to_owned(),
            args: Vec::new(),
        }
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl AsRef<OsStr>) -> Self {
        self.args.push(arg.as_ref().to_owned());
        self
    }

    /// Returns true when one argument equals `arg`.
    pub fn has_arg(&self, arg: &str) -> bool {
        self.args.iter().any(|existing| existing == arg)
    }
}

impl fmt::Display for CommandLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.program)?;
        for arg in &self.args {
            write!(f, " {}", arg.to_string_lossy())?;
        }
        Ok(())
    }
}

/// The result of a command run to completion.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CommandOutput {
    /// The exit status.
    pub status: ExitStatus,
    /// Its standard error, lossily decoded.
    pub stderr: String,
}

/// Starts and runs helper programs.
#[cfg_attr(test, mockall::automock)]
pub trait CommandRunner: Send + Sync + fmt::Debug {
    /// Starts `command` in the background.
    ///
    /// The child gets no standard input or output, and its standard error is captured. It
    /// runs in a process group of its own, so a terminal's Ctrl-C reaches only this
    /// process, which then stops the child in order. It receives `SIGTERM` when the thread
    /// that started it exits.
    fn spawn(&self, command: &CommandLine) -> io::Result<Box<dyn ChildProcess>>;

    /// Runs `command` to completion and returns its exit status and standard error.
    fn run(&self, command: &CommandLine) -> io::Result<CommandOutput>;
}

/// A started helper process.
#[cfg_attr(test, mockall::automock)]
pub trait ChildProcess: Send + fmt::Debug {
    /// Returns the process id.
    fn id(&self) -> u32;

    /// Reaps the child if it has exited and returns its status, without blocking.
    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>>;

    /// Sends `signal` to the child; does nothing once the child has been reaped.
    fn signal(&mut self, signal: Signal) -> io::Result<()>;

    /// Returns the child's standard error captured so far, lossily decoded.
    fn stderr(&self) -> String;
}

/// The [`CommandRunner`] that starts real processes.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemRunner;

impl CommandRunner for SystemRunner {
    fn spawn(&self, command: &CommandLine) -> io::Result<Box<dyn ChildProcess>> {
        let mut process = Command::new(&command.program);
        process
            .args(&command.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .process_group(0);

        let parent = std::process::id();
        // SAFETY: the closure runs in the child between fork and exec and calls only the
        // async-signal-safe functions prctl, getppid and raise.
        unsafe {
            process.pre_exec(move || set_parent_death_signal(parent));
        }

        let mut child = process.spawn()?;
        let stderr = child.stderr.take().expect("stderr was piped");
        let capture = StderrCapture::start(stderr);
        Ok(Box::new(SystemChild {
            child,
            status: None,
            capture,
        }))
    }

    fn run(&self, command: &CommandLine) -> io::Result<CommandOutput> {
        let output = Command::new(&command.program)
            .args(&command.args)
            .stdin(Stdio::null())
            .output()?;
        Ok(CommandOutput {
            status: output.status,
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// Asks the kernel to send `SIGTERM` to this (child) process when the thread that forked
/// it exits, and covers the case where the parent has already gone.
fn set_parent_death_signal(parent: u32) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes the signal number as its only argument.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // The parent may have exited before prctl; then no signal will ever come.
    // SAFETY: getppid cannot fail.
    let current_parent = unsafe { libc::getppid() };
    if u32::try_from(current_parent).ok() != Some(parent) {
        // SAFETY: raise only sends a signal to this process.
        unsafe { libc::raise(libc::SIGTERM) };
    }
    Ok(())
}

/// A real child process with its captured standard error.
#[derive(Debug)]
struct SystemChild {
    child: std::process::Child,
    /// The exit status once reaped; the pid must not be signalled after that, because the
    /// kernel may have given it to another process.
    status: Option<ExitStatus>,
    capture: StderrCapture,
}

impl ChildProcess for SystemChild {
    fn id(&self) -> u32 {
        self.child.id()
    }

    fn try_wait(&mut self) -> io::Result<Option<ExitStatus>> {
        if self.status.is_none() {
            self.status = self.child.try_wait()?;
        }
        Ok(self.status)
    }

    fn signal(&mut self, signal: Signal) -> io::Result<()> {
        if self.status.is_some() {
            return Ok(());
        }
        let pid = i32::try_from(self.child.id()).expect("process ids fit in pid_t");
        signal::kill(Pid::from_raw(pid), signal).map_err(io::Error::from)
    }

    fn stderr(&self) -> String {
        if self.status.is_some() {
            self.capture.wait_for_end(STDERR_DRAIN_TIMEOUT);
        }
        self.capture.text()
    }
}

/// Standard error of a child, read into memory by a background thread so the pipe never
/// fills up and blocks the child.
#[derive(Debug, Clone)]
struct StderrCapture {
    state: Arc<(Mutex<CaptureState>, Condvar)>,
}

#[derive(Debug, Default)]
struct CaptureState {
    bytes: Vec<u8>,
    ended: bool,
}

impl StderrCapture {
    fn start(mut stderr: impl Read + Send + 'static) -> Self {
        let capture = Self {
            state: Arc::new((Mutex::new(CaptureState::default()), Condvar::new())),
        };
        let state = Arc::clone(&capture.state);
        thread::spawn(move || {
            let mut buffer = [0u8; 4096];
            loop {
                let count = match stderr.read(&mut buffer) {
                    Ok(0) | Err(_) => break,
                    Ok(count) => count,
                };
                let mut locked = state.0.lock().unwrap_or_else(|poison| poison.into_inner());
                let room = STDERR_CAPTURE_BYTES.saturating_sub(locked.bytes.len());
                locked.bytes.extend_from_slice(&buffer[..count.min(room)]);
            }
            let mut locked = state.0.lock().unwrap_or_else(|poison| poison.into_inner());
            locked.ended = true;
            state.1.notify_all();
        });
        capture
    }

    /// Waits until the child closed its end of the pipe, or `timeout` passed.
    fn wait_for_end(&self, timeout: Duration) {
        let (lock, ended) = &*self.state;
        let locked = lock.lock().unwrap_or_else(|poison| poison.into_inner());
        let _waited = ended
            .wait_timeout_while(locked, timeout, |state| !state.ended)
            .unwrap_or_else(|poison| poison.into_inner());
    }

    fn text(&self) -> String {
        let locked = self
            .state
            .0
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        String::from_utf8_lossy(&locked.bytes).into_owned()
    }
}

/// Polls `child` until it exits or `timeout` passes; returns its status, or `None` on
/// timeout.
pub(crate) fn wait_for_exit(
    child: &mut dyn ChildProcess,
    timeout: Duration,
) -> io::Result<Option<ExitStatus>> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(status) = child.try_wait()? {
            return Ok(Some(status));
        }
        if Instant::now() >= deadline {
            return Ok(None);
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// The way a child stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// It exited within the grace period after `SIGTERM`, or before it.
    Exited(ExitStatus),
    /// It ignored `SIGTERM` for the grace period and was killed.
    Killed,
}

/// Stops `child`: `SIGTERM`, up to `grace` to exit, then `SIGKILL` and another `grace`
/// to be reaped. Fails when the child cannot be signalled or does not go away at all.
pub(crate) fn stop_child(
    child: &mut dyn ChildProcess,
    program: &str,
    grace: Duration,
) -> io::Result<Stopped> {
    if let Some(status) = child.try_wait()? {
        return Ok(Stopped::Exited(status));
    }

    child.signal(Signal::SIGTERM)?;
    if let Some(status) = wait_for_exit(child, grace)? {
        tracing::debug!(program, pid = child.id(), %status, "helper stopped");
        return Ok(Stopped::Exited(status));
    }

    tracing::warn!(
        program,
        pid = child.id(),
        grace_ms = grace.as_millis() as u64,
        "helper ignored SIGTERM, killing it"
    );
    child.signal(Signal::SIGKILL)?;
    match wait_for_exit(child, grace)? {
        Some(_) => Ok(Stopped::Killed),
        None => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("{program} (pid {}) did not exit after SIGKILL", child.id()),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    /// An exit status that `wait` reports for exit code `code`.
    fn exit_code(code: i32) -> ExitStatus {
        ExitStatus::from_raw(code << 8)
    }

    #[test]
    fn command_line_display_joins_arguments() {
        let command = CommandLine::new("qemu-nbd").arg("--read-only").arg("/a b");
        assert_eq!(command.to_string(), "qemu-nbd --read-only /a b");
    }

    #[test]
    fn stop_child_already_exited_sends_no_signal() {
        let mut child = MockChildProcess::new();
        child
            .expect_try_wait()
            .return_once(|| Ok(Some(exit_code(0))));
        child.expect_signal().never();

        let stopped = stop_child(&mut child, "qemu-nbd", Duration::from_millis(50)).unwrap();

        assert_eq!(stopped, Stopped::Exited(exit_code(0)));
    }

    #[test]
    fn stop_child_exiting_on_sigterm_is_not_killed() {
        let mut child = MockChildProcess::new();
        let mut polls = 0;
        child.expect_try_wait().returning(move || {
            polls += 1;
            Ok((polls > 2).then(|| exit_code(0)))
        });
        child
            .expect_signal()
            .withf(|signal| *signal == Signal::SIGTERM)
            .times(1)
            .returning(|_| Ok(()));
        child.expect_id().return_const(42u32);

        let stopped = stop_child(&mut child, "qemu-nbd", Duration::from_secs(5)).unwrap();

        assert_eq!(stopped, Stopped::Exited(exit_code(0)));
    }

    #[test]
    fn stop_child_ignoring_sigterm_is_killed() {
        let mut child = MockChildProcess::new();
        let killed = Arc::new(Mutex::new(false));
        let killed_in_wait = Arc::clone(&killed);
        child.expect_try_wait().returning(move || {
            let killed = *killed_in_wait.lock().unwrap();
            Ok(killed.then(|| ExitStatus::from_raw(libc::SIGKILL)))
        });
        let killed_in_signal = Arc::clone(&killed);
        child.expect_signal().times(2).returning(move |signal| {
            if signal == Signal::SIGKILL {
                *killed_in_signal.lock().unwrap() = true;
            }
            Ok(())
        });
        child.expect_id().return_const(42u32);

        let stopped = stop_child(&mut child, "nbdfuse", Duration::from_millis(30)).unwrap();

        assert_eq!(stopped, Stopped::Killed);
    }

    #[test]
    fn stop_child_surviving_sigkill_fails() {
        let mut child = MockChildProcess::new();
        child.expect_try_wait().returning(|| Ok(None));
        child.expect_signal().times(2).returning(|_| Ok(()));
        child.expect_id().return_const(42u32);

        let err = stop_child(&mut child, "nbdfuse", Duration::from_millis(20)).unwrap_err();

        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn stop_child_signal_failure_is_returned() {
        let mut child = MockChildProcess::new();
        child.expect_try_wait().returning(|| Ok(None));
        child
            .expect_signal()
            .returning(|_| Err(io::Error::from_raw_os_error(libc::EPERM)));

        let err = stop_child(&mut child, "qemu-nbd", Duration::from_millis(20)).unwrap_err();

        assert_eq!(err.raw_os_error(), Some(libc::EPERM));
    }

    #[test]
    fn system_runner_captures_stderr_of_exited_child() {
        let command = CommandLine::new("sh")
            .arg("-c")
            .arg("echo broken image >&2; exit 3");

        let mut child = SystemRunner.spawn(&command).unwrap();
        let status = wait_for_exit(child.as_mut(), Duration::from_secs(10))
            .unwrap()
            .unwrap();

        assert_eq!(status.code(), Some(3));
        assert_eq!(child.stderr(), "broken image\n");
    }

    #[test]
    fn system_runner_child_stops_on_sigterm() {
        let command = CommandLine::new("sleep").arg("60");

        let mut child = SystemRunner.spawn(&command).unwrap();
        let stopped = stop_child(child.as_mut(), "sleep", Duration::from_secs(10)).unwrap();

        assert_eq!(
            stopped,
            Stopped::Exited(ExitStatus::from_raw(libc::SIGTERM))
        );
    }

    #[test]
    fn system_runner_child_gets_sigterm_when_spawning_thread_exits() {
        let child = thread::spawn(|| SystemRunner.spawn(&CommandLine::new("sleep").arg("60")))
            .join()
            .unwrap()
            .unwrap();
        let mut child = child;

        let status = wait_for_exit(child.as_mut(), Duration::from_secs(10))
            .unwrap()
            .expect("the child outlived the thread that started it");

        assert_eq!(status.signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn system_runner_run_reports_status_and_stderr() {
        let command = CommandLine::new("sh").arg("-c").arg("echo no >&2; exit 1");

        let output = SystemRunner.run(&command).unwrap();

        assert_eq!(output.status.code(), Some(1));
        assert_eq!(output.stderr, "no\n");
    }
}
