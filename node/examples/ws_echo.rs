//! A WebSocket echo server built from the node's own layers (the frame
//! guard, the inflate layer, permessage-deflate negotiation and
//! compression) on tungstenite, as `/ws` stacks them, for checking them
//! against the Autobahn|Testsuite (`fuzzingclient`):
//!
//! `cargo run -p palaver-node --example ws_echo -- 127.0.0.1:9001`, or all
//! of it (install, echo server, suite, counts) with `scripts/autobahn.sh`.
//!
//! Text is echoed through the same `Outgoing` as `/ws` (compressed at 256
//! bytes and over when agreed); binary is echoed plain.
//!
//! Last run (Autobahn|Testsuite 25.10.1, cases 1-7, 10, 12 and 13, dev
//! build): 463 cases, 458 OK, 2 NON-STRICT (6.4.3, 6.4.4: invalid UTF-8
//! noticed at the message's end rather than mid-frame), 3 INFORMATIONAL
//! (7.1.6, 7.13.1, 7.13.2), none failed; all 216 permessage-deflate cases (12.*,
//! 13.*) OK. Case 9 (performance) was left out.

use std::error::Error;

use futures_util::SinkExt;
use futures_util::StreamExt;
use palaver_node::api::ws_compress::Outgoing;
use palaver_node::api::ws_guard::GuardedIo;
use palaver_node::api::ws_guard::Violation;
use palaver_node::api::ws_inflate::InflateIo;
use palaver_node::api::ws_inflate::Inflater;
use palaver_node::api::ws_negotiate::negotiate;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::Error as WsError;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::Role;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

/// The suite's largest messages are 16 MiB.
const MAX_MESSAGE: usize = 64 << 20;

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let addr = std::env::args().nth(1).unwrap_or_else(|| "127.0.0.1:9001".to_string());
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("echoing on ws://{addr}");
    loop {
        let (tcp, _) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(e) = echo(tcp).await {
                eprintln!("connection: {e}");
            }
        });
    }
}

/// The header lines of a request, and what followed them.
async fn read_head(tcp: &mut TcpStream) -> Result<(String, Vec<u8>), Box<dyn Error + Send + Sync>> {
    let mut buf = Vec::new();
    loop {
        if let Some(at) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let rest = buf.split_off(at + 4);
            return Ok((String::from_utf8(buf)?, rest));
        }
        if buf.len() > 16 * 1024 {
            return Err("request head too long".into());
        }
        let mut chunk = [0u8; 1024];
        let n = tcp.read(&mut chunk).await?;
        if n == 0 {
            return Err("closed during the handshake".into());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

async fn echo(mut tcp: TcpStream) -> Result<(), Box<dyn Error + Send + Sync>> {
    let (head, rest) = read_head(&mut tcp).await?;
    if !rest.is_empty() {
        return Err("frames before the handshake's answer".into());
    }
    let header = |name: &str| {
        head.lines()
            .filter_map(|l| l.split_once(':'))
            .filter(|(n, _)| n.trim().eq_ignore_ascii_case(name))
            .map(|(_, v)| v.trim())
            .collect::<Vec<_>>()
    };
    let key = header("sec-websocket-key").first().copied().ok_or("no Sec-WebSocket-Key")?.to_string();
    let agreement = negotiate(header("sec-websocket-extensions"));
    let mut answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n",
        derive_accept_key(key.as_bytes())
    );
    if let Some(a) = &agreement {
        answer.push_str(&format!("Sec-WebSocket-Extensions: {}\r\n", a.response()));
    }
    answer.push_str("\r\n");
    tcp.write_all(answer.as_bytes()).await?;
    let guarded = GuardedIo::new(tcp, usize::MAX);
    let recorded = guarded.recorded();
    let io = InflateIo::new(guarded, agreement.as_ref().map(|a| Inflater::new(a, MAX_MESSAGE)), recorded.clone());
    let config = WebSocketConfig::default().max_message_size(Some(MAX_MESSAGE)).max_frame_size(Some(MAX_MESSAGE));
    let mut ws = WebSocketStream::from_raw_socket(io, Role::Server, Some(config)).await;
    let outgoing = Outgoing::new(agreement.as_ref());
    while let Some(msg) = ws.next().await {
        let reply = match msg {
            Ok(Message::Text(t)) => outgoing.text(t, None),
            Ok(Message::Binary(b)) => Message::Binary(b),
            Ok(Message::Close(_)) => break,
            Ok(_) => continue,
            Err(WsError::Io(e)) => {
                if let Some(v) = Violation::from_io(&e).or_else(|| recorded.get()) {
                    let frame = CloseFrame { code: v.close_code().into(), reason: "".into() };
                    let _ = ws.send(Message::Close(Some(frame))).await;
                }
                break;
            }
            Err(e) => return Err(e.into()),
        };
        ws.send(reply).await?;
    }
    Ok(())
}
