//! The join storm: many clients each running the full join (fresh TLS connection, token +
//! CSR, status until issued) against one manager, for `benches/join_storm.rs`. Against a
//! loopback manager each client connects from its own 127.0.x.y address, as separate nodes
//! would, so the manager's per-address connection caps apply per client.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use swarmguard_ca::JoinToken;

use super::{download_root, tls, AgentError};
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
        let local = addr
            .ip()
            .is_loopback()
            .then(|| {
                std::net::IpAddr::V4(std::net::Ipv4Addr::new(
                    127,
                    0,
                    1 + (client / 250) as u8,
                    2 + (client % 250) as u8,
                ))
            })
            .filter(|_| addr.is_ipv4());
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
                loop {
                    let st = ca
                        .node_certificate_status(pb::NodeCertificateStatusRequest {
                            node_id: issued.node_id.clone(),
                        })
                        .await?
                        .into_inner();
                    let done = st
                        .certificate
                        .as_ref()
                        .is_some_and(|c| !c.certificate.is_empty() && c.csr == csrs[i]);
                    if done {
                        break;
                    }
                }
                latencies
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(t.elapsed());
            }
        }));
    }
    for t in tasks {
        t.await
            .map_err(|e| AgentError::Connect(format!("storm client died: {e}")))??;
    }
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
    Ok(StormResult {
        clients,
        joins,
        seconds,
        certs_per_second: joins as f64 / seconds,
        p50_ms: at(0.5),
        p99_ms: at(0.99),
    })
}
