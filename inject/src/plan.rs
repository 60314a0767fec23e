//! Planning: reading and checking the guest for every item of a request, without writing,
//! and turning each item into concrete [`Step`]s.
//!
//! Planning reads the guest files that items change, checks that parents are directories
//! or can be created and that no target is a directory, and checks free space.
//!
//! Items are planned in order, and each later item accounts for the directories and files
//! that earlier items will create. So two items writing one path, or a file where another
//! item needs a directory, fail here rather than halfway through [`crate::apply`].

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;

use vfs_core::accounts::{self, PasswdEntry};
use vfs_core::{FileKind, GuestFs, GuestPath, VfsError, MAX_READ_BYTES};

use crate::edit;
use crate::error::{error_chain, InjectError, ItemError};
use crate::password::{self, Password};
use crate::request::{self, FileItem, FileSource, HashMethod, ItemKind, Request};
use crate::ssh_key::SshPublicKey;

/// The guest's shadow password file.
const SHADOW_PATH: &str = "/etc/shadow";
/// The network configuration file of Debian-style guests.
const INTERFACES_PATH: &str = "/etc/network/interfaces";
/// The metadata file.
const METADATA_PATH: &str = "/meta.js";
/// Root's home when `/etc/passwd` leaves the field empty.
const DEFAULT_ROOT_HOME: &str = "/root";

/// Mode of new directories other than root's home and `.ssh`.
const DIR_MODE: u32 = 0o755;
/// Mode of a new root home and `.ssh` directory, which sshd wants closed to others.
const PRIVATE_DIR_MODE: u32 = 0o700;
/// Mode of a new `authorized_keys`.
const AUTHORIZED_KEYS_MODE: u32 = 0o600;
/// Mode of a new `rc.local`.
const RC_LOCAL_MODE: u32 = 0o755;
/// Mode of other new files.
const FILE_MODE: u32 = 0o644;

/// The checked, concrete changes for a request, produced by [`plan`] and carried out by
/// [`crate::apply`].
///
/// A plan describes the guest as it was when planned; applying it after the guest changed
/// may overwrite those changes.
#[derive(Debug)]
pub struct Plan<'r> {
    pub(crate) items: Vec<PlannedItem<'r>>,
}

impl<'r> Plan<'r> {
    /// Returns the planned items, in the order they will be applied.
    pub fn items(&self) -> &[PlannedItem<'r>] {
        &self.items
    }
}

/// One item of a plan.
#[derive(Debug)]
pub struct PlannedItem<'r> {
    pub(crate) kind: ItemKind,
    pub(crate) target: String,
    pub(crate) best_effort: bool,
    pub(crate) action: Action<'r>,
}

impl<'r> PlannedItem<'r> {
    /// Returns the kind of item.
    pub fn kind(&self) -> ItemKind {
        self.kind
    }

    /// Returns the guest paths the item writes, separated by `, `.
    pub fn target(&self) -> &str {
        &self.target
    }

    /// Returns the steps that applying the item takes; none when it is unchanged or failed.
    pub fn steps(&self) -> &[Step<'r>] {
        match &self.action {
            Action::Steps(steps) => steps,
            Action::Unchanged { .. } | Action::Failed { .. } => &[],
        }
    }
}

/// The work of one planned item.
#[derive(Debug)]
pub(crate) enum Action<'r> {
    /// Carry out these steps in order.
    Steps(Vec<Step<'r>>),
    /// Nothing, because the guest already is as requested.
    Unchanged { reason: String },
    /// Nothing, because planning this best-effort item failed.
    Failed { reason: String },
}

/// One change to the guest.
#[derive(Debug)]
pub enum Step<'r> {
    /// Create a directory whose parent exists or is created by an earlier step.
    CreateDir { path: GuestPath, mode: u32 },
    /// Replace or create a file; a new file gets `create_mode`.
    WriteFile {
        path: GuestPath,
        contents: Contents<'r>,
        create_mode: u32,
    },
    /// Set the permission bits of an existing file.
    SetMode { path: GuestPath, mode: u32 },
}

impl fmt::Display for Step<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Step::CreateDir { path, mode } => write!(f, "create directory {path} ({mode:04o})"),
            Step::WriteFile {
                path,
                contents,
                create_mode,
            } => write!(
                f,
                "write {} bytes to {path} ({create_mode:04o} if new)",
                contents.len()
            ),
            Step::SetMode { path, mode } => write!(f, "set mode of {path} to {mode:04o}"),
        }
    }
}

/// The contents of a file to write.
pub enum Contents<'r> {
    /// Bytes in memory.
    Bytes(Cow<'r, [u8]>),
    /// A host file, streamed when applied; `size` is its size when planned.
    HostFile { path: &'r Path, size: u64 },
}

impl Contents<'_> {
    /// Returns the number of bytes to write.
    pub fn len(&self) -> u64 {
        match self {
            Contents::Bytes(bytes) => bytes.len() as u64,
            Contents::HostFile { size, .. } => *size,
        }
    }

    /// Returns true when there is nothing to write.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl fmt::Debug for Contents<'_> {
    // Contents stay out of logs: shadow lines and keys are secrets.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Contents::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            Contents::HostFile { path, size } => {
                write!(f, "HostFile({}, {size} bytes)", path.display())
            }
        }
    }
}

/// Reads and checks the guest for every item of `request` and returns the steps to take,
/// writing nothing.
///
/// A mandatory item that fails makes the whole call fail; a best-effort item that fails is
/// kept in the plan as a warning.
pub fn plan<'r>(fs: &mut dyn GuestFs, request: &'r Request) -> Result<Plan<'r>, InjectError> {
    let mut planner = Planner::new(fs);
    let mut items = Vec::new();

    for job in jobs(request) {
        let kind = job.kind();
        let best_effort = request.is_best_effort(kind);
        let span = tracing::info_span!("plan_item", item = %kind);
        let _entered = span.enter();

        let mut draft = Draft::new(job.default_target());
        let result = planner
            .plan_job(&mut draft, &job)
            .and_then(|()| planner.reserve_space(&draft.writes));
        let target = draft.target.clone();
        let action = match result {
            Ok(()) => {
                planner.commit(&draft);
                draft.into_action()
            }
            Err(source) if best_effort => {
                let reason = error_chain(&source);
                tracing::warn!(target_path = %target, error = %reason, "best-effort item skipped");
                Action::Failed { reason }
            }
            Err(source) if source.is_input_error() => {
                return Err(InjectError::InvalidInput {
                    item: kind,
                    source: Box::new(source),
                })
            }
            Err(source) => {
                return Err(InjectError::Planning {
                    item: kind,
                    target,
                    source: Box::new(source),
                })
            }
        };
        tracing::debug!(target_path = %target, "item planned");
        items.push(PlannedItem {
            kind,
            target,
            best_effort,
            action,
        });
    }
    Ok(Plan { items })
}

/// One unit of planning: an item of the request, or one file of the files item.
enum Job<'r> {
    Key(&'r str),
    Password(&'r Password, HashMethod),
    Network(&'r [u8]),
    Metadata(&'r [u8]),
    File(&'r FileItem),
}

impl Job<'_> {
    fn kind(&self) -> ItemKind {
        match self {
            Job::Key(_) => ItemKind::Key,
            Job::Password(..) => ItemKind::Password,
            Job::Network(_) => ItemKind::Network,
            Job::Metadata(_) => ItemKind::Metadata,
            Job::File(_) => ItemKind::Files,
        }
    }

    /// Returns the target to name before planning finds the real one (the key's target
    /// depends on root's home in the guest).
    fn default_target(&self) -> String {
        match self {
            Job::Key(_) => format!("{DEFAULT_ROOT_HOME}/.ssh/authorized_keys"),
            Job::Password(..) => SHADOW_PATH.to_owned(),
            Job::Network(_) => INTERFACES_PATH.to_owned(),
            Job::Metadata(_) => METADATA_PATH.to_owned(),
            Job::File(item) => item.guest_path.to_string(),
        }
    }
}

/// Lists the jobs of `request` in the order they are applied.
fn jobs(request: &Request) -> Vec<Job<'_>> {
    let mut jobs = Vec::new();
    if let Some(key) = &request.ssh_key {
        jobs.push(Job::Key(key));
    }
    if let Some(password) = &request.password {
        jobs.push(Job::Password(password, request.password_method));
    }
    if let Some(network) = &request.network {
        jobs.push(Job::Network(network));
    }
    if let Some(metadata) = &request.metadata {
        jobs.push(Job::Metadata(metadata));
    }
    jobs.extend(request.files.iter().map(Job::File));
    jobs
}

/// The steps and claims one job has planned so far.
struct Draft<'r> {
    target: String,
    steps: Vec<Step<'r>>,
    /// Paths this job creates or writes, so that later jobs see them.
    claims: BTreeMap<GuestPath, FileKind>,
    /// Bytes written per target path, for the free-space check.
    writes: Vec<(GuestPath, u64)>,
    /// The reasons nothing needs writing, when that turns out to be so.
    unchanged: Vec<String>,
}

impl<'r> Draft<'r> {
    fn new(target: String) -> Self {
        Self {
            target,
            steps: Vec::new(),
            claims: BTreeMap::new(),
            writes: Vec::new(),
            unchanged: Vec::new(),
        }
    }

    fn create_dir(&mut self, path: GuestPath, mode: u32) {
        self.claims.insert(path.clone(), FileKind::Directory);
        self.steps.push(Step::CreateDir { path, mode });
    }

    fn write_file(&mut self, path: GuestPath, contents: Contents<'r>, create_mode: u32) {
        self.claims.insert(path.clone(), FileKind::File);
        self.writes.push((path.clone(), contents.len()));
        self.steps.push(Step::WriteFile {
            path,
            contents,
            create_mode,
        });
    }

    fn into_action(self) -> Action<'r> {
        if self.steps.is_empty() {
            return Action::Unchanged {
                reason: self.unchanged.join("; "),
            };
        }
        Action::Steps(self.steps)
    }
}

/// The state of a target file before the write.
enum TargetState {
    Missing,
    Existing { mode: u32, size: u64 },
}

/// The planning state over one guest: the paths earlier jobs claimed and the free space
/// left on each filesystem.
struct Planner<'f> {
    fs: &'f mut dyn GuestFs,
    /// Mount points of the guest tree, longest first.
    mount_points: Vec<GuestPath>,
    /// Free bytes left per mount point, after the writes of earlier jobs.
    free_space: BTreeMap<GuestPath, u64>,
    /// Paths created or written by earlier jobs.
    claims: BTreeMap<GuestPath, FileKind>,
    root_account: Option<PasswdEntry>,
}

impl<'f> Planner<'f> {
    fn new(fs: &'f mut dyn GuestFs) -> Self {
        let mut mount_points: Vec<GuestPath> = fs
            .mounts()
            .into_iter()
            .map(|mount| mount.mount_point)
            .collect();
        if !mount_points.iter().any(GuestPath::is_root) {
            mount_points.push(GuestPath::root());
        }
        mount_points.sort_by_key(|path| std::cmp::Reverse(path.as_str().len()));
        Self {
            fs,
            mount_points,
            free_space: BTreeMap::new(),
            claims: BTreeMap::new(),
            root_account: None,
        }
    }

    fn plan_job<'r>(&mut self, draft: &mut Draft<'r>, job: &Job<'r>) -> Result<(), ItemError> {
        match *job {
            Job::Key(key) => self.plan_key(draft, key),
            Job::Password(password, method) => self.plan_password(draft, password, method),
            Job::Network(bytes) => {
                let path = guest_path(INTERFACES_PATH);
                self.plan_file(draft, path, Contents::Bytes(Cow::Borrowed(bytes)))
            }
            Job::Metadata(bytes) => {
                request::validate_metadata(bytes)?;
                let path = guest_path(METADATA_PATH);
                self.plan_file(draft, path, Contents::Bytes(Cow::Borrowed(bytes)))
            }
            Job::File(item) => {
                let contents = match &item.source {
                    FileSource::Bytes(bytes) => Contents::Bytes(Cow::Borrowed(bytes)),
                    FileSource::HostFile(path) => Contents::HostFile {
                        path,
                        size: request::host_file_size(path)?,
                    },
                };
                self.plan_file(draft, item.guest_path.clone(), contents)
            }
        }
    }

    /// Plans the key into root's `authorized_keys` and, on SELinux guests, the relabel
    /// command in `rc.local`.
    fn plan_key(&mut self, draft: &mut Draft<'_>, key: &str) -> Result<(), ItemError> {
        let key = SshPublicKey::parse(key)?;
        let home = self.root_home()?;
        let ssh_dir = home.join(".ssh").expect("`.ssh` is a valid name");
        let authorized_keys = ssh_dir
            .join("authorized_keys")
            .expect("`authorized_keys` is a valid name");
        draft.target = authorized_keys.to_string();

        self.plan_dirs(draft, &ssh_dir, |path| {
            if path.starts_with(&home) {
                PRIVATE_DIR_MODE
            } else {
                DIR_MODE
            }
        })?;
        let existing = match self.check_target(draft, &authorized_keys)? {
            TargetState::Missing => Vec::new(),
            TargetState::Existing { .. } => self.read(&authorized_keys)?,
        };
        if key.is_in_authorized_keys(&existing) {
            draft
                .unchanged
                .push(format!("the key is already in {authorized_keys}"));
        } else {
            let contents = edit::append_authorized_key(&existing, &key.to_line());
            draft.write_file(
                authorized_keys,
                Contents::Bytes(Cow::Owned(contents)),
                AUTHORIZED_KEYS_MODE,
            );
        }

        if self.exists(&guest_path("/etc/selinux"))? {
            self.plan_relabel(draft, &ssh_dir)?;
        }
        Ok(())
    }

    /// Plans the command that restores the SELinux labels of `ssh_dir` at boot.
    fn plan_relabel(
        &mut self,
        draft: &mut Draft<'_>,
        ssh_dir: &GuestPath,
    ) -> Result<(), ItemError> {
        let rc_local = self.rc_local_path()?;
        draft.target = format!("{}, {rc_local}", draft.target);

        let state = self.check_target(draft, &rc_local)?;
        let existing = match state {
            TargetState::Missing => None,
            TargetState::Existing { .. } => Some(self.read(&rc_local)?),
        };
        let command = edit::relabel_command(ssh_dir.as_str());
        match edit::add_relabel_command(existing.as_deref(), &command) {
            Some(contents) => draft.write_file(
                rc_local.clone(),
                Contents::Bytes(Cow::Owned(contents)),
                RC_LOCAL_MODE,
            ),
            None => draft
                .unchanged
                .push(format!("{rc_local} already relabels {ssh_dir}")),
        }
        if let TargetState::Existing { mode, .. } = state {
            if mode & 0o111 != 0o111 {
                draft.steps.push(Step::SetMode {
                    path: rc_local,
                    mode: mode | 0o111,
                });
            }
        }
        Ok(())
    }

    /// Returns `/etc/rc.d/rc.local` when `/etc/rc.d` exists and `/etc/rc.local` does not
    /// (Red Hat layout), and `/etc/rc.local` otherwise.
    fn rc_local_path(&mut self) -> Result<GuestPath, ItemError> {
        let rc_local = guest_path("/etc/rc.local");
        if !self.exists(&rc_local)? && self.exists(&guest_path("/etc/rc.d"))? {
            return Ok(guest_path("/etc/rc.d/rc.local"));
        }
        Ok(rc_local)
    }

    /// Plans root's new hash in `/etc/shadow`, leaving every other byte as it is.
    fn plan_password(
        &mut self,
        draft: &mut Draft<'_>,
        password: &Password,
        method: HashMethod,
    ) -> Result<(), ItemError> {
        password.validate()?;
        self.root_account()?;

        let shadow_path = guest_path(SHADOW_PATH);
        if let TargetState::Missing = self.check_target(draft, &shadow_path)? {
            return Err(ItemError::GuestFileMissing {
                path: shadow_path,
                hint: "the guest keeps no shadow passwords, so there is no root password to set",
            });
        }
        let shadow = self.read(&shadow_path)?;
        let hash = password::hash(password, method)?;
        let contents =
            edit::replace_root_hash(&shadow, &hash).ok_or_else(|| ItemError::NoRootEntry {
                path: shadow_path.clone(),
                hint: "add a line for root to the guest's shadow file or leave out the password",
            })?;
        draft.write_file(shadow_path, Contents::Bytes(Cow::Owned(contents)), 0o640);
        Ok(())
    }

    /// Plans writing `contents` to `path`, creating missing parents, unless the file
    /// already contains exactly those bytes.
    fn plan_file<'r>(
        &mut self,
        draft: &mut Draft<'r>,
        path: GuestPath,
        contents: Contents<'r>,
    ) -> Result<(), ItemError> {
        if let Some(parent) = path.parent() {
            self.plan_dirs(draft, &parent, |_| DIR_MODE)?;
        }
        let state = self.check_target(draft, &path)?;
        if let (TargetState::Existing { size, .. }, Contents::Bytes(bytes)) = (&state, &contents) {
            // Only a file of the same size can be identical, so others are never read.
            if *size == bytes.len() as u64
                && *size <= MAX_READ_BYTES
                && self.read(&path)? == **bytes
            {
                draft
                    .unchanged
                    .push(format!("{path} already has these contents"));
                return Ok(());
            }
        }
        draft.write_file(path, contents, FILE_MODE);
        Ok(())
    }

    /// Plans the creation of `dir` and its missing ancestors, each with `mode_for(path)`,
    /// and fails when one of them is something other than a directory.
    fn plan_dirs(
        &mut self,
        draft: &mut Draft<'_>,
        dir: &GuestPath,
        mode_for: impl Fn(&GuestPath) -> u32,
    ) -> Result<(), ItemError> {
        let mut missing = false;
        for path in dir.ancestors_from_root() {
            if !missing {
                match self.claimed_kind(draft, &path) {
                    Some(FileKind::Directory) => continue,
                    Some(_) => return Err(ItemError::NotADirectory { path }),
                    None => {}
                }
                match self.fs.metadata(&path) {
                    Ok(metadata) if metadata.kind == FileKind::Directory => continue,
                    Ok(_) => return Err(ItemError::NotADirectory { path }),
                    Err(VfsError::NotFound { .. }) => {
                        self.check_not_dangling(&path, FileKind::Directory)?;
                        missing = true;
                    }
                    Err(VfsError::NotADirectory { .. }) => {
                        return Err(ItemError::NotADirectory { path })
                    }
                    Err(source) => return Err(ItemError::Guest { source }),
                }
            }
            let mode = mode_for(&path);
            draft.create_dir(path, mode);
        }
        Ok(())
    }

    /// Checks that `path` can be written as a regular file and returns whether it exists. Its
    /// parent must already be checked by [`Planner::plan_dirs`].
    fn check_target(
        &mut self,
        draft: &Draft<'_>,
        path: &GuestPath,
    ) -> Result<TargetState, ItemError> {
        match self.claimed_kind(draft, path) {
            Some(FileKind::Directory) => {
                return Err(ItemError::IsADirectory { path: path.clone() })
            }
            Some(_) => return Err(ItemError::ConflictingWrite { path: path.clone() }),
            None => {}
        }
        // A parent that an earlier step creates is empty, so the target cannot exist yet.
        let parent_is_new = path
            .parent()
            .is_some_and(|parent| self.claimed_kind(draft, &parent) == Some(FileKind::Directory));
        if parent_is_new {
            return Ok(TargetState::Missing);
        }
        match self.fs.metadata(path) {
            Ok(metadata) => match metadata.kind {
                FileKind::File => Ok(TargetState::Existing {
                    mode: metadata.mode,
                    size: metadata.size,
                }),
                FileKind::Directory => Err(ItemError::IsADirectory { path: path.clone() }),
                FileKind::Symlink | FileKind::Other => {
                    Err(ItemError::NotAFile { path: path.clone() })
                }
            },
            Err(VfsError::NotFound { .. }) => {
                self.check_not_dangling(path, FileKind::File)?;
                Ok(TargetState::Missing)
            }
            Err(source) => Err(ItemError::Guest { source }),
        }
    }

    /// Fails when `path`, which does not resolve, is a symlink: creating an object of kind
    /// `creating` through a dangling symlink would create it somewhere else.
    fn check_not_dangling(
        &mut self,
        path: &GuestPath,
        creating: FileKind,
    ) -> Result<(), ItemError> {
        match self.fs.symlink_metadata(path) {
            Ok(metadata) if metadata.kind == FileKind::Symlink => Err(ItemError::DanglingSymlink {
                path: path.clone(),
                creating,
            }),
            Ok(_) | Err(VfsError::NotFound { .. }) | Err(VfsError::NotADirectory { .. }) => Ok(()),
            Err(source) => Err(ItemError::Guest { source }),
        }
    }

    fn claimed_kind(&self, draft: &Draft<'_>, path: &GuestPath) -> Option<FileKind> {
        draft
            .claims
            .get(path)
            .or_else(|| self.claims.get(path))
            .copied()
    }

    /// Takes the bytes of `writes` from the free space of their filesystems, failing when
    /// one has too little.
    ///
    /// Each write needs its full size even when it replaces a file, because an atomic
    /// replace keeps old and new contents at once. Files are placed by mount point, so a
    /// symlink to another filesystem is counted on the one holding the link.
    fn reserve_space(&mut self, writes: &[(GuestPath, u64)]) -> Result<(), ItemError> {
        let mut needed: BTreeMap<GuestPath, u64> = BTreeMap::new();
        for (path, bytes) in writes {
            let mount_point = self.mount_point_of(path);
            *needed.entry(mount_point).or_default() += bytes;
        }
        for (mount_point, bytes) in &needed {
            let available = self.available_space(mount_point)?;
            if *bytes > available {
                return Err(ItemError::NotEnoughSpace {
                    mount_point: mount_point.clone(),
                    needed: *bytes,
                    available,
                });
            }
        }
        for (mount_point, bytes) in needed {
            if let Some(available) = self.free_space.get_mut(&mount_point) {
                *available -= bytes;
            }
        }
        Ok(())
    }

    fn available_space(&mut self, mount_point: &GuestPath) -> Result<u64, ItemError> {
        if let Some(available) = self.free_space.get(mount_point) {
            return Ok(*available);
        }
        let available = self
            .fs
            .free_space(mount_point)
            .map_err(|source| ItemError::Guest { source })?;
        self.free_space.insert(mount_point.clone(), available);
        Ok(available)
    }

    fn mount_point_of(&self, path: &GuestPath) -> GuestPath {
        self.mount_points
            .iter()
            .find(|mount_point| path.starts_with(mount_point))
            .cloned()
            .unwrap_or_else(GuestPath::root)
    }

    /// Records the paths of a job that planned without error, for the jobs after it.
    fn commit(&mut self, draft: &Draft<'_>) {
        self.claims.extend(
            draft
                .claims
                .iter()
                .map(|(path, kind)| (path.clone(), *kind)),
        );
    }

    /// Returns root's line of the guest's `/etc/passwd`.
    fn root_account(&mut self) -> Result<PasswdEntry, ItemError> {
        if let Some(entry) = &self.root_account {
            return Ok(entry.clone());
        }
        let path = guest_path(accounts::PASSWD_PATH);
        let contents = match self.fs.read_file(&path) {
            Ok(contents) => contents,
            Err(VfsError::NotFound { .. }) => {
                return Err(ItemError::GuestFileMissing {
                    path,
                    hint: "the filesystem is probably not the guest's root filesystem; \
                           choose the root partition",
                })
            }
            Err(source) => return Err(ItemError::Guest { source }),
        };
        let entries =
            accounts::parse_passwd(&contents).map_err(|reason| ItemError::MalformedGuestFile {
                path: path.clone(),
                reason,
            })?;
        let entry = entries
            .into_iter()
            .find(|entry| entry.name == "root")
            .ok_or(ItemError::NoRootEntry {
                path,
                hint: "the guest has no root account to inject into",
            })?;
        self.root_account = Some(entry.clone());
        Ok(entry)
    }

    /// Returns root's home directory from `/etc/passwd`, or `/root` when the field is empty.
    fn root_home(&mut self) -> Result<GuestPath, ItemError> {
        let home = self.root_account()?.home;
        if home.is_empty() {
            return Ok(guest_path(DEFAULT_ROOT_HOME));
        }
        if !home.starts_with('/') {
            return Err(ItemError::InvalidHome { home });
        }
        GuestPath::new(&home).map_err(|_| ItemError::InvalidHome { home })
    }

    fn read(&mut self, path: &GuestPath) -> Result<Vec<u8>, ItemError> {
        self.fs
            .read_file(path)
            .map_err(|source| ItemError::Guest { source })
    }

    fn exists(&mut self, path: &GuestPath) -> Result<bool, ItemError> {
        self.fs
            .exists(path)
            .map_err(|source| ItemError::Guest { source })
    }
}

/// Builds a guest path from a constant of this crate.
fn guest_path(text: &'static str) -> GuestPath {
    GuestPath::new(text).expect("constant guest paths are valid")
}

impl ItemError {
    /// Returns true for errors in the request's own inputs, found before the guest is read.
    pub(crate) fn is_input_error(&self) -> bool {
        matches!(
            self,
            ItemError::InvalidSshKey { .. }
                | ItemError::InvalidPassword { .. }
                | ItemError::InvalidJson { .. }
                | ItemError::JsonNotObject { .. }
                | ItemError::OpeningHostFile { .. }
                | ItemError::HostFileNotRegular { .. }
        )
    }
}
