//! The control layer: what SwarmKit's control API does for the swarm, its nodes and its CA,
//! expressed as transactions on the cluster store.
//!
//! Every change is one store transaction guarded by version checks, so two concurrent requests
//! can never both win, and a refused request changes nothing.

pub mod error;
pub mod filters;
pub mod local;
pub mod records;
pub mod spec;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use swarmguard_ca::{JoinToken, NodeRole, RootCa};
use zeroize::Zeroizing;

use crate::engine::types::{self as api, NodeSpec};
use crate::store::{Check, Op, Store, Txn, TxnOutcome, Versioned};
pub use error::{Code, ControlError};
use local::{LocalIdentity, ManagerConfig};
use records::*;

/// One week: how long a removed node stays refused after its certificate expires.
const REMOVED_NODE_GRACE: i64 = 7 * 24 * 3600;

pub struct Control {
    store: Store,
    config: ManagerConfig,
    /// Loaded once at start or init; the key is never re-read per request.
    ca: RwLock<Option<Arc<RootCa>>>,
    local: RwLock<Option<LocalIdentity>>,
    /// Init and leave write this manager's identity files before or after their store write; one
    /// at a time, so a losing concurrent init cannot overwrite the winner's certificate on disk.
    membership: tokio::sync::Mutex<()>,
    /// What the cluster gRPC port is doing, reported by its supervisor; `swarm init` waits on it.
    cluster_port: tokio::sync::watch::Sender<ClusterPort>,
    /// Wakes the supervisor at once when membership changes.
    membership_changed: tokio::sync::Notify,
}

/// State of the cluster gRPC port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterPort {
    Stopped,
    Serving(std::net::SocketAddr),
    Failed(String),
}

/// `GET /swarm` and `/info` need the record and its store version together.
pub struct ClusterView {
    pub record: ClusterRecord,
    pub version: u64,
}

pub struct NodeView {
    pub record: NodeRecord,
    pub version: u64,
}

/// Which tokens `POST /swarm/update` rotates.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rotate {
    pub worker_token: bool,
    pub manager_token: bool,
    pub manager_unlock_key: bool,
}

impl Control {
    /// Loads the cluster (if this manager is part of one) from the store and the data dir.
    pub fn open(store: Store, config: ManagerConfig) -> Result<Control, ControlError> {
        let control = Control {
            store,
            config,
            ca: RwLock::new(None),
            local: RwLock::new(None),
            membership: tokio::sync::Mutex::new(()),
            cluster_port: tokio::sync::watch::channel(ClusterPort::Stopped).0,
            membership_changed: tokio::sync::Notify::new(),
        };
        if control.store.get(CLUSTER_KEY).is_some() {
            let ca = control.load_root_ca()?;
            let local = LocalIdentity::load(&control.config.data_dir, &ca)
                .map_err(|e| ControlError::internal("cannot load this manager's identity", e))?;
            *control.ca.write().expect("ca lock") = Some(Arc::new(ca));
            *control.local.write().expect("local lock") = Some(local);
        }
        Ok(control)
    }

    fn load_root_ca(&self) -> Result<RootCa, ControlError> {
        let raw = self.store.get(ROOT_CA_KEY).ok_or_else(|| {
            ControlError::internal(
                "the cluster store has a cluster but no root CA",
                "data dir damaged; restore it from a backup",
            )
        })?;
        let value = Zeroizing::new(raw.value);
        let record: RootCaRecord = serde_json::from_slice(&value)
            .map_err(|e| ControlError::internal("cannot decode the root CA record", e))?;
        let key = Zeroizing::new(
            B64.decode(record.key_pkcs8_b64.as_bytes())
                .map_err(|e| ControlError::internal("cannot decode the root CA key", e))?,
        );
        RootCa::from_pem(record.cert_pem.as_bytes(), &key)
            .map_err(|e| ControlError::internal("cannot load the root CA", e))
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn local_node_id(&self) -> Option<String> {
        self.local
            .read()
            .expect("local lock")
            .as_ref()
            .map(|l| l.node_id.clone())
    }

    /// This manager's addresses and node ID, when it is part of a swarm.
    pub fn local_identity(&self) -> Option<LocalIdentity> {
        self.local.read().expect("local lock").clone()
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The cluster port's supervisor reports here.
    pub fn set_cluster_port(&self, state: ClusterPort) {
        self.cluster_port.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    pub fn watch_cluster_port(&self) -> tokio::sync::watch::Receiver<ClusterPort> {
        self.cluster_port.subscribe()
    }

    /// Resolves when this manager joined or left a swarm since the last call.
    pub async fn membership_changed(&self) {
        self.membership_changed.notified().await
    }

    pub fn root_ca(&self) -> Option<Arc<RootCa>> {
        self.ca.read().expect("ca lock").clone()
    }

    // ---- swarm ----

    /// `POST /swarm/init`: creates the root CA, the cluster, its tokens and this manager's node
    /// with a manager certificate from the new CA; returns the node ID.
    pub async fn init(&self, req: &api::InitRequest) -> Result<String, ControlError> {
        let _one_at_a_time = self.membership.lock().await;
        if self.store.get(CLUSTER_KEY).is_some() {
            return Err(ControlError::plain(
                503,
                "This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.",
            ));
        }
        if req.force_new_cluster {
            return Err(ControlError::bad_request(
                "--force-new-cluster is not supported: this manager is not part of a swarm, so there is nothing to recover",
            ));
        }
        let spec = spec::merge_init_spec(&req.spec, req.auto_lock_managers)?;
        refuse_unsupported(&spec, 0)?;
        let availability = match req.availability.as_str() {
            "" => "active".to_string(),
            a @ ("active" | "pause" | "drain") => a.to_string(),
            other => {
                return Err(ControlError::bad_request(format!(
                    "invalid Availability: {other:?}"
                )))
            }
        };
        let (listen, advertise) = self
            .config
            .resolve_addrs(&req.listen_addr, &req.advertise_addr)?;

        let ca =
            RootCa::create().map_err(|e| ControlError::internal("cannot create the root CA", e))?;
        let cluster_id = swarmguard_ca::new_id();
        let node_id = swarmguard_ca::new_id();
        let expiry = Duration::from_nanos(spec.ca_config.node_cert_expiry as u64);
        let (node_key_pem, csr) = swarmguard_ca::generate_node_key_and_csr();
        let issued = ca
            .issue_node_certificate(
                &swarmguard_ca::check_csr(&csr)
                    .map_err(|e| ControlError::internal("this manager's own CSR", e))?,
                &node_id,
                NodeRole::Manager,
                &cluster_id,
                expiry,
            )
            .map_err(|e| ControlError::internal("cannot issue this manager's certificate", e))?;

        let root_pem = String::from_utf8(ca.cert_pem().to_vec())
            .map_err(|e| ControlError::internal("root CA PEM is not UTF-8", e))?;
        let now = now_rfc3339();
        let cluster = ClusterRecord {
            id: cluster_id.clone(),
            created_at: now.clone(),
            updated_at: now.clone(),
            spec,
            root_ca_pem: root_pem.clone(),
            join_tokens: TokenPair {
                worker: JoinToken::generate(ca.cert_pem()).to_string(),
                manager: JoinToken::generate(ca.cert_pem()).to_string(),
            },
            last_forced_rotation: 0,
            removed_nodes: Default::default(),
            default_addr_pool: req.default_addr_pool.clone().filter(|p| !p.is_empty()),
            subnet_size: if req.subnet_size == 0 {
                24
            } else {
                req.subnet_size
            },
            data_path_port: if req.data_path_port == 0 {
                4789
            } else {
                req.data_path_port
            },
        };
        let root_record = RootCaRecord {
            cert_pem: root_pem,
            key_pkcs8_b64: B64.encode(ca.key_pkcs8_der().as_slice()),
        };
        let node = NodeRecord {
            id: node_id.clone(),
            created_at: now.clone(),
            updated_at: now,
            spec: NodeSpec {
                name: String::new(),
                labels: Some(Default::default()),
                role: "manager".into(),
                availability,
            },
            role: "manager".into(),
            description: local::describe_this_host(&ca),
            status: api::NodeStatus {
                state: "ready".into(),
                message: String::new(),
                addr: advertise.ip().to_string(),
            },
            manager_addr: Some(advertise.to_string()),
            certificate: CertificateRecord {
                state: "issued".into(),
                cert_pem: String::from_utf8_lossy(&issued.cert_pem).into_owned(),
                not_after: unix_seconds(issued.not_after),
                csr_b64: String::new(),
                err: String::new(),
            },
        };

        // The identity goes to disk first: a crash before the commit leaves files the next init
        // overwrites, while a commit without files would leave a cluster nobody can serve.
        let local = LocalIdentity::write(
            &self.config.data_dir,
            ca.cert_pem(),
            &issued.cert_pem,
            &node_key_pem,
            &node_id,
            listen,
            advertise,
        )
        .map_err(|e| ControlError::internal("cannot write this manager's certificate", e))?;

        let txn = Txn {
            checks: vec![Check::Absent {
                key: CLUSTER_KEY.into(),
            }],
            ops: vec![
                put_json(CLUSTER_KEY, &cluster)?,
                Op::Put {
                    key: ROOT_CA_KEY.into(),
                    value: Zeroizing::new(to_json(&root_record)?).to_vec(),
                },
                put_json(&node_key(&node_id), &node)?,
            ],
        };
        match self.apply(txn).await? {
            TxnOutcome::Committed { .. } => {}
            TxnOutcome::Conflict { .. } => {
                return Err(ControlError::plain(
                    503,
                    "This node is already part of a swarm. Use \"docker swarm leave\" to leave this swarm and join another one.",
                ))
            }
        }
        *self.ca.write().expect("ca lock") = Some(Arc::new(ca));
        *self.local.write().expect("local lock") = Some(local);
        // Whatever the port did before belongs to an earlier membership.
        self.set_cluster_port(ClusterPort::Stopped);
        self.membership_changed.notify_one();
        tracing::info!(cluster_id = %cluster_id, node_id = %node_id, "swarm initialized");
        Ok(node_id)
    }

    pub fn cluster(&self) -> Result<ClusterView, ControlError> {
        let v = self
            .store
            .get(CLUSTER_KEY)
            .ok_or_else(ControlError::no_manager)?;
        Ok(ClusterView {
            record: from_json(&v)?,
            version: v.version,
        })
    }

    /// `POST /swarm/update`: replaces the spec and rotates tokens, if `version` is current.
    pub async fn update_swarm(
        &self,
        version: u64,
        req: &api::Spec,
        rotate: Rotate,
    ) -> Result<(), ControlError> {
        let current = self.cluster()?;
        if current.version != version {
            return Err(out_of_sequence());
        }
        let spec = spec::replace_spec(req)?;
        refuse_unsupported(&spec, current.record.last_forced_rotation)?;
        if rotate.manager_unlock_key {
            return Err(ControlError::rpc(
                Code::FailedPrecondition,
                "cannot rotate the unlock key: autolock is not turned on",
            ));
        }
        let ca = self.root_ca().ok_or_else(ControlError::no_manager)?;
        let mut record = current.record;
        record.spec = spec;
        if rotate.worker_token {
            record.join_tokens.worker = JoinToken::generate(ca.cert_pem()).to_string();
        }
        if rotate.manager_token {
            record.join_tokens.manager = JoinToken::generate(ca.cert_pem()).to_string();
        }
        record.updated_at = now_rfc3339();
        let txn = Txn {
            checks: vec![Check::Version {
                key: CLUSTER_KEY.into(),
                version,
            }],
            ops: vec![put_json(CLUSTER_KEY, &record)?],
        };
        match self.apply(txn).await? {
            TxnOutcome::Committed { .. } => {
                if rotate.worker_token || rotate.manager_token {
                    tracing::info!(
                        worker = rotate.worker_token,
                        manager = rotate.manager_token,
                        "join token rotated; the old token is refused from now on"
                    );
                }
                Ok(())
            }
            TxnOutcome::Conflict { .. } => Err(out_of_sequence()),
        }
    }

    /// `POST /swarm/leave`: a manager leaving erases the cluster, so it needs `force`.
    pub async fn leave(&self, force: bool) -> Result<(), ControlError> {
        let _one_at_a_time = self.membership.lock().await;
        if self.store.get(CLUSTER_KEY).is_none() {
            return Err(ControlError::not_in_swarm());
        }
        if !force {
            return Err(ControlError::plain(
                503,
                "You are attempting to leave the swarm on a node that is participating as a manager. Removing the last manager erases all current state of the swarm. Use `--force` to ignore this message. ",
            ));
        }
        let mut ops: Vec<Op> = vec![
            Op::Delete {
                key: CLUSTER_KEY.into(),
            },
            Op::Delete {
                key: ROOT_CA_KEY.into(),
            },
        ];
        for (key, _) in self.store.list(NODE_PREFIX) {
            ops.push(Op::Delete { key });
        }
        self.apply(Txn {
            checks: vec![],
            ops,
        })
        .await?;
        *self.ca.write().expect("ca lock") = None;
        *self.local.write().expect("local lock") = None;
        self.membership_changed.notify_one();
        LocalIdentity::remove(&self.config.data_dir)
            .map_err(|e| ControlError::internal("cannot remove this manager's certificate", e))?;
        tracing::info!("left the swarm; cluster state erased");
        Ok(())
    }

    // ---- nodes ----

    pub fn nodes(&self) -> Result<Vec<NodeView>, ControlError> {
        self.cluster()?;
        self.store
            .list(NODE_PREFIX)
            .into_iter()
            .map(|(_, v)| {
                Ok(NodeView {
                    record: from_json(&v)?,
                    version: v.version,
                })
            })
            .collect()
    }

    /// Finds a node by full ID, then by name, then by unique ID prefix (Docker's order).
    pub fn node(&self, reference: &str) -> Result<NodeView, ControlError> {
        let nodes = self.nodes()?;
        if let Some(n) = nodes.iter().position(|n| n.record.id == reference) {
            return Ok(nodes.into_iter().nth(n).expect("index"));
        }
        let pick = |matches: Vec<NodeView>| -> Result<Option<NodeView>, ControlError> {
            match matches.len() {
                0 => Ok(None),
                1 => Ok(matches.into_iter().next()),
                n => Err(ControlError::not_found(format!(
                    "node {reference} is ambiguous ({n} matches found)"
                ))),
            }
        };
        let (by_name, rest): (Vec<_>, Vec<_>) = nodes
            .into_iter()
            .partition(|n| node_name(&n.record) == reference);
        if let Some(n) = pick(by_name)? {
            return Ok(n);
        }
        if !reference.is_empty() {
            let by_prefix = rest
                .into_iter()
                .filter(|n| n.record.id.starts_with(reference))
                .collect();
            if let Some(n) = pick(by_prefix)? {
                return Ok(n);
            }
        }
        Err(ControlError::not_found(format!(
            "node {reference} not found"
        )))
    }

    /// `POST /nodes/{id}/update`: name, labels, availability and desired role.
    pub async fn update_node(
        &self,
        reference: &str,
        version: u64,
        spec: &NodeSpec,
    ) -> Result<(), ControlError> {
        let role = match spec.role.as_str() {
            "manager" | "worker" => spec.role.clone(),
            other => {
                return Err(ControlError::bad_request(format!(
                    "invalid Role: {other:?}"
                )))
            }
        };
        let availability = match spec.availability.as_str() {
            "active" | "pause" | "drain" => spec.availability.clone(),
            other => {
                return Err(ControlError::bad_request(format!(
                    "invalid Availability: {other:?}"
                )))
            }
        };
        check_labels(spec.labels.as_ref())?;
        let current = self.node(reference)?;
        if current.version != version {
            return Err(out_of_sequence());
        }
        let mut checks = vec![Check::Version {
            key: node_key(&current.record.id),
            version,
        }];
        if current.record.spec.role == "worker"
            && role == "manager"
            && !is_swarmguard_agent(&current.record)
        {
            // A promoted dockerd would start SwarmKit's manager and try to join our Raft, which
            // swarmguard does not speak: refuse now rather than leave a node that never comes up.
            return Err(ControlError::rpc(
                Code::FailedPrecondition,
                format!(
                    "node {} runs dockerd ({}), which cannot become a swarmguard manager: swarmguard managers do not speak SwarmKit's Raft protocol. Add managers by starting `swarmguard manager` on that host instead",
                    current.record.id,
                    match current.record.description.engine.engine_version.as_str() {
                        "" => "engine version unknown",
                        v => v,
                    }
                ),
            ));
        }
        if current.record.spec.role == "manager" && role == "worker" {
            // Demoting the last manager would leave nobody to run the cluster.
            let managers: Vec<NodeView> = self
                .nodes()?
                .into_iter()
                .filter(|n| n.record.spec.role == "manager")
                .collect();
            if managers.len() <= 1 {
                return Err(ControlError::rpc(
                    Code::FailedPrecondition,
                    "attempting to demote the last manager of the swarm",
                ));
            }
            checks.extend(managers.iter().map(|m| Check::Version {
                key: node_key(&m.record.id),
                version: m.version,
            }));
        }
        let mut record = current.record;
        record.spec = NodeSpec {
            name: spec.name.clone(),
            labels: Some(spec.labels.clone().unwrap_or_default()),
            role,
            availability,
        };
        record.updated_at = now_rfc3339();
        let key = node_key(&record.id);
        match self
            .apply(Txn {
                checks,
                ops: vec![put_json(&key, &record)?],
            })
            .await?
        {
            TxnOutcome::Committed { .. } => Ok(()),
            TxnOutcome::Conflict { .. } => Err(out_of_sequence()),
        }
    }

    /// `DELETE /nodes/{id}`: the node is deleted and its certificate refused from now on.
    pub async fn remove_node(&self, reference: &str, force: bool) -> Result<(), ControlError> {
        let node = self.node(reference)?;
        let id = node.record.id.clone();
        if node.record.role == "manager" || node.record.spec.role == "manager" {
            return Err(ControlError::rpc(
                Code::FailedPrecondition,
                format!("node {id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"),
            ));
        }
        if !force && node.record.status.state != "down" {
            return Err(ControlError::rpc(
                Code::FailedPrecondition,
                format!("node {id} is not down and can't be removed"),
            ));
        }
        let cluster = self.cluster()?;
        let mut record = cluster.record;
        let forget_at = node.record.certificate.not_after.max(unix_now()) + REMOVED_NODE_GRACE;
        record.removed_nodes.insert(id.clone(), forget_at);
        let now = unix_now();
        record.removed_nodes.retain(|_, until| *until > now);
        record.updated_at = now_rfc3339();
        let key = node_key(&id);
        let txn = Txn {
            checks: vec![
                Check::Version {
                    key: key.clone(),
                    version: node.version,
                },
                Check::Version {
                    key: CLUSTER_KEY.into(),
                    version: cluster.version,
                },
            ],
            ops: vec![Op::Delete { key }, put_json(CLUSTER_KEY, &record)?],
        };
        match self.apply(txn).await? {
            TxnOutcome::Committed { .. } => {
                tracing::info!(node_id = %id, "node removed; its certificate is refused from now on");
                Ok(())
            }
            TxnOutcome::Conflict { .. } => Err(out_of_sequence()),
        }
    }

    /// Renews this manager's own certificate with a fresh key (same node, role and cluster):
    /// files first (see [`LocalIdentity::replace_certificate`]), then the node record, whose
    /// change makes the cluster port load the new pair. Returns the new NotAfter.
    pub async fn renew_own_certificate(&self) -> Result<SystemTime, ControlError> {
        let _one_at_a_time = self.membership.lock().await;
        let not_in_swarm = || ControlError::plain(503, "this manager is not part of a swarm");
        let local = self.local_identity().ok_or_else(not_in_swarm)?;
        let ca = self.root_ca().ok_or_else(not_in_swarm)?;
        let cluster = self.cluster()?.record;
        let expiry = match cluster.spec.ca_config.node_cert_expiry {
            n if n > 0 => Duration::from_nanos(n as u64),
            _ => swarmguard_ca::DEFAULT_NODE_CERT_EXPIRY,
        };
        let (key_pem, csr) = swarmguard_ca::generate_node_key_and_csr();
        let issued = ca
            .issue_node_certificate(
                &swarmguard_ca::check_csr(&csr)
                    .map_err(|e| ControlError::internal("this manager's own CSR", e))?,
                &local.node_id,
                NodeRole::Manager,
                &cluster.id,
                expiry,
            )
            .map_err(|e| ControlError::internal("cannot renew this manager's certificate", e))?;
        LocalIdentity::replace_certificate(&self.config.data_dir, &issued.cert_pem, &key_pem)
            .map_err(|e| ControlError::internal("cannot save this manager's new certificate", e))?;
        let key = node_key(&local.node_id);
        for _ in 0..5 {
            let Some(current) = self.store.get(&key) else {
                break;
            };
            let mut record: NodeRecord = serde_json::from_slice(&current.value)
                .map_err(|e| ControlError::internal("cannot decode this manager's node", e))?;
            record.certificate.state = "issued".into();
            record.certificate.cert_pem = String::from_utf8_lossy(&issued.cert_pem).into_owned();
            record.certificate.not_after = unix_seconds(issued.not_after);
            record.certificate.err.clear();
            let txn = Txn {
                checks: vec![Check::Version {
                    key: key.clone(),
                    version: current.version,
                }],
                ops: vec![put_json(&key, &record)?],
            };
            if let TxnOutcome::Committed { .. } = self.apply(txn).await? {
                break;
            }
        }
        tracing::info!(node_id = %local.node_id, not_after = %unix_seconds(issued.not_after), "renewed this manager's certificate");
        Ok(issued.not_after)
    }

    async fn apply(&self, txn: Txn) -> Result<TxnOutcome, ControlError> {
        self.store
            .apply(txn)
            .await
            .map_err(|e| ControlError::internal("the cluster store refused the write", e))
    }
}

/// Root rotation and signing-CA changes come with their own issue; until then a request that
/// would start one is refused rather than half-done.
fn refuse_unsupported(spec: &api::Spec, last_forced_rotation: u64) -> Result<(), ControlError> {
    if spec.ca_config.force_rotate != last_forced_rotation
        || !spec.ca_config.signing_ca_cert.is_empty()
        || !spec.ca_config.signing_ca_key.is_empty()
    {
        return Err(ControlError::rpc(
            Code::Unimplemented,
            format!(
                "root CA rotation is not supported by this swarmguard version; send back ForceRotate={last_forced_rotation} as GET /swarm returned it and no signing CA"
            ),
        ));
    }
    if spec.encryption_config.auto_lock_managers {
        return Err(ControlError::rpc(
            Code::Unimplemented,
            "autolock is not available in this swarmguard version: the store's data key is protected by file permissions only; run without --autolock",
        ));
    }
    Ok(())
}

fn check_labels(
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<(), ControlError> {
    if let Some(labels) = labels {
        let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        if labels.len() > 256 || bytes > 64 * 1024 {
            return Err(ControlError::bad_request(
                "too many node labels: at most 256 labels and 64 KiB are accepted",
            ));
        }
    }
    Ok(())
}

pub fn node_name(n: &NodeRecord) -> &str {
    if n.spec.name.is_empty() {
        &n.description.hostname
    } else {
        &n.spec.name
    }
}

/// Nodes that run `swarmguard agent` (or are swarmguard managers) say so in their engine version.
fn is_swarmguard_agent(node: &NodeRecord) -> bool {
    node.description
        .engine
        .engine_version
        .starts_with("swarmguard")
}

fn out_of_sequence() -> ControlError {
    ControlError::rpc(Code::Unknown, "update out of sequence")
}

fn to_json<T: serde::Serialize>(value: &T) -> Result<Vec<u8>, ControlError> {
    serde_json::to_vec(value).map_err(|e| ControlError::internal("cannot encode a record", e))
}

fn put_json<T: serde::Serialize>(key: &str, value: &T) -> Result<Op, ControlError> {
    Ok(Op::Put {
        key: key.to_string(),
        value: to_json(value)?,
    })
}

fn from_json<T: serde::de::DeserializeOwned>(v: &Versioned) -> Result<T, ControlError> {
    serde_json::from_slice(&v.value)
        .map_err(|e| ControlError::internal("cannot decode a record", e))
}

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

pub fn rfc3339(t: SystemTime) -> String {
    time::OffsetDateTime::from(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".into())
}

pub fn unix_now() -> i64 {
    unix_seconds(SystemTime::now())
}

pub fn unix_seconds(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

/// An IP or `IP:port`; interface names are not resolved.
pub fn parse_addr(s: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa);
    }
    s.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &std::path::Path) -> ManagerConfig {
        ManagerConfig {
            data_dir: dir.to_path_buf(),
            listen_addr: "0.0.0.0:2377".parse().unwrap(),
            advertise_addr: Some("127.0.0.1".into()),
        }
    }

    fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.is_file() {
                    out.push(p);
                }
            }
        }
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Two inits at once: exactly one wins, and the identity on disk is the winner's, so the
    /// manager still loads after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_inits_leave_one_consistent_identity() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let control = Arc::new(Control::open(store.clone(), config(dir.path())).unwrap());
        let req = api::InitRequest {
            advertise_addr: "127.0.0.1".into(),
            ..Default::default()
        };
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (c, r) = (control.clone(), req.clone());
                tokio::spawn(async move { c.init(&r).await })
            })
            .collect();
        let mut won = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(id) => won.push(id),
                Err(e) => assert!(e.message.contains("already part of a swarm"), "{e}"),
            }
        }
        assert_eq!(won.len(), 1, "exactly one init wins");
        drop(control);
        let reopened = Control::open(store.clone(), config(dir.path())).unwrap();
        assert_eq!(reopened.local_node_id(), Some(won[0].clone()));
        store.shutdown().await.unwrap();
    }

    /// The root CA key and the store's data key never sit in clear in the data dir, in any
    /// encoding a careless writer might use (raw, base64, hex). The DEK's own key file is the one
    /// place it lives until autolock wraps it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn root_key_and_dek_never_in_clear_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let control = Control::open(store.clone(), config(dir.path())).unwrap();
        control
            .init(&api::InitRequest {
                advertise_addr: "127.0.0.1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let key = control.root_ca().unwrap().key_pkcs8_der();
        store.shutdown().await.unwrap();
        drop(control);

        let dek = swarmguard_secrets::keyfile::load_dek(&dir.path().join("keys/dek"))
            .unwrap()
            .expose_bytes()
            .to_vec();
        let encodings = |bytes: &[u8], secret: std::ops::Range<usize>| -> Vec<Vec<u8>> {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            vec![
                bytes.to_vec(),
                B64.encode(bytes).into_bytes(),
                hex.into_bytes(),
                // The secret part alone, in case a writer split or re-wrapped the encoding.
                bytes[secret].to_vec(),
            ]
        };
        // PKCS#8 of a P-256 key: 36 bytes of fixed header, then the 32-byte private scalar
        // (the public key that follows is public and sits in the certificate).
        assert_eq!(key.len(), 138);
        let key_encodings = encodings(&key, 36..68);
        let dek_encodings = encodings(&dek, 0..32);
        let files = files_under(dir.path());
        assert!(files.len() > 3, "{files:?}");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            for enc in &key_encodings {
                assert!(
                    !contains(&data, enc),
                    "root key found in {}",
                    file.display()
                );
            }
            if file.ends_with("keys/dek") {
                continue;
            }
            for enc in &dek_encodings {
                assert!(!contains(&data, enc), "DEK found in {}", file.display());
            }
        }
    }
}
