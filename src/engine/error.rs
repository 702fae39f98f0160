//! Engine API error answers: `{"message": …}` with `Content-Type: application/json` (the CLI
//! needs both to print them after `Error response from daemon: `), and the one mapping from
//! [`ControlError`] to an HTTP status.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

use super::MAX_BODY;
use crate::control::ControlError;

/// Why a request was not served.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// The domain refused or failed; its status comes from [`ControlError::http_status`].
    #[error(transparent)]
    Control(#[from] ControlError),
    /// The request itself is malformed (query, body, path, version).
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is too large: at most {MAX_BODY} bytes are accepted")]
    TooLarge,
    /// The body could not be read; the status is the one the reader reported.
    #[error("cannot read the request body: {message}")]
    Unreadable { status: u16, message: String },
    /// A browser sent it: requests with an `Origin` header are never answered.
    #[error("swarmguard refuses Engine API requests that carry an Origin header (here {origin:?}): a web page must not drive the swarm. Use the docker CLI, or a client that sends no Origin header")]
    CrossOrigin { origin: String },
    /// DNS rebinding: a name that resolved to loopback, but is not a loopback name.
    #[error("swarmguard refuses Engine API requests for Host {host:?}: over tcp it answers only requests addressed to localhost, 127.0.0.1 (127.0.0.0/8) or [::1], so a web page cannot reach it through DNS rebinding. Use DOCKER_HOST=tcp://127.0.0.1:<port>")]
    ForeignHost { host: String },
    #[error("the request has no Host header: HTTP/1.1 requires one; swarmguard answers Host: localhost, 127.0.0.1 or [::1] over tcp")]
    NoHost,
    /// A body in another media type, e.g. a cross-origin `text/plain` form post.
    #[error("request bodies must be sent as Content-Type: application/json (this one is {content_type:?}); the docker CLI does so")]
    NotJson { content_type: String },
    /// Autolock: the manager waits for `docker swarm unlock` (dockerd's text).
    #[error("Swarm is encrypted and needs to be unlocked before it can be used. Please use \"docker swarm unlock\" to unlock it.")]
    Locked,
    /// A wrong unlock key (dockerd answers 401).
    #[error("{0}")]
    Unauthorized(String),
    #[error("swarmguard does not serve {method} {path}: it implements the swarm, node and system endpoints of the Docker Engine API {}; point other docker commands at a Docker engine", super::API_VERSION)]
    NotServed { method: String, path: String },
}

impl ApiError {
    pub fn status(&self) -> u16 {
        match self {
            ApiError::Control(e) => e.http_status(),
            ApiError::BadRequest(_) => 400,
            ApiError::TooLarge => 413,
            ApiError::Unreadable { status, .. } => *status,
            ApiError::NotServed { .. } => 404,
            ApiError::CrossOrigin { .. } | ApiError::ForeignHost { .. } => 403,
            ApiError::NoHost => 400,
            ApiError::NotJson { .. } => 415,
            ApiError::Locked => 503,
            ApiError::Unauthorized(_) => 401,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        if let ApiError::Control(e) = &self {
            if e.is_internal() {
                tracing::error!(error = %e, "Engine API request failed");
            }
        }
        let status =
            StatusCode::from_u16(self.status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (
            status,
            Json(serde_json::json!({ "message": self.to_string() })),
        )
            .into_response()
    }
}
