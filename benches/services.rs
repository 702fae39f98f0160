//! `docker service create` → all tasks Running, for 1 and 50 replicas on two stock dockerd 20.10
//! workers: swarmguard's manager against a real dockerd 20.10 manager (SwarmKit), each with its
//! own two workers of the same kind, rounds interleaved in one run. Then the content-trust
//! check's cost per service create, cold and warm.
//!
//! Every manager and worker runs in its own network namespace; the workers reach their manager
//! through a loopback bridge (`tests/support/bridge.rs`) at the address it advertises.
//!
//! The split uses one rule for both peers, from timestamps on one clock (one machine):
//! t0 = just before `POST /services/create`; the manager's share ends when the worker accepted
//! the last task (its `ASSIGNED->ACCEPTED` line in the worker's `--debug` log, i.e. the
//! assignment arrived and the worker's agent took it); the workers' share runs from there to the
//! last task's `STARTING->RUNNING` line. For swarmguard, the time its dispatcher handed the last
//! task's assignment to the transport (its `assignments sent` debug line) is shown too.
//!
//! Run: `cargo bench --bench services` (as root: network namespaces). Prints markdown tables
//! for docs/benchmarks.md. `SERVICES_BENCH_QUICK=1`: one round each, 1 and 10 replicas;
//! `SERVICES_BENCH_PLAN=50x3,1x5` other replica counts and rounds; `SERVICES_BENCH_KEEP=DIR`
//! copies the managers' and workers' logs there at the end.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use support::bridge::Bridge;
use support::dockerd::Dockerd;
use support::manager::{unix_request, Manager};
use support::registry::Registry;
use support::trust_server::TrustServer;
use swarmguard_notary::client::{self as tuf, Files, Versions};

/// A task's command: exits at once on SIGTERM, so removing a service takes no 10 s grace.
const CMD: &str = "trap 'exit 0' TERM; sleep 600 & wait";
const IMAGE: &str = "sg/bb:1";
/// Limit for one create → running, and for one removal.
const RUN_LIMIT: Duration = Duration::from_secs(180);
const POLL: Duration = Duration::from_millis(50);
/// Quiet time after a removal, so the next run does not share the machine with the last one's
/// clean-up (containerd shims exiting, vfs directories deleted).
const SETTLE: Duration = Duration::from_secs(2);

/// A network namespace with loopback up, deleted on drop.
struct Netns(String);

impl Netns {
    fn new(name: String) -> Netns {
        for args in [
            vec!["netns", "add", &name],
            vec!["-n", &name, "link", "set", "lo", "up"],
        ] {
            let mut c = Command::new(support::require_bin("ip"));
            c.args(&args);
            let o = support::run(c, Duration::from_secs(30));
            assert!(o.status.success(), "ip {args:?}: {}", support::text(&o));
        }
        Netns(name)
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

/// Which manager a cluster runs.
enum Owner {
    Swarmguard {
        manager: Manager,
        _dir: tempfile::TempDir,
        _ns: Netns,
    },
    Swarmkit {
        dockerd: Dockerd,
    },
}

/// One manager with two stock workers joined. Fields drop in order: bridges, workers, manager.
struct Cluster {
    label: &'static str,
    socket: PathBuf,
    /// swarmguard's log, holding its `assignments sent` lines.
    manager_log: Option<PathBuf>,
    _bridges: Vec<Bridge>,
    workers: Vec<Dockerd>,
    owner: Owner,
}

fn json(socket: &Path, method: &str, path: &str, body: Option<&[u8]>) -> serde_json::Value {
    let r =
        unix_request(socket, method, path, body).unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    assert!(
        (200..300).contains(&r.status),
        "{method} {path}: {} {}",
        r.status,
        String::from_utf8_lossy(&r.body)
    );
    if r.body.is_empty() {
        serde_json::Value::Null
    } else {
        r.json()
    }
}

fn wait(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < limit, "timed out waiting for {what}");
        std::thread::sleep(POLL);
    }
}

impl Cluster {
    fn swarmguard(dir: &Path) -> Cluster {
        let ns = Netns::new(format!("sgbm{}", std::process::id()));
        let mdir = tempfile::tempdir().unwrap();
        let log = dir.join("swarmguard.log");
        let manager = Manager::start_in_logged(
            mdir.path(),
            Some(&ns.0),
            "info,openraft=warn,swarmguard::grpc::assignments=debug",
            &log,
        );
        manager.init_swarm(&[]);
        let token = manager.docker_ok(&["swarm", "join-token", "-q", "worker"]);
        let (addr, socket, name) = (
            manager.cluster_addr.clone(),
            manager.socket.clone(),
            ns.0.clone(),
        );
        let owner = Owner::Swarmguard {
            manager,
            _dir: mdir,
            _ns: ns,
        };
        Cluster::with_workers("swarmguard", socket, Some(log), owner, &name, &addr, &token)
    }

    fn swarmkit() -> Cluster {
        let d = Dockerd::start(true);
        let (addr, token) = d.init_swarm_on_free_port();
        let (socket, ns) = (d.socket.clone(), d.netns.clone().unwrap());
        Cluster::with_workers(
            "dockerd 20.10",
            socket,
            None,
            Owner::Swarmkit { dockerd: d },
            &ns,
            &addr,
            &token,
        )
    }

    /// Starts two workers (debug logs on), bridges them to `addr` in `ns`, joins them, waits
    /// until both are Ready, and imports the task image on each.
    fn with_workers(
        label: &'static str,
        socket: PathBuf,
        manager_log: Option<PathBuf>,
        owner: Owner,
        ns: &str,
        addr: &str,
        token: &str,
    ) -> Cluster {
        let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
        let mut c = Cluster {
            label,
            socket,
            manager_log,
            _bridges: Vec::new(),
            workers: Vec::new(),
            owner,
        };
        for _ in 0..2 {
            let w = Dockerd::start_with(true, &["--debug"]);
            c._bridges
                .push(Bridge::start(port, w.netns.as_deref().unwrap(), ns));
            w.docker_ok(&["swarm", "join", "--token", token.trim(), addr]);
            w.import_busybox_image(IMAGE);
            c.workers.push(w);
        }
        wait("two workers Ready", Duration::from_secs(60), || {
            let nodes = json(&c.socket, "GET", "/v1.41/nodes", None);
            nodes
                .as_array()
                .unwrap()
                .iter()
                .filter(|n| n["Spec"]["Role"] == "worker" && n["Status"]["State"] == "ready")
                .count()
                == 2
        });
        c
    }
}

/// Percent-encodes a query value.
fn enc(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn tasks_of(c: &Cluster, service: &str) -> Vec<serde_json::Value> {
    let f = enc(&format!("{{\"service\":{{\"{service}\":true}}}}"));
    json(&c.socket, "GET", &format!("/v1.41/tasks?filters={f}"), None)
        .as_array()
        .unwrap()
        .clone()
}

/// Unix time of an RFC 3339 timestamp, in seconds.
fn unix(ts: &str) -> Option<f64> {
    let t = time::OffsetDateTime::parse(ts, &time::format_description::well_known::Rfc3339).ok()?;
    Some(t.unix_timestamp_nanos() as f64 / 1e9)
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

/// A file's length now, to read only what a run appends.
fn len(p: &Path) -> u64 {
    std::fs::metadata(p).map(|m| m.len()).unwrap_or(0)
}

fn tail(p: &Path, from: u64) -> String {
    let raw = std::fs::read(p).unwrap_or_default();
    String::from_utf8_lossy(raw.get(from as usize..).unwrap_or_default()).into_owned()
}

/// `time="…"` and `task.id=…` of dockerd's `state changed` lines with this transition.
fn worker_times(log: &str, transition: &str, out: &mut HashMap<String, f64>) {
    let marker = format!("state.transition=\"{transition}\"");
    for l in log.lines().filter(|l| l.contains(&marker)) {
        let ts = l
            .strip_prefix("time=\"")
            .and_then(|r| r.split('"').next())
            .and_then(unix);
        let id = l
            .split_whitespace()
            .find_map(|w| w.strip_prefix("task.id="));
        if let (Some(ts), Some(id)) = (ts, id) {
            out.entry(id.to_string()).or_insert(ts);
        }
    }
}

/// First `assignments sent` time of each task in swarmguard's log.
fn sent_times(log: &str) -> HashMap<String, f64> {
    let mut out = HashMap::new();
    for l in log.lines().filter(|l| l.contains("assignments sent")) {
        let ts = l.split_whitespace().next().and_then(unix);
        let ids = l
            .split_whitespace()
            .find_map(|w| w.strip_prefix("tasks="))
            .unwrap_or_default();
        if let Some(ts) = ts {
            for id in ids.split(',').filter(|i| !i.is_empty()) {
                out.entry(id.to_string()).or_insert(ts);
            }
        }
    }
    out
}

/// One create → all running, in seconds after t0.
struct Sample {
    /// Seen by the poller: every task running.
    observed: f64,
    /// The last task accepted by its worker (the manager's share).
    accepted: f64,
    /// The last task running on its worker (end to end).
    running: f64,
    /// swarmguard: the last task's assignment handed to the transport.
    sent: Option<f64>,
    /// CPU seconds from create to all running: the manager process, the two worker dockerds.
    cpu: (f64, f64),
}

/// utime + stime of a process, in seconds (USER_HZ 100).
fn cpu_secs(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the `(comm)`, which may hold spaces: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit(')').next().unwrap_or_default();
    let f: Vec<f64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    f.iter().sum::<f64>() / 100.0
}

impl Cluster {
    fn manager_pid(&self) -> u32 {
        match &self.owner {
            Owner::Swarmguard { manager, .. } => manager.pid(),
            Owner::Swarmkit { dockerd } => dockerd.pid(),
        }
    }

    /// CPU seconds so far: (manager, both workers' dockerd).
    fn cpu(&self) -> (f64, f64) {
        let workers = self.workers.iter().map(|w| cpu_secs(w.pid())).sum();
        (cpu_secs(self.manager_pid()), workers)
    }
}

fn create_body(name: &str, replicas: usize) -> Vec<u8> {
    // The spec the docker CLI 28 sends (facts/services.md §2.3).
    serde_json::to_vec(&serde_json::json!({
        "Name": name,
        "Labels": {},
        "TaskTemplate": {
            "ContainerSpec": {"Image": IMAGE, "Args": ["sh", "-c", CMD], "Init": false, "DNSConfig": {}},
            "Resources": {"Limits": {}, "Reservations": {}},
            "Placement": {"Constraints": ["node.role==worker"]},
            "ForceUpdate": 0,
        },
        "Mode": {"Replicated": {"Replicas": replicas}},
        "EndpointSpec": {"Mode": "vip"},
    }))
    .unwrap()
}

/// Creates a service of `replicas`, waits until all run, reads the timestamps, removes it and
/// waits until the workers hold no container.
fn run_once(c: &Cluster, name: &str, replicas: usize) -> Sample {
    let logs: Vec<PathBuf> = c
        .workers
        .iter()
        .map(|w| w.root.join("dockerd.log"))
        .collect();
    let from: Vec<u64> = logs.iter().map(|l| len(l)).collect();
    let mlog_from = c.manager_log.as_deref().map(len);
    let body = create_body(name, replicas);
    let cpu0 = c.cpu();
    let t0 = unix_now();
    let start = Instant::now();
    let id = json(&c.socket, "POST", "/v1.41/services/create", Some(&body))["ID"]
        .as_str()
        .unwrap()
        .to_string();
    let mut ids = Vec::new();
    wait(&format!("{name} running"), RUN_LIMIT, || {
        let tasks = tasks_of(c, &id);
        let running: Vec<String> = tasks
            .iter()
            .filter(|t| t["Status"]["State"] == "running" && t["DesiredState"] == "running")
            .map(|t| t["ID"].as_str().unwrap().to_string())
            .collect();
        ids = running;
        ids.len() == replicas
    });
    let observed = start.elapsed().as_secs_f64();
    let cpu1 = c.cpu();
    let (mut accepted, mut running) = (HashMap::new(), HashMap::new());
    // The worker logs its RUNNING line before it reports it, so both lines are there.
    for (l, f) in logs.iter().zip(&from) {
        let text = tail(l, *f);
        worker_times(&text, "ASSIGNED->ACCEPTED", &mut accepted);
        worker_times(&text, "STARTING->RUNNING", &mut running);
    }
    let last = |m: &HashMap<String, f64>, what: &str| -> f64 {
        ids.iter()
            .map(|i| {
                m.get(i)
                    .unwrap_or_else(|| panic!("{}: no {what} line for task {i}", c.label))
                    - t0
            })
            .fold(f64::MIN, f64::max)
    };
    let sent = c.manager_log.as_deref().map(|p| {
        last(
            &sent_times(&tail(p, mlog_from.unwrap())),
            "assignments sent",
        )
    });
    let sample = Sample {
        observed,
        accepted: last(&accepted, "ASSIGNED->ACCEPTED"),
        running: last(&running, "STARTING->RUNNING"),
        sent,
        cpu: (cpu1.0 - cpu0.0, cpu1.1 - cpu0.1),
    };
    remove(c, &id);
    sample
}

fn remove(c: &Cluster, id: &str) {
    json(&c.socket, "DELETE", &format!("/v1.41/services/{id}"), None);
    // The `service` filter of a removed service is a 404 on both: look at every task.
    wait("tasks removed", RUN_LIMIT, || {
        json(&c.socket, "GET", "/v1.41/tasks", None)
            .as_array()
            .unwrap()
            .iter()
            .all(|t| t["ServiceID"] != id)
    });
    wait("worker containers removed", RUN_LIMIT, || {
        c.workers.iter().all(|w| {
            json(&w.socket, "GET", "/v1.41/containers/json?all=1", None)
                .as_array()
                .unwrap()
                .is_empty()
        })
    });
    std::thread::sleep(SETTLE);
}

fn ms(s: f64) -> String {
    format!("{:.0}", s * 1000.0)
}

/// `median (min–max)` in ms.
fn summary(mut v: Vec<f64>) -> String {
    v.sort_by(f64::total_cmp);
    let mid = v[v.len() / 2];
    if v.len() == 1 {
        return ms(mid);
    }
    format!("{} ({}–{})", ms(mid), ms(v[0]), ms(v[v.len() - 1]))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Rounds of `replicas` on both clusters, alternating which goes first; prints table rows.
fn compare(sg: &Cluster, dk: &Cluster, replicas: usize, rounds: usize) {
    let mut samples: [Vec<Sample>; 2] = [Vec::new(), Vec::new()];
    for round in 0..rounds {
        let order = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            let c = [sg, dk][i];
            let name = format!("b{replicas}x{round}");
            samples[i].push(run_once(c, &name, replicas));
        }
    }
    let share = |i: usize| median(samples[i].iter().map(|s| s.accepted).collect());
    let e2e = |i: usize| median(samples[i].iter().map(|s| s.running).collect());
    for (i, c) in [sg, dk].iter().enumerate() {
        let s = &samples[i];
        let col = |f: &dyn Fn(&Sample) -> f64| summary(s.iter().map(f).collect());
        let sent = if s[0].sent.is_some() {
            col(&|x| x.sent.unwrap())
        } else {
            "–".into()
        };
        let ratio = if i == 0 {
            format!("{:.2} / {:.2}", share(0) / share(1), e2e(0) / e2e(1))
        } else {
            String::new()
        };
        println!(
            "| {replicas} | {} | {rounds} | {sent} | {} | {} | {} | {} | {ratio} | {} | {} |",
            c.label,
            col(&|x| x.accepted),
            col(&|x| x.running - x.accepted),
            col(&|x| x.running),
            col(&|x| x.observed),
            col(&|x| x.cpu.0),
            col(&|x| x.cpu.1),
        );
    }
}

const TRUST_COLD: usize = 20;
const TRUST_WARM: usize = 200;
const TRUST_API: usize = 30;

/// An image pushed with DOCKER_CONTENT_TRUST=1 to our trust server: (repository, tag).
fn push_signed(server: &TrustServer, registry: &Registry, docker: &Dockerd) -> (String, String) {
    let url = server.url();
    let env = [
        ("DOCKER_CONTENT_TRUST", "1"),
        ("DOCKER_CONTENT_TRUST_SERVER", url.as_str()),
        ("DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE", support::PASS),
        ("DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE", support::PASS),
    ];
    let repo = format!("127.0.0.1:{}/demo/app", registry.port);
    docker.import_tiny_image(&format!("{repo}:signed"), "signed image\n");
    docker.ok(&env, &["push", &format!("{repo}:signed")]);
    (repo, "signed".into())
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// The manager's resolution, in process: cold = new client, every role fetched, full verify
/// (a repository's first create); warm = timestamp.json fetched and found unchanged, cached
/// files verified again (every later create). Returns (cold, warm) samples in seconds.
fn resolve_in_process(url: &str, ca: &[u8], gun: &str, tag: &str) -> (Vec<f64>, Vec<f64>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let now = time::OffsetDateTime::now_utc();
        let mut cold = Vec::new();
        let mut files = Files::default();
        let mut seen = Versions::default();
        for _ in 0..TRUST_COLD {
            let t = Instant::now();
            let server = tuf::Server::new(url, ca).unwrap();
            files = tuf::fetch_all(&server, gun).await.unwrap();
            seen = tuf::verify(gun, tag, &files, None, Versions::default(), now)
                .unwrap()
                .versions;
            cold.push(secs(t.elapsed()));
        }
        let server = tuf::Server::new(url, ca).unwrap();
        let mut warm = Vec::new();
        for _ in 0..TRUST_WARM {
            let t = Instant::now();
            let ts = tuf::fetch_role(&server, gun, "timestamp").await.unwrap();
            assert_eq!(ts.as_deref(), Some(files.timestamp.as_slice()));
            tuf::verify(gun, tag, &files, Some(&files.root), seen, now).unwrap();
            warm.push(secs(t.elapsed()));
        }
        (cold, warm)
    })
}

/// `POST /services/create` (0 replicas) on a manager with content trust: the signed image
/// (resolved and pinned) against an image outside `--require-signed`, alternating. Returns
/// (first signed create, signed, unsigned) in seconds.
fn create_with_trust(server: &TrustServer, repo: &str, tag: &str) -> (f64, Vec<f64>, Vec<f64>) {
    let mdir = tempfile::tempdir().unwrap();
    let prefix = format!("{}/", repo.split('/').next().unwrap());
    let m = Manager::start_args(
        mdir.path(),
        &[
            "--trust-server".into(),
            server.url(),
            "--trust-ca".into(),
            server.cert.display().to_string(),
            "--require-signed".into(),
            prefix,
        ],
    );
    m.init_swarm(&[]);
    let create = |name: String, image: &str| -> f64 {
        let mut spec: serde_json::Value = serde_json::from_slice(&create_body(&name, 0)).unwrap();
        spec["TaskTemplate"]["ContainerSpec"]["Image"] = image.into();
        let body = serde_json::to_vec(&spec).unwrap();
        let t = Instant::now();
        json(&m.socket, "POST", "/v1.41/services/create", Some(&body));
        secs(t.elapsed())
    };
    let signed = format!("{repo}:{tag}");
    let first = create("t0".into(), &signed);
    let (mut on, mut off) = (Vec::new(), Vec::new());
    for i in 0..TRUST_API {
        if i % 2 == 0 {
            on.push(create(format!("s{i}"), &signed));
            off.push(create(format!("u{i}"), IMAGE));
        } else {
            off.push(create(format!("u{i}"), IMAGE));
            on.push(create(format!("s{i}"), &signed));
        }
    }
    (first, on, off)
}

fn trust_costs() {
    let dir = support::short_tempdir("sgbt");
    let server = TrustServer::start(&dir.path().join("srv"));
    let registry = Registry::start(&dir.path().join("reg"));
    let docker = Dockerd::start_in(&dir.path().join("d"), false);
    let (repo, tag) = push_signed(&server, &registry, &docker);
    let ca = std::fs::read(&server.cert).unwrap();
    let (cold, warm) = resolve_in_process(&server.url(), &ca, &repo, &tag);
    let (first, on, off) = create_with_trust(&server, &repo, &tag);
    let p = |v: &[f64], q: f64| {
        let mut v = v.to_vec();
        v.sort_by(f64::total_cmp);
        v[((v.len() - 1) as f64 * q).round() as usize]
    };
    let row = |what: &str, v: &[f64]| {
        println!(
            "| {what} | {} | {:.2} | {:.2} | {:.2} |",
            v.len(),
            p(v, 0.5) * 1e3,
            p(v, 0.9) * 1e3,
            p(v, 1.0) * 1e3
        );
    };
    println!();
    println!("| trust check | n | p50 ms | p90 ms | max ms |");
    println!("|---|---|---|---|---|");
    row(
        "resolve in process, cold (new client, 4 roles fetched, full verify)",
        &cold,
    );
    row(
        "resolve in process, warm (timestamp.json unchanged, cached roles verified)",
        &warm,
    );
    row(
        "`POST /services/create`, image under `--require-signed` (warm)",
        &on,
    );
    row(
        "`POST /services/create`, image not covered (no trust check)",
        &off,
    );
    println!(
        "| `POST /services/create`, first create of the signed repository (cold) | 1 | {:.2} | | |",
        first * 1e3
    );
}

/// (replicas, rounds) to run.
fn plan() -> Vec<(usize, usize)> {
    if let Ok(p) = std::env::var("SERVICES_BENCH_PLAN") {
        return p
            .split(',')
            .map(|r| {
                let (n, k) = r.split_once('x').expect("SERVICES_BENCH_PLAN=NxROUNDS,…");
                (n.trim().parse().unwrap(), k.trim().parse().unwrap())
            })
            .collect();
    }
    if std::env::var_os("SERVICES_BENCH_QUICK").is_some() {
        return vec![(1, 1), (10, 1)];
    }
    vec![(1, 7), (50, 5)]
}

fn keep_logs(dir: &Path, clusters: &[&Cluster]) {
    std::fs::create_dir_all(dir).unwrap();
    for c in clusters {
        let tag = if c.manager_log.is_some() { "sg" } else { "dk" };
        if let Some(m) = &c.manager_log {
            std::fs::copy(m, dir.join("swarmguard.log")).unwrap();
        }
        if let Owner::Swarmkit { dockerd } = &c.owner {
            std::fs::copy(dockerd.root.join("dockerd.log"), dir.join("dk-manager.log")).unwrap();
        }
        for (i, w) in c.workers.iter().enumerate() {
            let to = dir.join(format!("{tag}-worker{i}.log"));
            std::fs::copy(w.root.join("dockerd.log"), to).unwrap();
        }
    }
}

fn main() {
    let plan = plan();
    let started = Instant::now();
    let load_before = support::loadavg();
    let dir = support::short_tempdir("sgbs");
    {
        let sg = Cluster::swarmguard(dir.path());
        let dk = Cluster::swarmkit();
        // One unrecorded run each: first container of an image on a worker.
        run_once(&sg, "warmup", 1);
        run_once(&dk, "warmup", 1);
        println!("| replicas | manager | rounds | create → last assignment sent (ms) | manager's share: create → last task accepted by its worker (ms) | workers' share: last accepted → last running (ms) | end to end: create → last task running (ms) | running seen by a 50 ms poller (ms) | swarmguard / dockerd (share / end to end, medians) | manager CPU ms | worker dockerds' CPU ms |");
        println!("|---|---|---|---|---|---|---|---|---|---|---|");
        for (replicas, rounds) in plan {
            compare(&sg, &dk, replicas, rounds);
        }
        if let Some(keep) = std::env::var_os("SERVICES_BENCH_KEEP") {
            keep_logs(Path::new(&keep), &[&sg, &dk]);
        }
    }
    trust_costs();
    println!();
    println!(
        "load average before: {load_before}; after: {}; wall time {:.0} s",
        support::loadavg(),
        started.elapsed().as_secs_f64()
    );
}
