//! The trust server's shared state ([`App`]) and its options, used by the router
//! (`app`) and the upload handler (`upload`); it depends on neither.

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use axum::response::Response;

use crate::auth::service::TokenService;
use crate::auth::TokenAuth;
use crate::guard::{ByteBudget, KeyedLocks, RateLimit};
use crate::metrics::Metrics;
use crate::respond::internal;
use crate::signer::{HeldKey, Signer, SignerError};
use crate::store::Store;
use crate::validate::Limits;

/// Server behaviour beyond the metadata limits.
#[derive(Debug, Clone)]
pub struct Options {
    /// Accept `DELETE /v2/<gun>/_trust/tuf/`.
    pub allow_delete: bool,
    /// Largest upload body: about one metadata file.
    pub max_body: usize,
    /// Upload body bytes held in memory at once, over all connections.
    pub upload_budget: usize,
    /// Time allowed for reading one upload body.
    pub body_timeout: Duration,
    /// Server-held keys one identity may have created per repository and hour.
    pub key_creations_per_hour: u32,
    /// New repository names one identity may create per hour.
    pub new_repos_per_hour: u32,
}

impl Options {
    /// The defaults for `limits`.
    pub fn for_limits(limits: &Limits, allow_delete: bool) -> Self {
        Options {
            allow_delete,
            max_body: limits.max_metadata_bytes.saturating_add(256 * 1024),
            upload_budget: 32 << 20,
            body_timeout: Duration::from_secs(30),
            key_creations_per_hour: 10,
            new_repos_per_hour: 50,
        }
    }
}

/// The peer address of a connection, set by the listener on each request.
#[derive(Debug, Clone, Copy)]
pub struct Peer(pub SocketAddr);

/// Shared server state.
pub struct App {
    pub(crate) store: Store,
    pub(crate) signer: Arc<dyn Signer>,
    pub(crate) limits: Limits,
    pub(crate) opts: Options,
    pub(crate) metrics: Arc<Metrics>,
    pub(crate) budget: ByteBudget,
    pub(crate) new_repos: RateLimit,
    pub(crate) key_rate: RateLimit,
    /// Per repository: key creation and timestamp re-signing, so a slow signer holds up only
    /// the repository waiting for it.
    pub(crate) repo_locks: KeyedLocks,
    pub(crate) auth: Option<TokenAuth>,
    pub(crate) tokens: Option<Arc<TokenService>>,
}

impl App {
    /// An app without authentication and with default options for `limits`.
    pub fn new(
        store: Store,
        signer: Arc<dyn Signer>,
        limits: Limits,
        allow_delete: bool,
    ) -> Arc<App> {
        let opts = Options::for_limits(&limits, allow_delete);
        Self::with(store, signer, limits, opts, None, None)
    }

    /// An app with every option; `auth` turns token authentication on, `tokens` serves
    /// `/auth/token`.
    pub fn with(
        store: Store,
        signer: Arc<dyn Signer>,
        limits: Limits,
        opts: Options,
        auth: Option<TokenAuth>,
        tokens: Option<Arc<TokenService>>,
    ) -> Arc<App> {
        let metrics = Arc::new(Metrics::default());
        let hour = Duration::from_secs(3600);
        Arc::new(App {
            store,
            signer: Arc::new(CountingSigner {
                inner: signer,
                metrics: metrics.clone(),
            }),
            budget: ByteBudget::new(opts.upload_budget),
            new_repos: RateLimit::new(opts.new_repos_per_hour, hour),
            key_rate: RateLimit::new(opts.key_creations_per_hour, hour),
            limits,
            opts,
            metrics,
            repo_locks: KeyedLocks::default(),
            auth,
            tokens,
        })
    }

    /// Counts a refused connection (per-peer or global cap).
    pub fn connection_refused(&self) {
        self.metrics
            .connections_refused
            .fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts signer calls and failures for `/metrics`.
struct CountingSigner {
    inner: Arc<dyn Signer>,
    metrics: Arc<Metrics>,
}

impl CountingSigner {
    fn count<T>(&self, r: Result<T, SignerError>) -> Result<T, SignerError> {
        self.metrics.signer_calls.fetch_add(1, Ordering::Relaxed);
        if r.is_err() {
            self.metrics.signer_errors.fetch_add(1, Ordering::Relaxed);
        }
        r
    }
}

impl Signer for CountingSigner {
    fn create_key(&self, gun: &str, role: &str) -> Result<HeldKey, SignerError> {
        self.count(self.inner.create_key(gun, role))
    }
    fn drop_unlisted(&self, gun: &str, role: &str, keep: &[String]) -> Result<usize, SignerError> {
        self.count(self.inner.drop_unlisted(gun, role, keep))
    }
    fn keys(&self, gun: &str, role: &str) -> Result<Vec<HeldKey>, SignerError> {
        self.count(self.inner.keys(gun, role))
    }
    fn held_key(
        &self,
        gun: &str,
        role: &str,
        keyids: &[String],
    ) -> Result<Option<HeldKey>, SignerError> {
        self.count(self.inner.held_key(gun, role, keyids))
    }
    fn sign(
        &self,
        gun: &str,
        role: &str,
        key_id: &str,
        msg: &[u8],
    ) -> Result<(String, Vec<u8>), SignerError> {
        self.count(self.inner.sign(gun, role, key_id, msg))
    }
}

pub(crate) async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Response> {
    tokio::task::spawn_blocking(f).await.map_err(internal)
}
