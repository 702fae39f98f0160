//! `swarmguard trust-server`: its options, and the HTTPS listener in front of the API
//! ([`crate::app`]): TLS, connection caps overall and per peer address, handshake, header and
//! connection timeouts.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::auth::service::{
    load_or_create_signing_key, LoginLimits, TokenService, SIGNING_CERT_FILE,
};
use crate::auth::users::{AccessList, Users};
use crate::auth::{Realm, TokenAuth, Verifier};
use crate::guard::PeerConnections;
use crate::signer::{LocalSigner, MasterKey, Signer};
use crate::store::{Retention, Store, StoreError};
use crate::validate::Limits;

pub use crate::app::router;
pub use crate::signer::MASTER_KEY_ENV;
pub use crate::state::{App, Options, Peer};

/// `--auth`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthMode {
    /// No authentication (Notary's default): anyone who reaches the port may publish.
    None,
    /// Docker registry token authentication, as notary-server's `auth: token`.
    Token,
}

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
    /// Hard deadline, in seconds, on each call to the remote signer (connect, TLS handshake
    /// and answer together).
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub signer_timeout_secs: u64,

    /// Token authentication.
    #[command(flatten)]
    pub token: Box<TokenArgs>,
    /// Resource bounds.
    #[command(flatten)]
    pub bounds: Box<BoundArgs>,
}

/// Token authentication options (boxed: they make the arguments large).
#[derive(clap::Args, Debug, Clone)]
pub struct TokenArgs {
    /// Authentication of requests. `token` needs --token-realm, --token-service,
    /// --token-issuer and --token-root-bundle, unless --token-service-users runs the built-in
    /// token service, which supplies them.
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// Where clients get tokens (the challenge's realm). Default with the built-in token
    /// service: https://<the request's Host>/auth/token.
    #[arg(long)]
    pub token_realm: Option<String>,
    /// The service name tokens must be issued for (their `aud`).
    #[arg(long, default_value = "swarmguard-trust")]
    pub token_service: String,
    /// The issuer tokens must name (`iss`).
    #[arg(long)]
    pub token_issuer: Option<String>,
    /// PEM certificates whose keys may sign tokens (x5c chains or kid). The built-in token
    /// service's certificate is added to it.
    #[arg(long)]
    pub token_root_bundle: Option<PathBuf>,
    /// Run the built-in token service at /auth/token with these users (htpasswd, bcrypt).
    /// Its signing certificate is written to <data-dir>/token-signing.crt, for a
    /// docker-registry's `rootcertbundle`.
    #[arg(long)]
    pub token_service_users: Option<PathBuf>,
    /// Access list for the built-in token service: lines `<user|*|anonymous> <repository
    /// prefix|*> <pull,push,*>`. Without it every user may push and pull everything.
    #[arg(long, requires = "token_service_users")]
    pub token_access: Option<PathBuf>,
    /// Failed logins allowed per user name in 5 minutes.
    #[arg(long, default_value_t = 10)]
    pub login_failures_per_user: u32,
    /// Failed logins allowed per peer address in 5 minutes.
    #[arg(long, default_value_t = 30)]
    pub login_failures_per_peer: u32,
}

/// Resource bounds.
#[derive(clap::Args, Debug, Clone)]
pub struct BoundArgs {
    /// Versions kept per role (root: all); older ones are pruned as new ones are stored.
    #[arg(long, default_value_t = 100, value_parser = clap::value_parser!(u64).range(1..))]
    pub history: u64,
    /// Largest database; uploads are refused (507) once it is reached.
    #[arg(long, default_value_t = 8 << 30)]
    pub max_storage_bytes: u64,
    /// Upload body bytes held in memory at once over all connections; uploads past it are
    /// refused (503).
    #[arg(long, default_value_t = 32 << 20)]
    pub upload_budget_bytes: usize,
    /// Seconds allowed for receiving one upload body.
    #[arg(long, default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub body_timeout_secs: u64,
    /// Open connections overall.
    #[arg(long, default_value_t = 1024)]
    pub max_connections: usize,
    /// Open connections per peer address.
    #[arg(long, default_value_t = 64)]
    pub max_connections_per_peer: usize,
    /// New server-held keys one identity may have created per repository and hour.
    #[arg(long, default_value_t = 10)]
    pub key_creations_per_hour: u32,
    /// New repository names one identity (token subject, else peer address) may create per
    /// hour.
    #[arg(long, default_value_t = 50)]
    pub new_repos_per_hour: u32,
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

fn signer(args: &ServerArgs, store: &Store) -> Result<Arc<dyn Signer>, ServerError> {
    let Some(url) = &args.signer_url else {
        return Ok(Arc::new(LocalSigner::new(
            store.database(),
            MasterKey::load(args.signer_key_file.as_deref())?,
        )?));
    };
    let need = |p: &Option<PathBuf>, what: &str| {
        p.clone()
            .ok_or_else(|| ServerError::Config(format!("--signer-url needs {what}")))
    };
    let cfg = crate::remote::RemoteConfig {
        url: url.clone(),
        ca: need(&args.signer_ca, "--signer-ca")?,
        client_cert: need(&args.signer_client_cert, "--signer-client-cert")?,
        client_key: need(&args.signer_client_key, "--signer-client-key")?,
        deadline: Duration::from_secs(args.signer_timeout_secs),
    };
    tracing::info!(%url, "using remote trust signer");
    Ok(Arc::new(
        crate::remote::RemoteSigner::new(&cfg).map_err(|e| ServerError::Config(e.to_string()))?,
    ))
}

/// The token verifier and, with --token-service-users, the built-in token service.
fn token_auth(
    args: &ServerArgs,
) -> Result<(Option<TokenAuth>, Option<Arc<TokenService>>), ServerError> {
    let cfg = |e: String| ServerError::Config(e);
    let builtin = args.token.token_service_users.is_some();
    if !builtin && args.token.auth != Some(AuthMode::Token) {
        return Ok((None, None));
    }
    if args.token.auth == Some(AuthMode::None) {
        return Err(cfg(
            "--token-service-users needs token auth; drop --auth none".into(),
        ));
    }
    let mut bundle = Vec::new();
    if let Some(p) = &args.token.token_root_bundle {
        bundle = std::fs::read(p).map_err(|e| cfg(format!("{}: {e}", p.display())))?;
        bundle.push(b'\n');
    }
    let tokens = match &args.token.token_service_users {
        Some(users) => {
            let key = load_or_create_signing_key(&args.data_dir).map_err(cfg)?;
            let cert = args.data_dir.join(SIGNING_CERT_FILE);
            bundle
                .extend(std::fs::read(&cert).map_err(|e| cfg(format!("{}: {e}", cert.display())))?);
            let access = match &args.token.token_access {
                Some(p) => AccessList::load(p).map_err(cfg)?,
                None => AccessList::everyone_push_pull(),
            };
            let limits = LoginLimits {
                failures_per_user: args.token.login_failures_per_user,
                failures_per_peer: args.token.login_failures_per_peer,
                ..LoginLimits::default()
            };
            tracing::info!(kid = key.kid(), "built-in token service on /auth/token");
            Some(Arc::new(TokenService::new(
                Users::load(users).map_err(cfg)?,
                access,
                key,
                &issuer(args),
                limits,
            )))
        }
        None => None,
    };
    let realm = match (&args.token.token_realm, builtin) {
        (Some(u), _) => Realm::Fixed(u.clone()),
        (None, true) => Realm::ThisServer,
        (None, false) => return Err(cfg("--auth token needs --token-realm".into())),
    };
    if !builtin && (args.token.token_issuer.is_none() || args.token.token_root_bundle.is_none()) {
        return Err(cfg(
            "--auth token needs --token-issuer and --token-root-bundle".into(),
        ));
    }
    let verifier = Verifier::new(&issuer(args), &args.token.token_service, &bundle).map_err(cfg)?;
    tracing::info!(service = %args.token.token_service, "token authentication on");
    Ok((Some(TokenAuth::new(verifier, realm)), tokens))
}

/// The issuer tokens carry: --token-issuer, or the built-in service's default.
fn issuer(args: &ServerArgs) -> String {
    args.token
        .token_issuer
        .clone()
        .unwrap_or_else(|| "swarmguard-token-service".to_string())
}

/// Runs the trust server until SIGINT/SIGTERM. The caller (the binary) owns the process set-up:
/// logging, the rustls crypto provider and the tokio runtime.
pub async fn serve(args: ServerArgs) -> Result<(), ServerError> {
    let tls = tls_config(&args)?;
    let retention = Retention {
        history: args.bounds.history,
        max_bytes: args.bounds.max_storage_bytes,
    };
    let store = Store::open_with(&args.data_dir, retention)?;
    let signer = signer(&args, &store)?;
    let (auth, tokens) = token_auth(&args)?;
    let limits = Limits {
        max_metadata_bytes: args.max_metadata_bytes,
        max_targets: args.max_targets,
        ..Limits::default()
    };
    let opts = Options {
        upload_budget: args.bounds.upload_budget_bytes,
        body_timeout: Duration::from_secs(args.bounds.body_timeout_secs),
        key_creations_per_hour: args.bounds.key_creations_per_hour,
        new_repos_per_hour: args.bounds.new_repos_per_hour,
        ..Options::for_limits(&limits, args.allow_delete)
    };
    let app = App::with(store, signer, limits, opts, auth, tokens);
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    if let Some(p) = &args.ready_file {
        crate::process::write_ready_file(p, local)?;
    }
    tracing::info!(%local, "trust server listening");
    accept_loop(listener, tls, app, &args).await
}

async fn accept_loop(
    listener: tokio::net::TcpListener,
    tls: rustls::ServerConfig,
    app: Arc<App>,
    args: &ServerArgs,
) -> Result<(), ServerError> {
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let router = router(app.clone());
    let conns = Arc::new(tokio::sync::Semaphore::new(args.bounds.max_connections));
    let peers = PeerConnections::new(args.bounds.max_connections_per_peer);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        let (tcp, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(c) => c,
                Err(e) => { tracing::warn!(error = %e, "accept failed"); tokio::time::sleep(Duration::from_millis(50)).await; continue; }
            },
            _ = tokio::signal::ctrl_c() => break,
            _ = term.recv() => break,
        };
        // One address cannot take the connections everyone else needs.
        let Some(slot) = peers.admit(peer.ip()) else {
            app.connection_refused();
            continue;
        };
        let Ok(permit) = conns.clone().try_acquire_owned() else {
            app.connection_refused();
            continue;
        };
        tokio::spawn(serve_connection(
            tcp,
            peer,
            acceptor.clone(),
            router.clone(),
            (permit, slot),
        ));
    }
    tracing::info!("trust server stopping");
    Ok(())
}

/// One connection: TLS handshake within 10 s, headers within 10 s, at most 120 s in all.
async fn serve_connection<G: Send + 'static>(
    tcp: tokio::net::TcpStream,
    peer: SocketAddr,
    acceptor: tokio_rustls::TlsAcceptor,
    router: axum::Router,
    _held: G,
) {
    let _ = tcp.set_nodelay(true);
    let Ok(Ok(tls)) = tokio::time::timeout(Duration::from_secs(10), acceptor.accept(tcp)).await
    else {
        return;
    };
    let svc = hyper::service::service_fn(move |mut req: hyper::Request<hyper::body::Incoming>| {
        req.extensions_mut().insert(Peer(peer));
        tower::ServiceExt::oneshot(router.clone(), req.map(axum::body::Body::new))
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(Duration::from_secs(10))
        .max_buf_size(64 * 1024)
        .serve_connection(hyper_util::rt::TokioIo::new(tls), svc);
    let _ = tokio::time::timeout(Duration::from_secs(120), conn).await;
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
