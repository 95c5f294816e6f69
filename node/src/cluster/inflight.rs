//! Batches waiting for a majority: which peers stored each batch, and which
//! batches are committed. Batches commit strictly in order, so a room's seq
//! never becomes visible past one that is still waiting. Pure bookkeeping;
//! the clock is passed in.

use std::collections::BTreeSet;
use std::collections::VecDeque;

/// One batch waiting for acknowledgements.
#[derive(Debug)]
struct Waiting<T> {
    id: u64,
    /// Needs no acknowledgement (nothing to replicate); still commits in order.
    free: bool,
    acks: BTreeSet<u64>,
    refusals: BTreeSet<u64>,
    /// Given up on: settles as dropped.
    abandoned: bool,
    deadline_ms: u64,
    payload: T,
}

/// How a batch left the queue.
#[derive(Debug, PartialEq, Eq)]
pub enum Settled<T> {
    /// A majority stored it.
    Committed(T),
    /// It can never reach a majority.
    Dropped(T),
}

/// Batches in flight, oldest first.
#[derive(Debug)]
pub struct Inflight<T> {
    /// Acknowledgements needed from peers (a majority minus this node).
    needed: usize,
    /// How many peers there are.
    peers: usize,
    next_id: u64,
    waiting: VecDeque<Waiting<T>>,
}

impl<T> Inflight<T> {
    /// Waits for `needed` acknowledgements per batch out of `peers` peers.
    pub fn new(needed: usize, peers: usize) -> Self {
        Self { needed, peers, next_id: 1, waiting: VecDeque::new() }
    }

    /// Changes the requirement (the cluster grew or shrank).
    pub fn set_needed(&mut self, needed: usize) {
        self.needed = needed;
    }

    /// Adds a batch; answers its id. A `free` batch needs no
    /// acknowledgement but still commits only after the batches before it.
    pub fn push(&mut self, payload: T, deadline_ms: u64, free: bool) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.waiting.push_back(Waiting {
            id,
            free,
            acks: BTreeSet::new(),
            refusals: BTreeSet::new(),
            abandoned: false,
            deadline_ms,
            payload,
        });
        id
    }

    /// Records that `peer` stored batch `id`.
    pub fn ack(&mut self, id: u64, peer: u64) {
        if let Some(w) = self.waiting.iter_mut().find(|w| w.id == id) {
            w.acks.insert(peer);
        }
    }

    /// Records that `peer` refused batch `id` (it was written under an
    /// epoch the peer knows is over).
    pub fn refuse(&mut self, id: u64, peer: u64) {
        if let Some(w) = self.waiting.iter_mut().find(|w| w.id == id) {
            w.refusals.insert(peer);
        }
    }

    /// Gives up on batch `id`: it settles as dropped (its rooms moved on).
    pub fn abandon(&mut self, id: u64) {
        if let Some(w) = self.waiting.iter_mut().find(|w| w.id == id) {
            w.abandoned = true;
        }
    }

    /// Takes the batches that are settled, in order: committed ones, and
    /// ones too many peers refused to ever commit. A batch behind an
    /// unsettled one waits, so seqs never commit out of order.
    pub fn settled(&mut self) -> Vec<Settled<T>> {
        let mut done = Vec::new();
        while let Some(w) = self.waiting.front() {
            let outcome = if w.free || w.acks.len() >= self.needed {
                Settled::Committed
            } else if w.abandoned || w.refusals.len() > self.peers.saturating_sub(self.needed) {
                Settled::Dropped
            } else {
                break;
            };
            if let Some(w) = self.waiting.pop_front() {
                done.push(outcome(w.payload));
            }
        }
        done
    }

    /// Ids of batches past their deadline (their senders should be told to
    /// retry; the batches themselves stay until a majority has them).
    pub fn overdue(&mut self, now_ms: u64) -> Vec<u64> {
        let mut ids = Vec::new();
        for w in self.waiting.iter_mut().filter(|w| w.deadline_ms <= now_ms) {
            ids.push(w.id);
            w.deadline_ms = u64::MAX;
        }
        ids
    }

    /// The payload of a waiting batch.
    pub fn payload_mut(&mut self, id: u64) -> Option<&mut T> {
        self.waiting.iter_mut().find(|w| w.id == id).map(|w| &mut w.payload)
    }

    /// How many batches wait.
    pub fn len(&self) -> usize {
        self.waiting.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn committed<T>(f: &mut Inflight<T>) -> Vec<T> {
        f.settled()
            .into_iter()
            .map(|s| match s {
                Settled::Committed(t) => t,
                Settled::Dropped(_) => panic!("a batch was dropped"),
            })
            .collect()
    }

    #[test]
    fn a_batch_refused_by_too_many_peers_is_dropped_in_order() {
        let mut f = Inflight::new(1, 2);
        let a = f.push("a", 100, false);
        let b = f.push("b", 100, false);
        f.refuse(a, 2);
        assert!(f.settled().is_empty(), "one refusal leaves a majority possible");
        f.ack(b, 3);
        f.refuse(a, 3);
        assert_eq!(f.settled(), vec![Settled::Dropped("a"), Settled::Committed("b")]);
        let c = f.push("c", 100, false);
        f.abandon(c);
        assert_eq!(f.settled(), vec![Settled::Dropped("c")]);
    }

    #[test]
    fn a_batch_commits_with_enough_acks_and_in_order() {
        let mut f = Inflight::new(1, 2);
        let a = f.push("a", 100, false);
        let b = f.push("b", 100, false);
        f.ack(b, 2);
        assert!(committed(&mut f).is_empty(), "b must wait for a");
        f.ack(a, 3);
        assert_eq!(committed(&mut f), vec!["a", "b"]);
        assert!(f.is_empty());
    }

    #[test]
    fn a_free_batch_waits_only_for_the_batches_before_it() {
        let mut f = Inflight::new(1, 2);
        let a = f.push("a", 100, false);
        f.push("free", 100, true);
        assert!(committed(&mut f).is_empty());
        f.ack(a, 2);
        assert_eq!(committed(&mut f), vec!["a", "free"]);
        f.push("alone", 100, true);
        assert_eq!(committed(&mut f), vec!["alone"]);
    }

    #[test]
    fn acks_from_one_peer_count_once() {
        let mut f = Inflight::new(2, 2);
        let a = f.push("a", 100, false);
        f.ack(a, 2);
        f.ack(a, 2);
        assert!(committed(&mut f).is_empty());
        f.ack(a, 3);
        assert_eq!(committed(&mut f), vec!["a"]);
    }

    #[test]
    fn needing_no_acks_commits_at_once() {
        let mut f = Inflight::new(0, 0);
        f.push("a", 100, false);
        assert_eq!(committed(&mut f), vec!["a"]);
    }

    #[test]
    fn overdue_batches_are_reported_once_and_kept() {
        let mut f = Inflight::new(1, 2);
        let a = f.push("a", 100, false);
        assert!(f.overdue(99).is_empty());
        assert_eq!(f.overdue(100), vec![a]);
        assert!(f.overdue(200).is_empty());
        assert_eq!(f.len(), 1);
        f.ack(a, 2);
        assert_eq!(committed(&mut f), vec!["a"]);
    }
}
