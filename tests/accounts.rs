//! Accounts (docs/protocol.md §2): register, login, logout, me, tickets, token
//! lifetimes and login rate limits, against a real node process.

use std::time::Duration;
use std::time::Instant;

use anyhow::Result;
use palaver_client::Method;
use palaver_client::Ws;
use palaver_client::WsOptions;
use palaver_testkit::Node;
use palaver_testkit::WAIT;
use palaver_testkit::config;
use palaver_testkit::eventually;
use palaver_testkit::expect_close;
use palaver_testkit::expect_code;
use serde_json::json;

#[tokio::test]
async fn register_answers_201_with_the_username_and_login_works() -> Result<()> {
    let node = Node::start().await?;
    let http = node.http();
    let raw = http
        .request(Method::POST, "/api/register", Some(&json!({"username": "alice", "password": "secret-pw"})))
        .await?;
    assert_eq!(raw.status, 201, "{}", raw.text);
    assert_eq!(raw.json["username"], "alice");
    let before = palaver_testkit::now_ms();
    let login = http.login("alice", "secret-pw").await?;
    assert_eq!(login.username, "alice");
    assert!(!login.token.is_empty());
    assert!(login.expires_at > before, "expires_at {} is not in the future", login.expires_at);
    // Default absolute lifetime: 30 days; expires_at is at most that far ahead.
    assert!(login.expires_at <= palaver_testkit::now_ms() + 2_592_000_000 + 60_000, "expires_at {}", login.expires_at);
    let me = http.with_token(&login.token).me().await?;
    assert_eq!(me.username, "alice");
    Ok(())
}

#[tokio::test]
async fn register_of_a_taken_name_is_conflict() -> Result<()> {
    let node = Node::start().await?;
    let http = node.http();
    http.register("alice", "secret-pw").await?;
    let err = expect_code(http.register("alice", "other-password").await, "conflict");
    assert_eq!(err.status(), Some(409));
    // The first password still works: nothing was overwritten.
    http.login("alice", "secret-pw").await?;
    Ok(())
}

/// What a registration should answer.
#[derive(Debug, Clone, Copy)]
enum Outcome {
    Created,
    Refused(&'static str),
}

#[tokio::test]
async fn register_checks_names_and_passwords() -> Result<()> {
    let node = Node::start().await?;
    let http = node.http();
    let long_name = "a".repeat(32);
    let too_long_name = "a".repeat(33);
    let pw128 = "p".repeat(128);
    let pw129 = "p".repeat(129);
    let cases: Vec<(&str, &str, Outcome)> = vec![
        ("abc", "password", Outcome::Created),
        (&long_name, "password", Outcome::Created),
        ("a_b.c-d9", "password", Outcome::Created),
        ("ab", "password", Outcome::Refused("bad_request")),
        (&too_long_name, "password", Outcome::Refused("bad_request")),
        ("", "password", Outcome::Refused("bad_request")),
        ("Alice", "password", Outcome::Refused("bad_request")),
        ("al ice", "password", Outcome::Refused("bad_request")),
        ("al@ce", "password", Outcome::Refused("bad_request")),
        ("al:ce", "password", Outcome::Refused("bad_request")),
        ("ålice", "password", Outcome::Refused("bad_request")),
        ("pw7", "1234567", Outcome::Refused("bad_request")),
        ("pw8", "12345678", Outcome::Created),
        ("pw128", &pw128, Outcome::Created),
        ("pw129", &pw129, Outcome::Refused("bad_request")),
        ("pw0", "", Outcome::Refused("bad_request")),
    ];
    for (username, password, expected) in cases {
        let got = http.register(username, password).await;
        match (expected, got) {
            (Outcome::Created, Ok(name)) => assert_eq!(name, username),
            (Outcome::Refused(code), Err(e)) => {
                assert_eq!(e.code(), code, "register {username:?} / {} chars: {e}", password.len());
                assert_eq!(e.status(), Some(400));
            }
            (expected, got) => {
                panic!("register {username:?} / {} chars: expected {expected:?}, got {got:?}", password.len())
            }
        }
    }
    // Missing fields are malformed requests too.
    for body in [json!({"username": "nopass"}), json!({"password": "password"}), json!({})] {
        let raw = http.request(Method::POST, "/api/register", Some(&body)).await?;
        assert_eq!((raw.status, raw.code()), (400, Some("bad_request")), "{body}: {}", raw.text);
    }
    Ok(())
}

#[tokio::test]
async fn registering_never_makes_an_admin_and_the_ops_token_does() -> Result<()> {
    let node = Node::start().await?;
    let first = node.user("first").await?;
    let second = node.user("second").await?;
    for u in [&first, &second] {
        let me = u.http.me().await?;
        assert_eq!((me.username.as_str(), me.role.as_str()), (u.name.as_str(), "user"));
    }
    let boss = node.admin("boss").await?;
    assert_eq!(boss.http.me().await?.role, "admin");
    Ok(())
}

#[tokio::test]
async fn login_mismatch_is_401_with_the_same_answer_for_unknown_user_and_wrong_password() -> Result<()> {
    let node = Node::start().await?;
    let http = node.http();
    http.register("alice", "secret-pw").await?;
    let wrong =
        http.request(Method::POST, "/api/login", Some(&json!({"username": "alice", "password": "wrong-pw"}))).await?;
    let unknown =
        http.request(Method::POST, "/api/login", Some(&json!({"username": "nobody", "password": "wrong-pw"}))).await?;
    assert_eq!(wrong.status, 401, "{}", wrong.text);
    assert_eq!(wrong.code(), Some("unauthorized"));
    assert_eq!(unknown.status, wrong.status);
    assert_eq!(unknown.json, wrong.json, "unknown user and wrong password must answer alike");
    expect_code(http.login("alice", "secret-px").await, "unauthorized");
    // "in the same time": the unknown user must not be answered much faster
    // (no password hash at all would be ~50x faster). Medians of 7, interleaved.
    let mut wrong_ms = Vec::new();
    let mut unknown_ms = Vec::new();
    for i in 0..7 {
        let t = Instant::now();
        expect_code(http.login("alice", &format!("wrong-{i}-pw")).await, "unauthorized");
        wrong_ms.push(t.elapsed());
        let t = Instant::now();
        expect_code(http.login(&format!("ghost{i}"), "wrong-pw").await, "unauthorized");
        unknown_ms.push(t.elapsed());
    }
    wrong_ms.sort();
    unknown_ms.sort();
    let (wrong, unknown) = (wrong_ms[3], unknown_ms[3]);
    assert!(unknown * 4 >= wrong, "unknown user answered in {unknown:?}, wrong password in {wrong:?}");
    Ok(())
}

#[tokio::test]
async fn me_and_ticket_need_a_valid_token() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let anon = node.http();
    let e = expect_code(anon.me().await, "unauthorized");
    assert_eq!(e.status(), Some(401));
    expect_code(anon.with_token("not-a-token").me().await, "unauthorized");
    expect_code(anon.ticket().await, "unauthorized");
    expect_code(anon.logout().await, "unauthorized");
    let ticket = alice.http.ticket().await?;
    assert!(!ticket.is_empty());
    assert_ne!(ticket, alice.token, "a ticket is not the long-lived token");
    Ok(())
}

#[tokio::test]
async fn logout_stops_only_that_token() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let second = node.login("alice").await?;
    assert_ne!(alice.token, second.token);
    let raw = alice.http.request(Method::POST, "/api/logout", None).await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    expect_code(alice.http.me().await, "unauthorized");
    expect_code(alice.http.rooms().await, "unauthorized");
    // protocol is silent: assuming logout revokes only the token it was sent with.
    assert_eq!(second.http.me().await?.username, "alice");
    // A revoked token cannot open a new socket either.
    let mut ws = Ws::connect(node.addr()).await?;
    match ws.auth(&alice.token).await {
        Ok(name) => panic!("auth with a revoked token answered ok as {name}"),
        Err(e) => assert!(
            e.code() == "unauthorized" || [Some(4001), Some(4003)].contains(&e.close_code()),
            "auth with a revoked token: {e}"
        ),
    }
    Ok(())
}

#[tokio::test]
async fn logout_closes_the_tokens_live_sockets_with_4003() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let other = node.login("alice").await?;
    alice.http.create_room("lobby", "Lobby", palaver_client::Visibility::Public).await?;
    let mut by_frame = node.ws(&alice).await?;
    by_frame.subscribe("lobby", None).await?;
    let mut by_header =
        Ws::connect_with(node.addr(), WsOptions { bearer: Some(alice.token.clone()), ..Default::default() }).await?;
    by_header.subscribe("lobby", None).await?;
    let mut other_ws = node.ws(&other).await?;
    other_ws.subscribe("lobby", None).await?;

    alice.http.logout().await?;
    expect_close(&mut by_frame, 4003).await;
    expect_close(&mut by_header, 4003).await;
    expect_code(alice.http.me().await, "unauthorized");
    // The socket of the other token stays usable.
    other_ws.subscribe("lobby", Some(0)).await?;
    other_ws.typing("lobby").await?;
    Ok(())
}

#[tokio::test]
async fn a_token_past_its_absolute_lifetime_stops_working_and_its_socket_closes_4003() -> Result<()> {
    let node = Node::start_with(config(|c| c.security.token_absolute_secs = 2)).await?;
    let alice = node.user("alice").await?;
    let login = node.http().login("alice", &alice.password).await?;
    assert!(
        login.expires_at <= palaver_testkit::now_ms() + 3_000,
        "expires_at {} is beyond the 2 s lifetime",
        login.expires_at
    );
    let mut ws = node.ws(&alice).await?;
    alice.http.me().await?;
    eventually("the token expires", WAIT, async || match alice.http.me().await {
        Ok(_) => Ok(None),
        Err(e) if e.code() == "unauthorized" => Ok(Some(())),
        Err(e) => Err(e.into()),
    })
    .await?;
    // protocol: 4003 is "token revoked or expired". The socket is closed,
    // at the latest when it next asks for something.
    let r = ws.typing("nowhere").await;
    match r {
        Err(e) if e.close_code() == Some(4003) => {}
        other => {
            let closed = ws.wait_closed(WAIT).await?;
            assert_eq!(closed, Some(4003), "socket of an expired token: {other:?}");
        }
    }
    Ok(())
}

#[tokio::test]
async fn a_token_unused_past_its_idle_lifetime_stops_working() -> Result<()> {
    let node = Node::start_with(config(|c| c.security.token_idle_secs = 1)).await?;
    let alice = node.user("alice").await?;
    alice.http.me().await?;
    // Each probe uses the token (and so may renew it); the gaps between
    // probes grow until one exceeds the idle lifetime. Bounded: 8 probes.
    let mut gap = Duration::from_millis(250);
    let mut expired = false;
    for _ in 0..8 {
        tokio::time::sleep(gap).await;
        match alice.http.me().await {
            Ok(_) => gap *= 2,
            Err(e) => {
                assert_eq!(e.code(), "unauthorized", "{e}");
                expired = true;
                break;
            }
        }
    }
    assert!(expired, "a token idle for {gap:?} still works with token_idle_secs = 1");
    // A fresh login works again.
    node.login("alice").await?.http.me().await?;
    Ok(())
}

#[tokio::test]
async fn login_is_rate_limited_per_account() -> Result<()> {
    let limit = 3;
    let node = Node::start_with(config(|c| c.limits.login_per_account_per_min = limit)).await?;
    let http = node.http();
    http.register("alice", "secret-pw").await?;
    http.register("bob", "secret-pw").await?;
    for i in 0..limit {
        let e = expect_code(http.login("alice", "wrong-pw").await, "unauthorized");
        assert_eq!(e.status(), Some(401), "attempt {i}");
    }
    let mut limited = None;
    for _ in 0..3 {
        match http.login("alice", "wrong-pw").await {
            Err(e) if e.code() == "rate_limited" => {
                limited = Some(e);
                break;
            }
            Err(e) => assert_eq!(e.code(), "unauthorized", "{e}"),
            Ok(l) => panic!("wrong password logged in: {l:?}"),
        }
    }
    let e = limited.expect("login attempts beyond the per-account limit must be rate_limited");
    assert_eq!(e.status(), Some(429));
    assert!(e.retry_after_ms().is_some_and(|ms| ms > 0), "rate_limited without retry_after_ms: {e}");
    // Also the right password waits for the window.
    expect_code(http.login("alice", "secret-pw").await, "rate_limited");
    // Another account from the same address is not affected.
    http.login("bob", "secret-pw").await?;
    Ok(())
}

#[tokio::test]
async fn login_is_rate_limited_per_address() -> Result<()> {
    let limit = 5;
    let node = Node::start_with(config(|c| c.limits.login_per_address_per_min = limit)).await?;
    let http = node.http();
    for i in 0..limit {
        expect_code(http.login(&format!("user{i}"), "whatever-pw").await, "unauthorized");
    }
    let mut limited = None;
    for i in 0..3 {
        match http.login(&format!("other{i}"), "whatever-pw").await {
            Err(e) if e.code() == "rate_limited" => {
                limited = Some(e);
                break;
            }
            Err(e) => assert_eq!(e.code(), "unauthorized", "{e}"),
            Ok(l) => panic!("unknown user logged in: {l:?}"),
        }
    }
    let e = limited.expect("login attempts beyond the per-address limit must be rate_limited");
    assert_eq!(e.status(), Some(429));
    assert!(e.retry_after_ms().is_some_and(|ms| ms > 0), "rate_limited without retry_after_ms: {e}");
    Ok(())
}
