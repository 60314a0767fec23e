//! The guest filesystem trait that every backend implements.
//!
//! Injection needs a small set of operations on one guest filesystem tree: create
//! directories, read, write and append files, change modes and owners, and a few queries.
//! [`GuestFs`] contains exactly those. Every method is required except [`GuestFs::set_owner`],
//! which has a default built on [`GuestFs::read_file`] and [`GuestFs::set_owner_ids`].
//!
//! # What every backend guarantees
//!
//! - **Symlinks resolve inside the guest.** A symlink is followed as if the guest root were
//!   `/`: an absolute target starts at the guest root and `..` stops at the guest root. No
//!   guest content can make an operation touch anything outside the guest filesystem. At
//!   most [`MAX_SYMLINK_FOLLOWS`] symlinks are followed while resolving one path; past that
//!   the operation fails with [`VfsError::SymlinkLoop`].
//! - **Every operation follows symlinks, the last name included**, except
//!   [`GuestFs::symlink_metadata`], [`GuestFs::symlink`] and [`GuestFs::remove_file`], which
//!   act on the link itself.
//! - **Replacing a file is atomic and keeps its attributes.** [`GuestFs::write_file`] leaves
//!   either the old or the new contents after a crash, and an existing file keeps its mode,
//!   owner and extended attributes.
//! - **New files and directories belong to root** (uid 0, gid 0) and get the mode the caller
//!   gives, without a umask.
//! - **Errors use the shared variants** of [`VfsError`]: a missing path is
//!   [`VfsError::NotFound`], a full filesystem [`VfsError::NoSpace`], and so on.
//! - **Dropping an open filesystem releases everything** it holds (devices, mounts, child
//!   processes, appliances, temporary directories); [`GuestFs::close`] does the same and
//!   reports errors.
//!
//! The conformance suite in the `testkit` crate checks these rules on every backend.

use std::io::Read;

use crate::accounts;
use crate::error::{Result, VfsError};
use crate::path::GuestPath;

/// The maximum number of symlinks followed while resolving one path, as in Linux
/// (`MAXSYMLINKS`).
pub const MAX_SYMLINK_FOLLOWS: usize = 40;

/// The largest file that [`GuestFs::read_file`] reads into memory, in bytes.
///
/// Injection reads only configuration files such as `/etc/shadow`; the limit keeps a
/// hostile image from making the host allocate without bound.
pub const MAX_READ_BYTES: u64 = 64 * 1024 * 1024;

/// The kind of a filesystem object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Directory,
    /// A symbolic link (only from [`GuestFs::symlink_metadata`]).
    Symlink,
    /// A device node, socket or FIFO.
    Other,
}

/// Metadata of a filesystem object.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Metadata {
    /// What kind of object this is.
    pub kind: FileKind,
    /// Permission bits, including setuid, setgid and sticky (`0o7777` at most).
    pub mode: u32,
    /// Owner user id, as stored in the guest.
    pub uid: u32,
    /// Owner group id, as stored in the guest.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
}

/// A filesystem mounted at a point of the guest tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountInfo {
    /// Where the filesystem is mounted in the guest tree.
    pub mount_point: GuestPath,
    /// Where the filesystem comes from, in the backend's words (a partition, a label).
    pub source: String,
    /// The filesystem type, such as `ext4`.
    pub fs_type: String,
}

/// One guest filesystem tree, opened by a backend.
///
/// See the module documentation for the guarantees every backend gives.
pub trait GuestFs: Send {
    /// Returns the name the backend is registered under.
    fn backend_name(&self) -> &'static str;

    /// Returns the filesystems that make up the guest tree, root first.
    fn mounts(&self) -> Vec<MountInfo>;

    /// Returns the type (`ext4`, `xfs`, ...) of the filesystem that contains `path`.
    fn fs_type(&mut self, path: &GuestPath) -> Result<String>;

    /// Returns true when `path` exists after following symlinks; a dangling symlink gives
    /// false.
    fn exists(&mut self, path: &GuestPath) -> Result<bool>;

    /// Returns the metadata of `path`, following symlinks.
    fn metadata(&mut self, path: &GuestPath) -> Result<Metadata>;

    /// Returns the metadata of `path` itself, without following a symlink in the last name.
    fn symlink_metadata(&mut self, path: &GuestPath) -> Result<Metadata>;

    /// Reads a whole regular file.
    ///
    /// Fails with [`VfsError::TooLarge`] for files over [`MAX_READ_BYTES`].
    fn read_file(&mut self, path: &GuestPath) -> Result<Vec<u8>>;

    /// Creates a directory and any missing parents, each new one with `mode`, owned by root.
    ///
    /// Existing directories are left as they are. A non-directory in the way gives
    /// [`VfsError::NotADirectory`].
    fn create_dir_all(&mut self, path: &GuestPath, mode: u32) -> Result<()>;

    /// Replaces the contents of a regular file with everything `contents` yields, atomically,
    /// and returns the number of bytes written.
    ///
    /// An existing file keeps its mode, owner and extended attributes; a new file gets
    /// `create_mode` and belongs to root. The parent directory must exist. Backends stream
    /// `contents` rather than holding it whole in memory.
    fn write_file(
        &mut self,
        path: &GuestPath,
        contents: &mut dyn Read,
        create_mode: u32,
    ) -> Result<u64>;

    /// Appends `data` to a regular file, creating it with `create_mode` when missing.
    fn append_file(&mut self, path: &GuestPath, data: &[u8], create_mode: u32) -> Result<()>;

    /// Sets the permission bits (`0o7777` at most) of `path`.
    fn set_mode(&mut self, path: &GuestPath, mode: u32) -> Result<()>;

    /// Sets the owner and group of `path` by number; `None` leaves that part unchanged.
    fn set_owner_ids(&mut self, path: &GuestPath, uid: Option<u32>, gid: Option<u32>)
        -> Result<()>;

    /// Sets the owner and group of `path` by name, resolved in the guest's own `/etc/passwd`
    /// and `/etc/group` (never the host's); `None` leaves that part unchanged.
    fn set_owner(
        &mut self,
        path: &GuestPath,
        user: Option<&str>,
        group: Option<&str>,
    ) -> Result<()> {
        let uid = match user {
            Some(name) => Some(accounts::lookup_uid(self, name)?),
            None => None,
        };
        let gid = match group {
            Some(name) => Some(accounts::lookup_gid(self, name)?),
            None => None,
        };
        self.set_owner_ids(path, uid, gid)
    }

    /// Creates a symlink at `link` whose target is `target`, stored as given.
    fn symlink(&mut self, target: &str, link: &GuestPath) -> Result<()>;

    /// Removes a file or symlink (the link itself, not its target).
    fn remove_file(&mut self, path: &GuestPath) -> Result<()>;

    /// Returns the extended attributes of `path` as (name, value) pairs sorted by name.
    fn xattrs(&mut self, path: &GuestPath) -> Result<Vec<(String, Vec<u8>)>>;

    /// Sets one extended attribute of `path`.
    fn set_xattr(&mut self, path: &GuestPath, name: &str, value: &[u8]) -> Result<()>;

    /// Returns the bytes available for new data on the filesystem that contains `path`.
    fn free_space(&mut self, path: &GuestPath) -> Result<u64>;

    /// Remounts every mounted filesystem read-write, root first, after an open with
    /// [`OpenOptions::defer_writes`](crate::registry::OpenOptions::defer_writes). Until
    /// then every change fails with [`VfsError::ReadOnly`].
    ///
    /// Does nothing when the filesystems are already writable. Fails with
    /// [`VfsError::ReadOnly`] when the image was opened read-only.
    fn enable_writes(&mut self) -> Result<()>;

    /// Flushes every change to the image.
    fn sync(&mut self) -> Result<()>;

    /// Flushes and releases everything this filesystem holds, reporting any error.
    fn close(self: Box<Self>) -> Result<()>;
}

/// Returns a [`VfsError::TooLarge`] when `size` is over [`MAX_READ_BYTES`].
pub fn check_read_size(path: &GuestPath, size: u64) -> Result<()> {
    if size > MAX_READ_BYTES {
        return Err(VfsError::TooLarge {
            path: path.clone(),
            size,
            limit: MAX_READ_BYTES,
        });
    }
    Ok(())
}
