//! Property tests of [`MemFs`] and [`GuestPath`] on random input from
//! [`testkit::strategies`].
//!
//! The symlink properties compare MemFs with a reference resolver written separately
//! below: a recursive walk over a snapshot, where MemFs keeps a stack of pending names.
//! A write must change exactly the node the reference names and nothing else.

use std::collections::BTreeMap;

use proptest::collection::vec;
use proptest::prelude::*;
use testkit::strategies::{
    guest_name, guest_path, guest_tree_and_path, hostile_path_text, shadow_file,
};
use testkit::{MemFs, MemNode, MemNodeKind};
use vfs_core::{GuestFs, GuestPath, VfsError, MAX_SYMLINK_FOLLOWS};

type Nodes = BTreeMap<GuestPath, MemNode>;

/// Why the reference resolver stopped without reaching a path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RefError {
    NotFound,
    NotADirectory,
    SymlinkLoop,
}

/// Where the reference resolver ends: the real path, and whether a node is there.
type RefResult = Result<(Vec<String>, bool), RefError>;

/// Walks `names` from the directory `dir` (a list of real names), following symlinks with
/// a shared `budget` of follows. A symlink before the last name is always followed.
fn ref_walk(
    nodes: &Nodes,
    dir: Vec<String>,
    names: &[&str],
    follow_last: bool,
    budget: &mut usize,
) -> RefResult {
    let mut here = dir;
    for (index, &name) in names.iter().enumerate() {
        let is_last = index + 1 == names.len();
        match name {
            "" | "." => continue,
            ".." => {
                here.pop();
                continue;
            }
            _ => {}
        }
        let mut candidate = here.clone();
        candidate.push(name.to_owned());
        let Some(node) = nodes.get(&to_path(&candidate)) else {
            // Only the last name may be missing; `.` and `..` after it still need it.
            let rest_is_empty = names[index + 1..].iter().all(|rest| rest.is_empty());
            return if rest_is_empty {
                Ok((candidate, false))
            } else {
                Err(RefError::NotFound)
            };
        };
        match &node.kind {
            MemNodeKind::Directory => here = candidate,
            MemNodeKind::File(_) if is_last => here = candidate,
            MemNodeKind::File(_) => return Err(RefError::NotADirectory),
            MemNodeKind::Symlink(_) if is_last && !follow_last => here = candidate,
            MemNodeKind::Symlink(target) => {
                if *budget == 0 {
                    return Err(RefError::SymlinkLoop);
                }
                *budget -= 1;
                let start = if target.starts_with('/') {
                    Vec::new()
                } else {
                    here.clone()
                };
                let target_names: Vec<&str> = target.split('/').collect();
                let (reached, exists) = ref_walk(nodes, start, &target_names, true, budget)?;
                if is_last {
                    return Ok((reached, exists));
                }
                match nodes.get(&to_path(&reached)).map(|found| &found.kind) {
                    _ if !exists => return Err(RefError::NotFound),
                    Some(MemNodeKind::Directory) => here = reached,
                    _ => return Err(RefError::NotADirectory),
                }
            }
        }
    }
    Ok((here, true))
}

fn ref_resolve(nodes: &Nodes, path: &GuestPath, follow_last: bool) -> RefResult {
    let names: Vec<&str> = path.components().collect();
    let mut budget = MAX_SYMLINK_FOLLOWS;
    ref_walk(nodes, Vec::new(), &names, follow_last, &mut budget)
}

fn to_path(names: &[String]) -> GuestPath {
    if names.is_empty() {
        return GuestPath::root();
    }
    GuestPath::new(&format!("/{}", names.join("/"))).unwrap()
}

fn error_kind(error: &VfsError) -> Option<RefError> {
    match error {
        VfsError::NotFound { .. } => Some(RefError::NotFound),
        VfsError::NotADirectory { .. } => Some(RefError::NotADirectory),
        VfsError::SymlinkLoop { .. } => Some(RefError::SymlinkLoop),
        _ => None,
    }
}

fn new_file(contents: Vec<u8>, mode: u32) -> MemNode {
    MemNode {
        kind: MemNodeKind::File(contents),
        mode,
        uid: 0,
        gid: 0,
        xattrs: BTreeMap::new(),
    }
}

proptest! {
    #[test]
    fn guest_path_round_trips_through_text(path in guest_path()) {
        let reparsed = GuestPath::new(path.as_str()).unwrap();

        prop_assert_eq!(reparsed, path);
    }

    #[test]
    fn guest_path_accepts_joined_names(names in vec(guest_name(), 1..6)) {
        let path = GuestPath::new(&names.join("/")).unwrap();

        let components: Vec<&str> = path.components().collect();
        prop_assert_eq!(components, names.iter().map(String::as_str).collect::<Vec<_>>());
    }

    #[test]
    fn guest_path_rejects_hostile_text(text in hostile_path_text()) {
        let result = GuestPath::new(&text);

        prop_assert!(result.is_err(), "accepted {:?} as {:?}", text, result);
    }

    #[test]
    fn write_then_read_round_trips(
        path in guest_path().prop_filter("the root is a directory", |path| !path.is_root()),
        contents in vec(any::<u8>(), 0..4096),
    ) {
        let mut fs = MemFs::new();
        fs.create_dir_all(&path.parent().unwrap(), 0o755).unwrap();

        let written = fs.write_file(&path, &mut &contents[..], 0o644).unwrap();

        prop_assert_eq!(written, contents.len() as u64);
        prop_assert_eq!(fs.read_file(&path).unwrap(), contents);
    }

    #[test]
    fn write_changes_only_reference_target(
        (mut fs, path) in guest_tree_and_path(),
        contents in vec(any::<u8>(), 0..64),
    ) {
        let before = fs.snapshot();
        let reference = ref_resolve(&before, &path, true);

        let result = fs.write_file(&path, &mut &contents[..], 0o600);

        let after = fs.snapshot();
        let mut expected = before.clone();
        match reference {
            Ok((target, true)) => {
                let target = to_path(&target);
                let node = expected.get_mut(&target).unwrap();
                if node.kind == MemNodeKind::Directory {
                    prop_assert!(
                        matches!(result, Err(VfsError::IsADirectory { .. })),
                        "{:?}", result
                    );
                } else {
                    prop_assert!(result.is_ok(), "{:?}", result);
                    node.kind = MemNodeKind::File(contents);
                }
            }
            Ok((target, false)) => {
                prop_assert!(result.is_ok(), "{:?}", result);
                expected.insert(to_path(&target), new_file(contents, 0o600));
            }
            Err(kind) => {
                let error = result.unwrap_err();
                prop_assert_eq!(error_kind(&error), Some(kind), "{:?}", error);
            }
        }
        prop_assert_eq!(after, expected);
    }

    #[test]
    fn read_matches_reference_resolver((mut fs, path) in guest_tree_and_path()) {
        let snapshot = fs.snapshot();
        let reference = ref_resolve(&snapshot, &path, true);

        let result = fs.read_file(&path);

        match (reference, result) {
            (Ok((target, true)), Ok(contents)) => {
                let node = &snapshot[&to_path(&target)];
                prop_assert_eq!(&node.kind, &MemNodeKind::File(contents));
            }
            (Ok((target, true)), Err(VfsError::IsADirectory { .. })) => {
                prop_assert_eq!(&snapshot[&to_path(&target)].kind, &MemNodeKind::Directory);
            }
            (Ok((_, false)), Err(VfsError::NotFound { .. })) => {}
            (Err(kind), Err(error)) => prop_assert_eq!(error_kind(&error), Some(kind)),
            (reference, result) => {
                prop_assert!(false, "reference {:?}, MemFs {:?}", reference, result);
            }
        }
    }

    #[test]
    fn remove_file_removes_only_named_node((mut fs, path) in guest_tree_and_path()) {
        let before = fs.snapshot();
        let reference = ref_resolve(&before, &path, false);

        let result = fs.remove_file(&path);

        let mut expected = before.clone();
        if result.is_ok() {
            let (target, exists) = reference.unwrap();
            prop_assert!(exists);
            let removed = expected.remove(&to_path(&target)).unwrap();
            prop_assert!(removed.kind != MemNodeKind::Directory);
        }
        prop_assert_eq!(fs.snapshot(), expected);
    }

    #[test]
    fn set_mode_changes_only_mode_of_target((mut fs, path) in guest_tree_and_path()) {
        let before = fs.snapshot();
        let reference = ref_resolve(&before, &path, true);

        let result = fs.set_mode(&path, 0o4711);

        let mut expected = before.clone();
        match reference {
            Ok((target, true)) => {
                prop_assert!(result.is_ok(), "{:?}", result);
                expected.get_mut(&to_path(&target)).unwrap().mode = 0o4711;
            }
            _ => prop_assert!(result.is_err()),
        }
        prop_assert_eq!(fs.snapshot(), expected);
    }

    #[test]
    fn shadow_file_has_one_root_entry(shadow in shadow_file(0..8usize)) {
        let roots = shadow.lines.iter().filter(|line| line.starts_with("root:")).count();

        prop_assert_eq!(roots, 1);
        prop_assert!(shadow.lines[shadow.root_index].starts_with("root:"));
        prop_assert_eq!(shadow.text.ends_with('\n'), shadow.final_newline);
        prop_assert_eq!(shadow.text.trim_end_matches('\n').split('\n').count(), shadow.lines.len());
        for line in &shadow.lines {
            prop_assert_eq!(line.split(':').count(), 9, "{}", line);
        }
    }
}
