//! `Dispatcher` (sessions, heartbeats, assignments, task status) and `LogBroker`.
//!
//! A node's liveness lives here, in memory: a session per node with a heartbeat deadline of
//! three periods; the node record in the store says Ready on registration and Down on expiry.

use std::collections::{HashMap, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tokio_stream::{Stream, StreamExt};
use tonic::{Request, Response, Status};

use super::auth::{authorize, peer, WORKER_OR_MANAGER};
use super::ca::{certificate_pb, role_pb};
use super::{b64, status, PortContext};
use crate::control::nodes::check_printable;
use crate::control::records::{node_key, ClusterRecord, NodeRecord, CLUSTER_KEY};
use crate::control::tasks::{clean_text, ContainerStatus, ReportedStatus, TaskState};
use crate::control::types::{self as api, Availability, NodeState};
use crate::pb;

/// SwarmKit's default `Dispatcher.HeartbeatPeriod`.
pub const DEFAULT_HEARTBEAT: Duration = Duration::from_secs(5);
/// A node is Down after this many periods without a heartbeat.
pub const MISSED_PERIODS: u32 = 3;
/// Registrations allowed per node within [`REGISTRATION_WINDOW`].
pub const MAX_REGISTRATIONS: usize = 3;
pub const REGISTRATION_WINDOW: Duration = Duration::from_secs(8);
/// Most task status updates accepted in one call.
pub const MAX_TASK_UPDATES: usize = 1024;

struct Session {
    id: String,
    period: Duration,
    deadline: Instant,
    end: watch::Sender<bool>,
}

/// Live sessions and recent registrations, by node ID.
#[derive(Default)]
pub struct Sessions {
    live: Mutex<HashMap<String, Session>>,
    registrations: Mutex<HashMap<String, VecDeque<Instant>>>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Sessions {
    /// SwarmKit's registration rate limit: a fourth registration within 8 s is refused.
    fn admit(&self, node_id: &str) -> Result<(), Status> {
        let now = Instant::now();
        let mut regs = lock(&self.registrations);
        let q = regs.entry(node_id.to_string()).or_default();
        while q
            .front()
            .is_some_and(|t| now.duration_since(*t) > REGISTRATION_WINDOW)
        {
            q.pop_front();
        }
        if q.len() >= MAX_REGISTRATIONS {
            return Err(Status::unavailable(format!(
                "node {node_id} exceeded rate limit count of registrations"
            )));
        }
        q.push_back(now);
        Ok(())
    }

    fn register(&self, node_id: &str, period: Duration) -> (String, watch::Receiver<bool>) {
        let id = swarmguard_ca::new_id();
        let (end, end_rx) = watch::channel(false);
        let old = lock(&self.live).insert(
            node_id.to_string(),
            Session {
                id: id.clone(),
                period,
                deadline: Instant::now() + period * MISSED_PERIODS,
                end,
            },
        );
        if let Some(old) = old {
            let _ = old.end.send(true);
        }
        (id, end_rx)
    }

    /// After a (re)start, nodes the store still shows Ready get one heartbeat window to register
    /// again; otherwise [`expire_loop`] marks them Down. The placeholder session ID is random and
    /// never sent anywhere, so no call can match it.
    pub fn expect(&self, node_id: &str, period: Duration) {
        let (end, _) = watch::channel(false);
        lock(&self.live)
            .entry(node_id.to_string())
            .or_insert_with(|| Session {
                id: swarmguard_ca::new_id(),
                period,
                deadline: Instant::now() + period * MISSED_PERIODS,
                end,
            });
    }

    /// Checks `session_id` against the node's live session; `extend` renews its deadline.
    fn check(
        &self,
        node_id: &str,
        session_id: &str,
        extend: bool,
    ) -> Result<(Duration, watch::Receiver<bool>), Status> {
        let mut live = lock(&self.live);
        let Some(s) = live.get_mut(node_id) else {
            return Err(Status::not_found("node not registered"));
        };
        if s.id != session_id {
            return Err(Status::invalid_argument("session invalid"));
        }
        if extend {
            s.deadline = Instant::now() + s.period * MISSED_PERIODS;
        }
        Ok((s.period, s.end.subscribe()))
    }

    /// Ends the node's session (node removed or expired).
    pub fn end(&self, node_id: &str) {
        if let Some(s) = lock(&self.live).remove(node_id) {
            let _ = s.end.send(true);
        }
    }

    fn expired(&self) -> Vec<String> {
        let now = Instant::now();
        let mut live = lock(&self.live);
        let gone: Vec<String> = live
            .iter()
            .filter(|(_, s)| s.deadline <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for k in &gone {
            if let Some(s) = live.remove(k) {
                let _ = s.end.send(true);
            }
        }
        gone
    }
}

/// Marks nodes Down once their heartbeat deadline passed.
pub async fn expire_loop(s: Arc<PortContext>, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    let mut lost = crate::control::sessions::LostManagers::default();
    let mut ticks: u64 = 0;
    loop {
        tokio::select! {
            _ = crate::util::until_true(&mut stop) => return,
            _ = tick.tick() => {}
        }
        ticks += 1;
        // Once a second: the nodes of managers that are gone (several managers only).
        if ticks % 5 == 0 {
            if let Ok(cluster) = s.cluster() {
                let grace = 3 * heartbeat_period(&cluster.record);
                if let Err(e) = s.control.mark_orphaned_nodes_down(&mut lost, grace).await {
                    tracing::warn!(error = %e, "cannot mark the nodes of a lost manager down");
                }
            }
        }
        for node_id in s.dispatcher.expired() {
            tracing::info!(node_id = %node_id, "heartbeat deadline passed: node is down");
            if let Err(e) = s
                .control
                .node_down(&node_id, &s.manager_id, "heartbeat failure")
                .await
            {
                tracing::warn!(node_id = %node_id, error = %e, "cannot mark node down");
            }
        }
    }
}

pub fn heartbeat_period(cluster: &ClusterRecord) -> Duration {
    match cluster.spec.dispatcher.heartbeat_period {
        n if n > 0 => Duration::from_nanos(n as u64),
        _ => DEFAULT_HEARTBEAT,
    }
}

/// The period a node is told to wait: the configured one ±0.5 s, never below 100 ms.
fn jittered(period: Duration) -> Duration {
    let jitter_ms: i64 = rand::random_range(-500..=500);
    let ms = (period.as_millis() as i64 + jitter_ms).max(100);
    Duration::from_millis(ms as u64)
}

fn check_len(what: &str, len: usize, max: usize) -> Result<(), Status> {
    if len > max {
        return Err(Status::invalid_argument(format!(
            "{what} is {len} bytes; at most {max} are accepted"
        )));
    }
    Ok(())
}

/// The most a node's description may hold, field by field: every field is the node's own
/// claim and ends up in its record (the trust root only when it is the cluster's; see
/// `Control::node_ready`). A SwarmKit node sends well under 2 KiB.
pub const MAX_HOSTNAME: usize = 253;
pub const MAX_PLATFORM_FIELD: usize = 64;
pub const MAX_ENGINE_VERSION: usize = 256;
/// A bundle of a few PEM roots (a rotation shows two).
pub const MAX_TRUST_ROOT: usize = 8 * 1024;
/// A DER subject or SubjectPublicKeyInfo (an RSA-4096 key is ~550 bytes).
pub const MAX_ISSUER_FIELD: usize = 1024;
/// Everything above together: a few KiB per node, whatever it sends.
pub const MAX_DESCRIPTION: usize = MAX_HOSTNAME
    + 2 * MAX_PLATFORM_FIELD
    + MAX_ENGINE_VERSION
    + MAX_TRUST_ROOT
    + 2 * MAX_ISSUER_FIELD;

/// The node's own description, bounded and printable, in the Engine API's shape.
pub(super) fn description(d: &pb::NodeDescription) -> Result<api::NodeDescription, Status> {
    check_len("hostname", d.hostname.len(), MAX_HOSTNAME)?;
    let platform = d.platform.clone().unwrap_or_default();
    check_len(
        "platform architecture",
        platform.architecture.len(),
        MAX_PLATFORM_FIELD,
    )?;
    check_len("platform OS", platform.os.len(), MAX_PLATFORM_FIELD)?;
    let engine = d.engine.clone().unwrap_or_default();
    check_len(
        "engine version",
        engine.engine_version.len(),
        MAX_ENGINE_VERSION,
    )?;
    let tls = d.tls_info.clone().unwrap_or_default();
    check_len("TLS trust root", tls.trust_root.len(), MAX_TRUST_ROOT)?;
    // What `docker node ls|inspect` prints must not drive the operator's terminal.
    for (what, text) in [
        ("hostname", d.hostname.as_str()),
        ("platform architecture", &platform.architecture),
        ("platform OS", &platform.os),
        ("engine version", &engine.engine_version),
    ] {
        check_printable(what, text).map_err(status)?;
    }
    let trust_root = String::from_utf8_lossy(&tls.trust_root).into_owned();
    for line in trust_root.split('\n') {
        check_printable("TLS trust root", line).map_err(status)?;
    }
    check_len(
        "TLS issuer subject",
        tls.cert_issuer_subject.len(),
        MAX_ISSUER_FIELD,
    )?;
    check_len(
        "TLS issuer public key",
        tls.cert_issuer_public_key.len(),
        MAX_ISSUER_FIELD,
    )?;
    let res = d.resources.unwrap_or_default();
    Ok(api::NodeDescription {
        hostname: d.hostname.clone(),
        platform: api::Platform {
            architecture: platform.architecture,
            os: platform.os,
        },
        resources: api::Resources {
            nano_cpus: res.nano_cpus.max(0),
            memory_bytes: res.memory_bytes.max(0),
        },
        engine: api::EngineDescription {
            engine_version: engine.engine_version,
            labels: engine_labels(&engine.labels)?,
        },
        tls_info: api::TlsInfo {
            trust_root,
            cert_issuer_subject: b64(&tls.cert_issuer_subject),
            cert_issuer_public_key: b64(&tls.cert_issuer_public_key),
        },
    })
}

/// Most engine labels kept from a node's description, and their bytes together.
pub const MAX_ENGINE_LABELS: usize = 64;
pub const MAX_ENGINE_LABEL_BYTES: usize = 8 * 1024;

/// The engine's labels, bounded and printable (placement constraints match them).
fn engine_labels(
    labels: &std::collections::HashMap<String, String>,
) -> Result<std::collections::BTreeMap<String, String>, Status> {
    let bytes: usize = labels.iter().map(|(k, v)| k.len() + v.len()).sum();
    if labels.len() > MAX_ENGINE_LABELS || bytes > MAX_ENGINE_LABEL_BYTES {
        return Err(Status::invalid_argument(format!(
            "engine labels: at most {MAX_ENGINE_LABELS} labels and {MAX_ENGINE_LABEL_BYTES} bytes are accepted"
        )));
    }
    for (k, v) in labels {
        check_printable("engine label", k).map_err(status)?;
        check_printable("engine label", v).map_err(status)?;
    }
    Ok(labels.clone().into_iter().collect())
}

fn description_pb(d: &api::NodeDescription) -> pb::NodeDescription {
    pb::NodeDescription {
        hostname: d.hostname.clone(),
        platform: Some(pb::Platform {
            architecture: d.platform.architecture.clone(),
            os: d.platform.os.clone(),
        }),
        resources: Some(pb::Resources {
            nano_cpus: d.resources.nano_cpus,
            memory_bytes: d.resources.memory_bytes,
        }),
        engine: Some(pb::EngineDescription {
            engine_version: d.engine.engine_version.clone(),
            labels: d.engine.labels.clone().into_iter().collect(),
            ..Default::default()
        }),
        tls_info: Some(pb::NodeTlsInfo {
            trust_root: d.tls_info.trust_root.clone().into_bytes(),
            cert_issuer_subject: super::unb64(&d.tls_info.cert_issuer_subject),
            cert_issuer_public_key: super::unb64(&d.tls_info.cert_issuer_public_key),
        }),
        fips: false,
    }
}

pub fn node_pb(node: &NodeRecord, version: u64, cluster: &ClusterRecord) -> pb::Node {
    use pb::node_spec::Membership;
    use pb::node_status::State;
    let availability = match node.spec.availability {
        Availability::Active => pb::node_spec::Availability::Active,
        Availability::Pause => pb::node_spec::Availability::Pause,
        Availability::Drain => pb::node_spec::Availability::Drain,
    };
    let state = match node.status.state {
        NodeState::Ready => State::Ready,
        NodeState::Down => State::Down,
        NodeState::Disconnected => State::Disconnected,
        NodeState::Unknown => State::Unknown,
    };
    pb::Node {
        id: node.id.clone(),
        meta: Some(pb::Meta {
            version: Some(pb::Version { index: version }),
            ..Default::default()
        }),
        spec: Some(pb::NodeSpec {
            annotations: Some(pb::Annotations {
                name: node.spec.name.clone(),
                labels: node
                    .spec
                    .labels
                    .clone()
                    .unwrap_or_default()
                    .into_iter()
                    .collect(),
                indices: vec![],
            }),
            desired_role: role_pb(node.spec.role),
            membership: Membership::Accepted as i32,
            availability: availability as i32,
        }),
        description: Some(description_pb(&node.description)),
        status: Some(pb::NodeStatus {
            state: state as i32,
            message: node.status.message.clone(),
            addr: node.status.addr.clone(),
        }),
        certificate: Some(certificate_pb(node)),
        role: role_pb(node.role),
        vxlanudp_port: cluster.data_path_port,
    }
}

/// Every manager of the swarm, with SwarmKit's default weight, so a stock worker whose manager
/// dies picks another on its own (SwarmKit lists every raft member, reachable or not).
fn manager_peers(s: &PortContext) -> Vec<pb::WeightedPeer> {
    let mut peers: Vec<pb::WeightedPeer> = s
        .control
        .nodes()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|n| {
            let addr = n.record.manager_addr?;
            Some(pb::WeightedPeer {
                peer: Some(pb::Peer {
                    node_id: n.record.id,
                    addr,
                }),
                weight: 10,
            })
        })
        .collect();
    if !peers
        .iter()
        .any(|p| p.peer.as_ref().is_some_and(|p| p.node_id == s.manager_id))
    {
        peers.push(pb::WeightedPeer {
            peer: Some(pb::Peer {
                node_id: s.manager_id.clone(),
                addr: s.advertise_addr.clone(),
            }),
            weight: 10,
        });
    }
    peers
}

fn session_message(
    s: &PortContext,
    session_id: &str,
    node_id: &str,
) -> Result<pb::SessionMessage, Status> {
    let cluster = s.cluster()?;
    let node = s
        .control
        .node_by_id(node_id)
        .map_err(status)?
        .ok_or_else(|| Status::not_found("node not registered"))?;
    Ok(pb::SessionMessage {
        session_id: session_id.to_string(),
        node: Some(node_pb(&node.record, node.version, &cluster.record)),
        managers: manager_peers(s),
        network_bootstrap_keys: vec![],
        root_ca: cluster.record.root_ca_pem.as_bytes().to_vec(),
    })
}

/// The next store event, or `None` when `look` ticks first.
async fn next_event(
    events: &mut tokio::sync::broadcast::Receiver<crate::store::Applied>,
    look: &mut tokio::time::Interval,
) -> Option<Result<crate::store::Applied, tokio::sync::broadcast::error::RecvError>> {
    tokio::select! {
        ev = events.recv() => Some(ev),
        _ = look.tick() => None,
    }
}

/// What a node acts on from a SessionMessage; another message goes out when it changes.
fn watched(m: &pb::SessionMessage) -> (i32, i32, i32, i32, Vec<u8>, Vec<String>) {
    let n = m.node.clone().unwrap_or_default();
    let spec = n.spec.unwrap_or_default();
    let cert_state = n
        .certificate
        .and_then(|c| c.status)
        .map(|s| s.state)
        .unwrap_or_default();
    (
        spec.desired_role,
        n.role,
        spec.availability,
        cert_state,
        m.root_ca.clone(),
        m.managers
            .iter()
            .filter_map(|p| p.peer.as_ref().map(|p| p.addr.clone()))
            .collect(),
    )
}

pub struct DispatcherService(pub Arc<PortContext>);
pub struct LogBrokerService(pub Arc<PortContext>);

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for DispatcherService {
    type SessionStream = ReceiverStream<Result<pb::SessionMessage, Status>>;
    type AssignmentsStream = ReceiverStream<Result<pb::AssignmentsMessage, Status>>;

    async fn session(
        &self,
        req: Request<pb::SessionRequest>,
    ) -> Result<Response<Self::SessionStream>, Status> {
        let s = self.0.clone();
        let cluster = s.cluster()?;
        let me = authorize(&req, WORKER_OR_MANAGER, &cluster.record, &s.control)?;
        let addr = peer(&req)
            .map(|p| p.addr.ip().to_string())
            .unwrap_or_default();
        let desc = match &req.get_ref().description {
            Some(d) => Some(description(d)?),
            None => None,
        };
        if s.control.node_by_id(&me.node_id).map_err(status)?.is_none() {
            return Err(Status::not_found("node not registered"));
        }
        s.dispatcher.admit(&me.node_id)?;
        let mut events = s
            .control
            .subscribe_to(&[crate::control::records::NODE_PREFIX, CLUSTER_KEY]);
        let (session_id, mut end) = s
            .dispatcher
            .register(&me.node_id, heartbeat_period(&cluster.record));
        let updated = s
            .control
            .node_ready(&me.node_id, desc, addr, &s.manager_id)
            .await
            .map_err(status)?;
        if updated.is_none() {
            s.dispatcher.end(&me.node_id);
            return Err(Status::not_found("node not registered"));
        }
        tracing::info!(node_id = %me.node_id, "session registered: node is ready");
        let first = session_message(&s, &session_id, &me.node_id)?;
        let (tx, rx) = mpsc::channel(4);
        let _ = tx.send(Ok(first.clone())).await;
        let node_id = me.node_id;
        tokio::spawn(async move {
            let key = node_key(&node_id);
            let mut last = watched(&first);
            // A change of the raft group (a manager joined, was demoted or removed) changes
            // the manager list: the node hears of it without waiting for its next session.
            // Membership changes are not store events, so the loop also looks every 2 s.
            let mut members = s.control.store().member_addrs();
            let mut look = tokio::time::interval(Duration::from_secs(2));
            loop {
                tokio::select! {
                    _ = crate::util::until_true(&mut end) => return,
                    _ = tx.closed() => return,
                    ev = next_event(&mut events, &mut look) => {
                        let relevant = match ev {
                            Some(Ok(a)) => a.keys.iter().any(|k| *k == key || k == CLUSTER_KEY),
                            Some(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => true,
                            Some(Err(_)) => return,
                            // The look tick: only the group's membership may have changed.
                            None => {
                                let now = s.control.store().member_addrs();
                                let changed = now != members;
                                members = now;
                                changed
                            }
                        };
                        if !relevant {
                            continue;
                        }
                        match session_message(&s, &session_id, &node_id) {
                            Ok(m) => {
                                let w = watched(&m);
                                if w != last {
                                    last = w;
                                    if tx.send(Ok(m)).await.is_err() {
                                        return;
                                    }
                                }
                            }
                            Err(e) => {
                                s.dispatcher.end(&node_id);
                                let _ = tx.send(Err(e)).await;
                                return;
                            }
                        }
                    }
                }
            }
        });
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn heartbeat(
        &self,
        req: Request<pb::HeartbeatRequest>,
    ) -> Result<Response<pb::HeartbeatResponse>, Status> {
        let s = &self.0;
        let cluster = s.cluster()?;
        let me = authorize(&req, WORKER_OR_MANAGER, &cluster.record, &s.control)?;
        let (period, _) = s
            .dispatcher
            .check(&me.node_id, &req.get_ref().session_id, true)?;
        let p = jittered(period);
        Ok(Response::new(pb::HeartbeatResponse {
            period: Some(prost_types::Duration {
                seconds: p.as_secs() as i64,
                nanos: p.subsec_nanos() as i32,
            }),
        }))
    }

    async fn update_task_status(
        &self,
        req: Request<pb::UpdateTaskStatusRequest>,
    ) -> Result<Response<pb::UpdateTaskStatusResponse>, Status> {
        let s = &self.0;
        let cluster = s.cluster()?;
        let me = authorize(&req, WORKER_OR_MANAGER, &cluster.record, &s.control)?;
        let r = req.get_ref();
        s.dispatcher.check(&me.node_id, &r.session_id, false)?;
        if r.updates.len() > MAX_TASK_UPDATES {
            return Err(Status::invalid_argument(format!(
                "{} task updates in one call; at most {MAX_TASK_UPDATES} are accepted",
                r.updates.len()
            )));
        }
        let mut reports = Vec::with_capacity(r.updates.len());
        for u in &r.updates {
            let st = u.status.clone().unwrap_or_default();
            let Some(state) = TaskState::from_wire(st.state) else {
                return Err(Status::invalid_argument(format!(
                    "task {}: unknown task state {}",
                    u.task_id.chars().take(64).collect::<String>(),
                    st.state
                )));
            };
            check_len("task ID", u.task_id.len(), 64)?;
            let container = match st.runtime_status {
                Some(pb::task_status::RuntimeStatus::Container(c)) => {
                    check_len("container ID", c.container_id.len(), 128)?;
                    Some(ContainerStatus {
                        container_id: clean_text(&c.container_id),
                        pid: c.pid,
                        exit_code: c.exit_code,
                    })
                }
                None => None,
            };
            let report = ReportedStatus {
                state,
                message: st.message,
                err: st.err,
                container,
            };
            reports.push((u.task_id.clone(), report));
        }
        for (task_id, report) in reports {
            s.control
                .report_task_status(&me.node_id, &task_id, report)
                .await
                .map_err(status)?;
        }
        Ok(Response::new(pb::UpdateTaskStatusResponse {}))
    }

    async fn assignments(
        &self,
        req: Request<pb::AssignmentsRequest>,
    ) -> Result<Response<Self::AssignmentsStream>, Status> {
        let s = &self.0;
        let cluster = s.cluster()?;
        let me = authorize(&req, WORKER_OR_MANAGER, &cluster.record, &s.control)?;
        let (_, end) = s
            .dispatcher
            .check(&me.node_id, &req.get_ref().session_id, false)?;
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(super::assignments::stream(s.clone(), me.node_id, tx, end));
        Ok(Response::new(ReceiverStream::new(rx)))
    }
}

#[tonic::async_trait]
impl pb::log_broker_server::LogBroker for LogBrokerService {
    type ListenSubscriptionsStream = BoxStream<pb::SubscriptionMessage>;

    async fn listen_subscriptions(
        &self,
        req: Request<pb::ListenSubscriptionsRequest>,
    ) -> Result<Response<Self::ListenSubscriptionsStream>, Status> {
        let cluster = self.0.cluster()?;
        let me = authorize(&req, WORKER_OR_MANAGER, &cluster.record, &self.0.control)?;
        let rx = self.0.control.listen_logs(&me.node_id);
        let stream = ReceiverStream::new(rx).map(|s| Ok(super::logs::subscription_pb(&s)));
        Ok(Response::new(Box::pin(stream)))
    }

    async fn publish_logs(
        &self,
        req: Request<tonic::Streaming<pb::PublishLogsMessage>>,
    ) -> Result<Response<pb::PublishLogsResponse>, Status> {
        let cluster = self.0.cluster()?;
        let me = authorize(&req, WORKER_OR_MANAGER, &cluster.record, &self.0.control)?;
        super::logs::publish(&self.0.control, &me.node_id, req.into_inner()).await?;
        Ok(Response::new(pb::PublishLogsResponse {}))
    }
}
