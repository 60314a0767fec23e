//! Errors of opening an image with libguestfs, and the mapping of failed libguestfs calls
//! onto the shared [`VfsError`] variants.

use std::io;
use std::path::PathBuf;

use vfs_core::{GuestPath, VfsError};

use crate::handle::HandleError;

/// The checks suggested when the appliance does not start.
const LAUNCH_HINT: &str = "check that a kernel under /boot is readable by this user \
    (supermin builds the appliance from it), that KVM is usable or TCG is forced \
    (LIBGUESTFS_BACKEND_SETTINGS=force_tcg), and run libguestfs-test-tool for the full log";

/// An error from opening an image with libguestfs or from a test launch.
#[derive(Debug, thiserror::Error)]
pub enum GuestfsError {
    /// `guestfs_create` failed.
    #[error("creating a libguestfs handle failed")]
    CreatingHandle {
        #[source]
        source: HandleError,
    },
    /// A backend setting is not `KEY` or `KEY=VALUE`.
    #[error("invalid backend setting {setting:?}: expected KEY or KEY=VALUE")]
    InvalidSetting { setting: String },
    /// libguestfs rejected a backend setting.
    #[error("setting libguestfs backend setting {setting:?} failed")]
    SettingBackend {
        setting: String,
        #[source]
        source: HandleError,
    },
    /// libguestfs rejected the image.
    #[error("adding drive {image} (format {format}) failed")]
    AddingDrive {
        image: PathBuf,
        format: &'static str,
        #[source]
        source: HandleError,
    },
    /// The appliance did not start.
    #[error("launching the libguestfs appliance for {image} failed; {hint}", hint = LAUNCH_HINT)]
    Launching {
        image: PathBuf,
        #[source]
        source: HandleError,
    },
    /// Listing the partitions or filesystems of the image failed.
    #[error("listing the {items} of {image} failed")]
    Listing {
        image: PathBuf,
        /// `partitions` or `filesystems`.
        items: &'static str,
        #[source]
        source: HandleError,
    },
    /// The requested partition number does not exist.
    #[error("partition {number} not found in {image}; its partitions are: {found}")]
    PartitionNotFound {
        image: PathBuf,
        number: u32,
        found: String,
    },
    /// The chosen device contains no filesystem that can be mounted.
    #[error("{device} in {image} contains no filesystem{detail}; choose another partition")]
    NoFilesystem {
        image: PathBuf,
        device: String,
        /// Empty, or the type found instead, such as ` (it contains swap)`.
        detail: String,
    },
    /// No filesystem has the requested label or UUID.
    #[error("no filesystem in {image} has {selector}; found: {found}")]
    FilesystemNotFound {
        image: PathBuf,
        selector: String,
        found: String,
    },
    /// Several filesystems have the requested label or UUID.
    #[error(
        "several filesystems in {image} have {selector}: {matches}; choose one by partition number"
    )]
    AmbiguousFilesystem {
        image: PathBuf,
        selector: String,
        matches: String,
    },
    /// Inspection failed.
    #[error("inspecting {image} for an operating system failed")]
    Inspecting {
        image: PathBuf,
        #[source]
        source: HandleError,
    },
    /// Inspection found no operating system.
    #[error("no operating system found in {image}; choose the partition to open explicitly")]
    NoOperatingSystem { image: PathBuf },
    /// Inspection found more than one operating system.
    #[error("several operating systems found in {image}, with roots {roots}; choose the partition to open explicitly")]
    SeveralOperatingSystems { image: PathBuf, roots: String },
    /// The root filesystem did not mount.
    #[error("mounting {device} at {mount_point} from {image} failed")]
    Mounting {
        image: PathBuf,
        device: String,
        mount_point: String,
        #[source]
        source: HandleError,
    },
}

/// Maps a failed guest file operation onto the shared [`VfsError`] variants by its errno,
/// keeping libguestfs's message when no variant fits.
pub(crate) fn vfs_error(op: &'static str, path: &GuestPath, error: HandleError) -> VfsError {
    if is_mapped_errno(error.errno) {
        return VfsError::from_io(op, path, io::Error::from_raw_os_error(error.errno));
    }
    VfsError::Backend {
        op,
        path: path.clone(),
        message: error.message,
    }
}

fn is_mapped_errno(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENOENT
            | libc::ENOTDIR
            | libc::EISDIR
            | libc::EEXIST
            | libc::ELOOP
            | libc::ENOSPC
            | libc::EDQUOT
            | libc::EROFS
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn path() -> GuestPath {
        GuestPath::new("/etc/shadow").unwrap()
    }

    #[test]
    fn enoent_maps_to_not_found() {
        let error = HandleError {
            message: "open: /etc/shadow: No such file or directory".into(),
            errno: libc::ENOENT,
        };
        assert!(vfs_error("read", &path(), error).is_not_found());
    }

    #[test]
    fn enospc_maps_to_no_space() {
        let error = HandleError {
            message: "write: No space left on device".into(),
            errno: libc::ENOSPC,
        };
        assert!(matches!(
            vfs_error("write", &path(), error),
            VfsError::NoSpace { .. }
        ));
    }

    #[test]
    fn unmapped_error_keeps_libguestfs_message() {
        let error = HandleError {
            message: "daemon: something odd".into(),
            errno: 0,
        };
        let mapped = vfs_error("chmod", &path(), error);
        assert!(matches!(mapped, VfsError::Backend { .. }));
        assert!(mapped.to_string().contains("daemon: something odd"));
        assert!(mapped.to_string().contains("/etc/shadow"));
    }

    #[test]
    fn launch_error_says_what_to_check() {
        let error = GuestfsError::Launching {
            image: "/images/disk.raw".into(),
            source: HandleError {
                message: "qemu exited".into(),
                errno: 0,
            },
        };
        let text = error.to_string();
        assert!(text.contains("/images/disk.raw"));
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert_eq!(source, "qemu exited");
        assert!(text.contains("/boot"));
        assert!(text.contains("force_tcg"));
        assert!(text.contains("libguestfs-test-tool"));
    }
}
