//! The must-show: a stock dockerd joins a swarmguard manager over SwarmKit's own gRPC, shows up
//! Ready, holds a worker certificate from our root, goes Down when stopped, and once removed
//! its certificate is refused.
//!
//! Both run in one fresh network namespace (loopback only): the dockerd because swarm mode
//! claims host-wide resources, the manager so the dockerd can reach its cluster port.

mod support;

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use support::dockerd::Dockerd;
use support::manager::Manager;
use x509_parser::prelude::FromDer;

fn first_pem(path: &Path) -> Vec<u8> {
    let data = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let (_, pem) = x509_parser::pem::parse_x509_pem(&data).expect("PEM");
    pem.contents
}

/// Status column of `docker node ls` for one node.
fn node_status(m: &Manager, id: &str) -> String {
    let out = m.docker(&["node", "inspect", "--format", "{{.Status.State}}", id]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

#[test]
fn stock_dockerd_joins_as_worker_goes_down_and_is_refused_after_removal() {
    let mut d = Dockerd::start(true);
    let ns = d.netns.clone().expect("own netns");
    let mdir = tempfile::tempdir().unwrap();
    let m = Manager::start_in(mdir.path(), Some(&ns));
    m.init_swarm(&["--dispatcher-heartbeat", "1s"]);
    let cluster_id = m
        .docker_ok(&["info", "--format", "{{.Swarm.Cluster.ID}}"])
        .trim()
        .to_string();
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let token = token.trim();

    support::join_swarm(|a| d.docker_ok(a), token, &m.cluster_addr, "worker");
    let worker_id = d
        .docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"])
        .trim()
        .to_string();
    assert_eq!(
        d.docker_ok(&["info", "--format", "{{.Swarm.LocalNodeState}}"])
            .trim(),
        "active"
    );
    let took = support::wait_until(
        "worker Ready in docker node ls",
        Duration::from_secs(2),
        || {
            let ls = m.docker_ok(&["node", "ls", "--format", "{{.ID}} {{.Status}}"]);
            ls.lines().any(|l| l == format!("{worker_id} Ready"))
        },
    );
    eprintln!("worker Ready {took:?} after the join returned");
    let engine = m.docker_ok(&[
        "node",
        "inspect",
        "--format",
        "{{.Description.Engine.EngineVersion}} {{.Description.Hostname}}",
        &worker_id,
    ]);
    let dockerd_version = d.docker_ok(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        engine.starts_with(dockerd_version.trim()),
        "node inspect shows {engine:?}, dockerd is {dockerd_version:?}"
    );

    // The worker's certificate: OU=swarm-worker, O=our cluster, chains to our root.
    let certs = d.root.join("data/swarm/certificates");
    let leaf_der = first_pem(&certs.join("swarm-node.crt"));
    let root_der = first_pem(&mdir.path().join("certificates/swarm-root-ca.crt"));
    let (_, leaf) = x509_parser::certificate::X509Certificate::from_der(&leaf_der).unwrap();
    let (_, root) = x509_parser::certificate::X509Certificate::from_der(&root_der).unwrap();
    let subj = leaf.subject();
    let ou: Vec<_> = subj
        .iter_organizational_unit()
        .map(|a| a.as_str().unwrap())
        .collect();
    let o: Vec<_> = subj
        .iter_organization()
        .map(|a| a.as_str().unwrap())
        .collect();
    let cn: Vec<_> = subj
        .iter_common_name()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(ou, ["swarm-worker"]);
    assert_eq!(o, [cluster_id.as_str()]);
    assert_eq!(cn, [worker_id.as_str()]);
    assert_eq!(leaf.issuer(), root.subject());
    leaf.verify_signature(Some(root.public_key()))
        .expect("the worker certificate is signed by our root");

    // Promoting a stock dockerd is refused with the reason and the alternative; nothing changes.
    let out = m.docker(&["node", "promote", &worker_id]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "promote of a dockerd node succeeded");
    assert!(
        err.contains("cannot become a swarmguard manager") && err.contains("swarmguard manager"),
        "{err}"
    );
    assert_eq!(
        m.docker_ok(&["node", "inspect", "--format", "{{.Spec.Role}}", &worker_id])
            .trim(),
        "worker"
    );

    // Stop it: Down within 3 heartbeat periods (1 s each; a node may be told up to 1.5 s).
    d.stop_daemon();
    let took = support::wait_until("worker Down", Duration::from_millis(3 * 1500 + 500), || {
        node_status(&m, &worker_id) == "down"
    });
    eprintln!("worker Down {took:?} after dockerd stopped");

    // Remove it; its certificate is refused at its next call. dockerd is gone, so the same
    // certificate and key are presented by `swarmguard agent run` from inside the namespace.
    m.docker_ok(&["node", "rm", &worker_id]);
    let ls = m.docker_ok(&["node", "ls", "--format", "{{.ID}}"]);
    assert!(!ls.contains(&worker_id), "{ls}");
    let adir = tempfile::tempdir().unwrap();
    let acerts = adir.path().join("certificates");
    std::fs::create_dir_all(&acerts).unwrap();
    for f in ["swarm-root-ca.crt", "swarm-node.crt", "swarm-node.key"] {
        let text = std::fs::read_to_string(certs.join(f)).unwrap();
        // SwarmKit writes a `kek-version: 0` PEM header into the key; drop headers.
        let clean: String = text
            .lines()
            .filter(|l| !l.contains(": "))
            .map(|l| format!("{l}\n"))
            .collect();
        std::fs::write(acerts.join(f), clean).unwrap();
    }
    std::fs::write(
        adir.path().join("agent.json"),
        format!("{{\"manager\":\"{}\"}}", m.cluster_addr),
    )
    .unwrap();
    let out = support::command_in(Some(&ns), env!("CARGO_BIN_EXE_swarmguard"))
        .args(["agent", "run", "--data-dir"])
        .arg(adir.path())
        .stdin(Stdio::null())
        .output()
        .expect("run swarmguard agent");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a removed node's certificate was accepted: {stderr}"
    );
    assert!(
        stderr.contains(&format!("node {worker_id} was removed from swarm")),
        "{stderr}"
    );
    drop(m);
    d.stop();
}
