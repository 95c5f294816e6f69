//! Read-your-writes through the balancer (docs/protocol.md §8 "Consistency"):
//! once a write is answered, any later request by anyone, through any node,
//! sees it. Clients open a connection per request, so round-robin sends
//! consecutive requests of one user to different nodes; no request is ever
//! retried, so any stale answer fails the test.

use std::sync::Arc;
use std::sync::Mutex;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use palaver_balancer::Strategy;
use palaver_client::Http;
use palaver_client::Visibility;
use palaver_testkit::Balancer;
use palaver_testkit::Cluster;

/// Users walking through the whole account and room life cycle.
const USERS: usize = 200;
/// Users walking at the same time.
const CONCURRENCY: usize = 16;

/// What went wrong, as `user step: answer`.
type Failures = Arc<Mutex<Vec<String>>>;

fn note(failures: &Failures, user: &str, step: &str, what: impl std::fmt::Display) {
    if let Ok(mut f) = failures.lock() {
        f.push(format!("{user} {step}: {what}"));
    }
}

/// One user's walk: register → login → me → create room → get room → send →
/// read back → logout → the token no longer works. Every step is one request
/// on a new connection.
async fn walk(lb: Http, i: usize, failures: Failures) {
    let name = format!("ryw{i:03}");
    let password = format!("password-of-{name}");
    let room = format!("ryw-room-{i:03}");
    if let Err(e) = lb.register(&name, &password).await {
        return note(&failures, &name, "register", e);
    }
    let login = match lb.login(&name, &password).await {
        Ok(l) => l,
        Err(e) => return note(&failures, &name, "login", e),
    };
    let me = lb.with_token(login.token.clone());
    match me.me().await {
        Ok(m) if m.username == name => {}
        Ok(m) => note(&failures, &name, "me", format!("answered as {}", m.username)),
        Err(e) => note(&failures, &name, "me", e),
    }
    if let Err(e) = me.create_room(&room, "read your writes", Visibility::Public).await {
        return note(&failures, &name, "create room", e);
    }
    if let Err(e) = me.room(&room).await {
        note(&failures, &name, "get room", e);
    }
    let ack = match me.post_message(&room, "hello from the balancer", &format!("{name}-1")).await {
        Ok(a) => a,
        Err(e) => return note(&failures, &name, "send", e),
    };
    match me.messages_after(&room, 0, None).await {
        Ok(list) if list.iter().any(|m| m.seq == ack.seq && m.from == name) => {}
        Ok(list) => {
            note(&failures, &name, "read back", format!("seq {} missing from {} messages", ack.seq, list.len()))
        }
        Err(e) => note(&failures, &name, "read back", e),
    }
    if let Err(e) = me.logout().await {
        return note(&failures, &name, "logout", e);
    }
    match me.me().await {
        Err(e) if e.code() == "unauthorized" => {}
        other => note(&failures, &name, "me after logout", format!("{other:?}")),
    }
}

/// Sums a counter's samples over every node's `/metrics`.
async fn metric_lines(cluster: &Cluster, prefix: &str) -> Vec<String> {
    let mut lines = Vec::new();
    for id in cluster.ids() {
        let url = format!("http://{}/metrics", cluster.addr(id));
        let Ok(resp) = reqwest::Client::new().get(url).send().await else { continue };
        let Ok(text) = resp.text().await else { continue };
        lines.extend(text.lines().filter(|l| l.starts_with(prefix)).map(|l| format!("node {id}: {l}")));
    }
    lines
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_users_see_their_own_writes_through_round_robin() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let balancer = Balancer::over(&cluster, Strategy::RoundRobin).await?;
    let lb = balancer.http();
    let failures: Failures = Arc::default();
    let started = Instant::now();
    let permits = Arc::new(tokio::sync::Semaphore::new(CONCURRENCY));
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..USERS {
        let permit = permits.clone().acquire_owned().await?;
        let (lb, failures) = (lb.clone(), failures.clone());
        tasks.spawn(async move {
            walk(lb, i, failures).await;
            drop(permit);
        });
    }
    let deadline = Duration::from_secs(600);
    tokio::time::timeout(deadline, async {
        while let Some(done) = tasks.join_next().await {
            done.context("a user's walk panicked")?;
        }
        anyhow::Ok(())
    })
    .await
    .context("the walks did not finish in time")??;
    eprintln!("{USERS} users × 9 steps in {:?}", started.elapsed());
    for line in metric_lines(&cluster, "palaver_catch_up").await {
        eprintln!("{line}");
    }
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    assert!(failures.is_empty(), "{} unexpected answers:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

/// Registers and logs in on node `id`.
async fn user_on(cluster: &Cluster, id: u64, name: &str) -> Result<Http> {
    let http = Http::unpooled(&cluster.addr(id))?;
    let password = format!("password-of-{name}");
    http.register(name, &password).await?;
    let login = http.login(name, &password).await?;
    Ok(http.with_token(login.token))
}

/// The same session, on another node.
fn on(cluster: &Cluster, id: u64, http: &Http) -> Result<Http> {
    let token = http.token().context("a logged-in client")?.to_string();
    Ok(Http::unpooled(&cluster.addr(id))?.with_token(token))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revocation_answered_on_one_node_holds_at_once_on_every_other() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let owner = user_on(&cluster, 1, "owner").await?;
    let rounds = 20;
    let mut failures = Vec::new();
    for round in 0..rounds {
        // Each round acts on node a and checks at once on the two others.
        let a = 1 + (round % 3);
        let others: Vec<u64> = (1..=3).filter(|n| *n != a).collect();
        let guest_name = format!("guest{round:02}");
        let guest = user_on(&cluster, others[0], &guest_name).await?;
        let room = format!("revoke-{round:02}");
        let owner_a = on(&cluster, a, &owner)?;
        owner_a.create_room(&room, "revocations", Visibility::Private).await?;
        owner_a.invite(&room, &guest_name).await?;
        on(&cluster, others[1], &guest)?.join(&room).await?;
        on(&cluster, others[0], &guest)?.post_message(&room, "before the mute", &format!("{room}-1")).await?;

        owner_a.mute(&room, &guest_name, 600).await?;
        for n in &others {
            match on(&cluster, *n, &guest)?.post_message(&room, "muted", &format!("{room}-m{n}")).await {
                Err(e) if e.code() == "forbidden" => {}
                other => failures.push(format!("round {round}: send on node {n} after mute on node {a}: {other:?}")),
            }
        }
        owner_a.kick(&room, &guest_name).await?;
        for n in &others {
            match on(&cluster, *n, &guest)?.messages_after(&room, 0, None).await {
                Err(e) if e.code() == "not_found" => {}
                other => failures.push(format!("round {round}: history on node {n} after kick on node {a}: {other:?}")),
            }
        }
        on(&cluster, a, &guest)?.logout().await?;
        for n in &others {
            match on(&cluster, *n, &guest)?.me().await {
                Err(e) if e.code() == "unauthorized" => {}
                other => failures.push(format!("round {round}: me on node {n} after logout on node {a}: {other:?}")),
            }
        }
    }
    for line in metric_lines(&cluster, "palaver_catch_up").await {
        eprintln!("{line}");
    }
    assert!(failures.is_empty(), "{} stale grants:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}
