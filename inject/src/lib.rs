//! Injection into a guest filesystem: an SSH key for root (with an SELinux relabel at boot
//! where the guest uses SELinux), the root password, `/etc/network/interfaces`, `/meta.js`
//! and arbitrary files.
//!
//! Injection runs in two phases over any [`vfs_core::GuestFs`]. [`plan`] reads and checks
//! everything an item needs (the key, root's entries in `/etc/passwd` and `/etc/shadow`, the
//! files to edit, parent directories, free space) and writes nothing. [`apply`] then carries
//! out the planned steps. So a mandatory item that cannot be injected fails the request
//! before anything is written, and every file is replaced atomically, so a failure while
//! applying leaves each touched file with its old or its new contents. Items named in
//! [`Request::best_effort`] turn their failures into warnings in the [`Report`].
//!
//! [`inject`] does both phases, with [`GuestFs::enable_writes`] between them, and
//! [`Request::validate_inputs`] checks what can be checked before an image is opened.

mod apply;
mod edit;
mod error;
mod md5_crypt;
pub mod password;
mod plan;
mod report;
mod request;
mod ssh_key;

pub use apply::apply;
pub use error::{InjectError, ItemError};
pub use password::Password;
pub use plan::{plan, Contents, Plan, PlannedItem, Step};
pub use report::{ItemReport, Outcome, Report};
pub use request::{FileItem, FileSource, HashMethod, ItemKind, Request, UnknownNameError};

use vfs_core::GuestFs;

/// Plans `request` on `fs`, makes its filesystems writable with
/// [`GuestFs::enable_writes`] when the plan writes anything, and applies the plan.
///
/// Open `fs` with [`vfs_core::registry::OpenOptions::defer_writes`], so that a request
/// that fails while planning, or has nothing to change, leaves the image as it was. Fails
/// when a mandatory item fails or the filesystems cannot be made writable. When planning
/// fails nothing was written; when applying fails the error carries the report of the
/// items before the failure.
pub fn inject(fs: &mut dyn GuestFs, request: &Request) -> Result<Report, InjectError> {
    let plan = plan(fs, request)?;
    let writes = plan.items().iter().any(|item| !item.steps().is_empty());
    if writes {
        fs.enable_writes()
            .map_err(|source| InjectError::EnablingWrites { source })?;
    }
    apply(fs, plan)
}
