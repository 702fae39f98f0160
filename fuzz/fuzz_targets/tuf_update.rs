//! TUF update validation (`swarmguard_notary::validate::validate_update`), fed the way the trust
//! server feeds it: a `multipart/form-data` upload body, checked against a stored repository.
//! The first input byte picks the stored state (an empty repository, one after a real
//! `docker push`, one after a real `docker trust signer add` + `docker trust sign`); the rest
//! is the upload body, with boundary `fuzz`. States come from the captured fixtures.
#![no_main]

use std::collections::BTreeMap;
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use swarmguard_notary::signer::{HeldKey, Signer, SignerError};
use swarmguard_notary::tuf::{self, Root};
use swarmguard_notary::validate::{self, Limits, RepoState};
use swarmguard_notary::{multipart, names};

const ROOT: &[u8] = include_bytes!("../../notary/tests/fixtures/01-root.json");
const TARGETS_V2: &[u8] = include_bytes!("../../notary/tests/fixtures/02-targets.json");
const TARGETS_V3: &[u8] = include_bytes!("../../notary/tests/fixtures/05-targets.json");
const RELEASES: &[u8] = include_bytes!("../../notary/tests/fixtures/06-targets.json");
const ALICE: &[u8] = include_bytes!("../../notary/tests/fixtures/07-targets.json");
const GUN: &str = "127.0.0.1:5000/demo/bb";
const BOUNDARY: &str = "fuzz";

/// Holds (claims to hold) the captured repository's snapshot and timestamp keys. Its signatures
/// are zeros: `validate_update` does not check the server's own signer (`verify_outgoing` does,
/// and is not reached by client input).
struct ClaimingSigner(Vec<(String, &'static str)>);

impl Signer for ClaimingSigner {
    fn create_key(&self, _: &str, _: &str) -> Result<HeldKey, SignerError> {
        Err(SignerError::Crypto)
    }
    fn keys(&self, _: &str, role: &str) -> Result<Vec<HeldKey>, SignerError> {
        let root = tuf::parse::<Root>(ROOT, "Root").map_err(|_| SignerError::Crypto)?;
        Ok(self
            .0
            .iter()
            .filter(|(_, r)| *r == role)
            .map(|(id, _)| HeldKey {
                id: id.clone(),
                public: root.body.keys[id].clone(),
            })
            .collect())
    }
    fn sign(&self, _: &str, _: &str, _: &str, _: &[u8]) -> Result<(String, Vec<u8>), SignerError> {
        Ok(("ecdsa".into(), vec![0; 64]))
    }
}

struct Fixture {
    signer: ClaimingSigner,
    states: Vec<RepoState>,
    now: time::OffsetDateTime,
}

fn apply(state: &RepoState, uploads: &[(&str, &[u8])], f: &Fixture) -> RepoState {
    let up: BTreeMap<String, Vec<u8>> = uploads
        .iter()
        .map(|(r, raw)| (r.to_string(), raw.to_vec()))
        .collect();
    let writes = validate::validate_update(GUN, state, &up, &f.signer, f.now, &Limits::default())
        .expect("the captured uploads validate");
    let mut next = state.clone();
    for w in writes {
        next.roles.insert(w.role, (w.version, w.raw));
    }
    next
}

fn fixture() -> &'static Fixture {
    static F: OnceLock<Fixture> = OnceLock::new();
    F.get_or_init(|| {
        let root = tuf::parse::<Root>(ROOT, "Root").expect("captured root");
        let held = ["snapshot", "timestamp"]
            .into_iter()
            .map(|r| (root.body.roles[r].keyids[0].clone(), r))
            .collect();
        // A fixed clock inside every captured file's validity, so runs are reproducible.
        let now = time::macros::datetime!(2026-11-22 00:00 UTC);
        let mut f = Fixture {
            signer: ClaimingSigner(held),
            states: vec![RepoState::default()],
            now,
        };
        let pushed = apply(&f.states[0], &[("root", ROOT), ("targets", TARGETS_V2)], &f);
        let signers = apply(&pushed, &[("targets", TARGETS_V3)], &f);
        let signed = apply(
            &signers,
            &[("targets/releases", RELEASES), ("targets/alice", ALICE)],
            &f,
        );
        f.states.extend([pushed, signed]);
        f
    })
}

fuzz_target!(|data: &[u8]| {
    let f = fixture();
    let Some((&pick, body)) = data.split_first() else {
        return;
    };
    let state = &f.states[usize::from(pick) % f.states.len()];
    let limits = Limits::default();
    let Ok(uploads) = multipart::parse(body, BOUNDARY, limits.max_roles) else {
        return;
    };
    let Ok(writes) = validate::validate_update(GUN, state, &uploads, &f.signer, f.now, &limits)
    else {
        return;
    };
    // An accepted update stores only valid role names and never a client timestamp; one that
    // changes a role ends with exactly one fresh server timestamp (one that changes nothing,
    // such as an unchanged root posted again, stores nothing).
    assert!(writes.iter().all(|w| names::valid_role(&w.role)));
    if let Some(last) = writes.last() {
        assert_eq!(last.role, "timestamp");
        assert_eq!(writes.iter().filter(|w| w.role == "timestamp").count(), 1);
    }
    for w in &writes {
        if let Some(raw) = uploads.get(&w.role) {
            assert_eq!(&w.raw, raw, "uploaded roles are stored byte for byte");
        }
    }
});
