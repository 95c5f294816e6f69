//! Per-connection delivery: turns hub items into the frames one connection
//! sends, keeping each subscribed room gapless and free of duplicates.
//!
//! The hand-over from replay to live: a subscription is registered in the hub
//! before its `Start` item is queued, so every message committed after the
//! registration arrives live. `Start` then makes sure the room's events
//! reach this node (a node that holds no replica of the room's shard has
//! them relayed from one, [`crate::cluster::relay`]), reads the room's last
//! seq, replays the log up to it and sets the cursor there. A live message
//! at or below the cursor is dropped (already replayed); one past a gap first
//! pulls the gap from the log, where it is read up to that message at least
//! (catching up first if needed), so the pull always finds it.

use std::collections::HashMap;
use std::collections::VecDeque;
use std::sync::Arc;

use palaver_protocol::Subscribed;
use tokio_tungstenite::tungstenite::Utf8Bytes;

use crate::cluster::relay::WatchGuard;
use crate::hub::EndSub;
use crate::hub::Event;
use crate::hub::Outbound;
use crate::hub::StartSub;
use crate::protocol::message_event;
use crate::protocol::ok_reply;
use crate::rooms::RoomRef;
use crate::service::ApiError;
use crate::service::Node;

/// Messages read from the store per replay page: a page is held in memory
/// until the socket took it, so it stays small (64 messages of at most
/// 4,096 characters each).
const REPLAY_PAGE: usize = 64;

/// How a connection closes when its log reads fail: a read that may work
/// elsewhere or later (`unavailable`) asks the client to reconnect (1012).
pub fn close_code(e: &ApiError) -> u16 {
    if e.code == palaver_protocol::Code::Unavailable {
        palaver_protocol::close::RESTARTING
    } else {
        palaver_protocol::close::SERVER_ERROR
    }
}

/// One frame to send.
#[derive(Debug, Clone)]
pub struct OutFrame {
    /// The JSON text.
    pub json: Utf8Bytes,
    /// For messages: the room and seq (SSE's `id:`).
    pub message: Option<(Arc<str>, u64)>,
    /// A keep-alive ping instead of a text frame.
    pub ping: bool,
    /// The hub event it is, whose compressed bytes a WebSocket shares with
    /// the event's other recipients.
    pub event: Option<Arc<Event>>,
}

impl OutFrame {
    fn plain(json: Utf8Bytes) -> Self {
        Self { json, message: None, ping: false, event: None }
    }
}

/// A replay still to send: messages `from+1..=last` of a room.
struct Replay {
    room_key: u64,
    room: Arc<str>,
    from: u64,
    last: u64,
}

/// The cursors of one connection's subscriptions.
pub struct Delivery {
    node: Arc<Node>,
    /// Room key → last seq delivered (or to be delivered by a pending replay).
    cursors: HashMap<u64, u64>,
    /// Room key → what keeps the room's events coming to this node.
    watches: HashMap<u64, Option<WatchGuard>>,
    replays: VecDeque<Replay>,
}

impl Delivery {
    /// No subscriptions yet.
    pub fn new(node: Arc<Node>) -> Self {
        Self { node, cursors: HashMap::new(), watches: HashMap::new(), replays: VecDeque::new() }
    }

    /// Whether replayed history is still to be sent (a `since` replay, or a
    /// gap before a live message). The caller sends it, a page at a time,
    /// before taking its next item, so live events wait behind the replay
    /// and memory stays bounded by one page.
    pub fn replaying(&self) -> bool {
        !self.replays.is_empty()
    }

    /// Appends the next page of the oldest pending replay to `out`.
    pub async fn replay_page(&mut self, out: &mut Vec<OutFrame>) -> Result<(), ApiError> {
        let Some(r) = self.replays.front_mut() else { return Ok(()) };
        let room = RoomRef { key: r.room_key, id: r.room.clone() };
        // Boxed, as below: a read may go to a replica over the network, and
        // its state inline would make every write round (ws.rs boxes each)
        // as large as the rare round that reads.
        let page = Box::pin(self.node.read_after(&room, r.from, REPLAY_PAGE, r.last)).await?;
        tracing::debug!(
            room = %r.room,
            from = r.from,
            last = r.last,
            got = page.len(),
            first = ?page.first().map(|m| m.seq),
            "replay page"
        );
        for m in page.iter().take_while(|m| m.seq <= r.last) {
            let json = message_event(&r.room, m);
            out.push(OutFrame { json: json.into(), message: Some((r.room.clone(), m.seq)), ping: false, event: None });
            r.from = m.seq;
        }
        if page.len() < REPLAY_PAGE || r.from >= r.last {
            self.replays.pop_front();
        }
        Ok(())
    }

    /// Appends to `out` the frames that `item` means for this connection.
    pub async fn handle(&mut self, item: Outbound, out: &mut Vec<OutFrame>) -> Result<(), ApiError> {
        match item {
            Outbound::Reply(json) => out.push(OutFrame::plain(*json)),
            Outbound::Ping => {
                out.push(OutFrame { json: Utf8Bytes::from_static(""), message: None, ping: true, event: None })
            }
            Outbound::Event(event) => {
                let Some(cursor) = self.cursors.get_mut(&event.room_key) else { return Ok(()) };
                if event.seq == 0 {
                    out.push(OutFrame { event: Some(event.clone()), ..OutFrame::plain(event.json.clone()) });
                    return Ok(());
                }
                if event.seq <= *cursor {
                    return Ok(());
                }
                if event.seq > *cursor + 1 {
                    // Past a gap: read the gap and this message from the store,
                    // a page at a time like any replay (the store has them all).
                    tracing::debug!(room = %event.room, cursor = *cursor, seq = event.seq, "gap before a live message");
                    self.replays.push_back(Replay {
                        room_key: event.room_key,
                        room: event.room.clone(),
                        from: *cursor,
                        last: event.seq,
                    });
                    *cursor = event.seq;
                    return Ok(());
                }
                *cursor = event.seq;
                out.push(OutFrame {
                    json: event.json.clone(),
                    message: Some((event.room.clone(), event.seq)),
                    ping: false,
                    event: Some(event),
                });
            }
            Outbound::Start(start) => {
                let StartSub { room_key, room, since, ack, reply_id } = *start;
                let (watch, last) =
                    Box::pin(self.node.listen_to_room(&RoomRef { key: room_key, id: room.clone() })).await?;
                self.watches.insert(room_key, watch);
                if ack {
                    out.push(OutFrame::plain(ok_reply(reply_id, Subscribed { last_seq: last }).into()));
                }
                // A re-subscribe replaces any replay still pending for the room.
                self.replays.retain(|r| r.room_key != room_key);
                if let Some(from) = since.filter(|s| *s < last) {
                    self.replays.push_back(Replay { room_key, room, from, last });
                }
                // A client may have seen more than this node has committed
                // yet (it was on another node): nothing at or below its
                // `since` is sent again.
                self.cursors.insert(room_key, last.max(since.unwrap_or(0)));
            }
            Outbound::End(end) => {
                let EndSub { room_key, removed } = *end;
                self.cursors.remove(&room_key);
                self.watches.remove(&room_key);
                self.replays.retain(|r| r.room_key != room_key);
                if let Some(json) = removed {
                    out.push(OutFrame::plain(json));
                }
            }
        }
        Ok(())
    }
}
