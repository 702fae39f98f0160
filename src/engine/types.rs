//! Docker Engine API JSON shapes, field for field as the docker CLI (API 1.41) reads and writes them.
//!
//! Keys are Go field names; `omitempty` in Go becomes `skip_serializing_if` here, and fields Go
//! always writes are always written. Inputs are parsed with types as strict as Go's decoder:
//! a wrong type is a 400, unknown fields are ignored (as Docker does).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

pub use crate::control::types::{CaConfig, NodeDescription, NodeSpec, NodeStatus, Spec, TlsInfo};

/// `POST /nodes/{id}/update` body. Role and availability arrive as strings so that a wrong one
/// gets dockerd's `invalid Role: "…"` text rather than a JSON decoder's.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NodeSpecBody {
    #[serde(rename = "Name", default)]
    pub name: String,
    #[serde(rename = "Labels", default)]
    pub labels: Option<BTreeMap<String, String>>,
    #[serde(rename = "Role", default)]
    pub role: String,
    #[serde(rename = "Availability", default)]
    pub availability: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Version {
    #[serde(rename = "Index", default, skip_serializing_if = "is_zero_u64")]
    pub index: u64,
}

fn is_zero_u64(v: &u64) -> bool {
    *v == 0
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

/// `POST /swarm/join` body (the CLI sends all six fields, empty or not).
#[derive(Debug, Clone, Default, Deserialize)]
pub struct JoinRequest {
    #[serde(rename = "ListenAddr", default)]
    pub listen_addr: String,
    #[serde(rename = "AdvertiseAddr", default)]
    pub advertise_addr: String,
    /// Accepted for the CLI's sake; swarmguard carries no data path.
    #[serde(rename = "DataPathAddr", default)]
    #[allow(dead_code)]
    pub data_path_addr: String,
    #[serde(rename = "RemoteAddrs", default)]
    pub remote_addrs: Vec<String>,
    #[serde(rename = "JoinToken", default)]
    pub join_token: String,
    #[serde(rename = "Availability", default)]
    #[allow(dead_code)]
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
