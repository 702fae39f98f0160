//! The scheduler: gives each pending task a node. Candidates are Ready, Active nodes that
//! satisfy the service's constraints; among them the one with the fewest live tasks of the same
//! service wins, then the fewest live tasks overall, then the lowest node ID, so replicas
//! spread. A task no node can take stays pending with the reason in `Err`.

use std::collections::HashMap;

use super::constraints::node_eligible;
use super::error::ControlError;
use super::records::{self, NodeRecord};
use super::tasks::{task_key, TaskRecord, TaskState, TaskView, TASK_PREFIX};
use super::Control;
use crate::store::Check;
use crate::util::now_rfc3339;

fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// SwarmKit's wording for a task nothing can take.
fn no_node_reason(nodes: &HashMap<String, NodeRecord>, constraints: &[String]) -> String {
    let unavailable = nodes.values().filter(|n| !node_eligible(n, &[])).count();
    let unsatisfied = nodes.len() - unavailable;
    let mut parts = Vec::new();
    if unavailable > 0 {
        parts.push(format!(
            "{unavailable} node{} not available for new tasks",
            if unavailable == 1 { "" } else { "s" }
        ));
    }
    if unsatisfied > 0 && !constraints.is_empty() {
        parts.push(format!(
            "scheduling constraints not satisfied on {unsatisfied} node{}",
            if unsatisfied == 1 { "" } else { "s" }
        ));
    }
    format!("no suitable node ({})", parts.join("; "))
}

/// Picks a node for `t`, counting what this pass already placed.
fn choose(
    t: &TaskRecord,
    nodes: &HashMap<String, NodeRecord>,
    per_service: &HashMap<(String, String), usize>,
    per_node: &HashMap<String, usize>,
) -> Option<String> {
    let constraints = t.spec.constraints().to_vec();
    if !t.node_id.is_empty() {
        // A global task names its node already: it may only go there.
        return nodes
            .get(&t.node_id)
            .filter(|n| node_eligible(n, &constraints))
            .map(|n| n.id.clone());
    }
    nodes
        .values()
        .filter(|n| node_eligible(n, &constraints))
        .min_by_key(|n| {
            (
                per_service
                    .get(&(t.service_id.clone(), n.id.clone()))
                    .copied()
                    .unwrap_or(0),
                per_node.get(&n.id).copied().unwrap_or(0),
                n.id.clone(),
            )
        })
        .map(|n| n.id.clone())
}

impl Control {
    /// One scheduling pass over the pending tasks.
    pub(super) async fn schedule(
        &self,
        nodes: &HashMap<String, NodeRecord>,
    ) -> Result<(), ControlError> {
        let tasks: Vec<TaskView> = records::list(&self.store, TASK_PREFIX)?;
        let mut per_service: HashMap<(String, String), usize> = HashMap::new();
        let mut per_node: HashMap<String, usize> = HashMap::new();
        for t in tasks.iter().map(|t| &t.record) {
            if t.is_live() && !t.node_id.is_empty() && t.status.state >= TaskState::Assigned {
                *per_service
                    .entry((t.service_id.clone(), t.node_id.clone()))
                    .or_default() += 1;
                *per_node.entry(t.node_id.clone()).or_default() += 1;
            }
        }
        let now = now_ms();
        let mut pending: Vec<&TaskView> = tasks
            .iter()
            .filter(|t| {
                let r = &t.record;
                r.status.state < TaskState::Assigned
                    && r.desired_state == TaskState::Running
                    && r.not_before_ms <= now
            })
            .collect();
        pending.sort_by(|a, b| {
            (&a.record.service_id, a.record.slot).cmp(&(&b.record.service_id, b.record.slot))
        });
        let mut ops = Vec::new();
        for t in pending {
            let mut r = t.record.clone();
            match choose(&r, nodes, &per_service, &per_node) {
                Some(node) => {
                    *per_service
                        .entry((r.service_id.clone(), node.clone()))
                        .or_default() += 1;
                    *per_node.entry(node.clone()).or_default() += 1;
                    r.node_id = node;
                    r.status = super::tasks::TaskStatus::new(
                        TaskState::Assigned,
                        "scheduler assigned task to node",
                    );
                }
                None => {
                    let constraints = r.spec.constraints().to_vec();
                    let err = no_node_reason(nodes, &constraints);
                    if r.status.err == err {
                        continue;
                    }
                    r.status.err = err;
                    r.status.timestamp = now_rfc3339();
                }
            }
            r.updated_at = now_rfc3339();
            let key = task_key(&r.id);
            ops.push((
                Some(Check::Version {
                    key: key.clone(),
                    version: t.version,
                }),
                records::put(&key, &r)?,
            ));
        }
        self.apply_batched(ops).await
    }
}
