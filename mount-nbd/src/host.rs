//! Checks of host state that the attach steps wait on (sockets, files, mounts, kernel NBD
//! devices), behind the [`HostProbe`] trait so that tests can replace them.

use std::fmt;
use std::fs;
use std::io;
use std::os::unix::fs::MetadataExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::protocol;

/// Queries of the host's state.
#[cfg_attr(test, mockall::automock)]
pub trait HostProbe: Send + Sync + fmt::Debug {
    /// Returns the numbers N of the kernel's `/dev/nbdN` devices, sorted; empty when the
    /// kernel has no NBD client.
    fn kernel_nbd_devices(&self) -> io::Result<Vec<u32>>;

    /// Returns the process connected to `/dev/nbdN`, or `None` when the device is free.
    fn nbd_device_owner(&self, number: u32) -> io::Result<Option<u32>>;

    /// Returns the size of `/dev/nbdN` in bytes; 0 while nothing is connected.
    fn nbd_device_size(&self, number: u32) -> io::Result<u64>;

    /// Connects to the NBD server on `socket` and returns the size of its default export,
    /// or `None` when no server accepts connections there yet. `timeout` bounds each
    /// read and write of the handshake.
    fn query_export(&self, socket: &Path, timeout: Duration) -> io::Result<Option<u64>>;

    /// Returns the size of the file at `path`, or `None` when it does not exist.
    fn file_size(&self, path: &Path) -> io::Result<Option<u64>>;

    /// Returns true when a filesystem is mounted on `dir`; false when `dir` does not exist.
    fn is_mount_point(&self, dir: &Path) -> io::Result<bool>;
}

/// The [`HostProbe`] that looks at the real host.
#[derive(Debug, Clone, Copy, Default)]
pub struct SystemHost;

impl HostProbe for SystemHost {
    fn kernel_nbd_devices(&self) -> io::Result<Vec<u32>> {
        let mut numbers = Vec::new();
        for entry in fs::read_dir("/sys/block")? {
            let name = entry?.file_name();
            let number = name
                .to_str()
                .and_then(|name| name.strip_prefix("nbd"))
                .and_then(|digits| digits.parse::<u32>().ok());
            numbers.extend(number);
        }
        numbers.sort_unstable();
        Ok(numbers)
    }

    fn nbd_device_owner(&self, number: u32) -> io::Result<Option<u32>> {
        let text = match fs::read_to_string(format!("/sys/block/nbd{number}/pid")) {
            Ok(text) => text,
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(err) => return Err(err),
        };
        let task: u32 = text
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "invalid nbd pid file"))?;
        // The file contains the id of the thread serving the device, and the owner is
        // that thread's process (thread group).
        Ok(Some(thread_group_of(task).unwrap_or(task)))
    }

    fn nbd_device_size(&self, number: u32) -> io::Result<u64> {
        let text = fs::read_to_string(format!("/sys/block/nbd{number}/size"))?;
        let sectors: u64 = text
            .trim()
            .parse()
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidData, "invalid nbd size file"))?;
        Ok(sectors * 512)
    }

    fn query_export(&self, socket: &Path, timeout: Duration) -> io::Result<Option<u64>> {
        let mut stream = match UnixStream::connect(socket) {
            Ok(stream) => stream,
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
                ) =>
            {
                return Ok(None)
            }
            Err(err) => return Err(err),
        };
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        match protocol::query_export_size(&mut stream) {
            Ok(size) => Ok(Some(size)),
            // The server accepted the connection in the kernel but has not started
            // answering, for example while it still opens the image.
            Err(err)
                if matches!(
                    err.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                Ok(None)
            }
            Err(err) => Err(err),
        }
    }

    fn file_size(&self, path: &Path) -> io::Result<Option<u64>> {
        match fs::metadata(path) {
            Ok(metadata) => Ok(Some(metadata.len())),
            Err(err) if err.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(err) => Err(err),
        }
    }

    fn is_mount_point(&self, dir: &Path) -> io::Result<bool> {
        let own = match fs::symlink_metadata(dir) {
            Ok(metadata) => metadata,
            // A FUSE mount whose server has gone fails every access with ENOTCONN.
            Err(err) if err.raw_os_error() == Some(libc::ENOTCONN) => return Ok(true),
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(err) => return Err(err),
        };
        let parent = fs::symlink_metadata(dir.join(".."))?;
        Ok(own.dev() != parent.dev())
    }
}

/// Returns the thread group (process) id of thread `task`, from `/proc/TASK/status`.
fn thread_group_of(task: u32) -> Option<u32> {
    let status = fs::read_to_string(format!("/proc/{task}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("Tgid:"))
        .and_then(|value| value.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixListener;

    use super::*;

    #[test]
    fn query_export_missing_socket_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();

        let size = SystemHost
            .query_export(&dir.path().join("nbd.sock"), Duration::from_secs(1))
            .unwrap();

        assert_eq!(size, None);
    }

    #[test]
    fn query_export_listener_not_answering_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        let _listener = UnixListener::bind(&socket).unwrap();

        let size = SystemHost
            .query_export(&socket, Duration::from_millis(50))
            .unwrap();

        assert_eq!(size, None);
    }

    #[test]
    fn query_export_socket_without_listener_is_not_ready() {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("nbd.sock");
        drop(UnixListener::bind(&socket).unwrap());

        let size = SystemHost
            .query_export(&socket, Duration::from_secs(1))
            .unwrap();

        assert_eq!(size, None);
    }

    #[test]
    fn file_size_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();

        assert_eq!(
            SystemHost.file_size(&dir.path().join("disk")).unwrap(),
            None
        );
    }

    #[test]
    fn file_size_existing_file_is_its_length() {
        let file = tempfile::NamedTempFile::new().unwrap();
        file.as_file().set_len(12345).unwrap();

        assert_eq!(SystemHost.file_size(file.path()).unwrap(), Some(12345));
    }

    #[test]
    fn plain_directory_is_not_mount_point() {
        let dir = tempfile::tempdir().unwrap();

        assert!(!SystemHost.is_mount_point(dir.path()).unwrap());
    }

    #[test]
    fn missing_directory_is_not_mount_point() {
        let dir = tempfile::tempdir().unwrap();

        assert!(!SystemHost.is_mount_point(&dir.path().join("fuse")).unwrap());
    }

    #[test]
    fn proc_is_mount_point() {
        assert!(SystemHost.is_mount_point(Path::new("/proc")).unwrap());
    }

    #[test]
    fn own_thread_belongs_to_own_process() {
        // SAFETY: gettid cannot fail.
        let thread = unsafe { libc::gettid() } as u32;

        assert_eq!(thread_group_of(thread), Some(std::process::id()));
    }
}
