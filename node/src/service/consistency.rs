//! Read-your-writes on every node.
//!
//! Metadata reads are answered from this node's applied state, which may
//! trail the leader by a round trip. Three rules close that gap without a
//! cost on the common path (a fresh node answering a permitted request):
//! - **Refusals catch up first.** An answer of `not_found`, `unauthorized`
//!   or `forbidden` may come from a write this node has not applied yet (a
//!   login right after a register elsewhere). Before giving one, the node
//!   asks the leader for its ReadIndex and waits until it has applied that
//!   far, then decides again ([`Node::read`]).
//! - **Revocations wait for every node.** A write that takes something away
//!   (logout, kick, ban, mute, leave, role change, room deletion) is answered
//!   only once every peer has applied it, or once a peer that does not
//!   confirm can no longer be fresh (below), so no node grants afterwards
//!   what the answer said was revoked ([`Node::await_everywhere`]).
//! - **Only fresh nodes answer from their state.** A follower is fresh while
//!   it has accepted AppendEntries from the leader within [`LEASE`]; a leader
//!   while a quorum acknowledged it within [`LEASE`]. A node that is not
//!   fresh (partitioned, or between leaders) catches up before every answer,
//!   which fails with `unavailable` when it cannot reach a leader.
//!
//! The catch-ups of concurrent requests share one ReadIndex round trip
//! ([`ReadBarrier`]): a request waits at most for the round that starts
//! after it arrives.

use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use palaver_protocol::Code;
use parking_lot::Mutex;
use tokio::sync::oneshot;

use super::ApiError;
use super::Node;
use crate::cluster::wire::RaftAnswer;
use crate::cluster::wire::RaftCall;
use crate::meta::MetaState;
use crate::peer::Channel;
use crate::peer::PeerEndpoint;
use crate::peer::codec::decode;
use crate::peer::codec::encode;
use crate::raft::Consensus;
use crate::raft::ConsensusError;
use crate::rooms::RoomRef;

/// How long a read waits before asking a shard's (new) leader again.
const LEADER_RETRY: Duration = Duration::from_millis(50);

/// How recently a node must have heard from its leader (or, as leader, from
/// a quorum) to answer from its own state: several metadata heartbeats.
pub const LEASE: Duration = Duration::from_millis(1_000);
/// How long a peer waits to apply a revocation, and how long the revoking
/// node waits for each peer's confirmation.
pub const AWAIT_APPLIED: Duration = Duration::from_secs(2);
/// A peer that did not confirm a revocation is no longer fresh this long
/// after the revocation was applied here (its lease ran out), so it cannot
/// grant what was revoked.
const LEASE_SAFE: Duration = Duration::from_millis(1_250);
/// How long a catch-up may wait for a leader and for the log to apply.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(5);
/// Hops a ReadIndex request may take looking for the leader.
const HOPS: usize = 4;

/// Why a catch-up ran, for the metrics.
#[derive(Debug, Clone, Copy)]
pub enum CatchUpReason {
    /// The node had not heard from its leader within the lease.
    Stale,
    /// The local state said no; the leader may know better.
    Refusal,
    /// A room log read waited for what its owner has committed.
    RoomLog,
}

impl CatchUpReason {
    fn as_str(self) -> &'static str {
        match self {
            CatchUpReason::Stale => "stale",
            CatchUpReason::Refusal => "refusal",
            CatchUpReason::RoomLog => "room_log",
        }
    }
}

type Waiter = oneshot::Sender<Result<u64, ApiError>>;

#[derive(Default)]
struct Batch {
    running: bool,
    waiters: Vec<Waiter>,
}

/// Shares ReadIndex round trips among concurrent catch-ups.
pub struct ReadBarrier {
    consensus: Arc<Consensus>,
    endpoint: Option<PeerEndpoint>,
    node_id: u64,
    batch: Arc<Mutex<Batch>>,
}

impl ReadBarrier {
    /// A barrier asking the leader through `endpoint` (none: a node alone).
    pub fn new(consensus: Arc<Consensus>, endpoint: Option<PeerEndpoint>, node_id: u64) -> Self {
        Self { consensus, endpoint, node_id, batch: Arc::default() }
    }

    /// The leader's ReadIndex, from a round trip that started after this call.
    pub async fn read_index(&self) -> Result<u64, ApiError> {
        let (tx, rx) = oneshot::channel();
        let start = {
            let mut batch = self.batch.lock();
            batch.waiters.push(tx);
            !std::mem::replace(&mut batch.running, true)
        };
        if start {
            let (consensus, endpoint, node_id, batch) =
                (self.consensus.clone(), self.endpoint.clone(), self.node_id, self.batch.clone());
            tokio::spawn(async move {
                loop {
                    // Everyone waiting now arrived before this round started.
                    let waiters = {
                        let mut b = batch.lock();
                        if b.waiters.is_empty() {
                            b.running = false;
                            return;
                        }
                        std::mem::take(&mut b.waiters)
                    };
                    let result = fetch_read_index(&consensus, endpoint.as_ref(), node_id).await;
                    for w in waiters {
                        let _ = w.send(result.clone());
                    }
                }
            });
        }
        rx.await.map_err(|_| ApiError::unavailable("the catch-up with the metadata leader stopped; retry"))?
    }
}

async fn fetch_read_index(consensus: &Consensus, endpoint: Option<&PeerEndpoint>, me: u64) -> Result<u64, ApiError> {
    let mut target = None;
    for _ in 0..HOPS {
        let leader = match target.take() {
            Some(id) => id,
            None => consensus.wait_for_leader(CATCH_UP_TIMEOUT).await?,
        };
        if leader == me {
            match consensus.read_index(LEASE).await {
                Ok(index) => return Ok(index),
                Err(ConsensusError::NotLeader { leader }) => target = leader.map(|(id, _)| id),
                Err(e) => return Err(e.into()),
            }
            continue;
        }
        let Some(endpoint) = endpoint else { return Err(ApiError::unavailable("no metadata leader")) };
        let bytes = endpoint
            .request(leader, Channel::Raft, encode(&RaftCall::ReadIndex), CATCH_UP_TIMEOUT)
            .await
            .map_err(|e| ApiError::unavailable(format!("metadata leader (node {leader}) unreachable: {e}")))?;
        match decode::<RaftAnswer>(&bytes).map_err(ApiError::internal)? {
            RaftAnswer::ReadIndex(index) => return Ok(index),
            RaftAnswer::NotLeader(next) => target = next,
            RaftAnswer::Refused(why) => return Err(ApiError::unavailable(why)),
            other => return Err(ApiError::internal(format!("unexpected answer {other:?}"))),
        }
    }
    Err(ApiError::unavailable("the metadata leader keeps changing; retry"))
}

impl ApiError {
    /// Whether this refusal could come from metadata this node has not
    /// applied yet.
    fn may_be_stale(&self) -> bool {
        matches!(self.code, Code::NotFound | Code::Unauthorized | Code::Forbidden)
    }
}

impl Node {
    /// Whether this node may answer from its metadata without catching up.
    pub fn fresh(&self) -> bool {
        self.cluster.is_none() || self.consensus.is_fresh(LEASE)
    }

    /// Waits until this node has applied every metadata write acknowledged
    /// anywhere before this call.
    pub async fn catch_up(&self, reason: CatchUpReason) -> Result<(), ApiError> {
        if self.cluster.is_none() {
            // A node alone answers writes only after applying them.
            return Ok(());
        }
        let started = Instant::now();
        let index = self.barrier.read_index().await?;
        self.consensus.wait_applied(index, CATCH_UP_TIMEOUT).await?;
        record_catch_up(reason, started);
        Ok(())
    }

    /// Answers `f` of the metadata, read-your-writes: a node that is not
    /// fresh catches up first; a refusal is confirmed after a catch-up.
    pub async fn read<T>(&self, f: impl Fn(&MetaState) -> Result<T, ApiError>) -> Result<T, ApiError> {
        let stale = !self.fresh();
        if stale {
            self.catch_up(CatchUpReason::Stale).await?;
        }
        let first = f(&self.meta());
        match first {
            Err(e) if !stale && e.may_be_stale() && self.cluster.is_some() => {
                self.catch_up(CatchUpReason::Refusal).await?;
                f(&self.meta())
            }
            other => other,
        }
    }

    /// Before a read of a room's log: waits until this node has applied
    /// what the leader of the room's shard has committed, so a message
    /// answered anywhere is in the page. A node alone has applied it already.
    pub async fn catch_up_room(&self, room: &RoomRef) -> Result<(), ApiError> {
        match &self.cluster {
            Some(cluster) => self.catch_up_shard(self.shards(), cluster, room).await,
            None => Ok(()),
        }
    }

    /// The shards' form of [`Node::catch_up_room`]: this replica waits
    /// until it has applied its shard's log as far as the leader's
    /// ReadIndex.
    async fn catch_up_shard(
        &self,
        shards: &super::Shards,
        cluster: &crate::cluster::Cluster,
        room: &RoomRef,
    ) -> Result<(), ApiError> {
        let shard = self.shard_of(&room.id)?;
        let Some(raft) = shards.host.get(shard) else {
            return Err(ApiError::unavailable(format!("this node holds no replica of shard {shard} yet; retry")));
        };
        let started = Instant::now();
        let lease = shards.host.read_lease();
        // Leadership may be moving (a transfer, an election): ask whoever
        // leads now, again, until the deadline.
        let deadline = tokio::time::Instant::now() + CATCH_UP_TIMEOUT;
        let index = loop {
            let asked = match shards.leader(shard) {
                Some(leader) if leader == self.id => crate::shards::host::read_index(&raft, lease).await,
                Some(leader) => {
                    crate::shards::network::ShardClient::read_index(&cluster.endpoint, leader, shard, CATCH_UP_TIMEOUT)
                        .await
                        .map_err(|e| format!("shard {shard}'s leader (node {leader}): {e}"))
                }
                None => Err(format!("shard {shard} has no leader now")),
            };
            match asked {
                Ok(index) => break index,
                Err(e) if tokio::time::Instant::now() >= deadline => {
                    return Err(ApiError::unavailable(format!("{e}; retry")));
                }
                Err(_) => tokio::time::sleep(LEADER_RETRY).await,
            }
        };
        raft.wait(Some(AWAIT_APPLIED))
            .applied_index_at_least(Some(index), "the shard's read index is applied here")
            .await
            .map_err(|e| ApiError::unavailable(format!("this node's copy of shard {shard} is catching up: {e}")))?;
        record_catch_up(CatchUpReason::RoomLog, started);
        Ok(())
    }

    /// Waits until every peer has applied the log up to `index`; a peer that
    /// does not confirm within [`AWAIT_APPLIED`] is waited for until its
    /// lease must have run out.
    pub(super) async fn await_everywhere(&self, index: u64) {
        let Some(cluster) = &self.cluster else { return };
        let started = tokio::time::Instant::now();
        let peers: Vec<u64> = self.consensus.metrics().members.into_keys().filter(|id| *id != self.id).collect();
        let call = encode(&RaftCall::AwaitApplied(index));
        let waits = peers.into_iter().map(|peer| {
            let call = call.clone();
            async move {
                let answer = cluster.endpoint.request(peer, Channel::Raft, call, AWAIT_APPLIED).await;
                let confirmed = matches!(answer.map(|b| decode::<RaftAnswer>(&b)), Ok(Ok(RaftAnswer::Applied)));
                if !confirmed {
                    tracing::info!(peer, index, "a peer did not confirm a revocation; waiting out its lease");
                    tokio::time::sleep_until(started + LEASE_SAFE).await;
                }
            }
        });
        futures_util::future::join_all(waits).await;
    }
}

fn record_catch_up(reason: CatchUpReason, started: Instant) {
    let reason = reason.as_str();
    metrics::counter!("palaver_catch_ups_total", "reason" => reason).increment(1);
    metrics::histogram!("palaver_catch_up_seconds", "reason" => reason).record(started.elapsed().as_secs_f64());
}
