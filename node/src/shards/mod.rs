//! Room logs on Raft shards (issue [4/6], being built): a fixed number of
//! shards, each a Raft group on `rf` of the cluster's nodes.
//!
//! # Layout
//! - [`placement`]: a room's shard, a shard's replicas, balanced leaders (pure).
//! - [`plan`]: a shard leader's next step toward the layout (pure).
//! - [`types`]: what a shard's log carries ([`types::ShardBatch`]) and answers.
//! - [`machine`]: the state machine: room logs applied from the shard's log.
//! - [`snapshot`]: snapshots as files, built and installed as streams.
//! - [`network`]: shard RPCs and snapshot streams over QUIC.
//! - [`host`]: the groups this node takes part in: open, serve, close.
//! - [`quiet`]: idle shards stop their timers, watched by beacons (pure).
//! - [`discard`]: removing the copy of a shard this node no longer holds.
//! - [`indexing`]: what a shard gives the node's search index.
//!
//! The logs themselves live in the node's Raft store next to the metadata
//! group's ([`crate::raft::LogStore`] in a [`crate::raft::Space::shard`]).

pub mod discard;
pub mod host;
pub mod indexing;
pub mod machine;
pub mod network;
pub mod placement;
pub mod plan;
pub mod quiet;
pub mod snapshot;
pub mod types;

#[cfg(test)]
mod tests;
