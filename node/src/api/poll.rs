//! `GET /api/poll`: long polling and, with `timeout_ms=0`, plain polling
//! (docs/protocol.md §6). Messages come from the store after each cursor, so a
//! poll is gapless by construction; other events (presence, typing, member
//! changes) are included when they happen while the poll waits.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::IntoResponse;
use axum::response::Response;
use palaver_protocol::PollAnswer;
use palaver_protocol::ServerEvent;
use palaver_protocol::close;
use serde_json::value::RawValue;
use serde_json::value::to_raw_value;

use super::extract::Query;
use super::sse::Registration;
use super::sse::parse_cursors;
use super::sse::readable;
use super::sse::session;
use crate::hub::Outbound;
use crate::protocol::message;
use crate::rooms::MAX_PAGE;
use crate::rooms::RoomRef;
use crate::service::ApiError;
use crate::service::Node;

/// How long a poll waits when the client does not say.
const DEFAULT_WAIT_MS: u64 = 25_000;
/// After the first event, how long to gather more before answering.
const GATHER: Duration = Duration::from_millis(5);

struct Poll {
    rooms: Vec<RoomRef>,
    cursors: Vec<u64>,
    /// The events, encoded.
    events: Vec<Box<RawValue>>,
    /// Rooms whose subscription ended while waiting (no more reads).
    ended: Vec<bool>,
    /// The highest seq an event announced per room: reads reach it.
    announced: Vec<u64>,
}

impl Poll {
    /// Adds every stored message after each cursor (a page per room).
    async fn collect_messages(&mut self, node: &Node) -> Result<(), ApiError> {
        for (i, r) in self.rooms.iter().enumerate() {
            if self.ended[i] {
                continue;
            }
            for m in node.read_after(r, self.cursors[i], MAX_PAGE, self.announced[i]).await? {
                let event = ServerEvent::Message(message(&r.id, &m));
                self.events.push(to_raw_value(&event).map_err(|e| ApiError::internal(e.to_string()))?);
                self.cursors[i] = m.seq;
            }
        }
        Ok(())
    }

    /// Adds an event the hub carries already encoded (as valid JSON).
    fn push(&mut self, json: &str) {
        if let Ok(raw) = RawValue::from_string(json.to_string()) {
            self.events.push(raw);
        }
    }

    fn take(&mut self, item: Outbound) {
        match item {
            Outbound::Event(e) if e.seq > 0 => {
                if let Some(i) = self.rooms.iter().position(|r| r.key == e.room_key) {
                    self.announced[i] = self.announced[i].max(e.seq);
                }
            }
            Outbound::Event(e) if e.seq == 0 => self.push(e.json.as_str()),
            Outbound::End(end) => {
                if let Some(i) = self.rooms.iter().position(|r| r.key == end.room_key) {
                    self.ended[i] = true;
                }
                if let Some(json) = end.removed {
                    self.push(json.as_str());
                }
            }
            // Messages are read from the store; starts and replies do not apply.
            _ => {}
        }
    }

    fn answer(self) -> Response {
        let cursor: Vec<String> =
            self.rooms.iter().zip(&self.cursors).map(|(r, seq)| format!("{}:{seq}", r.id)).collect();
        axum::Json(PollAnswer { events: self.events, cursor: cursor.join(",") }).into_response()
    }
}

/// Answers as soon as any event exists after the cursors, or empty at the timeout.
pub async fn poll(State(node): State<Arc<Node>>, headers: HeaderMap, q: Query) -> Result<Response, ApiError> {
    let s = session(&node, &headers, &q).await?;
    let cursors = parse_cursors(q.0.get("since").map(String::as_str).unwrap_or(""))?;
    let mut names: Vec<String> = Vec::new();
    let mut starts: Vec<u64> = Vec::new();
    for (room, seq) in cursors {
        match names.iter().position(|n| *n == room) {
            Some(i) => starts[i] = seq,
            None => {
                names.push(room);
                starts.push(seq);
            }
        }
    }
    let rooms = readable(&node, &s, &names).await.map_err(|e| {
        if names.is_empty() { ApiError::bad_request("since must name the rooms: since=a:12,b:40") } else { e }
    })?;
    let wait = q.number("timeout_ms")?.unwrap_or(DEFAULT_WAIT_MS).min(node.limits.max_poll_ms);
    let ended = vec![false; rooms.len()];
    let announced = vec![0; rooms.len()];
    let mut poll = Poll { rooms, cursors: starts, events: Vec::new(), ended, announced };
    poll.collect_messages(&node).await?;
    if !poll.events.is_empty() || wait == 0 {
        return Ok(poll.answer());
    }
    // Register, then look at the store again: a message committed between
    // the first look and the registration is found by the second.
    let (registration, mut rx) = Registration::open(&node, &s, &poll.rooms, &HashMap::new(), false);
    // Where the rooms' shards are elsewhere, their events are relayed here
    // while the poll waits (and a while after, for the next poll).
    let mut watches = Vec::with_capacity(poll.rooms.len());
    for r in &poll.rooms {
        watches.push(node.listen_to_room(r).await?.0);
    }
    poll.collect_messages(&node).await?;
    if !poll.events.is_empty() {
        return Ok(poll.answer());
    }
    let deadline = tokio::time::Instant::now() + Duration::from_millis(wait);
    let kill = registration.kill.clone();
    loop {
        let item = tokio::select! {
            code = kill.fired() => {
                if code == close::TOKEN_REVOKED {
                    return Err(ApiError::unauthorized());
                }
                return Ok(poll.answer());
            }
            item = tokio::time::timeout_at(deadline, rx.recv()) => item,
        };
        if let Ok(Some(item)) = &item {
            registration.budget.release(item.size());
        }
        match item {
            Ok(Some(item)) => poll.take(item),
            Ok(None) | Err(_) => return Ok(poll.answer()),
        }
        poll.collect_messages(&node).await?;
        if !poll.events.is_empty() {
            // Gather what arrives right behind the first event into the same answer.
            let gather_until = tokio::time::Instant::now() + GATHER;
            while let Ok(Some(item)) = tokio::time::timeout_at(gather_until, rx.recv()).await {
                registration.budget.release(item.size());
                poll.take(item);
            }
            poll.collect_messages(&node).await?;
            drop(registration);
            return Ok(poll.answer());
        }
    }
}
