//! The `localmount` backend: opens a guest filesystem by mounting it on the host, and
//! reaches every guest file only through descriptors confined to the guest root.
//!
//! [`RootedTree`] implements the file operations on any host directory; [`ImageLock`]
//! keeps a running qemu and this backend from using one image at once.

mod lock;
mod sys;
mod tree;

pub use lock::{ImageLock, LockError, Permission};
pub use tree::RootedTree;

/// The name this backend is registered under.
pub const BACKEND_NAME: &str = "localmount";
