//! Client-to-server `permessage-deflate` (RFC 7692 §6.2, §7.2.2), done on
//! the raw byte stream below tungstenite: frames of a message whose first
//! frame has RSV1 set are unmasked, inflated and passed on as plain frames
//! (RSV1 cleared, new length, a zero mask key), so tungstenite, which knows
//! no extension and refuses RSV1, sees an ordinary connection. Every other
//! frame passes through byte for byte; what is malformed in it (RSV1 on a
//! control or continuation frame, a continuation with no message open) is
//! tungstenite's to refuse (1002), as in [`super::ws_guard`].
//!
//! Why our own layer rather than a crate: tungstenite 0.29 has no
//! extension support, and the WebSocket crates that do (yawc, sockudo-ws)
//! would replace the whole WebSocket stack (the upgrade, the guard, the
//! writer) for one extension. The layer is small, and it bounds memory the
//! way this server needs: a message inflates into one buffer of at most
//! `frame_bytes` (a deflate bomb stops there, with 1009), the compressed
//! bytes are never buffered, and a client that agreed to
//! `client_no_context_takeover` leaves no inflate state between messages.
//!
//! [`Inflater`] is the pure part, bytes in and bytes out; [`InflateIo`] wraps
//! the connection (already guarded by [`super::ws_guard::GuardedIo`], which
//! counts the client's frames as they came) and feeds it every byte read.

use std::io;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::task::ready;

use flate2::Decompress;
use flate2::FlushDecompress;
use flate2::Status;
use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;

use super::ws_guard::Recorded;
use super::ws_guard::Violation;
use super::ws_guard::violation_error;
use super::ws_negotiate::Agreement;

/// Longest frame header: 2 bytes, a 64-bit length, a 4-byte mask key.
const MAX_HEADER: usize = 14;
/// What a sender's sync flush ends a message with, removed before sending
/// and put back before inflating (§7.2.2).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
/// Bytes read from the connection at a time, on the stack of one read.
const READ_CHUNK: usize = 4096;
/// Growth step of the inflated-frame buffer.
const GROW: usize = 8 * 1024;

/// What the frame being read is for this layer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Its bytes go on unchanged.
    Pass,
    /// Its payload is inflated and goes on as a plain frame.
    Inflate,
}

/// The frame whose payload is being read.
#[derive(Debug, Clone, Copy)]
struct Current {
    mode: Mode,
    fin: bool,
    opcode: u8,
    /// The client's mask key, if the frame is masked (a client's must be;
    /// an unmasked one is passed on unmasked, for tungstenite to refuse).
    mask: Option<[u8; 4]>,
    /// Payload bytes read so far and still to read.
    read: u64,
    remaining: u64,
}

/// The data message that is open (its first frame read, its last not).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Open {
    None,
    Plain,
    Compressed,
}

/// Turns a client's byte stream with compressed messages into one without.
pub struct Inflater {
    max_message: usize,
    window: u8,
    /// The client resets its context for each message (it agreed to
    /// `client_no_context_takeover`): the decoder is dropped between messages.
    fresh_each_message: bool,
    header: [u8; MAX_HEADER],
    have: usize,
    current: Option<Current>,
    open: Open,
    /// Made at the first compressed message; kept across messages only
    /// when the client keeps its context.
    decoder: Option<Box<Decompress>>,
    /// The stream of this message ended (a block with BFINAL): what follows
    /// in the message is ignored and the next one starts a new stream.
    ended: bool,
    /// Inflated bytes of the open message in frames already passed on.
    inflated: usize,
    /// The inflated payload of the current frame.
    payload: Vec<u8>,
    failed: Option<Violation>,
}

impl Inflater {
    /// An inflater for a connection that agreed to `agreement`, whose
    /// messages may inflate to at most `max_message` bytes.
    pub fn new(agreement: &Agreement, max_message: usize) -> Self {
        Self {
            max_message,
            window: agreement.inflate_window(),
            fresh_each_message: agreement.client_no_context_takeover,
            header: [0; MAX_HEADER],
            have: 0,
            current: None,
            open: Open::None,
            decoder: None,
            ended: false,
            inflated: 0,
            payload: Vec::new(),
            failed: None,
        }
    }

    /// The violation found, if any; every later call answers it.
    pub fn violation(&self) -> Option<Violation> {
        self.failed
    }

    /// Whether inflate state is held between messages (for tests of memory).
    pub fn holds_decoder(&self) -> bool {
        self.decoder.is_some()
    }

    /// Reads the next bytes of the client's stream, appending what
    /// tungstenite is to read to `out`.
    pub fn feed(&mut self, input: &[u8], out: &mut Vec<u8>) -> Result<(), Violation> {
        if let Some(v) = self.failed {
            return Err(v);
        }
        let result = self.feed_inner(input, out);
        if let Err(v) = result {
            self.failed = Some(v);
            self.payload = Vec::new();
            self.decoder = None;
        }
        result
    }

    fn feed_inner(&mut self, mut input: &[u8], out: &mut Vec<u8>) -> Result<(), Violation> {
        while !input.is_empty() {
            let Some(cur) = self.current.as_mut() else {
                let take = (self.needed() - self.have).min(input.len());
                self.header[self.have..self.have + take].copy_from_slice(&input[..take]);
                self.have += take;
                input = &input[take..];
                if self.have == self.needed() {
                    self.start_frame(out)?;
                }
                continue;
            };
            let n = usize::try_from(cur.remaining).map_or(input.len(), |r| r.min(input.len()));
            let (chunk, rest) = input.split_at(n);
            input = rest;
            let cur = *cur;
            match cur.mode {
                Mode::Pass => out.extend_from_slice(chunk),
                Mode::Inflate => self.inflate_payload(chunk, cur.mask, cur.read)?,
            }
            if let Some(c) = self.current.as_mut() {
                c.read += n as u64;
                c.remaining -= n as u64;
            }
            if cur.remaining == n as u64 {
                self.end_frame(out)?;
            }
        }
        Ok(())
    }

    /// Header bytes needed for what has been read of it so far.
    fn needed(&self) -> usize {
        if self.have < 2 {
            return 2;
        }
        let extended = match self.header[1] & 0x7F {
            126 => 2,
            127 => 8,
            _ => 0,
        };
        let mask = if self.header[1] & 0x80 != 0 { 4 } else { 0 };
        2 + extended + mask
    }

    /// A header is complete: decide what its frame is.
    fn start_frame(&mut self, out: &mut Vec<u8>) -> Result<(), Violation> {
        let h = self.header;
        let len_at = 2;
        let (length, mask_at) = match h[1] & 0x7F {
            126 => (u64::from(u16::from_be_bytes([h[2], h[3]])), len_at + 2),
            127 => {
                let mut l = [0u8; 8];
                l.copy_from_slice(&h[2..10]);
                (u64::from_be_bytes(l), len_at + 8)
            }
            short => (u64::from(short), len_at),
        };
        let mask = (h[1] & 0x80 != 0).then(|| [h[mask_at], h[mask_at + 1], h[mask_at + 2], h[mask_at + 3]]);
        let fin = h[0] & 0x80 != 0;
        let rsv1 = h[0] & 0x40 != 0;
        let other_rsv = h[0] & 0x30 != 0;
        let opcode = h[0] & 0x0F;
        let compressed = match opcode {
            // A new data message, unless one is open (tungstenite's error).
            0x1 | 0x2 if self.open == Open::None => {
                let compressed = rsv1 && !other_rsv;
                if !fin {
                    self.open = if compressed { Open::Compressed } else { Open::Plain };
                }
                compressed
            }
            // Continuations carry no RSV1 of their own (§6.1); one that does is
            // passed on for tungstenite to refuse.
            0x0 if self.open != Open::None => {
                let compressed = self.open == Open::Compressed && !rsv1 && !other_rsv;
                if fin {
                    self.open = Open::None;
                }
                compressed
            }
            _ => false,
        };
        let header_len = self.have;
        self.have = 0;
        let mode = if compressed { Mode::Inflate } else { Mode::Pass };
        if mode == Mode::Pass {
            out.extend_from_slice(&h[..header_len]);
        } else if length > self.max_message as u64 {
            // Not even the compressed frame fits the limit tungstenite
            // applies to plain ones.
            return Err(Violation::InflatedTooLarge { max: self.max_message });
        }
        self.current = Some(Current { mode, fin, opcode, mask, read: 0, remaining: length });
        if length == 0 {
            self.end_frame(out)?;
        }
        Ok(())
    }

    /// Inflates the next piece of a compressed frame's payload, which
    /// starts at `offset` in the frame (for the mask).
    fn inflate_payload(&mut self, chunk: &[u8], mask: Option<[u8; 4]>, offset: u64) -> Result<(), Violation> {
        let Some(key) = mask else { return self.inflate(chunk) };
        let mut plain = [0u8; 512];
        for (i, piece) in chunk.chunks(plain.len()).enumerate() {
            let start = offset as usize + i * plain.len();
            for (j, b) in piece.iter().enumerate() {
                plain[j] = b ^ key[(start + j) % 4];
            }
            self.inflate(&plain[..piece.len()])?;
        }
        Ok(())
    }

    /// Inflates `input` into the frame's payload, within the message limit.
    fn inflate(&mut self, mut input: &[u8]) -> Result<(), Violation> {
        if self.ended {
            return Ok(());
        }
        let window = self.window;
        let decoder = self.decoder.get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, window)));
        // The frame's payload may reach one byte past the message's room, to
        // tell "exactly full" from "over".
        let room = self.max_message.saturating_sub(self.inflated) + 1;
        loop {
            if self.payload.len() == self.payload.capacity() {
                let want = (self.payload.capacity() * 2).max(GROW).min(room);
                if want <= self.payload.len() {
                    return Err(Violation::InflatedTooLarge { max: self.max_message });
                }
                self.payload.reserve_exact(want - self.payload.len());
            }
            let spare = self.payload.capacity() - self.payload.len();
            let (in_before, out_before) = (decoder.total_in(), decoder.total_out());
            let status = decoder
                .decompress_vec(input, &mut self.payload, FlushDecompress::None)
                .map_err(|_| Violation::BadCompression)?;
            let consumed = (decoder.total_in() - in_before) as usize;
            let produced = (decoder.total_out() - out_before) as usize;
            input = &input[consumed..];
            if self.inflated + self.payload.len() > self.max_message {
                return Err(Violation::InflatedTooLarge { max: self.max_message });
            }
            if status == Status::StreamEnd {
                self.ended = true;
                return Ok(());
            }
            // Done when the input is used up and the output had room to spare
            // (a full output may hide more); stuck when nothing moved.
            let output_full = produced == spare;
            if (input.is_empty() && !output_full) || (consumed == 0 && produced == 0) {
                return Ok(());
            }
        }
    }

    /// The current frame's payload is all read.
    fn end_frame(&mut self, out: &mut Vec<u8>) -> Result<(), Violation> {
        let Some(cur) = self.current.take() else { return Ok(()) };
        if cur.mode == Mode::Pass {
            return Ok(());
        }
        if cur.fin {
            self.inflate(&TAIL)?;
        }
        let len = self.payload.len();
        out.push(if cur.fin { 0x80 } else { 0 } | cur.opcode);
        let mask_bit = if cur.mask.is_some() { 0x80 } else { 0 };
        match len {
            0..=125 => out.push(mask_bit | len as u8),
            126..=0xFFFF => {
                out.push(mask_bit | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                out.push(mask_bit | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        // A zero key: tungstenite unmasks by XOR, which leaves the bytes as they are.
        if cur.mask.is_some() {
            out.extend_from_slice(&[0; 4]);
        }
        out.extend_from_slice(&self.payload);
        self.inflated += len;
        // Freed rather than kept: an idle socket holds no buffer.
        self.payload = Vec::new();
        if cur.fin {
            self.inflated = 0;
            if self.fresh_each_message || self.ended {
                self.decoder = None;
            }
            self.ended = false;
        }
        Ok(())
    }
}

/// A connection whose incoming compressed messages are inflated by an
/// [`Inflater`] before tungstenite reads them; without one (no extension
/// agreed) reads go straight through. Writes always do.
pub struct InflateIo<T> {
    inner: T,
    inflater: Option<Box<Inflater>>,
    /// Bytes for tungstenite, `served` of them already handed over.
    out: Vec<u8>,
    served: usize,
    recorded: Recorded,
}

impl<T> InflateIo<T> {
    /// Wraps `io`; a violation is recorded in `recorded` (the guard's).
    pub fn new(io: T, inflater: Option<Inflater>, recorded: Recorded) -> Self {
        Self { inner: io, inflater: inflater.map(Box::new), out: Vec::new(), served: 0, recorded }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &T {
        &self.inner
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for InflateIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let Some(inflater) = this.inflater.as_mut() else {
            return Pin::new(&mut this.inner).poll_read(cx, buf);
        };
        loop {
            if this.served < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.served);
                buf.put_slice(&this.out[this.served..this.served + n]);
                this.served += n;
                if this.served == this.out.len() {
                    // Freed once served, so an idle socket holds no buffer.
                    this.served = 0;
                    this.out = Vec::new();
                }
                return Poll::Ready(Ok(()));
            }
            if let Some(v) = inflater.violation() {
                return Poll::Ready(Err(violation_error(v)));
            }
            let mut chunk = [0u8; READ_CHUNK];
            let mut read = ReadBuf::new(&mut chunk);
            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut read))?;
            if read.filled().is_empty() {
                return Poll::Ready(Ok(()));
            }
            if let Err(v) = inflater.feed(read.filled(), &mut this.out) {
                this.recorded.record(v);
                // The connection is closing: nothing more reaches tungstenite.
                this.out = Vec::new();
                return Poll::Ready(Err(violation_error(v)));
            }
            // All of it may have gone into a compressed frame still open:
            // read on, as an empty read would mean the end of the stream.
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for InflateIo<T> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use flate2::Compress;
    use flate2::Compression;
    use flate2::FlushCompress;
    use futures_util::StreamExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite;
    use tokio_tungstenite::tungstenite::protocol::Role;
    use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

    use super::*;
    use crate::api::ws_negotiate::negotiate;

    const TEXT: u8 = 0x1;
    const CONT: u8 = 0x0;
    const PING: u8 = 0x9;
    const MAX: usize = 64 * 1024;
    const KEY: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

    fn agreement(offer: &str) -> Agreement {
        negotiate([offer]).expect("an acceptable offer")
    }

    fn inflater(offer: &str) -> Inflater {
        Inflater::new(&agreement(offer), MAX)
    }

    /// `data` compressed as a client would, with `c` (kept across messages
    /// for context takeover), the sync flush's tail removed.
    fn compress(c: &mut Compress, data: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut at = 0;
        loop {
            let before = c.total_in();
            c.compress_vec(&data[at..], &mut out, FlushCompress::Sync).expect("compress");
            at += (c.total_in() - before) as usize;
            if at == data.len() && out.len() < out.capacity() {
                break;
            }
            out.reserve(out.capacity());
        }
        assert!(out.ends_with(&TAIL));
        out.truncate(out.len() - 4);
        out
    }

    fn compressor() -> Compress {
        Compress::new(Compression::default(), false)
    }

    /// A masked client frame.
    fn frame(fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | if rsv1 { 0x40 } else { 0 } | opcode];
        match payload.len() {
            n @ 0..=125 => f.push(0x80 | n as u8),
            n @ 126..=0xFFFF => {
                f.push(0x80 | 126);
                f.extend_from_slice(&(n as u16).to_be_bytes());
            }
            n => {
                f.push(0x80 | 127);
                f.extend_from_slice(&(n as u64).to_be_bytes());
            }
        }
        f.extend_from_slice(&KEY);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ KEY[i % 4]));
        f
    }

    /// Frames as (fin, rsv bits, opcode, unmasked payload).
    fn parse(mut bytes: &[u8]) -> Vec<(bool, u8, u8, Vec<u8>)> {
        let mut frames = Vec::new();
        while !bytes.is_empty() {
            let (b0, b1) = (bytes[0], bytes[1]);
            let (len, mut at) = match b1 & 0x7F {
                126 => (u16::from_be_bytes([bytes[2], bytes[3]]) as usize, 4),
                127 => (u64::from_be_bytes(bytes[2..10].try_into().expect("8 bytes")) as usize, 10),
                n => (n as usize, 2),
            };
            let key = if b1 & 0x80 != 0 {
                at += 4;
                bytes[at - 4..at].try_into().expect("4 bytes")
            } else {
                [0; 4]
            };
            let payload = bytes[at..at + len].iter().enumerate().map(|(i, b)| b ^ key[i % 4]).collect();
            frames.push((b0 & 0x80 != 0, (b0 >> 4) & 0x7, b0 & 0x0F, payload));
            bytes = &bytes[at + len..];
        }
        frames
    }

    /// What `inflater` makes of `pieces`, fed in order.
    fn run(inflater: &mut Inflater, pieces: &[&[u8]]) -> Result<Vec<u8>, Violation> {
        let mut out = Vec::new();
        for piece in pieces {
            inflater.feed(piece, &mut out)?;
        }
        Ok(out)
    }

    /// Letters from a fixed pseudo-random sequence: little to compress
    /// within one message, much against an earlier copy.
    fn noise(len: usize) -> Vec<u8> {
        let mut x: u32 = 12345;
        (0..len)
            .map(|_| {
                x = x.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                b'a' + ((x >> 16) % 26) as u8
            })
            .collect()
    }

    fn text(len: usize) -> Vec<u8> {
        let words = ["palaver ", "chat ", "room ", "message ", "{\"type\":\"send\"} "];
        words.iter().cycle().flat_map(|w| w.bytes()).take(len).collect()
    }

    #[test]
    fn plain_frames_pass_unchanged() {
        let mut stream = frame(true, false, TEXT, b"hello");
        stream.extend(frame(false, false, TEXT, &text(300)));
        stream.extend(frame(true, false, PING, b"p"));
        stream.extend(frame(true, false, CONT, &text(70_000)));
        let mut i = inflater("permessage-deflate");
        assert_eq!(run(&mut i, &[&stream]), Ok(stream.clone()));
        for cut in (0..stream.len()).step_by(97) {
            let (a, b) = stream.split_at(cut);
            assert_eq!(run(&mut inflater("permessage-deflate"), &[a, b]), Ok(stream.clone()), "cut at {cut}");
        }
    }

    #[test]
    fn a_compressed_message_comes_out_plain_across_every_split() {
        let message = text(5_000);
        let wire = frame(true, true, TEXT, &compress(&mut compressor(), &message));
        let mut plain = frame(true, false, TEXT, b"next");
        plain.splice(0..0, wire.iter().copied());
        let expect = vec![(true, 0, TEXT, message.clone()), (true, 0, TEXT, b"next".to_vec())];
        for cut in 0..=plain.len() {
            let (a, b) = plain.split_at(cut);
            let out = run(&mut inflater("permessage-deflate"), &[a, b]).expect("inflates");
            assert_eq!(parse(&out), expect, "cut at {cut}");
        }
        let bytes: Vec<&[u8]> = plain.chunks(1).collect();
        let out = run(&mut inflater("permessage-deflate"), &bytes).expect("byte by byte");
        assert_eq!(parse(&out), expect);
    }

    #[test]
    fn a_fragmented_compressed_message_with_a_ping_inside() {
        let message = text(20_000);
        let compressed = compress(&mut compressor(), &message);
        let third = compressed.len() / 3;
        let mut stream = frame(false, true, TEXT, &compressed[..third]);
        stream.extend(frame(true, false, PING, b"ping"));
        stream.extend(frame(false, false, CONT, &compressed[third..2 * third]));
        stream.extend(frame(false, false, CONT, &[]));
        stream.extend(frame(true, false, CONT, &compressed[2 * third..]));
        for step in [1, 5, 64, 4096, stream.len()] {
            let pieces: Vec<&[u8]> = stream.chunks(step).collect();
            let out = run(&mut inflater("permessage-deflate"), &pieces).expect("inflates");
            let frames = parse(&out);
            let opcodes: Vec<(bool, u8, u8)> = frames.iter().map(|f| (f.0, f.1, f.2)).collect();
            assert_eq!(
                opcodes,
                [(false, 0, TEXT), (true, 0, PING), (false, 0, CONT), (false, 0, CONT), (true, 0, CONT)],
                "step {step}"
            );
            assert_eq!(frames[1].3, b"ping");
            let joined: Vec<u8> = frames.iter().filter(|f| f.2 != PING).flat_map(|f| f.3.clone()).collect();
            assert_eq!(joined, message, "step {step}");
        }
    }

    #[test]
    fn context_is_kept_across_messages_unless_the_client_resets_it() {
        let message = noise(2_000);
        let mut c = compressor();
        let first = compress(&mut c, &message);
        let second = compress(&mut c, &message);
        assert!(second.len() < first.len() / 4, "the second refers back to the first");
        let mut stream = frame(true, true, TEXT, &first);
        stream.extend(frame(true, true, TEXT, &second));
        let mut keeps = inflater("permessage-deflate; client_max_window_bits");
        let out = run(&mut keeps, &[&stream]).expect("inflates");
        assert_eq!(parse(&out), vec![(true, 0, TEXT, message.clone()), (true, 0, TEXT, message.clone())]);
        assert!(keeps.holds_decoder(), "the context is kept for the next message");
        // A client that agreed to reset compresses each message alone; the
        // server keeps nothing between them...
        let mut resets = inflater("permessage-deflate; client_no_context_takeover");
        let alone = compress(&mut compressor(), &message);
        let mut fresh = frame(true, true, TEXT, &alone);
        fresh.extend(frame(true, true, TEXT, &alone));
        let out = run(&mut resets, &[&fresh]).expect("inflates");
        assert_eq!(parse(&out).len(), 2);
        assert!(!resets.holds_decoder(), "no inflate state held between messages");
        // ...so a message that refers back fails.
        let mut resets = inflater("permessage-deflate; client_no_context_takeover");
        assert_eq!(run(&mut resets, &[&stream]), Err(Violation::BadCompression));
    }

    #[test]
    fn a_bomb_stops_at_the_limit_without_allocating_past_it() {
        // 8 MiB of zeros in about 8 KiB.
        let mut c = compressor();
        let bomb = compress(&mut c, &vec![0u8; 8 << 20]);
        assert!(bomb.len() < 10_000, "{}", bomb.len());
        let wire = frame(true, true, TEXT, &bomb);
        let mut i = inflater("permessage-deflate");
        let mut out = Vec::new();
        let mut result = Ok(());
        for piece in wire.chunks(100) {
            result = i.feed(piece, &mut out);
            assert!(i.payload.capacity() <= MAX + 1, "{}", i.payload.capacity());
            if result.is_err() {
                break;
            }
        }
        assert_eq!(result, Err(Violation::InflatedTooLarge { max: MAX }));
        assert_eq!(Violation::InflatedTooLarge { max: MAX }.close_code(), 1009);
        assert!(out.is_empty(), "nothing of it was passed on");
        assert_eq!(i.feed(b"\x81\x80", &mut out), Err(Violation::InflatedTooLarge { max: MAX }), "it sticks");
        // The limit counts the whole message, over its fragments.
        let over = compress(&mut compressor(), &text(MAX + 1));
        let (a, b) = over.split_at(over.len() / 2);
        let mut stream = frame(false, true, TEXT, a);
        stream.extend(frame(true, false, CONT, b));
        assert_eq!(run(&mut inflater("permessage-deflate"), &[&stream]), Err(Violation::InflatedTooLarge { max: MAX }));
        // Exactly the limit passes.
        let full = frame(true, true, TEXT, &compress(&mut compressor(), &vec![b'a'; MAX]));
        let out = run(&mut inflater("permessage-deflate"), &[&full]).expect("at the limit");
        assert_eq!(parse(&out)[0].3.len(), MAX);
    }

    #[test]
    fn a_compressed_frame_longer_than_the_limit_is_refused_at_its_header() {
        let mut header = vec![0xC1, 0x80 | 127];
        header.extend_from_slice(&(MAX as u64 + 1).to_be_bytes());
        header.extend_from_slice(&KEY);
        assert_eq!(run(&mut inflater("permessage-deflate"), &[&header]), Err(Violation::InflatedTooLarge { max: MAX }));
    }

    #[test]
    fn corrupt_data_is_a_protocol_error() {
        let wire = frame(true, true, TEXT, &[0xff; 40]);
        let v = run(&mut inflater("permessage-deflate"), &[&wire]).expect_err("refused");
        assert_eq!(v, Violation::BadCompression);
        assert_eq!(v.close_code(), 1002);
    }

    #[test]
    fn rsv1_on_control_or_continuation_frames_is_left_for_tungstenite() {
        let mut stream = frame(true, true, PING, b"x");
        stream.extend(frame(false, false, TEXT, b"a"));
        stream.extend(frame(true, true, CONT, b"b"));
        let out = run(&mut inflater("permessage-deflate"), &[&stream]).expect("passed on");
        assert_eq!(out, stream, "unchanged, RSV1 and all");
    }

    #[test]
    fn an_empty_compressed_message() {
        let empty = compress(&mut compressor(), b"");
        assert_eq!(empty, [0x00], "RFC 7692 §7.2.3.6");
        let wire = frame(true, true, TEXT, &empty);
        let out = run(&mut inflater("permessage-deflate"), &[&wire]).expect("inflates");
        assert_eq!(parse(&out), vec![(true, 0, TEXT, Vec::new())]);
        // A message whose stream ends with BFINAL; the next starts anew.
        let mut c = compressor();
        let mut ended = Vec::with_capacity(64);
        c.compress_vec(b"done", &mut ended, FlushCompress::Finish).expect("compress");
        let mut stream = frame(true, true, TEXT, &ended);
        stream.extend(frame(true, true, TEXT, &compress(&mut compressor(), b"again")));
        let out = run(&mut inflater("permessage-deflate"), &[&stream]).expect("inflates");
        let payloads: Vec<Vec<u8>> = parse(&out).into_iter().map(|f| f.3).collect();
        assert_eq!(payloads, [b"done".to_vec(), b"again".to_vec()]);
    }

    /// tungstenite over the layer reads compressed messages as text and
    /// still refuses RSV1 where it means nothing.
    #[tokio::test]
    async fn tungstenite_over_the_layer() {
        let (server_io, mut client) = tokio::io::duplex(1 << 16);
        let recorded = Recorded::default();
        let io = InflateIo::new(server_io, Some(inflater("permessage-deflate")), recorded.clone());
        let config = WebSocketConfig::default().read_buffer_size(512).max_message_size(Some(MAX));
        let mut server = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        let wait = Duration::from_secs(30);
        let message = text(3_000);
        client.write_all(&frame(true, true, TEXT, &compress(&mut compressor(), &message))).await.expect("write");
        let got = tokio::time::timeout(wait, server.next()).await.expect("in time").expect("a message");
        assert_eq!(got.expect("no error"), tungstenite::Message::text(String::from_utf8(message).expect("utf8")));
        client.write_all(&frame(true, true, PING, b"x")).await.expect("write");
        let got = tokio::time::timeout(wait, server.next()).await.expect("in time").expect("an item");
        assert!(matches!(got, Err(tungstenite::Error::Protocol(_))), "{got:?}");
        assert_eq!(recorded.get(), None);
    }

    /// A bomb reaches tungstenite as the recorded violation.
    #[tokio::test]
    async fn a_bomb_through_the_layer_is_recorded() {
        let (server_io, mut client) = tokio::io::duplex(1 << 16);
        let recorded = Recorded::default();
        let io = InflateIo::new(server_io, Some(inflater("permessage-deflate")), recorded.clone());
        let mut server = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
        let bomb = compress(&mut compressor(), &vec![b'z'; 4 << 20]);
        client.write_all(&frame(true, true, TEXT, &bomb)).await.expect("write");
        let got = server.next().await.expect("an item");
        match got {
            Err(tungstenite::Error::Io(e)) => {
                assert_eq!(Violation::from_io(&e), Some(Violation::InflatedTooLarge { max: MAX }))
            }
            other => panic!("expected the layer's error, got {other:?}"),
        }
        assert_eq!(recorded.get(), Some(Violation::InflatedTooLarge { max: MAX }));
    }
}
