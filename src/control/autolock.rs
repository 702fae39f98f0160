//! Autolock on this manager: the unlock key (key-encryption key) held in memory only, and the
//! key file kept in step with the cluster spec's `AutoLockManagers`.
//!
//! The spec is the desired state and `keys/dek` follows it ([`Control::reconcile_autolock`]):
//! turning autolock on draws a key and wraps the data key under it, turning it off writes the
//! data key back in clear, `unlock-key --rotate` wraps it under a new key. Each is one atomic
//! replace of the key file, made before the new key is shown to anyone, so a crash leaves a file
//! the old or the new key opens. After a crash between the spec's write and the key file's, the
//! next start reconciles (an "on" spec with a clear key file gets a new key, which
//! `docker swarm unlock-key` shows).

use std::io;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use swarmguard_secrets::kek::UnlockKey;
use zeroize::Zeroizing;

use super::error::ControlError;
use super::local::{KeyCodec, LocalIdentity, SEALED_KEY_HEADER};
use super::Control;
use crate::store::Store;

/// AAD of this manager's TLS key sealed with the data key.
const TLS_KEY_AAD: &str = "tls/swarm-node.key";

/// `swarm-node.key` through the store's data key: sealed when `seal` (autolock on), so the key
/// is opened only by the data key, which only the unlock key opens. Reads take either form.
pub struct StoreKeyCodec<'a> {
    pub store: &'a Store,
    pub seal: bool,
}

impl KeyCodec for StoreKeyCodec<'_> {
    fn encode(&self, key_pem: &[u8]) -> io::Result<Zeroizing<Vec<u8>>> {
        if !self.seal {
            return Ok(Zeroizing::new(key_pem.to_vec()));
        }
        let sealed = self
            .store
            .seal_field(TLS_KEY_AAD, key_pem)
            .map_err(io::Error::other)?;
        let mut out = Zeroizing::new(SEALED_KEY_HEADER.as_bytes().to_vec());
        out.extend_from_slice(B64.encode(sealed).as_bytes());
        out.push(b'\n');
        Ok(out)
    }

    fn decode(&self, stored: &[u8]) -> io::Result<Zeroizing<Vec<u8>>> {
        let Some(rest) = stored.strip_prefix(SEALED_KEY_HEADER.as_bytes()) else {
            return Ok(Zeroizing::new(stored.to_vec()));
        };
        let text = rest.strip_suffix(b"\n").unwrap_or(rest);
        let sealed = B64.decode(text).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                "swarm-node.key: sealed key is not base64",
            )
        })?;
        self.store
            .open_field(TLS_KEY_AAD, &sealed)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("swarm-node.key: {e}")))
    }
}

impl Control {
    /// Installs the unlock key that opened this manager's data key (after `docker swarm unlock`).
    pub fn set_unlock_key(&self, key: Option<UnlockKey>) {
        *self.unlock_key.lock().unwrap_or_else(|e| e.into_inner()) = key;
    }

    /// `GET /swarm/unlockkey`: the unlock key's human form, or `None` when autolock is off.
    pub fn unlock_key(&self) -> Result<Option<Zeroizing<String>>, ControlError> {
        self.cluster()?;
        Ok(self
            .unlock_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(UnlockKey::to_human))
    }

    /// The raw unlock key, for `CA.GetUnlockKey` (managers only); `None` with autolock off.
    pub fn unlock_key_bytes(&self) -> Option<Zeroizing<Vec<u8>>> {
        self.unlock_key
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .map(|k| Zeroizing::new(k.expose_bytes().to_vec()))
    }

    /// How `swarm-node.key` is written now: sealed while autolock is on.
    pub fn key_codec(&self) -> StoreKeyCodec<'_> {
        StoreKeyCodec {
            store: &self.store,
            seal: self
                .unlock_key
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_some(),
        }
    }

    /// Whether the cluster spec asks for autolock.
    pub fn autolock_wanted(&self) -> bool {
        self.cluster()
            .map(|c| c.record.spec.encryption_config.auto_lock_managers)
            .unwrap_or(false)
    }

    /// Brings `keys/dek` in line with the spec; `rotate` draws a new unlock key even if one is
    /// set. The new key is installed only after the key file holding the data key wrapped under
    /// it is durable.
    pub fn reconcile_autolock(&self, rotate: bool) -> Result<(), ControlError> {
        let want = self.autolock_wanted();
        let mut current = self.unlock_key.lock().unwrap_or_else(|e| e.into_inner());
        let write = |kek: Option<&UnlockKey>| {
            self.store
                .write_key_file(&self.config.data_dir, kek)
                .map_err(|e| ControlError::internal("cannot rewrite the data key file", e))
        };
        // The TLS key is sealed with the data key while the data key is wrapped: sealed before
        // the wrap, unsealed after the unwrap, so every state between is readable.
        let tls_key = |seal: bool| {
            let (clear, sealed) = (
                StoreKeyCodec {
                    store: &self.store,
                    seal: false,
                },
                StoreKeyCodec {
                    store: &self.store,
                    seal: true,
                },
            );
            let (from, to) = if seal {
                (&clear, &sealed)
            } else {
                (&sealed, &clear)
            };
            LocalIdentity::rewrite_key(&self.config.data_dir, from, to)
                .map_err(|e| ControlError::internal("cannot rewrite this manager's TLS key", e))
        };
        match (want, current.is_some()) {
            (true, has) if !has || rotate => {
                let new = UnlockKey::generate()
                    .map_err(|e| ControlError::internal("cannot draw an unlock key", e))?;
                tls_key(true)?;
                write(Some(&new))?;
                *current = Some(new);
                tracing::info!(
                    rotated = has,
                    "autolock: the data key is wrapped under a new unlock key (see `docker swarm unlock-key`)"
                );
            }
            (false, true) => {
                write(None)?;
                tls_key(false)?;
                *current = None;
                tracing::info!("autolock turned off: the data key file is no longer wrapped");
            }
            _ => {}
        }
        Ok(())
    }
}
