//! One Palaver node: the client API (HTTP, WebSocket, SSE, long polling),
//! cluster metadata applied through openraft, room logs, and storage.
//!
//! The client wire format (shapes, names, codes) is `palaver_protocol`'s;
//! [`protocol`] only encodes it.
//!
//! # Layout
//! - [`permissions`]: who may do what in a room (pure).
//! - [`meta`]: the metadata state machine (pure, deterministic).
//! - [`storage`]: the engine trait and its redb and sled engines.
//! - [`ready`]: the line a node prints once it serves, and its reading.

pub mod api;
pub mod auth;
mod background;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod error;
pub mod hub;
pub mod meta;
pub mod peer;
pub mod permissions;
pub mod protocol;
pub mod raft;
pub mod ratelimit;
pub mod ready;
pub mod rooms;
pub mod search;
pub mod service;
pub mod shards;
pub mod storage;
