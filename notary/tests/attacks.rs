//! Hostile uploads against the trust server's router: each is refused with a
//! 400 and leaves the repository exactly as it was.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use swarmguard_notary::validate::Limits;
use time::{Duration, OffsetDateTime};

const GUN: &str = "127.0.0.1:5000/demo/app";

struct Snap {
    root: Option<Vec<u8>>,
    targets: Option<Vec<u8>>,
    snapshot: Option<Vec<u8>>,
    timestamp: Option<Vec<u8>>,
    feed: Vec<u8>,
}

async fn snap(s: &Server, gun: &str) -> Snap {
    Snap {
        root: s.current(gun, "root").await,
        targets: s.current(gun, "targets").await,
        snapshot: s.current(gun, "snapshot").await,
        timestamp: s.current(gun, "timestamp").await,
        feed: s
            .get("/v2/_trust/changefeed?change_id=0&records=1000")
            .await
            .1,
    }
}

/// Assert a 400 with a JSON error body and that nothing changed.
async fn refused(
    s: &Server,
    gun: &str,
    status: StatusCode,
    body: &[u8],
    before: &Snap,
    what: &str,
) {
    assert_eq!(
        status,
        StatusCode::BAD_REQUEST,
        "{what}: {}",
        String::from_utf8_lossy(body)
    );
    let v: Value =
        serde_json::from_slice(body).unwrap_or_else(|_| panic!("{what}: error body is not JSON"));
    assert!(v["errors"][0]["code"].is_string(), "{what}");
    let after = snap(s, gun).await;
    assert_eq!(before.root, after.root, "{what}: root changed");
    assert_eq!(before.targets, after.targets, "{what}: targets changed");
    assert_eq!(before.snapshot, after.snapshot, "{what}: snapshot changed");
    assert_eq!(
        before.timestamp, after.timestamp,
        "{what}: timestamp changed"
    );
    assert_eq!(before.feed, after.feed, "{what}: changefeed changed");
}

#[tokio::test]
async fn happy_path_then_versions_and_checksum_names() {
    let s = Server::new();
    let repo = Repo::create(&s, GUN).await;
    let t2 = repo.targets_v(2, json!({"v1": target(10), "v2": target(20)}));
    let (st, _) = s.post(GUN, &[("targets", &t2)]).await;
    assert_eq!(st, StatusCode::OK);
    assert_eq!(s.current(GUN, "targets").await.unwrap(), t2);
    // The timestamp names the snapshot by hash; the snapshot names targets.
    let ts: Value = serde_json::from_slice(&s.current(GUN, "timestamp").await.unwrap()).unwrap();
    assert_eq!(ts["signed"]["version"], 2);
    let sum = swarmguard_notary::tuf::sha256_hex(&t2);
    let (st, body) = s
        .get(&format!("/v2/{GUN}/_trust/tuf/targets.{sum}.json"))
        .await;
    assert_eq!((st, body), (StatusCode::OK, t2.clone()));
    let sum512 =
        swarmguard_notary::tuf::hex(ring::digest::digest(&ring::digest::SHA512, &t2).as_ref());
    let (st, body) = s
        .get(&format!("/v2/{GUN}/_trust/tuf/targets.{sum512}.json"))
        .await;
    assert_eq!((st, body), (StatusCode::OK, t2.clone()));
    let (st, _) = s
        .get(&format!(
            "/v2/{GUN}/_trust/tuf/targets.{}.json",
            "0".repeat(64)
        ))
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.get(&format!("/v2/{GUN}/_trust/tuf/1.targets.json")).await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.get(&format!("/v2/{GUN}/_trust/tuf/99.root.json")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, body) = s
        .get("/v2/127.0.0.1:5000/demo/none/_trust/tuf/root.json")
        .await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    assert_eq!(
        String::from_utf8(body).unwrap(),
        "{\"errors\":[{\"code\":\"METADATA_NOT_FOUND\",\"message\":\"You have requested metadata that does not exist.\",\"detail\":{}}]}\n"
    );
    let (st, body) = s
        .get(&format!(
            "/v2/{GUN}/_trust/changefeed?change_id=0&records=10"
        ))
        .await;
    assert_eq!(st, StatusCode::OK);
    let feed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(feed["count"], 2);
    // Delete removes everything and records a deletion.
    let (st, _) = s
        .request("DELETE", &format!("/v2/{GUN}/_trust/tuf/"), None, vec![])
        .await;
    assert_eq!(st, StatusCode::OK);
    assert!(s.current(GUN, "timestamp").await.is_none());
    let (_, body) = s
        .get(&format!(
            "/v2/{GUN}/_trust/changefeed?change_id=0&records=10"
        ))
        .await;
    let feed: Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(feed["records"][2]["Category"], "deletion");
}

#[tokio::test]
async fn rollback_of_targets_and_root_refused() {
    let s = Server::new();
    let repo = Repo::create(&s, GUN).await;
    let before = snap(&s, GUN).await;
    let (st, b) = s
        .post(
            GUN,
            &[("targets", &repo.targets_v(1, json!({"evil": target(1)})))],
        )
        .await;
    refused(&s, GUN, st, &b, &before, "targets replay of same version").await;
    let (st, _) = s
        .post(GUN, &[("targets", &repo.targets_v(5, json!({})))])
        .await;
    assert_eq!(st, StatusCode::OK);
    let before = snap(&s, GUN).await;
    let (st, b) = s
        .post(
            GUN,
            &[("targets", &repo.targets_v(4, json!({"evil": target(1)})))],
        )
        .await;
    refused(&s, GUN, st, &b, &before, "targets rollback").await;
    // Root: a different v1 (rollback/same version) and a skipped version.
    let other_v1 = doc(
        root_signed(
            1,
            &[&repo.root.public],
            &TestKey::new().public,
            &repo.snapshot,
            &repo.timestamp,
        ),
        &[&repo.root],
    );
    let (st, b) = s.post(GUN, &[("root", &other_v1)]).await;
    refused(
        &s,
        GUN,
        st,
        &b,
        &before,
        "root same version, different content",
    )
    .await;
    let (st, b) = s.post(GUN, &[("root", &repo.root_v(3))]).await;
    refused(&s, GUN, st, &b, &before, "root skips a version").await;
    // Re-uploading the identical current root with new targets is fine.
    let current_root = s.current(GUN, "root").await.unwrap();
    let (st, b) = s
        .post(
            GUN,
            &[
                ("root", &current_root),
                ("targets", &repo.targets_v(6, json!({}))),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
}

#[tokio::test]
async fn new_root_must_be_signed_by_old_root() {
    let s = Server::new();
    let repo = Repo::create(&s, GUN).await;
    let before = snap(&s, GUN).await;
    let new_root = TestKey::root(GUN);
    let signed = root_signed(
        2,
        &[&new_root.public],
        &repo.targets.public,
        &repo.snapshot,
        &repo.timestamp,
    );
    let (st, b) = s
        .post(GUN, &[("root", &doc(signed.clone(), &[&new_root]))])
        .await;
    refused(&s, GUN, st, &b, &before, "new root not signed by old root").await;
    // Signed by the old root only (new root's own threshold not met).
    let (st, b) = s
        .post(GUN, &[("root", &doc(signed.clone(), &[&repo.root]))])
        .await;
    refused(
        &s,
        GUN,
        st,
        &b,
        &before,
        "new root not signed by new root key",
    )
    .await;
    // Rotation signed by both: accepted (old key stays listed, as notary does).
    let mut signed2 = signed;
    signed2["keys"][&repo.root.id] = serde_json::to_value(&repo.root.public).unwrap();
    let (st, b) = s
        .post(GUN, &[("root", &doc(signed2, &[&new_root, &repo.root]))])
        .await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
}

#[tokio::test]
async fn root_changing_targets_key_needs_resigned_targets() {
    let s = Server::new();
    let repo = Repo::create(&s, GUN).await;
    let before = snap(&s, GUN).await;
    let new_targets = TestKey::new();
    let rs = root_signed(
        2,
        &[&repo.root.public],
        &new_targets.public,
        &repo.snapshot,
        &repo.timestamp,
    );
    let root2 = doc(rs, &[&repo.root]);
    let (st, b) = s.post(GUN, &[("root", &root2)]).await;
    refused(
        &s,
        GUN,
        st,
        &b,
        &before,
        "new targets key without re-signed targets",
    )
    .await;
    let t2 = doc(
        targets_signed(2, json!({"v1": target(10)}), no_delegations()),
        &[&new_targets],
    );
    let (st, b) = s.post(GUN, &[("root", &root2), ("targets", &t2)]).await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
}

#[tokio::test]
async fn threshold_not_met_and_wrong_key_refused() {
    let s = Server::new();
    let repo = Repo::create(&s, GUN).await;
    let before = snap(&s, GUN).await;
    let signed = targets_signed(2, json!({"x": target(1)}), no_delegations());
    let (st, b) = s.post(GUN, &[("targets", &doc(signed.clone(), &[]))]).await;
    refused(&s, GUN, st, &b, &before, "unsigned targets").await;
    let stranger = TestKey::new();
    let (st, b) = s
        .post(GUN, &[("targets", &doc(signed.clone(), &[&stranger]))])
        .await;
    refused(&s, GUN, st, &b, &before, "targets signed by a stranger").await;
    // Signature made by the right key but claimed for another key ID.
    let mut d: Value = serde_json::from_slice(&doc(signed.clone(), &[&repo.targets])).unwrap();
    d["signatures"][0]["keyid"] = json!(repo.root.id);
    let (st, b) = s
        .post(GUN, &[("targets", &serde_json::to_vec(&d).unwrap())])
        .await;
    refused(&s, GUN, st, &b, &before, "signature under another key id").await;
    // Payload changed after signing.
    let mut d: Value = serde_json::from_slice(&doc(signed, &[&repo.targets])).unwrap();
    d["signed"]["targets"]["x"]["length"] = json!(2);
    let (st, b) = s
        .post(GUN, &[("targets", &serde_json::to_vec(&d).unwrap())])
        .await;
    refused(&s, GUN, st, &b, &before, "tampered payload").await;
    // A root whose targets role needs 2 signatures; sign targets with 1 of 2.
    let t2 = TestKey::new();
    let mut rs = root_signed(
        2,
        &[&repo.root.public],
        &repo.targets.public,
        &repo.snapshot,
        &repo.timestamp,
    );
    rs["keys"][&t2.id] = serde_json::to_value(&t2.public).unwrap();
    rs["roles"]["targets"] = json!({"keyids": [repo.targets.id, t2.id], "threshold": 2});
    // The new root's targets threshold needs a targets file signed by both.
    let root2 = doc(rs, &[&repo.root]);
    let (st, b) = s.post(GUN, &[("root", &root2)]).await;
    refused(
        &s,
        GUN,
        st,
        &b,
        &before,
        "root raising the targets threshold alone",
    )
    .await;
    let t2v2 = doc(
        targets_signed(2, json!({"v1": target(10)}), no_delegations()),
        &[&repo.targets, &t2],
    );
    let (st, _) = s.post(GUN, &[("root", &root2), ("targets", &t2v2)]).await;
    assert_eq!(st, StatusCode::OK);
    let before = snap(&s, GUN).await;
    let signed = targets_signed(3, json!({"y": target(1)}), no_delegations());
    let (st, b) = s
        .post(
            GUN,
            &[(
                "targets",
                &doc(signed.clone(), &[&repo.targets, &repo.targets]),
            )],
        )
        .await;
    refused(&s, GUN, st, &b, &before, "threshold 2 met by one key twice").await;
    let (st, _) = s
        .post(GUN, &[("targets", &doc(signed, &[&repo.targets, &t2]))])
        .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn delegation_outside_paths_refused() {
    let s = Server::new();
    let repo = Repo::create(&s, GUN).await;
    let alice = TestKey::new();
    let (id, kv) = key_entry(&alice.public);
    let deleg = json!({"keys": {id.clone(): kv}, "roles": [{"keyids": [id], "name": "targets/releases", "paths": ["app/"], "threshold": 1}]});
    let (st, _) = s
        .post(
            GUN,
            &[(
                "targets",
                &doc(targets_signed(2, json!({}), deleg), &[&repo.targets]),
            )],
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let before = snap(&s, GUN).await;
    let outside = doc(
        targets_signed(1, json!({"other": target(1)}), no_delegations()),
        &[&alice],
    );
    let (st, b) = s.post(GUN, &[("targets/releases", &outside)]).await;
    refused(
        &s,
        GUN,
        st,
        &b,
        &before,
        "delegation writes outside its paths",
    )
    .await;
    let undeclared = doc(
        targets_signed(1, json!({"app/x": target(1)}), no_delegations()),
        &[&alice],
    );
    let (st, b) = s.post(GUN, &[("targets/bob", &undeclared)]).await;
    refused(&s, GUN, st, &b, &before, "undeclared delegation").await;
    let wrong_signer = doc(
        targets_signed(1, json!({"app/x": target(1)}), no_delegations()),
        &[&repo.targets],
    );
    let (st, b) = s.post(GUN, &[("targets/releases", &wrong_signer)]).await;
    refused(
        &s,
        GUN,
        st,
        &b,
        &before,
        "delegation signed by the targets key",
    )
    .await;
    let inside = doc(
        targets_signed(2, json!({"app/x": target(1)}), no_delegations()),
        &[&alice],
    );
    let (st, _) = s.post(GUN, &[("targets/releases", &inside)]).await;
    assert_eq!(st, StatusCode::OK);
    assert!(s.current(GUN, "targets/releases").await.is_some());
    // Delegation rollback.
    let before = snap(&s, GUN).await;
    let old = doc(
        targets_signed(1, json!({"app/old": target(1)}), no_delegations()),
        &[&alice],
    );
    let (st, b) = s.post(GUN, &[("targets/releases", &old)]).await;
    refused(&s, GUN, st, &b, &before, "delegation rollback").await;
    assert_eq!(s.current(GUN, "targets/releases").await.unwrap(), inside);
}

#[tokio::test]
async fn mix_and_match_snapshot_refused() {
    // notary CLI style: the client holds the snapshot key and uploads snapshot.
    let s = Server::new();
    let gun = "127.0.0.1:5000/demo/notarycli";
    let root = TestKey::root(gun);
    let targets = TestKey::new();
    let snapshot = TestKey::new();
    let timestamp = s.server_key(gun, "timestamp").await;
    let root_raw = doc(
        root_signed(
            1,
            &[&root.public],
            &targets.public,
            &snapshot.public,
            &timestamp,
        ),
        &[&root],
    );
    let t1 = doc(
        targets_signed(1, json!({"a": target(1)}), no_delegations()),
        &[&targets],
    );
    let snap_for = |version: u64, t: &[u8]| {
        doc(
            json!({"_type": "Snapshot", "expires": far(), "version": version, "meta": {
                "root": swarmguard_notary::tuf::file_meta(&root_raw),
                "targets": swarmguard_notary::tuf::file_meta(t)}}),
            &[&snapshot],
        )
    };
    let (st, b) = s
        .post(
            gun,
            &[
                ("root", &root_raw),
                ("targets", &t1),
                ("snapshot", &snap_for(1, &t1)),
            ],
        )
        .await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
    let before = snap(&s, gun).await;
    let t2 = doc(
        targets_signed(2, json!({"b": target(1)}), no_delegations()),
        &[&targets],
    );
    // Snapshot v2 still naming targets v1 while uploading targets v2.
    let (st, b) = s
        .post(gun, &[("targets", &t2), ("snapshot", &snap_for(2, &t1))])
        .await;
    refused(
        &s,
        gun,
        st,
        &b,
        &before,
        "snapshot names the wrong targets hash",
    )
    .await;
    // No snapshot at all while the server does not hold the snapshot key.
    let (st, b) = s.post(gun, &[("targets", &t2)]).await;
    refused(
        &s,
        gun,
        st,
        &b,
        &before,
        "no snapshot and no server snapshot key",
    )
    .await;
    // Snapshot rollback.
    let (st, b) = s
        .post(gun, &[("targets", &t2), ("snapshot", &snap_for(1, &t2))])
        .await;
    refused(&s, gun, st, &b, &before, "snapshot rollback").await;
    let (st, _) = s
        .post(gun, &[("targets", &t2), ("snapshot", &snap_for(2, &t2))])
        .await;
    assert_eq!(st, StatusCode::OK);
}

#[tokio::test]
async fn oversized_metadata_and_too_many_targets_refused() {
    let s = Server::with_limits(Limits {
        max_metadata_bytes: 64 * 1024,
        max_targets: 100,
        ..Limits::default()
    });
    let repo = Repo::create(&s, GUN).await;
    let before = snap(&s, GUN).await;
    let mut big = serde_json::Map::new();
    for i in 0..2000 {
        big.insert(format!("tag-{i:05}-{}", "x".repeat(40)), target(1));
    }
    let (st, b) = s
        .post(GUN, &[("targets", &repo.targets_v(2, Value::Object(big)))])
        .await;
    refused(&s, GUN, st, &b, &before, "oversized targets").await;
    let mut many = serde_json::Map::new();
    for i in 0..101 {
        many.insert(format!("t{i}"), target(1));
    }
    let (st, b) = s
        .post(GUN, &[("targets", &repo.targets_v(2, Value::Object(many)))])
        .await;
    refused(&s, GUN, st, &b, &before, "too many targets").await;
    // Body far beyond the limit is cut off while reading.
    let huge = vec![b'a'; 2 << 20];
    let (st, b) = s.post(GUN, &[("targets", &huge)]).await;
    refused(&s, GUN, st, &b, &before, "huge body").await;
}

#[tokio::test]
async fn malformed_multipart_and_json_refused() {
    let s = Server::new();
    let repo = Repo::create(&s, GUN).await;
    let before = snap(&s, GUN).await;
    let good = repo.targets_v(2, json!({}));
    let uri = format!("/v2/{GUN}/_trust/tuf/");
    let cases: Vec<(&str, Option<&str>, Vec<u8>)> = vec![
        ("no content type", None, good.clone()),
        ("json content type", Some("application/json"), good.clone()),
        ("no boundary", Some("multipart/form-data"), good.clone()),
        (
            "wrong boundary",
            Some("multipart/form-data; boundary=zzz"),
            multipart(&[("targets", &good)]).1,
        ),
        (
            "truncated",
            Some(multipart(&[]).0.as_str())
                .map(|_| "multipart/form-data; boundary=3f1b0a9c5d7e2b4a6c8e0f1d3b5a7c9e"),
            {
                let mut b = multipart(&[("targets", &good)]).1;
                b.truncate(b.len() - 40);
                b
            },
        ),
        (
            "empty body",
            Some("multipart/form-data; boundary=3f1b0a9c5d7e2b4a6c8e0f1d3b5a7c9e"),
            vec![],
        ),
    ];
    for (what, ct, body) in cases {
        let (st, b) = s.request("POST", &uri, ct, body).await;
        refused(&s, GUN, st, &b, &before, what).await;
    }
    let bad_parts: Vec<(&str, &[u8])> = vec![
        ("targets", b"{not json"),
        ("targets", b"{\"signed\":{},\"signatures\":[]}"),
        ("timestamp", &good),
        ("../root", &good),
        ("targets/", &good),
        ("bogus", &good),
        ("root", &good), // targets document uploaded as root
    ];
    for (name, data) in bad_parts {
        let (st, b) = s.post(GUN, &[(name, data)]).await;
        refused(&s, GUN, st, &b, &before, &format!("part {name}")).await;
    }
    // Duplicate part.
    let (st, b) = s.post(GUN, &[("targets", &good), ("targets", &good)]).await;
    refused(&s, GUN, st, &b, &before, "duplicate part").await;
    // Unknown field smuggled into signed (Go would match "Version" case-insensitively).
    let mut sd = targets_signed(2, json!({}), no_delegations());
    sd["Version"] = json!(99);
    let (st, b) = s
        .post(GUN, &[("targets", &doc(sd, &[&repo.targets]))])
        .await;
    refused(&s, GUN, st, &b, &before, "unknown field in signed").await;
    // Non-integer number.
    let mut sd = targets_signed(2, json!({}), no_delegations());
    sd["version"] = json!(2.5);
    let (st, b) = s
        .post(GUN, &[("targets", &doc_raw(sd, &repo.targets))])
        .await;
    refused(&s, GUN, st, &b, &before, "float version").await;
}

fn doc_raw(signed: Value, _k: &TestKey) -> Vec<u8> {
    serde_json::to_vec(&json!({"signed": signed, "signatures": []})).unwrap()
}

#[tokio::test]
async fn bad_guns_refused() {
    let s = Server::new();
    let repo = Repo::create(&s, GUN).await;
    let before = snap(&s, GUN).await;
    let (ct, body) = multipart(&[
        ("root", &repo.root_v(1)),
        ("targets", &repo.targets_v(1, json!({}))),
    ]);
    for gun in [
        "127.0.0.1:5000/demo/../app",
        "127.0.0.1:5000/demo/./app",
        "127.0.0.1:5000//app",
        "127.0.0.1:5000/demo/app%0a",
        "127.0.0.1:5000/demo/app%00",
        "127.0.0.1:5000/demo/a%2f..%2fb",
        "127.0.0.1:5000/demo/_trust/x",
    ] {
        for (method, suffix) in [
            ("POST", "/_trust/tuf/"),
            ("GET", "/_trust/tuf/root.json"),
            ("GET", "/_trust/tuf/timestamp.key"),
        ] {
            let (st, b) = s
                .request(
                    method,
                    &format!("/v2/{gun}{suffix}"),
                    Some(&ct),
                    body.clone(),
                )
                .await;
            refused(&s, GUN, st, &b, &before, &format!("{method} {gun}")).await;
        }
    }
    let long = format!("127.0.0.1:5000/{}", "a".repeat(300));
    let (st, b) = s.get(&format!("/v2/{long}/_trust/tuf/timestamp.key")).await;
    refused(&s, GUN, st, &b, &before, "GUN too long").await;
}

#[tokio::test]
async fn expired_metadata_and_bad_root_certs_refused() {
    let s = Server::new();
    let repo = Repo::create(&s, GUN).await;
    let before = snap(&s, GUN).await;
    let mut sd = targets_signed(2, json!({}), no_delegations());
    sd["expires"] = json!(expires_in(Duration::hours(-1)));
    let (st, b) = s
        .post(GUN, &[("targets", &doc(sd, &[&repo.targets]))])
        .await;
    refused(&s, GUN, st, &b, &before, "expired targets").await;
    let mut rs = root_signed(
        2,
        &[&repo.root.public],
        &repo.targets.public,
        &repo.snapshot,
        &repo.timestamp,
    );
    rs["expires"] = json!(expires_in(Duration::hours(-1)));
    let (st, b) = s.post(GUN, &[("root", &doc(rs, &[&repo.root]))]).await;
    refused(&s, GUN, st, &b, &before, "expired root").await;

    // Fresh repositories with bad root certificates.
    let gun = "127.0.0.1:5000/demo/fresh";
    let ts = s.server_key(gun, "timestamp").await;
    let sn = s.server_key(gun, "snapshot").await;
    let targets = TestKey::new();
    let now = OffsetDateTime::now_utc();
    for (what, root) in [
        (
            "cert CN is another GUN",
            TestKey::root("127.0.0.1:5000/demo/other"),
        ),
        (
            "cert expired",
            TestKey::root_with(gun, now - Duration::days(20), now - Duration::days(1)),
        ),
        (
            "cert not yet valid",
            TestKey::root_with(gun, now + Duration::days(1), now + Duration::days(20)),
        ),
    ] {
        let before = snap(&s, gun).await;
        let r = doc(
            root_signed(1, &[&root.public], &targets.public, &sn, &ts),
            &[&root],
        );
        let t = doc(targets_signed(1, json!({}), no_delegations()), &[&targets]);
        let (st, b) = s.post(gun, &[("root", &r), ("targets", &t)]).await;
        refused(&s, gun, st, &b, &before, what).await;
    }
    // A plain ecdsa (non-x509) root key is not accepted either.
    let plain = TestKey::new();
    let before = snap(&s, gun).await;
    let r = doc(
        root_signed(1, &[&plain.public], &targets.public, &sn, &ts),
        &[&plain],
    );
    let t = doc(targets_signed(1, json!({}), no_delegations()), &[&targets]);
    let (st, b) = s.post(gun, &[("root", &r), ("targets", &t)]).await;
    refused(&s, gun, st, &b, &before, "non-x509 root key").await;
    // A root listing a timestamp key the server does not hold.
    let root = TestKey::root(gun);
    let r = doc(
        root_signed(
            1,
            &[&root.public],
            &targets.public,
            &sn,
            &TestKey::new().public,
        ),
        &[&root],
    );
    let (st, b) = s.post(gun, &[("root", &r), ("targets", &t)]).await;
    refused(&s, gun, st, &b, &before, "timestamp key not held by server").await;
}

#[tokio::test]
async fn key_endpoints_get_is_stable_post_rotates() {
    let s = Server::new();
    let a = s.server_key(GUN, "timestamp").await;
    let b = s.server_key(GUN, "timestamp").await;
    assert_eq!(a, b);
    let (st, body) = s
        .request(
            "POST",
            &format!("/v2/{GUN}/_trust/tuf/timestamp.key"),
            None,
            vec![],
        )
        .await;
    assert_eq!(st, StatusCode::OK);
    let c: swarmguard_notary::tuf::PublicKey = serde_json::from_slice(&body).unwrap();
    assert_ne!(a, c);
    assert_eq!(s.server_key(GUN, "timestamp").await, c);
    // Key creation is rate limited per repository (10 an hour by default; the first GET
    // and the POST above were two): past the limit, a clear 429.
    for _ in 2..10 {
        let (st, _) = s
            .request(
                "POST",
                &format!("/v2/{GUN}/_trust/tuf/timestamp.key"),
                None,
                vec![],
            )
            .await;
        assert_eq!(st, StatusCode::OK);
    }
    let (st, _) = s
        .request(
            "POST",
            &format!("/v2/{GUN}/_trust/tuf/timestamp.key"),
            None,
            vec![],
        )
        .await;
    assert_eq!(st, StatusCode::TOO_MANY_REQUESTS);
    let (st, _) = s.get(&format!("/v2/{GUN}/_trust/tuf/targets.key")).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    let (st, _) = s.get("/v2/").await;
    assert_eq!(st, StatusCode::OK);
    let (st, _) = s.get("/_notary_server/health").await;
    assert_eq!(st, StatusCode::OK);
    let (st, body) = s.get("/metrics").await;
    assert_eq!(st, StatusCode::OK);
    assert!(String::from_utf8(body)
        .unwrap()
        .contains("swarmguard_trust_requests_total"));
    let (st, _) = s.request("HEAD", "/v2/", None, vec![]).await;
    assert_eq!(st, StatusCode::NOT_FOUND);
    for q in [
        "change_id=-1",
        "change_id=abc",
        "records=0",
        "records=100000",
        "records=x",
    ] {
        let (st, _) = s.get(&format!("/v2/_trust/changefeed?{q}")).await;
        assert_eq!(st, StatusCode::BAD_REQUEST, "{q}");
    }
    let (st, _) = s.get("/v2/_trust/changefeed?change_id=0&records=-5").await;
    assert_eq!(st, StatusCode::OK);
}

/// Targets files with structural problems, each correctly signed by the targets key.
fn malformed_targets(repo: &Repo) -> Vec<(&'static str, Vec<u8>)> {
    let alice = TestKey::new();
    let (aid, akv) = key_entry(&alice.public);

    let mut many_sigs: Value = serde_json::from_slice(&repo.targets_v(2, json!({}))).unwrap();
    let sig = many_sigs["signatures"][0].clone();
    many_sigs["signatures"] = Value::Array(vec![sig; 33]);
    let deep = (0..200).fold(json!(1), |v, _| json!([v]));
    let mut many_roles = Vec::new();
    for i in 0..257 {
        many_roles.push(json!({"keyids": [aid], "name": format!("targets/r{i}"), "paths": [""], "threshold": 1}));
    }
    let mut cases: Vec<(&str, Vec<u8>)> = vec![
        ("33 signatures", serde_json::to_vec(&many_sigs).unwrap()),
        (
            "nesting deeper than the parser allows",
            doc_raw(
                targets_signed(
                    2,
                    json!({"x": {"hashes": {"sha256": "AA=="}, "length": 1, "custom": deep}}),
                    no_delegations(),
                ),
                &repo.targets,
            ),
        ),
        (
            "257 delegation roles",
            doc(
                targets_signed(
                    2,
                    json!({}),
                    json!({"keys": {aid.clone(): akv.clone()}, "roles": many_roles}),
                ),
                &[&repo.targets],
            ),
        ),
        (
            "delegation listed twice",
            doc(
                targets_signed(
                    2,
                    json!({}),
                    json!({"keys": {aid.clone(): akv.clone()}, "roles": [
                    {"keyids": [aid], "name": "targets/a", "paths": [""], "threshold": 1},
                    {"keyids": [aid], "name": "targets/a", "paths": [""], "threshold": 1}]}),
                ),
                &[&repo.targets],
            ),
        ),
        (
            "delegation that is not a direct child",
            doc(
                targets_signed(
                    2,
                    json!({}),
                    json!({"keys": {aid.clone(): akv.clone()}, "roles": [
                    {"keyids": [aid], "name": "targets/a/b", "paths": [""], "threshold": 1}]}),
                ),
                &[&repo.targets],
            ),
        ),
        (
            "delegation threshold above its key count",
            doc(
                targets_signed(
                    2,
                    json!({}),
                    json!({"keys": {aid.clone(): akv.clone()}, "roles": [
                    {"keyids": [aid], "name": "targets/a", "paths": [""], "threshold": 2}]}),
                ),
                &[&repo.targets],
            ),
        ),
        (
            "delegation naming an unknown key",
            doc(
                targets_signed(
                    2,
                    json!({}),
                    json!({"keys": {}, "roles": [
                    {"keyids": [aid], "name": "targets/a", "paths": [""], "threshold": 1}]}),
                ),
                &[&repo.targets],
            ),
        ),
    ];
    cases.extend(malformed_target_entries(repo));
    cases
}

/// Targets files whose entries or header are malformed, correctly signed.
fn malformed_target_entries(repo: &Repo) -> Vec<(&'static str, Vec<u8>)> {
    vec![
        (
            "target without hashes",
            doc(
                targets_signed(
                    2,
                    json!({"x": {"hashes": {}, "length": 1}}),
                    no_delegations(),
                ),
                &[&repo.targets],
            ),
        ),
        (
            "negative length",
            doc(
                targets_signed(
                    2,
                    json!({"x": {"hashes": {"sha256": "AA=="}, "length": -1}}),
                    no_delegations(),
                ),
                &[&repo.targets],
            ),
        ),
        (
            "version 0 wraps nothing",
            doc(
                targets_signed(0, json!({}), no_delegations()),
                &[&repo.targets],
            ),
        ),
        (
            "wrong _type",
            doc(
                json!({"_type": "Snapshot", "expires": far(), "meta": {}, "version": 2}),
                &[&repo.targets],
            ),
        ),
    ]
}

/// Root files with structural problems, each correctly signed by the root key.
fn malformed_roots(repo: &Repo) -> Vec<(&'static str, Value)> {
    let base = || {
        root_signed(
            2,
            &[&repo.root.public],
            &repo.targets.public,
            &repo.snapshot,
            &repo.timestamp,
        )
    };
    let mut missing_role = base();
    missing_role["roles"]
        .as_object_mut()
        .unwrap()
        .remove("snapshot");
    let mut extra_role = base();
    extra_role["roles"]["targets/x"] = json!({"keyids": [repo.targets.id], "threshold": 1});
    let mut unknown_key = base();
    unknown_key["roles"]["targets"]["keyids"] = json!(["00".repeat(32)]);
    let mut zero_threshold = base();
    zero_threshold["roles"]["targets"]["threshold"] = json!(0);
    let mut wrong_id = base();
    let moved = wrong_id["keys"]
        .as_object_mut()
        .unwrap()
        .remove(&repo.targets.id)
        .unwrap();
    wrong_id["keys"]["ab".repeat(32)] = moved;
    wrong_id["roles"]["targets"]["keyids"] = json!(["ab".repeat(32)]);
    vec![
        ("root without a snapshot role", missing_role),
        ("root with an extra role", extra_role),
        ("root role naming an unknown key", unknown_key),
        ("root role with threshold 0", zero_threshold),
        ("root key under a wrong ID", wrong_id),
    ]
}

#[tokio::test]
async fn structurally_invalid_metadata_refused() {
    let s = Server::new();
    let repo = Repo::create(&s, GUN).await;
    let before = snap(&s, GUN).await;
    for (what, raw) in malformed_targets(&repo) {
        let (st, b) = s.post(GUN, &[("targets", &raw)]).await;
        refused(&s, GUN, st, &b, &before, what).await;
    }
    for (what, signed) in malformed_roots(&repo) {
        let (st, b) = s.post(GUN, &[("root", &doc(signed, &[&repo.root]))]).await;
        refused(&s, GUN, st, &b, &before, what).await;
    }
}

#[tokio::test]
async fn remote_delete_is_off_unless_enabled() {
    let s = Server::with_options(Limits::default(), false);
    let _repo = Repo::create(&s, GUN).await;
    let before = snap(&s, GUN).await;
    let (st, body) = s
        .request("DELETE", &format!("/v2/{GUN}/_trust/tuf/"), None, vec![])
        .await;
    assert_eq!(
        st,
        StatusCode::FORBIDDEN,
        "{}",
        String::from_utf8_lossy(&body)
    );
    let after = snap(&s, GUN).await;
    assert_eq!(before.timestamp, after.timestamp);
    assert_eq!(before.feed, after.feed);
}
