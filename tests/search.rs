//! Search (docs/protocol.md §8 "Messages") on a three-node cluster, every
//! request through the balancer as users make them: every word matches,
//! newest first, the caller's own message found at once, edits and
//! deletions reflected, the permission matrix (a user never finds a message
//! of a room they cannot read), bad input, a node killed, and a node whose
//! index was lost answering the same after a restart.

use anyhow::Context;
use anyhow::Result;
use anyhow::ensure;
use palaver_balancer::Strategy;
use palaver_client::Http;
use palaver_client::Visibility;
use palaver_testkit::Balancer;
use palaver_testkit::Cluster;
use palaver_testkit::code_of;

/// (room, seq) of what a search finds.
async fn found(http: &Http, room: Option<&str>, q: &str) -> Result<Vec<(String, u64)>> {
    let found = http.search(room, q, None).await.with_context(|| format!("search {room:?} for {q:?}"))?;
    Ok(found.into_iter().map(|m| (m.room, m.seq)).collect())
}

fn at(room: &str, seq: u64) -> (String, u64) {
    (room.to_string(), seq)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn search_finds_what_the_caller_may_read_through_the_balancer() -> Result<()> {
    let mut cluster = Cluster::start(3).await?;
    let balancer = Balancer::over(&cluster, Strategy::RoundRobin).await?;
    let (owner, ann, moder, muted, banned, outsider) = (
        balancer.user("owner").await?,
        balancer.user("ann").await?,
        balancer.user("moder").await?,
        balancer.user("muted").await?,
        balancer.user("banned").await?,
        balancer.user("outsider").await?,
    );
    owner.create_room("secret", "private", Visibility::Private).await?;
    owner.create_room("lobby", "public", Visibility::Public).await?;
    for name in ["ann", "moder", "muted", "banned"] {
        owner.invite("secret", name).await?;
    }
    for member in [&ann, &moder, &muted, &banned] {
        member.join("secret").await?;
        member.join("lobby").await?;
    }
    owner.set_role("secret", "moder", "moderator").await?;
    owner.mute("secret", "muted", 3_600).await?;

    // Every send is searched for at once, through whichever node the
    // balancer picks: a search sees what was answered before it.
    let mut secret = Vec::new();
    for i in 1..=6u64 {
        let sent =
            ann.post_message("secret", &format!("Launch plan number{i} for the ROCKET"), &format!("s{i}")).await?;
        secret.push(sent.seq);
        let now = found(&moder, Some("secret"), &format!("number{i}")).await?;
        assert_eq!(now, vec![at("secret", sent.seq)], "a message is found right after its send was answered");
    }
    let lobby = owner.post_message("lobby", "the rocket launch is public news", "l1").await?;

    // All words, any case, newest first; one room or all readable rooms.
    let want: Vec<_> = secret.iter().rev().map(|s| at("secret", *s)).collect();
    assert_eq!(found(&ann, Some("secret"), "rocket LAUNCH").await?, want);
    let mut everywhere = vec![at("lobby", lobby.seq)];
    everywhere.extend(want.clone());
    assert_eq!(found(&ann, None, "rocket launch").await?, everywhere);
    assert_eq!(found(&ann, None, "public rocket").await?, vec![at("lobby", lobby.seq)]);
    assert!(found(&ann, None, "rocket nothing").await?.is_empty(), "every word must match");
    let two = ann.search(Some("secret"), "rocket", Some(2)).await?;
    assert_eq!(two.iter().map(|m| m.seq).collect::<Vec<_>>(), vec![secret[5], secret[4]], "limit keeps the newest");

    // The permission matrix: readers find, others never see the private room.
    for (who, http) in [("owner", &owner), ("moderator", &moder), ("muted member", &muted)] {
        assert_eq!(found(http, Some("secret"), "rocket").await?.len(), 6, "{who} searches the room");
    }
    assert_eq!(code_of(outsider.search(Some("secret"), "rocket", None).await), "not_found", "outsider, private room");
    assert_eq!(
        found(&outsider, None, "rocket").await?,
        vec![at("lobby", lobby.seq)],
        "outsiders find public rooms only"
    );
    assert_eq!(found(&outsider, Some("lobby"), "rocket").await?, vec![at("lobby", lobby.seq)]);
    owner.ban("secret", "banned").await?;
    assert_eq!(code_of(banned.search(Some("secret"), "rocket", None).await), "not_found", "banned, private room");
    assert_eq!(found(&banned, None, "rocket").await?, vec![at("lobby", lobby.seq)], "a ban hides the room at once");
    owner.ban("lobby", "banned").await?;
    assert_eq!(code_of(banned.search(Some("lobby"), "rocket", None).await), "forbidden", "banned, public room");
    ensure!(found(&banned, None, "rocket").await?.is_empty(), "a banned user finds nothing of either room");

    // Edits and deletions are what a search sees next.
    ann.edit_message("secret", secret[0], "nothing to see here").await?;
    moder.delete_message("secret", secret[1]).await?;
    let left: Vec<_> = secret[2..].iter().rev().map(|s| at("secret", *s)).collect();
    assert_eq!(found(&owner, Some("secret"), "rocket").await?, left, "edited and deleted messages are gone");
    assert_eq!(found(&owner, Some("secret"), "see").await?, vec![at("secret", secret[0])], "the new text is found");

    // Bad input.
    for (what, q) in [("empty", String::new()), ("no word", " ,.; ".into()), ("10,000 characters", "x".repeat(10_000))]
    {
        assert_eq!(code_of(ann.search(Some("secret"), &q, None).await), "bad_request", "{what}");
        assert_eq!(code_of(ann.search(None, &q, None).await), "bad_request", "{what}, every room");
    }
    assert_eq!(code_of(ann.search(Some("no-such-room"), "rocket", None).await), "not_found");
    assert_eq!(code_of(ann.search(Some("Not A Room!"), "rocket", None).await), "bad_request");

    // A node killed: the others answer the same.
    cluster.kill(2);
    assert_eq!(found(&owner, Some("secret"), "rocket").await?, left, "with a node down");
    let late = ann.post_message("secret", "rocket after the kill", "s-late").await?;
    assert_eq!(found(&owner, Some("secret"), "after rocket").await?, vec![at("secret", late.seq)]);

    // A node that lost its index makes it again from its room logs.
    let index = cluster.file().config.cluster.data_dir.join("node-3").join("search");
    cluster.stop(3)?;
    cluster.wait_exit(3, palaver_testkit::WAIT).await?.context("node 3 stops on SIGTERM")?;
    std::fs::remove_dir_all(&index).with_context(|| format!("removing {}", index.display()))?;
    cluster.restart(3).await?;
    cluster.restart(2).await?;
    let direct = cluster.http(3).with_token(owner.token().context("owner's token")?.to_string());
    let mut expected = vec![at("secret", late.seq)];
    expected.extend(left);
    assert_eq!(found(&direct, Some("secret"), "rocket").await?, expected, "node 3, its index made again");
    ensure!(index.join("meta.json").exists(), "node 3 wrote a new index");
    Ok(())
}
