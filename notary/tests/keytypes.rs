//! Signature methods other than ecdsa: eddsa (ed25519), rsapss and
//! rsapkcs1v15 (rsa and rsa-x509 keys).

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, Ed25519KeyPair, KeyPair, RsaKeyPair};
use serde_json::json;
use swarmguard_notary::cjson;
use swarmguard_notary::tuf::{self, Envelope, KeyVal, PublicKey, Signature};

const RSA_DER: &[u8] = include_bytes!("fixtures/rsa-2048.der");
const RSA_SPKI: &[u8] = include_bytes!("fixtures/rsa-2048.spki");
const RSA_CERT: &str = include_str!("fixtures/rsa-2048-root.pem");

fn envelope(sig: Vec<u8>, keyid: &str, method: &str) -> Envelope {
    Envelope {
        signed: signed(),
        signatures: vec![Signature {
            keyid: keyid.into(),
            method: method.into(),
            sig: B64.encode(sig),
        }],
    }
}

fn signed() -> serde_json::Value {
    json!({"_type": "Targets", "expires": "2030-01-01T00:00:00Z", "targets": {}, "version": 1})
}

fn check(key: &PublicKey, env: &Envelope) -> bool {
    let id = tuf::key_id(key).unwrap();
    let keys = BTreeMap::from([(id.clone(), key.clone())]);
    tuf::verify_threshold("targets", env, &[id], 1, &keys).is_ok()
}

#[test]
fn ed25519_eddsa() {
    let rng = SystemRandom::new();
    let pk8 = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
    let pair = Ed25519KeyPair::from_pkcs8(pk8.as_ref()).unwrap();
    let key = PublicKey {
        keytype: "ed25519".into(),
        keyval: KeyVal {
            private: None,
            public: B64.encode(pair.public_key().as_ref()),
        },
    };
    let id = tuf::key_id(&key).unwrap();
    let sig = pair
        .sign(&cjson::to_canonical(&signed()).unwrap())
        .as_ref()
        .to_vec();
    assert!(check(&key, &envelope(sig.clone(), &id, "eddsa")));
    assert!(
        check(&key, &envelope(sig.clone(), &id, "EdDSA")),
        "method is case-insensitive as in notary"
    );
    assert!(
        !check(&key, &envelope(sig, &id, "ecdsa")),
        "method must match the key type"
    );
}

fn rsa_sign(alg: &'static dyn signature::RsaEncoding) -> Vec<u8> {
    let pair = RsaKeyPair::from_der(RSA_DER).unwrap();
    let mut sig = vec![0; pair.public().modulus_len()];
    pair.sign(
        alg,
        &SystemRandom::new(),
        &cjson::to_canonical(&signed()).unwrap(),
        &mut sig,
    )
    .unwrap();
    sig
}

#[test]
fn rsa_pss_and_pkcs1() {
    let key = PublicKey {
        keytype: "rsa".into(),
        keyval: KeyVal {
            private: None,
            public: B64.encode(RSA_SPKI),
        },
    };
    let id = tuf::key_id(&key).unwrap();
    let pss = rsa_sign(&signature::RSA_PSS_SHA256);
    let pkcs1 = rsa_sign(&signature::RSA_PKCS1_SHA256);
    assert!(check(&key, &envelope(pss.clone(), &id, "rsapss")));
    assert!(check(&key, &envelope(pkcs1.clone(), &id, "rsapkcs1v15")));
    assert!(!check(&key, &envelope(pss, &id, "rsapkcs1v15")));
    assert!(!check(&key, &envelope(pkcs1, &id, "ecdsa")));
}

#[test]
fn rsa_x509_root_key() {
    let key = PublicKey {
        keytype: "rsa-x509".into(),
        keyval: KeyVal {
            private: None,
            public: B64.encode(RSA_CERT.as_bytes()),
        },
    };
    let id = tuf::key_id(&key).unwrap();
    assert!(check(
        &key,
        &envelope(rsa_sign(&signature::RSA_PSS_SHA256), &id, "rsapss")
    ));
    let info = tuf::cert_info(&key).unwrap();
    assert_eq!(info.common_name.as_deref(), Some("127.0.0.1:5000/demo/rsa"));
    // An RSA certificate labelled ecdsa-x509 is refused.
    let wrong = PublicKey {
        keytype: "ecdsa-x509".into(),
        keyval: key.keyval.clone(),
    };
    let wid = tuf::key_id(&wrong).unwrap();
    assert!(!check(
        &wrong,
        &envelope(rsa_sign(&signature::RSA_PSS_SHA256), &wid, "rsapss")
    ));
    assert!(tuf::check_key_map(&BTreeMap::from([(wid, wrong)])).is_err());
}

#[test]
fn malformed_keys_are_refused() {
    for (keytype, public) in [
        ("ecdsa", "not base64!"),
        ("ecdsa", "AAAA"),
        ("ed25519", "AAAA"),
        ("rsa", "AAAA"),
        ("ecdsa-x509", "AAAA"),
        ("dsa", "AAAA"),
    ] {
        let k = PublicKey {
            keytype: keytype.into(),
            keyval: KeyVal {
                private: None,
                public: public.into(),
            },
        };
        let id = tuf::key_id(&k).unwrap();
        assert!(
            tuf::check_key_map(&BTreeMap::from([(id, k)])).is_err(),
            "{keytype} {public}"
        );
    }
    // A key listed under an ID that is not its own.
    let k = PublicKey {
        keytype: "rsa".into(),
        keyval: KeyVal {
            private: None,
            public: B64.encode(RSA_SPKI),
        },
    };
    assert!(tuf::check_key_map(&BTreeMap::from([("00".repeat(32), k.clone())])).is_err());
    // A private part is never accepted.
    let mut p = k;
    p.keyval.private = Some(json!("c2VjcmV0"));
    let id = tuf::key_id(&p).unwrap();
    assert!(tuf::check_key_map(&BTreeMap::from([(id, p)])).is_err());
}
