//! The resilient client (palaver_client::ResilientClient) against real
//! nodes: a node restarted mid-stream costs no message and delivers none
//! twice; a send whose answer was lost with its connection is answered
//! with its original seq after the reconnect; a refused or revoked token is
//! replaced by a login; a refused subscription is reported for good.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicBool;
use std::sync::atomic::Ordering;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use palaver_client::ClientEvent;
use palaver_client::Http;
use palaver_client::Message;
use palaver_client::ResilientClient;
use palaver_client::ResilientOptions;
use palaver_client::Visibility;
use palaver_testkit::Cluster;
use palaver_testkit::Node;
use palaver_testkit::Recorder;
use palaver_testkit::User;
use palaver_testkit::WAIT;
use palaver_testkit::eventually;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::task::JoinHandle;

fn options(addr: &str, user: &User) -> ResilientOptions {
    ResilientOptions {
        stall_timeout: Duration::from_secs(3),
        give_up_after: Some(Duration::from_secs(90)),
        ..ResilientOptions::new(addr).token(&user.token).credentials(&user.name, &user.password)
    }
}

/// Every message of `room` as `http` reads it, oldest first (bounded pages).
async fn history(http: &Http, room: &str) -> Result<Vec<Message>> {
    let mut all: Vec<Message> = Vec::new();
    for _ in 0..100 {
        let after = all.last().map_or(0, |m| m.seq);
        let page = http.messages_after(room, after, Some(500)).await?;
        let done = page.len() < 500;
        all.extend(page);
        if done {
            return Ok(all);
        }
    }
    anyhow::bail!("{room}: more than 100 pages of history")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_restarted_mid_stream_costs_no_message_and_repeats_none() -> Result<()> {
    let mut c = Cluster::start(1).await?;
    let writer = c.user(1, "writer").await?;
    let reader = c.user(1, "reader").await?;
    writer.http.create_room("stream", "Stream", Visibility::Public).await?;
    reader.http.join("stream").await?;
    let addr = c.addr(1);

    let (rx, rx_events) = ResilientClient::connect(options(&addr, &reader)).await?;
    let seen = Recorder::start(rx_events);
    assert_eq!(rx.subscribe("stream", Some(0)).await?, 0);
    let (tx, tx_events) = ResilientClient::connect(options(&addr, &writer)).await?;
    let tx_seen = Recorder::start(tx_events);

    // A steady stream of sends, each awaited in its own task.
    let total = 140usize;
    let plain = total - 20;
    let killed_at = 40usize;
    let mut sends: Vec<JoinHandle<(String, String, palaver_client::Result<palaver_client::Sent>)>> = Vec::new();
    for i in 0..plain {
        if i == killed_at {
            // Wait until something was answered after the start, then kill
            // the node with sends in flight and start it again.
            let tx2 = tx.clone();
            eventually("a few answers before the kill", WAIT, async || Ok((tx2.stats().answered >= 20).then_some(())))
                .await?;
            // A burst so that some sends are in flight when the node dies.
            for j in 0..20 {
                let tx = tx.clone();
                let (body, client_id) = (format!("burst {j}"), format!("b-{j}"));
                sends.push(tokio::spawn(async move {
                    let r = tx.send_with_id("stream", &body, &client_id).await;
                    (client_id, body, r)
                }));
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
            c.kill(1);
            tokio::time::sleep(Duration::from_millis(300)).await;
            c.restart(1).await?;
        }
        let tx = tx.clone();
        let body = format!("message {i}");
        let client_id = format!("w-{i}");
        sends.push(tokio::spawn(async move {
            let r = tx.send_with_id("stream", &body, &client_id).await;
            (client_id, body, r)
        }));
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut answered: BTreeMap<String, (u64, String)> = BTreeMap::new();
    for s in sends {
        let (client_id, body, r) = tokio::time::timeout(Duration::from_secs(120), s).await.context("a send hung")??;
        let sent = r.with_context(|| format!("send {client_id} failed"))?;
        assert_eq!(sent.client_id, client_id);
        answered.insert(client_id, (sent.seq, body));
    }

    // History: every send exactly once, with the seq it was answered.
    let h = history(&writer.http, "stream").await?;
    let seqs: Vec<u64> = h.iter().map(|m| m.seq).collect();
    assert_eq!(seqs, (1..=total as u64).collect::<Vec<_>>(), "history is 1..={total}");
    let ids: BTreeSet<&str> = h.iter().filter_map(|m| m.client_id.as_deref()).collect();
    assert_eq!(ids.len(), total, "a client_id stored twice");
    for m in &h {
        let cid = m.client_id.clone().context("client_id")?;
        let (seq, body) = answered.get(&cid).with_context(|| format!("{cid} is in history but was not answered"))?;
        assert_eq!((m.seq, m.body.as_deref()), (*seq, Some(body.as_str())), "{cid}");
    }

    // The reader got 1..=total once each, in order, across its reconnect.
    seen.wait_for("stream", total as u64, WAIT).await?;
    assert_eq!(rx.last_seq("stream"), Some(total as u64));
    let (messages, gaps) = {
        let s = seen.seen();
        (s.messages.get("stream").cloned().unwrap_or_default(), s.gaps.clone())
    };
    let got: Vec<u64> = messages.iter().map(|m| m.seq).collect();
    assert_eq!(got, seqs, "the reader's deliveries");
    assert_eq!(messages, h, "the reader's messages equal the history");
    assert!(gaps.is_empty(), "gaps: {gaps:?}");
    assert!(rx.reconnects() >= 1 && tx.reconnects() >= 1, "{:?} {:?}", rx.stats(), tx.stats());
    assert_eq!(rx.gaps() + tx.gaps(), 0);
    assert_eq!(tx.stats().failed, 0, "{:?}", tx.stats());
    let connected = tx_seen.seen().connected;
    assert!(connected >= 2, "the writer reconnected: {connected}");
    eprintln!("reader {:?}\nwriter {:?}", rx.stats(), tx.stats());
    rx.close().await;
    tx.close().await;
    Ok(())
}

/// A TCP relay whose server-to-client direction can be held and whose
/// connections can be cut, to lose a reply on purpose.
struct Relay {
    addr: String,
    hold: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<JoinHandle<()>>>>,
    accept: JoinHandle<()>,
}

impl Relay {
    async fn start(target: String) -> Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?.to_string();
        let hold = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::new(Mutex::new(Vec::new()));
        let (h, cs) = (hold.clone(), conns.clone());
        let accept = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let Ok(server) = TcpStream::connect(&target).await else { continue };
                let (mut cr, mut cw) = client.into_split();
                let (mut sr, mut sw) = server.into_split();
                let up = tokio::spawn(async move {
                    let _ = tokio::io::copy(&mut cr, &mut sw).await;
                });
                let hold = h.clone();
                let down = tokio::spawn(async move {
                    let mut buf = vec![0u8; 16 * 1024];
                    loop {
                        while hold.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        match sr.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => {
                                // Read while not held; a hold set meanwhile
                                // keeps these bytes back until a cut drops them.
                                while hold.load(Ordering::SeqCst) {
                                    tokio::time::sleep(Duration::from_millis(5)).await;
                                }
                                if cw.write_all(&buf[..n]).await.is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
                let mut list = cs.lock().expect("lock");
                list.push(up);
                list.push(down);
            }
        });
        Ok(Relay { addr, hold, conns, accept })
    }

    /// Drops every relayed connection.
    fn cut(&self) {
        for task in self.conns.lock().expect("lock").drain(..) {
            task.abort();
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_send_whose_answer_was_lost_gets_its_original_seq_after_the_reconnect() -> Result<()> {
    let node = Node::start().await?;
    let ann = node.user("ann").await?;
    ann.http.create_room("lost", "Lost replies", Visibility::Public).await?;
    let relay = Relay::start(node.addr().to_string()).await?;
    let opts = ResilientOptions { stall_timeout: Duration::from_secs(30), ..options(&relay.addr, &ann) };
    let (client, events) = ResilientClient::connect(opts).await?;
    let seen = Recorder::start(events);
    assert_eq!(client.subscribe("lost", Some(0)).await?, 0);
    let first = client.send_with_id("lost", "before", "c-before").await?;
    assert_eq!((first.seq, first.attempts), (1, 1));

    // The reply to the next send is held back, then its connection is cut.
    relay.hold.store(true, Ordering::SeqCst);
    let c2 = client.clone();
    let pending = tokio::spawn(async move { c2.send_with_id("lost", "the reply is lost", "c-lost").await });
    let stored = eventually("the held send to be stored", WAIT, async || {
        let h = history(&ann.http, "lost").await?;
        Ok(h.iter().find(|m| m.client_id.as_deref() == Some("c-lost")).map(|m| m.seq))
    })
    .await?;
    assert!(!pending.is_finished(), "the send was answered although its reply was held");
    relay.cut();
    relay.hold.store(false, Ordering::SeqCst);
    let sent = tokio::time::timeout(WAIT, pending).await.context("the resend was never answered")???;
    assert_eq!(sent.seq, stored, "the resend answered another seq than the stored one");
    assert!(sent.attempts >= 2, "the send was written once only: {sent:?}");
    let after = client.send_with_id("lost", "after", "c-after").await?;
    assert_eq!(after.seq, 3);

    let h = history(&ann.http, "lost").await?;
    let ids: Vec<&str> = h.iter().filter_map(|m| m.client_id.as_deref()).collect();
    assert_eq!(ids, ["c-before", "c-lost", "c-after"], "history");
    seen.wait_for("lost", 3, WAIT).await?;
    assert_eq!(seen.seqs("lost"), [1, 2, 3], "deliveries across the cut");
    let gaps = seen.seen().gaps.clone();
    assert!(gaps.is_empty(), "{gaps:?}");
    assert!(client.reconnects() >= 1, "{:?}", client.stats());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_or_revoked_token_is_replaced_by_a_login() -> Result<()> {
    let node = Node::start().await?;
    let bea = node.user("bea").await?;
    bea.http.create_room("tokens", "Tokens", Visibility::Public).await?;

    // A token the server never issued, with the credentials: a login.
    let opts = ResilientOptions { token: Some("not-a-token".into()), ..options(node.addr(), &bea) };
    let (client, events) = ResilientClient::connect(opts).await?;
    let seen = Recorder::start(events);
    assert_eq!(client.stats().logins, 1, "{:?}", client.stats());
    assert_eq!(client.username().as_deref(), Some("bea"));
    assert_eq!(client.send("tokens", "one").await?.seq, 1);

    // Without credentials the same token is final, and said so at once.
    let started = Instant::now();
    let refused = ResilientClient::connect(ResilientOptions::new(node.addr()).token("not-a-token")).await;
    let err = refused.err().context("a bad token without credentials connected")?;
    assert!(started.elapsed() < Duration::from_secs(10), "refused after {:?}", started.elapsed());
    assert!(err.is_closed() || err.code() == "unauthorized", "{err}");

    // A token logged out under a live client: closed 4003, then a login.
    let other = node.login("bea").await?;
    let (client2, events2) = ResilientClient::connect(options(node.addr(), &other)).await?;
    let seen2 = Recorder::start(events2);
    client2.subscribe("tokens", Some(0)).await?;
    other.http.logout().await?;
    eventually("the client to log in again", WAIT, async || Ok((client2.stats().logins >= 1).then_some(()))).await?;
    let sent = client2.send("tokens", "two").await?;
    assert_eq!(sent.seq, 2);
    seen2.wait_for("tokens", 2, WAIT).await?;
    assert_eq!(seen2.seqs("tokens"), [1, 2]);
    let codes = seen2.seen().close_codes();
    assert!(codes.contains(&Some(4003)), "close codes seen: {codes:?}");
    assert!(seen.seen().gaps.is_empty());
    assert!(seen2.seen().gaps.is_empty());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_subscription_and_a_refused_send_are_final() -> Result<()> {
    let node = Node::start().await?;
    let cy = node.user("cyd").await?;
    let owner = node.user("owner").await?;
    owner.http.create_room("secret", "Secret", Visibility::Private).await?;
    let (client, mut events) = ResilientClient::connect(options(node.addr(), &cy)).await?;
    let err = client.subscribe("secret", Some(0)).await.err().context("subscribed to a private room")?;
    assert_eq!(err.code(), "not_found");
    let e = tokio::time::timeout(WAIT, async {
        loop {
            match events.recv().await {
                Some(ClientEvent::Unsubscribed { room, reason }) => return Some((room, reason)),
                Some(_) => continue,
                None => return None,
            }
        }
    })
    .await?;
    assert_eq!(e, Some(("secret".to_string(), "not_found".to_string())));
    assert_eq!(client.last_seq("secret"), None);
    let err = client.send("secret", "let me in").await.err().context("sent to a private room")?;
    assert_eq!(err.code(), "not_found");
    let err = client.send("nowhere", "").await.err().context("sent an empty body")?;
    assert!(["bad_request", "not_found"].contains(&err.code()), "{err}");
    let stats = client.stats();
    assert_eq!((stats.failed, stats.answered, stats.reconnects), (2, 0, 0), "{stats:?}");
    Ok(())
}
