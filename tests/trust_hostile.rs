//! Hostile load against `swarmguard trust-server`, reproducing each finding of the audit of
//! main 077ee9c (loopback only, bounded in count and time). Attackers connect from other
//! loopback addresses (127.0.0.2…), as other hosts would; the legitimate clients (the notary
//! CLI and a trusted `docker pull`) from 127.0.0.1 must keep working while each attack runs,
//! and the server's resident memory must stay under 200 MB throughout.

mod support;

use std::net::IpAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use support::dockerd::Dockerd;
use support::hostile::{connector, request, status, tls_from, RssWatch};
use support::notary_cli::NotaryCli;
use support::registry::Registry;
use support::trust_server::TrustServer;
use support::{text, PASS};
use tokio::io::AsyncWriteExt;

const RSS_LIMIT: u64 = 200 << 20;

fn addr(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// (status, body) of an anonymous request with curl.
fn curl(server: &TrustServer, args: &[&str], path: &str) -> (u16, String) {
    let mut c = Command::new(support::require_bin("curl"));
    c.args([
        "-sS",
        "--max-time",
        "60",
        "-o",
        "-",
        "-w",
        "\n%{http_code}",
        "--cacert",
    ])
    .arg(&server.cert)
    .args(args)
    .arg(format!("{}{}", server.url(), path));
    let o = support::run(c, Duration::from_secs(90));
    let out = String::from_utf8_lossy(&o.stdout).to_string();
    let (body, code) = out.rsplit_once('\n').unwrap_or(("", "0"));
    (code.trim().parse().unwrap_or(0), body.to_string())
}

fn version_of(server: &TrustServer, gun: &str, role: &str) -> u64 {
    let (code, body) = curl(server, &[], &format!("/v2/{gun}/_trust/tuf/{role}.json"));
    assert_eq!(code, 200, "{role}: {body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    v["signed"]["version"].as_u64().unwrap()
}

fn metrics(server: &TrustServer) -> String {
    curl(server, &[], "/metrics").1
}

/// The legitimate clients, run while an attack is under way.
struct Legit<'a> {
    docker: &'a Dockerd,
    env: Vec<(&'a str, &'a str)>,
    image: String,
    reader: NotaryCli,
    gun: String,
}

impl Legit<'_> {
    fn works(&self, during: &str) {
        let list = self.reader.ok(&["list", &self.gun]);
        assert!(list.contains("1.0"), "notary list during {during}:\n{list}");
        let _ = self.docker.docker(&["rmi", &self.image]);
        let o = self.docker.docker_env(&self.env, &["pull", &self.image]);
        assert!(
            o.status.success(),
            "trusted pull during {during}:\n{}",
            text(&o)
        );
    }
}

/// Finding 1: uploads of 16 MiB − 1 bytes on 300 connections from 5 addresses, each sent
/// as fast as the server reads (chunked, so no length to refuse up front), plus a few with
/// the length declared.
async fn big_uploads(port: u16, gun: &str, legit: impl FnOnce()) -> Vec<u16> {
    let tls = connector();
    let chunk = Arc::new({
        let mut c = format!("{:x}\r\n", 64 * 1024).into_bytes();
        c.extend(std::iter::repeat_n(b'{', 64 * 1024));
        c.extend_from_slice(b"\r\n");
        c
    });
    let mut tasks = Vec::new();
    for i in 0..300u32 {
        let (tls, chunk) = (tls.clone(), chunk.clone());
        let path = format!("/v2/{gun}/_trust/tuf/");
        tasks.push(tokio::spawn(async move {
            let Some(mut s) = tls_from(&tls, addr(10 + (i % 5) as u8), port).await else {
                return 0;
            };
            if i % 50 == 0 {
                let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: {}\r\n\r\n", (16 << 20) - 1);
                return request(&mut s, &head, b"").await;
            }
            let head = format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nTransfer-Encoding: chunked\r\n\r\n");
            if s.write_all(head.as_bytes()).await.is_err() {
                return 0;
            }
            for _ in 0..256 {
                if s.write_all(&chunk).await.is_err() {
                    break;
                }
            }
            status(&mut s).await
        }));
    }
    // The uploads run on the runtime's threads; the legitimate clients go through meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    legit();
    let mut out = Vec::new();
    for t in tasks {
        out.push(t.await.unwrap());
    }
    out
}

/// Finding 2: 1,024 connections from one address, each sending a body one byte every 2 s.
/// Returns (connections the server took, their answers).
async fn trickle(port: u16, gun: &str, legit: impl FnOnce()) -> (usize, Vec<u16>) {
    let tls = connector();
    let mut opened = Vec::new();
    for _ in 0..1024 {
        opened.push(tokio::spawn({
            let tls = tls.clone();
            async move { tls_from(&tls, addr(2), port).await }
        }));
    }
    let mut streams = Vec::new();
    for t in opened {
        if let Some(s) = t.await.unwrap() {
            streams.push(s);
        }
    }
    let taken = streams.len();
    let mut tasks = Vec::new();
    for s in streams {
        let head = format!("POST /v2/{gun}/_trust/tuf/ HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 1000\r\n\r\n");
        tasks.push(tokio::spawn(async move {
            let (mut r, mut w) = tokio::io::split(s);
            if w.write_all(head.as_bytes()).await.is_err() {
                return 0;
            }
            let drip = tokio::spawn(async move {
                for _ in 0..30 {
                    if w.write_all(b"x").await.is_err() {
                        break;
                    }
                    tokio::time::sleep(Duration::from_secs(2)).await;
                }
            });
            let code = read_status(&mut r).await;
            drip.abort();
            code
        }));
    }
    // The attack holds its connections now: the legitimate clients must get through.
    legit();
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap());
    }
    (taken, codes)
}

async fn read_status<R: tokio::io::AsyncRead + Unpin>(r: &mut R) -> u16 {
    use tokio::io::AsyncReadExt;
    let mut buf = [0u8; 512];
    match tokio::time::timeout(Duration::from_secs(90), r.read(&mut buf)).await {
        Ok(Ok(n)) if n > 0 => String::from_utf8_lossy(&buf[..n])
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or(0),
        _ => 0,
    }
}

/// Finding 5: a signer that accepts TCP and never answers the TLS handshake.
fn hanging_signer_server(dir: &std::path::Path) -> (TrustServer, std::net::TcpListener) {
    let hang = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let ca = support::TestCa::new(&dir.join("ca"), "hang-ca");
    let (cert, key) = ca.issue("trust-server-client", false);
    let extra = vec![
        "--signer-url".into(),
        format!("https://127.0.0.1:{}", hang.local_addr().unwrap().port()),
        "--signer-ca".into(),
        ca.cert.display().to_string(),
        "--signer-client-cert".into(),
        cert.display().to_string(),
        "--signer-client-key".into(),
        key.display().to_string(),
        "--signer-timeout-secs".into(),
        "2".into(),
    ];
    (
        TrustServer::start_opts(&dir.join("srv"), extra, false),
        hang,
    )
}

fn count(codes: &[u16], c: u16) -> usize {
    codes.iter().filter(|x| **x == c).count()
}

fn check_large_uploads(
    rt: &tokio::runtime::Runtime,
    server: &TrustServer,
    gun: &str,
    legit: &Legit<'_>,
    rss: &RssWatch,
) {
    // 1. Large uploads: nothing accepted, memory bounded, legitimate clients served after.
    let codes = rt.block_on(big_uploads(server.port, gun, || {
        legit.works("the large uploads")
    }));
    eprintln!(
        "large uploads: {} x 400, {} x 503, {} dropped; RSS max {} MB",
        count(&codes, 400),
        count(&codes, 503),
        count(&codes, 0),
        rss.max() >> 20
    );
    assert!(codes.iter().all(|c| [0, 400, 503].contains(c)), "{codes:?}");
    assert!(codes.contains(&400), "{codes:?}");
    let m = metrics(server);
    assert!(m.contains("reason=\"too_large\""), "{m}");
    assert!(
        rss.max() < RSS_LIMIT,
        "RSS {} MB during large uploads",
        rss.max() >> 20
    );
}

fn check_slow_bodies(
    rt: &tokio::runtime::Runtime,
    server: &TrustServer,
    gun: &str,
    legit: &Legit<'_>,
) {
    // 2. Slow bodies on 1,024 connections from one address: the address gets its share
    // (64), the rest is refused, and each slow body is cut at the body timeout.
    let (taken, codes) = rt.block_on(trickle(server.port, gun, || {
        legit.works("the slow-body attack")
    }));
    eprintln!(
        "slow bodies: {taken} of 1024 connections taken, {} x 408, {} dropped",
        count(&codes, 408),
        count(&codes, 0)
    );
    assert!(taken <= 64, "one address held {taken} connections");
    assert!(codes.iter().all(|c| [0, 408].contains(c)), "{codes:?}");
    assert!(codes.contains(&408), "{codes:?}");
}

fn check_noop_uploads(server: &TrustServer, gun: &str, dir: &std::path::Path, legit: &Legit<'_>) {
    // 3. Re-posting the public, unchanged root.json adds no version.
    let (root_code, root) = curl(server, &[], &format!("/v2/{gun}/_trust/tuf/root.json"));
    assert_eq!(root_code, 200);
    let root_file = dir.join("root.json");
    std::fs::write(&root_file, &root).unwrap();
    let (ts, snap) = (
        version_of(server, gun, "timestamp"),
        version_of(server, gun, "snapshot"),
    );
    let form = format!("files=@{};filename=root", root_file.display());
    let tuf = format!("/v2/{gun}/_trust/tuf/");
    let posts: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..8)
            .map(|_| {
                s.spawn(|| {
                    (0..25)
                        .map(|_| curl(server, &["--interface", "127.0.0.3", "-F", &form], &tuf).0)
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        hs.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    assert!(posts.iter().all(|c| *c == 200), "{posts:?}");
    assert_eq!(version_of(server, gun, "timestamp"), ts);
    assert_eq!(version_of(server, gun, "snapshot"), snap);
    legit.works("after the no-op uploads");
}

fn check_key_creation(server: &TrustServer, gun: &str, owner: &NotaryCli, legit: &Legit<'_>) {
    // 4. Anonymous key creation: limited per repository and identity, and keys the root does
    // not list are dropped, so the owner can still rotate.
    let key_path = format!("/v2/{gun}/_trust/tuf/timestamp.key");
    let codes: Vec<u16> = (0..63)
        .map(|_| {
            curl(
                server,
                &["--interface", "127.0.0.4", "-X", "POST"],
                &key_path,
            )
            .0
        })
        .collect();
    assert_eq!(codes.iter().filter(|c| **c == 200).count(), 5, "{codes:?}");
    assert!(codes[5..].iter().all(|c| *c == 429), "{codes:?}");
    owner.ok(&["key", "rotate", gun, "timestamp", "-r"]);
    legit.works("after the key creation attack");
}

fn check_history(
    server: &TrustServer,
    gun: &str,
    owner: &NotaryCli,
    dir: &std::path::Path,
    legit: &Legit<'_>,
    rss: &RssWatch,
) {
    // History: 200 publishes with history 10 keep 10 versions per role, root all of them.
    let payload = dir.join("payload");
    std::fs::write(&payload, "x\n").unwrap();
    for i in 0..200 {
        owner.ok(&[
            "add",
            "-p",
            gun,
            &format!("t{i}"),
            payload.to_str().unwrap(),
        ]);
    }
    for role in ["targets", "snapshot", "timestamp"] {
        let cur = version_of(server, gun, role);
        assert!(cur > 200, "{role} v{cur}");
        let kept = (cur.saturating_sub(15)..=cur)
            .filter(|v| {
                curl(
                    server,
                    &[],
                    &format!("/v2/{gun}/_trust/tuf/{v}.{role}.json"),
                )
                .0 == 200
            })
            .count();
        assert_eq!(kept, 10, "{role}");
        assert_eq!(
            curl(server, &[], &format!("/v2/{gun}/_trust/tuf/1.{role}.json")).0,
            404
        );
    }
    assert_eq!(
        curl(server, &[], &format!("/v2/{gun}/_trust/tuf/1.root.json")).0,
        200
    );
    eprintln!(
        "after 200 publishes: targets v{}, RSS max {} MB",
        version_of(server, gun, "targets"),
        rss.max() >> 20
    );
    legit.works("after 200 publishes");
    assert!(rss.max() < RSS_LIMIT, "RSS {} MB", rss.max() >> 20);
}

fn check_hanging_signer(dir: &std::path::Path) {
    // 5. A signer that never finishes the TLS handshake: key requests fail at the deadline
    // (503) instead of hanging, and requests that need no signer are served meanwhile.
    let (slow, _hang) = hanging_signer_server(&dir.join("hang"));
    let codes: Vec<u16> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..6)
            .map(|i| {
                let slow = &slow;
                s.spawn(move || {
                    curl(
                        slow,
                        &[],
                        &format!("/v2/127.0.0.1:5000/hang/r{i}/_trust/tuf/timestamp.key"),
                    )
                    .0
                })
            })
            .collect();
        for _ in 0..5 {
            assert_eq!(curl(&slow, &[], "/_notary_server/health").0, 200);
            assert_eq!(
                curl(&slow, &[], "/v2/127.0.0.1:5000/hang/x/_trust/tuf/root.json").0,
                404
            );
        }
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(codes.iter().all(|c| *c == 503), "{codes:?}");
}

#[test]
fn hostile_load_reproduces_each_audit_finding() {
    let dir = support::short_tempdir("sgh");
    let extra: Vec<String> = [
        "--history",
        "10",
        "--body-timeout-secs",
        "5",
        "--key-creations-per-hour",
        "5",
        "--max-connections-per-peer",
        "64",
    ]
    .map(String::from)
    .to_vec();
    let server = TrustServer::start_opts(&dir.path().join("srv"), extra, true);
    let registry = Registry::start(&dir.path().join("reg"));
    let docker = Dockerd::start_in(&dir.path().join("d"), false);
    let url = server.url();
    let env = vec![
        ("DOCKER_CONTENT_TRUST", "1"),
        ("DOCKER_CONTENT_TRUST_SERVER", url.as_str()),
        ("DOCKER_CONTENT_TRUST_ROOT_PASSPHRASE", PASS),
        ("DOCKER_CONTENT_TRUST_REPOSITORY_PASSPHRASE", PASS),
    ];
    let gun = format!("127.0.0.1:{}/team/app", registry.port);
    let image = format!("{gun}:1.0");
    docker.import_tiny_image(&image, "hostile load\n");
    let out = docker.ok(&env, &["push", &image]);
    assert!(out.contains("Successfully signed"), "{out}");
    let legit = Legit {
        docker: &docker,
        env: env.clone(),
        image: image.clone(),
        reader: NotaryCli::new(&dir.path().join("reader"), &url, &server.cert),
        gun: gun.clone(),
    };
    legit.works("setup");
    let rss = RssWatch::start(server.proc.pid());
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();

    // 6. Secrets at rest: data dir 0700, database 0600 (the master key check is in
    // `master_key_readable_by_others_is_refused` below).
    use std::os::unix::fs::PermissionsExt;
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&server.data_dir), 0o700);
    assert_eq!(mode(&server.data_dir.join("trust.redb")), 0o600);

    check_large_uploads(&rt, &server, &gun, &legit, &rss);
    check_slow_bodies(&rt, &server, &gun, &legit);
    check_noop_uploads(&server, &gun, dir.path(), &legit);
    let owner = NotaryCli::new(&docker.config.join("trust"), &url, &server.cert);
    check_key_creation(&server, &gun, &owner, &legit);
    check_history(&server, &gun, &owner, dir.path(), &legit, &rss);
    drop(rss);
    drop(legit);
    check_hanging_signer(dir.path());
}

#[test]
fn master_key_readable_by_others_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = support::short_tempdir("sgk");
    let (cert, key) = support::make_server_cert(dir.path(), &[]);
    let master = dir.path().join("master.key");
    support::write_master_key(&master);
    std::fs::set_permissions(&master, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_swarmguard"));
    c.arg("trust-server")
        .arg("--data-dir")
        .arg(dir.path().join("data"))
        .args(["--listen", "127.0.0.1:0", "--tls-cert"])
        .arg(&cert)
        .arg("--tls-key")
        .arg(&key)
        .arg("--signer-key-file")
        .arg(&master);
    let o = support::run(c, Duration::from_secs(30));
    assert!(!o.status.success(), "started with a 0644 master key");
    assert!(text(&o).contains("group or others"), "{}", text(&o));
}
