//! Test support for guest-inject: [`MemFs`], an in-memory [`vfs_core::GuestFs`] for tests
//! of callers, a Debian-like guest tree built in it, the conformance suite that every
//! backend runs, and proptest strategies for paths, trees and `/etc/shadow` text.

pub mod conformance;
pub mod debian;
pub mod hostile;
pub mod images;
pub mod memfs;
pub mod strategies;

pub use memfs::{Fault, MemFs, MemNode, MemNodeKind, MemOp, SharedMemFs};

/// The `vfs_core` crate, for the expansion of [`conformance_tests!`] in crates that name it
/// differently.
#[doc(hidden)]
pub use vfs_core as __vfs_core;
