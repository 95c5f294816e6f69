//! The IO every accepted client connection goes through: the socket, plus a
//! write deadline. A write that finds the socket full starts a timer; a
//! write that moves at least one byte drops it; when the timer runs out
//! before any byte moved, the write fails with `TimedOut` and whoever
//! writes (hyper for HTTP and SSE, tungstenite after a WebSocket upgrade,
//! since hyper's `Upgraded` wraps this same IO) gives the connection up.
//!
//! Why here and not per transport: a client that stops reading holds the
//! response's memory for as long as the connection lives, whatever the
//! transport. Why a timer only while stalled: tens of thousands of idle
//! sockets must stay cheap, so a connection whose writes progress (or
//! that writes nothing) holds no timer at all.
//!
//! It also carries what the connection holds under the accept loop's caps
//! (`H`): hyper's connection future ends at a WebSocket upgrade, but this
//! IO lives on inside the upgraded socket, so the places are given back
//! only when the socket itself closes.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::Context;
use std::task::Poll;
use std::time::Duration;

use tokio::io::AsyncRead;
use tokio::io::AsyncWrite;
use tokio::io::ReadBuf;
use tokio::time::Sleep;

/// A byte stream whose writes fail once the peer has taken nothing for the
/// write timeout; `H` is dropped with it.
pub struct ConnIo<T, H = ()> {
    inner: T,
    write_timeout: Duration,
    /// Running while the socket is full; `None` otherwise.
    stalled: Option<Pin<Box<Sleep>>>,
    /// The deadline passed once already (counted once, failed ever after).
    expired: bool,
    /// Held for the connection's life, never read.
    _held: H,
}

impl<T, H> ConnIo<T, H> {
    /// Wraps `inner`, holding `held` until dropped; writes fail after
    /// `write_timeout` without progress.
    pub fn new(inner: T, write_timeout: Duration, held: H) -> Self {
        Self { inner, write_timeout, stalled: None, expired: false, _held: held }
    }

    /// Called when the inner write is pending: starts the timer if needed
    /// and fails once it has run out.
    fn stall<R>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        if !self.expired {
            let timeout = self.write_timeout;
            let sleep = self.stalled.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
            if sleep.as_mut().poll(cx).is_pending() {
                return Poll::Pending;
            }
            self.expired = true;
            self.stalled = None;
            metrics::counter!("palaver_write_timeouts_total").increment(1);
        }
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("the peer took no bytes for {} ms", self.write_timeout.as_millis()),
        )))
    }

    /// The outcome of an inner write: progress drops the timer.
    fn wrote(&mut self, cx: &mut Context<'_>, result: Poll<io::Result<usize>>) -> Poll<io::Result<usize>> {
        match result {
            Poll::Ready(Ok(n)) => {
                if n > 0 {
                    self.stalled = None;
                }
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => self.stall(cx),
        }
    }
}

impl<T: AsyncRead + Unpin, H: Unpin> AsyncRead for ConnIo<T, H> {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin, H: Unpin> AsyncWrite for ConnIo<T, H> {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired {
            return this.stall(cx);
        }
        let result = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.wrote(cx, result)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.expired {
            return this.stall(cx);
        }
        let result = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.wrote(cx, result)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Pending => this.stall(cx),
            done => done,
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt;
    use tokio::io::AsyncWriteExt;
    use tokio::net::TcpListener;
    use tokio::net::TcpStream;
    use tokio::time::Instant;

    use super::*;

    /// A connected pair of loopback sockets: (server side, client side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = l.local_addr().expect("addr");
        let (client, server) = tokio::join!(TcpStream::connect(addr), l.accept());
        (server.expect("accept").0, client.expect("connect"))
    }

    #[tokio::test]
    async fn a_peer_that_never_reads_fails_the_write_after_the_timeout() {
        let (server, _client) = pair().await;
        let timeout = Duration::from_millis(300);
        let mut io = ConnIo::new(server, timeout, ());
        let chunk = vec![7u8; 64 * 1024];
        let started = Instant::now();
        let mut written = 0usize;
        let err = loop {
            // Bounded: the kernel buffers hold a few MB at most.
            assert!(written < 512 * 1024 * 1024, "wrote {written} bytes and never blocked");
            match tokio::time::timeout(Duration::from_secs(30), io.write(&chunk)).await {
                Ok(Ok(n)) => written += n,
                Ok(Err(e)) => break e,
                Err(_) => panic!("the write hung past the timeout"),
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert!(started.elapsed() >= timeout, "failed after {:?}", started.elapsed());
        assert!(io.stalled.is_none(), "the timer is dropped once it fired");
        // It stays failed: the connection is to be dropped.
        let again = io.write(b"x").await.expect_err("still failed");
        assert_eq!(again.kind(), io::ErrorKind::TimedOut);
    }

    #[tokio::test]
    async fn a_slow_reader_that_keeps_reading_is_never_cut() {
        let (server, mut client) = pair().await;
        let timeout = Duration::from_millis(400);
        let mut io = ConnIo::new(server, timeout, ());
        let total = 8 * 1024 * 1024;
        let reader = tokio::spawn(async move {
            let mut got = 0usize;
            let mut buf = vec![0u8; 256 * 1024];
            while got < total {
                // Slower than the writer, but never a whole timeout without reading.
                tokio::time::sleep(Duration::from_millis(50)).await;
                let n = client.read(&mut buf).await.expect("read");
                assert!(n > 0, "closed early after {got} bytes");
                got += n;
            }
            got
        });
        let chunk = vec![1u8; 256 * 1024];
        let mut sent = 0;
        while sent < total {
            io.write_all(&chunk).await.expect("a progressing write never times out");
            sent += chunk.len();
        }
        let got = tokio::time::timeout(Duration::from_secs(60), reader).await.expect("in time").expect("task");
        assert_eq!(got, total);
    }

    #[tokio::test]
    async fn an_idle_connection_holds_no_timer() {
        let (server, mut client) = pair().await;
        let mut io = ConnIo::new(server, Duration::from_millis(100), ());
        io.write_all(b"hello").await.expect("write");
        assert!(io.stalled.is_none());
        tokio::time::sleep(Duration::from_millis(300)).await;
        io.write_all(b" again").await.expect("a write after idling is not late");
        let mut buf = [0u8; 11];
        client.read_exact(&mut buf).await.expect("read");
        assert_eq!(&buf, b"hello again");
        let size = std::mem::size_of::<ConnIo<TcpStream>>();
        assert!(size <= std::mem::size_of::<TcpStream>() + 32, "ConnIo adds {size} bytes");
    }
}
