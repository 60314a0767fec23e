//! [`MemFs`], a [`GuestFs`] held wholly in memory, for tests of the code that uses the trait.
//!
//! It models directories, regular files and symlinks with modes, owners and extended
//! attributes, and resolves symlinks exactly as the [`GuestFs`] contract defines. Tests can
//! also give it a capacity (for [`VfsError::NoSpace`]), make it read-only or read-only until
//! [`GuestFs::enable_writes`], mark a mount point whose filesystem is not mounted (for
//! [`VfsError::NotMounted`]), and inject faults into chosen calls. Every call is recorded, so a test can check which operations a caller
//! made and in what order.
//!
//! The builder methods ([`MemFs::add_dir`], [`MemFs::add_file`], [`MemFs::add_symlink`])
//! act on literal paths, bypass faults and checks, and panic on misuse, because they
//! arrange test fixtures. The [`GuestFs`] methods behave like a backend.

use std::collections::BTreeMap;
use std::fmt;
use std::io::{self, Read};
use std::sync::{Arc, Mutex, MutexGuard};

use vfs_core::accounts;
use vfs_core::vfs::check_read_size;
use vfs_core::{
    FileKind, GuestFs, GuestPath, Metadata, MountInfo, PathError, Result, VfsError,
    MAX_SYMLINK_FOLLOWS,
};

/// The name [`MemFs`] gives as its backend name.
pub const BACKEND_NAME: &str = "memfs";

/// The filesystem type [`MemFs`] reports for every path.
pub const FS_TYPE: &str = "memfs";

/// The capacity of [`MemFs::new`], in bytes: large enough that no test fills it by accident.
pub const DEFAULT_CAPACITY: u64 = 1 << 40;

/// The permission bits a mode may hold: setuid, setgid, sticky and `rwx` for all three.
const PERMISSION_BITS: u32 = 0o7777;

/// The mode Linux reports for every symlink.
const SYMLINK_MODE: u32 = 0o777;

/// The extended attribute namespaces Linux accepts.
const XATTR_NAMESPACES: [&str; 4] = ["user.", "trusted.", "security.", "system."];

/// One object of a [`MemFs`] tree.
#[derive(Clone, PartialEq, Eq)]
pub struct MemNode {
    /// The object's kind, with its contents or target.
    pub kind: MemNodeKind,
    /// Permission bits (`0o7777` at most); `0o777` for a symlink.
    pub mode: u32,
    /// Owner user id.
    pub uid: u32,
    /// Owner group id.
    pub gid: u32,
    /// Extended attributes by name.
    pub xattrs: BTreeMap<String, Vec<u8>>,
}

/// The kind of a [`MemNode`], with what it holds.
#[derive(Clone, PartialEq, Eq)]
pub enum MemNodeKind {
    /// A directory; its entries are the nodes whose paths lie directly beneath it.
    Directory,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symlink with its target, stored as given.
    Symlink(String),
}

impl fmt::Debug for MemNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {:o} {}:{}",
            self.kind, self.mode, self.uid, self.gid
        )?;
        if !self.xattrs.is_empty() {
            let names: Vec<&str> = self.xattrs.keys().map(String::as_str).collect();
            write!(f, " xattrs {names:?}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for MemNodeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        /// Files longer than this show only their start, so that a failing test stays readable.
        const SHOWN_BYTES: usize = 64;

        match self {
            Self::Directory => f.write_str("dir"),
            Self::Symlink(target) => write!(f, "symlink -> {target:?}"),
            Self::File(contents) if contents.len() <= SHOWN_BYTES => {
                write!(f, "file {:?}", String::from_utf8_lossy(contents))
            }
            Self::File(contents) => write!(
                f,
                "file {:?}... ({} bytes)",
                String::from_utf8_lossy(&contents[..SHOWN_BYTES]),
                contents.len()
            ),
        }
    }
}

/// A [`GuestFs`] operation, for recorded calls and injected faults.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MemOp {
    /// [`GuestFs::fs_type`].
    FsType,
    /// [`GuestFs::exists`].
    Exists,
    /// [`GuestFs::metadata`].
    Metadata,
    /// [`GuestFs::symlink_metadata`].
    SymlinkMetadata,
    /// [`GuestFs::read_file`].
    ReadFile,
    /// [`GuestFs::create_dir_all`].
    CreateDirAll,
    /// [`GuestFs::write_file`].
    WriteFile,
    /// [`GuestFs::append_file`].
    AppendFile,
    /// [`GuestFs::set_mode`].
    SetMode,
    /// [`GuestFs::set_owner_ids`].
    SetOwnerIds,
    /// [`GuestFs::set_owner`]; it also records the [`MemOp::ReadFile`] of the account
    /// files and the [`MemOp::SetOwnerIds`] it makes.
    SetOwner,
    /// [`GuestFs::symlink`], recorded with the link's path.
    Symlink,
    /// [`GuestFs::remove_file`].
    RemoveFile,
    /// [`GuestFs::xattrs`].
    Xattrs,
    /// [`GuestFs::set_xattr`].
    SetXattr,
    /// [`GuestFs::free_space`].
    FreeSpace,
    /// [`GuestFs::enable_writes`], recorded with the root path.
    EnableWrites,
    /// [`GuestFs::sync`], recorded with the root path.
    Sync,
    /// [`GuestFs::close`], recorded with the root path.
    Close,
}

/// A failure injected into matching calls of a [`MemFs`].
///
/// By default it fails every call of its operation, at any path, before the call changes
/// anything. [`Fault::at`] narrows it to one path (compared with the path the caller
/// passes, before symlinks are followed), [`Fault::on_call`] to one call, and
/// [`Fault::after_bytes`] makes a write fail halfway.
#[derive(Debug, Clone)]
pub struct Fault {
    op: MemOp,
    path: Option<GuestPath>,
    only_call: Option<usize>,
    after_bytes: Option<u64>,
    error: fn(&GuestPath) -> VfsError,
    matched_calls: usize,
}

impl Fault {
    /// Builds a fault that makes every call of `op` fail with `error(path)`.
    pub fn new(op: MemOp, error: fn(&GuestPath) -> VfsError) -> Self {
        Self {
            op,
            path: None,
            only_call: None,
            after_bytes: None,
            error,
            matched_calls: 0,
        }
    }

    /// Limits the fault to calls whose path argument is `path`.
    pub fn at(mut self, path: GuestPath) -> Self {
        self.path = Some(path);
        self
    }

    /// Limits the fault to the `n`th matching call (1-based), counted from when the fault
    /// is added; the calls before and after it succeed.
    pub fn on_call(mut self, n: usize) -> Self {
        self.only_call = Some(n);
        self
    }

    /// Makes a [`MemOp::WriteFile`] fault fail after `bytes` bytes have been read from the
    /// caller's reader, leaving the old contents, and a [`MemOp::AppendFile`] fault fail
    /// after appending the first `bytes` bytes, keeping them as a real short write would.
    /// Other operations ignore it.
    pub fn after_bytes(mut self, bytes: u64) -> Self {
        self.after_bytes = Some(bytes);
        self
    }
}

/// A fault that fires partway through a write.
struct HalfwayFault {
    after_bytes: u64,
    error: VfsError,
}

/// The end of a path once symlinks are followed.
struct Resolved {
    /// The path with every symlink replaced by its target.
    path: GuestPath,
    /// Whether an object exists there; only the last name may be missing.
    exists: bool,
}

/// A guest filesystem held in memory. See the module documentation.
#[derive(Clone)]
pub struct MemFs {
    nodes: BTreeMap<GuestPath, MemNode>,
    capacity: u64,
    read_only: bool,
    /// True from [`MemFs::set_deferred_writes`] until [`GuestFs::enable_writes`].
    writes_deferred: bool,
    unmounted: Vec<GuestPath>,
    faults: Vec<Fault>,
    calls: Vec<(MemOp, GuestPath)>,
}

impl fmt::Debug for MemFs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemFs")
            .field("nodes", &self.nodes)
            .field("capacity", &self.capacity)
            .field("read_only", &self.read_only)
            .field("writes_deferred", &self.writes_deferred)
            .field("unmounted", &self.unmounted)
            .field("faults", &self.faults.len())
            .finish()
    }
}

impl Default for MemFs {
    fn default() -> Self {
        Self::new()
    }
}

impl MemFs {
    /// Creates a filesystem holding only an empty root directory (mode `0755`, owned by
    /// `0:0`), with [`DEFAULT_CAPACITY`].
    pub fn new() -> Self {
        Self::with_capacity(DEFAULT_CAPACITY)
    }

    /// Creates an empty filesystem like [`MemFs::new`] that stores at most `bytes` bytes of
    /// file contents.
    ///
    /// Only regular file contents count; directories, symlinks and extended attributes take
    /// no space. While [`GuestFs::write_file`] replaces a file, the old and the new contents
    /// both count, as with the temporary file of an atomic replace on disk.
    pub fn with_capacity(bytes: u64) -> Self {
        let mut nodes = BTreeMap::new();
        nodes.insert(GuestPath::root(), directory_node(0o755, 0, 0));
        Self {
            nodes,
            capacity: bytes,
            read_only: false,
            writes_deferred: false,
            unmounted: Vec::new(),
            faults: Vec::new(),
            calls: Vec::new(),
        }
    }

    /// Adds a directory at the literal path `path`, or updates the mode and owner of the
    /// directory already there. Missing parents are created with mode `0755`, owned by
    /// `0:0`.
    ///
    /// # Panics
    ///
    /// When `path` is invalid, or it or a parent is a file or symlink.
    pub fn add_dir(&mut self, path: &str, mode: u32, uid: u32, gid: u32) -> &mut Self {
        let path = parse_fixture_path(path);
        self.add_fixture_parents(&path);
        match self.nodes.get_mut(&path) {
            Some(node) if node.kind == MemNodeKind::Directory => {
                node.mode = mode & PERMISSION_BITS;
                node.uid = uid;
                node.gid = gid;
            }
            Some(node) => panic!("cannot add directory {path}: it is {:?}", node.kind),
            None => {
                self.nodes
                    .insert(path, directory_node(mode & PERMISSION_BITS, uid, gid));
            }
        }
        self
    }

    /// Adds a regular file at the literal path `path`, replacing a file already there and
    /// dropping its extended attributes. Missing parents are created as by
    /// [`MemFs::add_dir`]. The contents count towards the capacity even past it.
    ///
    /// # Panics
    ///
    /// When `path` is invalid, or it is a directory or symlink, or a parent is not a
    /// directory.
    pub fn add_file(
        &mut self,
        path: &str,
        contents: impl Into<Vec<u8>>,
        mode: u32,
        uid: u32,
        gid: u32,
    ) -> &mut Self {
        let path = parse_fixture_path(path);
        self.add_fixture_parents(&path);
        if let Some(node) = self.nodes.get(&path) {
            assert!(
                matches!(node.kind, MemNodeKind::File(_)),
                "cannot add file {path}: it is {:?}",
                node.kind
            );
        }
        let node = MemNode {
            kind: MemNodeKind::File(contents.into()),
            mode: mode & PERMISSION_BITS,
            uid,
            gid,
            xattrs: BTreeMap::new(),
        };
        self.nodes.insert(path, node);
        self
    }

    /// Adds a symlink at the literal path `path` pointing to `target`, stored as given and
    /// owned by `0:0`. Missing parents are created as by [`MemFs::add_dir`].
    ///
    /// # Panics
    ///
    /// When `path` is invalid or already exists, when a parent is not a directory, or when
    /// `target` is empty or contains a NUL byte.
    pub fn add_symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let path = parse_fixture_path(path);
        assert!(
            !target.is_empty() && !target.contains('\0'),
            "invalid symlink target {target:?} for {path}"
        );
        self.add_fixture_parents(&path);
        assert!(
            !self.nodes.contains_key(&path),
            "cannot add symlink {path}: it already exists"
        );
        self.nodes.insert(path, symlink_node(target));
        self
    }

    /// Adds `node` at the literal path `path` and returns true, or returns false and changes
    /// nothing when something is already there or a parent is not a directory. Missing
    /// parents are created as by [`MemFs::add_dir`].
    pub fn try_add_node(&mut self, path: &GuestPath, node: MemNode) -> bool {
        if self.nodes.contains_key(path) {
            return false;
        }
        let Some(parent) = path.parent() else {
            return false;
        };
        let ancestors = parent.ancestors_from_root();
        let blocked = ancestors.iter().any(|ancestor| {
            self.nodes
                .get(ancestor)
                .is_some_and(|found| found.kind != MemNodeKind::Directory)
        });
        if blocked {
            return false;
        }

        for ancestor in ancestors {
            self.nodes
                .entry(ancestor)
                .or_insert_with(|| directory_node(0o755, 0, 0));
        }
        self.nodes.insert(path.clone(), node);
        true
    }

    /// Sets one extended attribute on the node at the literal path `path`.
    ///
    /// # Panics
    ///
    /// When no node exists at `path`.
    pub fn add_xattr(&mut self, path: &str, name: &str, value: &[u8]) -> &mut Self {
        let path = parse_fixture_path(path);
        let node = self
            .nodes
            .get_mut(&path)
            .unwrap_or_else(|| panic!("cannot set xattr on {path}: it does not exist"));
        node.xattrs.insert(name.to_owned(), value.to_vec());
        self
    }

    /// Marks `path` as a mount point whose filesystem is not mounted, so that every change
    /// beneath it fails with [`VfsError::NotMounted`]. The directory is created as by
    /// [`MemFs::add_dir`] when missing, with mode `0755`.
    ///
    /// # Panics
    ///
    /// When `path` is invalid or is not a directory.
    pub fn add_unmounted_mount_point(&mut self, path: &str) -> &mut Self {
        let mount_point = parse_fixture_path(path);
        if !self.nodes.contains_key(&mount_point) {
            self.add_dir(path, 0o755, 0, 0);
        }
        assert!(
            self.nodes[&mount_point].kind == MemNodeKind::Directory,
            "mount point {mount_point} is not a directory"
        );
        self.unmounted.push(mount_point);
        self
    }

    /// Makes every later change fail with [`VfsError::ReadOnly`], or allows changes again.
    /// [`GuestFs::enable_writes`] then fails too, as on an image opened read-only.
    pub fn set_read_only(&mut self, read_only: bool) -> &mut Self {
        self.read_only = read_only;
        self
    }

    /// Makes every later change fail with [`VfsError::ReadOnly`] until
    /// [`GuestFs::enable_writes`] is called, as a backend opened with
    /// [`vfs_core::registry::OpenOptions::defer_writes`] does; `false` allows changes at
    /// once.
    pub fn set_deferred_writes(&mut self, deferred: bool) -> &mut Self {
        self.writes_deferred = deferred;
        self
    }

    /// Returns true while changes wait for [`GuestFs::enable_writes`].
    pub fn writes_deferred(&self) -> bool {
        self.writes_deferred
    }

    /// Adds a fault (see [`Fault`]). Faults are checked in the order they were added, and
    /// the first one that fires decides the error.
    pub fn inject_fault(&mut self, fault: Fault) -> &mut Self {
        self.faults.push(fault);
        self
    }

    /// Makes every call of `op` fail with `error(path)`, at `path` only when given.
    pub fn fail_on(
        &mut self,
        op: MemOp,
        path: Option<GuestPath>,
        error: fn(&GuestPath) -> VfsError,
    ) -> &mut Self {
        let mut fault = Fault::new(op, error);
        fault.path = path;
        self.inject_fault(fault)
    }

    /// Removes every injected fault.
    pub fn clear_faults(&mut self) -> &mut Self {
        self.faults.clear();
        self
    }

    /// Returns every [`GuestFs`] call made so far, with the path it was given, oldest first.
    pub fn calls(&self) -> &[(MemOp, GuestPath)] {
        &self.calls
    }

    /// Returns a copy of every node by path, to compare before and after an operation.
    pub fn snapshot(&self) -> BTreeMap<GuestPath, MemNode> {
        self.nodes.clone()
    }

    /// Returns the node at the literal path `path`, without following symlinks.
    ///
    /// # Panics
    ///
    /// When `path` is not a valid guest path.
    pub fn node(&self, path: &str) -> Option<&MemNode> {
        self.nodes.get(&parse_fixture_path(path))
    }

    /// Returns the contents of the regular file at the literal path `path`, or `None` when
    /// there is no regular file there.
    ///
    /// # Panics
    ///
    /// When `path` is not a valid guest path.
    pub fn file_contents(&self, path: &str) -> Option<&[u8]> {
        match &self.node(path)?.kind {
            MemNodeKind::File(contents) => Some(contents),
            _ => None,
        }
    }

    /// Returns the bytes of file contents stored.
    pub fn used_bytes(&self) -> u64 {
        self.nodes
            .values()
            .map(|node| match &node.kind {
                MemNodeKind::File(contents) => contents.len() as u64,
                _ => 0,
            })
            .sum()
    }

    /// Wraps this filesystem so that a test keeps a handle to it after giving it away.
    pub fn into_shared(self) -> SharedMemFs {
        SharedMemFs(Arc::new(Mutex::new(self)))
    }

    /// Records a call and returns the error of a fault that fires on it, or the halfway
    /// fault that a write must apply.
    fn begin(&mut self, op: MemOp, path: &GuestPath) -> Result<Option<HalfwayFault>> {
        self.calls.push((op, path.clone()));

        let mut fired = None;
        for fault in &mut self.faults {
            if fault.op != op || fault.path.as_ref().is_some_and(|only| only != path) {
                continue;
            }
            fault.matched_calls += 1;
            let fires = fault.only_call.is_none_or(|n| n == fault.matched_calls);
            if fires && fired.is_none() {
                fired = Some((fault.after_bytes, (fault.error)(path)));
            }
        }

        match fired {
            None => Ok(None),
            Some((Some(after_bytes), error))
                if matches!(op, MemOp::WriteFile | MemOp::AppendFile) =>
            {
                Ok(Some(HalfwayFault { after_bytes, error }))
            }
            Some((_, error)) => Err(error),
        }
    }

    fn check_writable(&self, path: &GuestPath) -> Result<()> {
        if self.read_only || self.writes_deferred {
            return Err(VfsError::ReadOnly { path: path.clone() });
        }
        Ok(())
    }

    /// Rejects a change at `target` (where `path` leads) beneath an unmounted mount point.
    fn check_mounted(&self, path: &GuestPath, target: &GuestPath) -> Result<()> {
        let beneath =
            |mount_point: &&GuestPath| target != *mount_point && target.starts_with(mount_point);
        match self.unmounted.iter().find(beneath) {
            Some(mount_point) => Err(VfsError::NotMounted {
                path: path.clone(),
                mount_point: mount_point.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Follows symlinks in `path` as the [`GuestFs`] contract defines: a target is read
    /// relative to the directory of its link, an absolute target starts at the guest root,
    /// and `..` stops at the guest root. `..` is applied to the directory reached so far, as
    /// the kernel does, so a `..` after a symlink leaves the link's target.
    fn resolve(&self, path: &GuestPath, follow_last: bool) -> Result<Resolved> {
        // Names still to walk, the next one last.
        let mut pending: Vec<String> = path.components().rev().map(str::to_owned).collect();
        let mut current = GuestPath::root();
        let mut follows = 0;

        while let Some(name) = pending.pop() {
            // `.` and `..` come only from symlink targets, and `current` is always a
            // directory. A `.` stays in `pending` until here so that `missing/.` is
            // NotFound rather than a path to create, as in the kernel.
            if name == "." {
                continue;
            }
            if name == ".." {
                current = current.parent().unwrap_or_else(GuestPath::root);
                continue;
            }
            let here = current.join(&name)?;
            let is_last = pending.is_empty();

            let Some(node) = self.nodes.get(&here) else {
                if is_last {
                    return Ok(Resolved {
                        path: here,
                        exists: false,
                    });
                }
                return Err(VfsError::NotFound { path: path.clone() });
            };

            match &node.kind {
                MemNodeKind::Directory => current = here,
                MemNodeKind::File(_) if is_last => current = here,
                MemNodeKind::File(_) => return Err(VfsError::NotADirectory { path: path.clone() }),
                MemNodeKind::Symlink(_) if is_last && !follow_last => current = here,
                MemNodeKind::Symlink(target) => {
                    follows += 1;
                    if follows > MAX_SYMLINK_FOLLOWS {
                        return Err(VfsError::SymlinkLoop { path: path.clone() });
                    }
                    if target.starts_with('/') {
                        current = GuestPath::root();
                    }
                    let names = target.split('/').filter(|name| !name.is_empty());
                    pending.extend(names.rev().map(str::to_owned));
                }
            }
        }

        Ok(Resolved {
            path: current,
            exists: true,
        })
    }

    /// Resolves `path`, following a symlink in the last name only when `follow_last`, and
    /// returns the real path and the node there, or [`VfsError::NotFound`].
    fn existing(&self, path: &GuestPath, follow_last: bool) -> Result<(GuestPath, &MemNode)> {
        let resolved = self.resolve(path, follow_last)?;
        match self.nodes.get(&resolved.path) {
            Some(node) => Ok((resolved.path, node)),
            None => Err(VfsError::NotFound { path: path.clone() }),
        }
    }

    /// Resolves `path` for a change of an existing node and returns its real path.
    fn existing_for_change(&self, path: &GuestPath) -> Result<GuestPath> {
        self.check_writable(path)?;
        let (target, _) = self.existing(path, true)?;
        self.check_mounted(path, &target)?;
        Ok(target)
    }

    fn node_mut(&mut self, target: &GuestPath) -> &mut MemNode {
        self.nodes
            .get_mut(target)
            .expect("a resolved path names an existing node")
    }

    fn free_bytes(&self) -> u64 {
        self.capacity.saturating_sub(self.used_bytes())
    }

    /// Adds the missing parents of a fixture path as plain directories.
    fn add_fixture_parents(&mut self, path: &GuestPath) {
        let Some(parent) = path.parent() else {
            return;
        };
        for ancestor in parent.ancestors_from_root() {
            match self.nodes.get(&ancestor) {
                Some(node) => assert!(
                    node.kind == MemNodeKind::Directory,
                    "cannot add {path}: {ancestor} is {:?}",
                    node.kind
                ),
                None => {
                    self.nodes.insert(ancestor, directory_node(0o755, 0, 0));
                }
            }
        }
    }

    /// Creates a directory or follows into it, for each name of `path`; see
    /// [`GuestFs::create_dir_all`].
    fn create_dirs(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        for ancestor in path.ancestors_from_root().into_iter().skip(1) {
            let resolved = self.resolve(&ancestor, true)?;
            if resolved.exists {
                if self.nodes[&resolved.path].kind != MemNodeKind::Directory {
                    return Err(VfsError::NotADirectory { path: ancestor });
                }
                continue;
            }
            self.check_mounted(&ancestor, &resolved.path)?;
            self.nodes
                .insert(resolved.path, directory_node(mode & PERMISSION_BITS, 0, 0));
        }
        Ok(())
    }

    /// Reads the new contents of a file from `contents`, reading at most one byte past the
    /// free space so that a full filesystem stops the read early.
    fn read_new_contents(
        &self,
        path: &GuestPath,
        contents: &mut dyn Read,
        halfway: Option<HalfwayFault>,
    ) -> Result<Vec<u8>> {
        let free = self.free_bytes();
        let read_limit = free.saturating_add(1);
        let no_space = || VfsError::NoSpace { path: path.clone() };
        let mut data = Vec::new();

        if let Some(fault) = halfway {
            read_up_to(contents, fault.after_bytes.min(read_limit), &mut data, path)?;
            if data.len() as u64 > free {
                return Err(no_space());
            }
            return Err(fault.error);
        }

        read_up_to(contents, read_limit, &mut data, path)?;
        if data.len() as u64 > free {
            return Err(no_space());
        }
        Ok(data)
    }
}

impl GuestFs for MemFs {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn mounts(&self) -> Vec<MountInfo> {
        vec![MountInfo {
            mount_point: GuestPath::root(),
            source: "memory".to_owned(),
            fs_type: FS_TYPE.to_owned(),
        }]
    }

    fn fs_type(&mut self, path: &GuestPath) -> Result<String> {
        self.begin(MemOp::FsType, path)?;
        self.existing(path, true)?;
        Ok(FS_TYPE.to_owned())
    }

    fn exists(&mut self, path: &GuestPath) -> Result<bool> {
        self.begin(MemOp::Exists, path)?;
        match self.resolve(path, true) {
            Ok(resolved) => Ok(resolved.exists),
            Err(VfsError::NotFound { .. } | VfsError::NotADirectory { .. }) => Ok(false),
            Err(error) => Err(error),
        }
    }

    fn metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        self.begin(MemOp::Metadata, path)?;
        let (_, node) = self.existing(path, true)?;
        Ok(metadata_of(node))
    }

    fn symlink_metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        self.begin(MemOp::SymlinkMetadata, path)?;
        let (_, node) = self.existing(path, false)?;
        Ok(metadata_of(node))
    }

    fn read_file(&mut self, path: &GuestPath) -> Result<Vec<u8>> {
        self.begin(MemOp::ReadFile, path)?;
        let (_, node) = self.existing(path, true)?;
        match &node.kind {
            MemNodeKind::File(contents) => {
                check_read_size(path, contents.len() as u64)?;
                Ok(contents.clone())
            }
            MemNodeKind::Directory => Err(VfsError::IsADirectory { path: path.clone() }),
            MemNodeKind::Symlink(_) => {
                unreachable!("resolving with follow_last ends at no symlink")
            }
        }
    }

    fn create_dir_all(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        self.begin(MemOp::CreateDirAll, path)?;
        self.check_writable(path)?;
        self.create_dirs(path, mode)
    }

    fn write_file(
        &mut self,
        path: &GuestPath,
        contents: &mut dyn Read,
        create_mode: u32,
    ) -> Result<u64> {
        let halfway = self.begin(MemOp::WriteFile, path)?;
        self.check_writable(path)?;
        let resolved = self.resolve(path, true)?;
        self.check_mounted(path, &resolved.path)?;
        if resolved.exists && self.nodes[&resolved.path].kind == MemNodeKind::Directory {
            return Err(VfsError::IsADirectory { path: path.clone() });
        }

        let data = self.read_new_contents(path, contents, halfway)?;

        let written = data.len() as u64;
        match self.nodes.get_mut(&resolved.path) {
            Some(node) => node.kind = MemNodeKind::File(data),
            None => {
                let node = MemNode {
                    kind: MemNodeKind::File(data),
                    mode: create_mode & PERMISSION_BITS,
                    uid: 0,
                    gid: 0,
                    xattrs: BTreeMap::new(),
                };
                self.nodes.insert(resolved.path, node);
            }
        }
        Ok(written)
    }

    fn append_file(&mut self, path: &GuestPath, data: &[u8], create_mode: u32) -> Result<()> {
        let halfway = self.begin(MemOp::AppendFile, path)?;
        self.check_writable(path)?;
        let resolved = self.resolve(path, true)?;
        self.check_mounted(path, &resolved.path)?;
        if resolved.exists && self.nodes[&resolved.path].kind == MemNodeKind::Directory {
            return Err(VfsError::IsADirectory { path: path.clone() });
        }
        if data.len() as u64 > self.free_bytes() {
            return Err(VfsError::NoSpace { path: path.clone() });
        }

        let (appended, failure) = match halfway {
            Some(fault) => {
                let cut =
                    usize::try_from(fault.after_bytes).map_or(data.len(), |n| n.min(data.len()));
                (&data[..cut], Some(fault.error))
            }
            None => (data, None),
        };

        let node = self.nodes.entry(resolved.path).or_insert_with(|| MemNode {
            kind: MemNodeKind::File(Vec::new()),
            mode: create_mode & PERMISSION_BITS,
            uid: 0,
            gid: 0,
            xattrs: BTreeMap::new(),
        });
        let MemNodeKind::File(contents) = &mut node.kind else {
            unreachable!("directories were rejected and resolving follows every symlink");
        };
        contents.extend_from_slice(appended);

        match failure {
            Some(error) => Err(error),
            None => Ok(()),
        }
    }

    fn set_mode(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        self.begin(MemOp::SetMode, path)?;
        let target = self.existing_for_change(path)?;
        self.node_mut(&target).mode = mode & PERMISSION_BITS;
        Ok(())
    }

    fn set_owner_ids(
        &mut self,
        path: &GuestPath,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        self.begin(MemOp::SetOwnerIds, path)?;
        let target = self.existing_for_change(path)?;
        let node = self.node_mut(&target);
        if let Some(uid) = uid {
            node.uid = uid;
        }
        if let Some(gid) = gid {
            node.gid = gid;
        }
        Ok(())
    }

    fn set_owner(
        &mut self,
        path: &GuestPath,
        user: Option<&str>,
        group: Option<&str>,
    ) -> Result<()> {
        // The same steps as the trait's default, with the call recorded first so that a
        // fault can target it.
        self.begin(MemOp::SetOwner, path)?;
        let uid = match user {
            Some(name) => Some(accounts::lookup_uid(self, name)?),
            None => None,
        };
        let gid = match group {
            Some(name) => Some(accounts::lookup_gid(self, name)?),
            None => None,
        };
        self.set_owner_ids(path, uid, gid)
    }

    fn symlink(&mut self, target: &str, link: &GuestPath) -> Result<()> {
        self.begin(MemOp::Symlink, link)?;
        self.check_writable(link)?;
        if target.contains('\0') {
            return Err(PathError::ContainsNul {
                path: target.to_owned(),
            }
            .into());
        }
        if target.is_empty() {
            return Err(PathError::EmptyComponent {
                path: target.to_owned(),
            }
            .into());
        }

        let resolved = self.resolve(link, false)?;
        if resolved.exists {
            return Err(VfsError::AlreadyExists { path: link.clone() });
        }
        self.check_mounted(link, &resolved.path)?;
        self.nodes.insert(resolved.path, symlink_node(target));
        Ok(())
    }

    fn remove_file(&mut self, path: &GuestPath) -> Result<()> {
        self.begin(MemOp::RemoveFile, path)?;
        self.check_writable(path)?;
        let (target, node) = self.existing(path, false)?;
        if node.kind == MemNodeKind::Directory {
            return Err(VfsError::IsADirectory { path: path.clone() });
        }
        self.check_mounted(path, &target)?;
        self.nodes.remove(&target);
        Ok(())
    }

    fn xattrs(&mut self, path: &GuestPath) -> Result<Vec<(String, Vec<u8>)>> {
        self.begin(MemOp::Xattrs, path)?;
        let (_, node) = self.existing(path, true)?;
        Ok(node
            .xattrs
            .iter()
            .map(|(name, value)| (name.clone(), value.clone()))
            .collect())
    }

    fn set_xattr(&mut self, path: &GuestPath, name: &str, value: &[u8]) -> Result<()> {
        self.begin(MemOp::SetXattr, path)?;
        let target = self.existing_for_change(path)?;
        let has_namespace = XATTR_NAMESPACES
            .iter()
            .any(|namespace| name.len() > namespace.len() && name.starts_with(namespace));
        if !has_namespace || name.contains('\0') {
            let message =
                format!("invalid extended attribute name {name:?}: use a namespace like `user.`");
            return Err(VfsError::Io {
                op: "set_xattr",
                path: path.clone(),
                source: io::Error::new(io::ErrorKind::InvalidInput, message),
            });
        }
        self.node_mut(&target)
            .xattrs
            .insert(name.to_owned(), value.to_vec());
        Ok(())
    }

    fn free_space(&mut self, path: &GuestPath) -> Result<u64> {
        self.begin(MemOp::FreeSpace, path)?;
        self.existing(path, true)?;
        Ok(self.free_bytes())
    }

    fn enable_writes(&mut self) -> Result<()> {
        let root = GuestPath::root();
        self.begin(MemOp::EnableWrites, &root)?;
        if self.read_only {
            return Err(VfsError::ReadOnly { path: root });
        }
        self.writes_deferred = false;
        Ok(())
    }

    fn sync(&mut self) -> Result<()> {
        self.begin(MemOp::Sync, &GuestPath::root())?;
        Ok(())
    }

    fn close(mut self: Box<Self>) -> Result<()> {
        self.begin(MemOp::Close, &GuestPath::root())?;
        Ok(())
    }
}

/// A [`MemFs`] shared between handles, so that a test can give one handle to the code under
/// test (which may close it) and inspect the filesystem through another.
///
/// Closing a handle records [`MemOp::Close`] and applies its faults but keeps the contents.
#[derive(Debug, Clone)]
pub struct SharedMemFs(Arc<Mutex<MemFs>>);

impl SharedMemFs {
    /// Locks the filesystem for inspection or for arranging more of it.
    ///
    /// # Panics
    ///
    /// When a thread panicked while holding the lock.
    pub fn lock(&self) -> MutexGuard<'_, MemFs> {
        self.0
            .lock()
            .expect("a thread panicked while holding the MemFs lock")
    }
}

impl GuestFs for SharedMemFs {
    fn backend_name(&self) -> &'static str {
        BACKEND_NAME
    }

    fn mounts(&self) -> Vec<MountInfo> {
        self.lock().mounts()
    }

    fn fs_type(&mut self, path: &GuestPath) -> Result<String> {
        self.lock().fs_type(path)
    }

    fn exists(&mut self, path: &GuestPath) -> Result<bool> {
        self.lock().exists(path)
    }

    fn metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        self.lock().metadata(path)
    }

    fn symlink_metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        self.lock().symlink_metadata(path)
    }

    fn read_file(&mut self, path: &GuestPath) -> Result<Vec<u8>> {
        self.lock().read_file(path)
    }

    fn create_dir_all(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        self.lock().create_dir_all(path, mode)
    }

    fn write_file(
        &mut self,
        path: &GuestPath,
        contents: &mut dyn Read,
        create_mode: u32,
    ) -> Result<u64> {
        self.lock().write_file(path, contents, create_mode)
    }

    fn append_file(&mut self, path: &GuestPath, data: &[u8], create_mode: u32) -> Result<()> {
        self.lock().append_file(path, data, create_mode)
    }

    fn set_mode(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        self.lock().set_mode(path, mode)
    }

    fn set_owner_ids(
        &mut self,
        path: &GuestPath,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        self.lock().set_owner_ids(path, uid, gid)
    }

    fn set_owner(
        &mut self,
        path: &GuestPath,
        user: Option<&str>,
        group: Option<&str>,
    ) -> Result<()> {
        self.lock().set_owner(path, user, group)
    }

    fn symlink(&mut self, target: &str, link: &GuestPath) -> Result<()> {
        self.lock().symlink(target, link)
    }

    fn remove_file(&mut self, path: &GuestPath) -> Result<()> {
        self.lock().remove_file(path)
    }

    fn xattrs(&mut self, path: &GuestPath) -> Result<Vec<(String, Vec<u8>)>> {
        self.lock().xattrs(path)
    }

    fn set_xattr(&mut self, path: &GuestPath, name: &str, value: &[u8]) -> Result<()> {
        self.lock().set_xattr(path, name, value)
    }

    fn free_space(&mut self, path: &GuestPath) -> Result<u64> {
        self.lock().free_space(path)
    }

    fn enable_writes(&mut self) -> Result<()> {
        self.lock().enable_writes()
    }

    fn sync(&mut self) -> Result<()> {
        self.lock().sync()
    }

    fn close(self: Box<Self>) -> Result<()> {
        self.lock().begin(MemOp::Close, &GuestPath::root())?;
        Ok(())
    }
}

fn directory_node(mode: u32, uid: u32, gid: u32) -> MemNode {
    MemNode {
        kind: MemNodeKind::Directory,
        mode,
        uid,
        gid,
        xattrs: BTreeMap::new(),
    }
}

fn symlink_node(target: &str) -> MemNode {
    MemNode {
        kind: MemNodeKind::Symlink(target.to_owned()),
        mode: SYMLINK_MODE,
        uid: 0,
        gid: 0,
        xattrs: BTreeMap::new(),
    }
}

fn metadata_of(node: &MemNode) -> Metadata {
    let (kind, size) = match &node.kind {
        MemNodeKind::Directory => (FileKind::Directory, 0),
        MemNodeKind::File(contents) => (FileKind::File, contents.len() as u64),
        MemNodeKind::Symlink(target) => (FileKind::Symlink, target.len() as u64),
    };
    Metadata {
        kind,
        mode: node.mode,
        uid: node.uid,
        gid: node.gid,
        size,
    }
}

/// Reads from `reader` into `data` until end of input or until `data` holds `limit` bytes.
fn read_up_to(
    reader: &mut dyn Read,
    limit: u64,
    data: &mut Vec<u8>,
    path: &GuestPath,
) -> Result<()> {
    let already = data.len() as u64;
    Read::take(&mut *reader, limit.saturating_sub(already))
        .read_to_end(data)
        .map_err(|source| VfsError::Io {
            op: "reading the new contents of",
            path: path.clone(),
            source,
        })?;
    Ok(())
}

fn parse_fixture_path(path: &str) -> GuestPath {
    GuestPath::new(path).unwrap_or_else(|error| panic!("invalid fixture path: {error}"))
}
