//! The core of guest-inject: the [`GuestFs`] trait that backends implement, checked
//! [`GuestPath`]s, the image model and its metadata sidecar, partition-table parsing,
//! filesystem probing, and the backend registry with the rule that picks a backend.
//!
//! A caller builds an [`image::ImageRequest`], resolves it into an
//! [`image::ResolvedImage`] (format and partition settled from flags, the image's own
//! metadata and detection), and passes it to [`registry::open`] with a
//! [`registry::BackendChoice`].

pub mod accounts;
pub mod error;
pub mod fsprobe;
pub mod fstab;
pub mod image;
pub mod imagelock;
pub mod layout;
pub mod partition;
pub mod path;
pub mod preflight;
pub mod registry;
pub mod vfs;

pub use error::{Result, VfsError};
pub use path::{GuestPath, PathError};
pub use vfs::{FileKind, GuestFs, Metadata, MountInfo, MAX_READ_BYTES, MAX_SYMLINK_FOLLOWS};
