//! The Notary-compatible HTTP API: routing, the scope each route needs, and every handler
//! except uploads ([`crate::upload`]). The state they share is [`crate::state::App`].

use std::net::IpAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;

use crate::auth::{Identity, Need, ALL, PULL, PUSH_PULL};
use crate::metrics::Route;
use crate::names;
use crate::respond::{bad_request, error, internal, metadata, not_found, text, unavailable};
use crate::signer::{HeldKey, SignerError};
use crate::state::{blocking, App, Peer};
use crate::store::{Store, StoreError};
use crate::validate;

/// The axum router serving the whole API.
pub fn router(app: Arc<App>) -> Router {
    Router::new().fallback(dispatch).with_state(app)
}

/// What a request asks for, once its path is parsed.
enum Endpoint {
    Health,
    Metrics,
    Ping,
    Token,
    Changefeed(Option<String>),
    Upload(String),
    Delete(String),
    Key {
        gun: String,
        role: &'static str,
        rotate: bool,
    },
    Metadata {
        gun: String,
        tail: String,
    },
    NotFound,
}

impl Endpoint {
    fn route(&self) -> Route {
        match self {
            Endpoint::Health => Route::Health,
            Endpoint::Metrics => Route::Metrics,
            Endpoint::Ping => Route::Ping,
            Endpoint::Token => Route::Token,
            Endpoint::Changefeed(_) => Route::Changefeed,
            Endpoint::Upload(_) => Route::Upload,
            Endpoint::Delete(_) => Route::Delete,
            Endpoint::Key { .. } => Route::Key,
            Endpoint::Metadata { .. } => Route::Metadata,
            Endpoint::NotFound => Route::Other,
        }
    }

    /// The scope each route needs, as notary-server 0.7 requires it.
    fn need(&self) -> Need {
        let repo = |gun: &String, actions| Need::Repo {
            gun: gun.clone(),
            actions,
        };
        match self {
            Endpoint::Health | Endpoint::Metrics | Endpoint::Token => Need::Nothing,
            Endpoint::Ping | Endpoint::NotFound | Endpoint::Changefeed(None) => Need::Catalog,
            Endpoint::Changefeed(Some(gun)) | Endpoint::Metadata { gun, .. } => repo(gun, PULL),
            Endpoint::Upload(gun) => repo(gun, PUSH_PULL),
            Endpoint::Key {
                gun, rotate: false, ..
            } => repo(gun, PUSH_PULL),
            Endpoint::Key { gun, .. } | Endpoint::Delete(gun) => repo(gun, ALL),
        }
    }
}

/// A path naming an invalid GUN.
struct InvalidGun;

/// Parse the method and path.
fn classify(method: &Method, path: &str) -> Result<Endpoint, InvalidGun> {
    let get = method == Method::GET;
    match path {
        "/_notary_server/health" if get => return Ok(Endpoint::Health),
        "/metrics" if get => return Ok(Endpoint::Metrics),
        "/v2/" if get => return Ok(Endpoint::Ping),
        "/auth/token" if get => return Ok(Endpoint::Token),
        "/v2/_trust/changefeed" if get => return Ok(Endpoint::Changefeed(None)),
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return Ok(Endpoint::NotFound);
    };
    if let Some(gun) = rest.strip_suffix("/_trust/changefeed") {
        if !get {
            return Ok(Endpoint::NotFound);
        }
        if !names::valid_gun(gun) {
            return Err(InvalidGun);
        }
        return Ok(Endpoint::Changefeed(Some(gun.to_string())));
    }
    let Some(i) = rest.find("/_trust/tuf/") else {
        return Ok(Endpoint::NotFound);
    };
    let (gun, tail) = (&rest[..i], &rest[i + "/_trust/tuf/".len()..]);
    if !names::valid_gun(gun) {
        return Err(InvalidGun);
    }
    let gun = gun.to_string();
    let key_role = match tail {
        "timestamp.key" => Some("timestamp"),
        "snapshot.key" => Some("snapshot"),
        _ => None,
    };
    Ok(match (method, tail, key_role) {
        (&Method::POST, "", _) => Endpoint::Upload(gun),
        (&Method::DELETE, "", _) => Endpoint::Delete(gun),
        (&Method::GET, _, Some(role)) => Endpoint::Key {
            gun,
            role,
            rotate: false,
        },
        (&Method::POST, _, Some(role)) => Endpoint::Key {
            gun,
            role,
            rotate: true,
        },
        (&Method::GET, _, None) => Endpoint::Metadata {
            gun,
            tail: tail.to_string(),
        },
        _ => Endpoint::NotFound,
    })
}

async fn dispatch(State(app): State<Arc<App>>, req: Request) -> Response {
    let started = Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let (route, resp) = match classify(&method, &path) {
        Ok(ep) => (ep.route(), handle(&app, ep, req).await),
        Err(InvalidGun) => (Route::Other, bad_request("NAME_INVALID", "invalid GUN")),
    };
    if resp.status() == StatusCode::NOT_FOUND {
        app.metrics.not_found.fetch_add(1, Ordering::Relaxed);
    }
    app.metrics
        .request(route, resp.status().as_u16(), started.elapsed());
    tracing::debug!(%method, path = %path.chars().take(300).collect::<String>(), status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    resp
}

fn peer_ip(req: &Request) -> IpAddr {
    req.extensions()
        .get::<Peer>()
        .map(|p| p.0.ip())
        .unwrap_or(IpAddr::from([127, 0, 0, 1]))
}

async fn handle(app: &Arc<App>, ep: Endpoint, req: Request) -> Response {
    let peer = peer_ip(&req);
    let identity = match &app.auth {
        Some(auth) => {
            let now = time::OffsetDateTime::now_utc().unix_timestamp();
            let need = ep.need();
            match auth.check(req.headers(), &need, now) {
                Ok(id) => id,
                Err(error) => {
                    app.metrics.auth_refused.fetch_add(1, Ordering::Relaxed);
                    return auth.challenge(req.headers(), &need, error);
                }
            }
        }
        None => Identity::Anonymous,
    };
    // Who is counted against the per-identity limits: the token's subject, or the peer
    // address when no one logged in.
    let who = match identity {
        Identity::User(u) if !u.is_empty() => format!("user:{u}"),
        _ => format!("peer:{peer}"),
    };
    let query = req.uri().query().unwrap_or("").to_string();
    match ep {
        Endpoint::Health => text(StatusCode::OK, "{}"),
        Endpoint::Metrics => metrics(app),
        Endpoint::Ping => text(StatusCode::OK, "{}"),
        Endpoint::Token => match &app.tokens {
            Some(t) => t.handle(req.headers(), &query, peer).await,
            None => not_found(),
        },
        Endpoint::Changefeed(gun) => changefeed(app, gun, &query).await,
        Endpoint::Upload(gun) => crate::upload::upload(app, gun, who, req).await,
        Endpoint::Delete(gun) => delete(app, gun).await,
        Endpoint::Key { gun, role, rotate } => key(app, gun, role, rotate, who).await,
        Endpoint::Metadata { gun, tail } => get_metadata(app, gun, &tail).await,
        Endpoint::NotFound => not_found(),
    }
}

fn metrics(app: &App) -> Response {
    let body = app.metrics.render(app.store.cache_stats());
    let mut r = text(StatusCode::OK, body);
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4"),
    );
    r
}

enum Lookup {
    Current(String),
    Checksum(String, String),
    Version(String, u64),
}

fn parse_lookup(tail: &str) -> Option<Lookup> {
    let s = tail.strip_suffix(".json")?;
    if let Some((role, hex)) = s.rsplit_once('.') {
        if matches!(hex.len(), 64 | 96 | 128)
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
            && names::valid_role(role)
        {
            return Some(Lookup::Checksum(role.to_string(), hex.to_string()));
        }
    }
    if let Some((v, role)) = s.split_once('.') {
        if !v.is_empty()
            && v.len() <= 19
            && v.bytes().all(|b| b.is_ascii_digit())
            && names::valid_role(role)
        {
            return v.parse().ok().map(|v| Lookup::Version(role.to_string(), v));
        }
    }
    names::valid_role(s).then(|| Lookup::Current(s.to_string()))
}

async fn get_metadata(app: &Arc<App>, gun: String, tail: &str) -> Response {
    let Some(lookup) = parse_lookup(tail) else {
        return not_found();
    };
    // Reads are served from the store's in-memory copy of each role's current version, or
    // else a short redb read transaction (no fsync, no signing): run them inline rather than
    // paying a blocking-pool handoff per request. Only a timestamp that needs re-signing goes
    // to the blocking pool.
    let read = |lookup: &Lookup| -> Result<Option<(bytes::Bytes, bool)>, StoreError> {
        Ok(match lookup {
            Lookup::Current(role) => app.store.current(&gun, role)?.map(|r| (r, false)),
            Lookup::Checksum(role, hex) => {
                app.store.by_checksum(&gun, role, hex)?.map(|r| (r, true))
            }
            Lookup::Version(role, v) => app.store.version(&gun, role, *v)?.map(|r| (r, true)),
        })
    };
    if let Lookup::Current(role) = &lookup {
        if role == "timestamp" {
            match app.store.current_entry(&gun, role) {
                Ok(Some(ts)) => {
                    let due = *ts
                        .refresh_at
                        .get_or_init(|| validate::timestamp_refresh_at(&ts.raw));
                    if due.is_none_or(|t| time::OffsetDateTime::now_utc() >= t) {
                        let a = app.clone();
                        let g = gun.clone();
                        if let Err(r) = blocking(move || refresh_timestamp(&a, &g)).await {
                            return r;
                        }
                    }
                }
                Ok(None) => return not_found(),
                Err(e) => return internal(e),
            }
        }
    }
    match read(&lookup) {
        Ok(Some((raw, immutable))) => {
            app.metrics.metadata_served.fetch_add(1, Ordering::Relaxed);
            metadata(raw, immutable)
        }
        Ok(None) => not_found(),
        Err(e) => internal(e),
    }
}

/// Re-sign the timestamp if it is getting old. Failures are logged; the current timestamp
/// is served regardless. Signing happens outside the write transaction, under the
/// repository's own lock only; readers arriving while it is held serve the current timestamp
/// instead of queueing behind a slow signer.
fn refresh_timestamp(app: &App, gun: &str) {
    let res = app
        .repo_locks
        .try_with(gun, || -> Result<bool, validate::UpdateError> {
            let now = time::OffsetDateTime::now_utc();
            let state = app.store.state(gun)?;
            let Some(w) = validate::refresh_timestamp(gun, &state, app.signer.as_ref(), now)?
            else {
                return Ok(false);
            };
            let writes = [w];
            validate::verify_outgoing(&state, &writes)?;
            Ok(app.store.commit(gun, &state, &writes)? == crate::store::Committed::Stored)
        });
    match res {
        Some(Ok(true)) => tracing::info!(gun, "re-signed timestamp before expiry"),
        Some(Ok(false)) | None => {}
        Some(Err(e)) => tracing::warn!(gun, error = %e, "could not refresh timestamp"),
    }
}

async fn delete(app: &Arc<App>, gun: String) -> Response {
    // Notary has no cryptographic check on deletion: anyone who can reach
    // the API could wipe a repository. Off unless explicitly enabled.
    if !app.opts.allow_delete {
        return error(
            StatusCode::FORBIDDEN,
            "DENIED",
            "requested access to the resource is denied",
            json!("remote deletion is disabled on this server (--allow-delete)"),
        );
    }
    let a = app.clone();
    let g = gun.clone();
    match blocking(move || a.store.delete(&g)).await {
        Ok(Ok(_)) => {
            tracing::info!(gun, "repository deleted");
            StatusCode::OK.into_response()
        }
        Ok(Err(e)) => internal(e),
        Err(r) => r,
    }
}

/// Why a key request failed.
#[derive(Debug, thiserror::Error)]
enum KeyError {
    #[error(transparent)]
    Signer(#[from] SignerError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("too many new server-held keys for this repository; try again later")]
    RateLimited,
}

/// The key IDs the current root lists for `role` (none without a root).
fn listed_keys(store: &Store, gun: &str, role: &str) -> Result<Vec<String>, StoreError> {
    let Some(raw) = store.current(gun, "root")? else {
        return Ok(Vec::new());
    };
    Ok(crate::tuf::parse::<crate::tuf::Root>(&raw, "Root")
        .ok()
        .and_then(|r| r.body.roles.get(role).map(|r| r.keyids.clone()))
        .unwrap_or_default())
}

/// GET: the newest key held (created if none); POST: a new key. Creating drops the keys the
/// current root no longer lists first (so the per-role cap only counts keys in use) and is
/// rate limited per repository and identity.
fn get_or_create_key(
    app: &App,
    gun: &str,
    role: &str,
    rotate: bool,
    who: &str,
) -> Result<HeldKey, KeyError> {
    app.repo_locks.with(gun, || {
        if !rotate {
            if let Some(k) = app.signer.keys(gun, role)?.pop() {
                return Ok(k);
            }
        }
        if !app.key_rate.hit(&format!("{gun}\n{who}")) {
            return Err(KeyError::RateLimited);
        }
        let listed = listed_keys(&app.store, gun, role)?;
        app.signer.drop_unlisted(gun, role, &listed)?;
        Ok(app.signer.create_key(gun, role)?)
    })
}

async fn key(
    app: &Arc<App>,
    gun: String,
    role: &'static str,
    rotate: bool,
    who: String,
) -> Response {
    let a = app.clone();
    let res = blocking(move || get_or_create_key(&a, &gun, role, rotate, &who)).await;
    match res {
        Ok(Ok(k)) => text(
            StatusCode::OK,
            serde_json::to_string(&k.public).unwrap_or_default(),
        ),
        Ok(Err(e @ KeyError::Signer(SignerError::TooManyKeys))) => bad_request("INVALID_UPDATE", e),
        Ok(Err(e @ KeyError::RateLimited)) => {
            unavailable(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", e)
        }
        Ok(Err(KeyError::Signer(e @ SignerError::Unavailable(_)))) => {
            tracing::warn!(error = %e, "signer unavailable");
            unavailable(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "signer unavailable",
            )
        }
        Ok(Err(e)) => internal(e),
        Err(r) => r,
    }
}

async fn changefeed(app: &Arc<App>, gun: Option<String>, query: &str) -> Response {
    let mut change_id: u64 = 0;
    let mut records: i64 = 100;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        match k {
            "change_id" => match v.parse() {
                Ok(n) => change_id = n,
                Err(_) => {
                    return bad_request(
                        "INVALID_UPDATE",
                        "change_id must be a non-negative integer",
                    )
                }
            },
            "records" => match v.parse::<i64>() {
                Ok(n) if n != 0 && n.abs() <= 1000 => records = n,
                _ => {
                    return bad_request(
                        "INVALID_UPDATE",
                        "records must be a non-zero integer within ±1000",
                    )
                }
            },
            _ => {}
        }
    }
    let a = app.clone();
    match blocking(move || a.store.changes(gun.as_deref(), change_id, records)).await {
        Ok(Ok(recs)) => text(
            StatusCode::OK,
            json!({"count": recs.len(), "records": recs}).to_string(),
        ),
        Ok(Err(e)) => internal(e),
        Err(r) => r,
    }
}
