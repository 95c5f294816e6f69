//! The node set changes while people chat (issue [4/6]): a fourth node is
//! added with `palaver add-node`, a node is drained with `palaver drain`,
//! another removed with `palaver remove-node`, all through the operations
//! CLI of docs/protocol.md while clients send through the balancer; no
//! answered send is lost or stored twice, the new node serves every room,
//! and shard leadership ends spread over the serving nodes.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::process::Output;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use anyhow::ensure;
use palaver_balancer::BalancerSettings;
use palaver_balancer::OpsToken as BalancerToken;
use palaver_balancer::Strategy;
use palaver_client::Http;
use palaver_client::Method;
use palaver_node::config::OpsToken;
use palaver_testkit::Balancer;
use palaver_testkit::Cluster;
use palaver_testkit::User;
use palaver_testkit::WAIT;
use palaver_testkit::config;
use palaver_testkit::eventually;
use serde_json::Value;
use serde_json::json;
use std::sync::Mutex;

const TOKEN: &str = "membership-test-ops-token-0123456789";
const ROOMS: usize = 6;
/// Shards of the test cluster: few, so moves are quick, yet more than rooms.
const SHARDS: u32 = 8;
/// Every CLI command gets this long.
const CLI_TIMEOUT_SECS: u64 = 180;

/// Runs `palaver ARGS --config FILE --token T --json` and answers its output.
async fn palaver(cluster: &Cluster, args: &[&str]) -> Result<Output> {
    let exe = env!("CARGO_BIN_EXE_palaver");
    let mut cmd = tokio::process::Command::new(exe);
    cmd.args(args)
        .arg("--config")
        .arg(&cluster.file().path)
        .args(["--token", TOKEN, "--json", "--timeout", &CLI_TIMEOUT_SECS.to_string()])
        .env_remove("PALAVER_TOKEN")
        .env_remove("PALAVER_OPS_TOKEN");
    let out = tokio::time::timeout(Duration::from_secs(CLI_TIMEOUT_SECS + 30), cmd.output())
        .await
        .with_context(|| format!("palaver {args:?} did not finish"))??;
    Ok(out)
}

fn json_of(out: &Output, what: &str) -> Result<Value> {
    ensure!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).with_context(|| format!("{what}: {}", String::from_utf8_lossy(&out.stdout)))
}

/// What the senders had answered, per room: (seq, body).
type Answered = Arc<Mutex<BTreeMap<String, Vec<(u64, String)>>>>;

/// Sends to every room in turn through the balancer until told to stop;
/// retries only what a real client would (`unavailable`, `rate_limited`,
/// a lost connection), with the same client id, so a retried send is stored
/// once.
async fn send_until(balancer: String, token: String, stop: Arc<AtomicBool>, answered: Answered) -> Result<u64> {
    let http = Http::unpooled(&balancer)?.with_token(token);
    let mut n = 0u64;
    while !stop.load(Ordering::Acquire) && n < 5_000 {
        let room = format!("m{}", n as usize % ROOMS);
        let body = format!("message {n}");
        let client_id = format!("c-{n}");
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            let sent = http
                .request(
                    Method::POST,
                    &format!("/api/rooms/{room}/messages"),
                    Some(&json!({"body": body, "client_id": client_id})),
                )
                .await;
            match sent {
                Ok(r) if r.status == 201 || r.status == 200 => {
                    let seq = r.json["seq"].as_u64().context("a send's answer has its seq")?;
                    answered
                        .lock()
                        .expect("the senders' record")
                        .entry(room.clone())
                        .or_default()
                        .push((seq, body.clone()));
                    break;
                }
                Ok(r) if matches!(r.code(), Some("unavailable" | "rate_limited")) => {}
                Ok(r) => bail!("send {n} to {room}: {} {}", r.status, r.text),
                Err(_) => {} // the connection was lost: send again
            }
            ensure!(tokio::time::Instant::now() < deadline, "send {n} to {room} not answered within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        n += 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(n)
}

/// The whole history of `room` on node `id`.
async fn history(cluster: &Cluster, id: u64, user: &User, room: &str) -> Result<Vec<(u64, String)>> {
    let http = cluster.http_as(id, user);
    let mut out = Vec::new();
    let mut after = 0u64;
    loop {
        let path = format!("/api/rooms/{room}/messages?after={after}&limit=500");
        // `unavailable` is retried as a client would (a shard may be moving).
        let r = eventually(&format!("history of {room} on node {id}"), WAIT, async || {
            let r = http.request(Method::GET, &path, None).await?;
            Ok((r.status != 503).then_some(r))
        })
        .await?;
        ensure!(r.status == 200, "history of {room} on node {id}: {} {}", r.status, r.text);
        let page: Vec<Value> = serde_json::from_value(r.json)?;
        if page.is_empty() {
            return Ok(out);
        }
        for m in page {
            let seq = m["seq"].as_u64().context("seq")?;
            out.push((seq, m["body"].as_str().unwrap_or_default().to_string()));
            after = seq;
        }
    }
}

/// Every answered send is in every listed node's history once, at its
/// seq; the histories are gapless and the same on every node.
async fn check_histories(cluster: &Cluster, nodes: &[u64], user: &User, answered: &Answered) -> Result<()> {
    let answered = answered.lock().expect("the senders' record").clone();
    for i in 0..ROOMS {
        let room = format!("m{i}");
        let mut reference: Option<Vec<(u64, String)>> = None;
        for &id in nodes {
            let h = history(cluster, id, user, &room).await?;
            for (k, (seq, _)) in h.iter().enumerate() {
                ensure!(*seq == k as u64 + 1, "room {room} on node {id}: seq {seq} at position {k} (a gap)");
            }
            let bodies: BTreeSet<&str> = h.iter().map(|(_, b)| b.as_str()).collect();
            ensure!(bodies.len() == h.len(), "room {room} on node {id}: a message stored twice");
            for (seq, body) in answered.get(&room).into_iter().flatten() {
                ensure!(
                    h.get(*seq as usize - 1).map(|(_, b)| b.as_str()) == Some(body.as_str()),
                    "room {room} on node {id}: the answered send {body:?} at seq {seq} is not there"
                );
            }
            match &reference {
                None => reference = Some(h),
                Some(r) => ensure!(*r == h, "room {room}: node {id} differs from node {}", nodes[0]),
            }
        }
    }
    Ok(())
}

/// The shards each node leads, as each says.
async fn leaders(cluster: &Cluster, nodes: &[u64]) -> Result<BTreeMap<u64, usize>> {
    let mut led = BTreeMap::new();
    for &id in nodes {
        let r = cluster.http(id).with_token(TOKEN).request(Method::GET, "/api/cluster", None).await?;
        ensure!(r.status == 200, "/api/cluster on node {id}: {} {}", r.status, r.text);
        led.insert(id, r.json["shards_led"].as_array().map_or(0, Vec::len));
    }
    Ok(led)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn nodes_are_added_drained_and_removed_while_clients_send() -> Result<()> {
    let cfg = config(|c| {
        c.cluster.shards = SHARDS;
        c.security.ops_token = Some(OpsToken::new(TOKEN).expect("a valid ops token"));
    });
    let mut cluster = Cluster::builder(3).config(cfg).name("membership").start().await?;
    let settings = BalancerSettings {
        strategy: Strategy::RoundRobin,
        nodes: cluster.backends(),
        discover: true,
        ops_token: Some(BalancerToken::new(TOKEN)?),
        ..BalancerSettings::default()
    };
    let balancer = Balancer::start(settings).await?;
    let user = User::register(&balancer.http(), "mover").await?;
    for i in 0..ROOMS {
        let r = balancer
            .http()
            .with_token(&user.token)
            .request(Method::POST, "/api/rooms", Some(&json!({"room": format!("m{i}"), "title": "moving"})))
            .await?;
        ensure!(r.status == 201, "create m{i}: {} {}", r.status, r.text);
    }

    let status = json_of(&palaver(&cluster, &["status"]).await?, "palaver status")?;
    ensure!(status["all_up"] == json!(true), "{status}");
    ensure!(status["nodes"].as_array().map(Vec::len) == Some(3), "{status}");

    let stop = Arc::new(AtomicBool::new(false));
    let answered: Answered = Arc::default();
    let sender =
        tokio::spawn(send_until(balancer.addr.to_string(), user.token.clone(), stop.clone(), answered.clone()));

    // Grow: node 4 starts, waits to be added, and takes its shards.
    cluster.spawn_new_node(4)?;
    let added = json_of(&palaver(&cluster, &["add-node", "4"]).await?, "palaver add-node 4")?;
    let moved = added["moved"].as_array().context("add-node lists its moves")?;
    ensure!(!moved.is_empty(), "a fourth node takes some shards: {added}");
    for m in moved {
        ensure!(m["to"].as_array().is_some_and(|to| to.contains(&json!(4))), "every move goes to node 4: {m}");
    }
    cluster.wait_ready(4).await?;
    let status = json_of(&palaver(&cluster, &["status"]).await?, "palaver status")?;
    ensure!(status["nodes"].as_array().map(Vec::len) == Some(4) && status["all_up"] == json!(true), "{status}");
    eventually("the balancer routes to node 4", WAIT, async || {
        let nodes = balancer.nodes(Some(TOKEN)).await?;
        Ok(nodes.get(&4).is_some_and(|n| n["health"] == json!("up")).then_some(()))
    })
    .await?;

    // With four nodes, each node holds a voting replica of only some
    // shards; it follows the others as a learner and answers every room.
    for id in 1..=4 {
        for i in 0..ROOMS {
            let h = history(&cluster, id, &user, &format!("m{i}")).await?;
            for (k, (seq, _)) in h.iter().enumerate() {
                ensure!(*seq == k as u64 + 1, "room m{i} on node {id}: seq {seq} at position {k}");
            }
        }
    }

    // Drain node 2: it leads nothing afterwards.
    let drained = json_of(&palaver(&cluster, &["drain", "2"]).await?, "palaver drain 2")?;
    ensure!(drained["done"] == json!("drained"), "{drained}");
    ensure!(leaders(&cluster, &[2]).await?[&2] == 0, "a drained node leads no shard");

    // Shrink: node 1 leaves; its shards move to the others first.
    let removed = json_of(&palaver(&cluster, &["remove-node", "1"]).await?, "palaver remove-node 1")?;
    for m in removed["moved"].as_array().context("remove-node lists its moves")? {
        ensure!(m["from"].as_array().is_some_and(|f| f.contains(&json!(1))), "only node 1's shards move: {m}");
        ensure!(!m["to"].as_array().is_some_and(|t| t.contains(&json!(1))), "{m}");
    }
    cluster.kill(1);

    stop.store(true, Ordering::Release);
    let sent = sender.await??;
    ensure!(sent > 0, "the clients sent nothing");
    eprintln!("{sent} sends answered while the node set changed");
    check_histories(&cluster, &[2, 3, 4], &user, &answered).await?;

    // Node 2 serves again: leadership spreads over 2, 3 and 4.
    eventually("node 2 serves again", WAIT, async || {
        let r = cluster
            .http(3)
            .with_token(TOKEN)
            .request(Method::POST, "/api/cluster/drain", Some(&json!({"node": 2, "draining": false})))
            .await?;
        match r.code() {
            // The metadata group may be electing a leader after node 1 left.
            Some("unavailable") => Ok(None),
            _ if r.status == 204 => Ok(Some(())),
            _ => bail!("undrain: {} {}", r.status, r.text),
        }
    })
    .await?;
    let spread = eventually("shard leaders spread over nodes 2, 3, 4", Duration::from_secs(30), async || {
        let led = leaders(&cluster, &[2, 3, 4]).await?;
        let (min, max) = (led.values().min().copied(), led.values().max().copied());
        let even = led.values().sum::<usize>() == SHARDS as usize && max.zip(min).is_some_and(|(a, b)| a - b <= 1);
        Ok(even.then_some(led))
    })
    .await?;
    eprintln!("shards led at the end: {spread:?}");
    Ok(())
}
