//! `swarmguard agent`: SwarmKit's node side of the join protocol, in Rust.
//!
//! [`join`] downloads the root and checks it against the token's digest, makes a key and CSR,
//! requests a certificate, polls until it is final, checks the CSR echo and the chain, and
//! writes key (0600) and certificate atomically. [`run`] then keeps a Dispatcher session with
//! heartbeats, renews at a random 50–80 % of the certificate's lifetime (or at once on ROTATE
//! or a role change) and reconnects with backoff.

pub mod cli;
pub mod storm;
pub mod tls;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use swarmguard_ca::{JoinToken, NodeRole};
use tokio::sync::watch;
use tonic::Code;
use x509_parser::prelude::{FromDer, X509Certificate};
use zeroize::Zeroizing;

use crate::pb;
use swarmguard_secrets::atomic::{write_atomic, Placement};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("connect: {0}")]
    Connect(String),
    #[error("TLS: {0}")]
    Tls(String),
    #[error("{0}")]
    Token(#[from] swarmguard_ca::TokenError),
    #[error("remote CA does not match fingerprint in the join token")]
    RootMismatch,
    #[error("manager refused: {0}")]
    Rpc(#[from] tonic::Status),
    #[error("certificate issuance failed: {0}")]
    IssuanceFailed(String),
    #[error("the manager's certificate is not acceptable: {0}")]
    BadCertificate(String),
    #[error("no certificate after {0:?}")]
    Timeout(Duration),
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A node's cluster identity.
#[derive(Clone)]
pub struct Credentials {
    pub node_id: String,
    pub role: NodeRole,
    pub cluster_id: String,
    pub root_pem: Vec<u8>,
    pub cert_pem: Vec<u8>,
    pub key_pem: Zeroizing<Vec<u8>>,
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("node_id", &self.node_id)
            .field("role", &self.role)
            .field("cluster_id", &self.cluster_id)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

/// `CA.GetRootCACertificate` over unverified TLS, then the token's digest check over the exact
/// bytes received.
pub async fn download_root(addr: SocketAddr, token: &JoinToken) -> Result<Vec<u8>, AgentError> {
    let ch = tls::channel(addr, tls::unverified()?, "swarm-ca").await?;
    let mut ca = pb::ca_client::CaClient::new(ch);
    let root = ca
        .get_root_ca_certificate(pb::GetRootCaCertificateRequest {})
        .await?
        .into_inner()
        .certificate;
    if !token.matches_root(&root) {
        return Err(AgentError::RootMismatch);
    }
    Ok(root)
}

/// Issue + status with a fresh key: a join when `token` is given, a renewal when `current`
/// credentials are (mTLS, no token).
pub async fn request_certificate(
    addr: SocketAddr,
    root_pem: &[u8],
    token: Option<&str>,
    current: Option<&Credentials>,
) -> Result<Credentials, AgentError> {
    request_certificate_from(addr, None, root_pem, token, current).await
}

/// [`request_certificate`] from a chosen local address (see [`tls::channel_from`]).
pub async fn request_certificate_from(
    addr: SocketAddr,
    local: Option<std::net::IpAddr>,
    root_pem: &[u8],
    token: Option<&str>,
    current: Option<&Credentials>,
) -> Result<Credentials, AgentError> {
    let config = match current {
        Some(c) => tls::verified(root_pem, Some((&c.cert_pem, &c.key_pem)))?,
        None => tls::verified(root_pem, None)?,
    };
    let server_name = if current.is_some() {
        "swarm-manager"
    } else {
        "swarm-ca"
    };
    let ch = tls::channel_from(addr, local, config, server_name).await?;
    let mut ca = pb::node_ca_client::NodeCaClient::new(ch);
    let (key_pem, csr) = swarmguard_ca::generate_node_key_and_csr();
    let issued = ca
        .issue_node_certificate(pb::IssueNodeCertificateRequest {
            role: 0,
            csr: csr.clone(),
            token: token.unwrap_or_default().to_string(),
            availability: 0,
        })
        .await?
        .into_inner();
    let limit = Duration::from_secs(60);
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        let st = ca
            .node_certificate_status(pb::NodeCertificateStatusRequest {
                node_id: issued.node_id.clone(),
            })
            .await?
            .into_inner();
        let state = st.status.as_ref().map(|s| s.state).unwrap_or_default();
        let cert = st.certificate.unwrap_or_default();
        use pb::issuance_status::State;
        if state == State::Failed as i32 {
            return Err(AgentError::IssuanceFailed(
                st.status.map(|s| s.err).unwrap_or_default(),
            ));
        }
        // Accept only a final certificate for exactly the CSR we sent.
        if (state == State::Issued as i32 || state == State::Rotate as i32) && cert.csr == csr {
            return validate(root_pem, &cert.certificate, key_pem, &issued.node_id);
        }
        if tokio::time::Instant::now() > deadline {
            return Err(AgentError::Timeout(limit));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Chain to the root (webpki, as for any TLS server), name = node ID, then the subject.
pub fn validate(
    root_pem: &[u8],
    cert_pem: &[u8],
    key_pem: Zeroizing<Vec<u8>>,
    node_id: &str,
) -> Result<Credentials, AgentError> {
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::{ServerName, UnixTime};
    let bad = |m: String| AgentError::BadCertificate(m);
    let roots = crate::tls::roots_from_pem(root_pem).map_err(|e| bad(e.to_string()))?;
    let certs = crate::tls::certs_from_pem(cert_pem, "the issued certificate")
        .map_err(|e| bad(e.to_string()))?;
    let verifier = rustls::client::WebPkiServerVerifier::builder_with_provider(
        std::sync::Arc::new(roots),
        crate::tls::provider(),
    )
    .build()
    .map_err(|e| bad(e.to_string()))?;
    let name = ServerName::try_from(node_id.to_string()).map_err(|e| bad(e.to_string()))?;
    verifier
        .verify_server_cert(&certs[0], &certs[1..], &name, &[], UnixTime::now())
        .map_err(|e| bad(format!("does not chain to the cluster root: {e}")))?;
    // The subject rules are the CA crate's, the same the manager applies.
    let id =
        swarmguard_ca::read_node_certificate(certs[0].as_ref()).map_err(|e| bad(e.to_string()))?;
    if id.node_id != node_id {
        return Err(bad(format!(
            "subject names CN={} O={}",
            id.node_id, id.cluster_id
        )));
    }
    Ok(Credentials {
        node_id: id.node_id,
        role: id.role,
        cluster_id: id.cluster_id,
        root_pem: root_pem.to_vec(),
        cert_pem: cert_pem.to_vec(),
        key_pem,
        not_before: id.not_before,
        not_after: id.not_after,
    })
}

/// The whole join: root download with digest check, then a certificate for a new node.
pub async fn join(addr: SocketAddr, token: &str) -> Result<Credentials, AgentError> {
    let parsed = JoinToken::parse(token)?;
    // Like SwarmKit, retry the root download a few times: the manager may be starting.
    let mut delay = Duration::from_millis(200);
    let mut attempt = 1;
    let root = loop {
        match download_root(addr, &parsed).await {
            Err(AgentError::Connect(e)) if attempt < 5 => {
                tracing::warn!(error = %e, attempt, "manager not reachable yet; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
            other => break other?,
        }
    };
    request_certificate(addr, &root, Some(token), None).await
}

const ROOT_FILE: &str = "swarm-root-ca.crt";
const CERT_FILE: &str = "swarm-node.crt";
const KEY_FILE: &str = "swarm-node.key";
const STATE_FILE: &str = "agent.json";

/// Writes the identity under `dir/certificates/` (SwarmKit's names): root and certificate 0644,
/// key 0600, each atomically; the key goes before the certificate that names it.
pub fn save(dir: &Path, c: &Credentials, manager: SocketAddr) -> Result<(), AgentError> {
    let certs = dir.join("certificates");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| AgentError::Io { path, source }
    };
    std::fs::create_dir_all(&certs).map_err(io(&certs))?;
    let p = certs.join(ROOT_FILE);
    write_atomic(&p, &c.root_pem, 0o644, Placement::Replace).map_err(io(&p))?;
    let p = certs.join(KEY_FILE);
    write_atomic(&p, &c.key_pem, 0o600, Placement::Replace).map_err(io(&p))?;
    let p = certs.join(CERT_FILE);
    write_atomic(&p, &c.cert_pem, 0o644, Placement::Replace).map_err(io(&p))?;
    let p = dir.join(STATE_FILE);
    let state = serde_json::json!({ "manager": manager.to_string() }).to_string();
    write_atomic(&p, state.as_bytes(), 0o600, Placement::Replace).map_err(io(&p))?;
    Ok(())
}

/// Loads what [`save`] wrote, re-validating the certificate.
pub fn load(dir: &Path) -> Result<(Credentials, SocketAddr), AgentError> {
    let certs = dir.join("certificates");
    let read = |name: &str| {
        let p = certs.join(name);
        std::fs::read(&p).map_err(|source| AgentError::Io { path: p, source })
    };
    let root = read(ROOT_FILE)?;
    let cert = read(CERT_FILE)?;
    let key = Zeroizing::new(read(KEY_FILE)?);
    let p = dir.join(STATE_FILE);
    let state: serde_json::Value = std::fs::read(&p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or_else(|| AgentError::Io {
            path: p.clone(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "unreadable"),
        })?;
    let manager: SocketAddr = state["manager"]
        .as_str()
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| AgentError::Io {
            path: p,
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, "no manager address"),
        })?;
    let node_id = swarmguard_ca::read_node_certificate(&cert)
        .map_err(|e| AgentError::BadCertificate(e.to_string()))?
        .node_id;
    Ok((validate(&root, &cert, key, &node_id)?, manager))
}

/// How a running agent behaves; tests shorten the renewal point.
#[derive(Clone, Debug)]
pub struct RunOptions {
    /// Renew after this long instead of at a random 50–80 % of the lifetime (test hook).
    pub renew_after: Option<Duration>,
    pub description: pb::NodeDescription,
    /// Connect from this local address (the swarm simulation plays many nodes on loopback).
    pub local: Option<std::net::IpAddr>,
}

impl Default for RunOptions {
    fn default() -> Self {
        RunOptions {
            renew_after: None,
            description: pb::NodeDescription {
                hostname: crate::host::hostname(),
                platform: Some(pb::Platform {
                    architecture: std::env::consts::ARCH.into(),
                    os: std::env::consts::OS.into(),
                }),
                resources: Some(pb::Resources {
                    nano_cpus: crate::host::cpus() * 1_000_000_000,
                    memory_bytes: crate::host::memory_bytes(),
                }),
                engine: Some(pb::EngineDescription {
                    engine_version: format!("swarmguard-agent-{}", env!("CARGO_PKG_VERSION")),
                    ..Default::default()
                }),
                tls_info: None,
                fips: false,
            },
            local: None,
        }
    }
}

/// What a running agent reports (for tests and logs).
#[derive(Clone, Debug, Default)]
pub struct AgentState {
    pub session_id: String,
    pub sessions: u64,
    pub renewals: u64,
    pub role: Option<NodeRole>,
    pub cert_not_after: Option<SystemTime>,
}

enum SessionEnd {
    Renew,
    /// The manager sent a root other than ours (a root rotation finished).
    NewRoot(Vec<u8>),
    Lost(AgentError),
    Stop,
}

/// Runs the node: session, heartbeats and renewals, until `stop` turns true. `dir` (if given)
/// receives renewed credentials.
pub async fn run(
    mut creds: Credentials,
    manager: SocketAddr,
    dir: Option<PathBuf>,
    opts: RunOptions,
    state: watch::Sender<AgentState>,
    mut stop: watch::Receiver<bool>,
) -> Result<(), AgentError> {
    let mut backoff = Duration::from_millis(100);
    let mut renew_at = tokio::time::Instant::now()
        + opts
            .renew_after
            .unwrap_or_else(|| swarmguard_ca::renewal_delay(creds.not_before, creds.not_after));
    loop {
        if *stop.borrow() {
            return Ok(());
        }
        let end = session(&creds, manager, &opts, &state, &mut stop, renew_at).await;
        match end {
            SessionEnd::Stop => return Ok(()),
            SessionEnd::Renew => {
                let root = creds.root_pem.clone();
                match request_certificate_from(manager, opts.local, &root, None, Some(&creds)).await
                {
                    Ok(new) => {
                        tracing::info!(node_id = %new.node_id, role = new.role.ou(), "certificate renewed");
                        creds = new;
                        if let Some(d) = &dir {
                            save(d, &creds, manager)?;
                        }
                        state.send_modify(|s| {
                            s.renewals += 1;
                            s.role = Some(creds.role);
                            s.cert_not_after = Some(creds.not_after);
                        });
                        renew_at = tokio::time::Instant::now()
                            + opts.renew_after.unwrap_or_else(|| {
                                swarmguard_ca::renewal_delay(creds.not_before, creds.not_after)
                            });
                        backoff = Duration::from_millis(100);
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "renewal failed; retrying");
                        renew_at = tokio::time::Instant::now() + backoff;
                    }
                }
            }
            SessionEnd::NewRoot(root) => {
                match adopt_root(&creds, root, manager, opts.local).await {
                    Ok(new) => {
                        tracing::info!(node_id = %new.node_id, "now trusting the swarm's new root CA");
                        creds = new;
                        if let Some(d) = &dir {
                            save(d, &creds, manager)?;
                        }
                        continue;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot move to the new root CA; retrying")
                    }
                }
            }
            SessionEnd::Lost(e) => {
                if let AgentError::Rpc(st) = &e {
                    if st.code() == Code::PermissionDenied {
                        return Err(e);
                    }
                }
                tracing::warn!(error = %e, ?backoff, "session lost; reconnecting");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = crate::util::until_true(&mut stop) => return Ok(()),
        }
        backoff = (backoff * 2).min(Duration::from_secs(10));
    }
}

async fn session(
    creds: &Credentials,
    manager: SocketAddr,
    opts: &RunOptions,
    state: &watch::Sender<AgentState>,
    stop: &mut watch::Receiver<bool>,
    renew_at: tokio::time::Instant,
) -> SessionEnd {
    let lost = SessionEnd::Lost;
    let config = match tls::verified(&creds.root_pem, Some((&creds.cert_pem, &creds.key_pem))) {
        Ok(c) => c,
        Err(e) => return lost(e),
    };
    let ch = match tls::channel_from(manager, opts.local, config, "swarm-manager").await {
        Ok(c) => c,
        Err(e) => return lost(e),
    };
    let mut d = pb::dispatcher_client::DispatcherClient::new(ch.clone());
    let mut description = opts.description.clone();
    description.tls_info = Some(tls_info(creds));
    let mut stream = match d
        .session(pb::SessionRequest {
            description: Some(description),
            session_id: String::new(),
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(e) => return lost(e.into()),
    };
    let first = match tokio::time::timeout(Duration::from_secs(5), stream.message()).await {
        Ok(Ok(Some(m))) => m,
        Ok(Ok(None)) => return lost(AgentError::Connect("session closed at once".into())),
        Ok(Err(e)) => return lost(e.into()),
        Err(_) => return lost(AgentError::Connect("session initiation timed out".into())),
    };
    let session_id = first.session_id.clone();
    if needs_renewal(&first, creds) {
        return SessionEnd::Renew;
    }
    if let Some(root) = new_root(&first, creds) {
        return SessionEnd::NewRoot(root);
    }
    state.send_modify(|s| {
        s.session_id = session_id.clone();
        s.sessions += 1;
        s.role = Some(creds.role);
        s.cert_not_after = Some(creds.not_after);
    });
    let mut assignments = match d
        .assignments(pb::AssignmentsRequest {
            session_id: session_id.clone(),
        })
        .await
    {
        Ok(s) => s.into_inner(),
        Err(e) => return lost(e.into()),
    };
    let mut next_hb = tokio::time::Instant::now();
    loop {
        tokio::select! {
            _ = crate::util::until_true(stop) => return SessionEnd::Stop,
            _ = tokio::time::sleep_until(renew_at) => return SessionEnd::Renew,
            _ = tokio::time::sleep_until(next_hb) => {
                match d.heartbeat(pb::HeartbeatRequest { session_id: session_id.clone() }).await {
                    Ok(r) => {
                        let p = r.into_inner().period.unwrap_or_default();
                        let p = Duration::new(p.seconds.max(0) as u64, p.nanos.max(0) as u32)
                            .clamp(Duration::from_millis(100), Duration::from_secs(60));
                        next_hb = tokio::time::Instant::now() + p;
                    }
                    Err(e) => return lost(e.into()),
                }
            }
            m = stream.message() => match m {
                Ok(Some(m)) => {
                    if needs_renewal(&m, creds) {
                        // SwarmKit waits 500 ms before a forced renewal.
                        tokio::time::sleep(Duration::from_millis(500)).await;
                        return SessionEnd::Renew;
                    }
                    if let Some(root) = new_root(&m, creds) {
                        return SessionEnd::NewRoot(root);
                    }
                }
                Ok(None) => return lost(AgentError::Connect("session ended by the manager".into())),
                Err(e) => return lost(e.into()),
            },
            a = assignments.message() => match a {
                Ok(Some(_)) => {}
                Ok(None) => return lost(AgentError::Connect("assignments ended".into())),
                Err(e) => return lost(e.into()),
            },
        }
    }
}

/// ROTATE, or a desired role other than the certificate's.
fn needs_renewal(m: &pb::SessionMessage, creds: &Credentials) -> bool {
    let Some(node) = &m.node else { return false };
    let rotate = node
        .certificate
        .as_ref()
        .and_then(|c| c.status.as_ref())
        .is_some_and(|s| s.state == pb::issuance_status::State::Rotate as i32);
    let desired = node
        .spec
        .as_ref()
        .map(|s| s.desired_role)
        .unwrap_or_default();
    let mine = match creds.role {
        NodeRole::Manager => pb::NodeRole::Manager as i32,
        NodeRole::Worker => pb::NodeRole::Worker as i32,
    };
    rotate || desired != mine || node.role != mine
}

/// The root a SessionMessage carries, when it is a readable bundle other than ours.
fn new_root(m: &pb::SessionMessage, creds: &Credentials) -> Option<Vec<u8>> {
    (!m.root_ca.is_empty()
        && m.root_ca != creds.root_pem
        && crate::tls::roots_from_pem(&m.root_ca).is_ok())
    .then(|| m.root_ca.clone())
}

/// Moves to a new root as a SwarmKit node does: keep the certificate if it verifies against
/// the new root (issued during the rotation), else renew over mTLS trusting both roots for
/// this one call (the manager's chain may still end in the cross-signed root) and require
/// the new certificate to verify against the new root alone.
async fn adopt_root(
    creds: &Credentials,
    root: Vec<u8>,
    manager: SocketAddr,
    local: Option<std::net::IpAddr>,
) -> Result<Credentials, AgentError> {
    if let Ok(kept) = validate(
        &root,
        &creds.cert_pem,
        creds.key_pem.clone(),
        &creds.node_id,
    ) {
        return Ok(kept);
    }
    let mut both = creds.root_pem.clone();
    if !both.ends_with(b"\n") {
        both.push(b'\n');
    }
    both.extend_from_slice(&root);
    let renewed = request_certificate_from(manager, local, &both, None, Some(creds)).await?;
    validate(
        &root,
        &renewed.cert_pem,
        renewed.key_pem.clone(),
        &renewed.node_id,
    )
}

/// The issuer a node reports: the certificate after the leaf when the chain has one (the
/// cross-signed root during a rotation), else the root.
fn tls_info(c: &Credentials) -> pb::NodeTlsInfo {
    let chain = crate::tls::certs_from_pem(&c.cert_pem, "certificate").unwrap_or_default();
    let issuer = match chain.get(1) {
        Some(i) => Some(vec![i.clone()]),
        None => crate::tls::certs_from_pem(&c.root_pem, "root").ok(),
    };
    let (subject, spki) = issuer
        .and_then(|certs| {
            let der = certs[0].as_ref().to_vec();
            let (_, x) = X509Certificate::from_der(&der).ok()?;
            Some((x.subject().as_raw().to_vec(), x.public_key().raw.to_vec()))
        })
        .unwrap_or_default();
    pb::NodeTlsInfo {
        trust_root: c.root_pem.clone(),
        cert_issuer_subject: subject,
        cert_issuer_public_key: spki,
    }
}
