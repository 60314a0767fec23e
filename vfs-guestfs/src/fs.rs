//! [`GuestfsFs`]: the [`GuestFs`] operations mapped onto libguestfs calls.
//!
//! Paths are resolved inside the appliance, whose daemon runs each file call chrooted into
//! the guest root, so the kernel resolves symlinks as the guest would see them. Some steps
//! need the resolved path itself: the check for a write beneath a mount point that failed
//! to mount, the directory of a temporary file, and `ln_s`, which runs outside the chroot.
//! For those the path is resolved first, with `realpath` for the existing part and
//! `readlink` for a last name that is a symlink.

use std::io::{self, Read};

use vfs_core::vfs::check_read_size;
use vfs_core::{
    FileKind, GuestFs, GuestPath, Metadata, MountInfo, Result, VfsError, MAX_READ_BYTES,
    MAX_SYMLINK_FOLLOWS,
};

use crate::appliance::Appliance;
use crate::error::vfs_error;
use crate::handle::{GuestfsHandle, HandleError, Stat};
use crate::open::{MountTable, WriteAccess};

/// The largest piece of data sent or read in one libguestfs call. The protocol caps one
/// message at 4 MiB, and the libguestfs documentation advises staying below 2 MiB.
pub(crate) const CHUNK_SIZE: usize = 1024 * 1024;

/// The name this backend is registered under.
pub const BACKEND_NAME: &str = "guestfs";

/// A guest filesystem tree opened in a libguestfs appliance.
///
/// Dropping it shuts the appliance down and closes the handle; [`GuestFs::close`] does the
/// same and reports a failed shutdown.
#[derive(Debug)]
pub struct GuestfsFs<H: GuestfsHandle = Appliance> {
    /// The handle; `None` once closed.
    handle: Option<H>,
    mounts: MountTable,
    access: WriteAccess,
    /// Distinguishes temporary file names made by this process.
    temp_counter: u64,
}

/// The destination of a path once every symlink on the way, the last name included, is
/// followed.
#[derive(Debug)]
struct Target {
    /// The resolved path; its directory exists.
    path: GuestPath,
    /// Its metadata, or `None` when nothing exists there yet.
    existing: Option<Stat>,
}

impl<H: GuestfsHandle> GuestfsFs<H> {
    /// Wraps a launched handle with its mounted filesystems, mounted as `access` says.
    pub(crate) fn new(handle: H, mounts: MountTable, access: WriteAccess) -> Self {
        Self {
            handle: Some(handle),
            mounts,
            access,
            temp_counter: 0,
        }
    }

    fn handle(&mut self) -> &mut H {
        self.handle
            .as_mut()
            .expect("the handle is present until close consumes the filesystem")
    }

    /// Resolves an existing path with every symlink followed.
    fn resolve_existing(&mut self, op: &'static str, path: &GuestPath) -> Result<GuestPath> {
        if path.is_root() {
            return Ok(GuestPath::root());
        }
        let resolved = self
            .handle()
            .realpath(path.as_str())
            .map_err(|error| vfs_error(op, path, error))?;
        GuestPath::new(&resolved).map_err(|error| VfsError::Backend {
            op,
            path: path.clone(),
            message: format!("realpath returned an invalid path {resolved:?}: {error}"),
        })
    }

    /// Resolves a path that may not exist yet: its directory must exist, and a last name
    /// that is a symlink is followed, dangling or not.
    fn resolve_target(&mut self, op: &'static str, path: &GuestPath) -> Result<Target> {
        let mut current = path.clone();
        for _ in 0..=MAX_SYMLINK_FOLLOWS {
            let Some(name) = current.file_name().map(str::to_owned) else {
                let stat = self
                    .handle()
                    .statns("/")
                    .map_err(|error| vfs_error(op, path, error))?;
                return Ok(Target {
                    path: GuestPath::root(),
                    existing: Some(stat),
                });
            };
            let parent = current.parent().unwrap_or_else(GuestPath::root);
            let parent = self.resolve_existing(op, &parent)?;
            let candidate = parent.join(&name)?;
            match self.handle().lstatns(candidate.as_str()) {
                Ok(stat) if stat.is_symlink() => {
                    let link = self
                        .handle()
                        .readlink(candidate.as_str())
                        .map_err(|error| vfs_error(op, path, error))?;
                    current = vfs_core::path::resolve_link_target(&parent, &link)?;
                }
                Ok(stat) => {
                    return Ok(Target {
                        path: candidate,
                        existing: Some(stat),
                    })
                }
                Err(error) if error.errno == libc::ENOENT => {
                    return Ok(Target {
                        path: candidate,
                        existing: None,
                    })
                }
                Err(error) => return Err(vfs_error(op, path, error)),
            }
        }
        Err(VfsError::SymlinkLoop { path: path.clone() })
    }

    /// Rejects a write to a resolved path beneath a mount point whose filesystem failed to
    /// mount, because the write would land on the filesystem underneath the mount point.
    fn check_mounted(&self, path: &GuestPath, resolved: &GuestPath) -> Result<()> {
        match self
            .mounts
            .failed
            .iter()
            .find(|mount_point| resolved.starts_with(mount_point))
        {
            Some(mount_point) => Err(VfsError::NotMounted {
                path: path.clone(),
                mount_point: mount_point.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Returns a name in `dir` that nothing uses yet, for a temporary file beside `name`.
    fn temp_path(&mut self, op: &'static str, dir: &GuestPath, name: &str) -> Result<GuestPath> {
        // The name stays well under the 255-byte limit whatever the target's name.
        let mut stem_end = name.len().min(200);
        while !name.is_char_boundary(stem_end) {
            stem_end -= 1;
        }
        let stem = &name[..stem_end];
        loop {
            self.temp_counter += 1;
            let candidate = dir.join(&format!(
                ".{stem}.guest-inject-{}-{}.tmp",
                std::process::id(),
                self.temp_counter
            ))?;
            match self.handle().lstatns(candidate.as_str()) {
                Err(error) if error.errno == libc::ENOENT => return Ok(candidate),
                Err(error) => return Err(vfs_error(op, &candidate, error)),
                Ok(_) => continue,
            }
        }
    }

    /// Fills `temp` from `contents` and gives it the attributes the target must have.
    fn fill_temp(
        &mut self,
        path: &GuestPath,
        target: &Target,
        temp: &GuestPath,
        contents: &mut dyn Read,
        create_mode: u32,
    ) -> Result<u64> {
        let handle = self.handle.as_mut().expect("open");
        let failed = |error| vfs_error("write_file", path, error);

        // Until the contents are in, only root may read the file: it may be a secret.
        handle.chmod(0o600, temp.as_str()).map_err(failed)?;

        let mut buffer = vec![0u8; CHUNK_SIZE];
        let mut written = 0u64;
        loop {
            let filled = fill_buffer(contents, &mut buffer).map_err(|source| VfsError::Io {
                op: "reading the contents to write to",
                path: path.clone(),
                source,
            })?;
            if filled == 0 {
                break;
            }
            handle
                .write_append(temp.as_str(), &buffer[..filled])
                .map_err(failed)?;
            written += filled as u64;
        }

        match target.existing {
            Some(old) => {
                // Owner before mode, because chown clears the setuid and setgid bits; the
                // extended attributes last, because chown also drops security.capability.
                handle
                    .chown(Some(old.uid), Some(old.gid), temp.as_str())
                    .map_err(failed)?;
                handle
                    .chmod(old.mode & 0o7777, temp.as_str())
                    .map_err(failed)?;
                let xattrs = handle.getxattrs(target.path.as_str()).map_err(failed)?;
                for (name, value) in xattrs {
                    handle
                        .setxattr(&name, &value, temp.as_str())
                        .map_err(failed)?;
                }
            }
            None => {
                // A setgid directory would otherwise hand its group to the new file.
                handle
                    .chown(Some(0), Some(0), temp.as_str())
                    .map_err(failed)?;
                handle
                    .chmod(create_mode & 0o7777, temp.as_str())
                    .map_err(failed)?;
            }
        }
        Ok(written)
    }

    /// Removes a temporary file after a failed write, logging a failure to do so.
    fn remove_temp(&mut self, temp: &GuestPath) {
        if let Err(error) = self.handle().rm(temp.as_str()) {
            tracing::warn!(path = %temp, error = %error.message, "removing a temporary file after a failed write failed");
        }
    }

    /// Creates one directory, owned by root with exactly `mode`.
    fn create_dir(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        let target = self.resolve_target("create_dir_all", path)?;
        self.check_mounted(path, &target.path)?;
        if let Some(stat) = target.existing {
            return if stat.is_dir() {
                Ok(())
            } else {
                Err(VfsError::NotADirectory { path: path.clone() })
            };
        }
        let handle = self.handle();
        let failed = |error| vfs_error("create_dir_all", path, error);
        handle
            .mkdir_mode(target.path.as_str(), mode)
            .map_err(failed)?;
        // mkdir applies the appliance's umask and may inherit a setgid parent's group.
        handle
            .chown(Some(0), Some(0), target.path.as_str())
            .map_err(failed)?;
        handle.chmod(mode, target.path.as_str()).map_err(failed)
    }

    /// Shuts the appliance down and closes the handle.
    fn shutdown(&mut self) -> std::result::Result<(), HandleError> {
        let Some(mut handle) = self.handle.take() else {
            return Ok(());
        };
        let _span = tracing::info_span!("shutdown").entered();
        let result = handle.shutdown();
        drop(handle);
        result
    }
}

/// Reads until `buffer` is full or the reader ends; returns the number of bytes read.
fn fill_buffer(reader: &mut dyn Read, buffer: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buffer.len() {
        match reader.read(&mut buffer[filled..]) {
            Ok(0) => break,
            Ok(count) => filled += count,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => return Err(error),
        }
    }
    Ok(filled)
}

fn metadata_from(stat: Stat) -> Metadata {
    let kind = match stat.mode & libc::S_IFMT {
        libc::S_IFREG => FileKind::File,
        libc::S_IFDIR => FileKind::Directory,
        libc::S_IFLNK => FileKind::Symlink,
        _ => FileKind::Other,
    };
    Metadata {
        kind,
        mode: stat.mode & 0o7777,
        uid: stat.uid,
        gid: stat.gid,
        size: stat.size,
    }
}

/// Keeps only the permission bits (setuid, setgid, sticky and rwx), dropping file-type
/// bits a caller may pass along from a full `st_mode`.
fn permission_bits(mode: u32) -> u32 {
    mode & 0o7777
}

impl<H: GuestfsHandle> GuestFs for GuestfsFs<H> {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn mounts(&self) -> Vec<MountInfo> {
        self.mounts
            .mounted
            .iter()
            .map(|mounted| MountInfo {
                mount_point: mounted.mount_point.clone(),
                source: mounted.device.clone(),
                fs_type: mounted.fs_type.clone(),
            })
            .collect()
    }

    fn fs_type(&mut self, path: &GuestPath) -> Result<String> {
        let resolved = self.resolve_existing("fs_type", path)?;
        self.mounts
            .mounted
            .iter()
            .filter(|mounted| resolved.starts_with(&mounted.mount_point))
            .max_by_key(|mounted| mounted.mount_point.components().count())
            .map(|mounted| mounted.fs_type.clone())
            .ok_or_else(|| VfsError::Backend {
                op: "fs_type",
                path: path.clone(),
                message: "no mounted filesystem contains this path".to_owned(),
            })
    }

    fn exists(&mut self, path: &GuestPath) -> Result<bool> {
        match self.handle().statns(path.as_str()) {
            Ok(_) => Ok(true),
            Err(error) if matches!(error.errno, libc::ENOENT | libc::ENOTDIR) => Ok(false),
            Err(error) => Err(vfs_error("exists", path, error)),
        }
    }

    fn metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        self.handle()
            .statns(path.as_str())
            .map(metadata_from)
            .map_err(|error| vfs_error("metadata", path, error))
    }

    fn symlink_metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        self.handle()
            .lstatns(path.as_str())
            .map(metadata_from)
            .map_err(|error| vfs_error("symlink_metadata", path, error))
    }

    fn read_file(&mut self, path: &GuestPath) -> Result<Vec<u8>> {
        // Resolve once, so every chunk comes from the same file.
        let resolved = self.resolve_existing("read_file", path)?;
        let stat = self
            .handle()
            .statns(resolved.as_str())
            .map_err(|error| vfs_error("read_file", path, error))?;
        if stat.is_dir() {
            return Err(VfsError::IsADirectory { path: path.clone() });
        }
        if !stat.is_file() {
            return Err(VfsError::NotAFile { path: path.clone() });
        }
        check_read_size(path, stat.size)?;

        // pread instead of read_file or download: those stage the contents in a host
        // temporary file, and this file may hold secrets such as /etc/shadow.
        let mut contents = Vec::with_capacity(stat.size as usize);
        loop {
            let chunk = self
                .handle()
                .pread(resolved.as_str(), CHUNK_SIZE as u32, contents.len() as u64)
                .map_err(|error| vfs_error("read_file", path, error))?;
            if chunk.is_empty() {
                break;
            }
            contents.extend_from_slice(&chunk);
            // The file may grow while it is read.
            check_read_size(path, contents.len() as u64)?;
        }
        debug_assert!(contents.len() as u64 <= MAX_READ_BYTES);
        Ok(contents)
    }

    fn create_dir_all(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        let mode = permission_bits(mode);
        for ancestor in path.ancestors_from_root().iter().skip(1) {
            match self.handle().statns(ancestor.as_str()) {
                Ok(stat) if stat.is_dir() => continue,
                Ok(_) => {
                    return Err(VfsError::NotADirectory {
                        path: ancestor.clone(),
                    })
                }
                Err(error) if error.errno == libc::ENOENT => self.create_dir(ancestor, mode)?,
                Err(error) => return Err(vfs_error("create_dir_all", ancestor, error)),
            }
        }
        Ok(())
    }

    fn write_file(
        &mut self,
        path: &GuestPath,
        contents: &mut dyn Read,
        create_mode: u32,
    ) -> Result<u64> {
        let create_mode = permission_bits(create_mode);
        let target = self.resolve_target("write_file", path)?;
        self.check_mounted(path, &target.path)?;
        match target.existing {
            Some(stat) if stat.is_dir() => {
                return Err(VfsError::IsADirectory { path: path.clone() })
            }
            Some(stat) if !stat.is_file() => return Err(VfsError::NotAFile { path: path.clone() }),
            _ => {}
        }
        let (Some(dir), Some(name)) = (target.path.parent(), target.path.file_name()) else {
            return Err(VfsError::IsADirectory { path: path.clone() });
        };
        let name = name.to_owned();

        // Write a temporary file beside the target and rename it over the target, so the
        // target has either the old or the new contents, never a part.
        let temp = self.temp_path("write_file", &dir, &name)?;
        self.handle()
            .write(temp.as_str(), &[])
            .map_err(|error| vfs_error("write_file", path, error))?;
        let written = match self.fill_temp(path, &target, &temp, contents, create_mode) {
            Ok(written) => written,
            Err(error) => {
                self.remove_temp(&temp);
                return Err(error);
            }
        };
        if let Err(error) = self.handle().rename(temp.as_str(), target.path.as_str()) {
            self.remove_temp(&temp);
            return Err(vfs_error("write_file", path, error));
        }
        Ok(written)
    }

    fn append_file(&mut self, path: &GuestPath, data: &[u8], create_mode: u32) -> Result<()> {
        let create_mode = permission_bits(create_mode);
        let target = self.resolve_target("append_file", path)?;
        self.check_mounted(path, &target.path)?;
        let failed = |error| vfs_error("append_file", path, error);
        match target.existing {
            Some(stat) if stat.is_dir() => {
                return Err(VfsError::IsADirectory { path: path.clone() })
            }
            Some(stat) if !stat.is_file() => return Err(VfsError::NotAFile { path: path.clone() }),
            Some(_) => {}
            None => {
                let handle = self.handle();
                handle.write(target.path.as_str(), &[]).map_err(failed)?;
                handle
                    .chown(Some(0), Some(0), target.path.as_str())
                    .map_err(failed)?;
                handle
                    .chmod(create_mode, target.path.as_str())
                    .map_err(failed)?;
            }
        }
        for chunk in data.chunks(CHUNK_SIZE) {
            self.handle()
                .write_append(target.path.as_str(), chunk)
                .map_err(failed)?;
        }
        Ok(())
    }

    fn set_mode(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        let mode = permission_bits(mode);
        let resolved = self.resolve_existing("set_mode", path)?;
        self.check_mounted(path, &resolved)?;
        self.handle()
            .chmod(mode, resolved.as_str())
            .map_err(|error| vfs_error("set_mode", path, error))
    }

    fn set_owner_ids(
        &mut self,
        path: &GuestPath,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        let resolved = self.resolve_existing("set_owner_ids", path)?;
        self.check_mounted(path, &resolved)?;
        self.handle()
            .chown(uid, gid, resolved.as_str())
            .map_err(|error| vfs_error("set_owner_ids", path, error))
    }

    fn symlink(&mut self, target: &str, link: &GuestPath) -> Result<()> {
        let Some(name) = link.file_name() else {
            return Err(VfsError::AlreadyExists { path: link.clone() });
        };
        if target.is_empty() {
            return Err(VfsError::Backend {
                op: "symlink",
                path: link.clone(),
                message: "the symlink target is empty".to_owned(),
            });
        }
        // ln_s runs `ln -s` outside the chroot on /sysroot plus the link name, so the
        // directory must already be resolved inside the guest. The name must also be free,
        // because `ln -s` puts the link inside a directory that a symlink of that name
        // points to.
        let parent = link.parent().unwrap_or_else(GuestPath::root);
        let parent = self.resolve_existing("symlink", &parent)?;
        let resolved = parent.join(name)?;
        self.check_mounted(link, &resolved)?;
        match self.handle().lstatns(resolved.as_str()) {
            Ok(_) => return Err(VfsError::AlreadyExists { path: link.clone() }),
            Err(error) if error.errno == libc::ENOENT => {}
            Err(error) => return Err(vfs_error("symlink", link, error)),
        }
        self.handle()
            .ln_s(target, resolved.as_str())
            .map_err(|error| vfs_error("symlink", link, error))
    }

    fn remove_file(&mut self, path: &GuestPath) -> Result<()> {
        let Some(name) = path.file_name() else {
            return Err(VfsError::IsADirectory { path: path.clone() });
        };
        let parent = path.parent().unwrap_or_else(GuestPath::root);
        let parent = self.resolve_existing("remove_file", &parent)?;
        let resolved = parent.join(name)?;
        self.check_mounted(path, &resolved)?;
        let stat = self
            .handle()
            .lstatns(resolved.as_str())
            .map_err(|error| vfs_error("remove_file", path, error))?;
        if stat.is_dir() {
            return Err(VfsError::IsADirectory { path: path.clone() });
        }
        self.handle()
            .rm(resolved.as_str())
            .map_err(|error| vfs_error("remove_file", path, error))
    }

    fn xattrs(&mut self, path: &GuestPath) -> Result<Vec<(String, Vec<u8>)>> {
        let mut xattrs = self
            .handle()
            .getxattrs(path.as_str())
            .map_err(|error| vfs_error("xattrs", path, error))?;
        xattrs.sort_by(|(a, _), (b, _)| a.cmp(b));
        Ok(xattrs)
    }

    fn set_xattr(&mut self, path: &GuestPath, name: &str, value: &[u8]) -> Result<()> {
        let resolved = self.resolve_existing("set_xattr", path)?;
        self.check_mounted(path, &resolved)?;
        self.handle()
            .setxattr(name, value, resolved.as_str())
            .map_err(|error| vfs_error("set_xattr", path, error))
    }

    fn free_space(&mut self, path: &GuestPath) -> Result<u64> {
        let stat = self
            .handle()
            .statvfs(path.as_str())
            .map_err(|error| vfs_error("free_space", path, error))?;
        let unit = if stat.fragment_size > 0 {
            stat.fragment_size
        } else {
            stat.block_size
        };
        Ok(stat.blocks_available.saturating_mul(unit))
    }

    fn enable_writes(&mut self) -> Result<()> {
        match self.access {
            WriteAccess::ReadOnly => Err(VfsError::ReadOnly {
                path: GuestPath::root(),
            }),
            WriteAccess::Enabled => Ok(()),
            WriteAccess::Deferred => {
                let _span = tracing::info_span!("enable_writes").entered();
                // The table lists the root first and every mount point after its parents.
                let mount_points: Vec<GuestPath> = self
                    .mounts
                    .mounted
                    .iter()
                    .map(|mounted| mounted.mount_point.clone())
                    .collect();
                for mount_point in mount_points {
                    self.handle()
                        .remount(mount_point.as_str(), true)
                        .map_err(|error| vfs_error("remounting read-write", &mount_point, error))?;
                }
                self.access = WriteAccess::Enabled;
                tracing::info!("filesystems remounted read-write");
                Ok(())
            }
        }
    }

    fn sync(&mut self) -> Result<()> {
        self.handle()
            .sync()
            .map_err(|error| vfs_error("sync", &GuestPath::root(), error))
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        self.shutdown().map_err(|error| VfsError::Closing {
            backend: crate::BACKEND_NAME,
            source: format!("shutting down the appliance failed: {}", error.message).into(),
        })
    }
}

impl<H: GuestfsHandle> Drop for GuestfsFs<H> {
    fn drop(&mut self) {
        if let Err(error) = self.shutdown() {
            tracing::warn!(error = %error.message, "shutting down the libguestfs appliance failed; it was killed instead");
        }
    }
}

#[cfg(test)]
mod tests;
