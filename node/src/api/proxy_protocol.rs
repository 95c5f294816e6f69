//! PROXY protocol version 2 (HAProxy's `proxy-protocol.txt`, section 2.2),
//! the receiving side: the binary header a trusted proxy (our balancer)
//! writes before the client's bytes, naming the client's real address.
//!
//! Pure: bytes in, a decision out; the accept loop does the reading and
//! decides whom to believe. Only the parts a TCP relay sends are used:
//! command `PROXY` with TCP or UDP over IPv4 or IPv6. `LOCAL`, `UNSPEC` and
//! UNIX-socket headers are valid but say nothing about a client, so the TCP
//! peer is kept. TLVs after the addresses are skipped.

use std::net::IpAddr;
use std::net::Ipv4Addr;
use std::net::Ipv6Addr;
use std::net::SocketAddr;

/// The 12 bytes every v2 header starts with.
pub const SIGNATURE: [u8; 12] = [0x0D, 0x0A, 0x0D, 0x0A, 0x00, 0x0D, 0x0A, 0x51, 0x55, 0x49, 0x54, 0x0A];
/// Signature, version/command, family and the 2-byte length.
pub const FIXED_LEN: usize = 16;
/// Longest address block accepted (the size of the UNIX-socket form): a
/// proxy of ours never sends more, and a peer may not make us read more.
pub const MAX_ADDRESS_LEN: usize = 216;

/// What a connection's first bytes are, as far as they go.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Prefix {
    /// The full signature: a PROXY v2 header follows.
    Header,
    /// Not the signature: the connection speaks its protocol directly.
    Plain,
    /// A proper prefix of the signature so far: wait for more bytes.
    NeedMore,
}

/// Classifies the first bytes of a connection (however many arrived).
pub fn classify(first: &[u8]) -> Prefix {
    let n = first.len().min(SIGNATURE.len());
    if first[..n] != SIGNATURE[..n] {
        Prefix::Plain
    } else if n < SIGNATURE.len() {
        Prefix::NeedMore
    } else {
        Prefix::Header
    }
}

/// Why a header was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// The first 12 bytes are not the v2 signature.
    #[error("not a PROXY v2 signature")]
    BadSignature,
    /// The version nibble is not 2.
    #[error("PROXY protocol version {0} is not supported")]
    BadVersion(u8),
    /// The command nibble is neither LOCAL (0) nor PROXY (1).
    #[error("unknown PROXY command {0}")]
    BadCommand(u8),
    /// The family/protocol byte is not one the spec defines.
    #[error("unknown PROXY address family 0x{0:02x}")]
    BadFamily(u8),
    /// The address block is longer than [`MAX_ADDRESS_LEN`].
    #[error("PROXY address block of {0} bytes is too long")]
    TooLong(usize),
    /// Fewer bytes than the header needs.
    #[error("PROXY header truncated: {have} of {need} bytes")]
    Truncated {
        /// Bytes the header needs.
        need: usize,
        /// Bytes given.
        have: usize,
    },
    /// The address block is shorter than its family's addresses.
    #[error("PROXY address block of {len} bytes is too short for family 0x{family:02x}")]
    ShortAddresses {
        /// The family/protocol byte.
        family: u8,
        /// The block's length.
        len: usize,
    },
}

/// Reads the fixed 16 bytes: answers the length of the address block that
/// follows (checked against [`MAX_ADDRESS_LEN`]).
pub fn address_len(fixed: &[u8]) -> Result<usize, ProxyError> {
    if fixed.len() < FIXED_LEN {
        return Err(ProxyError::Truncated { need: FIXED_LEN, have: fixed.len() });
    }
    if fixed[..SIGNATURE.len()] != SIGNATURE {
        return Err(ProxyError::BadSignature);
    }
    let version = fixed[12] >> 4;
    if version != 2 {
        return Err(ProxyError::BadVersion(version));
    }
    let command = fixed[12] & 0x0F;
    if command > 1 {
        return Err(ProxyError::BadCommand(command));
    }
    let len = usize::from(u16::from_be_bytes([fixed[14], fixed[15]]));
    if len > MAX_ADDRESS_LEN {
        return Err(ProxyError::TooLong(len));
    }
    Ok(len)
}

/// Parses a whole header (fixed part and address block, nothing after):
/// the client's address, or `None` when the header names none (LOCAL,
/// UNSPEC, UNIX sockets) and the TCP peer stands.
pub fn parse(header: &[u8]) -> Result<Option<SocketAddr>, ProxyError> {
    let len = address_len(header)?;
    let need = FIXED_LEN + len;
    if header.len() < need {
        return Err(ProxyError::Truncated { need, have: header.len() });
    }
    let block = &header[FIXED_LEN..need];
    let local = header[12] & 0x0F == 0;
    let family = header[13];
    // The family byte is checked even for LOCAL, so a garbled header is
    // refused whatever its command.
    let source = match family {
        0x00 => None,
        0x11 | 0x12 => {
            let b = fixed_block::<12>(family, block)?;
            let ip = Ipv4Addr::new(b[0], b[1], b[2], b[3]);
            Some(SocketAddr::new(IpAddr::V4(ip), u16::from_be_bytes([b[8], b[9]])))
        }
        0x21 | 0x22 => {
            let b = fixed_block::<36>(family, block)?;
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&b[..16]);
            // A v4 client relayed as a v4-mapped v6 address is that v4 client.
            let ip = IpAddr::V6(Ipv6Addr::from(octets)).to_canonical();
            Some(SocketAddr::new(ip, u16::from_be_bytes([b[32], b[33]])))
        }
        0x31 | 0x32 => {
            if block.len() < 216 {
                return Err(ProxyError::ShortAddresses { family, len: block.len() });
            }
            None
        }
        other => return Err(ProxyError::BadFamily(other)),
    };
    Ok(if local { None } else { source })
}

/// The first `N` bytes of `block`, or why there are not that many.
fn fixed_block<const N: usize>(family: u8, block: &[u8]) -> Result<&[u8; N], ProxyError> {
    block.get(..N).and_then(|b| b.try_into().ok()).ok_or(ProxyError::ShortAddresses { family, len: block.len() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A header with `ver_cmd`, `family` and `block`, its length field true.
    fn header(ver_cmd: u8, family: u8, block: &[u8]) -> Vec<u8> {
        let mut h = SIGNATURE.to_vec();
        h.push(ver_cmd);
        h.push(family);
        h.extend_from_slice(&(block.len() as u16).to_be_bytes());
        h.extend_from_slice(block);
        h
    }

    fn tcp4_block() -> Vec<u8> {
        // 192.0.2.7:51000 → 198.51.100.1:8080
        let mut b = vec![192, 0, 2, 7, 198, 51, 100, 1];
        b.extend_from_slice(&51000u16.to_be_bytes());
        b.extend_from_slice(&8080u16.to_be_bytes());
        b
    }

    fn tcp6_block(source: Ipv6Addr) -> Vec<u8> {
        let mut b = source.octets().to_vec();
        b.extend_from_slice(&Ipv6Addr::LOCALHOST.octets());
        b.extend_from_slice(&443u16.to_be_bytes());
        b.extend_from_slice(&8080u16.to_be_bytes());
        b
    }

    #[test]
    fn the_signature_is_recognised_byte_by_byte() {
        assert_eq!(classify(b""), Prefix::NeedMore);
        assert_eq!(classify(&SIGNATURE[..5]), Prefix::NeedMore);
        assert_eq!(classify(&SIGNATURE), Prefix::Header);
        assert_eq!(classify(b"GET / HTTP/1.1\r\n"), Prefix::Plain);
        assert_eq!(classify(b"\r\n\r\nGET"), Prefix::Plain);
        assert_eq!(classify(b"PROXY TCP4 1.2.3.4"), Prefix::Plain, "v1 (text) is not honoured");
    }

    #[test]
    fn tcp_over_ipv4_gives_the_source() {
        let h = header(0x21, 0x11, &tcp4_block());
        assert_eq!(h.len(), 28);
        assert_eq!(address_len(&h[..16]), Ok(12));
        assert_eq!(parse(&h), Ok(Some("192.0.2.7:51000".parse().expect("addr"))));
        // UDP over IPv4 has the same layout.
        assert_eq!(parse(&header(0x21, 0x12, &tcp4_block())), Ok(Some("192.0.2.7:51000".parse().expect("addr"))));
    }

    #[test]
    fn tcp_over_ipv6_gives_the_source_and_unmaps_v4() {
        let v6: Ipv6Addr = "2001:db8::42".parse().expect("v6");
        let h = header(0x21, 0x21, &tcp6_block(v6));
        assert_eq!(h.len(), 52);
        assert_eq!(parse(&h), Ok(Some(SocketAddr::new(IpAddr::V6(v6), 443))));
        let mapped = Ipv4Addr::new(127, 0, 0, 9).to_ipv6_mapped();
        assert_eq!(parse(&header(0x21, 0x21, &tcp6_block(mapped))), Ok(Some("127.0.0.9:443".parse().expect("addr"))));
    }

    #[test]
    fn tlvs_after_the_addresses_are_skipped() {
        let mut block = tcp4_block();
        block.extend_from_slice(&[0x04, 0x00, 0x01, 0xAA]); // PP2_TYPE_NOOP, 1 byte
        assert_eq!(parse(&header(0x21, 0x11, &block)), Ok(Some("192.0.2.7:51000".parse().expect("addr"))));
    }

    #[test]
    fn local_unspec_and_unix_keep_the_tcp_peer() {
        assert_eq!(parse(&header(0x20, 0x00, &[])), Ok(None), "LOCAL");
        assert_eq!(parse(&header(0x20, 0x11, &tcp4_block())), Ok(None), "LOCAL with addresses");
        assert_eq!(parse(&header(0x21, 0x00, &[])), Ok(None), "UNSPEC");
        assert_eq!(parse(&header(0x21, 0x31, &[0u8; 216])), Ok(None), "UNIX stream");
    }

    #[test]
    fn bad_headers_are_refused() {
        let mut bad_sig = header(0x21, 0x11, &tcp4_block());
        bad_sig[4] = 0x01;
        assert_eq!(parse(&bad_sig), Err(ProxyError::BadSignature));
        assert_eq!(parse(&header(0x11, 0x11, &tcp4_block())), Err(ProxyError::BadVersion(1)));
        assert_eq!(parse(&header(0x31, 0x11, &tcp4_block())), Err(ProxyError::BadVersion(3)));
        assert_eq!(parse(&header(0x22, 0x11, &tcp4_block())), Err(ProxyError::BadCommand(2)));
        assert_eq!(parse(&header(0x21, 0x13, &tcp4_block())), Err(ProxyError::BadFamily(0x13)));
        assert_eq!(parse(&header(0x21, 0x41, &tcp4_block())), Err(ProxyError::BadFamily(0x41)));
        assert_eq!(
            parse(&header(0x21, 0x11, &tcp4_block()[..8])),
            Err(ProxyError::ShortAddresses { family: 0x11, len: 8 })
        );
        assert_eq!(
            parse(&header(0x21, 0x21, &tcp4_block())),
            Err(ProxyError::ShortAddresses { family: 0x21, len: 12 })
        );
    }

    #[test]
    fn truncated_headers_are_refused() {
        let h = header(0x21, 0x11, &tcp4_block());
        assert_eq!(address_len(&h[..15]), Err(ProxyError::Truncated { need: 16, have: 15 }));
        assert_eq!(parse(&h[..20]), Err(ProxyError::Truncated { need: 28, have: 20 }));
        assert_eq!(parse(&h[..3]), Err(ProxyError::Truncated { need: 16, have: 3 }));
    }

    #[test]
    fn address_blocks_beyond_216_bytes_are_refused() {
        assert_eq!(parse(&header(0x21, 0x11, &[0u8; 216])).map(|a| a.is_some()), Ok(true));
        let h = header(0x21, 0x11, &[0u8; 217]);
        assert_eq!(address_len(&h[..16]), Err(ProxyError::TooLong(217)));
        let mut huge = h[..16].to_vec();
        huge[14..16].copy_from_slice(&u16::MAX.to_be_bytes());
        assert_eq!(address_len(&huge), Err(ProxyError::TooLong(65535)));
    }
}
