//! Per-method authorization with SwarmKit's codes and texts (`ca/auth.go`): the verified client
//! certificate's OU in the method's roles, O equal to our cluster ID, CN not removed; and then
//! the role this manager recorded for the node, which must agree with the OU. A certificate
//! outlives a demotion (up to its expiry), the node record does not.

use swarmguard_ca::NodeRole;
use tonic::{Request, Status};

use super::accept::PeerInfo;
use crate::control::records::ClusterRecord;
use crate::control::types::Role;
use crate::control::Control;

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

fn not_in_roles(roles: &[NodeRole]) -> Status {
    denied(format!(
        "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = Permission denied: remote certificate not part of OUs: {}",
        roles_list(roles)
    ))
}

/// SwarmKit's `AuthorizeOrgAndRole` for the request's verified client certificate, then the
/// node record's observed role against the certificate's OU. A request without a certificate
/// (a join) is answered before any store read.
pub fn authorize<T>(
    req: &Request<T>,
    roles: &[NodeRole],
    cluster: &ClusterRecord,
    control: &Control,
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
        return Err(not_in_roles(roles));
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
    let acting = recorded_role(control, &cn, role)?;
    if !roles.contains(&acting) {
        tracing::warn!(node_id = %cn, "a manager certificate whose node is no longer a manager called a manager-only method: refused");
        return Err(not_in_roles(roles));
    }
    Ok(Identity {
        node_id: cn,
        role: acting,
    })
}

/// The role a certificate holder acts with: its OU while the node record agrees, else worker.
/// A node without a record (being removed) gets no manager rights either; the worker methods
/// answer it "node not registered" themselves.
fn recorded_role(control: &Control, node_id: &str, ou: NodeRole) -> Result<NodeRole, Status> {
    if ou == NodeRole::Worker {
        return Ok(ou);
    }
    let node = control.node_by_id(node_id).map_err(super::status)?;
    match node.map(|n| n.record.role) {
        Some(Role::Manager) => Ok(NodeRole::Manager),
        _ => Ok(NodeRole::Worker),
    }
}
