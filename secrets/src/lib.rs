//! Encryption at rest for swarmguard.
//!
//! - [`DataKey`]: the data-encryption key (DEK), AES-256-GCM via `ring`, with a versioned sealed
//!   record layout and the record identity bound as additional authenticated data (AAD).
//! - [`keyfile`]: loading and atomically creating the on-disk DEK file.
//! - [`atomic`]: crash-safe writes of key material and certificates.
//!
//! - [`kek`]: autolock's key-encryption key (the `SWMKEY-1-` unlock key) and DEK wrapping.
#![forbid(unsafe_code)]

pub mod atomic;
pub mod kek;
pub mod keyfile;

use std::fmt;

use ring::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_256_GCM, NONCE_LEN};
use ring::rand::{SecureRandom, SystemRandom};
use zeroize::Zeroizing;

/// Length in bytes of a [`DataKey`].
pub const KEY_LEN: usize = 32;
/// Version byte of the only sealed layout defined so far.
pub const SEAL_VERSION_1: u8 = 1;
/// Length of the AES-GCM authentication tag.
pub const TAG_LEN: usize = 16;
/// Bytes a sealed record adds to its plaintext: version byte, nonce and tag.
pub const SEAL_OVERHEAD: usize = 1 + NONCE_LEN + TAG_LEN;

/// Errors from [`DataKey::seal`] and [`DataKey::open`].
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum SealError {
    /// The sealed record is shorter than version byte + nonce + tag.
    #[error("sealed record is truncated: {len} bytes, at least {min} needed (the file holding it is damaged; restore it from a backup)")]
    Truncated { len: usize, min: usize },
    /// The version byte is not one this build understands.
    #[error("sealed record has unknown format version {0} (written by a newer swarmguard? upgrade this binary)")]
    UnknownVersion(u8),
    /// AES-GCM authentication failed. AES-GCM cannot tell these causes apart: the record was
    /// sealed with another key, was moved from another record identity (AAD), or was modified.
    #[error("sealed record failed authentication: wrong key, record moved from another identity, or tampered data (check that keys/dek belongs to this data directory; otherwise restore from a backup)")]
    Authentication,
    /// The operating system's random generator failed while making a nonce or key.
    #[error("the system random number generator failed; cannot create a nonce or key")]
    Random,
    /// The plaintext is larger than AES-GCM allows for one message.
    #[error("plaintext is too large to seal in one record")]
    TooLarge,
}

/// A 256-bit AES-GCM data-encryption key.
///
/// The raw key bytes are kept in a [`Zeroizing`] buffer and wiped on drop. `ring` does not wipe
/// its expanded key schedule inside [`LessSafeKey`]; that is a known limitation of `ring`.
pub struct DataKey {
    raw: Zeroizing<[u8; KEY_LEN]>,
    key: LessSafeKey,
}

impl fmt::Debug for DataKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DataKey(<redacted>)")
    }
}

impl DataKey {
    /// Generates a fresh random key.
    pub fn generate() -> Result<DataKey, SealError> {
        let mut raw = Zeroizing::new([0u8; KEY_LEN]);
        SystemRandom::new()
            .fill(&mut raw[..])
            .map_err(|_| SealError::Random)?;
        Ok(Self::from_raw(raw))
    }

    /// Builds a key from raw bytes. The caller's buffer is consumed and wiped on drop.
    pub fn from_bytes(bytes: Zeroizing<[u8; KEY_LEN]>) -> DataKey {
        Self::from_raw(bytes)
    }

    fn from_raw(raw: Zeroizing<[u8; KEY_LEN]>) -> DataKey {
        // `UnboundKey::new` only fails for a wrong key length, which the array type rules out.
        let unbound = match UnboundKey::new(&AES_256_GCM, &raw[..]) {
            Ok(k) => k,
            Err(_) => unreachable!("AES-256 key is exactly 32 bytes"),
        };
        DataKey {
            raw,
            key: LessSafeKey::new(unbound),
        }
    }

    /// The raw key bytes, for writing the key file. Handle with care.
    pub fn expose_bytes(&self) -> &[u8; KEY_LEN] {
        &self.raw
    }

    /// Seals `plaintext` bound to `aad` (the record identity, e.g. `log/42`).
    ///
    /// Layout: `version (1) ‖ nonce (12) ‖ ciphertext ‖ tag (16)`. The nonce is a fresh random
    /// 96-bit value for every call.
    pub fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut nonce_bytes = [0u8; NONCE_LEN];
        SystemRandom::new()
            .fill(&mut nonce_bytes)
            .map_err(|_| SealError::Random)?;
        let mut out = Vec::with_capacity(plaintext.len() + SEAL_OVERHEAD);
        out.push(SEAL_VERSION_1);
        out.extend_from_slice(&nonce_bytes);
        let mut body = plaintext.to_vec();
        self.key
            .seal_in_place_append_tag(
                Nonce::assume_unique_for_key(nonce_bytes),
                Aad::from(aad),
                &mut body,
            )
            .map_err(|_| SealError::TooLarge)?;
        out.extend_from_slice(&body);
        Ok(out)
    }

    /// Opens a record made by [`DataKey::seal`] with the same `aad`.
    pub fn open(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, SealError> {
        let Some((&version, rest)) = sealed.split_first() else {
            return Err(SealError::Truncated {
                len: 0,
                min: SEAL_OVERHEAD,
            });
        };
        if version != SEAL_VERSION_1 {
            return Err(SealError::UnknownVersion(version));
        }
        if sealed.len() < SEAL_OVERHEAD {
            return Err(SealError::Truncated {
                len: sealed.len(),
                min: SEAL_OVERHEAD,
            });
        }
        let (nonce_bytes, ct) = rest.split_at(NONCE_LEN);
        let nonce =
            Nonce::try_assume_unique_for_key(nonce_bytes).map_err(|_| SealError::Truncated {
                len: sealed.len(),
                min: SEAL_OVERHEAD,
            })?;
        let mut buf = Zeroizing::new(ct.to_vec());
        let len = self
            .key
            .open_in_place(nonce, Aad::from(aad), &mut buf[..])
            .map_err(|_| SealError::Authentication)?
            .len();
        buf.truncate(len);
        Ok(buf)
    }
}

/// Whether `a` and `b` are equal, in time that depends only on their lengths' digests: both are
/// hashed (SHA-256) and the digests compared without an early exit, so neither the position of
/// the first difference nor the length of a secret leaks.
pub fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    let da = ring::digest::digest(&ring::digest::SHA256, a);
    let db = ring::digest::digest(&ring::digest::SHA256, b);
    let diff = da
        .as_ref()
        .iter()
        .zip(db.as_ref())
        .fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ct_eq_compares_contents() {
        assert!(ct_eq(b"s3cr3t", b"s3cr3t"));
        assert!(!ct_eq(b"s3cr3t", b"s3cr3u"));
        assert!(!ct_eq(b"s3cr3t", b"s3cr3"));
        assert!(ct_eq(b"", b""));
    }

    #[test]
    fn roundtrip() {
        let k = DataKey::generate().unwrap();
        let s = k.seal(b"sm/a", b"hello").unwrap();
        assert_eq!(s.len(), 5 + SEAL_OVERHEAD);
        assert_eq!(&k.open(b"sm/a", &s).unwrap()[..], b"hello");
        let empty = k.seal(b"x", b"").unwrap();
        assert!(k.open(b"x", &empty).unwrap().is_empty());
    }

    #[test]
    fn fresh_nonce_each_time() {
        let k = DataKey::generate().unwrap();
        assert_ne!(
            k.seal(b"a", b"same").unwrap(),
            k.seal(b"a", b"same").unwrap()
        );
    }

    #[test]
    fn wrong_aad_rejected() {
        let k = DataKey::generate().unwrap();
        let s = k.seal(b"log/1", b"v").unwrap();
        assert_eq!(k.open(b"log/2", &s), Err(SealError::Authentication));
    }

    #[test]
    fn wrong_key_rejected() {
        let k = DataKey::generate().unwrap();
        let k2 = DataKey::generate().unwrap();
        let s = k.seal(b"a", b"v").unwrap();
        assert_eq!(k2.open(b"a", &s), Err(SealError::Authentication));
    }

    #[test]
    fn truncation_rejected() {
        let k = DataKey::generate().unwrap();
        let s = k.seal(b"a", b"value").unwrap();
        assert!(matches!(
            k.open(b"a", &[]),
            Err(SealError::Truncated { .. })
        ));
        assert!(matches!(
            k.open(b"a", &s[..SEAL_OVERHEAD - 1]),
            Err(SealError::Truncated { .. })
        ));
        // Cutting the tail keeps enough length but breaks the tag.
        assert_eq!(
            k.open(b"a", &s[..s.len() - 1]),
            Err(SealError::Authentication)
        );
    }

    #[test]
    fn tampering_rejected() {
        let k = DataKey::generate().unwrap();
        let s = k.seal(b"a", b"value").unwrap();
        for i in 1..s.len() {
            let mut t = s.clone();
            t[i] ^= 0x01;
            assert_eq!(k.open(b"a", &t), Err(SealError::Authentication), "byte {i}");
        }
    }

    #[test]
    fn unknown_version_rejected() {
        let k = DataKey::generate().unwrap();
        let mut s = k.seal(b"a", b"value").unwrap();
        s[0] = 2;
        assert_eq!(k.open(b"a", &s), Err(SealError::UnknownVersion(2)));
    }

    #[test]
    fn debug_is_redacted() {
        let k = DataKey::generate().unwrap();
        let d = format!("{k:?}");
        assert_eq!(d, "DataKey(<redacted>)");
    }
}
