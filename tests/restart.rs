//! Durability (docs/protocol.md §4): every answered send survives a SIGKILL of
//! the node right after its answer, with the same seq; accounts, rooms,
//! roles, bans and idempotency keys survive too.

use std::collections::BTreeMap;
use std::collections::VecDeque;

use anyhow::Result;
use palaver_client::Visibility;
use palaver_client::Ws;
use palaver_testkit::Node;
use palaver_testkit::WAIT;
use palaver_testkit::expect_close;
use palaver_testkit::expect_code;

/// (from, body, client_id) of an answered send, by seq.
type Answered = BTreeMap<u64, (String, String, String)>;

/// Sends `n` messages pipelined (16 in flight) and records every answer.
async fn burst(ws: &mut Ws, from: &str, room: &str, n: usize, answered: &mut Answered) -> Result<()> {
    let mut in_flight = VecDeque::new();
    for i in 0..n {
        let body = format!("{from} says {i}");
        let client_id = format!("{from}-{i}");
        in_flight.push_back((ws.start_send(room, &body, &client_id).await?, body, client_id));
        if in_flight.len() >= 16 {
            settle(ws, from, &mut in_flight, answered).await?;
        }
    }
    while !in_flight.is_empty() {
        settle(ws, from, &mut in_flight, answered).await?;
    }
    Ok(())
}

async fn settle(
    ws: &mut Ws,
    from: &str,
    in_flight: &mut VecDeque<(u64, String, String)>,
    answered: &mut Answered,
) -> Result<()> {
    if let Some((id, body, client_id)) = in_flight.pop_front() {
        let seq = ws.send_ack(id).await?.seq;
        let previous = answered.insert(seq, (from.to_string(), body, client_id));
        assert!(previous.is_none(), "seq {seq} answered twice");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn answered_messages_and_metadata_survive_sigkill() -> Result<()> {
    let mut node = Node::start().await?;
    let admin = node.admin("admin").await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    let carol = node.user("carol").await?;
    node.user("dave").await?;
    alice.http.create_room("lobby", "The Lobby", Visibility::Public).await?;
    alice.http.create_room("secret", "Secret", Visibility::Private).await?;
    bob.http.join("lobby").await?;
    alice.http.set_role("lobby", "bob", "moderator").await?;
    alice.http.invite("secret", "carol").await?;
    carol.http.join("secret").await?;
    alice.http.ban("lobby", "dave").await?;
    let dm = alice.http.dm("bob").await?.room;
    carol.http.post_message("secret", "psst", "carol-1").await?;
    alice.http.post_message(&dm, "hi bob", "dm-1").await?;

    // Two senders at once, 100 each; then SIGKILL right after the last answer.
    let mut answered = Answered::new();
    let mut a_ws = node.ws(&alice).await?;
    let mut b_ws = node.ws(&bob).await?;
    let mut a_answers = Answered::new();
    let mut b_answers = Answered::new();
    let (ra, rb) = tokio::join!(
        burst(&mut a_ws, "alice", "lobby", 100, &mut a_answers),
        burst(&mut b_ws, "bob", "lobby", 100, &mut b_answers)
    );
    ra?;
    rb?;
    node.kill();
    answered.extend(a_answers);
    answered.extend(b_answers);
    assert_eq!(answered.keys().copied().collect::<Vec<_>>(), (1..=200).collect::<Vec<u64>>());

    node.restart().await?;

    // Accounts: everyone logs in with the same password; admin is still admin.
    let admin = node.login(&admin.name).await?;
    assert_eq!(admin.http.me().await?.role, "admin");
    let alice = node.login("alice").await?;
    let bob = node.login("bob").await?;
    let carol = node.login("carol").await?;
    let dave = node.login("dave").await?;
    assert_eq!(bob.http.me().await?.role, "user");

    // Every answered message, same seq, same content.
    let stored = alice.http.messages_after("lobby", 0, Some(500)).await?;
    let stored: Vec<(u64, String, String, String)> = stored
        .into_iter()
        .map(|m| (m.seq, m.from, m.body.unwrap_or_default(), m.client_id.unwrap_or_default()))
        .collect();
    let expected: Vec<(u64, String, String, String)> =
        answered.iter().map(|(seq, (f, b, c))| (*seq, f.clone(), b.clone(), c.clone())).collect();
    assert_eq!(stored, expected);
    assert_eq!(alice.http.room("lobby").await?.last_seq, 200);

    // Rooms, memberships, roles, bans.
    let mut rooms: Vec<String> = alice.http.rooms().await?.into_iter().map(|r| r.room).collect();
    rooms.sort();
    assert_eq!(rooms, [dm.clone(), "lobby".to_string(), "secret".to_string()]);
    let room = carol.http.room("secret").await?;
    assert_eq!(
        (room.title.as_str(), room.visibility, room.owner.as_deref()),
        ("Secret", Visibility::Private, Some("alice"))
    );
    let roles: BTreeMap<String, String> =
        alice.http.members("lobby").await?.into_iter().map(|m| (m.username, m.role.to_string())).collect();
    assert_eq!(roles.get("alice").map(String::as_str), Some("owner"));
    assert_eq!(roles.get("bob").map(String::as_str), Some("moderator"));
    assert!(!roles.contains_key("dave"));
    let secret: Vec<String> = alice.http.members("secret").await?.into_iter().map(|m| m.username).collect();
    assert!(secret.contains(&"carol".to_string()), "{secret:?}");
    expect_code(dave.http.join("lobby").await, "forbidden");
    expect_code(dave.http.room("secret").await, "not_found");
    assert_eq!(carol.http.messages_after("secret", 0, None).await?[0].body.as_deref(), Some("psst"));
    assert_eq!(bob.http.messages_after(&dm, 0, None).await?[0].body.as_deref(), Some("hi bob"));

    // protocol: client_id makes a send idempotent; assuming that holds
    // across a restart too.
    let (seq, (_, body, client_id)) = answered.iter().find(|(_, (f, _, _))| f == "alice").expect("alice sent");
    assert_eq!(alice.http.post_message("lobby", body, client_id).await?.seq, *seq);
    // And the room goes on from where it was.
    assert_eq!(alice.http.post_message("lobby", "after restart", "fresh").await?.seq, 201);
    Ok(())
}

#[tokio::test]
async fn a_kill_mid_burst_loses_no_answered_message_and_leaves_no_gap() -> Result<()> {
    let mut node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    let mut ws = node.ws(&alice).await?;
    let mut ids = Vec::new();
    for i in 0..150 {
        ids.push((ws.start_send("lobby", &format!("m{i}"), &format!("c{i}")).await?, i));
    }
    // Take the first 60 answers, then kill with the rest possibly in flight.
    let mut answered = BTreeMap::new();
    for (id, i) in ids.iter().take(60) {
        answered.insert(ws.send_ack(*id).await?.seq, *i);
    }
    node.kill();
    node.restart().await?;
    let alice = node.login("alice").await?;
    let stored = alice.http.messages_after("lobby", 0, Some(500)).await?;
    let seqs: Vec<u64> = stored.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=stored.len() as u64).collect::<Vec<u64>>(), "seqs after the crash have a gap");
    for (seq, i) in &answered {
        let m = stored.iter().find(|m| m.seq == *seq);
        assert_eq!(m.and_then(|m| m.body.clone()), Some(format!("m{i}")), "answered seq {seq} lost or changed");
    }
    // Sends go on gaplessly.
    let next = alice.http.post_message("lobby", "after", "after").await?.seq;
    assert_eq!(next, stored.len() as u64 + 1);
    Ok(())
}

#[tokio::test]
async fn a_graceful_stop_closes_sockets_with_1012_and_keeps_everything() -> Result<()> {
    let mut node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    for i in 1..=3 {
        alice.http.post_message("lobby", &format!("m{i}"), &format!("c{i}")).await?;
    }
    let mut ws = node.ws(&alice).await?;
    ws.subscribe("lobby", None).await?;
    node.stop()?;
    // protocol: 1012 is "server restarting or draining"; assuming a node
    // asked to stop (SIGTERM) drains its sockets with it.
    expect_close(&mut ws, 1012).await;
    assert!(node.wait_exit(WAIT).await?.is_some(), "the node did not exit after SIGTERM");
    node.restart().await?;
    let alice = node.login("alice").await?;
    let seqs: Vec<u64> = alice.http.messages_after("lobby", 0, None).await?.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, [1, 2, 3]);
    Ok(())
}
