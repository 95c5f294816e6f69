//! The node's side of room logs on shards (docs/shards.md): setting the
//! layout up, opening the shard groups placed on this node, and the batcher
//! that turns sends into shard log entries on a shard's leader. Used when
//! the cluster file sets `[cluster] shards`.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use openraft::async_runtime::watch::WatchReceiver;
use parking_lot::Mutex;
use tokio::sync::mpsc;
use tokio::sync::oneshot;

use super::ApiError;
use super::Node;
use crate::clock::now_ms;
use crate::meta::LayoutCommand;
use crate::meta::MetaCommand;
use crate::raft::PeerNode;
use crate::shards::host::ShardHost;
use crate::shards::host::ShardRaft;
use crate::shards::placement::Placement;
use crate::shards::placement::ShardId;
use crate::shards::types::OpResult;
use crate::shards::types::ShardBatch;
use crate::shards::types::ShardOp;

/// Operations in one log entry at most.
const BATCH_MAX: usize = 1_024;
/// Operations waiting for their entry, per shard, before senders wait.
const QUEUE: usize = 8_192;

type Pending = (ShardOp, oneshot::Sender<Result<OpResult, ApiError>>);
/// A shard placed on this node, its replicas, and the one that initialises it.
type Placed = (ShardId, Vec<u64>, Option<u64>);

/// Shards on this node: the host and, per shard this node leads, the queue
/// of operations waiting for the next entry.
pub struct Shards {
    /// The shard groups.
    pub host: Arc<ShardHost>,
    /// Shards in the cluster.
    pub count: u32,
    /// Replicas per shard.
    pub replication: u8,
    batchers: Mutex<BTreeMap<ShardId, mpsc::Sender<Pending>>>,
    /// Who leads the shards this node holds no replica of, as their
    /// leaders last said ([`crate::cluster::wire::Gossip::Leading`]).
    hints: Mutex<BTreeMap<ShardId, u64>>,
    /// Membership and leadership steps in progress here.
    pub(super) steps: super::membership::Steps,
}

impl Shards {
    /// Shards over `host`.
    pub fn new(host: Arc<ShardHost>, count: u32, replication: u8) -> Self {
        Self {
            host,
            count,
            replication,
            batchers: Mutex::new(BTreeMap::new()),
            hints: Mutex::new(BTreeMap::new()),
            steps: Default::default(),
        }
    }

    /// Queues `op` for shard `shard`'s next entry on this node, which must
    /// lead it (in call order: a socket's sends keep their order); the
    /// receiver answers once the entry is applied.
    pub async fn enqueue(&self, shard: ShardId, raft: ShardRaft, op: ShardOp) -> Result<OpAnswer, ApiError> {
        let tx = {
            let mut batchers = self.batchers.lock();
            match batchers.get(&shard) {
                Some(tx) if !tx.is_closed() => tx.clone(),
                _ => {
                    let (tx, rx) = mpsc::channel(QUEUE);
                    tokio::spawn(batch_loop(shard, self.host.clone(), raft, rx));
                    batchers.insert(shard, tx.clone());
                    tx
                }
            }
        };
        let (answer, wait) = oneshot::channel();
        tx.send((op, answer)).await.map_err(|_| ApiError::unavailable("the shard stopped; retry"))?;
        Ok(wait)
    }

    /// The shard's group here if this node leads it.
    pub fn led(&self, shard: ShardId) -> Option<ShardRaft> {
        let raft = self.host.get(shard)?;
        let leads = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            m.current_leader == Some(m.id)
        };
        leads.then_some(raft)
    }

    /// Who leads the shard, as far as this node knows: its own group's
    /// view where it holds a replica, else what the leaders gossip.
    pub fn leader(&self, shard: ShardId) -> Option<u64> {
        match self.host.get(shard) {
            Some(raft) => raft.metrics().borrow_watched().current_leader,
            None => self.hints.lock().get(&shard).copied(),
        }
    }

    /// The shards this node leads now.
    pub fn leading(&self) -> Vec<ShardId> {
        self.host.open_shards().into_iter().filter(|s| self.led(*s).is_some()).collect()
    }

    /// Node `from` says it leads exactly `shards` now.
    pub fn note_leading(&self, from: u64, shards: &[ShardId]) {
        let mut hints = self.hints.lock();
        hints.retain(|_, leader| *leader != from);
        for shard in shards.iter().filter(|s| **s < self.count) {
            hints.insert(*shard, from);
        }
    }

    /// Who leads the shard, waiting up to `timeout` for an election to end.
    pub async fn wait_for_leader(&self, shard: ShardId, timeout: Duration) -> Option<u64> {
        let raft = self.host.get(shard)?;
        let m = raft.wait(Some(timeout)).metrics(|m| m.current_leader.is_some(), "a shard leader is known").await;
        m.ok().and_then(|m| m.current_leader)
    }
}

/// The answer to one queued operation.
pub type OpAnswer = oneshot::Receiver<Result<OpResult, ApiError>>;

/// Waits for an operation's answer.
pub async fn answered(wait: OpAnswer) -> Result<OpResult, ApiError> {
    wait.await.map_err(|_| ApiError::unavailable("the shard stopped; retry"))?
}

/// Writes what is queued as one entry, waits for it, answers each op; the
/// next entry takes everything that arrived meanwhile (group commit).
async fn batch_loop(shard: ShardId, host: Arc<ShardHost>, raft: ShardRaft, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut ops = Vec::new();
        let mut answers = Vec::new();
        let mut next = Some(first);
        while let Some((op, answer)) = next.take() {
            ops.push(op);
            answers.push(answer);
            if ops.len() < BATCH_MAX {
                next = rx.try_recv().ok();
            }
        }
        host.ready_to_write(shard, &raft).await;
        metrics::counter!("palaver_shard_entries_total").increment(1);
        metrics::counter!("palaver_shard_entry_ops_total").increment(ops.len() as u64);
        let batch = ShardBatch { shard, ts: now_ms(), ops };
        match raft.client_write(batch).await {
            Ok(written) => {
                for (answer, result) in answers.into_iter().zip(written.data.0) {
                    let _ = answer.send(Ok(result));
                }
            }
            Err(e) => {
                // Not the leader any more, or stopping: the sender retries
                // with the same client_id, which dedup makes safe.
                let stopped = matches!(e, openraft::error::RaftError::Fatal(_));
                let e = ApiError::unavailable(format!("shard {shard}: {e}"));
                for answer in answers {
                    let _ = answer.send(Err(e.clone()));
                }
                if stopped {
                    // This group instance is closed (the shard moved away,
                    // perhaps to come back as a new instance): its metrics
                    // stay as they were, so they cannot tell. Ending here
                    // lets the next send start a batcher on the open group.
                    return;
                }
                let still_leader = {
                    let metrics = raft.metrics();
                    let m = metrics.borrow_watched();
                    m.current_leader == Some(m.id)
                };
                if !still_leader {
                    return;
                }
            }
        }
    }
}

impl Node {
    /// A room's shard; `unavailable` until this node knows the layout
    /// (before that every room would look like shard 0).
    pub fn shard_of(&self, room: &str) -> Result<ShardId, ApiError> {
        let meta = self.meta();
        if !meta.layout.is_set() {
            return Err(ApiError::unavailable("the shard layout is not known here yet; retry"));
        }
        Ok(meta.layout.shard_of(room))
    }

    /// The node's shard groups.
    pub fn shards(&self) -> &Shards {
        &self.shards
    }

    /// Sets the layout up once (on the metadata leader), then keeps this
    /// node's shard groups matching it and moves them toward it.
    pub(super) async fn run_shards(node: Weak<Node>) {
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        loop {
            tick.tick().await;
            let Some(node) = node.upgrade() else { return };
            match node.follow_layout().await {
                Ok(true) => node.drive_layout(),
                Ok(false) => {}
                Err(e) => tracing::debug!(error = %e.message, "shard groups not in place yet"),
            }
            node.shards().host.discard_due().await;
        }
    }

    /// One step toward the layout: the metadata leader sets it up if it is
    /// not; every node opens the groups placed on it. True once every group
    /// placed here is open.
    pub(super) async fn follow_layout(&self) -> Result<bool, ApiError> {
        let shards = self.shards();
        if !self.meta().layout.is_set() {
            if self.consensus.metrics().current_leader == Some(self.id) {
                let members = self.consensus.metrics().members;
                let nodes = members.iter().map(|(id, n)| (*id, n.client_addr.clone(), n.peer_addr.clone())).collect();
                let init = LayoutCommand::Init { shards: shards.count, replication: shards.replication, nodes };
                self.propose(MetaCommand::Layout { actor: None, cmd: init }).await?;
            }
            return Ok(false);
        }
        if let Some(cluster) = &self.cluster {
            // Every node must be able to dial every other, not only the ones
            // it shares a Raft group with: gossip, relays and remote reads
            // go to any node.
            let nodes: Vec<(u64, String)> =
                self.meta().layout.nodes.iter().map(|(id, n)| (*id, n.peer.clone())).collect();
            for (id, peer) in nodes {
                cluster.endpoint.learn_peer(id, &peer);
            }
        }
        self.open_placed_shards().await?;
        Ok(true)
    }

    /// Waits (bounded) until the layout is set and this node's shard groups
    /// are open and know their leaders, so a node that says it is ready
    /// can take sends.
    pub(super) async fn wait_for_shards(&self, timeout: Duration) -> Result<(), ApiError> {
        let deadline = tokio::time::Instant::now() + timeout;
        while !self.follow_layout().await.unwrap_or(false) {
            if tokio::time::Instant::now() >= deadline {
                return Err(ApiError::unavailable("the shard layout was not set up in time"));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let shards = self.shards();
        for shard in shards.host.open_shards() {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            shards.wait_for_leader(shard, left).await;
        }
        Ok(())
    }

    /// Opens every shard group this node keeps a copy of (see
    /// [`crate::meta::Layout::hosts`]) that is not open.
    async fn open_placed_shards(&self) -> Result<(), ApiError> {
        let shards = self.shards();
        let (placed, nodes): (Vec<Placed>, BTreeMap<u64, PeerNode>) = {
            let meta = self.meta();
            let layout = &meta.layout;
            let desired = layout.desired();
            // From the recorded layout alone, so every node names the same one.
            let preferred = Placement { replicas: layout.shards.clone() }.leaders();
            let placed = (0..layout.shards.len() as u32)
                .filter(|s| {
                    layout.hosts(self.id, *s) || desired.replicas.get(*s as usize).is_some_and(|r| r.contains(&self.id))
                })
                .map(|s| {
                    let replicas = layout.replicas(s).to_vec();
                    let first = preferred.get(s as usize).copied().flatten().or_else(|| replicas.first().copied());
                    (s, replicas, first)
                })
                .collect();
            let nodes = layout
                .nodes
                .iter()
                .map(|(id, n)| (*id, PeerNode { client_addr: n.client.clone(), peer_addr: n.peer.clone() }))
                .collect();
            (placed, nodes)
        };
        let open = shards.host.open_shards();
        for (shard, replicas, first) in placed {
            if open.contains(&shard) {
                continue;
            }
            // One replica initialises a new shard's group (the one that
            // should lead it: it campaigns at once, so leaders start out
            // spread and need no transfer); the others, and a node the
            // shard is moving to, wait for its leader.
            let initial = (first == Some(self.id))
                .then(|| replicas.iter().filter_map(|id| nodes.get(id).map(|n| (*id, n.clone()))).collect());
            shards.host.open(shard, initial).await.map_err(|e| ApiError::unavailable(e.to_string()))?;
        }
        Ok(())
    }
}
