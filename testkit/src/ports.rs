//! Free 127.0.0.1 ports, picked one way: bind every socket wanted on port 0
//! at once (so no two are the same), read the ports the system gave, and
//! release them. Another process may take a port before its user binds it;
//! [`crate::Cluster`] retries a start that fails to bind once.

use std::net::SocketAddr;
use std::net::TcpListener;
use std::net::UdpSocket;

use anyhow::Context;
use anyhow::Result;
use palaver_node::config::NodeSection;

/// A TCP client address and a UDP (QUIC) peer address for each of `ids`.
pub fn node_sections(ids: &[u64]) -> Result<Vec<NodeSection>> {
    let mut held = Vec::new();
    let mut nodes = Vec::new();
    for &id in ids {
        let tcp = TcpListener::bind("127.0.0.1:0").context("binding a free TCP port")?;
        let udp = UdpSocket::bind("127.0.0.1:0").context("binding a free UDP port")?;
        let client = tcp.local_addr().context("TCP local address")?;
        let peer = udp.local_addr().context("UDP local address")?;
        nodes.push(NodeSection { id, client, peer, weight: 1 });
        held.push((tcp, udp));
    }
    Ok(nodes)
}

/// `n` free TCP addresses.
pub fn tcp_addrs(n: usize) -> Result<Vec<SocketAddr>> {
    let held: Vec<TcpListener> =
        (0..n).map(|_| TcpListener::bind("127.0.0.1:0").context("binding a free TCP port")).collect::<Result<_>>()?;
    held.iter().map(|l| l.local_addr().context("TCP local address")).collect()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn picked_ports_are_all_different() {
        let nodes = node_sections(&[1, 2, 3]).expect("ports");
        let tcp: BTreeSet<u16> = nodes.iter().map(|n| n.client.port()).collect();
        let udp: BTreeSet<u16> = nodes.iter().map(|n| n.peer.port()).collect();
        assert_eq!((tcp.len(), udp.len()), (3, 3));
        assert_eq!(nodes.iter().map(|n| n.id).collect::<Vec<_>>(), [1, 2, 3]);
        let more: BTreeSet<SocketAddr> = tcp_addrs(4).expect("ports").into_iter().collect();
        assert_eq!(more.len(), 4);
    }
}
