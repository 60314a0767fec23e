//! Proptest strategies for guest paths, hostile path text, random guest trees with hostile
//! symlinks, and `/etc/shadow` contents.
//!
//! Trees and [`tree_path`] draw names from the same small set ([`TREE_NAMES`]), so that a
//! random path can meet a symlink or file of a random tree; [`guest_tree_and_path`] gives
//! paths that reach one every time.

use std::collections::BTreeMap;

use proptest::collection::{btree_set, vec, SizeRange};
use proptest::prelude::*;
use proptest::sample::{select, Index};
use vfs_core::GuestPath;

use crate::memfs::{MemFs, MemNode, MemNodeKind};

/// The names [`guest_tree`] and [`tree_path`] build paths from. They include the names of
/// the places injection writes (`etc`, `shadow`, `root`, `.ssh`) so that random symlinks
/// point into them.
pub const TREE_NAMES: [&str; 8] = ["a", "b", "c", "etc", "shadow", "root", ".ssh", "link"];

/// The symlink targets that [`guest_tree`] picks besides paths between its own names: the
/// files injection changes, climbs out through `..`, and odd spellings.
pub const HOSTILE_TARGETS: [&str; 17] = [
    "/etc",
    "/etc/shadow",
    "/root/.ssh",
    "/root/.ssh/authorized_keys",
    "/",
    "../../..",
    "../../../etc/shadow",
    "../../../../../../root/.ssh",
    ".",
    "..",
    "../shadow",
    "../../root/.ssh",
    "a//b/./c",
    "/../../etc/../etc/shadow",
    "link/../link",
    "missing/.",
    "shadow/.",
];

/// Generates one valid name of a guest path: never `.` or `..`, never with `/` or NUL,
/// sometimes a dot file and sometimes with non-ASCII letters.
pub fn guest_name() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,11}",
        1 => "\\.[a-zA-Z0-9_-]{1,8}",
        1 => "[a-zé€日本 ]{1,6}",
    ]
}

/// Generates a valid [`GuestPath`] of zero (the root) to four names from [`guest_name`].
pub fn guest_path() -> impl Strategy<Value = GuestPath> {
    vec(guest_name(), 0..=4).prop_map(|names| path_from_names(&names))
}

/// Generates a [`GuestPath`] of one to four names from [`TREE_NAMES`], so that it may name
/// or pass through a node of a [`guest_tree`]. Most such paths miss the tree; use
/// [`guest_tree_and_path`] for paths that reach it.
pub fn tree_path() -> impl Strategy<Value = GuestPath> {
    vec(select(&TREE_NAMES[..]), 1..=4).prop_map(|names| path_from_names(&names))
}

/// The change that makes [`hostile_path_text`] invalid.
#[derive(Debug, Clone, Copy)]
enum Hostility {
    /// A `..` name.
    ParentName,
    /// A NUL byte somewhere.
    Nul,
    /// Two slashes in a row, which make an empty name.
    DoubleSlash,
    /// A `/` at the end, which makes an empty last name.
    TrailingSlash,
    /// No text at all.
    Empty,
}

/// Generates text that [`GuestPath::new`] must reject: it contains a `..` name, a NUL
/// byte, two slashes in a row, a trailing slash after a name, or is empty. The rest of
/// the text is made of valid names and `.` names, with or without a leading `/`.
pub fn hostile_path_text() -> impl Strategy<Value = String> {
    let name = prop_oneof![4 => guest_name(), 1 => Just(".".to_owned())];
    let hostility = prop_oneof![
        Just(Hostility::ParentName),
        Just(Hostility::Nul),
        Just(Hostility::DoubleSlash),
        Just(Hostility::TrailingSlash),
        Just(Hostility::Empty),
    ];
    (vec(name, 0..5), any::<bool>(), hostility, any::<Index>()).prop_map(
        |(mut names, leading_slash, hostility, at)| {
            let prefix = if leading_slash { "/" } else { "" };
            match hostility {
                Hostility::ParentName => {
                    names.insert(at.index(names.len() + 1), "..".to_owned());
                    format!("{prefix}{}", names.join("/"))
                }
                Hostility::Nul => {
                    let text = format!("{prefix}{}", names.join("/"));
                    let boundaries: Vec<usize> = text
                        .char_indices()
                        .map(|(offset, _)| offset)
                        .chain([text.len()])
                        .collect();
                    let cut = boundaries[at.index(boundaries.len())];
                    format!("{}\0{}", &text[..cut], &text[cut..])
                }
                Hostility::DoubleSlash => {
                    // Put `//` before the name at `gap`, or at the end when `gap` is past
                    // the last name.
                    let gap = at.index(names.len() + 1);
                    let before = names[..gap].join("/");
                    let after = names[gap..].join("/");
                    format!("{prefix}{before}//{after}")
                }
                Hostility::TrailingSlash if !names.is_empty() => {
                    format!("{prefix}{}/", names.join("/"))
                }
                Hostility::TrailingSlash | Hostility::Empty => String::new(),
            }
        },
    )
}

/// A symlink target of a [`guest_tree`] before the link's own name is known.
#[derive(Debug, Clone)]
enum TargetSpec {
    /// The link's own name, which makes a loop of one link.
    Itself,
    /// A target used as written.
    Text(String),
}

/// One node a [`guest_tree`] adds.
#[derive(Debug, Clone)]
enum EntrySpec {
    Dir {
        mode: u32,
        uid: u32,
    },
    File {
        contents: Vec<u8>,
        mode: u32,
        uid: u32,
    },
    Symlink(TargetSpec),
}

fn target_spec() -> impl Strategy<Value = TargetSpec> {
    let relative_name = prop_oneof![3 => select(&TREE_NAMES[..]), 1 => Just("..")];
    let relative = vec(relative_name, 1..=4).prop_map(|names| names.join("/"));
    let absolute = tree_path().prop_map(|path| path.as_str().to_owned());
    prop_oneof![
        1 => Just(TargetSpec::Itself),
        3 => select(&HOSTILE_TARGETS[..]).prop_map(|target| TargetSpec::Text(target.to_owned())),
        3 => relative.prop_map(TargetSpec::Text),
        2 => absolute.prop_map(TargetSpec::Text),
        1 => (1..8usize).prop_map(|depth| {
            TargetSpec::Text(format!("{}root/.ssh", "../".repeat(depth)))
        }),
    ]
}

fn entry_spec() -> impl Strategy<Value = EntrySpec> {
    let mode = select(&[0o755, 0o700, 0o644, 0o600, 0o4755, 0o1777][..]);
    let uid = select(&[0, 1000][..]);
    prop_oneof![
        2 => (mode.clone(), uid.clone()).prop_map(|(mode, uid)| EntrySpec::Dir { mode, uid }),
        3 => (vec(any::<u8>(), 0..32), mode, uid)
            .prop_map(|(contents, mode, uid)| EntrySpec::File { contents, mode, uid }),
        3 => target_spec().prop_map(EntrySpec::Symlink),
    ]
}

/// Generates a [`MemFs`] holding a small random tree with hostile symlinks.
///
/// Every tree starts from `/etc/shadow` (mode `0640`, `0:42`) and `/root` (mode `0700`),
/// then adds up to 24 directories, files and symlinks at paths over [`TREE_NAMES`], skipping
/// any whose path is taken or lies beneath a file or symlink. Symlink targets include
/// absolute paths such as `/etc` and `/root/.ssh`, climbs such as `../../..`, links to
/// themselves, relative and absolute paths between the tree's own names (which make longer
/// loops), and dangling targets.
pub fn guest_tree() -> impl Strategy<Value = MemFs> {
    vec((tree_path(), entry_spec()), 0..=24).prop_map(|entries| {
        let mut fs = MemFs::new();
        fs.add_file("/etc/shadow", "root:*:19800:0:99999:7:::\n", 0o640, 0, 42)
            .add_dir("/root", 0o700, 0, 0);
        for (path, spec) in entries {
            fs.try_add_node(&path, node_from_spec(&path, spec));
        }
        fs
    })
}

/// Generates a [`guest_tree`] with a path into it: the path of one of its nodes, most
/// often a symlink, with one more name from [`TREE_NAMES`] half of the time, so that the
/// path ends at or passes through the node.
pub fn guest_tree_and_path() -> impl Strategy<Value = (MemFs, GuestPath)> {
    let extra_name = proptest::option::of(select(&TREE_NAMES[..]));
    (guest_tree(), any::<Index>(), any::<bool>(), extra_name).prop_map(
        |(fs, at, prefer_symlink, extra_name)| {
            let snapshot = fs.snapshot();
            let all: Vec<&GuestPath> = snapshot.keys().filter(|path| !path.is_root()).collect();
            let symlinks: Vec<&GuestPath> = snapshot
                .iter()
                .filter(|(_, node)| matches!(node.kind, MemNodeKind::Symlink(_)))
                .map(|(path, _)| path)
                .collect();
            let pool = if prefer_symlink && !symlinks.is_empty() {
                symlinks
            } else {
                all
            };
            let node_path = pool[at.index(pool.len())].clone();
            let path = match extra_name {
                Some(name) => node_path.join(name).expect("tree names are valid"),
                None => node_path,
            };
            (fs, path)
        },
    )
}

fn node_from_spec(path: &GuestPath, spec: EntrySpec) -> MemNode {
    let (kind, mode, uid) = match spec {
        EntrySpec::Dir { mode, uid } => (MemNodeKind::Directory, mode, uid),
        EntrySpec::File {
            contents,
            mode,
            uid,
        } => (MemNodeKind::File(contents), mode, uid),
        EntrySpec::Symlink(TargetSpec::Itself) => {
            let own_name = path.file_name().unwrap_or("link").to_owned();
            (MemNodeKind::Symlink(own_name), 0o777, 0)
        }
        EntrySpec::Symlink(TargetSpec::Text(target)) => (MemNodeKind::Symlink(target), 0o777, 0),
    };
    MemNode {
        kind,
        mode,
        uid,
        gid: uid,
        xattrs: BTreeMap::new(),
    }
}

/// Generated `/etc/shadow` contents with what a test needs to check a change to them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowFile {
    /// The whole file.
    pub text: String,
    /// The entries in file order, without line ends.
    pub lines: Vec<String>,
    /// The index of root's entry in `lines`.
    pub root_index: usize,
    /// Whether `text` ends with a newline.
    pub final_newline: bool,
}

/// Generates the password field of a shadow entry: locked and empty markers (`*`, `!`,
/// `!!`, `!*`, empty), yescrypt, SHA-512 and MD5 crypt hashes, and a hash locked with `!`.
pub fn shadow_hash() -> impl Strategy<Value = String> {
    prop_oneof![
        select(&["*", "!", "!!", "!*", ""][..]).prop_map(str::to_owned),
        "\\$y\\$j9T\\$[./A-Za-z0-9]{22}\\$[./A-Za-z0-9]{43}",
        "\\$6\\$[./A-Za-z0-9]{8,16}\\$[./A-Za-z0-9]{86}",
        "\\$1\\$[./A-Za-z0-9]{8}\\$[./A-Za-z0-9]{22}",
        "!\\$6\\$[./A-Za-z0-9]{8,16}\\$[./A-Za-z0-9]{86}",
    ]
}

/// Generates one shadow entry for `name`, with a random password field and ageing fields
/// that are empty or numbers.
fn shadow_line(name: String) -> impl Strategy<Value = String> {
    let day = prop_oneof![Just(String::new()), "[0-9]{1,5}"];
    (shadow_hash(), day.clone(), day.clone(), day.clone(), day).prop_map(
        move |(hash, last_change, min, max, warn)| {
            format!("{name}:{hash}:{last_change}:{min}:{max}:{warn}:::")
        },
    )
}

/// Generates `/etc/shadow` contents with a root entry and `other_users` more entries (a
/// count or a range, as for [`proptest::collection::vec`]), with unique user names.
///
/// Root's entry may be anywhere in the file, every password field may be locked, empty
/// or a hash, and the file may or may not end with a newline.
pub fn shadow_file(other_users: impl Into<SizeRange>) -> impl Strategy<Value = ShadowFile> {
    let user_name =
        "[a-z_][a-z0-9_-]{0,15}".prop_filter("root has its own entry", |name| name != "root");
    btree_set(user_name, other_users)
        .prop_flat_map(|names| {
            let mut all: Vec<String> = names.into_iter().collect();
            all.push("root".to_owned());
            let lines: Vec<BoxedStrategy<String>> = all
                .into_iter()
                .map(|name| shadow_line(name).boxed())
                .collect();
            lines.prop_shuffle()
        })
        .prop_flat_map(|lines| (Just(lines), any::<bool>()))
        .prop_map(|(lines, final_newline)| {
            let root_index = lines
                .iter()
                .position(|line| line.starts_with("root:"))
                .expect("the root entry is always generated");
            let mut text = lines.join("\n");
            if final_newline {
                text.push('\n');
            }
            ShadowFile {
                text,
                lines,
                root_index,
                final_newline,
            }
        })
}

fn path_from_names<S: AsRef<str>>(names: &[S]) -> GuestPath {
    let text: String = names
        .iter()
        .map(|name| format!("/{}", name.as_ref()))
        .collect();
    if text.is_empty() {
        return GuestPath::root();
    }
    GuestPath::new(&text).expect("generated names are valid")
}
