//! Helpers to build signed Notary metadata with keys we control, and to drive
//! the trust server's router in process.
#![allow(dead_code)]

use std::sync::Arc;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http_body_util::BodyExt;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, KeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};
use serde_json::{json, Value};
use swarmguard_notary::server::{router, App};
use swarmguard_notary::signer::{LocalSigner, MasterKey};
use swarmguard_notary::store::Store;
use swarmguard_notary::tuf::{self, KeyVal, PublicKey};
use swarmguard_notary::validate::Limits;
use time::{Duration, OffsetDateTime};
use tower::ServiceExt;

pub struct TestKey {
    pair: EcdsaKeyPair,
    pub public: PublicKey,
    pub id: String,
}

impl TestKey {
    /// A plain `ecdsa` key.
    pub fn new() -> Self {
        let rng = SystemRandom::new();
        let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng).unwrap();
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref(), &rng)
            .unwrap();
        let public = tuf::ecdsa_p256_key(pair.public_key().as_ref());
        let id = tuf::key_id(&public).unwrap();
        TestKey { pair, public, id }
    }

    /// An `ecdsa-x509` root key: self-signed certificate with CN = `cn`.
    pub fn root_with(cn: &str, not_before: OffsetDateTime, not_after: OffsetDateTime) -> Self {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        let mut dn = rcgen::DistinguishedName::new();
        dn.push(rcgen::DnType::CommonName, cn);
        params.distinguished_name = dn;
        params.not_before = not_before;
        params.not_after = not_after;
        let cert = params.self_signed(&kp).unwrap();
        let rng = SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &kp.serialize_der(), &rng)
                .unwrap();
        let public = PublicKey {
            keytype: "ecdsa-x509".into(),
            keyval: KeyVal {
                private: None,
                public: B64.encode(cert.pem()),
            },
        };
        let id = tuf::key_id(&public).unwrap();
        TestKey { pair, public, id }
    }

    pub fn root(cn: &str) -> Self {
        let now = OffsetDateTime::now_utc();
        Self::root_with(cn, now - Duration::hours(1), now + Duration::days(3650))
    }

    pub fn sign(&self, signed: &Value) -> Value {
        let msg = swarmguard_notary::cjson::to_canonical(signed).unwrap();
        let sig = self.pair.sign(&SystemRandom::new(), &msg).unwrap();
        json!({"keyid": self.id, "method": "ecdsa", "sig": B64.encode(sig.as_ref())})
    }
}

impl Default for TestKey {
    fn default() -> Self {
        Self::new()
    }
}

/// `{"signed": signed, "signatures": [...]}` as compact JSON.
pub fn doc(signed: Value, keys: &[&TestKey]) -> Vec<u8> {
    let sigs: Vec<Value> = keys.iter().map(|k| k.sign(&signed)).collect();
    serde_json::to_vec(&json!({"signed": signed, "signatures": sigs})).unwrap()
}

pub fn expires_in(d: Duration) -> String {
    tuf::format_time(OffsetDateTime::now_utc() + d)
}

pub fn far() -> String {
    expires_in(Duration::days(365))
}

pub fn key_entry(k: &PublicKey) -> (String, Value) {
    (tuf::key_id(k).unwrap(), serde_json::to_value(k).unwrap())
}

/// Root `signed` body with the given keys (root may be several keys).
pub fn root_signed(
    version: u64,
    root: &[&PublicKey],
    targets: &PublicKey,
    snapshot: &PublicKey,
    timestamp: &PublicKey,
) -> Value {
    let mut keys = serde_json::Map::new();
    for k in root.iter().copied().chain([targets, snapshot, timestamp]) {
        let (id, v) = key_entry(k);
        keys.insert(id, v);
    }
    let ids = |ks: &[&PublicKey]| {
        ks.iter()
            .map(|k| tuf::key_id(k).unwrap())
            .collect::<Vec<_>>()
    };
    json!({
        "_type": "Root",
        "consistent_snapshot": false,
        "expires": far(),
        "keys": keys,
        "roles": {
            "root": {"keyids": ids(root), "threshold": 1},
            "targets": {"keyids": ids(&[targets]), "threshold": 1},
            "snapshot": {"keyids": ids(&[snapshot]), "threshold": 1},
            "timestamp": {"keyids": ids(&[timestamp]), "threshold": 1},
        },
        "version": version,
    })
}

pub fn target(len: u64) -> Value {
    json!({"hashes": {"sha256": B64.encode([7u8; 32])}, "length": len})
}

pub fn targets_signed(version: u64, targets: Value, delegations: Value) -> Value {
    json!({"_type": "Targets", "delegations": delegations, "expires": far(), "targets": targets, "version": version})
}

pub fn no_delegations() -> Value {
    json!({"keys": {}, "roles": []})
}

pub fn multipart(parts: &[(&str, &[u8])]) -> (String, Vec<u8>) {
    let b = "3f1b0a9c5d7e2b4a6c8e0f1d3b5a7c9e";
    let mut body = Vec::new();
    for (name, data) in parts {
        body.extend_from_slice(
            format!(
                "--{b}\r\nContent-Disposition: form-data; name=\"files\"; filename=\"{name}\"\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{b}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={b}"), body)
}

/// An in-process trust server.
pub struct Server {
    pub router: axum::Router,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn new() -> Self {
        Self::with_limits(Limits::default())
    }

    pub fn with_limits(limits: Limits) -> Self {
        Self::with_options(limits, true)
    }

    /// With a given retention and server options (auth off).
    pub fn custom(
        retention: swarmguard_notary::store::Retention,
        tune: impl FnOnce(&mut swarmguard_notary::server::Options),
    ) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open_with(dir.path(), retention).unwrap();
        let master = MasterKey::decode(&B64.encode([0x42u8; 32])).unwrap();
        let signer = Arc::new(LocalSigner::new(store.database(), master).unwrap());
        let limits = Limits::default();
        let mut opts = swarmguard_notary::server::Options::for_limits(&limits, true);
        tune(&mut opts);
        Server {
            router: router(App::with(store, signer, limits, opts, None, None)),
            _dir: dir,
        }
    }

    pub fn with_options(limits: Limits, allow_delete: bool) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let master = MasterKey::decode(&B64.encode([0x42u8; 32])).unwrap();
        let signer = Arc::new(LocalSigner::new(store.database(), master).unwrap());
        Server {
            router: router(App::new(store, signer, limits, allow_delete)),
            _dir: dir,
        }
    }

    pub async fn request(
        &self,
        method: &str,
        uri: &str,
        ct: Option<&str>,
        body: Vec<u8>,
    ) -> (StatusCode, Vec<u8>) {
        let mut b = Request::builder().method(method).uri(uri);
        if let Some(ct) = ct {
            b = b.header("content-type", ct);
        }
        let resp = self
            .router
            .clone()
            .oneshot(b.body(Body::from(body)).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let bytes = resp
            .into_body()
            .collect()
            .await
            .unwrap()
            .to_bytes()
            .to_vec();
        (status, bytes)
    }

    pub async fn get(&self, uri: &str) -> (StatusCode, Vec<u8>) {
        self.request("GET", uri, None, Vec::new()).await
    }

    pub async fn post(&self, gun: &str, parts: &[(&str, &[u8])]) -> (StatusCode, Vec<u8>) {
        let (ct, body) = multipart(parts);
        self.request("POST", &format!("/v2/{gun}/_trust/tuf/"), Some(&ct), body)
            .await
    }

    pub async fn server_key(&self, gun: &str, role: &str) -> PublicKey {
        let (s, b) = self.get(&format!("/v2/{gun}/_trust/tuf/{role}.key")).await;
        assert_eq!(s, StatusCode::OK);
        serde_json::from_slice(&b).unwrap()
    }

    pub async fn current(&self, gun: &str, role: &str) -> Option<Vec<u8>> {
        let (s, b) = self.get(&format!("/v2/{gun}/_trust/tuf/{role}.json")).await;
        (s == StatusCode::OK).then_some(b)
    }
}

impl Default for Server {
    fn default() -> Self {
        Self::new()
    }
}

/// A repository set up the way `docker push` does it: client root and
/// targets keys, server-held snapshot and timestamp keys.
pub struct Repo {
    pub gun: String,
    pub root: TestKey,
    pub targets: TestKey,
    pub snapshot: PublicKey,
    pub timestamp: PublicKey,
}

impl Repo {
    pub async fn create(server: &Server, gun: &str) -> Repo {
        let repo = Repo {
            gun: gun.to_string(),
            root: TestKey::root(gun),
            targets: TestKey::new(),
            timestamp: server.server_key(gun, "timestamp").await,
            snapshot: server.server_key(gun, "snapshot").await,
        };
        let (s, b) = server
            .post(
                gun,
                &[
                    ("root", &repo.root_v(1)),
                    ("targets", &repo.targets_v(1, json!({"v1": target(10)}))),
                ],
            )
            .await;
        assert_eq!(s, StatusCode::OK, "{}", String::from_utf8_lossy(&b));
        repo
    }

    pub fn root_v(&self, version: u64) -> Vec<u8> {
        doc(
            root_signed(
                version,
                &[&self.root.public],
                &self.targets.public,
                &self.snapshot,
                &self.timestamp,
            ),
            &[&self.root],
        )
    }

    pub fn targets_v(&self, version: u64, targets: Value) -> Vec<u8> {
        doc(
            targets_signed(version, targets, no_delegations()),
            &[&self.targets],
        )
    }
}
