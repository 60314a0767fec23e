//! [`LocalMount`]: a disk image opened by mounting its filesystems on the host.
//!
//! A raw image gets a loop device at the chosen volume's offset and size. Any other format
//! is first served by `qemu-nbd` and attached as a kernel NBD device or an `nbdfuse` file,
//! and the loop device goes on that at the volume's offset. The volume comes from the
//! partition table and filesystem probe of `vfs_core::layout`. With `auto`, every volume
//! that holds a filesystem is mounted read-only and looked at, the single one with
//! `/etc/fstab` or `/etc/os-release` becomes the root. Whether chosen by `auto` or
//! explicitly, the local filesystems that the root's `/etc/fstab` lists are mounted beneath
//! it.
//!
//! Every file operation then goes through a [`RootedTree`] on the mounted root.
//!
//! With [`OpenOptions::defer_writes`], the loop devices are attached writable but every
//! filesystem is mounted read-only, and [`GuestFs::enable_writes`] remounts them read-write.
//! A mount point from `/etc/fstab` whose directory is missing is created and mounted only
//! then, because creating it is a write.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};

use mount_loop::{AttachOptions, LoopDevice, LoopError, Mount, MountError};
use mount_nbd::{AttachMethod, NbdAttachment, NbdError, NbdOptions};
use nix::fcntl::OFlag;
use nix::sys::stat::Mode;
use vfs_core::fstab::{find_volume_for_spec, local_mounts, parse_fstab};
use vfs_core::image::{DiskFormat, PartitionSelector};
use vfs_core::layout::{list_volumes, select_volume, LayoutError, Volume};
use vfs_core::registry::OpenOptions;
use vfs_core::{GuestFs, GuestPath, Metadata, MountInfo, VfsError};

use crate::failpoint;
use crate::guest_mount::{GuestMount, GuestMountError};
use crate::tree::RootedTree;
use crate::BACKEND_NAME;
use vfs_core::imagelock::{ImageLock, LockError};

/// Files whose presence marks a filesystem as an operating system's root.
const OS_ROOT_MARKERS: [&str; 2] = ["/etc/fstab", "/etc/os-release"];

/// The mode of a mount point directory created for a filesystem from `/etc/fstab`, as
/// `systemd` creates missing mount points.
const MOUNT_POINT_MODE: u32 = 0o755;

/// Errors from opening and closing an image with [`LocalMount`].
#[derive(Debug, thiserror::Error)]
pub enum LocalMountError {
    /// The process is not root, which loop devices and mounts need.
    #[error("opening {image} with localmount needs root (effective uid {euid}); run as root or use the guestfs backend")]
    NotRoot { image: PathBuf, euid: u32 },
    /// A backend setting is unknown or has an invalid value.
    #[error("invalid localmount setting {setting:?}: {reason}")]
    InvalidSetting { setting: String, reason: String },
    /// Another process uses the image, or its locks could not be checked.
    #[error(transparent)]
    Locking(#[from] LockError),
    /// `qemu-nbd` rejected the image because another process holds its locks.
    #[error("image {image} is in use by another process, so qemu-nbd rejected it; stop the virtual machine or the program that has the image open, then try again: {detail}")]
    InUseByQemu { image: PathBuf, detail: String },
    /// Serving or attaching the image over NBD failed.
    #[error("attaching image {image} through qemu-nbd failed")]
    AttachingNbd {
        image: PathBuf,
        #[source]
        source: Box<NbdError>,
    },
    /// The disk could not be opened to read its partition table.
    #[error("opening disk {disk} of image {image} failed")]
    OpeningDisk {
        image: PathBuf,
        disk: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The partition table could not be read, or the requested volume was not found.
    #[error("choosing the filesystem to open in image {image} failed")]
    ReadingLayout {
        image: PathBuf,
        #[source]
        source: Box<LayoutError>,
    },
    /// No volume of the disk holds an operating system root.
    #[error("partition auto found no operating system root (a filesystem with /etc/fstab or /etc/os-release) in image {image}; looked at: {inspected}; choose a partition explicitly")]
    NoOsRoot { image: PathBuf, inspected: String },
    /// Several volumes hold an operating system root.
    #[error("partition auto found several operating system roots in image {image}: {roots}; choose one explicitly")]
    SeveralOsRoots { image: PathBuf, roots: String },
    /// A loop device could not be attached.
    #[error("attaching {volume} of image {image} to a loop device failed")]
    AttachingLoop {
        image: PathBuf,
        volume: String,
        #[source]
        source: Box<LoopError>,
    },
    /// A filesystem could not be mounted on the host.
    #[error("mounting {volume} of image {image} failed")]
    Mounting {
        image: PathBuf,
        volume: String,
        #[source]
        source: Box<MountError>,
    },
    /// A filesystem could not be mounted on, or unmounted from, a guest directory.
    #[error("mounting {volume} of image {image} beneath the root failed")]
    MountingGuestDir {
        image: PathBuf,
        volume: String,
        #[source]
        source: Box<GuestMountError>,
    },
    /// A guest file could not be read or a guest directory created while setting up.
    #[error("preparing the guest tree of image {image} failed")]
    PreparingTree {
        image: PathBuf,
        #[source]
        source: VfsError,
    },
    /// Flushing, unmounting or detaching failed while closing.
    #[error("closing image {image} failed: {step}")]
    Closing {
        image: PathBuf,
        step: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// A disk image opened by mounting its filesystems on the host.
///
/// Open it with [`open`]. Dropping it releases everything in the order [`LocalMount::close`]
/// uses, logging failures.
#[derive(Debug)]
pub struct LocalMount {
    image: PathBuf,
    read_only: bool,
    /// True while the filesystems are mounted read-only for an open with
    /// [`OpenOptions::defer_writes`], until [`GuestFs::enable_writes`].
    writes_deferred: bool,
    /// The guest tree; `None` only while closing.
    tree: Option<RootedTree>,
    /// Filesystems and placeholders mounted beneath the root, parents first.
    guest_mounts: Vec<GuestMount>,
    /// The root filesystem, on a private host directory.
    root_mount: Option<Mount>,
    /// Loop devices, each with the index of its volume in the disk's volume list.
    loops: Vec<(usize, LoopDevice)>,
    /// The NBD attachment of a non-raw image.
    nbd: Option<NbdAttachment>,
    /// Mount points from `/etc/fstab` whose filesystem is not mounted.
    unmounted: Vec<GuestPath>,
    /// Filesystems from `/etc/fstab` whose mount point directory is missing, to be mounted
    /// by [`GuestFs::enable_writes`], parents first.
    pending: Vec<PendingMount>,
    /// qemu's locks on a raw image.
    lock: Option<ImageLock>,
    /// True once everything has been released.
    closed: bool,
}

/// A filesystem whose mount point directory must be created before it is mounted.
#[derive(Debug, Clone)]
struct PendingMount {
    mount_point: GuestPath,
    /// The loop device of the volume, already attached.
    device: PathBuf,
    fs_type: String,
    /// The volume, described for messages.
    description: String,
}

/// The disk whose volumes are mounted: the raw image itself, or the NBD export of another
/// format.
#[derive(Debug, Clone)]
struct Disk {
    path: PathBuf,
    size: u64,
}

/// Backend settings, from `KEY=VALUE` strings.
#[derive(Debug, Clone, Copy, Default)]
struct Settings {
    /// The way a non-raw image reaches the host: `nbd=auto|kernel|fuse`.
    nbd_method: AttachMethod,
}

/// Opens the image that `options` names, mounting its filesystems on the host.
///
/// Fails when the process is not root, when another process (such as a running qemu) has
/// the image open, or when the requested volume has no filesystem that can be mounted.
/// Settings: `nbd=auto|kernel|fuse` chooses how a non-raw image is attached.
pub fn open(options: &OpenOptions) -> Result<LocalMount, LocalMountError> {
    let image = options.image.path.clone();
    let span = tracing::info_span!(
        "localmount_open",
        image = %image.display(),
        format = %options.image.format,
        partition = %options.image.partition,
        read_only = options.read_only,
        defer_writes = options.defer_writes,
    );
    let _entered = span.enter();

    let euid = nix::unistd::geteuid().as_raw();
    if euid != 0 {
        return Err(LocalMountError::NotRoot { image, euid });
    }
    let settings = parse_settings(&options.backend_settings)?;

    let mut fs = LocalMount {
        image: image.clone(),
        read_only: options.read_only,
        writes_deferred: options.defer_writes && !options.read_only,
        tree: None,
        guest_mounts: Vec::new(),
        root_mount: None,
        loops: Vec::new(),
        nbd: None,
        unmounted: Vec::new(),
        pending: Vec::new(),
        lock: None,
        closed: false,
    };
    // From here on, an error drops `fs`, which releases whatever was set up.
    let disk = fs.attach_disk(options.image.format, settings)?;
    let volumes = read_volumes(&image, &disk)?;

    let root_index = match &options.image.partition {
        PartitionSelector::Auto => fs.find_os_root(&disk, &volumes)?,
        selector => {
            let chosen = select_volume(&volumes, selector).map_err(|source| {
                LocalMountError::ReadingLayout {
                    image: image.clone(),
                    source: Box::new(source),
                }
            })?;
            volumes
                .iter()
                .position(|volume| std::ptr::eq(volume, chosen))
                .expect("the chosen volume is one of the list")
        }
    };
    fs.mount_root(&disk, &volumes, root_index)?;
    fs.mount_fstab_entries(&disk, &volumes, root_index)?;

    tracing::info!(mounts = fs.guest_mounts.len() + 1, "image opened");
    Ok(fs)
}

fn parse_settings(settings: &[String]) -> Result<Settings, LocalMountError> {
    let mut parsed = Settings::default();
    for setting in settings {
        let invalid = |reason: &str| LocalMountError::InvalidSetting {
            setting: setting.clone(),
            reason: reason.to_owned(),
        };
        let (key, value) = setting
            .split_once('=')
            .ok_or_else(|| invalid("expected KEY=VALUE"))?;
        match key {
            "nbd" => {
                parsed.nbd_method = match value {
                    "auto" => AttachMethod::Auto,
                    "kernel" => AttachMethod::Kernel,
                    "fuse" => AttachMethod::Fuse,
                    _ => return Err(invalid("nbd takes auto, kernel or fuse")),
                }
            }
            _ => return Err(invalid("unknown key; the only localmount setting is nbd")),
        }
    }
    Ok(parsed)
}

/// Lists the disk's volumes from its partition table and filesystem probes.
fn read_volumes(image: &Path, disk: &Disk) -> Result<Vec<Volume>, LocalMountError> {
    let opening = |source| LocalMountError::OpeningDisk {
        image: image.to_owned(),
        disk: disk.path.clone(),
        source,
    };
    let mut file = File::open(&disk.path).map_err(opening)?;
    let volumes =
        list_volumes(&mut file, disk.size).map_err(|source| LocalMountError::ReadingLayout {
            image: image.to_owned(),
            source: Box::new(source),
        })?;
    tracing::debug!(count = volumes.len(), "read the disk's volumes");
    Ok(volumes)
}

/// Describes a volume for messages: `partition 2 (ext4, label root)`.
fn describe(volume: &Volume) -> String {
    match &volume.fs {
        Some(fs) => match &fs.label {
            Some(label) => format!("{} ({}, label {label})", volume.describe(), fs.fs_type),
            None => format!("{} ({})", volume.describe(), fs.fs_type),
        },
        None => format!("{} (no recognised filesystem)", volume.describe()),
    }
}

/// Returns the filesystem type to mount a volume as, or `None` when it holds none that
/// can be mounted.
fn mountable_type(volume: &Volume) -> Option<&str> {
    let fs_type = volume.fs.as_ref()?.fs_type.as_str();
    (fs_type != "swap").then_some(fs_type)
}

impl LocalMount {
    /// Returns the image this filesystem was opened from.
    pub fn image(&self) -> &Path {
        &self.image
    }

    /// Returns the private host directory the root filesystem is mounted on, for
    /// diagnostics. Everything beneath it belongs to the guest: reach guest files through
    /// the [`GuestFs`] methods, which keep guest symlinks inside the guest.
    pub fn host_root_dir(&self) -> Option<&Path> {
        self.root_mount.as_ref().map(Mount::path)
    }

    /// Fails like a failed lock when the `localmount::lock` failpoint is set.
    fn check_lock_failpoint(&self) -> Result<(), LockError> {
        failpoint::check("localmount::lock").map_err(|source| LockError::Locking {
            image: self.image.clone(),
            source,
        })
    }

    /// Locks a raw image, or serves and attaches any other format, and returns the disk
    /// whose volumes are mounted.
    fn attach_disk(
        &mut self,
        format: DiskFormat,
        settings: Settings,
    ) -> Result<Disk, LocalMountError> {
        match format {
            DiskFormat::Raw => {
                self.check_lock_failpoint()?;
                self.lock = Some(ImageLock::acquire(&self.image, self.read_only)?);
                let size =
                    disk_size(&self.image).map_err(|source| LocalMountError::OpeningDisk {
                        image: self.image.clone(),
                        disk: self.image.clone(),
                        source,
                    })?;
                Ok(Disk {
                    path: self.image.clone(),
                    size,
                })
            }
            format => {
                // qemu-nbd takes the locks itself; checking first gives a clear error
                // before any helper starts.
                self.check_lock_failpoint()?;
                ImageLock::check(&self.image, self.read_only)?;
                let options = NbdOptions {
                    read_only: self.read_only,
                    method: settings.nbd_method,
                    ..NbdOptions::new(format)
                };
                let attachment = NbdAttachment::attach(&self.image, &options)
                    .map_err(|source| nbd_error(&self.image, source))?;
                let disk = Disk {
                    path: attachment.path().to_owned(),
                    size: attachment.size(),
                };
                self.nbd = Some(attachment);
                Ok(disk)
            }
        }
    }

    /// Returns the loop device of a volume, attaching it when it has none yet.
    fn loop_for(
        &mut self,
        disk: &Disk,
        volumes: &[Volume],
        index: usize,
    ) -> Result<&LoopDevice, LocalMountError> {
        if let Some(position) = self
            .loops
            .iter()
            .position(|(attached, _)| *attached == index)
        {
            return Ok(&self.loops[position].1);
        }
        let volume = &volumes[index];
        let device = attach_volume(&self.image, disk, volume, self.read_only)?;
        self.loops.push((index, device));
        Ok(&self.loops.last().expect("just pushed").1)
    }

    /// Mounts volume `index` as the root and opens the guest tree on it.
    fn mount_root(
        &mut self,
        disk: &Disk,
        volumes: &[Volume],
        index: usize,
    ) -> Result<(), LocalMountError> {
        let volume = &volumes[index];
        let description = describe(volume);
        let fs_type = mountable_type(volume)
            .ok_or_else(|| LocalMountError::ReadingLayout {
                image: self.image.clone(),
                source: Box::new(LayoutError::NoFilesystem {
                    number: volume.partition.as_ref().map_or(0, |p| p.number),
                    type_id: volume
                        .partition
                        .as_ref()
                        .map_or_else(|| "whole disk".to_owned(), |p| p.type_id.clone()),
                }),
            })?
            .to_owned();

        let read_only = self.mounts_read_only();
        let device = self.loop_for(disk, volumes, index)?.path().to_owned();
        let mount = Mount::new(&device, &fs_type, read_only).map_err(|source| {
            LocalMountError::Mounting {
                image: self.image.clone(),
                volume: description.clone(),
                source: Box::new(source),
            }
        })?;
        let root = open_mount_root(mount.path()).map_err(|source| LocalMountError::Mounting {
            image: self.image.clone(),
            volume: description.clone(),
            source: Box::new(MountError::OpeningMountTarget {
                target: mount.path().to_owned(),
                source,
            }),
        })?;
        self.root_mount = Some(mount);

        let tree = RootedTree::from_root_fd(root, description, fs_type).map_err(|source| {
            LocalMountError::PreparingTree {
                image: self.image.clone(),
                source: VfsError::from_io("opening the root of", &GuestPath::root(), source),
            }
        })?;
        self.tree = Some(tree);
        Ok(())
    }

    /// Mounts every volume read-only in turn and returns the index of the single one that
    /// holds an operating system root.
    fn find_os_root(&mut self, disk: &Disk, volumes: &[Volume]) -> Result<usize, LocalMountError> {
        let span = tracing::info_span!("find_os_root", volumes = volumes.len());
        let _entered = span.enter();

        let mut roots = Vec::new();
        let mut inspected = Vec::new();
        for (index, volume) in volumes.iter().enumerate() {
            let description = describe(volume);
            let Some(fs_type) = mountable_type(volume) else {
                inspected.push(description);
                continue;
            };
            match inspect_volume(&self.image, disk, volume, fs_type) {
                Ok(true) => {
                    tracing::info!(volume = %description, "found an operating system root");
                    roots.push(index);
                    inspected.push(format!("{description}: operating system root"));
                }
                Ok(false) => {
                    inspected.push(format!("{description}: no /etc/fstab or /etc/os-release"))
                }
                Err(err) => {
                    tracing::warn!(volume = %description, error = %error_chain(&err), "inspecting a volume failed");
                    inspected.push(format!("{description}: {}", error_chain(&err)));
                }
            }
        }

        match roots.as_slice() {
            [root] => Ok(*root),
            [] => Err(LocalMountError::NoOsRoot {
                image: self.image.clone(),
                inspected: if inspected.is_empty() {
                    "no volumes".to_owned()
                } else {
                    inspected.join("; ")
                },
            }),
            several => Err(LocalMountError::SeveralOsRoots {
                image: self.image.clone(),
                roots: several
                    .iter()
                    .map(|index| describe(&volumes[*index]))
                    .collect::<Vec<_>>()
                    .join(", "),
            }),
        }
    }

    /// Mounts the local filesystems that the root's `/etc/fstab` lists, parents first, and
    /// covers the mount points of those not found on this disk.
    ///
    /// This runs for `auto` and for an explicitly chosen filesystem alike, and does nothing
    /// when the root has no `/etc/fstab`. It also does nothing when that fstab lists the
    /// root volume at a mount point other than `/`, because the chosen filesystem is then
    /// one of the guest's children, not its root.
    fn mount_fstab_entries(
        &mut self,
        disk: &Disk,
        volumes: &[Volume],
        root_index: usize,
    ) -> Result<(), LocalMountError> {
        let fstab_path = GuestPath::new("/etc/fstab").expect("valid path");
        let contents = match self.tree_mut().read_file(&fstab_path) {
            Ok(contents) => contents,
            Err(VfsError::NotFound { .. }) | Err(VfsError::NotADirectory { .. }) => return Ok(()),
            Err(source) => {
                return Err(LocalMountError::PreparingTree {
                    image: self.image.clone(),
                    source,
                })
            }
        };
        let entries = parse_fstab(&contents);
        let root_listed_elsewhere = local_mounts(&entries).iter().any(|entry| {
            GuestPath::new(&entry.mount_point).is_ok_and(|point| !point.is_root())
                && find_volume_for_spec(&entry.spec, volumes) == Some(root_index)
        });
        if root_listed_elsewhere {
            tracing::warn!(
                "/etc/fstab lists the chosen filesystem at a mount point other than /, so nothing is mounted beneath it"
            );
            return Ok(());
        }

        for entry in local_mounts(&entries) {
            let Ok(mount_point) = GuestPath::new(&entry.mount_point) else {
                tracing::warn!(mount_point = %entry.mount_point, "skipping an fstab entry with an invalid mount point");
                continue;
            };
            if mount_point.is_root() {
                continue;
            }
            let span = tracing::info_span!("fstab_entry", spec = %entry.spec, %mount_point);
            let _entered = span.enter();

            if let Some(parent) = self
                .unmounted
                .iter()
                .find(|unmounted| mount_point.starts_with(unmounted))
            {
                tracing::warn!(parent = %parent, "skipping a mount point beneath one whose filesystem is not mounted");
                continue;
            }

            let found = find_volume_for_spec(&entry.spec, volumes)
                .filter(|index| mountable_type(&volumes[*index]).is_some());
            match found {
                Some(index) => self.mount_beneath(disk, volumes, index, &mount_point)?,
                None => {
                    tracing::warn!(
                        spec = %entry.spec,
                        "the filesystem for this mount point is not on this disk; writes beneath it will fail"
                    );
                    self.cover_unmounted(&mount_point)?;
                }
            }
        }
        Ok(())
    }

    /// Mounts volume `index` on the guest directory `mount_point`, creating the directory
    /// when it is missing and the image is writable. While writes are deferred, a missing
    /// directory makes the mount wait for [`GuestFs::enable_writes`].
    fn mount_beneath(
        &mut self,
        disk: &Disk,
        volumes: &[Volume],
        index: usize,
        mount_point: &GuestPath,
    ) -> Result<(), LocalMountError> {
        let volume = &volumes[index];
        let description = describe(volume);
        let fs_type = mountable_type(volume)
            .expect("checked by the caller")
            .to_owned();

        let exists = self.tree_mut().exists(mount_point).map_err(|source| {
            LocalMountError::PreparingTree {
                image: self.image.clone(),
                source,
            }
        })?;
        if !exists && self.read_only {
            tracing::warn!(
                "the mount point directory is missing, so the filesystem stays unmounted"
            );
            return self.cover_unmounted(mount_point);
        }

        let device = self.loop_for(disk, volumes, index)?.path().to_owned();
        let pending = PendingMount {
            mount_point: mount_point.clone(),
            device,
            fs_type,
            description,
        };
        if !exists && self.writes_deferred {
            // NOTE: until writes are enabled the tree has no filesystem at the mount point,
            // so a plan made meanwhile checks free space beneath it on the parent's
            // filesystem.
            tracing::info!("the mount point directory is missing, so the filesystem is mounted once writes are enabled");
            self.pending.push(pending);
            return Ok(());
        }
        if !exists {
            self.create_mount_point(mount_point).map_err(|source| {
                LocalMountError::PreparingTree {
                    image: self.image.clone(),
                    source,
                }
            })?;
        }
        self.mount_device_at(&pending)
    }

    fn create_mount_point(&mut self, mount_point: &GuestPath) -> Result<(), VfsError> {
        self.tree_mut()
            .create_dir_all(mount_point, MOUNT_POINT_MODE)
    }

    /// Mounts an attached device on its existing guest directory and records the mount.
    fn mount_device_at(&mut self, mount: &PendingMount) -> Result<(), LocalMountError> {
        let read_only = self.mounts_read_only();
        let tree = self.tree.as_ref().expect("the root is mounted");
        let mounted = GuestMount::mount_device(
            tree,
            &mount.mount_point,
            &mount.device,
            &mount.fs_type,
            read_only,
        )
        .map_err(|source| LocalMountError::MountingGuestDir {
            image: self.image.clone(),
            volume: mount.description.clone(),
            source: Box::new(source),
        })?;
        self.guest_mounts.push(mounted);

        let recorded = self.tree_mut().record_mount(
            &mount.mount_point,
            mount.description.clone(),
            mount.fs_type.clone(),
        );
        recorded.map_err(|source| LocalMountError::PreparingTree {
            image: self.image.clone(),
            source,
        })
    }

    /// Returns true when filesystems are mounted read-only: for a read-only open, and while
    /// writes are deferred.
    fn mounts_read_only(&self) -> bool {
        self.read_only || self.writes_deferred
    }

    /// Remounts the root and then every filesystem beneath it read-write, parents first,
    /// and mounts the filesystems whose mount point directory was missing.
    ///
    /// A failure leaves writes deferred, so a second call tries again; filesystems that were
    /// already remounted stay writable.
    fn remount_read_write(&mut self) -> Result<(), VfsError> {
        let span = tracing::info_span!("enable_writes", image = %self.image.display());
        let _entered = span.enter();
        let remounting = |mount_point: &GuestPath, source: io::Error| VfsError::Io {
            op: "remounting read-write",
            path: mount_point.clone(),
            source,
        };

        let root = self.root_mount.as_mut().expect("the root is mounted");
        root.remount_read_write()
            .map_err(|err| remounting(&GuestPath::root(), io::Error::other(err)))?;
        for mount in &mut self.guest_mounts {
            mount
                .remount_read_write()
                .map_err(|err| remounting(mount.mount_point(), io::Error::other(err)))?;
        }

        // Cleared first, so that the pending filesystems are mounted read-write.
        self.writes_deferred = false;
        while let Some(pending) = self.pending.first().cloned() {
            let mounted = self
                .create_mount_point(&pending.mount_point)
                .and_then(|()| {
                    self.mount_device_at(&pending).map_err(|err| VfsError::Io {
                        op: "mounting",
                        path: pending.mount_point.clone(),
                        source: io::Error::other(err),
                    })
                });
            if let Err(err) = mounted {
                self.writes_deferred = true;
                return Err(err);
            }
            self.pending.remove(0);
        }
        tracing::info!("filesystems remounted read-write");
        Ok(())
    }

    /// Makes writes beneath `mount_point` fail: covers the directory with an empty
    /// read-only placeholder, or when it is missing, records its path.
    fn cover_unmounted(&mut self, mount_point: &GuestPath) -> Result<(), LocalMountError> {
        let image = self.image.clone();
        let preparing = |source| LocalMountError::PreparingTree {
            image: image.clone(),
            source,
        };
        self.unmounted.push(mount_point.clone());
        let tree = self.tree.as_mut().expect("the root is mounted");
        let is_dir = match tree.metadata(mount_point) {
            Ok(metadata) => metadata.kind == vfs_core::FileKind::Directory,
            Err(VfsError::NotFound { .. }) | Err(VfsError::NotMounted { .. }) => false,
            Err(err) => return Err(preparing(err)),
        };
        if !is_dir {
            return tree.record_unmounted(mount_point, false).map_err(preparing);
        }

        let placeholder = GuestMount::placeholder(tree, mount_point).map_err(|source| {
            LocalMountError::MountingGuestDir {
                image: image.clone(),
                volume: "a placeholder".to_owned(),
                source: Box::new(source),
            }
        })?;
        self.guest_mounts.push(placeholder);
        let tree = self.tree.as_mut().expect("the root is mounted");
        tree.record_unmounted(mount_point, true).map_err(preparing)
    }

    fn tree_mut(&mut self) -> &mut RootedTree {
        self.tree.as_mut().expect("the tree is open until closed")
    }

    /// Releases everything: flushes and closes the tree, unmounts the guest's filesystems
    /// children first, detaches the loop devices, stops the NBD helpers and releases the
    /// image locks. Every step runs; the first failure is returned.
    fn tear_down(&mut self) -> Result<(), LocalMountError> {
        if self.closed {
            return Ok(());
        }
        self.closed = true;
        let span = tracing::info_span!("localmount_close", image = %self.image.display());
        let _entered = span.enter();
        let mut first_error: Option<LocalMountError> = None;
        let mut record =
            |step: &str, result: Result<(), Box<dyn std::error::Error + Send + Sync>>| {
                if let Err(source) = result {
                    tracing::error!(step, error = %source, "closing step failed");
                    if first_error.is_none() {
                        first_error = Some(LocalMountError::Closing {
                            image: self.image.clone(),
                            step: step.to_owned(),
                            source,
                        });
                    }
                }
            };

        if let Some(tree) = self.tree.take() {
            if !self.mounts_read_only() {
                record(
                    "flushing the guest filesystems",
                    tree.sync_all().map_err(Into::into),
                );
            }
            // The tree's descriptors keep the mounts busy, so it goes first.
            drop(tree);
        }
        while let Some(mount) = self.guest_mounts.pop() {
            let step = format!("unmounting {}", mount.mount_point());
            record(&step, mount.close().map_err(Into::into));
        }
        if let Some(mount) = self.root_mount.take() {
            record(
                "unmounting the root filesystem",
                mount.close().map_err(Into::into),
            );
        }
        while let Some((_, device)) = self.loops.pop() {
            let step = format!("detaching {}", device.path().display());
            record(&step, device.close().map_err(Into::into));
        }
        if let Some(nbd) = self.nbd.take() {
            record("stopping the NBD helpers", nbd.close().map_err(Into::into));
        }
        if let Some(lock) = self.lock.take() {
            lock.close();
        }

        match first_error {
            Some(err) => Err(err),
            None => {
                tracing::info!("image closed");
                Ok(())
            }
        }
    }
}

impl Drop for LocalMount {
    fn drop(&mut self) {
        if let Err(err) = self.tear_down() {
            tracing::warn!(error = %error_chain(&err), "releasing a dropped localmount image");
        }
    }
}

/// Mounts a volume read-only on a private directory and returns whether it holds an
/// operating system root; everything is released before returning.
fn inspect_volume(
    image: &Path,
    disk: &Disk,
    volume: &Volume,
    fs_type: &str,
) -> Result<bool, LocalMountError> {
    let description = describe(volume);
    let device = attach_volume(image, disk, volume, true)?;
    let mount =
        Mount::new(device.path(), fs_type, true).map_err(|source| LocalMountError::Mounting {
            image: image.to_owned(),
            volume: description.clone(),
            source: Box::new(source),
        })?;

    let found = {
        let root = open_mount_root(mount.path()).map_err(|source| LocalMountError::Mounting {
            image: image.to_owned(),
            volume: description.clone(),
            source: Box::new(MountError::OpeningMountTarget {
                target: mount.path().to_owned(),
                source,
            }),
        })?;
        let mut tree = RootedTree::from_root_fd(root, description.clone(), fs_type.to_owned())
            .map_err(|source| LocalMountError::PreparingTree {
                image: image.to_owned(),
                source: VfsError::from_io("opening the root of", &GuestPath::root(), source),
            })?;
        has_os_marker(&mut tree).map_err(|source| LocalMountError::PreparingTree {
            image: image.to_owned(),
            source,
        })?
    };

    mount.close().map_err(|source| LocalMountError::Mounting {
        image: image.to_owned(),
        volume: description.clone(),
        source: Box::new(source),
    })?;
    device
        .close()
        .map_err(|source| LocalMountError::AttachingLoop {
            image: image.to_owned(),
            volume: description,
            source: Box::new(source),
        })?;
    Ok(found)
}

/// Returns true when the tree has one of [`OS_ROOT_MARKERS`], as a file or a symlink
/// (`/etc/os-release` is usually a link into `/usr`, which may be a filesystem of its own).
fn has_os_marker(tree: &mut RootedTree) -> Result<bool, VfsError> {
    for marker in OS_ROOT_MARKERS {
        let path = GuestPath::new(marker).expect("valid path");
        match tree.symlink_metadata(&path) {
            Ok(_) => return Ok(true),
            Err(VfsError::NotFound { .. }) | Err(VfsError::NotADirectory { .. }) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(false)
}

fn attach_volume(
    image: &Path,
    disk: &Disk,
    volume: &Volume,
    read_only: bool,
) -> Result<LoopDevice, LocalMountError> {
    let options = AttachOptions {
        offset: volume.offset,
        size_limit: Some(volume.size),
        read_only,
    };
    LoopDevice::attach(&disk.path, &options).map_err(|source| LocalMountError::AttachingLoop {
        image: image.to_owned(),
        volume: describe(volume),
        source: Box::new(source),
    })
}

/// Opens the root of a host mount as an `O_PATH` directory descriptor.
fn open_mount_root(path: &Path) -> io::Result<OwnedFd> {
    Ok(nix::fcntl::open(
        path,
        OFlag::O_PATH | OFlag::O_DIRECTORY | OFlag::O_NOFOLLOW | OFlag::O_CLOEXEC,
        Mode::empty(),
    )?)
}

/// Returns the size of a file or block device in bytes.
fn disk_size(path: &Path) -> io::Result<u64> {
    let mut file = File::open(path)?;
    file.seek(SeekFrom::End(0))
}

/// Maps an NBD failure, telling apart `qemu-nbd` rejecting an image that another process
/// holds locked.
fn nbd_error(image: &Path, source: NbdError) -> LocalMountError {
    if let NbdError::ExitedEarly { stderr, .. } = &source {
        // qemu's lock errors read `Failed to get "write" lock` or `Failed to get shared
        // "write" lock`.
        if stderr.contains("Failed to get") && stderr.contains("lock") {
            return LocalMountError::InUseByQemu {
                image: image.to_owned(),
                detail: stderr.trim().to_owned(),
            };
        }
    }
    LocalMountError::AttachingNbd {
        image: image.to_owned(),
        source: Box::new(source),
    }
}

/// Formats an error with its sources, for logs and the inspection summary.
fn error_chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    text
}

impl GuestFs for LocalMount {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn mounts(&self) -> Vec<MountInfo> {
        self.tree
            .as_ref()
            .map(RootedTree::mounts)
            .unwrap_or_default()
    }

    fn fs_type(&mut self, path: &GuestPath) -> vfs_core::Result<String> {
        self.tree_mut().fs_type(path)
    }

    fn exists(&mut self, path: &GuestPath) -> vfs_core::Result<bool> {
        self.tree_mut().exists(path)
    }

    fn metadata(&mut self, path: &GuestPath) -> vfs_core::Result<Metadata> {
        self.tree_mut().metadata(path)
    }

    fn symlink_metadata(&mut self, path: &GuestPath) -> vfs_core::Result<Metadata> {
        self.tree_mut().symlink_metadata(path)
    }

    fn read_file(&mut self, path: &GuestPath) -> vfs_core::Result<Vec<u8>> {
        self.tree_mut().read_file(path)
    }

    fn create_dir_all(&mut self, path: &GuestPath, mode: u32) -> vfs_core::Result<()> {
        self.tree_mut().create_dir_all(path, mode)
    }

    fn write_file(
        &mut self,
        path: &GuestPath,
        contents: &mut dyn Read,
        create_mode: u32,
    ) -> vfs_core::Result<u64> {
        failpoint::check("localmount::write")
            .map_err(|source| VfsError::from_io("writing", path, source))?;
        self.tree_mut().write_file(path, contents, create_mode)
    }

    fn append_file(
        &mut self,
        path: &GuestPath,
        data: &[u8],
        create_mode: u32,
    ) -> vfs_core::Result<()> {
        failpoint::check("localmount::write")
            .map_err(|source| VfsError::from_io("appending to", path, source))?;
        self.tree_mut().append_file(path, data, create_mode)
    }

    fn set_mode(&mut self, path: &GuestPath, mode: u32) -> vfs_core::Result<()> {
        self.tree_mut().set_mode(path, mode)
    }

    fn set_owner_ids(
        &mut self,
        path: &GuestPath,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> vfs_core::Result<()> {
        self.tree_mut().set_owner_ids(path, uid, gid)
    }

    fn symlink(&mut self, target: &str, link: &GuestPath) -> vfs_core::Result<()> {
        self.tree_mut().symlink(target, link)
    }

    fn remove_file(&mut self, path: &GuestPath) -> vfs_core::Result<()> {
        self.tree_mut().remove_file(path)
    }

    fn xattrs(&mut self, path: &GuestPath) -> vfs_core::Result<Vec<(String, Vec<u8>)>> {
        self.tree_mut().xattrs(path)
    }

    fn set_xattr(&mut self, path: &GuestPath, name: &str, value: &[u8]) -> vfs_core::Result<()> {
        self.tree_mut().set_xattr(path, name, value)
    }

    fn free_space(&mut self, path: &GuestPath) -> vfs_core::Result<u64> {
        self.tree_mut().free_space(path)
    }

    /// Remounts every filesystem read-write after an open with
    /// [`OpenOptions::defer_writes`].
    ///
    /// NOTE: a filesystem mounted read-only from a writable loop device can change the image
    /// without this call: ext4 replays a dirty journal at mount, and XFS writes its log at
    /// unmount even when mounted read-only.
    fn enable_writes(&mut self) -> vfs_core::Result<()> {
        if self.read_only {
            return Err(VfsError::ReadOnly {
                path: GuestPath::root(),
            });
        }
        if !self.writes_deferred {
            return Ok(());
        }
        self.remount_read_write()
    }

    fn sync(&mut self) -> vfs_core::Result<()> {
        self.tree_mut().sync_all()
    }

    fn close(mut self: Box<Self>) -> vfs_core::Result<()> {
        self.tear_down().map_err(|err| VfsError::Closing {
            backend: BACKEND_NAME,
            source: Box::new(err),
        })
    }
}
