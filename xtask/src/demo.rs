//! `cargo xtask demo`: shows guest-inject changing a test image. Not written yet.

use crate::TaskError;

/// Fails with [`TaskError::NotImplemented`] until the demo exists.
pub(crate) fn run() -> Result<(), TaskError> {
    Err(TaskError::NotImplemented { task: "demo" })
}
