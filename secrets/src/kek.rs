//! Autolock's key-encryption key (KEK): the unlock key the operator keeps, never written to disk,
//! and the wrapping of the data key under it.
//!
//! The human form is SwarmKit's (`manager/encryption` `HumanReadableKey`): `SWMKEY-1-` followed by
//! unpadded standard base64 of 32 random bytes. The data key is wrapped with AES-256-GCM under
//! the KEK, with a fixed AAD naming the purpose, so a wrapped key cannot be taken for any other
//! sealed record. A wrong KEK is told apart only by AES-GCM's tag check: there is no stored
//! digest of the KEK to compare against (or to guess offline faster than the unwrap itself).

use std::fmt;

use base64::engine::general_purpose::STANDARD_NO_PAD;
use base64::Engine as _;
use zeroize::Zeroizing;

use crate::{DataKey, SealError, KEY_LEN};

/// Prefix of the human-readable unlock key.
pub const HUMAN_PREFIX: &str = "SWMKEY-1-";
/// AAD of a data key wrapped under a KEK.
const WRAP_AAD: &[u8] = b"swarmguard/dek-wrapped-by-kek/v1";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KekError {
    /// Not `SWMKEY-1-` + 43 characters of unpadded base64 (SwarmKit's text).
    #[error("invalid key string")]
    InvalidKeyString,
    /// The KEK does not open the wrapped data key: a wrong unlock key, or a damaged key file.
    #[error("invalid key provided")]
    WrongKey,
    #[error(transparent)]
    Seal(#[from] SealError),
}

/// The unlock key. Wiped on drop; `Debug` is redacted.
pub struct UnlockKey {
    key: DataKey,
}

impl fmt::Debug for UnlockKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("UnlockKey(<redacted>)")
    }
}

impl UnlockKey {
    pub fn generate() -> Result<UnlockKey, SealError> {
        Ok(UnlockKey {
            key: DataKey::generate()?,
        })
    }

    /// Parses `SWMKEY-1-…`; surrounding whitespace (a pasted newline) is ignored.
    pub fn parse(text: &str) -> Result<UnlockKey, KekError> {
        let b64 = text
            .trim()
            .strip_prefix(HUMAN_PREFIX)
            .ok_or(KekError::InvalidKeyString)?;
        let mut buf = Zeroizing::new([0u8; 48]);
        let n = STANDARD_NO_PAD
            .decode_slice(b64.as_bytes(), &mut buf[..])
            .map_err(|_| KekError::InvalidKeyString)?;
        if n != KEY_LEN {
            return Err(KekError::InvalidKeyString);
        }
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        raw.copy_from_slice(&buf[..KEY_LEN]);
        Ok(UnlockKey {
            key: DataKey::from_bytes(raw),
        })
    }

    /// The human-readable form the operator stores (`docker swarm unlock-key`).
    pub fn to_human(&self) -> Zeroizing<String> {
        let mut s = Zeroizing::new(String::with_capacity(64));
        s.push_str(HUMAN_PREFIX);
        STANDARD_NO_PAD.encode_string(self.key.expose_bytes(), &mut s);
        s
    }

    /// The raw 32 bytes (tests that search a disk for them).
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        self.key.expose_bytes()
    }

    /// Wraps `dek` under this key.
    pub fn wrap(&self, dek: &DataKey) -> Result<Vec<u8>, SealError> {
        self.key.seal(WRAP_AAD, dek.expose_bytes())
    }

    /// Opens a data key wrapped by [`UnlockKey::wrap`] under this key.
    pub fn unwrap(&self, wrapped: &[u8]) -> Result<DataKey, KekError> {
        let plain = self.key.open(WRAP_AAD, wrapped).map_err(|e| match e {
            SealError::Authentication => KekError::WrongKey,
            other => KekError::Seal(other),
        })?;
        if plain.len() != KEY_LEN {
            return Err(KekError::WrongKey);
        }
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        raw.copy_from_slice(&plain);
        Ok(DataKey::from_bytes(raw))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_form_round_trips_in_swarmkit_shape() {
        let k = UnlockKey::generate().unwrap();
        let h = k.to_human();
        assert!(h.starts_with("SWMKEY-1-"));
        assert_eq!(h.len(), 9 + 43);
        assert!(!h.ends_with('='));
        let back = UnlockKey::parse(&format!("{}\n", &*h)).unwrap();
        assert_eq!(back.expose_bytes(), k.expose_bytes());
        assert_eq!(format!("{k:?}"), "UnlockKey(<redacted>)");
    }

    #[test]
    fn malformed_keys_are_invalid_key_strings() {
        let good = UnlockKey::generate().unwrap().to_human();
        let padded = format!("{}=", &*good);
        let short = good[..good.len() - 1].to_string();
        let other_prefix = good.replace("SWMKEY-1-", "SWMKEY-2-");
        for bad in [
            "",
            "SWMKEY-1-",
            "hello",
            &padded,
            &short,
            &other_prefix,
            "SWMKEY-1-!!!!",
        ] {
            assert_eq!(
                UnlockKey::parse(bad).unwrap_err(),
                KekError::InvalidKeyString,
                "{bad}"
            );
        }
    }

    #[test]
    fn wrap_opens_only_with_its_key() {
        let dek = DataKey::generate().unwrap();
        let k1 = UnlockKey::generate().unwrap();
        let k2 = UnlockKey::generate().unwrap();
        let w = k1.wrap(&dek).unwrap();
        assert_eq!(k1.unwrap(&w).unwrap().expose_bytes(), dek.expose_bytes());
        assert_eq!(k2.unwrap(&w).unwrap_err(), KekError::WrongKey);
        // The wrapped form never holds the DEK in clear.
        assert!(!w.windows(KEY_LEN).any(|x| x == dek.expose_bytes()));
        // A record sealed for another purpose under the KEK is not a wrapped key.
        let other = k1.key.seal(b"log/1", dek.expose_bytes()).unwrap();
        assert_eq!(k1.unwrap(&other).unwrap_err(), KekError::WrongKey);
    }
}
