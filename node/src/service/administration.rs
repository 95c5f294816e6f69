//! Account administration: accounts made by an admin or the operations CLI,
//! password changes, the user list, disabling and enabling accounts, and
//! invite codes. Who may do what is checked again where the command is
//! ordered (`meta/accounts.rs`); the checks here give early, clear answers.

use std::net::IpAddr;

use palaver_protocol::Code;
use palaver_protocol::UserEntry;
use palaver_protocol::UserRole;

use super::ApiError;
use super::Node;
use super::Session;
use crate::auth::random_token;
use crate::auth::token_hash;
use crate::auth::valid_password;
use crate::auth::valid_username;
use crate::clock::now_ms;
use crate::meta::AccountCommand;
use crate::meta::MetaCommand;
use crate::meta::MetaOk;
use crate::meta::OPS_ACTOR;

/// Most accounts one page of the user list holds.
pub const USERS_PAGE_MAX: usize = 1000;
/// Accounts in a page when the caller does not say.
pub const USERS_PAGE_DEFAULT: usize = 100;
/// Most sign-ups one invite code admits.
pub const INVITE_USES_MAX: u32 = 10_000;
/// Longest life of an invite code: 90 days.
pub const INVITE_TTL_MAX_SECS: u64 = 90 * 24 * 3600;
/// An invite code's life when the caller does not say: 7 days.
pub const INVITE_TTL_DEFAULT_SECS: u64 = 7 * 24 * 3600;

/// Who acts on the operations side: an admin by name, or the ops token.
fn actor_name(admin: Option<&str>) -> String {
    admin.unwrap_or(OPS_ACTOR).to_string()
}

impl Node {
    /// Makes an account with a role (`admin` by the ops token or an admin).
    pub async fn create_user(
        &self,
        admin: Option<&str>,
        username: String,
        password: String,
        role: UserRole,
    ) -> Result<UserRole, ApiError> {
        if !valid_username(&username) {
            return Err(ApiError::bad_request("username must match ^[a-z0-9_.-]{3,32}$"));
        }
        if !valid_password(&password) {
            return Err(ApiError::bad_request("password must be 8 to 128 characters"));
        }
        if self.meta().users.contains_key(&username) {
            return Err(ApiError::new(Code::Conflict, format!("username {username} is taken")));
        }
        let password_hash = self.passwords.hash(password).await?;
        let cmd = AccountCommand::Create { actor: actor_name(admin), username: username.clone(), password_hash, role };
        match self.propose(MetaCommand::Account(cmd)).await? {
            MetaOk::Registered(role) => {
                tracing::info!(%username, role = role.as_str(), by = admin.unwrap_or("ops token"), "account made");
                Ok(role)
            }
            other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Changes the caller's password after checking the old one; every
    /// other session of the caller ends (its sockets close 4003). Guesses
    /// at the old password count as failed logins.
    pub async fn change_password(
        &self,
        session: &Session,
        addr: IpAddr,
        old: String,
        new: String,
    ) -> Result<(), ApiError> {
        if !valid_password(&new) {
            return Err(ApiError::bad_request("the new password must be 8 to 128 characters"));
        }
        let account = &*session.username;
        let now = now_ms();
        self.quotas.check_login(account, addr, now)?;
        let _attempt = self.quotas.slow_down(account, now).await;
        if !self.password_matches(account, old).await? {
            metrics::counter!("palaver_logins_failed_total").increment(1);
            self.quotas.login_failed(account, addr, now_ms());
            return Err(ApiError::forbidden("the old password is wrong"));
        }
        self.quotas.login_ok(account, addr, now_ms());
        let password_hash = self.passwords.hash(new).await?;
        let cmd =
            AccountCommand::SetPassword { username: account.to_string(), password_hash, keep: session.token_hash };
        self.propose(MetaCommand::Account(cmd)).await?;
        tracing::info!(username = %account, "password changed; the other sessions ended");
        Ok(())
    }

    /// Accounts whose name starts with `prefix`, by name, at most `limit`.
    pub async fn list_users(&self, prefix: &str, limit: Option<usize>) -> Result<Vec<UserEntry>, ApiError> {
        let limit = limit.unwrap_or(USERS_PAGE_DEFAULT);
        if !(1..=USERS_PAGE_MAX).contains(&limit) {
            return Err(ApiError::bad_request(format!("limit must be from 1 to {USERS_PAGE_MAX}")));
        }
        if prefix.len() > 32 {
            return Err(ApiError::bad_request("prefix is at most 32 characters"));
        }
        self.read(|meta| {
            Ok(meta
                .users
                .range(prefix.to_string()..)
                .take_while(|(name, _)| name.starts_with(prefix))
                .take(limit)
                .map(|(name, u)| UserEntry {
                    username: name.clone(),
                    role: u.role,
                    disabled: meta.is_disabled(name),
                    created_at: u.created_at,
                })
                .collect())
        })
        .await
    }

    /// Disables (every session ends at once, on every node) or enables an
    /// account.
    pub async fn set_disabled(&self, admin: Option<&str>, username: &str, disabled: bool) -> Result<(), ApiError> {
        if !valid_username(username) {
            return Err(ApiError::not_found(format!("user {username}")));
        }
        let cmd = AccountCommand::SetDisabled { actor: actor_name(admin), username: username.to_string(), disabled };
        self.propose(MetaCommand::Account(cmd)).await?;
        tracing::info!(%username, disabled, by = admin.unwrap_or("ops token"), "account disabled or enabled");
        Ok(())
    }

    /// Makes an invite code for `uses` sign-ups within `ttl_secs`; the code
    /// is answered once and kept only as its hash.
    pub async fn create_invite(
        &self,
        admin: Option<&str>,
        uses: Option<u32>,
        ttl_secs: Option<u64>,
    ) -> Result<String, ApiError> {
        let uses = uses.unwrap_or(1);
        let ttl_secs = ttl_secs.unwrap_or(INVITE_TTL_DEFAULT_SECS);
        if !(1..=INVITE_USES_MAX).contains(&uses) {
            return Err(ApiError::bad_request(format!("uses must be from 1 to {INVITE_USES_MAX}")));
        }
        if !(1..=INVITE_TTL_MAX_SECS).contains(&ttl_secs) {
            return Err(ApiError::bad_request(format!("ttl_secs must be from 1 to {INVITE_TTL_MAX_SECS}")));
        }
        let code = random_token();
        let cmd = AccountCommand::CreateInvite {
            actor: actor_name(admin),
            code_hash: token_hash(&code),
            uses,
            expires_at: now_ms() + ttl_secs * 1000,
        };
        self.propose(MetaCommand::Account(cmd)).await?;
        tracing::info!(uses, ttl_secs, by = admin.unwrap_or("ops token"), "invite code made");
        Ok(code)
    }
}
