//! Per-method authorization from the verified client certificate only, with SwarmKit's codes and
//! texts (`ca/auth.go`): OU in the method's roles, O equal to our cluster ID, CN not removed.

use swarmguard_ca::NodeRole;
use tonic::{Request, Status};

use super::accept::PeerInfo;
use crate::control::records::ClusterRecord;

/// Who a verified client certificate names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    pub node_id: String,
    pub role: NodeRole,
}

pub const WORKER_OR_MANAGER: &[NodeRole] = &[NodeRole::Worker, NodeRole::Manager];
pub const MANAGER_ONLY: &[NodeRole] = &[NodeRole::Manager];

/// The connection facts our acceptor recorded (tonic puts `Connected::ConnectInfo` in the
/// request extensions).
pub fn peer<T>(req: &Request<T>) -> Option<&PeerInfo> {
    req.extensions().get::<PeerInfo>()
}

fn denied(msg: impl Into<String>) -> Status {
    Status::permission_denied(msg.into())
}

fn roles_list(roles: &[NodeRole]) -> String {
    let ous: Vec<&str> = roles.iter().map(|r| r.ou()).collect();
    format!("[{}]", ous.join(" "))
}

/// SwarmKit's `AuthorizeOrgAndRole` for the request's verified client certificate.
pub fn authorize<T>(
    req: &Request<T>,
    roles: &[NodeRole],
    cluster: &ClusterRecord,
) -> Result<Identity, Status> {
    let Some(peer) = peer(req) else {
        return Err(denied("Permission denied: request is not using TLS"));
    };
    let Some(certs) = peer.certs.as_ref().filter(|c| !c.is_empty()) else {
        return Err(denied(
            "Permission denied: no client certificates in request",
        ));
    };
    // rustls verified the chain; the subject rules are the CA crate's, for every reader.
    let Ok(id) = swarmguard_ca::read_node_certificate(certs[0].as_ref()) else {
        return Err(denied(
            "Permission denied: no verified chains for remote certificate",
        ));
    };
    let (cn, role, org) = (id.node_id, id.role, id.cluster_id);
    if !roles.contains(&role) {
        return Err(denied(format!(
            "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = Permission denied: remote certificate not part of OUs: {}",
            roles_list(roles)
        )));
    };
    if org != cluster.id {
        return Err(denied(format!(
            "Permission denied: remote certificate not part of organization: {}",
            cluster.id
        )));
    }
    if cluster.removed_nodes.contains_key(&cn) {
        return Err(denied(format!(
            "Permission denied: node {cn} was removed from swarm"
        )));
    }
    Ok(Identity { node_id: cn, role })
}
