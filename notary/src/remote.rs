//! `swarmguard trust-signer`: the signer as a separate process, reached over
//! gRPC with mutual TLS, and the [`Signer`] client the trust server uses to
//! talk to it.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tonic::transport::{Certificate, Channel, ClientTlsConfig, Identity, Server, ServerTlsConfig};
use tonic::{Request, Response, Status};

use crate::names;
use crate::signer::{newest_listed, HeldKey, LocalSigner, MasterKey, Signer, SignerError};
use crate::tuf::{KeyVal, PublicKey};

/// Generated from proto/signer.proto.
pub mod pb {
    tonic::include_proto!("swarmguard.trust.signer.v1");
}

use pb::trust_signer_client::TrustSignerClient;
use pb::trust_signer_server::{TrustSigner, TrustSignerServer};

/// Largest message the signer will sign (snapshot/timestamp are far smaller).
const MAX_SIGN_BYTES: usize = 1 << 20;

/// `swarmguard trust-signer` options.
#[derive(clap::Args, Debug, Clone)]
pub struct SignerArgs {
    /// Directory for the signer's redb database (encrypted keys).
    #[arg(long)]
    pub data_dir: PathBuf,
    /// Address to listen on (port 0 picks a free port; see --ready-file).
    #[arg(long, default_value = "127.0.0.1:7899")]
    pub listen: SocketAddr,
    /// PEM certificate chain the signer presents.
    #[arg(long)]
    pub tls_cert: PathBuf,
    /// PEM private key of --tls-cert.
    #[arg(long)]
    pub tls_key: PathBuf,
    /// PEM CA that client certificates (the trust servers) must chain to.
    #[arg(long)]
    pub client_ca: PathBuf,
    /// File with the 32-byte master key (base64 or hex); without it the key
    /// is read from SWARMGUARD_TRUST_SIGNER_KEY.
    #[arg(long)]
    pub signer_key_file: Option<PathBuf>,
    /// Once listening, write the bound address to this file.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
}

/// Errors starting the signer or its client.
#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Signer(#[from] SignerError),
    #[error("io: {0}")]
    Io(#[from] std::io::Error),
    #[error("transport: {0}")]
    Transport(#[from] tonic::transport::Error),
}

fn read(path: &Path) -> Result<Vec<u8>, RemoteError> {
    std::fs::read(path).map_err(|e| RemoteError::Config(format!("{}: {e}", path.display())))
}

struct Service {
    signer: Arc<LocalSigner>,
}

fn check_names(gun: &str, role: &str) -> Result<(), Status> {
    if !names::valid_gun(gun) {
        return Err(Status::invalid_argument("invalid GUN"));
    }
    if role != "timestamp" && role != "snapshot" {
        return Err(Status::invalid_argument(
            "only timestamp and snapshot keys are held",
        ));
    }
    Ok(())
}

fn status(e: SignerError) -> Status {
    match e {
        SignerError::UnknownKey(_) => Status::not_found("no such key"),
        SignerError::TooManyKeys => Status::resource_exhausted("too many keys"),
        other => {
            tracing::error!(error = %other, "signer failure");
            Status::internal("signer failure")
        }
    }
}

fn info(k: HeldKey) -> pb::KeyInfo {
    pb::KeyInfo {
        key_id: k.id,
        keytype: k.public.keytype,
        public: k.public.keyval.public,
    }
}

/// For key creation only: it commits a redb write (an fsync), which must not stall the
/// signer's other calls. Listing keys and signing are a short read transaction and one
/// signature (tens of microseconds); they run inline, which spares a thread handoff per call
/// and lets the signer run on a single thread.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Status> + Send + 'static,
) -> Result<T, Status> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|_| Status::internal("task failed"))?
}

#[tonic::async_trait]
impl TrustSigner for Service {
    async fn create_key(
        &self,
        req: Request<pb::KeyRequest>,
    ) -> Result<Response<pb::KeyInfo>, Status> {
        let r = req.into_inner();
        check_names(&r.gun, &r.role)?;
        let s = self.signer.clone();
        let k = blocking(move || s.create_key(&r.gun, &r.role).map_err(status)).await?;
        Ok(Response::new(info(k)))
    }

    async fn list_keys(
        &self,
        req: Request<pb::KeyRequest>,
    ) -> Result<Response<pb::KeyList>, Status> {
        let r = req.into_inner();
        check_names(&r.gun, &r.role)?;
        let keys = self.signer.keys(&r.gun, &r.role).map_err(status)?;
        Ok(Response::new(pb::KeyList {
            keys: keys.into_iter().map(info).collect(),
        }))
    }

    async fn sign(
        &self,
        req: Request<pb::SignRequest>,
    ) -> Result<Response<pb::SignResponse>, Status> {
        let r = req.into_inner();
        check_names(&r.gun, &r.role)?;
        if r.key_id.len() != 64 || !r.key_id.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(Status::invalid_argument("invalid key ID"));
        }
        if r.message.len() > MAX_SIGN_BYTES {
            return Err(Status::invalid_argument("message too large"));
        }
        let (method, signature) = self
            .signer
            .sign(&r.gun, &r.role, &r.key_id, &r.message)
            .map_err(status)?;
        Ok(Response::new(pb::SignResponse { method, signature }))
    }

    async fn drop_keys(
        &self,
        req: Request<pb::DropKeysRequest>,
    ) -> Result<Response<pb::DropKeysResponse>, Status> {
        let r = req.into_inner();
        check_names(&r.gun, &r.role)?;
        if r.keep.len() > 256 || r.keep.iter().any(|k| k.len() > 128) {
            return Err(Status::invalid_argument("keep list too large"));
        }
        let s = self.signer.clone();
        let dropped =
            blocking(move || s.drop_unlisted(&r.gun, &r.role, &r.keep).map_err(status)).await?;
        Ok(Response::new(pb::DropKeysResponse {
            dropped: u32::try_from(dropped).unwrap_or(u32::MAX),
        }))
    }
}

/// Runs `swarmguard trust-signer` until SIGINT/SIGTERM; the binary owns the process set-up.
pub async fn serve_signer(args: SignerArgs) -> Result<(), RemoteError> {
    let master = MasterKey::load(args.signer_key_file.as_deref())?;
    let store = crate::store::Store::open(&args.data_dir)
        .map_err(|e| RemoteError::Config(e.to_string()))?;
    let signer = Arc::new(LocalSigner::new(store.database(), master)?);
    let tls = ServerTlsConfig::new()
        .identity(Identity::from_pem(
            read(&args.tls_cert)?,
            read(&args.tls_key)?,
        ))
        .client_ca_root(Certificate::from_pem(read(&args.client_ca)?));
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    if let Some(p) = &args.ready_file {
        crate::process::write_ready_file(p, local)?;
    }
    tracing::info!(%local, "trust signer listening (mutual TLS)");
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    Server::builder()
        .tls_config(tls)?
        .timeout(Duration::from_secs(30))
        .concurrency_limit_per_connection(64)
        .add_service(
            TrustSignerServer::new(Service { signer })
                .max_decoding_message_size(2 * MAX_SIGN_BYTES),
        )
        .serve_with_incoming_shutdown(incoming, crate::process::shutdown_signal())
        .await?;
    Ok(())
}

/// Where and how the trust server reaches a remote signer.
#[derive(Debug, Clone)]
pub struct RemoteConfig {
    pub url: String,
    pub ca: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
    /// Hard deadline on each call: connecting, the TLS handshake and the answer together.
    pub deadline: Duration,
}

/// A [`Signer`] backed by `swarmguard trust-signer` over gRPC + mTLS. Its
/// methods block: call them from blocking threads only.
pub struct RemoteSigner {
    client: TrustSignerClient<Channel>,
    handle: tokio::runtime::Handle,
    /// The key lists last fetched, "gun\nrole" → keys oldest first. A signer only ever adds
    /// keys, and a key ID is the hash of its public key, so a fetched list stays a true
    /// prefix of the signer's list: every upload would otherwise cost two extra round trips
    /// (one per server-signed role) to learn what it already knows.
    known: Mutex<HashMap<String, Vec<HeldKey>>>,
    deadline: Duration,
}

/// Most (GUN, role) key lists remembered; past it the memory starts over.
const MAX_KNOWN: usize = 16_384;

impl RemoteSigner {
    /// Build a lazily connecting client; must be called inside a runtime.
    pub fn new(cfg: &RemoteConfig) -> Result<Self, RemoteError> {
        let tls = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(read(&cfg.ca)?))
            .identity(Identity::from_pem(
                read(&cfg.client_cert)?,
                read(&cfg.client_key)?,
            ));
        let channel = Channel::from_shared(cfg.url.clone())
            .map_err(|e| RemoteError::Config(format!("signer URL: {e}")))?
            .tls_config(tls)?
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(15))
            .connect_lazy();
        Ok(RemoteSigner {
            client: TrustSignerClient::new(channel),
            handle: tokio::runtime::Handle::current(),
            known: Mutex::default(),
            deadline: cfg.deadline,
        })
    }

    /// Run one call on the runtime, bounded by the deadline as a whole: tonic's own connect
    /// timeout stops at the TCP connection, so a signer that accepts and never finishes the
    /// TLS handshake would otherwise hold the caller until the request timeout.
    fn call<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<Response<T>, Status>>,
    ) -> Result<T, Status> {
        match self
            .handle
            .block_on(tokio::time::timeout(self.deadline, fut))
        {
            Ok(r) => r.map(Response::into_inner),
            Err(_) => Err(Status::deadline_exceeded(format!(
                "no answer to {what} within {:?}",
                self.deadline
            ))),
        }
    }

    fn known(&self) -> std::sync::MutexGuard<'_, HashMap<String, Vec<HeldKey>>> {
        self.known.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn remember(&self, gun: &str, role: &str, keys: &[HeldKey]) {
        let mut known = self.known();
        if known.len() >= MAX_KNOWN {
            known.clear();
        }
        known.insert(format!("{gun}\n{role}"), keys.to_vec());
    }

    fn forget(&self, gun: &str, role: &str) {
        self.known().remove(&format!("{gun}\n{role}"));
    }
}

fn remote_err(s: Status) -> SignerError {
    match s.code() {
        tonic::Code::NotFound => SignerError::UnknownKey(String::new()),
        tonic::Code::ResourceExhausted => SignerError::TooManyKeys,
        tonic::Code::DeadlineExceeded | tonic::Code::Unavailable => {
            SignerError::Unavailable(s.message().to_string())
        }
        _ => SignerError::Storage(format!("remote signer: {}", s.message())),
    }
}

fn held(k: pb::KeyInfo) -> Result<HeldKey, SignerError> {
    let public = PublicKey {
        keytype: k.keytype,
        keyval: KeyVal {
            private: None,
            public: k.public,
        },
    };
    // Never trust the remote's key ID: recompute it.
    let id = crate::tuf::key_id(&public).map_err(|_| SignerError::Crypto)?;
    if id != k.key_id {
        return Err(SignerError::Storage(
            "remote signer returned a mismatched key ID".into(),
        ));
    }
    Ok(HeldKey { id, public })
}

impl Signer for RemoteSigner {
    fn create_key(&self, gun: &str, role: &str) -> Result<HeldKey, SignerError> {
        let mut c = self.client.clone();
        let req = pb::KeyRequest {
            gun: gun.into(),
            role: role.into(),
        };
        let key = held(
            self.call("CreateKey", c.create_key(req))
                .map_err(remote_err)?,
        );
        self.forget(gun, role);
        key
    }

    fn drop_unlisted(&self, gun: &str, role: &str, keep: &[String]) -> Result<usize, SignerError> {
        let mut c = self.client.clone();
        let req = pb::DropKeysRequest {
            gun: gun.into(),
            role: role.into(),
            keep: keep.to_vec(),
        };
        let r = self.call("DropKeys", c.drop_keys(req));
        self.forget(gun, role);
        match r {
            Ok(r) => Ok(r.dropped as usize),
            // An older signer without DropKeys keeps its keys (and its cap applies).
            Err(s) if s.code() == tonic::Code::Unimplemented => Ok(0),
            Err(s) => Err(remote_err(s)),
        }
    }

    fn keys(&self, gun: &str, role: &str) -> Result<Vec<HeldKey>, SignerError> {
        let mut c = self.client.clone();
        let req = pb::KeyRequest {
            gun: gun.into(),
            role: role.into(),
        };
        let keys = self
            .call("ListKeys", c.list_keys(req))
            .map_err(remote_err)?
            .keys
            .into_iter()
            .map(held)
            .collect::<Result<Vec<_>, _>>()?;
        self.remember(gun, role, &keys);
        Ok(keys)
    }

    fn held_key(
        &self,
        gun: &str,
        role: &str,
        keyids: &[String],
    ) -> Result<Option<HeldKey>, SignerError> {
        // Answer from memory only when it knows every key the root lists for the role: then
        // the newest listed key it knows is the newest listed key the signer holds.
        if let Some(keys) = self.known().get(&format!("{gun}\n{role}")) {
            if keyids.iter().all(|id| keys.iter().any(|k| &k.id == id)) {
                return Ok(newest_listed(keys.clone(), keyids));
            }
        }
        Ok(newest_listed(self.keys(gun, role)?, keyids))
    }

    fn sign(
        &self,
        gun: &str,
        role: &str,
        key_id: &str,
        msg: &[u8],
    ) -> Result<(String, Vec<u8>), SignerError> {
        let mut c = self.client.clone();
        let req = pb::SignRequest {
            gun: gun.into(),
            role: role.into(),
            key_id: key_id.into(),
            message: msg.to_vec(),
        };
        let r = match self.call("Sign", c.sign(req)) {
            Ok(r) => r,
            Err(s) => {
                if s.code() == tonic::Code::NotFound {
                    // The signer lost a key this server remembered: ask it afresh next time.
                    self.forget(gun, role);
                }
                return Err(remote_err(s));
            }
        };
        Ok((r.method, r.signature))
    }
}
