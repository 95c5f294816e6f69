//! Relaying: bytes both ways between a client and its node until both
//! sides are done, the connection sits idle too long, or an error ends it.
//!
//! No parsing: after the pick the balancer is a pipe. Memory matters more
//! than throughput here (tens of thousands of mostly idle WebSockets), so
//! an idle relay holds no buffer at all: each transfer reads into a stack
//! buffer inside a plain function (never part of the task's state) and
//! writes straight on; only bytes the other side cannot take yet are kept,
//! in a heap buffer freed as soon as they are written. A half-close is
//! passed on (`shutdown(Write)`), so request/response protocols that close
//! one way still finish. TLS clients have their own relay in
//! [`crate::tls::relay`], built the same way.

use std::io;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::io::AsyncWriteExt;
use tokio::io::Interest;
use tokio::net::TcpStream;
use tokio::net::tcp::ReadHalf;
use tokio::net::tcp::WriteHalf;
use tokio::time::Instant;

/// Bytes moved by one read; on the worker's stack, not per connection.
const CHUNK: usize = 8 * 1024;

/// How a relayed connection ended.
#[derive(Debug)]
pub enum End {
    /// Both sides closed their sending half.
    Closed,
    /// No bytes either way for the idle timeout.
    Idle,
    /// A read or write failed (typically a reset); the other side is closed too.
    Failed(io::Error),
}

/// When the relay last moved a byte, in milliseconds since it started.
pub(crate) struct Activity {
    start: Instant,
    last_ms: AtomicU64,
}

impl Activity {
    /// Starts counting now.
    pub(crate) fn new() -> Self {
        Self { start: Instant::now(), last_ms: AtomicU64::new(0) }
    }

    /// Something moved just now.
    pub(crate) fn touch(&self) {
        self.last_ms.store(self.start.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn deadline(&self, idle: Duration) -> Instant {
        self.start + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + idle
    }
}

/// Relays between `client` and `node` until the connection ends.
pub async fn relay(client: &mut TcpStream, node: &mut TcpStream, idle: Duration) -> End {
    let activity = Activity::new();
    let (client_read, client_write) = client.split();
    let (node_read, node_write) = node.split();
    let both =
        async { tokio::try_join!(pump(client_read, node_write, &activity), pump(node_read, client_write, &activity)) };
    let watch = idle_watch(&activity, idle);
    tokio::select! {
        r = both => match r {
            Ok(_) => End::Closed,
            Err(e) => End::Failed(e),
        },
        () = watch => End::Idle,
    }
}

/// Resolves once nothing moved for `idle`.
pub(crate) async fn idle_watch(activity: &Activity, idle: Duration) {
    loop {
        let deadline = activity.deadline(idle);
        if Instant::now() >= deadline {
            return;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// What one transfer did.
enum Step {
    /// The source has no bytes now.
    Nothing,
    /// Bytes were read (and written, or kept as pending).
    Moved,
    /// The source closed its sending half.
    Eof,
}

/// Copies `src` to `dst` until `src` ends; then half-closes `dst`.
async fn pump(src: ReadHalf<'_>, mut dst: WriteHalf<'_>, activity: &Activity) -> io::Result<()> {
    let mut pending: Vec<u8> = Vec::new();
    loop {
        if pending.is_empty() {
            src.readable().await?;
            match transfer(&src, &dst, &mut pending)? {
                Step::Nothing => {}
                Step::Moved => activity.touch(),
                Step::Eof => {
                    // The peer may be gone already; its end is reported by the other direction.
                    let _ = dst.shutdown().await;
                    return Ok(());
                }
            }
        } else {
            dst.writable().await?;
            match dst.try_write(&pending) {
                Ok(n) => {
                    pending.drain(..n);
                    if pending.is_empty() {
                        // Give the memory back: an idle relay holds no buffer.
                        pending = Vec::new();
                    }
                    activity.touch();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(e),
            }
        }
    }
}

/// Reads what `src` has (one chunk) and writes as much as `dst` takes now;
/// the rest goes to `pending`. A plain function, so its buffer lives on the
/// stack only while it runs.
fn transfer(src: &ReadHalf<'_>, dst: &WriteHalf<'_>, pending: &mut Vec<u8>) -> io::Result<Step> {
    let mut buf = [0u8; CHUNK];
    let n = match read_draining(src.as_ref(), &mut buf) {
        Ok(0) => return Ok(Step::Eof),
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Step::Nothing),
        Err(e) => return Err(e),
    };
    let written = match dst.try_write(&buf[..n]) {
        Ok(w) => w,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    if written < n {
        pending.extend_from_slice(&buf[written..n]);
    }
    Ok(Step::Moved)
}

/// Reads what `src` has into `buf`. A read that returns less than `buf`
/// holds has emptied the socket's receive queue, so the socket's readiness
/// is cleared with it: the next wait sleeps until bytes arrive rather than
/// costing one more read that only says "would block" (a third of the
/// system calls of a relayed chat frame; HAProxy does the same). Bytes
/// that arrive meanwhile raise a new readiness event, which a clear made
/// for an older one leaves alone, so none wait unseen.
pub(crate) fn read_draining(src: &TcpStream, buf: &mut [u8]) -> io::Result<usize> {
    let capacity = buf.len();
    let mut got = None;
    let r = src.try_io(Interest::READABLE, || {
        let n = src.try_read(buf)?;
        got = Some(n);
        // `WouldBlock` is how `try_io` is told to clear the readiness.
        if n > 0 && n < capacity { Err(io::ErrorKind::WouldBlock.into()) } else { Ok(n) }
    });
    match (r, got) {
        (Err(e), Some(n)) if e.kind() == io::ErrorKind::WouldBlock => Ok(n),
        (r, _) => r,
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::net::TcpListener;

    use super::*;

    /// A connected pair of loopback sockets.
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (a, b) = tokio::join!(TcpStream::connect(addr), l.accept());
        (a.expect("connect"), b.expect("accept").0)
    }

    /// Writes `payload` on `client`, half-closes it, then reads what comes
    /// back until the other side closes.
    fn write_then_read_back(mut client: TcpStream, payload: Vec<u8>) -> tokio::task::JoinHandle<Vec<u8>> {
        tokio::spawn(async move {
            client.write_all(&payload).await.expect("write");
            client.shutdown().await.expect("half-close");
            let mut back = Vec::new();
            client.read_to_end(&mut back).await.expect("read back");
            back
        })
    }

    #[tokio::test]
    async fn bytes_cross_both_ways_with_backpressure_and_half_close() {
        let (client, mut client_side) = pair().await;
        let (mut node_side, mut node) = pair().await;
        let relay = tokio::spawn(async move { relay(&mut client_side, &mut node_side, Duration::from_secs(30)).await });
        // 4 MiB one way while the reader starts late: the relay must hold
        // back and resume, not drop or reorder.
        let payload: Vec<u8> = (0..4 * 1024 * 1024u32).map(|i| (i % 251) as u8).collect();
        let writer = write_then_read_back(client, payload.clone());
        tokio::time::sleep(Duration::from_millis(50)).await;
        let mut got = Vec::new();
        node.read_to_end(&mut got).await.expect("node reads until the half-close");
        assert!(got == payload, "payload arrived changed ({} of {} bytes)", got.len(), payload.len());
        node.write_all(b"answer after the half-close").await.expect("write");
        node.shutdown().await.expect("close");
        let back = tokio::time::timeout(Duration::from_secs(30), writer).await.expect("in time").expect("task");
        assert_eq!(back, b"answer after the half-close");
        let end = tokio::time::timeout(Duration::from_secs(30), relay).await.expect("in time").expect("task");
        assert!(matches!(end, End::Closed), "{end:?}");
    }

    /// A write and its answer, again and again: every short read clears
    /// the socket's readiness, and the next frame must still wake the relay.
    #[tokio::test]
    async fn ping_pong_frames_each_wake_the_relay() {
        let (mut client, mut client_side) = pair().await;
        let (mut node_side, mut node) = pair().await;
        let relay = tokio::spawn(async move { relay(&mut client_side, &mut node_side, Duration::from_secs(30)).await });
        let rounds = async {
            for i in 0..500u32 {
                let ping = i.to_be_bytes();
                client.write_all(&ping).await.expect("client writes");
                let mut got = [0u8; 4];
                node.read_exact(&mut got).await.expect("node reads");
                assert_eq!(got, ping, "round {i}");
                node.write_all(&got).await.expect("node answers");
                client.read_exact(&mut got).await.expect("client reads");
                assert_eq!(got, ping, "round {i}");
            }
        };
        tokio::time::timeout(Duration::from_secs(60), rounds).await.expect("500 rounds in time");
        drop(client);
        drop(node);
        let end = tokio::time::timeout(Duration::from_secs(30), relay).await.expect("in time").expect("task");
        assert!(!matches!(end, End::Idle), "{end:?}");
    }

    #[tokio::test]
    async fn a_silent_connection_ends_idle() {
        let (mut client, mut client_side) = pair().await;
        let (mut node_side, _node) = pair().await;
        let idle = Duration::from_millis(200);
        let relay = tokio::spawn(async move { relay(&mut client_side, &mut node_side, idle).await });
        client.write_all(b"x").await.expect("write");
        let end = tokio::time::timeout(Duration::from_secs(30), relay).await.expect("in time").expect("task");
        assert!(matches!(end, End::Idle), "{end:?}");
        let mut rest = Vec::new();
        let n = client.read_to_end(&mut rest).await.unwrap_or_default();
        assert_eq!(n, 0, "the client sees the close");
    }
}
