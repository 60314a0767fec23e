//! Opening an image: backend settings, the drive, one launch, and choosing and mounting the
//! filesystems the request names.

use std::path::{Path, PathBuf};

use vfs_core::fstab::{local_mounts, parse_fstab};
use vfs_core::image::PartitionSelector;
use vfs_core::registry::OpenOptions;
use vfs_core::GuestPath;

use crate::error::GuestfsError;
use crate::fs::CHUNK_SIZE;
use crate::handle::{GuestfsHandle, HandleError};

/// Settings that choose how qemu accelerates the appliance; when the caller or
/// `LIBGUESTFS_BACKEND_SETTINGS` names one of them, no default is added.
const ACCELERATION_SETTINGS: [&str; 2] = ["force_tcg", "force_kvm"];

/// The guest's table of filesystems, read from the chosen root when a filesystem is
/// selected explicitly.
const FSTAB: &str = "/etc/fstab";

/// A filesystem mounted in the appliance.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Mounted {
    /// The mount point in the guest tree.
    pub mount_point: GuestPath,
    /// The libguestfs mountable, such as `/dev/sda2`.
    pub device: String,
    /// The filesystem type, such as `ext4`.
    pub fs_type: String,
}

/// Whether the filesystems of an opened image accept changes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WriteAccess {
    /// The drive and every filesystem are read-only for good.
    ReadOnly,
    /// The drive is writable but every filesystem is mounted read-only until
    /// [`vfs_core::GuestFs::enable_writes`].
    Deferred,
    /// Every filesystem is mounted read-write.
    Enabled,
}

impl WriteAccess {
    /// Returns the access that `options` requests.
    pub(crate) fn of(options: &OpenOptions) -> Self {
        if options.read_only {
            Self::ReadOnly
        } else if options.defer_writes {
            Self::Deferred
        } else {
            Self::Enabled
        }
    }
}

/// The filesystems of an opened image.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct MountTable {
    /// Mounted filesystems, root first, then by depth.
    pub mounted: Vec<Mounted>,
    /// Mount points from the guest's fstab whose filesystem failed to mount.
    pub failed: Vec<GuestPath>,
}

/// Applies the backend settings: the caller's, then `force_tcg` unless an acceleration
/// setting is already given.
///
/// The settings from `LIBGUESTFS_BACKEND_SETTINGS` were read when the handle was created and
/// stay in place; these are added to them. TCG is the default because KVM, even where
/// `/dev/kvm` exists, can abort qemu or hang the appliance on some hosts. Only a launch
/// would show that, so `force_kvm` in the settings is how a caller selects KVM.
pub(crate) fn apply_backend_settings<H: GuestfsHandle>(
    handle: &mut H,
    settings: &[String],
) -> Result<(), GuestfsError> {
    let mut parsed = Vec::with_capacity(settings.len());
    for setting in settings {
        let (name, value) = match setting.split_once('=') {
            Some((name, value)) => (name, value),
            // A bare KEY means the setting is on, as in LIBGUESTFS_BACKEND_SETTINGS.
            None => (setting.as_str(), "1"),
        };
        if name.is_empty() {
            return Err(GuestfsError::InvalidSetting {
                setting: setting.clone(),
            });
        }
        parsed.push((name, value));
    }

    let inherited = handle
        .backend_settings()
        .map_err(|source| GuestfsError::SettingBackend {
            setting: "(reading the current settings)".to_owned(),
            source,
        })?;
    let names_acceleration = |name: &str| ACCELERATION_SETTINGS.contains(&name);
    let accelerated = parsed.iter().any(|(name, _)| names_acceleration(name))
        || inherited
            .iter()
            .any(|setting| names_acceleration(setting.split('=').next().unwrap_or("")));
    if !accelerated {
        parsed.push(("force_tcg", "1"));
    }

    for (name, value) in parsed {
        tracing::debug!(name, value, "setting a libguestfs backend setting");
        handle
            .set_backend_setting(name, value)
            .map_err(|source| GuestfsError::SettingBackend {
                setting: format!("{name}={value}"),
                source,
            })?;
    }
    Ok(())
}

/// Adds the image with its declared format and launches the appliance once.
pub(crate) fn add_drive_and_launch<H: GuestfsHandle>(
    handle: &mut H,
    options: &OpenOptions,
) -> Result<(), GuestfsError> {
    let image = &options.image.path;
    let format = options.image.format.as_str();
    handle
        .add_drive(&absolute(image), format, options.read_only)
        .map_err(|source| GuestfsError::AddingDrive {
            image: image.clone(),
            format,
            source,
        })?;

    let span = tracing::info_span!("launch", image = %image.display());
    let _entered = span.enter();
    let started = std::time::Instant::now();
    handle.launch().map_err(|source| GuestfsError::Launching {
        image: image.clone(),
        source,
    })?;
    tracing::info!(
        elapsed_ms = started.elapsed().as_millis() as u64,
        "libguestfs appliance launched"
    );
    Ok(())
}

/// Chooses the filesystems the request names and mounts them, read-only unless writes
/// are enabled at once.
pub(crate) fn mount_filesystems<H: GuestfsHandle>(
    handle: &mut H,
    options: &OpenOptions,
) -> Result<MountTable, GuestfsError> {
    let image = &options.image.path;
    let mount_options = match WriteAccess::of(options) {
        WriteAccess::ReadOnly | WriteAccess::Deferred => "ro",
        WriteAccess::Enabled => "",
    };
    match &options.image.partition {
        PartitionSelector::Auto => mount_inspected(handle, image, mount_options),
        selector => {
            let device = choose_device(handle, image, selector)?;
            let fs_type = mountable_type(handle, image, &device)?;
            mount_root(handle, image, mount_options, &device, &fs_type)?;
            let mut table = MountTable {
                mounted: vec![Mounted {
                    mount_point: GuestPath::root(),
                    device,
                    fs_type,
                }],
                failed: Vec::new(),
            };
            mount_fstab_entries(handle, image, mount_options, &mut table)?;
            Ok(table)
        }
    }
}

/// Mounts the local filesystems that the chosen root's `/etc/fstab` lists beneath it, in
/// the order [`local_mounts`] gives (parents first).
///
/// Without this, a write to `/boot/x` on a guest with a separate `/boot` would land on the
/// root filesystem underneath the guest's real `/boot`. A spec that names no filesystem on
/// the disk, such as `PARTUUID=` (not looked up here), is recorded in
/// [`MountTable::failed`] like a mount that fails, so writes beneath it are rejected.
fn mount_fstab_entries<H: GuestfsHandle>(
    handle: &mut H,
    image: &Path,
    mount_options: &str,
    table: &mut MountTable,
) -> Result<(), GuestfsError> {
    let contents = match handle.pread(FSTAB, CHUNK_SIZE as u32, 0) {
        Ok(contents) => contents,
        Err(error) if error.errno == libc::ENOENT => {
            tracing::debug!("the chosen filesystem has no /etc/fstab; mounting it alone");
            return Ok(());
        }
        Err(error) => {
            tracing::warn!(error = %error.message, "reading /etc/fstab of the chosen filesystem failed; mounting it alone");
            return Ok(());
        }
    };
    let entries = parse_fstab(&contents);
    let beneath_root: Vec<(GuestPath, &str)> = local_mounts(&entries)
        .into_iter()
        .filter_map(|entry| match GuestPath::new(&entry.mount_point) {
            Ok(point) if point.is_root() => None,
            Ok(point) => Some((point, entry.spec.as_str())),
            Err(error) => {
                tracing::warn!(mount_point = %entry.mount_point, %error, "skipping an invalid mount point from the guest's fstab");
                None
            }
        })
        .collect();
    if beneath_root.is_empty() {
        return Ok(());
    }

    let filesystems = handle
        .list_filesystems()
        .map_err(|source| GuestfsError::Listing {
            image: image.to_owned(),
            items: "filesystems",
            source,
        })?;
    for (mount_point, spec) in beneath_root {
        let device = find_fstab_device(handle, spec, &filesystems);
        if device.is_none() {
            tracing::warn!(spec, %mount_point, "no filesystem on the disk matches the fstab entry; writes beneath its mount point will be rejected");
        }
        mount_beneath(handle, table, mount_options, mount_point, device);
    }
    Ok(())
}

/// Returns the one filesystem that an fstab spec names: `UUID=` (without regard to case),
/// `LABEL=`, or a kernel name such as `/dev/vda1`, which names partition 1 of this disk.
fn find_fstab_device<H: GuestfsHandle>(
    handle: &mut H,
    spec: &str,
    filesystems: &[(String, String)],
) -> Option<String> {
    let unquote = |value: &str| value.trim_matches('"').to_owned();
    let candidates = filesystems
        .iter()
        .filter(|(_, fs_type)| is_mountable_type(fs_type))
        .map(|(mountable, _)| mountable);

    let matches: Vec<String> = if let Some(uuid) = spec.strip_prefix("UUID=") {
        let uuid = unquote(uuid);
        candidates
            .filter(|mountable| {
                handle
                    .vfs_uuid(mountable)
                    .is_ok_and(|found| found.eq_ignore_ascii_case(&uuid))
            })
            .cloned()
            .collect()
    } else if let Some(label) = spec.strip_prefix("LABEL=") {
        let label = unquote(label);
        candidates
            .filter(|mountable| {
                handle
                    .vfs_label(mountable)
                    .is_ok_and(|found| found == label)
            })
            .cloned()
            .collect()
    } else {
        let device = format!("/dev/sda{}", kernel_partition_number(spec)?);
        candidates
            .filter(|mountable| **mountable == device)
            .cloned()
            .collect()
    };
    match <[String; 1]>::try_from(matches) {
        Ok([device]) => Some(device),
        Err(_) => None,
    }
}

/// Returns N for a partition name such as `/dev/sda2`, `/dev/vdb2`, `/dev/xvda2` or
/// `/dev/hda2`. The disk letter is ignored because the guest is given this one disk.
fn kernel_partition_number(spec: &str) -> Option<u32> {
    let name = spec.strip_prefix("/dev/")?;
    let name = ["xvd", "sd", "vd", "hd"]
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))?;
    let digits = name.trim_start_matches(|c: char| c.is_ascii_lowercase());
    if digits.len() == name.len()
        || digits.is_empty()
        || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok().filter(|number| *number >= 1)
}

/// Returns the device for `none`, a partition number, a label or a UUID.
fn choose_device<H: GuestfsHandle>(
    handle: &mut H,
    image: &Path,
    selector: &PartitionSelector,
) -> Result<String, GuestfsError> {
    match selector {
        PartitionSelector::None => Ok("/dev/sda".to_owned()),
        PartitionSelector::Number(number) => {
            let partitions = handle
                .list_partitions()
                .map_err(|source| GuestfsError::Listing {
                    image: image.to_owned(),
                    items: "partitions",
                    source,
                })?;
            let device = format!("/dev/sda{number}");
            if partitions.contains(&device) {
                Ok(device)
            } else {
                Err(GuestfsError::PartitionNotFound {
                    image: image.to_owned(),
                    number: *number,
                    found: list_or_none(&partitions),
                })
            }
        }
        PartitionSelector::Label(_) | PartitionSelector::Uuid(_) => {
            find_by_label_or_uuid(handle, image, selector)
        }
        PartitionSelector::Auto => unreachable!("auto is handled by inspection"),
    }
}

/// Returns the one filesystem whose label or UUID (without regard to case) matches.
fn find_by_label_or_uuid<H: GuestfsHandle>(
    handle: &mut H,
    image: &Path,
    selector: &PartitionSelector,
) -> Result<String, GuestfsError> {
    let filesystems = handle
        .list_filesystems()
        .map_err(|source| GuestfsError::Listing {
            image: image.to_owned(),
            items: "filesystems",
            source,
        })?;

    let mut matches = Vec::new();
    let mut seen = Vec::new();
    for (mountable, fs_type) in filesystems {
        if !is_mountable_type(&fs_type) {
            continue;
        }
        let (value, wanted) = match selector {
            PartitionSelector::Label(label) => (handle.vfs_label(&mountable), label),
            PartitionSelector::Uuid(uuid) => (handle.vfs_uuid(&mountable), uuid),
            _ => unreachable!("only labels and UUIDs are matched here"),
        };
        // A filesystem whose label cannot be read simply does not match.
        let value = value.unwrap_or_default();
        let found = match selector {
            PartitionSelector::Label(_) => value == *wanted,
            _ => value.eq_ignore_ascii_case(wanted),
        };
        if found {
            matches.push(mountable.clone());
        }
        seen.push(format!("{mountable} ({fs_type}) {value:?}"));
    }

    match matches.len() {
        1 => Ok(matches.remove(0)),
        0 => Err(GuestfsError::FilesystemNotFound {
            image: image.to_owned(),
            selector: selector.to_string(),
            found: list_or_none(&seen),
        }),
        _ => Err(GuestfsError::AmbiguousFilesystem {
            image: image.to_owned(),
            selector: selector.to_string(),
            matches: matches.join(", "),
        }),
    }
}

/// Returns the filesystem type on `device`, or [`GuestfsError::NoFilesystem`].
fn mountable_type<H: GuestfsHandle>(
    handle: &mut H,
    image: &Path,
    device: &str,
) -> Result<String, GuestfsError> {
    let no_filesystem = |detail: String| GuestfsError::NoFilesystem {
        image: image.to_owned(),
        device: device.to_owned(),
        detail,
    };
    match handle.vfs_type(device) {
        Ok(fs_type) if is_mountable_type(&fs_type) => Ok(fs_type),
        Ok(fs_type) if fs_type.is_empty() => Err(no_filesystem(String::new())),
        Ok(fs_type) => Err(no_filesystem(format!(" (it contains {fs_type})"))),
        Err(error) => Err(no_filesystem(format!(" ({})", error.message))),
    }
}

/// Returns false for types that are no mountable filesystem.
fn is_mountable_type(fs_type: &str) -> bool {
    !matches!(fs_type, "" | "unknown" | "swap")
}

fn mount_root<H: GuestfsHandle>(
    handle: &mut H,
    image: &Path,
    mount_options: &str,
    device: &str,
    fs_type: &str,
) -> Result<(), GuestfsError> {
    let _span = tracing::info_span!("mount", device, mount_point = "/", fs_type).entered();
    handle
        .mount_options(mount_options, device, "/")
        .map_err(|source| GuestfsError::Mounting {
            image: image.to_owned(),
            device: device.to_owned(),
            mount_point: "/".to_owned(),
            source,
        })
}

/// Finds the one operating system by inspection and mounts its filesystems, root first.
///
/// A filesystem other than the root that fails to mount is recorded in
/// [`MountTable::failed`], so that writes beneath its mount point can be rejected instead
/// of landing on the root filesystem underneath.
fn mount_inspected<H: GuestfsHandle>(
    handle: &mut H,
    image: &Path,
    mount_options: &str,
) -> Result<MountTable, GuestfsError> {
    let roots = {
        let _span = tracing::info_span!("inspect", image = %image.display()).entered();
        handle
            .inspect_os()
            .map_err(|source| GuestfsError::Inspecting {
                image: image.to_owned(),
                source,
            })?
    };
    let root = match roots.as_slice() {
        [] => {
            return Err(GuestfsError::NoOperatingSystem {
                image: image.to_owned(),
            })
        }
        [root] => root.clone(),
        several => {
            return Err(GuestfsError::SeveralOperatingSystems {
                image: image.to_owned(),
                roots: several.join(", "),
            })
        }
    };

    let mountpoints =
        handle
            .inspect_get_mountpoints(&root)
            .map_err(|source| GuestfsError::Inspecting {
                image: image.to_owned(),
                source,
            })?;
    let mut table = MountTable::default();
    for (mount_point, device) in order_mountpoints(mountpoints) {
        let guest_point = match GuestPath::new(&mount_point) {
            Ok(path) => path,
            Err(error) => {
                tracing::warn!(%mount_point, %device, %error, "skipping an invalid mount point from the guest's fstab");
                continue;
            }
        };
        if guest_point.is_root() {
            let fs_type = handle.vfs_type(&device).unwrap_or_default();
            mount_root(handle, image, mount_options, &device, &fs_type)?;
            table.mounted.push(Mounted {
                mount_point: guest_point,
                device,
                fs_type,
            });
            continue;
        }

        mount_beneath(handle, &mut table, mount_options, guest_point, Some(device));
    }
    if table.mounted.first().map(|m| m.mount_point.is_root()) != Some(true) {
        return Err(GuestfsError::Inspecting {
            image: image.to_owned(),
            source: HandleError {
                message: format!("inspection found root {root} but no filesystem for /"),
                errno: 0,
            },
        });
    }
    Ok(table)
}

/// Mounts `device` at `mount_point` beneath the mounted root, or records the mount point in
/// [`MountTable::failed`] when there is no device, a mount point above it failed, or the
/// mount fails.
fn mount_beneath<H: GuestfsHandle>(
    handle: &mut H,
    table: &mut MountTable,
    mount_options: &str,
    mount_point: GuestPath,
    device: Option<String>,
) {
    let _span =
        tracing::info_span!("mount", device = device.as_deref().unwrap_or("(none)"), %mount_point)
            .entered();
    if let Some(parent) = table
        .failed
        .iter()
        .find(|failed| mount_point.starts_with(failed))
    {
        tracing::warn!(parent = %parent, "not mounting beneath a mount point whose filesystem failed to mount");
        table.failed.push(mount_point);
        return;
    }
    let Some(device) = device else {
        table.failed.push(mount_point);
        return;
    };
    match handle.mount_options(mount_options, &device, mount_point.as_str()) {
        Ok(()) => {
            let fs_type = handle.vfs_type(&device).unwrap_or_default();
            table.mounted.push(Mounted {
                mount_point,
                device,
                fs_type,
            });
        }
        Err(error) => {
            tracing::warn!(error = %error.message, "mounting a filesystem from the guest's fstab failed; writes beneath its mount point will be rejected");
            table.failed.push(mount_point);
        }
    }
}

/// Sorts mount points so that every one comes after those above it: `/` first, then by
/// depth, then by name for a stable order.
fn order_mountpoints(mut mountpoints: Vec<(String, String)>) -> Vec<(String, String)> {
    let depth = |point: &str| point.split('/').filter(|name| !name.is_empty()).count();
    mountpoints.sort_by(|(a, _), (b, _)| depth(a).cmp(&depth(b)).then_with(|| a.cmp(b)));
    mountpoints
}

fn list_or_none(items: &[String]) -> String {
    if items.is_empty() {
        "none".to_owned()
    } else {
        items.join(", ")
    }
}

/// Makes the image path absolute, because qemu runs with the same working directory but
/// libguestfs documents local drive names as paths that must not look like URIs.
fn absolute(image: &Path) -> PathBuf {
    std::path::absolute(image).unwrap_or_else(|_| image.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::handle::MockGuestfsHandle;
    use mockall::predicate::eq;
    use vfs_core::image::{DiskFormat, ResolvedImage, SettingSource};

    fn options(partition: PartitionSelector) -> OpenOptions {
        OpenOptions::new(ResolvedImage {
            path: PathBuf::from("/images/disk.raw"),
            format: DiskFormat::Raw,
            format_source: SettingSource::Flag,
            partition,
            partition_source: SettingSource::Flag,
            file_size: 1 << 30,
        })
    }

    fn failure(message: &str) -> HandleError {
        HandleError {
            message: message.to_owned(),
            errno: 0,
        }
    }

    /// Expects the chosen root to have no `/etc/fstab`.
    fn expect_no_fstab(handle: &mut MockGuestfsHandle) {
        handle
            .expect_pread()
            .with(eq("/etc/fstab"), mockall::predicate::always(), eq(0))
            .returning(|_, _, _| {
                Err(HandleError {
                    message: "open: /etc/fstab: No such file or directory".into(),
                    errno: libc::ENOENT,
                })
            });
    }

    /// Expects the chosen root's `/etc/fstab` to hold `text`.
    fn expect_fstab(handle: &mut MockGuestfsHandle, text: &'static str) {
        handle
            .expect_pread()
            .with(eq("/etc/fstab"), mockall::predicate::always(), eq(0))
            .times(1)
            .returning(move |_, _, _| Ok(text.as_bytes().to_vec()));
    }

    /// Expects a disk with an ext4 `/boot` on partition 1 and an ext4 root on partition 2.
    fn expect_boot_and_root(handle: &mut MockGuestfsHandle) {
        handle
            .expect_list_partitions()
            .returning(|| Ok(vec!["/dev/sda1".into(), "/dev/sda2".into()]));
        handle.expect_list_filesystems().returning(|| {
            Ok(vec![
                ("/dev/sda1".into(), "ext4".into()),
                ("/dev/sda2".into(), "ext4".into()),
            ])
        });
        handle.expect_vfs_type().returning(|_| Ok("ext4".into()));
        handle.expect_vfs_uuid().returning(|device| {
            Ok(if device == "/dev/sda1" {
                "B00B0000-0000-4000-8000-000000000001"
            } else {
                "b00b0000-0000-4000-8000-000000000002"
            }
            .into())
        });
    }

    #[test]
    fn force_tcg_is_added_by_default() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_backend_settings()
            .returning(|| Ok(Vec::new()));
        handle
            .expect_set_backend_setting()
            .with(eq("force_tcg"), eq("1"))
            .times(1)
            .returning(|_, _| Ok(()));
        apply_backend_settings(&mut handle, &[]).unwrap();
    }

    #[test]
    fn force_kvm_setting_replaces_default() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_backend_settings()
            .returning(|| Ok(Vec::new()));
        handle
            .expect_set_backend_setting()
            .with(eq("force_kvm"), eq("1"))
            .times(1)
            .returning(|_, _| Ok(()));
        apply_backend_settings(&mut handle, &["force_kvm".to_owned()]).unwrap();
    }

    #[test]
    fn environment_acceleration_is_kept() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_backend_settings()
            .returning(|| Ok(vec!["force_kvm".to_owned()]));
        handle.expect_set_backend_setting().never();
        apply_backend_settings(&mut handle, &[]).unwrap();
    }

    #[test]
    fn setting_value_is_passed_as_given() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_backend_settings()
            .returning(|| Ok(Vec::new()));
        handle
            .expect_set_backend_setting()
            .with(eq("gdb"), eq("a=b"))
            .times(1)
            .returning(|_, _| Ok(()));
        handle
            .expect_set_backend_setting()
            .with(eq("force_tcg"), eq("1"))
            .times(1)
            .returning(|_, _| Ok(()));
        apply_backend_settings(&mut handle, &["gdb=a=b".to_owned()]).unwrap();
    }

    #[test]
    fn setting_without_name_is_rejected() {
        let mut handle = MockGuestfsHandle::new();
        let error = apply_backend_settings(&mut handle, &["=1".to_owned()]).unwrap_err();
        assert!(
            matches!(error, GuestfsError::InvalidSetting { .. }),
            "{error}"
        );
    }

    #[test]
    fn drive_gets_declared_format_and_read_only() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_add_drive()
            .withf(|image, format, read_only| {
                image == Path::new("/images/disk.raw") && format == "raw" && *read_only
            })
            .times(1)
            .returning(|_, _, _| Ok(()));
        handle.expect_launch().times(1).returning(|| Ok(()));
        let mut options = options(PartitionSelector::Number(1));
        options.read_only = true;
        add_drive_and_launch(&mut handle, &options).unwrap();
    }

    #[test]
    fn launch_failure_names_image_and_keeps_message() {
        let mut handle = MockGuestfsHandle::new();
        handle.expect_add_drive().returning(|_, _, _| Ok(()));
        handle
            .expect_launch()
            .times(1)
            .returning(|| Err(failure("qemu: could not open /dev/kvm")));
        let error =
            add_drive_and_launch(&mut handle, &options(PartitionSelector::Auto)).unwrap_err();
        assert!(matches!(error, GuestfsError::Launching { .. }), "{error}");
        assert!(error.to_string().contains("/images/disk.raw"));
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert!(source.contains("/dev/kvm"));
    }

    #[test]
    fn partition_number_mounts_that_partition_only() {
        let mut handle = MockGuestfsHandle::new();
        expect_no_fstab(&mut handle);
        handle
            .expect_list_partitions()
            .returning(|| Ok(vec!["/dev/sda1".into(), "/dev/sda2".into()]));
        handle
            .expect_vfs_type()
            .with(eq("/dev/sda2"))
            .returning(|_| Ok("ext4".into()));
        handle
            .expect_mount_options()
            .with(eq(""), eq("/dev/sda2"), eq("/"))
            .times(1)
            .returning(|_, _, _| Ok(()));
        handle.expect_inspect_os().never();
        let table = mount_filesystems(&mut handle, &options(PartitionSelector::Number(2))).unwrap();
        assert_eq!(table.mounted.len(), 1);
        assert_eq!(table.mounted[0].device, "/dev/sda2");
        assert_eq!(table.mounted[0].fs_type, "ext4");
    }

    #[test]
    fn missing_partition_lists_existing_ones() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_list_partitions()
            .returning(|| Ok(vec!["/dev/sda1".into()]));
        let error =
            mount_filesystems(&mut handle, &options(PartitionSelector::Number(3))).unwrap_err();
        assert!(
            matches!(error, GuestfsError::PartitionNotFound { number: 3, .. }),
            "{error}"
        );
        assert!(error.to_string().contains("/dev/sda1"));
    }

    #[test]
    fn partition_without_filesystem_is_rejected() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_list_partitions()
            .returning(|| Ok(vec!["/dev/sda1".into(), "/dev/sda2".into()]));
        handle
            .expect_vfs_type()
            .with(eq("/dev/sda1"))
            .returning(|_| Ok(String::new()));
        handle.expect_mount_options().never();
        let error =
            mount_filesystems(&mut handle, &options(PartitionSelector::Number(1))).unwrap_err();
        assert!(
            matches!(error, GuestfsError::NoFilesystem { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("/dev/sda1"));
    }

    #[test]
    fn swap_partition_is_rejected() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_list_partitions()
            .returning(|| Ok(vec!["/dev/sda1".into()]));
        handle.expect_vfs_type().returning(|_| Ok("swap".into()));
        let error =
            mount_filesystems(&mut handle, &options(PartitionSelector::Number(1))).unwrap_err();
        assert!(error.to_string().contains("swap"), "{error}");
    }

    #[test]
    fn label_matches_one_filesystem() {
        let mut handle = MockGuestfsHandle::new();
        expect_no_fstab(&mut handle);
        handle.expect_list_filesystems().returning(|| {
            Ok(vec![
                ("/dev/sda1".into(), "ext4".into()),
                ("/dev/sda2".into(), "ext4".into()),
                ("/dev/sda3".into(), "swap".into()),
            ])
        });
        handle.expect_vfs_label().returning(|device| {
            Ok(if device == "/dev/sda2" {
                "root"
            } else {
                "boot"
            }
            .into())
        });
        handle.expect_vfs_type().returning(|_| Ok("ext4".into()));
        handle
            .expect_mount_options()
            .with(eq(""), eq("/dev/sda2"), eq("/"))
            .times(1)
            .returning(|_, _, _| Ok(()));
        let table = mount_filesystems(
            &mut handle,
            &options(PartitionSelector::Label("root".into())),
        )
        .unwrap();
        assert_eq!(table.mounted[0].device, "/dev/sda2");
    }

    #[test]
    fn uuid_match_ignores_case() {
        let mut handle = MockGuestfsHandle::new();
        expect_no_fstab(&mut handle);
        handle
            .expect_list_filesystems()
            .returning(|| Ok(vec![("/dev/sda1".into(), "ext4".into())]));
        handle
            .expect_vfs_uuid()
            .returning(|_| Ok("abcd-0001".into()));
        handle.expect_vfs_type().returning(|_| Ok("ext4".into()));
        handle.expect_mount_options().returning(|_, _, _| Ok(()));
        let selector = PartitionSelector::Uuid("ABCD-0001".into());
        let table = mount_filesystems(&mut handle, &options(selector)).unwrap();
        assert_eq!(table.mounted[0].device, "/dev/sda1");
    }

    #[test]
    fn unknown_label_lists_labels_found() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_list_filesystems()
            .returning(|| Ok(vec![("/dev/sda1".into(), "ext4".into())]));
        handle.expect_vfs_label().returning(|_| Ok("boot".into()));
        let selector = PartitionSelector::Label("root".into());
        let error = mount_filesystems(&mut handle, &options(selector)).unwrap_err();
        assert!(
            matches!(error, GuestfsError::FilesystemNotFound { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("\"boot\""));
    }

    #[test]
    fn duplicate_label_is_ambiguous() {
        let mut handle = MockGuestfsHandle::new();
        handle.expect_list_filesystems().returning(|| {
            Ok(vec![
                ("/dev/sda1".into(), "ext4".into()),
                ("/dev/sda2".into(), "ext4".into()),
            ])
        });
        handle.expect_vfs_label().returning(|_| Ok("root".into()));
        let selector = PartitionSelector::Label("root".into());
        let error = mount_filesystems(&mut handle, &options(selector)).unwrap_err();
        assert!(
            matches!(error, GuestfsError::AmbiguousFilesystem { .. }),
            "{error}"
        );
    }

    #[test]
    fn mount_failure_of_chosen_partition_is_an_error() {
        let mut handle = MockGuestfsHandle::new();
        handle.expect_vfs_type().returning(|_| Ok("ext4".into()));
        handle
            .expect_mount_options()
            .returning(|_, _, _| Err(failure("mount: wrong fs type, bad superblock")));
        let error = mount_filesystems(&mut handle, &options(PartitionSelector::None)).unwrap_err();
        assert!(matches!(error, GuestfsError::Mounting { .. }), "{error}");
        assert!(error.to_string().contains("/dev/sda"));
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert!(source.contains("bad superblock"));
    }

    #[test]
    fn inspection_with_two_roots_is_an_error() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_inspect_os()
            .returning(|| Ok(vec!["/dev/sda2".into(), "/dev/sdb1".into()]));
        handle.expect_mount_options().never();
        let error = mount_filesystems(&mut handle, &options(PartitionSelector::Auto)).unwrap_err();
        assert!(
            matches!(error, GuestfsError::SeveralOperatingSystems { .. }),
            "{error}"
        );
        assert!(error.to_string().contains("/dev/sda2, /dev/sdb1"));
    }

    #[test]
    fn inspection_without_root_is_an_error() {
        let mut handle = MockGuestfsHandle::new();
        handle.expect_inspect_os().returning(|| Ok(Vec::new()));
        let error = mount_filesystems(&mut handle, &options(PartitionSelector::Auto)).unwrap_err();
        assert!(
            matches!(error, GuestfsError::NoOperatingSystem { .. }),
            "{error}"
        );
    }

    #[test]
    fn inspection_mounts_root_before_boot() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_inspect_os()
            .returning(|| Ok(vec!["/dev/sda2".into()]));
        handle.expect_inspect_get_mountpoints().returning(|_| {
            Ok(vec![
                ("/boot/efi".into(), "/dev/sda3".into()),
                ("/boot".into(), "/dev/sda1".into()),
                ("/".into(), "/dev/sda2".into()),
            ])
        });
        handle.expect_vfs_type().returning(|_| Ok("ext4".into()));
        let mut sequence = mockall::Sequence::new();
        for (device, point) in [
            ("/dev/sda2", "/"),
            ("/dev/sda1", "/boot"),
            ("/dev/sda3", "/boot/efi"),
        ] {
            handle
                .expect_mount_options()
                .with(eq(""), eq(device), eq(point))
                .times(1)
                .in_sequence(&mut sequence)
                .returning(|_, _, _| Ok(()));
        }
        let table = mount_filesystems(&mut handle, &options(PartitionSelector::Auto)).unwrap();
        let points: Vec<&str> = table
            .mounted
            .iter()
            .map(|m| m.mount_point.as_str())
            .collect();
        assert_eq!(points, ["/", "/boot", "/boot/efi"]);
        assert!(table.failed.is_empty());
    }

    #[test]
    fn failed_boot_mount_is_recorded_with_children() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_inspect_os()
            .returning(|| Ok(vec!["/dev/sda2".into()]));
        handle.expect_inspect_get_mountpoints().returning(|_| {
            Ok(vec![
                ("/".into(), "/dev/sda2".into()),
                ("/boot".into(), "/dev/sda1".into()),
                ("/boot/efi".into(), "/dev/sda3".into()),
            ])
        });
        handle.expect_vfs_type().returning(|_| Ok("ext4".into()));
        handle
            .expect_mount_options()
            .with(eq(""), eq("/dev/sda2"), eq("/"))
            .returning(|_, _, _| Ok(()));
        handle
            .expect_mount_options()
            .with(eq(""), eq("/dev/sda1"), eq("/boot"))
            .returning(|_, _, _| Err(failure("mount: /boot: No such file or directory")));
        let table = mount_filesystems(&mut handle, &options(PartitionSelector::Auto)).unwrap();
        assert_eq!(table.mounted.len(), 1);
        let failed: Vec<&str> = table.failed.iter().map(GuestPath::as_str).collect();
        assert_eq!(failed, ["/boot", "/boot/efi"]);
    }

    #[test]
    fn failed_root_mount_is_an_error() {
        let mut handle = MockGuestfsHandle::new();
        handle
            .expect_inspect_os()
            .returning(|| Ok(vec!["/dev/sda2".into()]));
        handle
            .expect_inspect_get_mountpoints()
            .returning(|_| Ok(vec![("/".into(), "/dev/sda2".into())]));
        handle.expect_vfs_type().returning(|_| Ok("ext4".into()));
        handle
            .expect_mount_options()
            .returning(|_, _, _| Err(failure("mount: bad superblock")));
        let error = mount_filesystems(&mut handle, &options(PartitionSelector::Auto)).unwrap_err();
        assert!(matches!(error, GuestfsError::Mounting { .. }), "{error}");
    }

    #[test]
    fn deferred_writes_mount_ro_on_writable_drive() {
        let mut handle = MockGuestfsHandle::new();
        expect_no_fstab(&mut handle);
        handle
            .expect_add_drive()
            .withf(|_, _, read_only| !*read_only)
            .times(1)
            .returning(|_, _, _| Ok(()));
        handle.expect_launch().times(1).returning(|| Ok(()));
        handle.expect_vfs_type().returning(|_| Ok("ext4".into()));
        handle
            .expect_mount_options()
            .with(eq("ro"), eq("/dev/sda"), eq("/"))
            .times(1)
            .returning(|_, _, _| Ok(()));
        let mut options = options(PartitionSelector::None);
        options.defer_writes = true;

        add_drive_and_launch(&mut handle, &options).unwrap();
        mount_filesystems(&mut handle, &options).unwrap();
    }

    #[test]
    fn read_only_mounts_with_ro() {
        let mut handle = MockGuestfsHandle::new();
        expect_no_fstab(&mut handle);
        handle.expect_vfs_type().returning(|_| Ok("ext4".into()));
        handle
            .expect_mount_options()
            .with(eq("ro"), eq("/dev/sda"), eq("/"))
            .times(1)
            .returning(|_, _, _| Ok(()));
        let mut options = options(PartitionSelector::None);
        options.read_only = true;
        mount_filesystems(&mut handle, &options).unwrap();
    }

    #[test]
    fn explicit_partition_mounts_boot_from_its_fstab() {
        let mut handle = MockGuestfsHandle::new();
        expect_boot_and_root(&mut handle);
        expect_fstab(
            &mut handle,
            "UUID=b00b0000-0000-4000-8000-000000000002 / ext4 errors=remount-ro 0 1\n\
             UUID=b00b0000-0000-4000-8000-000000000001 /boot ext4 defaults 0 2\n\
             proc /proc proc defaults 0 0\n",
        );
        let mut sequence = mockall::Sequence::new();
        for (device, point) in [("/dev/sda2", "/"), ("/dev/sda1", "/boot")] {
            handle
                .expect_mount_options()
                .with(eq("ro"), eq(device), eq(point))
                .times(1)
                .in_sequence(&mut sequence)
                .returning(|_, _, _| Ok(()));
        }
        handle.expect_inspect_os().never();
        let mut options = options(PartitionSelector::Number(2));
        options.defer_writes = true;

        let table = mount_filesystems(&mut handle, &options).unwrap();

        let mounted: Vec<(&str, &str)> = table
            .mounted
            .iter()
            .map(|m| (m.mount_point.as_str(), m.device.as_str()))
            .collect();
        assert_eq!(mounted, [("/", "/dev/sda2"), ("/boot", "/dev/sda1")]);
        assert!(table.failed.is_empty());
    }

    #[test]
    fn fstab_kernel_name_and_label_find_partitions() {
        let mut handle = MockGuestfsHandle::new();
        expect_boot_and_root(&mut handle);
        handle.expect_vfs_label().returning(|device| {
            Ok(if device == "/dev/sda1" {
                "boot"
            } else {
                "root"
            }
            .into())
        });
        expect_fstab(
            &mut handle,
            "/dev/vda2 / ext4 defaults 0 1\nLABEL=boot /boot ext4 defaults 0 2\n\
             /dev/vdb1 /mnt auto defaults 0 2\n",
        );
        for (device, point) in [
            ("/dev/sda2", "/"),
            ("/dev/sda1", "/boot"),
            ("/dev/sda1", "/mnt"),
        ] {
            handle
                .expect_mount_options()
                .with(eq(""), eq(device), eq(point))
                .times(1)
                .returning(|_, _, _| Ok(()));
        }

        let table = mount_filesystems(&mut handle, &options(PartitionSelector::Number(2))).unwrap();

        let points: Vec<&str> = table
            .mounted
            .iter()
            .map(|m| m.mount_point.as_str())
            .collect();
        assert_eq!(points, ["/", "/boot", "/mnt"]);
    }

    #[test]
    fn unknown_fstab_uuid_rejects_writes_beneath() {
        let mut handle = MockGuestfsHandle::new();
        expect_boot_and_root(&mut handle);
        expect_fstab(
            &mut handle,
            "UUID=b00b0000-0000-4000-8000-000000000002 / ext4 defaults 0 1\n\
             UUID=00000000-0000-4000-8000-00000000dead /boot ext4 defaults 0 2\n",
        );
        handle
            .expect_mount_options()
            .with(eq(""), eq("/dev/sda2"), eq("/"))
            .times(1)
            .returning(|_, _, _| Ok(()));
        handle
            .expect_realpath()
            .with(eq("/boot"))
            .returning(|_| Ok("/boot".into()));
        handle.expect_lstatns().returning(|_| {
            Err(HandleError {
                message: "lstatns: /boot/x: No such file or directory".into(),
                errno: libc::ENOENT,
            })
        });
        handle.expect_write().never();
        handle.expect_shutdown().times(1).returning(|| Ok(()));
        let options = options(PartitionSelector::Number(2));
        let table = mount_filesystems(&mut handle, &options).unwrap();
        let failed: Vec<&str> = table.failed.iter().map(GuestPath::as_str).collect();
        assert_eq!(failed, ["/boot"]);
        let mut fs = crate::GuestfsFs::new(handle, table, WriteAccess::of(&options));

        let error = vfs_core::GuestFs::write_file(
            &mut fs,
            &GuestPath::new("/boot/x").unwrap(),
            &mut &b"x"[..],
            0o644,
        )
        .unwrap_err();

        match error {
            vfs_core::VfsError::NotMounted { mount_point, .. } => {
                assert_eq!(mount_point.as_str(), "/boot")
            }
            other => panic!("expected NotMounted, got {other}"),
        }
    }

    #[test]
    fn fstab_without_entries_beneath_root_lists_nothing() {
        let mut handle = MockGuestfsHandle::new();
        handle.expect_vfs_type().returning(|_| Ok("ext4".into()));
        expect_fstab(&mut handle, "/dev/sda / ext4 defaults 0 1\n");
        handle
            .expect_mount_options()
            .times(1)
            .returning(|_, _, _| Ok(()));
        handle.expect_list_filesystems().never();

        let table = mount_filesystems(&mut handle, &options(PartitionSelector::None)).unwrap();

        assert_eq!(table.mounted.len(), 1);
    }

    #[test]
    fn kernel_names_give_partition_numbers() {
        assert_eq!(kernel_partition_number("/dev/sda1"), Some(1));
        assert_eq!(kernel_partition_number("/dev/vdb12"), Some(12));
        assert_eq!(kernel_partition_number("/dev/xvda2"), Some(2));
        assert_eq!(kernel_partition_number("/dev/vda"), None);
        assert_eq!(kernel_partition_number("/dev/sd1"), None);
        assert_eq!(kernel_partition_number("/dev/nvme0n1p1"), None);
        assert_eq!(kernel_partition_number("/dev/sda0"), None);
    }
}
