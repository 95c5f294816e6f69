//! What a resilient client's events showed: a background task drains its
//! [`ClientEvents`] into a shared [`Seen`] the test reads at any time. The
//! recorder judges nothing; tests and the fault checker do.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::MutexGuard;
use std::time::Duration;

use anyhow::Result;
use palaver_client::ClientEvent;
use palaver_client::ClientEvents;
use palaver_client::Message;

use crate::wait::eventually;

/// Everything one client's event receiver produced so far.
#[derive(Clone, Debug, Default)]
pub struct Seen {
    /// Messages by room, in the order delivered.
    pub messages: BTreeMap<String, Vec<Message>>,
    /// Gaps the client reported: (room, expected seq, seq received).
    pub gaps: Vec<(String, u64, u64)>,
    /// Disconnects: (close code, reason).
    pub disconnects: Vec<(Option<u16>, String)>,
    /// Why the client stopped for good, if it did.
    pub stopped: Option<String>,
    /// Sessions opened (the first and every reconnect).
    pub connected: u64,
}

impl Seen {
    /// The seqs of `room` delivered, in order.
    pub fn seqs(&self, room: &str) -> Vec<u64> {
        self.messages.get(room).map(|v| v.iter().map(|m| m.seq).collect()).unwrap_or_default()
    }

    /// The close code of every disconnect, in order.
    pub fn close_codes(&self) -> Vec<Option<u16>> {
        self.disconnects.iter().map(|(code, _)| *code).collect()
    }
}

/// A client's events, recorded by a background task (it ends with them).
#[derive(Clone, Debug)]
pub struct Recorder {
    seen: Arc<Mutex<Seen>>,
}

impl Recorder {
    /// Starts draining `events`.
    pub fn start(mut events: ClientEvents) -> Recorder {
        let seen = Arc::new(Mutex::new(Seen::default()));
        let s = seen.clone();
        tokio::spawn(async move {
            while let Some(e) = events.recv().await {
                let Ok(mut s) = s.lock() else { return };
                match e {
                    ClientEvent::Message(m) => s.messages.entry(m.room.clone()).or_default().push(m),
                    ClientEvent::Gap { room, expected, got } => s.gaps.push((room, expected, got)),
                    ClientEvent::Disconnected { close_code, reason } => s.disconnects.push((close_code, reason)),
                    ClientEvent::Stopped { reason } => s.stopped = Some(reason),
                    ClientEvent::Connected { .. } => s.connected += 1,
                    _ => {}
                }
            }
        });
        Recorder { seen }
    }

    /// What was recorded, locked while the guard lives.
    pub fn seen(&self) -> MutexGuard<'_, Seen> {
        self.seen.lock().expect("the recorder's lock is never poisoned: its task does not panic holding it")
    }

    /// The seqs of `room` delivered so far.
    pub fn seqs(&self, room: &str) -> Vec<u64> {
        self.seen().seqs(room)
    }

    /// Waits (bounded by `timeout`) until seq `seq` of `room`, or a later one, was delivered.
    pub async fn wait_for(&self, room: &str, seq: u64, timeout: Duration) -> Result<()> {
        eventually(&format!("seq {seq} of {room} delivered"), timeout, async || {
            Ok(self.seqs(room).last().is_some_and(|l| *l >= seq).then_some(()))
        })
        .await
    }
}
