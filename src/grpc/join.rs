//! `docker swarm join --token <manager token>` on a swarmguard manager: the cluster-port side.
//!
//! 1. The stock join (root download checked against the token, CSR, certificate with
//!    OU=swarm-manager), as a worker does it (`agent::join`).
//! 2. While the swarm's state is not here yet, the cluster port serves only the Raft service,
//!    to this cluster's managers ([`Gate::Joining`]).
//! 3. `Join` on the manager we joined through: it adds us as a learner, catches us up
//!    (snapshot, then log) and makes us a voter before answering.
//! 4. With the root and our node record replicated, the identity is adopted and the full
//!    cluster port takes over.

use std::sync::Arc;
use std::time::Duration;

use swarmguard_ca::NodeRole;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};

use super::raft::{join_group, Dialer, Gate, JoinBody, RaftService};
use super::{accept, limits};
use crate::agent::AgentError;
use crate::control::records::{node_key, CLUSTER_KEY, ROOT_CA_KEY};
use crate::control::{parse_addr, Code, Control, ControlError};

/// What `POST /swarm/join` asks for.
#[derive(Debug, Clone, Default)]
pub struct JoinOptions {
    pub listen_addr: String,
    pub advertise_addr: String,
    pub remote_addrs: Vec<String>,
    pub join_token: String,
}

/// How long the joined swarm's state may take to reach this manager.
const CATCH_UP: Duration = Duration::from_secs(60);

fn agent_error(e: AgentError) -> ControlError {
    match e {
        AgentError::Rpc(s) => ControlError::rpc(Code::Unknown, s.message()),
        e @ (AgentError::Connect(_) | AgentError::Tls(_)) => {
            ControlError::Unavailable(format!("cannot reach the manager to join: {e}"))
        }
        e => ControlError::InvalidArgument(e.to_string()),
    }
}

/// The whole join of this manager into a swarm (see the module docs).
pub async fn join_as_manager(control: Arc<Control>, req: JoinOptions) -> Result<(), ControlError> {
    let _one_at_a_time = control.membership_guard().await;
    control.check_can_join().await?;
    let remote = req
        .remote_addrs
        .first()
        .and_then(|a| parse_addr(a, 2377))
        .ok_or_else(|| {
            ControlError::InvalidArgument(
                "RemoteAddrs must name the manager to join as ip:port".into(),
            )
        })?;
    let (listen, advertise) = control
        .config()
        .resolve_addrs(&req.listen_addr, &req.advertise_addr)?;
    let creds = crate::agent::join(remote, &req.join_token)
        .await
        .map_err(agent_error)?;
    if creds.role != NodeRole::Manager {
        return Err(ControlError::InvalidArgument(
            "a swarmguard manager joins with the manager token (`docker swarm join-token manager`); workers are stock Docker engines or `swarmguard agent`".into(),
        ));
    }
    let server_config = crate::tls::server_config(&creds.root_pem, &creds.cert_pem, &creds.key_pem)
        .map_err(|e| ControlError::internal("cannot build the cluster port's TLS", e))?;
    let client_config =
        crate::agent::tls::verified(&creds.root_pem, Some((&creds.cert_pem, &creds.key_pem)))
            .map_err(|e| ControlError::internal("cannot build the managers' client TLS", e))?;
    let store = control.store().clone();
    let gate = Gate::Joining {
        store: store.clone(),
        cluster_id: creds.cluster_id.clone(),
    };
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|e| ControlError::Unavailable(format!("cannot listen on {listen}: {e}")))?;
    let (stop, tasks) = serve_raft_only(listener, server_config, gate);
    let dialer = Arc::new(Dialer::new(client_config));
    store.set_transport(Some(dialer.clone()));
    let body = JoinBody {
        raft_id: store.node_id(),
        addr: advertise.to_string(),
    };
    let joined = async {
        join_group(&dialer, &remote.to_string(), &body)
            .await
            .map_err(|s| ControlError::rpc(Code::Unknown, s.message()))?;
        for key in [CLUSTER_KEY, ROOT_CA_KEY, &node_key(&creds.node_id)] {
            store
                .wait_for_key(key, CATCH_UP)
                .await
                .map_err(crate::control::records::store_error)?;
        }
        Ok::<(), ControlError>(())
    }
    .await;
    let _ = stop.send(true);
    for t in tasks {
        t.abort();
        let _ = t.await;
    }
    if let Err(e) = joined {
        store.set_transport(None);
        tracing::error!(error = %e, "joining the swarm as a manager failed");
        return Err(e);
    }
    control.adopt_identity(
        &creds.root_pem,
        &creds.cert_pem,
        &creds.key_pem,
        &creds.node_id,
        listen,
        advertise,
    )
}

/// The cluster port with only the Raft service, for [`Gate::Joining`] (a join, or a restart
/// that recovers: `super::recover`).
pub(super) fn serve_raft_only(
    listener: TcpListener,
    tls: Arc<rustls::ServerConfig>,
    gate: Gate,
) -> (watch::Sender<bool>, Vec<tokio::task::JoinHandle<()>>) {
    let (stop_tx, mut stop_rx) = watch::channel(false);
    let (tx, rx) = mpsc::channel(64);
    let tls = Arc::new(arc_swap::ArcSwap::new(tls));
    let accept = tokio::spawn(accept::accept_loop(
        listener,
        tls,
        limits::Limits::new(limits::LimitConfig::from_process()),
        accept::Deadlines::default(),
        tx,
    ));
    let serve = tokio::spawn(async move {
        let incoming = tokio_stream::wrappers::ReceiverStream::new(rx);
        let shutdown = async move {
            let _ = crate::util::until_true(&mut stop_rx).await;
        };
        let router = tonic::transport::Server::builder()
            .timeout(Duration::from_secs(120))
            .add_service(RaftService::server(gate));
        if let Err(e) = router
            .serve_with_incoming_shutdown(incoming, shutdown)
            .await
        {
            tracing::error!(error = %e, "raft port for the join stopped");
        }
    });
    (stop_tx, vec![accept, serve])
}
