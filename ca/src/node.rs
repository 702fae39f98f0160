//! Node certificates: SwarmKit's profile (`ca/certificates.go` `PrepareCSR`,
//! `ca/config.go` `SigningPolicy`), issuance from an untrusted CSR, and
//! reading a node's identity back out of a certificate.

use std::time::{Duration as StdDuration, SystemTime};

use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyIdMethod,
    KeyUsagePurpose, SanType, SerialNumber,
};
use rustls_pki_types::pem::SectionKind;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::csr::CheckedCsr;
use crate::error::CaError;
use crate::id::is_valid_id;
use crate::pem;
use crate::root::{printable, round_to_minute, signing, RootCa, ROOT_CN};
use crate::signer::P256Key;

/// SwarmKit's `MinNodeCertExpiration`.
pub const MIN_NODE_CERT_EXPIRY: StdDuration = StdDuration::from_secs(3600);
/// SwarmKit's `DefaultNodeCertExpiration` (90 days).
pub const DEFAULT_NODE_CERT_EXPIRY: StdDuration = StdDuration::from_secs(2160 * 3600);
/// cfssl signing-profile backdate used by SwarmKit.
const NODE_BACKDATE: Duration = Duration::hours(1);

/// A node's role, carried in the certificate's OU and used for authorization.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeRole {
    /// Runs raft and the control API.
    Manager,
    /// Runs tasks only.
    Worker,
}

impl NodeRole {
    /// The OU string SwarmKit writes and checks.
    pub fn ou(self) -> &'static str {
        match self {
            NodeRole::Manager => "swarm-manager",
            NodeRole::Worker => "swarm-worker",
        }
    }

    /// The role for an OU string, if it is one of ours.
    pub fn from_ou(ou: &str) -> Option<NodeRole> {
        match ou {
            "swarm-manager" => Some(NodeRole::Manager),
            "swarm-worker" => Some(NodeRole::Worker),
            _ => None,
        }
    }
}

/// A freshly signed node certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IssuedCertificate {
    /// The leaf certificate, PEM, ending with a newline.
    pub cert_pem: Vec<u8>,
    /// Expiry, for scheduling renewal.
    pub not_after: SystemTime,
    /// The serial number (20 bytes, top bit clear), e.g. for audit logs.
    pub serial: [u8; 20],
}

/// Who a verified node certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeIdentity {
    /// CN.
    pub node_id: String,
    /// From the OU.
    pub role: NodeRole,
    /// O.
    pub cluster_id: String,
    /// Start of the certificate's validity.
    pub not_before: SystemTime,
    /// Certificate expiry.
    pub not_after: SystemTime,
}

/// A cluster ID is an ID, or `FIPS.` + an ID in FIPS-mandated clusters.
pub(crate) fn is_valid_cluster_id(id: &str) -> bool {
    is_valid_id(id.strip_prefix("FIPS.").unwrap_or(id))
}

impl RootCa {
    /// Signs a node certificate for the key of a CSR that [`crate::check_csr`] accepted.
    ///
    /// Only the CSR's public key is used; subject and SANs are set here:
    /// `O=<cluster_id>, OU=<role>, CN=<node_id>`, DNS SANs `[OU, node_id]`
    /// plus `swarm-ca` for managers. Validity runs from one hour before now
    /// (rounded to the minute) to now + `expiry`, as in SwarmKit.
    pub fn issue_node_certificate(
        &self,
        key: &CheckedCsr,
        node_id: &str,
        role: NodeRole,
        cluster_id: &str,
        expiry: StdDuration,
    ) -> Result<IssuedCertificate, CaError> {
        let issuer = self.issuer.as_ref().ok_or(CaError::NoRootKey)?;
        if !is_valid_id(node_id) {
            return Err(CaError::InvalidNodeId);
        }
        if !is_valid_cluster_id(cluster_id) {
            return Err(CaError::InvalidClusterId);
        }
        if expiry < MIN_NODE_CERT_EXPIRY {
            return Err(CaError::ExpiryTooShort);
        }
        let expiry = Duration::try_from(expiry).map_err(|_| CaError::ExpiryBeyondRoot)?;
        let now = round_to_minute(OffsetDateTime::now_utc());
        let not_after = now
            .checked_add(expiry)
            .filter(|na| *na <= self.not_after)
            .ok_or(CaError::ExpiryBeyondRoot)?;

        let mut dn = DistinguishedName::new();
        dn.push(DnType::OrganizationName, printable(cluster_id)?);
        dn.push(DnType::OrganizationalUnitName, printable(role.ou())?);
        dn.push(DnType::CommonName, printable(node_id)?);

        let mut sans = vec![dns(role.ou())?, dns(node_id)?];
        if role == NodeRole::Manager {
            sans.push(dns(ROOT_CN)?);
        }

        let serial = crate::rand::serial()?;
        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.subject_alt_names = sans;
        params.not_before = now - NODE_BACKDATE;
        params.not_after = not_after;
        params.serial_number = Some(SerialNumber::from_slice(&serial));
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        params.key_identifier_method = KeyIdMethod::PreSpecified(key.ski.clone());

        let cert = params.signed_by(&key.spki, issuer).map_err(signing)?;
        Ok(IssuedCertificate {
            cert_pem: pem::encode("CERTIFICATE", cert.der()).to_vec(),
            not_after: not_after.into(),
            serial,
        })
    }
}

fn dns(name: &str) -> Result<SanType, CaError> {
    Ok(SanType::DnsName(name.try_into().map_err(signing)?))
}

/// Makes a P-256 key and a CSR with an empty subject, as SwarmKit's
/// `GenerateNewCSR` does, so a manager can request its own certificate
/// through the same path as any other node.
///
/// Returns (PKCS#8 `PRIVATE KEY` PEM, zeroized on drop; `CERTIFICATE REQUEST` PEM).
///
/// # Panics
/// If the operating system RNG fails.
pub fn generate_node_key_and_csr() -> (Zeroizing<Vec<u8>>, Vec<u8>) {
    let key = match P256Key::generate() {
        Ok(k) => k,
        Err(_) => panic!("swarmguard-ca: the operating system random number generator failed"),
    };
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    let csr = match params.serialize_request(&key) {
        Ok(c) => c,
        Err(e) => panic!("swarmguard-ca: signing a CSR with a fresh key failed: {e}"),
    };
    let key_pem = pem::encode("PRIVATE KEY", key.pkcs8());
    let csr_pem = pem::encode("CERTIFICATE REQUEST", csr.der()).to_vec();
    (key_pem, csr_pem)
}

/// Checks that `cert_pem` (its first certificate) was issued by `root`, is
/// valid now and is a node certificate, and returns the identity it names.
///
/// Intermediates after the leaf are ignored: certificates signed during a
/// root rotation (leaf + cross-signed root) are not supported yet.
pub fn verify_node_certificate(root: &RootCa, cert_pem: &[u8]) -> Result<NodeIdentity, CaError> {
    use rustls_pki_types::pem::PemObject;
    let bad = CaError::BadNodeCertificate;
    let der = <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(cert_pem)
        .find_map(|item| match item {
            Ok((SectionKind::Certificate, der)) => Some(Ok(der)),
            Ok(_) => None,
            Err(_) => Some(Err(())),
        })
        .ok_or(bad("no PEM CERTIFICATE block"))?
        .map_err(|_| bad("malformed PEM"))?;
    let (rest, cert) =
        X509Certificate::from_der(&der).map_err(|_| bad("not a valid X.509 certificate"))?;
    if !rest.is_empty() {
        return Err(bad("trailing bytes after the certificate"));
    }
    let (_, root_cert) = X509Certificate::from_der(&root.cert_der)
        .map_err(|_| CaError::BadRootCertificate("root certificate unreadable"))?;
    if cert.tbs_certificate.issuer.as_raw() != root.subject_der.as_slice()
        || cert.verify_signature(Some(root_cert.public_key())).is_err()
    {
        return Err(CaError::NotIssuedByRoot);
    }
    if !cert.validity().is_valid() {
        return Err(CaError::CertificateNotValidNow);
    }
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => return Err(bad("is a CA certificate")),
        Ok(_) => {}
        Err(_) => return Err(bad("malformed BasicConstraints")),
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.server_auth && eku.value.client_auth => {}
        _ => return Err(bad("missing serverAuth and clientAuth extended key usage")),
    }
    identity_of(&cert)
}

/// Reads the identity a node certificate names (the first certificate of `cert`, PEM or DER)
/// without checking its chain: for callers whose TLS stack already verified it against the
/// cluster root (the cluster port's client certificates, the agent's issued certificate).
/// The subject rules are [`verify_node_certificate`]'s.
pub fn read_node_certificate(cert: &[u8]) -> Result<NodeIdentity, CaError> {
    use rustls_pki_types::pem::PemObject;
    let bad = CaError::BadNodeCertificate;
    let der = if cert.starts_with(b"-----") {
        <(SectionKind, Vec<u8>) as PemObject>::pem_slice_iter(cert)
            .find_map(|item| match item {
                Ok((SectionKind::Certificate, der)) => Some(Ok(der)),
                Ok(_) => None,
                Err(_) => Some(Err(())),
            })
            .ok_or(bad("no PEM CERTIFICATE block"))?
            .map_err(|_| bad("malformed PEM"))?
    } else {
        cert.to_vec()
    };
    let (_, parsed) =
        X509Certificate::from_der(&der).map_err(|_| bad("not a valid X.509 certificate"))?;
    identity_of(&parsed)
}

/// CN, OU and O, each exactly once and well formed, and the validity period.
fn identity_of(cert: &X509Certificate<'_>) -> Result<NodeIdentity, CaError> {
    let bad = CaError::BadNodeCertificate;
    let subject = cert.subject();
    let one = |mut it: Box<dyn Iterator<Item = _> + '_>| -> Option<String> {
        let first: &x509_parser::x509::AttributeTypeAndValue<'_> = it.next()?;
        if it.next().is_some() {
            return None;
        }
        first.as_str().ok().map(str::to_string)
    };
    let node_id = one(Box::new(subject.iter_common_name()))
        .filter(|s| is_valid_id(s))
        .ok_or(bad(
            "subject must have exactly one CN holding a valid node ID",
        ))?;
    let role = one(Box::new(subject.iter_organizational_unit()))
        .and_then(|s| NodeRole::from_ou(&s))
        .ok_or(bad(
            "subject must have exactly one OU: swarm-manager or swarm-worker",
        ))?;
    let cluster_id = one(Box::new(subject.iter_organization()))
        .filter(|s| is_valid_cluster_id(s))
        .ok_or(bad(
            "subject must have exactly one O holding a valid cluster ID",
        ))?;
    Ok(NodeIdentity {
        node_id,
        role,
        cluster_id,
        not_before: cert.validity().not_before.to_datetime().into(),
        not_after: cert.validity().not_after.to_datetime().into(),
    })
}

/// Time until a random point between 50 % and 80 % of a certificate's lifetime, from
/// NotBefore (SwarmKit's rule; the randomness spreads a cluster's renewals out).
pub fn renewal_delay(not_before: SystemTime, not_after: SystemTime) -> StdDuration {
    let life = not_after
        .duration_since(not_before)
        .unwrap_or(StdDuration::ZERO);
    let mut r = [0u8; 4];
    crate::rand::fill_or_panic(&mut r);
    let frac = 0.5 + 0.3 * (u32::from_le_bytes(r) as f64 / (u32::MAX as f64 + 1.0));
    let at = not_before + life.mul_f64(frac);
    at.duration_since(SystemTime::now())
        .unwrap_or(StdDuration::ZERO)
}
