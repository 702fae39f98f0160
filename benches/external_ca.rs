//! External CA throughput: certificates per second through swarmguard with a real `cfssl serve`
//! as its CA (full joins: fresh TLS, token + CSR, status until issued, 4 clients; every
//! certificate signed by cfssl and checked by the manager) against raw cfssl `sign` calls made
//! by this bench to the same cfssl (same request body, a fresh connection each, 4 threads).
//!
//! Run: `cargo bench --bench external_ca`. `JOINS=<n>` sets the certificates per row (default
//! 300). Prints a markdown table and the overhead ratio (raw rate / swarmguard rate), and the same joins
//! with the internal CA for the breakdown.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Instant;

use support::cfssl::{CfsslCa, CfsslServer, ServeOptions, GOOD_PROFILE};
use support::manager::Manager;

const CLIENTS: usize = 4;

/// One SwarmKit-shaped sign request over a fresh connection; panics unless cfssl signed.
fn raw_sign(port: u16, body: &str) {
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(
        s,
        "POST /api/v1/cfssl/sign HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    assert!(
        out.starts_with("HTTP/1.1 200") && out.contains("\"success\":true"),
        "{out}"
    );
}

fn raw_rate(port: u16, n: usize) -> f64 {
    // Bodies (fresh key and CSR each) are made before the clock starts.
    let bodies: Vec<String> = (0..n)
        .map(|_| {
            let (_, csr) = swarmguard_ca::generate_node_key_and_csr();
            let node = swarmguard_ca::new_id();
            serde_json::json!({
                "hosts": ["swarm-worker", node],
                "certificate_request": String::from_utf8(csr).unwrap(),
                "subject": {"CN": node, "names": [{"O": swarmguard_ca::new_id(), "OU": "swarm-worker"}], "SerialNumber": ""},
                "profile": "", "crl_override": "", "label": ""
            })
            .to_string()
        })
        .collect();
    let start = Instant::now();
    std::thread::scope(|scope| {
        for chunk in bodies.chunks(n.div_ceil(CLIENTS)) {
            scope.spawn(move || {
                for b in chunk {
                    raw_sign(port, b);
                }
            });
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}

fn storm(addr: &str, token: &str, joins: usize) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_swarmguard"))
        .args(["agent", "join-storm", "--clients"])
        .arg(CLIENTS.to_string())
        .arg("--joins")
        .arg(joins.to_string())
        .arg(addr)
        .env("SWARMGUARD_JOIN_TOKEN", token)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run swarmguard agent join-storm");
    assert!(
        out.status.success(),
        "join storm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("storm result JSON")
}

fn main() {
    let joins: usize = std::env::var("JOINS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let work = support::short_tempdir("sgxb");
    let ca = CfsslCa::create(work.path(), "ca", "cfssl-bench-root");
    let cf = CfsslServer::start(
        work.path(),
        ServeOptions {
            ca: &ca,
            profile: GOOD_PROFILE.into(),
            auth_key: None,
            tls: None,
            netns: None,
        },
    );
    let mdir = tempfile::tempdir().unwrap();
    let m = Manager::start(mdir.path());
    let flag = format!(
        "protocol=cfssl,url={},cacert={}",
        cf.url("sign"),
        ca.cert.display()
    );
    m.init_swarm(&["--external-ca", &flag]);
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);

    // Raw first, then through swarmguard, then raw again: the two raw runs bracket the storm.
    let raw1 = raw_rate(cf.port, joins);
    let before = cf.signed();
    let r = storm(&m.cluster_addr, token.trim(), joins);
    let through = r["certs_per_second"].as_f64().unwrap();
    assert_eq!(cf.signed() - before, joins, "one cfssl signature per join");
    let raw2 = raw_rate(cf.port, joins);
    let raw = (raw1 + raw2) / 2.0;
    drop(m);

    // The same joins with the internal CA: the join path without cfssl, for the breakdown.
    let idir = tempfile::tempdir().unwrap();
    let internal = Manager::start(idir.path());
    internal.init_swarm(&[]);
    let itoken = internal.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let ri = storm(&internal.cluster_addr, itoken.trim(), joins);
    drop(internal);

    println!(
        "External CA (cfssl serve, http loopback), {joins} certificates per row, {CLIENTS} clients"
    );
    println!();
    println!("| path | certificates/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|");
    println!("| raw cfssl sign (bench → cfssl), run 1 | {raw1:.0} | | |");
    println!(
        "| swarmguard join (agent → manager → cfssl → checks → store) | {through:.0} | {:.1} | {:.1} |",
        r["p50_ms"].as_f64().unwrap(),
        r["p99_ms"].as_f64().unwrap()
    );
    println!("| raw cfssl sign, run 2 | {raw2:.0} | | |");
    println!(
        "| swarmguard join, internal CA (no cfssl) | {:.0} | {:.1} | {:.1} |",
        ri["certs_per_second"].as_f64().unwrap(),
        ri["p50_ms"].as_f64().unwrap(),
        ri["p99_ms"].as_f64().unwrap()
    );
    println!();
    println!(
        "overhead ratio (raw / through swarmguard): {:.2}x",
        raw / through
    );
    drop(cf);
}
