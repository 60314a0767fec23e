//! Feeds arbitrary bytes to the `/etc/passwd`, `/etc/group` and `/etc/fstab` parsers.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = vfs_core::accounts::parse_passwd(data);
    let _ = vfs_core::accounts::parse_group(data);
    let _ = vfs_core::fstab::parse_fstab(data);
});
