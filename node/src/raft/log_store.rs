//! The Raft log and the Raft hard state (vote, committed, last purged) on a
//! [`Store`].
//!
//! Layout:
//! - tree `raft_log`: key = log index as 8 big-endian bytes (so byte order is
//!   index order), value = the postcard-encoded [`Entry`];
//! - tree `raft_state`: keys `vote`, `committed`, `purged`, postcard values.
//!
//! Durability: `append` writes its entries in one atomic batch before it
//! returns (so they are readable at once) and hands the flush callback to a
//! flusher thread, which calls [`crate::storage::Engine::flush`] once for every
//! callback queued meanwhile (group commit) and only then reports the entries
//! as persisted. `save_vote` is durable before it returns. `committed`,
//! truncation and purge are written without their own fsync: the next flush
//! covers them, and losing one in a crash is harmless to Raft (a lower
//! committed is re-learned from the leader, un-truncated entries are
//! truncated again, un-purged entries are purged again).

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::mpsc;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;

use super::types::Entry;
use super::types::LogId;
use super::types::TypeConfig;
use super::types::Vote;
use super::types::blocking;
use super::types::decode;
use super::types::encode;
use super::types::io_err;
use crate::storage::Batch;
use crate::storage::Order;
use crate::storage::Store;

/// Tree of log entries.
const LOG: &str = "raft_log";
/// Tree of the hard state.
const STATE: &str = "raft_state";
const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// Entries read per call of `limited_get_log_entries` (replication batches).
const READ_LIMIT: usize = 1024;

fn index_key(index: u64) -> Vec<u8> {
    index.to_be_bytes().to_vec()
}

fn key_index(key: &[u8]) -> io::Result<u64> {
    let bytes: [u8; 8] = key.try_into().map_err(|_| {
        io::Error::new(io::ErrorKind::InvalidData, format!("{LOG}: key of {} bytes, want 8", key.len()))
    })?;
    Ok(u64::from_be_bytes(bytes))
}

/// The Raft log storage of one node (a cheap handle: clones share the store
/// and the flusher thread).
#[derive(Clone)]
pub struct LogStore {
    store: Store,
    flusher: mpsc::Sender<IOFlushed<TypeConfig>>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").field("engine", &self.store.name()).finish_non_exhaustive()
    }
}

impl LogStore {
    /// Opens the log over `store` and starts its flusher thread (which ends
    /// when the last clone of this handle is dropped).
    pub fn new(store: Store) -> io::Result<Self> {
        let (tx, rx) = mpsc::channel::<IOFlushed<TypeConfig>>();
        let flush_store = store.clone();
        std::thread::Builder::new().name("raft-log-flush".into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                // Everything queued so far was written before this flush starts.
                let waiting: Vec<_> = std::iter::once(first).chain(rx.try_iter()).collect();
                let result = flush_store.flush();
                for callback in waiting {
                    callback.io_completed(match &result {
                        Ok(()) => Ok(()),
                        Err(e) => Err(io::Error::other(e.to_string())),
                    });
                }
            }
        })?;
        Ok(Self { store, flusher: tx })
    }

    fn get_state<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> io::Result<Option<T>> {
        match self.store.get(STATE, key).map_err(io_err)? {
            Some(bytes) => Ok(Some(decode(STATE, &bytes)?)),
            None => Ok(None),
        }
    }

    fn read_range(&self, start: Bound<u64>, end: Bound<u64>, limit: usize) -> io::Result<Vec<Entry>> {
        let start = start.map(index_key);
        let end = end.map(index_key);
        let rows = self.store.range(LOG, as_slice(&start), as_slice(&end), Order::Ascending, limit).map_err(io_err)?;
        let mut entries = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let index = key_index(&key)?;
            let entry: Entry = decode(LOG, &value)?;
            if entry.log_id.index != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{LOG}: entry {} stored under index {index}", entry.log_id),
                ));
            }
            if let Some(prev) = entries.last().map(|e: &Entry| e.log_id.index)
                && prev + 1 != index
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{LOG}: hole between index {prev} and {index}"),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Writes `batch` on a blocking thread (a write may wait behind a flush).
    async fn write(&self, batch: Batch) -> io::Result<()> {
        let store = self.store.clone();
        blocking(move || store.write(batch).map_err(io_err)).await
    }
}

fn as_slice(b: &Bound<Vec<u8>>) -> Bound<&[u8]> {
    match b {
        Bound::Included(v) => Bound::Included(v.as_slice()),
        Bound::Excluded(v) => Bound::Excluded(v.as_slice()),
        Bound::Unbounded => Bound::Unbounded,
    }
}

/// `range` as a `[start, end)`-style pair of owned bounds, `None` when empty.
fn bounds<RB: RangeBounds<u64>>(range: &RB) -> Option<(Bound<u64>, Bound<u64>)> {
    let start = match range.start_bound() {
        Bound::Included(&s) => Bound::Included(s),
        Bound::Excluded(&s) => Bound::Included(s.checked_add(1)?),
        Bound::Unbounded => Bound::Unbounded,
    };
    let end = match range.end_bound() {
        Bound::Included(&e) => Bound::Included(e),
        Bound::Excluded(&e) => Bound::Excluded(e),
        Bound::Unbounded => Bound::Unbounded,
    };
    Some((start, end))
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, io::Error> {
        let Some((start, end)) = bounds(&range) else {
            return Ok(Vec::new());
        };
        self.read_range(start, end, usize::MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, io::Error> {
        self.get_state(KEY_VOTE)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<Entry>, io::Error> {
        self.read_range(Bound::Included(start), Bound::Excluded(end), READ_LIMIT)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, io::Error> {
        let last_purged_log_id: Option<LogId> = self.get_state(KEY_PURGED)?;
        let last = match self.store.last(LOG).map_err(io_err)? {
            Some((_, value)) => Some(decode::<Entry>(LOG, &value)?.log_id),
            None => None,
        };
        Ok(LogState { last_log_id: last.or(last_purged_log_id), last_purged_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), io::Error> {
        let mut batch = Batch::new();
        batch.put(STATE, KEY_VOTE, encode("vote", vote)?);
        let store = self.store.clone();
        blocking(move || store.write_durable(batch).map_err(io_err)).await
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), io::Error> {
        let mut batch = Batch::new();
        match committed {
            Some(id) => batch.put(STATE, KEY_COMMITTED, encode("committed", &id)?),
            None => batch.delete(STATE, KEY_COMMITTED),
        }
        self.write(batch).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, io::Error> {
        self.get_state(KEY_COMMITTED)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Batch::new();
        for entry in entries {
            batch.put(LOG, index_key(entry.log_id.index), encode("log entry", &entry)?);
        }
        self.write(batch).await?;
        // Readable now; durable once the flusher has run a flush after this point.
        if let Err(mpsc::SendError(callback)) = self.flusher.send(callback) {
            callback.io_completed(Err(io::Error::other("the raft log flusher thread is gone")));
        }
        Ok(())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> Result<(), io::Error> {
        let from = match last_log_id {
            Some(id) => match id.index.checked_add(1) {
                Some(next) => next,
                None => return Ok(()),
            },
            None => 0,
        };
        let mut batch = Batch::new();
        batch.delete_range(LOG, index_key(from), None);
        self.write(batch).await
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), io::Error> {
        // One atomic batch: the purge mark and the removal never disagree.
        let mut batch = Batch::new();
        batch.put(STATE, KEY_PURGED, encode("purged log id", &log_id)?);
        let end = log_id.index.checked_add(1).map(index_key);
        batch.delete_range(LOG, index_key(0), end);
        self.write(batch).await
    }
}
