//! A root rotation's target and the signer while it runs: the new root's key signs, and the
//! new root cross-signed by the current one travels with every certificate as intermediate.
//! Read by the security material; the phases that start and finish a rotation live in
//! `rotation.rs`.

use std::sync::Arc;

use swarmguard_ca::{IssuedCertificate, RootCa};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::error::ControlError;
use super::records::RootRotation;
use super::signer::{NodeSigner, SignError, SignFuture, SignRequest};

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
        let new_root = RootCa::from_pem(r.new_root_pem.as_bytes(), key_der)
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

/// The signer during a rotation: the new root's key, the cross-signed root as intermediate.
pub struct RotatingCa(pub Arc<Rotation>);

impl RotatingCa {
    fn issue(&self, req: &SignRequest) -> Result<IssuedCertificate, SignError> {
        let mut issued = self
            .0
            .new_root
            .issue_node_certificate(
                &req.csr,
                &req.node_id,
                req.role,
                &req.cluster_id,
                req.expiry,
            )
            .map_err(|e| SignError::Refused(e.to_string()))?;
        if !issued.cert_pem.ends_with(b"\n") {
            issued.cert_pem.push(b'\n');
        }
        issued.cert_pem.extend_from_slice(&self.0.cross_signed_pem);
        Ok(issued)
    }
}

impl NodeSigner for RotatingCa {
    fn sign_now(&self, req: &SignRequest) -> Option<Result<IssuedCertificate, SignError>> {
        Some(self.issue(req))
    }

    fn sign(&self, req: SignRequest) -> SignFuture {
        let result = self.issue(&req);
        Box::pin(async move { result })
    }
}
