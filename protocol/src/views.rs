//! What clients are shown: messages, rooms, members, audit entries,
//! accounts, and the roles and visibilities they name.
//!
//! Fields that a reader may find absent are `Option`s even where this
//! server always sends them (`owner`, `client_id`, an audit `target`), so
//! that one type serves both the node and lenient readers.

use serde::Deserialize;
use serde::Serialize;

use crate::events::ServerEvent;
use crate::names::named;

/// Who may see a room and how one joins it. Stored by the node's metadata
/// by variant index: never reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Visibility {
    /// Listed; anyone may read and join.
    Public,
    /// Invite-only; invisible to outsiders.
    Private,
    /// A two-person direct-message room.
    Direct,
}

named!(Visibility { Public = "public", Private = "private", Direct = "direct" });

/// A member's role in a room; a higher role compares greater. Stored by
/// the node's metadata by variant index: never reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An ordinary member.
    Member,
    /// May invite and moderate members of lower role.
    Moderator,
    /// Created the room (or was handed it); may do everything.
    Owner,
}

named!(Role { Member = "member", Moderator = "moderator", Owner = "owner" });

/// An account's cluster-wide role. Stored by the node's metadata by
/// variant index: never reorder.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum UserRole {
    /// The cluster administrator.
    Admin,
    /// Everyone else.
    User,
}

named!(UserRole { Admin = "admin", User = "user" });

fn is_false(b: &bool) -> bool {
    !*b
}

/// A message: a history item, and with `"type":"message"` an event. A
/// deleted message keeps its place and loses its body.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Message<S = String> {
    /// Room id.
    pub room: S,
    /// Position in the room, from 1, without gaps.
    pub seq: u64,
    /// Sender's username.
    pub from: S,
    /// Text; absent once deleted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<S>,
    /// When the room's owner took it (Unix ms).
    pub ts: u64,
    /// The sender's idempotency key (always sent by this server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<S>,
    /// True once deleted; never sent as false.
    #[serde(default, skip_serializing_if = "is_false")]
    pub deleted: bool,
    /// The seq of the message of the same room this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// When its sender last changed the body (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_at: Option<u64>,
    /// Each emoji with who reacted with it: `{"👍":["ann","bob"]}`.
    #[serde(default = "Reactions::default", skip_serializing_if = "Reactions::is_empty")]
    pub reactions: Reactions<S>,
    /// Files sent with it, in the order the sender named them.
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<Attachment<S>>,
}

/// A file uploaded to a room (`POST /api/rooms/{room}/attachments`), as a
/// message shows it; its bytes are at `GET /api/attachments/{id}`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment<S = String> {
    /// Opaque id, valid in the room it was uploaded to only.
    pub id: S,
    /// File name as given at upload (cleaned of path separators and
    /// control characters).
    pub name: S,
    /// Media type as given at upload (`type/subtype`).
    #[serde(rename = "type")]
    pub kind: S,
    /// Bytes.
    pub size: u64,
}

/// A message's reactions: a JSON object from emoji to usernames, in the
/// order the emoji were first chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reactions<S = String>(pub Vec<(S, Vec<S>)>);

impl<S> Default for Reactions<S> {
    fn default() -> Self {
        Reactions(Vec::new())
    }
}

impl<S> Reactions<S> {
    /// No reaction at all.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl<S: Serialize> Serialize for Reactions<S> {
    fn serialize<Ser: serde::Serializer>(&self, serializer: Ser) -> Result<Ser::Ok, Ser::Error> {
        use serde::ser::SerializeMap;
        let mut map = serializer.serialize_map(Some(self.0.len()))?;
        for (emoji, users) in &self.0 {
            map.serialize_entry(emoji, users)?;
        }
        map.end()
    }
}

impl<'de, S: Deserialize<'de>> Deserialize<'de> for Reactions<S> {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries<S>(std::marker::PhantomData<S>);
        impl<'de, S: Deserialize<'de>> serde::de::Visitor<'de> for Entries<S> {
            type Value = Reactions<S>;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("an object from emoji to usernames")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut entries = Vec::new();
                while let Some(entry) = map.next_entry()? {
                    entries.push(entry);
                }
                Ok(Reactions(entries))
            }
        }
        deserializer.deserialize_map(Entries(std::marker::PhantomData))
    }
}

/// A room as a caller sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// Room id.
    pub room: String,
    /// Title (`""` for a direct room).
    #[serde(default)]
    pub title: String,
    /// Public, private or direct.
    pub visibility: Visibility,
    /// The owner's username; for a direct room, who opened it (always sent by this server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    /// Made at (Unix ms).
    pub created_at: u64,
    /// The newest committed seq the answering node knows (0: none yet).
    pub last_seq: u64,
    /// Messages after the caller's read marker; members only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unread: Option<u64>,
    /// Days its messages are kept (0: forever): the owner's choice or the
    /// cluster's default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
}

/// A room member: the `join` answer (with `room`) and `members` entries
/// (with `online`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Room id, in the `join` answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub room: Option<String>,
    /// Username.
    pub username: String,
    /// Owner, moderator or member.
    pub role: Role,
    /// Connected anywhere in the cluster, in `members` answers.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub online: Option<bool>,
}

/// A member's read marker, as `GET /api/rooms/{room}/receipts` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Receipt<S = String> {
    /// The member.
    pub username: S,
    /// The highest seq they have read (0: nothing yet).
    pub seq: u64,
}

/// One moderation action of `GET /api/rooms/{room}/audit`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When (Unix ms).
    pub ts: u64,
    /// Who acted.
    pub actor: String,
    /// What: invite, kick, ban, unban, mute, unmute, role, delete_message.
    pub action: String,
    /// The user acted on (always sent by this server).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub target: Option<String>,
    /// The new role, the mute's end or the deleted seq, as text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// Answer of `POST /api/register`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registered {
    /// The new account's name.
    pub username: String,
}

/// Answer of `POST /api/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    /// Bearer token; shown once.
    pub token: String,
    /// The account's name.
    pub username: String,
    /// When the token stops working at the latest (Unix ms).
    pub expires_at: u64,
}

/// Answer of `GET /api/me`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Me {
    /// The account's name.
    pub username: String,
    /// Admin or user.
    pub role: UserRole,
}

/// One account in `GET /api/admin/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserEntry {
    /// The account's name.
    pub username: String,
    /// Admin or user.
    pub role: UserRole,
    /// Whether the account may not log in.
    pub disabled: bool,
    /// When the account was made (Unix ms).
    pub created_at: u64,
}

/// Answer of `POST /api/admin/users`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserMade {
    /// The new account's name.
    pub username: String,
    /// Its role.
    pub role: UserRole,
}

/// Answer of `POST /api/admin/invites`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invite {
    /// The code, shown once: `POST /api/register` takes it as `invite`.
    pub code: String,
}

/// Answer of `POST /api/ticket`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// One-time ticket for `?ticket=` on `/sse` or `/api/poll`.
    pub ticket: String,
}

/// Answer of `GET /api/poll`; `E` is how events are held (a reader's own
/// event type, or already encoded JSON).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollAnswer<E = ServerEvent> {
    /// Events after the cursors, messages of one room in seq order.
    pub events: Vec<E>,
    /// Cursors to pass as `since` next time (`a:13,b:40`).
    pub cursor: String,
}
