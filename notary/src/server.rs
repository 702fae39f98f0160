//! The Notary-compatible HTTPS API.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde_json::json;

use crate::multipart;
use crate::names;
use crate::signer::{LocalSigner, MasterKey, Signer};
use crate::store::{Store, StoreError};
use crate::validate::{self, Limits, UpdateError};

pub use crate::signer::MASTER_KEY_ENV;

/// `swarmguard trust-server` options.
#[derive(clap::Args, Debug, Clone)]
pub struct ServerArgs {
    /// Directory for the redb database.
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port; see --ready-file).
    #[arg(long, default_value = "127.0.0.1:4443")]
    pub listen: SocketAddr,
    /// PEM certificate chain for the HTTPS listener.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// PEM private key for the HTTPS listener.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// File with the 32-byte signer master key (base64 or hex). Without it the
    /// key is read from the SWARMGUARD_TRUST_SIGNER_KEY environment variable.
    #[arg(long)]
    pub signer_key_file: Option<PathBuf>,
    /// Largest accepted metadata file, in bytes.
    #[arg(long, default_value_t = 4 << 20)]
    pub max_metadata_bytes: usize,
    /// Most targets accepted in one targets file.
    #[arg(long, default_value_t = 20_000)]
    pub max_targets: usize,
    /// Once listening, write the bound address to this file.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Accept `DELETE /v2/<gun>/_trust/tuf/` (`notary delete --remote`).
    /// Notary checks no signature for it, so it is off by default.
    #[arg(long)]
    pub allow_delete: bool,
    /// Use a separate `swarmguard trust-signer` at this https URL (gRPC over
    /// mutual TLS) instead of the in-process signer.
    #[arg(long, requires_all = ["signer_ca", "signer_client_cert", "signer_client_key"])]
    pub signer_url: Option<String>,
    /// PEM CA that the trust signer's certificate must chain to.
    #[arg(long)]
    pub signer_ca: Option<PathBuf>,
    /// PEM client certificate presented to the trust signer.
    #[arg(long)]
    pub signer_client_cert: Option<PathBuf>,
    /// PEM private key of --signer-client-cert.
    #[arg(long)]
    pub signer_client_key: Option<PathBuf>,
}

/// Server startup errors.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Signer(#[from] crate::signer::SignerError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("tls: {0}")]
    Tls(String),
}

#[derive(Default)]
struct Metrics {
    requests: AtomicU64,
    uploads_accepted: AtomicU64,
    uploads_rejected: AtomicU64,
    metadata_served: AtomicU64,
    not_found: AtomicU64,
}

/// Shared server state.
pub struct App {
    store: Store,
    signer: Arc<dyn Signer>,
    limits: Limits,
    max_body: usize,
    allow_delete: bool,
    metrics: Metrics,
    key_lock: std::sync::Mutex<()>,
}

impl App {
    /// Build the application over a store and signer.
    pub fn new(
        store: Store,
        signer: Arc<dyn Signer>,
        limits: Limits,
        allow_delete: bool,
    ) -> Arc<App> {
        let max_body = limits.max_metadata_bytes.saturating_mul(4).max(1 << 20);
        Arc::new(App {
            store,
            signer,
            limits,
            max_body,
            allow_delete,
            metrics: Metrics::default(),
            key_lock: Default::default(),
        })
    }
}

/// The axum router serving the whole API.
pub fn router(app: Arc<App>) -> Router {
    Router::new().fallback(dispatch).with_state(app)
}

fn error(status: StatusCode, code: &str, message: &str, detail: serde_json::Value) -> Response {
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

fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "METADATA_NOT_FOUND",
        "You have requested metadata that does not exist.",
        json!({}),
    )
}

fn bad_request(code: &str, detail: impl std::fmt::Display) -> Response {
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

fn internal(e: impl std::fmt::Display) -> Response {
    tracing::error!(error = %e, "internal error");
    error(
        StatusCode::INTERNAL_SERVER_ERROR,
        "UNKNOWN",
        "unknown error",
        json!({}),
    )
}

fn text(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        body.into(),
    )
        .into_response()
}

fn metadata(raw: bytes::Bytes, immutable: bool) -> Response {
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

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(internal)
}

async fn dispatch(State(app): State<Arc<App>>, req: Request) -> Response {
    app.metrics.requests.fetch_add(1, Ordering::Relaxed);
    let started = std::time::Instant::now();
    let method = req.method().clone();
    let path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let resp = route(&app, &method, &path, &query, req).await;
    if resp.status() == StatusCode::NOT_FOUND {
        app.metrics.not_found.fetch_add(1, Ordering::Relaxed);
    }
    tracing::debug!(%method, path = %path.chars().take(300).collect::<String>(), status = resp.status().as_u16(), elapsed_us = started.elapsed().as_micros() as u64, "request");
    resp
}

async fn route(app: &Arc<App>, method: &Method, path: &str, query: &str, req: Request) -> Response {
    let get = method == Method::GET;
    match path {
        "/_notary_server/health" if get => return text(StatusCode::OK, "{}"),
        "/metrics" if get => return metrics(app),
        "/v2/" if get => return text(StatusCode::OK, "{}"),
        "/v2/_trust/changefeed" if get => return changefeed(app, None, query).await,
        _ => {}
    }
    let Some(rest) = path.strip_prefix("/v2/") else {
        return not_found();
    };
    if let Some(gun) = rest.strip_suffix("/_trust/changefeed") {
        if !get {
            return not_found();
        }
        if !names::valid_gun(gun) {
            return bad_request("NAME_INVALID", "invalid GUN");
        }
        return changefeed(app, Some(gun.to_string()), query).await;
    }
    let Some(i) = rest.find("/_trust/tuf/") else {
        return not_found();
    };
    let (gun, tail) = (&rest[..i], &rest[i + "/_trust/tuf/".len()..]);
    if !names::valid_gun(gun) {
        return bad_request("NAME_INVALID", "invalid GUN");
    }
    let gun = gun.to_string();
    match (method, tail) {
        (&Method::POST, "") => upload(app, gun, req).await,
        (&Method::DELETE, "") => delete(app, gun).await,
        (&Method::GET, "timestamp.key") | (&Method::GET, "snapshot.key") => {
            key(app, gun, tail.trim_end_matches(".key"), false).await
        }
        (&Method::POST, "timestamp.key") | (&Method::POST, "snapshot.key") => {
            key(app, gun, tail.trim_end_matches(".key"), true).await
        }
        (&Method::GET, _) => get_metadata(app, gun, tail).await,
        _ => not_found(),
    }
}

fn metrics(app: &App) -> Response {
    let m = &app.metrics;
    let body = format!(
        "# TYPE swarmguard_trust_requests_total counter\nswarmguard_trust_requests_total {}\n\
         # TYPE swarmguard_trust_uploads_total counter\nswarmguard_trust_uploads_total{{result=\"accepted\"}} {}\n\
         swarmguard_trust_uploads_total{{result=\"rejected\"}} {}\n\
         # TYPE swarmguard_trust_metadata_served_total counter\nswarmguard_trust_metadata_served_total {}\n\
         # TYPE swarmguard_trust_not_found_total counter\nswarmguard_trust_not_found_total {}\n",
        m.requests.load(Ordering::Relaxed),
        m.uploads_accepted.load(Ordering::Relaxed),
        m.uploads_rejected.load(Ordering::Relaxed),
        m.metadata_served.load(Ordering::Relaxed),
        m.not_found.load(Ordering::Relaxed),
    );
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

/// Re-sign the timestamp if it is getting old. Failures are logged; the
/// current timestamp is served regardless.
fn refresh_timestamp(app: &App, gun: &str) {
    let now = time::OffsetDateTime::now_utc();
    let signer = app.signer.clone();
    let res = app
        .store
        .update(gun, |state| -> Result<Vec<validate::Write>, UpdateError> {
            let writes: Vec<_> = validate::refresh_timestamp(gun, state, signer.as_ref(), now)?
                .into_iter()
                .collect();
            validate::verify_outgoing(state, &writes)?;
            Ok(writes)
        });
    match res {
        Ok(w) if !w.is_empty() => tracing::info!(gun, "re-signed timestamp before expiry"),
        Ok(_) => {}
        Err(e) => tracing::warn!(gun, error = %e, "could not refresh timestamp"),
    }
}

impl From<StoreError> for UpdateError {
    fn from(e: StoreError) -> Self {
        UpdateError::Invalid(format!("storage failure: {e}"))
    }
}

async fn upload(app: &Arc<App>, gun: String, req: Request) -> Response {
    let ct = req
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let boundary = match multipart::boundary(&ct) {
        Ok(b) => b,
        Err(e) => return reject(app, "MALFORMED_UPLOAD", e),
    };
    // Refuse a declared oversized body before reading it (and before
    // answering `Expect: 100-continue`).
    let declared = req
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > app.max_body as u64) {
        return reject(app, "MALFORMED_UPLOAD", "request body too large");
    }
    let body = match axum::body::to_bytes(req.into_body(), app.max_body).await {
        Ok(b) => b,
        Err(_) => {
            return reject(
                app,
                "MALFORMED_UPLOAD",
                "request body too large or unreadable",
            )
        }
    };
    let parts = match multipart::parse(&body, &boundary, app.limits.max_roles) {
        Ok(p) => p,
        Err(e) => return reject(app, "MALFORMED_UPLOAD", e),
    };
    drop(body);
    let a = app.clone();
    let g = gun.clone();
    let res = blocking(move || {
        let now = time::OffsetDateTime::now_utc();
        let parts: BTreeMap<String, Vec<u8>> = parts;
        a.store.update(&g, |state| {
            let writes =
                validate::validate_update(&g, state, &parts, a.signer.as_ref(), now, &a.limits)?;
            validate::verify_outgoing(state, &writes)?;
            Ok(writes)
        })
    })
    .await;
    match res {
        Ok(Ok(writes)) => {
            app.metrics.uploads_accepted.fetch_add(1, Ordering::Relaxed);
            let roles: Vec<String> = writes
                .iter()
                .map(|w| format!("{} v{}", w.role, w.version))
                .collect();
            tracing::info!(gun, ?roles, "update accepted");
            StatusCode::OK.into_response()
        }
        Ok(Err(UpdateError::Signer(e))) => internal(e),
        Ok(Err(e)) => {
            tracing::info!(gun, reason = %e, "update rejected");
            reject(app, "INVALID_UPDATE", e)
        }
        Err(r) => r,
    }
}

fn reject(app: &App, code: &str, detail: impl std::fmt::Display) -> Response {
    app.metrics.uploads_rejected.fetch_add(1, Ordering::Relaxed);
    bad_request(code, detail)
}

async fn delete(app: &Arc<App>, gun: String) -> Response {
    // Notary has no cryptographic check on deletion: anyone who can reach
    // the API could wipe a repository. Off unless explicitly enabled.
    if !app.allow_delete {
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

async fn key(app: &Arc<App>, gun: String, role: &str, rotate: bool) -> Response {
    let a = app.clone();
    let role = role.to_string();
    let res = blocking(move || {
        let _guard = a.key_lock.lock().unwrap_or_else(|p| p.into_inner());
        let existing = if rotate {
            None
        } else {
            a.signer.keys(&gun, &role)?.pop()
        };
        match existing {
            Some(k) => Ok(k),
            None => a.signer.create_key(&gun, &role),
        }
    })
    .await;
    match res {
        Ok(Ok(k)) => text(
            StatusCode::OK,
            serde_json::to_string(&k.public).unwrap_or_default(),
        ),
        Ok(Err(e @ crate::signer::SignerError::TooManyKeys)) => bad_request("INVALID_UPDATE", e),
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

fn tls_config(args: &ServerArgs) -> Result<rustls::ServerConfig, ServerError> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let certs = CertificateDer::pem_file_iter(&args.tls_cert)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", args.tls_cert.display())))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| ServerError::Tls(format!("{}: {e}", args.tls_cert.display())))?;
    if certs.is_empty() {
        return Err(ServerError::Tls("no certificate in --tls-cert".into()));
    }
    let key = PrivateKeyDer::from_pem_file(&args.tls_key)
        .map_err(|e| ServerError::Tls(format!("{}: {e}", args.tls_key.display())))?;
    let mut cfg = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| ServerError::Tls(e.to_string()))?
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .map_err(|e| ServerError::Tls(e.to_string()))?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(cfg)
}

/// Atomically write the bound address to `path` (for --ready-file).
pub fn write_ready_file(path: &std::path::Path, local: SocketAddr) -> std::io::Result<()> {
    swarmguard_secrets::atomic::write_atomic(
        path,
        local.to_string().as_bytes(),
        0o644,
        swarmguard_secrets::atomic::Placement::Replace,
    )
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs the trust server until SIGINT/SIGTERM. The caller (the binary) owns the process set-up:
/// logging, the rustls crypto provider and the tokio runtime.
pub async fn serve(args: ServerArgs) -> Result<(), ServerError> {
    let tls = tls_config(&args)?;
    let store = Store::open(&args.data_dir)?;
    let signer: Arc<dyn Signer> = match &args.signer_url {
        Some(url) => {
            let need = |p: &Option<PathBuf>, what: &str| {
                p.clone()
                    .ok_or_else(|| ServerError::Config(format!("--signer-url needs {what}")))
            };
            let cfg = crate::remote::RemoteConfig {
                url: url.clone(),
                ca: need(&args.signer_ca, "--signer-ca")?,
                client_cert: need(&args.signer_client_cert, "--signer-client-cert")?,
                client_key: need(&args.signer_client_key, "--signer-client-key")?,
            };
            tracing::info!(%url, "using remote trust signer");
            Arc::new(
                crate::remote::RemoteSigner::new(&cfg)
                    .map_err(|e| ServerError::Config(e.to_string()))?,
            )
        }
        None => Arc::new(LocalSigner::new(
            store.database(),
            MasterKey::load(args.signer_key_file.as_deref())?,
        )?),
    };
    let limits = Limits {
        max_metadata_bytes: args.max_metadata_bytes,
        max_targets: args.max_targets,
        ..Limits::default()
    };
    let app = App::new(store, signer, limits, args.allow_delete);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    if let Some(p) = &args.ready_file {
        write_ready_file(p, local)?;
    }
    tracing::info!(%local, "trust server listening");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let router = router(app);
    let conns = Arc::new(tokio::sync::Semaphore::new(1024));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, _peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            continue;
        };
        let acceptor = acceptor.clone();
        let router = router.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = tcp.set_nodelay(true);
            let Ok(Ok(tls)) =
                tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
            else {
                return;
            };
            let svc = hyper_util::service::TowerToHyperService::new(router);
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(Duration::from_secs(10))
                .max_buf_size(64 * 1024)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
            let _ = tokio::time::timeout(Duration::from_secs(120), conn).await;
        });
    }
    tracing::info!("trust server stopping");
    Ok(())
}
