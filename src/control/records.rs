//! What the control layer keeps in the cluster store, the keys it lives under, and the one way
//! to read and change it: typed reads and a read-modify-write with one retry policy.
//!
//! The root CA key sits in a record of its own (`ca/root`) so that the records read on every API
//! call never carry it; the store seals every value at rest. Records are JSON with the field
//! names and value spellings of the first release, so data dirs it wrote open unchanged
//! (`tests/datadir_compat.rs`).

use std::collections::BTreeMap;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use super::error::ControlError;
use super::types::{NodeDescription, NodeSpec, NodeStatus, Role, Spec};
use crate::store::{Check, Op, Store, Txn, TxnOutcome, Versioned};

pub const CLUSTER_KEY: &str = "cluster/default";
pub const ROOT_CA_KEY: &str = "ca/root";
pub const NODE_PREFIX: &str = "node/";

pub fn node_key(id: &str) -> String {
    format!("{NODE_PREFIX}{id}")
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ClusterRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    pub spec: Spec,
    /// The exact PEM bytes the join tokens' digest covers.
    pub root_ca_pem: String,
    pub join_tokens: TokenPair,
    pub last_forced_rotation: u64,
    /// Removed nodes, refused at once; the value is when the entry may be forgotten (Unix seconds:
    /// one week after the node's certificate expires, as SwarmKit's blacklist).
    #[serde(default)]
    pub removed_nodes: BTreeMap<String, i64>,
    pub default_addr_pool: Option<Vec<String>>,
    pub subnet_size: u32,
    pub data_path_port: u32,
    /// A root rotation in progress (phase 1 started it; the rotation loop finishes it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root_rotation: Option<RootRotation>,
}

/// The target of a root rotation: the new root and the same certificate cross-signed by the
/// current root (the intermediate every certificate issued meanwhile carries). Its key sits
/// in `ca/root` beside the current one.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct RootRotation {
    pub new_root_pem: String,
    pub cross_signed_pem: String,
}

/// The two join tokens. Never logged: `Debug` is redacted.
#[derive(Clone, Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct TokenPair {
    pub worker: String,
    pub manager: String,
}

impl std::fmt::Debug for TokenPair {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("TokenPair { worker: <redacted>, manager: <redacted> }")
    }
}

/// The root CA certificate and its key (PKCS#8 DER, standard base64).
#[derive(Serialize, Deserialize, Zeroize, ZeroizeOnDrop)]
pub struct RootCaRecord {
    pub cert_pem: String,
    pub key_pkcs8_b64: String,
    /// The key of the rotation target's root (PKCS#8 DER, base64) while a rotation runs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub rotation_key_pkcs8_b64: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    /// Desired state, as the user set it (`Role` is the desired role).
    pub spec: NodeSpec,
    /// Observed role: the OU of the node's current certificate.
    pub role: Role,
    pub description: NodeDescription,
    pub status: NodeStatus,
    /// The cluster address of a manager (`host:port`).
    pub manager_addr: Option<String>,
    /// A swarmguard manager's ID in the Raft group (absent for workers, and in records
    /// written before several managers existed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raft_id: Option<u64>,
    pub certificate: CertificateRecord,
    /// What the node runs, as this manager recorded it (never what the node says now).
    /// Absent in records written before it existed: those read as `Unrecorded`.
    #[serde(default, skip_serializing_if = "NodeSoftware::is_unrecorded")]
    pub software: NodeSoftware,
    /// The manager (node ID) that holds this node's dispatcher session, set when a session
    /// registers. With several managers it says who is to notice missed heartbeats, and whose
    /// loss makes the leader mark the node Down. Absent in older records.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_manager: Option<String>,
}

/// What software a node runs, as the manager recorded it itself: for its own node at `swarm
/// init`, and for a joined node once, at its first session with a description. Later sessions
/// never change it, so a node cannot talk itself into being a swarmguard agent (the promote
/// guard's question) after it was seen as something else.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NodeSoftware {
    /// Not seen yet: no session since the join, or a record older than this field.
    #[default]
    Unrecorded,
    /// A stock Docker engine (anything that is not a swarmguard agent).
    Dockerd,
    SwarmguardAgent,
    SwarmguardManager,
}

impl NodeSoftware {
    pub fn is_unrecorded(&self) -> bool {
        *self == NodeSoftware::Unrecorded
    }

    /// Whether this node can become a swarmguard manager.
    pub fn is_swarmguard(self) -> bool {
        matches!(
            self,
            NodeSoftware::SwarmguardAgent | NodeSoftware::SwarmguardManager
        )
    }
}

impl NodeRecord {
    /// The name `docker node ls` shows: the spec's name, else the hostname.
    pub fn name(&self) -> &str {
        if self.spec.name.is_empty() {
            &self.description.hostname
        } else {
            &self.spec.name
        }
    }
}

/// SwarmKit's `IssuanceStatus` states.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CertState {
    /// Waiting for a signer (an external CA, or the reconcile loop).
    Pending,
    /// The node asked for a new certificate for its current identity.
    Renew,
    Issued,
    Failed,
    /// The node must get a new certificate (root rotation).
    Rotate,
}

impl CertState {
    /// A state the node acts on; NodeCertificateStatus stops waiting at these.
    pub fn is_final(self) -> bool {
        matches!(
            self,
            CertState::Issued | CertState::Failed | CertState::Rotate
        )
    }

    /// Whether a signer still has to sign the certificate.
    pub fn needs_signing(self) -> bool {
        matches!(self, CertState::Pending | CertState::Renew)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateRecord {
    pub state: CertState,
    pub cert_pem: String,
    /// Unix seconds.
    pub not_after: i64,
    /// The CSR exactly as the node sent it (standard base64), echoed by NodeCertificateStatus.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub csr_b64: String,
    /// Why issuance failed (state `failed`), or why it is still waiting (state `pending`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
}

/// A record kept in the store: it knows how to mark itself changed.
pub trait Record: Serialize + DeserializeOwned {
    /// Called once before a changed record is written (sets `updated_at`).
    fn touch(&mut self);
}

impl Record for NodeRecord {
    fn touch(&mut self) {
        self.updated_at = crate::util::now_rfc3339();
    }
}

impl Record for ClusterRecord {
    fn touch(&mut self) {
        self.updated_at = crate::util::now_rfc3339();
    }
}

/// A record with the store version it was read at.
#[derive(Debug, Clone)]
pub struct Stored<T> {
    pub record: T,
    pub version: u64,
}

/// How many times a read-modify-write is tried against concurrent writers before it gives up.
/// One policy for every record: each try re-reads, so a conflict costs one read and no write.
pub const MAX_TRIES: u32 = 8;

pub fn decode<T: DeserializeOwned>(v: &Versioned) -> Result<T, ControlError> {
    serde_json::from_slice(&v.value)
        .map_err(|e| ControlError::internal("cannot decode a record", e))
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, ControlError> {
    serde_json::to_vec(value).map_err(|e| ControlError::internal("cannot encode a record", e))
}

pub fn put<T: Serialize>(key: &str, value: &T) -> Result<Op, ControlError> {
    Ok(Op::Put {
        key: key.to_string(),
        value: encode(value)?,
    })
}

/// Reads and decodes one record.
pub fn get<T: DeserializeOwned>(
    store: &Store,
    key: &str,
) -> Result<Option<Stored<T>>, ControlError> {
    store
        .get(key)
        .map(|v| {
            Ok(Stored {
                record: decode(&v)?,
                version: v.version,
            })
        })
        .transpose()
}

/// Every record under `prefix`, decoded, in key order.
pub fn list<T: DeserializeOwned>(
    store: &Store,
    prefix: &str,
) -> Result<Vec<Stored<T>>, ControlError> {
    store
        .list(prefix)
        .into_iter()
        .map(|(_, v)| {
            Ok(Stored {
                record: decode(&v)?,
                version: v.version,
            })
        })
        .collect()
}

/// Writes through the leader (the store forwards from a follower). No leader with a quorum
/// is dockerd's "does not have a leader" error; an outcome lost with a failing leader says so.
pub async fn apply(store: &Store, txn: Txn) -> Result<TxnOutcome, ControlError> {
    store.apply(txn).await.map_err(store_error)
}

/// The one mapping of the store's errors that callers act on.
pub fn store_error(e: crate::store::StoreError) -> ControlError {
    use crate::store::StoreError;
    match e {
        e @ StoreError::NoQuorum { .. } => ControlError::rpc(super::Code::Unknown, e),
        e @ StoreError::Unknown(_) => ControlError::rpc(super::Code::Unavailable, e),
        e => ControlError::Store(e.to_string()),
    }
}

/// Read-modify-write of one record under a version check, retried on conflicts up to
/// [`MAX_TRIES`]. `change` edits the record (it may refuse with an error, which ends the call);
/// a record that comes out byte-identical is not written at all, else it is touched and written.
/// `Ok(None)`: no such record.
pub async fn update<T: Record>(
    store: &Store,
    key: &str,
    what: &'static str,
    mut change: impl FnMut(&mut T) -> Result<(), ControlError>,
) -> Result<Option<Stored<T>>, ControlError> {
    for _ in 0..MAX_TRIES {
        let Some(current) = store.get(key) else {
            return Ok(None);
        };
        let mut record: T = decode(&current)?;
        change(&mut record)?;
        if encode(&record)? == current.value {
            return Ok(Some(Stored {
                record,
                version: current.version,
            }));
        }
        record.touch();
        let value = encode(&record)?;
        let txn = Txn {
            checks: vec![Check::Version {
                key: key.to_string(),
                version: current.version,
            }],
            ops: vec![Op::Put {
                key: key.to_string(),
                value,
            }],
        };
        if let TxnOutcome::Committed { index } = apply(store, txn).await? {
            return Ok(Some(Stored {
                record,
                version: index,
            }));
        }
    }
    tracing::warn!(%key, tries = MAX_TRIES, "gave up updating a record that kept changing");
    Err(ControlError::Contended {
        what,
        tries: MAX_TRIES,
    })
}
