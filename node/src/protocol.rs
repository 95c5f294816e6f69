//! The node's side of the client wire format. The shapes, names and codes
//! are `palaver_protocol`'s; here is only what needs a JSON encoder or the
//! node's own types: encoding to text, the protocol's view of a stored
//! message, and the WebSocket reply frames.

use palaver_protocol::Attachment;
use palaver_protocol::Done;
use palaver_protocol::FrameId;
use palaver_protocol::Message;
use palaver_protocol::Reactions;
use palaver_protocol::Reply;
use palaver_protocol::ServerEvent;
use serde::Serialize;

use crate::error::ApiError;
use crate::rooms;

/// Encodes a value that cannot fail to encode (plain structs of strings and numbers).
pub fn to_json<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| String::from("{}"))
}

/// A stored message as clients see it (a history item), borrowing from it.
pub fn message<'a>(room: &'a str, m: &'a rooms::Message) -> Message<&'a str> {
    Message {
        room,
        seq: m.seq,
        from: &m.stored.from,
        body: m.stored.body.as_deref(),
        ts: m.stored.ts,
        client_id: Some(&m.stored.client_id),
        deleted: m.stored.body.is_none(),
        reply_to: m.stored.reply_to,
        edited_at: m.stored.edited_at,
        reactions: Reactions(
            m.stored
                .reactions
                .iter()
                .map(|r| (r.emoji.as_str(), r.users.iter().map(String::as_str).collect()))
                .collect(),
        ),
        attachments: m
            .stored
            .attachments
            .iter()
            .map(|a| Attachment { id: a.id.as_str(), name: a.name.as_str(), kind: a.mime.as_str(), size: a.size })
            .collect(),
    }
}

/// The `message` event of a stored message, encoded.
pub fn message_event(room: &str, m: &rooms::Message) -> String {
    to_json(&ServerEvent::Message(message(room, m)))
}

/// A WebSocket `ok` reply carrying `answer`.
pub fn ok_reply<T: Serialize>(id: Option<u64>, answer: T) -> String {
    to_json(&Reply::<T, &str>::Ok { id, answer })
}

/// A WebSocket `error` reply.
pub fn error_reply(id: Option<u64>, e: &ApiError) -> String {
    to_json(&Reply::<Done, &str>::Error { id, error: e.body() })
}

/// Reads just the `id` of a frame that failed to parse, to address the error.
pub fn salvage_id(text: &str) -> Option<u64> {
    serde_json::from_str::<FrameId>(text).ok().and_then(|f| f.id)
}

#[cfg(test)]
mod tests {
    use palaver_protocol::Subscribed;

    use super::*;
    use crate::rooms::StoredMessage;

    #[test]
    fn stored_messages_encode_as_the_protocol_says() {
        let m = rooms::Message {
            seq: 3,
            stored: StoredMessage {
                from: "ann".into(),
                body: Some("hi".into()),
                ts: 9,
                client_id: "c".into(),
                epoch: 1,
                ..StoredMessage::default()
            },
        };
        assert_eq!(
            message_event("r", &m),
            r#"{"type":"message","room":"r","seq":3,"from":"ann","body":"hi","ts":9,"client_id":"c"}"#
        );
        let deleted = rooms::Message { seq: 3, stored: StoredMessage { body: None, ..m.stored } };
        assert_eq!(
            to_json(&message("r", &deleted)),
            r#"{"room":"r","seq":3,"from":"ann","ts":9,"client_id":"c","deleted":true}"#
        );
    }

    #[test]
    fn replies_carry_the_command_id() {
        assert_eq!(ok_reply(Some(2), Subscribed { last_seq: 4 }), r#"{"type":"ok","id":2,"last_seq":4}"#);
        assert_eq!(ok_reply(None, Done {}), r#"{"type":"ok","id":null}"#);
        assert_eq!(
            error_reply(Some(4), &ApiError::rate_limited(250)),
            r#"{"type":"error","id":4,"code":"rate_limited","message":"too many requests","retry_after_ms":250}"#
        );
        assert_eq!(salvage_id(r#"{"type":5,"id":7}"#), Some(7));
        assert_eq!(salvage_id("nonsense"), None);
    }
}
