//! The `localmount` backend: opens a guest filesystem by mounting it on the host, and
//! reaches every guest file only through descriptors confined to the guest root.
//!
//! [`open`] attaches an image (a loop device, through `qemu-nbd` for formats other than
//! raw), mounts its filesystems and returns a [`LocalMount`]. [`RootedTree`] implements
//! the file operations on any host directory, and [`LocalMount`] hands its mounted root to
//! one. The backend registers itself as `localmount` in `vfs_core::registry`.

mod backend;
mod failpoint;
mod guest_mount;
mod probe;
mod sys;
mod tree;

pub use backend::{open, LocalMount, LocalMountError};
pub use guest_mount::GuestMountError;
pub use probe::probe;
pub use tree::RootedTree;
pub use vfs_core::imagelock::{ImageLock, LockError, Permission};

/// The name this backend is registered under.
pub const BACKEND_NAME: &str = "localmount";

/// The position of this backend in the `auto` order: after `guestfs`, which never lets the
/// host kernel parse the guest filesystem.
pub const AUTO_RANK: u32 = 20;

inventory::submit! {
    vfs_core::registry::Backend {
        name: BACKEND_NAME,
        summary: "mounts the image's filesystems on this host through loop devices (and qemu-nbd for qcow2); fast, needs root",
        auto_rank: AUTO_RANK,
        probe,
        open: open_boxed,
    }
}

fn open_boxed(
    options: &vfs_core::registry::OpenOptions,
) -> Result<Box<dyn vfs_core::GuestFs>, vfs_core::registry::BoxError> {
    Ok(Box::new(open(options)?))
}

#[cfg(test)]
mod tests {
    #[test]
    fn backend_is_registered_with_rank_20() {
        let backends = vfs_core::registry::backends();

        let backend = backends
            .iter()
            .find(|backend| backend.name == "localmount")
            .expect("localmount is registered");

        assert_eq!(backend.auto_rank, 20);
    }
}
