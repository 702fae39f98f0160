//! The in-process signer: keys encrypted at rest, usable only with the right
//! master key; timestamp re-signed before it expires.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use common::*;
use serde_json::json;
use swarmguard_notary::signer::{LocalSigner, MasterKey, Signer};
use swarmguard_notary::store::Store;
use swarmguard_notary::tuf::{self, Timestamp};
use swarmguard_notary::validate::{self, Limits, RepoState};
use time::{Duration, OffsetDateTime};

const GUN: &str = "127.0.0.1:5000/demo/sig";

#[test]
fn master_key_parsing() {
    assert!(MasterKey::decode(&B64.encode([1u8; 32])).is_ok());
    assert!(MasterKey::decode(&"ab".repeat(32)).is_ok());
    assert!(MasterKey::decode(&B64.encode([1u8; 31])).is_err());
    assert!(MasterKey::decode("not a key").is_err());
    assert!(MasterKey::decode("").is_err());
    assert!(!format!("{:?}", MasterKey::decode(&"ab".repeat(32)).unwrap()).contains("ab"));
}

#[test]
fn keys_are_encrypted_at_rest_and_bound_to_master_key() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let signer = LocalSigner::new(
        store.database(),
        MasterKey::decode(&B64.encode([7u8; 32])).unwrap(),
    )
    .unwrap();
    let k = signer.create_key(GUN, "timestamp").unwrap();
    let (method, sig) = signer.sign(GUN, "timestamp", &k.id, b"hello").unwrap();
    assert_eq!(method, "ecdsa");
    assert_eq!(sig.len(), 64);
    // Wrong key ID / wrong role / wrong GUN: refused.
    assert!(signer.sign(GUN, "timestamp", "00", b"x").is_err());
    assert!(signer.sign(GUN, "snapshot", &k.id, b"x").is_err());
    assert!(signer.sign("other/gun", "timestamp", &k.id, b"x").is_err());
    drop(signer);
    // Another master key cannot use the stored key.
    let other = LocalSigner::new(
        store.database(),
        MasterKey::decode(&B64.encode([8u8; 32])).unwrap(),
    )
    .unwrap();
    assert!(other.sign(GUN, "timestamp", &k.id, b"hello").is_err());
    drop(other);
    drop(store);
    // The database file does not contain a PKCS#8 P-256 private key header in clear.
    let raw = std::fs::read(dir.path().join("trust.redb")).unwrap();
    let pkcs8_prefix: &[u8] = &[0x30, 0x81, 0x87, 0x02, 0x01, 0x00, 0x30, 0x13];
    assert!(!raw.windows(pkcs8_prefix.len()).any(|w| w == pkcs8_prefix));
}

#[test]
fn key_creation_is_bounded_and_never_drops_keys() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let signer = LocalSigner::new(
        store.database(),
        MasterKey::decode(&B64.encode([3u8; 32])).unwrap(),
    )
    .unwrap();
    let first = signer.create_key(GUN, "timestamp").unwrap();
    for _ in 1..swarmguard_notary::signer::MAX_KEYS_PER_ROLE {
        signer.create_key(GUN, "timestamp").unwrap();
    }
    assert!(matches!(
        signer.create_key(GUN, "timestamp"),
        Err(swarmguard_notary::signer::SignerError::TooManyKeys)
    ));
    assert!(signer
        .sign(GUN, "timestamp", &first.id, b"still usable")
        .is_ok());
    assert!(signer.create_key(GUN, "snapshot").is_ok());
}

#[tokio::test]
async fn timestamp_is_resigned_before_expiry() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    let signer: Arc<dyn Signer> = Arc::new(
        LocalSigner::new(
            store.database(),
            MasterKey::decode(&B64.encode([9u8; 32])).unwrap(),
        )
        .unwrap(),
    );
    let ts_key = signer.create_key(GUN, "timestamp").unwrap();
    let sn_key = signer.create_key(GUN, "snapshot").unwrap();
    let root = TestKey::root(GUN);
    let targets = TestKey::new();
    let up = BTreeMap::from([
        (
            "root".to_string(),
            doc(
                root_signed(
                    1,
                    &[&root.public],
                    &targets.public,
                    &sn_key.public,
                    &ts_key.public,
                ),
                &[&root],
            ),
        ),
        (
            "targets".to_string(),
            doc(targets_signed(1, json!({}), no_delegations()), &[&targets]),
        ),
    ]);
    let now = OffsetDateTime::now_utc();
    let writes = validate::validate_update(
        GUN,
        &RepoState::default(),
        &up,
        signer.as_ref(),
        now,
        &Limits::default(),
    )
    .unwrap();
    let mut state = RepoState::default();
    for w in writes {
        state.roles.insert(w.role, (w.version, w.raw));
    }
    // The server's own timestamp verifies with the key in root.
    let ts_raw = state.roles["timestamp"].1.clone();
    let ts: tuf::Parsed<Timestamp> = tuf::parse(&ts_raw, "Timestamp").unwrap();
    let keys = BTreeMap::from([(ts_key.id.clone(), ts_key.public.clone())]);
    tuf::verify_threshold(
        "timestamp",
        &ts.envelope,
        std::slice::from_ref(&ts_key.id),
        1,
        &keys,
    )
    .unwrap();
    // Fresh: nothing to do. 8 days later (< 7 days left): re-signed, version + 1.
    assert!(
        validate::refresh_timestamp(GUN, &state, signer.as_ref(), now)
            .unwrap()
            .is_none()
    );
    let w = validate::refresh_timestamp(GUN, &state, signer.as_ref(), now + Duration::days(8))
        .unwrap()
        .unwrap();
    assert_eq!((w.role.as_str(), w.version), ("timestamp", 2));
    let ts2: tuf::Parsed<Timestamp> = tuf::parse(&w.raw, "Timestamp").unwrap();
    assert!(tuf::parse_time(&ts2.body.expires).unwrap() > now + Duration::days(21));
    assert_eq!(ts2.body.meta["snapshot"], ts.body.meta["snapshot"]);
    tuf::verify_threshold(
        "timestamp",
        &ts2.envelope,
        std::slice::from_ref(&ts_key.id),
        1,
        &keys,
    )
    .unwrap();
}
