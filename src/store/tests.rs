//! Store tests. Latency numbers: `cargo test --release -p swarmguard store::tests::sequential_applies -- --nocapture`.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::*;

fn put(key: &str, value: &[u8]) -> Op {
    Op::Put {
        key: key.to_owned(),
        value: value.to_vec(),
    }
}

fn txn(ops: Vec<Op>) -> Txn {
    Txn {
        checks: vec![],
        ops,
    }
}

async fn committed(store: &Store, t: Txn) -> u64 {
    match store.apply(t).await.expect("apply") {
        TxnOutcome::Committed { index } => index,
        other => panic!("expected commit, got {other:?}"),
    }
}

fn small_opts() -> StoreOptions {
    StoreOptions {
        snapshot_every: 50,
        keep_logs_after_snapshot: 10,
        ..Default::default()
    }
}

fn all_files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(all_files(&p));
        } else {
            out.push(p);
        }
    }
    out
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

fn positions(hay: &[u8], needle: &[u8]) -> Vec<usize> {
    hay.windows(needle.len())
        .enumerate()
        .filter(|(_, w)| *w == needle)
        .map(|(i, _)| i)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn apply_get_list_and_conflicts() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let mut sub = store.subscribe();

    let i1 = committed(
        &store,
        txn(vec![put("node/a", b"A1"), put("node/b", b"B1")]),
    )
    .await;
    let a = store.get("node/a").unwrap();
    assert_eq!(
        (a.version, a.created, a.value.as_slice()),
        (i1, i1, &b"A1"[..])
    );
    let n = sub.recv().await.unwrap();
    assert_eq!(
        n,
        Applied {
            index: i1,
            keys: vec!["node/a".into(), "node/b".into()]
        }
    );

    // Version check passes, version and created behave.
    let i2 = committed(
        &store,
        Txn {
            checks: vec![Check::Version {
                key: "node/a".into(),
                version: i1,
            }],
            ops: vec![put("node/a", b"A2")],
        },
    )
    .await;
    assert!(i2 > i1);
    let a = store.get("node/a").unwrap();
    assert_eq!(
        (a.version, a.created, a.value.as_slice()),
        (i2, i1, &b"A2"[..])
    );

    // Stale version: conflict and nothing written, not even the other op.
    let out = store
        .apply(Txn {
            checks: vec![Check::Version {
                key: "node/a".into(),
                version: i1,
            }],
            ops: vec![put("node/a", b"A3"), put("node/z", b"Z")],
        })
        .await
        .unwrap();
    assert_eq!(
        out,
        TxnOutcome::Conflict {
            key: "node/a".into()
        }
    );
    assert_eq!(store.get("node/a").unwrap().value, b"A2");
    assert!(store.get("node/z").is_none());

    // Absent / Present.
    let out = store
        .apply(Txn {
            checks: vec![Check::Absent {
                key: "node/b".into(),
            }],
            ops: vec![put("node/b", b"x")],
        })
        .await
        .unwrap();
    assert_eq!(
        out,
        TxnOutcome::Conflict {
            key: "node/b".into()
        }
    );
    let out = store
        .apply(Txn {
            checks: vec![Check::Present {
                key: "node/c".into(),
            }],
            ops: vec![put("node/c", b"x")],
        })
        .await
        .unwrap();
    assert_eq!(
        out,
        TxnOutcome::Conflict {
            key: "node/c".into()
        }
    );
    let i3 = committed(
        &store,
        Txn {
            checks: vec![
                Check::Absent {
                    key: "node/c".into(),
                },
                Check::Present {
                    key: "node/b".into(),
                },
            ],
            ops: vec![put("node/c", b"C"), put("cluster/default", b"{}")],
        },
    )
    .await;
    assert_eq!(store.get("node/c").unwrap().version, i3);
    // A version check on a missing key fails.
    let out = store
        .apply(Txn {
            checks: vec![Check::Version {
                key: "nope".into(),
                version: 1,
            }],
            ops: vec![],
        })
        .await
        .unwrap();
    assert_eq!(out, TxnOutcome::Conflict { key: "nope".into() });

    // Delete.
    let i4 = committed(
        &store,
        txn(vec![Op::Delete {
            key: "node/b".into(),
        }]),
    )
    .await;
    assert!(store.get("node/b").is_none());
    // Re-creating starts a new `created`.
    let i5 = committed(&store, txn(vec![put("node/b", b"B2")])).await;
    let b = store.get("node/b").unwrap();
    assert_eq!((b.version, b.created), (i5, i5));
    assert!(i5 > i4);

    // list: prefix, sorted.
    let keys: Vec<String> = store.list("node/").into_iter().map(|(k, _)| k).collect();
    assert_eq!(keys, vec!["node/a", "node/b", "node/c"]);
    assert_eq!(store.list("cluster/").len(), 1);
    assert_eq!(store.list("").len(), 4);
    assert!(store.list("zzz").is_empty());

    // Subscribers saw every committed txn, in order, and no conflicts.
    let mut seen = vec![];
    while let Ok(n) = sub.try_recv() {
        seen.push(n.index);
    }
    assert_eq!(seen, vec![i2, i3, i4, i5]);

    // Invalid keys.
    assert!(matches!(
        store.apply(txn(vec![put("", b"x")])).await,
        Err(StoreError::InvalidKey { .. })
    ));
    assert!(matches!(
        store.apply(txn(vec![put("a\nb", b"x")])).await,
        Err(StoreError::InvalidKey { .. })
    ));
    store.shutdown().await.unwrap();
}

/// Audit finding 2: every lost version race used to be appended to the log (a renewal flood
/// wrote each retry of a ~400 KB record). A transaction whose checks already fail is answered
/// without a log entry; the log file does not grow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conflicting_transactions_never_reach_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let v = committed(&store, txn(vec![put("node/a", b"A1")])).await;
    let v2 = committed(&store, txn(vec![put("node/a", b"A2")])).await;
    let wal = dir.path().join("store/raft-log.wal");
    let last_log = || store.inner.raft.metrics().borrow().last_log_index;
    let (index_before, size_before) = (last_log(), std::fs::metadata(&wal).unwrap().len());
    let big = vec![7u8; 256 * 1024];
    for check in [
        Check::Version {
            key: "node/a".into(),
            version: v,
        },
        Check::Absent {
            key: "node/a".into(),
        },
        Check::Present {
            key: "node/none".into(),
        },
    ] {
        for _ in 0..20 {
            let out = store
                .apply(Txn {
                    checks: vec![check.clone()],
                    ops: vec![put("node/a", &big)],
                })
                .await
                .unwrap();
            assert!(matches!(out, TxnOutcome::Conflict { .. }), "{out:?}");
        }
    }
    assert_eq!(last_log(), index_before, "a conflict was proposed to raft");
    assert_eq!(std::fs::metadata(&wal).unwrap().len(), size_before);
    assert_eq!(store.get("node/a").unwrap().value, b"A2");
    // A passing check still commits, and is still checked where it applies.
    let v3 = committed(
        &store,
        Txn {
            checks: vec![Check::Version {
                key: "node/a".into(),
                version: v2,
            }],
            ops: vec![put("node/a", b"A3")],
        },
    )
    .await;
    assert_eq!(store.get("node/a").unwrap().version, v3);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn versions_are_raft_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let mut last = 0;
    for i in 0..20u32 {
        let idx = committed(&store, txn(vec![put(&format!("k/{i}"), &i.to_le_bytes())])).await;
        // One entry per apply: consecutive raft log indexes.
        if last != 0 {
            assert_eq!(idx, last + 1);
        }
        last = idx;
        assert_eq!(store.get(&format!("k/{i}")).unwrap().version, idx);
    }
    // The metrics catch up with the state machine; nothing beyond `last` was applied.
    let m = store
        .inner
        .raft
        .wait(Some(Duration::from_secs(5)))
        .applied_index(Some(last), "applied")
        .await
        .unwrap();
    assert_eq!(m.last_log_index, Some(last));
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reopen_after_clean_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let id = store.node_id();
    let mut expect = vec![];
    for i in 0..30u32 {
        let idx = committed(
            &store,
            txn(vec![put(&format!("k/{i:03}"), format!("v{i}").as_bytes())]),
        )
        .await;
        expect.push((format!("k/{i:03}"), idx));
    }
    committed(
        &store,
        txn(vec![Op::Delete {
            key: "k/000".into(),
        }]),
    )
    .await;
    store.shutdown().await.unwrap();

    let store = Store::open(dir.path()).await.unwrap();
    assert_eq!(store.node_id(), id, "node id is stable");
    assert!(store.get("k/000").is_none());
    for (k, idx) in &expect[1..] {
        let v = store.get(k).unwrap();
        assert_eq!(v.version, *idx);
    }
    // Writes continue after the old ones.
    let next = committed(&store, txn(vec![put("after", b"x")])).await;
    assert!(next > expect.last().unwrap().1);
    store.shutdown().await.unwrap();
}

/// Opens the store again, retrying while the crashed instance's threads still hold the files.
async fn reopen_retrying(dir: &Path, opts: StoreOptions) -> Store {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match Store::open_with(dir, opts.clone()).await {
            Ok(s) => return s,
            Err(StoreError::Database {
                source: redb::Error::DatabaseAlreadyOpen,
                ..
            }) if Instant::now() < deadline => tokio::time::sleep(Duration::from_millis(20)).await,
            Err(e) => panic!("reopen failed: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn crash_without_shutdown_keeps_acknowledged_writes() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().to_path_buf();
    // Run the first instance on its own runtime and kill that runtime without any shutdown, while
    // writes are still being submitted: the closest in-process stand-in for `kill -9`.
    let acked = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let acked = rt.block_on(async {
            let store = Store::open_with(&path, small_opts()).await.unwrap();
            let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
            for w in 0..4u32 {
                let s = store.clone();
                let tx = tx.clone();
                tokio::spawn(async move {
                    for i in 0.. {
                        let key = format!("w{w}/{i}");
                        if let Ok(TxnOutcome::Committed { index }) = s
                            .apply(txn(vec![put(&key, format!("val-{i}").as_bytes())]))
                            .await
                        {
                            let _ = tx.send((key, index));
                        }
                    }
                });
            }
            let mut acked = vec![];
            while acked.len() < 300 {
                acked.push(rx.recv().await.unwrap());
            }
            acked
        });
        rt.shutdown_background();
        acked
    })
    .join()
    .unwrap();

    let store = reopen_retrying(dir.path(), small_opts()).await;
    for (k, idx) in &acked {
        let v = store
            .get(k)
            .unwrap_or_else(|| panic!("acknowledged write {k} lost"));
        assert!(v.version >= *idx);
    }
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_in_clear_on_disk() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_with(dir.path(), small_opts()).await.unwrap();
    let marker = b"MARKER-8f1c2e-do-not-leak";
    committed(&store, txn(vec![put("secret/s1", marker)])).await;
    // Enough writes to produce a snapshot and purge the log.
    for i in 0..120u32 {
        committed(&store, txn(vec![put(&format!("other/{i}"), &[b'z'; 64])])).await;
    }
    store.trigger_snapshot().await.unwrap();
    store
        .inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.is_some() && m.purged.is_some(),
            "snapshot and purge",
        )
        .await
        .unwrap();
    for f in [
        "store/raft-log.redb",
        "store/raft-log.wal",
        "store/state.redb",
        "keys/dek",
    ] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(f))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600, "{f}");
    }
    for d in ["store", "keys"] {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join(d))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o700, "{d}");
    }
    let dek = swarmguard_secrets::keyfile::load_dek(&dir.path().join("keys/dek")).unwrap();
    let dek_bytes = *dek.expose_bytes();
    let check = |when: &str| {
        let files = all_files(dir.path());
        assert!(files.len() >= 3, "{files:?}");
        for f in files {
            let data = std::fs::read(&f).unwrap();
            assert!(
                !contains(&data, marker),
                "{when}: marker in clear in {}",
                f.display()
            );
            if !f.ends_with("keys/dek") {
                assert!(
                    !contains(&data, &dek_bytes),
                    "{when}: DEK bytes in {}",
                    f.display()
                );
                assert!(
                    !contains(&data, &dek_bytes[..16]),
                    "{when}: DEK prefix in {}",
                    f.display()
                );
            }
        }
    };
    check("running");
    store.shutdown().await.unwrap();
    check("after shutdown");
    let store = Store::open(dir.path()).await.unwrap();
    assert_eq!(store.get("secret/s1").unwrap().value, marker);
    store.shutdown().await.unwrap();
}

const KV: redb::TableDefinition<&str, &[u8]> = redb::TableDefinition::new("kv");
const LOG: redb::TableDefinition<u64, &[u8]> = redb::TableDefinition::new("log");

/// `(index, body offset, body length)` of every record in a raft log file (see wal.rs).
fn wal_records(path: &Path) -> Vec<(u64, usize, usize)> {
    let raw = std::fs::read(path).unwrap();
    let mut at = 8;
    let mut out = vec![];
    while at + 20 <= raw.len() {
        let len = u32::from_le_bytes(raw[at..at + 4].try_into().unwrap()) as usize;
        let index = u64::from_le_bytes(raw[at + 4..at + 12].try_into().unwrap());
        out.push((index, at + 20, len));
        at += 20 + len;
    }
    out
}

fn sealed_kv(dir: &Path, key: &str) -> Vec<u8> {
    use redb::ReadableDatabase;
    let db = redb::Database::open(dir.join("store/state.redb")).unwrap();
    let tx = db.begin_read().unwrap();
    let t = tx.open_table(KV).unwrap();
    let v = t.get(key).unwrap().unwrap().value().to_vec();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tampered_file_byte_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    committed(&store, txn(vec![put("victim", &[b'v'; 200])])).await;
    store.shutdown().await.unwrap();

    let sealed = sealed_kv(dir.path(), "victim");
    let file = dir.path().join("store/state.redb");
    let mut raw = std::fs::read(&file).unwrap();
    let pos = positions(&raw, &sealed);
    assert!(!pos.is_empty(), "sealed record not found in file");
    for p in pos {
        raw[p + sealed.len() / 2] ^= 0x40;
    }
    std::fs::write(&file, &raw).unwrap();

    let err = Store::open(dir.path())
        .await
        .err()
        .expect("tampered store must not open");
    let msg = err.to_string();
    eprintln!("tampered byte -> {msg}");
    assert!(
        matches!(&err, StoreError::Sealed { record, .. } if record == "sm/victim")
            || matches!(&err, StoreError::Database { .. }),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swapped_records_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    committed(
        &store,
        txn(vec![put("a", b"value-a"), put("b", b"value-b")]),
    )
    .await;
    committed(&store, txn(vec![put("c", b"value-c")])).await;
    store.shutdown().await.unwrap();

    // Copy key a's sealed record over key b.
    let sealed_a = sealed_kv(dir.path(), "a");
    {
        let db = redb::Database::open(dir.path().join("store/state.redb")).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(KV)
            .unwrap()
            .insert("b", sealed_a.as_slice())
            .unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(dir.path())
        .await
        .err()
        .expect("swapped record must be rejected");
    eprintln!("swapped kv record -> {err}");
    assert!(
        matches!(&err, StoreError::Sealed { record, source: swarmguard_secrets::SealError::Authentication } if record == "sm/b")
    );
    assert!(err.to_string().contains("restore from a backup"));

    // Restore b, then move a log entry to another index.
    let dir2 = tempfile::tempdir().unwrap();
    let store = Store::open(dir2.path()).await.unwrap();
    let i = committed(&store, txn(vec![put("x", b"1")])).await;
    committed(&store, txn(vec![put("x", b"2")])).await;
    store.shutdown().await.unwrap();
    {
        // Same-length bodies: copy entry i's sealed body, with its (unkeyed) body check, over
        // entry i+1's; only the AEAD's binding to the index can catch that.
        let wal = dir2.path().join("store/raft-log.wal");
        let recs = wal_records(&wal);
        let (_, from, flen) = *recs.iter().find(|r| r.0 == i).unwrap();
        let (_, to, tlen) = *recs.iter().find(|r| r.0 == i + 1).unwrap();
        assert_eq!(flen, tlen);
        let mut raw = std::fs::read(&wal).unwrap();
        let body = raw[from - 4..from + flen].to_vec();
        raw[to - 4..to + tlen].copy_from_slice(&body);
        std::fs::write(&wal, &raw).unwrap();
    }
    let err = Store::open(dir2.path())
        .await
        .err()
        .expect("moved log entry must be rejected");
    eprintln!("moved log entry -> {err}");
    assert!(
        matches!(&err, StoreError::Sealed { record, .. } if *record == format!("log/{}", i + 1))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_or_exposed_key_file_refused() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    committed(&store, txn(vec![put("a", b"1")])).await;
    store.shutdown().await.unwrap();
    let key = dir.path().join("keys/dek");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let err = Store::open(dir.path()).await.err().unwrap();
    assert!(matches!(err, StoreError::Key(_)), "{err}");
    assert!(err.to_string().contains("chmod 600"));
    // A missing key with existing data is refused, and no new key is made.
    std::fs::remove_file(&key).unwrap();
    let err = Store::open(dir.path()).await.err().unwrap();
    assert!(matches!(err, StoreError::MissingKey { .. }), "{err}");
    assert!(!key.exists());
    // Another key: every record fails authentication.
    swarmguard_secrets::keyfile::load_or_create_dek(&key).unwrap();
    let err = Store::open(dir.path()).await.err().unwrap();
    eprintln!("wrong key -> {err}");
    assert!(matches!(err, StoreError::Sealed { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_refused_without_state_change() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let before = committed(&store, txn(vec![put("a", b"1")])).await;
    let err = store
        .apply(txn(vec![put("big", &vec![0u8; MAX_VALUE_BYTES + 1])]))
        .await
        .unwrap_err();
    assert!(
        matches!(err, StoreError::ValueTooLarge { size, .. } if size == MAX_VALUE_BYTES + 1),
        "{err}"
    );
    let ops: Vec<Op> = (0..5)
        .map(|i| put(&format!("big/{i}"), &vec![1u8; MAX_VALUE_BYTES]))
        .collect();
    let err = store.apply(txn(ops)).await.unwrap_err();
    assert!(matches!(err, StoreError::TxnTooLarge { .. }), "{err}");
    eprintln!("{err}");
    assert!(store.get("big").is_none());
    assert!(store.list("big/").is_empty());
    // Nothing reached the log: the next write is the very next index.
    let after = committed(&store, txn(vec![put("b", b"2")])).await;
    assert_eq!(after, before + 1);
    // Exactly the limit is fine.
    committed(&store, txn(vec![put("max", &vec![7u8; MAX_VALUE_BYTES])])).await;
    assert_eq!(store.get("max").unwrap().value.len(), MAX_VALUE_BYTES);
    store.shutdown().await.unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    assert_eq!(store.get("max").unwrap().value.len(), MAX_VALUE_BYTES);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_purge_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        compact_log_after_purged: 100,
        ..small_opts()
    };
    let store = Store::open_with(dir.path(), opts).await.unwrap();
    for i in 0..300u32 {
        committed(
            &store,
            txn(vec![put(&format!("k/{}", i % 40), &i.to_le_bytes())]),
        )
        .await;
    }
    let m = store
        .inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= 250) && m.purged.is_some(),
            "snapshot",
        )
        .await
        .unwrap();
    eprintln!("snapshot at {:?}, purged up to {:?}", m.snapshot, m.purged);
    let snap = store
        .inner
        .raft
        .get_snapshot()
        .await
        .unwrap()
        .expect("a current snapshot");
    let data = snap.snapshot.into_inner();
    assert!(!data.is_empty());
    let state: Vec<(String, Versioned)> = store.list("");
    store.shutdown().await.unwrap();

    // Only the kept tail of the log remains on disk (the file is rewritten after purges).
    {
        let n = wal_records(&dir.path().join("store/raft-log.wal")).len();
        assert!(n < 120, "log has {n} entries after purge");
    }
    let store = Store::open_with(dir.path(), small_opts()).await.unwrap();
    assert_eq!(store.list(""), state);
    let snap = store
        .inner
        .raft
        .get_snapshot()
        .await
        .unwrap()
        .expect("snapshot survives restart");
    assert!(snap.meta.last_log_id.is_some());
    committed(&store, txn(vec![put("after", b"1")])).await;
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn install_snapshot_replaces_state() {
    let src_dir = tempfile::tempdir().unwrap();
    let src = Store::open(src_dir.path()).await.unwrap();
    committed(&src, txn(vec![put("a", b"A"), put("b", b"B")])).await;
    src.trigger_snapshot().await.unwrap();
    src.inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.snapshot.is_some(), "snapshot")
        .await
        .unwrap();
    let snap = src.inner.raft.get_snapshot().await.unwrap().unwrap();
    src.shutdown().await.unwrap();

    // Feed it straight into another state machine (what a follower does), with a different DEK.
    let dst_dir = tempfile::tempdir().unwrap();
    let dek = std::sync::Arc::new(swarmguard_secrets::DataKey::generate().unwrap());
    let shared = std::sync::Arc::new(Shared::new(16));
    let mut sm = StateMachine::open(
        &dst_dir.path().join("state.redb"),
        dek.clone(),
        shared.clone(),
    )
    .unwrap();
    let mut rx = shared.tx.subscribe();
    {
        use openraft::storage::RaftStateMachine;
        sm.install_snapshot(&snap.meta, snap.snapshot)
            .await
            .unwrap();
        let (applied, _) = sm.applied_state().await.unwrap();
        assert_eq!(applied, snap.meta.last_log_id);
        let cur = sm.get_current_snapshot().await.unwrap().unwrap();
        assert_eq!(cur.meta.snapshot_id, snap.meta.snapshot_id);
    }
    assert_eq!(lock_read(&shared.map).get("a").unwrap().value, b"A");
    assert_eq!(
        rx.try_recv().unwrap().keys,
        vec!["a".to_string(), "b".to_string()]
    );
    drop(sm);
    // And it survives a reopen of that state machine.
    let shared2 = std::sync::Arc::new(Shared::new(1));
    let _sm = StateMachine::open(&dst_dir.path().join("state.redb"), dek, shared2.clone()).unwrap();
    assert_eq!(lock_read(&shared2.map).get("b").unwrap().value, b"B");
}

fn percentiles(lat: &mut [Duration]) -> String {
    lat.sort();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    format!(
        "p50 {:?}, p90 {:?}, p99 {:?}, max {:?}",
        pct(0.50),
        pct(0.90),
        pct(0.99),
        lat[lat.len() - 1]
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequential_applies() {
    let base = std::env::var_os("SWARMGUARD_BENCH_DIR").map(PathBuf::from);
    let dir = match &base {
        Some(b) => tempfile::tempdir_in(b).unwrap(),
        None => tempfile::tempdir().unwrap(),
    };
    let store = Store::open(dir.path()).await.unwrap();
    let value = vec![b'x'; 256];
    let mut lat = Vec::with_capacity(1000);
    let start = Instant::now();
    for i in 0..1000u32 {
        let t0 = Instant::now();
        committed(&store, txn(vec![put(&format!("node/{}", i % 100), &value)])).await;
        lat.push(t0.elapsed());
    }
    let total = start.elapsed();
    println!(
        "1000 sequential applies (256-byte values) in {:?} under {}: {}",
        total,
        dir.path().display(),
        percentiles(&mut lat)
    );

    // Same volume from 8 concurrent writers: openraft batches them into shared fsyncs.
    let start = Instant::now();
    let mut tasks = vec![];
    for w in 0..8u32 {
        let s = store.clone();
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = vec![];
            for i in 0..125u32 {
                let t0 = Instant::now();
                committed(&s, txn(vec![put(&format!("c{w}/{i}"), &value)])).await;
                lat.push(t0.elapsed());
            }
            lat
        }));
    }
    let mut lat = vec![];
    for t in tasks {
        lat.extend(t.await.unwrap());
    }
    println!(
        "1000 applies from 8 concurrent writers in {:?}: {}",
        start.elapsed(),
        percentiles(&mut lat)
    );

    // For scale: one bare redb write transaction with Durability::Immediate on the same disk.
    let db = redb::Database::create(dir.path().join("bench.redb")).unwrap();
    let mut lat = vec![];
    for i in 0..200u64 {
        let t0 = Instant::now();
        let tx = db.begin_write().unwrap();
        tx.open_table(LOG)
            .unwrap()
            .insert(i, value.as_slice())
            .unwrap();
        tx.commit().unwrap();
        lat.push(t0.elapsed());
    }
    println!("bare redb fsync'd commit: {}", percentiles(&mut lat));
    assert_eq!(store.list("node/").len(), 100);
    assert_eq!(store.list("c").len(), 1000);
    store.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn log_file_is_compacted_after_purges() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        snapshot_every: 100,
        keep_logs_after_snapshot: 0,
        compact_log_after_purged: 150,
        ..Default::default()
    };
    let store = Store::open_with(dir.path(), opts).await.unwrap();
    let log_file = dir.path().join("store/raft-log.wal");
    let mut peak = 0;
    for i in 0..400u32 {
        committed(
            &store,
            txn(vec![put(&format!("k/{}", i % 10), &[b'q'; 4096])]),
        )
        .await;
        peak = peak.max(std::fs::metadata(&log_file).unwrap().len());
    }
    store
        .inner
        .raft
        .wait(Some(Duration::from_secs(10)))
        .metrics(|m| m.purged.is_some_and(|p| p.index >= 300), "purge")
        .await
        .unwrap();
    let compactions = store.inner.log_compactions.load(Ordering::Relaxed);
    let now = std::fs::metadata(&log_file).unwrap().len();
    eprintln!("log file peak {peak} bytes, now {now} bytes, {compactions} compactions");
    assert!(compactions >= 1);
    store.shutdown().await.unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    assert_eq!(store.list("k/").len(), 10);
    store.shutdown().await.unwrap();
}

/// Flipping any byte of either store file must give `Ok` (the byte was unused) or a clear error,
/// never a panic or a hang.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_corruption_never_panics() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    for i in 0..30u32 {
        committed(
            &store,
            txn(vec![put(
                &format!("k/{i}"),
                format!("value-{i}").as_bytes(),
            )]),
        )
        .await;
    }
    store.shutdown().await.unwrap();
    let pristine = tempfile::tempdir().unwrap();
    const FILES: [&str; 3] = [
        "store/raft-log.redb",
        "store/raft-log.wal",
        "store/state.redb",
    ];
    for f in FILES {
        std::fs::create_dir_all(pristine.path().join("store")).unwrap();
        std::fs::copy(dir.path().join(f), pristine.path().join(f)).unwrap();
    }
    let (mut ok, mut errs) = (0, 0);
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    for trial in 0..36 {
        let f = FILES[trial % 3];
        for g in FILES {
            std::fs::copy(pristine.path().join(g), dir.path().join(g)).unwrap();
        }
        let path = dir.path().join(f);
        let mut raw = std::fs::read(&path).unwrap();
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        let pos = (seed % raw.len() as u64) as usize;
        raw[pos] ^= 0xff;
        std::fs::write(&path, &raw).unwrap();
        let opts = StoreOptions {
            leader_timeout: Duration::from_secs(5),
            ..Default::default()
        };
        match Store::open_with(dir.path(), opts).await {
            Ok(s) => {
                ok += 1;
                s.shutdown().await.unwrap();
            }
            Err(e) => {
                errs += 1;
                eprintln!("{f} byte {pos}: {e}");
            }
        }
    }
    eprintln!("random corruption: {ok} opened (unused bytes), {errs} clear errors");
}

const CRASH_DIR_ENV: &str = "SWARMGUARD_STORE_CRASH_CHILD_DIR";

/// Child process of [`kill_9_keeps_acknowledged_writes`]: writes until killed, printing one
/// `ACK <key> <index>` line per acknowledged write.
#[test]
#[ignore = "helper process, run by kill_9_keeps_acknowledged_writes"]
fn crash_child() {
    let Some(dir) = std::env::var_os(CRASH_DIR_ENV) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        let store = Store::open_with(Path::new(&dir), small_opts())
            .await
            .unwrap();
        println!("READY");
        let mut tasks = vec![];
        for w in 0..3u32 {
            let s = store.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0u64.. {
                    let key = format!("w{w}/{i}");
                    let out = s
                        .apply(txn(vec![put(&key, format!("val-{i}").as_bytes())]))
                        .await;
                    if let Ok(TxnOutcome::Committed { index }) = out {
                        println!("ACK {key} {index}");
                    }
                }
            }));
        }
        for t in tasks {
            let _ = t.await;
        }
    });
}

/// A real `kill -9` (SIGKILL) of a process that is writing: every write it acknowledged is there
/// after reopening.
#[test]
fn kill_9_keeps_acknowledged_writes() {
    use std::io::BufRead;
    use std::process::{Command, Stdio};
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args([
            "store::tests::crash_child",
            "--exact",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CRASH_DIR_ENV, dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut acked = vec![];
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix("ACK ") {
            let mut it = rest.split(' ');
            let key = it.next().unwrap().to_owned();
            let index: u64 = it.next().unwrap().parse().unwrap();
            acked.push((key, index));
            if acked.len() >= 400 {
                break;
            }
        }
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(acked.len() >= 400, "child stopped early");

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let store = Store::open_with(dir.path(), small_opts()).await.unwrap();
        for (k, idx) in &acked {
            let v = store
                .get(k)
                .unwrap_or_else(|| panic!("acknowledged write {k}@{idx} lost after kill -9"));
            assert_eq!(v.version, *idx);
        }
        let total = store.list("w").len();
        eprintln!(
            "kill -9: {} acknowledged writes all present ({} keys on disk)",
            acked.len(),
            total
        );
        store.shutdown().await.unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_open_releases_the_files() {
    let dir = tempfile::tempdir().unwrap();
    let opts = StoreOptions {
        leader_timeout: Duration::ZERO,
        ..Default::default()
    };
    match Store::open_with(dir.path(), opts).await {
        Err(StoreError::Timeout { .. }) => {}
        Err(e) => panic!("unexpected error {e}"),
        Ok(s) => s.shutdown().await.unwrap(), // became leader instantly; still fine
    }
    let store = Store::open(dir.path()).await.unwrap();
    committed(&store, txn(vec![put("a", b"1")])).await;
    store.shutdown().await.unwrap();
}

/// Before a transport is installed (one manager, or one not yet in a swarm), every peer is
/// unreachable, which openraft treats as "back off and retry".
#[tokio::test]
async fn network_without_transport_reports_every_peer_unreachable() {
    use openraft::error::RPCError;
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    let mut factory = network::Peers {
        slot: std::sync::Arc::new(network::TransportSlot::default()),
    };
    let mut client = factory
        .new_client(7, &BasicNode::new("10.0.0.7:4242"))
        .await;
    let vote = openraft::raft::VoteRequest::new(openraft::Vote::new(1, 1), None);
    let err = client
        .vote(vote, RPCOption::new(Duration::from_secs(1)))
        .await
        .unwrap_err();
    assert!(matches!(err, RPCError::Unreachable(_)), "{err}");
    let msg = err.to_string();
    assert!(
        msg.contains("no transport to raft node 7") && msg.contains("10.0.0.7:4242"),
        "{msg}"
    );
}

/// A malformed frame from a peer is refused as malformed, never applied or panicking.
#[tokio::test]
async fn malformed_raft_frames_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    for rpc in [
        Rpc::AppendEntries,
        Rpc::Vote,
        Rpc::InstallSnapshot,
        Rpc::Forward,
    ] {
        for json in [
            &b""[..],
            b"{",
            b"[]",
            b"{\"Write\":{\"checks\":7}}",
            &[0xff; 64][..],
        ] {
            let frame = Frame {
                json: json.to_vec(),
                data: vec![1, 2, 3],
            };
            let err = store.serve(rpc, frame).await.unwrap_err();
            assert!(matches!(err, StoreError::Encode { .. }), "{rpc:?}: {err}");
        }
    }
    store.shutdown().await.unwrap();
}

/// A data directory from before the append-only log file (entries in raft-log.redb's `log`
/// table) opens with every entry, moved into the file; a move a crash interrupted is finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_in_the_old_log_table_are_moved_into_the_file() {
    for interrupted in [false, true] {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        for i in 0..20u32 {
            committed(&store, txn(vec![put(&format!("m/{i}"), b"v")])).await;
        }
        store.shutdown().await.unwrap();
        // Rebuild the old layout: every record into the table, the file gone (or, for an
        // interrupted move, still holding the first half).
        let wal = dir.path().join("store/raft-log.wal");
        let raw = std::fs::read(&wal).unwrap();
        let recs = wal_records(&wal);
        {
            let db = redb::Database::open(dir.path().join("store/raft-log.redb")).unwrap();
            let tx = db.begin_write().unwrap();
            {
                let mut t = tx.open_table(LOG).unwrap();
                for (index, at, len) in &recs {
                    t.insert(*index, &raw[*at..*at + *len]).unwrap();
                }
            }
            tx.commit().unwrap();
        }
        if interrupted {
            let (_, at, len) = recs[recs.len() / 2];
            std::fs::write(&wal, &raw[..at + len]).unwrap();
        } else {
            std::fs::remove_file(&wal).unwrap();
        }
        // The state file alone must not hide a lost log: make it re-apply everything.
        std::fs::remove_file(dir.path().join("store/state.redb")).unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        assert_eq!(store.list("m/").len(), 20, "interrupted={interrupted}");
        store.shutdown().await.unwrap();
        assert_eq!(wal_records(&wal).len(), recs.len());
    }
}

/// Writes that arrive together share Raft entries (one append and fsync each), and each keeps
/// its own outcome: every distinct create commits, exactly one of sixteen creates of one key
/// does, and every committed value carries the index it was acknowledged with.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_writes_share_entries_and_keep_their_own_checks() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let create = |key: String, value: Vec<u8>| Txn {
        checks: vec![Check::Absent { key: key.clone() }],
        ops: vec![Op::Put { key, value }],
    };
    let tasks: Vec<_> = (0..80u32)
        .map(|i| {
            let (store, key) = match i % 5 {
                0 => (store.clone(), "batch/dup".to_string()),
                _ => (store.clone(), format!("batch/{i}")),
            };
            let t = create(key.clone(), i.to_le_bytes().to_vec());
            tokio::spawn(async move { (key, i, store.apply(t).await.unwrap()) })
        })
        .collect();
    let mut indexes = std::collections::BTreeSet::new();
    let mut dup_won = Vec::new();
    for t in tasks {
        let (key, i, out) = t.await.unwrap();
        match (key.as_str(), out) {
            ("batch/dup", TxnOutcome::Committed { index }) => dup_won.push((i, index)),
            ("batch/dup", TxnOutcome::Conflict { key }) => assert_eq!(key, "batch/dup"),
            (_, TxnOutcome::Committed { index }) => {
                let v = store.get(&key).unwrap();
                assert_eq!((v.version, v.value), (index, i.to_le_bytes().to_vec()));
                indexes.insert(index);
            }
            (_, other) => panic!("{key}: {other:?}"),
        }
    }
    assert_eq!(dup_won.len(), 1, "{dup_won:?}");
    let (i, index) = dup_won[0];
    let v = store.get("batch/dup").unwrap();
    assert_eq!((v.version, v.value), (index, i.to_le_bytes().to_vec()));
    assert!(
        indexes.len() < 64,
        "64 concurrent writes took {} entries: none were batched",
        indexes.len()
    );
    println!("64 concurrent writes took {} raft entries", indexes.len());
    store.shutdown().await.unwrap();
}

/// A subscriber of some prefixes hears only of writes that touch them (a whole key is a prefix
/// too), in order; one of everything hears of every write. Subscribers of the same prefixes
/// share a channel, and a channel nobody listens to is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_subscribers_hear_only_of_their_records() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).await.unwrap();
    let mut all = store.subscribe();
    let mut nodes = store.subscribe_to(&["node/", "cluster/default"]);
    let mut nodes2 = store.subscribe_to(&["node/", "cluster/default"]);
    let mut secrets = store.subscribe_to(&["secret/"]);
    let i1 = committed(&store, txn(vec![put("secret/a", b"1")])).await;
    let i2 = committed(&store, txn(vec![put("node/a", b"1")])).await;
    let i3 = committed(&store, txn(vec![put("cluster/default", b"1")])).await;
    let _ = committed(&store, txn(vec![put("cluster/other", b"1")])).await;
    let i5 = committed(
        &store,
        txn(vec![put("secret/b", b"1"), put("node/b", b"1")]),
    )
    .await;
    let drain = |rx: &mut broadcast::Receiver<Applied>| {
        let mut seen = Vec::new();
        while let Ok(n) = rx.try_recv() {
            seen.push(n.index);
        }
        seen
    };
    assert_eq!(drain(&mut all).len(), 5);
    assert_eq!(drain(&mut nodes), vec![i2, i3, i5]);
    assert_eq!(drain(&mut nodes2), vec![i2, i3, i5]);
    assert_eq!(drain(&mut secrets), vec![i1, i5]);
    assert_eq!(store.inner.shared.topics_in_use(), 2);
    drop((nodes, nodes2));
    committed(&store, txn(vec![put("node/c", b"1")])).await;
    assert_eq!(store.inner.shared.topics_in_use(), 1);
    store.shutdown().await.unwrap();
}
