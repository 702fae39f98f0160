//! TUF metadata parsing (`swarmguard_notary::tuf`): every role file a client uploads goes
//! through `tuf::parse`, then key maps, x509 root certificates, times, file meta and signature
//! thresholds. The input is one metadata file; it is read as each of the four types, and
//! whatever parses runs through every check the server applies to it.
#![no_main]

use std::collections::BTreeMap;

use libfuzzer_sys::fuzz_target;
use swarmguard_notary::tuf::{self, Envelope, PublicKey, Root, Snapshot, Targets, Timestamp};
use swarmguard_notary::validate;

fn keys(map: &BTreeMap<String, PublicKey>) {
    let _ = tuf::check_key_map(map);
    for key in map.values() {
        let a = tuf::key_id(key);
        let b = tuf::key_id(key);
        assert_eq!(a.is_ok(), b.is_ok());
        if let (Ok(a), Ok(b)) = (a, b) {
            assert_eq!(a, b, "key IDs are deterministic");
            assert_eq!(a.len(), 64);
        }
        let _ = tuf::cert_info(key);
    }
}

fn signatures(role: &str, env: &Envelope, map: &BTreeMap<String, PublicKey>) {
    // One pass checks every signature; the threshold only decides the verdict.
    let ids: Vec<String> = map.keys().cloned().collect();
    let _ = tuf::verify_threshold(role, env, &ids, 1, map);
}

fn meta(raw: &[u8], entries: &BTreeMap<String, tuf::FileMeta>) {
    for m in entries.values() {
        let _ = tuf::meta_matches(m, raw);
    }
}

fuzz_target!(|raw: &[u8]| {
    let now = time::OffsetDateTime::UNIX_EPOCH;
    if let Ok(p) = tuf::parse::<Root>(raw, "Root") {
        keys(&p.body.keys);
        signatures("root", &p.envelope, &p.body.keys);
        let _ = tuf::check_expiry("root", &p.body.expires, now);
    }
    if let Ok(p) = tuf::parse::<Targets>(raw, "Targets") {
        keys(&p.body.delegations.keys);
        signatures("targets", &p.envelope, &p.body.delegations.keys);
        meta(raw, &p.body.targets);
        let _ = tuf::check_expiry("targets", &p.body.expires, now);
    }
    if let Ok(p) = tuf::parse::<Snapshot>(raw, "Snapshot") {
        meta(raw, &p.body.meta);
        let _ = tuf::check_expiry("snapshot", &p.body.expires, now);
    }
    if let Ok(p) = tuf::parse::<Timestamp>(raw, "Timestamp") {
        meta(raw, &p.body.meta);
        let _ = tuf::check_expiry("timestamp", &p.body.expires, now);
    }
    let _ = validate::timestamp_refresh_at(raw);
    let _ = validate::timestamp_needs_refresh(raw, now);
});
