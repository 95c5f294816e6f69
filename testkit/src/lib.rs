//! `palaver-testkit` (dev only): what the integration tests and the load
//! benches need to run real Palaver nodes on 127.0.0.1.
//!
//! # Layout
//! - [`config`]: the test defaults of a node's config, and cluster files
//!   written from `palaver_node::config` types (never by hand).
//! - [`ports`]: the one way free ports are picked.
//! - [`process`]: one `palaver node` process: start, ready line, kill, stop,
//!   pause, resume, its last lines of output.
//! - [`node`]: a one-node server on a free port, with client helpers.
//! - [`cluster`]: a cluster of node processes from a builder, and the one
//!   cluster a test binary may share.
//! - [`balancer`]: the balancer running inside the test process.
//! - [`recorder`]: what a resilient client's events showed.
//! - [`wait`]: polling for conditions, and the assertions tests share.
//!
//! The kit knows how to start and watch processes and which files they
//! read; it does not know what any test asserts, and speaks the chat
//! protocol only through `palaver-client` (register, log in, connect).

pub mod balancer;
pub mod cluster;
pub mod config;
pub mod node;
pub mod ports;
pub mod process;
pub mod public_tls;
pub mod recorder;
pub mod wait;

pub use balancer::Balancer;
pub use cluster::Cluster;
pub use cluster::SharedCluster;
pub use config::ALLOWED_ORIGIN;
pub use config::ClusterFile;
pub use config::TEST_OPS_TOKEN;
pub use config::config;
pub use config::test_config;
pub use node::Node;
pub use node::User;
pub use process::Launch;
pub use process::NodeProcess;
pub use process::Readiness;
pub use process::Role;
pub use public_tls::PublicCert;
pub use public_tls::public_cert;
pub use recorder::Recorder;
pub use wait::WAIT;
pub use wait::code_of;
pub use wait::eventually;
pub use wait::expect_close;
pub use wait::expect_code;
pub use wait::now_ms;
