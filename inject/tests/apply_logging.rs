//! How a failure while applying is reported: returned to the caller, not also logged as an
//! error, so a program that prints errors prints it once.
//!
//! This test has a binary of its own because `tracing` caches per process whether a
//! callsite is enabled. When other tests in the same process reach a callsite first without
//! a subscriber, a scoped subscriber installed later never sees its events.

use std::sync::{Arc, Mutex};

use inject::{inject, Request};
use testkit::memfs::{MemFs, MemOp};
use vfs_core::{GuestPath, VfsError};

#[derive(Clone, Default)]
struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for LogBuffer {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
fn apply_failure_is_returned_not_logged_as_error() {
    let mut fs = MemFs::debian_like();
    fs.fail_on(
        MemOp::CreateDirAll,
        Some(GuestPath::new("/etc/network").unwrap()),
        |path| VfsError::ReadOnly { path: path.clone() },
    );
    let request = Request {
        network: Some(b"auto eth0\niface eth0 inet dhcp\n".to_vec()),
        ..Request::default()
    };
    let buffer = LogBuffer::default();
    let writer = buffer.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();

    let result = tracing::subscriber::with_default(subscriber, || inject(&mut fs, &request));

    let err = result.unwrap_err();
    assert_eq!(
        err.to_string(),
        "injecting net into /etc/network/interfaces failed; no item had been applied before it"
    );
    let logged = String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("item failed"), "{logged}");
    assert!(!logged.contains("ERROR"), "{logged}");
}
