//! Tests of [`GuestfsFs`] over a mocked handle: path resolution, the temporary file of
//! `write_file`, and the failure paths that need no appliance.

use std::io::Cursor;

use mockall::predicate::eq;

use super::*;
use crate::handle::{MockGuestfsHandle, StatVfs};
use crate::open::Mounted;

const FILE: u32 = libc::S_IFREG | 0o640;
const DIR: u32 = libc::S_IFDIR | 0o755;
const LINK: u32 = libc::S_IFLNK | 0o777;

fn stat(mode: u32, uid: u32, gid: u32) -> Stat {
    Stat {
        mode,
        uid,
        gid,
        size: 0,
    }
}

fn errno(errno: i32) -> HandleError {
    HandleError {
        message: format!("errno {errno}"),
        errno,
    }
}

fn path(text: &str) -> GuestPath {
    GuestPath::new(text).unwrap()
}

fn root_table() -> MountTable {
    MountTable {
        mounted: vec![Mounted {
            mount_point: GuestPath::root(),
            device: "/dev/sda2".into(),
            fs_type: "ext4".into(),
        }],
        failed: Vec::new(),
    }
}

/// Wraps a mock in a filesystem whose drop expects one shutdown.
fn filesystem(mut handle: MockGuestfsHandle, mounts: MountTable) -> GuestfsFs<MockGuestfsHandle> {
    handle.expect_shutdown().times(1).returning(|| Ok(()));
    GuestfsFs::new(handle, mounts, WriteAccess::Enabled)
}

/// Expects `/etc/shadow` to resolve to itself, as an existing file owned by 0:42.
fn expect_existing_shadow(handle: &mut MockGuestfsHandle) {
    handle
        .expect_realpath()
        .with(eq("/etc"))
        .returning(|_| Ok("/etc".into()));
    handle
        .expect_lstatns()
        .with(eq("/etc/shadow"))
        .returning(|_| Ok(stat(FILE, 0, 42)));
    handle
        .expect_lstatns()
        .withf(|path: &str| path.starts_with("/etc/.shadow.guest-inject-"))
        .returning(|_| Err(errno(libc::ENOENT)));
}

#[test]
fn failed_append_removes_temp_file() {
    let mut handle = MockGuestfsHandle::new();
    expect_existing_shadow(&mut handle);
    handle.expect_write().times(1).returning(|_, _| Ok(()));
    handle.expect_chmod().returning(|_, _| Ok(()));
    let mut appended = 0;
    handle.expect_write_append().returning(move |_, _| {
        appended += 1;
        if appended == 2 {
            Err(errno(libc::ENOSPC))
        } else {
            Ok(())
        }
    });
    handle
        .expect_rm()
        .withf(|path: &str| path.starts_with("/etc/.shadow.guest-inject-"))
        .times(1)
        .returning(|_| Ok(()));
    handle.expect_rename().never();
    let mut fs = filesystem(handle, root_table());

    let mut contents = Cursor::new(vec![b'x'; 3 * CHUNK_SIZE]);
    let error = fs
        .write_file(&path("/etc/shadow"), &mut contents, 0o600)
        .unwrap_err();
    assert!(matches!(error, VfsError::NoSpace { .. }), "{error}");
}

#[test]
fn failed_reader_removes_temp() {
    struct Broken;
    impl Read for Broken {
        fn read(&mut self, _: &mut [u8]) -> io::Result<usize> {
            Err(io::Error::other("pipe closed"))
        }
    }
    let mut handle = MockGuestfsHandle::new();
    expect_existing_shadow(&mut handle);
    handle.expect_write().returning(|_, _| Ok(()));
    handle.expect_chmod().returning(|_, _| Ok(()));
    handle.expect_rm().times(1).returning(|_| Ok(()));
    handle.expect_rename().never();
    let mut fs = filesystem(handle, root_table());

    let error = fs
        .write_file(&path("/etc/shadow"), &mut Broken, 0o600)
        .unwrap_err();
    assert!(matches!(error, VfsError::Io { .. }), "{error}");
}

#[test]
fn replacing_file_copies_owner_then_mode_then_xattrs() {
    let mut handle = MockGuestfsHandle::new();
    expect_existing_shadow(&mut handle);
    let mut sequence = mockall::Sequence::new();
    handle
        .expect_write()
        .withf(|path: &str, content: &[u8]| path.starts_with("/etc/.shadow.") && content.is_empty())
        .times(1)
        .in_sequence(&mut sequence)
        .returning(|_, _| Ok(()));
    handle
        .expect_chmod()
        .withf(|mode: &u32, _: &str| *mode == 0o600)
        .times(1)
        .in_sequence(&mut sequence)
        .returning(|_, _| Ok(()));
    handle
        .expect_write_append()
        .withf(|_: &str, content: &[u8]| content == b"root:hash\n")
        .times(1)
        .in_sequence(&mut sequence)
        .returning(|_, _| Ok(()));
    handle
        .expect_chown()
        .withf(|uid: &Option<u32>, gid: &Option<u32>, _: &str| *uid == Some(0) && *gid == Some(42))
        .times(1)
        .in_sequence(&mut sequence)
        .returning(|_, _, _| Ok(()));
    handle
        .expect_chmod()
        .withf(|mode: &u32, _: &str| *mode == 0o640)
        .times(1)
        .in_sequence(&mut sequence)
        .returning(|_, _| Ok(()));
    handle
        .expect_getxattrs()
        .with(eq("/etc/shadow"))
        .times(1)
        .in_sequence(&mut sequence)
        .returning(|_| Ok(vec![("security.selinux".into(), b"shadow_t\0".to_vec())]));
    handle
        .expect_setxattr()
        .withf(|name: &str, value: &[u8], _: &str| {
            name == "security.selinux" && value == b"shadow_t\0"
        })
        .times(1)
        .in_sequence(&mut sequence)
        .returning(|_, _, _| Ok(()));
    handle
        .expect_rename()
        .withf(|from: &str, to: &str| from.starts_with("/etc/.shadow.") && to == "/etc/shadow")
        .times(1)
        .in_sequence(&mut sequence)
        .returning(|_, _| Ok(()));
    let mut fs = filesystem(handle, root_table());

    let written = fs
        .write_file(&path("/etc/shadow"), &mut &b"root:hash\n"[..], 0o600)
        .unwrap();
    assert_eq!(written, 10);
}

#[test]
fn new_file_gets_root_owner_and_create_mode() {
    let mut handle = MockGuestfsHandle::new();
    handle
        .expect_realpath()
        .with(eq("/root/.ssh"))
        .returning(|_| Ok("/root/.ssh".into()));
    handle
        .expect_lstatns()
        .returning(|_| Err(errno(libc::ENOENT)));
    handle.expect_write().returning(|_, _| Ok(()));
    handle.expect_write_append().returning(|_, _| Ok(()));
    handle
        .expect_chown()
        .withf(|uid: &Option<u32>, gid: &Option<u32>, _: &str| *uid == Some(0) && *gid == Some(0))
        .times(1)
        .returning(|_, _, _| Ok(()));
    handle
        .expect_chmod()
        .with(eq(0o600), mockall::predicate::always())
        .times(2)
        .returning(|_, _| Ok(()));
    handle.expect_getxattrs().never();
    handle
        .expect_rename()
        .withf(|_: &str, to: &str| to == "/root/.ssh/authorized_keys")
        .times(1)
        .returning(|_, _| Ok(()));
    let mut fs = filesystem(handle, root_table());

    fs.write_file(
        &path("/root/.ssh/authorized_keys"),
        &mut &b"ssh-ed25519 AAAA\n"[..],
        0o600,
    )
    .unwrap();
}

#[test]
fn dangling_symlink_is_followed_inside_guest() {
    let mut handle = MockGuestfsHandle::new();
    handle
        .expect_realpath()
        .with(eq("/etc"))
        .returning(|_| Ok("/etc".into()));
    handle
        .expect_realpath()
        .with(eq("/run/systemd/resolve"))
        .returning(|_| Ok("/run/systemd/resolve".into()));
    handle
        .expect_lstatns()
        .with(eq("/etc/resolv.conf"))
        .returning(|_| Ok(stat(LINK, 0, 0)));
    handle
        .expect_readlink()
        .with(eq("/etc/resolv.conf"))
        .returning(|_| Ok("../../../../run/systemd/resolve/stub-resolv.conf".into()));
    handle
        .expect_lstatns()
        .returning(|_| Err(errno(libc::ENOENT)));
    handle.expect_write().returning(|_, _| Ok(()));
    handle.expect_write_append().returning(|_, _| Ok(()));
    handle.expect_chown().returning(|_, _, _| Ok(()));
    handle.expect_chmod().returning(|_, _| Ok(()));
    handle
        .expect_rename()
        .withf(|from: &str, to: &str| {
            from.starts_with("/run/systemd/resolve/.stub-resolv.conf.")
                && to == "/run/systemd/resolve/stub-resolv.conf"
        })
        .times(1)
        .returning(|_, _| Ok(()));
    let mut fs = filesystem(handle, root_table());

    fs.write_file(
        &path("/etc/resolv.conf"),
        &mut &b"nameserver 10.0.0.1\n"[..],
        0o644,
    )
    .unwrap();
}

#[test]
fn symlink_loop_is_reported() {
    let mut handle = MockGuestfsHandle::new();
    handle.expect_realpath().returning(|_| Ok("/".into()));
    handle.expect_lstatns().returning(|_| Ok(stat(LINK, 0, 0)));
    handle
        .expect_readlink()
        .returning(|path| Ok(if path == "/a" { "/b" } else { "/a" }.into()));
    let mut fs = filesystem(handle, root_table());

    let error = fs
        .write_file(&path("/a"), &mut &b""[..], 0o644)
        .unwrap_err();
    assert!(matches!(error, VfsError::SymlinkLoop { .. }), "{error}");
}

#[test]
fn write_beneath_failed_mount_is_rejected() {
    let mut handle = MockGuestfsHandle::new();
    handle
        .expect_realpath()
        .with(eq("/boot"))
        .returning(|_| Ok("/boot".into()));
    handle
        .expect_lstatns()
        .returning(|_| Err(errno(libc::ENOENT)));
    handle.expect_write().never();
    let mut table = root_table();
    table.failed.push(path("/boot"));
    let mut fs = filesystem(handle, table);

    let error = fs
        .write_file(&path("/boot/grub.cfg"), &mut &b"x"[..], 0o644)
        .unwrap_err();
    match error {
        VfsError::NotMounted { mount_point, .. } => assert_eq!(mount_point, path("/boot")),
        other => panic!("expected NotMounted, got {other}"),
    }
}

#[test]
fn symlink_into_failed_mount_is_rejected() {
    let mut handle = MockGuestfsHandle::new();
    // /kernel-config is a symlink to /boot/config, and /boot did not mount.
    handle
        .expect_realpath()
        .with(eq("/"))
        .returning(|_| Ok("/".into()));
    handle
        .expect_realpath()
        .with(eq("/boot"))
        .returning(|_| Ok("/boot".into()));
    handle
        .expect_lstatns()
        .with(eq("/kernel-config"))
        .returning(|_| Ok(stat(LINK, 0, 0)));
    handle
        .expect_readlink()
        .returning(|_| Ok("/boot/config".into()));
    handle
        .expect_lstatns()
        .with(eq("/boot/config"))
        .returning(|_| Err(errno(libc::ENOENT)));
    handle.expect_write().never();
    let mut table = root_table();
    table.failed.push(path("/boot"));
    let mut fs = filesystem(handle, table);

    let error = fs
        .append_file(&path("/kernel-config"), b"x", 0o644)
        .unwrap_err();
    assert!(matches!(error, VfsError::NotMounted { .. }), "{error}");
}

#[test]
fn missing_parent_is_not_found() {
    let mut handle = MockGuestfsHandle::new();
    handle
        .expect_realpath()
        .returning(|_| Err(errno(libc::ENOENT)));
    let mut fs = filesystem(handle, root_table());

    let error = fs
        .write_file(&path("/nonexistent/file"), &mut &b"x"[..], 0o644)
        .unwrap_err();
    assert!(error.is_not_found(), "{error}");
}

#[test]
fn write_over_directory_is_rejected() {
    let mut handle = MockGuestfsHandle::new();
    handle.expect_realpath().returning(|_| Ok("/".into()));
    handle.expect_lstatns().returning(|_| Ok(stat(DIR, 0, 0)));
    handle.expect_write().never();
    let mut fs = filesystem(handle, root_table());

    let error = fs
        .write_file(&path("/etc"), &mut &b"x"[..], 0o644)
        .unwrap_err();
    assert!(matches!(error, VfsError::IsADirectory { .. }), "{error}");
}

#[test]
fn read_file_reads_in_chunks() {
    let mut handle = MockGuestfsHandle::new();
    let size = CHUNK_SIZE + 10;
    handle
        .expect_realpath()
        .returning(|_| Ok("/etc/big".into()));
    handle.expect_statns().returning(move |_| {
        Ok(Stat {
            mode: FILE,
            uid: 0,
            gid: 0,
            size: size as u64,
        })
    });
    handle.expect_pread().returning(move |_, count, offset| {
        let offset = offset as usize;
        let end = (offset + count as usize).min(size);
        Ok(vec![7u8; end.saturating_sub(offset)])
    });
    let mut fs = filesystem(handle, root_table());

    let contents = fs.read_file(&path("/etc/big")).unwrap();
    assert_eq!(contents.len(), size);
}

#[test]
fn read_file_over_limit_is_too_large() {
    let mut handle = MockGuestfsHandle::new();
    handle.expect_realpath().returning(|_| Ok("/big".into()));
    handle.expect_statns().returning(|_| {
        Ok(Stat {
            mode: FILE,
            uid: 0,
            gid: 0,
            size: MAX_READ_BYTES + 1,
        })
    });
    handle.expect_pread().never();
    let mut fs = filesystem(handle, root_table());

    let error = fs.read_file(&path("/big")).unwrap_err();
    assert!(matches!(error, VfsError::TooLarge { .. }), "{error}");
}

#[test]
fn new_dir_gets_exact_mode() {
    let mut handle = MockGuestfsHandle::new();
    handle
        .expect_statns()
        .with(eq("/root"))
        .returning(|_| Ok(stat(DIR, 0, 0)));
    handle
        .expect_statns()
        .with(eq("/root/.ssh"))
        .returning(|_| Err(errno(libc::ENOENT)));
    handle
        .expect_realpath()
        .with(eq("/root"))
        .returning(|_| Ok("/root".into()));
    handle
        .expect_lstatns()
        .with(eq("/root/.ssh"))
        .returning(|_| Err(errno(libc::ENOENT)));
    handle
        .expect_mkdir_mode()
        .with(eq("/root/.ssh"), eq(0o700))
        .times(1)
        .returning(|_, _| Ok(()));
    handle
        .expect_chown()
        .with(eq(Some(0)), eq(Some(0)), eq("/root/.ssh"))
        .times(1)
        .returning(|_, _, _| Ok(()));
    handle
        .expect_chmod()
        .with(eq(0o700), eq("/root/.ssh"))
        .times(1)
        .returning(|_, _| Ok(()));
    let mut fs = filesystem(handle, root_table());

    fs.create_dir_all(&path("/root/.ssh"), 0o700).unwrap();
}

#[test]
fn dir_through_file_is_rejected() {
    let mut handle = MockGuestfsHandle::new();
    handle
        .expect_statns()
        .with(eq("/etc"))
        .returning(|_| Ok(stat(FILE, 0, 0)));
    handle.expect_mkdir_mode().never();
    let mut fs = filesystem(handle, root_table());

    let error = fs.create_dir_all(&path("/etc/x"), 0o755).unwrap_err();
    match error {
        VfsError::NotADirectory { path: at } => assert_eq!(at, path("/etc")),
        other => panic!("expected NotADirectory, got {other}"),
    }
}

#[test]
fn symlink_over_existing_name_is_rejected() {
    let mut handle = MockGuestfsHandle::new();
    handle.expect_realpath().returning(|_| Ok("/etc".into()));
    handle.expect_lstatns().returning(|_| Ok(stat(LINK, 0, 0)));
    handle.expect_ln_s().never();
    let mut fs = filesystem(handle, root_table());

    let error = fs.symlink("/tmp", &path("/etc/mtab")).unwrap_err();
    assert!(matches!(error, VfsError::AlreadyExists { .. }), "{error}");
}

#[test]
fn symlink_is_made_in_resolved_directory() {
    let mut handle = MockGuestfsHandle::new();
    // /etc/alternatives is itself a symlink in this guest.
    handle
        .expect_realpath()
        .with(eq("/etc/alternatives"))
        .returning(|_| Ok("/var/lib/alternatives".into()));
    handle
        .expect_lstatns()
        .returning(|_| Err(errno(libc::ENOENT)));
    handle
        .expect_ln_s()
        .with(eq("/usr/bin/vim.basic"), eq("/var/lib/alternatives/vi"))
        .times(1)
        .returning(|_, _| Ok(()));
    let mut fs = filesystem(handle, root_table());

    fs.symlink("/usr/bin/vim.basic", &path("/etc/alternatives/vi"))
        .unwrap();
}

#[test]
fn remove_directory_is_rejected() {
    let mut handle = MockGuestfsHandle::new();
    handle.expect_realpath().returning(|_| Ok("/".into()));
    handle.expect_lstatns().returning(|_| Ok(stat(DIR, 0, 0)));
    handle.expect_rm().never();
    let mut fs = filesystem(handle, root_table());

    let error = fs.remove_file(&path("/etc")).unwrap_err();
    assert!(matches!(error, VfsError::IsADirectory { .. }), "{error}");
}

#[test]
fn exists_is_false_for_dangling_symlink() {
    let mut handle = MockGuestfsHandle::new();
    handle
        .expect_statns()
        .returning(|_| Err(errno(libc::ENOENT)));
    let mut fs = filesystem(handle, root_table());

    assert!(!fs.exists(&path("/dangling")).unwrap());
}

#[test]
fn fs_type_uses_deepest_mount() {
    let mut handle = MockGuestfsHandle::new();
    handle
        .expect_realpath()
        .returning(|_| Ok("/boot/grub".into()));
    let mut table = root_table();
    table.mounted.push(Mounted {
        mount_point: path("/boot"),
        device: "/dev/sda1".into(),
        fs_type: "ext2".into(),
    });
    let mut fs = filesystem(handle, table);

    assert_eq!(fs.fs_type(&path("/boot/grub")).unwrap(), "ext2");
}

#[test]
fn free_space_multiplies_fragment_size() {
    let mut handle = MockGuestfsHandle::new();
    handle.expect_statvfs().returning(|_| {
        Ok(StatVfs {
            block_size: 4096,
            fragment_size: 1024,
            blocks_available: 10,
        })
    });
    let mut fs = filesystem(handle, root_table());

    assert_eq!(fs.free_space(&GuestPath::root()).unwrap(), 10 * 1024);
}

#[test]
fn close_reports_failed_shutdown() {
    let mut handle = MockGuestfsHandle::new();
    handle.expect_shutdown().times(1).returning(|| {
        Err(HandleError {
            message: "qemu did not exit".into(),
            errno: 0,
        })
    });
    let fs: Box<GuestfsFs<MockGuestfsHandle>> =
        Box::new(GuestfsFs::new(handle, root_table(), WriteAccess::Enabled));

    let error = fs.close().unwrap_err();
    let cause = std::error::Error::source(&error).expect("the error has a cause");
    assert!(
        matches!(error, vfs_core::VfsError::Closing { .. }),
        "{error}"
    );
    assert!(cause.to_string().contains("qemu did not exit"), "{cause}");
}

#[test]
fn drop_shuts_appliance_down_once() {
    let handle = MockGuestfsHandle::new();
    let fs = filesystem(handle, root_table());
    drop(fs);
}

fn root_and_boot_table() -> MountTable {
    let mut table = root_table();
    table.mounted.push(Mounted {
        mount_point: path("/boot"),
        device: "/dev/sda1".into(),
        fs_type: "ext4".into(),
    });
    table
}

#[test]
fn enable_writes_remounts_root_before_boot() {
    let mut handle = MockGuestfsHandle::new();
    let mut sequence = mockall::Sequence::new();
    for mount_point in ["/", "/boot"] {
        handle
            .expect_remount()
            .with(eq(mount_point), eq(true))
            .times(1)
            .in_sequence(&mut sequence)
            .returning(|_, _| Ok(()));
    }
    let mut fs = filesystem(handle, root_and_boot_table());
    fs.access = WriteAccess::Deferred;

    fs.enable_writes().unwrap();
    // The second call finds the filesystems writable and remounts nothing.
    fs.enable_writes().unwrap();
}

#[test]
fn enable_writes_on_read_only_is_read_only() {
    let mut handle = MockGuestfsHandle::new();
    handle.expect_remount().never();
    let mut fs = filesystem(handle, root_table());
    fs.access = WriteAccess::ReadOnly;

    let error = fs.enable_writes().unwrap_err();

    assert!(matches!(error, VfsError::ReadOnly { .. }), "{error:?}");
}

#[test]
fn failed_remount_names_mount_point() {
    let mut handle = MockGuestfsHandle::new();
    handle
        .expect_remount()
        .with(eq("/"), eq(true))
        .returning(|_, _| Ok(()));
    handle
        .expect_remount()
        .with(eq("/boot"), eq(true))
        .returning(|_, _| {
            Err(HandleError {
                message: "mount: /sysroot/boot: cannot remount read-write".into(),
                errno: 0,
            })
        });
    let mut fs = filesystem(handle, root_and_boot_table());
    fs.access = WriteAccess::Deferred;

    let error = fs.enable_writes().unwrap_err();

    let VfsError::Backend { op, path, .. } = &error else {
        panic!("expected a backend error, got {error:?}");
    };
    assert_eq!(*op, "remounting read-write");
    assert_eq!(path.as_str(), "/boot");
    assert_eq!(fs.access, WriteAccess::Deferred);
}
