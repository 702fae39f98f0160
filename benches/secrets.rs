//! `docker secret create` latency and API create throughput: swarmguard against a real dockerd
//! 20.10 in swarm mode, started by this bench, peers interleaved in one run, both durable (each
//! acknowledges a create after its Raft log write is on disk).
//!
//! Run: `cargo bench --bench secrets` (as root: dockerd runs in its own network namespace).
//! Prints markdown tables for docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::dockerd::Dockerd;
use support::manager::{unix_request, Manager};

const CLI_ROUNDS: usize = 30;
const API_ROUNDS: usize = 200;
/// Back-to-back latency: requests per block; blocks alternate between the peers.
const API_BLOCK: usize = 20;
/// Creates per throughput run, split over the clients.
const THROUGHPUT_CREATES: usize = 2000;
/// Throughput runs per peer and client count (alternating which peer goes first).
const THROUGHPUT_ROUNDS: usize = 3;

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

fn p(v: &mut [Duration], q: f64) -> Duration {
    v.sort();
    v[((v.len() as f64 - 1.0) * q).round() as usize]
}

static SEQ: AtomicUsize = AtomicUsize::new(0);

fn create_body() -> Vec<u8> {
    let n = SEQ.fetch_add(1, Ordering::SeqCst);
    serde_json::to_vec(&serde_json::json!({
        "Name": format!("bench{n}"),
        "Labels": {},
        "Data": base64::engine::general_purpose::STANDARD.encode(format!("value-{n}")),
    }))
    .unwrap()
}

fn api_create(socket: &Path) -> Duration {
    send_create(socket, &create_body())
}

fn send_create(socket: &Path, body: &[u8]) -> Duration {
    let t = Instant::now();
    let r = unix_request(socket, "POST", "/v1.41/secrets/create", Some(body)).unwrap();
    let d = t.elapsed();
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    d
}

fn cli_create(docker: &dyn Fn(&[&str], &[u8]) -> std::process::Output) -> Duration {
    let name = format!("cli{}", SEQ.fetch_add(1, Ordering::SeqCst));
    let t = Instant::now();
    let out = docker(&["secret", "create", &name, "-"], b"cli-value");
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

/// Creates per second with `clients` threads sharing `THROUGHPUT_CREATES` creates. The
/// bodies are made before the clock starts, so the client's JSON work is not counted against
/// the faster peer (the clients share the machine's two cores with it).
fn throughput(socket: &Path, clients: usize) -> f64 {
    let bodies: Arc<Vec<Vec<u8>>> =
        Arc::new((0..THROUGHPUT_CREATES).map(|_| create_body()).collect());
    let left = Arc::new(AtomicUsize::new(THROUGHPUT_CREATES));
    let t = Instant::now();
    let threads: Vec<_> = (0..clients)
        .map(|_| {
            let (socket, left, bodies): (PathBuf, _, _) =
                (socket.to_path_buf(), left.clone(), bodies.clone());
            std::thread::spawn(move || {
                while let Ok(n) =
                    left.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                {
                    send_create(&socket, &bodies[n - 1]);
                }
            })
        })
        .collect();
    for th in threads {
        th.join().unwrap();
    }
    THROUGHPUT_CREATES as f64 / t.elapsed().as_secs_f64()
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let sg = Manager::start(dir.path());
    sg.docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let dockerd = Dockerd::start(true);
    dockerd.docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);
    let dk_cli = |args: &[&str], stdin: &[u8]| -> std::process::Output {
        use std::io::Write;
        let mut child = dockerd
            .cmd(&[], args)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(stdin).unwrap();
        child.wait_with_output().unwrap()
    };
    let sg_cli = |args: &[&str], stdin: &[u8]| sg.docker_with_stdin(args, Some(stdin));
    api_create(&sg.socket);
    api_create(&dockerd.socket);

    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..CLI_ROUNDS {
        if i % 2 == 0 {
            a.push(cli_create(&sg_cli));
            b.push(cli_create(&dk_cli));
        } else {
            b.push(cli_create(&dk_cli));
            a.push(cli_create(&sg_cli));
        }
    }
    let (mut c, mut d) = (Vec::new(), Vec::new());
    for i in 0..API_ROUNDS {
        if i % 2 == 0 {
            c.push(api_create(&sg.socket));
            d.push(api_create(&dockerd.socket));
        } else {
            d.push(api_create(&dockerd.socket));
            c.push(api_create(&sg.socket));
        }
    }
    // The same requests in blocks: each peer's threads are awake for all but the first of a
    // block, as for a client that creates many secrets, where one request each in turn finds
    // the other peer's work just done and its own threads asleep.
    let (mut e, mut f) = (Vec::new(), Vec::new());
    for i in 0..API_ROUNDS / API_BLOCK {
        let block = |socket: &Path, into: &mut Vec<Duration>| {
            for _ in 0..API_BLOCK {
                into.push(api_create(socket));
            }
        };
        if i % 2 == 0 {
            block(&sg.socket, &mut e);
            block(&dockerd.socket, &mut f);
        } else {
            block(&dockerd.socket, &mut f);
            block(&sg.socket, &mut e);
        }
    }
    println!("| path | peer | n | p50 ms | p90 ms | max ms | dockerd p50 / swarmguard p50 |");
    println!("|---|---|---|---|---|---|---|");
    for (path, n, ours, theirs) in [
        (
            "`docker secret create NAME -` (CLI)",
            CLI_ROUNDS,
            &mut a,
            &mut b,
        ),
        (
            "`POST /secrets/create` (API, 1 client)",
            API_ROUNDS,
            &mut c,
            &mut d,
        ),
        (
            "`POST /secrets/create` (API, 1 client, blocks of 20)",
            API_ROUNDS,
            &mut e,
            &mut f,
        ),
    ] {
        let (o50, t50) = (p(ours, 0.5), p(theirs, 0.5));
        println!(
            "| {path} | swarmguard | {n} | {} | {} | {} | {:.2}× |",
            ms(o50),
            ms(p(ours, 0.9)),
            ms(p(ours, 1.0)),
            t50.as_secs_f64() / o50.as_secs_f64()
        );
        println!(
            "| {path} | dockerd 20.10 | {n} | {} | {} | {} | |",
            ms(t50),
            ms(p(theirs, 0.9)),
            ms(p(theirs, 1.0))
        );
    }
    println!();
    println!("| concurrent clients | swarmguard creates/s (median, min–max) | dockerd 20.10 creates/s (median, min–max) | ratio of medians |");
    println!("|---|---|---|---|");
    for clients in [1, 8, 32] {
        let (mut ours, mut theirs) = (Vec::new(), Vec::new());
        for round in 0..THROUGHPUT_ROUNDS {
            if round % 2 == 0 {
                ours.push(throughput(&sg.socket, clients));
                theirs.push(throughput(&dockerd.socket, clients));
            } else {
                theirs.push(throughput(&dockerd.socket, clients));
                ours.push(throughput(&sg.socket, clients));
            }
        }
        let summary = |v: &mut Vec<f64>| {
            v.sort_by(|a, b| a.total_cmp(b));
            (v[v.len() / 2], v[0], v[v.len() - 1])
        };
        let (o, t) = (summary(&mut ours), summary(&mut theirs));
        println!(
            "| {clients} | {:.0} ({:.0}–{:.0}) | {:.0} ({:.0}–{:.0}) | {:.2}× |",
            o.0,
            o.1,
            o.2,
            t.0,
            t.1,
            t.2,
            o.0 / t.0
        );
    }
}
