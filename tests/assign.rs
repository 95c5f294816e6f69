//! `GET /assign` on a node (docs/protocol.md §7.4): a browser asks on the
//! keep-alive connection the balancer already relays, so the node it
//! reached answers with itself, in the balancer's format, and with 503
//! `unavailable` once it is drained (a client then stays relayed). The
//! client library follows the balancer's `/assign` and asks again when its
//! node dies.

use anyhow::Context;
use anyhow::Result;
use std::time::Duration;

use anyhow::bail;
use palaver_balancer::Strategy;
use palaver_client::Method;
use palaver_client::ResilientClient;
use palaver_client::ResilientOptions;
use palaver_client::Visibility;
use palaver_testkit::Balancer;
use palaver_testkit::Cluster;
use palaver_testkit::Recorder;
use palaver_testkit::TEST_OPS_TOKEN;
use palaver_testkit::WAIT;
use palaver_testkit::eventually;
use serde_json::Value;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_assigns_itself_until_it_is_drained() -> Result<()> {
    let cluster = Cluster::start(2).await?;
    for id in [1, 2] {
        let addr = cluster.addr(id);
        let r = cluster.http(id).request(Method::GET, "/assign", None).await?;
        assert_eq!(r.status, 200, "node {id}: {}", r.text);
        let v: Value = serde_json::from_str(&r.text).context("an assign answer is JSON")?;
        assert_eq!(v, json!({"node": id, "url": format!("http://{addr}"), "ws": format!("ws://{addr}/ws")}));
    }

    let ops = cluster.http(1).with_token(TEST_OPS_TOKEN);
    let drain = json!({"node": 2, "draining": true});
    eventually("node 2 drained", WAIT, async || {
        let r = ops.request(Method::POST, "/api/cluster/drain", Some(&drain)).await?;
        match r.code() {
            // The metadata group may still be electing its first leader.
            Some("unavailable") => Ok(None),
            _ if r.status == 204 => Ok(Some(())),
            _ => bail!("drain: {} {}", r.status, r.text),
        }
    })
    .await?;
    let refused = eventually("node 2 to stop assigning itself", WAIT, async || {
        let r = cluster.http(2).request(Method::GET, "/assign", None).await?;
        Ok((r.status == 503).then_some(r))
    })
    .await?;
    assert_eq!(refused.code(), Some("unavailable"), "{}", refused.text);
    let r = cluster.http(1).request(Method::GET, "/assign", None).await?;
    assert_eq!(r.status, 200, "node 1 still serves: {}", r.text);
    Ok(())
}

/// The client library follows `/assign` when asked to
/// (`ResilientOptions::follow_assign`): its WebSocket goes straight to the
/// node the balancer names, so the balancer holds no connection of it; when
/// that node dies the client asks again (or goes through the relay) and
/// misses nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_library_connects_to_the_assigned_node_and_asks_again_when_it_dies() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let lb = Balancer::over(&cluster, Strategy::RoundRobin).await?;
    let ann = cluster.user(1, "ann").await?;
    ann.http.create_room("direct", "Direct", Visibility::Public).await?;
    let opts = ResilientOptions {
        stall_timeout: Duration::from_secs(3),
        give_up_after: Some(Duration::from_secs(90)),
        ..ResilientOptions::new(&lb.addr.to_string()).token(&ann.token).follow_assign()
    };
    let (client, events) = ResilientClient::connect(opts).await?;
    let seen = Recorder::start(events);
    assert_eq!(client.stats().direct_sessions, 1, "the first session is on the assigned node");
    client.subscribe("direct", Some(0)).await?;
    let first = client.send("direct", "one").await?;
    seen.wait_for("direct", first.seq, WAIT).await?;

    // The balancer holds no connection of the client: `/assign` closed its
    // own, and the WebSocket never went through it.
    let on = eventually("the balancer to hold no connection", WAIT, async || {
        let nodes = lb.nodes(None).await?;
        let active: u64 = nodes.values().map(|n| n["active"].as_u64().unwrap_or(0)).sum();
        let assigned: Vec<u64> =
            nodes.iter().filter(|(_, n)| n["assigned"].as_u64() == Some(1)).map(|(id, _)| *id).collect();
        Ok((active == 0).then_some(assigned))
    })
    .await?;
    let [victim] = on[..] else { bail!("one /assign answer expected, the balancer counted {on:?}") };

    cluster.kill(victim);
    let mut answered = vec![first.seq];
    for i in 0..5 {
        answered.push(client.send("direct", &format!("after {i}")).await?.seq);
    }
    let last = *answered.last().context("sends were answered")?;
    seen.wait_for("direct", last, WAIT).await?;
    assert_eq!(seen.seqs("direct"), (1..=last).collect::<Vec<_>>(), "every message once, in order");
    assert!(client.stats().reconnects >= 1, "the client lost its node: {:?}", client.stats());
    assert_eq!(client.stats().gaps, 0);
    client.close().await;
    Ok(())
}
