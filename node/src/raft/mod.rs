//! Cluster metadata through openraft: the type configuration, the Raft log
//! and state machine on the [`crate::storage::Engine`] trait, snapshots, and
//! [`Consensus`], the handle the rest of the node uses.
//!
//! # Layout
//! - [`types`]: [`TypeConfig`], [`PeerNode`], the storage encoding (postcard).
//! - [`log_store`]: [`LogStore`], any group's log and vote in its [`Space`] of
//!   the store (the metadata group: trees `raft_log` and `raft_state`), and
//!   the [`crate::storage::WriteThread`] all groups share.
//! - [`state_machine`]: [`MetaStateMachine`], applying
//!   [`crate::meta::MetaRequest`]s to [`crate::meta::MetaState`]; snapshots in
//!   tree `raft_snapshot`.
//! - [`network`]: the network plug point ([`PeerNetwork`]) and [`NoPeers`],
//!   the network of a node alone (in a cluster, `cluster::raft_net` is QUIC).
//! - [`handle`]: [`Consensus`], [`RaftSettings`], [`ConsensusError`].
//!
//! # Restart recovery
//! Everything lives in one store (the node's `raft.db`). On start openraft
//! reads the vote, the log bounds and the saved committed log id; the state
//! machine loads the latest snapshot (state, last applied, membership); the
//! log from the snapshot up to the committed index is re-applied; then the
//! node resumes as a follower and the group elects a leader as usual.

pub mod handle;
pub mod log_store;
pub mod network;
mod recent;
pub mod state_machine;
pub mod types;

#[cfg(test)]
mod tests;

pub use handle::Consensus;
pub use handle::ConsensusError;
pub use handle::ConsensusMetrics;
pub use handle::RaftSettings;
pub use handle::StartError;
pub use handle::Timing;
pub use log_store::LogStore;
pub use log_store::Space;
pub use network::NoPeers;
pub use network::PeerNetwork;
pub use state_machine::EffectSink;
pub use state_machine::MetaStateMachine;
pub use types::MetaRaft;
pub use types::PeerNode;
pub use types::SnapshotData;

/// How long an AppendEntries may take before it counts as failed.
/// openraft gives replication the heartbeat interval (150 ms), but a loaded
/// follower that answers in 200 ms is not gone, and failing its appends
/// restarts replication with a backoff: under load every commit stalls for
/// seconds. Heartbeats keep openraft's own 150 ms bound.
pub const APPEND_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);
pub use types::TypeConfig;
