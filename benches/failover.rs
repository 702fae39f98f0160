//! Leader failover with three managers: `kill -9` of the leader → first acknowledged write on a
//! survivor, for three swarmguard managers and for three real dockerd 20.10 managers (SwarmKit),
//! each dockerd in its own network namespace joined by a private bridge, kills interleaved in
//! one run. Then write throughput and p99 latency of swarmguard with three managers against one.
//!
//! A "write" is what `docker swarm join-token --rotate worker` sends: `GET /swarm` and
//! `POST /swarm/update?version=…&rotateWorkerToken=true`, by one client per survivor, each
//! starting a new try 50 ms after the last one ended (as the SwarmKit figure in
//! ../shared/facts/managers.md §3 was taken). The killed manager is restarted on its data and
//! the group must show three reachable managers again before the next kill. Every process is
//! stopped by the PID this bench started, also when it fails.
//!
//! Run (as root: network namespaces): `cargo bench --bench failover`. Prints markdown for
//! docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use support::dockerd::Dockerd;
use support::manager::{unix_request, Manager};

/// Kills per peer (`SG_BENCH_KILLS` overrides it for a quick look).
const KILLS: usize = 10;
/// Writes per throughput run, and the clients sharing them.
const WRITES: usize = 1000;
const CLIENTS: usize = 8;
/// The whole bench gives up after this.
const BUDGET: Duration = Duration::from_secs(600);

/// One manager of either kind, as the bench drives it.
trait Peer {
    fn docker(&self, args: &[&str]) -> Output;
    fn socket(&self) -> PathBuf;
    fn kill9(&mut self);
    fn restart(&mut self);
}

impl Peer for Manager {
    fn docker(&self, args: &[&str]) -> Output {
        Manager::docker(self, args)
    }
    fn socket(&self) -> PathBuf {
        self.socket.clone()
    }
    fn kill9(&mut self) {
        Manager::kill9(self)
    }
    fn restart(&mut self) {
        Manager::restart(self)
    }
}

impl Peer for Dockerd {
    fn docker(&self, args: &[&str]) -> Output {
        Dockerd::docker(self, args)
    }
    fn socket(&self) -> PathBuf {
        self.socket.clone()
    }
    fn kill9(&mut self) {
        Dockerd::kill9(self)
    }
    fn restart(&mut self) {
        Dockerd::restart(self)
    }
}

fn ok(p: &dyn Peer, args: &[&str]) -> String {
    let o = p.docker(args);
    assert!(o.status.success(), "docker {args:?}: {}", support::text(&o));
    String::from_utf8_lossy(&o.stdout).trim().to_string()
}

/// Node ID → MANAGER STATUS as `docker node ls` on `p` shows it, if it answers.
fn manager_status(p: &dyn Peer) -> Option<Vec<(String, String)>> {
    let o = p.docker(&["node", "ls", "--format", "{{.ID}} {{.ManagerStatus}}"]);
    if !o.status.success() {
        return None;
    }
    Some(
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(a, b)| (a.to_string(), b.trim().to_string()))
            .collect(),
    )
}

/// Waits until `p` shows a Leader and two Reachable managers; returns the leader's node ID.
fn wait_formed(p: &dyn Peer, deadline: Instant) -> String {
    loop {
        if let Some(ls) = manager_status(p) {
            let leader = ls.iter().find(|(_, s)| s == "Leader");
            let reachable = ls.iter().filter(|(_, s)| s == "Reachable").count();
            if let (Some((id, _)), 2) = (leader, reachable) {
                return id.clone();
            }
        }
        assert!(
            Instant::now() < deadline,
            "the group did not re-form in time"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// One `join-token --rotate worker` as the CLI sends it; whether it was acknowledged.
fn rotate(socket: &Path) -> bool {
    let Ok(r) = unix_request(socket, "GET", "/v1.41/swarm", None) else {
        return false;
    };
    if r.status != 200 {
        return false;
    }
    let swarm = r.json();
    let Some(version) = swarm["Version"]["Index"].as_u64() else {
        return false;
    };
    let body = serde_json::to_vec(&swarm["Spec"]).unwrap();
    let path = format!("/v1.41/swarm/update?version={version}&rotateWorkerToken=true");
    matches!(unix_request(socket, "POST", &path, Some(&body)), Ok(r) if r.status == 200)
}

/// Kills the leader of `peers`, returns the time to the first write a survivor acknowledged,
/// then restarts it and waits until the group has three reachable managers again.
fn one_failover(peers: &mut [Box<dyn Peer>], ids: &[String], deadline: Instant) -> Duration {
    let leader_id = wait_formed(peers[0].as_ref(), deadline);
    let leader = ids
        .iter()
        .position(|i| *i == leader_id)
        .expect("leader known");
    let survivors: Vec<PathBuf> = (0..peers.len())
        .filter(|i| *i != leader)
        .map(|i| peers[i].socket())
        .collect();
    let done: Arc<Mutex<Option<Instant>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let killed_at = Instant::now();
    peers[leader].kill9();
    let clients: Vec<_> = survivors
        .into_iter()
        .map(|socket| {
            let (done, stop) = (done.clone(), stop.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    if rotate(&socket) {
                        let mut d = done.lock().unwrap();
                        d.get_or_insert_with(Instant::now);
                        stop.store(true, Ordering::Relaxed);
                        return;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            })
        })
        .collect();
    for c in clients {
        c.join().unwrap();
    }
    let acked = done.lock().unwrap().expect("no write acknowledged in time");
    peers[leader].restart();
    let survivor = (leader + 1) % peers.len();
    wait_formed(peers[survivor].as_ref(), deadline);
    // Let the restarted manager catch up and the group settle before the next kill.
    std::thread::sleep(Duration::from_secs(2));
    acked - killed_at
}

/// Three swarmguard managers formed with the CLI on loopback ports.
fn swarmguard_group(dirs: &[tempfile::TempDir]) -> Vec<Box<dyn Peer>> {
    let first = Manager::start(dirs[0].path());
    first.init_swarm(&[]);
    let token = first.docker_ok(&["swarm", "join-token", "-q", "manager"]);
    let addr = first.cluster_addr.clone();
    let mut peers: Vec<Box<dyn Peer>> = vec![Box::new(first)];
    for d in &dirs[1..] {
        let m = Manager::start(d.path());
        m.docker_ok(&["swarm", "join", "--token", token.trim(), &addr]);
        peers.push(Box::new(m));
    }
    peers
}

/// A private bridge namespace: each dockerd's namespace gets a veth into it and 10.98.0.1N/24.
/// Deleted (with its veths) on drop.
struct Bridge(String);

impl Bridge {
    fn new() -> Bridge {
        let name = format!("sgfo{}", std::process::id());
        let b = Bridge(name.clone());
        ip(&["netns", "add", &name]);
        ip(&["-n", &name, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &name, "link", "set", "br0", "up"]);
        b
    }

    /// Plugs `netns` into the bridge as 10.98.0.1`n`; returns that address.
    fn plug(&self, netns: &str, n: usize) -> String {
        let port = format!("p{n}");
        ip(&[
            "-n", &self.0, "link", "add", &port, "type", "veth", "peer", "name", "eth0", "netns",
            netns,
        ]);
        ip(&["-n", &self.0, "link", "set", &port, "master", "br0"]);
        ip(&["-n", &self.0, "link", "set", &port, "up"]);
        let addr = format!("10.98.0.1{n}");
        ip(&[
            "-n",
            netns,
            "addr",
            "add",
            &format!("{addr}/24"),
            "dev",
            "eth0",
        ]);
        ip(&["-n", netns, "link", "set", "eth0", "up"]);
        addr
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn ip(args: &[&str]) {
    let mut c = Command::new(support::require_bin("ip"));
    c.args(args);
    let o = support::run(c, Duration::from_secs(30));
    assert!(o.status.success(), "ip {args:?}: {}", support::text(&o));
}

/// Three dockerd managers, each in its own namespace on the bridge.
fn swarmkit_group(bridge: &Bridge) -> Vec<Box<dyn Peer>> {
    let daemons: Vec<Dockerd> = (0..3).map(|_| Dockerd::start(true)).collect();
    let addrs: Vec<String> = daemons
        .iter()
        .enumerate()
        .map(|(n, d)| bridge.plug(d.netns.as_deref().expect("own netns"), n + 1))
        .collect();
    daemons[0].docker_ok(&["swarm", "init", "--advertise-addr", &addrs[0]]);
    let token = daemons[0].docker_ok(&["swarm", "join-token", "-q", "manager"]);
    for (d, a) in daemons[1..].iter().zip(&addrs[1..]) {
        d.docker_ok(&[
            "swarm",
            "join",
            "--advertise-addr",
            a,
            "--token",
            token.trim(),
            &format!("{}:2377", addrs[0]),
        ]);
    }
    daemons
        .into_iter()
        .map(|d| Box::new(d) as Box<dyn Peer>)
        .collect()
}

fn node_ids(peers: &[Box<dyn Peer>]) -> Vec<String> {
    peers
        .iter()
        .map(|p| ok(p.as_ref(), &["info", "--format", "{{.Swarm.NodeID}}"]))
        .collect()
}

/// Creates `WRITES` secrets with `CLIENTS` clients spread over `sockets`: writes per second
/// and per-write latencies.
fn throughput(sockets: &[PathBuf]) -> (f64, Vec<Duration>) {
    static SEQ: AtomicUsize = AtomicUsize::new(0);
    let left = Arc::new(AtomicUsize::new(WRITES));
    let lat = Arc::new(Mutex::new(Vec::with_capacity(WRITES)));
    let t = Instant::now();
    let threads: Vec<_> = (0..CLIENTS)
        .map(|c| {
            let socket = sockets[c % sockets.len()].clone();
            let (left, lat) = (left.clone(), lat.clone());
            std::thread::spawn(move || {
                while left
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok()
                {
                    let n = SEQ.fetch_add(1, Ordering::SeqCst);
                    let body = serde_json::to_vec(&serde_json::json!({
                        "Name": format!("tp{n}"),
                        "Data": "dmFsdWU=",
                    }))
                    .unwrap();
                    let s = Instant::now();
                    let r = unix_request(&socket, "POST", "/v1.41/secrets/create", Some(&body))
                        .expect("secret create");
                    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
                    lat.lock().unwrap().push(s.elapsed());
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    let rate = WRITES as f64 / t.elapsed().as_secs_f64();
    let lat = std::mem::take(&mut *lat.lock().unwrap());
    (rate, lat)
}

fn q(v: &mut [Duration], p: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * p).round() as usize]
}

fn secs(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
}

fn main() {
    let start = Instant::now();
    let deadline = start + BUDGET;
    println!("load average at start: {}", support::loadavg());

    // Throughput first, on fresh groups: one manager, then three.
    let one_dir = support::short_tempdir("sg-fo1-");
    let one = Manager::start(one_dir.path());
    one.init_swarm(&[]);
    let (rate1, mut lat1) = throughput(std::slice::from_ref(&one.socket));
    drop(one);
    let sg_dirs: Vec<_> = (0..3)
        .map(|i| support::short_tempdir(&format!("sg-fo{i}-")))
        .collect();
    let mut sg = swarmguard_group(&sg_dirs);
    let sg_ids = node_ids(&sg);
    let leader_id = wait_formed(sg[0].as_ref(), deadline);
    let leader = sg_ids.iter().position(|i| *i == leader_id).unwrap();
    let (rate3l, mut lat3l) = throughput(&[sg[leader].socket()]);
    let all: Vec<PathBuf> = sg.iter().map(|p| p.socket()).collect();
    let (rate3a, mut lat3a) = throughput(&all);
    println!("load average after throughput: {}", support::loadavg());

    let bridge = Bridge::new();
    let mut dk = swarmkit_group(&bridge);
    let dk_ids = node_ids(&dk);
    let (mut sg_fail, mut dk_fail) = (Vec::new(), Vec::new());
    let mut loads = Vec::new();
    let kills = std::env::var("SG_BENCH_KILLS")
        .ok()
        .and_then(|k| k.parse().ok())
        .unwrap_or(KILLS);
    for round in 0..kills {
        let a = one_failover(&mut sg, &sg_ids, deadline);
        let b = one_failover(&mut dk, &dk_ids, deadline);
        loads.push(support::loadavg());
        println!(
            "kill {}: swarmguard {} s, SwarmKit {} s (load {})",
            round + 1,
            secs(a),
            secs(b),
            loads.last().unwrap()
        );
        sg_fail.push(a);
        dk_fail.push(b);
    }
    drop(dk);
    drop(bridge);
    drop(sg);

    let (sg_med, dk_med) = (q(&mut sg_fail, 0.5), q(&mut dk_fail, 0.5));
    println!();
    println!("| peer (3 managers) | kills | median | min | max |");
    println!("|---|---|---|---|---|");
    for (name, v, med) in [
        ("swarmguard (release)", &sg_fail, sg_med),
        ("dockerd 20.10 (SwarmKit)", &dk_fail, dk_med),
    ] {
        println!(
            "| {name} | {} | {} s | {} s | {} s |",
            v.len(),
            secs(med),
            secs(v[0]),
            secs(*v.last().unwrap())
        );
    }
    println!(
        "\nswarmguard median / SwarmKit median = 1/{:.1}",
        dk_med.as_secs_f64() / sg_med.as_secs_f64()
    );
    println!("\n| swarmguard writes ({WRITES} secret creates, {CLIENTS} clients) | writes/s | p50 | p99 |");
    println!("|---|---|---|---|");
    for (name, rate, lat) in [
        ("1 manager", rate1, &mut lat1),
        ("3 managers, all clients on the leader", rate3l, &mut lat3l),
        (
            "3 managers, clients spread over all three",
            rate3a,
            &mut lat3a,
        ),
    ] {
        println!(
            "| {name} | {rate:.0} | {} ms | {} ms |",
            ms(q(lat, 0.5)),
            ms(q(lat, 0.99))
        );
    }
    println!(
        "\nload average at end: {} (per round: {}); whole run {:.0} s",
        support::loadavg(),
        loads.join(" / "),
        start.elapsed().as_secs_f64()
    );
}
