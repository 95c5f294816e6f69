//! The last entries appended to one Raft log, kept decoded in memory: a
//! leader reads each new entry back right after appending it (to replicate
//! it, then to apply it), and so does a follower (to apply it). Served from
//! here, that costs a clone instead of a store read and a decode.
//!
//! Pure bookkeeping: the log store calls it after each write it made and
//! falls back to the store for whatever is not here.

use std::collections::VecDeque;

/// Entries kept at most.
pub const MAX_ENTRIES: usize = 256;
/// Encoded bytes kept at most (the newest entry is kept whatever its size).
pub const MAX_BYTES: usize = 256 * 1024;

/// A contiguous run of the newest entries of a log, by index.
#[derive(Debug)]
pub struct Recent<E> {
    /// `(index, encoded size, entry)`, indexes consecutive.
    entries: VecDeque<(u64, usize, E)>,
    bytes: usize,
}

impl<E> Default for Recent<E> {
    fn default() -> Self {
        Self { entries: VecDeque::new(), bytes: 0 }
    }
}

impl<E> Recent<E> {
    /// Entries just appended, in index order, with their encoded sizes. An
    /// entry that does not follow the newest one kept starts the run anew
    /// (what is kept stays contiguous).
    pub fn appended(&mut self, entries: impl IntoIterator<Item = (u64, usize, E)>) {
        for (index, size, entry) in entries {
            if self.entries.back().is_some_and(|(last, _, _)| last.checked_add(1) != Some(index)) {
                self.clear();
            }
            self.bytes += size;
            self.entries.push_back((index, size, entry));
        }
        while self.entries.len() > MAX_ENTRIES || (self.bytes > MAX_BYTES && self.entries.len() > 1) {
            if let Some((_, size, _)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// The log lost every entry after `index` (`None`: every entry).
    pub fn truncated_after(&mut self, index: Option<u64>) {
        while self.entries.back().is_some_and(|(i, _, _)| index.is_none_or(|keep| *i > keep)) {
            if let Some((_, size, _)) = self.entries.pop_back() {
                self.bytes -= size;
            }
        }
    }

    /// The log lost every entry up to `index`, inclusive.
    pub fn purged_to(&mut self, index: u64) {
        while self.entries.front().is_some_and(|(i, _, _)| *i <= index) {
            if let Some((_, size, _)) = self.entries.pop_front() {
                self.bytes -= size;
            }
        }
    }

    /// Forgets everything.
    pub fn clear(&mut self) {
        self.entries.clear();
        self.bytes = 0;
    }
}

impl<E: Clone> Recent<E> {
    /// Entries `start..end`, at most `limit`, if every one of them is
    /// here; `None` sends the caller to the store.
    pub fn get(&self, start: u64, end: u64, limit: usize) -> Option<Vec<E>> {
        let first = self.entries.front()?.0;
        let last = self.entries.back()?.0;
        if start < first || start >= end || end - 1 > last {
            return None;
        }
        let skip = usize::try_from(start - first).ok()?;
        let wanted = usize::try_from(end - start).ok()?;
        Some(self.entries.iter().skip(skip).take(wanted.min(limit)).map(|(_, _, e)| e.clone()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(from: u64, to: u64) -> Vec<(u64, usize, u64)> {
        (from..=to).map(|i| (i, 10, i)).collect()
    }

    #[test]
    fn serves_ranges_it_holds_whole_and_no_other() {
        let mut r = Recent::default();
        assert_eq!(r.get(1, 2, 10), None, "nothing kept");
        r.appended(run(5, 9));
        assert_eq!(r.get(5, 8, 10), Some(vec![5, 6, 7]));
        assert_eq!(r.get(7, 10, 10), Some(vec![7, 8, 9]));
        assert_eq!(r.get(6, 10, 2), Some(vec![6, 7]), "limited");
        assert_eq!(r.get(8, 11, 10), None, "ends past the newest kept: the store may hold more");
        assert_eq!(r.get(4, 6, 10), None, "starts before what is kept");
        assert_eq!(r.get(6, 6, 10), None, "an empty range is the store's to answer");
    }

    #[test]
    fn a_gap_starts_the_run_anew_and_truncation_and_purge_drop_their_ends() {
        let mut r = Recent::default();
        r.appended(run(1, 5));
        r.appended(run(8, 9));
        assert_eq!(r.get(1, 3, 10), None, "the run before the gap is gone");
        assert_eq!(r.get(8, 10, 10), Some(vec![8, 9]));
        r.appended(run(10, 12));
        r.truncated_after(Some(10));
        assert_eq!(r.get(8, 11, 10), Some(vec![8, 9, 10]));
        assert_eq!(r.get(8, 12, 10), None, "11 is gone");
        r.appended([(11, 10, 111)]);
        assert_eq!(r.get(10, 12, 10), Some(vec![10, 111]), "a new leader's entry replaced the old");
        r.purged_to(9);
        assert_eq!(r.get(9, 12, 10), None);
        assert_eq!(r.get(10, 12, 10), Some(vec![10, 111]));
        r.truncated_after(None);
        assert_eq!(r.get(10, 12, 10), None);
    }

    #[test]
    fn keeps_at_most_its_limits_but_always_the_newest() {
        let mut r = Recent::default();
        r.appended((1..=(MAX_ENTRIES as u64 + 10)).map(|i| (i, 1, i)));
        assert_eq!(r.get(10, 11, 1), None, "the oldest went");
        assert_eq!(r.get(11, 12, 10), Some(vec![11]));
        let newest = MAX_ENTRIES as u64 + 11;
        r.appended([(newest, MAX_BYTES * 2, 0)]);
        assert_eq!(r.get(newest - 1, newest + 1, 10), None, "over the bytes: only the newest stays");
        assert_eq!(r.get(newest, newest + 1, 10), Some(vec![0]));
    }
}
