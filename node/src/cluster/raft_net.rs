//! openraft's network over the QUIC peer transport: each RPC is one request
//! on the Raft channel, so a snapshot in flight never holds up a chat message
//! (room traffic has its own streams).

use std::future::Future;
use std::time::Duration;

use openraft::RaftNetworkFactory;
use openraft::RaftNetworkV2;
use openraft::error::NetworkError;
use openraft::error::RPCError;
use openraft::error::ReplicationClosed;
use openraft::error::StreamingError;
use openraft::error::Unreachable;
use openraft::network::RPCOption;
use openraft::raft::AppendEntriesRequest;
use openraft::raft::AppendEntriesResponse;
use openraft::raft::SnapshotResponse;
use openraft::raft::TransferLeaderRequest;
use openraft::raft::TransferLeaderResponse;
use openraft::raft::VoteRequest;
use openraft::raft::VoteResponse;

use super::wire::RaftAnswer;
use super::wire::RaftCall;
use crate::peer::Channel;
use crate::peer::PeerEndpoint;
use crate::peer::PeerError;
use crate::peer::codec::decode;
use crate::peer::codec::encode;
use crate::raft::PeerNode;
use crate::raft::SnapshotData;
use crate::raft::TypeConfig;
use crate::raft::types::Snapshot;
use crate::raft::types::Vote;

/// Snapshots may take longer than ordinary RPCs.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(60);

/// Makes a client per target node.
#[derive(Clone)]
pub struct QuicRaftNetwork {
    /// The peer transport.
    pub endpoint: PeerEndpoint,
}

/// Raft RPCs to one node.
pub struct QuicRaftClient {
    endpoint: PeerEndpoint,
    target: u64,
}

impl RaftNetworkFactory<TypeConfig> for QuicRaftNetwork {
    type Network = QuicRaftClient;

    async fn new_client(&mut self, target: u64, node: &PeerNode) -> Self::Network {
        // A node added while this one runs is dialled where the membership
        // says it is.
        self.endpoint.learn_peer(target, &node.peer_addr);
        QuicRaftClient { endpoint: self.endpoint.clone(), target }
    }
}

fn net_error(e: impl std::fmt::Display) -> NetworkError<TypeConfig> {
    NetworkError::from_string(e.to_string())
}

impl QuicRaftClient {
    async fn call(&self, call: &RaftCall, timeout: Duration) -> Result<RaftAnswer, RPCError<TypeConfig>> {
        let bytes =
            self.endpoint.request(self.target, Channel::Raft, encode(call), timeout).await.map_err(|e| match e {
                PeerError::Remote(msg) => RPCError::Network(net_error(msg)),
                other => RPCError::Unreachable(Unreachable::from_string(other.to_string())),
            })?;
        decode::<RaftAnswer>(&bytes).map_err(|e| RPCError::Network(net_error(e)))
    }
}

fn unexpected(answer: RaftAnswer) -> RPCError<TypeConfig> {
    RPCError::Network(net_error(format!("unexpected Raft answer: {answer:?}")))
}

impl RaftNetworkV2<TypeConfig> for QuicRaftClient {
    type SnapshotData = SnapshotData;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(&RaftCall::Append(rpc), option.hard_ttl().max(crate::raft::APPEND_TIMEOUT)).await? {
            RaftAnswer::Append(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(&RaftCall::Vote(rpc), option.hard_ttl()).await? {
            RaftAnswer::Vote(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(&RaftCall::PreVote(rpc), option.hard_ttl()).await? {
            RaftAnswer::Vote(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        match self.call(&RaftCall::TransferLeader(req), option.hard_ttl()).await? {
            RaftAnswer::Transferred => Ok(Ok(())),
            other => Err(unexpected(other)),
        }
    }

    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let call = RaftCall::Snapshot { vote, meta: snapshot.meta, data: snapshot.snapshot };
        let answer = tokio::select! {
            closed = cancel => return Err(StreamingError::Closed(closed)),
            answer = self.call(&call, SNAPSHOT_TIMEOUT) => answer,
        };
        match answer {
            Ok(RaftAnswer::Snapshot(r)) => Ok(r),
            Ok(other) => Err(StreamingError::Network(net_error(format!("unexpected Raft answer: {other:?}")))),
            Err(RPCError::Unreachable(u)) => Err(StreamingError::Unreachable(u)),
            Err(e) => Err(StreamingError::Network(net_error(e))),
        }
    }
}
