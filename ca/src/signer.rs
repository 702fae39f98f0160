//! An ECDSA P-256 signing key that rcgen can sign with.
//!
//! We wrap ring directly instead of using `rcgen::KeyPair` so that the only
//! serialized copy of the private key we keep is in a zeroizing buffer.
//! (ring's own expanded key state is outside our control.)

use std::fmt;

use rcgen::{PublicKeyData, SignatureAlgorithm, SigningKey, PKCS_ECDSA_P256_SHA256};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair as _, ECDSA_P256_SHA256_ASN1_SIGNING};
use zeroize::Zeroizing;

use crate::error::CaError;

/// P-256 key: PKCS#8 bytes (zeroized on drop) plus ring's key pair.
pub(crate) struct P256Key {
    pkcs8: Zeroizing<Vec<u8>>,
    pair: EcdsaKeyPair,
    rng: SystemRandom,
}

impl P256Key {
    /// Generates a fresh key from the OS RNG.
    pub(crate) fn generate() -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let doc = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &rng)
            .map_err(|_| CaError::Rng)?;
        Self::from_pkcs8(Zeroizing::new(doc.as_ref().to_vec())).map_err(|_| CaError::Rng)
    }

    /// Loads a PKCS#8 P-256 key. ring checks the key is well formed and that
    /// its public point matches the private scalar.
    pub(crate) fn from_pkcs8(pkcs8: Zeroizing<Vec<u8>>) -> Result<Self, CaError> {
        let rng = SystemRandom::new();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_ASN1_SIGNING, &pkcs8, &rng)
            .map_err(|_| {
                CaError::BadRootKey(
                    "not an unencrypted PKCS#8 ECDSA P-256 key (convert SEC1 keys with `openssl pkcs8 -topk8 -nocrypt`)",
                )
            })?;
        Ok(P256Key { pkcs8, pair, rng })
    }

    /// The PKCS#8 DER, for callers that store the key (encrypted) elsewhere.
    pub(crate) fn pkcs8(&self) -> &[u8] {
        &self.pkcs8
    }

    /// Uncompressed public point (the SubjectPublicKeyInfo BIT STRING body).
    pub(crate) fn public_point(&self) -> &[u8] {
        self.pair.public_key().as_ref()
    }
}

impl fmt::Debug for P256Key {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("P256Key")
            .field("private_key", &"[redacted]")
            .finish()
    }
}

impl PublicKeyData for P256Key {
    fn der_bytes(&self) -> &[u8] {
        self.public_point()
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        &PKCS_ECDSA_P256_SHA256
    }
}

impl SigningKey for P256Key {
    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        self.pair
            .sign(&self.rng, msg)
            .map(|sig| sig.as_ref().to_vec())
            .map_err(|_| rcgen::Error::RingUnspecified)
    }
}
