//! Parsing of the guest's `/etc/passwd` and `/etc/group`, for resolving names to ids.

use crate::error::{Result, VfsError};
use crate::path::GuestPath;
use crate::vfs::GuestFs;

/// The guest's user database.
pub const PASSWD_PATH: &str = "/etc/passwd";
/// The guest's group database.
pub const GROUP_PATH: &str = "/etc/group";

/// One line of `/etc/passwd`, with the fields injection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PasswdEntry {
    /// Login name.
    pub name: String,
    /// User id.
    pub uid: u32,
    /// Primary group id.
    pub gid: u32,
    /// Home directory.
    pub home: String,
}

/// One line of `/etc/group`, with the fields injection uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupEntry {
    /// Group name.
    pub name: String,
    /// Group id.
    pub gid: u32,
}

/// Parses `/etc/passwd` contents. Blank lines, comments and NIS `+`/`-` lines are skipped;
/// a line with a missing or non-numeric id is an error naming its line number.
pub fn parse_passwd(contents: &[u8]) -> std::result::Result<Vec<PasswdEntry>, String> {
    let mut entries = Vec::new();
    for (index, line) in significant_lines(contents) {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 7 {
            return Err(format!(
                "line {}: expected 7 fields, found {}",
                index + 1,
                fields.len()
            ));
        }
        let uid = parse_id(fields[2]).ok_or_else(|| format!("line {}: invalid uid", index + 1))?;
        let gid = parse_id(fields[3]).ok_or_else(|| format!("line {}: invalid gid", index + 1))?;
        entries.push(PasswdEntry {
            name: fields[0].to_owned(),
            uid,
            gid,
            home: fields[5].to_owned(),
        });
    }
    Ok(entries)
}

/// Parses `/etc/group` contents, with the same rules as [`parse_passwd`].
pub fn parse_group(contents: &[u8]) -> std::result::Result<Vec<GroupEntry>, String> {
    let mut entries = Vec::new();
    for (index, line) in significant_lines(contents) {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() < 3 {
            return Err(format!(
                "line {}: expected 4 fields, found {}",
                index + 1,
                fields.len()
            ));
        }
        let gid = parse_id(fields[2]).ok_or_else(|| format!("line {}: invalid gid", index + 1))?;
        entries.push(GroupEntry {
            name: fields[0].to_owned(),
            gid,
        });
    }
    Ok(entries)
}

/// Looks up a user id by name in the guest's `/etc/passwd`.
pub fn lookup_uid<F: GuestFs + ?Sized>(fs: &mut F, name: &str) -> Result<u32> {
    let path = GuestPath::new(PASSWD_PATH)?;
    let contents = fs.read_file(&path)?;
    let entries = parse_passwd(&contents).map_err(|reason| VfsError::Malformed {
        path: path.clone(),
        reason,
    })?;
    entries
        .iter()
        .find(|entry| entry.name == name)
        .map(|entry| entry.uid)
        .ok_or_else(|| VfsError::UnknownUser {
            name: name.to_owned(),
        })
}

/// Looks up a group id by name in the guest's `/etc/group`.
pub fn lookup_gid<F: GuestFs + ?Sized>(fs: &mut F, name: &str) -> Result<u32> {
    let path = GuestPath::new(GROUP_PATH)?;
    let contents = fs.read_file(&path)?;
    let entries = parse_group(&contents).map_err(|reason| VfsError::Malformed {
        path: path.clone(),
        reason,
    })?;
    entries
        .iter()
        .find(|entry| entry.name == name)
        .map(|entry| entry.gid)
        .ok_or_else(|| VfsError::UnknownGroup {
            name: name.to_owned(),
        })
}

/// Yields (index, line) for lines that carry an entry, as UTF-8 with invalid bytes replaced.
fn significant_lines(contents: &[u8]) -> impl Iterator<Item = (usize, String)> + '_ {
    contents
        .split(|&byte| byte == b'\n')
        .map(|line| {
            String::from_utf8_lossy(line)
                .trim_end_matches('\r')
                .to_owned()
        })
        .enumerate()
        .filter(|(_, line)| {
            let trimmed = line.trim();
            !trimmed.is_empty()
                && !trimmed.starts_with('#')
                && !trimmed.starts_with('+')
                && !trimmed.starts_with('-')
        })
}

fn parse_id(field: &str) -> Option<u32> {
    if field.is_empty() || !field.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    field.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_parses_debian_lines() {
        let text =
            b"root:x:0:0:root:/root:/bin/bash\nsshd:x:104:65534::/run/sshd:/usr/sbin/nologin\n";
        let entries = parse_passwd(text).unwrap();
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].name, "sshd");
        assert_eq!(entries[1].uid, 104);
        assert_eq!(entries[1].gid, 65534);
        assert_eq!(entries[0].home, "/root");
    }

    #[test]
    fn passwd_skips_comments_and_nis_lines() {
        let text = b"# comment\n\n+::::::\nroot:x:0:0:root:/root:/bin/sh";
        assert_eq!(parse_passwd(text).unwrap().len(), 1);
    }

    #[test]
    fn passwd_rejects_bad_uid_with_line_number() {
        let err =
            parse_passwd(b"root:x:0:0:root:/root:/bin/sh\nbad:x:-1:0::/:/bin/sh\n").unwrap_err();
        assert!(err.contains("line 2"), "{err}");
    }

    #[test]
    fn passwd_rejects_short_line() {
        assert!(parse_passwd(b"root:x:0\n").is_err());
    }

    #[test]
    fn group_parses_members_field() {
        let entries = parse_group(b"root:x:0:\nshadow:x:42:alice,bob\n").unwrap();
        assert_eq!(
            entries[1],
            GroupEntry {
                name: "shadow".into(),
                gid: 42
            }
        );
    }
}
