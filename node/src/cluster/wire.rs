//! Everything nodes say to each other, as serde types encoded with postcard.
//! Decoding treats the bytes as untrusted: the transport caps frame sizes
//! before anything is allocated, and a value that does not decode is an error
//! answered to the peer, never a panic.

use serde::Deserialize;
use serde::Serialize;

use crate::meta::MetaReply;
use crate::meta::MetaRequest;
use crate::raft::TypeConfig;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::Vote;
use crate::rooms::Appended;
use crate::rooms::Message;
use crate::rooms::attachments::AttachmentId;
use crate::rooms::attachments::Sha;
use crate::rooms::attachments::StoredAttachment;

/// A Raft RPC or a metadata write forwarded to the leader.
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftCall {
    /// AppendEntries.
    Append(openraft::raft::AppendEntriesRequest<TypeConfig>),
    /// RequestVote.
    Vote(openraft::raft::VoteRequest<TypeConfig>),
    /// Pre-vote.
    PreVote(openraft::raft::VoteRequest<TypeConfig>),
    /// A whole snapshot.
    Snapshot {
        /// The leader's vote.
        vote: Vote,
        /// What the snapshot covers.
        meta: SnapshotMeta,
        /// The state machine bytes.
        data: Vec<u8>,
    },
    /// A metadata write proposed on a follower.
    Forward(MetaRequest),
    /// A follower catching up before it answers from its metadata: the
    /// leader answers its ReadIndex.
    ReadIndex,
    /// A node that answered a write revoking access waits until every peer
    /// has applied the log this far (or a timeout), so no node grants what
    /// was revoked after the answer.
    AwaitApplied(u64),
    /// The leader hands leadership to the node named in the request.
    TransferLeader(openraft::raft::TransferLeaderRequest<TypeConfig>),
}

/// The answer to a [`RaftCall`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RaftAnswer {
    /// To Append.
    Append(openraft::raft::AppendEntriesResponse<TypeConfig>),
    /// To Vote or PreVote.
    Vote(openraft::raft::VoteResponse<TypeConfig>),
    /// To Snapshot.
    Snapshot(openraft::raft::SnapshotResponse<TypeConfig>),
    /// To Forward: the reply and the log index it was applied at, so the
    /// forwarding node can wait until it has applied that far itself.
    Forwarded {
        /// The state machine's reply.
        reply: MetaReply,
        /// Log index of the entry.
        index: u64,
    },
    /// To ReadIndex: the log index a read must have applied.
    ReadIndex(u64),
    /// To AwaitApplied: this node has applied the log that far.
    Applied,
    /// To TransferLeader.
    Transferred,
    /// Not the leader (any more); the caller retries with the one named.
    NotLeader(Option<u64>),
    /// Raft refused the call.
    Refused(String),
}

/// Requests about rooms, one per stream.
#[derive(Debug, Serialize, Deserialize)]
pub enum RoomCall {
    /// Delete a message's body on the leader of the room's shard (answered
    /// with the sender's name).
    Delete(ForwardedDelete),
    /// Read a room's log on a replica of its shard.
    Read(RoomRead),
    /// Edit or react to a message on the leader of the room's shard.
    Change(ForwardedChange),
    /// Record an uploaded file on the leader of the room's shard.
    Attach(ForwardedAttach),
}

/// The answer to a [`RoomCall`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RoomAnswer {
    /// A deletion was done: the message's sender.
    Deleted(String),
    /// To [`RoomRead::LastSeqs`]: each room's last seq, in the asked order.
    LastSeqs(Vec<u64>),
    /// To a page read: the messages, ascending.
    Messages(Vec<Message>),
    /// Refused: protocol code and text.
    Refused(String, String),
    /// To a [`RoomCall::Change`]: what it did.
    Changed(ChangeDone),
    /// To a [`RoomCall::Attach`]: recorded.
    Attached,
    /// To [`RoomRead::Attachment`]: the row, if the room has it.
    Attachment(Option<StoredAttachment>),
    /// To [`RoomRead::Search`]: (room key, message), newest first.
    Found(Vec<(u64, Message)>),
}

/// An upload forwarded to the leader of the room's shard once its file is
/// on the shard's replicas.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedAttach {
    /// Who uploaded it.
    pub uploader: String,
    /// Room id.
    pub room: String,
    /// The attachment's id in the room.
    pub id: AttachmentId,
    /// The content's SHA-256.
    pub sha: Sha,
    /// File name.
    pub name: String,
    /// Media type.
    pub mime: String,
    /// Bytes.
    pub size: u64,
    /// The forwarding node's applied Raft index (see [`ForwardedSend`]).
    pub applied: u64,
}

/// What a stream of kind [`crate::service::STREAM_FILE_PUT`] carries first:
/// the content whose bytes follow (in frames, then an empty frame).
#[derive(Debug, Serialize, Deserialize)]
pub struct FileHeader {
    /// The content's SHA-256 (the receiver checks it).
    pub sha: Sha,
    /// Bytes that follow.
    pub size: u64,
}

/// A change to a message, as a node forwards it to the leader of the
/// room's shard (which decides the actor's standing again).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum MessageChange {
    /// New text (the sender only).
    Edit {
        /// The text.
        body: String,
    },
    /// Add (`on`) or take back an emoji.
    React {
        /// The emoji.
        emoji: String,
        /// Add or take back.
        on: bool,
    },
}

/// What a [`MessageChange`] did.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub enum ChangeDone {
    /// The message after an edit, and the text it replaced.
    Edited {
        /// The message now.
        message: Message,
        /// The text before.
        old_body: String,
    },
    /// A reaction is in place (or gone).
    Reacted,
}

/// A [`MessageChange`] forwarded to the leader of the room's shard.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedChange {
    /// Who changes the message.
    pub actor: String,
    /// Room id.
    pub room: String,
    /// The message.
    pub seq: u64,
    /// The change.
    pub change: MessageChange,
    /// The forwarding node's applied Raft index (see [`ForwardedSend`]).
    pub applied: u64,
}

/// A read of room logs on a replica of their shard, for a node that holds
/// none. The replica first catches up to its shard leader's commit index
/// when `fresh` is set, or when it has not applied `up_to` yet.
#[derive(Debug, Serialize, Deserialize)]
pub enum RoomRead {
    /// The last seq of each room (all on the shard the replica holds).
    LastSeqs {
        /// Room ids and keys.
        rooms: Vec<(String, u64)>,
        /// Answer as of the leader's commit index.
        fresh: bool,
    },
    /// Up to `limit` messages after `after`.
    After {
        /// Room id.
        room: String,
        /// Room key.
        room_key: u64,
        /// The seq before the first one answered.
        after: u64,
        /// Most messages answered.
        limit: u32,
        /// The caller knows the room reached this seq.
        up_to: u64,
        /// Answer as of the leader's commit index.
        fresh: bool,
    },
    /// Up to `limit` messages before `before`, ascending.
    Before {
        /// Room id.
        room: String,
        /// Room key.
        room_key: u64,
        /// The seq after the last one answered.
        before: u64,
        /// Most messages answered.
        limit: u32,
    },
    /// An attachment's row (after a catch-up when this replica has none).
    Attachment {
        /// Room id.
        room: String,
        /// Room key.
        room_key: u64,
        /// The attachment's id.
        id: AttachmentId,
    },
    /// The newest messages of these rooms (all on one shard held by the
    /// replica) holding every word, as of the leader's commit index.
    Search {
        /// Room ids and keys.
        rooms: Vec<(String, u64)>,
        /// The words, as the index splits them.
        words: Vec<String>,
        /// Most messages answered.
        limit: u32,
    },
}

/// A message deletion forwarded to the leader of the room's shard.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedDelete {
    /// Who deletes.
    pub actor: String,
    /// Room id.
    pub room: String,
    /// The message.
    pub seq: u64,
    /// The forwarding node's applied Raft index (see [`ForwardedSend`]).
    pub applied: u64,
}

/// A send forwarded to the leader of the room's shard on an ordered stream.
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedSend {
    /// Correlates the answer.
    pub id: u64,
    /// The sender (checked by the forwarding node).
    pub from: String,
    /// Room id.
    pub room: String,
    /// Text.
    pub body: String,
    /// Idempotency key.
    pub client_id: String,
    /// The forwarding node's applied metadata index: the leader checks the
    /// send against metadata at least that new.
    pub applied: u64,
    /// Forwarded once already, by a replica that learned the leader had
    /// moved: it is not forwarded again.
    pub relayed: bool,
    /// The message of the same room it answers.
    pub reply_to: Option<u64>,
    /// Attachments of the room it carries.
    pub attachments: Vec<AttachmentId>,
}

/// The shard leader's answer to a [`ForwardedSend`].
#[derive(Debug, Serialize, Deserialize)]
pub struct ForwardedAnswer {
    /// The send's id.
    pub id: u64,
    /// Seq and ts, or the protocol code and text of the refusal.
    pub result: Result<Appended, (String, String)>,
}

/// Gossip between nodes: presence, typing, load.
#[derive(Debug, Serialize, Deserialize)]
pub enum Gossip {
    /// Every user with a live connection on the sending node.
    Presence {
        /// Sorted usernames.
        online: Vec<String>,
        /// Open client connections on the node.
        connections: u64,
    },
    /// What this node admitted since its last report, per user (or per
    /// account, for failed logins), so per-user limits hold cluster-wide.
    Usage {
        /// (what, whose, how many).
        counts: Vec<(crate::ratelimit::Usage, String, u32)>,
    },
    /// Someone is typing in a room.
    Typing {
        /// Room key.
        room_key: u64,
        /// Room id.
        room: String,
        /// Who.
        username: String,
    },
    /// The shards the sending node leads now, so nodes that hold no
    /// replica of a shard know where to send its rooms' writes.
    Leading {
        /// Shard ids.
        shards: Vec<u32>,
    },
}

/// What a node that holds no replica of a room's shard asks a replica, on
/// a relay stream.
#[derive(Debug, Serialize, Deserialize)]
pub enum RelayAsk {
    /// Send the room's committed events from now on; with `since`, first
    /// every message after it.
    Watch {
        /// Room id.
        room: String,
        /// Room key.
        room_key: u64,
        /// The last seq the asking node has.
        since: Option<u64>,
    },
    /// Stop sending the room's events.
    Unwatch {
        /// Room key.
        room_key: u64,
    },
}

/// What a replica sends on a relay stream, in commit order per room.
#[derive(Debug, Serialize, Deserialize)]
pub enum RelayItem {
    /// The watch is in place: every message after `last` follows.
    Watching {
        /// Room key.
        room_key: u64,
        /// The room's last seq when the watch began (or `since`, if higher).
        last: u64,
    },
    /// A committed message (`seq` > 0), a deletion or a typing notice
    /// (`seq` 0), as its event.
    Event {
        /// Room key.
        room_key: u64,
        /// The message's seq, 0 for other events.
        seq: u64,
        /// The event's JSON text.
        json: String,
        /// A user who must not receive it (the one typing).
        except: Option<String>,
    },
    /// This node holds no replica of the room's shard (any more).
    Refused {
        /// Room key.
        room_key: u64,
    },
}
