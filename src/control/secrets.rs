//! Swarm secrets: `docker secret create|ls|inspect|rm` and the label-only update, with SwarmKit's
//! rules and texts (`manager/controlapi/secret.go`), and the calls the dispatcher uses to hand
//! secret values to the workers that run tasks needing them.
//!
//! A secret lives in two records written in one transaction: `secret/<id>` (the
//! [`SecretRecord`]) and `secret-name/<lowercased name>` (its ID), so two concurrent creates of
//! one name cannot both commit. The value is sealed with the cluster's secrets key
//! ([`SECRETS_KEY`], made at the first create) inside the record, bound to the secret's ID and
//! data version, and the record is sealed again by the store; the value exists in clear only in the [`Zeroizing`]
//! buffers of a create and of [`Control::open_secret`].
//!
//! Services keep `docker secret rm` honest through [`SecretUsers`] (who references a secret) and
//! [`Control::secret_references`] (a guard their writes carry, so a removal that raced a new
//! reference fails its version check and is retried against the new state).

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use super::audit::AuditEvent;
use super::error::{Code, ControlError};
use super::records::{self, Record, Stored};
use super::{out_of_sequence, Control};
use crate::store::{Check, Op, Txn, TxnOutcome};
use swarmguard_secrets::DataKey;

pub const SECRET_PREFIX: &str = "secret/";
pub const SECRET_NAME_PREFIX: &str = "secret-name/";
pub const SECRET_REF_PREFIX: &str = "secret-ref/";
/// The cluster-wide key secret values are sealed with. Every manager seals its store at rest
/// with its own data key, so a value sealed with one manager's data key would not open on
/// another; this key travels through Raft like the root CA key (sealed at rest everywhere).
pub const SECRETS_KEY: &str = "secret-key/cluster";

/// SwarmKit's `validation.MaxSecretSize`: data must be shorter than this.
pub const MAX_SECRET_SIZE: usize = 500 * 1024;
/// SwarmKit's name length limit (`manager/controlapi/common.go`).
pub const MAX_NAME_LEN: usize = 64;
/// Bounds on labels (SwarmKit has none; a record must stay well under the store's value limit).
const MAX_LABELS: usize = 256;
const MAX_LABEL_BYTES: usize = 64 * 1024;
/// How many times a removal re-reads after a concurrent reference or change.
const REMOVE_TRIES: u32 = records::MAX_TRIES;

pub fn secret_key(id: &str) -> String {
    format!("{SECRET_PREFIX}{id}")
}

pub(super) fn name_key(name: &str) -> String {
    format!("{SECRET_NAME_PREFIX}{}", name.to_ascii_lowercase())
}

pub(super) fn ref_key(id: &str) -> String {
    format!("{SECRET_REF_PREFIX}{id}")
}

/// The AAD of a secret's value: its ID and data version, so a sealed value moved to another
/// secret, or replayed from another version, fails authentication.
fn value_aad(id: &str, data_version: u32) -> String {
    format!("secret/{id}/v{data_version}")
}

/// What the store keeps for one secret. The value is sealed (`sealed_b64`), and `Debug` omits
/// it anyway.
#[derive(Clone, Serialize, Deserialize)]
pub struct SecretRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub name: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Version of the data; SwarmKit's data never changes after create, so this is 1. It is in
    /// the value's AAD, so a future data rotation cannot be rolled back by replaying a value.
    pub data_version: u32,
    /// The value sealed with the cluster's secrets key (standard base64).
    pub sealed_b64: String,
}

impl std::fmt::Debug for SecretRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretRecord")
            .field("id", &self.id)
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("data_version", &self.data_version)
            .finish_non_exhaustive()
    }
}

impl Record for SecretRecord {
    fn touch(&mut self) {
        self.updated_at = crate::util::now_rfc3339();
    }
}

pub type SecretView = Stored<SecretRecord>;

/// A secret's spec as the Engine API sends it. `data` is decoded and zeroized on drop;
/// `Debug` never shows it.
#[derive(Default)]
pub struct SecretSpec {
    pub name: String,
    pub labels: Option<BTreeMap<String, String>>,
    pub data: Option<Zeroizing<Vec<u8>>>,
    /// `Driver.Name`, when a driver was named (refused: swarmguard has no secret plugins).
    pub driver: Option<String>,
    /// `Templating.Name`, when templating was asked for (refused likewise).
    pub templating: Option<String>,
}

impl std::fmt::Debug for SecretSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecretSpec")
            .field("name", &self.name)
            .field("labels", &self.labels)
            .field("data_len", &self.data.as_ref().map(|d| d.len()))
            .field("driver", &self.driver)
            .field("templating", &self.templating)
            .finish()
    }
}

/// Who references secrets: filled by the services layer, asked by `docker secret rm`.
pub trait SecretUsers: Send + Sync {
    /// Names of the services whose spec references the secret `secret_id`, sorted.
    fn services_using(&self, ctl: &Control, secret_id: &str) -> Result<Vec<String>, ControlError>;
}

/// The guard a write that adds references to secrets must carry (see
/// [`Control::secret_references`]): its checks fail if a secret was removed meanwhile, and its
/// ops bump each secret's reference marker, so a concurrent `rm` that already read "unused"
/// fails its own check and re-reads.
#[derive(Debug, Default, Clone)]
pub struct SecretGuard {
    pub checks: Vec<Check>,
    pub ops: Vec<Op>,
}

impl Control {
    /// Every secret, in ID order (`GET /secrets`).
    pub fn secrets(&self) -> Result<Vec<SecretView>, ControlError> {
        self.cluster()?;
        records::list(&self.store, SECRET_PREFIX)
    }

    /// One secret by exact ID, or `None` (for the dispatcher and services).
    pub fn secret_by_id(&self, id: &str) -> Result<Option<SecretView>, ControlError> {
        records::get(&self.store, &secret_key(id))
    }

    /// The records (never the data) of the secrets with these IDs, in the order asked; an ID
    /// with no secret is `NotFound` with SwarmKit's text.
    pub fn secret_records_by_ids(&self, ids: &[String]) -> Result<Vec<SecretView>, ControlError> {
        ids.iter()
            .map(|id| {
                self.secret_by_id(id)?.ok_or_else(|| {
                    ControlError::rpc(Code::NotFound, format!("secret {id} not found"))
                })
            })
            .collect()
    }

    /// The value of secret `id`, for the dispatcher to send to a worker over mTLS. The buffer is
    /// wiped when dropped; never log it.
    pub fn open_secret(&self, id: &str) -> Result<Zeroizing<Vec<u8>>, ControlError> {
        let view = self
            .secret_by_id(id)?
            .ok_or_else(|| ControlError::rpc(Code::NotFound, format!("secret {id} not found")))?;
        self.open_record(&view.record)
    }

    pub(super) fn open_record(&self, r: &SecretRecord) -> Result<Zeroizing<Vec<u8>>, ControlError> {
        let sealed = B64
            .decode(r.sealed_b64.as_bytes())
            .map_err(|e| ControlError::internal("the stored secret value is not base64", e))?;
        let key = self.secrets_key()?.ok_or_else(|| {
            ControlError::internal(
                "cannot open a stored secret value",
                "the secrets key is missing",
            )
        })?;
        key.open(value_aad(&r.id, r.data_version).as_bytes(), &sealed)
            .map_err(|e| ControlError::internal("cannot open a stored secret value", e))
    }

    /// The cluster's secrets key, `None` before the first secret.
    fn secrets_key(&self) -> Result<Option<DataKey>, ControlError> {
        let Some(v) = self.store.get(SECRETS_KEY) else {
            return Ok(None);
        };
        let raw = Zeroizing::new(v.value);
        let bytes: [u8; swarmguard_secrets::KEY_LEN] = raw[..]
            .try_into()
            .map_err(|_| ControlError::internal("the secrets key record", "wrong length"))?;
        Ok(Some(DataKey::from_bytes(Zeroizing::new(bytes))))
    }

    /// Makes sure the cluster has a secrets key and returns it.
    async fn ensure_secrets_key(&self) -> Result<DataKey, ControlError> {
        for _ in 0..records::MAX_TRIES {
            if let Some(k) = self.secrets_key()? {
                return Ok(k);
            }
            let key = DataKey::generate()
                .map_err(|e| ControlError::internal("cannot draw the secrets key", e))?;
            let txn = Txn {
                checks: vec![Check::Absent {
                    key: SECRETS_KEY.into(),
                }],
                ops: vec![Op::Put {
                    key: SECRETS_KEY.into(),
                    value: Zeroizing::new(key.expose_bytes().to_vec()).to_vec(),
                }],
            };
            if let TxnOutcome::Committed { .. } = self.apply(txn).await? {
                return Ok(key);
            }
        }
        Err(ControlError::Contended {
            what: "secrets key",
            tries: records::MAX_TRIES,
        })
    }

    /// The guard a services write must include when it makes a service reference secrets `ids`:
    /// every secret must still exist at commit, and a concurrent `docker secret rm` of one of
    /// them is forced to re-read (and then see the new reference through [`SecretUsers`]).
    pub fn secret_references(&self, ids: &[String]) -> Result<SecretGuard, ControlError> {
        let mut guard = SecretGuard::default();
        for view in self.secret_records_by_ids(ids)? {
            let id = &view.record.id;
            guard.checks.push(Check::Version {
                key: secret_key(id),
                version: view.version,
            });
            guard.ops.push(Op::Put {
                key: ref_key(id),
                value: crate::util::now_rfc3339().into_bytes(),
            });
        }
        Ok(guard)
    }

    /// Installs who answers "is this secret in use" for `docker secret rm`. Without one, no
    /// service exists to reference a secret.
    pub fn set_secret_users(&self, users: Arc<dyn SecretUsers>) {
        *self.secret_users.write().unwrap_or_else(|e| e.into_inner()) = Some(users);
    }

    fn secret_users(&self) -> Option<Arc<dyn SecretUsers>> {
        self.secret_users
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Finds a secret as dockerd does (`daemon/cluster/helpers.go` `getSecret`): full ID, then
    /// exact name, then a unique ID prefix.
    pub fn secret(&self, reference: &str) -> Result<SecretView, ControlError> {
        let all = self.secrets()?;
        if let Some(i) = all.iter().position(|s| s.record.id == reference) {
            return Ok(all.into_iter().nth(i).expect("index"));
        }
        let mut by_name: Vec<SecretView> = Vec::new();
        let mut by_prefix: Vec<SecretView> = Vec::new();
        for s in all {
            if s.record.name == reference {
                by_name.push(s);
            } else if !reference.is_empty() && s.record.id.starts_with(reference) {
                by_prefix.push(s);
            }
        }
        if by_name.len() == 1 {
            return Ok(by_name.remove(0));
        }
        match by_prefix.len() {
            0 => Err(ControlError::NotFound(format!(
                "secret {reference} not found"
            ))),
            1 => Ok(by_prefix.remove(0)),
            n => Err(ControlError::InvalidArgument(format!(
                "secret {reference} is ambiguous ({n} matches found)"
            ))),
        }
    }

    /// `POST /secrets/create`: validates as SwarmKit does, seals the value, writes the secret
    /// and its name in one transaction. Returns the new ID.
    pub async fn create_secret(&self, spec: SecretSpec) -> Result<String, ControlError> {
        self.cluster()?;
        let data = check_create(&spec)?;
        let id = swarmguard_ca::new_id();
        let data_version = 1;
        let sealed = self
            .ensure_secrets_key()
            .await?
            .seal(value_aad(&id, data_version).as_bytes(), data)
            .map_err(|e| ControlError::internal("cannot seal the secret value", e))?;
        let now = crate::util::now_rfc3339();
        let record = SecretRecord {
            id: id.clone(),
            created_at: now.clone(),
            updated_at: now,
            name: spec.name.clone(),
            labels: spec.labels.clone().unwrap_or_default(),
            data_version,
            sealed_b64: B64.encode(&sealed),
        };
        let txn = Txn {
            checks: vec![
                Check::Absent {
                    key: name_key(&spec.name),
                },
                Check::Absent {
                    key: secret_key(&id),
                },
            ],
            ops: vec![
                records::put(&secret_key(&id), &record)?,
                Op::Put {
                    key: name_key(&spec.name),
                    value: id.clone().into_bytes(),
                },
            ],
        };
        let exists = || {
            ControlError::rpc(
                Code::AlreadyExists,
                format!("secret {} already exists", spec.name),
            )
        };
        // A taken name is refused before anything is recorded; the store checks it again.
        if self.store.get(&name_key(&spec.name)).is_some() {
            return Err(exists());
        }
        // Write-ahead audit: the line goes to disk while the Raft entry does, so the answer
        // waits for one flush instead of two in a row. Both are on disk before the 201; a write
        // that then fails gets a `secret_create_failed` line after it.
        let recorded = self.audit.record(AuditEvent::SecretCreated {
            secret_id: id.clone(),
            name: spec.name.clone(),
        });
        let failed = |reason: String| {
            self.audit.record(AuditEvent::SecretCreateFailed {
                secret_id: id.clone(),
                name: spec.name.clone(),
                reason,
            })
        };
        match self.apply(txn).await {
            Ok(TxnOutcome::Committed { .. }) => {
                recorded.await;
                Ok(id)
            }
            Ok(TxnOutcome::Conflict { .. }) => {
                failed("the name was taken by a concurrent create".into()).await;
                Err(exists())
            }
            Err(e) => {
                failed(format!("the store did not confirm the write: {e}")).await;
                Err(e)
            }
        }
    }

    /// `POST /secrets/{id}/update?version=`: only labels may change (SwarmKit's rule); the ID is
    /// taken as given, as dockerd does.
    pub async fn update_secret(
        &self,
        id: &str,
        version: u64,
        spec: SecretSpec,
    ) -> Result<(), ControlError> {
        self.cluster()?;
        check_update(&spec)?;
        let current = self
            .secret_by_id(id)?
            .ok_or_else(|| ControlError::rpc(Code::NotFound, format!("secret {id} not found")))?;
        let same_data = match &spec.data {
            None => true,
            Some(d) => {
                let stored = self.open_record(&current.record)?;
                swarmguard_secrets::ct_eq(d, &stored)
            }
        };
        if spec.name != current.record.name || !same_data {
            return Err(ControlError::rpc(
                Code::InvalidArgument,
                "only updates to Labels are allowed",
            ));
        }
        if current.version != version {
            return Err(out_of_sequence());
        }
        let mut record = current.record;
        let labels = spec.labels.unwrap_or_default();
        if record.labels == labels {
            return Ok(());
        }
        record.labels = labels;
        record.touch();
        let txn = Txn {
            checks: vec![Check::Version {
                key: secret_key(id),
                version,
            }],
            ops: vec![records::put(&secret_key(id), &record)?],
        };
        match self.apply(txn).await? {
            TxnOutcome::Committed { .. } => Ok(()),
            TxnOutcome::Conflict { .. } => Err(out_of_sequence()),
        }
    }

    /// `DELETE /secrets/{id}`: refused while a service references the secret.
    pub async fn remove_secret(&self, reference: &str) -> Result<(), ControlError> {
        for _ in 0..REMOVE_TRIES {
            let view = self.secret(reference)?;
            let id = &view.record.id;
            if let Some(users) = self.secret_users() {
                let services = users.services_using(self, id)?;
                if !services.is_empty() {
                    let plural = if services.len() == 1 { "" } else { "s" };
                    return Err(ControlError::rpc(
                        Code::InvalidArgument,
                        format!(
                            "secret '{}' is in use by the following service{plural}: {}",
                            view.record.name,
                            services.join(", ")
                        ),
                    ));
                }
            }
            let reference_marker = match self.store.get(&ref_key(id)) {
                Some(v) => Check::Version {
                    key: ref_key(id),
                    version: v.version,
                },
                None => Check::Absent { key: ref_key(id) },
            };
            let txn = Txn {
                checks: vec![
                    Check::Version {
                        key: secret_key(id),
                        version: view.version,
                    },
                    reference_marker,
                ],
                ops: vec![
                    Op::Delete {
                        key: secret_key(id),
                    },
                    Op::Delete {
                        key: name_key(&view.record.name),
                    },
                    Op::Delete { key: ref_key(id) },
                ],
            };
            if let TxnOutcome::Committed { .. } = self.apply(txn).await? {
                self.audit
                    .record(AuditEvent::SecretRemoved {
                        secret_id: id.clone(),
                        name: view.record.name.clone(),
                    })
                    .await;
                return Ok(());
            }
        }
        tracing::warn!(%reference, tries = REMOVE_TRIES, "gave up removing a secret that kept changing");
        Err(ControlError::Contended {
            what: "secret",
            tries: REMOVE_TRIES,
        })
    }
}

/// SwarmKit's `validateSecretSpec` for a create, in its order: name, extensions, labels, then
/// the data's size. Returns the data.
pub fn check_create(spec: &SecretSpec) -> Result<&Zeroizing<Vec<u8>>, ControlError> {
    check_name(&spec.name)?;
    check_extensions(spec)?;
    check_labels(spec.labels.as_ref())?;
    match &spec.data {
        Some(d) if !d.is_empty() && d.len() < MAX_SECRET_SIZE => Ok(d),
        _ => Err(ControlError::rpc(
            Code::InvalidArgument,
            format!("secret data must be larger than 0 and less than {MAX_SECRET_SIZE} bytes"),
        )),
    }
}

/// The rules of a label update that need no stored secret: extensions and labels (the name
/// and data must then equal the stored ones).
pub fn check_update(spec: &SecretSpec) -> Result<(), ControlError> {
    check_extensions(spec)?;
    check_labels(spec.labels.as_ref())
}

/// SwarmKit's `validateAnnotations` name rule: `^[a-zA-Z0-9]+(?:[a-zA-Z0-9-_.]*[a-zA-Z0-9])?$`,
/// at most 64 characters.
pub fn check_name(name: &str) -> Result<(), ControlError> {
    if name.is_empty() {
        return Err(ControlError::rpc(
            Code::InvalidArgument,
            "name must be provided",
        ));
    }
    let b = name.as_bytes();
    let edge = |c: u8| c.is_ascii_alphanumeric();
    let inner = |c: u8| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'_' | b'.');
    let ok = b.len() <= MAX_NAME_LEN
        && edge(b[0])
        && edge(b[b.len() - 1])
        && b.iter().all(|&c| inner(c));
    if ok {
        Ok(())
    } else {
        Err(ControlError::rpc(
            Code::InvalidArgument,
            "invalid name, only 64 [a-zA-Z0-9-_.] characters allowed, and the start and end character must be [a-zA-Z0-9]",
        ))
    }
}

/// Secret drivers and templating need plugins and task context swarmguard does not have.
fn check_extensions(spec: &SecretSpec) -> Result<(), ControlError> {
    if let Some(driver) = &spec.driver {
        return Err(ControlError::InvalidArgument(format!(
            "secret drivers are not supported by swarmguard (Driver {driver:?} was given): store the value itself, without --driver"
        )));
    }
    if let Some(t) = &spec.templating {
        return Err(ControlError::InvalidArgument(format!(
            "secret templating is not supported by swarmguard (Templating {t:?} was given): store the final value, without --template-driver"
        )));
    }
    Ok(())
}

fn check_labels(labels: Option<&BTreeMap<String, String>>) -> Result<(), ControlError> {
    if let Some(labels) = labels {
        let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        if labels.len() > MAX_LABELS || bytes > MAX_LABEL_BYTES {
            return Err(ControlError::InvalidArgument(format!(
                "too many secret labels: at most {MAX_LABELS} labels and {MAX_LABEL_BYTES} bytes are accepted"
            )));
        }
    }
    Ok(())
}
