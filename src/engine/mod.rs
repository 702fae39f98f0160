//! The Docker Engine API subset the docker CLI needs for swarm, node and system commands.
//!
//! Requests arrive as `/v1.41/...` after the CLI negotiated the version through `HEAD /_ping`;
//! the prefix is checked and stripped before routing. Errors are `{"message": …}` with
//! `Content-Type: application/json`, which the CLI requires to print them.
//!
//! Before anything else, [`refuse_browsers`] keeps web pages out: a browser on the same host can
//! reach a loopback port (and, through DNS rebinding, read the answers), but it always sends an
//! `Origin` on cross-origin writes, a `Host` naming the page's site, and only "simple" bodies
//! (`text/plain`, forms) without a preflight. The docker CLI 28 sends no `Origin`,
//! `Host: 127.0.0.1:PORT` (or the name in `DOCKER_HOST`) over tcp, `Host: api.moby.localhost`
//! over a unix socket, `Content-Type: application/json` with a body and no `Content-Type` on a
//! bodiless POST (`Content-Length: 0`, e.g. `swarm leave --force`).

pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handlers;
pub mod locked;
mod request;
mod secrets;
mod services;
pub mod types;

use std::sync::Arc;

use std::net::{Ipv4Addr, Ipv6Addr};

use axum::body::{Body, HttpBody};
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, Request, Uri};
use axum::routing::{get, post};
use axum::Router;
use tower::Layer;

use crate::control::Control;
use error::ApiError;

/// The API version swarmguard speaks: dockerd 20.10's.
pub const API_VERSION: &str = "1.41";
/// The oldest version the docker CLI may negotiate down to (swarm commands need 1.24).
pub const MIN_API_VERSION: &str = "1.24";
/// Largest request body accepted; a swarm spec is a few KiB.
pub const MAX_BODY: usize = 1024 * 1024;

/// The listener a request arrived on; the `Host` rule depends on it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// A unix socket: no browser reaches it and no DNS name leads to it, so any `Host` is fine.
    Unix,
    /// A loopback tcp port, which any web page the local user opens can send requests to.
    Tcp,
}

/// The whole service: the browser guard and version-prefix handling in front of the router.
pub fn service(control: Arc<Control>, transport: Transport) -> Router {
    let routes = Router::new()
        .route("/_ping", get(handlers::ping).head(handlers::ping))
        .route("/version", get(handlers::version))
        .route("/info", get(handlers::info))
        .route("/swarm", get(handlers::swarm_inspect))
        .route("/swarm/init", post(handlers::swarm_init))
        .route("/swarm/join", post(handlers::swarm_join))
        .route("/swarm/update", post(handlers::swarm_update))
        .route("/swarm/leave", post(handlers::swarm_leave))
        .route("/swarm/unlockkey", get(handlers::swarm_unlock_key))
        .route("/swarm/unlock", post(handlers::swarm_unlock))
        .route("/nodes", get(handlers::node_list))
        .route(
            "/nodes/{id}",
            get(handlers::node_inspect).delete(handlers::node_remove),
        )
        .route("/nodes/{id}/update", post(handlers::node_update))
        .route("/services", get(services::service_list))
        .route("/services/create", post(services::service_create))
        .route(
            "/services/{id}",
            get(services::service_inspect).delete(services::service_remove),
        )
        .route("/services/{id}/update", post(services::service_update))
        .route("/services/{id}/logs", get(services::service_logs))
        .route("/tasks", get(services::task_list))
        .route("/tasks/{id}", get(services::task_inspect))
        .route("/distribution/{*name}", get(services::distribution))
        .route("/secrets", get(secrets::list))
        .route("/secrets/create", post(secrets::create))
        .route(
            "/secrets/{id}",
            get(secrets::inspect).delete(secrets::remove),
        )
        .route("/secrets/{id}/update", post(secrets::update))
        .route_layer(axum::middleware::from_fn_with_state(
            control.clone(),
            fresh_reads,
        ))
        .fallback(not_served)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(control);
    guarded(routes, transport)
}

/// Reads of the swarm's state are linearizable: a read barrier (read index through the leader)
/// runs before the handler, so a read on any manager sees every write acknowledged before it.
/// Without a quorum the manager still answers from its own copy, with a `Warning` header that
/// says so and why (`docker info` lists the same text); other errors refuse the read.
async fn fresh_reads(
    State(ctl): State<Arc<Control>>,
    req: Request<Body>,
    next: axum::middleware::Next,
) -> Result<axum::response::Response, ApiError> {
    if req.method() != axum::http::Method::GET || !reads_swarm_state(req.uri().path()) {
        return Ok(next.run(req).await);
    }
    let freshness = ctl.read_freshness().await?;
    let mut resp = next.run(req).await;
    if let crate::control::managers::Freshness::Stale(why) = freshness {
        if let Ok(v) = axum::http::HeaderValue::from_str(&format!("199 swarmguard \"{why}\"")) {
            resp.headers_mut().insert(header::WARNING, v);
        }
    }
    Ok(resp)
}

/// The paths whose answers come from the replicated store.
fn reads_swarm_state(path: &str) -> bool {
    path == "/swarm"
        || ["/nodes", "/services", "/tasks", "/secrets"]
            .iter()
            .any(|p| {
                path.strip_prefix(p)
                    .is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
            })
}

/// The browser guard and the version prefix in front of `routes` (both the full API and the
/// locked one get them).
fn guarded(routes: Router, transport: Transport) -> Router {
    // Rewrite before routing: a `Router::layer` would run only after the route was chosen.
    let versioned = axum::middleware::map_request(strip_version_prefix).layer(routes);
    Router::new().fallback_service(
        axum::middleware::map_request_with_state(transport, refuse_browsers).layer(versioned),
    )
}

/// Refuses what only a web page sends: an `Origin` header, a non-loopback `Host` on tcp, a
/// body that is not JSON. See the module comment for what the docker CLI sends instead.
async fn refuse_browsers(
    State(transport): State<Transport>,
    req: Request<Body>,
) -> Result<Request<Body>, ApiError> {
    let text = |v: &axum::http::HeaderValue| {
        String::from_utf8_lossy(v.as_bytes())
            .chars()
            .take(256)
            .collect::<String>()
    };
    if let Some(origin) = req.headers().get(header::ORIGIN) {
        return Err(ApiError::CrossOrigin {
            origin: text(origin),
        });
    }
    if transport == Transport::Tcp {
        let host = match req.headers().get(header::HOST) {
            Some(h) => text(h),
            // HTTP/2 carries it as the URI's authority.
            None => match req.uri().authority() {
                Some(a) => a.as_str().to_string(),
                None => return Err(ApiError::NoHost),
            },
        };
        if !is_loopback_host(&host) {
            return Err(ApiError::ForeignHost { host });
        }
    }
    if has_body(&req) {
        let content_type = req.headers().get(header::CONTENT_TYPE);
        let json = content_type
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split(';').next())
            .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"));
        if !json {
            return Err(ApiError::NotJson {
                content_type: content_type.map(text).unwrap_or_else(|| "none".into()),
            });
        }
    }
    Ok(req)
}

/// Whether the request carries body bytes (a declared length of 0 or no body at all does not).
fn has_body(req: &Request<Body>) -> bool {
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(n) => n > 0,
        None => {
            req.headers().contains_key(header::TRANSFER_ENCODING) || !req.body().is_end_stream()
        }
    }
}

/// `localhost`, `*.localhost` (RFC 6761: never resolved through DNS), 127.0.0.0/8 or `[::1]`,
/// with or without a port.
fn is_loopback_host(host: &str) -> bool {
    let valid_port =
        |p: &str| !p.is_empty() && p.len() <= 5 && p.bytes().all(|b| b.is_ascii_digit());
    if let Some(rest) = host.strip_prefix('[') {
        let Some((ip, tail)) = rest.split_once(']') else {
            return false;
        };
        let port_ok = tail.is_empty() || tail.strip_prefix(':').is_some_and(valid_port);
        return port_ok && ip.parse::<Ipv6Addr>().is_ok_and(|ip| ip.is_loopback());
    }
    let name = match host.rsplit_once(':') {
        Some((name, port)) if valid_port(port) => name,
        Some(_) => return false,
        None => host,
    };
    let lower = name.to_ascii_lowercase();
    let local_name = lower == "localhost"
        || lower.strip_suffix(".localhost").is_some_and(|sub| {
            !sub.is_empty()
                && sub.split('.').all(|l| {
                    !l.is_empty() && l.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
                })
        });
    local_name || name.parse::<Ipv4Addr>().is_ok_and(|ip| ip.is_loopback())
}

/// Strips `/v<major>.<minor>` and refuses versions outside what swarmguard serves, with
/// dockerd's wording so the CLI's hints still apply.
async fn strip_version_prefix(mut req: Request<Body>) -> Result<Request<Body>, ApiError> {
    // A declared oversized body is refused before a byte of it is read (and before hyper sends
    // `100 Continue`); undeclared lengths are cut at the same limit while reading.
    let declared = req
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > MAX_BODY as u64) {
        return Err(ApiError::TooLarge);
    }
    let path = req.uri().path();
    let Some(rest) = path.strip_prefix("/v") else {
        return Ok(req);
    };
    let (ver, tail) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let Some((major, minor)) = ver.split_once('.') else {
        return Ok(req);
    };
    let (Ok(major), Ok(minor)) = (major.parse::<u32>(), minor.parse::<u32>()) else {
        return Ok(req);
    };
    if (major, minor) > (1, 41) {
        return Err(ApiError::BadRequest(format!(
            "client version {ver} is too new. Maximum supported API version is {API_VERSION}"
        )));
    }
    if (major, minor) < (1, 24) {
        return Err(ApiError::BadRequest(format!(
            "client version {ver} is too old. Minimum supported API version is {MIN_API_VERSION}, please upgrade your client to a newer version"
        )));
    }
    let new_path = tail.to_string();
    let mut parts = req.uri().clone().into_parts();
    let pq = match req.uri().query() {
        Some(q) => format!("{new_path}?{q}"),
        None => new_path,
    };
    parts.path_and_query = Some(
        pq.parse()
            .map_err(|_| ApiError::BadRequest("invalid request path".into()))?,
    );
    *req.uri_mut() =
        Uri::from_parts(parts).map_err(|_| ApiError::BadRequest("invalid request path".into()))?;
    Ok(req)
}

async fn not_served(req: Request<Body>) -> ApiError {
    ApiError::NotServed {
        method: req.method().to_string(),
        path: req.uri().path().to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::ServiceExt;

    struct Env {
        _dir: tempfile::TempDir,
        control: Arc<Control>,
    }

    async fn swarm_env() -> Env {
        let dir = tempfile::tempdir().unwrap();
        let (_, control) = crate::control::testing::initialised(dir.path()).await;
        Env { _dir: dir, control }
    }

    /// Sends one request; `headers` are added as given (a Host among them, or none).
    async fn send(
        env: &Env,
        transport: Transport,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, serde_json::Value, String) {
        let mut req = Request::builder().method(method).uri(path);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .header(header::CONTENT_LENGTH, body.len())
            .body(Body::from(body.to_vec()))
            .unwrap();
        let resp = service(env.control.clone(), transport)
            .oneshot(req)
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let content_type = resp
            .headers()
            .get(header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_string())
            .unwrap_or_default();
        let bytes = axum::body::to_bytes(resp.into_body(), MAX_BODY)
            .await
            .unwrap();
        let json = serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null);
        (status, json, content_type)
    }

    fn tokens(env: &Env) -> (String, String) {
        let c = &env.control.cluster().unwrap().record;
        (c.join_tokens.worker.clone(), c.join_tokens.manager.clone())
    }

    #[test]
    fn loopback_hosts() {
        for ok in [
            "localhost",
            "LOCALHOST:2375",
            "127.0.0.1",
            "127.0.0.1:2375",
            "127.5.6.7:1",
            "[::1]",
            "[::1]:2375",
            "api.moby.localhost",
            "api.moby.localhost:80",
        ] {
            assert!(is_loopback_host(ok), "{ok} refused");
        }
        for bad in [
            "",
            "attacker.example",
            "attacker.example:2375",
            "localhost.attacker.example",
            "127.0.0.1.nip.io:2375",
            "10.0.0.1:2375",
            "0.0.0.0:2375",
            "[::2]:2375",
            "[::1",
            "[::1]x",
            "127.0.0.1:",
            "127.0.0.1:99999999",
            "localhost:abc",
            ".localhost",
            "a..localhost",
            "[::ffff:127.0.0.1]:2375",
        ] {
            assert!(!is_loopback_host(bad), "{bad} accepted");
        }
    }

    /// Audit finding 3, DNS rebinding: a page on attacker.example rebinds its name to 127.0.0.1
    /// and reads `GET /swarm` (both join tokens) from the tcp Engine API. Its Host names its own
    /// site, so it is refused, without a token in the answer; loopback Hosts are answered.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn dns_rebinding_host_cannot_read_the_swarm() {
        let env = swarm_env().await;
        let (worker, manager) = tokens(&env);
        let rebound = [("Host", "attacker.example:2375")];
        let (status, body, content_type) =
            send(&env, Transport::Tcp, "GET", "/v1.41/swarm", &rebound, b"").await;
        assert_eq!(status, 403);
        assert_eq!(content_type, "application/json");
        let msg = body["message"].as_str().unwrap();
        assert!(
            msg.contains("Host \"attacker.example:2375\"")
                && msg.contains("DOCKER_HOST=tcp://127.0.0.1:<port>"),
            "{msg}"
        );
        let text = body.to_string();
        assert!(!text.contains(&worker) && !text.contains(&manager));

        let (status, body, _) = send(&env, Transport::Tcp, "GET", "/v1.41/swarm", &[], b"").await;
        assert_eq!(status, 400, "no Host at all: {body}");
        assert!(body["message"].as_str().unwrap().contains("no Host header"));

        for host in ["127.0.0.1:2375", "localhost:2375", "[::1]:2375"] {
            let (status, body, _) = send(
                &env,
                Transport::Tcp,
                "GET",
                "/v1.41/swarm",
                &[("Host", host)],
                b"",
            )
            .await;
            assert_eq!(status, 200, "{host}: {body}");
            assert_eq!(body["JoinTokens"]["Worker"], worker.as_str());
        }
        // A unix socket has no DNS name and no browser reaches it: the CLI's
        // `Host: api.moby.localhost`, or anything else, is answered there.
        for host in ["api.moby.localhost", "docker"] {
            let (status, _, _) = send(
                &env,
                Transport::Unix,
                "GET",
                "/v1.41/swarm",
                &[("Host", host)],
                b"",
            )
            .await;
            assert_eq!(status, 200, "{host} over unix");
        }
    }

    /// Audit finding 3, cross-origin write: a page POSTs the swarm spec as `text/plain` (a
    /// "simple" request, sent without a preflight) to rotate both tokens. Refused for its Origin,
    /// and for its media type even without one; the tokens stay.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn cross_origin_text_plain_update_changes_no_token() {
        let env = swarm_env().await;
        let before = tokens(&env);
        let cluster = env.control.cluster().unwrap();
        let spec = serde_json::to_vec(&cluster.record.spec).unwrap();
        let path = format!(
            "/v1.41/swarm/update?rotateWorkerToken=true&rotateManagerToken=true&version={}",
            cluster.version
        );
        let browser = [
            ("Host", "127.0.0.1:2375"),
            ("Origin", "http://attacker.example"),
            ("Content-Type", "text/plain;charset=UTF-8"),
        ];
        for transport in [Transport::Tcp, Transport::Unix] {
            let (status, body, _) = send(&env, transport, "POST", &path, &browser, &spec).await;
            assert_eq!(status, 403, "{transport:?}: {body}");
            let msg = body["message"].as_str().unwrap();
            assert!(
                msg.contains("Origin header (here \"http://attacker.example\")"),
                "{msg}"
            );
            let (status, body, _) =
                send(&env, transport, "POST", &path, &browser[..1], &spec).await;
            assert_eq!(status, 415, "no Content-Type at all: {body}");
            let (status, body, _) = send(
                &env,
                transport,
                "POST",
                &path,
                &[browser[0], browser[2]],
                &spec,
            )
            .await;
            assert_eq!(status, 415, "{transport:?}: {body}");
            let msg = body["message"].as_str().unwrap();
            assert!(
                msg.contains("Content-Type: application/json")
                    && msg.contains("\"text/plain;charset=UTF-8\""),
                "{msg}"
            );
            assert_eq!(tokens(&env), before, "{transport:?}: a token changed");
        }
        // The CLI's form of the same request rotates them.
        let cli = [
            ("Host", "127.0.0.1:2375"),
            ("Content-Type", "application/json"),
        ];
        let (status, body, _) = send(&env, Transport::Tcp, "POST", &path, &cli, &spec).await;
        assert_eq!(status, 200, "{body}");
        let after = tokens(&env);
        assert!(after.0 != before.0 && after.1 != before.1);
    }

    /// Audit finding 3: `POST /swarm/leave?force=1` with no body is a "simple" request too. With
    /// an Origin it is refused and the swarm stays; the CLI's bodiless POST (Content-Length: 0,
    /// no Content-Type) still leaves.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn leave_with_an_origin_is_refused() {
        let env = swarm_env().await;
        let path = "/v1.41/swarm/leave?force=1";
        for transport in [Transport::Tcp, Transport::Unix] {
            let headers = [
                ("Host", "localhost:2375"),
                ("Origin", "null"),
                ("Content-Type", "text/plain"),
            ];
            let (status, body, _) = send(&env, transport, "POST", path, &headers, b"").await;
            assert_eq!(status, 403, "{transport:?}: {body}");
            assert!(env.control.local_identity().is_some(), "the swarm was left");
        }
        let (status, body, _) = send(
            &env,
            Transport::Tcp,
            "POST",
            path,
            &[("Host", "127.0.0.1:2375")],
            b"",
        )
        .await;
        assert_eq!(status, 200, "{body}");
        assert!(env.control.local_identity().is_none());
    }
}
