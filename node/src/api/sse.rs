//! `GET /sse`: Server-Sent Events (docs/protocol.md §6), and what SSE and long
//! polling share: authentication by header or ticket, room cursors, and the
//! guard that unregisters a connection when its response is dropped.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use axum::response::sse::Event as SseEvent;
use axum::response::sse::KeepAlive;
use axum::response::sse::Sse;
use palaver_protocol::StreamClosed;
use palaver_protocol::close;
use tokio::sync::mpsc;

use super::delivery::Delivery;
use super::delivery::OutFrame;
use super::extract::Query;
use super::extract::bearer;
use crate::clock::now_ms;
use crate::hub::ConnId;
use crate::hub::KillSwitch;
use crate::hub::Listener;
use crate::hub::Outbound;
use crate::hub::QueueBudget;
use crate::hub::StartSub;
use crate::protocol::to_json;
use crate::rooms::RoomRef;
use crate::service::ApiError;
use crate::service::Node;
use crate::service::Session;

/// How often an open stream records that its token is in use.
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// The caller of an SSE or poll request: a Bearer header, or a ticket.
pub(super) async fn session(node: &Arc<Node>, headers: &HeaderMap, q: &Query) -> Result<Session, ApiError> {
    if let Some(token) = bearer(headers) {
        return node.authenticate(token).await;
    }
    match q.0.get("ticket") {
        Some(ticket) => node.redeem_ticket(ticket).await,
        None => Err(ApiError::unauthorized()),
    }
}

/// Parses `a:12,b:40` (room ids may hold `:`, so the seq follows the last one).
pub(super) fn parse_cursors(text: &str) -> Result<Vec<(String, u64)>, ApiError> {
    text.split(',')
        .filter(|part| !part.is_empty())
        .map(|part| {
            let (room, seq) = part
                .rsplit_once(':')
                .ok_or_else(|| ApiError::bad_request(format!("cursor {part:?} is not room:seq")))?;
            let seq = seq.parse().map_err(|_| ApiError::bad_request(format!("cursor {part:?} has no valid seq")))?;
            Ok((room.to_string(), seq))
        })
        .collect()
}

/// Checks that the caller may read each room, within the subscription limit.
pub(super) async fn readable(node: &Node, s: &Session, rooms: &[String]) -> Result<Vec<RoomRef>, ApiError> {
    if rooms.is_empty() {
        return Err(ApiError::bad_request("name at least one room"));
    }
    if rooms.len() > node.limits.subscriptions_per_socket {
        return Err(ApiError::bad_request(format!(
            "at most {} rooms per connection",
            node.limits.subscriptions_per_socket
        )));
    }
    let mut refs = Vec::with_capacity(rooms.len());
    for r in rooms {
        refs.push(node.readable_room(s, r).await?);
    }
    Ok(refs)
}

/// A registered connection; unregisters (and announces presence) on drop.
pub(super) struct Registration {
    pub node: Arc<Node>,
    pub conn: ConnId,
    pub kill: Arc<KillSwitch>,
    /// The bytes the connection's queue holds; whoever takes an item off
    /// the queue releases its size.
    pub budget: Arc<QueueBudget>,
}

impl Registration {
    /// Registers a connection and subscribes it to `rooms`, queueing a start
    /// for each (with its cursor, if any).
    pub fn open(
        node: &Arc<Node>,
        s: &Session,
        rooms: &[RoomRef],
        since: &HashMap<String, u64>,
        presence: bool,
    ) -> (Self, mpsc::Receiver<Outbound>) {
        // Room starts are queued before anything can arrive, so the queue
        // needs room for them on top of the usual limit.
        let (tx, rx) = mpsc::channel(node.limits.outbound_queue + rooms.len());
        let kill = Arc::new(KillSwitch::default());
        let budget = Arc::new(QueueBudget::new(node.limits.outbound_bytes));
        let listener = Listener {
            tx: tx.clone(),
            kill: kill.clone(),
            budget: budget.clone(),
            user: s.username.clone(),
            token_hash: s.token_hash,
            presence,
            peer: false,
        };
        let (conn, change) = node.hub.connect(listener);
        if let Some(change) = change {
            node.announce_presence(change);
        }
        if node.meta().session(&s.token_hash, now_ms()).is_none() {
            kill.fire(close::TOKEN_REVOKED);
        }
        for r in rooms {
            node.hub.subscribe(conn, r.key);
            let start = Outbound::Start(Box::new(StartSub {
                room_key: r.key,
                room: r.id.clone(),
                since: since.get(&*r.id).copied(),
                ack: false,
                reply_id: None,
            }));
            budget.charge(start.size());
            if tx.try_send(start).is_err() {
                kill.fire(close::TOO_SLOW);
            }
        }
        (Self { node: node.clone(), conn, kill, budget }, rx)
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        if let Some(change) = self.node.hub.disconnect(self.conn) {
            self.node.announce_presence(change);
        }
    }
}

/// Opens the event stream.
pub async fn stream(State(node): State<Arc<Node>>, headers: HeaderMap, q: Query) -> Result<Response, ApiError> {
    let s = session(&node, &headers, &q).await?;
    let mut rooms: Vec<String> = Vec::new();
    for r in q.0.get("rooms").map(String::as_str).unwrap_or("").split(',').filter(|r| !r.is_empty()) {
        if !rooms.iter().any(|x| x == r) {
            rooms.push(r.to_string());
        }
    }
    let refs = readable(&node, &s, &rooms).await?;
    let mut since: HashMap<String, u64> = HashMap::new();
    if let Some(text) = q.0.get("since") {
        since.extend(parse_cursors(text)?);
    }
    // Last-Event-ID is what a browser's EventSource sends on its own reconnect.
    if let Some(id) = headers.get("last-event-id").and_then(|v| v.to_str().ok()) {
        since.extend(parse_cursors(id)?);
    }
    let (registration, rx) = Registration::open(&node, &s, &refs, &since, true);
    // An open stream uses its token: record it now and then, until the
    // stream is gone (its kill switch is then dropped).
    let alive = Arc::downgrade(&registration.kill);
    let keeper = node.clone();
    tokio::spawn(async move {
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + KEEP_ALIVE, KEEP_ALIVE);
        loop {
            tick.tick().await;
            let Some(kill) = alive.upgrade() else { return };
            if kill.code().is_some() {
                return;
            }
            keeper.keep_alive(&s);
        }
    });
    let state = SseState {
        delivery: Delivery::new(node.clone()),
        registration,
        rx,
        frames: VecDeque::new(),
        scratch: Vec::new(),
        done: false,
    };
    let events = futures_util::stream::unfold(state, next_event);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))).into_response())
}

struct SseState {
    delivery: Delivery,
    registration: Registration,
    rx: mpsc::Receiver<Outbound>,
    frames: VecDeque<OutFrame>,
    scratch: Vec<OutFrame>,
    done: bool,
}

fn sse_event(f: OutFrame) -> SseEvent {
    if f.ping {
        return SseEvent::default().comment("ping");
    }
    let event = SseEvent::default().data(f.json.as_str());
    match f.message {
        Some((room, seq)) => event.id(format!("{room}:{seq}")),
        None => event,
    }
}

async fn next_event(mut st: SseState) -> Option<(Result<SseEvent, Infallible>, SseState)> {
    loop {
        if let Some(f) = st.frames.pop_front() {
            return Some((Ok(sse_event(f)), st));
        }
        if st.done {
            return None;
        }
        if st.delivery.replaying() {
            if st.delivery.replay_page(&mut st.scratch).await.is_err() {
                st.done = true;
            }
            st.frames.extend(st.scratch.drain(..));
            continue;
        }
        let kill = st.registration.kill.clone();
        let item = tokio::select! {
            biased;
            code = kill.fired() => {
                st.done = true;
                let data = to_json(&StreamClosed { code });
                return Some((Ok(SseEvent::default().event("close").data(data)), st));
            }
            item = st.rx.recv() => item,
        };
        let item = item?;
        let size = item.size();
        let handled = st.delivery.handle(item, &mut st.scratch).await;
        st.registration.budget.release(size);
        if handled.is_err() {
            st.done = true;
        }
        st.frames.extend(st.scratch.drain(..));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_take_the_seq_after_the_last_colon() {
        let c = parse_cursors("a:12,dm:ann:bob:40").expect("cursors");
        assert_eq!(c, vec![("a".to_string(), 12), ("dm:ann:bob".to_string(), 40)]);
        assert!(parse_cursors("a").is_err());
        assert!(parse_cursors("a:x").is_err());
        assert!(parse_cursors("").expect("empty").is_empty());
    }
}
