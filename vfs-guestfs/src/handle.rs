//! The libguestfs calls this backend makes, as a trait so that tests can replace the
//! appliance with a mock.
//!
//! [`crate::Appliance`] implements it over the C API. Method names and argument orders
//! follow the libguestfs calls of the same name, so the libguestfs documentation applies.
//! Every call that takes a guest path runs inside the appliance with the guest root as its
//! root (the daemon's `chroot` into `/sysroot`), so symlinks in the path resolve inside the
//! guest. The exception is [`GuestfsHandle::ln_s`]: the daemon prefixes its link name with
//! `/sysroot` and resolves it in the appliance, so callers pass a link name whose directory
//! is already resolved. The libguestfs daemon sources show which calls chroot, and the
//! integration tests check the result through guest symlinks to `/etc`, which the
//! appliance has too.

use std::fmt;
use std::path::Path;

/// A failed libguestfs call: its message and the errno it reported (0 when none).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HandleError {
    /// libguestfs's message (`guestfs_last_error`).
    pub message: String,
    /// The errno of the failure inside the appliance (`guestfs_last_errno`), or 0.
    pub errno: i32,
}

impl fmt::Display for HandleError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for HandleError {}

/// The fields of `guestfs_statns` this backend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stat {
    /// `st_mode`: file type and permission bits.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Size in bytes.
    pub size: u64,
}

impl Stat {
    /// Returns true for a directory.
    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// Returns true for a regular file.
    pub fn is_file(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFREG
    }

    /// Returns true for a symbolic link.
    pub fn is_symlink(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFLNK
    }
}

/// The fields of `guestfs_statvfs` this backend uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StatVfs {
    /// `f_bsize`.
    pub block_size: u64,
    /// `f_frsize`, the unit of the block counts.
    pub fragment_size: u64,
    /// `f_bavail`: free blocks for unprivileged users.
    pub blocks_available: u64,
}

/// The libguestfs calls this backend makes.
#[cfg_attr(test, mockall::automock)]
pub trait GuestfsHandle: Send {
    /// `guestfs_get_backend_settings`: the settings so far, including those from
    /// `LIBGUESTFS_BACKEND_SETTINGS`.
    fn backend_settings(&mut self) -> Result<Vec<String>, HandleError>;
    /// `guestfs_set_backend_setting`.
    fn set_backend_setting(&mut self, name: &str, value: &str) -> Result<(), HandleError>;
    /// `guestfs_add_drive_opts` with an explicit format, so libguestfs never probes it.
    fn add_drive(&mut self, image: &Path, format: &str, read_only: bool)
        -> Result<(), HandleError>;
    /// `guestfs_add_drive_scratch`: a temporary empty disk of `size` bytes.
    fn add_drive_scratch(&mut self, size: u64) -> Result<(), HandleError>;
    /// `guestfs_launch`: starts the appliance.
    fn launch(&mut self) -> Result<(), HandleError>;
    /// `guestfs_shutdown`: unmounts, syncs and stops the appliance.
    fn shutdown(&mut self) -> Result<(), HandleError>;

    /// `guestfs_list_partitions`: device names such as `/dev/sda1`.
    fn list_partitions(&mut self) -> Result<Vec<String>, HandleError>;
    /// `guestfs_list_filesystems`: (mountable, filesystem type) pairs.
    fn list_filesystems(&mut self) -> Result<Vec<(String, String)>, HandleError>;
    /// `guestfs_vfs_type`: the filesystem type on a mountable, empty when none is found.
    fn vfs_type(&mut self, mountable: &str) -> Result<String, HandleError>;
    /// `guestfs_vfs_label`.
    fn vfs_label(&mut self, mountable: &str) -> Result<String, HandleError>;
    /// `guestfs_vfs_uuid`.
    fn vfs_uuid(&mut self, mountable: &str) -> Result<String, HandleError>;
    /// `guestfs_inspect_os`: the root filesystems of the operating systems found.
    fn inspect_os(&mut self) -> Result<Vec<String>, HandleError>;
    /// `guestfs_inspect_get_mountpoints`: (mount point, mountable) pairs from the guest's
    /// fstab.
    fn inspect_get_mountpoints(&mut self, root: &str)
        -> Result<Vec<(String, String)>, HandleError>;
    /// `guestfs_mount_options`.
    fn mount_options(
        &mut self,
        options: &str,
        mountable: &str,
        mountpoint: &str,
    ) -> Result<(), HandleError>;

    /// `guestfs_remount` with `rw` given: makes the filesystem mounted at `mountpoint`
    /// read-write (`true`) or read-only (`false`).
    fn remount(&mut self, mountpoint: &str, rw: bool) -> Result<(), HandleError>;

    /// `guestfs_realpath`: the path with every symlink resolved inside the guest.
    fn realpath(&mut self, path: &str) -> Result<String, HandleError>;
    /// `guestfs_statns`, following symlinks.
    fn statns(&mut self, path: &str) -> Result<Stat, HandleError>;
    /// `guestfs_lstatns`, not following a symlink in the last name.
    fn lstatns(&mut self, path: &str) -> Result<Stat, HandleError>;
    /// `guestfs_readlink`.
    fn readlink(&mut self, path: &str) -> Result<String, HandleError>;
    /// `guestfs_pread`: up to `count` bytes from `offset`; empty at the end of the file.
    fn pread(&mut self, path: &str, count: u32, offset: u64) -> Result<Vec<u8>, HandleError>;
    /// `guestfs_write`: creates or truncates the file and writes `content`.
    fn write(&mut self, path: &str, content: &[u8]) -> Result<(), HandleError>;
    /// `guestfs_write_append`: creates the file if needed and appends `content`.
    fn write_append(&mut self, path: &str, content: &[u8]) -> Result<(), HandleError>;
    /// `guestfs_mkdir_mode` (the appliance's umask applies).
    fn mkdir_mode(&mut self, path: &str, mode: u32) -> Result<(), HandleError>;
    /// `guestfs_chmod`.
    fn chmod(&mut self, mode: u32, path: &str) -> Result<(), HandleError>;
    /// `guestfs_chown`; `None` leaves that id unchanged.
    fn chown(&mut self, uid: Option<u32>, gid: Option<u32>, path: &str) -> Result<(), HandleError>;
    /// `guestfs_ln_s`.
    fn ln_s(&mut self, target: &str, linkname: &str) -> Result<(), HandleError>;
    /// `guestfs_rm`: removes a file or symlink.
    fn rm(&mut self, path: &str) -> Result<(), HandleError>;
    /// `guestfs_rename`: the `rename(2)` system call, atomic within one filesystem.
    fn rename(&mut self, old_path: &str, new_path: &str) -> Result<(), HandleError>;
    /// `guestfs_getxattrs`, following symlinks.
    fn getxattrs(&mut self, path: &str) -> Result<Vec<(String, Vec<u8>)>, HandleError>;
    /// `guestfs_setxattr`, following symlinks.
    fn setxattr(&mut self, name: &str, value: &[u8], path: &str) -> Result<(), HandleError>;
    /// `guestfs_statvfs`.
    fn statvfs(&mut self, path: &str) -> Result<StatVfs, HandleError>;
    /// `guestfs_sync`.
    fn sync(&mut self) -> Result<(), HandleError>;
}
