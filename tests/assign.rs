//! `GET /assign` on a node (docs/protocol.md §7.4): a browser asks on the
//! keep-alive connection the balancer already relays, so the node it
//! reached answers with itself, in the balancer's format, and with 503
//! `unavailable` once it is drained (a client then stays relayed).

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use palaver_client::Method;
use palaver_testkit::Cluster;
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
