//! [`RootedTree`]: every [`GuestFs`] file operation on a host directory that holds a guest
//! filesystem, confined to it by the kernel.
//!
//! The tree holds an `O_PATH` descriptor of its root directory and never builds a host path
//! string. Two kinds of lookup reach a file:
//!
//! - operations on an existing object (`metadata`, `read_file`, `set_mode`, ...) resolve the
//!   whole path in one `openat2` call with `RESOLVE_IN_ROOT | RESOLVE_NO_MAGICLINKS`, so the
//!   kernel follows guest symlinks as if the root were `/` and no `..` climbs above it;
//! - operations that create, replace or remove a name walk the parent directories one name
//!   at a time (each step an `openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`) and
//!   follow symlinks themselves. The walk keeps the symlink-free guest path of every
//!   directory it holds, so a relative link target is joined to the directory that really
//!   holds the link, `..` pops a directory the walk already holds, and at most
//!   [`MAX_SYMLINK_FOLLOWS`] links are followed.
//!
//! Since every step acts on a descriptor the tree already holds, a guest that swaps a
//! directory for a symlink between two steps can change which guest file is reached but
//! never make the tree touch a host file outside the root.
//!
//! Modes, owners and extended attributes change through a descriptor of the resolved file:
//! a descriptor opened for reading for regular files and directories, and the `O_PATH`
//! descriptor (through `AT_EMPTY_PATH` or its `/proc/self/fd` path) for other kinds, which
//! the tree never opens for I/O.

use std::ffi::CString;
use std::fs::File;
use std::hash::{BuildHasher, RandomState};
use std::io::{self, Read, Write};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::errno::Errno;
use nix::fcntl::{AtFlags, OFlag, AT_FDCWD};
use nix::sys::stat::{FchmodatFlags, FileStat, Mode};
use nix::unistd::{Gid, Uid, UnlinkatFlags};
use vfs_core::path::resolve_link_target;
use vfs_core::vfs::check_read_size;
use vfs_core::{
    FileKind, GuestFs, GuestPath, Metadata, MountInfo, Result, VfsError, MAX_READ_BYTES,
    MAX_SYMLINK_FOLLOWS,
};

use crate::sys::{self, XattrTarget};
use crate::BACKEND_NAME;

/// A guest filesystem tree on a host directory, reached only through a descriptor of its
/// root.
///
/// The tree should live on mounts with `nodev`: the tree never opens device nodes for I/O,
/// but a mount without `nodev` would still let the guest's device nodes reach host devices
/// through other programs.
#[derive(Debug)]
pub struct RootedTree {
    /// `O_PATH | O_DIRECTORY` descriptor of the guest root.
    root: OwnedFd,
    /// The filesystems that make up the tree, root first.
    mounts: Vec<TreeMount>,
    /// Mount points whose filesystem is not mounted.
    unmounted: Vec<Unmounted>,
}

/// One filesystem of the tree and the device number that identifies its files.
#[derive(Debug)]
struct TreeMount {
    info: MountInfo,
    dev: u64,
}

/// A guest mount point whose filesystem is not mounted.
#[derive(Debug)]
struct Unmounted {
    mount_point: GuestPath,
    /// The device number of the empty placeholder filesystem covering the mount point, or
    /// `None` when the mount point directory is missing, so nothing could cover it.
    placeholder_dev: Option<u64>,
}

/// A resolved object: an `O_PATH` descriptor and its status.
struct Object {
    fd: OwnedFd,
    stat: FileStat,
}

/// A directory reached by a walk: its symlink-free guest path and an `O_PATH` descriptor.
struct WalkedDir {
    path: GuestPath,
    fd: OwnedFd,
}

/// The last name of a path after every symlink in it has been followed.
struct FinalName {
    dir: WalkedDir,
    name: String,
    /// The status of the existing object with that name, `None` when the name is free.
    existing: Option<FileStat>,
}

/// The action a walk takes on a missing directory.
#[derive(Clone, Copy)]
enum Missing {
    /// Fail with [`VfsError::NotFound`].
    Fail,
    /// Create it with this mode, owned by root.
    Create(u32),
}

impl RootedTree {
    /// Opens the host directory `dir` as a guest root. The root filesystem's type and source
    /// come from the host's mount table.
    pub fn open(dir: &Path) -> io::Result<Self> {
        let root = nix::fcntl::open(
            dir,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )?;
        let dev = nix::sys::stat::fstat(&root)?.st_dev;
        let fs_type = host_fs_type(dev)?.unwrap_or_else(|| "unknown".to_owned());
        Self::from_root_fd(root, dir.display().to_string(), fs_type)
    }

    /// Takes `root`, a descriptor of the guest root directory, with the source and type of
    /// the filesystem mounted there.
    pub fn from_root_fd(root: OwnedFd, source: String, fs_type: String) -> io::Result<Self> {
        let stat = nix::sys::stat::fstat(&root)?;
        if sys::file_type(&stat) != libc::S_IFDIR {
            return Err(io::Error::from(Errno::ENOTDIR));
        }
        let root_mount = TreeMount {
            info: MountInfo {
                mount_point: GuestPath::root(),
                source,
                fs_type,
            },
            dev: stat.st_dev,
        };
        Ok(Self {
            root,
            mounts: vec![root_mount],
            unmounted: Vec::new(),
        })
    }

    /// Returns the descriptor of the guest root.
    pub fn root_fd(&self) -> BorrowedFd<'_> {
        self.root.as_fd()
    }

    /// Opens the directory `path` inside the guest as an `O_PATH` descriptor, following
    /// symlinks inside the guest.
    ///
    /// Mounting onto the descriptor's `/proc/self/fd` path puts a filesystem exactly on that
    /// directory, even if the guest's symlinks point elsewhere on the host.
    pub fn open_dir(&self, path: &GuestPath) -> Result<OwnedFd> {
        let op = "opening directory";
        let fd = sys::open_in_root(
            self.root.as_fd(),
            path.as_str(),
            OFlag::O_PATH | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(|errno| self.os_error(op, path, errno))?;
        Ok(fd)
    }

    /// Records a filesystem the caller mounted on the guest directory `mount_point`.
    pub fn record_mount(
        &mut self,
        mount_point: &GuestPath,
        source: String,
        fs_type: String,
    ) -> Result<()> {
        let fd = self.open_dir(mount_point)?;
        let dev = fstat(&fd, "recording mount", mount_point)?.st_dev;
        self.mounts.push(TreeMount {
            info: MountInfo {
                mount_point: mount_point.clone(),
                source,
                fs_type,
            },
            dev,
        });
        Ok(())
    }

    /// Records that the guest mounts a filesystem on `mount_point` that is not mounted here.
    /// Writes beneath it then fail with [`VfsError::NotMounted`], because they would land
    /// on the filesystem underneath and be hidden when the guest mounts its own.
    ///
    /// With `covered`, the caller has mounted an empty placeholder filesystem on the mount
    /// point, and the tree recognises every file beneath it by the placeholder's device
    /// number, however the guest's symlinks lead there. Without it, the mount point
    /// directory is missing, and the tree rejects creating it or anything beneath it, by the
    /// symlink-free path each walk computes.
    pub fn record_unmounted(&mut self, mount_point: &GuestPath, covered: bool) -> Result<()> {
        let placeholder_dev = if covered {
            let fd = self.open_dir(mount_point)?;
            Some(fstat(&fd, "recording unmounted mount point", mount_point)?.st_dev)
        } else {
            None
        };
        self.unmounted.push(Unmounted {
            mount_point: mount_point.clone(),
            placeholder_dev,
        });
        Ok(())
    }

    /// Flushes every filesystem of the tree to its device.
    pub fn sync_all(&self) -> Result<()> {
        for mount in &self.mounts {
            let path = &mount.info.mount_point;
            let fd = sys::open_in_root(
                self.root.as_fd(),
                path.as_str(),
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .map_err(|errno| os_error("opening for sync", path, errno))?;
            nix::unistd::syncfs(&fd).map_err(|errno| os_error("syncing", path, errno))?;
        }
        Ok(())
    }

    /// Resolves `path` inside the guest to an `O_PATH` descriptor.
    fn resolve(&self, op: &'static str, path: &GuestPath, follow_last: bool) -> Result<Object> {
        let mut flags = OFlag::O_PATH;
        if !follow_last {
            flags |= OFlag::O_NOFOLLOW;
        }
        let fd = sys::open_in_root(self.root.as_fd(), path.as_str(), flags, Mode::empty())
            .map_err(|errno| self.os_error(op, path, errno))?;
        let stat = fstat(&fd, op, path)?;
        Ok(Object { fd, stat })
    }

    /// Opens a regular file or directory for reading, checking that it is the object
    /// `object` resolved to, so that only the kinds checked are ever opened for I/O.
    fn reopen_for_io(&self, op: &'static str, path: &GuestPath, object: &Object) -> Result<File> {
        let fd = sys::open_in_root(
            self.root.as_fd(),
            path.as_str(),
            OFlag::O_RDONLY | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
            Mode::empty(),
        )
        .map_err(|errno| self.os_error(op, path, errno))?;
        let stat = fstat(&fd, op, path)?;
        if (stat.st_dev, stat.st_ino) != (object.stat.st_dev, object.stat.st_ino) {
            return Err(VfsError::Backend {
                op,
                path: path.clone(),
                message: "the path changed to another file while it was being opened".into(),
            });
        }
        Ok(File::from(fd))
    }

    /// Resolves `path`, following every symlink, and returns the descriptor that mode and
    /// attribute calls act on.
    fn resolve_for_change(
        &self,
        op: &'static str,
        path: &GuestPath,
    ) -> Result<(Object, Option<File>)> {
        let object = self.resolve(op, path, true)?;
        self.check_mounted(path, object.stat.st_dev)?;
        let kind = sys::file_type(&object.stat);
        let file = if kind == libc::S_IFREG || kind == libc::S_IFDIR {
            Some(self.reopen_for_io(op, path, &object)?)
        } else {
            None
        };
        Ok((object, file))
    }

    /// Walks to the directory `path` names, following symlinks in the guest, and returns its
    /// symlink-free guest path and descriptor.
    fn walk_dir(
        &self,
        op: &'static str,
        path: &GuestPath,
        follows: &mut usize,
        missing: Missing,
    ) -> Result<WalkedDir> {
        // Names still to walk, the next one last.
        let mut pending: Vec<String> = path.components().rev().map(str::to_owned).collect();
        // Directories walked so far below the root, each with the name it was reached by.
        let mut walked: Vec<(String, OwnedFd)> = Vec::new();

        while let Some(name) = pending.pop() {
            match name.as_str() {
                "" | "." => continue,
                ".." => {
                    walked.pop();
                    continue;
                }
                _ => {}
            }
            if !self.unmounted.is_empty() {
                let next = path_of(&walked)?.join(&name)?;
                self.check_walked_path(path, &next)?;
            }
            let dir = walked
                .last()
                .map_or(self.root.as_fd(), |(_, fd)| fd.as_fd());

            let opened =
                sys::open_beneath(dir, &name, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty());
            let fd = match (opened, missing) {
                (Ok(fd), _) => fd,
                (Err(Errno::ENOENT), Missing::Create(mode)) => {
                    self.create_dir(op, path, dir, &name, mode)?
                }
                (Err(errno), _) => return Err(self.walk_error(op, path, dir, errno)),
            };
            let stat = fstat(&fd, op, path)?;

            match sys::file_type(&stat) {
                libc::S_IFDIR => walked.push((name, fd)),
                libc::S_IFLNK => {
                    *follows += 1;
                    if *follows > MAX_SYMLINK_FOLLOWS {
                        return Err(VfsError::SymlinkLoop { path: path.clone() });
                    }
                    let target = read_link(&fd, "", op, path)?;
                    if target.starts_with('/') {
                        walked.clear();
                    }
                    pending.extend(target.split('/').rev().map(str::to_owned));
                }
                _ => return Err(VfsError::NotADirectory { path: path.clone() }),
            }
        }

        let walked_path = path_of(&walked)?;
        let fd = match walked.pop() {
            Some((_, fd)) => fd,
            None => self
                .root
                .try_clone()
                .map_err(|err| VfsError::from_io(op, path, err))?,
        };
        Ok(WalkedDir {
            path: walked_path,
            fd,
        })
    }

    /// Creates the directory `name` in `dir` with `mode` (no umask) and root as owner, and
    /// returns an `O_PATH` descriptor of it. A directory created by someone else in between
    /// is taken as it is.
    fn create_dir(
        &self,
        op: &'static str,
        path: &GuestPath,
        dir: BorrowedFd<'_>,
        name: &str,
        mode: u32,
    ) -> Result<OwnedFd> {
        let created = match nix::sys::stat::mkdirat(dir, name, Mode::from_bits_truncate(0o700)) {
            Ok(()) => true,
            Err(Errno::EEXIST) => false,
            Err(errno) => return Err(self.walk_error(op, path, dir, errno)),
        };
        if created {
            let new_dir = sys::open_beneath(
                dir,
                name,
                OFlag::O_RDONLY | OFlag::O_DIRECTORY,
                Mode::empty(),
            )
            .map_err(|errno| os_error(op, path, errno))?;
            set_root_owner(new_dir.as_fd(), op, path)?;
            nix::sys::stat::fchmod(&new_dir, mode_bits(mode))
                .map_err(|errno| os_error(op, path, errno))?;
        }
        sys::open_beneath(dir, name, OFlag::O_PATH | OFlag::O_NOFOLLOW, Mode::empty())
            .map_err(|errno| self.walk_error(op, path, dir, errno))
    }

    /// Follows `path` to its last name: walks the parent, and while the last name is a
    /// symlink, resolves its target inside the guest and starts again.
    fn resolve_final_name(&self, op: &'static str, path: &GuestPath) -> Result<FinalName> {
        let mut follows = 0;
        let mut current = path.clone();
        loop {
            let (Some(parent), Some(name)) = (current.parent(), current.file_name()) else {
                return Err(VfsError::IsADirectory { path: path.clone() });
            };
            let dir = self.walk_dir(op, &parent, &mut follows, Missing::Fail)?;
            self.check_mounted(path, fstat(&dir.fd, op, path)?.st_dev)?;
            self.check_walked_path(path, &dir.path.join(name)?)?;

            let stat = match nix::sys::stat::fstatat(&dir.fd, name, AtFlags::AT_SYMLINK_NOFOLLOW) {
                Ok(stat) => stat,
                Err(Errno::ENOENT) => {
                    return Ok(FinalName {
                        dir,
                        name: name.to_owned(),
                        existing: None,
                    })
                }
                Err(errno) => return Err(os_error(op, path, errno)),
            };
            if sys::file_type(&stat) != libc::S_IFLNK {
                return Ok(FinalName {
                    dir,
                    name: name.to_owned(),
                    existing: Some(stat),
                });
            }

            follows += 1;
            if follows > MAX_SYMLINK_FOLLOWS {
                return Err(VfsError::SymlinkLoop { path: path.clone() });
            }
            let target = read_link(&dir.fd, name, op, path)?;
            current = resolve_link_target(&dir.path, &target)?;
        }
    }

    /// Walks to the directory that holds `path`'s last name, following symlinks in the
    /// parents only.
    fn parent_of(&self, op: &'static str, path: &GuestPath) -> Result<(WalkedDir, String)> {
        let (Some(parent), Some(name)) = (path.parent(), path.file_name()) else {
            return Err(VfsError::IsADirectory { path: path.clone() });
        };
        let mut follows = 0;
        let dir = self.walk_dir(op, &parent, &mut follows, Missing::Fail)?;
        self.check_mounted(path, fstat(&dir.fd, op, path)?.st_dev)?;
        self.check_walked_path(path, &dir.path.join(name)?)?;
        Ok((dir, name.to_owned()))
    }

    /// Fails with [`VfsError::NotMounted`] when `dev` is a placeholder's device.
    fn check_mounted(&self, path: &GuestPath, dev: u64) -> Result<()> {
        let found = self
            .unmounted
            .iter()
            .find(|unmounted| unmounted.placeholder_dev == Some(dev));
        match found {
            Some(unmounted) => Err(VfsError::NotMounted {
                path: path.clone(),
                mount_point: unmounted.mount_point.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Fails with [`VfsError::NotMounted`] when the symlink-free guest path `walked` lies
    /// beneath an unmounted mount point.
    fn check_walked_path(&self, path: &GuestPath, walked: &GuestPath) -> Result<()> {
        let found = self
            .unmounted
            .iter()
            .find(|unmounted| walked.starts_with(&unmounted.mount_point));
        match found {
            Some(unmounted) => Err(VfsError::NotMounted {
                path: path.clone(),
                mount_point: unmounted.mount_point.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Maps an error met while walking inside `dir`, reporting a placeholder as
    /// [`VfsError::NotMounted`].
    fn walk_error(
        &self,
        op: &'static str,
        path: &GuestPath,
        dir: BorrowedFd<'_>,
        errno: Errno,
    ) -> VfsError {
        if let Ok(stat) = nix::sys::stat::fstat(dir) {
            if let Err(err) = self.check_mounted(path, stat.st_dev) {
                return err;
            }
        }
        os_error(op, path, errno)
    }

    /// Maps an error of a one-call lookup. When placeholders exist and the path was not
    /// found, walks the path again to tell whether it lies beneath one.
    fn os_error(&self, op: &'static str, path: &GuestPath, errno: Errno) -> VfsError {
        if !self.unmounted.is_empty() && matches!(errno, Errno::ENOENT | Errno::EROFS) {
            if let Some(parent) = path.parent() {
                let mut follows = 0;
                match self.walk_dir(op, &parent, &mut follows, Missing::Fail) {
                    Err(err @ VfsError::NotMounted { .. }) => return err,
                    Ok(dir) => {
                        if let Ok(stat) = nix::sys::stat::fstat(&dir.fd) {
                            if let Err(err) = self.check_mounted(path, stat.st_dev) {
                                return err;
                            }
                        }
                    }
                    Err(_) => {}
                }
            }
        }
        os_error(op, path, errno)
    }

    /// Streams `contents` into a new temporary file beside `target`, gives it the
    /// attributes the result must have, and renames it over the target.
    ///
    /// With [`TempKind::Unnamed`] the file has no name until its contents and attributes
    /// are on disk, so a process killed while writing leaves nothing in the guest. Only a
    /// kill between naming the file and the rename leaves a hidden temporary name behind.
    fn replace_file(
        &self,
        path: &GuestPath,
        target: &FinalName,
        contents: &mut dyn Read,
        create_mode: u32,
        kind: TempKind,
    ) -> Result<u64> {
        let op = "writing";
        let dir = sys::open_beneath(
            target.dir.fd.as_fd(),
            ".",
            OFlag::O_RDONLY | OFlag::O_DIRECTORY,
            Mode::empty(),
        )
        .map_err(|errno| os_error(op, path, errno))?;
        let mut temp = TempFile::create(&dir, path, kind)?;

        let written =
            io::copy(contents, &mut temp).map_err(|source| match source.raw_os_error() {
                // An error writing the guest file carries an errno; an error from the reader is
                // reported as such.
                Some(_) if temp.write_failed => VfsError::from_io(op, path, source),
                _ => VfsError::Io {
                    op: "reading the new contents for",
                    path: path.clone(),
                    source,
                },
            })?;

        match &target.existing {
            Some(old) => {
                let old_file = sys::open_beneath(
                    target.dir.fd.as_fd(),
                    &target.name,
                    OFlag::O_RDONLY | OFlag::O_NOFOLLOW | OFlag::O_NONBLOCK | OFlag::O_NOCTTY,
                    Mode::empty(),
                )
                .map_err(|errno| os_error(op, path, errno))?;
                let current = fstat(&old_file, op, path)?;
                if (current.st_dev, current.st_ino) != (old.st_dev, old.st_ino) {
                    return Err(VfsError::Backend {
                        op,
                        path: path.clone(),
                        message: "the file was replaced by another while it was being written"
                            .into(),
                    });
                }
                copy_attributes(&old_file, old, temp.file.as_fd(), op, path)?;
            }
            None => {
                set_root_owner(temp.file.as_fd(), op, path)?;
                nix::sys::stat::fchmod(&temp.file, mode_bits(create_mode))
                    .map_err(|errno| os_error(op, path, errno))?;
            }
        }
        temp.file
            .sync_all()
            .map_err(|err| VfsError::from_io(op, path, err))?;

        let temp_name = temp.link(path)?;
        nix::fcntl::renameat(&dir, temp_name.as_str(), &dir, target.name.as_str())
            .map_err(|errno| os_error(op, path, errno))?;
        temp.keep();
        nix::unistd::fsync(&dir).map_err(|errno| os_error(op, path, errno))?;
        Ok(written)
    }
}

impl GuestFs for RootedTree {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn mounts(&self) -> Vec<MountInfo> {
        self.mounts.iter().map(|mount| mount.info.clone()).collect()
    }

    fn fs_type(&mut self, path: &GuestPath) -> Result<String> {
        let op = "finding the filesystem of";
        let object = self.resolve(op, path, true)?;
        let dev = object.stat.st_dev;
        if let Some(mount) = self.mounts.iter().find(|mount| mount.dev == dev) {
            return Ok(mount.info.fs_type.clone());
        }
        match host_fs_type(dev) {
            Ok(Some(fs_type)) => Ok(fs_type),
            Ok(None) => Err(VfsError::Backend {
                op,
                path: path.clone(),
                message: format!("device {dev:#x} is not in the host's mount table"),
            }),
            Err(err) => Err(VfsError::Io {
                op,
                path: path.clone(),
                source: err,
            }),
        }
    }

    fn exists(&mut self, path: &GuestPath) -> Result<bool> {
        match self.resolve("checking", path, true) {
            Ok(_) => Ok(true),
            Err(VfsError::NotFound { .. }) | Err(VfsError::NotADirectory { .. }) => Ok(false),
            Err(err) => Err(err),
        }
    }

    fn metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        let object = self.resolve("reading metadata of", path, true)?;
        Ok(metadata_of(&object.stat))
    }

    fn symlink_metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        let object = self.resolve("reading metadata of", path, false)?;
        Ok(metadata_of(&object.stat))
    }

    fn read_file(&mut self, path: &GuestPath) -> Result<Vec<u8>> {
        let op = "reading";
        let object = self.resolve(op, path, true)?;
        match sys::file_type(&object.stat) {
            libc::S_IFREG => {}
            libc::S_IFDIR => return Err(VfsError::IsADirectory { path: path.clone() }),
            _ => return Err(VfsError::NotAFile { path: path.clone() }),
        }
        check_read_size(path, object.stat.st_size as u64)?;

        let file = self.reopen_for_io(op, path, &object)?;
        let mut contents = Vec::with_capacity(object.stat.st_size as usize);
        // The file may grow after the size check; read one byte past the limit to notice.
        file.take(MAX_READ_BYTES + 1)
            .read_to_end(&mut contents)
            .map_err(|err| VfsError::from_io(op, path, err))?;
        check_read_size(path, contents.len() as u64)?;
        Ok(contents)
    }

    fn create_dir_all(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        let mut follows = 0;
        self.walk_dir(
            "creating directory",
            path,
            &mut follows,
            Missing::Create(mode),
        )?;
        Ok(())
    }

    fn write_file(
        &mut self,
        path: &GuestPath,
        contents: &mut dyn Read,
        create_mode: u32,
    ) -> Result<u64> {
        let target = self.resolve_final_name("writing", path)?;
        if let Some(existing) = &target.existing {
            match sys::file_type(existing) {
                libc::S_IFREG => {}
                libc::S_IFDIR => return Err(VfsError::IsADirectory { path: path.clone() }),
                _ => return Err(VfsError::NotAFile { path: path.clone() }),
            }
        }
        self.replace_file(path, &target, contents, create_mode, TempKind::Unnamed)
    }

    fn append_file(&mut self, path: &GuestPath, data: &[u8], create_mode: u32) -> Result<()> {
        let op = "appending to";
        let target = self.resolve_final_name(op, path)?;
        let dir = target.dir.fd.as_fd();
        let flags = OFlag::O_WRONLY
            | OFlag::O_APPEND
            | OFlag::O_NOFOLLOW
            | OFlag::O_NONBLOCK
            | OFlag::O_NOCTTY;

        let file = match &target.existing {
            Some(existing) => {
                match sys::file_type(existing) {
                    libc::S_IFREG => {}
                    libc::S_IFDIR => return Err(VfsError::IsADirectory { path: path.clone() }),
                    _ => return Err(VfsError::NotAFile { path: path.clone() }),
                }
                let fd = sys::open_beneath(dir, &target.name, flags, Mode::empty())
                    .map_err(|errno| os_error(op, path, errno))?;
                if sys::file_type(&fstat(&fd, op, path)?) != libc::S_IFREG {
                    return Err(VfsError::NotAFile { path: path.clone() });
                }
                File::from(fd)
            }
            None => {
                let fd = sys::open_beneath(
                    dir,
                    &target.name,
                    flags | OFlag::O_CREAT | OFlag::O_EXCL,
                    Mode::from_bits_truncate(0o600),
                )
                .map_err(|errno| os_error(op, path, errno))?;
                set_root_owner(fd.as_fd(), op, path)?;
                nix::sys::stat::fchmod(&fd, mode_bits(create_mode))
                    .map_err(|errno| os_error(op, path, errno))?;
                File::from(fd)
            }
        };

        let mut file = file;
        file.write_all(data)
            .map_err(|err| VfsError::from_io(op, path, err))?;
        file.sync_all()
            .map_err(|err| VfsError::from_io(op, path, err))
    }

    fn set_mode(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        let op = "changing the mode of";
        let (object, file) = self.resolve_for_change(op, path)?;
        let mode = mode_bits(mode);
        let result = match &file {
            Some(file) => nix::sys::stat::fchmod(file, mode),
            // Linux before 6.6 has no descriptor-based chmod for an `O_PATH` descriptor.
            None => nix::sys::stat::fchmodat(
                AT_FDCWD,
                sys::proc_fd_path(object.fd.as_fd()).as_c_str(),
                mode,
                FchmodatFlags::FollowSymlink,
            ),
        };
        result.map_err(|errno| os_error(op, path, errno))
    }

    fn set_owner_ids(
        &mut self,
        path: &GuestPath,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        let op = "changing the owner of";
        let (object, _) = self.resolve_for_change(op, path)?;
        nix::unistd::fchownat(
            &object.fd,
            "",
            uid.map(Uid::from_raw),
            gid.map(Gid::from_raw),
            AtFlags::AT_EMPTY_PATH,
        )
        .map_err(|errno| os_error(op, path, errno))
    }

    fn symlink(&mut self, target: &str, link: &GuestPath) -> Result<()> {
        let op = "creating symlink";
        let (dir, name) = self.parent_of(op, link)?;
        nix::unistd::symlinkat(target, &dir.fd, name.as_str())
            .map_err(|errno| os_error(op, link, errno))?;
        let stat = nix::sys::stat::fstatat(&dir.fd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|errno| os_error(op, link, errno))?;
        if (stat.st_uid, stat.st_gid) != (0, 0) {
            nix::unistd::fchownat(
                &dir.fd,
                name.as_str(),
                Some(Uid::from_raw(0)),
                Some(Gid::from_raw(0)),
                AtFlags::AT_SYMLINK_NOFOLLOW,
            )
            .map_err(|errno| os_error(op, link, errno))?;
        }
        Ok(())
    }

    fn remove_file(&mut self, path: &GuestPath) -> Result<()> {
        let op = "removing";
        let (dir, name) = self.parent_of(op, path)?;
        let stat = nix::sys::stat::fstatat(&dir.fd, name.as_str(), AtFlags::AT_SYMLINK_NOFOLLOW)
            .map_err(|errno| os_error(op, path, errno))?;
        if sys::file_type(&stat) == libc::S_IFDIR {
            return Err(VfsError::IsADirectory { path: path.clone() });
        }
        nix::unistd::unlinkat(&dir.fd, name.as_str(), UnlinkatFlags::NoRemoveDir)
            .map_err(|errno| os_error(op, path, errno))
    }

    fn xattrs(&mut self, path: &GuestPath) -> Result<Vec<(String, Vec<u8>)>> {
        let op = "reading extended attributes of";
        let object = self.resolve(op, path, true)?;
        let kind = sys::file_type(&object.stat);
        let file = if kind == libc::S_IFREG || kind == libc::S_IFDIR {
            Some(self.reopen_for_io(op, path, &object)?)
        } else {
            None
        };
        let target = xattr_target(&object, file.as_ref());
        let mut pairs = read_xattrs(&target).map_err(|err| VfsError::from_io(op, path, err))?;
        pairs.sort();

        pairs
            .into_iter()
            .map(|(name, value)| match name.into_string() {
                Ok(name) => Ok((name, value)),
                Err(_) => Err(VfsError::Malformed {
                    path: path.clone(),
                    reason: "an extended attribute name is not UTF-8".into(),
                }),
            })
            .collect()
    }

    fn set_xattr(&mut self, path: &GuestPath, name: &str, value: &[u8]) -> Result<()> {
        let op = "setting an extended attribute of";
        let c_name = CString::new(name).map_err(|_| VfsError::Backend {
            op,
            path: path.clone(),
            message: format!("extended attribute name {name:?} contains a NUL byte"),
        })?;
        let (object, file) = self.resolve_for_change(op, path)?;
        let target = xattr_target(&object, file.as_ref());
        sys::set_xattr(&target, &c_name, value).map_err(|err| VfsError::from_io(op, path, err))
    }

    fn free_space(&mut self, path: &GuestPath) -> Result<u64> {
        let op = "reading free space of";
        let object = self.resolve(op, path, true)?;
        let stats =
            nix::sys::statvfs::fstatvfs(&object.fd).map_err(|errno| os_error(op, path, errno))?;
        Ok(stats.blocks_available() as u64 * stats.fragment_size() as u64)
    }

    /// Does nothing: the tree mounts nothing itself, so whoever mounted the directories it
    /// works on decides whether they are writable. [`crate::LocalMount`] remounts its own.
    fn enable_writes(&mut self) -> Result<()> {
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.sync_all()
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.sync_all()
    }
}

/// The kind of temporary file [`TempFile::create`] makes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum TempKind {
    /// An `O_TMPFILE` file that gets a name only just before the rename, or a
    /// [`TempKind::Named`] file on filesystems without `O_TMPFILE`.
    Unnamed,
    /// A file with a random hidden name from the start.
    Named,
}

/// A temporary file beside the file it will replace; dropping it before [`TempFile::keep`]
/// removes it.
struct TempFile<'dir> {
    dir: BorrowedFd<'dir>,
    /// The file's name in `dir`, `None` while an `O_TMPFILE` file has no name.
    name: Option<String>,
    file: File,
    kept: bool,
    /// Set when a write into the file failed, to tell guest errors from reader errors.
    write_failed: bool,
}

/// How many random names [`TempFile`] tries before it gives up.
const TEMP_NAME_ATTEMPTS: usize = 16;

impl<'dir> TempFile<'dir> {
    /// Creates a new file with mode 0600 in `dir`, unnamed when `kind` and the filesystem
    /// allow it.
    fn create(dir: &'dir OwnedFd, path: &GuestPath, kind: TempKind) -> Result<Self> {
        if kind == TempKind::Unnamed {
            let flags = OFlag::O_TMPFILE | OFlag::O_WRONLY;
            return match sys::open_beneath(dir.as_fd(), ".", flags, Mode::from_bits_truncate(0o600))
            {
                Ok(fd) => Ok(Self::new(dir, None, fd)),
                // The filesystem lacks `O_TMPFILE` support: EOPNOTSUPP from most,
                // EISDIR or EINVAL from kernels or filesystems that do not know the flag
                // (open(2)). A named temporary file is then the only way.
                Err(Errno::EOPNOTSUPP | Errno::EISDIR | Errno::EINVAL) => {
                    tracing::debug!("the guest filesystem rejects O_TMPFILE; using a named file");
                    Self::create(dir, path, TempKind::Named)
                }
                Err(errno) => Err(os_error("creating a temporary file for", path, errno)),
            };
        }

        for _ in 0..TEMP_NAME_ATTEMPTS {
            let name = temp_name();
            match sys::open_beneath(
                dir.as_fd(),
                &name,
                OFlag::O_WRONLY | OFlag::O_CREAT | OFlag::O_EXCL | OFlag::O_NOFOLLOW,
                Mode::from_bits_truncate(0o600),
            ) {
                Ok(fd) => return Ok(Self::new(dir, Some(name), fd)),
                Err(Errno::EEXIST) => continue,
                Err(errno) => return Err(os_error("creating a temporary file for", path, errno)),
            }
        }
        Err(os_error(
            "creating a temporary file for",
            path,
            Errno::EEXIST,
        ))
    }

    fn new(dir: &'dir OwnedFd, name: Option<String>, fd: OwnedFd) -> Self {
        Self {
            dir: dir.as_fd(),
            name,
            file: File::from(fd),
            kept: false,
            write_failed: false,
        }
    }

    /// Returns the file's name in its directory, first linking an unnamed file there under
    /// a random name.
    fn link(&mut self, path: &GuestPath) -> Result<String> {
        if let Some(name) = &self.name {
            return Ok(name.clone());
        }
        for _ in 0..TEMP_NAME_ATTEMPTS {
            let name = temp_name();
            match link_fd(self.file.as_fd(), self.dir, &name) {
                Ok(()) => {
                    self.name = Some(name.clone());
                    return Ok(name);
                }
                Err(Errno::EEXIST) => continue,
                Err(errno) => return Err(os_error("naming the temporary file for", path, errno)),
            }
        }
        Err(os_error(
            "naming the temporary file for",
            path,
            Errno::EEXIST,
        ))
    }

    /// Leaves the file in place; it has been renamed to its final name.
    fn keep(&mut self) {
        self.kept = true;
    }
}

impl Write for TempFile<'_> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let result = self.file.write(buf);
        if result.is_err() {
            self.write_failed = true;
        }
        result
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

impl Drop for TempFile<'_> {
    /// Removes the file's name; an unnamed file is freed when its descriptor closes.
    fn drop(&mut self) {
        let Some(name) = &self.name else {
            return;
        };
        if self.kept {
            return;
        }
        if let Err(errno) =
            nix::unistd::unlinkat(self.dir, name.as_str(), UnlinkatFlags::NoRemoveDir)
        {
            tracing::warn!(%name, %errno, "removing a temporary file failed");
        }
    }
}

/// Links the file open as `fd` into `dir` as `name`.
///
/// `AT_EMPTY_PATH` links the descriptor itself but needs `CAP_DAC_READ_SEARCH`, and
/// without it the kernel returns ENOENT. The `/proc/self/fd` path, a magic link that
/// `AT_SYMLINK_FOLLOW` follows to the open file, works without that capability.
fn link_fd(fd: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &str) -> nix::Result<()> {
    match nix::unistd::linkat(fd, "", dir, name, AtFlags::AT_EMPTY_PATH) {
        Err(Errno::ENOENT) => nix::unistd::linkat(
            AT_FDCWD,
            sys::proc_fd_path(fd).as_c_str(),
            dir,
            name,
            AtFlags::AT_SYMLINK_FOLLOW,
        ),
        result => result,
    }
}

fn temp_name() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    // Each `RandomState` carries fresh random keys, so the hash is unpredictable; O_EXCL
    // catches the rare collision.
    let value =
        RandomState::new().hash_one((COUNTER.fetch_add(1, Ordering::Relaxed), std::process::id()));
    format!(".guest-inject-{value:016x}.tmp")
}

/// Returns the guest path of the directories a walk holds.
fn path_of(walked: &[(String, OwnedFd)]) -> Result<GuestPath> {
    if walked.is_empty() {
        return Ok(GuestPath::root());
    }
    let names: Vec<&str> = walked.iter().map(|(name, _)| name.as_str()).collect();
    Ok(GuestPath::new(&format!("/{}", names.join("/")))?)
}

/// Gives `new` the owner, extended attributes and mode of `old`.
///
/// The owner comes first because a change of owner clears setuid bits and
/// `security.capability`; the mode comes last so that it wins over a POSIX ACL's mask.
fn copy_attributes(
    old: &OwnedFd,
    old_stat: &FileStat,
    new: BorrowedFd<'_>,
    op: &'static str,
    path: &GuestPath,
) -> Result<()> {
    nix::unistd::fchown(
        new,
        Some(Uid::from_raw(old_stat.st_uid)),
        Some(Gid::from_raw(old_stat.st_gid)),
    )
    .map_err(|errno| os_error(op, path, errno))?;

    let pairs = read_xattrs(&XattrTarget::Fd(old.as_fd()))
        .map_err(|err| VfsError::from_io(op, path, err))?;
    let new_target = XattrTarget::Fd(new);
    for (name, value) in &pairs {
        sys::set_xattr(&new_target, name, value).map_err(|err| VfsError::Io {
            op: "copying an extended attribute to",
            path: path.clone(),
            source: io::Error::new(err.kind(), format!("{}: {err}", name.to_string_lossy())),
        })?;
    }

    nix::sys::stat::fchmod(new, mode_bits(old_stat.st_mode))
        .map_err(|errno| os_error(op, path, errno))
}

fn read_xattrs(target: &XattrTarget<'_>) -> io::Result<Vec<(CString, Vec<u8>)>> {
    let mut pairs = Vec::new();
    for name in sys::list_xattr_names(target)? {
        match sys::get_xattr(target, &name) {
            Ok(value) => pairs.push((name, value)),
            // Removed between listing and reading.
            Err(err) if err.raw_os_error() == Some(libc::ENODATA) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(pairs)
}

fn xattr_target<'a>(object: &'a Object, file: Option<&'a File>) -> XattrTarget<'a> {
    match file {
        Some(file) => XattrTarget::Fd(file.as_fd()),
        None => XattrTarget::ProcPath(sys::proc_fd_path(object.fd.as_fd())),
    }
}

/// Makes root the owner of a file this tree just created, unless it already is.
fn set_root_owner(fd: BorrowedFd<'_>, op: &'static str, path: &GuestPath) -> Result<()> {
    let stat = fstat(&fd, op, path)?;
    if (stat.st_uid, stat.st_gid) == (0, 0) {
        return Ok(());
    }
    nix::unistd::fchown(fd, Some(Uid::from_raw(0)), Some(Gid::from_raw(0)))
        .map_err(|errno| os_error(op, path, errno))
}

fn read_link(dir: &OwnedFd, name: &str, op: &'static str, path: &GuestPath) -> Result<String> {
    let target = nix::fcntl::readlinkat(dir, name).map_err(|errno| os_error(op, path, errno))?;
    target.into_string().map_err(|_| VfsError::Malformed {
        path: path.clone(),
        reason: "a symlink on the way has a target that is not UTF-8".into(),
    })
}

fn fstat(fd: &impl AsFd, op: &'static str, path: &GuestPath) -> Result<FileStat> {
    nix::sys::stat::fstat(fd.as_fd()).map_err(|errno| os_error(op, path, errno))
}

fn metadata_of(stat: &FileStat) -> Metadata {
    let kind = match sys::file_type(stat) {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    };
    Metadata {
        kind,
        mode: stat.st_mode & 0o7777,
        uid: stat.st_uid,
        gid: stat.st_gid,
        size: stat.st_size as u64,
    }
}

fn mode_bits(mode: u32) -> Mode {
    Mode::from_bits_truncate(mode & 0o7777)
}

fn os_error(op: &'static str, path: &GuestPath, errno: Errno) -> VfsError {
    VfsError::from_io(op, path, io::Error::from(errno))
}

/// Looks up the type of the host filesystem with device number `dev`.
fn host_fs_type(dev: u64) -> io::Result<Option<String>> {
    Ok(sys::read_mountinfo()?
        .into_iter()
        .rev()
        .find(|entry| entry.dev == dev)
        .map(|entry| entry.fs_type))
}

#[cfg(test)]
mod tests {
    //! The named temporary file that [`TempKind::Unnamed`] falls back to on filesystems
    //! without `O_TMPFILE`, forced here because the test's filesystem supports it.

    use std::fs;

    use super::*;

    /// A reader that returns `limit` bytes of `b'x'` and then fails.
    struct FailingAfter {
        limit: usize,
        given: usize,
    }

    impl Read for FailingAfter {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            if self.given == self.limit {
                return Err(io::Error::other("source broke"));
            }
            let count = buf.len().min(self.limit - self.given);
            buf[..count].fill(b'x');
            self.given += count;
            Ok(count)
        }
    }

    fn replace_named(tree: &RootedTree, path: &str, contents: &mut dyn Read) -> Result<u64> {
        let path = GuestPath::new(path).unwrap();
        let target = tree.resolve_final_name("writing", &path)?;
        tree.replace_file(&path, &target, contents, 0o644, TempKind::Named)
    }

    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn named_temp_replaces_file_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"old").unwrap();
        let tree = RootedTree::open(dir.path()).unwrap();

        let written = replace_named(&tree, "/a", &mut &b"new"[..]).unwrap();

        assert_eq!(written, 3);
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"new");
        assert_eq!(names_in(dir.path()), ["a"]);
    }

    #[test]
    fn named_temp_failing_halfway_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a"), b"old").unwrap();
        let tree = RootedTree::open(dir.path()).unwrap();
        let mut reader = FailingAfter {
            limit: 100_000,
            given: 0,
        };

        let result = replace_named(&tree, "/a", &mut reader);

        assert!(matches!(result, Err(VfsError::Io { .. })), "{result:?}");
        assert_eq!(fs::read(dir.path().join("a")).unwrap(), b"old");
        assert_eq!(names_in(dir.path()), ["a"]);
    }
}
