//! The balancer (docs/protocol.md §7.4): strategies over real connections,
//! health (active with hysteresis, passive with retry), draining, nodes
//! learnt from the cluster, `GET /assign`, the admin endpoints, limits and
//! graceful shutdown, against small fake nodes; and one end-to-end run with
//! a real node behind the balancer (WebSocket, SSE, long polling).
//!
//! Each test runs `palaver_balancer::run` in-process on 127.0.0.1 port 0.
//! A fake node answers `/healthz` and `/api/cluster/members` like a node,
//! any other HTTP request with `backend N`, and the line `hello` with
//! `backend N` followed by an echo of everything after it, so a client
//! knows which node it reached and can hold a connection open. A fake
//! takes the PROXY v2 header the balancer writes first (and keeps the
//! client address it names) and remembers the `Authorization` of member
//! list requests.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use palaver_balancer::Backend;
use palaver_balancer::BalancerSettings;
use palaver_balancer::Strategy;
use palaver_client::Event;
use palaver_client::Http;
use palaver_client::Sse;
use palaver_client::SseOptions;
use palaver_client::Visibility;
use palaver_client::Ws;
use palaver_testkit::Balancer;
use palaver_testkit::Node;
use palaver_testkit::WAIT;
use palaver_testkit::eventually;
use serde_json::Value;
use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;
use tokio::task::JoinSet;

/// Health interval in these tests.
const INTERVAL: Duration = Duration::from_millis(100);
/// Failures that take a node down.
const DOWN_AFTER: u32 = 3;

// ----- fake nodes -----

/// What a fake node answers, changeable while it runs.
struct FakeState {
    id: u64,
    /// `/healthz`: HTTP status and `status` field.
    health: Mutex<(u16, String)>,
    /// `/api/cluster/members` body; `None` answers 404.
    members: Mutex<Option<Value>>,
    /// `hello` connections received.
    hellos: AtomicUsize,
    /// `/healthz` requests answered.
    checks: AtomicUsize,
    /// The client address of the last PROXY header received.
    proxied: Mutex<Option<SocketAddr>>,
    /// `Authorization` of the last member-list request (`""` when absent).
    members_auth: Mutex<Option<String>>,
}

/// A fake node on 127.0.0.1 port 0.
struct Fake {
    id: u64,
    addr: SocketAddr,
    state: Arc<FakeState>,
    task: Option<JoinHandle<()>>,
}

impl Fake {
    async fn start(id: u64) -> Result<Fake> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let state = Arc::new(FakeState {
            id,
            health: Mutex::new((200, "ok".into())),
            members: Mutex::new(None),
            hellos: AtomicUsize::new(0),
            checks: AtomicUsize::new(0),
            proxied: Mutex::new(None),
            members_auth: Mutex::new(None),
        });
        let s = state.clone();
        let task = tokio::spawn(async move {
            // Dropping the set (when this task is aborted) drops every connection.
            let mut conns = JoinSet::new();
            loop {
                tokio::select! {
                    accepted = listener.accept() => {
                        if let Ok((stream, _)) = accepted {
                            conns.spawn(fake_conn(s.clone(), stream));
                        }
                    }
                    Some(_) = conns.join_next(), if !conns.is_empty() => {}
                }
            }
        });
        Ok(Fake { id, addr, state, task: Some(task) })
    }

    fn backend(&self, weight: u32) -> Backend {
        Backend { id: self.id, addr: self.addr, weight }
    }

    fn set_health(&self, code: u16, status: &str) {
        *self.state.health.lock().expect("lock") = (code, status.to_string());
    }

    fn set_members(&self, list: Value) {
        *self.state.members.lock().expect("lock") = Some(list);
    }

    fn hellos(&self) -> usize {
        self.state.hellos.load(Ordering::SeqCst)
    }

    fn proxied(&self) -> Option<SocketAddr> {
        *self.state.proxied.lock().expect("lock")
    }

    fn members_auth(&self) -> Option<String> {
        self.state.members_auth.lock().expect("lock").clone()
    }

    /// Stops listening and drops every connection; returns once done.
    async fn kill(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            let _ = task.await;
        }
    }
}

impl Drop for Fake {
    fn drop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// The member-list entry a node would give for `fake`.
fn member(fake: &Fake, state: &str, connections: Option<u64>) -> Value {
    json!({"id": fake.id, "address": fake.addr.to_string(), "state": state, "connections": connections})
}

/// The PROXY v2 signature.
const PROXY_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";

/// Reads a PROXY v2 header if the connection starts with one (TCP over
/// IPv4 or IPv6 only): the client address it names.
async fn take_proxy_header(s: &mut TcpStream) -> Result<Option<SocketAddr>> {
    let mut first = [0u8; 1];
    if s.peek(&mut first).await? == 0 || first[0] != b'\r' {
        return Ok(None);
    }
    let mut fixed = [0u8; 16];
    s.read_exact(&mut fixed).await?;
    anyhow::ensure!(fixed[..12] == PROXY_SIGNATURE && fixed[12] == 0x21, "bad PROXY header {fixed:?}");
    let mut block = vec![0u8; usize::from(u16::from_be_bytes([fixed[14], fixed[15]]))];
    s.read_exact(&mut block).await?;
    Ok(match (fixed[13], block.len()) {
        (0x11, 12) => {
            let ip = std::net::Ipv4Addr::new(block[0], block[1], block[2], block[3]);
            Some(SocketAddr::new(ip.into(), u16::from_be_bytes([block[8], block[9]])))
        }
        (0x21, 36) => {
            let octets: [u8; 16] = block[..16].try_into()?;
            Some(SocketAddr::new(std::net::Ipv6Addr::from(octets).into(), u16::from_be_bytes([block[32], block[33]])))
        }
        other => bail!("unexpected PROXY family/length {other:?}"),
    })
}

async fn fake_conn(state: Arc<FakeState>, mut s: TcpStream) -> Result<()> {
    if let Some(client) = take_proxy_header(&mut s).await? {
        *state.proxied.lock().expect("lock") = Some(client);
    }
    let first = read_line(&mut s).await?;
    if first == "hello" {
        state.hellos.fetch_add(1, Ordering::SeqCst);
        s.write_all(format!("backend {}\n", state.id).as_bytes()).await?;
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = s.read(&mut buf).await?;
            if n == 0 {
                s.shutdown().await?;
                return Ok(());
            }
            s.write_all(&buf[..n]).await?;
        }
    }
    // An HTTP request: read the rest of the head.
    let mut auth = String::new();
    loop {
        let line = read_line(&mut s).await?;
        let line = line.trim_end_matches('\r');
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':')
            && name.eq_ignore_ascii_case("authorization")
        {
            auth = value.trim().to_string();
        }
    }
    let path = first.split(' ').nth(1).unwrap_or_default().to_string();
    if path == "/api/cluster/members" {
        *state.members_auth.lock().expect("lock") = Some(auth);
    }
    let (code, body) = match path.as_str() {
        "/healthz" => {
            state.checks.fetch_add(1, Ordering::SeqCst);
            let (code, status) = state.health.lock().expect("lock").clone();
            (code, json!({"status": status, "node": state.id}).to_string())
        }
        "/api/cluster/members" => match state.members.lock().expect("lock").clone() {
            Some(list) => (200, list.to_string()),
            None => (404, json!({"error": {"code": "not_found", "message": "path not found"}}).to_string()),
        },
        _ => (200, format!("backend {}", state.id)),
    };
    let response = format!(
        "HTTP/1.1 {code} X\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(response.as_bytes()).await?;
    s.shutdown().await?;
    Ok(())
}

/// Reads one `\n`-terminated line (without it), at most 8 KiB.
async fn read_line(s: &mut TcpStream) -> Result<String> {
    let mut line = Vec::new();
    loop {
        let mut b = [0u8; 1];
        if s.read(&mut b).await? == 0 {
            bail!("closed after {:?}", String::from_utf8_lossy(&line));
        }
        if b[0] == b'\n' {
            return Ok(String::from_utf8(line)?);
        }
        line.push(b[0]);
        if line.len() > 8192 {
            bail!("line too long");
        }
    }
}

/// Connects through `addr`, says hello; answers the open connection and
/// the id of the node it reached.
async fn hello(addr: SocketAddr) -> Result<(TcpStream, u64)> {
    let mut s = tokio::time::timeout(WAIT, TcpStream::connect(addr)).await.context("connect timed out")??;
    s.write_all(b"hello\n").await?;
    let line = tokio::time::timeout(WAIT, read_line(&mut s)).await.context("no answer to hello")??;
    let id = line.strip_prefix("backend ").and_then(|n| n.parse().ok()).with_context(|| format!("answer {line:?}"))?;
    Ok((s, id))
}

/// Like [`hello`], from the source address `ip` (any of 127/8 works on Linux).
async fn hello_from(addr: SocketAddr, ip: [u8; 4]) -> Result<(TcpStream, u64)> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((ip, 0)))?;
    let mut s = tokio::time::timeout(WAIT, socket.connect(addr)).await.context("connect timed out")??;
    s.write_all(b"hello\n").await?;
    let line = tokio::time::timeout(WAIT, read_line(&mut s)).await.context("no answer to hello")??;
    let id = line.strip_prefix("backend ").and_then(|n| n.parse().ok()).with_context(|| format!("answer {line:?}"))?;
    Ok((s, id))
}

/// `n` short connections one after another; answers the node of each.
async fn hellos(addr: SocketAddr, n: usize) -> Result<Vec<u64>> {
    let mut ids = Vec::with_capacity(n);
    for i in 0..n {
        let (_s, id) = hello(addr).await.with_context(|| format!("connection {i}"))?;
        ids.push(id);
    }
    Ok(ids)
}

fn tally(ids: &[u64]) -> BTreeMap<u64, usize> {
    let mut t = BTreeMap::new();
    for id in ids {
        *t.entry(*id).or_insert(0) += 1;
    }
    t
}

/// Writes a line on a held connection and expects it back.
async fn echo(s: &mut TcpStream, text: &str) -> Result<()> {
    s.write_all(format!("{text}\n").as_bytes()).await?;
    let got = tokio::time::timeout(WAIT, read_line(s)).await.context("no echo")??;
    anyhow::ensure!(got == text, "echoed {got:?}, sent {text:?}");
    Ok(())
}

// ----- the balancer under test -----

fn settings(strategy: Strategy, nodes: Vec<Backend>) -> BalancerSettings {
    BalancerSettings {
        strategy,
        nodes,
        health_interval: INTERVAL,
        down_after: DOWN_AFTER,
        up_after: 2,
        connect_timeout: Duration::from_secs(2),
        ..BalancerSettings::default()
    }
}

/// Waits until node `id`'s entry in `lb`'s `/balancer/nodes` satisfies `pred`.
async fn wait_node(lb: &Balancer, what: &str, id: u64, pred: impl Fn(&Value) -> bool) -> Result<Value> {
    eventually(what, WAIT, async || Ok(lb.nodes(None).await?.remove(&id).filter(|n| pred(n)))).await
}

async fn three() -> Result<[Fake; 3]> {
    Ok([Fake::start(1).await?, Fake::start(2).await?, Fake::start(3).await?])
}

// ----- strategies over real connections -----

#[tokio::test]
async fn round_robin_splits_300_connections_100_100_100() -> Result<()> {
    let fakes = three().await?;
    let lb = Balancer::start(settings(Strategy::RoundRobin, fakes.iter().map(|f| f.backend(1)).collect())).await?;
    let ids = hellos(lb.addr, 300).await?;
    assert_eq!(tally(&ids), BTreeMap::from([(1, 100), (2, 100), (3, 100)]));
    assert_eq!(&ids[..6], [1, 2, 3, 1, 2, 3]);
    assert_eq!(fakes.iter().map(Fake::hellos).collect::<Vec<_>>(), [100, 100, 100]);
    let nodes = lb.nodes(None).await?;
    assert_eq!(nodes.values().map(|n| n["routed"].as_u64()).collect::<Vec<_>>(), [Some(100); 3]);
    Ok(())
}

#[tokio::test]
async fn weighted_3_1_1_splits_300_connections_180_60_60_without_bursts() -> Result<()> {
    let fakes = three().await?;
    let weights = [3, 1, 1];
    let nodes = fakes.iter().zip(weights).map(|(f, w)| f.backend(w)).collect();
    let lb = Balancer::start(settings(Strategy::Weighted, nodes)).await?;
    let ids = hellos(lb.addr, 300).await?;
    assert_eq!(tally(&ids), BTreeMap::from([(1, 180), (2, 60), (3, 60)]));
    assert_eq!(&ids[..5], [1, 2, 1, 3, 1], "smooth: the heavy node's turns are spread");
    assert!(ids.windows(3).all(|w| w != [1, 1, 1]), "three in a row for weight 3 of 5");
    Ok(())
}

#[tokio::test]
async fn least_connections_sends_new_clients_to_the_least_loaded_node() -> Result<()> {
    let fakes = three().await?;
    let lb =
        Balancer::start(settings(Strategy::LeastConnections, fakes.iter().map(|f| f.backend(1)).collect())).await?;
    let mut held = Vec::new();
    for _ in 0..6 {
        held.push(hello(lb.addr).await?);
    }
    assert_eq!(held.iter().map(|(_, id)| *id).collect::<Vec<_>>(), [1, 2, 3, 1, 2, 3]);
    // Close unevenly: both of node 1's, one of node 2's. Loads become 0, 1, 2.
    let mut kept = Vec::new();
    let mut closed_on_2 = false;
    for (s, id) in held {
        match id {
            1 => drop(s),
            2 if !closed_on_2 => {
                closed_on_2 = true;
                drop(s);
            }
            _ => kept.push((s, id)),
        }
    }
    eventually("the balancer counts the closes", WAIT, async || {
        let nodes = lb.nodes(None).await?;
        let active: Vec<_> = nodes.values().map(|n| n["active"].as_u64().unwrap_or(99)).collect();
        Ok((active == [0, 1, 2]).then_some(()))
    })
    .await?;
    let mut next = Vec::new();
    for _ in 0..5 {
        let (s, id) = hello(lb.addr).await?;
        next.push(id);
        kept.push((s, id));
    }
    // 0,1,2 → 1; 1,1,2 → tie, after 1 comes 2; 1,2,2 → 1; 2,2,2 → after 1, 2; 2,3,2 → 3.
    assert_eq!(next, [1, 2, 1, 2, 3]);
    Ok(())
}

// ----- health -----

#[tokio::test]
async fn a_killed_node_gets_no_clients_and_no_client_notices() -> Result<()> {
    let [f1, mut f2, f3] = three().await?;
    let lb = Balancer::start(settings(Strategy::RoundRobin, vec![f1.backend(1), f2.backend(1), f3.backend(1)])).await?;
    let before = hellos(lb.addr, 30).await?;
    assert_eq!(tally(&before), BTreeMap::from([(1, 10), (2, 10), (3, 10)]));
    f2.kill().await;
    let killed = Instant::now();
    // Every client still reaches a node, the first one right after the
    // kill too (its failed connect to node 2 is retried elsewhere).
    let after = hellos(lb.addr, 30).await?;
    assert!(!after.contains(&2), "{after:?}");
    assert_eq!(f2.hellos(), 10);
    let n2 = wait_node(&lb, "node 2 down", 2, |n| n["health"] == "down").await?;
    let took = killed.elapsed();
    assert!(n2["failures"].as_u64().unwrap_or_default() >= u64::from(DOWN_AFTER), "{n2}");
    // interval × down_after is the promise; the slack is for slow machines.
    assert!(took < INTERVAL * DOWN_AFTER + Duration::from_secs(5), "down after {took:?}");
    let more = hellos(lb.addr, 20).await?;
    assert_eq!(tally(&more), BTreeMap::from([(1, 10), (3, 10)]));
    Ok(())
}

#[tokio::test]
async fn failing_health_checks_take_a_node_out_and_passing_ones_bring_it_back() -> Result<()> {
    let fakes = three().await?;
    let lb = Balancer::start(settings(Strategy::RoundRobin, fakes.iter().map(|f| f.backend(1)).collect())).await?;
    wait_node(&lb, "node 2 checked", 2, |n| n["health"] == "up").await?;
    fakes[1].set_health(503, "no_leader");
    let failing = Instant::now();
    wait_node(&lb, "node 2 down", 2, |n| n["health"] == "down").await?;
    let took = failing.elapsed();
    assert!(took >= INTERVAL * (DOWN_AFTER - 1), "down after {took:?}: one failure is not enough");
    assert!(took < INTERVAL * DOWN_AFTER + Duration::from_secs(5), "down after {took:?}");
    let n2 = lb.nodes(None).await?.remove(&2).context("node 2")?;
    assert!(n2["last_error"].as_str().unwrap_or_default().contains("503"), "{n2}");
    // Node 2 still accepts connections, but gets none.
    let seen = fakes[1].hellos();
    let ids = hellos(lb.addr, 20).await?;
    assert_eq!(tally(&ids), BTreeMap::from([(1, 10), (3, 10)]));
    assert_eq!(fakes[1].hellos(), seen);
    fakes[1].set_health(200, "ok");
    wait_node(&lb, "node 2 up again", 2, |n| n["health"] == "up").await?;
    let ids = hellos(lb.addr, 30).await?;
    assert_eq!(tally(&ids), BTreeMap::from([(1, 10), (2, 10), (3, 10)]));
    // The balancer's own health follows the nodes'.
    assert_eq!(lb.admin_get("/healthz", None).await?.0, 200);
    for f in &fakes {
        f.set_health(503, "no_leader");
    }
    eventually("balancer unhealthy", WAIT, async || Ok((lb.admin_get("/healthz", None).await?.0 == 503).then_some(())))
        .await?;
    Ok(())
}

#[tokio::test]
async fn a_draining_node_keeps_its_connections_but_gets_no_new_ones() -> Result<()> {
    let fakes = three().await?;
    let lb = Balancer::start(settings(Strategy::RoundRobin, fakes.iter().map(|f| f.backend(1)).collect())).await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(hello(lb.addr).await?);
    }
    let (on_2, id) = held.iter_mut().find(|(_, id)| *id == 2).context("a connection on node 2")?;
    assert_eq!(*id, 2);
    fakes[1].set_health(200, "draining");
    let n2 = wait_node(&lb, "node 2 draining", 2, |n| n["draining"] == true).await?;
    assert_eq!((n2["health"].as_str(), n2["active"].as_u64()), (Some("up"), Some(1)), "{n2}");
    let ids = hellos(lb.addr, 20).await?;
    assert_eq!(tally(&ids), BTreeMap::from([(1, 10), (3, 10)]));
    echo(on_2, "still here").await?;
    assert_eq!(lb.nodes(None).await?[&2]["active"], 1);
    fakes[1].set_health(200, "ok");
    wait_node(&lb, "node 2 serving", 2, |n| n["draining"] == false).await?;
    let ids = hellos(lb.addr, 3).await?;
    assert!(ids.contains(&2), "{ids:?}");
    Ok(())
}

// ----- membership from the cluster -----

#[tokio::test]
async fn nodes_are_learnt_from_the_cluster_and_follow_its_draining_marks() -> Result<()> {
    let fakes = three().await?;
    // Only nodes 1 and 2 are configured; the cluster knows 3 as well.
    let lb = Balancer::start(settings(Strategy::RoundRobin, vec![fakes[0].backend(1), fakes[1].backend(1)])).await?;
    let list = json!([
        member(&fakes[0], "serving", None),
        member(&fakes[1], "serving", None),
        member(&fakes[2], "serving", None)
    ]);
    for f in &fakes {
        f.set_members(list.clone());
    }
    let n3 = wait_node(&lb, "node 3 learnt and up", 3, |n| n["health"] == "up").await?;
    assert_eq!(
        (n3["discovered"].as_bool(), n3["address"].as_str()),
        (Some(true), Some(fakes[2].addr.to_string().as_str()))
    );
    let ids = hellos(lb.addr, 30).await?;
    assert_eq!(tally(&ids), BTreeMap::from([(1, 10), (2, 10), (3, 10)]));
    // The cluster marks node 2 draining (its own /healthz still says ok).
    let list = json!([
        member(&fakes[0], "serving", None),
        member(&fakes[1], "draining", None),
        member(&fakes[2], "serving", None)
    ]);
    for f in &fakes {
        f.set_members(list.clone());
    }
    wait_node(&lb, "node 2 draining", 2, |n| n["draining"] == true).await?;
    let ids = hellos(lb.addr, 20).await?;
    assert_eq!(tally(&ids), BTreeMap::from([(1, 10), (3, 10)]));
    // Node 3 leaves the cluster: the balancer forgets it.
    let list = json!([member(&fakes[0], "serving", None), member(&fakes[1], "serving", None)]);
    for f in &fakes {
        f.set_members(list.clone());
    }
    eventually("node 3 forgotten", WAIT, async || Ok((!lb.nodes(None).await?.contains_key(&3)).then_some(()))).await?;
    wait_node(&lb, "node 2 serving", 2, |n| n["draining"] == false).await?;
    let ids = hellos(lb.addr, 20).await?;
    assert_eq!(tally(&ids), BTreeMap::from([(1, 10), (2, 10)]));
    Ok(())
}

// ----- assign mode -----

#[tokio::test]
async fn get_assign_answers_a_node_in_turn_and_other_requests_are_relayed() -> Result<()> {
    let fakes = three().await?;
    let lb = Balancer::start(settings(Strategy::RoundRobin, fakes.iter().map(|f| f.backend(1)).collect())).await?;
    let mut got = Vec::new();
    for path in ["/assign", "/assign?client=web", "/assign", "/assign", "/assign", "/assign"] {
        let r = lb.public_get(path).send().await?;
        assert_eq!(r.status().as_u16(), 200);
        let v: Value = r.json().await?;
        let id = v["node"].as_u64().context("node")?;
        let addr = fakes[id as usize - 1].addr;
        assert_eq!(v, json!({"node": id, "url": format!("http://{addr}"), "ws": format!("ws://{addr}/ws")}));
        got.push(id);
    }
    assert_eq!(got, [1, 2, 3, 1, 2, 3]);
    assert_eq!(fakes.iter().map(Fake::hellos).sum::<usize>(), 0, "assign requests never reach a node");
    // A path that only starts like /assign is an ordinary relayed request.
    let text = lb.public_get("/assignment").send().await?.text().await?;
    assert!(text.starts_with("backend "), "{text}");
    let nodes = lb.nodes(None).await?;
    assert_eq!(nodes.values().map(|n| n["assigned"].as_u64()).collect::<Vec<_>>(), [Some(2); 3]);
    Ok(())
}

#[tokio::test]
async fn least_connections_assign_uses_the_counts_the_nodes_report() -> Result<()> {
    let fakes = three().await?;
    let lb =
        Balancer::start(settings(Strategy::LeastConnections, fakes.iter().map(|f| f.backend(1)).collect())).await?;
    let list = json!([
        member(&fakes[0], "serving", Some(5)),
        member(&fakes[1], "serving", Some(0)),
        member(&fakes[2], "serving", Some(9))
    ]);
    for f in &fakes {
        f.set_members(list.clone());
    }
    wait_node(&lb, "reported counts known", 3, |n| n["reported_connections"] == 9).await?;
    for _ in 0..3 {
        let v: Value = lb.public_get("/assign").send().await?.json().await?;
        assert_eq!(v["node"], 2, "{v}");
    }
    // Relayed connections still balance on the balancer's own counts.
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(hello(lb.addr).await?);
    }
    let mut ids: Vec<u64> = held.iter().map(|(_, id)| *id).collect();
    ids.sort();
    assert_eq!(ids, [1, 2, 3]);
    Ok(())
}

// ----- operations -----

#[tokio::test]
async fn the_admin_endpoints_answer() -> Result<()> {
    let fakes = three().await?;
    let lb = Balancer::start(settings(Strategy::Weighted, fakes.iter().map(|f| f.backend(2)).collect())).await?;
    hellos(lb.addr, 3).await?;
    for id in 1..=3 {
        wait_node(&lb, "connections closed", id, |n| n["active"] == 0).await?;
    }
    let (status, text) = lb.admin_get("/healthz", None).await?;
    assert_eq!(status, 200, "{text}");
    assert_eq!(serde_json::from_str::<Value>(&text)?, json!({"status": "ok", "nodes_usable": 3}));
    let nodes = lb.nodes(None).await?;
    let n1 = &nodes[&1];
    for key in
        ["id", "address", "health", "draining", "weight", "active", "routed", "assigned", "failures", "discovered"]
    {
        assert!(n1.get(key).is_some(), "no {key} in {n1}");
    }
    assert_eq!((n1["address"].as_str(), n1["weight"].as_u64()), (Some(fakes[0].addr.to_string().as_str()), Some(2)));
    assert_eq!((n1["routed"].as_u64(), n1["active"].as_u64(), n1["health"].as_str()), (Some(1), Some(0), Some("up")));
    let (status, metrics) = lb.admin_get("/metrics", None).await?;
    assert_eq!(status, 200);
    let expected = format!("palaver_balancer_node_routed_total{{node=\"1\",address=\"{}\"}} 1", fakes[0].addr);
    assert!(metrics.contains(&expected), "{expected} missing in:\n{metrics}");
    assert!(metrics.contains("palaver_balancer_accepted_total 3"), "{metrics}");
    assert_eq!(lb.admin_get("/nope", None).await?.0, 404);
    Ok(())
}

#[tokio::test]
async fn max_connections_is_enforced() -> Result<()> {
    let fakes = three().await?;
    let lb = Balancer::start(BalancerSettings {
        max_connections: 3,
        ..settings(Strategy::RoundRobin, fakes.iter().map(|f| f.backend(1)).collect())
    })
    .await?;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(hello(lb.addr).await?);
    }
    let refused = hello(lb.addr).await;
    assert!(refused.is_err(), "a fourth connection got through: {:?}", refused.map(|(_, id)| id));
    let (_, metrics) = lb.admin_get("/metrics", None).await?;
    assert!(metrics.contains("palaver_balancer_refused_total{reason=\"max_connections\"} 1"), "{metrics}");
    drop(held.pop());
    eventually("a slot frees up", WAIT, async || Ok(hello(lb.addr).await.ok().map(|_| ()))).await?;
    Ok(())
}

#[tokio::test]
async fn max_connections_per_address_is_enforced() -> Result<()> {
    let fake = Fake::start(1).await?;
    let lb = Balancer::start(BalancerSettings {
        max_connections_per_address: 2,
        ..settings(Strategy::RoundRobin, vec![fake.backend(1)])
    })
    .await?;
    let held = [hello_from(lb.addr, [127, 0, 0, 6]).await?, hello_from(lb.addr, [127, 0, 0, 6]).await?];
    let refused = hello_from(lb.addr, [127, 0, 0, 6]).await;
    assert!(refused.is_err(), "a third connection from 127.0.0.6 got through");
    let (_other, id) = hello_from(lb.addr, [127, 0, 0, 7]).await.context("127.0.0.7 has its own count")?;
    assert_eq!(id, 1);
    let (_, metrics) = lb.admin_get("/metrics", None).await?;
    assert!(metrics.contains("palaver_balancer_refused_total{reason=\"per_address\"} 1"), "{metrics}");
    drop(held);
    eventually("127.0.0.6 gets a slot back", WAIT, async || {
        Ok(hello_from(lb.addr, [127, 0, 0, 6]).await.ok().map(|_| ()))
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn the_node_gets_the_clients_address_in_a_proxy_header() -> Result<()> {
    let fake = Fake::start(1).await?;
    let lb = Balancer::start(settings(Strategy::RoundRobin, vec![fake.backend(1)])).await?;
    let (s, _) = hello_from(lb.addr, [127, 0, 0, 8]).await?;
    assert_eq!(fake.proxied(), Some(s.local_addr()?), "the header names the client's address and port");
    // Health checks are the balancer's own: no header.
    fake.state.proxied.lock().expect("lock").take();
    let checked = fake.state.checks.load(Ordering::SeqCst);
    eventually("two more health checks", WAIT, async || {
        Ok((fake.state.checks.load(Ordering::SeqCst) >= checked + 2).then_some(()))
    })
    .await?;
    assert_eq!(fake.proxied(), None);

    // Switched off, the node gets the client's bytes alone.
    let fake2 = Fake::start(2).await?;
    let lb2 = Balancer::start(BalancerSettings {
        proxy_protocol: false,
        ..settings(Strategy::RoundRobin, vec![fake2.backend(1)])
    })
    .await?;
    let (mut s2, id) = hello_from(lb2.addr, [127, 0, 0, 8]).await?;
    assert_eq!(id, 2);
    echo(&mut s2, "no header before hello").await?;
    assert_eq!(fake2.proxied(), None);
    Ok(())
}

#[tokio::test]
async fn with_an_ops_token_the_admin_address_wants_it_and_discovery_sends_it() -> Result<()> {
    let token = "balancer-test-ops-token-0123";
    let fakes = [Fake::start(1).await?, Fake::start(2).await?];
    let list = json!([member(&fakes[0], "serving", Some(4)), member(&fakes[1], "serving", None)]);
    for f in &fakes {
        f.set_members(list.clone());
    }
    let lb = Balancer::start(BalancerSettings {
        ops_token: Some(palaver_balancer::OpsToken::new(token)?),
        ..settings(Strategy::RoundRobin, vec![fakes[0].backend(1)])
    })
    .await?;
    for path in ["/balancer/nodes", "/metrics"] {
        assert_eq!(lb.admin_get(path, None).await?.0, 401, "{path} without the token");
        assert_eq!(lb.admin_get(path, Some("balancer-test-ops-token-0124")).await?.0, 401, "{path} with a wrong token");
        assert_eq!(lb.admin_get(path, Some(token)).await?.0, 200, "{path} with the token");
    }
    assert_eq!(lb.admin_get("/healthz", None).await?.0, 200, "health stays open");
    let n2 = eventually("node 2 learnt from the member list", WAIT, async || {
        let (status, text) = lb.admin_get("/balancer/nodes", Some(token)).await?;
        anyhow::ensure!(status == 200, "status {status}");
        let list: Vec<Value> = serde_json::from_str(&text)?;
        Ok(list.into_iter().find(|n| n["id"] == 2))
    })
    .await?;
    assert_eq!(n2["discovered"], true);
    assert_eq!(fakes[0].members_auth(), Some(format!("Bearer {token}")), "discovery sends the token");
    Ok(())
}

#[tokio::test]
async fn an_idle_relayed_connection_is_closed() -> Result<()> {
    let fake = Fake::start(1).await?;
    let idle = Duration::from_millis(300);
    let lb = Balancer::start(BalancerSettings {
        idle_timeout: idle,
        ..settings(Strategy::RoundRobin, vec![fake.backend(1)])
    })
    .await?;
    let (mut s, _) = hello(lb.addr).await?;
    let started = Instant::now();
    echo(&mut s, "some traffic").await?;
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await.context("never closed")?.unwrap_or_default();
    assert_eq!(n, 0);
    assert!(started.elapsed() >= idle, "closed after {:?}", started.elapsed());
    wait_node(&lb, "no active connection", 1, |n| n["active"] == 0).await?;
    Ok(())
}

#[tokio::test]
async fn a_large_payload_crosses_both_ways_with_a_half_close() -> Result<()> {
    let fake = Fake::start(1).await?;
    let lb = Balancer::start(settings(Strategy::RoundRobin, vec![fake.backend(1)])).await?;
    let (s, _) = hello(lb.addr).await?;
    let (mut r, mut w) = s.into_split();
    let payload: Vec<u8> = (0..2 * 1024 * 1024u32).map(|i| (i % 253) as u8).collect();
    let sent = payload.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&sent).await?;
        w.shutdown().await?;
        anyhow::Ok(w)
    });
    let mut back = Vec::new();
    tokio::time::timeout(WAIT, r.read_to_end(&mut back)).await.context("echo did not end")??;
    let _w = writer.await??;
    assert!(back == payload, "echo differs ({} of {} bytes)", back.len(), payload.len());
    Ok(())
}

#[tokio::test]
async fn with_no_node_left_an_http_client_gets_503() -> Result<()> {
    let mut fake = Fake::start(1).await?;
    let lb = Balancer::start(settings(Strategy::RoundRobin, vec![fake.backend(1)])).await?;
    fake.kill().await;
    let r = lb.public_get("/api/rooms").send().await?;
    assert_eq!(r.status().as_u16(), 503);
    let v: Value = r.json().await?;
    assert_eq!(v["error"]["code"], "unavailable");
    wait_node(&lb, "node 1 down", 1, |n| n["health"] == "down").await?;
    let r = lb.public_get("/assign").send().await?;
    assert_eq!(r.status().as_u16(), 503, "assign with every node down");
    Ok(())
}

#[tokio::test]
async fn shutdown_lets_an_open_connection_finish() -> Result<()> {
    let fake = Fake::start(1).await?;
    let mut lb = Balancer::start(BalancerSettings {
        grace: Duration::from_secs(60),
        ..settings(Strategy::RoundRobin, vec![fake.backend(1)])
    })
    .await?;
    let (mut s, _) = hello(lb.addr).await?;
    let addr = lb.addr;
    lb.begin_stop();
    eventually("no new connections", WAIT, async || Ok(TcpStream::connect(addr).await.is_err().then_some(()))).await?;
    echo(&mut s, "still relayed during the grace").await?;
    drop(s);
    let started = Instant::now();
    lb.wait_stopped().await.context("once the connection closed")?;
    assert!(started.elapsed() < Duration::from_secs(30), "run waited {:?}", started.elapsed());
    Ok(())
}

#[tokio::test]
async fn shutdown_closes_what_is_left_after_the_grace() -> Result<()> {
    let fake = Fake::start(1).await?;
    let grace = Duration::from_millis(300);
    let mut lb =
        Balancer::start(BalancerSettings { grace, ..settings(Strategy::RoundRobin, vec![fake.backend(1)]) }).await?;
    let (mut s, _) = hello(lb.addr).await?;
    let took = lb.stop().await?;
    assert!(took >= grace, "stopped after {took:?}, before the grace");
    let mut rest = Vec::new();
    let n = tokio::time::timeout(WAIT, s.read_to_end(&mut rest)).await.context("not closed")?.unwrap_or_default();
    assert_eq!(n, 0);
    Ok(())
}

// ----- end to end with a real node -----

#[tokio::test]
async fn websocket_sse_and_long_polling_work_through_the_balancer() -> Result<()> {
    let node = Node::start().await?;
    let node_addr = node.socket_addr()?;
    let lb =
        Balancer::start(settings(Strategy::RoundRobin, vec![Backend { id: 1, addr: node_addr, weight: 1 }])).await?;
    wait_node(&lb, "the node checked healthy", 1, |n| n["health"] == "up" && n["failures"] == 0).await?;
    let via = lb.addr.to_string();
    let http = Http::new(&via)?;
    let mut tokens = Vec::new();
    for name in ["alice", "bob"] {
        let password = format!("pw-of-{name}-0123");
        http.register(name, &password).await?;
        tokens.push(http.login(name, &password).await?.token);
    }
    let (alice, bob) = (http.with_token(tokens[0].clone()), http.with_token(tokens[1].clone()));
    alice.create_room("lobby", "Lobby", Visibility::Public).await?;
    bob.join("lobby").await?;

    // WebSocket: auth, subscribe, send, receive.
    let mut ws_bob = Ws::connect_auth(&via, &tokens[1]).await?;
    assert_eq!(ws_bob.subscribe("lobby", None).await?, 0);
    let mut ws_alice = Ws::connect_auth(&via, &tokens[0]).await?;
    assert_eq!(ws_alice.send("lobby", "through the balancer", "c1").await?.seq, 1);
    let e = ws_bob.wait_for(|e| matches!(e, Event::Message(_)), WAIT).await?;
    let m = e.message().context("a message")?;
    assert_eq!((m.seq, m.from.as_str(), m.body.as_deref()), (1, "alice", Some("through the balancer")));

    // SSE with a ticket, replaying and then live.
    let ticket = bob.ticket().await?;
    let mut sse = Sse::connect(&via, &SseOptions::rooms(&["lobby"]).ticket(&ticket).since("lobby:0")).await?;
    let (_, e) = sse.next_matching(|e| e.kind() == "message", WAIT).await?;
    assert_eq!(e.message().map(|m| m.seq), Some(1));
    ws_alice.send("lobby", "second", "c2").await?;
    let (_, e) = sse.next_matching(|e| e.kind() == "message", WAIT).await?;
    assert_eq!(e.message().map(|m| (m.seq, m.body.clone())), Some((2, Some("second".into()))));

    // Long polling: a waiting poll is answered by a new message.
    let poller = bob.clone();
    let poll = tokio::spawn(async move { poller.poll("lobby:2", 25_000).await });
    tokio::task::yield_now().await;
    alice.post_message("lobby", "third", "c3").await?;
    let answer = tokio::time::timeout(WAIT, poll).await.context("poll never answered")???;
    let seqs: Vec<u64> = answer.events.iter().filter_map(|e| e.message()).map(|m| m.seq).collect();
    assert_eq!(seqs, [3]);

    // Assign names the node itself.
    let v: Value = lb.public_get("/assign").send().await?.json().await?;
    assert_eq!(v, json!({"node": 1, "url": format!("http://{node_addr}"), "ws": format!("ws://{node_addr}/ws")}));
    let n1 = lb.nodes(None).await?.remove(&1).context("node 1")?;
    assert!(n1["routed"].as_u64().unwrap_or_default() >= 4, "{n1}");
    assert!(n1["active"].as_u64().unwrap_or_default() >= 3, "two sockets and an SSE stream are open: {n1}");
    Ok(())
}
