//! Helpers shared by the integration tests: SSH keys, guest paths and snapshot diffs.

#![allow(dead_code)]

use std::collections::{BTreeMap, BTreeSet};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use testkit::MemNode;
use vfs_core::GuestPath;

/// Returns a well-formed ed25519 public key line whose key bytes are 32 copies of `seed`.
pub fn ed25519_key(seed: u8, comment: &str) -> String {
    let mut blob = Vec::new();
    for field in [&b"ssh-ed25519"[..], &[seed; 32][..]] {
        blob.extend_from_slice(&u32::try_from(field.len()).unwrap().to_be_bytes());
        blob.extend_from_slice(field);
    }
    let line = format!("ssh-ed25519 {} {comment}", STANDARD.encode(blob));
    line.trim_end().to_owned()
}

pub fn path(text: &str) -> GuestPath {
    GuestPath::new(text).unwrap()
}

/// Returns the paths whose node was added, removed or changed between two snapshots.
pub fn changed_paths(
    before: &BTreeMap<GuestPath, MemNode>,
    after: &BTreeMap<GuestPath, MemNode>,
) -> BTreeSet<GuestPath> {
    let all: BTreeSet<&GuestPath> = before.keys().chain(after.keys()).collect();
    all.into_iter()
        .filter(|path| before.get(*path) != after.get(*path))
        .cloned()
        .collect()
}

/// Returns the changed paths of [`changed_paths`] as text, for readable asserts.
pub fn changed_path_texts(
    before: &BTreeMap<GuestPath, MemNode>,
    after: &BTreeMap<GuestPath, MemNode>,
) -> Vec<String> {
    changed_paths(before, after)
        .into_iter()
        .map(|path| path.to_string())
        .collect()
}
