//! Tests of what [`MemFs`] adds beyond the conformance suite: capacity, read-only mode,
//! unmounted mount points, fault injection, recorded calls, the symlink limit and the
//! Debian-like fixture.

use std::io::{self, Read};

use testkit::debian;
use testkit::{Fault, MemFs, MemNodeKind, MemOp};
use vfs_core::accounts;
use vfs_core::{FileKind, GuestFs, GuestPath, VfsError, MAX_SYMLINK_FOLLOWS};

fn path(text: &str) -> GuestPath {
    GuestPath::new(text).unwrap()
}

fn write(fs: &mut dyn GuestFs, at: &str, contents: &[u8]) -> vfs_core::Result<u64> {
    fs.write_file(&path(at), &mut &contents[..], 0o644)
}

/// A reader that yields `len` bytes of `b'x'` and then fails, like a broken pipe.
struct FailingReader {
    len: usize,
}

impl Read for FailingReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.len == 0 {
            return Err(io::Error::new(
                io::ErrorKind::BrokenPipe,
                "source went away",
            ));
        }
        let n = self.len.min(buf.len());
        buf[..n].fill(b'x');
        self.len -= n;
        Ok(n)
    }
}

#[test]
fn write_past_capacity_is_no_space() {
    let mut fs = MemFs::with_capacity(10);
    fs.add_file("/f", "abcd", 0o644, 0, 0);

    let err = write(&mut fs, "/f", b"1234567").unwrap_err();

    assert!(matches!(err, VfsError::NoSpace { .. }), "{err:?}");
    assert_eq!(fs.file_contents("/f"), Some(&b"abcd"[..]));
}

#[test]
fn write_up_to_capacity_succeeds() {
    let mut fs = MemFs::with_capacity(10);
    fs.add_file("/f", "abcd", 0o644, 0, 0);

    // The old 4 bytes and the new 6 bytes exist side by side during the replace.
    let written = write(&mut fs, "/f", b"123456").unwrap();

    assert_eq!(written, 6);
    assert_eq!(fs.free_space(&GuestPath::root()).unwrap(), 4);
}

#[test]
fn append_past_capacity_is_no_space() {
    let mut fs = MemFs::with_capacity(4);

    let err = fs.append_file(&path("/log"), b"12345", 0o600).unwrap_err();

    assert!(matches!(err, VfsError::NoSpace { .. }), "{err:?}");
    assert!(fs.node("/log").is_none());
}

#[test]
fn read_only_rejects_every_change() {
    let mut fs = MemFs::debian_like();
    fs.set_read_only(true);
    let before = fs.snapshot();
    let shadow = path("/etc/shadow");

    let results = [
        write(&mut fs, "/etc/shadow", b"x").map(drop),
        fs.append_file(&shadow, b"x", 0o600),
        fs.create_dir_all(&path("/root/.ssh"), 0o700),
        fs.set_mode(&shadow, 0o600),
        fs.set_owner_ids(&shadow, Some(1), None),
        fs.set_xattr(&shadow, "user.x", b"1"),
        fs.symlink("/etc", &path("/l")),
        fs.remove_file(&shadow),
    ];

    for result in results {
        assert!(
            matches!(result, Err(VfsError::ReadOnly { .. })),
            "{result:?}"
        );
    }
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn deferred_writes_reject_changes_until_enabled() {
    let mut fs = MemFs::debian_like();
    fs.set_deferred_writes(true);
    let before = fs.snapshot();

    let deferred = write(&mut fs, "/etc/motd", b"deferred\n");
    let snapshot_while_deferred = fs.snapshot();
    let enabled = fs.enable_writes();
    let written = write(&mut fs, "/etc/motd", b"enabled\n");

    assert!(
        matches!(deferred, Err(VfsError::ReadOnly { .. })),
        "{deferred:?}"
    );
    assert_eq!(snapshot_while_deferred, before);
    assert!(enabled.is_ok(), "{enabled:?}");
    assert!(!fs.writes_deferred());
    assert!(written.is_ok(), "{written:?}");
    assert_eq!(fs.file_contents("/etc/motd"), Some(&b"enabled\n"[..]));
}

#[test]
fn enable_writes_on_read_only_is_read_only() {
    let mut fs = MemFs::debian_like();
    fs.set_read_only(true);

    let result = fs.enable_writes();

    assert!(
        matches!(result, Err(VfsError::ReadOnly { .. })),
        "{result:?}"
    );
    assert_eq!(fs.calls().last().unwrap().0, MemOp::EnableWrites);
}

#[test]
fn write_beneath_unmounted_mount_point_is_not_mounted() {
    let mut fs = MemFs::new();
    fs.add_unmounted_mount_point("/boot");

    let err = write(&mut fs, "/boot/grub.cfg", b"x").unwrap_err();

    let VfsError::NotMounted { mount_point, .. } = err else {
        panic!("expected NotMounted, got {err:?}");
    };
    assert_eq!(mount_point, path("/boot"));
    assert!(fs.node("/boot/grub.cfg").is_none());
}

#[test]
fn write_through_symlink_into_unmounted_is_not_mounted() {
    let mut fs = MemFs::new();
    fs.add_unmounted_mount_point("/boot")
        .add_symlink("/grub", "boot");

    let err = write(&mut fs, "/grub/grub.cfg", b"x").unwrap_err();

    assert!(matches!(err, VfsError::NotMounted { .. }), "{err:?}");
}

#[test]
fn mounts_lists_only_memfs_root() {
    let mut fs = MemFs::new();
    fs.add_unmounted_mount_point("/boot");

    let mounts = fs.mounts();

    assert_eq!(mounts.len(), 1);
    assert_eq!(mounts[0].mount_point, GuestPath::root());
    assert_eq!(mounts[0].fs_type, "memfs");
}

#[test]
fn fault_on_third_write_fails_only_that_call() {
    let mut fs = MemFs::new();
    fs.inject_fault(
        Fault::new(MemOp::WriteFile, |p| VfsError::NoSpace { path: p.clone() }).on_call(3),
    );

    let results: Vec<bool> = ["/a", "/b", "/c", "/d"]
        .iter()
        .map(|at| write(&mut fs, at, b"x").is_ok())
        .collect();

    assert_eq!(results, [true, true, false, true]);
    assert!(fs.node("/c").is_none());
}

#[test]
fn fault_at_path_spares_other_paths() {
    let mut fs = MemFs::debian_like();
    fs.fail_on(MemOp::SetMode, Some(path("/etc/shadow")), |p| {
        VfsError::ReadOnly { path: p.clone() }
    });

    let on_shadow = fs.set_mode(&path("/etc/shadow"), 0o600);
    let on_passwd = fs.set_mode(&path("/etc/passwd"), 0o600);

    assert!(matches!(on_shadow, Err(VfsError::ReadOnly { .. })));
    assert!(on_passwd.is_ok());
    assert_eq!(fs.node("/etc/shadow").unwrap().mode, 0o640);
}

#[test]
fn write_failing_halfway_keeps_old_contents() {
    let mut fs = MemFs::new();
    fs.add_file("/f", "old", 0o600, 7, 8);
    fs.inject_fault(
        Fault::new(MemOp::WriteFile, |p| VfsError::NoSpace { path: p.clone() }).after_bytes(4),
    );
    let mut source: &[u8] = b"new contents";

    let err = fs.write_file(&path("/f"), &mut source, 0o644).unwrap_err();

    assert!(matches!(err, VfsError::NoSpace { .. }), "{err:?}");
    assert_eq!(source, b"contents", "the first 4 bytes were consumed");
    assert_eq!(fs.file_contents("/f"), Some(&b"old"[..]));
}

#[test]
fn append_failing_halfway_keeps_prefix() {
    let mut fs = MemFs::new();
    fs.add_file("/log", "a\n", 0o600, 0, 0);
    fs.inject_fault(
        Fault::new(MemOp::AppendFile, |p| VfsError::NoSpace { path: p.clone() }).after_bytes(2),
    );

    let result = fs.append_file(&path("/log"), b"bcde\n", 0o600);

    assert!(result.is_err());
    assert_eq!(fs.file_contents("/log"), Some(&b"a\nbc"[..]));
}

#[test]
fn reader_error_is_io_and_keeps_old_contents() {
    let mut fs = MemFs::new();
    fs.add_file("/f", "old", 0o600, 0, 0);

    let err = fs
        .write_file(&path("/f"), &mut FailingReader { len: 100_000 }, 0o644)
        .unwrap_err();

    assert!(matches!(err, VfsError::Io { .. }), "{err:?}");
    assert_eq!(fs.file_contents("/f"), Some(&b"old"[..]));
}

#[test]
fn calls_are_recorded_in_order() {
    let mut fs = MemFs::debian_like();

    fs.set_owner(&path("/tmp"), Some("alice"), None).unwrap();

    let ops: Vec<MemOp> = fs.calls().iter().map(|(op, _)| *op).collect();
    assert_eq!(ops, [MemOp::SetOwner, MemOp::ReadFile, MemOp::SetOwnerIds]);
    assert_eq!(fs.calls()[1].1, path("/etc/passwd"));
}

#[test]
fn symlink_chain_at_limit_resolves() {
    let mut fs = MemFs::new();
    fs.add_file("/target", "end", 0o644, 0, 0);
    fs.add_symlink("/l0", "/target");
    for n in 1..MAX_SYMLINK_FOLLOWS {
        fs.add_symlink(&format!("/l{n}"), &format!("l{}", n - 1));
    }
    let longest = path(&format!("/l{}", MAX_SYMLINK_FOLLOWS - 1));

    assert_eq!(fs.read_file(&longest).unwrap(), b"end");
}

#[test]
fn symlink_chain_past_limit_is_loop() {
    let mut fs = MemFs::new();
    fs.add_file("/target", "end", 0o644, 0, 0);
    fs.add_symlink("/l0", "/target");
    for n in 1..=MAX_SYMLINK_FOLLOWS {
        fs.add_symlink(&format!("/l{n}"), &format!("l{}", n - 1));
    }
    let too_long = path(&format!("/l{MAX_SYMLINK_FOLLOWS}"));

    let err = fs.read_file(&too_long).unwrap_err();

    assert!(matches!(err, VfsError::SymlinkLoop { .. }), "{err:?}");
}

#[test]
fn dotdot_after_symlink_leaves_link_target() {
    // /a/link points at /b/c, so /a/link/.. is /b, not /a, as in the kernel.
    let mut fs = MemFs::new();
    fs.add_dir("/b/c", 0o755, 0, 0)
        .add_file("/b/here", "b", 0o644, 0, 0)
        .add_symlink("/a/link", "/b/c")
        .add_symlink("/a/up", "link/../here");

    assert_eq!(fs.read_file(&path("/a/up")).unwrap(), b"b");
}

#[test]
fn write_through_dangling_symlink_creates_target() {
    let mut fs = MemFs::new();
    fs.add_dir("/d", 0o755, 0, 0).add_symlink("/link", "d/new");

    write(&mut fs, "/link", b"x").unwrap();

    assert_eq!(fs.file_contents("/d/new"), Some(&b"x"[..]));
    assert!(matches!(
        fs.node("/link").unwrap().kind,
        MemNodeKind::Symlink(_)
    ));
}

#[test]
fn shared_handle_sees_changes_after_close() {
    let shared = MemFs::new().into_shared();
    let mut handle: Box<dyn GuestFs> = Box::new(shared.clone());

    write(handle.as_mut(), "/f", b"x").unwrap();
    handle.close().unwrap();

    let fs = shared.lock();
    assert_eq!(fs.file_contents("/f"), Some(&b"x"[..]));
    assert_eq!(fs.calls().last().unwrap().0, MemOp::Close);
}

#[test]
fn debian_like_accounts_parse() {
    let mut fs = MemFs::debian_like();

    assert_eq!(accounts::lookup_uid(&mut fs, "alice").unwrap(), 1000);
    assert_eq!(accounts::lookup_gid(&mut fs, "shadow").unwrap(), 42);
    assert_eq!(accounts::lookup_uid(&mut fs, "root").unwrap(), 0);
}

#[test]
fn debian_like_shadow_is_root_shadow_0640() {
    let mut fs = MemFs::debian_like();

    let meta = fs.metadata(&path("/etc/shadow")).unwrap();

    assert_eq!(meta.mode, 0o640);
    assert_eq!(meta.uid, 0);
    assert_eq!(meta.gid, debian::SHADOW_GID);
    assert_eq!(fs.metadata(&path("/root")).unwrap().mode, 0o700);
}

#[test]
fn debian_like_without_newline_drops_last_newline() {
    let mut fs = MemFs::debian_like_without_shadow_newline();

    let shadow = fs.read_file(&path("/etc/shadow")).unwrap();

    assert!(!shadow.ends_with(b"\n"));
    assert_eq!(shadow.len() + 1, debian::SHADOW.len());
}

#[test]
fn debian_like_os_release_is_symlink() {
    let mut fs = MemFs::debian_like();
    let os_release = path("/etc/os-release");

    let link = fs.symlink_metadata(&os_release).unwrap();
    let contents = fs.read_file(&os_release).unwrap();

    assert_eq!(link.kind, FileKind::Symlink);
    assert_eq!(contents, debian::OS_RELEASE.as_bytes());
}

#[test]
fn set_xattr_without_namespace_is_rejected() {
    let mut fs = MemFs::new();
    fs.add_file("/f", "", 0o644, 0, 0);

    let result = fs.set_xattr(&path("/f"), "selinux", b"x");

    assert!(result.is_err());
    assert!(fs.node("/f").unwrap().xattrs.is_empty());
}
