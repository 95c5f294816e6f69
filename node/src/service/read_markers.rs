//! Read markers, coalesced. Clients move their marker as they read, often
//! many times a second; each move as its own Raft write let one user make
//! tens of thousands of writes in seconds. Markers taken on this node wait
//! here, the latest per (user, room) replacing earlier ones, and go to Raft
//! together: at once when nothing was written in the last second, otherwise
//! a second after the last write. A marker is answered once the write that
//! carries it is applied, so the answer still means "stored"; markers still
//! waiting at shutdown are written before Raft stops.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::Weak;
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::sync::oneshot;

use super::ApiError;
use super::Node;
use crate::meta::MetaCommand;
use crate::meta::ReadMarker;

/// At most one marker write per this long.
const SPACING: Duration = Duration::from_secs(1);

type Waiter = oneshot::Sender<Result<(), ApiError>>;

#[derive(Default)]
struct Pending {
    markers: HashMap<(String, String), u64>,
    waiters: Vec<Waiter>,
}

/// The markers waiting for their write.
#[derive(Default)]
pub struct ReadMarkers {
    pending: Mutex<Pending>,
    wake: Notify,
}

impl ReadMarkers {
    /// Queues `user`'s marker in `room`; the receiver answers once it is stored.
    pub fn submit(&self, user: &str, room: &str, seq: u64) -> oneshot::Receiver<Result<(), ApiError>> {
        let (tx, rx) = oneshot::channel();
        {
            let mut p = self.pending.lock();
            p.markers.insert((user.to_string(), room.to_string()), seq);
            p.waiters.push(tx);
        }
        self.wake.notify_one();
        rx
    }

    fn take(&self) -> Option<(Vec<ReadMarker>, Vec<Waiter>)> {
        let mut p = self.pending.lock();
        if p.waiters.is_empty() {
            return None;
        }
        let markers = p.markers.drain().map(|((user, room), seq)| ReadMarker { user, room, seq }).collect();
        Some((markers, std::mem::take(&mut p.waiters)))
    }

    /// Writes what is waiting now (also at shutdown).
    pub async fn flush(&self, node: &Node) {
        let Some((markers, waiters)) = self.take() else { return };
        let count = markers.len();
        let result = node.propose(MetaCommand::ReadMarkers { markers }).await.map(|_| ());
        if let Err(e) = &result {
            tracing::warn!(count, error = %e.message, "read markers not stored");
        }
        for w in waiters {
            let _ = w.send(result.clone());
        }
    }
}

/// Writes waiting markers, at most once per [`SPACING`], for as long as the
/// node lives.
pub(super) async fn run(markers: Arc<ReadMarkers>, node: Weak<Node>) {
    loop {
        markers.wake.notified().await;
        let Some(n) = node.upgrade() else { return };
        markers.flush(&n).await;
        drop(n);
        tokio::time::sleep(SPACING).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_marker_per_user_and_room_wins_and_everyone_is_answered() {
        let m = ReadMarkers::default();
        let _a = m.submit("ann", "r", 3);
        let _b = m.submit("ann", "r", 7);
        let _c = m.submit("bob", "r", 2);
        let (mut markers, waiters) = m.take().expect("pending");
        markers.sort_by(|x, y| x.user.cmp(&y.user));
        assert_eq!(
            markers,
            vec![
                ReadMarker { user: "ann".into(), room: "r".into(), seq: 7 },
                ReadMarker { user: "bob".into(), room: "r".into(), seq: 2 }
            ]
        );
        assert_eq!(waiters.len(), 3);
        assert!(m.take().is_none(), "taken once");
    }
}
