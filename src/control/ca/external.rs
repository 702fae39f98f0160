//! The cluster's external CAs (cfssl): which of the spec's entries sign for the current root,
//! how their options are read, and the [`NodeSigner`] that asks them. The HTTP client and the
//! checks on what cfssl returns are the CA crate's (`swarmguard_ca::cfssl`).
//!
//! Options of an `--external-ca` entry that swarmguard reads (others are kept and ignored):
//! * `auth_key_file=<path>` or `auth_key_env=<VAR>`: the hex HMAC key for cfssl `authsign`;
//! * `ca_bundle=<path>`: PEM certificates the CA's https certificate may chain to, besides the
//!   cluster root.

use std::path::Path;
use std::sync::Arc;

use swarmguard_ca::cfssl::{AuthKey, CaSettings, CfsslClient, CfsslError, CfsslSettings};
use swarmguard_ca::{Expected, IssuedCertificate, RootCa};
use zeroize::Zeroizing;

use super::signer::{NodeSigner, SignError, SignFuture, SignRequest};
use crate::control::error::ControlError;
use crate::control::types::{ExternalCa, Spec};

/// Largest CA bundle file read.
const MAX_BUNDLE: u64 = 1024 * 1024;

/// The spec's cfssl entries that sign for `root_pem`: an empty `CACert` means "the current
/// root" (SwarmKit's rule); an entry for another certificate waits for a rotation to it.
pub fn entries_for<'a>(spec: &'a Spec, root_pem: &[u8]) -> Vec<&'a ExternalCa> {
    spec.ca_config
        .external_cas
        .iter()
        .flatten()
        .filter(|ca| ca.protocol.eq_ignore_ascii_case("cfssl"))
        .filter(|ca| ca.ca_cert.is_empty() || same_pem(ca.ca_cert.as_bytes(), root_pem))
        .collect()
}

/// PEM texts equal up to surrounding whitespace (the CLI and cfssl differ in trailing newlines).
fn same_pem(a: &[u8], b: &[u8]) -> bool {
    a.trim_ascii() == b.trim_ascii()
}

fn option<'a>(ca: &'a ExternalCa, key: &str) -> Option<&'a str> {
    ca.options
        .as_ref()?
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(key))
        .map(|(_, v)| v.as_str())
}

fn settings_of(ca: &ExternalCa) -> Result<CaSettings, CfsslError> {
    let auth_key = match (option(ca, "auth_key_file"), option(ca, "auth_key_env")) {
        (Some(_), Some(_)) => {
            return Err(CfsslError::AuthKey(
                "give auth_key_file= or auth_key_env=, not both".into(),
            ))
        }
        (Some(path), None) => Some(AuthKey::from_file(Path::new(path))?),
        (None, Some(var)) => Some(AuthKey::from_env(var)?),
        (None, None) => None,
    };
    let extra_trust_pem = match option(ca, "ca_bundle") {
        Some(path) => read_bounded(Path::new(path))
            .map_err(|e| CfsslError::Tls(format!("cannot read ca_bundle {path}: {e}")))?,
        None => Vec::new(),
    };
    Ok(CaSettings {
        url: ca.url.clone(),
        auth_key,
        extra_trust_pem,
    })
}

fn read_bounded(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut out = Vec::new();
    std::fs::File::open(path)?
        .take(MAX_BUNDLE)
        .read_to_end(&mut out)?;
    Ok(out)
}

/// A client for `entries`, trusting `trust_pem` for https and presenting `identity`.
pub fn client_for(
    entries: &[&ExternalCa],
    trust_pem: &[u8],
    identity: Option<(Vec<u8>, Zeroizing<Vec<u8>>)>,
) -> Result<CfsslClient, CfsslError> {
    let cas = entries
        .iter()
        .map(|ca| settings_of(ca))
        .collect::<Result<Vec<_>, _>>()?;
    let client = CfsslClient::new(CfsslSettings {
        cas,
        trust_pem: trust_pem.to_vec(),
        client_identity: identity,
        timeout: swarmguard_ca::cfssl::DEFAULT_TIMEOUT,
    })?;
    for url in client.plain_http_urls() {
        tracing::warn!(url, "external CA over plain http (loopback only): requests and certificates travel unencrypted");
    }
    Ok(client)
}

/// `swarm init --external-ca`: the root the cluster will trust, from the first entry's `CACert`
/// (the CLI's `cacert=`), else from cfssl's `info` (verified against `ca_bundle` for https).
pub async fn learn_root(spec: &Spec) -> Result<Option<RootCa>, ControlError> {
    let all: Vec<&ExternalCa> = spec
        .ca_config
        .external_cas
        .iter()
        .flatten()
        .filter(|ca| ca.protocol.eq_ignore_ascii_case("cfssl"))
        .collect();
    if all.is_empty() {
        return Ok(None);
    }
    let pem = match all.iter().find(|ca| !ca.ca_cert.is_empty()) {
        Some(ca) => ca.ca_cert.as_bytes().to_vec(),
        None => client_for(&all, b"", None)
            .map_err(config_error)?
            .ca_certificate()
            .await
            .map_err(|e| {
                ControlError::Unavailable(format!(
                    "cannot learn the external CA's certificate: {e}"
                ))
            })?,
    };
    RootCa::from_cert_pem(&pem)
        .map(Some)
        .map_err(|e| ControlError::InvalidArgument(format!("external CA certificate: {e}")))
}

/// `swarm update`: a root whose key an external CA holds keeps at least one usable external CA
/// for it (SwarmKit's text), so no update can leave the cluster unable to sign.
pub fn check_update(spec: &Spec, root: &Arc<RootCa>) -> Result<(), ControlError> {
    if root.has_key() {
        return Ok(());
    }
    let entries = entries_for(spec, root.cert_pem());
    let usable = !entries.is_empty() && client_for(&entries, root.cert_pem(), None).is_ok();
    if usable {
        Ok(())
    } else {
        Err(ControlError::rpc(
            crate::control::error::Code::InvalidArgument,
            "there must be at least one valid, reachable external CA corresponding to the desired CA certificate",
        ))
    }
}

pub fn config_error(e: CfsslError) -> ControlError {
    ControlError::InvalidArgument(e.to_string())
}

/// Signs through cfssl: never at once (`sign_now` is `None`); a join or renewal waits a short
/// while for cfssl before its store write (`signs_inline`), else the record is stored PENDING
/// and the reconcile loop calls [`NodeSigner::sign`] outside any store write.
pub struct CfsslSigner {
    client: Arc<CfsslClient>,
    root: Arc<RootCa>,
}

impl CfsslSigner {
    pub fn new(client: CfsslClient, root: Arc<RootCa>) -> CfsslSigner {
        CfsslSigner {
            client: Arc::new(client),
            root,
        }
    }
}

impl NodeSigner for CfsslSigner {
    fn sign_now(&self, _req: &SignRequest) -> Option<Result<IssuedCertificate, SignError>> {
        None
    }

    fn signs_inline(&self) -> bool {
        true
    }

    fn sign(&self, req: SignRequest) -> SignFuture {
        let (client, root) = (self.client.clone(), self.root.clone());
        Box::pin(async move {
            let want = Expected {
                node_id: &req.node_id,
                role: req.role,
                cluster_id: &req.cluster_id,
                csr: &req.csr,
                expiry: req.expiry,
            };
            client
                .sign(&root, &req.csr_pem, &want)
                .await
                .map_err(|e| match e.is_retryable() {
                    true => SignError::Unavailable(e.to_string()),
                    false => {
                        tracing::warn!(node_id = %req.node_id, "external CA: {e}");
                        SignError::Refused(e.to_string())
                    }
                })
        })
    }
}

/// A root without its key and no external CA that signs for it: every request waits, saying why.
pub struct NoSigner(pub String);

impl NodeSigner for NoSigner {
    fn sign_now(&self, _req: &SignRequest) -> Option<Result<IssuedCertificate, SignError>> {
        None
    }

    // The reason is in the record from its first write.
    fn signs_inline(&self) -> bool {
        true
    }

    fn sign(&self, _req: SignRequest) -> SignFuture {
        let why = self.0.clone();
        Box::pin(async move { Err(SignError::Unavailable(why)) })
    }
}

/// The signer for a root: the external CAs that sign for it if the spec has any (preferred, as
/// in SwarmKit), else the internal CA if this manager holds the root's key.
pub fn signer_for(
    spec: &Spec,
    root: &Arc<RootCa>,
    identity: (Vec<u8>, Zeroizing<Vec<u8>>),
) -> Arc<dyn NodeSigner> {
    let entries = entries_for(spec, root.cert_pem());
    if entries.is_empty() {
        if root.has_key() {
            return Arc::new(super::signer::InternalCa(root.clone()));
        }
        return Arc::new(NoSigner(
            "the cluster root's key is held by an external CA, and no external CA for it is configured (docker swarm update --external-ca)".into(),
        ));
    }
    match client_for(&entries, root.cert_pem(), Some(identity)) {
        Ok(client) => Arc::new(CfsslSigner::new(client, root.clone())),
        Err(e) => {
            tracing::error!("external CA configuration unusable: {e}");
            Arc::new(NoSigner(format!("external CA configuration unusable: {e}")))
        }
    }
}
