//! The directory trees that become root and `/boot` filesystems: a Debian bookworm
//! minbase tree from `debootstrap` (cached), a tiny hand-made root tree, and a small
//! `/boot` tree with a fake kernel. Each image stages its own copy, because its
//! `/etc/fstab` names its own filesystem UUIDs.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use super::disk::{FilesystemSpec, Ownership};
use super::{command, Result, TestFilesystem, TestImageError};

/// The suite, variant and archive that `debootstrap` installs from.
const DEBIAN_SUITE: &str = "bookworm";
const DEBIAN_MIRROR: &str = "http://deb.debian.org/debian";

/// The group ID of `shadow` on Debian, which owns `/etc/shadow` and `/etc/gshadow`.
const SHADOW_GID: u32 = 42;

/// The root tree of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Tree {
    /// `debootstrap --variant=minbase bookworm`.
    Debian,
    /// The few files in [`TINY_ROOT`].
    Tiny,
}

/// One entry of a hand-made tree, owned by root and the group `gid`.
struct Entry {
    guest_path: &'static str,
    mode: u32,
    gid: u32,
    /// The file contents, or `None` for a directory.
    contents: Option<&'static str>,
}

const fn dir(guest_path: &'static str, mode: u32) -> Entry {
    Entry {
        guest_path,
        mode,
        gid: 0,
        contents: None,
    }
}

const fn file(guest_path: &'static str, mode: u32, gid: u32, contents: &'static str) -> Entry {
    Entry {
        guest_path,
        mode,
        gid,
        contents: Some(contents),
    }
}

/// The tiny root tree: the account files, `/root`, and enough of the usual directories
/// and release files for a tool to recognise a Debian root.
const TINY_ROOT: &[Entry] = &[
    dir("/bin", 0o755),
    dir("/boot", 0o755),
    dir("/etc", 0o755),
    dir("/home", 0o755),
    dir("/root", 0o700),
    dir("/sbin", 0o755),
    dir("/tmp", 0o1777),
    dir("/usr", 0o755),
    dir("/usr/bin", 0o755),
    dir("/usr/sbin", 0o755),
    dir("/var", 0o755),
    file(
        "/etc/passwd",
        0o644,
        0,
        "root:x:0:0:root:/root:/bin/bash\n\
         daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n\
         bin:x:2:2:bin:/bin:/usr/sbin/nologin\n\
         sys:x:3:3:sys:/dev:/usr/sbin/nologin\n\
         nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
    ),
    file(
        "/etc/group",
        0o644,
        0,
        "root:x:0:\ndaemon:x:1:\nbin:x:2:\nsys:x:3:\nshadow:x:42:\nnogroup:x:65534:\n",
    ),
    file(
        "/etc/shadow",
        0o640,
        SHADOW_GID,
        "root:*:19800:0:99999:7:::\n\
         daemon:*:19800:0:99999:7:::\n\
         bin:*:19800:0:99999:7:::\n\
         sys:*:19800:0:99999:7:::\n\
         nobody:*:19800:0:99999:7:::\n",
    ),
    file(
        "/etc/gshadow",
        0o640,
        SHADOW_GID,
        "root:*::\ndaemon:*::\nbin:*::\nsys:*::\nshadow:*::\nnogroup:*::\n",
    ),
    file(
        "/etc/os-release",
        0o644,
        0,
        "PRETTY_NAME=\"Debian GNU/Linux 12 (bookworm)\"\n\
         NAME=\"Debian GNU/Linux\"\n\
         VERSION_ID=\"12\"\n\
         VERSION_CODENAME=bookworm\n\
         ID=debian\n",
    ),
    file("/etc/debian_version", 0o644, 0, "12.10\n"),
    file("/etc/hostname", 0o644, 0, "tiny\n"),
];

/// The `/boot` tree of the MBR images. The kernel and initrd are placeholders: nothing
/// boots these images.
const BOOT: &[Entry] = &[
    dir("/grub", 0o755),
    file(
        "/vmlinuz-6.1.0-test-amd64",
        0o644,
        0,
        "placeholder kernel: test image, not bootable\n",
    ),
    file(
        "/initrd.img-6.1.0-test-amd64",
        0o644,
        0,
        "placeholder initrd: test image, not bootable\n",
    ),
    file("/config-6.1.0-test-amd64", 0o644, 0, "CONFIG_EXT4_FS=y\n"),
    file(
        "/grub/grub.cfg",
        0o444,
        0,
        "# placeholder: test image, not bootable\n",
    ),
];

/// A tree staged for one filesystem. Drop removes it, and [`StagedTree::remove`] does
/// the same but reports errors.
#[derive(Debug)]
pub(super) struct StagedTree {
    path: PathBuf,
    ownership: Vec<Ownership>,
    removed: bool,
}

impl StagedTree {
    /// Returns the spec that makes filesystem `target` from this tree.
    pub(super) fn filesystem(&self, target: &TestFilesystem) -> FilesystemSpec {
        FilesystemSpec {
            tree: self.path.clone(),
            label: target.label,
            uuid: target.uuid,
            ownership: self.ownership.clone(),
        }
    }

    /// Removes the staged tree.
    pub(super) fn remove(mut self) -> Result<()> {
        self.removed = true;
        super::remove_stale(&self.path)
    }
}

impl Drop for StagedTree {
    fn drop(&mut self) {
        if !self.removed {
            if let Err(err) = super::remove_stale(&self.path) {
                tracing::warn!(error = %err, "removing a staged tree failed");
            }
        }
    }
}

impl Tree {
    /// Stages this tree beside `partial` with `fstab` as its `/etc/fstab`.
    pub(super) fn stage(self, partial: &Path, fstab: &str) -> Result<StagedTree> {
        let path = super::with_suffix(partial, ".root");
        super::remove_stale(&path)?;

        match self {
            Self::Debian => {
                let source = debian_tree()?;
                command::run(command::new("cp").arg("-al").arg(&source).arg(&path))?;
                let staged = StagedTree {
                    path,
                    ownership: Vec::new(),
                    removed: false,
                };
                // The copy shares inodes with the cached tree, so the old fstab is
                // unlinked before the new one is written, never written through.
                let fstab_path = staged.path.join("etc/fstab");
                match fs::remove_file(&fstab_path) {
                    Ok(()) => {}
                    Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                    Err(source) => {
                        return Err(TestImageError::FileOperation {
                            action: "removing",
                            path: fstab_path,
                            source,
                        })
                    }
                }
                write_entry(&staged.path, &file("/etc/fstab", 0o644, 0, ""), fstab)?;
                Ok(staged)
            }
            Self::Tiny => {
                let mut staged = stage_entries(path, TINY_ROOT)?;
                write_entry(&staged.path, &file("/etc/fstab", 0o644, 0, ""), fstab)?;
                staged.ownership.push(root_owned("/etc/fstab", 0));
                Ok(staged)
            }
        }
    }
}

/// Stages the `/boot` tree beside `partial`.
pub(super) fn stage_boot(partial: &Path) -> Result<StagedTree> {
    let path = super::with_suffix(partial, ".boot");
    super::remove_stale(&path)?;
    stage_entries(path, BOOT)
}

/// Writes `entries` under a new directory `path`. The owners are applied to the
/// filesystem afterwards, so this works without root.
fn stage_entries(path: PathBuf, entries: &[Entry]) -> Result<StagedTree> {
    super::create_dir_all(&path)?;
    let mut staged = StagedTree {
        path,
        ownership: vec![root_owned("/", 0)],
        removed: false,
    };
    set_mode(&staged.path, 0o755)?;

    for entry in entries {
        write_entry(&staged.path, entry, entry.contents.unwrap_or_default())?;
        staged
            .ownership
            .push(root_owned(entry.guest_path, entry.gid));
    }
    Ok(staged)
}

fn write_entry(root: &Path, entry: &Entry, contents: &str) -> Result<()> {
    let host_path = root.join(entry.guest_path.trim_start_matches('/'));
    if entry.contents.is_some() {
        super::write_file(&host_path, contents.as_bytes())?;
    } else {
        super::create_dir_all(&host_path)?;
    }
    set_mode(&host_path, entry.mode)
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|source| {
        TestImageError::FileOperation {
            action: "setting permissions of",
            path: path.to_owned(),
            source,
        }
    })
}

fn root_owned(guest_path: &str, gid: u32) -> Ownership {
    Ownership {
        guest_path: guest_path.to_owned(),
        uid: 0,
        gid,
    }
}

/// Returns the cached Debian minbase tree, running `debootstrap` when it is missing.
fn debian_tree() -> Result<PathBuf> {
    let path = super::image_dir().join(format!("{DEBIAN_SUITE}-minbase"));
    if !nix::unistd::geteuid().is_root() {
        return Err(TestImageError::NeedsRoot {
            image: path.display().to_string(),
        });
    }

    super::cached(&path, |partial| {
        command::run(
            command::new("debootstrap")
                .arg("--variant=minbase")
                .arg(DEBIAN_SUITE)
                .arg(partial)
                .arg(DEBIAN_MIRROR),
        )?;
        remove_downloaded_packages(partial)
    })?;
    Ok(path)
}

/// Removes the `.deb` files `debootstrap` leaves in the apt cache, which no test reads.
fn remove_downloaded_packages(tree: &Path) -> Result<()> {
    let archives = tree.join("var/cache/apt/archives");
    let entries = match fs::read_dir(&archives) {
        Ok(entries) => entries,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(TestImageError::FileOperation {
                action: "listing",
                path: archives,
                source,
            })
        }
    };
    for entry in entries {
        let entry = entry.map_err(|source| TestImageError::FileOperation {
            action: "listing",
            path: archives.clone(),
            source,
        })?;
        let path = entry.path();
        if path.extension().is_some_and(|extension| extension == "deb") {
            fs::remove_file(&path).map_err(|source| TestImageError::FileOperation {
                action: "removing",
                path: path.clone(),
                source,
            })?;
        }
    }
    Ok(())
}
