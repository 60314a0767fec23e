//! Unit tests of [`NbdAttachment`] with a scripted process layer and host, for the
//! `nbdfuse` path and for the kernel NBD path.

use std::io;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use vfs_core::image::DiskFormat;

use super::*;
use crate::host::MockHostProbe;
use crate::test_support::{exit_code, spawned_args, ChildPlan, Events, RunPlan, RunnerPlan};

/// Export size the scripted helpers report: 16 MiB.
const EXPORT_SIZE: u64 = 16 << 20;

/// Process ids of the scripted helpers.
const QEMU_NBD_PID: u32 = 100;
const NBDFUSE_PID: u32 = 200;
/// A process of someone else, owning NBD devices.
const OTHER_PID: u32 = 999;

fn options(method: AttachMethod) -> NbdOptions {
    NbdOptions {
        method,
        ready_timeout: Duration::from_millis(100),
        stop_timeout: Duration::from_millis(50),
        ..NbdOptions::new(DiskFormat::Qcow2)
    }
}

fn attach(
    image: &tempfile::NamedTempFile,
    options: &NbdOptions,
    runner: crate::process::MockCommandRunner,
    host: MockHostProbe,
) -> Result<NbdAttachment, NbdError> {
    NbdAttachment::attach_with(image.path(), options, Arc::new(runner), Arc::new(host))
}

// ---- The nbdfuse path ----

/// A FUSE host: no kernel NBD devices, a server that completes the handshake at once, a FUSE file that
/// has the export's size, and a mount that exists until `unmounted` is set.
fn fuse_host(unmounted: Arc<AtomicBool>) -> MockHostProbe {
    let mut host = MockHostProbe::new();
    host.expect_kernel_nbd_devices()
        .returning(|| Ok(Vec::new()));
    host.expect_query_export()
        .returning(|_, _| Ok(Some(EXPORT_SIZE)));
    host.expect_file_size().returning(|_| Ok(Some(EXPORT_SIZE)));
    host.expect_is_mount_point()
        .returning(move |_| Ok(!unmounted.load(std::sync::atomic::Ordering::SeqCst)));
    host
}

/// Helpers for the FUSE path: qemu-nbd stopping on SIGTERM, nbdfuse exiting after the
/// unmount, and a fusermount3 that succeeds.
fn fuse_runner(unmounted: &Arc<AtomicBool>) -> RunnerPlan {
    RunnerPlan::default()
        .child(ChildPlan::running("qemu-nbd", QEMU_NBD_PID))
        .child(ChildPlan {
            exits_when: Some(Arc::clone(unmounted)),
            ..ChildPlan::running("nbdfuse", NBDFUSE_PID)
        })
        .run(
            "fusermount3 -u",
            RunPlan {
                sets: Some(Arc::clone(unmounted)),
                ..RunPlan::success()
            },
        )
}

#[test]
fn auto_without_kernel_nbd_uses_nbdfuse() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let unmounted = Arc::new(AtomicBool::new(false));
    let runner = fuse_runner(&unmounted).mock(&events);
    let host = fuse_host(Arc::clone(&unmounted));

    let attachment = attach(&image, &options(AttachMethod::Auto), runner, host).unwrap();
    let export = attachment.export().clone();
    let size = attachment.size();
    let socket = attachment.socket().unwrap().to_owned();
    attachment.close().unwrap();

    let AttachedExport::FuseFile(file) = export else {
        panic!("expected a FUSE file, got {export:?}");
    };
    assert!(file.ends_with("fuse/disk"), "{}", file.display());
    assert_eq!(size, EXPORT_SIZE);
    assert_eq!(
        spawned_args(&events, "nbdfuse"),
        vec![
            file.display().to_string(),
            "--unix".to_owned(),
            socket.display().to_string(),
        ]
    );
    assert!(!file.parent().unwrap().parent().unwrap().exists());
    assert!(!socket.parent().unwrap().exists());
}

#[test]
fn fuse_close_unmounts_then_stops_nbdfuse_then_qemu_nbd() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let unmounted = Arc::new(AtomicBool::new(false));
    let runner = fuse_runner(&unmounted).mock(&events);
    let host = fuse_host(Arc::clone(&unmounted));

    let attachment = attach(&image, &options(AttachMethod::Fuse), runner, host).unwrap();
    attachment.close().unwrap();

    let unmount = events.position("run fusermount3 -u /").unwrap();
    let stop_server = events.position("signal qemu-nbd SIGTERM").unwrap();
    assert!(unmount < stop_server, "{:?}", events.list());
    // nbdfuse exits by itself after the unmount, so it gets no signal.
    assert!(!events.contains("signal nbdfuse"), "{:?}", events.list());
    assert!(
        !events.contains("run fusermount3 -u -z"),
        "{:?}",
        events.list()
    );
}

#[test]
fn fuse_read_only_passes_read_only_to_both_helpers() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let unmounted = Arc::new(AtomicBool::new(false));
    let runner = fuse_runner(&unmounted).mock(&events);
    let host = fuse_host(Arc::clone(&unmounted));
    let options = NbdOptions {
        read_only: true,
        ..options(AttachMethod::Fuse)
    };

    attach(&image, &options, runner, host)
        .unwrap()
        .close()
        .unwrap();

    assert_eq!(spawned_args(&events, "nbdfuse")[0], "-r");
    assert!(spawned_args(&events, "qemu-nbd").contains(&"--read-only".to_owned()));
}

#[test]
fn nbdfuse_spawn_failure_stops_server() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let unmounted = Arc::new(AtomicBool::new(true));
    let runner = RunnerPlan::default()
        .child(ChildPlan::running("qemu-nbd", QEMU_NBD_PID))
        .spawn_error("nbdfuse", libc::ENOENT)
        .mock(&events);
    let host = fuse_host(unmounted);

    let err = attach(&image, &options(AttachMethod::Fuse), runner, host).unwrap_err();

    let NbdError::Spawning { ref program, .. } = err else {
        panic!("expected Spawning, got {err:?}");
    };
    assert_eq!(program, "nbdfuse");
    assert!(events.contains("signal qemu-nbd SIGTERM"));
}

#[test]
fn nbdfuse_exit_before_ready_reports_its_output() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .child(ChildPlan::running("qemu-nbd", QEMU_NBD_PID))
        .child(ChildPlan {
            exits_at_start: Some(exit_code(1)),
            stderr: "fuse: device not found, try 'modprobe fuse' first\n",
            ..ChildPlan::running("nbdfuse", NBDFUSE_PID)
        })
        .mock(&events);
    let host = fuse_host(Arc::new(AtomicBool::new(true)));

    let err = attach(&image, &options(AttachMethod::Fuse), runner, host).unwrap_err();

    let NbdError::ExitedEarly {
        ref program,
        ref stderr,
        ..
    } = err
    else {
        panic!("expected ExitedEarly, got {err:?}");
    };
    assert_eq!(program, "nbdfuse");
    assert!(stderr.contains("modprobe fuse"), "{stderr}");
    assert!(!events.contains("signal nbdfuse"), "{:?}", events.list());
    assert!(events.contains("signal qemu-nbd SIGTERM"));
    assert!(!events.contains("run fusermount3"), "{:?}", events.list());
}

#[test]
fn fuse_file_of_wrong_size_times_out_and_stops_both() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let unmounted = Arc::new(AtomicBool::new(false));
    let runner = fuse_runner(&unmounted).mock(&events);
    let mut host = MockHostProbe::new();
    host.expect_kernel_nbd_devices()
        .returning(|| Ok(Vec::new()));
    host.expect_query_export()
        .returning(|_, _| Ok(Some(EXPORT_SIZE)));
    host.expect_file_size().returning(|_| Ok(Some(4096)));
    let unmounted_check = Arc::clone(&unmounted);
    host.expect_is_mount_point()
        .returning(move |_| Ok(!unmounted_check.load(std::sync::atomic::Ordering::SeqCst)));

    let err = attach(&image, &options(AttachMethod::Fuse), runner, host).unwrap_err();

    let NbdError::NotReady { ref condition, .. } = err else {
        panic!("expected NotReady, got {err:?}");
    };
    assert!(condition.contains("16777216 bytes"), "{condition}");
    assert!(condition.contains("last seen: 4096 bytes"), "{condition}");
    assert!(events.contains("run fusermount3 -u /"));
    assert!(events.contains("signal qemu-nbd SIGTERM"));
}

#[test]
fn fuse_file_check_failure_is_probing_error() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let unmounted = Arc::new(AtomicBool::new(false));
    let runner = fuse_runner(&unmounted).mock(&events);
    let mut host = MockHostProbe::new();
    host.expect_kernel_nbd_devices()
        .returning(|| Ok(Vec::new()));
    host.expect_query_export()
        .returning(|_, _| Ok(Some(EXPORT_SIZE)));
    host.expect_file_size()
        .returning(|_| Err(io::Error::from_raw_os_error(libc::ENOTCONN)));
    let unmounted_check = Arc::clone(&unmounted);
    host.expect_is_mount_point()
        .returning(move |_| Ok(!unmounted_check.load(std::sync::atomic::Ordering::SeqCst)));

    let err = attach(&image, &options(AttachMethod::Fuse), runner, host).unwrap_err();

    assert!(matches!(err, NbdError::ProbingHost { .. }), "{err:?}");
    assert!(events.contains("signal qemu-nbd SIGTERM"));
}

#[test]
fn fuse_close_with_busy_mount_reports_and_still_stops_all() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let never = Arc::new(AtomicBool::new(false));
    let runner = RunnerPlan::default()
        .child(ChildPlan::running("qemu-nbd", QEMU_NBD_PID))
        .child(ChildPlan {
            on_sigterm: Some(exit_code(1)),
            ..ChildPlan::running("nbdfuse", NBDFUSE_PID)
        })
        .run(
            "fusermount3 -u /",
            RunPlan {
                status: exit_code(1),
                stderr: "fusermount3: failed to unmount: Device or resource busy\n",
                sets: None,
            },
        )
        .run("fusermount3 -u -z", RunPlan::success())
        .mock(&events);
    let host = fuse_host(never);

    let attachment = attach(&image, &options(AttachMethod::Fuse), runner, host).unwrap();
    let err = attachment.close().unwrap_err();

    let NbdError::Detaching { ref reason, .. } = err else {
        panic!("expected Detaching, got {err:?}");
    };
    assert!(reason.contains("Device or resource busy"), "{reason}");
    assert!(events.contains("signal nbdfuse SIGTERM"));
    assert!(events.contains("run fusermount3 -u -z"));
    assert!(events.contains("signal qemu-nbd SIGTERM"));
}

#[test]
fn fuse_drop_releases_everything() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let unmounted = Arc::new(AtomicBool::new(false));
    let runner = fuse_runner(&unmounted).mock(&events);
    let host = fuse_host(Arc::clone(&unmounted));

    let attachment = attach(&image, &options(AttachMethod::Fuse), runner, host).unwrap();
    let dir = attachment
        .path()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .to_owned();
    drop(attachment);

    assert!(events.contains("run fusermount3 -u /"));
    assert!(events.contains("signal qemu-nbd SIGTERM"));
    assert!(!dir.exists());
}

#[test]
fn auto_probe_failure_is_probing_error() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default().mock(&events);
    let mut host = MockHostProbe::new();
    host.expect_kernel_nbd_devices()
        .returning(|| Err(io::Error::from_raw_os_error(libc::EACCES)));

    let err = attach(&image, &options(AttachMethod::Auto), runner, host).unwrap_err();

    assert!(matches!(err, NbdError::ProbingHost { .. }), "{err:?}");
    assert!(events.list().is_empty());
}

// ---- The kernel NBD path ----

/// Owners of the kernel devices nbd0..nbdN, changed by the scripted helpers.
type Owners = Arc<Mutex<Vec<Option<u32>>>>;

/// A kernel host with devices whose owners come from `owners`; a connected device has
/// the export's size.
fn kernel_host(owners: Owners) -> MockHostProbe {
    let mut host = MockHostProbe::new();
    let count = owners.lock().unwrap().len() as u32;
    host.expect_kernel_nbd_devices()
        .returning(move || Ok((0..count).collect()));
    let owner_lookup = Arc::clone(&owners);
    host.expect_nbd_device_owner()
        .returning(move |number| Ok(owner_lookup.lock().unwrap()[number as usize]));
    host.expect_nbd_device_size().returning(move |number| {
        Ok(if owners.lock().unwrap()[number as usize].is_some() {
            EXPORT_SIZE
        } else {
            0
        })
    });
    host
}

/// A runner whose `qemu-nbd --connect` children connect their device at once (recorded
/// in `owners`) with successive pids from `QEMU_NBD_PID`, and exit after a successful
/// `qemu-nbd --disconnect`.
fn kernel_runner(events: &Events, owners: Owners, children: u32) -> ConnectingRunner {
    let disconnected = Arc::new(AtomicBool::new(false));
    let mut plan = RunnerPlan::default().run(
        "qemu-nbd --disconnect",
        RunPlan {
            sets: Some(Arc::clone(&disconnected)),
            ..RunPlan::success()
        },
    );
    for index in 0..children {
        plan = plan.child(ChildPlan {
            exits_when: Some(Arc::clone(&disconnected)),
            ..ChildPlan::running("qemu-nbd", QEMU_NBD_PID + index)
        });
    }
    let inner = plan.mock(events);
    ConnectingRunner {
        inner,
        owners,
        events: events.clone(),
    }
}

/// Wraps the scripted runner so that spawning `qemu-nbd --connect=/dev/nbdN` marks
/// device N as owned by the new child, unless another process owns it already.
#[derive(Debug)]
struct ConnectingRunner {
    inner: crate::process::MockCommandRunner,
    owners: Owners,
    events: Events,
}

impl CommandRunner for ConnectingRunner {
    fn spawn(&self, command: &CommandLine) -> io::Result<Box<dyn ChildProcess>> {
        let child = self.inner.spawn(command)?;
        let device = command.args.iter().find_map(|arg| {
            arg.to_str()?
                .strip_prefix("--connect=/dev/nbd")?
                .parse::<usize>()
                .ok()
        });
        if let Some(number) = device {
            let mut owners = self.owners.lock().unwrap();
            owners[number].get_or_insert(child.id());
        }
        Ok(child)
    }

    fn run(&self, command: &CommandLine) -> io::Result<crate::process::CommandOutput> {
        let output = self.inner.run(command)?;
        if command.has_arg("--disconnect") {
            self.events.push("disconnected".to_owned());
        }
        Ok(output)
    }
}

fn attach_kernel_with(
    image: &tempfile::NamedTempFile,
    options: &NbdOptions,
    runner: ConnectingRunner,
    host: MockHostProbe,
) -> Result<NbdAttachment, NbdError> {
    NbdAttachment::attach_with(image.path(), options, Arc::new(runner), Arc::new(host))
}

#[test]
fn auto_with_kernel_nbd_connects_first_free_device() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let owners: Owners = Arc::new(Mutex::new(vec![Some(OTHER_PID), None, None]));
    let runner = kernel_runner(&events, Arc::clone(&owners), 1);
    let host = kernel_host(owners);

    let attachment =
        attach_kernel_with(&image, &options(AttachMethod::Auto), runner, host).unwrap();
    let export = attachment.export().clone();
    let size = attachment.size();
    attachment.close().unwrap();

    assert_eq!(
        export,
        AttachedExport::BlockDevice(PathBuf::from("/dev/nbd1"))
    );
    assert_eq!(size, EXPORT_SIZE);
    let image_path = std::fs::canonicalize(image.path()).unwrap();
    assert_eq!(
        spawned_args(&events, "qemu-nbd"),
        vec![
            "--connect=/dev/nbd1".to_owned(),
            "--format=qcow2".to_owned(),
            "--cache=writeback".to_owned(),
            image_path.display().to_string(),
        ]
    );
    assert!(events.contains("run qemu-nbd --disconnect /dev/nbd1"));
}

#[test]
fn kernel_race_lost_tries_next_device() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let owners: Owners = Arc::new(Mutex::new(vec![None, None]));
    let runner = kernel_runner(&events, Arc::clone(&owners), 2);
    let mut host = MockHostProbe::new();
    host.expect_kernel_nbd_devices()
        .returning(|| Ok(vec![0, 1]));
    // nbd0 is free when chosen, then another process turns out to own it.
    let mut nbd0_checks = 0;
    let owner_lookup = Arc::clone(&owners);
    host.expect_nbd_device_owner().returning(move |number| {
        if number == 0 {
            nbd0_checks += 1;
            return Ok((nbd0_checks > 1).then_some(OTHER_PID));
        }
        Ok(owner_lookup.lock().unwrap()[number as usize])
    });
    host.expect_nbd_device_size().returning(|_| Ok(EXPORT_SIZE));

    let attachment =
        attach_kernel_with(&image, &options(AttachMethod::Kernel), runner, host).unwrap();
    let export = attachment.export().clone();
    attachment.close().unwrap();

    assert_eq!(
        export,
        AttachedExport::BlockDevice(PathBuf::from("/dev/nbd1"))
    );
    assert!(
        events.contains("signal qemu-nbd SIGTERM"),
        "{:?}",
        events.list()
    );
    assert!(!events.contains("run qemu-nbd --disconnect /dev/nbd0"));
    assert!(events.contains("run qemu-nbd --disconnect /dev/nbd1"));
}

#[test]
fn kernel_all_devices_in_use_is_no_free_device() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let owners: Owners = Arc::new(Mutex::new(vec![Some(OTHER_PID), Some(OTHER_PID)]));
    let runner = kernel_runner(&events, Arc::clone(&owners), 0);
    let host = kernel_host(owners);

    let err = attach_kernel_with(&image, &options(AttachMethod::Kernel), runner, host).unwrap_err();

    assert!(
        matches!(err, NbdError::NoFreeNbdDevice { attempts: 0, .. }),
        "{err:?}"
    );
    assert!(events.list().is_empty());
}

#[test]
fn kernel_every_race_lost_stops_after_max_attempts() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let devices = MAX_NBD_DEVICE_ATTEMPTS + 4;
    let owners: Owners = Arc::new(Mutex::new(vec![None; devices as usize]));
    let runner = kernel_runner(&events, Arc::clone(&owners), MAX_NBD_DEVICE_ATTEMPTS);
    let mut host = MockHostProbe::new();
    host.expect_kernel_nbd_devices()
        .returning(move || Ok((0..devices).collect()));
    // Free when chosen, owned by another process at the first readiness check.
    let checks = Arc::new(Mutex::new(vec![0u32; devices as usize]));
    host.expect_nbd_device_owner().returning(move |number| {
        let mut checks = checks.lock().unwrap();
        checks[number as usize] += 1;
        Ok((checks[number as usize] > 1).then_some(OTHER_PID))
    });

    let err = attach_kernel_with(&image, &options(AttachMethod::Kernel), runner, host).unwrap_err();

    let NbdError::NoFreeNbdDevice { attempts, .. } = err else {
        panic!("expected NoFreeNbdDevice, got {err:?}");
    };
    assert_eq!(attempts, MAX_NBD_DEVICE_ATTEMPTS);
    assert!(!events.contains("run qemu-nbd --disconnect"));
}

#[test]
fn kernel_exit_before_ready_reports_output() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let owners: Owners = Arc::new(Mutex::new(vec![None]));
    let runner = RunnerPlan::default()
        .child(ChildPlan {
            exits_at_start: Some(exit_code(1)),
            stderr: "qemu-nbd: Failed to open /dev/nbd0: Permission denied\n",
            ..ChildPlan::running("qemu-nbd", QEMU_NBD_PID)
        })
        .mock(&events);
    let mut host = MockHostProbe::new();
    host.expect_kernel_nbd_devices().returning(|| Ok(vec![0]));
    host.expect_nbd_device_owner()
        .returning(move |number| Ok(owners.lock().unwrap()[number as usize]));

    let err = attach(&image, &options(AttachMethod::Kernel), runner, host).unwrap_err();

    let NbdError::ExitedEarly { ref stderr, .. } = err else {
        panic!("expected ExitedEarly, got {err:?}");
    };
    assert!(stderr.contains("Permission denied"), "{stderr}");
    assert!(!events.contains("signal"), "{:?}", events.list());
    assert!(!events.contains("run"), "{:?}", events.list());
}

#[test]
fn kernel_device_never_connected_times_out() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .child(ChildPlan::running("qemu-nbd", QEMU_NBD_PID))
        .mock(&events);
    let mut host = MockHostProbe::new();
    host.expect_kernel_nbd_devices().returning(|| Ok(vec![0]));
    host.expect_nbd_device_owner().returning(|_| Ok(None));

    let err = attach(&image, &options(AttachMethod::Kernel), runner, host).unwrap_err();

    let NbdError::NotReady { ref condition, .. } = err else {
        panic!("expected NotReady, got {err:?}");
    };
    assert!(condition.contains("/dev/nbd0"), "{condition}");
    assert!(events.contains("signal qemu-nbd SIGTERM"));
    assert!(!events.contains("run qemu-nbd --disconnect"));
}

#[test]
fn kernel_spawn_failure_is_spawning_error() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let runner = RunnerPlan::default()
        .spawn_error("qemu-nbd", libc::ENOENT)
        .mock(&events);
    let mut host = MockHostProbe::new();
    host.expect_kernel_nbd_devices().returning(|| Ok(vec![0]));
    host.expect_nbd_device_owner().returning(|_| Ok(None));

    let err = attach(&image, &options(AttachMethod::Kernel), runner, host).unwrap_err();

    assert!(matches!(err, NbdError::Spawning { .. }), "{err:?}");
}

#[test]
fn kernel_size_check_failure_is_probing_error() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let owners: Owners = Arc::new(Mutex::new(vec![None]));
    let runner = kernel_runner(&events, Arc::clone(&owners), 1);
    let mut host = MockHostProbe::new();
    host.expect_kernel_nbd_devices().returning(|| Ok(vec![0]));
    host.expect_nbd_device_owner()
        .returning(move |number| Ok(owners.lock().unwrap()[number as usize]));
    host.expect_nbd_device_size()
        .returning(|_| Err(io::Error::from_raw_os_error(libc::EIO)));

    let err = attach_kernel_with(&image, &options(AttachMethod::Kernel), runner, host).unwrap_err();

    assert!(matches!(err, NbdError::ProbingHost { .. }), "{err:?}");
    // The device is ours, so the cleanup disconnects it.
    assert!(events.contains("run qemu-nbd --disconnect /dev/nbd0"));
}

#[test]
fn kernel_disconnect_failure_is_reported_and_server_stopped() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let owners: Owners = Arc::new(Mutex::new(vec![None]));
    let inner = RunnerPlan::default()
        .child(ChildPlan::running("qemu-nbd", QEMU_NBD_PID))
        .run(
            "qemu-nbd --disconnect",
            RunPlan {
                status: exit_code(1),
                stderr: "qemu-nbd: Cannot disconnect\n",
                sets: None,
            },
        )
        .mock(&events);
    let runner = ConnectingRunner {
        inner,
        owners: Arc::clone(&owners),
        events: events.clone(),
    };
    let host = kernel_host(owners);

    let attachment =
        attach_kernel_with(&image, &options(AttachMethod::Kernel), runner, host).unwrap();
    let err = attachment.close().unwrap_err();

    let NbdError::Detaching { ref reason, .. } = err else {
        panic!("expected Detaching, got {err:?}");
    };
    assert!(reason.contains("Cannot disconnect"), "{reason}");
    assert!(events.contains("signal qemu-nbd SIGTERM"));
}

#[test]
fn kernel_drop_disconnects_device() {
    let image = tempfile::NamedTempFile::new().unwrap();
    let events = Events::default();
    let owners: Owners = Arc::new(Mutex::new(vec![None]));
    let runner = kernel_runner(&events, Arc::clone(&owners), 1);
    let host = kernel_host(owners);

    let attachment =
        attach_kernel_with(&image, &options(AttachMethod::Kernel), runner, host).unwrap();
    drop(attachment);

    assert!(events.contains("run qemu-nbd --disconnect /dev/nbd0"));
}
