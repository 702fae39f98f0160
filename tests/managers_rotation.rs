//! Root rotation with several managers: `docker swarm ca --rotate` sent to a follower is
//! forwarded to the leader, every manager ends with a certificate from the new root (each one's
//! own TLS material, which its Raft transport uses), the group keeps working throughout and
//! after a follower restarts from disk, and the old manager token is refused.

mod support;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use support::manager::{form_managers, Manager};

/// `GET /swarm`'s TLSInfo.TrustRoot, or what the manager answered instead.
fn try_trust_root(m: &Manager) -> Result<String, String> {
    let v = m.request("GET", "/v1.41/swarm", None).json();
    v["TLSInfo"]["TrustRoot"]
        .as_str()
        .map(str::to_string)
        .ok_or_else(|| v.to_string())
}

fn trust_root(m: &Manager) -> String {
    try_trust_root(m).unwrap_or_else(|e| panic!("GET /swarm: {e}"))
}

/// `docker node ls` as `MANAGER STATUS` per line, sorted (`Leader`, `Reachable`, …).
fn manager_statuses(m: &Manager) -> Option<Vec<String>> {
    let out = m.docker(&["node", "ls", "--format", "{{.ManagerStatus}} {{.Status}}"]);
    if !out.status.success() {
        return None;
    }
    let mut v: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect();
    v.sort();
    Some(v)
}

const HEALTHY: [&str; 3] = ["Leader Ready", "Reachable Ready", "Reachable Ready"];

/// The manager's own certificate and root files are from `root`.
fn holds_cert_from(m: &Manager, root: &str) -> bool {
    let dir = m.data_dir.join("certificates");
    let cert = std::fs::read(dir.join("swarm-node.crt")).unwrap_or_default();
    let on_disk_root = std::fs::read_to_string(dir.join("swarm-root-ca.crt")).unwrap_or_default();
    !cert.is_empty() && on_disk_root == root && support::signed_by(&cert, root.as_bytes())
}

#[test]
fn root_rotation_reissues_every_manager_and_the_group_keeps_working() {
    let (dirs, mut managers) = form_managers(3, None, &[]);
    for m in &managers {
        support::wait_until("three healthy managers", Duration::from_secs(30), || {
            manager_statuses(m).is_some_and(|s| s == HEALTHY)
        });
    }
    let old_root = trust_root(&managers[0]);
    let old_token = managers[0]
        .docker_ok(&["swarm", "join-token", "-q", "manager"])
        .trim()
        .to_string();

    // Watch the group from manager 0 while the rotation runs: every poll must see three
    // Ready managers with a leader (the Raft transport uses the certificates being replaced).
    let stop = AtomicBool::new(false);
    let new_root = std::thread::scope(|scope| {
        let watcher = scope.spawn(|| {
            let (mut polls, mut bad) = (0usize, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                polls += 1;
                match manager_statuses(&managers[0]) {
                    Some(s) if s == HEALTHY => {}
                    other => bad.push(format!("{other:?}")),
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            (polls, bad)
        });
        // Sent to a follower or the leader alike; the CLI waits for the end with its progress.
        let out = managers[1].docker(&["swarm", "ca", "--rotate"]);
        let new_root = try_trust_root(&managers[1]);
        let reissued = out.status.success()
            && managers.iter().all(|m| {
                let mut ok = false;
                for _ in 0..300 {
                    let root = new_root.as_deref().unwrap_or_default();
                    if try_trust_root(m).as_deref() == Ok(root) && holds_cert_from(m, root) {
                        ok = true;
                        break;
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
                ok
            });
        stop.store(true, Ordering::Relaxed);
        let (polls, bad) = watcher.join().unwrap();
        assert!(out.status.success(), "{}", support::text(&out));
        let new_root = new_root.unwrap_or_else(|e| panic!("GET /swarm: {e}"));
        assert_ne!(new_root, old_root, "the root did not change");
        assert!(
            reissued,
            "not every manager holds a certificate from the new root within 60 s"
        );
        assert!(polls > 0);
        assert!(
            bad.is_empty(),
            "{} of {polls} polls saw the group unhealthy: {bad:?}",
            bad.len()
        );
        new_root
    });

    // Writes go through every manager after the rotation.
    for m in &managers {
        m.docker_ok(&["swarm", "join-token", "--rotate", "-q", "worker"]);
    }

    // A follower restarted from disk comes back with its new certificate and rejoins.
    let follower = (0..3)
        .find(|i| {
            let me = managers[*i].docker_ok(&[
                "node",
                "inspect",
                "self",
                "--format",
                "{{.ManagerStatus.Leader}}",
            ]);
            me.trim() == "false"
        })
        .expect("a follower");
    managers[follower].kill9();
    managers[follower].restart();
    support::wait_until(
        "the restarted follower is Reachable again",
        Duration::from_secs(30),
        || manager_statuses(&managers[follower]).is_some_and(|s| s == HEALTHY),
    );
    assert!(holds_cert_from(&managers[follower], &new_root));

    // The old manager token pins the old root: a fourth manager is refused with it and
    // joins with the new one.
    let dir4 = support::short_tempdir("sg-m3-");
    let m4 = Manager::start(dir4.path());
    let refused = m4.docker(&[
        "swarm",
        "join",
        "--token",
        &old_token,
        &managers[0].cluster_addr,
    ]);
    assert!(!refused.status.success(), "{}", support::text(&refused));
    let new_token = managers[0]
        .docker_ok(&["swarm", "join-token", "-q", "manager"])
        .trim()
        .to_string();
    assert_ne!(new_token, old_token);
    support::join_swarm(
        |a| m4.docker_ok(a),
        &new_token,
        &managers[0].cluster_addr,
        "manager",
    );
    assert!(holds_cert_from(&m4, &new_root));
    drop(m4);
    drop(managers);
    drop(dirs);
}
