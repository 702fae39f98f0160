//! The Docker Engine API subset the docker CLI needs for swarm, node and system commands.
//!
//! Requests arrive as `/v1.41/...` after the CLI negotiated the version through `HEAD /_ping`;
//! the prefix is checked and stripped before routing. Errors are `{"message": …}` with
//! `Content-Type: application/json`, which the CLI requires to print them.

pub mod error;
#[doc(hidden)]
pub mod fuzzing;
mod handlers;
mod request;
pub mod types;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::DefaultBodyLimit;
use axum::http::{Request, Uri};
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

/// The whole service: version-prefix handling in front of the router.
pub fn service(control: Arc<Control>) -> Router {
    let routes = Router::new()
        .route("/_ping", get(handlers::ping).head(handlers::ping))
        .route("/version", get(handlers::version))
        .route("/info", get(handlers::info))
        .route("/swarm", get(handlers::swarm_inspect))
        .route("/swarm/init", post(handlers::swarm_init))
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
        .fallback(not_served)
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(control);
    // Rewrite before routing: a `Router::layer` would run only after the route was chosen.
    Router::new()
        .fallback_service(axum::middleware::map_request(strip_version_prefix).layer(routes))
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
