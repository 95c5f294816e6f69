//! The line a node prints on standard output once it serves clients, and
//! how to read it back: whoever starts a node (the `palaver up` launcher,
//! the test kit, the load benches) learns from it that the node is ready
//! and which address it bound (`--listen 127.0.0.1:0` picks a free port).
//!
//! Only the text lives here; this module knows nothing of processes or pipes.

use std::net::SocketAddr;

/// What comes before the node id on a ready line.
const PREFIX: &str = "palaver node ";
/// What comes between the node id and the address.
const MARKER: &str = " ready: http://";

/// The ready line of node `id` serving clients on `addr`.
pub fn ready_line(id: u64, addr: SocketAddr) -> String {
    format!("{PREFIX}{id}{MARKER}{addr} (WebSocket ws://{addr}/ws)")
}

/// A ready line, read back.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Ready {
    /// The node's id.
    pub id: u64,
    /// The address it serves clients on.
    pub addr: SocketAddr,
}

/// The node id and client address on `line`, if it is a ready line.
pub fn parse_ready_line(line: &str) -> Option<Ready> {
    let (id, rest) = line.trim_end().strip_prefix(PREFIX)?.split_once(MARKER)?;
    let addr = rest.split_whitespace().next()?.parse().ok()?;
    Some(Ready { id: id.parse().ok()?, addr })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_line_reads_back() {
        for addr in ["127.0.0.1:7101", "[::1]:80"] {
            let addr: SocketAddr = addr.parse().expect("addr");
            assert_eq!(parse_ready_line(&ready_line(3, addr)), Some(Ready { id: 3, addr }));
        }
    }

    #[test]
    fn other_lines_are_not_ready_lines() {
        for line in [
            "",
            "palaver node 1 starting",
            "palaver node x ready: http://127.0.0.1:1 (WebSocket)",
            "palaver node 1 ready: http://not-an-address (WebSocket)",
            "palaver balancer ready: http://127.0.0.1:1 (admin http://127.0.0.1:2), strategy round-robin",
            "[node 1] palaver node 1 ready: http://127.0.0.1:1 (WebSocket ws://127.0.0.1:1/ws)",
        ] {
            assert_eq!(parse_ready_line(line), None, "{line:?}");
        }
    }
}
