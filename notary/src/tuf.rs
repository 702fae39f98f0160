//! Notary's TUF schema (as `notary`/`docker trust` write it), key IDs and
//! signature verification.

use std::collections::BTreeMap;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use ring::digest;
use ring::signature::{self, UnparsedPublicKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use time::OffsetDateTime;

use crate::cjson;

/// Errors from parsing or verifying TUF metadata.
#[derive(Debug, thiserror::Error)]
pub enum TufError {
    #[error("malformed metadata: {0}")]
    Malformed(String),
    #[error("wrong metadata type: expected {expected}, got {got}")]
    WrongType { expected: &'static str, got: String },
    #[error("key {0} is malformed or unsupported")]
    BadKey(String),
    #[error("key ID {listed} does not match its key (computed {computed})")]
    KeyIdMismatch { listed: String, computed: String },
    #[error("{role}: signature threshold not met ({valid} of {threshold} valid)")]
    Threshold {
        role: String,
        valid: usize,
        threshold: usize,
    },
    #[error("{0}: metadata has expired")]
    Expired(String),
    #[error("canonical JSON: {0}")]
    Canonical(#[from] cjson::CanonicalError),
}

fn malformed(e: impl std::fmt::Display) -> TufError {
    TufError::Malformed(e.to_string())
}

/// `{"signed": …, "signatures": […]}` with the signed part kept as a JSON value
/// so it can be re-canonicalised exactly as Notary does.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Envelope {
    pub signed: Value,
    pub signatures: Vec<Signature>,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Signature {
    pub keyid: String,
    pub method: String,
    /// base64 of the raw signature.
    pub sig: String,
}

/// A public key object. `private` is always null on the wire.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct PublicKey {
    pub keytype: String,
    pub keyval: KeyVal,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct KeyVal {
    pub private: Option<Value>,
    /// base64 (PKIX DER for `ecdsa`/`rsa`, raw 32 bytes for `ed25519`,
    /// PEM certificate for `*-x509`).
    pub public: String,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RoleKeys {
    pub keyids: Vec<String>,
    pub threshold: u32,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Root {
    #[serde(rename = "_type")]
    pub typ: String,
    pub consistent_snapshot: bool,
    pub expires: String,
    pub keys: BTreeMap<String, PublicKey>,
    pub roles: BTreeMap<String, RoleKeys>,
    pub version: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileMeta {
    pub hashes: BTreeMap<String, String>,
    pub length: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub custom: Option<Value>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DelegationRole {
    pub keyids: Vec<String>,
    pub name: String,
    #[serde(default)]
    pub paths: Vec<String>,
    pub threshold: u32,
}

#[derive(Debug, Clone, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Delegations {
    #[serde(default)]
    pub keys: BTreeMap<String, PublicKey>,
    #[serde(default)]
    pub roles: Vec<DelegationRole>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Targets {
    #[serde(rename = "_type")]
    pub typ: String,
    #[serde(default)]
    pub delegations: Delegations,
    pub expires: String,
    pub targets: BTreeMap<String, FileMeta>,
    pub version: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Snapshot {
    #[serde(rename = "_type")]
    pub typ: String,
    pub expires: String,
    pub meta: BTreeMap<String, FileMeta>,
    pub version: u64,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Timestamp {
    #[serde(rename = "_type")]
    pub typ: String,
    pub expires: String,
    pub meta: BTreeMap<String, FileMeta>,
    pub version: u64,
}

/// A parsed, not yet verified, document: the envelope plus its typed body.
#[derive(Debug, Clone)]
pub struct Parsed<T> {
    pub envelope: Envelope,
    pub body: T,
}

/// Parse raw metadata bytes into an envelope and a typed body, checking `_type`.
pub fn parse<T: serde::de::DeserializeOwned>(
    raw: &[u8],
    expected_type: &'static str,
) -> Result<Parsed<T>, TufError> {
    let envelope: Envelope = serde_json::from_slice(raw).map_err(malformed)?;
    let typ = envelope
        .signed
        .get("_type")
        .and_then(Value::as_str)
        .unwrap_or("")
        .to_string();
    if typ != expected_type {
        return Err(TufError::WrongType {
            expected: expected_type,
            got: typ,
        });
    }
    let body: T = serde_json::from_value(envelope.signed.clone()).map_err(malformed)?;
    Ok(Parsed { envelope, body })
}

/// Key ID: lowercase hex sha256 of the canonical JSON of the key object with
/// `private: null`.
pub fn key_id(key: &PublicKey) -> Result<String, TufError> {
    let v = serde_json::json!({
        "keytype": key.keytype,
        "keyval": {"private": null, "public": key.keyval.public},
    });
    Ok(hex(digest::digest(
        &digest::SHA256,
        &cjson::to_canonical(&v)?,
    )
    .as_ref()))
}

/// Lowercase hex encoding.
pub fn hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Check that every listed key is well formed and sits under its own ID.
pub fn check_key_map(keys: &BTreeMap<String, PublicKey>) -> Result<(), TufError> {
    for (listed, key) in keys {
        if key.keyval.private.as_ref().is_some_and(|p| !p.is_null()) {
            return Err(TufError::BadKey(format!("{listed}: private part present")));
        }
        let computed = key_id(key)?;
        if &computed != listed {
            return Err(TufError::KeyIdMismatch {
                listed: listed.clone(),
                computed,
            });
        }
        Verifier::from_key(key).map_err(|_| TufError::BadKey(listed.clone()))?;
    }
    Ok(())
}

/// The verification material of one public key.
#[derive(Debug)]
enum Verifier {
    EcdsaP256(Vec<u8>),
    Ed25519(Vec<u8>),
    /// PKCS#1 RSAPublicKey DER.
    Rsa(Vec<u8>),
}

/// Facts about an x509 root key, for trust-pinning style checks.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub common_name: Option<String>,
    pub not_before: i64,
    pub not_after: i64,
}

const OID_EC: &str = "1.2.840.10045.2.1";
const OID_P256: &str = "1.2.840.10045.3.1.7";
const OID_RSA: &str = "1.2.840.113549.1.1.1";

fn spki_verifier(der: &[u8]) -> Result<Verifier, TufError> {
    use x509_parser::prelude::FromDer;
    let (rest, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(der)
        .map_err(|_| TufError::BadKey("SPKI".into()))?;
    if !rest.is_empty() {
        return Err(TufError::BadKey("trailing data after SPKI".into()));
    }
    spki_to_verifier(&spki)
}

fn spki_to_verifier(spki: &x509_parser::x509::SubjectPublicKeyInfo) -> Result<Verifier, TufError> {
    let alg = spki.algorithm.algorithm.to_id_string();
    let point = spki.subject_public_key.data.to_vec();
    if alg == OID_EC {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .map(|o| o.to_id_string());
        if curve.as_deref() == Some(OID_P256) && point.len() == 65 && point[0] == 4 {
            return Ok(Verifier::EcdsaP256(point));
        }
        return Err(TufError::BadKey("unsupported EC curve".into()));
    }
    if alg == OID_RSA {
        return Ok(Verifier::Rsa(point));
    }
    Err(TufError::BadKey(format!("unsupported key algorithm {alg}")))
}

/// Decode the base64 PEM of an x509 key into DER.
fn x509_der(public_b64: &str) -> Result<Vec<u8>, TufError> {
    let pem_bytes = B64
        .decode(public_b64)
        .map_err(|_| TufError::BadKey("base64".into()))?;
    let (rest, pem) =
        x509_parser::pem::parse_x509_pem(&pem_bytes).map_err(|_| TufError::BadKey("PEM".into()))?;
    if pem.label != "CERTIFICATE" || !rest.iter().all(u8::is_ascii_whitespace) {
        return Err(TufError::BadKey(
            "expected exactly one PEM CERTIFICATE".into(),
        ));
    }
    Ok(pem.contents)
}

/// Parse an `ecdsa-x509`/`rsa-x509` key's certificate.
pub fn cert_info(key: &PublicKey) -> Result<CertInfo, TufError> {
    if key.keytype != "ecdsa-x509" && key.keytype != "rsa-x509" {
        return Err(TufError::BadKey(
            "root key is not an x509 certificate".into(),
        ));
    }
    let der = x509_der(&key.keyval.public)?;
    let (_, cert) = x509_parser::parse_x509_certificate(&der)
        .map_err(|_| TufError::BadKey("certificate".into()))?;
    let common_name = cert
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
        .map(str::to_string);
    Ok(CertInfo {
        common_name,
        not_before: cert.validity().not_before.timestamp(),
        not_after: cert.validity().not_after.timestamp(),
    })
}

impl Verifier {
    fn from_key(key: &PublicKey) -> Result<Verifier, TufError> {
        let bad = || TufError::BadKey(key.keytype.clone());
        match key.keytype.as_str() {
            "ecdsa" => {
                let der = B64.decode(&key.keyval.public).map_err(|_| bad())?;
                match spki_verifier(&der)? {
                    v @ Verifier::EcdsaP256(_) => Ok(v),
                    _ => Err(bad()),
                }
            }
            "rsa" => {
                let der = B64.decode(&key.keyval.public).map_err(|_| bad())?;
                match spki_verifier(&der)? {
                    v @ Verifier::Rsa(_) => Ok(v),
                    _ => Err(bad()),
                }
            }
            "ed25519" => {
                let raw = B64.decode(&key.keyval.public).map_err(|_| bad())?;
                if raw.len() != 32 {
                    return Err(bad());
                }
                Ok(Verifier::Ed25519(raw))
            }
            "ecdsa-x509" | "rsa-x509" => {
                let der = x509_der(&key.keyval.public)?;
                let (_, cert) = x509_parser::parse_x509_certificate(&der).map_err(|_| bad())?;
                let v = spki_to_verifier(cert.public_key())?;
                match (&v, key.keytype.as_str()) {
                    (Verifier::EcdsaP256(_), "ecdsa-x509") | (Verifier::Rsa(_), "rsa-x509") => {
                        Ok(v)
                    }
                    _ => Err(bad()),
                }
            }
            _ => Err(bad()),
        }
    }

    fn verify(&self, method: &str, msg: &[u8], sig: &[u8]) -> bool {
        let method = method.to_ascii_lowercase();
        match (self, method.as_str()) {
            (Verifier::EcdsaP256(pk), "ecdsa") => {
                sig.len() == 64
                    && UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, pk)
                        .verify(msg, sig)
                        .is_ok()
            }
            (Verifier::Ed25519(pk), "eddsa") => UnparsedPublicKey::new(&signature::ED25519, pk)
                .verify(msg, sig)
                .is_ok(),
            (Verifier::Rsa(pk), "rsapss") => {
                UnparsedPublicKey::new(&signature::RSA_PSS_2048_8192_SHA256, pk)
                    .verify(msg, sig)
                    .is_ok()
            }
            (Verifier::Rsa(pk), "rsapkcs1v15") => {
                UnparsedPublicKey::new(&signature::RSA_PKCS1_2048_8192_SHA256, pk)
                    .verify(msg, sig)
                    .is_ok()
            }
            _ => false,
        }
    }
}

/// Verify that `env` carries valid signatures from at least `threshold`
/// distinct keys among `keyids` (looked up in `keys`).
pub fn verify_threshold(
    role: &str,
    env: &Envelope,
    keyids: &[String],
    threshold: u32,
    keys: &BTreeMap<String, PublicKey>,
) -> Result<(), TufError> {
    if threshold == 0 {
        return Err(TufError::Malformed(format!(
            "{role}: threshold must be at least 1"
        )));
    }
    let msg = cjson::to_canonical(&env.signed)?;
    let mut valid: Vec<&str> = Vec::new();
    for s in &env.signatures {
        if valid.contains(&s.keyid.as_str()) || !keyids.contains(&s.keyid) {
            continue;
        }
        let Some(key) = keys.get(&s.keyid) else {
            continue;
        };
        let Ok(v) = Verifier::from_key(key) else {
            continue;
        };
        let Ok(sig) = B64.decode(&s.sig) else {
            continue;
        };
        if v.verify(&s.method, &msg, &sig) {
            valid.push(s.keyid.as_str());
        }
    }
    if valid.len() < threshold as usize {
        return Err(TufError::Threshold {
            role: role.to_string(),
            valid: valid.len(),
            threshold: threshold as usize,
        });
    }
    Ok(())
}

/// Parse an RFC 3339 `expires`.
pub fn parse_time(s: &str) -> Result<OffsetDateTime, TufError> {
    OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
        .map_err(|_| TufError::Malformed(format!("bad time {s:?}")))
}

/// Fail if `expires` is not after `now`.
pub fn check_expiry(role: &str, expires: &str, now: OffsetDateTime) -> Result<(), TufError> {
    if parse_time(expires)? <= now {
        return Err(TufError::Expired(role.to_string()));
    }
    Ok(())
}

/// RFC 3339 with nanoseconds, as Go writes it.
pub fn format_time(t: OffsetDateTime) -> String {
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| "1970-01-01T00:00:00Z".to_string())
}

/// `FileMeta` for raw bytes with sha256 and sha512, as Notary's server writes it.
pub fn file_meta(raw: &[u8]) -> FileMeta {
    let mut hashes = BTreeMap::new();
    hashes.insert(
        "sha256".to_string(),
        B64.encode(digest::digest(&digest::SHA256, raw)),
    );
    hashes.insert(
        "sha512".to_string(),
        B64.encode(digest::digest(&digest::SHA512, raw)),
    );
    FileMeta {
        hashes,
        length: raw.len() as u64,
        custom: None,
    }
}

/// Does `meta` describe `raw`? Every listed hash we know must match (sha256 is
/// required), and the length must match.
pub fn meta_matches(meta: &FileMeta, raw: &[u8]) -> bool {
    if meta.length != raw.len() as u64 {
        return false;
    }
    let Some(want) = meta.hashes.get("sha256") else {
        return false;
    };
    for (alg, want_b64) in &meta.hashes {
        let got = match alg.as_str() {
            "sha256" => digest::digest(&digest::SHA256, raw),
            "sha512" => digest::digest(&digest::SHA512, raw),
            "sha384" => digest::digest(&digest::SHA384, raw),
            _ => return false,
        };
        let Ok(want_raw) = B64.decode(want_b64) else {
            return false;
        };
        if want_raw != got.as_ref() {
            return false;
        }
    }
    let _ = want;
    true
}

/// sha256 hex of raw bytes.
pub fn sha256_hex(raw: &[u8]) -> String {
    hex(digest::digest(&digest::SHA256, raw).as_ref())
}

/// The `ecdsa` key object for an uncompressed P-256 point (base64 PKIX DER).
pub fn ecdsa_p256_key(point: &[u8]) -> PublicKey {
    // SEQUENCE { SEQUENCE { id-ecPublicKey, prime256v1 }, BIT STRING { 0x00, point } }
    const PREFIX: [u8; 26] = [
        0x30, 0x59, 0x30, 0x13, 0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01, 0x06, 0x08,
        0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07, 0x03, 0x42, 0x00,
    ];
    let mut der = PREFIX.to_vec();
    der.extend_from_slice(point);
    PublicKey {
        keytype: "ecdsa".into(),
        keyval: KeyVal {
            private: None,
            public: B64.encode(der),
        },
    }
}
