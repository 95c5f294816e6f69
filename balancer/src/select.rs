//! Selection strategies: which node gets the next client.
//!
//! Pure code: a strategy sees a list of [`Candidate`]s (ordered by id) and
//! answers an id. It knows nothing of sockets, health checks or time; the
//! caller decides who is eligible and keeps the connection counts. Nodes
//! may join or leave between two picks: strategies keep their memory keyed
//! by node id, so a change in the list never shifts the others' turns.
//!
//! Weight 0 means "never", in every strategy: it is how an operator keeps a
//! node in the cluster without sending it clients.

use std::collections::BTreeMap;

use crate::config::Strategy;

/// One node as a strategy sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The node's id.
    pub id: u64,
    /// Configured weight (0: never picked).
    pub weight: u32,
    /// Connections open on the node now.
    pub active: u64,
    /// Whether the node may get a new client now (up, not draining, not
    /// already tried for this client).
    pub eligible: bool,
}

impl Candidate {
    fn usable(&self) -> bool {
        self.eligible && self.weight > 0
    }
}

/// A selection strategy. `candidates` are sorted by id, ids unique.
pub trait Select {
    /// The id of the node for the next client, or `None` when no candidate is usable.
    fn pick(&mut self, candidates: &[Candidate]) -> Option<u64>;
}

/// The strategy named by `strategy`, ready to pick.
pub fn selector(strategy: Strategy) -> Box<dyn Select + Send> {
    match strategy {
        Strategy::RoundRobin => Box::new(RoundRobin::default()),
        Strategy::Weighted => Box::new(SmoothWeighted::default()),
        Strategy::LeastConnections => Box::new(LeastConnections::default()),
    }
}

/// Each usable node in turn, in id order.
#[derive(Debug, Default)]
pub struct RoundRobin {
    last: Option<u64>,
}

/// The first usable candidate after `last` in id order, wrapping around;
/// among `usable` only.
fn next_after<'a>(last: Option<u64>, usable: impl Iterator<Item = &'a Candidate> + Clone) -> Option<u64> {
    let after = last.and_then(|l| usable.clone().find(|c| c.id > l));
    after.or_else(|| usable.clone().next()).map(|c| c.id)
}

impl Select for RoundRobin {
    fn pick(&mut self, candidates: &[Candidate]) -> Option<u64> {
        let id = next_after(self.last, candidates.iter().filter(|c| c.usable()))?;
        self.last = Some(id);
        Some(id)
    }
}

/// Smooth weighted round-robin (nginx): every pick adds each usable node's
/// weight to its running score, takes the highest score (first by id on a
/// tie) and takes the total weight off the winner. Weights 5,1,1 give
/// `a a b a c a a`: the heavy node's turns are spread, never bunched.
#[derive(Debug, Default)]
pub struct SmoothWeighted {
    current: BTreeMap<u64, i64>,
}

impl Select for SmoothWeighted {
    fn pick(&mut self, candidates: &[Candidate]) -> Option<u64> {
        // A node that left starts from zero if it ever comes back. The
        // candidates come sorted by id (the node table is a BTreeMap), so
        // this is n log n, not n².
        if candidates.windows(2).all(|w| w[0].id < w[1].id) {
            self.current.retain(|id, _| candidates.binary_search_by_key(id, |c| c.id).is_ok());
        } else {
            self.current.retain(|id, _| candidates.iter().any(|c| c.id == *id));
        }
        let mut total: i64 = 0;
        let mut best: Option<(u64, i64)> = None;
        for c in candidates.iter().filter(|c| c.usable()) {
            let score = self.current.entry(c.id).or_insert(0);
            *score += i64::from(c.weight);
            total += i64::from(c.weight);
            if best.is_none_or(|(_, s)| *score > s) {
                best = Some((c.id, *score));
            }
        }
        let (id, _) = best?;
        if let Some(score) = self.current.get_mut(&id) {
            *score -= total;
        }
        Some(id)
    }
}

/// The usable node with the fewest open connections; among equals, the
/// next one in turn after the previous pick.
#[derive(Debug, Default)]
pub struct LeastConnections {
    last: Option<u64>,
}

impl Select for LeastConnections {
    fn pick(&mut self, candidates: &[Candidate]) -> Option<u64> {
        let least = candidates.iter().filter(|c| c.usable()).map(|c| c.active).min()?;
        let id = next_after(self.last, candidates.iter().filter(|c| c.usable() && c.active == least))?;
        self.last = Some(id);
        Some(id)
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn node(id: u64, weight: u32) -> Candidate {
        Candidate { id, weight, active: 0, eligible: true }
    }

    /// Picks `n` times from a fixed list, as letters (`a` is id 1).
    fn picks(s: &mut dyn Select, candidates: &[Candidate], n: usize) -> String {
        (0..n).map(|_| s.pick(candidates).map_or('-', |id| char::from(b'a' + (id - 1) as u8))).collect()
    }

    /// One table-driven check: strategy, candidates, picks, expected letters.
    fn check(strategy: Strategy, candidates: &[Candidate], n: usize, expected: &str) {
        let mut s = selector(strategy);
        assert_eq!(picks(s.as_mut(), candidates, n), expected, "{strategy} over {candidates:?}");
    }

    #[test]
    fn exact_sequences() {
        let three = [node(1, 1), node(2, 1), node(3, 1)];
        let down = |mut c: Candidate| {
            c.eligible = false;
            c
        };
        let cases: Vec<(Strategy, Vec<Candidate>, usize, &str)> = vec![
            (Strategy::RoundRobin, three.to_vec(), 7, "abcabca"),
            (Strategy::RoundRobin, vec![node(1, 1), down(node(2, 1)), node(3, 1)], 4, "acac"),
            (Strategy::RoundRobin, vec![node(1, 1), node(2, 0), node(3, 1)], 4, "acac"),
            (Strategy::RoundRobin, vec![node(2, 1)], 3, "bbb"),
            (Strategy::RoundRobin, vec![down(node(1, 1)), down(node(2, 1))], 2, "--"),
            (Strategy::RoundRobin, vec![], 1, "-"),
            // Round-robin ignores weights other than 0.
            (Strategy::RoundRobin, vec![node(1, 5), node(2, 1)], 4, "abab"),
            (Strategy::Weighted, vec![node(1, 5), node(2, 1), node(3, 1)], 14, "aabacaaaabacaa"),
            (Strategy::Weighted, vec![node(1, 3), node(2, 1), node(3, 1)], 10, "abacaabaca"),
            (Strategy::Weighted, vec![node(1, 2), node(2, 1)], 6, "abaaba"),
            (Strategy::Weighted, three.to_vec(), 6, "abcabc"),
            (Strategy::Weighted, vec![node(1, 0), node(2, 2), node(3, 1)], 6, "bcbbcb"),
            (Strategy::Weighted, vec![node(3, 4)], 3, "ccc"),
            (Strategy::Weighted, vec![node(1, 0), node(2, 0)], 2, "--"),
            (Strategy::Weighted, vec![down(node(1, 5)), node(2, 1), node(3, 1)], 4, "bcbc"),
            (Strategy::LeastConnections, three.to_vec(), 5, "abcab"),
            (Strategy::LeastConnections, vec![down(node(1, 1)), down(node(2, 1))], 1, "-"),
            (Strategy::LeastConnections, vec![node(1, 0), node(2, 1)], 2, "bb"),
        ];
        for (strategy, candidates, n, expected) in cases {
            check(strategy, &candidates, n, expected);
        }
    }

    #[test]
    fn weighted_never_bunches_the_heavy_node() {
        let mut s = SmoothWeighted::default();
        let c = [node(1, 5), node(2, 1), node(3, 1)];
        let seq = picks(&mut s, &c, 700);
        assert!(!seq.contains("aaaaa"), "five in a row: {seq}");
        let count = |ch| seq.chars().filter(|x| *x == ch).count();
        assert_eq!((count('a'), count('b'), count('c')), (500, 100, 100));
    }

    #[test]
    fn weighted_distribution_is_exact_over_whole_cycles() {
        let mut s = SmoothWeighted::default();
        let c = [node(1, 3), node(2, 1), node(3, 1)];
        let mut counts = BTreeMap::new();
        for _ in 0..300 {
            *counts.entry(s.pick(&c).expect("a node")).or_insert(0) += 1;
        }
        assert_eq!(counts, BTreeMap::from([(1, 180), (2, 60), (3, 60)]));
    }

    #[test]
    fn least_connections_prefers_the_least_loaded_and_rotates_ties() {
        let mut s = LeastConnections::default();
        let load = |a, b, c| {
            [
                Candidate { id: 1, weight: 1, active: a, eligible: true },
                Candidate { id: 2, weight: 1, active: b, eligible: true },
                Candidate { id: 3, weight: 1, active: c, eligible: true },
            ]
        };
        assert_eq!(s.pick(&load(2, 0, 1)), Some(2));
        assert_eq!(s.pick(&load(2, 1, 1)), Some(3), "tie 2/3 after 2: the next in turn");
        assert_eq!(s.pick(&load(2, 1, 2)), Some(2));
        assert_eq!(s.pick(&load(1, 1, 1)), Some(3));
        assert_eq!(s.pick(&load(1, 1, 1)), Some(1), "wraps around");
        let mut busy_but_only = load(9, 0, 0);
        busy_but_only[1].eligible = false;
        busy_but_only[2].eligible = false;
        assert_eq!(s.pick(&busy_but_only), Some(1), "the only eligible node, however loaded");
    }

    #[test]
    fn round_robin_survives_joins_and_leaves() {
        let mut s = RoundRobin::default();
        let mut c = vec![node(1, 1), node(2, 1), node(3, 1)];
        assert_eq!(picks(&mut s, &c, 2), "ab");
        c.retain(|n| n.id != 3); // 3 leaves: after b comes a
        assert_eq!(picks(&mut s, &c, 3), "aba");
        c.push(node(4, 1)); // 4 joins: it gets its turn in id order
        assert_eq!(picks(&mut s, &c, 2), "bd");
        c.retain(|n| n.id != 4); // the last picked leaves: go on after its id
        assert_eq!(picks(&mut s, &c, 3), "aba");
    }

    #[test]
    fn weighted_survives_joins_and_leaves() {
        let mut s = SmoothWeighted::default();
        let mut c = vec![node(1, 2), node(2, 1)];
        assert_eq!(picks(&mut s, &c, 3), "aba");
        c.push(node(3, 3)); // a fresh node starts at score 0
        assert_eq!(picks(&mut s, &c, 6), "cabcac");
        c.retain(|n| n.id != 1);
        assert_eq!(picks(&mut s, &c, 4), "cbcc");
        c.insert(0, node(1, 2)); // back, with a fresh score
        let seq = picks(&mut s, &c, 60);
        let count = |ch| seq.chars().filter(|x| *x == ch).count();
        assert_eq!((count('a'), count('b'), count('c')), (20, 10, 30), "{seq}");
    }

    #[test]
    fn least_connections_survives_joins_and_leaves() {
        let mut s = LeastConnections::default();
        let mut c = vec![Candidate { id: 1, weight: 1, active: 3, eligible: true }, node(2, 1)];
        assert_eq!(s.pick(&c), Some(2));
        c[1].active = 3;
        c.push(node(3, 1));
        assert_eq!(s.pick(&c), Some(3), "the newcomer is the least loaded");
        c.retain(|n| n.id != 3);
        assert_eq!(s.pick(&c), Some(1), "tie after 3 (gone) wraps to 1");
        assert_eq!(s.pick(&c), Some(2));
    }

    #[test]
    fn one_node_and_no_node() {
        for strategy in Strategy::ALL {
            check(strategy, &[node(7, 1)], 3, "ggg");
            check(strategy, &[], 2, "--");
            check(strategy, &[Candidate { eligible: false, ..node(7, 1) }], 2, "--");
        }
    }
}
