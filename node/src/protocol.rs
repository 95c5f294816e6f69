//! The client wire format of PROTOCOL.md: WebSocket command frames in, events
//! and replies out, error codes. Encoding only; no I/O and no state.

use serde::Deserialize;
use serde::Serialize;

use crate::meta::MemberChange;
use crate::permissions::Role;
use crate::rooms::Message;

/// A protocol error code and its HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Code {
    /// 400.
    BadRequest,
    /// 401.
    Unauthorized,
    /// 403.
    Forbidden,
    /// 404.
    NotFound,
    /// 409.
    Conflict,
    /// 408: the request body did not arrive in time; the connection closes.
    Timeout,
    /// 413.
    TooLarge,
    /// 429, with `retry_after_ms`.
    RateLimited,
    /// 503: transient, retry.
    Unavailable,
    /// 500.
    Internal,
}

impl Code {
    /// The protocol's name for the code.
    pub fn as_str(self) -> &'static str {
        match self {
            Code::BadRequest => "bad_request",
            Code::Unauthorized => "unauthorized",
            Code::Forbidden => "forbidden",
            Code::NotFound => "not_found",
            Code::Conflict => "conflict",
            Code::Timeout => "timeout",
            Code::TooLarge => "too_large",
            Code::RateLimited => "rate_limited",
            Code::Unavailable => "unavailable",
            Code::Internal => "internal",
        }
    }

    /// The code named `name` (`internal` for names this version does not know).
    pub fn parse(name: &str) -> Code {
        match name {
            "bad_request" => Code::BadRequest,
            "unauthorized" => Code::Unauthorized,
            "forbidden" => Code::Forbidden,
            "not_found" => Code::NotFound,
            "conflict" => Code::Conflict,
            "timeout" => Code::Timeout,
            "too_large" => Code::TooLarge,
            "rate_limited" => Code::RateLimited,
            "unavailable" => Code::Unavailable,
            _ => Code::Internal,
        }
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

/// WebSocket close codes used by the server.
pub mod close {
    /// The first frame was not a valid `auth`.
    pub const NOT_AUTHENTICATED: u16 = 4001;
    /// The token was revoked (logout) or expired.
    pub const TOKEN_REVOKED: u16 = 4003;
    /// A frame exceeded the size limit.
    pub const TOO_LARGE: u16 = 1009;
    /// A text frame was not UTF-8.
    pub const INVALID_UTF8: u16 = 1007;
    /// Policy: abuse, such as a flood far past the rate limit.
    pub const POLICY: u16 = 1008;
    /// The outbound queue overflowed: resume with `since`.
    pub const TOO_SLOW: u16 = 1013;
    /// The node is restarting or draining: reconnect through the balancer.
    pub const RESTARTING: u16 = 1012;
}

/// A client command frame. Every field is optional here so that one pass
/// reads any frame; [`Command::from_frame`] checks what each type needs.
#[derive(Debug, Default, Deserialize)]
pub struct Frame {
    /// The command type.
    #[serde(rename = "type")]
    pub kind: Option<String>,
    /// The client's id for the reply.
    pub id: Option<u64>,
    /// For `auth`.
    pub token: Option<String>,
    /// Room id.
    pub room: Option<String>,
    /// For `subscribe`.
    pub since: Option<u64>,
    /// For `send`.
    pub body: Option<String>,
    /// For `send`.
    pub client_id: Option<String>,
    /// For `history`.
    pub before: Option<u64>,
    /// For `history`.
    pub after: Option<u64>,
    /// For `history`.
    pub limit: Option<usize>,
    /// For `read`.
    pub seq: Option<u64>,
}

/// Which page of history.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Page {
    /// Messages with seq > N, oldest first.
    After(u64),
    /// The newest messages with seq < N, oldest first.
    Before(u64),
}

/// A checked client command.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    },
    /// Read a page of messages.
    History {
        /// Room id.
        room: String,
        /// Which page.
        page: Page,
        /// At most this many (capped by the server).
        limit: Option<usize>,
    },
    /// Tell others the caller is typing.
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

fn need<T>(field: Option<T>, name: &str, kind: &str) -> Result<T, String> {
    field.ok_or_else(|| format!("{kind} needs \"{name}\""))
}

impl Command {
    /// Checks that a frame carries what its type needs.
    pub fn from_frame(f: Frame) -> Result<Command, String> {
        let kind = f.kind.ok_or("a frame needs \"type\"")?;
        let k = kind.as_str();
        Ok(match k {
            "auth" => Command::Auth { token: need(f.token, "token", k)? },
            "subscribe" => Command::Subscribe { room: need(f.room, "room", k)?, since: f.since },
            "unsubscribe" => Command::Unsubscribe { room: need(f.room, "room", k)? },
            "send" => Command::Send {
                room: need(f.room, "room", k)?,
                body: need(f.body, "body", k)?,
                client_id: need(f.client_id, "client_id", k)?,
            },
            "history" => {
                let page = match (f.before, f.after) {
                    (Some(b), None) => Page::Before(b),
                    (None, Some(a)) => Page::After(a),
                    (None, None) => Page::Before(u64::MAX),
                    (Some(_), Some(_)) => return Err("history takes \"before\" or \"after\", not both".into()),
                };
                Command::History { room: need(f.room, "room", k)?, page, limit: f.limit }
            }
            "typing" => Command::Typing { room: need(f.room, "room", k)? },
            "read" => Command::Read { room: need(f.room, "room", k)?, seq: need(f.seq, "seq", k)? },
            other => return Err(format!("unknown command type \"{other}\"")),
        })
    }
}

/// Reads just the `id` of a frame that failed to parse, to address the error.
pub fn salvage_id(text: &str) -> Option<u64> {
    #[derive(Deserialize)]
    struct IdOnly {
        id: Option<u64>,
    }
    serde_json::from_str::<IdOnly>(text).ok().and_then(|f| f.id)
}

/// A message as clients see it (history items; events add `"type"`).
#[derive(Debug, Serialize)]
pub struct MessageView<'a> {
    /// `"message"` for events, absent in history lists.
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<&'static str>,
    /// Room id.
    pub room: &'a str,
    /// Position in the room.
    pub seq: u64,
    /// Sender.
    pub from: &'a str,
    /// Text; absent once deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<&'a str>,
    /// Accepted at (Unix ms).
    pub ts: u64,
    /// Sender's idempotency key.
    pub client_id: &'a str,
    /// Present (true) only for deleted messages.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub deleted: bool,
}

impl<'a> MessageView<'a> {
    /// A history item.
    pub fn of(room: &'a str, m: &'a Message) -> Self {
        Self {
            kind: None,
            room,
            seq: m.seq,
            from: &m.stored.from,
            body: m.stored.body.as_deref(),
            ts: m.stored.ts,
            client_id: &m.stored.client_id,
            deleted: m.stored.body.is_none(),
        }
    }

    /// The same message as a `message` event.
    pub fn event(room: &'a str, m: &'a Message) -> Self {
        Self { kind: Some("message"), ..Self::of(room, m) }
    }
}

/// Encodes a value that cannot fail to encode (plain structs of strings and numbers).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| String::from("{}"))
}

/// A `presence` event.
pub fn presence_event(room: &str, username: &str, online: bool) -> String {
    to_json(&serde_json::json!({"type": "presence", "room": room, "username": username, "online": online}))
}

/// A `typing` event.
pub fn typing_event(room: &str, username: &str) -> String {
    to_json(&serde_json::json!({"type": "typing", "room": room, "username": username}))
}

/// A `member` event.
pub fn member_event(room: &str, username: &str, change: MemberChange, role: Option<Role>) -> String {
    let mut v = serde_json::json!({"type": "member", "room": room, "username": username, "change": change.as_str()});
    if let Some(role) = role {
        v["role"] = role.as_str().into();
    }
    to_json(&v)
}

/// A `removed` event: the receiver's own subscription ended.
pub fn removed_event(room: &str, reason: &str) -> String {
    to_json(&serde_json::json!({"type": "removed", "room": room, "reason": reason}))
}

/// A `deleted` event.
pub fn deleted_event(room: &str, seq: u64) -> String {
    to_json(&serde_json::json!({"type": "deleted", "room": room, "seq": seq}))
}

/// A `room_deleted` event.
pub fn room_deleted_event(room: &str) -> String {
    to_json(&serde_json::json!({"type": "room_deleted", "room": room}))
}

/// A WebSocket `ok` reply with extra fields.
pub fn ok_reply(id: Option<u64>, fields: serde_json::Value) -> String {
    let mut v = serde_json::json!({"type": "ok", "id": id});
    if let (Some(obj), serde_json::Value::Object(extra)) = (v.as_object_mut(), fields) {
        obj.extend(extra);
    }
    to_json(&v)
}

/// A WebSocket `error` reply.
pub fn error_reply(id: Option<u64>, code: Code, message: &str, retry_after_ms: Option<u64>) -> String {
    let mut v = serde_json::json!({"type": "error", "id": id, "code": code.as_str(), "message": message});
    if let Some(ms) = retry_after_ms {
        v["retry_after_ms"] = ms.into();
    }
    to_json(&v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::StoredMessage;

    fn parse(text: &str) -> Result<Command, String> {
        let frame: Frame = serde_json::from_str(text).map_err(|e| e.to_string())?;
        Command::from_frame(frame)
    }

    #[test]
    fn frames_become_commands() {
        assert_eq!(parse(r#"{"type":"auth","id":1,"token":"t"}"#), Ok(Command::Auth { token: "t".into() }));
        assert_eq!(
            parse(r#"{"type":"subscribe","id":2,"room":"a","since":5}"#),
            Ok(Command::Subscribe { room: "a".into(), since: Some(5) })
        );
        assert_eq!(
            parse(r#"{"type":"history","room":"a","after":3,"limit":9}"#),
            Ok(Command::History { room: "a".into(), page: Page::After(3), limit: Some(9) })
        );
        assert_eq!(
            parse(r#"{"type":"history","room":"a"}"#),
            Ok(Command::History { room: "a".into(), page: Page::Before(u64::MAX), limit: None })
        );
    }

    #[test]
    fn bad_frames_say_what_is_wrong() {
        for (text, needle) in [
            (r#"{"id":1}"#, "type"),
            (r#"{"type":"send","room":"a","body":"x"}"#, "client_id"),
            (r#"{"type":"fly"}"#, "unknown command"),
            (r#"{"type":"history","room":"a","before":1,"after":2}"#, "not both"),
            (r#"{"type":"send","id":"x"}"#, "invalid type"),
            ("[1,2]", "invalid type"),
        ] {
            let err = parse(text).expect_err(text);
            assert!(err.contains(needle), "{text}: {err}");
        }
        assert_eq!(salvage_id(r#"{"type":5,"id":7}"#), Some(7));
        assert_eq!(salvage_id("nonsense"), None);
    }

    #[test]
    fn events_encode_the_protocol_fields() {
        let m = Message {
            seq: 3,
            stored: StoredMessage {
                from: "ann".into(),
                body: Some("hi".into()),
                ts: 9,
                client_id: "c".into(),
                epoch: 1,
            },
        };
        let v: serde_json::Value = serde_json::from_str(&to_json(&MessageView::event("r", &m))).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"type":"message","room":"r","seq":3,"from":"ann","body":"hi","ts":9,"client_id":"c"})
        );
        let deleted = Message { seq: 3, stored: StoredMessage { body: None, ..m.stored } };
        let v: serde_json::Value = serde_json::from_str(&to_json(&MessageView::of("r", &deleted))).expect("json");
        assert_eq!(v["deleted"], true);
        assert!(v.get("body").is_none());
        for code in
            [Code::BadRequest, Code::NotFound, Code::Timeout, Code::RateLimited, Code::Unavailable, Code::Internal]
        {
            assert_eq!(Code::parse(code.as_str()), code);
        }
        let e: serde_json::Value =
            serde_json::from_str(&error_reply(Some(4), Code::RateLimited, "slow down", Some(250))).expect("json");
        assert_eq!(e["code"], "rate_limited");
        assert_eq!(e["retry_after_ms"], 250);
        let ok: serde_json::Value =
            serde_json::from_str(&ok_reply(Some(2), serde_json::json!({"last_seq": 4}))).expect("json");
        assert_eq!(ok, serde_json::json!({"type":"ok","id":2,"last_seq":4}));
    }
}
