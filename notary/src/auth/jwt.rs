//! Docker registry tokens: JWTs as docker-registry 2.8 and notary-server 0.7 verify them, and
//! ES256 signing for the built-in token service. Verification and signing use `ring` (the
//! project's one crypto stack) and `x509-parser` for certificates.
//!
//! A token's signing key comes from its `x5c` header (a chain to a bundle certificate) or
//! from its `kid` (the libtrust fingerprint of a bundle certificate's key). Claims: `iss` is
//! the configured issuer, `aud` (a string) the configured service, `exp`/`nbf` within 60 s of
//! leeway; `iat` and `jti` are not checked (neither does Docker).

use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use base64::Engine as _;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair};
use serde::{Deserialize, Serialize};
use x509_parser::prelude::{FromDer, X509Certificate};

/// Allowed clock skew on `exp` and `nbf`, as Docker's verifier.
pub const LEEWAY_SECS: i64 = 60;
/// Longest token accepted (a few KiB of x5c certificates at most).
pub const MAX_TOKEN_LEN: usize = 16 * 1024;
/// Most certificates in an `x5c` chain.
const MAX_CHAIN: usize = 4;

/// Why a token was refused (never shown with the token itself).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TokenError {
    #[error("malformed token: {0}")]
    Malformed(String),
    #[error("unable to get token signing key")]
    NoKey,
    #[error("token signed by untrusted key with ID: {0:?}")]
    UntrustedKid(String),
    #[error("unable to verify certificate chain: {0}")]
    Chain(String),
    #[error("signing algorithm {0:?} does not fit the key")]
    Algorithm(String),
    #[error("invalid token signature")]
    Signature,
    #[error("token from untrusted issuer: {0:?}")]
    Issuer(String),
    #[error("token intended for another audience: {0:?}")]
    Audience(String),
    #[error("token not to be used after {0}")]
    Expired(i64),
    #[error("token not to be used before {0}")]
    NotYetValid(i64),
}

/// One `access` entry of a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    #[serde(rename = "type")]
    pub kind: String,
    pub name: String,
    #[serde(default)]
    pub actions: Vec<String>,
}

/// The claims Docker's verifier reads (others are ignored).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Claims {
    #[serde(default)]
    pub iss: String,
    #[serde(default)]
    pub sub: String,
    /// A string, as distribution 2.8 requires (an array is malformed there too).
    #[serde(default)]
    pub aud: String,
    #[serde(default)]
    pub exp: i64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iat: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub jti: Option<String>,
    #[serde(default)]
    pub access: Vec<Access>,
}

impl Claims {
    /// Does the token grant `action` on `kind:name`? Entries for the same name are merged;
    /// `*` grants every action; push does not imply pull.
    pub fn grants(&self, kind: &str, name: &str, action: &str) -> bool {
        self.access
            .iter()
            .filter(|a| a.kind == kind && a.name == name)
            .any(|a| a.actions.iter().any(|x| x == action || x == "*"))
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
    #[serde(default)]
    x5c: Option<Vec<String>>,
}

/// The libtrust key ID of a public key given as DER SubjectPublicKeyInfo: SHA-256, first 30
/// bytes, base32 (RFC 4648, upper case), in 12 groups of 4 joined by `:`.
pub fn libtrust_kid(spki_der: &[u8]) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let digest = ring::digest::digest(&ring::digest::SHA256, spki_der);
    let bytes = &digest.as_ref()[..30];
    let mut out = String::with_capacity(59);
    let (mut acc, mut bits) = (0u32, 0u32);
    for &b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 {
            bits -= 5;
            if !out.is_empty() && out.len() % 5 == 4 {
                out.push(':');
            }
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    out
}

/// A public key the verifier can check signatures with.
#[derive(Debug, Clone)]
struct VerifyKey {
    kind: KeyKind,
    /// EC point or PKCS#1 RSAPublicKey, as ring takes them.
    bytes: Vec<u8>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum KeyKind {
    P256,
    P384,
    Rsa,
    Unsupported,
}

fn verify_key(cert: &X509Certificate<'_>) -> VerifyKey {
    use x509_parser::oid_registry::{
        OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_PKCS1_RSAENCRYPTION,
    };
    let spki = cert.public_key();
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    let kind = if spki.algorithm.algorithm == OID_PKCS1_RSAENCRYPTION {
        KeyKind::Rsa
    } else if spki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY {
        match curve {
            Some(c) if c == OID_EC_P256 => KeyKind::P256,
            Some(c) if c == OID_NIST_EC_P384 => KeyKind::P384,
            _ => KeyKind::Unsupported,
        }
    } else {
        KeyKind::Unsupported
    };
    VerifyKey {
        kind,
        bytes: spki.subject_public_key.data.to_vec(),
    }
}

impl VerifyKey {
    fn verify(&self, alg: &str, msg: &[u8], sig: &[u8]) -> Result<(), TokenError> {
        let params: &dyn signature::VerificationAlgorithm = match (self.kind, alg) {
            (KeyKind::P256, "ES256") => &signature::ECDSA_P256_SHA256_FIXED,
            (KeyKind::P384, "ES384") => &signature::ECDSA_P384_SHA384_FIXED,
            (KeyKind::Rsa, "RS256") => &signature::RSA_PKCS1_2048_8192_SHA256,
            (KeyKind::Rsa, "RS384") => &signature::RSA_PKCS1_2048_8192_SHA384,
            (KeyKind::Rsa, "RS512") => &signature::RSA_PKCS1_2048_8192_SHA512,
            _ => return Err(TokenError::Algorithm(alg.to_string())),
        };
        signature::UnparsedPublicKey::new(params, &self.bytes)
            .verify(msg, sig)
            .map_err(|_| TokenError::Signature)
    }
}

/// One certificate of the trusted bundle.
#[derive(Debug, Clone)]
struct BundleCert {
    der: Vec<u8>,
    kid: String,
    key: VerifyKey,
}

/// Verifies tokens for one service, as `auth: token` configures it.
#[derive(Debug, Clone)]
pub struct Verifier {
    issuer: String,
    service: String,
    bundle: Vec<BundleCert>,
}

fn b64url(s: &str) -> Result<Vec<u8>, TokenError> {
    // Unpadded is standard; a padded segment is accepted as Docker's verifier accepts it.
    URL_SAFE_NO_PAD
        .decode(s.trim_end_matches('='))
        .map_err(|_| TokenError::Malformed("bad base64url".into()))
}

fn parse_cert(der: &[u8]) -> Result<X509Certificate<'_>, TokenError> {
    X509Certificate::from_der(der)
        .map(|(_, c)| c)
        .map_err(|_| TokenError::Chain("unparsable certificate".into()))
}

fn valid_at(c: &X509Certificate<'_>, now: i64) -> bool {
    let v = c.validity();
    v.not_before.timestamp() <= now && now <= v.not_after.timestamp()
}

impl Verifier {
    /// A verifier trusting every certificate in `bundle_pem` (at least one, each ECDSA P-256,
    /// P-384 or RSA).
    pub fn new(issuer: &str, service: &str, bundle_pem: &[u8]) -> Result<Self, String> {
        use rustls_pki_types::pem::PemObject;
        use rustls_pki_types::CertificateDer;
        let mut bundle = Vec::new();
        for der in CertificateDer::pem_slice_iter(bundle_pem) {
            let der = der.map_err(|e| format!("token root bundle: {e}"))?.to_vec();
            let cert = parse_cert(&der).map_err(|e| format!("token root bundle: {e}"))?;
            let key = verify_key(&cert);
            if key.kind == KeyKind::Unsupported {
                return Err("unable to get public key from token auth root certificate: only ECDSA P-256/P-384 and RSA keys are supported".into());
            }
            let kid = libtrust_kid(cert.public_key().raw);
            bundle.push(BundleCert { der, kid, key });
        }
        if bundle.is_empty() {
            return Err("token auth requires at least one token signing root certificate".into());
        }
        Ok(Verifier {
            issuer: issuer.to_string(),
            service: service.to_string(),
            bundle,
        })
    }

    /// The service (audience) this verifier accepts.
    pub fn service(&self) -> &str {
        &self.service
    }

    /// Check `token` at unix time `now`; the claims if it is good.
    pub fn verify(&self, token: &str, now: i64) -> Result<Claims, TokenError> {
        self.verify_until(token, now).map(|(c, _)| c)
    }

    /// As [`Verifier::verify`], with the time until which the signing key stays valid (the
    /// earliest `notAfter` of an `x5c` chain; unbounded for a bundle `kid`).
    fn verify_until(&self, token: &str, now: i64) -> Result<(Claims, i64), TokenError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(TokenError::Malformed("token too long".into()));
        }
        let mut parts = token.split('.');
        let (Some(h), Some(c), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("not three segments".into()));
        };
        let header: Header = serde_json::from_slice(&b64url(h)?)
            .map_err(|e| TokenError::Malformed(format!("header: {e}")))?;
        let claims: Claims = serde_json::from_slice(&b64url(c)?)
            .map_err(|e| TokenError::Malformed(format!("claims: {e}")))?;
        let sig = b64url(s)?;
        if sig.is_empty() {
            return Err(TokenError::Malformed("token has no signature".into()));
        }
        let (key, key_until) = self.signing_key(&header, now)?;
        let signed = &token[..h.len() + 1 + c.len()];
        key.verify(&header.alg, signed.as_bytes(), &sig)?;
        if claims.iss != self.issuer {
            return Err(TokenError::Issuer(claims.iss));
        }
        if claims.aud != self.service {
            return Err(TokenError::Audience(claims.aud));
        }
        check_times(&claims, now)?;
        Ok((claims, key_until))
    }

    /// `x5c` first (a chain to the bundle), then `kid` (a bundle certificate's key).
    fn signing_key(&self, header: &Header, now: i64) -> Result<(VerifyKey, i64), TokenError> {
        if let Some(x5c) = &header.x5c {
            return self.chain_key(x5c, now);
        }
        let kid = header.kid.as_deref().ok_or(TokenError::NoKey)?;
        // Docker does not check a bundle certificate's dates in kid mode.
        self.bundle
            .iter()
            .find(|b| b.kid == kid)
            .map(|b| (b.key.clone(), i64::MAX))
            .ok_or_else(|| TokenError::UntrustedKid(kid.to_string()))
    }

    /// The leaf's key if the chain (leaf first, then intermediates) leads to a bundle
    /// certificate, every certificate on the way valid at `now`.
    fn chain_key(&self, x5c: &[String], now: i64) -> Result<(VerifyKey, i64), TokenError> {
        if x5c.is_empty() || x5c.len() > MAX_CHAIN {
            return Err(TokenError::Chain(
                "x5c must hold 1 to 4 certificates".into(),
            ));
        }
        let ders = x5c
            .iter()
            .map(|c| {
                STANDARD
                    .decode(c)
                    .map_err(|_| TokenError::Chain("bad x5c base64".into()))
            })
            .collect::<Result<Vec<_>, _>>()?;
        let certs = ders
            .iter()
            .map(|d| parse_cert(d))
            .collect::<Result<Vec<_>, _>>()?;
        let roots = self
            .bundle
            .iter()
            .map(|b| parse_cert(&b.der))
            .collect::<Result<Vec<_>, _>>()?;
        let mut cur = 0usize;
        let mut until = i64::MAX;
        for _ in 0..=MAX_CHAIN {
            let c = &certs[cur];
            if !valid_at(c, now) {
                return Err(TokenError::Chain(
                    "certificate has expired or is not yet valid".into(),
                ));
            }
            until = until.min(c.validity().not_after.timestamp());
            if self.bundle.iter().any(|b| b.der == ders[cur]) {
                return Ok((verify_key(&certs[0]), until));
            }
            let signed_by = |i: &X509Certificate<'_>| {
                i.subject() == c.issuer() && c.verify_signature(Some(i.public_key())).is_ok()
            };
            if let Some(r) = roots.iter().find(|r| valid_at(r, now) && signed_by(r)) {
                let until = until.min(r.validity().not_after.timestamp());
                return Ok((verify_key(&certs[0]), until));
            }
            match (1..certs.len()).find(|&i| i != cur && certs[i].is_ca() && signed_by(&certs[i])) {
                Some(next) => cur = next,
                None => break,
            }
        }
        Err(TokenError::Chain(
            "certificate signed by unknown authority".into(),
        ))
    }
}

/// `exp` and `nbf` against `now`, with [`LEEWAY_SECS`].
pub fn check_times(claims: &Claims, now: i64) -> Result<(), TokenError> {
    if now > claims.exp.saturating_add(LEEWAY_SECS) {
        return Err(TokenError::Expired(claims.exp));
    }
    if let Some(nbf) = claims.nbf {
        if now < nbf.saturating_sub(LEEWAY_SECS) {
            return Err(TokenError::NotYetValid(nbf));
        }
    }
    Ok(())
}

/// A verified token's claims and the time until which its signing key stays valid.
type Verified = (std::sync::Arc<Claims>, i64);

/// Tokens already verified, by SHA-256 of the token: a client sends the same token on every
/// request for its lifetime, and its signature, key and issuer/audience checks give the same
/// answer each time (the bundle is fixed while the server runs). Times (the token's, and an
/// x5c chain's expiry) are checked on every use. Bounded: past [`TokenCache::MAX`] entries it starts over.
#[derive(Default)]
pub struct TokenCache {
    seen: std::sync::Mutex<std::collections::HashMap<[u8; 32], Verified>>,
}

impl TokenCache {
    pub const MAX: usize = 16_384;

    /// Verify `token` with `verifier`, or answer from an earlier verification of it.
    pub fn verify(
        &self,
        verifier: &Verifier,
        token: &str,
        now: i64,
    ) -> Result<std::sync::Arc<Claims>, TokenError> {
        let mut id = [0u8; 32];
        id.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, token.as_bytes()).as_ref());
        let hit = self
            .seen
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&id)
            .cloned();
        if let Some((claims, key_until)) = hit {
            if now > key_until {
                return Err(TokenError::Chain(
                    "certificate has expired or is not yet valid".into(),
                ));
            }
            check_times(&claims, now)?;
            return Ok(claims);
        }
        let (claims, key_until) = verifier.verify_until(token, now)?;
        let claims = std::sync::Arc::new(claims);
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        if seen.len() >= Self::MAX {
            seen.clear();
        }
        seen.insert(id, (claims.clone(), key_until));
        Ok(claims)
    }
}

/// A token-signing key: ES256 (P-256), `kid` = the libtrust ID of its certificate's key.
pub struct SigningKey {
    pair: EcdsaKeyPair,
    kid: String,
    rng: SystemRandom,
}

impl SigningKey {
    /// From a PKCS#8 P-256 key and the DER certificate holding its public key.
    pub fn new(pkcs8: &[u8], cert_der: &[u8]) -> Result<Self, String> {
        let rng = SystemRandom::new();
        let pair =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .map_err(|_| "token signing key is not a P-256 PKCS#8 key".to_string())?;
        let cert = parse_cert(cert_der).map_err(|e| e.to_string())?;
        if cert.public_key().subject_public_key.data.as_ref()
            != signature::KeyPair::public_key(&pair).as_ref()
        {
            return Err("token signing certificate does not hold the signing key".into());
        }
        Ok(SigningKey {
            pair,
            kid: libtrust_kid(cert.public_key().raw),
            rng,
        })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// A compact JWS over `claims`: header `{"alg":"ES256","kid":…,"typ":"JWT"}`, signature
    /// JOSE raw r‖s.
    pub fn sign(&self, claims: &Claims) -> Result<String, String> {
        let header = serde_json::json!({"alg": "ES256", "kid": self.kid, "typ": "JWT"});
        let h = URL_SAFE_NO_PAD.encode(header.to_string());
        let c = URL_SAFE_NO_PAD.encode(serde_json::to_vec(claims).map_err(|e| e.to_string())?);
        let input = format!("{h}.{c}");
        let sig = self
            .pair
            .sign(&self.rng, input.as_bytes())
            .map_err(|_| "signing failed".to_string())?;
        Ok(format!("{input}.{}", URL_SAFE_NO_PAD.encode(sig.as_ref())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    #[test]
    fn libtrust_kid_of_the_spec_key() {
        // The published example key (distribution docs/spec/auth/jwt.md).
        let spki = hex(concat!(
            "3059301306072a8648ce3d020106082a8648ce3d030107034200",
            "04",
            "9bbcd4a71ddbfb3995139732992b3ae0f386f5073212925a6020fcdbee78f7f4",
            "754ddb8b3f2c67ff063c1fa8766f16c73de5343af5c5c01040f41a39caf57e67"
        ));
        assert_eq!(
            libtrust_kid(&spki),
            "PYYO:TEWU:V7JH:26JV:AQTZ:LJC3:SXVJ:XGHA:34F2:2LAQ:ZRMK:Z7Q6"
        );
    }

    #[test]
    fn cached_tokens_still_expire() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
        let cert = rcgen::CertificateParams::new(Vec::<String>::new())
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        let key = SigningKey::new(&kp.serialize_der(), cert.der()).unwrap();
        let v = Verifier::new("iss", "svc", cert.pem().as_bytes()).unwrap();
        let now = 1_800_000_000;
        let claims = Claims {
            iss: "iss".into(),
            sub: "u".into(),
            aud: "svc".into(),
            exp: now + 300,
            nbf: Some(now),
            iat: None,
            jti: None,
            access: vec![],
        };
        let t = key.sign(&claims).unwrap();
        let cache = TokenCache::default();
        assert!(cache.verify(&v, &t, now).is_ok());
        assert!(cache.verify(&v, &t, now + 300).is_ok(), "from the cache");
        assert_eq!(
            cache.verify(&v, &t, now + 400).unwrap_err(),
            TokenError::Expired(now + 300)
        );
        assert!(cache.verify(&v, &t, now - 100).is_err(), "not yet valid");
        let other = Verifier::new("iss", "other-svc", cert.pem().as_bytes()).unwrap();
        assert!(TokenCache::default().verify(&other, &t, now).is_err());
    }

    #[test]
    fn grants_merge_entries_and_star_means_all() {
        let c = Claims {
            iss: String::new(),
            sub: String::new(),
            aud: String::new(),
            exp: 0,
            nbf: None,
            iat: None,
            jti: None,
            access: vec![
                Access {
                    kind: "repository".into(),
                    name: "a/b".into(),
                    actions: vec!["push".into()],
                },
                Access {
                    kind: "repository".into(),
                    name: "a/b".into(),
                    actions: vec!["pull".into()],
                },
                Access {
                    kind: "repository".into(),
                    name: "x".into(),
                    actions: vec!["*".into()],
                },
            ],
        };
        assert!(c.grants("repository", "a/b", "pull") && c.grants("repository", "a/b", "push"));
        assert!(!c.grants("repository", "a/b", "*"));
        assert!(c.grants("repository", "x", "delete"));
        assert!(!c.grants("repository", "a/c", "pull"));
    }
}
