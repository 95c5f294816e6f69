//! Server events: frames without an `id` on a WebSocket, SSE `data:`,
//! long-poll `events`.

use serde::Deserialize;
use serde::Serialize;

use crate::names::named;
use crate::views::Message;
use crate::views::Role;

/// A change of membership, as the `member` event names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MemberChange {
    /// Became a member.
    Joined,
    /// Left on their own.
    Left,
    /// Removed by a moderator.
    Kicked,
    /// Banned by a moderator.
    Banned,
    /// Role changed.
    Role,
}

named!(MemberChange { Joined = "joined", Left = "left", Kicked = "kicked", Banned = "banned", Role = "role" });

/// Why the server ended the receiver's own subscription (`removed`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Removal {
    /// Kicked out of the room.
    Kicked,
    /// Banned from the room.
    Banned,
    /// Left a room that is not public.
    Left,
}

named!(Removal { Kicked = "kicked", Banned = "banned", Left = "left" });

/// An event the server sends to a room's subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerEvent<S = String> {
    /// A committed message, live or replayed (deleted ones in deleted form).
    Message(Message<S>),
    /// A member's first connection in the cluster opened, or its last closed.
    Presence {
        /// Room id.
        room: S,
        /// Whose presence changed.
        username: S,
        /// Online now.
        online: bool,
    },
    /// A member is typing.
    Typing {
        /// Room id.
        room: S,
        /// Who types.
        username: S,
    },
    /// A membership changed.
    Member {
        /// Room id.
        room: S,
        /// Whose membership changed.
        username: S,
        /// What changed.
        change: MemberChange,
        /// The role after the change, for `joined` and `role` only.
        #[serde(skip_serializing_if = "Option::is_none")]
        role: Option<Role>,
    },
    /// The receiver's own subscription to the room ended.
    Removed {
        /// Room id.
        room: S,
        /// Why.
        reason: Removal,
    },
    /// A message lost its body.
    Deleted {
        /// Room id.
        room: S,
        /// The deleted message's seq.
        seq: u64,
    },
    /// The room was deleted; the subscription ends.
    RoomDeleted {
        /// Room id.
        room: S,
    },
    /// A message's sender changed its body.
    Edited {
        /// Room id.
        room: S,
        /// The message's seq.
        seq: u64,
        /// The new text.
        body: S,
        /// When (Unix ms).
        edited_at: u64,
    },
    /// A member's read marker moved (to the room's members only).
    Read {
        /// Room id.
        room: S,
        /// Whose marker.
        username: S,
        /// The highest seq they have read.
        seq: u64,
    },
    /// A member added (`on`) or took back an emoji on a message.
    Reaction {
        /// Room id.
        room: S,
        /// The message's seq.
        seq: u64,
        /// The emoji.
        emoji: S,
        /// Who.
        username: S,
        /// Added (true) or taken back (false).
        on: bool,
    },
}

impl<S: AsRef<str>> ServerEvent<S> {
    /// The room the event is about.
    pub fn room(&self) -> &str {
        match self {
            ServerEvent::Message(m) => m.room.as_ref(),
            ServerEvent::Presence { room, .. }
            | ServerEvent::Typing { room, .. }
            | ServerEvent::Member { room, .. }
            | ServerEvent::Removed { room, .. }
            | ServerEvent::Deleted { room, .. }
            | ServerEvent::Edited { room, .. }
            | ServerEvent::Reaction { room, .. }
            | ServerEvent::Read { room, .. }
            | ServerEvent::RoomDeleted { room } => room.as_ref(),
        }
    }
}

/// The last event of an SSE stream the server ends (`event: close`): the
/// close code a WebSocket would have got. Its `type` is written, not
/// checked when read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename = "closed")]
pub struct StreamClosed {
    /// 4003, 1013 or 1012 (see [`crate::close`]).
    pub code: u16,
}
