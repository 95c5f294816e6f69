//! Reading room logs, and the committed seq of each room kept in memory.
//!
//! A node may store messages before they are committed (a replica holds the
//! owner's records until a majority has them). Every read is capped at the
//! room's committed seq, so nothing that could still be rolled back is ever
//! shown to a client.

use std::collections::HashMap;
use std::ops::Bound;

use parking_lot::RwLock;

use super::record::COMMITTED;
use super::record::DEDUP;
use super::record::MESSAGES;
use super::record::Message;
use super::record::{self};
use crate::storage::Order;
use crate::storage::StorageError;
use crate::storage::Store;

/// Read access to the room logs, shared by every request handler.
pub struct RoomLog {
    store: Store,
    /// Committed seq per room key. Only ever raised, so a reader that
    /// loaded an old value from the store can never lower it.
    last: RwLock<HashMap<u64, u64>>,
    /// Woken whenever a committed seq rises.
    raised: tokio::sync::Notify,
}

impl RoomLog {
    /// Wraps the room-log store.
    pub fn new(store: Store) -> Self {
        Self { store, last: RwLock::new(HashMap::new()), raised: tokio::sync::Notify::new() }
    }

    /// The store, for the writer.
    pub(crate) fn store(&self) -> &Store {
        &self.store
    }

    /// The highest committed seq of a room (0 when empty). A room not seen
    /// since start begins at the committed seq last persisted.
    pub fn last_seq(&self, room_key: u64) -> Result<u64, StorageError> {
        if let Some(seq) = self.last.read().get(&room_key) {
            return Ok(*seq);
        }
        let seq = match self.store.get(COMMITTED, &record::room_prefix(room_key))? {
            Some(v) => record::decode_seq(&v)?,
            None => 0,
        };
        self.raise(room_key, seq);
        Ok(seq)
    }

    /// The highest seq stored here, committed or not.
    pub fn stored_last(&self, room_key: u64) -> Result<u64, StorageError> {
        Ok(self.stored_tail(room_key)?.map_or(0, |m| m.seq))
    }

    /// The last message stored here, committed or not: its seq and the
    /// owner epoch it was written under tell a recovering owner how far and
    /// how recent this node's log is.
    pub fn stored_tail(&self, room_key: u64) -> Result<Option<Message>, StorageError> {
        let start = record::message_key(room_key, 0);
        let end = record::room_end(room_key);
        let found = self.store.range(
            MESSAGES,
            Bound::Included(start.as_slice()),
            Bound::Excluded(end.as_slice()),
            Order::Descending,
            1,
        )?;
        match found.first() {
            Some((k, v)) => {
                let (_, seq) = record::parse_message_key(k)
                    .ok_or_else(|| StorageError::Corrupt { tree: MESSAGES, message: "short key".into() })?;
                Ok(Some(Message { seq, stored: record::decode(v)? }))
            }
            None => Ok(None),
        }
    }

    /// Records that `seq` is committed in a room.
    pub(crate) fn raise(&self, room_key: u64, seq: u64) {
        let mut last = self.last.write();
        let entry = last.entry(room_key).or_insert(0);
        if seq > *entry {
            *entry = seq;
            drop(last);
            self.raised.notify_waiters();
        }
    }

    /// Waits until a room's committed seq reaches `seq`; false after `timeout`.
    pub async fn wait_committed(&self, room_key: u64, seq: u64, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a raise between the two still wakes us.
            let raised = self.raised.notified();
            tokio::pin!(raised);
            raised.as_mut().enable();
            if self.last_seq(room_key).is_ok_and(|s| s >= seq) {
                return true;
            }
            if tokio::time::timeout_at(deadline, raised).await.is_err() {
                return false;
            }
        }
    }

    /// Forgets a deleted room's cached seq.
    pub(crate) fn forget(&self, room_key: u64) {
        self.last.write().remove(&room_key);
    }

    /// Committed messages with seq > `after`, ascending, at most `limit`.
    pub fn after(&self, room_key: u64, after: u64, limit: usize) -> Result<Vec<Message>, StorageError> {
        let committed = self.last_seq(room_key)?;
        if after >= committed {
            return Ok(Vec::new());
        }
        let start = record::message_key(room_key, after + 1);
        let end = record::message_key(room_key, committed);
        self.scan(Bound::Included(&start[..]), Bound::Included(&end[..]), Order::Ascending, limit)
    }

    /// The newest `limit` committed messages with seq < `before`, ascending.
    pub fn before(&self, room_key: u64, before: u64, limit: usize) -> Result<Vec<Message>, StorageError> {
        let committed = self.last_seq(room_key)?;
        let start = record::message_key(room_key, 0);
        let end = record::message_key(room_key, before.min(committed.saturating_add(1)));
        let mut page = self.scan(Bound::Included(&start[..]), Bound::Excluded(&end[..]), Order::Descending, limit)?;
        page.reverse();
        Ok(page)
    }

    /// Committed messages `from..=to` (to fill a gap between replay and live
    /// events, or to publish what a commit notice made visible).
    pub fn between(&self, room_key: u64, from: u64, to: u64) -> Result<Vec<Message>, StorageError> {
        let to = to.min(self.last_seq(room_key)?);
        if from > to {
            return Ok(Vec::new());
        }
        let start = record::message_key(room_key, from);
        let end = record::message_key(room_key, to);
        let limit = usize::try_from(to - from + 1).unwrap_or(usize::MAX);
        self.scan(Bound::Included(&start[..]), Bound::Included(&end[..]), Order::Ascending, limit)
    }

    /// Stored messages `from..=to`, committed or not, at most `limit` (an
    /// owner serving a replica's gap).
    pub fn stored_range(&self, room_key: u64, from: u64, to: u64, limit: usize) -> Result<Vec<Message>, StorageError> {
        if from > to {
            return Ok(Vec::new());
        }
        let start = record::message_key(room_key, from);
        let end = record::message_key(room_key, to);
        self.scan(Bound::Included(&start[..]), Bound::Included(&end[..]), Order::Ascending, limit)
    }

    /// One stored message, committed or not.
    pub fn get_stored(&self, room_key: u64, seq: u64) -> Result<Option<Message>, StorageError> {
        match self.store.get(MESSAGES, &record::message_key(room_key, seq))? {
            Some(bytes) => Ok(Some(Message { seq, stored: record::decode(&bytes)? })),
            None => Ok(None),
        }
    }

    /// The seq already given to (sender, client_id) in a room, if any.
    pub fn deduped(&self, room_key: u64, sender: &str, client_id: &str) -> Result<Option<u64>, StorageError> {
        self.store
            .get(DEDUP, &record::dedup_key(room_key, sender, client_id))?
            .map(|v| record::decode_seq(&v))
            .transpose()
    }

    fn scan(
        &self,
        start: Bound<&[u8]>,
        end: Bound<&[u8]>,
        order: Order,
        limit: usize,
    ) -> Result<Vec<Message>, StorageError> {
        let rows = self.store.range(MESSAGES, start, end, order, limit)?;
        rows.into_iter()
            .map(|(k, v)| {
                let (_, seq) = record::parse_message_key(&k)
                    .ok_or_else(|| StorageError::Corrupt { tree: MESSAGES, message: "short key".into() })?;
                Ok(Message { seq, stored: record::decode(&v)? })
            })
            .collect()
    }
}
