//! `POST /v2/<gun>/_trust/tuf/`: reading the body under the size, memory and time bounds,
//! validating and signing outside any lock, and storing the result only if the repository
//! did not change meanwhile.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use http_body_util::BodyExt;

use crate::multipart;
use crate::respond::{bad_request, internal, unavailable};
use crate::signer::SignerError;
use crate::state::{blocking, App};
use crate::store::{Committed, StoreError};
use crate::validate::{self, UpdateError, Write};

/// Validation attempts when concurrent updates keep changing the repository.
const ATTEMPTS: usize = 3;

/// Why an upload was not stored.
#[derive(Debug, thiserror::Error)]
pub enum UploadError {
    #[error(transparent)]
    Update(#[from] UpdateError),
    #[error("the repository kept changing during this update")]
    Conflict,
    #[error("too many new repositories from this identity in the last hour")]
    NewRepoLimit,
}

impl From<StoreError> for UploadError {
    fn from(e: StoreError) -> Self {
        UploadError::Update(UpdateError::Storage(e))
    }
}

#[derive(Debug)]
enum BodyError {
    TooLarge,
    Timeout,
    Unreadable,
}

/// Read at most `limit` bytes, all of them within `timeout` (a client trickling its body
/// holds a connection only that long).
async fn read_body(
    mut body: Body,
    expected: usize,
    limit: usize,
    timeout: Duration,
) -> Result<Vec<u8>, BodyError> {
    let deadline = tokio::time::Instant::now() + timeout;
    // Sized once, so growth never doubles past what the budget reserved.
    let mut out = Vec::with_capacity(expected.min(limit));
    loop {
        match tokio::time::timeout_at(deadline, body.frame()).await {
            Err(_) => return Err(BodyError::Timeout),
            Ok(None) => return Ok(out),
            Ok(Some(Err(_))) => return Err(BodyError::Unreadable),
            Ok(Some(Ok(frame))) => {
                if let Ok(data) = frame.into_data() {
                    if out.len() + data.len() > limit {
                        return Err(BodyError::TooLarge);
                    }
                    out.extend_from_slice(&data);
                }
            }
        }
    }
}

fn reject(app: &App, reason: &'static str, code: &str, detail: impl std::fmt::Display) -> Response {
    app.metrics.refused(reason);
    bad_request(code, detail)
}

pub async fn upload(app: &Arc<App>, gun: String, who: String, req: Request) -> Response {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let boundary = match multipart::boundary(&ct) {
        Ok(b) => b,
        Err(e) => return reject(app, "malformed", "MALFORMED_UPLOAD", e),
    };
    // Refuse a declared oversized body before reading it (and before answering
    // `Expect: 100-continue`).
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    let max = app.opts.max_body;
    if declared.is_some_and(|n| n > max as u64) {
        return reject(
            app,
            "too_large",
            "MALFORMED_UPLOAD",
            "request body too large",
        );
    }
    // Hold the bytes this body may take from the global budget until it is processed.
    let size = declared.map_or(max, |n| n as usize);
    let Some(_reservation) = app.budget.try_reserve(size) else {
        app.metrics.refused("busy");
        return unavailable(
            StatusCode::SERVICE_UNAVAILABLE,
            "UNAVAILABLE",
            "too many uploads in progress",
        );
    };
    let body = match read_body(req.into_body(), size, max, app.opts.body_timeout).await {
        Ok(b) => b,
        Err(BodyError::Timeout) => {
            app.metrics.refused("slow_body");
            return unavailable(
                StatusCode::REQUEST_TIMEOUT,
                "MALFORMED_UPLOAD",
                "request body not received in time",
            );
        }
        Err(BodyError::TooLarge) => {
            return reject(
                app,
                "too_large",
                "MALFORMED_UPLOAD",
                "request body too large",
            )
        }
        Err(BodyError::Unreadable) => {
            return reject(
                app,
                "malformed",
                "MALFORMED_UPLOAD",
                "request body unreadable",
            )
        }
    };
    let parts = match multipart::parse(&body, &boundary, app.limits.max_roles) {
        Ok(p) => p,
        Err(e) => return reject(app, "malformed", "MALFORMED_UPLOAD", e),
    };
    drop(body);
    let a = app.clone();
    let g = gun.clone();
    match blocking(move || commit_upload(&a, &g, &who, &parts)).await {
        Ok(r) => respond(app, &gun, r),
        Err(r) => r,
    }
}

/// Validate and sign against the state read now, then store if nothing changed meanwhile.
fn commit_upload(
    app: &App,
    gun: &str,
    who: &str,
    parts: &BTreeMap<String, Vec<u8>>,
) -> Result<Vec<Write>, UploadError> {
    let mut counted = false;
    for _ in 0..ATTEMPTS {
        let now = time::OffsetDateTime::now_utc();
        let state = app.store.state(gun)?;
        let writes =
            validate::validate_update(gun, &state, parts, app.signer.as_ref(), now, &app.limits)?;
        validate::verify_outgoing(&state, &writes)?;
        if state.roles.is_empty() && !writes.is_empty() && !counted {
            if !app.new_repos.hit(who) {
                return Err(UploadError::NewRepoLimit);
            }
            counted = true;
        }
        match app.store.commit(gun, &state, &writes)? {
            Committed::Stored => return Ok(writes),
            Committed::Conflict => continue,
        }
    }
    Err(UploadError::Conflict)
}

fn respond(app: &App, gun: &str, r: Result<Vec<Write>, UploadError>) -> Response {
    let m = &app.metrics;
    match r {
        Ok(writes) if writes.is_empty() => {
            m.uploads_noop.fetch_add(1, Ordering::Relaxed);
            tracing::info!(gun, "update changes nothing; nothing stored");
            StatusCode::OK.into_response()
        }
        Ok(writes) => {
            m.uploads_accepted.fetch_add(1, Ordering::Relaxed);
            let roles: Vec<String> = writes
                .iter()
                .map(|w| format!("{} v{}", w.role, w.version))
                .collect();
            tracing::info!(gun, ?roles, "update accepted");
            StatusCode::OK.into_response()
        }
        Err(e @ UploadError::Conflict) => {
            m.refused("conflict");
            unavailable(StatusCode::CONFLICT, "UNAVAILABLE", e)
        }
        Err(e @ UploadError::NewRepoLimit) => {
            m.refused("new_repo_limit");
            unavailable(StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS", e)
        }
        Err(UploadError::Update(UpdateError::Storage(e @ StoreError::Full { .. }))) => {
            m.refused("storage_full");
            tracing::warn!(gun, error = %e, "update refused: storage limit");
            unavailable(
                StatusCode::INSUFFICIENT_STORAGE,
                "UNAVAILABLE",
                "storage limit reached",
            )
        }
        Err(UploadError::Update(UpdateError::Signer(e @ SignerError::Unavailable(_)))) => {
            m.refused("signer_unavailable");
            tracing::warn!(gun, error = %e, "update refused: signer unavailable");
            unavailable(
                StatusCode::SERVICE_UNAVAILABLE,
                "UNAVAILABLE",
                "signer unavailable",
            )
        }
        Err(UploadError::Update(e @ (UpdateError::Signer(_) | UpdateError::Storage(_)))) => {
            m.refused("server_error");
            internal(e)
        }
        Err(UploadError::Update(e)) => {
            tracing::info!(gun, reason = %e, "update rejected");
            reject(app, "invalid", "INVALID_UPDATE", e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::signer::{LocalSigner, MasterKey};
    use crate::store::Store;
    use crate::validate::Limits;

    #[test]
    fn a_storage_failure_is_a_server_error_not_an_invalid_update() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let master = MasterKey::decode(&"42".repeat(32)).unwrap();
        let signer = Arc::new(LocalSigner::new(store.database(), master).unwrap());
        let app = App::new(store, signer, Limits::default(), false);
        let disk = UploadError::from(StoreError::Db("I/O error: disk failure".into()));
        let r = respond(&app, "g", Err(disk));
        assert_eq!(r.status(), StatusCode::INTERNAL_SERVER_ERROR);
        let full = UploadError::from(StoreError::Full { used: 2, limit: 1 });
        assert_eq!(
            respond(&app, "g", Err(full)).status(),
            StatusCode::INSUFFICIENT_STORAGE
        );
        let signer_down = UploadError::Update(UpdateError::Signer(SignerError::Unavailable(
            "deadline".into(),
        )));
        assert_eq!(
            respond(&app, "g", Err(signer_down)).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let client = UploadError::Update(UpdateError::Invalid("bad".into()));
        assert_eq!(
            respond(&app, "g", Err(client)).status(),
            StatusCode::BAD_REQUEST
        );
    }
}
