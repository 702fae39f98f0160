//! Manager-to-manager Raft transport: the store's side of it.
//!
//! The store does not know gRPC or TLS. It hands each message, encoded, to a [`Transport`]
//! installed by the cluster port's owner (`grpc::raft`), which carries it over the cluster
//! port's mTLS to the peer's address. Until one is installed (a single manager, or a manager
//! that is not part of a swarm yet) every RPC fails with [`RPCError::Unreachable`], which
//! openraft treats as "back off and retry".
//!
//! Encoding: openraft's own request and reply types as JSON (`serde` feature); a snapshot
//! chunk's bytes travel beside the JSON (see [`Frame`]). Entries and snapshots travel in clear
//! inside TLS: each manager seals them with its own data key when it stores them.

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, SnapshotMeta, Vote};
use serde::{Deserialize, Serialize};

use super::types::TypeConfig;
use super::{lock_read, lock_write};

/// The largest message either side of the transport accepts. A transaction is at most
/// `MAX_TXN_BYTES` (4 MiB, about 5.4 MiB as JSON); snapshot chunks are 1 MiB.
pub const MAX_FRAME_BYTES: usize = 16 << 20;

/// The four calls of the transport service.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rpc {
    AppendEntries,
    Vote,
    InstallSnapshot,
    /// A write or membership change a follower sends to the leader (see `forward.rs`).
    Forward,
}

/// One message: JSON, plus the raw bytes of a snapshot chunk.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Frame {
    pub json: Vec<u8>,
    pub data: Vec<u8>,
}

/// Why a call did not get an answer.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// Could not connect or the connection broke: the peer may be down.
    #[error("cannot reach {addr}: {reason}")]
    Unreachable { addr: String, reason: String },
    /// The peer answered with an error (refused, overloaded, malformed).
    #[error("{addr} refused the call: {reason}")]
    Refused { addr: String, reason: String },
}

pub type CallFuture<'a> = Pin<Box<dyn Future<Output = Result<Frame, TransportError>> + Send + 'a>>;

/// Carries one call to the manager at `addr` and returns its answer.
pub trait Transport: Send + Sync + 'static {
    fn call<'a>(
        &'a self,
        addr: &'a str,
        rpc: Rpc,
        frame: Frame,
        timeout: Duration,
    ) -> CallFuture<'a>;
}

/// Where the installed transport lives; shared by the network factory and the forwarder.
/// It also remembers when each peer last answered (the leader's view of who is reachable).
#[derive(Default)]
pub struct TransportSlot {
    transport: RwLock<Option<Arc<dyn Transport>>>,
    answered: RwLock<BTreeMap<u64, Instant>>,
}

impl TransportSlot {
    pub fn set(&self, t: Option<Arc<dyn Transport>>) {
        *lock_write(&self.transport) = t;
    }
    pub fn get(&self) -> Option<Arc<dyn Transport>> {
        lock_read(&self.transport).clone()
    }
    fn answered(&self, id: u64) {
        lock_write(&self.answered).insert(id, Instant::now());
    }
    /// Whether raft node `id` answered a call within `d`.
    pub fn seen_within(&self, id: u64, d: Duration) -> bool {
        lock_read(&self.answered)
            .get(&id)
            .is_some_and(|t| t.elapsed() < d)
    }
}

/// The header of a snapshot chunk (everything but its bytes).
#[derive(Serialize, Deserialize)]
pub(crate) struct SnapshotHead {
    pub vote: Vote<u64>,
    pub meta: SnapshotMeta<u64, BasicNode>,
    pub offset: u64,
    pub done: bool,
}

/// Error carried inside [`Unreachable`] when no transport is installed.
#[derive(Debug, thiserror::Error)]
#[error("no transport to raft node {target} at {addr:?}: this manager is not connected to other managers yet")]
pub(crate) struct NoTransport {
    target: u64,
    addr: String,
}

/// Network factory: one [`Peer`] per target.
pub(crate) struct Peers {
    pub slot: Arc<TransportSlot>,
}

pub(crate) struct Peer {
    target: u64,
    addr: String,
    slot: Arc<TransportSlot>,
}

impl RaftNetworkFactory<TypeConfig> for Peers {
    type Network = Peer;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Peer {
        Peer {
            target,
            addr: node.addr.clone(),
            slot: self.slot.clone(),
        }
    }
}

pub(crate) fn encode_json<T: Serialize>(v: &T) -> Vec<u8> {
    // openraft's types and ours serialize without failure (no maps with non-string keys).
    serde_json::to_vec(v).unwrap_or_default()
}

impl Peer {
    async fn call<R, E>(
        &self,
        rpc: Rpc,
        frame: Frame,
        option: &RPCOption,
    ) -> Result<R, RPCError<u64, BasicNode, RaftError<u64, E>>>
    where
        R: for<'de> Deserialize<'de>,
        E: std::error::Error + for<'de> Deserialize<'de>,
    {
        let Some(t) = self.slot.get() else {
            return Err(RPCError::Unreachable(Unreachable::new(&NoTransport {
                target: self.target,
                addr: self.addr.clone(),
            })));
        };
        let reply = match t.call(&self.addr, rpc, frame, option.hard_ttl()).await {
            Ok(f) => f,
            Err(e @ TransportError::Unreachable { .. }) => {
                return Err(RPCError::Unreachable(Unreachable::new(&e)))
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&e))),
        };
        self.slot.answered(self.target);
        let decoded: Result<R, RaftError<u64, E>> = serde_json::from_slice(&reply.json)
            .map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded
            .map_err(|e| RPCError::RemoteError(openraft::error::RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        // One message stays under the transport's limit: send the entries that fit (always at
        // least one; a single entry is bounded by the store's transaction limit) and report
        // the rest as not yet replicated, which openraft sends next.
        let mut rpc = rpc;
        let mut cut = None;
        let mut size = 0usize;
        for (i, e) in rpc.entries.iter().enumerate() {
            size += encode_json(e).len();
            if i > 0 && size > MAX_FRAME_BYTES / 2 {
                cut = Some(i);
                break;
            }
        }
        if let Some(i) = cut {
            rpc.entries.truncate(i);
        }
        let last = rpc.entries.last().map(|e| e.log_id);
        let frame = Frame {
            json: encode_json(&rpc),
            data: Vec::new(),
        };
        let resp: AppendEntriesResponse<u64> =
            self.call(Rpc::AppendEntries, frame, &option).await?;
        Ok(match (resp, cut) {
            (AppendEntriesResponse::Success, Some(_)) => {
                AppendEntriesResponse::PartialSuccess(last)
            }
            (r, _) => r,
        })
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        let head = SnapshotHead {
            vote: rpc.vote,
            meta: rpc.meta,
            offset: rpc.offset,
            done: rpc.done,
        };
        let frame = Frame {
            json: encode_json(&head),
            data: rpc.data,
        };
        self.call(Rpc::InstallSnapshot, frame, &option).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<u64>,
        option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        let frame = Frame {
            json: encode_json(&rpc),
            data: Vec::new(),
        };
        self.call(Rpc::Vote, frame, &option).await
    }
}
