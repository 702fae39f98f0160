//! Node-certificate issuance throughput on one thread.
//!
//! `cargo bench -p swarmguard-ca --bench issue` (set `ISSUE_N` to change the
//! count). CSRs are generated up front; each timed step is the whole CA path:
//! CSR size/PEM checks, parse, key checks, signature verification, signing and
//! PEM encoding.

use std::time::{Duration, Instant};

use swarmguard_ca::{
    check_csr, generate_node_key_and_csr, new_id, NodeRole, RootCa, DEFAULT_NODE_CERT_EXPIRY,
};

fn main() {
    let n: usize = std::env::var("ISSUE_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5000);
    let root = RootCa::create().expect("root CA");
    let cluster = new_id();
    let inputs: Vec<(Vec<u8>, String)> = (0..n)
        .map(|_| (generate_node_key_and_csr().1, new_id()))
        .collect();

    // Warm up caches and lazy initialisation.
    for (csr, node) in inputs.iter().take(50) {
        root.issue_node_certificate(
            &check_csr(csr).expect("csr"),
            node,
            NodeRole::Worker,
            &cluster,
            DEFAULT_NODE_CERT_EXPIRY,
        )
        .expect("issue");
    }

    let mut lat: Vec<Duration> = Vec::with_capacity(n);
    let mut bytes = 0usize;
    let start = Instant::now();
    for (i, (csr, node)) in inputs.iter().enumerate() {
        let role = if i % 10 == 0 {
            NodeRole::Manager
        } else {
            NodeRole::Worker
        };
        let t = Instant::now();
        let issued = root
            .issue_node_certificate(
                &check_csr(csr).expect("csr"),
                node,
                role,
                &cluster,
                DEFAULT_NODE_CERT_EXPIRY,
            )
            .expect("issue");
        lat.push(t.elapsed());
        bytes += std::hint::black_box(issued.cert_pem.len());
    }
    let total = start.elapsed();
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p).ceil() as usize).min(lat.len()) - 1];
    println!(
        "issue: {n} certs in {:.3} s = {:.0} certs/s",
        total.as_secs_f64(),
        n as f64 / total.as_secs_f64()
    );
    println!(
        "issue latency: p50 {:.1} us, p99 {:.1} us, max {:.1} us (avg cert PEM {} bytes)",
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6,
        lat[lat.len() - 1].as_secs_f64() * 1e6,
        bytes / n
    );
}
