//! Failure injection at the steps of opening and closing an image, for tests.
//!
//! With the crate's `failpoints` feature, setting `FAILPOINTS=NAME=return` in a process
//! that called `fail::FailScenario::setup` makes the step named NAME fail with `EIO`, as if
//! the system call or helper behind it had failed. Without the feature every check
//! compiles to nothing.

use std::io;

/// Returns `EIO` when the failpoint `name` is set to `return`, and `Ok` otherwise.
///
/// Callers map the error exactly as they map the real failure of the step, so the error
/// chain and the cleanup are the ones production runs.
// Without the feature `fail_point!` expands to nothing and leaves `name` unused.
#[cfg_attr(not(feature = "failpoints"), allow(unused_variables))]
pub(crate) fn check(name: &str) -> io::Result<()> {
    fail::fail_point!(name, |_| Err(io::Error::from_raw_os_error(libc::EIO)));
    Ok(())
}
