//! The WebSocket (docs/protocol.md §5): authentication, every command, every
//! server event, close codes 4001/4003 at the edges, Origin checks,
//! pipelining and the per-connection send rate.

use std::time::Duration;

use anyhow::Result;
use palaver_client::Event;
use palaver_client::History;
use palaver_client::Visibility;
use palaver_client::Ws;
use palaver_client::WsOptions;
use palaver_testkit::ALLOWED_ORIGIN;
use palaver_testkit::Node;
use palaver_testkit::WAIT;
use palaver_testkit::config;
use palaver_testkit::eventually;
use palaver_testkit::expect_close;
use palaver_testkit::expect_code;
use serde_json::json;

fn seqs(messages: &[palaver_client::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

#[tokio::test]
async fn auth_answers_ok_with_the_username() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let mut ws = Ws::connect(node.addr()).await?;
    let reply = ws.call(json!({"type": "auth", "token": alice.token})).await?;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["id"], 1, "{reply}");
    assert_eq!(reply["username"], "alice", "{reply}");
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    assert_eq!(ws.subscribe("lobby", None).await?, 0);
    Ok(())
}

#[tokio::test]
async fn a_bearer_header_on_the_upgrade_replaces_the_auth_frame() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    alice.http.post_message("lobby", "hi", "c1").await?;
    let mut ws =
        Ws::connect_with(node.addr(), WsOptions { bearer: Some(alice.token.clone()), ..Default::default() }).await?;
    assert_eq!(ws.subscribe("lobby", None).await?, 1);
    assert_eq!(ws.send("lobby", "over ws", "c2").await?.seq, 2);
    Ok(())
}

#[tokio::test]
async fn a_first_frame_other_than_auth_closes_with_4001() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    let firsts = [
        json!({"type": "subscribe", "id": 1, "room": "lobby"}).to_string(),
        json!({"type": "send", "id": 1, "room": "lobby", "body": "x", "client_id": "a"}).to_string(),
        json!({"type": "history", "id": 1, "room": "lobby", "after": 0}).to_string(),
        json!({"type": "nonsense", "id": 1}).to_string(),
        "not json at all".to_string(),
    ];
    for first in firsts {
        let mut ws = Ws::connect(node.addr()).await?;
        ws.send_text(&first).await?;
        match ws.wait_closed(WAIT).await {
            Ok(code) => assert_eq!(code, Some(4001), "first frame {first}"),
            Err(e) => panic!("first frame {first}: {e}"),
        }
    }
    // Nothing was sent as a side effect.
    assert_eq!(alice.http.room("lobby").await?.last_seq, 0);
    Ok(())
}

#[tokio::test]
async fn auth_with_a_bad_token_does_not_authenticate() -> Result<()> {
    let node = Node::start().await?;
    node.user("alice").await?;
    let mut ws = Ws::connect(node.addr()).await?;
    // protocol is silent: assuming a wrong token gets an `unauthorized`
    // reply or the 4001 close; either way the socket never serves commands.
    match ws.auth("not-a-token").await {
        Ok(name) => panic!("a bogus token authenticated as {name}"),
        Err(e) if e.code() == "unauthorized" => {
            let r = ws.subscribe("lobby", None).await;
            assert!(r.is_err(), "an unauthenticated socket served subscribe: {r:?}");
        }
        Err(e) => assert_eq!(e.close_code(), Some(4001), "{e}"),
    }
    Ok(())
}

#[tokio::test]
async fn a_socket_that_never_authenticates_is_closed_after_the_handshake_timeout() -> Result<()> {
    let node = Node::start_with(config(|c| c.limits.handshake_timeout_ms = 300)).await?;
    let mut ws = Ws::connect(node.addr()).await?;
    // protocol is silent on the code: assuming 4001 (not authenticated).
    expect_close(&mut ws, 4001).await;
    Ok(())
}

#[tokio::test]
async fn subscribe_answers_last_seq_and_live_messages_follow() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    bob.http.join("lobby").await?;
    for i in 1..=3 {
        alice.http.post_message("lobby", &format!("old {i}"), &format!("old-{i}")).await?;
    }
    let mut bob_ws = node.ws(&bob).await?;
    let id = bob_ws.start(json!({"type": "subscribe", "room": "lobby"})).await?;
    let reply = bob_ws.reply(id).await?;
    assert_eq!(
        (reply["type"].as_str(), reply["id"].as_u64(), reply["last_seq"].as_u64()),
        (Some("ok"), Some(id), Some(3))
    );
    let mut alice_ws = node.ws(&alice).await?;
    let ack = alice_ws.send("lobby", "live one", "live-1").await?;
    assert_eq!(ack.seq, 4);
    // Without `since` nothing old is replayed: the first message is the live one.
    let event = bob_ws.wait_for(|e| e.kind() == "message", WAIT).await?;
    let Event::Message(m) = event else { unreachable!("filtered on kind") };
    assert_eq!((m.room.as_str(), m.seq, m.from.as_str()), ("lobby", 4, "alice"));
    assert_eq!((m.body.as_deref(), m.client_id.as_deref(), m.ts), (Some("live one"), Some("live-1"), ack.ts));
    Ok(())
}

#[tokio::test]
async fn subscribe_with_since_replays_then_goes_live() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    for i in 1..=5 {
        alice.http.post_message("lobby", &format!("m{i}"), &format!("c{i}")).await?;
    }
    let mut ws = node.ws(&alice).await?;
    assert_eq!(ws.subscribe("lobby", Some(2)).await?, 5);
    alice.http.post_message("lobby", "m6", "c6").await?;
    let got = ws.messages_through("lobby", 6, WAIT).await?;
    assert_eq!(seqs(&got), [3, 4, 5, 6]);
    assert_eq!(got[0].body.as_deref(), Some("m3"));
    // since = last_seq replays nothing and goes live.
    let mut ws2 = node.ws(&alice).await?;
    assert_eq!(ws2.subscribe("lobby", Some(6)).await?, 6);
    alice.http.post_message("lobby", "m7", "c7").await?;
    assert_eq!(seqs(&ws2.messages_through("lobby", 7, WAIT).await?), [7]);
    Ok(())
}

#[tokio::test]
async fn unsubscribe_stops_the_rooms_events() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("one", "One", Visibility::Public).await?;
    alice.http.create_room("two", "Two", Visibility::Public).await?;
    let mut ws = node.ws(&alice).await?;
    ws.subscribe("one", None).await?;
    ws.subscribe("two", None).await?;
    let reply = ws.call(json!({"type": "unsubscribe", "room": "one"})).await?;
    assert_eq!(reply["type"], "ok", "{reply}");
    alice.http.post_message("one", "unheard", "u1").await?;
    alice.http.post_message("two", "marker", "m1").await?;
    // One publisher, posted in order: had "one" still been subscribed its
    // message would have been queued first.
    let first = ws.wait_for(|e| e.kind() == "message", WAIT).await?;
    assert_eq!(first.room(), Some("two"), "{first:?}");
    Ok(())
}

#[tokio::test]
async fn send_over_the_socket_answers_seq_and_ts() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    alice.http.create_room("priv", "Private", Visibility::Private).await?;
    let mut ws = node.ws(&alice).await?;
    let reply = ws.call(json!({"type": "send", "room": "lobby", "body": "hi", "client_id": "x1"})).await?;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(reply["seq"], 1, "{reply}");
    assert!(reply["ts"].as_u64().is_some(), "{reply}");
    assert_eq!(ws.send("lobby", "again", "x2").await?.seq, 2);
    let stored = alice.http.messages_after("lobby", 0, None).await?;
    assert_eq!(stored[0].body.as_deref(), Some("hi"));
    assert_eq!(stored[0].ts, reply["ts"].as_u64().unwrap_or_default());
    expect_code(ws.send("nosuchroom", "x", "x3").await, "not_found");
    let mut bob_ws = node.ws(&bob).await?;
    expect_code(bob_ws.send("lobby", "not a member", "x4").await, "forbidden");
    expect_code(bob_ws.send("priv", "not a member", "x5").await, "not_found");
    // Errors do not end the socket.
    bob.http.join("lobby").await?;
    assert_eq!(bob_ws.send("lobby", "now a member", "x6").await?.seq, 3);
    Ok(())
}

#[tokio::test]
async fn history_over_the_socket() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    let mut ws = node.ws(&alice).await?;
    for i in 1..=10 {
        ws.send("lobby", &format!("m{i}"), &format!("c{i}")).await?;
    }
    let reply = ws.call(json!({"type": "history", "room": "lobby", "after": 2, "limit": 3})).await?;
    assert_eq!(reply["type"], "ok", "{reply}");
    assert_eq!(seqs(&ws.history("lobby", History::After(2), Some(3)).await?), [3, 4, 5]);
    assert_eq!(seqs(&ws.history("lobby", History::Before(9), Some(3)).await?), [6, 7, 8]);
    assert_eq!(seqs(&ws.history("lobby", History::After(0), None).await?), (1..=10).collect::<Vec<u64>>());
    let m = &ws.history("lobby", History::After(4), Some(1)).await?[0];
    assert_eq!((m.room.as_str(), m.from.as_str(), m.body.as_deref()), ("lobby", "alice", Some("m5")));
    expect_code(ws.history("nosuchroom", History::After(0), None).await, "not_found");
    Ok(())
}

#[tokio::test]
async fn typing_reaches_the_other_subscribers() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    bob.http.join("lobby").await?;
    let mut bob_ws = node.ws(&bob).await?;
    bob_ws.subscribe("lobby", None).await?;
    let mut alice_ws = node.ws(&alice).await?;
    let reply = alice_ws.call(json!({"type": "typing", "room": "lobby"})).await?;
    assert_eq!(reply["type"], "ok", "{reply}");
    let e = bob_ws.wait_for(|e| e.kind() == "typing", WAIT).await?;
    assert_eq!(e, Event::Typing { room: "lobby".into(), username: "alice".into() });
    Ok(())
}

#[tokio::test]
async fn read_over_the_socket_stores_the_read_marker() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    let mut ws = node.ws(&alice).await?;
    for i in 1..=4 {
        ws.send("lobby", "x", &format!("c{i}")).await?;
    }
    let reply = ws.call(json!({"type": "read", "room": "lobby", "seq": 1})).await?;
    assert_eq!(reply["type"], "ok", "{reply}");
    let unread = alice.http.rooms().await?.into_iter().find(|r| r.room == "lobby").and_then(|r| r.unread);
    assert_eq!(unread, Some(3));
    Ok(())
}

#[tokio::test]
async fn presence_follows_a_members_connection() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    bob.http.join("lobby").await?;
    let mut bob_ws = node.ws(&bob).await?;
    bob_ws.subscribe("lobby", None).await?;
    let alice_online = async |online: bool| -> Result<Option<()>> {
        let members = bob.http.members("lobby").await?;
        let m = members.iter().find(|m| m.username == "alice");
        Ok((m.and_then(|m| m.online) == Some(online)).then_some(()))
    };
    eventually("alice shows offline", WAIT, async || alice_online(false).await).await?;

    let alice_ws = node.ws(&alice).await?;
    let is_alice = |online: bool| move |e: &Event| matches!(e, Event::Presence { room, username, online: o } if room == "lobby" && username == "alice" && *o == online);
    bob_ws.wait_for(is_alice(true), WAIT).await?;
    eventually("members shows alice online", WAIT, async || alice_online(true).await).await?;
    drop(alice_ws);
    bob_ws.wait_for(is_alice(false), WAIT).await?;
    eventually("members shows alice offline", WAIT, async || alice_online(false).await).await?;
    Ok(())
}

#[tokio::test]
async fn member_events_announce_joins_roles_leaves_kicks_and_bans() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let carol = node.user("carol").await?;
    let dave = node.user("dave").await?;
    let eve = node.user("eve").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    let mut ws = node.ws(&alice).await?;
    ws.subscribe("lobby", None).await?;
    let member_event = |who: &'static str, change: &'static str| move |e: &Event| matches!(e, Event::Member { room, username, change: c, .. } if room == "lobby" && username == who && c == change);
    carol.http.join("lobby").await?;
    ws.wait_for(member_event("carol", "joined"), WAIT).await?;
    alice.http.set_role("lobby", "carol", "moderator").await?;
    let e = ws.wait_for(member_event("carol", "role"), WAIT).await?;
    assert!(matches!(&e, Event::Member { role: Some(r), .. } if r == "moderator"), "{e:?}");
    carol.http.leave("lobby").await?;
    ws.wait_for(member_event("carol", "left"), WAIT).await?;
    dave.http.join("lobby").await?;
    alice.http.kick("lobby", "dave").await?;
    ws.wait_for(member_event("dave", "kicked"), WAIT).await?;
    eve.http.join("lobby").await?;
    alice.http.ban("lobby", "eve").await?;
    ws.wait_for(member_event("eve", "banned"), WAIT).await?;
    Ok(())
}

#[tokio::test]
async fn a_kicked_or_banned_users_subscription_ends_with_removed() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let dave = node.user("dave").await?;
    alice.http.create_room("priv", "Private", Visibility::Private).await?;
    alice.http.invite("priv", "dave").await?;
    dave.http.join("priv").await?;
    let mut ws = node.ws(&dave).await?;
    ws.subscribe("priv", None).await?;
    alice.http.kick("priv", "dave").await?;
    let e = ws.wait_for(|e| e.kind() == "removed", WAIT).await?;
    assert_eq!(e.room(), Some("priv"), "{e:?}");
    expect_code(ws.subscribe("priv", None).await, "not_found");

    alice.http.invite("priv", "dave").await?;
    dave.http.join("priv").await?;
    ws.subscribe("priv", None).await?;
    alice.http.ban("priv", "dave").await?;
    let e = ws.wait_for(|e| e.kind() == "removed", WAIT).await?;
    assert_eq!(e.room(), Some("priv"), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn a_kick_ends_the_subscription_in_a_public_room_too() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let dave = node.user("dave").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    dave.http.join("lobby").await?;
    let mut ws = node.ws(&dave).await?;
    ws.subscribe("lobby", None).await?;
    // protocol §3: kick → "the user's live subscriptions end with event
    // `removed`", whatever the room's visibility.
    alice.http.kick("lobby", "dave").await?;
    let e = ws.wait_for(|e| e.kind() == "removed", WAIT).await?;
    assert_eq!(e.room(), Some("lobby"), "{e:?}");
    Ok(())
}

#[tokio::test]
async fn deleted_and_room_deleted_events() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    bob.http.join("lobby").await?;
    alice.http.post_message("lobby", "oops", "o1").await?;
    let mut ws = node.ws(&bob).await?;
    ws.subscribe("lobby", None).await?;
    alice.http.delete_message("lobby", 1).await?;
    let e = ws.wait_for(|e| e.kind() == "deleted", WAIT).await?;
    assert_eq!(e, Event::Deleted { room: "lobby".into(), seq: 1 });
    alice.http.delete_room("lobby").await?;
    let e = ws.wait_for(|e| e.kind() == "room_deleted", WAIT).await?;
    assert_eq!(e, Event::RoomDeleted { room: "lobby".into() });
    Ok(())
}

#[tokio::test]
async fn subscribe_refuses_unknown_and_hidden_rooms() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("priv", "Private", Visibility::Private).await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    let mut ws = node.ws(&bob).await?;
    expect_code(ws.subscribe("nosuchroom", None).await, "not_found");
    expect_code(ws.subscribe("priv", None).await, "not_found");
    // protocol: history of a public room is open to anyone; assuming the
    // same for subscribing to it.
    ws.subscribe("pub", None).await?;
    Ok(())
}

#[tokio::test]
async fn subscriptions_beyond_the_per_socket_limit_are_bad_request() -> Result<()> {
    let node = Node::start_with(config(|c| c.limits.subscriptions_per_socket = 3)).await?;
    let alice = node.user("alice").await?;
    for r in ["r1", "r2", "r3", "r4"] {
        alice.http.create_room(r, r, Visibility::Public).await?;
    }
    let mut ws = node.ws(&alice).await?;
    for r in ["r1", "r2", "r3"] {
        ws.subscribe(r, None).await?;
    }
    expect_code(ws.subscribe("r4", None).await, "bad_request");
    // The socket stays usable, and freeing a slot allows another.
    ws.unsubscribe("r1").await?;
    ws.subscribe("r4", None).await?;
    Ok(())
}

#[tokio::test]
async fn pipelined_commands_get_their_own_replies() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    let mut ws = node.ws(&alice).await?;
    let mut ids = Vec::new();
    for i in 0..50 {
        ids.push(ws.start_send("lobby", &format!("p{i}"), &format!("p{i}")).await?);
    }
    assert!(ids.windows(2).all(|w| w[1] == w[0] + 1), "ids increase by one: {ids:?}");
    // Collected newest first: replies are matched by id, not by order.
    let mut got = Vec::new();
    for id in ids.iter().rev() {
        got.push(ws.send_ack(*id).await?.seq);
    }
    got.sort_unstable();
    assert_eq!(got, (1..=50).collect::<Vec<u64>>());
    let stored = alice.http.messages_after("lobby", 0, Some(100)).await?;
    assert_eq!(stored.len(), 50);
    Ok(())
}

#[tokio::test]
async fn the_upgrade_checks_origin() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let opts = |origin: Option<&str>| WsOptions { origin: origin.map(str::to_string), ..Default::default() };
    let err =
        Ws::connect_with(node.addr(), opts(Some("http://evil.example"))).await.expect_err("foreign origin upgraded");
    assert_eq!(err.status(), Some(403), "{err}");
    let mut ws = Ws::connect_with(node.addr(), opts(Some(ALLOWED_ORIGIN))).await?;
    ws.auth(&alice.token).await?;
    let mut ws = Ws::connect_with(node.addr(), opts(None)).await?;
    ws.auth(&alice.token).await?;
    Ok(())
}

#[tokio::test]
async fn a_send_flood_gets_rate_limited_with_retry_after() -> Result<()> {
    let burst = 5;
    let node = Node::start_with(config(|c| {
        c.limits.send_rate_per_sec = 1.0;
        c.limits.send_burst = burst as f64;
    }))
    .await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    let mut ws = node.ws(&alice).await?;
    let mut ids = Vec::new();
    for i in 0..3 * burst {
        ids.push(ws.start_send("lobby", "flood", &format!("f{i}")).await?);
    }
    let mut ok = 0;
    let mut limited = None;
    for id in ids {
        match ws.send_ack(id).await {
            Ok(_) => ok += 1,
            Err(e) if e.code() == "rate_limited" => limited = Some(e),
            Err(e) => panic!("unexpected answer in a flood: {e}"),
        }
    }
    assert!(ok >= burst, "only {ok} of the first {burst} sends passed");
    assert!(ok < 3 * burst, "no send of the flood was limited");
    let e = limited.expect("a limited send");
    assert!(e.retry_after_ms().is_some_and(|ms| ms > 0), "rate_limited without retry_after_ms: {e}");
    // Waiting as told lets a send through again; bounded to 10 tries.
    let mut wait = Duration::from_millis(e.retry_after_ms().unwrap_or(1000));
    let mut passed = false;
    for i in 0..10 {
        tokio::time::sleep(wait).await;
        match ws.send("lobby", "later", &format!("later{i}")).await {
            Ok(_) => {
                passed = true;
                break;
            }
            Err(e) if e.code() == "rate_limited" => wait = Duration::from_millis(e.retry_after_ms().unwrap_or(1000)),
            Err(e) => panic!("{e}"),
        }
    }
    assert!(passed, "no send passed after waiting retry_after_ms");
    let stored = alice.http.room("lobby").await?.last_seq;
    assert_eq!(stored, ok + 1, "limited sends stored nothing");
    Ok(())
}
