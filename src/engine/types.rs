//! Docker Engine API JSON shapes, field for field as the docker CLI (API 1.41) reads and writes them.
//!
//! Keys are Go field names; `omitempty` in Go becomes `skip_serializing_if` here, and fields Go
//! always writes are always written. Inputs are parsed with types as strict as Go's decoder:
//! a wrong type is a 400, unknown fields are ignored (as Docker does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Nanoseconds, as Go's `time.Duration` is encoded in the Engine JSON.
pub type Nanos = i64;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Version {
    #[serde(rename = "Index", default, skip_serializing_if = "is_zero_u64")]
    pub index: u64,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
}

/// The swarm `Spec`. `Labels` is never omitted; the sub-structs are always present.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Spec {
    #[serde(rename = "Name", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "Orchestration", default)]
    pub orchestration: OrchestrationConfig,
    #[serde(rename = "Raft", default)]
    pub raft: RaftConfig,
    #[serde(rename = "Dispatcher", default)]
    pub dispatcher: DispatcherConfig,
    #[serde(rename = "CAConfig", default)]
    pub ca_config: CaConfig,
    #[serde(rename = "TaskDefaults", default)]
    pub task_defaults: TaskDefaults,
    #[serde(rename = "EncryptionConfig", default)]
    pub encryption_config: EncryptionConfig,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct OrchestrationConfig {
    #[serde(
        rename = "TaskHistoryRetentionLimit",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub task_history_retention_limit: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct RaftConfig {
    #[serde(
        rename = "SnapshotInterval",
        default,
        skip_serializing_if = "is_zero_u64"
    )]
    pub snapshot_interval: u64,
    #[serde(
        rename = "KeepOldSnapshots",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub keep_old_snapshots: Option<u64>,
    #[serde(
        rename = "LogEntriesForSlowFollowers",
        default,
        skip_serializing_if = "is_zero_u64"
    )]
    pub log_entries_for_slow_followers: u64,
    #[serde(rename = "ElectionTick", default)]
    pub election_tick: i64,
    #[serde(rename = "HeartbeatTick", default)]
    pub heartbeat_tick: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DispatcherConfig {
    #[serde(
        rename = "HeartbeatPeriod",
        default,
        skip_serializing_if = "is_zero_i64"
    )]
    pub heartbeat_period: Nanos,
}

fn is_zero_i64(v: &i64) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CaConfig {
    #[serde(
        rename = "NodeCertExpiry",
        default,
        skip_serializing_if = "is_zero_i64"
    )]
    pub node_cert_expiry: Nanos,
    #[serde(
        rename = "ExternalCAs",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub external_cas: Option<Vec<ExternalCa>>,
    /// Accepted on input only: the server never returns signing material.
    #[serde(rename = "SigningCACert", default, skip_serializing)]
    pub signing_ca_cert: String,
    #[serde(rename = "SigningCAKey", default, skip_serializing)]
    pub signing_ca_key: String,
    #[serde(rename = "ForceRotate", default, skip_serializing_if = "is_zero_u64")]
    pub force_rotate: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ExternalCa {
    #[serde(rename = "Protocol")]
    pub protocol: String,
    #[serde(rename = "URL")]
    pub url: String,
    #[serde(rename = "Options", default, skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
    #[serde(rename = "CACert", default)]
    pub ca_cert: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TaskDefaults {
    #[serde(rename = "LogDriver", default, skip_serializing_if = "Option::is_none")]
    pub log_driver: Option<Driver>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Driver {
    #[serde(rename = "Name", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "Options", default, skip_serializing_if = "Option::is_none")]
    pub options: Option<BTreeMap<String, String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EncryptionConfig {
    #[serde(rename = "AutoLockManagers", default)]
    pub auto_lock_managers: bool,
}

/// `TLSInfo`: the byte fields are Go `[]byte`, so standard base64 with padding.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TlsInfo {
    #[serde(
        rename = "TrustRoot",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub trust_root: String,
    #[serde(
        rename = "CertIssuerSubject",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cert_issuer_subject: String,
    #[serde(
        rename = "CertIssuerPublicKey",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub cert_issuer_public_key: String,
}

/// `ClusterInfo`, the part of `GET /swarm` that `/info` repeats.
#[derive(Debug, Clone, Serialize)]
pub struct ClusterInfo {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Version")]
    pub version: Version,
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    #[serde(rename = "UpdatedAt")]
    pub updated_at: String,
    #[serde(rename = "Spec")]
    pub spec: Spec,
    #[serde(rename = "TLSInfo")]
    pub tls_info: TlsInfo,
    #[serde(rename = "RootRotationInProgress")]
    pub root_rotation_in_progress: bool,
    #[serde(rename = "DefaultAddrPool")]
    pub default_addr_pool: Option<Vec<String>>,
    #[serde(rename = "SubnetSize")]
    pub subnet_size: u32,
    #[serde(rename = "DataPathPort")]
    pub data_path_port: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct JoinTokens {
    #[serde(rename = "Worker")]
    pub worker: String,
    #[serde(rename = "Manager")]
    pub manager: String,
}

/// `GET /swarm`.
#[derive(Debug, Clone, Serialize)]
pub struct Swarm {
    #[serde(flatten)]
    pub cluster: ClusterInfo,
    #[serde(rename = "JoinTokens")]
    pub join_tokens: JoinTokens,
}

/// `POST /swarm/init` body.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct InitRequest {
    #[serde(rename = "ListenAddr", default)]
    pub listen_addr: String,
    #[serde(rename = "AdvertiseAddr", default)]
    pub advertise_addr: String,
    /// Accepted for the CLI's sake; swarmguard carries no data path.
    #[serde(rename = "DataPathAddr", default)]
    #[allow(dead_code)]
    pub data_path_addr: String,
    #[serde(rename = "DataPathPort", default)]
    pub data_path_port: u32,
    #[serde(rename = "ForceNewCluster", default)]
    pub force_new_cluster: bool,
    #[serde(rename = "Spec", default)]
    pub spec: Spec,
    #[serde(rename = "AutoLockManagers", default)]
    pub auto_lock_managers: bool,
    #[serde(rename = "Availability", default)]
    pub availability: String,
    #[serde(rename = "DefaultAddrPool", default)]
    pub default_addr_pool: Option<Vec<String>>,
    #[serde(rename = "SubnetSize", default)]
    pub subnet_size: u32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeSpec {
    #[serde(rename = "Name", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "Role", default, skip_serializing_if = "String::is_empty")]
    pub role: String,
    #[serde(
        rename = "Availability",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub availability: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Node {
    #[serde(rename = "ID")]
    pub id: String,
    #[serde(rename = "Version")]
    pub version: Version,
    #[serde(rename = "CreatedAt")]
    pub created_at: String,
    #[serde(rename = "UpdatedAt")]
    pub updated_at: String,
    #[serde(rename = "Spec")]
    pub spec: NodeSpec,
    #[serde(rename = "Description")]
    pub description: NodeDescription,
    #[serde(rename = "Status")]
    pub status: NodeStatus,
    #[serde(rename = "ManagerStatus", skip_serializing_if = "Option::is_none")]
    pub manager_status: Option<ManagerStatus>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeDescription {
    #[serde(rename = "Hostname", default, skip_serializing_if = "String::is_empty")]
    pub hostname: String,
    #[serde(rename = "Platform", default)]
    pub platform: Platform,
    #[serde(rename = "Resources", default)]
    pub resources: Resources,
    #[serde(rename = "Engine", default)]
    pub engine: EngineDescription,
    #[serde(rename = "TLSInfo", default)]
    pub tls_info: TlsInfo,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Platform {
    #[serde(
        rename = "Architecture",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub architecture: String,
    #[serde(rename = "OS", default, skip_serializing_if = "String::is_empty")]
    pub os: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Resources {
    #[serde(rename = "NanoCPUs", default, skip_serializing_if = "is_zero_i64")]
    pub nano_cpus: i64,
    #[serde(rename = "MemoryBytes", default, skip_serializing_if = "is_zero_i64")]
    pub memory_bytes: i64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct EngineDescription {
    #[serde(
        rename = "EngineVersion",
        default,
        skip_serializing_if = "String::is_empty"
    )]
    pub engine_version: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct NodeStatus {
    #[serde(rename = "State")]
    pub state: String,
    #[serde(rename = "Message", default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(rename = "Addr", default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ManagerStatus {
    #[serde(rename = "Leader", default, skip_serializing_if = "std::ops::Not::not")]
    pub leader: bool,
    #[serde(rename = "Reachability")]
    pub reachability: String,
    #[serde(rename = "Addr")]
    pub addr: String,
}

/// `GET /info`'s `Swarm` section.
#[derive(Debug, Clone, Default, Serialize)]
pub struct SwarmInfo {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    #[serde(rename = "NodeAddr")]
    pub node_addr: String,
    #[serde(rename = "LocalNodeState")]
    pub local_node_state: String,
    #[serde(rename = "ControlAvailable")]
    pub control_available: bool,
    #[serde(rename = "Error")]
    pub error: String,
    #[serde(rename = "RemoteManagers")]
    pub remote_managers: Option<Vec<Peer>>,
    #[serde(rename = "Nodes", skip_serializing_if = "is_zero_usize")]
    pub nodes: usize,
    #[serde(rename = "Managers", skip_serializing_if = "is_zero_usize")]
    pub managers: usize,
    #[serde(rename = "Cluster", skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterInfo>,
}

fn is_zero_usize(v: &usize) -> bool {
    *v == 0
}

#[derive(Debug, Clone, Serialize)]
pub struct Peer {
    #[serde(rename = "NodeID")]
    pub node_id: String,
    #[serde(rename = "Addr")]
    pub addr: String,
}
