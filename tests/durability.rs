//! Durability below the process: every node of a three-node cluster runs
//! with a storage layer that keeps writes in process memory until they are
//! flushed (`PALAVER_TEST_LOSE_UNFLUSHED`), so SIGKILL acts like a power cut
//! and loses exactly what was never flushed. All nodes are killed at once
//! right after a burst of answered sends; after a restart every answered
//! message must still be there with its seq. A SIGKILL of ordinary nodes
//! keeps the page cache and could not catch a missing fsync; this does.

use std::time::Duration;

use anyhow::Result;
use palaver_client::Http;
use palaver_client::Visibility;
use palaver_client::Ws;
use palaver_testkit::Cluster;
use palaver_testkit::Launch;
use palaver_testkit::eventually;

/// How long the nodes may take to print their ready lines, at the start and
/// after the power cut.
const READY: Duration = Duration::from_secs(90);

#[tokio::test(flavor = "multi_thread")]
async fn answered_messages_survive_every_node_losing_its_unflushed_writes() -> Result<()> {
    let power_cut = Launch {
        env: vec![(palaver_node::storage::LOSE_UNFLUSHED_ENV.into(), "1".into())],
        ready_within: Some(READY),
        ..Launch::default()
    };
    let mut cluster = Cluster::builder(3).launch(power_cut).start().await?;
    let addrs: Vec<String> = cluster.ids().into_iter().map(|id| cluster.addr(id)).collect();
    let addr = |i: usize| addrs[i].clone();

    let anon = Http::new(&addr(0))?;
    anon.register("owner", "durable-password").await?;
    anon.register("sender", "durable-password").await?;
    let owner = anon.with_token(anon.login("owner", "durable-password").await?.token);
    for room in ["alpha", "beta"] {
        owner.create_room(room, room, Visibility::Public).await?;
    }
    // Every node must see the rooms before the burst (creation reaches every
    // node through Raft; this only waits for it).
    for i in 0..3 {
        let http = Http::new(&addr(i))?.with_token(anon.login("sender", "durable-password").await?.token);
        eventually(&format!("rooms visible on node {}", i + 1), Duration::from_secs(20), async || {
            Ok(http.room("beta").await.ok())
        })
        .await?;
    }

    let sender = anon.with_token(anon.login("sender", "durable-password").await?.token);
    sender.join("alpha").await?;
    sender.join("beta").await?;

    // A burst of pipelined sends from every node; remember each answer.
    let mut answered: Vec<(String, String, u64)> = Vec::new();
    let mut sockets = Vec::new();
    for i in 0..3 {
        let login = Http::new(&addr(i))?.login("sender", "durable-password").await?;
        sockets.push(Ws::connect_auth(&addr(i), &login.token).await?);
    }
    let mut pending = Vec::new();
    for round in 0..40 {
        for (i, ws) in sockets.iter_mut().enumerate() {
            let room = if round % 2 == 0 { "alpha" } else { "beta" };
            let client_id = format!("n{i}-r{round}");
            let id = ws.start_send(room, &format!("burst {client_id}"), &client_id).await?;
            pending.push((i, id, room.to_string(), client_id));
        }
    }
    for (i, id, room, client_id) in pending {
        let ack = sockets[i].send_ack(id).await?;
        answered.push((room, client_id, ack.seq));
    }
    // Power cut: every node at once, right after the last answer.
    for id in cluster.ids() {
        cluster.kill(id);
    }
    drop(sockets);
    assert_eq!(answered.len(), 120, "every send of the burst was answered");

    cluster.restart_all().await?;
    for i in 0..3 {
        // A login is a metadata write; right after a cold start the leader
        // may still change once or twice (503): poll for it.
        let anon = Http::new(&addr(i))?;
        let login = eventually(&format!("a login on node {}", i + 1), Duration::from_secs(30), async || {
            Ok(anon.login("sender", "durable-password").await.ok())
        })
        .await?;
        let http = anon.with_token(login.token);
        for room in ["alpha", "beta"] {
            let want: Vec<&(String, String, u64)> = answered.iter().filter(|(r, _, _)| r == room).collect();
            let max = want.iter().map(|(_, _, s)| *s).max().unwrap_or(0);
            let history = eventually(
                &format!("node {} shows every answered message of {room}", i + 1),
                Duration::from_secs(30),
                async || {
                    let page = http.messages_after(room, 0, Some(500)).await?;
                    Ok((page.iter().map(|m| m.seq).max().unwrap_or(0) >= max).then_some(page))
                },
            )
            .await?;
            for (_, client_id, seq) in want {
                let found =
                    history.iter().filter(|m| m.client_id.as_deref() == Some(client_id.as_str())).collect::<Vec<_>>();
                assert_eq!(found.len(), 1, "{client_id} in {room} on node {} exactly once", i + 1);
                assert_eq!(found[0].seq, *seq, "{client_id} in {room} keeps its seq on node {}", i + 1);
            }
            let seqs: Vec<u64> = history.iter().map(|m| m.seq).collect();
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(seqs, expected, "{room} is gapless on node {}", i + 1);
        }
    }
    Ok(())
}
