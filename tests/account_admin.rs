//! Account administration (docs/protocol.md §8 "Accounts"): password change,
//! the admin's user list, disable and enable, invite codes, registration
//! modes, and `palaver admin`, against real node processes.

use std::io::Write;
use std::process::Stdio;

use anyhow::Context;
use anyhow::Result;
use palaver_client::Http;
use palaver_client::Method;
use palaver_client::Visibility;
use palaver_node::config::RegistrationMode;
use palaver_testkit::Cluster;
use palaver_testkit::Node;
use palaver_testkit::TEST_OPS_TOKEN;
use palaver_testkit::User;
use palaver_testkit::WAIT;
use palaver_testkit::config;
use palaver_testkit::eventually;
use palaver_testkit::expect_close;
use palaver_testkit::expect_code;
use serde_json::Value;
use serde_json::json;

/// One administration route: method, path, body.
struct Route {
    method: Method,
    path: &'static str,
    body: Option<Value>,
    /// The status an admin gets.
    ok: u16,
}

fn routes() -> Vec<Route> {
    vec![
        Route { method: Method::GET, path: "/api/admin/users?prefix=&limit=10", body: None, ok: 200 },
        Route {
            method: Method::POST,
            path: "/api/admin/users",
            body: Some(json!({"username": "made", "password": "made-password", "role": "user"})),
            ok: 201,
        },
        Route { method: Method::POST, path: "/api/admin/users/target/disable", body: None, ok: 204 },
        Route { method: Method::POST, path: "/api/admin/users/target/enable", body: None, ok: 204 },
        Route {
            method: Method::POST,
            path: "/api/admin/invites",
            body: Some(json!({"uses": 2, "ttl_secs": 60})),
            ok: 201,
        },
    ]
}

async fn status(http: &Http, r: &Route) -> Result<(u16, Option<String>)> {
    let raw = http.request(r.method.clone(), r.path, r.body.as_ref()).await?;
    Ok((raw.status, raw.code().map(str::to_string)))
}

#[tokio::test]
async fn every_admin_route_answers_admins_and_the_ops_token_and_refuses_everyone_else() -> Result<()> {
    let node = Node::start().await?;
    let admin = node.admin("boss").await?;
    let user = node.user("plain").await?;
    let disabled = node.user("gone").await?;
    let logged_out = node.user("left").await?;
    node.user("target").await?;
    logged_out.http.logout().await?;
    admin.http.set_disabled("gone", true).await?;
    let ops = node.http().with_token(TEST_OPS_TOKEN);
    let nobody = node.http();

    for r in routes() {
        let what = format!("{:?} {}", r.method, r.path);
        for (who, http, want) in [
            ("a user", &user.http, (403, Some("forbidden"))),
            ("a disabled user's token", &disabled.http, (401, Some("unauthorized"))),
            ("a logged-out token", &logged_out.http, (401, Some("unauthorized"))),
            ("no token", &nobody, (401, Some("unauthorized"))),
        ] {
            let got = status(http, &r).await?;
            assert_eq!((got.0, got.1.as_deref()), want, "{what} by {who}");
        }
        assert_eq!(status(&admin.http, &r).await?.0, r.ok, "{what} by the admin");
        // The ops token may do the same (the user made above exists now).
        let again = Route { body: r.body.clone().map(|mut b| rename(&mut b)), ..r };
        assert_eq!(status(&ops, &again).await?.0, again.ok, "{what} with the ops token");
    }

    // The list shows what was done, by name, with every field.
    let users = admin.http.list_users("", 100).await?;
    let names: Vec<&str> = users.iter().map(|u| u.username.as_str()).collect();
    assert_eq!(names, ["boss", "gone", "left", "made", "made2", "plain", "target"]);
    let gone = users.iter().find(|u| u.username == "gone").context("gone is listed")?;
    assert!(gone.disabled && gone.role.as_str() == "user" && gone.created_at > 0, "{gone:?}");
    let boss = users.iter().find(|u| u.username == "boss").context("boss is listed")?;
    assert!(!boss.disabled && boss.role.as_str() == "admin", "{boss:?}");
    let page = admin.http.list_users("ma", 1).await?;
    assert_eq!(page.iter().map(|u| u.username.as_str()).collect::<Vec<_>>(), ["made"]);

    // Bad input is a clear 400, never a panic.
    for (method, path, body) in [
        (Method::GET, "/api/admin/users?limit=0", None),
        (Method::GET, "/api/admin/users?limit=1001", None),
        (Method::GET, "/api/admin/users?limit=x", None),
        (Method::POST, "/api/admin/users", Some(json!({"username": "x", "password": "long-enough"}))),
        (Method::POST, "/api/admin/users", Some(json!({"username": "okname", "password": "short"}))),
        (
            Method::POST,
            "/api/admin/users",
            Some(json!({"username": "okname", "password": "long-enough", "role": "god"})),
        ),
        (Method::POST, "/api/admin/invites", Some(json!({"uses": 0}))),
        (Method::POST, "/api/admin/invites", Some(json!({"ttl_secs": 0}))),
        (Method::POST, "/api/admin/invites", Some(json!({"ttl_secs": 100_000_000u64}))),
    ] {
        let raw = admin.http.request(method.clone(), path, body.as_ref()).await?;
        assert_eq!((raw.status, raw.code()), (400, Some("bad_request")), "{method:?} {path} {body:?}: {}", raw.text);
    }
    let raw = admin.http.request(Method::POST, "/api/admin/users/nobody-here/disable", None).await?;
    assert_eq!((raw.status, raw.code()), (404, Some("not_found")), "{}", raw.text);
    let raw = admin.http.request(Method::POST, "/api/admin/users/boss/disable", None).await?;
    assert_eq!((raw.status, raw.code()), (409, Some("conflict")), "an admin disabling themselves: {}", raw.text);
    expect_code(admin.http.create_user("plain", "another-password", false).await, "conflict");
    Ok(())
}

/// The same request again with a fresh username (a second account).
fn rename(body: &mut Value) -> Value {
    if body.get("username").is_some() {
        body["username"] = json!("made2");
    }
    body.clone()
}

#[tokio::test]
async fn a_disabled_account_cannot_log_in_until_enabled_and_its_sockets_close_on_every_node() -> Result<()> {
    let c = Cluster::start(3).await?;
    let admin = c.admin(1, "boss").await?;
    let eve = c.user(2, "eve").await?;
    eve.http.create_room("hall", "Hall", Visibility::Public).await?;
    let mut sockets = Vec::new();
    for id in c.ids() {
        let session = c.login(id, "eve").await?;
        let mut ws = c.ws(id, &session).await?;
        ws.subscribe("hall", None).await?;
        sockets.push((id, ws, session));
    }

    admin.http.set_disabled("eve", true).await?;
    for (id, ws, session) in &mut sockets {
        expect_close(ws, 4003).await;
        // Answered means applied everywhere: no node still takes the token.
        expect_code(session.http.me().await, "unauthorized");
        let err = expect_code(c.http(*id).login("eve", &User::password_of("eve")).await, "forbidden");
        assert_eq!(err.status(), Some(403), "node {id}");
    }
    expect_code(c.http(3).login("eve", "wrong-password").await, "unauthorized");

    admin.http.set_disabled("eve", false).await?;
    for id in c.ids() {
        let back = c.login(id, "eve").await?;
        assert_eq!(back.http.me().await?.username, "eve", "node {id}");
    }
    Ok(())
}

#[tokio::test]
async fn a_password_change_ends_the_other_sessions_and_keeps_this_one() -> Result<()> {
    let node = Node::start().await?;
    let ann = node.user("ann").await?;
    let other = node.login("ann").await?;
    ann.http.create_room("den", "Den", Visibility::Public).await?;
    let mut other_ws = node.ws(&other).await?;
    other_ws.subscribe("den", None).await?;
    let mut own_ws = node.ws(&ann).await?;
    own_ws.subscribe("den", None).await?;
    let old = User::password_of("ann");

    expect_code(ann.http.change_password("not-my-password", "brand-new-secret").await, "forbidden");
    expect_code(ann.http.change_password(&old, "short").await, "bad_request");
    expect_code(node.http().change_password(&old, "brand-new-secret").await, "unauthorized");
    assert_eq!(other.http.me().await?.username, "ann", "a refused change ends nothing");

    let raw = ann
        .http
        .request(Method::POST, "/api/me/password", Some(&json!({"old": old, "new": "brand-new-secret"})))
        .await?;
    assert_eq!(raw.status, 204, "{}", raw.text);
    expect_close(&mut other_ws, 4003).await;
    expect_code(other.http.me().await, "unauthorized");
    // The session that changed it goes on, socket included.
    assert_eq!(ann.http.me().await?.username, "ann");
    own_ws.send("den", "still here", "c1").await?;
    expect_code(node.http().login("ann", &old).await, "unauthorized");
    node.http().login("ann", "brand-new-secret").await?;
    Ok(())
}

#[tokio::test]
async fn invite_mode_admits_only_live_codes_for_as_many_uses_as_they_have() -> Result<()> {
    let node = Node::start_with(config(|c| c.security.registration = Some(RegistrationMode::Invite))).await?;
    let anon = node.http();
    expect_code(anon.register("walkin", "walkin-password").await, "forbidden");
    expect_code(anon.register_invited("walkin", "walkin-password", "made-up-code").await, "forbidden");

    let admin = node.admin("boss").await?;
    let code = admin.http.create_invite(2, 3600).await?;
    assert!(code.len() >= 16, "an invite code is hard to guess: {code}");
    anon.register_invited("first", "first-password", &code).await?;
    // A refused sign-up (name taken) does not use the code up.
    expect_code(anon.register_invited("first", "first-password", &code).await, "conflict");
    anon.register_invited("second", "second-password", &code).await?;
    expect_code(anon.register_invited("third", "third-password", &code).await, "forbidden");
    let me = anon.with_token(anon.login("second", "second-password").await?.token).me().await?;
    assert_eq!(me.role.as_str(), "user", "an invite makes a user");

    // A code past its end admits nobody, uses left or not.
    let short = admin.http.create_invite(10_000, 1).await?;
    let mut tries = 0;
    eventually("a one-second invite to expire", WAIT, async || {
        tries += 1;
        match anon.register_invited(&format!("late{tries}"), "late-password", &short).await {
            Ok(_) => Ok(None),
            Err(e) if e.code() == "forbidden" => Ok(Some(())),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn closed_mode_refuses_every_sign_up_and_admins_still_make_accounts() -> Result<()> {
    let node = Node::start_with(config(|c| c.security.registration = Some(RegistrationMode::Closed))).await?;
    let anon = node.http();
    let err = expect_code(anon.register("walkin", "walkin-password").await, "forbidden");
    assert_eq!(err.status(), Some(403));
    let admin = node.admin("boss").await?;
    let invite = admin.http.create_invite(1, 60).await?;
    expect_code(anon.register_invited("walkin", "walkin-password", &invite).await, "forbidden");
    let made = admin.http.create_user("member", "member-password", false).await?;
    assert_eq!((made.username.as_str(), made.role.as_str()), ("member", "user"));
    anon.login("member", "member-password").await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn palaver_admin_makes_the_first_admin_and_invite_codes() -> Result<()> {
    let node = Node::start_with(config(|c| c.security.registration = Some(RegistrationMode::Invite))).await?;
    let url = format!("http://{}", node.addr());
    let run = |args: &[&str], stdin: &str| -> Result<(bool, String, String)> {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_palaver"))
            .arg("admin")
            .args(args)
            .args(["--url", &url, "--token", TEST_OPS_TOKEN, "--config", "no-such-file.toml", "--timeout", "60"])
            .env_remove("PALAVER_TOKEN")
            .env_remove("PALAVER_OPS_TOKEN")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running palaver admin")?;
        child.stdin.take().context("stdin")?.write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        Ok((
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        ))
    };
    let (ok, out, err) = tokio::task::block_in_place(|| {
        run(&["create-user", "root", "--admin", "--password-stdin"], "root-password-1\n")
    })?;
    assert!(ok, "create-user failed: {out} {err}");
    assert!(out.contains("root"), "{out}");
    let root = node.http().with_token(node.http().login("root", "root-password-1").await?.token);
    assert_eq!(root.me().await?.role.as_str(), "admin");

    let (ok, out, err) = tokio::task::block_in_place(|| run(&["invite", "--uses", "1"], ""))?;
    assert!(ok, "invite failed: {out} {err}");
    node.http().register_invited("joiner", "joiner-password", out.trim()).await?;

    let (ok, out, err) = tokio::task::block_in_place(|| run(&["disable", "joiner"], ""))?;
    assert!(ok, "disable failed: {out} {err}");
    expect_code(node.http().login("joiner", "joiner-password").await, "forbidden");
    let (ok, out, err) = tokio::task::block_in_place(|| run(&["users", "--json"], ""))?;
    assert!(ok, "users failed: {out} {err}");
    let listed: Vec<Value> = serde_json::from_str(&out).with_context(|| format!("users --json: {out}"))?;
    assert!(listed.iter().any(|u| u["username"] == "joiner" && u["disabled"] == true), "{out}");

    // Taken, and a token that is not the ops token: clear errors, exit 1.
    let (ok, _, err) =
        tokio::task::block_in_place(|| run(&["create-user", "root", "--password-stdin"], "another-password\n"))?;
    assert!(!ok && err.contains("409"), "{err}");
    Ok(())
}

#[tokio::test]
async fn open_mode_is_the_default_on_loopback_and_makes_users_only() -> Result<()> {
    let node = Node::start().await?;
    let anon = node.http();
    anon.register("walkin", "walkin-password").await?;
    let me = anon.with_token(anon.login("walkin", "walkin-password").await?.token).me().await?;
    assert_eq!(me.role.as_str(), "user");
    // An invite given in open mode is ignored, not an error.
    anon.register_invited("walkin2", "walkin-password", "anything").await?;
    Ok(())
}
