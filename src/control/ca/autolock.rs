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

use super::local::{KeyCodec, LocalIdentity, SEALED_KEY_HEADER};
use crate::control::error::ControlError;
use crate::control::Control;
use crate::store::Store;
use crate::store::{Check, Op, Txn};

/// The swarm's unlock key (`SWMKEY-1-…`), one for every manager, as SwarmKit keeps it in its
/// cluster object. Like every record it is sealed by each manager's data key, which it wraps.
pub const UNLOCK_KEY_RECORD: &str = "cluster/unlock-key";

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

    /// The swarm's unlock key as the store holds it (one for every manager), if autolock is on.
    fn recorded_unlock_key(&self) -> Result<Option<UnlockKey>, ControlError> {
        let Some(v) = self.store.get(UNLOCK_KEY_RECORD) else {
            return Ok(None);
        };
        let text = Zeroizing::new(
            String::from_utf8(v.value)
                .map_err(|_| ControlError::internal("the unlock key record", "not UTF-8"))?,
        );
        UnlockKey::parse(&text)
            .map(Some)
            .map_err(|e| ControlError::internal("the unlock key record", e))
    }

    /// `GET /swarm/unlockkey`: the unlock key's human form, or `None` when autolock is off.
    pub fn unlock_key(&self) -> Result<Option<Zeroizing<String>>, ControlError> {
        self.cluster()?;
        Ok(self
            .recorded_unlock_key()?
            .as_ref()
            .map(UnlockKey::to_human))
    }

    /// The raw unlock key, for `CA.GetUnlockKey` (managers only); `None` with autolock off.
    pub fn unlock_key_bytes(&self) -> Option<Zeroizing<Vec<u8>>> {
        self.recorded_unlock_key()
            .ok()
            .flatten()
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

    /// Brings the swarm's unlock key record in line with the spec: a key when autolock is on
    /// (a new one when `rotate`, or when there is none: the one this manager was unlocked with,
    /// if any, so a data dir from before the record keeps its key), none when it is off. Every
    /// manager then follows the record ([`Control::reconcile_autolock`]).
    pub async fn sync_unlock_key_record(&self, rotate: bool) -> Result<(), ControlError> {
        let recorded = self.store.get(UNLOCK_KEY_RECORD).is_some();
        let (check, op) = match (self.autolock_wanted(), recorded) {
            (true, has) if !has || rotate => {
                let in_memory = self
                    .unlock_key
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .as_ref()
                    .map(UnlockKey::to_human);
                let human = match in_memory {
                    Some(k) if !rotate => k,
                    _ => UnlockKey::generate()
                        .map_err(|e| ControlError::internal("cannot draw an unlock key", e))?
                        .to_human(),
                };
                (
                    // A first key never replaces one another manager recorded meanwhile.
                    (!rotate).then(|| Check::Absent {
                        key: UNLOCK_KEY_RECORD.into(),
                    }),
                    Op::Put {
                        key: UNLOCK_KEY_RECORD.into(),
                        value: human.as_bytes().to_vec(),
                    },
                )
            }
            (false, true) => (
                None,
                Op::Delete {
                    key: UNLOCK_KEY_RECORD.into(),
                },
            ),
            _ => return Ok(()),
        };
        self.apply(Txn {
            checks: check.into_iter().collect(),
            ops: vec![op],
        })
        .await?;
        Ok(())
    }

    /// Brings `keys/dek` in line with the swarm's unlock key record: wrapped under the recorded
    /// key, or in clear when there is none. The key is installed here only after the key file
    /// holding the data key wrapped under it is durable. Every manager runs this whenever the
    /// record may have changed, so a rotation or an on/off made through any manager reaches all.
    pub fn reconcile_autolock(&self) -> Result<(), ControlError> {
        let recorded = self.recorded_unlock_key()?;
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
        match (recorded, current.as_ref()) {
            (Some(new), old) => {
                let same = old.is_some_and(|o| {
                    swarmguard_secrets::ct_eq(o.expose_bytes(), new.expose_bytes())
                });
                if same {
                    return Ok(());
                }
                tls_key(true)?;
                write(Some(&new))?;
                let rotated = old.is_some();
                *current = Some(new);
                tracing::info!(
                    rotated,
                    "autolock: the data key is wrapped under the swarm's unlock key (see `docker swarm unlock-key`)"
                );
            }
            (None, Some(_)) => {
                write(None)?;
                tls_key(false)?;
                *current = None;
                tracing::info!("autolock turned off: the data key file is no longer wrapped");
            }
            (None, None) => {}
        }
        Ok(())
    }

    /// Follows the unlock key record for as long as this manager runs (see
    /// [`Control::reconcile_autolock`]): the record changes through whichever manager the
    /// operator asked.
    pub async fn follow_autolock(&self, mut stop: tokio::sync::watch::Receiver<bool>) {
        let mut events = self.store.subscribe_to(&[UNLOCK_KEY_RECORD]);
        // First catch up with the swarm: a restarted manager's state may lag the leader's
        // until a read index, and acting on it could unwrap a key the swarm still wants (or
        // record a second one). Then the spec decides, in case a crash fell between the
        // spec's write and the record's.
        loop {
            // A manager of a swarm whose state has not replayed the cluster yet is not
            // caught up (its identity is on disk before the state knows it).
            let member = LocalIdentity::read_recorded(&self.config.data_dir).is_ok();
            let caught_up = match self.read_barrier().await {
                Ok(()) if self.local_identity().is_some() => {
                    self.sync_unlock_key_record(false).await.is_ok()
                }
                Ok(()) => !member,
                Err(_) => false,
            };
            if caught_up {
                if let Err(e) = self.reconcile_autolock() {
                    tracing::error!(error = %e, "cannot bring the data key file in line with the swarm's unlock key");
                }
                break;
            }
            tokio::select! {
                _ = crate::util::until_true(&mut stop) => return,
                _ = tokio::time::sleep(std::time::Duration::from_secs(1)) => {}
            }
        }
        loop {
            tokio::select! {
                _ = crate::util::until_true(&mut stop) => return,
                ev = events.recv() => match ev {
                    Ok(a) if !a.keys.iter().any(|k| k == UNLOCK_KEY_RECORD) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                    _ => {}
                },
            }
            if let Err(e) = self.reconcile_autolock() {
                tracing::error!(error = %e, "cannot bring the data key file in line with the swarm's unlock key");
            }
        }
    }
}
