//! How the command ends when something goes wrong: the message, its causes, the exit status.

use std::error::Error as StdError;
use std::fmt::Write as _;
use std::process::ExitCode;

/// A failed request; usage errors are reported by the argument parser with status 2.
#[derive(Debug)]
pub enum Failure {
    /// The request failed; exit status 1.
    Request(Box<dyn StdError + Send + Sync + 'static>),
}

impl Failure {
    /// Wraps any error as a failed request.
    pub fn request<E: StdError + Send + Sync + 'static>(err: E) -> Self {
        Self::Request(Box::new(err))
    }

    /// Prints the error with its chain of causes once, and returns the exit status.
    pub fn report(self) -> ExitCode {
        match self {
            Self::Request(err) => {
                eprintln!("{}", format_chain(err.as_ref()));
                ExitCode::from(1)
            }
        }
    }
}

/// Formats an error and each of its sources on its own line.
pub fn format_chain(err: &(dyn StdError + 'static)) -> String {
    let mut text = format!("error: {err}");
    let mut source = err.source();
    while let Some(cause) = source {
        let _ = write!(text, "\n  caused by: {cause}");
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("outer")]
    struct Outer(#[source] std::io::Error);

    #[test]
    fn chain_lists_each_cause_once() {
        let err = Outer(std::io::Error::other("inner"));
        assert_eq!(format_chain(&err), "error: outer\n  caused by: inner");
    }
}
