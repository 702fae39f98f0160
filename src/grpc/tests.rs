//! The cluster port in process: a real store, control layer and TLS listener on a loopback
//! port, driven by `crate::agent` (the same client code as `swarmguard agent`) and raw stubs.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use swarmguard_ca::NodeRole;
use tokio::sync::watch;
use tonic::Code;

use crate::agent::{self, tls as ctls, AgentState, Credentials, RunOptions};
use crate::control::ca::local::ManagerConfig;
use crate::control::records::CertState;
use crate::control::records::NODE_PREFIX;
use crate::control::swarm::InitOptions;
use crate::control::types::{NodeState, Role};
use crate::control::{Control, Rotate};
use crate::pb;
use crate::store::Store;

mod hostile;
mod raft_auth;
mod services;

struct Env {
    _dir: tempfile::TempDir,
    control: Arc<Control>,
    store: Store,
    running: Option<super::Running>,
    addr: SocketAddr,
}

impl Env {
    async fn new() -> Env {
        Env::with_heartbeat(Duration::from_secs(5)).await
    }

    async fn with_heartbeat(period: Duration) -> Env {
        Env::build(period, None).await
    }

    /// An Env whose cluster port has these connection caps and deadlines.
    async fn with_port(
        caps: super::limits::LimitConfig,
        deadlines: super::accept::Deadlines,
    ) -> Env {
        Env::build(Duration::from_secs(5), Some((caps, deadlines))).await
    }

    async fn build(
        period: Duration,
        cluster_port: Option<(super::limits::LimitConfig, super::accept::Deadlines)>,
    ) -> Env {
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let store = Store::open(dir.path()).await.unwrap();
        let config = ManagerConfig {
            listen_addr: format!("127.0.0.1:{port}").parse().unwrap(),
            ..crate::control::testing::config(dir.path())
        };
        let control = Arc::new(Control::open(store.clone(), config).unwrap());
        let mut spec = crate::control::types::Spec::default();
        spec.dispatcher.heartbeat_period = period.as_nanos() as i64;
        control
            .init(&InitOptions {
                advertise_addr: "127.0.0.1".into(),
                spec,
                ..Default::default()
            })
            .await
            .unwrap();
        let running = match cluster_port {
            None => super::start(control.clone()).await.unwrap(),
            Some((caps, d)) => super::start_with(control.clone(), caps, d).await.unwrap(),
        };
        let addr = running.addr;
        Env {
            _dir: dir,
            control,
            store,
            running: Some(running),
            addr,
        }
    }

    fn worker_token(&self) -> String {
        self.control
            .cluster()
            .unwrap()
            .record
            .join_tokens
            .worker
            .clone()
    }
    fn manager_token(&self) -> String {
        self.control
            .cluster()
            .unwrap()
            .record
            .join_tokens
            .manager
            .clone()
    }
    fn root(&self) -> Vec<u8> {
        self.control
            .cluster()
            .unwrap()
            .record
            .root_ca_pem
            .clone()
            .into_bytes()
    }
    fn node_count(&self) -> usize {
        self.store.list(NODE_PREFIX).len()
    }
    fn node_state(&self, id: &str) -> String {
        let state = self.control.node(id).unwrap().record.status.state;
        serde_json::to_value(state)
            .unwrap()
            .as_str()
            .unwrap()
            .to_string()
    }

    async fn rotate_worker_token(&self) {
        let c = self.control.cluster().unwrap();
        self.control
            .update_swarm(
                c.version,
                &c.record.spec,
                Rotate {
                    worker_token: true,
                    ..Default::default()
                },
            )
            .await
            .unwrap();
    }

    async fn node_ca(
        &self,
        creds: Option<&Credentials>,
    ) -> pb::node_ca_client::NodeCaClient<tonic::transport::Channel> {
        let (cfg, name) = match creds {
            Some(c) => (
                ctls::verified(&self.root(), Some((&c.cert_pem, &c.key_pem))).unwrap(),
                "swarm-manager",
            ),
            None => (ctls::verified(&self.root(), None).unwrap(), "swarm-ca"),
        };
        pb::node_ca_client::NodeCaClient::new(ctls::channel(self.addr, cfg, name).await.unwrap())
    }

    async fn dispatcher(
        &self,
        creds: Option<&Credentials>,
    ) -> pb::dispatcher_client::DispatcherClient<tonic::transport::Channel> {
        let cfg = ctls::verified(
            &self.root(),
            creds.map(|c| (&c.cert_pem[..], &c.key_pem[..])),
        )
        .unwrap();
        pb::dispatcher_client::DispatcherClient::new(
            ctls::channel(self.addr, cfg, "swarm-manager")
                .await
                .unwrap(),
        )
    }

    async fn ca(&self, creds: &Credentials) -> pb::ca_client::CaClient<tonic::transport::Channel> {
        let cfg = ctls::verified(&self.root(), Some((&creds.cert_pem, &creds.key_pem))).unwrap();
        pb::ca_client::CaClient::new(ctls::channel(self.addr, cfg, "swarm-ca").await.unwrap())
    }

    fn spawn_agent(&self, creds: Credentials, opts: RunOptions) -> Agent {
        let (state_tx, state) = watch::channel(AgentState::default());
        let (stop, stop_rx) = watch::channel(false);
        let task = tokio::spawn(agent::run(creds, self.addr, None, opts, state_tx, stop_rx));
        Agent { state, stop, task }
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        if let Some(r) = self.running.take() {
            let _ = r.stop.send(true);
            for t in &r.tasks {
                t.abort();
            }
        }
    }
}

struct Agent {
    state: watch::Receiver<AgentState>,
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<Result<(), agent::AgentError>>,
}

impl Agent {
    async fn wait(&mut self, what: &str, f: impl Fn(&AgentState) -> bool) {
        tokio::time::timeout(Duration::from_secs(20), self.state.wait_for(|s| f(s)))
            .await
            .unwrap_or_else(|_| panic!("agent: {what} did not happen within 20 s"))
            .unwrap();
    }
    async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn poll(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + limit;
    while tokio::time::Instant::now() < deadline {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} not reached within {limit:?}");
}

fn status_of<T: std::fmt::Debug>(r: Result<T, agent::AgentError>) -> tonic::Status {
    match r {
        Err(agent::AgentError::Rpc(s)) => s,
        other => panic!("expected a gRPC error, got {other:?}"),
    }
}

/// A valid CSR for raw calls.
fn csr() -> Vec<u8> {
    swarmguard_ca::generate_node_key_and_csr().1
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_agents_join_with_the_worker_token_and_are_ready() {
    let env = Env::new().await;
    let cluster_id = env.control.cluster().unwrap().record.id.clone();
    let mut agents = Vec::new();
    for _ in 0..3 {
        let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
        assert_eq!(creds.role, NodeRole::Worker);
        assert_eq!(creds.cluster_id, cluster_id);
        let id = creds.node_id.clone();
        let mut a = env.spawn_agent(creds, RunOptions::default());
        a.wait("first session", |s| s.sessions == 1).await;
        agents.push((id, a));
    }
    for (id, _) in &agents {
        let n = env.control.node(id).unwrap().record;
        assert_eq!(n.status.state, NodeState::Ready);
        assert_eq!(n.certificate.state, CertState::Issued);
        assert!(n
            .description
            .engine
            .engine_version
            .starts_with("swarmguard-agent-"));
        assert!(!n.description.tls_info.trust_root.is_empty());
    }
    for (_, a) in agents {
        a.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_token_gives_a_manager_certificate_and_unlock_key_access() {
    let env = Env::new().await;
    let creds = agent::join(env.addr, &env.manager_token()).await.unwrap();
    assert_eq!(creds.role, NodeRole::Manager);
    let r = env
        .ca(&creds)
        .await
        .get_unlock_key(pb::GetUnlockKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert!(r.unlock_key.is_empty(), "autolock is off");
    assert!(r.version.unwrap().index > 0);

    // With autolock on, a manager gets the raw key-encryption key (SwarmKit's answer).
    let cluster = env.control.cluster().unwrap();
    let mut spec = cluster.record.spec.clone();
    spec.encryption_config.auto_lock_managers = true;
    env.control
        .update_swarm(cluster.version, &spec, crate::control::Rotate::default())
        .await
        .unwrap();
    let human = env.control.unlock_key().unwrap().expect("autolock on");
    let raw = swarmguard_secrets::kek::UnlockKey::parse(&human).unwrap();
    let r = env
        .ca(&creds)
        .await
        .get_unlock_key(pb::GetUnlockKeyRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.unlock_key, raw.expose_bytes().to_vec());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_certificate_calling_get_unlock_key_is_permission_denied() {
    let env = Env::new().await;
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let err = env
        .ca(&creds)
        .await
        .get_unlock_key(pb::GetUnlockKeyRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = Permission denied: remote certificate not part of OUs: [swarm-manager]"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotated_worker_token_is_refused_and_the_new_one_works() {
    let env = Env::new().await;
    let old = env.worker_token();
    env.rotate_worker_token().await;
    let before = env.node_count();
    let err = status_of(agent::join(env.addr, &old).await);
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(
        err.message(),
        "A valid join token is necessary to join this cluster"
    );
    assert_eq!(
        env.node_count(),
        before,
        "a refused join leaves no node behind"
    );
    agent::join(env.addr, &env.worker_token()).await.unwrap();
    assert_eq!(env.node_count(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certificate_from_another_ca_fails_the_handshake() {
    let env = Env::new().await;
    let foreign = swarmguard_ca::RootCa::create().unwrap();
    let (key, csr) = swarmguard_ca::generate_node_key_and_csr();
    let cluster_id = env.control.cluster().unwrap().record.id.clone();
    let cert = foreign
        .issue_node_certificate(
            &swarmguard_ca::check_csr(&csr).unwrap(),
            &swarmguard_ca::new_id(),
            NodeRole::Manager,
            &cluster_id,
            Duration::from_secs(7200),
        )
        .unwrap();
    let cfg = ctls::verified(&env.root(), Some((&cert.cert_pem, &key))).unwrap();
    // The server refuses the certificate during the handshake; a TLS 1.3 client learns it from
    // the alert at its first read.
    let refused = handshake_refusal(env.addr, cfg.clone()).await;
    assert!(refused.contains("alert"), "{refused}");
    // And no gRPC call gets through on such a connection.
    let call = async {
        let ch = ctls::channel(env.addr, cfg, "swarm-manager").await?;
        pb::ca_client::CaClient::new(ch)
            .get_unlock_key(pb::GetUnlockKeyRequest {})
            .await
            .map_err(agent::AgentError::from)
    }
    .await;
    assert!(call.is_err(), "a foreign certificate was accepted");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_without_certificate_cannot_open_a_session() {
    let env = Env::new().await;
    let err = env
        .dispatcher(None)
        .await
        .session(pb::SessionRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "Permission denied: no client certificates in request"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agents_renew_before_expiry_and_stay_ready() {
    let env = Env::new().await;
    // This test drives the agent's renewal loop every 300 ms; the manager's per-node renewal
    // rate limit has its own tests (tests/hostile.rs).
    env.control.set_renewal_interval(Duration::ZERO);
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let id = creds.node_id.clone();
    let first_cert = creds.cert_pem.clone();
    let mut a = env.spawn_agent(
        creds,
        RunOptions {
            renew_after: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    );
    a.wait("two renewals", |s| s.renewals >= 2).await;
    let n = env.control.node(&id).unwrap().record;
    assert_ne!(n.certificate.cert_pem.as_bytes(), &first_cert[..]);
    assert_eq!(n.role, Role::Worker, "a renewal keeps the role");
    a.wait("a session after renewal", |s| s.sessions >= 2).await;
    assert_eq!(env.node_state(&id), "ready");
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_then_demote_changes_the_certificate_ou() {
    let env = Env::new().await;
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let id = creds.node_id.clone();
    let mut a = env.spawn_agent(creds, RunOptions::default());
    a.wait("session", |s| s.sessions == 1).await;
    let set_role = |role: Role| {
        let env = &env;
        let id = id.clone();
        async move {
            // The agent's session writes the record too; retry on a version conflict.
            for _ in 0..20 {
                let v = env.control.node(&id).unwrap();
                let mut spec = v.record.spec.clone();
                spec.role = role;
                if env.control.update_node(&id, v.version, spec).await.is_ok() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            panic!("could not set role {role:?}");
        }
    };
    set_role(Role::Manager).await;
    a.wait("promotion", |s| s.role == Some(NodeRole::Manager))
        .await;
    assert_eq!(env.control.node(&id).unwrap().record.role, Role::Manager);
    set_role(Role::Worker).await;
    a.wait("demotion", |s| s.role == Some(NodeRole::Worker))
        .await;
    assert_eq!(env.control.node(&id).unwrap().record.role, Role::Worker);
    a.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopped_agent_goes_down_and_a_removed_node_is_refused() {
    let env = Env::with_heartbeat(Duration::from_secs(1)).await;
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let id = creds.node_id.clone();
    let mut a = env.spawn_agent(creds.clone(), RunOptions::default());
    a.wait("session", |s| s.sessions == 1).await;
    let session_id = a.state.borrow().session_id.clone();
    assert_eq!(env.node_state(&id), "ready");
    a.stop().await;
    // Down after 3 missed periods (1 s each, plus the 0.5 s jitter a node may be told).
    poll("node down", Duration::from_secs(5), || {
        env.node_state(&id) == "down"
    })
    .await;

    env.control.remove_node(&id, false).await.unwrap();
    let err = env
        .dispatcher(Some(&creds))
        .await
        .heartbeat(pb::HeartbeatRequest { session_id })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        format!("Permission denied: node {id} was removed from swarm")
    );
    // Renewal with the removed certificate joins nothing either.
    let before = env.node_count();
    let err = env
        .node_ca(Some(&creds))
        .await
        .issue_node_certificate(pb::IssueNodeCertificateRequest {
            csr: csr(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    assert_eq!(env.node_count(), before);
}

/// The issue's bad-input table: each a clear gRPC error, and the store unchanged.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_inputs_get_clear_errors_and_change_nothing() {
    let env = Env::new().await;
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let mut nca = env.node_ca(None).await;
    let token = env.worker_token();
    let issue = |csr: Vec<u8>, token: String| pb::IssueNodeCertificateRequest {
        csr,
        token,
        ..Default::default()
    };
    let before = env.store.list("");

    // Garbage CSR.
    let e = nca
        .issue_node_certificate(issue(b"not a csr".to_vec(), token.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().contains("no PEM block"), "{}", e.message());
    // Wrong key type.
    let ed = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/fixtures/certs/csr-ed25519.pem"
    ))
    .unwrap();
    let e = nca
        .issue_node_certificate(issue(ed, token.clone()))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("Ed25519"), "{}", e.message());
    // A message over 4 MiB.
    let e = nca
        .issue_node_certificate(issue(vec![b'A'; (4 << 20) + 1], token.clone()))
        .await
        .unwrap_err();
    // tonic's code for an oversized message (grpc-go says ResourceExhausted); the text is clear.
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    assert!(
        e.message().contains("message length too large"),
        "{}",
        e.message()
    );
    // Empty token.
    let e = nca
        .issue_node_certificate(issue(csr(), String::new()))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, super::ca::BAD_TOKEN)
    );
    // An anonymous caller (no certificate, no token) is refused before its CSR is even looked
    // at: the token comes first, so signature checks cannot be had for free.
    let e = nca
        .issue_node_certificate(issue(b"not a csr".to_vec(), "SWMTKN-1-forged".into()))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, super::ca::BAD_TOKEN)
    );
    // A token with another cluster's digest (same secret).
    let other_root = swarmguard_ca::RootCa::create().unwrap();
    let other = swarmguard_ca::JoinToken::generate(other_root.cert_pem()).to_string();
    let forged = format!(
        "{}{}",
        &other[..other.len() - 25],
        &token[token.len() - 25..]
    );
    let e = nca
        .issue_node_certificate(issue(csr(), forged))
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, super::ca::BAD_TOKEN)
    );
    // Status for an unknown node ID.
    let e = nca
        .node_certificate_status(pb::NodeCertificateStatusRequest {
            node_id: swarmguard_ca::new_id(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    // OU=swarm-manager with the wrong O (signed by our own root).
    let (key, mcsr) = swarmguard_ca::generate_node_key_and_csr();
    let wrong_o = env
        .control
        .root_ca()
        .unwrap()
        .issue_node_certificate(
            &swarmguard_ca::check_csr(&mcsr).unwrap(),
            &swarmguard_ca::new_id(),
            NodeRole::Manager,
            &swarmguard_ca::new_id(),
            Duration::from_secs(7200),
        )
        .unwrap();
    let intruder = Credentials {
        cert_pem: wrong_o.cert_pem.clone(),
        key_pem: key,
        ..creds.clone()
    };
    let e = env
        .ca(&intruder)
        .await
        .get_unlock_key(pb::GetUnlockKeyRequest {})
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied);
    assert!(
        e.message()
            .starts_with("Permission denied: remote certificate not part of organization"),
        "{}",
        e.message()
    );
    assert_eq!(env.store.list(""), before, "no bad input changed the store");

    // A wrong session ID.
    let mut d = env.dispatcher(Some(&creds)).await;
    let mut s = d
        .session(pb::SessionRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = s.message().await.unwrap().unwrap();
    assert!(!first.session_id.is_empty());
    assert_eq!(first.root_ca, env.root());
    assert_eq!(first.managers.len(), 1);
    let e = d
        .heartbeat(pb::HeartbeatRequest {
            session_id: "wrong".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(
        (e.code(), e.message()),
        (Code::InvalidArgument, "session invalid")
    );
    let e = d
        .assignments(pb::AssignmentsRequest {
            session_id: "wrong".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    // The real one works and the period is 5 s ± 0.5 s.
    let p = d
        .heartbeat(pb::HeartbeatRequest {
            session_id: first.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner()
        .period
        .unwrap();
    let p = Duration::new(p.seconds as u64, p.nanos as u32);
    assert!(
        (Duration::from_millis(4500)..=Duration::from_millis(5500)).contains(&p),
        "{p:?}"
    );
    // Assignments open with COMPLETE.
    let mut asg = d
        .assignments(pb::AssignmentsRequest {
            session_id: first.session_id.clone(),
        })
        .await
        .unwrap()
        .into_inner();
    let m = asg.message().await.unwrap().unwrap();
    assert_eq!(m.r#type, pb::assignments_message::Type::Complete as i32);
    assert_eq!(m.results_in, "1");
    // A fourth registration within 8 s (one was made above).
    for _ in 0..2 {
        d.session(pb::SessionRequest::default()).await.unwrap();
    }
    let e = d.session(pb::SessionRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable);
    assert_eq!(
        e.message(),
        format!(
            "node {} exceeded rate limit count of registrations",
            creds.node_id
        )
    );
}

async fn presented_server_cert(addr: SocketAddr, root: &[u8]) -> Vec<u8> {
    let connector = tokio_rustls::TlsConnector::from(ctls::verified(root, None).unwrap());
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("swarm-ca").unwrap();
    let tls = connector.connect(name, tcp).await.unwrap();
    tls.get_ref().1.peer_certificates().unwrap()[0]
        .as_ref()
        .to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_certificate_is_swapped_without_a_restart() {
    let mut env = Env::new().await;
    let before = presented_server_cert(env.addr, &env.root()).await;
    let ca = env.control.root_ca().unwrap();
    let node_id = env.control.local_node_id().unwrap();
    let cluster_id = env.control.cluster().unwrap().record.id.clone();
    let (key, csr) = swarmguard_ca::generate_node_key_and_csr();
    let issued = ca
        .issue_node_certificate(
            &swarmguard_ca::check_csr(&csr).unwrap(),
            &node_id,
            NodeRole::Manager,
            &cluster_id,
            Duration::from_secs(7200),
        )
        .unwrap();
    let certs = env._dir.path().join("certificates");
    swarmguard_secrets::atomic::write_atomic(
        &certs.join("swarm-node.key"),
        &key,
        0o600,
        swarmguard_secrets::atomic::Placement::Replace,
    )
    .unwrap();
    swarmguard_secrets::atomic::write_atomic(
        &certs.join("swarm-node.crt"),
        &issued.cert_pem,
        0o644,
        swarmguard_secrets::atomic::Placement::Replace,
    )
    .unwrap();
    let running = env.running.as_mut().unwrap();
    assert!(running.reload_tls().unwrap());
    assert!(
        !running.reload_tls().unwrap(),
        "nothing changed the second time"
    );
    let after = presented_server_cert(env.addr, &env.root()).await;
    assert_ne!(before, after);
    let (_, expected) = x509_parser::pem::parse_x509_pem(&issued.cert_pem).unwrap();
    assert_eq!(after, expected.contents);
    // The same listener keeps serving joins with the new certificate.
    agent::join(env.addr, &env.worker_token()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manager_renews_its_own_certificate_without_a_restart() {
    let mut env = Env::new().await;
    let root = env.root();
    let before = presented_server_cert(env.addr, &root).await;
    let node_id = env.control.local_node_id().unwrap();
    let not_after = env.control.renew_own_certificate().await.unwrap();

    let certs = env._dir.path().join("certificates");
    let cert = std::fs::read(certs.join("swarm-node.crt")).unwrap();
    let key = std::fs::read(certs.join("swarm-node.key")).unwrap();
    assert!(crate::tls::key_matches_certificate(&cert, &key));
    assert!(
        !certs.join("swarm-node.crt.next").exists() && !certs.join("swarm-node.key.next").exists()
    );
    let ca = env.control.root_ca().unwrap();
    let id = swarmguard_ca::verify_node_certificate(&ca, &cert).unwrap();
    assert_eq!(id.node_id, node_id);
    assert_eq!(id.role, NodeRole::Manager);
    // The node record shows the new certificate.
    let record = env.control.node(&node_id).unwrap().record;
    assert_eq!(record.certificate.cert_pem.as_bytes(), cert.as_slice());
    assert_eq!(
        record.certificate.not_after,
        crate::control::unix_seconds(not_after)
    );

    // The listener serves the new certificate to new connections, and still takes joins.
    assert!(env.running.as_mut().unwrap().reload_tls().unwrap());
    let after = presented_server_cert(env.addr, &root).await;
    assert_ne!(before, after);
    let (_, expected) = x509_parser::pem::parse_x509_pem(&cert).unwrap();
    assert_eq!(after, expected.contents);
    agent::join(env.addr, &env.worker_token()).await.unwrap();
}

/// TLS handshake plus a first read with `cfg`; the server's refusal as text, or a panic when
/// the connection is accepted.
async fn handshake_refusal(addr: SocketAddr, cfg: Arc<rustls::ClientConfig>) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("swarm-manager").unwrap();
    match tokio_rustls::TlsConnector::from(cfg)
        .connect(name, tcp)
        .await
    {
        Err(e) => e.to_string(),
        Ok(mut tls) => {
            let _ = tls.write_all(b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n").await;
            let mut buf = [0u8; 64];
            match tls.read(&mut buf).await {
                Err(e) => e.to_string(),
                Ok(n) => panic!("the server accepted the certificate (read {n} bytes)"),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_client_certificate_fails_the_handshake_and_changes_nothing() {
    let env = Env::new().await;
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    // Our own root signs a worker certificate for this very node that expired in 2020.
    let ca = env.control.root_ca().unwrap();
    let root_key = rcgen::KeyPair::try_from(ca.key_pkcs8_der().unwrap().as_slice()).unwrap();
    let issuer =
        rcgen::Issuer::from_ca_cert_pem(std::str::from_utf8(ca.cert_pem()).unwrap(), root_key)
            .unwrap();
    let node_key = rcgen::KeyPair::generate().unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["swarm-worker".into(), creds.node_id.clone()]).unwrap();
    params.distinguished_name = rcgen::DistinguishedName::new();
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationName, creds.cluster_id.clone());
    params
        .distinguished_name
        .push(rcgen::DnType::OrganizationalUnitName, "swarm-worker");
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, creds.node_id.clone());
    params.not_before = rcgen::date_time_ymd(2020, 1, 1);
    params.not_after = rcgen::date_time_ymd(2020, 1, 2);
    params.extended_key_usages = vec![
        rcgen::ExtendedKeyUsagePurpose::ServerAuth,
        rcgen::ExtendedKeyUsagePurpose::ClientAuth,
    ];
    let cert = params.signed_by(&node_key, &issuer).unwrap();
    let cfg = ctls::verified(
        &env.root(),
        Some((cert.pem().as_bytes(), node_key.serialize_pem().as_bytes())),
    )
    .unwrap();
    let before = env.store.list("");
    let refused = handshake_refusal(env.addr, cfg).await;
    assert!(refused.contains("alert"), "{refused}");
    assert_eq!(env.store.list(""), before);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_restart_nodes_that_do_not_come_back_go_down() {
    let mut env = Env::with_heartbeat(Duration::from_secs(1)).await;
    let gone = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let back = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let mut a = env.spawn_agent(gone.clone(), RunOptions::default());
    a.wait("session", |s| s.sessions == 1).await;
    a.stop().await;
    let mut b = env.spawn_agent(back.clone(), RunOptions::default());
    b.wait("session", |s| s.sessions == 1).await;
    assert_eq!(env.node_state(&gone.node_id), "ready");
    // Restart the cluster port on the same address (the manager restarting); the store still
    // says Ready for both nodes.
    env.running.take().unwrap().stop().await;
    env.running = Some(super::start(env.control.clone()).await.unwrap());
    assert_eq!(env.running.as_ref().unwrap().addr, env.addr);
    poll("the absent node down", Duration::from_secs(6), || {
        env.node_state(&gone.node_id) == "down"
    })
    .await;
    // The node that reconnects stays Ready.
    b.wait("a new session", |s| s.sessions >= 2).await;
    assert_eq!(env.node_state(&back.node_id), "ready");
    b.stop().await;
}

/// A description as a stock dockerd 20.10 would send it, with `engine_version` to vary.
fn described(hostname: &str, engine_version: &str) -> pb::NodeDescription {
    pb::NodeDescription {
        hostname: hostname.into(),
        platform: Some(pb::Platform {
            architecture: "x86_64".into(),
            os: "linux".into(),
        }),
        engine: Some(pb::EngineDescription {
            engine_version: engine_version.into(),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// One raw `Dispatcher.Session` with `creds`; the stream is kept open by the returned value.
async fn open_session(
    env: &Env,
    creds: &Credentials,
    description: pb::NodeDescription,
) -> Result<tonic::Streaming<pb::SessionMessage>, tonic::Status> {
    env.dispatcher(Some(creds))
        .await
        .session(pb::SessionRequest {
            description: Some(description),
            ..Default::default()
        })
        .await
        .map(|r| r.into_inner())
}

/// Sets a node's desired role through the control layer, as `docker node promote|demote` does.
async fn set_role(
    env: &Env,
    reference: &str,
    role: Role,
) -> Result<(), crate::control::ControlError> {
    let v = env.control.node(reference)?;
    let mut spec = v.record.spec.clone();
    spec.role = role;
    env.control.update_node(reference, v.version, spec).await
}

/// Audit finding 5: a worker's hostname (or engine version, platform) with ANSI escapes or other
/// control characters would reach `docker node ls` raw. The Session carrying it is refused
/// before anything is written; a clean one then works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_characters_in_a_node_description_are_refused() {
    let env = Env::new().await;
    let creds = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let id = creds.node_id.clone();
    let before = env.control.node(&id).unwrap();
    let mut platform_cr = described("w1", "20.10.24");
    platform_cr.platform.as_mut().unwrap().os = "linux\rroot".into();
    let cases = [
        (
            described("\u{1b}[2J\u{1b}[31mmanager-1\u{1b}[0m", "20.10.24"),
            "hostname contains the control character U+001B at byte 0",
        ),
        (
            described("w1", "20.10.24\u{1b}]0;owned\u{7}"),
            "engine version contains the control character U+001B at byte 8",
        ),
        (
            platform_cr,
            "platform OS contains the control character U+000D at byte 5",
        ),
        (
            described("w1\u{202e}1-reganam", "20.10.24"),
            "hostname contains the control character U+202E at byte 2",
        ),
    ];
    for (description, want) in cases {
        let e = open_session(&env, &creds, description).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        assert!(e.message().contains(want), "{}", e.message());
        let now = env.control.node(&id).unwrap();
        assert_eq!(
            now.version, before.version,
            "a refused session wrote the node"
        );
    }
    assert_eq!(env.node_state(&id), "unknown");
    let _s = open_session(&env, &creds, described("w1", "20.10.24"))
        .await
        .unwrap();
    assert_eq!(env.node_state(&id), "ready");
    assert_eq!(
        env.control.node(&id).unwrap().record.description.hostname,
        "w1"
    );
}

/// Audit finding 5: the promote guard asked the node's self-reported engine version. Now it asks
/// what the manager recorded at the node's first session: a stock dockerd that later reports
/// `swarmguard-agent-x` is still refused, as is a node never seen in a session; a real agent
/// is promoted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stock_node_reporting_an_agent_version_is_not_promoted() {
    use crate::control::records::NodeSoftware;
    let env = Env::new().await;
    let stock = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let e = set_role(&env, &stock.node_id, Role::Manager)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("has not opened a session"),
        "unseen node: {e}"
    );
    drop(
        open_session(&env, &stock, described("stock", "20.10.24"))
            .await
            .unwrap(),
    );
    let _s = open_session(&env, &stock, described("stock", "swarmguard-agent-x"))
        .await
        .unwrap();
    let n = env.control.node(&stock.node_id).unwrap().record;
    assert_eq!(n.description.engine.engine_version, "swarmguard-agent-x");
    assert_eq!(n.software, NodeSoftware::Dockerd);
    let e = set_role(&env, &stock.node_id, Role::Manager)
        .await
        .unwrap_err();
    assert!(
        e.to_string().contains("cannot become a swarmguard manager"),
        "{e}"
    );
    assert_eq!(
        env.control.node(&stock.node_id).unwrap().record.spec.role,
        Role::Worker
    );

    let real = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let id = real.node_id.clone();
    let mut a = env.spawn_agent(real, RunOptions::default());
    a.wait("session", |s| s.sessions == 1).await;
    assert_eq!(
        env.control.node(&id).unwrap().record.software,
        NodeSoftware::SwarmguardAgent
    );
    set_role(&env, &id, Role::Manager).await.unwrap();
    a.stop().await;
}

/// Audit finding 5: names resolved before ID prefixes (dockerd's order), so a joining node
/// could pick as hostname the prefix an operator types for another node and be promoted in its
/// place. The full ID still wins over any name, a clean name or prefix still resolves, and a
/// name that is another node's ID prefix is ambiguous rather than the attacker's node.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hostname_cannot_shadow_another_nodes_id_prefix() {
    let env = Env::new().await;
    let victim = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let attacker = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let prefix = &victim.node_id[..5];
    let _s = open_session(&env, &attacker, described(prefix, "swarmguard-agent-1"))
        .await
        .unwrap();
    let e = env.control.node(prefix).unwrap_err();
    assert!(
        e.to_string().contains(&format!(
            "node {prefix} is ambiguous (2 matches found): it is the name of node {} and the start of the ID of {}; use the full node ID",
            attacker.node_id, victim.node_id
        )),
        "{e}"
    );
    assert!(set_role(&env, prefix, Role::Manager).await.is_err());
    assert_eq!(
        env.control
            .node(&attacker.node_id)
            .unwrap()
            .record
            .spec
            .role,
        Role::Worker,
        "the shadowing node was promoted"
    );
    assert_eq!(
        env.control.node(&victim.node_id).unwrap().record.id,
        victim.node_id
    );

    // A hostname equal to another node's full ID: the ID wins, as on dockerd.
    let _s = open_session(
        &env,
        &attacker,
        described(&victim.node_id, "swarmguard-agent-1"),
    )
    .await
    .unwrap();
    assert_eq!(
        env.control.node(&victim.node_id).unwrap().record.id,
        victim.node_id
    );
    // Without a conflict, names and unique prefixes resolve as before.
    let _s = open_session(&env, &attacker, described("edge-7", "swarmguard-agent-1"))
        .await
        .unwrap();
    assert_eq!(
        env.control.node("edge-7").unwrap().record.id,
        attacker.node_id
    );
    let unique = (4..25)
        .map(|n| &attacker.node_id[..n])
        .find(|p| !victim.node_id.starts_with(p))
        .unwrap();
    assert_eq!(
        env.control.node(unique).unwrap().record.id,
        attacker.node_id
    );
}

/// Audit finding 6: roles came from the certificate's OU alone, so a demoted manager kept its
/// manager rights until its certificate expired. The node record's observed role now has to
/// agree: the still-valid manager certificate is refused for `GetUnlockKey` after the demotion,
/// while the node may still open a session and renew into a worker certificate.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_demoted_managers_certificate_loses_manager_rights_at_once() {
    let env = Env::new().await;
    let worker = agent::join(env.addr, &env.worker_token()).await.unwrap();
    let id = worker.node_id.clone();
    drop(
        open_session(&env, &worker, RunOptions::default().description)
            .await
            .unwrap(),
    );
    set_role(&env, &id, Role::Manager).await.unwrap();
    let manager = agent::request_certificate(env.addr, &env.root(), None, Some(&worker))
        .await
        .unwrap();
    assert_eq!(
        manager.role,
        NodeRole::Manager,
        "renewed into OU=swarm-manager"
    );
    env.ca(&manager)
        .await
        .get_unlock_key(pb::GetUnlockKeyRequest {})
        .await
        .expect("a manager may read the unlock key");

    set_role(&env, &id, Role::Worker).await.unwrap();
    assert_eq!(env.control.node(&id).unwrap().record.role, Role::Worker);
    let err = env
        .ca(&manager)
        .await
        .get_unlock_key(pb::GetUnlockKeyRequest {})
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    assert_eq!(
        err.message(),
        "Permission denied: unauthorized peer role: rpc error: code = PermissionDenied desc = Permission denied: remote certificate not part of OUs: [swarm-manager]"
    );
    // Worker methods still serve it, so it can learn of the demotion and renew as a worker.
    let _s = open_session(&env, &manager, RunOptions::default().description)
        .await
        .unwrap();
    let renewed = agent::request_certificate(env.addr, &env.root(), None, Some(&manager))
        .await
        .unwrap();
    assert_eq!(renewed.role, NodeRole::Worker);
}
