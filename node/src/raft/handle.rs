//! [`Consensus`]: the handle the rest of the node uses to propose metadata
//! commands, read the metadata, and watch the Raft group.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use openraft::Config;
use openraft::LinearizerOption;
use openraft::ServerState;
use openraft::SnapshotPolicy;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::ClientWriteError;
use openraft::error::ForwardToLeader;
use openraft::error::InitializeError;
use openraft::error::LinearizableReadError;
use openraft::error::RaftError;
use parking_lot::RwLock;
use parking_lot::RwLockReadGuard;

use super::log_store::LogStore;
use super::log_store::Space;
use super::network::PeerNetwork;
use super::state_machine::EffectSink;
use super::state_machine::MetaStateMachine;
use super::types::MetaRaft;
use super::types::PeerNode;
use super::types::TypeConfig;
use crate::meta::MetaCommand;
use crate::meta::MetaReply;
use crate::meta::MetaRequest;
use crate::meta::MetaState;
use crate::storage::Store;
use crate::storage::WriteThread;

/// How this node takes part in the metadata Raft group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RaftSettings {
    /// This node's id (never reused for another node).
    pub node_id: u64,
    /// This node's addresses.
    pub node: PeerNode,
    /// The initial cluster, this node included. The member with the smallest
    /// id initialises the group on first start; the others wait for it.
    /// Used only on a fresh store: later starts take the membership from the
    /// log and snapshot.
    pub members: BTreeMap<u64, PeerNode>,
    /// How often the leader sends heartbeats.
    pub heartbeat_interval: Duration,
    /// A follower that hears no leader for a random time between these two
    /// starts an election.
    pub election_timeout: (Duration, Duration),
    /// Take a snapshot after this many log entries since the last one.
    pub snapshot_every: u64,
    /// How many log entries already in a snapshot are kept (a follower that
    /// lags by less catches up from the log rather than a snapshot).
    pub logs_kept_after_snapshot: u64,
}

impl RaftSettings {
    /// Settings with the default timing for this node and initial cluster.
    pub fn new(node_id: u64, node: PeerNode, members: BTreeMap<u64, PeerNode>) -> Self {
        Self {
            node_id,
            node,
            members,
            // Every node's sends wait for a metadata leader once their lease
            // runs out: openraft refuses votes for `election_timeout.1` after
            // the last heartbeat, and a pre-vote refused for that is retried
            // after one more timeout, so a lost leader is replaced within
            // about twice the upper bound (3 s; 6-8 s were seen with 1.5-3 s).
            heartbeat_interval: Duration::from_millis(150),
            election_timeout: (Duration::from_millis(750), Duration::from_millis(1500)),
            snapshot_every: 5000,
            logs_kept_after_snapshot: 1000,
        }
    }

    fn openraft_config(&self) -> Result<Config, StartError> {
        let timing = Timing {
            heartbeat: self.heartbeat_interval,
            election: self.election_timeout,
            snapshot_every: self.snapshot_every,
            keep_after_snapshot: self.logs_kept_after_snapshot,
            // Without it, a candidate refused for the lease still raises its
            // term, and the split votes that follow cost whole timeouts.
            pre_vote: true,
        };
        timing.openraft_config("palaver-meta").map_err(StartError::Config)
    }
}

/// The timing and log sizes of a Raft group (the metadata group or a shard).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Timing {
    /// How often the leader sends heartbeats.
    pub heartbeat: Duration,
    /// A follower that hears no leader for a random time between these two
    /// starts an election.
    pub election: (Duration, Duration),
    /// Take a snapshot after this many entries since the last one.
    pub snapshot_every: u64,
    /// Entries already in a snapshot kept for followers that lag a little.
    pub keep_after_snapshot: u64,
    /// A node cut off for a while asks whether it could win before it
    /// raises its term, so once back it does not depose a leader that kept
    /// working.
    pub pre_vote: bool,
}

impl Timing {
    /// openraft's configuration for a group called `name`.
    pub fn openraft_config(&self, name: &str) -> Result<Config, String> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let mut config = Config {
            cluster_name: name.to_string(),
            heartbeat_interval: ms(self.heartbeat),
            election_timeout_min: ms(self.election.0),
            election_timeout_max: ms(self.election.1),
            snapshot_policy: SnapshotPolicy::LogsSinceLast(self.snapshot_every.max(1)),
            max_in_snapshot_log_to_keep: self.keep_after_snapshot,
            enable_pre_vote: Some(self.pre_vote),
            // openraft 0.10 lets a leader that restarts resume its term
            // without an election by default. Its log may have lost the
            // unflushed tail that followers already hold; leading on in
            // the same term, it then makes new entries under the log ids of
            // the lost ones, and followers that hold the old ones never
            // replace them (Raft trusts equal log ids to be equal entries).
            // The fault suite saw exactly that: T5-N1.433 stored different
            // sends on the restarted leader and on every other copy.
            enable_leader_restore: Some(false),
            // A follower that acknowledged an append within the last
            // interval gets no heartbeat: under a steady stream of sends
            // every shard's heartbeats (a QUIC stream each, two followers
            // every 150 ms, 64 shards) were work that proved nothing new.
            // openraft's rule, interval + this + one tick < the election
            // timeout, holds: 150 + 150 + 30 < 750 ms.
            heartbeat_min_interval: Some(ms(self.heartbeat)),
            ..Config::default()
        };
        // A follower further behind than this gets a snapshot; it must exceed
        // the snapshot interval or a snapshot could not close the gap.
        config.replication_lag_threshold = config.replication_lag_threshold.max(self.snapshot_every.saturating_mul(2));
        config.validate().map_err(|e| e.to_string())
    }
}

/// Why [`Consensus::start`] failed.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// The settings are inconsistent (timeouts, members).
    #[error("invalid raft settings: {0}")]
    Config(String),
    /// The Raft store could not be read.
    #[error("raft storage: {0}")]
    Storage(#[from] std::io::Error),
    /// openraft refused to start or initialise.
    #[error("raft failed to start: {0}")]
    Raft(String),
}

/// Why a proposal (or a wait) did not succeed.
#[derive(Debug, thiserror::Error)]
pub enum ConsensusError {
    /// This node is not the leader: the command was not appended; send it to
    /// `leader` (id and addresses) if one is known.
    #[error("not the metadata leader{}", match leader {
        Some((id, node)) => format!(" (the leader is node {id} at {})", node.client_addr),
        None => " (no leader known)".to_string(),
    })]
    NotLeader {
        /// The current leader, if known.
        leader: Option<(u64, PeerNode)>,
    },
    /// Raft could not take the command (stopped, storage failure, leadership
    /// lost after the command was appended, timeout); whether it was applied
    /// is unknown when the message says so.
    #[error("metadata consensus unavailable: {0}")]
    Unavailable(String),
}

/// A snapshot of the Raft group as this node sees it (for `/api/cluster`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsensusMetrics {
    /// This node's id.
    pub node_id: u64,
    /// Leader, follower, candidate, learner or shutdown.
    pub role: ServerState,
    /// The current term.
    pub term: u64,
    /// The leader this node knows of.
    pub current_leader: Option<u64>,
    /// Index of the last entry in this node's log.
    pub last_log_index: Option<u64>,
    /// Index of the last entry applied to the state.
    pub last_applied: Option<u64>,
    /// Index of the last entry in the latest snapshot.
    pub snapshot: Option<u64>,
    /// Every node of the current membership, voters and learners.
    pub members: BTreeMap<u64, PeerNode>,
}

/// Initialises the group when the store is fresh and this node has the
/// smallest id of the initial cluster (exactly one node may do it).
async fn initialize_if_first(raft: &MetaRaft, settings: &RaftSettings) -> Result<(), StartError> {
    let first = settings.members.keys().next() == Some(&settings.node_id);
    if !first || raft.is_initialized().await.map_err(|e| StartError::Raft(e.to_string()))? {
        return Ok(());
    }
    match raft.initialize(settings.members.clone()).await {
        Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => Ok(()),
        Err(e) => Err(StartError::Raft(e.to_string())),
    }
}

/// This node's handle on the metadata Raft group.
#[derive(Clone)]
pub struct Consensus {
    raft: MetaRaft,
    state: Arc<RwLock<MetaState>>,
    applied: Arc<super::state_machine::AppliedIndex>,
    /// When this node last accepted AppendEntries from a leader (ms since
    /// `epoch`; 0: never): a follower that heard from its leader recently
    /// cannot be missing a write acknowledged longer ago than that.
    leader_contact: Arc<std::sync::atomic::AtomicU64>,
    epoch: std::time::Instant,
    /// The longest lease a leader may read under: two thirds of the
    /// shortest election timeout.
    max_lease: Duration,
    /// Flushes this node's Raft store for every group in it.
    writer: WriteThread,
    store: Store,
    node_id: u64,
}

impl std::fmt::Debug for Consensus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Consensus").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl Consensus {
    /// Starts Raft on `store` (the node's `raft.db`).
    ///
    /// On a fresh store the member with the smallest id initialises the group
    /// with `members`; every other start simply resumes: openraft reads the
    /// vote, the log and the committed index back, the state machine starts
    /// from the stored snapshot, and the log is re-applied up to the
    /// committed index before this returns.
    pub async fn start<N: PeerNetwork>(
        settings: RaftSettings,
        store: Store,
        network: N,
        effects: EffectSink,
    ) -> Result<Consensus, StartError> {
        if settings.members.is_empty() {
            return Err(StartError::Config("the initial cluster has no members".into()));
        }
        if settings.members.get(&settings.node_id).is_some_and(|n| *n != settings.node) {
            return Err(StartError::Config(format!(
                "node {} is listed in the cluster with other addresses",
                settings.node_id
            )));
        }
        let config = Arc::new(settings.openraft_config()?);
        let writer = WriteThread::start(store.clone(), "raft-store")?;
        let log_store = LogStore::<TypeConfig>::new(store.clone(), Space::meta(), writer.clone());
        let sm = MetaStateMachine::open(store.clone(), effects)?;
        let state = sm.state();
        let applied = sm.applied_index();
        let raft = MetaRaft::new(settings.node_id, config, network, log_store, sm)
            .await
            .map_err(|e| StartError::Raft(e.to_string()))?;
        if let Err(e) = initialize_if_first(&raft, &settings).await {
            let _ = raft.shutdown().await;
            return Err(e);
        }
        Ok(Consensus {
            raft,
            state,
            applied,
            leader_contact: Arc::default(),
            epoch: std::time::Instant::now(),
            max_lease: settings.election_timeout.0 * 2 / 3,
            writer,
            store,
            node_id: settings.node_id,
        })
    }

    /// Proposes `cmd` with the proposer's clock `now` (unix ms) and waits
    /// until it is committed and applied; answers what the state machine said.
    pub async fn propose(&self, now: u64, cmd: MetaCommand) -> Result<MetaReply, ConsensusError> {
        Ok(self.propose_request(MetaRequest { now, cmd }).await?.0)
    }

    /// Proposes a request made on any node (this one, or a follower that
    /// forwarded it); answers the reply and the log index it was applied at.
    pub async fn propose_request(&self, req: MetaRequest) -> Result<(MetaReply, u64), ConsensusError> {
        match self.raft.client_write(req).await {
            Ok(response) => Ok((response.data, response.log_id.index)),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ConsensusError::NotLeader { leader: self.leader_of(f) })
            }
            Err(e) => Err(ConsensusError::Unavailable(e.to_string())),
        }
    }

    fn leader_of(&self, f: ForwardToLeader<TypeConfig>) -> Option<(u64, PeerNode)> {
        let id = f.leader_id?;
        let node = match f.leader_node {
            Some(node) => node,
            None => self.raft.metrics().borrow_watched().membership_config.nodes().find(|(n, _)| **n == id)?.1.clone(),
        };
        Some((id, node))
    }

    /// Reads the metadata as applied on this node (may trail the leader).
    /// Do not hold the guard across an `await`.
    pub fn state(&self) -> RwLockReadGuard<'_, MetaState> {
        self.state.read()
    }

    /// Waits until this node knows a leader; answers its id.
    pub async fn wait_for_leader(&self, timeout: Duration) -> Result<u64, ConsensusError> {
        let metrics = self
            .raft
            .wait(Some(timeout))
            .metrics(|m| m.current_leader.is_some(), "a leader is known")
            .await
            .map_err(|e| ConsensusError::Unavailable(e.to_string()))?;
        metrics.current_leader.ok_or_else(|| ConsensusError::Unavailable("no leader".into()))
    }

    /// Waits until this node has applied the log up to `index` (so a write
    /// forwarded to the leader is visible to this node's local reads).
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> Result<(), ConsensusError> {
        if self.applied.wait_for(index, timeout).await {
            Ok(())
        } else {
            Err(ConsensusError::Unavailable(format!(
                "log index {index} not applied here within {timeout:?} (applied: {})",
                self.applied_index()
            )))
        }
    }

    /// The index of the last log entry applied here, at once (openraft's
    /// metrics may report it a moment later).
    pub fn applied_index(&self) -> u64 {
        self.applied.get()
    }

    /// The node's Raft store (the shards keep their logs in it too).
    pub fn store(&self) -> Store {
        self.store.clone()
    }

    /// The Raft store's write thread, shared with the room-log shards' logs so
    /// one flush makes every group's appends durable.
    pub fn writer(&self) -> WriteThread {
        self.writer.clone()
    }

    /// Records that a leader's AppendEntries (a heartbeat included) was accepted.
    pub fn note_leader_contact(&self) {
        let ms = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX).max(1);
        self.leader_contact.store(ms, std::sync::atomic::Ordering::Release);
    }

    /// Whether this node's metadata is known to be recent: it leads and a
    /// quorum acknowledged it within `lease`, or it follows and accepted
    /// AppendEntries from the leader within `lease`. A node alone in its
    /// group is always fresh. A node that is not fresh may lack writes the
    /// leader has acknowledged; it must catch up ([`Consensus::read_index`])
    /// before answering from its state.
    pub fn is_fresh(&self, lease: Duration) -> bool {
        let receiver = self.raft.metrics();
        let m = receiver.borrow_watched();
        match m.state {
            ServerState::Leader => {
                m.membership_config.membership().voter_ids().all(|id| id == self.node_id)
                    || m.last_quorum_acked.as_ref().is_some_and(|at| openraft::Instant::elapsed(&**at) < lease)
            }
            ServerState::Follower | ServerState::Learner => {
                let last = self.leader_contact.load(std::sync::atomic::Ordering::Acquire);
                let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX);
                last > 0 && now.saturating_sub(last) < u64::try_from(lease.as_millis()).unwrap_or(u64::MAX)
            }
            ServerState::Candidate | ServerState::Shutdown => false,
        }
    }

    /// On the leader: answers the log index every read must have applied to
    /// see every write acknowledged before this call (Raft's ReadIndex).
    /// Leadership is confirmed by a quorum acknowledgement of an RPC sent
    /// less than `lease` ago (a heartbeat round when there is none): no
    /// follower votes for another leader within its election timeout of
    /// hearing from this one, so the lease is capped below the shortest
    /// election timeout.
    pub async fn read_index(&self, lease: Duration) -> Result<u64, ConsensusError> {
        let option = LinearizerOption::new(Some(lease.min(self.max_lease)), true);
        match self.raft.get_read_linearizer(option).await {
            Ok(linearizer) => Ok(linearizer.read_log_id().index()),
            Err(RaftError::APIError(LinearizableReadError::ForwardToLeader(f))) => {
                Err(ConsensusError::NotLeader { leader: self.leader_of(f) })
            }
            Err(e) => Err(ConsensusError::Unavailable(e.to_string())),
        }
    }

    /// Role, leader, indexes and members, as this node sees them now.
    pub fn metrics(&self) -> ConsensusMetrics {
        let receiver = self.raft.metrics();
        let m = receiver.borrow_watched();
        ConsensusMetrics {
            node_id: self.node_id,
            role: m.state,
            term: m.current_term,
            current_leader: m.current_leader,
            last_log_index: m.last_log_index,
            last_applied: m.last_applied.map(|id| id.index),
            snapshot: m.snapshot.map(|id| id.index),
            members: m.membership_config.nodes().map(|(id, node)| (*id, node.clone())).collect(),
        }
    }

    /// The openraft instance: for the peer network to deliver RPCs to, and
    /// for administration (snapshots, membership changes).
    pub fn raft(&self) -> &MetaRaft {
        &self.raft
    }

    /// Stops Raft and makes everything it wrote durable.
    pub async fn shutdown(&self) {
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!("raft shutdown: {e}");
        }
        let store = self.store.clone();
        match tokio::task::spawn_blocking(move || store.flush()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("flushing the raft store at shutdown: {e}"),
            Err(e) => tracing::warn!("flushing the raft store at shutdown: {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_restarted_leader_must_win_an_election_before_it_leads_again() {
        let timing = Timing {
            heartbeat: Duration::from_millis(100),
            election: (Duration::from_millis(1000), Duration::from_millis(2000)),
            snapshot_every: 1000,
            keep_after_snapshot: 100,
            pre_vote: true,
        };
        let config = timing.openraft_config("test").expect("valid");
        assert_eq!(config.enable_leader_restore, Some(false));
    }
}
