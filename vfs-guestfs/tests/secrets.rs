//! Checks that libguestfs's own logging, with trace and debug mode on, never carries the
//! contents of files the backend writes or reads.
//!
//! This is its own test binary because it turns on `LIBGUESTFS_TRACE` and
//! `LIBGUESTFS_DEBUG` for the whole process and installs a global `tracing` subscriber.

use std::io::Write;
use std::sync::{Arc, Mutex};

use testkit::images;
use vfs_core::image::{PartitionSelector, ResolvedImage, SettingSource};
use vfs_core::registry::OpenOptions;
use vfs_core::{GuestFs, GuestPath};

/// A password hash that must never appear in any log line.
const SECRET_HASH: &str = "$6$secretsalt$Wl8bU3kCq0secret0hash0never0logged";

/// Collects everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[test]
#[ignore = "needs libguestfs and an appliance launch (~20 s); run by cargo xtask integration"]
fn trace_mode_never_logs_file_contents() {
    // The only test in this binary, so no other thread reads the environment meanwhile.
    std::env::set_var("LIBGUESTFS_TRACE", "1");
    std::env::set_var("LIBGUESTFS_DEBUG", "1");
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .init();

    let dir = tempfile::tempdir().unwrap();
    let image = images::tiny_gpt_raw()
        .expect("build the tiny GPT image")
        .fresh_copy(dir.path())
        .unwrap();
    let options = OpenOptions::new(ResolvedImage {
        path: image.path.clone(),
        format: image.format,
        format_source: SettingSource::Flag,
        partition: PartitionSelector::Number(2),
        partition_source: SettingSource::Flag,
        file_size: std::fs::metadata(&image.path).unwrap().len(),
    });
    let mut fs = vfs_guestfs::open(&options).expect("open the image");
    let shadow = GuestPath::new("/etc/shadow").unwrap();
    let line = format!("root:{SECRET_HASH}:19800:0:99999:7:::\n");
    fs.write_file(&shadow, &mut line.as_bytes(), 0o640).unwrap();
    fs.append_file(&shadow, line.as_bytes(), 0o640).unwrap();
    let read_back = fs.read_file(&shadow).unwrap();
    Box::new(fs).close().expect("close");

    assert_eq!(read_back, format!("{line}{line}").into_bytes());
    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    assert!(
        log.contains("call=\"write_append\""),
        "no trace events were forwarded"
    );
    assert!(
        log.contains("call=\"pread\""),
        "no trace events were forwarded"
    );
    assert!(
        !log.contains("secretsalt"),
        "the password hash reached the log"
    );
    assert!(!log.contains("root:$6$"), "a shadow line reached the log");
}
