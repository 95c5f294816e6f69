//! Five nodes, three replicas per shard (issue [4/6], docs/protocol.md §4,
//! §5 "Events"): a room's log lives on the three replicas of its shard; a
//! subscriber on a fourth node gets every message, relayed by a replica,
//! and keeps getting them when that replica is killed; the fifth node,
//! which holds no replica and has no subscriber of the room, receives none
//! of its traffic (no shard call for its shard, no relayed event or
//! typing notice); and
//! both other nodes answer the room's history, read on a replica.

use std::collections::BTreeSet;

use anyhow::Context;
use anyhow::Result;
use anyhow::ensure;
use palaver_client::Event;
use palaver_client::Http;
use palaver_client::Method;
use palaver_client::Visibility;
use palaver_testkit::Cluster;
use palaver_testkit::WAIT;
use palaver_testkit::eventually;
use serde_json::Value;

/// Messages sent before the relaying replica is killed, and after.
const BEFORE: usize = 100;
const AFTER: usize = 100;

async fn view(http: &Http) -> Result<Value> {
    let raw = http.request(Method::GET, "/api/cluster", None).await?;
    ensure!(raw.status == 200, "GET /api/cluster: {} {}", raw.status, raw.text);
    Ok(raw.json)
}

/// A counter's value in a node's `/metrics` (0 when absent).
async fn counter(http: &Http, name_and_labels: &str) -> Result<f64> {
    let raw = http.request(Method::GET, "/metrics", None).await?;
    ensure!(raw.status == 200, "GET /metrics: {} {}", raw.status, raw.text);
    Ok(raw
        .text
        .lines()
        .find_map(|l| l.strip_prefix(name_and_labels).and_then(|rest| rest.trim().parse().ok()))
        .unwrap_or(0.0))
}

fn as_admin(c: &Cluster, token: &str, id: u64) -> Http {
    c.http(id).with_token(token.to_string())
}

fn ids(v: &Value) -> BTreeSet<u64> {
    v.as_array().map(|a| a.iter().filter_map(Value::as_u64).collect()).unwrap_or_default()
}

/// Sends `n` messages over HTTP through `http`, retrying `unavailable` as
/// a client would (the same client_id, so a retry is never stored twice).
async fn send_all(http: &Http, room: &str, tag: &str, n: usize) -> Result<()> {
    for i in 0..n {
        let body = format!("{tag} {i}");
        let client_id = format!("{tag}-{i}");
        eventually(&format!("send {client_id}"), WAIT, async || {
            let raw = http
                .request(
                    Method::POST,
                    &format!("/api/rooms/{room}/messages"),
                    Some(&serde_json::json!({"body": body, "client_id": client_id})),
                )
                .await?;
            match raw.status {
                200 | 201 => Ok(Some(())),
                503 | 429 => Ok(None),
                s => anyhow::bail!("send {client_id}: {s} {}", raw.text),
            }
        })
        .await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_rooms_traffic_reaches_its_replicas_and_its_subscribers_node_only() -> Result<()> {
    let mut c = Cluster::start(5).await?;
    let admin = c.admin(1, "admin").await?;
    let room = "five";
    admin.http.create_room(room, "Five", Visibility::Public).await?;

    // The layout settles: every shard on three nodes, nothing moving.
    let (shard, replicas) = eventually("the layout to settle", WAIT, async || {
        let v = view(&as_admin(&c, &admin.token, 1)).await?;
        let layout = &v["layout"];
        let settled = layout["pending_moves"].as_u64() == Some(0)
            && layout["replicas"].as_array().is_some_and(|s| s.iter().all(|r| ids(r).len() == 3));
        let shard = v["rooms"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["room"] == room).and_then(|r| r["shard"].as_u64()));
        Ok(match (settled, shard) {
            (true, Some(shard)) => Some((shard, ids(&layout["replicas"][shard as usize]))),
            _ => None,
        })
    })
    .await?;
    let outsiders: Vec<u64> = c.ids().into_iter().filter(|id| !replicas.contains(id)).collect();
    ensure!(outsiders.len() == 2, "shard {shard} is on {replicas:?}: two nodes should hold no replica");
    let (watching, idle) = (outsiders[0], outsiders[1]);
    for id in [watching, idle] {
        eventually(&format!("node {id} to close shard {shard}"), WAIT, async || {
            Ok((!ids(&view(&as_admin(&c, &admin.token, id)).await?["shards_open"]).contains(&shard)).then_some(()))
        })
        .await?;
    }
    let shard_calls = format!("palaver_shard_calls_total{{shard=\"{shard}\"}}");
    let relayed = "palaver_relay_events_received_total";
    let idle_calls_before = counter(&as_admin(&c, &admin.token, idle), &shard_calls).await?;
    let idle_relayed_before = counter(&as_admin(&c, &admin.token, idle), relayed).await?;

    // A subscriber on the fourth node; the sends go through a replica.
    let reader = c.user(watching, "reader").await?;
    reader.http.join(room).await?;
    let mut ws = c.ws(watching, &reader).await?;
    assert_eq!(ws.subscribe(room, Some(0)).await?, 0, "the room starts empty");
    let sender_node = *replicas.iter().next().context("a replica")?;
    let sender = c.user(sender_node, "sender").await?;
    sender.http.join(room).await?;
    send_all(&sender.http, room, "before", BEFORE).await?;
    let got = ws.messages_through(room, BEFORE as u64, WAIT).await.context("the first messages, relayed")?;
    assert_eq!(got.iter().map(|m| m.seq).collect::<Vec<_>>(), (1..=BEFORE as u64).collect::<Vec<_>>());

    // The replica that relays (the shard's leader) dies; another takes over
    // from the last seq the fourth node has.
    let leader = eventually("the shard's leader", WAIT, async || {
        for id in &replicas {
            if ids(&view(&as_admin(&c, &admin.token, *id)).await?["shards_led"]).contains(&shard) {
                return Ok(Some(*id));
            }
        }
        Ok(None)
    })
    .await?;
    c.kill(leader);
    let survivor = *replicas.iter().find(|id| **id != leader).context("another replica")?;
    let sender = c.login(survivor, "sender").await?;
    send_all(&sender.http, room, "after", AFTER).await?;
    let total = (BEFORE + AFTER) as u64;
    let got = ws.messages_through(room, total, WAIT).await.context("the messages after the kill")?;
    let mut all: Vec<u64> = (1..=BEFORE as u64).collect();
    all.extend(got.iter().map(|m| m.seq));
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "every message once, in order, across the kill");

    // Typing on a replica reaches the subscriber on the fourth node too.
    let mut typist = c.ws(survivor, &sender).await?;
    typist.typing(room).await?;
    ws.wait_for(|e| matches!(e, Event::Typing { username, .. } if username == "sender"), WAIT)
        .await
        .context("the sender's typing, relayed")?;

    // History on both outsiders: read on a replica, complete.
    for id in [watching, idle] {
        let page = c.http_as(id, &reader).messages_after(room, 0, Some(500)).await?;
        assert_eq!(page.len() as u64, total, "node {id} answers the whole history");
    }
    let relayed_to_watcher = counter(&as_admin(&c, &admin.token, watching), relayed).await?;
    assert!(relayed_to_watcher >= total as f64, "node {watching} had {relayed_to_watcher} events relayed, not {total}");
    let survivor_calls = counter(&as_admin(&c, &admin.token, survivor), &shard_calls).await?;
    assert!(survivor_calls > 0.0, "node {survivor} is a replica of shard {shard}: it counts its calls");
    assert_eq!(
        counter(&as_admin(&c, &admin.token, idle), &shard_calls).await?,
        idle_calls_before,
        "node {idle} holds no replica of shard {shard}: no shard call for it may reach it"
    );
    assert_eq!(
        counter(&as_admin(&c, &admin.token, idle), relayed).await?,
        idle_relayed_before,
        "node {idle} has no subscriber: no event may be relayed to it"
    );
    ensure!(view(&as_admin(&c, &admin.token, idle)).await?["relayed_rooms"] == 0, "node {idle} watches no room");
    Ok(())
}
