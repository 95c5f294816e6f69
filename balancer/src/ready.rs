//! The line `palaver balancer` prints on standard output once it listens,
//! and how to read it back: whoever starts a balancer process (the load
//! benches) learns from it the addresses it bound.
//!
//! Only the text lives here; this module knows nothing of processes or pipes.

use std::net::SocketAddr;

use crate::Strategy;

/// What comes before the public address.
const PREFIX: &str = "palaver balancer ready: http://";
/// What comes between the public and the admin address.
const ADMIN: &str = " (admin http://";

/// The ready line of a balancer serving clients on `public`, its
/// operations endpoints on `admin`, choosing nodes by `strategy`.
pub fn ready_line(public: SocketAddr, admin: SocketAddr, strategy: Strategy) -> String {
    format!("{PREFIX}{public}{ADMIN}{admin}), strategy {strategy}")
}

/// The public and admin addresses on `line`, if it is a ready line.
pub fn parse_ready_line(line: &str) -> Option<(SocketAddr, SocketAddr)> {
    let (public, rest) = line.strip_prefix(PREFIX)?.split_once(ADMIN)?;
    let (admin, _) = rest.split_once(')')?;
    Some((public.parse().ok()?, admin.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ready_line_reads_back() {
        let (public, admin) = ("127.0.0.1:8080".parse().expect("addr"), "[::1]:8081".parse().expect("addr"));
        for strategy in Strategy::ALL {
            assert_eq!(parse_ready_line(&ready_line(public, admin, strategy)), Some((public, admin)));
        }
        assert_eq!(parse_ready_line("palaver node 1 ready: http://127.0.0.1:1 (WebSocket ws://127.0.0.1:1/ws)"), None);
    }
}
