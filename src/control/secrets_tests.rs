//! Tests of `secrets.rs` that need a whole swarm (`swarm::init`): a sibling module, so that
//! `secrets` itself never imports `swarm` (which imports it).

use super::secrets::*;
use super::testing::{config, initialised};
use super::*;
use crate::store::Store;
use crate::store::{Check, Op};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use zeroize::Zeroizing;

fn spec(name: &str, data: &[u8]) -> SecretSpec {
    SecretSpec {
        name: name.into(),
        data: Some(Zeroizing::new(data.to_vec())),
        ..Default::default()
    }
}

/// Eight creates of one name (in different cases) at once: exactly one commits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_creates_of_one_name_leave_one_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ctl) = initialised(dir.path()).await;
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let ctl = ctl.clone();
            let name = if i % 2 == 0 { "db_pass" } else { "DB_pass" };
            tokio::spawn(async move { ctl.create_secret(spec(name, b"v")).await })
        })
        .collect();
    let mut won = 0;
    for t in tasks {
        match t.await.unwrap() {
            Ok(_) => won += 1,
            Err(e) => {
                assert_eq!(e.http_status(), 409, "{e}");
                assert!(e.to_string().ends_with("already exists"), "{e}");
            }
        }
    }
    assert_eq!(won, 1);
    let secrets = ctl.secrets().unwrap();
    assert_eq!(secrets.len(), 1);
    // Audit lines are written alongside the entry: each `secret_created` is the secret that
    // exists, or is followed by a `secret_create_failed` of the same ID; a create refused
    // before its write (the name already taken) left no line at all.
    let log = std::fs::read_to_string(dir.path().join(audit::LOG_FILE)).unwrap();
    let lines: Vec<serde_json::Value> = log
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |event: &str| -> Vec<String> {
        lines
            .iter()
            .filter(|l| l["event"] == event)
            .map(|l| l["secret_id"].as_str().unwrap().to_string())
            .collect()
    };
    let (created, failed) = (of("secret_created"), of("secret_create_failed"));
    let standing: Vec<&String> = created.iter().filter(|id| !failed.contains(id)).collect();
    assert_eq!(standing, vec![&secrets[0].record.id], "{log}");
    assert!(failed.iter().all(|id| created.contains(id)), "{log}");
    assert!(created.len() <= 8, "{log}");
    let again = ctl.create_secret(spec("db_pass", b"w")).await.unwrap_err();
    assert_eq!(again.http_status(), 409, "{again}");
    ctl.audit.synced().await;
    let after = std::fs::read_to_string(dir.path().join(audit::LOG_FILE)).unwrap();
    assert_eq!(
        after, log,
        "a create refused up front is not audited as made"
    );
    store.shutdown().await.unwrap();
}

/// The value is bound to its secret: a sealed value copied into another secret's record does
/// not open, and neither `Debug` nor the record's JSON holds it in clear.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sealed_values_are_bound_to_their_secret() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ctl) = initialised(dir.path()).await;
    let a = ctl.create_secret(spec("a", b"value-of-a")).await.unwrap();
    let b = ctl.create_secret(spec("b", b"value-of-b")).await.unwrap();
    assert_eq!(&ctl.open_secret(&a).unwrap()[..], b"value-of-a");
    let ra = ctl.secret_by_id(&a).unwrap().unwrap().record;
    let mut rb = ctl.secret_by_id(&b).unwrap().unwrap().record;
    rb.sealed_b64 = ra.sealed_b64.clone();
    assert!(ctl.open_record(&rb).is_err(), "a's value opened as b's");
    let mut newer = ra.clone();
    newer.data_version = 2;
    assert!(
        ctl.open_record(&newer).is_err(),
        "a value replayed as another version"
    );
    let shown = format!("{ra:?} {:?}", spec("a", b"value-of-a"));
    assert!(
        !shown.contains("value-of-a") && !shown.contains(&ra.sealed_b64),
        "{shown}"
    );
    let json = String::from_utf8(store.get(&secret_key(&a)).unwrap().value).unwrap();
    assert!(!json.contains("value-of-a") && !json.contains(&B64.encode("value-of-a")));
    store.shutdown().await.unwrap();
}

struct Uses(Vec<String>);
impl SecretUsers for Uses {
    fn services_using(&self, _: &Control, _: &str) -> Result<Vec<String>, ControlError> {
        Ok(self.0.clone())
    }
}

/// `rm` asks the registered users; a reference written after `rm` read "unused" makes its
/// delete fail the marker check, and a reference to a removed secret fails its own check.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removal_respects_references() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ctl) = initialised(dir.path()).await;
    let id = ctl.create_secret(spec("s", b"v")).await.unwrap();
    ctl.set_secret_users(Arc::new(Uses(vec!["web".into(), "worker".into()])));
    let err = ctl.remove_secret("s").await.unwrap_err();
    assert_eq!(
        err.to_string(),
        "rpc error: code = InvalidArgument desc = secret 's' is in use by the following services: web, worker"
    );
    ctl.set_secret_users(Arc::new(Uses(vec!["web".into()])));
    assert!(ctl
        .remove_secret("s")
        .await
        .unwrap_err()
        .to_string()
        .ends_with("following service: web"));
    ctl.set_secret_users(Arc::new(Uses(Vec::new())));

    // A service write carrying the guard, committed between rm's read and its write.
    let guard = ctl.secret_references(std::slice::from_ref(&id)).unwrap();
    let stale_marker = Check::Absent { key: ref_key(&id) };
    let txn = Txn {
        checks: guard.checks.clone(),
        ops: guard.ops.clone(),
    };
    assert!(matches!(
        ctl.apply(txn).await.unwrap(),
        TxnOutcome::Committed { .. }
    ));
    let view = ctl.secret_by_id(&id).unwrap().unwrap();
    let rm_as_read_before = Txn {
        checks: vec![
            Check::Version {
                key: secret_key(&id),
                version: view.version,
            },
            stale_marker,
        ],
        ops: vec![Op::Delete {
            key: secret_key(&id),
        }],
    };
    assert!(matches!(
        ctl.apply(rm_as_read_before).await.unwrap(),
        TxnOutcome::Conflict { .. }
    ));
    ctl.remove_secret(&id).await.unwrap();
    assert!(ctl.secret_by_id(&id).unwrap().is_none());
    assert!(store.get(&ref_key(&id)).is_none() && store.get(&name_key("s")).is_none());
    // The guard read before the removal no longer holds.
    let late = Txn {
        checks: guard.checks,
        ops: guard.ops,
    };
    assert!(matches!(
        ctl.apply(late).await.unwrap(),
        TxnOutcome::Conflict { .. }
    ));
    store.shutdown().await.unwrap();
}

/// A Raft snapshot holds secret records as the log does: sealed twice, the value in clear
/// nowhere in the data dir (raw, base64 or hex).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_hold_no_value_in_clear() {
    let dir = tempfile::tempdir().unwrap();
    let (store, ctl) = initialised(dir.path()).await;
    let value = b"SNAPSHOT-MARKER-5d1e0b-never-in-clear";
    ctl.create_secret(spec("snap", value)).await.unwrap();
    store.trigger_snapshot().await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    store.shutdown().await.unwrap();
    drop(ctl);
    let hex: String = value.iter().map(|b| format!("{b:02x}")).collect();
    let needles = [
        value.to_vec(),
        B64.encode(value).into_bytes(),
        hex.into_bytes(),
    ];
    let mut stack = vec![dir.path().to_path_buf()];
    let mut files = 0;
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            files += 1;
            let data = std::fs::read(&p).unwrap();
            for n in &needles {
                assert!(
                    !data.windows(n.len()).any(|w| w == &n[..]),
                    "value in {}",
                    p.display()
                );
            }
        }
    }
    assert!(files >= 4);
    // The store reopens from the snapshot and the log, and the value still opens.
    let store = Store::open(dir.path()).await.unwrap();
    let ctl = Control::open(store.clone(), config(dir.path())).unwrap();
    let id = ctl.secret("snap").unwrap().record.id;
    assert_eq!(&ctl.open_secret(&id).unwrap()[..], value);
    store.shutdown().await.unwrap();
}

#[test]
fn names_follow_swarmkit() {
    for ok in ["a", "db_pass", "a.b-c_d", "A1", &"x".repeat(64)] {
        assert!(check_name(ok).is_ok(), "{ok}");
    }
    for bad in [
        "",
        "-a",
        "a-",
        "_a",
        "a_",
        ".a",
        "a.",
        "a b",
        "a/b",
        "é",
        &"x".repeat(65),
    ] {
        assert_eq!(check_name(bad).unwrap_err().http_status(), 400, "{bad}");
    }
}
