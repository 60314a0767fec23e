//! Builds guest paths from arbitrary text and checks the invariants every accepted path keeps.
#![no_main]

use libfuzzer_sys::fuzz_target;
use vfs_core::GuestPath;

fuzz_target!(|text: &str| {
    if let Ok(path) = GuestPath::new(text) {
        let normalised = path.as_str();
        assert!(normalised.starts_with('/'));
        assert!(!normalised.contains('\0'));
        assert!(path.components().all(|name| !name.is_empty() && name != ".." && name != "."));
        assert_eq!(GuestPath::new(normalised).as_ref(), Ok(&path));
    }
    if let Ok(base) = GuestPath::new("/a/b") {
        if let Ok(resolved) = vfs_core::path::resolve_link_target(&base, text) {
            assert!(resolved.components().all(|name| name != ".."));
        }
    }
});
