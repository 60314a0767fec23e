//! Removal of the empty private directories that a killed run leaves in the temporary
//! directory.
//!
//! A process killed with `SIGKILL` never runs its `Drop` code. Its mounts and helper
//! processes go with it (a private mount namespace, `PR_SET_PDEATHSIG`), but the
//! directories it created for them stay. Each such directory carries its creator's pid in
//! its name, `guest-inject-{mnt,nbd,fuse}-<pid>-<random>`, so a later run can tell which
//! ones belong to processes that no longer exist.

use std::fs;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

/// Name prefixes of the private directories that carry their creator's pid: mount
/// directories from [`crate::Mount::new`], and the NBD socket and FUSE directories that
/// the `mount-nbd` crate creates.
const PRIVATE_DIR_PREFIXES: [&str; 3] = [
    "guest-inject-mnt-",
    "guest-inject-nbd-",
    "guest-inject-fuse-",
];

/// How deep below a candidate directory the check looks: the FUSE directory contains one
/// mount point directory, and nothing nests deeper.
const MAX_DEPTH: usize = 2;

/// Returns the name prefix for a private directory of `kind` (`mnt`, `nbd` or `fuse`)
/// created by this process, ready for [`tempfile::Builder::prefix`].
pub fn private_dir_prefix(kind: &str) -> String {
    format!("guest-inject-{kind}-{}-", std::process::id())
}

/// Removes the private directories in `tmp` whose creating process no longer exists, and
/// returns how many it removed.
///
/// A directory is removed only when its name is `guest-inject-{mnt,nbd,fuse}-<pid>-*`,
/// `/proc/<pid>` does not exist, and it is a real directory on the same filesystem as
/// `tmp` that contains, down to two levels, nothing but such directories and unix
/// sockets. Regular files, symlinks and anything else keep the whole directory. Removal
/// never recurses blindly: sockets are unlinked and directories removed with `rmdir(2)`,
/// which also fails on a mount point. Each removal is logged at info, and every failure
/// is logged at debug and skipped.
///
/// NOTE: a bind mount of a directory from the same filesystem has the same `st_dev`, so
/// the check misses it. `rmdir(2)` still refuses to remove it (`EBUSY`), but a socket
/// inside such a mount would be unlinked.
pub fn remove_stale_dirs(tmp: &Path) -> usize {
    let tmp_device = match fs::metadata(tmp) {
        Ok(metadata) => metadata.dev(),
        Err(err) => {
            tracing::debug!(dir = %tmp.display(), error = %err, "reading the temporary directory failed");
            return 0;
        }
    };
    let entries = match fs::read_dir(tmp) {
        Ok(entries) => entries,
        Err(err) => {
            tracing::debug!(dir = %tmp.display(), error = %err, "listing the temporary directory failed");
            return 0;
        }
    };

    let mut removed = 0;
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(pid) = name.to_str().and_then(creator_pid) else {
            continue;
        };
        if Path::new("/proc").join(pid.to_string()).exists() {
            continue;
        }

        let path = entry.path();
        if !contains_only_leftovers(&path, tmp_device, 0) {
            tracing::debug!(dir = %path.display(), "keeping a stale directory that contains more than empty directories and sockets");
            continue;
        }
        match remove_leftovers(&path) {
            Ok(()) => {
                tracing::info!(dir = %path.display(), pid, "removed a directory left by a killed run");
                removed += 1;
            }
            Err(err) => {
                tracing::debug!(dir = %path.display(), error = %err, "removing a stale directory failed");
            }
        }
    }
    removed
}

/// Returns the pid in a private directory's name, or `None` for any other name.
fn creator_pid(name: &str) -> Option<u32> {
    let rest = PRIVATE_DIR_PREFIXES
        .iter()
        .find_map(|prefix| name.strip_prefix(prefix))?;
    let (digits, _random) = rest.split_once('-')?;
    if digits.is_empty() || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|pid| *pid > 0)
}

/// Returns whether `dir` is a directory on `device` that contains, down to
/// [`MAX_DEPTH`] levels, only such directories and unix sockets.
fn contains_only_leftovers(dir: &Path, device: u64, depth: usize) -> bool {
    let Ok(metadata) = fs::symlink_metadata(dir) else {
        return false;
    };
    if !metadata.is_dir() || metadata.dev() != device {
        return false;
    }
    let Ok(entries) = fs::read_dir(dir) else {
        return false;
    };

    for entry in entries {
        let Ok(entry) = entry else {
            return false;
        };
        let Ok(file_type) = entry.file_type() else {
            return false;
        };
        let allowed = if file_type.is_socket() {
            true
        } else if file_type.is_dir() && depth < MAX_DEPTH {
            contains_only_leftovers(&entry.path(), device, depth + 1)
        } else {
            false
        };
        if !allowed {
            return false;
        }
    }
    true
}

/// Unlinks the sockets and removes the directories under `dir`, then `dir` itself,
/// checking each entry's type again just before removing it.
fn remove_leftovers(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        let file_type = fs::symlink_metadata(entry.path())?.file_type();
        if file_type.is_socket() {
            fs::remove_file(entry.path())?;
        } else if file_type.is_dir() {
            remove_leftovers(&entry.path())?;
        } else {
            return Err(io::Error::other(format!(
                "{} appeared and is neither a socket nor a directory",
                entry.path().display()
            )));
        }
    }
    fs::remove_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    use std::os::unix::net::UnixListener;

    /// Returns a pid with no process behind it, searching down from the default
    /// `pid_max` of 32768 so that a pid the kernel hands out soon is unlikely.
    fn unused_pid() -> u32 {
        (2..32_768)
            .rev()
            .find(|pid| !Path::new("/proc").join(pid.to_string()).exists())
            .expect("every pid below 32768 is in use")
    }

    #[test]
    fn creator_pid_reads_each_prefix() {
        assert_eq!(creator_pid("guest-inject-mnt-42-abc"), Some(42));
        assert_eq!(creator_pid("guest-inject-nbd-7-x"), Some(7));
        assert_eq!(creator_pid("guest-inject-fuse-123-"), Some(123));
    }

    #[test]
    fn creator_pid_rejects_other_names() {
        assert_eq!(creator_pid("guest-inject-mnt-abc"), None);
        assert_eq!(creator_pid("guest-inject-txn-42-abc"), None);
        assert_eq!(creator_pid("guest-inject-mnt-42"), None);
        assert_eq!(creator_pid("guest-inject-mnt-+42-a"), None);
        assert_eq!(creator_pid("guest-inject-mnt-0-a"), None);
    }

    #[test]
    fn private_dir_prefix_contains_own_pid() {
        let prefix = private_dir_prefix("mnt");

        assert_eq!(
            creator_pid(&format!("{prefix}abc")),
            Some(std::process::id())
        );
    }

    #[test]
    fn stale_dirs_removes_only_dead_empty_ones() {
        let tmp = tempfile::tempdir().unwrap();
        let dead = unused_pid();
        let live = std::process::id();

        // A killed FUSE run: the directory and its empty mount point directory.
        let stale_fuse = tmp.path().join(format!("guest-inject-fuse-{dead}-a1"));
        fs::create_dir_all(stale_fuse.join("fuse")).unwrap();
        // A killed NBD run: the directory and the server's socket.
        let stale_nbd = tmp.path().join(format!("guest-inject-nbd-{dead}-b2"));
        fs::create_dir(&stale_nbd).unwrap();
        let _listener = UnixListener::bind(stale_nbd.join("nbd.sock")).unwrap();
        let live_dir = tmp.path().join(format!("guest-inject-mnt-{live}-c3"));
        fs::create_dir(&live_dir).unwrap();
        let with_file = tmp.path().join(format!("guest-inject-mnt-{dead}-d4"));
        fs::create_dir(&with_file).unwrap();
        fs::write(with_file.join("data"), b"keep").unwrap();
        let too_deep = tmp.path().join(format!("guest-inject-mnt-{dead}-e5"));
        fs::create_dir_all(too_deep.join("a/b/c")).unwrap();
        let other_name = tmp.path().join(format!("guest-inject-txn-{dead}-f6"));
        fs::create_dir(&other_name).unwrap();

        let removed = remove_stale_dirs(tmp.path());

        assert_eq!(removed, 2);
        assert!(!stale_fuse.exists(), "the stale FUSE directory stayed");
        assert!(!stale_nbd.exists(), "the stale NBD directory stayed");
        assert!(live_dir.exists(), "a live process's directory was removed");
        assert!(
            with_file.join("data").exists(),
            "a regular file was removed"
        );
        assert!(too_deep.join("a/b/c").exists(), "a deep tree was removed");
        assert!(
            other_name.exists(),
            "a directory of another name was removed"
        );
    }

    #[test]
    fn stale_dirs_keeps_symlink_to_dir() {
        let tmp = tempfile::tempdir().unwrap();
        let target = tempfile::tempdir().unwrap();
        let link = tmp
            .path()
            .join(format!("guest-inject-mnt-{}-a1", unused_pid()));
        std::os::unix::fs::symlink(target.path(), &link).unwrap();

        let removed = remove_stale_dirs(tmp.path());

        assert_eq!(removed, 0);
        assert!(
            fs::symlink_metadata(&link).is_ok(),
            "the symlink was removed"
        );
        assert!(target.path().exists(), "the symlink's target was removed");
    }

    #[test]
    fn stale_dirs_in_missing_dir_returns_zero() {
        assert_eq!(
            remove_stale_dirs(Path::new("/nonexistent/guest-inject-tmp")),
            0
        );
    }
}
