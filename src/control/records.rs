//! What the control layer keeps in the cluster store, and the store keys it lives under.
//!
//! The root CA key sits in a record of its own (`ca/root`) so that the records read on every API
//! call never carry it; the store seals every value at rest.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use zeroize::{Zeroize, ZeroizeOnDrop};

use crate::engine::types::{NodeDescription, NodeSpec, NodeStatus, Spec};

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
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeRecord {
    pub id: String,
    pub created_at: String,
    pub updated_at: String,
    /// Desired state, as the user set it (`Role` is the desired role).
    pub spec: NodeSpec,
    /// Observed role: the OU of the node's current certificate.
    pub role: String,
    pub description: NodeDescription,
    pub status: NodeStatus,
    /// The cluster address of a manager (`host:port`).
    pub manager_addr: Option<String>,
    pub certificate: CertificateRecord,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CertificateRecord {
    /// SwarmKit's IssuanceStatus state, lowercase (`pending`, `issued`, `renew`, `rotate`, `failed`).
    pub state: String,
    pub cert_pem: String,
    /// Unix seconds.
    pub not_after: i64,
    /// The CSR exactly as the node sent it (standard base64), echoed by NodeCertificateStatus.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub csr_b64: String,
    /// Why issuance failed (state `failed`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub err: String,
}
