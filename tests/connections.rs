//! The connection layer against hostile clients (issue "[1/6] no single
//! client can exhaust a node"): deadlines on every phase of a connection
//! (head, idle keep-alive, body, writes), the per-address cap and the
//! node's file descriptors under a flood from one address, the client's
//! real address behind the balancer (PROXY protocol v2), a forged header
//! from an untrusted peer, and credentials on the operations endpoints.
//!
//! Each test starts its own `palaver node` process (and, where it applies,
//! the balancer in this process) on 127.0.0.1 port 0. Clients that must
//! count as distinct addresses bind 127.0.0.x source addresses (Linux
//! routes all of 127/8 to the loopback interface). Descriptors are counted
//! in `/proc/PID/fd`.

use std::net::SocketAddr;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use palaver_balancer::Backend;
use palaver_balancer::BalancerSettings;
use palaver_balancer::Strategy;
use palaver_client::Visibility;
use palaver_node::config::OpsToken;
use palaver_testkit::Balancer;
use palaver_testkit::Node;
use palaver_testkit::User;
use palaver_testkit::WAIT;
use palaver_testkit::config;
use palaver_testkit::eventually;
use palaver_testkit::process::socket_count;
use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;

// ----- helpers -----

/// A connection to `addr` from the source address `ip`.
async fn connect_from(ip: [u8; 4], addr: SocketAddr) -> Result<TcpStream> {
    let socket = TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    tokio::time::timeout(WAIT, socket.connect(addr)).await.context("connect timed out")?.context("connect")
}

/// Resident memory of process `pid`, in KiB (for the report only).
fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Whether the peer has closed `s` (EOF or reset), without waiting.
fn closed_now(s: &TcpStream) -> bool {
    let mut buf = [0u8; 1024];
    match s.try_read(&mut buf) {
        Ok(0) => true,
        Ok(_) => false,
        Err(e) => e.kind() != std::io::ErrorKind::WouldBlock,
    }
}

/// Reads until the peer closes (EOF or reset) or `within` passes; answers
/// the bytes and whether it closed.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> (Vec<u8>, bool) {
    let deadline = tokio::time::Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return (got, false),
            Ok(Ok(0)) | Ok(Err(_)) => return (got, true),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// Reads one HTTP/1.1 answer with a `content-length`: its status and body,
/// or `None` when the connection closes before a full answer.
async fn read_response(s: &mut TcpStream) -> Result<Option<(u16, String)>> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let read = async {
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let head = String::from_utf8_lossy(&buf[..end]).to_string();
                let status: u16 = head.split(' ').nth(1).and_then(|c| c.parse().ok()).context("status line")?;
                let length: usize = head
                    .lines()
                    .find_map(|l| l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string()))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0);
                if buf.len() >= end + 4 + length {
                    return Ok(Some((status, String::from_utf8_lossy(&buf[end + 4..end + 4 + length]).to_string())));
                }
            }
            anyhow::ensure!(buf.len() < 1 << 20, "an answer over 1 MiB");
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return Ok(None),
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
    };
    tokio::time::timeout(WAIT, read).await.context("no answer and no close")?
}

/// `GET /healthz` on an open connection (keep-alive): its status, or `None`
/// when the connection was closed instead.
async fn healthz_on(s: &mut TcpStream) -> Result<Option<u16>> {
    // A refused connection may already be reset: a failed write is a close too.
    if s.write_all(b"GET /healthz HTTP/1.1\r\nHost: palaver\r\n\r\n").await.is_err() {
        return Ok(None);
    }
    Ok(read_response(s).await?.map(|(status, _)| status))
}

/// A plain `GET path` with an optional bearer token: status and body.
async fn get(addr: &str, path: &str, token: Option<&str>) -> Result<(u16, String)> {
    let http = reqwest::Client::builder().no_proxy().timeout(WAIT).build()?;
    let mut req = http.get(format!("http://{addr}{path}"));
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let r = req.send().await?;
    Ok((r.status().as_u16(), r.text().await?))
}

/// The value of `palaver_connections_refused_total{reason="..."}` on the node.
async fn refused(addr: &str, reason: &str) -> Result<u64> {
    let (_, text) = get(addr, "/metrics", None).await?;
    let key = format!("palaver_connections_refused_total{{reason=\"{reason}\"}} ");
    Ok(text.lines().find_map(|l| l.strip_prefix(&key)).and_then(|v| v.trim().parse().ok()).unwrap_or(0))
}

/// A balancer running in this process in front of `node` (as node 1),
/// its settings changed by `tweak`.
async fn balancer(node: &Node, tweak: impl FnOnce(&mut BalancerSettings)) -> Result<Balancer> {
    let mut settings = BalancerSettings {
        strategy: Strategy::RoundRobin,
        nodes: vec![Backend { id: 1, addr: node.socket_addr()?, weight: 1 }],
        health_interval: Duration::from_millis(100),
        discover: false,
        ..BalancerSettings::default()
    };
    tweak(&mut settings);
    Balancer::start(settings).await
}

// ----- deadlines -----

#[tokio::test]
async fn a_body_that_never_comes_gets_408_and_the_connection_closes() -> Result<()> {
    let timeout = Duration::from_millis(1000);
    let node = Node::start_with(config(|c| c.limits.handshake_timeout_ms = 1000)).await?;
    let mut s = TcpStream::connect(node.addr()).await?;
    // Full headers, a body announced, a few bytes of it, then nothing.
    s.write_all(
        b"POST /api/login HTTP/1.1\r\nHost: palaver\r\nContent-Type: application/json\r\nContent-Length: 64\r\n\r\n{\"user",
    )
    .await?;
    let started = Instant::now();
    let (bytes, closed) = read_until_closed(&mut s, WAIT).await;
    let took = started.elapsed();
    let text = String::from_utf8_lossy(&bytes).to_string();
    eprintln!("408 after {took:?}:\n{text}");
    assert!(closed, "the node kept the connection open for {WAIT:?}: {text:?}");
    assert!(took >= timeout - Duration::from_millis(100), "closed after {took:?}, before the timeout");
    assert!(took < Duration::from_secs(10), "closed only after {took:?}");
    assert!(text.starts_with("HTTP/1.1 408 "), "{text:?}");
    assert!(text.to_ascii_lowercase().contains("\r\nconnection: close\r\n"), "{text:?}");
    let body = text.split("\r\n\r\n").nth(1).context("a body")?;
    let v: Value = serde_json::from_str(body).with_context(|| format!("body {body:?}"))?;
    assert_eq!(v["error"]["code"], "timeout", "{v}");
    Ok(())
}

#[tokio::test]
async fn an_idle_keep_alive_connection_is_closed_after_the_handshake_timeout() -> Result<()> {
    // hyper's header_read_timeout restarts when a keep-alive connection
    // goes idle: this pins that it still does (hyper 1.x).
    let node = Node::start_with(config(|c| c.limits.handshake_timeout_ms = 800)).await?;
    let mut s = TcpStream::connect(node.addr()).await?;
    assert_eq!(healthz_on(&mut s).await?, Some(200));
    let started = Instant::now();
    assert_eq!(healthz_on(&mut s).await?, Some(200), "a second request on the same connection");
    let (rest, closed) = read_until_closed(&mut s, WAIT).await;
    let took = started.elapsed();
    eprintln!("idle keep-alive closed after {took:?}");
    assert!(closed && rest.is_empty(), "not closed within {WAIT:?} ({} bytes)", rest.len());
    assert!(took >= Duration::from_millis(700), "closed after {took:?}, before the timeout");
    assert!(took < Duration::from_secs(10), "closed only after {took:?}");
    Ok(())
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_after_the_write_timeout() -> Result<()> {
    let node = Node::start_with(config(|c| {
        c.limits.message_chars = 30_000;
        c.limits.write_timeout_ms = 1000;
        // Far above the wait below: hyper's head timer must not be what cuts it.
        c.limits.handshake_timeout_ms = 120_000;
    }))
    .await?;
    let pid = node.pid().context("pid")?;
    let alice = node.user("alice").await?;
    alice.http.create_room("big", "Big", Visibility::Public).await?;
    let body = "x".repeat(30_000);
    for i in 0..40 {
        alice.http.post_message("big", &body, &format!("c{i}")).await?;
    }
    let before = socket_count(pid)?;
    let rss_before = rss_kib(pid);
    // A small receive buffer, 20 pipelined requests for a 1.2 MB page each
    // (24 MB in all), and never a read.
    let socket = TcpSocket::new_v4()?;
    socket.set_recv_buffer_size(4096)?;
    let mut s = tokio::time::timeout(WAIT, socket.connect(node.addr().parse()?)).await??;
    let request = format!(
        "GET /api/rooms/big/messages?after=0&limit=500 HTTP/1.1\r\nHost: palaver\r\nAuthorization: Bearer {}\r\n\r\n",
        alice.token
    );
    s.write_all(request.repeat(20).as_bytes()).await?;
    let started = Instant::now();
    let during = eventually("the node holds the connection", WAIT, async || {
        let n = socket_count(pid)?;
        Ok((n > before).then_some(n))
    })
    .await?;
    let rss_during = rss_kib(pid);
    let after = eventually("the node lets the connection go", WAIT, async || {
        let n = socket_count(pid)?;
        Ok((n <= before).then_some(n))
    })
    .await?;
    let took = started.elapsed();
    eprintln!(
        "fds before {before}, holding {during}, after {after}; cut after {took:?}; RSS KiB {rss_before:?} → {rss_during:?} → {:?}",
        rss_kib(pid)
    );
    assert!(took >= Duration::from_millis(900), "cut after {took:?}, before the write timeout");
    assert!(took < Duration::from_secs(15), "cut only after {took:?}");
    // What the client can still read is what sat in the buffers: far less
    // than the 24 MB asked for, then the end of the connection.
    let (got, closed) = read_until_closed(&mut s, WAIT).await;
    eprintln!("the client read {} bytes after the cut", got.len());
    assert!(closed, "the connection is still open");
    assert!(got.len() < 12 * 1024 * 1024, "{} bytes arrived: the node did not stop writing", got.len());
    // The node is fine.
    assert_eq!(get(node.addr(), "/healthz", None).await?.0, 200);
    Ok(())
}

// ----- caps -----

#[tokio::test]
async fn one_address_stops_at_its_cap_while_health_answers_and_descriptors_come_back() -> Result<()> {
    const CAP: usize = 50;
    const ATTEMPTS: usize = 200;
    let node = Node::start_with(config(|c| {
        c.limits.handshake_timeout_ms = 20_000;
        c.limits.max_connections_per_address = CAP;
    }))
    .await?;
    let pid = node.pid().context("pid")?;
    let addr: SocketAddr = node.addr().parse()?;
    let before = socket_count(pid)?;
    // Each sends full headers announcing a body, then nothing.
    let mut conns = Vec::with_capacity(ATTEMPTS);
    let started = Instant::now();
    for _ in 0..ATTEMPTS {
        let mut s = connect_from([127, 0, 0, 2], addr).await?;
        let _ = s.write_all(b"POST /api/register HTTP/1.1\r\nHost: palaver\r\nContent-Length: 100\r\n\r\n").await;
        conns.push(s);
    }
    let closed = eventually("the connections over the cap are closed", WAIT, async || {
        let closed = conns.iter().filter(|s| closed_now(s)).count();
        Ok((closed >= ATTEMPTS - CAP).then_some(closed))
    })
    .await?;
    eprintln!("{ATTEMPTS} attempts in {:?}: {closed} closed at once", started.elapsed());
    assert_eq!(closed, ATTEMPTS - CAP, "exactly the cap stays open");
    let holding = socket_count(pid)?;
    assert!(
        holding >= before + CAP && holding <= before + CAP + 5,
        "fds before {before}, with {CAP} held connections {holding}"
    );
    // Another address is served meanwhile.
    assert_eq!(get(node.addr(), "/healthz", None).await?.0, 200, "/healthz from 127.0.0.1");
    assert_eq!(refused(node.addr(), "per_address").await?, (ATTEMPTS - CAP) as u64);
    drop(conns);
    let after = eventually("the descriptors come back", WAIT, async || {
        let n = socket_count(pid)?;
        Ok((n <= before + 2).then_some(n))
    })
    .await?;
    eprintln!("node fds: before {before}, holding {holding}, after {after}");
    // And the address may connect again.
    let mut s = connect_from([127, 0, 0, 2], addr).await?;
    assert_eq!(healthz_on(&mut s).await?, Some(200));
    Ok(())
}

#[tokio::test]
async fn websockets_keep_their_place_under_the_per_address_cap_after_the_upgrade() -> Result<()> {
    let node = Node::start_with(config(|c| {
        c.limits.handshake_timeout_ms = 20_000;
        c.limits.max_connections_per_address = 2;
    }))
    .await?;
    let addr: SocketAddr = node.addr().parse()?;
    let mut sockets = Vec::new();
    for _ in 0..2 {
        let s = connect_from([127, 0, 0, 2], addr).await?;
        let (ws, answer) = tokio::time::timeout(WAIT, tokio_tungstenite::client_async(format!("ws://{addr}/ws"), s))
            .await
            .context("upgrade timed out")??;
        assert_eq!(answer.status().as_u16(), 101);
        sockets.push(ws);
    }
    // Their HTTP part is over, the sockets are not: a third is refused.
    let mut third = connect_from([127, 0, 0, 2], addr).await?;
    assert_eq!(healthz_on(&mut third).await?, None, "two upgraded sockets still count");
    drop(sockets);
    eventually("the places come back when the sockets close", WAIT, async || {
        let mut s = connect_from([127, 0, 0, 2], addr).await?;
        Ok(healthz_on(&mut s).await?.filter(|status| *status == 200))
    })
    .await?;
    Ok(())
}

// ----- the client's address behind the balancer -----

#[tokio::test]
async fn behind_the_balancer_the_node_counts_each_clients_own_address() -> Result<()> {
    let node = Node::start_with(config(|c| {
        c.limits.handshake_timeout_ms = 20_000;
        c.limits.max_connections_per_address = 3;
    }))
    .await?;
    let lb = balancer(&node, |_| {}).await?;
    eventually("the balancer sees the node up", WAIT, async || {
        Ok(lb.nodes(None).await?.remove(&1).filter(|n| n["health"] == "up"))
    })
    .await?;
    let mut held = Vec::new();
    for i in 0..3 {
        let mut s = connect_from([127, 0, 0, 2], lb.addr).await?;
        assert_eq!(healthz_on(&mut s).await?, Some(200), "connection {i} from 127.0.0.2");
        held.push(s);
    }
    let mut fourth = connect_from([127, 0, 0, 2], lb.addr).await?;
    assert_eq!(healthz_on(&mut fourth).await?, None, "a fourth connection from 127.0.0.2 is refused by the node");
    let mut other = connect_from([127, 0, 0, 3], lb.addr).await?;
    assert_eq!(healthz_on(&mut other).await?, Some(200), "127.0.0.3 has its own count");
    // Through the same balancer, so the node told them apart by the header.
    assert_eq!(refused(node.addr(), "per_address").await?, 1);
    for s in &mut held {
        assert_eq!(healthz_on(s).await?, Some(200), "the held connections still work");
    }
    Ok(())
}

#[tokio::test]
async fn a_proxy_header_is_believed_only_from_a_trusted_peer() -> Result<()> {
    let node = Node::start_with(config(|c| {
        c.limits.handshake_timeout_ms = 20_000;
        c.limits.max_connections_per_address = 2;
        c.security.trusted_proxies = vec![std::net::Ipv4Addr::new(127, 0, 0, 2).into()];
    }))
    .await?;
    let addr: SocketAddr = node.addr().parse()?;
    let header = |claimed: &str| -> Result<Vec<u8>> {
        Ok(palaver_balancer::proxy::Header::new(claimed.parse()?, addr).as_bytes().to_vec())
    };
    // Connects from `from`, sends a header claiming `claimed`, then /healthz.
    let proxied = async |from: [u8; 4], claimed: &str| -> Result<(TcpStream, Option<u16>)> {
        let mut s = connect_from(from, addr).await?;
        let _ = s.write_all(&header(claimed)?).await;
        let status = healthz_on(&mut s).await?;
        Ok((s, status))
    };

    // From the trusted peer the header counts: two connections for 10.9.0.1,
    // a third is refused, and 10.9.0.2 is served though the peer holds two.
    let (t1, status) = proxied([127, 0, 0, 2], "10.9.0.1:5000").await?;
    assert_eq!(status, Some(200), "a trusted header followed by a request");
    let (t2, status) = proxied([127, 0, 0, 2], "10.9.0.1:5001").await?;
    assert_eq!(status, Some(200));
    let (_, status) = proxied([127, 0, 0, 2], "10.9.0.1:5002").await?;
    assert_eq!(status, None, "a third connection for 10.9.0.1 is over its cap");
    let (t3, status) = proxied([127, 0, 0, 2], "10.9.0.2:5000").await?;
    assert_eq!(status, Some(200), "10.9.0.2 has its own count");
    assert_eq!(refused(node.addr(), "per_address").await?, 1);

    // From an untrusted peer the header is not honoured: it is not taken
    // off the stream (the request that follows is not served) ...
    let (_, status) = proxied([127, 0, 0, 3], "10.9.0.3:5000").await?;
    assert_eq!(status, Some(400), "a forged header from 127.0.0.3 is not HTTP, and not taken off the stream");
    // ... and the peer's own address is what counts: with two plain
    // connections from 127.0.0.3 open, a third claiming another address
    // is refused at once.
    let mut plain = Vec::new();
    for _ in 0..2 {
        let mut s = connect_from([127, 0, 0, 3], addr).await?;
        assert_eq!(healthz_on(&mut s).await?, Some(200), "a plain request from 127.0.0.3");
        plain.push(s);
    }
    let (_, status) = proxied([127, 0, 0, 3], "10.9.0.4:5000").await?;
    assert_eq!(status, None, "counted as 127.0.0.3, which is at its cap");
    assert_eq!(refused(node.addr(), "per_address").await?, 2);
    // 127.0.0.1 is not trusted here and plain clients from it are served.
    assert_eq!(get(node.addr(), "/healthz", None).await?.0, 200);
    drop((t1, t2, t3, plain));
    Ok(())
}

// ----- operations endpoints -----

#[tokio::test]
async fn operations_endpoints_want_the_ops_token_or_an_admin_and_discovery_sends_it() -> Result<()> {
    let token = "connections-test-ops-token-01";
    let node = Node::start_with(config(|c| {
        c.security.ops_token = Some(OpsToken::new(token).expect("a valid ops token"));
        c.security.metrics_public = false;
    }))
    .await?;
    // This node's own ops token makes the admin (the kit's is replaced).
    node.http().with_token(token).create_user("admin", &User::password_of("admin"), true).await?;
    let admin = node.login("admin").await?;
    let bob = node.user("bob").await?;
    let addr = node.addr();
    for path in ["/api/cluster/members", "/metrics"] {
        assert_eq!(get(addr, path, None).await?.0, 401, "{path} without a token");
        assert_eq!(get(addr, path, Some("connections-test-ops-token-02")).await?.0, 401, "{path}, wrong token");
        assert_eq!(get(addr, path, Some(&bob.token)).await?.0, 403, "{path} as a user");
        assert_eq!(get(addr, path, Some(&admin.token)).await?.0, 200, "{path} as the admin");
        assert_eq!(get(addr, path, Some(token)).await?.0, 200, "{path} with the ops token");
    }
    let (_, members) = get(addr, "/api/cluster/members", Some(token)).await?;
    let members: Vec<Value> = serde_json::from_str(&members)?;
    assert_eq!(members.first().map(|m| m["id"].clone()), Some(Value::from(1)), "{members:?}");
    let (status, body) = get(addr, "/api/cluster/members", None).await?;
    let v: Value = serde_json::from_str(&body)?;
    assert_eq!((status, v["error"]["code"].as_str()), (401, Some("unauthorized")));
    assert_eq!(get(addr, "/healthz", None).await?.0, 200, "health stays open");

    // The balancer with the same token: its admin address wants it, and its
    // discovery reads the member list with it (the node's `connections`
    // shows up as `reported_connections`).
    let lb = balancer(&node, |s| {
        s.discover = true;
        s.ops_token = palaver_balancer::OpsToken::new(token).ok();
    })
    .await?;
    let admin_addr = lb.admin.to_string();
    assert_eq!(get(&admin_addr, "/balancer/nodes", None).await?.0, 401);
    assert_eq!(get(&admin_addr, "/metrics", None).await?.0, 401);
    assert_eq!(get(&admin_addr, "/healthz", None).await?.0, 200);
    let n1 = eventually("the member list read with the token", WAIT, async || {
        Ok(lb.nodes(Some(token)).await?.remove(&1).filter(|n| n["reported_connections"].is_u64()))
    })
    .await?;
    assert_eq!(n1["health"], "up", "{n1}");
    Ok(())
}
