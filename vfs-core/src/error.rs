//! Errors of guest filesystem operations.

use std::io;

use crate::path::{GuestPath, PathError};

/// The result of a guest filesystem operation.
pub type Result<T, E = VfsError> = std::result::Result<T, E>;

/// An error from a [`crate::GuestFs`] operation.
///
/// Every backend maps its failures onto the same variants, so that callers and the
/// conformance suite can match on them: a missing file is [`VfsError::NotFound`] on every
/// backend, whatever the backend's own error looked like.
#[derive(Debug, thiserror::Error)]
pub enum VfsError {
    /// The path, or a directory on the way to it, does not exist.
    #[error("{path}: not found in the guest")]
    NotFound { path: GuestPath },
    /// A name on the way to the path is not a directory.
    #[error("{path}: not a directory")]
    NotADirectory { path: GuestPath },
    /// The operation needs a file but the path is a directory.
    #[error("{path}: is a directory")]
    IsADirectory { path: GuestPath },
    /// The operation needs a regular file but the path is something else.
    #[error("{path}: not a regular file")]
    NotAFile { path: GuestPath },
    /// The path exists and the operation needs it not to.
    #[error("{path}: already exists")]
    AlreadyExists { path: GuestPath },
    /// Resolving the path met more symlinks than the limit allows, or a loop.
    #[error("{path}: too many levels of symbolic links")]
    SymlinkLoop { path: GuestPath },
    /// A file is larger than the limit for reading it into memory.
    #[error("{path}: {size} bytes is more than the {limit} bytes that can be read into memory")]
    TooLarge {
        path: GuestPath,
        size: u64,
        limit: u64,
    },
    /// The guest filesystem is full.
    #[error("{path}: no space left on the guest filesystem")]
    NoSpace { path: GuestPath },
    /// The guest filesystem is mounted read-only.
    #[error("{path}: the guest filesystem is read-only")]
    ReadOnly { path: GuestPath },
    /// The path lies beneath a mount point of the guest whose filesystem is not mounted, so
    /// a write would land on the filesystem underneath it.
    #[error("{path}: lies beneath {mount_point}, whose filesystem is not mounted; writing there would hide the file under the mount")]
    NotMounted {
        path: GuestPath,
        mount_point: GuestPath,
    },
    /// A user name is not in the guest's `/etc/passwd`.
    #[error("user {name:?} not found in the guest's /etc/passwd")]
    UnknownUser { name: String },
    /// A group name is not in the guest's `/etc/group`.
    #[error("group {name:?} not found in the guest's /etc/group")]
    UnknownGroup { name: String },
    /// A guest file that the operation reads is malformed.
    #[error("{path}: malformed: {reason}")]
    Malformed { path: GuestPath, reason: String },
    /// The backend cannot perform this operation.
    #[error("{op} is not supported by the {backend} backend")]
    Unsupported {
        op: &'static str,
        backend: &'static str,
    },
    /// Releasing the filesystem failed: flushing, unmounting, detaching a device or stopping
    /// an appliance. The source names the step.
    #[error("closing the guest filesystem of the {backend} backend failed")]
    Closing {
        backend: &'static str,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
    /// A path given to the operation is invalid.
    #[error(transparent)]
    Path(#[from] PathError),
    /// An operating-system error that has no variant of its own.
    #[error("{op} {path} failed")]
    Io {
        op: &'static str,
        path: GuestPath,
        #[source]
        source: io::Error,
    },
    /// A backend error that has no variant of its own, with the backend's message.
    #[error("{op} {path} failed: {message}")]
    Backend {
        op: &'static str,
        path: GuestPath,
        message: String,
    },
}

impl VfsError {
    /// Maps an operating-system error onto the matching variant, keeping `op` and `path`
    /// as context when no variant fits.
    pub fn from_io(op: &'static str, path: &GuestPath, source: io::Error) -> Self {
        let path = path.clone();
        match source.raw_os_error() {
            Some(libc_errno::ENOENT) => Self::NotFound { path },
            Some(libc_errno::ENOTDIR) => Self::NotADirectory { path },
            Some(libc_errno::EISDIR) => Self::IsADirectory { path },
            Some(libc_errno::EEXIST) => Self::AlreadyExists { path },
            Some(libc_errno::ELOOP) => Self::SymlinkLoop { path },
            Some(libc_errno::ENOSPC) | Some(libc_errno::EDQUOT) => Self::NoSpace { path },
            Some(libc_errno::EROFS) => Self::ReadOnly { path },
            _ => Self::Io { op, path, source },
        }
    }

    /// Returns true for [`VfsError::NotFound`].
    pub fn is_not_found(&self) -> bool {
        matches!(self, Self::NotFound { .. })
    }
}

/// The Linux error numbers that [`VfsError::from_io`] maps, spelled out so that this crate
/// needs no `libc` dependency. The values are the same on every Linux architecture.
mod libc_errno {
    pub const ENOENT: i32 = 2;
    pub const EEXIST: i32 = 17;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const ENOSPC: i32 = 28;
    pub const EROFS: i32 = 30;
    pub const ELOOP: i32 = 40;
    pub const EDQUOT: i32 = 122;
}
