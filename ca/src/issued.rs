//! Checks on a node certificate that someone else signed (an external CA), before any node gets
//! it: a misconfigured cfssl profile, or a CA that is not the cluster's, must never hand a node
//! an identity the cluster did not ask for.

use std::time::Duration as StdDuration;

use rustls_pki_types::pem::SectionKind;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::GeneralName;
use x509_parser::prelude::FromDer;

use crate::csr::CheckedCsr;
use crate::error::CertCheckError;
use crate::node::{IssuedCertificate, NodeRole};
use crate::pem::{self, Single};
use crate::root::{RootCa, ROOT_CN};

/// Clock skew tolerated between this manager and the external CA.
const SKEW: Duration = Duration::minutes(5);
/// Largest certificate PEM accepted from an external CA.
pub const MAX_ISSUED_PEM_LEN: usize = 64 * 1024;

/// What the cluster asked an external CA to certify.
#[derive(Debug, Clone, Copy)]
pub struct Expected<'a> {
    /// CN.
    pub node_id: &'a str,
    /// OU.
    pub role: NodeRole,
    /// O.
    pub cluster_id: &'a str,
    /// The key the node proved it holds.
    pub csr: &'a CheckedCsr,
    /// The cluster's node certificate expiry: the certificate may not outlive now + this.
    pub expiry: StdDuration,
}

/// The DNS SANs SwarmKit asks for, in its order: `[OU, node ID]`, plus `swarm-ca` for managers.
pub fn node_hosts(node_id: &str, role: NodeRole) -> Vec<String> {
    let mut hosts = vec![role.ou().to_string(), node_id.to_string()];
    if role == NodeRole::Manager {
        hosts.push(ROOT_CN.to_string());
    }
    hosts
}

/// Accepts `cert_pem` only if it is exactly one certificate, signed by `root`, for the CSR's
/// key, naming exactly the asked subject (O, OU, CN) and DNS SANs, a non-CA with serverAuth and
/// clientAuth, valid now and not beyond now + `expiry` (nor beyond the root).
pub fn check_issued_certificate(
    root: &RootCa,
    cert_pem: &[u8],
    want: &Expected<'_>,
) -> Result<IssuedCertificate, CertCheckError> {
    if cert_pem.len() > MAX_ISSUED_PEM_LEN {
        return Err(CertCheckError::TooLarge);
    }
    let der = match pem::single_block(cert_pem, SectionKind::Certificate) {
        Single::Found(der) => der.to_vec(),
        _ => return Err(CertCheckError::NotOneCertificate),
    };
    let (rest, cert) = X509Certificate::from_der(&der).map_err(|_| CertCheckError::Malformed)?;
    if !rest.is_empty() {
        return Err(CertCheckError::Malformed);
    }
    check_chain(root, &cert)?;
    let csr_spki = rcgen::PublicKeyData::subject_public_key_info(&want.csr.spki);
    if cert.public_key().raw != csr_spki.as_slice() {
        return Err(CertCheckError::WrongKey);
    }
    check_subject(&cert, want)?;
    check_sans(&cert, &node_hosts(want.node_id, want.role))?;
    check_usage(&cert)?;
    let not_after = check_validity(root, &cert, want.expiry)?;
    Ok(IssuedCertificate {
        cert_pem: pem::encode("CERTIFICATE", &der).to_vec(),
        not_after: not_after.into(),
        serial: serial_of(cert.raw_serial()),
    })
}

fn check_chain(root: &RootCa, cert: &X509Certificate<'_>) -> Result<(), CertCheckError> {
    let (_, root_cert) =
        X509Certificate::from_der(&root.cert_der).map_err(|_| CertCheckError::Malformed)?;
    if cert.tbs_certificate.issuer.as_raw() != root.subject_der.as_slice() {
        return Err(CertCheckError::WrongIssuer {
            found: cert.issuer().to_string(),
        });
    }
    cert.verify_signature(Some(root_cert.public_key()))
        .map_err(|_| CertCheckError::BadSignature)
}

fn check_subject(cert: &X509Certificate<'_>, want: &Expected<'_>) -> Result<(), CertCheckError> {
    let subject = cert.subject();
    let wrong = || CertCheckError::WrongSubject {
        found: subject.to_string(),
    };
    let attrs: Vec<_> = subject.iter_attributes().collect();
    if attrs.len() != 3 {
        return Err(wrong());
    }
    let only =
        |mut it: Box<dyn Iterator<Item = &x509_parser::x509::AttributeTypeAndValue<'_>> + '_>,
         want: &str|
         -> bool {
            matches!((it.next(), it.next()), (Some(a), None) if a.as_str().ok() == Some(want))
        };
    if only(Box::new(subject.iter_common_name()), want.node_id)
        && only(Box::new(subject.iter_organizational_unit()), want.role.ou())
        && only(Box::new(subject.iter_organization()), want.cluster_id)
    {
        Ok(())
    } else {
        Err(wrong())
    }
}

fn check_sans(cert: &X509Certificate<'_>, hosts: &[String]) -> Result<(), CertCheckError> {
    let found: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .map(|n| match n {
                GeneralName::DNSName(d) => d.to_string(),
                other => format!("{other:?}"),
            })
            .collect(),
        Ok(None) => Vec::new(),
        Err(_) => return Err(CertCheckError::Malformed),
    };
    let mut a = found.clone();
    let mut b = hosts.to_vec();
    a.sort();
    b.sort();
    if a == b {
        Ok(())
    } else {
        Err(CertCheckError::WrongSans {
            found: found.join(", "),
        })
    }
}

fn check_usage(cert: &X509Certificate<'_>) -> Result<(), CertCheckError> {
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => return Err(CertCheckError::IsCa),
        Ok(_) => {}
        Err(_) => return Err(CertCheckError::Malformed),
    }
    match cert.extended_key_usage() {
        Ok(Some(eku)) if eku.value.server_auth && eku.value.client_auth => Ok(()),
        Ok(_) => Err(CertCheckError::MissingEku),
        Err(_) => Err(CertCheckError::Malformed),
    }
}

fn check_validity(
    root: &RootCa,
    cert: &X509Certificate<'_>,
    expiry: StdDuration,
) -> Result<OffsetDateTime, CertCheckError> {
    let now = OffsetDateTime::now_utc();
    let not_before = cert.validity().not_before.to_datetime();
    let not_after = cert.validity().not_after.to_datetime();
    if not_before > now + SKEW || not_after <= now {
        return Err(CertCheckError::NotValidNow);
    }
    let expiry = Duration::try_from(expiry).unwrap_or(Duration::MAX);
    let limit = now.checked_add(expiry).map(|t| t + SKEW);
    if limit.is_some_and(|l| not_after > l) || not_after > root.not_after {
        return Err(CertCheckError::TooLong {
            not_after: not_after.to_string(),
        });
    }
    Ok(not_after)
}

/// The serial as 20 bytes, left-padded (cfssl drops leading zero bytes).
fn serial_of(raw: &[u8]) -> [u8; 20] {
    let raw = &raw[raw.len().saturating_sub(20)..];
    let mut out = [0u8; 20];
    out[20 - raw.len()..].copy_from_slice(raw);
    out
}
