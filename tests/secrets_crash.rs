//! `kill -9` of the manager during 1,000 concurrent `POST /secrets/create` from 32 clients. Every
//! request and its outcome is recorded; after the crash the store (opened directly, since the API
//! never returns data) must hold every secret whose create got a 201, under the answered ID and
//! with its value, and nothing else but requests still in flight when the manager died.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine as _;
use support::manager::{unix_request, Manager};

const CLIENTS: usize = 32;
const CREATES: usize = 1000;
/// Kill once this many creates were answered 201, so the crash lands mid-run.
const KILL_AFTER: usize = 300;

#[derive(Debug, Clone, PartialEq)]
enum Outcome {
    /// 201 with this ID.
    Created(String),
    /// A definite refusal (status and message): must not exist.
    Refused(u16, String),
    /// Sent, but no answer (the manager died): may or may not exist.
    InFlight,
}

struct Attempt {
    value: Vec<u8>,
    outcome: Outcome,
}

fn stored(data_dir: &Path) -> BTreeMap<String, (String, Vec<u8>)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = swarmguard::store::Store::open(data_dir).await.unwrap();
        let config = swarmguard::control::ca::local::ManagerConfig {
            data_dir: data_dir.to_path_buf(),
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            advertise_addr: Some("127.0.0.1".into()),
        };
        let ctl = swarmguard::control::Control::open(store.clone(), config).unwrap();
        let out = ctl
            .secrets()
            .unwrap()
            .iter()
            .map(|s| {
                let value = ctl.open_secret(&s.record.id).unwrap().to_vec();
                (s.record.name.clone(), (s.record.id.clone(), value))
            })
            .collect();
        drop(ctl);
        store.shutdown().await.unwrap();
        out
    })
}

fn client(
    socket: PathBuf,
    next: Arc<AtomicUsize>,
    created: Arc<AtomicUsize>,
    history: Arc<Mutex<BTreeMap<String, Attempt>>>,
) {
    loop {
        let n = next.fetch_add(1, Ordering::SeqCst);
        if n >= CREATES {
            return;
        }
        let name = format!("s{n:04}");
        let value = format!("value-{n}-{}", n * 7919 % 1000).into_bytes();
        let body = serde_json::to_vec(&serde_json::json!({
            "Name": name,
            "Labels": {"n": n.to_string()},
            "Data": base64::engine::general_purpose::STANDARD.encode(&value),
        }))
        .unwrap();
        // Recorded before sending: a crash after this line leaves it in flight.
        history.lock().unwrap().insert(
            name.clone(),
            Attempt {
                value,
                outcome: Outcome::InFlight,
            },
        );
        let outcome = match unix_request(&socket, "POST", "/v1.41/secrets/create", Some(&body)) {
            Ok(r) if r.status == 201 => {
                created.fetch_add(1, Ordering::SeqCst);
                Outcome::Created(r.json()["ID"].as_str().unwrap().to_string())
            }
            Ok(r) => Outcome::Refused(r.status, r.message()),
            // The manager is gone: this one and every later one is unanswered.
            Err(_) => return,
        };
        history.lock().unwrap().get_mut(&name).unwrap().outcome = outcome;
    }
}

#[test]
fn kill_9_during_concurrent_creates_loses_no_acknowledged_secret() {
    let dir = support::short_tempdir("sg-crash");
    let mut m = Manager::start(dir.path());
    m.init_swarm(&[]);
    let next = Arc::new(AtomicUsize::new(0));
    let created = Arc::new(AtomicUsize::new(0));
    let history = Arc::new(Mutex::new(BTreeMap::new()));
    let threads: Vec<_> = (0..CLIENTS)
        .map(|_| {
            let (s, n, c, h) = (
                m.socket.clone(),
                next.clone(),
                created.clone(),
                history.clone(),
            );
            std::thread::spawn(move || client(s, n, c, h))
        })
        .collect();
    support::wait_until("creates answered", Duration::from_secs(120), || {
        created.load(Ordering::SeqCst) >= KILL_AFTER
    });
    m.kill9();
    for t in threads {
        t.join().unwrap();
    }

    let history = std::mem::take(&mut *history.lock().unwrap());
    let acked = history
        .values()
        .filter(|a| matches!(a.outcome, Outcome::Created(_)))
        .count();
    let in_flight = history
        .values()
        .filter(|a| a.outcome == Outcome::InFlight)
        .count();
    assert!(acked >= KILL_AFTER, "{acked} acknowledged");
    assert!(
        history.len() < CREATES,
        "the crash came after every create was sent: nothing was tested"
    );
    for (name, a) in &history {
        if let Outcome::Refused(status, msg) = &a.outcome {
            panic!("{name}: refused with {status} {msg} before the crash");
        }
    }
    let store = stored(dir.path());
    for (name, a) in &history {
        match (&a.outcome, store.get(name)) {
            (Outcome::Created(id), Some((sid, value))) => {
                assert_eq!(sid, id, "{name}: another ID than the one answered");
                assert_eq!(value, &a.value, "{name}: wrong value");
            }
            (Outcome::Created(_), None) => panic!("{name}: acknowledged but lost"),
            (Outcome::InFlight, Some((_, value))) => assert_eq!(value, &a.value, "{name}"),
            (Outcome::InFlight, None) => {}
            (Outcome::Refused(..), _) => unreachable!(),
        }
    }
    for name in store.keys() {
        assert!(history.contains_key(name), "{name} was never requested");
    }
    eprintln!(
        "history: {} sent, {acked} acknowledged, {in_flight} in flight at the crash, {} stored",
        history.len(),
        store.len()
    );

    // The manager comes back with the same secrets, and takes new ones.
    m.restart();
    let listed = m.docker_ok(&["secret", "ls", "--format", "{{.Name}}"]);
    assert_eq!(listed.lines().count(), store.len());
    let out = m.docker_with_stdin(&["secret", "create", "after", "-"], Some(b"after"));
    assert!(out.status.success());
}
