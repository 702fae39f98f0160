//! This manager's own identity: its addresses, and its node certificate and key on disk.
//!
//! Files follow SwarmKit's layout (`certificates/swarm-root-ca.crt`, `swarm-node.crt`,
//! `swarm-node.key`) so operators find them where they expect; the key is 0600.

use std::fs;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use serde::{Deserialize, Serialize};
use swarmguard_ca::RootCa;

use crate::control::error::ControlError;
use crate::control::parse_addr;
use crate::control::types::{EngineDescription, NodeDescription, Platform, Resources, TlsInfo};
use swarmguard_secrets::atomic::{write_atomic, Placement};
use zeroize::Zeroizing;

/// Daemon flags that shape the swarm addresses.
#[derive(Debug, Clone)]
pub struct ManagerConfig {
    pub data_dir: PathBuf,
    /// `--listen-addr`: where the cluster gRPC port listens.
    pub listen_addr: SocketAddr,
    /// `--advertise-addr`: what other nodes dial, when `swarm init` does not say.
    pub advertise_addr: Option<String>,
}

/// What `docker swarm init` sends as ListenAddr when the user gives none.
const CLI_DEFAULT_LISTEN_ADDR: &str = "0.0.0.0:2377";

impl ManagerConfig {
    /// Resolves `swarm init`'s ListenAddr and AdvertiseAddr against the daemon flags.
    pub fn resolve_addrs(
        &self,
        listen: &str,
        advertise: &str,
    ) -> Result<(SocketAddr, SocketAddr), ControlError> {
        // The docker CLI sends its own default when the user gave no --listen-addr, so that value
        // means "not chosen" and the daemon's --listen-addr (same default unless set) applies.
        let listen_addr = if listen.is_empty() || listen == CLI_DEFAULT_LISTEN_ADDR {
            self.listen_addr
        } else {
            parse_addr(listen, self.listen_addr.port()).ok_or_else(|| {
                ControlError::InvalidArgument(format!(
                    "invalid ListenAddr {listen:?}: give an IP address and port such as 0.0.0.0:2377 (interface names are not supported)"
                ))
            })?
        };
        let wanted = if advertise.is_empty() {
            self.advertise_addr.clone().unwrap_or_default()
        } else {
            advertise.to_string()
        };
        let advertise_addr = if wanted.is_empty() {
            if listen_addr.ip().is_unspecified() {
                return Err(ControlError::InvalidArgument("could not choose an IP address to advertise since this system has multiple addresses".into()));
            }
            listen_addr
        } else {
            let sa = parse_addr(&wanted, listen_addr.port()).ok_or_else(|| {
                ControlError::InvalidArgument(format!(
                    "invalid AdvertiseAddr {wanted:?}: give an IP address, optionally with a port, such as 192.0.2.10:2377 (interface names are not supported)"
                ))
            })?;
            if sa.ip().is_unspecified() {
                return Err(ControlError::InvalidArgument(format!(
                    "advertise address must be a non-zero IP address or network interface (with optional port number), got {wanted:?}"
                )));
            }
            sa
        };
        Ok((listen_addr, advertise_addr))
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalIdentity {
    pub node_id: String,
    pub listen_addr: SocketAddr,
    pub advertise_addr: SocketAddr,
}

const CERT_DIR: &str = "certificates";
const STATE_FILE: &str = "node.json";
/// A renewed certificate and key on their way into place (see [`LocalIdentity::recover`]).
const NEXT_CERT: &str = "swarm-node.crt.next";
const NEXT_KEY: &str = "swarm-node.key.next";

/// First line of a `swarm-node.key` sealed with the store's data key (autolock on); the rest is
/// the sealed PEM key in standard base64 and a newline.
pub const SEALED_KEY_HEADER: &str = "swarmguard-sealed-key v1\n";

/// How this manager's TLS key is kept in `swarm-node.key`: in clear (PEM) or sealed.
pub trait KeyCodec {
    /// The bytes to write for `key_pem`.
    fn encode(&self, key_pem: &[u8]) -> io::Result<Zeroizing<Vec<u8>>>;
    /// The PEM key from the file's bytes, in either form.
    fn decode(&self, stored: &[u8]) -> io::Result<Zeroizing<Vec<u8>>>;
}

/// Keys in clear, for callers without a store (tests); a sealed key is an error.
pub struct ClearKey;

impl KeyCodec for ClearKey {
    fn encode(&self, key_pem: &[u8]) -> io::Result<Zeroizing<Vec<u8>>> {
        Ok(Zeroizing::new(key_pem.to_vec()))
    }

    fn decode(&self, stored: &[u8]) -> io::Result<Zeroizing<Vec<u8>>> {
        if stored.starts_with(SEALED_KEY_HEADER.as_bytes()) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "swarm-node.key is sealed with the store's data key (autolock)",
            ));
        }
        Ok(Zeroizing::new(stored.to_vec()))
    }
}

impl LocalIdentity {
    /// Re-encodes `swarm-node.key` (and a staged `.next` key) from one form to the other, in one
    /// atomic replace each; absent files (not in a swarm) are left absent.
    pub fn rewrite_key(data_dir: &Path, from: &dyn KeyCodec, to: &dyn KeyCodec) -> io::Result<()> {
        let dir = data_dir.join(CERT_DIR);
        for name in ["swarm-node.key", NEXT_KEY] {
            let path = dir.join(name);
            let stored = match fs::read(&path) {
                Ok(b) => Zeroizing::new(b),
                Err(e) if e.kind() == io::ErrorKind::NotFound => continue,
                Err(e) => return Err(e),
            };
            let pem = from.decode(&stored)?;
            write_atomic(&path, &to.encode(&pem)?, 0o600, Placement::Replace)?;
        }
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    pub fn write(
        data_dir: &Path,
        codec: &dyn KeyCodec,
        root_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
        node_id: &str,
        listen_addr: SocketAddr,
        advertise_addr: SocketAddr,
    ) -> io::Result<LocalIdentity> {
        let dir = data_dir.join(CERT_DIR);
        fs::create_dir_all(&dir)?;
        write_atomic(
            &dir.join("swarm-root-ca.crt"),
            root_pem,
            0o644,
            Placement::Replace,
        )?;
        write_atomic(
            &dir.join("swarm-node.key"),
            &codec.encode(key_pem)?,
            0o600,
            Placement::Replace,
        )?;
        write_atomic(
            &dir.join("swarm-node.crt"),
            cert_pem,
            0o644,
            Placement::Replace,
        )?;
        let identity = LocalIdentity {
            node_id: node_id.to_string(),
            listen_addr,
            advertise_addr,
        };
        let state = serde_json::to_vec_pretty(&identity).map_err(io::Error::other)?;
        write_atomic(
            &data_dir.join(STATE_FILE),
            &state,
            0o600,
            Placement::Replace,
        )?;
        Ok(identity)
    }

    /// Rewrites `swarm-root-ca.crt` when the swarm's trusted root changed (a finished root
    /// rotation), so the file operators and tools read is the root the manager trusts.
    /// `Ok(true)` when it was rewritten.
    pub fn sync_root_file(data_dir: &Path, root_pem: &[u8]) -> io::Result<bool> {
        let path = data_dir.join(CERT_DIR).join("swarm-root-ca.crt");
        if fs::read(&path).is_ok_and(|on_disk| on_disk == root_pem) {
            return Ok(false);
        }
        write_atomic(&path, root_pem, 0o644, Placement::Replace)?;
        Ok(true)
    }

    /// Replaces this node's key and certificate (a renewal) so that a crash at any point leaves
    /// a matching pair: both are written to `.next` files first, then moved into place by
    /// [`LocalIdentity::recover`], which also finishes a move a crash interrupted.
    pub fn replace_certificate(
        data_dir: &Path,
        codec: &dyn KeyCodec,
        cert_pem: &[u8],
        key_pem: &[u8],
    ) -> io::Result<()> {
        let dir = data_dir.join(CERT_DIR);
        write_atomic(&dir.join(NEXT_CERT), cert_pem, 0o644, Placement::Replace)?;
        write_atomic(
            &dir.join(NEXT_KEY),
            &codec.encode(key_pem)?,
            0o600,
            Placement::Replace,
        )?;
        Self::recover(data_dir, codec)
    }

    /// Finishes or drops a replacement left by a crash. The certificate is written to `.next`
    /// before the key, and the key moves first, so: a waiting key moves only when its certificate
    /// waits too; a waiting certificate moves only when the key in place is its key.
    pub fn recover(data_dir: &Path, codec: &dyn KeyCodec) -> io::Result<()> {
        let dir = data_dir.join(CERT_DIR);
        let (next_cert, next_key) = (dir.join(NEXT_CERT), dir.join(NEXT_KEY));
        let (cert, key) = (dir.join("swarm-node.crt"), dir.join("swarm-node.key"));
        if next_key.exists() {
            if next_cert.exists() {
                let k = zeroize::Zeroizing::new(fs::read(&next_key)?);
                write_atomic(&key, &k, 0o600, Placement::Replace)?;
            }
            fs::remove_file(&next_key)?;
        }
        if next_cert.exists() {
            let c = fs::read(&next_cert)?;
            let k = codec.decode(&Zeroizing::new(fs::read(&key)?))?;
            if crate::tls::key_matches_certificate(&c, &k) {
                write_atomic(&cert, &c, 0o644, Placement::Replace)?;
            } else {
                tracing::warn!("dropped a certificate renewal that a crash interrupted before its key was saved");
            }
            fs::remove_file(&next_cert)?;
        }
        Ok(())
    }

    /// NotBefore and NotAfter of this node's certificate.
    pub fn certificate_validity(data_dir: &Path) -> io::Result<(SystemTime, SystemTime)> {
        let pem = Self::read_certificate(data_dir)?;
        let id = swarmguard_ca::read_node_certificate(&pem).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("swarm-node.crt: {e}"))
        })?;
        Ok((id.not_before, id.not_after))
    }

    /// Reads the identity back and checks the certificate still chains to the cluster root and
    /// names the same node: a swapped file is an error, not a new identity.
    pub fn load(data_dir: &Path, ca: &RootCa, codec: &dyn KeyCodec) -> io::Result<LocalIdentity> {
        Self::recover(data_dir, codec)?;
        let state = fs::read(data_dir.join(STATE_FILE))?;
        let identity: LocalIdentity = serde_json::from_slice(&state).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("{STATE_FILE}: {e}"))
        })?;
        let cert = fs::read(data_dir.join(CERT_DIR).join("swarm-node.crt"))?;
        let verified = swarmguard_ca::verify_node_certificate(ca, &cert).map_err(|e| {
            io::Error::new(io::ErrorKind::InvalidData, format!("swarm-node.crt: {e}"))
        })?;
        if verified.node_id != identity.node_id {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "swarm-node.crt names another node than node.json",
            ));
        }
        Ok(identity)
    }

    /// The addresses and node ID recorded in the data dir, unchecked (before the store is
    /// open: `--force-new-cluster` needs this manager's address). [`LocalIdentity::load`]
    /// checks them once the root is known.
    pub fn read_recorded(data_dir: &Path) -> io::Result<LocalIdentity> {
        let state = fs::read(data_dir.join(STATE_FILE))?;
        serde_json::from_slice(&state)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("{STATE_FILE}: {e}")))
    }

    /// This node's certificate as it is on disk now.
    pub fn read_certificate(data_dir: &Path) -> io::Result<Vec<u8>> {
        fs::read(data_dir.join(CERT_DIR).join("swarm-node.crt"))
    }

    /// This node's certificate and key as they are on disk now.
    pub fn read_pair(
        data_dir: &Path,
        codec: &dyn KeyCodec,
    ) -> io::Result<(Vec<u8>, Zeroizing<Vec<u8>>)> {
        let cert = Self::read_certificate(data_dir)?;
        let stored = Zeroizing::new(fs::read(data_dir.join(CERT_DIR).join("swarm-node.key"))?);
        Ok((cert, codec.decode(&stored)?))
    }

    pub fn remove(data_dir: &Path) -> io::Result<()> {
        for path in [data_dir.join(CERT_DIR), data_dir.join(STATE_FILE)] {
            let result = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            match result {
                Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
                _ => {}
            }
        }
        Ok(())
    }
}

/// What `docker node inspect` shows about the host running this manager.
pub fn describe_this_host(ca: &RootCa) -> NodeDescription {
    NodeDescription {
        hostname: crate::host::hostname(),
        platform: Platform {
            architecture: std::env::consts::ARCH.to_string(),
            os: std::env::consts::OS.to_string(),
        },
        resources: Resources {
            nano_cpus: crate::host::cpus() * 1_000_000_000,
            memory_bytes: crate::host::memory_bytes(),
        },
        engine: EngineDescription {
            engine_version: format!("swarmguard-{}", env!("CARGO_PKG_VERSION")),
            labels: Default::default(),
        },
        tls_info: tls_info(ca),
    }
}

/// Docker's `TLSInfo` for a root: the PEM, and the issuer's DER subject and SPKI in standard base64.
pub fn tls_info(ca: &RootCa) -> TlsInfo {
    TlsInfo {
        trust_root: String::from_utf8_lossy(ca.cert_pem()).into_owned(),
        cert_issuer_subject: B64.encode(ca.subject_der()),
        cert_issuer_public_key: B64.encode(ca.spki_der()),
    }
}

/// The `TLSInfo` a node holding `cert_pem` reports while trusting `root`: the issuer is the
/// certificate after the leaf when the chain has one (the cross-signed root of a rotation),
/// else the root.
pub fn chain_tls_info(root: &RootCa, cert_pem: &[u8]) -> TlsInfo {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let mut info = tls_info(root);
    let chain = crate::tls::certs_from_pem(cert_pem, "certificate").unwrap_or_default();
    if let Some((_, issuer)) = chain
        .get(1)
        .and_then(|c| X509Certificate::from_der(c.as_ref()).ok())
    {
        info.cert_issuer_subject = B64.encode(issuer.subject().as_raw());
        info.cert_issuer_public_key = B64.encode(issuer.public_key().raw);
    }
    info
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A certificate and its key, from `ca`.
    fn pair(ca: &RootCa, node_id: &str) -> (Vec<u8>, Vec<u8>) {
        let (key, csr) = swarmguard_ca::generate_node_key_and_csr();
        let issued = ca
            .issue_node_certificate(
                &swarmguard_ca::check_csr(&csr).unwrap(),
                node_id,
                swarmguard_ca::NodeRole::Manager,
                &swarmguard_ca::new_id(),
                swarmguard_ca::DEFAULT_NODE_CERT_EXPIRY,
            )
            .unwrap();
        (issued.cert_pem, key.to_vec())
    }

    fn files(dir: &Path) -> (Vec<u8>, Vec<u8>, bool) {
        let c = dir.join(CERT_DIR);
        (
            fs::read(c.join("swarm-node.crt")).unwrap(),
            fs::read(c.join("swarm-node.key")).unwrap(),
            c.join(NEXT_CERT).exists() || c.join(NEXT_KEY).exists(),
        )
    }

    /// Every point where a crash can stop a renewal leaves, after `recover`, a matching pair:
    /// the new one when its key was saved, the old one otherwise.
    #[test]
    fn an_interrupted_renewal_leaves_a_matching_pair() {
        let ca = RootCa::create().unwrap();
        let node = swarmguard_ca::new_id();
        let (old_cert, old_key) = pair(&ca, &node);
        let (new_cert, new_key) = pair(&ca, &node);
        let addr: SocketAddr = "127.0.0.1:2377".parse().unwrap();
        let write = |dir: &Path, cert: &[u8], key: &[u8]| {
            LocalIdentity::write(dir, &ClearKey, ca.cert_pem(), cert, key, &node, addr, addr)
                .unwrap();
        };
        let put = |dir: &Path, name: &str, bytes: &[u8]| {
            fs::write(dir.join(CERT_DIR).join(name), bytes).unwrap();
        };

        // 1. Crash after the certificate was staged, before the key: keep the old pair.
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &old_cert, &old_key);
        put(d.path(), NEXT_CERT, &new_cert);
        LocalIdentity::recover(d.path(), &ClearKey).unwrap();
        assert_eq!(files(d.path()), (old_cert.clone(), old_key.clone(), false));

        // 2. Both staged: the new pair moves in.
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &old_cert, &old_key);
        put(d.path(), NEXT_CERT, &new_cert);
        put(d.path(), NEXT_KEY, &new_key);
        LocalIdentity::recover(d.path(), &ClearKey).unwrap();
        assert_eq!(files(d.path()), (new_cert.clone(), new_key.clone(), false));

        // 3. The key already moved, the certificate not yet: it follows its key.
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &old_cert, &new_key);
        put(d.path(), NEXT_CERT, &new_cert);
        LocalIdentity::recover(d.path(), &ClearKey).unwrap();
        assert_eq!(files(d.path()), (new_cert.clone(), new_key.clone(), false));

        // 4. The whole replacement, and load() accepts the result.
        let d = tempfile::tempdir().unwrap();
        write(d.path(), &old_cert, &old_key);
        LocalIdentity::replace_certificate(d.path(), &ClearKey, &new_cert, &new_key).unwrap();
        assert_eq!(files(d.path()), (new_cert.clone(), new_key.clone(), false));
        assert_eq!(
            LocalIdentity::load(d.path(), &ca, &ClearKey)
                .unwrap()
                .node_id,
            node
        );
        assert!(crate::tls::key_matches_certificate(&new_cert, &new_key));
        assert!(!crate::tls::key_matches_certificate(&new_cert, &old_key));
    }

    fn config(listen: &str, advertise: Option<&str>) -> ManagerConfig {
        ManagerConfig {
            data_dir: PathBuf::from("/nonexistent"),
            listen_addr: listen.parse().unwrap(),
            advertise_addr: advertise.map(str::to_string),
        }
    }

    #[test]
    fn the_cli_default_listen_addr_defers_to_the_daemon_flag() {
        let c = config("127.0.0.1:2400", None);
        let (l, a) = c.resolve_addrs("0.0.0.0:2377", "").unwrap();
        assert_eq!(l.to_string(), "127.0.0.1:2400");
        assert_eq!(a.to_string(), "127.0.0.1:2400");
        let (l, _) = c.resolve_addrs("127.0.0.5:2500", "127.0.0.5").unwrap();
        assert_eq!(l.to_string(), "127.0.0.5:2500", "an explicit choice wins");
    }

    #[test]
    fn advertise_addr_gets_the_listen_port_and_must_be_specific() {
        let c = config("0.0.0.0:2377", None);
        let (_, a) = c.resolve_addrs("0.0.0.0:2377", "192.0.2.7").unwrap();
        assert_eq!(a.to_string(), "192.0.2.7:2377");
        let err = c.resolve_addrs("0.0.0.0:2377", "").unwrap_err();
        assert!(err
            .to_string()
            .contains("could not choose an IP address to advertise"));
        let err = c.resolve_addrs("0.0.0.0:2377", "0.0.0.0").unwrap_err();
        assert!(err.to_string().contains("non-zero IP address"));
        let err = c.resolve_addrs("0.0.0.0:2377", "eth0").unwrap_err();
        assert!(err
            .to_string()
            .contains("interface names are not supported"));
        let err = c.resolve_addrs("nonsense", "192.0.2.7").unwrap_err();
        assert!(err.to_string().contains("invalid ListenAddr"));
        let c = config("0.0.0.0:2377", Some("192.0.2.9:2400"));
        let (_, a) = c.resolve_addrs("0.0.0.0:2377", "").unwrap();
        assert_eq!(
            a.to_string(),
            "192.0.2.9:2400",
            "the daemon's --advertise-addr applies"
        );
    }
}
