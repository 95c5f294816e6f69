//! PROXY protocol version 2 (HAProxy's `proxy-protocol.txt`, section 2.2),
//! the sending side: the binary header written to a node before a relayed
//! client's bytes, so the node learns the client's address (nodes see only
//! the balancer otherwise, and their per-address limits would count every
//! client together).
//!
//! Pure: addresses in, bytes out. Always command `PROXY` over TCP; IPv4
//! when both ends are IPv4, otherwise IPv6 with any IPv4 end v4-mapped (the
//! spec wants one family for both addresses). No TLVs.

use std::net::IpAddr;
use std::net::SocketAddr;

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// Version 2 (high nibble), command PROXY (low nibble).
const VERSION_PROXY: u8 = 0x21;
/// TCP over IPv4.
const TCP4: u8 = 0x11;
/// TCP over IPv6.
const TCP6: u8 = 0x21;
/// The longest header this module writes (TCP over IPv6).
pub const MAX_LEN: usize = 16 + 36;

/// One encoded header, on the stack.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    bytes: [u8; MAX_LEN],
    len: usize,
}

impl Header {
    /// The header for a client at `source` that connected to `destination`
    /// (the balancer's public address).
    pub fn new(source: SocketAddr, destination: SocketAddr) -> Header {
        let mut bytes = [0u8; MAX_LEN];
        bytes[..12].copy_from_slice(&SIGNATURE);
        bytes[12] = VERSION_PROXY;
        let len = match (source.ip(), destination.ip()) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                bytes[13] = TCP4;
                bytes[14..16].copy_from_slice(&12u16.to_be_bytes());
                bytes[16..20].copy_from_slice(&s.octets());
                bytes[20..24].copy_from_slice(&d.octets());
                bytes[24..26].copy_from_slice(&source.port().to_be_bytes());
                bytes[26..28].copy_from_slice(&destination.port().to_be_bytes());
                28
            }
            (s, d) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                    IpAddr::V6(v6) => v6,
                };
                bytes[13] = TCP6;
                bytes[14..16].copy_from_slice(&36u16.to_be_bytes());
                bytes[16..32].copy_from_slice(&v6(s).octets());
                bytes[32..48].copy_from_slice(&v6(d).octets());
                bytes[48..50].copy_from_slice(&source.port().to_be_bytes());
                bytes[50..52].copy_from_slice(&destination.port().to_be_bytes());
                52
            }
        };
        Header { bytes, len }
    }

    /// The bytes to write.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(text: &str) -> SocketAddr {
        text.parse().expect("test address")
    }

    #[test]
    fn the_signature_is_the_specs() {
        assert_eq!(&SIGNATURE, b"\r\n\r\n\0\r\nQUIT\n");
    }

    #[test]
    fn ipv4_layout() {
        let h = Header::new(addr("192.0.2.7:51000"), addr("198.51.100.1:8080"));
        let expected: Vec<u8> = [
            &SIGNATURE[..],
            &[0x21, 0x11, 0x00, 0x0C],
            &[192, 0, 2, 7],
            &[198, 51, 100, 1],
            &51000u16.to_be_bytes(),
            &8080u16.to_be_bytes(),
        ]
        .concat();
        assert_eq!(h.as_bytes(), &expected[..]);
        assert_eq!(h.as_bytes().len(), 28);
    }

    #[test]
    fn ipv6_layout() {
        let h = Header::new(addr("[2001:db8::42]:443"), addr("[::1]:8080"));
        let mut expected = SIGNATURE.to_vec();
        expected.extend_from_slice(&[0x21, 0x21, 0x00, 0x24]);
        expected.extend_from_slice(&[0x20, 0x01, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x42]);
        expected.extend_from_slice(&[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
        expected.extend_from_slice(&[0x01, 0xBB, 0x1F, 0x90]);
        assert_eq!(h.as_bytes(), &expected[..]);
        assert_eq!(h.as_bytes().len(), 52);
    }

    #[test]
    fn mixed_families_go_as_ipv6_with_the_v4_end_mapped() {
        let h = Header::new(addr("10.1.2.3:1000"), addr("[::1]:8080"));
        let b = h.as_bytes();
        assert_eq!((b[13], b.len()), (0x21, 52));
        assert_eq!(&b[16..32], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xFF, 0xFF, 10, 1, 2, 3]);
        assert_eq!(&b[48..50], &1000u16.to_be_bytes());
    }
}
