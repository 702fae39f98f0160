//! Docker registry token authentication for the trust server (notary-server's `auth: token`),
//! and the built-in token service that issues such tokens.
//!
//! - [`jwt`]: token verification and ES256 signing.
//! - [`users`]: the htpasswd (bcrypt) users file and the access list.
//! - [`service`]: `GET /auth/token`.
//!
//! The resource side: each route needs a scope ([`Need`]); a request without a token that
//! grants it gets 401 with a `WWW-Authenticate: Bearer realm=…,service=…,scope=…` challenge,
//! as notary-server answers it, so the docker and notary CLIs follow it unchanged.

pub mod jwt;
pub mod service;
pub mod users;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub use jwt::{Claims, TokenError, Verifier};

/// What a route requires.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Need {
    /// No token (health, metrics, the token service itself).
    Nothing,
    /// `registry:catalog:*` (`GET /v2/`, the global changefeed, unknown paths).
    Catalog,
    /// `repository:<gun>:<actions>`, every action required.
    Repo {
        gun: String,
        actions: &'static [&'static str],
    },
}

pub const PULL: &[&str] = &["pull"];
pub const PUSH_PULL: &[&str] = &["push", "pull"];
pub const ALL: &[&str] = &["*"];

/// Where clients are sent for a token.
#[derive(Debug, Clone)]
pub enum Realm {
    /// A fixed URL (`--token-realm`).
    Fixed(String),
    /// `https://<Host of the request>/auth/token`: the built-in token service on this server,
    /// under whatever name the client reached it.
    ThisServer,
}

/// Token authentication of requests.
pub struct TokenAuth {
    pub verifier: Verifier,
    pub realm: Realm,
    /// Tokens verified before (a client reuses one for its lifetime).
    pub cache: jwt::TokenCache,
}

impl TokenAuth {
    pub fn new(verifier: Verifier, realm: Realm) -> Self {
        TokenAuth {
            verifier,
            realm,
            cache: jwt::TokenCache::default(),
        }
    }
}

/// Who made an authorised request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Identity {
    /// Token subject.
    User(String),
    /// Auth is off.
    Anonymous,
}

/// Go's `%q` for the ASCII values that occur here.
fn quote(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_ascii_graphic() || c == ' ' => out.push(c),
            c => out.push_str(&format!("\\u{:04x}", c as u32)),
        }
    }
    out.push('"');
    out
}

impl TokenAuth {
    fn realm(&self, headers: &HeaderMap) -> String {
        match &self.realm {
            Realm::Fixed(u) => u.clone(),
            Realm::ThisServer => {
                let host = headers
                    .get(header::HOST)
                    .and_then(|h| h.to_str().ok())
                    .filter(|h| {
                        h.len() <= 255
                            && h.bytes()
                                .all(|b| b.is_ascii_alphanumeric() || b".-:[]".contains(&b))
                    })
                    .unwrap_or("localhost");
                format!("https://{host}/auth/token")
            }
        }
    }

    /// `Ok` with the token's subject if the request carries a token granting `need`, else
    /// the challenge's `error` parameter ([`TokenAuth::challenge`] makes the 401).
    pub fn check(
        &self,
        headers: &HeaderMap,
        need: &Need,
        now: i64,
    ) -> Result<Identity, Option<&'static str>> {
        if *need == Need::Nothing {
            return Ok(Identity::Anonymous);
        }
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t);
        let Some(token) = token else {
            return Err(None);
        };
        let claims = match self.cache.verify(&self.verifier, token, now) {
            Ok(c) => c,
            Err(e) => {
                tracing::info!(reason = %e, "bearer token refused");
                return Err(Some("invalid_token"));
            }
        };
        let granted = match need {
            Need::Nothing => true,
            Need::Catalog => claims.grants("registry", "catalog", "*"),
            Need::Repo { gun, actions } => {
                actions.iter().all(|a| claims.grants("repository", gun, a))
            }
        };
        if !granted {
            return Err(Some("insufficient_scope"));
        }
        Ok(Identity::User(claims.sub.clone()))
    }

    /// The 401 answer with `WWW-Authenticate: Bearer realm=…,service=…,scope=…[,error=…]`.
    pub fn challenge(&self, headers: &HeaderMap, need: &Need, error: Option<&str>) -> Response {
        let (scope, detail) = match need {
            Need::Nothing => (None, json!(null)),
            Need::Catalog => (
                Some("registry:catalog:*".to_string()),
                json!([{"Type": "registry", "Class": "", "Name": "catalog", "Action": "*"}]),
            ),
            Need::Repo { gun, actions } => (
                Some(format!("repository:{gun}:{}", actions.join(","))),
                json!(actions
                    .iter()
                    .map(|a| json!({"Type": "repository", "Class": "", "Name": gun, "Action": a}))
                    .collect::<Vec<_>>()),
            ),
        };
        let mut value = format!(
            "Bearer realm={},service={}",
            quote(&self.realm(headers)),
            quote(self.verifier.service())
        );
        if let Some(s) = scope {
            value.push_str(&format!(",scope={}", quote(&s)));
        }
        if let Some(e) = error {
            value.push_str(&format!(",error={}", quote(e)));
        }
        let body = format!(
            "{{\"errors\":[{{\"code\":\"UNAUTHORIZED\",\"message\":\"authentication required\",\"detail\":{detail}}}]}}\n"
        );
        let mut r = (
            StatusCode::UNAUTHORIZED,
            [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
            body,
        )
            .into_response();
        if let Ok(v) = HeaderValue::from_str(&value) {
            r.headers_mut().insert(header::WWW_AUTHENTICATE, v);
        }
        r
    }
}
