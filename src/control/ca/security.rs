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

use super::external;
use super::local::{self, LocalIdentity};
use super::rotating_ca::{RotatingCa, Rotation};
use super::signer::NodeSigner;
use crate::control::error::ControlError;
use crate::control::records::{
    self, ClusterRecord, RootCaRecord, RootRotation, CLUSTER_KEY, ROOT_CA_KEY,
};
use crate::control::types::{Spec, TlsInfo};
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
    /// What this manager dials other managers with: this certificate as client certificate,
    /// their server certificates verified against the root (name `swarm-manager`).
    pub client_config: Arc<rustls::ClientConfig>,
    /// A root rotation in progress: the new root is trusted beside the old one and signs.
    pub rotation: Option<Arc<Rotation>>,
    /// SHA-256 over the root and the certificate: what the TLS configs were built from.
    fingerprint: [u8; 32],
}

impl Material {
    /// Docker's `TLSInfo`: the trusted root; during a rotation the issuer is already the new
    /// root's (as SwarmKit reports it), which is what nodes converge to.
    pub fn tls_info(&self) -> TlsInfo {
        let mut info = local::tls_info(&self.root);
        if let Some(r) = &self.rotation {
            let new = local::tls_info(&r.new_root);
            info.cert_issuer_subject = new.cert_issuer_subject;
            info.cert_issuer_public_key = new.cert_issuer_public_key;
        }
        info
    }
}

/// Holder of the current [`Material`]; `None` while this manager is not part of a swarm.
#[derive(Default)]
pub struct Security {
    current: RwLock<Option<Arc<Material>>>,
}

/// What the material is built from: the root, this manager's certificate and the external CA
/// configuration (a `swarm update --external-ca` changes the signer).
fn fingerprint(root_pem: &[u8], cert_pem: &[u8], spec: &Spec, rotation: &[u8]) -> [u8; 32] {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
    for part in [
        root_pem,
        cert_pem,
        &serde_json::to_vec(&spec.ca_config.external_cas).unwrap_or_default(),
        rotation,
    ] {
        ctx.update(&(part.len() as u64).to_be_bytes());
        ctx.update(part);
    }
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
                client_config: m.client_config.clone(),
                rotation: m.rotation.clone(),
                fingerprint: m.fingerprint,
            }));
        }
    }

    pub fn clear(&self) {
        *self.current.write().expect("security lock") = None;
    }

    /// Builds the material from its parts, checking that the key is the certificate's; the
    /// signer is the spec's external CAs for this root if any, else the internal CA.
    pub fn build(
        cluster_id: String,
        identity: LocalIdentity,
        root: Arc<RootCa>,
        cert_pem: Vec<u8>,
        key_pem: &[u8],
        spec: &Spec,
    ) -> Result<Material, ControlError> {
        Self::build_rotating(cluster_id, identity, root, cert_pem, key_pem, spec, None)
    }

    /// [`Security::build`] during a root rotation: both roots are trusted (so chains ending
    /// in the cross-signed certificate and chains from the new root both verify), and the
    /// new root's key signs, handing out the cross-signed certificate as intermediate.
    pub fn build_rotating(
        cluster_id: String,
        identity: LocalIdentity,
        root: Arc<RootCa>,
        cert_pem: Vec<u8>,
        key_pem: &[u8],
        spec: &Spec,
        rotation: Option<Arc<Rotation>>,
    ) -> Result<Material, ControlError> {
        let root_pem = root.cert_pem().to_vec();
        let mut trust = root_pem.clone();
        if let Some(r) = &rotation {
            if !trust.ends_with(b"\n") {
                trust.push(b'\n');
            }
            trust.extend_from_slice(r.new_root.cert_pem());
        }
        let server_config = crate::tls::server_config(&trust, &cert_pem, key_pem)
            .map_err(|e| ControlError::internal("cannot build the cluster port's TLS", e))?;
        // The signer for the root that signs: the new one during a rotation (the spec's
        // external CAs for it, else its own key).
        let signing_root = rotation.as_ref().map_or(&root, |r| &r.new_root);
        let signer = external::signer_for(
            spec,
            signing_root,
            (cert_pem.clone(), Zeroizing::new(key_pem.to_vec())),
        );
        let signer: Arc<dyn NodeSigner> = match &rotation {
            Some(r) => Arc::new(RotatingCa {
                rotation: r.clone(),
                inner: signer,
            }),
            None => signer,
        };
        let client_config = crate::agent::tls::verified(&trust, Some((&cert_pem, key_pem)))
            .map_err(|e| ControlError::internal("cannot build the managers' client TLS", e))?;
        let rotation_pem = rotation
            .as_ref()
            .map(|r| r.new_root.cert_pem().to_vec())
            .unwrap_or_default();
        Ok(Material {
            client_config,
            cluster_id,
            identity,
            rotation,
            fingerprint: fingerprint(&root_pem, &cert_pem, spec, &rotation_pem),
            signer,
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
        let rotation = load_rotation(store, &root, cluster.record.root_rotation.as_ref())?;
        let codec = crate::control::ca::autolock::StoreKeyCodec { store, seal: false };
        // Mid-rotation this manager's certificate may already come from the new root.
        let identity = LocalIdentity::load(data_dir, &root, &codec)
            .or_else(|e| match &rotation {
                Some(r) => LocalIdentity::load(data_dir, &r.new_root, &codec),
                None => Err(e),
            })
            .map_err(|e| ControlError::internal("cannot load this manager's identity", e))?;
        let (cert, key) = LocalIdentity::read_pair(data_dir, &codec)
            .map_err(|e| ControlError::internal("cannot read this manager's certificate", e))?;
        Self::build_rotating(
            cluster.record.id.clone(),
            identity,
            root,
            cert,
            &key,
            &cluster.record.spec,
            rotation,
        )
        .map(Some)
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
        let wanted = cluster.record.root_rotation.as_ref();
        let rotation_pem = wanted
            .map(|r| r.new_root_pem.as_bytes())
            .unwrap_or_default();
        if fingerprint(root_pem, &cert, &cluster.record.spec, rotation_pem) == current.fingerprint {
            return Ok(false);
        }
        let codec = crate::control::ca::autolock::StoreKeyCodec { store, seal: false };
        let (cert, key) = LocalIdentity::read_pair(data_dir, &codec)
            .map_err(|e| ControlError::internal("cannot read this manager's certificate", e))?;
        let root = if root_pem == current.root_pem.as_slice() {
            current.root.clone()
        } else {
            Arc::new(load_root_ca(store)?)
        };
        let rotation = match (&current.rotation, wanted) {
            (Some(r), Some(w)) if r.new_root.cert_pem() == w.new_root_pem.as_bytes() => {
                Some(r.clone())
            }
            _ => load_rotation(store, &root, wanted)?,
        };
        let material = Self::build_rotating(
            cluster.record.id.clone(),
            current.identity.clone(),
            root,
            cert,
            &key,
            &cluster.record.spec,
            rotation,
        )?;
        self.install(material);
        tracing::info!(
            "security material reloaded (root, this manager's certificate or the external CAs changed)"
        );
        Ok(true)
    }
}

/// The `ca/root` record and its version.
pub fn load_root_record(store: &Store) -> Result<(RootCaRecord, u64), ControlError> {
    let raw = store.get(ROOT_CA_KEY).ok_or_else(|| {
        ControlError::internal(
            "the cluster store has a cluster but no root CA",
            "data dir damaged; restore it from a backup",
        )
    })?;
    let value = Zeroizing::new(raw.value);
    let record: RootCaRecord = serde_json::from_slice(&value)
        .map_err(|e| ControlError::internal("cannot decode the root CA record", e))?;
    Ok((record, raw.version))
}

/// The rotation target with its key, if a rotation runs; its cross-signed certificate must
/// chain to `root` (a rotation started under another root is not trusted).
fn load_rotation(
    store: &Store,
    root: &RootCa,
    wanted: Option<&RootRotation>,
) -> Result<Option<Arc<Rotation>>, ControlError> {
    let Some(w) = wanted else { return Ok(None) };
    let (record, _) = load_root_record(store)?;
    let key = Zeroizing::new(
        B64.decode(record.rotation_key_pkcs8_b64.as_bytes())
            .map_err(|e| ControlError::internal("cannot decode the new root's key", e))?,
    );
    Rotation::load(root, w, &key).map(|r| Some(Arc::new(r)))
}

/// The root CA with its key (or without, for an external CA), from the `ca/root` record.
fn load_root_ca(store: &Store) -> Result<RootCa, ControlError> {
    let (record, _) = load_root_record(store)?;
    if record.key_pkcs8_b64.is_empty() {
        // An external CA holds the key: the root is trusted only.
        return RootCa::from_cert_pem(record.cert_pem.as_bytes())
            .map_err(|e| ControlError::internal("cannot load the root CA", e));
    }
    let key = Zeroizing::new(
        B64.decode(record.key_pkcs8_b64.as_bytes())
            .map_err(|e| ControlError::internal("cannot decode the root CA key", e))?,
    );
    RootCa::from_pem(record.cert_pem.as_bytes(), &key)
        .map_err(|e| ControlError::internal("cannot load the root CA", e))
}
