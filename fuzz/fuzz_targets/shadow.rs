//! Sets the root password in an in-memory guest whose `/etc/shadow` holds arbitrary bytes:
//! either the request fails and the file is unchanged, or only root's hash field changed.
#![no_main]

use libfuzzer_sys::fuzz_target;
use testkit::memfs::MemFs;

fuzz_target!(|shadow: &[u8]| {
    let mut fs = MemFs::new();
    fs.add_dir("/etc", 0o755, 0, 0);
    fs.add_file("/etc/passwd", b"root:x:0:0:root:/root:/bin/sh\n".to_vec(), 0o644, 0, 0);
    fs.add_file("/etc/group", b"root:x:0:\nshadow:x:42:\n", 0o644, 0, 0);
    fs.add_file("/etc/shadow", shadow, 0o640, 0, 42);
    let request = inject::Request {
        password: Some(inject::Password::new("fuzz-password".to_owned())),
        ..Default::default()
    };

    let result = inject::inject(&mut fs, &request);
    let after = fs.file_contents("/etc/shadow").expect("shadow still exists").to_vec();
    if result.is_err() {
        assert_eq!(after, shadow, "a failed request leaves /etc/shadow unchanged");
        return;
    }
    let before_lines: Vec<&[u8]> = shadow.split(|&b| b == b'\n').collect();
    let after_lines: Vec<&[u8]> = after.split(|&b| b == b'\n').collect();
    assert_eq!(before_lines.len(), after_lines.len(), "no line added or removed");
    let changed = before_lines.iter().zip(&after_lines).filter(|(a, b)| a != b).count();
    assert!(changed <= 1, "only root's line may change");
});
