//! External CA throughput: certificates per second through swarmguard with a real `cfssl serve`
//! as its CA, against raw cfssl `sign` calls made by this bench to the same cfssl, in one run.
//!
//! Rows, each `JOINS` certificates (default 300) with 4 clients:
//! * raw cfssl `sign` (SwarmKit's request body, fresh CSR each, one kept-alive connection per
//!   client thread: the fastest this cfssl signs), before and after the swarmguard rows;
//! * joins through swarmguard (`swarmguard agent join-storm`: fresh TLS, token + CSR, status
//!   until issued; every certificate signed by cfssl and checked by the manager);
//! * renewals through swarmguard (`swarmguard agent renew-storm`: nodes that joined before the
//!   clock started renew once each over mTLS connections opened before it: issuance through
//!   cfssl without the join's handshakes);
//! * the same joins and renewals with the internal CA, for the breakdown.
//!
//! CPU seconds of cfssl, the manager and the clients are read from /proc for each row: the
//! machine's cores are shared by all three. Run: `cargo bench --bench external_ca`.

#[path = "../tests/support/mod.rs"]
mod support;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::Command;
use std::time::Instant;

use support::cfssl::CfsslServer;
use support::manager::Manager;

const CLIENTS: usize = 4;

/// utime + stime of a process in seconds (children that were waited for included for `self`).
fn cpu_seconds(pid: u32, children: bool) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised command name; utime is field 14 (index 11 here).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<f64> = rest
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    let ticks = if children {
        f.get(13).unwrap_or(&0.0) + f.get(14).unwrap_or(&0.0)
    } else {
        f.get(11).unwrap_or(&0.0) + f.get(12).unwrap_or(&0.0)
    };
    ticks / 100.0
}

/// CPU seconds used by cfssl, the manager, and the bench with its finished children.
#[derive(Clone, Copy)]
struct Cpu {
    cfssl: f64,
    manager: f64,
    clients: f64,
}

impl Cpu {
    fn read(cfssl: u32, manager: u32) -> Cpu {
        Cpu::with_child(cfssl, manager, 0)
    }

    /// With a client process that is still running (not yet counted among the children).
    fn with_child(cfssl: u32, manager: u32, child: u32) -> Cpu {
        let me = std::process::id();
        let of = |pid: u32| {
            if pid == 0 {
                0.0
            } else {
                cpu_seconds(pid, false)
            }
        };
        Cpu {
            cfssl: of(cfssl),
            manager: of(manager),
            clients: cpu_seconds(me, false) + cpu_seconds(me, true) + of(child),
        }
    }

    /// Milliseconds of CPU per certificate since `before`: cfssl / manager / clients.
    fn per_cert(&self, before: &Cpu, n: usize) -> String {
        let ms = |a: f64, b: f64| (a - b) * 1000.0 / n as f64;
        format!(
            "{:.2} / {:.2} / {:.2}",
            ms(self.cfssl, before.cfssl),
            ms(self.manager, before.manager),
            ms(self.clients, before.clients)
        )
    }
}

/// Reads one HTTP/1.1 response (Content-Length or chunked) from a kept-alive connection.
fn read_response(r: &mut BufReader<TcpStream>) -> (String, Vec<u8>) {
    let mut head = String::new();
    let mut length = None;
    let mut chunked = false;
    loop {
        let mut line = String::new();
        r.read_line(&mut line).unwrap();
        let l = line.to_ascii_lowercase();
        if let Some(v) = l.strip_prefix("content-length:") {
            length = Some(v.trim().parse::<usize>().unwrap());
        }
        chunked |= l.starts_with("transfer-encoding:") && l.contains("chunked");
        head.push_str(&line);
        if line == "\r\n" {
            break;
        }
    }
    let mut body = Vec::new();
    if chunked {
        loop {
            let mut size = String::new();
            r.read_line(&mut size).unwrap();
            let n = usize::from_str_radix(size.trim(), 16).unwrap();
            let mut chunk = vec![0; n + 2];
            r.read_exact(&mut chunk).unwrap();
            body.extend_from_slice(&chunk[..n]);
            if n == 0 {
                break;
            }
        }
    } else {
        body.resize(length.expect("Content-Length"), 0);
        r.read_exact(&mut body).unwrap();
    }
    (head, body)
}

/// SwarmKit-shaped sign requests on one kept-alive connection; panics unless cfssl signed each.
fn raw_sign_all(port: u16, bodies: &[String]) {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_nodelay(true).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    for body in bodies {
        write!(
            w,
            "POST /api/v1/cfssl/sign HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .unwrap();
        let (head, body) = read_response(&mut r);
        assert!(
            head.starts_with("HTTP/1.1 200")
                && String::from_utf8_lossy(&body).contains("\"success\":true"),
            "{head}"
        );
    }
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
            scope.spawn(move || raw_sign_all(port, chunk));
        }
    });
    n as f64 / start.elapsed().as_secs_f64()
}

/// `swarmguard agent join-storm`.
fn storm(addr: &str, token: &str, n: usize) -> serde_json::Value {
    let out = Command::new(env!("CARGO_BIN_EXE_swarmguard"))
        .args(["agent", "join-storm", "--clients"])
        .arg(CLIENTS.to_string())
        .arg("--joins")
        .arg(n.to_string())
        .arg(addr)
        .env("SWARMGUARD_JOIN_TOKEN", token)
        .env("RUST_LOG", "warn")
        .output()
        .expect("run swarmguard agent storm");
    assert!(
        out.status.success(),
        "join storm failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("storm result JSON")
}

/// `swarmguard agent renew-storm`: CPU is read (`at_go`) after its nodes joined and just
/// before its clock starts, so the renewal row's CPU is the renewals' alone.
fn renew_storm(addr: &str, token: &str, n: usize, at_go: impl FnOnce(u32)) -> serde_json::Value {
    use std::process::Stdio;
    let mut child = Command::new(env!("CARGO_BIN_EXE_swarmguard"))
        .args(["agent", "renew-storm", "--go-on-stdin", "--clients"])
        .arg(CLIENTS.to_string())
        .arg("--nodes")
        .arg(n.to_string())
        .arg(addr)
        .env("SWARMGUARD_JOIN_TOKEN", token)
        .env("RUST_LOG", "warn")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run swarmguard agent renew-storm");
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    assert!(line.contains("joined"), "renew-storm: {line:?}");
    at_go(child.id());
    writeln!(child.stdin.as_mut().unwrap(), "go").unwrap();
    line.clear();
    out.read_line(&mut line).unwrap();
    assert!(child.wait().unwrap().success(), "renew-storm failed");
    serde_json::from_str(&line).expect("renew-storm result JSON")
}

fn row(path: &str, r: &serde_json::Value, cpu: &str) -> String {
    format!(
        "| {path} | {:.0} | {:.1} | {:.1} | {cpu} |",
        r["certs_per_second"].as_f64().unwrap(),
        r["p50_ms"].as_f64().unwrap(),
        r["p99_ms"].as_f64().unwrap()
    )
}

fn main() {
    let joins: usize = std::env::var("JOINS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let work = support::short_tempdir("sgxb");
    let mdir = tempfile::tempdir().unwrap();
    let (cf, m) = CfsslServer::external_ca_swarm(work.path(), "cfssl-bench-root", mdir.path());
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let mut rows = Vec::new();

    // Raw first, then through swarmguard, then raw again: the raw runs bracket the storms.
    let c0 = Cpu::read(cf.pid(), m.pid());
    let raw1 = raw_rate(cf.port, joins);
    let c1 = Cpu::read(cf.pid(), m.pid());
    rows.push(format!(
        "| raw cfssl sign (bench → cfssl, kept-alive), before | {raw1:.0} | | | {} |",
        c1.per_cert(&c0, joins)
    ));
    let before = cf.signed();
    let j = storm(&m.cluster_addr, token.trim(), joins);
    let c2 = Cpu::read(cf.pid(), m.pid());
    assert_eq!(cf.signed() - before, joins, "one cfssl signature per join");
    rows.push(row(
        "swarmguard join through cfssl (agent → manager → cfssl → checks → store)",
        &j,
        &c2.per_cert(&c1, joins),
    ));
    // Renewals by nodes that joined (through cfssl too) before the clock started.
    let mut c2 = c2;
    let r = renew_storm(&m.cluster_addr, token.trim(), joins, |child| {
        c2 = Cpu::with_child(cf.pid(), m.pid(), child)
    });
    let c3 = Cpu::read(cf.pid(), m.pid());
    assert_eq!(
        cf.signed() - before,
        3 * joins,
        "one cfssl signature per join and per renewal"
    );
    rows.push(row(
        "swarmguard renewal through cfssl (nodes joined, mTLS open before the clock)",
        &r,
        &c3.per_cert(&c2, joins),
    ));
    let raw2 = raw_rate(cf.port, joins);
    let c4 = Cpu::read(cf.pid(), m.pid());
    rows.push(format!(
        "| raw cfssl sign, after | {raw2:.0} | | | {} |",
        c4.per_cert(&c3, joins)
    ));
    let raw = (raw1 + raw2) / 2.0;
    drop(m);

    // The same with the internal CA: the paths without cfssl, for the breakdown.
    let idir = tempfile::tempdir().unwrap();
    let internal = Manager::start(idir.path());
    internal.init_swarm(&[]);
    let itoken = internal.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let i0 = Cpu::read(0, internal.pid());
    let ij = storm(&internal.cluster_addr, itoken.trim(), joins);
    let joined = Cpu::read(0, internal.pid());
    let mut i1 = joined;
    let ir = renew_storm(&internal.cluster_addr, itoken.trim(), joins, |child| {
        i1 = Cpu::with_child(0, internal.pid(), child)
    });
    let i2 = Cpu::read(0, internal.pid());
    rows.push(row(
        "swarmguard join, internal CA (no cfssl)",
        &ij,
        &joined.per_cert(&i0, joins),
    ));
    rows.push(row(
        "swarmguard renewal, internal CA",
        &ir,
        &i2.per_cert(&i1, joins),
    ));
    drop(internal);

    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "External CA (cfssl serve, http loopback), {joins} certificates per row, {CLIENTS} clients, {cores} cores"
    );
    println!();
    println!("| path | certificates/s | p50 ms | p99 ms | CPU ms per certificate: cfssl / manager / clients |");
    println!("|---|---|---|---|---|");
    for r in rows {
        println!("{r}");
    }
    println!();
    let rate = |v: &serde_json::Value| v["certs_per_second"].as_f64().unwrap();
    println!(
        "overhead ratio (mean raw rate / rate through swarmguard): joins {:.2}x, renewals {:.2}x",
        raw / rate(&j),
        raw / rate(&r)
    );
    drop(cf);
}
