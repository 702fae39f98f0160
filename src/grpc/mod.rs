//! The cluster gRPC port: SwarmKit's `CA`, `NodeCA`, `Dispatcher` and `LogBroker` services over
//! our own rustls acceptor, so stock dockerd workers (and `swarmguard agent`) join and stay.
//!
//! It runs while this manager is part of a swarm: [`supervise`] starts it after `swarm init` (or
//! at start-up of an initialized manager) and stops it when the swarm is left.

pub mod auth;
pub mod ca;
pub mod dispatcher;
pub mod pb;
pub mod tls;

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

use crate::control::records::{node_key, ClusterRecord, NodeRecord, CLUSTER_KEY};
use crate::control::{ClusterPort, Control};
use crate::store::{Check, Op, Store, Txn, TxnOutcome};

/// SwarmKit's `GRPCMaxMsgSize`: the largest message a peer may send us.
pub const MAX_MESSAGE_BYTES: usize = 4 << 20;

/// State shared by the services of one running cluster port.
pub struct Shared {
    pub control: Arc<Control>,
    pub store: Store,
    /// This manager's node ID and the address workers should dial.
    pub manager_id: String,
    pub advertise_addr: String,
    pub dispatcher: dispatcher::Sessions,
    /// The last decoded cluster record, with its store version.
    cluster_cache: std::sync::Mutex<Option<(u64, Arc<ClusterRecord>)>>,
}

impl Shared {
    /// The cluster record and its version. Decoded once per version: every join and session
    /// reads it, and it changes rarely (token rotation, spec updates).
    pub fn cluster(&self) -> Result<(Arc<ClusterRecord>, u64), Status> {
        let v = self
            .store
            .get(CLUSTER_KEY)
            .ok_or_else(|| Status::failed_precondition("this manager is not part of a swarm"))?;
        let mut cache = self.cluster_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some((version, record)) = cache.as_ref() {
            if *version == v.version {
                return Ok((record.clone(), v.version));
            }
        }
        let record: Arc<ClusterRecord> = Arc::new(
            serde_json::from_slice(&v.value)
                .map_err(|_| Status::internal("the cluster record cannot be decoded"))?,
        );
        *cache = Some((v.version, record.clone()));
        Ok((record, v.version))
    }

    pub fn node(&self, id: &str) -> Result<Option<(NodeRecord, u64)>, Status> {
        match self.store.get(&node_key(id)) {
            None => Ok(None),
            Some(v) => serde_json::from_slice(&v.value)
                .map(|r| Some((r, v.version)))
                .map_err(|_| Status::internal("a node record cannot be decoded")),
        }
    }

    /// Read-modify-write of a node record under a version check, retried on conflicts.
    /// `change` returns false to leave the record as it is. `Ok(None)`: no such node.
    pub async fn update_node(
        &self,
        id: &str,
        mut change: impl FnMut(&mut NodeRecord) -> bool,
    ) -> Result<Option<NodeRecord>, Status> {
        for _ in 0..8 {
            let Some((mut record, version)) = self.node(id)? else {
                return Ok(None);
            };
            if !change(&mut record) {
                return Ok(Some(record));
            }
            record.updated_at = crate::control::now_rfc3339();
            let key = node_key(id);
            let txn = Txn {
                checks: vec![Check::Version {
                    key: key.clone(),
                    version,
                }],
                ops: vec![put(&key, &record)?],
            };
            if let TxnOutcome::Committed { .. } = self.apply(txn).await? {
                return Ok(Some(record));
            }
        }
        Err(Status::aborted(
            "the node record kept changing under this request; try again",
        ))
    }

    pub async fn apply(&self, txn: Txn) -> Result<TxnOutcome, Status> {
        self.store.apply(txn).await.map_err(|e| {
            tracing::error!(error = %e, "cluster store write failed");
            Status::unavailable("the cluster store refused the write; try again")
        })
    }
}

pub fn put<T: serde::Serialize>(key: &str, value: &T) -> Result<Op, Status> {
    Ok(Op::Put {
        key: key.to_string(),
        value: serde_json::to_vec(value).map_err(|_| Status::internal("cannot encode a record"))?,
    })
}

pub fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    B64.decode(s.as_bytes()).unwrap_or_default()
}

/// Waits until a stop/end flag turns true (or its sender is gone). The guard `wait_for` returns
/// is dropped here, so callers stay `Send`.
pub async fn until_true(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|v| *v).await;
}

/// A running cluster port. Dropping it does not stop it; call [`Running::stop`].
#[allow(dead_code)] // `addr` serves tests.
pub struct Running {
    pub addr: SocketAddr,
    pub tls: Arc<ArcSwap<rustls::ServerConfig>>,
    pub shared: Arc<Shared>,
    tls_fingerprint: [u8; 32],
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
    #[error("cannot read this manager's certificate: {0}")]
    Identity(std::io::Error),
    #[error("TLS: {0}")]
    Tls(#[from] tls::TlsError),
    #[error("this manager is not part of a swarm")]
    NotInSwarm,
}

/// The TLS material now: cluster root from the store, this manager's certificate and key from
/// its data dir. Returns the config and a fingerprint of what went into it.
/// The cluster port's TLS material as it is now: its fingerprint (root PEM and server
/// certificate) and, unless it matches `unchanged`, the server config built from it.
fn current_tls(
    control: &Control,
    unchanged: Option<&[u8; 32]>,
) -> Result<([u8; 32], Option<Arc<rustls::ServerConfig>>), StartError> {
    let cluster: ClusterRecord = control
        .store()
        .get(CLUSTER_KEY)
        .and_then(|v| serde_json::from_slice(&v.value).ok())
        .ok_or(StartError::NotInSwarm)?;
    let certs = control.config().data_dir.join("certificates");
    let cert = std::fs::read(certs.join("swarm-node.crt")).map_err(StartError::Identity)?;
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(cluster.root_ca_pem.as_bytes());
    ctx.update(&cert);
    let mut fp = [0u8; 32];
    fp.copy_from_slice(ctx.finish().as_ref());
    if unchanged == Some(&fp) {
        // Building a config parses the key and the roots: skip it when nothing changed.
        return Ok((fp, None));
    }
    let key = zeroize::Zeroizing::new(
        std::fs::read(certs.join("swarm-node.key")).map_err(StartError::Identity)?,
    );
    let config = tls::server_config(cluster.root_ca_pem.as_bytes(), &cert, &key)?;
    Ok((fp, Some(config)))
}

impl Running {
    /// Swaps in a new server certificate or trusted root, if either changed: new connections
    /// use it at once, established ones keep theirs; nothing restarts.
    pub fn reload_tls(&mut self) -> Result<bool, StartError> {
        let (fp, config) = current_tls(&self.shared.control, Some(&self.tls_fingerprint))?;
        let Some(config) = config else {
            return Ok(false);
        };
        self.tls.store(config);
        self.tls_fingerprint = fp;
        tracing::info!("cluster port TLS material reloaded");
        Ok(true)
    }
}

/// Starts the cluster port of an initialized manager.
pub async fn start(control: Arc<Control>) -> Result<Running, StartError> {
    let local = control.local_identity().ok_or(StartError::NotInSwarm)?;
    let store = control.store().clone();
    let (tls_fingerprint, config) = current_tls(&control, None)?;
    let config = config.ok_or(StartError::NotInSwarm)?;
    let tls = Arc::new(ArcSwap::new(config));
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
    let shared = Arc::new(Shared {
        control: control.clone(),
        store,
        manager_id: local.node_id.clone(),
        advertise_addr: local.advertise_addr.to_string(),
        dispatcher: dispatcher::Sessions::default(),
        cluster_cache: Default::default(),
    });
    // Nodes the store shows Ready must re-register within a heartbeat window, or go Down.
    if let Ok((cluster, _)) = shared.cluster() {
        let period = dispatcher::heartbeat_period(&cluster);
        for (_, v) in shared.store.list(crate::control::records::NODE_PREFIX) {
            if let Ok(n) = serde_json::from_slice::<NodeRecord>(&v.value) {
                if n.id != shared.manager_id && n.status.state == "ready" {
                    shared.dispatcher.expect(&n.id, period);
                }
            }
        }
    }
    let (stop_tx, stop_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(256);
    let mut tasks = vec![tokio::spawn(tls::accept_loop(listener, tls.clone(), tx))];
    tasks.push(tokio::spawn(dispatcher::expire_loop(
        shared.clone(),
        stop_rx.clone(),
    )));
    let router = tonic::transport::Server::builder()
        .timeout(Duration::from_secs(120))
        .http2_keepalive_interval(Some(Duration::from_secs(60)))
        .max_concurrent_streams(Some(512))
        .add_service(
            pb::ca_server::CaServer::new(ca::CaService(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::node_ca_server::NodeCaServer::new(ca::NodeCaService(shared.clone()))
                .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::dispatcher_server::DispatcherServer::new(dispatcher::DispatcherService(
                shared.clone(),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        )
        .add_service(
            pb::log_broker_server::LogBrokerServer::new(dispatcher::LogBrokerService(
                shared.clone(),
            ))
            .max_decoding_message_size(MAX_MESSAGE_BYTES),
        );
    let mut stop = stop_rx;
    tasks.push(tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let shutdown = async move {
            let _ = crate::grpc::until_true(&mut stop).await;
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
        shared,
        tls_fingerprint,
        stop: stop_tx,
        tasks,
    })
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

/// Renews this manager's own certificate at a random 50–80 % of its lifetime, as agents and
/// SwarmKit nodes do; the new pair reaches the cluster port without a restart. The certificate
/// is looked at every minute, so a new swarm (or a renewal by other means) gets its own renewal
/// point; a failed renewal is retried a minute later, the old certificate serving meanwhile.
pub async fn keep_own_certificate_fresh(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    const LOOK_EVERY: Duration = Duration::from_secs(60);
    // The certificate's NotAfter and the renewal point drawn for it.
    let mut plan: Option<(std::time::SystemTime, tokio::time::Instant)> = None;
    loop {
        let validity = match control.local_identity() {
            Some(_) => crate::control::local::LocalIdentity::certificate_validity(
                &control.config().data_dir,
            )
            .ok(),
            None => None,
        };
        let now = tokio::time::Instant::now();
        let due = match validity {
            Some((not_before, not_after)) => {
                let at = match plan {
                    Some((na, at)) if na == not_after => at,
                    _ => now + crate::agent::renewal_delay(not_before, not_after),
                };
                plan = Some((not_after, at));
                at
            }
            None => {
                plan = None;
                now + LOOK_EVERY
            }
        };
        if plan.is_some() && due <= now {
            match control.renew_own_certificate().await {
                Ok(_) => continue,
                Err(e) => {
                    tracing::warn!(error = %e, "renewing this manager's certificate failed; retrying in a minute");
                    plan = plan.map(|(na, _)| (na, now + LOOK_EVERY));
                }
            }
        }
        tokio::select! {
            _ = crate::grpc::until_true(&mut stop) => return,
            _ = tokio::time::sleep_until(due.min(now + LOOK_EVERY).max(now + Duration::from_millis(10))) => {}
        }
    }
}

/// Keeps the cluster port running exactly while this manager is part of a swarm.
pub async fn supervise(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut events = control.store().subscribe();
    let mut running: Option<Running> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    loop {
        let in_swarm = control.local_identity().is_some();
        match (&running, in_swarm) {
            (None, true) => match start(control.clone()).await {
                Ok(r) => {
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
                    if let Err(e) = r.reload_tls() {
                        tracing::warn!(error = %e, "cannot reload the cluster port's TLS material");
                    }
                }
            }
            (Some(_), false) => {
                if let Some(r) = running.take() {
                    r.stop().await;
                    control.set_cluster_port(ClusterPort::Stopped);
                    tracing::info!("cluster port stopped: left the swarm");
                }
            }
            (None, false) => control.set_cluster_port(ClusterPort::Stopped),
        }
        tokio::select! {
            _ = crate::grpc::until_true(&mut stop) => break,
            _ = identity_changed(&mut events, &control) => {}
            _ = control.membership_changed() => {}
            _ = tick.tick() => {}
        }
    }
    if let Some(r) = running.take() {
        r.stop().await;
    }
}
