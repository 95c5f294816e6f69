//! Account administration in the metadata: accounts made by an admin or the
//! operations CLI, sign-up (with an invite code when the cluster asks for
//! one), password changes, disabled accounts and invite codes.
//!
//! Every check that depends on the order of writes is made here, where the
//! writes are ordered: an invite used up by two sign-ups at once admits one,
//! a login applied after a disable is refused.

use std::collections::BTreeMap;
use std::collections::BTreeSet;

use serde::Deserialize;
use serde::Serialize;

use palaver_protocol::UserRole;

use super::MetaEffect;
use super::MetaError;
use super::MetaOk;
use super::MetaReply;
use super::MetaState;
use super::OPS_ACTOR;
use super::TokenHash;
use super::User;

/// An invite code (kept as the SHA-256 of the code, like tokens).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InviteCode {
    /// Sign-ups it still admits.
    pub uses_left: u32,
    /// Unusable from then on (Unix ms).
    pub expires_at: u64,
    /// The admin who made it (`@ops` for the operations token).
    pub created_by: String,
}

/// The accounts' administrative state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AccountsState {
    /// Accounts that may not log in.
    pub disabled: BTreeSet<String>,
    /// Invite codes by hash.
    pub invites: BTreeMap<TokenHash, InviteCode>,
}

/// Account administration commands.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum AccountCommand {
    /// Make an account with a role: an admin's or the operations CLI's.
    Create {
        /// Who asks: an admin, or [`OPS_ACTOR`].
        actor: String,
        /// Validated username.
        username: String,
        /// argon2id PHC string.
        password_hash: String,
        /// Admin or user.
        role: UserRole,
    },
    /// Register through the public route: always a user; uses up one use of
    /// the invite when one is given.
    SignUp {
        /// Validated username.
        username: String,
        /// argon2id PHC string.
        password_hash: String,
        /// The invite code's hash, when the cluster asks for one.
        invite: Option<TokenHash>,
    },
    /// A user's new password (the old one was checked by the proposer):
    /// every session of the user but `keep` ends.
    SetPassword {
        /// Whose.
        username: String,
        /// The new argon2id PHC string.
        password_hash: String,
        /// The session that asked, which stays.
        keep: TokenHash,
    },
    /// Disable or enable an account; disabling ends its sessions.
    SetDisabled {
        /// The admin who asks.
        actor: String,
        /// Whose account.
        username: String,
        /// Disabled or enabled.
        disabled: bool,
    },
    /// Make an invite code.
    CreateInvite {
        /// The admin who asks.
        actor: String,
        /// SHA-256 of the code.
        code_hash: TokenHash,
        /// Sign-ups it admits.
        uses: u32,
        /// End of life (Unix ms).
        expires_at: u64,
    },
}

impl AccountCommand {
    /// Whether applying this takes a right away (sessions end).
    pub fn revokes_access(&self) -> bool {
        matches!(self, AccountCommand::SetPassword { .. } | AccountCommand::SetDisabled { disabled: true, .. })
    }
}

impl MetaState {
    /// Whether `username`'s account is disabled.
    pub fn is_disabled(&self, username: &str) -> bool {
        self.accounts.disabled.contains(username)
    }

    /// Applies an account administration command.
    pub(super) fn apply_account(&mut self, now: u64, cmd: &AccountCommand, effects: &mut Vec<MetaEffect>) -> MetaReply {
        match cmd {
            AccountCommand::Create { actor, username, password_hash, role } => {
                if actor != OPS_ACTOR && !self.is_admin(actor) {
                    return Err(MetaError::Forbidden("making accounts is for admins".into()));
                }
                self.add_user(username, password_hash, *role, now)
            }
            AccountCommand::SignUp { username, password_hash, invite } => {
                if self.users.contains_key(username) {
                    return Err(MetaError::Conflict(format!("username {username} is taken")));
                }
                if let Some(hash) = invite {
                    self.use_invite(hash, now)?;
                }
                self.add_user(username, password_hash, UserRole::User, now)
            }
            AccountCommand::SetPassword { username, password_hash, keep } => {
                let user = self.users.get_mut(username).ok_or(MetaError::Unauthorized)?;
                user.password_hash = password_hash.clone();
                self.end_sessions(username, Some(keep), effects);
                Ok(MetaOk::Done)
            }
            AccountCommand::SetDisabled { actor, username, disabled } => {
                if !self.is_admin(actor) && actor != OPS_ACTOR {
                    return Err(MetaError::Forbidden("disabling accounts is for admins".into()));
                }
                if !self.users.contains_key(username) {
                    return Err(MetaError::NotFound(format!("user {username}")));
                }
                if *disabled && actor == username {
                    return Err(MetaError::Conflict("an admin cannot disable their own account".into()));
                }
                if *disabled {
                    self.accounts.disabled.insert(username.clone());
                    self.end_sessions(username, None, effects);
                } else {
                    self.accounts.disabled.remove(username);
                }
                Ok(MetaOk::Done)
            }
            AccountCommand::CreateInvite { actor, code_hash, uses, expires_at } => {
                if actor != OPS_ACTOR && !self.is_admin(actor) {
                    return Err(MetaError::Forbidden("invite codes are made by admins".into()));
                }
                if *uses == 0 || *expires_at <= now {
                    return Err(MetaError::BadRequest("an invite needs at least one use and a future end".into()));
                }
                let invite = InviteCode { uses_left: *uses, expires_at: *expires_at, created_by: actor.clone() };
                self.accounts.invites.insert(*code_hash, invite);
                Ok(MetaOk::Done)
            }
        }
    }

    fn add_user(&mut self, username: &str, password_hash: &str, role: UserRole, now: u64) -> MetaReply {
        if self.users.contains_key(username) {
            return Err(MetaError::Conflict(format!("username {username} is taken")));
        }
        let user = User { password_hash: password_hash.to_string(), role, created_at: now };
        self.users.insert(username.to_string(), user);
        Ok(MetaOk::Registered(role))
    }

    fn use_invite(&mut self, hash: &TokenHash, now: u64) -> Result<(), MetaError> {
        let invalid = || MetaError::Forbidden("the invite code is unknown, used up or expired".into());
        let invite = self.accounts.invites.get_mut(hash).ok_or_else(invalid)?;
        if invite.expires_at <= now || invite.uses_left == 0 {
            self.accounts.invites.remove(hash);
            return Err(invalid());
        }
        invite.uses_left -= 1;
        if invite.uses_left == 0 {
            self.accounts.invites.remove(hash);
        }
        Ok(())
    }

    /// Ends every session of `username` (but `keep`) and the tickets that
    /// stand for them; their sockets close as the effects are handled.
    fn end_sessions(&mut self, username: &str, keep: Option<&TokenHash>, effects: &mut Vec<MetaEffect>) {
        let ended: Vec<TokenHash> =
            self.sessions.iter().filter(|(h, s)| s.username == username && Some(*h) != keep).map(|(h, _)| *h).collect();
        for h in &ended {
            self.sessions.remove(h);
            effects.push(MetaEffect::SessionEnded { token_hash: *h });
        }
        self.tickets.retain(|_, t| !ended.contains(&t.token_hash));
    }

    /// Drops invite codes past their end (part of the session sweep).
    pub(super) fn sweep_invites(&mut self, now: u64) {
        self.accounts.invites.retain(|_, i| i.expires_at > now);
    }
}
