//! The backend's probe: whether this host can mount an image, and if not, what to do.

use std::path::{Path, PathBuf};

use vfs_core::image::{DiskFormat, ResolvedImage};
use vfs_core::registry::Availability;

/// Says whether `localmount` can open `image` on this host (any raw image when `None`),
/// naming what is missing otherwise. Attaches nothing.
pub fn probe(image: Option<&ResolvedImage>) -> Availability {
    let host = HostFacts {
        euid: nix::unistd::geteuid().as_raw(),
        has_loop_control: Path::new("/dev/loop-control").exists(),
        has_kernel_nbd: Path::new("/sys/block/nbd0").exists(),
        has_fuse: Path::new("/dev/fuse").exists(),
        qemu_nbd: find_program("qemu-nbd"),
        nbdfuse: find_program("nbdfuse"),
        fusermount: find_program("fusermount3"),
    };
    host.check(image.map(|image| image.format))
}

/// The host state the probe checks, gathered first so that the rule can be tested on its
/// own.
#[derive(Debug, Clone)]
struct HostFacts {
    euid: u32,
    has_loop_control: bool,
    has_kernel_nbd: bool,
    has_fuse: bool,
    qemu_nbd: Option<PathBuf>,
    nbdfuse: Option<PathBuf>,
    fusermount: Option<PathBuf>,
}

impl HostFacts {
    fn check(&self, format: Option<DiskFormat>) -> Availability {
        let unavailable = |reason: &str| Availability::Unavailable {
            reason: reason.to_owned(),
        };
        if self.euid != 0 {
            return unavailable(
                "needs root for loop devices and mounts (effective uid is not 0); run as root or use the guestfs backend",
            );
        }
        if !self.has_loop_control {
            return unavailable(
                "no /dev/loop-control, so no loop devices; load the loop module (modprobe loop)",
            );
        }
        match format {
            None | Some(DiskFormat::Raw) => Availability::Available,
            Some(format) => self.check_nbd(format),
        }
    }

    fn check_nbd(&self, format: DiskFormat) -> Availability {
        if self.qemu_nbd.is_none() {
            return Availability::Unavailable {
                reason: format!(
                    "{format} images need qemu-nbd, which is not on PATH; install qemu-utils"
                ),
            };
        }
        let fuse_ready = self.has_fuse && self.nbdfuse.is_some() && self.fusermount.is_some();
        if self.has_kernel_nbd || fuse_ready {
            return Availability::Available;
        }
        let mut missing = Vec::new();
        if self.nbdfuse.is_none() {
            missing.push("nbdfuse is not on PATH (install nbdfuse)");
        }
        if self.fusermount.is_none() {
            missing.push("fusermount3 is not on PATH (install fuse3)");
        }
        if !self.has_fuse {
            missing.push("/dev/fuse is missing (modprobe fuse)");
        }
        Availability::Unavailable {
            reason: format!(
                "{format} images need the kernel NBD client (/sys/block/nbd0 is missing; modprobe nbd) or nbdfuse: {}",
                missing.join(", ")
            ),
        }
    }
}

/// Finds an executable file named `name` in the directories of `PATH`.
fn find_program(name: &str) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;

    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|candidate| {
            candidate
                .metadata()
                .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capable_host() -> HostFacts {
        HostFacts {
            euid: 0,
            has_loop_control: true,
            has_kernel_nbd: false,
            has_fuse: true,
            qemu_nbd: Some(PathBuf::from("/usr/bin/qemu-nbd")),
            nbdfuse: Some(PathBuf::from("/usr/bin/nbdfuse")),
            fusermount: Some(PathBuf::from("/usr/bin/fusermount3")),
        }
    }

    fn reason(availability: Availability) -> String {
        match availability {
            Availability::Available => panic!("expected the backend to be unavailable"),
            Availability::Unavailable { reason } => reason,
        }
    }

    #[test]
    fn capable_host_opens_raw_and_qcow2() {
        let host = capable_host();

        assert!(host.check(Some(DiskFormat::Raw)).is_available());
        assert!(host.check(Some(DiskFormat::Qcow2)).is_available());
        assert!(host.check(None).is_available());
    }

    #[test]
    fn non_root_is_told_to_run_as_root() {
        let host = HostFacts {
            euid: 1000,
            ..capable_host()
        };

        assert!(reason(host.check(None)).contains("needs root"));
    }

    #[test]
    fn missing_loop_control_is_named() {
        let host = HostFacts {
            has_loop_control: false,
            ..capable_host()
        };

        assert!(reason(host.check(Some(DiskFormat::Raw))).contains("/dev/loop-control"));
    }

    #[test]
    fn qcow2_without_qemu_nbd_names_package() {
        let host = HostFacts {
            qemu_nbd: None,
            ..capable_host()
        };

        assert!(host.check(Some(DiskFormat::Raw)).is_available());
        assert!(reason(host.check(Some(DiskFormat::Qcow2))).contains("qemu-utils"));
    }

    #[test]
    fn qcow2_without_nbd_or_fuse_names_both() {
        let host = HostFacts {
            has_fuse: false,
            nbdfuse: None,
            ..capable_host()
        };

        let text = reason(host.check(Some(DiskFormat::Qcow2)));

        assert!(text.contains("/sys/block/nbd0"), "{text}");
        assert!(text.contains("install nbdfuse"), "{text}");
        assert!(text.contains("/dev/fuse"), "{text}");
    }

    #[test]
    fn qcow2_with_kernel_nbd_needs_no_fuse() {
        let host = HostFacts {
            has_kernel_nbd: true,
            has_fuse: false,
            nbdfuse: None,
            fusermount: None,
            ..capable_host()
        };

        assert!(host.check(Some(DiskFormat::Qcow2)).is_available());
    }
}
