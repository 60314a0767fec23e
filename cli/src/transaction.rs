//! Transactional injection: the request is written into a temporary qcow2 overlay over the
//! image, and the overlay is committed into the image only after everything succeeded.
//!
//! [`Transaction::begin`] checks that the image is writable and that no running qemu uses
//! it. It then takes qemu's shared read locks on the image, so that a virtual machine
//! started meanwhile cannot open it for writing, and creates `overlay.qcow2` in a private
//! (mode 0700) temporary directory under `TMPDIR`:
//!
//! ```text
//! qemu-img create -q -f qcow2 -F FORMAT -b /absolute/path/of/IMAGE OVERLAY
//! ```
//!
//! The backend then opens the overlay (format qcow2, the image's partition selector) and
//! never the image. [`Transaction::commit`] releases the locks and runs
//!
//! ```text
//! qemu-img commit -q -f qcow2 -d OVERLAY
//! ```
//!
//! which copies the overlay's allocated clusters into the image and, because of `-d`, leaves
//! the overlay as it is instead of emptying it, since the overlay is deleted next anyway.
//! Until that command starts, nothing has opened the image for writing. So a request that
//! fails while planning, applying, flushing or closing leaves the image byte-identical, and
//! [`Transaction::roll_back`] or dropping the transaction deletes the overlay.
//!
//! The cost: the overlay is qcow2, so the localmount backend serves it through `qemu-nbd`
//! and `nbdfuse` even when the image is raw, every written byte is copied twice (into the
//! overlay, then into the image), and `TMPDIR` needs room for everything the request writes
//! plus qcow2 metadata, rounded up to 64 KiB clusters.
//!
//! NOTE: the commit itself is not atomic. qemu-img writes the changed clusters into the
//! image in place, without a journal and not in the order the guest filesystem wrote them.
//! If qemu-img is killed, the host crashes or the host filesystem fills up mid-commit, the
//! image holds some new and some old clusters, and its guest filesystem may be
//! inconsistent. The overlay still holds the complete result then, so running the same
//! `qemu-img commit` again finishes the job. A failed commit therefore keeps the overlay
//! and names it in the error. qemu-img runs in a process group of its own, so a Ctrl-C on
//! the terminal stops guest-inject but lets a running commit finish. The overlay directory
//! then stays behind in `TMPDIR`.

use std::ffi::OsString;
use std::fs::Permissions;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Instant;

use nix::errno::Errno;
use nix::unistd::AccessFlags;
use vfs_core::image::{DiskFormat, ResolvedImage, SettingSource};
use vfs_localmount::{ImageLock, LockError};

use crate::failure::Failure;

/// The program that creates and commits the overlay.
const QEMU_IMG: &str = "qemu-img";

/// The overlay's file name inside its private directory.
const OVERLAY_NAME: &str = "overlay.qcow2";

/// The prefix of the overlay's private directory.
const DIR_PREFIX: &str = "guest-inject-txn-";

/// Errors from preparing, committing and discarding the overlay.
#[derive(Debug, thiserror::Error)]
pub enum TransactionError {
    /// The image path could not be made absolute for the overlay's backing file name.
    #[error("resolving the path of image {image} failed")]
    ResolvingImage {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The image cannot be written, so a commit would fail after all the work.
    #[error("image {image} is not writable, so its overlay could never be committed")]
    ImageNotWritable {
        image: PathBuf,
        #[source]
        source: Errno,
    },
    /// Another process uses the image, or its locks could not be checked.
    #[error(transparent)]
    Locking(#[from] LockError),
    /// The private directory for the overlay could not be created.
    #[error("creating a private directory for the overlay of {image} failed")]
    CreatingDir {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `qemu-img` could not be started.
    #[error("starting {QEMU_IMG} for image {image} failed; install qemu-utils")]
    StartingQemuImg {
        image: PathBuf,
        #[source]
        source: io::Error,
    },
    /// `qemu-img create` failed.
    #[error("creating overlay {overlay} over image {image} failed ({status}): {stderr}")]
    CreatingOverlay {
        image: PathBuf,
        overlay: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    /// `qemu-img commit` could not lock the image, which a process opened after the checks.
    #[error("image {image} is in use by another process, so the overlay was not committed and the image is unchanged; stop the virtual machine or the program that has the image open, then run the request again: {detail}")]
    InUseAtCommit { image: PathBuf, detail: String },
    /// `qemu-img commit` failed after it may have written part of the overlay.
    #[error("committing overlay {overlay} into image {image} failed ({status}), so the image may be partly written; the overlay is kept: fix the cause, then run `qemu-img commit -f qcow2 -d {overlay}` and delete its directory: {stderr}")]
    Committing {
        image: PathBuf,
        overlay: PathBuf,
        status: ExitStatus,
        stderr: String,
    },
    /// The overlay's directory could not be removed.
    #[error("removing the overlay directory {dir} failed")]
    RemovingOverlay {
        dir: PathBuf,
        #[source]
        source: io::Error,
    },
    /// The request failed before the commit, so the overlay was discarded.
    #[error("the request failed, so the overlay was discarded and image {image} is unchanged")]
    RolledBack {
        image: PathBuf,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync + 'static>,
    },
}

/// A qcow2 overlay over an image, deleted when dropped unless committed.
///
/// Holds qemu's shared read locks on the image from [`Transaction::begin`] until the
/// commit starts.
#[derive(Debug)]
pub struct Transaction {
    /// The image, with an absolute path.
    image: ResolvedImage,
    overlay: PathBuf,
    /// The overlay's private directory; `None` once removed or deliberately kept.
    dir: Option<tempfile::TempDir>,
    lock: Option<ImageLock>,
}

impl Transaction {
    /// Checks the image, takes its read locks and creates the overlay over it.
    pub fn begin(image: &ResolvedImage) -> Result<Self, TransactionError> {
        let span = tracing::info_span!("create_overlay", image = %image.path.display());
        let _entered = span.enter();

        let path = std::fs::canonicalize(&image.path).map_err(|source| {
            TransactionError::ResolvingImage {
                image: image.path.clone(),
                source,
            }
        })?;
        nix::unistd::access(&path, AccessFlags::W_OK).map_err(|source| {
            TransactionError::ImageNotWritable {
                image: path.clone(),
                source,
            }
        })?;
        // A running virtual machine would make the commit fail after all the work, so it
        // is found here first. The read locks then keep one from starting to write.
        ImageLock::check(&path, false)?;
        let lock = ImageLock::acquire(&path, true)?;

        let dir = tempfile::Builder::new()
            .prefix(DIR_PREFIX)
            .permissions(Permissions::from_mode(0o700))
            .tempdir()
            .map_err(|source| TransactionError::CreatingDir {
                image: path.clone(),
                source,
            })?;
        let overlay = dir.path().join(OVERLAY_NAME);

        let started = Instant::now();
        let output = run_qemu_img(&create_args(&path, image.format, &overlay), &path)?;
        if !output.status.success() {
            return Err(TransactionError::CreatingOverlay {
                image: path,
                overlay,
                status: output.status,
                stderr: output.stderr,
            });
        }
        tracing::info!(
            overlay = %overlay.display(),
            seconds = started.elapsed().as_secs_f64(),
            "created overlay"
        );

        Ok(Self {
            image: ResolvedImage {
                path,
                ..image.clone()
            },
            overlay,
            dir: Some(dir),
            lock: Some(lock),
        })
    }

    /// Returns the overlay as an image to open: qcow2, with the image's partition.
    pub fn overlay_image(&self) -> ResolvedImage {
        let file_size = std::fs::metadata(&self.overlay)
            .map(|metadata| metadata.len())
            .unwrap_or(0);
        ResolvedImage {
            path: self.overlay.clone(),
            format: DiskFormat::Qcow2,
            format_source: SettingSource::Flag,
            partition: self.image.partition.clone(),
            partition_source: self.image.partition_source,
            file_size,
        }
    }

    /// Commits the overlay into the image, then deletes it. Call only after the backend
    /// that wrote the overlay is closed.
    ///
    /// When qemu-img cannot lock the image, nothing was written and the overlay is deleted.
    /// When it fails otherwise, the overlay is kept and the error names it.
    pub fn commit(mut self) -> Result<(), TransactionError> {
        let span = tracing::info_span!(
            "commit_overlay",
            image = %self.image.path.display(),
            overlay = %self.overlay.display(),
        );
        let _entered = span.enter();

        // qemu-img needs the write lock that the read locks exclude.
        if let Some(lock) = self.lock.take() {
            lock.close();
        }
        let started = Instant::now();
        let output = run_qemu_img(&commit_args(&self.overlay), &self.image.path)?;
        if !output.status.success() {
            if is_lock_failure(&output.stderr) {
                return Err(TransactionError::InUseAtCommit {
                    image: self.image.path.clone(),
                    detail: output.stderr.trim().to_owned(),
                });
            }
            // Dropping the transaction must not delete the only complete copy of the result.
            if let Some(dir) = self.dir.take() {
                let _ = dir.keep();
            }
            return Err(TransactionError::Committing {
                image: self.image.path.clone(),
                overlay: self.overlay.clone(),
                status: output.status,
                stderr: output.stderr.trim().to_owned(),
            });
        }
        tracing::info!(
            seconds = started.elapsed().as_secs_f64(),
            "committed overlay"
        );

        // The image contains every change now, so a leftover overlay only wastes space.
        if let Err(err) = self.remove_dir() {
            tracing::warn!(error = %crate::failure::format_chain(&err), "removing the committed overlay");
        }
        Ok(())
    }

    /// Deletes the overlay without committing it, leaving the image unchanged.
    pub fn discard(mut self) -> Result<(), TransactionError> {
        self.remove_dir()
    }

    /// Deletes the overlay after `failure` and returns the failure wrapped with the
    /// statement that the image is unchanged.
    pub fn roll_back(self, failure: Failure) -> Failure {
        let image = self.image.path.clone();
        if let Err(err) = self.discard() {
            tracing::warn!(error = %crate::failure::format_chain(&err), "discarding the overlay");
        }
        let Failure::Request(source) = failure;
        Failure::request(TransactionError::RolledBack { image, source })
    }

    fn remove_dir(&mut self) -> Result<(), TransactionError> {
        let Some(dir) = self.dir.take() else {
            return Ok(());
        };
        let path = dir.path().to_owned();
        dir.close()
            .map_err(|source| TransactionError::RemovingOverlay { dir: path, source })?;
        tracing::debug!(overlay = %self.overlay.display(), "removed overlay");
        Ok(())
    }
}

impl Drop for Transaction {
    fn drop(&mut self) {
        if let Err(err) = self.remove_dir() {
            tracing::warn!(error = %crate::failure::format_chain(&err), "removing a dropped overlay");
        }
    }
}

/// The output of a finished `qemu-img` run.
struct QemuImgOutput {
    status: ExitStatus,
    stderr: String,
}

/// Runs `qemu-img` with `args` in a process group of its own, so that a Ctrl-C on the
/// terminal reaches guest-inject but not a commit in progress.
fn run_qemu_img(args: &[OsString], image: &Path) -> Result<QemuImgOutput, TransactionError> {
    tracing::debug!(?args, "running {QEMU_IMG}");
    let output = Command::new(QEMU_IMG)
        .args(args)
        .stdin(Stdio::null())
        .process_group(0)
        .output()
        .map_err(|source| TransactionError::StartingQemuImg {
            image: image.to_owned(),
            source,
        })?;
    Ok(QemuImgOutput {
        status: output.status,
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    })
}

/// Returns the arguments that create `overlay` over `image`.
///
/// Without `-u`, qemu-img opens the backing image to take its virtual size from it, which
/// also checks that the image opens in the declared format.
fn create_args(image: &Path, format: DiskFormat, overlay: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["create", "-q", "-f", "qcow2", "-F", format.as_str(), "-b"]
        .map(OsString::from)
        .into();
    args.push(image.into());
    args.push(overlay.into());
    args
}

/// Returns the arguments that commit `overlay` into its backing image without emptying
/// the overlay afterwards (`-d`), since it is deleted next.
fn commit_args(overlay: &Path) -> Vec<OsString> {
    let mut args: Vec<OsString> = ["commit", "-q", "-f", "qcow2", "-d"]
        .map(OsString::from)
        .into();
    args.push(overlay.into());
    args
}

/// Returns true for qemu's image lock errors, which read `Failed to get "write" lock` or
/// `Failed to get shared "write" lock`.
fn is_lock_failure(stderr: &str) -> bool {
    stderr.contains("Failed to get") && stderr.contains("lock")
}

#[cfg(test)]
mod tests {
    use super::*;
    use vfs_core::image::PartitionSelector;

    const IMAGE_BYTES: usize = 1024 * 1024;

    fn raw_image(dir: &Path) -> ResolvedImage {
        let path = dir.join("disk.raw");
        std::fs::write(&path, vec![0x5a; IMAGE_BYTES]).unwrap();
        ResolvedImage {
            path,
            format: DiskFormat::Raw,
            format_source: SettingSource::Flag,
            partition: PartitionSelector::Number(2),
            partition_source: SettingSource::Metadata,
            file_size: IMAGE_BYTES as u64,
        }
    }

    /// Writes `pattern` at `offset` of the overlay with qemu-io, as a backend would.
    fn write_overlay(overlay: &Path, offset: u64, pattern: u8) {
        let status = Command::new("qemu-io")
            .args(["-f", "qcow2", "-c"])
            .arg(format!("write -P {pattern} {offset} 4096"))
            .arg(overlay)
            .stdout(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success());
    }

    #[test]
    fn create_args_name_backing_format_and_file() {
        let args = create_args(
            Path::new("/images/disk.raw"),
            DiskFormat::Raw,
            Path::new("/tmp/t/overlay.qcow2"),
        );

        let expected = [
            "create",
            "-q",
            "-f",
            "qcow2",
            "-F",
            "raw",
            "-b",
            "/images/disk.raw",
            "/tmp/t/overlay.qcow2",
        ];
        assert_eq!(args, expected.map(OsString::from));
    }

    #[test]
    fn commit_args_keep_overlay_unemptied() {
        let args = commit_args(Path::new("/tmp/t/overlay.qcow2"));

        let expected = ["commit", "-q", "-f", "qcow2", "-d", "/tmp/t/overlay.qcow2"];
        assert_eq!(args, expected.map(OsString::from));
    }

    #[test]
    fn lock_failure_is_recognised() {
        let stderr = "qemu-img: Failed to get \"write\" lock\nIs another process using the image [/x.raw]?\n";

        assert!(is_lock_failure(stderr));
        assert!(!is_lock_failure(
            "qemu-img: Could not open '/x.raw': Permission denied"
        ));
    }

    #[test]
    fn overlay_is_qcow2_with_image_partition() {
        let dir = tempfile::tempdir().unwrap();
        let image = raw_image(dir.path());

        let transaction = Transaction::begin(&image).unwrap();
        let overlay = transaction.overlay_image();

        assert_eq!(overlay.format, DiskFormat::Qcow2);
        assert_eq!(overlay.partition, PartitionSelector::Number(2));
        assert_eq!(overlay.partition_source, SettingSource::Metadata);
        assert!(overlay.path.ends_with(OVERLAY_NAME));
    }

    #[test]
    fn overlay_dir_is_private() {
        let dir = tempfile::tempdir().unwrap();
        let image = raw_image(dir.path());

        let transaction = Transaction::begin(&image).unwrap();
        let overlay = transaction.overlay_image().path;
        let mode = std::fs::metadata(overlay.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();

        assert_eq!(mode & 0o777, 0o700);
    }

    #[test]
    fn dropped_transaction_removes_overlay_and_keeps_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = raw_image(dir.path());
        let transaction = Transaction::begin(&image).unwrap();
        let overlay = transaction.overlay_image().path;
        write_overlay(&overlay, 0, 0x11);

        drop(transaction);

        assert!(!overlay.exists());
        assert!(!overlay.parent().unwrap().exists());
        assert_eq!(std::fs::read(&image.path).unwrap(), vec![0x5a; IMAGE_BYTES]);
    }

    #[test]
    fn commit_writes_overlay_into_image() {
        let dir = tempfile::tempdir().unwrap();
        let image = raw_image(dir.path());
        let transaction = Transaction::begin(&image).unwrap();
        let overlay = transaction.overlay_image().path;
        write_overlay(&overlay, 65536, 0x11);

        transaction.commit().unwrap();

        let mut expected = vec![0x5a; IMAGE_BYTES];
        expected[65536..65536 + 4096].fill(0x11);
        assert!(std::fs::read(&image.path).unwrap() == expected);
        assert!(!overlay.parent().unwrap().exists());
    }

    #[test]
    fn roll_back_names_image_as_unchanged() {
        let dir = tempfile::tempdir().unwrap();
        let image = raw_image(dir.path());
        let transaction = Transaction::begin(&image).unwrap();
        let overlay = transaction.overlay_image().path;

        let failure = transaction.roll_back(Failure::request(io::Error::other("disk full")));
        let Failure::Request(err) = failure;
        let text = crate::failure::format_chain(err.as_ref());

        assert!(text.contains("unchanged"), "{text}");
        assert!(text.contains("disk full"), "{text}");
        assert!(!overlay.exists());
    }

    #[test]
    fn image_locked_for_writing_is_rejected_at_begin() {
        let dir = tempfile::tempdir().unwrap();
        let image = raw_image(dir.path());
        // A read-write lock as a running virtual machine holds it.
        let _writer = ImageLock::acquire(&image.path, false).unwrap();

        let result = Transaction::begin(&image);

        assert!(
            matches!(
                result,
                Err(TransactionError::Locking(LockError::InUse { .. }))
            ),
            "{result:?}"
        );
    }

    #[test]
    fn writer_is_locked_out_until_commit() {
        let dir = tempfile::tempdir().unwrap();
        let image = raw_image(dir.path());
        let transaction = Transaction::begin(&image).unwrap();

        let writer = ImageLock::acquire(&image.path, false);

        assert!(matches!(writer, Err(LockError::InUse { .. })), "{writer:?}");
        transaction.discard().unwrap();
    }
}
