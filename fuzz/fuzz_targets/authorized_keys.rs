//! Checks arbitrary text as a public key and, when it is accepted, injects it into an
//! in-memory guest whose `authorized_keys` holds arbitrary bytes: the old bytes must stay a
//! prefix of the new file, and the key must end up on a line of its own.
#![no_main]

use libfuzzer_sys::fuzz_target;
use testkit::memfs::MemFs;

fuzz_target!(|input: (&str, &[u8])| {
    let (key, existing) = input;
    let request = inject::Request { ssh_key: Some(key.to_owned()), ..Default::default() };
    if request.validate_inputs().is_err() {
        return;
    }

    let mut fs = MemFs::new();
    fs.add_dir("/etc", 0o755, 0, 0);
    fs.add_file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n", 0o644, 0, 0);
    fs.add_file("/etc/group", b"root:x:0:\n", 0o644, 0, 0);
    fs.add_dir("/root", 0o700, 0, 0);
    fs.add_dir("/root/.ssh", 0o700, 0, 0);
    fs.add_file("/root/.ssh/authorized_keys", existing, 0o600, 0, 0);

    if inject::inject(&mut fs, &request).is_ok() {
        let after = fs.file_contents("/root/.ssh/authorized_keys").expect("file still exists");
        assert!(after.starts_with(existing), "existing keys must stay intact");
        let text = String::from_utf8_lossy(after);
        let key_line = key.trim();
        assert!(text.lines().any(|line| line.trim() == key_line), "the key is on a line of its own");
    }
});
