//! Loop devices over image files and host mounts of the filesystems on them.
//!
//! [`LoopDevice::attach`] binds an image, or a byte range of it such as one partition, to a
//! free `/dev/loopN`. [`Mount::new`] mounts a block device on a private temporary
//! directory, [`Mount::mount_at`] on a given directory, and [`Mount::placeholder`] covers a
//! directory with an empty read-only tmpfs. Every value releases what it holds when
//! dropped and has a `close` that reports failures. [`remove_stale_dirs`] clears the
//! empty private directories that a killed process left in the temporary directory.
//!
//! A typical sequence, as root:
//!
//! ```no_run
//! use std::path::Path;
//! use mount_loop::{AttachOptions, LoopDevice, Mount};
//!
//! let options = AttachOptions { offset: 1024 * 1024, ..AttachOptions::default() };
//! let device = LoopDevice::attach(Path::new("disk.raw"), &options)?;
//! let mount = Mount::new(device.path(), "ext4", false)?;
//! std::fs::write(mount.path().join("hello"), b"hi")?;
//! mount.close()?;
//! device.close()?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod device;
mod failpoint;
mod ioctl;
mod mount;
mod stale;

pub use device::{
    loop_devices_backed_by, AttachOptions, ByteRange, LoopDevice, LoopError, MAX_ATTACH_ATTEMPTS,
};
pub use mount::{DeviceLabel, Mount, MountError};
pub use stale::{private_dir_prefix, remove_stale_dirs};
