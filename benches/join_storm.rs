//! Join storm: in-process Rust clients (`swarmguard agent join-storm`, one process, N tasks)
//! each running the full join — fresh TLS connection, token + CSR, status until issued — 4 and
//! 32 at a time, against swarmguard and against a real dockerd manager started here, in one run.
//!
//! Run: `cargo bench --bench join_storm` (as root: dockerd runs in its own network namespace).
//! `JOINS=<n>` sets the joins per row (default 500). Prints a markdown table.

#[path = "../tests/support/mod.rs"]
mod support;

use std::process::Command;

use support::dockerd::Dockerd;
use support::free_port;
use support::manager::Manager;

fn storm(
    netns: Option<&str>,
    addr: &str,
    token: &str,
    clients: usize,
    joins: usize,
) -> serde_json::Value {
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/var/run/netns/{ns}"))
                .arg(env!("CARGO_BIN_EXE_swarmguard"));
            c
        }
        None => Command::new(env!("CARGO_BIN_EXE_swarmguard")),
    };
    let out = cmd
        .args(["agent", "join-storm", "--clients"])
        .arg(clients.to_string())
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

fn row(target: &str, r: &serde_json::Value) -> String {
    format!(
        "| {target} | {} | {} | {:.0} | {:.1} | {:.1} |",
        r["clients"],
        r["joins"],
        r["certs_per_second"].as_f64().unwrap(),
        r["p50_ms"].as_f64().unwrap(),
        r["p99_ms"].as_f64().unwrap()
    )
}

fn main() {
    let joins: usize = std::env::var("JOINS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500);
    let mut rows = Vec::new();
    let mut rates = Vec::new();

    // swarmguard, release or debug as cargo built it.
    let dir = tempfile::tempdir().expect("tempdir");
    let m = Manager::start(dir.path());
    m.init_swarm(&[]);
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    for clients in [4, 32] {
        let r = storm(None, &m.cluster_addr, token.trim(), clients, joins);
        rows.push(row("swarmguard", &r));
        rates.push(r["certs_per_second"].as_f64().unwrap());
    }
    drop(m);

    // A real dockerd (SwarmKit) manager in its own network namespace.
    let d = Dockerd::start(true);
    let ns = d.netns.clone().expect("netns");
    let addr = format!("127.0.0.1:{}", free_port());
    d.docker_ok(&[
        "swarm",
        "init",
        "--listen-addr",
        &addr,
        "--advertise-addr",
        "127.0.0.1",
    ]);
    let token = d.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    for clients in [4, 32] {
        let r = storm(Some(&ns), &addr, token.trim(), clients, joins);
        rows.push(row("dockerd (SwarmKit)", &r));
        rates.push(r["certs_per_second"].as_f64().unwrap());
    }
    let version = d.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    drop(d);

    println!(
        "Join storm, {joins} joins per row; dockerd {}",
        version.trim()
    );
    println!();
    println!("| manager | clients | joins | certificates/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!();
    println!(
        "swarmguard / dockerd: {:.1}x with 4 clients, {:.1}x with 32 clients",
        rates[0] / rates[2],
        rates[1] / rates[3]
    );
}
