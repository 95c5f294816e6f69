//! A WebSocket client that outlives its connections (docs/protocol.md §4–§5): the
//! one tests, benches and the terminal client use against a cluster.
//!
//! [`ResilientClient`] connects to one base address (the balancer), sends
//! `auth` with its token (logging in again with the username and password,
//! when it has them, if the token is refused), and keeps, per subscribed
//! room, the last seq it handed to the caller. Whenever the connection ends
//! (close 1012 restart, 1013 too slow, a network error, or no frame for
//! [`ResilientOptions::stall_timeout`]) it reconnects with exponential
//! backoff and jitter, re-authenticates, re-subscribes every room with
//! `since` = the last seq seen, and writes every unanswered send again with
//! the same `client_id`, so the server answers the original seq.
//!
//! With [`ResilientOptions::follow_assign`] each connection goes straight to
//! the node the balancer's `GET /assign` names (on the balancer's host), and
//! through the balancer when that fails.
//!
//! Sends answered `unavailable` or `rate_limited` are retried the same way,
//! after the backoff or `retry_after_ms`; any other error is final and is
//! what the send's future answers.
//!
//! Messages reach the caller through the event receiver in seq order per
//! room, each at most once: a seq at or below the room's last is dropped
//! (counted in [`ClientStats::duplicates_dropped`]). A seq above last + 1 is
//! a protocol violation (the server promises no gaps): it is reported as
//! [`ClientEvent::Gap`] right before the message, counted in
//! [`ClientStats::gaps`], and the message is still handed over.
//!
//! One task owns the socket; the [`ResilientClient`] handle (cheap to clone)
//! talks to it over a channel. The task ends when every handle is dropped or
//! [`ResilientClient::close`] is called.
//!
//! ```no_run
//! # async fn demo() -> palaver_client::Result<()> {
//! use palaver_client::{ClientEvent, ResilientClient, ResilientOptions};
//!
//! let opts = ResilientOptions::new("127.0.0.1:8080").credentials("ann", "correct horse");
//! let (client, mut events) = ResilientClient::connect(opts).await?;
//! client.subscribe("lobby", Some(0)).await?;
//! let sent = client.send("lobby", "hello").await?;
//! while let Some(event) = events.recv().await {
//!     if let ClientEvent::Message(m) = event {
//!         if m.seq == sent.seq {
//!             break;
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```

use std::collections::BTreeMap;
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures_util::SinkExt;
use futures_util::StreamExt;
use palaver_protocol::Authenticated;
use palaver_protocol::Command;
use palaver_protocol::SendAck;
use palaver_protocol::Subscribed;
use palaver_protocol::close;
use serde_json::Value;
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio::sync::oneshot;
use tokio::time::Instant;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite;

use crate::error::Error;
use crate::error::Result;
use crate::error::api_error;
use crate::http::Http;
use crate::types::Event;
use crate::types::Message;
use crate::ws::WsOptions;
use crate::ws::command_text;
use crate::ws::ok_answer;
use crate::ws::reply_id;

/// How often the connection task looks at timers.
const TICK: Duration = Duration::from_millis(50);
/// A session that lasted this long resets the reconnect backoff.
const STABLE_AFTER: Duration = Duration::from_secs(1);

/// How a [`ResilientClient`] connects and retries.
#[derive(Clone, Debug)]
pub struct ResilientOptions {
    /// Base address (`127.0.0.1:8080`, the balancer's public address).
    pub addr: String,
    /// Token for `auth`.
    pub token: Option<String>,
    /// Username and password to log in with when there is no token or the
    /// token is refused.
    pub credentials: Option<(String, String)>,
    /// First reconnect delay (before jitter); doubles per failed attempt.
    pub backoff_min: Duration,
    /// Longest reconnect (and per-send retry) delay.
    pub backoff_max: Duration,
    /// Bound on the TCP connect, the upgrade and the `auth` reply, each.
    pub connect_timeout: Duration,
    /// A connection on which nothing (not even a pong) arrived this long is
    /// given up and replaced. Pings go out every third of it.
    pub stall_timeout: Duration,
    /// A command unanswered this long on one connection is taken as a sign
    /// the connection is stuck: it is replaced and the command written again.
    pub reply_timeout: Duration,
    /// A send still unanswered this long after [`ResilientClient::send`]
    /// fails with [`Error::Timeout`] (its outcome unknown). `None`: retry
    /// until answered or closed.
    pub give_up_after: Option<Duration>,
    /// How long [`ResilientClient::connect`] waits for the first session.
    pub first_connect_timeout: Duration,
    /// Prefix of generated client_ids (default: random per client).
    pub client_id_prefix: Option<String>,
    /// Seed of the jitter (default: from the clock).
    pub jitter_seed: Option<u64>,
    /// Before each connection, ask `GET /assign` at `addr` (the balancer)
    /// and open the WebSocket straight to the node it names, so the
    /// balancer relays none of its bytes (docs/protocol.md §7.4). Followed
    /// only when the node is on `addr`'s host (loopback names count as one
    /// host), as the web client does; when it is not, or `/assign` or the
    /// node fails, that connection goes through `addr`.
    pub follow_assign: bool,
}

impl ResilientOptions {
    /// Defaults for `addr`, without credentials.
    pub fn new(addr: &str) -> Self {
        ResilientOptions {
            addr: addr.trim_start_matches("http://").trim_start_matches("ws://").trim_end_matches('/').to_string(),
            token: None,
            credentials: None,
            backoff_min: Duration::from_millis(50),
            backoff_max: Duration::from_secs(2),
            connect_timeout: Duration::from_secs(5),
            stall_timeout: Duration::from_secs(6),
            reply_timeout: Duration::from_secs(30),
            give_up_after: None,
            first_connect_timeout: Duration::from_secs(30),
            client_id_prefix: None,
            jitter_seed: None,
            follow_assign: false,
        }
    }

    /// Authenticates with `token`.
    pub fn token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    /// Logs in with these when there is no token or it is refused.
    pub fn credentials(mut self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.credentials = Some((username.into(), password.into()));
        self
    }

    /// Connects straight to the node `GET /assign` names (see
    /// [`ResilientOptions::follow_assign`]).
    pub fn follow_assign(mut self) -> Self {
        self.follow_assign = true;
        self
    }
}

/// A send's answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Sent {
    /// The message's seq.
    pub seq: u64,
    /// Its timestamp (Unix ms).
    pub ts: u64,
    /// The client_id it was sent with.
    pub client_id: String,
    /// How many times the send was written (1 when the first try was answered).
    pub attempts: u32,
}

/// What the client hands to the caller, in order.
#[derive(Clone, Debug, PartialEq)]
pub enum ClientEvent {
    /// The next message of a subscribed room (seq order, no duplicate).
    Message(Message),
    /// Protocol violation: `room`'s next seq should have been `expected`
    /// and was `got`. The message with seq `got` follows.
    Gap {
        /// Room id.
        room: String,
        /// The seq that should have come.
        expected: u64,
        /// The seq that came.
        got: u64,
    },
    /// A session is up (authenticated); `session` counts from 1, so every
    /// one after the first is a reconnect.
    Connected {
        /// Session number.
        session: u64,
    },
    /// The session ended; the client reconnects unless it is closing.
    Disconnected {
        /// The server's close code, if it sent one.
        close_code: Option<u16>,
        /// Why, in words.
        reason: String,
    },
    /// A connection attempt failed; the client tries again after the backoff.
    ConnectFailed {
        /// Why, in words.
        reason: String,
    },
    /// A subscription ended for good (the server refused it, removed the
    /// caller, or deleted the room).
    Unsubscribed {
        /// Room id.
        room: String,
        /// Why (a protocol code or the server's reason).
        reason: String,
    },
    /// Any other server event (presence, typing, member, deleted, ...).
    Event(Event),
    /// The client stopped for good (say the credentials were refused).
    Stopped {
        /// Why.
        reason: String,
    },
}

/// Counters of one client, as [`ResilientClient::stats`] answers them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ClientStats {
    /// Sessions established (authenticated).
    pub sessions: u64,
    /// Sessions after the first.
    pub reconnects: u64,
    /// Connections opened straight to the node `/assign` named (counted
    /// when the socket opens, before `auth`).
    pub direct_sessions: u64,
    /// Connection attempts that failed before a session was up.
    pub connect_failures: u64,
    /// Logins made (initial and after a refused token).
    pub logins: u64,
    /// Sends answered with a seq.
    pub answered: u64,
    /// Sends that ended with an error.
    pub failed: u64,
    /// Times a send was written again (after a reconnect or a retryable error).
    pub resent: u64,
    /// Sends answered `unavailable` (then retried).
    pub unavailable: u64,
    /// Sends answered `rate_limited` (then retried).
    pub rate_limited: u64,
    /// Messages dropped as already seen.
    pub duplicates_dropped: u64,
    /// Gaps seen (protocol violations).
    pub gaps: u64,
    /// Messages handed to the caller.
    pub delivered: u64,
}

#[derive(Default)]
struct Counters {
    sessions: AtomicU64,
    direct_sessions: AtomicU64,
    connect_failures: AtomicU64,
    logins: AtomicU64,
    answered: AtomicU64,
    failed: AtomicU64,
    resent: AtomicU64,
    unavailable: AtomicU64,
    rate_limited: AtomicU64,
    duplicates_dropped: AtomicU64,
    gaps: AtomicU64,
    delivered: AtomicU64,
}

fn bump(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// State shared by the handles and the connection task.
struct Shared {
    counters: Counters,
    /// Last seq handed over, per subscribed room.
    cursors: Mutex<HashMap<String, u64>>,
    username: Mutex<Option<String>>,
    prefix: String,
    next_client_id: AtomicU64,
}

/// The receiver of a client's [`ClientEvent`]s.
pub type ClientEvents = mpsc::UnboundedReceiver<ClientEvent>;

enum Cmd {
    Send { room: String, body: String, client_id: String, reply: oneshot::Sender<Result<Sent>> },
    Subscribe { room: String, since: Option<u64>, reply: oneshot::Sender<Result<u64>> },
    Unsubscribe { room: String },
    Typing { room: String },
    Reconnect,
    Close { done: oneshot::Sender<()> },
}

/// A WebSocket client that reconnects, resubscribes and resends; see the
/// module documentation. Clones share one connection.
#[derive(Clone)]
pub struct ResilientClient {
    cmds: mpsc::UnboundedSender<Cmd>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for ResilientClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResilientClient").field("prefix", &self.shared.prefix).field("stats", &self.stats()).finish()
    }
}

impl ResilientClient {
    /// Starts the client and waits (up to
    /// [`ResilientOptions::first_connect_timeout`]) for its first session.
    /// Fails at once when the credentials are refused, or when the token is
    /// and there are no credentials.
    pub async fn connect(opts: ResilientOptions) -> Result<(ResilientClient, ClientEvents)> {
        let mut rng = Jitter::new(opts.jitter_seed);
        let prefix = opts.client_id_prefix.clone().unwrap_or_else(|| format!("rc{:012x}", rng.next() >> 16));
        let shared = Arc::new(Shared {
            counters: Counters::default(),
            cursors: Mutex::new(HashMap::new()),
            username: Mutex::new(None),
            prefix,
            next_client_id: AtomicU64::new(1),
        });
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        let (event_tx, event_rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let first_within = opts.first_connect_timeout;
        let driver = Driver {
            http: Http::new(&opts.addr)?,
            token: opts.token.clone(),
            opts,
            cmds: cmd_rx,
            events: event_tx,
            shared: shared.clone(),
            subs: BTreeMap::new(),
            sends: BTreeMap::new(),
            next_send: 1,
            rng,
            ready: Some(ready_tx),
        };
        tokio::spawn(driver.run());
        let client = ResilientClient { cmds: cmd_tx, shared };
        match tokio::time::timeout(first_within, ready_rx).await {
            Ok(Ok(Ok(()))) => Ok((client, event_rx)),
            Ok(Ok(Err(e))) => Err(e),
            Ok(Err(_)) => Err(Error::Closed { code: None, reason: "the client stopped before connecting".into() }),
            Err(_) => {
                client.close().await;
                Err(Error::Timeout(format!("a first session within {first_within:?}")))
            }
        }
    }

    /// A fresh client_id: this client's prefix and a counter.
    pub fn next_client_id(&self) -> String {
        let n = self.shared.next_client_id.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n}", self.shared.prefix)
    }

    /// Sends `body` to `room` with a generated client_id; answers once the
    /// server did (retrying through reconnects, `unavailable` and
    /// `rate_limited`).
    pub async fn send(&self, room: &str, body: &str) -> Result<Sent> {
        let client_id = self.next_client_id();
        self.send_with_id(room, body, &client_id).await
    }

    /// Like [`ResilientClient::send`] with the caller's client_id (1..64
    /// chars, unique per sender and room unless a retry is meant).
    pub async fn send_with_id(&self, room: &str, body: &str, client_id: &str) -> Result<Sent> {
        let (reply, answer) = oneshot::channel();
        let cmd = Cmd::Send { room: room.to_string(), body: body.to_string(), client_id: client_id.to_string(), reply };
        self.cmds.send(cmd).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Subscribes to `room` (from `since` when given: every message after
    /// it is delivered; else from the room's last seq). Answers the room's
    /// `last_seq` from the first ok; the subscription then lives through
    /// reconnects until [`ResilientClient::unsubscribe`]. A refused
    /// subscription (not_found, forbidden, ...) answers the error.
    pub async fn subscribe(&self, room: &str, since: Option<u64>) -> Result<u64> {
        let (reply, answer) = oneshot::channel();
        self.cmds.send(Cmd::Subscribe { room: room.to_string(), since, reply }).map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
    }

    /// Ends the subscription to `room` (messages already queued for the
    /// caller stay queued).
    pub fn unsubscribe(&self, room: &str) {
        let _ = self.cmds.send(Cmd::Unsubscribe { room: room.to_string() });
    }

    /// Tells `room`'s other subscribers that this user is typing. Best
    /// effort, as typing notices are: written on the current session only
    /// (dropped while disconnected, not resent), its reply ignored.
    pub fn typing(&self, room: &str) {
        let _ = self.cmds.send(Cmd::Typing { room: room.to_string() });
    }

    /// Drops the current connection (as a network failure would); the
    /// client reconnects as usual.
    pub fn reconnect(&self) {
        let _ = self.cmds.send(Cmd::Reconnect);
    }

    /// Closes the connection and stops; unanswered sends fail with
    /// [`Error::Closed`].
    pub async fn close(&self) {
        let (done, wait) = oneshot::channel();
        if self.cmds.send(Cmd::Close { done }).is_ok() {
            let _ = wait.await;
        }
    }

    /// Sessions after the first.
    pub fn reconnects(&self) -> u64 {
        self.shared.counters.sessions.load(Ordering::Relaxed).saturating_sub(1)
    }

    /// Gaps seen so far (protocol violations).
    pub fn gaps(&self) -> u64 {
        self.shared.counters.gaps.load(Ordering::Relaxed)
    }

    /// The last seq of `room` handed to the caller (None: not subscribed,
    /// or nothing known yet).
    pub fn last_seq(&self, room: &str) -> Option<u64> {
        self.shared.cursors.lock().ok().and_then(|c| c.get(room).copied())
    }

    /// The username the server authenticated (None before the first session).
    pub fn username(&self) -> Option<String> {
        self.shared.username.lock().ok().and_then(|u| u.clone())
    }

    /// The prefix of generated client_ids.
    pub fn client_id_prefix(&self) -> &str {
        &self.shared.prefix
    }

    /// The counters so far.
    pub fn stats(&self) -> ClientStats {
        let c = &self.shared.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let sessions = get(&c.sessions);
        ClientStats {
            sessions,
            reconnects: sessions.saturating_sub(1),
            direct_sessions: get(&c.direct_sessions),
            connect_failures: get(&c.connect_failures),
            logins: get(&c.logins),
            answered: get(&c.answered),
            failed: get(&c.failed),
            resent: get(&c.resent),
            unavailable: get(&c.unavailable),
            rate_limited: get(&c.rate_limited),
            duplicates_dropped: get(&c.duplicates_dropped),
            gaps: get(&c.gaps),
            delivered: get(&c.delivered),
        }
    }
}

/// The `host:port` of the node an `/assign` answer names, when its `ws` URL
/// is plain `ws://…/ws` on the host of `base` (loopback names count as one
/// host); None otherwise.
pub fn assigned_node(base: &str, answer: &Value) -> Option<String> {
    let node = answer.get("ws")?.as_str()?.strip_prefix("ws://")?.strip_suffix("/ws")?;
    let host = |addr: &str| -> Option<String> {
        let (host, port) = addr.rsplit_once(':')?;
        port.parse::<u16>().ok()?;
        let host = host.trim_start_matches('[').trim_end_matches(']').to_ascii_lowercase();
        let loopback = host == "localhost" || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback());
        Some(if loopback { "loopback".to_string() } else { host })
    };
    (host(node)? == host(base)?).then(|| node.to_string())
}

fn stopped() -> Error {
    Error::Closed { code: None, reason: "the client is stopped".into() }
}

// ---------------------------------------------------------------------------
// Pure decisions.
// ---------------------------------------------------------------------------

/// What to do with a message of a room whose last handed-over seq is `last`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Order {
    /// The next one: hand it over.
    Next,
    /// Seen already: drop it.
    Duplicate,
    /// Seqs in between are missing (a protocol violation).
    Gap {
        /// The seq that should have come.
        expected: u64,
    },
}

/// Classifies seq `seq` after `last`.
pub fn order(last: u64, seq: u64) -> Order {
    if seq <= last {
        Order::Duplicate
    } else if seq == last + 1 {
        Order::Next
    } else {
        Order::Gap { expected: last + 1 }
    }
}

/// The delay before attempt `attempt` (1-based): `min` doubled per attempt,
/// capped at `max`, with "equal jitter" (`random` in 0..=1 picks a point in
/// the upper half), so it is always within `[base / 2, base]` and never
/// above `max`.
pub fn backoff(attempt: u32, min: Duration, max: Duration, random: f64) -> Duration {
    let doublings = attempt.saturating_sub(1).min(20);
    let base = min.saturating_mul(1u32 << doublings).min(max).max(Duration::from_millis(1));
    let half = base / 2;
    half + half.mul_f64(random.clamp(0.0, 1.0))
}

/// Whether a send error is worth retrying (the message may still land; the
/// same client_id makes the retry safe).
fn retryable(code: &str) -> bool {
    matches!(code, "unavailable" | "rate_limited")
}

/// xorshift64*: jitter needs no more.
struct Jitter(u64);

impl Jitter {
    fn new(seed: Option<u64>) -> Self {
        let seed = seed.unwrap_or_else(|| {
            let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos());
            (t as u64) ^ ((t >> 64) as u64) ^ u64::from(std::process::id()).rotate_left(32)
        });
        Jitter(seed | 1)
    }

    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

// ---------------------------------------------------------------------------
// The connection task.
// ---------------------------------------------------------------------------

struct Sub {
    /// Last seq handed over (None: subscribed without `since`, no ok yet).
    last: Option<u64>,
    /// Messages that came before the first ok of a subscription without `since`.
    early: Vec<Message>,
    /// Callers waiting for the first ok.
    waiters: Vec<oneshot::Sender<Result<u64>>>,
    /// Subscribe written on the current session (or answered there).
    sent: bool,
    /// Retry a refused-for-now subscribe at this time.
    due: Option<Instant>,
    attempts: u32,
}

struct PendingSend {
    room: String,
    body: String,
    client_id: String,
    reply: oneshot::Sender<Result<Sent>>,
    /// Times written so far.
    attempts: u32,
    /// Retryable refusals so far (for the backoff).
    refusals: u32,
    created: Instant,
    /// Write it (again) at or after this time, when not in flight.
    due: Instant,
    /// The command id on the current session, while written and unanswered.
    in_flight: Option<u64>,
}

enum Waiting {
    Send(u64),
    Subscribe(String),
    Other,
}

struct Session {
    ws: WebSocketStream<TcpStream>,
    next_id: u64,
    waiting: HashMap<u64, (Waiting, Instant)>,
    last_heard: Instant,
    last_ping: Instant,
}

/// How a session ended.
struct Ended {
    close_code: Option<u16>,
    reason: String,
    closing: bool,
}

enum ConnectError {
    /// Try again after the backoff.
    Transient(Error),
    /// Stop for good.
    Fatal(Error),
}

struct Driver {
    opts: ResilientOptions,
    http: Http,
    token: Option<String>,
    cmds: mpsc::UnboundedReceiver<Cmd>,
    events: mpsc::UnboundedSender<ClientEvent>,
    shared: Arc<Shared>,
    subs: BTreeMap<String, Sub>,
    /// Unanswered sends in the order they were made.
    sends: BTreeMap<u64, PendingSend>,
    next_send: u64,
    rng: Jitter,
    ready: Option<oneshot::Sender<Result<()>>>,
}

impl Driver {
    async fn run(mut self) {
        let mut failures: u32 = 0;
        let mut closing: Option<oneshot::Sender<()>> = None;
        let stop_reason = loop {
            match self.establish().await {
                Ok(session) => {
                    let n = self.shared.counters.sessions.fetch_add(1, Ordering::Relaxed) + 1;
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Ok(()));
                    }
                    self.emit(ClientEvent::Connected { session: n });
                    let started = Instant::now();
                    let ended = self.serve(session, &mut closing).await;
                    self.session_over();
                    self.emit(ClientEvent::Disconnected { close_code: ended.close_code, reason: ended.reason.clone() });
                    if ended.closing {
                        break "closed".to_string();
                    }
                    if matches!(ended.close_code, Some(close::NOT_AUTHENTICATED | close::TOKEN_REVOKED)) {
                        if self.opts.credentials.is_none() {
                            let e = Error::Closed { code: ended.close_code, reason: ended.reason };
                            break format!("the token stopped working and there are no credentials: {e}");
                        }
                        self.token = None;
                    }
                    failures = if started.elapsed() >= STABLE_AFTER { 1 } else { failures + 1 };
                }
                Err(ConnectError::Fatal(e)) => {
                    let reason = e.to_string();
                    if let Some(ready) = self.ready.take() {
                        let _ = ready.send(Err(e));
                    }
                    break reason;
                }
                Err(ConnectError::Transient(e)) => {
                    bump(&self.shared.counters.connect_failures);
                    self.emit(ClientEvent::ConnectFailed { reason: e.to_string() });
                    failures += 1;
                }
            }
            let delay = backoff(failures, self.opts.backoff_min, self.opts.backoff_max, self.rng.unit());
            if !self.idle(delay, &mut closing).await {
                break "closed".to_string();
            }
        };
        self.fail_all(&stop_reason);
        self.emit(ClientEvent::Stopped { reason: stop_reason });
        if let Some(done) = closing {
            let _ = done.send(());
        }
    }

    fn emit(&self, event: ClientEvent) {
        let _ = self.events.send(event);
    }

    /// Answers everything still waiting with an error.
    fn fail_all(&mut self, reason: &str) {
        for (_, s) in std::mem::take(&mut self.sends) {
            bump(&self.shared.counters.failed);
            let _ = s.reply.send(Err(Error::Closed { code: None, reason: format!("client stopped: {reason}") }));
        }
        for (_, sub) in std::mem::take(&mut self.subs) {
            for w in sub.waiters {
                let _ = w.send(Err(Error::Closed { code: None, reason: format!("client stopped: {reason}") }));
            }
        }
        if let Ok(mut c) = self.shared.cursors.lock() {
            c.clear();
        }
    }

    /// Waits `delay` while taking commands; false when closing.
    async fn idle(&mut self, delay: Duration, closing: &mut Option<oneshot::Sender<()>>) -> bool {
        let until = Instant::now() + delay;
        loop {
            self.give_up_overdue();
            tokio::select! {
                _ = tokio::time::sleep_until(until) => return true,
                _ = tokio::time::sleep(TICK) => {}
                cmd = self.cmds.recv() => match cmd {
                    None => return false,
                    Some(Cmd::Close { done }) => {
                        *closing = Some(done);
                        return false;
                    }
                    Some(cmd) => self.take(cmd),
                },
            }
        }
    }

    /// Records a command while disconnected (it is written once connected).
    fn take(&mut self, cmd: Cmd) {
        match cmd {
            Cmd::Send { room, body, client_id, reply } => {
                self.add_send(room, body, client_id, reply);
            }
            Cmd::Subscribe { room, since, reply } => {
                self.add_sub(room, since, reply);
            }
            Cmd::Unsubscribe { room } => {
                self.drop_sub(&room);
            }
            // A typing notice is stale by the time a session is up again.
            Cmd::Typing { .. } | Cmd::Reconnect | Cmd::Close { .. } => {}
        }
    }

    fn add_send(&mut self, room: String, body: String, client_id: String, reply: oneshot::Sender<Result<Sent>>) -> u64 {
        let key = self.next_send;
        self.next_send += 1;
        let now = Instant::now();
        let send = PendingSend {
            room,
            body,
            client_id,
            reply,
            attempts: 0,
            refusals: 0,
            created: now,
            due: now,
            in_flight: None,
        };
        self.sends.insert(key, send);
        key
    }

    /// Adds a subscription or a waiter on it; answers whether a subscribe
    /// must be written.
    fn add_sub(&mut self, room: String, since: Option<u64>, reply: oneshot::Sender<Result<u64>>) -> bool {
        match self.subs.get_mut(&room) {
            Some(sub) => {
                match sub.last {
                    Some(last) if sub.waiters.is_empty() && sub.sent => {
                        let _ = reply.send(Ok(last));
                    }
                    _ => sub.waiters.push(reply),
                }
                false
            }
            None => {
                if let Some(last) = since
                    && let Ok(mut c) = self.shared.cursors.lock()
                {
                    c.insert(room.clone(), last);
                }
                let sub =
                    Sub { last: since, early: Vec::new(), waiters: vec![reply], sent: false, due: None, attempts: 0 };
                self.subs.insert(room, sub);
                true
            }
        }
    }

    fn drop_sub(&mut self, room: &str) {
        if let Some(sub) = self.subs.remove(room) {
            for w in sub.waiters {
                let _ = w.send(Err(Error::Closed { code: None, reason: format!("unsubscribed from {room}") }));
            }
        }
        if let Ok(mut c) = self.shared.cursors.lock() {
            c.remove(room);
        }
    }

    /// Fails sends older than `give_up_after`.
    fn give_up_overdue(&mut self) {
        let Some(limit) = self.opts.give_up_after else { return };
        let now = Instant::now();
        let overdue: Vec<u64> =
            self.sends.iter().filter(|(_, s)| now.duration_since(s.created) >= limit).map(|(k, _)| *k).collect();
        for key in overdue {
            if let Some(s) = self.sends.remove(&key) {
                bump(&self.shared.counters.failed);
                let what = format!(
                    "an answer to send {} in {} within {limit:?} ({} attempts; its outcome is unknown)",
                    s.client_id, s.room, s.attempts
                );
                let _ = s.reply.send(Err(Error::Timeout(what)));
            }
        }
    }

    /// Logs in when needed, connects and authenticates.
    async fn establish(&mut self) -> std::result::Result<Session, ConnectError> {
        if self.token.is_none() {
            self.login().await?;
        }
        let token = self.token.clone().unwrap_or_default();
        let ws_opts = WsOptions { timeout: self.opts.connect_timeout, ..WsOptions::default() };
        let direct = match self.assigned().await {
            Some(node) => crate::ws::open(&node, &ws_opts).await.ok(),
            None => None,
        };
        let mut ws = match direct {
            Some(ws) => {
                bump(&self.shared.counters.direct_sessions);
                ws
            }
            None => crate::ws::open(&self.opts.addr, &ws_opts).await.map_err(ConnectError::Transient)?,
        };
        let auth = command_text(Command::Auth { token }, 1);
        let deadline = Instant::now() + self.opts.connect_timeout;
        let sent = tokio::time::timeout_at(deadline, ws.send(tungstenite::Message::text(auth))).await;
        if !matches!(sent, Ok(Ok(()))) {
            return Err(ConnectError::Transient(Error::Timeout("writing auth".into())));
        }
        loop {
            let frame = match tokio::time::timeout_at(deadline, ws.next()).await {
                Err(_) => return Err(ConnectError::Transient(Error::Timeout("the auth reply".into()))),
                Ok(None) => {
                    return Err(ConnectError::Transient(Error::Closed {
                        code: None,
                        reason: "closed before the auth reply".into(),
                    }));
                }
                Ok(Some(Err(e))) => return Err(ConnectError::Transient(e.into())),
                Ok(Some(Ok(frame))) => frame,
            };
            match frame {
                tungstenite::Message::Text(text) => {
                    let v: Value = serde_json::from_str(text.as_str()).unwrap_or(Value::Null);
                    if reply_id(&v) != Some(1) {
                        continue;
                    }
                    if let Some(err) = api_error(&v, None) {
                        return Err(self.token_refused(err));
                    }
                    if let (Some(auth), Ok(mut u)) = (ok_answer::<Authenticated>(&v), self.shared.username.lock()) {
                        *u = Some(auth.username);
                    }
                    let now = Instant::now();
                    return Ok(Session { ws, next_id: 2, waiting: HashMap::new(), last_heard: now, last_ping: now });
                }
                tungstenite::Message::Close(frame) => {
                    let (code, reason) = match frame {
                        Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_string()),
                        None => (None, "closed without a code".to_string()),
                    };
                    let err = Error::Closed { code, reason };
                    if code == Some(close::NOT_AUTHENTICATED) || code == Some(close::TOKEN_REVOKED) {
                        return Err(self.token_refused(err));
                    }
                    return Err(ConnectError::Transient(err));
                }
                _ => {}
            }
        }
    }

    /// The node `GET /assign` names for this connection, when the client
    /// follows it and the node is on the balancer's host.
    async fn assigned(&self) -> Option<String> {
        if !self.opts.follow_assign {
            return None;
        }
        let http = self.http.without_token();
        let asked = http.request(crate::http::Method::GET, "/assign", None);
        match tokio::time::timeout(self.opts.connect_timeout, asked).await {
            Ok(Ok(raw)) if raw.status == 200 => assigned_node(&self.opts.addr, &raw.json),
            _ => None,
        }
    }

    /// The token was refused: log in next time, or stop without credentials.
    fn token_refused(&mut self, err: Error) -> ConnectError {
        if self.opts.credentials.is_some() {
            self.token = None;
            ConnectError::Transient(err)
        } else {
            ConnectError::Fatal(err)
        }
    }

    async fn login(&mut self) -> std::result::Result<(), ConnectError> {
        let Some((user, password)) = self.opts.credentials.clone() else {
            return Err(ConnectError::Fatal(Error::Decode("no token and no credentials".into())));
        };
        match tokio::time::timeout(self.opts.connect_timeout, self.http.login(&user, &password)).await {
            Err(_) => Err(ConnectError::Transient(Error::Timeout("the login answer".into()))),
            Ok(Ok(login)) => {
                bump(&self.shared.counters.logins);
                self.token = Some(login.token);
                Ok(())
            }
            Ok(Err(e)) if e.code() == "unauthorized" || e.code() == "bad_request" => Err(ConnectError::Fatal(e)),
            Ok(Err(e)) => Err(ConnectError::Transient(e)),
        }
    }

    /// Runs one session until it ends.
    async fn serve(&mut self, mut s: Session, closing: &mut Option<oneshot::Sender<()>>) -> Ended {
        // Re-subscribe every room, then write every unanswered send.
        let rooms: Vec<String> = self.subs.keys().cloned().collect();
        for room in rooms {
            if let Err(e) = self.write_subscribe(&mut s, &room).await {
                return e;
            }
        }
        if let Err(e) = self.write_due_sends(&mut s).await {
            return e;
        }
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            let step = tokio::select! {
                frame = s.ws.next() => {
                    s.last_heard = Instant::now();
                    match frame {
                        None => Err(ended(None, "the connection ended without a close frame")),
                        Some(Err(e)) => Err(ended(None, &format!("the connection failed: {e}"))),
                        Some(Ok(tungstenite::Message::Close(frame))) => {
                            let (code, reason) = match frame {
                                Some(f) => (Some(u16::from(f.code)), f.reason.as_str().to_string()),
                                None => (None, "closed without a code".to_string()),
                            };
                            Err(ended(code, &format!("the server closed the connection: {reason}")))
                        }
                        Some(Ok(tungstenite::Message::Text(text))) => self.on_text(&mut s, text.as_str()).await,
                        Some(Ok(_)) => Ok(()),
                    }
                }
                cmd = self.cmds.recv() => match cmd {
                    None => Err(Ended { close_code: None, reason: "every handle was dropped".into(), closing: true }),
                    Some(Cmd::Close { done }) => {
                        *closing = Some(done);
                        let _ = tokio::time::timeout(Duration::from_secs(1), s.ws.close(None)).await;
                        Err(Ended { close_code: None, reason: "closed by the caller".into(), closing: true })
                    }
                    Some(Cmd::Reconnect) => Err(ended(None, "reconnect asked by the caller")),
                    Some(Cmd::Typing { room }) => {
                        self.write(&mut s, Command::Typing { room }, Waiting::Other).await.map(drop)
                    }
                    Some(Cmd::Send { room, body, client_id, reply }) => {
                        let key = self.add_send(room, body, client_id, reply);
                        self.write_send(&mut s, key).await
                    }
                    Some(Cmd::Subscribe { room, since, reply }) => {
                        if self.add_sub(room.clone(), since, reply) {
                            self.write_subscribe(&mut s, &room).await
                        } else {
                            Ok(())
                        }
                    }
                    Some(Cmd::Unsubscribe { room }) => {
                        let known = self.subs.contains_key(&room);
                        self.drop_sub(&room);
                        if known {
                            self.write(&mut s, Command::Unsubscribe { room }, Waiting::Other).await.map(drop)
                        } else {
                            Ok(())
                        }
                    }
                },
                _ = tick.tick() => self.on_tick(&mut s).await,
            };
            if let Err(e) = step {
                return e;
            }
        }
    }

    /// Timers: stall detection, pings, overdue replies, due retries, give-ups.
    async fn on_tick(&mut self, s: &mut Session) -> std::result::Result<(), Ended> {
        let now = Instant::now();
        if now.duration_since(s.last_heard) >= self.opts.stall_timeout {
            return Err(ended(None, &format!("nothing heard for {:?}", self.opts.stall_timeout)));
        }
        if let Some((_, (_, since))) = s.waiting.iter().min_by_key(|(_, (_, since))| *since)
            && now.duration_since(*since) >= self.opts.reply_timeout
        {
            return Err(ended(None, &format!("a command unanswered for {:?}", self.opts.reply_timeout)));
        }
        if now.duration_since(s.last_ping) >= self.opts.stall_timeout / 3 {
            s.last_ping = now;
            self.write_frame(s, tungstenite::Message::Ping(Default::default())).await?;
        }
        self.give_up_overdue();
        self.write_due_sends(s).await?;
        let due_subs: Vec<String> = self
            .subs
            .iter()
            .filter(|(_, sub)| !sub.sent && sub.due.is_some_and(|d| d <= now))
            .map(|(r, _)| r.clone())
            .collect();
        for room in due_subs {
            self.write_subscribe(s, &room).await?;
        }
        Ok(())
    }

    async fn write_due_sends(&mut self, s: &mut Session) -> std::result::Result<(), Ended> {
        let now = Instant::now();
        let due: Vec<u64> =
            self.sends.iter().filter(|(_, p)| p.in_flight.is_none() && p.due <= now).map(|(k, _)| *k).collect();
        for key in due {
            self.write_send(s, key).await?;
        }
        Ok(())
    }

    async fn write_send(&mut self, s: &mut Session, key: u64) -> std::result::Result<(), Ended> {
        let Some(p) = self.sends.get(&key) else { return Ok(()) };
        let cmd = Command::Send {
            room: p.room.clone(),
            body: p.body.clone(),
            client_id: p.client_id.clone(),
            reply_to: None,
            attachments: Vec::new(),
        };
        let id = self.write(s, cmd, Waiting::Send(key)).await?;
        if let Some(p) = self.sends.get_mut(&key) {
            if p.attempts > 0 {
                bump(&self.shared.counters.resent);
            }
            p.attempts += 1;
            p.in_flight = Some(id);
        }
        Ok(())
    }

    async fn write_subscribe(&mut self, s: &mut Session, room: &str) -> std::result::Result<(), Ended> {
        let Some(sub) = self.subs.get(room) else { return Ok(()) };
        let cmd = Command::Subscribe { room: room.to_string(), since: sub.last };
        self.write(s, cmd, Waiting::Subscribe(room.to_string())).await?;
        if let Some(sub) = self.subs.get_mut(room) {
            sub.sent = true;
            sub.due = None;
        }
        Ok(())
    }

    /// Writes a command with the next id; answers the id.
    async fn write(&mut self, s: &mut Session, cmd: Command, waiting: Waiting) -> std::result::Result<u64, Ended> {
        let id = s.next_id;
        s.next_id += 1;
        self.write_frame(s, tungstenite::Message::text(command_text(cmd, id))).await?;
        s.waiting.insert(id, (waiting, Instant::now()));
        Ok(id)
    }

    async fn write_frame(&mut self, s: &mut Session, frame: tungstenite::Message) -> std::result::Result<(), Ended> {
        match tokio::time::timeout(self.opts.stall_timeout, s.ws.send(frame)).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ended(None, &format!("writing failed: {e}"))),
            Err(_) => Err(ended(None, &format!("a write blocked for {:?}", self.opts.stall_timeout))),
        }
    }

    async fn on_text(&mut self, s: &mut Session, text: &str) -> std::result::Result<(), Ended> {
        let Ok(v) = serde_json::from_str::<Value>(text) else {
            self.emit(ClientEvent::Event(Event::Other(Value::String(text.to_string()))));
            return Ok(());
        };
        match reply_id(&v) {
            Some(id) => {
                if let Some((waiting, _)) = s.waiting.remove(&id) {
                    self.on_reply(waiting, &v);
                }
            }
            None => self.on_event(Event::from_value(v)),
        }
        Ok(())
    }

    fn on_reply(&mut self, waiting: Waiting, v: &Value) {
        match waiting {
            Waiting::Send(key) => self.on_send_reply(key, v),
            Waiting::Subscribe(room) => self.on_subscribe_reply(&room, v),
            Waiting::Other => {}
        }
    }

    fn on_send_reply(&mut self, key: u64, v: &Value) {
        let Some(p) = self.sends.get_mut(&key) else { return };
        p.in_flight = None;
        match api_error(v, None) {
            None => {
                let Some(p) = self.sends.remove(&key) else { return };
                let answer = match ok_answer::<SendAck>(v) {
                    Some(SendAck { seq, ts }) => {
                        bump(&self.shared.counters.answered);
                        Ok(Sent { seq, ts, client_id: p.client_id, attempts: p.attempts })
                    }
                    None => {
                        bump(&self.shared.counters.failed);
                        Err(Error::Decode(format!("a send's ok without seq and ts: {v}")))
                    }
                };
                let _ = p.reply.send(answer);
            }
            Some(err) if retryable(err.code()) => {
                p.refusals += 1;
                let wait = match err.retry_after_ms() {
                    Some(ms) if err.code() == "rate_limited" => Duration::from_millis(ms),
                    _ => backoff(p.refusals, self.opts.backoff_min, self.opts.backoff_max, self.rng.unit()),
                };
                p.due = Instant::now() + wait;
                let counter = if err.code() == "rate_limited" {
                    &self.shared.counters.rate_limited
                } else {
                    &self.shared.counters.unavailable
                };
                bump(counter);
            }
            Some(err) => {
                if let Some(p) = self.sends.remove(&key) {
                    bump(&self.shared.counters.failed);
                    let _ = p.reply.send(Err(err));
                }
            }
        }
    }

    fn on_subscribe_reply(&mut self, room: &str, v: &Value) {
        let Some(sub) = self.subs.get_mut(room) else { return };
        match api_error(v, None) {
            None => {
                let last_seq = ok_answer::<Subscribed>(v).map_or(0, |s| s.last_seq);
                sub.attempts = 0;
                if sub.last.is_none() {
                    sub.last = Some(last_seq);
                    if let Ok(mut c) = self.shared.cursors.lock() {
                        c.insert(room.to_string(), last_seq);
                    }
                    let mut early = std::mem::take(&mut sub.early);
                    early.sort_by_key(|m| m.seq);
                    for m in early {
                        self.deliver(m);
                    }
                }
                if let Some(sub) = self.subs.get_mut(room) {
                    for w in sub.waiters.drain(..) {
                        let _ = w.send(Ok(last_seq));
                    }
                }
            }
            Some(err) if retryable(err.code()) => {
                sub.sent = false;
                sub.attempts += 1;
                let wait = match err.retry_after_ms() {
                    Some(ms) => Duration::from_millis(ms),
                    None => backoff(sub.attempts, self.opts.backoff_min, self.opts.backoff_max, self.rng.unit()),
                };
                sub.due = Some(Instant::now() + wait);
            }
            Some(err) => {
                let reason = err.code().to_string();
                if let Some(sub) = self.subs.remove(room) {
                    for w in sub.waiters {
                        let _ = w.send(Err(Error::Api {
                            status: None,
                            code: reason.clone(),
                            message: err.to_string(),
                            retry_after_ms: None,
                        }));
                    }
                }
                if let Ok(mut c) = self.shared.cursors.lock() {
                    c.remove(room);
                }
                self.emit(ClientEvent::Unsubscribed { room: room.to_string(), reason });
            }
        }
    }

    fn on_event(&mut self, event: Event) {
        match event {
            Event::Message(m) => {
                let Some(sub) = self.subs.get_mut(&m.room) else { return };
                if sub.last.is_none() {
                    sub.early.push(m);
                } else {
                    self.deliver(m);
                }
            }
            Event::Removed { room, reason } => {
                if self.subs.contains_key(&room) {
                    self.drop_sub(&room);
                    self.emit(ClientEvent::Unsubscribed {
                        room: room.clone(),
                        reason: reason.clone().unwrap_or_else(|| "removed".into()),
                    });
                }
                self.emit(ClientEvent::Event(Event::Removed { room, reason }));
            }
            Event::RoomDeleted { room } => {
                if self.subs.contains_key(&room) {
                    self.drop_sub(&room);
                    self.emit(ClientEvent::Unsubscribed { room: room.clone(), reason: "room_deleted".into() });
                }
                self.emit(ClientEvent::Event(Event::RoomDeleted { room }));
            }
            other => self.emit(ClientEvent::Event(other)),
        }
    }

    /// Hands a message over in order (the room has a known last seq).
    fn deliver(&mut self, m: Message) {
        let Some(sub) = self.subs.get_mut(&m.room) else { return };
        let last = sub.last.unwrap_or(0);
        match order(last, m.seq) {
            Order::Duplicate => {
                bump(&self.shared.counters.duplicates_dropped);
                return;
            }
            Order::Gap { expected } => {
                bump(&self.shared.counters.gaps);
                self.emit(ClientEvent::Gap { room: m.room.clone(), expected, got: m.seq });
            }
            Order::Next => {}
        }
        if let Some(sub) = self.subs.get_mut(&m.room) {
            sub.last = Some(m.seq);
        }
        if let Ok(mut c) = self.shared.cursors.lock() {
            c.insert(m.room.clone(), m.seq);
        }
        bump(&self.shared.counters.delivered);
        self.emit(ClientEvent::Message(m));
    }

    /// After a session: unanswered sends and subscriptions go again next time.
    fn session_over(&mut self) {
        let now = Instant::now();
        for p in self.sends.values_mut() {
            if p.in_flight.take().is_some() {
                p.due = p.due.min(now);
            }
        }
        for sub in self.subs.values_mut() {
            sub.sent = false;
            sub.due = None;
        }
    }
}

fn ended(close_code: Option<u16>, reason: &str) -> Ended {
    Ended { close_code, reason: reason.to_string(), closing: false }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_next_duplicate_or_a_gap() {
        assert_eq!(order(0, 1), Order::Next);
        assert_eq!(order(5, 6), Order::Next);
        assert_eq!(order(5, 5), Order::Duplicate);
        assert_eq!(order(5, 1), Order::Duplicate);
        assert_eq!(order(5, 7), Order::Gap { expected: 6 });
        assert_eq!(order(0, 3), Order::Gap { expected: 1 });
    }

    #[test]
    fn backoff_doubles_within_bounds_and_jitters_in_the_upper_half() {
        let (min, max) = (Duration::from_millis(100), Duration::from_secs(2));
        assert_eq!(backoff(1, min, max, 1.0), min);
        assert_eq!(backoff(1, min, max, 0.0), min / 2);
        assert_eq!(backoff(2, min, max, 1.0), min * 2);
        assert_eq!(backoff(3, min, max, 1.0), min * 4);
        for attempt in 1..200 {
            for r in [0.0, 0.3, 0.99, 1.0] {
                let d = backoff(attempt, min, max, r);
                assert!(d <= max, "attempt {attempt}: {d:?}");
                assert!(d >= min / 2, "attempt {attempt}: {d:?}");
            }
        }
        assert_eq!(backoff(50, min, max, 1.0), max);
        assert_eq!(backoff(50, min, max, 0.0), max / 2);
        assert_eq!(backoff(u32::MAX, min, max, 0.5), max / 2 + (max / 2).mul_f64(0.5));
    }

    #[test]
    fn jitter_is_in_the_unit_interval_and_reproducible() {
        let mut a = Jitter::new(Some(7));
        let mut b = Jitter::new(Some(7));
        for _ in 0..1000 {
            let x = a.unit();
            assert!((0.0..1.0).contains(&x));
            assert_eq!(x, b.unit());
        }
    }

    #[test]
    fn an_assigned_node_is_followed_only_on_the_balancers_host() {
        let answer = |ws: &str| serde_json::json!({"node": 2, "url": "http://x", "ws": ws});
        let base = "127.0.0.1:8080";
        assert_eq!(assigned_node(base, &answer("ws://127.0.0.1:7102/ws")), Some("127.0.0.1:7102".into()));
        assert_eq!(assigned_node("localhost:8080", &answer("ws://127.0.0.2:7102/ws")), Some("127.0.0.2:7102".into()));
        assert_eq!(assigned_node("[::1]:8080", &answer("ws://127.0.0.1:7102/ws")), Some("127.0.0.1:7102".into()));
        assert_eq!(
            assigned_node("chat.example:80", &answer("ws://chat.example:7102/ws")),
            Some("chat.example:7102".into())
        );
        assert_eq!(assigned_node(base, &answer("ws://10.0.0.5:7102/ws")), None, "another host");
        assert_eq!(assigned_node(base, &answer("wss://127.0.0.1:7102/ws")), None, "not plain ws");
        assert_eq!(assigned_node(base, &answer("ws://127.0.0.1:7102/other")), None, "not /ws");
        assert_eq!(assigned_node(base, &answer("ws://127.0.0.1/ws")), None, "no port");
        assert_eq!(assigned_node(base, &serde_json::json!({"node": 2})), None, "no ws URL");
    }

    #[test]
    fn only_transient_codes_are_retried() {
        assert!(retryable("unavailable"));
        assert!(retryable("rate_limited"));
        for code in ["bad_request", "forbidden", "not_found", "too_large", "internal", "unauthorized", "conflict"] {
            assert!(!retryable(code), "{code}");
        }
    }
}
