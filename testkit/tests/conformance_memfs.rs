//! The conformance suite run on [`MemFs`], one test per check, and once more through
//! `run_all` and through a [`testkit::SharedMemFs`] handle.

use testkit::conformance;
use testkit::MemFs;
use vfs_core::GuestFs;

testkit::conformance_tests!(Box::new(MemFs::debian_like()));

mod shared {
    use testkit::MemFs;

    testkit::conformance_tests!(Box::new(MemFs::debian_like().into_shared()));
}

#[test]
fn run_all_opens_fresh_filesystem_per_check() {
    let mut opened = 0;

    conformance::run_all(&mut || -> Box<dyn GuestFs> {
        opened += 1;
        Box::new(MemFs::debian_like())
    });

    assert_eq!(opened, conformance::CHECKS.len());
}
