//! Disk images served with `qemu-nbd` and attached to the host, so that loop devices and
//! mounts can reach the filesystems in formats such as qcow2.
//!
//! [`NbdAttachment::attach`] picks the kernel NBD client when the kernel has one
//! (`qemu-nbd --connect /dev/nbdN`) and otherwise serves the image on a private unix
//! socket ([`NbdServer`]) and shows it as a file with `nbdfuse`. Either way the result is
//! a path ([`AttachedExport`]) on which the caller attaches a loop device at a partition's
//! offset. Every helper process is owned by a value that stops it when dropped.
//!
//! Helper processes run through the [`CommandRunner`] trait and host checks through the
//! [`HostProbe`] trait, so that tests can replace both.

mod attach;
mod error;
mod failpoint;
mod host;
mod options;
mod process;
mod protocol;
mod server;
#[cfg(test)]
mod test_support;

pub use attach::{AttachedExport, NbdAttachment, MAX_NBD_DEVICE_ATTEMPTS};
pub use error::NbdError;
pub use host::{HostProbe, SystemHost};
pub use options::{AttachMethod, NbdOptions, DEFAULT_READY_TIMEOUT, DEFAULT_STOP_TIMEOUT};
pub use process::{ChildProcess, CommandLine, CommandOutput, CommandRunner, SystemRunner};
pub use protocol::query_export_size;
pub use server::NbdServer;
