//! Client TLS for the cluster port, and a tonic channel over it (one TLS stack: rustls + ring).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tonic::transport::{Channel, Endpoint};

use super::AgentError;
use crate::tls::{certs_from_pem, key_from_pem, provider, roots_from_pem};

/// The root download's verifier: the server certificate is not checked here because the join
/// token's digest of the downloaded root replaces that check (SwarmKit's InsecureSkipVerify);
/// handshake signatures are still verified.
#[derive(Debug)]
struct DigestChecksLater(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for DigestChecksLater {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

fn builder() -> Result<rustls::ConfigBuilder<ClientConfig, rustls::WantsVerifier>, AgentError> {
    ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])
        .map_err(|e| AgentError::Tls(e.to_string()))
}

fn finish(mut c: ClientConfig) -> Arc<ClientConfig> {
    c.alpn_protocols = vec![b"h2".to_vec()];
    Arc::new(c)
}

/// For `CA.GetRootCACertificate` during a join.
pub fn unverified() -> Result<Arc<ClientConfig>, AgentError> {
    Ok(finish(
        builder()?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(DigestChecksLater(provider())))
            .with_no_client_auth(),
    ))
}

/// Server verified against `root_pem`; a client certificate when `identity` is given.
pub fn verified(
    root_pem: &[u8],
    identity: Option<(&[u8], &[u8])>,
) -> Result<Arc<ClientConfig>, AgentError> {
    let roots = roots_from_pem(root_pem).map_err(|e| AgentError::Tls(e.to_string()))?;
    let b = builder()?.with_root_certificates(roots);
    let c = match identity {
        None => b.with_no_client_auth(),
        Some((cert, key)) => b
            .with_client_auth_cert(
                certs_from_pem(cert, "the node certificate")
                    .map_err(|e| AgentError::Tls(e.to_string()))?,
                key_from_pem(key).map_err(|e| AgentError::Tls(e.to_string()))?,
            )
            .map_err(|e| AgentError::Tls(e.to_string()))?,
    };
    Ok(finish(c))
}

/// One TLS connection to `addr` (SNI `server_name`) as a gRPC channel. The handshake happens
/// here, so a refused handshake is an error of this call.
pub async fn channel(
    addr: SocketAddr,
    config: Arc<ClientConfig>,
    server_name: &'static str,
) -> Result<Channel, AgentError> {
    channel_from(addr, None, config, server_name).await
}

/// [`channel`] from a chosen local address (the join storm plays many nodes, each from an
/// address of its own, as the manager's per-address connection caps expect of real nodes).
pub async fn channel_from(
    addr: SocketAddr,
    local: Option<std::net::IpAddr>,
    config: Arc<ClientConfig>,
    server_name: &'static str,
) -> Result<Channel, AgentError> {
    let connector = TlsConnector::from(config);
    let name = ServerName::try_from(server_name).map_err(|e| AgentError::Tls(e.to_string()))?;
    let connect = async {
        match local {
            None => TcpStream::connect(addr).await,
            Some(ip) => {
                let socket = if ip.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                socket.bind(SocketAddr::new(ip, 0))?;
                socket.connect(addr).await
            }
        }
    };
    let tcp = tokio::time::timeout(Duration::from_secs(5), connect)
        .await
        .map_err(|_| AgentError::Connect(format!("{addr}: connect timed out")))?
        .map_err(|e| AgentError::Connect(format!("{addr}: {e}")))?;
    let _ = tcp.set_nodelay(true);
    let tls = tokio::time::timeout(Duration::from_secs(5), connector.connect(name, tcp))
        .await
        .map_err(|_| AgentError::Tls(format!("{addr}: TLS handshake timed out")))?
        .map_err(|e| AgentError::Tls(format!("{addr}: {e}")))?;
    let mut slot = Some(TokioIo::new(tls));
    let endpoint = Endpoint::from_static("http://swarm.invalid")
        .timeout(Duration::from_secs(30))
        .connect_timeout(Duration::from_secs(5));
    endpoint
        .connect_with_connector(tower::service_fn(move |_| {
            let io = slot.take();
            async move {
                io.ok_or_else(|| {
                    std::io::Error::new(
                        std::io::ErrorKind::NotConnected,
                        "the TLS connection was already used; dial again",
                    )
                })
            }
        }))
        .await
        .map_err(|e| AgentError::Connect(format!("{addr}: {e}")))
}
