//! The client's one error type: protocol errors keep what the server said
//! (status, `code`, `retry_after_ms`); transport failures keep their cause.

use palaver_protocol::Done;
use palaver_protocol::ErrorBody;
use palaver_protocol::HttpError;
use palaver_protocol::Reply;
use serde::Deserialize;
use serde_json::Value;

/// What a client call returns.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything a client call can fail with.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The server answered with a protocol error (`{"error":{...}}` over
    /// HTTP, `{"type":"error",...}` over WebSocket).
    #[error("{code}: {message} (http status {status:?})")]
    Api {
        /// HTTP status; `None` for a WebSocket reply.
        status: Option<u16>,
        /// Protocol code: `bad_request`, `not_found`, `rate_limited`, ...
        /// (a code the protocol crate does not know reads as `internal`).
        code: String,
        /// Human text from the server.
        message: String,
        /// Present with `rate_limited`.
        retry_after_ms: Option<u64>,
    },
    /// The server answered with a status the call did not expect and a body
    /// that is not a protocol error.
    #[error("unexpected http status {status}: {body}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The body, as text (possibly cut short).
        body: String,
    },
    /// The server's answer does not have the shape the protocol describes.
    #[error("unexpected answer: {0}")]
    Decode(String),
    /// The HTTP transport failed.
    #[error("http transport: {0}")]
    Http(#[from] reqwest::Error),
    /// The WebSocket transport failed.
    #[error("websocket transport: {0}")]
    Ws(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// The WebSocket is closed; `code` is the close code the server sent.
    #[error("websocket closed (close code {code:?}): {reason}")]
    Closed {
        /// Close code from the server's close frame, if it sent one.
        code: Option<u16>,
        /// Close reason, or what ended the connection.
        reason: String,
    },
    /// Nothing suitable arrived before the deadline.
    #[error("timed out waiting for {0}")]
    Timeout(String),
}

impl Error {
    /// The protocol code (`"not_found"`, ...) for a protocol error; for other
    /// failures a fixed marker naming the kind (`"status"`, `"decode"`,
    /// `"http"`, `"websocket"`, `"closed"`, `"timeout"`), never a protocol code.
    pub fn code(&self) -> &str {
        match self {
            Error::Api { code, .. } => code,
            Error::Status { .. } => "status",
            Error::Decode(_) => "decode",
            Error::Http(_) => "http",
            Error::Ws(_) => "websocket",
            Error::Closed { .. } => "closed",
            Error::Timeout(_) => "timeout",
        }
    }

    /// The HTTP status, when the failure came with one.
    pub fn status(&self) -> Option<u16> {
        match self {
            Error::Api { status, .. } => *status,
            Error::Status { status, .. } => Some(*status),
            Error::Http(e) => e.status().map(|s| s.as_u16()),
            _ => None,
        }
    }

    /// `retry_after_ms` of a `rate_limited` answer.
    pub fn retry_after_ms(&self) -> Option<u64> {
        match self {
            Error::Api { retry_after_ms, .. } => *retry_after_ms,
            _ => None,
        }
    }

    /// The WebSocket close code, when the failure is a closed socket.
    pub fn close_code(&self) -> Option<u16> {
        match self {
            Error::Closed { code, .. } => *code,
            _ => None,
        }
    }

    /// True for a closed WebSocket (with any close code).
    pub fn is_closed(&self) -> bool {
        matches!(self, Error::Closed { .. })
    }

    /// True when the deadline passed.
    pub fn is_timeout(&self) -> bool {
        matches!(self, Error::Timeout(_))
    }

    /// Builds the error for a non-success HTTP answer.
    pub(crate) fn from_http(status: u16, body: &[u8], retry_after_header: Option<u64>) -> Error {
        match serde_json::from_slice::<Value>(body).ok().and_then(|v| api_error(&v, Some(status))) {
            Some(Error::Api { status, code, message, retry_after_ms }) => {
                Error::Api { status, code, message, retry_after_ms: retry_after_ms.or(retry_after_header) }
            }
            Some(other) => other,
            None => Error::Status { status, body: clip(&String::from_utf8_lossy(body)) },
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for Error {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        Error::Ws(Box::new(e))
    }
}

/// Reads a protocol error out of an HTTP body (`{"error":{...}}`) or a
/// WebSocket reply (`{"type":"error",...}`).
pub(crate) fn api_error(v: &Value, status: Option<u16>) -> Option<Error> {
    let error = match HttpError::deserialize(v) {
        Ok(body) => body.error,
        Err(_) => match Reply::<Done>::deserialize(v) {
            Ok(Reply::Error { error, .. }) => error,
            _ => return None,
        },
    };
    let ErrorBody { code, message, retry_after_ms } = error;
    Some(Error::Api { status, code: code.to_string(), message, retry_after_ms })
}

/// Keeps error texts readable when a body is large.
pub(crate) fn clip(s: &str) -> String {
    const MAX: usize = 2000;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}… ({} bytes)", &s[..end], s.len())
}
