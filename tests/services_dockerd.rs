//! Services on a stock dockerd worker: `docker service create` against swarmguard runs a task
//! on a real dockerd 20.10 that joined over SwarmKit's gRPC; `docker service ps` shows it
//! Running; scale, update and rm act on the worker's containers.
//!
//! Manager and worker share one fresh network namespace (loopback only), as in join_dockerd.rs.

mod support;

use std::time::{Duration, Instant};

use support::dockerd::Dockerd;
use support::manager::Manager;

/// A manager with one stock dockerd worker joined, and the busybox image on the worker.
fn cluster() -> (Dockerd, tempfile::TempDir, Manager, String) {
    let d = Dockerd::start(true);
    let ns = d.netns.clone().expect("own netns");
    let mdir = tempfile::tempdir().unwrap();
    let m = Manager::start_in(mdir.path(), Some(&ns));
    m.init_swarm(&["--dispatcher-heartbeat", "1s"]);
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    d.docker_ok(&["swarm", "join", "--token", token.trim(), &m.cluster_addr]);
    let worker = d
        .docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"])
        .trim()
        .to_string();
    support::wait_until("worker Ready", Duration::from_secs(10), || {
        m.docker_ok(&["node", "inspect", "--format", "{{.Status.State}}", &worker])
            .trim()
            == "ready"
    });
    d.import_busybox_image("sg/bb:1");
    d.import_busybox_image("sg/bb:2");
    (d, mdir, m, worker)
}

/// `docker service ps` rows as `NAME|NODE|DESIRED|CURRENT|ERROR`.
fn ps(m: &Manager, service: &str) -> Vec<String> {
    m.docker_ok(&[
        "service",
        "ps",
        "--no-trunc",
        "--format",
        "{{.Name}}|{{.Node}}|{{.DesiredState}}|{{.CurrentState}}|{{.Error}}",
        service,
    ])
    .lines()
    .map(str::to_string)
    .collect()
}

fn worker_containers(d: &Dockerd) -> Vec<String> {
    d.docker_ok(&["ps", "--format", "{{.Names}}"])
        .lines()
        .map(str::to_string)
        .collect()
}

/// Scale to 2, then a rolling `--image` update replacing both tasks.
fn scale_and_roll(m: &Manager, d: &Dockerd) {
    // Scale: two tasks, both on the only eligible node.
    m.docker_ok(&["service", "scale", "--detach", "app=2"]);
    support::wait_until("2 tasks running", Duration::from_secs(30), || {
        worker_containers(d)
            .iter()
            .filter(|n| n.starts_with("app."))
            .count()
            == 2
    });
    support::wait_until("service ls 2/2", Duration::from_secs(10), || {
        m.docker_ok(&["service", "ls", "--format", "{{.Replicas}}"])
            .trim()
            == "2/2"
    });

    // Rolling update of the image: every task is replaced by one running sg/bb:2.
    m.docker_ok(&["service", "update", "--detach", "--image", "sg/bb:2", "app"]);
    support::wait_until("tasks on sg/bb:2", Duration::from_secs(60), || {
        let images = d.docker_ok(&["ps", "--format", "{{.Image}} {{.Names}}"]);
        let app: Vec<&str> = images.lines().filter(|l| l.contains(" app.")).collect();
        app.len() == 2 && app.iter().all(|l| l.starts_with("sg/bb:2 "))
    });
    support::wait_until("update completed", Duration::from_secs(20), || {
        m.docker_ok(&[
            "service",
            "inspect",
            "--format",
            "{{.UpdateStatus.State}}",
            "app",
        ])
        .trim()
            == "completed"
    });
    let rows = ps(m, "app");
    assert!(
        rows.iter().filter(|r| r.contains("|Shutdown|")).count() >= 2,
        "old tasks kept as history: {rows:?}"
    );
}

/// Drain the only worker, then make it active again.
fn drain_and_back(m: &Manager, d: &Dockerd, worker: &str) {
    // Drain the only worker: its tasks stop there and their replacements wait, saying why;
    // active again, they run.
    m.docker_ok(&["node", "update", "--availability", "drain", worker]);
    support::wait_until("drained", Duration::from_secs(40), || {
        worker_containers(d).iter().all(|n| !n.starts_with("app."))
    });
    support::wait_until(
        "replacements pending with the reason",
        Duration::from_secs(10),
        || {
            let rows = ps(m, "app");
            rows.iter()
                .filter(|r| r.contains("|Running|Pending") && r.contains("no suitable node"))
                .count()
                == 2
        },
    );
    m.docker_ok(&["node", "update", "--availability", "active", worker]);
    support::wait_until("running again", Duration::from_secs(30), || {
        worker_containers(d)
            .iter()
            .filter(|n| n.starts_with("app."))
            .count()
            == 2
    });
}

#[test]
fn replicated_service_runs_on_a_stock_dockerd_worker() {
    let (mut d, _mdir, m, worker) = cluster();
    let hostname = m
        .docker_ok(&[
            "node",
            "inspect",
            "--format",
            "{{.Description.Hostname}}",
            &worker,
        ])
        .trim()
        .to_string();

    // The CLI waits for convergence by polling service, tasks and nodes (no --detach).
    let start = Instant::now();
    let out = m.docker(&[
        "service",
        "create",
        "--name",
        "app",
        "--constraint",
        "node.role==worker",
        "--env",
        "GREETING=hello",
        "sg/bb:1",
        "sh",
        "-c",
        "echo $GREETING; sleep 600",
    ]);
    let text = support::text(&out);
    assert!(out.status.success(), "service create: {text}");
    assert!(
        text.contains("verify: Service") && text.contains("converged"),
        "{text}"
    );
    eprintln!(
        "service create converged (CLI returned) after {:?}",
        start.elapsed()
    );

    let rows = ps(&m, "app");
    assert_eq!(rows.len(), 1, "{rows:?}");
    let row: Vec<&str> = rows[0].split('|').collect();
    assert_eq!(row[0], "app.1");
    assert_eq!(row[1], hostname);
    assert_eq!(row[2], "Running");
    assert!(row[3].starts_with("Running"), "{rows:?}");

    // The container on the worker: named <service>.<slot>.<task>, with the service's env.
    let names = worker_containers(&d);
    let name = names
        .iter()
        .find(|n| n.starts_with("app.1."))
        .unwrap_or_else(|| panic!("no app.1 container on the worker: {names:?}"))
        .clone();
    let logs = d.ok(&[], &["logs", &name]);
    assert!(logs.contains("hello"), "{logs}");

    let ls = m.docker_ok(&[
        "service",
        "ls",
        "--format",
        "{{.Name}} {{.Mode}} {{.Replicas}}",
    ]);
    assert_eq!(ls.trim(), "app replicated 1/1");

    scale_and_roll(&m, &d);

    drain_and_back(&m, &d, &worker);

    // A refused field is named, and nothing is created.
    let out = m.docker(&[
        "service",
        "create",
        "--name",
        "web",
        "--publish",
        "8080:80",
        "sg/bb:1",
    ]);
    let err = support::text(&out);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("EndpointSpec.Ports"), "{err}");
    let out = m.docker(&["service", "create", "--name", "app", "sg/bb:1"]);
    assert!(support::text(&out).contains("service app already exists"));

    // rm: the worker's containers go (sh ignores SIGTERM: 10 s grace, then SIGKILL).
    m.docker_ok(&["service", "rm", "app"]);
    support::wait_until("containers removed", Duration::from_secs(40), || {
        d.docker_ok(&["ps", "-a", "--format", "{{.Names}}"])
            .lines()
            .all(|n| !n.starts_with("app."))
    });
    support::wait_until("tasks gone", Duration::from_secs(20), || {
        m.request("GET", "/v1.41/tasks", None).json() == serde_json::json!([])
    });
    drop(m);
    d.stop();
}

/// The first container on the worker whose name starts with `prefix`.
fn container(d: &Dockerd, prefix: &str) -> String {
    worker_containers(d)
        .into_iter()
        .find(|n| n.starts_with(prefix))
        .unwrap_or_else(|| panic!("no {prefix} container on the worker"))
}

fn audit_verify(dir: &std::path::Path) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_swarmguard"))
        .args(["audit", "verify", "--data-dir"])
        .arg(dir)
        .output()
        .expect("run swarmguard audit verify")
}

/// `audit verify` passes on the log, then names line 3 after one byte changed there, and line
/// 2 after it was removed.
fn audit_chain_breaks_are_named(dir: &std::path::Path, log: &str) {
    let ok = audit_verify(dir);
    assert!(ok.status.success(), "{}", support::text(&ok));
    let lines: Vec<String> = log.lines().map(str::to_string).collect();
    assert!(lines.len() >= 5);
    // One byte changed in line 3: named.
    let mut changed = lines.clone();
    changed[2] = changed[2].replacen("\"seq\":3", "\"seq\":4", 1);
    std::fs::write(dir.join("audit.log"), changed.join("\n") + "\n").unwrap();
    let out = audit_verify(dir);
    assert!(!out.status.success());
    assert!(
        support::text(&out).contains("line 3"),
        "{}",
        support::text(&out)
    );
    // Line 2 removed: named where the chain breaks.
    let mut cut = lines.clone();
    cut.remove(1);
    std::fs::write(dir.join("audit.log"), cut.join("\n") + "\n").unwrap();
    let out = audit_verify(dir);
    assert!(!out.status.success());
    assert!(
        support::text(&out).contains("line 2"),
        "{}",
        support::text(&out)
    );
}

#[test]
fn a_task_sees_its_secret_on_tmpfs_and_the_secret_follows_the_task() {
    let (mut d, mdir, m, worker) = cluster();
    let out = m.docker_with_stdin(&["secret", "create", "db_pass", "-"], Some(b"s3cr3t"));
    assert!(out.status.success(), "{}", support::text(&out));
    m.docker_ok(&[
        "service",
        "create",
        "--detach",
        "--name",
        "app",
        "--secret",
        "db_pass",
        "--constraint",
        "node.role==worker",
        "sg/bb:1",
        "sh",
        "-c",
        // json-file emits a line only at its newline (or at exit), hence the echo.
        "cat /run/secrets/db_pass; echo; sleep 600",
    ]);
    support::wait_until("app.1 running", Duration::from_secs(30), || {
        ps(&m, "app")
            .iter()
            .any(|r| r.starts_with("app.1|") && r.contains("|Running|Running"))
    });
    let c = container(&d, "app.1.");
    assert_eq!(
        d.docker_ok(&["exec", &c, "cat", "/run/secrets/db_pass"]),
        "s3cr3t"
    );
    let mode = d.docker_ok(&["exec", &c, "stat", "-c", "%a %u %g", "/run/secrets/db_pass"]);
    assert_eq!(mode.trim(), "444 0 0");
    let mounts = d.docker_ok(&["exec", &c, "cat", "/proc/mounts"]);
    assert!(
        mounts
            .lines()
            .any(|l| l.starts_with("tmpfs /run/secrets/db_pass tmpfs ro")),
        "{mounts}"
    );

    // docker service logs: through LogBroker from the worker, with the task's name.
    let logs = m.docker_ok(&["service", "logs", "app"]);
    assert!(
        logs.lines()
            .any(|l| l.starts_with("app.1.") && l.ends_with("| s3cr3t")),
        "{logs}"
    );
    logs_since(&m);

    // In use: refused with dockerd's text; the secret stays.
    let out = m.docker(&["secret", "rm", "db_pass"]);
    let err = support::text(&out);
    assert!(!out.status.success());
    assert!(
        err.contains("secret 'db_pass' is in use by the following service: app"),
        "{err}"
    );

    // rm: the container goes, and the node is told to drop the secret.
    m.docker_ok(&["service", "rm", "app"]);
    support::wait_until("container removed", Duration::from_secs(40), || {
        d.docker_ok(&["ps", "-a", "--format", "{{.Names}}"])
            .lines()
            .all(|n| !n.starts_with("app."))
    });
    support::wait_until(
        "secret withdrawn from the worker",
        Duration::from_secs(20),
        || {
            std::fs::read_to_string(mdir.path().join("audit.log"))
                .unwrap_or_default()
                .lines()
                .any(|l| l.contains("\"secret_withdrawn\"") && l.contains(&worker))
        },
    );
    m.docker_ok(&["secret", "rm", "db_pass"]);

    // The audit log: joined, issued, created, delivered, withdrawn, removed; no secret value.
    let log = std::fs::read_to_string(mdir.path().join("audit.log")).unwrap();
    for event in [
        "node_joined",
        "certificate_issued",
        "secret_created",
        "secret_delivered",
        "secret_withdrawn",
        "secret_removed",
    ] {
        assert!(
            log.contains(&format!("\"event\":\"{event}\"")),
            "{event}: {log}"
        );
    }
    assert!(!log.contains("s3cr3t") && !log.contains("czNjcjN0"));
    drop(m);
    d.stop();

    audit_chain_breaks_are_named(mdir.path(), &log);
}

/// `docker service logs --since`: a time after the task's line hides it, ten minutes back
/// shows it; a `since` that is not a Unix time is refused.
fn logs_since(m: &Manager) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap();
    let since = format!("{}.{:09}", now.as_secs(), now.subsec_nanos());
    let later = m.docker_ok(&["service", "logs", "--since", &since, "app"]);
    assert!(!later.contains("s3cr3t"), "{later}");
    let back = m.docker_ok(&["service", "logs", "--since", "10m", "app"]);
    assert!(
        back.lines()
            .any(|l| l.starts_with("app.1.") && l.ends_with("| s3cr3t")),
        "{back}"
    );
    let r = m.request(
        "GET",
        "/v1.41/services/app/logs?stdout=1&since=yesterday",
        None,
    );
    assert_eq!(r.status, 400);
    assert!(r.message().contains("invalid value for \"since\""));
}

/// Node IDs of the live tasks of `service`, from `GET /tasks`.
fn task_nodes(m: &Manager) -> Vec<String> {
    let tasks = m.request("GET", "/v1.41/tasks", None).json();
    let mut nodes: Vec<String> = tasks
        .as_array()
        .unwrap()
        .iter()
        .filter(|t| t["DesiredState"] == "running" && t["Status"]["State"] == "running")
        .map(|t| t["NodeID"].as_str().unwrap_or_default().to_string())
        .collect();
    nodes.sort();
    nodes
}

/// Two stock workers, each in its own network namespace (the second reaches the manager through
/// a loopback bridge at the address the manager advertises): `scale app=3` spreads the tasks
/// over both; when one worker stops, its tasks move to the other once it is Down.
#[test]
fn tasks_spread_over_two_workers_and_move_off_a_stopped_one() {
    let (d1, _mdir, m, w1) = cluster();
    let mut d2 = Dockerd::start(true);
    let port: u16 = m.cluster_addr.rsplit(':').next().unwrap().parse().unwrap();
    let _bridge = support::bridge::Bridge::start(
        port,
        d2.netns.as_deref().unwrap(),
        d1.netns.as_deref().unwrap(),
    );
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    d2.docker_ok(&["swarm", "join", "--token", token.trim(), &m.cluster_addr]);
    let w2 = d2
        .docker_ok(&["info", "--format", "{{.Swarm.NodeID}}"])
        .trim()
        .to_string();
    support::wait_until("second worker Ready", Duration::from_secs(10), || {
        m.docker_ok(&["node", "inspect", "--format", "{{.Status.State}}", &w2])
            .trim()
            == "ready"
    });
    d2.import_busybox_image("sg/bb:1");

    m.docker_ok(&[
        "service", "create", "--detach", "--name", "app", "sg/bb:1", "sleep", "600",
    ]);
    m.docker_ok(&["service", "scale", "--detach", "app=3"]);
    support::wait_until("3 tasks running", Duration::from_secs(60), || {
        task_nodes(&m).len() == 3
    });
    let nodes = task_nodes(&m);
    let on = |w: &str| nodes.iter().filter(|n| *n == w).count();
    assert!(
        on(&w1) >= 1 && on(&w2) >= 1 && on(&w1) + on(&w2) == 3,
        "spread: {nodes:?}"
    );

    // Stop the second worker: Down after 3 missed 1 s heartbeats, then its tasks run on the first.
    let moved = on(&w2);
    d2.stop_daemon();
    support::wait_until("second worker Down", Duration::from_secs(15), || {
        m.docker_ok(&["node", "inspect", "--format", "{{.Status.State}}", &w2])
            .trim()
            == "down"
    });
    support::wait_until("its tasks moved", Duration::from_secs(60), || {
        worker_containers(&d1)
            .iter()
            .filter(|n| n.starts_with("app."))
            .count()
            == 3
    });
    let rows = ps(&m, "app");
    assert!(
        rows.iter().filter(|r| r.contains("|Shutdown|")).count() >= moved,
        "the stopped worker's tasks are shut down in the history: {rows:?}"
    );
    drop(m);
    d2.stop();
}
