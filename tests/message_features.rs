//! Replies, edits, reactions and read receipts (docs/protocol.md §8
//! "Messages") on a three-node cluster, every request through the balancer
//! as users make them: the happy path with the events subscribers get, the
//! permission matrix (outsider, member, moderator, owner, banned, muted),
//! bad input, and an edit and a reaction made before a node is killed,
//! found on every node left.

use anyhow::Context;
use anyhow::Result;
use anyhow::ensure;
use palaver_balancer::Strategy;
use palaver_client::Event;
use palaver_client::Http;
use palaver_client::Message;
use palaver_client::Visibility;
use palaver_client::Ws;
use palaver_testkit::Balancer;
use palaver_testkit::Cluster;
use palaver_testkit::WAIT;
use palaver_testkit::code_of;
use palaver_testkit::eventually;

const ROOM: &str = "features";

async fn message(http: &Http, seq: u64) -> Result<Message> {
    let page = http.messages_after(ROOM, seq - 1, Some(1)).await?;
    page.into_iter().next().with_context(|| format!("message {seq} is in the history"))
}

fn reactions(m: &Message) -> Vec<(String, Vec<String>)> {
    m.reactions.0.clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replies_edits_and_reactions_through_the_balancer() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let balancer = Balancer::over(&cluster, Strategy::RoundRobin).await?;
    let owner = balancer.user("owner").await?;
    let (ann, bob, moder, muted, banned, outsider) = (
        balancer.user("ann").await?,
        balancer.user("bob").await?,
        balancer.user("moder").await?,
        balancer.user("muted").await?,
        balancer.user("banned").await?,
        balancer.user("outsider").await?,
    );
    owner.create_room(ROOM, "replies, edits, reactions", Visibility::Private).await?;
    for name in ["ann", "bob", "moder", "muted", "banned"] {
        owner.invite(ROOM, name).await?;
    }
    for member in [&ann, &bob, &moder, &muted, &banned] {
        member.join(ROOM).await?;
    }
    owner.set_role(ROOM, "moder", "moderator").await?;

    // A subscriber through the balancer sees the events.
    let addr = balancer.addr.to_string();
    let mut watcher = Ws::connect_auth(&addr, bob.token().context("bob's token")?).await?;
    watcher.subscribe(ROOM, Some(0)).await?;

    // ----- replies -----
    let question = ann.post_message(ROOM, "helo, anyone?", "q1").await?;
    let answer = bob.post_reply(ROOM, "yes", "a1", Some(question.seq)).await?;
    ensure!(message(&owner, answer.seq).await?.reply_to == Some(question.seq), "the reply names its question");
    ensure!(message(&owner, question.seq).await?.reply_to.is_none(), "a plain message answers nothing");
    assert_eq!(code_of(bob.post_reply(ROOM, "to nothing", "a2", Some(999)).await), "bad_request");
    assert_eq!(code_of(bob.post_reply(ROOM, "to zero", "a3", Some(0)).await), "bad_request");
    let mut ws_bob = Ws::connect_auth(&addr, bob.token().context("bob's token")?).await?;
    let ws_reply = ws_bob.send_reply(ROOM, "over the socket", "a4", question.seq).await?;
    ensure!(message(&ann, ws_reply.seq).await?.reply_to == Some(question.seq), "a socket's reply names its question");

    // ----- edits -----
    let edited = ann.edit_message(ROOM, question.seq, "hello, anyone?").await?;
    assert_eq!(edited.body.as_deref(), Some("hello, anyone?"));
    let edited_at = edited.edited_at.context("an edited message says when")?;
    watcher
        .wait_for(
            |e| matches!(e, Event::Edited { seq, body, .. } if *seq == question.seq && body == "hello, anyone?"),
            WAIT,
        )
        .await
        .context("the edited event")?;
    let read = message(&moder, question.seq).await?;
    assert_eq!((read.body.as_deref(), read.edited_at), (Some("hello, anyone?"), Some(edited_at)));
    let audit = owner.audit(ROOM).await?;
    ensure!(
        audit.iter().any(|a| a.action == "edit_message"
            && a.actor == "ann"
            && a.detail.as_deref() == Some(&format!("{}: helo, anyone?", question.seq))),
        "the audit keeps the old text: {audit:?}"
    );
    let again = ws_bob.edit(ROOM, answer.seq, "yes!").await?;
    assert_eq!(again.body.as_deref(), Some("yes!"));

    // ----- reactions -----
    bob.react(ROOM, question.seq, "👍", true).await?;
    ann.react(ROOM, question.seq, "👍", true).await?;
    bob.react(ROOM, question.seq, "👍", true).await?;
    moder.react(ROOM, question.seq, ":tada:", true).await?;
    watcher
        .wait_for(|e| matches!(e, Event::Reaction { emoji, username, on: true, .. } if emoji == ":tada:" && username == "moder"), WAIT)
        .await
        .context("the reaction event")?;
    let want =
        vec![("👍".to_string(), vec!["bob".to_string(), "ann".to_string()]), (":tada:".into(), vec!["moder".into()])];
    assert_eq!(reactions(&message(&owner, question.seq).await?), want);
    bob.react(ROOM, question.seq, "👍", false).await?;
    ws_bob.react(ROOM, question.seq, "🎉", true).await?;
    let want = vec![
        ("👍".to_string(), vec!["ann".to_string()]),
        (":tada:".into(), vec!["moder".into()]),
        ("🎉".into(), vec!["bob".into()]),
    ];
    assert_eq!(reactions(&message(&owner, question.seq).await?), want);

    // ----- the permission matrix -----
    owner.mute(ROOM, "muted", 600).await?;
    owner.ban(ROOM, "banned").await?;
    let by_muted = muted.post_message(ROOM, "before the mute? no: after", "m1").await;
    assert_eq!(code_of(by_muted), "forbidden", "a muted member does not send");
    // Whose message, who edits, what they get.
    for (who, http, seq, want) in [
        ("the sender", &ann, question.seq, "ok"),
        ("another member", &bob, question.seq, "forbidden"),
        ("a moderator", &moder, question.seq, "forbidden"),
        ("the owner", &owner, question.seq, "forbidden"),
        ("a banned user", &banned, question.seq, "not_found"),
        ("an outsider", &outsider, question.seq, "not_found"),
    ] {
        let got = code_of(http.edit_message(ROOM, seq, "changed by someone").await);
        let got = if got.starts_with("ok") { "ok".to_string() } else { got };
        assert_eq!(got, want, "{who} edits ann's message");
    }
    ann.edit_message(ROOM, question.seq, "hello, anyone?").await?;
    let muted_msg = {
        owner.unmute(ROOM, "muted").await?;
        let ack = muted.post_message(ROOM, "said before the mute", "m2").await?;
        owner.mute(ROOM, "muted", 600).await?;
        ack.seq
    };
    assert_eq!(
        code_of(muted.edit_message(ROOM, muted_msg, "muted now").await),
        "forbidden",
        "a muted sender edits nothing"
    );
    for (who, http, want) in [
        ("a member", &bob, "ok"),
        ("a moderator", &moder, "ok"),
        ("the owner", &owner, "ok"),
        ("a muted member", &muted, "ok"),
        ("a banned user", &banned, "not_found"),
        ("an outsider", &outsider, "not_found"),
    ] {
        let got = code_of(http.react(ROOM, answer.seq, "👀", true).await);
        let got = if got.starts_with("ok") { "ok".to_string() } else { got };
        assert_eq!(got, want, "{who} reacts");
    }
    let reactors = reactions(&message(&owner, answer.seq).await?);
    assert_eq!(reactors, vec![("👀".into(), vec!["bob".into(), "moder".into(), "owner".into(), "muted".into()])]);

    // ----- bad input -----
    assert_eq!(code_of(ann.edit_message(ROOM, 999, "x").await), "not_found", "an unknown seq");
    assert_eq!(code_of(ann.edit_message(ROOM, question.seq, "").await), "bad_request", "an empty body");
    let long = "x".repeat(100_000);
    assert_eq!(code_of(ann.edit_message(ROOM, question.seq, &long).await), "too_large", "an over-long body");
    assert_eq!(code_of(bob.react(ROOM, 999, "👍", true).await), "not_found", "a reaction to an unknown seq");
    for bad in ["ok", "👍👍", ":has space:", ":this-name-is-far-too-long-for-a-reaction:"] {
        assert_eq!(code_of(bob.react(ROOM, question.seq, bad, true).await), "bad_request", "reaction {bad:?}");
    }
    assert_eq!(code_of(ann.delete_message(ROOM, ws_reply.seq).await), "forbidden", "not hers to delete");
    bob.delete_message(ROOM, ws_reply.seq).await?;
    assert_eq!(code_of(bob.edit_message(ROOM, ws_reply.seq, "undelete").await), "not_found", "a deleted message");
    // At most 20 different emoji: 3 are there.
    for i in 0..17 {
        bob.react(ROOM, question.seq, &format!(":e{i}:"), true).await?;
    }
    assert_eq!(code_of(bob.react(ROOM, question.seq, ":one-too-many:", true).await), "bad_request", "a 21st emoji");
    ann.react(ROOM, question.seq, ":e0:", true).await.context("an emoji already there takes more users")?;

    // ----- a node killed: what was answered before is on every node left -----
    ann.edit_message(ROOM, question.seq, "final words").await?;
    let before = message(&owner, question.seq).await?;
    cluster.kill(1);
    for id in [2, 3] {
        let on_node = cluster.http(id).with_token(owner.token().context("owner's token")?.to_string());
        let seen = eventually(&format!("node {id} answers the history"), WAIT, async || {
            match on_node.messages_after(ROOM, question.seq - 1, Some(1)).await {
                Ok(page) => Ok(page.into_iter().next()),
                Err(e) if e.code() == "unavailable" => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        assert_eq!(seen.body, before.body, "node {id}: the edit");
        assert_eq!(seen.edited_at, before.edited_at, "node {id}: when");
        assert_eq!(reactions(&seen), reactions(&before), "node {id}: the reactions");
    }
    Ok(())
}

/// Each member's read marker is shown to the room's members (`receipts`,
/// event `read`), and to no one else: a public room's outside reader
/// subscribed to it gets no `read` event, and may not list receipts.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_receipts_reach_members_only() -> Result<()> {
    let cluster = Cluster::start(3).await?;
    let balancer = Balancer::over(&cluster, Strategy::RoundRobin).await?;
    let (ann, bob, carl, outsider, banned) = (
        balancer.user("ann").await?,
        balancer.user("bob").await?,
        balancer.user("carl").await?,
        balancer.user("outsider").await?,
        balancer.user("banned").await?,
    );
    ann.create_room(ROOM, "receipts", Visibility::Public).await?;
    bob.join(ROOM).await?;
    banned.join(ROOM).await?;
    ann.ban(ROOM, "banned").await?;
    for i in 1..=3 {
        ann.post_message(ROOM, &format!("m{i}"), &format!("m{i}")).await?;
    }
    let addr = balancer.addr.to_string();
    let mut ann_ws = Ws::connect_auth(&addr, ann.token().context("ann's token")?).await?;
    ann_ws.subscribe(ROOM, None).await?;
    let mut outside_ws = Ws::connect_auth(&addr, outsider.token().context("the outsider's token")?).await?;
    outside_ws.subscribe(ROOM, None).await?;

    bob.read(ROOM, 2).await?;
    let seen = ann_ws
        .wait_for(|e| matches!(e, Event::Read { username, .. } if username == "bob"), WAIT)
        .await
        .context("ann sees bob's marker move")?;
    assert!(matches!(seen, Event::Read { seq: 2, .. }), "{seen:?}");
    let mut receipts: Vec<(String, u64)> = ann.receipts(ROOM).await?.into_iter().map(|r| (r.username, r.seq)).collect();
    receipts.sort();
    assert_eq!(receipts, vec![("ann".into(), 0), ("bob".into(), 2)]);
    bob.read(ROOM, 2).await?;
    bob.read(ROOM, 3).await?;

    // A metadata entry after the markers': every node applies the log in
    // order, so the outsider's events up to carl's join include any read
    // event it would have got.
    carl.join(ROOM).await?;
    let mut before_join = Vec::new();
    loop {
        let e = outside_ws.next_event(WAIT).await.context("the outsider's events")?;
        if matches!(&e, Event::Member { username, .. } if username == "carl") {
            break;
        }
        before_join.push(e);
    }
    ensure!(
        !before_join.iter().any(|e| matches!(e, Event::Read { .. })),
        "an outsider got read events: {before_join:?}"
    );
    let seen = ann_ws
        .wait_for(|e| matches!(e, Event::Read { username, seq: 3, .. } if username == "bob"), WAIT)
        .await
        .context("ann sees bob's second move, and no event for the marker that stayed")?;
    ensure!(matches!(seen, Event::Read { .. }));
    for (who, http) in [("an outsider", &outsider), ("a banned user", &banned)] {
        assert_eq!(code_of(http.receipts(ROOM).await), "forbidden", "{who} lists receipts");
    }
    assert_eq!(code_of(outsider.receipts("no-such-room").await), "not_found");
    Ok(())
}

/// Uploads `len` bytes with no `Content-Length` (chunked), as a streaming
/// client does, over a raw connection to `addr`; answers the status line.
async fn chunked_upload(addr: &str, token: &str, room: &str, len: usize) -> Result<String> {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    let mut conn = tokio::net::TcpStream::connect(addr).await?;
    let head = format!(
        "POST /api/rooms/{room}/attachments?name=stream.bin HTTP/1.1\r\nHost: {addr}\r\n\
         Authorization: Bearer {token}\r\nContent-Type: application/octet-stream\r\n\
         Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(head.as_bytes()).await?;
    let chunk = vec![b'z'; 8192];
    let mut sent = 0;
    // The node may answer and close before the end: the answer is what counts.
    while sent < len {
        let n = chunk.len().min(len - sent);
        let framed = [format!("{n:x}\r\n").as_bytes(), &chunk[..n], b"\r\n"].concat();
        if conn.write_all(&framed).await.is_err() {
            break;
        }
        sent += n;
    }
    let _ = conn.write_all(b"0\r\n\r\n").await;
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(WAIT, conn.read_to_end(&mut answer)).await;
    let text = String::from_utf8_lossy(&answer);
    Ok(text.lines().next().unwrap_or_default().to_string())
}

/// A PNG-looking file of `len` bytes whose content depends on `seed`.
fn png(len: usize, seed: u8) -> Vec<u8> {
    let mut bytes = b"\x89PNG\r\n\x1a\n".to_vec();
    bytes.extend((0..len.saturating_sub(8)).map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed)));
    bytes
}

/// Attachments (docs/protocol.md §8): upload, send with them, download with
/// the right headers by whoever may read the room and by no one else;
/// muted members, files over the limit, ids of another room or of nothing
/// refused; the daily quota; a message's deletion takes its files; a file
/// uploaded before a node is killed is downloadable through every node
/// left, and the node, back, has the file uploaded while it was down and
/// fetches one it lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn attachments_through_the_balancer() -> Result<()> {
    const LIMIT: u64 = 64 * 1024;
    const OPEN: &str = "open-files";
    const QUOTA: u64 = 300_000;
    let config = palaver_testkit::config::config(|c| {
        c.limits.attachment_bytes = LIMIT;
        c.limits.attachment_quota_bytes = QUOTA;
        // Uploads are not HTTP bodies of this limit.
        c.limits.body_bytes = 16 * 1024;
    });
    let mut cluster = Cluster::start_with(3, config).await?;
    let balancer = Balancer::over(&cluster, Strategy::RoundRobin).await?;
    let (owner, ann, muted, outsider, hog) = (
        balancer.user("owner").await?,
        balancer.user("ann").await?,
        balancer.user("muted").await?,
        balancer.user("outsider").await?,
        balancer.user("hog").await?,
    );
    owner.create_room(ROOM, "files", Visibility::Private).await?;
    owner.create_room(OPEN, "open files", Visibility::Public).await?;
    for name in ["ann", "muted", "hog"] {
        owner.invite(ROOM, name).await?;
    }
    for member in [&ann, &muted, &hog] {
        member.join(ROOM).await?;
    }
    ann.join(OPEN).await?;
    let addr = balancer.addr.to_string();
    let mut watcher = Ws::connect_auth(&addr, owner.token().context("owner's token")?).await?;
    watcher.subscribe(ROOM, Some(0)).await?;

    // ----- the happy path -----
    let image = png(40_000, 1);
    let up = ann.upload(ROOM, "../holiday/cat.png", "image/png", image.clone()).await?;
    assert_eq!((up.name.as_str(), up.kind.as_str(), up.size), ("cat.png", "image/png", image.len() as u64));
    let again = ann.upload(ROOM, "../holiday/cat.png", "image/png", image.clone()).await?;
    assert_eq!(again, up, "the same upload again is the same attachment");
    let page = b"<html><script>alert(1)</script></html>".to_vec();
    let doc = ann.upload(ROOM, "page.html", "text/html", page.clone()).await?;
    let sent = ann.post_with(ROOM, "look", "f1", None, &[&up.id, &doc.id]).await?;
    let shown = message(&owner, sent.seq).await?;
    assert_eq!(shown.attachments, vec![up.clone(), doc.clone()], "history shows the attachments");
    watcher
        .wait_for(|e| matches!(e, Event::Message(m) if m.seq == sent.seq && m.attachments.len() == 2), WAIT)
        .await
        .context("the message event carries the attachments")?;
    let got = owner.download(&up.id).await?;
    assert_eq!(got.bytes.as_ref(), image.as_slice(), "another member gets the same bytes");
    assert_eq!(got.header("content-type"), Some("image/png"));
    assert_eq!(got.header("content-length"), Some(image.len().to_string().as_str()));
    assert_eq!(got.header("x-content-type-options"), Some("nosniff"));
    let disposition = got.header("content-disposition").unwrap_or_default();
    ensure!(disposition.starts_with("inline;") && disposition.contains("UTF-8''cat.png"), "{disposition}");
    let got = owner.download(&doc.id).await?;
    assert_eq!(got.bytes.as_ref(), page.as_slice());
    let disposition = got.header("content-disposition").unwrap_or_default();
    ensure!(disposition.starts_with("attachment;"), "anything but an image downloads: {disposition}");
    let mut ws_ann = Ws::connect_auth(&addr, ann.token().context("ann's token")?).await?;
    let over_ws = ws_ann.send_with(ROOM, "again, over the socket", "f2", &[&up.id]).await?;
    assert_eq!(message(&owner, over_ws.seq).await?.attachments, vec![up.clone()]);

    // ----- who may read: as for history -----
    let history = code_of(outsider.messages_after(ROOM, 0, Some(1)).await);
    assert_eq!(code_of(outsider.download(&up.id).await), history, "an outsider of a private room, as for history");
    ensure!(history == "not_found" || history == "forbidden", "{history}");
    let public = ann.upload(OPEN, "open.png", "image/png", png(1000, 2)).await?;
    ann.post_with(OPEN, "for all", "p1", None, &[&public.id]).await?;
    assert_eq!(outsider.download(&public.id).await?.bytes.len(), 1000, "a public room's reader downloads");
    let forged = format!("{ROOM}.{}", &public.id[OPEN.len() + 1..]);
    assert_eq!(code_of(outsider.download(&forged).await), history, "another room's id part gives nothing");

    // ----- refusals -----
    owner.mute(ROOM, "muted", 600).await?;
    assert_eq!(code_of(muted.upload(ROOM, "x.txt", "text/plain", b"hi".to_vec()).await), "forbidden", "muted");
    assert_eq!(code_of(outsider.upload(ROOM, "x.txt", "text/plain", b"hi".to_vec()).await), history, "an outsider");
    let big = png(LIMIT as usize + 1, 3);
    assert_eq!(code_of(ann.upload(ROOM, "big.png", "image/png", big).await), "too_large");
    let token = ann.token().context("ann's token")?;
    let status = chunked_upload(&addr, token, ROOM, LIMIT as usize + 10_000).await?;
    ensure!(status.contains(" 413 "), "a streamed upload past the limit, with no length announced: {status}");
    let status = chunked_upload(&addr, token, ROOM, 20_000).await?;
    ensure!(status.contains(" 201 "), "a streamed upload within the limit: {status}");
    let exact = ann.upload(ROOM, "exact.png", "image/png", png(LIMIT as usize, 4)).await?;
    assert_eq!(exact.size, LIMIT, "exactly the limit is accepted");
    assert_eq!(code_of(ann.upload(ROOM, "x", "not a type", b"hi".to_vec()).await), "bad_request", "a bad type");
    let unknown = format!("{ROOM}.{}", "0".repeat(32));
    assert_eq!(code_of(ann.post_with(ROOM, "x", "f3", None, &[&unknown]).await), "bad_request", "an unknown id");
    assert_eq!(code_of(ann.post_with(ROOM, "x", "f4", None, &["garbage"]).await), "bad_request", "not an id");
    assert_eq!(code_of(ann.post_with(ROOM, "x", "f5", None, &[&public.id]).await), "bad_request", "another room's");
    let eleven: Vec<String> = (0..11).map(|i| format!("{ROOM}.{i:032x}")).collect();
    let eleven: Vec<&str> = eleven.iter().map(String::as_str).collect();
    assert_eq!(code_of(ann.post_with(ROOM, "x", "f6", None, &eleven).await), "bad_request", "11 attachments");

    // ----- the daily quota: five files of 50 kB leave 50 kB of 300 kB -----
    let on_one = cluster.http(1).with_token(hog.token().context("hog's token")?.to_string());
    for i in 0..5u8 {
        on_one.upload(ROOM, "chunk.bin", "application/octet-stream", png(50_000, 10 + i)).await?;
    }
    let refused = on_one.upload(ROOM, "chunk.bin", "application/octet-stream", png(60_000, 20)).await;
    match refused {
        Err(palaver_client::Error::Api { code, retry_after_ms, .. }) => {
            assert_eq!(code, "rate_limited", "over the quota");
            ensure!(retry_after_ms.is_some_and(|ms| ms > 1000), "the wait is the quota's refill: {retry_after_ms:?}");
        }
        other => anyhow::bail!("60 kB more of a 300 kB quota answered {other:?}"),
    }

    // ----- a deletion takes the files no other message carries -----
    let gone = ann.upload(ROOM, "gone.txt", "text/plain", b"soon gone".to_vec()).await?;
    let doomed = ann.post_with(ROOM, "short-lived", "f7", None, &[&gone.id]).await?;
    ann.delete_message(ROOM, doomed.seq).await?;
    eventually("the deleted message's attachment is gone", WAIT, async || {
        Ok((code_of(owner.download(&gone.id).await) == "not_found").then_some(()))
    })
    .await?;
    ensure!(message(&owner, doomed.seq).await?.attachments.is_empty(), "a deleted message shows no attachment");
    ann.delete_message(ROOM, over_ws.seq).await?;
    assert_eq!(owner.download(&up.id).await?.bytes.len(), image.len(), "another message still carries it");

    // ----- a node killed: an answered upload is on every node left -----
    cluster.kill(1);
    for id in [2, 3] {
        let on_node = cluster.http(id).with_token(owner.token().context("owner's token")?.to_string());
        let bytes = eventually(&format!("node {id} serves the attachment"), WAIT, async || {
            match on_node.download(&up.id).await {
                Ok(d) => Ok(Some(d.bytes)),
                Err(e) if e.code() == "unavailable" => Ok(None),
                Err(e) => Err(e.into()),
            }
        })
        .await?;
        assert_eq!(bytes.as_ref(), image.as_slice(), "node {id}");
    }

    // ----- a replica that missed an upload fetches the file once back -----
    let on_two = cluster.http(2).with_token(ann.token().context("ann's token")?.to_string());
    let late = png(30_000, 9);
    let late_up = eventually("an upload while node 1 is down", WAIT, async || {
        match on_two.upload(ROOM, "late.png", "image/png", late.clone()).await {
            Ok(a) => Ok(Some(a)),
            Err(e) if e.code() == "unavailable" => Ok(None),
            Err(e) => Err(e.into()),
        }
    })
    .await?;
    on_two.post_with(ROOM, "while node 1 was away", "f8", None, &[&late_up.id]).await?;
    // Its copy of the first image is lost as well (a disk replaced, say).
    let dir = cluster.file().config.cluster.data_dir.join("node-1").join("attachments");
    let holds = |bytes: &[u8]| -> Result<bool> {
        for entry in std::fs::read_dir(&dir)? {
            let path = entry?.path();
            if path.is_file() && std::fs::read(&path)? == bytes {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let mut removed = 0;
    for entry in std::fs::read_dir(&dir)? {
        let path = entry?.path();
        if path.is_file() && std::fs::read(&path)? == image {
            std::fs::remove_file(&path)?;
            removed += 1;
        }
    }
    assert_eq!(removed, 1, "node 1 held the image before it was killed");
    cluster.restart(1).await?;
    for (what, bytes) in [("the file uploaded while it was down", &late), ("the file it lost", &image)] {
        eventually(&format!("node 1 holds {what}"), WAIT, async || Ok(holds(bytes)?.then_some(()))).await?;
    }
    let on_one = cluster.http(1).with_token(owner.token().context("owner's token")?.to_string());
    assert_eq!(on_one.download(&late_up.id).await?.bytes.as_ref(), late.as_slice());
    Ok(())
}
