//! `CA` and `NodeCA`: root download, joins by token, renewals by certificate, issuance status.

use std::sync::Arc;
use std::time::Duration;

use swarmguard_ca::{NodeRole, DEFAULT_NODE_CERT_EXPIRY};
use tonic::{Request, Response, Status};

use super::auth::{authorize, MANAGER_ONLY, WORKER_OR_MANAGER};
use super::pb;
use super::{b64, put, unb64, Shared};
use crate::control::records::{node_key, CertificateRecord, ClusterRecord, NodeRecord};
use crate::control::{now_rfc3339, unix_seconds};
use crate::engine::types as api;
use crate::store::{Check, Txn, TxnOutcome};

/// SwarmKit's text for a missing, wrong or rotated token.
pub const BAD_TOKEN: &str = "A valid join token is necessary to join this cluster";
/// How long NodeCertificateStatus waits for a final state before answering with the current one.
pub const STATUS_WAIT: Duration = Duration::from_secs(4);

pub struct CaService(pub Arc<Shared>);
pub struct NodeCaService(pub Arc<Shared>);

#[tonic::async_trait]
impl pb::ca_server::Ca for CaService {
    async fn get_root_ca_certificate(
        &self,
        _req: Request<pb::GetRootCaCertificateRequest>,
    ) -> Result<Response<pb::GetRootCaCertificateResponse>, Status> {
        let (cluster, _) = self.0.cluster()?;
        // The exact bytes the join tokens' digest covers.
        Ok(Response::new(pb::GetRootCaCertificateResponse {
            certificate: cluster.root_ca_pem.as_bytes().to_vec(),
        }))
    }

    async fn get_unlock_key(
        &self,
        req: Request<pb::GetUnlockKeyRequest>,
    ) -> Result<Response<pb::GetUnlockKeyResponse>, Status> {
        let (cluster, version) = self.0.cluster()?;
        authorize(&req, MANAGER_ONLY, &cluster)?;
        // Autolock is off (swarmguard refuses to turn it on), so the key is empty.
        Ok(Response::new(pb::GetUnlockKeyResponse {
            unlock_key: Vec::new(),
            version: Some(pb::Version { index: version }),
        }))
    }
}

pub fn role_name(role: NodeRole) -> &'static str {
    match role {
        NodeRole::Manager => "manager",
        NodeRole::Worker => "worker",
    }
}

pub fn role_from_name(name: &str) -> NodeRole {
    if name == "manager" {
        NodeRole::Manager
    } else {
        NodeRole::Worker
    }
}

fn availability_name(a: i32) -> Result<&'static str, Status> {
    match pb::node_spec::Availability::try_from(a) {
        Ok(pb::node_spec::Availability::Active) => Ok("active"),
        Ok(pb::node_spec::Availability::Pause) => Ok("pause"),
        Ok(pb::node_spec::Availability::Drain) => Ok("drain"),
        Err(_) => Err(Status::invalid_argument(format!(
            "invalid availability {a}: expected ACTIVE (0), PAUSE (1) or DRAIN (2)"
        ))),
    }
}

#[tonic::async_trait]
impl pb::node_ca_server::NodeCa for NodeCaService {
    async fn issue_node_certificate(
        &self,
        req: Request<pb::IssueNodeCertificateRequest>,
    ) -> Result<Response<pb::IssueNodeCertificateResponse>, Status> {
        let s = &self.0;
        let (cluster, _) = s.cluster()?;
        let r = req.get_ref();
        if r.csr.is_empty() {
            return Err(Status::invalid_argument(
                "no CSR in the request: send a PEM CERTIFICATE REQUEST",
            ));
        }
        let availability = availability_name(r.availability)?;
        let peer_addr = super::auth::peer(&req)
            .map(|p| p.addr.ip().to_string())
            .unwrap_or_default();
        // Verified once, and only for a caller that proved something (a node certificate or the
        // whole join token): a signature check costs far more than the token comparison, and an
        // anonymous peer must not be able to make the manager do it for free.
        let check = || {
            swarmguard_ca::check_csr(&r.csr).map_err(|e| Status::invalid_argument(e.to_string()))
        };

        // A valid node certificate makes this a renewal: the role stays the node's current one.
        if let Ok(id) = authorize(&req, WORKER_OR_MANAGER, &cluster) {
            let checked = check()?;
            let csr = b64(&r.csr);
            let signer = Signer::new(s, &cluster)?;
            let updated = s
                .update_node(&id.node_id, |n| {
                    // The role reconciles to the desired one at renewal (promote/demote).
                    n.role = n.spec.role.clone();
                    n.certificate.state = "renew".into();
                    n.certificate.csr_b64 = csr.clone();
                    n.certificate.err.clear();
                    // The internal CA signs in the same write: one store write per renewal.
                    signer.sign_record(n, &checked);
                    true
                })
                .await?;
            if updated.is_none() {
                return Err(Status::not_found("node not registered"));
            }
            tracing::info!(node_id = %id.node_id, "certificate renewed");
            return Ok(Response::new(pb::IssueNodeCertificateResponse {
                node_id: id.node_id,
                node_membership: pb::node_spec::Membership::Accepted as i32,
            }));
        }

        // Otherwise the whole token decides the role; both comparisons always run.
        let as_manager = swarmguard_ca::tokens_equal(&r.token, &cluster.join_tokens.manager);
        let as_worker = swarmguard_ca::tokens_equal(&r.token, &cluster.join_tokens.worker);
        let role = match (r.token.is_empty(), as_manager, as_worker) {
            (false, true, _) => NodeRole::Manager,
            (false, false, true) => NodeRole::Worker,
            _ => return Err(Status::invalid_argument(BAD_TOKEN)),
        };
        let checked = check()?;

        let now = now_rfc3339();
        let signer = Signer::new(s, &cluster)?;
        for _ in 0..3 {
            let node_id = swarmguard_ca::new_id();
            let mut record = NodeRecord {
                id: node_id.clone(),
                created_at: now.clone(),
                updated_at: now.clone(),
                spec: api::NodeSpec {
                    name: String::new(),
                    labels: Some(Default::default()),
                    role: role_name(role).into(),
                    availability: availability.into(),
                },
                role: role_name(role).into(),
                description: Default::default(),
                status: api::NodeStatus {
                    state: "unknown".into(),
                    message: String::new(),
                    addr: peer_addr.clone(),
                },
                manager_addr: None,
                certificate: CertificateRecord {
                    state: "pending".into(),
                    cert_pem: String::new(),
                    not_after: 0,
                    csr_b64: b64(&r.csr),
                    err: String::new(),
                },
            };
            // The internal CA signs before the node is stored: PENDING and ISSUED in one write,
            // so a join costs one store write.
            signer.sign_record(&mut record, &checked);
            let key = node_key(&node_id);
            let txn = Txn {
                checks: vec![Check::Absent { key: key.clone() }],
                ops: vec![put(&key, &record)?],
            };
            if let TxnOutcome::Committed { .. } = s.apply(txn).await? {
                tracing::info!(node_id = %node_id, role = role_name(role), state = %record.certificate.state, "node joined with a token");
                return Ok(Response::new(pb::IssueNodeCertificateResponse {
                    node_id,
                    node_membership: pb::node_spec::Membership::Accepted as i32,
                }));
            }
        }
        Err(Status::internal("could not allocate a unique node ID"))
    }

    async fn node_certificate_status(
        &self,
        req: Request<pb::NodeCertificateStatusRequest>,
    ) -> Result<Response<pb::NodeCertificateStatusResponse>, Status> {
        let s = &self.0;
        let id = req.get_ref().node_id.as_str();
        if !swarmguard_ca::is_valid_id(id) {
            return Err(Status::invalid_argument(
                "node ID must be 25 lowercase base-36 characters",
            ));
        }
        let mut events = s.store.subscribe();
        let key = node_key(id);
        let deadline = tokio::time::Instant::now() + STATUS_WAIT;
        loop {
            let Some((node, _)) = s.node(id)? else {
                return Err(Status::not_found(format!("node {id} not found")));
            };
            let final_state = matches!(
                node.certificate.state.as_str(),
                "issued" | "failed" | "rotate"
            );
            if final_state {
                return Ok(Response::new(status_response(&node)));
            }
            // Wait for a change of this node, bounded; then answer with what there is.
            let wait = async {
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
            if tokio::time::timeout_at(deadline, wait).await.is_err() {
                return Ok(Response::new(status_response(&node)));
            }
        }
    }
}

pub fn issuance_state(state: &str) -> pb::issuance_status::State {
    use pb::issuance_status::State;
    match state {
        "renew" => State::Renew,
        "pending" => State::Pending,
        "issued" => State::Issued,
        "failed" => State::Failed,
        "rotate" => State::Rotate,
        _ => State::Unknown,
    }
}

pub fn certificate_pb(node: &NodeRecord) -> pb::Certificate {
    let status = pb::IssuanceStatus {
        state: issuance_state(&node.certificate.state) as i32,
        err: node.certificate.err.clone(),
    };
    pb::Certificate {
        role: match role_from_name(&node.role) {
            NodeRole::Manager => pb::NodeRole::Manager as i32,
            NodeRole::Worker => pb::NodeRole::Worker as i32,
        },
        csr: unb64(&node.certificate.csr_b64),
        status: Some(status),
        certificate: node.certificate.cert_pem.clone().into_bytes(),
        cn: node.id.clone(),
    }
}

fn status_response(node: &NodeRecord) -> pb::NodeCertificateStatusResponse {
    let cert = certificate_pb(node);
    pb::NodeCertificateStatusResponse {
        status: cert.status.clone(),
        certificate: Some(cert),
    }
}

/// The internal CA with the cluster's identity and expiry, for signing node records.
struct Signer {
    ca: Arc<swarmguard_ca::RootCa>,
    cluster_id: String,
    expiry: Duration,
}

impl Signer {
    fn new(s: &Shared, cluster: &ClusterRecord) -> Result<Signer, Status> {
        let ca = s
            .control
            .root_ca()
            .ok_or_else(|| Status::aborted("CA signer is stopped"))?;
        let expiry = match cluster.spec.ca_config.node_cert_expiry {
            n if n > 0 => Duration::from_nanos(n as u64),
            _ => DEFAULT_NODE_CERT_EXPIRY,
        };
        Ok(Signer {
            ca,
            cluster_id: cluster.id.clone(),
            expiry,
        })
    }

    /// Signs the pending or renewing certificate of `n` (whose CSR is `csr`) with the node's
    /// current role: ISSUED, or FAILED with the reason.
    fn sign_record(&self, n: &mut NodeRecord, csr: &swarmguard_ca::CheckedCsr) {
        if !matches!(n.certificate.state.as_str(), "pending" | "renew") {
            return;
        }
        let role = role_from_name(&n.role);
        match self
            .ca
            .issue_node_certificate(csr, &n.id, role, &self.cluster_id, self.expiry)
        {
            Ok(issued) => {
                n.certificate.state = "issued".into();
                n.certificate.cert_pem = String::from_utf8_lossy(&issued.cert_pem).into_owned();
                n.certificate.not_after = unix_seconds(issued.not_after);
                n.certificate.err.clear();
            }
            Err(e) => {
                n.certificate.state = "failed".into();
                n.certificate.err = e.to_string();
            }
        }
    }
}
