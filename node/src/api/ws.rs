//! `GET /ws`: the WebSocket transport (docs/protocol.md §5).
//!
//! Each socket runs two tasks: this reader, which parses and checks commands
//! in arrival order, and a writer, which alone owns the sink and turns queued
//! items into frames through [`Delivery`]. Sends are handed to the log writer
//! in arrival order and answered as their flushes complete, so a client may
//! pipeline without reordering.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use axum::extract::State;
use axum::http::HeaderValue;
use axum::http::StatusCode;
use axum::http::header;
use axum::response::IntoResponse;
use axum::response::Response;
use futures_util::SinkExt;
use futures_util::StreamExt;
use futures_util::stream::SplitSink;
use futures_util::stream::SplitStream;
use hyper_util::rt::TokioIo;
use palaver_protocol::Authenticated;
use palaver_protocol::Code;
use palaver_protocol::Command;
use palaver_protocol::Done;
use palaver_protocol::Frame;
use palaver_protocol::HistoryPage;
use palaver_protocol::SendAck;
use palaver_protocol::close;
use tokio::sync::mpsc;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

use super::delivery::Delivery;
use super::delivery::OutFrame;
use super::extract::bearer;
use super::ws_compress::Outgoing;
use super::ws_guard::GuardedIo;
use super::ws_guard::Recorded;
use super::ws_guard::Violation;
use super::ws_inflate::InflateIo;
use super::ws_inflate::Inflater;
use super::ws_negotiate::negotiate;
use crate::clock::now_ms;
use crate::hub::ConnId;
use crate::hub::KillSwitch;
use crate::hub::Listener;
use crate::hub::Outbound;
use crate::hub::QueueBudget;
use crate::hub::StartSub;
use crate::protocol::error_reply;
use crate::protocol::ok_reply;
use crate::protocol::salvage_id;
use crate::service::ApiError;
use crate::service::NewPost;
use crate::service::Node;
use crate::service::Session;
use crate::service::Usage;

/// How long a closing socket's writer may take to deliver what is queued and
/// the close frame.
const CLOSE_GRACE: Duration = Duration::from_secs(10);
/// How long to wait for the client's answer to our close frame.
const CLOSE_READ: Duration = Duration::from_secs(2);
/// Frames the writer sends before one flush.
const FLUSH_EVERY: usize = 64;
/// Rate-limited frames in a row after which the client is closed (1008).
const ABUSE_AFTER: u32 = 1_000;
/// Read markers one socket may have waiting for their write.
const READS_IN_FLIGHT: usize = 16;
/// How often an open socket records that its token is in use.
const KEEP_ALIVE: Duration = Duration::from_secs(30);
/// tungstenite's own default is 128 KiB per socket, allocated up front.
const READ_BUFFER: usize = 512;
const WRITE_BUFFER: usize = 8 * 1024;

/// The upgraded connection, its client→server frames checked by the guard,
/// then inflated if permessage-deflate was agreed.
type WebSocket = WebSocketStream<InflateIo<GuardedIo<TokioIo<hyper::upgrade::Upgraded>>>>;

/// Whether the request asks for a WebSocket (RFC 6455 §4.2.1); answers the
/// `Sec-WebSocket-Key`.
fn upgrade_key(req: &Request) -> Result<&HeaderValue, &'static str> {
    let headers = req.headers();
    let has_token = |name: header::HeaderName, token: &str| {
        headers
            .get_all(name)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .any(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
    };
    if req.method() != axum::http::Method::GET {
        return Err("a WebSocket upgrade is a GET");
    }
    if !has_token(header::CONNECTION, "upgrade") || !has_token(header::UPGRADE, "websocket") {
        return Err("Connection: upgrade and Upgrade: websocket are required");
    }
    if headers.get(header::SEC_WEBSOCKET_VERSION).map(HeaderValue::as_bytes) != Some(b"13") {
        return Err("Sec-WebSocket-Version must be 13");
    }
    headers.get(header::SEC_WEBSOCKET_KEY).ok_or("Sec-WebSocket-Key is missing")
}

/// Checks the upgrade request, answers 101, then hands the socket to
/// [`connection`]. The upgrade is done here rather than by axum so that the
/// raw connection can be wrapped in the frame guard before tungstenite reads
/// it (tungstenite does not limit fragments per message).
pub async fn upgrade(State(node): State<Arc<Node>>, mut req: Request) -> Response {
    let accept = match upgrade_key(&req) {
        Ok(key) => tokio_tungstenite::tungstenite::handshake::derive_accept_key(key.as_bytes()),
        Err(why) => return ApiError::bad_request(format!("not a WebSocket upgrade: {why}")).into_response(),
    };
    let Some(on_upgrade) = req.extensions_mut().remove::<hyper::upgrade::OnUpgrade>() else {
        return ApiError::bad_request("this connection cannot be upgraded").into_response();
    };
    let headers = req.headers();
    let origin = headers.get(header::ORIGIN).map(|o| o.as_bytes());
    if !super::origin::allowed(origin, &node.security.allowed_origins, node.security.public_url.as_deref()) {
        return ApiError::forbidden("origin not allowed").into_response();
    }
    if node.hub.connection_count() >= node.limits.max_connections {
        return ApiError::unavailable("too many connections on this node").into_response();
    }
    let session = match bearer(headers) {
        Some(t) => match node.authenticate(t).await {
            Ok(s) => Some(s),
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let frame = node.limits.frame_bytes;
    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER)
        .max_message_size(Some(frame))
        .max_frame_size(Some(frame));
    let max_fragments = node.limits.max_fragments;
    let offers = headers.get_all(header::SEC_WEBSOCKET_EXTENSIONS).iter().filter_map(|v| v.to_str().ok());
    let deflate = negotiate(offers);
    let extensions = deflate.map(|a| a.response());
    tokio::spawn(async move {
        let upgraded = match on_upgrade.await {
            Ok(u) => u,
            Err(e) => {
                tracing::debug!(error = %e, "WebSocket upgrade failed");
                return;
            }
        };
        let guarded = GuardedIo::new(TokioIo::new(upgraded), max_fragments);
        let recorded = guarded.recorded();
        let inflater = deflate.as_ref().map(|a| Inflater::new(a, frame));
        let io = InflateIo::new(guarded, inflater, recorded.clone());
        let socket = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
        connection(node, socket, session, recorded, Outgoing::new(deflate.as_ref())).await;
    });
    let mut response = StatusCode::SWITCHING_PROTOCOLS.into_response();
    let h = response.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(v) = HeaderValue::from_str(&accept) {
        h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
    }
    if let Some(v) = extensions.and_then(|e| HeaderValue::from_str(&e).ok()) {
        h.insert(header::SEC_WEBSOCKET_EXTENSIONS, v);
    }
    response
}

async fn close_with(sink: &mut SplitSink<WebSocket, Message>, code: u16, reason: &'static str) {
    let frame = CloseFrame { code: code.into(), reason: Utf8Bytes::from_static(reason) };
    let _ = sink.send(Message::Close(Some(frame))).await;
    let _ = sink.close().await;
}

fn close_reason(code: u16) -> &'static str {
    match code {
        close::NOT_AUTHENTICATED => "not authenticated",
        close::TOKEN_REVOKED => "token revoked or expired",
        close::TOO_LARGE => "frame too large",
        close::INVALID_UTF8 => "invalid UTF-8",
        close::POLICY => "policy violation",
        close::TOO_SLOW => "too slow: resume with since",
        close::RESTARTING => "server restarting: reconnect",
        _ => "",
    }
}

/// The close code for a read error, if it deserves one.
fn read_error_code(e: &tokio_tungstenite::tungstenite::Error, recorded: &Recorded) -> Option<u16> {
    use tokio_tungstenite::tungstenite::Error as WsError;
    match e {
        WsError::Capacity(_) => Some(close::TOO_LARGE),
        WsError::Utf8(_) => Some(close::INVALID_UTF8),
        WsError::Protocol(_) => Some(close::PROTOCOL_ERROR),
        WsError::Io(io) => Violation::from_io(io).or_else(|| recorded.get()).map(|v| v.close_code()),
        _ => None,
    }
}

/// Waits for the `auth` frame (unless the upgrade carried a token).
async fn authenticate(
    node: &Arc<Node>,
    sink: &mut SplitSink<WebSocket, Message>,
    stream: &mut SplitStream<WebSocket>,
    recorded: &Recorded,
) -> Option<Session> {
    let timeout = Duration::from_millis(node.limits.handshake_timeout_ms);
    let first = tokio::time::timeout(timeout, stream.next()).await;
    let text = match first {
        Ok(Some(Ok(Message::Text(t)))) => t,
        Ok(Some(Err(e))) => {
            let code = read_error_code(&e, recorded).unwrap_or(close::NOT_AUTHENTICATED);
            close_with(sink, code, close_reason(code)).await;
            return None;
        }
        _ => {
            close_with(sink, close::NOT_AUTHENTICATED, "first frame must be auth").await;
            return None;
        }
    };
    let frame: Option<Frame> = serde_json::from_str(&text).ok();
    let id = frame.as_ref().and_then(|f| f.id);
    let session = match frame.map(Command::from_frame) {
        Some(Ok(Command::Auth { token })) => match node.authenticate(&token).await {
            Ok(s) => Some(s),
            Err(e) if e.code == Code::Unavailable => {
                // Not a bad token: this node cannot check it now. Reconnect elsewhere.
                close_with(sink, close::RESTARTING, close_reason(close::RESTARTING)).await;
                return None;
            }
            Err(_) => None,
        },
        _ => None,
    };
    match session {
        Some(s) => {
            let reply = ok_reply(id, Authenticated { username: &*s.username });
            sink.send(Message::Text(reply.into())).await.ok()?;
            Some(s)
        }
        None => {
            close_with(sink, close::NOT_AUTHENTICATED, "first frame must be a valid auth").await;
            None
        }
    }
}

/// Serves one upgraded socket until it closes. Split here, outside the
/// future: an async fn keeps its arguments for its whole life, and the
/// whole socket is 464 bytes that every idle connection would carry.
fn connection(
    node: Arc<Node>,
    socket: WebSocket,
    session: Option<Session>,
    recorded: Recorded,
    outgoing: Outgoing,
) -> impl Future<Output = ()> {
    let (sink, stream) = socket.split();
    serve(node, sink, stream, session, recorded, outgoing)
}

/// [`connection`]'s body: authenticate, register, read commands, close.
async fn serve(
    node: Arc<Node>,
    mut sink: SplitSink<WebSocket, Message>,
    mut stream: SplitStream<WebSocket>,
    session: Option<Session>,
    recorded: Recorded,
    outgoing: Outgoing,
) {
    let session = match session {
        Some(s) => s,
        // Boxed: its state would otherwise stay in the task of every socket.
        None => match Box::pin(authenticate(&node, &mut sink, &mut stream, &recorded)).await {
            Some(s) => s,
            None => return,
        },
    };
    let (tx, rx) = mpsc::channel(node.limits.outbound_queue);
    let kill = Arc::new(KillSwitch::default());
    let budget = Arc::new(QueueBudget::new(node.limits.outbound_bytes));
    let listener = Listener {
        tx: tx.clone(),
        kill: kill.clone(),
        budget: budget.clone(),
        user: session.username.clone(),
        token_hash: session.token_hash,
        presence: true,
        peer: false,
    };
    let (conn, change) = node.hub.connect(listener);
    if let Some(change) = change {
        node.announce_presence(change);
    }
    // A logout applied between authentication and registration found no
    // socket to close; look again now that this one is registered.
    if node.meta().session(&session.token_hash, now_ms()).is_none() {
        kill.fire(close::TOKEN_REVOKED);
    }
    let write_timeout = Duration::from_millis(node.limits.write_timeout_ms);
    let writer =
        tokio::spawn(write_loop(node.clone(), sink, rx, kill.clone(), budget.clone(), write_timeout, outgoing));
    let mut reader = Reader {
        node: node.clone(),
        session,
        conn,
        tx,
        kill: kill.clone(),
        budget,
        recorded,
        reads: Arc::new(tokio::sync::Semaphore::new(READS_IN_FLIGHT)),
        refused: 0,
    };
    reader.run(&mut stream).await;
    kill.fire(close::NORMAL);
    // The hub forgets the socket now, so nothing more queues for it.
    if let Some(change) = node.hub.disconnect(conn) {
        node.announce_presence(change);
    }
    // Boxed: the closing's timers are not kept in every open socket's task.
    Box::pin(finish(writer, &mut stream)).await;
}

/// Waits for the writer to send the close, then for the client's reply.
async fn finish(mut writer: tokio::task::JoinHandle<()>, stream: &mut SplitStream<WebSocket>) {
    // A client that reads nothing at all would keep the writer waiting
    // forever on a full socket: it gets a bounded time to take the close.
    if tokio::time::timeout(CLOSE_GRACE, &mut writer).await.is_err() {
        writer.abort();
        return;
    }
    // Read until the client's own close frame (or a short timeout): closing
    // the TCP connection with unread bytes from the client would make the
    // kernel reset it, and a reset destroys the close frame (and any events)
    // still unread on the client's side.
    let _ = tokio::time::timeout(CLOSE_READ, async {
        while let Some(Ok(msg)) = stream.next().await {
            if matches!(msg, Message::Close(_)) {
                break;
            }
        }
    })
    .await;
}

async fn write_loop(
    node: Arc<Node>,
    mut sink: SplitSink<WebSocket, Message>,
    mut rx: mpsc::Receiver<Outbound>,
    kill: Arc<KillSwitch>,
    budget: Arc<QueueBudget>,
    write_timeout: Duration,
    outgoing: Outgoing,
) {
    let mut delivery = Delivery::new(node);
    let mut round = Round { frames: Vec::new(), outgoing };
    loop {
        let item = tokio::select! {
            biased;
            code = kill.fired() => {
                if code != close::NORMAL {
                    close_with(&mut sink, code, close_reason(code)).await;
                } else {
                    let _ = sink.close().await;
                }
                return;
            }
            item = rx.recv() => item,
        };
        let Some(item) = item else { return };
        // A client that stops reading fills its socket buffer; it gets
        // `write_timeout` to take a round of frames, then it is closed.
        // Boxed: a round's state (its writes, a replay's page) lives only
        // while it runs, so an idle socket's writer task is 552 bytes, not
        // 1,104. One allocation per round of up to FLUSH_EVERY items, next
        // to at least one write(2) per round.
        let writing = Box::pin(write_round(&mut delivery, &mut sink, &mut rx, item, &mut round, &kill, &budget));
        match tokio::time::timeout(write_timeout, writing).await {
            Ok(true) => {}
            Ok(false) => {
                // The socket failed a write: the connection's IO gave up on
                // a peer that took nothing for `write_timeout` (its timer may
                // run out in the same tick as this round's, and is polled
                // first), or the peer is gone. The reader must stop too, or
                // a socket whose room goes quiet is held until the client
                // sends something.
                kill.fire(close::TOO_SLOW);
                return;
            }
            Err(_) => {
                tracing::info!(
                    queued = budget.queued(),
                    "closing a WebSocket that takes nothing for {write_timeout:?}"
                );
                kill.fire(close::TOO_SLOW);
                return;
            }
        }
    }
}

/// Sends `first` and whatever else is queued (up to [`FLUSH_EVERY`] items),
/// then flushes; false when the socket is gone.
async fn write_round(
    delivery: &mut Delivery,
    sink: &mut SplitSink<WebSocket, Message>,
    rx: &mut mpsc::Receiver<Outbound>,
    first: Outbound,
    round: &mut Round,
    kill: &KillSwitch,
    budget: &QueueBudget,
) -> bool {
    let mut next = Some(first);
    let mut handled = 0;
    while let Some(item) = next.take() {
        let size = item.size();
        let handled_ok = delivery.handle(item, &mut round.frames).await;
        budget.release(size);
        if let Err(e) = handled_ok {
            tracing::warn!(error = %e.message, "cannot read the room log for delivery");
            return closing(sink, round, kill, super::delivery::close_code(&e)).await;
        }
        while delivery.replaying() {
            if let Err(e) = delivery.replay_page(&mut round.frames).await {
                tracing::warn!(error = %e.message, "cannot read the room log for a replay");
                return closing(sink, round, kill, super::delivery::close_code(&e)).await;
            }
            if !feed(sink, round).await {
                kill.fire(close::SERVER_ERROR);
                return false;
            }
        }
        if !feed(sink, round).await {
            return false;
        }
        handled += 1;
        if handled < FLUSH_EVERY {
            next = rx.try_recv().ok();
        }
    }
    sink.flush().await.is_ok()
}

/// Ends a round whose delivery could not read the room log: nothing more
/// is sent (a live message after an unfilled gap would make the client
/// resume past the gap), what was already sent is flushed, and the
/// connection closes with `code` so the client resubscribes from what it has.
async fn closing(sink: &mut SplitSink<WebSocket, Message>, round: &mut Round, kill: &KillSwitch, code: u16) -> bool {
    round.frames.clear();
    kill.fire(code);
    sink.flush().await.is_ok()
}

/// The frames of one write round, and how this socket encodes them.
struct Round {
    frames: Vec<OutFrame>,
    outgoing: Outgoing,
}

async fn feed(sink: &mut SplitSink<WebSocket, Message>, round: &mut Round) -> bool {
    for f in round.frames.drain(..) {
        let msg = if f.ping {
            Message::Ping(bytes::Bytes::new())
        } else {
            // An event's compressed bytes are made once, for all its recipients.
            round.outgoing.text(f.json, f.event.as_ref().map(|e| &e.deflated))
        };
        if sink.feed(msg).await.is_err() {
            return false;
        }
    }
    true
}

/// Queues a small item (an answer, a subscription start or end), counted in
/// the budget but never refused by it: only events and big replies are.
async fn queue(tx: &mpsc::Sender<Outbound>, budget: &QueueBudget, item: Outbound) {
    let size = item.size();
    budget.charge(size);
    if tx.send(item).await.is_err() {
        budget.release(size);
    }
}

struct Reader {
    node: Arc<Node>,
    session: Session,
    conn: ConnId,
    tx: mpsc::Sender<Outbound>,
    kill: Arc<KillSwitch>,
    budget: Arc<QueueBudget>,
    recorded: Recorded,
    /// Read markers waiting for their write.
    reads: Arc<tokio::sync::Semaphore>,
    refused: u32,
}

impl Reader {
    async fn run(&mut self, stream: &mut SplitStream<WebSocket>) {
        let mut keep_alive = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            let msg = tokio::select! {
                // A closing socket reads no further command.
                biased;
                _ = self.kill.fired() => return,
                _ = keep_alive.tick() => {
                    self.node.keep_alive(&self.session);
                    // Full queue: the socket is already on its way out as too slow.
                    let _ = self.tx.try_send(Outbound::Ping);
                    continue;
                }
                msg = stream.next() => msg,
            };
            match msg {
                None | Some(Ok(Message::Close(_))) => return,
                Some(Err(e)) => {
                    if let Some(code) = read_error_code(&e, &self.recorded) {
                        self.kill.fire(code);
                    }
                    return;
                }
                // Boxed: the command's state lives only while it runs, so an
                // idle socket's task stays small.
                Some(Ok(Message::Text(text))) => Box::pin(self.command(&text)).await,
                Some(Ok(Message::Binary(_))) => {
                    let refusal = ApiError::bad_request("binary frames are not part of the protocol");
                    Box::pin(self.error(None, &refusal)).await;
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => {}
            }
        }
    }

    /// Queues a reply once the socket's byte budget has room for it: a
    /// client that asks for more than it reads stops being read, and one
    /// that reads nothing within the write timeout is closed as too slow.
    async fn reply(&self, text: String) {
        let timeout = Duration::from_millis(self.node.limits.write_timeout_ms);
        // A socket closed meanwhile (its writer gave up) waits no longer.
        let reserved = tokio::select! {
            biased;
            _ = self.kill.fired() => false,
            reserved = self.budget.reserve(text.len(), timeout) => reserved,
        };
        if !reserved {
            self.kill.fire(close::TOO_SLOW);
            return;
        }
        let item = Outbound::reply(text);
        let size = item.size();
        if self.tx.send(item).await.is_err() {
            self.budget.release(size);
        }
    }

    async fn error(&self, id: Option<u64>, e: &ApiError) {
        self.reply(error_reply(id, e)).await;
    }

    /// Takes one send from the user's quota (shared by all of the user's
    /// sockets, here and on other nodes); a socket that keeps sending past
    /// it is closed.
    fn rate(&mut self) -> Result<(), ApiError> {
        match self.node.quotas.take(Usage::Send, &self.session.username, now_ms()) {
            Ok(()) => {
                self.refused = 0;
                Ok(())
            }
            Err(e) => {
                self.refused += 1;
                if self.refused >= ABUSE_AFTER {
                    tracing::warn!(user = %self.session.username, "closing a socket that ignores rate limiting");
                    self.kill.fire(close::POLICY);
                }
                Err(e)
            }
        }
    }

    async fn command(&mut self, text: &str) {
        let frame: Frame = match serde_json::from_str(text) {
            Ok(f) => f,
            Err(e) => {
                return self.error(salvage_id(text), &ApiError::bad_request(format!("invalid frame: {e}"))).await;
            }
        };
        let id = frame.id;
        let result = match Command::from_frame(frame) {
            Ok(cmd) => self.execute(id, cmd).await,
            Err(e) => Err(ApiError::bad_request(e.to_string())),
        };
        if let Err(e) = result {
            self.error(id, &e).await;
        }
    }

    async fn execute(&mut self, id: Option<u64>, cmd: Command) -> Result<(), ApiError> {
        let node = self.node.clone();
        let session = self.session.clone();
        let s = &session;
        match cmd {
            Command::Auth { token } => {
                let again = node.authenticate(&token).await?;
                if again.username != s.username {
                    return Err(ApiError::bad_request("this socket is already authenticated as another user"));
                }
                self.reply(ok_reply(id, Authenticated { username: &*s.username })).await;
            }
            Command::Subscribe { room, since } => {
                let r = node.readable_room(s, &room).await?;
                let hub = &node.hub;
                if !hub.is_subscribed(self.conn, r.key)
                    && hub.subscription_count(self.conn) >= node.limits.subscriptions_per_socket
                {
                    return Err(ApiError::bad_request(format!(
                        "at most {} subscriptions per socket",
                        node.limits.subscriptions_per_socket
                    )));
                }
                hub.subscribe(self.conn, r.key);
                let start =
                    Outbound::Start(Box::new(StartSub { room_key: r.key, room: r.id, since, ack: true, reply_id: id }));
                queue(&self.tx, &self.budget, start).await;
            }
            Command::Unsubscribe { room } => {
                crate::service::check_room_id(&room)?;
                let key = node.meta().rooms.get(&room).map(|r| r.info.key);
                if let Some(key) = key {
                    node.hub.unsubscribe(self.conn, key);
                    queue(&self.tx, &self.budget, Outbound::end(key, None)).await;
                }
                self.reply(ok_reply(id, Done {})).await;
            }
            Command::Send { room, body, client_id, reply_to, attachments } => {
                self.rate()?;
                let attachments = node.attachment_ids(&room, &attachments)?;
                let r = node.check_send(s, &room, &body, &client_id).await?;
                let pending = node.submit_message(s, r, NewPost { body, client_id, reply_to, attachments }).await?;
                let (tx, budget) = (self.tx.clone(), self.budget.clone());
                tokio::spawn(async move {
                    let reply = match pending.await {
                        Ok(a) => ok_reply(id, SendAck { seq: a.seq, ts: a.ts }),
                        Err(e) => error_reply(id, &e),
                    };
                    queue(&tx, &budget, Outbound::reply(reply)).await;
                });
            }
            Command::Edit { room, seq, body } => {
                self.rate()?;
                let message = node.edit_message(s, &room, seq, body).await?;
                self.reply(ok_reply(id, crate::protocol::message(&room, &message))).await;
            }
            Command::React { room, seq, emoji, on } => {
                self.rate()?;
                node.set_reaction(s, &room, seq, &emoji, on).await?;
                self.reply(ok_reply(id, Done {})).await;
            }
            Command::History { room, page, limit } => {
                let page = node.history(s, &room, page, limit).await?;
                // A page cut short at the byte cap says where the rest starts.
                let messages = page.messages.iter().map(|m| crate::protocol::message(&room, m)).collect();
                self.reply(ok_reply(id, HistoryPage { messages, next: page.next })).await;
            }
            Command::Typing { room } => {
                self.rate()?;
                node.typing(s, &room).await?;
                self.reply(ok_reply(id, Done {})).await;
            }
            Command::Read { room, seq } => {
                // Markers are written once a second; a client may have a few
                // waiting, and one that sends more waits before it is read.
                let Ok(permit) = self.reads.clone().acquire_owned().await else { return Ok(()) };
                let s = s.clone();
                let (tx, budget) = (self.tx.clone(), self.budget.clone());
                tokio::spawn(async move {
                    let _permit = permit;
                    let reply = match node.mark_read(&s, &room, seq).await {
                        Ok(()) => ok_reply(id, Done {}),
                        Err(e) => error_reply(id, &e),
                    };
                    queue(&tx, &budget, Outbound::reply(reply)).await;
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn close_codes_have_reasons() {
        for code in [close::NOT_AUTHENTICATED, close::TOKEN_REVOKED, close::TOO_SLOW, close::RESTARTING] {
            assert!(!close_reason(code).is_empty());
        }
    }
}
