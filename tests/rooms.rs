//! Rooms over HTTP (docs/protocol.md §3, §4): every row of the rooms table with
//! its happy path and the errors the text names, history paging, and
//! idempotent sends. Who-may-do-what is the matrix in permissions.rs.

use anyhow::Result;
use palaver_client::Method;
use palaver_client::Visibility;
use palaver_testkit::Node;
use palaver_testkit::User;
use palaver_testkit::WAIT;
use palaver_testkit::eventually;
use palaver_testkit::expect_code;
use palaver_testkit::now_ms;
use serde_json::json;

fn seqs(messages: &[palaver_client::Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

async fn post_n(user: &User, room: &str, n: usize, tag: &str) -> Result<Vec<u64>> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        out.push(user.http.post_message(room, &format!("{tag} {i}"), &format!("{tag}-{i}")).await?.seq);
    }
    Ok(out)
}

#[tokio::test]
async fn create_room_answers_201_and_the_creator_is_owner() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let before = now_ms();
    let raw = alice
        .http
        .request(
            Method::POST,
            "/api/rooms",
            Some(&json!({"room": "lobby", "title": "The Lobby", "visibility": "public"})),
        )
        .await?;
    assert_eq!(raw.status, 201, "{}", raw.text);
    let room = alice.http.room("lobby").await?;
    assert_eq!(room.room, "lobby");
    assert_eq!(room.title, "The Lobby");
    assert_eq!(room.visibility, Visibility::Public);
    assert_eq!(room.owner.as_deref(), Some("alice"));
    assert_eq!(room.last_seq, 0);
    assert!(room.created_at >= before.saturating_sub(5_000) && room.created_at <= now_ms() + 5_000, "{room:?}");
    assert_eq!(raw.json["room"], "lobby");
    assert_eq!(raw.json["owner"], "alice");
    let members = alice.http.members("lobby").await?;
    assert_eq!(members.len(), 1, "{members:?}");
    assert_eq!((members[0].username.as_str(), members[0].role.as_str()), ("alice", "owner"));

    let private = alice.http.create_room("secret", "Secret", Visibility::Private).await?;
    assert_eq!(private.visibility, Visibility::Private);
    assert_eq!(private.owner.as_deref(), Some("alice"));
    Ok(())
}

#[tokio::test]
async fn create_room_with_a_taken_id_is_conflict() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    let e = expect_code(bob.http.create_room("lobby", "Mine", Visibility::Private).await, "conflict");
    assert_eq!(e.status(), Some(409));
    expect_code(alice.http.create_room("lobby", "Again", Visibility::Public).await, "conflict");
    let room = bob.http.room("lobby").await?;
    assert_eq!((room.owner.as_deref(), room.title.as_str()), (Some("alice"), "Lobby"));
    Ok(())
}

#[tokio::test]
async fn create_room_checks_the_id_and_visibility() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let id64 = "r".repeat(64);
    let id65 = "r".repeat(65);
    // (room id, visibility, expected: None = created, Some(code))
    let cases: Vec<(&str, &str, Option<&str>)> = vec![
        ("a", "public", None),
        (&id64, "public", None),
        ("a_b-c9", "private", None),
        ("", "public", Some("bad_request")),
        (&id65, "public", Some("bad_request")),
        ("Lobby", "public", Some("bad_request")),
        ("a b", "public", Some("bad_request")),
        ("a.b", "public", Some("bad_request")),
        ("a:b", "public", Some("bad_request")),
        ("dm:alice:bob", "public", Some("bad_request")),
        ("café", "public", Some("bad_request")),
        ("fine", "secret", Some("bad_request")),
        ("fine2", "", Some("bad_request")),
    ];
    for (room, visibility, expected) in cases {
        let body = json!({"room": room, "title": "t", "visibility": visibility});
        let raw = alice.http.request(Method::POST, "/api/rooms", Some(&body)).await?;
        match expected {
            None => assert_eq!(raw.status, 201, "{room:?}/{visibility}: {}", raw.text),
            Some(code) => {
                assert_eq!((raw.status, raw.code()), (400, Some(code)), "{room:?}/{visibility}: {}", raw.text)
            }
        }
    }
    let raw =
        alice.http.request(Method::POST, "/api/rooms", Some(&json!({"title": "t", "visibility": "public"}))).await?;
    assert_eq!((raw.status, raw.code()), (400, Some("bad_request")), "missing room: {}", raw.text);
    Ok(())
}

#[tokio::test]
async fn list_rooms_shows_public_rooms_and_the_callers_rooms() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    let carol = node.user("carol").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    alice.http.create_room("priv", "Alice's", Visibility::Private).await?;
    bob.http.create_room("bobs", "Bob's", Visibility::Private).await?;
    let ids = |rooms: Vec<palaver_client::Room>| {
        let mut v: Vec<String> = rooms.into_iter().map(|r| r.room).collect();
        v.sort();
        v
    };
    assert_eq!(ids(alice.http.rooms().await?), ["priv", "pub"]);
    assert_eq!(ids(bob.http.rooms().await?), ["bobs", "pub"]);
    assert_eq!(ids(carol.http.rooms().await?), ["pub"]);
    // Joining a private room (after an invite) adds it to the list.
    alice.http.invite("priv", "carol").await?;
    carol.http.join("priv").await?;
    assert_eq!(ids(carol.http.rooms().await?), ["priv", "pub"]);
    expect_code(node.http().rooms().await, "unauthorized");
    Ok(())
}

#[tokio::test]
async fn get_room_shows_public_rooms_to_anyone_and_private_ones_to_members() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    alice.http.create_room("priv", "Private", Visibility::Private).await?;
    assert_eq!(bob.http.room("pub").await?.room, "pub");
    let e = expect_code(bob.http.room("priv").await, "not_found");
    assert_eq!(e.status(), Some(404));
    expect_code(bob.http.room("nosuchroom").await, "not_found");
    assert_eq!(alice.http.room("priv").await?.visibility, Visibility::Private);
    Ok(())
}

#[tokio::test]
async fn delete_room_removes_it() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("gone", "Gone", Visibility::Public).await?;
    bob.http.join("gone").await?;
    alice.http.post_message("gone", "hello", "c1").await?;
    let raw = alice.http.request(Method::DELETE, "/api/rooms/gone", None).await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    expect_code(alice.http.room("gone").await, "not_found");
    expect_code(bob.http.messages_after("gone", 0, None).await, "not_found");
    expect_code(bob.http.post_message("gone", "still there?", "c2").await, "not_found");
    assert!(!bob.http.rooms().await?.iter().any(|r| r.room == "gone"));
    expect_code(alice.http.delete_room("gone").await, "not_found");
    Ok(())
}

#[tokio::test]
async fn join_and_leave_a_public_room() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    let raw = bob.http.request(Method::POST, "/api/rooms/pub/join", None).await?;
    assert_eq!(raw.status, 200, "{}", raw.text);
    assert_eq!(raw.json["username"], "bob");
    assert_eq!(raw.json["role"], "member");
    let members = alice.http.members("pub").await?;
    assert!(members.iter().any(|m| m.username == "bob" && m.role == "member"), "{members:?}");
    let raw = bob.http.request(Method::POST, "/api/rooms/pub/leave", None).await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    let members = alice.http.members("pub").await?;
    assert!(!members.iter().any(|m| m.username == "bob"), "{members:?}");
    expect_code(bob.http.join("nosuchroom").await, "not_found");
    Ok(())
}

#[tokio::test]
async fn a_private_room_is_joined_only_after_an_invite() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("priv", "Private", Visibility::Private).await?;
    expect_code(bob.http.join("priv").await, "not_found");
    let raw = alice.http.request(Method::POST, "/api/rooms/priv/invite", Some(&json!({"username": "bob"}))).await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    let member = bob.http.join("priv").await?;
    assert_eq!((member.username.as_str(), member.role.as_str()), ("bob", "member"));
    assert_eq!(bob.http.room("priv").await?.room, "priv");
    // protocol is silent: assuming inviting an unknown user is not_found.
    expect_code(alice.http.invite("priv", "nobody").await, "not_found");
    Ok(())
}

#[tokio::test]
async fn a_kicked_user_may_join_a_public_room_again() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    bob.http.join("pub").await?;
    let raw = alice.http.request(Method::POST, "/api/rooms/pub/kick", Some(&json!({"username": "bob"}))).await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    assert!(!alice.http.members("pub").await?.iter().any(|m| m.username == "bob"));
    expect_code(bob.http.post_message("pub", "am I in?", "k1").await, "forbidden");
    bob.http.join("pub").await?;
    bob.http.post_message("pub", "back", "k2").await?;
    Ok(())
}

#[tokio::test]
async fn a_banned_user_cannot_join_until_unbanned() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    bob.http.join("pub").await?;
    let raw = alice.http.request(Method::POST, "/api/rooms/pub/ban", Some(&json!({"username": "bob"}))).await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    assert!(!alice.http.members("pub").await?.iter().any(|m| m.username == "bob"));
    let e = expect_code(bob.http.join("pub").await, "forbidden");
    assert_eq!(e.status(), Some(403));
    expect_code(bob.http.post_message("pub", "hi", "b1").await, "forbidden");
    let raw = alice.http.request(Method::POST, "/api/rooms/pub/unban", Some(&json!({"username": "bob"}))).await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    bob.http.join("pub").await?;

    // A user may be banned before ever joining; the ban holds for private rooms too.
    alice.http.create_room("priv", "Private", Visibility::Private).await?;
    alice.http.invite("priv", "bob").await?;
    alice.http.ban("priv", "bob").await?;
    // protocol: a banned user's join gets forbidden (also in a private room).
    expect_code(bob.http.join("priv").await, "forbidden");
    Ok(())
}

#[tokio::test]
async fn the_owner_sets_roles_and_a_moderator_may_then_moderate() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    let carol = node.user("carol").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    bob.http.join("pub").await?;
    carol.http.join("pub").await?;
    expect_code(bob.http.kick("pub", "carol").await, "forbidden");
    let raw = alice
        .http
        .request(Method::POST, "/api/rooms/pub/role", Some(&json!({"username": "bob", "role": "moderator"})))
        .await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    let members = alice.http.members("pub").await?;
    assert!(members.iter().any(|m| m.username == "bob" && m.role == "moderator"), "{members:?}");
    bob.http.kick("pub", "carol").await?;
    alice.http.set_role("pub", "bob", "member").await?;
    carol.http.join("pub").await?;
    expect_code(bob.http.kick("pub", "carol").await, "forbidden");
    expect_code(alice.http.set_role("pub", "bob", "emperor").await, "bad_request");
    // protocol is silent: assuming a role for a non-member is not_found.
    node.user("dave").await?;
    expect_code(alice.http.set_role("pub", "dave", "moderator").await, "not_found");
    Ok(())
}

#[tokio::test]
async fn a_muted_member_cannot_send_until_unmuted_or_the_mute_ends() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    bob.http.join("pub").await?;
    let raw = alice
        .http
        .request(Method::POST, "/api/rooms/pub/mute", Some(&json!({"username": "bob", "seconds": 3600})))
        .await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    let e = expect_code(bob.http.post_message("pub", "let me speak", "m1").await, "forbidden");
    assert_eq!(e.status(), Some(403));
    let mut ws = node.ws(&bob).await?;
    expect_code(ws.send("pub", "over the socket", "m2").await, "forbidden");
    // Still a member who can read.
    bob.http.messages_after("pub", 0, None).await?;
    let raw = alice.http.request(Method::POST, "/api/rooms/pub/unmute", Some(&json!({"username": "bob"}))).await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    bob.http.post_message("pub", "thanks", "m3").await?;

    alice.http.mute("pub", "bob", 1).await?;
    expect_code(bob.http.post_message("pub", "muted again", "m4").await, "forbidden");
    let ack =
        eventually("a one-second mute ends", WAIT, async || match bob.http.post_message("pub", "free", "m5").await {
            Ok(ack) => Ok(Some(ack)),
            Err(e) if e.code() == "forbidden" => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await?;
    // Refused sends stored nothing: the seqs are 1 (m3) and 2 (m5).
    assert_eq!(ack.seq, 2);
    Ok(())
}

#[tokio::test]
async fn deleting_a_message_keeps_its_seq_and_drops_its_body() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    bob.http.join("pub").await?;
    bob.http.post_message("pub", "one", "d1").await?;
    bob.http.post_message("pub", "two", "d2").await?;
    bob.http.post_message("pub", "three", "d3").await?;
    let raw = bob.http.request(Method::DELETE, "/api/rooms/pub/messages/2", None).await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    let messages = alice.http.messages_after("pub", 0, None).await?;
    assert_eq!(seqs(&messages), [1, 2, 3]);
    assert!(messages[1].deleted, "{:?}", messages[1]);
    assert!(messages[1].body.as_deref().unwrap_or_default().is_empty(), "{:?}", messages[1]);
    assert_eq!(messages[1].from, "bob");
    assert!(!messages[0].deleted && !messages[2].deleted);
    assert_eq!(messages[0].body.as_deref(), Some("one"));
    assert_eq!(messages[2].body.as_deref(), Some("three"));
    assert_eq!(alice.http.room("pub").await?.last_seq, 3);
    // The next message still gets the next seq.
    assert_eq!(bob.http.post_message("pub", "four", "d4").await?.seq, 4);
    // protocol is silent: assuming deleting a seq that does not exist is not_found.
    expect_code(alice.http.delete_message("pub", 99).await, "not_found");
    Ok(())
}

#[tokio::test]
async fn the_audit_lists_moderation_oldest_first() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    for name in ["bob", "carol", "dave"] {
        node.user(name).await?.http.join("pub").await?;
    }
    alice.http.kick("pub", "bob").await?;
    alice.http.ban("pub", "carol").await?;
    alice.http.mute("pub", "dave", 60).await?;
    let raw = alice.http.request(Method::GET, "/api/rooms/pub/audit", None).await?;
    assert_eq!(raw.status, 200, "{}", raw.text);
    let audit = alice.http.audit("pub").await?;
    // protocol is silent on action names: assuming they name the verb
    // ("kick"/"kicked", "ban"/"banned", "mute"/"muted"); other entries may be
    // interleaved (room creation, say), so only these are checked, in order.
    let moderation: Vec<(String, String, Option<String>)> = audit
        .iter()
        .filter(|e| ["kick", "ban", "mute"].iter().any(|v| e.action.contains(v)))
        .map(|e| (e.actor.clone(), e.action.clone(), e.target.clone()))
        .collect();
    assert_eq!(moderation.len(), 3, "{audit:?}");
    assert!(moderation[0].1.contains("kick") && moderation[0].2.as_deref() == Some("bob"), "{audit:?}");
    assert!(moderation[1].1.contains("ban") && moderation[1].2.as_deref() == Some("carol"), "{audit:?}");
    assert!(moderation[2].1.contains("mute") && moderation[2].2.as_deref() == Some("dave"), "{audit:?}");
    assert!(moderation.iter().all(|m| m.0 == "alice"), "{audit:?}");
    assert!(audit.windows(2).all(|w| w[0].ts <= w[1].ts), "audit not oldest first: {audit:?}");
    Ok(())
}

#[tokio::test]
async fn the_read_marker_sets_unread_in_the_room_list() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    bob.http.join("pub").await?;
    post_n(&alice, "pub", 5, "msg").await?;
    let unread = async |u: &User| -> Result<Option<u64>> {
        let rooms = u.http.rooms().await?;
        Ok(rooms.into_iter().find(|r| r.room == "pub").and_then(|r| r.unread))
    };
    let raw = bob.http.request(Method::POST, "/api/rooms/pub/read", Some(&json!({"seq": 2}))).await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    assert_eq!(unread(&bob).await?, Some(3));
    bob.http.read("pub", 5).await?;
    assert_eq!(unread(&bob).await?, Some(0));
    alice.http.post_message("pub", "one more", "more").await?;
    assert_eq!(unread(&bob).await?, Some(1));
    Ok(())
}

#[tokio::test]
async fn direct_messages_share_one_room_per_pair() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    let carol = node.user("carol").await?;
    let zed = node.user("zed").await?;
    let room = alice.http.dm("bob").await?;
    assert_eq!(room.room, "dm:alice:bob");
    assert_eq!(room.visibility, Visibility::Direct);
    assert_eq!(bob.http.dm("alice").await?.room, "dm:alice:bob");
    assert_eq!(alice.http.dm("bob").await?.room, "dm:alice:bob");
    assert_eq!(zed.http.dm("alice").await?.room, "dm:alice:zed", "usernames are sorted in the id");
    let mut members: Vec<String> = alice.http.members("dm:alice:bob").await?.into_iter().map(|m| m.username).collect();
    members.sort();
    assert_eq!(members, ["alice", "bob"]);
    let ack = alice.http.post_message("dm:alice:bob", "psst", "p1").await?;
    assert_eq!(ack.seq, 1);
    let got = bob.http.messages_after("dm:alice:bob", 0, None).await?;
    assert_eq!(got.len(), 1);
    assert_eq!((got[0].from.as_str(), got[0].body.as_deref()), ("alice", Some("psst")));
    expect_code(carol.http.messages_after("dm:alice:bob", 0, None).await, "not_found");
    expect_code(carol.http.room("dm:alice:bob").await, "not_found");
    expect_code(carol.http.join("dm:alice:bob").await, "not_found");
    assert!(bob.http.rooms().await?.iter().any(|r| r.room == "dm:alice:bob"));
    assert!(!carol.http.rooms().await?.iter().any(|r| r.room == "dm:alice:bob"));
    // protocol is silent: assuming a DM with an unknown user is not_found.
    expect_code(alice.http.dm("nobody").await, "not_found");
    Ok(())
}

#[tokio::test]
async fn history_pages_after_and_before() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    let posted = post_n(&alice, "pub", 55, "h").await?;
    assert_eq!(posted, (1..=55).collect::<Vec<u64>>(), "seq starts at 1 without gaps");
    let h = &alice.http;
    assert_eq!(seqs(&h.messages_after("pub", 3, Some(4)).await?), [4, 5, 6, 7]);
    assert_eq!(seqs(&h.messages_before("pub", 8, Some(3)).await?), [5, 6, 7]);
    assert_eq!(seqs(&h.messages_after("pub", 0, None).await?), (1..=50).collect::<Vec<u64>>(), "default limit 50");
    assert_eq!(seqs(&h.messages_before("pub", 56, None).await?), (6..=55).collect::<Vec<u64>>(), "default limit 50");
    assert_eq!(seqs(&h.messages_after("pub", 53, Some(10)).await?), [54, 55]);
    assert_eq!(seqs(&h.messages_before("pub", 3, Some(10)).await?), [1, 2]);
    assert!(h.messages_after("pub", 55, None).await?.is_empty());
    assert!(h.messages_before("pub", 1, None).await?.is_empty());
    let m = &h.messages_after("pub", 9, Some(1)).await?[0];
    assert_eq!((m.room.as_str(), m.seq, m.from.as_str()), ("pub", 10, "alice"));
    assert_eq!((m.body.as_deref(), m.client_id.as_deref()), (Some("h 9"), Some("h-9")));
    // A stranger reads a public room's history.
    let bob = node.user("bob").await?;
    assert_eq!(seqs(&bob.http.messages_after("pub", 50, None).await?), [51, 52, 53, 54, 55]);
    Ok(())
}

#[tokio::test]
async fn post_message_answers_201_with_seq_and_ts() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    let before = now_ms();
    let raw = alice
        .http
        .request(Method::POST, "/api/rooms/pub/messages", Some(&json!({"body": "hello", "client_id": "c-1"})))
        .await?;
    assert_eq!(raw.status, 201, "{}", raw.text);
    assert_eq!(raw.json["seq"], 1);
    let ts = raw.json["ts"].as_u64().expect("ts is a number");
    assert!(ts + 5_000 >= before && ts <= now_ms() + 5_000, "ts {ts} is not now");
    assert_eq!(alice.http.post_message("pub", "again", "c-2").await?.seq, 2);
    let m = alice.http.messages_after("pub", 0, None).await?;
    assert_eq!(m[0].ts, ts);
    assert_eq!(alice.http.room("pub").await?.last_seq, 2);
    expect_code(alice.http.post_message("nosuchroom", "x", "c-3").await, "not_found");
    Ok(())
}

#[tokio::test]
async fn a_repeated_client_id_answers_the_original_seq_and_stores_nothing() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    alice.http.create_room("other", "Other", Visibility::Public).await?;
    bob.http.join("pub").await?;
    let first = alice.http.post_message("pub", "once", "same").await?;
    alice.http.post_message("pub", "between", "between").await?;
    let again = alice.http.post_message("pub", "once", "same").await?;
    assert_eq!(again.seq, first.seq);
    let changed = alice.http.post_message("pub", "different body", "same").await?;
    assert_eq!(changed.seq, first.seq, "same sender, room and client_id: the original seq");
    let mut ws = node.ws(&alice).await?;
    assert_eq!(ws.send("pub", "once", "same").await?.seq, first.seq, "idempotent across transports");
    let history = alice.http.messages_after("pub", 0, None).await?;
    assert_eq!(seqs(&history), [1, 2]);
    assert_eq!(history[0].body.as_deref(), Some("once"));
    assert_eq!(alice.http.room("pub").await?.last_seq, 2);
    // Another sender or another room is another message.
    assert_eq!(bob.http.post_message("pub", "mine", "same").await?.seq, 3);
    assert_eq!(alice.http.post_message("other", "elsewhere", "same").await?.seq, 1);
    Ok(())
}
