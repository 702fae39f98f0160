//! The Engine API of an autolocked manager before `docker swarm unlock`: `/_ping`, `/version`,
//! `/info` (`LocalNodeState: locked`) and `POST /swarm/unlock`; every other request gets
//! dockerd's 503 "Swarm is encrypted and needs to be unlocked". No store is open and no cluster
//! port is served until the right key arrives; then [`Gate::open`] puts the full API in place
//! without a restart.
//!
//! A key is checked by unwrapping the data key with it (AES-GCM's tag check, which does not
//! depend on where the keys differ); attempts are served one at a time, and after
//! [`FREE_ATTEMPTS`] wrong keys in a row each attempt first waits (doubling up to
//! [`MAX_DELAY`]), so guessing online is slow even for many parallel clients.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::rejection::BytesRejection;
use axum::extract::State;
use axum::http::{header, HeaderValue, Method, Request, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use swarmguard_secrets::kek::{KekError, UnlockKey};
use swarmguard_secrets::DataKey;
use tokio::sync::{mpsc, oneshot, Mutex};
use tower::ServiceExt;

use super::error::ApiError;
use super::request::json_body_wiped;
use super::{types as api, Transport, API_VERSION};
use crate::control::Control;

/// Wrong keys in a row answered without delay.
pub const FREE_ATTEMPTS: u32 = 3;
/// The longest wait before an attempt.
pub const MAX_DELAY: Duration = Duration::from_secs(8);

/// The right key's data key and the key itself, sent to the manager, which answers once the
/// store and the control layer are open (or why they could not open).
pub type Unlocked = (DataKey, UnlockKey, oneshot::Sender<Result<(), String>>);

/// What a locked manager has: the wrapped data key and where an unlock goes.
pub struct Locked {
    data_dir: std::path::PathBuf,
    wrapped: Vec<u8>,
    /// Wrong keys in a row; the lock also serialises attempts.
    failures: Mutex<u32>,
    unlocked: mpsc::Sender<Unlocked>,
}

impl Locked {
    pub fn new(
        data_dir: std::path::PathBuf,
        wrapped: Vec<u8>,
        unlocked: mpsc::Sender<Unlocked>,
    ) -> Arc<Locked> {
        Arc::new(Locked {
            data_dir,
            wrapped,
            failures: Mutex::new(0),
            unlocked,
        })
    }
}

/// How long an attempt waits after `failures` wrong keys in a row.
pub fn delay_after(failures: u32) -> Duration {
    if failures < FREE_ATTEMPTS {
        return Duration::ZERO;
    }
    let doublings = (failures - FREE_ATTEMPTS).min(16);
    (Duration::from_millis(250) * 2u32.pow(doublings)).min(MAX_DELAY)
}

/// One endpoint's API: the locked routes until [`Gate::open`], the full API after.
pub struct Gate {
    transport: Transport,
    locked: Option<Router>,
    full: OnceLock<Router>,
}

impl Gate {
    /// A gate that starts locked (`Some`) or waits for [`Gate::open`] answering 503 (`None`:
    /// only until the store opened at start).
    pub fn new(locked: Option<Arc<Locked>>, transport: Transport) -> Arc<Gate> {
        Arc::new(Gate {
            transport,
            locked: locked.map(|l| super::guarded(routes(l), transport)),
            full: OnceLock::new(),
        })
    }

    /// Serves the full API from now on.
    pub fn open(&self, control: Arc<Control>) {
        let _ = self.full.set(super::service(control, self.transport));
    }

    /// The service to hand to the HTTP server.
    pub fn service(self: &Arc<Self>) -> Router {
        let gate = self.clone();
        Router::new().fallback_service(tower::service_fn(move |req: Request<Body>| {
            let router = gate.full.get().or(gate.locked.as_ref()).cloned();
            async move {
                match router {
                    Some(r) => r.oneshot(req).await,
                    None => Ok(ApiError::Locked.into_response()),
                }
            }
        }))
    }
}

fn routes(locked: Arc<Locked>) -> Router {
    Router::new()
        .route("/_ping", get(ping).head(ping))
        .route("/version", get(super::handlers::version))
        .route("/info", get(info))
        .route("/swarm/unlock", post(unlock))
        // Read the body (bounded) before answering: a client still writing it would otherwise
        // meet a closed connection instead of the answer.
        .fallback(|_body: Result<Bytes, BytesRejection>| async { ApiError::Locked })
        .layer(axum::extract::DefaultBodyLimit::max(super::MAX_BODY))
        .with_state(locked)
}

async fn ping(method: Method) -> Response {
    let h = HeaderValue::from_static;
    let headers = [
        ("Api-Version", h(API_VERSION)),
        ("Ostype", h("linux")),
        ("Docker-Experimental", h("false")),
        ("Swarm", h("locked")),
        (
            header::CACHE_CONTROL.as_str(),
            h("no-cache, no-store, must-revalidate"),
        ),
        (header::PRAGMA.as_str(), h("no-cache")),
        (
            header::CONTENT_TYPE.as_str(),
            h("text/plain; charset=utf-8"),
        ),
    ];
    let mut resp = if method == Method::HEAD {
        StatusCode::OK.into_response()
    } else {
        (StatusCode::OK, "OK").into_response()
    };
    for (k, v) in headers {
        resp.headers_mut().insert(k, v);
    }
    resp
}

async fn info(State(locked): State<Arc<Locked>>) -> Json<serde_json::Value> {
    let swarm = api::SwarmInfo {
        local_node_state: "locked".into(),
        ..Default::default()
    };
    Json(super::handlers::info_body(&locked.data_dir, swarm))
}

#[derive(Deserialize)]
struct UnlockRequest {
    #[serde(rename = "UnlockKey", default)]
    unlock_key: String,
}

async fn unlock(
    State(locked): State<Arc<Locked>>,
    body: Result<Bytes, BytesRejection>,
) -> Result<StatusCode, ApiError> {
    let req: UnlockRequest = json_body_wiped(body)?;
    let text = zeroize::Zeroizing::new(req.unlock_key);
    let key =
        UnlockKey::parse(&text).map_err(|_| ApiError::BadRequest("invalid key string".into()))?;
    let mut failures = locked.failures.lock().await;
    tokio::time::sleep(delay_after(*failures)).await;
    let dek = match key.unwrap(&locked.wrapped) {
        Ok(dek) => dek,
        Err(KekError::WrongKey) => {
            *failures = failures.saturating_add(1);
            tracing::warn!(
                failures = *failures,
                next_delay_ms = delay_after(*failures).as_millis() as u64,
                "docker swarm unlock: wrong unlock key"
            );
            return Err(ApiError::Unauthorized(
                "swarm could not be unlocked: invalid key provided".into(),
            ));
        }
        Err(e) => {
            return Err(
                crate::control::ControlError::internal("cannot unwrap the data key", e).into(),
            )
        }
    };
    *failures = 0;
    let (tx, rx) = oneshot::channel();
    if locked.unlocked.send((dek, key, tx)).await.is_err() {
        return Err(ApiError::Locked);
    }
    match rx.await {
        Ok(Ok(())) => Ok(StatusCode::OK),
        Ok(Err(why)) => Err(crate::control::ControlError::internal(
            "the swarm was unlocked but its store did not open",
            why,
        )
        .into()),
        Err(_) => Err(ApiError::Locked),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrong_keys_slow_the_next_attempts() {
        let delays: Vec<u64> = (0..10).map(|n| delay_after(n).as_millis() as u64).collect();
        assert_eq!(delays, [0, 0, 0, 250, 500, 1000, 2000, 4000, 8000, 8000]);
        assert_eq!(delay_after(u32::MAX), MAX_DELAY);
    }
}
