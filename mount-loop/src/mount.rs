//! Host mounts of block devices, on private temporary directories or on a given directory,
//! and read-only placeholder mounts.

use std::fmt;
use std::fs::{self, File, OpenOptions, Permissions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::thread;
use std::time::Duration;

use nix::errno::Errno;

use crate::failpoint;
use nix::mount::{MntFlags, MsFlags};

/// Retry count and delay for a busy unmount before the lazy fallback: half a second in all.
const UNMOUNT_BUSY_RETRIES: u32 = 20;
const UNMOUNT_BUSY_DELAY: Duration = Duration::from_millis(25);

/// Errors from mounting and unmounting.
#[derive(Debug, thiserror::Error)]
pub enum MountError {
    /// The private mount directory could not be created.
    #[error("creating a temporary mount directory failed")]
    CreatingMountDir {
        #[source]
        source: io::Error,
    },
    /// The target is missing, not a directory, or a symlink.
    #[error("opening mount target {target} failed (it must be a directory and not a symlink)")]
    OpeningMountTarget {
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `mount(2)` failed.
    #[error("mounting {device} as {fs_type} on {target} failed")]
    Mounting {
        device: DeviceLabel,
        fs_type: String,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Remounting the filesystem read-write failed.
    #[error("remounting {device} on {target} read-write failed")]
    Remounting {
        device: DeviceLabel,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `syncfs(2)` on the mounted filesystem failed.
    #[error("flushing {device} mounted on {target} failed")]
    Syncing {
        device: DeviceLabel,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `umount2(2)` failed; the mount was detached lazily (`MNT_DETACH`) instead when that
    /// worked, which the log records.
    #[error("unmounting {device} from {target} failed")]
    Unmounting {
        device: DeviceLabel,
        target: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The temporary mount directory could not be removed after unmounting.
    #[error("removing mount directory {dir} failed")]
    RemovingMountDir {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A mounted device for messages: its path and, for a loop device, the image behind it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceLabel {
    /// The device path, or the source name of a virtual filesystem such as `tmpfs`.
    pub device: PathBuf,
    /// The loop device's backing file, from sysfs, when there is one.
    pub image: Option<PathBuf>,
}

impl DeviceLabel {
    /// Labels `device`, looking up its backing file when it is a loop device.
    pub fn new(device: &Path) -> Self {
        Self {
            device: device.to_owned(),
            image: loop_backing_file(device),
        }
    }
}

impl fmt::Display for DeviceLabel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.image {
            Some(image) => write!(f, "{} (image {})", self.device.display(), image.display()),
            None => write!(f, "{}", self.device.display()),
        }
    }
}

/// A filesystem mounted on the host with `nosuid`, `nodev` and `noexec`.
///
/// Dropping the value unmounts it, falling back to a lazy unmount (`MNT_DETACH`) with a
/// warning when the normal unmount still fails after retrying for half a second, and removes the mount directory when this value
/// created it. [`Mount::close`] flushes the filesystem first and reports every failure.
///
/// The device itself, such as a [`crate::LoopDevice`], is the caller's to keep and release;
/// an autoclear loop device may be dropped before the mount.
#[derive(Debug)]
pub struct Mount {
    path: PathBuf,
    device: DeviceLabel,
    fs_type: String,
    read_only: bool,
    /// Whether this is a placeholder from [`Mount::placeholder`], which stays read-only.
    placeholder: bool,
    /// Whether `path` is a directory this value created and removes.
    owns_dir: bool,
    /// False once unmounted.
    mounted: bool,
}

impl Mount {
    /// Mounts `device` as `fs_type` on a new private (mode 0700) temporary directory.
    ///
    /// `fs_type` is the kernel's filesystem name, such as `ext4`.
    pub fn new(device: &Path, fs_type: &str, read_only: bool) -> Result<Self, MountError> {
        Self::mount_in_temp_dir(device, fs_type, &std::env::temp_dir(), read_only)
    }

    /// Mounts on a new private directory created inside `parent`.
    fn mount_in_temp_dir(
        device: &Path,
        fs_type: &str,
        parent: &Path,
        read_only: bool,
    ) -> Result<Self, MountError> {
        let dir = tempfile::Builder::new()
            .prefix(&crate::private_dir_prefix("mnt"))
            .permissions(Permissions::from_mode(0o700))
            .tempdir_in(parent)
            .map_err(|source| MountError::CreatingMountDir { source })?;
        // The directory is removed by hand, with a non-recursive rmdir: a recursive removal
        // while the filesystem is still mounted would delete the guest's files.
        let dir = dir.keep();

        match Self::mount_on(device, fs_type, &dir, read_only, true) {
            Ok(mount) => Ok(mount),
            Err(err) => {
                if let Err(remove_err) = fs::remove_dir(&dir) {
                    tracing::warn!(dir = %dir.display(), error = %remove_err, "removing an unused mount directory failed");
                }
                Err(err)
            }
        }
    }

    /// Mounts `device` as `fs_type` on the existing directory `target`, such as the guest's
    /// `/boot` beneath a mounted root filesystem. The directory stays after unmounting.
    ///
    /// A symlink as the last component of `target` is rejected, so a guest symlink cannot
    /// redirect the mount. Resolving the earlier components safely is the caller's duty.
    pub fn mount_at(
        device: &Path,
        fs_type: &str,
        target: &Path,
        read_only: bool,
    ) -> Result<Self, MountError> {
        Self::mount_on(device, fs_type, target, read_only, false)
    }

    /// Mounts an empty read-only tmpfs on the existing directory `at`, so that writes
    /// beneath a guest mount point whose filesystem is not mounted fail instead of landing
    /// on the filesystem underneath. The directory stays after unmounting.
    pub fn placeholder(at: &Path) -> Result<Self, MountError> {
        let span = tracing::debug_span!("mount_placeholder", target = %at.display());
        let _entered = span.enter();

        let device = DeviceLabel {
            device: PathBuf::from("tmpfs"),
            image: None,
        };
        let target = open_target(at)?;
        let flags = MsFlags::MS_RDONLY | base_flags();
        nix::mount::mount(
            Some("tmpfs"),
            &fd_path(&target),
            Some("tmpfs"),
            flags,
            Some("mode=0555,size=4k"),
        )
        .map_err(|errno| MountError::Mounting {
            device: device.clone(),
            fs_type: "tmpfs".to_owned(),
            target: at.to_owned(),
            source: errno.into(),
        })?;

        tracing::debug!("mounted read-only placeholder");
        Ok(Self {
            path: at.to_owned(),
            device,
            fs_type: "tmpfs".to_owned(),
            read_only: true,
            placeholder: true,
            owns_dir: false,
            mounted: true,
        })
    }

    /// Returns the directory the filesystem is mounted on.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the mounted device and its image.
    pub fn device(&self) -> &DeviceLabel {
        &self.device
    }

    /// Returns the filesystem type the device was mounted as.
    pub fn fs_type(&self) -> &str {
        &self.fs_type
    }

    /// Returns true when the filesystem is mounted read-only.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Remounts a read-only filesystem read-write (`MS_REMOUNT`), keeping `nosuid`, `nodev`
    /// and `noexec`. Does nothing when it is already writable, or when it is a placeholder
    /// from [`Mount::placeholder`], which exists to reject writes.
    ///
    /// The device must be writable: a loop device attached read-only makes this fail.
    pub fn remount_read_write(&mut self) -> Result<(), MountError> {
        if !self.read_only || self.placeholder {
            return Ok(());
        }
        let span = tracing::info_span!("remount_read_write", target = %self.path.display());
        let _entered = span.enter();

        // As when mounting, a symlink in the last name is not followed. `MS_REMOUNT` acts
        // on the mount whose root the descriptor names, and fails with `EINVAL` when the
        // directory is not the root of a mount.
        let target = open_target(&self.path)?;
        failpoint::check("loop::remount")
            .map_err(|_| Errno::EIO)
            .and_then(|()| {
                nix::mount::mount(
                    None::<&str>,
                    &fd_path(&target),
                    None::<&str>,
                    MsFlags::MS_REMOUNT | base_flags(),
                    None::<&str>,
                )
            })
            .map_err(|errno| MountError::Remounting {
                device: self.device.clone(),
                target: self.path.clone(),
                source: errno.into(),
            })?;
        self.read_only = false;
        tracing::info!("remounted read-write");
        Ok(())
    }

    /// Flushes the mounted filesystem to its device (`syncfs(2)`).
    pub fn sync(&self) -> Result<(), MountError> {
        let syncing = |source: io::Error| MountError::Syncing {
            device: self.device.clone(),
            target: self.path.clone(),
            source,
        };
        let root = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(&self.path)
            .map_err(syncing)?;
        nix::unistd::syncfs(&root).map_err(|errno| syncing(errno.into()))
    }

    /// Flushes, unmounts and removes the mount directory when this value created it,
    /// reporting the first failure.
    ///
    /// Every step runs even after an earlier one failed. When the normal unmount fails the
    /// mount is detached lazily, so nothing stays mounted, and the failure is returned.
    pub fn close(mut self) -> Result<(), MountError> {
        let span = tracing::debug_span!("unmount", target = %self.path.display());
        let _entered = span.enter();

        let synced = if self.read_only { Ok(()) } else { self.sync() };
        let unmounted = self.unmount();
        let removed = self.remove_dir();
        synced.and(unmounted).and(removed)
    }

    fn mount_on(
        device: &Path,
        fs_type: &str,
        target: &Path,
        read_only: bool,
        owns_dir: bool,
    ) -> Result<Self, MountError> {
        let span = tracing::info_span!(
            "mount",
            device = %device.display(),
            fs_type,
            target = %target.display(),
            read_only,
        );
        let _entered = span.enter();

        let label = DeviceLabel::new(device);
        let target_dir = open_target(target)?;
        let mut flags = base_flags();
        if read_only {
            flags |= MsFlags::MS_RDONLY;
        }
        failpoint::check("loop::mount")
            .map_err(|_| Errno::EIO)
            .and_then(|()| {
                nix::mount::mount(
                    Some(device),
                    &fd_path(&target_dir),
                    Some(fs_type),
                    flags,
                    None::<&str>,
                )
            })
            .map_err(|errno| MountError::Mounting {
                device: label.clone(),
                fs_type: fs_type.to_owned(),
                target: target.to_owned(),
                source: errno.into(),
            })?;

        tracing::info!("mounted");
        Ok(Self {
            path: target.to_owned(),
            device: label,
            fs_type: fs_type.to_owned(),
            read_only,
            placeholder: false,
            owns_dir,
            mounted: true,
        })
    }

    /// Unmounts; on failure detaches lazily and returns the failure of the normal unmount.
    fn unmount(&mut self) -> Result<(), MountError> {
        if !self.mounted {
            return Ok(());
        }
        self.mounted = false;

        // An injected failure skips the unmount, so the lazy detach below releases the
        // mount, as after a real failure.
        let unmounted = failpoint::check("loop::unmount")
            .map_err(|_| Errno::EIO)
            .and_then(|()| unmount_retrying_busy(&self.path));
        let Err(errno) = unmounted else {
            tracing::debug!(target = %self.path.display(), "unmounted");
            return Ok(());
        };
        match nix::mount::umount2(&self.path, MntFlags::MNT_DETACH | MntFlags::UMOUNT_NOFOLLOW) {
            Ok(()) => {
                tracing::warn!(target = %self.path.display(), error = %errno, "unmounting failed; detached the mount lazily instead")
            }
            Err(detach_errno) => {
                tracing::error!(target = %self.path.display(), error = %errno, detach_error = %detach_errno, "unmounting failed and so did the lazy detach; the filesystem stays mounted")
            }
        }
        Err(MountError::Unmounting {
            device: self.device.clone(),
            target: self.path.clone(),
            source: errno.into(),
        })
    }

    /// Removes the mount directory when this value created it and it is unmounted.
    fn remove_dir(&mut self) -> Result<(), MountError> {
        if !self.owns_dir || self.mounted {
            return Ok(());
        }
        self.owns_dir = false;
        fs::remove_dir(&self.path).map_err(|source| MountError::RemovingMountDir {
            dir: self.path.clone(),
            source,
        })
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if let Err(err) = self.unmount() {
            tracing::warn!(error = %err, "dropping a mount");
        }
        if let Err(err) = self.remove_dir() {
            tracing::warn!(error = %err, "dropping a mount");
        }
    }
}

/// Unmounts `target`, retrying for a short while when it is busy.
///
/// A fork in another thread of this process copies every open descriptor, including files
/// on this mount, and the child keeps the copies until it calls exec. Meanwhile the
/// unmount fails with `EBUSY`.
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

/// Flags of every mount made here: guest files must not act as set-uid programs, device
/// nodes or executables on the host.
fn base_flags() -> MsFlags {
    MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC
}

/// Opens the mount target without following a symlink in its last component.
///
/// Mounting on `/proc/self/fd/N` of this descriptor mounts on exactly the directory that
/// was opened, even if the path changes in between.
fn open_target(target: &Path) -> Result<File, MountError> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY | libc::O_NOFOLLOW)
        .open(target)
        .map_err(|source| MountError::OpeningMountTarget {
            target: target.to_owned(),
            source,
        })
}

fn fd_path(file: &File) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()))
}

/// Returns the backing file of a loop device from sysfs, or `None` for other devices.
fn loop_backing_file(device: &Path) -> Option<PathBuf> {
    let name = device.file_name()?;
    if !name.as_bytes().starts_with(b"loop") {
        return None;
    }
    let sysfs = Path::new("/sys/block").join(name).join("loop/backing_file");
    let text = fs::read_to_string(sysfs).ok()?;
    Some(PathBuf::from(text.trim_end_matches('\n')))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_label_without_image_shows_device() {
        let label = DeviceLabel {
            device: PathBuf::from("/dev/vdb1"),
            image: None,
        };
        assert_eq!(label.to_string(), "/dev/vdb1");
    }

    #[test]
    fn device_label_with_image_shows_both() {
        let label = DeviceLabel {
            device: PathBuf::from("/dev/loop3"),
            image: Some(PathBuf::from("/images/disk.raw")),
        };
        assert_eq!(label.to_string(), "/dev/loop3 (image /images/disk.raw)");
    }

    #[test]
    fn device_label_non_loop_has_no_image() {
        assert_eq!(DeviceLabel::new(Path::new("/dev/vda")).image, None);
    }

    #[test]
    fn mount_at_symlink_target_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let real = dir.path().join("real");
        fs::create_dir(&real).unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&real, &link).unwrap();

        let err = Mount::mount_at(Path::new("/dev/null"), "ext4", &link, true).unwrap_err();

        assert!(
            matches!(err, MountError::OpeningMountTarget { .. }),
            "{err:?}"
        );
    }

    #[test]
    fn mount_failure_removes_temporary_dir() {
        let parent = tempfile::tempdir().unwrap();

        // /dev/null is a character device, so mounting it as ext4 fails.
        let err = Mount::mount_in_temp_dir(Path::new("/dev/null"), "ext4", parent.path(), true)
            .unwrap_err();

        assert!(matches!(err, MountError::Mounting { .. }), "{err:?}");
        assert_eq!(fs::read_dir(parent.path()).unwrap().count(), 0);
    }
}
