//! MD5 crypt (`$1$`), the password hash of old Linux and BSD systems.
//!
//! The algorithm is the one Poul-Henning Kamp published for FreeBSD in 1994, which glibc and
//! libxcrypt implement as `$1$`. One MD5 digest mixes password, magic and salt. Then 1000
//! rounds of MD5 run over alternating password, salt and previous digest. The 16 bytes of
//! the last digest are permuted and written in the crypt base-64 alphabet.

use md5::{Digest, Md5};

/// The prefix that marks an MD5 crypt hash.
pub(crate) const MAGIC: &str = "$1$";

/// The maximum salt length of MD5 crypt, in characters. Longer salts are cut to this
/// length, as libxcrypt does.
pub(crate) const MAX_SALT_LEN: usize = 8;

/// The crypt(3) base-64 alphabet, shared by the MD5 and SHA crypt methods.
pub(crate) const CRYPT_ALPHABET: &[u8; 64] =
    b"./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/// The number of strengthening rounds, fixed by the algorithm.
const ROUNDS: usize = 1000;

/// Returns the full `$1$salt$hash` string for `password` and `salt`.
///
/// `salt` is used up to its first `$` and at most [`MAX_SALT_LEN`] bytes of it.
pub(crate) fn md5_crypt(password: &[u8], salt: &[u8]) -> String {
    let salt = effective_salt(salt);

    // The alternate digest, password + salt + password, feeds the main digest below.
    let mut alternate = Md5::new();
    alternate.update(password);
    alternate.update(salt);
    alternate.update(password);
    let alternate = alternate.finalize();

    let mut main = Md5::new();
    main.update(password);
    main.update(MAGIC.as_bytes());
    main.update(salt);
    for chunk_start in (0..password.len()).step_by(16) {
        let chunk_len = (password.len() - chunk_start).min(16);
        main.update(&alternate[..chunk_len]);
    }
    // For each bit of the password length, lowest first: a NUL byte for a set bit and the
    // first password byte for a clear one. This odd rule is part of the published algorithm.
    let mut length = password.len();
    while length > 0 {
        if length & 1 == 1 {
            main.update([0u8]);
        } else {
            main.update(&password[..1]);
        }
        length >>= 1;
    }
    let mut digest = main.finalize();

    for round in 0..ROUNDS {
        let mut step = Md5::new();
        if round % 2 == 1 {
            step.update(password);
        } else {
            step.update(digest);
        }
        if round % 3 != 0 {
            step.update(salt);
        }
        if round % 7 != 0 {
            step.update(password);
        }
        if round % 2 == 1 {
            step.update(digest);
        } else {
            step.update(password);
        }
        digest = step.finalize();
    }

    let mut text = String::with_capacity(MAGIC.len() + salt.len() + 1 + 22);
    text.push_str(MAGIC);
    text.push_str(&String::from_utf8_lossy(salt));
    text.push('$');
    // The digest bytes go out in groups of three, in this order fixed by the algorithm,
    // with the last byte alone.
    for [first, second, third] in [[0, 6, 12], [1, 7, 13], [2, 8, 14], [3, 9, 15], [4, 10, 5]] {
        let value = (u32::from(digest[first]) << 16)
            | (u32::from(digest[second]) << 8)
            | u32::from(digest[third]);
        push_base64(&mut text, value, 4);
    }
    push_base64(&mut text, u32::from(digest[11]), 2);
    text
}

/// Returns the salt up to its first `$`, cut to [`MAX_SALT_LEN`] bytes.
fn effective_salt(salt: &[u8]) -> &[u8] {
    let end = salt
        .iter()
        .position(|&byte| byte == b'$')
        .unwrap_or(salt.len())
        .min(MAX_SALT_LEN);
    &salt[..end]
}

/// Appends `count` characters for the low bits of `value`, least significant six bits first.
fn push_base64(text: &mut String, mut value: u32, count: usize) {
    for _ in 0..count {
        text.push(char::from(CRYPT_ALPHABET[(value & 0x3f) as usize]));
        value >>= 6;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // The expected strings come from `openssl passwd -1 -salt SALT PASSWORD` (OpenSSL 3.0),
    // an implementation independent of this one.
    #[test]
    fn md5_crypt_matches_openssl_vectors() {
        let cases: [(&str, &str, &str); 4] = [
            ("password", "saltsalt", "$1$saltsalt$qjXMvbEw8oaL.CzflDtaK/"),
            ("correct horse", "abc", "$1$abc$mEYYKBYwc4Odg5SoPgnFr/"),
            ("x", "./09AZaz", "$1$./09AZaz$.vXZ8AjCQoImyCQmwEF3V."),
            (
                "a password longer than sixteen bytes, to use the alternate digest twice",
                "LongPass",
                "$1$LongPass$al3AP14IU4PoyHc6Ny9/P1",
            ),
        ];
        for (password, salt, expected) in cases {
            assert_eq!(md5_crypt(password.as_bytes(), salt.as_bytes()), expected);
        }
    }

    #[test]
    fn md5_crypt_cuts_salt_at_eight_bytes() {
        let long = md5_crypt(b"password", b"saltsaltEXTRA");
        let short = md5_crypt(b"password", b"saltsalt");
        assert_eq!(long, short);
    }

    #[test]
    fn md5_crypt_stops_salt_at_dollar() {
        assert_eq!(md5_crypt(b"pw", b"ab$cd"), md5_crypt(b"pw", b"ab"));
    }
}
