//! Intake of certificate signing requests from the untrusted network.
//!
//! The CSR is only a proof of possession for a public key. Like SwarmKit's
//! `CSRWhitelist`, we take the public key from it and nothing else: subject,
//! SANs and requested extensions are ignored; the CA decides those.
//! We deliberately do not use rcgen's CSR parser here: it copies requested
//! extensions and rejects unknown ones.

use rustls_pki_types::pem::SectionKind;
use x509_parser::certification_request::X509CertificationRequest;
use x509_parser::oid_registry::{
    Oid, OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_NIST_EC_P384, OID_NIST_EC_P521,
    OID_PKCS1_RSAENCRYPTION, OID_PKCS1_SHA256WITHRSA, OID_PKCS1_SHA384WITHRSA,
    OID_PKCS1_SHA512WITHRSA, OID_SIG_ECDSA_WITH_SHA256, OID_SIG_ECDSA_WITH_SHA384, OID_SIG_ED25519,
    OID_SIG_ED448,
};
use x509_parser::prelude::FromDer;
use x509_parser::public_key::PublicKey;

use crate::error::CsrError;
use crate::pem::{self, Single};

/// Largest CSR PEM we look at. A 8192-bit RSA CSR is about 2.5 KiB of PEM;
/// 16 KiB leaves room for attributes without letting a peer make us parse
/// megabytes.
pub const MAX_CSR_PEM_LEN: usize = 16 * 1024;

/// A CSR from the network that passed every check (size, PEM framing, key type, signature).
///
/// Only [`check_csr`] makes one, and issuance takes only this type, so a CSR is verified
/// exactly once however many layers it passes through (the signature check is the costly part
/// of a join after the TLS handshake). Cloning copies the checked key, not the check.
#[derive(Clone)]
pub struct CheckedCsr {
    /// Ready for rcgen to embed in a certificate.
    pub(crate) spki: rcgen::SubjectPublicKeyInfo,
    /// Subject key identifier: SHA-1 of the public key bits, as cfssl computes it.
    pub(crate) ski: Vec<u8>,
}

impl std::fmt::Debug for CheckedCsr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CheckedCsr").finish_non_exhaustive()
    }
}

/// Checks a PEM CSR and keeps its public key, or says precisely why not.
///
/// Order matters: the key type is checked before the signature, so a weak or
/// unsupported key gets an error that names the key rather than a confusing
/// "bad signature" from a verifier that does not support it.
pub fn check_csr(csr_pem: &[u8]) -> Result<CheckedCsr, CsrError> {
    if csr_pem.len() > MAX_CSR_PEM_LEN {
        return Err(CsrError::TooLarge {
            len: csr_pem.len(),
            max: MAX_CSR_PEM_LEN,
        });
    }
    let der = match pem::single_block(csr_pem, SectionKind::Csr) {
        Single::Found(der) => der,
        Single::None => return Err(CsrError::NotPem),
        Single::Many(count) => return Err(CsrError::MultiplePemBlocks { count }),
        Single::WrongLabel(found) => return Err(CsrError::WrongPemLabel { found }),
        Single::Broken => return Err(CsrError::BadPem),
    };
    let (rest, csr) = X509CertificationRequest::from_der(&der).map_err(|_| CsrError::Malformed)?;
    if !rest.is_empty() {
        return Err(CsrError::Malformed);
    }
    let info = &csr.certification_request_info;
    let pki = &info.subject_pki;

    check_key(pki)?;
    check_signature_algorithm(&csr.signature_algorithm.algorithm)?;
    check_outer_der(&der, info.raw)?;
    csr.verify_signature().map_err(|_| CsrError::BadSignature)?;

    let spki =
        rcgen::SubjectPublicKeyInfo::from_der(pki.raw).map_err(|_| CsrError::UnsupportedKey {
            found: "a public key in this encoding".into(),
        })?;
    // rcgen re-encodes the key from (algorithm, bits); insist that gives back
    // exactly the bytes that were signed, so we certify what was proven.
    if rcgen::PublicKeyData::subject_public_key_info(&spki) != pki.raw {
        return Err(CsrError::UnsupportedKey {
            found: "a non-canonically encoded public key".into(),
        });
    }
    Ok(CheckedCsr {
        spki,
        ski: crate::root::key_id(&pki.subject_public_key.data),
    })
}

fn check_key(pki: &x509_parser::x509::SubjectPublicKeyInfo<'_>) -> Result<(), CsrError> {
    let alg = &pki.algorithm.algorithm;
    if *alg == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = pki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        return match curve {
            Some(c) if c == OID_EC_P256 || c == OID_NIST_EC_P384 => Ok(()),
            Some(c) if c == OID_NIST_EC_P521 => Err(unsupported("ECDSA P-521 key")),
            Some(c) => Err(unsupported(&format!("ECDSA key on curve {c}"))),
            None => Err(unsupported("ECDSA key without a named curve")),
        };
    }
    if *alg == OID_PKCS1_RSAENCRYPTION {
        let bits = match pki.parsed() {
            Ok(PublicKey::RSA(rsa)) => rsa_bits(rsa.modulus),
            _ => return Err(CsrError::Malformed),
        };
        return if (2048..=8192).contains(&bits) {
            Ok(())
        } else {
            Err(CsrError::RsaKeySize { bits })
        };
    }
    let name = if *alg == OID_SIG_ED25519 {
        "Ed25519 key".to_string()
    } else if *alg == OID_SIG_ED448 {
        "Ed448 key".to_string()
    } else {
        format!("public key algorithm {alg}")
    };
    Err(unsupported(&name))
}

fn unsupported(found: &str) -> CsrError {
    CsrError::UnsupportedKey {
        found: found.to_string(),
    }
}

/// Modulus size in bits, ignoring DER's leading zero byte(s).
fn rsa_bits(modulus: &[u8]) -> usize {
    let m = match modulus.iter().position(|&b| b != 0) {
        Some(i) => &modulus[i..],
        None => return 0,
    };
    m.len() * 8 - m[0].leading_zeros() as usize
}

/// SwarmKit accepts SHA-256/384/512 with RSA or ECDSA. ECDSA with SHA-512 is
/// left out only because our verifier (ring via x509-parser) lacks it.
fn check_signature_algorithm(oid: &Oid<'_>) -> Result<(), CsrError> {
    let allowed = [
        OID_PKCS1_SHA256WITHRSA,
        OID_PKCS1_SHA384WITHRSA,
        OID_PKCS1_SHA512WITHRSA,
        OID_SIG_ECDSA_WITH_SHA256,
        OID_SIG_ECDSA_WITH_SHA384,
    ];
    if allowed.contains(oid) {
        Ok(())
    } else {
        Err(CsrError::UnsupportedSignatureAlgorithm {
            oid: oid.to_id_string(),
        })
    }
}

/// Exact DER of the AlgorithmIdentifiers we accept. The RSA ones may carry a
/// NULL parameter or none (RFC 4055 §5 says both must be accepted).
const ALLOWED_SIG_ALG_DER: [&[u8]; 8] = [
    // ecdsa-with-SHA256, ecdsa-with-SHA384
    &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x02,
    ],
    &[
        0x30, 0x0a, 0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x04, 0x03, 0x03,
    ],
    // sha256/384/512WithRSAEncryption with NULL
    &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b, 0x05, 0x00,
    ],
    &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c, 0x05, 0x00,
    ],
    &[
        0x30, 0x0d, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d, 0x05, 0x00,
    ],
    // … and without
    &[
        0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0b,
    ],
    &[
        0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0c,
    ],
    &[
        0x30, 0x0b, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0d,
    ],
];

/// x509-parser is lenient about the unsigned outer layer (it accepts, for
/// example, a BIT STRING tag with the wrong class). That cannot get a key
/// certified that the sender does not hold, but a CA should not accept
/// malleable, non-DER input, so re-check the outer layer byte for byte:
/// `SEQUENCE { info, AlgorithmIdentifier (exact bytes), BIT STRING (0 unused bits) }`.
fn check_outer_der(der: &[u8], info_raw: &[u8]) -> Result<(), CsrError> {
    let malformed = CsrError::Malformed;
    let (tag, body, rest) = der_tlv(der).ok_or(malformed.clone())?;
    if tag != 0x30 || !rest.is_empty() {
        return Err(malformed);
    }
    let after_info = body.strip_prefix(info_raw).ok_or(malformed.clone())?;
    let (tag, _, after_alg) = der_tlv(after_info).ok_or(malformed.clone())?;
    let alg = &after_info[..after_info.len() - after_alg.len()];
    if tag != 0x30 || !ALLOWED_SIG_ALG_DER.contains(&alg) {
        return Err(malformed);
    }
    match der_tlv(after_alg) {
        Some((0x03, [0x00, ..], [])) => Ok(()),
        _ => Err(malformed),
    }
}

/// Splits one DER TLV with a single-byte tag and a minimally encoded length
/// of at most two length bytes (our input is at most 16 KiB).
/// Returns (tag, contents, rest).
fn der_tlv(input: &[u8]) -> Option<(u8, &[u8], &[u8])> {
    let (&tag, rest) = input.split_first()?;
    let (&first, rest) = rest.split_first()?;
    let (len, rest) = match first {
        0..=0x7f => (usize::from(first), rest),
        0x81 => {
            let (&b, rest) = rest.split_first()?;
            if b < 0x80 {
                return None;
            }
            (usize::from(b), rest)
        }
        0x82 => {
            let (hi, rest) = rest.split_first()?;
            let (lo, rest) = rest.split_first()?;
            let len = usize::from(*hi) << 8 | usize::from(*lo);
            if len < 0x100 {
                return None;
            }
            (len, rest)
        }
        _ => return None,
    };
    if rest.len() < len {
        return None;
    }
    Some((tag, &rest[..len], &rest[len..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn der_tlv_is_strict() {
        assert_eq!(
            der_tlv(&[0x04, 0x01, 0xaa, 0xbb]),
            Some((0x04, &[0xaa][..], &[0xbb][..]))
        );
        assert_eq!(der_tlv(&[0x04, 0x81, 0x05]), None, "non-minimal long form");
        assert_eq!(
            der_tlv(&[0x04, 0x82, 0x00, 0x80]),
            None,
            "non-minimal long form"
        );
        assert_eq!(der_tlv(&[0x04, 0x80]), None, "indefinite length");
        assert_eq!(der_tlv(&[0x04, 0x02, 0x00]), None, "short");
        let mut long = vec![0x04, 0x82, 0x01, 0x00];
        long.extend(std::iter::repeat_n(7u8, 256));
        assert_eq!(der_tlv(&long).map(|t| t.1.len()), Some(256));
    }

    #[test]
    fn rsa_bit_counting() {
        assert_eq!(rsa_bits(&[0x00, 0x80, 0, 0]), 24);
        assert_eq!(rsa_bits(&[0x7f, 0, 0]), 23);
        assert_eq!(rsa_bits(&[0, 0, 1]), 1);
        assert_eq!(rsa_bits(&[]), 0);
        let mut m = vec![0u8; 257];
        m[1] = 0xc0;
        assert_eq!(rsa_bits(&m), 2048);
    }
}
