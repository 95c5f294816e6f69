//! WebSocket commands: the frame as it travels ([`Frame`], every field
//! optional so that one pass reads any frame) and the checked command
//! ([`Command`]), with the error a frame that lacks something gets.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

/// Which page of a room's history; also the cursor a page cut short at the
/// byte cap names for the rest (`{"after":N}` or `{"before":N}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Page {
    /// Messages with seq > N, oldest first.
    After(u64),
    /// The newest messages with seq < N, oldest first.
    Before(u64),
}

impl Page {
    /// The newest messages: what a `history` without `before` or `after` reads.
    pub const NEWEST: Page = Page::Before(u64::MAX);
}

/// A client command frame as it travels: `type`, the client's `id`, and
/// whichever fields the type needs. Unknown fields are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Frame {
    /// The command type.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    /// The client's id, echoed by the reply.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<u64>,
    /// For `auth`: the bearer token.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token: Option<String>,
    /// Room id, for every other type.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// For `subscribe`: replay messages after this seq first.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// For `send`: the text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// For `send`: the idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// For `history`: messages before this seq.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<u64>,
    /// For `history`: messages after this seq.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<u64>,
    /// For `history`: at most this many (the server caps it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
    /// For `read`: the highest seq read; for `edit` and `react`: the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seq: Option<u64>,
    /// For `send`: the seq of the message of the same room it answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// For `react`: the emoji.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub emoji: Option<String>,
    /// For `react`: add (true, the default) or take back (false).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on: Option<bool>,
    /// For `send`: ids of files uploaded to the room, sent with the message.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub attachments: Option<Vec<String>>,
}

/// A checked client command; travels as a [`Frame`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "Frame", into = "Frame")]
pub enum Command {
    /// Authenticate the socket.
    Auth {
        /// Bearer token.
        token: String,
    },
    /// Start receiving a room's events.
    Subscribe {
        /// Room id.
        room: String,
        /// Replay messages after this seq first.
        since: Option<u64>,
    },
    /// Stop receiving a room's events.
    Unsubscribe {
        /// Room id.
        room: String,
    },
    /// Post a message.
    Send {
        /// Room id.
        room: String,
        /// Text.
        body: String,
        /// Idempotency key.
        client_id: String,
        /// The message of the same room it answers.
        reply_to: Option<u64>,
        /// Ids of files uploaded to the room (empty: none).
        attachments: Vec<String>,
    },
    /// Change the text of one of the caller's messages.
    Edit {
        /// Room id.
        room: String,
        /// The message.
        seq: u64,
        /// The new text.
        body: String,
    },
    /// Add or take back an emoji on a message.
    React {
        /// Room id.
        room: String,
        /// The message.
        seq: u64,
        /// The emoji.
        emoji: String,
        /// Add (true) or take back (false).
        on: bool,
    },
    /// Read a page of messages.
    History {
        /// Room id.
        room: String,
        /// Which page ([`Page::NEWEST`] when the frame names none).
        page: Page,
        /// At most this many (capped by the server).
        limit: Option<usize>,
    },
    /// Tell the room's other subscribers the caller is typing.
    Typing {
        /// Room id.
        room: String,
    },
    /// Store the caller's read marker.
    Read {
        /// Room id.
        room: String,
        /// Highest seq read.
        seq: u64,
    },
}

/// Why a frame is not a command; the text is the `bad_request` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FrameError {
    /// The frame has no `type`.
    NoType,
    /// The type needs a field the frame lacks.
    Missing {
        /// The command type.
        kind: String,
        /// The missing field.
        field: &'static str,
    },
    /// A `history` names both `before` and `after`.
    BeforeAndAfter,
    /// No command has this type.
    UnknownType(String),
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::NoType => write!(f, "a frame needs \"type\""),
            FrameError::Missing { kind, field } => write!(f, "{kind} needs \"{field}\""),
            FrameError::BeforeAndAfter => write!(f, "history takes \"before\" or \"after\", not both"),
            FrameError::UnknownType(kind) => write!(f, "unknown command type \"{kind}\""),
        }
    }
}

impl std::error::Error for FrameError {}

fn need<T>(field: Option<T>, name: &'static str, kind: &str) -> Result<T, FrameError> {
    field.ok_or_else(|| FrameError::Missing { kind: kind.to_string(), field: name })
}

impl Command {
    /// Checks that a frame carries what its type needs.
    pub fn from_frame(f: Frame) -> Result<Command, FrameError> {
        let kind = f.kind.ok_or(FrameError::NoType)?;
        let k = kind.as_str();
        Ok(match k {
            "auth" => Command::Auth { token: need(f.token, "token", k)? },
            "subscribe" => Command::Subscribe { room: need(f.room, "room", k)?, since: f.since },
            "unsubscribe" => Command::Unsubscribe { room: need(f.room, "room", k)? },
            "send" => Command::Send {
                room: need(f.room, "room", k)?,
                body: need(f.body, "body", k)?,
                client_id: need(f.client_id, "client_id", k)?,
                reply_to: f.reply_to,
                attachments: f.attachments.unwrap_or_default(),
            },
            "edit" => Command::Edit {
                room: need(f.room, "room", k)?,
                seq: need(f.seq, "seq", k)?,
                body: need(f.body, "body", k)?,
            },
            "react" => Command::React {
                room: need(f.room, "room", k)?,
                seq: need(f.seq, "seq", k)?,
                emoji: need(f.emoji, "emoji", k)?,
                on: f.on.unwrap_or(true),
            },
            "history" => {
                let page = match (f.before, f.after) {
                    (Some(b), None) => Page::Before(b),
                    (None, Some(a)) => Page::After(a),
                    (None, None) => Page::NEWEST,
                    (Some(_), Some(_)) => return Err(FrameError::BeforeAndAfter),
                };
                Command::History { room: need(f.room, "room", k)?, page, limit: f.limit }
            }
            "typing" => Command::Typing { room: need(f.room, "room", k)? },
            "read" => Command::Read { room: need(f.room, "room", k)?, seq: need(f.seq, "seq", k)? },
            other => return Err(FrameError::UnknownType(other.to_string())),
        })
    }

    /// The command's `type`.
    pub fn kind(&self) -> &'static str {
        match self {
            Command::Auth { .. } => "auth",
            Command::Subscribe { .. } => "subscribe",
            Command::Unsubscribe { .. } => "unsubscribe",
            Command::Send { .. } => "send",
            Command::Edit { .. } => "edit",
            Command::React { .. } => "react",
            Command::History { .. } => "history",
            Command::Typing { .. } => "typing",
            Command::Read { .. } => "read",
        }
    }

    /// The frame that carries the command with the client's `id`.
    pub fn frame(self, id: Option<u64>) -> Frame {
        let mut f = Frame { kind: Some(self.kind().to_string()), id, ..Frame::default() };
        match self {
            Command::Auth { token } => f.token = Some(token),
            Command::Subscribe { room, since } => (f.room, f.since) = (Some(room), since),
            Command::Unsubscribe { room } | Command::Typing { room } => f.room = Some(room),
            Command::Send { room, body, client_id, reply_to, attachments } => {
                (f.room, f.body, f.client_id, f.reply_to) = (Some(room), Some(body), Some(client_id), reply_to);
                f.attachments = (!attachments.is_empty()).then_some(attachments);
            }
            Command::Edit { room, seq, body } => (f.room, f.seq, f.body) = (Some(room), Some(seq), Some(body)),
            Command::React { room, seq, emoji, on } => {
                (f.room, f.seq, f.emoji, f.on) = (Some(room), Some(seq), Some(emoji), Some(on));
            }
            Command::History { room, page, limit } => {
                (f.room, f.limit) = (Some(room), limit);
                match page {
                    Page::NEWEST => {}
                    Page::Before(n) => f.before = Some(n),
                    Page::After(n) => f.after = Some(n),
                }
            }
            Command::Read { room, seq } => (f.room, f.seq) = (Some(room), Some(seq)),
        }
        f
    }
}

impl TryFrom<Frame> for Command {
    type Error = FrameError;

    fn try_from(f: Frame) -> Result<Command, FrameError> {
        Command::from_frame(f)
    }
}

impl From<Command> for Frame {
    fn from(c: Command) -> Frame {
        c.frame(None)
    }
}

/// Just the `id` of a frame, read when the rest does not parse (to address
/// the error reply) or to tell a reply (with `id`) from an event.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FrameId {
    /// The frame's `id`, if it has a numeric one.
    pub id: Option<u64>,
}
