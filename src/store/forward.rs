//! Several managers: writes from any manager reach the leader, and the calls other managers
//! send arrive here.
//!
//! [`Store::apply`] proposes locally when this manager leads; otherwise it forwards the
//! transaction to the leader over the installed transport. It retries only where the write
//! cannot have been proposed: this manager was not leader, the leader answered "not leader",
//! or the leader could not be connected to. Anything else (a connection that broke after the
//! request went out) is reported as [`StoreError::Unknown`]: the write may or may not commit.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use openraft::error::RaftError;
use openraft::raft::{AppendEntriesRequest, InstallSnapshotRequest, VoteRequest};
use openraft::{BasicNode, ChangeMembers};
use serde::{Deserialize, Serialize};
use tokio::time::Instant;

use super::network::{encode_json, Frame, Rpc, SnapshotHead, TransportError};
use super::types::{Txn, TxnOutcome};
use super::{Store, StoreError};

/// How long a leader may go without hearing from a quorum before it refuses writes (and how
/// long a follower waits for a leader before it does).
pub const QUORUM_GRACE: Duration = Duration::from_millis(1500);
/// The longest one call waits for a commit, on the leader or through a forward.
pub(super) const CALL_TIMEOUT: Duration = Duration::from_secs(5);

/// What a follower asks the leader to do.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) enum Forwarded {
    Write(Txn),
    /// Add a manager as learner, wait until it caught up, then make it a voter.
    AddManager {
        id: u64,
        addr: String,
    },
    /// Remove a voter (and its node) from the group.
    RemoveManager {
        id: u64,
    },
    /// The leader's view of the members (for a follower's `docker node ls`).
    Members,
    /// The leader's read index, confirmed with a quorum round (a follower's linearizable read).
    ReadIndex,
}

/// The leader's answer.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) enum ForwardReply {
    Outcome(TxnOutcome),
    Done,
    Members(Vec<MemberView>),
    ReadIndex(Option<u64>),
    NotLeader,
    NoQuorum {
        reachable: usize,
        managers: usize,
    },
    /// Sent, but its outcome is not known.
    Unknown(String),
    Failed(String),
}

/// Who this manager sees in the group, for `docker node ls` and quorum checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberView {
    pub id: u64,
    pub addr: String,
    pub voter: bool,
    pub leader: bool,
    /// This manager, or a member the leader heard from recently (followers only know the
    /// leader and themselves are reachable).
    pub reachable: bool,
}

impl Store {
    /// The leader's raft ID and address, as this manager last learned it.
    pub fn leader(&self) -> Option<(u64, String)> {
        let m = self.inner.raft.metrics().borrow().clone();
        let id = m.current_leader?;
        let addr = m.membership_config.membership().get_node(&id)?.addr.clone();
        Some((id, addr))
    }

    /// Whether this manager is the leader and heard from a quorum within [`QUORUM_GRACE`].
    pub fn is_leader(&self) -> bool {
        let m = self.inner.raft.metrics().borrow().clone();
        m.current_leader == Some(self.inner.node_id) && m.state.is_leader()
    }

    /// Members of the group with what this manager knows of them.
    pub fn members(&self) -> Vec<MemberView> {
        let m = self.inner.raft.metrics().borrow().clone();
        let me = self.inner.node_id;
        let voters: BTreeSet<u64> = m.membership_config.membership().voter_ids().collect();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, node)| {
                let leader = m.current_leader == Some(*id);
                let reachable = *id == me
                    || if m.state.is_leader() {
                        self.inner.transport.seen_within(*id, QUORUM_GRACE)
                    } else {
                        leader && self.leader_heard_within(QUORUM_GRACE)
                    };
                MemberView {
                    id: *id,
                    addr: node.addr.clone(),
                    voter: voters.contains(id),
                    leader,
                    reachable,
                }
            })
            .collect()
    }

    /// Whether a leader's AppendEntries (a heartbeat or entries) arrived within `d`.
    pub(crate) fn leader_heard_within(&self, d: Duration) -> bool {
        super::lock_read(&self.inner.leader_heard).is_some_and(|t| t.elapsed() < d)
    }

    /// Applies through the leader wherever it is; see the module docs.
    pub(super) async fn apply_anywhere(
        &self,
        txn: Txn,
        bytes: usize,
    ) -> Result<TxnOutcome, StoreError> {
        let deadline = Instant::now() + self.inner.write_timeout;
        let mut no_leader_since: Option<Instant> = None;
        loop {
            let attempt = match self.leader() {
                Some((id, _)) if id == self.inner.node_id => {
                    self.apply_as_leader(txn.clone(), bytes).await
                }
                Some(_) if !self.leader_heard_within(QUORUM_GRACE) => {
                    Err(StoreError::NotLeader { leader: None })
                }
                Some((_, addr)) => {
                    let reply = self
                        .forward(&addr, Forwarded::Write(txn.clone()))
                        .await
                        .and_then(|r| match r {
                            ForwardReply::Outcome(o) => Ok(o),
                            other => Err(reply_error(other)),
                        });
                    if let Ok(TxnOutcome::Committed { index }) = &reply {
                        self.wait_applied_here(*index, deadline).await;
                    }
                    reply
                }
                None => Err(StoreError::NotLeader { leader: None }),
            };
            match attempt {
                Err(StoreError::NotLeader { .. }) => {}
                Err(StoreError::Transport(TransportError::Unreachable { .. })) => {}
                other => return other,
            }
            let since = *no_leader_since.get_or_insert_with(Instant::now);
            if since.elapsed() > QUORUM_GRACE || Instant::now() > deadline {
                return Err(self.no_quorum());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Read-your-writes on a follower: a write forwarded to the leader is answered once this
    /// manager applied it too, so the caller's next read here (an agent that joined through
    /// this manager asking for its certificate) sees it. Past the deadline the write still
    /// stands (it is committed); only the wait ends.
    async fn wait_applied_here(&self, index: u64, deadline: Instant) {
        let left = deadline.saturating_duration_since(Instant::now());
        if self
            .inner
            .raft
            .wait(Some(left.max(Duration::from_millis(1))))
            .applied_index_at_least(Some(index), "a forwarded write applies here")
            .await
            .is_err()
        {
            tracing::debug!(
                index,
                "a forwarded write committed but did not apply here before its deadline"
            );
        }
    }

    /// The error for "no leader reachable", naming how many managers this one can reach.
    pub(crate) fn no_quorum(&self) -> StoreError {
        let members = self.members();
        let voters = members.iter().filter(|m| m.voter).count();
        let reachable = members.iter().filter(|m| m.voter && m.reachable).count();
        StoreError::NoQuorum {
            reachable,
            managers: voters,
        }
    }

    /// A write proposed on this manager as leader (with others that arrive meanwhile, see
    /// [`super::batch`]), refused at once without a recent quorum.
    async fn apply_as_leader(&self, txn: Txn, bytes: usize) -> Result<TxnOutcome, StoreError> {
        self.wait_first_quorum_ack().await?;
        let m = self.inner.raft.metrics().borrow().clone();
        let voters = m.membership_config.membership().voter_ids().count();
        if voters > 1
            && m.millis_since_quorum_ack
                .is_none_or(|ms| ms > QUORUM_GRACE.as_millis() as u64)
        {
            return Err(self.no_quorum());
        }
        self.inner.proposer.write(txn, bytes).await
    }

    /// A leader that has not heard from a quorum yet in its term (just elected, or restored
    /// leading at a restart) waits up to [`QUORUM_GRACE`] for the first round instead of
    /// refusing the write: nothing was proposed, so waiting is safe, and a client writing
    /// right after a failover is served rather than refused. A leader that heard from a quorum
    /// once and then lost it is refused at once by the caller.
    async fn wait_first_quorum_ack(&self) -> Result<(), StoreError> {
        let start = Instant::now();
        loop {
            let m = self.inner.raft.metrics().borrow().clone();
            if m.membership_config.membership().voter_ids().count() <= 1
                || m.millis_since_quorum_ack.is_some()
            {
                return Ok(());
            }
            if !m.state.is_leader() {
                return Err(StoreError::NotLeader { leader: None });
            }
            if start.elapsed() > QUORUM_GRACE {
                return Err(self.no_quorum());
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    async fn forward(&self, addr: &str, req: Forwarded) -> Result<ForwardReply, StoreError> {
        let Some(t) = self.inner.transport.get() else {
            return Err(StoreError::NotLeader { leader: None });
        };
        let frame = Frame {
            json: encode_json(&req),
            data: Vec::new(),
        };
        let reply = t
            .call(
                addr,
                Rpc::Forward,
                frame,
                CALL_TIMEOUT + Duration::from_secs(1),
            )
            .await
            .map_err(|e| match e {
                e @ TransportError::Unreachable { .. } => StoreError::Transport(e),
                other => StoreError::Unknown(other.to_string()),
            })?;
        serde_json::from_slice(&reply.json)
            .map_err(|e| StoreError::Unknown(format!("malformed reply from the leader: {e}")))
    }

    /// Adds a manager: as learner (blocking until it caught up), then as voter. Runs on the
    /// leader, or is forwarded there.
    pub async fn add_manager(&self, id: u64, addr: &str) -> Result<(), StoreError> {
        self.membership_call(Forwarded::AddManager {
            id,
            addr: addr.to_owned(),
        })
        .await
    }

    /// Removes a manager from the group (a demotion or `node rm`).
    pub async fn remove_manager(&self, id: u64) -> Result<(), StoreError> {
        self.membership_call(Forwarded::RemoveManager { id }).await
    }

    async fn membership_call(&self, req: Forwarded) -> Result<(), StoreError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let reply = match self.leader() {
                Some((id, _)) if id == self.inner.node_id => {
                    Ok(self.serve_forwarded(req.clone()).await)
                }
                Some((_, addr)) => self.forward(&addr, req.clone()).await,
                None => Ok(ForwardReply::NotLeader),
            };
            match reply {
                Ok(ForwardReply::Done) => return Ok(()),
                Ok(ForwardReply::NotLeader) | Err(StoreError::Transport(_))
                    if Instant::now() < deadline =>
                {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                Ok(other) => return Err(reply_error(other)),
                Err(e) => return Err(e),
            }
        }
    }

    /// The members as the leader sees them (a follower asks the leader, as SwarmKit's
    /// followers proxy control calls); this manager's own view when no leader answers.
    pub async fn members_from_leader(&self) -> Result<Vec<MemberView>, StoreError> {
        match self.leader() {
            Some((id, _)) if id == self.inner.node_id => Ok(self.members()),
            Some((_, addr)) => match self.forward(&addr, Forwarded::Members).await? {
                ForwardReply::Members(m) => Ok(m),
                other => Err(reply_error(other)),
            },
            None => Err(self.no_quorum()),
        }
    }

    /// The leader's read index, confirmed by a quorum round; a round that timed out under
    /// load is tried again within [`QUORUM_GRACE`]. Applied here once it returns.
    ///
    /// The index is at least this leader's last log entry, not only openraft's read log id: a
    /// leader restarted from disk resumes leading its term at once (openraft restores it) with
    /// no committed index and no new blank entry, so its read log id can lie below writes
    /// acknowledged before the restart. Every acknowledged write is in the leader's log.
    pub(crate) async fn leader_read_index(&self) -> Result<Option<u64>, StoreError> {
        let start = Instant::now();
        loop {
            let last = self.inner.raft.metrics().borrow().last_log_index;
            match self.inner.raft.ensure_linearizable().await {
                Ok(id) => {
                    let index = id.map(|l| l.index).max(last);
                    if let Some(i) = index {
                        let left = QUORUM_GRACE.saturating_sub(start.elapsed());
                        self.inner
                            .raft
                            .wait(Some(left.max(Duration::from_millis(100))))
                            .applied_index_at_least(Some(i), "the read index applies")
                            .await
                            .map_err(|_| self.no_quorum())?;
                    }
                    return Ok(index);
                }
                Err(_) if !self.is_leader() => return Err(StoreError::NotLeader { leader: None }),
                Err(_) if start.elapsed() < QUORUM_GRACE => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Err(_) => return Err(self.no_quorum()),
            }
        }
    }

    pub(crate) async fn read_index_from_leader(&self) -> Result<Option<u64>, StoreError> {
        let start = Instant::now();
        loop {
            let reply = match self.leader() {
                Some((_, addr)) if self.leader_heard_within(QUORUM_GRACE) => {
                    self.forward(&addr, Forwarded::ReadIndex).await
                }
                _ => Ok(ForwardReply::NotLeader),
            };
            match reply {
                Ok(ForwardReply::ReadIndex(i)) => return Ok(i),
                Ok(ForwardReply::NotLeader) | Err(StoreError::Transport(_))
                    if start.elapsed() < QUORUM_GRACE =>
                {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                Ok(ForwardReply::NotLeader) | Err(StoreError::Transport(_)) => {
                    return Err(self.no_quorum())
                }
                Ok(other) => return Err(reply_error(other)),
                Err(e) => return Err(e),
            }
        }
    }

    /// Serves a call another manager sent over the transport. `Err` means the frame was
    /// malformed (the peer gets InvalidArgument).
    pub async fn serve(&self, rpc: Rpc, frame: Frame) -> Result<Frame, StoreError> {
        let bad = |e: serde_json::Error| StoreError::Encode {
            what: format!("{rpc:?} request"),
            reason: e.to_string(),
        };
        let raft = &self.inner.raft;
        let json = match rpc {
            Rpc::AppendEntries => {
                let req: AppendEntriesRequest<super::types::TypeConfig> =
                    serde_json::from_slice(&frame.json).map_err(bad)?;
                let resp = raft.append_entries(req).await;
                if matches!(resp, Ok(openraft::raft::AppendEntriesResponse::Success)) {
                    *super::lock_write(&self.inner.leader_heard) = Some(std::time::Instant::now());
                }
                encode_json(&resp)
            }
            Rpc::Vote => {
                let req: VoteRequest<u64> = serde_json::from_slice(&frame.json).map_err(bad)?;
                encode_json(&raft.vote(req).await)
            }
            Rpc::InstallSnapshot => {
                let head: SnapshotHead = serde_json::from_slice(&frame.json).map_err(bad)?;
                let req = InstallSnapshotRequest {
                    vote: head.vote,
                    meta: head.meta,
                    offset: head.offset,
                    data: frame.data,
                    done: head.done,
                };
                encode_json(&raft.install_snapshot(req).await)
            }
            Rpc::Forward => {
                let req: Forwarded = serde_json::from_slice(&frame.json).map_err(bad)?;
                encode_json(&self.serve_forwarded(req).await)
            }
        };
        Ok(Frame {
            json,
            data: Vec::new(),
        })
    }

    async fn serve_forwarded(&self, req: Forwarded) -> ForwardReply {
        if !self.is_leader() {
            return ForwardReply::NotLeader;
        }
        let res = match req {
            Forwarded::Write(txn) => {
                let bytes = match super::validate(&txn) {
                    Ok(bytes) => bytes,
                    Err(e) => return ForwardReply::Failed(e.to_string()),
                };
                if let Some(key) = self.failed_check(&txn) {
                    return ForwardReply::Outcome(TxnOutcome::Conflict { key });
                }
                self.apply_as_leader(txn, bytes)
                    .await
                    .map(ForwardReply::Outcome)
            }
            Forwarded::AddManager { id, addr } => self.add_as_leader(id, addr).await,
            Forwarded::RemoveManager { id } => self.remove_as_leader(id).await,
            Forwarded::Members => Ok(ForwardReply::Members(self.members())),
            Forwarded::ReadIndex => self.leader_read_index().await.map(ForwardReply::ReadIndex),
        };
        match res {
            Ok(r) => r,
            Err(StoreError::NotLeader { .. }) => ForwardReply::NotLeader,
            Err(StoreError::NoQuorum {
                reachable,
                managers,
            }) => ForwardReply::NoQuorum {
                reachable,
                managers,
            },
            Err(StoreError::Unknown(m)) => ForwardReply::Unknown(m),
            Err(e) => ForwardReply::Failed(e.to_string()),
        }
    }

    async fn add_as_leader(&self, id: u64, addr: String) -> Result<ForwardReply, StoreError> {
        let raft = &self.inner.raft;
        let m = raft.metrics().borrow().clone();
        let known = m.membership_config.membership().get_node(&id).cloned();
        if known.as_ref().is_some_and(|n| n.addr != addr) {
            return Err(StoreError::Raft(format!(
                "raft node {id} is already a member with another address"
            )));
        }
        // Blocking: returns once the learner caught up (snapshot, then log).
        raft.add_learner(id, BasicNode::new(&addr), true)
            .await
            .map_err(membership_error)?;
        let voters = BTreeSet::from([id]);
        raft.change_membership(ChangeMembers::AddVoterIds(voters), false)
            .await
            .map_err(membership_error)?;
        tracing::info!(raft_id = id, %addr, "manager joined the raft group as a voter");
        Ok(ForwardReply::Done)
    }

    async fn remove_as_leader(&self, id: u64) -> Result<ForwardReply, StoreError> {
        let raft = &self.inner.raft;
        raft.change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
            .await
            .map_err(membership_error)?;
        let nodes = BTreeSet::from([id]);
        raft.change_membership(ChangeMembers::RemoveNodes(nodes), false)
            .await
            .map_err(membership_error)?;
        tracing::info!(raft_id = id, "manager removed from the raft group");
        Ok(ForwardReply::Done)
    }

    /// Records this leader's cluster address in the membership when it differs: a group made
    /// before several managers existed holds a placeholder there, which joining managers
    /// would dial.
    pub async fn set_own_addr(&self, addr: &str) -> Result<(), StoreError> {
        let me = self.inner.node_id;
        if !self.is_leader() || self.member_addrs().get(&me).map(String::as_str) == Some(addr) {
            return Ok(());
        }
        let nodes = BTreeMap::from([(me, BasicNode::new(addr))]);
        self.inner
            .raft
            .change_membership(ChangeMembers::SetNodes(nodes), true)
            .await
            .map_err(membership_error)?;
        tracing::info!(%addr, "this manager's raft address recorded");
        Ok(())
    }

    /// Raft IDs and addresses of the members (voters and learners).
    pub fn member_addrs(&self) -> BTreeMap<u64, String> {
        let m = self.inner.raft.metrics().borrow().clone();
        m.membership_config
            .membership()
            .nodes()
            .map(|(id, n)| (*id, n.addr.clone()))
            .collect()
    }
}

fn membership_error<E: std::fmt::Display>(e: RaftError<u64, E>) -> StoreError {
    match e {
        RaftError::APIError(e) => {
            let text = e.to_string();
            if text.contains("forward") || text.contains("Forward") {
                StoreError::NotLeader { leader: None }
            } else {
                StoreError::Raft(text)
            }
        }
        RaftError::Fatal(f) => StoreError::Raft(f.to_string()),
    }
}

fn reply_error(r: ForwardReply) -> StoreError {
    match r {
        ForwardReply::NotLeader => StoreError::NotLeader { leader: None },
        ForwardReply::NoQuorum {
            reachable,
            managers,
        } => StoreError::NoQuorum {
            reachable,
            managers,
        },
        ForwardReply::Unknown(m) => StoreError::Unknown(m),
        ForwardReply::Failed(m) => StoreError::Raft(m),
        ForwardReply::Outcome(_)
        | ForwardReply::Done
        | ForwardReply::Members(_)
        | ForwardReply::ReadIndex(_) => {
            StoreError::Unknown("unexpected reply from the leader".into())
        }
    }
}
