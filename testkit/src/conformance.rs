//! The conformance suite: checks that a [`GuestFs`] backend keeps the rules of the trait.
//!
//! Each check is a public function taking `&mut dyn GuestFs` that panics on the first rule
//! broken. A check needs only a writable root and a guest `/etc/passwd` and `/etc/group`
//! that list `root` as 0. It works in its own directory `/conformance-NAME`, which must not
//! exist yet, so the suite runs on a fresh real image as well as on [`crate::MemFs`].
//!
//! A backend's test file runs every check as its own test with [`crate::conformance_tests!`]:
//!
//! ```
//! testkit::conformance_tests!(Box::new(testkit::MemFs::debian_like()));
//!
//! // A backend that needs root marks every test with an attribute before the expression.
//! mod needs_root {
//! #   fn open_fresh_image() -> Box<dyn vfs_core::GuestFs> {
//! #       Box::new(testkit::MemFs::debian_like())
//! #   }
//!     testkit::conformance_tests!(
//!         #[ignore = "needs root; run by cargo xtask integration"]
//!         open_fresh_image()
//!     );
//! }
//! # fn main() {}
//! ```
//!
//! [`run_all`] runs them in one test instead.

use std::io::{self, Read};

use vfs_core::{FileKind, GuestFs, GuestPath, VfsError};

/// Runs every check, each on a fresh filesystem from `open` that is closed afterwards.
///
/// # Panics
///
/// When a check fails or closing a filesystem fails; the check's name is printed to
/// standard error before it runs.
pub fn run_all(open: &mut dyn FnMut() -> Box<dyn GuestFs>) {
    for (name, check) in CHECKS {
        eprintln!("conformance check {name}");
        run_check(open(), *check);
    }
}

/// Runs one check on `fs` and closes it.
///
/// # Panics
///
/// When the check fails or closing `fs` fails.
pub fn run_check(mut fs: Box<dyn GuestFs>, check: Check) {
    check(fs.as_mut());
    if let Err(error) = fs.close() {
        panic!("closing the filesystem after the check failed: {error}");
    }
}

/// Expands to one `#[test]` per conformance check, each opening a fresh filesystem with
/// the expression `$open` (of type `Box<dyn GuestFs>`) and closing it at the end.
///
/// An `#[ignore = "REASON"]` written before the expression is put on every test. Call the
/// macro inside a module of its own when the check names could clash with other tests.
#[macro_export]
macro_rules! conformance_tests {
    (#[ignore = $reason:literal] $open:expr) => {
        $crate::__with_conformance_checks!(
            ($crate::__conformance_test_fns) [#[ignore = $reason]] ($open)
        );
    };
    ($open:expr) => {
        $crate::__with_conformance_checks!(($crate::__conformance_test_fns) [] ($open));
    };
}

/// Calls the macro named by the first token tree with the remaining tokens, a `;` and the
/// names of every check, so that [`CHECKS`] and [`crate::conformance_tests!`] share one list.
#[doc(hidden)]
#[macro_export]
macro_rules! __with_conformance_checks {
    (($($callback:tt)*) $($args:tt)*) => {
        $($callback)* ! { $($args)* ;
            create_dir_all_sets_mode_and_root_owner,
            create_dir_all_leaves_existing_dirs_untouched,
            create_dir_all_through_file_is_not_a_directory,
            write_new_file_uses_create_mode_and_root,
            write_replace_keeps_mode_owner_xattrs,
            write_one_mebibyte_round_trips,
            write_streams_64_mebibytes,
            write_empty_file_round_trips,
            write_into_missing_dir_is_not_found,
            append_creates_then_appends,
            read_missing_is_not_found,
            read_directory_is_a_directory,
            exists_on_dangling_symlink_is_false,
            absolute_symlink_stays_in_guest,
            dotdot_symlink_stops_at_guest_root,
            write_through_symlinked_dir_lands_in_target,
            write_through_file_symlink_keeps_link,
            symlink_loop_is_symlink_loop,
            symlink_metadata_reports_symlink,
            remove_file_removes_link_not_target,
            set_owner_resolves_root_by_name,
            set_owner_unknown_user_fails,
            set_mode_masks_to_permission_bits,
            metadata_of_file_reports_kind_and_size,
            xattrs_are_sorted_by_name,
            free_space_is_positive,
            fs_type_is_named,
            enable_writes_on_writable_fs_succeeds,
        }
    };
}

/// Expands to one test function per check name.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fns {
    ($attrs:tt ($open:expr) ; $($check:ident),* $(,)?) => {
        $( $crate::__conformance_test_fn!($attrs ($open) $check); )*
    };
}

/// Expands to the test function of one check.
#[doc(hidden)]
#[macro_export]
macro_rules! __conformance_test_fn {
    ([$(#[$attr:meta])*] ($open:expr) $check:ident) => {
        #[test]
        $(#[$attr])*
        fn $check() {
            let fs: ::std::boxed::Box<dyn $crate::__vfs_core::GuestFs> = $open;
            $crate::conformance::run_check(fs, $crate::conformance::$check);
        }
    };
}

/// Builds the array behind [`CHECKS`] from the shared list of names.
macro_rules! checks_table_from_names {
    (; $($check:ident),* $(,)?) => {
        [$((stringify!($check), $check as Check)),*]
    };
}

/// A conformance check: it panics when `fs` breaks a rule of the trait.
pub type Check = fn(&mut dyn GuestFs);

/// Every check with its name, in the order [`run_all`] runs them.
pub const CHECKS: &[(&str, Check)] = &crate::__with_conformance_checks!((checks_table_from_names));

/// The size of the streamed write: the largest file [`GuestFs::read_file`] reads back.
const STREAMED_BYTES: u64 = vfs_core::MAX_READ_BYTES;

// ----- create_dir_all -----

/// Checks that new directories get the mode given, without a umask, and belong to root.
pub fn create_dir_all_sets_mode_and_root_owner(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "create-dir-mode");
    let nested = child(&child(&dir, "a"), "b");

    // 0o770 has group write, which the common umask 022 would clear.
    fs.create_dir_all(&nested, 0o770).expect("create_dir_all");

    for created in [child(&dir, "a"), nested] {
        let meta = fs.metadata(&created).expect("metadata of a new directory");
        assert_eq!(meta.kind, FileKind::Directory, "{created}");
        assert_eq!(meta.mode, 0o770, "{created}");
        assert_eq!(meta.uid, 0, "{created}");
        assert_eq!(meta.gid, 0, "{created}");
    }
}

/// Checks that an existing directory on the way keeps its mode and owner.
pub fn create_dir_all_leaves_existing_dirs_untouched(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "create-dir-existing");
    let existing = child(&dir, "keep");
    fs.create_dir_all(&existing, 0o755).expect("create_dir_all");
    fs.set_mode(&existing, 0o711).expect("set_mode");
    fs.set_owner_ids(&existing, Some(1234), Some(5678))
        .expect("set_owner_ids");

    fs.create_dir_all(&child(&existing, "new"), 0o700)
        .expect("create_dir_all below an existing directory");

    let meta = fs.metadata(&existing).expect("metadata");
    assert_eq!(meta.mode, 0o711);
    assert_eq!(meta.uid, 1234);
    assert_eq!(meta.gid, 5678);
    let new = fs.metadata(&child(&existing, "new")).expect("metadata");
    assert_eq!(new.mode, 0o700);
}

/// Checks that a regular file where a directory should be gives `NotADirectory`.
pub fn create_dir_all_through_file_is_not_a_directory(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "create-dir-file");
    let file = child(&dir, "file");
    write(fs, &file, b"in the way", 0o644);

    let result = fs.create_dir_all(&child(&file, "sub"), 0o755);

    assert!(
        matches!(result, Err(VfsError::NotADirectory { .. })),
        "{result:?}"
    );
}

// ----- write_file and append_file -----

/// Checks that a new file gets the contents, `create_mode` without a umask, and root as
/// owner.
pub fn write_new_file_uses_create_mode_and_root(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "write-new");
    let file = child(&dir, "new");

    let written = fs
        .write_file(&file, &mut &b"hello\n"[..], 0o664)
        .expect("write_file");

    assert_eq!(written, 6);
    let meta = fs.metadata(&file).expect("metadata");
    assert_eq!(meta.kind, FileKind::File);
    assert_eq!(meta.mode, 0o664);
    assert_eq!(meta.uid, 0);
    assert_eq!(meta.gid, 0);
    assert_eq!(fs.read_file(&file).expect("read_file"), b"hello\n");
}

/// Checks that replacing a file keeps its mode, owner and extended attributes and ignores
/// `create_mode`.
pub fn write_replace_keeps_mode_owner_xattrs(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "write-replace");
    let file = child(&dir, "file");
    write(fs, &file, b"old", 0o644);
    fs.set_mode(&file, 0o600).expect("set_mode");
    fs.set_owner_ids(&file, Some(1234), Some(5678))
        .expect("set_owner_ids");
    fs.set_xattr(&file, "user.test", b"kept")
        .expect("set_xattr");

    write(fs, &file, b"new contents", 0o777);

    let meta = fs.metadata(&file).expect("metadata");
    assert_eq!(meta.mode, 0o600);
    assert_eq!(meta.uid, 1234);
    assert_eq!(meta.gid, 5678);
    assert_eq!(xattr(fs, &file, "user.test"), Some(b"kept".to_vec()));
    assert_eq!(fs.read_file(&file).expect("read_file"), b"new contents");
}

/// Checks that a 1 MiB file of varied bytes reads back unchanged.
pub fn write_one_mebibyte_round_trips(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "write-1mib");
    let file = child(&dir, "big");
    let contents: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();

    write(fs, &file, &contents, 0o644);

    assert_eq!(fs.read_file(&file).expect("read_file"), contents);
}

/// Checks that a 64 MiB write from a reader that generates its bytes reads back with the
/// same size and checksum, so the backend streams a file as large as any it reads back.
pub fn write_streams_64_mebibytes(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "write-64mib");
    let file = child(&dir, "stream");
    let expected = checksum(&mut PatternReader::new(STREAMED_BYTES));

    let written = fs
        .write_file(&file, &mut PatternReader::new(STREAMED_BYTES), 0o644)
        .expect("write_file");

    assert_eq!(written, STREAMED_BYTES);
    assert_eq!(fs.metadata(&file).expect("metadata").size, STREAMED_BYTES);
    let read_back = fs.read_file(&file).expect("read_file");
    assert_eq!(read_back.len() as u64, STREAMED_BYTES);
    assert_eq!(checksum(&mut &read_back[..]), expected);
}

/// Checks that an empty reader gives an empty file.
pub fn write_empty_file_round_trips(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "write-empty");
    let file = child(&dir, "empty");

    let written = fs
        .write_file(&file, &mut io::empty(), 0o644)
        .expect("write_file");

    assert_eq!(written, 0);
    assert_eq!(fs.metadata(&file).expect("metadata").size, 0);
    assert!(fs.read_file(&file).expect("read_file").is_empty());
}

/// Checks that writing into a directory that does not exist gives `NotFound` and creates
/// nothing.
pub fn write_into_missing_dir_is_not_found(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "write-missing-dir");
    let missing = child(&dir, "missing");

    let result = fs.write_file(&child(&missing, "file"), &mut &b"x"[..], 0o644);

    assert!(
        matches!(result, Err(VfsError::NotFound { .. })),
        "{result:?}"
    );
    assert!(!fs.exists(&missing).expect("exists"));
}

/// Checks that appending creates a missing file with `create_mode`, then adds to its end.
pub fn append_creates_then_appends(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "append");
    let file = child(&dir, "log");

    fs.append_file(&file, b"first\n", 0o600)
        .expect("append_file creating");
    fs.append_file(&file, b"second\n", 0o644)
        .expect("append_file appending");

    assert_eq!(fs.read_file(&file).expect("read_file"), b"first\nsecond\n");
    let meta = fs.metadata(&file).expect("metadata");
    assert_eq!(meta.mode, 0o600);
    assert_eq!(meta.uid, 0);
}

// ----- reads and queries -----

/// Checks that reading a missing file gives `NotFound`.
pub fn read_missing_is_not_found(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "read-missing");

    let result = fs.read_file(&child(&dir, "missing"));

    assert!(
        matches!(result, Err(VfsError::NotFound { .. })),
        "{result:?}"
    );
}

/// Checks that reading a directory gives `IsADirectory`.
pub fn read_directory_is_a_directory(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "read-dir");

    let result = fs.read_file(&dir);

    assert!(
        matches!(result, Err(VfsError::IsADirectory { .. })),
        "{result:?}"
    );
}

/// Checks that `exists` follows symlinks, so a dangling one does not exist.
pub fn exists_on_dangling_symlink_is_false(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "exists-dangling");
    let link = child(&dir, "dangling");
    fs.symlink("missing-target", &link).expect("symlink");

    let exists = fs.exists(&link).expect("exists");

    assert!(!exists);
    let meta = fs.symlink_metadata(&link).expect("symlink_metadata");
    assert_eq!(meta.kind, FileKind::Symlink);
}

/// Checks that metadata follows symlinks and reports a file's kind and size.
pub fn metadata_of_file_reports_kind_and_size(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "metadata");
    let file = child(&dir, "file");
    write(fs, &file, b"12345", 0o640);

    let meta = fs.metadata(&file).expect("metadata");

    assert_eq!(meta.kind, FileKind::File);
    assert_eq!(meta.size, 5);
    assert_eq!(meta.mode, 0o640);
    assert_eq!(
        fs.metadata(&dir).expect("metadata").kind,
        FileKind::Directory
    );
}

/// Checks that extended attributes come back sorted by name, with their values.
pub fn xattrs_are_sorted_by_name(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "xattrs");
    let file = child(&dir, "file");
    write(fs, &file, b"", 0o644);
    fs.set_xattr(&file, "user.conformance.b", b"2")
        .expect("set_xattr");
    fs.set_xattr(&file, "user.conformance.a", b"1")
        .expect("set_xattr");

    let listed = fs.xattrs(&file).expect("xattrs");

    // Other namespaces, such as `security.selinux`, may be listed too.
    let ours: Vec<(String, Vec<u8>)> = listed
        .into_iter()
        .filter(|(name, _)| name.starts_with("user.conformance."))
        .collect();
    assert_eq!(
        ours,
        [
            ("user.conformance.a".to_owned(), b"1".to_vec()),
            ("user.conformance.b".to_owned(), b"2".to_vec()),
        ]
    );
}

/// Checks that the filesystem reports some free space.
pub fn free_space_is_positive(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "free-space");

    let free = fs.free_space(&dir).expect("free_space");

    assert!(free > 0);
}

/// Checks that the filesystem type and the mount list are filled in.
pub fn fs_type_is_named(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "fs-type");

    let fs_type = fs.fs_type(&dir).expect("fs_type");

    assert!(!fs_type.is_empty());
    let mounts = fs.mounts();
    assert!(!mounts.is_empty());
    assert!(mounts[0].mount_point.is_root(), "{mounts:?}");
}

// ----- enable_writes -----

/// Checks that `enable_writes` on a filesystem opened for writing succeeds, and that files
/// written before and after it are there.
pub fn enable_writes_on_writable_fs_succeeds(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "enable-writes");
    let before = child(&dir, "before");
    write(fs, &before, b"before\n", 0o644);

    fs.enable_writes()
        .expect("enable_writes on a writable filesystem");

    let after = child(&dir, "after");
    write(fs, &after, b"after\n", 0o644);
    assert_eq!(
        fs.read_file(&before).expect("read_file before"),
        b"before\n"
    );
    assert_eq!(fs.read_file(&after).expect("read_file after"), b"after\n");
}

// ----- symlinks -----

/// Checks that an absolute symlink target starts at the guest root, not the host's.
pub fn absolute_symlink_stays_in_guest(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "absolute-link");
    let target = child(&dir, "target");
    fs.create_dir_all(&target, 0o755).expect("create_dir_all");
    let link = child(&dir, "link");
    fs.symlink(target.as_str(), &link).expect("symlink");

    write(fs, &child(&link, "file"), b"through", 0o644);

    let landed = fs.read_file(&child(&target, "file")).expect("read_file");
    assert_eq!(landed, b"through");
}

/// Checks that a chain of `..` in a symlink target stops at the guest root.
pub fn dotdot_symlink_stops_at_guest_root(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "dotdot-link");
    let target = child(&dir, "t");
    fs.create_dir_all(&target, 0o755).expect("create_dir_all");
    let deep = child(&child(&dir, "a"), "b");
    fs.create_dir_all(&deep, 0o755).expect("create_dir_all");
    let link = child(&deep, "link");
    // Eight `..` from three levels deep: five of them would climb above the guest root.
    let climbing = format!("{}{}", "../".repeat(8), &target.as_str()[1..]);
    fs.symlink(&climbing, &link).expect("symlink");

    write(fs, &child(&link, "file"), b"through", 0o644);

    let landed = fs.read_file(&child(&target, "file")).expect("read_file");
    assert_eq!(landed, b"through");
}

/// Checks that a write through a relative symlink to a directory lands in the target, and
/// the link stays a link.
pub fn write_through_symlinked_dir_lands_in_target(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "symlinked-dir");
    fs.create_dir_all(&child(&dir, "real"), 0o755)
        .expect("create_dir_all");
    let alias = child(&dir, "alias");
    fs.symlink("real", &alias).expect("symlink");

    write(fs, &child(&alias, "file"), b"through", 0o644);

    let landed = fs
        .read_file(&child(&child(&dir, "real"), "file"))
        .expect("read_file");
    assert_eq!(landed, b"through");
    let meta = fs.symlink_metadata(&alias).expect("symlink_metadata");
    assert_eq!(meta.kind, FileKind::Symlink);
}

/// Checks that replacing a file through a symlink changes the target and keeps the link,
/// so an atomic replace must not rename over the link.
pub fn write_through_file_symlink_keeps_link(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "symlinked-file");
    let real = child(&dir, "real");
    write(fs, &real, b"old", 0o644);
    let link = child(&dir, "link");
    fs.symlink("real", &link).expect("symlink");

    write(fs, &link, b"new", 0o644);

    assert_eq!(fs.read_file(&real).expect("read_file"), b"new");
    let meta = fs.symlink_metadata(&link).expect("symlink_metadata");
    assert_eq!(meta.kind, FileKind::Symlink);
}

/// Checks that two symlinks pointing at each other give `SymlinkLoop` for reads and writes.
pub fn symlink_loop_is_symlink_loop(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "symlink-loop");
    let a = child(&dir, "a");
    fs.symlink("b", &a).expect("symlink");
    fs.symlink("a", &child(&dir, "b")).expect("symlink");

    let read = fs.read_file(&a);
    let written = fs.write_file(&a, &mut &b"x"[..], 0o644);

    assert!(
        matches!(read, Err(VfsError::SymlinkLoop { .. })),
        "{read:?}"
    );
    assert!(
        matches!(written, Err(VfsError::SymlinkLoop { .. })),
        "{written:?}"
    );
}

/// Checks that `symlink_metadata` describes the link and `metadata` its target.
pub fn symlink_metadata_reports_symlink(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "symlink-metadata");
    write(fs, &child(&dir, "file"), b"12345", 0o644);
    let link = child(&dir, "link");
    fs.symlink("file", &link).expect("symlink");

    let of_link = fs.symlink_metadata(&link).expect("symlink_metadata");
    let of_target = fs.metadata(&link).expect("metadata");

    assert_eq!(of_link.kind, FileKind::Symlink);
    assert_eq!(of_target.kind, FileKind::File);
    assert_eq!(of_target.size, 5);
}

/// Checks that removing a symlink removes the link and leaves its target.
pub fn remove_file_removes_link_not_target(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "remove-link");
    let file = child(&dir, "file");
    write(fs, &file, b"stays", 0o644);
    let link = child(&dir, "link");
    fs.symlink("file", &link).expect("symlink");

    fs.remove_file(&link).expect("remove_file");

    let link_result = fs.symlink_metadata(&link);
    assert!(
        matches!(link_result, Err(VfsError::NotFound { .. })),
        "{link_result:?}"
    );
    assert_eq!(fs.read_file(&file).expect("read_file"), b"stays");
}

// ----- ownership and modes -----

/// Checks that `set_owner` resolves names in the guest's `/etc/passwd` and `/etc/group`.
pub fn set_owner_resolves_root_by_name(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "set-owner-root");
    let file = child(&dir, "file");
    write(fs, &file, b"", 0o644);
    fs.set_owner_ids(&file, Some(1234), Some(5678))
        .expect("set_owner_ids");

    fs.set_owner(&file, Some("root"), Some("root"))
        .expect("set_owner");

    let meta = fs.metadata(&file).expect("metadata");
    assert_eq!(meta.uid, 0);
    assert_eq!(meta.gid, 0);
}

/// Checks that a user missing from the guest's `/etc/passwd` gives `UnknownUser` and
/// changes nothing.
pub fn set_owner_unknown_user_fails(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "set-owner-unknown");
    let file = child(&dir, "file");
    write(fs, &file, b"", 0o644);

    let result = fs.set_owner(&file, Some("conformance-no-such-user"), None);

    assert!(
        matches!(result, Err(VfsError::UnknownUser { .. })),
        "{result:?}"
    );
    assert_eq!(fs.metadata(&file).expect("metadata").uid, 0);
}

/// Checks that `set_mode` keeps setuid and drops the file-type bits above `0o7777`.
pub fn set_mode_masks_to_permission_bits(fs: &mut dyn GuestFs) {
    let dir = fresh_dir(fs, "set-mode");
    let file = child(&dir, "file");
    write(fs, &file, b"", 0o644);

    fs.set_mode(&file, 0o4755).expect("set_mode with setuid");
    let with_setuid = fs.metadata(&file).expect("metadata").mode;
    // 0o100000 is the file-type bit of a regular file (`S_IFREG`).
    fs.set_mode(&file, 0o100_640)
        .expect("set_mode with a file-type bit");
    let masked = fs.metadata(&file).expect("metadata").mode;

    assert_eq!(with_setuid, 0o4755);
    assert_eq!(masked, 0o640);
}

// ----- helpers -----

/// Creates the check's own directory `/conformance-NAME`, which must not exist yet.
fn fresh_dir(fs: &mut dyn GuestFs, name: &str) -> GuestPath {
    let dir = GuestPath::new(&format!("/conformance-{name}")).expect("valid check directory");
    let exists = fs.exists(&dir).expect("exists on the check directory");
    assert!(
        !exists,
        "{dir} already exists: run the conformance suite on a fresh filesystem"
    );
    fs.create_dir_all(&dir, 0o755)
        .expect("create_dir_all of the check directory");
    dir
}

fn child(dir: &GuestPath, name: &str) -> GuestPath {
    dir.join(name).expect("valid name")
}

fn write(fs: &mut dyn GuestFs, path: &GuestPath, contents: &[u8], create_mode: u32) {
    let written = fs
        .write_file(path, &mut &contents[..], create_mode)
        .unwrap_or_else(|error| panic!("write_file {path}: {error}"));
    assert_eq!(written, contents.len() as u64, "bytes written to {path}");
}

fn xattr(fs: &mut dyn GuestFs, path: &GuestPath, name: &str) -> Option<Vec<u8>> {
    fs.xattrs(path)
        .expect("xattrs")
        .into_iter()
        .find(|(found, _)| found == name)
        .map(|(_, value)| value)
}

/// A reader of `len` pseudo-random bytes, the same sequence every time, generated as it
/// is read so that the whole stream is never in memory.
struct PatternReader {
    position: u64,
    len: u64,
}

impl PatternReader {
    fn new(len: u64) -> Self {
        Self { position: 0, len }
    }
}

impl Read for PatternReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.len - self.position;
        let n = buf.len().min(usize::try_from(left).unwrap_or(usize::MAX));
        let mut filled = 0;
        while filled < n {
            // Byte `i` of the stream is byte `i % 8` of the word for counter `i / 8`.
            let word = splitmix64(self.position / 8).to_le_bytes();
            let offset = (self.position % 8) as usize;
            let count = (word.len() - offset).min(n - filled);
            buf[filled..filled + count].copy_from_slice(&word[offset..offset + count]);
            filled += count;
            self.position += count as u64;
        }
        Ok(n)
    }
}

/// The SplitMix64 mixing function, a cheap way to get varied bytes from a counter.
fn splitmix64(counter: u64) -> u64 {
    let mut z = counter.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hashes everything `reader` yields with FNV-1a over 8-byte little-endian words (the
/// last one zero-padded), which is quicker than per byte in unoptimised test builds.
fn checksum(reader: &mut dyn Read) -> u64 {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0100_0000_01b3;

    let mut hash = OFFSET_BASIS;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // Filling the whole buffer keeps every word at a stream offset that is a multiple
        // of 8, however the reader splits its output.
        let filled = fill(reader, &mut buf);
        for chunk in buf[..filled].chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            hash = (hash ^ u64::from_le_bytes(word)).wrapping_mul(PRIME);
        }
        if filled < buf.len() {
            return hash;
        }
    }
}

/// Reads until `buf` is full or the reader ends, and returns the bytes read.
fn fill(reader: &mut dyn Read, buf: &mut [u8]) -> usize {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => panic!("reading the pattern failed: {error}"),
        }
    }
    filled
}
