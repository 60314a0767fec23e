//! Errors of injection. [`InjectError`] names the item that failed, when one did, and
//! states whether anything was written, and [`ItemError`] gives the cause.

use std::io;
use std::path::PathBuf;

use vfs_core::{FileKind, GuestPath, VfsError};

use crate::report::{Outcome, Report};
use crate::request::ItemKind;

/// A failed injection request.
#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    /// An input of the request is invalid; nothing was written.
    #[error("invalid {item} input; nothing was written")]
    InvalidInput {
        item: ItemKind,
        #[source]
        source: Box<ItemError>,
    },
    /// Planning a mandatory item failed; nothing was written.
    #[error("cannot inject {item} into {target}; nothing was written")]
    Planning {
        item: ItemKind,
        target: String,
        #[source]
        source: Box<ItemError>,
    },
    /// Remounting the guest filesystems read-write after planning failed; no guest file
    /// was changed.
    #[error("remounting the guest filesystems read-write failed; no guest file was changed")]
    EnablingWrites {
        #[source]
        source: VfsError,
    },
    /// Applying a mandatory item failed. The items before it were written to the guest
    /// filesystem, and each file the failed item touched contains either its old or its new
    /// contents. Whether those writes reach the image is the caller's choice, so the message
    /// only lists them.
    #[error("injecting {item} into {target} failed; {}", applied_before(report))]
    Applying {
        item: ItemKind,
        target: String,
        #[source]
        source: Box<ItemError>,
        /// The outcomes of the items handled before the failure.
        report: Box<Report>,
    },
}

impl InjectError {
    /// Returns the item that failed, or `None` when the failure belongs to no item.
    pub fn item(&self) -> Option<ItemKind> {
        match self {
            InjectError::InvalidInput { item, .. }
            | InjectError::Planning { item, .. }
            | InjectError::Applying { item, .. } => Some(*item),
            InjectError::EnablingWrites { .. } => None,
        }
    }

    /// Returns the report of the items handled before an apply failure, if any.
    pub fn partial_report(&self) -> Option<&Report> {
        match self {
            InjectError::Applying { report, .. } => Some(report),
            _ => None,
        }
    }
}

/// The cause of a failed item.
#[derive(Debug, thiserror::Error)]
pub enum ItemError {
    /// The SSH public key is malformed.
    #[error("invalid SSH public key: {reason}")]
    InvalidSshKey { reason: String },
    /// The password cannot be used.
    #[error("invalid password: {reason}")]
    InvalidPassword { reason: &'static str },
    /// The metadata is not JSON.
    #[error("the metadata is not valid JSON")]
    InvalidJson {
        #[source]
        source: serde_json::Error,
    },
    /// The metadata is JSON but not an object.
    #[error("the metadata must be a JSON object, found {found}")]
    JsonNotObject { found: &'static str },
    /// A host file to copy cannot be opened.
    #[error("opening host file {path} failed", path = path.display())]
    OpeningHostFile {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// A host file to copy is a directory or a special file.
    #[error("host file {path} is not a regular file", path = path.display())]
    HostFileNotRegular { path: PathBuf },
    /// Hashing the password failed.
    #[error("hashing the password failed: {reason}")]
    Hashing { reason: String },
    /// A guest file that the item needs does not exist.
    #[error("{path} not found in the guest; {hint}")]
    GuestFileMissing { path: GuestPath, hint: &'static str },
    /// A guest account file has no line for root.
    #[error("no entry for root in {path}; {hint}")]
    NoRootEntry { path: GuestPath, hint: &'static str },
    /// A guest file that the item reads is malformed.
    #[error("{path} is malformed: {reason}")]
    MalformedGuestFile { path: GuestPath, reason: String },
    /// Root's home directory in `/etc/passwd` is not a path this tool can use.
    #[error("root's home directory {home:?} in /etc/passwd is not a valid absolute path")]
    InvalidHome { home: String },
    /// Something other than a directory is where a directory must be.
    #[error("{path} is not a directory, so nothing can be created beneath it")]
    NotADirectory { path: GuestPath },
    /// A target file is a directory.
    #[error("{path} is a directory; remove it in the guest or choose another path")]
    IsADirectory { path: GuestPath },
    /// A target file is a device, socket or FIFO.
    #[error("{path} is not a regular file")]
    NotAFile { path: GuestPath },
    /// A file or directory to create is a symlink whose target is missing.
    #[error("{path} is a symlink to a missing target, so {}", dangling_consequence(*creating))]
    DanglingSymlink {
        path: GuestPath,
        /// The kind of object the item would create at `path`.
        creating: FileKind,
    },
    /// Two items of the request write the same guest path.
    #[error("{path} is also written by an earlier item of the request")]
    ConflictingWrite { path: GuestPath },
    /// The guest filesystem has less free space than the item writes.
    #[error(
        "the guest filesystem at {mount_point} has {available} bytes free but {needed} are \
         needed; free space in the guest or grow the image"
    )]
    NotEnoughSpace {
        mount_point: GuestPath,
        needed: u64,
        available: u64,
    },
    /// A guest filesystem operation failed. The [`VfsError`] already names the path, or the
    /// operation when no path applies, so this variant adds no text of its own.
    #[error(transparent)]
    Guest { source: VfsError },
}

/// Lists the items of `report` that were applied, for the message of an apply failure.
fn applied_before(report: &Report) -> String {
    let applied: Vec<String> = report
        .items
        .iter()
        .filter(|item| item.outcome == Outcome::Applied)
        .map(|item| format!("{} ({})", item.kind, item.target))
        .collect();
    if applied.is_empty() {
        "no item had been applied before it".to_owned()
    } else {
        format!("applied before it: {}", applied.join(", "))
    }
}

/// Returns what a dangling symlink prevents for an object of kind `creating`.
fn dangling_consequence(creating: FileKind) -> &'static str {
    match creating {
        FileKind::Directory => "no directory can be created there",
        _ => "the file cannot be written there",
    }
}

/// Returns `error` and its causes as one line, separated by `: `, for a warning.
pub(crate) fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}
