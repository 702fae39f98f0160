//! Bounded resources in process: no-op uploads store nothing, history is pruned per role
//! (root kept), server-held keys the root no longer lists are dropped before new ones and key
//! creation is rate limited, new repository names are limited per identity, the storage limit
//! refuses cleanly, and secrets at rest have owner-only permissions.

mod common;

use std::os::unix::fs::PermissionsExt;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use swarmguard_notary::store::Retention;

const GUN: &str = "127.0.0.1:5000/demo/limits";

async fn version(s: &Server, gun: &str, role: &str) -> u64 {
    let raw = s.current(gun, role).await.unwrap();
    let v: Value = serde_json::from_slice(&raw).unwrap();
    v["signed"]["version"].as_u64().unwrap()
}

async fn feed_count(s: &Server) -> u64 {
    let (_, body) = s
        .get("/v2/_trust/changefeed?change_id=0&records=1000")
        .await;
    let v: Value = serde_json::from_slice(&body).unwrap();
    v["count"].as_u64().unwrap()
}

#[tokio::test]
async fn reposting_an_unchanged_root_stores_nothing() {
    let s = Server::new();
    let _repo = Repo::create(&s, GUN).await;
    let root = s.current(GUN, "root").await.unwrap();
    let (ts, snap, feed) = (
        version(&s, GUN, "timestamp").await,
        version(&s, GUN, "snapshot").await,
        feed_count(&s).await,
    );
    for _ in 0..50 {
        let (st, _) = s.post(GUN, &[("root", &root)]).await;
        assert_eq!(st, StatusCode::OK);
    }
    assert_eq!(version(&s, GUN, "timestamp").await, ts);
    assert_eq!(version(&s, GUN, "snapshot").await, snap);
    assert_eq!(feed_count(&s).await, feed);
    let (_, m) = s.get("/metrics").await;
    assert!(String::from_utf8(m)
        .unwrap()
        .contains("swarmguard_trust_uploads_total{result=\"noop\"} 50"));
}

#[tokio::test]
async fn history_is_pruned_per_role_and_root_versions_kept() {
    let s = Server::custom(
        Retention {
            history: 3,
            ..Retention::default()
        },
        |_| {},
    );
    let repo = Repo::create(&s, GUN).await;
    let t1 = s.current(GUN, "targets").await.unwrap();
    for v in 2..=10 {
        let (st, _) = s
            .post(
                GUN,
                &[("targets", &repo.targets_v(v, json!({"v": target(v)})))],
            )
            .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, _) = s.post(GUN, &[("root", &repo.root_v(2))]).await;
    assert_eq!(st, StatusCode::OK);
    let get = |p: String| {
        let s = &s;
        async move { s.get(&p).await.0 }
    };
    for role in ["targets", "snapshot", "timestamp"] {
        let cur = version(&s, GUN, role).await;
        for v in 1..=cur {
            let want = if v + 3 > cur {
                StatusCode::OK
            } else {
                StatusCode::NOT_FOUND
            };
            assert_eq!(
                get(format!("/v2/{GUN}/_trust/tuf/{v}.{role}.json")).await,
                want,
                "{role} v{v} of {cur}"
            );
        }
    }
    // The pruned version's checksum name is gone too; root keeps every version.
    let sum = swarmguard_notary::tuf::sha256_hex(&t1);
    assert_eq!(
        get(format!("/v2/{GUN}/_trust/tuf/targets.{sum}.json")).await,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        get(format!("/v2/{GUN}/_trust/tuf/1.root.json")).await,
        StatusCode::OK
    );
    assert_eq!(
        get(format!("/v2/{GUN}/_trust/tuf/2.root.json")).await,
        StatusCode::OK
    );
    // The current chain still serves.
    let (st, _) = s
        .post(GUN, &[("targets", &repo.targets_v(11, json!({})))])
        .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn unlisted_server_keys_are_dropped_so_rotation_never_hits_the_cap() {
    let s = Server::custom(Retention::default(), |o| o.key_creations_per_hour = 1000);
    let repo = Repo::create(&s, GUN).await;
    let path = format!("/v2/{GUN}/_trust/tuf/timestamp.key");
    // Far more rotations than the per-role cap: each drops the keys the root does not list.
    let mut newest = None;
    for _ in 0..(swarmguard_notary::signer::MAX_KEYS_PER_ROLE + 20) {
        let (st, body) = s.request("POST", &path, None, vec![]).await;
        assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
        newest = Some(serde_json::from_slice::<swarmguard_notary::tuf::PublicKey>(&body).unwrap());
    }
    // The owner can still rotate to the newest key, and the listed key kept signing meanwhile.
    let (st, _) = s
        .post(GUN, &[("targets", &repo.targets_v(2, json!({})))])
        .await;
    assert_eq!(st, StatusCode::OK);
    let new_ts = newest.unwrap();
    let rotated = doc(
        root_signed(
            2,
            &[&repo.root.public],
            &repo.targets.public,
            &repo.snapshot,
            &new_ts,
        ),
        &[&repo.root],
    );
    let (st, b) = s.post(GUN, &[("root", &rotated)]).await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
}

#[tokio::test]
async fn key_creation_is_rate_limited_per_repository() {
    let s = Server::custom(Retention::default(), |o| o.key_creations_per_hour = 3);
    let path = format!("/v2/{GUN}/_trust/tuf/timestamp.key");
    for _ in 0..3 {
        assert_eq!(
            s.request("POST", &path, None, vec![]).await.0,
            StatusCode::OK
        );
    }
    let (st, body) = s.request("POST", &path, None, vec![]).await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    assert!(String::from_utf8_lossy(&body).contains("TOOMANYREQUESTS"));
    // Reading the existing key is not creation.
    assert_eq!(s.get(&path).await.0, StatusCode::OK);
    // Another repository has its own allowance.
    let other = "/v2/127.0.0.1:5000/demo/other/_trust/tuf/timestamp.key";
    assert_eq!(
        s.request("POST", other, None, vec![]).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn new_repository_names_are_limited_per_identity() {
    let s = Server::custom(Retention::default(), |o| o.new_repos_per_hour = 2);
    Repo::create(&s, "127.0.0.1:5000/n/one").await;
    Repo::create(&s, "127.0.0.1:5000/n/two").await;
    let gun = "127.0.0.1:5000/n/three";
    let repo = Repo {
        gun: gun.into(),
        root: TestKey::root(gun),
        targets: TestKey::new(),
        timestamp: s.server_key(gun, "timestamp").await,
        snapshot: s.server_key(gun, "snapshot").await,
    };
    let (st, body) = s
        .post(
            gun,
            &[
                ("root", &repo.root_v(1)),
                ("targets", &repo.targets_v(1, json!({}))),
            ],
        )
        .await;
    assert_eq!(
        st,
        StatusCode::TOO_MANY_REQUESTS,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(s.current(gun, "root").await.is_none());
    // Existing repositories still take updates.
    let (st, _) = s
        .post(
            "127.0.0.1:5000/n/one",
            &[(
                "root",
                &s.current("127.0.0.1:5000/n/one", "root").await.unwrap(),
            )],
        )
        .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn storage_limit_refuses_without_storing_anything() {
    let s = Server::custom(
        Retention {
            max_bytes: 1,
            ..Retention::default()
        },
        |_| {},
    );
    let gun = GUN;
    let repo = Repo {
        gun: gun.into(),
        root: TestKey::root(gun),
        targets: TestKey::new(),
        timestamp: s.server_key(gun, "timestamp").await,
        snapshot: s.server_key(gun, "snapshot").await,
    };
    let (st, body) = s
        .post(
            gun,
            &[
                ("root", &repo.root_v(1)),
                ("targets", &repo.targets_v(1, json!({}))),
            ],
        )
        .await;
    assert_eq!(
        st,
        StatusCode::INSUFFICIENT_STORAGE,
        "{}",
        String::from_utf8_lossy(&body)
    );
    assert!(s.current(gun, "root").await.is_none());
    assert_eq!(feed_count(&s).await, 0);
}

#[test]
fn data_dir_and_database_are_owner_only() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _store = swarmguard_notary::store::Store::open(&data).unwrap();
    let mode = |p: &std::path::Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode(&data), 0o700);
    assert_eq!(mode(&data.join("trust.redb")), 0o600);
    let fresh = dir.path().join("fresh/nested");
    let _store = swarmguard_notary::store::Store::open(&fresh).unwrap();
    assert_eq!(mode(&fresh), 0o700);
}

#[test]
fn master_key_file_readable_by_others_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("master.key");
    std::fs::write(&p, "42".repeat(32)).unwrap();
    for bad in [0o644, 0o640, 0o604] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(bad)).unwrap();
        let e = swarmguard_notary::signer::MasterKey::from_file(&p).unwrap_err();
        assert!(e.to_string().contains("group or others"), "{bad:o}: {e}");
    }
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    assert!(swarmguard_notary::signer::MasterKey::from_file(&p).is_ok());
}
