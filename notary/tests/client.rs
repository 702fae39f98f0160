//! The content-trust client's verification (`client::verify`) against forged metadata:
//! expired, rolled back, tampered, under-signed, a swapped root; and a good chain resolving a tag
//! through the `targets/releases` delegation first.

mod common;

use common::*;
use serde_json::{json, Value};
use swarmguard_notary::client::{verify, Files, TrustError, Versions};
use swarmguard_notary::tuf;
use time::{Duration, OffsetDateTime};

struct Repo {
    root_key: TestKey,
    targets_key: TestKey,
    snapshot_key: TestKey,
    timestamp_key: TestKey,
}

const GUN: &str = "127.0.0.1:5000/demo/app";

fn digest_hex() -> String {
    tuf::hex(&[7u8; 32])
}

impl Repo {
    fn new() -> Repo {
        Repo {
            root_key: TestKey::root(GUN),
            targets_key: TestKey::new(),
            snapshot_key: TestKey::new(),
            timestamp_key: TestKey::new(),
        }
    }

    fn root(&self, version: u64) -> Vec<u8> {
        let signed = root_signed(
            version,
            &[&self.root_key.public],
            &self.targets_key.public,
            &self.snapshot_key.public,
            &self.timestamp_key.public,
        );
        doc(signed, &[&self.root_key])
    }

    /// A chain with `targets` at `version`, each role expiring at `expires`.
    fn files(
        &self,
        version: u64,
        targets: Value,
        releases: Option<Vec<u8>>,
        expires: &str,
    ) -> Files {
        let mut t = targets_signed(version, targets, no_delegations());
        t["expires"] = json!(expires);
        let targets = doc(t, &[&self.targets_key]);
        let mut meta = serde_json::Map::new();
        meta.insert("root".into(), json!(tuf::file_meta(&self.root(1))));
        meta.insert("targets".into(), json!(tuf::file_meta(&targets)));
        if let Some(r) = &releases {
            meta.insert("targets/releases".into(), json!(tuf::file_meta(r)));
        }
        let snapshot = doc(
            json!({"_type": "Snapshot", "expires": expires, "meta": meta, "version": version}),
            &[&self.snapshot_key],
        );
        let timestamp = doc(
            json!({"_type": "Timestamp", "expires": expires, "meta": {"snapshot": tuf::file_meta(&snapshot)}, "version": version}),
            &[&self.timestamp_key],
        );
        Files {
            root: self.root(1),
            timestamp,
            snapshot,
            targets,
            releases,
        }
    }
}

fn now() -> OffsetDateTime {
    OffsetDateTime::now_utc()
}

#[test]
fn a_good_chain_resolves_the_tag() {
    let repo = Repo::new();
    let files = repo.files(2, json!({"signed": target(512)}), None, &far());
    let r = verify(GUN, "signed", &files, None, Versions::default(), now()).unwrap();
    assert_eq!(r.digest, format!("sha256:{}", digest_hex()));
    assert_eq!(r.size, 512);
    assert_eq!(r.versions.targets, 2);
    let err = verify(GUN, "other", &files, None, Versions::default(), now()).unwrap_err();
    assert!(matches!(err, TrustError::NoTag { .. }), "{err}");
}

#[test]
fn expired_metadata_is_refused() {
    let repo = Repo::new();
    let past = tuf::format_time(now() - Duration::hours(1));
    let files = repo.files(2, json!({"signed": target(1)}), None, &past);
    let err = verify(GUN, "signed", &files, None, Versions::default(), now()).unwrap_err();
    assert!(matches!(err, TrustError::Expired { .. }), "{err}");
    assert!(err.to_string().contains("has expired"), "{err}");
}

#[test]
fn rolled_back_metadata_is_refused() {
    let repo = Repo::new();
    let files = repo.files(2, json!({"signed": target(1)}), None, &far());
    let seen = Versions {
        root: 1,
        timestamp: 5,
        snapshot: 5,
        targets: 5,
    };
    let err = verify(GUN, "signed", &files, None, seen, now()).unwrap_err();
    assert!(matches!(err, TrustError::Rollback { .. }), "{err}");
    assert!(err.to_string().contains("(rollback)"), "{err}");
}

#[test]
fn tampered_or_under_signed_metadata_is_refused() {
    let repo = Repo::new();
    let mut files = repo.files(2, json!({"signed": target(1)}), None, &far());
    // Targets re-signed by the right key but not what the snapshot lists.
    let other = doc(
        targets_signed(2, json!({"signed": target(2)}), no_delegations()),
        &[&repo.targets_key],
    );
    files.targets = other;
    let err = verify(GUN, "signed", &files, None, Versions::default(), now()).unwrap_err();
    assert!(err.to_string().contains("does not match the hash"), "{err}");

    // A timestamp signed by a key the root does not name.
    let mut files = repo.files(2, json!({"signed": target(1)}), None, &far());
    let stranger = TestKey::new();
    let ts: Value = serde_json::from_slice(&files.timestamp).unwrap();
    files.timestamp = doc(ts["signed"].clone(), &[&stranger]);
    let err = verify(GUN, "signed", &files, None, Versions::default(), now()).unwrap_err();
    assert!(
        err.to_string().contains("signature threshold not met"),
        "{err}"
    );
}

#[test]
fn a_swapped_root_is_refused_against_the_pinned_one() {
    let repo = Repo::new();
    let pinned = repo.root(1);
    let attacker = Repo::new();
    let files = attacker.files(2, json!({"signed": target(1)}), None, &far());
    let err = verify(
        GUN,
        "signed",
        &files,
        Some(&pinned),
        Versions::default(),
        now(),
    )
    .unwrap_err();
    assert!(matches!(err, TrustError::RootMismatch { .. }), "{err}");
}

#[test]
fn the_releases_delegation_is_preferred() {
    let repo = Repo::new();
    let alice = TestKey::new();
    let (alice_id, alice_key) = key_entry(&alice.public);
    let delegations = json!({
        "keys": {alice_id.clone(): alice_key},
        "roles": [{"keyids": [alice_id], "name": "targets/releases", "paths": [""], "threshold": 1}],
    });
    let mut rel_target = target(99);
    rel_target["hashes"]["sha256"] = json!(base64_of(&[9u8; 32]));
    let releases = doc(
        targets_signed(1, json!({"signed": rel_target}), no_delegations()),
        &[&alice],
    );
    let mut files = repo.files(2, json!({"signed": target(1)}), Some(releases), &far());
    // The top-level targets must carry the delegation: re-sign it and refresh the chain.
    let mut t = targets_signed(2, json!({"signed": target(1)}), delegations);
    t["expires"] = json!(far());
    files.targets = doc(t, &[&repo.targets_key]);
    let mut meta = serde_json::Map::new();
    meta.insert("targets".into(), json!(tuf::file_meta(&files.targets)));
    meta.insert(
        "targets/releases".into(),
        json!(tuf::file_meta(files.releases.as_ref().unwrap())),
    );
    files.snapshot = doc(
        json!({"_type": "Snapshot", "expires": far(), "meta": meta, "version": 2}),
        &[&repo.snapshot_key],
    );
    files.timestamp = doc(
        json!({"_type": "Timestamp", "expires": far(), "meta": {"snapshot": tuf::file_meta(&files.snapshot)}, "version": 2}),
        &[&repo.timestamp_key],
    );
    let r = verify(GUN, "signed", &files, None, Versions::default(), now()).unwrap();
    assert_eq!(r.digest, format!("sha256:{}", tuf::hex(&[9u8; 32])));
}

fn base64_of(b: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(b)
}
