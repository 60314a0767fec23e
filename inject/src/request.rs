//! The injection request: [`Request`] and its parts, and the checks that need no guest
//! image.

use std::collections::BTreeSet;
use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;

use vfs_core::GuestPath;

use crate::error::{InjectError, ItemError};
use crate::password::Password;
use crate::ssh_key::SshPublicKey;

/// One kind of injection. The names are the ones users give to `--best-effort`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub enum ItemKind {
    /// The SSH public key for root, with the SELinux relabel line where needed.
    #[serde(rename = "key")]
    Key,
    /// The root password in `/etc/shadow`.
    #[serde(rename = "password")]
    Password,
    /// `/etc/network/interfaces`.
    #[serde(rename = "net")]
    Network,
    /// `/meta.js`.
    #[serde(rename = "metadata")]
    Metadata,
    /// Arbitrary files.
    #[serde(rename = "files")]
    Files,
}

impl ItemKind {
    /// Every kind, in the order injection handles them.
    pub const ALL: [ItemKind; 5] = [
        ItemKind::Key,
        ItemKind::Password,
        ItemKind::Network,
        ItemKind::Metadata,
        ItemKind::Files,
    ];

    /// Returns the name users give on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            ItemKind::Key => "key",
            ItemKind::Password => "password",
            ItemKind::Network => "net",
            ItemKind::Metadata => "metadata",
            ItemKind::Files => "files",
        }
    }
}

impl fmt::Display for ItemKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An unknown name for an [`ItemKind`] or a [`HashMethod`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {name:?}; expected one of: {expected}")]
pub struct UnknownNameError {
    what: &'static str,
    name: String,
    expected: &'static str,
}

impl FromStr for ItemKind {
    type Err = UnknownNameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        ItemKind::ALL
            .into_iter()
            .find(|kind| kind.as_str() == name)
            .ok_or_else(|| UnknownNameError {
                what: "item",
                name: name.to_owned(),
                expected: "key, password, net, metadata, files",
            })
    }
}

/// The crypt(3) method used to hash the root password.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum HashMethod {
    /// SHA-512 crypt (`$6$`), the default of current distributions.
    #[default]
    Sha512,
    /// SHA-256 crypt (`$5$`).
    Sha256,
    /// MD5 crypt (`$1$`), for old guests whose libc supports nothing newer.
    Md5,
}

impl HashMethod {
    /// Returns the name users give on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            HashMethod::Sha512 => "sha512",
            HashMethod::Sha256 => "sha256",
            HashMethod::Md5 => "md5",
        }
    }
}

impl fmt::Display for HashMethod {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for HashMethod {
    type Err = UnknownNameError;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        [HashMethod::Sha512, HashMethod::Sha256, HashMethod::Md5]
            .into_iter()
            .find(|method| method.as_str() == name)
            .ok_or_else(|| UnknownNameError {
                what: "password hash method",
                name: name.to_owned(),
                expected: "sha512, sha256, md5",
            })
    }
}

/// The source of an injected file's contents.
#[derive(Clone, PartialEq, Eq)]
pub enum FileSource {
    /// The bytes themselves.
    Bytes(Vec<u8>),
    /// A file on the host, streamed into the guest without reading it whole into memory.
    HostFile(PathBuf),
}

impl fmt::Debug for FileSource {
    // File contents stay out of logs, so only the length is shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FileSource::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
            FileSource::HostFile(path) => f.debug_tuple("HostFile").field(path).finish(),
        }
    }
}

/// One file to write into the guest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileItem {
    /// The file's path in the guest.
    pub guest_path: GuestPath,
    /// The source of its contents.
    pub source: FileSource,
}

/// Everything one run injects. Fields left `None` or empty inject nothing.
#[derive(Clone, Default)]
pub struct Request {
    /// An OpenSSH public key line to add to root's `authorized_keys`.
    pub ssh_key: Option<String>,
    /// The new root password.
    pub password: Option<Password>,
    /// How to hash [`Request::password`].
    pub password_method: HashMethod,
    /// The new contents of `/etc/network/interfaces`.
    pub network: Option<Vec<u8>>,
    /// The new contents of `/meta.js`, which must be a JSON object.
    pub metadata: Option<Vec<u8>>,
    /// Files to write, in order.
    pub files: Vec<FileItem>,
    /// Items whose failure becomes a warning in the report instead of failing the request.
    pub best_effort: BTreeSet<ItemKind>,
}

impl fmt::Debug for Request {
    // Contents are shown by length only, and the password not at all, so that a request
    // can be logged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Request")
            .field("ssh_key", &self.ssh_key.as_ref().map(|_| "[given]"))
            .field("password", &self.password)
            .field("password_method", &self.password_method)
            .field("network", &self.network.as_ref().map(Vec::len))
            .field("metadata", &self.metadata.as_ref().map(Vec::len))
            .field("files", &self.files)
            .field("best_effort", &self.best_effort)
            .finish()
    }
}

impl Request {
    /// Checks every input that can be checked without the guest: the SSH key's syntax, the
    /// password, that the metadata is a JSON object, and that host files are regular files.
    ///
    /// Best-effort items are checked too, because a malformed input is a mistake in the
    /// request rather than in the guest.
    pub fn validate_inputs(&self) -> Result<(), InjectError> {
        if let Some(key) = &self.ssh_key {
            SshPublicKey::parse(key).map_err(|source| invalid(ItemKind::Key, source))?;
        }
        if let Some(password) = &self.password {
            password
                .validate()
                .map_err(|source| invalid(ItemKind::Password, source))?;
        }
        if let Some(metadata) = &self.metadata {
            validate_metadata(metadata).map_err(|source| invalid(ItemKind::Metadata, source))?;
        }
        for item in &self.files {
            if let FileSource::HostFile(path) = &item.source {
                host_file_size(path).map_err(|source| invalid(ItemKind::Files, source))?;
            }
        }
        Ok(())
    }

    /// Returns true when `kind` failing only gives a warning.
    pub fn is_best_effort(&self, kind: ItemKind) -> bool {
        self.best_effort.contains(&kind)
    }
}

fn invalid(item: ItemKind, source: ItemError) -> InjectError {
    InjectError::InvalidInput {
        item,
        source: Box::new(source),
    }
}

/// Checks that `metadata` is one JSON object.
pub(crate) fn validate_metadata(metadata: &[u8]) -> Result<(), ItemError> {
    let value: serde_json::Value =
        serde_json::from_slice(metadata).map_err(|source| ItemError::InvalidJson { source })?;
    if !value.is_object() {
        return Err(ItemError::JsonNotObject {
            found: json_type_name(&value),
        });
    }
    Ok(())
}

fn json_type_name(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Returns the size of a host file, which must be a regular file that can be opened.
pub(crate) fn host_file_size(path: &std::path::Path) -> Result<u64, ItemError> {
    let file = std::fs::File::open(path).map_err(|source| ItemError::OpeningHostFile {
        path: path.to_owned(),
        source,
    })?;
    let metadata = file
        .metadata()
        .map_err(|source| ItemError::OpeningHostFile {
            path: path.to_owned(),
            source,
        })?;
    if !metadata.is_file() {
        return Err(ItemError::HostFileNotRegular {
            path: path.to_owned(),
        });
    }
    Ok(metadata.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn item_kind_names_round_trip() {
        for kind in ItemKind::ALL {
            assert_eq!(kind.as_str().parse::<ItemKind>().unwrap(), kind);
            assert_eq!(kind.to_string(), kind.as_str());
        }
    }

    #[test]
    fn item_kind_unknown_name_lists_choices() {
        let err = "network".parse::<ItemKind>().unwrap_err().to_string();
        assert!(err.contains("\"network\""), "{err}");
        assert!(err.contains("net, metadata"), "{err}");
    }

    #[test]
    fn hash_method_parses_and_defaults_to_sha512() {
        assert_eq!(HashMethod::default(), HashMethod::Sha512);
        assert_eq!("sha256".parse::<HashMethod>().unwrap(), HashMethod::Sha256);
        assert_eq!("md5".parse::<HashMethod>().unwrap(), HashMethod::Md5);
        assert!("des".parse::<HashMethod>().is_err());
    }

    #[test]
    fn metadata_array_is_rejected() {
        let err = validate_metadata(b"[1, 2]").unwrap_err();
        assert!(matches!(
            err,
            ItemError::JsonNotObject { found: "an array" }
        ));
    }

    #[test]
    fn metadata_invalid_json_is_rejected() {
        assert!(matches!(
            validate_metadata(b"{\"a\": "),
            Err(ItemError::InvalidJson { .. })
        ));
    }

    #[test]
    fn metadata_object_is_accepted() {
        assert!(validate_metadata(b" {\"uuid\": \"x\", \"n\": [1]}\n").is_ok());
    }

    #[test]
    fn request_debug_hides_contents() {
        let request = Request {
            ssh_key: Some("ssh-ed25519 AAAA secret-comment".into()),
            password: Some(Password::new("hunter2".into())),
            network: Some(b"iface eth0 inet dhcp\n".to_vec()),
            files: vec![FileItem {
                guest_path: GuestPath::new("/etc/motd").unwrap(),
                source: FileSource::Bytes(b"welcome".to_vec()),
            }],
            ..Request::default()
        };
        let text = format!("{request:?}");
        assert!(!text.contains("hunter2"), "{text}");
        assert!(!text.contains("secret-comment"), "{text}");
        assert!(!text.contains("iface"), "{text}");
        assert!(!text.contains("welcome"), "{text}");
    }

    #[test]
    fn validate_inputs_rejects_missing_host_file() {
        let request = Request {
            files: vec![FileItem {
                guest_path: GuestPath::new("/opt/x").unwrap(),
                source: FileSource::HostFile("/nonexistent/guest-inject-test".into()),
            }],
            ..Request::default()
        };
        let err = request.validate_inputs().unwrap_err();
        assert!(matches!(
            err,
            InjectError::InvalidInput {
                item: ItemKind::Files,
                ..
            }
        ));
    }

    #[test]
    fn validate_inputs_rejects_host_directory() {
        let dir = tempfile::tempdir().unwrap();
        let request = Request {
            files: vec![FileItem {
                guest_path: GuestPath::new("/opt/x").unwrap(),
                source: FileSource::HostFile(dir.path().to_owned()),
            }],
            ..Request::default()
        };
        let Err(InjectError::InvalidInput { source, .. }) = request.validate_inputs() else {
            panic!("a host directory was accepted");
        };
        assert!(
            matches!(*source, ItemError::HostFileNotRegular { .. }),
            "{source:?}"
        );
    }
}
