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

use swarmguard_secrets::kek::UnlockKey;
use zeroize::Zeroizing;

use super::error::ControlError;
use super::Control;

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
        match (want, current.is_some()) {
            (true, has) if !has || rotate => {
                let new = UnlockKey::generate()
                    .map_err(|e| ControlError::internal("cannot draw an unlock key", e))?;
                write(Some(&new))?;
                *current = Some(new);
                tracing::info!(
                    rotated = has,
                    "autolock: the data key is wrapped under a new unlock key (see `docker swarm unlock-key`)"
                );
            }
            (false, true) => {
                write(None)?;
                *current = None;
                tracing::info!("autolock turned off: the data key file is no longer wrapped");
            }
            _ => {}
        }
        Ok(())
    }
}
