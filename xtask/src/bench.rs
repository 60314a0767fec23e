//! `cargo xtask bench`: times the backends on the same requests. Not written yet.

use crate::TaskError;

/// Fails with [`TaskError::NotImplemented`] until the benchmark exists.
pub(crate) fn run() -> Result<(), TaskError> {
    Err(TaskError::NotImplemented { task: "bench" })
}
