//! Settings shared by [`crate::NbdServer`] and [`crate::NbdAttachment`].

use std::fmt;
use std::time::Duration;

use vfs_core::image::DiskFormat;

/// How long a helper gets by default to become ready.
pub const DEFAULT_READY_TIMEOUT: Duration = Duration::from_secs(10);

/// How long a helper gets by default to exit after being asked, and again after `SIGKILL`.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The way the export reaches the host as something a loop device or mount can use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum AttachMethod {
    /// The kernel NBD client when the kernel has one (`/sys/block/nbd0` exists), otherwise
    /// `nbdfuse`.
    #[default]
    Auto,
    /// `qemu-nbd --connect` on a free `/dev/nbdN`.
    Kernel,
    /// `qemu-nbd` on a private unix socket and `nbdfuse` showing the export as a file.
    Fuse,
}

impl fmt::Display for AttachMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Kernel => "kernel",
            Self::Fuse => "fuse",
        })
    }
}

/// Settings for serving and attaching one image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NbdOptions {
    /// The image format, always passed to `qemu-nbd` so it never guesses.
    pub format: DiskFormat,
    /// Serves the image read-only (`qemu-nbd --read-only`, `nbdfuse -r`).
    pub read_only: bool,
    /// How to attach the export; only [`crate::NbdAttachment`] uses it.
    pub method: AttachMethod,
    /// How long each helper gets to become ready.
    pub ready_timeout: Duration,
    /// How long each helper gets to exit when stopped, and again after `SIGKILL`.
    pub stop_timeout: Duration,
}

impl NbdOptions {
    /// Returns options for a writable image of `format`, attached by [`AttachMethod::Auto`],
    /// with the default timeouts.
    pub fn new(format: DiskFormat) -> Self {
        Self {
            format,
            read_only: false,
            method: AttachMethod::Auto,
            ready_timeout: DEFAULT_READY_TIMEOUT,
            stop_timeout: DEFAULT_STOP_TIMEOUT,
        }
    }
}
