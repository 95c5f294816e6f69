//! Attachments as the room-log store keeps them, pure: a row per (room,
//! attachment id) in tree [`ATTACHMENTS`] naming the content (its SHA-256),
//! and a row per use of a content in tree [`FILE_USES`] keyed content
//! first, so a node finds out whether a file is still named by any room it
//! holds with one short scan. The id a client sees names the room:
//! `<room>.<32 hex>`, derived from the room's key, the content and its name
//! and type, so the same upload twice is the same attachment and knowing a
//! file's hash gives nothing in another room (every read is checked against
//! the id's room). The clean-up of names and types clients give, and the
//! headers a download is answered with, are here too.

use serde::Deserialize;
use serde::Serialize;
use sha2::Digest;
use sha2::Sha256;

use crate::storage::Bytes;
use crate::storage::Order;
use crate::storage::StorageError;
use crate::storage::Store;

/// Tree of attachments: key (room key, id), value [`StoredAttachment`].
pub const ATTACHMENTS: &str = "attachments";
/// Tree of the uses of each content: key (sha, room key, id), empty value.
pub const FILE_USES: &str = "attachment_files";

/// An attachment's id within its room.
pub type AttachmentId = [u8; 16];
/// A content's SHA-256.
pub type Sha = [u8; 32];

/// Most attachments one message carries.
pub const MAX_PER_MESSAGE: usize = 10;
/// Longest file name, bytes.
pub const MAX_NAME: usize = 255;
/// Longest media type, bytes.
pub const MAX_TYPE: usize = 127;
/// The name of a file uploaded without one.
pub const DEFAULT_NAME: &str = "file";
/// The type of a file uploaded without one.
pub const DEFAULT_TYPE: &str = "application/octet-stream";

/// The format byte a row starts with.
const ROW_FORMAT: u8 = 1;

/// One attachment of a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredAttachment {
    /// The content's SHA-256: the file is `<data>/attachments/<hex>`.
    pub sha: Sha,
    /// File name.
    pub name: String,
    /// Media type.
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// Who uploaded it.
    pub uploader: String,
    /// The room's id (its shard's replicas hold the file).
    pub room: String,
    /// The seqs of the messages that carry it and are not deleted.
    pub carriers: Vec<u64>,
    /// Set when the deletion of this seq left no carrier: the attachment is
    /// gone for clients (and its file, with no other use), the row stays as
    /// a tombstone until the room is dropped. A send of seq `s` naming it
    /// is refused unless `s` ≤ this seq: only a replay over a snapshot
    /// built after the deletion meets that, and there it must be accepted
    /// as it was the first time (snapshots are fuzzy, see `shards::machine`).
    pub retired_by: Option<u64>,
}

impl StoredAttachment {
    /// Whether a send of message `seq` may carry it.
    pub fn usable_by(&self, seq: u64) -> bool {
        self.retired_by.is_none_or(|by| by >= seq)
    }

    /// Whether clients see it.
    pub fn live(&self) -> bool {
        self.retired_by.is_none()
    }
}

/// Every attachment row of a room: (key, value) as stored.
pub fn room_rows(store: &Store, room_key: u64) -> Result<Vec<(Bytes, Bytes)>, StorageError> {
    let (start, end) = (super::record::room_prefix(room_key), super::record::room_end(room_key));
    store.range(
        ATTACHMENTS,
        std::ops::Bound::Included(&start[..]),
        std::ops::Bound::Excluded(&end[..]),
        Order::Ascending,
        usize::MAX,
    )
}

/// The store key of an attachment.
pub fn attachment_key(room_key: u64, id: &AttachmentId) -> [u8; 24] {
    let mut k = [0u8; 24];
    k[..8].copy_from_slice(&room_key.to_be_bytes());
    k[8..].copy_from_slice(id);
    k
}

/// The id part of an attachment key.
pub fn parse_attachment_key(key: &[u8]) -> Option<(u64, AttachmentId)> {
    let room = u64::from_be_bytes(key.get(..8)?.try_into().ok()?);
    let id = key.get(8..24)?.try_into().ok()?;
    Some((room, id))
}

/// The store key of one use of a content.
pub fn use_key(sha: &Sha, room_key: u64, id: &AttachmentId) -> Vec<u8> {
    let mut k = Vec::with_capacity(56);
    k.extend_from_slice(sha);
    k.extend_from_slice(&attachment_key(room_key, id));
    k
}

/// Encodes a row.
pub fn encode(a: &StoredAttachment) -> Vec<u8> {
    let mut out = vec![ROW_FORMAT];
    // Plain structs of strings, arrays and integers always encode.
    out.extend(postcard::to_stdvec(a).unwrap_or_default());
    out
}

/// Decodes a row.
pub fn decode(bytes: &[u8]) -> Result<StoredAttachment, StorageError> {
    let corrupt = |message: String| StorageError::Corrupt { tree: ATTACHMENTS, message };
    match bytes {
        [ROW_FORMAT, rest @ ..] => postcard::from_bytes(rest).map_err(|e| corrupt(e.to_string())),
        _ => Err(corrupt("unknown attachment row format".into())),
    }
}

/// The id of `content` uploaded to room `room_key` as `name` of type `mime`.
pub fn make_id(room_key: u64, sha: &Sha, name: &str, mime: &str) -> AttachmentId {
    let mut h = Sha256::new();
    h.update(room_key.to_be_bytes());
    h.update(sha);
    h.update(name.as_bytes());
    h.update([0]);
    h.update(mime.as_bytes());
    let digest = h.finalize();
    let mut id = [0u8; 16];
    id.copy_from_slice(&digest[..16]);
    id
}

/// The id clients see: `<room>.<hex>`.
pub fn public_id(room: &str, id: &AttachmentId) -> String {
    format!("{room}.{}", hex::encode(id))
}

/// The room and id of a public id, if it is one.
pub fn parse_public_id(public: &str) -> Option<(&str, AttachmentId)> {
    let (room, hex_id) = public.rsplit_once('.')?;
    if room.is_empty() || hex_id.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    hex::decode_to_slice(hex_id, &mut id).ok()?;
    Some((room, id))
}

/// A file name as stored: the last path component of what the client
/// gave, without control characters, at most [`MAX_NAME`] bytes (cut at a
/// character boundary); [`DEFAULT_NAME`] when nothing is left.
pub fn clean_name(raw: Option<&str>) -> String {
    let raw = raw.unwrap_or("");
    let last = raw.rsplit(['/', '\\']).next().unwrap_or("");
    let mut name: String = last.chars().filter(|c| !c.is_control()).collect();
    let trimmed = name.trim();
    if trimmed.is_empty() || trimmed == "." || trimmed == ".." {
        return DEFAULT_NAME.to_string();
    }
    name = trimmed.to_string();
    if name.len() > MAX_NAME {
        let mut cut = MAX_NAME;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    name
}

/// A media type as stored: `type/subtype` (parameters such as `charset`
/// kept), lower-cased type, at most [`MAX_TYPE`] bytes; [`DEFAULT_TYPE`]
/// when none was given.
pub fn check_type(raw: Option<&str>) -> Result<String, String> {
    let Some(raw) = raw.map(str::trim).filter(|t| !t.is_empty()) else { return Ok(DEFAULT_TYPE.to_string()) };
    if raw.len() > MAX_TYPE {
        return Err(format!("Content-Type is longer than {MAX_TYPE} bytes"));
    }
    let essence = raw.split(';').next().unwrap_or("").trim();
    let token = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b));
    match essence.split_once('/') {
        Some((t, sub)) if token(t) && token(sub) => {}
        _ => return Err("Content-Type must be type/subtype".to_string()),
    }
    if raw.bytes().any(|b| b.is_ascii_control() || !b.is_ascii()) {
        return Err("Content-Type must be plain ASCII".to_string());
    }
    let rest = &raw[essence.len()..];
    Ok(format!("{}{rest}", essence.to_ascii_lowercase()))
}

/// Whether a download of this type is shown in the page: the raster image
/// types browsers render without running anything.
pub fn is_inline_image(mime: &str) -> bool {
    let essence = mime.split(';').next().unwrap_or("").trim();
    matches!(essence, "image/png" | "image/jpeg" | "image/gif" | "image/webp")
}

/// The `Content-Disposition` of a download: `inline` for
/// [`is_inline_image`] types, `attachment` otherwise, with the name as an
/// RFC 8187 `filename*` (and an ASCII `filename` fallback).
pub fn content_disposition(name: &str, mime: &str) -> String {
    let kind = if is_inline_image(mime) { "inline" } else { "attachment" };
    let mut encoded = String::with_capacity(name.len() * 3);
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"!#$&+-.^_`|~".contains(&b) {
            encoded.push(char::from(b));
        } else {
            encoded.push_str(&format!("%{b:02X}"));
        }
    }
    let fallback: String =
        name.chars().map(|c| if c.is_ascii_graphic() && c != '"' && c != '\\' { c } else { '_' }).collect();
    format!("{kind}; filename=\"{fallback}\"; filename*=UTF-8''{encoded}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_name_the_room_and_parse_back() {
        let sha = [3u8; 32];
        let id = make_id(7, &sha, "a.png", "image/png");
        assert_ne!(id, make_id(8, &sha, "a.png", "image/png"), "another room, another id");
        assert_ne!(id, make_id(7, &sha, "b.png", "image/png"));
        assert_eq!(id, make_id(7, &sha, "a.png", "image/png"), "the same upload, the same id");
        let public = public_id("dm:ann:bob", &id);
        assert_eq!(parse_public_id(&public), Some(("dm:ann:bob", id)));
        for bad in ["", "lobby", "lobby.", ".00112233445566778899aabbccddeeff", "lobby.zz", "lobby.0011"] {
            assert_eq!(parse_public_id(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn rows_round_trip_and_keys_sort_by_room() {
        let a = StoredAttachment {
            sha: [1; 32],
            name: "n".into(),
            mime: "text/plain".into(),
            size: 4,
            uploader: "ann".into(),
            room: "lobby".into(),
            carriers: vec![3, 9],
            retired_by: None,
        };
        assert_eq!(decode(&encode(&a)).expect("decode"), a);
        assert!(decode(&[9, 9]).is_err());
        assert!(attachment_key(1, &[0xff; 16]) < attachment_key(2, &[0; 16]));
        assert_eq!(parse_attachment_key(&attachment_key(5, &[4; 16])), Some((5, [4; 16])));
        assert!(use_key(&[1; 32], 9, &[2; 16]).starts_with(&[1; 32]));
    }

    #[test]
    fn names_lose_paths_and_control_characters() {
        let long = "é".repeat(200);
        let cases: [(Option<&str>, &str); 8] = [
            (None, "file"),
            (Some(""), "file"),
            (Some("../../etc/passwd"), "passwd"),
            (Some("C:\\Users\\ann\\cat.png"), "cat.png"),
            (Some("a\u{0}b\nc.txt"), "abc.txt"),
            (Some(".."), "file"),
            (Some("dir/"), "file"),
            (Some("  report 2024.pdf "), "report 2024.pdf"),
        ];
        for (raw, want) in cases {
            assert_eq!(clean_name(raw), want, "{raw:?}");
        }
        let cut = clean_name(Some(&long));
        assert!(cut.len() <= MAX_NAME && cut.chars().all(|c| c == 'é'), "cut at a character boundary");
    }

    #[test]
    fn types_must_be_type_slash_subtype() {
        assert_eq!(check_type(None).as_deref(), Ok(DEFAULT_TYPE));
        assert_eq!(check_type(Some("Image/PNG")).as_deref(), Ok("image/png"));
        assert_eq!(check_type(Some("text/plain; charset=utf-8")).as_deref(), Ok("text/plain; charset=utf-8"));
        for bad in ["png", "image/", "/png", "a/b/c", "text/pl ain", "tëxt/plain"] {
            assert!(check_type(Some(bad)).is_err(), "{bad:?}");
        }
        assert!(check_type(Some(&format!("a/{}", "b".repeat(MAX_TYPE)))).is_err());
    }

    #[test]
    fn images_show_inline_and_the_rest_downloads() {
        assert_eq!(
            content_disposition("cat.png", "image/png"),
            "inline; filename=\"cat.png\"; filename*=UTF-8''cat.png"
        );
        assert_eq!(
            content_disposition("a \"b\".html", "text/html"),
            "attachment; filename=\"a__b_.html\"; filename*=UTF-8''a%20%22b%22.html"
        );
        assert!(content_disposition("x.svg", "image/svg+xml").starts_with("attachment;"), "svg runs scripts");
        assert!(content_disposition("é.gif", "image/gif").ends_with("UTF-8''%C3%A9.gif"));
    }
}
