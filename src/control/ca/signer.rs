//! The seam between node records and whoever signs their certificates.
//!
//! The internal CA signs in microseconds with no I/O, so a join or renewal signs inside its one
//! store write ([`NodeSigner::sign_now`]): PENDING and ISSUED never exist apart. A signer that
//! needs the network (an external cfssl CA) answers `None` there; the record is stored PENDING
//! and [`reconcile`] signs it outside any store write, retrying with backoff and recording in the
//! certificate's `err` why it is still waiting, so `docker node inspect` and the logs can say.

use std::collections::{HashMap, HashSet, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use swarmguard_ca::{CheckedCsr, IssuedCertificate, NodeRole, RootCa};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::control::records::{self, node_key, CertState, NodeRecord, NODE_PREFIX};
use crate::control::Control;
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
    /// Whether a join or renewal should call [`NodeSigner::sign`] itself for up to
    /// [`SIGN_INLINE`] before storing the record (an external CA that usually answers in
    /// milliseconds), rather than leave it PENDING for [`reconcile`] at once.
    fn signs_inline(&self) -> bool {
        false
    }
}

/// How long a join or renewal waits for a signer that needs I/O before storing its record: an
/// answer within it goes into the one store write (ISSUED, or PENDING with the reason); a later
/// one is a [`Handoffs`] entry that records its own outcome.
pub const SIGN_INLINE: Duration = Duration::from_millis(1500);

/// Nodes whose signature a join or renewal started and that outlived [`SIGN_INLINE`]: the
/// signature finishes in the background and records its outcome; [`reconcile`] leaves these
/// nodes alone meanwhile, so nothing is sent to the CA twice.
#[derive(Clone, Default)]
pub struct Handoffs(Arc<std::sync::Mutex<HashSet<String>>>);

impl Handoffs {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn contains(&self, node_id: &str) -> bool {
        self.lock().contains(node_id)
    }
}

/// A signature a join or renewal asked for before its store write.
pub enum Inline {
    /// The signer answered: its outcome goes into the write.
    Done(Result<IssuedCertificate, SignError>),
    /// Still running after [`SIGN_INLINE`]: store the record waiting, then [`Inline::hand_off`].
    Running(tokio::task::JoinHandle<Result<IssuedCertificate, SignError>>),
}

impl Inline {
    /// Signs `req` with `signer`: at once if it can, else (for a signer that
    /// [`NodeSigner::signs_inline`]) for up to [`SIGN_INLINE`]; `None` leaves it to [`reconcile`].
    pub async fn sign(signer: &Arc<dyn NodeSigner>, req: SignRequest) -> Option<Inline> {
        if let Some(outcome) = signer.sign_now(&req) {
            return Some(Inline::Done(outcome));
        }
        if !signer.signs_inline() {
            return None;
        }
        let mut task = tokio::spawn(signer.sign(req));
        Some(match tokio::time::timeout(SIGN_INLINE, &mut task).await {
            Ok(Ok(outcome)) => Inline::Done(outcome),
            Ok(Err(e)) => Inline::Done(Err(SignError::Unavailable(format!(
                "signature task failed: {e}"
            )))),
            Err(_) => Inline::Running(task),
        })
    }

    /// The outcome to write now, if there is one.
    pub fn outcome(&self) -> Option<Result<IssuedCertificate, SignError>> {
        match self {
            Inline::Done(o) => Some(o.clone()),
            Inline::Running(_) => None,
        }
    }

    /// Marks `node_id` as signed in the background; call before the store write that leaves
    /// it waiting, and [`Inline::hand_off`] (or [`Handoffs::cancel`]) after.
    pub fn claim(&self, handoffs: &Handoffs, node_id: &str) {
        if let Inline::Running(_) = self {
            handoffs.lock().insert(node_id.to_string());
        }
    }

    /// After the write: a running signature records its outcome for `(node, csr, role)` when
    /// it ends (if the record still waits for that CSR and role), then releases the node.
    pub fn hand_off(
        self,
        control: &Control,
        node_id: String,
        csr_b64: String,
        role: crate::control::types::Role,
    ) {
        let Inline::Running(task) = self else { return };
        let (store, handoffs) = (control.store().clone(), control.handoffs().clone());
        tokio::spawn(async move {
            let outcome = task.await.unwrap_or_else(|e| {
                Err(SignError::Unavailable(format!(
                    "signature task failed: {e}"
                )))
            });
            record_signed(&store, &node_id, &csr_b64, role, outcome).await;
            handoffs.lock().remove(&node_id);
        });
    }
}

impl Handoffs {
    /// The write that should have followed [`Inline::claim`] did not happen.
    pub fn cancel(&self, node_id: &str) {
        self.lock().remove(node_id);
    }
}

/// Writes a signature's outcome into the node's record if it still waits for exactly this CSR
/// with this role (a newer CSR or a role change waits for its own signature).
async fn record_signed(
    store: &crate::store::Store,
    node_id: &str,
    csr_b64: &str,
    role: crate::control::types::Role,
    outcome: Result<IssuedCertificate, SignError>,
) {
    let written = records::update(store, &node_key(node_id), "node", |n: &mut NodeRecord| {
        if n.certificate.state.needs_signing() && n.certificate.csr_b64 == csr_b64 && n.role == role
        {
            record_outcome(n, outcome.clone());
        }
        Ok(())
    })
    .await;
    if let Err(e) = written {
        tracing::warn!(node_id = %node_id, error = %e, "cannot record a signed certificate");
    }
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

/// Signs every PENDING or RENEW certificate that the fast path left, until `stop`. Signatures
/// run concurrently (up to [`MAX_IN_FLIGHT`]) while new store events keep arriving, so a slow
/// external CA delays each join by its own round trip, not by everyone's.
pub async fn reconcile(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut events = control.subscribe_to(&[NODE_PREFIX]);
    let mut signing = Signing::default();
    let mut look = Some(Look::All);
    loop {
        if let Some(l) = look.take() {
            signing.look(&control, l);
        }
        signing.start(&control);
        // With nothing waiting for a retry, a full scan is only a safety net for missed
        // events; with retries due, it comes when the first one is.
        let next = signing
            .backoff
            .values()
            .map(|(_, at, _)| *at)
            .min()
            .map(|at| at.min(Instant::now() + LOOK_EVERY))
            .unwrap_or_else(|| Instant::now() + SAFETY_SCAN);
        tokio::select! {
            _ = crate::util::until_true(&mut stop) => return,
            _ = tokio::time::sleep_until(next) => look = Some(Look::All),
            Some(done) = signing.tasks.join_next(), if !signing.tasks.is_empty() => {
                if let Ok(done) = done {
                    signing.finished(done);
                }
            }
            ev = events.recv() => look = match ev {
                Ok(applied) => Some(Look::Keys(
                    applied
                        .keys
                        .into_iter()
                        .filter(|k| k.starts_with(NODE_PREFIX))
                        .collect(),
                )),
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => Some(Look::All),
                Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
            },
        }
    }
}

/// What one signature task reports: node ID, the CSR it signed, and how it went.
type Done = (String, String, Result<(), SignError>);

/// The reconcile loop's state: retry times, signatures in flight, and due ones waiting for a slot.
#[derive(Default)]
struct Signing {
    backoff: Backoff,
    tasks: tokio::task::JoinSet<Done>,
    in_flight: HashSet<String>,
    queue: VecDeque<NodeRecord>,
}

impl Signing {
    /// Queues the nodes among `look` that wait for a signature and are due.
    fn look(&mut self, control: &Control, look: Look) {
        if matches!(&look, Look::Keys(k) if k.is_empty()) {
            return;
        }
        let waiting = waiting(control, &look);
        if let Look::All = look {
            // Forget backoff for nodes that no longer wait (signed, removed, or a newer CSR).
            self.backoff.retain(|id, (csr, _, _)| {
                waiting
                    .iter()
                    .any(|n| &n.id == id && &n.certificate.csr_b64 == csr)
            });
        }
        let now = Instant::now();
        for node in waiting {
            let due = self
                .backoff
                .get(&node.id)
                .is_none_or(|(_, at, _)| *at <= now);
            if due && !self.in_flight.contains(&node.id) {
                self.queue.retain(|q| q.id != node.id);
                self.queue.push_back(node);
            }
        }
    }

    /// Starts queued signatures while there is room.
    fn start(&mut self, control: &Arc<Control>) {
        let Some(material) = control.security().current() else {
            return;
        };
        while self.tasks.len() < MAX_IN_FLIGHT {
            let Some(node) = self.queue.pop_front() else {
                return;
            };
            if control.handoffs().contains(&node.id) || !self.in_flight.insert(node.id.clone()) {
                continue;
            }
            let (control, signer) = (control.clone(), material.signer.clone());
            let cluster_id = material.cluster_id.clone();
            self.tasks
                .spawn(async move { sign_one(&control, &*signer, &cluster_id, node).await });
        }
    }

    fn finished(&mut self, (node_id, csr_b64, outcome): Done) {
        self.in_flight.remove(&node_id);
        match outcome {
            Err(SignError::Unavailable(why)) => {
                let delay = self
                    .backoff
                    .get(&node_id)
                    .map(|(_, _, d)| (*d * 2).min(LAST_RETRY))
                    .unwrap_or(FIRST_RETRY);
                tracing::warn!(node_id = %node_id, retry_in = ?delay, "certificate signer unavailable: {why}");
                self.backoff
                    .insert(node_id, (csr_b64, Instant::now() + delay, delay));
            }
            _ => {
                self.backoff.remove(&node_id);
            }
        }
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
    let handoffs = control.handoffs();
    nodes
        .into_iter()
        .filter(|n| n.certificate.state.needs_signing() && !handoffs.contains(&n.id))
        .collect()
}

/// Signatures in flight at once: an external CA answers in milliseconds but each answer is a
/// network round trip; signing one node at a time would cap joins at one per round trip.
const MAX_IN_FLIGHT: usize = 16;

type Backoff = HashMap<String, (String, Instant, Duration)>;

/// Signs one waiting node and records the outcome in its record (only for the CSR that was
/// signed: a newer CSR waits for its own turn). Returns what happened, for the backoff.
async fn sign_one(
    control: &Control,
    signer: &dyn NodeSigner,
    cluster_id: &str,
    node: NodeRecord,
) -> Done {
    let csr_b64 = node.certificate.csr_b64.clone();
    let outcome = match request_for(control, cluster_id, &node) {
        Ok(req) => signer.sign(req).await,
        Err(e) => Err(e),
    };
    record_signed(
        control.store(),
        &node.id,
        &csr_b64,
        node.role,
        outcome.clone(),
    )
    .await;
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
