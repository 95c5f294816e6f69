//! Fan-out on this node: which local connection (WebSocket, SSE, long poll)
//! listens to which room, local presence, and closing connections by token.
//!
//! An event is encoded once and its bytes shared by every recipient. Each
//! connection's queue is bounded in items and in bytes ([`QueueBudget`]); a
//! connection whose queue is full is closed as too slow (1013) rather than
//! slowing the room. The hub knows nothing of
//! the transports: it only pushes [`Outbound`] items and fires kill switches.

use std::collections::HashMap;
use std::collections::HashSet;
use std::sync::Arc;
use std::sync::OnceLock;
use std::sync::atomic::AtomicU16;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;

use bytes::Bytes;
use palaver_protocol::ServerEvent;
use palaver_protocol::close;
use parking_lot::Mutex;
use parking_lot::RwLock;
use tokio::sync::Notify;
use tokio::sync::mpsc;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::meta::TokenHash;
use crate::protocol::to_json;

/// A connection's id on this node.
pub type ConnId = u64;

/// An event for one room's listeners, encoded once.
#[derive(Debug)]
pub struct Event {
    /// Room log key.
    pub room_key: u64,
    /// Room id.
    pub room: Arc<str>,
    /// The message's seq for `message` events, 0 for every other kind.
    pub seq: u64,
    /// The JSON text, shared by all recipients.
    pub json: Utf8Bytes,
    /// The JSON compressed once for every WebSocket recipient that agreed to
    /// permessage-deflate, by the first of them (inside, `None`: compressing
    /// did not make it shorter).
    pub deflated: OnceLock<Option<Bytes>>,
    /// A user who must not receive it (the one typing).
    pub except: Option<Arc<str>>,
    /// Whether a replica passes it on to the nodes that watch the room on
    /// it ([`crate::cluster::relay`]).
    pub relay: Relay,
}

/// Which nodes besides this one get an event ([`Event::relay`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Relay {
    /// None: every node makes it for itself (membership events, from the
    /// metadata log every node applies), or it came from a relay.
    Local,
    /// The nodes that watch its room here: what the room's log committed,
    /// and typing.
    Watchers,
    /// Those but the node it came from, which has it already (typing).
    WatchersBut(u64),
}

impl Event {
    /// A room event other than a message (presence, typing, member,
    /// deleted), encoded here once for every listener but `except`.
    pub fn notice(room_key: u64, event: &ServerEvent<&str>, except: Option<Arc<str>>) -> Event {
        Event {
            room_key,
            room: Arc::from(event.room()),
            seq: 0,
            json: to_json(event).into(),
            deflated: OnceLock::new(),
            except,
            relay: Relay::Local,
        }
    }
}

/// What a connection's writer receives. Every variant is one pointer wide
/// (bigger ones are boxed): each socket's queue allocates its slots in
/// blocks, and idle sockets are most sockets.
#[derive(Debug)]
pub enum Outbound {
    /// A room event.
    Event(Arc<Event>),
    /// A reply to one of the client's commands (WebSocket only).
    Reply(Box<Utf8Bytes>),
    /// A keep-alive ping (WebSocket only), so idle sockets stay open through
    /// the balancer and other middle boxes.
    Ping,
    /// Start delivering a room: answer `ok` with `last_seq`, replay after `since`.
    Start(Box<StartSub>),
    /// Stop delivering a room.
    End(Box<EndSub>),
}

impl Outbound {
    /// The bytes this item stands for in its connection's budget.
    pub fn size(&self) -> usize {
        match self {
            Outbound::Event(e) => e.json.len(),
            Outbound::Reply(r) => r.len(),
            Outbound::Ping => 0,
            Outbound::Start(s) => s.room.len(),
            Outbound::End(e) => e.removed.as_ref().map_or(0, |r| r.len()),
        }
    }

    /// A reply frame.
    pub fn reply(text: impl Into<Utf8Bytes>) -> Self {
        Outbound::Reply(Box::new(text.into()))
    }

    /// The end of a room's delivery, with the event to send, if any.
    pub fn end(room_key: u64, removed: Option<Utf8Bytes>) -> Self {
        Outbound::End(Box::new(EndSub { room_key, removed }))
    }
}

/// See [`Outbound::Start`].
#[derive(Debug)]
pub struct StartSub {
    /// Room log key.
    pub room_key: u64,
    /// Room id.
    pub room: Arc<str>,
    /// Replay messages after this seq.
    pub since: Option<u64>,
    /// Answer `ok` with `last_seq` (WebSocket subscribe).
    pub ack: bool,
    /// The subscribe command's id, for the reply.
    pub reply_id: Option<u64>,
}

/// See [`Outbound::End`].
#[derive(Debug)]
pub struct EndSub {
    /// Room log key.
    pub room_key: u64,
    /// The `removed` event, when the server ended it.
    pub removed: Option<Utf8Bytes>,
}

/// The bytes queued for one connection and not yet taken by its writer,
/// against a limit: the hub refuses events past it (and closes the
/// connection as too slow), the connection's own replies wait for room.
#[derive(Debug)]
pub struct QueueBudget {
    queued: AtomicUsize,
    limit: usize,
    drained: Notify,
}

impl QueueBudget {
    /// An empty queue allowed `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self { queued: AtomicUsize::new(0), limit, drained: Notify::new() }
    }

    /// Counts `n` more bytes if they fit; false (nothing counted) if not.
    pub fn try_charge(&self, n: usize) -> bool {
        self.queued
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| {
                (q == 0 || q.saturating_add(n) <= self.limit).then_some(q.saturating_add(n))
            })
            .is_ok()
    }

    /// Counts `n` more bytes whatever the limit (small control items).
    pub fn charge(&self, n: usize) {
        self.queued.fetch_add(n, Ordering::AcqRel);
    }

    /// Waits until `n` more bytes fit (an empty queue always takes one
    /// item), then counts them; false when they do not fit within `timeout`.
    pub async fn reserve(&self, n: usize, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let drained = self.drained.notified();
            tokio::pin!(drained);
            drained.as_mut().enable();
            if self.try_charge(n) {
                return true;
            }
            if tokio::time::timeout_at(deadline, drained).await.is_err() {
                return false;
            }
        }
    }

    /// The writer took `n` bytes off the queue.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let _ = self.queued.fetch_update(Ordering::AcqRel, Ordering::Acquire, |q| Some(q.saturating_sub(n)));
        self.drained.notify_waiters();
    }

    /// Bytes queued now.
    pub fn queued(&self) -> usize {
        self.queued.load(Ordering::Acquire)
    }
}

/// Lets anyone close a connection with a WebSocket close code.
#[derive(Debug, Default)]
pub struct KillSwitch {
    code: AtomicU16,
    notify: Notify,
}

impl KillSwitch {
    /// Asks the connection to close with `code`; the first code wins.
    pub fn fire(&self, code: u16) {
        if self.code.compare_exchange(0, code, Ordering::AcqRel, Ordering::Acquire).is_ok() {
            self.notify.notify_waiters();
        }
    }

    /// The close code, once fired.
    pub fn code(&self) -> Option<u16> {
        match self.code.load(Ordering::Acquire) {
            0 => None,
            c => Some(c),
        }
    }

    /// Waits until fired; returns the code. Any number of tasks may wait.
    pub async fn fired(&self) -> u16 {
        loop {
            // Registered before the check, so a fire between the two still wakes us.
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if let Some(c) = self.code() {
                return c;
            }
            notified.await;
        }
    }
}

/// What the hub keeps of one connection.
#[derive(Clone)]
pub struct Listener {
    /// The connection's queue.
    pub tx: mpsc::Sender<Outbound>,
    /// Its kill switch.
    pub kill: Arc<KillSwitch>,
    /// The bytes its queue holds, against its limit.
    pub budget: Arc<QueueBudget>,
    /// Who is connected.
    pub user: Arc<str>,
    /// With which token.
    pub token_hash: TokenHash,
    /// Whether it counts for presence (long polls do not).
    pub presence: bool,
    /// A replica's relay to another node, not a client: not counted as a
    /// connection.
    pub peer: bool,
}

impl Listener {
    /// Queues an item without waiting; a queue full in items or bytes closes
    /// the connection as too slow (it resumes with `since`).
    pub fn offer(&self, item: Outbound) {
        let size = item.size();
        if !self.budget.try_charge(size) {
            self.kill.fire(close::TOO_SLOW);
            return;
        }
        if self.tx.try_send(item).is_err() {
            self.budget.release(size);
            self.kill.fire(close::TOO_SLOW);
        }
    }
}

struct Conn {
    listener: Listener,
    rooms: HashSet<u64>,
}

/// Presence transitions caused by a connection opening or closing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PresenceChange {
    /// The user's first connection on this node opened.
    Online(Arc<str>),
    /// The user's last connection on this node closed.
    Offline(Arc<str>),
}

/// This node's listeners.
#[derive(Default)]
pub struct Hub {
    next_id: AtomicU64,
    conns: RwLock<HashMap<ConnId, Conn>>,
    /// How many of `conns` are peers' relays.
    peers: AtomicUsize,
    rooms: RwLock<HashMap<u64, Vec<(ConnId, Listener)>>>,
    online: Mutex<HashMap<Arc<str>, usize>>,
}

impl Hub {
    /// An empty hub.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a connection; says whether the user just came online here.
    pub fn connect(&self, listener: Listener) -> (ConnId, Option<PresenceChange>) {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let mut change = None;
        if listener.presence {
            let mut online = self.online.lock();
            let count = online.entry(listener.user.clone()).or_insert(0);
            *count += 1;
            if *count == 1 {
                change = Some(PresenceChange::Online(listener.user.clone()));
            }
        }
        if listener.peer {
            self.peers.fetch_add(1, Ordering::Relaxed);
        }
        self.conns.write().insert(id, Conn { listener, rooms: HashSet::new() });
        (id, change)
    }

    /// Removes a connection and its subscriptions; says whether the user went offline here.
    pub fn disconnect(&self, id: ConnId) -> Option<PresenceChange> {
        let conn = self.conns.write().remove(&id)?;
        if conn.listener.peer {
            self.peers.fetch_sub(1, Ordering::Relaxed);
        }
        {
            let mut rooms = self.rooms.write();
            for room in &conn.rooms {
                remove_listener(&mut rooms, *room, id);
            }
        }
        if !conn.listener.presence {
            return None;
        }
        let mut online = self.online.lock();
        let count = online.get_mut(&conn.listener.user)?;
        *count -= 1;
        if *count == 0 {
            online.remove(&conn.listener.user);
            return Some(PresenceChange::Offline(conn.listener.user));
        }
        None
    }

    /// Whether `user` has a presence-bearing connection on this node.
    pub fn is_online(&self, user: &str) -> bool {
        self.online.lock().contains_key(user)
    }

    /// Users with a presence-bearing connection here, sorted.
    pub fn online_users(&self) -> Vec<String> {
        let mut users: Vec<String> = self.online.lock().keys().map(|u| u.to_string()).collect();
        users.sort_unstable();
        users
    }

    /// The number of open connections.
    pub fn connection_count(&self) -> usize {
        self.conns.read().len().saturating_sub(self.peers.load(Ordering::Relaxed))
    }

    /// The number of rooms a connection listens to.
    pub fn subscription_count(&self, id: ConnId) -> usize {
        self.conns.read().get(&id).map_or(0, |c| c.rooms.len())
    }

    /// Whether a connection listens to a room.
    pub fn is_subscribed(&self, id: ConnId, room_key: u64) -> bool {
        self.conns.read().get(&id).is_some_and(|c| c.rooms.contains(&room_key))
    }

    /// Starts sending a room's events to a connection (idempotent).
    pub fn subscribe(&self, id: ConnId, room_key: u64) -> bool {
        let mut conns = self.conns.write();
        let Some(conn) = conns.get_mut(&id) else { return false };
        if conn.rooms.insert(room_key) {
            self.rooms.write().entry(room_key).or_default().push((id, conn.listener.clone()));
        }
        true
    }

    /// Stops sending a room's events to a connection.
    pub fn unsubscribe(&self, id: ConnId, room_key: u64) -> bool {
        let mut conns = self.conns.write();
        let removed = conns.get_mut(&id).is_some_and(|c| c.rooms.remove(&room_key));
        if removed {
            remove_listener(&mut self.rooms.write(), room_key, id);
        }
        removed
    }

    /// Whether any connection here listens to the room (an event for it
    /// need not be built otherwise).
    pub fn has_listeners(&self, room_key: u64) -> bool {
        self.rooms.read().get(&room_key).is_some_and(|l| !l.is_empty())
    }

    /// Queues an event for every listener of its room. A listener whose
    /// queue is full is closed as too slow; the room never waits for it.
    pub fn publish(&self, event: Event) {
        let event = Arc::new(event);
        let rooms = self.rooms.read();
        let Some(listeners) = rooms.get(&event.room_key) else { return };
        for (_, l) in listeners {
            if event.except.as_deref().is_some_and(|u| u == &*l.user) {
                continue;
            }
            l.offer(Outbound::Event(event.clone()));
        }
        metrics::counter!("palaver_deliveries_total").increment(listeners.len() as u64);
    }

    /// Queues an event for the listeners of its room whose user `may_see`
    /// accepts (members only, for read markers).
    pub fn publish_to(&self, event: Event, may_see: impl Fn(&str) -> bool) {
        let event = Arc::new(event);
        let rooms = self.rooms.read();
        let Some(listeners) = rooms.get(&event.room_key) else { return };
        let mut delivered = 0;
        for (_, l) in listeners.iter().filter(|(_, l)| may_see(&l.user)) {
            l.offer(Outbound::Event(event.clone()));
            delivered += 1;
        }
        metrics::counter!("palaver_deliveries_total").increment(delivered);
    }

    /// Ends `user`'s subscriptions to a room with a `removed` event.
    pub fn remove_user_from_room(&self, user: &str, room_key: u64, removed: Utf8Bytes) {
        let ids: Vec<(ConnId, Listener)> = {
            let rooms = self.rooms.read();
            let Some(listeners) = rooms.get(&room_key) else { return };
            listeners.iter().filter(|(_, l)| &*l.user == user).cloned().collect()
        };
        for (id, l) in ids {
            self.unsubscribe(id, room_key);
            l.offer(Outbound::end(room_key, Some(removed.clone())));
        }
    }

    /// Ends every subscription to a room (deleted) with `event`.
    pub fn close_room(&self, room_key: u64, event: Utf8Bytes) {
        let listeners = self.rooms.write().remove(&room_key).unwrap_or_default();
        let mut conns = self.conns.write();
        for (id, l) in listeners {
            if let Some(c) = conns.get_mut(&id) {
                c.rooms.remove(&room_key);
            }
            l.offer(Outbound::end(room_key, Some(event.clone())));
        }
    }

    /// Closes every connection opened with a token.
    pub fn close_token(&self, token_hash: &TokenHash, code: u16) -> usize {
        let conns = self.conns.read();
        let mut n = 0;
        for c in conns.values().filter(|c| &c.listener.token_hash == token_hash) {
            c.listener.kill.fire(code);
            n += 1;
        }
        n
    }

    /// Closes every connection (shutdown).
    pub fn close_all(&self, code: u16) {
        for c in self.conns.read().values() {
            c.listener.kill.fire(code);
        }
    }
}

fn remove_listener(rooms: &mut HashMap<u64, Vec<(ConnId, Listener)>>, room_key: u64, id: ConnId) {
    if let Some(list) = rooms.get_mut(&room_key) {
        list.retain(|(c, _)| *c != id);
        if list.is_empty() {
            rooms.remove(&room_key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(user: &str, cap: usize, presence: bool) -> (Listener, mpsc::Receiver<Outbound>) {
        let (tx, rx) = mpsc::channel(cap);
        let budget = Arc::new(QueueBudget::new(1 << 20));
        (
            Listener {
                tx,
                kill: Arc::default(),
                budget,
                user: user.into(),
                token_hash: [user.len() as u8; 32],
                presence,
                peer: false,
            },
            rx,
        )
    }

    fn event(room_key: u64, seq: u64) -> Event {
        Event {
            room_key,
            room: "r".into(),
            seq,
            json: Utf8Bytes::from_static("{}"),
            deflated: OnceLock::new(),
            except: None,
            relay: Relay::Local,
        }
    }

    #[test]
    fn events_reach_subscribers_of_their_room_only() {
        let hub = Hub::new();
        let (a, mut rx_a) = listener("ann", 8, true);
        let (b, mut rx_b) = listener("bob", 8, true);
        let (ida, _) = hub.connect(a);
        let (idb, _) = hub.connect(b);
        hub.subscribe(ida, 1);
        hub.subscribe(idb, 2);
        hub.publish(event(1, 1));
        assert!(matches!(rx_a.try_recv(), Ok(Outbound::Event(e)) if e.seq == 1));
        assert!(rx_b.try_recv().is_err());
        hub.unsubscribe(ida, 1);
        hub.publish(event(1, 2));
        assert!(rx_a.try_recv().is_err());
    }

    #[test]
    fn a_full_queue_closes_only_that_connection() {
        let hub = Hub::new();
        let (slow, _rx_slow) = listener("slow", 1, true);
        let slow_kill = slow.kill.clone();
        let (fast, mut rx_fast) = listener("fast", 8, true);
        let (ids, _) = hub.connect(slow);
        let (idf, _) = hub.connect(fast);
        hub.subscribe(ids, 1);
        hub.subscribe(idf, 1);
        hub.publish(event(1, 1));
        hub.publish(event(1, 2));
        assert_eq!(slow_kill.code(), Some(close::TOO_SLOW));
        assert!(rx_fast.try_recv().is_ok() && rx_fast.try_recv().is_ok());
    }

    #[test]
    fn a_queue_full_in_bytes_closes_only_that_connection() {
        let hub = Hub::new();
        let (mut small, _rx_small) = listener("small", 64, true);
        small.budget = Arc::new(QueueBudget::new(10));
        let small_kill = small.kill.clone();
        let (big, mut rx_big) = listener("big", 64, true);
        let (ids, _) = hub.connect(small);
        let (idb, _) = hub.connect(big);
        hub.subscribe(ids, 1);
        hub.subscribe(idb, 1);
        let json = Utf8Bytes::from("x".repeat(8));
        hub.publish(Event { json: json.clone(), ..event(1, 1) });
        assert_eq!(small_kill.code(), None, "the first 8 bytes fit in 10");
        hub.publish(Event { json, ..event(1, 2) });
        assert_eq!(small_kill.code(), Some(close::TOO_SLOW), "16 bytes do not");
        assert!(rx_big.try_recv().is_ok() && rx_big.try_recv().is_ok());
    }

    #[tokio::test]
    async fn a_reply_waits_for_the_writer_to_drain_the_budget() {
        let budget = Arc::new(QueueBudget::new(100));
        assert!(budget.try_charge(60));
        assert!(!budget.try_charge(60), "60 + 60 is past 100");
        let waiter = {
            let b = budget.clone();
            tokio::spawn(async move { b.reserve(60, std::time::Duration::from_secs(30)).await })
        };
        tokio::task::yield_now().await;
        budget.release(60);
        let got =
            tokio::time::timeout(std::time::Duration::from_secs(30), waiter).await.expect("in time").expect("task");
        assert!(got);
        assert_eq!(budget.queued(), 60);
        assert!(!budget.reserve(60, std::time::Duration::from_millis(10)).await, "no drain: times out");
        budget.release(60);
        assert!(budget.reserve(500, std::time::Duration::from_millis(10)).await, "an empty queue takes one big item");
    }

    #[test]
    fn presence_counts_connections_per_user() {
        let hub = Hub::new();
        let (a1, _r1) = listener("ann", 1, true);
        let (a2, _r2) = listener("ann", 1, true);
        let (poll, _r3) = listener("ann", 1, false);
        let (id1, c1) = hub.connect(a1);
        assert_eq!(c1, Some(PresenceChange::Online("ann".into())));
        let (id2, c2) = hub.connect(a2);
        assert_eq!(c2, None);
        let (id3, _) = hub.connect(poll);
        assert_eq!(hub.disconnect(id3), None);
        assert_eq!(hub.disconnect(id1), None);
        assert!(hub.is_online("ann"));
        assert_eq!(hub.disconnect(id2), Some(PresenceChange::Offline("ann".into())));
        assert!(!hub.is_online("ann"));
    }

    #[test]
    fn typing_skips_the_typist_and_tokens_close_their_connections() {
        let hub = Hub::new();
        let (a, mut rx_a) = listener("ann", 4, true);
        let kill = a.kill.clone();
        let token = a.token_hash;
        let (id, _) = hub.connect(a);
        hub.subscribe(id, 1);
        hub.publish(Event { except: Some("ann".into()), ..event(1, 0) });
        assert!(rx_a.try_recv().is_err());
        assert_eq!(hub.close_token(&token, close::TOKEN_REVOKED), 1);
        assert_eq!(kill.code(), Some(close::TOKEN_REVOKED));
    }

    #[test]
    fn queue_items_stay_two_words_wide() {
        assert!(std::mem::size_of::<Outbound>() <= 16, "{}", std::mem::size_of::<Outbound>());
    }

    #[tokio::test]
    async fn every_waiter_wakes_when_a_kill_switch_fires() {
        let kill = Arc::new(KillSwitch::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let k = kill.clone();
                tokio::spawn(async move { k.fired().await })
            })
            .collect();
        tokio::task::yield_now().await;
        kill.fire(close::TOO_SLOW);
        kill.fire(close::POLICY);
        for w in waiters {
            let code =
                tokio::time::timeout(std::time::Duration::from_secs(10), w).await.expect("woke").expect("joined");
            assert_eq!(code, close::TOO_SLOW);
        }
    }

    #[test]
    fn removing_a_user_ends_their_subscription_with_an_event() {
        let hub = Hub::new();
        let (a, mut rx_a) = listener("ann", 4, true);
        let (id, _) = hub.connect(a);
        hub.subscribe(id, 1);
        hub.remove_user_from_room("ann", 1, Utf8Bytes::from_static("{\"type\":\"removed\"}"));
        assert!(matches!(rx_a.try_recv(), Ok(Outbound::End(e)) if e.room_key == 1 && e.removed.is_some()));
        assert!(!hub.is_subscribed(id, 1));
    }
}
