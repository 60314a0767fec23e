//! A safe wrapper over the libguestfs C API, limited to the calls this backend makes.
//!
//! [`Appliance`] owns one `guestfs_h` handle and closes it in `Drop`, which also kills the
//! appliance's qemu process if it still runs. Every call returns a [`HandleError`] with
//! libguestfs's own message (`guestfs_last_error`) and errno (`guestfs_last_errno`).
//!
//! Memory that libguestfs returns is freed with the C library's `free` or the matching
//! `guestfs_free_*` function, as the libguestfs API documentation requires.

use std::ffi::{CStr, CString};
use std::os::raw::{c_char, c_int, c_void};
use std::path::Path;
use std::ptr;

use crate::failpoint;
use crate::handle::{GuestfsHandle, HandleError, Stat, StatVfs};

/// The opaque libguestfs handle type.
#[repr(C)]
struct GuestfsH {
    _private: [u8; 0],
}

/// `struct guestfs_statns` from `guestfs.h`.
#[repr(C)]
struct RawStatns {
    st_dev: i64,
    st_ino: i64,
    st_mode: i64,
    st_nlink: i64,
    st_uid: i64,
    st_gid: i64,
    st_rdev: i64,
    st_size: i64,
    st_blksize: i64,
    st_blocks: i64,
    st_atime_sec: i64,
    st_atime_nsec: i64,
    st_mtime_sec: i64,
    st_mtime_nsec: i64,
    st_ctime_sec: i64,
    st_ctime_nsec: i64,
    st_spare: [i64; 6],
}

/// `struct guestfs_statvfs` from `guestfs.h`.
#[repr(C)]
struct RawStatvfs {
    bsize: i64,
    frsize: i64,
    blocks: i64,
    bfree: i64,
    bavail: i64,
    files: i64,
    ffree: i64,
    favail: i64,
    fsid: i64,
    flag: i64,
    namemax: i64,
}

/// `struct guestfs_xattr` from `guestfs.h`.
#[repr(C)]
struct RawXattr {
    attrname: *mut c_char,
    attrval_len: u32,
    attrval: *mut c_char,
}

/// `struct guestfs_xattr_list` from `guestfs.h`.
#[repr(C)]
struct RawXattrList {
    len: u32,
    val: *mut RawXattr,
}

/// `struct guestfs_add_drive_opts_argv` from `guestfs.h`; only the bits of the fields this
/// crate sets are ever raised in `bitmask`, so libguestfs reads no other field.
#[repr(C)]
struct AddDriveOptsArgv {
    bitmask: u64,
    readonly: c_int,
    format: *const c_char,
    iface: *const c_char,
    name: *const c_char,
    label: *const c_char,
    protocol: *const c_char,
    server: *const *const c_char,
    username: *const c_char,
    secret: *const c_char,
    cachemode: *const c_char,
    discard: *const c_char,
    copyonread: c_int,
    blocksize: c_int,
}

const ADD_DRIVE_OPTS_READONLY_BITMASK: u64 = 1 << 0;
const ADD_DRIVE_OPTS_FORMAT_BITMASK: u64 = 1 << 1;

/// `struct guestfs_add_drive_scratch_argv` from `guestfs.h`.
#[repr(C)]
struct AddDriveScratchArgv {
    bitmask: u64,
    name: *const c_char,
    label: *const c_char,
    blocksize: c_int,
}

/// `struct guestfs_remount_argv` from `guestfs.h`.
#[repr(C)]
struct RemountArgv {
    bitmask: u64,
    rw: c_int,
}

const REMOUNT_RW_BITMASK: u64 = 1 << 0;

/// `guestfs_event_callback` from `guestfs.h`.
type EventCallback = extern "C" fn(
    g: *mut GuestfsH,
    opaque: *mut c_void,
    event: u64,
    event_handle: c_int,
    flags: c_int,
    buf: *const c_char,
    buf_len: usize,
    array: *const u64,
    array_len: usize,
);

/// `guestfs_error_handler_cb` from `guestfs.h`.
type ErrorHandler = extern "C" fn(g: *mut GuestfsH, opaque: *mut c_void, msg: *const c_char);

const EVENT_APPLIANCE: u64 = 0x0010;
const EVENT_LIBRARY: u64 = 0x0020;
const EVENT_TRACE: u64 = 0x0040;
const EVENT_WARNING: u64 = 0x0200;

/// The shared library that holds libguestfs, loaded when the first handle is created, so
/// that `guest-inject` starts and its other backend works on hosts without libguestfs, and
/// so that programs which never use this backend do not map its 60-odd libraries.
const LIBRARY_NAME: &str = "libguestfs.so.0";

/// Declares the libguestfs functions this crate calls: a table of function pointers loaded
/// from [`LIBRARY_NAME`] with `dlopen`, and for each function an `unsafe fn` of the same name
/// and signature that calls through the table.
macro_rules! libguestfs_api {
    ($( fn $name:ident($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?; )*) => {
        /// The loaded library and a pointer to each function this crate calls.
        struct Api {
            $( $name: unsafe extern "C" fn($($ty),*) $(-> $ret)?, )*
            _library: libloading::Library,
        }

        impl Api {
            fn load() -> Result<Self, libloading::Error> {
                // SAFETY: loading libguestfs runs only its ELF constructors, which set up
                // its own global state and have no preconditions.
                let library = unsafe { libloading::Library::new(LIBRARY_NAME)? };
                $(
                    // SAFETY: the declared type is the C signature from guestfs.h, and the
                    // pointer is used only while `_library` keeps the library loaded.
                    let $name = unsafe {
                        *library.get::<unsafe extern "C" fn($($ty),*) $(-> $ret)?>(
                            concat!(stringify!($name), "\0").as_bytes(),
                        )?
                    };
                )*
                Ok(Self { $($name,)* _library: library })
            }
        }

        $(
            /// Calls the libguestfs function of the same name.
            ///
            /// # Safety
            ///
            /// The same as for the C function; the library must have been loaded, which
            /// holds whenever a handle exists.
            #[allow(clippy::too_many_arguments)]
            unsafe fn $name($($arg: $ty),*) $(-> $ret)? {
                // SAFETY: the caller upholds the C function's contract.
                unsafe { (loaded_api().$name)($($arg),*) }
            }
        )*
    };
}

libguestfs_api! {
fn guestfs_create() -> *mut GuestfsH;
fn guestfs_close(g: *mut GuestfsH);
fn guestfs_last_error(g: *mut GuestfsH) -> *const c_char;
fn guestfs_last_errno(g: *mut GuestfsH) -> c_int;
fn guestfs_set_error_handler(g: *mut GuestfsH, cb: Option<ErrorHandler>, opaque: *mut c_void);
fn guestfs_set_event_callback(
    g: *mut GuestfsH,
    cb: EventCallback,
    event_bitmask: u64,
    flags: c_int,
    opaque: *mut c_void,
) -> c_int;

fn guestfs_get_backend_settings(g: *mut GuestfsH) -> *mut *mut c_char;
fn guestfs_set_backend_setting(
    g: *mut GuestfsH,
    name: *const c_char,
    val: *const c_char,
) -> c_int;
fn guestfs_get_path(g: *mut GuestfsH) -> *const c_char;
fn guestfs_get_hv(g: *mut GuestfsH) -> *mut c_char;
fn guestfs_add_drive_opts_argv(
    g: *mut GuestfsH,
    filename: *const c_char,
    optargs: *const AddDriveOptsArgv,
) -> c_int;
fn guestfs_add_drive_scratch_argv(
    g: *mut GuestfsH,
    size: i64,
    optargs: *const AddDriveScratchArgv,
) -> c_int;
fn guestfs_launch(g: *mut GuestfsH) -> c_int;
fn guestfs_shutdown(g: *mut GuestfsH) -> c_int;

fn guestfs_list_partitions(g: *mut GuestfsH) -> *mut *mut c_char;
fn guestfs_list_filesystems(g: *mut GuestfsH) -> *mut *mut c_char;
fn guestfs_vfs_type(g: *mut GuestfsH, mountable: *const c_char) -> *mut c_char;
fn guestfs_vfs_label(g: *mut GuestfsH, mountable: *const c_char) -> *mut c_char;
fn guestfs_vfs_uuid(g: *mut GuestfsH, mountable: *const c_char) -> *mut c_char;
fn guestfs_inspect_os(g: *mut GuestfsH) -> *mut *mut c_char;
fn guestfs_inspect_get_mountpoints(g: *mut GuestfsH, root: *const c_char) -> *mut *mut c_char;
fn guestfs_mount_options(
    g: *mut GuestfsH,
    options: *const c_char,
    mountable: *const c_char,
    mountpoint: *const c_char,
) -> c_int;
fn guestfs_remount_argv(
    g: *mut GuestfsH,
    mountpoint: *const c_char,
    optargs: *const RemountArgv,
) -> c_int;

fn guestfs_realpath(g: *mut GuestfsH, path: *const c_char) -> *mut c_char;
fn guestfs_statns(g: *mut GuestfsH, path: *const c_char) -> *mut RawStatns;
fn guestfs_lstatns(g: *mut GuestfsH, path: *const c_char) -> *mut RawStatns;
fn guestfs_free_statns(stat: *mut RawStatns);
fn guestfs_readlink(g: *mut GuestfsH, path: *const c_char) -> *mut c_char;
fn guestfs_pread(
    g: *mut GuestfsH,
    path: *const c_char,
    count: c_int,
    offset: i64,
    size_r: *mut usize,
) -> *mut c_char;
fn guestfs_write(
    g: *mut GuestfsH,
    path: *const c_char,
    content: *const c_char,
    content_size: usize,
) -> c_int;
fn guestfs_write_append(
    g: *mut GuestfsH,
    path: *const c_char,
    content: *const c_char,
    content_size: usize,
) -> c_int;
fn guestfs_mkdir_mode(g: *mut GuestfsH, path: *const c_char, mode: c_int) -> c_int;
fn guestfs_chmod(g: *mut GuestfsH, mode: c_int, path: *const c_char) -> c_int;
fn guestfs_chown(g: *mut GuestfsH, owner: c_int, group: c_int, path: *const c_char) -> c_int;
fn guestfs_ln_s(g: *mut GuestfsH, target: *const c_char, linkname: *const c_char) -> c_int;
fn guestfs_rm(g: *mut GuestfsH, path: *const c_char) -> c_int;
fn guestfs_rename(g: *mut GuestfsH, oldpath: *const c_char, newpath: *const c_char) -> c_int;
fn guestfs_getxattrs(g: *mut GuestfsH, path: *const c_char) -> *mut RawXattrList;
fn guestfs_free_xattr_list(list: *mut RawXattrList);
fn guestfs_setxattr(
    g: *mut GuestfsH,
    xattr: *const c_char,
    val: *const c_char,
    vallen: c_int,
    path: *const c_char,
) -> c_int;
fn guestfs_statvfs(g: *mut GuestfsH, path: *const c_char) -> *mut RawStatvfs;
fn guestfs_free_statvfs(stat: *mut RawStatvfs);
fn guestfs_sync(g: *mut GuestfsH) -> c_int;}

/// The library, loaded by the first call.
static API: std::sync::OnceLock<Result<Api, String>> = std::sync::OnceLock::new();

/// Loads libguestfs once, returning why it cannot be loaded.
fn api() -> Result<&'static Api, HandleError> {
    API.get_or_init(|| Api::load().map_err(|err| err.to_string()))
        .as_ref()
        .map_err(|reason| HandleError {
            message: format!(
                "cannot load {LIBRARY_NAME} ({reason}); install libguestfs \
                 (Debian and Ubuntu: libguestfs0, Fedora: libguestfs)"
            ),
            errno: 0,
        })
}

/// Returns the loaded library; only called where a handle exists, which proves it loaded.
fn loaded_api() -> &'static Api {
    match API.get() {
        Some(Ok(api)) => api,
        _ => unreachable!("libguestfs is called before a handle was created"),
    }
}

/// One libguestfs handle: the library state and, once launched, the appliance.
///
/// Dropping it calls `guestfs_close`, which kills the appliance if it still runs. Call
/// [`GuestfsHandle::shutdown`] first for an orderly stop that flushes the disks.
#[derive(Debug)]
pub struct Appliance {
    handle: *mut GuestfsH,
}

// SAFETY: a libguestfs handle is not tied to the thread that created it: since libguestfs
// 1.38 every handle carries its own lock, and `Appliance` only exposes `&mut self` calls, so
// it is never used from two threads at once.
unsafe impl Send for Appliance {}

impl Appliance {
    /// Creates a handle, reading the `LIBGUESTFS_*` environment variables as libguestfs does,
    /// and forwards its log events to `tracing`.
    pub fn create() -> Result<Self, HandleError> {
        api()?;
        // SAFETY: guestfs_create takes no arguments and returns a new handle or NULL.
        let handle = unsafe { guestfs_create() };
        if handle.is_null() {
            return Err(HandleError {
                message: "guestfs_create returned no handle (out of memory or an invalid \
                          LIBGUESTFS_* environment variable)"
                    .to_owned(),
                errno: 0,
            });
        }
        let appliance = Self { handle };

        // Every error is returned to the caller, who decides whether it matters (most
        // lookups of missing files are expected), so libguestfs must not print them too.
        // SAFETY: the handle is valid; a NULL handler turns printing off.
        unsafe { guestfs_set_error_handler(appliance.handle, None, ptr::null_mut()) };

        let events = EVENT_APPLIANCE | EVENT_LIBRARY | EVENT_TRACE | EVENT_WARNING;
        // SAFETY: the handle is valid; forward_event is an `extern "C"` function matching
        // guestfs_event_callback that never unwinds, and it uses no opaque pointer.
        let status = unsafe {
            guestfs_set_event_callback(appliance.handle, forward_event, events, 0, ptr::null_mut())
        };
        if status == -1 {
            return Err(appliance.last_error());
        }
        Ok(appliance)
    }

    /// Returns the directory libguestfs looks for its appliance in.
    pub fn appliance_path(&mut self) -> Option<String> {
        // SAFETY: the handle is valid; the returned string belongs to the handle, so it is
        // copied and not freed.
        let path = unsafe { guestfs_get_path(self.handle) };
        if path.is_null() {
            return None;
        }
        // SAFETY: libguestfs returned a non-NULL, NUL-terminated string.
        Some(
            unsafe { CStr::from_ptr(path) }
                .to_string_lossy()
                .into_owned(),
        )
    }

    /// Returns the hypervisor (qemu) binary libguestfs will run.
    pub fn hypervisor(&mut self) -> Result<String, HandleError> {
        // SAFETY: the handle is valid; the result is a malloc'd string the caller frees.
        let hv = unsafe { guestfs_get_hv(self.handle) };
        self.take_string(hv)
    }

    /// Builds the error for the call that just failed.
    fn last_error(&self) -> HandleError {
        // SAFETY: the handle is valid; the message belongs to the handle and stays valid
        // until the next call on it, so it is copied right away.
        let message = unsafe { guestfs_last_error(self.handle) };
        let message = if message.is_null() {
            "libguestfs reported an error without a message".to_owned()
        } else {
            // SAFETY: a non-NULL, NUL-terminated string from libguestfs.
            unsafe { CStr::from_ptr(message) }
                .to_string_lossy()
                .into_owned()
        };
        // SAFETY: the handle is valid.
        let errno = unsafe { guestfs_last_errno(self.handle) };
        HandleError { message, errno }
    }

    /// Checks an `int` status (`-1` is an error).
    fn check(&self, status: c_int) -> Result<(), HandleError> {
        if status == -1 {
            Err(self.last_error())
        } else {
            Ok(())
        }
    }

    /// Takes ownership of a malloc'd string result (NULL is an error) and frees it.
    fn take_string(&self, raw: *mut c_char) -> Result<String, HandleError> {
        if raw.is_null() {
            return Err(self.last_error());
        }
        // SAFETY: a non-NULL, NUL-terminated string that libguestfs malloc'd for the caller.
        let text = unsafe { CStr::from_ptr(raw) }
            .to_string_lossy()
            .into_owned();
        // SAFETY: the caller owns the string and frees it exactly once, here.
        unsafe { libc::free(raw.cast()) };
        Ok(text)
    }

    /// Takes ownership of a NULL-terminated, malloc'd list of malloc'd strings (a NULL list
    /// is an error) and frees it.
    fn take_string_list(&self, raw: *mut *mut c_char) -> Result<Vec<String>, HandleError> {
        if raw.is_null() {
            return Err(self.last_error());
        }
        let mut strings = Vec::new();
        let mut index = 0;
        loop {
            // SAFETY: the list is NULL-terminated, and `index` never passes the terminator.
            let item = unsafe { *raw.add(index) };
            if item.is_null() {
                break;
            }
            // SAFETY: each item is a NUL-terminated string that libguestfs malloc'd.
            strings.push(
                unsafe { CStr::from_ptr(item) }
                    .to_string_lossy()
                    .into_owned(),
            );
            // SAFETY: the caller owns each item and frees it exactly once, here.
            unsafe { libc::free(item.cast()) };
            index += 1;
        }
        // SAFETY: the caller owns the list array and frees it exactly once, here.
        unsafe { libc::free(raw.cast()) };
        Ok(strings)
    }

    /// Takes ownership of a statns result (NULL is an error) and frees it.
    fn take_stat(&self, raw: *mut RawStatns) -> Result<Stat, HandleError> {
        if raw.is_null() {
            return Err(self.last_error());
        }
        // SAFETY: a valid struct that libguestfs allocated for the caller.
        let stat = unsafe { &*raw };
        let result = Stat {
            mode: stat.st_mode as u32,
            uid: stat.st_uid as u32,
            gid: stat.st_gid as u32,
            size: stat.st_size.max(0) as u64,
        };
        // SAFETY: freed exactly once with the matching libguestfs function.
        unsafe { guestfs_free_statns(raw) };
        Ok(result)
    }
}

impl Drop for Appliance {
    fn drop(&mut self) {
        // SAFETY: the handle is valid and is closed exactly once, here; guestfs_close kills
        // the appliance if it still runs and frees the handle.
        unsafe { guestfs_close(self.handle) };
    }
}

/// Converts an argument for a C call; a NUL byte inside it cannot be passed to libguestfs.
fn c_string(text: &str) -> Result<CString, HandleError> {
    CString::new(text).map_err(|_| HandleError {
        message: format!("{text:?} contains a NUL byte"),
        errno: libc::EINVAL,
    })
}

fn c_path(path: &Path) -> Result<CString, HandleError> {
    use std::os::unix::ffi::OsStrExt;
    CString::new(path.as_os_str().as_bytes()).map_err(|_| HandleError {
        message: format!("{} contains a NUL byte", path.display()),
        errno: libc::EINVAL,
    })
}

/// Splits a libguestfs hash (a flat list of key, value, key, value) into pairs.
fn pairs(flat: Vec<String>) -> Vec<(String, String)> {
    let mut pairs = Vec::with_capacity(flat.len() / 2);
    let mut items = flat.into_iter();
    while let (Some(key), Some(value)) = (items.next(), items.next()) {
        pairs.push((key, value));
    }
    pairs
}

/// Returns the error libguestfs would report for `call` failing with `EIO` when the
/// failpoint `name` is set; see [`crate::failpoint`].
fn injected_failure(name: &str, call: &str) -> Result<(), HandleError> {
    failpoint::check(name).map_err(|error| HandleError {
        message: format!("{call}: {error}"),
        errno: error.raw_os_error().unwrap_or(0),
    })
}

impl GuestfsHandle for Appliance {
    fn backend_settings(&mut self) -> Result<Vec<String>, HandleError> {
        // SAFETY: the handle is valid; the result is a list the caller frees.
        let raw = unsafe { guestfs_get_backend_settings(self.handle) };
        self.take_string_list(raw)
    }

    fn set_backend_setting(&mut self, name: &str, value: &str) -> Result<(), HandleError> {
        let name = c_string(name)?;
        let value = c_string(value)?;
        // SAFETY: the handle is valid; libguestfs copies both strings.
        let status =
            unsafe { guestfs_set_backend_setting(self.handle, name.as_ptr(), value.as_ptr()) };
        self.check(status)
    }

    fn add_drive(
        &mut self,
        image: &Path,
        format: &str,
        read_only: bool,
    ) -> Result<(), HandleError> {
        let filename = c_path(image)?;
        let format = c_string(format)?;
        let optargs = AddDriveOptsArgv {
            bitmask: ADD_DRIVE_OPTS_READONLY_BITMASK | ADD_DRIVE_OPTS_FORMAT_BITMASK,
            readonly: c_int::from(read_only),
            format: format.as_ptr(),
            iface: ptr::null(),
            name: ptr::null(),
            label: ptr::null(),
            protocol: ptr::null(),
            server: ptr::null(),
            username: ptr::null(),
            secret: ptr::null(),
            cachemode: ptr::null(),
            discard: ptr::null(),
            copyonread: 0,
            blocksize: 0,
        };
        // SAFETY: the handle is valid; the optargs struct matches guestfs.h, its bitmask
        // names only the fields set above, and every pointer outlives the call.
        let status =
            unsafe { guestfs_add_drive_opts_argv(self.handle, filename.as_ptr(), &optargs) };
        self.check(status)
    }

    fn add_drive_scratch(&mut self, size: u64) -> Result<(), HandleError> {
        let optargs = AddDriveScratchArgv {
            bitmask: 0,
            name: ptr::null(),
            label: ptr::null(),
            blocksize: 0,
        };
        let size = i64::try_from(size).unwrap_or(i64::MAX);
        // SAFETY: the handle is valid and the optargs struct, with no bit set, matches
        // guestfs.h.
        let status = unsafe { guestfs_add_drive_scratch_argv(self.handle, size, &optargs) };
        self.check(status)
    }

    fn launch(&mut self) -> Result<(), HandleError> {
        injected_failure("guestfs::launch", "launch")?;
        // SAFETY: the handle is valid.
        let status = unsafe { guestfs_launch(self.handle) };
        self.check(status)
    }

    fn shutdown(&mut self) -> Result<(), HandleError> {
        // An injected failure skips the orderly shutdown; closing the handle still stops
        // the appliance, as after a real failure.
        injected_failure("guestfs::shutdown", "shutdown")?;
        // SAFETY: the handle is valid; shutdown on a handle never launched is a no-op.
        let status = unsafe { guestfs_shutdown(self.handle) };
        self.check(status)
    }

    fn list_partitions(&mut self) -> Result<Vec<String>, HandleError> {
        // SAFETY: the handle is valid; the result is a list the caller frees.
        let raw = unsafe { guestfs_list_partitions(self.handle) };
        self.take_string_list(raw)
    }

    fn list_filesystems(&mut self) -> Result<Vec<(String, String)>, HandleError> {
        // SAFETY: the handle is valid; the result is a list the caller frees.
        let raw = unsafe { guestfs_list_filesystems(self.handle) };
        self.take_string_list(raw).map(pairs)
    }

    fn vfs_type(&mut self, mountable: &str) -> Result<String, HandleError> {
        let mountable = c_string(mountable)?;
        // SAFETY: the handle is valid; the result is a string the caller frees.
        let raw = unsafe { guestfs_vfs_type(self.handle, mountable.as_ptr()) };
        self.take_string(raw)
    }

    fn vfs_label(&mut self, mountable: &str) -> Result<String, HandleError> {
        let mountable = c_string(mountable)?;
        // SAFETY: the handle is valid; the result is a string the caller frees.
        let raw = unsafe { guestfs_vfs_label(self.handle, mountable.as_ptr()) };
        self.take_string(raw)
    }

    fn vfs_uuid(&mut self, mountable: &str) -> Result<String, HandleError> {
        let mountable = c_string(mountable)?;
        // SAFETY: the handle is valid; the result is a string the caller frees.
        let raw = unsafe { guestfs_vfs_uuid(self.handle, mountable.as_ptr()) };
        self.take_string(raw)
    }

    fn inspect_os(&mut self) -> Result<Vec<String>, HandleError> {
        // SAFETY: the handle is valid; the result is a list the caller frees.
        let raw = unsafe { guestfs_inspect_os(self.handle) };
        self.take_string_list(raw)
    }

    fn inspect_get_mountpoints(
        &mut self,
        root: &str,
    ) -> Result<Vec<(String, String)>, HandleError> {
        let root = c_string(root)?;
        // SAFETY: the handle is valid; the result is a list the caller frees.
        let raw = unsafe { guestfs_inspect_get_mountpoints(self.handle, root.as_ptr()) };
        self.take_string_list(raw).map(pairs)
    }

    fn mount_options(
        &mut self,
        options: &str,
        mountable: &str,
        mountpoint: &str,
    ) -> Result<(), HandleError> {
        injected_failure("guestfs::mount", "mount_options")?;
        let options = c_string(options)?;
        let mountable = c_string(mountable)?;
        let mountpoint = c_string(mountpoint)?;
        // SAFETY: the handle is valid and every string outlives the call.
        let status = unsafe {
            guestfs_mount_options(
                self.handle,
                options.as_ptr(),
                mountable.as_ptr(),
                mountpoint.as_ptr(),
            )
        };
        self.check(status)
    }

    fn remount(&mut self, mountpoint: &str, rw: bool) -> Result<(), HandleError> {
        let mountpoint = c_string(mountpoint)?;
        let optargs = RemountArgv {
            bitmask: REMOUNT_RW_BITMASK,
            rw: c_int::from(rw),
        };
        // SAFETY: the handle is valid, the string outlives the call, and the optargs struct
        // matches guestfs.h with only the bit of the field set here raised.
        let status = unsafe { guestfs_remount_argv(self.handle, mountpoint.as_ptr(), &optargs) };
        self.check(status)
    }

    fn realpath(&mut self, path: &str) -> Result<String, HandleError> {
        let path = c_string(path)?;
        // SAFETY: the handle is valid; the result is a string the caller frees.
        let raw = unsafe { guestfs_realpath(self.handle, path.as_ptr()) };
        self.take_string(raw)
    }

    fn statns(&mut self, path: &str) -> Result<Stat, HandleError> {
        let path = c_string(path)?;
        // SAFETY: the handle is valid; the result is a struct the caller frees.
        let raw = unsafe { guestfs_statns(self.handle, path.as_ptr()) };
        self.take_stat(raw)
    }

    fn lstatns(&mut self, path: &str) -> Result<Stat, HandleError> {
        let path = c_string(path)?;
        // SAFETY: the handle is valid; the result is a struct the caller frees.
        let raw = unsafe { guestfs_lstatns(self.handle, path.as_ptr()) };
        self.take_stat(raw)
    }

    fn readlink(&mut self, path: &str) -> Result<String, HandleError> {
        let path = c_string(path)?;
        // SAFETY: the handle is valid; the result is a string the caller frees.
        let raw = unsafe { guestfs_readlink(self.handle, path.as_ptr()) };
        self.take_string(raw)
    }

    fn pread(&mut self, path: &str, count: u32, offset: u64) -> Result<Vec<u8>, HandleError> {
        let path = c_string(path)?;
        let count = c_int::try_from(count).unwrap_or(c_int::MAX);
        let offset = i64::try_from(offset).unwrap_or(i64::MAX);
        let mut size = 0usize;
        // SAFETY: the handle is valid and `size` is a valid out pointer; the result is a
        // buffer of `size` bytes the caller frees.
        let raw = unsafe { guestfs_pread(self.handle, path.as_ptr(), count, offset, &mut size) };
        if raw.is_null() {
            return Err(self.last_error());
        }
        // SAFETY: libguestfs returned a buffer of exactly `size` bytes.
        let data = unsafe { std::slice::from_raw_parts(raw.cast::<u8>(), size) }.to_vec();
        // SAFETY: the caller owns the buffer and frees it exactly once, here.
        unsafe { libc::free(raw.cast()) };
        Ok(data)
    }

    fn write(&mut self, path: &str, content: &[u8]) -> Result<(), HandleError> {
        injected_failure("guestfs::write", "write")?;
        let path = c_string(path)?;
        // SAFETY: the handle is valid; `content` is valid for `content.len()` bytes.
        let status = unsafe {
            guestfs_write(
                self.handle,
                path.as_ptr(),
                content.as_ptr().cast(),
                content.len(),
            )
        };
        self.check(status)
    }

    fn write_append(&mut self, path: &str, content: &[u8]) -> Result<(), HandleError> {
        injected_failure("guestfs::write", "write_append")?;
        let path = c_string(path)?;
        // SAFETY: the handle is valid; `content` is valid for `content.len()` bytes.
        let status = unsafe {
            guestfs_write_append(
                self.handle,
                path.as_ptr(),
                content.as_ptr().cast(),
                content.len(),
            )
        };
        self.check(status)
    }

    fn mkdir_mode(&mut self, path: &str, mode: u32) -> Result<(), HandleError> {
        let path = c_string(path)?;
        // SAFETY: the handle is valid; the mode is at most 0o7777, so it fits a c_int.
        let status =
            unsafe { guestfs_mkdir_mode(self.handle, path.as_ptr(), (mode & 0o7777) as c_int) };
        self.check(status)
    }

    fn chmod(&mut self, mode: u32, path: &str) -> Result<(), HandleError> {
        let path = c_string(path)?;
        // SAFETY: the handle is valid; the mode is at most 0o7777, so it fits a c_int.
        let status = unsafe { guestfs_chmod(self.handle, (mode & 0o7777) as c_int, path.as_ptr()) };
        self.check(status)
    }

    fn chown(&mut self, uid: Option<u32>, gid: Option<u32>, path: &str) -> Result<(), HandleError> {
        let path = c_string(path)?;
        // chown(2) takes -1 to leave an id unchanged; an id above i32::MAX keeps its bits,
        // as the C conversion from int to uid_t would.
        let uid = uid.map_or(-1, |id| id as c_int);
        let gid = gid.map_or(-1, |id| id as c_int);
        // SAFETY: the handle is valid.
        let status = unsafe { guestfs_chown(self.handle, uid, gid, path.as_ptr()) };
        self.check(status)
    }

    fn ln_s(&mut self, target: &str, linkname: &str) -> Result<(), HandleError> {
        let target = c_string(target)?;
        let linkname = c_string(linkname)?;
        // SAFETY: the handle is valid and both strings outlive the call.
        let status = unsafe { guestfs_ln_s(self.handle, target.as_ptr(), linkname.as_ptr()) };
        self.check(status)
    }

    fn rm(&mut self, path: &str) -> Result<(), HandleError> {
        let path = c_string(path)?;
        // SAFETY: the handle is valid.
        let status = unsafe { guestfs_rm(self.handle, path.as_ptr()) };
        self.check(status)
    }

    fn rename(&mut self, old_path: &str, new_path: &str) -> Result<(), HandleError> {
        let old_path = c_string(old_path)?;
        let new_path = c_string(new_path)?;
        // SAFETY: the handle is valid and both strings outlive the call.
        let status = unsafe { guestfs_rename(self.handle, old_path.as_ptr(), new_path.as_ptr()) };
        self.check(status)
    }

    fn getxattrs(&mut self, path: &str) -> Result<Vec<(String, Vec<u8>)>, HandleError> {
        let path = c_string(path)?;
        // SAFETY: the handle is valid; the result is a list the caller frees.
        let raw = unsafe { guestfs_getxattrs(self.handle, path.as_ptr()) };
        if raw.is_null() {
            return Err(self.last_error());
        }
        // SAFETY: a valid list that libguestfs allocated, with `len` entries in `val`.
        let list = unsafe { &*raw };
        let mut xattrs = Vec::with_capacity(list.len as usize);
        for index in 0..list.len as usize {
            // SAFETY: `index` is below `len`.
            let entry = unsafe { &*list.val.add(index) };
            // SAFETY: the name is a NUL-terminated string.
            let name = unsafe { CStr::from_ptr(entry.attrname) }
                .to_string_lossy()
                .into_owned();
            let value = if entry.attrval_len == 0 {
                Vec::new()
            } else {
                // SAFETY: the value holds `attrval_len` bytes.
                unsafe {
                    std::slice::from_raw_parts(
                        entry.attrval.cast::<u8>(),
                        entry.attrval_len as usize,
                    )
                }
                .to_vec()
            };
            xattrs.push((name, value));
        }
        // SAFETY: freed exactly once with the matching libguestfs function.
        unsafe { guestfs_free_xattr_list(raw) };
        Ok(xattrs)
    }

    fn setxattr(&mut self, name: &str, value: &[u8], path: &str) -> Result<(), HandleError> {
        let name = c_string(name)?;
        let path = c_string(path)?;
        let length = c_int::try_from(value.len()).map_err(|_| HandleError {
            message: format!("the value of {name:?} is too large"),
            errno: libc::E2BIG,
        })?;
        // SAFETY: the handle is valid; `value` is valid for `length` bytes.
        let status = unsafe {
            guestfs_setxattr(
                self.handle,
                name.as_ptr(),
                value.as_ptr().cast(),
                length,
                path.as_ptr(),
            )
        };
        self.check(status)
    }

    fn statvfs(&mut self, path: &str) -> Result<StatVfs, HandleError> {
        let path = c_string(path)?;
        // SAFETY: the handle is valid; the result is a struct the caller frees.
        let raw = unsafe { guestfs_statvfs(self.handle, path.as_ptr()) };
        if raw.is_null() {
            return Err(self.last_error());
        }
        // SAFETY: a valid struct that libguestfs allocated for the caller.
        let stat = unsafe { &*raw };
        let result = StatVfs {
            block_size: stat.bsize.max(0) as u64,
            fragment_size: stat.frsize.max(0) as u64,
            blocks_available: stat.bavail.max(0) as u64,
        };
        // SAFETY: freed exactly once with the matching libguestfs function.
        unsafe { guestfs_free_statvfs(raw) };
        Ok(result)
    }

    fn sync(&mut self) -> Result<(), HandleError> {
        // SAFETY: the handle is valid.
        let status = unsafe { guestfs_sync(self.handle) };
        self.check(status)
    }
}

/// Forwards libguestfs log events to `tracing` at debug level.
///
/// Trace events carry the arguments and results of every call, which include file contents
/// (the password hash goes through `write`, `/etc/shadow` comes back from `pread`), so only
/// the call name of a trace event is forwarded. Registering this callback also stops
/// libguestfs from printing these events to stderr itself, as it does when `LIBGUESTFS_DEBUG`
/// or `LIBGUESTFS_TRACE` is set and no callback is registered.
extern "C" fn forward_event(
    _g: *mut GuestfsH,
    _opaque: *mut c_void,
    event: u64,
    _event_handle: c_int,
    _flags: c_int,
    buf: *const c_char,
    buf_len: usize,
    _array: *const u64,
    _array_len: usize,
) {
    // A panic must not unwind into C; a lost log line is the only cost of ignoring it.
    let _ = std::panic::catch_unwind(|| {
        let bytes = if buf.is_null() || buf_len == 0 {
            &[][..]
        } else {
            // SAFETY: libguestfs passes a buffer of `buf_len` bytes that stays valid for the
            // duration of the callback.
            unsafe { std::slice::from_raw_parts(buf.cast::<u8>(), buf_len) }
        };
        let text = String::from_utf8_lossy(bytes);
        let text = text.trim_end();
        match event {
            EVENT_TRACE => {
                let call = trace_call_name(text);
                tracing::debug!(target: "libguestfs", call, "trace");
            }
            EVENT_APPLIANCE => tracing::debug!(target: "libguestfs", "appliance: {text}"),
            EVENT_WARNING => tracing::debug!(target: "libguestfs", "warning: {text}"),
            _ => tracing::debug!(target: "libguestfs", "{text}"),
        }
    });
}

/// Returns the call name of a trace message such as `write "/etc/shadow" "..."` or
/// `pread = "..."`, dropping its arguments and result.
pub(crate) fn trace_call_name(message: &str) -> &str {
    message
        .split(|c: char| c.is_whitespace() || c == '=')
        .find(|word| !word.is_empty())
        .unwrap_or("")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trace_name_drops_write_arguments() {
        assert_eq!(
            trace_call_name(r#"write "/etc/shadow" "root:$6$salt$hash:19000::::::""#),
            "write"
        );
    }

    #[test]
    fn trace_name_drops_return_value() {
        assert_eq!(trace_call_name("pread = \"root:$6$x\""), "pread");
        assert_eq!(trace_call_name("pread= \"root:$6$x\""), "pread");
    }

    #[test]
    fn trace_name_of_empty_message_is_empty() {
        assert_eq!(trace_call_name("   "), "");
    }

    #[test]
    fn hash_pairs_drop_odd_tail() {
        let flat = vec!["/".to_owned(), "/dev/sda2".to_owned(), "/boot".to_owned()];
        assert_eq!(pairs(flat), vec![("/".to_owned(), "/dev/sda2".to_owned())]);
    }
}
