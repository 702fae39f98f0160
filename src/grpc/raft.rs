//! The manager-to-manager Raft transport (`proto/swarmguard/raft.proto`) on the cluster port:
//! the server side (callable only by manager certificates of this cluster that are members of
//! the Raft group) and the client side managers dial each other with.
//!
//! Frames carry openraft's messages as the store encodes them (see `store::network`); this
//! file only authorizes, bounds sizes and moves bytes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use swarmguard_ca::NodeRole;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::auth::peer;
use crate::control::Control;
use crate::store::{CallFuture, Frame, Rpc, Store, Transport, TransportError, MAX_FRAME_BYTES};

#[allow(clippy::all, missing_docs, dead_code, unreachable_pub)]
pub mod pb {
    tonic::include_proto!("swarmguard.raft");
}

/// The body of `Join`: a manager that holds a manager certificate asks to enter the group.
#[derive(Debug, Serialize, Deserialize)]
pub struct JoinBody {
    pub raft_id: u64,
    /// Its cluster address (`ip:port`), what the others dial.
    pub addr: String,
}

/// Who may call, checked on every call.
#[derive(Clone)]
pub enum Gate {
    /// A manager serving the swarm: callers must be managers of this cluster, not removed,
    /// and members of the group (`Join`: managers not yet in the group).
    Serving(Arc<Control>),
    /// A manager joining, before the cluster state reached it: callers must hold a manager
    /// certificate of `cluster_id` (only this cluster's CA issues one).
    Joining { store: Store, cluster_id: String },
}

pub struct RaftService(pub Gate);

impl RaftService {
    pub fn server(gate: Gate) -> pb::raft_server::RaftServer<RaftService> {
        pb::raft_server::RaftServer::new(RaftService(gate))
            .max_decoding_message_size(MAX_FRAME_BYTES)
            .max_encoding_message_size(MAX_FRAME_BYTES)
    }

    fn store(&self) -> &Store {
        match &self.0 {
            Gate::Serving(c) => c.store(),
            Gate::Joining { store, .. } => store,
        }
    }

    async fn handle(
        &self,
        req: Request<pb::Frame>,
        rpc: Rpc,
    ) -> Result<Response<pb::Frame>, Status> {
        self.authorize(&req, false)?;
        if matches!(self.0, Gate::Joining { .. }) && rpc == Rpc::Forward {
            return Err(Status::unavailable(
                "this manager is still joining the swarm",
            ));
        }
        let f = req.into_inner();
        let frame = Frame {
            json: f.json,
            data: f.data,
        };
        let out = self.store().serve(rpc, frame).await.map_err(|e| {
            tracing::warn!(error = %e, ?rpc, "malformed raft message from a manager");
            Status::invalid_argument("malformed raft message")
        })?;
        Ok(Response::new(pb::Frame {
            json: out.json,
            data: out.data,
        }))
    }

    /// The caller's node ID, if it may call. `joining`: the caller asks to enter the group,
    /// so it need not be a member yet.
    fn authorize<T>(&self, req: &Request<T>, joining: bool) -> Result<String, Status> {
        let denied = |m: &str| Status::permission_denied(format!("Permission denied: {m}"));
        let certs = peer(req)
            .and_then(|p| p.certs.as_ref())
            .filter(|c| !c.is_empty())
            .ok_or_else(|| denied("no client certificates in request"))?;
        let id = swarmguard_ca::read_node_certificate(certs[0].as_ref())
            .map_err(|_| denied("no verified chains for remote certificate"))?;
        if id.role != NodeRole::Manager {
            return Err(denied(
                "remote certificate not part of OUs: [swarm-manager]",
            ));
        }
        match &self.0 {
            Gate::Joining { cluster_id, .. } => {
                if &id.cluster_id != cluster_id || joining {
                    return Err(denied("remote certificate not part of this cluster"));
                }
                Ok(id.node_id)
            }
            Gate::Serving(control) => {
                let cluster = control.cluster().map_err(super::status)?;
                if id.cluster_id != cluster.record.id {
                    return Err(denied("remote certificate not part of this cluster"));
                }
                if cluster.record.removed_nodes.contains_key(&id.node_id) {
                    return Err(denied(&format!(
                        "node {} was removed from swarm",
                        id.node_id
                    )));
                }
                let node = control
                    .node_by_id(&id.node_id)
                    .map_err(super::status)?
                    .ok_or_else(|| denied("node is not a manager of this swarm"))?;
                if node.record.role != crate::control::types::Role::Manager {
                    return Err(denied("node is not a manager of this swarm"));
                }
                if joining {
                    return Ok(id.node_id);
                }
                let member = node
                    .record
                    .raft_id
                    .is_some_and(|r| control.store().member_addrs().contains_key(&r));
                if !member {
                    return Err(denied("node is not a member of the raft group"));
                }
                Ok(id.node_id)
            }
        }
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(&self, req: Request<pb::Frame>) -> Result<Response<pb::Frame>, Status> {
        self.handle(req, Rpc::AppendEntries).await
    }
    async fn vote(&self, req: Request<pb::Frame>) -> Result<Response<pb::Frame>, Status> {
        self.handle(req, Rpc::Vote).await
    }
    async fn install_snapshot(
        &self,
        req: Request<pb::Frame>,
    ) -> Result<Response<pb::Frame>, Status> {
        self.handle(req, Rpc::InstallSnapshot).await
    }
    async fn forward(&self, req: Request<pb::Frame>) -> Result<Response<pb::Frame>, Status> {
        self.handle(req, Rpc::Forward).await
    }
    async fn join(&self, req: Request<pb::Frame>) -> Result<Response<pb::Frame>, Status> {
        let node_id = self.authorize(&req, true)?;
        let Gate::Serving(control) = &self.0 else {
            return Err(Status::unavailable(
                "this manager is still joining the swarm",
            ));
        };
        let body: JoinBody = serde_json::from_slice(&req.get_ref().json)
            .map_err(|_| Status::invalid_argument("malformed join request"))?;
        if body.addr.parse::<SocketAddr>().is_err() {
            return Err(Status::invalid_argument(
                "the manager address must be ip:port",
            ));
        }
        control
            .add_manager(&node_id, body.raft_id, &body.addr)
            .await
            .map_err(super::status)?;
        Ok(Response::new(pb::Frame::default()))
    }
}

/// The client side: one TLS connection per peer address, re-dialled after any failure.
pub struct Dialer {
    config: Arc<rustls::ClientConfig>,
    channels: Mutex<HashMap<String, Channel>>,
}

impl Dialer {
    pub fn new(config: Arc<rustls::ClientConfig>) -> Dialer {
        Dialer {
            config,
            channels: Mutex::new(HashMap::new()),
        }
    }

    pub async fn client(
        &self,
        addr: &str,
    ) -> Result<pb::raft_client::RaftClient<Channel>, TransportError> {
        let unreachable = |reason: String| TransportError::Unreachable {
            addr: addr.to_owned(),
            reason,
        };
        let cached = self.lock().get(addr).cloned();
        let ch = match cached {
            Some(ch) => ch,
            None => {
                let sa: SocketAddr = addr
                    .parse()
                    .map_err(|_| unreachable("not an ip:port address".into()))?;
                let ch = crate::agent::tls::channel(sa, self.config.clone(), "swarm-manager")
                    .await
                    .map_err(|e| unreachable(e.to_string()))?;
                self.lock().insert(addr.to_owned(), ch.clone());
                ch
            }
        };
        Ok(pb::raft_client::RaftClient::new(ch)
            .max_decoding_message_size(MAX_FRAME_BYTES)
            .max_encoding_message_size(MAX_FRAME_BYTES))
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Channel>> {
        self.channels.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Forgets a connection that failed, so the next call dials again.
    pub fn drop_channel(&self, addr: &str) {
        self.lock().remove(addr);
    }
}

impl Transport for Dialer {
    fn call<'a>(
        &'a self,
        addr: &'a str,
        rpc: Rpc,
        frame: Frame,
        timeout: Duration,
    ) -> CallFuture<'a> {
        Box::pin(async move {
            let mut client = self.client(addr).await?;
            let mut req = Request::new(pb::Frame {
                json: frame.json,
                data: frame.data,
            });
            req.set_timeout(timeout);
            let res = match rpc {
                Rpc::AppendEntries => client.append_entries(req).await,
                Rpc::Vote => client.vote(req).await,
                Rpc::InstallSnapshot => client.install_snapshot(req).await,
                Rpc::Forward => client.forward(req).await,
            };
            match res {
                Ok(r) => {
                    let f = r.into_inner();
                    Ok(Frame {
                        json: f.json,
                        data: f.data,
                    })
                }
                Err(s) => {
                    // A broken connection cannot be re-dialled by its channel (the connector
                    // hands out one stream); a slow answer keeps it.
                    if !matches!(
                        s.code(),
                        tonic::Code::DeadlineExceeded | tonic::Code::Cancelled
                    ) {
                        self.drop_channel(addr);
                    }
                    Err(TransportError::Refused {
                        addr: addr.to_owned(),
                        reason: format!("{:?}: {}", s.code(), s.message()),
                    })
                }
            }
        })
    }
}

/// Asks the manager at `addr` (any member) to add this manager to the group; returns once it
/// is a voter.
pub async fn join_group(dialer: &Dialer, addr: &str, body: &JoinBody) -> Result<(), Status> {
    let mut client = dialer
        .client(addr)
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut req = Request::new(pb::Frame {
        json: serde_json::to_vec(body).unwrap_or_default(),
        data: Vec::new(),
    });
    req.set_timeout(Duration::from_secs(90));
    client.join(req).await.map(|_| ())
}
