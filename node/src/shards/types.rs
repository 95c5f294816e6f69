//! What a room-log shard's Raft log carries and answers: batches of room
//! operations, with the leader's clock, and one result per operation.
//!
//! A batch is one log entry, so one Raft round (and one fsync, shared with
//! every other group's appends) carries many sends. Seqs are not in the
//! entry: the state machine assigns them as it applies, so they are gapless
//! and identical on every replica by construction.

use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use super::placement::ShardId;
use crate::raft::PeerNode;
use crate::rooms::attachments::AttachmentId;
use crate::rooms::attachments::Sha;

openraft::declare_raft_types!(
    /// The openraft types of a room-log shard: entries are [`ShardBatch`]es,
    /// answers [`ShardResults`], nodes are `u64` ids with a [`PeerNode`] each.
    pub ShardTypes:
        D = ShardBatch,
        R = ShardResults,
        NodeId = u64,
        Node = PeerNode,
);

/// A log id of a shard.
pub type LogId = openraft::type_config::alias::LogIdOf<ShardTypes>;
/// A shard's membership with the log id that set it.
pub type StoredMembership = openraft::type_config::alias::StoredMembershipOf<ShardTypes>;
/// What a shard snapshot covers.
pub type SnapshotMeta = openraft::type_config::alias::SnapshotMetaOf<ShardTypes>;
/// A log entry of a shard.
pub type Entry = openraft::type_config::alias::EntryOf<ShardTypes>;
/// A vote of a shard.
pub type Vote = openraft::type_config::alias::VoteOf<ShardTypes>;

/// One operation on a room's log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ShardOp {
    /// Store a message (checked by the leader before it was proposed).
    Send {
        /// The room's log key.
        room_key: u64,
        /// The room's id (for the events this publishes).
        room: String,
        /// The sender.
        from: String,
        /// The text.
        body: String,
        /// The sender's idempotency key.
        client_id: String,
    },
    /// Remove a message's body.
    Delete {
        /// The room's log key.
        room_key: u64,
        /// The room's id (for the event this publishes).
        room: String,
        /// The message.
        seq: u64,
        /// Who deletes it.
        actor: String,
        /// Whether the actor may delete other people's messages.
        moderator: bool,
    },
    /// Forget a deleted room's log.
    Drop {
        /// The room's log key.
        room_key: u64,
    },
    /// Store a message that may answer another; what every send is since
    /// replies (`Send` stays for the entries written before).
    Post {
        /// The room's log key.
        room_key: u64,
        /// The room's id (for the events this publishes).
        room: String,
        /// The sender.
        from: String,
        /// The text.
        body: String,
        /// The sender's idempotency key.
        client_id: String,
        /// The message of the same room it answers; must exist.
        reply_to: Option<u64>,
    },
    /// Change a message's text: its sender only, not once deleted.
    Edit {
        /// The room's log key.
        room_key: u64,
        /// The room's id (for the event this publishes).
        room: String,
        /// The message.
        seq: u64,
        /// Who edits it.
        actor: String,
        /// The new text.
        body: String,
    },
    /// Add or take back an emoji on a message.
    React {
        /// The room's log key.
        room_key: u64,
        /// The room's id (for the event this publishes).
        room: String,
        /// The message.
        seq: u64,
        /// Who reacts.
        actor: String,
        /// The emoji (checked where the command arrived).
        emoji: String,
        /// Add (true) or take back (false).
        on: bool,
    },
    /// Record a file uploaded to a room (its bytes are on the shard's
    /// replicas already); the same upload again changes nothing.
    Attach {
        /// The room's log key.
        room_key: u64,
        /// The room's id.
        room: String,
        /// The attachment's id in the room.
        id: AttachmentId,
        /// The content's SHA-256.
        sha: Sha,
        /// File name (cleaned where the upload arrived).
        name: String,
        /// Media type (checked where the upload arrived).
        mime: String,
        /// Bytes.
        size: u64,
        /// Who uploaded it.
        uploader: String,
    },
    /// Store a message that carries attachments of its room (a `Post` with
    /// them; `Post` keeps its encoding for the entries written before).
    PostWith {
        /// The room's log key.
        room_key: u64,
        /// The room's id (for the events this publishes).
        room: String,
        /// The sender.
        from: String,
        /// The text.
        body: String,
        /// The sender's idempotency key.
        client_id: String,
        /// The message of the same room it answers; must exist.
        reply_to: Option<u64>,
        /// Attachment ids of the room, each recorded by an `Attach` before.
        attachments: Vec<AttachmentId>,
    },
    /// Remove the room's oldest messages sent before `before_ts` (its
    /// retention), at most [`MAX_EXPIRE`] in one op; the seqs of what
    /// remains do not change.
    Expire {
        /// The room's log key.
        room_key: u64,
        /// The room's id.
        room: String,
        /// Messages with an older `ts` go.
        before_ts: u64,
    },
}

/// Most messages one [`ShardOp::Expire`] removes (the next removes more).
pub const MAX_EXPIRE: usize = 5_000;

impl ShardOp {
    /// The room the operation is on, if it names one (a drop has only the key).
    pub fn room(&self) -> Option<&str> {
        match self {
            ShardOp::Send { room, .. }
            | ShardOp::Post { room, .. }
            | ShardOp::Delete { room, .. }
            | ShardOp::Edit { room, .. }
            | ShardOp::React { room, .. }
            | ShardOp::Attach { room, .. }
            | ShardOp::PostWith { room, .. }
            | ShardOp::Expire { room, .. } => Some(room),
            ShardOp::Drop { .. } => None,
        }
    }
}

/// A batch of operations: one log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardBatch {
    /// The shard it belongs to (a replica refuses another shard's entry).
    pub shard: ShardId,
    /// The leader's clock when it made the batch: every message of the
    /// batch gets this `ts`, on every replica.
    pub ts: u64,
    /// The operations, applied in order.
    pub ops: Vec<ShardOp>,
}

impl fmt::Display for ShardBatch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shard {} batch of {} at {}", self.shard, self.ops.len(), self.ts)
    }
}

/// The outcome of one operation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum OpResult {
    /// A new message at this seq.
    Stored {
        /// Its seq.
        seq: u64,
        /// Its timestamp.
        ts: u64,
    },
    /// The same (sender, client_id) was stored before, at this seq.
    Duplicate {
        /// The original seq.
        seq: u64,
        /// The original timestamp.
        ts: u64,
    },
    /// The body is gone; the message was sent by this user.
    Deleted {
        /// The sender.
        sender: String,
    },
    /// No such message.
    NotFound,
    /// Not the sender, and not a moderator.
    Forbidden,
    /// The room's log was dropped.
    Dropped,
    /// The entry was not a batch (blank or membership) or belonged to
    /// another shard: nothing was done.
    Nothing,
    /// The text changed; the message as it is now, and its text before.
    Edited {
        /// The message now.
        message: Box<crate::rooms::Message>,
        /// The text it replaced.
        old_body: String,
    },
    /// The reaction is there (or gone) now; `changed` unless it already was.
    Reacted {
        /// Whether this operation changed anything.
        changed: bool,
    },
    /// `reply_to` names no message of the room.
    NoSuchReply,
    /// The message has as many different emoji as it may have.
    TooManyReactions,
    /// The attachment is recorded.
    Attached,
    /// An attachment named by a send is not one of the room's.
    NoSuchAttachment,
    /// Messages removed by retention.
    Expired {
        /// How many.
        count: u64,
        /// The newest seq removed (0: none).
        through_seq: u64,
    },
}

/// One result per operation of the batch, in order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardResults(pub Vec<OpResult>);
