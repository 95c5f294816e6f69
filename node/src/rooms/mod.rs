//! Room logs: every room's messages keyed by (room, seq), written by the
//! state machines of the room's shard ([`crate::shards`]) and read here.
//!
//! This module knows nothing of sockets or Raft: it takes room keys from
//! the metadata and reads what the shards applied.

pub(crate) mod attachments;
pub mod files;
mod log;
pub(crate) mod record;
pub(crate) mod seen;

use std::sync::Arc;

pub use log::RoomLog;
pub(crate) use log::stored_last;
pub use record::Attached;
pub use record::Message;
pub use record::Reaction;
pub use record::StoredMessage;

/// Most messages one history page returns.
pub const MAX_PAGE: usize = 500;
/// Messages a history page returns when the client names no limit.
pub const DEFAULT_PAGE: usize = 50;

/// The room a request is for, as the metadata describes it.
#[derive(Debug, Clone)]
pub struct RoomRef {
    /// Room log key.
    pub key: u64,
    /// Room id, for events.
    pub id: Arc<str>,
}

/// The answer to a send.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Appended {
    /// The message's seq.
    pub seq: u64,
    /// When it was accepted.
    pub ts: u64,
    /// The (sender, client_id) was seen before; nothing new was stored.
    pub duplicate: bool,
}

/// What was committed, for fan-out.
#[derive(Debug, Clone)]
pub enum Published {
    /// A new message.
    Message {
        /// Room id.
        room: Arc<str>,
        /// Room log key.
        room_key: u64,
        /// The message.
        message: Message,
    },
    /// A message lost its body.
    Deleted {
        /// Room id.
        room: Arc<str>,
        /// Room log key.
        room_key: u64,
        /// Its seq.
        seq: u64,
    },
    /// A message's text changed.
    Edited {
        /// Room id.
        room: Arc<str>,
        /// Room log key.
        room_key: u64,
        /// Its seq.
        seq: u64,
        /// The new text.
        body: String,
        /// When (the entry's ts).
        edited_at: u64,
    },
    /// An emoji was added to a message or taken back.
    Reaction {
        /// Room id.
        room: Arc<str>,
        /// Room log key.
        room_key: u64,
        /// Its seq.
        seq: u64,
        /// The emoji.
        emoji: String,
        /// Who.
        username: String,
        /// Added or taken back.
        on: bool,
    },
}

impl Published {
    /// The room log key of the room the event is about.
    pub fn room_key(&self) -> u64 {
        match self {
            Published::Message { room_key, .. }
            | Published::Deleted { room_key, .. }
            | Published::Edited { room_key, .. }
            | Published::Reaction { room_key, .. } => *room_key,
        }
    }
}

/// Receives everything committed, in commit order.
pub type Publisher = Arc<dyn Fn(Published) + Send + Sync>;
