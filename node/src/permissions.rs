//! Who may do what in a room: one pure function of the actor's standing, the
//! room's visibility and the action. No state, no I/O; the metadata state
//! machine and the read paths both ask it. Roles and visibilities are the
//! protocol's ([`palaver_protocol::Role`], [`palaver_protocol::Visibility`]).

use palaver_protocol::Role;
use palaver_protocol::Visibility;

/// Where the actor stands with respect to a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Standing {
    /// A member with this role.
    Member(Role),
    /// Not a member; `invited` says whether an invite is pending.
    Outsider {
        /// An invite is pending.
        invited: bool,
    },
    /// Banned from the room.
    Banned,
}

/// Something a user tries to do in a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// See the room and read its messages (history, subscribe, SSE, poll).
    Read,
    /// Become a member.
    Join,
    /// Stop being a member.
    Leave,
    /// Invite someone.
    Invite,
    /// Remove a member with this role.
    Kick(Role),
    /// Ban a user; `Some(role)` when the target is a member.
    Ban(Option<Role>),
    /// Lift a ban.
    Unban,
    /// Change a member's role (from, to).
    SetRole(Role),
    /// Mute or unmute a member with this role.
    Mute(Role),
    /// Post a message (mute is checked separately: it is time-dependent).
    Send,
    /// Delete a message; `own` when the actor sent it.
    DeleteMessage {
        /// The actor is the message's sender.
        own: bool,
    },
    /// Delete the room.
    DeleteRoom,
    /// Change the room's title or retention.
    Configure,
    /// Read the moderation audit trail.
    ReadAudit,
    /// Store a read marker.
    MarkRead,
    /// List the members.
    ListMembers,
}

/// Why an action is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Denied {
    /// The room must look absent to this user (private or direct, not a member).
    #[error("room not found")]
    NotFound,
    /// The user sees the room but may not do this.
    #[error("not allowed")]
    Forbidden,
    /// The action makes no sense in this state (already a member, say).
    #[error("conflict")]
    Conflict,
}

/// Decides whether an actor may perform `action`.
///
/// `admin` is the cluster administrator, who may delete any room and read any
/// audit trail but gains no other power inside rooms.
pub fn check(standing: Standing, visibility: Visibility, admin: bool, action: Action) -> Result<(), Denied> {
    use Action::*;
    use Denied::*;
    let hidden = visibility != Visibility::Public;
    let role = match standing {
        Standing::Member(role) => role,
        Standing::Outsider { invited } => {
            return match action {
                DeleteRoom | ReadAudit | Configure if admin => Ok(()),
                _ if hidden && !(invited && action == Join) => Err(NotFound),
                Read => Ok(()),
                Join if visibility == Visibility::Direct => Err(NotFound),
                Join => Ok(()),
                _ => Err(Forbidden),
            };
        }
        Standing::Banned => {
            return match action {
                DeleteRoom | ReadAudit | Configure if admin => Ok(()),
                // docs/protocol.md: "A banned user's join gets forbidden", private rooms included.
                Join => Err(Forbidden),
                _ if hidden => Err(NotFound),
                _ => Err(Forbidden),
            };
        }
    };
    let moderator = role >= Role::Moderator;
    let direct = visibility == Visibility::Direct;
    let allowed = match action {
        Read | Send | MarkRead | ListMembers => true,
        Join => return Err(Conflict),
        // The owner must hand the room over (or delete it) before leaving.
        Leave => role != Role::Owner && !direct,
        Invite => moderator && !direct,
        Kick(target) | Mute(target) | Ban(Some(target)) => moderator && target < role && !direct,
        Ban(None) | Unban => moderator && !direct,
        SetRole(target) => role == Role::Owner && target < Role::Owner && !direct,
        DeleteMessage { own } => own || moderator,
        DeleteRoom => role == Role::Owner && !direct || admin,
        ReadAudit | Configure => role == Role::Owner || admin,
    };
    if allowed { Ok(()) } else { Err(Forbidden) }
}

#[cfg(test)]
mod tests {
    use super::Action::*;
    use super::Role::*;
    use super::*;

    fn check_all(visibility: Visibility, standing: Standing, cases: &[(Action, Result<(), Denied>)]) {
        for (action, expected) in cases {
            assert_eq!(
                check(standing, visibility, false, *action),
                *expected,
                "{standing:?} doing {action:?} in a {visibility:?} room"
            );
        }
    }

    #[test]
    fn outsiders_see_public_rooms_and_nothing_else() {
        let out = Standing::Outsider { invited: false };
        check_all(
            Visibility::Public,
            out,
            &[
                (Read, Ok(())),
                (Join, Ok(())),
                (Send, Err(Denied::Forbidden)),
                (Invite, Err(Denied::Forbidden)),
                (ListMembers, Err(Denied::Forbidden)),
            ],
        );
        for vis in [Visibility::Private, Visibility::Direct] {
            check_all(
                vis,
                out,
                &[
                    (Read, Err(Denied::NotFound)),
                    (Join, Err(Denied::NotFound)),
                    (Send, Err(Denied::NotFound)),
                    (Kick(Member), Err(Denied::NotFound)),
                ],
            );
        }
    }

    #[test]
    fn an_invite_opens_only_the_join_of_a_private_room() {
        let invited = Standing::Outsider { invited: true };
        check_all(Visibility::Private, invited, &[(Join, Ok(())), (Read, Err(Denied::NotFound))]);
    }

    #[test]
    fn banned_users_are_refused_everywhere() {
        check_all(
            Visibility::Public,
            Standing::Banned,
            &[(Join, Err(Denied::Forbidden)), (Read, Err(Denied::Forbidden))],
        );
        check_all(
            Visibility::Private,
            Standing::Banned,
            &[(Join, Err(Denied::Forbidden)), (Read, Err(Denied::NotFound))],
        );
    }

    #[test]
    fn moderation_needs_a_higher_role_than_the_target() {
        let moderator = Standing::Member(Moderator);
        check_all(
            Visibility::Public,
            moderator,
            &[
                (Kick(Member), Ok(())),
                (Kick(Moderator), Err(Denied::Forbidden)),
                (Kick(Owner), Err(Denied::Forbidden)),
                (Mute(Member), Ok(())),
                (Ban(Some(Moderator)), Err(Denied::Forbidden)),
                (Ban(None), Ok(())),
                (SetRole(Member), Err(Denied::Forbidden)),
                (DeleteMessage { own: false }, Ok(())),
                (ReadAudit, Err(Denied::Forbidden)),
            ],
        );
        let member = Standing::Member(Member);
        check_all(
            Visibility::Public,
            member,
            &[
                (Kick(Member), Err(Denied::Forbidden)),
                (Invite, Err(Denied::Forbidden)),
                (DeleteMessage { own: true }, Ok(())),
                (DeleteMessage { own: false }, Err(Denied::Forbidden)),
                (Leave, Ok(())),
                (Join, Err(Denied::Conflict)),
            ],
        );
        let owner = Standing::Member(Owner);
        check_all(
            Visibility::Private,
            owner,
            &[
                (SetRole(Moderator), Ok(())),
                (Kick(Moderator), Ok(())),
                (Leave, Err(Denied::Forbidden)),
                (DeleteRoom, Ok(())),
                (ReadAudit, Ok(())),
            ],
        );
    }

    #[test]
    fn direct_rooms_have_no_moderation() {
        let member = Standing::Member(Member);
        check_all(
            Visibility::Direct,
            member,
            &[
                (Send, Ok(())),
                (Invite, Err(Denied::Forbidden)),
                (Leave, Err(Denied::Forbidden)),
                (Kick(Member), Err(Denied::Forbidden)),
                (DeleteRoom, Err(Denied::Forbidden)),
            ],
        );
    }

    #[test]
    fn admin_may_delete_any_room_and_read_its_audit() {
        let out = Standing::Outsider { invited: false };
        assert_eq!(check(out, Visibility::Private, true, DeleteRoom), Ok(()));
        assert_eq!(check(out, Visibility::Direct, true, ReadAudit), Ok(()));
        assert_eq!(check(out, Visibility::Private, true, Read), Err(Denied::NotFound));
    }
}
