//! Feeding the node's search index ([`crate::search`]) from a shard: the
//! mark that says how far the index has a shard, and a shard's whole
//! content read from its room logs when the index has to take it again.

use std::io;
use std::ops::Bound;

use super::placement::ShardId;
use super::snapshot;
use super::types::LogId;
use crate::raft::types::io_err;
use crate::rooms::record;
use crate::search::Change;
use crate::search::Source;
use crate::storage::Order;
use crate::storage::Store;

/// Messages read from the store at a time while a shard is indexed again.
const CHUNK: usize = 1024;

/// The index's mark for a shard applied up to `last`.
pub fn mark(last: Option<LogId>) -> String {
    serde_json::to_string(&last).unwrap_or_default()
}

/// Every message of `shard` with a body, read from `store` when called.
pub fn source(store: Store, shard: ShardId) -> Source {
    Box::new(move |sink: &mut dyn FnMut(Change)| {
        for (room_key, _) in snapshot::rooms_of(&store, shard)? {
            feed_room(&store, room_key, sink)?;
        }
        Ok(())
    })
}

fn feed_room(store: &Store, room_key: u64, sink: &mut dyn FnMut(Change)) -> io::Result<()> {
    let end = record::room_end(room_key);
    let mut from = record::message_key(room_key, 0).to_vec();
    let mut first = true;
    loop {
        let start = if first { Bound::Included(from.as_slice()) } else { Bound::Excluded(from.as_slice()) };
        let rows =
            store.range(record::MESSAGES, start, Bound::Excluded(&end[..]), Order::Ascending, CHUNK).map_err(io_err)?;
        for (k, v) in &rows {
            let Some((_, seq)) = record::parse_message_key(k) else { continue };
            let stored = record::decode(v).map_err(io_err)?;
            if let Some(body) = stored.body {
                sink(Change::Put { room_key, seq, ts: stored.ts, body });
            }
        }
        match rows.last() {
            Some((k, _)) if rows.len() == CHUNK => {
                from = k.clone();
                first = false;
            }
            _ => return Ok(()),
        }
    }
}
