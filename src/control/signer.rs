//! The seam between node records and whoever signs their certificates.
//!
//! The internal CA signs in microseconds with no I/O, so a join or renewal signs inside its one
//! store write ([`NodeSigner::sign_now`]): PENDING and ISSUED never exist apart. A signer that
//! needs the network (an external cfssl CA) answers `None` there; the record is stored PENDING
//! and [`reconcile`] signs it outside any store write, retrying with backoff and recording in the
//! certificate's `err` why it is still waiting, so `docker node inspect` and the logs can say.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use swarmguard_ca::{CheckedCsr, IssuedCertificate, NodeRole, RootCa};
use tokio::sync::watch;
use tokio::time::Instant;

use super::records::{self, node_key, CertState, NodeRecord, NODE_PREFIX};
use super::Control;
use crate::util::unix_seconds;

/// What a signer is asked for: the node's key (from a checked CSR) and the identity to bind.
pub struct SignRequest {
    pub csr: CheckedCsr,
    /// The CSR as the node sent it (PEM), for signers that forward it.
    pub csr_pem: Vec<u8>,
    pub node_id: String,
    pub role: NodeRole,
    pub cluster_id: String,
    pub expiry: Duration,
}

/// Why a signer did not sign.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SignError {
    /// The signer refused this request for good (the certificate becomes FAILED).
    #[error("{0}")]
    Refused(String),
    /// The signer could not be reached or answered nonsense; worth retrying later.
    #[error("{0}")]
    Unavailable(String),
}

pub type SignFuture = Pin<Box<dyn Future<Output = Result<IssuedCertificate, SignError>> + Send>>;

/// Signs node certificates for the cluster.
pub trait NodeSigner: Send + Sync {
    /// Signs at once, without I/O, or says it cannot (`None`): then the record is stored
    /// PENDING and [`reconcile`] calls [`NodeSigner::sign`].
    fn sign_now(&self, req: &SignRequest) -> Option<Result<IssuedCertificate, SignError>>;
    /// Signs with whatever I/O it needs. Never called inside a store write.
    fn sign(&self, req: SignRequest) -> SignFuture;
}

/// The cluster's own root CA, holding its key.
pub struct InternalCa(pub Arc<RootCa>);

impl InternalCa {
    fn issue(&self, req: &SignRequest) -> Result<IssuedCertificate, SignError> {
        self.0
            .issue_node_certificate(
                &req.csr,
                &req.node_id,
                req.role,
                &req.cluster_id,
                req.expiry,
            )
            .map_err(|e| SignError::Refused(e.to_string()))
    }
}

impl NodeSigner for InternalCa {
    fn sign_now(&self, req: &SignRequest) -> Option<Result<IssuedCertificate, SignError>> {
        Some(self.issue(req))
    }

    fn sign(&self, req: SignRequest) -> SignFuture {
        let result = self.issue(&req);
        Box::pin(async move { result })
    }
}

/// Records the outcome of a signing in the node's certificate.
pub fn record_outcome(n: &mut NodeRecord, outcome: Result<IssuedCertificate, SignError>) {
    match outcome {
        Ok(issued) => {
            n.certificate.state = CertState::Issued;
            n.certificate.cert_pem = String::from_utf8_lossy(&issued.cert_pem).into_owned();
            n.certificate.not_after = unix_seconds(issued.not_after);
            n.certificate.err.clear();
        }
        Err(SignError::Refused(why)) => {
            n.certificate.state = CertState::Failed;
            n.certificate.err = why;
        }
        Err(SignError::Unavailable(why)) => {
            n.certificate.err = format!("waiting for the certificate signer: {why}");
        }
    }
}

/// Backoff between attempts for one node: 1 s doubling to 60 s.
const FIRST_RETRY: Duration = Duration::from_secs(1);
const LAST_RETRY: Duration = Duration::from_secs(60);
/// How often waiting certificates are looked at without a store event.
const LOOK_EVERY: Duration = Duration::from_secs(5);
/// How often every node is scanned when nothing waits (a scan decodes every node record).
const SAFETY_SCAN: Duration = Duration::from_secs(60);

/// Which nodes a reconcile pass looks at.
enum Look {
    /// Every node: at start, on a timer, and when change events were lost.
    All,
    /// The node records a store change touched: a join costs one record read here, not a
    /// scan of every node.
    Keys(Vec<String>),
}

/// Signs every PENDING or RENEW certificate that the fast path left, until `stop`.
pub async fn reconcile(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut events = control.subscribe();
    // Node ID → (CSR being signed, when to try next, current backoff).
    let mut backoff: Backoff = HashMap::new();
    let mut look = Look::All;
    loop {
        reconcile_once(&control, &mut backoff, look).await;
        // With nothing waiting for a retry, a full scan is only a safety net for missed
        // events; with retries due, it comes when the first one is.
        let next = backoff
            .values()
            .map(|(_, at, _)| *at)
            .min()
            .map(|at| at.min(Instant::now() + LOOK_EVERY))
            .unwrap_or_else(|| Instant::now() + SAFETY_SCAN);
        look = tokio::select! {
            _ = crate::util::until_true(&mut stop) => return,
            _ = tokio::time::sleep_until(next) => Look::All,
            ev = events.recv() => match ev {
                Ok(applied) => Look::Keys(
                    applied
                        .keys
                        .into_iter()
                        .filter(|k| k.starts_with(NODE_PREFIX))
                        .collect(),
                ),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Look::All,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        };
    }
}

/// The nodes among `look` whose certificate still needs a signature.
fn waiting(control: &Control, look: &Look) -> Vec<NodeRecord> {
    let nodes: Vec<NodeRecord> = match look {
        Look::All => records::list::<NodeRecord>(control.store(), NODE_PREFIX)
            .map(|v| v.into_iter().map(|s| s.record).collect())
            .unwrap_or_default(),
        Look::Keys(keys) => keys
            .iter()
            .filter_map(|k| {
                records::get::<NodeRecord>(control.store(), k)
                    .ok()
                    .flatten()
            })
            .map(|s| s.record)
            .collect(),
    };
    nodes
        .into_iter()
        .filter(|n| n.certificate.state.needs_signing())
        .collect()
}

/// Signatures in flight at once: an external CA answers in milliseconds but each answer is a
/// network round trip; signing one node at a time would cap joins at one per round trip.
const MAX_IN_FLIGHT: usize = 16;

type Backoff = HashMap<String, (String, Instant, Duration)>;

async fn reconcile_once(control: &Arc<Control>, backoff: &mut Backoff, look: Look) {
    if matches!(&look, Look::Keys(k) if k.is_empty()) {
        return;
    }
    let Some(material) = control.security().current() else {
        return;
    };
    let waiting = waiting(control, &look);
    if let Look::All = look {
        // Forget backoff for nodes that no longer wait (signed, removed, or a newer CSR).
        backoff.retain(|id, (csr, _, _)| {
            waiting
                .iter()
                .any(|n| &n.id == id && &n.certificate.csr_b64 == csr)
        });
    }
    let now = Instant::now();
    let due: Vec<NodeRecord> = waiting
        .into_iter()
        .filter(|n| !backoff.get(&n.id).is_some_and(|(_, at, _)| *at > now))
        .collect();
    let mut due = due.into_iter();
    let mut tasks = tokio::task::JoinSet::new();
    loop {
        while tasks.len() < MAX_IN_FLIGHT {
            let Some(node) = due.next() else { break };
            let (control, signer) = (control.clone(), material.signer.clone());
            let cluster_id = material.cluster_id.clone();
            tasks.spawn(async move { sign_one(&control, &*signer, &cluster_id, node).await });
        }
        let Some(done) = tasks.join_next().await else {
            return;
        };
        let Ok((node_id, csr_b64, outcome)) = done else {
            continue;
        };
        match outcome {
            Err(SignError::Unavailable(why)) => {
                let delay = backoff
                    .get(&node_id)
                    .map(|(_, _, d)| (*d * 2).min(LAST_RETRY))
                    .unwrap_or(FIRST_RETRY);
                tracing::warn!(node_id = %node_id, retry_in = ?delay, "certificate signer unavailable: {why}");
                backoff.insert(node_id, (csr_b64, Instant::now() + delay, delay));
            }
            _ => {
                backoff.remove(&node_id);
            }
        }
    }
}

/// Signs one waiting node and records the outcome in its record (only for the CSR that was
/// signed: a newer CSR waits for its own turn). Returns what happened, for the backoff.
async fn sign_one(
    control: &Control,
    signer: &dyn NodeSigner,
    cluster_id: &str,
    node: NodeRecord,
) -> (String, String, Result<(), SignError>) {
    let csr_b64 = node.certificate.csr_b64.clone();
    let outcome = match request_for(control, cluster_id, &node) {
        Ok(req) => signer.sign(req).await,
        Err(e) => Err(e),
    };
    let written = records::update(
        control.store(),
        &node_key(&node.id),
        "node",
        |n: &mut NodeRecord| {
            if n.certificate.state.needs_signing() && n.certificate.csr_b64 == csr_b64 {
                record_outcome(n, outcome.clone());
            }
            Ok(())
        },
    )
    .await;
    if let Err(e) = written {
        tracing::warn!(node_id = %node.id, error = %e, "cannot record a signed certificate");
    }
    (node.id, csr_b64, outcome.map(|_| ()))
}

/// The signing request for a stored node: its CSR checked again (it came from the network),
/// its current role, the cluster's expiry.
fn request_for(
    control: &Control,
    cluster_id: &str,
    node: &NodeRecord,
) -> Result<SignRequest, SignError> {
    let csr_pem = B64
        .decode(node.certificate.csr_b64.as_bytes())
        .map_err(|e| SignError::Refused(format!("stored CSR unreadable: {e}")))?;
    let csr = swarmguard_ca::check_csr(&csr_pem).map_err(|e| SignError::Refused(e.to_string()))?;
    Ok(SignRequest {
        csr,
        csr_pem,
        node_id: node.id.clone(),
        role: node.role.into(),
        cluster_id: cluster_id.to_string(),
        expiry: control.node_cert_expiry(),
    })
}
