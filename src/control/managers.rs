//! Several managers: the rules for swarmguard managers in one Raft group. Adding a manager
//! that holds a manager certificate, taking on the identity a join brought, and what
//! `docker node ls` shows of each manager (Leader / Reachable / Unreachable).
//!
//! The dialling and serving of the cluster port during a join are the edge's (`grpc::join`).

use std::collections::BTreeMap;
use std::net::SocketAddr;

use super::ca::local::LocalIdentity;
use super::ca::security::Security;
use super::error::{Code, ControlError};
use super::records::{self, node_key, NodeRecord, NodeSoftware, CLUSTER_KEY};
use super::types::{NodeState, Role};
use super::{ClusterPort, Control};

/// What `docker node ls` shows in MANAGER STATUS for one manager.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagerState {
    pub leader: bool,
    pub reachable: bool,
}

impl Control {
    /// Holds the membership lock across a whole join (init, join and leave take it too).
    pub async fn membership_guard(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.membership.lock().await
    }

    /// Refuses a join on a manager that is, or was, part of a swarm.
    pub async fn check_can_join(&self) -> Result<(), ControlError> {
        if self.local_identity().is_some() || self.store.get(CLUSTER_KEY).is_some() {
            return Err(ControlError::AlreadyInSwarm);
        }
        let initialized = self
            .store
            .is_initialized()
            .await
            .map_err(records::store_error)?;
        if initialized {
            return Err(ControlError::InvalidArgument(
                "this data dir already holds a raft group from an earlier swarm: start `swarmguard manager` with a fresh --data-dir to join another swarm".into(),
            ));
        }
        Ok(())
    }

    /// A manager that joined and caught up takes on its identity: files first, then the
    /// security material (root and key now replicated here), then the cluster port restarts.
    pub fn adopt_identity(
        &self,
        root_pem: &[u8],
        cert_pem: &[u8],
        key_pem: &[u8],
        node_id: &str,
        listen: SocketAddr,
        advertise: SocketAddr,
    ) -> Result<(), ControlError> {
        LocalIdentity::write(
            &self.config.data_dir,
            &self.key_codec(),
            root_pem,
            cert_pem,
            key_pem,
            node_id,
            listen,
            advertise,
        )
        .map_err(|e| ControlError::internal("cannot write this manager's certificate", e))?;
        let material = Security::load(&self.store, &self.config.data_dir)?.ok_or_else(|| {
            ControlError::internal("the joined swarm's state", "no cluster record replicated")
        })?;
        // Reset first: once the material is in, the supervisor may report Serving at once.
        self.set_cluster_port(ClusterPort::Stopped);
        self.security.install(material);
        // An autolocked swarm: this manager's data key (and TLS key) take the swarm's unlock
        // key now, since the record may have come in a snapshot rather than as an event.
        self.reconcile_autolock()?;
        self.membership_changed.notify_one();
        tracing::info!(%node_id, "joined the swarm as a manager");
        Ok(())
    }

    /// A manager that restarted before its state knew the swarm loads its security material
    /// once the state holds the cluster again (see `grpc::recover`). Whether it did now.
    pub fn adopt_recorded_identity(&self) -> bool {
        if self.security.current().is_some() {
            return false;
        }
        let material = match Security::load(&self.store, &self.config.data_dir) {
            Ok(Some(m)) => m,
            Ok(None) => return false,
            Err(e) => {
                tracing::debug!(error = %e, "the swarm's state is not complete here yet");
                return false;
            }
        };
        self.set_cluster_port(ClusterPort::Stopped);
        self.security.install(material);
        if let Err(e) = self.reconcile_autolock() {
            tracing::warn!(error = %e, "autolock not reconciled after recovery; the follow loop retries");
        }
        self.membership_changed.notify_one();
        tracing::info!("the swarm's state is back: serving the full cluster port");
        true
    }

    /// Adds the manager `node_id` (which holds a manager certificate) to the Raft group as
    /// `raft_id` at `addr`: its record first (so the others accept its calls and show it),
    /// then the group: as learner until it caught up, then as voter.
    pub async fn add_manager(
        &self,
        node_id: &str,
        raft_id: u64,
        addr: &str,
    ) -> Result<(), ControlError> {
        let ip = addr
            .parse::<SocketAddr>()
            .map(|a| a.ip().to_string())
            .map_err(|_| ControlError::InvalidArgument("manager address must be ip:port".into()))?;
        self.record_own_raft_id().await?;
        let taken = self
            .nodes()?
            .into_iter()
            .any(|n| n.record.id != node_id && n.record.raft_id == Some(raft_id));
        if taken {
            return Err(ControlError::rpc(
                Code::FailedPrecondition,
                format!("raft ID {raft_id} belongs to another manager"),
            ));
        }
        let updated = records::update::<NodeRecord>(&self.store, &node_key(node_id), "node", |n| {
            if n.role != Role::Manager || n.spec.role != Role::Manager {
                return Err(ControlError::rpc(
                    Code::FailedPrecondition,
                    "only a manager may join the raft group",
                ));
            }
            if n.software == NodeSoftware::Dockerd {
                return Err(ControlError::rpc(
                    Code::FailedPrecondition,
                    "a stock Docker engine cannot join swarmguard's raft group",
                ));
            }
            n.software = NodeSoftware::SwarmguardManager;
            n.raft_id = Some(raft_id);
            n.manager_addr = Some(addr.to_owned());
            n.status.state = NodeState::Ready;
            n.status.addr = ip.clone();
            Ok(())
        })
        .await?;
        if updated.is_none() {
            return Err(ControlError::NotFound(format!("node {node_id} not found")));
        }
        self.store
            .add_manager(raft_id, addr)
            .await
            .map_err(records::store_error)
    }

    /// Records written before several managers existed lack this manager's raft ID.
    async fn record_own_raft_id(&self) -> Result<(), ControlError> {
        let Some(local) = self.local_identity() else {
            return Err(ControlError::NotManager);
        };
        let me = local.node_id;
        self.store
            .set_own_addr(&local.advertise_addr.to_string())
            .await
            .map_err(records::store_error)?;
        let raft_id = self.store.node_id();
        records::update::<NodeRecord>(&self.store, &node_key(&me), "node", |n| {
            n.raft_id = Some(raft_id);
            Ok(())
        })
        .await
        .map(|_| ())
    }

    /// `swarm leave` on one of several managers. Without `force`, dockerd's refusal (naming the
    /// quorum it would break). With it, this manager stops serving and stops talking to the
    /// others, but stays a member of the group, as dockerd's does: the others show it
    /// Unreachable until it is demoted. The swarm's state is not touched.
    pub(super) async fn leave_group(&self, force: bool) -> Result<(), ControlError> {
        if !force {
            let members = match self.store.members_from_leader().await {
                Ok(m) => m,
                Err(_) => self.store.members(),
            };
            let voters = members.iter().filter(|m| m.voter).count();
            let reachable = members.iter().filter(|m| m.voter && m.reachable).count();
            let left = reachable.saturating_sub(1);
            let quorum = if left <= voters / 2 {
                format!("Removing this node leaves {left} managers out of {voters}. Without a Raft quorum your swarm will be inaccessible. ")
            } else {
                String::new()
            };
            return Err(ControlError::Unavailable(format!(
                "You are attempting to leave the swarm on a node that is participating as a manager. {quorum}The only way to restore a swarm that has lost consensus is to reinitialize it with `--force-new-cluster`. Use `--force` to suppress this message."
            )));
        }
        self.store.set_transport(None);
        self.security.clear();
        self.membership_changed.notify_one();
        LocalIdentity::remove(&self.config.data_dir)
            .map_err(|e| ControlError::internal("cannot remove this manager's certificate", e))?;
        tracing::warn!("left the swarm; this manager stays a raft member until it is demoted, and this data dir cannot join another swarm");
        Ok(())
    }

    /// Removes a manager from the Raft group, unless the managers left reachable would be no
    /// majority of the group without it (dockerd's refusal and text).
    pub(super) async fn remove_from_group(&self, raft_id: u64) -> Result<(), ControlError> {
        let members = self
            .store
            .members_from_leader()
            .await
            .map_err(records::store_error)?;
        let Some(target) = members.iter().find(|m| m.id == raft_id) else {
            return Err(ControlError::rpc(
                Code::FailedPrecondition,
                "can't find manager in raft memberlist",
            ));
        };
        let voters_after = members
            .iter()
            .filter(|m| m.voter && m.id != raft_id)
            .count();
        let reachable_after = members
            .iter()
            .filter(|m| m.voter && m.reachable && m.id != raft_id)
            .count();
        if target.voter && reachable_after <= voters_after / 2 {
            return Err(ControlError::rpc(
                Code::FailedPrecondition,
                "can't remove member from the raft: this would result in a loss of quorum",
            ));
        }
        self.store
            .remove_manager(raft_id)
            .await
            .map_err(records::store_error)
    }

    /// After `--force-new-cluster`: the other managers' records lose their place in the group
    /// (MANAGER STATUS empty, as dockerd shows them) but keep their desired role; this
    /// manager's record names its raft ID.
    pub async fn forget_other_managers(&self) -> Result<(), ControlError> {
        let me = self.local_node_id().ok_or(ControlError::NotManager)?;
        let raft_id = self.store.node_id();
        for n in self.nodes()? {
            let own = n.record.id == me;
            if !own && n.record.manager_addr.is_none() && n.record.raft_id.is_none() {
                continue;
            }
            records::update::<NodeRecord>(&self.store, &node_key(&n.record.id), "node", |r| {
                if own {
                    r.raft_id = Some(raft_id);
                } else {
                    r.raft_id = None;
                    r.manager_addr = None;
                    r.status.state = NodeState::Unknown;
                    r.status.message =
                        "Node moved to \"unknown\" state due to leadership change in cluster"
                            .into();
                }
                Ok(())
            })
            .await?;
        }
        tracing::warn!("--force-new-cluster: the other managers left the raft group; they re-join with a manager token and a fresh data dir");
        Ok(())
    }

    /// How fresh the Engine API's reads are: after a read barrier, [`Freshness::Current`];
    /// without a quorum, this manager's own copy is still served, marked [`Freshness::Stale`]
    /// with why (the "reads of local state still answer, marked stale").
    pub async fn read_freshness(&self) -> Result<Freshness, ControlError> {
        if self.local_identity().is_none() {
            return Ok(Freshness::Current);
        }
        match self.store.read_barrier().await {
            Ok(()) => Ok(Freshness::Current),
            Err(crate::store::StoreError::NoQuorum { reachable, managers }) => {
                Ok(Freshness::Stale(format!(
                    "this manager has no quorum ({reachable} of {managers} managers reachable): it shows its own copy of the swarm's state, which may be stale; writes are refused until more than half of the managers are online"
                )))
            }
            Err(e) => Err(records::store_error(e)),
        }
    }

    /// Read barrier for the Engine API's reads: everything committed before the call is
    /// applied here (read index through the leader). Without a leader: dockerd's error.
    pub async fn read_barrier(&self) -> Result<(), ControlError> {
        if self.local_identity().is_none() {
            return Ok(());
        }
        self.store
            .read_barrier()
            .await
            .map_err(records::store_error)
    }

    /// MANAGER STATUS per node ID, as the leader sees the group (a follower asks it; without
    /// a leader every other manager shows Unreachable).
    pub async fn manager_states(&self) -> BTreeMap<String, ManagerState> {
        let members = match self.store.members_from_leader().await {
            Ok(m) => m,
            Err(_) => self.store.members(),
        };
        let by_raft: BTreeMap<u64, ManagerState> = members
            .into_iter()
            .map(|m| {
                (
                    m.id,
                    ManagerState {
                        leader: m.leader,
                        reachable: m.reachable,
                    },
                )
            })
            .collect();
        let own = self.local_node_id();
        let mut out = BTreeMap::new();
        for n in self.nodes().unwrap_or_default() {
            if n.record.manager_addr.is_none() {
                continue;
            }
            let state = match n.record.raft_id {
                Some(id) => by_raft.get(&id).cloned().unwrap_or(ManagerState {
                    leader: false,
                    reachable: false,
                }),
                // A record from before raft IDs were kept: only this manager can be it.
                None => ManagerState {
                    leader: own.as_deref() == Some(n.record.id.as_str()),
                    reachable: own.as_deref() == Some(n.record.id.as_str()),
                },
            };
            out.insert(n.record.id.clone(), state);
        }
        out
    }
}

/// What a read shows: the swarm's committed state, or this manager's own possibly stale copy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Freshness {
    Current,
    /// Why the state shown may be stale (no quorum).
    Stale(String),
}
