//! A root rotation's target and the signer while it runs: the new root's key signs, and the
//! new root cross-signed by the current one travels with every certificate as intermediate.
//! Read by the security material; the phases that start and finish a rotation live in
//! `rotation.rs`.

use std::sync::Arc;

use swarmguard_ca::{IssuedCertificate, RootCa};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::signer::{NodeSigner, SignError, SignFuture, SignRequest};
use crate::control::error::ControlError;
use crate::control::records::RootRotation;

/// A rotation's target: the new root with its key, and its certificate cross-signed by the
/// current root.
pub struct Rotation {
    pub new_root: Arc<RootCa>,
    pub cross_signed_pem: Vec<u8>,
}

impl Rotation {
    /// Loads the target from the store's parts and checks that they belong together: the key
    /// is the new root's, and the cross-signed certificate carries the new root's name and key
    /// and was signed by `old`.
    pub fn load(old: &RootCa, r: &RootRotation, key_der: &[u8]) -> Result<Rotation, ControlError> {
        let bad = |what: &'static str| {
            ControlError::internal(
                "the stored root rotation is inconsistent",
                format!("{what}; start it again with `docker swarm ca --rotate`"),
            )
        };
        // No key: an external CA holds it (moving the swarm to cfssl).
        let new_root = if key_der.is_empty() {
            RootCa::from_cert_pem(r.new_root_pem.as_bytes())
        } else {
            RootCa::from_pem(r.new_root_pem.as_bytes(), key_der)
        }
        .map_err(|e| ControlError::internal("cannot load the rotation's new root", e))?;
        let ders = crate::tls::certs_from_pem(r.cross_signed_pem.as_bytes(), "cross-signed root")
            .map_err(|_| bad("cross-signed certificate unreadable"))?;
        let (_, cross) = X509Certificate::from_der(ders[0].as_ref())
            .map_err(|_| bad("cross-signed certificate unreadable"))?;
        let (_, old_cert) = X509Certificate::from_der(old.cert_der())
            .map_err(|_| bad("current root unreadable"))?;
        if ders.len() != 1
            || cross.subject().as_raw() != new_root.subject_der()
            || cross.public_key().raw != new_root.spki_der()
            || cross.issuer().as_raw() != old.subject_der()
            || cross.verify_signature(Some(old_cert.public_key())).is_err()
        {
            return Err(bad(
                "the cross-signed certificate is not the new root signed by the current root",
            ));
        }
        Ok(Rotation {
            new_root: Arc::new(new_root),
            cross_signed_pem: r.cross_signed_pem.as_bytes().to_vec(),
        })
    }
}

/// The signer during a rotation: whoever signs for the new root (its key here, or the external
/// CA that holds it), with the cross-signed root appended to every certificate as intermediate.
pub struct RotatingCa {
    pub rotation: Arc<Rotation>,
    pub inner: Arc<dyn NodeSigner>,
}

impl RotatingCa {
    fn with_intermediate(
        cross: &[u8],
        issued: Result<IssuedCertificate, SignError>,
    ) -> Result<IssuedCertificate, SignError> {
        let mut issued = issued?;
        if !issued.cert_pem.ends_with(b"\n") {
            issued.cert_pem.push(b'\n');
        }
        issued.cert_pem.extend_from_slice(cross);
        Ok(issued)
    }
}

impl NodeSigner for RotatingCa {
    fn sign_now(&self, req: &SignRequest) -> Option<Result<IssuedCertificate, SignError>> {
        let cross = &self.rotation.cross_signed_pem;
        self.inner
            .sign_now(req)
            .map(|r| Self::with_intermediate(cross, r))
    }

    fn signs_inline(&self) -> bool {
        self.inner.signs_inline()
    }

    fn sign(&self, req: SignRequest) -> SignFuture {
        let (inner, rotation) = (self.inner.clone(), self.rotation.clone());
        Box::pin(async move {
            Self::with_intermediate(&rotation.cross_signed_pem, inner.sign(req).await)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(old: &RootCa, new: &RootCa) -> RootRotation {
        RootRotation {
            new_root_pem: String::from_utf8(new.cert_pem().to_vec()).unwrap(),
            cross_signed_pem: String::from_utf8(old.cross_sign(new).unwrap()).unwrap(),
        }
    }

    /// A stored rotation loads only when its parts belong together: the key is the new root's
    /// and the cross-signed certificate is the new root signed by the current root.
    #[test]
    fn a_tampered_stored_rotation_is_refused() {
        let (old, new, other) = (
            RootCa::create().unwrap(),
            RootCa::create().unwrap(),
            RootCa::create().unwrap(),
        );
        let key = new.key_pkcs8_der().unwrap();
        let good = stored(&old, &new);
        assert!(Rotation::load(&old, &good, &key).is_ok());
        // Cross-signed by another root.
        assert!(Rotation::load(&old, &stored(&other, &new), &key).is_err());
        // Another root's key.
        let other_key = other.key_pkcs8_der().unwrap();
        assert!(Rotation::load(&old, &good, &other_key).is_err());
        // The cross-signed certificate of another new root.
        let mut swapped = good.clone();
        swapped.cross_signed_pem = stored(&old, &other).cross_signed_pem;
        assert!(Rotation::load(&old, &swapped, &key).is_err());
        // Two certificates where one is expected.
        let mut two = good.clone();
        two.cross_signed_pem.push_str(&good.cross_signed_pem);
        assert!(Rotation::load(&old, &two, &key).is_err());
    }

    /// Certificates issued during a rotation carry the cross-signed root after the leaf.
    #[test]
    fn the_rotating_signer_appends_the_cross_signed_root() {
        let (old, new) = (RootCa::create().unwrap(), RootCa::create().unwrap());
        let key = new.key_pkcs8_der().unwrap();
        let rotation = Rotation::load(&old, &stored(&old, &new), &key).unwrap();
        let rotation = Arc::new(rotation);
        let signer = RotatingCa {
            inner: Arc::new(crate::control::ca::signer::InternalCa(
                rotation.new_root.clone(),
            )),
            rotation,
        };
        let (_, csr) = swarmguard_ca::generate_node_key_and_csr();
        let req = SignRequest {
            csr: swarmguard_ca::check_csr(&csr).unwrap(),
            csr_pem: csr,
            node_id: swarmguard_ca::new_id(),
            role: swarmguard_ca::NodeRole::Worker,
            cluster_id: swarmguard_ca::new_id(),
            expiry: swarmguard_ca::DEFAULT_NODE_CERT_EXPIRY,
        };
        let issued = signer.sign_now(&req).unwrap().unwrap();
        let chain = crate::tls::certs_from_pem(&issued.cert_pem, "chain").unwrap();
        assert_eq!(chain.len(), 2);
        assert!(swarmguard_ca::verify_node_certificate(&new, &issued.cert_pem).is_ok());
        assert!(swarmguard_ca::verify_node_certificate(&old, &issued.cert_pem).is_err());
    }
}
