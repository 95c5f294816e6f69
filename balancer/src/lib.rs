//! Palaver's balancer: one public address in front of the nodes.
//!
//! Each new client connection gets a node, chosen by a strategy
//! (`round-robin`, smooth `weighted`, `least-connections`) among the nodes
//! that are up and not draining; then the balancer relays bytes both ways
//! and parses nothing more. `GET /assign` on the same address is answered
//! directly with a node's URL, for clients that connect to nodes
//! themselves. Nodes come from the configuration and from the cluster's
//! own member list; active health checks with hysteresis and passive
//! checks on failed connects (retried on another node, invisible to the
//! client) keep dead and draining nodes out.
//!
//! # Layout
//! Pure parts first, I/O on top:
//! - [`select`]: the strategies, a small [`select::Select`] trait over
//!   [`select::Candidate`]s. No I/O.
//! - [`health`]: hysteresis over consecutive check results, and what a
//!   `/healthz` answer means. No I/O.
//! - [`table`]: the node table (health, draining, counts) and the one
//!   strategy instance. No I/O.
//! - `probe`, `monitor`: HTTP checks of the nodes and the member list.
//! - [`proxy`]: the PROXY protocol v2 header a node gets before a relayed
//!   client's bytes, naming the client's address. No I/O.
//! - `per_address`: open connections per client address, capped.
//! - `relay`, `assign`: the byte pipe, and the first-bytes switch.
//! - `server`, `admin`, `meters`: [`run`], the operations endpoints and
//!   Prometheus metrics.
//! - [`tls`]: TLS on the public address, reloaded on SIGHUP: rustls'
//!   handshake, then the balancer's own record layer (pure) and TLS relay.
//! - [`config`]: [`BalancerSettings`] from the cluster file.
//! - [`ready`]: the line printed once the balancer listens, and its reading.
//!
//! The balancer does not know the chat protocol, users or rooms.

mod admin;
mod assign;
pub mod config;
pub mod health;
mod meters;
mod monitor;
mod per_address;
mod probe;
pub mod proxy;
pub mod ready;
mod relay;
pub mod select;
mod server;
pub mod table;
pub mod tls;

pub use config::Backend;
pub use config::BalancerSettings;
pub use config::ConfigError;
pub use config::OpsToken;
pub use config::Strategy;
pub use server::BalancerError;
pub use server::bind;
pub use server::run;
pub use tls::TlsFiles;
