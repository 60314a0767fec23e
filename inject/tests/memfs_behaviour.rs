//! The files injection writes, checked on `testkit::MemFs` guests: the key and
//! `authorized_keys`, the SELinux relabel in `rc.local`, `/etc/shadow`, the network and
//! metadata files, other files with their parents, best-effort items, and that failed
//! planning writes nothing.

mod common;

use common::{changed_path_texts, ed25519_key, path};
use inject::password::hash_with_salt;
use inject::{
    inject, plan, FileItem, FileSource, HashMethod, InjectError, ItemError, ItemKind, Outcome,
    Password, Request,
};
use testkit::debian::{PASSWD, SHADOW, SHADOW_GID};
use testkit::{Fault, MemFs, MemNodeKind, MemOp};
use vfs_core::{GuestFs, VfsError};

const KEY_COMMENT: &str = "# SSH key injected by guest-inject";
const RELABEL: &str = "restorecon -R /root/.ssh || true";

fn key_request(key: &str) -> Request {
    Request {
        ssh_key: Some(key.to_owned()),
        ..Request::default()
    }
}

fn password_request(password: &str, method: HashMethod) -> Request {
    Request {
        password: Some(Password::new(password.to_owned())),
        password_method: method,
        ..Request::default()
    }
}

fn text(fs: &MemFs, path: &str) -> String {
    let contents = fs
        .file_contents(path)
        .unwrap_or_else(|| panic!("{path} is not a file"));
    String::from_utf8(contents.to_vec()).unwrap()
}

/// Returns root's password field from `/etc/shadow`.
fn root_hash(fs: &MemFs) -> String {
    let shadow = text(fs, "/etc/shadow");
    let line = shadow
        .lines()
        .find(|line| line.starts_with("root:"))
        .unwrap();
    line.split(':').nth(1).unwrap().to_owned()
}

/// Checks that `hash` is `password` hashed with the salt that `hash` names.
fn assert_hash_of(hash: &str, password: &str, method: HashMethod) {
    let salt = hash.split('$').nth(2).unwrap();
    let expected = hash_with_salt(&Password::new(password.to_owned()), method, salt).unwrap();
    assert_eq!(hash, expected);
}

fn selinux_guest() -> MemFs {
    let mut fs = MemFs::debian_like();
    fs.add_dir("/etc/selinux", 0o755, 0, 0);
    fs
}

// --- SSH key -------------------------------------------------------------------------

#[test]
fn key_creates_ssh_dir_and_authorized_keys() {
    let mut fs = MemFs::debian_like();
    let key = ed25519_key(1, "admin@host");

    let report = inject(&mut fs, &key_request(&key)).unwrap();

    let ssh_dir = fs.node("/root/.ssh").unwrap();
    assert_eq!(ssh_dir.kind, MemNodeKind::Directory);
    assert_eq!(ssh_dir.mode, 0o700);
    assert_eq!((ssh_dir.uid, ssh_dir.gid), (0, 0));
    let keys = fs.node("/root/.ssh/authorized_keys").unwrap();
    assert_eq!(keys.mode, 0o600);
    assert_eq!((keys.uid, keys.gid), (0, 0));
    assert_eq!(
        text(&fs, "/root/.ssh/authorized_keys"),
        format!("{KEY_COMMENT}\n{key}\n")
    );
    assert_eq!(report.items.len(), 1);
    assert_eq!(report.items[0].kind, ItemKind::Key);
    assert_eq!(report.items[0].target, "/root/.ssh/authorized_keys");
    assert_eq!(report.items[0].outcome, Outcome::Applied);
}

#[test]
fn key_after_line_without_final_newline() {
    let mut fs = MemFs::debian_like();
    let old = ed25519_key(9, "old");
    fs.add_dir("/root/.ssh", 0o700, 0, 0).add_file(
        "/root/.ssh/authorized_keys",
        old.as_str(),
        0o644,
        0,
        0,
    );
    let key = ed25519_key(1, "new");

    inject(&mut fs, &key_request(&key)).unwrap();

    assert_eq!(
        text(&fs, "/root/.ssh/authorized_keys"),
        format!("{old}\n{KEY_COMMENT}\n{key}\n")
    );
    assert_eq!(fs.node("/root/.ssh/authorized_keys").unwrap().mode, 0o644);
}

#[test]
fn duplicate_key_is_not_added_twice() {
    let mut fs = MemFs::debian_like();
    let key = ed25519_key(1, "admin@host");
    inject(&mut fs, &key_request(&key)).unwrap();
    let after_first = fs.snapshot();

    let report = inject(&mut fs, &key_request(&key)).unwrap();

    assert_eq!(
        changed_path_texts(&after_first, &fs.snapshot()),
        [] as [&str; 0]
    );
    let Outcome::Unchanged { reason } = &report.items[0].outcome else {
        panic!("expected unchanged, got {:?}", report.items[0]);
    };
    assert!(reason.contains("already"), "{reason}");
}

#[test]
fn present_key_is_unchanged() {
    let mut fs = MemFs::debian_like();
    let existing = format!("no-pty {}\n", ed25519_key(1, "old-comment"));
    fs.add_dir("/root/.ssh", 0o700, 0, 0).add_file(
        "/root/.ssh/authorized_keys",
        existing.as_str(),
        0o600,
        0,
        0,
    );
    let before = fs.snapshot();

    let report = inject(&mut fs, &key_request(&ed25519_key(1, "new-comment"))).unwrap();

    assert!(matches!(report.items[0].outcome, Outcome::Unchanged { .. }));
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn key_goes_to_root_home_from_passwd() {
    let mut fs = MemFs::debian_like();
    fs.add_file(
        "/etc/passwd",
        PASSWD.replace("root:/root:", "root:/var/roothome:"),
        0o644,
        0,
        0,
    )
    .add_dir("/var", 0o755, 0, 0);

    let report = inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap();

    assert_eq!(report.items[0].target, "/var/roothome/.ssh/authorized_keys");
    assert_eq!(fs.node("/var/roothome").unwrap().mode, 0o700);
    assert_eq!(fs.node("/var/roothome/.ssh").unwrap().mode, 0o700);
    assert!(fs
        .file_contents("/var/roothome/.ssh/authorized_keys")
        .is_some());
    assert!(fs.node("/root/.ssh").is_none());
}

#[test]
fn missing_passwd_fails_without_making_ssh_dir() {
    let mut fs = MemFs::new();
    fs.add_dir("/root", 0o700, 0, 0)
        .add_dir("/etc", 0o755, 0, 0);
    let before = fs.snapshot();

    let err = inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap_err();

    let InjectError::Planning { item, source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert_eq!(*item, ItemKind::Key);
    let ItemError::GuestFileMissing { path, .. } = &**source else {
        panic!("expected a missing file, got {source:?}");
    };
    assert_eq!(path.as_str(), "/etc/passwd");
    assert!(source.to_string().contains("/etc/passwd"), "{source}");
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn root_missing_from_passwd_writes_nothing() {
    let mut fs = MemFs::debian_like();
    fs.add_file(
        "/etc/passwd",
        "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin\n",
        0o644,
        0,
        0,
    );
    let before = fs.snapshot();
    let mut request = key_request(&ed25519_key(1, ""));
    request.network = Some(b"auto lo\n".to_vec());

    let err = inject(&mut fs, &request).unwrap_err();

    assert_eq!(err.item(), Some(ItemKind::Key));
    let message = std::error::Error::source(&err).unwrap().to_string();
    assert!(message.contains("/etc/passwd"), "{message}");
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn ssh_dir_that_is_a_file_fails_planning() {
    let mut fs = MemFs::debian_like();
    fs.add_file("/root/.ssh", "not a directory", 0o600, 0, 0);
    let before = fs.snapshot();

    let err = inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap_err();

    let InjectError::Planning { source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert!(
        matches!(**source, ItemError::NotADirectory { ref path } if path.as_str() == "/root/.ssh"),
        "{source:?}"
    );
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn dangling_ssh_dir_symlink_fails_planning() {
    let mut fs = MemFs::debian_like();
    fs.add_symlink("/root/.ssh", "/nowhere/ssh");
    let before = fs.snapshot();

    let err = inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap_err();

    let InjectError::Planning { source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert!(
        matches!(**source, ItemError::DanglingSymlink { .. }),
        "{source:?}"
    );
    assert_eq!(
        source.to_string(),
        "/root/.ssh is a symlink to a missing target, so no directory can be created there"
    );
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn dangling_meta_js_symlink_names_the_file() {
    let mut fs = MemFs::debian_like();
    fs.add_symlink("/meta.js", "/nowhere/meta.js");
    let before = fs.snapshot();
    let request = Request {
        metadata: Some(br#"{"uuid": "0f8fad5b"}"#.to_vec()),
        ..Request::default()
    };

    let err = inject(&mut fs, &request).unwrap_err();

    let InjectError::Planning { source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert_eq!(
        source.to_string(),
        "/meta.js is a symlink to a missing target, so the file cannot be written there"
    );
    assert_eq!(fs.snapshot(), before);
}

// --- SELinux relabel -----------------------------------------------------------------

#[test]
fn selinux_guest_gets_new_rc_local() {
    let mut fs = selinux_guest();

    let report = inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap();

    let rc_local = text(&fs, "/etc/rc.local");
    assert!(rc_local.starts_with("#!/bin/sh\n"), "{rc_local}");
    assert!(rc_local.ends_with(&format!("{RELABEL}\n")), "{rc_local}");
    assert_eq!(fs.node("/etc/rc.local").unwrap().mode, 0o755);
    assert_eq!(
        report.items[0].target,
        "/root/.ssh/authorized_keys, /etc/rc.local"
    );
}

#[test]
fn guest_without_selinux_gets_no_rc_local() {
    let mut fs = MemFs::debian_like();

    inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap();

    assert!(fs.node("/etc/rc.local").is_none());
}

#[test]
fn rc_d_layout_gets_rc_d_rc_local() {
    let mut fs = selinux_guest();
    fs.add_dir("/etc/rc.d", 0o755, 0, 0);

    inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap();

    assert!(fs.node("/etc/rc.local").is_none());
    assert!(text(&fs, "/etc/rc.d/rc.local").contains(RELABEL));
    assert_eq!(fs.node("/etc/rc.d/rc.local").unwrap().mode, 0o755);
}

#[test]
fn existing_rc_local_wins_over_rc_d() {
    let mut fs = selinux_guest();
    fs.add_dir("/etc/rc.d", 0o755, 0, 0)
        .add_file("/etc/rc.local", "#!/bin/sh\n", 0o755, 0, 0);

    inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap();

    assert!(text(&fs, "/etc/rc.local").contains(RELABEL));
    assert!(fs.node("/etc/rc.d/rc.local").is_none());
}

#[test]
fn rc_local_edit_before_exit() {
    let mut fs = selinux_guest();
    fs.add_file(
        "/etc/rc.local",
        "#!/bin/sh -e\necho booted\nexit 0",
        0o640,
        0,
        0,
    );

    inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap();

    assert_eq!(
        text(&fs, "/etc/rc.local"),
        format!(
            "#!/bin/sh -e\necho booted\n# Restore the SELinux labels of root's SSH directory; \
             added by guest-inject\n{RELABEL}\nexit 0"
        )
    );
    assert_eq!(fs.node("/etc/rc.local").unwrap().mode, 0o751);
}

#[test]
fn rc_local_without_shebang_gets_exactly_one() {
    let mut fs = selinux_guest();
    fs.add_file("/etc/rc.local", "touch /var/booted\n", 0o755, 0, 0);

    inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap();

    let rc_local = text(&fs, "/etc/rc.local");
    assert!(
        rc_local.starts_with("#!/bin/sh\ntouch /var/booted\n"),
        "{rc_local}"
    );
    assert_eq!(rc_local.matches("#!").count(), 1, "{rc_local}");
}

#[test]
fn relabel_is_not_added_twice() {
    let mut fs = selinux_guest();
    fs.add_file("/etc/rc.local", "#!/bin/sh\nexit 0\n", 0o755, 0, 0);
    inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap();
    let after_first = fs.snapshot();

    let report = inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap();

    assert_eq!(fs.snapshot(), after_first);
    assert_eq!(text(&fs, "/etc/rc.local").matches(RELABEL).count(), 1);
    let Outcome::Unchanged { reason } = &report.items[0].outcome else {
        panic!("expected unchanged, got {:?}", report.items[0]);
    };
    assert!(reason.contains("/etc/rc.local"), "{reason}");
}

#[test]
fn relabel_added_when_key_already_present() {
    let mut fs = MemFs::debian_like();
    let key = ed25519_key(1, "");
    inject(&mut fs, &key_request(&key)).unwrap();
    fs.add_dir("/etc/selinux", 0o755, 0, 0);

    let report = inject(&mut fs, &key_request(&key)).unwrap();

    assert_eq!(report.items[0].outcome, Outcome::Applied);
    assert!(text(&fs, "/etc/rc.local").contains(RELABEL));
    assert_eq!(
        text(&fs, "/root/.ssh/authorized_keys")
            .matches(&key)
            .count(),
        1
    );
}

#[test]
fn rc_local_symlink_is_followed_and_kept() {
    let mut fs = selinux_guest();
    fs.add_file("/etc/rc.d/rc.local", "#!/bin/bash\n", 0o644, 0, 0)
        .add_symlink("/etc/rc.local", "rc.d/rc.local");

    inject(&mut fs, &key_request(&ed25519_key(1, ""))).unwrap();

    assert_eq!(
        fs.node("/etc/rc.local").unwrap().kind,
        MemNodeKind::Symlink("rc.d/rc.local".to_owned())
    );
    assert!(text(&fs, "/etc/rc.d/rc.local").contains(RELABEL));
    assert_eq!(fs.node("/etc/rc.d/rc.local").unwrap().mode, 0o755);
}

// --- Root password -------------------------------------------------------------------

#[test]
fn password_replaces_only_root_hash() {
    let mut fs = MemFs::debian_like();

    let report = inject(&mut fs, &password_request("n3w pass", HashMethod::Sha512)).unwrap();

    let hash = root_hash(&fs);
    assert!(hash.starts_with("$6$"), "{hash}");
    assert_hash_of(&hash, "n3w pass", HashMethod::Sha512);
    assert_eq!(
        text(&fs, "/etc/shadow"),
        SHADOW.replacen("root:*:", &format!("root:{hash}:"), 1)
    );
    assert_eq!(report.items[0].target, "/etc/shadow");
}

#[test]
fn password_keeps_shadow_mode_owner_and_xattrs() {
    let mut fs = MemFs::debian_like();
    fs.add_xattr(
        "/etc/shadow",
        "security.selinux",
        b"system_u:object_r:shadow_t:s0",
    );

    inject(&mut fs, &password_request("pw", HashMethod::Sha512)).unwrap();

    let shadow = fs.node("/etc/shadow").unwrap();
    assert_eq!(shadow.mode, 0o640);
    assert_eq!((shadow.uid, shadow.gid), (0, SHADOW_GID));
    assert_eq!(
        shadow.xattrs.get("security.selinux").map(Vec::as_slice),
        Some(&b"system_u:object_r:shadow_t:s0"[..])
    );
}

#[test]
fn shadow_without_final_newline_stays_so() {
    let mut fs = MemFs::debian_like_without_shadow_newline();

    inject(&mut fs, &password_request("pw", HashMethod::Sha256)).unwrap();

    let hash = root_hash(&fs);
    assert!(hash.starts_with("$5$"), "{hash}");
    assert_eq!(
        text(&fs, "/etc/shadow"),
        SHADOW
            .trim_end_matches('\n')
            .replacen("root:*:", &format!("root:{hash}:"), 1)
    );
}

#[test]
fn locked_root_gets_md5_hash() {
    let shadow = "daemon:*:1::::::\nroot:!!:19000:0:99999:7:::\n";
    let mut fs = MemFs::debian_like_with_shadow(shadow);

    inject(&mut fs, &password_request("old-guest", HashMethod::Md5)).unwrap();

    let hash = root_hash(&fs);
    assert!(hash.starts_with("$1$"), "{hash}");
    assert_hash_of(&hash, "old-guest", HashMethod::Md5);
    assert_eq!(
        text(&fs, "/etc/shadow"),
        format!("daemon:*:1::::::\nroot:{hash}:19000:0:99999:7:::\n")
    );
}

#[test]
fn crlf_shadow_keeps_carriage_returns() {
    let shadow = "root:*:19000:0:99999:7:::\r\nalice:!:19000::::::\r\n";
    let mut fs = MemFs::debian_like_with_shadow(shadow);

    inject(&mut fs, &password_request("pw", HashMethod::Sha512)).unwrap();

    let hash = root_hash(&fs);
    assert_eq!(
        text(&fs, "/etc/shadow"),
        format!("root:{hash}:19000:0:99999:7:::\r\nalice:!:19000::::::\r\n")
    );
}

#[test]
fn root_missing_from_shadow_writes_nothing() {
    let mut fs = MemFs::debian_like_with_shadow("daemon:*:1::::::\n");
    let before = fs.snapshot();
    let mut request = password_request("pw", HashMethod::Sha512);
    request.ssh_key = Some(ed25519_key(1, ""));

    let err = inject(&mut fs, &request).unwrap_err();

    let InjectError::Planning { item, source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert_eq!(*item, ItemKind::Password);
    let ItemError::NoRootEntry { path, .. } = &**source else {
        panic!("expected a missing root entry, got {source:?}");
    };
    assert_eq!(path.as_str(), "/etc/shadow");
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn missing_shadow_names_the_file() {
    let mut fs = MemFs::debian_like();
    fs.remove_file(&path("/etc/shadow")).unwrap();
    let before = fs.snapshot();

    let err = inject(&mut fs, &password_request("pw", HashMethod::Sha512)).unwrap_err();

    let message = std::error::Error::source(&err).unwrap().to_string();
    assert!(message.contains("/etc/shadow"), "{message}");
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn shadow_write_failing_halfway_keeps_old_shadow() {
    let mut fs = MemFs::debian_like();
    fs.inject_fault(
        Fault::new(MemOp::WriteFile, |path| VfsError::NoSpace {
            path: path.clone(),
        })
        .at(path("/etc/shadow"))
        .after_bytes(10),
    );

    let err = inject(&mut fs, &password_request("pw", HashMethod::Sha512)).unwrap_err();

    assert!(matches!(
        err,
        InjectError::Applying {
            item: ItemKind::Password,
            ..
        }
    ));
    assert_eq!(text(&fs, "/etc/shadow"), SHADOW);
}

// --- Network, metadata and files -----------------------------------------------------

#[test]
fn network_creates_dir_and_interfaces() {
    let mut fs = MemFs::debian_like();
    let request = Request {
        network: Some(b"auto eth0\niface eth0 inet dhcp\n".to_vec()),
        ..Request::default()
    };

    inject(&mut fs, &request).unwrap();

    let dir = fs.node("/etc/network").unwrap();
    assert_eq!(dir.kind, MemNodeKind::Directory);
    assert_eq!((dir.mode, dir.uid, dir.gid), (0o755, 0, 0));
    let file = fs.node("/etc/network/interfaces").unwrap();
    assert_eq!(file.mode, 0o644);
    assert_eq!(
        fs.file_contents("/etc/network/interfaces").unwrap(),
        b"auto eth0\niface eth0 inet dhcp\n"
    );
}

#[test]
fn network_replaces_existing_interfaces_keeping_mode() {
    let mut fs = MemFs::debian_like();
    fs.add_file("/etc/network/interfaces", "auto lo\n", 0o600, 0, 0);
    let request = Request {
        network: Some(b"auto eth1\n".to_vec()),
        ..Request::default()
    };

    inject(&mut fs, &request).unwrap();

    assert_eq!(
        fs.file_contents("/etc/network/interfaces").unwrap(),
        b"auto eth1\n"
    );
    assert_eq!(fs.node("/etc/network/interfaces").unwrap().mode, 0o600);
}

#[test]
fn metadata_is_written_to_meta_js() {
    let mut fs = MemFs::debian_like();
    let metadata = br#"{"uuid": "0f8fad5b", "name": "vm1"}"#;
    let request = Request {
        metadata: Some(metadata.to_vec()),
        ..Request::default()
    };

    let report = inject(&mut fs, &request).unwrap();

    assert_eq!(fs.file_contents("/meta.js").unwrap(), metadata);
    assert_eq!(fs.node("/meta.js").unwrap().mode, 0o644);
    assert_eq!(report.items[0].target, "/meta.js");
}

#[test]
fn metadata_not_an_object_writes_nothing() {
    let mut fs = MemFs::debian_like();
    let before = fs.snapshot();
    let request = Request {
        metadata: Some(b"[\"not\", \"an object\"]".to_vec()),
        network: Some(b"auto lo\n".to_vec()),
        ..Request::default()
    };

    let err = inject(&mut fs, &request).unwrap_err();

    assert!(matches!(
        err,
        InjectError::InvalidInput {
            item: ItemKind::Metadata,
            ..
        }
    ));
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn file_parents_are_created() {
    let mut fs = MemFs::debian_like();
    let request = Request {
        files: vec![FileItem {
            guest_path: path("/opt/app/conf/x.cfg"),
            source: FileSource::Bytes(b"port = 80\n".to_vec()),
        }],
        ..Request::default()
    };

    inject(&mut fs, &request).unwrap();

    for dir in ["/opt", "/opt/app", "/opt/app/conf"] {
        let node = fs.node(dir).unwrap();
        assert_eq!(node.kind, MemNodeKind::Directory, "{dir}");
        assert_eq!((node.mode, node.uid, node.gid), (0o755, 0, 0), "{dir}");
    }
    assert_eq!(
        fs.file_contents("/opt/app/conf/x.cfg").unwrap(),
        b"port = 80\n"
    );
}

#[test]
fn host_file_is_copied() {
    let mut fs = MemFs::debian_like();
    let host_file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(host_file.path(), b"#!/bin/sh\necho hello\n").unwrap();
    let request = Request {
        files: vec![FileItem {
            guest_path: path("/usr/local/bin/hello"),
            source: FileSource::HostFile(host_file.path().to_owned()),
        }],
        ..Request::default()
    };

    inject(&mut fs, &request).unwrap();

    assert_eq!(
        fs.file_contents("/usr/local/bin/hello").unwrap(),
        b"#!/bin/sh\necho hello\n"
    );
}

#[test]
fn file_target_that_is_a_directory_writes_nothing() {
    let mut fs = MemFs::debian_like();
    let before = fs.snapshot();
    let request = Request {
        network: Some(b"auto lo\n".to_vec()),
        files: vec![FileItem {
            guest_path: path("/etc/ssh"),
            source: FileSource::Bytes(b"x".to_vec()),
        }],
        ..Request::default()
    };

    let err = inject(&mut fs, &request).unwrap_err();

    let InjectError::Planning { source, target, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert_eq!(target, "/etc/ssh");
    assert!(
        matches!(**source, ItemError::IsADirectory { .. }),
        "{source:?}"
    );
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn file_under_a_file_writes_nothing() {
    let mut fs = MemFs::debian_like();
    let before = fs.snapshot();
    let request = Request {
        files: vec![FileItem {
            guest_path: path("/etc/hostname/sub/x"),
            source: FileSource::Bytes(b"x".to_vec()),
        }],
        ..Request::default()
    };

    let err = inject(&mut fs, &request).unwrap_err();

    let InjectError::Planning { source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    let ItemError::NotADirectory { path } = &**source else {
        panic!("expected a non-directory parent, got {source:?}");
    };
    assert_eq!(path.as_str(), "/etc/hostname");
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn file_where_earlier_file_goes_is_a_conflict() {
    let mut fs = MemFs::debian_like();
    let before = fs.snapshot();
    let request = Request {
        files: vec![
            FileItem {
                guest_path: path("/opt/a"),
                source: FileSource::Bytes(b"file".to_vec()),
            },
            FileItem {
                guest_path: path("/opt/a/b"),
                source: FileSource::Bytes(b"needs /opt/a as a directory".to_vec()),
            },
        ],
        ..Request::default()
    };

    let err = inject(&mut fs, &request).unwrap_err();

    let InjectError::Planning { source, target, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert_eq!(target, "/opt/a/b");
    assert!(
        matches!(**source, ItemError::NotADirectory { .. }),
        "{source:?}"
    );
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn file_written_twice_is_a_conflict() {
    let mut fs = MemFs::debian_like();
    let request = Request {
        password: Some(Password::new("pw".into())),
        files: vec![FileItem {
            guest_path: path("/etc/shadow"),
            source: FileSource::Bytes(b"root::0::::::\n".to_vec()),
        }],
        ..Request::default()
    };

    let err = inject(&mut fs, &request).unwrap_err();

    let InjectError::Planning { item, source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert_eq!(*item, ItemKind::Files);
    assert!(
        matches!(**source, ItemError::ConflictingWrite { .. }),
        "{source:?}"
    );
    assert_eq!(text(&fs, "/etc/shadow"), SHADOW);
}

#[test]
fn small_filesystem_fails_planning() {
    let fs = MemFs::debian_like();
    let used = fs.used_bytes();
    let mut small = MemFs::with_capacity(used + 100);
    for (path, node) in fs.snapshot() {
        small.try_add_node(&path, node);
    }
    let before = small.snapshot();
    let request = Request {
        files: vec![FileItem {
            guest_path: path("/big"),
            source: FileSource::Bytes(vec![0; 101]),
        }],
        ..Request::default()
    };

    let err = inject(&mut small, &request).unwrap_err();

    let InjectError::Planning { source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert!(
        matches!(
            **source,
            ItemError::NotEnoughSpace {
                needed: 101,
                available: 100,
                ..
            }
        ),
        "{source:?}"
    );
    assert_eq!(small.snapshot(), before);
}

// --- Whole requests ------------------------------------------------------------------

fn full_request() -> Request {
    Request {
        ssh_key: Some(ed25519_key(1, "admin@host")),
        password: Some(Password::new("s3cret".into())),
        network: Some(b"auto eth0\niface eth0 inet dhcp\n".to_vec()),
        metadata: Some(br#"{"uuid": "1"}"#.to_vec()),
        files: vec![FileItem {
            guest_path: path("/opt/app/conf/x.cfg"),
            source: FileSource::Bytes(b"x=1\n".to_vec()),
        }],
        ..Request::default()
    }
}

#[test]
fn full_request_reports_every_item_in_order() {
    let mut fs = selinux_guest();

    let report = inject(&mut fs, &full_request()).unwrap();

    let summary: Vec<(ItemKind, &str, &Outcome)> = report
        .items
        .iter()
        .map(|item| (item.kind, item.target.as_str(), &item.outcome))
        .collect();
    assert_eq!(
        summary,
        [
            (
                ItemKind::Key,
                "/root/.ssh/authorized_keys, /etc/rc.local",
                &Outcome::Applied
            ),
            (ItemKind::Password, "/etc/shadow", &Outcome::Applied),
            (
                ItemKind::Network,
                "/etc/network/interfaces",
                &Outcome::Applied
            ),
            (ItemKind::Metadata, "/meta.js", &Outcome::Applied),
            (ItemKind::Files, "/opt/app/conf/x.cfg", &Outcome::Applied),
        ]
    );
}

#[test]
fn full_request_changes_only_its_targets() {
    let mut fs = selinux_guest();
    let before = fs.snapshot();

    inject(&mut fs, &full_request()).unwrap();

    assert_eq!(
        changed_path_texts(&before, &fs.snapshot()),
        [
            "/etc/network",
            "/etc/network/interfaces",
            "/etc/rc.local",
            "/etc/shadow",
            "/meta.js",
            "/opt",
            "/opt/app",
            "/opt/app/conf",
            "/opt/app/conf/x.cfg",
            "/root/.ssh",
            "/root/.ssh/authorized_keys",
        ]
    );
}

#[test]
fn best_effort_failure_becomes_warning() {
    let mut fs = MemFs::debian_like_with_shadow("daemon:*:1::::::\n");
    let mut request = full_request();
    request.best_effort.insert(ItemKind::Password);

    let report = inject(&mut fs, &request).unwrap();

    let Outcome::Warning { reason } = &report.items[1].outcome else {
        panic!("expected a warning, got {:?}", report.items[1]);
    };
    assert!(
        reason.contains("no entry for root in /etc/shadow"),
        "{reason}"
    );
    assert!(!reason.contains("s3cret"), "{reason}");
    assert_eq!(report.warnings().count(), 1);
    assert_eq!(text(&fs, "/etc/shadow"), "daemon:*:1::::::\n");
    assert!(fs.file_contents("/root/.ssh/authorized_keys").is_some());
    assert!(fs.file_contents("/meta.js").is_some());
}

#[test]
fn mandatory_failure_after_best_effort_item_writes_nothing() {
    let mut fs = MemFs::debian_like_with_shadow("daemon:*:1::::::\n");
    let before = fs.snapshot();
    let mut request = full_request();
    request.best_effort.insert(ItemKind::Key);

    let err = inject(&mut fs, &request).unwrap_err();

    assert_eq!(err.item(), Some(ItemKind::Password));
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn plan_lists_steps_without_writing() {
    let mut fs = MemFs::debian_like();
    let before = fs.snapshot();
    let request = full_request();

    let plan = plan(&mut fs, &request).unwrap();

    assert_eq!(fs.snapshot(), before);
    let steps: Vec<String> = plan.items()[0]
        .steps()
        .iter()
        .map(ToString::to_string)
        .collect();
    assert_eq!(steps.len(), 2);
    assert_eq!(steps[0], "create directory /root/.ssh (0700)");
    assert!(
        steps[1].starts_with("write ")
            && steps[1].ends_with("/root/.ssh/authorized_keys (0600 if new)"),
        "{}",
        steps[1]
    );
    let debug = format!("{plan:?}");
    assert!(!debug.contains("ssh-ed25519"), "{debug}");
}

// ----- deferred writes -----

#[test]
fn deferred_writes_are_enabled_after_planning() {
    let mut fs = MemFs::debian_like();
    fs.set_deferred_writes(true);

    let report = inject(&mut fs, &full_request()).unwrap();

    assert!(report
        .items
        .iter()
        .all(|item| item.outcome == Outcome::Applied));
    assert!(!fs.writes_deferred());
    let ops: Vec<MemOp> = fs.calls().iter().map(|(op, _)| *op).collect();
    let enabled_at = ops.iter().position(|op| *op == MemOp::EnableWrites);
    let first_change = ops
        .iter()
        .position(|op| matches!(op, MemOp::CreateDirAll | MemOp::WriteFile));
    assert!(enabled_at.is_some(), "{ops:?}");
    assert!(enabled_at < first_change, "{ops:?}");
}

#[test]
fn planning_failure_keeps_writes_deferred() {
    let mut fs = MemFs::debian_like();
    fs.add_file(
        "/etc/shadow",
        "daemon:*:19000:0:99999:7:::\n",
        0o640,
        0,
        SHADOW_GID,
    );
    fs.set_deferred_writes(true);
    let before = fs.snapshot();

    let err = inject(&mut fs, &full_request()).unwrap_err();

    assert_eq!(err.item(), Some(ItemKind::Password));
    assert!(fs.writes_deferred());
    assert!(
        !fs.calls().iter().any(|(op, _)| *op == MemOp::EnableWrites),
        "{:?}",
        fs.calls()
    );
    assert_eq!(fs.snapshot(), before);
}

#[test]
fn unchanged_request_keeps_writes_deferred() {
    let mut fs = MemFs::debian_like();
    fs.add_file("/meta.js", r#"{"uuid": "1"}"#, 0o644, 0, 0);
    fs.set_deferred_writes(true);
    let request = Request {
        metadata: Some(br#"{"uuid": "1"}"#.to_vec()),
        ..Request::default()
    };

    let report = inject(&mut fs, &request).unwrap();

    assert!(
        matches!(report.items[0].outcome, Outcome::Unchanged { .. }),
        "{report:?}"
    );
    assert!(fs.writes_deferred());
    assert!(
        !fs.calls().iter().any(|(op, _)| *op == MemOp::EnableWrites),
        "{:?}",
        fs.calls()
    );
}

#[test]
fn read_only_guest_fails_at_enable_writes() {
    let mut fs = MemFs::debian_like();
    fs.set_read_only(true);
    let before = fs.snapshot();

    let err = inject(&mut fs, &full_request()).unwrap_err();

    let InjectError::EnablingWrites { source } = &err else {
        panic!("expected an enable_writes error, got {err:?}");
    };
    assert!(matches!(source, VfsError::ReadOnly { .. }), "{source:?}");
    assert_eq!(fs.snapshot(), before);
}
