//! Several managers: who notices that a node is gone. Each manager runs its own dispatcher and
//! marks Down the nodes whose sessions it holds when their heartbeats stop. When the manager
//! holding a session is itself gone, nobody would: the leader does it, for the nodes whose
//! session manager it has not heard from for the whole grace (SwarmKit runs its dispatcher on
//! the leader alone, so it notices these itself).

use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

use super::error::ControlError;
use super::types::NodeState;
use super::Control;

/// When the leader first saw each lost session manager gone. Kept by the caller's loop; a new
/// leader starts empty, so after a leadership change every node gets the full grace again.
#[derive(Debug, Default)]
pub struct LostManagers(HashMap<String, Instant>);

impl Control {
    /// On the leader of several managers: marks Down each Ready node whose session is held by
    /// a manager that has been unreachable (or gone from the swarm) for `grace`. Returns how
    /// many it marked. Elsewhere it forgets what it saw and does nothing.
    pub async fn mark_orphaned_nodes_down(
        &self,
        lost: &mut LostManagers,
        grace: Duration,
    ) -> Result<usize, ControlError> {
        if !self.store.is_leader() || self.store.member_addrs().len() < 2 {
            lost.0.clear();
            return Ok(0);
        }
        let own = self.local_node_id();
        let reachable: BTreeSet<u64> = self
            .store
            .members()
            .into_iter()
            .filter(|m| m.reachable)
            .map(|m| m.id)
            .collect();
        let nodes = self.nodes()?;
        let alive: BTreeSet<&str> = nodes
            .iter()
            .filter(|n| n.record.manager_addr.is_some())
            .filter(|n| {
                own.as_deref() == Some(n.record.id.as_str())
                    || n.record.raft_id.is_some_and(|r| reachable.contains(&r))
            })
            .map(|n| n.record.id.as_str())
            .collect();
        let now = Instant::now();
        let gone: BTreeSet<&str> = nodes
            .iter()
            .filter_map(|n| n.record.session_manager.as_deref())
            .filter(|m| !alive.contains(m))
            .collect();
        lost.0.retain(|m, _| gone.contains(m.as_str()));
        for m in &gone {
            lost.0.entry((*m).to_string()).or_insert(now);
        }
        let mut marked = 0;
        for n in &nodes {
            let r = &n.record;
            let Some(m) = r.session_manager.as_deref() else {
                continue;
            };
            let overdue = lost
                .0
                .get(m)
                .is_some_and(|t| now.duration_since(*t) >= grace);
            if overdue && r.manager_addr.is_none() && r.status.state == NodeState::Ready {
                tracing::info!(node_id = %r.id, session_manager = %m, "the manager holding its session is gone: node is down");
                self.node_down(&r.id, m, "heartbeat failure: its manager is unreachable")
                    .await?;
                marked += 1;
            }
        }
        Ok(marked)
    }
}
