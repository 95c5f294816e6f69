//! A guard on the client-to-server bytes of a WebSocket: it reads the frame
//! headers (RFC 6455 §5.2) as they stream past and stops a connection whose
//! fragmented message has more than `max_fragments` frames, something
//! tungstenite does not limit (a message of 100 000 empty continuation
//! frames is otherwise accepted, each costing a wake-up and a frame parse).
//!
//! [`FrameScanner`] is the pure part: bytes in, verdict out, payloads skipped
//! by counting, never copied. [`GuardedIo`] wraps the upgraded connection and
//! feeds the scanner every byte read. What a malformed header means (a
//! reserved opcode, a 64-bit length with its top bit set, a continuation
//! with no message open) is tungstenite's to report: the scanner only keeps
//! its place in the stream and counts. It knows nothing of messages' content,
//! of the server-to-client direction, or of what the caller does on a
//! violation beyond the close code it suggests.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::OnceLock;
use std::task::Context;
use std::task::Poll;

use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;

/// Close code 1008, "policy violation" (RFC 6455 §7.4.1).
pub const CLOSE_POLICY: u16 = 1008;

/// Longest frame header: 2 bytes, a 64-bit length, a 4-byte mask key.
const MAX_HEADER: usize = 14;

/// Why a connection must be closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Violation {
    /// A fragmented message reached more frames than allowed.
    #[error("a fragmented message has more than {max} frames")]
    TooManyFragments {
        /// The configured `max_fragments`.
        max: usize,
    },
    /// A compressed message inflates past the frame limit, or one
    /// compressed frame is itself longer than it ([`super::ws_inflate`]).
    #[error("a compressed message inflates past {max} bytes")]
    InflatedTooLarge {
        /// The configured `frame_bytes`.
        max: usize,
    },
    /// A compressed message is not a valid deflate stream.
    #[error("a compressed message is not valid deflate data")]
    BadCompression,
}

impl Violation {
    /// The WebSocket close code to send for it.
    pub fn close_code(&self) -> u16 {
        match self {
            Violation::TooManyFragments { .. } => CLOSE_POLICY,
            Violation::InflatedTooLarge { .. } => palaver_protocol::close::TOO_LARGE,
            Violation::BadCompression => palaver_protocol::close::PROTOCOL_ERROR,
        }
    }

    /// The violation inside an I/O error from [`GuardedIo`], also when
    /// tungstenite hands that error back.
    pub fn from_io(error: &io::Error) -> Option<Violation> {
        error.get_ref().and_then(|inner| inner.downcast_ref::<Violation>()).copied()
    }
}

/// Reads frame headers out of a client-to-server byte stream, fed in pieces
/// of any size, and counts the frames of the current fragmented message.
#[derive(Debug, Clone)]
pub struct FrameScanner {
    max_fragments: usize,
    /// The header being collected; `have` bytes of it so far.
    header: [u8; MAX_HEADER],
    have: usize,
    /// Payload bytes of the current frame still to pass.
    skip: u64,
    /// Frames of the open fragmented message; 0 when none is open.
    fragments: usize,
    /// Once set, every later call answers it.
    violation: Option<Violation>,
    /// Bytes scanned and headers completed so far.
    position: u64,
    frames: u64,
}

impl FrameScanner {
    /// A scanner at the start of a stream, allowing messages of up to
    /// `max_fragments` frames.
    pub fn new(max_fragments: usize) -> Self {
        Self {
            max_fragments,
            header: [0; MAX_HEADER],
            have: 0,
            skip: 0,
            fragments: 0,
            violation: None,
            position: 0,
            frames: 0,
        }
    }

    /// Scans the next bytes of the stream. On a violation it stops at the
    /// offending frame's header and answers the same error from then on.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), Violation> {
        if let Some(v) = self.violation {
            return Err(v);
        }
        while !bytes.is_empty() {
            if self.skip > 0 {
                let n = usize::try_from(self.skip).map_or(bytes.len(), |skip| skip.min(bytes.len()));
                self.skip -= n as u64;
                self.position += n as u64;
                bytes = &bytes[n..];
                continue;
            }
            let take = (self.needed() - self.have).min(bytes.len());
            self.header[self.have..self.have + take].copy_from_slice(&bytes[..take]);
            self.have += take;
            self.position += take as u64;
            bytes = &bytes[take..];
            // The length byte may have just shown that more header follows.
            if self.have == self.needed() {
                self.end_header()?;
            }
        }
        Ok(())
    }

    /// Bytes scanned so far (the offending header's last byte included).
    pub fn position(&self) -> u64 {
        self.position
    }

    /// The violation found, if any.
    pub fn violation(&self) -> Option<Violation> {
        self.violation
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

    fn end_header(&mut self) -> Result<(), Violation> {
        let fin = self.header[0] & 0x80 != 0;
        let opcode = self.header[0] & 0x0F;
        // A 64-bit length with the top bit set is tungstenite's error to
        // report; skipping "forever" just keeps the scanner out of the way.
        self.skip = match self.header[1] & 0x7F {
            126 => u64::from(u16::from_be_bytes([self.header[2], self.header[3]])),
            127 => {
                let mut len = [0u8; 8];
                len.copy_from_slice(&self.header[2..10]);
                u64::from_be_bytes(len)
            }
            short => u64::from(short),
        };
        self.have = 0;
        self.frames += 1;
        match opcode {
            // Continuation: one more frame of the open message. One with no
            // message open is malformed, for tungstenite to refuse.
            0x0 if self.fragments > 0 => {
                self.fragments += 1;
                if self.fragments > self.max_fragments {
                    let v = Violation::TooManyFragments { max: self.max_fragments };
                    self.violation = Some(v);
                    return Err(v);
                }
                if fin {
                    self.fragments = 0;
                }
            }
            // Text or binary: a message of one frame, or the first of several.
            0x1 | 0x2 => self.fragments = if fin { 0 } else { 1 },
            // Control frames may come between fragments and change nothing;
            // reserved opcodes are tungstenite's to refuse.
            _ => {}
        }
        Ok(())
    }
}

/// Where a [`GuardedIo`] records its violation, readable after the I/O
/// object has been handed to tungstenite.
#[derive(Debug, Clone, Default)]
pub struct Recorded(Arc<OnceLock<Violation>>);

impl Recorded {
    /// The violation that stopped the connection, if one did.
    pub fn get(&self) -> Option<Violation> {
        self.0.get().copied()
    }

    /// Records `v` unless a violation was recorded already.
    pub fn record(&self, v: Violation) {
        let _ = self.0.set(v);
    }
}

/// An upgraded connection whose incoming bytes pass through a
/// [`FrameScanner`]; writes go straight through.
#[derive(Debug)]
pub struct GuardedIo<T> {
    inner: T,
    scanner: FrameScanner,
    recorded: Recorded,
}

impl<T> GuardedIo<T> {
    /// Guards `io`, allowing messages of up to `max_fragments` frames.
    pub fn new(io: T, max_fragments: usize) -> Self {
        Self { inner: io, scanner: FrameScanner::new(max_fragments), recorded: Recorded::default() }
    }

    /// A handle on the violation, to keep before the I/O moves into tungstenite.
    pub fn recorded(&self) -> Recorded {
        self.recorded.clone()
    }

    /// The violation found, if any.
    pub fn violation(&self) -> Option<Violation> {
        self.scanner.violation()
    }

    /// The wrapped connection.
    pub fn into_inner(self) -> T {
        self.inner
    }
}

/// The I/O error carrying `v`, found again by [`Violation::from_io`].
pub fn violation_error(v: Violation) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, v)
}

impl<T: AsyncRead + Unpin> AsyncRead for GuardedIo<T> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // After a violation nothing more is read from the client.
        if let Some(v) = this.scanner.violation() {
            return Poll::Ready(Err(violation_error(v)));
        }
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {}
            other => return other,
        }
        if let Err(v) = this.scanner.feed(&buf.filled()[before..]) {
            this.recorded.record(v);
            // The connection is closing on policy: none of these bytes, the
            // frames before the offending one included, reach tungstenite.
            buf.set_filled(before);
            return Poll::Ready(Err(violation_error(v)));
        }
        Poll::Ready(Ok(()))
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for GuardedIo<T> {
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

    use futures_util::SinkExt;
    use futures_util::StreamExt;
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    use tokio_tungstenite::WebSocketStream;
    use tokio_tungstenite::tungstenite;
    use tokio_tungstenite::tungstenite::protocol::Role;

    use super::*;

    const CONT: u8 = 0x0;
    const TEXT: u8 = 0x1;
    const BINARY: u8 = 0x2;
    const CLOSE: u8 = 0x8;
    const PING: u8 = 0x9;
    const PONG: u8 = 0xA;
    const WAIT: Duration = Duration::from_secs(30);

    /// One frame as a client (masked) or server (unmasked) would send it.
    /// The payload is all zero bytes: were the scanner to lose its place and
    /// read payload as headers, it would see empty non-final continuations
    /// and count them.
    fn frame(fin: bool, opcode: u8, masked: bool, len: usize) -> Vec<u8> {
        let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
        let mask_bit = if masked { 0x80 } else { 0 };
        match len {
            0..=125 => f.push(mask_bit | len as u8),
            126..=0xFFFF => {
                f.push(mask_bit | 126);
                f.extend_from_slice(&(len as u16).to_be_bytes());
            }
            _ => {
                f.push(mask_bit | 127);
                f.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        if masked {
            f.extend_from_slice(&[0x11, 0x22, 0x33, 0x44]);
        }
        f.resize(f.len() + len, 0);
        f
    }

    /// A fragmented message of `frames` frames, each `len` bytes.
    fn message(frames: usize, masked: bool, len: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for i in 0..frames {
            let opcode = if i == 0 { TEXT } else { CONT };
            out.extend(frame(i + 1 == frames, opcode, masked, len));
        }
        out
    }

    /// What a scanner ends in after `stream`, fed in the given pieces.
    fn outcome(max: usize, pieces: &[&[u8]]) -> (Result<(), Violation>, u64, u64, usize) {
        let mut s = FrameScanner::new(max);
        let mut result = Ok(());
        for piece in pieces {
            result = s.feed(piece);
            if result.is_err() {
                break;
            }
        }
        (result, s.position, s.frames, s.fragments)
    }

    /// A stream mixing every length encoding, masked and not, with control
    /// frames inside a fragmented message.
    fn mixed_stream() -> (Vec<u8>, u64) {
        let mut s = Vec::new();
        let mut frames = 0;
        for masked in [true, false] {
            for len in [0, 1, 125, 126, 127, 65_535, 65_536, 70_000] {
                s.extend(frame(true, BINARY, masked, len));
                frames += 1;
            }
            s.extend(frame(false, TEXT, masked, 126));
            s.extend(frame(true, PING, masked, 125));
            s.extend(frame(false, CONT, masked, 65_536));
            s.extend(frame(true, PONG, masked, 0));
            s.extend(frame(true, CONT, masked, 3));
            frames += 5;
        }
        s.extend(frame(true, CLOSE, true, 2));
        (s, frames + 1)
    }

    #[test]
    fn every_length_encoding_is_followed_across_every_split() {
        let (stream, frames) = mixed_stream();
        let whole = outcome(3, &[&stream]);
        assert_eq!(whole, (Ok(()), stream.len() as u64, frames, 0), "in one piece");
        for cut in 0..=stream.len() {
            let (a, b) = stream.split_at(cut);
            assert_eq!(outcome(3, &[a, b]), whole, "split at byte {cut}");
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(outcome(3, &bytes), whole, "one byte at a time");
        let sevens: Vec<&[u8]> = stream.chunks(7).collect();
        assert_eq!(outcome(3, &sevens), whole, "seven bytes at a time");
    }

    #[test]
    fn headers_split_inside_their_extended_length_and_mask() {
        // Three cuts at every pair of positions within the longest header.
        let f = frame(false, BINARY, true, 70_000);
        let mut stream = f.clone();
        stream.extend(frame(true, CONT, true, 0));
        for i in 0..MAX_HEADER {
            for j in i..MAX_HEADER {
                let pieces = [&stream[..i], &stream[i..j], &stream[j..]];
                assert_eq!(outcome(2, &pieces), (Ok(()), stream.len() as u64, 2, 0), "cuts at {i} and {j}");
            }
        }
    }

    #[test]
    fn exactly_max_fragments_pass_and_one_more_is_refused() {
        for max in [1, 2, 5, 64] {
            for masked in [true, false] {
                let ok = message(max, masked, 3);
                let mut s = FrameScanner::new(max);
                assert_eq!(s.feed(&ok), Ok(()), "max={max}: {max} frames");
                assert_eq!(s.fragments, 0, "the message ended");
                // Counting starts again for the next message.
                assert_eq!(s.feed(&ok), Ok(()), "max={max}: a second message");
                let too_many = message(max + 1, masked, 3);
                let mut s = FrameScanner::new(max);
                assert_eq!(
                    s.feed(&too_many),
                    Err(Violation::TooManyFragments { max }),
                    "max={max}: {} frames",
                    max + 1
                );
                // It stopped at the last frame's header, before its payload.
                let last = frame(true, CONT, masked, 3);
                let header = last.len() - 3;
                assert_eq!(s.position, (too_many.len() - last.len() + header) as u64);
            }
        }
        // A message of one frame never counts as fragmented.
        let mut s = FrameScanner::new(1);
        for _ in 0..1000 {
            assert_eq!(s.feed(&frame(true, TEXT, true, 10)), Ok(()));
        }
    }

    #[test]
    fn control_frames_between_fragments_do_not_count() {
        let max = 3;
        let mut stream = frame(false, TEXT, true, 5);
        for _ in 0..50 {
            stream.extend(frame(true, PING, true, 4));
            stream.extend(frame(true, PONG, true, 0));
        }
        stream.extend(frame(false, CONT, true, 5));
        stream.extend(frame(true, PING, true, 125));
        stream.extend(frame(true, CONT, true, 5));
        assert_eq!(outcome(max, &[&stream]).0, Ok(()), "3 data frames and 102 control frames");
        let mut more = frame(false, TEXT, true, 1);
        for _ in 0..max {
            more.extend(frame(true, PING, true, 0));
            more.extend(frame(false, CONT, true, 1));
        }
        assert_eq!(outcome(max, &[&more]).0, Err(Violation::TooManyFragments { max }));
    }

    #[test]
    fn a_flood_of_empty_continuations_is_stopped_at_max_plus_one() {
        let max = 64;
        let mut stream = frame(false, TEXT, true, 0);
        for _ in 0..100_000 {
            stream.extend(frame(false, CONT, true, 0));
        }
        let mut s = FrameScanner::new(max);
        let v = s.feed(&stream).expect_err("refused");
        assert_eq!(v, Violation::TooManyFragments { max });
        assert_eq!(v.close_code(), 1008);
        // Six bytes per empty masked frame; nothing past frame max + 1 was looked at.
        assert_eq!(s.position, 6 * (max as u64 + 1));
        assert_eq!(s.frames, max as u64 + 1);
        assert_eq!(s.feed(&stream), Err(v), "the verdict sticks");
        assert_eq!(s.position, 6 * (max as u64 + 1), "and nothing more is scanned");
    }

    #[test]
    fn malformed_headers_are_left_to_tungstenite() {
        // Reserved opcodes, a continuation with no message open, a text
        // frame inside an open message: counted as nothing, no violation.
        let mut stream = Vec::new();
        for opcode in [0x3, 0x7, 0xB, 0xF] {
            stream.extend(frame(false, opcode, true, 2));
        }
        for _ in 0..10 {
            stream.extend(frame(false, CONT, true, 0));
        }
        assert_eq!(outcome(1, &[&stream]), (Ok(()), stream.len() as u64, 14, 0));
        let mut restart = frame(false, TEXT, true, 0);
        restart.extend(frame(false, TEXT, true, 0));
        assert_eq!(outcome(1, &[&restart]).0, Ok(()), "a new data frame restarts the count");
        // A 64-bit length with its top bit set: the scanner just skips.
        let mut huge = vec![0x82, 0x80 | 127];
        huge.extend_from_slice(&u64::MAX.to_be_bytes());
        huge.extend_from_slice(&[1, 2, 3, 4]);
        huge.extend(message(10, true, 0));
        assert_eq!(outcome(1, &[&huge]), (Ok(()), huge.len() as u64, 1, 0));
    }

    /// A reader serving `data` a few bytes per read, counting what it served.
    struct Trickle {
        data: Vec<u8>,
        at: usize,
        step: usize,
        reads: usize,
    }

    impl AsyncRead for Trickle {
        fn poll_read(mut self: Pin<&mut Self>, _: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
            let n = self.step.min(buf.remaining()).min(self.data.len() - self.at);
            let at = self.at;
            buf.put_slice(&self.data[at..at + n]);
            self.at += n;
            self.reads += 1;
            Poll::Ready(Ok(()))
        }
    }

    #[tokio::test]
    async fn the_guard_passes_good_bytes_through_unchanged() {
        let (stream, _) = mixed_stream();
        let trickle = Trickle { data: stream.clone(), at: 0, step: 1000, reads: 0 };
        let mut io = GuardedIo::new(trickle, 3);
        let mut out = Vec::new();
        io.read_to_end(&mut out).await.expect("no violation");
        assert_eq!(out, stream);
        assert_eq!(io.violation(), None);
        assert_eq!(io.recorded().get(), None);
    }

    #[tokio::test]
    async fn the_guard_stops_reading_at_the_offending_frame() {
        let max = 64;
        let mut stream = frame(false, TEXT, true, 0);
        for _ in 0..100_000 {
            stream.extend(frame(false, CONT, true, 0));
        }
        let total = stream.len();
        let mut io = GuardedIo::new(Trickle { data: stream, at: 0, step: 7, reads: 0 }, max);
        let recorded = io.recorded();
        let mut buf = vec![0u8; 4096];
        let mut passed = 0;
        let error = loop {
            match io.read(&mut buf).await {
                Ok(0) => panic!("the whole flood was read"),
                Ok(n) => passed += n,
                Err(e) => break e,
            }
        };
        assert_eq!(error.kind(), io::ErrorKind::InvalidData);
        let v = Violation::from_io(&error).expect("the inner error is the violation");
        assert_eq!(v, Violation::TooManyFragments { max });
        assert_eq!(v.close_code(), CLOSE_POLICY);
        assert_eq!(recorded.get(), Some(v));
        let served = io.inner.at;
        // The read that found it brought at most one 7-byte piece past the
        // offending header; the bytes of that read were not passed on.
        assert!(served <= 6 * (max + 1) + 7, "served {served} of {total} bytes");
        assert!(passed < served, "the offending read was withheld: {passed} of {served}");
        let reads = io.inner.reads;
        let again = io.read(&mut buf).await.expect_err("still refused");
        assert_eq!(Violation::from_io(&again), Some(v));
        assert_eq!(io.inner.reads, reads, "nothing more was read from the client");
    }

    #[tokio::test]
    async fn writes_go_straight_through() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut io = GuardedIo::new(a, 4);
        io.write_all(b"server bytes").await.expect("write");
        io.flush().await.expect("flush");
        let mut got = [0u8; 12];
        b.read_exact(&mut got).await.expect("read");
        assert_eq!(&got, b"server bytes");
        io.shutdown().await.expect("shutdown");
    }

    /// tungstenite over the guard: fragmented messages within the limit are
    /// assembled as usual; beyond it the read fails with the violation inside.
    #[tokio::test]
    async fn tungstenite_over_the_guard() {
        let max = 4;
        let (server_io, mut client) = tokio::io::duplex(1 << 16);
        let mut server = WebSocketStream::from_raw_socket(GuardedIo::new(server_io, max), Role::Server, None).await;
        let mut within = Vec::new();
        for (i, part) in ["ab", "cd", "ef", "gh"].iter().enumerate() {
            let opcode = if i == 0 { TEXT } else { CONT };
            within.extend(masked_frame(i == 3, opcode, part.as_bytes()));
        }
        client.write_all(&within).await.expect("client write");
        let got = tokio::time::timeout(WAIT, server.next()).await.expect("in time").expect("a message");
        assert_eq!(got.expect("no error"), tungstenite::Message::text("abcdefgh"));
        server.send(tungstenite::Message::text("ok")).await.expect("the write side works");
        let mut beyond = Vec::new();
        for i in 0..=max {
            let opcode = if i == 0 { TEXT } else { CONT };
            beyond.extend(masked_frame(i == max, opcode, b"x"));
        }
        client.write_all(&beyond).await.expect("client write");
        let got = tokio::time::timeout(WAIT, server.next()).await.expect("in time").expect("an item");
        match got {
            Err(tungstenite::Error::Io(e)) => {
                assert_eq!(Violation::from_io(&e), Some(Violation::TooManyFragments { max }), "{e}")
            }
            other => panic!("expected the guard's I/O error, got {other:?}"),
        }
    }

    /// A client frame with a real mask applied.
    fn masked_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let key = [0x37, 0xfa, 0x21, 0x3d];
        let mut f = frame(fin, opcode, true, 0);
        f.truncate(2);
        f[1] |= payload.len() as u8;
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        f
    }
}
