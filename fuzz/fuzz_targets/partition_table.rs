//! Feeds arbitrary bytes as a disk to the partition-table parser, the volume listing and the
//! filesystem probe; none of them may panic or allocate without bound.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let size = data.len() as u64;
    let _ = vfs_core::partition::read_partition_table(&mut Cursor::new(data), size);
    let _ = vfs_core::layout::list_volumes(&mut Cursor::new(data), size);
    let _ = vfs_core::fsprobe::probe_filesystem(&mut Cursor::new(data), 0, size);
});
