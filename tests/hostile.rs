//! The hostile-load suite for audit findings 1 and 2 (issue 14), against the real binary.
//!
//! A stock dockerd and a `swarmguard manager` run in one fresh network namespace, loopback
//! only; the manager runs with a descriptor limit of 1,024 so the descriptor-exhaustion attack
//! fits in a test. Attackers run on threads moved into that namespace, from loopback
//! addresses of their own (127.0.0.2 and up; dockerd dials from 127.0.0.1). While each attack
//! runs, a real `docker swarm join` of the stock dockerd and `docker node ls` through the CLI
//! must each succeed within 2 s; the manager's RSS must stay under 100 MB throughout, and the
//! raft log must grow by less than 10 MB under the renewal flood. Every attack is bounded in
//! count and time, and stops with the test.

mod support;

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use support::dockerd::Dockerd;
use support::manager::Manager;
use swarmguard::{agent, pb};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::watch;

/// The manager's RLIMIT_NOFILE in this suite.
const NOFILE: u64 = 1024;
/// How long a join and a `docker node ls` may take while an attack runs.
const WITHIN: Duration = Duration::from_secs(2);
const MAX_RSS: u64 = 100 << 20;
const MAX_LOG_GROWTH: u64 = 10 << 20;
/// How long each attack runs before the checks (so it is at full strength), and in total.
const RAMP: Duration = Duration::from_secs(3);
const PHASE: Duration = Duration::from_secs(10);

fn lo(a: u8, b: u8) -> IpAddr {
    IpAddr::from([127, 0, a, b])
}

/// Runs `attack` on a thread inside network namespace `ns` (every socket it opens lives
/// there), on a runtime of its own, until [`Attack::stop`].
struct Attack {
    name: &'static str,
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<String>,
}

impl Attack {
    fn start<F, Fut>(name: &'static str, ns: &str, attack: F) -> Attack
    where
        F: FnOnce(watch::Receiver<bool>) -> Fut + Send + 'static,
        Fut: Future<Output = String>,
    {
        let path = format!("/var/run/netns/{ns}");
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let ns = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
            rustix::thread::move_into_link_name_space(
                std::os::fd::AsFd::as_fd(&ns),
                Some(rustix::thread::LinkNameSpaceType::Network),
            )
            .expect("setns into the test's network namespace");
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let (tx, rx) = watch::channel(false);
                tokio::spawn(async move {
                    while !flag.load(Ordering::Relaxed) {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    let _ = tx.send(true);
                });
                attack(rx).await
            })
        });
        Attack { name, stop, thread }
    }

    fn running(&self) -> bool {
        !self.thread.is_finished()
    }

    /// Stops the attack once it has run `at_least` since `started`; returns its summary.
    fn stop(self, started: Instant, at_least: Duration) -> String {
        if let Some(left) = at_least.checked_sub(started.elapsed()) {
            std::thread::sleep(left);
        }
        self.stop.store(true, Ordering::Relaxed);
        let summary = self.thread.join().expect("attack thread");
        eprintln!("attack {}: {summary}", self.name);
        summary
    }
}

async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

async fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// Reads until the server closes the connection.
async fn until_closed<S: tokio::io::AsyncRead + Unpin>(s: &mut S) {
    let mut buf = [0u8; 512];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            return;
        }
    }
}

#[derive(Default)]
struct Tally {
    opened: AtomicU64,
    closed_by_server: AtomicU64,
    refused: AtomicU64,
    /// Longest time (ms) the server kept one of them open.
    longest_ms: AtomicU64,
}

impl Tally {
    fn summary(&self) -> String {
        format!(
            "{} opened, {} closed by the manager (longest held {} ms), {} refused",
            self.opened.load(Ordering::Relaxed),
            self.closed_by_server.load(Ordering::Relaxed),
            self.longest_ms.load(Ordering::Relaxed),
            self.refused.load(Ordering::Relaxed)
        )
    }
}

/// Finding 1a: `conns` TCP connections from `from` that send nothing; each one the manager
/// closes comes back 10 s later (1,100 connections: the audit's ~100 reconnects/s).
async fn idle_tcp(
    stop: watch::Receiver<bool>,
    to: SocketAddr,
    from: IpAddr,
    conns: usize,
    tally: Arc<Tally>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..conns {
        let (mut stop, tally) = (stop.clone(), tally.clone());
        tasks.spawn(async move {
            loop {
                match tcp_from(from, to).await {
                    Ok(mut s) => {
                        tally.opened.fetch_add(1, Ordering::Relaxed);
                        let t = Instant::now();
                        tokio::select! {
                            _ = until_closed(&mut s) => {
                                tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
                                tally.longest_ms.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                            }
                            _ = stopped(&mut stop) => return,
                        }
                    }
                    Err(_) => {
                        tally.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(10)) => {}
                    _ = stopped(&mut stop) => return,
                }
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

/// Finding 1b: TLS handshakes (no client certificate) that finish and then never send the
/// HTTP/2 preface (or, with `preface`, send it and then nothing), `per_addr` at a time from
/// each of `from`; each comes back 1 s after the manager closes it.
async fn tls_flood(
    stop: watch::Receiver<bool>,
    to: SocketAddr,
    from: Vec<IpAddr>,
    per_addr: usize,
    preface: bool,
    tally: Arc<Tally>,
) {
    let config = agent::tls::unverified().unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for ip in from {
        for _ in 0..per_addr {
            let (mut stop, tally, config) = (stop.clone(), tally.clone(), config.clone());
            tasks.spawn(async move {
                loop {
                    let name = rustls::pki_types::ServerName::try_from("swarm-ca").unwrap();
                    let tls = async {
                        let tcp = tcp_from(ip, to).await?;
                        let mut s = tokio_rustls::TlsConnector::from(config.clone())
                            .connect(name, tcp)
                            .await?;
                        if preface {
                            s.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await?;
                        }
                        Ok::<_, std::io::Error>(s)
                    };
                    let done = tokio::select! {
                        r = tls => r,
                        _ = stopped(&mut stop) => return,
                    };
                    match done {
                        Ok(mut s) => {
                            tally.opened.fetch_add(1, Ordering::Relaxed);
                            let t = Instant::now();
                            tokio::select! {
                                _ = until_closed(&mut s) => {
                                    tally.closed_by_server.fetch_add(1, Ordering::Relaxed);
                                    tally.longest_ms.fetch_max(t.elapsed().as_millis() as u64, Ordering::Relaxed);
                                }
                                _ = stopped(&mut stop) => return,
                            }
                        }
                        Err(_) => {
                            tally.refused.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = stopped(&mut stop) => return,
                    }
                }
            });
        }
    }
    while tasks.join_next().await.is_some() {}
}

/// Finding 2: one worker certificate, 8 tasks of renewals over mTLS, and sessions that report
/// a 256 KiB trust root.
async fn renewal_flood(stop: watch::Receiver<bool>, to: SocketAddr, token: String) -> String {
    let creds = agent::join(to, &token)
        .await
        .expect("the attacker joins as a worker");
    let config =
        agent::tls::verified(&creds.root_pem, Some((&creds.cert_pem, &creds.key_pem))).unwrap();
    let channel = agent::tls::channel(to, config, "swarm-manager")
        .await
        .unwrap();
    let csr = swarmguard_ca::generate_node_key_and_csr().1;
    let renewed = Arc::new(AtomicU64::new(0));
    let limited = Arc::new(AtomicU64::new(0));
    let other = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let mut nca = pb::node_ca_client::NodeCaClient::new(channel.clone());
        let (stop, csr) = (stop.clone(), csr.clone());
        let (renewed, limited, other) = (renewed.clone(), limited.clone(), other.clone());
        tasks.spawn(async move {
            while !*stop.borrow() {
                let r = nca
                    .issue_node_certificate(pb::IssueNodeCertificateRequest {
                        csr: csr.clone(),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => renewed.fetch_add(1, Ordering::Relaxed),
                    Err(e) if e.code() == tonic::Code::Unavailable => {
                        limited.fetch_add(1, Ordering::Relaxed)
                    }
                    Err(_) => other.fetch_add(1, Ordering::Relaxed),
                };
            }
        });
    }
    let sessions_refused = Arc::new(AtomicU64::new(0));
    {
        let mut d = pb::dispatcher_client::DispatcherClient::new(channel.clone());
        let (stop, refused) = (stop.clone(), sessions_refused.clone());
        tasks.spawn(async move {
            while !*stop.borrow() {
                let r = d
                    .session(pb::SessionRequest {
                        description: Some(pb::NodeDescription {
                            hostname: "attacker".into(),
                            tls_info: Some(pb::NodeTlsInfo {
                                trust_root: vec![b'A'; 256 * 1024],
                                ..Default::default()
                            }),
                            ..Default::default()
                        }),
                        ..Default::default()
                    })
                    .await;
                if matches!(&r, Err(e) if e.code() == tonic::Code::InvalidArgument) {
                    refused.fetch_add(1, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        });
    }
    while tasks.join_next().await.is_some() {}
    format!(
        "renewed={} limited={} other={} sessions_refused={}",
        renewed.load(Ordering::Relaxed),
        limited.load(Ordering::Relaxed),
        other.load(Ordering::Relaxed),
        sessions_refused.load(Ordering::Relaxed)
    )
}

fn field(summary: &str, name: &str) -> u64 {
    summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix(&format!("{name}=")))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("{name} not in {summary:?}"))
}

/// The manager's RSS and open descriptors, sampled every 50 ms; the peaks.
struct Sampler {
    stop: Arc<AtomicBool>,
    peak_rss: Arc<AtomicU64>,
    peak_fds: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let (peak_rss, peak_fds) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let (s, r, f) = (stop.clone(), peak_rss.clone(), peak_fds.clone());
        let thread = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                if let Some(rss) = rss_bytes(pid) {
                    r.fetch_max(rss, Ordering::Relaxed);
                }
                if let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) {
                    f.fetch_max(dir.count() as u64, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        });
        Sampler {
            stop,
            peak_rss,
            peak_fds,
            thread: Some(thread),
        }
    }

    fn peaks(&self) -> (u64, u64) {
        (
            self.peak_rss.load(Ordering::Relaxed),
            self.peak_fds.load(Ordering::Relaxed),
        )
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn rss_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    Some(kb * 1024)
}

fn wal_size(data_dir: &Path) -> u64 {
    std::fs::metadata(data_dir.join("store/raft-log.wal"))
        .map(|m| m.len())
        .expect("the raft log file")
}

/// A real join of the stock dockerd and `docker node ls`, each timed; then the dockerd leaves
/// again so the next phase can join. Returns (join, node ls).
fn served(m: &Manager, d: &Dockerd, token: &str, during: &str) -> (Duration, Duration) {
    let t = Instant::now();
    let out = d.docker(&["swarm", "join", "--token", token, &m.cluster_addr]);
    let join = t.elapsed();
    assert!(
        out.status.success(),
        "{during}: docker swarm join failed after {join:?}: {}",
        support::text(&out)
    );
    let t = Instant::now();
    let out = m.docker(&["node", "ls"]);
    let ls = t.elapsed();
    assert!(
        out.status.success(),
        "{during}: docker node ls failed after {ls:?}: {}",
        support::text(&out)
    );
    eprintln!("{during}: docker swarm join {join:?}, docker node ls {ls:?}");
    d.docker_ok(&["swarm", "leave", "--force"]);
    (join, ls)
}

/// The stock dockerd's node shows TLS status Ready: the trust root it reports is the cluster's,
/// so the manager kept it (it keeps no other).
fn tls_status_ready(m: &Manager, d: &Dockerd, token: &str) {
    d.docker_ok(&["swarm", "join", "--token", token, &m.cluster_addr]);
    let id = d
        .docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"])
        .trim()
        .to_string();
    support::wait_until("the worker's TLS status", Duration::from_secs(10), || {
        let ls = m.docker_ok(&[
            "node",
            "ls",
            "--format",
            "{{.ID}} {{.Status}} {{.TLSStatus}}",
        ]);
        ls.lines().any(|l| l == format!("{id} Ready Ready"))
    });
    d.docker_ok(&["swarm", "leave", "--force"]);
}

fn assert_served(m: &Manager, d: &Dockerd, token: &str, attack: &Attack) {
    let (join, ls) = served(m, d, token, attack.name);
    assert!(attack.running(), "{}: the attack ended early", attack.name);
    assert!(join < WITHIN, "{}: join took {join:?}", attack.name);
    assert!(ls < WITHIN, "{}: docker node ls took {ls:?}", attack.name);
}

#[test]
fn the_manager_holds_under_hostile_load() {
    let d = Dockerd::start(true);
    let ns = d.netns.clone().expect("own netns");
    let mdir = tempfile::tempdir().unwrap();
    let m = Manager::start_with(mdir.path(), Some(&ns), Some(NOFILE));
    m.init_swarm(&[]);
    let token = m
        .docker_ok(&["swarm", "join-token", "-q", "worker"])
        .trim()
        .to_string();
    let to: SocketAddr = m.cluster_addr.parse().unwrap();
    let sampler = Sampler::start(m.pid());
    served(&m, &d, &token, "baseline (no attack)");
    tls_status_ready(&m, &d, &token);

    // Finding 1a: 1,100 silent TCP connections from one address, coming back as closed.
    let tally = Arc::new(Tally::default());
    let t = tally.clone();
    let started = Instant::now();
    let attack = Attack::start(
        "1,100 idle TCP connections from 127.0.0.2",
        &ns,
        move |stop| {
            let t2 = t.clone();
            async move {
                idle_tcp(stop, to, lo(0, 2), 1100, t2).await;
                t.summary()
            }
        },
    );
    std::thread::sleep(RAMP);
    assert_served(&m, &d, &token, &attack);
    // All but the address's share of handshake slots are closed at once, the rest at the
    // handshake deadline. On a loaded machine the acceptor reaches the last of them late, so
    // wait for the count rather than assert it at a fixed moment.
    support::wait_until(
        "the manager to close 1,000 of the idle connections",
        Duration::from_secs(60),
        || tally.closed_by_server.load(Ordering::Relaxed) >= 1000,
    );
    attack.stop(started, PHASE);

    // Finding 1b: past the descriptor limit. The same 1,100 silent connections plus 4
    // addresses x 150 TLS connections that finish the handshake and never send the preface:
    // 1,700 at once against a limit of 1,024.
    let (idle, tls) = (Arc::new(Tally::default()), Arc::new(Tally::default()));
    let (i, t) = (idle.clone(), tls.clone());
    let started = Instant::now();
    let attack = Attack::start(
        "1,100 idle TCP + 600 TLS connections without a preface",
        &ns,
        move |stop| async move {
            let from = (1..=4).map(|n| lo(1, n)).collect();
            tokio::join!(
                idle_tcp(stop.clone(), to, lo(0, 2), 1100, i.clone()),
                tls_flood(stop, to, from, 150, false, t.clone())
            );
            format!("idle: {}; TLS: {}", i.summary(), t.summary())
        },
    );
    std::thread::sleep(RAMP);
    assert_served(&m, &d, &token, &attack);
    attack.stop(started, PHASE);
    let (_, fds) = sampler.peaks();
    assert!(
        fds < NOFILE,
        "the manager reached its descriptor limit ({fds})"
    );
    assert!(
        tls.opened.load(Ordering::Relaxed) >= 100,
        "{}",
        tls.summary()
    );
    // Closed at the preface deadline (3 s), never held.
    let longest = Duration::from_millis(tls.longest_ms.load(Ordering::Relaxed));
    assert!(longest < Duration::from_secs(5), "{}", tls.summary());
    assert!(
        tls.closed_by_server.load(Ordering::Relaxed) >= 100,
        "{}",
        tls.summary()
    );

    // Finding 1c: silent connections that did send the preface, from 8 addresses x 32 (each
    // address's share), more than the anonymous share of 192: joins still get in, in the
    // place of the oldest.
    let anon = Arc::new(Tally::default());
    let a2 = anon.clone();
    let started = Instant::now();
    let attack = Attack::start(
        "256 silent anonymous HTTP/2 connections from 8 addresses",
        &ns,
        move |stop| async move {
            let from = (1..=8).map(|n| lo(2, n)).collect();
            tls_flood(stop, to, from, 32, true, a2.clone()).await;
            a2.summary()
        },
    );
    std::thread::sleep(RAMP);
    assert_served(&m, &d, &token, &attack);
    attack.stop(started, PHASE);
    assert!(
        anon.opened.load(Ordering::Relaxed) >= 256,
        "{}",
        anon.summary()
    );

    // Finding 2: a renewal flood with one worker certificate, and 256 KiB trust roots.
    let wal_before = wal_size(mdir.path());
    let started = Instant::now();
    let tok = token.clone();
    let attack = Attack::start(
        "8 tasks of renewals and 256 KiB sessions with one worker certificate",
        &ns,
        move |stop| renewal_flood(stop, to, tok),
    );
    std::thread::sleep(RAMP);
    assert_served(&m, &d, &token, &attack);
    let summary = attack.stop(started, PHASE);
    let grew = wal_size(mdir.path()) - wal_before;
    eprintln!("raft log grew {grew} bytes during the renewal flood");
    assert!(grew < MAX_LOG_GROWTH, "raft log grew {grew} bytes");
    assert!(field(&summary, "renewed") <= 1, "{summary}");
    assert!(field(&summary, "limited") >= 100, "{summary}");
    assert!(field(&summary, "sessions_refused") >= 10, "{summary}");
    assert_eq!(field(&summary, "other"), 0, "{summary}");

    let (rss, fds) = sampler.peaks();
    eprintln!("manager peaks: RSS {} KiB, {fds} descriptors", rss / 1024);
    assert!(
        rss > 0 && rss < MAX_RSS,
        "manager RSS peaked at {rss} bytes"
    );
    drop(sampler);
    drop(m);
    drop(d);
}
