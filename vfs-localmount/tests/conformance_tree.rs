//! The conformance suite on `RootedTree` over a temporary host directory.

use std::io::Read;

use vfs_core::{GuestFs, GuestPath, Metadata, MountInfo, Result};
use vfs_localmount::RootedTree;

/// A tree on a temporary directory it owns, with the `/etc/passwd` and `/etc/group` the
/// suite needs.
struct TempGuest {
    tree: RootedTree,
    _dir: tempfile::TempDir,
}

fn open_temp_guest() -> Box<dyn GuestFs> {
    let dir = tempfile::tempdir().expect("temporary directory");
    std::fs::create_dir(dir.path().join("etc")).unwrap();
    std::fs::write(
        dir.path().join("etc/passwd"),
        "root:x:0:0:root:/root:/bin/sh\n",
    )
    .unwrap();
    std::fs::write(dir.path().join("etc/group"), "root:x:0:\n").unwrap();
    let tree = RootedTree::open(dir.path()).expect("open the tree");
    Box::new(TempGuest { tree, _dir: dir })
}

testkit::conformance_tests!(open_temp_guest());

impl GuestFs for TempGuest {
    fn backend_name(&self) -> &'static str {
        self.tree.backend_name()
    }
    fn mounts(&self) -> Vec<MountInfo> {
        self.tree.mounts()
    }
    fn fs_type(&mut self, path: &GuestPath) -> Result<String> {
        self.tree.fs_type(path)
    }
    fn exists(&mut self, path: &GuestPath) -> Result<bool> {
        self.tree.exists(path)
    }
    fn metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        self.tree.metadata(path)
    }
    fn symlink_metadata(&mut self, path: &GuestPath) -> Result<Metadata> {
        self.tree.symlink_metadata(path)
    }
    fn read_file(&mut self, path: &GuestPath) -> Result<Vec<u8>> {
        self.tree.read_file(path)
    }
    fn create_dir_all(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        self.tree.create_dir_all(path, mode)
    }
    fn write_file(&mut self, path: &GuestPath, contents: &mut dyn Read, mode: u32) -> Result<u64> {
        self.tree.write_file(path, contents, mode)
    }
    fn append_file(&mut self, path: &GuestPath, data: &[u8], mode: u32) -> Result<()> {
        self.tree.append_file(path, data, mode)
    }
    fn set_mode(&mut self, path: &GuestPath, mode: u32) -> Result<()> {
        self.tree.set_mode(path, mode)
    }
    fn set_owner_ids(
        &mut self,
        path: &GuestPath,
        uid: Option<u32>,
        gid: Option<u32>,
    ) -> Result<()> {
        self.tree.set_owner_ids(path, uid, gid)
    }
    fn symlink(&mut self, target: &str, link: &GuestPath) -> Result<()> {
        self.tree.symlink(target, link)
    }
    fn remove_file(&mut self, path: &GuestPath) -> Result<()> {
        self.tree.remove_file(path)
    }
    fn xattrs(&mut self, path: &GuestPath) -> Result<Vec<(String, Vec<u8>)>> {
        self.tree.xattrs(path)
    }
    fn set_xattr(&mut self, path: &GuestPath, name: &str, value: &[u8]) -> Result<()> {
        self.tree.set_xattr(path, name, value)
    }
    fn free_space(&mut self, path: &GuestPath) -> Result<u64> {
        self.tree.free_space(path)
    }
    fn enable_writes(&mut self) -> Result<()> {
        self.tree.enable_writes()
    }
    fn sync(&mut self) -> Result<()> {
        self.tree.sync()
    }
    fn close(self: Box<Self>) -> Result<()> {
        self.tree.sync_all()
    }
}
