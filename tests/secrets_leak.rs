//! A stolen data dir or a trace-level log reveals no secret value and no data key: a manager
//! logging at `trace` serves creates, an inspect, a label update that resends the value, a
//! removal, a SIGTERM restart and a `kill -9` restart; then every file under the data dir
//! (Raft log, state and snapshot database, certificates) and every log line is searched for the
//! values and the data key, raw, base64 and hex.

mod support;

use std::path::{Path, PathBuf};

use base64::Engine as _;
use support::manager::Manager;

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                out.push(p);
            }
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
}

/// Raw, standard and URL-safe base64 (padded or not), lower and upper hex.
fn encodings(bytes: &[u8]) -> Vec<(String, Vec<u8>)> {
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    let url = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
    let std_b64 = B64.encode(bytes);
    vec![
        ("raw".into(), bytes.to_vec()),
        ("base64".into(), std_b64.clone().into_bytes()),
        (
            "base64-unpadded".into(),
            std_b64.trim_end_matches('=').as_bytes().to_vec(),
        ),
        ("base64url".into(), url.into_bytes()),
        ("hex".into(), hex.clone().into_bytes()),
        ("HEX".into(), hex.to_uppercase().into_bytes()),
    ]
}

fn random_value() -> Vec<u8> {
    // Printable, so it also survives any text path; long enough never to occur by chance.
    let mut raw = [0u8; 30];
    ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut raw).unwrap();
    B64.encode(raw).replace(['+', '/'], "x").into_bytes()
}

#[test]
fn no_secret_value_or_data_key_in_the_data_dir_or_trace_logs() {
    let dir = support::short_tempdir("sg-leak");
    let logs = tempfile::tempdir().unwrap();
    let log_file = logs.path().join("manager.log");
    let mut m = Manager::start_logged(dir.path(), "trace", &log_file);
    m.init_swarm(&[]);

    let kept = random_value();
    let removed = random_value();
    let created = |name: &str, v: &[u8]| {
        let out = m.docker_with_stdin(&["secret", "create", name, "-"], Some(v));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    let id = created("kept", &kept);
    created("removed", &removed);
    m.docker_ok(&["secret", "inspect", "kept"]);
    m.docker_ok(&["secret", "ls"]);
    let version = m
        .request("GET", &format!("/v1.41/secrets/{id}"), None)
        .json()["Version"]["Index"]
        .as_u64()
        .unwrap();
    let body = serde_json::json!({"Name": "kept", "Labels": {"l": "1"}, "Data": B64.encode(&kept)});
    let r = m.request(
        "POST",
        &format!("/v1.41/secrets/{id}/update?version={version}"),
        Some(&serde_json::to_vec(&body).unwrap()),
    );
    assert_eq!(r.status, 200);
    // A refused update that carries a different value must not echo it either.
    let other = random_value();
    let body = serde_json::json!({"Name": "kept", "Data": B64.encode(&other)});
    let r = m.request(
        "POST",
        &format!("/v1.41/secrets/{id}/update?version={}", version + 1),
        Some(&serde_json::to_vec(&body).unwrap()),
    );
    assert!(r.status >= 400);
    assert_eq!(m.docker_ok(&["secret", "rm", "removed"]), "removed\n");
    m.terminate();
    m.restart();
    m.docker_ok(&["secret", "inspect", "kept"]);
    m.kill9();
    m.restart();
    m.docker_ok(&["secret", "inspect", "kept"]);
    m.terminate();

    let dek_file = dir.path().join("keys/dek");
    let dek = swarmguard_secrets::keyfile::load_dek(&dek_file)
        .unwrap()
        .expose_bytes()
        .to_vec();
    // The cluster's secrets key (a record sealed at rest like the root CA key).
    let secrets_key = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(async {
            let store = swarmguard::store::Store::open(dir.path()).await.unwrap();
            let v = store
                .get(swarmguard::control::secrets::SECRETS_KEY)
                .expect("a secrets key")
                .value;
            store.shutdown().await.unwrap();
            v
        });
    assert_eq!(secrets_key.len(), 32);
    let log = std::fs::read(&log_file).unwrap();
    assert!(
        log.len() > 10_000 && contains(&log, b"TRACE"),
        "the trace log is suspiciously small ({} bytes)",
        log.len()
    );
    let mut searched: Vec<(PathBuf, Vec<u8>)> = files_under(dir.path())
        .into_iter()
        .map(|p| {
            let data = std::fs::read(&p).unwrap();
            (p, data)
        })
        .collect();
    assert!(
        searched
            .iter()
            .any(|(p, _)| p.ends_with("store/raft-log.wal"))
            && searched
                .iter()
                .any(|(p, _)| p.ends_with("store/state.redb")),
        "{:?}",
        searched.iter().map(|(p, _)| p).collect::<Vec<_>>()
    );
    searched.push((log_file.clone(), log));
    let needles: Vec<(&str, &[u8])> = vec![
        ("kept value", &kept),
        ("removed value", &removed),
        ("refused value", &other),
        ("data key", &dek),
        ("secrets key", &secrets_key),
    ];
    for (path, data) in &searched {
        for (what, secret) in &needles {
            if *what == "data key" && *path == dek_file {
                continue;
            }
            for (how, enc) in encodings(secret) {
                assert!(
                    !contains(data, &enc),
                    "{what} found ({how}) in {}",
                    path.display()
                );
            }
        }
    }
}
