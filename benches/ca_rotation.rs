//! Root rotation with many nodes: the time for `docker swarm ca --rotate` to finish (every node
//! re-issued from the new root, the old root dropped) with `NODES` agent nodes (default 1,000)
//! simulated in one process (`swarmguard agent swarm-sim`: each node joins, keeps a session with
//! heartbeats open, renews when marked ROTATE and takes the new root when its session brings
//! it), against swarmguard and then a real dockerd (SwarmKit) manager started here, in one run.
//!
//! Run: `cargo bench --bench ca_rotation` (as root: dockerd runs in its own network namespace).
//! `NODES=<n>` sets the nodes; `LIMIT_S=<s>` bounds each rotation (default 600). Prints a
//! markdown table. Both managers mark nodes for renewal 30 every 3 s (SwarmKit's batch), so
//! the rotation cannot finish in less than about NODES / 10 seconds on either.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use support::dockerd::Dockerd;
use support::manager::{unix_request, Manager};

/// The simulated nodes' process, stopped (stdin closed, then by its PID) when dropped.
struct Sim {
    child: Child,
    out: BufReader<std::process::ChildStdout>,
}

impl Sim {
    fn start(netns: Option<&str>, addr: &str, token: &str, nodes: usize) -> Sim {
        let mut child = support::command_in(netns, env!("CARGO_BIN_EXE_swarmguard"))
            .args(["agent", "swarm-sim", "--clients", "16", "--nodes"])
            .arg(nodes.to_string())
            .arg(addr)
            .env("SWARMGUARD_JOIN_TOKEN", token)
            .env("RUST_LOG", "error")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run swarmguard agent swarm-sim");
        let out = BufReader::new(child.stdout.take().unwrap());
        Sim { child, out }
    }

    /// Waits for `{"ready":N}`: every node joined and holds a session.
    fn ready(&mut self) {
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        assert!(line.contains("ready"), "swarm-sim: {line:?}");
    }

    /// Stops the nodes and returns their summary (sessions, renewals).
    fn stop(mut self) -> serde_json::Value {
        drop(self.child.stdin.take());
        let mut line = String::new();
        self.out.read_line(&mut line).unwrap();
        let _ = self.child.wait();
        serde_json::from_str(&line).unwrap_or(serde_json::Value::Null)
    }
}

impl Drop for Sim {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn swarm(socket: &Path) -> serde_json::Value {
    unix_request(socket, "GET", "/v1.41/swarm", None)
        .unwrap()
        .json()
}

/// Starts a rotation and polls `GET /swarm` every 200 ms until it finished; `None` past `limit`.
fn rotate(docker: &dyn Fn(&[&str]) -> String, socket: &Path, limit: Duration) -> Option<f64> {
    let before = swarm(socket)["TLSInfo"]["CertIssuerPublicKey"].clone();
    let t = Instant::now();
    docker(&["swarm", "ca", "--rotate", "--detach"]);
    loop {
        let s = swarm(socket);
        if s["RootRotationInProgress"] == false && s["TLSInfo"]["CertIssuerPublicKey"] != before {
            return Some(t.elapsed().as_secs_f64());
        }
        if t.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Nodes whose reported certificate issuer is the cluster's (new) root.
fn converged(socket: &Path) -> (usize, usize) {
    let issuer = swarm(socket)["TLSInfo"]["CertIssuerPublicKey"].clone();
    let nodes = unix_request(socket, "GET", "/v1.41/nodes", None)
        .unwrap()
        .json();
    let all = nodes.as_array().cloned().unwrap_or_default();
    let done = all
        .iter()
        .filter(|n| n["Description"]["TLSInfo"]["CertIssuerPublicKey"] == issuer)
        .count();
    (done, all.len())
}

struct Outcome {
    ready_s: f64,
    rotate_s: Option<f64>,
    converged: (usize, usize),
    sim: serde_json::Value,
}

fn run(
    netns: Option<&str>,
    addr: &str,
    docker: &dyn Fn(&[&str]) -> String,
    socket: &Path,
    nodes: usize,
    limit: Duration,
) -> Outcome {
    let token = docker(&["swarm", "join-token", "-q", "worker"]);
    let t = Instant::now();
    let mut sim = Sim::start(netns, addr, token.trim(), nodes);
    sim.ready();
    let ready_s = t.elapsed().as_secs_f64();
    let rotate_s = rotate(docker, socket, limit);
    let converged = converged(socket);
    Outcome {
        ready_s,
        rotate_s,
        converged,
        sim: sim.stop(),
    }
}

fn row(peer: &str, nodes: usize, o: &Outcome, limit: Duration) -> String {
    let rotate = match o.rotate_s {
        Some(s) => format!("{s:.1}"),
        None => format!("not finished after {} s", limit.as_secs()),
    };
    format!(
        "| {peer} | {nodes} | {:.1} | {rotate} | {}/{} | {} | {} |",
        o.ready_s, o.converged.0, o.converged.1, o.sim["renewals"], o.sim["sessions"]
    )
}

fn main() {
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let nodes = env("NODES", 1000);
    let limit = Duration::from_secs(env("LIMIT_S", 600) as u64);
    let mut rows = Vec::new();

    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(dir.path());
    m.init_swarm(&[]);
    let o = run(
        None,
        &m.cluster_addr,
        &|a| m.docker_ok(a),
        &m.socket,
        nodes,
        limit,
    );
    rows.push(row("swarmguard", nodes, &o, limit));
    eprintln!("{} (load {})", rows[0], support::loadavg());
    drop(m);

    if std::env::var("SWARMGUARD_ONLY").is_err() {
        let d = Dockerd::start(true);
        let ns = d.netns.clone().expect("netns");
        let (addr, _) = d.init_swarm_on_free_port();
        let o = run(
            Some(&ns),
            &addr,
            &|a| d.docker_ok(a),
            &d.socket,
            nodes,
            limit,
        );
        let version = d.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
        rows.push(row(
            &format!("dockerd {}", version.trim()),
            nodes,
            &o,
            limit,
        ));
        drop(d);
    }

    println!(
        "Root rotation with {nodes} simulated agent nodes (load average at the end: {})",
        support::loadavg()
    );
    println!();
    println!("| manager | nodes | all joined with sessions, s | `docker swarm ca --rotate` to finished, s | nodes on the new root after | renewals | sessions |");
    println!("|---|---|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    let _ = std::io::stdout().flush();
}
