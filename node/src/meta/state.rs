//! The metadata state, its commands, replies and effects, and `apply`.

use std::collections::BTreeMap;
use std::collections::BTreeSet;
use std::fmt;

use serde::Deserialize;
use serde::Serialize;

use super::accounts::AccountCommand;
use super::accounts::AccountsState;
use super::layout::Layout;
use super::layout::LayoutCommand;

use palaver_protocol::MemberChange;
use palaver_protocol::Role;
use palaver_protocol::UserRole;
use palaver_protocol::Visibility;

use crate::permissions::Action;
use crate::permissions::Denied;
use crate::permissions::Standing;
use crate::permissions::{self};

/// SHA-256 of a bearer token or ticket: the only form in which tokens are kept.
pub type TokenHash = [u8; 32];

/// A Raft node id.
pub type NodeId = u64;

/// How many moderation entries a room keeps; older ones are dropped first.
pub const AUDIT_CAP: usize = 10_000;

/// An account.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    /// The argon2id PHC string.
    pub password_hash: String,
    /// Admin or user.
    pub role: UserRole,
    /// When the account was made.
    pub created_at: u64,
}

/// A logged-in token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Session {
    /// Whose token.
    pub username: String,
    /// When the token was issued.
    pub created_at: u64,
    /// Absolute end of life.
    pub expires_at: u64,
    /// Last recorded use (kept coarse: see [`MetaCommand::Touch`]).
    pub last_seen: u64,
    /// Unused this long, the token expires.
    pub idle_ms: u64,
}

impl Session {
    /// Whether the token still works at `now`.
    pub fn valid_at(&self, now: u64) -> bool {
        now < self.expires_at && now.saturating_sub(self.last_seen) < self.idle_ms
    }
}

/// A one-time ticket for transports that cannot send headers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ticket {
    /// The session it stands for.
    pub token_hash: TokenHash,
    /// Unusable from then on.
    pub expires_at: u64,
}

/// A member's standing inside a room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Owner, moderator or member.
    pub role: Role,
    /// Highest seq the member marked read.
    pub read_seq: u64,
}

/// One moderation action, for the audit trail.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When it happened.
    pub ts: u64,
    /// Who did it.
    pub actor: String,
    /// What: kick, ban, unban, mute, unmute, role, invite, delete_message.
    pub action: String,
    /// Whom (a username).
    pub target: String,
    /// Extra detail: the new role, the mute end, the deleted seq.
    pub detail: Option<String>,
}

/// A room's own fields, as answered to clients.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoomInfo {
    /// The room id.
    pub id: String,
    /// A number never reused, keying the room's log (a room deleted and made
    /// again starts a fresh log).
    pub key: u64,
    /// Display title.
    pub title: String,
    /// Public, private or direct.
    pub visibility: Visibility,
    /// The owner's username (for direct rooms: who opened it).
    pub owner: String,
    /// When it was made.
    pub created_at: u64,
    /// The node that assigns seq in this room.
    pub owner_node: NodeId,
    /// Bumped each time the room's log moves to another node (fencing).
    pub epoch: u64,
}

/// A room and everything the cluster must agree on about it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// Id, title, owner, log placement.
    pub info: RoomInfo,
    /// Members by username.
    pub members: BTreeMap<String, Member>,
    /// Users invited and not yet joined.
    pub invites: BTreeSet<String>,
    /// Users banned.
    pub bans: BTreeSet<String>,
    /// Muted members and the time the mute ends.
    pub mutes: BTreeMap<String, u64>,
    /// Moderation actions, oldest first.
    pub audit: Vec<AuditEntry>,
}

impl Room {
    /// Where `username` stands in this room.
    pub fn standing(&self, username: &str) -> Standing {
        if let Some(m) = self.members.get(username) {
            Standing::Member(m.role)
        } else if self.bans.contains(username) {
            Standing::Banned
        } else {
            Standing::Outsider { invited: self.invites.contains(username) }
        }
    }

    /// Whether `username` is muted at `now`.
    pub fn muted(&self, username: &str, now: u64) -> bool {
        self.mutes.get(username).is_some_and(|until| *until > now)
    }

    fn record(&mut self, ts: u64, actor: &str, action: &str, target: &str, detail: Option<String>) {
        if self.audit.len() >= AUDIT_CAP {
            self.audit.remove(0);
        }
        self.audit.push(AuditEntry {
            ts,
            actor: actor.to_string(),
            action: action.to_string(),
            target: target.to_string(),
            detail,
        });
    }
}

/// A command with the proposer's clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaRequest {
    /// Unix ms on the proposing node; the state machine's only clock.
    pub now: u64,
    /// What to do.
    pub cmd: MetaCommand,
}

impl fmt::Display for MetaRequest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}@{}", self.cmd, self.now)
    }
}

/// Every change to the metadata.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaCommand {
    /// Make an account; the first one of the cluster became admin. Kept so
    /// that older logs replay as they did: nodes now propose
    /// [`AccountCommand::SignUp`], which never makes an admin.
    Register {
        /// Validated username.
        username: String,
        /// argon2id PHC string.
        password_hash: String,
    },
    /// Record a session after the password was verified.
    Login {
        /// Whose.
        username: String,
        /// SHA-256 of the token.
        token_hash: TokenHash,
        /// Absolute lifetime end.
        expires_at: u64,
        /// Idle lifetime.
        idle_ms: u64,
    },
    /// Record that a token was used (sent at most once per interval per token).
    Touch {
        /// The token.
        token_hash: TokenHash,
    },
    /// End a session.
    Logout {
        /// The token.
        token_hash: TokenHash,
    },
    /// Drop expired sessions and tickets.
    Sweep,
    /// Issue a one-time ticket for a session.
    IssueTicket {
        /// SHA-256 of the ticket.
        ticket_hash: TokenHash,
        /// The session it stands for.
        token_hash: TokenHash,
        /// Ticket end of life.
        expires_at: u64,
    },
    /// Use up a ticket.
    RedeemTicket {
        /// SHA-256 of the ticket.
        ticket_hash: TokenHash,
    },
    /// Make a public or private room.
    CreateRoom {
        /// Who makes it (becomes owner).
        actor: String,
        /// Validated id.
        room: String,
        /// Title.
        title: String,
        /// Public or private.
        visibility: Visibility,
        /// The node that will own its log.
        owner_node: NodeId,
    },
    /// Open (or find) the direct room of two users.
    OpenDirect {
        /// Who asks.
        actor: String,
        /// The other user.
        peer: String,
        /// The node that will own its log if it is new.
        owner_node: NodeId,
    },
    /// A room action by `actor` on `room`.
    Room {
        /// Who acts.
        actor: String,
        /// Which room.
        room: String,
        /// What.
        op: RoomOp,
    },
    /// Store many members' read markers at once (coalesced on the node
    /// that took them: at most one write per second carries them all).
    ReadMarkers {
        /// Whose marker, in which room, at which seq; the latest wins.
        markers: Vec<ReadMarker>,
    },
    /// Mark a node as draining (no new clients) or not.
    SetDraining {
        /// Who asks (must be the admin).
        actor: String,
        /// Which node.
        node: NodeId,
        /// Draining or serving.
        draining: bool,
    },
    /// Move a room's log to another node (fencing by epoch).
    AssignRoom {
        /// Which room.
        room: String,
        /// Its new owner node.
        owner_node: NodeId,
        /// Must be greater than the current epoch.
        epoch: u64,
    },
    /// Change the node set or the shards' replica sets.
    Layout {
        /// The admin who asks; `None` when the nodes propose it themselves.
        actor: Option<String>,
        /// What.
        cmd: LayoutCommand,
    },
    /// Account administration (`meta/accounts.rs`).
    Account(AccountCommand),
}

/// The actor of a command made with the cluster's ops token (checked by the
/// node that took the request; never a valid username).
pub const OPS_ACTOR: &str = "@ops";

impl MetaCommand {
    /// Whether applying this takes a right away from someone (a session, a
    /// membership, a role, the right to send), or changes what a read that
    /// succeeds shows (a room's settings): such a write is answered only
    /// once every node applied it.
    pub fn revokes_access(&self) -> bool {
        match self {
            MetaCommand::Logout { .. } | MetaCommand::Sweep => true,
            MetaCommand::Room { op, .. } => matches!(
                op,
                RoomOp::Delete
                    | RoomOp::Leave
                    | RoomOp::Kick(_)
                    | RoomOp::Ban(_)
                    | RoomOp::SetRole(..)
                    | RoomOp::Mute(..)
                    // Not a revocation, but a success read elsewhere never
                    // checks again: shown everywhere before it is answered.
                    | RoomOp::Configure { .. }
            ),
            MetaCommand::Account(cmd) => cmd.revokes_access(),
            _ => false,
        }
    }
}

/// One member's read marker in one room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadMarker {
    /// The member.
    pub user: String,
    /// The room id.
    pub room: String,
    /// The highest seq they read.
    pub seq: u64,
}

/// Actions inside one room.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RoomOp {
    /// Delete the room.
    Delete,
    /// Join.
    Join,
    /// Leave.
    Leave,
    /// Invite a user.
    Invite(String),
    /// Remove a member.
    Kick(String),
    /// Ban a user.
    Ban(String),
    /// Lift a ban.
    Unban(String),
    /// Change a member's role; `Owner` hands the room over.
    SetRole(String, Role),
    /// Mute a member until a time.
    Mute(String, u64),
    /// Lift a mute.
    Unmute(String),
    /// Store the actor's read marker.
    MarkRead(u64),
    /// Audit a message deletion by someone other than its sender.
    AuditDelete {
        /// The message's sender.
        sender: String,
        /// The message's seq.
        seq: u64,
    },
    /// Audit an edit by the message's sender: the text it replaced.
    AuditEdit {
        /// The message's seq.
        seq: u64,
        /// The text before the edit.
        old_body: String,
    },
    /// Change the room's title and/or how long its messages are kept.
    Configure {
        /// A new title.
        title: Option<String>,
        /// Days messages are kept (0: forever).
        retention_days: Option<u32>,
    },
    /// Audit an expiry: proposed by the node whose shard removed the
    /// messages, never by a client.
    AuditExpire {
        /// Messages removed.
        count: u64,
        /// The newest seq removed.
        through_seq: u64,
    },
}

/// What a command answers on success.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum MetaOk {
    /// Done, nothing to report.
    Done,
    /// An account was made with this role.
    Registered(UserRole),
    /// The room as it is after the command.
    Room(RoomInfo),
    /// A ticket was redeemed for this session.
    Redeemed {
        /// Whose.
        username: String,
        /// The session's token hash.
        token_hash: TokenHash,
    },
}

/// Why a command was refused.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, thiserror::Error)]
pub enum MetaError {
    /// Absent, or invisible to the actor.
    #[error("{0} not found")]
    NotFound(String),
    /// Visible, but not allowed.
    #[error("{0}")]
    Forbidden(String),
    /// Clashes with existing state.
    #[error("{0}")]
    Conflict(String),
    /// The request makes no sense.
    #[error("{0}")]
    BadRequest(String),
    /// Token or ticket unknown or expired.
    #[error("not authenticated")]
    Unauthorized,
}

/// The state machine's answer to one command.
pub type MetaReply = Result<MetaOk, MetaError>;

/// What the live connections must do because a command was applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MetaEffect {
    /// A session ended (logout or expiry): close its sockets.
    SessionEnded {
        /// The token's hash.
        token_hash: TokenHash,
    },
    /// Someone's membership changed.
    MemberChanged {
        /// Room id.
        room: String,
        /// Room log key.
        room_key: u64,
        /// Whose.
        username: String,
        /// What changed.
        change: MemberChange,
        /// The role after the change, for joined and role.
        role: Option<Role>,
        /// Whether the user's live subscriptions continue (false after a
        /// kick or ban, and after leaving a room that is not public).
        may_read: bool,
    },
    /// A room is gone.
    RoomDeleted {
        /// Room id.
        room: String,
        /// Room log key.
        room_key: u64,
    },
    /// A room's log has a new owner node.
    RoomAssigned {
        /// Room id.
        room: String,
        /// Room log key.
        room_key: u64,
        /// New owner.
        owner_node: NodeId,
        /// New epoch.
        epoch: u64,
    },
    /// The node set or a shard's replicas changed: nodes open and close
    /// their shard groups to match.
    LayoutChanged,
    /// A member's read marker moved.
    ReadMoved {
        /// Room id.
        room: String,
        /// Room log key.
        room_key: u64,
        /// Whose marker.
        username: String,
        /// Where it is now.
        seq: u64,
    },
}

/// The whole metadata state, identical on every node that applied the same log.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MetaState {
    /// Accounts by username.
    pub users: BTreeMap<String, User>,
    /// Sessions by token hash.
    pub sessions: BTreeMap<TokenHash, Session>,
    /// Tickets by ticket hash.
    pub tickets: BTreeMap<TokenHash, Ticket>,
    /// Rooms by id.
    pub rooms: BTreeMap<String, Room>,
    /// The next room log key to hand out.
    pub next_room_key: u64,
    /// Nodes that take no new clients (the balancer steers new ones away).
    pub draining: BTreeSet<NodeId>,
    /// The nodes and where each shard of room logs lives.
    pub layout: Layout,
    /// Per room id, the days its messages are kept (0: forever), where its
    /// owner set it; other rooms keep the cluster's default.
    pub retention: BTreeMap<String, u32>,
    /// Disabled accounts and invite codes.
    pub accounts: AccountsState,
}

/// The metadata state as snapshot format 3 stored it, before account
/// administration (data of an earlier version of Palaver).
#[derive(Debug, Deserialize)]
pub struct MetaStateV3 {
    users: BTreeMap<String, User>,
    sessions: BTreeMap<TokenHash, Session>,
    tickets: BTreeMap<TokenHash, Ticket>,
    rooms: BTreeMap<String, Room>,
    next_room_key: u64,
    draining: BTreeSet<NodeId>,
    layout: Layout,
    retention: BTreeMap<String, u32>,
}

impl From<MetaStateV3> for MetaState {
    fn from(v3: MetaStateV3) -> Self {
        let MetaStateV3 { users, sessions, tickets, rooms, next_room_key, draining, layout, retention } = v3;
        MetaState {
            users,
            sessions,
            tickets,
            rooms,
            next_room_key,
            draining,
            layout,
            retention,
            accounts: AccountsState::default(),
        }
    }
}

/// The metadata state as snapshot format 2 stored it, before retention
/// (data of an earlier version of Palaver).
#[derive(Debug, Deserialize)]
pub struct MetaStateV2 {
    users: BTreeMap<String, User>,
    sessions: BTreeMap<TokenHash, Session>,
    tickets: BTreeMap<TokenHash, Ticket>,
    rooms: BTreeMap<String, Room>,
    next_room_key: u64,
    draining: BTreeSet<NodeId>,
    layout: Layout,
}

impl From<MetaStateV2> for MetaState {
    fn from(v2: MetaStateV2) -> Self {
        let MetaStateV2 { users, sessions, tickets, rooms, next_room_key, draining, layout } = v2;
        MetaState {
            users,
            sessions,
            tickets,
            rooms,
            next_room_key,
            draining,
            layout,
            retention: BTreeMap::new(),
            accounts: AccountsState::default(),
        }
    }
}

/// The metadata state as snapshot format 1 stored it, before the layout
/// (data of an earlier version of Palaver).
#[derive(Debug, Deserialize)]
pub struct MetaStateV1 {
    users: BTreeMap<String, User>,
    sessions: BTreeMap<TokenHash, Session>,
    tickets: BTreeMap<TokenHash, Ticket>,
    rooms: BTreeMap<String, Room>,
    next_room_key: u64,
    draining: BTreeSet<NodeId>,
}

impl From<MetaStateV1> for MetaState {
    fn from(v1: MetaStateV1) -> Self {
        let MetaStateV1 { users, sessions, tickets, rooms, next_room_key, draining } = v1;
        MetaState {
            users,
            sessions,
            tickets,
            rooms,
            next_room_key,
            draining,
            layout: Layout::default(),
            retention: BTreeMap::new(),
            accounts: AccountsState::default(),
        }
    }
}

/// The id of the direct room between two users.
pub fn direct_room_id(a: &str, b: &str) -> String {
    let (x, y) = if a <= b { (a, b) } else { (b, a) };
    format!("dm:{x}:{y}")
}

fn denied(e: Denied, room: &str) -> MetaError {
    match e {
        Denied::NotFound => MetaError::NotFound(format!("room {room}")),
        Denied::Forbidden => MetaError::Forbidden(format!("not allowed in room {room}")),
        Denied::Conflict => MetaError::Conflict(format!("already a member of room {room}")),
    }
}

impl MetaState {
    /// The session behind a token hash, if it is valid at `now`.
    pub fn session(&self, token_hash: &TokenHash, now: u64) -> Option<&Session> {
        self.sessions.get(token_hash).filter(|s| s.valid_at(now))
    }

    /// Whether `username` is the cluster admin.
    pub fn is_admin(&self, username: &str) -> bool {
        self.users.get(username).is_some_and(|u| u.role == UserRole::Admin)
    }

    /// Checks `action` by `username` in `room`, hiding rooms the user may not see.
    pub fn authorize(&self, username: &str, room: &str, action: Action) -> Result<&Room, MetaError> {
        let r = self.rooms.get(room).ok_or_else(|| MetaError::NotFound(format!("room {room}")))?;
        permissions::check(r.standing(username), r.info.visibility, self.is_admin(username), action)
            .map_err(|e| denied(e, room))?;
        Ok(r)
    }

    /// Applies one command; pushes what the connections must do onto `effects`.
    pub fn apply(&mut self, req: &MetaRequest, effects: &mut Vec<MetaEffect>) -> MetaReply {
        let now = req.now;
        match &req.cmd {
            MetaCommand::Register { username, password_hash } => {
                if self.users.contains_key(username) {
                    return Err(MetaError::Conflict(format!("username {username} is taken")));
                }
                let role = if self.users.is_empty() { UserRole::Admin } else { UserRole::User };
                self.users
                    .insert(username.clone(), User { password_hash: password_hash.clone(), role, created_at: now });
                Ok(MetaOk::Registered(role))
            }
            MetaCommand::Login { username, token_hash, expires_at, idle_ms } => {
                if !self.users.contains_key(username) {
                    return Err(MetaError::Unauthorized);
                }
                if self.is_disabled(username) {
                    return Err(MetaError::Forbidden("this account is disabled".into()));
                }
                self.sessions.insert(
                    *token_hash,
                    Session {
                        username: username.clone(),
                        created_at: now,
                        expires_at: *expires_at,
                        last_seen: now,
                        idle_ms: *idle_ms,
                    },
                );
                Ok(MetaOk::Done)
            }
            MetaCommand::Touch { token_hash } => {
                match self.sessions.get_mut(token_hash) {
                    Some(s) if s.valid_at(now) => s.last_seen = s.last_seen.max(now),
                    _ => return Err(MetaError::Unauthorized),
                }
                Ok(MetaOk::Done)
            }
            MetaCommand::Logout { token_hash } => {
                if self.sessions.remove(token_hash).is_none() {
                    return Err(MetaError::Unauthorized);
                }
                self.tickets.retain(|_, t| t.token_hash != *token_hash);
                effects.push(MetaEffect::SessionEnded { token_hash: *token_hash });
                Ok(MetaOk::Done)
            }
            MetaCommand::Sweep => {
                let expired: Vec<TokenHash> =
                    self.sessions.iter().filter(|(_, s)| !s.valid_at(now)).map(|(h, _)| *h).collect();
                for h in expired {
                    self.sessions.remove(&h);
                    effects.push(MetaEffect::SessionEnded { token_hash: h });
                }
                let sessions = &self.sessions;
                self.tickets.retain(|_, t| t.expires_at > now && sessions.contains_key(&t.token_hash));
                self.sweep_invites(now);
                Ok(MetaOk::Done)
            }
            MetaCommand::IssueTicket { ticket_hash, token_hash, expires_at } => {
                if self.session(token_hash, now).is_none() {
                    return Err(MetaError::Unauthorized);
                }
                self.tickets.insert(*ticket_hash, Ticket { token_hash: *token_hash, expires_at: *expires_at });
                Ok(MetaOk::Done)
            }
            MetaCommand::RedeemTicket { ticket_hash } => {
                let ticket = self.tickets.remove(ticket_hash).ok_or(MetaError::Unauthorized)?;
                if ticket.expires_at <= now {
                    return Err(MetaError::Unauthorized);
                }
                let session = self.session(&ticket.token_hash, now).ok_or(MetaError::Unauthorized)?;
                Ok(MetaOk::Redeemed { username: session.username.clone(), token_hash: ticket.token_hash })
            }
            MetaCommand::CreateRoom { actor, room, title, visibility, owner_node } => {
                if *visibility == Visibility::Direct {
                    return Err(MetaError::BadRequest("direct rooms are opened with /api/dm".into()));
                }
                if self.rooms.contains_key(room) {
                    return Err(MetaError::Conflict(format!("room {room} exists")));
                }
                let members = BTreeMap::from([(actor.clone(), Member { role: Role::Owner, read_seq: 0 })]);
                let r = self.new_room(room, title, *visibility, actor, now, *owner_node, members);
                Ok(MetaOk::Room(r))
            }
            MetaCommand::OpenDirect { actor, peer, owner_node } => {
                if actor == peer {
                    return Err(MetaError::BadRequest("a direct room needs two different users".into()));
                }
                if !self.users.contains_key(peer) {
                    return Err(MetaError::NotFound(format!("user {peer}")));
                }
                let id = direct_room_id(actor, peer);
                if let Some(r) = self.rooms.get(&id) {
                    return Ok(MetaOk::Room(r.info.clone()));
                }
                let member = Member { role: Role::Member, read_seq: 0 };
                let members = BTreeMap::from([(actor.clone(), member.clone()), (peer.clone(), member)]);
                let r = self.new_room(&id, "", Visibility::Direct, actor, now, *owner_node, members);
                Ok(MetaOk::Room(r))
            }
            MetaCommand::Room { actor, room, op } => self.apply_room(now, actor, room, op, effects),
            MetaCommand::ReadMarkers { markers } => {
                // Checked here, where it is ordered: a marker of someone who
                // left in the meantime is dropped.
                for m in markers {
                    let Some(r) = self.rooms.get_mut(&m.room) else { continue };
                    let Some(member) = r.members.get_mut(&m.user) else { continue };
                    if member.read_seq != m.seq {
                        member.read_seq = m.seq;
                        effects.push(MetaEffect::ReadMoved {
                            room: m.room.clone(),
                            room_key: r.info.key,
                            username: m.user.clone(),
                            seq: m.seq,
                        });
                    }
                }
                Ok(MetaOk::Done)
            }
            MetaCommand::SetDraining { actor, node, draining } => {
                if actor != OPS_ACTOR && !self.is_admin(actor) {
                    return Err(MetaError::Forbidden("draining a node is for admins".into()));
                }
                if *draining {
                    self.draining.insert(*node);
                } else {
                    self.draining.remove(node);
                }
                Ok(MetaOk::Done)
            }
            MetaCommand::AssignRoom { room, owner_node, epoch } => {
                let r = self.rooms.get_mut(room).ok_or_else(|| MetaError::NotFound(format!("room {room}")))?;
                if *epoch <= r.info.epoch {
                    return Err(MetaError::Conflict(format!("room {room} is already at epoch {}", r.info.epoch)));
                }
                r.info.owner_node = *owner_node;
                r.info.epoch = *epoch;
                effects.push(MetaEffect::RoomAssigned {
                    room: room.clone(),
                    room_key: r.info.key,
                    owner_node: *owner_node,
                    epoch: *epoch,
                });
                Ok(MetaOk::Room(r.info.clone()))
            }
            MetaCommand::Layout { actor, cmd } => {
                let admin = actor.as_deref().map(|a| self.is_admin(a));
                self.layout.apply(cmd, admin)?;
                effects.push(MetaEffect::LayoutChanged);
                Ok(MetaOk::Done)
            }
            MetaCommand::Account(cmd) => self.apply_account(now, cmd, effects),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_room(
        &mut self,
        id: &str,
        title: &str,
        visibility: Visibility,
        owner: &str,
        now: u64,
        owner_node: NodeId,
        members: BTreeMap<String, Member>,
    ) -> RoomInfo {
        self.next_room_key += 1;
        let info = RoomInfo {
            id: id.to_string(),
            key: self.next_room_key,
            title: title.to_string(),
            visibility,
            owner: owner.to_string(),
            created_at: now,
            owner_node,
            epoch: 1,
        };
        let r = Room {
            info: info.clone(),
            members,
            invites: BTreeSet::new(),
            bans: BTreeSet::new(),
            mutes: BTreeMap::new(),
            audit: Vec::new(),
        };
        self.rooms.insert(id.to_string(), r);
        info
    }

    fn apply_room(
        &mut self,
        now: u64,
        actor: &str,
        room: &str,
        op: &RoomOp,
        effects: &mut Vec<MetaEffect>,
    ) -> MetaReply {
        let admin = self.is_admin(actor);
        let target_exists = |name: &str| self.users.contains_key(name);
        let target_missing = match op {
            RoomOp::Invite(t) | RoomOp::Ban(t) => !target_exists(t),
            _ => false,
        };
        let r = self.rooms.get_mut(room).ok_or_else(|| MetaError::NotFound(format!("room {room}")))?;
        let standing = r.standing(actor);
        let target_role = |r: &Room, t: &str| {
            r.members.get(t).map(|m| m.role).ok_or_else(|| MetaError::NotFound(format!("member {t}")))
        };
        let action = match op {
            RoomOp::Delete => Action::DeleteRoom,
            RoomOp::Join => Action::Join,
            RoomOp::Leave => Action::Leave,
            RoomOp::Invite(_) => Action::Invite,
            RoomOp::Kick(t) => Action::Kick(target_role(r, t).unwrap_or(Role::Member)),
            RoomOp::Ban(t) => Action::Ban(r.members.get(t).map(|m| m.role)),
            RoomOp::Unban(_) => Action::Unban,
            RoomOp::SetRole(t, _) => Action::SetRole(target_role(r, t).unwrap_or(Role::Member)),
            RoomOp::Mute(t, _) | RoomOp::Unmute(t) => Action::Mute(target_role(r, t).unwrap_or(Role::Member)),
            RoomOp::MarkRead(_) => Action::MarkRead,
            RoomOp::AuditDelete { .. } => Action::DeleteMessage { own: false },
            RoomOp::AuditEdit { .. } => Action::DeleteMessage { own: true },
            RoomOp::Configure { .. } => Action::Configure,
            // The node's own record: no client makes this op.
            RoomOp::AuditExpire { .. } => Action::Read,
        };
        let system = matches!(op, RoomOp::AuditExpire { .. });
        if !system {
            permissions::check(standing, r.info.visibility, admin, action).map_err(|e| denied(e, room))?;
        }
        // Only now, with the actor allowed to see the room, may we say who is missing.
        if target_missing {
            return Err(MetaError::NotFound("user".into()));
        }
        let public = r.info.visibility == Visibility::Public;
        let key = r.info.key;
        let mut member_event = |username: &str, change: MemberChange, role: Option<Role>, may_read: bool| {
            effects.push(MetaEffect::MemberChanged {
                room: room.to_string(),
                room_key: key,
                username: username.to_string(),
                change,
                role,
                may_read,
            });
        };
        match op {
            RoomOp::Delete => {
                self.rooms.remove(room);
                self.retention.remove(room);
                effects.push(MetaEffect::RoomDeleted { room: room.to_string(), room_key: key });
                return Ok(MetaOk::Done);
            }
            RoomOp::Join => {
                r.invites.remove(actor);
                r.members.insert(actor.to_string(), Member { role: Role::Member, read_seq: 0 });
                member_event(actor, MemberChange::Joined, Some(Role::Member), true);
            }
            RoomOp::Leave => {
                r.members.remove(actor);
                r.mutes.remove(actor);
                member_event(actor, MemberChange::Left, None, public);
            }
            RoomOp::Invite(t) => {
                if r.members.contains_key(t) {
                    return Err(MetaError::Conflict(format!("{t} is already a member")));
                }
                if r.bans.contains(t) {
                    return Err(MetaError::Conflict(format!("{t} is banned")));
                }
                r.invites.insert(t.clone());
                r.record(now, actor, "invite", t, None);
            }
            RoomOp::Kick(t) => {
                target_role(r, t)?;
                r.members.remove(t);
                r.mutes.remove(t);
                r.record(now, actor, "kick", t, None);
                // docs/protocol.md: a kick ends the user's live subscriptions, public rooms included.
                member_event(t, MemberChange::Kicked, None, false);
            }
            RoomOp::Ban(t) => {
                r.members.remove(t);
                r.invites.remove(t);
                r.mutes.remove(t);
                r.bans.insert(t.clone());
                r.record(now, actor, "ban", t, None);
                member_event(t, MemberChange::Banned, None, false);
            }
            RoomOp::Unban(t) => {
                if !r.bans.remove(t) {
                    return Err(MetaError::NotFound(format!("ban of {t}")));
                }
                r.record(now, actor, "unban", t, None);
            }
            RoomOp::SetRole(t, role) => {
                target_role(r, t)?;
                if *role == Role::Owner {
                    if let Some(m) = r.members.get_mut(actor) {
                        m.role = Role::Moderator;
                    }
                    r.info.owner = t.clone();
                    member_event(actor, MemberChange::Role, Some(Role::Moderator), true);
                }
                if let Some(m) = r.members.get_mut(t) {
                    m.role = *role;
                }
                r.record(now, actor, "role", t, Some(role.as_str().to_string()));
                member_event(t, MemberChange::Role, Some(*role), true);
            }
            RoomOp::Mute(t, until) => {
                target_role(r, t)?;
                r.mutes.insert(t.clone(), *until);
                r.record(now, actor, "mute", t, Some(until.to_string()));
            }
            RoomOp::Unmute(t) => {
                target_role(r, t)?;
                r.mutes.remove(t);
                r.record(now, actor, "unmute", t, None);
            }
            RoomOp::MarkRead(seq) => {
                if let Some(m) = r.members.get_mut(actor)
                    && m.read_seq != *seq
                {
                    m.read_seq = *seq;
                    effects.push(MetaEffect::ReadMoved {
                        room: room.to_string(),
                        room_key: key,
                        username: actor.to_string(),
                        seq: *seq,
                    });
                }
            }
            RoomOp::AuditDelete { sender, seq } => {
                r.record(now, actor, "delete_message", sender, Some(seq.to_string()));
            }
            RoomOp::AuditEdit { seq, old_body } => {
                r.record(now, actor, "edit_message", actor, Some(format!("{seq}: {old_body}")));
            }
            RoomOp::Configure { title, retention_days } => {
                if let Some(title) = title {
                    r.record(now, actor, "set_title", room, Some(title.clone()));
                    r.info.title = title.clone();
                }
                if let Some(days) = retention_days {
                    r.record(now, actor, "set_retention", room, Some(days.to_string()));
                    self.retention.insert(room.to_string(), *days);
                }
                r.mutes.retain(|_, until| *until > now);
                return Ok(MetaOk::Room(r.info.clone()));
            }
            RoomOp::AuditExpire { count, through_seq } => {
                let noun = if *count == 1 { "message" } else { "messages" };
                r.record(now, "system", "expire", room, Some(format!("{count} {noun} through seq {through_seq}")));
            }
        }
        r.mutes.retain(|_, until| *until > now);
        Ok(MetaOk::Done)
    }
}
