//! WebSocket permessage-deflate (docs/protocol.md, "Wire"), over a raw TCP
//! socket so that every byte of the handshake and the frames is seen:
//! negotiation, compressed commands and events, one compression per event
//! whatever the number of recipients, a deflate bomb closed with 1009
//! without the node's memory growing, and plain frames for a client that
//! offers nothing.

use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use anyhow::ensure;
use flate2::Compress;
use flate2::Compression;
use flate2::Decompress;
use flate2::FlushCompress;
use flate2::FlushDecompress;
use palaver_client::Visibility;
use palaver_testkit::Node;
use palaver_testkit::User;
use palaver_testkit::WAIT;
use serde_json::Value;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

const TEXT: u8 = 0x1;
const CONT: u8 = 0x0;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
/// What a sync flush ends with, removed on the wire (RFC 7692 §7.2.1).
const TAIL: [u8; 4] = [0x00, 0x00, 0xff, 0xff];
const OFFER: &str = "permessage-deflate; client_max_window_bits";

/// The test's account, made the one way the kit makes them (kept in one
/// place, as the registration rules may change).
async fn account(node: &Node, name: &str) -> Result<User> {
    node.user(name).await
}

/// One frame from the server.
#[derive(Debug)]
struct Frame {
    fin: bool,
    rsv1: bool,
    opcode: u8,
    payload: Vec<u8>,
}

/// A WebSocket client on a raw socket.
struct Raw {
    tcp: TcpStream,
    buf: Vec<u8>,
    /// The client's compressor, kept across messages (context takeover).
    compress: Compress,
}

impl Raw {
    /// Upgrades with a bearer token and, if given, an extension offer;
    /// answers the client and the response's `Sec-WebSocket-Extensions`.
    async fn open(node: &Node, user: &User, offer: Option<&str>) -> Result<(Raw, Option<String>)> {
        let mut tcp = TcpStream::connect(node.addr()).await?;
        let mut request = format!(
            "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Authorization: Bearer {}\r\n",
            node.addr(),
            user.token
        );
        if let Some(offer) = offer {
            request.push_str(&format!("Sec-WebSocket-Extensions: {offer}\r\n"));
        }
        request.push_str("\r\n");
        tcp.write_all(request.as_bytes()).await?;
        let mut buf = Vec::new();
        let end = loop {
            if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break at + 4;
            }
            let mut chunk = [0u8; 1024];
            let n = tokio::time::timeout(WAIT, tcp.read(&mut chunk)).await??;
            ensure!(n > 0, "closed during the handshake");
            buf.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(buf[..end].to_vec())?;
        ensure!(head.starts_with("HTTP/1.1 101"), "not upgraded: {head}");
        ensure!(head.contains("s3pPLMBiTxaQ9kYGzzhZRbK+xOo="), "bad accept key: {head}");
        let extensions = head
            .lines()
            .find_map(|l| l.split_once(':').filter(|(n, _)| n.eq_ignore_ascii_case("sec-websocket-extensions")))
            .map(|(_, v)| v.trim().to_string());
        let raw = Raw { tcp, buf: buf[end..].to_vec(), compress: Compress::new(Compression::default(), false) };
        Ok((raw, extensions))
    }

    /// Writes one masked frame.
    async fn send_frame(&mut self, fin: bool, rsv1: bool, opcode: u8, payload: &[u8]) -> Result<()> {
        let key = [0x12, 0x34, 0x56, 0x78];
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
        f.extend_from_slice(&key);
        f.extend(payload.iter().enumerate().map(|(i, b)| b ^ key[i % 4]));
        self.tcp.write_all(&f).await?;
        Ok(())
    }

    /// Sends a command compressed, in context with the ones before.
    async fn send_compressed(&mut self, command: &Value) -> Result<()> {
        let packed = deflate(&mut self.compress, command.to_string().as_bytes())?;
        self.send_frame(true, true, TEXT, &packed).await
    }

    /// Reads one frame.
    async fn frame(&mut self) -> Result<Frame> {
        loop {
            if self.buf.len() >= 2 {
                let (b0, b1) = (self.buf[0], self.buf[1]);
                ensure!(b1 & 0x80 == 0, "a masked frame from the server");
                let (len, at) = match b1 & 0x7F {
                    126 if self.buf.len() >= 4 => (u16::from_be_bytes([self.buf[2], self.buf[3]]) as usize, 4),
                    127 if self.buf.len() >= 10 => {
                        (u64::from_be_bytes(self.buf[2..10].try_into().context("8 bytes")?) as usize, 10)
                    }
                    126 | 127 => (usize::MAX, 0),
                    n => (n as usize, 2),
                };
                if at > 0 && self.buf.len() >= at + len {
                    let payload = self.buf[at..at + len].to_vec();
                    self.buf.drain(..at + len);
                    return Ok(Frame { fin: b0 & 0x80 != 0, rsv1: b0 & 0x40 != 0, opcode: b0 & 0x0F, payload });
                }
            }
            let mut chunk = [0u8; 8192];
            let n = tokio::time::timeout(WAIT, self.tcp.read(&mut chunk)).await.context("no frame in time")??;
            ensure!(n > 0, "the connection closed");
            self.buf.extend_from_slice(&chunk[..n]);
        }
    }

    /// The next text message (pings skipped): whether it came compressed,
    /// and its JSON.
    async fn message(&mut self) -> Result<(bool, Value)> {
        loop {
            let f = self.frame().await?;
            match f.opcode {
                PING => continue,
                TEXT => {
                    ensure!(f.fin, "the server sends whole messages");
                    let text = if f.rsv1 { inflate(&f.payload)? } else { f.payload };
                    return Ok((f.rsv1, serde_json::from_slice(&text)?));
                }
                CLOSE => bail!("closed: {:?}", close_code(&f)),
                other => bail!("unexpected opcode {other}"),
            }
        }
    }

    /// The next message answering command `id`.
    async fn reply(&mut self, id: u64) -> Result<Value> {
        loop {
            let (_, v) = self.message().await?;
            if v["id"] == id {
                return Ok(v);
            }
        }
    }

    /// The next `message` event, and whether it came compressed.
    async fn event(&mut self) -> Result<(bool, Value)> {
        loop {
            let (compressed, v) = self.message().await?;
            if v["type"] == "message" {
                return Ok((compressed, v));
            }
        }
    }

    /// The code of the close frame the server sends next (other frames skipped).
    async fn close(&mut self) -> Result<u16> {
        loop {
            let f = self.frame().await?;
            if f.opcode == CLOSE {
                return close_code(&f).context("a close frame without a code");
            }
        }
    }
}

fn close_code(f: &Frame) -> Option<u16> {
    (f.payload.len() >= 2).then(|| u16::from_be_bytes([f.payload[0], f.payload[1]]))
}

/// `data` compressed with `c`, sync-flushed, the tail removed.
fn deflate(c: &mut Compress, data: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::with_capacity(data.len() / 2 + 64);
    let mut at = 0;
    loop {
        let before = c.total_in();
        c.compress_vec(&data[at..], &mut out, FlushCompress::Sync)?;
        at += (c.total_in() - before) as usize;
        if at == data.len() && out.len() < out.capacity() {
            break;
        }
        out.reserve(out.capacity());
    }
    ensure!(out.ends_with(&TAIL));
    out.truncate(out.len() - TAIL.len());
    Ok(out)
}

/// A server message inflated on its own (the server agreed to
/// server_no_context_takeover).
fn inflate(payload: &[u8]) -> Result<Vec<u8>> {
    let mut d = Decompress::new(false);
    let mut input = payload.to_vec();
    input.extend_from_slice(&TAIL);
    let mut out = Vec::with_capacity(1 << 20);
    d.decompress_vec(&input, &mut out, FlushDecompress::Sync)?;
    Ok(out)
}

async fn deflate_total(node: &Node) -> Result<u64> {
    let metrics = node.http().request(reqwest::Method::GET, "/metrics", None).await?.text;
    Ok(metrics
        .lines()
        .find_map(|l| l.strip_prefix("palaver_ws_deflate_total "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

/// Resident memory of a process, in bytes.
fn rss(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .context("no VmRSS")?;
    Ok(kb * 1024)
}

fn body(len: usize) -> String {
    "the quick brown fox jumps over the lazy dog ".chars().cycle().take(len).collect()
}

#[tokio::test]
async fn commands_and_events_go_compressed_and_each_event_is_compressed_once() -> Result<()> {
    let node = Node::start().await?;
    let alice = account(&node, "alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    let (mut ws, extensions) = Raw::open(&node, &alice, Some(OFFER)).await?;
    assert_eq!(extensions.as_deref(), Some("permessage-deflate; server_no_context_takeover"));
    ws.send_compressed(&json!({"type": "subscribe", "id": 1, "room": "lobby"})).await?;
    let (compressed, ok) = ws.message().await?;
    assert_eq!(ok["type"], "ok", "{ok}");
    assert!(!compressed, "a small reply goes plain");
    // A second compressed command refers back to the first (context takeover).
    let text = body(1_000);
    ws.send_compressed(&json!({"type": "send", "id": 2, "room": "lobby", "body": text, "client_id": "c1"})).await?;
    // The ack and the event, in either order.
    let (mut ack, mut event) = (None, None);
    while ack.is_none() || event.is_none() {
        let (compressed, v) = ws.message().await?;
        if v["id"] == 2 {
            ack = Some(v);
        } else if v["type"] == "message" {
            assert!(compressed, "a 1 KB event goes compressed");
            event = Some(v);
        }
    }
    assert_eq!(ack.as_ref().map(|a| &a["seq"]), Some(&json!(1)), "{ack:?}");
    assert_eq!(event.as_ref().map(|e| &e["body"]), Some(&json!(text)));

    // Three more recipients; one message; one compression.
    let mut others = Vec::new();
    for i in 0..3 {
        let (mut ws, _) = Raw::open(&node, &alice, Some(OFFER)).await?;
        ws.send_frame(true, false, TEXT, json!({"type": "subscribe", "id": 1, "room": "lobby"}).to_string().as_bytes())
            .await?;
        assert_eq!(ws.reply(1).await?["last_seq"], 1, "socket {i}");
        others.push(ws);
    }
    let before = deflate_total(&node).await?;
    let text = body(2_000);
    alice.http.post_message("lobby", &text, "c2").await?;
    for ws in others.iter_mut().chain([&mut ws]) {
        let (compressed, event) = ws.event().await?;
        assert!(compressed);
        assert_eq!(event["seq"], 2);
        assert_eq!(event["body"], text.as_str());
    }
    let after = deflate_total(&node).await?;
    assert_eq!(after - before, 1, "one compression for four recipients");
    Ok(())
}

#[tokio::test]
async fn a_client_that_offers_nothing_gets_plain_frames() -> Result<()> {
    let node = Node::start().await?;
    let alice = account(&node, "alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    let (mut ws, extensions) = Raw::open(&node, &alice, None).await?;
    assert_eq!(extensions, None, "no extension header");
    ws.send_frame(true, false, TEXT, json!({"type": "subscribe", "id": 1, "room": "lobby"}).to_string().as_bytes())
        .await?;
    ws.reply(1).await?;
    alice.http.post_message("lobby", &body(2_000), "c1").await?;
    let (compressed, event) = ws.event().await?;
    assert!(!compressed);
    assert_eq!(event["seq"], 1);
    // An offer the server cannot honour is declined the same way.
    let (_, extensions) = Raw::open(&node, &alice, Some("permessage-deflate; server_max_window_bits=8")).await?;
    assert_eq!(extensions, None);
    // Without the extension, RSV1 is a protocol error.
    let packed = deflate(&mut ws.compress, b"{}")?;
    ws.send_frame(true, true, TEXT, &packed).await?;
    assert_eq!(ws.close().await?, 1002);
    Ok(())
}

#[tokio::test]
async fn a_deflate_bomb_closes_with_1009_and_the_node_stays_small() -> Result<()> {
    let node = Node::start().await?;
    let pid = node.pid().context("the node's pid")?;
    let alice = account(&node, "alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    // 1 GiB of zeros, compressed in context: about 1 MB of deflate data.
    let mut c = Compress::new(Compression::best(), false);
    let zeros = vec![0u8; 1 << 20];
    let mut bomb = Vec::with_capacity(2 << 20);
    for _ in 0..1024 {
        let before = c.total_in();
        c.compress_vec(&zeros, &mut bomb, FlushCompress::None)?;
        ensure!(c.total_in() - before == zeros.len() as u64, "the output buffer was big enough");
    }
    let (mut warm, _) = Raw::open(&node, &alice, Some(OFFER)).await?;
    warm.send_compressed(&json!({"type": "subscribe", "id": 1, "room": "lobby"})).await?;
    warm.reply(1).await?;
    let start = rss(pid)?;
    let mut peak = start;
    for round in 0..5 {
        let (mut ws, _) = Raw::open(&node, &alice, Some(OFFER)).await?;
        // Its first KiB, a compressed message's first fragment, inflates
        // to about 1 MiB: past frame_bytes (64 KiB), so the node stops
        // there and closes; the rest would never be read.
        ws.send_frame(false, true, TEXT, &bomb[..1024]).await?;
        assert_eq!(ws.close().await?, 1009, "round {round}");
        peak = peak.max(rss(pid)?);
    }
    // A whole bomb in one frame, 32 MiB of zeros in 32 KiB.
    let small_bomb = deflate(&mut Compress::new(Compression::best(), false), &vec![0u8; 32 << 20])?;
    assert!(small_bomb.len() < 64 * 1024, "{}", small_bomb.len());
    let (mut ws, _) = Raw::open(&node, &alice, Some(OFFER)).await?;
    ws.send_frame(true, true, TEXT, &small_bomb).await?;
    // The node stops reading mid-frame, so the close may come as a reset.
    if let Ok(code) = ws.close().await {
        assert_eq!(code, 1009);
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    peak = peak.max(rss(pid)?);
    assert!(peak - start < 8 << 20, "RSS grew {} KiB", (peak - start) / 1024);
    // The node is fine, and a fragment that does not inflate too far passes.
    let (mut ws, _) = Raw::open(&node, &alice, Some(OFFER)).await?;
    let send = json!({"type": "send", "id": 7, "room": "lobby", "body": body(500), "client_id": "after"}).to_string();
    let packed = deflate(&mut ws.compress, send.as_bytes())?;
    let (a, b) = packed.split_at(packed.len() / 2);
    ws.send_frame(false, true, TEXT, a).await?;
    ws.send_frame(true, false, CONT, b).await?;
    assert_eq!(ws.reply(7).await?["seq"], 1);
    eprintln!("node RSS {} KiB before the bombs, peak {} KiB", start / 1024, peak / 1024);
    Ok(())
}
