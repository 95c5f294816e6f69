//! Where room logs live: a room's shard, a shard's replicas over the node
//! set, and which replica should lead each shard. Pure functions of their
//! inputs: the metadata group records the outcome, so every node agrees.
//!
//! Replicas are chosen by rendezvous (highest random weight) hashing: each
//! (shard, node) pair gets a score and a shard lives on its `rf` best-scored
//! nodes. Adding a node changes at most one replica of each shard (the new
//! node displaces the lowest-scored one, or nothing), and removing a node
//! changes only the shards that had it, which is what makes growing and
//! shrinking the cluster cheap.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

/// A node id (the metadata group's).
pub type NodeId = u64;
/// A shard's number, `0..shards`.
pub type ShardId = u32;

/// Shards per cluster unless the cluster file says otherwise.
pub const DEFAULT_SHARDS: u32 = 64;
/// Replicas per shard unless the cluster file says otherwise.
pub const DEFAULT_REPLICATION: usize = 3;

/// FNV-1a, 64 bits: stable across builds and platforms, unlike std's hasher.
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(*b)).wrapping_mul(0x100_0000_01b3))
}

/// SplitMix64's finaliser: spreads nearby inputs over the whole range.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The shard of a room id.
pub fn shard_of(room: &str, shards: u32) -> ShardId {
    let shards = u64::from(shards.max(1));
    // Bounded by `shards`, itself a u32.
    (fnv1a(room.as_bytes()) % shards) as ShardId
}

fn score(shard: ShardId, node: NodeId) -> u64 {
    mix(mix(u64::from(shard)) ^ node)
}

/// The `rf` nodes of `nodes` a shard lives on, best score first (fewer when
/// there are fewer nodes). Duplicate node ids count once.
pub fn replicas(shard: ShardId, nodes: &[NodeId], rf: usize) -> Vec<NodeId> {
    let mut scored: Vec<(u64, NodeId)> = nodes.iter().map(|n| (score(shard, *n), *n)).collect();
    scored.sort_unstable_by(|a, b| b.cmp(a));
    scored.dedup_by_key(|(_, n)| *n);
    scored.into_iter().take(rf).map(|(_, n)| n).collect()
}

/// Every shard's replicas for one node set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Replicas of shard `i` at index `i`, best score first.
    pub replicas: Vec<Vec<NodeId>>,
}

impl Placement {
    /// Places `shards` shards on `nodes` with `rf` replicas each.
    pub fn new(shards: u32, nodes: &[NodeId], rf: usize) -> Self {
        Self { replicas: (0..shards).map(|s| replicas(s, nodes, rf)).collect() }
    }

    /// The shards that have a replica on `node`.
    pub fn shards_on(&self, node: NodeId) -> Vec<ShardId> {
        (0..self.replicas.len()).filter(|s| self.replicas[*s].contains(&node)).map(|s| s as ShardId).collect()
    }

    /// A leader for every shard, spread as evenly as the replica sets allow:
    /// shards are taken in order and each goes to the replica leading the
    /// fewest so far (ties: the best-scored one). Deterministic.
    pub fn leaders(&self) -> Vec<Option<NodeId>> {
        self.leaders_avoiding(&BTreeSet::new())
    }

    /// [`Placement::leaders`] with none on the `avoid` nodes (draining or
    /// leaving): a shard all of whose replicas are avoided gets `None`.
    pub fn leaders_avoiding(&self, avoid: &BTreeSet<NodeId>) -> Vec<Option<NodeId>> {
        let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
        self.replicas
            .iter()
            .map(|set| {
                let leader = set
                    .iter()
                    .filter(|n| !avoid.contains(n))
                    .min_by_key(|n| led.get(*n).copied().unwrap_or(0))
                    .copied();
                if let Some(l) = leader {
                    *led.entry(l).or_insert(0) += 1;
                }
                leader
            })
            .collect()
    }
}

/// How one shard's replica set changes between two placements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Move {
    /// The shard.
    pub shard: ShardId,
    /// Nodes that gain a replica (they first catch up as learners).
    pub add: Vec<NodeId>,
    /// Nodes that lose their replica.
    pub remove: Vec<NodeId>,
}

/// The replica changes that take `from` to `to` (same shard count), in
/// shard order.
pub fn moves(from: &Placement, to: &Placement) -> Vec<Move> {
    from.replicas
        .iter()
        .zip(&to.replicas)
        .enumerate()
        .filter_map(|(shard, (a, b))| {
            let add: Vec<NodeId> = b.iter().filter(|n| !a.contains(n)).copied().collect();
            let remove: Vec<NodeId> = a.iter().filter(|n| !b.contains(n)).copied().collect();
            (!add.is_empty() || !remove.is_empty()).then_some(Move { shard: shard as ShardId, add, remove })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn nodes(n: u64) -> Vec<NodeId> {
        (1..=n).collect()
    }

    #[test]
    fn rooms_spread_over_shards_and_stay_put() {
        assert_eq!(shard_of("lobby", 64), shard_of("lobby", 64));
        let mut counts = [0usize; 64];
        for i in 0..64_000 {
            counts[shard_of(&format!("room-{i}"), 64) as usize] += 1;
        }
        let (min, max) = (counts.iter().min().copied(), counts.iter().max().copied());
        assert!(min >= Some(800) && max <= Some(1200), "uneven shards: {min:?}..{max:?}");
        assert_eq!(shard_of("anything", 1), 0);
        assert_eq!(shard_of("anything", 0), 0, "zero shards behaves as one");
    }

    #[test]
    fn each_shard_has_rf_distinct_replicas_or_every_node() {
        for n in 1..=7 {
            let p = Placement::new(64, &nodes(n), 3);
            for set in &p.replicas {
                let mut sorted = set.clone();
                sorted.sort_unstable();
                sorted.dedup();
                assert_eq!(sorted.len(), set.len(), "a node twice in {set:?}");
                assert_eq!(set.len(), (n as usize).min(3));
            }
        }
        assert_eq!(replicas(5, &[2, 2, 1], 3).len(), 2, "duplicate ids count once");
    }

    #[test]
    fn replicas_spread_evenly_over_nodes() {
        let p = Placement::new(64, &nodes(5), 3);
        let per_node: Vec<usize> = nodes(5).iter().map(|n| p.shards_on(*n).len()).collect();
        // 192 replicas on 5 nodes: 38.4 each on average.
        assert!(per_node.iter().all(|c| (25..=52).contains(c)), "{per_node:?}");
    }

    #[test]
    fn adding_a_node_moves_at_most_one_replica_per_shard() {
        let before = Placement::new(64, &nodes(4), 3);
        let after = Placement::new(64, &nodes(5), 3);
        let m = moves(&before, &after);
        for mv in &m {
            assert_eq!(mv.add, vec![5], "only the new node gains: {mv:?}");
            assert_eq!(mv.remove.len(), 1, "{mv:?}");
        }
        // The new node takes about rf/N of the shards.
        assert!((20..=60).contains(&m.len()), "{} shards moved", m.len());
    }

    #[test]
    fn removing_a_node_moves_only_its_shards() {
        let before = Placement::new(64, &nodes(5), 3);
        let after = Placement::new(64, &[1, 2, 4, 5], 3);
        let m = moves(&before, &after);
        assert_eq!(m.len(), before.shards_on(3).len());
        for mv in &m {
            assert_eq!(mv.remove, vec![3], "{mv:?}");
            assert_eq!(mv.add.len(), 1, "{mv:?}");
            assert!(!mv.add.contains(&3));
        }
        assert!(moves(&before, &before).is_empty());
    }

    #[test]
    fn leaders_are_replicas_and_spread_within_one() {
        for n in 1..=7 {
            let p = Placement::new(64, &nodes(n), 3);
            let leaders = p.leaders();
            let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
            for (shard, leader) in leaders.iter().enumerate() {
                let l = leader.expect("every shard has a replica");
                assert!(p.replicas[shard].contains(&l), "shard {shard}: leader {l} is no replica");
                *led.entry(l).or_insert(0) += 1;
            }
            let (min, max) = (led.values().min().copied().unwrap_or(0), led.values().max().copied().unwrap_or(0));
            assert_eq!(led.len() as u64, n, "{n} nodes: some node leads nothing: {led:?}");
            assert!(max - min <= 1, "{n} nodes: leaders spread {led:?}");
        }
        assert_eq!(Placement::new(4, &[], 3).leaders(), vec![None; 4]);
    }

    #[test]
    fn avoided_nodes_lead_nothing_and_the_rest_stay_spread() {
        let p = Placement::new(64, &nodes(3), 3);
        let leaders = p.leaders_avoiding(&BTreeSet::from([2]));
        let mut led: BTreeMap<NodeId, usize> = BTreeMap::new();
        for l in &leaders {
            *led.entry(l.expect("two replicas are left")).or_insert(0) += 1;
        }
        assert_eq!(led.keys().copied().collect::<Vec<_>>(), vec![1, 3], "{led:?}");
        assert!(led.values().all(|c| *c == 32), "{led:?}");
        assert_eq!(p.leaders_avoiding(&BTreeSet::from([1, 2, 3])), vec![None; 64]);
    }
}
