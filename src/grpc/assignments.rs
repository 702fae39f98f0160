//! `Dispatcher.Assignments`: what a node must run and the secrets those tasks need.
//!
//! The first message is the COMPLETE set; each later one is INCREMENTAL, naming the previous
//! `results_in` in `applies_to`, and carries only what changed: a task whose desired state or
//! spec changed, a task or secret to remove. A secret goes to a node only while a task there,
//! between ASSIGNED and RUNNING, references it, and in the same message before that task; once no
//! such task remains, the node gets a REMOVE for it.

use std::collections::{BTreeMap, BTreeSet};

use tokio::sync::{mpsc, watch};
use tonic::Status;

use super::{status, PortContext};
use crate::control::audit::AuditEvent;
use crate::control::service_secrets::{NodeSecret, SECRET_KEY_PREFIX};
use crate::control::tasks::{TaskRecord, TaskState, TaskView, TASK_PREFIX};
use crate::pb;
use pb::assignment_change::AssignmentAction;

/// What a node holds: task fingerprints and secret versions, by ID.
#[derive(Default)]
pub struct Held {
    tasks: BTreeMap<String, String>,
    secrets: BTreeMap<String, u64>,
}

fn timestamp(rfc3339: &str) -> Option<prost_types::Timestamp> {
    let t = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    Some(prost_types::Timestamp {
        seconds: t.unix_timestamp(),
        nanos: t.nanosecond() as i32,
    })
}

pub fn task_pb(v: &TaskView) -> pb::Task {
    let r = &v.record;
    let c = &r.spec.container_spec;
    let secrets = c
        .secrets
        .iter()
        .map(|s| pb::SecretReference {
            secret_id: s.secret_id.clone(),
            secret_name: s.secret_name.clone(),
            target: s.file.as_ref().map(|f| {
                pb::secret_reference::Target::File(pb::FileTarget {
                    name: f.name.clone(),
                    uid: f.uid.clone(),
                    gid: f.gid.clone(),
                    mode: f.mode,
                })
            }),
        })
        .collect();
    let container = pb::ContainerSpec {
        image: c.image.clone(),
        labels: c.labels.clone().into_iter().collect(),
        command: c.command.clone(),
        args: c.args.clone(),
        env: c.env.clone(),
        dir: c.dir.clone(),
        user: c.user.clone(),
        secrets,
    };
    pb::Task {
        id: r.id.clone(),
        meta: Some(pb::Meta {
            version: Some(pb::Version { index: v.version }),
            created_at: timestamp(&r.created_at),
            updated_at: timestamp(&r.updated_at),
        }),
        spec: Some(pb::TaskSpec {
            runtime: Some(pb::task_spec::Runtime::Container(container)),
        }),
        service_id: r.service_id.clone(),
        slot: r.slot,
        node_id: r.node_id.clone(),
        annotations: Some(pb::Annotations::default()),
        service_annotations: Some(pb::Annotations {
            name: r.service_name.clone(),
            ..Default::default()
        }),
        status: Some(pb::TaskStatus {
            timestamp: timestamp(&r.status.timestamp),
            state: r.status.state.wire(),
            message: r.status.message.clone(),
            err: r.status.err.clone(),
            runtime_status: r.status.container_status.as_ref().map(|cs| {
                pb::task_status::RuntimeStatus::Container(pb::ContainerStatus {
                    container_id: cs.container_id.clone(),
                    pid: cs.pid,
                    exit_code: cs.exit_code,
                })
            }),
        }),
        desired_state: r.desired_state.wire(),
    }
}

fn secret_pb(s: &NodeSecret) -> pb::Secret {
    pb::Secret {
        id: s.id.clone(),
        meta: Some(pb::Meta {
            version: Some(pb::Version { index: s.version }),
            ..Default::default()
        }),
        spec: Some(pb::SecretSpec {
            annotations: Some(pb::Annotations {
                name: s.name.clone(),
                ..Default::default()
            }),
            data: s.data.to_vec(),
        }),
        internal: false,
    }
}

/// What the node acts on: a change here is sent again; a status the node itself reported is not.
fn fingerprint(r: &TaskRecord) -> String {
    format!(
        "{}|{}",
        r.desired_state.wire(),
        serde_json::to_string(&r.spec).unwrap_or_default()
    )
}

/// Whether a task in this state still needs its secrets on the node.
fn needs_secrets(r: &TaskRecord) -> bool {
    (TaskState::Assigned..=TaskState::Running).contains(&r.status.state)
}

fn change(item: pb::assignment::Item, action: AssignmentAction) -> pb::AssignmentChange {
    pb::AssignmentChange {
        assignment: Some(pb::Assignment { item: Some(item) }),
        action: action as i32,
    }
}

/// The changes that bring `held` to what `node_id` should hold now, and `held` updated.
pub fn diff(
    s: &PortContext,
    node_id: &str,
    held: &mut Held,
) -> Result<Vec<pb::AssignmentChange>, Status> {
    let tasks: Vec<TaskView> = s
        .control
        .tasks()
        .map_err(status)?
        .into_iter()
        .filter(|t| t.record.node_id == node_id && t.record.status.state >= TaskState::Assigned)
        .collect();
    let mut secret_ids = BTreeSet::new();
    for t in tasks.iter().filter(|t| needs_secrets(&t.record)) {
        for r in &t.record.spec.container_spec.secrets {
            secret_ids.insert(r.secret_id.clone());
        }
    }
    let mut changes = Vec::new();
    let mut secrets_now = BTreeMap::new();
    let audit = s.control.audit();
    for id in &secret_ids {
        // A secret removed meanwhile cannot be delivered; its task will fail on the node.
        let Some(secret) = s.control.secret_for_node(id).map_err(status)? else {
            continue;
        };
        secrets_now.insert(id.clone(), secret.version);
        if held.secrets.get(id) != Some(&secret.version) {
            let task_ids = tasks
                .iter()
                .filter(|t| needs_secrets(&t.record))
                .filter(|t| {
                    t.record
                        .spec
                        .container_spec
                        .secrets
                        .iter()
                        .any(|r| r.secret_id == *id)
                })
                .map(|t| t.record.id.clone())
                .collect();
            audit.record(AuditEvent::SecretDelivered {
                secret_id: id.clone(),
                node_id: node_id.to_string(),
                task_ids,
            });
            changes.push(change(
                pb::assignment::Item::Secret(secret_pb(&secret)),
                AssignmentAction::Update,
            ));
        }
    }
    let mut tasks_now = BTreeMap::new();
    for t in &tasks {
        let fp = fingerprint(&t.record);
        if held.tasks.get(&t.record.id) != Some(&fp) {
            changes.push(change(
                pb::assignment::Item::Task(task_pb(t)),
                AssignmentAction::Update,
            ));
        }
        tasks_now.insert(t.record.id.clone(), fp);
    }
    for id in held.tasks.keys().filter(|id| !tasks_now.contains_key(*id)) {
        changes.push(change(
            pb::assignment::Item::Task(pb::Task {
                id: id.clone(),
                ..Default::default()
            }),
            AssignmentAction::Remove,
        ));
    }
    for id in held
        .secrets
        .keys()
        .filter(|id| !secrets_now.contains_key(*id))
    {
        audit.record(AuditEvent::SecretWithdrawn {
            secret_id: id.clone(),
            node_id: node_id.to_string(),
        });
        changes.push(change(
            pb::assignment::Item::Secret(pb::Secret {
                id: id.clone(),
                ..Default::default()
            }),
            AssignmentAction::Remove,
        ));
    }
    held.tasks = tasks_now;
    held.secrets = secrets_now;
    Ok(changes)
}

/// For benchmarks (`benches/services.rs`): the IDs of the tasks a message carries, to log once
/// it went to the transport. Built only when debug logging is on for this module.
fn task_ids(changes: &[pb::AssignmentChange]) -> Option<String> {
    if !tracing::enabled!(tracing::Level::DEBUG) {
        return None;
    }
    let ids: Vec<&str> = changes
        .iter()
        .filter_map(|c| match c.assignment.as_ref()?.item.as_ref()? {
            pb::assignment::Item::Task(t) => Some(t.id.as_str()),
            pb::assignment::Item::Secret(_) | pb::assignment::Item::Config(_) => None,
        })
        .collect();
    Some(ids.join(","))
}

/// Sends one message; false once the node hung up.
async fn send(
    tx: &mpsc::Sender<Result<pb::AssignmentsMessage, Status>>,
    node_id: &str,
    msg: pb::AssignmentsMessage,
) -> bool {
    let (results_in, tasks) = (msg.results_in.clone(), task_ids(&msg.changes));
    if tx.send(Ok(msg)).await.is_err() {
        return false;
    }
    if let Some(tasks) = tasks {
        tracing::debug!(node = %node_id, %results_in, %tasks, "assignments sent");
    }
    true
}

/// Feeds one node's Assignments stream until the session ends or the node hangs up.
pub async fn stream(
    s: std::sync::Arc<PortContext>,
    node_id: String,
    tx: mpsc::Sender<Result<pb::AssignmentsMessage, Status>>,
    mut end: watch::Receiver<bool>,
) {
    let mut events = s.control.subscribe_to(&[TASK_PREFIX, SECRET_KEY_PREFIX]);
    let mut held = Held::default();
    let first = match diff(&s, &node_id, &mut held) {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            return;
        }
    };
    // The deliveries' audit lines go to disk before the secrets go out.
    s.control.audit().synced().await;
    let mut seq: u64 = 1;
    let msg = pb::AssignmentsMessage {
        r#type: pb::assignments_message::Type::Complete as i32,
        applies_to: String::new(),
        results_in: seq.to_string(),
        changes: first,
    };
    if !send(&tx, &node_id, msg).await {
        return;
    }
    loop {
        tokio::select! {
            _ = crate::util::until_true(&mut end) => return,
            _ = tx.closed() => return,
            ev = events.recv() => {
                let relevant = match ev {
                    Ok(a) => a.keys.iter().any(|k| k.starts_with(TASK_PREFIX) || k.starts_with(SECRET_KEY_PREFIX)),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(_) => return,
                };
                if !relevant {
                    continue;
                }
                while events.try_recv().is_ok() {}
            }
        }
        let changes = match diff(&s, &node_id, &mut held) {
            Ok(c) => c,
            Err(e) => {
                let _ = tx.send(Err(e)).await;
                return;
            }
        };
        if changes.is_empty() {
            continue;
        }
        s.control.audit().synced().await;
        let msg = pb::AssignmentsMessage {
            r#type: pb::assignments_message::Type::Incremental as i32,
            applies_to: seq.to_string(),
            results_in: (seq + 1).to_string(),
            changes,
        };
        seq += 1;
        if !send(&tx, &node_id, msg).await {
            return;
        }
    }
}
