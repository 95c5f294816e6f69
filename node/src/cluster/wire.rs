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
}

/// The answer to a [`RoomCall`].
#[derive(Debug, Serialize, Deserialize)]
pub enum RoomAnswer {
    /// A deletion was done: the message's sender.
    Deleted(String),
    /// Refused: protocol code and text.
    Refused(String, String),
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
