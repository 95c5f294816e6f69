//! Server-Sent Events (§6): `GET /sse?rooms=..`, read incrementally as the
//! bytes arrive, with `Last-Event-ID` and `?since=` resume.

use std::collections::VecDeque;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use futures_util::Stream;
use futures_util::StreamExt;
use serde_json::Value;
use tokio::time::Instant;

use crate::error::Error;
use crate::error::Result;
use crate::types::Event;

/// What to ask `/sse` for and how to authenticate.
#[derive(Clone, Debug, Default)]
pub struct SseOptions {
    /// Rooms to follow (`?rooms=a,b`).
    pub rooms: Vec<String>,
    /// One-time ticket (`?ticket=`).
    pub ticket: Option<String>,
    /// Token sent as `Authorization: Bearer`.
    pub bearer: Option<String>,
    /// `Last-Event-ID` header (`room:seq`).
    pub last_event_id: Option<String>,
    /// `?since=a:12,b:40`.
    pub since: Option<String>,
}

impl SseOptions {
    /// Follow these rooms.
    pub fn rooms(rooms: &[&str]) -> SseOptions {
        SseOptions { rooms: rooms.iter().map(|r| r.to_string()).collect(), ..SseOptions::default() }
    }

    /// Authenticate with a one-time ticket.
    pub fn ticket(mut self, ticket: &str) -> SseOptions {
        self.ticket = Some(ticket.to_string());
        self
    }

    /// Authenticate with a Bearer header.
    pub fn bearer(mut self, token: &str) -> SseOptions {
        self.bearer = Some(token.to_string());
        self
    }

    /// Resume after this event id.
    pub fn last_event_id(mut self, id: &str) -> SseOptions {
        self.last_event_id = Some(id.to_string());
        self
    }

    /// Resume after these cursors.
    pub fn since(mut self, since: &str) -> SseOptions {
        self.since = Some(since.to_string());
        self
    }
}

/// One dispatched SSE event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id:` field of this event, if it had one.
    pub id: Option<String>,
    /// The `event:` field, if any.
    pub event: Option<String>,
    /// The `data:` lines joined by newlines.
    pub data: String,
}

impl SseEvent {
    /// `data` as JSON.
    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.data).map_err(|e| Error::Decode(format!("sse data {:?}: {e}", self.data)))
    }

    /// `data` as a protocol event.
    pub fn event(&self) -> Result<Event> {
        self.json().map(Event::from_value)
    }
}

type ByteStream = Pin<Box<dyn Stream<Item = reqwest::Result<Bytes>> + Send>>;

/// An open `/sse` stream.
pub struct Sse {
    stream: ByteStream,
    buf: Vec<u8>,
    ready: VecDeque<SseEvent>,
    id: Option<String>,
    event: Option<String>,
    data: Option<String>,
    last_event_id: Option<String>,
    ended: bool,
}

impl std::fmt::Debug for Sse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sse").field("ready", &self.ready.len()).field("ended", &self.ended).finish()
    }
}

impl Sse {
    /// Opens `GET /sse` at `addr` (`host:port`). A refusal is the protocol
    /// error with its status.
    pub async fn connect(addr: &str, opts: &SseOptions) -> Result<Sse> {
        let addr = addr.trim_start_matches("http://").trim_end_matches('/');
        let client = reqwest::Client::builder().no_proxy().connect_timeout(Duration::from_secs(30)).build()?;
        let mut query = vec![("rooms", opts.rooms.join(","))];
        if let Some(t) = &opts.ticket {
            query.push(("ticket", t.clone()));
        }
        if let Some(s) = &opts.since {
            query.push(("since", s.clone()));
        }
        let mut req =
            client.get(format!("http://{addr}/sse")).query(&query).header(reqwest::header::ACCEPT, "text/event-stream");
        if let Some(t) = &opts.bearer {
            req = req.bearer_auth(t);
        }
        if let Some(id) = &opts.last_event_id {
            req = req.header("Last-Event-ID", id);
        }
        let resp = tokio::time::timeout(Duration::from_secs(60), req.send())
            .await
            .map_err(|_| Error::Timeout("the /sse answer".to_string()))??;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.bytes().await.unwrap_or_default();
            return Err(Error::from_http(status, &body, None));
        }
        Ok(Sse {
            stream: Box::pin(resp.bytes_stream()),
            buf: Vec::new(),
            ready: VecDeque::new(),
            id: None,
            event: None,
            data: None,
            last_event_id: None,
            ended: false,
        })
    }

    /// The next event with data, waiting up to `timeout`.
    pub async fn next(&mut self, timeout: Duration) -> Result<SseEvent> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(e) = self.ready.pop_front() {
                return Ok(e);
            }
            if self.ended {
                return Err(Error::Decode("the event stream ended".to_string()));
            }
            match tokio::time::timeout_at(deadline, self.stream.next()).await {
                Err(_) => return Err(Error::Timeout("an sse event".to_string())),
                Ok(None) => self.ended = true,
                Ok(Some(Err(e))) => return Err(e.into()),
                Ok(Some(Ok(chunk))) => self.feed(&chunk)?,
            }
        }
    }

    /// The next event whose data is a protocol event matching `pred`
    /// (others are skipped), with its SSE id.
    pub async fn next_matching(
        &mut self,
        mut pred: impl FnMut(&Event) -> bool,
        timeout: Duration,
    ) -> Result<(Option<String>, Event)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let e = self.next(left).await?;
            if let Ok(event) = e.event()
                && pred(&event)
            {
                return Ok((e.id, event));
            }
        }
    }

    /// The last `id:` seen (what a browser would send as `Last-Event-ID`).
    pub fn last_event_id(&self) -> Option<&str> {
        self.last_event_id.as_deref()
    }

    fn feed(&mut self, chunk: &[u8]) -> Result<()> {
        self.buf.extend_from_slice(chunk);
        while let Some(pos) = self.buf.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.buf.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            let line = String::from_utf8(line).map_err(|e| Error::Decode(format!("sse line is not UTF-8: {e}")))?;
            self.line(&line);
        }
        Ok(())
    }

    fn line(&mut self, line: &str) {
        if line.is_empty() {
            let id = self.id.take();
            let event = self.event.take();
            if let Some(data) = self.data.take() {
                self.ready.push_back(SseEvent { id, event, data });
            }
            return;
        }
        if line.starts_with(':') {
            return;
        }
        let (field, value) = match line.split_once(':') {
            Some((f, v)) => (f, v.strip_prefix(' ').unwrap_or(v)),
            None => (line, ""),
        };
        match field {
            "data" => match &mut self.data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(value);
                }
                None => self.data = Some(value.to_string()),
            },
            "id" => {
                self.id = Some(value.to_string());
                self.last_event_id = Some(value.to_string());
            }
            "event" => self.event = Some(value.to_string()),
            _ => {}
        }
    }
}
