//! A data dir written by an earlier release still opens and serves the same swarm.
//!
//! Each `fixtures/datadir/<release>/` holds a manager data dir written by that release's binary
//! (`fixtures/datadir/make.sh`) and the facts the docker CLI showed just before it stopped
//! (`expected.json`). The current manager starts on a copy, and the real docker CLI must see the
//! same cluster ID, join tokens, root CA and nodes; a new write (a worker token rotation) works,
//! the rotated token admits a new node over the cluster port (so the sealed root key still
//! signs), and all of it survives a restart.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use support::manager::Manager;

const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/fixtures/datadir");

/// SwarmKit's refusal of a dead join token, which the agent prints.
const BAD_TOKEN: &str = "A valid join token is necessary to join this cluster";

#[test]
fn data_dirs_of_earlier_releases_open_and_serve_the_same_swarm() {
    let mut fixtures: Vec<PathBuf> = fs::read_dir(FIXTURES)
        .expect("fixtures/datadir")
        .map(|e| e.expect("dir entry").path())
        .filter(|p| p.join("expected.json").is_file())
        .collect();
    fixtures.sort();
    assert!(!fixtures.is_empty(), "no data dir fixture in {FIXTURES}");
    for fixture in fixtures {
        check_fixture(&fixture);
    }
}

fn check_fixture(fixture: &Path) {
    let name = fixture.file_name().unwrap().to_string_lossy().into_owned();
    let expected: Value =
        serde_json::from_slice(&fs::read(fixture.join("expected.json")).unwrap()).unwrap();
    let tmp = support::short_tempdir("sgcompat");
    let data = tmp.path().join("data");
    copy_tree(&fixture.join("data"), &data);
    restore_modes(&data, &expected["modes"]);

    // The cluster port is part of the data (node.json): it must be free here.
    let cluster_addr = str_at(&expected, "cluster_addr");
    if let Err(e) = std::net::TcpListener::bind(&cluster_addr) {
        panic!("{name}: the fixture's cluster port {cluster_addr} is taken on this machine ({e}); free it and rerun");
    }

    let mut m = Manager::start(&data);
    m.cluster_addr = cluster_addr.clone();
    let port: u16 = cluster_addr.rsplit(':').next().unwrap().parse().unwrap();
    support::wait_until(
        "the fixture's cluster port",
        Duration::from_secs(20),
        || support::port_open(port),
    );
    let old = Tokens::of(&expected);
    assert_serves(&m, &name, &expected, &old, &[]);
    assert_swarm_unchanged(&m, &name, &expected);

    // A new write on the old data: the rotated token admits a node, the old one no longer does.
    let out = m.docker_ok(&["swarm", "join-token", "--rotate", "worker"]);
    assert!(
        out.contains("Successfully rotated worker join token."),
        "{name}: {out}"
    );
    let new = Tokens {
        worker: m
            .docker_ok(&["swarm", "join-token", "-q", "worker"])
            .trim()
            .to_string(),
        manager: old.manager.clone(),
    };
    assert_ne!(
        new.worker, old.worker,
        "{name}: the worker token did not change"
    );
    let refused = agent_join(&m, &old.worker);
    assert!(
        !refused.status.success() && support::text(&refused).contains(BAD_TOKEN),
        "{name}: the old worker token still joins: {}",
        support::text(&refused)
    );
    let joined = agent_join(&m, &new.worker);
    let joined_text = support::text(&joined);
    assert!(joined.status.success(), "{name}: {joined_text}");
    let new_node = joined_text
        .split("Node ID: ")
        .nth(1)
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| panic!("{name}: no node ID in {joined_text:?}"));
    assert_serves(&m, &name, &expected, &new, std::slice::from_ref(&new_node));

    m.terminate();
    m.restart();
    assert_serves(&m, &name, &expected, &new, &[new_node]);

    // A second manager joins the old single-manager group (which recorded a placeholder raft
    // address) and writes through it reach the old manager.
    let tmp2 = support::short_tempdir("sgcompat2");
    let m2 = Manager::start(tmp2.path());
    let out = m2.docker_ok(&["swarm", "join", "--token", &old.manager, &cluster_addr]);
    assert!(out.contains("joined a swarm as a manager"), "{name}: {out}");
    m2.docker_ok(&["swarm", "join-token", "--rotate", "worker"]);
    let seen = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    assert_eq!(seen, m2.docker_ok(&["swarm", "join-token", "-q", "worker"]));
    let ls = m.docker_ok(&["node", "ls", "--format", "{{.ManagerStatus}}"]);
    let mut statuses: Vec<&str> = ls.lines().filter(|l| !l.is_empty()).collect();
    statuses.sort();
    assert_eq!(statuses, ["Leader", "Reachable"], "{name}: {ls}");
}

struct Tokens {
    worker: String,
    manager: String,
}

impl Tokens {
    fn of(expected: &Value) -> Tokens {
        Tokens {
            worker: str_at(&expected["join_tokens"], "worker"),
            manager: str_at(&expected["join_tokens"], "manager"),
        }
    }
}

/// Same cluster, root CA, tokens and nodes as the fixture recorded, plus `added` nodes.
fn assert_serves(m: &Manager, name: &str, expected: &Value, tokens: &Tokens, added: &[String]) {
    let swarm = swarm_inspect(m);
    assert_eq!(swarm["ID"], expected["cluster_id"], "{name}: cluster ID");
    assert_eq!(
        swarm["JoinTokens"]["Worker"],
        tokens.worker.as_str(),
        "{name}: worker token"
    );
    assert_eq!(
        swarm["JoinTokens"]["Manager"],
        tokens.manager.as_str(),
        "{name}: manager token"
    );
    assert_eq!(
        swarm["TLSInfo"]["TrustRoot"], expected["root_ca_pem"],
        "{name}: root CA in /swarm"
    );
    assert_eq!(
        swarm["Spec"]["CAConfig"]["NodeCertExpiry"], expected["node_cert_expiry_ns"],
        "{name}: certificate expiry"
    );
    assert_eq!(
        m.docker_ok(&["swarm", "join-token", "-q", "worker"]).trim(),
        tokens.worker,
        "{name}"
    );
    assert_eq!(
        m.docker_ok(&["swarm", "join-token", "-q", "manager"])
            .trim(),
        tokens.manager,
        "{name}"
    );
    let join = m.docker_ok(&["swarm", "join-token", "worker"]);
    assert!(
        join.contains(&format!(
            "{} {}",
            tokens.worker,
            str_at(expected, "cluster_addr")
        )),
        "{name}: {join}"
    );
    assert_eq!(
        m.docker_ok(&["swarm", "ca"]).trim(),
        str_at(expected, "root_ca_pem").trim(),
        "{name}: docker swarm ca"
    );
    // Where SwarmKit keeps it, byte for byte (the join tokens' digest covers the exact bytes).
    let on_disk = fs::read_to_string(m.data_dir.join("certificates/swarm-root-ca.crt")).unwrap();
    assert_eq!(
        on_disk,
        str_at(expected, "root_ca_pem"),
        "{name}: root CA file"
    );

    let info: Value =
        serde_json::from_str(&m.docker_ok(&["info", "--format", "{{json .Swarm}}"])).unwrap();
    assert_eq!(info["LocalNodeState"], "active", "{name}: {info}");
    assert_eq!(info["NodeID"], expected["manager_id"], "{name}: {info}");
    assert_eq!(
        info["Cluster"]["ID"], expected["cluster_id"],
        "{name}: {info}"
    );
    assert_eq!(info["ControlAvailable"], true, "{name}: {info}");

    let listed: BTreeSet<String> = m
        .docker_ok(&["node", "ls", "--format", "{{.ID}}"])
        .lines()
        .map(str::to_string)
        .collect();
    let mut want: BTreeSet<String> = expected["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| str_at(n, "id"))
        .collect();
    want.extend(added.iter().cloned());
    assert_eq!(listed, want, "{name}: docker node ls");

    for (node, recorded) in expected["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .zip(expected["node_inspect"].as_array().unwrap())
    {
        assert_node(m, name, node, recorded);
    }
}

/// `docker node inspect` shows what the fixture recorded for this node.
fn assert_node(m: &Manager, name: &str, node: &Value, recorded: &Value) {
    let id = str_at(node, "id");
    let now: Value =
        serde_json::from_str(&m.docker_ok(&["node", "inspect", "--format", "{{json .}}", &id]))
            .unwrap();
    let what = format!("{name}: node {id}");
    assert_eq!(now["ID"], recorded["ID"], "{what}");
    assert_eq!(now["Spec"]["Role"], node["role"], "{what}: role");
    assert_eq!(now["Spec"]["Labels"], node["labels"], "{what}: labels");
    assert_eq!(
        now["Spec"]["Availability"], node["availability"],
        "{what}: availability"
    );
    assert_eq!(
        now["Description"]["Hostname"], node["hostname"],
        "{what}: hostname"
    );
    assert_eq!(now["Status"]["State"], node["state"], "{what}: state");
    assert_eq!(
        now["ManagerStatus"]["Leader"].as_bool().unwrap_or(false),
        node["leader"],
        "{what}: leader"
    );
    // The rest of what a user set or the cluster recorded, field by field.
    for field in [
        &["CreatedAt"][..],
        &["Spec"],
        &["Status", "Addr"],
        &["ManagerStatus"],
        &["Description", "TLSInfo"],
    ] {
        let pick = |v: &Value| field.iter().fold(v.clone(), |v, k| v[*k].clone());
        assert_eq!(pick(&now), pick(recorded), "{what}: {}", field.join("."));
    }
}

/// `GET /swarm`, what `docker swarm join-token` and `docker info` read (the CLI has no
/// `docker swarm inspect`).
fn swarm_inspect(m: &Manager) -> Value {
    let r = m.request("GET", "/v1.41/swarm", None);
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    r.json()
}

/// The whole of `GET /swarm` as recorded, but for what a write may change (`Version`,
/// `UpdatedAt`): a migration that rewrites the record in place is allowed.
fn assert_swarm_unchanged(m: &Manager, name: &str, expected: &Value) {
    let mut now = swarm_inspect(m);
    let mut then = expected["swarm_inspect"].clone();
    for v in [&mut now, &mut then] {
        let o = v.as_object_mut().unwrap();
        o.remove("Version");
        o.remove("UpdatedAt");
    }
    assert_eq!(now, then, "{name}: GET /swarm");
}

/// `swarmguard agent join --no-run` with `token` against the manager's cluster port.
fn agent_join(m: &Manager, token: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    let cmd = support::agent::join_cmd(None, dir.path(), &m.cluster_addr, token, true);
    support::run(cmd, Duration::from_secs(60))
}

fn str_at(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("expected.json: {key} is not a string in {v}"))
        .to_string()
}

/// Copies a tree of directories and regular files; anything else in a fixture is a mistake.
fn copy_tree(from: &Path, to: &Path) {
    fs::create_dir_all(to).unwrap();
    for entry in fs::read_dir(from).unwrap_or_else(|e| panic!("{}: {e}", from.display())) {
        let entry = entry.unwrap();
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let kind = entry.file_type().unwrap();
        if kind.is_dir() {
            copy_tree(&src, &dst);
        } else if kind.is_file() {
            fs::copy(&src, &dst).unwrap();
        } else {
            panic!("{}: neither a file nor a directory", src.display());
        }
    }
}

/// Git keeps no modes, and the manager refuses a key file others can read: put back the modes
/// the fixture's files had when the release wrote them.
fn restore_modes(data: &Path, modes: &Value) {
    fs::set_permissions(data, fs::Permissions::from_mode(0o700)).unwrap();
    let modes = modes.as_object().expect("expected.json: modes");
    assert!(!modes.is_empty(), "expected.json: no modes");
    for (path, mode) in modes {
        let mode = u32::from_str_radix(mode.as_str().expect("mode string"), 8).expect("octal mode");
        let p = data.join(path);
        assert!(
            p.exists(),
            "expected.json names {path}, which the fixture lacks"
        );
        fs::set_permissions(&p, fs::Permissions::from_mode(mode)).unwrap();
    }
}
