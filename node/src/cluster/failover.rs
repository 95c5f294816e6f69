//! Room ownership when nodes come and go.
//!
//! - The Raft leader watches the other nodes' gossip; a node silent longer
//!   than the failure timeout loses its rooms to live nodes, each with its
//!   epoch raised (fencing: replicas refuse the old owner's records).
//! - A node that owns a room, because it just got it or because it just
//!   started, recovers the room before taking sends. Like a Raft leader
//!   elected by a majority, it asks a majority of nodes (itself included)
//!   for their log's tail and adopts the most recent log among them: the one
//!   whose last record has the highest epoch, then the highest seq. Every
//!   answered message is on a majority, so on at least one of them, and the
//!   most recent log holds it. The new owner replaces its uncommitted tail
//!   with that log, then writes the part not yet committed again under its
//!   own epoch and commits it through a majority like new messages: an owner
//!   only ever commits its own epoch's records, so an earlier owner's stale
//!   tail can never be counted into a majority by mistake.
//!
//! [`dead_owners`] and [`recovery_plan`] are the pure decisions.

use std::collections::BTreeMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use super::wire::RoomAnswer;
use super::wire::RoomCall;
use super::wire::decode;
use super::wire::encode;
use crate::clock::now_ms;
use crate::meta::MetaCommand;
use crate::peer::Channel;
use crate::rooms::Published;
use crate::rooms::RoomRef;
use crate::service::Node;

/// How often the leader looks for dead owners.
const WATCH_EVERY: Duration = Duration::from_millis(500);
/// How long a tail query may take.
const TAIL_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the other nodes may still answer once a majority did.
const MAJORITY_GRACE: Duration = Duration::from_millis(100);
/// Pause between recovery attempts while no majority answers.
const RETRY_PAUSE: Duration = Duration::from_millis(500);
/// Rooms moved per watch round at most (the rest follow next round).
const MOVES_PER_ROUND: usize = 256;

/// Nodes that count as dead: not this one, and silent (or never heard)
/// for `timeout_ms` since `since_ms` (when the watcher started).
pub fn dead_nodes(
    members: &[u64],
    me: u64,
    last_heard: impl Fn(u64) -> Option<u64>,
    since_ms: u64,
    now_ms: u64,
    timeout_ms: u64,
) -> Vec<u64> {
    members
        .iter()
        .copied()
        .filter(|id| *id != me)
        .filter(|id| now_ms.saturating_sub(last_heard(*id).unwrap_or(0).max(since_ms)) >= timeout_ms)
        .collect()
}

/// Rooms owned by dead nodes and where each goes: spread over the live
/// nodes by the room key.
pub fn dead_owners(
    rooms: impl Iterator<Item = (String, u64, u64, u64)>,
    dead: &[u64],
    live: &[u64],
) -> Vec<(String, u64, u64)> {
    if live.is_empty() {
        return Vec::new();
    }
    rooms
        .filter(|(_, _, owner, _)| dead.contains(owner))
        .map(|(room, key, _, epoch)| (room, live[(key % live.len() as u64) as usize], epoch + 1))
        .collect()
}

/// What a node's log of a room looks like at its end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tail {
    /// Last stored seq.
    pub seq: u64,
    /// The epoch the last stored record was written under.
    pub last_epoch: u64,
    /// The highest seq known committed there.
    pub committed: u64,
}

/// How a recovering owner brings its log up to date.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecoveryPlan {
    /// The node whose log to adopt; `None`: this node's own.
    pub source: Option<u64>,
    /// Committed on some node already: final, visible at once.
    pub committed: u64,
    /// The adopted log's last seq.
    pub target: u64,
}

/// Decides a recovery from this node's tail and the tails of the peers that
/// answered; `None` while fewer than a majority answered.
pub fn recovery_plan(mine: Tail, answers: &[(u64, Tail)], cluster_size: usize) -> Option<RecoveryPlan> {
    // A majority: this node and at least half of the others.
    if answers.len() < cluster_size / 2 {
        return None;
    }
    let committed = answers.iter().map(|(_, t)| t.committed).fold(mine.committed, u64::max);
    // The most recent log; this node's own wins ties (nothing to fetch).
    let recency = |t: &Tail| (t.last_epoch, t.seq);
    let mut best: (Option<u64>, Tail) = (None, mine);
    for (peer, tail) in answers {
        if recency(tail) > recency(&best.1) {
            best = (Some(*peer), *tail);
        }
    }
    if best.1.seq < committed {
        // Cannot happen while every node keeps its committed records; if it
        // does, a log that reaches the committed seq is the safer source.
        let (peer, tail) = answers.iter().max_by_key(|(_, t)| (t.committed, t.seq))?;
        if tail.committed > mine.committed {
            best = (Some(*peer), *tail);
        }
    }
    Some(RecoveryPlan { source: best.0, committed, target: best.1.seq.max(committed) })
}

/// The leader's watch: moves the rooms of dead nodes to live ones.
pub async fn watch(node: Weak<Node>, timeout_ms: u64) {
    let mut started = now_ms();
    let mut last_tick = started;
    let mut tick = tokio::time::interval(WATCH_EVERY);
    loop {
        tick.tick().await;
        let now = now_ms();
        // This process was paused (SIGSTOP, a long GC-like stall): its view
        // of the others is stale, not their silence; start counting afresh.
        if now.saturating_sub(last_tick) > 4 * WATCH_EVERY.as_millis() as u64 {
            started = now;
        }
        last_tick = now;
        let Some(node) = node.upgrade() else { return };
        let Some(cluster) = &node.cluster else { return };
        let m = node.consensus.metrics();
        if m.current_leader != Some(node.id) {
            continue;
        }
        let members: Vec<u64> = m.members.keys().copied().collect();
        let dead = {
            let presence = cluster.presence.lock();
            dead_nodes(&members, node.id, |id| presence.last_heard(id), started, now_ms(), timeout_ms)
        };
        if dead.is_empty() {
            continue;
        }
        let live: Vec<u64> = members.iter().copied().filter(|id| !dead.contains(id)).collect();
        let moves = {
            let meta = node.meta();
            let rooms = meta.rooms.values().map(|r| (r.info.id.clone(), r.info.key, r.info.owner_node, r.info.epoch));
            dead_owners(rooms, &dead, &live)
        };
        for (room, owner_node, epoch) in moves.into_iter().take(MOVES_PER_ROUND) {
            tracing::warn!(%room, owner_node, epoch, ?dead, "moving a room away from a silent node");
            let cmd = MetaCommand::AssignRoom { room: room.clone(), owner_node, epoch };
            if let Err(e) = node.propose(cmd).await {
                tracing::info!(%room, error = %e.message, "room move not applied (yet)");
            }
        }
    }
}

/// Recovers every room this node owns (at start).
pub async fn recover_owned(node: Arc<Node>) {
    let owned: Vec<(String, u64)> = {
        let meta = node.meta();
        meta.rooms.values().filter(|r| r.info.owner_node == node.id).map(|r| (r.info.id.clone(), r.info.key)).collect()
    };
    for (room, key) in owned {
        recover(node.clone(), room, key).await;
    }
}

/// Recovers one room this node now owns; sends to it wait (unavailable)
/// until this is done.
pub async fn recover(node: Arc<Node>, room: String, room_key: u64) {
    if !node.begin_recovery(room_key) {
        return;
    }
    let started = now_ms();
    loop {
        let still_owner = node.meta().rooms.get(&room).is_some_and(|r| r.info.owner_node == node.id);
        if !still_owner {
            break;
        }
        match try_recover(&node, &room, room_key).await {
            Ok(seq) => {
                tracing::info!(%room, seq, took_ms = now_ms() - started, "room recovered; taking sends");
                break;
            }
            Err(why) => {
                tracing::info!(%room, %why, "room recovery waiting for a majority");
                tokio::time::sleep(RETRY_PAUSE).await;
            }
        }
    }
    node.end_recovery(room_key);
}

/// Records written again under the new epoch per batch at most.
const RESTAMP_CHUNK: u64 = 1_000;

async fn try_recover(node: &Arc<Node>, room: &str, room_key: u64) -> Result<u64, String> {
    let Some(cluster) = &node.cluster else { return Err("not in a cluster".into()) };
    let my_epoch = node.meta().rooms.get(room).map_or(0, |r| r.info.epoch);
    // Appends under an older epoch (a stale local tail) are refused from here on.
    node.writer.fence(room_key, my_epoch).await;
    let mine = local_tail(node, room_key)?;
    let mut answers: BTreeMap<u64, Tail> = BTreeMap::new();
    let mut asks: futures_util::stream::FuturesUnordered<_> = cluster
        .peers
        .iter()
        .map(|peer| {
            let endpoint = cluster.endpoint.clone();
            let call = encode(&RoomCall::Tail { room_key });
            let peer = *peer;
            async move { (peer, endpoint.request(peer, Channel::Rooms, call, TAIL_TIMEOUT).await) }
        })
        .collect();
    let size = cluster.peers.len() + 1;
    // Once a majority answered, the rest get a moment more, not the timeout:
    // a dead node must not slow the takeover.
    let mut grace: Option<tokio::time::Instant> = None;
    loop {
        let next = match grace {
            Some(until) => match tokio::time::timeout_at(until, futures_util::StreamExt::next(&mut asks)).await {
                Ok(n) => n,
                Err(_) => break,
            },
            None => futures_util::StreamExt::next(&mut asks).await,
        };
        let Some((peer, answer)) = next else { break };
        if let Ok(bytes) = answer
            && let Ok(RoomAnswer::Tail { seq, last_epoch, committed, owner, epoch }) = decode::<RoomAnswer>(&bytes)
        {
            if epoch > my_epoch || (epoch == my_epoch && owner != node.id && owner != 0) {
                // A peer knows of a later move: this node's metadata is
                // behind (it just restarted); wait for Raft to catch up.
                return Err(format!("node {peer} has the room at epoch {epoch} (owner {owner}); catching up"));
            }
            answers.insert(peer, Tail { seq, last_epoch, committed });
        }
        if grace.is_none() && answers.len() + 1 > size / 2 {
            grace = Some(tokio::time::Instant::now() + MAJORITY_GRACE);
        }
    }
    let answers: Vec<(u64, Tail)> = answers.into_iter().collect();
    let plan = recovery_plan(mine, &answers, size)
        .ok_or_else(|| format!("{} of {} nodes answered", answers.len() + 1, size))?;
    if let Some(source) = plan.source {
        // This node's uncommitted records are not the most recent log's.
        node.writer.drop_tail(room_key, u64::MAX).await.map_err(|e| e.to_string())?;
        let have = node.log.stored_last(room_key).map_err(|e| e.to_string())?;
        if plan.target > have {
            super::replica::fill(node, source, room_key, room, have + 1, plan.target).await?;
        }
    }
    node.writer.reload(room_key).await;
    let stored = node.log.stored_last(room_key).map_err(|e| e.to_string())?;
    if stored < plan.target {
        return Err(format!("holds up to seq {stored} of {} after fetching", plan.target));
    }
    // Committed on some node: final, visible here at once.
    let old = node.log.last_seq(room_key).map_err(|e| e.to_string())?;
    if plan.committed > old {
        node.log.raise(room_key, plan.committed);
        let room_id: Arc<str> = room.into();
        for message in node.log.between(room_key, old + 1, plan.committed).map_err(|e| e.to_string())? {
            node.publish(Published::Message { room: room_id.clone(), room_key, message });
        }
    }
    // The rest is written again under this epoch and committed through a
    // majority before the room takes sends.
    let mut from = plan.committed.max(old) + 1;
    while from <= plan.target {
        let to = plan.target.min(from + RESTAMP_CHUNK - 1);
        let room_ref = RoomRef { key: room_key, id: room.into(), epoch: my_epoch, owner: node.id };
        node.writer.restamp(room_ref, from, to).await.map_err(|e| format!("seqs {from}..={to}: {e}"))?;
        from = to + 1;
    }
    node.writer.persist_committed(vec![(room_key, plan.target)]).await;
    node.announce_commits(vec![(room_key, room.to_string(), plan.target, my_epoch)]);
    Ok(plan.target)
}

/// The end of this node's copy of a room's log.
pub(crate) fn local_tail(node: &Node, room_key: u64) -> Result<Tail, String> {
    let tail = node.log.stored_tail(room_key).map_err(|e| e.to_string())?;
    let committed = node.log.last_seq(room_key).map_err(|e| e.to_string())?;
    let (seq, last_epoch) = tail.map_or((0, 0), |m| (m.seq, m.stored.epoch));
    Ok(Tail { seq, last_epoch, committed })
}

/// Before a planned stop: hands this node's rooms to live peers (each with a
/// new epoch, so the new owners recover them from the nodes still up) and
/// passes on Raft leadership, so the cluster takes no failure timeout.
/// Bounded by `within`.
pub async fn hand_over(node: &Arc<Node>, within: Duration) {
    let Some(cluster) = &node.cluster else { return };
    if node.shards().is_some() {
        // On shards, the other replicas elect a new leader by themselves.
        return;
    }
    let work = async {
        let live = cluster.presence.lock().alive(now_ms(), super::SILENT_MS);
        if live.is_empty() {
            tracing::warn!("no live peer to hand the rooms to; they move after the failure timeout");
            return;
        }
        let moves: Vec<(String, u64, u64)> = {
            let meta = node.meta();
            meta.rooms
                .values()
                .filter(|r| r.info.owner_node == node.id)
                .map(|r| (r.info.id.clone(), live[(r.info.key % live.len() as u64) as usize], r.info.epoch + 1))
                .collect()
        };
        let count = moves.len();
        for (room, owner_node, epoch) in moves {
            if let Err(e) = node.propose(MetaCommand::AssignRoom { room: room.clone(), owner_node, epoch }).await {
                tracing::warn!(%room, error = %e.message, "room not handed over");
            }
        }
        tracing::info!(rooms = count, to = ?live, "rooms handed over before stopping");
        if node.consensus.metrics().current_leader == Some(node.id) {
            if let Err(e) = node.consensus.raft().trigger().transfer_leader(live[0]).await {
                tracing::warn!(error = %e, "Raft leadership not passed on");
            } else {
                let _ = node.consensus.wait_for_leader(Duration::from_secs(2)).await;
            }
        }
    };
    if tokio::time::timeout(within, work).await.is_err() {
        tracing::warn!("hand-over took too long; stopping anyway");
    }
}

/// The rooms being recovered on this node.
#[derive(Debug, Default)]
pub struct Recovering {
    rooms: parking_lot::Mutex<HashSet<u64>>,
}

impl Recovering {
    /// Marks a room; false if it was already being recovered.
    pub fn begin(&self, room_key: u64) -> bool {
        self.rooms.lock().insert(room_key)
    }

    /// Unmarks a room.
    pub fn end(&self, room_key: u64) {
        self.rooms.lock().remove(&room_key);
    }

    /// Whether a room is being recovered.
    pub fn contains(&self, room_key: u64) -> bool {
        self.rooms.lock().contains(&room_key)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_node_is_dead_after_the_timeout_of_silence() {
        let heard = |id: u64| match id {
            2 => Some(10_000),
            3 => Some(6_000),
            _ => None,
        };
        assert_eq!(dead_nodes(&[1, 2, 3, 4], 1, heard, 0, 10_500, 3_000), vec![3, 4]);
        // A watcher that just started gives everyone the full timeout.
        assert_eq!(dead_nodes(&[1, 2, 3, 4], 1, heard, 9_000, 10_500, 3_000), Vec::<u64>::new());
        assert_eq!(dead_nodes(&[1], 1, heard, 0, 99_000, 3_000), Vec::<u64>::new());
    }

    #[test]
    fn rooms_of_dead_nodes_move_to_live_ones_with_a_new_epoch() {
        let rooms = vec![
            ("a".to_string(), 10, 2, 1),
            ("b".to_string(), 11, 1, 4),
            ("c".to_string(), 12, 2, 7),
            ("d".to_string(), 13, 3, 1),
        ];
        let moves = dead_owners(rooms.into_iter(), &[2], &[1, 3]);
        assert_eq!(moves, vec![("a".to_string(), 1, 2), ("c".to_string(), 1, 8)]);
        assert!(dead_owners(vec![("a".to_string(), 1, 2, 1)].into_iter(), &[2], &[]).is_empty());
    }

    fn tail(seq: u64, last_epoch: u64, committed: u64) -> Tail {
        Tail { seq, last_epoch, committed }
    }

    #[test]
    fn recovery_waits_for_a_majority() {
        assert_eq!(recovery_plan(tail(5, 1, 5), &[], 3), None);
        assert_eq!(recovery_plan(tail(5, 1, 5), &[(2, tail(6, 1, 6))], 5), None);
        let alone = recovery_plan(tail(5, 1, 4), &[], 1);
        assert_eq!(alone, Some(RecoveryPlan { source: None, committed: 4, target: 5 }));
    }

    #[test]
    fn recovery_adopts_the_log_with_the_latest_epoch_then_the_longest() {
        // Same epoch: the longer log.
        let plan = recovery_plan(tail(5, 1, 3), &[(2, tail(7, 1, 4))], 3);
        assert_eq!(plan, Some(RecoveryPlan { source: Some(2), committed: 4, target: 7 }));
        // A shorter log from a later owner beats a longer stale one.
        let plan = recovery_plan(tail(81, 2, 80), &[(2, tail(80, 3, 80)), (3, tail(79, 1, 79))], 3);
        assert_eq!(plan, Some(RecoveryPlan { source: Some(2), committed: 80, target: 80 }));
        // Ties stay with this node's own log.
        let plan = recovery_plan(tail(9, 2, 7), &[(3, tail(9, 2, 8))], 3);
        assert_eq!(plan, Some(RecoveryPlan { source: None, committed: 8, target: 9 }));
    }

    #[test]
    fn recovery_never_adopts_a_log_short_of_a_committed_seq() {
        let plan = recovery_plan(tail(3, 5, 3), &[(2, tail(10, 4, 10))], 3);
        assert_eq!(plan, Some(RecoveryPlan { source: Some(2), committed: 10, target: 10 }));
    }
}
