//! Tests of `RootedTree` on a temporary host directory: the trait's rules, and guests whose
//! symlinks point at host files.
//!
//! The guest's symlinks here name real host paths outside the tree (another temporary
//! directory), so a tree that followed them on the host would change those files and the
//! tests would see it.

use std::fs;
use std::os::unix::fs::{symlink, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use vfs_core::{FileKind, GuestFs, GuestPath, VfsError};
use vfs_localmount::RootedTree;

/// A tree on a temporary directory that holds a minimal guest: `/etc/passwd` and
/// `/etc/group` with root, and `/root`.
struct TempTree {
    tree: RootedTree,
    root: PathBuf,
    _dir: tempfile::TempDir,
}

impl TempTree {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let root = dir.path().join("guest");
        fs::create_dir_all(root.join("etc")).unwrap();
        fs::create_dir_all(root.join("root")).unwrap();
        fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n").unwrap();
        fs::write(root.join("etc/group"), "root:x:0:\n").unwrap();
        let tree = RootedTree::open(&root).expect("open the tree");
        Self {
            tree,
            root,
            _dir: dir,
        }
    }

    /// The host path of a guest path, for checking results from outside the tree.
    fn host(&self, guest: &str) -> PathBuf {
        self.root.join(guest.trim_start_matches('/'))
    }
}

/// A host directory outside every tree, with one file whose contents must never change.
struct HostDir {
    dir: tempfile::TempDir,
}

const HOST_SECRET: &[u8] = b"host file, must stay unchanged\n";

impl HostDir {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        fs::write(dir.path().join("secret"), HOST_SECRET).unwrap();
        fs::set_permissions(dir.path().join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
        Self { dir }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn secret(&self) -> PathBuf {
        self.dir.path().join("secret")
    }

    /// The names in the directory, sorted.
    fn names(&self) -> Vec<String> {
        let mut names: Vec<String> = fs::read_dir(self.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name().into_string().unwrap())
            .collect();
        names.sort();
        names
    }

    fn assert_untouched(&self) {
        assert_eq!(
            self.names(),
            ["secret"],
            "names in {}",
            self.path().display()
        );
        assert_eq!(fs::read(self.secret()).unwrap(), HOST_SECRET);
        let meta = fs::metadata(self.secret()).unwrap();
        assert_eq!(meta.mode() & 0o7777, 0o600);
        assert_eq!(meta.uid(), 0);
        assert!(xattr::list(&self.secret()).is_empty());
    }
}

/// Reads extended attribute names of a host file, for checking the host from outside.
mod xattr {
    use std::path::Path;
    use std::process::Command;

    pub fn list(path: &Path) -> Vec<String> {
        let output = Command::new("getfattr")
            .args(["--absolute-names", "--match=-", "--dump"])
            .arg(path)
            .output()
            .expect("run getfattr");
        String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter(|line| line.contains('='))
            .map(|line| line.split('=').next().unwrap().to_owned())
            .collect()
    }
}

fn guest(path: &str) -> GuestPath {
    GuestPath::new(path).unwrap()
}

fn write(tree: &mut RootedTree, path: &str, contents: &[u8]) -> Result<u64, VfsError> {
    tree.write_file(&guest(path), &mut &contents[..], 0o600)
}

// ----- the trait's rules on a plain tree -----

#[test]
fn write_new_file_is_root_owned_with_create_mode() {
    let mut t = TempTree::new();

    let written = t
        .tree
        .write_file(&guest("/root/new"), &mut &b"data"[..], 0o664)
        .unwrap();

    assert_eq!(written, 4);
    let meta = fs::metadata(t.host("/root/new")).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o664);
    assert_eq!(meta.uid(), 0);
    assert_eq!(meta.gid(), 0);
    assert_eq!(fs::read(t.host("/root/new")).unwrap(), b"data");
}

#[test]
fn write_replace_keeps_setuid_owner_and_xattrs() {
    let mut t = TempTree::new();
    let file = t.host("/root/tool");
    fs::write(&file, b"old").unwrap();
    std::os::unix::fs::chown(&file, Some(1234), Some(5678)).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o4750)).unwrap();
    let path = guest("/root/tool");
    t.tree.set_xattr(&path, "user.kept", b"1").unwrap();
    t.tree.set_xattr(&path, "trusted.kept", b"2").unwrap();
    t.tree
        .set_xattr(&path, "security.selinux", b"system_u:object_r:bin_t:s0\0")
        .unwrap();

    write(&mut t.tree, "/root/tool", b"new").unwrap();

    let meta = fs::metadata(&file).unwrap();
    assert_eq!(meta.mode() & 0o7777, 0o4750);
    assert_eq!(meta.uid(), 1234);
    assert_eq!(meta.gid(), 5678);
    let attrs = t.tree.xattrs(&path).unwrap();
    let names: Vec<&str> = attrs.iter().map(|(name, _)| name.as_str()).collect();
    assert_eq!(names, ["security.selinux", "trusted.kept", "user.kept"]);
    assert_eq!(attrs[0].1, b"system_u:object_r:bin_t:s0\0");
    assert_eq!(fs::read(&file).unwrap(), b"new");
}

#[test]
fn write_leaves_no_temporary_file() {
    let mut t = TempTree::new();
    write(&mut t.tree, "/root/a", b"one").unwrap();
    write(&mut t.tree, "/root/a", b"two").unwrap();

    let names: Vec<_> = fs::read_dir(t.host("/root"))
        .unwrap()
        .map(|entry| entry.unwrap().file_name())
        .collect();

    assert_eq!(names, ["a"]);
}

#[test]
fn write_failing_reader_keeps_old_file_and_no_temporary() {
    struct FailingReader;
    impl std::io::Read for FailingReader {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::Error::other("source broke"))
        }
    }
    let mut t = TempTree::new();
    write(&mut t.tree, "/root/a", b"old").unwrap();

    let result = t
        .tree
        .write_file(&guest("/root/a"), &mut FailingReader, 0o644);

    assert!(matches!(result, Err(VfsError::Io { .. })), "{result:?}");
    assert_eq!(fs::read(t.host("/root/a")).unwrap(), b"old");
    assert_eq!(fs::read_dir(t.host("/root")).unwrap().count(), 1);
}

/// A reader that returns `limit` bytes of `b'x'` and then fails.
struct FailingAfter {
    limit: usize,
    given: usize,
}

impl std::io::Read for FailingAfter {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.given == self.limit {
            return Err(std::io::Error::other("source broke"));
        }
        let count = buf.len().min(self.limit - self.given);
        buf[..count].fill(b'x');
        self.given += count;
        Ok(count)
    }
}

/// The names in a host directory, sorted.
fn names_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

#[test]
fn write_failing_halfway_leaves_old_file_only() {
    let mut t = TempTree::new();
    write(&mut t.tree, "/root/a", b"old").unwrap();
    // Larger than one `io::copy` buffer, so some bytes reach the new file before the error.
    let mut reader = FailingAfter {
        limit: 100_000,
        given: 0,
    };

    let result = t.tree.write_file(&guest("/root/a"), &mut reader, 0o644);

    assert!(matches!(result, Err(VfsError::Io { .. })), "{result:?}");
    assert_eq!(fs::read(t.host("/root/a")).unwrap(), b"old");
    assert_eq!(names_in(&t.host("/root")), ["a"]);
}

#[test]
fn write_in_progress_has_no_temporary_name() {
    /// A reader that lists the target's directory on every call, which `io::copy` makes
    /// between writes into the new file. A process killed at that point would leave
    /// whatever names the listing shows.
    struct ListingReader {
        dir: PathBuf,
        chunks_left: usize,
        seen: Vec<Vec<String>>,
    }
    impl std::io::Read for ListingReader {
        fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
            self.seen.push(names_in(&self.dir));
            if self.chunks_left == 0 {
                return Ok(0);
            }
            self.chunks_left -= 1;
            buf[..1000].fill(b'x');
            Ok(1000)
        }
    }
    let mut t = TempTree::new();
    write(&mut t.tree, "/root/a", b"old").unwrap();
    let mut reader = ListingReader {
        dir: t.host("/root"),
        chunks_left: 3,
        seen: Vec::new(),
    };

    let written = t
        .tree
        .write_file(&guest("/root/a"), &mut reader, 0o644)
        .unwrap();

    assert_eq!(written, 3000);
    assert_eq!(reader.seen.len(), 4);
    for names in &reader.seen {
        assert_eq!(names, &["a"]);
    }
    assert_eq!(names_in(&t.host("/root")), ["a"]);
}

#[test]
fn create_dir_all_ignores_umask_and_owns_by_root() {
    let mut t = TempTree::new();

    t.tree.create_dir_all(&guest("/a/b/c"), 0o775).unwrap();

    for dir in ["/a", "/a/b", "/a/b/c"] {
        let meta = fs::metadata(t.host(dir)).unwrap();
        assert!(meta.is_dir(), "{dir}");
        assert_eq!(meta.mode() & 0o7777, 0o775, "{dir}");
        assert_eq!(meta.uid(), 0, "{dir}");
    }
}

#[test]
fn fifo_is_not_a_file_for_read_and_write() {
    let mut t = TempTree::new();
    nix::unistd::mkfifo(
        &t.host("/root/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();

    let read = t.tree.read_file(&guest("/root/fifo"));
    let written = write(&mut t.tree, "/root/fifo", b"x");
    let appended = t.tree.append_file(&guest("/root/fifo"), b"x", 0o644);

    assert!(matches!(read, Err(VfsError::NotAFile { .. })), "{read:?}");
    assert!(
        matches!(written, Err(VfsError::NotAFile { .. })),
        "{written:?}"
    );
    assert!(
        matches!(appended, Err(VfsError::NotAFile { .. })),
        "{appended:?}"
    );
}

#[test]
fn set_mode_on_fifo_changes_it() {
    let mut t = TempTree::new();
    nix::unistd::mkfifo(
        &t.host("/root/fifo"),
        nix::sys::stat::Mode::from_bits_truncate(0o644),
    )
    .unwrap();

    t.tree.set_mode(&guest("/root/fifo"), 0o600).unwrap();

    let meta = t.tree.metadata(&guest("/root/fifo")).unwrap();
    assert_eq!(meta.kind, FileKind::Other);
    assert_eq!(meta.mode, 0o600);
}

#[test]
fn set_owner_by_name_uses_guest_passwd() {
    let mut t = TempTree::new();
    fs::write(
        t.host("/etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\nalice:x:4321:4321::/home/alice:/bin/sh\n",
    )
    .unwrap();
    fs::write(t.host("/etc/group"), "root:x:0:\nstaff:x:8765:\n").unwrap();
    write(&mut t.tree, "/root/file", b"").unwrap();

    t.tree
        .set_owner(&guest("/root/file"), Some("alice"), Some("staff"))
        .unwrap();

    let meta = fs::metadata(t.host("/root/file")).unwrap();
    assert_eq!(meta.uid(), 4321);
    assert_eq!(meta.gid(), 8765);
}

#[test]
fn fs_type_names_host_filesystem() {
    let mut t = TempTree::new();

    let fs_type = t.tree.fs_type(&guest("/etc")).unwrap();

    let expected = String::from_utf8(
        std::process::Command::new("stat")
            .args(["--file-system", "--format=%T"])
            .arg(&t.root)
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap();
    // `stat` prints `ext2/ext3` for every ext filesystem.
    let expected = expected.trim().replace("ext2/ext3", "ext4");
    assert_eq!(fs_type, expected);
}

#[test]
fn symlink_loop_in_parent_is_symlink_loop() {
    let mut t = TempTree::new();
    symlink("b", t.host("/a")).unwrap();
    symlink("a", t.host("/b")).unwrap();

    let written = write(&mut t.tree, "/a/file", b"x");
    let created = t.tree.create_dir_all(&guest("/a/dir"), 0o755);

    assert!(
        matches!(written, Err(VfsError::SymlinkLoop { .. })),
        "{written:?}"
    );
    assert!(
        matches!(created, Err(VfsError::SymlinkLoop { .. })),
        "{created:?}"
    );
}

#[test]
fn relative_link_in_symlinked_dir_resolves_from_real_dir() {
    // /root/.ssh -> /srv/keys, and /srv/keys/authorized_keys -> ../shared/keys: the `..`
    // is taken from /srv/keys, where the link really is, so the write lands in
    // /srv/shared/keys, as the kernel would resolve it inside the guest.
    let mut t = TempTree::new();
    fs::create_dir_all(t.host("/srv/keys")).unwrap();
    fs::create_dir_all(t.host("/srv/shared")).unwrap();
    symlink("/srv/keys", t.host("/root/.ssh")).unwrap();
    symlink("../shared/keys", t.host("/srv/keys/authorized_keys")).unwrap();

    write(&mut t.tree, "/root/.ssh/authorized_keys", b"key\n").unwrap();

    assert_eq!(fs::read(t.host("/srv/shared/keys")).unwrap(), b"key\n");
    assert!(!t.host("/root/shared").exists());
}

// ----- hostile symlinks -----

#[test]
fn ssh_dir_link_to_host_dir_writes_inside_tree() {
    let host = HostDir::new();
    let mut t = TempTree::new();
    // The guest has the same path as the host directory, so the write has somewhere to land.
    let same_path = host.path().to_str().unwrap().to_owned();
    fs::create_dir_all(t.host(&same_path)).unwrap();
    symlink(host.path(), t.host("/root/.ssh")).unwrap();

    write(
        &mut t.tree,
        "/root/.ssh/authorized_keys",
        b"ssh-ed25519 AAAA\n",
    )
    .unwrap();

    let landed = t.host(&format!("{same_path}/authorized_keys"));
    assert_eq!(fs::read(landed).unwrap(), b"ssh-ed25519 AAAA\n");
    host.assert_untouched();
}

#[test]
fn ssh_dir_link_to_missing_guest_dir_is_not_found() {
    let host = HostDir::new();
    let mut t = TempTree::new();
    symlink(host.path(), t.host("/root/.ssh")).unwrap();

    let written = write(&mut t.tree, "/root/.ssh/authorized_keys", b"key\n");
    let appended = t
        .tree
        .append_file(&guest("/root/.ssh/authorized_keys"), b"key\n", 0o600);
    let linked = t.tree.symlink("x", &guest("/root/.ssh/link"));

    assert!(
        matches!(written, Err(VfsError::NotFound { .. })),
        "{written:?}"
    );
    assert!(
        matches!(appended, Err(VfsError::NotFound { .. })),
        "{appended:?}"
    );
    assert!(
        matches!(linked, Err(VfsError::NotFound { .. })),
        "{linked:?}"
    );
    host.assert_untouched();
}

#[test]
fn create_dir_all_through_host_link_creates_in_guest() {
    let host = HostDir::new();
    let mut t = TempTree::new();
    symlink(host.path(), t.host("/root/.ssh")).unwrap();

    t.tree
        .create_dir_all(&guest("/root/.ssh/sub"), 0o700)
        .unwrap();

    let in_guest = t.host(&format!("{}/sub", host.path().display()));
    assert!(in_guest.is_dir());
    host.assert_untouched();
}

#[test]
fn authorized_keys_link_to_host_file_is_replaced_in_guest() {
    let host = HostDir::new();
    let mut t = TempTree::new();
    fs::create_dir_all(t.host("/root/.ssh")).unwrap();
    symlink(host.secret(), t.host("/root/.ssh/authorized_keys")).unwrap();
    let secret_in_guest = host.secret().to_str().unwrap().to_owned();
    fs::create_dir_all(t.host(host.path().to_str().unwrap())).unwrap();

    write(&mut t.tree, "/root/.ssh/authorized_keys", b"key\n").unwrap();

    assert_eq!(fs::read(t.host(&secret_in_guest)).unwrap(), b"key\n");
    let link = t
        .tree
        .symlink_metadata(&guest("/root/.ssh/authorized_keys"))
        .unwrap();
    assert_eq!(link.kind, FileKind::Symlink);
    host.assert_untouched();
}

#[test]
fn link_to_host_file_reads_and_changes_nothing_on_host() {
    let host = HostDir::new();
    let mut t = TempTree::new();
    let link = guest("/root/link");
    symlink(host.secret(), t.host("/root/link")).unwrap();

    let read = t.tree.read_file(&link);
    let mode = t.tree.set_mode(&link, 0o777);
    let owner = t.tree.set_owner_ids(&link, Some(1234), Some(1234));
    let attr = t.tree.set_xattr(&link, "user.hostile", b"1");
    let attrs = t.tree.xattrs(&link);
    let exists = t.tree.exists(&link).unwrap();
    let meta = t.tree.metadata(&link);

    assert!(matches!(read, Err(VfsError::NotFound { .. })), "{read:?}");
    assert!(matches!(mode, Err(VfsError::NotFound { .. })), "{mode:?}");
    assert!(matches!(owner, Err(VfsError::NotFound { .. })), "{owner:?}");
    assert!(matches!(attr, Err(VfsError::NotFound { .. })), "{attr:?}");
    assert!(matches!(attrs, Err(VfsError::NotFound { .. })), "{attrs:?}");
    assert!(!exists);
    assert!(matches!(meta, Err(VfsError::NotFound { .. })), "{meta:?}");
    host.assert_untouched();
}

#[test]
fn climbing_relative_link_stops_at_guest_root() {
    let host = HostDir::new();
    let mut t = TempTree::new();
    fs::create_dir_all(t.host("/root/.ssh")).unwrap();
    // Far more `..` than the host path of the tree has names: on the host this reaches `/`
    // and then the host directory.
    let climbing = format!(
        "{}{}",
        "../".repeat(30),
        host.secret().to_str().unwrap().trim_start_matches('/')
    );
    symlink(&climbing, t.host("/root/.ssh/authorized_keys")).unwrap();
    assert_eq!(
        fs::read(t.host("/root/.ssh/authorized_keys")).unwrap(),
        HOST_SECRET,
        "the link reaches the host file when followed on the host"
    );
    fs::create_dir_all(t.host(host.path().to_str().unwrap())).unwrap();

    let read = t.tree.read_file(&guest("/root/.ssh/authorized_keys"));
    write(&mut t.tree, "/root/.ssh/authorized_keys", b"key\n").unwrap();
    t.tree
        .append_file(&guest("/root/.ssh/authorized_keys"), b"more\n", 0o600)
        .unwrap();

    assert!(matches!(read, Err(VfsError::NotFound { .. })), "{read:?}");
    let in_guest = t.host(host.secret().to_str().unwrap());
    assert_eq!(fs::read(in_guest).unwrap(), b"key\nmore\n");
    host.assert_untouched();
}

#[test]
fn remove_through_host_link_removes_nothing_on_host() {
    let host = HostDir::new();
    let mut t = TempTree::new();
    symlink(host.path(), t.host("/root/.ssh")).unwrap();

    let removed = t.tree.remove_file(&guest("/root/.ssh/secret"));

    assert!(
        matches!(removed, Err(VfsError::NotFound { .. })),
        "{removed:?}"
    );
    host.assert_untouched();
}

#[test]
fn swapped_dir_and_link_never_reach_host() {
    // A second thread keeps swapping /root/.ssh between a guest directory and a symlink to
    // the host directory while this thread writes through it. Every write must land in the
    // guest directory or fail; the host directory must never change.
    let host = HostDir::new();
    let mut t = TempTree::new();
    let ssh = t.host("/root/.ssh");
    let parked = t.host("/root/ssh-dir");
    let link = t.host("/root/ssh-link");
    fs::create_dir(&ssh).unwrap();
    symlink(host.path(), &link).unwrap();

    let stop = Arc::new(AtomicBool::new(false));
    let swapper = {
        let stop = Arc::clone(&stop);
        let (ssh, parked, link) = (ssh.clone(), parked.clone(), link.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                fs::rename(&ssh, &parked).unwrap();
                fs::rename(&link, &ssh).unwrap();
                fs::rename(&ssh, &link).unwrap();
                fs::rename(&parked, &ssh).unwrap();
            }
        })
    };

    let mut landed = 0;
    for _ in 0..2000 {
        if write(&mut t.tree, "/root/.ssh/authorized_keys", b"key\n").is_ok() {
            landed += 1;
        }
        let _ = t.tree.set_mode(&guest("/root/.ssh/secret"), 0o777);
        let _ = t.tree.remove_file(&guest("/root/.ssh/secret"));
    }
    stop.store(true, Ordering::Relaxed);
    swapper.join().unwrap();

    assert!(
        landed > 0,
        "no write succeeded while the directory was in place"
    );
    let in_guest = t.host("/root/.ssh/authorized_keys");
    assert_eq!(fs::read(in_guest).unwrap(), b"key\n");
    host.assert_untouched();
}

// ----- unmounted mount points -----

#[test]
fn missing_mount_point_rejects_writes_beneath() {
    let mut t = TempTree::new();
    let boot = guest("/boot");
    t.tree.record_unmounted(&boot, false).unwrap();
    symlink("/boot/grub", t.host("/root/grub-link")).unwrap();

    let created = t.tree.create_dir_all(&guest("/boot/grub"), 0o755);
    let written = write(&mut t.tree, "/boot/config", b"x");
    let through_link = write(&mut t.tree, "/root/grub-link/grub.cfg", b"x");
    let outside = write(&mut t.tree, "/bootstrap", b"x");

    for result in [&created.map(|_| 0), &written, &through_link] {
        assert!(
            matches!(result, Err(VfsError::NotMounted { mount_point, .. }) if *mount_point == boot),
            "{result:?}"
        );
    }
    assert!(outside.is_ok(), "{outside:?}");
    assert!(!t.host("/boot").exists());
}
