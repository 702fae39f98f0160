//! `swarmguard agent` as processes: one manager and three agents, all Ready in `docker node ls`;
//! after `docker swarm join-token --rotate worker` the old token is refused with SwarmKit's text
//! and the new one works. Agents are stopped by the PID this test started.

mod support;

use std::time::{Duration, Instant};

use support::agent::{join_cmd, Agent};
use support::manager::Manager;

fn join_once(m: &Manager, token: &str) -> std::process::Output {
    let dir = tempfile::tempdir().unwrap();
    join_cmd(None, dir.path(), &m.cluster_addr, token, true)
        .output()
        .expect("run swarmguard agent join")
}

#[test]
fn three_agent_processes_are_ready_and_a_rotated_token_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let m = Manager::start(dir.path());
    m.init_swarm(&[]);
    let token = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let token = token.trim().to_string();
    let agents: Vec<Agent> = (0..3)
        .map(|_| Agent::join(None, &m.cluster_addr, &token))
        .collect();

    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let ls = m.docker_ok(&[
            "node",
            "ls",
            "--format",
            "{{.Status}} {{.ManagerStatus}} {{.EngineVersion}}",
        ]);
        let ready_agents = ls
            .lines()
            .filter(|l| l.starts_with("Ready") && l.contains("swarmguard-agent-"))
            .count();
        if ready_agents == 3 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "3 agents not Ready within 20 s:\n{ls}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    for a in &agents {
        use std::os::unix::fs::PermissionsExt;
        let dir_mode = std::fs::metadata(a.dir()).unwrap().permissions().mode() & 0o777;
        assert_eq!(dir_mode, 0o700);
        let key = a.dir().join("certificates/swarm-node.key");
        let mode = std::fs::metadata(&key).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "{}", key.display());
    }

    m.docker_ok(&["swarm", "join-token", "--rotate", "worker"]);
    let out = join_once(&m, &token);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("A valid join token is necessary to join this cluster"),
        "{stderr}"
    );
    let new = m.docker_ok(&["swarm", "join-token", "-q", "worker"]);
    let out = join_once(&m, new.trim());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("joined a swarm as a worker"));
    drop(agents);
}
