//! The root password: a [`Password`] type that keeps the secret out of logs and memory, and
//! hashing on the host into crypt(3) strings (`$6$`, `$5$`, `$1$`) with a random salt.

use std::fmt;

use zeroize::Zeroizing;

use crate::error::ItemError;
use crate::md5_crypt::{self, CRYPT_ALPHABET};
use crate::request::HashMethod;

/// A password in clear text.
///
/// `Debug` and `Display` print `[redacted]`, and the text is overwritten with zeros when the
/// value is dropped. Copies made before [`Password::new`] took the `String` are outside its
/// control.
#[derive(Clone)]
pub struct Password(Zeroizing<String>);

impl Password {
    /// Wraps a password, taking ownership of its text.
    pub fn new(text: String) -> Self {
        Self(Zeroizing::new(text))
    }

    /// Checks that the password can be hashed and typed: not empty, no line break, no NUL.
    pub fn validate(&self) -> Result<(), ItemError> {
        let reason = if self.0.is_empty() {
            "it is empty"
        } else if self.0.contains(['\n', '\r']) {
            "it contains a line break"
        } else if self.0.contains('\0') {
            "it contains a NUL character, which crypt(3) cannot hash"
        } else {
            return Ok(());
        };
        Err(ItemError::InvalidPassword { reason })
    }

    fn as_bytes(&self) -> &[u8] {
        self.0.as_bytes()
    }
}

impl fmt::Debug for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

impl fmt::Display for Password {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// The salt length for SHA crypt: 16 characters, the most the method uses.
const SHA_SALT_LEN: usize = 16;

/// Hashes `password` with `method` and a fresh salt from the operating system's random
/// source, returning the full crypt(3) string (`$6$salt$hash`).
pub fn hash(password: &Password, method: HashMethod) -> Result<String, ItemError> {
    let salt = random_salt(salt_len(method))?;
    hash_with_salt(password, method, &salt)
}

/// Hashes `password` with `method` and the given salt, returning the full crypt(3) string.
///
/// The salt must be 1 to 16 characters (8 for MD5) of the crypt alphabet `[./0-9A-Za-z]`.
/// SHA crypt uses the default 5000 rounds and so writes no `rounds=` field, as crypt(3)
/// does for a setting without one.
pub fn hash_with_salt(
    password: &Password,
    method: HashMethod,
    salt: &str,
) -> Result<String, ItemError> {
    validate_salt(salt, salt_len(method))?;
    let bytes = password.as_bytes();
    match method {
        HashMethod::Sha512 => {
            let params = sha_crypt::Sha512Params::default();
            let encoded =
                sha_crypt::sha512_crypt_b64(bytes, salt.as_bytes(), &params).map_err(|error| {
                    ItemError::Hashing {
                        reason: format!("{error:?}"),
                    }
                })?;
            Ok(format!("$6${salt}${encoded}"))
        }
        HashMethod::Sha256 => {
            let params = sha_crypt::Sha256Params::default();
            let encoded =
                sha_crypt::sha256_crypt_b64(bytes, salt.as_bytes(), &params).map_err(|error| {
                    ItemError::Hashing {
                        reason: format!("{error:?}"),
                    }
                })?;
            Ok(format!("$5${salt}${encoded}"))
        }
        HashMethod::Md5 => Ok(md5_crypt::md5_crypt(bytes, salt.as_bytes())),
    }
}

fn salt_len(method: HashMethod) -> usize {
    match method {
        HashMethod::Sha512 | HashMethod::Sha256 => SHA_SALT_LEN,
        HashMethod::Md5 => md5_crypt::MAX_SALT_LEN,
    }
}

fn validate_salt(salt: &str, max_len: usize) -> Result<(), ItemError> {
    let valid_chars = salt.bytes().all(|byte| CRYPT_ALPHABET.contains(&byte));
    if salt.is_empty() || salt.len() > max_len || !valid_chars {
        return Err(ItemError::Hashing {
            reason: format!(
                "invalid salt {salt:?}: expected 1 to {max_len} characters of [./0-9A-Za-z]"
            ),
        });
    }
    Ok(())
}

/// Returns `len` characters of the crypt alphabet drawn from getrandom(2).
fn random_salt(len: usize) -> Result<String, ItemError> {
    let mut bytes = vec![0u8; len];
    getrandom::fill(&mut bytes).map_err(|error| ItemError::Hashing {
        reason: format!("reading the random source for a salt failed: {error}"),
    })?;
    // 64 divides 256, so keeping the low six bits of each byte gives every character the
    // same probability.
    Ok(bytes
        .iter()
        .map(|&byte| char::from(CRYPT_ALPHABET[usize::from(byte & 0x3f)]))
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn password_debug_and_display_are_redacted() {
        let password = Password::new("hunter2".to_owned());
        assert_eq!(format!("{password:?}"), "[redacted]");
        assert_eq!(password.to_string(), "[redacted]");
    }

    #[test]
    fn password_validation_rejects_bad_text() {
        for text in ["", "two\nlines", "carriage\rreturn", "nul\0byte"] {
            let password = Password::new(text.to_owned());
            assert!(password.validate().is_err(), "{text:?} was accepted");
        }
        assert!(Password::new("ok pass".into()).validate().is_ok());
    }

    #[test]
    fn hash_uses_method_prefix_and_salt_length() {
        let password = Password::new("secret".into());
        let sha512 = hash(&password, HashMethod::Sha512).unwrap();
        let sha256 = hash(&password, HashMethod::Sha256).unwrap();
        let md5 = hash(&password, HashMethod::Md5).unwrap();
        assert!(sha512.starts_with("$6$"), "{sha512}");
        assert!(sha256.starts_with("$5$"), "{sha256}");
        assert!(md5.starts_with("$1$"), "{md5}");
        assert_eq!(sha512.split('$').nth(2).unwrap().len(), 16);
        assert_eq!(sha256.split('$').nth(2).unwrap().len(), 16);
        assert_eq!(md5.split('$').nth(2).unwrap().len(), 8);
        assert_eq!(sha512.split('$').nth(3).unwrap().len(), 86);
        assert_eq!(sha256.split('$').nth(3).unwrap().len(), 43);
    }

    #[test]
    fn hash_draws_a_new_salt_each_time() {
        let password = Password::new("secret".into());
        let first = hash(&password, HashMethod::Sha512).unwrap();
        let second = hash(&password, HashMethod::Sha512).unwrap();
        assert_ne!(first, second);
    }

    // Vectors of the SHA-crypt specification by Ulrich Drepper, with the default 5000 rounds;
    // `openssl passwd -5` and `-6` (OpenSSL 3.0) print the same strings.
    #[test]
    fn sha_hashes_match_specification_vectors() {
        let password = Password::new("Hello world!".into());
        assert_eq!(
            hash_with_salt(&password, HashMethod::Sha512, "saltstring").unwrap(),
            "$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJu\
             esI68u4OTLiBFdcbYEdFCoEOfaS35inz1"
        );
        assert_eq!(
            hash_with_salt(&password, HashMethod::Sha256, "saltstring").unwrap(),
            "$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"
        );
    }

    #[test]
    fn hash_with_salt_rejects_bad_salt() {
        let password = Password::new("x".into());
        assert!(hash_with_salt(&password, HashMethod::Sha512, "").is_err());
        assert!(hash_with_salt(&password, HashMethod::Sha512, "a$b").is_err());
        assert!(hash_with_salt(&password, HashMethod::Md5, "123456789").is_err());
        assert!(hash_with_salt(&password, HashMethod::Sha256, &"a".repeat(17)).is_err());
    }
}
