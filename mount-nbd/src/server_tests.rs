//! Unit tests of [`NbdServer`] with a scripted process layer and host.

use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vfs_core::image::DiskFormat;

use super::*;
use crate::host::MockHostProbe;
use crate::process::MockChildProcess;
use crate::test_support::{exit_code, spawned_args, ChildPlan, Events, RunnerPlan};

/// Export size the scripted server reports: 16 MiB.
const EXPORT_SIZE: u64 = 16 << 20;

fn options() -> NbdOptions {
    NbdOptions {
        ready_timeout: Duration::from_millis(100),
        stop_timeout: Duration::from_millis(50),
        ..NbdOptions::new(DiskFormat::Qcow2)
    }
}

/// A host whose server completes the handshake at once, recording the socket path.
fn ready_host(socket: Arc<Mutex<Option<PathBuf>>>) -> MockHostProbe {
    let mut host = MockHostProbe::new();
    host.expect_query_export().returning(move |path, _| {
        *socket.lock().unwrap() = Some(path.to_owned());
        Ok(Some(EXPORT_SIZE))
    });
    host
}

/// A host that records the socket path and returns `answer` from `query_export`.
fn host_answering(
    socket: Arc<Mutex<Option<PathBuf>>>,
    answer: fn() -> io::Result<Option<u64>>,
) -> MockHostProbe {
    let mut host = MockHostProbe::new();
    host.expect_query_export().returning(move |path, _| {
        *socket.lock().unwrap() = Some(path.to_owned());
        answer()
    });
    host
}

fn socket_dir(socket: &Mutex<Option<PathBuf>>) -> PathBuf {
    socket
        .lock()
        .unwrap()
        .clone()
        .expect("the socket was checked")
        .parent()
        .unwrap()
        .to_owned()
}

#[test]
fn start_passes_explicit_format_and_private_socket() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .child(ChildPlan::running("qemu-nbd", 100))
        .mock(&events);
    let socket = Arc::new(Mutex::new(None));
    let host = ready_host(Arc::clone(&socket));

    let server = NbdServer::start_with(image.path(), &options(), &runner, &host).unwrap();
    let dir_mode = std::fs::metadata(socket_dir(&socket))
        .unwrap()
        .permissions()
        .mode();
    let server_socket = server.socket().to_owned();
    let export_size = server.export_size();
    server.close().unwrap();

    let args = spawned_args(&events, "qemu-nbd");
    let image_path = std::fs::canonicalize(image.path()).unwrap();
    assert_eq!(
        args,
        vec![
            format!("--socket={}", server_socket.display()),
            "--format=qcow2".to_owned(),
            "--persistent".to_owned(),
            "--shared=1".to_owned(),
            "--cache=writeback".to_owned(),
            image_path.display().to_string(),
        ]
    );
    assert_eq!(server_socket.file_name().unwrap(), "nbd.sock");
    assert_eq!(dir_mode & 0o777, 0o700);
    assert_eq!(export_size, EXPORT_SIZE);
    assert!(!socket_dir(&socket).exists());
    assert!(events.contains("signal qemu-nbd SIGTERM"));
}

#[test]
fn start_read_only_passes_read_only() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .child(ChildPlan::running("qemu-nbd", 100))
        .mock(&events);
    let host = ready_host(Arc::new(Mutex::new(None)));
    let options = NbdOptions {
        read_only: true,
        ..options()
    };

    NbdServer::start_with(image.path(), &options, &runner, &host)
        .unwrap()
        .close()
        .unwrap();

    let args = spawned_args(&events, "qemu-nbd");
    assert!(args.contains(&"--read-only".to_owned()), "{args:?}");
    assert!(args.last().unwrap().starts_with('/'), "{args:?}");
}

#[test]
fn start_missing_image_fails_without_spawning() {
    let events = Events::default();
    let runner = RunnerPlan::default().mock(&events);
    let host = MockHostProbe::new();

    let err = NbdServer::start_with(
        Path::new("/nonexistent/disk.qcow2"),
        &options(),
        &runner,
        &host,
    )
    .unwrap_err();

    assert!(matches!(err, NbdError::ResolvingImage { .. }), "{err:?}");
    assert!(events.list().is_empty());
}

#[test]
fn start_spawn_failure_is_spawning_error() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .spawn_error("qemu-nbd", libc::ENOENT)
        .mock(&events);
    let host = MockHostProbe::new();

    let err = NbdServer::start_with(image.path(), &options(), &runner, &host).unwrap_err();

    let NbdError::Spawning {
        ref program,
        ref source,
        ..
    } = err
    else {
        panic!("expected Spawning, got {err:?}");
    };
    assert_eq!(program, "qemu-nbd");
    assert_eq!(source.raw_os_error(), Some(libc::ENOENT));
}

#[test]
fn start_exit_before_ready_reports_status_and_stderr() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .child(ChildPlan {
            exits_at_start: Some(exit_code(1)),
            stderr: "qemu-nbd: Failed to blk_new_open: Image is not in qcow2 format\n",
            ..ChildPlan::running("qemu-nbd", 100)
        })
        .mock(&events);
    let host = MockHostProbe::new();

    let err = NbdServer::start_with(image.path(), &options(), &runner, &host).unwrap_err();

    let NbdError::ExitedEarly {
        ref status,
        ref stderr,
        ..
    } = err
    else {
        panic!("expected ExitedEarly, got {err:?}");
    };
    assert_eq!(status.code(), Some(1));
    assert!(stderr.contains("not in qcow2 format"), "{stderr}");
    assert!(!events.contains("signal"), "{:?}", events.list());
}

#[test]
fn start_never_ready_times_out_and_stops_server() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .child(ChildPlan::running("qemu-nbd", 100))
        .mock(&events);
    let socket = Arc::new(Mutex::new(None));
    let host = host_answering(Arc::clone(&socket), || Ok(None));

    let err = NbdServer::start_with(image.path(), &options(), &runner, &host).unwrap_err();

    assert!(matches!(err, NbdError::NotReady { .. }), "{err:?}");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(events.contains("signal qemu-nbd SIGTERM"));
    assert!(!socket_dir(&socket).exists());
}

#[test]
fn start_broken_handshake_is_negotiating_error() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .child(ChildPlan::running("qemu-nbd", 100))
        .mock(&events);
    let socket = Arc::new(Mutex::new(None));
    let host = host_answering(Arc::clone(&socket), || {
        Err(io::Error::new(io::ErrorKind::InvalidData, "bad magic"))
    });

    let err = NbdServer::start_with(image.path(), &options(), &runner, &host).unwrap_err();

    let NbdError::Negotiating { ref reason, .. } = err else {
        panic!("expected Negotiating, got {err:?}");
    };
    assert_eq!(reason, "bad magic");
    assert!(events.contains("signal qemu-nbd SIGTERM"));
    assert!(!socket_dir(&socket).exists());
}

#[test]
fn start_handshake_cut_by_exit_reports_exit() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let mut child = MockChildProcess::new();
    // Running at the first check, exited after the failed handshake.
    let mut polls = 0;
    child.expect_try_wait().returning(move || {
        polls += 1;
        Ok((polls > 1).then(|| exit_code(1)))
    });
    child.expect_id().return_const(100u32);
    child
        .expect_stderr()
        .return_const("qemu-nbd: Failed to blk_new_open\n".to_owned());
    child.expect_signal().never();
    let mut runner = crate::process::MockCommandRunner::new();
    runner
        .expect_spawn()
        .return_once(move |_| Ok(Box::new(child)));
    let host = host_answering(Arc::new(Mutex::new(None)), || {
        Err(io::Error::from(io::ErrorKind::UnexpectedEof))
    });

    let err = NbdServer::start_with(image.path(), &options(), &runner, &host).unwrap_err();

    assert!(matches!(err, NbdError::ExitedEarly { .. }), "{err:?}");
    assert!(events.list().is_empty());
}

#[test]
fn start_wait_failure_is_probing_error() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let mut child = MockChildProcess::new();
    child
        .expect_try_wait()
        .times(1)
        .return_once(|| Err(io::Error::from_raw_os_error(libc::ECHILD)));
    child.expect_try_wait().returning(|| Ok(Some(exit_code(0))));
    child.expect_id().return_const(100u32);
    child.expect_stderr().return_const(String::new());
    let mut runner = crate::process::MockCommandRunner::new();
    runner
        .expect_spawn()
        .return_once(move |_| Ok(Box::new(child)));
    let host = MockHostProbe::new();

    let err = NbdServer::start_with(image.path(), &options(), &runner, &host).unwrap_err();

    assert!(matches!(err, NbdError::ProbingHost { .. }), "{err:?}");
}

#[test]
fn close_failure_status_is_stopping_error_with_output() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .child(ChildPlan {
            on_sigterm: Some(exit_code(1)),
            stderr: "qemu-nbd: flush failed\n",
            ..ChildPlan::running("qemu-nbd", 100)
        })
        .mock(&events);
    let host = ready_host(Arc::new(Mutex::new(None)));
    let server = NbdServer::start_with(image.path(), &options(), &runner, &host).unwrap();

    let err = server.close().unwrap_err();

    assert!(matches!(err, NbdError::Stopping { .. }), "{err:?}");
    assert!(err.to_string().contains("exit code 1"), "{err}");
    assert!(err.to_string().contains("flush failed"), "{err}");
}

#[test]
fn close_server_ignoring_sigterm_is_killed_and_reported() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .child(ChildPlan {
            on_sigterm: None,
            ..ChildPlan::running("qemu-nbd", 100)
        })
        .mock(&events);
    let host = ready_host(Arc::new(Mutex::new(None)));
    let server = NbdServer::start_with(image.path(), &options(), &runner, &host).unwrap();

    let err = server.close().unwrap_err();

    assert!(err.to_string().contains("was killed"), "{err}");
    assert_eq!(
        events.list()[1..],
        ["signal qemu-nbd SIGTERM", "signal qemu-nbd SIGKILL"]
    );
}

#[test]
fn drop_stops_server_and_removes_dir() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .child(ChildPlan::running("qemu-nbd", 100))
        .mock(&events);
    let socket = Arc::new(Mutex::new(None));
    let host = ready_host(Arc::clone(&socket));

    let server = NbdServer::start_with(image.path(), &options(), &runner, &host).unwrap();
    drop(server);

    assert!(events.contains("signal qemu-nbd SIGTERM"));
    assert!(!socket_dir(&socket).exists());
}

#[test]
fn serve_command_ends_with_image_path() {
    let command = serve_command(
        Path::new("/images/a:b.qcow2"),
        Path::new("/run/x/nbd.sock"),
        &options(),
    );

    assert_eq!(
        command.args.last().unwrap().to_str().unwrap(),
        "/images/a:b.qcow2"
    );
    assert!(!command.has_arg("--read-only"));
}
