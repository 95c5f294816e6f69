//! One WebSocket connection (§5). Every call reads the socket itself:
//! replies are matched by `id`, events (frames without `id`) are buffered in
//! arrival order. There is no background reader, so a `Ws` nobody calls
//! reads nothing, which is how a test plays a slow consumer.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::Bytes;
use futures_util::SinkExt;
use futures_util::StreamExt;
use palaver_protocol::Authenticated;
use palaver_protocol::Command;
use palaver_protocol::Done;
use palaver_protocol::FrameId;
use palaver_protocol::HistoryPage;
pub use palaver_protocol::Page as History;
use palaver_protocol::Reply;
use palaver_protocol::Subscribed;
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio::net::TcpStream;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::Data;
use tokio_tungstenite::tungstenite::protocol::frame::coding::OpCode;

use crate::error::Error;
use crate::error::Result;
use crate::error::api_error;
use crate::error::clip;
use crate::types::Event;
use crate::types::Message;
use crate::types::SendAck;

/// How a [`Ws`] connects.
#[derive(Clone, Debug)]
pub struct WsOptions {
    /// Token sent as `Authorization: Bearer` on the upgrade (then no `auth`
    /// frame is needed).
    pub bearer: Option<String>,
    /// `Origin` header of the upgrade.
    pub origin: Option<String>,
    /// Receive buffer of the TCP socket (small: the server's writes block sooner).
    pub recv_buffer: Option<u32>,
    /// Default time a call waits for its reply, and for connecting.
    pub timeout: Duration,
}

impl Default for WsOptions {
    fn default() -> Self {
        WsOptions { bearer: None, origin: None, recv_buffer: None, timeout: Duration::from_secs(30) }
    }
}

/// A WebSocket client speaking §5.
pub struct Ws {
    stream: WebSocketStream<TcpStream>,
    next_id: u64,
    replies: HashMap<u64, Value>,
    events: VecDeque<Event>,
    closed: Option<(Option<u16>, String)>,
    timeout: Duration,
}

impl std::fmt::Debug for Ws {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Ws")
            .field("next_id", &self.next_id)
            .field("buffered_events", &self.events.len())
            .field("closed", &self.closed)
            .finish()
    }
}

impl Ws {
    /// Connects to `ws://addr/ws` without credentials.
    pub async fn connect(addr: &str) -> Result<Ws> {
        Ws::connect_with(addr, WsOptions::default()).await
    }

    /// Connects and authenticates with an `auth` frame.
    pub async fn connect_auth(addr: &str, token: &str) -> Result<Ws> {
        let mut ws = Ws::connect(addr).await?;
        ws.auth(token).await?;
        Ok(ws)
    }

    /// Connects with options. A refused upgrade (say 403 for a foreign
    /// `Origin`) is an error carrying its HTTP status.
    pub async fn connect_with(addr: &str, opts: WsOptions) -> Result<Ws> {
        let stream = open(addr, &opts).await?;
        Ok(Ws {
            stream,
            next_id: 1,
            replies: HashMap::new(),
            events: VecDeque::new(),
            closed: None,
            timeout: opts.timeout,
        })
    }

    /// Changes how long calls wait for their reply.
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    // ----- commands -----

    /// `auth`: answers the username.
    pub async fn auth(&mut self, token: &str) -> Result<String> {
        let id = self.start_command(Command::Auth { token: token.to_string() }).await?;
        self.answer::<Authenticated>(id).await.map(|a| a.username)
    }

    /// `subscribe`, optionally replaying from `since`: answers `last_seq`.
    pub async fn subscribe(&mut self, room: &str, since: Option<u64>) -> Result<u64> {
        let id = self.start_subscribe(room, since).await?;
        self.answer::<Subscribed>(id).await.map(|s| s.last_seq)
    }

    /// Sends `subscribe` without waiting; answers the command id.
    pub async fn start_subscribe(&mut self, room: &str, since: Option<u64>) -> Result<u64> {
        self.start_command(Command::Subscribe { room: room.to_string(), since }).await
    }

    /// `unsubscribe`.
    pub async fn unsubscribe(&mut self, room: &str) -> Result<()> {
        self.command(Command::Unsubscribe { room: room.to_string() }).await
    }

    /// `send`: answers seq and ts once the message is durable.
    pub async fn send(&mut self, room: &str, body: &str, client_id: &str) -> Result<SendAck> {
        let id = self.start_send(room, body, client_id).await?;
        self.send_ack(id).await
    }

    /// Sends `send` without waiting; answers the command id for [`Ws::send_ack`].
    pub async fn start_send(&mut self, room: &str, body: &str, client_id: &str) -> Result<u64> {
        let (room, body, client_id) = (room.to_string(), body.to_string(), client_id.to_string());
        self.start_command(Command::Send { room, body, client_id, reply_to: None, attachments: Vec::new() }).await
    }

    /// `send` with `reply_to`: answers seq and ts once the message is durable.
    pub async fn send_reply(&mut self, room: &str, body: &str, client_id: &str, reply_to: u64) -> Result<SendAck> {
        let (room, body, client_id) = (room.to_string(), body.to_string(), client_id.to_string());
        let id = self
            .start_command(Command::Send { room, body, client_id, reply_to: Some(reply_to), attachments: Vec::new() })
            .await?;
        self.send_ack(id).await
    }

    /// `send` with `attachments` (ids from `Http::upload`): answers seq and
    /// ts once the message is durable.
    pub async fn send_with(
        &mut self,
        room: &str,
        body: &str,
        client_id: &str,
        attachments: &[&str],
    ) -> Result<SendAck> {
        let (room, body, client_id) = (room.to_string(), body.to_string(), client_id.to_string());
        let attachments = attachments.iter().map(|a| a.to_string()).collect();
        let id = self.start_command(Command::Send { room, body, client_id, reply_to: None, attachments }).await?;
        self.send_ack(id).await
    }

    /// Waits for the reply to a `send` started earlier.
    pub async fn send_ack(&mut self, id: u64) -> Result<SendAck> {
        self.answer::<SendAck>(id).await
    }

    /// `history` before or after a seq.
    pub async fn history(&mut self, room: &str, at: History, limit: Option<u32>) -> Result<Vec<Message>> {
        let limit = limit.map(|l| l as usize);
        let id = self.start_command(Command::History { room: room.to_string(), page: at, limit }).await?;
        self.answer::<HistoryPage>(id).await.map(|page| page.messages)
    }

    /// `edit`: answers the message with its new text.
    pub async fn edit(&mut self, room: &str, seq: u64, body: &str) -> Result<Message> {
        let id = self.start_command(Command::Edit { room: room.to_string(), seq, body: body.to_string() }).await?;
        self.answer::<Message>(id).await
    }

    /// `react`: adds (`on`) or takes back an emoji on a message.
    pub async fn react(&mut self, room: &str, seq: u64, emoji: &str, on: bool) -> Result<()> {
        self.command(Command::React { room: room.to_string(), seq, emoji: emoji.to_string(), on }).await
    }

    /// `typing`.
    pub async fn typing(&mut self, room: &str) -> Result<()> {
        self.command(Command::Typing { room: room.to_string() }).await
    }

    /// `read`: stores the read marker.
    pub async fn read(&mut self, room: &str, seq: u64) -> Result<()> {
        self.command(Command::Read { room: room.to_string(), seq }).await
    }

    // ----- generic commands and pipelining -----

    /// Sends a command with the next id without waiting; answers the id.
    async fn start_command(&mut self, command: Command) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        self.send_text(&command_text(command, id)).await?;
        Ok(id)
    }

    /// Sends a command whose reply answers nothing more, and waits for it.
    async fn command(&mut self, command: Command) -> Result<()> {
        let id = self.start_command(command).await?;
        self.answer::<Done>(id).await.map(drop)
    }

    /// Waits for the reply carrying `id` and reads its answer.
    async fn answer<T: DeserializeOwned>(&mut self, id: u64) -> Result<T> {
        let v = self.reply(id).await?;
        ok_answer(&v).ok_or_else(|| Error::Decode(format!("the reply to command {id}: {}", clip(&v.to_string()))))
    }

    /// Sends a command (an object; its `id` is set here) and waits for its
    /// reply. An `error` reply is an [`Error::Api`].
    pub async fn call(&mut self, cmd: Value) -> Result<Value> {
        let id = self.start(cmd).await?;
        self.reply(id).await
    }

    /// Sends a command without waiting and answers its id. Ids increase by
    /// one per command, from 1.
    pub async fn start(&mut self, mut cmd: Value) -> Result<u64> {
        let id = self.next_id;
        self.next_id += 1;
        match cmd.as_object_mut() {
            Some(obj) => {
                obj.insert("id".to_string(), json!(id));
            }
            None => return Err(Error::Decode("a command must be a JSON object".to_string())),
        }
        self.send_text(&cmd.to_string()).await?;
        Ok(id)
    }

    /// Waits for the reply carrying `id`, buffering events meanwhile.
    pub async fn reply(&mut self, id: u64) -> Result<Value> {
        self.reply_within(id, self.timeout).await
    }

    /// Like [`Ws::reply`] with an explicit timeout.
    pub async fn reply_within(&mut self, id: u64, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(v) = self.replies.remove(&id) {
                return match api_error(&v, None) {
                    Some(err) => Err(err),
                    None => Ok(v),
                };
            }
            self.read_one(deadline, &format!("the reply to command {id}")).await?;
        }
    }

    // ----- raw frames -----

    /// Sends one text frame as given.
    pub async fn send_text(&mut self, text: &str) -> Result<()> {
        let msg = tungstenite::Message::text(text.to_string());
        self.write(msg).await
    }

    /// Sends one text frame whose payload is `bytes` as given, valid UTF-8 or not.
    pub async fn send_raw_text(&mut self, bytes: Vec<u8>) -> Result<()> {
        let frame = Frame::message(Bytes::from(bytes), OpCode::Data(Data::Text), true);
        self.write(tungstenite::Message::Frame(frame)).await
    }

    /// Sends one binary frame.
    pub async fn send_binary(&mut self, bytes: Vec<u8>) -> Result<()> {
        self.write(tungstenite::Message::Binary(Bytes::from(bytes))).await
    }

    /// Closes the connection normally (code 1000).
    pub async fn close(mut self) -> Result<()> {
        if self.closed.is_none() {
            self.stream.close(None).await?;
        }
        Ok(())
    }

    // ----- events and closing -----

    /// The next event, waiting up to `timeout`.
    pub async fn next_event(&mut self, timeout: Duration) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.events.pop_front() {
                return Ok(e);
            }
            self.read_one(deadline, "an event").await?;
        }
    }

    /// The first event (buffered or new) matching `pred`, waiting up to
    /// `timeout`. Events that do not match stay buffered, in order.
    pub async fn wait_for(&mut self, mut pred: impl FnMut(&Event) -> bool, timeout: Duration) -> Result<Event> {
        let deadline = Instant::now() + timeout;
        let mut checked = 0;
        loop {
            if let Some(pos) = self.events.iter().skip(checked).position(&mut pred)
                && let Some(e) = self.events.remove(checked + pos)
            {
                return Ok(e);
            }
            checked = self.events.len();
            self.read_one(deadline, "a matching event").await?;
        }
    }

    /// Collects the `message` events of `room` up to and including seq
    /// `through` (stopping at the first with seq >= `through`); other events
    /// stay buffered, in order.
    pub async fn messages_through(&mut self, room: &str, through: u64, timeout: Duration) -> Result<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        let mut got = Vec::new();
        let mut kept = VecDeque::new();
        let result = loop {
            while let Some(e) = self.events.pop_front() {
                match e {
                    Event::Message(m) if m.room == room => {
                        let done = m.seq >= through;
                        got.push(m);
                        if done {
                            break;
                        }
                    }
                    other => kept.push_back(other),
                }
            }
            if got.last().is_some_and(|m| m.seq >= through) {
                break Ok(());
            }
            if let Err(e) = self.read_one(deadline, &format!("messages of {room} through seq {through}")).await {
                break Err(e);
            }
        };
        kept.append(&mut self.events);
        self.events = kept;
        match result {
            Ok(()) => Ok(got),
            Err(Error::Timeout(what)) => {
                let last = got.last().map(|m| m.seq);
                Err(Error::Timeout(format!("{what} (got {} messages, last seq {last:?})", got.len())))
            }
            Err(e) => Err(e),
        }
    }

    /// The events buffered so far, taken out.
    pub fn take_events(&mut self) -> Vec<Event> {
        self.events.drain(..).collect()
    }

    /// Number of buffered events.
    pub fn buffered_events(&self) -> usize {
        self.events.len()
    }

    /// Reads (buffering events and replies) until the server closes the
    /// socket; answers the close code.
    pub async fn wait_closed(&mut self, timeout: Duration) -> Result<Option<u16>> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some((code, _)) = &self.closed {
                return Ok(*code);
            }
            match self.read_one(deadline, "the socket to close").await {
                Ok(()) | Err(Error::Closed { .. }) => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The close code, once the server closed the socket (None: still open,
    /// or closed without a close frame; see [`Ws::is_closed`]).
    pub fn close_code(&self) -> Option<u16> {
        self.closed.as_ref().and_then(|(code, _)| *code)
    }

    /// True once the connection ended.
    pub fn is_closed(&self) -> bool {
        self.closed.is_some()
    }

    /// The client's end of the TCP connection (to find the server's end of
    /// it, say in `/proc/net/tcp`).
    pub fn local_addr(&self) -> Result<SocketAddr> {
        self.stream.get_ref().local_addr().map_err(io)
    }

    // ----- plumbing -----

    fn closed_error(&self) -> Option<Error> {
        self.closed.as_ref().map(|(code, reason)| Error::Closed { code: *code, reason: reason.clone() })
    }

    async fn write(&mut self, msg: tungstenite::Message) -> Result<()> {
        if let Some(e) = self.closed_error() {
            return Err(e);
        }
        match self.stream.send(msg).await {
            Ok(()) => Ok(()),
            Err(e) => {
                // The server may have closed first: its close frame says why.
                let deadline = Instant::now() + Duration::from_secs(2);
                while self.closed.is_none() && self.read_one(deadline, "a close frame").await.is_ok() {}
                Err(self.closed_error().unwrap_or_else(|| e.into()))
            }
        }
    }

    async fn read_one(&mut self, deadline: Instant, what: &str) -> Result<()> {
        if let Some(e) = self.closed_error() {
            return Err(e);
        }
        match tokio::time::timeout_at(deadline, self.stream.next()).await {
            Err(_) => Err(Error::Timeout(what.to_string())),
            Ok(None) => {
                self.closed = Some((None, "connection ended without a close frame".to_string()));
                Err(self.closed_error().unwrap_or_else(|| Error::Timeout(what.to_string())))
            }
            Ok(Some(Err(e))) => {
                self.closed = Some((None, format!("connection failed: {e}")));
                Err(self.closed_error().unwrap_or_else(|| e.into()))
            }
            Ok(Some(Ok(msg))) => {
                self.route(msg);
                Ok(())
            }
        }
    }

    fn route(&mut self, msg: tungstenite::Message) {
        match msg {
            tungstenite::Message::Text(text) => {
                let v: Value = match serde_json::from_str(text.as_str()) {
                    Ok(v) => v,
                    Err(_) => {
                        self.events.push_back(Event::Other(Value::String(text.as_str().to_string())));
                        return;
                    }
                };
                match reply_id(&v) {
                    Some(id) => {
                        self.replies.insert(id, v);
                    }
                    None => self.events.push_back(Event::from_value(v)),
                }
            }
            tungstenite::Message::Binary(b) => {
                self.events.push_back(Event::Other(json!({"binary_frame_bytes": b.len()})));
            }
            tungstenite::Message::Close(frame) => {
                let (code, reason) = match frame {
                    Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_string()),
                    None => (None, "close frame without a code".to_string()),
                };
                self.closed = Some((code, reason));
            }
            tungstenite::Message::Ping(_) | tungstenite::Message::Pong(_) | tungstenite::Message::Frame(_) => {}
        }
    }
}

/// Opens `ws://addr/ws` (TCP connect and upgrade, each bounded by
/// `opts.timeout`). A refused upgrade is an error carrying its HTTP status.
pub(crate) async fn open(addr: &str, opts: &WsOptions) -> Result<WebSocketStream<TcpStream>> {
    let addr = addr.trim_start_matches("http://").trim_start_matches("ws://").trim_end_matches('/');
    let mut request = format!("ws://{addr}/ws").into_client_request()?;
    if let Some(token) = &opts.bearer {
        request.headers_mut().insert("authorization", header(&format!("Bearer {token}"))?);
    }
    if let Some(origin) = &opts.origin {
        request.headers_mut().insert("origin", header(origin)?);
    }
    let target: SocketAddr = tokio::net::lookup_host(addr)
        .await
        .map_err(io)?
        .next()
        .ok_or_else(|| Error::Decode(format!("{addr} resolves to no address")))?;
    let socket = if target.is_ipv4() { TcpSocket::new_v4() } else { TcpSocket::new_v6() }.map_err(io)?;
    if let Some(size) = opts.recv_buffer {
        socket.set_recv_buffer_size(size).map_err(io)?;
    }
    let tcp = tokio::time::timeout(opts.timeout, socket.connect(target))
        .await
        .map_err(|_| Error::Timeout(format!("tcp connect to {addr}")))?
        .map_err(io)?;
    tcp.set_nodelay(true).map_err(io)?;
    let handshake = tokio::time::timeout(opts.timeout, tokio_tungstenite::client_async(request, tcp))
        .await
        .map_err(|_| Error::Timeout(format!("websocket upgrade at {addr}")))?;
    match handshake {
        Ok((stream, _)) => Ok(stream),
        Err(tungstenite::Error::Http(resp)) => {
            let body = resp.body().clone().unwrap_or_default();
            Err(Error::from_http(resp.status().as_u16(), &body, None))
        }
        Err(e) => Err(e.into()),
    }
}

fn header(value: &str) -> Result<HeaderValue> {
    HeaderValue::from_str(value).map_err(|e| Error::Decode(format!("header value {value:?}: {e}")))
}

fn io(e: std::io::Error) -> Error {
    Error::Ws(Box::new(tungstenite::Error::Io(e)))
}

/// A command's frame with the client's `id`, as text.
pub(crate) fn command_text(command: Command, id: u64) -> String {
    // A frame is strings and numbers: encoding cannot fail.
    serde_json::to_string(&command.frame(Some(id))).unwrap_or_default()
}

/// The `id` of a reply; `None` for an event (or an error to a frame
/// without a readable `id`).
pub(crate) fn reply_id(v: &Value) -> Option<u64> {
    FrameId::deserialize(v).ok().and_then(|f| f.id)
}

/// The answer of an `ok` reply, if `v` is one with an answer of type `T`.
pub(crate) fn ok_answer<T: DeserializeOwned>(v: &Value) -> Option<T> {
    match Reply::<T>::deserialize(v) {
        Ok(Reply::Ok { answer, .. }) => Some(answer),
        _ => None,
    }
}
