//! Thin wrappers over the Linux calls that [`crate::tree::RootedTree`] uses: `openat2`
//! confined to a root or to one directory, extended attributes, and the mount table.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, OwnedFd};

use nix::errno::Errno;
use nix::fcntl::{OFlag, OpenHow, ResolveFlag};
use nix::sys::stat::{FileStat, Mode};

/// How often an `openat2` that failed with `EAGAIN` is tried again.
///
/// The kernel returns `EAGAIN` from a `RESOLVE_IN_ROOT` or `RESOLVE_BENEATH` lookup when a
/// rename or mount anywhere on the system happened while it resolved a `..`; a new attempt
/// usually succeeds at once.
const OPENAT2_ATTEMPTS: usize = 64;

/// Opens `path` with the directory `root` as the root: `/` and `..` never leave it, and an
/// absolute symlink target starts at it.
pub(crate) fn open_in_root(
    root: BorrowedFd<'_>,
    path: &str,
    flags: OFlag,
    mode: Mode,
) -> nix::Result<OwnedFd> {
    openat2_retrying(
        root,
        path,
        flags,
        mode,
        ResolveFlag::RESOLVE_IN_ROOT | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    )
}

/// Opens the single name `name` in `dir` without following any symlink: a symlink as the
/// name gives `ELOOP`, or the link itself with `O_PATH | O_NOFOLLOW`.
pub(crate) fn open_beneath(
    dir: BorrowedFd<'_>,
    name: &str,
    flags: OFlag,
    mode: Mode,
) -> nix::Result<OwnedFd> {
    openat2_retrying(
        dir,
        name,
        flags,
        mode,
        ResolveFlag::RESOLVE_BENEATH
            | ResolveFlag::RESOLVE_NO_SYMLINKS
            | ResolveFlag::RESOLVE_NO_MAGICLINKS,
    )
}

fn openat2_retrying(
    dir: BorrowedFd<'_>,
    path: &str,
    flags: OFlag,
    mode: Mode,
    resolve: ResolveFlag,
) -> nix::Result<OwnedFd> {
    let how = OpenHow::new()
        .flags(flags | OFlag::O_CLOEXEC)
        .mode(mode)
        .resolve(resolve);
    let mut attempt = 1;
    loop {
        match nix::fcntl::openat2(dir, path, how) {
            Err(Errno::EAGAIN) if attempt < OPENAT2_ATTEMPTS => attempt += 1,
            result => return result,
        }
    }
}

/// The `/proc/self/fd` path of a descriptor, for the few calls that have no
/// descriptor-based form for an `O_PATH` descriptor.
pub(crate) fn proc_fd_path(fd: BorrowedFd<'_>) -> CString {
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).expect("no NUL in a number")
}

/// The file type bits of a status.
pub(crate) fn file_type(stat: &FileStat) -> libc::mode_t {
    stat.st_mode & libc::S_IFMT
}

/// The object an extended attribute call acts on: an open descriptor, or the
/// `/proc/self/fd` path of an `O_PATH` descriptor, because the `f*xattr` calls reject
/// `O_PATH` descriptors.
#[derive(Debug)]
pub(crate) enum XattrTarget<'fd> {
    /// A descriptor opened for reading.
    Fd(BorrowedFd<'fd>),
    /// A `/proc/self/fd/N` path, which the kernel resolves to exactly that descriptor's file.
    ProcPath(CString),
}

/// Lists the names of every extended attribute this process can see.
pub(crate) fn list_xattr_names(target: &XattrTarget<'_>) -> io::Result<Vec<CString>> {
    let raw = read_sized(|buffer: &mut [u8]| {
        let (pointer, size) = buffer_parts(buffer);
        // SAFETY: `pointer` is either null with size 0 or points to `size` writable bytes
        // owned by `buffer`; the path is a valid NUL-terminated string.
        unsafe {
            match target {
                XattrTarget::Fd(fd) => libc::flistxattr(fd.as_raw_fd(), pointer, size),
                XattrTarget::ProcPath(path) => libc::listxattr(path.as_ptr(), pointer, size),
            }
        }
    })?;
    Ok(raw
        .split(|byte| *byte == 0)
        .filter(|name| !name.is_empty())
        .map(|name| CString::new(name).expect("split at every NUL"))
        .collect())
}

/// Reads the value of one extended attribute.
pub(crate) fn get_xattr(target: &XattrTarget<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    read_sized(|buffer: &mut [u8]| {
        let (pointer, size) = buffer_parts(buffer);
        // SAFETY: as in `list_xattr_names`; `name` is a valid NUL-terminated string.
        unsafe {
            match target {
                XattrTarget::Fd(fd) => {
                    libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), pointer.cast(), size)
                }
                XattrTarget::ProcPath(path) => {
                    libc::getxattr(path.as_ptr(), name.as_ptr(), pointer.cast(), size)
                }
            }
        }
    })
}

/// Sets one extended attribute, creating or replacing it.
pub(crate) fn set_xattr(target: &XattrTarget<'_>, name: &CStr, value: &[u8]) -> io::Result<()> {
    // SAFETY: `value` points to `value.len()` readable bytes; `name` and the path are valid
    // NUL-terminated strings.
    let result = unsafe {
        match target {
            XattrTarget::Fd(fd) => libc::fsetxattr(
                fd.as_raw_fd(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            ),
            XattrTarget::ProcPath(path) => libc::setxattr(
                path.as_ptr(),
                name.as_ptr(),
                value.as_ptr().cast(),
                value.len(),
                0,
            ),
        }
    };
    if result < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

fn buffer_parts(buffer: &mut [u8]) -> (*mut libc::c_char, usize) {
    if buffer.is_empty() {
        (std::ptr::null_mut(), 0)
    } else {
        (buffer.as_mut_ptr().cast(), buffer.len())
    }
}

/// Runs a "query the size, then fill the buffer" call, trying again when the value grew in
/// between (`ERANGE`).
fn read_sized(mut call: impl FnMut(&mut [u8]) -> libc::ssize_t) -> io::Result<Vec<u8>> {
    loop {
        let size = call(&mut []);
        if size < 0 {
            return Err(io::Error::last_os_error());
        }
        let mut buffer = vec![0u8; size as usize];
        let filled = call(&mut buffer);
        if filled < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::ERANGE) {
                continue;
            }
            return Err(err);
        }
        buffer.truncate(filled as usize);
        return Ok(buffer);
    }
}

/// One line of `/proc/self/mountinfo`, with the fields this crate uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MountEntry {
    /// The device number of the mounted filesystem.
    pub dev: u64,
    /// Where it is mounted on the host, with the kernel's octal escapes undone.
    pub mount_point: String,
    /// The filesystem type.
    pub fs_type: String,
    /// The mount source, such as `/dev/loop3`.
    pub source: String,
}

/// Parses `/proc/self/mountinfo` text; lines that do not fit the format are skipped.
pub(crate) fn parse_mountinfo(text: &str) -> Vec<MountEntry> {
    text.lines().filter_map(parse_mountinfo_line).collect()
}

/// Reads the host's mount table of this process.
pub(crate) fn read_mountinfo() -> io::Result<Vec<MountEntry>> {
    Ok(parse_mountinfo(&std::fs::read_to_string(
        "/proc/self/mountinfo",
    )?))
}

fn parse_mountinfo_line(line: &str) -> Option<MountEntry> {
    // Format: ID PARENT MAJOR:MINOR ROOT MOUNT_POINT OPTIONS [OPTIONAL...] - TYPE SOURCE SUPER
    let (left, right) = line.split_once(" - ")?;
    let fields: Vec<&str> = left.split(' ').collect();
    let (major, minor) = fields.get(2)?.split_once(':')?;
    let mount_point = unescape_mountinfo(fields.get(4)?);
    let mut right = right.split(' ');
    let fs_type = right.next()?.to_owned();
    let source = unescape_mountinfo(right.next()?);
    Some(MountEntry {
        dev: libc::makedev(major.parse().ok()?, minor.parse().ok()?),
        mount_point,
        fs_type,
        source,
    })
}

/// Undoes the `\NNN` octal escapes the kernel writes for space, tab, newline and `\`.
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match escape {
            Some(digits) => {
                let value = digits
                    .iter()
                    .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
                out.push(value as u8);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_line_parses_with_optional_fields() {
        let text =
            "36 35 98:0 / /mnt/guest\\040root rw,nosuid shared:1 master:2 - ext4 /dev/loop3 rw\n";
        let entries = parse_mountinfo(text);
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].dev, libc::makedev(98, 0));
        assert_eq!(entries[0].mount_point, "/mnt/guest root");
        assert_eq!(entries[0].fs_type, "ext4");
        assert_eq!(entries[0].source, "/dev/loop3");
    }

    #[test]
    fn mountinfo_junk_line_is_skipped() {
        assert!(parse_mountinfo("not a mount line\n").is_empty());
    }
}
