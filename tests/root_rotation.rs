//! The must-show for root rotation (issue 11): a stock dockerd worker and two agents joined,
//! `docker swarm ca --rotate` completes with the CLI's progress output while every node stays
//! Ready (`docker node ls` polled every 200 ms), the worker ends with a certificate from the new
//! root, the old join token is refused and the new one works; then a second rotation with the
//! manager killed (-9) mid-way finishes after a restart.
//!
//! Everything runs in one fresh network namespace (loopback only), as in `join_dockerd.rs`.

mod support;

use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use support::agent::{join_cmd, Agent};
use support::dockerd::Dockerd;
use support::manager::Manager;

/// `swarmguard agent join --no-run` inside `ns`.
fn join_once(ns: &str, m: &Manager, token: &str) -> Output {
    let dir = tempfile::tempdir().unwrap();
    join_cmd(Some(ns), dir.path(), &m.cluster_addr, token, true)
        .output()
        .expect("run swarmguard agent join")
}

fn swarm(m: &Manager) -> serde_json::Value {
    m.request("GET", "/v1.41/swarm", None).json()
}

fn trust_root(m: &Manager) -> String {
    swarm(m)["TLSInfo"]["TrustRoot"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Every node's `ID Status` from `docker node ls`, polled every 200 ms until `stop`; returns
/// the polls that showed a node other than Ready (or failed).
fn watch_ready(m: &Manager, expect: usize, stop: &AtomicBool) -> (usize, Vec<String>) {
    let (mut polls, mut bad) = (0, Vec::new());
    while !stop.load(Ordering::Relaxed) {
        let out = m.docker(&["node", "ls", "--format", "{{.ID}} {{.Status}}"]);
        polls += 1;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let ready = text.lines().filter(|l| l.ends_with(" Ready")).count();
        if !out.status.success() || ready != expect || text.lines().count() != expect {
            bad.push(format!("{text}{}", String::from_utf8_lossy(&out.stderr)));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    (polls, bad)
}

#[test]
fn rotation_keeps_a_stock_worker_and_agents_ready_and_survives_kill_9() {
    let mut d = Dockerd::start(true);
    let ns = d.netns.clone().expect("own netns");
    let mdir = tempfile::tempdir().unwrap();
    let mut m = Manager::start_in(mdir.path(), Some(&ns));
    m.init_swarm(&[]);
    let old_token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let old_token = old_token.trim().to_string();
    d.docker_ok(&["swarm", "join", "--token", &old_token, &m.cluster_addr]);
    let worker_id = d
        .docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"])
        .trim()
        .to_string();
    let _agents = [
        Agent::join(Some(&ns), &m.cluster_addr, &old_token),
        Agent::join(Some(&ns), &m.cluster_addr, &old_token),
    ];
    support::wait_until("4 nodes Ready", Duration::from_secs(20), || {
        let ls = m.docker_ok(&["node", "ls", "--format", "{{.Status}}"]);
        ls.lines().filter(|l| *l == "Ready").count() == 4
    });
    let old_root = trust_root(&m);

    // Rotate with the CLI's progress, polling `docker node ls` meanwhile.
    let stop = AtomicBool::new(false);
    let (out, (polls, bad)) = std::thread::scope(|s| {
        let watcher = s.spawn(|| watch_ready(&m, 4, &stop));
        let started = Instant::now();
        let out = m.docker(&["swarm", "ca", "--rotate"]);
        eprintln!("docker swarm ca --rotate took {:?}", started.elapsed());
        std::thread::sleep(Duration::from_secs(1));
        stop.store(true, Ordering::Relaxed);
        (out, watcher.join().unwrap())
    });
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "ca --rotate failed: {stdout}{stderr}");
    eprintln!("docker swarm ca --rotate printed:\n{stdout}{stderr}");
    // The CLI's progress (rendered without a terminal) reached both totals.
    assert!(
        stdout.contains("rotated TLS certificates") && stdout.contains("rotated CA certificates"),
        "no progress output: {stdout}"
    );
    assert!(polls >= 5, "only {polls} polls");
    assert!(
        bad.is_empty(),
        "nodes not all Ready in {} of {polls} polls: {bad:?}",
        bad.len()
    );
    let new_root = trust_root(&m);
    assert_ne!(new_root, old_root);
    assert!(
        stdout.contains(new_root.trim()),
        "the CLI prints the new root: {stdout}"
    );
    assert_eq!(swarm(&m)["RootRotationInProgress"], false);
    eprintln!("{polls} polls of docker node ls, all 4 nodes Ready in each");

    // The worker holds a certificate from the new root and trusts only it.
    let certs = d.root.join("data/swarm/certificates");
    support::wait_until(
        "worker trusts the new root",
        Duration::from_secs(10),
        || std::fs::read_to_string(certs.join("swarm-root-ca.crt")).unwrap_or_default() == new_root,
    );
    let chain = std::fs::read(certs.join("swarm-node.crt")).unwrap();
    assert!(
        support::signed_by(&chain, new_root.as_bytes()),
        "worker cert not from the new root"
    );
    let tls = m.docker_ok(&[
        "node",
        "inspect",
        "--format",
        "{{json .Description.TLSInfo}}",
        &worker_id,
    ]);
    let tls: serde_json::Value = serde_json::from_str(&tls).unwrap();
    let swarm_tls = swarm(&m)["TLSInfo"].clone();
    assert_eq!(tls["TrustRoot"], swarm_tls["TrustRoot"]);
    assert_eq!(tls["CertIssuerPublicKey"], swarm_tls["CertIssuerPublicKey"]);
    assert_eq!(tls["CertIssuerSubject"], swarm_tls["CertIssuerSubject"]);

    // The old token pins the old root: refused. The new one works.
    let refused = join_once(&ns, &m, &old_token);
    assert!(
        !refused.status.success(),
        "join with the old token succeeded"
    );
    let new_token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    assert_ne!(new_token.trim(), old_token);
    let ok = join_once(&ns, &m, new_token.trim());
    assert!(
        ok.status.success(),
        "join with the new token: {}",
        String::from_utf8_lossy(&ok.stderr)
    );

    // The node that joined with `--no-run` never reports TLS info; the CLI's progress counts
    // every node, so it goes before the next rotation.
    let ls = m.docker_ok(&["node", "ls", "--format", "{{.ID}} {{.Status}}"]);
    for l in ls.lines().filter(|l| !l.ends_with(" Ready")) {
        let id = l.split(' ').next().unwrap();
        m.docker_ok(&["node", "rm", "--force", id]);
    }

    // A second rotation, the manager killed -9 while it runs: after a restart it finishes.
    m.docker_ok(&["swarm", "ca", "--rotate", "--detach"]);
    assert_eq!(swarm(&m)["RootRotationInProgress"], true);
    std::thread::sleep(Duration::from_millis(3500));
    assert_eq!(
        swarm(&m)["RootRotationInProgress"],
        true,
        "finished before the kill"
    );
    m.kill9();
    m.restart();
    let took = support::wait_until(
        "rotation finished after restart",
        Duration::from_secs(60),
        || swarm(&m)["RootRotationInProgress"] == false,
    );
    eprintln!("rotation finished {took:?} after the restart");
    let third_root = trust_root(&m);
    assert_ne!(third_root, new_root);
    support::wait_until(
        "worker Ready on the third root",
        Duration::from_secs(30),
        || {
            let ready = m.docker_ok(&[
                "node",
                "inspect",
                "--format",
                "{{.Status.State}}",
                &worker_id,
            ]);
            std::fs::read_to_string(certs.join("swarm-root-ca.crt")).unwrap_or_default()
                == third_root
                && ready.trim() == "ready"
        },
    );
    let chain = std::fs::read(certs.join("swarm-node.crt")).unwrap();
    assert!(support::signed_by(&chain, third_root.as_bytes()));

    // The same to a root the operator brings (--ca-cert/--ca-key, made by openssl).
    let ca_dir = tempfile::tempdir().unwrap();
    let (cert, key) = make_ca(ca_dir.path(), "operator-ca", 3650, None);
    let out = m.docker_ok(&[
        "swarm",
        "ca",
        "--rotate",
        "--ca-cert",
        &cert,
        "--ca-key",
        &key,
    ]);
    let operator_root = std::fs::read_to_string(&cert).unwrap();
    assert_eq!(trust_root(&m), operator_root);
    assert!(out.contains(operator_root.trim()), "{out}");
    support::wait_until(
        "worker on the operator's root",
        Duration::from_secs(30),
        || {
            std::fs::read_to_string(certs.join("swarm-root-ca.crt")).unwrap_or_default()
                == operator_root
        },
    );
    let chain = std::fs::read(certs.join("swarm-node.crt")).unwrap();
    assert!(support::signed_by(&chain, operator_root.as_bytes()));
    let ready = m.docker_ok(&["node", "ls", "--format", "{{.Status}}"]);
    assert_eq!(
        ready.lines().filter(|l| *l == "Ready").count(),
        4,
        "{ready}"
    );
    drop(m);
    d.stop();
}

/// A P-256 root made by openssl (PKCS#8 key), valid `days`; with `key` given, that key is
/// reused. Returns the certificate and key paths.
fn make_ca(dir: &Path, cn: &str, days: u32, key: Option<&str>) -> (String, String) {
    let cert = dir.join(format!("{cn}.crt")).display().to_string();
    let key = match key {
        Some(k) => k.to_string(),
        None => {
            let k = dir.join(format!("{cn}.key")).display().to_string();
            let sh = format!(
                "openssl ecparam -name prime256v1 -genkey -noout | openssl pkcs8 -topk8 -nocrypt -out {k}"
            );
            assert!(Command::new("sh")
                .args(["-c", &sh])
                .status()
                .unwrap()
                .success());
            k
        }
    };
    let st = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-new",
            "-key",
            &key,
            "-subj",
            &format!("/CN={cn}"),
        ])
        .args(["-days", &days.to_string(), "-out", &cert])
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(st.success(), "openssl req");
    (cert, key)
}

/// `POST /swarm/update` with the spec `GET /swarm` returned, changed by `edit`.
fn update(
    m: &Manager,
    edit: impl FnOnce(&mut serde_json::Value),
) -> support::manager::HttpResponse {
    let sw = swarm(m);
    let mut spec = sw["Spec"].clone();
    edit(&mut spec);
    let path = format!("/v1.41/swarm/update?version={}", sw["Version"]["Index"]);
    m.request("POST", &path, Some(spec.to_string().as_bytes()))
}

#[test]
fn a_signing_ca_is_validated_with_swarmkits_texts_and_the_current_root_aborts() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(dir.path());
    m.init_swarm(&[]);
    let ca = tempfile::tempdir().unwrap();
    let (cert, key) = make_ca(ca.path(), "good", 3650, None);
    let (short, short_key) = make_ca(ca.path(), "short", 30, None);
    let (other, _) = make_ca(ca.path(), "other", 3650, None);
    let read = |p: &str| std::fs::read_to_string(p).unwrap();
    let refused = |edit: &dyn Fn(&mut serde_json::Value), want: &str| {
        let r = update(&m, |s| edit(s));
        assert_eq!(r.status, 400, "{}", r.message());
        assert!(
            r.message().contains(want),
            "{} (wanted {want})",
            r.message()
        );
    };
    refused(
        &|s| s["CAConfig"]["SigningCAKey"] = read(&key).into(),
        "if a signing CA key is provided, the signing CA cert must also be provided",
    );
    refused(
        &|s| {
            s["CAConfig"]["SigningCACert"] = format!("{}{}", read(&cert), read(&other)).into();
            s["CAConfig"]["SigningCAKey"] = read(&key).into();
        },
        "the desired CA certificate cannot contain multiple certificates",
    );
    refused(
        &|s| {
            s["CAConfig"]["SigningCACert"] = read(&short).into();
            s["CAConfig"]["SigningCAKey"] = read(&short_key).into();
        },
        "CA certificate expires too soon",
    );
    refused(
        &|s| {
            s["CAConfig"]["SigningCACert"] = read(&other).into();
            s["CAConfig"]["SigningCAKey"] = read(&key).into();
        },
        "invalid signing CA certificate or key",
    );
    assert_eq!(swarm(&m)["RootRotationInProgress"], false);

    // To the operator's root; then a certificate with the same key is refused.
    m.docker_ok(&[
        "swarm",
        "ca",
        "--rotate",
        "--ca-cert",
        &cert,
        "--ca-key",
        &key,
    ]);
    assert_eq!(trust_root(&m), read(&cert));
    assert!(
        swarm(&m)["Spec"]["CAConfig"]["SigningCAKey"].is_null()
            || swarm(&m)["Spec"]["CAConfig"]["SigningCAKey"] == ""
    );
    let (same_key, _) = make_ca(ca.path(), "same-key", 3650, Some(&key));
    refused(
        &|s| {
            s["CAConfig"]["SigningCACert"] = read(&same_key).into();
            s["CAConfig"]["SigningCAKey"] = read(&key).into();
        },
        "Cannot update to a cert with an identical key",
    );

    // A rotation in progress stops when the current root is given as signing CA.
    m.docker_ok(&["swarm", "ca", "--rotate", "--detach"]);
    assert_eq!(swarm(&m)["RootRotationInProgress"], true);
    let r = update(&m, |s| s["CAConfig"]["SigningCACert"] = read(&cert).into());
    assert_eq!(r.status, 200, "{}", r.message());
    assert_eq!(swarm(&m)["RootRotationInProgress"], false);
    assert_eq!(trust_root(&m), read(&cert));
}

/// Moving an internal-root swarm to a real cfssl CA (`--ca-cert` + `--external-ca`): the stock
/// worker and an agent end with certificates cfssl signed, the root is the cfssl CA's, and the
/// manager never holds that CA's key.
#[test]
fn an_internal_root_moves_to_a_cfssl_ca() {
    use support::cfssl::CfsslServer;
    let mut d = Dockerd::start(true);
    let ns = d.netns.clone().expect("own netns");
    let work = support::short_tempdir("sgr");
    let (ca, cf) = CfsslServer::start_https_in(work.path(), &ns);
    let mdir = tempfile::tempdir().unwrap();
    let m = Manager::start_in(mdir.path(), Some(&ns));
    m.init_swarm(&[]);
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    d.docker_ok(&["swarm", "join", "--token", token.trim(), &m.cluster_addr]);
    let _agent = Agent::join(Some(&ns), &m.cluster_addr, token.trim());
    support::wait_until("3 nodes Ready", Duration::from_secs(20), || {
        let ls = m.docker_ok(&["node", "ls", "--format", "{{.Status}}"]);
        ls.lines().filter(|l| *l == "Ready").count() == 3
    });
    assert_eq!(cf.signed(), 0);

    let flag = format!("protocol=cfssl,url={}", cf.url("sign"));
    let cert = ca.cert.display().to_string();
    let out = m.docker(&[
        "swarm",
        "ca",
        "--rotate",
        "--ca-cert",
        &cert,
        "--external-ca",
        &flag,
    ]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let ca_pem = String::from_utf8(ca.cert_pem()).unwrap();
    assert_eq!(trust_root(&m).trim(), ca_pem.trim());
    // The manager, the worker and the agent: one cfssl signature each.
    assert!(cf.signed() >= 3, "{}", cf.log());
    let certs = d.root.join("data/swarm/certificates");
    support::wait_until(
        "worker trusts the cfssl root",
        Duration::from_secs(10),
        || {
            std::fs::read_to_string(certs.join("swarm-root-ca.crt"))
                .unwrap_or_default()
                .trim()
                == ca_pem.trim()
        },
    );
    let chain = std::fs::read(certs.join("swarm-node.crt")).unwrap();
    assert!(
        support::signed_by(&chain, ca_pem.as_bytes()),
        "worker cert not cfssl's"
    );
    let own = std::fs::read(mdir.path().join("certificates/swarm-node.crt")).unwrap();
    assert!(
        support::signed_by(&own, ca_pem.as_bytes()),
        "manager cert not cfssl's"
    );
    let ready = m.docker_ok(&["node", "ls", "--format", "{{.Status}}"]);
    assert_eq!(
        ready.lines().filter(|l| *l == "Ready").count(),
        3,
        "{ready}"
    );
    // A node joining now is signed by cfssl too.
    let new_token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let before = cf.signed();
    let ok = join_once(&ns, &m, new_token.trim());
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(cf.signed(), before + 1);
    drop(m);
    d.stop();
}

/// `--rotate` while a rotation runs restarts it towards a fresh root, as SwarmKit does; the
/// rotation that finishes is the second one.
#[test]
fn rotate_during_a_rotation_restarts_it() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(dir.path());
    m.init_swarm(&[]);
    let issuer = |m: &Manager| swarm(m)["TLSInfo"]["CertIssuerPublicKey"].clone();
    let original = issuer(&m);
    m.docker_ok(&["swarm", "ca", "--rotate", "--detach"]);
    let first = issuer(&m);
    m.docker_ok(&["swarm", "ca", "--rotate", "--detach"]);
    assert_eq!(swarm(&m)["RootRotationInProgress"], true);
    let second = issuer(&m);
    assert_ne!(first, original);
    assert_ne!(
        second, first,
        "the second --rotate did not restart the rotation"
    );
    support::wait_until("rotation finished", Duration::from_secs(30), || {
        swarm(&m)["RootRotationInProgress"] == false
    });
    assert_eq!(issuer(&m), second);
    assert_eq!(swarm(&m)["Spec"]["CAConfig"]["ForceRotate"], 2);
}

/// A swarm whose root key a real cfssl holds cannot rotate away from it yet: `--rotate` and
/// `--ca-cert/--ca-key` are refused with a message that says why and what to do instead, and
/// nothing changes (no rotation starts, the root and the tokens stay, cfssl still signs).
#[test]
fn rotating_away_from_an_external_root_is_refused_with_the_fix() {
    let work = support::short_tempdir("sgr");
    let dir = tempfile::tempdir().unwrap();
    let (cf, m) = support::cfssl::CfsslServer::external_ca_swarm(
        work.path(),
        "cfssl-rotate-away-root",
        dir.path(),
    );
    let root = trust_root(&m);
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let own = work.path().join("own");
    std::fs::create_dir_all(&own).unwrap();
    let (cert, key) = make_ca(&own, "operator-root", 3650, None);
    for args in [
        vec!["swarm", "ca", "--rotate"],
        vec![
            "swarm",
            "ca",
            "--rotate",
            "--ca-cert",
            &cert,
            "--ca-key",
            &key,
        ],
    ] {
        let out = m.docker(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} was accepted");
        assert!(
            err.contains("held by an external CA")
                && err.contains("cross-sign the new root")
                && err.contains("Nothing was changed")
                && err.contains("create a new swarm"),
            "{args:?}: {err}"
        );
        eprintln!("{args:?} refused: {}", err.trim());
        let s = swarm(&m);
        assert_eq!(s["RootRotationInProgress"], false, "{args:?}");
        assert_eq!(trust_root(&m), root, "{args:?}");
    }
    assert_eq!(
        m.docker_ok(&["swarm", "join-token", "-q", "worker"]),
        token,
        "the tokens changed"
    );
    // cfssl still signs for the swarm: an agent joins with the same token, through it.
    let before = cf.signed();
    let agent = tempfile::tempdir().unwrap();
    let out = join_cmd(None, agent.path(), &m.cluster_addr, token.trim(), true)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(cf.signed(), before + 1, "{}", cf.log());
}
