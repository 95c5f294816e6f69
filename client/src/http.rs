//! HTTP half of the protocol (§2, §3, §6 long polling): typed calls that
//! check the documented status, and a raw escape hatch.

use std::time::Duration;

use bytes::Bytes;
use palaver_protocol::Credentials;
use palaver_protocol::EditMessage;
use palaver_protocol::Invite;
use palaver_protocol::Mute;
use palaver_protocol::NewInvite;
use palaver_protocol::NewMessage;
use palaver_protocol::NewRoom;
use palaver_protocol::NewUser;
use palaver_protocol::PasswordChange;
use palaver_protocol::ReadMarker;
use palaver_protocol::Receipt;
use palaver_protocol::Registered;
use palaver_protocol::Registration;
use palaver_protocol::RoleChange;
use palaver_protocol::Ticket;
use palaver_protocol::UserEntry;
use palaver_protocol::UserMade;
use palaver_protocol::UserTarget;
use percent_encoding::NON_ALPHANUMERIC;
use percent_encoding::utf8_percent_encode;
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::error::Error;
use crate::error::Result;
use crate::error::clip;
use crate::types::Attachment;
use crate::types::AuditEntry;
use crate::types::Event;
use crate::types::Login;
use crate::types::Me;
use crate::types::Member;
use crate::types::Message;
use crate::types::PollAnswer;
use crate::types::Room;
use crate::types::SendAck;
use crate::types::Visibility;
use crate::ws::History;

pub use reqwest::Method;

/// How long an ordinary request may take before the client gives up.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Extra time a long poll gets on top of its own `timeout_ms`.
const POLL_GRACE: Duration = Duration::from_secs(30);
/// The body of a request that sends none.
const NO_BODY: Option<&()> = None;

/// An HTTP client for one server address, with or without a token.
#[derive(Clone, Debug)]
pub struct Http {
    client: reqwest::Client,
    addr: String,
    base: String,
    token: Option<String>,
}

/// A downloaded attachment.
#[derive(Clone, Debug)]
pub struct Download {
    /// The answer's headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// The file.
    pub bytes: Bytes,
}

impl Download {
    /// A header's value, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }
}

/// One page of a room's history (§4) and where the rest of it starts.
#[derive(Clone, Debug, PartialEq)]
pub struct HistoryPage {
    /// The page's messages, ascending.
    pub messages: Vec<Message>,
    /// The cursor of the `x-next-page` header: present when the server cut
    /// the page short at its byte cap, so the page may hold fewer messages
    /// than asked although more remain.
    pub next: Option<History>,
}

/// A raw answer: status and body, for tests of odd inputs.
#[derive(Clone, Debug)]
pub struct Raw {
    /// HTTP status.
    pub status: u16,
    /// Body parsed as JSON (`Value::Null` when empty or not JSON).
    pub json: Value,
    /// Body as text.
    pub text: String,
}

impl Raw {
    /// The protocol error code in the body, if it is a protocol error.
    pub fn code(&self) -> Option<&str> {
        self.json.get("error").and_then(|e| e.get("code")).and_then(Value::as_str)
    }
}

impl Http {
    /// A client for `addr` (`127.0.0.1:8080`; an `http://` prefix is accepted).
    pub fn new(addr: &str) -> Result<Http> {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/').to_string();
        let client = reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).build()?;
        Ok(Http { client, base: format!("http://{addr}"), addr, token: None })
    }

    /// A client for `addr` that opens a new connection for every request, as
    /// many browsers and mobile clients effectively do behind a balancer:
    /// each request may reach another node.
    pub fn unpooled(addr: &str) -> Result<Http> {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/').to_string();
        let client =
            reqwest::Client::builder().no_proxy().timeout(REQUEST_TIMEOUT).pool_max_idle_per_host(0).build()?;
        Ok(Http { client, base: format!("http://{addr}"), addr, token: None })
    }

    /// The same client, sending `token` as Bearer.
    pub fn with_token(&self, token: impl Into<String>) -> Http {
        Http { token: Some(token.into()), ..self.clone() }
    }

    /// The same client, sending no token.
    pub fn without_token(&self) -> Http {
        Http { token: None, ..self.clone() }
    }

    /// The Bearer token sent, if any.
    pub fn token(&self) -> Option<&str> {
        self.token.as_deref()
    }

    /// `host:port` of the server.
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// `http://host:port` of the server.
    pub fn base(&self) -> &str {
        &self.base
    }

    // ----- raw -----

    /// Sends any request with an optional JSON body; never fails on status.
    pub async fn request(&self, method: Method, path: &str, body: Option<&Value>) -> Result<Raw> {
        let mut req = self.builder(method, path);
        if let Some(body) = body {
            req = req.json(body);
        }
        raw(req.send().await?).await
    }

    /// Sends any request with raw body bytes (say, malformed JSON); never
    /// fails on status.
    pub async fn request_bytes(
        &self,
        method: Method,
        path: &str,
        content_type: Option<&str>,
        body: impl Into<Vec<u8>>,
    ) -> Result<Raw> {
        let mut req = self.builder(method, path).body(body.into());
        if let Some(ct) = content_type {
            req = req.header(reqwest::header::CONTENT_TYPE, ct);
        }
        raw(req.send().await?).await
    }

    // ----- accounts (§2) -----

    /// `POST /api/register`: 201, answers the username.
    pub async fn register(&self, username: &str, password: &str) -> Result<String> {
        let body = Credentials { username, password };
        let answer: Registered = self.json(Method::POST, "/api/register", Some(&body), &[201]).await?;
        Ok(answer.username)
    }

    /// `POST /api/login`: 200 with token.
    pub async fn login(&self, username: &str, password: &str) -> Result<Login> {
        self.json(Method::POST, "/api/login", Some(&Credentials { username, password }), &[200]).await
    }

    /// `POST /api/register` with an invite code (a cluster in `invite` mode).
    pub async fn register_invited(&self, username: &str, password: &str, invite: &str) -> Result<String> {
        let body = Registration { username, password, invite: Some(invite) };
        let answer: Registered = self.json(Method::POST, "/api/register", Some(&body), &[201]).await?;
        Ok(answer.username)
    }

    /// `POST /api/me/password`: 204; the caller's other sessions end.
    pub async fn change_password(&self, old: &str, new: &str) -> Result<()> {
        self.empty(Method::POST, "/api/me/password", Some(&PasswordChange { old, new })).await
    }

    // ----- account administration (§8, admins and the ops token) -----

    /// `POST /api/admin/users`: 201; `admin` makes an admin.
    pub async fn create_user(&self, username: &str, password: &str, admin: bool) -> Result<UserMade> {
        let body = NewUser { username, password, role: Some(if admin { "admin" } else { "user" }) };
        self.json(Method::POST, "/api/admin/users", Some(&body), &[201]).await
    }

    /// `GET /api/admin/users?prefix=&limit=`.
    pub async fn list_users(&self, prefix: &str, limit: u32) -> Result<Vec<UserEntry>> {
        let path = format!("/api/admin/users?prefix={}&limit={limit}", utf8_percent_encode(prefix, NON_ALPHANUMERIC));
        self.json(Method::GET, &path, NO_BODY, &[200]).await
    }

    /// `POST /api/admin/users/{u}/disable` (or `enable`): 204.
    pub async fn set_disabled(&self, username: &str, disabled: bool) -> Result<()> {
        let what = if disabled { "disable" } else { "enable" };
        self.empty(
            Method::POST,
            &format!("/api/admin/users/{}/{what}", utf8_percent_encode(username, NON_ALPHANUMERIC)),
            NO_BODY,
        )
        .await
    }

    /// `POST /api/admin/invites`: 201 with the code.
    pub async fn create_invite(&self, uses: u32, ttl_secs: u64) -> Result<String> {
        let body = NewInvite { uses: Some(uses), ttl_secs: Some(ttl_secs) };
        let answer: Invite = self.json(Method::POST, "/api/admin/invites", Some(&body), &[201]).await?;
        Ok(answer.code)
    }

    /// `POST /api/logout`: 204; this client's token stops working.
    pub async fn logout(&self) -> Result<()> {
        self.empty(Method::POST, "/api/logout", NO_BODY).await
    }

    /// `GET /api/me`.
    pub async fn me(&self) -> Result<Me> {
        self.json(Method::GET, "/api/me", NO_BODY, &[200]).await
    }

    /// `POST /api/ticket`: a one-time ticket for `/sse` or `/api/poll`.
    // protocol is silent on the status: any 2xx is accepted.
    pub async fn ticket(&self) -> Result<String> {
        let answer: Ticket = self.json(Method::POST, "/api/ticket", NO_BODY, &[]).await?;
        Ok(answer.ticket)
    }

    // ----- rooms (§3) -----

    /// `GET /api/rooms`: public rooms and the caller's rooms.
    pub async fn rooms(&self) -> Result<Vec<Room>> {
        self.json(Method::GET, "/api/rooms", NO_BODY, &[200]).await
    }

    /// `POST /api/rooms`: 201 with the room; the caller becomes owner.
    pub async fn create_room(&self, room: &str, title: &str, visibility: Visibility) -> Result<Room> {
        let body = NewRoom { room, title: Some(title), visibility: Some(visibility.as_str()) };
        self.json(Method::POST, "/api/rooms", Some(&body), &[201]).await
    }

    /// `GET /api/rooms/{room}`.
    pub async fn room(&self, room: &str) -> Result<Room> {
        self.json(Method::GET, &format!("/api/rooms/{room}"), NO_BODY, &[200]).await
    }

    /// `DELETE /api/rooms/{room}`: 204.
    pub async fn delete_room(&self, room: &str) -> Result<()> {
        self.empty(Method::DELETE, &format!("/api/rooms/{room}"), NO_BODY).await
    }

    /// `POST /api/rooms/{room}/join`: 200 with the caller as member.
    pub async fn join(&self, room: &str) -> Result<Member> {
        self.json(Method::POST, &format!("/api/rooms/{room}/join"), NO_BODY, &[200]).await
    }

    /// `POST /api/rooms/{room}/leave`: 204.
    pub async fn leave(&self, room: &str) -> Result<()> {
        self.empty(Method::POST, &format!("/api/rooms/{room}/leave"), NO_BODY).await
    }

    /// `POST /api/rooms/{room}/invite`: 204.
    pub async fn invite(&self, room: &str, username: &str) -> Result<()> {
        self.user_action(room, "invite", username).await
    }

    /// `POST /api/rooms/{room}/kick`: 204.
    pub async fn kick(&self, room: &str, username: &str) -> Result<()> {
        self.user_action(room, "kick", username).await
    }

    /// `POST /api/rooms/{room}/ban`: 204.
    pub async fn ban(&self, room: &str, username: &str) -> Result<()> {
        self.user_action(room, "ban", username).await
    }

    /// `POST /api/rooms/{room}/unban`: 204.
    pub async fn unban(&self, room: &str, username: &str) -> Result<()> {
        self.user_action(room, "unban", username).await
    }

    /// `POST /api/rooms/{room}/role`: 204.
    pub async fn set_role(&self, room: &str, username: &str, role: &str) -> Result<()> {
        let body = RoleChange { username, role };
        self.empty(Method::POST, &format!("/api/rooms/{room}/role"), Some(&body)).await
    }

    /// `POST /api/rooms/{room}/mute` for `seconds`: 204.
    pub async fn mute(&self, room: &str, username: &str, seconds: u64) -> Result<()> {
        let body = Mute { username, seconds };
        self.empty(Method::POST, &format!("/api/rooms/{room}/mute"), Some(&body)).await
    }

    /// `POST /api/rooms/{room}/unmute`: 204.
    pub async fn unmute(&self, room: &str, username: &str) -> Result<()> {
        self.user_action(room, "unmute", username).await
    }

    /// `DELETE /api/rooms/{room}/messages/{seq}`: 204.
    pub async fn delete_message(&self, room: &str, seq: u64) -> Result<()> {
        self.empty(Method::DELETE, &format!("/api/rooms/{room}/messages/{seq}"), NO_BODY).await
    }

    /// `GET /api/rooms/{room}/audit`: moderation actions, oldest first.
    pub async fn audit(&self, room: &str) -> Result<Vec<AuditEntry>> {
        self.json(Method::GET, &format!("/api/rooms/{room}/audit"), NO_BODY, &[200]).await
    }

    /// `POST /api/rooms/{room}/read`: 204; stores the read marker.
    pub async fn read(&self, room: &str, seq: u64) -> Result<()> {
        self.empty(Method::POST, &format!("/api/rooms/{room}/read"), Some(&ReadMarker { seq })).await
    }

    /// `GET /api/rooms/{room}/members`.
    pub async fn members(&self, room: &str) -> Result<Vec<Member>> {
        self.json(Method::GET, &format!("/api/rooms/{room}/members"), NO_BODY, &[200]).await
    }

    /// `GET /api/rooms/{room}/receipts`: each member's read marker.
    pub async fn receipts(&self, room: &str) -> Result<Vec<Receipt>> {
        self.json(Method::GET, &format!("/api/rooms/{room}/receipts"), NO_BODY, &[200]).await
    }

    /// `POST /api/dm/{username}`: the direct room with that user.
    // protocol is silent on the status (created on first call): any 2xx.
    pub async fn dm(&self, username: &str) -> Result<Room> {
        self.json(Method::POST, &format!("/api/dm/{username}"), NO_BODY, &[]).await
    }

    /// `GET .../messages?after=N[&limit=L]`: seq > N, ascending.
    pub async fn messages_after(&self, room: &str, after: u64, limit: Option<u32>) -> Result<Vec<Message>> {
        let limit = limit.map(|l| format!("&limit={l}")).unwrap_or_default();
        self.json(Method::GET, &format!("/api/rooms/{room}/messages?after={after}{limit}"), NO_BODY, &[200]).await
    }

    /// `GET .../messages?before=N[&limit=L]`: the newest with seq < N, ascending.
    pub async fn messages_before(&self, room: &str, before: u64, limit: Option<u32>) -> Result<Vec<Message>> {
        let limit = limit.map(|l| format!("&limit={l}")).unwrap_or_default();
        self.json(Method::GET, &format!("/api/rooms/{room}/messages?before={before}{limit}"), NO_BODY, &[200]).await
    }

    /// `GET .../messages` before or after a seq, or (`at` = None) the newest
    /// page, with the `x-next-page` cursor of a page cut at the byte cap.
    pub async fn history_page(&self, room: &str, at: Option<History>, limit: Option<u32>) -> Result<HistoryPage> {
        let mut query = Vec::new();
        match at {
            Some(History::Before(n)) => query.push(format!("before={n}")),
            Some(History::After(n)) => query.push(format!("after={n}")),
            None => {}
        }
        if let Some(l) = limit {
            query.push(format!("limit={l}"));
        }
        let path = format!("/api/rooms/{room}/messages?{}", query.join("&"));
        let resp = self.builder(Method::GET, &path).send().await?;
        let next = resp.headers().get("x-next-page").and_then(|h| h.to_str().ok()).and_then(next_page);
        let messages = decode(&checked(resp, &[200]).await?)?;
        Ok(HistoryPage { messages, next })
    }

    /// `POST /api/rooms/{room}/messages`: 201 once durable.
    pub async fn post_message(&self, room: &str, body: &str, client_id: &str) -> Result<SendAck> {
        self.post_reply(room, body, client_id, None).await
    }

    /// `POST /api/rooms/{room}/messages` with `reply_to`: 201 once durable.
    pub async fn post_reply(&self, room: &str, body: &str, client_id: &str, reply_to: Option<u64>) -> Result<SendAck> {
        self.post_with(room, body, client_id, reply_to, &[]).await
    }

    /// `POST /api/rooms/{room}/messages` with `reply_to` and `attachments`
    /// (ids from [`Http::upload`]): 201 once durable.
    pub async fn post_with(
        &self,
        room: &str,
        body: &str,
        client_id: &str,
        reply_to: Option<u64>,
        attachments: &[&str],
    ) -> Result<SendAck> {
        let payload =
            NewMessage { body: Some(body), client_id: Some(client_id), reply_to, attachments: attachments.to_vec() };
        self.json(Method::POST, &format!("/api/rooms/{room}/messages"), Some(&payload), &[201]).await
    }

    /// `POST /api/rooms/{room}/attachments?name=`: 201 with the attachment
    /// once its file is on the room's replicas.
    pub async fn upload(
        &self,
        room: &str,
        name: &str,
        content_type: &str,
        bytes: impl Into<Vec<u8>>,
    ) -> Result<Attachment> {
        let name = utf8_percent_encode(name, NON_ALPHANUMERIC);
        let req = self
            .builder(Method::POST, &format!("/api/rooms/{room}/attachments?name={name}"))
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(bytes.into());
        decode(&checked(req.send().await?, &[201]).await?)
    }

    /// `GET /api/attachments/{id}`: the file's bytes and the answer's
    /// headers (lower-case names).
    pub async fn download(&self, id: &str) -> Result<Download> {
        let resp = self.builder(Method::GET, &format!("/api/attachments/{id}")).send().await?;
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), String::from_utf8_lossy(v.as_bytes()).into_owned()))
            .collect();
        let bytes = checked(resp, &[200]).await?;
        Ok(Download { headers, bytes })
    }

    /// `PATCH /api/rooms/{room}/messages/{seq}`: the message with its new text.
    pub async fn edit_message(&self, room: &str, seq: u64, body: &str) -> Result<Message> {
        let payload = EditMessage { body };
        self.json(Method::PATCH, &format!("/api/rooms/{room}/messages/{seq}"), Some(&payload), &[200]).await
    }

    /// `PATCH /api/rooms/{room}`: the owner changes its title and/or retention.
    pub async fn configure_room(&self, room: &str, title: Option<&str>, retention_days: Option<u32>) -> Result<Room> {
        let payload = palaver_protocol::RoomSettings { title, retention_days };
        self.json(Method::PATCH, &format!("/api/rooms/{room}"), Some(&payload), &[200]).await
    }

    /// `PUT` (`on`) or `DELETE .../messages/{seq}/reactions/{emoji}`: 204.
    pub async fn react(&self, room: &str, seq: u64, emoji: &str, on: bool) -> Result<()> {
        let method = if on { Method::PUT } else { Method::DELETE };
        let emoji = utf8_percent_encode(emoji, NON_ALPHANUMERIC);
        self.empty(method, &format!("/api/rooms/{room}/messages/{seq}/reactions/{emoji}"), NO_BODY).await
    }

    /// `GET /api/rooms/{room}/search?q=` (`room` given) or `GET
    /// /api/search?q=`: messages holding every word of `q`, newest first.
    pub async fn search(&self, room: Option<&str>, q: &str, limit: Option<u32>) -> Result<Vec<Message>> {
        let q = utf8_percent_encode(q, NON_ALPHANUMERIC);
        let limit = limit.map(|l| format!("&limit={l}")).unwrap_or_default();
        let path = match room {
            Some(room) => format!("/api/rooms/{room}/search?q={q}{limit}"),
            None => format!("/api/search?q={q}{limit}"),
        };
        self.json(Method::GET, &path, NO_BODY, &[200]).await
    }

    // ----- long polling (§6) -----

    /// `GET /api/poll?since=..&timeout_ms=..` with this client's token.
    pub async fn poll(&self, since: &str, timeout_ms: u64) -> Result<PollAnswer> {
        self.poll_query(&format!("/api/poll?since={since}&timeout_ms={timeout_ms}"), timeout_ms, true).await
    }

    /// Like [`Http::poll`], authenticated by a one-time `ticket` instead.
    pub async fn poll_with_ticket(&self, ticket: &str, since: &str, timeout_ms: u64) -> Result<PollAnswer> {
        let path = format!("/api/poll?since={since}&timeout_ms={timeout_ms}&ticket={ticket}");
        self.poll_query(&path, timeout_ms, false).await
    }

    async fn poll_query(&self, path: &str, timeout_ms: u64, bearer: bool) -> Result<PollAnswer> {
        let mut req = self.client.get(format!("{}{path}", self.base));
        if bearer && let Some(t) = &self.token {
            req = req.bearer_auth(t);
        }
        req = req.timeout(Duration::from_millis(timeout_ms) + POLL_GRACE);
        let bytes = checked(req.send().await?, &[200]).await?;
        let answer: palaver_protocol::PollAnswer<Value> = decode(&bytes)?;
        Ok(PollAnswer { events: answer.events.into_iter().map(Event::from_value).collect(), cursor: answer.cursor })
    }

    // ----- plumbing -----

    fn builder(&self, method: Method, path: &str) -> reqwest::RequestBuilder {
        let req = self.client.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    async fn user_action(&self, room: &str, action: &str, username: &str) -> Result<()> {
        self.empty(Method::POST, &format!("/api/rooms/{room}/{action}"), Some(&UserTarget { username })).await
    }

    /// A call answered by 204 and no body.
    async fn empty<B: Serialize>(&self, method: Method, path: &str, body: Option<&B>) -> Result<()> {
        let mut req = self.builder(method, path);
        if let Some(body) = body {
            req = req.json(body);
        }
        checked(req.send().await?, &[204]).await.map(drop)
    }

    /// A call answered by JSON; `ok` lists the accepted statuses (empty: any 2xx).
    async fn json<T: DeserializeOwned, B: Serialize>(
        &self,
        method: Method,
        path: &str,
        body: Option<&B>,
        ok: &[u16],
    ) -> Result<T> {
        let mut req = self.builder(method, path);
        if let Some(body) = body {
            req = req.json(body);
        }
        decode(&checked(req.send().await?, ok).await?)
    }
}

/// Reads the body; a non-2xx status becomes the protocol error, a 2xx
/// other than the expected ones a decode error.
async fn checked(resp: reqwest::Response, ok: &[u16]) -> Result<Bytes> {
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|h| h.to_str().ok())
        .and_then(|s| s.trim().parse::<u64>().ok())
        .map(|secs| secs * 1000);
    let body = resp.bytes().await?;
    if !(200..300).contains(&status) {
        return Err(Error::from_http(status, &body, retry_after));
    }
    if !ok.is_empty() && !ok.contains(&status) {
        return Err(Error::Decode(format!(
            "expected status {ok:?}, got {status}: {}",
            clip(&String::from_utf8_lossy(&body))
        )));
    }
    Ok(body)
}

async fn raw(resp: reqwest::Response) -> Result<Raw> {
    let status = resp.status().as_u16();
    let body = resp.bytes().await?;
    let json = serde_json::from_slice(&body).unwrap_or(Value::Null);
    Ok(Raw { status, json, text: String::from_utf8_lossy(&body).into_owned() })
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T> {
    serde_json::from_slice(body).map_err(|e| Error::Decode(format!("{e}: {}", clip(&String::from_utf8_lossy(body)))))
}

/// Reads an `x-next-page` value: `after=N` or `before=N`.
fn next_page(value: &str) -> Option<History> {
    let (key, n) = value.trim().split_once('=')?;
    let n = n.trim().parse().ok()?;
    match key.trim() {
        "after" => Some(History::After(n)),
        "before" => Some(History::Before(n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_page_cursors_are_read_and_anything_else_is_none() {
        let cases = [
            ("before=40", Some(History::Before(40))),
            ("after=7", Some(History::After(7))),
            (" before = 3 ", Some(History::Before(3))),
            ("before=", None),
            ("before=-1", None),
            ("around=5", None),
            ("", None),
        ];
        for (value, want) in cases {
            assert_eq!(next_page(value), want, "{value:?}");
        }
    }
}
