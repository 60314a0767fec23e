//! Checks the password hashes against the C library's crypt(3) (libxcrypt), which is what
//! the guest's login programs use to verify them.

use std::ffi::{c_char, CStr, CString};
use std::sync::Mutex;

use inject::password::{hash, hash_with_salt};
use inject::{HashMethod, Password};

#[link(name = "crypt")]
extern "C" {
    fn crypt(phrase: *const c_char, setting: *const c_char) -> *mut c_char;
}

/// crypt(3) returns a pointer to static storage, so calls must not overlap.
static CRYPT_LOCK: Mutex<()> = Mutex::new(());

/// Returns crypt(3) of `phrase` with `setting`, or `None` when crypt fails.
fn system_crypt(phrase: &str, setting: &str) -> Option<String> {
    let phrase = CString::new(phrase).unwrap();
    let setting = CString::new(setting).unwrap();
    let _guard = CRYPT_LOCK.lock().unwrap();
    // SAFETY: both arguments are NUL-terminated strings that outlive the call, and the lock
    // keeps other threads from overwriting the static result buffer before it is copied.
    let result = unsafe { crypt(phrase.as_ptr(), setting.as_ptr()) };
    if result.is_null() {
        return None;
    }
    // SAFETY: a non-null result of crypt(3) is a NUL-terminated string in static storage,
    // valid until the next call, which the lock holds off.
    let text = unsafe { CStr::from_ptr(result) }
        .to_string_lossy()
        .into_owned();
    // libxcrypt returns a string starting with `*` instead of NULL on failure.
    (!text.starts_with('*')).then_some(text)
}

const PASSWORDS: [&str; 5] = [
    "hunter2",
    "correct horse battery staple",
    "pässwörd with ünïcode",
    "a password well beyond sixteen bytes, to cover the longer code paths of every method",
    "x",
];

fn check_method(method: HashMethod) {
    for text in PASSWORDS {
        let ours = hash(&Password::new(text.to_owned()), method).unwrap();
        let system = system_crypt(text, &ours);
        assert_eq!(system.as_deref(), Some(ours.as_str()), "password {text:?}");
    }
}

#[test]
fn sha512_hashes_verify_with_system_crypt() {
    check_method(HashMethod::Sha512);
}

#[test]
fn sha256_hashes_verify_with_system_crypt() {
    check_method(HashMethod::Sha256);
}

#[test]
fn md5_hashes_verify_with_system_crypt() {
    check_method(HashMethod::Md5);
}

#[test]
fn fixed_salt_matches_system_crypt_setting() {
    let password = Password::new("hunter2".to_owned());
    let cases = [
        (
            HashMethod::Sha512,
            "abcdefghijklmnop",
            "$6$abcdefghijklmnop$",
        ),
        (HashMethod::Sha256, "./AZaz09", "$5$./AZaz09$"),
        (HashMethod::Md5, "12345678", "$1$12345678$"),
    ];
    for (method, salt, setting) in cases {
        let ours = hash_with_salt(&password, method, salt).unwrap();
        assert_eq!(
            system_crypt("hunter2", setting).as_deref(),
            Some(ours.as_str()),
            "{method}"
        );
    }
}

#[test]
fn wrong_password_does_not_verify() {
    let ours = hash(&Password::new("hunter2".to_owned()), HashMethod::Sha512).unwrap();
    assert_ne!(
        system_crypt("hunter3", &ours).as_deref(),
        Some(ours.as_str())
    );
}
