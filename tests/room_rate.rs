//! One busy room on three nodes does not queue (issue [4/6]): one publisher
//! sends 500 messages a second into one room through the balancer, without
//! waiting for answers, and receivers on every node get every message, none
//! later than one second after it was sent. The real latency targets are in
//! `benches/` (release build); this bound only catches a queue that grows.

use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::ensure;
use palaver_balancer::Strategy;
use palaver_client::Event;
use palaver_client::Ws;
use palaver_testkit::Balancer;
use palaver_testkit::Cluster;
use palaver_testkit::User;
use palaver_testkit::config;
use serde_json::json;

/// Messages a second.
const RATE: u64 = 500;
/// Messages in all (three seconds' worth).
const COUNT: u64 = 1_500;
/// The slowest delivery allowed.
const LIMIT: Duration = Duration::from_secs(1);

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_room_at_500_messages_a_second_delivers_every_message_within_a_second() -> Result<()> {
    let cluster = Cluster::builder(3).config(config(|c| c.cluster.shards = 8)).name("rate").start().await?;
    let balancer = Balancer::over(&cluster, Strategy::RoundRobin).await?;
    let publisher = User::register(&balancer.http(), "publisher").await?;
    let r = balancer
        .http()
        .with_token(&publisher.token)
        .request(palaver_client::Method::POST, "/api/rooms", Some(&json!({"room": "busy", "title": "busy"})))
        .await?;
    ensure!(r.status == 201, "create: {} {}", r.status, r.text);

    // A receiver on each node (straight to it, so all three are covered).
    let epoch = Instant::now();
    let mut receivers = Vec::new();
    for id in cluster.ids() {
        let user = User::register(&balancer.http(), &format!("reader{id}")).await?;
        let r = balancer
            .http()
            .with_token(&user.token)
            .request(palaver_client::Method::POST, "/api/rooms/busy/join", None)
            .await?;
        ensure!(r.status == 200 || r.status == 201, "join: {} {}", r.status, r.text);
        let mut ws = cluster.ws(id, &user).await?;
        ws.subscribe("busy", None).await?;
        receivers.push(tokio::spawn(async move {
            // The slowest delivery, and how many arrived.
            let mut worst = Duration::ZERO;
            let mut got = 0u64;
            while got < COUNT {
                match ws.next_event(Duration::from_secs(30)).await? {
                    Event::Message(m) if m.room == "busy" => {
                        let sent_ms: u64 =
                            m.body.as_deref().unwrap_or_default().parse().context("a body is its send time")?;
                        let now_ms = epoch.elapsed().as_millis() as u64;
                        worst = worst.max(Duration::from_millis(now_ms.saturating_sub(sent_ms)));
                        got += 1;
                    }
                    _ => {}
                }
            }
            anyhow::Ok((id, got, worst))
        }));
    }

    // The publisher paces its sends and reads the answers afterwards.
    let mut ws = Ws::connect_auth(&balancer.addr.to_string(), &publisher.token).await?;
    let start = Instant::now();
    let mut ids = Vec::new();
    for n in 0..COUNT {
        let due = start + Duration::from_micros(n * 1_000_000 / RATE);
        tokio::time::sleep_until(due.into()).await;
        let body = epoch.elapsed().as_millis().to_string();
        ids.push(ws.start_send("busy", &body, &format!("c{n}")).await?);
    }
    let sending = start.elapsed();
    for id in ids {
        ws.send_ack(id).await.context("every send is answered")?;
    }
    for r in receivers {
        let (id, got, worst) = r.await??;
        eprintln!("node {id}: {got} messages, slowest {worst:?} (sent in {sending:?})");
        ensure!(got == COUNT, "node {id}'s receiver got {got} of {COUNT}");
        ensure!(worst < LIMIT, "node {id}'s receiver waited {worst:?} for a message (limit {LIMIT:?})");
    }
    Ok(())
}
