//! Tests of the metadata state machine ([`MetaState::apply`]) and of the
//! permission function ([`crate::permissions::check`]), read against
//! docs/protocol.md §2 (accounts, tokens, tickets) and §3 (rooms).
//!
//! Every state here is built through `apply` only, from commands, the way a
//! node builds it from the Raft log. Each group has one table-driven `check`.

use palaver_protocol::MemberChange;
use palaver_protocol::Role;
use palaver_protocol::UserRole;
use palaver_protocol::Visibility;

use super::*;
use crate::permissions::Action;
use crate::permissions::Denied;
use crate::permissions::Standing;
use crate::permissions::{self};

/// A time well away from zero, so that "before" and "after" both exist.
const T0: u64 = 1_700_000_000_000;
const DAY: u64 = 86_400_000;

/// The reply code a client would see, without the human text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Code {
    Ok,
    NotFound,
    Forbidden,
    Conflict,
    BadRequest,
    Unauthorized,
}

fn code(reply: &MetaReply) -> Code {
    match reply {
        Ok(_) => Code::Ok,
        Err(MetaError::NotFound(_)) => Code::NotFound,
        Err(MetaError::Forbidden(_)) => Code::Forbidden,
        Err(MetaError::Conflict(_)) => Code::Conflict,
        Err(MetaError::BadRequest(_)) => Code::BadRequest,
        Err(MetaError::Unauthorized) => Code::Unauthorized,
    }
}

/// Token and ticket hashes, named by a small number.
fn tok(n: u8) -> TokenHash {
    [n; 32]
}

fn run(state: &mut MetaState, now: u64, cmd: MetaCommand) -> (MetaReply, Vec<MetaEffect>) {
    let mut effects = Vec::new();
    let reply = state.apply(&MetaRequest { now, cmd }, &mut effects);
    (reply, effects)
}

/// Applies commands that must all succeed (building a fixture).
fn build(state: &mut MetaState, reqs: &[MetaRequest]) {
    for req in reqs {
        let reply = state.apply(req, &mut Vec::new());
        assert!(reply.is_ok(), "fixture command {req} was refused: {reply:?}");
    }
}

/// Stamps commands with consecutive times from `start`.
fn at(start: u64, cmds: Vec<MetaCommand>) -> Vec<MetaRequest> {
    (start..).zip(cmds).map(|(now, cmd)| MetaRequest { now, cmd }).collect()
}

fn register(username: &str) -> MetaCommand {
    MetaCommand::Register { username: username.into(), password_hash: format!("$argon2id$test${username}") }
}

fn login(username: &str, token: u8, expires_at: u64, idle_ms: u64) -> MetaCommand {
    MetaCommand::Login { username: username.into(), token_hash: tok(token), expires_at, idle_ms }
}

fn touch(token: u8) -> MetaCommand {
    MetaCommand::Touch { token_hash: tok(token) }
}

fn logout(token: u8) -> MetaCommand {
    MetaCommand::Logout { token_hash: tok(token) }
}

fn issue(ticket: u8, token: u8, expires_at: u64) -> MetaCommand {
    MetaCommand::IssueTicket { ticket_hash: tok(ticket), token_hash: tok(token), expires_at }
}

fn redeem(ticket: u8) -> MetaCommand {
    MetaCommand::RedeemTicket { ticket_hash: tok(ticket) }
}

fn create(actor: &str, room: &str, visibility: Visibility) -> MetaCommand {
    MetaCommand::CreateRoom {
        actor: actor.into(),
        room: room.into(),
        title: format!("The {room}"),
        visibility,
        owner_node: 1,
    }
}

fn open_direct(actor: &str, peer: &str) -> MetaCommand {
    MetaCommand::OpenDirect { actor: actor.into(), peer: peer.into(), owner_node: 2 }
}

fn room(actor: &str, room: &str, op: RoomOp) -> MetaCommand {
    MetaCommand::Room { actor: actor.into(), room: room.into(), op }
}

fn invite(t: &str) -> RoomOp {
    RoomOp::Invite(t.into())
}

fn kick(t: &str) -> RoomOp {
    RoomOp::Kick(t.into())
}

fn ban(t: &str) -> RoomOp {
    RoomOp::Ban(t.into())
}

fn unban(t: &str) -> RoomOp {
    RoomOp::Unban(t.into())
}

fn set_role(t: &str, role: Role) -> RoomOp {
    RoomOp::SetRole(t.into(), role)
}

fn mute(t: &str, until: u64) -> RoomOp {
    RoomOp::Mute(t.into(), until)
}

fn unmute(t: &str) -> RoomOp {
    RoomOp::Unmute(t.into())
}

// The shared fixture: one room of each visibility and a user in each standing.

const LOBBY: &str = "lobby";
const STAFF: &str = "staff";
const DM: &str = "dm:member:target";

/// `root` registers first (the admin) and belongs to no room. In `lobby`
/// (public) and `staff` (private) `owner` owns, `moder` and `moder2` moderate,
/// `member` and `target` are members, `invited` has a pending invite, `banned`
/// was a member and is banned, `outsider` and `fresh` have nothing to do with
/// either. `dm:member:target` is the direct room of `member` and `target`.
const USERS: [&str; 10] =
    ["root", "owner", "moder", "moder2", "member", "target", "outsider", "invited", "banned", "fresh"];

fn fixture_commands() -> Vec<MetaRequest> {
    let mut cmds: Vec<MetaCommand> = USERS.into_iter().map(register).collect();
    for (id, visibility) in [(LOBBY, Visibility::Public), (STAFF, Visibility::Private)] {
        cmds.push(create("owner", id, visibility));
        for u in ["moder", "moder2", "member", "target", "banned"] {
            cmds.push(room("owner", id, invite(u)));
            cmds.push(room(u, id, RoomOp::Join));
        }
        for u in ["moder", "moder2"] {
            cmds.push(room("owner", id, set_role(u, Role::Moderator)));
        }
        cmds.push(room("owner", id, ban("banned")));
        cmds.push(room("owner", id, invite("invited")));
    }
    cmds.push(open_direct("member", "target"));
    at(T0, cmds)
}

fn fixture() -> MetaState {
    let mut state = MetaState::default();
    build(&mut state, &fixture_commands());
    state
}

/// When the tables act: after every fixture command.
const NOW: u64 = T0 + 1_000;

fn room_of<'a>(state: &'a MetaState, id: &str) -> &'a Room {
    state.rooms.get(id).expect("the room exists")
}

mod fixture {
    use super::*;

    fn check(cases: &[(&str, &str, Standing)]) {
        let state = fixture();
        for (room_id, user, expected) in cases {
            assert_eq!(room_of(&state, room_id).standing(user), *expected, "{user} in {room_id}");
        }
    }

    #[test]
    fn the_fixture_has_a_user_in_every_standing() {
        let out = Standing::Outsider { invited: false };
        for id in [LOBBY, STAFF] {
            check(&[
                (id, "owner", Standing::Member(Role::Owner)),
                (id, "moder", Standing::Member(Role::Moderator)),
                (id, "moder2", Standing::Member(Role::Moderator)),
                (id, "member", Standing::Member(Role::Member)),
                (id, "target", Standing::Member(Role::Member)),
                (id, "invited", Standing::Outsider { invited: true }),
                (id, "banned", Standing::Banned),
                (id, "outsider", out),
                (id, "root", out),
            ]);
        }
        check(&[
            (DM, "member", Standing::Member(Role::Member)),
            (DM, "target", Standing::Member(Role::Member)),
            (DM, "owner", out),
            (DM, "root", out),
        ]);
        let state = fixture();
        assert!(state.is_admin("root"));
        assert_eq!(room_of(&state, LOBBY).info.visibility, Visibility::Public);
        assert_eq!(room_of(&state, STAFF).info.visibility, Visibility::Private);
        assert_eq!(room_of(&state, DM).info.visibility, Visibility::Direct);
    }
}

/// §2: registration.
mod accounts {
    use super::*;

    /// Registers in order; each step's reply, then the account's stored role.
    fn check(steps: &[(&str, Result<UserRole, Code>)]) {
        let mut state = MetaState::default();
        for (i, (name, expected)) in (0u64..).zip(steps) {
            let before = state.users.get(*name).cloned();
            let (reply, effects) = run(&mut state, T0 + i, register(name));
            assert!(effects.is_empty(), "register {name}: {effects:?}");
            match expected {
                Ok(role) => {
                    assert_eq!(reply, Ok(MetaOk::Registered(*role)), "register {name}");
                    let user = state.users.get(*name).expect("registered");
                    assert_eq!(user.role, *role, "{name}'s stored role");
                    assert_eq!(user.created_at, T0 + i, "{name}'s creation time");
                    assert_eq!(state.is_admin(name), *role == UserRole::Admin, "is_admin({name})");
                }
                Err(c) => {
                    assert_eq!(code(&reply), *c, "register {name}: {reply:?}");
                    assert_eq!(state.users.get(*name).cloned(), before, "a refused register changed {name}");
                }
            }
        }
    }

    #[test]
    fn the_first_account_is_admin_and_later_ones_are_users() {
        check(&[("alice", Ok(UserRole::Admin)), ("bob", Ok(UserRole::User)), ("carol", Ok(UserRole::User))]);
    }

    #[test]
    fn a_taken_username_is_a_conflict_and_keeps_the_first_account() {
        check(&[
            ("alice", Ok(UserRole::Admin)),
            ("alice", Err(Code::Conflict)),
            ("bob", Ok(UserRole::User)),
            ("bob", Err(Code::Conflict)),
            ("alice", Err(Code::Conflict)),
        ]);
    }
}

/// §1–§2: tokens (idle and absolute lifetime), logout, tickets.
mod sessions {
    use super::*;

    enum Step {
        /// Apply a command at a time: the reply code and the sessions it ends.
        Apply(u64, MetaCommand, Code, &'static [u8]),
        /// Whether a token works at a time.
        Valid(u64, u8, bool),
        /// What redeeming a ticket at a time answers: whose session, or refused.
        Redeem(u64, u8, Option<(&'static str, u8)>),
        /// Exactly these sessions and tickets are stored.
        Stored(&'static [u8], &'static [u8]),
    }
    use Step::*;

    /// Runs the steps against a state where `alice` and `bob` have accounts.
    fn check(steps: &[Step]) {
        let mut state = MetaState::default();
        build(&mut state, &at(T0 - 10, vec![register("alice"), register("bob")]));
        for (i, step) in steps.iter().enumerate() {
            match step {
                Apply(now, cmd, expected, ended) => {
                    let (reply, effects) = run(&mut state, *now, cmd.clone());
                    assert_eq!(code(&reply), *expected, "step {i}: {cmd:?} at {now}: {reply:?}");
                    let ended: Vec<MetaEffect> =
                        ended.iter().map(|t| MetaEffect::SessionEnded { token_hash: tok(*t) }).collect();
                    assert_eq!(effects, ended, "step {i}: effects of {cmd:?}");
                }
                Valid(now, token, expected) => {
                    assert_eq!(
                        state.session(&tok(*token), *now).is_some(),
                        *expected,
                        "step {i}: token {token} at {now}"
                    );
                }
                Redeem(now, ticket, expected) => {
                    let (reply, effects) = run(&mut state, *now, redeem(*ticket));
                    let expected = match expected {
                        Some((username, token)) => {
                            Ok(MetaOk::Redeemed { username: username.to_string(), token_hash: tok(*token) })
                        }
                        None => Err(MetaError::Unauthorized),
                    };
                    assert_eq!(reply, expected, "step {i}: ticket {ticket} at {now}");
                    assert!(effects.is_empty(), "step {i}: redeeming has no effects: {effects:?}");
                }
                Stored(sessions, tickets) => {
                    let have: Vec<TokenHash> = state.sessions.keys().copied().collect();
                    let want: Vec<TokenHash> = sessions.iter().map(|t| tok(*t)).collect();
                    assert_eq!(have, want, "step {i}: stored sessions");
                    let have: Vec<TokenHash> = state.tickets.keys().copied().collect();
                    let want: Vec<TokenHash> = tickets.iter().map(|t| tok(*t)).collect();
                    assert_eq!(have, want, "step {i}: stored tickets");
                }
            }
        }
    }

    #[test]
    fn a_session_is_valid_before_both_its_absolute_and_idle_ends() {
        let session = |last_seen: u64| Session {
            username: "alice".into(),
            created_at: T0,
            expires_at: T0 + 1_000,
            last_seen,
            idle_ms: 300,
        };
        for (last_seen, now, expected) in [
            (T0, T0, true),
            (T0, T0 + 299, true),
            (T0, T0 + 300, false),
            (T0 + 800, T0 + 999, true),
            (T0 + 800, T0 + 1_000, false),
            (T0 + 800, T0 + 1_050, false),
            // Another node's clock may lag behind the last recorded use.
            (T0 + 800, T0 + 700, true),
        ] {
            assert_eq!(session(last_seen).valid_at(now), expected, "last seen {last_seen}, now {now}");
        }
    }

    #[test]
    fn login_needs_an_account() {
        check(&[
            Apply(T0, login("mallory", 1, T0 + 1_000, 500), Code::Unauthorized, &[]),
            Stored(&[], &[]),
            Apply(T0, login("alice", 2, T0 + 1_000, 500), Code::Ok, &[]),
            Stored(&[2], &[]),
            Valid(T0, 2, true),
            Valid(T0, 1, false),
        ]);
        let mut state = MetaState::default();
        build(&mut state, &at(T0, vec![register("alice"), login("alice", 7, T0 + 1_000, 500)]));
        let expected = Session {
            username: "alice".into(),
            created_at: T0 + 1,
            expires_at: T0 + 1_000,
            last_seen: T0 + 1,
            idle_ms: 500,
        };
        assert_eq!(state.sessions.get(&tok(7)), Some(&expected));
    }

    #[test]
    fn an_unused_token_expires_after_its_idle_time() {
        check(&[
            Apply(T0, login("alice", 1, T0 + 10_000, 500), Code::Ok, &[]),
            Valid(T0 + 499, 1, true),
            Valid(T0 + 500, 1, false),
            Apply(T0 + 500, touch(1), Code::Unauthorized, &[]),
            Valid(T0 + 499, 1, true),
        ]);
    }

    #[test]
    fn touch_extends_idle_life_but_never_absolute_life() {
        check(&[
            Apply(T0, login("alice", 1, T0 + 1_000, 500), Code::Ok, &[]),
            Apply(T0 + 400, touch(1), Code::Ok, &[]),
            Valid(T0 + 899, 1, true),
            Apply(T0 + 800, touch(1), Code::Ok, &[]),
            // A late touch proposed with an older clock does not move last use back.
            Apply(T0 + 600, touch(1), Code::Ok, &[]),
            Valid(T0 + 999, 1, true),
            Valid(T0 + 1_000, 1, false),
            Apply(T0 + 1_000, touch(1), Code::Unauthorized, &[]),
            Apply(T0, touch(9), Code::Unauthorized, &[]),
        ]);
        let mut state = MetaState::default();
        build(&mut state, &at(T0, vec![register("alice"), login("alice", 1, T0 + 1_000, 500)]));
        build(
            &mut state,
            &[MetaRequest { now: T0 + 400, cmd: touch(1) }, MetaRequest { now: T0 + 300, cmd: touch(1) }],
        );
        assert_eq!(state.sessions.get(&tok(1)).map(|s| s.last_seen), Some(T0 + 400));
    }

    #[test]
    fn logout_ends_the_session_everywhere_and_its_tickets() {
        check(&[
            Apply(T0, login("alice", 1, T0 + 10_000, 5_000), Code::Ok, &[]),
            Apply(T0, login("alice", 2, T0 + 10_000, 5_000), Code::Ok, &[]),
            Apply(T0 + 1, issue(11, 1, T0 + 60_000), Code::Ok, &[]),
            Apply(T0 + 1, issue(12, 2, T0 + 60_000), Code::Ok, &[]),
            Apply(T0 + 2, logout(1), Code::Ok, &[1]),
            Valid(T0 + 2, 1, false),
            Valid(T0 + 2, 2, true),
            Stored(&[2], &[12]),
            Apply(T0 + 3, logout(1), Code::Unauthorized, &[]),
            Apply(T0 + 3, touch(1), Code::Unauthorized, &[]),
            Apply(T0 + 3, logout(9), Code::Unauthorized, &[]),
        ]);
    }

    #[test]
    fn sweep_drops_expired_sessions_and_tickets() {
        check(&[
            // 1 reaches its absolute end, 2 its idle end; 3 lives on.
            Apply(T0, login("alice", 1, T0 + 100, 10_000), Code::Ok, &[]),
            Apply(T0, login("bob", 2, T0 + 10_000, 100), Code::Ok, &[]),
            Apply(T0, login("bob", 3, T0 + 10_000, 10_000), Code::Ok, &[]),
            // 11 belongs to a session that expires, 12 expires itself, 13 lives on.
            Apply(T0, issue(11, 1, T0 + 5_000), Code::Ok, &[]),
            Apply(T0, issue(12, 3, T0 + 100), Code::Ok, &[]),
            Apply(T0, issue(13, 3, T0 + 5_000), Code::Ok, &[]),
            Apply(T0 + 99, MetaCommand::Sweep, Code::Ok, &[]),
            Stored(&[1, 2, 3], &[11, 12, 13]),
            Apply(T0 + 100, MetaCommand::Sweep, Code::Ok, &[1, 2]),
            Stored(&[3], &[13]),
            Apply(T0 + 101, MetaCommand::Sweep, Code::Ok, &[]),
            Stored(&[3], &[13]),
        ]);
    }

    #[test]
    fn a_ticket_needs_a_valid_session() {
        check(&[
            Apply(T0, issue(11, 1, T0 + 60_000), Code::Unauthorized, &[]),
            Apply(T0, login("alice", 1, T0 + 1_000, 500), Code::Ok, &[]),
            Apply(T0 + 500, issue(11, 1, T0 + 60_000), Code::Unauthorized, &[]),
            Stored(&[1], &[]),
            Apply(T0 + 499, issue(11, 1, T0 + 60_000), Code::Ok, &[]),
            Stored(&[1], &[11]),
        ]);
    }

    #[test]
    fn a_ticket_works_once() {
        check(&[
            Apply(T0, login("bob", 1, T0 + 100_000, 100_000), Code::Ok, &[]),
            Apply(T0, issue(11, 1, T0 + 60_000), Code::Ok, &[]),
            Redeem(T0 + 1, 11, Some(("bob", 1))),
            Redeem(T0 + 2, 11, None),
            Stored(&[1], &[]),
            Redeem(T0 + 2, 99, None),
        ]);
    }

    #[test]
    fn a_ticket_fails_after_its_expiry() {
        check(&[
            Apply(T0, login("bob", 1, T0 + 100_000, 100_000), Code::Ok, &[]),
            Apply(T0, issue(11, 1, T0 + 60_000), Code::Ok, &[]),
            Apply(T0, issue(12, 1, T0 + 60_000), Code::Ok, &[]),
            Redeem(T0 + 60_000, 11, None),
            Redeem(T0 + 59_999, 12, Some(("bob", 1))),
        ]);
    }

    #[test]
    fn a_ticket_fails_after_its_session_ends() {
        check(&[
            Apply(T0, login("alice", 1, T0 + 100_000, 100_000), Code::Ok, &[]),
            Apply(T0, login("bob", 2, T0 + 1_000, 100_000), Code::Ok, &[]),
            Apply(T0, issue(11, 1, T0 + 60_000), Code::Ok, &[]),
            Apply(T0, issue(12, 2, T0 + 60_000), Code::Ok, &[]),
            Apply(T0 + 1, logout(1), Code::Ok, &[1]),
            Redeem(T0 + 2, 11, None),
            // Expired but not yet swept: the ticket still must not work.
            Redeem(T0 + 1_000, 12, None),
        ]);
    }
}

/// §3: making rooms, direct rooms, log placement.
mod rooms {
    use super::*;

    /// A command, and the id and key of the room it answers (or its code).
    type Step = (MetaCommand, Result<(&'static str, u64), Code>);

    /// Creates, deletes and opens rooms in order on a state with users
    /// `alice`, `bob`, `carol`; each step expects the room's id and key, or a code.
    fn check(steps: &[Step]) {
        let mut state = MetaState::default();
        build(&mut state, &at(T0 - 10, vec![register("alice"), register("bob"), register("carol")]));
        for (i, (cmd, expected)) in (0u64..).zip(steps) {
            let before = state.clone();
            let (reply, effects) = run(&mut state, T0 + i, cmd.clone());
            match (expected, &reply) {
                (Ok((id, key)), Ok(MetaOk::Room(info))) => {
                    assert_eq!((info.id.as_str(), info.key), (*id, *key), "step {i}: {cmd:?}");
                    assert_eq!(&room_of(&state, id).info, info, "step {i}: the reply is the stored room");
                }
                (Ok((id, _)), Ok(MetaOk::Done)) => {
                    assert!(matches!(cmd, MetaCommand::Room { op: RoomOp::Delete, .. }), "step {i}: {cmd:?}");
                    assert!(!state.rooms.contains_key(*id), "step {i}: {id} still exists after its deletion");
                }
                (Err(c), _) => {
                    assert_eq!(code(&reply), *c, "step {i}: {cmd:?}: {reply:?}");
                    assert_eq!(state, before, "step {i}: a refusal changed the state");
                    assert!(effects.is_empty(), "step {i}: a refusal had effects");
                }
                _ => panic!("step {i}: {cmd:?} answered {reply:?}, expected {expected:?}"),
            }
        }
    }

    #[test]
    fn create_room_makes_the_creator_its_owner() {
        let mut state = MetaState::default();
        build(&mut state, &at(T0, vec![register("alice")]));
        let (reply, effects) = run(&mut state, T0 + 5, create("alice", "general", Visibility::Private));
        let info = RoomInfo {
            id: "general".into(),
            key: 1,
            title: "The general".into(),
            visibility: Visibility::Private,
            owner: "alice".into(),
            created_at: T0 + 5,
            owner_node: 1,
            epoch: 1,
        };
        assert_eq!(reply, Ok(MetaOk::Room(info.clone())));
        assert!(effects.is_empty(), "{effects:?}");
        let r = room_of(&state, "general");
        assert_eq!(r.info, info);
        let members: Vec<(&str, Role, u64)> = r.members.iter().map(|(n, m)| (n.as_str(), m.role, m.read_seq)).collect();
        assert_eq!(members, [("alice", Role::Owner, 0)]);
        assert!(r.invites.is_empty() && r.bans.is_empty() && r.mutes.is_empty() && r.audit.is_empty());
    }

    #[test]
    fn room_keys_increase_and_a_recreated_room_gets_a_new_key() {
        check(&[
            (create("alice", "a", Visibility::Public), Ok(("a", 1))),
            (create("bob", "b", Visibility::Private), Ok(("b", 2))),
            (room("alice", "a", RoomOp::Delete), Ok(("a", 1))),
            (create("carol", "a", Visibility::Public), Ok(("a", 3))),
            (open_direct("alice", "bob"), Ok(("dm:alice:bob", 4))),
            (room("root", "dm:alice:bob", RoomOp::Delete), Err(Code::NotFound)),
            (create("bob", "c", Visibility::Public), Ok(("c", 5))),
        ]);
    }

    #[test]
    fn create_room_refuses_a_taken_id_and_direct_visibility() {
        check(&[
            (create("alice", "a", Visibility::Public), Ok(("a", 1))),
            (create("alice", "a", Visibility::Public), Err(Code::Conflict)),
            (create("bob", "a", Visibility::Private), Err(Code::Conflict)),
            (create("bob", "d", Visibility::Direct), Err(Code::BadRequest)),
            (create("bob", "d", Visibility::Public), Ok(("d", 2))),
        ]);
    }

    #[test]
    fn open_direct_makes_one_room_per_pair_whoever_asks() {
        check(&[
            (open_direct("bob", "alice"), Ok(("dm:alice:bob", 1))),
            (open_direct("alice", "bob"), Ok(("dm:alice:bob", 1))),
            (open_direct("bob", "alice"), Ok(("dm:alice:bob", 1))),
            (open_direct("carol", "alice"), Ok(("dm:alice:carol", 2))),
            (open_direct("alice", "carol"), Ok(("dm:alice:carol", 2))),
            (open_direct("alice", "mallory"), Err(Code::NotFound)),
            (open_direct("alice", "alice"), Err(Code::BadRequest)),
            (open_direct("carol", "bob"), Ok(("dm:bob:carol", 3))),
        ]);
    }

    #[test]
    fn a_direct_room_has_both_users_as_plain_members() {
        let mut state = MetaState::default();
        build(&mut state, &at(T0, vec![register("alice"), register("bob"), open_direct("bob", "alice")]));
        let r = room_of(&state, "dm:alice:bob");
        assert_eq!(r.info.visibility, Visibility::Direct);
        assert_eq!(r.info.owner, "bob");
        let members: Vec<(&str, Role)> = r.members.iter().map(|(n, m)| (n.as_str(), m.role)).collect();
        assert_eq!(members, [("alice", Role::Member), ("bob", Role::Member)]);
        assert_eq!(direct_room_id("zed", "amy"), "dm:amy:zed");
        assert_eq!(direct_room_id("amy", "zed"), "dm:amy:zed");
    }

    #[test]
    fn assign_room_moves_the_log_only_to_a_newer_epoch() {
        let mut state = fixture();
        let key = room_of(&state, LOBBY).info.key;
        for (room_id, node, epoch, expected) in [
            (LOBBY, 3, 1, Err(Code::Conflict)),
            (LOBBY, 3, 2, Ok(())),
            (LOBBY, 4, 2, Err(Code::Conflict)),
            (LOBBY, 4, 7, Ok(())),
            (LOBBY, 5, 6, Err(Code::Conflict)),
            ("nowhere", 5, 9, Err(Code::NotFound)),
        ] {
            let before = room_of(&state, LOBBY).info.clone();
            let cmd = MetaCommand::AssignRoom { room: room_id.into(), owner_node: node, epoch };
            let (reply, effects) = run(&mut state, NOW, cmd);
            let info = room_of(&state, LOBBY).info.clone();
            match expected {
                Ok(()) => {
                    assert_eq!((info.owner_node, info.epoch), (node, epoch));
                    assert_eq!(reply, Ok(MetaOk::Room(info)));
                    let assigned =
                        MetaEffect::RoomAssigned { room: LOBBY.into(), room_key: key, owner_node: node, epoch };
                    assert_eq!(effects, [assigned]);
                }
                Err(c) => {
                    assert_eq!(code(&reply), c, "{room_id} to node {node} at epoch {epoch}");
                    assert_eq!(info, before, "a refused assignment moved the room");
                    assert!(effects.is_empty());
                }
            }
        }
    }
}

/// §3: who may do what, through `apply`, for every standing and every room op.
mod matrix {
    use super::*;

    const OK: Code = Code::Ok;
    /// not_found: the room must look absent.
    const NF: Code = Code::NotFound;
    /// forbidden.
    const FB: Code = Code::Forbidden;
    /// conflict.
    const CF: Code = Code::Conflict;

    /// Every room op, each aimed at a target it would succeed on for the owner.
    fn ops() -> [RoomOp; 12] {
        [
            RoomOp::Delete,
            RoomOp::Join,
            RoomOp::Leave,
            invite("fresh"),
            kick("target"),
            ban("target"),
            unban("banned"),
            set_role("target", Role::Moderator),
            mute("target", NOW + 60_000),
            unmute("target"),
            RoomOp::MarkRead(3),
            RoomOp::AuditDelete { sender: "target".into(), seq: 3 },
        ]
    }

    /// Each row: an actor, a room, and the expected code of each op in
    /// [`ops`] order, each applied alone to a fresh copy of the fixture.
    /// Refusals change nothing and have no effects; `not_found` says only
    /// that the room is not found; every accepted op changes the state.
    fn check(rows: &[(&str, &str, [Code; 12])]) {
        let base = fixture();
        for (actor, room_id, expected) in rows {
            for (op, want) in ops().into_iter().zip(expected) {
                let ctx = format!("{actor} doing {op:?} in {room_id}");
                let mut state = base.clone();
                let (reply, effects) = run(&mut state, NOW, room(actor, room_id, op));
                assert_eq!(code(&reply), *want, "{ctx}: {reply:?}");
                match reply {
                    Err(e) => {
                        assert_eq!(state, base, "{ctx}: a refusal changed the state");
                        assert!(effects.is_empty(), "{ctx}: a refusal had effects: {effects:?}");
                        if *want == NF {
                            assert_eq!(e, MetaError::NotFound(format!("room {room_id}")), "{ctx}");
                        }
                    }
                    Ok(_) => assert_ne!(state, base, "{ctx}: accepted but changed nothing"),
                }
            }
        }
    }

    #[test]
    fn public_room_anyone_may_join_only_owner_and_moderators_moderate() {
        #[rustfmt::skip]
        check(&[
            // delete, join, leave, invite, kick, ban, unban, role, mute, unmute, read, audit_delete
            ("owner",    LOBBY, [OK, CF, FB, OK, OK, OK, OK, OK, OK, OK, OK, OK]),
            ("moder",    LOBBY, [FB, CF, OK, OK, OK, OK, OK, FB, OK, OK, OK, OK]),
            ("member",   LOBBY, [FB, CF, OK, FB, FB, FB, FB, FB, FB, FB, OK, FB]),
            ("outsider", LOBBY, [FB, OK, FB, FB, FB, FB, FB, FB, FB, FB, FB, FB]),
            ("invited",  LOBBY, [FB, OK, FB, FB, FB, FB, FB, FB, FB, FB, FB, FB]),
            ("banned",   LOBBY, [FB, FB, FB, FB, FB, FB, FB, FB, FB, FB, FB, FB]),
            ("root",     LOBBY, [OK, OK, FB, FB, FB, FB, FB, FB, FB, FB, FB, FB]),
        ]);
    }

    #[test]
    fn private_room_is_not_found_for_everyone_but_members_and_an_invited_join() {
        #[rustfmt::skip]
        check(&[
            // delete, join, leave, invite, kick, ban, unban, role, mute, unmute, read, audit_delete
            ("owner",    STAFF, [OK, CF, FB, OK, OK, OK, OK, OK, OK, OK, OK, OK]),
            ("moder",    STAFF, [FB, CF, OK, OK, OK, OK, OK, FB, OK, OK, OK, OK]),
            ("member",   STAFF, [FB, CF, OK, FB, FB, FB, FB, FB, FB, FB, OK, FB]),
            ("outsider", STAFF, [NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF]),
            ("invited",  STAFF, [NF, OK, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF]),
            ("banned",   STAFF, [NF, FB, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF]),
            ("root",     STAFF, [OK, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF]),
        ]);
    }

    #[test]
    fn direct_room_has_two_members_no_moderation_and_is_hidden_from_others() {
        #[rustfmt::skip]
        check(&[
            // delete, join, leave, invite, kick, ban, unban, role, mute, unmute, read, audit_delete
            ("member",   DM, [FB, CF, FB, FB, FB, FB, FB, FB, FB, FB, OK, FB]),
            ("target",   DM, [FB, CF, FB, FB, FB, FB, FB, FB, FB, FB, OK, FB]),
            ("owner",    DM, [NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF]),
            ("outsider", DM, [NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF]),
            ("root",     DM, [OK, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF]),
        ]);
    }

    #[test]
    fn an_unknown_room_is_not_found_even_for_its_would_be_owner_or_the_admin() {
        #[rustfmt::skip]
        check(&[
            // delete, join, leave, invite, kick, ban, unban, role, mute, unmute, read, audit_delete
            ("owner",   "nowhere", [NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF]),
            ("root",    "nowhere", [NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF, NF]),
        ]);
    }
}

/// §3: "any moderation action by a member without the role, or aimed at a
/// member of equal or higher role" is forbidden; targets must exist.
mod ranks {
    use super::*;

    /// Each row applied alone to a fresh copy of the fixture.
    fn check(rows: &[(&str, &str, RoomOp, Code)]) {
        let base = fixture();
        for (actor, room_id, op, expected) in rows {
            let mut state = base.clone();
            let (reply, effects) = run(&mut state, NOW, room(actor, room_id, op.clone()));
            let ctx = format!("{actor} doing {op:?} in {room_id}");
            assert_eq!(code(&reply), *expected, "{ctx}: {reply:?}");
            if reply.is_err() {
                assert_eq!(state, base, "{ctx}: a refusal changed the state");
                assert!(effects.is_empty(), "{ctx}: a refusal had effects");
            }
        }
    }

    #[test]
    fn moderation_aimed_at_an_equal_or_higher_role_is_forbidden() {
        for id in [LOBBY, STAFF] {
            check(&[
                ("moder", id, kick("moder2"), Code::Forbidden),
                ("moder", id, kick("owner"), Code::Forbidden),
                ("moder", id, kick("moder"), Code::Forbidden),
                ("moder", id, ban("moder2"), Code::Forbidden),
                ("moder", id, ban("owner"), Code::Forbidden),
                ("moder", id, ban("moder"), Code::Forbidden),
                ("moder", id, mute("moder2", NOW + 1_000), Code::Forbidden),
                ("moder", id, mute("owner", NOW + 1_000), Code::Forbidden),
                ("moder", id, unmute("moder2"), Code::Forbidden),
                ("moder", id, unmute("owner"), Code::Forbidden),
                ("moder", id, set_role("member", Role::Moderator), Code::Forbidden),
                ("moder", id, set_role("moder2", Role::Member), Code::Forbidden),
                ("owner", id, kick("owner"), Code::Forbidden),
                ("owner", id, ban("owner"), Code::Forbidden),
                ("owner", id, mute("owner", NOW + 1_000), Code::Forbidden),
                ("owner", id, set_role("owner", Role::Member), Code::Forbidden),
                ("member", id, kick("target"), Code::Forbidden),
                ("member", id, ban("target"), Code::Forbidden),
                ("member", id, mute("target", NOW + 1_000), Code::Forbidden),
                ("member", id, set_role("member", Role::Moderator), Code::Forbidden),
            ]);
        }
    }

    #[test]
    fn the_owner_may_moderate_moderators() {
        for id in [LOBBY, STAFF] {
            check(&[
                ("owner", id, kick("moder"), Code::Ok),
                ("owner", id, ban("moder"), Code::Ok),
                ("owner", id, mute("moder", NOW + 1_000), Code::Ok),
                ("owner", id, unmute("moder"), Code::Ok),
                ("owner", id, set_role("moder", Role::Member), Code::Ok),
                ("owner", id, set_role("target", Role::Owner), Code::Ok),
                ("moder", id, kick("member"), Code::Ok),
                ("moder", id, ban("outsider"), Code::Ok),
            ]);
        }
    }

    #[test]
    fn moderation_needs_a_target_that_exists_where_it_must() {
        for id in [LOBBY, STAFF] {
            check(&[
                ("owner", id, kick("outsider"), Code::NotFound),
                ("owner", id, kick("banned"), Code::NotFound),
                ("owner", id, mute("outsider", NOW + 1_000), Code::NotFound),
                ("owner", id, unmute("outsider"), Code::NotFound),
                ("owner", id, set_role("outsider", Role::Moderator), Code::NotFound),
                ("owner", id, set_role("invited", Role::Moderator), Code::NotFound),
                ("owner", id, ban("ghost"), Code::NotFound),
                ("owner", id, invite("ghost"), Code::NotFound),
                ("owner", id, unban("member"), Code::NotFound),
                ("owner", id, unban("ghost"), Code::NotFound),
                ("owner", id, invite("member"), Code::Conflict),
                ("owner", id, invite("banned"), Code::Conflict),
                ("owner", id, invite("invited"), Code::Ok),
                ("owner", id, ban("invited"), Code::Ok),
                // docs/protocol.md: a repeated ban succeeds (and is audited again).
                ("owner", id, ban("banned"), Code::Ok),
            ]);
        }
    }
}

/// §3: "Non-members of a private or direct room get `not_found`, never its
/// contents": a refusal must look exactly like the room not existing.
mod hiding {
    use super::*;

    fn check(rows: &[(&str, &str, RoomOp)]) {
        let base = fixture();
        for (actor, room_id, op) in rows {
            let cmd = room(actor, room_id, op.clone());
            let (hidden, _) = run(&mut base.clone(), NOW, cmd.clone());
            let mut absent = base.clone();
            absent.rooms.remove(*room_id);
            let (gone, _) = run(&mut absent, NOW, cmd);
            assert_eq!(code(&hidden), Code::NotFound, "{actor} doing {op:?} in {room_id}: {hidden:?}");
            assert_eq!(hidden, gone, "{actor} doing {op:?} in {room_id} tells the room exists");
        }
    }

    #[test]
    fn refusals_in_hidden_rooms_say_nothing_about_the_room_or_its_users() {
        for (actor, id) in
            [("outsider", STAFF), ("banned", STAFF), ("invited", STAFF), ("root", STAFF), ("owner", DM), ("root", DM)]
        {
            check(&[
                (actor, id, RoomOp::Leave),
                (actor, id, invite("ghost")),
                (actor, id, invite("member")),
                (actor, id, ban("ghost")),
                (actor, id, ban("member")),
                (actor, id, kick("ghost")),
                (actor, id, kick("target")),
                (actor, id, unban("ghost")),
                (actor, id, unban("banned")),
                (actor, id, set_role("ghost", Role::Owner)),
                (actor, id, mute("target", NOW + 1)),
                (actor, id, RoomOp::MarkRead(1)),
            ]);
        }
        check(&[
            ("outsider", STAFF, RoomOp::Join),
            ("root", STAFF, RoomOp::Join),
            ("owner", DM, RoomOp::Join),
            ("invited", DM, RoomOp::Join),
        ]);
    }
}

/// §3: joining again after a kick or a ban, in order.
mod membership {
    use super::*;

    /// Applies the steps in order to one copy of the fixture.
    fn check(steps: &[(&str, &str, RoomOp, Code)]) {
        let mut state = fixture();
        for (i, (actor, room_id, op, expected)) in (0u64..).zip(steps) {
            let (reply, _) = run(&mut state, NOW + i, room(actor, room_id, op.clone()));
            assert_eq!(code(&reply), *expected, "step {i}: {actor} doing {op:?} in {room_id}: {reply:?}");
        }
    }

    #[test]
    fn a_kicked_user_may_join_a_public_room_again() {
        check(&[
            ("moder", LOBBY, kick("target"), Code::Ok),
            ("target", LOBBY, RoomOp::MarkRead(1), Code::Forbidden),
            ("target", LOBBY, RoomOp::Join, Code::Ok),
            ("target", LOBBY, RoomOp::MarkRead(1), Code::Ok),
        ]);
    }

    #[test]
    fn a_kicked_user_needs_a_new_invite_for_a_private_room() {
        check(&[
            ("moder", STAFF, kick("target"), Code::Ok),
            ("target", STAFF, RoomOp::Join, Code::NotFound),
            ("moder", STAFF, invite("target"), Code::Ok),
            ("target", STAFF, RoomOp::Join, Code::Ok),
        ]);
    }

    #[test]
    fn a_banned_user_may_not_join_a_public_room_until_unbanned() {
        check(&[
            ("moder", LOBBY, ban("target"), Code::Ok),
            ("target", LOBBY, RoomOp::Join, Code::Forbidden),
            ("owner", LOBBY, invite("target"), Code::Conflict),
            ("target", LOBBY, RoomOp::Join, Code::Forbidden),
            ("moder", LOBBY, unban("target"), Code::Ok),
            ("moder", LOBBY, unban("target"), Code::NotFound),
            ("target", LOBBY, RoomOp::Join, Code::Ok),
        ]);
    }

    #[test]
    fn a_banned_user_loses_a_pending_invite_and_needs_a_new_one_after_unban() {
        check(&[
            ("owner", STAFF, ban("invited"), Code::Ok),
            ("invited", STAFF, RoomOp::Join, Code::Forbidden),
            ("owner", STAFF, unban("invited"), Code::Ok),
            ("invited", STAFF, RoomOp::Join, Code::NotFound),
            ("owner", STAFF, invite("invited"), Code::Ok),
            ("invited", STAFF, RoomOp::Join, Code::Ok),
            ("invited", STAFF, RoomOp::Join, Code::Conflict),
        ]);
    }

    #[test]
    fn an_invite_is_used_up_by_the_join() {
        check(&[
            ("invited", STAFF, RoomOp::Join, Code::Ok),
            ("invited", STAFF, RoomOp::Leave, Code::Ok),
            ("invited", STAFF, RoomOp::Join, Code::NotFound),
        ]);
    }

    #[test]
    fn rejoining_after_leave_starts_as_a_plain_member() {
        check(&[
            ("moder", LOBBY, RoomOp::Leave, Code::Ok),
            ("moder", LOBBY, RoomOp::Join, Code::Ok),
            ("moder", LOBBY, kick("target"), Code::Forbidden),
        ]);
    }

    #[test]
    fn a_deleted_room_is_gone_for_everyone() {
        check(&[
            ("root", LOBBY, RoomOp::Delete, Code::Ok),
            ("owner", LOBBY, RoomOp::Delete, Code::NotFound),
            ("member", LOBBY, RoomOp::MarkRead(1), Code::NotFound),
            ("outsider", LOBBY, RoomOp::Join, Code::NotFound),
        ]);
    }
}

/// What the connection layer is told to do.
mod effects {
    use super::*;

    /// An expected effect, in the room the row acts on.
    enum Ev {
        Member(&'static str, MemberChange, Option<Role>, bool),
        RoomDeleted,
        ReadMoved(&'static str, u64),
    }
    use Ev::*;

    /// Each row applied alone to a fresh copy of the fixture; it must succeed.
    fn check(rows: &[(&str, &str, RoomOp, Vec<Ev>)]) {
        let base = fixture();
        for (actor, room_id, op, expected) in rows {
            let key = room_of(&base, room_id).info.key;
            let expected: Vec<MetaEffect> = expected
                .iter()
                .map(|ev| match ev {
                    Member(username, change, role, may_read) => MetaEffect::MemberChanged {
                        room: room_id.to_string(),
                        room_key: key,
                        username: username.to_string(),
                        change: *change,
                        role: *role,
                        may_read: *may_read,
                    },
                    RoomDeleted => MetaEffect::RoomDeleted { room: room_id.to_string(), room_key: key },
                    ReadMoved(username, seq) => MetaEffect::ReadMoved {
                        room: room_id.to_string(),
                        room_key: key,
                        username: username.to_string(),
                        seq: *seq,
                    },
                })
                .collect();
            let (reply, effects) = run(&mut base.clone(), NOW, room(actor, room_id, op.clone()));
            assert_eq!(reply, Ok(MetaOk::Done), "{actor} doing {op:?} in {room_id}");
            assert_eq!(effects, expected, "{actor} doing {op:?} in {room_id}");
        }
    }

    #[test]
    fn membership_changes_are_announced() {
        use MemberChange::Banned;
        use MemberChange::Joined;
        use MemberChange::Kicked;
        use MemberChange::Left;
        check(&[
            ("outsider", LOBBY, RoomOp::Join, vec![Member("outsider", Joined, Some(Role::Member), true)]),
            ("invited", STAFF, RoomOp::Join, vec![Member("invited", Joined, Some(Role::Member), true)]),
            ("member", LOBBY, RoomOp::Leave, vec![Member("member", Left, None, true)]),
            ("member", STAFF, RoomOp::Leave, vec![Member("member", Left, None, false)]),
            // A kick ends the user's live subscriptions (`removed`), public rooms included.
            ("moder", LOBBY, kick("target"), vec![Member("target", Kicked, None, false)]),
            ("moder", STAFF, kick("target"), vec![Member("target", Kicked, None, false)]),
            ("owner", LOBBY, ban("target"), vec![Member("target", Banned, None, false)]),
            ("owner", STAFF, ban("moder"), vec![Member("moder", Banned, None, false)]),
            (
                "owner",
                LOBBY,
                set_role("target", Role::Moderator),
                vec![Member("target", MemberChange::Role, Some(Role::Moderator), true)],
            ),
            (
                "owner",
                STAFF,
                set_role("moder", Role::Member),
                vec![Member("moder", MemberChange::Role, Some(Role::Member), true)],
            ),
            (
                "owner",
                STAFF,
                set_role("target", Role::Owner),
                vec![
                    Member("owner", MemberChange::Role, Some(Role::Moderator), true),
                    Member("target", MemberChange::Role, Some(Role::Owner), true),
                ],
            ),
        ]);
    }

    #[test]
    fn deleting_a_room_is_announced() {
        check(&[
            ("owner", LOBBY, RoomOp::Delete, vec![RoomDeleted]),
            ("owner", STAFF, RoomOp::Delete, vec![RoomDeleted]),
            ("root", DM, RoomOp::Delete, vec![RoomDeleted]),
        ]);
    }

    #[test]
    fn actions_that_change_no_membership_are_silent() {
        check(&[
            ("owner", LOBBY, invite("fresh"), vec![]),
            ("owner", LOBBY, unban("banned"), vec![]),
            ("moder", STAFF, mute("target", NOW + 1_000), vec![]),
            ("moder", STAFF, unmute("target"), vec![]),
            ("member", DM, RoomOp::MarkRead(0), vec![]),
            ("moder", LOBBY, RoomOp::AuditDelete { sender: "target".into(), seq: 4 }, vec![]),
            ("member", LOBBY, RoomOp::AuditEdit { seq: 4, old_body: "helo".into() }, vec![]),
        ]);
    }

    /// A read marker that moves tells the room (members see receipts); one
    /// set where it was says nothing.
    #[test]
    fn a_moving_read_marker_is_announced() {
        check(&[("member", DM, RoomOp::MarkRead(4), vec![ReadMoved("member", 4)])]);
    }

    #[test]
    fn set_role_owner_hands_the_room_over() {
        let mut state = fixture();
        build(&mut state, &[MetaRequest { now: NOW, cmd: room("owner", STAFF, set_role("target", Role::Owner)) }]);
        let r = room_of(&state, STAFF);
        assert_eq!(r.info.owner, "target");
        let roles: Vec<(&str, Role)> = r.members.iter().map(|(n, m)| (n.as_str(), m.role)).collect();
        assert_eq!(
            roles,
            [
                ("member", Role::Member),
                ("moder", Role::Moderator),
                ("moder2", Role::Moderator),
                ("owner", Role::Moderator),
                ("target", Role::Owner),
            ]
        );
        for (actor, op, expected) in [
            ("owner", RoomOp::Delete, Code::Forbidden),
            ("owner", set_role("member", Role::Moderator), Code::Forbidden),
            ("owner", kick("target"), Code::Forbidden),
            ("target", set_role("owner", Role::Member), Code::Ok),
            ("owner", RoomOp::Leave, Code::Ok),
            ("target", RoomOp::Leave, Code::Forbidden),
            ("target", RoomOp::Delete, Code::Ok),
        ] {
            let (reply, _) = run(&mut state, NOW + 1, room(actor, STAFF, op.clone()));
            assert_eq!(code(&reply), expected, "{actor} doing {op:?} after the handover: {reply:?}");
        }
    }
}

/// §3: the moderation audit trail, and who may read it.
mod audit {
    use super::*;

    /// Applies the steps (accepted or not) to a copy of the fixture, then
    /// compares the room's trail entries added by them, oldest first.
    fn check(room_id: &str, steps: &[(u64, &str, RoomOp)], expected: &[(u64, &str, &str, &str, Option<&str>)]) {
        let mut state = fixture();
        let skip = room_of(&state, room_id).audit.len();
        for (now, actor, op) in steps {
            let _accepted_or_not = run(&mut state, *now, room(actor, room_id, op.clone()));
        }
        let have: Vec<(u64, &str, &str, &str, Option<&str>)> = room_of(&state, room_id).audit[skip..]
            .iter()
            .map(|e| (e.ts, e.actor.as_str(), e.action.as_str(), e.target.as_str(), e.detail.as_deref()))
            .collect();
        assert_eq!(have, expected);
    }

    #[test]
    fn moderation_is_recorded_oldest_first_with_actor_target_and_time() {
        let until = NOW + 60_000;
        let until_text = until.to_string();
        check(
            LOBBY,
            &[
                (NOW + 1, "owner", invite("fresh")),
                (NOW + 2, "fresh", RoomOp::Join),
                (NOW + 3, "moder", mute("fresh", until)),
                (NOW + 4, "moder", unmute("fresh")),
                (NOW + 5, "owner", set_role("fresh", Role::Moderator)),
                (NOW + 6, "moder", RoomOp::AuditDelete { sender: "member".into(), seq: 17 }),
                (NOW + 7, "fresh", kick("target")),
                (NOW + 8, "moder", ban("outsider")),
                (NOW + 9, "owner", unban("outsider")),
                (NOW + 10, "member", RoomOp::MarkRead(3)),
                (NOW + 11, "member", RoomOp::Leave),
                // Refused: nothing recorded.
                (NOW + 12, "target", ban("moder")),
                (NOW + 13, "moder", kick("owner")),
            ],
            &[
                (NOW + 1, "owner", "invite", "fresh", None),
                (NOW + 3, "moder", "mute", "fresh", Some(&until_text)),
                (NOW + 4, "moder", "unmute", "fresh", None),
                (NOW + 5, "owner", "role", "fresh", Some("moderator")),
                (NOW + 6, "moder", "delete_message", "member", Some("17")),
                (NOW + 7, "fresh", "kick", "target", None),
                (NOW + 8, "moder", "ban", "outsider", None),
                (NOW + 9, "owner", "unban", "outsider", None),
            ],
        );
    }

    #[test]
    fn the_fixture_itself_left_a_trail() {
        let state = fixture();
        let actions: Vec<(&str, &str)> =
            room_of(&state, STAFF).audit.iter().map(|e| (e.action.as_str(), e.target.as_str())).collect();
        assert_eq!(
            actions,
            [
                ("invite", "moder"),
                ("invite", "moder2"),
                ("invite", "member"),
                ("invite", "target"),
                ("invite", "banned"),
                ("role", "moder"),
                ("role", "moder2"),
                ("ban", "banned"),
                ("invite", "invited"),
            ]
        );
        let times: Vec<u64> = room_of(&state, STAFF).audit.iter().map(|e| e.ts).collect();
        assert!(times.windows(2).all(|w| w[0] < w[1]), "audit times not ascending: {times:?}");
    }

    #[test]
    fn the_trail_keeps_the_newest_audit_cap_entries() {
        let mut state = MetaState::default();
        build(&mut state, &at(T0, vec![register("alice"), create("alice", "big", Visibility::Public)]));
        let extra = 3;
        for seq in 0..AUDIT_CAP as u64 + extra {
            let op = RoomOp::AuditDelete { sender: "bob".into(), seq };
            let (reply, _) = run(&mut state, NOW + seq, room("alice", "big", op));
            assert_eq!(reply, Ok(MetaOk::Done));
            let len = room_of(&state, "big").audit.len();
            assert_eq!(len as u64, (seq + 1).min(AUDIT_CAP as u64), "after {} entries", seq + 1);
        }
        let audit = &room_of(&state, "big").audit;
        let first = audit.first().expect("a full trail");
        let last = audit.last().expect("a full trail");
        assert_eq!((first.ts, first.detail.as_deref()), (NOW + extra, Some("3")));
        let newest = AUDIT_CAP as u64 + extra - 1;
        assert_eq!((last.ts, last.detail.clone()), (NOW + newest, Some(newest.to_string())));
        assert!(audit.windows(2).all(|w| w[0].ts + 1 == w[1].ts), "the trail has a hole or is out of order");
    }
}

/// §3: what `authorize` (the read paths) answers.
mod read_access {
    use super::*;

    fn check(action: Action, rows: &[(&str, &str, Code)]) {
        let state = fixture();
        for (actor, room_id, expected) in rows {
            let reply = state.authorize(actor, room_id, action).map(|_| MetaOk::Done);
            assert_eq!(code(&reply), *expected, "{actor} doing {action:?} in {room_id}: {reply:?}");
            if *expected == Code::NotFound {
                assert_eq!(reply, Err(MetaError::NotFound(format!("room {room_id}"))));
            }
        }
    }

    /// `GET /api/rooms/{room}/audit`: owner and admin.
    #[test]
    fn only_the_owner_and_the_admin_read_the_audit() {
        check(
            Action::ReadAudit,
            &[
                ("owner", LOBBY, Code::Ok),
                ("moder", LOBBY, Code::Forbidden),
                ("member", LOBBY, Code::Forbidden),
                ("outsider", LOBBY, Code::Forbidden),
                ("banned", LOBBY, Code::Forbidden),
                ("root", LOBBY, Code::Ok),
                ("owner", STAFF, Code::Ok),
                ("moder", STAFF, Code::Forbidden),
                ("outsider", STAFF, Code::NotFound),
                ("invited", STAFF, Code::NotFound),
                ("banned", STAFF, Code::NotFound),
                ("root", STAFF, Code::Ok),
                ("member", DM, Code::Forbidden),
                ("owner", DM, Code::NotFound),
                ("root", DM, Code::Ok),
                ("root", "nowhere", Code::NotFound),
            ],
        );
    }

    /// `GET /api/rooms/{room}`: members; anyone for public.
    #[test]
    fn members_read_a_room_and_anyone_reads_a_public_one() {
        check(
            Action::Read,
            &[
                ("member", LOBBY, Code::Ok),
                ("outsider", LOBBY, Code::Ok),
                ("invited", LOBBY, Code::Ok),
                ("root", LOBBY, Code::Ok),
                ("banned", LOBBY, Code::Forbidden),
                ("member", STAFF, Code::Ok),
                ("owner", STAFF, Code::Ok),
                ("outsider", STAFF, Code::NotFound),
                ("invited", STAFF, Code::NotFound),
                ("banned", STAFF, Code::NotFound),
                ("root", STAFF, Code::NotFound),
                ("target", DM, Code::Ok),
                ("owner", DM, Code::NotFound),
                ("root", DM, Code::NotFound),
            ],
        );
    }

    /// `GET /api/rooms/{room}/members`: members.
    #[test]
    fn only_members_list_the_members() {
        check(
            Action::ListMembers,
            &[
                ("member", LOBBY, Code::Ok),
                ("outsider", LOBBY, Code::Forbidden),
                ("member", STAFF, Code::Ok),
                ("outsider", STAFF, Code::NotFound),
                ("member", DM, Code::Ok),
                ("outsider", DM, Code::NotFound),
            ],
        );
    }
}

/// §3: mutes end at their time, on unmute, and with the membership.
mod mutes {
    use super::*;

    enum Step {
        /// An actor's op in `lobby` at a time, and its reply code.
        Do(u64, &'static str, RoomOp, Code),
        /// Whether a user is muted in `lobby` at a time.
        Muted(u64, &'static str, bool),
        /// Exactly these users have a stored mute in `lobby`.
        Stored(&'static [&'static str]),
    }
    use Step::*;

    fn check(steps: &[Step]) {
        let mut state = fixture();
        for (i, step) in steps.iter().enumerate() {
            match step {
                Do(now, actor, op, expected) => {
                    let (reply, _) = run(&mut state, *now, room(actor, LOBBY, op.clone()));
                    assert_eq!(code(&reply), *expected, "step {i}: {actor} doing {op:?}: {reply:?}");
                }
                Muted(now, user, expected) => {
                    assert_eq!(room_of(&state, LOBBY).muted(user, *now), *expected, "step {i}: {user} muted at {now}");
                }
                Stored(users) => {
                    let have: Vec<&str> = room_of(&state, LOBBY).mutes.keys().map(String::as_str).collect();
                    assert_eq!(have, *users, "step {i}: stored mutes");
                }
            }
        }
    }

    #[test]
    fn a_mute_lasts_until_its_end_time() {
        check(&[
            Muted(NOW, "target", false),
            Do(NOW, "moder", mute("target", NOW + 100), Code::Ok),
            Muted(NOW, "target", true),
            Muted(NOW + 99, "target", true),
            Muted(NOW + 100, "target", false),
            Muted(NOW + 5_000, "target", false),
            Muted(NOW + 50, "member", false),
            Stored(&["target"]),
        ]);
    }

    #[test]
    fn unmute_clears_a_mute() {
        check(&[
            Do(NOW, "moder", mute("target", NOW + 100), Code::Ok),
            Do(NOW + 1, "moder2", unmute("target"), Code::Ok),
            Muted(NOW + 2, "target", false),
            Stored(&[]),
        ]);
    }

    #[test]
    fn a_new_mute_replaces_the_old_one() {
        check(&[
            Do(NOW, "moder", mute("target", NOW + 100), Code::Ok),
            Do(NOW + 1, "owner", mute("target", NOW + 10), Code::Ok),
            Muted(NOW + 9, "target", true),
            Muted(NOW + 10, "target", false),
        ]);
    }

    #[test]
    fn leaving_the_room_ends_a_mute() {
        check(&[
            Do(NOW, "moder", mute("target", NOW + 100), Code::Ok),
            Do(NOW, "moder", mute("member", NOW + 100), Code::Ok),
            Do(NOW + 1, "moder", kick("target"), Code::Ok),
            Do(NOW + 2, "member", RoomOp::Leave, Code::Ok),
            Stored(&[]),
            Do(NOW + 3, "target", RoomOp::Join, Code::Ok),
            Muted(NOW + 4, "target", false),
            Do(NOW + 5, "moder", mute("target", NOW + 100), Code::Ok),
            Do(NOW + 6, "owner", ban("target"), Code::Ok),
            Stored(&[]),
        ]);
    }

    #[test]
    fn an_expired_mute_is_dropped_by_the_next_change() {
        check(&[
            Do(NOW, "moder", mute("target", NOW + 10), Code::Ok),
            Do(NOW, "moder", mute("member", NOW + 100), Code::Ok),
            Stored(&["member", "target"]),
            Do(NOW + 10, "moder2", RoomOp::MarkRead(1), Code::Ok),
            Stored(&["member"]),
        ]);
    }
}

/// The state machine is replicated: it must be a function of the commands.
mod determinism {
    use super::*;

    /// A log that exercises every command, including refusals.
    fn log() -> Vec<MetaRequest> {
        let mut reqs = fixture_commands();
        reqs.extend(at(
            NOW,
            vec![
                login("owner", 1, NOW + 3_600_000, 600_000),
                login("member", 2, NOW + 1_000, 100),
                login("ghost", 3, NOW + 1_000, 100),
                issue(10, 1, NOW + 60_000),
                issue(11, 2, NOW + 50),
                redeem(10),
                redeem(10),
                touch(1),
                room("member", LOBBY, RoomOp::Join),
                room("outsider", LOBBY, RoomOp::Join),
                room("owner", LOBBY, kick("outsider")),
                room("owner", LOBBY, mute("target", NOW + 30)),
                room("moder", STAFF, ban("member")),
                room("moder", STAFF, kick("owner")),
                room("owner", LOBBY, set_role("moder2", Role::Owner)),
                room("member", DM, RoomOp::MarkRead(9)),
                room("moder", LOBBY, RoomOp::AuditDelete { sender: "target".into(), seq: 2 }),
                room("owner", STAFF, RoomOp::Delete),
                create("fresh", STAFF, Visibility::Public),
                open_direct("fresh", "root"),
                open_direct("root", "fresh"),
                MetaCommand::AssignRoom { room: LOBBY.into(), owner_node: 3, epoch: 2 },
                MetaCommand::AssignRoom { room: LOBBY.into(), owner_node: 4, epoch: 2 },
                logout(1),
                logout(1),
            ],
        ));
        reqs.push(MetaRequest { now: NOW + 5_000, cmd: MetaCommand::Sweep });
        reqs
    }

    type Outcome = (Vec<MetaReply>, Vec<Vec<MetaEffect>>);

    fn replay(state: &mut MetaState, reqs: &[MetaRequest]) -> Outcome {
        let mut replies = Vec::new();
        let mut all_effects = Vec::new();
        for req in reqs {
            let mut effects = Vec::new();
            replies.push(state.apply(req, &mut effects));
            all_effects.push(effects);
        }
        (replies, all_effects)
    }

    fn snapshot(state: &MetaState) -> MetaState {
        let bytes = postcard::to_stdvec(state).expect("the state serializes");
        let back: MetaState = postcard::from_bytes(&bytes).expect("the state deserializes");
        assert_eq!(postcard::to_stdvec(&back).expect("the state serializes again"), bytes, "re-encoding differs");
        back
    }

    #[test]
    fn the_same_commands_give_the_same_state_replies_and_effects() {
        let reqs = log();
        let (mut a, mut b) = (MetaState::default(), MetaState::default());
        let from_a = replay(&mut a, &reqs);
        let from_b = replay(&mut b, &reqs);
        assert_eq!(from_a, from_b);
        assert_eq!(a, b);
        // The log is not trivial: it was accepted and refused in places.
        let codes: Vec<Code> = from_a.0.iter().map(code).collect();
        for c in [Code::Ok, Code::Unauthorized, Code::Conflict, Code::Forbidden] {
            assert!(codes.contains(&c), "the log never answers {c:?}");
        }
    }

    #[test]
    fn a_state_round_trips_through_postcard() {
        assert_eq!(snapshot(&MetaState::default()), MetaState::default());
        // Every state along the log: with live sessions, tickets, mutes,
        // invites, bans, audit entries and deleted rooms.
        let (mut state, mut seen) = (MetaState::default(), [false; 4]);
        for req in log() {
            state.apply(&req, &mut Vec::new()).ok();
            assert_eq!(snapshot(&state), state, "after {req}");
            let mutes = state.rooms.values().any(|r| !r.mutes.is_empty());
            for (seen, now) in seen.iter_mut().zip([
                !state.sessions.is_empty(),
                !state.tickets.is_empty(),
                mutes,
                state.rooms.len() > 3,
            ]) {
                *seen |= now;
            }
        }
        assert_eq!(seen, [true; 4], "the log never held sessions, tickets, mutes and extra rooms");
    }

    /// Roles and visibilities are `palaver_protocol`'s; the logs and snapshots
    /// written before they moved there store them by variant index.
    #[test]
    fn stored_protocol_enums_keep_their_variant_indices() {
        fn index<T: serde::Serialize>(v: &T) -> Vec<u8> {
            postcard::to_stdvec(v).expect("encodes")
        }
        let visibilities = [Visibility::Public, Visibility::Private, Visibility::Direct];
        let roles = [Role::Member, Role::Moderator, Role::Owner];
        let user_roles = [UserRole::Admin, UserRole::User];
        for (i, bytes) in visibilities
            .iter()
            .map(index)
            .chain(roles.iter().map(index))
            .chain(user_roles.iter().map(index))
            .enumerate()
        {
            let expected = [0, 1, 2, 0, 1, 2, 0, 1][i];
            assert_eq!(bytes, [expected], "variant {i}");
        }
        let member = Member { role: Role::Owner, read_seq: 7 };
        assert_eq!(index(&member), [2, 7]);
        assert_eq!(postcard::from_bytes::<Member>(&[1, 3]).ok(), Some(Member { role: Role::Moderator, read_seq: 3 }));
    }

    #[test]
    fn a_restored_snapshot_goes_on_like_the_original() {
        let reqs = log();
        for split in [0, fixture_commands().len(), reqs.len() - 5, reqs.len()] {
            let (head, tail) = reqs.split_at(split);
            let mut original = MetaState::default();
            replay(&mut original, head);
            let mut restored = snapshot(&original);
            assert_eq!(replay(&mut restored, tail), replay(&mut original, tail), "split at {split}");
            assert_eq!(restored, original, "split at {split}");
        }
    }
}

/// `permissions::check` on its own, over every standing, visibility and action.
mod permission_check {
    use super::*;

    const VISIBILITIES: [Visibility; 3] = [Visibility::Public, Visibility::Private, Visibility::Direct];
    const ROLES: [Role; 3] = [Role::Member, Role::Moderator, Role::Owner];

    fn standings() -> Vec<Standing> {
        let mut all: Vec<Standing> = ROLES.iter().map(|r| Standing::Member(*r)).collect();
        all.extend([Standing::Outsider { invited: false }, Standing::Outsider { invited: true }, Standing::Banned]);
        all
    }

    fn actions() -> Vec<Action> {
        let mut all = vec![
            Action::Read,
            Action::Join,
            Action::Leave,
            Action::Invite,
            Action::Ban(None),
            Action::Unban,
            Action::Send,
            Action::DeleteMessage { own: true },
            Action::DeleteMessage { own: false },
            Action::DeleteRoom,
            Action::ReadAudit,
            Action::MarkRead,
            Action::ListMembers,
        ];
        for r in ROLES {
            all.extend([Action::Kick(r), Action::Ban(Some(r)), Action::SetRole(r), Action::Mute(r)]);
        }
        all
    }

    /// A standing, a visibility, whether the actor is admin, an action, the answer.
    type Case = (Standing, Visibility, bool, Action, Result<(), Denied>);

    /// Every combination, with its answer.
    fn everything() -> Vec<Case> {
        let mut all = Vec::new();
        for s in standings() {
            for v in VISIBILITIES {
                for admin in [false, true] {
                    for a in actions() {
                        all.push((s, v, admin, a, permissions::check(s, v, admin, a)));
                    }
                }
            }
        }
        all
    }

    fn check(visibility: Visibility, standing: Standing, cases: &[(Action, Result<(), Denied>)]) {
        for (action, expected) in cases {
            assert_eq!(
                permissions::check(standing, visibility, false, *action),
                *expected,
                "{standing:?} doing {action:?} in a {visibility:?} room"
            );
        }
    }

    #[test]
    fn reading_posting_and_listing() {
        use Action::*;
        let (ok, nf, fb) = (Ok(()), Err(Denied::NotFound), Err(Denied::Forbidden));
        let own = DeleteMessage { own: true };
        let other = DeleteMessage { own: false };
        for v in [Visibility::Public, Visibility::Private] {
            check(
                v,
                Standing::Member(Role::Owner),
                &[(Read, ok), (Send, ok), (ListMembers, ok), (own, ok), (other, ok)],
            );
            check(
                v,
                Standing::Member(Role::Moderator),
                &[(Read, ok), (Send, ok), (own, ok), (other, ok), (ReadAudit, fb)],
            );
            check(
                v,
                Standing::Member(Role::Member),
                &[(Read, ok), (Send, ok), (own, ok), (other, fb), (ReadAudit, fb)],
            );
        }
        check(
            Visibility::Public,
            Standing::Outsider { invited: false },
            &[(Read, ok), (Send, fb), (ListMembers, fb), (own, fb), (ReadAudit, fb)],
        );
        check(Visibility::Public, Standing::Banned, &[(Read, fb), (Send, fb), (ListMembers, fb)]);
        for v in [Visibility::Private, Visibility::Direct] {
            for s in [Standing::Outsider { invited: false }, Standing::Outsider { invited: true }, Standing::Banned] {
                check(v, s, &[(Read, nf), (Send, nf), (ListMembers, nf), (own, nf), (ReadAudit, nf)]);
            }
        }
        check(
            Visibility::Direct,
            Standing::Member(Role::Member),
            &[(Read, ok), (Send, ok), (ListMembers, ok), (own, ok), (other, fb), (ReadAudit, fb)],
        );
    }

    #[test]
    fn members_never_get_not_found_and_outsiders_of_hidden_rooms_always_do() {
        for (s, v, admin, a, answer) in everything() {
            let hidden = v != Visibility::Public;
            let member = matches!(s, Standing::Member(_));
            let admin_power = admin && matches!(a, Action::DeleteRoom | Action::ReadAudit);
            let invited_join =
                s == (Standing::Outsider { invited: true }) && a == Action::Join && v == Visibility::Private;
            // docs/protocol.md: a banned user's join is forbidden, private rooms included.
            let banned_join = s == Standing::Banned && a == Action::Join;
            let should_hide = hidden && !member && !admin_power && !invited_join && !banned_join;
            assert_eq!(answer == Err(Denied::NotFound), should_hide, "{s:?} {v:?} admin={admin} {a:?}: {answer:?}");
        }
    }

    #[test]
    fn the_admin_gains_only_room_deletion_and_the_audit() {
        for (s, v, admin, a, answer) in everything() {
            if !admin {
                continue;
            }
            let plain = permissions::check(s, v, false, a);
            if matches!(a, Action::DeleteRoom | Action::ReadAudit) {
                assert_eq!(answer, Ok(()), "admin as {s:?} doing {a:?} in {v:?}");
            } else {
                assert_eq!(answer, plain, "admin as {s:?} doing {a:?} in {v:?}");
            }
        }
    }

    #[test]
    fn banned_users_may_do_nothing() {
        for (s, v, admin, a, answer) in everything() {
            if s == Standing::Banned && !admin {
                assert!(answer.is_err(), "banned doing {a:?} in {v:?}");
            }
        }
    }

    #[test]
    fn moderation_needs_the_role_and_a_strictly_lower_target_and_never_in_direct_rooms() {
        for (s, v, admin, a, answer) in everything() {
            let Standing::Member(role) = s else { continue };
            let direct = v == Visibility::Direct;
            let expected = match a {
                Action::Kick(t) | Action::Mute(t) | Action::Ban(Some(t)) => {
                    role >= Role::Moderator && t < role && !direct
                }
                Action::Ban(None) | Action::Unban | Action::Invite => role >= Role::Moderator && !direct,
                Action::SetRole(t) => role == Role::Owner && t < Role::Owner && !direct,
                Action::Join => {
                    assert_eq!(answer, Err(Denied::Conflict), "{s:?} joining again in {v:?}");
                    continue;
                }
                _ => continue,
            };
            let want = if expected { Ok(()) } else { Err(Denied::Forbidden) };
            assert_eq!(answer, want, "{s:?} (admin={admin}) doing {a:?} in {v:?}");
        }
    }

    #[test]
    fn every_member_may_leave_except_the_owner_and_direct_room_members() {
        for (s, v, admin, a, answer) in everything() {
            if a != Action::Leave {
                continue;
            }
            let expected = match s {
                Standing::Member(Role::Owner) => Err(Denied::Forbidden),
                Standing::Member(_) if v == Visibility::Direct => Err(Denied::Forbidden),
                Standing::Member(_) => Ok(()),
                _ if v == Visibility::Public => Err(Denied::Forbidden),
                _ => Err(Denied::NotFound),
            };
            assert_eq!(answer, expected, "{s:?} (admin={admin}) leaving a {v:?} room");
        }
    }
}

// ----- account administration (meta/accounts.rs) -----

fn account(cmd: AccountCommand) -> MetaCommand {
    MetaCommand::Account(cmd)
}

fn sign_up(username: &str, invite: Option<u8>) -> MetaCommand {
    account(AccountCommand::SignUp {
        username: username.into(),
        password_hash: format!("$argon2id$test${username}"),
        invite: invite.map(tok),
    })
}

#[test]
fn sign_up_never_makes_an_admin_and_only_admins_or_the_ops_actor_make_accounts() {
    let mut s = MetaState::default();
    assert_eq!(run(&mut s, T0, sign_up("first", None)).0, Ok(MetaOk::Registered(UserRole::User)));
    let by = |actor: &str, name: &str| {
        account(AccountCommand::Create {
            actor: actor.into(),
            username: name.into(),
            password_hash: "h".into(),
            role: UserRole::Admin,
        })
    };
    assert_eq!(code(&run(&mut s, T0, by("first", "boss")).0), Code::Forbidden);
    assert_eq!(run(&mut s, T0, by(OPS_ACTOR, "boss")).0, Ok(MetaOk::Registered(UserRole::Admin)));
    assert_eq!(run(&mut s, T0, by("boss", "deputy")).0, Ok(MetaOk::Registered(UserRole::Admin)));
    assert_eq!(code(&run(&mut s, T0, by("boss", "first")).0), Code::Conflict);
}

#[test]
fn an_invite_admits_as_many_sign_ups_as_its_uses_and_none_after_its_end() {
    let mut s = MetaState::default();
    build(&mut s, &at(T0, vec![register("boss")]));
    let invite = |uses, expires_at| {
        account(AccountCommand::CreateInvite { actor: "boss".into(), code_hash: tok(7), uses, expires_at })
    };
    assert_eq!(code(&run(&mut s, T0, invite(0, T0 + 10)).0), Code::BadRequest);
    assert_eq!(code(&run(&mut s, T0, invite(2, T0)).0), Code::BadRequest);
    build(&mut s, &at(T0, vec![invite(2, T0 + 1_000)]));
    assert_eq!(code(&run(&mut s, T0, sign_up("a", Some(9))).0), Code::Forbidden, "unknown code");
    assert_eq!(code(&run(&mut s, T0, sign_up("a", Some(7))).0), Code::Ok);
    assert_eq!(code(&run(&mut s, T0, sign_up("a", Some(7))).0), Code::Conflict, "a taken name uses nothing");
    assert_eq!(code(&run(&mut s, T0, sign_up("b", Some(7))).0), Code::Ok);
    assert_eq!(code(&run(&mut s, T0, sign_up("c", Some(7))).0), Code::Forbidden, "used up");
    assert!(s.accounts.invites.is_empty(), "a used-up code is dropped");
    build(&mut s, &at(T0, vec![invite(5, T0 + 1_000)]));
    assert_eq!(code(&run(&mut s, T0 + 1_000, sign_up("d", Some(7))).0), Code::Forbidden, "expired");
    build(&mut s, &at(T0, vec![invite(5, T0 + 1_000)]));
    assert!(run(&mut s, T0 + 2_000, MetaCommand::Sweep).0.is_ok());
    assert!(s.accounts.invites.is_empty(), "the sweep drops expired codes");
}

#[test]
fn disabling_ends_every_session_and_refuses_logins_until_enabled() {
    let mut s = MetaState::default();
    build(&mut s, &at(T0, vec![register("boss"), register("eve"), login("eve", 1, T0 + DAY, DAY)]));
    build(&mut s, &at(T0, vec![login("eve", 2, T0 + DAY, DAY), login("boss", 3, T0 + DAY, DAY)]));
    let set = |actor: &str, disabled| {
        account(AccountCommand::SetDisabled { actor: actor.into(), username: "eve".into(), disabled })
    };
    assert_eq!(code(&run(&mut s, T0, set("eve", true)).0), Code::Forbidden, "not an admin");
    let (reply, effects) = run(&mut s, T0, set("boss", true));
    assert_eq!(code(&reply), Code::Ok);
    let ended: Vec<_> = effects
        .iter()
        .filter_map(|e| match e {
            MetaEffect::SessionEnded { token_hash } => Some(*token_hash),
            _ => None,
        })
        .collect();
    assert_eq!(ended, [tok(1), tok(2)]);
    assert!(s.session(&tok(3), T0).is_some(), "other users' sessions stay");
    assert_eq!(code(&run(&mut s, T0, login("eve", 4, T0 + DAY, DAY)).0), Code::Forbidden);
    let self_disable =
        account(AccountCommand::SetDisabled { actor: "boss".into(), username: "boss".into(), disabled: true });
    assert_eq!(code(&run(&mut s, T0, self_disable).0), Code::Conflict);
    build(&mut s, &at(T0, vec![set("boss", false)]));
    assert_eq!(code(&run(&mut s, T0, login("eve", 4, T0 + DAY, DAY)).0), Code::Ok);
}

#[test]
fn a_password_change_ends_every_other_session_of_the_user() {
    let mut s = MetaState::default();
    build(&mut s, &at(T0, vec![register("ann"), register("bob")]));
    build(&mut s, &at(T0, vec![login("ann", 1, T0 + DAY, DAY), login("ann", 2, T0 + DAY, DAY)]));
    build(&mut s, &at(T0, vec![login("bob", 3, T0 + DAY, DAY)]));
    let change =
        account(AccountCommand::SetPassword { username: "ann".into(), password_hash: "new".into(), keep: tok(1) });
    let (reply, effects) = run(&mut s, T0, change);
    assert_eq!(code(&reply), Code::Ok);
    assert_eq!(effects, [MetaEffect::SessionEnded { token_hash: tok(2) }]);
    assert!(s.session(&tok(1), T0).is_some() && s.session(&tok(3), T0).is_some());
    assert_eq!(s.users["ann"].password_hash, "new");
}
