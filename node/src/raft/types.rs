//! The openraft type configuration, the peer address record, and the
//! postcard encoding of everything the Raft layer stores.

use std::fmt;
use std::io;

use serde::Deserialize;
use serde::Serialize;
use serde::de::DeserializeOwned;

use crate::meta::MetaReply;
use crate::meta::MetaRequest;
use crate::storage::StorageError;

/// How a cluster member is reached.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PeerNode {
    /// The address clients (HTTP, WebSocket) use.
    pub client_addr: String,
    /// The address other nodes use (QUIC).
    pub peer_addr: String,
}

impl fmt::Display for PeerNode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{{client: {}, peer: {}}}", self.client_addr, self.peer_addr)
    }
}

openraft::declare_raft_types!(
    /// The openraft types of the metadata group: commands are [`MetaRequest`]s,
    /// answers [`MetaReply`]s, nodes are `u64` ids with a [`PeerNode`] each.
    /// Everything else (terms, leader ids, entries, the tokio runtime) is
    /// openraft's default.
    pub TypeConfig:
        D = MetaRequest,
        R = MetaReply,
        NodeId = u64,
        Node = PeerNode,
);

/// The metadata Raft instance.
pub type MetaRaft = openraft::Raft<TypeConfig, super::MetaStateMachine>;

/// What a snapshot is made of on the wire and on disk: postcard bytes (see
/// [`super::state_machine`] for the layout), so a network can ship it as is.
pub type SnapshotData = Vec<u8>;

/// The committed form of a leader id (what a log id carries).
pub type CommittedLeaderId =
    <<TypeConfig as openraft::RaftTypeConfig>::LeaderId as openraft::vote::RaftLeaderId>::Committed;
/// A log entry of the metadata group.
pub type Entry = <TypeConfig as openraft::RaftTypeConfig>::Entry;
/// A log id (leader and index) of the metadata group.
pub type LogId = openraft::LogId<CommittedLeaderId>;
/// A vote of the metadata group.
pub type Vote = <TypeConfig as openraft::RaftTypeConfig>::Vote;
/// A membership config together with the log id that set it.
pub type StoredMembership = openraft::StoredMembership<CommittedLeaderId, u64, PeerNode>;
/// Snapshot metadata (last included log id and membership).
pub type SnapshotMeta = openraft::SnapshotMeta<CommittedLeaderId, u64, PeerNode>;
/// A snapshot with its data.
pub type Snapshot = openraft::Snapshot<CommittedLeaderId, u64, PeerNode, SnapshotData>;

/// Encodes a stored value with postcard.
pub(crate) fn encode<T: Serialize + ?Sized>(what: &'static str, value: &T) -> io::Result<Vec<u8>> {
    postcard::to_stdvec(value)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, format!("cannot encode {what}: {e}")))
}

/// Decodes a stored (or received) value; a damaged value is an error, never a panic.
pub(crate) fn decode<T: DeserializeOwned>(tree: &'static str, bytes: &[u8]) -> io::Result<T> {
    postcard::from_bytes(bytes)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, StorageError::Corrupt { tree, message: e.to_string() }))
}

/// A storage engine failure as the `io::Error` openraft's traits speak.
pub(crate) fn io_err(e: StorageError) -> io::Error {
    io::Error::other(e)
}

/// Runs a blocking storage call off the async worker threads.
pub(crate) async fn blocking<T, F>(f: F) -> io::Result<T>
where
    F: FnOnce() -> io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| io::Error::other(format!("storage task failed: {e}")))?
}
