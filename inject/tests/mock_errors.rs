//! Error paths of planning and applying, on a mocked `GuestFs` whose calls fail on demand:
//! failing reads, writes that stop halfway, a failing `set_mode`, too little free space, a
//! failing `enable_writes`.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Read;
use std::sync::{Arc, Mutex};

use inject::{
    inject, FileItem, FileSource, InjectError, ItemError, ItemKind, Outcome, Password, Request,
};
use mockall::predicate::{always, eq, function};
use vfs_core::{FileKind, GuestFs, GuestPath, Metadata, MountInfo, VfsError};

mockall::mock! {
    pub Fs {}

    impl GuestFs for Fs {
        fn backend_name(&self) -> &'static str;
        fn mounts(&self) -> Vec<MountInfo>;
        fn fs_type(&mut self, path: &GuestPath) -> vfs_core::Result<String>;
        fn exists(&mut self, path: &GuestPath) -> vfs_core::Result<bool>;
        fn metadata(&mut self, path: &GuestPath) -> vfs_core::Result<Metadata>;
        fn symlink_metadata(&mut self, path: &GuestPath) -> vfs_core::Result<Metadata>;
        fn read_file(&mut self, path: &GuestPath) -> vfs_core::Result<Vec<u8>>;
        fn create_dir_all(&mut self, path: &GuestPath, mode: u32) -> vfs_core::Result<()>;
        fn write_file(
            &mut self,
            path: &GuestPath,
            contents: &mut dyn Read,
            create_mode: u32,
        ) -> vfs_core::Result<u64>;
        fn append_file(
            &mut self,
            path: &GuestPath,
            data: &[u8],
            create_mode: u32,
        ) -> vfs_core::Result<()>;
        fn set_mode(&mut self, path: &GuestPath, mode: u32) -> vfs_core::Result<()>;
        fn set_owner_ids(
            &mut self,
            path: &GuestPath,
            uid: Option<u32>,
            gid: Option<u32>,
        ) -> vfs_core::Result<()>;
        fn symlink(&mut self, target: &str, link: &GuestPath) -> vfs_core::Result<()>;
        fn remove_file(&mut self, path: &GuestPath) -> vfs_core::Result<()>;
        fn xattrs(&mut self, path: &GuestPath) -> vfs_core::Result<Vec<(String, Vec<u8>)>>;
        fn set_xattr(&mut self, path: &GuestPath, name: &str, value: &[u8]) -> vfs_core::Result<()>;
        fn free_space(&mut self, path: &GuestPath) -> vfs_core::Result<u64>;
        fn enable_writes(&mut self) -> vfs_core::Result<()>;
        fn sync(&mut self) -> vfs_core::Result<()>;
        fn close(self: Box<Self>) -> vfs_core::Result<()>;
    }
}

const PASSWD: &[u8] = b"root:x:0:0:root:/root:/bin/bash\n";
const SHADOW: &[u8] = b"root:*:19000:0:99999:7:::\n";

fn path(text: &str) -> GuestPath {
    GuestPath::new(text).unwrap()
}

fn ed25519_key() -> String {
    let mut blob = Vec::new();
    for field in [&b"ssh-ed25519"[..], &[7u8; 32][..]] {
        blob.extend_from_slice(&u32::try_from(field.len()).unwrap().to_be_bytes());
        blob.extend_from_slice(field);
    }
    use base64::Engine;
    let body = base64::engine::general_purpose::STANDARD.encode(blob);
    format!("ssh-ed25519 {body} test@host")
}

fn metadata(kind: FileKind, mode: u32, size: u64) -> Metadata {
    Metadata {
        kind,
        mode,
        uid: 0,
        gid: 0,
        size,
    }
}

fn not_found(path: &GuestPath) -> VfsError {
    VfsError::NotFound { path: path.clone() }
}

/// The paths a mocked guest wrote or created, in call order, with `enable writes` where
/// `enable_writes` was called.
type WriteLog = Arc<Mutex<Vec<String>>>;

/// A small guest tree that serves the read-only calls and records writes.
///
/// Tests set their own failing expectations on the mock first. Mockall tries expectations
/// in the order they were set, so the ones added by [`Guest::install`] only handle the
/// calls the test left alone.
struct Guest {
    files: BTreeMap<String, (Vec<u8>, u32)>,
    dirs: BTreeSet<String>,
    free_space: u64,
}

impl Guest {
    /// Returns a guest with `/etc`, `/root`, `/etc/passwd` and `/etc/shadow`.
    fn debian() -> Self {
        let mut guest = Guest {
            files: BTreeMap::new(),
            dirs: ["/", "/etc", "/root"].map(str::to_owned).into(),
            free_space: 1 << 30,
        };
        guest.file("/etc/passwd", PASSWD, 0o644);
        guest.file("/etc/shadow", SHADOW, 0o640);
        guest
    }

    fn file(&mut self, path: &str, contents: &[u8], mode: u32) -> &mut Self {
        self.files
            .insert(path.to_owned(), (contents.to_vec(), mode));
        self
    }

    fn dir(&mut self, path: &str) -> &mut Self {
        self.dirs.insert(path.to_owned());
        self
    }

    /// Adds the fallback expectations and returns the log of writes.
    fn install(&self, mock: &mut MockFs) -> WriteLog {
        let log = WriteLog::default();
        let files = Arc::new(self.files.clone());
        let dirs = Arc::new(self.dirs.clone());

        mock.expect_mounts().return_const(vec![MountInfo {
            mount_point: GuestPath::root(),
            source: "/dev/sda1".to_owned(),
            fs_type: "ext4".to_owned(),
        }]);
        let free_space = self.free_space;
        mock.expect_free_space().returning(move |_| Ok(free_space));

        let (lookup_files, lookup_dirs) = (files.clone(), dirs.clone());
        let lookup = move |path: &GuestPath| -> vfs_core::Result<Metadata> {
            if lookup_dirs.contains(path.as_str()) {
                return Ok(metadata(FileKind::Directory, 0o755, 4096));
            }
            match lookup_files.get(path.as_str()) {
                Some((contents, mode)) => {
                    Ok(metadata(FileKind::File, *mode, contents.len() as u64))
                }
                None => Err(not_found(path)),
            }
        };
        let symlink_lookup = lookup.clone();
        mock.expect_metadata().returning(lookup);
        mock.expect_symlink_metadata().returning(symlink_lookup);

        let (exists_files, exists_dirs) = (files.clone(), dirs.clone());
        mock.expect_exists().returning(move |path| {
            Ok(exists_dirs.contains(path.as_str()) || exists_files.contains_key(path.as_str()))
        });
        let read_files = files.clone();
        mock.expect_read_file().returning(move |path| {
            read_files
                .get(path.as_str())
                .map(|(contents, _)| contents.clone())
                .ok_or_else(|| not_found(path))
        });

        let enable_log = log.clone();
        mock.expect_enable_writes().returning(move || {
            enable_log.lock().unwrap().push("enable writes".to_owned());
            Ok(())
        });
        let write_log = log.clone();
        mock.expect_write_file()
            .returning(move |path, contents, _mode| {
                let mut sink = Vec::new();
                let written = contents.read_to_end(&mut sink).unwrap() as u64;
                write_log.lock().unwrap().push(format!("write {path}"));
                Ok(written)
            });
        let dir_log = log.clone();
        mock.expect_create_dir_all().returning(move |path, mode| {
            dir_log
                .lock()
                .unwrap()
                .push(format!("mkdir {path} {mode:o}"));
            Ok(())
        });
        let mode_log = log.clone();
        mock.expect_set_mode().returning(move |path, mode| {
            mode_log
                .lock()
                .unwrap()
                .push(format!("chmod {path} {mode:o}"));
            Ok(())
        });
        mock.expect_append_file().never();
        mock.expect_remove_file().never();
        mock.expect_symlink().never();
        log
    }
}

fn entries(log: &WriteLog) -> Vec<String> {
    log.lock().unwrap().clone()
}

fn network_request() -> Request {
    Request {
        network: Some(b"auto eth0\niface eth0 inet dhcp\n".to_vec()),
        ..Request::default()
    }
}

#[test]
fn failing_set_mode_fails_key_after_write() {
    let mut mock = MockFs::new();
    mock.expect_set_mode()
        .with(eq(path("/etc/rc.local")), eq(0o755))
        .times(1)
        .returning(|path, _| Err(VfsError::ReadOnly { path: path.clone() }));
    let mut guest = Guest::debian();
    guest
        .dir("/etc/selinux")
        .file("/etc/rc.local", b"#!/bin/sh\nexit 0\n", 0o644);
    let log = guest.install(&mut mock);
    let request = Request {
        ssh_key: Some(ed25519_key()),
        ..Request::default()
    };

    let err = inject(&mut mock, &request).unwrap_err();

    let InjectError::Applying {
        item,
        target,
        source,
        report,
    } = err
    else {
        panic!("expected an apply error, got {err:?}");
    };
    assert_eq!(item, ItemKind::Key);
    assert!(target.contains("/etc/rc.local"), "{target}");
    assert!(
        matches!(
            *source,
            ItemError::Guest {
                source: VfsError::ReadOnly { .. }
            }
        ),
        "{source:?}"
    );
    assert!(report.items.is_empty());
    assert_eq!(
        entries(&log),
        [
            "enable writes",
            "mkdir /root/.ssh 700",
            "write /root/.ssh/authorized_keys",
            "write /etc/rc.local"
        ]
    );
}

/// A `tracing` writer that keeps every formatted event in memory.
#[test]
fn failing_shadow_read_writes_nothing() {
    let mut mock = MockFs::new();
    mock.expect_read_file()
        .with(eq(path("/etc/shadow")))
        .returning(|path| {
            Err(VfsError::Io {
                op: "read",
                path: path.clone(),
                source: std::io::Error::other("input/output error"),
            })
        });
    let log = Guest::debian().install(&mut mock);
    let mut request = network_request();
    request.password = Some(Password::new("s3cret".into()));

    let err = inject(&mut mock, &request).unwrap_err();

    assert_eq!(err.item(), Some(ItemKind::Password));
    let InjectError::Planning { source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    let ItemError::Guest {
        source: VfsError::Io { path, .. },
    } = &**source
    else {
        panic!("expected a guest I/O error, got {source:?}");
    };
    assert_eq!(path.as_str(), "/etc/shadow");
    assert!(entries(&log).is_empty(), "{:?}", entries(&log));
}

#[test]
fn write_failing_halfway_stops_mandatory_items() {
    let mut mock = MockFs::new();
    mock.expect_write_file()
        .with(eq(path("/etc/network/interfaces")), always(), always())
        .times(1)
        .returning(|path, contents, _| {
            let mut first_bytes = [0u8; 4];
            contents.read_exact(&mut first_bytes).unwrap();
            Err(VfsError::NoSpace { path: path.clone() })
        });
    let log = Guest::debian().install(&mut mock);
    let mut request = network_request();
    request.metadata = Some(b"{\"uuid\": \"1234\"}".to_vec());
    request.password = Some(Password::new("s3cret".into()));

    let err = inject(&mut mock, &request).unwrap_err();

    assert_eq!(
        err.to_string(),
        "injecting net into /etc/network/interfaces failed; \
         applied before it: password (/etc/shadow)"
    );
    let InjectError::Applying {
        item,
        source,
        report,
        ..
    } = err
    else {
        panic!("expected an apply error, got {err:?}");
    };
    assert_eq!(item, ItemKind::Network);
    assert!(
        matches!(
            *source,
            ItemError::Guest {
                source: VfsError::NoSpace { .. },
                ..
            }
        ),
        "{source:?}"
    );
    assert_eq!(report.items.len(), 1);
    assert_eq!(report.items[0].kind, ItemKind::Password);
    assert_eq!(report.items[0].outcome, Outcome::Applied);
    assert_eq!(
        entries(&log),
        [
            "enable writes",
            "write /etc/shadow",
            "mkdir /etc/network 755"
        ]
    );
}

#[test]
fn write_failing_in_best_effort_item_gives_warning() {
    let mut mock = MockFs::new();
    mock.expect_write_file()
        .with(eq(path("/etc/network/interfaces")), always(), always())
        .times(1)
        .returning(|path, _, _| Err(VfsError::NoSpace { path: path.clone() }));
    let log = Guest::debian().install(&mut mock);
    let mut request = network_request();
    request.metadata = Some(b"{}".to_vec());
    request.best_effort.insert(ItemKind::Network);

    let report = inject(&mut mock, &request).unwrap();

    assert_eq!(report.items.len(), 2);
    let Outcome::Warning { reason } = &report.items[0].outcome else {
        panic!("expected a warning, got {:?}", report.items[0]);
    };
    assert!(reason.contains("no space left"), "{reason}");
    assert_eq!(report.items[1].kind, ItemKind::Metadata);
    assert_eq!(report.items[1].outcome, Outcome::Applied);
    assert_eq!(
        entries(&log),
        ["enable writes", "mkdir /etc/network 755", "write /meta.js"]
    );
}

#[test]
fn too_little_free_space_writes_nothing() {
    let mut mock = MockFs::new();
    let mut guest = Guest::debian();
    guest.free_space = 10;
    let log = guest.install(&mut mock);

    let err = inject(&mut mock, &network_request()).unwrap_err();

    let InjectError::Planning { item, source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert_eq!(*item, ItemKind::Network);
    assert!(
        matches!(
            **source,
            ItemError::NotEnoughSpace {
                needed: 31,
                available: 10,
                ..
            }
        ),
        "{source:?}"
    );
    assert!(entries(&log).is_empty());
}

#[test]
fn failing_enable_writes_writes_nothing() {
    let mut mock = MockFs::new();
    mock.expect_enable_writes().times(1).returning(|| {
        Err(VfsError::Io {
            op: "remounting read-write",
            path: GuestPath::root(),
            source: std::io::Error::other("permission denied"),
        })
    });
    let log = Guest::debian().install(&mut mock);

    let err = inject(&mut mock, &network_request()).unwrap_err();

    let InjectError::EnablingWrites { source } = &err else {
        panic!("expected an enable_writes error, got {err:?}");
    };
    assert!(
        matches!(
            source,
            VfsError::Io {
                op: "remounting read-write",
                ..
            }
        ),
        "{source:?}"
    );
    assert_eq!(err.item(), None);
    assert!(entries(&log).is_empty(), "{:?}", entries(&log));
}

#[test]
fn free_space_is_shared_between_items() {
    let mut mock = MockFs::new();
    let mut guest = Guest::debian();
    // Each file below fits alone, but not both together.
    guest.free_space = 150;
    let log = guest.install(&mut mock);
    let request = Request {
        files: ["/opt/a", "/opt/b"]
            .map(|target| FileItem {
                guest_path: path(target),
                source: FileSource::Bytes(vec![b'x'; 100]),
            })
            .into(),
        best_effort: [ItemKind::Files].into(),
        ..Request::default()
    };

    let report = inject(&mut mock, &request).unwrap();

    assert_eq!(report.items[0].outcome, Outcome::Applied);
    assert!(matches!(report.items[1].outcome, Outcome::Warning { .. }));
    assert_eq!(
        entries(&log),
        ["enable writes", "mkdir /opt 755", "write /opt/a"]
    );
}

#[test]
fn missing_passwd_names_the_file() {
    let mut mock = MockFs::new();
    let mut guest = Guest::debian();
    guest.files.remove("/etc/passwd");
    let log = guest.install(&mut mock);
    let request = Request {
        ssh_key: Some(ed25519_key()),
        ..Request::default()
    };

    let err = inject(&mut mock, &request).unwrap_err();

    let InjectError::Planning { item, source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert_eq!(*item, ItemKind::Key);
    assert!(source.to_string().contains("/etc/passwd"), "{source}");
    assert!(entries(&log).is_empty());
}

#[test]
fn failing_metadata_query_is_a_planning_error() {
    let mut mock = MockFs::new();
    mock.expect_metadata()
        .with(eq(path("/etc/network")))
        .returning(|path| {
            Err(VfsError::Backend {
                op: "stat",
                path: path.clone(),
                message: "appliance crashed".to_owned(),
            })
        });
    let log = Guest::debian().install(&mut mock);

    let err = inject(&mut mock, &network_request()).unwrap_err();

    let InjectError::Planning { source, .. } = &err else {
        panic!("expected a planning error, got {err:?}");
    };
    assert!(
        matches!(
            **source,
            ItemError::Guest {
                source: VfsError::Backend { op: "stat", .. }
            }
        ),
        "{source:?}"
    );
    assert!(entries(&log).is_empty());
}

/// Returns the text of `error` and of each of its causes, outermost first.
fn chain_of(error: &dyn std::error::Error) -> Vec<String> {
    let mut texts = vec![error.to_string()];
    let mut source = error.source();
    while let Some(cause) = source {
        texts.push(cause.to_string());
        source = cause.source();
    }
    texts
}

#[test]
fn planning_error_chain_states_each_fact_once() {
    let mut mock = MockFs::new();
    mock.expect_metadata()
        .with(eq(path("/etc/network")))
        .returning(|path| {
            Err(VfsError::Io {
                op: "reading metadata of",
                path: path.clone(),
                source: std::io::Error::from(std::io::ErrorKind::PermissionDenied),
            })
        });
    Guest::debian().install(&mut mock);

    let err = inject(&mut mock, &network_request()).unwrap_err();

    let chain = chain_of(&err);
    assert_eq!(chain.len(), 3, "{chain:?}");
    assert_eq!(
        chain[0],
        "cannot inject net into /etc/network/interfaces; nothing was written"
    );
    assert_eq!(chain[1], "reading metadata of /etc/network failed");
    assert_eq!(chain[2], "permission denied");
}

#[test]
fn failing_create_dir_names_the_directory() {
    let mut mock = MockFs::new();
    mock.expect_create_dir_all()
        .with(eq(path("/opt/app")), eq(0o755))
        .returning(|path, _| Err(VfsError::ReadOnly { path: path.clone() }));
    let log = Guest::debian().install(&mut mock);
    let request = Request {
        files: vec![FileItem {
            guest_path: path("/opt/app/conf/x.cfg"),
            source: FileSource::Bytes(b"x=1\n".to_vec()),
        }],
        ..Request::default()
    };

    let err = inject(&mut mock, &request).unwrap_err();

    let InjectError::Applying { target, source, .. } = &err else {
        panic!("expected an apply error, got {err:?}");
    };
    assert_eq!(target, "/opt/app/conf/x.cfg");
    let ItemError::Guest {
        source: VfsError::ReadOnly { path },
    } = &**source
    else {
        panic!("expected a read-only error, got {source:?}");
    };
    assert_eq!(path.as_str(), "/opt/app");
    assert_eq!(entries(&log), ["enable writes", "mkdir /opt 755"]);
}

#[test]
fn host_file_is_streamed_to_write_file() {
    // 64 MiB and one byte: more than the largest file `read_file` accepts. The file is
    // sparse, so it costs no disk space.
    const SIZE: u64 = 64 * 1024 * 1024 + 1;
    let host_file = tempfile::NamedTempFile::new().unwrap();
    host_file.as_file().set_len(SIZE).unwrap();

    let mut mock = MockFs::new();
    mock.expect_write_file()
        .with(eq(path("/srv/big.img")), always(), eq(0o644))
        .times(1)
        .returning(|_, contents, _| {
            // Counts the bytes in small chunks, as a backend streaming to the guest would.
            let mut buffer = [0u8; 64 * 1024];
            let mut total = 0u64;
            loop {
                let count = contents.read(&mut buffer).unwrap();
                if count == 0 {
                    return Ok(total);
                }
                total += count as u64;
            }
        });
    let mut guest = Guest::debian();
    guest.dir("/srv");
    guest.install(&mut mock);
    let request = Request {
        files: vec![FileItem {
            guest_path: path("/srv/big.img"),
            source: FileSource::HostFile(host_file.path().to_owned()),
        }],
        ..Request::default()
    };

    let report = inject(&mut mock, &request).unwrap();

    assert_eq!(report.items[0].outcome, Outcome::Applied);
}

#[test]
fn invalid_key_touches_no_guest_file() {
    let mut mock = MockFs::new();
    mock.expect_read_file().never();
    mock.expect_metadata().never();
    let log = Guest::debian().install(&mut mock);
    let request = Request {
        ssh_key: Some("ssh-ed25519 AAAAnotakey".into()),
        network: Some(b"auto lo\n".to_vec()),
        ..Request::default()
    };

    let err = inject(&mut mock, &request).unwrap_err();

    assert!(matches!(
        err,
        InjectError::InvalidInput {
            item: ItemKind::Key,
            ..
        }
    ));
    assert!(entries(&log).is_empty());
}

#[test]
fn planning_error_message_hides_password() {
    let mut mock = MockFs::new();
    let mut guest = Guest::debian();
    guest.file("/etc/shadow", b"daemon:*:1::::::\n", 0o640);
    let log = guest.install(&mut mock);
    let request = Request {
        password: Some(Password::new("VerySecretWord".into())),
        ..Request::default()
    };

    let err = inject(&mut mock, &request).unwrap_err();

    let text = format!("{err} {err:?} {}", std::error::Error::source(&err).unwrap());
    assert!(!text.contains("VerySecretWord"), "{text}");
    assert!(text.contains("/etc/shadow"), "{text}");
    assert!(entries(&log).is_empty());
}

#[test]
fn unchanged_file_is_not_rewritten() {
    let mut mock = MockFs::new();
    mock.expect_write_file()
        .with(
            function(|p: &GuestPath| p.as_str() == "/meta.js"),
            always(),
            always(),
        )
        .never();
    let mut guest = Guest::debian();
    guest.file("/meta.js", b"{\"a\":1}", 0o644);
    let log = guest.install(&mut mock);
    let request = Request {
        metadata: Some(b"{\"a\":1}".to_vec()),
        ..Request::default()
    };

    let report = inject(&mut mock, &request).unwrap();

    assert!(matches!(report.items[0].outcome, Outcome::Unchanged { .. }));
    assert!(entries(&log).is_empty());
}
