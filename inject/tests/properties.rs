//! Property tests on `testkit::MemFs`: injection into random hostile trees changes only the
//! places its targets lead to, shadow edits keep every other line, and injecting a key
//! twice changes nothing the second time.

mod common;

use std::collections::BTreeMap;

use common::{changed_paths, ed25519_key, path};
use inject::{inject, FileItem, FileSource, HashMethod, ItemKind, Outcome, Password, Request};
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::select;
use testkit::debian::PASSWD;
use testkit::strategies::{guest_tree, shadow_file, tree_path};
use testkit::{MemFs, MemNode, MemNodeKind};
use vfs_core::{GuestPath, MAX_SYMLINK_FOLLOWS};

/// The relabel command for root's default `.ssh`.
const RELABEL: &str = "restorecon -R /root/.ssh || true";

/// Follows symlinks in `path` over a snapshot, as the `GuestFs` contract defines (an
/// absolute target starts at the guest root, `..` leaves the directory reached so far and
/// stops at the root). Missing names are kept, since injection may create them. Returns
/// `None` for a symlink loop.
fn resolve(nodes: &BTreeMap<GuestPath, MemNode>, path: &GuestPath) -> Option<GuestPath> {
    let mut pending: Vec<String> = path.components().rev().map(str::to_owned).collect();
    let mut current = GuestPath::root();
    let mut follows = 0;
    while let Some(name) = pending.pop() {
        match name.as_str() {
            "." => continue,
            ".." => {
                current = current.parent().unwrap_or_else(GuestPath::root);
                continue;
            }
            _ => {}
        }
        let here = current.join(&name).ok()?;
        match nodes.get(&here).map(|node| &node.kind) {
            Some(MemNodeKind::Symlink(target)) => {
                follows += 1;
                if follows > MAX_SYMLINK_FOLLOWS {
                    return None;
                }
                if target.starts_with('/') {
                    current = GuestPath::root();
                }
                let names = target.split('/').filter(|name| !name.is_empty());
                pending.extend(names.rev().map(str::to_owned));
            }
            _ => current = here,
        }
    }
    Some(current)
}

/// Adds the account file and, when asked, the SELinux directory to a random tree. Either may
/// not fit (a file or symlink may sit where `/etc` is), which leaves a guest that some items
/// cannot use.
fn prepare_tree(fs: &mut MemFs, selinux: bool) {
    fs.try_add_node(&path("/etc/passwd"), file_node(PASSWD.as_bytes(), 0o644));
    if selinux {
        fs.try_add_node(&path("/etc/selinux"), dir_node());
    }
}

fn file_node(contents: &[u8], mode: u32) -> MemNode {
    MemNode {
        kind: MemNodeKind::File(contents.to_vec()),
        mode,
        uid: 0,
        gid: 0,
        xattrs: BTreeMap::new(),
    }
}

fn dir_node() -> MemNode {
    MemNode {
        kind: MemNodeKind::Directory,
        mode: 0o755,
        uid: 0,
        gid: 0,
        xattrs: BTreeMap::new(),
    }
}

fn every_item_best_effort(file_path: GuestPath) -> Request {
    Request {
        ssh_key: Some(ed25519_key(5, "prop@test")),
        password: Some(Password::new("pw".into())),
        // MD5 crypt keeps the many cases fast; the hash method plays no part here.
        password_method: HashMethod::Md5,
        network: Some(b"auto lo\n".to_vec()),
        metadata: Some(b"{}".to_vec()),
        files: vec![FileItem {
            guest_path: file_path,
            source: FileSource::Bytes(b"payload".to_vec()),
        }],
        best_effort: ItemKind::ALL.into(),
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn hostile_tree_changes_only_target_paths(
        mut fs in guest_tree(),
        selinux in any::<bool>(),
        file_path in tree_path(),
    ) {
        prepare_tree(&mut fs, selinux);
        let before = fs.snapshot();
        let request = every_item_best_effort(file_path.clone());

        let report = inject(&mut fs, &request);

        prop_assert!(report.is_ok(), "{:?}", report);
        let after = fs.snapshot();
        let targets = [
            "/root/.ssh/authorized_keys",
            "/etc/rc.local",
            "/etc/rc.d/rc.local",
            "/etc/shadow",
            "/etc/network/interfaces",
            "/meta.js",
        ]
        .map(path)
        .into_iter()
        .chain([file_path]);
        let resolved: Vec<GuestPath> =
            targets.filter_map(|target| resolve(&before, &target)).collect();
        for changed in changed_paths(&before, &after) {
            let after_node = after.get(&changed);
            prop_assert!(after_node.is_some(), "{} was removed", changed);
            let kind = &after_node.unwrap().kind;
            // A target may also be the parent of another target, as when a file item
            // names root's `.ssh`, so either role is accepted.
            let is_written_target =
                resolved.contains(&changed) && matches!(kind, MemNodeKind::File(_));
            let is_new_parent = !before.contains_key(&changed)
                && *kind == MemNodeKind::Directory
                && resolved.iter().any(|target| target.starts_with(&changed));
            prop_assert!(
                is_written_target || is_new_parent,
                "{} changed to {:?} but is no target or new parent",
                changed,
                kind
            );
        }
    }

}

proptest! {
    // SHA crypt takes tens of milliseconds per hash in unoptimised test builds, so this
    // property runs fewer cases.
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn shadow_edit_keeps_every_other_line(
        shadow in shadow_file(0..40),
        method in select(&[HashMethod::Sha512, HashMethod::Sha256, HashMethod::Md5][..]),
    ) {
        let mut fs = MemFs::debian_like_with_shadow(&shadow.text);
        let request = Request {
            password: Some(Password::new("secret".into())),
            password_method: method,
            ..Request::default()
        };

        inject(&mut fs, &request).unwrap();

        let after = String::from_utf8(fs.file_contents("/etc/shadow").unwrap().to_vec()).unwrap();
        prop_assert_eq!(after.ends_with('\n'), shadow.final_newline);
        let lines: Vec<&str> = after.trim_end_matches('\n').split('\n').collect();
        prop_assert_eq!(lines.len(), shadow.lines.len());
        for (index, (line, old)) in lines.iter().zip(&shadow.lines).enumerate() {
            if index != shadow.root_index {
                prop_assert_eq!(line, old);
                continue;
            }
            let new_fields: Vec<&str> = line.split(':').collect();
            let old_fields: Vec<&str> = old.split(':').collect();
            prop_assert_eq!(new_fields.len(), old_fields.len());
            prop_assert_eq!(new_fields[0], "root");
            prop_assert!(new_fields[1].starts_with(&format!("${}$", match method {
                HashMethod::Sha512 => 6,
                HashMethod::Sha256 => 5,
                HashMethod::Md5 => 1,
            })), "{}", new_fields[1]);
            prop_assert_eq!(&new_fields[2..], &old_fields[2..]);
        }
    }

}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn key_injected_twice_changes_nothing_second_time(
        mut fs in guest_tree(),
        selinux in any::<bool>(),
        seed in any::<u8>(),
    ) {
        prepare_tree(&mut fs, selinux);
        let request = Request {
            ssh_key: Some(ed25519_key(seed, "twice@test")),
            ..Request::default()
        };

        let first = inject(&mut fs, &request);
        let after_first = fs.snapshot();
        let second = inject(&mut fs, &request);

        prop_assert_eq!(fs.snapshot(), after_first);
        if first.is_ok() {
            let report = second.unwrap();
            prop_assert!(
                matches!(report.items[0].outcome, Outcome::Unchanged { .. }),
                "{:?}",
                report
            );
        }
    }

    #[test]
    fn rc_local_edit_keeps_lines_and_one_shebang(
        lines in vec(
            select(&["#!/bin/sh -e", "exit 0", "", "echo start", "  ", "exit 0 # done", "fi"][..]),
            0..8,
        ),
        final_newline in any::<bool>(),
    ) {
        let mut original = lines.join("\n");
        if final_newline && !original.is_empty() {
            original.push('\n');
        }
        let mut fs = MemFs::debian_like();
        fs.add_dir("/etc/selinux", 0o755, 0, 0)
            .add_file("/etc/rc.local", original.as_str(), 0o644, 0, 0);
        let request = Request {
            ssh_key: Some(ed25519_key(1, "")),
            ..Request::default()
        };

        inject(&mut fs, &request).unwrap();
        let after_first = fs.snapshot();
        inject(&mut fs, &request).unwrap();

        prop_assert_eq!(fs.snapshot(), after_first);
        let edited = fs.file_contents("/etc/rc.local").unwrap();
        let edited = String::from_utf8(edited.to_vec()).unwrap();
        prop_assert_eq!(edited.lines().filter(|line| *line == RELABEL).count(), 1);
        let shebangs_before = original.lines().filter(|line| line.starts_with("#!")).count();
        let shebangs_after = edited.lines().filter(|line| line.starts_with("#!")).count();
        prop_assert_eq!(shebangs_after, shebangs_before.max(1));
        // The original lines stay, in order, with the new ones among them.
        let mut remaining = edited.lines();
        for line in original.lines() {
            prop_assert!(remaining.any(|candidate| candidate == line), "lost {:?}", line);
        }
        prop_assert_eq!(fs.node("/etc/rc.local").unwrap().mode, 0o755);
    }
}
