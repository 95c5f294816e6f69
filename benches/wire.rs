//! The `wire` scenario: what TLS on the public address and
//! `permessage-deflate` cost, on one 3-node cluster.
//!
//! - TLS: the same cluster behind two balancers, one plain and one
//!   terminating TLS (the certificate `palaver certs --tls` makes). Idle
//!   WebSockets through each (the balancer's RSS per connection), then
//!   closed-loop `typing` round trips through each (the balancer's CPU per
//!   round trip: each carries one frame each way, so the difference is what
//!   TLS costs per frame relayed). HAProxy (`mode tcp`) in front of the
//!   same nodes is a third path, measured the same way, where installed.
//! - Compression: receivers straight to the nodes, with and without
//!   `permessage-deflate`, get chat-sized messages at a fixed rate: bytes on
//!   the wire per delivery, deliveries/s, the nodes' CPU, delivery latency,
//!   and the nodes' deflate count per message sent (one per node with
//!   subscribers: an event is compressed once, whatever its recipients).
//!   The receivers inflate with the node's own RFC 7692 layer, run in the
//!   client direction.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context as _;
use anyhow::Result;
use anyhow::bail;
use anyhow::ensure;
use futures_util::SinkExt;
use futures_util::StreamExt;
use hdrhistogram::Histogram;
use palaver_node::api::ws_guard::Recorded;
use palaver_node::api::ws_inflate::InflateIo;
use palaver_node::api::ws_inflate::Inflater;
use palaver_node::api::ws_negotiate;
use palaver_protocol::Command;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::ServerName;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;
use tokio::io::AsyncRead;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::io::ReadBuf;
use tokio::net::TcpStream;
use tokio::sync::Mutex;
use tokio_rustls::TlsConnector;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use crate::Results;
use crate::harness;
use crate::harness::CpuMeter;
use crate::harness::Server;
use crate::harness::ms;

/// The room every part of the scenario uses.
const ROOM: &str = "wire";
/// A chat message of about the length people write (412 bytes): what
/// compression is for. Below the node's threshold (256 bytes) events go
/// out plain.
const BODY: &str = "Morning all! Quick update on the release: the build from last night passed every \
    check on the staging cluster, the migration ran in four minutes, and nobody saw an error in the \
    logs. I would like to ship it to production at two o'clock this afternoon unless someone has a \
    reason to wait. Please reply here if you do, and tell me which part worries you, so that we can \
    look at it together before then. Thanks, and have a good lunch!";
/// Senders of the compression fan-out.
const SENDERS: usize = 4;

/// What the scenario is told.
pub struct WireOptions {
    /// Idle connections through each balancer.
    pub idle: usize,
    /// Closed-loop round-trippers.
    pub senders: usize,
    /// Seconds per closed-loop and fan-out measurement.
    pub secs: u64,
    /// Receivers of the compression fan-out.
    pub members: usize,
    /// Messages per second of the compression fan-out.
    pub rate: f64,
}

/// Runs the scenario.
pub async fn wire(o: &WireOptions, res: &mut Results) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let cert = palaver_testkit::public_cert(dir.path())?;
    let tls = TlsConnector::from(Arc::new(client_config(&cert.ca)?));
    let nodes = harness::palaver_cluster(3, "wire").await?;
    let addrs: Vec<String> = nodes.iter().map(|n| n.addr.clone()).collect();
    let refs: Vec<&str> = addrs.iter().map(String::as_str).collect();
    let plain = harness::palaver_balancer_with(&refs, "round-robin", "wire-plain", None)?;
    let secure = harness::palaver_balancer_with(&refs, "round-robin", "wire-tls", Some(&cert.files))?;
    // HAProxy in front of the same nodes, for the plain relay's figures
    // side by side (skipped, with a note, where it is not installed).
    let haproxy = match harness::haproxy_missing() {
        None => Some(harness::haproxy(&refs, "wire-haproxy")?),
        Some(why) => {
            res.note(format!("wire: HAProxy skipped: {why}"));
            None
        }
    };
    let mut paths: Vec<(&str, &Server, Option<&TlsConnector>)> =
        vec![("plain", &plain, None), ("TLS", &secure, Some(&tls))];
    if let Some(h) = &haproxy {
        paths.push(("HAProxy, plain", h, None));
    }
    let users = o.senders.max(SENDERS).max(2);
    let tokens = crate::palaver_setup(&nodes, "wire", users, &[ROOM.to_string()]).await?;

    for &(name, balancer, connector) in &paths {
        let sc = format!("wire, {} idle WebSockets via balancer", o.idle);
        let meter = CpuMeter::start();
        let (kib, held) = idle_kib(balancer, connector, &tokens, o.idle).await?;
        res.push(&sc, &format!("balancer {name}"), "RSS per idle relayed connection", kib, "KiB", &meter);
        res.push(&sc, &format!("balancer {name}"), "connections held", held as f64, "", &meter);
    }
    for &(name, balancer, connector) in &paths {
        harness::settle(Duration::from_secs(20)).await;
        let sc = format!("wire, {} closed-loop typing round trips via balancer", o.senders);
        let meter = CpuMeter::start();
        let cpu_before = harness::process_ticks(&balancer.pid().to_string());
        let (rate, h) = round_trips(balancer, connector, &tokens[..o.senders], o.secs).await?;
        // /proc counts in USER_HZ, 100 a second on Linux.
        let cpu = harness::process_ticks(&balancer.pid().to_string()).saturating_sub(cpu_before) as f64 / 100.0;
        let trips = h.len() as f64;
        res.push(&sc, &format!("balancer {name}"), "round trips/s", rate, "/s", &meter);
        res.push(&sc, &format!("balancer {name}"), "round trip p99", ms(&h, 0.99), "ms", &meter);
        res.push(&sc, &format!("balancer {name}"), "balancer CPU per round trip", cpu * 1e6 / trips, "µs", &meter);
    }
    drop(paths);
    drop((plain, secure, haproxy));
    for deflate in [false, true] {
        harness::settle(Duration::from_secs(20)).await;
        let name = if deflate { "permessage-deflate" } else { "no compression" };
        let run = compressed_fanout(&addrs, &tokens, o, deflate).await?;
        let sc = format!("wire, fan-out of {}-byte messages to {} receivers at {}/s", BODY.len(), o.members, o.rate);
        let m = &run.meter;
        res.push(&sc, name, "deliveries/s", run.delivered as f64 / run.secs, "/s", m);
        res.push(&sc, name, "wire bytes per delivery", run.wire_bytes as f64 / run.delivered.max(1) as f64, "B", m);
        res.push(&sc, name, "delivery p50", ms(&run.latency, 0.5), "ms", m);
        res.push(&sc, name, "delivery p99", ms(&run.latency, 0.99), "ms", m);
        res.push(&sc, name, "nodes' CPU (cores)", run.server_cores, "cores", m);
        res.push(&sc, name, "deflates per message, all nodes", run.deflates as f64 / run.sent.max(1) as f64, "", m);
    }
    drop(nodes);
    Ok(())
}

/// A TLS client configuration trusting only the CA in `ca`.
fn client_config(ca: &std::path::Path) -> Result<rustls::ClientConfig> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).context("reading the local CA")? {
        roots.add(cert.context("a certificate of the local CA")?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// A client connection: plain TCP or TLS.
enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Conn {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, data),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, data),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

/// Opens an authenticated WebSocket to `addr`, over TLS with `tls`.
async fn open(addr: &str, tls: Option<&TlsConnector>, token: &str) -> Result<WebSocketStream<Conn>> {
    let tcp = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let (conn, scheme) = match tls {
        Some(c) => {
            let name = ServerName::try_from("localhost")?;
            (Conn::Tls(Box::new(c.connect(name, tcp).await.context("TLS handshake")?)), "wss")
        }
        None => (Conn::Plain(tcp), "ws"),
    };
    let mut req = format!("{scheme}://{addr}/ws").into_client_request()?;
    req.headers_mut().insert("authorization", format!("Bearer {token}").parse()?);
    let config = WebSocketConfig::default().read_buffer_size(4096);
    let (ws, _) = tokio_tungstenite::client_async_with_config(req, conn, Some(config)).await?;
    Ok(ws)
}

/// Opens `count` subscribed sockets through `balancer` and holds them 2 s;
/// answers the balancer's RSS growth per socket and the sockets held.
async fn idle_kib(
    balancer: &Server,
    tls: Option<&TlsConnector>,
    tokens: &[String],
    count: usize,
) -> Result<(f64, usize)> {
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = balancer.rss_kib()?;
    let opened: Vec<Result<WebSocketStream<Conn>>> = futures_util::stream::iter(0..count)
        .map(|i| async move {
            let mut ws = open(&balancer.addr, tls, &tokens[i % tokens.len()]).await?;
            harness::call(&mut ws, 1, Command::Subscribe { room: ROOM.into(), since: None }).await?;
            Ok(ws)
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut held = Vec::with_capacity(count);
    for r in opened {
        held.push(r?);
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = balancer.rss_kib()?;
    Ok((after.saturating_sub(before) as f64 / held.len().max(1) as f64, held.len()))
}

/// Closed-loop `typing` round trips through `balancer` for `secs`.
async fn round_trips(
    balancer: &Server,
    tls: Option<&TlsConnector>,
    tokens: &[String],
    secs: u64,
) -> Result<(f64, Histogram<u64>)> {
    let mut sockets = Vec::new();
    for token in tokens {
        sockets.push(open(&balancer.addr, tls, token).await?);
    }
    let deadline = Instant::now() + Duration::from_secs(secs);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for mut ws in sockets {
        tasks.push(tokio::spawn(async move {
            let mut h = harness::histogram();
            let mut n = 0u64;
            while Instant::now() < deadline && n < 10_000_000 {
                let t0 = Instant::now();
                harness::call(&mut ws, n, Command::Typing { room: ROOM.into() }).await?;
                h.saturating_record(t0.elapsed().as_micros() as u64);
                n += 1;
            }
            anyhow::Ok(h)
        }));
    }
    let mut all = harness::histogram();
    for t in tasks {
        all.add(t.await??)?;
    }
    Ok((all.len() as f64 / started.elapsed().as_secs_f64(), all))
}

/// What one compression fan-out measured.
struct FanoutRun {
    delivered: u64,
    sent: u64,
    secs: f64,
    wire_bytes: u64,
    latency: Histogram<u64>,
    server_cores: f64,
    deflates: u64,
    meter: CpuMeter,
}

/// A connection that counts the bytes read from it.
struct Counting {
    inner: TcpStream,
    read: Arc<AtomicU64>,
}

impl AsyncRead for Counting {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        this.read.fetch_add((buf.filled().len() - before) as u64, Ordering::Relaxed);
        r
    }
}

impl AsyncWrite for Counting {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, data: &[u8]) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, data)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

/// A receiving socket: the upgrade written and read by hand (so that the
/// offer and the answer's extension are seen), then the node's inflate
/// layer below tungstenite when `deflate` was agreed.
async fn open_receiver(
    addr: &str,
    token: &str,
    deflate: bool,
    counted: Arc<AtomicU64>,
) -> Result<WebSocketStream<InflateIo<Counting>>> {
    let mut tcp = TcpStream::connect(addr).await.with_context(|| format!("connecting to {addr}"))?;
    tcp.set_nodelay(true)?;
    let offer = "permessage-deflate; client_no_context_takeover";
    let extension = if deflate { format!("Sec-WebSocket-Extensions: {offer}\r\n") } else { String::new() };
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         Authorization: Bearer {token}\r\n{extension}\r\n"
    );
    tcp.write_all(request.as_bytes()).await?;
    // Byte by byte, so that no frame after the head is read here.
    let mut head = Vec::with_capacity(512);
    while !head.ends_with(b"\r\n\r\n") {
        ensure!(head.len() < 16 * 1024, "the upgrade answer's head is too long");
        head.push(tcp.read_u8().await.context("reading the upgrade answer")?);
    }
    let head = String::from_utf8_lossy(&head);
    ensure!(head.starts_with("HTTP/1.1 101"), "upgrade refused: {head}");
    let agreed = head
        .lines()
        .find_map(|l| l.split_once(':').filter(|(k, _)| k.eq_ignore_ascii_case("sec-websocket-extensions")))
        .map(|(_, v)| v.trim().to_string());
    let inflater = match (deflate, agreed) {
        (false, None) => None,
        (true, Some(_)) => {
            // The server compresses each message on its own; a fresh
            // inflater per message reads that.
            let agreement = ws_negotiate::negotiate([offer]).context("our own offer")?;
            Some(Inflater::new(&agreement, 1 << 20))
        }
        (false, Some(v)) => bail!("an extension was agreed that was not offered: {v}"),
        (true, None) => bail!("permessage-deflate was offered but not agreed"),
    };
    let io = InflateIo::new(Counting { inner: tcp, read: counted }, inflater, Recorded::default());
    let config = WebSocketConfig::default().read_buffer_size(4096);
    Ok(WebSocketStream::from_raw_socket(io, Role::Client, Some(config)).await)
}

/// Counts of the fan-out's receivers.
#[derive(Default)]
struct Received {
    delivered: AtomicU64,
    latency: std::sync::Mutex<Option<Histogram<u64>>>,
}

/// `o.members` receivers spread over the nodes, `SENDERS` senders sending
/// [`BODY`] (stamped) at `o.rate` per second in all for `o.secs`.
async fn compressed_fanout(addrs: &[String], tokens: &[String], o: &WireOptions, deflate: bool) -> Result<FanoutRun> {
    let epoch = Instant::now();
    let wire = Arc::new(AtomicU64::new(0));
    let received =
        Arc::new(Received { latency: std::sync::Mutex::new(Some(harness::histogram())), ..Default::default() });
    let opened: Vec<Result<WebSocketStream<InflateIo<Counting>>>> = futures_util::stream::iter(0..o.members)
        .map(|i| {
            let (addr, token, wire) = (addrs[i % addrs.len()].clone(), tokens[i % tokens.len()].clone(), wire.clone());
            async move {
                let mut ws = open_receiver(&addr, &token, deflate, wire).await?;
                harness::call(&mut ws, 1, Command::Subscribe { room: ROOM.into(), since: None }).await?;
                Ok(ws)
            }
        })
        .buffer_unordered(32)
        .collect()
        .await;
    let mut receivers = Vec::new();
    for ws in opened {
        let (ws, received) = (ws?, received.clone());
        receivers.push(tokio::spawn(receive(ws, received, epoch)));
    }
    let deflates_before = deflate_count(addrs);
    let mut senders = Vec::new();
    for j in 0..SENDERS {
        let (tx, mut rx) = open(&addrs[j % addrs.len()], None, &tokens[j % tokens.len()]).await?.split();
        // The answers are read and dropped, so the sender's socket never backs up.
        tokio::spawn(async move { while let Some(Ok(_)) = rx.next().await {} });
        senders.push(Arc::new(Mutex::new(tx)));
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    wire.store(0, Ordering::Relaxed);
    received.delivered.store(0, Ordering::Relaxed);
    let meter = CpuMeter::start();
    let started = Instant::now();
    let per_sender = o.rate / SENDERS as f64;
    let mut tasks = Vec::new();
    for (j, tx) in senders.iter().enumerate() {
        let tx = tx.clone();
        let secs = o.secs;
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(Duration::from_secs_f64(1.0 / per_sender.max(0.1)));
            let mut n = 0u64;
            while started.elapsed() < Duration::from_secs(secs) {
                tick.tick().await;
                let body = format!("@{};{BODY}", epoch.elapsed().as_micros());
                let cmd = Command::Send {
                    room: ROOM.into(),
                    body,
                    client_id: format!("w{}-{j}-{n}", epoch.elapsed().as_nanos()),
                    reply_to: None,
                    attachments: Vec::new(),
                };
                tx.lock().await.send(harness::palaver_frame(n + 2, cmd)).await?;
                n += 1;
            }
            anyhow::Ok(n)
        }));
    }
    let mut sent = 0;
    for t in tasks {
        sent += t.await??;
    }
    let secs = started.elapsed().as_secs_f64();
    let owed = sent * o.members as u64;
    let drain_until = Instant::now() + Duration::from_secs(10);
    while received.delivered.load(Ordering::Relaxed) < owed && Instant::now() < drain_until {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cpu = meter.read();
    let deflates = deflate_count(addrs).saturating_sub(deflates_before);
    for r in receivers {
        r.abort();
    }
    let latency =
        received.latency.lock().map_err(|_| anyhow::anyhow!("poisoned"))?.take().unwrap_or_else(harness::histogram);
    Ok(FanoutRun {
        delivered: received.delivered.load(Ordering::Relaxed),
        sent,
        secs,
        wire_bytes: wire.load(Ordering::Relaxed),
        latency,
        server_cores: cpu.servers,
        deflates,
        meter,
    })
}

/// Reads `message` events until the socket ends, recording each one's age.
async fn receive<S: AsyncRead + AsyncWrite + Unpin>(
    mut ws: WebSocketStream<S>,
    received: Arc<Received>,
    epoch: Instant,
) -> Result<()> {
    let mut local = harness::histogram();
    let mut count = 0u64;
    while let Some(msg) = ws.next().await {
        let Message::Text(text) = msg? else { continue };
        let v: Value = match serde_json::from_str(&text) {
            Ok(v) => v,
            Err(_) => continue,
        };
        if v["type"] != "message" {
            continue;
        }
        let Some(stamp) = v["body"].as_str().and_then(|b| b.strip_prefix('@')).and_then(|b| b.split_once(';')) else {
            continue;
        };
        if let Ok(sent) = stamp.0.parse::<u64>() {
            local.saturating_record((epoch.elapsed().as_micros() as u64).saturating_sub(sent));
        }
        count += 1;
        received.delivered.fetch_add(1, Ordering::Relaxed);
        if count.is_multiple_of(16) {
            merge(&received, &mut local);
        }
    }
    merge(&received, &mut local);
    Ok(())
}

/// Adds `local` to the shared histogram and empties it.
fn merge(received: &Received, local: &mut Histogram<u64>) {
    if let Ok(mut shared) = received.latency.lock()
        && let Some(h) = shared.as_mut()
    {
        let _ = h.add(&*local);
    }
    local.reset();
}

/// `palaver_ws_deflate_total` summed over the nodes' `/metrics`.
fn deflate_count(addrs: &[String]) -> u64 {
    addrs
        .iter()
        .filter_map(|a| harness::http_get(a, "/metrics").ok())
        .flat_map(|(_, body)| {
            body.lines()
                .filter(|l| l.starts_with("palaver_ws_deflate_total"))
                .filter_map(|l| l.split_whitespace().last().and_then(|v| v.parse::<f64>().ok()))
                .collect::<Vec<_>>()
        })
        .sum::<f64>() as u64
}
