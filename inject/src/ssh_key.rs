//! OpenSSH public keys: parsing and checking one `authorized_keys` line, and finding a key
//! in an existing `authorized_keys` file.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;

use crate::error::ItemError;

/// The public key types accepted, with the fields that follow the type name in the
/// decoded key blob (RFC 4253 section 6.6, RFC 5656 section 3.1, RFC 8709 section 4 and
/// OpenSSH's PROTOCOL.u2f).
const KEY_TYPES: &[(&str, &[BlobField])] = &[
    ("ssh-ed25519", &[BlobField::Bytes(32)]),
    (
        "ecdsa-sha2-nistp256",
        &[BlobField::Exact("nistp256"), BlobField::Any],
    ),
    (
        "ecdsa-sha2-nistp384",
        &[BlobField::Exact("nistp384"), BlobField::Any],
    ),
    (
        "ecdsa-sha2-nistp521",
        &[BlobField::Exact("nistp521"), BlobField::Any],
    ),
    ("ssh-rsa", &[BlobField::Any, BlobField::Any]),
    (
        "sk-ssh-ed25519@openssh.com",
        &[BlobField::Bytes(32), BlobField::Any],
    ),
    (
        "sk-ecdsa-sha2-nistp256@openssh.com",
        &[BlobField::Exact("nistp256"), BlobField::Any, BlobField::Any],
    ),
    (
        "ssh-dss",
        &[
            BlobField::Any,
            BlobField::Any,
            BlobField::Any,
            BlobField::Any,
        ],
    ),
];

/// The expected contents of one length-prefixed string of a key blob.
#[derive(Debug, Clone, Copy)]
enum BlobField {
    /// Any non-empty contents (an mpint, a point, an application string).
    Any,
    /// Exactly this many bytes.
    Bytes(usize),
    /// Exactly this text (a curve name).
    Exact(&'static str),
}

/// A checked OpenSSH public key line: type, base64 body and optional comment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SshPublicKey {
    key_type: String,
    body: String,
    comment: Option<String>,
}

impl SshPublicKey {
    /// Parses one `TYPE BASE64 [COMMENT]` line, as `ssh-keygen` writes it.
    ///
    /// Surrounding whitespace, a final line break included, is ignored. The line must be
    /// one line, the type one of [`KEY_TYPES`], and the body must decode to a blob whose
    /// embedded type is the declared one, with the fields that type needs and nothing after.
    /// Option prefixes such as `command="..."` are not accepted.
    pub(crate) fn parse(line: &str) -> Result<Self, ItemError> {
        let line = line.trim();
        if line.is_empty() {
            return Err(invalid_key("it is empty"));
        }
        if line.contains(['\n', '\r']) {
            return Err(invalid_key("it spans more than one line"));
        }

        let (key_type, rest) = split_word(line);
        let Some((_, fields)) = KEY_TYPES.iter().find(|(name, _)| *name == key_type) else {
            return Err(ItemError::InvalidSshKey {
                reason: format!(
                    "unknown key type {key_type:?}; expected one of: {}",
                    KEY_TYPES
                        .iter()
                        .map(|(name, _)| *name)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        };
        let (body, comment) = split_word(rest);
        if body.is_empty() {
            return Err(invalid_key("the base64 key body is missing"));
        }
        let comment = (!comment.is_empty()).then(|| comment.to_owned());

        let blob = STANDARD
            .decode(body)
            .map_err(|error| ItemError::InvalidSshKey {
                reason: format!("the key body is not valid base64: {error}"),
            })?;
        check_blob(key_type, fields, &blob)?;

        Ok(Self {
            key_type: key_type.to_owned(),
            body: body.to_owned(),
            comment,
        })
    }

    /// Returns the line to write into `authorized_keys`, without a line break.
    pub(crate) fn to_line(&self) -> String {
        match &self.comment {
            Some(comment) => format!("{} {} {comment}", self.key_type, self.body),
            None => format!("{} {}", self.key_type, self.body),
        }
    }

    /// Returns true when `authorized_keys` already contains this key (same type and body),
    /// whatever its options or comment.
    pub(crate) fn is_in_authorized_keys(&self, contents: &[u8]) -> bool {
        contents
            .split(|&byte| byte == b'\n')
            .map(String::from_utf8_lossy)
            .filter(|line| !line.trim_start().starts_with('#'))
            .any(|line| {
                // An options prefix may come before the type, so look for the type and
                // body as neighbouring words anywhere on the line.
                let words: Vec<&str> = line.split_whitespace().collect();
                words
                    .windows(2)
                    .any(|pair| pair[0] == self.key_type && pair[1] == self.body)
            })
    }
}

/// Splits `text` at its first run of spaces or tabs into the first word and the rest, with
/// the rest's surrounding blanks removed.
fn split_word(text: &str) -> (&str, &str) {
    match text.split_once([' ', '\t']) {
        Some((word, rest)) => (word, rest.trim_matches([' ', '\t'])),
        None => (text, ""),
    }
}

fn invalid_key(reason: &str) -> ItemError {
    ItemError::InvalidSshKey {
        reason: reason.to_owned(),
    }
}

/// Checks the decoded key blob: the embedded type name, then each field of `fields`, then
/// that nothing follows.
fn check_blob(key_type: &str, fields: &[BlobField], blob: &[u8]) -> Result<(), ItemError> {
    let mut rest = blob;
    let embedded = read_string(&mut rest)
        .ok_or_else(|| invalid_key("the key body is too short to hold a key type"))?;
    if embedded != key_type.as_bytes() {
        return Err(ItemError::InvalidSshKey {
            reason: format!(
                "the key body is a {:?} key but the line declares {key_type:?}",
                String::from_utf8_lossy(embedded)
            ),
        });
    }
    for (index, field) in fields.iter().enumerate() {
        let value = read_string(&mut rest).ok_or_else(|| ItemError::InvalidSshKey {
            reason: format!(
                "the {key_type} key body is truncated at field {}",
                index + 2
            ),
        })?;
        let valid = match field {
            BlobField::Any => !value.is_empty(),
            BlobField::Bytes(len) => value.len() == *len,
            BlobField::Exact(text) => value == text.as_bytes(),
        };
        if !valid {
            return Err(ItemError::InvalidSshKey {
                reason: format!("field {} of the {key_type} key body is invalid", index + 2),
            });
        }
    }
    if !rest.is_empty() {
        return Err(ItemError::InvalidSshKey {
            reason: format!("the {key_type} key body has {} extra bytes", rest.len()),
        });
    }
    Ok(())
}

/// Reads one SSH wire-format string (a 32-bit big-endian length, then the bytes).
fn read_string<'a>(rest: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (length, after_length) = rest.split_first_chunk::<4>()?;
    let length = usize::try_from(u32::from_be_bytes(*length)).ok()?;
    if after_length.len() < length {
        return None;
    }
    let (value, after_value) = after_length.split_at(length);
    *rest = after_value;
    Some(value)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Builds a key blob from SSH strings.
    pub(crate) fn blob(strings: &[&[u8]]) -> String {
        let mut bytes = Vec::new();
        for value in strings {
            bytes.extend_from_slice(&u32::try_from(value.len()).unwrap().to_be_bytes());
            bytes.extend_from_slice(value);
        }
        STANDARD.encode(bytes)
    }

    /// Returns a well-formed ed25519 key line whose public key is 32 copies of `seed`.
    pub(crate) fn ed25519_line(seed: u8, comment: &str) -> String {
        let body = blob(&[b"ssh-ed25519", &[seed; 32]]);
        format!("ssh-ed25519 {body} {comment}")
            .trim_end()
            .to_owned()
    }

    #[test]
    fn ed25519_key_with_comment_parses() {
        let line = ed25519_line(7, "alice@laptop");
        let key = SshPublicKey::parse(&format!("{line}\n")).unwrap();
        assert_eq!(key.to_line(), line);
        assert_eq!(key.comment.as_deref(), Some("alice@laptop"));
    }

    #[test]
    fn key_types_with_their_fields_parse() {
        let cases = [
            format!(
                "ssh-rsa {}",
                blob(&[b"ssh-rsa", &[1, 0, 1], &[0x00, 0xc3, 0x11]])
            ),
            format!(
                "ecdsa-sha2-nistp384 {} comment with spaces",
                blob(&[b"ecdsa-sha2-nistp384", b"nistp384", &[4; 97]])
            ),
            format!(
                "sk-ecdsa-sha2-nistp256@openssh.com {}",
                blob(&[
                    b"sk-ecdsa-sha2-nistp256@openssh.com",
                    b"nistp256",
                    &[4; 65],
                    b"ssh:"
                ])
            ),
            format!(
                "sk-ssh-ed25519@openssh.com {}",
                blob(&[b"sk-ssh-ed25519@openssh.com", &[9; 32], b"ssh:"])
            ),
            format!(
                "ssh-dss {}",
                blob(&[b"ssh-dss", &[1; 129], &[2; 21], &[3; 128], &[4; 128]])
            ),
        ];
        for line in cases {
            assert!(SshPublicKey::parse(&line).is_ok(), "rejected {line}");
        }
    }

    #[test]
    fn key_with_extra_blanks_parses() {
        let body = blob(&[b"ssh-ed25519", &[2; 32]]);
        let key = SshPublicKey::parse(&format!("ssh-ed25519 \t {body}   my comment \n")).unwrap();
        assert_eq!(key.to_line(), format!("ssh-ed25519 {body} my comment"));
    }

    #[test]
    fn key_with_mismatched_embedded_type_is_rejected() {
        let body = blob(&[b"ssh-rsa", &[1, 0, 1], &[5; 64]]);
        let err = SshPublicKey::parse(&format!("ssh-ed25519 {body}")).unwrap_err();
        assert!(err.to_string().contains("\"ssh-rsa\""), "{err}");
    }

    #[test]
    fn key_with_unknown_type_is_rejected() {
        let err = SshPublicKey::parse("ssh-foo AAAA").unwrap_err();
        assert!(err.to_string().contains("\"ssh-foo\""), "{err}");
    }

    #[test]
    fn key_with_bad_base64_is_rejected() {
        let err = SshPublicKey::parse("ssh-ed25519 not*base64").unwrap_err();
        assert!(err.to_string().contains("base64"), "{err}");
    }

    #[test]
    fn key_on_two_lines_is_rejected() {
        let line = ed25519_line(1, "a");
        let err = SshPublicKey::parse(&format!("{line}\n{line}")).unwrap_err();
        assert!(err.to_string().contains("more than one line"), "{err}");
    }

    #[test]
    fn key_with_options_prefix_is_rejected() {
        let line = ed25519_line(1, "");
        assert!(SshPublicKey::parse(&format!("no-pty {line}")).is_err());
    }

    #[test]
    fn truncated_and_padded_blobs_are_rejected() {
        let short = blob(&[b"ssh-ed25519", &[1; 31]]);
        let long = blob(&[b"ssh-ed25519", &[1; 32], b"trailing"]);
        let no_field = blob(&[b"ssh-ed25519"]);
        for body in [short, long, no_field] {
            assert!(SshPublicKey::parse(&format!("ssh-ed25519 {body}")).is_err());
        }
    }

    #[test]
    fn ecdsa_curve_must_match_type() {
        let body = blob(&[b"ecdsa-sha2-nistp256", b"nistp384", &[4; 65]]);
        assert!(SshPublicKey::parse(&format!("ecdsa-sha2-nistp256 {body}")).is_err());
    }

    #[test]
    fn key_found_despite_options() {
        let key = SshPublicKey::parse(&ed25519_line(3, "new-comment")).unwrap();
        let existing = format!(
            "# admin keys\r\nno-pty,command=\"echo a b\" {}\r\n",
            ed25519_line(3, "old-comment")
        );
        assert!(key.is_in_authorized_keys(existing.as_bytes()));
    }

    #[test]
    fn key_not_found_when_only_commented_out() {
        let key = SshPublicKey::parse(&ed25519_line(3, "")).unwrap();
        let existing = format!("# {}\n{}\n", ed25519_line(3, ""), ed25519_line(4, ""));
        assert!(!key.is_in_authorized_keys(existing.as_bytes()));
    }
}
