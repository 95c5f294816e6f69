//! Wire types of PROTOCOL.md as the client reads them. Fields the protocol
//! names are required; anything else the server adds lands in `extra`.

use serde::Deserialize;
use serde::Serialize;
use serde_json::Map;
use serde_json::Value;

/// Answer of `POST /api/login`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Login {
    /// Bearer token.
    pub token: String,
    /// The account's name.
    pub username: String,
    /// When the token stops working at the latest (Unix ms).
    pub expires_at: u64,
}

/// Answer of `GET /api/me`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Me {
    /// The account's name.
    pub username: String,
    /// `admin` or `user`.
    pub role: String,
}

/// Who may see a room and how one joins it.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Anyone may see and join.
    Public,
    /// Members and invited users only.
    Private,
    /// A direct-message room of two users.
    Direct,
}

impl Visibility {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Visibility::Public => "public",
            Visibility::Private => "private",
            Visibility::Direct => "direct",
        }
    }
}

/// A room (§3).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Room {
    /// Room id.
    pub room: String,
    /// Title.
    #[serde(default)]
    pub title: String,
    /// Visibility.
    pub visibility: Visibility,
    /// Owner's username (a direct room may have none).
    #[serde(default)]
    pub owner: Option<String>,
    /// Creation time (Unix ms).
    pub created_at: u64,
    /// Seq of the room's newest message (0 when empty).
    pub last_seq: u64,
    /// Unread count, shown by `GET /api/rooms` for rooms with a read marker.
    #[serde(default)]
    pub unread: Option<u64>,
    /// Fields the protocol does not name.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A room member (`join` answer and `members` entries).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Member {
    /// Username.
    pub username: String,
    /// `owner`, `moderator` or `member`.
    pub role: String,
    /// Whether the user has a live connection (in `members` answers).
    #[serde(default)]
    pub online: Option<bool>,
    /// Fields the protocol does not name.
    #[serde(flatten)]
    pub extra: Map<String, Value>,
}

/// A stored message (§4).
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct Message {
    /// Room id.
    pub room: String,
    /// Position in the room, from 1, without gaps.
    pub seq: u64,
    /// Sender's username.
    pub from: String,
    /// Text; gone (absent, null or empty) once deleted.
    #[serde(default)]
    pub body: Option<String>,
    /// Time stored (Unix ms).
    pub ts: u64,
    /// The sender's idempotency key.
    #[serde(default)]
    pub client_id: Option<String>,
    /// True once deleted.
    #[serde(default)]
    pub deleted: bool,
}

/// Answer to a send: where the message landed.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub struct SendAck {
    /// The message's seq.
    pub seq: u64,
    /// Its timestamp (Unix ms).
    pub ts: u64,
}

/// One entry of `GET /api/rooms/{room}/audit`.
#[derive(Clone, Debug, Deserialize, PartialEq)]
pub struct AuditEntry {
    /// When (Unix ms).
    pub ts: u64,
    /// Who acted.
    pub actor: String,
    /// What was done.
    pub action: String,
    /// To whom (or what).
    #[serde(default)]
    pub target: Option<String>,
}

/// Answer of `GET /api/poll`.
#[derive(Clone, Debug, PartialEq)]
pub struct PollAnswer {
    /// Events after the cursors, in order.
    pub events: Vec<Event>,
    /// Cursors to pass as `since` next time (`a:13,b:40`).
    pub cursor: String,
}

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
        /// Why.
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

#[derive(Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
enum WireEvent {
    Message(Message),
    Presence {
        room: String,
        username: String,
        online: bool,
    },
    Typing {
        room: String,
        username: String,
    },
    Member {
        room: String,
        username: String,
        change: String,
        #[serde(default)]
        role: Option<String>,
    },
    Removed {
        room: String,
        #[serde(default)]
        reason: Option<String>,
    },
    Deleted {
        room: String,
        seq: u64,
    },
    RoomDeleted {
        room: String,
    },
    Error {
        code: String,
        #[serde(default)]
        message: String,
    },
}

impl Event {
    /// Reads an event; a shape the protocol does not describe becomes
    /// [`Event::Other`].
    pub fn from_value(v: Value) -> Event {
        match WireEvent::deserialize(&v) {
            Ok(WireEvent::Message(m)) => Event::Message(m),
            Ok(WireEvent::Presence { room, username, online }) => Event::Presence { room, username, online },
            Ok(WireEvent::Typing { room, username }) => Event::Typing { room, username },
            Ok(WireEvent::Member { room, username, change, role }) => Event::Member { room, username, change, role },
            Ok(WireEvent::Removed { room, reason }) => Event::Removed { room, reason },
            Ok(WireEvent::Deleted { room, seq }) => Event::Deleted { room, seq },
            Ok(WireEvent::RoomDeleted { room }) => Event::RoomDeleted { room },
            Ok(WireEvent::Error { code, message }) => Event::Error { code, message },
            Err(_) => Event::Other(v),
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
            Event::Error { .. } => "error",
            Event::Other(v) => v.get("type").and_then(Value::as_str).unwrap_or(""),
        }
    }
}
