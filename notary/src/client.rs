//! A Docker Content Trust client: resolves `repository:tag` to the signed digest through a
//! Notary-compatible trust server, with full TUF verification (root pinned or configured,
//! timestamp → snapshot → targets → `targets/releases`, expiry, thresholds, hashes, and
//! rollback against the last versions seen). The signature and schema checks are the trust
//! server's own (`tuf`), so both sides read metadata the same way.
//!
//! [`verify`] is pure (no I/O); [`fetch_role`] is the one network call. A trust server with
//! token authentication is answered as the CLIs answer it ([`token`]).

pub mod token;

use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use http_body_util::{BodyExt, Empty, Limited};
use time::OffsetDateTime;

use crate::tuf::{self, FileMeta, Root, Snapshot, Targets, Timestamp};

/// Largest metadata file accepted from a trust server.
pub const MAX_METADATA: usize = 4 << 20;
/// Deadline for one metadata fetch (connect, TLS, request, body).
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);
/// The delegation `docker trust sign` writes to; preferred over `targets` as the CLI does.
pub const RELEASES: &str = "targets/releases";

/// Versions of a repository's metadata last accepted: never go back below them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Versions {
    pub root: u64,
    pub timestamp: u64,
    pub snapshot: u64,
    pub targets: u64,
}

/// The raw metadata of one repository, as fetched.
#[derive(Debug, Clone, Default)]
pub struct Files {
    pub root: Vec<u8>,
    pub timestamp: Vec<u8>,
    pub snapshot: Vec<u8>,
    pub targets: Vec<u8>,
    /// `targets/releases`, when the snapshot lists it.
    pub releases: Option<Vec<u8>>,
}

/// What the verified metadata says about a tag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// `sha256:<hex>` of the manifest.
    pub digest: String,
    pub size: u64,
    pub versions: Versions,
}

/// Why a repository or tag is not trusted, worded for `docker service create`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TrustError {
    #[error("no trust data for {0}: the repository is not signed")]
    Unsigned(String),
    #[error("{gun}: no signed tag {tag:?}")]
    NoTag { gun: String, tag: String },
    #[error("{gun}: {role} metadata has expired")]
    Expired { gun: String, role: String },
    #[error(
        "{gun}: {role} metadata version {got} is older than version {seen} seen before (rollback)"
    )]
    Rollback {
        gun: String,
        role: &'static str,
        seen: u64,
        got: u64,
    },
    #[error("{gun}: the trust server's root does not match the pinned root: {reason}")]
    RootMismatch { gun: String, reason: String },
    #[error("{gun}: invalid trust data: {reason}")]
    Invalid { gun: String, reason: String },
    #[error("{gun}: cannot reach the trust server: {reason}")]
    Unreachable { gun: String, reason: String },
    #[error("{gun}: the trust server refused access: {reason}")]
    Unauthorized { gun: String, reason: String },
}

fn invalid(gun: &str, reason: impl std::fmt::Display) -> TrustError {
    TrustError::Invalid {
        gun: gun.to_string(),
        reason: reason.to_string(),
    }
}

fn tuf_err(gun: &str, e: tuf::TufError) -> TrustError {
    match e {
        tuf::TufError::Expired(role) => TrustError::Expired {
            gun: gun.to_string(),
            role,
        },
        other => invalid(gun, other),
    }
}

fn not_older(gun: &str, role: &'static str, seen: u64, got: u64) -> Result<(), TrustError> {
    if got < seen {
        return Err(TrustError::Rollback {
            gun: gun.to_string(),
            role,
            seen,
            got,
        });
    }
    Ok(())
}

fn role_keys<'a>(gun: &str, root: &'a Root, role: &str) -> Result<&'a tuf::RoleKeys, TrustError> {
    root.roles
        .get(role)
        .ok_or_else(|| invalid(gun, format!("root lists no {role} role")))
}

/// Verifies the root: signed by its own root keys, and, when a different root was pinned, by
/// the pinned root's keys too with a higher version (a rotation the old keys approved).
fn verify_root(
    gun: &str,
    raw: &[u8],
    pinned: Option<&[u8]>,
    now: OffsetDateTime,
) -> Result<Root, TrustError> {
    let root = tuf::parse::<Root>(raw, "Root").map_err(|e| tuf_err(gun, e))?;
    let rk = role_keys(gun, &root.body, "root")?;
    tuf::verify_threshold(
        "root",
        &root.envelope,
        &rk.keyids,
        rk.threshold,
        &root.body.keys,
    )
    .map_err(|e| tuf_err(gun, e))?;
    if let Some(pinned) = pinned.filter(|p| *p != raw) {
        let old = tuf::parse::<Root>(pinned, "Root").map_err(|e| TrustError::RootMismatch {
            gun: gun.into(),
            reason: format!("the pinned root is unreadable: {e}"),
        })?;
        let ok = role_keys(gun, &old.body, "root").and_then(|ok| {
            tuf::verify_threshold(
                "root",
                &root.envelope,
                &ok.keyids,
                ok.threshold,
                &old.body.keys,
            )
            .map_err(|e| invalid(gun, e))
        });
        if ok.is_err() || root.body.version <= old.body.version {
            return Err(TrustError::RootMismatch {
                gun: gun.into(),
                reason: "the new root is not signed by the pinned root's keys".into(),
            });
        }
    }
    tuf::check_expiry("root", &root.body.expires, now).map_err(|e| tuf_err(gun, e))?;
    Ok(root.body)
}

fn listed<'a>(
    gun: &str,
    meta: &'a std::collections::BTreeMap<String, FileMeta>,
    name: &str,
    raw: &[u8],
) -> Result<&'a FileMeta, TrustError> {
    let m = meta
        .get(name)
        .ok_or_else(|| invalid(gun, format!("{name} is not listed")))?;
    if !tuf::meta_matches(m, raw) {
        return Err(invalid(
            gun,
            format!("{name} does not match the hash and length listed for it"),
        ));
    }
    Ok(m)
}

/// Verifies the whole chain and finds `tag` (releases delegation first, then targets).
/// `pinned_root` is the root trusted before (first use or configured); `seen` the versions
/// accepted before.
pub fn verify(
    gun: &str,
    tag: &str,
    files: &Files,
    pinned_root: Option<&[u8]>,
    seen: Versions,
    now: OffsetDateTime,
) -> Result<Resolved, TrustError> {
    let root = verify_root(gun, &files.root, pinned_root, now)?;
    not_older(gun, "root", seen.root, root.version)?;
    let check =
        |role: &'static str, env: &tuf::Envelope, expires: &str| -> Result<(), TrustError> {
            let rk = role_keys(gun, &root, role)?;
            tuf::verify_threshold(role, env, &rk.keyids, rk.threshold, &root.keys)
                .map_err(|e| tuf_err(gun, e))?;
            tuf::check_expiry(role, expires, now).map_err(|e| tuf_err(gun, e))
        };
    let ts = tuf::parse::<Timestamp>(&files.timestamp, "Timestamp").map_err(|e| tuf_err(gun, e))?;
    check("timestamp", &ts.envelope, &ts.body.expires)?;
    not_older(gun, "timestamp", seen.timestamp, ts.body.version)?;
    listed(gun, &ts.body.meta, "snapshot", &files.snapshot)?;
    let snap = tuf::parse::<Snapshot>(&files.snapshot, "Snapshot").map_err(|e| tuf_err(gun, e))?;
    check("snapshot", &snap.envelope, &snap.body.expires)?;
    not_older(gun, "snapshot", seen.snapshot, snap.body.version)?;
    listed(gun, &snap.body.meta, "targets", &files.targets)?;
    let targets = tuf::parse::<Targets>(&files.targets, "Targets").map_err(|e| tuf_err(gun, e))?;
    check("targets", &targets.envelope, &targets.body.expires)?;
    not_older(gun, "targets", seen.targets, targets.body.version)?;
    let versions = Versions {
        root: root.version,
        timestamp: ts.body.version,
        snapshot: snap.body.version,
        targets: targets.body.version,
    };
    let mut found = None;
    if let (Some(raw), Some(d)) = (
        &files.releases,
        targets
            .body
            .delegations
            .roles
            .iter()
            .find(|r| r.name == RELEASES),
    ) {
        listed(gun, &snap.body.meta, RELEASES, raw)?;
        let rel = tuf::parse::<Targets>(raw, "Targets").map_err(|e| tuf_err(gun, e))?;
        tuf::verify_threshold(
            RELEASES,
            &rel.envelope,
            &d.keyids,
            d.threshold,
            &targets.body.delegations.keys,
        )
        .map_err(|e| tuf_err(gun, e))?;
        tuf::check_expiry(RELEASES, &rel.body.expires, now).map_err(|e| tuf_err(gun, e))?;
        found = rel.body.targets.get(tag).cloned();
    }
    let meta = found
        .or_else(|| targets.body.targets.get(tag).cloned())
        .ok_or_else(|| TrustError::NoTag {
            gun: gun.into(),
            tag: tag.into(),
        })?;
    let sha = meta
        .hashes
        .get("sha256")
        .and_then(|h| B64.decode(h).ok())
        .filter(|h| h.len() == 32)
        .ok_or_else(|| invalid(gun, format!("tag {tag:?} has no sha256 hash")))?;
    Ok(Resolved {
        digest: format!("sha256:{}", tuf::hex(&sha)),
        size: meta.length,
        versions,
    })
}

/// Where the trust server is and how to reach it.
#[derive(Clone)]
pub struct Server {
    /// `host:port` to dial.
    pub addr: String,
    /// The TLS server name (`host` of the URL).
    pub host: String,
    pub tls: Arc<rustls::ClientConfig>,
    /// Credentials for a trust server with token authentication, and the tokens they earned.
    pub auth: Option<Arc<token::TokenAuth>>,
}

impl Server {
    /// `https://host[:port]` with roots from `ca_pem` (the system has none configured here).
    pub fn new(url: &str, ca_pem: &[u8]) -> Result<Server, String> {
        let rest = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("trust server URL {url:?} must start with https://"))?;
        let hostport = rest.trim_end_matches('/');
        if hostport.is_empty() || hostport.contains('/') {
            return Err(format!(
                "trust server URL {url:?}: expected https://host[:port]"
            ));
        }
        let (host, addr) = match hostport.rsplit_once(':') {
            Some((h, p)) if p.parse::<u16>().is_ok() => (h.to_string(), hostport.to_string()),
            _ => (hostport.to_string(), format!("{hostport}:443")),
        };
        let mut roots = rustls::RootCertStore::empty();
        let certs: Vec<_> = rustls_pki_types::pem::PemObject::pem_slice_iter(ca_pem)
            .collect::<Result<Vec<rustls_pki_types::CertificateDer<'static>>, _>>()
            .map_err(|e| format!("trust CA: {e}"))?;
        if certs.is_empty() {
            return Err("trust CA: no certificate in the file".into());
        }
        for c in &certs {
            roots.add(c.clone()).map_err(|e| format!("trust CA: {e}"))?;
        }
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let webpki = rustls::client::WebPkiServerVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .map_err(|e| format!("trust CA: {e}"))?;
        let verifier = Arc::new(PinnedOrCa {
            pinned: certs,
            webpki,
            provider: provider.clone(),
        });
        let tls = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("trust TLS: {e}"))?
            .dangerous()
            .with_custom_certificate_verifier(verifier)
            .with_no_client_auth();
        Ok(Server {
            addr,
            host,
            tls: Arc::new(tls),
            auth: None,
        })
    }

    /// Answers the trust server's token challenges with `credentials` (a pull-only account is
    /// enough: the manager only reads).
    pub fn with_credentials(mut self, credentials: token::Credentials) -> Server {
        self.auth = Some(Arc::new(token::TokenAuth::new(credentials)));
        self
    }
}

/// Accepts the server certificate when it is one of the `--trust-ca` certificates itself (a
/// self-signed trust server, as `make_server_cert` or a test CA gives, which webpki refuses as
/// "CA used as end entity"), else when it chains to them. Handshake signatures are always
/// verified.
#[derive(Debug)]
struct PinnedOrCa {
    pinned: Vec<rustls_pki_types::CertificateDer<'static>>,
    webpki: Arc<rustls::client::WebPkiServerVerifier>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl rustls::client::danger::ServerCertVerifier for PinnedOrCa {
    fn verify_server_cert(
        &self,
        end_entity: &rustls_pki_types::CertificateDer<'_>,
        intermediates: &[rustls_pki_types::CertificateDer<'_>],
        server_name: &rustls_pki_types::ServerName<'_>,
        ocsp: &[u8],
        now: rustls_pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        if self
            .pinned
            .iter()
            .any(|p| p.as_ref() == end_entity.as_ref())
        {
            return Ok(rustls::client::danger::ServerCertVerified::assertion());
        }
        self.webpki
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls_pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// One HTTP/1.1 answer, body bounded by [`MAX_METADATA`].
struct Reply {
    status: u16,
    challenge: Option<String>,
    body: Vec<u8>,
}

/// `GET target` on `addr` over TLS verified with the trust server's roots. The error is worded
/// for a log and a user: it never holds the `authorization` value.
async fn get(
    tls: &Arc<rustls::ClientConfig>,
    addr: &str,
    host: &str,
    target: &str,
    authorization: Option<&str>,
) -> Result<Reply, String> {
    let s = |e: &dyn std::fmt::Display| e.to_string();
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .map_err(|e| s(&e))?;
    let name = rustls_pki_types::ServerName::try_from(host.to_string()).map_err(|e| s(&e))?;
    let tls = tokio_rustls::TlsConnector::from(tls.clone())
        .connect(name, tcp)
        .await
        .map_err(|e| s(&e))?;
    let (mut sender, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(tls))
            .await
            .map_err(|e| s(&e))?;
    tokio::spawn(conn);
    // Host carries the port unless it is https's default (RFC 9110 §7.2): a server that names
    // itself from Host (the token realm) must come back to this very port.
    let host_header = if addr.ends_with(":443") { host } else { addr };
    let mut req = hyper::Request::get(target).header(hyper::header::HOST, host_header);
    if let Some(a) = authorization {
        let mut v = hyper::header::HeaderValue::from_str(a)
            .map_err(|_| "a credential a header cannot carry".to_string())?;
        v.set_sensitive(true);
        req = req.header(hyper::header::AUTHORIZATION, v);
    }
    let req = req.body(Empty::<bytes::Bytes>::new()).map_err(|e| s(&e))?;
    let resp = sender.send_request(req).await.map_err(|e| s(&e))?;
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get(hyper::header::WWW_AUTHENTICATE)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = Limited::new(resp.into_body(), MAX_METADATA)
        .collect()
        .await
        .map_err(|e| s(&e))?;
    Ok(Reply {
        status,
        challenge,
        body: body.to_bytes().to_vec(),
    })
}

/// Gets a token for `scope` from the realm of `challenge` with the configured credentials.
async fn fetch_token(
    server: &Server,
    auth: &token::TokenAuth,
    challenge: &token::Challenge,
    scope: &str,
) -> Result<zeroize::Zeroizing<String>, String> {
    let realm = token::RealmUrl::parse(&challenge.realm)?;
    let target = realm.request_target(challenge, scope);
    let basic = auth.basic();
    let reply = get(&server.tls, &realm.addr, &realm.host, &target, Some(&basic))
        .await
        .map_err(|e| format!("token service {}: {e}", challenge.realm))?;
    match reply.status {
        200 => {}
        401 | 403 => {
            return Err(format!(
                "the token service {} refused the credentials of user {:?} (HTTP {}): check --trust-credentials",
                challenge.realm,
                auth.credentials.user(),
                reply.status
            ))
        }
        s => return Err(format!("the token service {} answered {s}", challenge.realm)),
    }
    let (tok, ttl) = token::parse_token_response(&reply.body)?;
    auth.remember(scope, tok.clone(), ttl);
    Ok(tok)
}

/// `GET /v2/<gun>/_trust/tuf/<role>.json`. `Ok(None)`: the server has no such file (404).
/// A 401 with a Bearer challenge is answered with a token when credentials are configured.
pub async fn fetch_role(
    server: &Server,
    gun: &str,
    role: &str,
) -> Result<Option<Vec<u8>>, TrustError> {
    let unreachable = |e: &dyn std::fmt::Display| TrustError::Unreachable {
        gun: gun.to_string(),
        reason: e.to_string(),
    };
    let unauthorized = |reason: String| TrustError::Unauthorized {
        gun: gun.to_string(),
        reason,
    };
    let target = format!("/v2/{gun}/_trust/tuf/{role}.json");
    let scope = format!("repository:{gun}:pull");
    let work = async {
        let bearer = |t: &str| format!("Bearer {t}");
        let cached = server.auth.as_ref().and_then(|a| a.cached(&scope));
        let send = |authz: Option<String>| {
            let target = &target;
            async move {
                get(
                    &server.tls,
                    &server.addr,
                    &server.host,
                    target,
                    authz.as_deref(),
                )
                .await
                .map_err(|e| unreachable(&e))
            }
        };
        let mut reply = send(cached.as_deref().map(|t| bearer(t))).await?;
        if reply.status == 401 {
            let auth = server.auth.as_ref().ok_or_else(|| {
                unauthorized(
                    "it requires a token and the manager has no credentials: start the manager with --trust-credentials FILE (user:password of an account that may pull)".into(),
                )
            })?;
            auth.forget(&scope);
            let challenge = reply
                .challenge
                .as_deref()
                .and_then(token::Challenge::parse)
                .ok_or_else(|| unauthorized("401 without a Bearer challenge".into()))?;
            let tok = fetch_token(server, auth, &challenge, &scope)
                .await
                .map_err(unauthorized)?;
            reply = send(Some(bearer(&tok))).await?;
            if reply.status == 401 || reply.status == 403 {
                auth.forget(&scope);
                return Err(unauthorized(format!(
                    "a token for user {:?} does not grant pull on {gun}: give that account pull access",
                    auth.credentials.user()
                )));
            }
        }
        match reply.status {
            200 => Ok(Some(reply.body)),
            404 => Ok(None),
            s => Err(unreachable(&format!("GET {role}.json answered {s}"))),
        }
    };
    tokio::time::timeout(FETCH_TIMEOUT, work)
        .await
        .map_err(|_| unreachable(&"timed out"))?
}

/// Fetches the metadata of `gun` (root, timestamp, snapshot, targets, and the releases
/// delegation when the snapshot lists it). `Unsigned` when the server has no root for it.
pub async fn fetch_all(server: &Server, gun: &str) -> Result<Files, TrustError> {
    let need = |r: Option<Vec<u8>>, role: &str| {
        r.ok_or_else(|| invalid(gun, format!("the trust server has no {role}.json")))
    };
    let Some(root) = fetch_role(server, gun, "root").await? else {
        return Err(TrustError::Unsigned(gun.to_string()));
    };
    let timestamp = need(fetch_role(server, gun, "timestamp").await?, "timestamp")?;
    let snapshot = need(fetch_role(server, gun, "snapshot").await?, "snapshot")?;
    let targets = need(fetch_role(server, gun, "targets").await?, "targets")?;
    let lists_releases = tuf::parse::<Snapshot>(&snapshot, "Snapshot")
        .map(|s| s.body.meta.contains_key(RELEASES))
        .unwrap_or(false);
    let releases = if lists_releases {
        fetch_role(server, gun, RELEASES).await?
    } else {
        None
    };
    Ok(Files {
        root,
        timestamp,
        snapshot,
        targets,
        releases,
    })
}
