//! The control layer: what SwarmKit's control API, CA and dispatcher decide for the swarm and
//! its nodes, expressed as transactions on the cluster store. One file per resource:
//! [`swarm`] (init, update, leave), [`nodes`] (list, update, remove, join, renewal, sessions);
//! secrets, services and tasks join as their own files.
//!
//! Every change is one store transaction guarded by version checks, so two concurrent requests
//! can never both win, and a refused request changes nothing. The edges (`engine`, `grpc`) call
//! in here and map [`ControlError`] to their own answers; this layer never sees HTTP or gRPC.

pub mod audit;
#[cfg(test)]
mod autolock_tests;
pub mod ca;
pub mod constraints;
pub mod error;
pub mod filters;
pub mod image_ref;
pub mod logs;
pub mod managers;
pub mod nodes;
pub mod orchestrator;
pub mod records;
pub mod scheduler;
pub mod secrets;
#[cfg(test)]
mod secrets_tests;
pub mod service_secrets;
pub mod service_spec;
pub mod services;
pub mod sessions;
#[cfg(test)]
mod signer_tests;
pub mod spec;
pub mod swarm;
pub mod tasks;
pub mod trust;
pub mod types;

use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::broadcast;

use crate::store::{Applied, Store, Txn, TxnOutcome};
use ca::local::{LocalIdentity, ManagerConfig};
use ca::security::Security;
pub use error::{Code, ControlError};
use records::{ClusterRecord, NodeRecord, Stored, CLUSTER_KEY};

pub use crate::util::{now_rfc3339, rfc3339, unix_now, unix_seconds};

pub struct Control {
    store: Store,
    config: ManagerConfig,
    /// Root, signer, this manager's certificate and TLS configs; `None` outside a swarm.
    security: Security,
    /// Init, leave and self-renewal write this manager's identity files around their store
    /// write; one at a time, so a losing concurrent init cannot overwrite the winner's files.
    membership: tokio::sync::Mutex<()>,
    /// What the cluster gRPC port is doing, reported by its supervisor; `swarm init` waits on it.
    cluster_port: tokio::sync::watch::Sender<ClusterPort>,
    /// Wakes the supervisor at once when membership changes.
    membership_changed: tokio::sync::Notify,
    /// The last decoded cluster record: every join and session reads it, and it changes rarely.
    cluster_cache: Mutex<Option<Arc<Stored<ClusterRecord>>>>,
    /// When each node last renewed its certificate over mTLS (see `nodes::admit_renewal`).
    renewals: Mutex<nodes::Renewals>,
    /// The hash-chained record of security decisions (`audit.log` in the data dir).
    audit: audit::AuditLog,
    /// Content trust: policy, and the trust data last fetched per repository.
    trust: trust::Trust,
    /// Log subscriptions between the Engine API and the nodes (`docker service logs`).
    logs: logs::Broker,
    /// Who references secrets (the services layer), asked by `docker secret rm`.
    secret_users: std::sync::RwLock<Option<Arc<dyn secrets::SecretUsers>>>,
    /// The autolock unlock key (key-encryption key), in memory only; `None` with autolock off.
    unlock_key: Mutex<Option<swarmguard_secrets::kek::UnlockKey>>,
    /// Signatures a join or renewal started that finish in the background (see `signer`).
    handoffs: ca::signer::Handoffs,
}

/// State of the cluster gRPC port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterPort {
    Stopped,
    Serving(std::net::SocketAddr),
    Failed(String),
}

/// A record as the Engine API shows it: with its store version.
pub type ClusterView = Arc<Stored<ClusterRecord>>;
pub type NodeView = Stored<NodeRecord>;

/// Which tokens `POST /swarm/update` rotates.
#[derive(Debug, Default, Clone, Copy)]
pub struct Rotate {
    pub worker_token: bool,
    pub manager_token: bool,
    pub manager_unlock_key: bool,
}

impl Control {
    /// Loads the cluster (if this manager is part of one) from the store and the data dir.
    pub fn open(store: Store, config: ManagerConfig) -> Result<Control, ControlError> {
        let security = Security::default();
        if let Some(material) = Security::load(&store, &config.data_dir)? {
            security.install(material);
        }
        let audit = audit::AuditLog::open(&config.data_dir);
        let control = Control {
            store,
            config,
            security,
            membership: tokio::sync::Mutex::new(()),
            cluster_port: tokio::sync::watch::channel(ClusterPort::Stopped).0,
            membership_changed: tokio::sync::Notify::new(),
            cluster_cache: Mutex::new(None),
            renewals: Mutex::new(nodes::Renewals::default()),
            handoffs: ca::signer::Handoffs::default(),
            audit,
            trust: trust::Trust::default(),
            logs: logs::Broker::default(),
            secret_users: std::sync::RwLock::new(None),
            unlock_key: Mutex::new(None),
        };
        control.install_secret_users();
        Ok(control)
    }

    pub fn config(&self) -> &ManagerConfig {
        &self.config
    }

    pub fn audit(&self) -> &audit::AuditLog {
        &self.audit
    }

    pub fn security(&self) -> &Security {
        &self.security
    }

    /// This manager's node ID, when it is part of a swarm.
    pub fn local_node_id(&self) -> Option<String> {
        self.security.current().map(|m| m.identity.node_id.clone())
    }

    /// This manager's addresses and node ID, when it is part of a swarm.
    pub fn local_identity(&self) -> Option<LocalIdentity> {
        self.security.current().map(|m| m.identity.clone())
    }

    pub fn handoffs(&self) -> &ca::signer::Handoffs {
        &self.handoffs
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Store change events that touch a key starting with one of `prefixes`, for loops and
    /// streams that watch some kinds of record.
    pub fn subscribe_to(&self, prefixes: &[&str]) -> broadcast::Receiver<Applied> {
        self.store.subscribe_to(prefixes)
    }

    /// The cluster port's supervisor reports here.
    pub fn set_cluster_port(&self, state: ClusterPort) {
        self.cluster_port.send_if_modified(|s| {
            let changed = *s != state;
            *s = state;
            changed
        });
    }

    pub fn watch_cluster_port(&self) -> tokio::sync::watch::Receiver<ClusterPort> {
        self.cluster_port.subscribe()
    }

    /// Resolves when this manager joined or left a swarm since the last call.
    pub async fn membership_changed(&self) {
        self.membership_changed.notified().await
    }

    /// The cluster's root CA (with its key), read from the security material.
    pub fn root_ca(&self) -> Option<Arc<swarmguard_ca::RootCa>> {
        self.security.current().map(|m| m.root.clone())
    }

    /// The cluster record and its version, decoded once per version.
    pub fn cluster(&self) -> Result<ClusterView, ControlError> {
        let v = self
            .store
            .get(CLUSTER_KEY)
            .ok_or(ControlError::NotManager)?;
        let mut cache = self.cluster_cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.as_ref().filter(|c| c.version == v.version) {
            return Ok(c.clone());
        }
        let view = Arc::new(Stored {
            record: records::decode(&v)?,
            version: v.version,
        });
        *cache = Some(view.clone());
        Ok(view)
    }

    /// How long node certificates are valid for (the cluster spec's `NodeCertExpiry`).
    pub fn node_cert_expiry(&self) -> Duration {
        match self
            .cluster()
            .map(|c| c.record.spec.ca_config.node_cert_expiry)
        {
            Ok(n) if n > 0 => Duration::from_nanos(n as u64),
            _ => swarmguard_ca::DEFAULT_NODE_CERT_EXPIRY,
        }
    }

    async fn apply(&self, txn: Txn) -> Result<TxnOutcome, ControlError> {
        records::apply(&self.store, txn).await
    }
}

/// dockerd's text when a write raced another one.
fn out_of_sequence() -> ControlError {
    ControlError::rpc(Code::Unknown, "update out of sequence")
}

/// An IP or `IP:port`; interface names are not resolved.
pub fn parse_addr(s: &str, default_port: u16) -> Option<SocketAddr> {
    if let Ok(sa) = s.parse::<SocketAddr>() {
        return Some(sa);
    }
    s.parse::<IpAddr>()
        .ok()
        .map(|ip| SocketAddr::new(ip, default_port))
}

/// Setups for tests in this crate: a manager's config and a swarm initialised on it.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// Data in `dir`, advertised at 127.0.0.1; a test that starts the cluster port sets its
    /// own `listen_addr`.
    pub(crate) fn config(dir: &std::path::Path) -> ManagerConfig {
        ManagerConfig {
            data_dir: dir.to_path_buf(),
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            advertise_addr: Some("127.0.0.1".into()),
        }
    }

    /// A store in `dir` and a manager on it whose swarm is initialised with the defaults.
    pub(crate) async fn initialised(dir: &std::path::Path) -> (Store, Arc<Control>) {
        let store = Store::open(dir).await.unwrap();
        let control = Arc::new(Control::open(store.clone(), config(dir)).unwrap());
        control
            .init(&swarm::InitOptions {
                advertise_addr: "127.0.0.1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        (store, control)
    }
}

#[cfg(test)]
mod tests {
    use super::testing::{config, initialised};
    use super::*;
    use base64::engine::general_purpose::STANDARD as B64;
    use base64::Engine as _;
    use swarm::InitOptions;

    fn files_under(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
        let mut out = Vec::new();
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            for e in std::fs::read_dir(&d).unwrap() {
                let p = e.unwrap().path();
                if p.is_dir() {
                    stack.push(p);
                } else if p.is_file() {
                    out.push(p);
                }
            }
        }
        out
    }

    fn contains(hay: &[u8], needle: &[u8]) -> bool {
        needle.len() <= hay.len() && hay.windows(needle.len()).any(|w| w == needle)
    }

    /// Two inits at once: exactly one wins, and the identity on disk is the winner's, so the
    /// manager still loads after a restart.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_inits_leave_one_consistent_identity() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let control = Arc::new(Control::open(store.clone(), config(dir.path())).unwrap());
        let req = InitOptions {
            advertise_addr: "127.0.0.1".into(),
            ..Default::default()
        };
        let tasks: Vec<_> = (0..4)
            .map(|_| {
                let (c, r) = (control.clone(), req.clone());
                tokio::spawn(async move { c.init(&r).await })
            })
            .collect();
        let mut won = Vec::new();
        for t in tasks {
            match t.await.unwrap() {
                Ok(id) => won.push(id),
                Err(e) => assert!(e.to_string().contains("already part of a swarm"), "{e}"),
            }
        }
        assert_eq!(won.len(), 1, "exactly one init wins");
        drop(control);
        let reopened = Control::open(store.clone(), config(dir.path())).unwrap();
        assert_eq!(reopened.local_node_id(), Some(won[0].clone()));
        store.shutdown().await.unwrap();
    }

    /// The root CA key and the store's data key never sit in clear in the data dir, in any
    /// encoding a careless writer might use (raw, base64, hex). The DEK's own key file is the one
    /// place it lives until autolock wraps it.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn root_key_and_dek_never_in_clear_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let (store, control) = initialised(dir.path()).await;
        let key = control.root_ca().unwrap().key_pkcs8_der().unwrap();
        store.shutdown().await.unwrap();
        drop(control);

        let dek = swarmguard_secrets::keyfile::load_dek(&dir.path().join("keys/dek"))
            .unwrap()
            .expose_bytes()
            .to_vec();
        let encodings = |bytes: &[u8], secret: std::ops::Range<usize>| -> Vec<Vec<u8>> {
            let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
            vec![
                bytes.to_vec(),
                B64.encode(bytes).into_bytes(),
                hex.into_bytes(),
                // The secret part alone, in case a writer split or re-wrapped the encoding.
                bytes[secret].to_vec(),
            ]
        };
        // PKCS#8 of a P-256 key: 36 bytes of fixed header, then the 32-byte private scalar
        // (the public key that follows is public and sits in the certificate).
        assert_eq!(key.len(), 138);
        let key_encodings = encodings(&key, 36..68);
        let dek_encodings = encodings(&dek, 0..32);
        let files = files_under(dir.path());
        assert!(files.len() > 3, "{files:?}");
        for file in files {
            let data = std::fs::read(&file).unwrap();
            for enc in &key_encodings {
                assert!(
                    !contains(&data, enc),
                    "root key found in {}",
                    file.display()
                );
            }
            if file.ends_with("keys/dek") {
                continue;
            }
            for enc in &dek_encodings {
                assert!(!contains(&data, enc), "DEK found in {}", file.display());
            }
        }
    }
}
