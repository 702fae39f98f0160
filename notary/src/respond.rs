//! Response shapes the Notary clients read: notary-server's JSON error body, plain text and
//! metadata with its cache headers.

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::json;

pub fn error(status: StatusCode, code: &str, message: &str, detail: serde_json::Value) -> Response {
    // Field order as notary-server writes it: code, message, detail.
    let text = format!(
        "{{\"errors\":[{{\"code\":{},\"message\":{},\"detail\":{}}}]}}\n",
        json!(code),
        json!(message),
        detail
    );
    (
        status,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        text,
    )
        .into_response()
}

pub fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "METADATA_NOT_FOUND",
        "You have requested metadata that does not exist.",
        json!({}),
    )
}

pub fn bad_request(code: &str, detail: impl std::fmt::Display) -> Response {
    let message = match code {
        "MALFORMED_UPLOAD" => "The body of your request is malformed.",
        "NAME_INVALID" => "The repository name (GUN) is invalid.",
        "INVALID_ROLE" => "The role you are attempting to operate on is invalid.",
        _ => "Update sent by the client is invalid.",
    };
    error(
        StatusCode::BAD_REQUEST,
        code,
        message,
        json!(detail.to_string()),
    )
}

pub fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "internal error");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        "unknown error",
        json!({}),
    )
}

pub fn text(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

pub fn metadata(raw: bytes::Bytes, immutable: bool) -> Response {
    let cache = if immutable {
        "public, max-age=2592000, s-maxage=2592000"
    } else {
        "public, max-age=300, s-maxage=300, must-revalidate"
    };
    let mut r = text(StatusCode::OK, raw);
    r.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    r
}

/// A server-side refusal that is not the client's fault (busy, full, signer down).
pub fn unavailable(status: StatusCode, code: &str, detail: impl std::fmt::Display) -> Response {
    let message = match status {
        StatusCode::INSUFFICIENT_STORAGE => "The trust server's storage limit is reached.",
        StatusCode::TOO_MANY_REQUESTS => "Too many requests; try again later.",
        StatusCode::CONFLICT => "The repository changed during this update; retry.",
        StatusCode::REQUEST_TIMEOUT => "The request body was not received in time.",
        _ => "The service is temporarily unavailable; try again.",
    };
    error(status, code, message, json!(detail.to_string()))
}
