//! The orchestrator: compares every service with its tasks and writes what must change (new
//! tasks for empty slots or eligible nodes, shutdowns for extra slots, Down or drained nodes and
//! outdated tasks, restarts per policy, history trimming, removal of a removed service's tasks),
//! then the scheduler (`scheduler.rs`) places pending tasks. One loop on the leader, woken by store events on
//! services, tasks and nodes and by a timer for delays; each pass is idempotent, so a lost race
//! is simply redone on the next pass.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

use super::constraints::node_eligible;
use super::error::ControlError;
use super::records::{self, NodeRecord};
use super::services::{ServiceRecord, UpdateStatus, SERVICE_PREFIX};
use super::tasks::{task_key, TaskRecord, TaskState, TaskStatus, TaskView, TASK_PREFIX};
use super::types::{Availability, NodeState};
use super::Control;
use crate::store::{Check, Op, Txn, TxnOutcome};
use crate::util::now_rfc3339;

/// SwarmKit's default `TaskHistoryRetentionLimit`.
pub const DEFAULT_HISTORY: usize = 5;
/// Restart delay when the policy names none (SwarmKit's 5 s).
pub const DEFAULT_RESTART_DELAY_MS: i64 = 5_000;
/// How often the loop runs without a store event (restart and update delays).
const TICK: Duration = Duration::from_millis(250);
/// Writes per transaction.
const BATCH: usize = 128;

/// Whether a task on `node` must move: its node is gone, Down or drained.
fn node_lost(nodes: &HashMap<String, NodeRecord>, node_id: &str) -> bool {
    if node_id.is_empty() {
        return false;
    }
    match nodes.get(node_id) {
        None => true,
        Some(n) => n.status.state == NodeState::Down || n.spec.availability == Availability::Drain,
    }
}

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The writes one pass decided on.
#[derive(Default)]
pub(super) struct Plan {
    /// New tasks (their keys must be absent).
    pub created: Vec<TaskRecord>,
    /// Changed tasks, with the version they were read at.
    pub changed: Vec<(TaskRecord, u64)>,
    pub deleted: Vec<(String, u64)>,
    pub service_status: Vec<(String, UpdateStatus)>,
}

impl Plan {
    fn shutdown(&mut self, t: &TaskView) {
        let mut r = t.record.clone();
        r.desired_state = TaskState::Shutdown;
        self.changed.push((r, t.version));
    }

    fn is_empty(&self) -> bool {
        self.created.is_empty()
            && self.changed.is_empty()
            && self.deleted.is_empty()
            && self.service_status.is_empty()
    }
}

/// A new pending task for `slot` (or for `node_id`, global).
fn new_task(
    s: &ServiceRecord,
    slot: u64,
    node_id: &str,
    attempt: u64,
    not_before_ms: i64,
) -> TaskRecord {
    let now = now_rfc3339();
    TaskRecord {
        id: swarmguard_ca::new_id(),
        created_at: now.clone(),
        updated_at: now,
        service_id: s.id.clone(),
        service_name: s.spec.name.clone(),
        slot,
        node_id: node_id.to_string(),
        spec: s.task_template(),
        status: TaskStatus::new(TaskState::Pending, "pending task scheduling"),
        desired_state: TaskState::Running,
        attempt,
        not_before_ms,
    }
}

/// Whether the restart policy replaces a task that ended in `state`, and after what delay.
fn restart_after(s: &ServiceRecord, t: &TaskRecord) -> Option<i64> {
    let policy = s
        .spec
        .task_template
        .restart_policy
        .clone()
        .unwrap_or_default();
    let restart = match policy.condition.as_str() {
        "none" => false,
        "on-failure" => t.status.state != TaskState::Complete,
        _ => true,
    };
    if !restart || (policy.max_attempts > 0 && t.attempt + 1 > policy.max_attempts) {
        return None;
    }
    Some(
        policy
            .delay
            .map_or(DEFAULT_RESTART_DELAY_MS, |ns| ns / 1_000_000),
    )
}

struct Ctx<'a> {
    nodes: &'a HashMap<String, NodeRecord>,
    now_ms: i64,
    history: usize,
}

/// One slot (replicated) or one node (global) of a service: its live task decides.
fn reconcile_group(
    ctx: &Ctx,
    s: &ServiceRecord,
    key: (u64, &str),
    group: &[&TaskView],
    wanted: bool,
    plan: &mut Plan,
    updating: &mut u64,
) {
    let (slot, node_id) = key;
    let mut live: Vec<&TaskView> = group
        .iter()
        .copied()
        .filter(|t| t.record.is_live())
        .collect();
    live.sort_by(|a, b| b.record.created_at.cmp(&a.record.created_at));
    if !wanted {
        for t in &live {
            plan.shutdown(t);
        }
        return;
    }
    // Several live tasks: a start-first update in flight. Keep the newest once it runs.
    if live.len() > 1 {
        if live[0].record.status.state == TaskState::Running {
            for t in &live[1..] {
                plan.shutdown(t);
            }
        }
        *updating = updating.saturating_add(1);
        return;
    }
    let Some(t) = live.first() else {
        // A task that ended on its own and that the policy does not restart stays ended.
        let newest = group
            .iter()
            .max_by(|a, b| a.record.created_at.cmp(&b.record.created_at));
        let ended_for_good = newest.is_some_and(|n| {
            matches!(
                n.record.status.state,
                TaskState::Complete | TaskState::Failed | TaskState::Rejected
            ) && !s.is_dirty(&n.record)
                && restart_after(s, &n.record).is_none()
        });
        if !ended_for_good {
            plan.created.push(new_task(s, slot, node_id, 0, 0));
        }
        return;
    };
    let r = &t.record;
    if node_lost(ctx.nodes, &r.node_id) {
        plan.shutdown(t);
        plan.created.push(new_task(s, slot, node_id, r.attempt, 0));
        return;
    }
    if r.status.state.is_terminal() {
        plan.shutdown(t);
        if let Some(delay) = restart_after(s, r) {
            plan.created.push(new_task(
                s,
                slot,
                node_id,
                r.attempt + 1,
                ctx.now_ms + delay,
            ));
        }
        return;
    }
    if s.is_dirty(r) {
        let p = s.spec.update_parallelism();
        if p != 0 && *updating >= p {
            return;
        }
        *updating = updating.saturating_add(1);
        let start_first = s
            .spec
            .update_config
            .as_ref()
            .is_some_and(|u| u.order == "start-first");
        if !start_first {
            plan.shutdown(t);
        }
        plan.created.push(new_task(s, slot, node_id, 0, 0));
        return;
    }
    if r.status.state < TaskState::Running {
        *updating = updating.saturating_add(1);
    }
}

/// Deletes the oldest ended tasks of a group beyond the history limit.
fn trim_history(ctx: &Ctx, group: &[&TaskView], plan: &mut Plan) {
    let mut sorted: Vec<&TaskView> = group.to_vec();
    sorted.sort_by(|a, b| b.record.created_at.cmp(&a.record.created_at));
    for t in sorted.iter().skip(ctx.history) {
        let r = &t.record;
        let gone = r.status.state.is_terminal()
            || node_lost(ctx.nodes, &r.node_id)
            || r.node_id.is_empty();
        if !r.is_live() && gone {
            plan.deleted.push((r.id.clone(), t.version));
        }
    }
}

/// Tasks of a removed service: desired Remove first (the worker stops the container), then
/// deleted once ended or on a node that is gone.
fn remove_orphans(ctx: &Ctx, tasks: &[&TaskView], plan: &mut Plan) {
    for t in tasks {
        let r = &t.record;
        let ended = r.status.state.is_terminal()
            || r.node_id.is_empty()
            || node_lost(ctx.nodes, &r.node_id);
        if r.desired_state == TaskState::Remove && ended {
            plan.deleted.push((r.id.clone(), t.version));
        } else if r.desired_state != TaskState::Remove {
            let mut c = r.clone();
            c.desired_state = TaskState::Remove;
            plan.changed.push((c, t.version));
        }
    }
}

/// Whether a task of the current update was created less than `UpdateConfig.Delay` ago.
fn in_update_delay(ctx: &Ctx, s: &ServiceRecord, tasks: &[&TaskView]) -> bool {
    let delay_ms = s
        .spec
        .update_config
        .as_ref()
        .map_or(0, |u| u.delay / 1_000_000);
    let Some(started) = s
        .update_status
        .as_ref()
        .map(|u| crate::util::unix_ms(&u.started_at))
    else {
        return false;
    };
    delay_ms > 0
        && tasks.iter().any(|t| {
            let created = crate::util::unix_ms(&t.record.created_at);
            t.record.is_live()
                && !s.is_dirty(&t.record)
                && created >= started
                && ctx.now_ms < created + delay_ms
        })
}

fn reconcile_service(ctx: &Ctx, s: &ServiceRecord, tasks: &[&TaskView], plan: &mut Plan) {
    let mut groups: BTreeMap<(u64, String), Vec<&TaskView>> = BTreeMap::new();
    for t in tasks {
        let node = if t.record.slot == 0 {
            t.record.node_id.clone()
        } else {
            String::new()
        };
        groups.entry((t.record.slot, node)).or_default().push(t);
    }
    // UpdateConfig.Delay: the next batch waits until the last one is `delay` old; counting a
    // full batch as in flight holds it back meanwhile.
    let mut updating = if in_update_delay(ctx, s, tasks) {
        s.spec.update_parallelism()
    } else {
        0
    };
    let constraints = s.spec.task_template.constraints().to_vec();
    match s.spec.replicas() {
        Some(n) => {
            for slot in 1..=n {
                groups.entry((slot, String::new())).or_default();
            }
            for ((slot, node), group) in &groups {
                reconcile_group(
                    ctx,
                    s,
                    (*slot, node),
                    group,
                    *slot <= n,
                    plan,
                    &mut updating,
                );
            }
        }
        None => {
            for (id, node) in ctx.nodes {
                if node_eligible(node, &constraints) {
                    groups.entry((0, id.clone())).or_default();
                }
            }
            for ((slot, node_id), group) in &groups {
                let wanted = ctx
                    .nodes
                    .get(node_id)
                    .is_some_and(|n| node_eligible(n, &constraints));
                reconcile_group(ctx, s, (*slot, node_id), group, wanted, plan, &mut updating);
            }
        }
    }
    for group in groups.values() {
        trim_history(ctx, group, plan);
    }
    update_progress(s, tasks, plan);
}

/// Marks a rolling update (or rollback) completed once no live task runs an old template and
/// every live task runs.
fn update_progress(s: &ServiceRecord, tasks: &[&TaskView], plan: &mut Plan) {
    let Some(st) = &s.update_status else { return };
    let done_state = match st.state.as_str() {
        "updating" => "completed",
        "rollback_started" => "rollback_completed",
        _ => return,
    };
    let live: Vec<&TaskRecord> = tasks
        .iter()
        .map(|t| &t.record)
        .filter(|t| t.is_live())
        .collect();
    let settled = !live.is_empty()
        && live
            .iter()
            .all(|t| !s.is_dirty(t) && t.status.state == TaskState::Running);
    if settled {
        let message = if done_state == "completed" {
            "update completed"
        } else {
            "rollback completed"
        };
        plan.service_status.push((
            s.id.clone(),
            UpdateStatus {
                state: done_state.into(),
                started_at: st.started_at.clone(),
                completed_at: now_rfc3339(),
                message: message.into(),
            },
        ));
    }
}

impl Control {
    /// One orchestration pass: decide, then write.
    pub async fn orchestrate(&self) -> Result<(), ControlError> {
        let services: Vec<ServiceRecord> = records::list(&self.store, SERVICE_PREFIX)?
            .into_iter()
            .map(|s| s.record)
            .collect();
        let tasks: Vec<TaskView> = records::list(&self.store, TASK_PREFIX)?;
        // Nothing to place or reconcile: skip decoding every node record, which every join,
        // renewal and session change would otherwise cost (O(nodes) per node event).
        if services.is_empty() && tasks.is_empty() {
            return Ok(());
        }
        let nodes: HashMap<String, NodeRecord> = self
            .nodes()?
            .into_iter()
            .map(|n| (n.record.id.clone(), n.record))
            .collect();
        let mut by_service: HashMap<&str, Vec<&TaskView>> = HashMap::new();
        for t in &tasks {
            by_service
                .entry(t.record.service_id.as_str())
                .or_default()
                .push(t);
        }
        let history = match self
            .cluster()?
            .record
            .spec
            .orchestration
            .task_history_retention_limit
        {
            Some(n) if n > 0 => (n as usize).min(1000),
            _ => DEFAULT_HISTORY,
        };
        let ctx = Ctx {
            nodes: &nodes,
            now_ms: now_ms(),
            history,
        };
        let mut plan = Plan::default();
        for s in &services {
            let ts = by_service.remove(s.id.as_str()).unwrap_or_default();
            reconcile_service(&ctx, s, &ts, &mut plan);
        }
        for orphans in by_service.values() {
            remove_orphans(&ctx, orphans, &mut plan);
        }
        self.write_plan(plan).await?;
        self.schedule(&nodes).await
    }

    async fn write_plan(&self, plan: Plan) -> Result<(), ControlError> {
        if plan.is_empty() {
            return Ok(());
        }
        let mut ops: Vec<(Option<Check>, Op)> = Vec::new();
        for t in &plan.created {
            ops.push((
                Some(Check::Absent {
                    key: task_key(&t.id),
                }),
                records::put(&task_key(&t.id), t)?,
            ));
        }
        for (t, v) in &plan.changed {
            let mut t = t.clone();
            t.updated_at = now_rfc3339();
            let key = task_key(&t.id);
            ops.push((
                Some(Check::Version {
                    key: key.clone(),
                    version: *v,
                }),
                records::put(&key, &t)?,
            ));
        }
        for (id, v) in &plan.deleted {
            let key = task_key(id);
            ops.push((
                Some(Check::Version {
                    key: key.clone(),
                    version: *v,
                }),
                Op::Delete { key },
            ));
        }
        self.apply_batched(ops).await?;
        for (id, st) in plan.service_status {
            records::update(
                &self.store,
                &super::services::service_key(&id),
                "service",
                |s: &mut ServiceRecord| {
                    s.update_status = Some(st.clone());
                    Ok(())
                },
            )
            .await?;
        }
        Ok(())
    }

    /// Applies guarded writes in batches; a batch that lost a race is retried write by write,
    /// so one task a node just updated does not hold back the others.
    pub(super) async fn apply_batched(
        &self,
        ops: Vec<(Option<Check>, Op)>,
    ) -> Result<(), ControlError> {
        for chunk in ops.chunks(BATCH) {
            let txn = Txn {
                checks: chunk.iter().filter_map(|(c, _)| c.clone()).collect(),
                ops: chunk.iter().map(|(_, o)| o.clone()).collect(),
            };
            if let TxnOutcome::Committed { .. } = self.apply(txn).await? {
                continue;
            }
            for (c, o) in chunk {
                let txn = Txn {
                    checks: c.iter().cloned().collect(),
                    ops: vec![o.clone()],
                };
                // A lost race here is decided again on the next pass.
                let _ = self.apply(txn).await?;
            }
        }
        Ok(())
    }
}

/// Runs orchestration passes until `stop`: after every store change to services, tasks or
/// nodes (coalesced), and on a timer.
pub async fn run(control: Arc<Control>, mut stop: watch::Receiver<bool>) {
    let mut events = control.subscribe_to(&[SERVICE_PREFIX, TASK_PREFIX, records::NODE_PREFIX]);
    let mut tick = tokio::time::interval(TICK);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = crate::util::until_true(&mut stop) => return,
            _ = tick.tick() => {}
            ev = events.recv() => {
                let relevant = match ev {
                    Ok(a) => a.keys.iter().any(|k| {
                        k.starts_with(SERVICE_PREFIX) || k.starts_with(TASK_PREFIX) || k.starts_with(records::NODE_PREFIX)
                    }),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(_) => return,
                };
                if !relevant {
                    continue;
                }
                // Coalesce a burst of events into one pass.
                while events.try_recv().is_ok() {}
            }
        }
        // Only the leader orchestrates, as in SwarmKit: every manager deciding from its own
        // (possibly lagging) copy created a task for the same slot twice, one per manager, and
        // shut the extra down on the next pass.
        if control.local_node_id().is_none() || !control.store().is_leader() {
            continue;
        }
        if let Err(e) = control.orchestrate().await {
            if !matches!(e, ControlError::NotManager) {
                tracing::warn!(error = %e, "orchestration pass failed; retrying");
            }
        }
    }
}
