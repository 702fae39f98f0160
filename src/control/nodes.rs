//! Nodes: what `docker node ls|inspect|update|rm` does, and what the cluster port asks of the
//! domain for a node: joins by token, renewals, issuance status, sessions and liveness.

use std::time::{Duration, SystemTime};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use swarmguard_ca::{CheckedCsr, NodeRole};

use super::audit::AuditEvent;
use super::ca::local::LocalIdentity;
use super::ca::signer::{record_outcome, Inline, SignRequest};
use super::error::{Code, ControlError};
use super::records::{
    self, node_key, CertState, CertificateRecord, ClusterRecord, NodeRecord, NodeSoftware,
    CLUSTER_KEY, NODE_PREFIX,
};
use super::types::{Availability, NodeDescription, NodeSpec, NodeState, NodeStatus, Role};
use super::{out_of_sequence, Control, NodeView};
use crate::store::{Check, Op, Txn, TxnOutcome};
use crate::util::{now_rfc3339, unix_now, unix_seconds};

/// One week: how long a removed node stays refused after its certificate expires.
const REMOVED_NODE_GRACE: i64 = 7 * 24 * 3600;
/// Node IDs drawn before a join gives up on finding a free one (a collision is ~2^-129).
const ID_TRIES: usize = 3;

/// The shortest time between two renewals of one node's certificate, unless it must renew (its
/// role changed, its certificate must rotate, or the one it holds is past half its life): a
/// renewal rewrites the node record, so a node certificate alone must not be able to make the
/// manager write without bound (audit finding 2).
pub const RENEWAL_INTERVAL: Duration = Duration::from_secs(300);
/// Renewal times remembered before old ones are forgotten (one per node that renewed).
const MAX_REMEMBERED_RENEWALS: usize = 4096;

/// When each node last renewed, and the interval enforced (tests shorten it).
pub struct Renewals {
    interval: Duration,
    last: std::collections::HashMap<String, tokio::time::Instant>,
}

impl Default for Renewals {
    fn default() -> Self {
        Renewals {
            interval: RENEWAL_INTERVAL,
            last: Default::default(),
        }
    }
}

/// A new node's request, as the cluster port received it.
pub struct JoinRequest<'a> {
    pub csr_pem: &'a [u8],
    pub availability: Availability,
    /// The peer's IP, recorded as the node's address.
    pub addr: String,
}

impl Control {
    pub fn nodes(&self) -> Result<Vec<NodeView>, ControlError> {
        self.cluster()?;
        records::list(&self.store, NODE_PREFIX)
    }

    /// One node by ID, or `None`.
    pub fn node_by_id(&self, id: &str) -> Result<Option<NodeView>, ControlError> {
        records::get(&self.store, &node_key(id))
    }

    /// Finds a node as dockerd 20.10 does (`daemon/cluster/helpers.go` `getNode`): the full ID,
    /// then the name, then a unique ID prefix. One departure, never seen without an attacker:
    /// a name that is also a prefix of *another* node's ID is ambiguous instead of the named
    /// node, because a joining node chooses its hostname and could otherwise take over the
    /// prefix an operator types for a real node (`docker node promote 3f2a`).
    pub fn node(&self, reference: &str) -> Result<NodeView, ControlError> {
        resolve(self.nodes()?, reference)
    }

    /// `POST /nodes/{id}/update`: name, labels, availability and desired role.
    pub async fn update_node(
        &self,
        reference: &str,
        version: u64,
        spec: NodeSpec,
    ) -> Result<(), ControlError> {
        check_labels(spec.labels.as_ref())?;
        let current = self.node(reference)?;
        if current.version != version {
            return Err(out_of_sequence());
        }
        let mut checks = vec![Check::Version {
            key: node_key(&current.record.id),
            version,
        }];
        let (from, to) = (current.record.spec.role, spec.role);
        if from == Role::Worker && to == Role::Manager {
            refuse_promoting_dockerd(&current.record)?;
        }
        let demoted = from == Role::Manager && to == Role::Worker;
        if demoted {
            checks.extend(self.guard_last_manager()?);
        }
        let mut record = current.record;
        if let (true, Some(raft_id)) = (demoted, record.raft_id) {
            // Out of the group first (refused if that breaks quorum), as SwarmKit does.
            self.remove_from_group(raft_id).await?;
            record.raft_id = None;
            record.manager_addr = None;
        }
        if demoted {
            // The observed role follows a demotion at once (SwarmKit's role manager does so once
            // the node left Raft; other nodes are never in swarmguard's Raft), so the manager
            // certificate the node still holds stops carrying manager rights now, not at its
            // next renewal. A promotion waits for the renewal that brings the manager OU.
            record.role = Role::Worker;
        }
        record.spec = NodeSpec {
            labels: Some(spec.labels.unwrap_or_default()),
            ..spec
        };
        record.updated_at = now_rfc3339();
        let key = node_key(&record.id);
        match self
            .apply(Txn {
                checks,
                ops: vec![records::put(&key, &record)?],
            })
            .await?
        {
            TxnOutcome::Committed { .. } => Ok(()),
            TxnOutcome::Conflict { .. } => Err(out_of_sequence()),
        }
    }

    /// Demoting the last manager would leave nobody to run the cluster. Returns checks that
    /// keep the managers as they were read.
    fn guard_last_manager(&self) -> Result<Vec<Check>, ControlError> {
        let managers: Vec<NodeView> = self
            .nodes()?
            .into_iter()
            .filter(|n| n.record.spec.role == Role::Manager)
            .collect();
        if managers.len() <= 1 {
            return Err(ControlError::rpc(
                Code::FailedPrecondition,
                "attempting to demote the last manager of the swarm",
            ));
        }
        Ok(managers
            .iter()
            .map(|m| Check::Version {
                key: node_key(&m.record.id),
                version: m.version,
            })
            .collect())
    }

    /// `DELETE /nodes/{id}`: the node is deleted and its certificate refused from now on.
    pub async fn remove_node(&self, reference: &str, force: bool) -> Result<(), ControlError> {
        let node = self.node(reference)?;
        let id = node.record.id.clone();
        if node.record.role == Role::Manager || node.record.spec.role == Role::Manager {
            return Err(ControlError::rpc(
                Code::FailedPrecondition,
                format!("node {id} is a cluster manager and is a member of the raft cluster. It must be demoted to worker before removal"),
            ));
        }
        if !force && node.record.status.state != NodeState::Down {
            return Err(ControlError::rpc(
                Code::FailedPrecondition,
                format!("node {id} is not down and can't be removed"),
            ));
        }
        let cluster = self.cluster()?;
        let mut record = cluster.record.clone();
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
            ops: vec![Op::Delete { key }, records::put(CLUSTER_KEY, &record)?],
        };
        match self.apply(txn).await? {
            TxnOutcome::Committed { .. } => {
                tracing::info!(node_id = %id, "node removed; its certificate is refused from now on");
                Ok(())
            }
            TxnOutcome::Conflict { .. } => Err(out_of_sequence()),
        }
    }

    // ---- the cluster port's requests ----

    /// Which role a join token grants, comparing both tokens in constant time.
    pub fn role_for_token(cluster: &ClusterRecord, token: &str) -> Option<NodeRole> {
        let as_manager = swarmguard_ca::tokens_equal(token, &cluster.join_tokens.manager);
        let as_worker = swarmguard_ca::tokens_equal(token, &cluster.join_tokens.worker);
        match (token.is_empty(), as_manager, as_worker) {
            (false, true, _) => Some(NodeRole::Manager),
            (false, false, true) => Some(NodeRole::Worker),
            _ => None,
        }
    }

    /// A new node joins with `role` (already decided from its token): its record is written
    /// with the certificate signed in the same write when the signer can sign at once, else
    /// PENDING for the reconcile loop. Returns the new node ID.
    pub async fn join(
        &self,
        role: NodeRole,
        csr: &CheckedCsr,
        req: &JoinRequest<'_>,
    ) -> Result<String, ControlError> {
        let cluster = self.cluster()?;
        let material = self.security.current().ok_or(ControlError::NotManager)?;
        let now = now_rfc3339();
        for _ in 0..ID_TRIES {
            let node_id = swarmguard_ca::new_id();
            let mut record = new_node_record(&node_id, role.into(), req, &now);
            let sign = SignRequest {
                csr: csr.clone(),
                csr_pem: req.csr_pem.to_vec(),
                node_id: node_id.clone(),
                role,
                cluster_id: cluster.record.id.clone(),
                expiry: self.node_cert_expiry(),
            };
            // An external CA that answers quickly signs before the one store write.
            let inline = Inline::sign(&material.signer, sign).await;
            if let Some(outcome) = inline.as_ref().and_then(Inline::outcome) {
                record_outcome(&mut record, outcome);
            }
            let key = node_key(&node_id);
            let txn = Txn {
                checks: vec![Check::Absent { key: key.clone() }],
                ops: vec![records::put(&key, &record)?],
            };
            if let Some(i) = &inline {
                i.claim(&self.handoffs, &node_id);
            }
            let applied = self.apply(txn).await;
            if !matches!(applied, Ok(TxnOutcome::Committed { .. })) {
                self.handoffs.cancel(&node_id);
            }
            if let TxnOutcome::Committed { .. } = applied? {
                if let Some(i) = inline {
                    let csr_b64 = record.certificate.csr_b64.clone();
                    i.hand_off(self, node_id.clone(), csr_b64, record.role);
                }
                tracing::info!(node_id = %node_id, role = %Role::from(role), state = ?record.certificate.state, "node joined with a token");
                let role = Role::from(role).as_str().to_string();
                // Queued together: one group-committed write covers both.
                let _joined = self.audit.record(AuditEvent::NodeJoined {
                    node_id: node_id.clone(),
                    role: role.clone(),
                    addr: req.addr.clone(),
                });
                if record.certificate.state == CertState::Issued {
                    let _issued = self.audit.record(AuditEvent::CertificateIssued {
                        node_id: node_id.clone(),
                        role,
                        renewal: false,
                    });
                }
                // Both lines on disk before the node hears it joined.
                self.audit.synced().await;
                return Ok(node_id);
            }
        }
        Err(ControlError::internal(
            "could not allocate a unique node ID",
            "every ID drawn was taken",
        ))
    }

    /// The shortest time allowed between two renewals of one node (default [`RENEWAL_INTERVAL`]).
    pub fn set_renewal_interval(&self, interval: Duration) {
        self.lock_renewals().interval = interval;
    }

    fn lock_renewals(&self) -> std::sync::MutexGuard<'_, Renewals> {
        self.renewals.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `node_id` may renew now; if so, the renewal is counted. Call before any costly
    /// work on the request. Refused when the node renewed less than the interval ago and
    /// nothing makes it renew early: its role changed, its certificate must rotate, or the
    /// certificate in its record is past half its life (or unusable).
    pub fn admit_renewal(&self, node_id: &str) -> Result<(), ControlError> {
        let must = match self.node_by_id(node_id)? {
            Some(n) => must_renew(&n.record),
            // `renew` answers "not registered" without writing anything.
            None => return Ok(()),
        };
        let now = tokio::time::Instant::now();
        let mut r = self.lock_renewals();
        let interval = r.interval;
        if let Some(last) = r.last.get(node_id) {
            let since = now.duration_since(*last);
            if since < interval && !must {
                return Err(ControlError::rpc(
                    Code::Unavailable,
                    format!(
                        "node {node_id} renewed its certificate {}s ago; renewals are allowed once every {}s",
                        since.as_secs(),
                        interval.as_secs()
                    ),
                ));
            }
        }
        if r.last.len() >= MAX_REMEMBERED_RENEWALS {
            r.last.retain(|_, t| now.duration_since(*t) < interval);
        }
        r.last.insert(node_id.to_string(), now);
        Ok(())
    }

    /// A renewal that was admitted did not happen (refused or failed): it does not count.
    pub fn forget_renewal(&self, node_id: &str) {
        self.lock_renewals().last.remove(node_id);
    }

    /// A node renews its certificate: the role reconciles to the desired one (promote/demote)
    /// and the signer signs in the same write when it can. `Ok(None)`: no such node.
    pub async fn renew(
        &self,
        node_id: &str,
        csr: &CheckedCsr,
        csr_pem: &[u8],
    ) -> Result<Option<NodeRecord>, ControlError> {
        let cluster = self.cluster()?;
        let material = self.security.current().ok_or(ControlError::NotManager)?;
        let expiry = self.node_cert_expiry();
        let csr_b64 = B64.encode(csr_pem);
        let request = |id: &str, role: Role| SignRequest {
            csr: csr.clone(),
            csr_pem: csr_pem.to_vec(),
            node_id: id.to_string(),
            role: role.into(),
            cluster_id: cluster.record.id.clone(),
            expiry,
        };
        // A signer that needs I/O signs before the write, for the role the node will have;
        // the internal CA signs inside it, as before.
        let inline = match material.signer.signs_inline() {
            true => match self.node_by_id(node_id)? {
                Some(n) => Inline::sign(&material.signer, request(node_id, n.record.spec.role))
                    .await
                    .map(|i| (i, n.record.spec.role)),
                None => return Ok(None),
            },
            false => None,
        };
        if let Some((i, _)) = &inline {
            i.claim(&self.handoffs, node_id);
        }
        let updated = records::update(
            &self.store,
            &node_key(node_id),
            "node",
            |n: &mut NodeRecord| {
                n.role = n.spec.role;
                n.certificate.state = CertState::Renew;
                n.certificate.csr_b64 = csr_b64.clone();
                n.certificate.err.clear();
                let outcome = match &inline {
                    // Signed for the role the node still has: that outcome; a role changed
                    // meanwhile leaves it to the reconcile loop.
                    Some((i, role)) if *role == n.role => i.outcome(),
                    Some(_) => None,
                    None => material.signer.sign_now(&request(&n.id, n.role)),
                };
                if let Some(outcome) = outcome {
                    record_outcome(n, outcome);
                }
                Ok(())
            },
        )
        .await;
        match (&updated, inline) {
            (Ok(Some(n)), Some((i, role))) if n.record.role == role => {
                i.hand_off(self, node_id.into(), csr_b64, role)
            }
            (_, Some(_)) => self.handoffs.cancel(node_id),
            _ => {}
        }
        let updated = updated?;
        if let Some(n) = updated
            .as_ref()
            .filter(|n| n.record.certificate.state == CertState::Issued)
        {
            self.audit
                .record(AuditEvent::CertificateIssued {
                    node_id: n.record.id.clone(),
                    role: n.record.role.as_str().into(),
                    renewal: true,
                })
                .await;
        }
        Ok(updated.map(|s| s.record))
    }

    /// The node's record once its certificate is in a final state, or as it is after `wait`.
    pub async fn certificate_status(
        &self,
        node_id: &str,
        wait: Duration,
    ) -> Result<Option<NodeRecord>, ControlError> {
        let mut events = self.subscribe_to(&[records::NODE_PREFIX]);
        let key = node_key(node_id);
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let Some(node) = self.node_by_id(node_id)? else {
                return Ok(None);
            };
            if node.record.certificate.state.is_final() {
                return Ok(Some(node.record));
            }
            // Wait for a change of this node, bounded; then answer with what there is.
            let changed = async {
                loop {
                    match events.recv().await {
                        Ok(a) if a.keys.contains(&key) => return,
                        Ok(_) => continue,
                        Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => return,
                        Err(tokio::sync::broadcast::error::RecvError::Closed) => {
                            std::future::pending::<()>().await
                        }
                    }
                }
            };
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                return Ok(Some(node.record));
            }
        }
    }

    /// A node opened a session: it is Ready at `addr`, with the description it sent (if any).
    /// `Ok(None)`: no such node.
    pub async fn node_ready(
        &self,
        node_id: &str,
        description: Option<NodeDescription>,
        addr: String,
        session_manager: &str,
    ) -> Result<Option<NodeRecord>, ControlError> {
        let root_pem = self.cluster()?.record.root_ca_pem.clone();
        let description = description.map(|mut d| {
            d.tls_info.trust_root = kept_trust_root(&d.tls_info.trust_root, &root_pem);
            d
        });
        let updated = records::update(
            &self.store,
            &node_key(node_id),
            "node",
            |n: &mut NodeRecord| {
                if let Some(d) = &description {
                    n.description = d.clone();
                    if n.software.is_unrecorded() {
                        n.software = software_of(d);
                    }
                }
                n.status = NodeStatus {
                    state: NodeState::Ready,
                    message: String::new(),
                    addr: addr.clone(),
                };
                n.session_manager = Some(session_manager.to_string());
                Ok(())
            },
        )
        .await?;
        Ok(updated.map(|s| s.record))
    }

    /// A node missed its heartbeats at `session_manager`. Nothing changes when its session
    /// has moved to another manager meanwhile: only the manager holding it may say it is gone.
    pub async fn node_down(
        &self,
        node_id: &str,
        session_manager: &str,
        message: &str,
    ) -> Result<(), ControlError> {
        records::update(
            &self.store,
            &node_key(node_id),
            "node",
            |n: &mut NodeRecord| {
                if n.session_manager
                    .as_deref()
                    .is_some_and(|m| m != session_manager)
                {
                    return Ok(());
                }
                n.status.state = NodeState::Down;
                n.status.message = message.to_string();
                Ok(())
            },
        )
        .await
        .map(|_| ())
    }

    /// Renews this manager's own certificate with a fresh key (same node, role and cluster):
    /// files first (see [`LocalIdentity::replace_certificate`]), then the node record, whose
    /// change makes the security material reload. Returns the new NotAfter.
    pub async fn renew_own_certificate(&self) -> Result<SystemTime, ControlError> {
        let _one_at_a_time = self.membership.lock().await;
        let not_in_swarm =
            || ControlError::Unavailable("this manager is not part of a swarm".into());
        let material = self.security.current().ok_or_else(not_in_swarm)?;
        let node_id = material.identity.node_id.clone();
        let (key_pem, csr) = swarmguard_ca::generate_node_key_and_csr();
        let checked = swarmguard_ca::check_csr(&csr)
            .map_err(|e| ControlError::internal("this manager's own CSR", e))?;
        // Through the signer, so a manager of an external-CA cluster renews at the external CA.
        let issued = material
            .signer
            .sign(super::ca::signer::SignRequest {
                csr: checked,
                csr_pem: csr,
                node_id: node_id.clone(),
                role: NodeRole::Manager,
                cluster_id: material.cluster_id.clone(),
                expiry: self.node_cert_expiry(),
            })
            .await
            .map_err(|e| ControlError::internal("cannot renew this manager's certificate", e))?;
        LocalIdentity::replace_certificate(
            &self.config.data_dir,
            &self.key_codec(),
            &issued.cert_pem,
            &key_pem,
        )
        .map_err(|e| ControlError::internal("cannot save this manager's new certificate", e))?;
        records::update(
            &self.store,
            &node_key(&node_id),
            "node",
            |n: &mut NodeRecord| {
                record_outcome(n, Ok(issued.clone()));
                // What this manager's certificate now chains to (a rotation converges on it).
                n.description.tls_info =
                    super::ca::local::chain_tls_info(&material.root, &issued.cert_pem);
                Ok(())
            },
        )
        .await?;
        tracing::info!(node_id = %node_id, not_after = %unix_seconds(issued.not_after), "renewed this manager's certificate");
        Ok(issued.not_after)
    }
}

impl Control {
    /// Keeps this manager's reported TLS info what its certificate and trusted root are (a
    /// follower after a rotation finished; the rotation waits on what nodes report). Renews at
    /// once when the leader marked this manager's certificate ROTATE.
    pub async fn sync_own_certificate(&self) -> Result<(), ControlError> {
        let Some(material) = self.security.current() else {
            return Ok(());
        };
        let Some(own) = self.node_by_id(&material.identity.node_id)? else {
            return Ok(());
        };
        if own.record.certificate.state == CertState::Rotate {
            self.renew_own_certificate().await?;
            return Ok(());
        }
        let rewritten =
            LocalIdentity::sync_root_file(&self.config.data_dir, material.root.cert_pem())
                .map_err(|e| {
                    ControlError::internal("cannot write this manager's root CA file", e)
                })?;
        if rewritten {
            tracing::info!("this manager's swarm-root-ca.crt now holds the swarm's current root");
        }
        let info = super::ca::local::chain_tls_info(&material.root, &material.cert_pem);
        if own.record.description.tls_info != info {
            self.record_tls_info(&own.record.id, info).await?;
        }
        Ok(())
    }

    /// Writes the TLS info a manager reports of itself into its node record (what a rotation
    /// converges on).
    pub(crate) async fn record_tls_info(
        &self,
        node_id: &str,
        info: super::types::TlsInfo,
    ) -> Result<(), ControlError> {
        records::update(
            &self.store,
            &node_key(node_id),
            "node",
            |n: &mut NodeRecord| {
                n.description.tls_info = info.clone();
                Ok(())
            },
        )
        .await
        .map(|_| ())
    }
}

fn new_node_record(node_id: &str, role: Role, req: &JoinRequest<'_>, now: &str) -> NodeRecord {
    NodeRecord {
        id: node_id.to_string(),
        created_at: now.to_string(),
        updated_at: now.to_string(),
        spec: NodeSpec {
            name: String::new(),
            labels: Some(Default::default()),
            role,
            availability: req.availability,
        },
        role,
        description: Default::default(),
        status: NodeStatus {
            state: NodeState::Unknown,
            message: String::new(),
            addr: req.addr.clone(),
        },
        manager_addr: None,
        raft_id: None,
        software: NodeSoftware::Unrecorded,
        session_manager: None,
        certificate: CertificateRecord {
            state: CertState::Pending,
            cert_pem: String::new(),
            not_after: 0,
            csr_b64: B64.encode(req.csr_pem),
            err: String::new(),
        },
    }
}

/// A promoted dockerd would start SwarmKit's manager and try to join our Raft, which swarmguard
/// does not speak: refuse now rather than leave a node that never comes up. What the node runs
/// is what this manager recorded ([`NodeSoftware`]), not what the node reports today.
fn refuse_promoting_dockerd(node: &NodeRecord) -> Result<(), ControlError> {
    let reason = match node.software {
        s if s.is_swarmguard() => return Ok(()),
        NodeSoftware::Unrecorded => format!(
            "node {} has not opened a session with this manager since it joined, so what it runs is unknown; promote it once `docker node ls` shows it Ready",
            node.id
        ),
        _ => format!(
            "node {} runs dockerd ({}), which cannot become a swarmguard manager: swarmguard managers do not speak SwarmKit's Raft protocol. Add managers by starting `swarmguard manager` on that host instead",
            node.id,
            match node.description.engine.engine_version.as_str() {
                "" => "engine version unknown",
                v => v,
            }
        ),
    };
    Err(ControlError::rpc(Code::FailedPrecondition, reason))
}

/// The trust root a node reports matters only compared with the cluster's (the CLI's TLS
/// status and root-rotation progress), so a node's own bytes are never stored: the cluster's
/// PEM when the node trusts exactly the cluster's root, else nothing.
fn kept_trust_root(reported: &str, cluster_root_pem: &str) -> String {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;
    let ders = |pem: &str| {
        CertificateDer::pem_slice_iter(pem.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .ok()
            .filter(|v| !v.is_empty())
    };
    match (ders(reported), ders(cluster_root_pem)) {
        (Some(a), Some(b)) if a == b => cluster_root_pem.to_string(),
        _ => String::new(),
    }
}

/// A node renews early when its role changed (desired or observed, against its certificate's
/// OU), when its certificate must rotate, or when the certificate in its record is past half
/// its life or unreadable.
fn must_renew(node: &NodeRecord) -> bool {
    if node.spec.role != node.role || node.certificate.state == CertState::Rotate {
        return true;
    }
    match swarmguard_ca::read_node_certificate(node.certificate.cert_pem.as_bytes()) {
        // A demotion lowers the observed role at once; the certificate follows at renewal.
        Ok(id) if Role::from(id.role) != node.role => true,
        Ok(id) => {
            let life = id
                .not_after
                .duration_since(id.not_before)
                .unwrap_or_default();
            SystemTime::now() >= id.not_before + life / 2
        }
        Err(_) => true,
    }
}

/// What a node's first described session says it runs. `swarmguard agent` reports
/// `swarmguard-agent-<version>`; anything else is a Docker engine.
fn software_of(d: &NodeDescription) -> NodeSoftware {
    let agent = d
        .engine
        .engine_version
        .strip_prefix("swarmguard-agent-")
        .is_some_and(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b".+-".contains(&b))
        });
    if agent {
        NodeSoftware::SwarmguardAgent
    } else {
        NodeSoftware::Dockerd
    }
}

/// dockerd's order over a list of nodes: full ID, name, unique ID prefix; see [`Control::node`].
fn resolve(nodes: Vec<NodeView>, reference: &str) -> Result<NodeView, ControlError> {
    let ambiguous = |n: usize| {
        ControlError::InvalidArgument(format!("node {reference} is ambiguous ({n} matches found)"))
    };
    if let Some(i) = nodes.iter().position(|n| n.record.id == reference) {
        return Ok(nodes.into_iter().nth(i).expect("index"));
    }
    let (by_name, rest): (Vec<_>, Vec<_>) = nodes
        .into_iter()
        .partition(|n| n.record.name() == reference);
    let by_prefix: Vec<NodeView> = if reference.is_empty() {
        Vec::new()
    } else {
        rest.into_iter()
            .filter(|n| n.record.id.starts_with(reference))
            .collect()
    };
    let mut found = match (by_name.len(), by_prefix.len()) {
        (0, 0) => {
            return Err(ControlError::NotFound(format!(
                "node {reference} not found"
            )))
        }
        (1, 0) => by_name,
        (0, 1) => by_prefix,
        // A name shadowing another node's ID prefix: see `Control::node`.
        (1, p) => {
            return Err(ControlError::InvalidArgument(format!(
                "node {reference} is ambiguous ({} matches found): it is the name of node {} and the start of the ID of {}; use the full node ID",
                p + 1,
                by_name[0].record.id,
                by_prefix
                    .iter()
                    .map(|n| n.record.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )))
        }
        (0, p) => return Err(ambiguous(p)),
        (n, _) => return Err(ambiguous(n)),
    };
    Ok(found.remove(0))
}

/// Text from a node that reaches an operator's terminal (`docker node ls`): no control
/// characters (ANSI escapes, carriage returns, ...) and no bidirectional overrides that reorder
/// what is shown.
pub fn check_printable(what: &str, value: &str) -> Result<(), ControlError> {
    let bad = value.char_indices().find(|(_, c)| {
        c.is_control() || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    });
    match bad {
        None => Ok(()),
        Some((at, c)) => Err(ControlError::InvalidArgument(format!(
            "{what} contains the control character U+{:04X} at byte {at}: node descriptions must be printable text",
            c as u32
        ))),
    }
}

fn check_labels(
    labels: Option<&std::collections::BTreeMap<String, String>>,
) -> Result<(), ControlError> {
    if let Some(labels) = labels {
        let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
        if labels.len() > 256 || bytes > 64 * 1024 {
            return Err(ControlError::InvalidArgument(
                "too many node labels: at most 256 labels and 64 KiB are accepted".into(),
            ));
        }
    }
    Ok(())
}
