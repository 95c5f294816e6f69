//! Seq assignment with dedup for one batch of sends: pure bookkeeping, so the
//! writer's rules (gapless, idempotent, all-or-nothing per batch) are tested
//! without a store.

use std::collections::HashMap;

/// Hands out gapless seqs per room and remembers the batch's idempotency keys.
#[derive(Debug, Default)]
pub struct Sequencer {
    last: HashMap<u64, u64>,
    /// The highest owner epoch known per room: appends under an older one
    /// are refused (the room moved).
    fences: HashMap<u64, u64>,
    /// Rooms touched by the batch under way, with their last seq before it.
    before_batch: HashMap<u64, u64>,
    /// (room, dedup key) given a seq in the batch under way.
    pending: HashMap<Vec<u8>, u64>,
}

/// The outcome of [`Sequencer::accept`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accept {
    /// The record continues the log: store it.
    Next,
    /// Already stored here: skip it.
    AlreadyStored,
    /// Records are missing before it.
    Gap {
        /// The last seq stored here.
        have: u64,
    },
}

/// The outcome of [`Sequencer::assign`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Assignment {
    /// A new message with this seq: store it.
    New(u64),
    /// Already stored (or already in this batch) under this seq: store nothing.
    Duplicate(u64),
}

impl Sequencer {
    /// Raises a room's epoch fence.
    pub fn fence(&mut self, room_key: u64, epoch: u64) {
        let f = self.fences.entry(room_key).or_insert(0);
        *f = (*f).max(epoch);
    }

    /// A room's epoch fence (0: none).
    pub fn fence_of(&self, room_key: u64) -> u64 {
        self.fences.get(&room_key).copied().unwrap_or(0)
    }

    /// Whether the room's last seq is known.
    pub fn knows(&self, room_key: u64) -> bool {
        self.last.contains_key(&room_key)
    }

    /// Sets a room's last seq, as read from the store.
    pub fn load(&mut self, room_key: u64, last: u64) {
        self.last.insert(room_key, last);
    }

    /// Forgets a room's seq (deleted, or to be read from the store again);
    /// its fence stays.
    pub fn forget(&mut self, room_key: u64) {
        self.last.remove(&room_key);
    }

    /// Assigns a seq for a send whose dedup key is `dedup_key`; `stored` is
    /// the seq the store already holds for that key, if any. The room must be
    /// loaded first.
    pub fn assign(&mut self, room_key: u64, dedup_key: &[u8], stored: Option<u64>) -> Assignment {
        if let Some(seq) = stored.or_else(|| self.pending.get(dedup_key).copied()) {
            return Assignment::Duplicate(seq);
        }
        let last = self.last.entry(room_key).or_insert(0);
        self.before_batch.entry(room_key).or_insert(*last);
        *last += 1;
        self.pending.insert(dedup_key.to_vec(), *last);
        Assignment::New(*last)
    }

    /// Takes a replicated record with a seq the owner chose.
    pub fn accept(&mut self, room_key: u64, seq: u64) -> Accept {
        let last = self.last.entry(room_key).or_insert(0);
        if seq <= *last {
            return Accept::AlreadyStored;
        }
        if seq > *last + 1 {
            return Accept::Gap { have: *last };
        }
        self.before_batch.entry(room_key).or_insert(*last);
        *last = seq;
        Accept::Next
    }

    /// The last seq known for a room.
    pub fn last(&self, room_key: u64) -> u64 {
        self.last.get(&room_key).copied().unwrap_or(0)
    }

    /// Drops a room's records after `last` (a stale tail being replaced).
    pub fn truncate(&mut self, room_key: u64, last: u64) {
        let current = self.last.entry(room_key).or_insert(0);
        self.before_batch.entry(room_key).or_insert(*current);
        *current = (*current).min(last);
    }

    /// Undoes this batch's progress in some rooms (a refused replica batch).
    pub fn rollback_rooms(&mut self, rooms: impl Iterator<Item = u64>) {
        for room in rooms {
            if let Some(last) = self.before_batch.remove(&room) {
                self.last.insert(room, last);
            }
        }
    }

    /// The batch was stored: its seqs are final.
    pub fn commit(&mut self) {
        self.before_batch.clear();
        self.pending.clear();
    }

    /// The batch failed: give its seqs out again.
    pub fn rollback(&mut self) {
        for (room, last) in self.before_batch.drain() {
            self.last.insert(room, last);
        }
        self.pending.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::Assignment::*;
    use super::*;

    #[test]
    fn seqs_are_gapless_per_room() {
        let mut s = Sequencer::default();
        s.load(1, 0);
        s.load(2, 10);
        assert_eq!(s.assign(1, b"a", None), New(1));
        assert_eq!(s.assign(2, b"b", None), New(11));
        assert_eq!(s.assign(1, b"c", None), New(2));
        s.commit();
        assert_eq!(s.assign(1, b"d", None), New(3));
    }

    #[test]
    fn duplicates_get_the_first_seq_in_and_across_batches() {
        let mut s = Sequencer::default();
        s.load(1, 4);
        assert_eq!(s.assign(1, b"x", None), New(5));
        assert_eq!(s.assign(1, b"x", None), Duplicate(5));
        s.commit();
        assert_eq!(s.assign(1, b"x", Some(5)), Duplicate(5));
        assert_eq!(s.assign(1, b"y", None), New(6));
    }

    #[test]
    fn replicated_records_continue_skip_or_report_a_gap() {
        let mut s = Sequencer::default();
        s.load(1, 3);
        assert_eq!(s.accept(1, 2), Accept::AlreadyStored);
        assert_eq!(s.accept(1, 4), Accept::Next);
        assert_eq!(s.accept(1, 6), Accept::Gap { have: 4 });
        s.rollback_rooms([1].into_iter());
        assert_eq!(s.accept(1, 4), Accept::Next);
        s.commit();
        assert_eq!(s.assign(1, b"k", None), Assignment::New(5));
    }

    #[test]
    fn fences_only_rise() {
        let mut s = Sequencer::default();
        assert_eq!(s.fence_of(1), 0);
        s.fence(1, 3);
        s.fence(1, 2);
        assert_eq!(s.fence_of(1), 3);
        s.forget(1);
        assert_eq!(s.fence_of(1), 3);
    }

    #[test]
    fn a_failed_batch_gives_its_seqs_out_again() {
        let mut s = Sequencer::default();
        s.load(1, 2);
        assert_eq!(s.assign(1, b"a", None), New(3));
        assert_eq!(s.assign(1, b"b", None), New(4));
        s.rollback();
        assert_eq!(s.assign(1, b"b", None), New(3));
        assert!(s.knows(1));
        assert!(!s.knows(9));
    }
}
