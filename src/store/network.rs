//! Manager-to-manager Raft transport: not built yet.
//!
//! With one voter there is nobody to talk to. The factory still exists so the node is shaped for
//! 3–5 managers: every RPC to any target fails with [`RPCError::Unreachable`], which openraft treats
//! as "back off and retry". The real transport (gRPC over the cluster mTLS, carrying plaintext
//! entries and snapshots that each manager re-seals with its own DEK) comes with the
//! multi-manager issue.

use openraft::error::{InstallSnapshotError, RPCError, RaftError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;

use super::types::TypeConfig;

/// Error carried inside [`Unreachable`].
#[derive(Debug, thiserror::Error)]
#[error("no manager-to-manager transport yet: cannot reach raft node {target} at {addr:?} (multi-manager support is not implemented)")]
pub(crate) struct NoTransport {
    target: u64,
    addr: String,
}

/// Network factory for a single-manager cluster.
pub(crate) struct NoPeers;

/// A "connection" that can never reach its target.
pub(crate) struct Unconnected {
    target: u64,
    addr: String,
}

impl Unconnected {
    fn unreachable<E: std::error::Error>(&self) -> RPCError<u64, BasicNode, E> {
        tracing::debug!(target = self.target, "raft rpc to peer: no transport");
        RPCError::Unreachable(Unreachable::new(&NoTransport {
            target: self.target,
            addr: self.addr.clone(),
        }))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = Unconnected;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> Unconnected {
        Unconnected {
            target,
            addr: node.addr.clone(),
        }
    }
}

impl RaftNetwork<TypeConfig> for Unconnected {
    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }

    async fn install_snapshot(
        &mut self,
        _rpc: InstallSnapshotRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<u64>,
        RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
    > {
        Err(self.unreachable())
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<u64>,
        _option: RPCOption,
    ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
        Err(self.unreachable())
    }
}
