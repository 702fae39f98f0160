//! Audit findings 1 and 2 in process, at small scale and with short deadlines: connection
//! floods on the cluster port, and a worker certificate flooding renewals and sessions. The
//! same attacks against the real binary with a stock dockerd joining: tests/hostile.rs.

use std::net::{IpAddr, SocketAddr};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tokio_rustls::client::TlsStream;

use super::*;
use crate::grpc::accept::Deadlines;
use crate::grpc::limits::LimitConfig;

const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

fn lo(n: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, n])
}

/// A TCP connection to `to` from the loopback address `from`.
async fn tcp_from(from: IpAddr, to: SocketAddr) -> std::io::Result<TcpStream> {
    let s = TcpSocket::new_v4()?;
    s.bind(SocketAddr::new(from, 0))?;
    s.connect(to).await
}

/// A finished TLS handshake without a client certificate, from `from`; then the HTTP/2
/// preface if `preface`, and nothing more.
async fn tls_from(env: &Env, from: IpAddr, preface: bool) -> std::io::Result<TlsStream<TcpStream>> {
    let tcp = tcp_from(from, env.addr).await?;
    let cfg = ctls::verified(&env.root(), None).unwrap();
    let name = rustls::pki_types::ServerName::try_from("swarm-ca").unwrap();
    let mut tls = tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await?;
    if preface {
        tls.write_all(PREFACE).await?;
        tls.flush().await?;
    }
    Ok(tls)
}

/// Whether the server closed the connection within `limit` (reads until EOF or an error;
/// HTTP/2 frames the server sends first are skipped).
async fn closed_within<S: tokio::io::AsyncRead + Unpin>(s: &mut S, limit: Duration) -> bool {
    let mut buf = [0u8; 1024];
    tokio::time::timeout(limit, async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return,
                Ok(_) => continue,
            }
        }
    })
    .await
    .is_ok()
}

fn caps() -> LimitConfig {
    LimitConfig {
        per_ip_pending: 8,
        per_ip_anonymous: 4,
        per_ip_total: 512,
        max_pending: 64,
        max_anonymous: 40,
        max_total: 96,
        evict_anonymous_after: Duration::from_secs(1),
    }
}

fn fast() -> Deadlines {
    Deadlines {
        handshake: Duration::from_secs(2),
        preface: Duration::from_millis(300),
        anonymous_idle: Duration::from_millis(600),
        anonymous_lifetime: Duration::from_secs(3),
    }
}

/// Finding 1: a thousand idle TCP connections from one address used to take every handshake
/// slot, so every real join failed. Now that address holds its share; joins from others work.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_tcp_flood_from_one_address_leaves_joins_working() {
    let env = Env::with_port(caps(), Deadlines::default()).await;
    let limits = env.running.as_ref().unwrap().limits.clone();
    let mut idle = Vec::new();
    for _ in 0..300 {
        if let Ok(s) = tcp_from(lo(2), env.addr).await {
            idle.push(s);
        }
    }
    poll(
        "refused connections counted out",
        Duration::from_secs(5),
        || limits.in_use().0 <= caps().per_ip_pending,
    )
    .await;
    assert_eq!(limits.in_use().0, caps().per_ip_pending, "pending now");
    // Beyond its share, the address's connections are closed at once.
    let mut closed = 0;
    for s in idle.iter_mut().skip(caps().per_ip_pending) {
        if closed_within(s, Duration::from_millis(500)).await {
            closed += 1;
        }
    }
    assert_eq!(closed, 300 - caps().per_ip_pending);
    // Joins (from 127.0.0.1) and sessions go on while the flood holds its slots.
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let mut a = env.spawn_agent(creds, RunOptions::default());
    a.wait("session", |s| s.sessions == 1).await;
    a.stop().await;
    drop(idle);
}

/// Finding 1: TLS-finished connections that never send the HTTP/2 preface used to stay open
/// for ever, until the process ran out of descriptors. Now they are closed after the preface
/// deadline and give their place back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_connections_without_a_preface_are_closed_after_the_deadline() {
    let env = Env::with_port(caps(), fast()).await;
    let limits = env.running.as_ref().unwrap().limits.clone();
    let mut held = Vec::new();
    for n in 0..6 {
        for _ in 0..5 {
            held.push(tls_from(&env, lo(10 + n), false).await.unwrap());
        }
    }
    assert_eq!(limits.in_use().0, 30, "all 30 are pending");
    for s in held.iter_mut() {
        assert!(closed_within(s, Duration::from_secs(2)).await);
    }
    poll("places given back", Duration::from_secs(2), || {
        limits.in_use() == (0, 0, 0)
    })
    .await;
    // Something that is not HTTP/2 after the handshake is closed at once.
    let mut t = tls_from(&env, lo(20), false).await.unwrap();
    t.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n  ")
        .await
        .unwrap();
    assert!(closed_within(&mut t, Duration::from_millis(250)).await);
}

/// Finding 1: a connection without a client certificate is closed once idle, and after its
/// lifetime even if it keeps talking; a node's certified session is not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_connections_are_closed_when_idle_or_old_certified_ones_stay() {
    let env = Env::with_port(caps(), fast()).await;
    let limits = env.running.as_ref().unwrap().limits.clone();
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let mut a = env.spawn_agent(creds, RunOptions::default());
    a.wait("session", |s| s.sessions == 1).await;

    let mut quiet = tls_from(&env, lo(30), true).await.unwrap();
    assert!(closed_within(&mut quiet, Duration::from_secs(2)).await);

    // One that sends an HTTP/2 PING every 200 ms is not idle, but is closed at its lifetime.
    let mut chatty = tls_from(&env, lo(31), true).await.unwrap();
    chatty
        .write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0])
        .await
        .unwrap(); // empty SETTINGS
    let started = tokio::time::Instant::now();
    let mut buf = [0u8; 1024];
    let lived = loop {
        // PING: length 8, type 6, flags 0, stream 0, 8 bytes of data.
        let ping = [0, 0, 8, 6, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        if chatty.write_all(&ping).await.is_err() {
            break started.elapsed();
        }
        match tokio::time::timeout(Duration::from_millis(200), chatty.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break started.elapsed(),
            _ => {}
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never closed");
    };
    assert!(
        lived > fast().anonymous_idle * 2,
        "closed as idle after {lived:?}"
    );
    assert!(
        lived < fast().anonymous_lifetime + Duration::from_secs(2),
        "{lived:?}"
    );

    // The certified session outlived both deadlines and still heartbeats.
    assert_eq!(a.state.borrow().sessions, 1);
    let (_, anonymous, total) = limits.in_use();
    assert_eq!((anonymous, total >= 1), (0, true));
    a.stop().await;
}

/// Finding 1: anonymous connections from many addresses take at most their share of the
/// total; nodes with a certificate still connect, and a join takes the place of the oldest
/// idle anonymous connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn anonymous_flood_leaves_room_for_nodes_with_a_certificate_and_joins() {
    let env = Env::with_port(caps(), Deadlines::default()).await;
    let limits = env.running.as_ref().unwrap().limits.clone();
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let mut flood = Vec::new();
    for n in 0..20u8 {
        for _ in 0..4 {
            if let Ok(t) = tls_from(&env, lo(100 + n), true).await {
                flood.push(t);
            }
        }
    }
    poll("anonymous share full", Duration::from_secs(5), || {
        limits.in_use().1 == caps().max_anonymous
    })
    .await;
    // Those beyond the share were closed after their handshake; keep the ones holding places.
    let mut holding = Vec::new();
    for mut t in flood {
        if !closed_within(&mut t, Duration::from_millis(10)).await {
            holding.push(t);
        }
    }
    assert_eq!(holding.len(), caps().max_anonymous);
    let mut flood = holding;
    // A node with a certificate opens its session...
    let mut a = env.spawn_agent(creds, RunOptions::default());
    a.wait("session during the flood", |s| s.sessions == 1)
        .await;
    // ...and, once the flood's connections are a second old, a join closes the oldest.
    tokio::time::sleep(caps().evict_anonymous_after).await;
    agent::join(env.addr, &env.worker_token()).await.unwrap();
    let mut evicted = 0;
    for t in flood.iter_mut() {
        if closed_within(t, Duration::from_millis(20)).await {
            evicted += 1;
        }
    }
    // The join's two connections (root download, then the certificate request) took two places.
    assert!((1..=2).contains(&evicted), "{evicted} closed");
    assert!(limits.in_use().1 <= caps().max_anonymous);
    a.stop().await;
}

/// Finding 2: renewals over mTLS are limited per node; a refused one writes nothing. A role
/// change lets the node renew at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn renewals_are_rate_limited_per_node() {
    let env = Env::new().await;
    let creds = agent::join(env.addr, &env.manager_token()).await.unwrap();
    let id = creds.node_id.clone();
    let renewed = agent::request_certificate(env.addr, &env.root(), None, Some(&creds))
        .await
        .unwrap();
    let version = env.control.node(&id).unwrap().version;
    let e =
        status_of(agent::request_certificate(env.addr, &env.root(), None, Some(&renewed)).await);
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(
        e.message().contains("renewals are allowed once every 300s"),
        "{}",
        e.message()
    );
    assert_eq!(env.control.node(&id).unwrap().version, version);
    // The old certificate cannot get around it either.
    let e = status_of(agent::request_certificate(env.addr, &env.root(), None, Some(&creds)).await);
    assert_eq!(e.code(), Code::Unavailable);

    // Demoted: the node must renew to get its new OU, and may.
    let v = env.control.node(&id).unwrap();
    let mut spec = v.record.spec.clone();
    spec.role = Role::Worker;
    env.control.update_node(&id, v.version, spec).await.unwrap();
    let demoted = agent::request_certificate(env.addr, &env.root(), None, Some(&renewed))
        .await
        .unwrap();
    assert_eq!(demoted.role, NodeRole::Worker);
    // And then the limit holds again.
    let e =
        status_of(agent::request_certificate(env.addr, &env.root(), None, Some(&demoted)).await);
    assert_eq!(e.code(), Code::Unavailable);
}

/// Finding 2: eight threads of renewals with one worker certificate used to grow the raft log
/// by ~100 MB/s. Now one renewal goes through and the log barely moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_flood_does_not_grow_the_log() {
    let env = Env::new().await;
    let creds = Arc::new(agent::join(env.addr, &env.worker_token()).await.unwrap());
    let wal = env._dir.path().join("store/raft-log.wal");
    let before = std::fs::metadata(&wal).unwrap().len();
    let root = env.root();
    let cfg = ctls::verified(&root, Some((&creds.cert_pem, &creds.key_pem))).unwrap();
    let ch = ctls::channel(env.addr, cfg, "swarm-manager").await.unwrap();
    let csr = csr();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(2);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let mut nca = pb::node_ca_client::NodeCaClient::new(ch.clone());
        let csr = csr.clone();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut limited) = (0u32, 0u32);
            while tokio::time::Instant::now() < deadline {
                let r = nca
                    .issue_node_certificate(pb::IssueNodeCertificateRequest {
                        csr: csr.clone(),
                        ..Default::default()
                    })
                    .await;
                match r {
                    Ok(_) => ok += 1,
                    Err(e) if e.code() == Code::Unavailable => limited += 1,
                    Err(e) => panic!("{e:?}"),
                }
            }
            (ok, limited)
        }));
    }
    let (mut ok, mut limited) = (0, 0);
    for t in tasks {
        let (o, l) = t.await.unwrap();
        ok += o;
        limited += l;
    }
    let grew = std::fs::metadata(&wal).unwrap().len() - before;
    eprintln!("renewal flood: {ok} renewed, {limited} refused, raft log +{grew} bytes");
    assert_eq!(ok, 1);
    assert!(limited > 100, "the flood did not run: {limited}");
    assert!(grew < 64 * 1024, "raft log grew {grew} bytes");
}

fn description(trust_root: Vec<u8>) -> pb::NodeDescription {
    pb::NodeDescription {
        hostname: "w1".into(),
        engine: Some(pb::EngineDescription {
            engine_version: "20.10.24".into(),
            ..Default::default()
        }),
        tls_info: Some(pb::NodeTlsInfo {
            trust_root,
            cert_issuer_subject: vec![1; 40],
            cert_issuer_public_key: vec![2; 91],
        }),
        ..Default::default()
    }
}

/// Finding 2: a node's description is bounded to a few KiB, the trust root it reports is
/// stored only as the cluster's own, and registering again with the same description does not
/// rewrite the record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_descriptions_are_bounded_and_rewritten_only_on_change() {
    let env = Env::new().await;
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let id = creds.node_id.clone();
    let mut d = env.dispatcher(Some(&creds)).await;
    let before = env.control.node(&id).unwrap();
    let register = |desc: pb::NodeDescription| pb::SessionRequest {
        description: Some(desc),
        ..Default::default()
    };

    // The audit's 256 KiB trust root: refused, nothing written, no registration counted.
    let e = d
        .session(register(description(vec![b'A'; 256 * 1024])))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("TLS trust root"), "{}", e.message());
    assert_eq!(env.control.node(&id).unwrap().version, before.version);
    let mut big_issuer = description(env.root());
    big_issuer.tls_info.as_mut().unwrap().cert_issuer_subject = vec![0; 2048];
    assert_eq!(
        d.session(register(big_issuer)).await.unwrap_err().code(),
        Code::InvalidArgument
    );

    // A trust root that is not the cluster's is not kept.
    let foreign = swarmguard_ca::RootCa::create().unwrap().cert_pem().to_vec();
    let mut s = d
        .session(register(description(foreign.clone())))
        .await
        .unwrap()
        .into_inner();
    s.message().await.unwrap().unwrap();
    let n = env.control.node(&id).unwrap();
    assert_eq!(n.record.description.hostname, "w1");
    assert!(n.record.description.tls_info.trust_root.is_empty());
    let size = crate::control::records::encode(&n.record).unwrap().len();
    assert!(size < 8 * 1024, "node record is {size} bytes");
    const { assert!(crate::grpc::dispatcher::MAX_DESCRIPTION <= 12 * 1024) };

    // The same description again: the record is not rewritten.
    let mut s2 = d
        .session(register(description(foreign)))
        .await
        .unwrap()
        .into_inner();
    s2.message().await.unwrap().unwrap();
    assert_eq!(env.control.node(&id).unwrap().version, n.version);

    // The cluster's own root is kept (what `docker node ls` compares for TLS status).
    let mut s3 = d
        .session(register(description(env.root())))
        .await
        .unwrap()
        .into_inner();
    s3.message().await.unwrap().unwrap();
    let n = env.control.node(&id).unwrap();
    assert_eq!(
        n.record.description.tls_info.trust_root.as_bytes(),
        env.root()
    );
    drop((s, s2, s3));
}
