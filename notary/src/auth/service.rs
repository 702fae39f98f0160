//! The built-in token service: `GET /auth/token` with Basic credentials checked against the
//! users file, answering with a short-lived ES256 token for the scopes the access list allows,
//! in the response form the docker CLI, dockerd and the notary CLI read
//! (`token`, `access_token`, `expires_in`, `issued_at`).
//!
//! Its signing key and certificate live in the data dir (`token-signing.key` 0600,
//! `token-signing.crt`): a docker-registry configured with `auth: token` and that certificate
//! as `rootcertbundle` accepts the same tokens.

use std::net::IpAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde_json::json;
use zeroize::Zeroizing;

use super::jwt::{Access, Claims, SigningKey};
use super::users::{AccessList, Users};
use crate::guard::RateLimit;

/// Token lifetime (Docker clients treat anything under 60 s as 60 s).
pub const TOKEN_TTL_SECS: i64 = 300;
/// Longest query string accepted.
const MAX_QUERY: usize = 8 * 1024;
/// Most scopes in one request.
const MAX_SCOPES: usize = 16;

/// File names in the data dir.
pub const SIGNING_KEY_FILE: &str = "token-signing.key";
pub const SIGNING_CERT_FILE: &str = "token-signing.crt";

/// How hard failed logins are limited.
#[derive(Debug, Clone, Copy)]
pub struct LoginLimits {
    pub failures_per_user: u32,
    pub failures_per_peer: u32,
    pub window: Duration,
}

impl Default for LoginLimits {
    fn default() -> Self {
        LoginLimits {
            failures_per_user: 10,
            failures_per_peer: 30,
            window: Duration::from_secs(300),
        }
    }
}

pub struct TokenService {
    users: Users,
    access: AccessList,
    key: SigningKey,
    issuer: String,
    failed_by_user: RateLimit,
    failed_by_peer: RateLimit,
    /// bcrypt is slow on purpose: at most two checks at a time, so a login flood cannot take
    /// every core.
    bcrypt_slots: tokio::sync::Semaphore,
}

/// One `scope` value: `type:name:actions`; the name may itself hold `:` (a GUN with a port).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Scope {
    pub kind: String,
    pub name: String,
    pub actions: Vec<String>,
}

impl Scope {
    pub fn parse(s: &str) -> Option<Scope> {
        let (kind, rest) = s.split_once(':')?;
        let (name, actions) = rest.rsplit_once(':')?;
        if kind.is_empty() || name.is_empty() || name.len() > 512 {
            return None;
        }
        Some(Scope {
            kind: kind.to_string(),
            name: name.to_string(),
            actions: actions
                .split(',')
                .filter(|a| !a.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }
}

/// `application/x-www-form-urlencoded` decoding of one value.
fn form_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let h = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(h, 16).ok()?);
                i += 2;
            }
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// The parts of a token request the service uses.
#[derive(Debug, Default)]
pub struct TokenRequest {
    pub service: String,
    pub scopes: Vec<Scope>,
}

pub fn parse_query(query: &str) -> Result<TokenRequest, &'static str> {
    if query.len() > MAX_QUERY {
        return Err("query too long");
    }
    let mut req = TokenRequest::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let v = form_decode(v).ok_or("bad encoding")?;
        match k {
            "service" => req.service = v,
            "scope" => {
                for s in v.split(' ').filter(|s| !s.is_empty()) {
                    if req.scopes.len() >= MAX_SCOPES {
                        return Err("too many scopes");
                    }
                    req.scopes.push(Scope::parse(s).ok_or("malformed scope")?);
                }
            }
            _ => {}
        }
    }
    let ok = |c: u8| c.is_ascii_alphanumeric() || b".-_:".contains(&c);
    if req.service.is_empty() || req.service.len() > 255 || !req.service.bytes().all(ok) {
        return Err("missing or invalid service");
    }
    Ok(req)
}

fn basic_credentials(headers: &HeaderMap) -> Option<(String, Zeroizing<String>)> {
    let v = headers.get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, b64) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") || b64.len() > 1024 {
        return None;
    }
    let raw = Zeroizing::new(B64.decode(b64.trim()).ok()?);
    let text = Zeroizing::new(String::from_utf8(raw.to_vec()).ok()?);
    let (user, pass) = text.split_once(':')?;
    Some((user.to_string(), Zeroizing::new(pass.to_string())))
}

fn json_error(status: StatusCode, code: &str, message: &str) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        json!({"errors": [{"code": code, "message": message}]}).to_string(),
    )
        .into_response()
}

/// Load the token-signing key and certificate from `dir`, creating them on first start.
pub fn load_or_create_signing_key(dir: &Path) -> Result<SigningKey, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivatePkcs8KeyDer};
    use swarmguard_secrets::atomic::{write_atomic, Placement};
    let key_path = dir.join(SIGNING_KEY_FILE);
    let cert_path = dir.join(SIGNING_CERT_FILE);
    if !key_path.exists() {
        let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
            .map_err(|e| e.to_string())?;
        let mut params =
            rcgen::CertificateParams::new(Vec::<String>::new()).map_err(|e| e.to_string())?;
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "swarmguard token signer");
        let now = time::OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::hours(1);
        params.not_after = now + time::Duration::days(3650);
        let cert = params.self_signed(&kp).map_err(|e| e.to_string())?;
        let key_pem = Zeroizing::new(kp.serialize_pem());
        write_atomic(&cert_path, cert.pem().as_bytes(), 0o644, Placement::Replace)
            .map_err(|e| format!("{}: {e}", cert_path.display()))?;
        write_atomic(&key_path, key_pem.as_bytes(), 0o600, Placement::Replace)
            .map_err(|e| format!("{}: {e}", key_path.display()))?;
        tracing::info!(cert = %cert_path.display(), "created the token-signing key and certificate");
    }
    let key_text =
        swarmguard_secrets::keyfile::read_private_text(&key_path).map_err(|e| e.to_string())?;
    let pkcs8 = PrivatePkcs8KeyDer::from_pem_slice(key_text.as_bytes())
        .map_err(|e| format!("{}: {e}", key_path.display()))?;
    let cert = CertificateDer::from_pem_file(&cert_path)
        .map_err(|e| format!("{}: {e}", cert_path.display()))?;
    SigningKey::new(pkcs8.secret_pkcs8_der(), &cert)
}

impl TokenService {
    pub fn new(
        users: Users,
        access: AccessList,
        key: SigningKey,
        issuer: &str,
        limits: LoginLimits,
    ) -> Self {
        TokenService {
            users,
            access,
            key,
            issuer: issuer.to_string(),
            failed_by_user: RateLimit::new(limits.failures_per_user, limits.window),
            failed_by_peer: RateLimit::new(limits.failures_per_peer, limits.window),
            bcrypt_slots: tokio::sync::Semaphore::new(2),
        }
    }

    /// `GET /auth/token`.
    pub async fn handle(
        self: &Arc<Self>,
        headers: &HeaderMap,
        query: &str,
        peer: IpAddr,
    ) -> Response {
        let req = match parse_query(query) {
            Ok(r) => r,
            Err(e) => return json_error(StatusCode::BAD_REQUEST, "INVALID_REQUEST", e),
        };
        let user = match basic_credentials(headers) {
            None => None,
            Some((user, pass)) => match self.login(user, pass, peer).await {
                Ok(u) => Some(u),
                Err(r) => return r,
            },
        };
        self.issue(&req, user.as_deref())
    }

    /// Check credentials under the failed-login limits; the user name if they are right.
    async fn login(
        self: &Arc<Self>,
        user: String,
        pass: Zeroizing<String>,
        peer: IpAddr,
    ) -> Result<String, Response> {
        let peer_key = peer.to_string();
        if !self.failed_by_user.allows(&user) || !self.failed_by_peer.allows(&peer_key) {
            tracing::warn!(%peer, "login refused: too many failed logins");
            return Err(json_error(
                StatusCode::TOO_MANY_REQUESTS,
                "TOOMANYREQUESTS",
                "too many failed logins; try again later",
            ));
        }
        let Ok(Ok(_slot)) =
            tokio::time::timeout(Duration::from_secs(10), self.bcrypt_slots.acquire()).await
        else {
            return Err(json_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "token service busy; try again",
            ));
        };
        let me = self.clone();
        let u = user.clone();
        let ok = tokio::task::spawn_blocking(move || me.users.check(&u, &pass))
            .await
            .unwrap_or(false);
        if ok {
            return Ok(user);
        }
        self.failed_by_user.hit(&user);
        self.failed_by_peer.hit(&peer_key);
        tracing::info!(%peer, "login failed");
        Err(json_error(
            StatusCode::UNAUTHORIZED,
            "UNAUTHORIZED",
            "invalid username or password",
        ))
    }

    /// A token for what `user` asked and may have (a partial or empty grant is not an error:
    /// the resource server answers `insufficient_scope`).
    fn issue(&self, req: &TokenRequest, user: Option<&str>) -> Response {
        let access = req
            .scopes
            .iter()
            .filter(|s| s.kind == "repository")
            .map(|s| Access {
                kind: "repository".into(),
                name: s.name.clone(),
                actions: self.access.grant(user, &s.name, &s.actions),
            })
            .collect();
        let now = time::OffsetDateTime::now_utc();
        let ts = now.unix_timestamp();
        let claims = Claims {
            iss: self.issuer.clone(),
            sub: user.unwrap_or("").to_string(),
            aud: req.service.clone(),
            exp: ts + TOKEN_TTL_SECS,
            nbf: Some(ts),
            iat: Some(ts),
            jti: Some(crate::tuf::hex(&random_bytes())),
            access,
        };
        match self.key.sign(&claims) {
            Ok(token) => (
                StatusCode::OK,
                [(header::CONTENT_TYPE, "application/json")],
                json!({
                    "token": token,
                    "access_token": token,
                    "expires_in": TOKEN_TTL_SECS,
                    "issued_at": crate::tuf::format_time(now),
                })
                .to_string(),
            )
                .into_response(),
            Err(e) => {
                tracing::error!(error = %e, "could not sign a token");
                json_error(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "UNKNOWN",
                    "unknown error",
                )
            }
        }
    }
}

fn random_bytes() -> [u8; 16] {
    let mut b = [0u8; 16];
    let _ = ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scopes_with_ports_in_names() {
        let s = Scope::parse("repository:127.0.0.1:5000/team/app:push,pull").unwrap();
        assert_eq!(s.name, "127.0.0.1:5000/team/app");
        assert_eq!(s.actions, vec!["push", "pull"]);
        let r = parse_query(
            "account=alice&scope=repository%3Afoo%2Fbar%3Apull&scope=repository:x:push&service=registry",
        )
        .unwrap();
        assert_eq!(r.service, "registry");
        assert_eq!(r.scopes.len(), 2);
        assert!(parse_query("scope=repository:a:pull").is_err());
        assert!(parse_query("service=a&scope=nocolon").is_err());
    }
}
