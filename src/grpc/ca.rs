//! `CA` and `NodeCA`: root download, joins by token, renewals by certificate, issuance status.
//! Decisions are the control layer's; this file checks the caller, parses the request and
//! shapes the answer.

use std::sync::Arc;
use std::time::Duration;

use tonic::{Request, Response, Status};

use super::auth::{authorize, MANAGER_ONLY, WORKER_OR_MANAGER};
use super::{status, unb64, PortContext};
use crate::control::nodes::JoinRequest;
use crate::control::records::{CertState, NodeRecord};
use crate::control::types::{Availability, Role};
use crate::control::Control;
use crate::pb;

/// SwarmKit's text for a missing, wrong or rotated token.
pub const BAD_TOKEN: &str = "A valid join token is necessary to join this cluster";
/// How long NodeCertificateStatus waits for a final state before answering with the current one.
pub const STATUS_WAIT: Duration = Duration::from_secs(4);

pub struct CaService(pub Arc<PortContext>);
pub struct NodeCaService(pub Arc<PortContext>);

#[tonic::async_trait]
impl pb::ca_server::Ca for CaService {
    async fn get_root_ca_certificate(
        &self,
        _req: Request<pb::GetRootCaCertificateRequest>,
    ) -> Result<Response<pb::GetRootCaCertificateResponse>, Status> {
        let cluster = self.0.cluster()?;
        // The exact bytes the join tokens' digest covers.
        Ok(Response::new(pb::GetRootCaCertificateResponse {
            certificate: cluster.record.root_ca_pem.as_bytes().to_vec(),
        }))
    }

    async fn get_unlock_key(
        &self,
        req: Request<pb::GetUnlockKeyRequest>,
    ) -> Result<Response<pb::GetUnlockKeyResponse>, Status> {
        let cluster = self.0.cluster()?;
        authorize(&req, MANAGER_ONLY, &cluster.record, &self.0.control)?;
        // SwarmKit's answer: the raw key-encryption key, empty while autolock is off.
        Ok(Response::new(pb::GetUnlockKeyResponse {
            unlock_key: self
                .0
                .control
                .unlock_key_bytes()
                .map(|k| k.to_vec())
                .unwrap_or_default(),
            version: Some(pb::Version {
                index: cluster.version,
            }),
        }))
    }
}

pub(super) fn availability(a: i32) -> Result<Availability, Status> {
    match pb::node_spec::Availability::try_from(a) {
        Ok(pb::node_spec::Availability::Active) => Ok(Availability::Active),
        Ok(pb::node_spec::Availability::Pause) => Ok(Availability::Pause),
        Ok(pb::node_spec::Availability::Drain) => Ok(Availability::Drain),
        Err(_) => Err(Status::invalid_argument(format!(
            "invalid availability {a}: expected ACTIVE (0), PAUSE (1) or DRAIN (2)"
        ))),
    }
}

fn accepted(node_id: String) -> Response<pb::IssueNodeCertificateResponse> {
    Response::new(pb::IssueNodeCertificateResponse {
        node_id,
        node_membership: pb::node_spec::Membership::Accepted as i32,
    })
}

#[tonic::async_trait]
impl pb::node_ca_server::NodeCa for NodeCaService {
    async fn issue_node_certificate(
        &self,
        req: Request<pb::IssueNodeCertificateRequest>,
    ) -> Result<Response<pb::IssueNodeCertificateResponse>, Status> {
        let ctx = &self.0;
        let cluster = ctx.cluster()?;
        let r = req.get_ref();
        if r.csr.is_empty() {
            return Err(Status::invalid_argument(
                "no CSR in the request: send a PEM CERTIFICATE REQUEST",
            ));
        }
        let availability = availability(r.availability)?;
        // Verified once, and only for a caller that proved something (a node certificate or the
        // whole join token): a signature check costs far more than the token comparison, and an
        // anonymous peer must not be able to make the manager do it for free.
        let check = || {
            swarmguard_ca::check_csr(&r.csr).map_err(|e| Status::invalid_argument(e.to_string()))
        };

        // A valid node certificate makes this a renewal: the role stays the node's current one.
        // Rate limited per node before anything costly (the CSR's signature, a store write).
        if let Ok(id) = authorize(&req, WORKER_OR_MANAGER, &cluster.record, &ctx.control) {
            ctx.control.admit_renewal(&id.node_id).map_err(status)?;
            // A bad CSR still counts: a working node never sends one.
            let checked = check()?;
            let renewed = ctx
                .control
                .renew(&id.node_id, &checked, &r.csr)
                .await
                .map_err(|e| {
                    ctx.control.forget_renewal(&id.node_id);
                    status(e)
                })?;
            if renewed.is_none() {
                return Err(Status::not_found("node not registered"));
            }
            tracing::info!(node_id = %id.node_id, "certificate renewed");
            return Ok(accepted(id.node_id));
        }

        // Otherwise the whole token decides the role.
        let Some(role) = Control::role_for_token(&cluster.record, &r.token) else {
            return Err(Status::invalid_argument(BAD_TOKEN));
        };
        let checked = check()?;
        let join = JoinRequest {
            csr_pem: &r.csr,
            availability,
            addr: super::auth::peer(&req)
                .map(|p| p.addr.ip().to_string())
                .unwrap_or_default(),
        };
        let node_id = ctx
            .control
            .join(role, &checked, &join)
            .await
            .map_err(status)?;
        Ok(accepted(node_id))
    }

    async fn node_certificate_status(
        &self,
        req: Request<pb::NodeCertificateStatusRequest>,
    ) -> Result<Response<pb::NodeCertificateStatusResponse>, Status> {
        let id = req.get_ref().node_id.as_str();
        if !swarmguard_ca::is_valid_id(id) {
            return Err(Status::invalid_argument(
                "node ID must be 25 lowercase base-36 characters",
            ));
        }
        match self
            .0
            .control
            .certificate_status(id, STATUS_WAIT)
            .await
            .map_err(status)?
        {
            Some(node) => Ok(Response::new(status_response(&node))),
            None => Err(Status::not_found(format!("node {id} not found"))),
        }
    }
}

pub fn issuance_state(state: CertState) -> pb::issuance_status::State {
    use pb::issuance_status::State;
    match state {
        CertState::Renew => State::Renew,
        CertState::Pending => State::Pending,
        CertState::Issued => State::Issued,
        CertState::Failed => State::Failed,
        CertState::Rotate => State::Rotate,
    }
}

pub fn role_pb(role: Role) -> i32 {
    match role {
        Role::Manager => pb::NodeRole::Manager as i32,
        Role::Worker => pb::NodeRole::Worker as i32,
    }
}

pub fn certificate_pb(node: &NodeRecord) -> pb::Certificate {
    let status = pb::IssuanceStatus {
        state: issuance_state(node.certificate.state) as i32,
        err: node.certificate.err.clone(),
    };
    pb::Certificate {
        role: role_pb(node.role),
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
