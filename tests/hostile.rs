//! Hostile clients against a real `palaver node` process: each test proves
//! that one bound holds, measured from outside the node (RssAnon in
//! `/proc/PID/status`, descriptors in `/proc/PID/fd`, the node's own TCP
//! socket in `/proc/net/tcp`, close codes and HTTP statuses), and prints
//! the figures it measured (`--nocapture` shows them).
//!
//! - A signed-in WebSocket that pipelines `history` commands and never
//!   reads: the node's memory stays within a bound (the outbound byte
//!   budget, default 1 MiB, and the history page cap, default 256 KiB),
//!   the socket is closed after the write timeout, its descriptor comes
//!   back, and other clients are served meanwhile.
//! - History pages are cut at `history_page_bytes` of JSON, with a cursor
//!   (`x-next-page` over HTTP, `next` over WebSocket) that walks the whole
//!   room forwards and backwards, every message exactly once, in order.
//! - An SSE client that never reads is disconnected after the write
//!   timeout; memory and descriptors come back.
//! - A fragmented message of 100 000 empty continuation frames is closed
//!   with 1008 (exactly `max_fragments` frames pass, one more does not).
//! - WebSocket upgrades compare `Origin` exactly (scheme, host, port) with
//!   the allow-list and `public_url`; `Host` plays no part.
//! - A subscriber of a busy room that never reads is closed with 1013 once
//!   its byte budget is full, while a reading subscriber gets every message.
//! - A subscriber that stops reading is let go after the write timeout even
//!   when its room then goes quiet (no later event to find it full).
//!
//! Linux only (it reads /proc). Every wait is bounded in time and count.

use std::net::Ipv4Addr;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use anyhow::ensure;
use futures_util::SinkExt;
use futures_util::StreamExt;
use palaver_client::History;
use palaver_client::Http;
use palaver_client::Visibility;
use palaver_client::Ws;
use palaver_client::WsOptions;
use palaver_testkit::Node;
use palaver_testkit::WAIT;
use palaver_testkit::config;
use palaver_testkit::eventually;
use palaver_testkit::process::socket_count;
use serde_json::Value;
use serde_json::json;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;

/// What the node's memory may grow by under one hostile client. The
/// client can make the node hold its outbound budget (1 MiB by default),
/// one history page (256 KiB) and one frame being written; the rest is
/// allocator and store-cache noise, and the search index's writer (32 MiB
/// arena, segments made and merged as messages arrive: 20-35 MiB at peak
/// while 8.6 MiB of messages are stored). Before the byte budget, the test of
/// case 1 grew the node by about 700 MB.
const RSS_GROWTH_KIB: u64 = 64 * 1024;
/// Beyond the write timeout, how long the node may take to let a stalled
/// socket go (a closing socket's own grace times and a busy 2-core box).
const CLOSE_MARGIN: Duration = Duration::from_secs(30);
/// Receive buffer of the clients that never read (the kernel doubles it).
const SMALL_RCVBUF: u32 = 4096;

// ----- what the node holds -----

/// Anonymous resident memory (RssAnon) of process `pid`, in KiB: what the
/// node allocated. Mapped files (the search index's segments) are left
/// out: those pages are the kernel's cache, dropped under pressure.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).context("reading /proc/PID/status")?;
    let line = status.lines().find(|l| l.starts_with("RssAnon:")).context("no RssAnon line")?;
    let kib = line.split_whitespace().nth(1).context("no RssAnon value")?;
    kib.parse().with_context(|| format!("RssAnon {kib:?}"))
}

/// CPU time of process `pid` so far (user + system), in clock ticks (1/100 s).
fn cpu_ticks(pid: u32) -> Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).context("reading /proc/PID/stat")?;
    // The command name may hold spaces: the fields after it follow the last ')'.
    let rest = stat.rsplit_once(')').context("no ')' in /proc/PID/stat")?.1;
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // Fields 14 and 15 of proc(5) are utime and stime; `rest` starts at field 3.
    let utime: u64 = fields.get(11).context("no utime")?.parse()?;
    let stime: u64 = fields.get(12).context("no stime")?.parse()?;
    Ok(utime + stime)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `/proc/net/tcp` writes an IPv4 address as the hex of its 32-bit value
/// in host byte order (little-endian here), then `:` and the port in hex.
fn parse_proc_addr(text: &str) -> Option<SocketAddr> {
    let (ip, port) = text.split_once(':')?;
    let ip = u32::from_str_radix(ip, 16).ok()?;
    let port = u16::from_str_radix(port, 16).ok()?;
    Some(SocketAddr::from((Ipv4Addr::from(ip.to_le_bytes()), port)))
}

/// The inode of the node's side of the TCP connection `client` → `node`.
fn socket_inode(node: SocketAddr, client: SocketAddr) -> Result<Option<u64>> {
    let table = std::fs::read_to_string("/proc/net/tcp").context("reading /proc/net/tcp")?;
    for line in table.lines().skip(1) {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 10 {
            continue;
        }
        if parse_proc_addr(f[1]) == Some(node) && parse_proc_addr(f[2]) == Some(client) {
            let inode: u64 = f[9].parse().context("inode")?;
            if inode != 0 {
                return Ok(Some(inode));
            }
        }
    }
    Ok(None)
}

/// Whether process `pid` still has the socket `inode` open.
fn holds_socket(pid: u32, inode: u64) -> Result<bool> {
    let wanted = format!("socket:[{inode}]");
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd")).context("listing /proc/PID/fd")? {
        let Ok(entry) = entry else { continue };
        if std::fs::read_link(entry.path()).is_ok_and(|l| l.to_string_lossy() == wanted) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// The node's socket for the connection from `client`, once it shows up.
async fn node_socket(pid: u32, node: SocketAddr, client: SocketAddr) -> Result<u64> {
    eventually("the node's side of the connection", WAIT, async || {
        Ok(socket_inode(node, client)?.filter(|inode| holds_socket(pid, *inode).unwrap_or(false)))
    })
    .await
}

/// Largest send buffer the kernel gives a TCP socket (`tcp_wmem`'s third
/// value): what a peer that never reads can leave queued in the node's kernel.
fn tcp_wmem_max() -> usize {
    std::fs::read_to_string("/proc/sys/net/ipv4/tcp_wmem")
        .ok()
        .and_then(|t| t.split_whitespace().nth(2).and_then(|v| v.parse().ok()))
        .unwrap_or(4 * 1024 * 1024)
}

/// Samples a process's RssAnon every 20 ms on its own thread (so a busy test
/// task does not skip samples) and keeps the peak.
struct RssPeak {
    stop: Arc<AtomicBool>,
    peak: Arc<AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl RssPeak {
    fn start(pid: u32) -> RssPeak {
        let stop = Arc::new(AtomicBool::new(false));
        let peak = Arc::new(AtomicU64::new(rss_kib(pid).unwrap_or(0)));
        let (s, p) = (stop.clone(), peak.clone());
        let thread = std::thread::spawn(move || {
            // Bounded: at most ten minutes of samples.
            for _ in 0..30_000 {
                if s.load(Ordering::Acquire) {
                    return;
                }
                if let Ok(kib) = rss_kib(pid) {
                    p.fetch_max(kib, Ordering::AcqRel);
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        RssPeak { stop, peak, thread: Some(thread) }
    }

    /// Stops sampling; answers the peak, in KiB.
    fn finish(mut self) -> u64 {
        self.stop.store(true, Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.peak.load(Ordering::Acquire)
    }
}

impl Drop for RssPeak {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Release);
    }
}

// ----- clients -----

/// Sends `bodies` to `room` over `ws`, `window` at a time without waiting
/// (the node batches them), then checks each answer: new messages, stored
/// one after another after the room's `last` seq. Answers the last seq.
async fn fill(ws: &mut Ws, room: &str, mut last: u64, bodies: &[String], window: usize) -> Result<u64> {
    for (n, chunk) in bodies.chunks(window).enumerate() {
        let mut ids = Vec::with_capacity(chunk.len());
        for (i, body) in chunk.iter().enumerate() {
            // Client ids unique per room (a repeated id is answered as the
            // original send, storing nothing): named after the seq to come.
            ids.push(ws.start_send(room, body, &format!("fill-{last}-{n}-{i}")).await?);
        }
        for id in ids {
            let seq = ws.send_ack(id).await?.seq;
            ensure!(seq == last + 1, "sent in order, stored at seq {seq} after {last}");
            last = seq;
        }
    }
    Ok(last)
}

/// A TCP connection to `addr` with a small receive buffer, for a client
/// that will not read.
async fn small_buffer_connection(addr: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(SMALL_RCVBUF)?;
    tokio::time::timeout(WAIT, socket.connect(addr)).await.context("connect timed out")?.context("connect")
}

/// Whether `user` is online (has a WebSocket or SSE connection), as `room`'s
/// member list (read by `http`) says.
async fn online(http: &Http, room: &str, user: &str) -> Result<bool> {
    let members = http.members(room).await?;
    Ok(members.iter().any(|m| m.username == user && m.online == Some(true)))
}

/// Sends an HTTP/1.1 `GET /ws` upgrade with `headers` (Host included by
/// the caller) and reads the answer's head (and body, unless it is 101):
/// the status and the body.
async fn raw_upgrade(addr: &str, headers: &[(&str, &str)]) -> Result<(TcpStream, u16, String)> {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.context("connect timed out")??;
    let mut request = String::from(
        "GET /ws HTTP/1.1\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Version: 13\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    s.write_all(request.as_bytes()).await?;
    // Byte by byte up to the blank line, so no frame after the head is taken.
    let mut head = Vec::new();
    let read_head = async {
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            ensure!(head.len() < 16 * 1024, "an answer head over 16 KiB");
            ensure!(
                s.read(&mut byte).await? == 1,
                "closed before the end of the head: {:?}",
                String::from_utf8_lossy(&head)
            );
            head.push(byte[0]);
        }
        Ok(())
    };
    tokio::time::timeout(WAIT, read_head).await.context("no answer head")??;
    let head = String::from_utf8_lossy(&head).to_string();
    let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).context("status line")?;
    let mut body = String::new();
    if status != 101 {
        let length: usize = head
            .lines()
            .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let mut buf = vec![0u8; length.min(64 * 1024)];
        tokio::time::timeout(WAIT, s.read_exact(&mut buf)).await.context("no answer body")??;
        body = String::from_utf8_lossy(&buf).to_string();
    }
    Ok((s, status, body))
}

/// One client-to-server frame: masked, as RFC 6455 §5.3 requires of clients.
fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
    const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];
    let mut f = vec![if fin { 0x80 } else { 0 } | opcode];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n if n <= usize::from(u16::MAX) => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            f.push(0x80 | 127);
            f.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    f.extend_from_slice(&MASK);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ MASK[i % 4]));
    f
}

/// Reads one server-to-client frame: its opcode and payload.
async fn read_frame(r: &mut (impl AsyncRead + Unpin)) -> Result<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    r.read_exact(&mut h).await?;
    let len = match h[1] & 0x7F {
        126 => u64::from(r.read_u16().await?),
        127 => r.read_u64().await?,
        n => u64::from(n),
    };
    ensure!(len <= 16 * 1024 * 1024, "a frame of {len} bytes");
    let mask = if h[1] & 0x80 != 0 {
        let mut m = [0u8; 4];
        r.read_exact(&mut m).await?;
        Some(m)
    } else {
        None
    };
    let mut payload = vec![0u8; len as usize];
    r.read_exact(&mut payload).await?;
    if let Some(m) = mask {
        payload.iter_mut().enumerate().for_each(|(i, b)| *b ^= m[i % 4]);
    }
    Ok((h[0] & 0x0F, payload))
}

/// Reads frames until a close frame (its code) or the end of the
/// connection (`None`), for at most `within`; answers the text frames too.
async fn read_until_close(r: &mut (impl AsyncRead + Unpin), within: Duration) -> (Option<u16>, Vec<String>) {
    let deadline = tokio::time::Instant::now() + within;
    let mut texts = Vec::new();
    // Bounded by the deadline and by a count.
    for _ in 0..100_000 {
        match tokio::time::timeout_at(deadline, read_frame(r)).await {
            Ok(Ok((0x8, payload))) => {
                let code = (payload.len() >= 2).then(|| u16::from_be_bytes([payload[0], payload[1]]));
                return (code, texts);
            }
            Ok(Ok((0x1, payload))) => texts.push(String::from_utf8_lossy(&payload).to_string()),
            Ok(Ok(_)) => {}
            Ok(Err(_)) | Err(_) => return (None, texts),
        }
    }
    (None, texts)
}

// ----- 1. a signed-in socket that never reads -----

#[tokio::test]
async fn a_signed_in_socket_that_asks_for_history_and_never_reads_is_closed_and_the_node_keeps_its_memory() -> Result<()>
{
    const MESSAGES: usize = 1_000;
    const BODY_CHARS: usize = 4_000;
    const HISTORY_COMMANDS: usize = 60;
    const WRITE_TIMEOUT_MS: u64 = 3_000;
    // The outbound budget (1 MiB) and the page cap (256 KiB) are the
    // defaults: this is the case as deployed.
    let node = Node::start_with(config(|c| {
        c.limits.write_timeout_ms = WRITE_TIMEOUT_MS;
    }))
    .await?;
    let pid = node.pid().context("pid")?;
    let node_addr: SocketAddr = node.addr().parse()?;
    let alice = node.user("alice").await?;
    alice.http.create_room("big", "Big", Visibility::Public).await?;
    let bodies: Vec<String> = (0..MESSAGES).map(|i| format!("{i:05}-{}", "x".repeat(BODY_CHARS - 6))).collect();
    let filling = Instant::now();
    let mut ws = node.ws(&alice).await?;
    let last = fill(&mut ws, "big", 0, &bodies, 100).await?;
    ws.close().await?;
    eprintln!("filled {last} messages of {BODY_CHARS} characters in {:?}", filling.elapsed());
    let mallory = node.user("mallory").await?;
    let norma = node.user("norma").await?;
    norma.http.join("big").await?;
    // The normal client's calls during the test open a connection each and
    // close it, so they leave no descriptor behind.
    let norma_http = Http::unpooled(node.addr())?.with_token(&norma.token);

    let fds_before = socket_count(pid)?;
    let rss_before = rss_kib(pid)?;
    let sampler = RssPeak::start(pid);

    // The hostile client: signed in by its upgrade's Bearer header, a tiny
    // receive buffer, 60 history commands of 500 long messages each, and
    // not one read.
    let stream = small_buffer_connection(node_addr).await?;
    let local = stream.local_addr()?;
    let mut request = format!("ws://{}/ws", node.addr()).into_client_request()?;
    request.headers_mut().insert("authorization", HeaderValue::from_str(&format!("Bearer {}", mallory.token))?);
    let (mut hostile, answer) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(request, stream))
        .await
        .context("upgrade timed out")??;
    ensure!(answer.status().as_u16() == 101, "upgrade answered {}", answer.status());
    let inode = node_socket(pid, node_addr, local).await?;
    for id in 0..HISTORY_COMMANDS {
        let cmd = json!({"type": "history", "id": id + 1, "room": "big", "after": 0, "limit": 500});
        tokio::time::timeout(WAIT, hostile.send(WsMessage::text(cmd.to_string())))
            .await
            .context("sending a history command timed out")??;
    }
    let started = Instant::now();

    // Meanwhile another client is served: a history page over HTTP, a send,
    // and history over its own WebSocket.
    let served = Instant::now();
    let page = norma_http.messages_after("big", 0, Some(500)).await?;
    ensure!(page.first().map(|m| m.seq) == Some(1), "norma's history page starts at seq 1");
    let sent = norma_http.post_message("big", "still served", "norma-1").await?;
    ensure!(sent.seq == last + 1, "norma's message is seq {}, not {}", sent.seq, last + 1);
    let mut norma_ws = Ws::connect_auth(node.addr(), &norma.token).await?;
    let tail = norma_ws.history("big", History::After(last - 5), Some(10)).await?;
    ensure!(tail.last().map(|m| m.seq) == Some(sent.seq), "norma's WebSocket history ends with her message");
    norma_ws.close().await?;
    let served_in = served.elapsed();
    let still_held = holds_socket(pid, inode)?;
    eprintln!(
        "a normal client was served in {served_in:?} (HTTP page of {} messages, a send, WS history) while the \
         hostile socket was {}",
        page.len(),
        if still_held { "still open" } else { "already closed" }
    );

    // The node lets the hostile socket go.
    let deadline = Duration::from_millis(WRITE_TIMEOUT_MS) + CLOSE_MARGIN;
    let closed = eventually("the node lets the hostile socket go", deadline, async || {
        Ok((!holds_socket(pid, inode)?).then_some(()))
    })
    .await;
    let took = started.elapsed();
    let fds_after = eventually("the node's descriptors come back", WAIT, async || {
        let n = socket_count(pid)?;
        Ok((n <= fds_before).then_some(n))
    })
    .await;
    let rss_peak = sampler.finish();
    let rss_after = rss_kib(pid)?;

    // What the client could still read: what sat in the kernel's buffers.
    let mut received = 0usize;
    let mut close_code = None;
    let mut ended = false;
    let reading = tokio::time::Instant::now() + WAIT;
    for _ in 0..100_000 {
        match tokio::time::timeout_at(reading, hostile.next()).await {
            Ok(Some(Ok(WsMessage::Text(t)))) => received += t.len(),
            Ok(Some(Ok(WsMessage::Close(f)))) => close_code = f.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => {}
            Ok(Some(Err(_)) | None) => {
                ended = true;
                break;
            }
            Err(_) => break,
        }
    }
    eprintln!(
        "hostile history reader: RssAnon before {:.1} MiB, peak {:.1} MiB (+{:.1}), after {:.1} MiB; fds before \
         {fds_before}, after {fds_after:?}; socket let go after {took:?} (write timeout {WRITE_TIMEOUT_MS} ms); \
         the client then read {received} bytes of the {} asked for, close code {close_code:?}",
        mib(rss_before),
        mib(rss_peak),
        mib(rss_peak.saturating_sub(rss_before)),
        mib(rss_after),
        HISTORY_COMMANDS * 256 * 1024,
    );
    closed.with_context(|| format!("the hostile socket is still open after {took:?}"))?;
    fds_after?;
    ensure!(
        rss_peak <= rss_before + RSS_GROWTH_KIB,
        "the node grew from {:.1} MiB to {:.1} MiB (bound: +{} MiB)",
        mib(rss_before),
        mib(rss_peak),
        RSS_GROWTH_KIB / 1024
    );
    ensure!(ended, "the hostile client's connection did not end");
    let health = node.http().request(palaver_client::Method::GET, "/healthz", None).await?;
    ensure!(health.status == 200, "/healthz answered {}", health.status);
    Ok(())
}

// ----- 2. history pages at the byte cap -----

/// Which history page to ask for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Cursor {
    After(u64),
    Before(u64),
    Newest,
}

impl Cursor {
    fn query(self) -> String {
        match self {
            Cursor::After(n) => format!("after={n}&"),
            Cursor::Before(n) => format!("before={n}&"),
            Cursor::Newest => String::new(),
        }
    }
}

/// The JSON size the node counts for one message of a page (its JSON and a separator).
fn counted_size(message: &Value) -> usize {
    serde_json::to_string(message).map_or(0, |s| s.len()) + 1
}

/// One page: its messages, its cursor, and the bytes it took on the wire.
struct Page {
    messages: Vec<Value>,
    next: Option<Cursor>,
}

async fn http_page(client: &reqwest::Client, addr: &str, token: &str, room: &str, at: Cursor) -> Result<Page> {
    let url = format!("http://{addr}/api/rooms/{room}/messages?{}limit=500", at.query());
    let r = client.get(url).bearer_auth(token).send().await?;
    ensure!(r.status().as_u16() == 200, "history answered {}", r.status());
    let next = match r.headers().get("x-next-page").map(|v| v.to_str()) {
        None => None,
        Some(v) => {
            let v = v?;
            let (key, n) = v.split_once('=').with_context(|| format!("x-next-page {v:?}"))?;
            let n: u64 = n.parse().with_context(|| format!("x-next-page {v:?}"))?;
            Some(match key {
                "after" => Cursor::After(n),
                "before" => Cursor::Before(n),
                _ => bail!("x-next-page {v:?}"),
            })
        }
    };
    let body = r.bytes().await?;
    let messages: Vec<Value> = serde_json::from_slice(&body)?;
    let counted: usize = messages.iter().map(counted_size).sum();
    // The page is a JSON array: the messages, their commas and two brackets.
    ensure!(body.len() == counted + 1, "a body of {} bytes for {counted} counted", body.len());
    Ok(Page { messages, next })
}

async fn ws_page(ws: &mut Ws, room: &str, at: Cursor) -> Result<Page> {
    let mut cmd = json!({"type": "history", "room": room, "limit": 500});
    match at {
        Cursor::After(n) => cmd["after"] = json!(n),
        Cursor::Before(n) => cmd["before"] = json!(n),
        Cursor::Newest => {}
    }
    let v = ws.call(cmd).await?;
    let messages = v["messages"].as_array().context("a history reply without messages")?.clone();
    let next = match v.get("next") {
        None => None,
        Some(n) => match (n.get("after").and_then(Value::as_u64), n.get("before").and_then(Value::as_u64)) {
            (Some(a), None) => Some(Cursor::After(a)),
            (None, Some(b)) => Some(Cursor::Before(b)),
            _ => bail!("next {n}"),
        },
    };
    Ok(Page { messages, next })
}

/// Walks the room from `start` with each page's cursor until a page has
/// none, checking every page against the cap; answers the pages in the
/// order fetched.
async fn walk(
    what: &str,
    cap: usize,
    start: Cursor,
    mut fetch: impl AsyncFnMut(Cursor) -> Result<Page>,
) -> Result<Vec<Page>> {
    let mut pages: Vec<Page> = Vec::new();
    let mut at = start;
    // Bounded: far more pages than the room can fill.
    for _ in 0..1_000 {
        let page = fetch(at).await.with_context(|| format!("{what}: the page at {at:?}"))?;
        let seqs: Vec<u64> = page.messages.iter().filter_map(|m| m["seq"].as_u64()).collect();
        ensure!(!seqs.is_empty(), "{what}: an empty page at {at:?}");
        ensure!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{what}: a page out of order: {seqs:?}");
        let counted: usize = page.messages.iter().map(counted_size).sum();
        ensure!(
            counted <= cap || seqs.len() == 1,
            "{what}: a page of {} messages counts {counted} bytes, over the cap of {cap}",
            seqs.len()
        );
        let next = page.next;
        // The cursor says where the rest starts: just past this page.
        match next {
            Some(Cursor::After(n)) => ensure!(Some(&n) == seqs.last(), "{what}: next after={n} for {seqs:?}"),
            Some(Cursor::Before(n)) => ensure!(Some(&n) == seqs.first(), "{what}: next before={n} for {seqs:?}"),
            Some(Cursor::Newest) => bail!("no such cursor"),
            None => {}
        }
        pages.push(page);
        match next {
            Some(c) => at = c,
            None => return Ok(pages),
        }
    }
    bail!("{what}: still paging after 1000 pages")
}

/// Checks that `pages` (in the order fetched, `forward` or backward) hold
/// every message of `expected` exactly once, in order, and that each page
/// with a cursor was cut at the cap: the next message would not have fit.
fn check_walk(what: &str, cap: usize, mut pages: Vec<Page>, forward: bool, expected: &[String]) -> Result<usize> {
    if !forward {
        pages.reverse();
    }
    let n = pages.len();
    for i in 0..n {
        if pages[i].next.is_none() {
            ensure!(i == if forward { n - 1 } else { 0 }, "{what}: page {i} of {n} has no cursor");
            continue;
        }
        // The message that did not fit: the next page's first going
        // forward, the previous page's last going backward.
        let counted: usize = pages[i].messages.iter().map(counted_size).sum();
        let refused = if forward { pages[i + 1].messages.first() } else { pages[i - 1].messages.last() };
        let refused = refused.context("a page after a cursor")?;
        ensure!(
            counted + counted_size(refused) > cap,
            "{what}: page {i} ({} messages, {counted} bytes) was cut though seq {} ({} bytes) fits under {cap}",
            pages[i].messages.len(),
            refused["seq"],
            counted_size(refused)
        );
    }
    let all: Vec<&Value> = pages.iter().flat_map(|p| p.messages.iter()).collect();
    let seqs: Vec<u64> = all.iter().filter_map(|m| m["seq"].as_u64()).collect();
    let want: Vec<u64> = (1..=expected.len() as u64).collect();
    ensure!(seqs == want, "{what}: the walk gave seqs {seqs:?}");
    for (m, body) in all.iter().zip(expected) {
        ensure!(m["body"].as_str() == Some(body.as_str()), "{what}: seq {} has another body", m["seq"]);
    }
    Ok(n)
}

#[tokio::test]
async fn history_pages_are_cut_at_the_byte_cap_and_their_cursor_walks_the_whole_room() -> Result<()> {
    const CAP: usize = 16 * 1024;
    const MESSAGES: usize = 150;
    const GIANT: usize = 77;
    let node = Node::start_with(config(|c| {
        c.limits.history_page_bytes = CAP;
    }))
    .await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("paged", "Paged", Visibility::Public).await?;
    // Bodies of varied length and JSON cost: accents (2 bytes), emoji (4),
    // quotes and backslashes (escaped to 2), control characters (6).
    let bodies: Vec<String> = (1..=MESSAGES)
        .map(|i| {
            let n = 100 + (i * 389) % 1500;
            match (i, i % 5) {
                // One message over the cap alone: a page never holds fewer than one.
                (GIANT, _) => "😀".repeat(4096),
                (_, 0) => format!("{i} {}", "é".repeat(n)),
                (_, 1) => format!("{i} {}", "\"q\\".repeat(n / 3)),
                (_, 2) => format!("{i} {}", "😀".repeat(n / 2)),
                (_, 3) => format!("{i} {}", "a".repeat(n)),
                _ => format!("{i} {}", "\u{1}\n\t".repeat(n / 3)),
            }
        })
        .collect();
    let mut ws = node.ws(&alice).await?;
    ensure!(fill(&mut ws, "paged", 0, &bodies, 50).await? == MESSAGES as u64, "the room holds every message");

    let client = reqwest::Client::builder().no_proxy().timeout(WAIT).build()?;
    let (addr, token) = (node.addr().to_string(), alice.token.clone());
    let forward =
        walk("HTTP forward", CAP, Cursor::After(0), async |at| http_page(&client, &addr, &token, "paged", at).await)
            .await?;
    let sizes: Vec<usize> = forward.iter().map(|p| p.messages.iter().map(counted_size).sum()).collect();
    let giant_alone = forward.iter().any(|p| p.messages.len() == 1 && p.messages[0]["seq"] == GIANT as u64);
    let room_bytes: usize = sizes.iter().sum();
    let http_forward = check_walk("HTTP forward", CAP, forward, true, &bodies)?;
    let backward =
        walk("HTTP backward", CAP, Cursor::Newest, async |at| http_page(&client, &addr, &token, "paged", at).await)
            .await?;
    let http_backward = check_walk("HTTP backward", CAP, backward, false, &bodies)?;
    let ws_forward =
        walk("WebSocket forward", CAP, Cursor::After(0), async |at| ws_page(&mut ws, "paged", at).await).await?;
    let ws_forward = check_walk("WebSocket forward", CAP, ws_forward, true, &bodies)?;
    let ws_backward = walk("WebSocket backward", CAP, Cursor::Before(MESSAGES as u64 + 1), async |at| {
        ws_page(&mut ws, "paged", at).await
    })
    .await?;
    let ws_backward = check_walk("WebSocket backward", CAP, ws_backward, false, &bodies)?;
    // A page cut by its limit, not by bytes, has no cursor.
    let short = http_page(&client, &addr, &token, "paged", Cursor::After(0)).await?;
    ensure!(short.next.is_some(), "the first full page has a cursor");
    let r = client
        .get(format!("http://{addr}/api/rooms/paged/messages?after=0&limit=1"))
        .bearer_auth(&token)
        .send()
        .await?;
    ensure!(r.headers().get("x-next-page").is_none(), "a page cut by its limit has no x-next-page");
    eprintln!(
        "history pages: {MESSAGES} messages, {room_bytes} JSON bytes, cap {CAP}: HTTP {http_forward} pages forward \
         and {http_backward} backward, WebSocket {ws_forward} and {ws_backward}; page sizes {sizes:?}; the \
         {}-byte message {GIANT} alone on its page: {giant_alone}",
        bodies[GIANT - 1].len()
    );
    ensure!(giant_alone, "message {GIANT}, over the cap by itself, is not alone on a page");
    ensure!(http_forward >= room_bytes.div_ceil(CAP), "{http_forward} pages for {room_bytes} bytes");
    ensure!(ws_forward == http_forward && ws_backward == http_backward, "WebSocket and HTTP page alike");
    Ok(())
}

// ----- 3. an SSE client that never reads -----

#[tokio::test]
async fn an_sse_client_that_never_reads_is_disconnected_and_the_node_keeps_its_memory() -> Result<()> {
    const WRITE_TIMEOUT_MS: u64 = 2_000;
    const BODY_CHARS: usize = 30_000;
    const MESSAGES: usize = 300;
    let node = Node::start_with(config(|c| {
        c.limits.write_timeout_ms = WRITE_TIMEOUT_MS;
        c.limits.message_chars = BODY_CHARS;
        c.limits.outbound_bytes = 64 * 1024;
        c.limits.history_page_bytes = 16 * 1024;
        // The store's page cache fills with what is stored (by design, up
        // to this bound): small, so that its growth is not what is measured.
        c.cluster.store_cache_mib = 8;
        // Far above the waits below: the idle keep-alive timer of a
        // connection whose answer is complete must not be what cuts it.
        c.limits.handshake_timeout_ms = 120_000;
    }))
    .await?;
    let pid = node.pid().context("pid")?;
    let node_addr: SocketAddr = node.addr().parse()?;
    let alice = node.user("alice").await?;
    alice.http.create_room("busy", "Busy", Visibility::Public).await?;
    let sid = node.user("sid").await?;
    sid.http.join("busy").await?;
    let mut sender = node.ws(&alice).await?;
    let bodies: Vec<String> = (0..MESSAGES).map(|i| format!("{i:05}-{}", "s".repeat(BODY_CHARS - 6))).collect();
    // The same flood once with nobody stalled first: storing the first
    // 8.6 MiB grows the node by 25-60 MiB (store cache, the search index's
    // arena, allocator arenas) whoever listens, so the bound below measures
    // what the stalled stream adds, not that warm-up.
    let warmed = fill(&mut sender, "busy", 0, &bodies, 1).await?;
    let fds_before = socket_count(pid)?;
    let rss_before = rss_kib(pid)?;

    let mut s = small_buffer_connection(node_addr).await?;
    let local = s.local_addr()?;
    let request = format!(
        "GET /sse?rooms=busy HTTP/1.1\r\nHost: palaver\r\nAccept: text/event-stream\r\nAuthorization: Bearer {}\r\n\r\n",
        sid.token
    );
    s.write_all(request.as_bytes()).await?;
    let inode = node_socket(pid, node_addr, local).await?;
    // An SSE stream counts for presence: once sid is online, it is registered.
    eventually("the SSE stream is open", WAIT, async || Ok(online(&alice.http, "busy", "sid").await?.then_some(())))
        .await?;

    let sampler = RssPeak::start(pid);
    let flooding = Instant::now();
    // One at a time, so each event is published alone and the stream takes
    // it while it can: the stream stalls on the full socket before its
    // queue overflows, and only the write timeout can end it. (A burst
    // past the budget would end the stream at once, its answer complete.)
    fill(&mut sender, "busy", warmed, &bodies, 1).await?;
    let flood_took = flooding.elapsed();
    let started = Instant::now();
    let deadline = Duration::from_millis(WRITE_TIMEOUT_MS) + CLOSE_MARGIN;
    let closed = eventually("the node drops the SSE connection", deadline, async || {
        Ok((!holds_socket(pid, inode)?).then_some(()))
    })
    .await;
    let took = started.elapsed();
    let fds_after = eventually("the node's descriptors come back", WAIT, async || {
        let n = socket_count(pid)?;
        Ok((n <= fds_before).then_some(n))
    })
    .await;
    let rss_peak = sampler.finish();
    let rss_after = rss_kib(pid)?;
    // What the client can still read is what sat in the buffers, then the end.
    let mut got = 0usize;
    let mut ended = false;
    let mut buf = vec![0u8; 64 * 1024];
    let reading = tokio::time::Instant::now() + WAIT;
    for _ in 0..100_000 {
        match tokio::time::timeout_at(reading, s.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => {
                ended = true;
                break;
            }
            Ok(Ok(n)) => got += n,
            Err(_) => break,
        }
    }
    let flood_bytes = MESSAGES * BODY_CHARS;
    eprintln!(
        "SSE reader that never reads: {MESSAGES} events of {BODY_CHARS} characters ({:.1} MiB) published in \
         {flood_took:?}; the node dropped the stream {took:?} after the last (write timeout {WRITE_TIMEOUT_MS} ms); \
         RssAnon before {:.1} MiB, peak {:.1} MiB (+{:.1}), after {:.1} MiB; fds before {fds_before}, after \
         {fds_after:?}; the client then read {got} bytes and the end: {ended}",
        mib(flood_bytes as u64 / 1024),
        mib(rss_before),
        mib(rss_peak),
        mib(rss_peak.saturating_sub(rss_before)),
        mib(rss_after),
    );
    closed.with_context(|| format!("the SSE connection is still open {took:?} after the flood"))?;
    fds_after?;
    ensure!(
        rss_peak <= rss_before + RSS_GROWTH_KIB,
        "the node grew from {:.1} MiB to {:.1} MiB (bound: +{} MiB)",
        mib(rss_before),
        mib(rss_peak),
        RSS_GROWTH_KIB / 1024
    );
    ensure!(ended, "the client's connection did not end");
    ensure!(got < flood_bytes, "the client got all {got} bytes: the node did not drop it");
    ensure!(!online(&alice.http, "busy", "sid").await?, "sid is still online");
    // The node serves on.
    let ack = sender.send("busy", "after the flood", "after-1").await?;
    ensure!(ack.seq == 2 * MESSAGES as u64 + 1, "seq {}", ack.seq);
    Ok(())
}

// ----- 4. a message of 100 000 empty continuation frames -----

#[tokio::test]
async fn a_message_of_100000_empty_continuation_frames_is_closed_with_1008() -> Result<()> {
    const MAX_FRAGMENTS: usize = 64;
    const FLOOD: usize = 100_000;
    // max_fragments left at its default, 64.
    let node = Node::start().await?;
    let pid = node.pid().context("pid")?;
    let addr = node.addr().to_string();
    let mallory = node.user("mallory").await?;
    mallory.http.create_room("frag", "Frag", Visibility::Public).await?;
    let bearer = format!("Bearer {}", mallory.token);
    let headers = [("Host", addr.as_str()), ("Authorization", bearer.as_str())];
    let fds_before = socket_count(pid)?;

    // Exactly max_fragments frames: one message, answered.
    let (mut s, status, _) = raw_upgrade(&addr, &headers).await?;
    ensure!(status == 101, "upgrade answered {status}");
    let cmd = br#"{"type":"history","id":7,"room":"frag","limit":1}"#;
    let mut bytes = client_frame(false, 0x1, &cmd[..10]);
    for _ in 0..MAX_FRAGMENTS - 2 {
        bytes.extend(client_frame(false, 0x0, b""));
    }
    bytes.extend(client_frame(true, 0x0, &cmd[10..]));
    s.write_all(&bytes).await?;
    let (op, payload) = tokio::time::timeout(WAIT, read_frame(&mut s)).await.context("no answer")??;
    let reply: Value = serde_json::from_slice(&payload)?;
    ensure!(op == 0x1 && reply["id"] == 7 && reply["type"] == "ok", "a {MAX_FRAGMENTS}-frame message: {reply}");
    // One frame more, and nothing after it: closed with 1008.
    let mut bytes = client_frame(false, 0x1, b"{");
    for _ in 0..MAX_FRAGMENTS {
        bytes.extend(client_frame(false, 0x0, b""));
    }
    s.write_all(&bytes).await?;
    let (code, texts) = read_until_close(&mut s, WAIT).await;
    eprintln!("a message of {} frames: close {code:?} (other frames: {texts:?})", MAX_FRAGMENTS + 1);
    ensure!(code == Some(1008), "a message of {} frames: close code {code:?}", MAX_FRAGMENTS + 1);
    drop(s);

    // The flood: a text frame without FIN, then 100 000 empty masked
    // continuation frames as fast as they can be written, read concurrently
    // so the close frame is taken before the node closes the connection.
    let (s, status, _) = raw_upgrade(&addr, &headers).await?;
    ensure!(status == 101, "upgrade answered {status}");
    let cpu_before = cpu_ticks(pid)?;
    let (mut r, mut w) = s.into_split();
    let reader = tokio::spawn(async move { read_until_close(&mut r, WAIT).await });
    let started = Instant::now();
    let mut frames = 0usize;
    let mut write_error = None;
    if let Err(e) = w.write_all(&client_frame(false, 0x1, b"{")).await {
        write_error = Some(e);
    }
    let empty = client_frame(false, 0x0, b"");
    let chunk: Vec<u8> = empty.repeat(1_000);
    while write_error.is_none() && frames < FLOOD {
        match tokio::time::timeout(WAIT, w.write_all(&chunk)).await {
            Ok(Ok(())) => frames += 1_000,
            Ok(Err(e)) => write_error = Some(e),
            Err(_) => bail!("a write of continuation frames hung for {WAIT:?}"),
        }
    }
    let wrote_in = started.elapsed();
    let (code, texts) =
        tokio::time::timeout(WAIT + Duration::from_secs(5), reader).await.context("the reader hung")??;
    let closed_in = started.elapsed();
    let cpu = cpu_ticks(pid)?.saturating_sub(cpu_before);
    drop(w);
    // The node stays responsive, and the connections' descriptors come back.
    let health = node.http().request(palaver_client::Method::GET, "/healthz", None).await?;
    let mut ws = node.ws(&mallory).await?;
    let page = ws.history("frag", History::After(0), Some(1)).await?;
    ws.close().await?;
    let fds_after = eventually("the node's descriptors come back", WAIT, async || {
        let n = socket_count(pid)?;
        Ok((n <= fds_before).then_some(n))
    })
    .await;
    eprintln!(
        "{FLOOD} empty continuation frames: {frames} written in {wrote_in:?} (write error: {:?}), close {code:?} \
         read after {closed_in:?}, node CPU {cpu} ticks (1/100 s); /healthz {} after; fds before {fds_before}, \
         after {fds_after:?}",
        write_error.map(|e| e.kind()),
        health.status
    );
    ensure!(code == Some(1008), "the flood got close code {code:?} (frames: {texts:?})");
    ensure!(health.status == 200, "/healthz answered {}", health.status);
    ensure!(page.is_empty(), "the room has no messages");
    fds_after?;
    Ok(())
}

// ----- 5. Origin -----

#[tokio::test]
async fn websocket_upgrades_check_origin_exactly_and_ignore_host() -> Result<()> {
    let node = Node::start_with(config(|c| {
        c.security.allowed_origins = vec!["http://allowed.example".into(), "https://app.example:8443".into()];
        c.security.public_url = Some("https://chat.example.com".into());
    }))
    .await?;
    let addr = node.addr().to_string();
    let port = addr.rsplit_once(':').context("a port")?.1.to_string();
    let own = format!("http://127.0.0.1:{port}");
    let rebound_host = format!("rebind.example:{port}");
    let rebound = format!("http://rebind.example:{port}");
    let (addr, own, rebound_host, rebound) = (addr.as_str(), own.as_str(), rebound_host.as_str(), rebound.as_str());
    // (Host, Origin, expected status, why)
    let cases: Vec<(&str, Option<&str>, u16, &str)> = vec![
        (addr, Some(own), 403, "Origin equal to Host, not listed"),
        (rebound_host, Some(rebound), 403, "DNS rebinding: Origin equal to a foreign Host"),
        (addr, Some("https://allowed.example"), 403, "listed host, wrong scheme"),
        (addr, Some("http://allowed.example:8080"), 403, "listed host, wrong port"),
        (addr, Some("http://allowed.example.evil.com"), 403, "listed name as a prefix"),
        (addr, Some("https://app.example"), 403, "listed host, default port instead of 8443"),
        (addr, Some("http://app.example:8443"), 403, "listed host and port, wrong scheme"),
        (addr, Some("http://chat.example.com"), 403, "public_url's host, wrong scheme"),
        (addr, Some("null"), 403, "opaque origin"),
        (addr, Some("http://allowed.example"), 101, "listed exactly"),
        ("allowed.example", Some("http://allowed.example"), 101, "listed exactly, Host equal"),
        (rebound_host, Some("http://allowed.example:80"), 101, "listed, default port written, any Host"),
        (addr, Some("https://app.example:8443"), 101, "listed with its port"),
        (addr, Some("https://chat.example.com"), 101, "public_url's origin"),
        (addr, None, 101, "no Origin: not a browser"),
    ];
    let mut report = Vec::new();
    for (host, origin, want, why) in cases {
        let mut headers = vec![("Host", host)];
        if let Some(o) = origin {
            headers.push(("Origin", o));
        }
        let (_, status, body) = raw_upgrade(addr, &headers).await?;
        report.push(format!("{status} Host {host} Origin {origin:?}"));
        ensure!(status == want, "{why}: Host {host}, Origin {origin:?}: {status} {body}, expected {want}");
        if status == 403 {
            let v: Value = serde_json::from_str(&body).with_context(|| format!("403 body {body:?}"))?;
            ensure!(v["error"]["code"] == "forbidden", "{why}: {body}");
        }
    }
    eprintln!("origin checks:\n  {}", report.join("\n  "));
    Ok(())
}

// ----- 6. a subscriber of a busy room that never reads -----

#[tokio::test]
async fn a_subscriber_that_never_reads_gets_1013_while_a_reading_one_gets_every_message() -> Result<()> {
    const BUDGET: usize = 256 * 1024;
    const BODY_CHARS: usize = 30_000;
    let node = Node::start_with(config(|c| {
        c.limits.message_chars = BODY_CHARS;
        c.limits.outbound_bytes = BUDGET;
        c.limits.history_page_bytes = 16 * 1024;
        // So that only the byte budget can close it: neither the item count
        // nor the write timeout comes into reach during the test.
        c.limits.outbound_queue = 100_000;
        c.limits.write_timeout_ms = 120_000;
    }))
    .await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("busy", "Busy", Visibility::Public).await?;
    let slug = node.user("slug").await?;
    slug.http.join("busy").await?;
    let rita = node.user("rita").await?;
    rita.http.join("busy").await?;

    let opts = WsOptions { recv_buffer: Some(SMALL_RCVBUF), ..WsOptions::default() };
    let mut slow = Ws::connect_with(node.addr(), opts).await?;
    slow.auth(&slug.token).await?;
    ensure!(slow.subscribe("busy", None).await? == 0, "the room starts empty");
    let mut reader = node.ws(&rita).await?;
    reader.subscribe("busy", None).await?;
    // Rita reads all along, in her own task, until told the last seq.
    let (last_tx, mut last_rx) = tokio::sync::watch::channel(0u64);
    let rita_task = tokio::spawn(async move {
        let mut got: Vec<(u64, String)> = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(120);
        while Instant::now() < deadline {
            let last = *last_rx.borrow_and_update();
            if last > 0 && got.last().is_some_and(|(seq, _)| *seq >= last) {
                break;
            }
            match reader.next_event(Duration::from_millis(500)).await {
                Ok(e) => {
                    if let Some(m) = e.message() {
                        got.push((m.seq, m.body.clone().unwrap_or_default()));
                    }
                }
                Err(e) if e.is_timeout() => {}
                Err(e) => return Err(anyhow::Error::new(e).context("rita's socket failed")),
            }
        }
        Ok(got)
    });

    // What can be outstanding for the slow socket before its budget is full:
    // the budget, the kernel's buffers (the node's send buffer at its
    // largest, the client's small receive buffer), the frames in the
    // writer's hands, and one event of our polling step.
    let event_bytes = BODY_CHARS + 200;
    let slack = tcp_wmem_max() + 64 * 1024 + 3 * event_bytes;
    let bound = BUDGET + slack;
    let max_messages = 2 * bound / event_bytes + 20;
    let mut sender = node.ws(&alice).await?;
    let mut bodies = Vec::new();
    let mut closed_after = None;
    let flooding = Instant::now();
    for i in 0..max_messages {
        let body = format!("{i:05}-{}", "b".repeat(BODY_CHARS - 6));
        let ack = sender.send("busy", &body, &format!("b{i}")).await?;
        ensure!(ack.seq == i as u64 + 1, "seq {}", ack.seq);
        bodies.push(body);
        if !online(&alice.http, "busy", "slug").await? {
            closed_after = Some(i + 1);
            break;
        }
    }
    let flood_took = flooding.elapsed();
    // Now the slow client reads: what was queued, then the close frame.
    let reading = Instant::now();
    let close = slow.wait_closed(WAIT).await;
    let slow_got: Vec<u64> = slow.take_events().iter().filter_map(|e| e.message().map(|m| m.seq)).collect();
    // The room goes on for the others.
    for i in 0..10 {
        let body = format!("after-{i}");
        sender.send("busy", &body, &format!("after-{i}")).await?;
        bodies.push(body);
    }
    let last = bodies.len() as u64;
    last_tx.send(last)?;
    let rita_got = tokio::time::timeout(Duration::from_secs(150), rita_task).await.context("rita hung")???;
    eprintln!(
        "busy room: the slow subscriber's budget {BUDGET} bytes, kernel slack up to {slack} bytes; it went \
         offline after {closed_after:?} events of {event_bytes} bytes ({:?} bytes; bound {bound}) in {flood_took:?}; \
         it then read {} messages (seqs {:?}..{:?}) and close {close:?} within {:?}; the reading subscriber got {} \
         of {last}",
        closed_after.map(|n| n * event_bytes),
        slow_got.len(),
        slow_got.first(),
        slow_got.last(),
        reading.elapsed(),
        rita_got.len(),
    );
    let Some(closed_after) = closed_after else {
        bail!("the slow subscriber was not closed after {max_messages} events ({} bytes)", max_messages * event_bytes)
    };
    ensure!(
        closed_after * event_bytes <= bound + event_bytes,
        "closed only after {closed_after} events ({} bytes; bound {bound})",
        closed_after * event_bytes
    );
    ensure!(close? == Some(1013), "the slow subscriber's close code");
    let want: Vec<u64> = (1..=slow_got.len() as u64).collect();
    ensure!(slow_got == want, "the slow subscriber got a gapless prefix: {slow_got:?}");
    ensure!((slow_got.len() as u64) < last, "the slow subscriber got everything");
    let seqs: Vec<u64> = rita_got.iter().map(|(s, _)| *s).collect();
    let want: Vec<u64> = (1..=last).collect();
    ensure!(seqs == want, "the reading subscriber got seqs {seqs:?}");
    for ((seq, body), sent) in rita_got.iter().zip(&bodies) {
        ensure!(body == sent, "seq {seq} has another body");
    }
    Ok(())
}

// ----- 7. a subscriber that stops reading, then the room goes quiet -----

#[tokio::test]
async fn a_subscriber_that_stops_reading_is_closed_after_the_write_timeout_though_the_room_goes_quiet() -> Result<()> {
    const WRITE_TIMEOUT_MS: u64 = 2_000;
    const BODY_CHARS: usize = 30_000;
    let node = Node::start_with(config(|c| {
        c.limits.message_chars = BODY_CHARS;
        c.limits.write_timeout_ms = WRITE_TIMEOUT_MS;
        // A budget the events below cannot fill: only the write timeout
        // can close this socket.
        c.limits.outbound_bytes = 64 * 1024 * 1024;
        c.limits.outbound_queue = 100_000;
    }))
    .await?;
    let pid = node.pid().context("pid")?;
    let alice = node.user("alice").await?;
    alice.http.create_room("quiet", "Quiet", Visibility::Public).await?;
    let slug = node.user("slug").await?;
    slug.http.join("quiet").await?;
    let mut sender = node.ws(&alice).await?;
    let fds_before = socket_count(pid)?;

    let opts = WsOptions { recv_buffer: Some(SMALL_RCVBUF), ..WsOptions::default() };
    let mut slow = Ws::connect_with(node.addr(), opts).await?;
    slow.auth(&slug.token).await?;
    slow.subscribe("quiet", None).await?;
    let inode = node_socket(pid, node.addr().parse()?, slow.local_addr()?).await?;
    // Enough to fill the kernel's buffers and stall the node's writer, far
    // from the budget; then nothing more.
    let event_bytes = BODY_CHARS + 200;
    let messages = (tcp_wmem_max() + 1024 * 1024) / event_bytes + 1;
    for i in 0..messages {
        sender.send("quiet", &format!("{i:05}-{}", "q".repeat(BODY_CHARS - 6)), &format!("q{i}")).await?;
    }
    let started = Instant::now();
    let deadline = Duration::from_millis(WRITE_TIMEOUT_MS) + CLOSE_MARGIN;
    let offline = eventually("the stalled subscriber is let go", deadline, async || {
        Ok((!online(&alice.http, "quiet", "slug").await?).then_some(started.elapsed()))
    })
    .await;
    let closed =
        eventually("the node closes its socket", deadline, async || Ok((!holds_socket(pid, inode)?).then_some(())))
            .await;
    let took = started.elapsed();
    let fds_after = eventually("the node's descriptors come back", WAIT, async || {
        let n = socket_count(pid)?;
        Ok((n <= fds_before).then_some(n))
    })
    .await;
    eprintln!(
        "a subscriber that stopped reading after {messages} events ({} bytes) of a room that then went quiet: \
         offline after {:?}, its socket closed {took:?} after the last event (write timeout {WRITE_TIMEOUT_MS} ms); \
         fds before {fds_before}, after {fds_after:?}",
        messages * event_bytes,
        offline.as_ref().ok(),
    );
    offline.context("the stalled subscriber is still online")?;
    closed.with_context(|| {
        format!("the node still holds the stalled subscriber's socket {took:?} after the last event")
    })?;
    fds_after?;
    Ok(())
}
