//! Moving the cluster toward the layout the metadata group records
//! (docs/shards.md, "Membership"). Every node runs [`Node::drive_layout`]
//! on a timer:
//! - each shard's leader takes its shard's next step ([`plan::next_step`]):
//!   new replicas catch up as learners, the voters change, the metadata
//!   group records the new replica set, leadership goes to the preferred
//!   replica (spread evenly, never on a draining or leaving node);
//! - the metadata leader keeps the metadata group's members equal to the
//!   layout's nodes, and forgets a leaving node once it holds no shard;
//! - every node closes the shard groups it no longer holds.
//!
//! Each step is idempotent and decided again from the recorded state on
//! the next tick, so a leader that fails half-way leaves nothing that the
//! next leader cannot finish.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::ChangeMembers;
use openraft::async_runtime::watch::WatchReceiver;
use parking_lot::Mutex;

use super::ApiError;
use super::Node;
use crate::meta::LayoutCommand;
use crate::meta::MetaCommand;
use crate::raft::PeerNode;
use crate::shards::host::ShardRaft;
use crate::shards::placement::Placement;
use crate::shards::placement::ShardId;
use crate::shards::plan;
use crate::shards::plan::ShardStep;
use crate::shards::plan::ShardView;

/// How long a new replica may take to catch up (a snapshot plus the log).
const CATCH_UP: Duration = Duration::from_secs(120);
/// A replica counts as caught up when it acknowledged within this long.
const RECENT_ACK: Duration = Duration::from_secs(1);
/// Membership changes one node runs at once.
const CONCURRENT_CHANGES: usize = 2;
/// After a leadership transfer, the shard is left alone this long (the
/// new leader takes over, or the transfer lapses and an election runs).
const TRANSFER_PAUSE: Duration = Duration::from_secs(5);
/// A shard led for less than this is not handed on yet (its followers may
/// still be catching up after an election).
const SETTLE: Duration = Duration::from_secs(2);

/// What occupies one shard on this node.
#[derive(Clone, Copy)]
enum Busy {
    /// A membership change runs.
    Changing,
    /// Another step ran; the shard is left alone until then.
    Until(Instant),
}

/// The steps in progress on this node, so a tick never starts a second
/// step for the same shard.
#[derive(Default)]
pub struct Steps {
    busy: Mutex<BTreeMap<ShardId, Busy>>,
    /// When this node became leader of each shard it leads, as first seen.
    led_since: Mutex<BTreeMap<ShardId, Instant>>,
    meta_busy: std::sync::atomic::AtomicBool,
}

impl Steps {
    /// Claims the shard for a step; false while another is running or
    /// its pause lasts, or when `changing` and enough changes run already.
    fn begin(&self, shard: ShardId, changing: bool) -> bool {
        let mut busy = self.busy.lock();
        let now = Instant::now();
        let free = match busy.get(&shard) {
            Some(Busy::Changing) => false,
            Some(Busy::Until(until)) => *until <= now,
            None => true,
        };
        let changes = busy.values().filter(|b| matches!(b, Busy::Changing)).count();
        if !free || (changing && changes >= CONCURRENT_CHANGES) {
            return false;
        }
        busy.insert(shard, if changing { Busy::Changing } else { Busy::Until(now + CATCH_UP) });
        true
    }

    /// Frees the shard once `pause` has passed.
    fn end(&self, shard: ShardId, pause: Duration) {
        self.busy.lock().insert(shard, Busy::Until(Instant::now() + pause));
    }

    fn settled(&self, shard: ShardId, leads: bool) -> bool {
        let mut led = self.led_since.lock();
        if !leads {
            led.remove(&shard);
            return false;
        }
        led.entry(shard).or_insert_with(Instant::now).elapsed() >= SETTLE
    }
}

fn peer_of(nodes: &BTreeMap<u64, crate::meta::ClusterNode>, id: u64) -> Result<PeerNode, ApiError> {
    let n = nodes.get(&id).ok_or_else(|| ApiError::unavailable(format!("node {id} has no address")))?;
    Ok(PeerNode { client_addr: n.client.clone(), peer_addr: n.peer.clone() })
}

/// The replicas that acknowledged the leader recently and hold its whole
/// log; those of a quiet shard (`quiet`: the followers that accepted its
/// last beacon) get no heartbeats to acknowledge.
fn caught_up(raft: &ShardRaft, quiet: BTreeSet<u64>) -> BTreeSet<u64> {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    let last = m.last_log_index;
    let (Some(replication), Some(heartbeat)) = (&m.replication, &m.heartbeat) else { return BTreeSet::new() };
    replication
        .iter()
        .filter(|(_, matched)| matched.as_ref().map(|l| l.index) == last)
        .filter(|(id, _)| {
            quiet.contains(*id)
                || heartbeat
                    .get(*id)
                    .and_then(|at| at.as_ref())
                    .is_some_and(|at| openraft::Instant::elapsed(&**at) < RECENT_ACK)
        })
        .map(|(id, _)| *id)
        .collect()
}

/// The group's voters and all its members (voters and learners).
fn membership(raft: &ShardRaft) -> (BTreeSet<u64>, BTreeSet<u64>) {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    let membership = m.membership_config.membership();
    (membership.voter_ids().collect(), membership.nodes().map(|(id, _)| *id).collect())
}

impl Node {
    /// Nodes that should get no new clients and lead no shard: draining,
    /// or leaving the cluster.
    pub fn avoided_nodes(&self) -> BTreeSet<u64> {
        let meta = self.meta();
        let mut avoid: BTreeSet<u64> = meta.draining.clone();
        avoid.extend(meta.layout.nodes.iter().filter(|(_, n)| n.leaving).map(|(id, _)| *id));
        avoid
    }

    /// Before a planned stop: hands the leadership of every shard this node
    /// leads, and of the metadata group, to voters that hold the whole log,
    /// then waits (at most `within`) until they lead, so no send waits for
    /// an election. A node alone has nothing to hand over.
    pub async fn hand_over(&self, within: Duration) {
        if self.cluster.is_none() {
            return;
        }
        let shards = self.shards();
        let work = async {
            let mut handed = Vec::new();
            for shard in shards.host.open_shards() {
                let Some(raft) = shards.led(shard) else { continue };
                let (voters, _) = membership(&raft);
                let ready: Vec<u64> = caught_up(&raft, shards.host.quiet_followers(shard))
                    .into_iter()
                    .filter(|id| *id != self.id && voters.contains(id))
                    .collect();
                // Spread the shards over the replicas that can take them.
                let Some(to) = ready.get(shard as usize % ready.len().max(1)).copied() else {
                    tracing::warn!(shard, "no caught-up replica to hand the shard to; it elects after the stop");
                    continue;
                };
                shards.host.hold_awake(shard);
                match raft.trigger().transfer_leader(to).await {
                    Ok(()) => handed.push(shard),
                    Err(e) => tracing::warn!(shard, to, error = %e, "shard leadership not handed on"),
                }
            }
            let raft = self.consensus.raft();
            let mut meta_handed = false;
            if self.consensus.metrics().current_leader == Some(self.id) {
                let voters: Vec<u64> = raft
                    .metrics()
                    .borrow_watched()
                    .membership_config
                    .membership()
                    .voter_ids()
                    .filter(|id| *id != self.id)
                    .collect();
                if let Some(to) = voters.first() {
                    match raft.trigger().transfer_leader(*to).await {
                        Ok(()) => meta_handed = true,
                        Err(e) => tracing::warn!(to, error = %e, "metadata leadership not handed on"),
                    }
                }
            }
            tracing::info!(shards = handed.len(), metadata = meta_handed, "leaderships handed on before stopping");
            let mut tick = tokio::time::interval(Duration::from_millis(50));
            loop {
                tick.tick().await;
                let leads_shard = handed.iter().any(|shard| shards.led(*shard).is_some());
                let leads_meta = meta_handed && self.consensus.metrics().current_leader == Some(self.id);
                if !leads_shard && !leads_meta {
                    return;
                }
            }
        };
        if tokio::time::timeout(within, work).await.is_err() {
            tracing::warn!("hand-over took too long; stopping anyway");
        }
    }

    /// One round of moving this node's part of the cluster toward the
    /// recorded layout (see the module's documentation).
    pub(super) fn drive_layout(self: &Arc<Self>) {
        let shards = self.shards();
        let layout = {
            let meta = self.meta();
            if !meta.layout.is_set() {
                return;
            }
            meta.layout.clone()
        };
        let avoid = self.avoided_nodes();
        let desired = layout.desired();
        let preferred = Placement { replicas: layout.shards.clone() }.leaders_avoiding(&avoid);
        for shard in shards.host.open_shards() {
            let recorded = layout.replicas(shard);
            let wanted = desired.replicas.get(shard as usize).map_or(&[][..], Vec::as_slice);
            if !layout.hosts(self.id, shard) && !wanted.contains(&self.id) {
                // Moved away and recorded so: nothing here serves it. This
                // holds for a group that still thinks it leads, too: a
                // leader that removed itself from the voters hears from no
                // one after the change, and would go on leading nothing.
                shards.steps.settled(shard, false);
                let node = self.clone();
                tokio::spawn(async move {
                    node.shards().host.retire(shard).await;
                    tracing::info!(shard, "shard moved away; its group here is closed, its copy goes in a minute");
                });
                continue;
            }
            let Some(raft) = shards.led(shard) else {
                shards.steps.settled(shard, false);
                continue;
            };
            if !shards.steps.settled(shard, true) {
                continue;
            }
            let (voters, members) = membership(&raft);
            let caught_up = caught_up(&raft, shards.host.quiet_followers(shard));
            let view = ShardView {
                me: self.id,
                recorded,
                desired: wanted,
                voters: &voters,
                members: &members,
                preferred: preferred.get(shard as usize).copied().flatten(),
                caught_up: &caught_up,
            };
            let step = plan::next_step(&view);
            if step == ShardStep::Stay {
                continue;
            }
            if !shards.steps.begin(shard, matches!(step, ShardStep::ChangeVoters { .. })) {
                continue;
            }
            let node = self.clone();
            let addresses = layout.nodes.clone();
            tokio::spawn(async move {
                let pause = match &step {
                    ShardStep::TransferLeader(_) => TRANSFER_PAUSE,
                    _ => Duration::ZERO,
                };
                if let Err(e) = node.take_step(shard, &raft, step, &addresses).await {
                    tracing::info!(shard, error = %e.message, "shard step not done; retrying later");
                }
                node.shards().steps.end(shard, pause);
            });
        }
        if self.consensus.metrics().current_leader == Some(self.id)
            && !shards.steps.meta_busy.swap(true, std::sync::atomic::Ordering::AcqRel)
        {
            let node = self.clone();
            tokio::spawn(async move {
                if let Err(e) = node.align_metadata_members().await {
                    tracing::info!(error = %e.message, "metadata members not aligned yet; retrying later");
                }
                node.shards().steps.meta_busy.store(false, std::sync::atomic::Ordering::Release);
            });
        }
    }

    async fn take_step(
        &self,
        shard: ShardId,
        raft: &ShardRaft,
        step: ShardStep,
        nodes: &BTreeMap<u64, crate::meta::ClusterNode>,
    ) -> Result<(), ApiError> {
        let raft_error =
            |what: &str, e: &dyn std::fmt::Display| ApiError::unavailable(format!("shard {shard}: {what}: {e}"));
        if !matches!(step, ShardStep::Stay) {
            // Membership changes are writes: a quiet leader renews its lease.
            self.shards().host.ready_to_write(shard, raft).await;
        }
        match step {
            ShardStep::Stay => Ok(()),
            ShardStep::ChangeVoters { learners, voters, remove } => {
                for id in learners {
                    tracing::info!(shard, node = id, "a new replica catches up");
                    tokio::time::timeout(CATCH_UP, raft.add_learner(id, peer_of(nodes, id)?, true))
                        .await
                        .map_err(|_| raft_error("adding a learner", &"it did not catch up in time"))?
                        .map_err(|e| raft_error("adding a learner", &e))?;
                }
                tracing::info!(shard, ?voters, ?remove, "shard voters change");
                // Former voters are learners after the change; then they go.
                raft.change_membership(ChangeMembers::ReplaceAllVoters(voters.clone()), true)
                    .await
                    .map_err(|e| raft_error("changing voters", &e))?;
                if !remove.is_empty() {
                    raft.change_membership(ChangeMembers::RemoveNodes(remove), false)
                        .await
                        .map_err(|e| raft_error("removing learners", &e))?;
                }
                let mut ordered: Vec<u64> = voters.into_iter().collect();
                let desired = self.meta().layout.desired();
                if let Some(want) = desired.replicas.get(shard as usize)
                    && want.iter().copied().collect::<BTreeSet<_>>() == ordered.iter().copied().collect()
                {
                    ordered = want.clone();
                }
                self.record_replicas(shard, ordered).await
            }
            ShardStep::Remove(ids) => {
                tracing::info!(shard, ?ids, "nodes that are not replicas leave the shard's group");
                raft.change_membership(ChangeMembers::RemoveNodes(ids), false)
                    .await
                    .map(|_| ())
                    .map_err(|e| raft_error("removing learners", &e))
            }
            ShardStep::Record(replicas) => self.record_replicas(shard, replicas).await,
            ShardStep::TransferLeader(to) => {
                tracing::info!(shard, to, "shard leadership handed on");
                self.shards().host.hold_awake(shard);
                raft.trigger().transfer_leader(to).await.map_err(|e| raft_error("transferring leadership", &e))
            }
        }
    }

    async fn record_replicas(&self, shard: ShardId, replicas: Vec<u64>) -> Result<(), ApiError> {
        tracing::info!(shard, ?replicas, "shard replicas recorded");
        self.propose(MetaCommand::Layout { actor: None, cmd: LayoutCommand::SetReplicas { shard, replicas } })
            .await
            .map(|_| ())
    }

    /// On the metadata leader: the metadata group's voters become the
    /// layout's nodes (a new node first catches up as a learner), and a
    /// leaving node that holds no shard any more is forgotten.
    async fn align_metadata_members(&self) -> Result<(), ApiError> {
        let (nodes, forget) = {
            let meta = self.meta();
            let layout = &meta.layout;
            let forget: Vec<u64> = layout
                .nodes
                .iter()
                .filter(|(id, n)| n.leaving && !layout.shards.iter().any(|r| r.contains(id)))
                .map(|(id, _)| *id)
                .collect();
            (layout.nodes.clone(), forget)
        };
        for id in forget {
            tracing::info!(node = id, "a leaving node holds no shard any more: forgotten");
            self.propose(MetaCommand::Layout { actor: None, cmd: LayoutCommand::ForgetNode { id } }).await?;
        }
        let raft = self.consensus.raft();
        let members = self.consensus.metrics().members;
        let unavailable = |e: &dyn std::fmt::Display| ApiError::unavailable(format!("metadata membership: {e}"));
        for (id, n) in &nodes {
            if !members.contains_key(id) {
                let peer = PeerNode { client_addr: n.client.clone(), peer_addr: n.peer.clone() };
                tracing::info!(node = id, "a new node catches up on the metadata");
                tokio::time::timeout(CATCH_UP, raft.add_learner(*id, peer, true))
                    .await
                    .map_err(|_| unavailable(&"the new node did not catch up in time"))?
                    .map_err(|e| unavailable(&e))?;
            }
        }
        let wanted: BTreeSet<u64> = nodes.keys().copied().collect();
        let voters: BTreeSet<u64> =
            raft.metrics().borrow_watched().membership_config.membership().voter_ids().collect();
        if !wanted.contains(&self.id) {
            // A leader that removed itself would leave the others without a
            // leader until an election: hand leadership on first, and let
            // the next leader make the change.
            if let Some(to) = wanted.iter().find(|id| voters.contains(id)) {
                tracing::info!(to, "this node leaves the cluster: metadata leadership handed on");
                raft.trigger().transfer_leader(*to).await.map_err(|e| unavailable(&e))?;
                tokio::time::sleep(TRANSFER_PAUSE).await;
                return Ok(());
            }
        }
        let stale: BTreeSet<u64> =
            members.keys().filter(|id| !wanted.contains(id) && !voters.contains(id)).copied().collect();
        let mut changes = Vec::new();
        if voters != wanted {
            changes.push(ChangeMembers::ReplaceAllVoters(wanted.clone()));
        }
        if !stale.is_empty() {
            changes.push(ChangeMembers::RemoveNodes(stale));
        }
        if !changes.is_empty() {
            tracing::info!(?voters, ?wanted, "metadata members change");
            raft.change_membership(ChangeMembers::Batch(changes), false).await.map_err(|e| unavailable(&e))?;
        }
        Ok(())
    }
}
