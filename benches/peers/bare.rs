//! The bare tokio-tungstenite broadcast server: the limit of Palaver's own
//! stack (tokio + tungstenite), without auth, storage, rooms or limits, so
//! the harness shows what Palaver's features cost.
//!
//! - one task per socket; every text frame a client sends goes to every
//!   connected client (the sender included) through one
//!   `tokio::sync::broadcast` channel (the frame's bytes are shared, not
//!   copied per socket);
//! - a socket's task writes every message already queued for it, then
//!   flushes once (queued messages flushed together);
//! - a small read buffer per socket (`read_buffer`, 4 KiB by default):
//!   tungstenite allocates its read buffer up front per socket, and its
//!   default of 128 KiB would dominate the memory of idle sockets;
//! - a socket that falls more than [`QUEUE`] messages behind loses the
//!   oldest ones (the harness sees them as undelivered).
//!
//! The load bench binary runs it as a separate process when called as
//! `load --serve-bare PORT [--read-buffer BYTES]`; it prints
//! `ready: 127.0.0.1:PORT`.

#![allow(dead_code)]

use anyhow::Result;
use futures_util::SinkExt;
use futures_util::StreamExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError;
use tokio::sync::broadcast::error::TryRecvError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::Utf8Bytes;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// Messages a socket may fall behind before it loses the oldest (Palaver's
/// `outbound_queue` in the harness's config is the same).
pub const QUEUE: usize = 65536;

/// Accepts sockets on `listener` until the process ends.
pub async fn serve(listener: TcpListener, read_buffer: usize) -> Result<()> {
    let (tx, _) = broadcast::channel::<Utf8Bytes>(QUEUE);
    loop {
        let (stream, _) = listener.accept().await?;
        let tx = tx.clone();
        tokio::spawn(async move {
            let _ = socket(stream, tx, read_buffer).await;
        });
    }
}

async fn socket(stream: TcpStream, tx: broadcast::Sender<Utf8Bytes>, read_buffer: usize) -> Result<()> {
    stream.set_nodelay(true)?;
    // The write buffer (grown on demand) collects frames until the flush.
    let config = WebSocketConfig::default().read_buffer_size(read_buffer);
    let ws = tokio_tungstenite::accept_async_with_config(stream, Some(config)).await?;
    let mut rx = tx.subscribe();
    let (mut sink, mut stream) = ws.split();
    loop {
        tokio::select! {
            msg = stream.next() => match msg {
                Some(Ok(Message::Text(text))) => {
                    let _ = tx.send(text);
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {}
            },
            item = rx.recv() => {
                match item {
                    Ok(text) => sink.feed(Message::Text(text)).await?,
                    Err(RecvError::Lagged(_)) => continue,
                    Err(RecvError::Closed) => break,
                }
                // Everything else already queued goes out with it, then one flush.
                loop {
                    match rx.try_recv() {
                        Ok(text) => sink.feed(Message::Text(text)).await?,
                        Err(TryRecvError::Lagged(_)) => continue,
                        Err(TryRecvError::Empty) | Err(TryRecvError::Closed) => break,
                    }
                }
                sink.flush().await?;
            }
        }
    }
    Ok(())
}

/// `--serve-bare PORT [--read-buffer BYTES]`: runs the server in this process.
pub fn main(args: &[String]) -> Result<()> {
    let value = |name: &str| args.iter().position(|a| a == name).and_then(|i| args.get(i + 1)).cloned();
    let port: u16 = value("--serve-bare").unwrap_or_else(|| "0".into()).parse()?;
    let read_buffer: usize = value("--read-buffer").unwrap_or_else(|| "4096".into()).parse()?;
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        println!("ready: {}", listener.local_addr()?);
        serve(listener, read_buffer).await
    })
}
