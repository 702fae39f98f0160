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
/// How often pending certificates are looked at without a store event.
const LOOK_EVERY: Duration = Duration::from_secs(5);

/// Signs every PENDING or RENEW certificate that the fast path left, until `stop`.
pub async fn reconcile(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut events = control.subscribe();
    // Node ID → (CSR being signed, when to try next, current backoff).
    let mut backoff: HashMap<String, (String, Instant, Duration)> = HashMap::new();
    loop {
        reconcile_once(&control, &mut backoff).await;
        let next = backoff
            .values()
            .map(|(_, at, _)| *at)
            .min()
            .unwrap_or_else(|| Instant::now() + LOOK_EVERY)
            .min(Instant::now() + LOOK_EVERY);
        tokio::select! {
            _ = crate::util::until_true(&mut stop) => return,
            _ = tokio::time::sleep_until(next) => {}
            ev = events.recv() => {
                if matches!(ev, Err(tokio::sync::broadcast::error::RecvError::Closed)) {
                    return;
                }
            }
        }
    }
}

async fn reconcile_once(
    control: &Control,
    backoff: &mut HashMap<String, (String, Instant, Duration)>,
) {
    let Some(material) = control.security().current() else {
        return;
    };
    let Ok(nodes) = records::list::<NodeRecord>(control.store(), NODE_PREFIX) else {
        return;
    };
    let waiting: Vec<NodeRecord> = nodes
        .into_iter()
        .map(|s| s.record)
        .filter(|n| n.certificate.state.needs_signing())
        .collect();
    backoff.retain(|id, (csr, _, _)| {
        waiting
            .iter()
            .any(|n| &n.id == id && &n.certificate.csr_b64 == csr)
    });
    let now = Instant::now();
    for node in waiting {
        if backoff.get(&node.id).is_some_and(|(_, at, _)| *at > now) {
            continue;
        }
        let csr_b64 = node.certificate.csr_b64.clone();
        let outcome = match request_for(control, &material.cluster_id, &node) {
            Ok(req) => material.signer.sign(req).await,
            Err(e) => Err(e),
        };
        if outcome.is_ok() || matches!(outcome, Err(SignError::Refused(_))) {
            backoff.remove(&node.id);
        }
        if let Err(SignError::Unavailable(why)) = &outcome {
            let delay = backoff
                .get(&node.id)
                .map(|(_, _, d)| (*d * 2).min(LAST_RETRY))
                .unwrap_or(FIRST_RETRY);
            tracing::warn!(node_id = %node.id, retry_in = ?delay, "certificate signer unavailable: {why}");
            backoff.insert(node.id.clone(), (csr_b64.clone(), now + delay, delay));
        }
        let written = records::update(
            control.store(),
            &node_key(&node.id),
            "node",
            |n: &mut NodeRecord| {
                // Only the request that was signed: a newer CSR waits for its own turn.
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
    }
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use super::*;
    use crate::control::local::ManagerConfig;
    use crate::control::nodes::JoinRequest;
    use crate::control::swarm::InitOptions;
    use crate::control::types::Availability;
    use crate::store::Store;

    /// A signer that needs the network: never signs inline, and is unreachable `down` times.
    struct Remote {
        ca: InternalCa,
        down: AtomicU32,
    }

    impl NodeSigner for Remote {
        fn sign_now(&self, _req: &SignRequest) -> Option<Result<IssuedCertificate, SignError>> {
            None
        }
        fn sign(&self, req: SignRequest) -> SignFuture {
            let result = if self.down.load(Ordering::SeqCst) > 0 {
                self.down.fetch_sub(1, Ordering::SeqCst);
                Err(SignError::Unavailable("connection refused".into()))
            } else {
                self.ca.issue(&req)
            };
            Box::pin(async move { result })
        }
    }

    /// A join through a signer that cannot sign at once is stored PENDING; the reconcile loop
    /// records why it waits while the signer is down, then signs, and the certificate names the
    /// node with its role and the cluster.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_network_signer_leaves_pending_and_the_loop_signs_after_backoff() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).await.unwrap();
        let config = ManagerConfig {
            data_dir: dir.path().to_path_buf(),
            listen_addr: "127.0.0.1:0".parse().unwrap(),
            advertise_addr: Some("127.0.0.1".into()),
        };
        let control = Arc::new(Control::open(store.clone(), config).unwrap());
        control
            .init(&InitOptions {
                advertise_addr: "127.0.0.1".into(),
                ..Default::default()
            })
            .await
            .unwrap();
        let root = control.root_ca().unwrap();
        control.security().set_signer(Arc::new(Remote {
            ca: InternalCa(root.clone()),
            down: AtomicU32::new(1),
        }));
        let (_key, csr) = swarmguard_ca::generate_node_key_and_csr();
        let checked = swarmguard_ca::check_csr(&csr).unwrap();
        let join = JoinRequest {
            csr_pem: &csr,
            availability: Availability::Active,
            addr: "127.0.0.1".into(),
        };
        let id = control
            .join(NodeRole::Worker, &checked, &join)
            .await
            .unwrap();
        let node = |c: &Control| c.node_by_id(&id).unwrap().unwrap().record;
        assert_eq!(node(&control).certificate.state, CertState::Pending);
        assert!(node(&control).certificate.cert_pem.is_empty());

        let (stop_tx, stop_rx) = watch::channel(false);
        let looper = tokio::spawn(reconcile(control.clone(), stop_rx));
        let mut saw_reason = false;
        let deadline = Instant::now() + Duration::from_secs(20);
        while node(&control).certificate.state != CertState::Issued {
            let err = node(&control).certificate.err;
            saw_reason |= err == "waiting for the certificate signer: connection refused";
            assert!(Instant::now() < deadline, "never signed: {err}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(saw_reason, "the wait's reason was recorded");
        let n = node(&control);
        assert!(n.certificate.err.is_empty());
        let identity =
            swarmguard_ca::verify_node_certificate(&root, n.certificate.cert_pem.as_bytes())
                .unwrap();
        assert_eq!(identity.node_id, id);
        assert_eq!(identity.role, NodeRole::Worker);
        assert_eq!(identity.cluster_id, control.cluster().unwrap().record.id);
        stop_tx.send(true).unwrap();
        looper.await.unwrap();
        store.shutdown().await.unwrap();
    }
}
