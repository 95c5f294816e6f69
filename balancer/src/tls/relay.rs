//! Relaying a TLS client after its handshake: records from the client are
//! opened in place and their plaintext written to the node; the node's
//! bytes are sealed into records for the client.
//!
//! Like the plain relay, an idle connection holds no buffer: each read
//! goes into a stack buffer inside a plain function (never part of the
//! task's state), and only what the other side cannot take yet, or the
//! start of a record not yet whole, is kept on the heap until it is gone.
//! What stays is the socket pair and the [`RecordLayer`]'s key bytes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use rustls::kernel::KernelConnection;
use rustls::server::ServerConnectionData;
use tokio::io::AsyncWrite;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use super::handshake::Session;
use super::record::CLOSE_NOTIFY;
use super::record::ContentType;
use super::record::KEY_UPDATE_NOT_REQUESTED;
use super::record::MAX_OVERHEAD;
use super::record::MAX_PLAINTEXT;
use super::record::MAX_RECORD;
use super::record::Opened;
use super::record::RecordError;
use super::record::RecordLayer;
use super::record::Sealer;
use super::record::TrafficKey;
use super::record::fatal;
use super::record::has_whole_record;
use crate::relay::Activity;
use crate::relay::End;
use crate::relay::idle_watch;
use crate::relay::read_draining;

/// Relays between the TLS client of `session` and `node` until the
/// connection ends.
pub async fn relay(session: Session, node: &mut TcpStream, idle: Duration) -> End {
    let activity = Activity::new();
    let Session { socket, layer, rekey, opened, unread } = session;
    let pipe = Pipe {
        client: socket,
        node,
        layer,
        rekey,
        up: Up { unread, to_node: opened, eof: false, done: false },
        down: Down::default(),
        activity: &activity,
    };
    tokio::select! {
        r = pipe => match r {
            Ok(()) => End::Closed,
            Err(e) => End::Failed(e),
        },
        () = idle_watch(&activity, idle) => End::Idle,
    }
}

/// Sends `bytes` to the client of `session` and closes (`close_notify`,
/// then the socket): the answer when no node can take it.
pub async fn answer_and_close(mut session: Session, bytes: &[u8]) -> io::Result<()> {
    let mut out = Vec::new();
    {
        let mut sealer = session.layer.sealer();
        for chunk in bytes.chunks(MAX_PLAINTEXT) {
            seal_onto(&mut sealer, ContentType::ApplicationData, chunk, &mut out).map_err(invalid)?;
        }
        seal_onto(&mut sealer, ContentType::Alert, &CLOSE_NOTIFY, &mut out).map_err(invalid)?;
    }
    session.socket.write_all(&out).await?;
    session.socket.shutdown().await
}

/// Seals `plain` as one record onto the end of `out`.
fn seal_onto(sealer: &mut Sealer<'_>, typ: ContentType, plain: &[u8], out: &mut Vec<u8>) -> Result<(), RecordError> {
    let at = out.len();
    out.resize(at + plain.len() + MAX_OVERHEAD, 0);
    let n = sealer.seal(typ, plain, &mut out[at..])?;
    out.truncate(at + n);
    Ok(())
}

fn invalid(e: RecordError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, e)
}

/// Client to node.
struct Up {
    /// The start of a record not yet whole.
    unread: Vec<u8>,
    /// Plaintext the node has not taken yet.
    to_node: Vec<u8>,
    /// The client is done sending (`close_notify` or end of stream).
    eof: bool,
    /// The node's side is shut down: this direction is over.
    done: bool,
}

/// Node to client.
#[derive(Default)]
struct Down {
    /// Records the client has not taken yet.
    to_client: Vec<u8>,
    /// The client asked for our key to change too (its KeyUpdate).
    update_owed: bool,
    /// The node is done sending.
    eof: bool,
    /// Our `close_notify` is sealed.
    close_sealed: bool,
    /// The client's side is shut down: this direction is over.
    done: bool,
}

/// Both directions of one TLS connection, polled in one task.
struct Pipe<'a> {
    client: TcpStream,
    node: &'a mut TcpStream,
    layer: RecordLayer,
    rekey: Option<Box<KernelConnection<ServerConnectionData>>>,
    up: Up,
    down: Down,
    activity: &'a Activity,
}

/// Why the pipe stopped early.
enum Failure {
    Io(io::Error),
    Record(RecordError),
}

impl From<io::Error> for Failure {
    fn from(e: io::Error) -> Self {
        Self::Io(e)
    }
}

impl From<RecordError> for Failure {
    fn from(e: RecordError) -> Self {
        Self::Record(e)
    }
}

impl From<rustls::Error> for Failure {
    fn from(e: rustls::Error) -> Self {
        Self::Io(io::Error::other(e))
    }
}

impl Future for Pipe<'_> {
    type Output = io::Result<()>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let up = match this.poll_up(cx) {
            Poll::Ready(Err(failure)) => return Poll::Ready(Err(this.fail(failure))),
            other => other,
        };
        let down = match this.poll_down(cx) {
            Poll::Ready(Err(failure)) => return Poll::Ready(Err(this.fail(failure))),
            other => other,
        };
        if up.is_ready() && down.is_ready() { Poll::Ready(Ok(())) } else { Poll::Pending }
    }
}

impl Pipe<'_> {
    /// Ends the connection on `failure`: a record error earns the client
    /// its fatal alert (best effort, not waited for).
    fn fail(&mut self, failure: Failure) -> io::Error {
        match failure {
            Failure::Io(e) => e,
            Failure::Record(e) => {
                if let Some(description) = e.alert() {
                    let mut out = Vec::new();
                    if seal_onto(&mut self.layer.sealer(), ContentType::Alert, &fatal(description), &mut out).is_ok() {
                        let _ = self.client.try_write(&out);
                    }
                }
                invalid(e)
            }
        }
    }

    fn poll_up(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        loop {
            if self.up.done {
                return Poll::Ready(Ok(()));
            }
            if !self.up.to_node.is_empty() {
                std::task::ready!(poll_write_pending(self.node, cx, &mut self.up.to_node))?;
                self.activity.touch();
                continue;
            }
            if self.up.eof {
                // The node may be gone already; its end is reported by the other direction.
                let _ = std::task::ready!(Pin::new(&mut *self.node).poll_shutdown(cx));
                self.up.done = true;
                continue;
            }
            match self.read_client(cx)? {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Progress::Moved) => self.activity.touch(),
                Poll::Ready(Progress::Retry) => {}
            }
        }
    }

    /// Reads what the client sent, opens the whole records and writes
    /// their plaintext to the node. A plain function, so its buffer lives
    /// on the stack only while it runs.
    fn read_client(&mut self, cx: &mut Context<'_>) -> Result<Poll<Progress>, Failure> {
        let mut buf = [0u8; 2 * MAX_RECORD];
        let mut len = self.up.unread.len();
        buf[..len].copy_from_slice(&self.up.unread);
        self.up.unread = Vec::new();
        let mut fresh = false;
        let mut ended = false;
        let mut retry = false;
        if let Poll::Ready(ready) = self.client.poll_read_ready(cx) {
            ready?;
            match read_draining(&self.client, &mut buf[len..]) {
                Ok(0) => ended = true,
                Ok(n) => {
                    len += n;
                    fresh = true;
                }
                // Readiness is cleared: the next poll registers for more.
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => retry = true,
                Err(e) => return Err(e.into()),
            }
        }
        let (taken, plain, closed) = self.open_records(&mut buf[..len])?;
        if closed || ended {
            // Bytes after a close_notify, or a record cut off by the end
            // of the stream, are dropped.
            self.up.eof = true;
        } else if taken < len {
            self.up.unread = buf[taken..len].to_vec();
        }
        if plain > 0 {
            write_or_keep(self.node, &buf[..plain], &mut self.up.to_node)?;
        }
        Ok(if fresh || ended || closed || taken > 0 {
            Poll::Ready(Progress::Moved)
        } else if retry {
            Poll::Ready(Progress::Retry)
        } else {
            Poll::Pending
        })
    }

    /// Opens the whole records at the start of `buf` in place and gathers
    /// their plaintext at its front: (bytes taken, plaintext bytes, the
    /// client sent `close_notify`).
    fn open_records(&mut self, buf: &mut [u8]) -> Result<(usize, usize, bool), Failure> {
        let mut at = 0;
        let mut plain = 0;
        // Expanding the key costs; most polls bring no whole record.
        if !has_whole_record(buf) {
            return Ok((0, 0, false));
        }
        'key: loop {
            let mut opener = self.layer.opener();
            while let Some((used, opened)) = opener.open(&mut buf[at..])? {
                let start = at;
                at += used;
                match opened {
                    Opened::Data(range) => {
                        buf.copy_within(start + range.start..start + range.end, plain);
                        plain += range.len();
                    }
                    Opened::CloseNotify => return Ok((at, plain, true)),
                    Opened::Nothing => {}
                    Opened::KeyUpdate { requested } => {
                        // The opener's key is the old one: it is not used again.
                        let rekey = self.rekey.as_mut().ok_or(RecordError::Unexpected("key_update"))?;
                        let (seq, secrets) = rekey.update_rx_secret()?;
                        self.layer.set_rx(TrafficKey::new(seq, secrets)?);
                        self.down.update_owed |= requested;
                        continue 'key;
                    }
                }
            }
            return Ok((at, plain, false));
        }
    }

    fn poll_down(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Failure>> {
        loop {
            if self.down.done {
                return Poll::Ready(Ok(()));
            }
            if !self.down.to_client.is_empty() {
                std::task::ready!(poll_write_pending(&self.client, cx, &mut self.down.to_client))?;
                self.activity.touch();
                continue;
            }
            if self.down.update_owed || self.layer.tx_worn_out() {
                self.update_our_key()?;
                continue;
            }
            if self.down.eof {
                if !self.down.close_sealed {
                    seal_onto(&mut self.layer.sealer(), ContentType::Alert, &CLOSE_NOTIFY, &mut self.down.to_client)?;
                    self.down.close_sealed = true;
                    continue;
                }
                // The client may be gone already; its end is reported by the other direction.
                let _ = std::task::ready!(Pin::new(&mut self.client).poll_shutdown(cx));
                self.down.done = true;
                continue;
            }
            match self.read_node(cx)? {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Progress::Moved) => self.activity.touch(),
                Poll::Ready(Progress::Retry) => {}
            }
        }
    }

    /// Seals a KeyUpdate with our current key, then switches to the next
    /// one (RFC 8446 §4.6.3); TLS 1.2 cannot, and ends the connection.
    fn update_our_key(&mut self) -> Result<(), Failure> {
        let Some(rekey) = self.rekey.as_mut() else { return Err(RecordError::Exhausted.into()) };
        seal_onto(
            &mut self.layer.sealer(),
            ContentType::Handshake,
            &KEY_UPDATE_NOT_REQUESTED,
            &mut self.down.to_client,
        )?;
        let (seq, secrets) = rekey.update_tx_secret()?;
        self.layer.set_tx(TrafficKey::new(seq, secrets)?);
        self.down.update_owed = false;
        Ok(())
    }

    /// Reads what the node sent (one record's worth), seals it and writes
    /// it to the client. A plain function, so its buffers live on the
    /// stack only while it runs.
    fn read_node(&mut self, cx: &mut Context<'_>) -> Result<Poll<Progress>, Failure> {
        let mut plain = [0u8; MAX_PLAINTEXT];
        match self.node.poll_read_ready(cx) {
            Poll::Pending => return Ok(Poll::Pending),
            Poll::Ready(ready) => ready?,
        }
        let n = match read_draining(self.node, &mut plain) {
            Ok(0) => {
                self.down.eof = true;
                return Ok(Poll::Ready(Progress::Moved));
            }
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(Poll::Ready(Progress::Retry)),
            Err(e) => return Err(e.into()),
        };
        let mut sealed = [0u8; MAX_PLAINTEXT + MAX_OVERHEAD];
        let len = self.layer.sealer().seal(ContentType::ApplicationData, &plain[..n], &mut sealed)?;
        write_or_keep(&self.client, &sealed[..len], &mut self.down.to_client)?;
        Ok(Poll::Ready(Progress::Moved))
    }
}

/// What one read did.
enum Progress {
    /// Bytes moved (or a side ended).
    Moved,
    /// Nothing was there after all; poll again to wait.
    Retry,
}

/// Writes as much of `bytes` as `dst` takes now and keeps the rest.
fn write_or_keep(dst: &TcpStream, bytes: &[u8], keep: &mut Vec<u8>) -> io::Result<()> {
    let written = match dst.try_write(bytes) {
        Ok(n) => n,
        Err(e) if e.kind() == io::ErrorKind::WouldBlock => 0,
        Err(e) => return Err(e),
    };
    keep.extend_from_slice(&bytes[written..]);
    Ok(())
}

/// Writes `pending` to `dst` until it is empty (then frees it) or `dst`
/// takes no more for now.
fn poll_write_pending(dst: &TcpStream, cx: &mut Context<'_>, pending: &mut Vec<u8>) -> Poll<io::Result<()>> {
    while !pending.is_empty() {
        std::task::ready!(dst.poll_write_ready(cx))?;
        match dst.try_write(pending) {
            Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
            Ok(n) => {
                pending.drain(..n);
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Poll::Ready(Err(e)),
        }
    }
    // Give the memory back: an idle relay holds no buffer.
    *pending = Vec::new();
    Poll::Ready(Ok(()))
}
