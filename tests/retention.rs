//! Retention (docs/protocol.md §8 "Messages") on a three-node cluster whose
//! "day" lasts two seconds, every request through the balancer: the owner
//! sets a room's `retention_days` (and title) with `PATCH /api/rooms/{room}`,
//! the permission matrix and bad input of that call, expired messages gone
//! from history, search and every node, seqs never reused, the expiry
//! audited, and a room kept forever untouched.

use std::time::Duration;

use anyhow::Context;
use anyhow::Result;
use anyhow::ensure;
use palaver_balancer::Strategy;
use palaver_client::Http;
use palaver_client::Visibility;
use palaver_testkit::Balancer;
use palaver_testkit::Cluster;
use palaver_testkit::code_of;
use palaver_testkit::eventually;

/// A retention day in this test, ms.
const DAY_MS: u64 = 2_000;

async fn seqs(http: &Http, room: &str) -> Result<Vec<u64>> {
    Ok(http.messages_after(room, 0, Some(100)).await?.into_iter().map(|m| m.seq).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expired_messages_go_everywhere_and_seqs_go_on() -> Result<()> {
    let mut config = palaver_testkit::config::raised_limits(1_000, 1_000);
    config.cluster.retention_day_ms = DAY_MS;
    let cluster = Cluster::start_with(3, config).await?;
    let balancer = Balancer::over(&cluster, Strategy::RoundRobin).await?;
    let (owner, moder, member, outsider) = (
        balancer.user("owner").await?,
        balancer.user("moder").await?,
        balancer.user("member").await?,
        balancer.user("outsider").await?,
    );
    owner.create_room("old", "short memory", Visibility::Private).await?;
    owner.create_room("keep", "long memory", Visibility::Public).await?;
    for (name, http) in [("moder", &moder), ("member", &member)] {
        owner.invite("old", name).await?;
        http.join("old").await?;
    }
    owner.set_role("old", "moder", "moderator").await?;
    for i in 1..=5 {
        owner.post_message("old", &format!("ephemeral note {i}"), &format!("o{i}")).await?;
        owner.post_message("keep", &format!("lasting note {i}"), &format!("k{i}")).await?;
    }
    assert_eq!(owner.room("old").await?.retention_days, Some(0), "the cluster's default: forever");

    // Who may set it, and what is refused.
    assert_eq!(code_of(moder.configure_room("old", None, Some(1)).await), "forbidden", "a moderator");
    assert_eq!(code_of(member.configure_room("old", None, Some(1)).await), "forbidden", "a member");
    assert_eq!(code_of(outsider.configure_room("old", None, Some(1)).await), "not_found", "an outsider");
    assert_eq!(code_of(owner.configure_room("old", None, Some(36_501)).await), "bad_request", "over 100 years");
    assert_eq!(code_of(owner.configure_room("old", None, None).await), "bad_request", "nothing to change");
    assert_eq!(code_of(owner.configure_room("old", Some(&"t".repeat(201)), None).await), "bad_request", "long title");
    assert_eq!(code_of(owner.configure_room("nope", None, Some(1)).await), "not_found");

    let set = owner.configure_room("old", Some("fading"), Some(1)).await?;
    assert_eq!((set.title.as_str(), set.retention_days), ("fading", Some(1)));
    assert_eq!(member.room("old").await?.retention_days, Some(1), "members see it");

    // Within about a day (2 s) plus a check, the five messages are gone.
    eventually("the old room's messages expire", Duration::from_secs(60), async || {
        Ok(seqs(&member, "old").await?.is_empty().then_some(()))
    })
    .await?;
    for id in cluster.ids() {
        let direct = cluster.http(id).with_token(member.token().context("member's token")?.to_string());
        ensure!(seqs(&direct, "old").await?.is_empty(), "node {id} still has expired messages");
        ensure!(direct.search(Some("old"), "ephemeral", None).await?.is_empty(), "node {id} still finds them");
    }
    // Messages sent over time expire over time: one or more expiries,
    // each audited with how many went and the newest seq that went.
    let audit = owner.audit("old").await?;
    let expiries: Vec<(u64, u64)> = audit
        .iter()
        .filter(|a| a.action == "expire" && a.actor == "system")
        .filter_map(|a| {
            let detail = a.detail.as_deref()?;
            let (count, through) = detail.split_once(" through seq ")?;
            Some((count.split(' ').next()?.parse().ok()?, through.parse().ok()?))
        })
        .collect();
    ensure!(expiries.iter().map(|e| e.0).sum::<u64>() == 5, "the expiries are audited: {audit:?}");
    ensure!(expiries.last().map(|e| e.1) == Some(5), "the last expiry went through seq 5: {audit:?}");
    ensure!(audit.iter().any(|a| a.action == "set_retention" && a.actor == "owner"), "{audit:?}");
    assert_eq!(owner.room("old").await?.last_seq, 5, "the room's last seq stays");

    // Kept forever again: the next message goes on from seq 6, never reused.
    owner.configure_room("old", None, Some(0)).await?;
    let next = owner.post_message("old", "a new beginning", "o6").await?;
    assert_eq!(next.seq, 6);
    assert_eq!(seqs(&member, "old").await?, vec![6]);
    assert_eq!(member.messages_after("old", 2, None).await?.first().map(|m| m.seq), Some(6), "after= skips expired");

    // The room with no retention kept everything all along.
    assert_eq!(seqs(&outsider, "keep").await?, vec![1, 2, 3, 4, 5]);
    assert_eq!(owner.search(Some("keep"), "lasting", None).await?.len(), 5);
    Ok(())
}
