//! Fuzzes the `authorized_keys` handling in two ways. The input is checked as a public key,
//! which must never panic. The input is also the existing `authorized_keys` of an in-memory
//! guest, into which a fixed valid key is injected twice: the old bytes must stay a prefix
//! of the new file, the key must sit on a line of its own, and the second run must change
//! nothing.
#![no_main]

use libfuzzer_sys::fuzz_target;
use testkit::memfs::MemFs;

/// A valid Ed25519 public key, so every input reaches the editing code.
const KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIBXW5j1kzKpSYQ+3VYpwqPC6fQ6sl1ub+f4Gfa26V1zN fuzz@example";

fuzz_target!(|existing: &[u8]| {
    let as_key = inject::Request {
        ssh_key: Some(String::from_utf8_lossy(existing).into_owned()),
        ..Default::default()
    };
    let _ = as_key.validate_inputs();

    let mut fs = MemFs::new();
    fs.add_dir("/etc", 0o755, 0, 0);
    fs.add_file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n".to_vec(), 0o644, 0, 0);
    fs.add_file("/etc/group", b"root:x:0:\n".to_vec(), 0o644, 0, 0);
    fs.add_dir("/root", 0o700, 0, 0);
    fs.add_dir("/root/.ssh", 0o700, 0, 0);
    fs.add_file("/root/.ssh/authorized_keys", existing.to_vec(), 0o600, 0, 0);
    let request = inject::Request { ssh_key: Some(KEY.to_owned()), ..Default::default() };

    inject::inject(&mut fs, &request).expect("injecting a valid key into a plain guest");
    let after = fs.file_contents("/root/.ssh/authorized_keys").expect("file exists").to_vec();
    assert!(after.starts_with(existing), "existing keys must stay intact");
    let text = String::from_utf8_lossy(&after);
    let body = KEY.split(' ').nth(1).expect("the key has a body");
    // A key counts as present when a line that is not a comment has its type and body as
    // neighbouring words, since an options prefix may come first.
    let already_present = existing
        .split(|&byte| byte == b'\n')
        .map(String::from_utf8_lossy)
        .filter(|line| !line.trim_start().starts_with('#'))
        .any(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            words.windows(2).any(|pair| pair[0] == "ssh-ed25519" && pair[1] == body)
        });
    if !already_present {
        assert!(text.lines().any(|line| line == KEY), "the key must be on a line of its own");
    }

    inject::inject(&mut fs, &request).expect("injecting the same key again");
    let again = fs.file_contents("/root/.ssh/authorized_keys").expect("file exists");
    assert_eq!(again, after.as_slice(), "a second injection must change nothing");
});
