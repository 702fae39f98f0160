//! This manager's security material, owned in one place (SwarmKit's `SecurityConfig`): the
//! trusted root, the signer, this manager's certificate and key, and the TLS configurations
//! built from them.
//!
//! Every consumer reads it here: the cluster port's acceptor (server config), the CA service
//! (signer, root), the renewer, `/info` and `GET /swarm` (TLS info). Nothing else caches a root.
//! The store is the source of truth; [`Security::refresh`] rebuilds the material when the
//! cluster record or this manager's certificate changed, and is driven by store change events.

use std::path::Path;
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use swarmguard_ca::RootCa;
use zeroize::Zeroizing;

use super::error::ControlError;
use super::local::{self, LocalIdentity};
use super::records::{self, ClusterRecord, RootCaRecord, CLUSTER_KEY, ROOT_CA_KEY};
use super::signer::{InternalCa, NodeSigner};
use super::types::TlsInfo;
use crate::store::Store;

/// One consistent set of security material. Replaced whole, never edited.
pub struct Material {
    pub cluster_id: String,
    pub identity: LocalIdentity,
    /// The trusted root, as the exact PEM bytes the join tokens' digest covers.
    pub root_pem: Vec<u8>,
    pub root: Arc<RootCa>,
    pub signer: Arc<dyn NodeSigner>,
    /// This manager's node certificate (PEM).
    pub cert_pem: Vec<u8>,
    /// The cluster port's server side: this certificate, client certificates verified
    /// against the root when offered.
    pub server_config: Arc<rustls::ServerConfig>,
    /// SHA-256 over the root and the certificate: what the TLS configs were built from.
    fingerprint: [u8; 32],
}

impl Material {
    /// Docker's `TLSInfo` for the trusted root.
    pub fn tls_info(&self) -> TlsInfo {
        local::tls_info(&self.root)
    }
}

/// Holder of the current [`Material`]; `None` while this manager is not part of a swarm.
#[derive(Default)]
pub struct Security {
    current: RwLock<Option<Arc<Material>>>,
}

fn fingerprint(root_pem: &[u8], cert_pem: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    ctx.update(root_pem);
    ctx.update(cert_pem);
    let mut fp = [0u8; 32];
    fp.copy_from_slice(ctx.finish().as_ref());
    fp
}

impl Security {
    pub fn current(&self) -> Option<Arc<Material>> {
        self.current.read().expect("security lock").clone()
    }

    pub fn install(&self, material: Material) {
        *self.current.write().expect("security lock") = Some(Arc::new(material));
    }

    /// Replaces the signer, keeping everything else (an external CA, or a test's signer).
    pub fn set_signer(&self, signer: Arc<dyn NodeSigner>) {
        let mut current = self.current.write().expect("security lock");
        if let Some(m) = current.as_ref() {
            *current = Some(Arc::new(Material {
                cluster_id: m.cluster_id.clone(),
                identity: m.identity.clone(),
                root_pem: m.root_pem.clone(),
                root: m.root.clone(),
                signer,
                cert_pem: m.cert_pem.clone(),
                server_config: m.server_config.clone(),
                fingerprint: m.fingerprint,
            }));
        }
    }

    pub fn clear(&self) {
        *self.current.write().expect("security lock") = None;
    }

    /// Builds the material from its parts, checking that the key is the certificate's.
    pub fn build(
        cluster_id: String,
        identity: LocalIdentity,
        root: Arc<RootCa>,
        cert_pem: Vec<u8>,
        key_pem: &[u8],
    ) -> Result<Material, ControlError> {
        let root_pem = root.cert_pem().to_vec();
        let server_config = crate::tls::server_config(&root_pem, &cert_pem, key_pem)
            .map_err(|e| ControlError::internal("cannot build the cluster port's TLS", e))?;
        Ok(Material {
            cluster_id,
            identity,
            fingerprint: fingerprint(&root_pem, &cert_pem),
            signer: Arc::new(InternalCa(root.clone())),
            root,
            root_pem,
            cert_pem,
            server_config,
        })
    }

    /// Loads the material of a manager that is part of a swarm: root and key from the store,
    /// this manager's identity from its data dir (checked against the root).
    pub fn load(store: &Store, data_dir: &Path) -> Result<Option<Material>, ControlError> {
        let Some(cluster) = records::get::<ClusterRecord>(store, CLUSTER_KEY)? else {
            return Ok(None);
        };
        let root = Arc::new(load_root_ca(store)?);
        let codec = super::autolock::StoreKeyCodec { store, seal: false };
        let identity = LocalIdentity::load(data_dir, &root, &codec)
            .map_err(|e| ControlError::internal("cannot load this manager's identity", e))?;
        let (cert, key) = LocalIdentity::read_pair(data_dir, &codec)
            .map_err(|e| ControlError::internal("cannot read this manager's certificate", e))?;
        Self::build(cluster.record.id.clone(), identity, root, cert, &key).map(Some)
    }

    /// Rebuilds the material if the root in the store or this manager's certificate on disk
    /// changed since it was built. Returns whether it did.
    pub fn refresh(&self, store: &Store, data_dir: &Path) -> Result<bool, ControlError> {
        let Some(current) = self.current() else {
            return Ok(false);
        };
        let Some(cluster) = records::get::<ClusterRecord>(store, CLUSTER_KEY)? else {
            return Ok(false);
        };
        // The supervisor asks several times a second: the certificate decides, and the key is
        // read (and parsed into a TLS config) only when something changed.
        let cert = LocalIdentity::read_certificate(data_dir)
            .map_err(|e| ControlError::internal("cannot read this manager's certificate", e))?;
        let root_pem = cluster.record.root_ca_pem.as_bytes();
        if fingerprint(root_pem, &cert) == current.fingerprint {
            return Ok(false);
        }
        let codec = super::autolock::StoreKeyCodec { store, seal: false };
        let (cert, key) = LocalIdentity::read_pair(data_dir, &codec)
            .map_err(|e| ControlError::internal("cannot read this manager's certificate", e))?;
        let root = if root_pem == current.root_pem.as_slice() {
            current.root.clone()
        } else {
            Arc::new(load_root_ca(store)?)
        };
        let material = Self::build(
            cluster.record.id.clone(),
            current.identity.clone(),
            root,
            cert,
            &key,
        )?;
        self.install(material);
        tracing::info!("security material reloaded (root or this manager's certificate changed)");
        Ok(true)
    }
}

/// The root CA with its key, from the `ca/root` record.
fn load_root_ca(store: &Store) -> Result<RootCa, ControlError> {
    let raw = store.get(ROOT_CA_KEY).ok_or_else(|| {
        ControlError::internal(
            "the cluster store has a cluster but no root CA",
            "data dir damaged; restore it from a backup",
        )
    })?;
    let value = Zeroizing::new(raw.value);
    let record: RootCaRecord = serde_json::from_slice(&value)
        .map_err(|e| ControlError::internal("cannot decode the root CA record", e))?;
    let key = Zeroizing::new(
        B64.decode(record.key_pkcs8_b64.as_bytes())
            .map_err(|e| ControlError::internal("cannot decode the root CA key", e))?,
    );
    RootCa::from_pem(record.cert_pem.as_bytes(), &key)
        .map_err(|e| ControlError::internal("cannot load the root CA", e))
}
