//! The shard groups this node takes part in: opening a shard's Raft group
//! (its log in the node's Raft store, its state machine over the room-log
//! store, its network over QUIC), serving peers' RPCs to it, closing it.
//!
//! The host does not decide which shards live here; placement and
//! membership changes come from the metadata group through the caller.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::future::BoxFuture;
use futures_util::stream::BoxStream;
use openraft::async_runtime::watch::WatchReceiver;
use openraft::error::InitializeError;
use openraft::error::RaftError;
use openraft::raft::AppendEntriesRequest;
use parking_lot::RwLock;

use super::discard;
use super::machine::Lease;
use super::machine::ShardStateMachine;
use super::network::ShardAnswer;
use super::network::ShardCall;
use super::network::ShardNetwork;
use super::network::ShardRpcs;
use super::network::SnapshotHeader;
use super::network::StreamAnswer;
use super::placement::ShardId;
use super::quiet::Actions;
use super::quiet::Beacon;
use super::quiet::GroupView;
use super::quiet::QuietSettings;
use super::quiet::Quieter;
use super::snapshot::SnapshotFile;
use super::types::ShardTypes;
use crate::peer::PeerEndpoint;
use crate::raft::LogStore;
use crate::raft::PeerNode;
use crate::raft::Space;
use crate::raft::Timing;
use crate::raft::types::blocking;
use crate::rooms::Publisher;
use crate::rooms::RoomLog;
use crate::search::SearchIndex;
use crate::storage::Store;
use crate::storage::WriteThread;

/// One shard's Raft group on this node.
pub type ShardRaft = openraft::Raft<ShardTypes, ShardStateMachine>;

/// Timing and sizes of the shard groups.
pub type ShardSettings = Timing;

/// The shard groups' timing unless the cluster file says otherwise: the
/// metadata group's heartbeats and elections, snapshots every 20,000
/// entries (a snapshot of a shard is a file of its rooms).
pub fn default_settings() -> ShardSettings {
    Timing {
        // As the metadata group's (raft/handle.rs): a lost leader is
        // replaced within about 3 s.
        heartbeat: Duration::from_millis(150),
        election: (Duration::from_millis(750), Duration::from_millis(1500)),
        snapshot_every: 20_000,
        keep_after_snapshot: 5_000,
        pre_vote: true,
    }
}

/// Why a shard group could not be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    /// Its storage could not be read.
    #[error("shard storage: {0}")]
    Storage(#[from] std::io::Error),
    /// openraft refused.
    #[error("shard raft: {0}")]
    Raft(String),
    /// The shard's previous state machine here is still writing.
    #[error("shard {0}: its previous state machine here is still writing; retry")]
    Busy(ShardId),
}

/// How long a shard whose leadership is being handed on stays awake: a
/// hand-over to a node that died is ended by an election within a few
/// election timeouts.
const HAND_OVER_AWAKE: Duration = Duration::from_secs(10);
/// How long opening a shard waits for its previous state machine to stop.
const LEASE_WAIT: Duration = Duration::from_secs(10);
/// How long the copy of a shard that moved away stays after its group
/// closed unless [`HostParts::discard_after`] says otherwise: reads begun on
/// it finish, and the watches of its rooms move to a replica from the
/// copy's last seqs.
pub const DISCARD_AFTER: Duration = Duration::from_secs(60);

/// Everything the host needs from the node.
pub struct HostParts {
    /// This node's id.
    pub me: u64,
    /// The node's Raft store (every group's log lives in it).
    pub raft_store: Store,
    /// The Raft store's one write thread.
    pub writer: WriteThread,
    /// The room-log store.
    pub rooms: Store,
    /// The room-log store's write thread (every shard's applies share it).
    pub rooms_writer: WriteThread,
    /// Reads of the room-log store.
    pub log: Arc<RoomLog>,
    /// Where shard snapshots are kept.
    pub snapshots: PathBuf,
    /// Where applied messages and deletions go.
    pub publish: Publisher,
    /// The peer transport (`None` on a node alone).
    pub endpoint: Option<PeerEndpoint>,
    /// Timing.
    pub settings: ShardSettings,
    /// Shards in the cluster (`None`: operations are not checked against
    /// it, for tests of one shard).
    pub shard_count: Option<u32>,
    /// How long the copy of a shard that moved away stays ([`DISCARD_AFTER`]).
    pub discard_after: Duration,
    /// The node's attachment files (`None`: applies leave files alone).
    pub files: Option<Arc<crate::rooms::files::Files>>,
    /// The node's search index, fed by every shard held here.
    pub search: Option<Arc<SearchIndex>>,
    /// When idle shards go quiet ([`super::quiet`]); `None`: never.
    pub quiet: Option<QuietSettings>,
}

/// The shard groups of this node.
pub struct ShardHost {
    parts: HostParts,
    /// Peers' calls per shard (`palaver_shard_calls_total`), registered
    /// once: looking a labelled counter up per call costs more than the call.
    calls: Vec<metrics::Counter>,
    groups: RwLock<BTreeMap<ShardId, ShardRaft>>,
    opening: tokio::sync::Mutex<()>,
    /// Per shard, the lease its state machine holds (see [`Lease`]).
    leases: parking_lot::Mutex<BTreeMap<ShardId, Arc<tokio::sync::Mutex<()>>>>,
    /// Shards that moved away, and when their copy here may go.
    retired: parking_lot::Mutex<BTreeMap<ShardId, Instant>>,
    /// Which shards are quiet here and why (`None`: shards never go quiet).
    quiet: Option<parking_lot::Mutex<Quieter>>,
    /// Nodes a beacon is on its way to (one at a time per node).
    beaconing: parking_lot::Mutex<BTreeSet<u64>>,
}

impl ShardHost {
    /// A host with no group open yet.
    pub fn new(parts: HostParts) -> Arc<Self> {
        let calls = (0..parts.shard_count.unwrap_or(0))
            .map(|shard| metrics::counter!("palaver_shard_calls_total", "shard" => shard.to_string()))
            .collect();
        // Discards a stop interrupted are finished first thing.
        let marked = discard::marked(&parts.rooms).unwrap_or_else(|e| {
            tracing::warn!(error = %e, "unreadable shard discard marks");
            Vec::new()
        });
        let now = Instant::now();
        let quiet = parts.quiet.map(|settings| parking_lot::Mutex::new(Quieter::new(parts.me, settings)));
        let host = Arc::new(Self {
            parts,
            calls,
            groups: RwLock::new(BTreeMap::new()),
            opening: tokio::sync::Mutex::new(()),
            leases: parking_lot::Mutex::new(BTreeMap::new()),
            retired: parking_lot::Mutex::new(marked.into_iter().map(|shard| (shard, now)).collect()),
            quiet,
            beaconing: parking_lot::Mutex::new(BTreeSet::new()),
        });
        if let Some(settings) = host.parts.quiet {
            tokio::spawn(keep_quiet(Arc::downgrade(&host), settings.every));
        }
        host
    }

    /// This node's id.
    pub fn me(&self) -> u64 {
        self.parts.me
    }

    /// The shard's group here, if open.
    pub fn get(&self, shard: ShardId) -> Option<ShardRaft> {
        self.groups.read().get(&shard).cloned()
    }

    /// How old a quorum acknowledgement a leader may read under: two
    /// thirds of the shortest election timeout, so no other leader can
    /// have been elected meanwhile.
    pub fn read_lease(&self) -> Duration {
        self.parts.settings.election.0 * 2 / 3
    }

    /// The shards open here.
    pub fn open_shards(&self) -> BTreeSet<ShardId> {
        self.groups.read().keys().copied().collect()
    }

    /// Opens the shard's group here (or answers the open one). With
    /// `initial`, a group whose store is fresh is initialised with those
    /// members: exactly one node may do that for a new shard. Without, the
    /// group waits to be added by its leader (a new replica).
    pub async fn open(
        &self,
        shard: ShardId,
        initial: Option<BTreeMap<u64, PeerNode>>,
    ) -> Result<ShardRaft, ShardError> {
        let _one_at_a_time = self.opening.lock().await;
        if let Some(raft) = self.get(shard) {
            return Ok(raft);
        }
        let p = &self.parts;
        let config = Arc::new(p.settings.openraft_config(&format!("palaver-shard-{shard}")).map_err(ShardError::Raft)?);
        let log = LogStore::<ShardTypes>::new(p.raft_store.clone(), Space::shard(shard), p.writer.clone());
        let lease = self.lease(shard).await?;
        // Back before its copy went: the copy stays and catches up from
        // the leader. A discard decided before a stop is finished now.
        self.retired.lock().remove(&shard);
        if discard::is_marked(&p.rooms, shard)? {
            self.finish_discard(shard).await?;
        }
        let sm = ShardStateMachine::open(
            shard,
            p.shard_count,
            p.rooms.clone(),
            p.rooms_writer.clone(),
            p.log.clone(),
            p.snapshots.clone(),
            p.publish.clone(),
        )?
        .holding(lease)
        .with_files(p.files.clone());
        let sm = match &p.search {
            Some(index) => sm.indexing(index.clone()),
            None => sm,
        };
        let network = ShardNetwork { endpoint: p.endpoint.clone(), shard };
        let raft = ShardRaft::new(p.me, config, network, log, sm).await.map_err(|e| ShardError::Raft(e.to_string()))?;
        if let Some(members) = initial {
            let fresh = !raft.is_initialized().await.map_err(|e| ShardError::Raft(e.to_string()))?;
            if fresh {
                match raft.initialize(members).await {
                    Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                    Err(e) => {
                        let _ = raft.shutdown().await;
                        return Err(ShardError::Raft(e.to_string()));
                    }
                }
            }
        }
        if let Some(quiet) = &self.quiet {
            // A restarted replica waits for a beacon before it may stand
            // (see `quiet`); a group alone has no one to wait for.
            let voters = raft.metrics().borrow_watched().membership_config.membership().voter_ids().count();
            if voters != 1 {
                raft.runtime_config().tick(false);
                quiet.lock().opened(shard, Instant::now());
            }
        }
        self.groups.write().insert(shard, raft.clone());
        tracing::debug!(shard, "shard group open");
        Ok(raft)
    }

    /// Stops the shard's group here (its data stays until it is dropped).
    /// Holds the lock `open` takes until the group has stopped; its state
    /// machine may go on applying what it was sent, and the next `open` of
    /// the shard waits for that ([`Lease`]).
    pub async fn close(&self, shard: ShardId) {
        let _one_at_a_time = self.opening.lock().await;
        let raft = self.groups.write().remove(&shard);
        if let Some(quiet) = &self.quiet {
            quiet.lock().closed(shard);
        }
        if let Some(raft) = raft
            && let Err(e) = raft.shutdown().await
        {
            tracing::warn!(shard, error = %e, "shard group shutdown");
        }
    }

    /// Closes the group of a shard that moved away from this node (recorded
    /// elsewhere, not wanted back) and schedules its copy's removal
    /// ([`ShardHost::discard_due`]) after [`HostParts::discard_after`].
    pub async fn retire(&self, shard: ShardId) {
        self.close(shard).await;
        self.retired.lock().insert(shard, Instant::now() + self.parts.discard_after);
    }

    /// Removes the copies of retired shards that are due and still closed;
    /// answers each shard removed with its number of rooms. One that fails
    /// is tried again later.
    pub async fn discard_due(&self) -> Vec<(ShardId, usize)> {
        let now = Instant::now();
        let due: Vec<ShardId> = self.retired.lock().iter().filter(|(_, at)| **at <= now).map(|(s, _)| *s).collect();
        let mut done = Vec::new();
        for shard in due {
            let _one_at_a_time = self.opening.lock().await;
            if self.get(shard).is_some() {
                self.retired.lock().remove(&shard);
                continue;
            }
            let Ok(lease) = self.lease(shard).await else { continue };
            let rooms = self.parts.rooms.clone();
            let marked = blocking(move || discard::mark(&rooms, shard)).await;
            let result = match marked {
                Ok(()) => self.finish_discard(shard).await,
                Err(e) => Err(e.into()),
            };
            drop(lease);
            match result {
                Ok(rooms) => {
                    self.retired.lock().remove(&shard);
                    tracing::info!(shard, rooms, "the copy of a shard that moved away is removed");
                    done.push((shard, rooms));
                }
                Err(e) => {
                    self.retired.lock().insert(shard, Instant::now() + self.parts.discard_after);
                    tracing::warn!(shard, error = %e, "the copy of a shard that moved away could not be removed; retrying later");
                }
            }
        }
        done
    }

    /// Finishes a marked discard of `shard` (its group closed, its lease held).
    async fn finish_discard(&self, shard: ShardId) -> Result<usize, ShardError> {
        let p = &self.parts;
        let (raft, rooms, log, dir) = (p.raft_store.clone(), p.rooms.clone(), p.log.clone(), p.snapshots.clone());
        let gone = blocking(move || discard::finish(&raft, &rooms, &log, &dir, shard)).await?;
        // Reading the shard's rooms now finds none: its part of the index goes.
        if let Some(index) = &p.search {
            index.reindex(shard, super::indexing::mark(None), super::indexing::source(p.rooms.clone(), shard));
        }
        Ok(gone)
    }

    /// Waits (up to [`LEASE_WAIT`]) until no state machine of `shard` is
    /// alive here, and answers the lease for the next one.
    async fn lease(&self, shard: ShardId) -> Result<Lease, ShardError> {
        let slot = self.leases.lock().entry(shard).or_default().clone();
        match tokio::time::timeout(LEASE_WAIT, slot.lock_owned()).await {
            Ok(guard) => Ok(Arc::new(guard)),
            Err(_) => Err(ShardError::Busy(shard)),
        }
    }

    /// Whether no state machine of `shard` holds its lease now.
    #[cfg(test)]
    pub fn lease_free(&self, shard: ShardId) -> bool {
        self.leases.lock().get(&shard).is_none_or(|slot| slot.try_lock().is_ok())
    }

    /// The view of each open group (of `only` those, if given) the
    /// quieting rules need.
    fn views(&self, only: Option<&BTreeSet<ShardId>>) -> BTreeMap<ShardId, GroupView> {
        let groups: Vec<(ShardId, ShardRaft)> = self
            .groups
            .read()
            .iter()
            .filter(|(shard, _)| only.is_none_or(|o| o.contains(shard)))
            .map(|(shard, raft)| (*shard, raft.clone()))
            .collect();
        groups.into_iter().map(|(shard, raft)| (shard, group_view(self.parts.me, &raft))).collect()
    }

    /// One check of the quieting rules, and what it asks for done.
    fn check_quiet(self: &Arc<Self>) {
        let Some(quiet) = &self.quiet else { return };
        let views = self.views(None);
        let actions = quiet.lock().check(Instant::now(), &views);
        self.act(actions);
    }

    /// Turns timers on and off, sends the woken leaders' heartbeats and the
    /// beacons.
    fn act(self: &Arc<Self>, actions: Actions) {
        let Actions { ticks, woken, beacons } = actions;
        for (shard, on) in ticks {
            if let Some(raft) = self.get(shard) {
                tracing::debug!(shard, on, "shard timer");
                raft.runtime_config().tick(on);
            }
        }
        for shard in woken {
            if let Some(raft) = self.get(shard) {
                tracing::debug!(shard, "quiet shard woken");
                tokio::spawn(async move {
                    let _ = raft.trigger().heartbeat().await;
                });
            }
        }
        if let Some(quiet) = &self.quiet {
            metrics::gauge!("palaver_shards_quiet").set(quiet.lock().quiet_count() as f64);
        }
        let Some(endpoint) = self.parts.endpoint.clone() else { return };
        let timeout = self.parts.quiet.map_or(Duration::from_secs(1), |q| q.grace / 2);
        for (to, beacon) in beacons {
            if !self.beaconing.lock().insert(to) {
                continue;
            }
            let (host, endpoint) = (Arc::downgrade(self), endpoint.clone());
            tokio::spawn(async move {
                let answer = super::network::ShardClient::beacon(&endpoint, to, &beacon, timeout).await;
                let Some(host) = host.upgrade() else { return };
                host.beaconing.lock().remove(&to);
                match answer {
                    Ok(accepted) => {
                        let Some(quiet) = &host.quiet else { return };
                        let actions = quiet.lock().on_answer(to, &beacon.offers, &accepted, Instant::now());
                        host.act(actions);
                    }
                    Err(e) => tracing::debug!(to, error = %e, "beacon not answered"),
                }
            });
        }
    }

    /// A peer's beacon: answers the shards kept quiet here.
    fn on_beacon(self: &Arc<Self>, beacon: &Beacon) -> Vec<ShardId> {
        let Some(quiet) = &self.quiet else { return Vec::new() };
        let offered: BTreeSet<ShardId> = beacon.offers.iter().map(|o| o.shard).collect();
        let views = self.views(Some(&offered));
        let (accepted, actions) = quiet.lock().on_beacon(beacon, Instant::now(), &views);
        self.act(actions);
        accepted
    }

    /// On its leader: wakes `shard` if quiet and keeps it awake for a
    /// while (its leadership is about to be handed on, say).
    pub fn wake(self: &Arc<Self>, shard: ShardId) {
        let Some(quiet) = &self.quiet else { return };
        let mut actions = Actions::default();
        quiet.lock().wake(shard, Instant::now(), &mut actions);
        self.act(actions);
    }

    /// On `shard`'s leader, before a write: openraft takes writes only
    /// under a leader lease, which runs out while a shard is quiet (no
    /// heartbeat acknowledged). Wakes the shard and renews the lease with
    /// one round to the followers when its last acknowledgement is old.
    pub async fn ready_to_write(self: &Arc<Self>, shard: ShardId, raft: &ShardRaft) {
        if self.quiet.is_none() {
            return;
        }
        if self.is_quiet(shard) {
            self.wake(shard);
        }
        let lease = self.read_lease();
        let acked =
            raft.metrics().borrow_watched().last_quorum_acked.as_ref().map(|at| openraft::Instant::elapsed(&**at));
        if acked.is_none_or(|age| age >= lease / 2)
            && let Err(e) = read_index(raft, lease).await
        {
            tracing::debug!(shard, error = %e, "the lease of a quiet shard's leader was not renewed");
        }
    }

    /// Whether `shard`'s timer is off here.
    pub fn is_quiet(&self, shard: ShardId) -> bool {
        self.quiet.as_ref().is_some_and(|q| q.lock().is_quiet(shard))
    }

    /// On its leader, before handing `shard`'s leadership on: wakes it and
    /// keeps it awake for [`HAND_OVER_AWAKE`] ([`Quieter::hold_awake`]).
    pub fn hold_awake(self: &Arc<Self>, shard: ShardId) {
        let Some(quiet) = &self.quiet else { return };
        let mut actions = Actions::default();
        let now = Instant::now();
        quiet.lock().hold_awake(shard, now + HAND_OVER_AWAKE, now, &mut actions);
        self.act(actions);
    }

    /// On its leader: the followers of quiet `shard` known to hold its
    /// whole log (they accepted its last beacon, recently); they get no
    /// heartbeats to say so.
    pub fn quiet_followers(&self, shard: ShardId) -> BTreeSet<u64> {
        self.quiet.as_ref().map(|q| q.lock().quiet_followers(shard, Instant::now())).unwrap_or_default()
    }

    /// Stops every group.
    pub async fn shutdown(&self) {
        for shard in self.open_shards() {
            self.close(shard).await;
        }
    }
}

/// On the shard's leader: the index a read must have applied to see every
/// write acknowledged before this call, leadership confirmed by a quorum
/// acknowledgement less than `lease` old (a heartbeat round when none).
pub async fn read_index(raft: &ShardRaft, lease: Duration) -> Result<u64, String> {
    let option = openraft::LinearizerOption::new(Some(lease), true);
    raft.get_read_linearizer(option).await.map(|l| l.read_log_id().index()).map_err(|e| e.to_string())
}

fn refused(e: impl std::fmt::Display) -> ShardAnswer {
    ShardAnswer::Refused(e.to_string())
}

/// What `raft`'s metrics say, as the quieting rules need it.
fn group_view(me: u64, raft: &ShardRaft) -> GroupView {
    let metrics = raft.metrics();
    let m = metrics.borrow_watched();
    let membership = m.membership_config.membership();
    let last_log = m.last_log_index;
    GroupView {
        me,
        leader: m.current_leader,
        vote: m.vote,
        last_log,
        committed: m.local_committed.as_ref().map(|l| l.index),
        voters: membership.voter_ids().collect(),
        joint: membership.get_joint_config().len() > 1,
        all_matched: m
            .replication
            .as_ref()
            .is_some_and(|r| r.values().all(|matched| matched.as_ref().map(|l| l.index) == last_log)),
    }
}

/// Checks the quieting rules every `every` while the host lives.
async fn keep_quiet(host: std::sync::Weak<ShardHost>, every: Duration) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(host) = host.upgrade() else { return };
        host.check_quiet();
    }
}

impl ShardRpcs for Arc<ShardHost> {
    fn call(&self, call: ShardCall) -> BoxFuture<'static, ShardAnswer> {
        let shard = match &call {
            ShardCall::Beacon(beacon) => {
                return futures_util::future::ready(ShardAnswer::Quiet(self.on_beacon(beacon))).boxed();
            }
            ShardCall::Append(s, _)
            | ShardCall::Vote(s, _)
            | ShardCall::PreVote(s, _)
            | ShardCall::ReadIndex(s)
            | ShardCall::TransferLeader(s, _) => *s,
        };
        if let Some(calls) = self.calls.get(shard as usize) {
            calls.increment(1);
        }
        let Some(raft) = self.get(shard) else {
            return futures_util::future::ready(ShardAnswer::NoGroup(shard)).boxed();
        };
        let lease = self.read_lease();
        async move {
            match call {
                ShardCall::Append(_, req) => raft.append_entries(req).await.map_or_else(refused, ShardAnswer::Append),
                ShardCall::Vote(_, req) => raft.vote(req).await.map_or_else(refused, ShardAnswer::Vote),
                ShardCall::PreVote(_, req) => raft.pre_vote(req).await.map_or_else(refused, ShardAnswer::Vote),
                ShardCall::TransferLeader(_, req) => match raft.handle_transfer_leader(req).await {
                    Ok(Ok(())) => ShardAnswer::Transferred,
                    Ok(Err(e)) => refused(e),
                    Err(e) => refused(e),
                },
                ShardCall::ReadIndex(_) => match read_index(&raft, lease).await {
                    Ok(index) => ShardAnswer::ReadIndex(index),
                    Err(e) => refused(e),
                },
                ShardCall::Beacon(_) => refused("a beacon is no shard's"),
            }
        }
        .boxed()
    }

    fn append_stream(
        &self,
        shard: ShardId,
        requests: BoxStream<'static, AppendEntriesRequest<ShardTypes>>,
    ) -> Option<BoxStream<'static, StreamAnswer>> {
        let calls = self.calls.get(shard as usize).cloned();
        let requests = requests.inspect(move |_| {
            if let Some(calls) = &calls {
                calls.increment(1);
            }
        });
        let raft = self.get(shard)?;
        Some(raft.stream_append(requests).map(|answer| answer.map_err(|fatal| fatal.to_string())).boxed())
    }

    fn snapshot_file(&self, shard: ShardId) -> std::io::Result<(SnapshotFile, std::fs::File)> {
        SnapshotFile::incoming(&self.parts.snapshots, shard)
    }

    fn install(&self, header: SnapshotHeader, file: SnapshotFile) -> BoxFuture<'static, ShardAnswer> {
        let Some(raft) = self.get(header.shard) else {
            let _ = std::fs::remove_file(file.path());
            return futures_util::future::ready(ShardAnswer::NoGroup(header.shard)).boxed();
        };
        async move {
            let snapshot = openraft::type_config::alias::SnapshotOf::<ShardTypes, SnapshotFile> {
                meta: header.meta,
                snapshot: file,
            };
            raft.install_full_snapshot(header.vote, snapshot).await.map_or_else(refused, ShardAnswer::Snapshot)
        }
        .boxed()
    }
}
