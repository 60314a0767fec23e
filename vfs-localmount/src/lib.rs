//! The `localmount` backend: opens a guest filesystem by mounting it on the host, and
//! reaches every guest file only through descriptors confined to the guest root.
//!
//! [`tree::RootedTree`] implements the file operations on any host directory; the backend
//! attaches the image, mounts its filesystems and hands the mounted root to a tree.

mod sys;
pub mod tree;

pub use tree::RootedTree;

/// The name this backend is registered under.
pub const BACKEND_NAME: &str = "localmount";
