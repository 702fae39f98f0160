//! A client for cfssl's signing API, as an external CA for the cluster.
//!
//! Endpoints are tried in order, each bounded as a whole (connect, TLS handshake, request and
//! response) by the configured timeout (SwarmKit's 5 s), on kept-alive connections (bounded per
//! CA); every certificate cfssl returns is checked with [`crate::check_issued_certificate`]
//! before it is handed out.

mod auth;
mod http;
mod pool;
mod wire;

use std::sync::Arc;
use std::time::Duration;

use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

pub use auth::AuthKey;
pub use http::MAX_RESPONSE;

use crate::issued::{check_issued_certificate, node_hosts, Expected};
use crate::node::IssuedCertificate;
use crate::root::RootCa;
use http::Endpoint;
use pool::Pool;
use wire::Answer;

/// SwarmKit's `ExternalRequestTimeout`.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);

/// Why an external CA did not sign.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum CfsslError {
    /// The configured URL cannot be used.
    #[error("external CA URL {url:?} is not usable: {why}")]
    BadUrl {
        /// The URL.
        url: String,
        /// Why.
        why: &'static str,
    },
    /// Connection, TLS or HTTP failure: worth retrying.
    #[error("cannot reach the external CA at {url}: {why}")]
    Unreachable {
        /// The URL.
        url: String,
        /// Why.
        why: String,
    },
    /// No answer within the timeout.
    #[error("the external CA at {url} did not answer within {secs} s")]
    Timeout {
        /// The URL.
        url: String,
        /// The timeout.
        secs: u64,
    },
    /// Not a cfssl answer, or a server error: worth retrying.
    #[error("the external CA at {url} answered HTTP {status}: {why}")]
    BadResponse {
        /// The URL.
        url: String,
        /// HTTP status.
        status: u16,
        /// What was wrong, with cfssl's text if any.
        why: String,
    },
    /// cfssl said `success:false`: the request is refused for good.
    #[error("the external CA at {url} refused the request: {message}")]
    Refused {
        /// The URL.
        url: String,
        /// cfssl's error text.
        message: String,
    },
    /// cfssl signed something the cluster did not ask for.
    #[error("the external CA at {url} returned a certificate that was refused: {why}")]
    BadCertificate {
        /// The URL.
        url: String,
        /// The check that failed.
        why: crate::error::CertCheckError,
    },
    /// The authsign key could not be loaded.
    #[error("external CA auth key: {0}")]
    AuthKey(String),
    /// The TLS client configuration could not be built.
    #[error("external CA TLS configuration: {0}")]
    Tls(String),
    /// No endpoint configured.
    #[error("no external CA is configured")]
    NoEndpoint,
}

impl CfsslError {
    /// Whether trying again later may succeed (the certificate stays pending).
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            CfsslError::Unreachable { .. }
                | CfsslError::Timeout { .. }
                | CfsslError::BadResponse { .. }
                | CfsslError::NoEndpoint
        )
    }
}

/// One external CA: where, how to authenticate, what its https certificate chains to.
pub struct CaSettings {
    /// The signing URL (`…/api/v1/cfssl/sign`, or `…/authsign` with a key).
    pub url: String,
    /// With a key, every request goes as `authsign`.
    pub auth_key: Option<AuthKey>,
    /// PEM certificates its https certificate may chain to, besides the shared ones.
    pub extra_trust_pem: Vec<u8>,
}

/// What a [`CfsslClient`] is built from.
pub struct CfsslSettings {
    /// The external CAs, tried in this order.
    pub cas: Vec<CaSettings>,
    /// PEM certificates that every https endpoint may chain to (the cluster root).
    pub trust_pem: Vec<u8>,
    /// This manager's certificate chain and key (PEM), presented as a TLS client certificate.
    pub client_identity: Option<(Vec<u8>, zeroize::Zeroizing<Vec<u8>>)>,
    /// Per-endpoint bound on one whole exchange.
    pub timeout: Duration,
}

struct Ca {
    endpoint: Endpoint,
    auth_key: Option<AuthKey>,
    tls: Arc<rustls::ClientConfig>,
    /// Kept-alive connections to the sign endpoint (`info` is asked once, on a connection of
    /// its own).
    pool: Pool,
}

/// A cfssl signing client. Cheap to share behind an `Arc`.
pub struct CfsslClient {
    cas: Vec<Ca>,
    timeout: Duration,
}

impl std::fmt::Debug for CfsslClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let urls: Vec<(&str, bool)> = self
            .cas
            .iter()
            .map(|c| (c.endpoint.url.as_str(), c.auth_key.is_some()))
            .collect();
        f.debug_struct("CfsslClient").field("urls", &urls).finish()
    }
}

impl CfsslClient {
    /// Checks every URL and builds each TLS client configuration.
    pub fn new(settings: CfsslSettings) -> Result<CfsslClient, CfsslError> {
        if settings.cas.is_empty() {
            return Err(CfsslError::NoEndpoint);
        }
        let mut cas = Vec::with_capacity(settings.cas.len());
        for ca in settings.cas {
            let endpoint = Endpoint::parse(&ca.url).map_err(|why| CfsslError::BadUrl {
                // A URL with credentials is never echoed.
                url: if ca.url.contains('@') {
                    "<URL with credentials>".into()
                } else {
                    ca.url.clone()
                },
                why,
            })?;
            let mut trust = settings.trust_pem.clone();
            trust.push(b'\n');
            trust.extend_from_slice(&ca.extra_trust_pem);
            let tls = client_config(&trust, settings.client_identity.as_ref())?;
            cas.push(Ca {
                endpoint,
                auth_key: ca.auth_key,
                tls: Arc::new(tls),
                pool: Pool::default(),
            });
        }
        Ok(CfsslClient {
            cas,
            timeout: settings.timeout,
        })
    }

    /// The endpoints that are plain http (to loopback), for the caller's warning.
    pub fn plain_http_urls(&self) -> Vec<&str> {
        self.cas
            .iter()
            .filter(|c| !c.endpoint.https)
            .map(|c| c.endpoint.url.as_str())
            .collect()
    }

    /// Asks each endpoint in order to sign `csr_pem` for `want`; the first checked certificate
    /// wins. Otherwise: the first refusal (`success:false` or a refused certificate) if any
    /// endpoint gave one, else the last retryable failure.
    pub async fn sign(
        &self,
        root: &RootCa,
        csr_pem: &[u8],
        want: &Expected<'_>,
    ) -> Result<IssuedCertificate, CfsslError> {
        let csr = std::str::from_utf8(csr_pem).map_err(|_| CfsslError::BadResponse {
            url: String::new(),
            status: 0,
            why: "the CSR is not text".into(),
        })?;
        let hosts = node_hosts(want.node_id, want.role);
        let request = wire::sign_body(&hosts, csr, want.node_id, want.cluster_id, want.role.ou());
        let mut refusal = None;
        let mut last = CfsslError::NoEndpoint;
        for ca in &self.cas {
            let ep = &ca.endpoint;
            let body = match &ca.auth_key {
                Some(key) => wire::authsign_body(key, &request),
                None => request.clone(),
            };
            let outcome = match self.call(&ca.pool, ca, ep, body).await {
                Ok(pem) => check_issued_certificate(root, &pem, want).map_err(|why| {
                    CfsslError::BadCertificate {
                        url: ep.url.clone(),
                        why,
                    }
                }),
                Err(e) => Err(e),
            };
            match outcome {
                Ok(issued) => return Ok(issued),
                Err(e) if e.is_retryable() => last = e,
                Err(e) => {
                    refusal.get_or_insert(e);
                }
            }
        }
        Err(refusal.unwrap_or(last))
    }

    /// The CA certificate (PEM) from the first endpoint whose `info` answers.
    pub async fn ca_certificate(&self) -> Result<Vec<u8>, CfsslError> {
        let mut last = CfsslError::NoEndpoint;
        for ca in &self.cas {
            let Some(info) = ca.endpoint.info() else {
                last = CfsslError::BadUrl {
                    url: ca.endpoint.url.clone(),
                    why: "the path does not end in /sign or /authsign, so its info endpoint is unknown; give cacert=",
                };
                continue;
            };
            match self
                .call(&Pool::default(), ca, &info, wire::info_body())
                .await
            {
                Ok(pem) => return Ok(pem),
                Err(e) => last = e,
            }
        }
        Err(last)
    }

    /// One bounded exchange; the PEM of `result.certificate` on success.
    async fn call(
        &self,
        pool: &Pool,
        ca: &Ca,
        ep: &Endpoint,
        body: Vec<u8>,
    ) -> Result<Vec<u8>, CfsslError> {
        let exchange = pool.post(ep, &ca.tls, body);
        let (status, body) = match tokio::time::timeout(self.timeout, exchange).await {
            Err(_) => {
                return Err(CfsslError::Timeout {
                    url: ep.url.clone(),
                    secs: self.timeout.as_secs().max(1),
                })
            }
            Ok(Err(why)) => {
                return Err(CfsslError::Unreachable {
                    url: ep.url.clone(),
                    why,
                })
            }
            Ok(Ok(answer)) => answer,
        };
        match (status, wire::parse_answer(&body)) {
            (200, Answer::Certificate(pem)) => Ok(pem),
            // cfssl reports a client's mistake (bad CSR, bad auth token, policy) as 4xx with
            // `success:false`; that will not get better by asking again.
            (200 | 400..=499, Answer::Refused(message)) => Err(CfsslError::Refused {
                url: ep.url.clone(),
                message,
            }),
            (_, Answer::Refused(why)) | (_, Answer::Garbage(why)) => Err(CfsslError::BadResponse {
                url: ep.url.clone(),
                status,
                why,
            }),
            (_, Answer::Certificate(_)) => Err(CfsslError::BadResponse {
                url: ep.url.clone(),
                status,
                why: "a certificate with a non-200 status".into(),
            }),
        }
    }
}

fn client_config(
    trust_pem: &[u8],
    identity: Option<&(Vec<u8>, zeroize::Zeroizing<Vec<u8>>)>,
) -> Result<rustls::ClientConfig, CfsslError> {
    let tls = |e: &dyn std::fmt::Display| CfsslError::Tls(e.to_string());
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(trust_pem) {
        let cert = cert.map_err(|e| tls(&e))?;
        roots.add(cert).map_err(|e| tls(&e))?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| tls(&e))?
        .with_root_certificates(roots);
    match identity {
        Some((cert_pem, key_pem)) => {
            let chain = CertificateDer::pem_slice_iter(cert_pem)
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| tls(&e))?;
            let key = PrivateKeyDer::from_pem_slice(key_pem).map_err(|e| tls(&e))?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| tls(&e))
        }
        None => Ok(builder.with_no_client_auth()),
    }
}
