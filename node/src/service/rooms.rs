//! Room management: create, list, join, leave, invite, moderation, roles,
//! read markers, members, direct rooms, the audit trail.

use palaver_protocol::AuditEntry;
use palaver_protocol::Member;
use palaver_protocol::Receipt;
use palaver_protocol::Role;
use palaver_protocol::Room as RoomView;
use palaver_protocol::Visibility;

use super::ApiError;
use super::Node;
use super::Session;
use super::Usage;
use crate::auth::valid_room_id;
use crate::auth::valid_username;
use crate::clock::now_ms;
use crate::meta::MetaCommand;
use crate::meta::MetaOk;
use crate::meta::Room;
use crate::meta::RoomInfo;
use crate::meta::RoomOp;
use crate::permissions::Action;
use crate::rooms::RoomRef;

/// Longest room title, characters.
const MAX_TITLE: usize = 200;
/// Longest mute, seconds (a year).
const MAX_MUTE_SECS: u64 = 365 * 24 * 3600;

/// Checks a room id from a path or frame (direct-room ids included).
pub(crate) fn check_room_id(room: &str) -> Result<(), ApiError> {
    let direct = room
        .strip_prefix("dm:")
        .and_then(|rest| rest.split_once(':'))
        .is_some_and(|(a, b)| valid_username(a) && valid_username(b) && a < b);
    if valid_room_id(room) || direct {
        Ok(())
    } else {
        Err(ApiError::bad_request("room must match ^[a-z0-9_-]{1,64}$"))
    }
}

/// A title's limits.
pub(super) fn check_title(title: &str) -> Result<(), ApiError> {
    if title.chars().count() > MAX_TITLE {
        return Err(ApiError::bad_request(format!("title is longer than {MAX_TITLE} characters")));
    }
    Ok(())
}

fn check_target(username: &str) -> Result<(), ApiError> {
    if valid_username(username) { Ok(()) } else { Err(ApiError::bad_request("invalid username")) }
}

impl Node {
    /// The views of rooms the metadata showed the caller, with each room's
    /// last seq read where its shard lives.
    async fn room_views(&self, seen: Vec<Seen>) -> Result<Vec<RoomView>, ApiError> {
        let refs: Vec<RoomRef> = seen.iter().map(|s| room_ref(&s.info, &s.info.id)).collect();
        let seqs = self.last_seqs(&refs, false).await?;
        Ok(seen
            .iter()
            .zip(seqs)
            .map(|(s, last)| RoomView {
                retention_days: Some(s.retention_days),
                ..view(&s.info, last, s.read_seq.map(|read| last.saturating_sub(read)))
            })
            .collect())
    }

    /// Public rooms and the caller's rooms, by id.
    pub async fn list_rooms(&self, s: &Session) -> Result<Vec<RoomView>, ApiError> {
        let seen = self
            .read(|meta| {
                Ok(meta
                    .rooms
                    .values()
                    .filter(|r| {
                        r.members.contains_key(&*s.username)
                            || (r.info.visibility == Visibility::Public && !r.bans.contains(&*s.username))
                    })
                    .map(|r| Seen::of(r, &s.username, self.retention_days(meta, &r.info.id)))
                    .collect())
            })
            .await?;
        self.room_views(seen).await
    }

    /// Makes a room; the caller becomes its owner.
    pub async fn create_room(
        &self,
        s: &Session,
        room: String,
        title: Option<String>,
        visibility: Option<String>,
    ) -> Result<RoomView, ApiError> {
        if !valid_room_id(&room) {
            return Err(ApiError::bad_request("room must match ^[a-z0-9_-]{1,64}$"));
        }
        let title = title.unwrap_or_else(|| room.clone());
        check_title(&title)?;
        let visibility = match visibility.as_deref() {
            None | Some("public") => Visibility::Public,
            Some("private") => Visibility::Private,
            Some(other) => return Err(ApiError::bad_request(format!("visibility {other:?} is not public or private"))),
        };
        self.quotas.take(Usage::Room, &s.username, now_ms())?;
        // `owner_node` is a record of the design before shards; a room's log
        // is written by its shard's leader.
        let cmd =
            MetaCommand::CreateRoom { actor: s.username.to_string(), room, title, visibility, owner_node: self.id };
        match self.propose(cmd).await? {
            MetaOk::Room(info) => {
                tracing::info!(room = %info.id, owner = %s.username, "room created");
                Ok(view(&info, 0, Some(0)))
            }
            other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// One room, if the caller may see it.
    pub async fn get_room(&self, s: &Session, room: &str) -> Result<RoomView, ApiError> {
        check_room_id(room)?;
        let seen = self
            .read(|meta| {
                let r = meta.authorize(&s.username, room, Action::Read)?;
                Ok(Seen::of(r, &s.username, self.retention_days(meta, room)))
            })
            .await?;
        let mut views = self.room_views(vec![seen]).await?;
        views.pop().ok_or_else(|| ApiError::internal("a room view went missing"))
    }

    /// Applies a room action through Raft.
    pub async fn room_op(&self, s: &Session, room: &str, op: RoomOp) -> Result<(), ApiError> {
        check_room_id(room)?;
        match &op {
            RoomOp::Invite(t) | RoomOp::Kick(t) | RoomOp::Ban(t) | RoomOp::Unban(t) | RoomOp::Unmute(t) => {
                check_target(t)?
            }
            RoomOp::SetRole(t, _) | RoomOp::Mute(t, _) => check_target(t)?,
            _ => {}
        }
        self.quotas.take(Usage::Write, &s.username, now_ms())?;
        let cmd = MetaCommand::Room { actor: s.username.to_string(), room: room.to_string(), op: op.clone() };
        self.propose(cmd).await?;
        tracing::info!(room, actor = %s.username, ?op, "room action");
        Ok(())
    }

    /// Joins a room; answers the new membership.
    pub async fn join(&self, s: &Session, room: &str) -> Result<Member, ApiError> {
        self.room_op(s, room, RoomOp::Join).await?;
        Ok(Member { room: Some(room.to_string()), username: s.username.to_string(), role: Role::Member, online: None })
    }

    /// Changes a member's role.
    pub async fn set_role(&self, s: &Session, room: &str, target: String, role: &str) -> Result<(), ApiError> {
        let Some(role) = Role::from_name(role) else {
            return Err(ApiError::bad_request(format!("role {role:?} is not owner, moderator or member")));
        };
        self.room_op(s, room, RoomOp::SetRole(target, role)).await
    }

    /// Mutes a member for `seconds`.
    pub async fn mute(&self, s: &Session, room: &str, target: String, seconds: u64) -> Result<(), ApiError> {
        if seconds == 0 || seconds > MAX_MUTE_SECS {
            return Err(ApiError::bad_request(format!("seconds must be 1 to {MAX_MUTE_SECS}")));
        }
        self.room_op(s, room, RoomOp::Mute(target, now_ms() + seconds * 1000)).await
    }

    /// Stores the caller's read marker.
    pub async fn mark_read(&self, s: &Session, room: &str, seq: u64) -> Result<(), ApiError> {
        check_room_id(room)?;
        let r = self
            .read(|meta| {
                let r = meta.authorize(&s.username, room, Action::MarkRead)?;
                Ok(room_ref(&r.info, room))
            })
            .await?;
        let mut last = self.last_seq(&r, false).await?;
        if seq > last {
            // The reader may have seen it on a node further ahead.
            last = self.last_seq(&r, true).await?;
        }
        if seq > last {
            return Err(ApiError::bad_request(format!("seq {seq} is past the room's last message ({last})")));
        }
        self.read_markers
            .submit(&s.username, room, seq)
            .await
            .map_err(|_| ApiError::unavailable("the node is shutting down"))?
    }

    /// The members, with their presence.
    pub async fn members(&self, s: &Session, room: &str) -> Result<Vec<Member>, ApiError> {
        check_room_id(room)?;
        let members: Vec<(String, Role)> = self
            .read(|meta| {
                let r = meta.authorize(&s.username, room, Action::ListMembers)?;
                Ok(r.members.iter().map(|(name, m)| (name.clone(), m.role)).collect())
            })
            .await?;
        Ok(members
            .into_iter()
            .map(|(name, role)| {
                let online = Some(self.is_online(&name));
                Member { room: None, username: name, role, online }
            })
            .collect())
    }

    /// Each member's read marker, by username.
    pub async fn receipts(&self, s: &Session, room: &str) -> Result<Vec<Receipt>, ApiError> {
        check_room_id(room)?;
        self.read(|meta| {
            let r = meta.authorize(&s.username, room, Action::ListMembers)?;
            Ok(r.members.iter().map(|(name, m)| Receipt { username: name.clone(), seq: m.read_seq }).collect())
        })
        .await
    }

    /// The moderation trail, oldest first.
    pub async fn audit(&self, s: &Session, room: &str) -> Result<Vec<AuditEntry>, ApiError> {
        check_room_id(room)?;
        self.read(|meta| {
            let trail = &meta.authorize(&s.username, room, Action::ReadAudit)?.audit;
            Ok(trail
                .iter()
                .map(|e| AuditEntry {
                    ts: e.ts,
                    actor: e.actor.clone(),
                    action: e.action.clone(),
                    target: Some(e.target.clone()),
                    detail: e.detail.clone(),
                })
                .collect())
        })
        .await
    }

    /// The direct room with `peer`, made on first use.
    pub async fn open_direct(&self, s: &Session, peer: &str) -> Result<RoomView, ApiError> {
        check_target(peer)?;
        self.quotas.take(Usage::Write, &s.username, now_ms())?;
        let cmd =
            MetaCommand::OpenDirect { actor: s.username.to_string(), peer: peer.to_string(), owner_node: self.id };
        match self.propose(cmd).await? {
            MetaOk::Room(info) => {
                let last_seq = self.last_seq(&room_ref(&info, &info.id), false).await?;
                Ok(view(&info, last_seq, None))
            }
            other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// The room the caller may read, as the log layer addresses it.
    pub async fn readable_room(&self, s: &Session, room: &str) -> Result<RoomRef, ApiError> {
        check_room_id(room)?;
        self.read(|meta| {
            let r = meta.authorize(&s.username, room, Action::Read)?;
            Ok(room_ref(&r.info, room))
        })
        .await
    }
}

/// A room as the metadata shows it to the caller, before its last seq is
/// read from the room's log.
struct Seen {
    info: RoomInfo,
    /// The caller's read marker, if a member.
    read_seq: Option<u64>,
    /// Days its messages are kept (0: forever).
    retention_days: u32,
}

impl Seen {
    fn of(room: &Room, caller: &str, retention_days: u32) -> Self {
        Seen { info: room.info.clone(), read_seq: room.members.get(caller).map(|m| m.read_seq), retention_days }
    }
}

fn view(info: &RoomInfo, last_seq: u64, unread: Option<u64>) -> RoomView {
    RoomView {
        room: info.id.clone(),
        title: info.title.clone(),
        visibility: info.visibility,
        owner: Some(info.owner.clone()),
        created_at: info.created_at,
        last_seq,
        unread,
        retention_days: None,
    }
}

/// How the room logs address a room the metadata knows.
pub(crate) fn room_ref(info: &crate::meta::RoomInfo, id: &str) -> RoomRef {
    RoomRef { key: info.key, id: id.into() }
}
