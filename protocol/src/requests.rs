//! HTTP request bodies. Values the node checks itself, with messages of its
//! own (a room's `visibility`, a `role`, an empty `body`), travel as plain
//! strings here.

use serde::Deserialize;
use serde::Serialize;

/// `POST /api/register` and `POST /api/login`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials<S = String> {
    /// Account name.
    pub username: S,
    /// Password (8..128 characters to register).
    pub password: S,
}

/// `POST /api/register`: credentials, plus the invite code a cluster in
/// `invite` mode asks for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Registration<S = String> {
    /// Account name.
    pub username: S,
    /// Password (8..128 characters).
    pub password: S,
    /// An invite code from `POST /api/admin/invites`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub invite: Option<S>,
}

/// `POST /api/me/password`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PasswordChange<S = String> {
    /// The current password.
    pub old: S,
    /// The new one (8..128 characters).
    pub new: S,
}

/// `POST /api/admin/users`: an account made by an admin or the operations CLI.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewUser<S = String> {
    /// Account name.
    pub username: S,
    /// Password (8..128 characters).
    pub password: S,
    /// `user` (when absent) or `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<S>,
}

/// `POST /api/admin/invites`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewInvite {
    /// Sign-ups the code admits (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uses: Option<u32>,
    /// Seconds the code stays valid (default 7 days).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u64>,
}

/// `POST /api/rooms`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewRoom<S = String> {
    /// Room id.
    pub room: S,
    /// Title; the room id when absent.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub title: Option<S>,
    /// `public` (when absent) or `private`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub visibility: Option<S>,
}

/// `POST /api/rooms/{room}/messages`; a missing field is refused like an
/// empty one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NewMessage<S = String> {
    /// Text.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<S>,
    /// Idempotency key.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<S>,
    /// The seq of the message of the same room this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<u64>,
    /// Ids of files uploaded to the same room, sent with the message.
    #[serde(default = "Vec::new", skip_serializing_if = "Vec::is_empty")]
    pub attachments: Vec<S>,
}

/// `PATCH /api/rooms/{room}/messages/{seq}`: the new text.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EditMessage<S = String> {
    /// Text.
    pub body: S,
}

/// `PATCH /api/rooms/{room}`: what the owner changes (at least one).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct RoomSettings<S = String> {
    /// A new title.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub title: Option<S>,
    /// Days messages are kept (0: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub retention_days: Option<u32>,
}

/// `POST /api/rooms/{room}/invite`, `kick`, `ban`, `unban`, `unmute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserTarget<S = String> {
    /// Whom the action is for.
    pub username: S,
}

/// `POST /api/rooms/{room}/role`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoleChange<S = String> {
    /// The member.
    pub username: S,
    /// `owner`, `moderator` or `member`.
    pub role: S,
}

/// `POST /api/rooms/{room}/mute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Mute<S = String> {
    /// The member.
    pub username: S,
    /// For how long (1 to 31536000).
    pub seconds: u64,
}

/// `POST /api/rooms/{room}/read`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMarker {
    /// The highest seq read.
    pub seq: u64,
}
