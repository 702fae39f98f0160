//! The cluster root CA, built like SwarmKit's `CreateRootCA` (cfssl `initca`).

use std::fmt;
use std::time::SystemTime;

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, DnValue, IsCa, Issuer,
    KeyIdMethod, KeyUsagePurpose, SerialNumber,
};
use ring::digest;
use rustls_pki_types::pem::SectionKind;
use time::{Duration, OffsetDateTime};
use x509_parser::certificate::X509Certificate;
use x509_parser::extensions::ParsedExtension;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY};
use x509_parser::prelude::FromDer;
use zeroize::Zeroizing;

use crate::error::CaError;
use crate::pem::{self, Single};
use crate::signer::P256Key;

/// SwarmKit's `DefaultRootCN`.
pub const ROOT_CN: &str = "swarm-ca";
/// SwarmKit's `RootCAExpiration` (630720000 s, i.e. 7300 days).
const ROOT_VALIDITY: Duration = Duration::seconds(630_720_000);
/// cfssl backdates new roots by 5 minutes to absorb clock skew.
const ROOT_BACKDATE: Duration = Duration::minutes(5);

/// The cluster root CA: certificate plus signing key.
///
/// The private key is held only as zeroizing PKCS#8 bytes and inside ring;
/// `Debug` never prints it.
pub struct RootCa {
    pub(crate) cert_pem: Vec<u8>,
    pub(crate) cert_der: Vec<u8>,
    pub(crate) subject_der: Vec<u8>,
    pub(crate) spki_der: Vec<u8>,
    pub(crate) not_after: OffsetDateTime,
    pub(crate) digest: [u8; 32],
    /// `None` for a root whose key lives elsewhere (an external CA): trust only.
    pub(crate) issuer: Option<Issuer<'static, P256Key>>,
}

impl RootCa {
    /// Creates a new self-signed root: ECDSA P-256, subject `CN=swarm-ca`
    /// (PrintableString, as Go writes it), 20 years, backdated 5 minutes,
    /// critical KeyUsage certSign+cRLSign, critical CA:TRUE without path
    /// length, SKI, random 20-byte serial.
    pub fn create() -> Result<RootCa, CaError> {
        let key = P256Key::generate()?;
        let not_before = round_to_minute(OffsetDateTime::now_utc()) - ROOT_BACKDATE;
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, printable(ROOT_CN)?);

        let mut params = CertificateParams::default();
        params.distinguished_name = dn;
        params.not_before = not_before;
        params.not_after = not_before + ROOT_VALIDITY;
        params.serial_number = Some(SerialNumber::from_slice(&crate::rand::serial()?));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method = KeyIdMethod::PreSpecified(key_id(key.public_point()));

        let cert = params.self_signed(&key).map_err(signing)?;
        let der = cert.der().to_vec();
        let pem = pem::encode("CERTIFICATE", &der).to_vec();
        // Re-derive everything from the DER so created and imported roots go
        // through the same checks.
        Self::assemble(pem, der, key)
    }

    /// Loads an existing root. `cert_pem` must be exactly one PEM certificate
    /// and is kept byte for byte, because its SHA-256 is what join tokens pin.
    /// `key` is an unencrypted PKCS#8 P-256 key, PEM (`PRIVATE KEY`) or DER.
    ///
    /// Checks: self-signed and currently valid, CA:TRUE, has an SKI, P-256
    /// key, and the key matches the certificate.
    pub fn from_pem(cert_pem: &[u8], key: &[u8]) -> Result<RootCa, CaError> {
        let der = match pem::single_block(cert_pem, SectionKind::Certificate) {
            Single::Found(der) => der.to_vec(),
            _ => {
                return Err(CaError::BadRootCertificate(
                    "expected exactly one PEM CERTIFICATE block",
                ))
            }
        };
        let pkcs8 = if pem::begin_labels(key).is_empty() {
            Zeroizing::new(key.to_vec())
        } else {
            match pem::single_block(key, SectionKind::PrivateKey) {
                Single::Found(der) => der,
                Single::WrongLabel(l) if l == "EC PRIVATE KEY" => {
                    return Err(CaError::BadRootKey(
                        "SEC1 \"EC PRIVATE KEY\" is not supported; convert with `openssl pkcs8 -topk8 -nocrypt`",
                    ))
                }
                _ => {
                    return Err(CaError::BadRootKey(
                        "expected exactly one unencrypted PEM \"PRIVATE KEY\" (PKCS#8) block",
                    ))
                }
            }
        };
        let key = P256Key::from_pkcs8(pkcs8)?;
        Self::assemble(cert_pem.to_vec(), der, key)
    }

    /// Loads a root whose key this manager never holds (an external CA's certificate): it is
    /// trusted and pinned by tokens, and [`RootCa::issue_node_certificate`] answers
    /// [`CaError::NoRootKey`]. Checks: exactly one PEM certificate, self-signed, CA:TRUE, valid
    /// now. The key may be ECDSA or RSA, as cfssl CAs often are.
    pub fn from_cert_pem(cert_pem: &[u8]) -> Result<RootCa, CaError> {
        let bad = CaError::BadRootCertificate;
        let der = match pem::single_block(cert_pem, SectionKind::Certificate) {
            Single::Found(der) => der.to_vec(),
            _ => return Err(bad("expected exactly one PEM CERTIFICATE block")),
        };
        let (rest, cert) =
            X509Certificate::from_der(&der).map_err(|_| bad("not a valid X.509 certificate"))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after the certificate"));
        }
        check_root_shape(&cert)?;
        Ok(RootCa {
            digest: sha256(cert_pem),
            cert_pem: cert_pem.to_vec(),
            subject_der: cert.tbs_certificate.subject.as_raw().to_vec(),
            spki_der: cert.public_key().raw.to_vec(),
            not_after: cert.validity().not_after.to_datetime(),
            cert_der: der,
            issuer: None,
        })
    }

    /// Whether this manager holds the root's key (an internal CA) or only trusts it.
    pub fn has_key(&self) -> bool {
        self.issuer.is_some()
    }

    fn assemble(cert_pem: Vec<u8>, cert_der: Vec<u8>, key: P256Key) -> Result<RootCa, CaError> {
        let bad = CaError::BadRootCertificate;
        let (rest, cert) = X509Certificate::from_der(&cert_der)
            .map_err(|_| bad("not a valid X.509 certificate"))?;
        if !rest.is_empty() {
            return Err(bad("trailing bytes after the certificate"));
        }
        check_root_shape(&cert)?;
        let has_ski = cert.iter_extensions().any(|e| {
            matches!(
                e.parsed_extension(),
                ParsedExtension::SubjectKeyIdentifier(_)
            )
        });
        if !has_ski {
            return Err(bad("missing SubjectKeyIdentifier extension"));
        }
        let pki = cert.public_key();
        let is_p256 = pki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
            && pki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .is_some_and(|c| c == OID_EC_P256);
        if !is_p256 {
            return Err(bad("only ECDSA P-256 root keys are supported"));
        }
        if pki.subject_public_key.data.as_ref() != key.public_point() {
            return Err(CaError::KeyMismatch);
        }
        let not_after = cert.validity().not_after.to_datetime();
        let subject_der = cert.tbs_certificate.subject.as_raw().to_vec();
        let spki_der = pki.raw.to_vec();
        let issuer = Issuer::from_ca_cert_der(&cert_der.as_slice().into(), key).map_err(|_| {
            bad("subject name cannot be reproduced (multi-valued or repeated attributes)")
        })?;
        let root = RootCa {
            digest: sha256(&cert_pem),
            cert_pem,
            cert_der,
            subject_der,
            spki_der,
            not_after,
            issuer: Some(issuer),
        };
        root.check_issuer_name()?;
        Ok(root)
    }

    /// rcgen rebuilds the issuer name from parsed attributes. Go (and so
    /// SwarmKit nodes) match issuer to root by raw bytes, so prove once that
    /// what we write as issuer is byte-identical to the root's subject.
    fn check_issuer_name(&self) -> Result<(), CaError> {
        let Some(issuer) = &self.issuer else {
            return Ok(());
        };
        let probe = P256Key::generate()?;
        let mut params = CertificateParams::default();
        params.not_before = OffsetDateTime::now_utc();
        params.not_after = params.not_before + Duration::minutes(1);
        params.serial_number = Some(SerialNumber::from_slice(&[1]));
        let cert = params.signed_by(&probe, issuer).map_err(signing)?;
        let (_, parsed) = X509Certificate::from_der(cert.der())
            .map_err(|_| CaError::Signing("probe certificate unreadable".into()))?;
        if parsed.tbs_certificate.issuer.as_raw() != self.subject_der.as_slice() {
            return Err(CaError::BadRootCertificate(
                "subject name cannot be reproduced byte for byte as an issuer name",
            ));
        }
        Ok(())
    }

    /// The exact PEM bytes served to joining nodes and hashed into tokens.
    /// For created roots this ends with a newline; imported roots are kept
    /// byte for byte as given, so existing tokens keep matching.
    pub fn cert_pem(&self) -> &[u8] {
        &self.cert_pem
    }

    /// The certificate in DER.
    pub fn cert_der(&self) -> &[u8] {
        &self.cert_der
    }

    /// A copy of the private key as PKCS#8 DER, to be stored encrypted
    /// (e.g. in the replicated cluster state). Zeroized when dropped.
    /// `None` for a trust-only root ([`RootCa::from_cert_pem`]).
    pub fn key_pkcs8_der(&self) -> Option<Zeroizing<Vec<u8>>> {
        self.issuer
            .as_ref()
            .map(|i| Zeroizing::new(i.key().pkcs8().to_vec()))
    }

    /// SHA-256 of [`RootCa::cert_pem`]: the digest in join tokens.
    pub fn digest(&self) -> [u8; 32] {
        self.digest
    }

    /// DER of the subject name (Docker `TLSInfo.CertIssuerSubject`).
    pub fn subject_der(&self) -> &[u8] {
        &self.subject_der
    }

    /// DER SubjectPublicKeyInfo (Docker `TLSInfo.CertIssuerPublicKey`).
    pub fn spki_der(&self) -> &[u8] {
        &self.spki_der
    }

    /// When the root certificate expires.
    pub fn not_after(&self) -> SystemTime {
        self.not_after.into()
    }
}

impl fmt::Debug for RootCa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let digest: String = self.digest.iter().map(|b| format!("{b:02x}")).collect();
        f.debug_struct("RootCa")
            .field("digest", &digest)
            .field("not_after", &self.not_after)
            .field(
                "key",
                &if self.issuer.is_some() {
                    "[redacted]"
                } else {
                    "none (trust only)"
                },
            )
            .finish()
    }
}

/// What every root must be: a self-signed CA certificate, valid now.
fn check_root_shape(cert: &X509Certificate<'_>) -> Result<(), CaError> {
    let bad = CaError::BadRootCertificate;
    match cert.basic_constraints() {
        Ok(Some(bc)) if bc.value.ca => {}
        _ => return Err(bad("not a CA certificate (needs BasicConstraints CA:TRUE)")),
    }
    if cert.tbs_certificate.issuer.as_raw() != cert.tbs_certificate.subject.as_raw()
        || cert.verify_signature(None).is_err()
    {
        return Err(bad("not self-signed; only root certificates can be loaded"));
    }
    if !cert.validity().is_valid() {
        return Err(bad("expired or not yet valid"));
    }
    Ok(())
}

/// Key identifier as cfssl's `ComputeSKI`: SHA-1 over the public key bits.
/// SHA-1 is fine here: it is an identifier, not a security boundary.
pub(crate) fn key_id(public_key_bits: &[u8]) -> Vec<u8> {
    digest::digest(&digest::SHA1_FOR_LEGACY_USE_ONLY, public_key_bits)
        .as_ref()
        .to_vec()
}

/// Go's `time.Round(time.Minute)`: halfway values round up.
pub(crate) fn round_to_minute(t: OffsetDateTime) -> OffsetDateTime {
    const MINUTE: i128 = 60_000_000_000;
    let ns = t.unix_timestamp_nanos();
    let rem = ns.rem_euclid(MINUTE);
    let rounded = if rem >= MINUTE / 2 {
        ns - rem + MINUTE
    } else {
        ns - rem
    };
    OffsetDateTime::from_unix_timestamp_nanos(rounded).unwrap_or(t)
}

pub(crate) fn printable(s: &str) -> Result<DnValue, CaError> {
    Ok(DnValue::PrintableString(s.try_into().map_err(signing)?))
}

pub(crate) fn signing(e: rcgen::Error) -> CaError {
    CaError::Signing(e.to_string())
}

fn sha256(data: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(digest::digest(&digest::SHA256, data).as_ref());
    out
}

impl RootCa {
    /// Re-signs `new`'s root certificate with this root's key (SwarmKit's
    /// `CrossSignCACertificate`, the first step of a root rotation): same subject, public key,
    /// validity, CA:TRUE and SKI as `new`, issued by this root. A leaf signed by `new`'s key
    /// followed by this certificate verifies against this (old) root, so old and new nodes
    /// trust each other while a rotation converges. Returns the PEM.
    ///
    /// Refused when this root has no key, or when `new`'s subject cannot be reproduced byte for
    /// byte (the cross-signed certificate must carry exactly the new root's name).
    pub fn cross_sign(&self, new: &RootCa) -> Result<Vec<u8>, CaError> {
        let issuer = self.issuer.as_ref().ok_or(CaError::NoRootKey)?;
        let (_, parsed) = X509Certificate::from_der(&new.cert_der)
            .map_err(|_| CaError::BadRootCertificate("not a valid X.509 certificate"))?;
        // Only the new root's public key is needed: a root whose key an external CA holds
        // (moving to cfssl) is cross-signed from its certificate.
        let new_key = CertPublicKey::of(&parsed)?;
        let mut params = CertificateParams::default();
        let mut dn = DistinguishedName::new();
        for attr in parsed.subject().iter_attributes() {
            let value = attr
                .as_str()
                .map_err(|_| CaError::BadRootCertificate("subject attribute is not text"))?;
            let ty = if attr.attr_type() == &x509_parser::oid_registry::OID_X509_COMMON_NAME {
                DnType::CommonName
            } else if attr.attr_type() == &x509_parser::oid_registry::OID_X509_ORGANIZATION_NAME {
                DnType::OrganizationName
            } else {
                return Err(CaError::BadRootCertificate(
                    "only CN and O subjects can be cross-signed",
                ));
            };
            // Keep the string type (Go writes PrintableString, openssl UTF8String): the
            // cross-signed subject must equal the new root's byte for byte.
            let value = if attr.attr_value().header.tag()
                == x509_parser::der_parser::asn1_rs::Tag::Utf8String
            {
                DnValue::Utf8String(value.to_string())
            } else {
                printable(value)?
            };
            dn.push(ty, value);
        }
        params.distinguished_name = dn;
        params.not_before = parsed.validity().not_before.to_datetime();
        params.not_after = new.not_after;
        params.serial_number = Some(SerialNumber::from_slice(&crate::rand::serial()?));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        params.key_identifier_method = KeyIdMethod::PreSpecified(key_id(&new_key.0));
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&new_key, issuer).map_err(signing)?;
        let (_, check) = X509Certificate::from_der(cert.der())
            .map_err(|_| CaError::Signing("cross-signed certificate unreadable".into()))?;
        if check.tbs_certificate.subject.as_raw() != new.subject_der.as_slice()
            || check.public_key().raw != new.spki_der.as_slice()
        {
            return Err(CaError::BadRootCertificate(
                "the new root's subject cannot be reproduced byte for byte",
            ));
        }
        Ok(pem::encode("CERTIFICATE", cert.der()).to_vec())
    }
}

/// A P-256 public key taken from a certificate, for rcgen to put into one it signs.
struct CertPublicKey(Vec<u8>);

impl CertPublicKey {
    fn of(cert: &X509Certificate<'_>) -> Result<CertPublicKey, CaError> {
        let pki = cert.public_key();
        let is_p256 = pki.algorithm.algorithm == OID_KEY_TYPE_EC_PUBLIC_KEY
            && pki
                .algorithm
                .parameters
                .as_ref()
                .and_then(|p| p.as_oid().ok())
                .is_some_and(|c| c == OID_EC_P256);
        if !is_p256 {
            return Err(CaError::BadRootCertificate(
                "only ECDSA P-256 roots can be cross-signed",
            ));
        }
        Ok(CertPublicKey(pki.subject_public_key.data.to_vec()))
    }
}

impl rcgen::PublicKeyData for CertPublicKey {
    fn der_bytes(&self) -> &[u8] {
        &self.0
    }

    fn algorithm(&self) -> &'static rcgen::SignatureAlgorithm {
        &rcgen::PKCS_ECDSA_P256_SHA256
    }
}
