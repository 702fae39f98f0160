//! The cluster gRPC port: SwarmKit's `CA`, `NodeCA`, `Dispatcher` and `LogBroker` services over
//! our own rustls acceptor, so stock dockerd workers (and `swarmguard agent`) join and stay.
//!
//! It runs while this manager is part of a swarm: [`supervise`] starts it after `swarm init` (or
//! at start-up of an initialized manager) and stops it when the swarm is left.

pub mod accept;
pub mod assignments;
pub mod auth;
pub mod ca;
pub mod dispatcher;
#[doc(hidden)]
pub mod fuzzing;
pub mod join;
pub mod limits;
pub mod logs;
pub mod raft;
pub mod recover;

#[cfg(test)]
mod tests;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, watch};
use tonic::Status;

use crate::control::records::{node_key, CLUSTER_KEY};
use crate::control::types::NodeState;
use crate::control::{ClusterPort, ClusterView, Code, Control, ControlError};
use crate::pb;

/// SwarmKit's `GRPCMaxMsgSize`: the largest message a peer may send us.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// What the services of one running cluster port share.
pub struct PortContext {
    pub control: Arc<Control>,
    /// This manager's node ID and the address workers should dial.
    pub manager_id: String,
    pub advertise_addr: String,
    pub dispatcher: dispatcher::Sessions,
}

impl PortContext {
    /// The cluster record and its version.
    pub fn cluster(&self) -> Result<ClusterView, Status> {
        self.control.cluster().map_err(status)
    }
}

/// The one mapping from a control-layer error to a gRPC status. swarmguard's own failures are
/// logged here and reach the peer without internal detail.
pub fn status(e: ControlError) -> Status {
    match e {
        ControlError::Rpc { code, desc } => Status::new(grpc_code(code), desc),
        ControlError::InvalidArgument(m) => Status::invalid_argument(m),
        ControlError::NotFound(m) => Status::not_found(m),
        ControlError::Conflict(m) => Status::failed_precondition(m),
        ControlError::NotManager | ControlError::NotInSwarm => {
            Status::failed_precondition("this manager is not part of a swarm")
        }
        e @ ControlError::AlreadyInSwarm => Status::failed_precondition(e.to_string()),
        ControlError::Unavailable(m) => Status::unavailable(m),
        e @ ControlError::Contended { .. } => Status::aborted(e.to_string()),
        ControlError::Store(e) => {
            tracing::error!(error = %e, "cluster store write failed");
            Status::unavailable("the cluster store refused the write; try again")
        }
        ControlError::Internal { context, detail } => {
            tracing::error!(error = %detail, "{context}");
            Status::internal(context)
        }
    }
}

fn grpc_code(code: Code) -> tonic::Code {
    match code {
        Code::InvalidArgument => tonic::Code::InvalidArgument,
        Code::NotFound => tonic::Code::NotFound,
        Code::AlreadyExists => tonic::Code::AlreadyExists,
        Code::PermissionDenied => tonic::Code::PermissionDenied,
        Code::FailedPrecondition => tonic::Code::FailedPrecondition,
        Code::Aborted => tonic::Code::Aborted,
        Code::Unimplemented => tonic::Code::Unimplemented,
        Code::Unavailable => tonic::Code::Unavailable,
        Code::Unknown => tonic::Code::Unknown,
    }
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    B64.decode(s.as_bytes()).unwrap_or_default()
}

/// A running cluster port. Dropping it does not stop it; call [`Running::stop`].
#[allow(dead_code)] // `addr` serves tests.
pub struct Running {
    pub addr: SocketAddr,
    /// What the acceptor hands new connections: the security material's server config.
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
    pub ctx: Arc<PortContext>,
    /// The connection accounting (read by tests).
    pub limits: Arc<limits::Limits>,
    stop: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        for t in self.tasks {
            t.abort();
            let _ = t.await;
        }
    }
}

/// Errors starting the cluster port.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("this manager is not part of a swarm")]
    NotInSwarm,
}

impl Running {
    /// Swaps in the security material's server config if it changed (new certificate or
    /// root): new connections use it at once, established ones keep theirs; nothing restarts.
    pub fn reload_tls(&mut self) -> Result<bool, ControlError> {
        let control = &self.ctx.control;
        control
            .security()
            .refresh(control.store(), &control.config().data_dir)?;
        let Some(material) = control.security().current() else {
            return Ok(false);
        };
        if Arc::ptr_eq(&self.tls.load(), &material.server_config) {
            return Ok(false);
        }
        self.tls.store(material.server_config.clone());
        tracing::info!("cluster port TLS material reloaded");
        Ok(true)
    }
}

/// Starts the cluster port of an initialized manager, with connection caps derived from the
/// process's descriptor limit.
pub async fn start(control: Arc<Control>) -> Result<Running, StartError> {
    let caps = limits::LimitConfig::from_process();
    tracing::info!(
        max_connections = caps.max_total,
        max_anonymous = caps.max_anonymous,
        "cluster port connection caps"
    );
    start_with(control, caps, accept::Deadlines::default()).await
}

/// [`start`] with explicit connection caps and deadlines.
pub async fn start_with(
    control: Arc<Control>,
    caps: limits::LimitConfig,
    deadlines: accept::Deadlines,
) -> Result<Running, StartError> {
    let material = control.security().current().ok_or(StartError::NotInSwarm)?;
    let local = material.identity.clone();
    let tls = Arc::new(ArcSwap::new(material.server_config.clone()));
    let listener = TcpListener::bind(local.listen_addr)
        .await
        .map_err(|source| StartError::Listen {
            addr: local.listen_addr,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Listen {
        addr: local.listen_addr,
        source,
    })?;
    let ctx = Arc::new(PortContext {
        control: control.clone(),
        manager_id: local.node_id.clone(),
        advertise_addr: local.advertise_addr.to_string(),
        dispatcher: dispatcher::Sessions::default(),
    });
    expect_ready_nodes(&ctx);
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(256);
    let limits = limits::Limits::new(caps);
    let mut tasks = vec![tokio::spawn(accept::accept_loop(
        listener,
        tls.clone(),
        limits.clone(),
        deadlines,
        tx,
    ))];
    tasks.push(tokio::spawn(dispatcher::expire_loop(
        ctx.clone(),
        stop_rx.clone(),
    )));
    let router = services(&ctx);
    let mut stop = stop_rx;
    tasks.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let shutdown = async move {
            let _ = crate::util::until_true(&mut stop).await;
        };
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "cluster port stopped");
        }
    }));
    tracing::info!(%addr, advertise = %local.advertise_addr, "cluster gRPC port ready");
    Ok(Running {
        addr,
        tls,
        ctx,
        limits,
        stop: stop_tx,
        tasks,
    })
}

/// Nodes the store shows Ready must re-register within a heartbeat window, or go Down.
/// With several managers a node keeps its session with one of them, so no manager may expect
/// every node; managers themselves hold no session at all.
fn expect_ready_nodes(ctx: &PortContext) {
    // With several managers, only the nodes whose session this manager held; the others are
    // their own managers' (or, when those are gone, the leader's: `mark_orphaned_nodes_down`).
    let single = ctx.control.store().member_addrs().len() <= 1;
    let (Ok(cluster), Ok(nodes)) = (ctx.cluster(), ctx.control.nodes()) else {
        return;
    };
    let period = dispatcher::heartbeat_period(&cluster.record);
    for n in nodes {
        let ours = single || n.record.session_manager.as_deref() == Some(ctx.manager_id.as_str());
        if ours
            && n.record.id != ctx.manager_id
            && n.record.manager_addr.is_none()
            && n.record.status.state == NodeState::Ready
        {
            ctx.dispatcher.expect(&n.record.id, period);
        }
    }
}

/// SwarmKit's four services, with its message size limit.
fn services(ctx: &Arc<PortContext>) -> tonic::transport::server::Router {
    tonic::transport::Server::builder()
        .timeout(Duration::from_secs(120))
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .max_concurrent_streams(Some(512))
        .add_service(
            pb::ca_server::CaServer::new(ca::CaService(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::node_ca_server::NodeCaServer::new(ca::NodeCaService(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::dispatcher_server::DispatcherServer::new(dispatcher::DispatcherService(
                ctx.clone(),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::log_broker_server::LogBrokerServer::new(dispatcher::LogBrokerService(ctx.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(raft::RaftService::server(raft::Gate::Serving(
            ctx.control.clone(),
        )))
}

/// Waits for a store change that can touch the cluster port's TLS material: the cluster record
/// (root, tokens) or this manager's own node record. Joins write other nodes' records many
/// times a second; they must not wake the supervisor.
async fn identity_changed(
    events: &mut broadcast::Receiver<crate::store::Applied>,
    control: &Control,
) {
    // A join or leave changes this; it also wakes the supervisor through membership_changed,
    // which calls here again.
    let own = control.local_identity().map(|l| node_key(&l.node_id));
    loop {
        match events.recv().await {
            Ok(a) => {
                if a.keys
                    .iter()
                    .any(|k| k == CLUSTER_KEY || Some(k) == own.as_ref())
                {
                    return;
                }
            }
            Err(broadcast::error::RecvError::Lagged(_)) => return,
            Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// Managers dial each other with this manager's current certificate.
fn install_transport(control: &Control) {
    let Some(m) = control.security().current() else {
        return;
    };
    control
        .store()
        .set_transport(Some(Arc::new(raft::Dialer::new(m.client_config.clone()))));
}

/// Keeps the cluster port running exactly while this manager is part of a swarm.
pub async fn supervise(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut events = control
        .store()
        .subscribe_to(&[CLUSTER_KEY, crate::control::records::NODE_PREFIX]);
    let mut running: Option<Running> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    // Restarted before the state knew the swarm: Raft alone until it does (see `recover`).
    let mut recovering = recover::start(&control).await;
    loop {
        if recovering.is_some() && control.adopt_recorded_identity() {
            if let Some(r) = recovering.take() {
                r.stop().await;
            }
        }
        let in_swarm = control.local_identity().is_some();
        match (&running, in_swarm) {
            (None, true) => match start(control.clone()).await {
                Ok(r) => {
                    install_transport(&control);
                    if let Some(local) = control.local_identity() {
                        control.set_cluster_port(ClusterPort::Serving(local.listen_addr));
                    }
                    running = Some(r);
                }
                // Left again before the port came up: nothing to report.
                Err(StartError::NotInSwarm) => {}
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the cluster port");
                    control.set_cluster_port(ClusterPort::Failed(e.to_string()));
                }
            },
            (Some(_), true) => {
                if let Some(r) = running.as_mut() {
                    match r.reload_tls() {
                        Ok(true) => install_transport(&control),
                        Ok(false) => {}
                        Err(e) => {
                            tracing::warn!(error = %e, "cannot reload the cluster port's TLS material")
                        }
                    }
                }
            }
            (Some(_), false) => {
                control.store().set_transport(None);
                if let Some(r) = running.take() {
                    r.stop().await;
                    control.set_cluster_port(ClusterPort::Stopped);
                    tracing::info!("cluster port stopped: left the swarm");
                }
            }
            (None, false) => control.set_cluster_port(ClusterPort::Stopped),
        }
        tokio::select! {
            _ = crate::util::until_true(&mut stop) => break,
            _ = identity_changed(&mut events, &control) => {}
            _ = control.membership_changed() => {}
            _ = tick.tick() => {}
        }
    }
    if let Some(r) = running.take() {
        r.stop().await;
    }
    if let Some(r) = recovering.take() {
        r.stop().await;
    }
}
