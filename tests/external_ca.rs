//! The must-show for issue 11 with a real `cfssl serve` (Debian golang-cfssl) and a CA each test
//! makes: `swarm init --external-ca` makes the cfssl CA the cluster root with no root key on the
//! manager; every certificate (the manager's, a stock dockerd worker's, an agent's) is signed by
//! cfssl, one request each; authsign with the right and a wrong key; cfssl stopped during a join;
//! certificates from another CA or an out-of-policy profile are refused.

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::cfssl::{CfsslCa, CfsslServer, ServeOptions, GOOD_PROFILE};
use support::dockerd::Dockerd;
use support::manager::Manager;
use x509_parser::prelude::FromDer;

/// The certificate in `cert_pem` is issued by the CA in `ca_pem` and names `ou`.
fn assert_issued_by(cert_pem: &[u8], ca_pem: &[u8], ou: &str) {
    let (leaf_der, ca_der) = (support::first_der(cert_pem), support::first_der(ca_pem));
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&leaf_der).unwrap();
    let (_, ca) = x509_parser::certificate::X509Certificate::from_der(&ca_der).unwrap();
    assert_eq!(leaf.issuer(), ca.subject());
    leaf.verify_signature(Some(ca.public_key()))
        .expect("signed by the cfssl CA");
    let ous: Vec<_> = leaf
        .subject()
        .iter_organizational_unit()
        .map(|a| a.as_str().unwrap().to_string())
        .collect();
    assert_eq!(ous, [ou]);
}

/// `swarmguard agent join --no-run` (inside `netns` if given).
fn agent_join(m: &Manager, token: &str, dir: &Path, netns: Option<&str>) -> Command {
    support::agent::join_cmd(netns, dir, &m.cluster_addr, token, true)
}

fn external_ca_flag(url: &str, extra: &str) -> String {
    format!("protocol=cfssl,url={url}{extra}")
}

/// Every encoding of the CA's private key a careless writer might use: none may be in `dir`.
fn assert_key_absent(dir: &Path, key_pem: &[u8]) {
    let body: String = String::from_utf8_lossy(key_pem)
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.as_bytes())
        .unwrap();
    // SEC1 ECPrivateKey: 30 77 02 01 01 04 20 <32-byte scalar>.
    assert_eq!(&der[..7], &[0x30, 0x77, 0x02, 0x01, 0x01, 0x04, 0x20]);
    let scalar = &der[7..39];
    let hex: String = scalar.iter().map(|b| format!("{b:02x}")).collect();
    let needles: Vec<Vec<u8>> = vec![
        scalar.to_vec(),
        hex.into_bytes(),
        body.as_bytes()[..40].to_vec(),
        base64::engine::general_purpose::STANDARD
            .encode(scalar)
            .into_bytes(),
    ];
    let mut stack = vec![dir.to_path_buf()];
    let mut files = 0;
    while let Some(p) = stack.pop() {
        if p.is_dir() {
            for e in std::fs::read_dir(&p).unwrap() {
                stack.push(e.unwrap().path());
            }
            continue;
        }
        let Ok(data) = std::fs::read(&p) else {
            continue;
        };
        files += 1;
        for n in &needles {
            assert!(
                !data.windows(n.len()).any(|w| w == n.as_slice()),
                "the CA's private key is in {}",
                p.display()
            );
        }
    }
    assert!(files > 3, "scanned only {files} files");
}

#[test]
fn cfssl_root_signs_the_manager_a_stock_dockerd_worker_and_an_agent() {
    let mut d = Dockerd::start(true);
    let ns = d.netns.clone().expect("own netns");
    let work = support::short_tempdir("sgx");
    let (ca, cf) = CfsslServer::start_https_in(work.path(), &ns);
    let mdir = tempfile::tempdir().unwrap();
    let m = Manager::start_in(mdir.path(), Some(&ns));
    let flag = external_ca_flag(&cf.url("sign"), &format!(",cacert={}", ca.cert.display()));
    m.init_swarm(&["--external-ca", &flag]);

    // The cfssl CA is the root: served, shown and pinned; the manager's own certificate is cfssl's.
    let ca_pem = ca.cert_pem();
    let shown = m.docker_ok(&["swarm", "ca"]);
    assert_eq!(shown.trim(), String::from_utf8_lossy(&ca_pem).trim());
    let info = m.docker_ok(&["info"]);
    assert!(info.contains(&cf.url("sign")), "docker info: {info}");
    let own = std::fs::read(mdir.path().join("certificates/swarm-node.crt")).unwrap();
    assert_issued_by(&own, &ca_pem, "swarm-manager");
    assert_eq!(cf.signed(), 1, "{}", cf.log());

    // A stock dockerd joins; its certificate is cfssl's and verifies against the pinned root.
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let token = token.trim();
    let out = d.docker_ok(&["swarm", "join", "--token", token, &m.cluster_addr]);
    assert!(out.contains("joined a swarm as a worker"), "{out}");
    let worker_id = d
        .docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"])
        .trim()
        .to_string();
    support::wait_until("worker Ready", Duration::from_secs(10), || {
        m.docker_ok(&["node", "ls", "--format", "{{.ID}} {{.Status}}"])
            .lines()
            .any(|l| l == format!("{worker_id} Ready"))
    });
    let certs = d.root.join("data/swarm/certificates");
    let worker_cert = std::fs::read(certs.join("swarm-node.crt")).unwrap();
    assert_issued_by(&worker_cert, &ca_pem, "swarm-worker");
    let worker_root = std::fs::read(certs.join("swarm-root-ca.crt")).unwrap();
    assert_eq!(
        support::first_der(&worker_root),
        support::first_der(&ca_pem)
    );
    // docker node inspect shows the cfssl CA as the issuer of every node's certificate.
    let ca_der = support::first_der(&ca_pem);
    let (_, ca_cert) = x509_parser::certificate::X509Certificate::from_der(&ca_der).unwrap();
    let subject_b64 = base64::engine::general_purpose::STANDARD.encode(ca_cert.subject().as_raw());
    let mut seen = String::new();
    let issuer_shown = (0..100).any(|_| {
        seen = m.docker_ok(&[
            "node",
            "inspect",
            "--format",
            "{{json .Description.TLSInfo}}",
            &worker_id,
        ]);
        std::thread::sleep(Duration::from_millis(100));
        seen.contains(&subject_b64)
    });
    assert!(
        issuer_shown,
        "want {subject_b64}, node inspect shows {seen}"
    );
    let own_issuer = m.docker_ok(&[
        "node",
        "inspect",
        "--format",
        "{{json .Description.TLSInfo}}",
        "self",
    ]);
    assert!(own_issuer.contains(&subject_b64), "{own_issuer}");

    // An agent joins from the same namespace.
    let adir = tempfile::tempdir().unwrap();
    let out = agent_join(&m, token, adir.path(), Some(&ns))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "agent join: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let agent_cert = std::fs::read(adir.path().join("certificates/swarm-node.crt")).unwrap();
    assert_issued_by(&agent_cert, &ca_pem, "swarm-worker");

    // One sign request per certificate: the manager's, the worker's, the agent's.
    assert_eq!(cf.sign_requests(), 3, "{}", cf.log());
    assert_eq!(cf.signed(), 3);

    // No private key of that CA anywhere in the manager's data dir (store included).
    drop(m);
    assert_key_absent(mdir.path(), &std::fs::read(&ca.key).unwrap());
    d.stop();
    drop(cf);
}

/// The node `docker node ls` lists besides `known`, once there is one.
fn new_node(m: &Manager, known: &[String]) -> Option<String> {
    m.docker_ok(&["node", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .find(|id| !known.contains(id))
}

fn node_ids(m: &Manager) -> Vec<String> {
    m.docker_ok(&["node", "ls", "-q"])
        .lines()
        .map(str::to_string)
        .collect()
}

#[test]
fn authsign_with_the_right_and_a_wrong_key_and_cfssl_down_during_a_join() {
    let work = support::short_tempdir("sgx");
    let ca = CfsslCa::create(work.path(), "ca", "cfssl-authsign-root");
    let key_hex = "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f";
    let right = work.path().join("right.key");
    let wrong = work.path().join("wrong.key");
    std::fs::write(&right, format!("{key_hex}\n")).unwrap();
    std::fs::write(&wrong, "ff".repeat(32)).unwrap();
    let mut cf = CfsslServer::start(
        work.path(),
        ServeOptions {
            ca: &ca,
            profile: GOOD_PROFILE.into(),
            auth_key: Some(key_hex.into()),
            tls: None,
            netns: None,
        },
    );
    let mdir = tempfile::tempdir().unwrap();
    let m = Manager::start(mdir.path());
    // No cacert=: the root is learned from cfssl's info endpoint (plain http to loopback).
    let with_key = |k: &Path| {
        external_ca_flag(
            &cf.url("authsign"),
            &format!(",auth_key_file={}", k.display()),
        )
    };
    m.init_swarm(&["--external-ca", &with_key(&right)]);
    assert_eq!(
        m.docker_ok(&["swarm", "ca"]).trim(),
        String::from_utf8_lossy(&ca.cert_pem()).trim()
    );
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let token = token.trim().to_string();
    let a1 = tempfile::tempdir().unwrap();
    let out = agent_join(&m, &token, a1.path(), None).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cf.signed(), 2, "{}", cf.log());

    // A wrong key: cfssl refuses, the certificate fails with cfssl's text.
    m.docker_ok(&["swarm", "update", "--external-ca", &with_key(&wrong)]);
    let known = node_ids(&m);
    let a2 = tempfile::tempdir().unwrap();
    let out = agent_join(&m, &token, a2.path(), None).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "joined with a wrong authsign key");
    assert!(err.contains("invalid token"), "{err}");
    let failed = new_node(&m, &known).expect("the failed node is listed");
    let msg = m.docker_ok(&[
        "node",
        "inspect",
        "--format",
        "{{.Status.Message}}",
        &failed,
    ]);
    assert!(
        msg.contains("certificate failed") && msg.contains("invalid token"),
        "{msg}"
    );
    assert!(!m.docker_ok(&["info"]).contains(key_hex));

    // cfssl down while an agent joins: it waits, the reason shows, it completes once cfssl is back.
    m.docker_ok(&["swarm", "update", "--external-ca", &with_key(&right)]);
    cf.stop();
    let known = node_ids(&m);
    let a3 = tempfile::tempdir().unwrap();
    let mut joining = agent_join(&m, &token, a3.path(), None)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut reason = String::new();
    support::wait_until(
        "the waiting reason in docker node inspect",
        Duration::from_secs(15),
        || {
            let Some(id) = new_node(&m, &known) else {
                return false;
            };
            reason = m.docker_ok(&["node", "inspect", "--format", "{{.Status.Message}}", &id]);
            reason.contains("certificate pending")
                && reason.contains("cannot reach the external CA")
        },
    );
    eprintln!("while cfssl is down: {}", reason.trim());
    assert!(
        joining.try_wait().unwrap().is_none(),
        "the join gave up while cfssl was down"
    );
    cf.restart();
    let start = Instant::now();
    let status = loop {
        if let Some(s) = joining.try_wait().unwrap() {
            break s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "join did not complete"
        );
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(status.success(), "join after cfssl came back failed");
    eprintln!("join completed {:?} after cfssl came back", start.elapsed());
    let cert = std::fs::read(a3.path().join("certificates/swarm-node.crt")).unwrap();
    assert_issued_by(&cert, &ca.cert_pem(), "swarm-worker");
}

#[test]
fn certificates_from_another_ca_or_an_out_of_policy_profile_are_refused() {
    let work = support::short_tempdir("sgx");
    let ca = CfsslCa::create(work.path(), "ca", "cfssl-good-root");
    let other = CfsslCa::create(work.path(), "other", "cfssl-other-root");
    let serve = |ca: &CfsslCa, profile: &str| {
        CfsslServer::start(
            work.path(),
            ServeOptions {
                ca,
                profile: profile.into(),
                auth_key: None,
                tls: None,
                netns: None,
            },
        )
    };
    let good = serve(&ca, GOOD_PROFILE);
    let foreign = serve(&other, GOOD_PROFILE);
    let server_only = serve(
        &ca,
        r#"{"usages":["signing","digital signature","key encipherment","server auth"],"expiry":"2160h"}"#,
    );
    let too_long = serve(
        &ca,
        r#"{"usages":["signing","digital signature","key encipherment","server auth","client auth"],"expiry":"8760h"}"#,
    );

    // init: a cfssl that signs with another CA than cacert= names is refused at once.
    let m2dir = tempfile::tempdir().unwrap();
    let m2 = Manager::start(m2dir.path());
    let flag = external_ca_flag(
        &foreign.url("sign"),
        &format!(",cacert={}", ca.cert.display()),
    );
    let out = m2.docker(&[
        "swarm",
        "init",
        "--listen-addr",
        &m2.cluster_addr,
        "--advertise-addr",
        "127.0.0.1",
        "--external-ca",
        &flag,
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "init accepted a foreign CA's certificate"
    );
    assert!(err.contains("not by the cluster's root CA"), "{err}");
    drop(m2);

    let mdir = tempfile::tempdir().unwrap();
    let mut m = Manager::start(mdir.path());
    let flag = external_ca_flag(&good.url("sign"), &format!(",cacert={}", ca.cert.display()));
    m.init_swarm(&["--external-ca", &flag]);
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let token = token.trim().to_string();
    // An update that would leave the cfssl root without an external CA for it is refused.
    for flag in [
        external_ca_flag(
            &good.url("sign"),
            &format!(",cacert={}", other.cert.display()),
        ),
        external_ca_flag("http://192.0.2.1/api/v1/cfssl/sign", ""),
    ] {
        let out = m.docker(&["swarm", "update", "--external-ca", &flag]);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "update accepted {flag}");
        assert!(
            err.contains("at least one valid, reachable external CA"),
            "{err}"
        );
    }
    assert!(m.docker_ok(&["info"]).contains(&good.url("sign")));
    for (server, why) in [
        (&foreign, "not by the cluster's root CA"),
        (&server_only, "serverAuth and clientAuth"),
        (&too_long, "beyond the cluster's certificate expiry"),
    ] {
        m.docker_ok(&[
            "swarm",
            "update",
            "--external-ca",
            &external_ca_flag(&server.url("sign"), ""),
        ]);
        let known = node_ids(&m);
        let before = server.signed();
        let dir = tempfile::tempdir().unwrap();
        let out = agent_join(&m, &token, dir.path(), None).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "joined with a certificate that is {why}"
        );
        assert!(err.contains(why), "{why}: {err}");
        assert!(!dir.path().join("certificates/swarm-node.crt").exists());
        let id = new_node(&m, &known).expect("the refused node is listed");
        let msg = m.docker_ok(&["node", "inspect", "--format", "{{.Status.Message}}", &id]);
        assert!(
            msg.contains("certificate failed") && msg.contains(why),
            "{msg}"
        );
        assert_eq!(
            server.signed(),
            before + 1,
            "cfssl signed once, and the manager refused it"
        );
    }

    // Several CAs are tried in order: a dead one first, then the good one signs.
    let dead = format!(
        "http://127.0.0.1:{}/api/v1/cfssl/sign",
        support::free_port()
    );
    m.docker_ok(&[
        "swarm",
        "update",
        "--external-ca",
        &external_ca_flag(&dead, ""),
        "--external-ca",
        &external_ca_flag(&good.url("sign"), ""),
    ]);
    let before = good.signed();
    let dir = tempfile::tempdir().unwrap();
    let out = agent_join(&m, &token, dir.path(), None).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(good.signed(), before + 1);

    // After kill -9 and a restart, the keyless root loads from the store and cfssl signs again.
    m.kill9();
    m.restart();
    assert_eq!(
        m.docker_ok(&["swarm", "ca"]).trim(),
        String::from_utf8_lossy(&ca.cert_pem()).trim()
    );
    let dir = tempfile::tempdir().unwrap();
    let out = agent_join(&m, &token, dir.path(), None).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = std::fs::read(dir.path().join("certificates/swarm-node.crt")).unwrap();
    assert_issued_by(&cert, &ca.cert_pem(), "swarm-worker");
}
