//! The `authsign` key: cfssl's "standard" auth provider, HMAC-SHA256 with a hex key.

use std::fmt;
use std::path::Path;

use ring::hmac;
use zeroize::Zeroizing;

use super::CfsslError;

/// Largest key file read (a hex key is 32-128 characters).
const MAX_KEY_FILE: u64 = 4096;

/// An HMAC key for cfssl `authsign`. Never printed; the bytes are zeroized on drop.
pub struct AuthKey {
    key: hmac::Key,
    _bytes: Zeroizing<Vec<u8>>,
}

impl AuthKey {
    /// From the hex text cfssl's config holds (`auth_keys.<name>.key`); surrounding whitespace
    /// is ignored.
    pub fn from_hex(hex: &str) -> Result<AuthKey, CfsslError> {
        let hex = hex.trim();
        if hex.is_empty() || hex.len() % 2 != 0 || hex.len() > 1024 {
            return Err(CfsslError::AuthKey(
                "the key must be an even number of hex digits (as in cfssl's auth_keys)".into(),
            ));
        }
        let mut bytes = Zeroizing::new(Vec::with_capacity(hex.len() / 2));
        for pair in hex.as_bytes().chunks(2) {
            let digit = |c: u8| (c as char).to_digit(16);
            match (digit(pair[0]), digit(pair[1])) {
                (Some(h), Some(l)) => bytes.push((h * 16 + l) as u8),
                _ => {
                    return Err(CfsslError::AuthKey(
                        "the key has a character that is not a hex digit".into(),
                    ))
                }
            }
        }
        Ok(AuthKey {
            key: hmac::Key::new(hmac::HMAC_SHA256, &bytes),
            _bytes: bytes,
        })
    }

    /// From a file holding the hex key (read at most 4 KiB).
    pub fn from_file(path: &Path) -> Result<AuthKey, CfsslError> {
        use std::io::Read as _;
        let mut text = Zeroizing::new(String::new());
        std::fs::File::open(path)
            .and_then(|f| f.take(MAX_KEY_FILE).read_to_string(&mut text))
            .map_err(|e| {
                CfsslError::AuthKey(format!("cannot read the key file {}: {e}", path.display()))
            })?;
        Self::from_hex(&text)
    }

    /// From an environment variable holding the hex key.
    pub fn from_env(name: &str) -> Result<AuthKey, CfsslError> {
        let text = Zeroizing::new(std::env::var(name).map_err(|_| {
            CfsslError::AuthKey(format!("the environment variable {name} is not set"))
        })?);
        Self::from_hex(&text)
    }

    /// HMAC-SHA256 over `request`: the `token` of an authenticated request.
    pub(crate) fn token(&self, request: &[u8]) -> Vec<u8> {
        hmac::sign(&self.key, request).as_ref().to_vec()
    }
}

impl fmt::Debug for AuthKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AuthKey([redacted])")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// RFC 4231 test case 2 ("Jefe"): the token is plain HMAC-SHA256 of the request bytes.
    #[test]
    fn token_is_hmac_sha256_of_the_exact_bytes() {
        let key = AuthKey::from_hex("4a656665\n").unwrap();
        let token = key.token(b"what do ya want for nothing?");
        let hex: String = token.iter().map(|b| format!("{b:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        assert_eq!(format!("{key:?}"), "AuthKey([redacted])");
    }

    #[test]
    fn bad_keys_are_refused_without_echoing_them() {
        for bad in ["", "abc", "zz11", &"ab".repeat(600)] {
            let e = AuthKey::from_hex(bad).unwrap_err().to_string();
            assert!(bad.is_empty() || !e.contains(bad), "{e}");
        }
        assert!(AuthKey::from_env("SWARMGUARD_TEST_NO_SUCH_VAR").is_err());
    }
}
