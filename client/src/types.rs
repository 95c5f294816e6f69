//! Wire types as the client reads them: the protocol crate's own types
//! (`palaver_protocol`), re-exported, and [`Event`], which adds to the
//! protocol's server events what a reader also meets on an event stream:
//! an `error` reply without a usable `id`, and frames the protocol does not
//! describe.

pub use palaver_protocol::Attachment;
pub use palaver_protocol::AuditEntry;
use palaver_protocol::Done;
pub use palaver_protocol::Login;
pub use palaver_protocol::Me;
pub use palaver_protocol::Member;
pub use palaver_protocol::Message;
pub use palaver_protocol::Receipt;
use palaver_protocol::Reply;
pub use palaver_protocol::Room;
pub use palaver_protocol::SendAck;
use palaver_protocol::ServerEvent;
pub use palaver_protocol::Visibility;
use serde::Deserialize;
use serde_json::Value;

/// Answer of `GET /api/poll`, its events read as [`Event`]s.
pub type PollAnswer = palaver_protocol::PollAnswer<Event>;

/// A server event (a frame without `id`, an SSE `data`, a poll event).
#[derive(Clone, Debug, PartialEq)]
pub enum Event {
    /// A message, live or replayed.
    Message(Message),
    /// A member's first connection opened or last one closed.
    Presence {
        /// Room id.
        room: String,
        /// Whose presence changed.
        username: String,
        /// Online now.
        online: bool,
    },
    /// Someone is typing.
    Typing {
        /// Room id.
        room: String,
        /// Who types.
        username: String,
    },
    /// Membership changed.
    Member {
        /// Room id.
        room: String,
        /// Whose membership changed.
        username: String,
        /// `joined`, `left`, `kicked`, `banned` or `role`.
        change: String,
        /// The new role, when there is one.
        role: Option<String>,
    },
    /// The caller's own subscription ended.
    Removed {
        /// Room id.
        room: String,
        /// Why: `kicked`, `banned` or `left`.
        reason: Option<String>,
    },
    /// A message was deleted.
    Deleted {
        /// Room id.
        room: String,
        /// The deleted message's seq.
        seq: u64,
    },
    /// A room was deleted.
    RoomDeleted {
        /// Room id.
        room: String,
    },
    /// A message's sender changed its text.
    Edited {
        /// Room id.
        room: String,
        /// The message's seq.
        seq: u64,
        /// The new text.
        body: String,
        /// When (Unix ms).
        edited_at: u64,
    },
    /// A member's read marker moved.
    Read {
        /// Room id.
        room: String,
        /// Whose marker.
        username: String,
        /// The highest seq they have read.
        seq: u64,
    },
    /// Someone added (`on`) or took back an emoji on a message.
    Reaction {
        /// Room id.
        room: String,
        /// The message's seq.
        seq: u64,
        /// The emoji.
        emoji: String,
        /// Who.
        username: String,
        /// Added or taken back.
        on: bool,
    },
    /// An error frame without a usable `id` (the answer to a frame that
    /// could not be parsed).
    Error {
        /// Protocol code.
        code: String,
        /// Human text.
        message: String,
    },
    /// Anything else, kept as sent.
    Other(Value),
}

impl From<ServerEvent> for Event {
    fn from(e: ServerEvent) -> Event {
        match e {
            ServerEvent::Message(m) => Event::Message(m),
            ServerEvent::Presence { room, username, online } => Event::Presence { room, username, online },
            ServerEvent::Typing { room, username } => Event::Typing { room, username },
            ServerEvent::Member { room, username, change, role } => {
                Event::Member { room, username, change: change.to_string(), role: role.map(|r| r.to_string()) }
            }
            ServerEvent::Removed { room, reason } => Event::Removed { room, reason: Some(reason.to_string()) },
            ServerEvent::Deleted { room, seq } => Event::Deleted { room, seq },
            ServerEvent::RoomDeleted { room } => Event::RoomDeleted { room },
            ServerEvent::Edited { room, seq, body, edited_at } => Event::Edited { room, seq, body, edited_at },
            ServerEvent::Read { room, username, seq } => Event::Read { room, username, seq },
            ServerEvent::Reaction { room, seq, emoji, username, on } => {
                Event::Reaction { room, seq, emoji, username, on }
            }
        }
    }
}

impl Event {
    /// Reads an event; a shape the protocol does not describe becomes
    /// [`Event::Other`].
    pub fn from_value(v: Value) -> Event {
        if let Ok(e) = ServerEvent::deserialize(&v) {
            return e.into();
        }
        match Reply::<Done>::deserialize(&v) {
            Ok(Reply::Error { error, .. }) => Event::Error { code: error.code.to_string(), message: error.message },
            _ => Event::Other(v),
        }
    }

    /// The room the event is about, if any.
    pub fn room(&self) -> Option<&str> {
        match self {
            Event::Message(m) => Some(&m.room),
            Event::Presence { room, .. }
            | Event::Typing { room, .. }
            | Event::Member { room, .. }
            | Event::Removed { room, .. }
            | Event::Deleted { room, .. }
            | Event::Edited { room, .. }
            | Event::Reaction { room, .. }
            | Event::Read { room, .. }
            | Event::RoomDeleted { room } => Some(room),
            Event::Error { .. } => None,
            Event::Other(v) => v.get("room").and_then(Value::as_str),
        }
    }

    /// The message, for a message event.
    pub fn message(&self) -> Option<&Message> {
        match self {
            Event::Message(m) => Some(m),
            _ => None,
        }
    }

    /// The wire `type` of the event.
    pub fn kind(&self) -> &str {
        match self {
            Event::Message(_) => "message",
            Event::Presence { .. } => "presence",
            Event::Typing { .. } => "typing",
            Event::Member { .. } => "member",
            Event::Removed { .. } => "removed",
            Event::Deleted { .. } => "deleted",
            Event::RoomDeleted { .. } => "room_deleted",
            Event::Edited { .. } => "edited",
            Event::Reaction { .. } => "reaction",
            Event::Read { .. } => "read",
            Event::Error { .. } => "error",
            Event::Other(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }
}
