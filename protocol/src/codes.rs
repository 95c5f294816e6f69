//! Error codes with their HTTP status, and the WebSocket close codes.

use serde::Deserialize;
use serde::Serialize;

use crate::names::named;

/// A protocol error code: the `code` of every error answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Code {
    /// 400: malformed or senseless request.
    BadRequest,
    /// 401: no valid token or ticket.
    Unauthorized,
    /// 403: the caller sees the room but may not do this.
    Forbidden,
    /// 404: absent, or hidden from the caller.
    NotFound,
    /// 409: clashes with what exists.
    Conflict,
    /// 408: the request body did not arrive in time; the connection closes.
    Timeout,
    /// 413: over a size limit.
    TooLarge,
    /// 429, with `retry_after_ms`.
    RateLimited,
    /// 503: transient, retry.
    Unavailable,
    /// 500; also what a code this version does not know reads as.
    #[serde(other)]
    Internal,
}

named!(Code {
    BadRequest = "bad_request",
    Unauthorized = "unauthorized",
    Forbidden = "forbidden",
    NotFound = "not_found",
    Conflict = "conflict",
    Timeout = "timeout",
    TooLarge = "too_large",
    RateLimited = "rate_limited",
    Unavailable = "unavailable",
    Internal = "internal",
});

impl Code {
    /// The code named `name` (`internal` for names this version does not know).
    pub fn parse(name: &str) -> Code {
        Code::from_name(name).unwrap_or(Code::Internal)
    }

    /// The HTTP status that goes with the code.
    pub fn status(self) -> u16 {
        match self {
            Code::BadRequest => 400,
            Code::Unauthorized => 401,
            Code::Forbidden => 403,
            Code::NotFound => 404,
            Code::Conflict => 409,
            Code::Timeout => 408,
            Code::TooLarge => 413,
            Code::RateLimited => 429,
            Code::Unavailable => 503,
            Code::Internal => 500,
        }
    }
}

/// WebSocket close codes the server sends.
pub mod close {
    /// A normal close (the client's own, or the end of a connection).
    pub const NORMAL: u16 = 1000;
    /// A WebSocket protocol error.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame was not UTF-8.
    pub const INVALID_UTF8: u16 = 1007;
    /// Policy: abuse, such as a flood far past the rate limit.
    pub const POLICY: u16 = 1008;
    /// A frame or message exceeded the size limit.
    pub const TOO_LARGE: u16 = 1009;
    /// The server failed (a room log could not be read for delivery).
    pub const SERVER_ERROR: u16 = 1011;
    /// The node is restarting or stopping: reconnect through the balancer.
    pub const RESTARTING: u16 = 1012;
    /// The outbound queue overflowed: resume with `since`.
    pub const TOO_SLOW: u16 = 1013;
    /// The first frame was not a valid `auth`.
    pub const NOT_AUTHENTICATED: u16 = 4001;
    /// The token was revoked (logout) or expired.
    pub const TOKEN_REVOKED: u16 = 4003;
}
