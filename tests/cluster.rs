//! The three-node cluster (docs/protocol.md §2–§5 across nodes): delivery and
//! one seq order for clients on different nodes, identical history from
//! every node, accounts and logout across nodes, private-room rules on every
//! node, presence gossip, concurrent sends from every node, idempotent
//! retries landing on another node, a room usable through the node that made
//! it at once, a SIGKILLed node catching up, and a node with a certificate
//! from another CA kept out.
//!
//! Most tests share one cluster ([`SharedCluster`]), each with its own rooms
//! and users; the kill/restart test runs its own.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::collections::VecDeque;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use palaver_client::Event;
use palaver_client::History;
use palaver_client::Http;
use palaver_client::Message;
use palaver_client::Method;
use palaver_client::Visibility;
use palaver_client::Ws;
use palaver_testkit::Cluster;
use palaver_testkit::ClusterFile;
use palaver_testkit::Launch;
use palaver_testkit::NodeProcess;
use palaver_testkit::Readiness;
use palaver_testkit::Role;
use palaver_testkit::SharedCluster;
use palaver_testkit::User;
use palaver_testkit::WAIT;
use palaver_testkit::eventually;
use palaver_testkit::expect_close;
use palaver_testkit::expect_code;
use palaver_testkit::test_config;
use serde_json::Value;

/// Node ids of the three-node cluster.
const NODES: [u64; 3] = [1, 2, 3];
/// How long a write made on one node may take to show on another.
const SPREAD: Duration = Duration::from_secs(10);
/// Sends a pipelined sender keeps in flight.
const WINDOW: usize = 32;

/// Every message of `room` as `http` reads it, oldest first.
async fn history(http: &Http, room: &str) -> Result<Vec<Message>> {
    let mut all: Vec<Message> = Vec::new();
    // Bounded: no test room holds 50,000 messages.
    for _ in 0..100 {
        let after = all.last().map_or(0, |m| m.seq);
        let page = http.messages_after(room, after, Some(500)).await.with_context(|| format!("history of {room}"))?;
        let done = page.len() < 500;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
    anyhow::bail!("{room}: more than 100 pages of history from {}", http.addr())
}

/// Waits until node `id` serves `want` messages of `room` and answers what
/// it serves then (which may differ from the expectation in content).
async fn history_of_len(cluster: &Cluster, id: u64, user: &User, room: &str, want: usize) -> Result<Vec<Message>> {
    let http = cluster.http_as(id, user);
    let mut served = None;
    eventually(&format!("node {id} to serve {want} messages of {room}"), SPREAD, async || {
        let h = history(&http, room).await?;
        served = Some((h.len(), h.last().map(|m| m.seq)));
        Ok((h.len() >= want).then_some(h))
    })
    .await
    .with_context(|| format!("(count, last seq) it served last: {served:?}"))
}

/// Waits until `user`'s token works on every node (a login is a metadata
/// write: visible on its own node when answered, elsewhere soon after).
async fn token_works_everywhere(cluster: &Cluster, user: &User) -> Result<()> {
    for id in NODES {
        let http = cluster.http_as(id, user);
        eventually(&format!("{}'s token to work on node {id}", user.name), SPREAD, async || {
            Ok(http.me().await.ok().map(drop))
        })
        .await?;
    }
    Ok(())
}

/// Waits until `user` may read `room` on every node.
async fn room_visible_everywhere(cluster: &Cluster, user: &User, room: &str) -> Result<()> {
    for id in NODES {
        let http = cluster.http_as(id, user);
        eventually(&format!("{room} to be readable by {} on node {id}", user.name), SPREAD, async || {
            Ok(http.messages_after(room, 0, Some(1)).await.ok().map(drop))
        })
        .await?;
    }
    Ok(())
}

/// (seq, body, client_id) of answered sends.
type Acks = Vec<(u64, String, String)>;

/// Sends `n` messages on `ws`, `WINDOW` in flight; answers every ack and the socket.
async fn pipelined(mut ws: Ws, room: String, tag: String, n: usize) -> Result<(Ws, Acks)> {
    let mut acks = Acks::new();
    let mut in_flight = VecDeque::new();
    for i in 0..n {
        let body = format!("{tag} message {i}");
        let client_id = format!("{tag}-{i}");
        in_flight.push_back((ws.start_send(&room, &body, &client_id).await?, body, client_id));
        if in_flight.len() >= WINDOW
            && let Some((id, body, client_id)) = in_flight.pop_front()
        {
            let seq = ws.send_ack(id).await.with_context(|| format!("{tag}: ack of {client_id}"))?.seq;
            acks.push((seq, body, client_id));
        }
    }
    while let Some((id, body, client_id)) = in_flight.pop_front() {
        let seq = ws.send_ack(id).await.with_context(|| format!("{tag}: ack of {client_id}"))?.seq;
        acks.push((seq, body, client_id));
    }
    Ok((ws, acks))
}

fn seqs(messages: &[Message]) -> Vec<u64> {
    messages.iter().map(|m| m.seq).collect()
}

/// The admin's view of the cluster from node `id`.
async fn cluster_view(cluster: &Cluster, id: u64, admin_token: &str) -> Result<Value> {
    let raw = cluster.http(id).with_token(admin_token).request(Method::GET, "/api/cluster", None).await?;
    anyhow::ensure!(raw.status == 200, "GET /api/cluster on node {id}: {} {}", raw.status, raw.text);
    Ok(raw.json)
}

fn member_ids(view: &Value) -> Vec<u64> {
    view.get("nodes")
        .and_then(Value::as_array)
        .map(|nodes| nodes.iter().filter_map(|n| n.get("id").and_then(Value::as_u64)).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_on_three_nodes_receive_every_message_in_one_order() -> Result<()> {
    let shared = SharedCluster::get("clients_on_three_nodes_receive_every_message_in_one_order").await?;
    let c = &shared.cluster;
    let room = "order";
    let mut users = Vec::new();
    for id in NODES {
        users.push(c.user(id, &format!("order{id}")).await?);
    }
    users[0].http.create_room(room, "One order", Visibility::Public).await?;
    for u in &users[1..] {
        // The join goes through the user's own node, which then knows it.
        u.http.join(room).await?;
    }
    let mut sockets = Vec::new();
    for (u, id) in users.iter().zip(NODES) {
        let mut ws = c.ws(id, u).await?;
        assert_eq!(ws.subscribe(room, Some(0)).await?, 0, "node {id}: the room starts empty");
        sockets.push(ws);
    }
    // Every client sends 10 from its own node, all at once.
    let mut tasks = Vec::new();
    for (u, ws) in users.iter().zip(sockets) {
        tasks.push(tokio::spawn(pipelined(ws, room.to_string(), u.name.clone(), 10)));
    }
    let mut acks = BTreeMap::new();
    let mut sockets = Vec::new();
    for (t, u) in tasks.into_iter().zip(&users) {
        let (ws, mine) = t.await??;
        for (seq, body, client_id) in mine {
            assert!(acks.insert(seq, (u.name.clone(), body, client_id)).is_none(), "seq {seq} answered twice");
        }
        sockets.push(ws);
    }
    assert_eq!(acks.keys().copied().collect::<Vec<_>>(), (1..=30).collect::<Vec<u64>>());

    let mut seen = Vec::new();
    for (ws, id) in sockets.iter_mut().zip(NODES) {
        let got = ws.messages_through(room, 30, WAIT).await.with_context(|| format!("the client on node {id}"))?;
        assert_eq!(seqs(&got), (1..=30).collect::<Vec<u64>>(), "node {id}: every message once, in seq order");
        for m in &got {
            let (from, body, client_id) = &acks[&m.seq];
            assert_eq!((&m.from, m.body.as_ref(), m.client_id.as_ref()), (from, Some(body), Some(client_id)));
        }
        seen.push(got);
    }
    assert_eq!(seen[0], seen[1], "nodes 1 and 2 delivered different messages");
    assert_eq!(seen[0], seen[2], "nodes 1 and 3 delivered different messages");
    // A node that delivered seq 30 has committed 1..=30: its history has them.
    for (u, id) in users.iter().zip(NODES) {
        assert_eq!(history(&c.http_as(id, u), room).await?, seen[0], "node {id}: history differs from delivery");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_is_identical_from_every_node() -> Result<()> {
    let shared = SharedCluster::get("history_is_identical_from_every_node").await?;
    let c = &shared.cluster;
    let room = "annals";
    let mut users = Vec::new();
    for id in NODES {
        users.push(c.user(id, &format!("annals{id}")).await?);
    }
    users[1].http.create_room(room, "Annals", Visibility::Public).await?;
    users[0].http.join(room).await?;
    users[2].http.join(room).await?;
    // Round robin over the nodes, each user through its own: a known order.
    let mut expected = Vec::new();
    for i in 0..20 {
        for u in &users {
            let body = format!("{} line {i}", u.name);
            let ack = u.http.post_message(room, &body, &format!("l{i}")).await?;
            expected.push((ack.seq, u.name.clone(), body));
        }
    }
    assert_eq!(expected.iter().map(|e| e.0).collect::<Vec<_>>(), (1..=60).collect::<Vec<u64>>());
    // The sender deletes one (through node 3); the deletion must read the same everywhere.
    users[2].http.delete_message(room, 12).await?;
    assert_eq!(expected[11].1, users[2].name, "seq 12 is node 3's user's");

    let mut reads = Vec::new();
    for (u, id) in users.iter().zip(NODES) {
        let http = c.http_as(id, u);
        let h = eventually(&format!("node {id} to serve 60 messages with seq 12 deleted"), SPREAD, async || {
            let h = history(&http, room).await?;
            Ok((h.len() >= 60 && h.get(11).is_some_and(|m| m.deleted)).then_some(h))
        })
        .await?;
        assert_eq!(seqs(&h), (1..=60).collect::<Vec<u64>>(), "node {id}");
        for (m, (seq, from, body)) in h.iter().zip(&expected) {
            assert_eq!((m.seq, &m.from), (*seq, from), "node {id}");
            if m.seq == 12 {
                assert!(
                    m.deleted && m.body.as_deref().is_none_or(str::is_empty),
                    "node {id}: seq 12 kept its body: {m:?}"
                );
            } else {
                assert_eq!(m.body.as_ref(), Some(body), "node {id}");
                assert!(!m.deleted, "node {id}: {m:?}");
            }
        }
        reads.push(h);
    }
    assert_eq!(reads[0], reads[1], "nodes 1 and 2 read different histories");
    assert_eq!(reads[0], reads[2], "nodes 1 and 3 read different histories");
    // Paging and the WebSocket history read the same everywhere too.
    for (u, id) in users.iter().zip(NODES) {
        let http = c.http_as(id, u);
        assert_eq!(http.messages_before(room, 61, Some(25)).await?, reads[0][35..], "node {id}: before=61");
        assert_eq!(http.messages_after(room, 10, Some(5)).await?, reads[0][10..15], "node {id}: after=10");
        let mut ws = c.ws(id, u).await?;
        assert_eq!(ws.history(room, History::Before(31), Some(10)).await?, reads[0][20..30], "node {id}: ws before");
        assert_eq!(ws.history(room, History::After(55), None).await?, reads[0][55..], "node {id}: ws after");
        assert_eq!(http.room(room).await?.last_seq, 60, "node {id}: last_seq");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_account_made_on_node_1_logs_in_on_node_3() -> Result<()> {
    let shared = SharedCluster::get("an_account_made_on_node_1_logs_in_on_node_3").await?;
    let c = &shared.cluster;
    let name = "traveller";
    let password = "a long and winding road";
    assert_eq!(c.http(1).register(name, password).await?, name);
    let node3 = c.http(3);
    let login =
        eventually("the account to log in on node 3", SPREAD, async || match node3.login(name, password).await {
            Ok(l) => Ok(Some(l)),
            Err(e) if e.code() == "unauthorized" => Ok(None),
            Err(e) => Err(e.into()),
        })
        .await?;
    assert_eq!(login.username, name);
    let me = node3.with_token(&login.token).me().await?;
    assert_eq!((me.username.as_str(), me.role.as_str()), (name, "user"), "registering makes a user, never an admin");
    // The token from node 3 works on the other nodes too.
    for id in [1, 2] {
        let http = c.http(id).with_token(&login.token);
        let me =
            eventually(&format!("the node-3 token to work on node {id}"), SPREAD, async || Ok(http.me().await.ok()))
                .await?;
        assert_eq!(me.username, name, "node {id}");
    }
    // The account is one account: taken everywhere, same password everywhere.
    for id in NODES {
        expect_code(c.http(id).register(name, "another password").await, "conflict");
        expect_code(c.http(id).login(name, "not the password").await, "unauthorized");
        assert_eq!(c.http(id).login(name, password).await?.username, name, "node {id}");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_logged_out_on_node_2_fails_on_node_1_within_a_second() -> Result<()> {
    let shared = SharedCluster::get("a_token_logged_out_on_node_2_fails_on_node_1_within_a_second").await?;
    let c = &shared.cluster;
    let user = c.user(2, "leaver").await?;
    token_works_everywhere(c, &user).await?;
    let mut ws3 = c.ws(3, &user).await?;
    let on_node1 = c.http_as(1, &user);
    assert_eq!(on_node1.me().await?.username, "leaver");

    user.http.logout().await?;
    let logged_out = Instant::now();
    // On the node that made it, at once.
    expect_code(user.http.me().await, "unauthorized");
    // On node 1: poll every 10 ms, for at most 5 s; the budget is 1 s.
    let took = loop {
        let last = match on_node1.me().await {
            Err(e) if e.code() == "unauthorized" => break logged_out.elapsed(),
            other => format!("{other:?}"),
        };
        assert!(
            logged_out.elapsed() < Duration::from_secs(5),
            "the token still works on node 1 5 s after logout; last answer: {last}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    assert!(took <= Duration::from_secs(1), "node 1 refused the token only {took:?} after the logout on node 2");
    eprintln!("node 1 refused the token {took:?} after the logout on node 2 was answered");
    // Node 3 too, and its live socket opened with the token is closed 4003.
    expect_code(c.http_as(3, &user).me().await, "unauthorized");
    expect_close(&mut ws3, 4003).await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_room_rules_hold_on_every_node() -> Result<()> {
    let shared = SharedCluster::get("private_room_rules_hold_on_every_node").await?;
    let c = &shared.cluster;
    let room = "vault";
    let owner = c.user(1, "vault_owner").await?;
    let guest = c.user(2, "vault_guest").await?;
    let outsider = c.user(3, "vault_outsider").await?;
    owner.http.create_room(room, "Vault", Visibility::Private).await?;
    // Wait until every node knows the room and the users: a not_found must
    // come from the rules, not from a node that has not heard of them yet.
    room_visible_everywhere(c, &owner, room).await?;
    owner.http.post_message(room, "the combination is 1234", "c1").await?;
    token_works_everywhere(c, &guest).await?;
    token_works_everywhere(c, &outsider).await?;

    for id in NODES {
        let http = c.http_as(id, &outsider);
        expect_code(http.room(room).await, "not_found");
        expect_code(http.messages_after(room, 0, None).await, "not_found");
        expect_code(http.members(room).await, "not_found");
        expect_code(http.post_message(room, "let me in", "x1").await, "not_found");
        expect_code(http.join(room).await, "not_found");
        assert!(!http.rooms().await?.iter().any(|r| r.room == room), "node {id} lists the vault to an outsider");
        let mut ws = c.ws(id, &outsider).await?;
        expect_code(ws.subscribe(room, Some(0)).await, "not_found");
        expect_code(ws.history(room, History::After(0), None).await, "not_found");
        expect_code(ws.send(room, "let me in", "x2").await, "not_found");
    }

    // Invited on node 1, joins through node 3.
    owner.http.invite(room, &guest.name).await?;
    let member = c.http_as(3, &guest).join(room).await?;
    assert_eq!((member.username.as_str(), member.role.as_str()), ("vault_guest", "member"));
    let read = history(&c.http_as(3, &guest), room).await?;
    assert_eq!(read.first().and_then(|m| m.body.as_deref()), Some("the combination is 1234"));

    // The guest listens on node 2 (which learns of the join soon).
    let mut ws = c.ws(2, &guest).await?;
    let last = eventually("the guest to subscribe on node 2", SPREAD, async || match ws.subscribe(room, None).await {
        Ok(last) => Ok(Some(last)),
        Err(e) if e.code() == "not_found" => Ok(None),
        Err(e) => Err(e.into()),
    })
    .await?;
    let seq = owner.http.post_message(room, "welcome", "c2").await?.seq;
    assert!(seq > last);
    let got = ws.messages_through(room, seq, WAIT).await?;
    assert_eq!(got.last().and_then(|m| m.body.as_deref()), Some("welcome"));

    // Kicked on node 1: the subscription on node 2 ends with `removed`.
    owner.http.kick(room, &guest.name).await?;
    let removed = ws
        .wait_for(|e| matches!(e, Event::Removed { room: r, .. } if r == room), WAIT)
        .await
        .context("a `removed` event on node 2 after the kick on node 1")?;
    assert_eq!(removed.room(), Some(room));
    // Node 2 has applied the kick: the guest is an outsider there now.
    expect_code(ws.subscribe(room, Some(0)).await, "not_found");
    expect_code(c.http_as(2, &guest).messages_after(room, 0, None).await, "not_found");
    for id in NODES {
        let http = c.http_as(id, &guest);
        eventually(&format!("the kicked guest to be an outsider on node {id}"), SPREAD, async || {
            Ok((http.room(room).await.err().map(|e| e.code().to_string()).as_deref() == Some("not_found"))
                .then_some(()))
        })
        .await?;
        expect_code(http.post_message(room, "still here?", "g1").await, "not_found");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes() -> Result<()> {
    let shared = SharedCluster::get("presence_crosses_nodes").await?;
    let c = &shared.cluster;
    let room = "porch";
    let a = c.user(1, "porch_a").await?;
    let b = c.user(3, "porch_b").await?;
    a.http.create_room(room, "Porch", Visibility::Public).await?;
    b.http.join(room).await?;
    // Node 1 must know B is a member before B's presence can concern the room.
    eventually("node 1 to list B as a member", SPREAD, async || {
        Ok(a.http.members(room).await?.iter().any(|m| m.username == b.name).then_some(()))
    })
    .await?;
    let mut a_ws = c.ws(1, &a).await?;
    a_ws.subscribe(room, None).await?;

    let is_b = |online: bool| move |e: &Event| matches!(e, Event::Presence { room: r, username, online: o } if r == room && username == "porch_b" && *o == online);
    let opened = Instant::now();
    let b_ws = c.ws(3, &b).await?;
    a_ws.wait_for(is_b(true), SPREAD).await.context("B online, seen from node 1")?;
    let online_after = opened.elapsed();
    let member_online = |online: bool| {
        let http = a.http.clone();
        async move {
            eventually(&format!("node 1 to show B online={online} in members"), SPREAD, async || {
                let members = http.members(room).await?;
                Ok(members.iter().any(|m| m.username == "porch_b" && m.online == Some(online)).then_some(()))
            })
            .await
        }
    };
    member_online(true).await?;

    let closed = Instant::now();
    b_ws.close().await?;
    a_ws.wait_for(is_b(false), SPREAD).await.context("B offline, seen from node 1")?;
    let offline_after = closed.elapsed();
    member_online(false).await?;
    eprintln!("presence across nodes: online after {online_after:?}, offline after {offline_after:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_sends_from_every_node_make_one_gapless_sequence() -> Result<()> {
    let shared = SharedCluster::get("concurrent_sends_from_every_node_make_one_gapless_sequence").await?;
    let c = &shared.cluster;
    let room = "storm";
    let mut users = Vec::new();
    for id in NODES {
        users.push(c.user(id, &format!("storm{id}")).await?);
    }
    users[2].http.create_room(room, "Storm", Visibility::Public).await?;
    users[0].http.join(room).await?;
    users[1].http.join(room).await?;
    let mut tasks = Vec::new();
    for (u, id) in users.iter().zip(NODES) {
        let mut ws = c.ws(id, u).await?;
        ws.subscribe(room, Some(0)).await?;
        tasks.push(tokio::spawn(pipelined(ws, room.to_string(), u.name.clone(), 100)));
    }
    let mut answered: BTreeMap<u64, (String, String, String)> = BTreeMap::new();
    let mut sockets = Vec::new();
    for (t, u) in tasks.into_iter().zip(&users) {
        let (ws, acks) = t.await??;
        assert_eq!(acks.len(), 100, "{}: every send answered", u.name);
        for (seq, body, client_id) in acks {
            if let Some(prev) = answered.insert(seq, (u.name.clone(), body.clone(), client_id)) {
                panic!("seq {seq} answered twice: {prev:?} and {}'s {body:?}", u.name);
            }
        }
        sockets.push(ws);
    }
    assert_eq!(answered.keys().copied().collect::<Vec<_>>(), (1..=300).collect::<Vec<u64>>(), "gapless 1..=300");

    let mut reads = Vec::new();
    for (u, id) in users.iter().zip(NODES) {
        let h = history_of_len(c, id, u, room, 300).await?;
        assert_eq!(seqs(&h), (1..=300).collect::<Vec<u64>>(), "node {id}: seqs");
        let client_ids: BTreeSet<(&str, Option<&str>)> =
            h.iter().map(|m| (m.from.as_str(), m.client_id.as_deref())).collect();
        assert_eq!(client_ids.len(), 300, "node {id}: a (sender, client_id) stored twice");
        for m in &h {
            let (from, body, client_id) = &answered[&m.seq];
            assert_eq!(
                (&m.from, m.body.as_ref(), m.client_id.as_ref()),
                (from, Some(body), Some(client_id)),
                "node {id}: seq {} is not what its sender was told",
                m.seq
            );
        }
        reads.push(h);
    }
    assert_eq!(reads[0], reads[1], "nodes 1 and 2 read different histories");
    assert_eq!(reads[0], reads[2], "nodes 1 and 3 read different histories");
    // Every subscriber (one per node) got the same 300, in order.
    for (ws, id) in sockets.iter_mut().zip(NODES) {
        let got = ws.messages_through(room, 300, WAIT).await.with_context(|| format!("subscriber on node {id}"))?;
        assert_eq!(got, reads[0], "node {id}: live delivery differs from history");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_id_retried_on_another_node_answers_the_same_seq() -> Result<()> {
    let shared = SharedCluster::get("a_client_id_retried_on_another_node_answers_the_same_seq").await?;
    let c = &shared.cluster;
    let room = "echo";
    let user = c.user(1, "echoer").await?;
    user.http.create_room(room, "Echo", Visibility::Public).await?;
    room_visible_everywhere(c, &user, room).await?;
    user.http.post_message(room, "first", "warmup").await?;

    let original = user.http.post_message(room, "once only", "retry-x").await?;
    assert_eq!(original.seq, 2);
    let again = c.http_as(3, &user).post_message(room, "once only", "retry-x").await?;
    assert_eq!(again, original, "the retry via node 3 answered another seq/ts");
    let mut ws = c.ws(2, &user).await?;
    assert_eq!(ws.send(room, "once only, changed", "retry-x").await?.seq, original.seq, "retry via node 2's socket");
    let next = c.http_as(3, &user).post_message(room, "after", "after-x").await?;
    assert_eq!(next.seq, original.seq + 1, "the retries stored something");

    // The same client_id sent through all three nodes at once, ten times over.
    let nodes: Vec<Http> = NODES.iter().map(|&id| c.http_as(id, &user)).collect();
    let mut tasks = Vec::new();
    for k in 0..10 {
        for http in &nodes {
            let http = http.clone();
            tasks.push(tokio::spawn(async move {
                let ack = http.post_message("echo", &format!("burst {k}"), &format!("burst-{k}")).await;
                (k, ack)
            }));
        }
    }
    let mut by_id: BTreeMap<u32, BTreeSet<u64>> = BTreeMap::new();
    for t in tasks {
        let (k, ack) = t.await?;
        by_id.entry(k).or_default().insert(ack.with_context(|| format!("burst-{k}"))?.seq);
    }
    for (k, seqs) in &by_id {
        assert_eq!(seqs.len(), 1, "burst-{k} sent through three nodes at once got seqs {seqs:?}");
    }
    let burst_seqs: BTreeSet<u64> = by_id.values().flatten().copied().collect();
    let total = next.seq + 10;
    assert_eq!(burst_seqs, (next.seq + 1..=total).collect(), "ten client_ids, ten seqs, no gap");

    let mut reads = Vec::new();
    for id in NODES {
        let h = history_of_len(c, id, &user, room, total as usize).await?;
        assert_eq!(seqs(&h), (1..=total).collect::<Vec<u64>>(), "node {id}: nothing stored twice");
        let retried: Vec<&Message> = h.iter().filter(|m| m.client_id.as_deref() == Some("retry-x")).collect();
        assert_eq!(retried.len(), 1, "node {id}");
        assert_eq!(retried[0].body.as_deref(), Some("once only"), "node {id}: the original body stays");
        reads.push(h);
    }
    assert_eq!(reads[0], reads[1]);
    assert_eq!(reads[0], reads[2]);
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_takes_sends_through_the_node_that_made_it_at_once() -> Result<()> {
    let shared = SharedCluster::get("a_room_takes_sends_through_the_node_that_made_it_at_once").await?;
    let c = &shared.cluster;
    // The metadata leader applies a new room first; the room's owner node
    // (any node) may apply it a little later. A client that made the room
    // through a node must be able to send through that node at once.
    let leader = cluster_view(c, 1, &shared.admin_token).await?["leader"].as_u64().context("a metadata leader")?;
    let user = c.user(leader, "founder").await?;
    let mut tasks = Vec::new();
    for k in 0..6 {
        let http = user.http.clone();
        tasks.push(tokio::spawn(async move {
            let mut refused = Vec::new();
            for i in 0..10 {
                let room = format!("founded-{k}-{i}");
                http.create_room(&room, "Founded", Visibility::Public).await?;
                if let Err(e) = http.post_message(&room, "first words", "first").await {
                    refused.push((room, e.to_string()));
                }
            }
            anyhow::Ok(refused)
        }));
    }
    let mut refused = Vec::new();
    for t in tasks {
        refused.extend(t.await??);
    }
    let view = cluster_view(c, leader, &shared.admin_token).await?;
    let owner_of = |room: &str| {
        view["rooms"]
            .as_array()
            .and_then(|rs| rs.iter().find(|r| r["room"] == room))
            .and_then(|r| r["owner_node"].as_u64())
    };
    let refused: Vec<String> =
        refused.iter().map(|(room, e)| format!("{room} (owner node {:?}): {e}", owner_of(room))).collect();
    assert!(
        refused.is_empty(),
        "{} of 60 sends right after creating the room through node {leader} (the leader) were refused: {refused:#?}",
        refused.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_rejoins_with_its_data_and_catches_up() -> Result<()> {
    let mut c = Cluster::start(3).await?;
    let admin = c.admin(1, "admin").await?;
    let room = "ledger";
    let mut users = Vec::new();
    for id in NODES {
        users.push(c.user(id, &format!("ledger{id}")).await?);
    }
    users[0].http.create_room(room, "Ledger", Visibility::Public).await?;
    users[1].http.join(room).await?;
    users[2].http.join(room).await?;
    for i in 0..10 {
        for u in &users {
            u.http.post_message(room, &format!("{} before {i}", u.name), &format!("b{i}")).await?;
        }
    }
    // Kill a node that does not own the room (so sends go on), and not the
    // metadata leader when there is a choice.
    let view = cluster_view(&c, 1, &admin.token).await?;
    let owner = view["rooms"]
        .as_array()
        .and_then(|rooms| rooms.iter().find(|r| r["room"] == room))
        .and_then(|r| r["owner_node"].as_u64())
        .context("the room's owner node in /api/cluster")?;
    let leader = view["leader"].as_u64();
    let victim = NODES
        .into_iter()
        .filter(|&id| id != owner)
        .min_by_key(|&id| Some(id) == leader)
        .context("a node other than the owner")?;
    let survivors: Vec<u64> = NODES.into_iter().filter(|&id| id != victim).collect();
    let watcher = users[survivors[0] as usize - 1].clone();
    let home = |id: u64| users[id as usize - 1].clone();

    // Someone on the victim is online, seen from a survivor.
    let mut watch = c.ws(survivors[0], &watcher).await?;
    watch.subscribe(room, None).await?;
    let resident = home(victim);
    let _resident_ws = c.ws(victim, &resident).await?;
    let online = |on: bool| {
        let name = resident.name.clone();
        move |e: &Event| matches!(e, Event::Presence { room: r, username, online } if r == room && *username == name && *online == on)
    };
    watch.wait_for(online(true), SPREAD).await.context("the victim's user online")?;

    c.kill(victim);
    let killed = Instant::now();
    // Its user goes offline once the node is silent (3.5 s), for the others.
    watch.wait_for(online(false), SPREAD).await.context("the killed node's user offline")?;
    eprintln!("node {victim} (owner {owner}, leader {leader:?}) killed; its user offline after {:?}", killed.elapsed());

    // Life goes on without it: sends through both survivors, and a new account.
    for i in 0..15 {
        for &id in &survivors {
            let u = home(id);
            u.http.post_message(room, &format!("{} during {i}", u.name), &format!("d{i}")).await?;
        }
    }
    c.user(survivors[1], "latecomer").await?;

    c.restart(victim).await?;
    // The restarted node knows what happened while it was down, old and new.
    let late = eventually("the latecomer to log in on the restarted node", SPREAD, async || {
        Ok(Some(c.login(victim, "latecomer").await?))
    })
    .await?;
    assert_eq!(late.http.me().await?.username, "latecomer");
    let on_victim = c.http_as(victim, &resident);
    assert_eq!(on_victim.me().await?.username, resident.name, "a token from before the kill");

    // It catches up on the room without anything new being sent to it.
    let total = 30 + 30;
    let mut reads = Vec::new();
    for id in NODES {
        let h = history_of_len(&c, id, &home(id), room, total).await?;
        assert_eq!(seqs(&h), (1..=total as u64).collect::<Vec<u64>>(), "node {id}");
        reads.push(h);
    }
    assert_eq!(reads[0], reads[1], "nodes 1 and 2 read different histories");
    assert_eq!(reads[0], reads[2], "nodes 1 and 3 read different histories");
    assert_eq!(on_victim.room(room).await?.last_seq, total as u64, "last_seq on the restarted node");

    // And it serves as before: a send through it, a replay from it.
    let ack = on_victim.post_message(room, "back again", "back").await?;
    assert_eq!(ack.seq, total as u64 + 1);
    let mut replay = c.ws(victim, &resident).await?;
    replay.subscribe(room, Some(0)).await?;
    let got = replay.messages_through(room, ack.seq, WAIT).await?;
    assert_eq!(got[..total], reads[0][..], "replay on the restarted node");
    for &id in &survivors {
        let h = history_of_len(&c, id, &home(id), room, total + 1).await?;
        assert_eq!(h, got, "node {id} after the restarted node's send");
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_with_a_certificate_from_another_ca_stays_out() -> Result<()> {
    let shared = SharedCluster::get("a_node_with_a_certificate_from_another_ca_stays_out").await?;
    let c = &shared.cluster;
    let room = "moat";
    let keeper = c.user(1, "moat_keeper").await?;
    keeper.http.create_room(room, "Moat", Visibility::Public).await?;
    room_visible_everywhere(c, &keeper, room).await?;
    keeper.http.post_message(room, "before the stranger", "k0").await?;
    let handshake_failures_before: Vec<bool> =
        NODES.iter().map(|&id| c.process(id).logged("peer handshake failed")).collect();

    // Node 4: the real cluster's nodes plus itself, certificates from its own CA.
    let dir = c.scratch_dir("foreign")?;
    let mut file = ClusterFile::new(&dir, &[4], test_config())?;
    file.config.nodes.splice(0..0, c.nodes().iter().cloned());
    file.write()?;
    let their_ca = std::fs::read(file.tls_dir().join("ca.pem"))?;
    let our_ca = std::fs::read(c.file().tls_dir().join("ca.pem"))?;
    assert_ne!(their_ca, our_ca, "the second certs run should have made its own CA");
    let stranger_addr = file.config.nodes[3].client.to_string();
    let role = Role::Member { file: file.path.clone(), id: 4 };
    let mut stranger = NodeProcess::spawn("node-4 (another CA)", role, &Launch::default())?;

    // For 10 s: node 4 is never ready nor healthy, the cluster keeps serving,
    // and nothing sent to node 4 is answered.
    let watch = Duration::from_secs(10);
    let started = Instant::now();
    let stranger_http = Http::new(&stranger_addr)?;
    let mut sent = vec!["before the stranger".to_string()];
    let mut round = 0u64;
    while started.elapsed() < watch {
        let state = stranger.readiness();
        assert!(!matches!(state, Readiness::Ready(_)), "node 4 with a foreign certificate became ready: {state:?}");
        let health =
            tokio::time::timeout(Duration::from_millis(300), stranger_http.request(Method::GET, "/healthz", None))
                .await;
        if let Ok(Ok(raw)) = &health {
            assert_ne!(raw.status, 200, "node 4 reports healthy: {}", raw.text);
        }
        let intrude =
            tokio::time::timeout(Duration::from_millis(300), stranger_http.register("intruder", "let me in please"))
                .await;
        assert!(!matches!(intrude, Ok(Ok(_))), "node 4 registered an account");
        let id = NODES[round as usize % 3];
        let body = format!("while the stranger knocks {round}");
        let ack = c.http_as(id, &keeper).post_message(room, &body, &format!("k{}", round + 1)).await?;
        assert_eq!(ack.seq, round + 2, "the cluster's sends go on, gapless");
        sent.push(body);
        round += 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let state = stranger.readiness();
    assert!(!matches!(state, Readiness::Ready(_)), "node 4 became ready: {state:?}");
    // It did knock: some real node refused its handshake.
    let refused: Vec<u64> = NODES
        .iter()
        .zip(&handshake_failures_before)
        .filter(|&(&id, &before)| !before && c.process(id).logged("peer handshake failed"))
        .map(|(&id, _)| id)
        .collect();
    assert!(!refused.is_empty(), "no node logged a refused handshake: did node 4 try to connect at all?");
    stranger.kill();

    for id in NODES {
        let view = cluster_view(c, id, &shared.admin_token).await?;
        assert_eq!(member_ids(&view), vec![1, 2, 3], "node {id}'s members: {view}");
        let owners: Vec<u64> = view["rooms"]
            .as_array()
            .map(|rooms| rooms.iter().filter_map(|r| r["owner_node"].as_u64()).collect())
            .unwrap_or_default();
        assert!(owners.iter().all(|o| NODES.contains(o)), "node {id} assigns a room to a stranger: {view}");
        let h = history_of_len(c, id, &keeper, room, sent.len()).await?;
        let bodies: Vec<&str> = h.iter().filter_map(|m| m.body.as_deref()).collect();
        assert_eq!(bodies, sent, "node {id}: the history holds exactly what the cluster was sent");
        assert!(h.iter().all(|m| m.from == keeper.name), "node {id}");
        expect_code(c.http(id).login("intruder", "let me in please").await, "unauthorized");
    }
    eprintln!("node 4 refused by nodes {refused:?}; {round} sends went on meanwhile");
    Ok(())
}
