//! Who may do what (docs/protocol.md §3): the permission matrix, table-driven.
//! Rows are the room actions of §3, columns the caller's standing (owner,
//! moderator, member, outsider, banned), one table per visibility. Every
//! cell runs on a fresh room, so one cell's effect cannot leak into another;
//! all differing cells are reported together.

use anyhow::Result;
use futures_util::StreamExt;
use futures_util::stream;
use palaver_client::Http;
use palaver_client::Visibility;
use palaver_testkit::Node;
use palaver_testkit::User;
use palaver_testkit::expect_code;

/// The room actions of §3 that act on one room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    Get,
    Delete,
    Join,
    Leave,
    Invite,
    Kick,
    Ban,
    Unban,
    Role,
    Mute,
    Unmute,
    DeleteMessage,
    Audit,
    Read,
    Members,
    MessagesAfter,
    MessagesBefore,
    Post,
}

/// The caller's standing in the room.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Actor {
    Owner,
    Moderator,
    Member,
    Outsider,
    Banned,
}

const ACTORS: [Actor; 5] = [Actor::Owner, Actor::Moderator, Actor::Member, Actor::Outsider, Actor::Banned];

/// What a cell expects.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Expect {
    /// Success.
    Allowed,
    /// This protocol error.
    Denied(&'static str),
    /// Some error, code not fixed by the protocol.
    Refused,
    /// The protocol does not say; the cell is run but not judged.
    Open,
}

const Y: Expect = Expect::Allowed;
const F: Expect = Expect::Denied("forbidden");
const N: Expect = Expect::Denied("not_found");
const R: Expect = Expect::Refused;
const O: Expect = Expect::Open;
const C: Expect = Expect::Denied("conflict");

// protocol is silent, assumed here (C = conflict):
// - a current member's `join` is `conflict` (409): already a member;
// - the owner may not `leave` (`forbidden`): a room keeps its owner;
// - in a public room a non-member's member-only action (leave, read,
//   members, post, moderation) is `forbidden` (the room is not hidden);
// - a ban shuts the user out of reading too: "anyone for public" excludes
//   the room's banned users (get, history: `forbidden`);
// - a banned user is no member: in a private room everything but `join`
//   (which §3 makes `forbidden` for a banned user) is `not_found`.
/// Public room: columns owner, moderator, member, outsider, banned.
const PUBLIC: [(Action, [Expect; 5]); 18] = [
    (Action::Get, [Y, Y, Y, Y, F]),
    (Action::Delete, [Y, F, F, F, F]),
    (Action::Join, [C, C, C, Y, F]),
    (Action::Leave, [F, Y, Y, F, F]),
    (Action::Invite, [Y, Y, F, F, F]),
    (Action::Kick, [Y, Y, F, F, F]),
    (Action::Ban, [Y, Y, F, F, F]),
    (Action::Unban, [Y, Y, F, F, F]),
    (Action::Role, [Y, F, F, F, F]),
    (Action::Mute, [Y, Y, F, F, F]),
    (Action::Unmute, [Y, Y, F, F, F]),
    (Action::DeleteMessage, [Y, Y, F, F, F]),
    (Action::Audit, [Y, F, F, F, F]),
    (Action::Read, [Y, Y, Y, F, F]),
    (Action::Members, [Y, Y, Y, F, F]),
    (Action::MessagesAfter, [Y, Y, Y, Y, F]),
    (Action::MessagesBefore, [Y, Y, Y, Y, F]),
    (Action::Post, [Y, Y, Y, F, F]),
];

/// Private room: columns owner, moderator, member, outsider, banned.
const PRIVATE: [(Action, [Expect; 5]); 18] = [
    (Action::Get, [Y, Y, Y, N, N]),
    (Action::Delete, [Y, F, F, N, N]),
    (Action::Join, [C, C, C, N, F]),
    (Action::Leave, [F, Y, Y, N, N]),
    (Action::Invite, [Y, Y, F, N, N]),
    (Action::Kick, [Y, Y, F, N, N]),
    (Action::Ban, [Y, Y, F, N, N]),
    (Action::Unban, [Y, Y, F, N, N]),
    (Action::Role, [Y, F, F, N, N]),
    (Action::Mute, [Y, Y, F, N, N]),
    (Action::Unmute, [Y, Y, F, N, N]),
    (Action::DeleteMessage, [Y, Y, F, N, N]),
    (Action::Audit, [Y, F, F, N, N]),
    (Action::Read, [Y, Y, Y, N, N]),
    (Action::Members, [Y, Y, Y, N, N]),
    (Action::MessagesAfter, [Y, Y, Y, N, N]),
    (Action::MessagesBefore, [Y, Y, Y, N, N]),
    (Action::Post, [Y, Y, Y, N, N]),
];

// protocol is silent on roles inside a direct room, assumed here: it holds
// exactly its two users, so what would change its membership or roles
// (invite, kick, ban, role, mute) is refused with some error; deleting or
// leaving it, no-op unban/unmute, audit, a re-join and deleting the other
// one's message are not judged. The sender may delete their own message.
/// Direct room: columns first participant (who opened it and sent message 1),
/// second participant, outsider.
const DIRECT: [(Action, [Expect; 3]); 18] = [
    (Action::Get, [Y, Y, N]),
    (Action::Delete, [O, O, N]),
    (Action::Join, [O, O, N]),
    (Action::Leave, [O, O, N]),
    (Action::Invite, [R, R, N]),
    (Action::Kick, [R, R, N]),
    (Action::Ban, [R, R, N]),
    (Action::Unban, [O, O, N]),
    (Action::Role, [R, R, N]),
    (Action::Mute, [R, R, N]),
    (Action::Unmute, [O, O, N]),
    (Action::DeleteMessage, [Y, O, N]),
    (Action::Audit, [O, O, N]),
    (Action::Read, [Y, Y, N]),
    (Action::Members, [Y, Y, N]),
    (Action::MessagesAfter, [Y, Y, N]),
    (Action::MessagesBefore, [Y, Y, N]),
    (Action::Post, [Y, Y, N]),
];

/// The users of the public and private tables.
struct World {
    owner: User,
    moderator: User,
    member: User,
    outsider: User,
    banned: User,
    victim: User,
    newbie: User,
}

impl World {
    fn actor(&self, actor: Actor) -> &User {
        match actor {
            Actor::Owner => &self.owner,
            Actor::Moderator => &self.moderator,
            Actor::Member => &self.member,
            Actor::Outsider => &self.outsider,
            Actor::Banned => &self.banned,
        }
    }
}

/// Whom an action is aimed at.
struct Targets<'a> {
    victim: &'a str,
    newbie: &'a str,
    banned: &'a str,
    message: u64,
}

/// One cell of a table.
struct Case {
    visibility: Visibility,
    room: String,
    actor_name: String,
    column: String,
    action: Action,
}

async fn perform(http: &Http, room: &str, action: Action, t: &Targets<'_>) -> palaver_client::Result<()> {
    match action {
        Action::Get => http.room(room).await.map(drop),
        Action::Delete => http.delete_room(room).await,
        Action::Join => http.join(room).await.map(drop),
        Action::Leave => http.leave(room).await,
        Action::Invite => http.invite(room, t.newbie).await,
        Action::Kick => http.kick(room, t.victim).await,
        Action::Ban => http.ban(room, t.victim).await,
        Action::Unban => http.unban(room, t.banned).await,
        Action::Role => http.set_role(room, t.victim, "moderator").await,
        Action::Mute => http.mute(room, t.victim, 600).await,
        Action::Unmute => http.unmute(room, t.victim).await,
        Action::DeleteMessage => http.delete_message(room, t.message).await,
        Action::Audit => http.audit(room).await.map(drop),
        Action::Read => http.read(room, 1).await,
        Action::Members => http.members(room).await.map(drop),
        Action::MessagesAfter => http.messages_after(room, 0, None).await.map(drop),
        Action::MessagesBefore => http.messages_before(room, 2, None).await.map(drop),
        Action::Post => http.post_message(room, "hello", "perm-post").await.map(drop),
    }
}

/// Compares what a cell answered with what it expects; `None` when they agree.
fn judge(case: &Case, expected: Expect, got: &palaver_client::Result<()>) -> Option<String> {
    let agrees = match (expected, got) {
        (Expect::Open, _) => true,
        (Expect::Allowed, Ok(())) => true,
        (Expect::Denied(code), Err(e)) => e.code() == code,
        (Expect::Refused, Err(e)) => matches!(e, palaver_client::Error::Api { .. }),
        _ => false,
    };
    if agrees {
        return None;
    }
    let got = match got {
        Ok(()) => "success".to_string(),
        Err(e) => e.to_string(),
    };
    Some(format!(
        "{:?} room, {:?} by {} ({}): expected {expected:?}, got {got}",
        case.visibility, case.action, case.column, case.actor_name
    ))
}

/// Builds a fresh public or private room for one cell and runs it.
async fn check(world: &World, case: Case, expected: Expect, actor: Actor) -> Option<String> {
    let setup = async {
        let owner = &world.owner.http;
        owner.create_room(&case.room, "matrix", case.visibility).await?;
        for u in [&world.moderator, &world.member, &world.banned, &world.victim] {
            if case.visibility == Visibility::Private {
                owner.invite(&case.room, &u.name).await?;
            }
            u.http.join(&case.room).await?;
        }
        owner.set_role(&case.room, &world.moderator.name, "moderator").await?;
        owner.ban(&case.room, &world.banned.name).await?;
        let seq = world.victim.http.post_message(&case.room, "target", "victim-1").await?.seq;
        if case.action == Action::Unmute {
            owner.mute(&case.room, &world.victim.name, 600).await?;
        }
        anyhow::Ok(seq)
    };
    let message = match setup.await {
        Ok(seq) => seq,
        Err(e) => return Some(format!("{:?} room {}: setup failed: {e:#}", case.visibility, case.room)),
    };
    let targets =
        Targets { victim: &world.victim.name, newbie: &world.newbie.name, banned: &world.banned.name, message };
    let got = perform(&world.actor(actor).http, &case.room, case.action, &targets).await;
    judge(&case, expected, &got)
}

fn room_id(prefix: &str, action: Action, column: &str) -> String {
    format!("{prefix}-{action:?}-{column}").to_lowercase()
}

async fn world(node: &Node) -> Result<World> {
    Ok(World {
        owner: node.user("owner").await?,
        moderator: node.user("moder").await?,
        member: node.user("member").await?,
        outsider: node.user("outsider").await?,
        banned: node.user("banned").await?,
        victim: node.user("victim").await?,
        newbie: node.user("newbie").await?,
    })
}

async fn run_table(node: &Node, visibility: Visibility, table: &[(Action, [Expect; 5])]) -> Result<()> {
    let world = world(node).await?;
    let world = &world;
    let mut cases = Vec::new();
    for (action, row) in table {
        for (actor, expected) in ACTORS.iter().zip(row) {
            let column = format!("{actor:?}").to_lowercase();
            let room = room_id(visibility.as_str(), *action, &column);
            let case = Case { visibility, room, actor_name: world.actor(*actor).name.clone(), column, action: *action };
            cases.push((case, *expected, *actor));
        }
    }
    let total = cases.len();
    let failures: Vec<String> = stream::iter(cases)
        .map(|(case, expected, actor)| check(world, case, expected, actor))
        .buffer_unordered(6)
        .filter_map(|r| async move { r })
        .collect()
        .await;
    assert!(failures.is_empty(), "{} of {total} cells differ:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn permission_matrix_public_rooms() -> Result<()> {
    let node = Node::start().await?;
    run_table(&node, Visibility::Public, &PUBLIC).await
}

#[tokio::test]
async fn permission_matrix_private_rooms() -> Result<()> {
    let node = Node::start().await?;
    run_table(&node, Visibility::Private, &PRIVATE).await
}

#[tokio::test]
async fn permission_matrix_direct_rooms() -> Result<()> {
    let node = Node::start().await?;
    let outsider = node.user("outsider").await?;
    let newbie = node.user("newbie").await?;
    let mut failures = Vec::new();
    let mut total = 0;
    // A fresh pair of users per row: a DM room exists once per pair.
    for (i, (action, row)) in DIRECT.iter().enumerate() {
        let a = node.user(&format!("dma{i:02}")).await?;
        let b = node.user(&format!("dmb{i:02}")).await?;
        let room = a.http.dm(&b.name).await?.room;
        assert_eq!(room, format!("dm:{}:{}", a.name, b.name));
        let message = a.http.post_message(&room, "from a", "a-1").await?.seq;
        b.http.post_message(&room, "from b", "b-1").await?;
        let targets = Targets { victim: &b.name, newbie: &newbie.name, banned: &b.name, message };
        let targets_of_b = Targets { victim: &a.name, newbie: &newbie.name, banned: &a.name, message };
        // The outsider first, so a participant's effect cannot hide its answer.
        let order = [(2, &outsider, &targets), (0, &a, &targets), (1, &b, &targets_of_b)];
        for (col, user, t) in order {
            total += 1;
            let column = ["first participant", "second participant", "outsider"][col].to_string();
            let case = Case {
                visibility: Visibility::Direct,
                room: room.clone(),
                actor_name: user.name.clone(),
                column,
                action: *action,
            };
            let got = perform(&user.http, &room, *action, t).await;
            failures.extend(judge(&case, row[col], &got));
        }
    }
    assert!(failures.is_empty(), "{} of {total} cells differ:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

/// One moderation case of the "not above own role" rule.
struct Upward {
    actor: &'static str,
    action: Action,
    target: &'static str,
    expected: Expect,
}

#[tokio::test]
async fn moderation_is_never_aimed_at_an_equal_or_higher_role() -> Result<()> {
    let node = Node::start().await?;
    let users =
        [node.user("boss").await?, node.user("mod1").await?, node.user("mod2").await?, node.user("pleb").await?];
    let by_name = |n: &str| users.iter().find(|u| u.name == n).expect("user of the table");
    let cases = [
        Upward { actor: "mod1", action: Action::Kick, target: "boss", expected: F },
        Upward { actor: "mod1", action: Action::Kick, target: "mod2", expected: F },
        Upward { actor: "mod1", action: Action::Ban, target: "boss", expected: F },
        Upward { actor: "mod1", action: Action::Ban, target: "mod2", expected: F },
        Upward { actor: "mod1", action: Action::Mute, target: "boss", expected: F },
        Upward { actor: "mod1", action: Action::Mute, target: "mod2", expected: F },
        Upward { actor: "mod1", action: Action::Kick, target: "pleb", expected: Y },
        Upward { actor: "mod1", action: Action::Ban, target: "pleb", expected: Y },
        Upward { actor: "mod1", action: Action::Mute, target: "pleb", expected: Y },
        Upward { actor: "boss", action: Action::Kick, target: "mod1", expected: Y },
        Upward { actor: "boss", action: Action::Ban, target: "mod1", expected: Y },
        Upward { actor: "boss", action: Action::Mute, target: "mod1", expected: Y },
        Upward { actor: "pleb", action: Action::Kick, target: "mod1", expected: F },
    ];
    let mut failures = Vec::new();
    for (i, c) in cases.iter().enumerate() {
        let room = format!("up{i}");
        let boss = &by_name("boss").http;
        boss.create_room(&room, "upward", Visibility::Public).await?;
        for n in ["mod1", "mod2", "pleb"] {
            by_name(n).http.join(&room).await?;
        }
        boss.set_role(&room, "mod1", "moderator").await?;
        boss.set_role(&room, "mod2", "moderator").await?;
        let t = Targets { victim: c.target, newbie: "pleb", banned: c.target, message: 1 };
        let got = perform(&by_name(c.actor).http, &room, c.action, &t).await;
        let case = Case {
            visibility: Visibility::Public,
            room,
            actor_name: c.actor.to_string(),
            column: format!("{} on {}", c.actor, c.target),
            action: c.action,
        };
        failures.extend(judge(&case, c.expected, &got));
    }
    assert!(failures.is_empty(), "{} cases differ:\n{}", failures.len(), failures.join("\n"));
    Ok(())
}

#[tokio::test]
async fn an_admin_may_delete_and_audit_any_room() -> Result<()> {
    let node = Node::start().await?;
    let admin = node.admin("admin").await?;
    assert_eq!(admin.http.me().await?.role, "admin");
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    alice.http.create_room("hers", "Hers", Visibility::Private).await?;
    alice.http.create_room("open", "Open", Visibility::Public).await?;
    bob.http.join("open").await?;
    alice.http.kick("open", "bob").await?;
    let audit = admin.http.audit("open").await?;
    assert!(audit.iter().any(|e| e.actor == "alice" && e.target.as_deref() == Some("bob")), "{audit:?}");
    admin.http.audit("hers").await?;
    admin.http.delete_room("hers").await?;
    expect_code(alice.http.room("hers").await, "not_found");
    // A plain user gets neither.
    expect_code(bob.http.audit("open").await, "forbidden");
    expect_code(bob.http.delete_room("open").await, "forbidden");
    Ok(())
}

#[tokio::test]
async fn the_sender_may_delete_their_own_message_and_a_member_no_other() -> Result<()> {
    let node = Node::start().await?;
    let alice = node.user("alice").await?;
    let bob = node.user("bob").await?;
    let carol = node.user("carol").await?;
    alice.http.create_room("pub", "Public", Visibility::Public).await?;
    bob.http.join("pub").await?;
    carol.http.join("pub").await?;
    let mine = bob.http.post_message("pub", "mine", "b1").await?.seq;
    let hers = carol.http.post_message("pub", "hers", "c1").await?.seq;
    expect_code(bob.http.delete_message("pub", hers).await, "forbidden");
    bob.http.delete_message("pub", mine).await?;
    let messages = alice.http.messages_after("pub", 0, None).await?;
    assert!(messages[0].deleted && !messages[1].deleted, "{messages:?}");
    Ok(())
}
