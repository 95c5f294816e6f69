//! Room events for nodes that hold no replica of a room's shard.
//!
//! A node applies only the shards placed on it, so the committed messages
//! of any other room reach it only while it asks for them: while one of its
//! connections listens to the room (and [`LINGER`] after the last one
//! left), it **watches** the room on one replica of its shard, the leader
//! when known. The replica registers the watch in its hub before it reads
//! the room's last seq, sends every message after the watcher's `since`
//! and then each committed message and deletion as it applies them, on one
//! QUIC stream per node pair. The watcher publishes them in its own hub as
//! if applied here. When the stream breaks or the replica stops holding
//! the shard, the watcher asks another replica from the last seq it has,
//! so nothing is lost and duplicates are dropped by seq; a connection's
//! delivery also fills any gap it sees from the log ([`crate::api`]).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;
use quinn::RecvStream;
use quinn::SendStream;
use tokio::sync::Notify;
use tokio::sync::mpsc;

use super::wire::RelayAsk;
use super::wire::RelayItem;
use crate::error::ApiError;
use crate::hub::Event;
use crate::hub::Hub;
use crate::hub::KillSwitch;
use crate::hub::Listener;
use crate::hub::Outbound;
use crate::hub::QueueBudget;
use crate::hub::Relay;
use crate::peer::Channel;
use crate::peer::PeerEndpoint;
use crate::peer::codec::decode;
use crate::peer::codec::encode;
use crate::peer::frame;
use crate::protocol::message_event;
use crate::rooms::RoomLog;
use crate::rooms::RoomRef;
use crate::shards::placement::ShardId;

/// The first frame of a relay stream on the `Rooms` channel.
pub const STREAM_RELAY: u8 = 3;
/// How long a room stays watched after its last listener here left, so a
/// long poll that comes back does not start the watch again.
const LINGER: Duration = Duration::from_secs(30);
/// How long a new listener waits for a replica to confirm the watch.
pub const CONFIRM_WAIT: Duration = Duration::from_secs(10);
/// A watch not confirmed this long is asked again (elsewhere if it was
/// refused).
const ASK_AGAIN: Duration = Duration::from_secs(5);
/// How often the watches are checked against the layout.
const TICK: Duration = Duration::from_millis(250);
/// Items a replica's relay queue holds before the stream is closed as too
/// slow (the watcher then asks again from its last seq).
const SOURCE_QUEUE: usize = 16_384;
/// Bytes a replica's relay queue holds, likewise.
const SOURCE_BUDGET: usize = 64 * 1024 * 1024;
/// Items written in one frame at most.
const FRAME_ITEMS: usize = 512;
/// Messages read per page when a watch starts behind.
const REPLAY_PAGE: usize = 256;
/// Largest frame of asks a replica reads.
const MAX_ASK_FRAME: usize = 1024 * 1024;

/// Where a watched room's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    /// Nowhere yet.
    None,
    /// This node's own replica applies them.
    Here,
    /// Asked of this replica, not confirmed yet.
    Asked(u64, Instant),
    /// This replica relays them.
    Relayed(u64),
}

impl Source {
    fn node(self) -> Option<u64> {
        match self {
            Source::Asked(n, _) | Source::Relayed(n) => Some(n),
            Source::None | Source::Here => None,
        }
    }
}

struct Watched {
    room: Arc<str>,
    shard: ShardId,
    /// Listeners here (one per subscription).
    interest: usize,
    /// Since when nobody here listens.
    idle_since: Option<Instant>,
    /// The highest seq published here from a relay (or the room's last seq
    /// when the watch began): a new source starts after it.
    last: Option<u64>,
    source: Source,
    /// Replicas that refused or failed since the last confirmation.
    failures: usize,
    /// This node held a replica while the room was watched: its own copy
    /// is complete up to where it stopped applying.
    was_here: bool,
}

#[derive(Default)]
struct State {
    rooms: HashMap<u64, Watched>,
    links: HashMap<u64, mpsc::UnboundedSender<RelayAsk>>,
}

/// The rooms this node watches on other nodes, and its relay streams.
pub struct Watcher {
    hub: Arc<Hub>,
    state: Mutex<State>,
    confirmed: Notify,
}

/// Keeps a room watched while held (one per subscription).
pub struct WatchGuard {
    watcher: Arc<Watcher>,
    room_key: u64,
}

impl Drop for WatchGuard {
    fn drop(&mut self) {
        let mut st = self.watcher.state.lock();
        if let Some(r) = st.rooms.get_mut(&self.room_key) {
            r.interest = r.interest.saturating_sub(1);
            if r.interest == 0 {
                r.idle_since = Some(Instant::now());
            }
        }
    }
}

impl Watcher {
    /// No room watched yet; relayed events go to `hub`.
    pub fn new(hub: Arc<Hub>) -> Arc<Self> {
        Arc::new(Self { hub, state: Mutex::new(State::default()), confirmed: Notify::new() })
    }

    /// Registers one more listener of `room` here; `here` when this node
    /// holds a replica of its shard now.
    pub fn listen(self: &Arc<Self>, room: &RoomRef, shard: ShardId, here: bool) -> WatchGuard {
        let mut st = self.state.lock();
        let r = st.rooms.entry(room.key).or_insert_with(|| Watched {
            room: room.id.clone(),
            shard,
            interest: 0,
            idle_since: None,
            last: None,
            source: Source::None,
            failures: 0,
            was_here: false,
        });
        r.interest += 1;
        r.idle_since = None;
        if here && r.source == Source::None {
            r.source = Source::Here;
            r.was_here = true;
        }
        WatchGuard { watcher: self.clone(), room_key: room.key }
    }

    /// The rooms watched on other nodes now.
    pub fn relayed_rooms(&self) -> usize {
        self.state.lock().rooms.values().filter(|r| matches!(r.source, Source::Relayed(_))).count()
    }

    /// Waits until the room's events flow: `Some(last)` once a replica
    /// relays them (every message after `last` will be published here),
    /// `None` once this node's own replica applies them.
    pub async fn flowing(&self, room_key: u64, timeout: Duration) -> Result<Option<u64>, ApiError> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.confirmed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            match self.state.lock().rooms.get(&room_key).map(|r| (r.source, r.last)) {
                Some((Source::Here, _)) => return Ok(None),
                Some((Source::Relayed(_), last)) => return Ok(Some(last.unwrap_or(0))),
                _ => {}
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return Err(ApiError::unavailable("no replica of the room's shard relays its events yet; retry"));
            }
        }
    }

    /// Takes what a replica relayed.
    fn receive(&self, source: u64, items: Vec<RelayItem>) {
        let mut st = self.state.lock();
        for item in items {
            match item {
                RelayItem::Watching { room_key, last } => {
                    let Some(r) = st.rooms.get_mut(&room_key) else { continue };
                    if r.source.node() != Some(source) {
                        continue;
                    }
                    tracing::debug!(room = %r.room, source, last, had = ?r.last, "relay watch confirmed");
                    r.source = Source::Relayed(source);
                    r.last = Some(r.last.map_or(last, |l| l.max(last)));
                    r.failures = 0;
                    self.confirmed.notify_waiters();
                }
                RelayItem::Event { room_key, seq, json, except } => {
                    let Some(r) = st.rooms.get_mut(&room_key) else { continue };
                    if r.source.node() != Some(source) {
                        continue;
                    }
                    if seq > 0 {
                        if r.last.is_some_and(|l| seq <= l) {
                            continue;
                        }
                        r.last = Some(seq);
                    }
                    metrics::counter!("palaver_relay_events_received_total").increment(1);
                    self.hub.publish(Event {
                        room_key,
                        room: r.room.clone(),
                        seq,
                        json: json.into(),
                        deflated: std::sync::OnceLock::new(),
                        except: except.map(Arc::from),
                        relay: Relay::Local,
                    });
                }
                RelayItem::Refused { room_key } => {
                    let Some(r) = st.rooms.get_mut(&room_key) else { continue };
                    if r.source.node() == Some(source) {
                        r.source = Source::None;
                        r.failures += 1;
                    }
                }
            }
        }
    }

    /// The stream to `source` ended: its rooms look for another replica.
    fn link_down(&self, source: u64) {
        let mut st = self.state.lock();
        if st.links.get(&source).is_some_and(|l| l.is_closed()) {
            st.links.remove(&source);
        }
        for r in st.rooms.values_mut() {
            if r.source.node() == Some(source) {
                r.source = Source::None;
                r.failures += 1;
            }
        }
    }
}

/// What the relay needs of its node: the hub, which shards it applies,
/// where the others are, and its copies of the rooms it holds.
pub trait RelayNode: Send + Sync + 'static {
    /// The hub this node's listeners, and relays to peers, subscribe in.
    fn hub(&self) -> &Hub;
    /// The peers (`None` on a node alone).
    fn cluster(&self) -> Option<&super::Cluster>;
    /// Whether this node applies `shard` now.
    fn holds(&self, shard: ShardId) -> bool;
    /// The shard of the room named `room`, once the layout is known.
    fn shard_of_room(&self, room: &str) -> Option<ShardId>;
    /// The replicas the layout records for `shard`.
    fn replicas(&self, shard: ShardId) -> Vec<u64>;
    /// The leader of `shard` as far as this node knows.
    fn leader_of(&self, shard: ShardId) -> Option<u64>;
    /// This node's copies of the rooms of the shards it holds (or held).
    fn log(&self) -> &RoomLog;
}

/// Checks every watch against where the shards are now, twice a second
/// and more, until the node is gone.
pub async fn run(node: Weak<dyn RelayNode>) {
    let mut tick = tokio::time::interval(TICK);
    loop {
        tick.tick().await;
        let Some(node) = node.upgrade() else { return };
        if let Some(cluster) = node.cluster() {
            reconcile(&*node, &cluster.watcher);
        }
    }
}

/// One pass over the watches: a room whose shard this node holds needs no
/// relay; any other gets one from a replica; a room nobody has listened
/// to for [`LINGER`] is dropped.
pub fn reconcile(node: &dyn RelayNode, watcher: &Arc<Watcher>) {
    let Some(cluster) = node.cluster() else { return };
    // Once per shard this node does not hold, not per room: most watched
    // rooms of a node are on shards it holds, and need no replicas.
    let layout_replicas: HashMap<ShardId, Vec<u64>> = {
        let shards: std::collections::BTreeSet<ShardId> = {
            let st = watcher.state.lock();
            st.rooms.values().map(|r| r.shard).filter(|shard| !node.holds(*shard)).collect()
        };
        shards.into_iter().map(|shard| (shard, node.replicas(shard))).collect()
    };
    let now = Instant::now();
    let mut asks: Vec<(u64, RelayAsk)> = Vec::new();
    let mut st = watcher.state.lock();
    let live: Vec<u64> = st.links.iter().filter(|(_, l)| !l.is_closed()).map(|(id, _)| *id).collect();
    st.rooms.retain(|key, r| {
        let idle = r.interest == 0 && r.idle_since.is_some_and(|t| now.duration_since(t) > LINGER);
        let here = node.holds(r.shard);
        if idle || here {
            if let Some(source) = r.source.node() {
                asks.push((source, RelayAsk::Unwatch { room_key: *key }));
            }
            if idle {
                return false;
            }
            if r.source != Source::Here {
                r.source = Source::Here;
                watcher.confirmed.notify_waiters();
            }
            r.was_here = true;
            return true;
        }
        let replicas = layout_replicas.get(&r.shard).map_or(&[][..], Vec::as_slice);
        match r.source {
            Source::Relayed(s) if replicas.contains(&s) && live.contains(&s) => return true,
            Source::Asked(s, at)
                if replicas.contains(&s) && live.contains(&s) && now.duration_since(at) < ASK_AGAIN =>
            {
                return true;
            }
            Source::Relayed(s) | Source::Asked(s, _) => {
                asks.push((s, RelayAsk::Unwatch { room_key: *key }));
                r.failures += 1;
            }
            Source::Here => {
                // The shard moved away: this node's copy is complete up to
                // where it stopped applying.
                if r.was_here && r.last.is_none() {
                    r.last = node.log().last_seq(*key).ok();
                }
            }
            Source::None => {}
        }
        r.source = Source::None;
        if replicas.is_empty() {
            return true;
        }
        let hint = node.leader_of(r.shard).filter(|l| replicas.contains(l) && r.failures == 0);
        let source = hint.unwrap_or(replicas[r.failures % replicas.len()]);
        tracing::debug!(room = %r.room, source, since = ?r.last, "relay watch asked");
        asks.push((source, RelayAsk::Watch { room: r.room.to_string(), room_key: *key, since: r.last }));
        r.source = Source::Asked(source, now);
        true
    });
    for (source, ask) in asks {
        let link =
            st.links.entry(source).or_insert_with(|| open_link(watcher.clone(), cluster.endpoint.clone(), source));
        if link.is_closed() {
            *link = open_link(watcher.clone(), cluster.endpoint.clone(), source);
        }
        let _ = link.send(ask);
    }
}

/// Starts the relay stream to `source`; asks queue until it is open.
fn open_link(watcher: Arc<Watcher>, endpoint: PeerEndpoint, source: u64) -> mpsc::UnboundedSender<RelayAsk> {
    let (tx, mut asks) = mpsc::unbounded_channel::<RelayAsk>();
    tokio::spawn(async move {
        let opened = async {
            let (mut send, recv) = endpoint.open_stream(source, Channel::Rooms).await.ok()?;
            frame::write_frame(&mut send, &[STREAM_RELAY]).await.ok()?;
            Some((send, recv))
        };
        let Some((mut send, mut recv)) = opened.await else {
            asks.close();
            watcher.link_down(source);
            return;
        };
        let reading = watcher.clone();
        let mut reader = tokio::spawn(async move {
            while let Ok(Some(bytes)) = frame::read_frame(&mut recv, frame::DEFAULT_MAX_FRAME).await {
                match decode::<Vec<RelayItem>>(&bytes) {
                    Ok(items) => reading.receive(source, items),
                    Err(e) => {
                        tracing::warn!(source, error = %e, "dropping a relay stream with a bad frame");
                        return;
                    }
                }
            }
        });
        loop {
            tokio::select! {
                _ = &mut reader => break,
                ask = asks.recv() => {
                    let Some(first) = ask else { break };
                    let mut batch = vec![first];
                    while let Ok(more) = asks.try_recv() {
                        batch.push(more);
                    }
                    if frame::write_frame(&mut send, &encode(&batch)).await.is_err() {
                        break;
                    }
                }
            }
        }
        reader.abort();
        asks.close();
        tracing::debug!(source, "relay stream ended");
        watcher.link_down(source);
    });
    tx
}

/// Replica side: serves one relay stream from `peer`.
pub async fn serve(node: Arc<dyn RelayNode>, peer: u64, mut recv: RecvStream, mut send: SendStream) {
    let (tx, mut rx) = mpsc::channel(SOURCE_QUEUE);
    let kill = Arc::new(KillSwitch::default());
    let budget = Arc::new(QueueBudget::new(SOURCE_BUDGET));
    let listener = Listener {
        tx,
        kill: kill.clone(),
        budget: budget.clone(),
        user: Arc::from(""),
        token_hash: [0; 32],
        presence: false,
        peer: true,
    };
    let (conn, _) = node.hub().connect(listener);
    let (asks_tx, mut asks) = mpsc::channel::<RelayAsk>(256);
    let reader = tokio::spawn(async move {
        while let Ok(Some(bytes)) = frame::read_frame(&mut recv, MAX_ASK_FRAME).await {
            let Ok(list) = decode::<Vec<RelayAsk>>(&bytes) else {
                tracing::warn!(peer, "dropping a relay stream with a bad ask");
                return;
            };
            for ask in list {
                if asks_tx.send(ask).await.is_err() {
                    return;
                }
            }
        }
    });
    let mut cursors: HashMap<u64, u64> = HashMap::new();
    let mut out: Vec<RelayItem> = Vec::new();
    loop {
        tokio::select! {
            biased;
            _ = kill.fired() => {
                tracing::info!(peer, "a relay stream fell behind; closing it (the peer asks again)");
                break;
            }
            ask = asks.recv() => {
                let Some(ask) = ask else { break };
                let ok = match ask {
                    RelayAsk::Watch { room, room_key, since } => {
                        start_watch(&*node, conn, &room, room_key, since, &mut cursors, &mut out, &mut send).await
                    }
                    RelayAsk::Unwatch { room_key } => {
                        node.hub().unsubscribe(conn, room_key);
                        cursors.remove(&room_key);
                        true
                    }
                };
                if !ok {
                    break;
                }
            }
            item = rx.recv() => {
                let Some(item) = item else { break };
                relay_item(peer, item, &budget, &mut cursors, &mut out);
                while out.len() < FRAME_ITEMS {
                    match rx.try_recv() {
                        Ok(item) => relay_item(peer, item, &budget, &mut cursors, &mut out),
                        Err(_) => break,
                    }
                }
            }
        }
        if !out.is_empty() {
            if frame::write_frame(&mut send, &encode(&out)).await.is_err() {
                break;
            }
            out.clear();
        }
    }
    reader.abort();
    node.hub().disconnect(conn);
}

/// Registers a watch, sends what the watcher lacks, then confirms it;
/// false when the stream failed.
#[allow(clippy::too_many_arguments)]
async fn start_watch(
    node: &dyn RelayNode,
    conn: crate::hub::ConnId,
    room: &str,
    room_key: u64,
    since: Option<u64>,
    cursors: &mut HashMap<u64, u64>,
    out: &mut Vec<RelayItem>,
    send: &mut SendStream,
) -> bool {
    let here = node.shard_of_room(room).is_some_and(|shard| node.holds(shard));
    if !here {
        out.push(RelayItem::Refused { room_key });
        return true;
    }
    // Registered before the last seq is read: every message after it
    // arrives live.
    node.hub().subscribe(conn, room_key);
    let Ok(last) = node.log().last_seq(room_key) else {
        node.hub().unsubscribe(conn, room_key);
        out.push(RelayItem::Refused { room_key });
        return true;
    };
    let mut from = since.unwrap_or(last);
    while from < last {
        let Ok(page) = node.log().after(room_key, from, REPLAY_PAGE) else { break };
        let full = page.len() == REPLAY_PAGE;
        for m in page.iter().take_while(|m| m.seq <= last) {
            out.push(RelayItem::Event { room_key, seq: m.seq, json: message_event(room, m), except: None });
            from = m.seq;
        }
        if frame::write_frame(send, &encode(&*out)).await.is_err() {
            return false;
        }
        out.clear();
        if !full {
            break;
        }
    }
    let last = last.max(since.unwrap_or(0));
    cursors.insert(room_key, last);
    out.push(RelayItem::Watching { room_key, last });
    true
}

/// Adds a hub item to the relay to `peer` if it is an event of a room it
/// watches that it does not have already.
fn relay_item(
    peer: u64,
    item: Outbound,
    budget: &QueueBudget,
    cursors: &mut HashMap<u64, u64>,
    out: &mut Vec<RelayItem>,
) {
    budget.release(item.size());
    let Outbound::Event(e) = item else { return };
    match e.relay {
        Relay::Local => return,
        Relay::WatchersBut(from) if from == peer => return,
        Relay::Watchers | Relay::WatchersBut(_) => {}
    }
    let Some(cursor) = cursors.get_mut(&e.room_key) else { return };
    if e.seq > 0 {
        if e.seq <= *cursor {
            return;
        }
        *cursor = e.seq;
    }
    let except = e.except.as_deref().map(str::to_string);
    out.push(RelayItem::Event { room_key: e.room_key, seq: e.seq, json: e.json.to_string(), except });
}
