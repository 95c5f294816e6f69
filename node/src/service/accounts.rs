//! Accounts and sessions: register, login, logout, tokens, tickets.

use std::net::IpAddr;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use palaver_protocol::Code;
use palaver_protocol::Login;
use palaver_protocol::Me;
use palaver_protocol::UserRole;

use super::ApiError;
use super::Node;
use super::Usage;
use crate::auth::random_token;
use crate::auth::token_hash;
use crate::auth::valid_password;
use crate::auth::valid_username;
use crate::clock::now_ms;
use crate::config::RegistrationMode;
use crate::meta::AccountCommand;
use crate::meta::MetaCommand;
use crate::meta::MetaOk;
use crate::meta::TokenHash;

/// How long a ticket for SSE or long polling stays valid.
const TICKET_MS: u64 = 60_000;
/// How often the leader drops expired sessions.
const SWEEP_EVERY: Duration = Duration::from_secs(5);

/// An authenticated caller.
#[derive(Debug, Clone)]
pub struct Session {
    /// Who.
    pub username: Arc<str>,
    /// With which token (its hash).
    pub token_hash: TokenHash,
}

impl Node {
    /// Makes a user account through the public route, as the registration
    /// mode allows (`invite`: `invite` must be a live code). Nobody becomes
    /// admin this way: `palaver admin create-user NAME --admin` makes admins.
    pub async fn register(
        &self,
        addr: IpAddr,
        username: String,
        password: String,
        invite: Option<String>,
    ) -> Result<UserRole, ApiError> {
        if !valid_username(&username) {
            return Err(ApiError::bad_request("username must match ^[a-z0-9_.-]{3,32}$"));
        }
        if !valid_password(&password) {
            return Err(ApiError::bad_request("password must be 8 to 128 characters"));
        }
        let invite = match (self.registration(), invite) {
            (RegistrationMode::Closed, _) => {
                return Err(ApiError::forbidden("registration is closed: an admin makes accounts"));
            }
            (RegistrationMode::Invite, None) => {
                return Err(ApiError::forbidden("registration needs an invite code (\"invite\")"));
            }
            (RegistrationMode::Invite, Some(code)) => Some(token_hash(&code)),
            (RegistrationMode::Open, _) => None,
        };
        self.quotas.take_register(addr, now_ms())?;
        if self.meta().users.contains_key(&username) {
            return Err(ApiError::new(Code::Conflict, format!("username {username} is taken")));
        }
        let password_hash = self.passwords.hash(password).await?;
        let cmd = AccountCommand::SignUp { username: username.clone(), password_hash, invite };
        match self.propose(MetaCommand::Account(cmd)).await? {
            MetaOk::Registered(role) => {
                tracing::info!(%username, role = role.as_str(), invited = invite.is_some(), "account registered");
                Ok(role)
            }
            other => Err(ApiError::internal(format!("unexpected reply {other:?}"))),
        }
    }

    /// Who may register on this cluster.
    pub fn registration(&self) -> RegistrationMode {
        // Resolved by the binary from the cluster file; a node built
        // without it is never open by accident.
        self.security.registration.unwrap_or(RegistrationMode::Invite)
    }

    /// Checks a password and issues a token. Unknown user and wrong password
    /// get the same answer after the same work.
    pub async fn login(&self, addr: IpAddr, username: String, password: String) -> Result<Login, ApiError> {
        let now = now_ms();
        // Counted under one key for every name that cannot exist, so junk
        // names cost no memory.
        let account = if valid_username(&username) { username.as_str() } else { "" };
        self.quotas.check_login(account, addr, now)?;
        let _attempt = self.quotas.slow_down(account, now).await;
        match self.password_matches(&username, password).await {
            Ok(true) => self.quotas.login_ok(account, addr, now_ms()),
            Ok(false) => {
                metrics::counter!("palaver_logins_failed_total").increment(1);
                self.quotas.login_failed(account, addr, now_ms());
                return Err(ApiError::unauthorized());
            }
            Err(e) => {
                // Not a failed guess (a busy hasher, no leader): nothing counts.
                self.quotas.login_ok(account, addr, now_ms());
                return Err(e);
            }
        }
        // Only after the password matched: a guess must not learn whether
        // an account exists or is disabled.
        if self.meta().is_disabled(&username) {
            return Err(ApiError::forbidden("this account is disabled"));
        }
        let token = random_token();
        let expires_at = now + self.security.token_absolute_secs * 1000;
        self.propose(MetaCommand::Login {
            username: username.clone(),
            token_hash: token_hash(&token),
            expires_at,
            idle_ms: self.security.token_idle_secs * 1000,
        })
        .await?;
        tracing::info!(%username, "logged in");
        Ok(Login { token, username, expires_at })
    }

    /// Whether `password` is `username`'s; an unknown user costs the same.
    pub(super) async fn password_matches(&self, username: &str, password: String) -> Result<bool, ApiError> {
        // An account registered elsewhere a moment ago must not look unknown here.
        let hash = match self
            .read(|meta| meta.users.get(username).map(|u| u.password_hash.clone()).ok_or_else(ApiError::unauthorized))
            .await
        {
            Ok(hash) => Some(hash),
            Err(e) if e.code == Code::Unauthorized => None,
            Err(e) => return Err(e),
        };
        Ok(self.passwords.verify(hash, password).await?)
    }

    /// Ends a session everywhere; its sockets close as the effect is applied.
    pub async fn logout(&self, session: &Session) -> Result<(), ApiError> {
        self.propose(MetaCommand::Logout { token_hash: session.token_hash }).await?;
        tracing::info!(username = %session.username, "logged out");
        Ok(())
    }

    /// The session behind a bearer token; records its use now and then.
    pub async fn authenticate(self: &Arc<Self>, token: &str) -> Result<Session, ApiError> {
        self.session_for(token_hash(token)).await
    }

    /// Records that a live connection still uses its token, so an open
    /// socket does not expire as idle.
    pub fn keep_alive(self: &Arc<Self>, s: &Session) {
        let now = now_ms();
        let last_seen = self.meta().session(&s.token_hash, now).map(|s| s.last_seen);
        if let Some(last_seen) = last_seen {
            self.touch(s.token_hash, last_seen, now);
        }
    }

    async fn session_for(self: &Arc<Self>, hash: TokenHash) -> Result<Session, ApiError> {
        let now = now_ms();
        let (username, last_seen) = self
            .read(|meta| {
                let s = meta.session(&hash, now).ok_or_else(ApiError::unauthorized)?;
                Ok((Arc::<str>::from(s.username.as_str()), s.last_seen))
            })
            .await?;
        self.touch(hash, last_seen, now);
        Ok(Session { username, token_hash: hash })
    }

    /// Records a token's use through Raft, at most once per interval, so the
    /// idle expiry holds on every node without a write per request.
    fn touch(self: &Arc<Self>, hash: TokenHash, last_seen: u64, now: u64) {
        let interval = (self.security.token_idle_secs * 1000 / 4).clamp(250, 60_000);
        if now.saturating_sub(last_seen) < interval {
            return;
        }
        {
            let mut touched = self.touched.lock();
            if touched.get(&hash).is_some_and(|t| now.saturating_sub(*t) < interval) {
                return;
            }
            touched.retain(|_, t| now.saturating_sub(*t) < interval);
            touched.insert(hash, now);
        }
        let node = self.clone();
        tokio::spawn(async move {
            if let Err(e) = node.propose(MetaCommand::Touch { token_hash: hash }).await {
                tracing::debug!(error = %e.message, "token touch not recorded");
            }
        });
    }

    /// The caller's name and cluster role.
    pub async fn me(&self, session: &Session) -> Result<Me, ApiError> {
        let role = self
            .read(|meta| meta.users.get(&*session.username).map(|u| u.role).ok_or_else(ApiError::unauthorized))
            .await?;
        Ok(Me { username: session.username.to_string(), role })
    }

    /// Issues a single-use ticket standing for the caller's session.
    pub async fn ticket(&self, session: &Session) -> Result<String, ApiError> {
        self.quotas.take(Usage::Ticket, &session.username, now_ms())?;
        let ticket = random_token();
        self.propose(MetaCommand::IssueTicket {
            ticket_hash: token_hash(&ticket),
            token_hash: session.token_hash,
            expires_at: now_ms() + TICKET_MS,
        })
        .await?;
        Ok(ticket)
    }

    /// Uses up a ticket; answers the session it stands for.
    pub async fn redeem_ticket(&self, ticket: &str) -> Result<Session, ApiError> {
        match self.propose(MetaCommand::RedeemTicket { ticket_hash: token_hash(ticket) }).await? {
            MetaOk::Redeemed { username, token_hash } => Ok(Session { username: username.into(), token_hash }),
            _ => Err(ApiError::unauthorized()),
        }
    }
}

/// Drops expired sessions now and then (only the leader proposes, and only
/// when something expired), which closes their sockets on every node.
pub(super) async fn sweep_expired(node: Weak<Node>) {
    let mut tick = tokio::time::interval(SWEEP_EVERY);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        if node.consensus.metrics().current_leader != Some(node.id) {
            continue;
        }
        let now = now_ms();
        let expired = node.meta().sessions.values().any(|s| !s.valid_at(now))
            || node.meta().tickets.values().any(|t| t.expires_at <= now)
            || node.meta().accounts.invites.values().any(|i| i.expires_at <= now);
        if expired && let Err(e) = node.propose(MetaCommand::Sweep).await {
            tracing::debug!(error = %e.message, "session sweep deferred");
        }
    }
}
