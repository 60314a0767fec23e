//! Loop devices: attaching an image file, or a byte range of it, to a free `/dev/loopN`.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileTypeExt;
use std::path::{Path, PathBuf};

use nix::errno::Errno;

use crate::failpoint;
use crate::ioctl::{self, LoopConfig, LoopInfo64, LO_FLAGS_AUTOCLEAR, LO_FLAGS_READ_ONLY};

/// The control device that hands out free loop device numbers.
const LOOP_CONTROL: &str = "/dev/loop-control";

/// Maximum number of free devices [`LoopDevice::attach`] requests before giving up.
///
/// Another process can take the device number that `LOOP_CTL_GET_FREE` returned before this
/// one configures it; each such loss costs one attempt.
pub const MAX_ATTACH_ATTEMPTS: u32 = 16;

/// The kernel sizes loop devices in 512-byte sectors and drops any partial sector.
const SECTOR_SIZE: u64 = 512;

/// Errors from attaching and detaching loop devices.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// The image file could not be opened or measured.
    #[error("opening image {image} failed")]
    OpeningImage {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The requested byte range does not lie inside the image.
    #[error("image {image} is {image_size} bytes, so it has no {range} to attach")]
    RangeOutsideImage {
        image: PathBuf,
        image_size: u64,
        range: ByteRange,
    },
    /// `/dev/loop-control` could not be opened or gave no free device.
    #[error("attaching image {image}: getting a free loop device from /dev/loop-control failed")]
    AttachingLoop {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Every free device this process got was taken by another process first.
    #[error("attaching image {image}: no loop device could be had in {attempts} attempts, each free device was taken by another process first")]
    NoFreeLoop { image: PathBuf, attempts: u32 },
    /// The loop device node could not be opened.
    #[error("opening loop device {device} for image {image} failed")]
    OpeningLoop {
        device: PathBuf,
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The kernel rejected the loop configuration.
    #[error("configuring loop device {device} for image {image} failed")]
    ConfiguringLoop {
        device: PathBuf,
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The configured device does not show what was requested; it has been detached.
    #[error("loop device {device} for image {image} is not as configured: {reason}")]
    VerifyingLoop {
        device: PathBuf,
        image: PathBuf,
        reason: String,
    },
    /// `LOOP_CLR_FD` failed.
    #[error("detaching loop device {device} from image {image} failed")]
    Detaching {
        device: PathBuf,
        image: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A byte range of an image, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ByteRange {
    /// First byte, from the start of the image.
    pub offset: u64,
    /// Length in bytes; `None` means up to the end of the image.
    pub size_limit: Option<u64>,
}

impl std::fmt::Display for ByteRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.size_limit {
            Some(size) => write!(f, "{size} bytes at offset {}", self.offset),
            None => write!(f, "data from offset {} on", self.offset),
        }
    }
}

/// The byte range of the image to attach, and the access mode.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct AttachOptions {
    /// First byte of the image that the device shows, such as a partition's start.
    pub offset: u64,
    /// Number of bytes the device shows; `None` means up to the end of the image.
    pub size_limit: Option<u64>,
    /// Opens the image read-only and makes the device reject writes.
    pub read_only: bool,
}

/// A loop device attached to an image file.
///
/// The device is configured with `LO_FLAGS_AUTOCLEAR`, so the kernel detaches it when its
/// last user closes it: the open descriptor held here, or a mount of the device. A process
/// killed while holding one therefore leaks nothing once its mounts are gone.
///
/// Dropping the value detaches the device (`LOOP_CLR_FD`) and logs a failure;
/// [`LoopDevice::close`] does the same and returns it. While the device is mounted, the
/// kernel defers the detach until the unmount.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    number: u32,
    image: PathBuf,
    offset: u64,
    size: u64,
    read_only: bool,
    /// The open device; `None` once closed.
    device: Option<File>,
}

impl LoopDevice {
    /// Attaches `image`, or the range of it that `options` gives, to a free loop device.
    ///
    /// The range must lie inside the image and contain at least one 512-byte sector. After
    /// configuring, the device's offset, size limit, flags and size are read back and
    /// compared with the request.
    pub fn attach(image: &Path, options: &AttachOptions) -> Result<Self, LoopError> {
        let span = tracing::info_span!(
            "attach_loop",
            image = %image.display(),
            offset = options.offset,
            size_limit = options.size_limit,
            read_only = options.read_only,
        );
        let _entered = span.enter();

        let backing = OpenOptions::new()
            .read(true)
            .write(!options.read_only)
            .open(image)
            .map_err(|source| LoopError::OpeningImage {
                image: image.to_owned(),
                source,
            })?;
        let image_size = backing_size(&backing).map_err(|source| LoopError::OpeningImage {
            image: image.to_owned(),
            source,
        })?;
        let size =
            device_size(image_size, options).ok_or_else(|| LoopError::RangeOutsideImage {
                image: image.to_owned(),
                image_size,
                range: ByteRange {
                    offset: options.offset,
                    size_limit: options.size_limit,
                },
            })?;

        let control = failpoint::check("loop::attach")
            .and_then(|()| OpenOptions::new().read(true).write(true).open(LOOP_CONTROL))
            .map_err(|source| LoopError::AttachingLoop {
                image: image.to_owned(),
                source,
            })?;

        let mut info = LoopInfo64 {
            lo_offset: options.offset,
            lo_sizelimit: options.size_limit.unwrap_or(0),
            lo_flags: LO_FLAGS_AUTOCLEAR,
            ..LoopInfo64::default()
        };
        if options.read_only {
            info.lo_flags |= LO_FLAGS_READ_ONLY;
        }
        info.set_file_name(image.as_os_str().as_bytes());

        for attempt in 1..=MAX_ATTACH_ATTEMPTS {
            // SAFETY: LOOP_CTL_GET_FREE takes no argument and `control` is an open
            // descriptor of /dev/loop-control.
            let number =
                unsafe { ioctl::loop_ctl_get_free(control.as_raw_fd()) }.map_err(|errno| {
                    LoopError::AttachingLoop {
                        image: image.to_owned(),
                        source: errno.into(),
                    }
                })?;
            let number = u32::try_from(number).expect("the kernel returns a non-negative number");
            let path = PathBuf::from(format!("/dev/loop{number}"));

            let device = match OpenOptions::new()
                .read(true)
                .write(!options.read_only)
                .open(&path)
            {
                Ok(device) => device,
                // Another process removed the device between the two calls.
                Err(err) if matches!(err.raw_os_error(), Some(libc::ENOENT | libc::ENXIO)) => {
                    tracing::debug!(device = %path.display(), attempt, "loop device vanished, asking for another");
                    continue;
                }
                Err(source) => {
                    return Err(LoopError::OpeningLoop {
                        device: path,
                        image: image.to_owned(),
                        source,
                    })
                }
            };

            match configure(&device, &backing, &info) {
                Ok(()) => {}
                Err(Errno::EBUSY) => {
                    tracing::debug!(device = %path.display(), attempt, "loop device taken by another process, asking for another");
                    continue;
                }
                Err(errno) => {
                    return Err(LoopError::ConfiguringLoop {
                        device: path,
                        image: image.to_owned(),
                        source: errno.into(),
                    })
                }
            }

            let attached = Self {
                path,
                number,
                image: image.to_owned(),
                offset: options.offset,
                size,
                read_only: options.read_only,
                device: Some(device),
            };
            attached.verify(&info)?;
            tracing::info!(device = %attached.path.display(), size, "attached loop device");
            return Ok(attached);
        }

        Err(LoopError::NoFreeLoop {
            image: image.to_owned(),
            attempts: MAX_ATTACH_ATTEMPTS,
        })
    }

    /// Returns the device node, such as `/dev/loop3`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Returns the device number N of `/dev/loopN`.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Returns the image file as given to [`LoopDevice::attach`].
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Returns the offset into the image at which the device starts, in bytes.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Returns the size of the device in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Returns true when the device rejects writes.
    pub fn is_read_only(&self) -> bool {
        self.read_only
    }

    /// Detaches the device, reporting a failure.
    ///
    /// While the device is still mounted, the kernel defers the detach until the last
    /// unmount; that is not an error.
    pub fn close(mut self) -> Result<(), LoopError> {
        self.detach()
    }

    /// Reads the device's status back and compares it with the request; detaches the
    /// device and fails on any difference.
    fn verify(&self, requested: &LoopInfo64) -> Result<(), LoopError> {
        let device = self.device.as_ref().expect("verified before any close");
        let mismatch = check_status(device, requested, self.size);
        match mismatch {
            Ok(()) => Ok(()),
            Err(reason) => {
                // SAFETY: LOOP_CLR_FD takes no argument and `device` is an open loop device.
                if let Err(errno) = unsafe { ioctl::loop_clr_fd(device.as_raw_fd()) } {
                    tracing::warn!(device = %self.path.display(), error = %errno, "detaching a misconfigured loop device failed; autoclear releases it on close");
                }
                Err(LoopError::VerifyingLoop {
                    device: self.path.clone(),
                    image: self.image.clone(),
                    reason,
                })
            }
        }
    }

    fn detach(&mut self) -> Result<(), LoopError> {
        let Some(device) = self.device.take() else {
            return Ok(());
        };
        // An injected failure skips the ioctl, so closing `device` below leaves the detach to
        // the autoclear flag, as after a real failure.
        let cleared = failpoint::check("loop::detach")
            .map_err(|_| Errno::EIO)
            // SAFETY: LOOP_CLR_FD takes no argument and `device` is an open loop device.
            .and_then(|()| unsafe { ioctl::loop_clr_fd(device.as_raw_fd()) });
        drop(device);
        match cleared {
            Ok(_) => {
                tracing::debug!(device = %self.path.display(), "detached loop device");
                Ok(())
            }
            // Kernels before 5.16 reject LOOP_CLR_FD while the device is mounted; the
            // autoclear flag set at attach time still detaches it after the unmount.
            Err(Errno::EBUSY) => {
                tracing::debug!(device = %self.path.display(), "loop device still in use; the kernel detaches it when released");
                Ok(())
            }
            // Already detached, as after a failed verification.
            Err(Errno::ENXIO) => Ok(()),
            Err(errno) => Err(LoopError::Detaching {
                device: self.path.clone(),
                image: self.image.clone(),
                source: errno.into(),
            }),
        }
    }
}

impl AsFd for LoopDevice {
    /// Returns the open device.
    ///
    /// # Panics
    ///
    /// Cannot panic: the descriptor is only taken by `close`, which consumes the value.
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.device
            .as_ref()
            .expect("open until close consumes the value")
            .as_fd()
    }
}

impl Drop for LoopDevice {
    fn drop(&mut self) {
        if let Err(err) = self.detach() {
            tracing::warn!(error = %err, "dropping a loop device");
        }
    }
}

/// Returns the size of the backing file, or of a backing block device.
fn backing_size(backing: &File) -> io::Result<u64> {
    let metadata = backing.metadata()?;
    if !metadata.file_type().is_block_device() {
        return Ok(metadata.len());
    }
    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    unsafe { ioctl::blk_get_size64(backing.as_raw_fd(), &mut size) }?;
    Ok(size)
}

/// Returns the size the kernel gives a device over `options`' range of an image of
/// `image_size` bytes, or `None` when the range is not inside the image or contains no
/// whole sector.
fn device_size(image_size: u64, options: &AttachOptions) -> Option<u64> {
    let available = image_size.checked_sub(options.offset)?;
    let size = match options.size_limit {
        Some(limit) if limit > available => return None,
        Some(limit) => limit,
        None => available,
    };
    let size = size - size % SECTOR_SIZE;
    (size > 0).then_some(size)
}

/// Binds `backing` to `device` with the settings in `info`.
///
/// Uses `LOOP_CONFIGURE`, which sets everything in one step. Kernels before 5.8 lack it
/// and return `EINVAL` (or `ENOTTY`), so for them the device is bound with `LOOP_SET_FD`
/// and then given its status with `LOOP_SET_STATUS64`.
fn configure(device: &File, backing: &File, info: &LoopInfo64) -> Result<(), Errno> {
    let fd = u32::try_from(backing.as_raw_fd()).expect("open descriptors are non-negative");
    let config = LoopConfig {
        fd,
        info: *info,
        ..LoopConfig::default()
    };
    // SAFETY: `config` is a valid loop_config that outlives the call, and `device` is an
    // open loop device.
    match unsafe { ioctl::loop_configure(device.as_raw_fd(), &config) } {
        Ok(_) => return Ok(()),
        Err(Errno::EINVAL | Errno::ENOTTY) => {}
        Err(errno) => return Err(errno),
    }

    // NOTE: between LOOP_SET_FD and LOOP_SET_STATUS64 the device has no autoclear flag, so
    // a process killed in that window leaves it attached.
    // SAFETY: LOOP_SET_FD takes the backing descriptor as its argument; both are open.
    unsafe { ioctl::loop_set_fd(device.as_raw_fd(), backing.as_raw_fd()) }?;
    // SAFETY: `info` is a valid loop_info64 that outlives the call.
    if let Err(errno) = unsafe { ioctl::loop_set_status64(device.as_raw_fd(), info) } {
        // SAFETY: LOOP_CLR_FD takes no argument.
        if let Err(clear_errno) = unsafe { ioctl::loop_clr_fd(device.as_raw_fd()) } {
            tracing::warn!(error = %clear_errno, "detaching a half-configured loop device failed");
        }
        return Err(errno);
    }
    Ok(())
}

/// Compares the device's status and size with the request, returning what differs.
fn check_status(device: &File, requested: &LoopInfo64, expected_size: u64) -> Result<(), String> {
    let mut status = LoopInfo64::default();
    // SAFETY: LOOP_GET_STATUS64 fills the loop_info64 that the pointer points at.
    unsafe { ioctl::loop_get_status64(device.as_raw_fd(), &mut status) }
        .map_err(|errno| format!("LOOP_GET_STATUS64 failed: {errno}"))?;
    if status.lo_offset != requested.lo_offset {
        return Err(format!(
            "offset is {}, expected {}",
            status.lo_offset, requested.lo_offset
        ));
    }
    if status.lo_sizelimit != requested.lo_sizelimit {
        return Err(format!(
            "size limit is {}, expected {}",
            status.lo_sizelimit, requested.lo_sizelimit
        ));
    }
    if status.lo_flags & requested.lo_flags != requested.lo_flags {
        return Err(format!(
            "flags are {:#x}, expected at least {:#x}",
            status.lo_flags, requested.lo_flags
        ));
    }

    let mut size = 0u64;
    // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points at `size`.
    unsafe { ioctl::blk_get_size64(device.as_raw_fd(), &mut size) }
        .map_err(|errno| format!("BLKGETSIZE64 failed: {errno}"))?;
    if size != expected_size {
        return Err(format!("size is {size} bytes, expected {expected_size}"));
    }
    Ok(())
}

/// Returns the loop devices whose backing file is `file`, from
/// `/sys/block/loop*/loop/backing_file`.
///
/// Meant for checks that nothing was left attached. Devices whose backing file was deleted
/// show a ` (deleted)` suffix in sysfs and are not matched.
pub fn loop_devices_backed_by(file: &Path) -> io::Result<Vec<PathBuf>> {
    let file = fs::canonicalize(file)?;
    let mut devices = Vec::new();
    for entry in fs::read_dir("/sys/block")? {
        let entry = entry?;
        let name = entry.file_name();
        if !name.as_bytes().starts_with(b"loop") {
            continue;
        }
        let backing = match fs::read(entry.path().join("loop/backing_file")) {
            Ok(backing) => backing,
            // Unbound devices have no `loop` directory entries to read.
            Err(err) if err.kind() == io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        let backing = backing.strip_suffix(b"\n").unwrap_or(&backing);
        if backing == file.as_os_str().as_bytes() {
            devices.push(Path::new("/dev").join(name));
        }
    }
    devices.sort();
    Ok(devices)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(offset: u64, size_limit: Option<u64>) -> AttachOptions {
        AttachOptions {
            offset,
            size_limit,
            read_only: false,
        }
    }

    #[test]
    fn device_size_whole_image() {
        assert_eq!(device_size(4096, &range(0, None)), Some(4096));
    }

    #[test]
    fn device_size_rest_of_image_after_offset() {
        assert_eq!(device_size(4096, &range(1024, None)), Some(3072));
    }

    #[test]
    fn device_size_limit_inside_image() {
        assert_eq!(device_size(4096, &range(1024, Some(2048))), Some(2048));
    }

    #[test]
    fn device_size_limit_reaching_end_exactly() {
        assert_eq!(device_size(4096, &range(1024, Some(3072))), Some(3072));
    }

    #[test]
    fn device_size_limit_past_end_is_rejected() {
        assert_eq!(device_size(4096, &range(1024, Some(3073))), None);
    }

    #[test]
    fn device_size_offset_past_end_is_rejected() {
        assert_eq!(device_size(4096, &range(4097, None)), None);
    }

    #[test]
    fn device_size_drops_partial_sector() {
        assert_eq!(device_size(4096 + 100, &range(0, None)), Some(4096));
    }

    #[test]
    fn device_size_less_than_one_sector_is_rejected() {
        assert_eq!(device_size(4096, &range(4000, None)), None);
    }

    #[test]
    fn byte_range_display_with_limit() {
        let range = ByteRange {
            offset: 1024,
            size_limit: Some(512),
        };
        assert_eq!(range.to_string(), "512 bytes at offset 1024");
    }

    #[test]
    fn range_outside_image_error_names_image_and_range() {
        let err = LoopError::RangeOutsideImage {
            image: PathBuf::from("/images/disk.raw"),
            image_size: 4096,
            range: ByteRange {
                offset: 8192,
                size_limit: None,
            },
        };
        assert_eq!(
            err.to_string(),
            "image /images/disk.raw is 4096 bytes, so it has no data from offset 8192 on to attach"
        );
    }

    #[test]
    fn attach_missing_image_fails_opening_image() {
        let err = LoopDevice::attach(
            Path::new("/nonexistent/guest-inject-test.raw"),
            &AttachOptions::default(),
        )
        .unwrap_err();
        assert!(matches!(err, LoopError::OpeningImage { .. }), "{err:?}");
    }

    #[test]
    fn attach_range_past_end_is_rejected_early() {
        let image = tempfile::NamedTempFile::new().unwrap();
        image.as_file().set_len(4096).unwrap();
        let err = LoopDevice::attach(image.path(), &range(8192, None)).unwrap_err();
        assert!(
            matches!(err, LoopError::RangeOutsideImage { .. }),
            "{err:?}"
        );
    }
}
