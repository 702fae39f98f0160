//! The one TLS stack's shared pieces: the ring provider with dockerd's suite order, PEM
//! parsing, the cluster port's server configuration, and key/certificate matching.
//!
//! A leaf module: the cluster port (server), the agent (client) and the control layer's
//! security material all build on it, and it imports none of them.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("no certificate in {0}")]
    NoCertificate(&'static str),
    #[error("unreadable PEM in {0}")]
    BadPem(&'static str),
    #[error("no private key in the node key file")]
    NoKey,
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("client verifier: {0}")]
    Verifier(String),
}

pub fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut p = rustls::crypto::ring::default_provider();
    // AES-128-GCM with SHA-256 first, as Go's crypto/tls (dockerd) offers: the same strength
    // class SwarmKit negotiates, and its SHA-256 key schedule costs less per handshake than
    // SHA-384's. The server follows the client's order.
    p.cipher_suites
        .sort_by_key(|s| s.suite() != rustls::CipherSuite::TLS13_AES_128_GCM_SHA256);
    Arc::new(p)
}

/// Certificates of a PEM bundle, in order.
pub fn certs_from_pem(
    pem: &[u8],
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|_| TlsError::BadPem(what))?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate(what));
    }
    Ok(certs)
}

pub fn roots_from_pem(root_pem: &[u8]) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    for c in certs_from_pem(root_pem, "the root CA bundle")? {
        roots.add(c)?;
    }
    Ok(roots)
}

pub fn key_from_pem(key_pem: &[u8]) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_slice(key_pem).map_err(|_| TlsError::NoKey)
}

/// The server side: node certificate (chain) and key, client certificates from `root_pem`
/// verified when offered, ALPN h2, TLS 1.2 and 1.3.
pub fn server_config(
    root_pem: &[u8],
    cert_pem: &[u8],
    key_pem: &[u8],
) -> Result<Arc<ServerConfig>, TlsError> {
    let provider = provider();
    let roots = Arc::new(roots_from_pem(root_pem)?);
    let verifier = WebPkiClientVerifier::builder_with_provider(roots, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| TlsError::Verifier(e.to_string()))?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            certs_from_pem(cert_pem, "the node certificate")?,
            key_from_pem(key_pem)?,
        )?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(Arc::new(config))
}

/// Whether `key_pem` is the private key of the first certificate in `cert_pem`.
pub fn key_matches_certificate(cert_pem: &[u8], key_pem: &[u8]) -> bool {
    let (Ok(certs), Ok(key)) = (
        certs_from_pem(cert_pem, "the node certificate"),
        key_from_pem(key_pem),
    ) else {
        return false;
    };
    // from_der refuses a key whose public half differs from the certificate's.
    rustls::sign::CertifiedKey::from_der(certs, key, &provider()).is_ok()
}
