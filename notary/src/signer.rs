//! The signing boundary: timestamp and snapshot private keys live only behind
//! [`Signer`]. The in-process implementation keeps them in redb, encrypted
//! with AES-256-GCM under a 32-byte master key, and decrypts a key only for
//! the duration of one signature (the plaintext is zeroized afterwards).

use std::path::Path;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde::{Deserialize, Serialize};
use swarmguard_secrets::DataKey;
use zeroize::{Zeroize, Zeroizing};

use crate::tuf::{self, KeyVal, PublicKey};

/// Errors from the signer.
#[derive(Debug, thiserror::Error)]
pub enum SignerError {
    #[error("no key {0} held for this repository")]
    UnknownKey(String),
    #[error("master key: {0}")]
    MasterKey(String),
    #[error("crypto failure")]
    Crypto,
    #[error("storage: {0}")]
    Storage(String),
    #[error("too many server-held keys for this repository and role")]
    TooManyKeys,
    /// A remote signer did not answer within its deadline, or could not be reached.
    #[error("signer unavailable: {0}")]
    Unavailable(String),
}

/// Most keys kept per repository and role. Keys the current root lists are never dropped;
/// the trust server drops the others ([`Signer::drop_unlisted`]) before it asks for a new one,
/// so only keys in use count towards this cap.
pub const MAX_KEYS_PER_ROLE: usize = 64;

fn storage(e: impl std::fmt::Display) -> SignerError {
    SignerError::Storage(e.to_string())
}

/// A server-held key, public part.
#[derive(Debug, Clone)]
pub struct HeldKey {
    pub id: String,
    pub public: PublicKey,
}

/// What the trust server needs from a signer.
pub trait Signer: Send + Sync {
    /// Create a new key for `gun`/`role` and return its public part.
    fn create_key(&self, gun: &str, role: &str) -> Result<HeldKey, SignerError>;
    /// Drop the keys held for `gun`/`role` whose IDs are not in `keep`, except the newest
    /// (a client may have just fetched it and be about to list it in a new root). Returns how
    /// many were dropped. A signer that cannot drop keys keeps them.
    fn drop_unlisted(&self, gun: &str, role: &str, keep: &[String]) -> Result<usize, SignerError> {
        let _ = (gun, role, keep);
        Ok(0)
    }
    /// All keys held for `gun`/`role`, oldest first.
    fn keys(&self, gun: &str, role: &str) -> Result<Vec<HeldKey>, SignerError>;
    /// The newest key held for `gun`/`role` whose ID is one of `keyids` (the role's keys in
    /// the root), if any. A signer that is expensive to ask may answer from what it learnt
    /// earlier, as long as the answer is the one [`Signer::keys`] would give.
    fn held_key(
        &self,
        gun: &str,
        role: &str,
        keyids: &[String],
    ) -> Result<Option<HeldKey>, SignerError> {
        Ok(newest_listed(self.keys(gun, role)?, keyids))
    }
    /// Sign `msg` with key `key_id` of `gun`/`role`; returns (method, signature).
    fn sign(
        &self,
        gun: &str,
        role: &str,
        key_id: &str,
        msg: &[u8],
    ) -> Result<(String, Vec<u8>), SignerError>;
}

/// The newest of `held` (oldest first) whose ID is in `keyids`.
pub fn newest_listed(held: Vec<HeldKey>, keyids: &[String]) -> Option<HeldKey> {
    held.into_iter().rev().find(|k| keyids.contains(&k.id))
}

/// 32-byte AES-256-GCM master key, zeroized on drop; sealing is the project's one AEAD
/// ([`swarmguard_secrets::DataKey`]).
pub struct MasterKey(DataKey);

impl MasterKey {
    /// Decode base64 (standard) or 64 hex characters.
    pub fn decode(text: &str) -> Result<Self, SignerError> {
        let t = text.trim();
        let mut raw = Zeroizing::new(
            if t.len() == 64 && t.bytes().all(|b| b.is_ascii_hexdigit()) {
                (0..32)
                    .map(|i| {
                        u8::from_str_radix(&t[2 * i..2 * i + 2], 16)
                            .map_err(|_| SignerError::MasterKey("hex".into()))
                    })
                    .collect::<Result<Vec<u8>, _>>()?
            } else {
                B64.decode(t).map_err(|_| {
                    SignerError::MasterKey("neither 64 hex digits nor base64".into())
                })?
            },
        );
        if raw.len() != 32 {
            raw.zeroize();
            return Err(SignerError::MasterKey("must be exactly 32 bytes".into()));
        }
        let mut k = Zeroizing::new([0u8; 32]);
        k.copy_from_slice(&raw);
        Ok(MasterKey(DataKey::from_bytes(k)))
    }

    /// Read from a file, refused (like the manager's DEK file) unless it is a regular file
    /// that group and others cannot read.
    pub fn from_file(path: &Path) -> Result<Self, SignerError> {
        let text = swarmguard_secrets::keyfile::read_private_text(path)
            .map_err(|e| SignerError::MasterKey(e.to_string()))?;
        Self::decode(&text)
    }
}

/// Environment variable holding the master key (base64 or hex, 32 bytes).
pub const MASTER_KEY_ENV: &str = "SWARMGUARD_TRUST_SIGNER_KEY";

impl MasterKey {
    /// From `file` if given, else from [`MASTER_KEY_ENV`].
    pub fn load(file: Option<&Path>) -> Result<Self, SignerError> {
        match file {
            Some(p) => Self::from_file(p),
            None => match std::env::var(MASTER_KEY_ENV) {
                Ok(v) => Self::decode(&Zeroizing::new(v)),
                Err(_) => Err(SignerError::MasterKey(format!(
                    "none given: pass --signer-key-file or set {MASTER_KEY_ENV}"
                ))),
            },
        }
    }
}

impl std::fmt::Debug for MasterKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MasterKey(<redacted>)")
    }
}

const KEYS: TableDefinition<&str, &[u8]> = TableDefinition::new("signer_keys");

#[derive(Serialize, Deserialize)]
struct StoredKey {
    id: String,
    public: String,
    /// The PKCS#8 private key sealed with the master key (`DataKey::seal` layout: version,
    /// nonce, ciphertext and tag), base64.
    sealed: String,
}

/// In-process signer over redb.
pub struct LocalSigner {
    db: Arc<Database>,
    master: MasterKey,
    rng: SystemRandom,
}

impl LocalSigner {
    pub fn new(db: Arc<Database>, master: MasterKey) -> Result<Self, SignerError> {
        let tx = db.begin_write().map_err(storage)?;
        tx.open_table(KEYS).map_err(storage)?;
        tx.commit().map_err(storage)?;
        Ok(LocalSigner {
            db,
            master,
            rng: SystemRandom::new(),
        })
    }

    fn load(&self, gun: &str, role: &str) -> Result<Vec<StoredKey>, SignerError> {
        let tx = self.db.begin_read().map_err(storage)?;
        let t = tx.open_table(KEYS).map_err(storage)?;
        match t.get(slot(gun, role).as_str()).map_err(storage)? {
            Some(v) => serde_json::from_slice(v.value()).map_err(storage),
            None => Ok(Vec::new()),
        }
    }
}

fn slot(gun: &str, role: &str) -> String {
    format!("{gun}\n{role}")
}

fn aad(gun: &str, role: &str, id: &str) -> String {
    format!("swarmguard-notary-key\n{gun}\n{role}\n{id}")
}

impl Signer for LocalSigner {
    fn create_key(&self, gun: &str, role: &str) -> Result<HeldKey, SignerError> {
        let pkcs8 = Zeroizing::new(
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &self.rng)
                .map_err(|_| SignerError::Crypto)?
                .as_ref()
                .to_vec(),
        );
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &pkcs8, &self.rng)
            .map_err(|_| SignerError::Crypto)?;
        let public = tuf::ecdsa_p256_key(pair.public_key().as_ref());
        let id = tuf::key_id(&public).map_err(|_| SignerError::Crypto)?;
        let sealed = self
            .master
            .0
            .seal(aad(gun, role, &id).as_bytes(), &pkcs8)
            .map_err(|_| SignerError::Crypto)?;
        let stored = StoredKey {
            id: id.clone(),
            public: public.keyval.public.clone(),
            sealed: B64.encode(&sealed),
        };
        let tx = self.db.begin_write().map_err(storage)?;
        {
            let mut t = tx.open_table(KEYS).map_err(storage)?;
            let key = slot(gun, role);
            let mut all: Vec<StoredKey> = match t.get(key.as_str()).map_err(storage)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(storage)?,
                None => Vec::new(),
            };
            if all.len() >= MAX_KEYS_PER_ROLE {
                return Err(SignerError::TooManyKeys);
            }
            all.push(stored);
            let bytes = serde_json::to_vec(&all).map_err(storage)?;
            t.insert(key.as_str(), bytes.as_slice()).map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        tracing::info!(gun, role, key_id = %id, "created server-held key");
        Ok(HeldKey { id, public })
    }

    fn drop_unlisted(&self, gun: &str, role: &str, keep: &[String]) -> Result<usize, SignerError> {
        let tx = self.db.begin_write().map_err(storage)?;
        let dropped;
        {
            let mut t = tx.open_table(KEYS).map_err(storage)?;
            let key = slot(gun, role);
            let mut all: Vec<StoredKey> = match t.get(key.as_str()).map_err(storage)? {
                Some(v) => serde_json::from_slice(v.value()).map_err(storage)?,
                None => return Ok(0),
            };
            let before = all.len();
            let newest = all.last().map(|k| k.id.clone());
            all.retain(|k| keep.contains(&k.id) || Some(&k.id) == newest.as_ref());
            dropped = before - all.len();
            if dropped == 0 {
                return Ok(0);
            }
            let bytes = serde_json::to_vec(&all).map_err(storage)?;
            t.insert(key.as_str(), bytes.as_slice()).map_err(storage)?;
        }
        tx.commit().map_err(storage)?;
        tracing::info!(
            gun,
            role,
            dropped,
            "dropped server-held keys the root no longer lists"
        );
        Ok(dropped)
    }

    fn keys(&self, gun: &str, role: &str) -> Result<Vec<HeldKey>, SignerError> {
        Ok(self
            .load(gun, role)?
            .into_iter()
            .map(|k| HeldKey {
                id: k.id,
                public: PublicKey {
                    keytype: "ecdsa".into(),
                    keyval: KeyVal {
                        private: None,
                        public: k.public,
                    },
                },
            })
            .collect())
    }

    fn sign(
        &self,
        gun: &str,
        role: &str,
        key_id: &str,
        msg: &[u8],
    ) -> Result<(String, Vec<u8>), SignerError> {
        let stored = self
            .load(gun, role)?
            .into_iter()
            .find(|k| k.id == key_id)
            .ok_or_else(|| SignerError::UnknownKey(key_id.to_string()))?;
        let sealed = B64
            .decode(&stored.sealed)
            .map_err(|_| SignerError::Crypto)?;
        let plain = self
            .master
            .0
            .open(aad(gun, role, key_id).as_bytes(), &sealed)
            .map_err(|_| SignerError::Crypto)?;
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &plain, &self.rng)
            .map_err(|_| SignerError::Crypto)?;
        let sig = pair.sign(&self.rng, msg).map_err(|_| SignerError::Crypto)?;
        Ok(("ecdsa".to_string(), sig.as_ref().to_vec()))
    }
}
