//! A Raft log and its hard state (vote, committed, last purged) in one
//! namespace ([`Space`]) of a [`Store`], for any openraft type config: the
//! metadata group and every room-log shard keep their logs side by side in
//! the node's Raft store, and one [`WriteThread`] writes and flushes all of
//! them together.
//!
//! Layout, per space: tree `<log>`: key = the space's prefix + log index as 8
//! big-endian bytes (so byte order is index order), value = the
//! postcard-encoded entry; tree `<state>`: keys prefix + `vote`,
//! `committed`, `purged`, postcard values. The metadata group's space has
//! an empty prefix in trees `raft_log` and `raft_state`.
//!
//! Durability: `append` queues its entries in one atomic batch and their
//! flush together on the store's write thread, which writes every group's
//! batches queued meanwhile in one transaction, durably when a flush is
//! queued with them (group commit: one fsync for all), and only then
//! reports the entries as persisted; they are readable when `append`
//! returns. `save_vote` is durable before it returns. Truncation and purge
//! are written without their own fsync: the next flush covers them. A
//! shard's committed log id is kept in memory and written with its next
//! append or purge, not in a transaction of its own at every commit (its
//! state machine records how far it applied; the metadata group's is
//! written at once).
//! An append of no entries (a heartbeat's) writes nothing and waits only
//! for the writes before it, which costs no fsync when they are durable.
//! The newest entries are also kept decoded in memory ([`Recent`]): the
//! reads that follow an append (replication, apply) are served from there.
//! Losing any of these in a crash is harmless to Raft (a lower committed is
//! re-learned from the leader, un-truncated entries are truncated again,
//! un-purged entries are purged again).

use std::fmt::Debug;
use std::io;
use std::ops::Bound;
use std::ops::RangeBounds;
use std::sync::Arc;

use openraft::LogState;
use openraft::OptionalSend;
use openraft::RaftLogReader;
use openraft::RaftTypeConfig;
use openraft::entry::RaftEntry;
use openraft::storage::IOFlushed;
use openraft::storage::RaftLogStorage;
use openraft::type_config::alias::LogIdOf;
use parking_lot::Mutex;
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::recent::Recent;
use super::types::blocking;
use super::types::decode;
use super::types::encode;
use super::types::io_err;
use crate::storage::Batch;
use crate::storage::Order;
use crate::storage::Store;
use crate::storage::WriteThread;
use crate::storage::bound_slice;

const KEY_VOTE: &[u8] = b"vote";
const KEY_COMMITTED: &[u8] = b"committed";
const KEY_PURGED: &[u8] = b"purged";

/// Entries read per call of `limited_get_log_entries` (replication batches).
const READ_LIMIT: usize = 1024;

/// Where one Raft group keeps its log and hard state in the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Space {
    log: &'static str,
    state: &'static str,
    prefix: Vec<u8>,
    /// Whether the committed log id waits for the group's next append or
    /// purge instead of a transaction of its own. Right for a group whose
    /// state machine records how far it applied (the shards); the
    /// metadata group re-applies up to the saved committed id at start.
    lazy_committed: bool,
}

impl Space {
    /// The metadata group's space (trees `raft_log`, `raft_state`, no prefix).
    pub fn meta() -> Self {
        Self { log: "raft_log", state: "raft_state", prefix: Vec::new(), lazy_committed: false }
    }

    /// A room-log shard's space: trees `shard_log` and `shard_state`, keys
    /// prefixed by the shard's number.
    pub fn shard(shard: u32) -> Self {
        Self { log: "shard_log", state: "shard_state", prefix: shard.to_be_bytes().to_vec(), lazy_committed: true }
    }

    fn index_key(&self, index: u64) -> Vec<u8> {
        let mut k = Vec::with_capacity(self.prefix.len() + 8);
        k.extend_from_slice(&self.prefix);
        k.extend_from_slice(&index.to_be_bytes());
        k
    }

    fn state_key(&self, name: &[u8]) -> Vec<u8> {
        let mut k = self.prefix.clone();
        k.extend_from_slice(name);
        k
    }

    /// The first key after every key of this space (unbounded for the empty
    /// prefix, which owns its trees alone).
    fn end(&self) -> Bound<Vec<u8>> {
        let mut end = self.prefix.clone();
        // Increment as a big-endian number; all-0xff has no successor.
        while let Some(last) = end.pop() {
            if last < u8::MAX {
                end.push(last + 1);
                return Bound::Excluded(end);
            }
        }
        Bound::Unbounded
    }

    /// The group, for logs: `metadata` or `shard N`.
    fn group(&self) -> String {
        match <[u8; 4]>::try_from(self.prefix.as_slice()) {
            Ok(shard) => format!("shard {}", u32::from_be_bytes(shard)),
            Err(_) => "metadata".into(),
        }
    }

    fn key_index(&self, key: &[u8]) -> io::Result<u64> {
        let bytes: [u8; 8] =
            key.strip_prefix(self.prefix.as_slice()).and_then(|k| k.try_into().ok()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: key of {} bytes is not this group's", self.log, key.len()),
                )
            })?;
        Ok(u64::from_be_bytes(bytes))
    }
}

/// Removes a group's whole log and hard state (vote, committed, purged)
/// from `store`, durably: the node is no member of the group any more, and
/// a copy it opened again must start as a new, empty member.
pub fn discard_space(store: &Store, space: &Space) -> io::Result<()> {
    let mut batch = Batch::new();
    let end = match space.end() {
        Bound::Excluded(e) => Some(e),
        _ => None,
    };
    batch.delete_range(space.log, space.index_key(0), end);
    for key in [KEY_VOTE, KEY_COMMITTED, KEY_PURGED] {
        batch.delete(space.state, space.state_key(key));
    }
    store.write_durable(batch).map_err(io_err)
}

/// The Raft log storage of one group on one node (a cheap handle: clones
/// share the store and its write thread).
pub struct LogStore<C: RaftTypeConfig> {
    store: Store,
    space: Arc<Space>,
    writer: WriteThread,
    /// The committed log id saved since the last write that carried one.
    committed: Arc<Mutex<Option<Option<LogIdOf<C>>>>>,
    /// The newest entries, decoded, for the reads that follow an append.
    recent: Arc<Mutex<Recent<C::Entry>>>,
}

impl<C: RaftTypeConfig> Clone for LogStore<C> {
    fn clone(&self) -> Self {
        Self {
            store: self.store.clone(),
            space: self.space.clone(),
            writer: self.writer.clone(),
            committed: self.committed.clone(),
            recent: self.recent.clone(),
        }
    }
}

impl<C: RaftTypeConfig> Debug for LogStore<C> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore")
            .field("engine", &self.store.name())
            .field("space", &self.space)
            .finish_non_exhaustive()
    }
}

impl<C> LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
    C::Vote: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    /// The log of the group in `space` over `store`, written and flushed by
    /// `writer` (the store's one write thread).
    pub fn new(store: Store, space: Space, writer: WriteThread) -> Self {
        Self {
            store,
            space: Arc::new(space),
            writer,
            committed: Arc::new(Mutex::new(None)),
            recent: Arc::new(Mutex::new(Recent::default())),
        }
    }

    fn get_state<T: DeserializeOwned>(&self, name: &[u8]) -> io::Result<Option<T>> {
        match self.store.get(self.space.state, &self.space.state_key(name)).map_err(io_err)? {
            Some(bytes) => Ok(Some(decode(self.space.state, &bytes)?)),
            None => Ok(None),
        }
    }

    fn read_range(&self, start: Bound<u64>, end: Bound<u64>, limit: usize) -> io::Result<Vec<C::Entry>> {
        let first = match start {
            Bound::Included(i) => Some(i),
            Bound::Excluded(i) => i.checked_add(1),
            Bound::Unbounded => Some(0),
        };
        let past = match end {
            Bound::Included(i) => i.checked_add(1),
            Bound::Excluded(i) => Some(i),
            Bound::Unbounded => None,
        };
        if let (Some(first), Some(past)) = (first, past)
            && let Some(entries) = self.recent.lock().get(first, past, limit)
        {
            return Ok(entries);
        }
        let space = &self.space;
        let start = match start {
            Bound::Unbounded => Bound::Included(space.index_key(0)),
            other => other.map(|i| space.index_key(i)),
        };
        let end = match end {
            Bound::Unbounded => space.end(),
            other => other.map(|i| space.index_key(i)),
        };
        let rows = self
            .store
            .range(space.log, bound_slice(&start), bound_slice(&end), Order::Ascending, limit)
            .map_err(io_err)?;
        let mut entries: Vec<C::Entry> = Vec::with_capacity(rows.len());
        for (key, value) in rows {
            let index = space.key_index(&key)?;
            let entry: C::Entry = decode(space.log, &value)?;
            if entry.index() != index {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: entry of index {} stored under index {index}", space.log, entry.index()),
                ));
            }
            if let Some(prev) = entries.last().map(RaftEntry::index)
                && prev + 1 != index
            {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: hole between index {prev} and {index}", space.log),
                ));
            }
            entries.push(entry);
        }
        Ok(entries)
    }

    /// Writes `batch` through the store's write thread, in one transaction
    /// with the other groups' batches queued meanwhile.
    async fn write(&self, batch: Batch) -> io::Result<()> {
        self.writer.write(batch).await
    }

    /// Adds the committed log id not written yet, if any, to `batch`: it
    /// rides along with the next append or purge rather than costing a
    /// transaction of its own at every commit.
    fn carry_committed(&self, batch: &mut Batch) -> io::Result<()> {
        if let Some(committed) = self.committed.lock().take() {
            let key = self.space.state_key(KEY_COMMITTED);
            match committed {
                Some(id) => batch.put(self.space.state, key, encode("committed", &id)?),
                None => batch.delete(self.space.state, key),
            }
        }
        Ok(())
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

impl<C> RaftLogReader<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
    C::Vote: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<C::Entry>, io::Error> {
        let Some((start, end)) = bounds(&range) else {
            return Ok(Vec::new());
        };
        self.read_range(start, end, usize::MAX)
    }

    async fn read_vote(&mut self) -> Result<Option<C::Vote>, io::Error> {
        self.get_state(KEY_VOTE)
    }

    async fn limited_get_log_entries(&mut self, start: u64, end: u64) -> Result<Vec<C::Entry>, io::Error> {
        self.read_range(Bound::Included(start), Bound::Excluded(end), READ_LIMIT)
    }
}

impl<C> RaftLogStorage<C> for LogStore<C>
where
    C: RaftTypeConfig,
    C::Entry: Serialize + DeserializeOwned + Clone,
    C::Vote: Serialize + DeserializeOwned,
    LogIdOf<C>: Serialize + DeserializeOwned,
{
    type LogReader = LogStore<C>;

    async fn get_log_state(&mut self) -> Result<LogState<C>, io::Error> {
        let last_purged_log_id: Option<LogIdOf<C>> = self.get_state(KEY_PURGED)?;
        let space = &self.space;
        let start = space.index_key(0);
        let end = space.end();
        let last = self
            .store
            .range(space.log, Bound::Included(start.as_slice()), bound_slice(&end), Order::Descending, 1)
            .map_err(io_err)?;
        let last = match last.first() {
            Some((_, value)) => Some(decode::<C::Entry>(space.log, value)?.log_id()),
            None => None,
        };
        Ok(LogState { last_log_id: last.or(last_purged_log_id.clone()), last_purged_log_id })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &C::Vote) -> Result<(), io::Error> {
        let mut batch = Batch::new();
        batch.put(self.space.state, self.space.state_key(KEY_VOTE), encode("vote", vote)?);
        let store = self.store.clone();
        blocking(move || store.write_durable(batch).map_err(io_err)).await
    }

    async fn save_committed(&mut self, committed: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        *self.committed.lock() = Some(committed);
        if self.space.lazy_committed {
            return Ok(());
        }
        let mut batch = Batch::new();
        self.carry_committed(&mut batch)?;
        self.write(batch).await
    }

    async fn read_committed(&mut self) -> Result<Option<LogIdOf<C>>, io::Error> {
        match &*self.committed.lock() {
            Some(unwritten) => Ok(unwritten.clone()),
            None => self.get_state(KEY_COMMITTED),
        }
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<C>) -> Result<(), io::Error>
    where
        I: IntoIterator<Item = C::Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = Batch::new();
        let mut appended = Vec::new();
        for entry in entries {
            let index = entry.index();
            let value = encode("log entry", &entry)?;
            let size = value.len();
            batch.put(self.space.log, self.space.index_key(index), value);
            appended.push((index, size, entry));
        }
        // An append of nothing (a heartbeat) only waits for the writes
        // before it to be durable, which mostly costs nothing: it carries no
        // committed log id, which would make it a write of its own.
        if !batch.is_empty() {
            self.carry_committed(&mut batch)?;
        }
        // Readable when this returns; durable when the callback is called.
        let durable = Box::new(move |result: Result<(), String>| {
            callback.io_completed(result.map_err(io::Error::other));
        });
        match self.writer.write_and_flush(batch, durable).await {
            Ok(()) => {
                self.recent.lock().appended(appended);
                Ok(())
            }
            Err(e) => {
                self.recent.lock().clear();
                Err(e)
            }
        }
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogIdOf<C>>) -> Result<(), io::Error> {
        let from = match last_log_id {
            Some(id) => match id.index().checked_add(1) {
                Some(next) => next,
                None => return Ok(()),
            },
            None => 0,
        };
        // Rare (a leader's unacknowledged tail replaced by a new leader's
        // entries) and what a lost entry would show first: logged.
        tracing::info!(group = %self.space.group(), from, "log entries truncated");
        // Before the write: a read meanwhile goes to the store.
        self.recent.lock().truncated_after(from.checked_sub(1));
        let mut batch = Batch::new();
        let end = match self.space.end() {
            Bound::Excluded(e) => Some(e),
            _ => None,
        };
        batch.delete_range(self.space.log, self.space.index_key(from), end);
        self.write(batch).await
    }

    async fn purge(&mut self, log_id: LogIdOf<C>) -> Result<(), io::Error> {
        // One atomic batch: the purge mark and the removal never disagree.
        self.recent.lock().purged_to(log_id.index());
        let mut batch = Batch::new();
        self.carry_committed(&mut batch)?;
        batch.put(self.space.state, self.space.state_key(KEY_PURGED), encode("purged log id", &log_id)?);
        let end = match log_id.index().checked_add(1) {
            Some(next) => Some(self.space.index_key(next)),
            None => match self.space.end() {
                Bound::Excluded(e) => Some(e),
                _ => None,
            },
        };
        batch.delete_range(self.space.log, self.space.index_key(0), end);
        self.write(batch).await
    }
}
