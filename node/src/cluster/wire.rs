//! Everything nodes say to each other, as serde types encoded with postcard.
//! Decoding treats the bytes as untrusted: the transport caps frame sizes
//! before anything is allocated, and a value that does not decode is an error
//! answered to the peer, never a panic.

use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::meta::MetaReply;
use crate::meta::MetaRequest;
use crate::raft::TypeConfig;
use crate::raft::types::SnapshotMeta;
use crate::raft::types::Vote;
use crate::rooms::Appended;
use crate::rooms::Record;

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

/// What an owner sends a replica on its ordered room stream.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RoomBatch {
    /// The owner's batch id (acknowledged by id).
    pub id: u64,
    /// Records to store, in order.
    pub records: Vec<Record>,
    /// Rooms whose committed seq rose: (room key, room id, seq, the owner's
    /// epoch). A replica ignores a notice from an epoch that is over.
    pub commits: Vec<(u64, String, u64, u64)>,
}

/// A replica's answer on the room stream.
#[derive(Debug, Serialize, Deserialize)]
pub enum RoomAck {
    /// Batch `id` is durable here.
    Stored(u64),
    /// Batch `id` was refused (gap not fillable, stale epoch): the owner
    /// does not count it.
    Refused(u64, String),
}

/// Requests about rooms, one per stream.
#[derive(Debug, Serialize, Deserialize)]
pub enum RoomCall {
    /// Delete a message's body (answered with the sender's name).
    Delete(ForwardedDelete),
    /// The room's committed seq on its owner (a node answering a read
    /// waits until its own copy has it).
    Committed {
        /// Room key.
        room_key: u64,
    },
    /// The last seq this node stores for a room (a new owner recovering it).
    Tail {
        /// Room key.
        room_key: u64,
    },
    /// Records `from..=to` of a room (a replica filling a gap).
    Fetch {
        /// Room key.
        room_key: u64,
        /// Room id.
        room: String,
        /// First seq.
        from: u64,
        /// Last seq.
        to: u64,
    },
}

/// The answer to a [`RoomCall`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RoomAnswer {
    /// The records asked for (possibly fewer, from the start).
    Records(Vec<Record>),
    /// A deletion was done: the message's sender.
    Deleted(String),
    /// The committed seq asked for.
    Committed(u64),
    /// The last seq stored here and the epoch it was written under, the
    /// committed seq, and the room's owner and epoch as this node's
    /// metadata has them.
    Tail {
        /// Last stored seq.
        seq: u64,
        /// The owner epoch of the last stored record (0: none).
        last_epoch: u64,
        /// The highest seq known committed here.
        committed: u64,
        /// Owner node.
        owner: u64,
        /// Owner epoch.
        epoch: u64,
    },
    /// Refused: protocol code and text.
    Refused(String, String),
}

/// A message deletion forwarded to the room's owner.
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

/// A send forwarded to the room's owner on an ordered stream.
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
    /// The forwarding node's applied Raft index: an owner that does not know
    /// the room yet waits until it has applied that far.
    pub applied: u64,
}

/// The owner's answer to a [`ForwardedSend`].
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
}

/// Encodes a message.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    // Plain data structs encode infallibly into a Vec.
    postcard::to_stdvec(value).unwrap_or_default()
}

/// Decodes a message from a peer.
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, String> {
    postcard::from_bytes(bytes).map_err(|e| format!("undecodable peer message: {e}"))
}
