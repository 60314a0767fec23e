//! `cargo xtask setup`: installs the Debian packages the tests need, when missing.
//!
//! The machines this project runs on have `qemu-utils` from bookworm-backports, which
//! conflicts with bookworm's own `qemu-system-x86`. So the qemu system packages come from
//! bookworm-backports first, and libguestfs, which depends on them, after. A machine that
//! already has every package is left alone, after one `dpkg-query`.

use std::fs;
use std::path::Path;
use std::process::Command;

use crate::{run_command, TaskError};

/// The qemu packages, installed from bookworm-backports to match its `qemu-utils`.
const BACKPORTS_PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-common", "qemu-block-extra"];

/// The other packages. `libnbd-bin` is the bookworm package that ships `nbdfuse`;
/// `linux-image-amd64` gives supermin the kernel it builds the libguestfs appliance from;
/// `time` gives `cargo xtask bench` the `/usr/bin/time` it measures peak memory with.
const PACKAGES: &[&str] = &[
    "libguestfs-tools",
    "libguestfs-dev",
    "linux-image-amd64",
    "libnbd-bin",
    "fuse3",
    "fdisk",
    "debootstrap",
    "e2fsprogs",
    "xfsprogs",
    "btrfs-progs",
    "qemu-utils",
    "time",
];

const BACKPORTS_SUITE: &str = "bookworm-backports";
const APT_SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const APT_SOURCES_LIST: &str = "/etc/apt/sources.list";
const BACKPORTS_LIST: &str = "/etc/apt/sources.list.d/bookworm-backports.list";

/// Installs whatever is missing from [`BACKPORTS_PACKAGES`] and [`PACKAGES`].
pub(crate) fn run() -> Result<(), TaskError> {
    let missing_backports = missing_packages(BACKPORTS_PACKAGES)?;
    let missing = missing_packages(PACKAGES)?;
    if missing_backports.is_empty() && missing.is_empty() {
        eprintln!("setup: every package is installed");
        return Ok(());
    }

    let all_missing: Vec<&str> = missing_backports.iter().chain(&missing).copied().collect();
    if !is_root() {
        return Err(TaskError::NeedsRoot {
            packages: all_missing.join(" "),
        });
    }
    eprintln!("setup: installing {}", all_missing.join(" "));

    ensure_backports_source()?;
    run_command(apt_get().arg("update"))?;
    if !missing_backports.is_empty() {
        run_command(
            apt_get()
                .args(["install", "-y", "-t", BACKPORTS_SUITE])
                .args(&missing_backports),
        )?;
    }
    if !missing.is_empty() {
        run_command(apt_get().args(["install", "-y"]).args(&missing))?;
    }
    Ok(())
}

fn apt_get() -> Command {
    let mut command = Command::new("apt-get");
    command.env("DEBIAN_FRONTEND", "noninteractive");
    command
}

/// Returns the packages of `packages` that dpkg does not list as installed.
fn missing_packages<'a>(packages: &[&'a str]) -> Result<Vec<&'a str>, TaskError> {
    // dpkg-query exits with status 1 when it has no record of a package, which here only
    // means the package is missing, so the status is not checked.
    let output = Command::new("dpkg-query")
        .args([
            "--show",
            "--showformat",
            "${Package} ${db:Status-Abbrev}\\n",
        ])
        .args(packages)
        .output()
        .map_err(|source| TaskError::StartingCommand {
            command: "dpkg-query".to_owned(),
            source,
        })?;
    let listing = String::from_utf8_lossy(&output.stdout);
    Ok(packages
        .iter()
        .copied()
        .filter(|package| !is_installed(&listing, package))
        .collect())
}

/// Returns whether the `dpkg-query` listing marks `package` installed (`ii`).
fn is_installed(listing: &str, package: &str) -> bool {
    listing.lines().any(|line| {
        let mut words = line.split_whitespace();
        words.next() == Some(package) && words.next() == Some("ii")
    })
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|output| output.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// Adds a bookworm-backports line for the Debian archive apt already uses, unless some
/// source already names the suite.
fn ensure_backports_source() -> Result<(), TaskError> {
    let sources = read_apt_sources()?;
    if sources
        .iter()
        .any(|(_, text)| active_lines(text).any(|line| line.contains(BACKPORTS_SUITE)))
    {
        return Ok(());
    }

    let uri = sources
        .iter()
        .find_map(|(path, text)| archive_uri(path, text))
        .ok_or_else(|| TaskError::NoDebianArchive {
            searched: format!("{APT_SOURCES_LIST} and {APT_SOURCES_DIR}"),
        })?;
    let line = format!("deb {uri} {BACKPORTS_SUITE} main\n");
    eprintln!("setup: writing {BACKPORTS_LIST}: {}", line.trim_end());
    fs::write(BACKPORTS_LIST, line).map_err(|source| TaskError::AptSources {
        action: "writing",
        path: BACKPORTS_LIST.to_owned(),
        source,
    })
}

/// Returns the path and text of every apt source file.
fn read_apt_sources() -> Result<Vec<(String, String)>, TaskError> {
    let mut paths = vec![APT_SOURCES_LIST.to_owned()];
    let entries = fs::read_dir(APT_SOURCES_DIR).map_err(|source| TaskError::AptSources {
        action: "listing",
        path: APT_SOURCES_DIR.to_owned(),
        source,
    })?;
    let mut names: Vec<String> = entries
        .filter_map(|entry| entry.ok())
        .map(|entry| entry.path().display().to_string())
        .filter(|path| path.ends_with(".list") || path.ends_with(".sources"))
        .collect();
    names.sort();
    paths.extend(names);

    let mut sources = Vec::new();
    for path in paths {
        match fs::read_to_string(&path) {
            Ok(text) => sources.push((path, text)),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(TaskError::AptSources {
                    action: "reading",
                    path,
                    source,
                })
            }
        }
    }
    Ok(sources)
}

fn active_lines(text: &str) -> impl Iterator<Item = &str> {
    text.lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with('#'))
}

/// Returns the archive URI that a source file uses for the bookworm suite: the `URIs:`
/// of a deb822 stanza (`.sources`) or the URI of a one-line `deb` entry (`.list`).
fn archive_uri(path: &str, text: &str) -> Option<String> {
    if Path::new(path)
        .extension()
        .is_some_and(|ext| ext == "sources")
    {
        return text.split("\n\n").find_map(|stanza| {
            let field = |name: &str| {
                active_lines(stanza)
                    .find_map(|line| line.strip_prefix(name))
                    .map(str::trim)
            };
            let has_bookworm = field("Suites:")?
                .split_whitespace()
                .any(|suite| suite == "bookworm");
            let is_deb = field("Types:")?
                .split_whitespace()
                .any(|kind| kind == "deb");
            if !(has_bookworm && is_deb) {
                return None;
            }
            field("URIs:")?.split_whitespace().next().map(str::to_owned)
        });
    }

    active_lines(text).find_map(|line| {
        let mut words = line
            .split_whitespace()
            .filter(|word| !word.starts_with('['));
        if words.next() != Some("deb") {
            return None;
        }
        let uri = words.next()?;
        (words.next() == Some("bookworm")).then(|| uri.to_owned())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_uri_from_deb822_stanza() {
        let text = "Types: deb\n# a snapshot\nURIs: http://mirror.example/debian\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n\n\
                    Types: deb\nURIs: http://security.example/debian-security\n\
                    Suites: bookworm-security\nComponents: main\n";

        let uri = archive_uri("/etc/apt/sources.list.d/debian.sources", text);

        assert_eq!(uri.as_deref(), Some("http://mirror.example/debian"));
    }

    #[test]
    fn archive_uri_from_one_line_entry() {
        let text = "# deb http://old.example/debian bookworm main\n\
                    deb [arch=amd64] http://mirror.example/debian bookworm main contrib\n";

        let uri = archive_uri("/etc/apt/sources.list", text);

        assert_eq!(uri.as_deref(), Some("http://mirror.example/debian"));
    }

    #[test]
    fn archive_uri_skips_other_suites() {
        let text = "deb http://security.example/debian-security bookworm-security main\n";

        assert_eq!(archive_uri("/etc/apt/sources.list", text), None);
    }

    #[test]
    fn installed_needs_ii_status() {
        let listing = "fdisk ii \nnbdfuse un \n";

        assert!(is_installed(listing, "fdisk"));
        assert!(!is_installed(listing, "nbdfuse"));
        assert!(!is_installed(listing, "debootstrap"));
    }
}
