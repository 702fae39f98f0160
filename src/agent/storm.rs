//! Load from many simulated nodes in one process, for the benches: the join storm (many clients
//! each running the full join: fresh TLS connection, token + CSR, status until issued), the
//! renewal storm (nodes that already joined renew over mTLS connections opened before the clock
//! starts: issuance alone, without the join's handshakes) and the swarm simulation (nodes that
//! keep sessions open and renew or change root when told, for a root rotation). Against a
//! loopback manager each client or node connects from its own 127.0.x.y address, as separate
//! nodes would, so the manager's per-address connection caps apply per node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmguard_ca::JoinToken;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::{download_root, tls, AgentError, Credentials};
use crate::pb;

#[derive(Debug, serde::Serialize)]
pub struct StormResult {
    pub clients: usize,
    pub joins: usize,
    pub seconds: f64,
    pub certs_per_second: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
}

/// Runs `joins` joins with `clients` concurrent clients. Keys and CSRs are made beforehand so
/// the clock measures the manager, not the client's key generation.
pub async fn join_storm(
    addr: SocketAddr,
    token: &str,
    clients: usize,
    joins: usize,
) -> Result<StormResult, AgentError> {
    let root = download_root(addr, &JoinToken::parse(token)?).await?;
    let config = tls::verified(&root, None)?;
    let csrs: Arc<Vec<Vec<u8>>> = Arc::new(
        (0..joins)
            .map(|_| swarmguard_ca::generate_node_key_and_csr().1)
            .collect(),
    );
    let next = Arc::new(AtomicUsize::new(0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(joins)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for client in 0..clients.max(1) {
        // Each client is a node of its own: on loopback, from an address of its own.
        let local = local_for(addr, client);
        let (csrs, next, latencies, config) = (
            csrs.clone(),
            next.clone(),
            latencies.clone(),
            config.clone(),
        );
        let token = token.to_string();
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= csrs.len() {
                    return Ok::<(), AgentError>(());
                }
                let t = Instant::now();
                let ch = tls::channel_from(addr, local, config.clone(), "swarm-ca").await?;
                let mut ca = pb::node_ca_client::NodeCaClient::new(ch);
                let issued = ca
                    .issue_node_certificate(pb::IssueNodeCertificateRequest {
                        csr: csrs[i].clone(),
                        token: token.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                wait_issued(&mut ca, &issued.node_id, &csrs[i]).await?;
                latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t.elapsed());
            }
        }));
    }
    joined(tasks).await?;
    Ok(result(clients, joins, start, &latencies))
}

/// The `n`th simulated node's local address against a loopback IPv4 manager (127.0.1.2 on;
/// distinct for the first 63,500).
fn local_for(addr: SocketAddr, n: usize) -> Option<IpAddr> {
    (addr.ip().is_loopback() && addr.is_ipv4()).then(|| {
        IpAddr::V4(Ipv4Addr::new(
            127,
            0,
            (1 + (n / 250) % 254) as u8,
            (2 + n % 250) as u8,
        ))
    })
}

fn result(
    clients: usize,
    joins: usize,
    start: Instant,
    latencies: &Mutex<Vec<Duration>>,
) -> StormResult {
    let seconds = start.elapsed().as_secs_f64();
    let mut l = std::mem::take(&mut *latencies.lock().unwrap_or_else(|e| e.into_inner()));
    l.sort();
    let at = |q: f64| -> f64 {
        l.get(((l.len().saturating_sub(1)) as f64 * q).round() as usize)
            .copied()
            .unwrap_or(Duration::ZERO)
            .as_secs_f64()
            * 1000.0
    };
    StormResult {
        clients,
        joins,
        seconds,
        certs_per_second: joins as f64 / seconds,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    }
}

/// Joins `n` nodes, `clients` at a time (not timed), each from its own address; their
/// credentials, checked as a node checks them.
async fn join_nodes(
    addr: SocketAddr,
    root: &[u8],
    token: &str,
    clients: usize,
    n: usize,
) -> Result<Vec<(Credentials, Option<IpAddr>)>, AgentError> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (next, root, token) = (next.clone(), root.to_vec(), token.to_string());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok::<_, AgentError>(out);
                }
                let local = local_for(addr, i);
                let c =
                    super::request_certificate_from(addr, local, &root, Some(&token), None).await?;
                out.push((c, local));
            }
        }));
    }
    Ok(joined(tasks).await?.into_iter().flatten().collect())
}

/// Every storm client's result, in order; the first error, or a client that died, ends it.
async fn joined<T>(
    tasks: Vec<tokio::task::JoinHandle<Result<T, AgentError>>>,
) -> Result<Vec<T>, AgentError> {
    let mut all = Vec::with_capacity(tasks.len());
    for t in tasks {
        all.push(
            t.await
                .map_err(|e| AgentError::Connect(format!("storm client died: {e}")))??,
        );
    }
    Ok(all)
}

/// Nodes that joined, each with an mTLS connection open and a CSR made: ready to renew.
pub struct Renewals(Vec<(pb::node_ca_client::NodeCaClient<Channel>, Vec<u8>)>);

/// Joins `nodes` nodes (`clients` at a time), opens one mTLS connection per node and makes
/// each a key and CSR: everything [`renew_storm`] does not time.
pub async fn prepare_renewals(
    addr: SocketAddr,
    token: &str,
    clients: usize,
    nodes: usize,
) -> Result<Renewals, AgentError> {
    let root = download_root(addr, &JoinToken::parse(token)?).await?;
    let joined = join_nodes(addr, &root, token, clients, nodes).await?;
    let mut ready = Vec::with_capacity(nodes);
    for (c, local) in &joined {
        let config = tls::verified(&root, Some((&c.cert_pem, &c.key_pem)))?;
        let ch = tls::channel_from(addr, *local, config, "swarm-manager").await?;
        let csr = swarmguard_ca::generate_node_key_and_csr().1;
        ready.push((pb::node_ca_client::NodeCaClient::new(ch), csr));
    }
    Ok(Renewals(ready))
}

/// Each prepared node renews once (clock running), `clients` at a time, status until issued.
/// Every node's first renewal is admitted, so the per-node renewal limit is not in the way.
pub async fn renew_storm(nodes: Renewals, clients: usize) -> Result<StormResult, AgentError> {
    let n = nodes.0.len();
    let queue = Arc::new(Mutex::new(nodes.0));
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(n)));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients.max(1) {
        let (queue, latencies) = (queue.clone(), latencies.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                let Some((mut ca, csr)) = next else {
                    return Ok::<(), AgentError>(());
                };
                let t = Instant::now();
                let issued = ca
                    .issue_node_certificate(pb::IssueNodeCertificateRequest {
                        csr: csr.clone(),
                        ..Default::default()
                    })
                    .await?
                    .into_inner();
                wait_issued(&mut ca, &issued.node_id, &csr).await?;
                latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t.elapsed());
            }
        }));
    }
    joined(tasks).await?;
    Ok(result(clients, n, start, &latencies))
}

/// Asks for the node's certificate status until it holds a certificate for `csr`.
async fn wait_issued(
    ca: &mut pb::node_ca_client::NodeCaClient<Channel>,
    node_id: &str,
    csr: &[u8],
) -> Result<(), AgentError> {
    loop {
        let st = ca
            .node_certificate_status(pb::NodeCertificateStatusRequest {
                node_id: node_id.to_string(),
            })
            .await?
            .into_inner();
        if let Some(s) = &st.status {
            if s.state == pb::issuance_status::State::Failed as i32 {
                return Err(AgentError::IssuanceFailed(s.err.clone()));
            }
        }
        let done = st
            .certificate
            .as_ref()
            .is_some_and(|c| !c.certificate.is_empty() && c.csr == csr);
        if done {
            return Ok(());
        }
    }
}

/// What the swarm simulation reports when it stops.
#[derive(Debug, serde::Serialize)]
pub struct SimResult {
    pub nodes: usize,
    pub sessions: u64,
    pub renewals: u64,
}

/// Joins `nodes` nodes and runs each as an agent (session, heartbeats, renewal when told,
/// a new root when one comes), printing `{"ready":N}` once every node has a session, until
/// `stop`.
pub async fn swarm_sim(
    addr: SocketAddr,
    token: &str,
    clients: usize,
    nodes: usize,
    mut stop: watch::Receiver<bool>,
) -> Result<SimResult, AgentError> {
    let root = download_root(addr, &JoinToken::parse(token)?).await?;
    let joined = join_nodes(addr, &root, token, clients, nodes).await?;
    let mut states = Vec::with_capacity(nodes);
    let mut runs = Vec::with_capacity(nodes);
    for (creds, local) in joined {
        let (state_tx, state_rx) = watch::channel(super::AgentState::default());
        let opts = super::RunOptions {
            local,
            ..Default::default()
        };
        runs.push(tokio::spawn(super::run(
            creds,
            addr,
            None,
            opts,
            state_tx,
            stop.clone(),
        )));
        states.push(state_rx);
    }
    let sum =
        |f: fn(&super::AgentState) -> u64| -> u64 { states.iter().map(|s| f(&s.borrow())).sum() };
    loop {
        if states.iter().all(|s| s.borrow().sessions > 0) {
            break;
        }
        tokio::select! {
            _ = crate::util::until_true(&mut stop) => break,
            _ = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
    println!("{}", serde_json::json!({ "ready": nodes }));
    crate::util::until_true(&mut stop).await;
    for r in runs {
        let _ = r.await;
    }
    Ok(SimResult {
        nodes,
        sessions: sum(|s| s.sessions),
        renewals: sum(|s| s.renewals),
    })
}
