//! Text edits of guest files, as pure functions from old contents to new: adding a key to
//! `authorized_keys`, replacing root's hash in `/etc/shadow`, and adding the SELinux
//! relabel command to `rc.local`.
//!
//! Each edit keeps every byte it has no reason to change, so that line endings, a missing
//! final newline and other users' lines survive as they were.

/// The comment line written above an injected key.
pub(crate) const KEY_COMMENT: &str = "# SSH key injected by guest-inject";

/// The comment line written above the relabel command in `rc.local`.
pub(crate) const RELABEL_COMMENT: &str =
    "# Restore the SELinux labels of root's SSH directory; added by guest-inject";

/// The interpreter line of an `rc.local` that had none.
pub(crate) const SHEBANG: &str = "#!/bin/sh";

/// Returns `existing` with the comment line and `key_line` appended, each on its own line.
pub(crate) fn append_authorized_key(existing: &[u8], key_line: &str) -> Vec<u8> {
    let mut contents = Vec::with_capacity(existing.len() + KEY_COMMENT.len() + key_line.len() + 3);
    contents.extend_from_slice(existing);
    if !contents.is_empty() && !contents.ends_with(b"\n") {
        contents.push(b'\n');
    }
    contents.extend_from_slice(KEY_COMMENT.as_bytes());
    contents.push(b'\n');
    contents.extend_from_slice(key_line.as_bytes());
    contents.push(b'\n');
    contents
}

/// Returns `shadow` with the second field of the first `root` line replaced by `hash`, or
/// `None` when no line is root's.
///
/// The field ends at the next `:`, or at the end of the line when the line has only two
/// fields, and a `\r` before the line break stays where it is.
pub(crate) fn replace_root_hash(shadow: &[u8], hash: &str) -> Option<Vec<u8>> {
    let mut line_start = 0;
    for line in shadow.split(|&byte| byte == b'\n') {
        if let Some(after_name) = line.strip_prefix(b"root:") {
            let field_start = line_start + b"root:".len();
            let field_len = match after_name.iter().position(|&byte| byte == b':') {
                Some(colon) => colon,
                None => after_name.strip_suffix(b"\r").unwrap_or(after_name).len(),
            };
            let mut contents = Vec::with_capacity(shadow.len() + hash.len());
            contents.extend_from_slice(&shadow[..field_start]);
            contents.extend_from_slice(hash.as_bytes());
            contents.extend_from_slice(&shadow[field_start + field_len..]);
            return Some(contents);
        }
        line_start += line.len() + 1;
    }
    None
}

/// Returns the shell command that restores the SELinux labels of `ssh_dir` at boot.
///
/// `|| true` keeps an `rc.local` run with `sh -e` going when `restorecon` is missing.
pub(crate) fn relabel_command(ssh_dir: &str) -> String {
    format!("restorecon -R {} || true", shell_quote(ssh_dir))
}

/// Returns the new `rc.local` with the relabel `command`, or `None` when the file already
/// runs it.
///
/// `existing` is `None` for a missing file, which becomes `#!/bin/sh` and the command. An
/// existing file gets `#!/bin/sh` on top only when no line starts with `#!`, so that it never
/// has two. The command goes before a last `exit 0`, with or without a final newline, and
/// otherwise at the end.
pub(crate) fn add_relabel_command(existing: Option<&[u8]>, command: &str) -> Option<Vec<u8>> {
    let existing = existing.unwrap_or_default();
    let already_there = existing
        .split(|&byte| byte == b'\n')
        .any(|line| String::from_utf8_lossy(line).trim() == command);
    if already_there {
        return None;
    }

    let block = format!("{RELABEL_COMMENT}\n{command}\n");
    let mut contents = Vec::with_capacity(existing.len() + SHEBANG.len() + block.len() + 2);
    let has_shebang = existing
        .split(|&byte| byte == b'\n')
        .any(|line| line.starts_with(b"#!"));
    if !has_shebang {
        contents.extend_from_slice(SHEBANG.as_bytes());
        contents.push(b'\n');
    }

    match last_exit_zero_offset(existing) {
        Some(offset) => {
            contents.extend_from_slice(&existing[..offset]);
            contents.extend_from_slice(block.as_bytes());
            contents.extend_from_slice(&existing[offset..]);
        }
        None => {
            contents.extend_from_slice(existing);
            if !existing.is_empty() && !existing.ends_with(b"\n") {
                contents.push(b'\n');
            }
            contents.extend_from_slice(block.as_bytes());
        }
    }
    Some(contents)
}

/// Returns the byte offset of the last non-blank line when that line is `exit 0`.
fn last_exit_zero_offset(contents: &[u8]) -> Option<usize> {
    let mut line_start = 0;
    let mut last_non_blank = None;
    for line in contents.split(|&byte| byte == b'\n') {
        if !line.iter().all(u8::is_ascii_whitespace) {
            last_non_blank = Some((line_start, line));
        }
        line_start += line.len() + 1;
    }
    let (offset, line) = last_non_blank?;
    (String::from_utf8_lossy(line).trim() == "exit 0").then_some(offset)
}

/// Quotes `text` for a POSIX shell when it contains anything beyond a safe set of characters.
fn shell_quote(text: &str) -> String {
    let safe = text
        .bytes()
        .all(|byte| byte.is_ascii_alphanumeric() || b"/._-+@%=:,".contains(&byte));
    if safe && !text.is_empty() {
        return text.to_owned();
    }
    format!("'{}'", text.replace('\'', r"'\''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "ssh-ed25519 AAAAkey comment";

    fn text(bytes: &[u8]) -> &str {
        std::str::from_utf8(bytes).unwrap()
    }

    #[test]
    fn authorized_key_into_empty_file() {
        let contents = append_authorized_key(b"", KEY);
        assert_eq!(text(&contents), format!("{KEY_COMMENT}\n{KEY}\n"));
    }

    #[test]
    fn authorized_key_after_line_without_newline() {
        let contents = append_authorized_key(b"ssh-rsa AAAAold", KEY);
        assert_eq!(
            text(&contents),
            format!("ssh-rsa AAAAold\n{KEY_COMMENT}\n{KEY}\n")
        );
    }

    #[test]
    fn authorized_key_keeps_existing_bytes() {
        let existing = b"ssh-rsa AAAAold one\r\n\n";
        let contents = append_authorized_key(existing, KEY);
        assert!(contents.starts_with(existing));
    }

    #[test]
    fn shadow_root_field_is_replaced_only() {
        let shadow = b"daemon:*:19000:0:99999:7:::\nroot:!!:19000:0:99999:7:::\nbob:$6$x$y:1::::::";
        let contents = replace_root_hash(shadow, "$6$salt$hash").unwrap();
        assert_eq!(
            text(&contents),
            "daemon:*:19000:0:99999:7:::\nroot:$6$salt$hash:19000:0:99999:7:::\nbob:$6$x$y:1::::::"
        );
    }

    #[test]
    fn shadow_crlf_and_missing_final_newline_survive() {
        let shadow = b"root:*:1:0:99999:7:::\r\nalice:!:1::::::\r";
        let contents = replace_root_hash(shadow, "H").unwrap();
        assert_eq!(
            text(&contents),
            "root:H:1:0:99999:7:::\r\nalice:!:1::::::\r"
        );
    }

    #[test]
    fn shadow_two_field_root_line_keeps_carriage_return() {
        let contents = replace_root_hash(b"root:old\r\n", "H").unwrap();
        assert_eq!(text(&contents), "root:H\r\n");
    }

    #[test]
    fn shadow_without_root_gives_none() {
        assert!(replace_root_hash(b"rootless:x:1::::::\n#root:x\n", "H").is_none());
    }

    #[test]
    fn shadow_empty_root_field_is_filled() {
        let contents = replace_root_hash(b"root::1::::::", "H").unwrap();
        assert_eq!(text(&contents), "root:H:1::::::");
    }

    #[test]
    fn relabel_command_quotes_odd_paths() {
        assert_eq!(
            relabel_command("/root/.ssh"),
            "restorecon -R /root/.ssh || true"
        );
        assert_eq!(
            relabel_command("/home/it's here/.ssh"),
            r"restorecon -R '/home/it'\''s here/.ssh' || true"
        );
    }

    #[test]
    fn rc_local_created_with_shebang() {
        let command = relabel_command("/root/.ssh");
        let contents = add_relabel_command(None, &command).unwrap();
        assert_eq!(
            text(&contents),
            format!("#!/bin/sh\n{RELABEL_COMMENT}\n{command}\n")
        );
    }

    #[test]
    fn rc_local_command_goes_before_final_exit() {
        let command = relabel_command("/root/.ssh");
        let existing = b"#!/bin/sh -e\necho hi\nexit 0\n\n";
        let contents = add_relabel_command(Some(existing), &command).unwrap();
        assert_eq!(
            text(&contents),
            format!("#!/bin/sh -e\necho hi\n{RELABEL_COMMENT}\n{command}\nexit 0\n\n")
        );
    }

    #[test]
    fn rc_local_exit_without_final_newline() {
        let command = relabel_command("/root/.ssh");
        let contents = add_relabel_command(Some(b"#!/bin/bash\nexit 0"), &command).unwrap();
        assert_eq!(
            text(&contents),
            format!("#!/bin/bash\n{RELABEL_COMMENT}\n{command}\nexit 0")
        );
    }

    #[test]
    fn rc_local_without_exit_is_appended_to() {
        let command = relabel_command("/root/.ssh");
        let contents = add_relabel_command(Some(b"#!/bin/sh\ntouch /x"), &command).unwrap();
        assert_eq!(
            text(&contents),
            format!("#!/bin/sh\ntouch /x\n{RELABEL_COMMENT}\n{command}\n")
        );
    }

    #[test]
    fn rc_local_without_shebang_gets_one() {
        let command = relabel_command("/root/.ssh");
        let contents = add_relabel_command(Some(b"exit 0\n"), &command).unwrap();
        assert_eq!(
            text(&contents),
            format!("#!/bin/sh\n{RELABEL_COMMENT}\n{command}\nexit 0\n")
        );
    }

    #[test]
    fn rc_local_with_command_is_left_alone() {
        let command = relabel_command("/root/.ssh");
        let existing = format!("#!/bin/sh\n  {command}\nexit 0\n");
        assert!(add_relabel_command(Some(existing.as_bytes()), &command).is_none());
    }

    #[test]
    fn rc_local_inner_exit_ignored() {
        let command = relabel_command("/root/.ssh");
        let existing = b"#!/bin/sh\n[ -f /x ] || exit 0\necho done\n";
        let contents = add_relabel_command(Some(existing), &command).unwrap();
        assert!(text(&contents).ends_with(&format!("echo done\n{RELABEL_COMMENT}\n{command}\n")));
    }
}
