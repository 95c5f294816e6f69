//! Replies to WebSocket commands (`{"type":"ok","id":N,…}` with the
//! command's answer, or `{"type":"error",…}`) and the HTTP error body.

use serde::Deserialize;
use serde::Serialize;

use crate::codes::Code;
use crate::commands::Page;
use crate::views::Message;

/// A reply to a command: `{"type":"ok","id":N,…}` with the answer's fields
/// beside the `id`, or `{"type":"error","id":N,"code",…}`; the `id` is the
/// command's (null when it had none, or none could be read). `T` is the
/// answer of the command replied to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Reply<T, S = String> {
    /// The command was done.
    Ok {
        /// The command's `id`.
        id: Option<u64>,
        /// The answer's fields.
        #[serde(flatten)]
        answer: T,
    },
    /// The command failed; the socket stays open.
    Error {
        /// The command's `id`.
        id: Option<u64>,
        /// Code, text and wait.
        #[serde(flatten)]
        error: ErrorBody<S>,
    },
}

/// The answer of a command that answers nothing more (`unsubscribe`,
/// `typing`, `read`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Done {}

/// The answer to `auth`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Authenticated<S = String> {
    /// Whose socket it is.
    pub username: S,
}

/// The answer to `subscribe`; the replay follows it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscribed {
    /// The room's committed seq as the answering node knows it.
    pub last_seq: u64,
}

/// Where a sent message landed: the answer to `send`, and the body of
/// `POST /api/rooms/{room}/messages`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct SendAck {
    /// The message's seq.
    pub seq: u64,
    /// Its timestamp (Unix ms).
    pub ts: u64,
}

/// The answer to `history`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryPage<S = String> {
    /// The messages, ascending.
    pub messages: Vec<Message<S>>,
    /// Where the rest starts, when the page was cut at the byte cap.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next: Option<Page>,
}

/// What went wrong: inside `{"error":…}` on HTTP, beside `id` in a
/// WebSocket [`Reply::Error`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody<S = String> {
    /// The protocol code.
    pub code: Code,
    /// Human text.
    pub message: S,
    /// With `rate_limited`, and `unavailable` when the wait is known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub retry_after_ms: Option<u64>,
}

/// The body of every HTTP error answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpError<S = String> {
    /// Code, text and wait.
    pub error: ErrorBody<S>,
}
