//! The conformance suite through `LocalMount` on real images: a whole-disk ext4 raw image,
//! partition 2 of a GPT raw image, and the same GPT disk as qcow2. Every check gets a fresh
//! copy, and closing it checks that nothing stays attached.

mod common;

use common::{CheckedFs, Layout, Scratch};
use vfs_core::image::{DiskFormat, PartitionSelector};
use vfs_core::GuestFs;

fn open_checked(
    layout: Layout,
    format: DiskFormat,
    partition: PartitionSelector,
) -> Box<dyn GuestFs> {
    let scratch = Scratch::new(layout, format);
    let fs = vfs_localmount::open(&scratch.options(partition)).expect("open the image");
    Box::new(CheckedFs::new(Box::new(fs), scratch))
}

mod whole_disk_raw {
    use super::*;

    testkit::conformance_tests!(
        #[ignore = "needs root and loop devices; run by cargo xtask integration"]
        open_checked(Layout::WholeDisk, DiskFormat::Raw, PartitionSelector::None)
    );
}

mod gpt_raw_partition_2 {
    use super::*;

    testkit::conformance_tests!(
        #[ignore = "needs root and loop devices; run by cargo xtask integration"]
        open_checked(Layout::Gpt, DiskFormat::Raw, PartitionSelector::Number(2))
    );
}

mod gpt_qcow2_partition_2 {
    use super::*;

    testkit::conformance_tests!(
        #[ignore = "needs root, loop devices, qemu-nbd and nbdfuse; run by cargo xtask integration"]
        open_checked(Layout::Gpt, DiskFormat::Qcow2, PartitionSelector::Number(2))
    );
}
