//! Server-to-client `permessage-deflate` (RFC 7692 §7.2.1): a text frame at
//! or above [`DEFLATE_MIN`] bytes is sent compressed, as a frame with RSV1
//! set that tungstenite writes as it is given.
//!
//! The server agreed to `server_no_context_takeover` on every connection
//! ([`super::ws_negotiate`]), so each message is compressed on its own and
//! its compressed bytes are the same for every recipient with the same
//! window: a hub event is compressed once, by its first such recipient,
//! into [`crate::hub::Event::deflated`], and the others send those bytes.

use std::sync::OnceLock;

use bytes::Bytes;
use flate2::Compress;
use flate2::Compression;
use flate2::FlushCompress;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::FrameHeader;
use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;
use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;

use super::ws_negotiate::Agreement;
use super::ws_negotiate::MAX_WINDOW;

/// Text frames shorter than this go uncompressed: below a few hundred bytes
/// deflate saves a few dozen bytes at best (the JSON keys of one small event
/// repeat little), while costing a compression per message and the
/// client an inflate; replies (`ok`, acks) and typing or presence notices
/// all stay under it, messages with real text go over.
pub const DEFLATE_MIN: usize = 256;

/// What a sync flush ends with, left out of the message (§7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];

/// `payload` compressed on its own with a `window`-bit window (9..=15), the
/// sync flush's tail removed; `None` if that is no shorter than `payload`.
pub fn deflate_message(payload: &[u8], window: u8) -> Option<Bytes> {
    metrics::counter!("palaver_ws_deflate_total").increment(1);
    let window = window.clamp(9, MAX_WINDOW);
    // A compressor per message: measured as fast as resetting one kept per
    // thread (12-28 µs for a 360-byte event, 40-48 µs for 4 KB, on a busy
    // 2-core machine), and no few hundred KiB of state stay around.
    let mut c = Compress::new_with_window_bits(Compression::default(), false, window);
    let mut out = Vec::with_capacity(payload.len() / 2 + 64);
    let mut consumed = 0;
    loop {
        let before = c.total_in();
        c.compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync).ok()?;
        consumed += (c.total_in() - before) as usize;
        // The flush is complete once it left room in the output.
        if consumed == payload.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity().max(64));
    }
    if out.ends_with(&TAIL) {
        out.truncate(out.len() - TAIL.len());
    }
    (out.len() < payload.len()).then(|| Bytes::from(out))
}

/// How one socket sends its text frames.
#[derive(Debug, Clone, Copy)]
pub struct Outgoing {
    /// The window to compress with, if the extension was agreed.
    window: Option<u8>,
}

impl Outgoing {
    /// For a socket that agreed to `agreement` (none: frames go plain).
    pub fn new(agreement: Option<&Agreement>) -> Self {
        Self { window: agreement.map(|a| a.server_window) }
    }

    /// The message for text `json`, compressed when agreed and worth it.
    /// `shared` holds the compressed bytes of an event sent to many sockets
    /// (made once, at the full window); without it the text is compressed
    /// for this socket alone.
    pub fn text(&self, json: Utf8Bytes, shared: Option<&OnceLock<Option<Bytes>>>) -> Message {
        let Some(window) = self.window.filter(|_| json.len() >= DEFLATE_MIN) else {
            return Message::Text(json);
        };
        let compressed = match shared {
            // A smaller window than the shared bytes were made with would not
            // read them: such a client gets its own.
            Some(cell) if window == MAX_WINDOW => {
                cell.get_or_init(|| deflate_message(json.as_bytes(), MAX_WINDOW)).clone()
            }
            _ => deflate_message(json.as_bytes(), window),
        };
        match compressed {
            Some(bytes) => Message::Frame(compressed_frame(bytes)),
            None => Message::Text(json),
        }
    }
}

/// A final text frame carrying a compressed message.
fn compressed_frame(payload: Bytes) -> Frame {
    let header = FrameHeader {
        is_final: true,
        rsv1: true,
        rsv2: false,
        rsv3: false,
        opcode: OpCode::Data(Data::Text),
        mask: None,
    };
    Frame::from_payload(header, payload)
}

#[cfg(test)]
mod tests {
    use flate2::Decompress;
    use flate2::FlushDecompress;

    use super::*;
    use crate::api::ws_negotiate::negotiate;

    fn inflate(data: &[u8], window: u8) -> Vec<u8> {
        let mut d = Decompress::new_with_window_bits(false, window);
        let mut input = data.to_vec();
        input.extend_from_slice(&TAIL);
        let mut out = Vec::with_capacity(1 << 20);
        d.decompress_vec(&input, &mut out, FlushDecompress::Sync).expect("valid deflate");
        out
    }

    fn event_json(body_len: usize) -> String {
        let body: String = "the quick brown fox jumps over the lazy dog ".chars().cycle().take(body_len).collect();
        format!(r#"{{"type":"message","room":"lobby","seq":42,"from":"alice","body":"{body}","ts":1700000000000}}"#)
    }

    fn compressed_payload(m: &Message) -> Option<Bytes> {
        match m {
            Message::Frame(f) => {
                let h = f.header();
                assert!(h.rsv1 && h.is_final && h.opcode == OpCode::Data(Data::Text) && h.mask.is_none());
                Some(Bytes::copy_from_slice(f.payload()))
            }
            Message::Text(_) => None,
            other => panic!("unexpected {other:?}"),
        }
    }

    fn payload_ptr(m: &Message) -> *const u8 {
        match m {
            Message::Frame(f) => f.payload().as_ptr(),
            other => panic!("not compressed: {other:?}"),
        }
    }

    #[test]
    fn a_message_round_trips_and_shrinks() {
        let json = event_json(2_000);
        let packed = deflate_message(json.as_bytes(), 15).expect("worth it");
        assert!(packed.len() < json.len() / 5, "{} of {}", packed.len(), json.len());
        assert!(!packed.ends_with(&TAIL));
        assert_eq!(inflate(&packed, 15), json.as_bytes());
        // Each message stands alone: the same text compresses the same way.
        assert_eq!(deflate_message(json.as_bytes(), 15), Some(packed));
    }

    #[test]
    fn a_small_window_is_honoured() {
        let json = event_json(3_000);
        for window in 9..=15 {
            let packed = deflate_message(json.as_bytes(), window).expect("worth it");
            assert_eq!(inflate(&packed, window), json.as_bytes(), "window {window}");
        }
    }

    #[test]
    fn what_does_not_shrink_is_not_compressed() {
        assert_eq!(deflate_message(b"{}", 15), None);
        let mut x: u64 = 7;
        let noise: Vec<u8> = (0..400)
            .map(|_| {
                x = x.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                (x >> 56) as u8
            })
            .collect();
        assert_eq!(deflate_message(&noise, 15), None);
    }

    #[test]
    fn frames_below_the_threshold_or_without_agreement_are_plain() {
        let agreed = Outgoing::new(negotiate(["permessage-deflate"]).as_ref());
        let small = event_json(10);
        assert!(small.len() < DEFLATE_MIN);
        assert!(compressed_payload(&agreed.text(small.into(), None)).is_none());
        let big = event_json(1_000);
        let none = Outgoing::new(None);
        assert!(compressed_payload(&none.text(big.clone().into(), None)).is_none());
        let packed = compressed_payload(&agreed.text(big.clone().into(), None)).expect("compressed");
        assert_eq!(inflate(&packed, 15), big.as_bytes());
    }

    #[test]
    fn an_event_is_compressed_once_for_every_recipient() {
        let json: Utf8Bytes = event_json(1_000).into();
        let cell = OnceLock::new();
        let sockets: Vec<Outgoing> =
            (0..5).map(|_| Outgoing::new(negotiate(["permessage-deflate; client_max_window_bits"]).as_ref())).collect();
        let first = sockets[0].text(json.clone(), Some(&cell));
        let shared = cell.get().cloned().flatten().expect("filled by the first");
        assert_eq!(payload_ptr(&first), shared.as_ptr());
        for s in &sockets[1..] {
            let again = s.text(json.clone(), Some(&cell));
            assert_eq!(payload_ptr(&again), shared.as_ptr(), "the same bytes, not a new compression");
        }
        // A socket with a smaller window gets its own, readable with it.
        let narrow = Outgoing::new(negotiate(["permessage-deflate; server_max_window_bits=9"]).as_ref());
        let message = narrow.text(json.clone(), Some(&cell));
        assert_ne!(payload_ptr(&message), shared.as_ptr());
        let own = compressed_payload(&message).expect("compressed");
        assert_eq!(inflate(&own, 9), json.as_bytes());
    }
}
