//! Errors of serving and attaching images over NBD.

use std::io;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

/// An error from [`crate::NbdServer`] or [`crate::NbdAttachment`].
///
/// Variants about a helper process name the program and the image, and carry what the
/// helper wrote to standard error.
#[derive(Debug, thiserror::Error)]
pub enum NbdError {
    /// The image path could not be resolved to an absolute path.
    #[error("image {image} cannot be used")]
    ResolvingImage {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The private directory for the socket or the FUSE mount could not be created.
    #[error("creating a private directory for serving image {image} failed")]
    CreatingRuntimeDir {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Looking at the host's NBD devices, sockets or files failed.
    #[error("checking {check} for image {image} failed")]
    ProbingHost {
        check: String,
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A helper program could not be started.
    #[error("starting {program} for image {image} failed")]
    Spawning {
        program: String,
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A helper exited before it was ready.
    #[error("{program} for image {image} exited with {} before it was ready: {}", describe_status(.status), stderr_text(.stderr))]
    ExitedEarly {
        program: String,
        image: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    /// A helper did not become ready in time; it has been stopped.
    #[error("{program} for image {image} timed out after {} ms waiting for {condition}: {}", .waited.as_millis(), stderr_text(.stderr))]
    NotReady {
        program: String,
        image: PathBuf,
        condition: String,
        waited: Duration,
        stderr: String,
    },
    /// The NBD server's handshake replies are not ones this client accepts.
    #[error("NBD handshake with qemu-nbd for image {image} on {socket} failed: {reason}; qemu-nbd output: {}", stderr_text(.stderr))]
    Negotiating {
        image: PathBuf,
        socket: PathBuf,
        reason: String,
        stderr: String,
    },
    /// Every free kernel NBD device this process tried was taken by another process first.
    #[error("attaching image {image}: no free /dev/nbd* device after {attempts} attempts")]
    NoFreeNbdDevice { image: PathBuf, attempts: u32 },
    /// Running `qemu-nbd --disconnect` or `fusermount3 -u` failed.
    #[error("detaching {target} of image {image} with {program} failed: {reason}")]
    Detaching {
        program: String,
        target: PathBuf,
        image: PathBuf,
        reason: String,
    },
    /// A helper could not be stopped, or stopped with a failure status.
    #[error("stopping {program} for image {image} failed: {reason}; its output: {}", stderr_text(.stderr))]
    Stopping {
        program: String,
        image: PathBuf,
        reason: String,
        stderr: String,
    },
    /// A private directory could not be removed after everything in it was released.
    #[error("removing {dir} of image {image} failed")]
    RemovingRuntimeDir {
        dir: PathBuf,
        image: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Describes how a process ended: `exit code 1` or `signal 15`.
pub(crate) fn describe_status(status: &ExitStatus) -> String {
    use std::os::unix::process::ExitStatusExt;

    match (status.code(), status.signal()) {
        (Some(code), _) => format!("exit code {code}"),
        (None, Some(signal)) => format!("signal {signal}"),
        (None, None) => status.to_string(),
    }
}

/// Formats a helper's standard error for a message: trimmed, or a note that it was empty.
fn stderr_text(stderr: &str) -> String {
    let trimmed = stderr.trim();
    if trimmed.is_empty() {
        "(no output)".to_owned()
    } else {
        trimmed.to_owned()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;

    use super::*;

    #[test]
    fn exited_early_message_has_status_and_output() {
        let err = NbdError::ExitedEarly {
            program: "qemu-nbd".into(),
            image: PathBuf::from("/images/disk.qcow2"),
            status: ExitStatus::from_raw(1 << 8),
            stderr: "qemu-nbd: Failed to blk_new_open\n".into(),
        };

        assert_eq!(
            err.to_string(),
            "qemu-nbd for image /images/disk.qcow2 exited with exit code 1 before it was \
             ready: qemu-nbd: Failed to blk_new_open"
        );
    }

    #[test]
    fn killed_process_status_names_signal() {
        assert_eq!(describe_status(&ExitStatus::from_raw(9)), "signal 9");
    }

    #[test]
    fn not_ready_message_with_empty_output() {
        let err = NbdError::NotReady {
            program: "nbdfuse".into(),
            image: PathBuf::from("/images/disk.qcow2"),
            condition: "the FUSE file".into(),
            waited: Duration::from_millis(10_000),
            stderr: String::new(),
        };

        assert_eq!(
            err.to_string(),
            "nbdfuse for image /images/disk.qcow2 timed out after 10000 ms waiting for the \
             FUSE file: (no output)"
        );
    }
}
