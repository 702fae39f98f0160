//! The parts records are made of, in the shapes Docker gives them: the swarm spec and a node's
//! spec, description and status. Keys are Go field names and `omitempty` becomes
//! `skip_serializing_if`, so the Engine API serves these as they are and records keep the bytes
//! earlier releases wrote. Roles, availability and states are enums: a value outside the set
//! fails to decode instead of silently meaning something else.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use super::error::ControlError;

/// A node's role, desired (spec) or observed (its certificate's OU).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Manager,
    Worker,
}

/// Whether the scheduler may place tasks on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

/// A node's liveness as the dispatcher sees it (Docker's `NodeState`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    Unknown,
    Down,
    Ready,
    Disconnected,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Manager => "manager",
            Role::Worker => "worker",
        }
    }

    /// The Engine API's `Role`, with dockerd's text for anything else.
    pub fn parse(s: &str) -> Result<Role, ControlError> {
        match s {
            "manager" => Ok(Role::Manager),
            "worker" => Ok(Role::Worker),
            other => Err(ControlError::InvalidArgument(format!(
                "invalid Role: {other:?}"
            ))),
        }
    }
}

impl From<swarmguard_ca::NodeRole> for Role {
    fn from(r: swarmguard_ca::NodeRole) -> Role {
        match r {
            swarmguard_ca::NodeRole::Manager => Role::Manager,
            swarmguard_ca::NodeRole::Worker => Role::Worker,
        }
    }
}

impl From<Role> for swarmguard_ca::NodeRole {
    fn from(r: Role) -> swarmguard_ca::NodeRole {
        match r {
            Role::Manager => swarmguard_ca::NodeRole::Manager,
            Role::Worker => swarmguard_ca::NodeRole::Worker,
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl Availability {
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }

    /// The Engine API's `Availability`, with dockerd's text for anything else.
    pub fn parse(s: &str) -> Result<Availability, ControlError> {
        match s {
            "active" => Ok(Availability::Active),
            "pause" => Ok(Availability::Pause),
            "drain" => Ok(Availability::Drain),
            other => Err(ControlError::InvalidArgument(format!(
                "invalid Availability: {other:?}"
            ))),
        }
    }
}

/// Nanoseconds, as Go's `time.Duration` is encoded in the Engine JSON.
pub type Nanos = i64;

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

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
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

/// A node's desired state as the user sets it (`docker node update`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeSpec {
    #[serde(rename = "Name", default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    /// The desired role.
    #[serde(rename = "Role")]
    pub role: Role,
    #[serde(rename = "Availability")]
    pub availability: Availability,
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
    /// The engine's own labels (`dockerd --label`), which `engine.labels.*` constraints match.
    #[serde(rename = "Labels", default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What the manager last observed of a node.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeStatus {
    #[serde(rename = "State")]
    pub state: NodeState,
    #[serde(rename = "Message", default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    #[serde(rename = "Addr", default, skip_serializing_if = "String::is_empty")]
    pub addr: String,
}
