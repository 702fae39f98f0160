//! Docker token authentication for the content-trust client: when the trust server answers 401
//! with `WWW-Authenticate: Bearer realm=…,service=…,scope=…`, ask the realm for a token with the
//! configured Basic credentials and retry once with it, as the docker CLI and the notary CLI do.
//!
//! Tokens are cached per scope until shortly before they expire, so a warm `service create`
//! costs no extra round trip. Neither the password nor a token is ever logged or put in an
//! error; `Debug` of [`Credentials`] shows the user only.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use zeroize::Zeroizing;

/// Largest token response read from a realm.
const MAX_TOKEN_RESPONSE: usize = 64 << 10;
/// Largest challenge header parsed.
const MAX_CHALLENGE: usize = 4096;
/// Tokens are used until this long before they expire.
const EXPIRY_SLACK: Duration = Duration::from_secs(10);
/// Registries' default when a token response has no `expires_in` (distribution's spec: 60 s).
const DEFAULT_TTL: Duration = Duration::from_secs(60);
/// Scopes kept in the cache; one per repository the manager resolves.
const MAX_CACHED: usize = 1024;

/// A user and password for the token service, read from a private file.
pub struct Credentials {
    user: String,
    password: Zeroizing<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .finish()
    }
}

impl Credentials {
    /// Parses `user:password` (one line; a trailing newline is ignored).
    pub fn parse(text: &str) -> Result<Credentials, String> {
        let line = text.strip_suffix('\n').unwrap_or(text);
        let line = line.strip_suffix('\r').unwrap_or(line);
        let (user, password) = line
            .split_once(':')
            .ok_or("expected one line `user:password`")?;
        if user.is_empty() || password.is_empty() || line.contains('\n') {
            return Err("expected one line `user:password` with neither part empty".into());
        }
        if user.chars().any(char::is_control) {
            return Err("the user name contains a control character".into());
        }
        Ok(Credentials {
            user: user.to_string(),
            password: Zeroizing::new(password.to_string()),
        })
    }

    pub fn user(&self) -> &str {
        &self.user
    }

    fn basic(&self) -> Zeroizing<String> {
        let raw = Zeroizing::new(format!("{}:{}", self.user, self.password.as_str()));
        Zeroizing::new(format!("Basic {}", B64.encode(raw.as_bytes())))
    }
}

/// A parsed `Bearer` challenge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Challenge {
    pub realm: String,
    pub service: String,
    pub scope: Option<String>,
}

impl Challenge {
    /// Parses `Bearer realm="…",service="…"[,scope="…"][,error="…"]` (Go `%q` quoting).
    /// `None` for any other scheme or a malformed header.
    pub fn parse(header: &str) -> Option<Challenge> {
        if header.len() > MAX_CHALLENGE {
            return None;
        }
        let (scheme, rest) = header.split_once(' ')?;
        if !scheme.eq_ignore_ascii_case("bearer") {
            return None;
        }
        let mut params = HashMap::new();
        let mut s = rest.trim_start();
        while !s.is_empty() {
            let (key, after) = s.split_once('=')?;
            let (value, after) = quoted(after)?;
            params.insert(key.trim().to_ascii_lowercase(), value);
            s = after.trim_start();
            s = match s.strip_prefix(',') {
                Some(r) => r.trim_start(),
                None if s.is_empty() => s,
                None => return None,
            };
        }
        Some(Challenge {
            realm: params.remove("realm")?,
            service: params.remove("service").unwrap_or_default(),
            scope: params.remove("scope"),
        })
    }
}

/// A double-quoted string with backslash escapes at the start of `s`; the rest after it.
fn quoted(s: &str) -> Option<(String, &str)> {
    let mut chars = s.strip_prefix('"')?.char_indices();
    let mut out = String::new();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return Some((out, &s[i + 2..])),
            '\\' => out.push(chars.next()?.1),
            c if c.is_control() => return None,
            c => out.push(c),
        }
    }
    None
}

/// Where a realm URL points: only `https://host[:port]/path[?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RealmUrl {
    pub addr: String,
    pub host: String,
    /// Path and query, ready for the request line.
    pub target: String,
}

impl RealmUrl {
    pub fn parse(realm: &str) -> Result<RealmUrl, String> {
        let rest = realm.strip_prefix("https://").ok_or_else(|| {
            format!("token realm {realm:?} is not https: credentials are only sent over TLS")
        })?;
        let (hostport, path) = match rest.find(['/', '?']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let ok = |c: char| c.is_ascii_alphanumeric() || ".-:[]".contains(c);
        if hostport.is_empty() || !hostport.chars().all(ok) || path.chars().any(char::is_control) {
            return Err(format!(
                "token realm {realm:?}: expected https://host[:port]/path"
            ));
        }
        let (host, addr) = match hostport.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), hostport.to_string()),
            _ => (hostport.to_string(), format!("{hostport}:443")),
        };
        let path = if path.starts_with('?') {
            format!("/{path}")
        } else {
            path.to_string()
        };
        Ok(RealmUrl {
            addr,
            host: host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .to_string(),
            target: path,
        })
    }

    /// The token request for `challenge`: `?service=…&scope=…` appended to the realm's own query.
    pub fn request_target(&self, challenge: &Challenge, scope: &str) -> String {
        let sep = if self.target.contains('?') { '&' } else { '?' };
        format!(
            "{}{sep}service={}&scope={}",
            self.target,
            form_encode(&challenge.service),
            form_encode(scope)
        )
    }
}

/// `application/x-www-form-urlencoded` encoding of one value.
fn form_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                out.push(b as char)
            }
            b' ' => out.push('+'),
            b => out.push_str(&format!("%{b:02X}")),
        }
    }
    out
}

/// Reads `token` (or `access_token`) and `expires_in` from a token service's answer.
pub fn parse_token_response(body: &[u8]) -> Result<(Zeroizing<String>, Duration), String> {
    #[derive(serde::Deserialize)]
    struct Answer {
        #[serde(default)]
        token: Option<String>,
        #[serde(default)]
        access_token: Option<String>,
        #[serde(default)]
        expires_in: Option<u64>,
    }
    if body.len() > MAX_TOKEN_RESPONSE {
        return Err("the token response is too large".into());
    }
    let a: Answer = serde_json::from_slice(body)
        .map_err(|e| format!("the token response is not the expected JSON: {e}"))?;
    let token = Zeroizing::new(
        a.token
            .filter(|t| !t.is_empty())
            .or(a.access_token)
            .filter(|t| !t.is_empty())
            .ok_or("the token response holds no token")?,
    );
    // A token goes into a header: refuse anything that could split or bend it.
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the token response holds a token with characters a header cannot carry".into(),
        );
    }
    let ttl = a.expires_in.map(Duration::from_secs).unwrap_or(DEFAULT_TTL);
    Ok((token, ttl.min(Duration::from_secs(24 * 3600))))
}

/// Credentials plus the tokens they earned, per scope.
#[derive(Debug)]
pub struct TokenAuth {
    pub credentials: Credentials,
    cache: Mutex<HashMap<String, Cached>>,
}

struct Cached {
    token: Zeroizing<String>,
    until: Instant,
}

impl std::fmt::Debug for Cached {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<token>")
    }
}

impl TokenAuth {
    pub fn new(credentials: Credentials) -> TokenAuth {
        TokenAuth {
            credentials,
            cache: Mutex::new(HashMap::new()),
        }
    }

    pub fn basic(&self) -> Zeroizing<String> {
        self.credentials.basic()
    }

    /// A cached, unexpired token for `scope`.
    pub fn cached(&self, scope: &str) -> Option<Zeroizing<String>> {
        let cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        cache
            .get(scope)
            .filter(|c| c.until > Instant::now())
            .map(|c| c.token.clone())
    }

    pub fn remember(&self, scope: &str, token: Zeroizing<String>, ttl: Duration) {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        cache.retain(|_, c| c.until > now);
        if cache.len() >= MAX_CACHED {
            return;
        }
        let until = now + ttl.saturating_sub(EXPIRY_SLACK);
        cache.insert(scope.to_string(), Cached { token, until });
    }

    pub fn forget(&self, scope: &str) {
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(scope);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse_as_the_servers_send_them() {
        let c = Challenge::parse(
            r#"Bearer realm="https://127.0.0.1:4443/auth/token",service="swarmguard-trust",scope="repository:127.0.0.1:5000/a/b:pull""#,
        )
        .unwrap();
        assert_eq!(c.realm, "https://127.0.0.1:4443/auth/token");
        assert_eq!(c.service, "swarmguard-trust");
        assert_eq!(
            c.scope.as_deref(),
            Some("repository:127.0.0.1:5000/a/b:pull")
        );
        let c = Challenge::parse(r#"bearer realm="https://x/t?a=\"b\"",error="invalid_token""#)
            .unwrap();
        assert_eq!(c.realm, r#"https://x/t?a="b""#);
        assert_eq!(c.scope, None);
        for bad in [
            r#"Basic realm="x""#,
            r#"Bearer service="s""#,
            r#"Bearer realm="unterminated"#,
            r#"Bearer realm="a" junk"#,
            "Bearer realm=\"a\nb\"",
            "Bearer",
        ] {
            assert_eq!(Challenge::parse(bad), None, "{bad}");
        }
        assert_eq!(
            Challenge::parse(&format!("Bearer realm=\"{}\"", "a".repeat(5000))),
            None
        );
    }

    #[test]
    fn realms_are_https_only_and_requests_are_encoded() {
        let r = RealmUrl::parse("https://127.0.0.1:4443/auth/token").unwrap();
        assert_eq!(r.addr, "127.0.0.1:4443");
        assert_eq!(r.host, "127.0.0.1");
        let c = Challenge {
            realm: String::new(),
            service: "svc one".into(),
            scope: None,
        };
        assert_eq!(
            r.request_target(&c, "repository:h:5000/a/b:pull"),
            "/auth/token?service=svc+one&scope=repository%3Ah%3A5000%2Fa%2Fb%3Apull"
        );
        let q = RealmUrl::parse("https://auth.example/t?account=x").unwrap();
        assert_eq!(q.addr, "auth.example:443");
        assert!(q
            .request_target(&c, "s")
            .starts_with("/t?account=x&service="));
        for bad in [
            "http://127.0.0.1/token",
            "https:///token",
            "https://user@host/token",
            "https://host/to\nken",
            "ftp://h",
        ] {
            assert!(RealmUrl::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn token_responses_are_read_strictly() {
        let (t, ttl) =
            parse_token_response(br#"{"token":"abc.def.ghi","expires_in":300}"#).unwrap();
        assert_eq!(t.as_str(), "abc.def.ghi");
        assert_eq!(ttl, Duration::from_secs(300));
        let (t, ttl) = parse_token_response(br#"{"access_token":"x.y.z"}"#).unwrap();
        assert_eq!(t.as_str(), "x.y.z");
        assert_eq!(ttl, DEFAULT_TTL);
        for bad in [
            &br#"{}"#[..],
            br#"{"token":""}"#,
            br#"{"token":"a\r\nX-Evil: 1"}"#,
            b"not json",
        ] {
            assert!(parse_token_response(bad).is_err());
        }
        assert!(parse_token_response(&vec![b' '; MAX_TOKEN_RESPONSE + 1]).is_err());
    }

    #[test]
    fn credentials_parse_and_never_show_the_password() {
        let c = Credentials::parse("reader:s3cr3t:with-colon\n").unwrap();
        assert_eq!(c.user(), "reader");
        assert_eq!(c.password.as_str(), "s3cr3t:with-colon");
        assert!(!format!("{c:?}").contains("s3cr3t"));
        for bad in ["", "nopassword", ":pw", "user:", "a:b\nc:d", "u\x1b:p"] {
            assert!(Credentials::parse(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_cache_expires_tokens_early() {
        let a = TokenAuth::new(Credentials::parse("u:p").unwrap());
        a.remember("s", Zeroizing::new("t".into()), Duration::from_secs(300));
        assert_eq!(a.cached("s").as_deref().map(String::as_str), Some("t"));
        a.remember("short", Zeroizing::new("t".into()), Duration::from_secs(5));
        assert!(
            a.cached("short").is_none(),
            "a token within the slack is not used"
        );
        a.forget("s");
        assert!(a.cached("s").is_none());
    }
}
