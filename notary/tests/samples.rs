//! Our canonical JSON, key IDs and signature checks against metadata captured
//! between the real docker CLI and a real notary-server (see
//! shared/facts/notary-dct.md §4).

use std::collections::BTreeMap;

use swarmguard_notary::signer::{HeldKey, Signer, SignerError};
use swarmguard_notary::tuf::{self, Root, Snapshot, Targets, Timestamp};
use swarmguard_notary::{cjson, validate};

const ROOT: &[u8] = include_bytes!("fixtures/01-root.json");
const TARGETS_V2: &[u8] = include_bytes!("fixtures/02-targets.json");
const TIMESTAMP: &[u8] = include_bytes!("fixtures/03-timestamp.json");
const SNAPSHOT: &[u8] = include_bytes!("fixtures/04-snapshot.json");
const TARGETS_V3: &[u8] = include_bytes!("fixtures/05-targets.json");
const RELEASES: &[u8] = include_bytes!("fixtures/06-targets.json");
const ALICE: &[u8] = include_bytes!("fixtures/07-targets.json");
const GUN: &str = "127.0.0.1:5000/demo/bb";

fn root() -> tuf::Parsed<Root> {
    tuf::parse(ROOT, "Root").unwrap()
}

#[test]
fn fixtures_are_the_captured_bytes() {
    assert_eq!(
        tuf::sha256_hex(ROOT),
        "f6b1782e28f018aafca04c93e59a094eef9f456e66e74ca787d057af59383fef"
    );
    assert_eq!(
        tuf::sha256_hex(TARGETS_V2),
        "0339979a8a1480cf8fead7b4952d5b953a9d244791eeabccb0fb7795306428d7"
    );
    assert_eq!(
        tuf::sha256_hex(SNAPSHOT),
        "ce8facf38643a0c04f9ca492c836008d6a09f907558c3b6fdc2fb5522b733e50"
    );
}

#[test]
fn key_ids_match_captured_ids() {
    let r = root();
    tuf::check_key_map(&r.body.keys).unwrap();
    assert_eq!(r.body.keys.len(), 4);
    let t: tuf::Parsed<Targets> = tuf::parse(TARGETS_V3, "Targets").unwrap();
    tuf::check_key_map(&t.body.delegations.keys).unwrap();
}

#[test]
fn canonical_json_reproduces_signed_bytes_of_go_output() {
    // Go's encoding/json output of a struct with sorted fields *is* canonical:
    // the `signed` object inside each file must re-canonicalise byte for byte.
    for raw in [
        ROOT, TARGETS_V2, TIMESTAMP, SNAPSHOT, TARGETS_V3, RELEASES, ALICE,
    ] {
        let text = std::str::from_utf8(raw).unwrap();
        let start = text.find("\"signed\":").unwrap() + "\"signed\":".len();
        let end = text.rfind(",\"signatures\":").unwrap();
        let env: tuf::Envelope = serde_json::from_slice(raw).unwrap();
        assert_eq!(
            cjson::to_canonical(&env.signed).unwrap(),
            &text.as_bytes()[start..end]
        );
    }
}

#[test]
fn captured_signatures_verify() {
    let r = root();
    let keys = &r.body.keys;
    let check = |raw: &[u8], typ: &'static str, role: &str| {
        let env: tuf::Envelope = serde_json::from_slice(raw).unwrap();
        assert_eq!(env.signed["_type"], typ);
        let rk = &r.body.roles[role];
        tuf::verify_threshold(role, &env, &rk.keyids, rk.threshold, keys).unwrap();
    };
    check(ROOT, "Root", "root");
    check(TARGETS_V2, "Targets", "targets");
    check(TARGETS_V3, "Targets", "targets");
    check(SNAPSHOT, "Snapshot", "snapshot");
    check(TIMESTAMP, "Timestamp", "timestamp");
    let t3: tuf::Parsed<Targets> = tuf::parse(TARGETS_V3, "Targets").unwrap();
    for (raw, name) in [(RELEASES, "targets/releases"), (ALICE, "targets/alice")] {
        let d = t3
            .body
            .delegations
            .roles
            .iter()
            .find(|d| d.name == name)
            .unwrap();
        let env: tuf::Envelope = serde_json::from_slice(raw).unwrap();
        tuf::verify_threshold(
            name,
            &env,
            &d.keyids,
            d.threshold,
            &t3.body.delegations.keys,
        )
        .unwrap();
    }
}

#[test]
fn tampered_or_misattributed_signatures_fail() {
    let r = root();
    let rk = &r.body.roles["targets"];
    let mut env: tuf::Envelope = serde_json::from_slice(TARGETS_V2).unwrap();
    env.signed["version"] = serde_json::json!(3);
    assert!(tuf::verify_threshold("targets", &env, &rk.keyids, 1, &r.body.keys).is_err());
    // A valid signature by a key that is not the role's key does not count.
    let env: tuf::Envelope = serde_json::from_slice(TARGETS_V2).unwrap();
    let ts = &r.body.roles["timestamp"];
    assert!(tuf::verify_threshold("timestamp", &env, &ts.keyids, 1, &r.body.keys).is_err());
    // ASN.1 DER instead of fixed r||s is refused.
    let mut env: tuf::Envelope = serde_json::from_slice(TARGETS_V2).unwrap();
    env.signatures[0].sig = "MEUCIQ==".into();
    assert!(tuf::verify_threshold("targets", &env, &rk.keyids, 1, &r.body.keys).is_err());
    // The same signature listed twice counts once.
    let mut env: tuf::Envelope = serde_json::from_slice(TARGETS_V2).unwrap();
    env.signatures.push(env.signatures[0].clone());
    assert!(tuf::verify_threshold("targets", &env, &rk.keyids, 2, &r.body.keys).is_err());
}

#[test]
fn hashes_chain_timestamp_snapshot_targets() {
    let ts: tuf::Parsed<Timestamp> = tuf::parse(TIMESTAMP, "Timestamp").unwrap();
    assert!(tuf::meta_matches(&ts.body.meta["snapshot"], SNAPSHOT));
    let sn: tuf::Parsed<Snapshot> = tuf::parse(SNAPSHOT, "Snapshot").unwrap();
    assert!(tuf::meta_matches(&sn.body.meta["root"], ROOT));
    assert!(tuf::meta_matches(&sn.body.meta["targets"], TARGETS_V2));
    assert!(!tuf::meta_matches(&sn.body.meta["targets"], TARGETS_V3));
    // Our own file_meta equals what notary-server wrote.
    assert_eq!(tuf::file_meta(SNAPSHOT), ts.body.meta["snapshot"]);
}

#[test]
fn root_certificate_is_for_the_gun() {
    let r = root();
    let id = &r.body.roles["root"].keyids[0];
    let info = tuf::cert_info(&r.body.keys[id]).unwrap();
    assert_eq!(info.common_name.as_deref(), Some(GUN));
    assert!(info.not_after - info.not_before > 9 * 365 * 86400);
}

/// A signer that claims to hold the captured server keys; its signatures are
/// not checked by `validate_update` (the server trusts its own signer).
struct ClaimingSigner(BTreeMap<String, String>);

impl Signer for ClaimingSigner {
    fn create_key(&self, _: &str, _: &str) -> Result<HeldKey, SignerError> {
        unimplemented!()
    }
    fn keys(&self, _gun: &str, role: &str) -> Result<Vec<HeldKey>, SignerError> {
        let r = root();
        Ok(self
            .0
            .iter()
            .filter(|(_, rl)| rl.as_str() == role)
            .map(|(id, _)| HeldKey {
                id: id.clone(),
                public: r.body.keys[id].clone(),
            })
            .collect())
    }
    fn sign(&self, _: &str, _: &str, _: &str, _: &[u8]) -> Result<(String, Vec<u8>), SignerError> {
        Ok(("ecdsa".into(), vec![0; 64]))
    }
}

fn claiming() -> ClaimingSigner {
    let r = root();
    let mut m = BTreeMap::new();
    m.insert(
        r.body.roles["timestamp"].keyids[0].clone(),
        "timestamp".to_string(),
    );
    m.insert(
        r.body.roles["snapshot"].keyids[0].clone(),
        "snapshot".to_string(),
    );
    ClaimingSigner(m)
}

fn now() -> time::OffsetDateTime {
    time::OffsetDateTime::now_utc()
}

#[test]
fn real_docker_push_upload_validates() {
    let mut up = BTreeMap::new();
    up.insert("root".to_string(), ROOT.to_vec());
    up.insert("targets".to_string(), TARGETS_V2.to_vec());
    let writes = validate::validate_update(
        GUN,
        &Default::default(),
        &up,
        &claiming(),
        now(),
        &Default::default(),
    )
    .unwrap();
    let roles: Vec<(&str, u64)> = writes
        .iter()
        .map(|w| (w.role.as_str(), w.version))
        .collect();
    assert_eq!(
        roles,
        vec![
            ("root", 1),
            ("targets", 2),
            ("snapshot", 1),
            ("timestamp", 1)
        ]
    );
    // Server-built snapshot names the uploaded bytes.
    let sn: tuf::Parsed<Snapshot> = tuf::parse(&writes[2].raw, "Snapshot").unwrap();
    assert!(tuf::meta_matches(&sn.body.meta["root"], ROOT));
    assert!(tuf::meta_matches(&sn.body.meta["targets"], TARGETS_V2));
}

#[test]
fn real_delegation_flow_validates_and_rollback_is_refused() {
    let signer = claiming();
    let mut up = BTreeMap::new();
    up.insert("root".to_string(), ROOT.to_vec());
    up.insert("targets".to_string(), TARGETS_V2.to_vec());
    let mut state = validate::RepoState::default();
    let apply = |state: &mut validate::RepoState, w: Vec<validate::Write>| {
        for w in w {
            state.roles.insert(w.role, (w.version, w.raw));
        }
    };
    let w =
        validate::validate_update(GUN, &state, &up, &signer, now(), &Default::default()).unwrap();
    apply(&mut state, w);
    // docker trust signer add: targets v3 with delegations.
    let up = BTreeMap::from([("targets".to_string(), TARGETS_V3.to_vec())]);
    let w =
        validate::validate_update(GUN, &state, &up, &signer, now(), &Default::default()).unwrap();
    apply(&mut state, w);
    // docker trust sign: both delegations.
    let up = BTreeMap::from([
        ("targets/alice".to_string(), ALICE.to_vec()),
        ("targets/releases".to_string(), RELEASES.to_vec()),
    ]);
    let w =
        validate::validate_update(GUN, &state, &up, &signer, now(), &Default::default()).unwrap();
    assert_eq!(w.len(), 4);
    apply(&mut state, w);
    // Replaying targets v2 is a rollback.
    let up = BTreeMap::from([("targets".to_string(), TARGETS_V2.to_vec())]);
    let e = validate::validate_update(GUN, &state, &up, &signer, now(), &Default::default())
        .unwrap_err();
    assert!(matches!(e, validate::UpdateError::OldVersion { .. }), "{e}");
    // The timestamp may never be uploaded.
    let up = BTreeMap::from([("timestamp".to_string(), TIMESTAMP.to_vec())]);
    assert!(
        validate::validate_update(GUN, &state, &up, &signer, now(), &Default::default()).is_err()
    );
    // The root is for another GUN.
    let up = BTreeMap::from([
        ("root".to_string(), ROOT.to_vec()),
        ("targets".to_string(), TARGETS_V2.to_vec()),
    ]);
    let e = validate::validate_update(
        "127.0.0.1:5000/demo/other",
        &Default::default(),
        &up,
        &signer,
        now(),
        &Default::default(),
    )
    .unwrap_err();
    assert!(e.to_string().contains("not issued for"), "{e}");
}
