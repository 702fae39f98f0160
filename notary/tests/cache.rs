//! Metadata reads are served from memory once read; every upload and delete must show at once.

mod common;

use axum::http::StatusCode;
use common::*;
use serde_json::{json, Value};
use swarmguard_notary::tuf::sha256_hex;

const GUN: &str = "127.0.0.1:5000/demo/cached";

fn version(raw: &[u8]) -> u64 {
    serde_json::from_slice::<Value>(raw).unwrap()["signed"]["version"]
        .as_u64()
        .unwrap()
}

async fn get(s: &Server, file: &str) -> (StatusCode, Vec<u8>) {
    s.get(&format!("/v2/{GUN}/_trust/tuf/{file}")).await
}

#[tokio::test]
async fn cached_reads_follow_uploads_and_deletes() {
    let s = Server::new();
    let repo = Repo::create(&s, GUN).await;
    let t1 = s.current(GUN, "targets").await.unwrap();
    let ts1 = s.current(GUN, "timestamp").await.unwrap();
    let sum1 = sha256_hex(&t1);
    // Each of these twice: the first read fills the cache, the second is served from it.
    for _ in 0..2 {
        assert_eq!(s.current(GUN, "targets").await.unwrap(), t1);
        assert_eq!(s.current(GUN, "timestamp").await.unwrap(), ts1);
        assert_eq!(
            get(&s, &format!("targets.{sum1}.json")).await,
            (StatusCode::OK, t1.clone())
        );
        assert_eq!(
            get(&s, "1.targets.json").await,
            (StatusCode::OK, t1.clone())
        );
    }

    // A new upload: the current files change at once; older versions stay reachable by
    // version and checksum.
    let t2 = repo.targets_v(2, json!({"v1": target(10), "v2": target(20)}));
    let (st, body) = s.post(GUN, &[("targets", &t2)]).await;
    assert_eq!(st, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let sum2 = sha256_hex(&t2);
    assert_eq!(s.current(GUN, "targets").await.unwrap(), t2);
    let ts2 = s.current(GUN, "timestamp").await.unwrap();
    assert_eq!((version(&ts1), version(&ts2)), (1, 2));
    let snap = s.current(GUN, "snapshot").await.unwrap();
    let snap: Value = serde_json::from_slice(&snap).unwrap();
    assert_eq!(snap["signed"]["version"], 2);
    assert_eq!(snap["signed"]["meta"]["targets"]["length"], t2.len());
    assert_eq!(
        get(&s, &format!("targets.{sum2}.json")).await,
        (StatusCode::OK, t2.clone())
    );
    assert_eq!(
        get(&s, &format!("targets.{sum1}.json")).await,
        (StatusCode::OK, t1.clone())
    );
    assert_eq!(
        get(&s, "2.targets.json").await,
        (StatusCode::OK, t2.clone())
    );
    assert_eq!(
        get(&s, "1.targets.json").await,
        (StatusCode::OK, t1.clone())
    );
    // A refused upload changes nothing that is served.
    let (st, _) = s.post(GUN, &[("targets", &t2)]).await;
    assert_eq!(st, StatusCode::BAD_REQUEST);
    assert_eq!(s.current(GUN, "targets").await.unwrap(), t2);
    assert_eq!(s.current(GUN, "timestamp").await.unwrap(), ts2);

    // Delete: nothing of the repository is served any more, from memory or otherwise.
    let (st, _) = s
        .request("DELETE", &format!("/v2/{GUN}/_trust/tuf/"), None, vec![])
        .await;
    assert_eq!(st, StatusCode::OK);
    for file in [
        "root.json".to_string(),
        "targets.json".to_string(),
        "snapshot.json".to_string(),
        "timestamp.json".to_string(),
        format!("targets.{sum1}.json"),
        format!("targets.{sum2}.json"),
        "1.targets.json".to_string(),
        "2.targets.json".to_string(),
    ] {
        assert_eq!(get(&s, &file).await.0, StatusCode::NOT_FOUND, "{file}");
    }

    // Recreated under the same name, the new repository's files are served, not the old ones.
    let again = Repo::create(&s, GUN).await;
    let t_again = s.current(GUN, "targets").await.unwrap();
    assert_ne!(t_again, t1);
    let signed_by: Value = serde_json::from_slice(&t_again).unwrap();
    assert_eq!(
        signed_by["signatures"][0]["keyid"],
        again.targets.id.as_str()
    );
    assert_eq!(
        get(&s, "1.targets.json").await,
        (StatusCode::OK, t_again.clone())
    );
    assert_eq!(
        get(&s, &format!("targets.{sum1}.json")).await.0,
        StatusCode::NOT_FOUND
    );
    assert_eq!(version(&s.current(GUN, "timestamp").await.unwrap()), 1);
}
