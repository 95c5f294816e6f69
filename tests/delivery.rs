//! Delivery guarantees (docs/protocol.md §4, §5): gapless seqs under concurrent
//! senders, one order for every member, `subscribe` with `since` racing live
//! sends (no gap, no duplicate), resume after reconnect, and the slow
//! consumer closed with 1013 that resumes with `since`.

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use palaver_client::Message;
use palaver_client::Visibility;
use palaver_client::Ws;
use palaver_client::WsOptions;
use palaver_testkit::Node;
use palaver_testkit::User;
use palaver_testkit::WAIT;
use palaver_testkit::config;
use palaver_testkit::eventually;

/// Commands a sender keeps in flight.
const WINDOW: usize = 8;

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// Sends pipelined (WINDOW in flight) until `stop` is set or `max` are
/// sent; answers the acknowledged seqs.
async fn sender(mut ws: Ws, room: String, tag: String, max: usize, stop: Arc<AtomicBool>) -> Result<Vec<u64>> {
    let mut acked = Vec::new();
    let mut in_flight = std::collections::VecDeque::new();
    let mut sent = 0;
    while sent < max && !stop.load(Ordering::Relaxed) {
        while in_flight.len() < WINDOW && sent < max {
            in_flight.push_back(ws.start_send(&room, &format!("{tag} {sent}"), &format!("{tag}-{sent}")).await?);
            sent += 1;
        }
        if let Some(id) = in_flight.pop_front() {
            acked.push(ws.send_ack(id).await.with_context(|| format!("{tag}: ack of command {id}"))?.seq);
        }
    }
    while let Some(id) = in_flight.pop_front() {
        acked.push(ws.send_ack(id).await?.seq);
    }
    Ok(acked)
}

async fn members(node: &Node, owner: &User, room: &str, names: &[&str]) -> Result<Vec<User>> {
    owner.http.create_room(room, room, Visibility::Public).await?;
    let mut users = Vec::new();
    for n in names {
        let u = node.user(n).await?;
        u.http.join(room).await?;
        users.push(u);
    }
    Ok(users)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_since_during_concurrent_sends_has_no_gap_and_no_duplicate() -> Result<()> {
    let node = Node::start().await?;
    let owner = node.user("owner").await?;
    let reader = node.user("reader").await?;
    let mut senders_users = Vec::new();
    for i in 0..3 {
        senders_users.push(node.user(&format!("sender{i}")).await?);
    }
    for round in 0..5u64 {
        let room = format!("race{round}");
        owner.http.create_room(&room, "race", Visibility::Public).await?;
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for (i, u) in senders_users.iter().enumerate() {
            u.http.join(&room).await?;
            let ws = node.ws(u).await?;
            tasks.push(tokio::spawn(sender(ws, room.clone(), format!("r{round}s{i}"), 3000, stop.clone())));
        }
        // Subscribe mid-stream, with `since` some way back (varies by round).
        let threshold = 20 + 10 * round;
        let seen = eventually("the senders get going", WAIT, async || {
            let last = owner.http.room(&room).await?.last_seq;
            Ok((last >= threshold).then_some(last))
        })
        .await?;
        let since = seen / (round + 2);
        let mut ws = node.ws(&reader).await?;
        let last_at_subscribe = ws.subscribe(&room, Some(since)).await?;
        assert!(last_at_subscribe >= seen, "last_seq {last_at_subscribe} < {seen} seen before");
        // Let sends continue well past the subscribe, then stop them.
        let mut got = ws.messages_through(&room, last_at_subscribe + 100, WAIT).await?;
        stop.store(true, Ordering::Relaxed);
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await??);
        }
        acked.sort_unstable();
        let n = acked.len() as u64;
        assert_eq!(acked, (1..=n).collect::<Vec<u64>>(), "round {round}: acked seqs are 1..=N without gaps");
        assert!(n > last_at_subscribe, "round {round}: nothing was sent after the subscribe");
        if got.last().is_some_and(|m| m.seq < n) {
            got.extend(ws.messages_through(&room, n, WAIT).await?);
        }
        // A final marker: anything duplicated or late would show up before it.
        let marker = owner.http.post_message(&room, "marker", "marker").await?.seq;
        assert_eq!(marker, n + 1);
        got.extend(ws.messages_through(&room, marker, WAIT).await?);
        let expected: Vec<u64> = (since + 1..=marker).collect();
        assert_eq!(seqs(&got), expected, "round {round}: since={since}, subscribed at last_seq {last_at_subscribe}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_member_sees_one_order_and_seqs_have_no_gaps() -> Result<()> {
    let node = Node::start().await?;
    let owner = node.user("owner").await?;
    let users = members(&node, &owner, "lobby", &["bob", "carol", "snd0", "snd1", "snd2"]).await?;
    let mut bob = node.ws(&users[0]).await?;
    let mut carol = node.ws(&users[1]).await?;
    bob.subscribe("lobby", None).await?;
    carol.subscribe("lobby", None).await?;
    let stop = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    for (i, u) in users[2..].iter().enumerate() {
        let ws = node.ws(u).await?;
        tasks.push(tokio::spawn(sender(ws, "lobby".into(), format!("s{i}"), 100, stop.clone())));
    }
    let mut acked = Vec::new();
    for t in tasks {
        acked.extend(t.await??);
    }
    acked.sort_unstable();
    assert_eq!(acked, (1..=300).collect::<Vec<u64>>());
    let at_bob = bob.messages_through("lobby", 300, WAIT).await?;
    let at_carol = carol.messages_through("lobby", 300, WAIT).await?;
    assert_eq!(seqs(&at_bob), (1..=300).collect::<Vec<u64>>());
    assert_eq!(at_bob, at_carol, "two members saw different messages or orders");
    let stored = owner.http.messages_after("lobby", 0, Some(500)).await?;
    assert_eq!(stored, at_bob, "live events and history differ");
    // protocol is silent: assuming sends pipelined on one socket are stored
    // in the order they were sent, so each sender's messages keep its order.
    for i in 0..3 {
        let tag = format!("s{i} ");
        let mine: Vec<u64> = stored
            .iter()
            .filter(|m| m.body.as_deref().is_some_and(|b| b.starts_with(&tag)))
            .filter_map(|m| m.body.as_deref()?.strip_prefix(&tag)?.parse().ok())
            .collect();
        assert_eq!(mine, (0..100).collect::<Vec<u64>>(), "sender {i}'s order");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_http_sends_get_gapless_seqs() -> Result<()> {
    let node = Node::start().await?;
    let owner = node.user("owner").await?;
    let users = members(&node, &owner, "lobby", &["http0", "http1", "http2", "http3"]).await?;
    let mut tasks = Vec::new();
    for u in users {
        tasks.push(tokio::spawn(async move {
            let mut acks = Vec::new();
            for i in 0..50 {
                let ack = u.http.post_message("lobby", &format!("{} {i}", u.name), &format!("c{i}")).await?;
                acks.push((ack.seq, u.name.clone(), i));
            }
            anyhow::Ok(acks)
        }));
    }
    let mut acks = Vec::new();
    for t in tasks {
        acks.extend(t.await??);
    }
    acks.sort_unstable();
    assert_eq!(acks.iter().map(|a| a.0).collect::<Vec<_>>(), (1..=200).collect::<Vec<u64>>());
    let stored = owner.http.messages_after("lobby", 0, Some(500)).await?;
    assert_eq!(stored.len(), 200);
    for (m, (seq, from, i)) in stored.iter().zip(&acks) {
        assert_eq!((m.seq, &m.from), (*seq, from));
        assert_eq!(m.body.as_deref(), Some(format!("{from} {i}").as_str()));
    }
    Ok(())
}

#[tokio::test]
async fn a_client_that_reconnects_with_since_misses_nothing() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    bob.http.join("lobby").await?;
    let mut ws = node.ws(&bob).await?;
    ws.subscribe("lobby", None).await?;
    let mut sender = node.ws(&alice).await?;
    for i in 1..=20 {
        sender.send("lobby", &format!("m{i}"), &format!("c{i}")).await?;
    }
    let first = ws.messages_through("lobby", 10, WAIT).await?;
    assert_eq!(seqs(&first), (1..=10).collect::<Vec<u64>>());
    drop(ws);
    for i in 21..=40 {
        sender.send("lobby", &format!("m{i}"), &format!("c{i}")).await?;
    }
    let mut ws = node.ws(&bob).await?;
    assert_eq!(ws.subscribe("lobby", Some(10)).await?, 40);
    sender.send("lobby", "m41", "c41").await?;
    let rest = ws.messages_through("lobby", 41, WAIT).await?;
    assert_eq!(seqs(&rest), (11..=41).collect::<Vec<u64>>());
    assert_eq!(rest[0].body.as_deref(), Some("m11"));
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_closed_with_1013_and_resumes_with_since() -> Result<()> {
    let node = Node::start_with(config(|c| {
        c.limits.outbound_queue = 8;
        c.limits.message_chars = 100_000;
        c.limits.frame_bytes = 1 << 20;
        c.limits.body_bytes = 1 << 20;
    }))
    .await?;
    let alice = node.user("alice").await?;
    let slowpoke = node.user("slowpoke").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    slowpoke.http.join("lobby").await?;
    // A small receive buffer so the server's writes block early; after
    // subscribing, this socket is not read until the flood is over.
    let opts = WsOptions { recv_buffer: Some(4096), ..WsOptions::default() };
    let mut slow = Ws::connect_with(node.addr(), opts).await?;
    slow.auth(&slowpoke.token).await?;
    slow.subscribe("lobby", None).await?;

    // 300 messages of 60 000 chars: about 18 MB, far more than the kernel
    // buffers plus 8 queued events.
    let total = 300;
    let body = "x".repeat(60_000);
    let mut flooder = node.ws(&alice).await?;
    let mut in_flight = std::collections::VecDeque::new();
    let mut last = 0;
    for i in 0..total {
        in_flight.push_back(flooder.start_send("lobby", &body, &format!("f{i}")).await?);
        if in_flight.len() >= WINDOW
            && let Some(id) = in_flight.pop_front()
        {
            last = flooder.send_ack(id).await?.seq;
        }
    }
    while let Some(id) = in_flight.pop_front() {
        last = flooder.send_ack(id).await?.seq;
    }
    assert_eq!(last, total);

    let code = slow.wait_closed(Duration::from_secs(60)).await?;
    assert_eq!(code, Some(1013), "a consumer that does not read must be closed with 1013");
    let received: Vec<Message> = slow.take_events().into_iter().filter_map(|e| e.message().cloned()).collect();
    let got = seqs(&received);
    assert_eq!(got, (1..=got.len() as u64).collect::<Vec<u64>>(), "what arrived before the close has no gap");
    assert!((got.len() as u64) < total, "all {total} arrived: the consumer was not slow after all");

    let since = got.last().copied().unwrap_or(0);
    let mut again = node.ws(&slowpoke).await?;
    assert_eq!(again.subscribe("lobby", Some(since)).await?, total);
    let rest = again.messages_through("lobby", total, Duration::from_secs(60)).await?;
    assert_eq!(seqs(&rest), (since + 1..=total).collect::<Vec<u64>>());
    assert!(rest.iter().all(|m| m.body.as_deref().is_some_and(|b| b.len() == 60_000)));
    Ok(())
}
