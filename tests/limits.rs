//! What one client may make the cluster do (docs/protocol.md §7.6):
//! failed logins per real client address behind the balancer, per (account,
//! address), and a slow-down (never a lockout) for an account attacked from
//! many addresses; per-user quotas on tickets, rooms and other metadata
//! writes; read markers coalesced into few Raft writes; one send rate per
//! user across all of the user's sockets and nodes.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use palaver_balancer::Strategy;
use palaver_client::Http;
use palaver_client::Visibility;
use palaver_client::Ws;
use palaver_node::config::Config;
use palaver_testkit::Balancer;
use palaver_testkit::Cluster;
use palaver_testkit::Node;
use palaver_testkit::WAIT;
use palaver_testkit::config;
use palaver_testkit::eventually;
use palaver_testkit::expect_code;
use serde_json::Value;
use serde_json::json;

/// The outcome of one login attempt: its HTTP status.
async fn login_from(from: IpAddr, addr: &str, user: &str, password: &str) -> Result<u16> {
    let client = reqwest::Client::builder()
        .no_proxy()
        .local_address(from)
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(60))
        .build()?;
    let answer = client
        .post(format!("http://{addr}/api/login"))
        .json(&json!({"username": user, "password": password}))
        .send()
        .await?;
    Ok(answer.status().as_u16())
}

fn local(last: u8) -> IpAddr {
    IpAddr::from([127, 0, 0, last])
}

/// Tallies statuses.
#[derive(Default)]
struct Statuses {
    ok: AtomicUsize,
    unauthorized: AtomicUsize,
    limited: AtomicUsize,
    other: AtomicUsize,
}

impl Statuses {
    fn add(&self, status: u16) {
        let counter = match status {
            200 => &self.ok,
            401 => &self.unauthorized,
            429 => &self.limited,
            _ => &self.other,
        };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn get(&self) -> (usize, usize, usize, usize) {
        let g = |a: &AtomicUsize| a.load(Ordering::Relaxed);
        (g(&self.ok), g(&self.unauthorized), g(&self.limited), g(&self.other))
    }
}

fn login_config() -> Config {
    config(|c| {
        c.limits.login_per_account_per_min = 10;
        c.limits.login_per_address_per_min = 60;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn failed_logins_behind_the_balancer_count_against_the_real_address_only() -> Result<()> {
    let cluster = Cluster::start_with(3, login_config()).await?;
    let balancer = Balancer::over(&cluster, Strategy::RoundRobin).await?;
    let lb = balancer.addr.to_string();
    let http = balancer.http();
    http.register("victim", "victim-password").await?;
    http.register("bystander", "bystander-password").await?;

    // 200 wrong passwords for one account from one address, 8 at a time.
    let statuses = Arc::new(Statuses::default());
    let permits = Arc::new(tokio::sync::Semaphore::new(8));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..200 {
        let permit = permits.clone().acquire_owned().await?;
        let (statuses, lb) = (statuses.clone(), lb.clone());
        tasks.spawn(async move {
            let status = login_from(local(2), &lb, "victim", "wrong-password").await;
            statuses.add(status.unwrap_or(0));
            drop(permit);
        });
    }
    tokio::time::timeout(Duration::from_secs(300), async { while tasks.join_next().await.is_some() {} })
        .await
        .context("the attack did not finish")?;
    let (ok, unauthorized, limited, other) = statuses.get();
    eprintln!("attacker at 127.0.0.2: {unauthorized} × 401, {limited} × 429, {ok} × 200, {other} other");
    assert_eq!((ok, other), (0, 0), "only 401 and 429 answers");
    // Per (account, address), 10 a minute, shared by gossip: each of the
    // three nodes may admit its burst before it hears of the others.
    assert!(unauthorized <= 30, "{unauthorized} guesses got through; at most 3 × 10");
    assert!(limited >= 170, "{limited} refusals");

    // Others behind the same balancer are untouched; so is the owner.
    assert_eq!(login_from(local(3), &lb, "bystander", "bystander-password").await?, 200);
    let started = Instant::now();
    assert_eq!(login_from(local(4), &lb, "victim", "victim-password").await?, 200, "the owner logs in");
    eprintln!("the owner's login took {:?} while the account was under attack", started.elapsed());
    // And the attacker's address is still limited on the pair.
    assert_eq!(login_from(local(2), &lb, "victim", "victim-password").await?, 429);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn unknown_names_are_limited_per_address() -> Result<()> {
    let node = Node::start_with(login_config()).await?;
    let mut limited_after = None;
    let started = Instant::now();
    for i in 0..100 {
        let status = login_from(local(5), node.addr(), &format!("nobody{i:02}"), "whatever-pw").await?;
        match status {
            401 => {}
            429 => {
                limited_after = Some(i);
                break;
            }
            other => panic!("unexpected status {other}"),
        }
    }
    // 60 a minute, all usable at once, refilling one a second meanwhile.
    let refilled = started.elapsed().as_secs() as usize + 1;
    let limited_after = limited_after.context("no 429 after 100 failures")?;
    assert!((60..=60 + refilled).contains(&limited_after), "limited after {limited_after} failures");
    assert_eq!(
        login_from(local(6), node.addr(), "nobody99", "whatever-pw").await?,
        401,
        "another address is not limited"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_account_failing_from_many_addresses_is_slowed_not_locked() -> Result<()> {
    let mut hot = login_config();
    hot.limits.login_per_account_per_min = 5;
    let node = Node::start_with(hot).await?;
    node.http().register("target", "target-password").await?;
    for last in 10..15 {
        assert_eq!(login_from(local(last), node.addr(), "target", "wrong-password").await?, 401);
    }
    // The account is now hot: attempts go one at a time, 2 s apart.
    let started = Instant::now();
    for last in 15..18 {
        assert_eq!(login_from(local(last), node.addr(), "target", "wrong-password").await?, 401);
    }
    let spaced = started.elapsed();
    assert!(spaced >= Duration::from_secs(4), "three slowed attempts took only {spaced:?}");
    let started = Instant::now();
    assert_eq!(login_from(local(30), node.addr(), "target", "target-password").await?, 200, "never locked out");
    eprintln!("three attacker attempts took {spaced:?}; the owner's login then {:?}", started.elapsed());
    let metrics = node.http().request(reqwest::Method::GET, "/metrics", None).await?.text;
    assert!(metrics.contains("palaver_logins_slowed_total"), "the slow-down is counted");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tickets_rooms_and_other_writes_are_limited_per_user() -> Result<()> {
    let node = Node::start_with(config(|c| {
        c.limits.tickets_per_user_per_min = 5;
        c.limits.rooms_per_user_per_min = 3;
        c.limits.writes_per_user_per_min = 6;
    }))
    .await?;
    let ann = node.user("ann").await?;
    let bob = node.user("bob").await?;
    for _ in 0..5 {
        ann.http.ticket().await?;
    }
    let e = expect_code(ann.http.ticket().await, "rate_limited");
    assert!(e.retry_after_ms().is_some_and(|ms| ms > 0));
    bob.http.ticket().await.context("another user's tickets are not limited")?;

    for i in 0..3 {
        ann.http.create_room(&format!("quota-{i}"), "q", Visibility::Public).await?;
    }
    expect_code(ann.http.create_room("quota-3", "q", Visibility::Public).await, "rate_limited");

    // Other writes: join, leave, invite, moderation, direct rooms.
    let mut writes = 0;
    let mut limited = false;
    for i in 0..10 {
        let r = if i % 2 == 0 { bob.http.join("quota-0").await.map(|_| ()) } else { bob.http.leave("quota-0").await };
        match r {
            Ok(()) => writes += 1,
            Err(e) if e.code() == "rate_limited" => {
                limited = true;
                break;
            }
            Err(e) => return Err(e.into()),
        }
    }
    assert!(limited && writes == 6, "{writes} writes before the limit");
    Ok(())
}

/// The metadata log's applied index, as the admin sees it.
async fn applied(admin: &Http) -> Result<u64> {
    let raw = admin.request(reqwest::Method::GET, "/api/cluster", None).await?;
    raw.json.get("last_applied").and_then(Value::as_u64).context("last_applied in /api/cluster")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_markers_are_coalesced_into_few_writes() -> Result<()> {
    let node = Node::start().await?;
    let admin = node.admin("admin").await?;
    let reader = node.user("reader").await?;
    admin.http.create_room("markers", "m", Visibility::Public).await?;
    reader.http.join("markers").await?;
    for i in 0..50 {
        admin.http.post_message("markers", "x", &format!("m{i}")).await?;
    }
    let before = applied(&admin.http).await?;
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300u64 {
        let http = reader.http.clone();
        tasks.spawn(async move { http.read("markers", 1 + i % 50).await });
    }
    while let Some(done) = tasks.join_next().await {
        done.context("a read marker task panicked")?.context("a read marker was refused")?;
    }
    reader.http.read("markers", 50).await?;
    let secs = started.elapsed().as_secs();
    let writes = applied(&admin.http).await? - before;
    eprintln!("301 read markers in {:?}: {writes} metadata log entries", started.elapsed());
    assert!(writes <= secs + 3, "{writes} log entries for 301 markers in {secs} s");
    let room = reader.http.rooms().await?.into_iter().find(|r| r.room == "markers").context("the room")?;
    assert_eq!(room.unread, Some(0), "the latest marker won");
    Ok(())
}

/// Pipelines `n` sends on `ws`; answers how many were stored.
async fn send_burst(ws: &mut Ws, room: &str, n: usize, tag: &str) -> Result<usize> {
    let mut ids = Vec::new();
    for i in 0..n {
        ids.push(ws.start_send(room, "burst", &format!("{tag}-{i}")).await?);
    }
    let mut stored = 0;
    for id in ids {
        match ws.send_ack(id).await {
            Ok(_) => stored += 1,
            Err(e) if e.code() == "rate_limited" => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(stored)
}

fn slow_sends() -> Config {
    config(|c| {
        c.limits.send_rate_per_sec = 0.5;
        c.limits.send_burst = 10.0;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_send_rate_holds_across_a_users_sockets() -> Result<()> {
    let node = Node::start_with(slow_sends()).await?;
    let ann = node.user("ann").await?;
    ann.http.create_room("rate", "r", Visibility::Public).await?;
    let started = Instant::now();
    let mut stored = 0;
    for s in 0..10 {
        let mut ws = node.ws(&ann).await?;
        stored += send_burst(&mut ws, "rate", 50, &format!("s{s}")).await?;
    }
    let allowed = 10 + (started.elapsed().as_secs_f64() * 0.5).ceil() as usize;
    eprintln!("10 sockets × 50 sends: {stored} stored in {:?}", started.elapsed());
    assert!(stored <= allowed, "{stored} sends stored; the user's quota allows {allowed}");
    assert!(stored >= 10, "the burst is allowed: {stored}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn one_send_rate_holds_across_a_users_nodes() -> Result<()> {
    let cluster = Cluster::start_with(3, slow_sends()).await?;
    let ann = cluster.user(1, "ann").await?;
    ann.http.create_room("rate", "r", Visibility::Public).await?;
    let mut on1 = cluster.ws(1, &ann).await?;
    let first = send_burst(&mut on1, "rate", 20, "n1").await?;
    assert!((10..=12).contains(&first), "node 1 stored {first} of 20");
    // Wait until node 2 has heard of what node 1 admitted.
    let node2 = cluster.http(2);
    eventually("node 2 hears of node 1's sends", WAIT, async || {
        let text = node2.request(reqwest::Method::GET, "/metrics", None).await?.text;
        Ok(text
            .lines()
            .any(|l| l.starts_with("palaver_quota_remote_charges_total{usage=\"send\"}") && !l.ends_with(" 0"))
            .then_some(()))
    })
    .await?;
    let mut on2 = cluster.ws(2, &ann).await?;
    let second = send_burst(&mut on2, "rate", 10, "n2").await?;
    eprintln!("node 1 stored {first}, then node 2 {second} of 10");
    assert!(second <= 4, "node 2 stored {second}: the burst spent on node 1 must count there");
    Ok(())
}
