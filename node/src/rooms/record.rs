//! How a room's messages and dedup entries are laid out in the store: keys
//! that sort by (room, seq), and the postcard-encoded record. Pure.

use serde::Deserialize;
use serde::Serialize;

use crate::storage::StorageError;

/// Tree of messages: key (room key, seq), value [`StoredMessage`].
pub const MESSAGES: &str = "messages";
/// Tree of idempotency entries: key (room key, sender, client id), value seq.
pub const DEDUP: &str = "dedup";
/// Tree of committed seqs: key room key, value seq, written in the same
/// batch as the messages it covers.
pub const COMMITTED: &str = "committed";

/// One message as stored.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    /// Sender's username.
    pub from: String,
    /// The text; `None` once deleted.
    pub body: Option<String>,
    /// When the shard's leader ordered it (Unix ms).
    pub ts: u64,
    /// The sender's idempotency key.
    pub client_id: String,
    /// Written as 0 since room logs moved to shards (a field of the first
    /// record format).
    pub epoch: u64,
    /// The message of the same room this one answers.
    pub reply_to: Option<u64>,
    /// When the body was last changed by its sender (Unix ms).
    pub edited_at: Option<u64>,
    /// Reactions: each emoji with who reacted, in the order they first did.
    pub reactions: Vec<Reaction>,
    /// Files sent with it (format 3 on), in the order the sender named them.
    pub attachments: Vec<Attached>,
}

/// A file a message carries, as the message keeps it (the bytes are found
/// through the room's attachment row, [`super::attachments`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attached {
    /// The attachment's id as clients see it (`<room>.<hex>`,
    /// [`super::attachments::public_id`]).
    pub id: String,
    /// File name.
    pub name: String,
    /// Media type.
    pub mime: String,
    /// Bytes.
    pub size: u64,
}

/// One emoji on a message and who chose it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reaction {
    /// The emoji: one grapheme cluster, or `:name:`.
    pub emoji: String,
    /// Who reacted with it, in order.
    pub users: Vec<String>,
}

/// The first record format: what every message written before replies,
/// edits and reactions is stored as. postcard records are positional, so
/// the fields of a later format cannot just be appended.
#[derive(Deserialize)]
struct FirstFormat {
    from: String,
    body: Option<String>,
    ts: u64,
    client_id: String,
    epoch: u64,
}

/// The second record format (replies, edits, reactions; mark `[0, 2]`):
/// what every message written before attachments is stored as, and what a
/// snapshot file carries (so files of either version install on the other).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct SecondFormat {
    pub from: String,
    pub body: Option<String>,
    pub ts: u64,
    pub client_id: String,
    pub epoch: u64,
    pub reply_to: Option<u64>,
    pub edited_at: Option<u64>,
    pub reactions: Vec<Reaction>,
}

impl From<SecondFormat> for StoredMessage {
    fn from(m: SecondFormat) -> Self {
        StoredMessage {
            from: m.from,
            body: m.body,
            ts: m.ts,
            client_id: m.client_id,
            epoch: m.epoch,
            reply_to: m.reply_to,
            edited_at: m.edited_at,
            reactions: m.reactions,
            attachments: Vec::new(),
        }
    }
}

/// The byte a record of a later format starts with. A first-format record
/// starts with its sender's length, never 0 (usernames are not empty).
const FORMAT_MARK: u8 = 0;
/// The format [`encode`] writes after [`FORMAT_MARK`].
const FORMAT: u8 = 3;
/// The format of replies, edits and reactions, before attachments.
const SECOND_FORMAT: u8 = 2;

/// A message with its place in the room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message {
    /// Position in the room, from 1, gapless.
    pub seq: u64,
    /// The stored fields.
    pub stored: StoredMessage,
}

/// The store key of message `seq` in room `room_key`.
pub fn message_key(room_key: u64, seq: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&room_key.to_be_bytes());
    k[8..].copy_from_slice(&seq.to_be_bytes());
    k
}

/// The (room key, seq) of a message key, if it is one.
pub fn parse_message_key(key: &[u8]) -> Option<(u64, u64)> {
    let room = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let seq = u64::from_be_bytes(key.get(8..16)?.try_into().ok()?);
    Some((room, seq))
}

/// The store key of a dedup entry. The sender name cannot contain a zero
/// byte, so the separator keeps (a, bc) and (ab, c) apart.
pub fn dedup_key(room_key: u64, sender: &str, client_id: &str) -> Vec<u8> {
    let mut k = Vec::with_capacity(8 + sender.len() + 1 + client_id.len());
    k.extend_from_slice(&room_key.to_be_bytes());
    k.extend_from_slice(sender.as_bytes());
    k.push(0);
    k.extend_from_slice(client_id.as_bytes());
    k
}

/// The first key of room `room_key`'s range in either tree.
pub fn room_prefix(room_key: u64) -> [u8; 8] {
    room_key.to_be_bytes()
}

/// The first key after room `room_key`'s range.
pub fn room_end(room_key: u64) -> [u8; 8] {
    room_key.saturating_add(1).to_be_bytes()
}

/// Encodes a record (the current format).
pub fn encode(msg: &StoredMessage) -> Vec<u8> {
    let mut out = vec![FORMAT_MARK, FORMAT];
    // Encoding plain structs of strings and integers cannot fail.
    out.extend(postcard::to_stdvec(msg).unwrap_or_default());
    out
}

/// Decodes a record of any format.
pub fn decode(bytes: &[u8]) -> Result<StoredMessage, StorageError> {
    let corrupt = |message: String| StorageError::Corrupt { tree: MESSAGES, message };
    match bytes {
        [FORMAT_MARK, FORMAT, rest @ ..] => postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string())),
        [FORMAT_MARK, SECOND_FORMAT, rest @ ..] => {
            postcard::from_bytes::<SecondFormat>(rest).map(StoredMessage::from).map_err(|e| corrupt(e.to_string()))
        }
        [FORMAT_MARK, other, ..] => Err(corrupt(format!("unknown message record format {other}"))),
        _ => {
            let first: FirstFormat = postcard::from_bytes(bytes).map_err(|e| corrupt(e.to_string()))?;
            Ok(StoredMessage {
                from: first.from,
                body: first.body,
                ts: first.ts,
                client_id: first.client_id,
                epoch: first.epoch,
                ..StoredMessage::default()
            })
        }
    }
}

/// Decodes a stored seq.
pub fn decode_seq(bytes: &[u8]) -> Result<u64, StorageError> {
    let arr: [u8; 8] =
        bytes.try_into().map_err(|_| StorageError::Corrupt { tree: DEDUP, message: "seq is not 8 bytes".into() })?;
    Ok(u64::from_be_bytes(arr))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn message_keys_sort_by_room_then_seq() {
        let mut keys = vec![message_key(2, 1), message_key(1, 300), message_key(1, 2), message_key(1, 256)];
        keys.sort();
        assert_eq!(keys, vec![message_key(1, 2), message_key(1, 256), message_key(1, 300), message_key(2, 1)]);
        assert_eq!(parse_message_key(&message_key(7, 9)), Some((7, 9)));
        assert_eq!(parse_message_key(b"short"), None);
        assert!(room_prefix(1).as_slice() <= message_key(1, 0).as_slice());
        assert!(message_key(1, u64::MAX).as_slice() < room_end(1).as_slice());
    }

    #[test]
    fn dedup_keys_keep_sender_and_client_id_apart() {
        assert_ne!(dedup_key(1, "ab", "c"), dedup_key(1, "a", "bc"));
        assert_ne!(dedup_key(1, "a", "x"), dedup_key(2, "a", "x"));
    }

    /// A record written before replies, edits and reactions (postcard of
    /// the five first fields) still reads, with none of them.
    #[test]
    fn first_format_records_still_decode() {
        #[derive(Serialize)]
        struct Old<'a>(&'a str, Option<&'a str>, u64, &'a str, u64);
        let old = postcard::to_stdvec(&Old("ann", Some("hi"), 5, "c1", 0)).expect("encode");
        let m = decode(&old).expect("decode");
        assert_eq!((m.from.as_str(), m.body.as_deref(), m.ts, m.client_id.as_str()), ("ann", Some("hi"), 5, "c1"));
        assert_eq!((m.reply_to, m.edited_at, m.reactions.len()), (None, None, 0));
    }

    /// A record written with replies, edits and reactions but before
    /// attachments (mark `[0, 2]`) still reads, with no attachment.
    #[test]
    fn second_format_records_still_decode() {
        let old = SecondFormat {
            from: "ann".into(),
            body: Some("hi".into()),
            ts: 5,
            client_id: "c1".into(),
            epoch: 0,
            reply_to: Some(2),
            edited_at: Some(8),
            reactions: vec![Reaction { emoji: "👍".into(), users: vec!["bob".into()] }],
        };
        let mut bytes = vec![FORMAT_MARK, SECOND_FORMAT];
        bytes.extend(postcard::to_stdvec(&old).expect("encode"));
        let m = decode(&bytes).expect("decode");
        assert_eq!(m, StoredMessage::from(old));
        assert_eq!((m.reply_to, m.edited_at, m.reactions.len(), m.attachments.len()), (Some(2), Some(8), 1, 0));
        assert_eq!(encode(&m)[..2], [FORMAT_MARK, FORMAT], "rewritten in the current format");
    }

    #[test]
    fn records_round_trip_and_garbage_is_an_error() {
        let m = StoredMessage {
            from: "ann".into(),
            body: Some("hi".into()),
            ts: 5,
            client_id: "c1".into(),
            epoch: 1,
            reply_to: Some(3),
            edited_at: Some(9),
            reactions: vec![Reaction { emoji: "👍".into(), users: vec!["bob".into()] }],
            attachments: vec![Attached { id: "a.07".into(), name: "a.png".into(), mime: "image/png".into(), size: 3 }],
        };
        assert_eq!(decode(&encode(&m)).expect("decode"), m);
        assert!(decode(&[FORMAT_MARK, FORMAT + 1, 1]).is_err(), "a format from the future is refused");
        assert!(decode(&[0xff, 0xff, 0xff]).is_err());
        assert!(decode_seq(&[1, 2]).is_err());
        assert_eq!(decode_seq(&7u64.to_be_bytes()).expect("seq"), 7);
    }
}
