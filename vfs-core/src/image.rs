//! The image model: which file, in which format, and which filesystem inside it.
//!
//! Settings come from three places, strongest first: the caller's explicit flags, the
//! image's own metadata sidecar (`IMAGE.meta.json` beside the image, or a file the caller
//! names), and detection. There is no host-wide setting.
//!
//! The sidecar is a JSON object with two optional keys:
//!
//! ```json
//! { "disk_format": "qcow2", "inject_partition": "2" }
//! ```
//!
//! `inject_partition` takes the [`PartitionSelector`] spellings (`none`, `auto`, a number,
//! `label:NAME`, `uuid:UUID`), and the number may also be a JSON number.

use std::fmt;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::str::FromStr;

/// A disk image format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DiskFormat {
    /// Raw bytes of a disk.
    Raw,
    /// QEMU copy-on-write version 2 or 3.
    Qcow2,
}

impl DiskFormat {
    /// Returns the name qemu and libguestfs use for the format.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

impl fmt::Display for DiskFormat {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DiskFormat {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "raw" => Ok(Self::Raw),
            "qcow2" => Ok(Self::Qcow2),
            other => Err(ImageError::UnknownFormat {
                value: other.to_owned(),
            }),
        }
    }
}

/// Which filesystem of the image to open.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PartitionSelector {
    /// The whole disk is one filesystem, with no partition table.
    None,
    /// Find the operating system's root filesystem by inspection and mount the other
    /// filesystems its `/etc/fstab` lists beneath it.
    Auto,
    /// The partition with this number (1-based, as in `/dev/sda1`).
    Number(u32),
    /// The partition whose filesystem has this label.
    Label(String),
    /// The partition whose filesystem has this UUID (compared without regard to case).
    Uuid(String),
}

impl fmt::Display for PartitionSelector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::None => f.write_str("none"),
            Self::Auto => f.write_str("auto"),
            Self::Number(number) => write!(f, "{number}"),
            Self::Label(label) => write!(f, "label:{label}"),
            Self::Uuid(uuid) => write!(f, "uuid:{uuid}"),
        }
    }
}

impl FromStr for PartitionSelector {
    type Err = ImageError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let invalid = || ImageError::InvalidPartition {
            value: s.to_owned(),
        };
        match s {
            "none" => Ok(Self::None),
            "auto" => Ok(Self::Auto),
            _ => {
                if let Some(label) = s.strip_prefix("label:") {
                    if label.is_empty() {
                        return Err(invalid());
                    }
                    return Ok(Self::Label(label.to_owned()));
                }
                if let Some(uuid) = s.strip_prefix("uuid:") {
                    if uuid.is_empty() {
                        return Err(invalid());
                    }
                    return Ok(Self::Uuid(uuid.to_owned()));
                }
                match s.parse::<u32>() {
                    Ok(number) if number >= 1 => Ok(Self::Number(number)),
                    _ => Err(invalid()),
                }
            }
        }
    }
}

/// Errors from reading image metadata and settling the format.
#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    /// The format name is not one this project handles.
    #[error("unknown disk format {value:?}: expected raw or qcow2")]
    UnknownFormat { value: String },
    /// The partition spelling is not valid.
    #[error("invalid partition {value:?}: expected none, auto, a partition number from 1, label:NAME or uuid:UUID")]
    InvalidPartition { value: String },
    /// The image path cannot be used.
    #[error("image {path}: {reason}")]
    UnusableImage { path: PathBuf, reason: String },
    /// Reading the image failed.
    #[error("reading image {path} failed")]
    ReadingImage {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// Reading the metadata sidecar failed.
    #[error("reading image metadata {path} failed")]
    ReadingMetadata {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The metadata sidecar is not valid.
    #[error("image metadata {path} is invalid: {reason}")]
    InvalidMetadata { path: PathBuf, reason: String },
    /// The qcow2 header is damaged or truncated.
    #[error("image {path} has an invalid qcow2 header: {reason}")]
    InvalidQcow2 { path: PathBuf, reason: String },
    /// A qcow2 image names a backing file outside the image's own directory.
    #[error("image {path} has backing file {backing:?}, which lies outside {dir}; refusing to open it (declare the format explicitly or allow outside backing files if the chain is trusted)")]
    BackingOutsideImageDir {
        path: PathBuf,
        backing: String,
        dir: PathBuf,
    },
}

/// The image's own metadata, from its JSON sidecar.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ImageMeta {
    /// `disk_format`, when given.
    pub disk_format: Option<DiskFormat>,
    /// `inject_partition`, when given.
    pub inject_partition: Option<PartitionSelector>,
}

impl ImageMeta {
    /// Returns the default sidecar path for an image: `IMAGE.meta.json` beside it.
    pub fn sidecar_path(image: &Path) -> PathBuf {
        let mut name = image.file_name().unwrap_or_default().to_os_string();
        name.push(".meta.json");
        image.with_file_name(name)
    }

    /// Parses sidecar JSON; `path` names the file in errors.
    pub fn parse(text: &[u8], path: &Path) -> Result<Self, ImageError> {
        let invalid = |reason: String| ImageError::InvalidMetadata {
            path: path.to_owned(),
            reason,
        };
        let value: serde_json::Value =
            serde_json::from_slice(text).map_err(|err| invalid(err.to_string()))?;
        let object = value
            .as_object()
            .ok_or_else(|| invalid("expected a JSON object".into()))?;

        let disk_format = match object.get("disk_format") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(text)) => Some(
                text.parse()
                    .map_err(|err: ImageError| invalid(err.to_string()))?,
            ),
            Some(_) => return Err(invalid("disk_format must be a string".into())),
        };
        let inject_partition = match object.get("inject_partition") {
            None | Some(serde_json::Value::Null) => None,
            Some(serde_json::Value::String(text)) => Some(
                text.parse()
                    .map_err(|err: ImageError| invalid(err.to_string()))?,
            ),
            Some(serde_json::Value::Number(number)) => {
                let number = number
                    .as_u64()
                    .filter(|&n| (1..=u64::from(u32::MAX)).contains(&n))
                    .ok_or_else(|| {
                        invalid(format!(
                            "inject_partition {number} is not a partition number from 1"
                        ))
                    })?;
                Some(PartitionSelector::Number(number as u32))
            }
            Some(_) => {
                return Err(invalid(
                    "inject_partition must be a string or a number".into(),
                ))
            }
        };
        Ok(Self {
            disk_format,
            inject_partition,
        })
    }

    /// Loads a sidecar file.
    pub fn load(path: &Path) -> Result<Self, ImageError> {
        let text = std::fs::read(path).map_err(|source| ImageError::ReadingMetadata {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }
}

/// What the caller asks for: an image and the settings it gives explicitly.
#[derive(Debug, Clone, Default)]
pub struct ImageRequest {
    /// The image file.
    pub path: PathBuf,
    /// The format, when the caller declares it.
    pub format: Option<DiskFormat>,
    /// The filesystem to open, when the caller gives one.
    pub partition: Option<PartitionSelector>,
    /// A metadata sidecar to read instead of `IMAGE.meta.json`.
    pub meta_path: Option<PathBuf>,
    /// Allow a detected qcow2 image whose backing file lies outside the image's directory.
    pub allow_outside_backing: bool,
}

/// Where a setting of a [`ResolvedImage`] came from, for logs and `inspect`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SettingSource {
    /// The caller gave it.
    Flag,
    /// The image's metadata sidecar gave it.
    Metadata,
    /// It was detected from the image, or is the default.
    Detected,
}

impl fmt::Display for SettingSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Flag => "command line",
            Self::Metadata => "image metadata",
            Self::Detected => "detection",
        })
    }
}

/// An image with its format and partition settled.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// The image file.
    pub path: PathBuf,
    /// The format to open it with.
    pub format: DiskFormat,
    /// Where the format came from.
    pub format_source: SettingSource,
    /// The filesystem to open.
    pub partition: PartitionSelector,
    /// Where the partition came from.
    pub partition_source: SettingSource,
    /// The image's size in bytes on the host (for qcow2, the file, not the virtual disk).
    pub file_size: u64,
}

/// The first four bytes of every qcow2 image.
pub const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

impl ImageRequest {
    /// Settles format and partition: flags first, then the sidecar, then detection.
    ///
    /// A declared format is used as declared and never probed. An undeclared image is qcow2
    /// when it starts with the qcow2 magic, raw otherwise, and a detected qcow2 with a
    /// backing file outside the image's directory is rejected unless
    /// [`ImageRequest::allow_outside_backing`] is set.
    pub fn resolve(&self) -> Result<ResolvedImage, ImageError> {
        let file_size = check_image_file(&self.path)?;

        let meta = match &self.meta_path {
            Some(path) => ImageMeta::load(path)?,
            None => {
                let sidecar = ImageMeta::sidecar_path(&self.path);
                if sidecar.exists() {
                    ImageMeta::load(&sidecar)?
                } else {
                    ImageMeta::default()
                }
            }
        };

        let (format, format_source) = match (self.format, meta.disk_format) {
            (Some(format), _) => (format, SettingSource::Flag),
            (None, Some(format)) => (format, SettingSource::Metadata),
            (None, None) => (
                detect_format(&self.path, self.allow_outside_backing)?,
                SettingSource::Detected,
            ),
        };
        let (partition, partition_source) = match (&self.partition, meta.inject_partition) {
            (Some(partition), _) => (partition.clone(), SettingSource::Flag),
            (None, Some(partition)) => (partition, SettingSource::Metadata),
            (None, None) => (PartitionSelector::Auto, SettingSource::Detected),
        };

        Ok(ResolvedImage {
            path: self.path.clone(),
            format,
            format_source,
            partition,
            partition_source,
            file_size,
        })
    }
}

/// Checks that the image is a non-empty regular file and returns its size.
fn check_image_file(path: &Path) -> Result<u64, ImageError> {
    let unusable = |reason: &str| ImageError::UnusableImage {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let metadata = match std::fs::metadata(path) {
        Ok(metadata) => metadata,
        Err(err) if err.kind() == io::ErrorKind::NotFound => return Err(unusable("no such file")),
        Err(source) => {
            return Err(ImageError::ReadingImage {
                path: path.to_owned(),
                source,
            })
        }
    };
    if metadata.is_dir() {
        return Err(unusable("is a directory, not a disk image"));
    }
    if !metadata.is_file() {
        return Err(unusable("is not a regular file"));
    }
    if metadata.len() == 0 {
        return Err(unusable("is empty (0 bytes)"));
    }
    Ok(metadata.len())
}

/// Detects the format from the first bytes and checks a qcow2 image's backing file.
fn detect_format(path: &Path, allow_outside_backing: bool) -> Result<DiskFormat, ImageError> {
    let reading = |source| ImageError::ReadingImage {
        path: path.to_owned(),
        source,
    };
    let mut file = File::open(path).map_err(reading)?;
    let mut magic = [0u8; 4];
    match file.read_exact(&mut magic) {
        Ok(()) => {}
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => return Ok(DiskFormat::Raw),
        Err(err) => return Err(reading(err)),
    }
    if magic != QCOW2_MAGIC {
        return Ok(DiskFormat::Raw);
    }

    if let Some(backing) = qcow2_backing_file(&mut file, path)? {
        if !allow_outside_backing && !backing_is_inside(path, &backing) {
            let dir = image_dir(path);
            return Err(ImageError::BackingOutsideImageDir {
                path: path.to_owned(),
                backing,
                dir,
            });
        }
    }
    Ok(DiskFormat::Qcow2)
}

/// Reads the backing file name of a qcow2 image, if it has one.
pub fn qcow2_backing_file<R: Read + Seek>(
    source: &mut R,
    path: &Path,
) -> Result<Option<String>, ImageError> {
    let invalid = |reason: &str| ImageError::InvalidQcow2 {
        path: path.to_owned(),
        reason: reason.to_owned(),
    };
    let reading = |source| ImageError::ReadingImage {
        path: path.to_owned(),
        source,
    };

    // The version 2 header: magic (4), version (4), backing_file_offset (8),
    // backing_file_size (4), all big-endian.
    let mut header = [0u8; 20];
    source.seek(SeekFrom::Start(0)).map_err(reading)?;
    source.read_exact(&mut header).map_err(|err| {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            invalid("the header is truncated")
        } else {
            reading(err)
        }
    })?;
    let version = u32::from_be_bytes(header[4..8].try_into().expect("4 bytes"));
    if version != 2 && version != 3 {
        return Err(invalid(&format!("unsupported version {version}")));
    }
    let offset = u64::from_be_bytes(header[8..16].try_into().expect("8 bytes"));
    let size = u32::from_be_bytes(header[16..20].try_into().expect("4 bytes"));
    if offset == 0 {
        return Ok(None);
    }
    // qemu limits the backing file name to 1023 bytes.
    if size == 0 || size > 1023 {
        return Err(invalid(&format!(
            "backing file name length {size} is out of range"
        )));
    }

    let mut name = vec![0u8; size as usize];
    source.seek(SeekFrom::Start(offset)).map_err(reading)?;
    source.read_exact(&mut name).map_err(|err| {
        if err.kind() == io::ErrorKind::UnexpectedEof {
            invalid("the backing file name lies past the end of the file")
        } else {
            reading(err)
        }
    })?;
    Ok(Some(String::from_utf8_lossy(&name).into_owned()))
}

fn image_dir(image: &Path) -> PathBuf {
    match image.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent.to_owned(),
        _ => PathBuf::from("."),
    }
}

/// Returns true when a backing file name stays inside the image's directory: a plain
/// relative path without `..`, and no protocol prefix such as `nbd:` or `json:`.
fn backing_is_inside(image: &Path, backing: &str) -> bool {
    if backing.contains(':') || backing.starts_with('/') {
        // An absolute path may still point into the image's directory.
        if let Ok(dir) = image_dir(image).canonicalize() {
            if !backing.contains(':') {
                let backing_path = Path::new(backing);
                if let Some(parent) = backing_path.parent() {
                    if parent.canonicalize().ok().as_deref() == Some(dir.as_path())
                        && !backing_path
                            .components()
                            .any(|c| c == std::path::Component::ParentDir)
                    {
                        return true;
                    }
                }
            }
        }
        return false;
    }
    let relative = Path::new(backing);
    relative
        .components()
        .all(|c| matches!(c, std::path::Component::Normal(_)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Cursor, Write};

    #[test]
    fn partition_spellings_parse() {
        assert_eq!(
            "none".parse::<PartitionSelector>().unwrap(),
            PartitionSelector::None
        );
        assert_eq!(
            "auto".parse::<PartitionSelector>().unwrap(),
            PartitionSelector::Auto
        );
        assert_eq!(
            "2".parse::<PartitionSelector>().unwrap(),
            PartitionSelector::Number(2)
        );
        assert_eq!(
            "label:root".parse::<PartitionSelector>().unwrap(),
            PartitionSelector::Label("root".into())
        );
        assert_eq!(
            "uuid:AB-CD".parse::<PartitionSelector>().unwrap(),
            PartitionSelector::Uuid("AB-CD".into())
        );
    }

    #[test]
    fn partition_zero_and_junk_are_rejected() {
        assert!("0".parse::<PartitionSelector>().is_err());
        assert!("-1".parse::<PartitionSelector>().is_err());
        assert!("label:".parse::<PartitionSelector>().is_err());
        assert!("sda1".parse::<PartitionSelector>().is_err());
    }

    #[test]
    fn sidecar_accepts_number_and_string() {
        let path = Path::new("disk.raw.meta.json");
        let meta =
            ImageMeta::parse(br#"{"disk_format":"raw","inject_partition":2}"#, path).unwrap();
        assert_eq!(meta.inject_partition, Some(PartitionSelector::Number(2)));
        assert_eq!(meta.disk_format, Some(DiskFormat::Raw));
        let meta = ImageMeta::parse(br#"{"inject_partition":"label:root"}"#, path).unwrap();
        assert_eq!(
            meta.inject_partition,
            Some(PartitionSelector::Label("root".into()))
        );
        assert_eq!(meta.disk_format, None);
    }

    #[test]
    fn sidecar_rejects_bad_values_naming_file() {
        let path = Path::new("/images/disk.raw.meta.json");
        for text in [
            &br#"{"disk_format":"vmdk"}"#[..],
            br#"{"inject_partition":0}"#,
            b"[1]",
            b"{",
        ] {
            let err = ImageMeta::parse(text, path).unwrap_err();
            assert!(
                err.to_string().contains("/images/disk.raw.meta.json"),
                "{err}"
            );
        }
    }

    #[test]
    fn sidecar_path_appends_suffix() {
        assert_eq!(
            ImageMeta::sidecar_path(Path::new("/a/disk.qcow2")),
            PathBuf::from("/a/disk.qcow2.meta.json")
        );
    }

    fn qcow2_header(backing: Option<&str>) -> Vec<u8> {
        let mut bytes = vec![0u8; 512];
        bytes[0..4].copy_from_slice(&QCOW2_MAGIC);
        bytes[4..8].copy_from_slice(&3u32.to_be_bytes());
        if let Some(name) = backing {
            bytes[8..16].copy_from_slice(&200u64.to_be_bytes());
            bytes[16..20].copy_from_slice(&(name.len() as u32).to_be_bytes());
            bytes[200..200 + name.len()].copy_from_slice(name.as_bytes());
        }
        bytes
    }

    #[test]
    fn qcow2_backing_name_is_read() {
        let mut cursor = Cursor::new(qcow2_header(Some("/etc/shadow")));
        let name = qcow2_backing_file(&mut cursor, Path::new("x")).unwrap();
        assert_eq!(name.as_deref(), Some("/etc/shadow"));
    }

    #[test]
    fn qcow2_truncated_header_is_an_error() {
        let mut cursor = Cursor::new(QCOW2_MAGIC.to_vec());
        assert!(matches!(
            qcow2_backing_file(&mut cursor, Path::new("x")),
            Err(ImageError::InvalidQcow2 { .. })
        ));
    }

    #[test]
    fn undeclared_qcow2_with_outside_backing_is_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .write_all(&qcow2_header(Some("/etc/shadow")))
            .unwrap();
        let request = ImageRequest {
            path: image.clone(),
            ..Default::default()
        };
        let err = request.resolve().unwrap_err();
        assert!(
            matches!(err, ImageError::BackingOutsideImageDir { .. }),
            "{err}"
        );
    }

    #[test]
    fn declared_raw_is_never_probed() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.img");
        std::fs::File::create(&image)
            .unwrap()
            .write_all(&qcow2_header(Some("/etc/shadow")))
            .unwrap();
        let request = ImageRequest {
            path: image,
            format: Some(DiskFormat::Raw),
            ..Default::default()
        };
        let resolved = request.resolve().unwrap();
        assert_eq!(resolved.format, DiskFormat::Raw);
        assert_eq!(resolved.format_source, SettingSource::Flag);
    }

    #[test]
    fn relative_backing_inside_dir_is_accepted() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.qcow2");
        std::fs::File::create(&image)
            .unwrap()
            .write_all(&qcow2_header(Some("base.qcow2")))
            .unwrap();
        let resolved = ImageRequest {
            path: image,
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(resolved.format, DiskFormat::Qcow2);
    }

    #[test]
    fn climbing_backing_is_rejected() {
        assert!(!backing_is_inside(
            Path::new("/x/disk"),
            "../other/base.qcow2"
        ));
        assert!(!backing_is_inside(
            Path::new("/x/disk"),
            "nbd:localhost:10809"
        ));
        assert!(backing_is_inside(Path::new("/x/disk"), "base.qcow2"));
    }

    #[test]
    fn sidecar_gives_partition_and_flag_overrides() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("disk.raw");
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        std::fs::write(
            ImageMeta::sidecar_path(&image),
            br#"{"inject_partition":"2"}"#,
        )
        .unwrap();

        let from_meta = ImageRequest {
            path: image.clone(),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(from_meta.partition, PartitionSelector::Number(2));
        assert_eq!(from_meta.partition_source, SettingSource::Metadata);

        let overridden = ImageRequest {
            path: image,
            partition: Some(PartitionSelector::None),
            ..Default::default()
        }
        .resolve()
        .unwrap();
        assert_eq!(overridden.partition, PartitionSelector::None);
        assert_eq!(overridden.partition_source, SettingSource::Flag);
    }

    #[test]
    fn empty_missing_and_directory_images_are_rejected() {
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty.raw");
        std::fs::write(&empty, b"").unwrap();
        for path in [empty, dir.path().join("missing.raw"), dir.path().to_owned()] {
            let err = ImageRequest {
                path: path.clone(),
                ..Default::default()
            }
            .resolve()
            .unwrap_err();
            assert!(matches!(err, ImageError::UnusableImage { .. }), "{err}");
            assert!(err.to_string().contains(&path.display().to_string()));
        }
    }
}
