//! The `guestfs` backend: guest filesystems opened and changed inside a libguestfs
//! appliance, so the host kernel never parses the guest's filesystems.
//!
//! [`open`] creates a libguestfs handle, applies the backend settings, adds the image with
//! its declared format (libguestfs never probes it) and launches the appliance once. Then it
//! mounts the filesystem the request names: the whole disk for `none`, `/dev/sdaN` for a
//! number, the filesystem with a matching label or UUID, or, for `auto`, the root of the one
//! operating system that inspection finds with the filesystems its fstab lists.
//! [`check_launch`] does a test launch.
//!
//! With [`OpenOptions::defer_writes`] the drive is added writable but every filesystem is
//! mounted with `ro`, and [`GuestFs::enable_writes`] remounts each read-write
//! (`guestfs_remount`), root first.
//!
//! # Bindings
//!
//! The crate calls the libguestfs C API through its own small wrapper ([`Appliance`])
//! instead of the `guestfs` crate 0.1.0. That crate has no way to register an event
//! callback, so libguestfs's log could not reach `tracing` and, with `LIBGUESTFS_TRACE` set,
//! libguestfs would print the arguments of every call (file contents, the password hash) to
//! stderr. Its error type also keeps libguestfs's message and errno private, and it builds
//! the message from `guestfs_last_error` without checking for NULL. The wrapper declares only
//! the calls this backend makes and links `libguestfs` directly.
//!
//! # Acceleration
//!
//! `force_tcg` is added to the backend settings unless the caller's settings or
//! `LIBGUESTFS_BACKEND_SETTINGS` name `force_tcg` or `force_kvm`: on some hosts `/dev/kvm`
//! exists but qemu aborts or the appliance hangs under KVM, and only a launch would tell.
//! The rest of the `LIBGUESTFS_*` environment is read by libguestfs itself and left alone.
//!
//! # Secrets
//!
//! libguestfs's trace mode is never turned on, and of a trace event (when the environment
//! turns trace mode on) only the call name is logged, because the arguments and results
//! include file contents. Files are read with `pread` and written with `write` and
//! `write_append`, so no guest file passes through a host temporary file.

mod appliance;
mod error;
mod failpoint;
mod fs;
mod handle;
mod open;

use std::path::Path;
use std::time::{Duration, Instant};

use vfs_core::image::ResolvedImage;
use vfs_core::registry::{Availability, Backend, BoxError, OpenOptions};
use vfs_core::GuestFs;

pub use crate::appliance::Appliance;
pub use crate::error::GuestfsError;
pub use crate::fs::{GuestfsFs, BACKEND_NAME};
pub use crate::handle::{GuestfsHandle, HandleError, Stat, StatVfs};

/// The size of the scratch disk a test launch adds, because libguestfs will not launch
/// without a drive.
const CHECK_SCRATCH_BYTES: u64 = 1024 * 1024;

/// Opens the image in a new appliance and mounts the filesystems the request names.
///
/// On any error the appliance is shut down and its handle closed before this returns.
pub fn open(options: &OpenOptions) -> Result<GuestfsFs, GuestfsError> {
    let handle = Appliance::create().map_err(|source| GuestfsError::CreatingHandle { source })?;
    open_with(handle, options)
}

/// Opens the image with an existing, not yet launched handle.
pub(crate) fn open_with<H: GuestfsHandle>(
    mut handle: H,
    options: &OpenOptions,
) -> Result<GuestfsFs<H>, GuestfsError> {
    let result = open::apply_backend_settings(&mut handle, &options.backend_settings)
        .and_then(|()| open::add_drive_and_launch(&mut handle, options))
        .and_then(|()| open::mount_filesystems(&mut handle, options));
    match result {
        Ok(mounts) => Ok(GuestfsFs::new(
            handle,
            mounts,
            open::WriteAccess::of(options),
        )),
        Err(error) => {
            // Dropping the handle would kill qemu; shut it down cleanly first.
            if let Err(shutdown) = handle.shutdown() {
                tracing::debug!(error = %shutdown.message, "shutting down after a failed open failed");
            }
            Err(error)
        }
    }
}

/// Launches an appliance with a scratch disk and shuts it down, returning how long the
/// launch took. This is the real test behind `guest-inject backends --check`.
pub fn check_launch() -> Result<Duration, GuestfsError> {
    let mut handle =
        Appliance::create().map_err(|source| GuestfsError::CreatingHandle { source })?;
    let scratch = Path::new("(scratch disk)");
    let result = (|| {
        open::apply_backend_settings(&mut handle, &[])?;
        handle
            .add_drive_scratch(CHECK_SCRATCH_BYTES)
            .map_err(|source| GuestfsError::AddingDrive {
                image: scratch.to_owned(),
                format: "raw",
                source,
            })?;
        let _span = tracing::info_span!("launch", image = "scratch").entered();
        let started = Instant::now();
        handle.launch().map_err(|source| GuestfsError::Launching {
            image: scratch.to_owned(),
            source,
        })?;
        Ok(started.elapsed())
    })();
    if let Err(error) = handle.shutdown() {
        tracing::warn!(error = %error.message, "shutting down the test appliance failed");
    }
    result
}

/// Says whether libguestfs can run here, without launching anything: a handle can be
/// created, the hypervisor exists, and the appliance can be built (a fixed appliance, or
/// supermin with a readable kernel under `/boot`).
pub fn probe(_image: Option<&ResolvedImage>) -> Availability {
    match probe_reason() {
        None => Availability::Available,
        Some(reason) => Availability::Unavailable { reason },
    }
}

fn probe_reason() -> Option<String> {
    let mut handle = match Appliance::create() {
        Ok(handle) => handle,
        Err(error) => return Some(format!("creating a libguestfs handle failed: {error}")),
    };

    match handle.hypervisor() {
        Ok(hv) if is_executable(Path::new(&hv)) => {}
        Ok(hv) => {
            return Some(format!(
                "the hypervisor {hv} is missing or not executable; install qemu-system-x86 \
                 or set LIBGUESTFS_HV"
            ))
        }
        Err(error) => return Some(format!("finding the hypervisor failed: {error}")),
    }

    let Some(path) = handle.appliance_path() else {
        return Some("libguestfs has no appliance path; set LIBGUESTFS_PATH".to_owned());
    };
    appliance_problem(&path)
}

/// Returns what keeps an appliance from being built from `LIBGUESTFS_PATH` (`path` may list
/// several directories separated by `:`), or `None`.
fn appliance_problem(path: &str) -> Option<String> {
    for dir in path.split(':').filter(|dir| !dir.is_empty()) {
        let dir = Path::new(dir);
        let fixed = ["kernel", "initrd", "root"]
            .iter()
            .all(|name| dir.join(name).is_file());
        if fixed {
            return None;
        }
        if dir.join("supermin.d").is_dir() {
            if find_in_path("supermin").is_none() {
                return Some(format!(
                    "{} holds a supermin appliance but the supermin program is not in PATH; \
                     install supermin",
                    dir.display()
                ));
            }
            return kernel_problem();
        }
    }
    Some(format!(
        "no libguestfs appliance found in {path}; install libguestfs's appliance package \
         (libguestfs0 and supermin on Debian) or set LIBGUESTFS_PATH"
    ))
}

/// Returns what keeps supermin from reading a kernel, or `None`.
fn kernel_problem() -> Option<String> {
    if let Some(kernel) = std::env::var_os("SUPERMIN_KERNEL") {
        let kernel = Path::new(&kernel);
        return match std::fs::File::open(kernel) {
            Ok(_) => None,
            Err(error) => Some(format!(
                "SUPERMIN_KERNEL={} cannot be read ({error}); point it at a readable kernel",
                kernel.display()
            )),
        };
    }
    let entries = match std::fs::read_dir("/boot") {
        Ok(entries) => entries,
        Err(error) => {
            return Some(format!(
                "/boot cannot be listed ({error}); supermin builds the appliance from a kernel \
                 there: install a kernel package (linux-image-amd64 on Debian)"
            ))
        }
    };
    let mut unreadable = Vec::new();
    for entry in entries.flatten() {
        let name = entry.file_name();
        if !name.to_string_lossy().starts_with("vmlinuz-") {
            continue;
        }
        match std::fs::File::open(entry.path()) {
            Ok(_) => return None,
            Err(_) => unreadable.push(entry.path().display().to_string()),
        }
    }
    if unreadable.is_empty() {
        Some(
            "no kernel found under /boot; supermin builds the appliance from one: install a \
             kernel package (linux-image-amd64 on Debian)"
                .to_owned(),
        )
    } else {
        Some(format!(
            "no kernel under /boot is readable by this user ({}); supermin builds the \
             appliance from one: make it readable (chmod 0644) or run as root",
            unreadable.join(", ")
        ))
    }
}

fn find_in_path(program: &str) -> Option<std::path::PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(program))
        .find(|candidate| is_executable(candidate))
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|metadata| metadata.is_file() && metadata.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

fn open_boxed(options: &OpenOptions) -> Result<Box<dyn GuestFs>, BoxError> {
    Ok(Box::new(open(options)?))
}

inventory::submit! {
    Backend {
        name: BACKEND_NAME,
        summary: "changes the image inside a libguestfs appliance; the host kernel never parses guest filesystems",
        auto_rank: 10,
        probe,
        open: open_boxed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::MockGuestfsHandle;
    use std::path::PathBuf;
    use vfs_core::image::{DiskFormat, PartitionSelector, SettingSource};

    fn options() -> OpenOptions {
        OpenOptions::new(ResolvedImage {
            path: PathBuf::from("/images/disk.raw"),
            format: DiskFormat::Qcow2,
            format_source: SettingSource::Flag,
            partition: PartitionSelector::Number(1),
            partition_source: SettingSource::Flag,
            file_size: 1 << 30,
        })
    }

    #[test]
    fn launch_failure_shuts_handle_down() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_backend_settings()
            .returning(|| Ok(Vec::new()));
        handle.expect_set_backend_setting().returning(|_, _| Ok(()));
        handle.expect_add_drive().returning(|_, _, _| Ok(()));
        handle.expect_launch().returning(|| {
            Err(HandleError {
                message: "supermin exited with error status 1".into(),
                errno: 0,
            })
        });
        handle.expect_shutdown().times(1).returning(|| Ok(()));
        let error = open_with(handle, &options()).unwrap_err();
        assert!(matches!(error, GuestfsError::Launching { .. }), "{error}");
    }

    #[test]
    fn mount_failure_shuts_handle_down() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_backend_settings()
            .returning(|| Ok(Vec::new()));
        handle.expect_set_backend_setting().returning(|_, _| Ok(()));
        handle.expect_add_drive().returning(|_, _, _| Ok(()));
        handle.expect_launch().returning(|| Ok(()));
        handle
            .expect_list_partitions()
            .returning(|| Ok(vec!["/dev/sda1".into()]));
        handle.expect_vfs_type().returning(|_| Ok("ext4".into()));
        handle.expect_mount_options().returning(|_, _, _| {
            Err(HandleError {
                message: "mount: bad superblock".into(),
                errno: libc::EINVAL,
            })
        });
        handle.expect_shutdown().times(1).returning(|| Ok(()));
        let error = open_with(handle, &options()).unwrap_err();
        assert!(matches!(error, GuestfsError::Mounting { .. }), "{error}");
    }

    #[test]
    fn drive_error_names_image_and_format() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_backend_settings()
            .returning(|| Ok(Vec::new()));
        handle.expect_set_backend_setting().returning(|_, _| Ok(()));
        handle.expect_add_drive().returning(|_, _, _| {
            Err(HandleError {
                message: "could not open".into(),
                errno: libc::ENOENT,
            })
        });
        handle.expect_launch().never();
        handle.expect_shutdown().times(1).returning(|| Ok(()));
        let error = open_with(handle, &options()).unwrap_err();
        let text = error.to_string();
        assert!(text.contains("/images/disk.raw"), "{text}");
        assert!(text.contains("qcow2"), "{text}");
    }

    #[test]
    fn fixed_appliance_needs_no_kernel() {
        let dir = tempfile::tempdir().unwrap();
        for name in ["kernel", "initrd", "root"] {
            std::fs::write(dir.path().join(name), b"x").unwrap();
        }
        assert_eq!(appliance_problem(dir.path().to_str().unwrap()), None);
    }

    #[test]
    fn missing_appliance_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        let reason = appliance_problem(dir.path().to_str().unwrap()).unwrap();
        assert!(reason.contains("no libguestfs appliance"), "{reason}");
        assert!(reason.contains("LIBGUESTFS_PATH"), "{reason}");
    }

    #[test]
    fn backend_is_registered_with_rank_ten() {
        let backend = vfs_core::registry::backends()
            .into_iter()
            .find(|backend| backend.name == "guestfs")
            .expect("guestfs is registered");
        assert_eq!(backend.auto_rank, 10);
    }
}
