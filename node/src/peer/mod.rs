//! The node-to-node transport: QUIC (quinn) with mutual TLS under the
//! cluster's CA. Raft RPCs, room replication and gossip all travel on it.
//!
//! # Connections
//! One outgoing connection per peer, dialled lazily on first use, cached,
//! reused, and dialled again once it closed (a peer restarted). Concurrent
//! first uses wait on a per-peer async mutex and share one dial. Two nodes
//! dialling each other at once end up with two connections, one per
//! direction: each side sends only on its own outgoing connection and
//! serves whatever it accepted.
//!
//! # Identity
//! TLS 1.3 with certificates of the cluster CA on both sides ([`tls`]). The
//! dialler asks for the server name `node-<id>.palaver` of the node it
//! means; the accepter requires a client certificate chaining to the CA.
//! The dialler's first stream is a hello on a bi-stream,
//! `"PLVR" 0x01 <node id: u64 BE>`; the accepter checks that the
//! certificate names that node id, answers one byte `0`, and only then
//! serves further streams, so handlers see an authenticated `from`. The
//! dialler publishes the connection only after that answer, so a refused
//! certificate or id fails the dial ([`PeerError::Unreachable`] with the
//! reason), not some later request. A node key also derives the QUIC stateless
//! reset key, so a restarted node resets the connections of its previous
//! run and peers re-dial at once rather than after the idle timeout.
//!
//! # Streams
//! Every bi-stream starts with one byte: the [`Channel`], with the top bit
//! (0x80) set for a long-lived stream. Then length-prefixed frames
//! ([`frame`]: `u32` BE length + bytes, checked against `max_frame` before
//! anything is allocated).
//! - Request: the dialler writes one frame and finishes; the accepter
//!   answers one frame `[0 | 1] + bytes` (0: ok, 1: the handler's error
//!   text), finishes, and waits until the dialler has it.
//! - Long-lived stream: after the channel byte the handler owns both halves.

pub mod codec;
pub mod frame;
pub mod tls;
pub mod transport;

#[cfg(test)]
mod tests;

pub use frame::DEFAULT_MAX_FRAME;
pub use frame::FrameError;
pub use frame::read_frame;
pub use frame::write_frame;
pub use frame::write_frame_parts;
pub use tls::CertPaths;
pub use tls::ClusterCa;
pub use tls::NodeIdentity;
pub use tls::TlsError;
pub use tls::cert_paths;
pub use tls::ensure_cluster_certs;
pub use tls::generate_cluster;
pub use tls::load_identity;
pub use transport::Channel;
pub use transport::PeerEndpoint;
pub use transport::PeerError;
pub use transport::PeerHandler;
pub use transport::PeerSettings;
