//! Autolock with the real docker CLI 28: `swarm init --autolock` prints the key; a restarted
//! manager is locked (`docker info`, 503s, no cluster port, no store); wrong keys are refused
//! with dockerd's status and text and slow the next attempts; the right key unlocks without a
//! restart; `unlock-key --rotate` retires the old key across a `kill -9`; `update
//! --autolock=false|true` re-wrap. Then the data dir and the trace log hold neither unlock key
//! (raw, base64, hex, human form) nor the data key.

mod support;

use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine as _;
use support::manager::Manager;

const LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used. Please use \"docker swarm unlock\" to unlock it.";

fn key_in(text: &str) -> String {
    let at = text
        .find("SWMKEY-1-")
        .unwrap_or_else(|| panic!("no unlock key in {text:?}"));
    let key = &text[at..at + 9 + 43];
    assert!(
        swarmguard_secrets::kek::UnlockKey::parse(key).is_ok(),
        "{key}"
    );
    key.to_string()
}

fn err(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn node_state(m: &Manager) -> String {
    m.request("GET", "/v1.41/info", None).json()["Swarm"]["LocalNodeState"]
        .as_str()
        .unwrap()
        .to_string()
}

fn cluster_port_open(m: &Manager) -> bool {
    std::net::TcpStream::connect(&m.cluster_addr).is_ok()
}

fn unlock(m: &Manager, key: &str) -> std::process::Output {
    m.docker_with_stdin(&["swarm", "unlock"], Some(format!("{key}\n").as_bytes()))
}

/// A restarted autolocked manager: locked, serving nothing but unlock.
fn assert_locked(m: &Manager) {
    assert_eq!(node_state(m), "locked");
    let info = m.docker_ok(&["info"]);
    assert!(info.contains("Swarm: locked"), "{info}");
    for (method, path) in [
        ("GET", "/v1.41/secrets"),
        ("GET", "/v1.41/swarm"),
        ("GET", "/v1.41/nodes"),
        ("GET", "/v1.41/swarm/unlockkey"),
        ("DELETE", "/v1.41/secrets/kept"),
        ("POST", "/v1.41/swarm/leave?force=1"),
    ] {
        let r = m.request(method, path, None);
        assert_eq!((r.status, r.message()), (503, LOCKED.to_string()), "{path}");
    }
    let ls = m.docker(&["secret", "ls"]);
    assert!(err(&ls).contains(LOCKED), "{}", err(&ls));
    let create = m.docker_with_stdin(&["secret", "create", "x", "-"], Some(b"x"));
    assert!(err(&create).contains(LOCKED), "{}", err(&create));
    assert!(
        !cluster_port_open(m),
        "a locked manager serves the cluster port"
    );
}

fn assert_unlocked_with_data(m: &Manager) {
    assert_eq!(node_state(m), "active");
    assert_eq!(
        m.docker_ok(&["secret", "ls", "--format", "{{.Name}}"]),
        "kept\n"
    );
    support::wait_until("cluster port", Duration::from_secs(10), || {
        cluster_port_open(m)
    });
}

#[test]
fn autolock_cycle_with_the_docker_cli() {
    let dir = support::short_tempdir("sg-lock");
    let logs = tempfile::tempdir().unwrap();
    let log_file = logs.path().join("manager.log");
    let mut m = Manager::start_logged(dir.path(), "trace", &log_file);
    let first = key_in(&m.init_swarm(&["--autolock"]));
    assert!(m.docker_ok(&["info"]).contains("Autolock Managers: true"));
    assert_eq!(
        m.docker_ok(&["swarm", "unlock-key", "-q"]),
        format!("{first}\n")
    );
    let not_locked = unlock(&m, &first);
    assert!(
        err(&not_locked).contains("swarm is not locked"),
        "{}",
        err(&not_locked)
    );
    m.docker_with_stdin(&["secret", "create", "kept", "-"], Some(b"kept-value"));
    let dek_file = std::fs::read_to_string(dir.path().join("keys/dek")).unwrap();
    assert!(dek_file.contains("wrapped: true"), "{dek_file}");
    assert_tls_key_sealed(dir.path(), true);

    m.terminate();
    m.restart();
    assert_locked(&m);
    wrong_keys(&m, &first);
    let out = unlock(&m, &first);
    assert!(out.status.success(), "{}", err(&out));
    assert_unlocked_with_data(&m);

    let rotated = m.docker_ok(&["swarm", "unlock-key", "--rotate"]);
    assert!(
        rotated.contains("Successfully rotated manager unlock key."),
        "{rotated}"
    );
    let second = key_in(&rotated);
    assert_ne!(second, first);
    m.kill9();
    m.restart();
    assert_locked(&m);
    let old = m.request(
        "POST",
        "/v1.41/swarm/unlock",
        Some(format!(r#"{{"UnlockKey":"{first}"}}"#).as_bytes()),
    );
    assert_eq!(old.status, 401, "the rotated-out key still opens");
    assert!(unlock(&m, &second).status.success());
    assert_unlocked_with_data(&m);

    // Off: the next start is unlocked and there is no key to show.
    m.docker_ok(&["swarm", "update", "--autolock=false"]);
    assert!(m.docker_ok(&["info"]).contains("Autolock Managers: false"));
    let none = m.docker(&["swarm", "unlock-key"]);
    assert!(
        err(&none).contains("no unlock key is set"),
        "{}",
        err(&none)
    );
    assert_tls_key_sealed(dir.path(), false);
    m.terminate();
    m.restart();
    assert_unlocked_with_data(&m);

    // On again: a third key, locked after the restart.
    let third = key_in(&m.docker_ok(&["swarm", "update", "--autolock=true"]));
    assert!(third != first && third != second);
    m.terminate();
    m.restart();
    assert_locked(&m);
    assert!(unlock(&m, &third).status.success());
    assert_unlocked_with_data(&m);
    m.terminate();

    no_key_on_disk_or_in_logs(dir.path(), &log_file, &[&first, &second, &third]);
}

/// Malformed and wrong keys with dockerd's statuses and texts; after the free attempts each
/// further wrong key waits first.
fn wrong_keys(m: &Manager, right: &str) {
    let bad = m.request(
        "POST",
        "/v1.41/swarm/unlock",
        Some(br#"{"UnlockKey":"hello"}"#),
    );
    assert_eq!(
        (bad.status, bad.message().as_str()),
        (400, "invalid key string")
    );
    let wrong = swarmguard_secrets::kek::UnlockKey::generate()
        .unwrap()
        .to_human();
    assert_ne!(wrong.as_str(), right);
    let out = unlock(m, &wrong);
    assert!(!out.status.success());
    assert!(
        err(&out).contains("swarm could not be unlocked: invalid key provided"),
        "{}",
        err(&out)
    );
    let body = format!(r#"{{"UnlockKey":"{}"}}"#, &*wrong);
    // Attempts 2 and 3 are free; the 4th waits 250 ms and the 5th 500 ms (`delay_after`).
    for n in 2..=5u32 {
        let t = Instant::now();
        let r = m.request("POST", "/v1.41/swarm/unlock", Some(body.as_bytes()));
        assert_eq!(r.status, 401);
        assert_eq!(
            r.message(),
            "swarm could not be unlocked: invalid key provided"
        );
        let waited = t.elapsed();
        let at_least = swarmguard::engine::locked::delay_after(n - 1);
        assert!(waited >= at_least, "attempt {n} answered after {waited:?}");
    }
    assert_eq!(node_state(m), "locked");
}

/// This manager's TLS key: sealed with the (wrapped) data key while autolock is on, PEM when off.
fn assert_tls_key_sealed(data_dir: &Path, sealed: bool) {
    let key = std::fs::read(data_dir.join("certificates/swarm-node.key")).unwrap();
    let has = |n: &[u8]| key.windows(n.len()).any(|w| w == n);
    assert_eq!(key.starts_with(b"swarmguard-sealed-key v1\n"), sealed);
    assert_eq!(has(b"PRIVATE KEY"), !sealed);
}

fn no_key_on_disk_or_in_logs(data_dir: &Path, log_file: &Path, keys: &[&str]) {
    let b64 = base64::engine::general_purpose::STANDARD;
    let wrapped = match swarmguard_secrets::keyfile::read_dek_file(&data_dir.join("keys/dek"))
        .unwrap()
    {
        swarmguard_secrets::keyfile::DekFile::Wrapped(w) => w,
        swarmguard_secrets::keyfile::DekFile::Plain(_) => panic!("autolock is on: key not wrapped"),
    };
    let last = swarmguard_secrets::kek::UnlockKey::parse(keys[keys.len() - 1]).unwrap();
    let dek = last.unwrap(&wrapped).unwrap().expose_bytes().to_vec();
    let mut needles: Vec<(String, Vec<u8>)> = Vec::new();
    let mut add = |what: &str, bytes: &[u8]| {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        for (how, enc) in [
            ("raw", bytes.to_vec()),
            ("base64", b64.encode(bytes).into_bytes()),
            (
                "base64-unpadded",
                base64::engine::general_purpose::STANDARD_NO_PAD
                    .encode(bytes)
                    .into_bytes(),
            ),
            ("hex", hex.clone().into_bytes()),
            ("HEX", hex.to_uppercase().into_bytes()),
        ] {
            needles.push((format!("{what} ({how})"), enc));
        }
    };
    add("data key", &dek);
    for (i, k) in keys.iter().enumerate() {
        let kek = swarmguard_secrets::kek::UnlockKey::parse(k).unwrap();
        add(&format!("unlock key {i}"), kek.expose_bytes());
        add(&format!("unlock key text {i}"), k.as_bytes());
    }
    let mut files = vec![log_file.to_path_buf()];
    let mut stack = vec![data_dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.is_dir() {
                stack.push(p);
            } else if meta.is_file() {
                files.push(p);
            }
        }
    }
    assert!(files.len() > 5, "{files:?}");
    for f in files {
        let data = std::fs::read(&f).unwrap();
        for (what, n) in &needles {
            assert!(
                !data.windows(n.len()).any(|w| w == &n[..]),
                "{what} found in {}",
                f.display()
            );
        }
    }
}
