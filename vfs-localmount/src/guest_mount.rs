//! Mounts on directories inside the guest tree: the guest's other filesystems beneath its
//! root, and empty placeholders on mount points whose filesystem is missing.
//!
//! The mount point is resolved inside the guest by [`RootedTree::open_dir`], and the mount
//! goes onto the `/proc/self/fd` path of that descriptor, so a guest symlink on the way
//! cannot redirect the mount to a host directory.

use std::io;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::mount::{MntFlags, MsFlags};
use nix::sys::stat::Mode;
use vfs_core::GuestPath;

use crate::sys;
use crate::tree::RootedTree;

/// How often a busy unmount is tried again, and the pause between tries: half a second in
/// all, for a forked child that still holds copies of this process's descriptors.
const UNMOUNT_BUSY_RETRIES: u32 = 20;
const UNMOUNT_BUSY_DELAY: Duration = Duration::from_millis(25);

/// Errors from mounting on and unmounting from guest directories.
#[derive(Debug, thiserror::Error)]
pub enum GuestMountError {
    /// The mount point could not be resolved inside the guest.
    #[error("resolving guest mount point {mount_point} failed")]
    ResolvingMountPoint {
        mount_point: GuestPath,
        #[source]
        source: vfs_core::VfsError,
    },
    /// `mount(2)` failed.
    #[error("mounting {source_name} as {fs_type} on guest directory {mount_point} failed")]
    Mounting {
        source_name: String,
        fs_type: String,
        mount_point: GuestPath,
        #[source]
        source: io::Error,
    },
    /// The filesystem could not be remounted read-write.
    #[error("remounting guest directory {mount_point} ({host_path}) read-write failed")]
    Remounting {
        mount_point: GuestPath,
        host_path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The mounted filesystem could not be flushed.
    #[error("flushing the filesystem on guest directory {mount_point} failed")]
    Syncing {
        mount_point: GuestPath,
        #[source]
        source: io::Error,
    },
    /// `umount2(2)` failed; the mount was detached lazily instead when that worked.
    #[error("unmounting guest directory {mount_point} ({host_path}) failed")]
    Unmounting {
        mount_point: GuestPath,
        host_path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A filesystem mounted on a guest directory, unmounted when dropped.
#[derive(Debug)]
pub struct GuestMount {
    mount_point: GuestPath,
    /// The host path of the mount point when it was mounted, for unmounting: `umount2`
    /// takes a path, and a descriptor of the mounted root would keep the mount busy.
    host_path: PathBuf,
    /// The device number of the mounted filesystem, checked before unmounting.
    dev: u64,
    read_only: bool,
    /// Whether this is an empty placeholder, which stays read-only.
    placeholder: bool,
    mounted: bool,
}

impl GuestMount {
    /// Mounts `device` as `fs_type` on the guest directory `mount_point` with `nosuid`,
    /// `nodev` and `noexec`.
    pub fn mount_device(
        tree: &RootedTree,
        mount_point: &GuestPath,
        device: &Path,
        fs_type: &str,
        read_only: bool,
    ) -> Result<Self, GuestMountError> {
        let span = tracing::info_span!(
            "mount_guest_dir",
            device = %device.display(),
            fs_type,
            %mount_point,
            read_only,
        );
        let _entered = span.enter();
        let mut flags = MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        let mount = Self::mount(
            tree,
            mount_point,
            device.as_os_str(),
            fs_type,
            flags,
            None,
            read_only,
            false,
        )?;
        tracing::info!("mounted");
        Ok(mount)
    }

    /// Covers the guest directory `mount_point` with an empty read-only tmpfs, so that
    /// nothing can be written to the directory underneath.
    pub fn placeholder(
        tree: &RootedTree,
        mount_point: &GuestPath,
    ) -> Result<Self, GuestMountError> {
        let span = tracing::info_span!("mount_placeholder", %mount_point);
        let _entered = span.enter();
        let flags =
            MsFlags::MS_RDONLY | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let mount = Self::mount(
            tree,
            mount_point,
            "tmpfs".as_ref(),
            "tmpfs",
            flags,
            Some("mode=0555,size=4k"),
            true,
            true,
        )?;
        tracing::info!("covered a mount point with a read-only placeholder");
        Ok(mount)
    }

    #[allow(clippy::too_many_arguments)]
    fn mount(
        tree: &RootedTree,
        mount_point: &GuestPath,
        source: &std::ffi::OsStr,
        fs_type: &str,
        flags: MsFlags,
        data: Option<&str>,
        read_only: bool,
        placeholder: bool,
    ) -> Result<Self, GuestMountError> {
        let dir =
            tree.open_dir(mount_point)
                .map_err(|source| GuestMountError::ResolvingMountPoint {
                    mount_point: mount_point.clone(),
                    source,
                })?;
        let fd_path = sys::proc_fd_path(dir.as_fd());
        let host_path = std::fs::read_link(Path::new(fd_path.to_str().expect("ASCII path")))
            .map_err(|source| GuestMountError::ResolvingMountPoint {
                mount_point: mount_point.clone(),
                source: vfs_core::VfsError::from_io("resolving", mount_point, source),
            })?;

        nix::mount::mount(Some(source), fd_path.as_c_str(), Some(fs_type), flags, data).map_err(
            |errno| GuestMountError::Mounting {
                source_name: source.to_string_lossy().into_owned(),
                fs_type: fs_type.to_owned(),
                mount_point: mount_point.clone(),
                source: errno.into(),
            },
        )?;
        // The descriptor still names the directory underneath; the new mount is on top.
        drop(dir);

        let dev = match nix::sys::stat::lstat(&host_path) {
            Ok(stat) => stat.st_dev,
            Err(errno) => {
                // Without the device number the mount cannot be checked before unmounting,
                // so it is detached at once.
                let _ = nix::mount::umount2(
                    &host_path,
                    MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
                );
                return Err(GuestMountError::Mounting {
                    source_name: source.to_string_lossy().into_owned(),
                    fs_type: fs_type.to_owned(),
                    mount_point: mount_point.clone(),
                    source: errno.into(),
                });
            }
        };
        Ok(Self {
            mount_point: mount_point.clone(),
            host_path,
            dev,
            read_only,
            placeholder,
            mounted: true,
        })
    }

    /// Returns the guest directory the filesystem is mounted on.
    pub fn mount_point(&self) -> &GuestPath {
        &self.mount_point
    }

    /// Remounts a read-only filesystem read-write, keeping `nosuid`, `nodev` and `noexec`.
    /// Does nothing when it is already writable, or when it is a placeholder, which exists
    /// to reject writes.
    ///
    /// The mount point is reached as for unmounting, by its host path, and the directory
    /// opened there must carry the mounted filesystem's device number.
    pub fn remount_read_write(&mut self) -> Result<(), GuestMountError> {
        if !self.read_only || self.placeholder || !self.mounted {
            return Ok(());
        }
        let span = tracing::info_span!("remount_read_write", mount_point = %self.mount_point);
        let _entered = span.enter();
        let remounting = |source: io::Error| GuestMountError::Remounting {
            mount_point: self.mount_point.clone(),
            host_path: self.host_path.clone(),
            source,
        };

        let root = nix::fcntl::open(
            &self.host_path,
            OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|errno| remounting(errno.into()))?;
        let current = nix::sys::stat::fstat(&root).map_err(|errno| remounting(errno.into()))?;
        if current.st_dev != self.dev {
            return Err(remounting(io::Error::other(format!(
                "the path now leads to device {:#x}, not the mounted {:#x}",
                current.st_dev, self.dev
            ))));
        }

        let flags =
            MsFlags::MS_REMOUNT | MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC;
        let fd_path = sys::proc_fd_path(root.as_fd());
        nix::mount::mount(
            None::<&str>,
            fd_path.as_c_str(),
            None::<&str>,
            flags,
            None::<&str>,
        )
        .map_err(|errno| remounting(errno.into()))?;
        self.read_only = false;
        tracing::info!("remounted read-write");
        Ok(())
    }

    /// Flushes and unmounts, reporting the first failure. A mount that does not unmount
    /// normally is detached lazily, so nothing stays mounted.
    pub fn close(mut self) -> Result<(), GuestMountError> {
        let synced = if self.read_only { Ok(()) } else { self.sync() };
        let unmounted = self.unmount();
        synced.and(unmounted)
    }

    fn sync(&self) -> Result<(), GuestMountError> {
        let syncing = |source: io::Error| GuestMountError::Syncing {
            mount_point: self.mount_point.clone(),
            source,
        };
        let root = std::fs::File::open(&self.host_path).map_err(syncing)?;
        nix::unistd::syncfs(&root).map_err(|errno| syncing(errno.into()))
    }

    fn unmount(&mut self) -> Result<(), GuestMountError> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;
        let unmounting = |source: io::Error| GuestMountError::Unmounting {
            mount_point: self.mount_point.clone(),
            host_path: self.host_path.clone(),
            source,
        };

        // The host path was symlink-free when mounting, and the guest is not running, but
        // check that it still leads to this mount before unmounting whatever it leads to.
        let current =
            nix::sys::stat::lstat(&self.host_path).map_err(|errno| unmounting(errno.into()))?;
        if current.st_dev != self.dev {
            return Err(unmounting(io::Error::other(format!(
                "the path now leads to device {:#x}, not the mounted {:#x}",
                current.st_dev, self.dev
            ))));
        }

        let Err(errno) = unmount_retrying_busy(&self.host_path) else {
            tracing::debug!(mount_point = %self.mount_point, "unmounted");
            return Ok(());
        };
        match nix::mount::umount2(
            &self.host_path,
            MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW,
        ) {
            Ok(()) => {
                tracing::warn!(mount_point = %self.mount_point, error = %errno, "unmounting failed; detached the mount lazily instead")
            }
            Err(detach) => {
                tracing::error!(mount_point = %self.mount_point, error = %errno, detach_error = %detach, "unmounting failed and so did the lazy detach; the filesystem stays mounted")
            }
        }
        Err(unmounting(errno.into()))
    }
}

impl Drop for GuestMount {
    fn drop(&mut self) {
        if let Err(err) = self.unmount() {
            tracing::warn!(error = %err, "dropping a guest mount");
        }
    }
}

fn unmount_retrying_busy(target: &Path) -> nix::Result<()> {
    let mut retries = 0;
    loop {
        match nix::mount::umount2(target, MntFlags::UMOUNT_NOFOLLOW) {
            Err(Errno::EBUSY) if retries < UNMOUNT_BUSY_RETRIES => {
                retries += 1;
                thread::sleep(UNMOUNT_BUSY_DELAY);
            }
            result => return result,
        }
    }
}
