//! The NodeSigner seam driven end to end: a signer that needs the network, the reconcile loop.
//! (Here, beside the resources, so that `signer` itself imports none of them.)
use std::sync::atomic::{AtomicU32, Ordering};

use std::sync::Arc;
use std::time::Duration;

use swarmguard_ca::{IssuedCertificate, NodeRole};
use tokio::sync::watch;
use tokio::time::Instant;

use super::ca::signer::{reconcile, InternalCa, NodeSigner, SignError, SignFuture, SignRequest};
use super::nodes::JoinRequest;
use super::records::CertState;
use super::testing::initialised;
use super::types::Availability;
use super::Control;
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
            self.ca
                .sign_now(&req)
                .expect("the internal CA signs inline")
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
    let (store, control) = initialised(dir.path()).await;
    let root = control.root_ca().unwrap();
    control.security().set_signer(Arc::new(Remote {
        ca: InternalCa(root.clone()),
        down: AtomicU32::new(1),
    }));
    let id = join_one(&control).await;
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
        swarmguard_ca::verify_node_certificate(&root, n.certificate.cert_pem.as_bytes()).unwrap();
    assert_eq!(identity.node_id, id);
    assert_eq!(identity.role, NodeRole::Worker);
    assert_eq!(identity.cluster_id, control.cluster().unwrap().record.id);
    stop_tx.send(true).unwrap();
    looper.await.unwrap();
    store.shutdown().await.unwrap();
}

/// A signer that needs the network and asks to be waited for (as cfssl's does): answers after
/// `delay`, counting every signature it is asked for.
struct Slow {
    ca: Arc<InternalCa>,
    delay: Duration,
    calls: Arc<AtomicU32>,
}

impl NodeSigner for Slow {
    fn sign_now(&self, _req: &SignRequest) -> Option<Result<IssuedCertificate, SignError>> {
        None
    }
    fn signs_inline(&self) -> bool {
        true
    }
    fn sign(&self, req: SignRequest) -> SignFuture {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let (ca, delay) = (self.ca.clone(), self.delay);
        Box::pin(async move {
            tokio::time::sleep(delay).await;
            ca.sign_now(&req).expect("the internal CA signs inline")
        })
    }
}

async fn control_with(
    dir: &std::path::Path,
    delay: Duration,
) -> (Arc<Control>, Store, Arc<AtomicU32>) {
    let (store, control) = initialised(dir).await;
    let calls = Arc::new(AtomicU32::new(0));
    control.security().set_signer(Arc::new(Slow {
        ca: Arc::new(InternalCa(control.root_ca().unwrap())),
        delay,
        calls: calls.clone(),
    }));
    (control, store, calls)
}

async fn join_one(control: &Control) -> String {
    let (_key, csr) = swarmguard_ca::generate_node_key_and_csr();
    let checked = swarmguard_ca::check_csr(&csr).unwrap();
    let join = JoinRequest {
        csr_pem: &csr,
        availability: Availability::Active,
        addr: "127.0.0.1".into(),
    };
    control
        .join(NodeRole::Worker, &checked, &join)
        .await
        .unwrap()
}

/// A signer that answers within the inline deadline: the join's one store write already holds
/// the issued certificate (no PENDING record, no work for the reconcile loop).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_quick_external_signer_signs_inside_the_joins_one_write() {
    let dir = tempfile::tempdir().unwrap();
    let (control, store, calls) = control_with(dir.path(), Duration::from_millis(10)).await;
    let id = join_one(&control).await;
    let n = control.node_by_id(&id).unwrap().unwrap().record;
    assert_eq!(n.certificate.state, CertState::Issued);
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    store.shutdown().await.unwrap();
}

/// A signer slower than the inline deadline: the join is stored PENDING, the running
/// signature is handed off and records the certificate itself, and the reconcile loop (running
/// all along) does not ask the signer a second time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_external_signer_is_handed_off_and_asked_once() {
    let dir = tempfile::tempdir().unwrap();
    let slow = super::ca::signer::SIGN_INLINE + Duration::from_millis(700);
    let (control, store, calls) = control_with(dir.path(), slow).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let looper = tokio::spawn(reconcile(control.clone(), stop_rx));
    let id = join_one(&control).await;
    let node = |c: &Control| c.node_by_id(&id).unwrap().unwrap().record;
    assert_eq!(node(&control).certificate.state, CertState::Pending);
    let deadline = Instant::now() + Duration::from_secs(20);
    while node(&control).certificate.state != CertState::Issued {
        assert!(Instant::now() < deadline, "never signed");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Past the reconcile loop's next look: still one signature.
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(calls.load(Ordering::SeqCst), 1, "the CA was asked twice");
    assert!(!control.handoffs().contains(&id));
    stop_tx.send(true).unwrap();
    looper.await.unwrap();
    store.shutdown().await.unwrap();
}
