//! Attaching a served image to the host, through the kernel NBD client or `nbdfuse`.

use std::fs;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use crate::error::{describe_status, NbdError};
use crate::failpoint;
use crate::host::{HostProbe, SystemHost};
use crate::options::{AttachMethod, NbdOptions};
use crate::process::{self, ChildProcess, CommandLine, CommandRunner, SystemRunner, POLL_INTERVAL};
use crate::server::{
    absolute_image, connect_command, create_private_dir, remove_private_dir, stop_helper, try_wait,
    NbdServer, QEMU_NBD,
};

const NBDFUSE: &str = "nbdfuse";
const FUSERMOUNT: &str = "fusermount3";

/// Name of the file that `nbdfuse` shows inside its mount.
const FUSE_FILE_NAME: &str = "disk";

/// Maximum number of free `/dev/nbdN` devices tried before giving up; each attempt lost to
/// another process that connected the same device first costs one.
pub const MAX_NBD_DEVICE_ATTEMPTS: u32 = 8;

/// The form an attached image takes on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttachedExport {
    /// A kernel NBD device such as `/dev/nbd0`.
    BlockDevice(PathBuf),
    /// A regular file on a FUSE mount, served by `nbdfuse`.
    FuseFile(PathBuf),
}

impl AttachedExport {
    /// Returns the device or file path.
    pub fn path(&self) -> &Path {
        match self {
            Self::BlockDevice(path) | Self::FuseFile(path) => path,
        }
    }
}

/// An image attached to the host as a block device or a file, ready for a loop device.
///
/// With [`AttachedExport::BlockDevice`], `qemu-nbd --connect` serves a kernel NBD device.
/// With [`AttachedExport::FuseFile`], an [`NbdServer`] serves the image on a private socket
/// and `nbdfuse` shows the export as a file in a private (mode 0700) directory. Both
/// helpers receive `SIGTERM` if the thread that attached the image exits.
///
/// # Teardown order
///
/// The caller must first unmount every filesystem and detach every loop device that uses
/// the export: a FUSE mount still in use cannot be unmounted, and the kernel device would
/// be pulled from under its users. Then dropping the value (or [`NbdAttachment::close`],
/// which reports failures) unmounts the FUSE file (`fusermount3 -u`), stops `nbdfuse`,
/// stops `qemu-nbd` and removes the private directories, or for the kernel device runs
/// `qemu-nbd --disconnect` and stops `qemu-nbd`.
#[derive(Debug)]
pub struct NbdAttachment {
    image: PathBuf,
    export: AttachedExport,
    size: u64,
    stop_timeout: Duration,
    runner: Arc<dyn CommandRunner>,
    host: Arc<dyn HostProbe>,
    helpers: Helpers,
}

/// The processes and directories behind an attachment, released in this order.
#[derive(Debug)]
enum Helpers {
    Kernel {
        device: PathBuf,
        number: u32,
        /// `qemu-nbd --connect`; `None` once stopped.
        qemu_nbd: Option<Box<dyn ChildProcess>>,
    },
    Fuse {
        /// Private directory holding the mount point.
        dir: PathBuf,
        mount_point: PathBuf,
        /// `None` once stopped.
        nbdfuse: Option<Box<dyn ChildProcess>>,
        /// `None` once stopped.
        server: Option<NbdServer>,
        /// False once the directory has been removed.
        owns_dir: bool,
    },
}

impl NbdAttachment {
    /// Attaches `image` by the method `options` selects.
    pub fn attach(image: &Path, options: &NbdOptions) -> Result<Self, NbdError> {
        Self::attach_with(image, options, Arc::new(SystemRunner), Arc::new(SystemHost))
    }

    /// Attaches `image` with the given process layer and host checks.
    pub fn attach_with(
        image: &Path,
        options: &NbdOptions,
        runner: Arc<dyn CommandRunner>,
        host: Arc<dyn HostProbe>,
    ) -> Result<Self, NbdError> {
        let span = tracing::info_span!(
            "attach_nbd",
            image = %image.display(),
            format = %options.format,
            read_only = options.read_only,
        );
        let _entered = span.enter();

        let method = match options.method {
            AttachMethod::Auto => choose_method(image, host.as_ref())?,
            method => {
                tracing::info!(%method, "attach method given by the caller");
                method
            }
        };
        let attachment = match method {
            AttachMethod::Kernel => Self::attach_kernel(image, options, runner, host)?,
            AttachMethod::Fuse | AttachMethod::Auto => {
                Self::attach_fuse(image, options, runner, host)?
            }
        };
        tracing::info!(
            path = %attachment.path().display(),
            size = attachment.size,
            "image attached"
        );
        Ok(attachment)
    }

    /// Returns the attached device or file.
    pub fn export(&self) -> &AttachedExport {
        &self.export
    }

    /// Returns the path of the attached device or file.
    pub fn path(&self) -> &Path {
        self.export.path()
    }

    /// Returns the size of the export in bytes: the image's virtual disk size.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Returns the absolute path of the attached image.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Returns the unix socket `qemu-nbd` serves on, for a FUSE attachment.
    pub fn socket(&self) -> Option<&Path> {
        match &self.helpers {
            Helpers::Fuse {
                server: Some(server),
                ..
            } => Some(server.socket()),
            _ => None,
        }
    }

    /// Detaches the image and stops the helpers, returning the first failure.
    ///
    /// Every step runs even after an earlier one failed. See the type's documentation for
    /// what the caller must release first.
    pub fn close(mut self) -> Result<(), NbdError> {
        self.tear_down()
    }

    fn attach_fuse(
        image: &Path,
        options: &NbdOptions,
        runner: Arc<dyn CommandRunner>,
        host: Arc<dyn HostProbe>,
    ) -> Result<Self, NbdError> {
        let server = NbdServer::start_with(image, options, runner.as_ref(), host.as_ref())?;
        let image = server.image().to_owned();
        let export_size = server.export_size();

        let dir = create_private_dir("fuse", &image)?;
        let mount_point = dir.join("fuse");
        let file = mount_point.join(FUSE_FILE_NAME);
        let mut attachment = Self {
            image: image.clone(),
            export: AttachedExport::FuseFile(file.clone()),
            size: export_size,
            stop_timeout: options.stop_timeout,
            runner: Arc::clone(&runner),
            host: Arc::clone(&host),
            helpers: Helpers::Fuse {
                dir,
                mount_point: mount_point.clone(),
                nbdfuse: None,
                server: Some(server),
                owns_dir: true,
            },
        };
        // From here on, dropping `attachment` releases what has been set up so far.

        fs::create_dir(&mount_point).map_err(|source| NbdError::CreatingRuntimeDir {
            image: image.clone(),
            source,
        })?;
        let Helpers::Fuse {
            server: Some(server),
            ..
        } = &attachment.helpers
        else {
            unreachable!("set up above");
        };
        let command = fuse_command(&file, server.socket(), options.read_only);
        let child = failpoint::check("nbd::fuse")
            .and_then(|()| runner.spawn(&command))
            .map_err(|source| NbdError::Spawning {
                program: NBDFUSE.to_owned(),
                image: image.clone(),
                source,
            })?;
        let Helpers::Fuse { nbdfuse, .. } = &mut attachment.helpers else {
            unreachable!("set up above");
        };
        let nbdfuse = nbdfuse.insert(child);

        let ready = wait_for_fuse_file(
            nbdfuse.as_mut(),
            host.as_ref(),
            &image,
            &file,
            export_size,
            options.ready_timeout,
        );
        if let Err(err) = ready {
            attachment.forget_exited_helper(&err);
            return Err(err);
        }
        Ok(attachment)
    }

    fn attach_kernel(
        image: &Path,
        options: &NbdOptions,
        runner: Arc<dyn CommandRunner>,
        host: Arc<dyn HostProbe>,
    ) -> Result<Self, NbdError> {
        let image = absolute_image(image)?;
        let probing = |check: String| {
            let image = image.clone();
            move |source| NbdError::ProbingHost {
                check,
                image,
                source,
            }
        };
        let numbers = host
            .kernel_nbd_devices()
            .map_err(probing("the kernel NBD devices".into()))?;

        let mut attempts = 0;
        for number in numbers {
            let device = PathBuf::from(format!("/dev/nbd{number}"));
            let owner = host
                .nbd_device_owner(number)
                .map_err(probing(format!("whether {} is free", device.display())))?;
            if owner.is_some() {
                continue;
            }
            if attempts == MAX_NBD_DEVICE_ATTEMPTS {
                break;
            }
            attempts += 1;

            let command = connect_command(&image, &device, options);
            let child = runner
                .spawn(&command)
                .map_err(|source| NbdError::Spawning {
                    program: QEMU_NBD.to_owned(),
                    image: image.clone(),
                    source,
                })?;
            let mut attachment = Self {
                image: image.clone(),
                export: AttachedExport::BlockDevice(device.clone()),
                size: 0,
                stop_timeout: options.stop_timeout,
                runner: Arc::clone(&runner),
                host: Arc::clone(&host),
                helpers: Helpers::Kernel {
                    device: device.clone(),
                    number,
                    qemu_nbd: Some(child),
                },
            };
            let ready = attachment.wait_for_kernel_device(options.ready_timeout);
            if let Err(err) = &ready {
                attachment.forget_exited_helper(err);
            }
            match ready? {
                Some(size) => {
                    attachment.size = size;
                    return Ok(attachment);
                }
                None => {
                    tracing::debug!(device = %device.display(), attempt = attempts, "another process connected the NBD device first, trying the next one");
                    attachment.stop_race_loser();
                }
            }
        }

        Err(NbdError::NoFreeNbdDevice { image, attempts })
    }

    /// Waits until this attachment's `qemu-nbd` serves its kernel device, and returns the
    /// device size, or `None` when another process connected the device first.
    fn wait_for_kernel_device(&mut self, timeout: Duration) -> Result<Option<u64>, NbdError> {
        let Helpers::Kernel {
            device,
            number,
            qemu_nbd: Some(child),
        } = &mut self.helpers
        else {
            unreachable!("called right after spawning");
        };
        let number = *number;
        let probing = |check: String, source| NbdError::ProbingHost {
            check,
            image: self.image.clone(),
            source,
        };
        let started = Instant::now();
        let deadline = started + timeout;
        loop {
            let exited = try_wait(child.as_mut(), QEMU_NBD, &self.image)?;
            let owner = self
                .host
                .nbd_device_owner(number)
                .map_err(|source| probing(format!("the owner of {}", device.display()), source))?;
            let ours = child.id();
            match (exited, owner) {
                (_, Some(other)) if other != ours => return Ok(None),
                (Some(status), _) => {
                    return Err(NbdError::ExitedEarly {
                        program: QEMU_NBD.to_owned(),
                        image: self.image.clone(),
                        status,
                        stderr: child.stderr(),
                    });
                }
                (None, Some(_)) => {
                    let size = self.host.nbd_device_size(number).map_err(|source| {
                        probing(format!("the size of {}", device.display()), source)
                    })?;
                    if size > 0 {
                        return Ok(Some(size));
                    }
                }
                (None, None) => {}
            }

            if Instant::now() >= deadline {
                return Err(NbdError::NotReady {
                    program: QEMU_NBD.to_owned(),
                    image: self.image.clone(),
                    condition: format!("{} to be connected", device.display()),
                    waited: started.elapsed(),
                    stderr: child.stderr(),
                });
            }
            thread::sleep(POLL_INTERVAL);
        }
    }

    /// Drops the helper that `err` reports as exited early: it has been reaped and its
    /// status is in the error, so teardown must not report it again.
    fn forget_exited_helper(&mut self, err: &NbdError) {
        if !matches!(err, NbdError::ExitedEarly { .. }) {
            return;
        }
        match &mut self.helpers {
            Helpers::Kernel { qemu_nbd, .. } => *qemu_nbd = None,
            Helpers::Fuse { nbdfuse, .. } => *nbdfuse = None,
        }
    }

    /// Stops this attachment's `qemu-nbd` after another process connected its device
    /// first; the helper's failure is expected and only logged.
    fn stop_race_loser(&mut self) {
        let Helpers::Kernel { qemu_nbd, .. } = &mut self.helpers else {
            unreachable!("only called for kernel attachments");
        };
        if let Some(mut child) = qemu_nbd.take() {
            if let Err(err) = process::stop_child(child.as_mut(), QEMU_NBD, self.stop_timeout) {
                tracing::warn!(error = %err, "stopping qemu-nbd after a lost NBD device race failed");
            }
        }
    }

    fn tear_down(&mut self) -> Result<(), NbdError> {
        let span = tracing::debug_span!("detach_nbd", image = %self.image.display());
        let _entered = span.enter();

        let result = match &mut self.helpers {
            Helpers::Kernel {
                device,
                number,
                qemu_nbd,
            } => {
                let Some(mut child) = qemu_nbd.take() else {
                    return Ok(());
                };
                let (device, number) = (device.clone(), *number);
                self.tear_down_kernel(&device, number, child.as_mut())
            }
            Helpers::Fuse { .. } => self.tear_down_fuse(),
        };
        if result.is_ok() {
            tracing::info!("image detached");
        }
        result
    }

    fn tear_down_fuse(&mut self) -> Result<(), NbdError> {
        let Helpers::Fuse {
            dir,
            mount_point,
            nbdfuse,
            server,
            owns_dir,
        } = &mut self.helpers
        else {
            unreachable!("only called for FUSE attachments");
        };
        let mut first_error: Option<NbdError> = None;
        let mut record = |result: Result<(), NbdError>| {
            if let Err(err) = result {
                tracing::warn!(error = %err, "detaching the image");
                first_error.get_or_insert(err);
            }
        };

        if let Some(mut child) = nbdfuse.take() {
            // A normal (not lazy) unmount fails while a loop device still uses the file,
            // and that failure is returned to the caller.
            let mut unmounted = false;
            if is_mounted(self.host.as_ref(), mount_point, &self.image) {
                let result = run_detach(
                    self.runner.as_ref(),
                    CommandLine::new(FUSERMOUNT).arg("-u").arg(&*mount_point),
                    mount_point,
                    &self.image,
                );
                unmounted = result.is_ok();
                record(result);
            }
            // After the unmount nbdfuse exits by itself. Otherwise SIGTERM makes it
            // unmount lazily and exit.
            let exited = if unmounted {
                process::wait_for_exit(child.as_mut(), self.stop_timeout)
                    .ok()
                    .flatten()
            } else {
                None
            };
            match exited {
                Some(status) if !status.success() => record(Err(NbdError::Stopping {
                    program: NBDFUSE.to_owned(),
                    image: self.image.clone(),
                    reason: format!("it exited with {}", describe_status(&status)),
                    stderr: child.stderr(),
                })),
                Some(_) => {}
                None => record(stop_helper(
                    child.as_mut(),
                    NBDFUSE,
                    &self.image,
                    self.stop_timeout,
                )),
            }
        }
        // nbdfuse may have died without unmounting, for example from SIGKILL.
        if is_mounted(self.host.as_ref(), mount_point, &self.image) {
            record(run_detach(
                self.runner.as_ref(),
                CommandLine::new(FUSERMOUNT)
                    .arg("-u")
                    .arg("-z")
                    .arg(&*mount_point),
                mount_point,
                &self.image,
            ));
        }
        if let Some(server) = server.take() {
            record(server.close());
        }
        if *owns_dir {
            *owns_dir = false;
            record(remove_private_dir(dir, &self.image));
        }

        match first_error {
            Some(err) => Err(err),
            None => Ok(()),
        }
    }

    /// Disconnects the kernel device when this attachment's `qemu-nbd` still owns it, then
    /// stops `qemu-nbd`.
    fn tear_down_kernel(
        &self,
        device: &Path,
        number: u32,
        child: &mut dyn ChildProcess,
    ) -> Result<(), NbdError> {
        let owner = self.host.nbd_device_owner(number).unwrap_or_else(|err| {
            tracing::warn!(device = %device.display(), error = %err, "reading the NBD device owner failed");
            None
        });
        // A device that belongs to another process must be left alone.
        let disconnected = if owner == Some(child.id()) {
            run_detach(
                self.runner.as_ref(),
                CommandLine::new(QEMU_NBD).arg("--disconnect").arg(device),
                device,
                &self.image,
            )
        } else {
            Ok(())
        };
        // NOTE: the exit status of `qemu-nbd --connect` after a disconnect has not been
        // checked on a host with a kernel NBD client. A failure status is reported.
        let exited = process::wait_for_exit(child, self.stop_timeout)
            .ok()
            .flatten();
        let stopped = match exited {
            Some(status) if status.success() => Ok(()),
            _ => stop_helper(child, QEMU_NBD, &self.image, self.stop_timeout),
        };
        disconnected.and(stopped)
    }
}

impl Drop for NbdAttachment {
    fn drop(&mut self) {
        if let Err(err) = self.tear_down() {
            tracing::warn!(error = %err, "dropping an NBD attachment");
        }
    }
}

/// Picks the kernel NBD client when the kernel has one, `nbdfuse` otherwise.
fn choose_method(image: &Path, host: &dyn HostProbe) -> Result<AttachMethod, NbdError> {
    let devices = host
        .kernel_nbd_devices()
        .map_err(|source| NbdError::ProbingHost {
            check: "the kernel NBD devices".into(),
            image: image.to_owned(),
            source,
        })?;
    if devices.is_empty() {
        tracing::info!(
            method = %AttachMethod::Fuse,
            "the kernel has no NBD client (no /sys/block/nbd*), using nbdfuse"
        );
        Ok(AttachMethod::Fuse)
    } else {
        tracing::info!(
            method = %AttachMethod::Kernel,
            devices = devices.len(),
            "using the kernel NBD client"
        );
        Ok(AttachMethod::Kernel)
    }
}

/// Builds the `nbdfuse` command line that shows the export on `socket` as `file`.
fn fuse_command(file: &Path, socket: &Path, read_only: bool) -> CommandLine {
    let mut command = CommandLine::new(NBDFUSE);
    if read_only {
        command = command.arg("-r");
    }
    command.arg(file).arg("--unix").arg(socket)
}

/// Waits until `file` exists with the export's size, which means `nbdfuse` has mounted
/// and connected.
fn wait_for_fuse_file(
    nbdfuse: &mut dyn ChildProcess,
    host: &dyn HostProbe,
    image: &Path,
    file: &Path,
    export_size: u64,
    timeout: Duration,
) -> Result<(), NbdError> {
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        if let Some(status) = try_wait(nbdfuse, NBDFUSE, image)? {
            return Err(NbdError::ExitedEarly {
                program: NBDFUSE.to_owned(),
                image: image.to_owned(),
                status,
                stderr: nbdfuse.stderr(),
            });
        }
        let last_seen = host
            .file_size(file)
            .map_err(|source| NbdError::ProbingHost {
                check: format!("the FUSE file {}", file.display()),
                image: image.to_owned(),
                source,
            })?;
        if last_seen == Some(export_size) {
            return Ok(());
        }

        if Instant::now() >= deadline {
            let seen = match last_seen {
                Some(size) => format!("{size} bytes"),
                None => "missing".to_owned(),
            };
            return Err(NbdError::NotReady {
                program: NBDFUSE.to_owned(),
                image: image.to_owned(),
                condition: format!(
                    "{} to have {export_size} bytes (last seen: {seen})",
                    file.display()
                ),
                waited: started.elapsed(),
                stderr: nbdfuse.stderr(),
            });
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Returns whether `mount_point` is mounted, assuming it is when the check fails so that
/// an unmount is still attempted.
fn is_mounted(host: &dyn HostProbe, mount_point: &Path, image: &Path) -> bool {
    host.is_mount_point(mount_point).unwrap_or_else(|err| {
        tracing::warn!(mount_point = %mount_point.display(), image = %image.display(), error = %err, "checking the FUSE mount failed");
        true
    })
}

/// Runs a detach command (`fusermount3 -u`, `qemu-nbd --disconnect`) and turns a failure
/// into [`NbdError::Detaching`].
fn run_detach(
    runner: &dyn CommandRunner,
    command: CommandLine,
    target: &Path,
    image: &Path,
) -> Result<(), NbdError> {
    let detaching = |reason: String| NbdError::Detaching {
        program: command.program.clone(),
        target: target.to_owned(),
        image: image.to_owned(),
        reason,
    };
    let output = runner
        .run(&command)
        .map_err(|err| detaching(format!("it could not be run: {err}")))?;
    if output.status.success() {
        tracing::debug!(command = %command, "detached");
        return Ok(());
    }
    Err(detaching(format!(
        "it exited with {}: {}",
        output.status,
        output.stderr.trim()
    )))
}

#[cfg(test)]
#[path = "attach_tests.rs"]
mod tests;
