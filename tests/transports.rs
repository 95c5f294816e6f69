//! The other transports (docs/protocol.md §1 tickets, §6, §7 health): SSE with a
//! ticket or a Bearer header, resume by `Last-Event-ID` and `?since=`; long
//! and plain polling; `/healthz` and `/metrics`.

use std::collections::BTreeSet;
use std::time::Duration;
use std::time::Instant;

use anyhow::Result;
use palaver_client::Event;
use palaver_client::Method;
use palaver_client::PollAnswer;
use palaver_client::Sse;
use palaver_client::SseOptions;
use palaver_client::Visibility;
use palaver_testkit::Node;
use palaver_testkit::WAIT;
use palaver_testkit::expect_code;

/// Reads the next message event of an SSE stream: (sse id, seq, body).
async fn next_message(sse: &mut Sse) -> Result<(Option<String>, u64, Option<String>)> {
    let (id, e) = sse.next_matching(|e| e.kind() == "message", WAIT).await?;
    let Event::Message(m) = e else { unreachable!("filtered on kind") };
    Ok((id, m.seq, m.body))
}

fn poll_seqs(answer: &PollAnswer) -> Vec<(String, u64)> {
    answer.events.iter().filter_map(|e| e.message()).map(|m| (m.room.clone(), m.seq)).collect()
}

fn cursor_set(cursor: &str) -> BTreeSet<String> {
    cursor.split(',').map(str::to_string).collect()
}

#[tokio::test]
async fn sse_with_a_ticket_replays_since_and_streams_live() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    alice.http.post_message("lobby", "one", "c1").await?;
    alice.http.post_message("lobby", "two", "c2").await?;
    let ticket = alice.http.ticket().await?;
    let mut sse = Sse::connect(node.addr(), &SseOptions::rooms(&["lobby"]).ticket(&ticket).since("lobby:0")).await?;
    assert_eq!(next_message(&mut sse).await?, (Some("lobby:1".into()), 1, Some("one".into())));
    assert_eq!(next_message(&mut sse).await?, (Some("lobby:2".into()), 2, Some("two".into())));
    alice.http.post_message("lobby", "three", "c3").await?;
    assert_eq!(next_message(&mut sse).await?, (Some("lobby:3".into()), 3, Some("three".into())));
    // The data is the event JSON: a full message.
    alice.http.post_message("lobby", "four", "c4").await?;
    let json = next_raw_message(&mut sse).await?;
    assert_eq!(json["type"], "message");
    assert_eq!(
        (json["room"].as_str(), json["seq"].as_u64(), json["from"].as_str()),
        (Some("lobby"), Some(4), Some("alice"))
    );
    assert_eq!(json["client_id"], "c4");
    Ok(())
}

async fn next_raw_message(sse: &mut Sse) -> Result<serde_json::Value> {
    let deadline = Instant::now() + WAIT;
    loop {
        let e = sse.next(deadline.saturating_duration_since(Instant::now())).await?;
        let v = e.json()?;
        if v["type"] == "message" {
            return Ok(v);
        }
    }
}

#[tokio::test]
async fn a_ticket_works_once() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    let ticket = alice.http.ticket().await?;
    let _sse = Sse::connect(node.addr(), &SseOptions::rooms(&["lobby"]).ticket(&ticket)).await?;
    let e =
        expect_code(Sse::connect(node.addr(), &SseOptions::rooms(&["lobby"]).ticket(&ticket)).await, "unauthorized");
    assert_eq!(e.status(), Some(401));
    let anon = node.http();
    expect_code(anon.poll_with_ticket(&ticket, "lobby:0", 0).await, "unauthorized");
    // A fresh ticket works for polling, once.
    let ticket = alice.http.ticket().await?;
    anon.poll_with_ticket(&ticket, "lobby:0", 0).await?;
    expect_code(anon.poll_with_ticket(&ticket, "lobby:0", 0).await, "unauthorized");
    Ok(())
}

#[tokio::test]
async fn sse_needs_a_ticket_or_a_bearer_header() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    alice.http.post_message("lobby", "one", "c1").await?;
    let addr = node.addr();
    expect_code(Sse::connect(addr, &SseOptions::rooms(&["lobby"])).await, "unauthorized");
    expect_code(Sse::connect(addr, &SseOptions::rooms(&["lobby"]).ticket("no-such-ticket")).await, "unauthorized");
    // A long-lived token is not a ticket: it never goes in a URL.
    expect_code(Sse::connect(addr, &SseOptions::rooms(&["lobby"]).ticket(&alice.token)).await, "unauthorized");
    let mut sse = Sse::connect(addr, &SseOptions::rooms(&["lobby"]).bearer(&alice.token).since("lobby:0")).await?;
    assert_eq!(next_message(&mut sse).await?.1, 1);
    Ok(())
}

#[tokio::test]
async fn sse_resumes_after_last_event_id() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    for i in 1..=3 {
        alice.http.post_message("lobby", &format!("m{i}"), &format!("c{i}")).await?;
    }
    let opts = SseOptions::rooms(&["lobby"]).bearer(&alice.token);
    let mut sse = Sse::connect(node.addr(), &opts.clone().since("lobby:0")).await?;
    for seq in 1..=3 {
        assert_eq!(next_message(&mut sse).await?.1, seq);
    }
    let last = sse.last_event_id().map(str::to_string);
    assert_eq!(last.as_deref(), Some("lobby:3"));
    drop(sse);
    alice.http.post_message("lobby", "m4", "c4").await?;
    alice.http.post_message("lobby", "m5", "c5").await?;
    let mut sse = Sse::connect(node.addr(), &opts.clone().last_event_id("lobby:3")).await?;
    assert_eq!(next_message(&mut sse).await?, (Some("lobby:4".into()), 4, Some("m4".into())));
    assert_eq!(next_message(&mut sse).await?, (Some("lobby:5".into()), 5, Some("m5".into())));
    alice.http.post_message("lobby", "m6", "c6").await?;
    assert_eq!(next_message(&mut sse).await?.1, 6);
    Ok(())
}

#[tokio::test]
async fn sse_since_takes_one_cursor_per_room() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("a", "A", Visibility::Public).await?;
    alice.http.create_room("b", "B", Visibility::Public).await?;
    for i in 1..=3 {
        alice.http.post_message("a", &format!("a{i}"), &format!("a{i}")).await?;
    }
    for i in 1..=2 {
        alice.http.post_message("b", &format!("b{i}"), &format!("b{i}")).await?;
    }
    let ticket = alice.http.ticket().await?;
    let mut sse = Sse::connect(node.addr(), &SseOptions::rooms(&["a", "b"]).ticket(&ticket).since("a:1,b:0")).await?;
    let mut ids = Vec::new();
    for _ in 0..4 {
        ids.push(next_message(&mut sse).await?.0.unwrap_or_default());
    }
    // Order between rooms is free; within a room it ascends.
    let a: Vec<&String> = ids.iter().filter(|i| i.starts_with("a:")).collect();
    let b: Vec<&String> = ids.iter().filter(|i| i.starts_with("b:")).collect();
    assert_eq!(a, ["a:2", "a:3"], "{ids:?}");
    assert_eq!(b, ["b:1", "b:2"], "{ids:?}");
    Ok(())
}

#[tokio::test]
async fn sse_hides_private_rooms_from_non_members() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("priv", "Private", Visibility::Private).await?;
    // protocol is silent on the moment: assuming the refusal comes as the
    // answer to GET /sse, with not_found.
    let ticket = bob.http.ticket().await?;
    let e = expect_code(Sse::connect(node.addr(), &SseOptions::rooms(&["priv"]).ticket(&ticket)).await, "not_found");
    assert_eq!(e.status(), Some(404));
    Ok(())
}

#[tokio::test]
async fn a_long_poll_answers_when_a_message_arrives() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    bob.http.join("lobby").await?;
    alice.http.post_message("lobby", "old", "c1").await?;
    let http = bob.http.clone();
    let started = Instant::now();
    let poll = tokio::spawn(async move { http.poll("lobby:1", 25_000).await });
    tokio::task::yield_now().await;
    alice.http.post_message("lobby", "new", "c2").await?;
    let answer = poll.await??;
    let elapsed = started.elapsed();
    assert!(elapsed < Duration::from_secs(20), "the poll waited for its timeout ({elapsed:?}) despite a message");
    assert_eq!(poll_seqs(&answer), [("lobby".to_string(), 2)]);
    assert_eq!(answer.cursor, "lobby:2");
    let m = answer.events.iter().find_map(|e| e.message()).expect("a message event");
    assert_eq!((m.from.as_str(), m.body.as_deref()), ("alice", Some("new")));
    Ok(())
}

#[tokio::test]
async fn a_long_poll_with_nothing_new_answers_empty_after_its_timeout() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    alice.http.post_message("lobby", "old", "c1").await?;
    let started = Instant::now();
    let answer = alice.http.poll("lobby:1", 600).await?;
    let elapsed = started.elapsed();
    assert!(poll_seqs(&answer).is_empty(), "{answer:?}");
    assert_eq!(answer.cursor, "lobby:1");
    assert!(elapsed >= Duration::from_millis(500), "answered after {elapsed:?}, before timeout_ms=600");
    assert!(elapsed < Duration::from_secs(20), "answered after {elapsed:?}");
    Ok(())
}

#[tokio::test]
async fn timeout_ms_zero_is_plain_polling() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("a", "A", Visibility::Public).await?;
    alice.http.create_room("b", "B", Visibility::Public).await?;
    let started = Instant::now();
    let answer = alice.http.poll("a:0,b:0", 0).await?;
    assert!(started.elapsed() < Duration::from_secs(5), "timeout_ms=0 waited {:?}", started.elapsed());
    assert!(poll_seqs(&answer).is_empty(), "{answer:?}");
    assert_eq!(cursor_set(&answer.cursor), cursor_set("a:0,b:0"));
    alice.http.post_message("b", "b1", "b1").await?;
    alice.http.post_message("b", "b2", "b2").await?;
    alice.http.post_message("a", "a1", "a1").await?;
    let answer = alice.http.poll("a:0,b:1", 0).await?;
    let got: BTreeSet<(String, u64)> = poll_seqs(&answer).into_iter().collect();
    assert_eq!(got, BTreeSet::from([("a".to_string(), 1), ("b".to_string(), 2)]));
    assert_eq!(cursor_set(&answer.cursor), cursor_set("a:1,b:2"));
    // The cursor it gave is where nothing is new.
    let again = alice.http.poll(&answer.cursor, 0).await?;
    assert!(poll_seqs(&again).is_empty(), "{again:?}");
    Ok(())
}

#[tokio::test]
async fn polling_needs_auth_and_hides_private_rooms() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("priv", "Private", Visibility::Private).await?;
    expect_code(node.http().poll("priv:0", 0).await, "unauthorized");
    expect_code(bob.http.poll("priv:0", 0).await, "not_found");
    let ticket = alice.http.ticket().await?;
    node.http().poll_with_ticket(&ticket, "priv:0", 0).await?;
    Ok(())
}

#[tokio::test]
async fn healthz_and_metrics_answer() -> Result<()> {
    let node = Node::start().await?;
    let http = node.http();
    let health = http.request(Method::GET, "/healthz", None).await?;
    assert_eq!(health.status, 200, "{}", health.text);
    let metrics = http.request(Method::GET, "/metrics", None).await?;
    assert_eq!(metrics.status, 200, "{}", metrics.text);
    // Prometheus text: `name value` or `# HELP/TYPE` lines.
    assert!(
        metrics.text.lines().filter(|l| !l.is_empty()).all(|l| l.starts_with('#') || l.split_whitespace().count() >= 2),
        "not Prometheus text:\n{}",
        metrics.text
    );
    Ok(())
}
