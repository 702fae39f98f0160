//! `docker swarm join-token --rotate` latency: swarmguard against a real dockerd in swarm mode,
//! started by this bench, in one run.
//!
//! Run: `cargo bench --bench rotate` (as root: dockerd runs in its own network namespace).
//! Prints a markdown table for docs/benchmarks.md.

#[path = "../tests/support/mod.rs"]
mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use support::dockerd::Dockerd;
use support::manager::{unix_request, Manager};

const CLI_ROUNDS: usize = 40;
const API_ROUNDS: usize = 200;

struct Stats {
    p50: Duration,
    p90: Duration,
    max: Duration,
}

fn stats(mut v: Vec<Duration>) -> Stats {
    v.sort();
    let at = |q: f64| v[((v.len() as f64 - 1.0) * q).round() as usize];
    Stats {
        p50: at(0.5),
        p90: at(0.9),
        max: *v.last().unwrap(),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.2}", d.as_secs_f64() * 1000.0)
}

/// The CLI path: what an operator types.
fn time_cli(docker: &dyn Fn(&[&str]) -> std::process::Output) -> Duration {
    let t = Instant::now();
    let out = docker(&["swarm", "join-token", "--rotate", "-q", "worker"]);
    let d = t.elapsed();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    d
}

/// The API path the CLI uses: GET /swarm for the version and spec, POST /swarm/update.
fn time_api(socket: &Path) -> Duration {
    let t = Instant::now();
    let s = unix_request(socket, "GET", "/v1.41/swarm", None)
        .unwrap()
        .json();
    let v = s["Version"]["Index"].as_u64().unwrap();
    let body = serde_json::to_vec(&s["Spec"]).unwrap();
    let r = unix_request(
        socket,
        "POST",
        &format!("/v1.41/swarm/update?rotateManagerToken=false&rotateManagerUnlockKey=false&rotateWorkerToken=true&version={v}"),
        Some(&body),
    )
    .unwrap();
    let d = t.elapsed();
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    d
}

/// Runs `f` on both peers in alternating rounds, so load on this shared machine hits both alike.
fn interleaved(
    rounds: usize,
    mut f: impl FnMut(bool) -> Duration,
) -> (Vec<Duration>, Vec<Duration>) {
    let (mut ours, mut theirs) = (Vec::new(), Vec::new());
    for i in 0..rounds {
        // Alternate which peer goes first, too.
        if i % 2 == 0 {
            ours.push(f(true));
            theirs.push(f(false));
        } else {
            theirs.push(f(false));
            ours.push(f(true));
        }
    }
    (ours, theirs)
}

fn main() {
    let dir = tempfile::tempdir().unwrap();
    let sg = Manager::start(dir.path());
    sg.docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);

    let dockerd = Dockerd::start(true);
    dockerd.docker_ok(&["swarm", "init", "--advertise-addr", "127.0.0.1"]);

    // Warm both up once.
    sg.docker_ok(&["swarm", "join-token", "--rotate", "-q", "worker"]);
    dockerd.docker_ok(&["swarm", "join-token", "--rotate", "-q", "worker"]);

    let (sg_cli, dk_cli) = interleaved(CLI_ROUNDS, |ours| {
        if ours {
            time_cli(&|a| sg.docker(a))
        } else {
            time_cli(&|a| dockerd.docker(a))
        }
    });
    let (sg_api, dk_api) = interleaved(API_ROUNDS, |ours| {
        time_api(if ours { &sg.socket } else { &dockerd.socket })
    });
    // Every rotation must have produced a new token on each side.
    for socket in [&sg.socket, &dockerd.socket] {
        let s = unix_request(socket, "GET", "/v1.41/swarm", None)
            .unwrap()
            .json();
        assert!(s["Version"]["Index"].as_u64().unwrap() > (CLI_ROUNDS + API_ROUNDS) as u64);
    }
    let (sg_cli, dk_cli, sg_api, dk_api) =
        (stats(sg_cli), stats(dk_cli), stats(sg_api), stats(dk_api));

    let ratio = |a: &Stats, b: &Stats| b.p50.as_secs_f64() / a.p50.as_secs_f64();
    println!("| path | peer | n | p50 ms | p90 ms | max ms | dockerd p50 / swarmguard p50 |");
    println!("|---|---|---|---|---|---|---|");
    for (path, n, a, b) in [
        (
            "`docker swarm join-token --rotate -q worker` (CLI)",
            CLI_ROUNDS,
            &sg_cli,
            &dk_cli,
        ),
        (
            "`GET /swarm` + `POST /swarm/update?rotateWorkerToken=true` (API)",
            API_ROUNDS,
            &sg_api,
            &dk_api,
        ),
    ] {
        println!(
            "| {path} | swarmguard | {n} | {} | {} | {} | {:.2}× |",
            ms(a.p50),
            ms(a.p90),
            ms(a.max),
            ratio(a, b)
        );
        println!(
            "| {path} | dockerd 20.10 | {n} | {} | {} | {} | |",
            ms(b.p50),
            ms(b.p90),
            ms(b.max)
        );
    }
}
