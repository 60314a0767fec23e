//! qemu's image locks: detecting an image that a running qemu uses, and holding the same
//! locks so that a qemu started later rejects the image while it is mounted here.
//!
//! qemu (`block/file-posix.c`, since 2.10) locks single bytes of the image file with
//! open-file-description (OFD) read locks. For each block permission bit `i` it holds, it
//! locks byte `100 + i`. For each permission it does not let others share, it locks byte
//! `200 + i`. Before taking a permission, qemu tests for a conflicting lock on `200 + i`
//! (someone refuses to share it), and before refusing to share one, on `100 + i` (someone
//! holds it). This module does exactly that with the permissions a mount needs.

use std::fs::File;
use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::fcntl::FcntlArg;

/// The first byte of the "holds permission `i`" locks.
const LOCK_PERM_BASE: i64 = 100;
/// The first byte of the "does not share permission `i`" locks.
const LOCK_SHARED_BASE: i64 = 200;

/// A qemu block permission (`BLK_PERM_*` in qemu's `include/block/block-common.h`), by its
/// bit number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// `BLK_PERM_CONSISTENT_READ`, 0x01: reading data that no other user changes meanwhile.
    ConsistentRead = 0,
    /// `BLK_PERM_WRITE`, 0x02: changing the visible contents.
    Write = 1,
    /// `BLK_PERM_WRITE_UNCHANGED`, 0x04: writes that keep the visible contents.
    WriteUnchanged = 2,
    /// `BLK_PERM_RESIZE`, 0x08: changing the size.
    Resize = 3,
}

impl Permission {
    /// Returns the name qemu uses in its lock errors.
    pub fn name(self) -> &'static str {
        match self {
            Self::ConsistentRead => "consistent read",
            Self::Write => "write",
            Self::WriteUnchanged => "write unchanged",
            Self::Resize => "resize",
        }
    }

    fn holds_byte(self) -> i64 {
        LOCK_PERM_BASE + self as i64
    }

    fn unshares_byte(self) -> i64 {
        LOCK_SHARED_BASE + self as i64
    }
}

/// The permissions a read-write mount takes: it reads and writes, and shares nothing but
/// reading with others, because a second writer would corrupt the filesystem.
const READ_WRITE_HOLDS: &[Permission] = &[Permission::ConsistentRead, Permission::Write];
const READ_WRITE_UNSHARES: &[Permission] = &[
    Permission::Write,
    Permission::WriteUnchanged,
    Permission::Resize,
];

/// The permissions a read-only mount takes: it reads, and a writer elsewhere would change
/// the filesystem under the kernel's cache.
const READ_ONLY_HOLDS: &[Permission] = &[Permission::ConsistentRead];
const READ_ONLY_UNSHARES: &[Permission] = &[Permission::Write, Permission::Resize];

/// Errors from checking and taking the image locks.
#[derive(Debug, thiserror::Error)]
pub enum LockError {
    /// Opening the image or testing and setting a lock failed.
    #[error("locking image {image} failed")]
    Locking {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Another process, such as a running qemu, uses the image in a way that conflicts.
    #[error("image {image} is in use by another process (it {conflict}); stop the virtual machine or the program that has the image open, then try again")]
    InUse { image: PathBuf, conflict: String },
}

/// qemu-style locks held on an image file, released when dropped.
#[derive(Debug)]
pub struct ImageLock {
    image: PathBuf,
    /// The open file description that owns the locks; closing it releases them.
    file: File,
}

impl ImageLock {
    /// Checks that no other process uses `image` in a way that conflicts with a mount
    /// (read-only or read-write), then takes qemu's locks for that mount.
    pub fn acquire(image: &Path, read_only: bool) -> Result<Self, LockError> {
        let (holds, unshares) = permissions(read_only);
        let file = open(image)?;
        check_conflicts(&file, image, holds, unshares)?;

        for byte in holds
            .iter()
            .map(|perm| perm.holds_byte())
            .chain(unshares.iter().map(|perm| perm.unshares_byte()))
        {
            set_read_lock(&file, byte).map_err(|errno| match errno {
                Errno::EAGAIN | Errno::EACCES => LockError::InUse {
                    image: image.to_owned(),
                    conflict: format!("holds a write lock on byte {byte}"),
                },
                errno => locking(image, errno),
            })?;
        }

        // A qemu that tested between the check above and the locks would not have seen
        // them; testing again now finds its locks, so at least one of the two backs off.
        check_conflicts(&file, image, holds, unshares)?;
        tracing::debug!(image = %image.display(), read_only, "took qemu's image locks");
        Ok(Self {
            image: image.to_owned(),
            file,
        })
    }

    /// Checks, without taking any lock, that no other process uses `image` in a way that
    /// conflicts with a mount. For images that a qemu program opens itself, such as
    /// `qemu-nbd`, which takes the locks on its own.
    pub fn check(image: &Path, read_only: bool) -> Result<(), LockError> {
        let (holds, unshares) = permissions(read_only);
        let file = open(image)?;
        check_conflicts(&file, image, holds, unshares)
    }

    /// Returns the locked image.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Releases the locks.
    pub fn close(self) {
        drop(self.file);
        tracing::debug!(image = %self.image.display(), "released qemu's image locks");
    }
}

fn permissions(read_only: bool) -> (&'static [Permission], &'static [Permission]) {
    if read_only {
        (READ_ONLY_HOLDS, READ_ONLY_UNSHARES)
    } else {
        (READ_WRITE_HOLDS, READ_WRITE_UNSHARES)
    }
}

fn open(image: &Path) -> Result<File, LockError> {
    // Read locks need only read access, and a read-only image must stay unopened for
    // writing.
    File::open(image).map_err(|source| LockError::Locking {
        image: image.to_owned(),
        source,
    })
}

/// Fails with [`LockError::InUse`] when another open file description holds a lock that
/// conflicts with holding `holds` and refusing to share `unshares`.
fn check_conflicts(
    file: &File,
    image: &Path,
    holds: &[Permission],
    unshares: &[Permission],
) -> Result<(), LockError> {
    for perm in holds {
        if is_locked_by_other(file, perm.unshares_byte()).map_err(|errno| locking(image, errno))? {
            return Err(LockError::InUse {
                image: image.to_owned(),
                conflict: format!("does not share the {:?} permission", perm.name()),
            });
        }
    }
    for perm in unshares {
        if is_locked_by_other(file, perm.holds_byte()).map_err(|errno| locking(image, errno))? {
            return Err(LockError::InUse {
                image: image.to_owned(),
                conflict: format!("holds the {:?} permission", perm.name()),
            });
        }
    }
    Ok(())
}

/// Returns true when another open file description holds any lock on `byte`.
///
/// An exclusive lock conflicts with every lock, so testing for one finds read locks too.
/// Locks of this file description never conflict with it.
fn is_locked_by_other(file: &File, byte: i64) -> nix::Result<bool> {
    let mut lock = byte_lock(libc::F_WRLCK, byte);
    nix::fcntl::fcntl(file.as_fd(), FcntlArg::F_OFD_GETLK(&mut lock))?;
    Ok(lock.l_type != libc::F_UNLCK as libc::c_short)
}

fn set_read_lock(file: &File, byte: i64) -> nix::Result<()> {
    let lock = byte_lock(libc::F_RDLCK, byte);
    nix::fcntl::fcntl(file.as_fd(), FcntlArg::F_OFD_SETLK(&lock))?;
    Ok(())
}

fn byte_lock(kind: libc::c_int, byte: i64) -> libc::flock {
    // SAFETY: `flock` is a plain C struct for which all zero bytes are valid; OFD locks
    // require `l_pid` to be zero.
    let mut lock: libc::flock = unsafe { std::mem::zeroed() };
    lock.l_type = kind as libc::c_short;
    lock.l_whence = libc::SEEK_SET as libc::c_short;
    lock.l_start = byte;
    lock.l_len = 1;
    lock
}

fn locking(image: &Path, errno: Errno) -> LockError {
    LockError::Locking {
        image: image.to_owned(),
        source: errno.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk.raw");
        std::fs::write(&path, vec![0u8; 4096]).unwrap();
        (dir, path)
    }

    #[test]
    fn second_writer_is_rejected() {
        let (_dir, path) = image();
        let first = ImageLock::acquire(&path, false).unwrap();

        let second = ImageLock::acquire(&path, false);

        assert!(matches!(second, Err(LockError::InUse { .. })), "{second:?}");
        first.close();
    }

    #[test]
    fn reader_is_rejected_while_writer_holds() {
        let (_dir, path) = image();
        let writer = ImageLock::acquire(&path, false).unwrap();

        let reader = ImageLock::acquire(&path, true);
        let checked = ImageLock::check(&path, true);

        assert!(matches!(reader, Err(LockError::InUse { .. })), "{reader:?}");
        assert!(
            matches!(checked, Err(LockError::InUse { .. })),
            "{checked:?}"
        );
        writer.close();
    }

    #[test]
    fn two_readers_share_the_image() {
        let (_dir, path) = image();
        let first = ImageLock::acquire(&path, true).unwrap();

        let second = ImageLock::acquire(&path, true);

        assert!(second.is_ok(), "{second:?}");
        first.close();
    }

    #[test]
    fn closed_lock_frees_the_image() {
        let (_dir, path) = image();
        ImageLock::acquire(&path, false).unwrap().close();

        let again = ImageLock::acquire(&path, false);

        assert!(again.is_ok(), "{again:?}");
    }

    #[test]
    fn in_use_message_names_image() {
        let (_dir, path) = image();
        let _writer = ImageLock::acquire(&path, false).unwrap();

        let err = ImageLock::acquire(&path, false).unwrap_err();

        assert!(
            err.to_string().contains(&path.display().to_string()),
            "{err}"
        );
    }
}
