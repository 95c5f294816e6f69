//! How Raft messages leave this node.
//!
//! The plug point is openraft's own [`RaftNetworkFactory`] trait, named here
//! [`PeerNetwork`] with the one extra requirement this crate has: snapshots
//! travel as [`SnapshotData`] bytes. A node in a cluster runs on the QUIC
//! network (`cluster::raft_net`); a node alone runs on [`NoPeers`], where
//! every RPC fails with an "unreachable" error naming the target node (a
//! one-member group never sends one).

use std::future::Future;

use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::NetSnapshot;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;

use super::types::PeerNode;
use super::types::Snapshot;
use super::types::SnapshotData;
use super::types::TypeConfig;
use super::types::Vote;

/// A network the metadata Raft can run on: an openraft network factory whose
/// clients ship snapshots as [`SnapshotData`] bytes. Implemented for every
/// such factory.
pub trait PeerNetwork:
    RaftNetworkFactory<TypeConfig, Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>>
{
}

impl<T> PeerNetwork for T where
    T: RaftNetworkFactory<TypeConfig, Network: NetSnapshot<TypeConfig, SnapshotData = SnapshotData>>
{
}

/// A network that reaches no one: every RPC fails as unreachable. Enough for
/// a one-member group (a node alone).
#[derive(Debug, Clone, Copy, Default)]
pub struct NoPeers;

/// The client [`NoPeers`] makes for one target node.
#[derive(Debug, Clone)]
pub struct NoPeer {
    target: u64,
    node: PeerNode,
}

impl NoPeer {
    fn unreachable(&self) -> Unreachable<TypeConfig> {
        Unreachable::from_string(format!(
            "node {} ({}) is unreachable: this node has no peer network",
            self.target, self.node.peer_addr
        ))
    }
}

impl RaftNetworkFactory<TypeConfig> for NoPeers {
    type Network = NoPeer;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Self::Network {
        NoPeer { target, node: node.clone() }
    }
}

impl RaftNetworkV2<TypeConfig> for NoPeer {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        _rpc: AppendEntriesRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn pre_vote(
        &mut self,
        _rpc: VoteRequest<TypeConfig>,
        _option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        Err(RPCError::Unreachable(self.unreachable()))
    }

    async fn full_snapshot(
        &mut self,
        _vote: Vote,
        _snapshot: Snapshot,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        Err(StreamingError::Unreachable(self.unreachable()))
    }
}
