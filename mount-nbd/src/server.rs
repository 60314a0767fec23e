//! `qemu-nbd` serving one image on a unix socket in a private directory.

use std::fs::{self, Permissions};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{describe_status, NbdError};
use crate::failpoint;
use crate::host::{HostProbe, SystemHost};
use crate::options::NbdOptions;
use crate::process::{
    self, stop_child, ChildProcess, CommandLine, CommandRunner, Stopped, SystemRunner,
    POLL_INTERVAL,
};

pub(crate) const QEMU_NBD: &str = "qemu-nbd";

/// How long a failed handshake waits for `qemu-nbd` to exit, so that the error can show
/// why it exited instead of the handshake failure.
const EXIT_AFTER_HANDSHAKE_FAILURE: Duration = Duration::from_secs(1);

/// A `qemu-nbd` process serving one image on a unix socket.
///
/// The socket lies in a private (mode 0700) temporary directory. The server runs with
/// `--persistent`, because the readiness check is itself a client and a non-persistent
/// server exits when its last client leaves, and with `--shared=1`, so one client at a
/// time can use the export. The process receives `SIGTERM` if the thread that started it
/// exits.
///
/// Dropping the value stops the server (`SIGTERM`, then `SIGKILL` after
/// [`NbdOptions::stop_timeout`]) and removes the directory, logging failures;
/// [`NbdServer::close`] does the same and returns them. Clients must be gone first.
#[derive(Debug)]
pub struct NbdServer {
    image: PathBuf,
    dir: PathBuf,
    socket: PathBuf,
    export_size: u64,
    stop_timeout: Duration,
    /// The running server; `None` once stopped.
    child: Option<Box<dyn ChildProcess>>,
    /// False once the directory has been removed.
    owns_dir: bool,
}

impl NbdServer {
    /// Starts `qemu-nbd` for `image` and waits until it completes an NBD handshake.
    pub fn start(image: &Path, options: &NbdOptions) -> Result<Self, NbdError> {
        Self::start_with(image, options, &SystemRunner, &SystemHost)
    }

    /// Starts the server with the given process layer and host checks.
    pub fn start_with(
        image: &Path,
        options: &NbdOptions,
        runner: &dyn CommandRunner,
        host: &dyn HostProbe,
    ) -> Result<Self, NbdError> {
        let span = tracing::info_span!(
            "start_nbd_server",
            image = %image.display(),
            format = %options.format,
            read_only = options.read_only,
        );
        let _entered = span.enter();

        let image = absolute_image(image)?;
        let dir = create_private_dir("nbd", &image)?;
        let socket = dir.join("nbd.sock");
        let command = serve_command(&image, &socket, options);

        let spawned = failpoint::check("nbd::serve").and_then(|()| runner.spawn(&command));
        let child = match spawned {
            Ok(child) => child,
            Err(source) => {
                remove_private_dir(&dir, &image).unwrap_or_else(
                    |err| tracing::warn!(error = %err, "removing the socket directory failed"),
                );
                return Err(NbdError::Spawning {
                    program: QEMU_NBD.to_owned(),
                    image,
                    source,
                });
            }
        };

        // From here on, dropping `server` stops the child and removes the directory.
        let mut server = Self {
            image,
            dir,
            socket,
            export_size: 0,
            stop_timeout: options.stop_timeout,
            child: Some(child),
            owns_dir: true,
        };
        server.export_size = server.wait_until_ready(host, options.ready_timeout)?;
        tracing::info!(
            socket = %server.socket.display(),
            export_size = server.export_size,
            pid = server.pid(),
            "qemu-nbd ready"
        );
        Ok(server)
    }

    /// Returns the unix socket the server listens on.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Returns the size of the export in bytes: the image's virtual disk size.
    pub fn export_size(&self) -> u64 {
        self.export_size
    }

    /// Returns the absolute path of the served image.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Returns the process id of `qemu-nbd`, or 0 once stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, |child| child.id())
    }

    /// Stops the server and removes its directory, returning the first failure.
    ///
    /// A server that exits with a failure status, or only after `SIGKILL`, is a failure.
    pub fn close(mut self) -> Result<(), NbdError> {
        self.shut_down()
    }

    fn wait_until_ready(
        &mut self,
        host: &dyn HostProbe,
        timeout: Duration,
    ) -> Result<u64, NbdError> {
        let started = Instant::now();
        let deadline = started + timeout;
        let child = self.child.as_mut().expect("running while starting");
        loop {
            if let Some(status) = try_wait(child.as_mut(), QEMU_NBD, &self.image)? {
                let err = NbdError::ExitedEarly {
                    program: QEMU_NBD.to_owned(),
                    image: self.image.clone(),
                    status,
                    stderr: child.stderr(),
                };
                // Reaped, and its status is in the error: nothing is left to stop.
                self.child = None;
                return Err(err);
            }

            let remaining = deadline.saturating_duration_since(Instant::now());
            match host.query_export(&self.socket, remaining.max(POLL_INTERVAL)) {
                Ok(Some(size)) => return Ok(size),
                Ok(None) => {}
                Err(err) => {
                    // A server that failed to open the image closes the connection and
                    // exits; its own message explains more than the broken handshake.
                    let exited =
                        process::wait_for_exit(child.as_mut(), EXIT_AFTER_HANDSHAKE_FAILURE)
                            .ok()
                            .flatten();
                    if let Some(status) = exited {
                        let err = NbdError::ExitedEarly {
                            program: QEMU_NBD.to_owned(),
                            image: self.image.clone(),
                            status,
                            stderr: child.stderr(),
                        };
                        self.child = None;
                        return Err(err);
                    }
                    return Err(NbdError::Negotiating {
                        image: self.image.clone(),
                        socket: self.socket.clone(),
                        reason: err.to_string(),
                        stderr: child.stderr(),
                    });
                }
            }

            if Instant::now() >= deadline {
                return Err(NbdError::NotReady {
                    program: QEMU_NBD.to_owned(),
                    image: self.image.clone(),
                    condition: format!("an NBD handshake on {}", self.socket.display()),
                    waited: started.elapsed(),
                    stderr: child.stderr(),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    fn shut_down(&mut self) -> Result<(), NbdError> {
        let stopped = match self.child.take() {
            Some(mut child) => {
                stop_helper(child.as_mut(), QEMU_NBD, &self.image, self.stop_timeout)
            }
            None => Ok(()),
        };
        let removed = if self.owns_dir {
            self.owns_dir = false;
            remove_private_dir(&self.dir, &self.image)
        } else {
            Ok(())
        };
        stopped.and(removed)
    }
}

impl Drop for NbdServer {
    fn drop(&mut self) {
        if let Err(err) = self.shut_down() {
            tracing::warn!(error = %err, "dropping an NBD server");
        }
    }
}

/// Builds the `qemu-nbd` command line that serves `image` on `socket`.
fn serve_command(image: &Path, socket: &Path, options: &NbdOptions) -> CommandLine {
    let mut socket_arg = std::ffi::OsString::from("--socket=");
    socket_arg.push(socket);
    let mut command = CommandLine::new(QEMU_NBD)
        .arg(socket_arg)
        .arg(format!("--format={}", options.format))
        .arg("--persistent")
        .arg("--shared=1")
        .arg("--cache=writeback");
    if options.read_only {
        command = command.arg("--read-only");
    }
    command.arg(image)
}

/// Builds the `qemu-nbd` command line that connects `image` to the kernel's `device`.
pub(crate) fn connect_command(image: &Path, device: &Path, options: &NbdOptions) -> CommandLine {
    let mut device_arg = std::ffi::OsString::from("--connect=");
    device_arg.push(device);
    let mut command = CommandLine::new(QEMU_NBD)
        .arg(device_arg)
        .arg(format!("--format={}", options.format))
        .arg("--cache=writeback");
    if options.read_only {
        command = command.arg("--read-only");
    }
    command.arg(image)
}

/// Resolves `image` to an absolute path without symlinks.
///
/// qemu reads a colon before the first slash as a protocol prefix (`nbd:`, `json:`), so
/// a relative name such as `a:b.qcow2` would not be read as a file. An absolute path
/// always is.
pub(crate) fn absolute_image(image: &Path) -> Result<PathBuf, NbdError> {
    fs::canonicalize(image).map_err(|source| NbdError::ResolvingImage {
        image: image.to_owned(),
        source,
    })
}

/// Creates a mode 0700 directory in the system's temporary directory, named
/// `guest-inject-<kind>-<pid>-*` so that `mount_loop::remove_stale_dirs` in a later run
/// can clear it after this process is killed.
pub(crate) fn create_private_dir(kind: &str, image: &Path) -> Result<PathBuf, NbdError> {
    let dir = tempfile::Builder::new()
        .prefix(&format!("guest-inject-{kind}-{}-", std::process::id()))
        .permissions(Permissions::from_mode(0o700))
        .tempdir()
        .map_err(|source| NbdError::CreatingRuntimeDir {
            image: image.to_owned(),
            source,
        })?;
    // Removed by hand and never recursively: a FUSE mount left inside must not be walked.
    Ok(dir.keep())
}

/// Removes a directory made by [`create_private_dir`] and the socket or mount point in
/// it, without recursing.
pub(crate) fn remove_private_dir(dir: &Path, image: &Path) -> Result<(), NbdError> {
    let removing = |path: &Path, source: io::Error| NbdError::RemovingRuntimeDir {
        dir: path.to_owned(),
        image: image.to_owned(),
        source,
    };
    for name in ["nbd.sock", "fuse"] {
        let path = dir.join(name);
        let removed = if name == "fuse" {
            fs::remove_dir(&path)
        } else {
            fs::remove_file(&path)
        };
        match removed {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => {}
            Err(err) => return Err(removing(&path, err)),
        }
    }
    fs::remove_dir(dir).map_err(|err| removing(dir, err))
}

/// Polls `child` once, mapping a `waitpid` failure to an error about `program`.
pub(crate) fn try_wait(
    child: &mut dyn ChildProcess,
    program: &str,
    image: &Path,
) -> Result<Option<std::process::ExitStatus>, NbdError> {
    child.try_wait().map_err(|source| NbdError::ProbingHost {
        check: format!("whether {program} is still running"),
        image: image.to_owned(),
        source,
    })
}

/// Stops a helper, treating a failure exit status or the need for `SIGKILL` as an error.
pub(crate) fn stop_helper(
    child: &mut dyn ChildProcess,
    program: &str,
    image: &Path,
    timeout: Duration,
) -> Result<(), NbdError> {
    let stopping = |reason: String, child: &dyn ChildProcess| NbdError::Stopping {
        program: program.to_owned(),
        image: image.to_owned(),
        reason,
        stderr: child.stderr(),
    };
    match stop_child(child, program, timeout) {
        Ok(Stopped::Exited(status)) if status.success() => Ok(()),
        Ok(Stopped::Exited(status)) => Err(stopping(
            format!("it exited with {}", describe_status(&status)),
            child,
        )),
        Ok(Stopped::Killed) => Err(stopping(
            format!(
                "it ignored SIGTERM for {} ms and was killed",
                timeout.as_millis()
            ),
            child,
        )),
        Err(err) => Err(stopping(err.to_string(), child)),
    }
}

#[cfg(test)]
#[path = "server_tests.rs"]
mod tests;
