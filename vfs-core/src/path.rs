//! Guest paths: checked, absolute paths inside a guest filesystem.

use std::fmt;
use std::str::FromStr;

/// Errors from building a [`GuestPath`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// The path contains a NUL byte.
    #[error("invalid guest path {path:?}: it contains a NUL byte")]
    ContainsNul { path: String },
    /// The path contains `..`, which could climb out of a directory.
    #[error("invalid guest path {path:?}: `..` is not allowed")]
    ParentComponent { path: String },
    /// The path contains an empty name, as in `a//b`, or is empty.
    #[error("invalid guest path {path:?}: empty names are not allowed")]
    EmptyComponent { path: String },
    /// A name is longer than the 255 bytes Linux filesystems allow.
    #[error("invalid guest path {path:?}: a name is longer than 255 bytes")]
    NameTooLong { path: String },
    /// The name given to [`GuestPath::join`] contains a `/`.
    #[error("invalid name {name:?}: a single name cannot contain `/`")]
    SlashInName { name: String },
}

/// A path inside a guest filesystem.
///
/// It is absolute from the guest root and made only of normal names: building one rejects
/// `..`, empty names (`a//b`, a trailing `/`) and NUL bytes. A relative input such as
/// `etc/shadow` means the same as `/etc/shadow`, and `.` names are dropped. The root is `/`.
/// Every [`crate::GuestFs`] operation takes this type, so no backend sees an unchecked string.
#[derive(Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct GuestPath {
    /// Normalised form: `/` for the root, otherwise `/name/name...` with no trailing `/`.
    text: String,
}

/// The longest name Linux filesystems accept, in bytes.
const NAME_MAX: usize = 255;

impl GuestPath {
    /// Builds a guest path from text, rejecting `..`, empty names and NUL bytes.
    pub fn new(path: &str) -> Result<Self, PathError> {
        if path.contains('\0') {
            return Err(PathError::ContainsNul {
                path: path.to_owned(),
            });
        }
        if path.is_empty() {
            return Err(PathError::EmptyComponent {
                path: path.to_owned(),
            });
        }

        let relative = path.strip_prefix('/').unwrap_or(path);
        if relative.is_empty() {
            return Ok(Self::root());
        }

        let mut text = String::with_capacity(path.len() + 1);
        for name in relative.split('/') {
            match name {
                "" => {
                    return Err(PathError::EmptyComponent {
                        path: path.to_owned(),
                    })
                }
                ".." => {
                    return Err(PathError::ParentComponent {
                        path: path.to_owned(),
                    })
                }
                "." => continue,
                _ if name.len() > NAME_MAX => {
                    return Err(PathError::NameTooLong {
                        path: path.to_owned(),
                    })
                }
                _ => {
                    text.push('/');
                    text.push_str(name);
                }
            }
        }
        if text.is_empty() {
            text.push('/');
        }
        Ok(Self { text })
    }

    /// Returns the guest root, `/`.
    pub fn root() -> Self {
        Self {
            text: "/".to_owned(),
        }
    }

    /// Returns the path as text, always starting with `/`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Returns true for the guest root.
    pub fn is_root(&self) -> bool {
        self.text == "/"
    }

    /// Returns the names of the path from the root down; empty for the root.
    pub fn components(&self) -> impl DoubleEndedIterator<Item = &str> + Clone {
        self.text[1..].split('/').filter(|name| !name.is_empty())
    }

    /// Returns the last name, or `None` for the root.
    pub fn file_name(&self) -> Option<&str> {
        self.components().next_back()
    }

    /// Returns the directory holding this path, or `None` for the root.
    pub fn parent(&self) -> Option<GuestPath> {
        if self.is_root() {
            return None;
        }
        let cut = self.text.rfind('/').unwrap_or(0);
        let text = if cut == 0 {
            "/".to_owned()
        } else {
            self.text[..cut].to_owned()
        };
        Some(Self { text })
    }

    /// Returns this path and every directory above it, from the root down.
    pub fn ancestors_from_root(&self) -> Vec<GuestPath> {
        let mut chain = vec![Self::root()];
        let mut text = String::new();
        for name in self.components() {
            text.push('/');
            text.push_str(name);
            chain.push(Self { text: text.clone() });
        }
        chain
    }

    /// Returns the path of `name` inside this directory.
    ///
    /// `name` must be one normal name: no `/`, not `..`, not empty, no NUL.
    pub fn join(&self, name: &str) -> Result<GuestPath, PathError> {
        if name.contains('/') {
            return Err(PathError::SlashInName {
                name: name.to_owned(),
            });
        }
        if name.is_empty() || name == "." {
            return Err(PathError::EmptyComponent {
                path: format!("{}/{name}", self.text),
            });
        }
        let joined = if self.is_root() {
            format!("/{name}")
        } else {
            format!("{}/{name}", self.text)
        };
        Self::new(&joined)
    }

    /// Returns true when `self` is `other` or lies beneath it.
    pub fn starts_with(&self, other: &GuestPath) -> bool {
        if other.is_root() {
            return true;
        }
        self.text == other.text
            || (self.text.starts_with(&other.text)
                && self.text.as_bytes().get(other.text.len()) == Some(&b'/'))
    }
}

impl fmt::Display for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl fmt::Debug for GuestPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GuestPath({:?})", self.text)
    }
}

impl FromStr for GuestPath {
    type Err = PathError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::new(s)
    }
}

impl TryFrom<&str> for GuestPath {
    type Error = PathError;

    fn try_from(value: &str) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl AsRef<str> for GuestPath {
    fn as_ref(&self) -> &str {
        &self.text
    }
}

/// Resolves a symlink target lexically inside the guest, as the [`crate::GuestFs`] contract
/// defines: an absolute target starts at the guest root, and `..` stops at the guest root.
///
/// `link_dir` is the directory that holds the link. The result may still name further
/// symlinks, which the caller resolves in turn.
pub fn resolve_link_target(link_dir: &GuestPath, target: &str) -> Result<GuestPath, PathError> {
    if target.contains('\0') {
        return Err(PathError::ContainsNul {
            path: target.to_owned(),
        });
    }
    let mut names: Vec<&str> = if target.starts_with('/') {
        Vec::new()
    } else {
        link_dir.components().collect()
    };
    for name in target.split('/') {
        match name {
            "" | "." => {}
            ".." => {
                names.pop();
            }
            _ => names.push(name),
        }
    }
    if names.is_empty() {
        return Ok(GuestPath::root());
    }
    GuestPath::new(&format!("/{}", names.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_and_absolute_are_equal() {
        assert_eq!(
            GuestPath::new("etc/shadow").unwrap(),
            GuestPath::new("/etc/shadow").unwrap()
        );
    }

    #[test]
    fn dot_names_are_dropped() {
        assert_eq!(
            GuestPath::new("/./etc/./shadow").unwrap().as_str(),
            "/etc/shadow"
        );
    }

    #[test]
    fn parent_component_is_rejected() {
        let err = GuestPath::new("/root/../../etc").unwrap_err();
        assert!(matches!(err, PathError::ParentComponent { .. }));
        assert!(err.to_string().contains("/root/../../etc"));
    }

    #[test]
    fn empty_name_is_rejected() {
        assert!(matches!(
            GuestPath::new("/a//b"),
            Err(PathError::EmptyComponent { .. })
        ));
        assert!(matches!(
            GuestPath::new("/a/"),
            Err(PathError::EmptyComponent { .. })
        ));
        assert!(matches!(
            GuestPath::new(""),
            Err(PathError::EmptyComponent { .. })
        ));
    }

    #[test]
    fn nul_is_rejected() {
        assert!(matches!(
            GuestPath::new("/etc/sha\0dow"),
            Err(PathError::ContainsNul { .. })
        ));
    }

    #[test]
    fn long_name_is_rejected() {
        let name = "x".repeat(256);
        assert!(matches!(
            GuestPath::new(&name),
            Err(PathError::NameTooLong { .. })
        ));
    }

    #[test]
    fn root_has_no_parent_or_name() {
        let root = GuestPath::new("/").unwrap();
        assert!(root.is_root());
        assert_eq!(root.parent(), None);
        assert_eq!(root.file_name(), None);
        assert_eq!(root.components().count(), 0);
    }

    #[test]
    fn parent_and_name_split_the_path() {
        let path = GuestPath::new("/root/.ssh/authorized_keys").unwrap();
        assert_eq!(path.parent().unwrap().as_str(), "/root/.ssh");
        assert_eq!(path.file_name(), Some("authorized_keys"));
        assert_eq!(
            GuestPath::new("/meta.js").unwrap().parent().unwrap(),
            GuestPath::root()
        );
    }

    #[test]
    fn join_rejects_slash_and_dotdot() {
        let etc = GuestPath::new("/etc").unwrap();
        assert_eq!(etc.join("shadow").unwrap().as_str(), "/etc/shadow");
        assert!(etc.join("a/b").is_err());
        assert!(etc.join("..").is_err());
        assert!(etc.join("").is_err());
    }

    #[test]
    fn starts_with_respects_name_boundaries() {
        let boot = GuestPath::new("/boot").unwrap();
        assert!(GuestPath::new("/boot/grub").unwrap().starts_with(&boot));
        assert!(boot.starts_with(&boot));
        assert!(!GuestPath::new("/bootx").unwrap().starts_with(&boot));
        assert!(boot.starts_with(&GuestPath::root()));
    }

    #[test]
    fn ancestors_run_from_root() {
        let chain = GuestPath::new("/a/b").unwrap().ancestors_from_root();
        let texts: Vec<&str> = chain.iter().map(GuestPath::as_str).collect();
        assert_eq!(texts, ["/", "/a", "/a/b"]);
    }

    #[test]
    fn link_target_absolute_stays_in_guest() {
        let dir = GuestPath::new("/root").unwrap();
        assert_eq!(
            resolve_link_target(&dir, "/etc/passwd").unwrap().as_str(),
            "/etc/passwd"
        );
    }

    #[test]
    fn link_target_dotdot_stops_at_root() {
        let dir = GuestPath::new("/root/.ssh").unwrap();
        let resolved = resolve_link_target(&dir, "../../../../../etc/shadow").unwrap();
        assert_eq!(resolved.as_str(), "/etc/shadow");
    }

    #[test]
    fn link_target_relative_joins_link_dir() {
        let dir = GuestPath::new("/etc").unwrap();
        assert_eq!(
            resolve_link_target(&dir, "./net/../network")
                .unwrap()
                .as_str(),
            "/etc/network"
        );
    }
}
