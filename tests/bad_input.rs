//! Bad input (docs/protocol.md §1, §3, §4, §5): malformed JSON, wrong shapes,
//! bodies and client_ids out of range, oversize frames and bodies, invalid
//! UTF-8, unknown commands, history limits. Names are checked in
//! accounts.rs and rooms.rs; Origin and the 4001 first frame in websocket.rs.

use anyhow::Result;
use palaver_client::Event;
use palaver_client::History;
use palaver_client::Method;
use palaver_client::Visibility;
use palaver_testkit::Node;
use palaver_testkit::User;
use palaver_testkit::WAIT;
use palaver_testkit::config;
use palaver_testkit::expect_close;
use palaver_testkit::expect_code;
use serde_json::Value;
use serde_json::json;

async fn lobby(node: &Node) -> Result<User> {
    let alice = node.user("alice").await?;
    alice.http.create_room("lobby", "Lobby", Visibility::Public).await?;
    node.user("bob").await?.http.join("lobby").await?;
    Ok(alice)
}

#[tokio::test]
async fn malformed_or_misshapen_json_over_http_is_bad_request() -> Result<()> {
    let node = Node::start().await?;
    let alice = lobby(&node).await?;
    let anon = node.http();
    // (client, method, path, body)
    let cases: Vec<(&palaver_client::Http, Method, &str, &str)> = vec![
        (&anon, Method::POST, "/api/register", "{\"username\": \"carol\","),
        (&anon, Method::POST, "/api/register", "not json"),
        (&anon, Method::POST, "/api/register", "[\"carol\", \"password\"]"),
        (&anon, Method::POST, "/api/register", "{\"username\": 5, \"password\": \"password\"}"),
        (&anon, Method::POST, "/api/login", "{\"username\": \"alice\""),
        (&alice.http, Method::POST, "/api/rooms", "{\"room\": \"x\", \"title\": "),
        (&alice.http, Method::POST, "/api/rooms", "{\"room\": [], \"title\": \"t\", \"visibility\": \"public\"}"),
        (&alice.http, Method::POST, "/api/rooms/lobby/messages", "{\"body\": \"hi\", "),
        (&alice.http, Method::POST, "/api/rooms/lobby/messages", "{\"body\": 5, \"client_id\": \"c\"}"),
        (&alice.http, Method::POST, "/api/rooms/lobby/messages", "{\"client_id\": \"c\"}"),
        (&alice.http, Method::POST, "/api/rooms/lobby/invite", "{\"username\": "),
        (&alice.http, Method::POST, "/api/rooms/lobby/invite", "{}"),
        (&alice.http, Method::POST, "/api/rooms/lobby/kick", "{\"user\": \"bob\"}"),
        (&alice.http, Method::POST, "/api/rooms/lobby/role", "{\"username\": \"bob\"}"),
        (&alice.http, Method::POST, "/api/rooms/lobby/mute", "{\"username\": \"bob\", \"seconds\": -5}"),
        (&alice.http, Method::POST, "/api/rooms/lobby/mute", "{\"username\": \"bob\", \"seconds\": \"long\"}"),
        (&alice.http, Method::POST, "/api/rooms/lobby/read", "{\"seq\": \"two\"}"),
        (&alice.http, Method::POST, "/api/rooms/lobby/read", "{}"),
    ];
    let mut failures = Vec::new();
    for (client, method, path, body) in cases {
        let raw = client.request_bytes(method.clone(), path, Some("application/json"), body).await?;
        if (raw.status, raw.code()) != (400, Some("bad_request")) {
            failures.push(format!("{method} {path} {body}: {} {}", raw.status, raw.text));
        }
    }
    assert!(failures.is_empty(), "expected 400 bad_request:\n{}", failures.join("\n"));
    // Query and path values that are not numbers.
    for path in [
        "/api/rooms/lobby/messages?after=abc",
        "/api/rooms/lobby/messages?before=-1",
        "/api/rooms/lobby/messages?after=0&limit=many",
    ] {
        let raw = alice.http.request(Method::GET, path, None).await?;
        assert_eq!((raw.status, raw.code()), (400, Some("bad_request")), "GET {path}: {}", raw.text);
    }
    let raw = alice.http.request(Method::DELETE, "/api/rooms/lobby/messages/first", None).await?;
    assert_eq!((raw.status, raw.code()), (400, Some("bad_request")), "DELETE .../messages/first: {}", raw.text);
    // Nothing was stored by any of it.
    assert_eq!(alice.http.room("lobby").await?.last_seq, 0);
    Ok(())
}

#[tokio::test]
async fn message_bodies_must_be_1_to_4096_characters() -> Result<()> {
    let node = Node::start().await?;
    let alice = lobby(&node).await?;
    let exact = "é".repeat(4096); // 4096 characters, 8192 bytes
    let over = "a".repeat(4097);
    let ok = alice.http.post_message("lobby", &exact, "exact").await?;
    let stored = alice.http.messages_after("lobby", ok.seq - 1, Some(1)).await?;
    assert_eq!(stored[0].body.as_deref(), Some(exact.as_str()));
    let e = expect_code(alice.http.post_message("lobby", &over, "over").await, "too_large");
    assert_eq!(e.status(), Some(413));
    expect_code(alice.http.post_message("lobby", "", "empty").await, "bad_request");
    let raw =
        alice.http.request(Method::POST, "/api/rooms/lobby/messages", Some(&json!({"client_id": "missing"}))).await?;
    assert_eq!((raw.status, raw.code()), (400, Some("bad_request")), "{}", raw.text);

    let mut ws = node.ws(&alice).await?;
    assert_eq!(ws.send("lobby", &exact, "ws-exact").await?.seq, ok.seq + 1);
    expect_code(ws.send("lobby", &over, "ws-over").await, "too_large");
    expect_code(ws.send("lobby", "", "ws-empty").await, "bad_request");
    expect_code(ws.call(json!({"type": "send", "room": "lobby", "client_id": "ws-missing"})).await, "bad_request");
    assert_eq!(alice.http.room("lobby").await?.last_seq, ok.seq + 1, "refused bodies stored nothing");
    Ok(())
}

#[tokio::test]
async fn client_ids_must_be_1_to_64_characters() -> Result<()> {
    let node = Node::start().await?;
    let alice = lobby(&node).await?;
    let id64 = "c".repeat(64);
    let id65 = "c".repeat(65);
    alice.http.post_message("lobby", "fine", &id64).await?;
    expect_code(alice.http.post_message("lobby", "too long", &id65).await, "bad_request");
    expect_code(alice.http.post_message("lobby", "empty", "").await, "bad_request");
    let mut ws = node.ws(&alice).await?;
    assert_eq!(ws.send("lobby", "fine", &id64).await?.seq, 1, "same client_id over ws: the original seq");
    expect_code(ws.send("lobby", "too long", &id65).await, "bad_request");
    expect_code(ws.send("lobby", "empty", "").await, "bad_request");
    assert_eq!(alice.http.room("lobby").await?.last_seq, 1);
    Ok(())
}

#[tokio::test]
async fn history_limit_is_capped_at_500() -> Result<()> {
    let node = Node::start().await?;
    let alice = lobby(&node).await?;
    let mut ws = node.ws(&alice).await?;
    let mut ids = Vec::new();
    for i in 0..510 {
        ids.push(ws.start_send("lobby", &format!("m{i}"), &format!("c{i}")).await?);
        if ids.len() >= 32 {
            for id in ids.drain(..) {
                ws.send_ack(id).await?;
            }
        }
    }
    for id in ids.drain(..) {
        ws.send_ack(id).await?;
    }
    let after = alice.http.messages_after("lobby", 0, Some(1000)).await?;
    assert_eq!(after.len(), 500);
    assert_eq!((after[0].seq, after[499].seq), (1, 500));
    let before = alice.http.messages_before("lobby", 511, Some(1000)).await?;
    assert_eq!(before.len(), 500);
    assert_eq!((before[0].seq, before[499].seq), (11, 510));
    let over_ws = ws.history("lobby", History::After(0), Some(1000)).await?;
    assert_eq!(over_ws.len(), 500);
    Ok(())
}

#[tokio::test]
async fn an_http_body_over_the_limit_is_too_large() -> Result<()> {
    let node = Node::start_with(config(|c| c.limits.body_bytes = 4096)).await?;
    let alice = lobby(&node).await?;
    let body = json!({"body": "a".repeat(3000), "client_id": "fits"});
    alice.http.request(Method::POST, "/api/rooms/lobby/messages", Some(&body)).await?;
    let big = json!({"body": "a".repeat(5000), "client_id": "big"}).to_string();
    let raw =
        alice.http.request_bytes(Method::POST, "/api/rooms/lobby/messages", Some("application/json"), big).await?;
    assert_eq!(raw.status, 413, "{}", raw.text);
    assert_eq!(raw.code(), Some("too_large"), "{}", raw.text);
    assert_eq!(alice.http.room("lobby").await?.last_seq, 1);
    Ok(())
}

#[tokio::test]
async fn a_malformed_utf8_frame_gets_bad_request_and_the_socket_stays_open() -> Result<()> {
    let node = Node::start().await?;
    let alice = lobby(&node).await?;
    let mut ws = node.ws(&alice).await?;
    // protocol is silent: assuming the error for a frame whose id cannot be
    // read carries no id (or a null one), so it arrives as an event here.
    for frame in ["{oops", "[1, 2, 3]", "42", "\"send\"", "{\"type\": 7}"] {
        ws.send_text(frame).await?;
        let e = ws.wait_for(|e| e.kind() == "error", WAIT).await?;
        assert!(matches!(&e, Event::Error { code, .. } if code == "bad_request"), "frame {frame}: {e:?}");
    }
    // With a readable id the error is that command's reply.
    let cases = [
        json!({"type": "bogus"}),
        json!({"type": "send"}),
        json!({"type": "send", "room": "lobby", "body": 5, "client_id": "x"}),
        json!({"type": "subscribe"}),
        json!({"type": "subscribe", "room": "lobby", "since": "yesterday"}),
        json!({"type": "history", "room": "lobby", "after": "zero"}),
        json!({"type": "read", "room": "lobby"}),
        json!({"type": "typing"}),
    ];
    for cmd in cases {
        let r = ws.call(cmd.clone()).await;
        match r {
            Err(e) => assert_eq!(e.code(), "bad_request", "{cmd}: {e}"),
            Ok(v) => panic!("{cmd}: answered {v}"),
        }
    }
    // Still usable.
    assert_eq!(ws.subscribe("lobby", None).await?, 0);
    assert_eq!(ws.send("lobby", "still here", "c1").await?.seq, 1);
    Ok(())
}

#[tokio::test]
async fn invalid_utf8_closes_with_1007() -> Result<()> {
    let node = Node::start().await?;
    let alice = lobby(&node).await?;
    let mut ws = node.ws(&alice).await?;
    let mut frame = br#"{"type":"send","room":"lobby","body":""#.to_vec();
    frame.extend_from_slice(&[0xff, 0xfe, 0xc3]);
    frame.extend_from_slice(br#"","client_id":"bad"}"#);
    ws.send_raw_text(frame).await?;
    expect_close(&mut ws, 1007).await;
    assert_eq!(alice.http.room("lobby").await?.last_seq, 0);
    Ok(())
}

#[tokio::test]
async fn an_oversize_frame_closes_with_1009() -> Result<()> {
    let node = Node::start_with(config(|c| c.limits.frame_bytes = 4096)).await?;
    let alice = lobby(&node).await?;
    let mut ws = node.ws(&alice).await?;
    let fits = json!({"type": "send", "room": "lobby", "body": "a".repeat(3000), "client_id": "fits", "id": 100});
    ws.send_text(&fits.to_string()).await?;
    let v: Value = ws.reply(100).await?;
    assert_eq!(v["seq"], 1, "{v}");
    let big = json!({"type": "send", "room": "lobby", "body": "a".repeat(8000), "client_id": "big", "id": 101});
    ws.send_text(&big.to_string()).await?;
    expect_close(&mut ws, 1009).await;
    assert_eq!(alice.http.room("lobby").await?.last_seq, 1);
    Ok(())
}
