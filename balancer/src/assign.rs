//! Assign mode: on the public address, `GET /assign` is answered by the
//! balancer itself with the node a client should use directly; anything
//! else is relayed.
//!
//! The decision is made from the connection's first bytes, *peeked* (left
//! in the socket), so a relayed connection reaches its node byte for byte.
//! At most [`PREFIX`]'s length is looked at, and only as long as the bytes
//! could still become `GET /assign`; a client that sends nothing is
//! relayed once the wait ends. [`classify`] is the pure part.

use std::net::SocketAddr;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The start of an assign request; the byte after it must be ` ` or `?`.
pub const PREFIX: &[u8] = b"GET /assign";
/// Bytes needed to decide: the prefix and the byte after it.
const DECIDE: usize = PREFIX.len() + 1;
/// Largest request head read for an assign request.
const MAX_HEAD: usize = 8 * 1024;
/// Pause between two peeks while a prefix is incomplete.
const PEEK_PAUSE: Duration = Duration::from_millis(5);

/// What the first bytes say.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Sniffed {
    /// An assign request: answer it here.
    Assign,
    /// Anything else: relay it.
    Relay,
    /// Still a prefix of an assign request: wait for more bytes.
    NeedMore,
}

/// Classifies the first bytes of a connection.
pub fn classify(first: &[u8]) -> Sniffed {
    let n = first.len().min(PREFIX.len());
    if first[..n] != PREFIX[..n] {
        return Sniffed::Relay;
    }
    match first.get(PREFIX.len()) {
        None => Sniffed::NeedMore,
        Some(b' ' | b'?') => Sniffed::Assign,
        Some(_) => Sniffed::Relay,
    }
}

/// Whether the first bytes start like an HTTP/1 request (`METHOD `), so a
/// refusal can be answered in HTTP rather than by a bare close.
pub fn looks_like_http(first: &[u8]) -> bool {
    let method = first.iter().take_while(|b| b.is_ascii_uppercase()).count();
    (3..=7).contains(&method) && first.get(method) == Some(&b' ')
}

/// The decision on a connection's first bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct First {
    /// Assign or relay (never `NeedMore`).
    pub sniffed: Sniffed,
    /// The bytes look like an HTTP request.
    pub http: bool,
}

/// What waiting for the first bytes found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FirstBytes {
    /// Decided.
    Decided(First),
    /// The client closed before sending anything.
    Closed,
}

/// Peeks at the client's first bytes until they decide, for at most
/// `wait`; undecided when the wait ends means relay.
pub async fn sniff(stream: &TcpStream, wait: Duration) -> std::io::Result<FirstBytes> {
    let deadline = Instant::now() + wait;
    let mut buf = [0u8; DECIDE];
    let mut seen = 0;
    let relay = |first: &[u8]| FirstBytes::Decided(First { sniffed: Sniffed::Relay, http: looks_like_http(first) });
    loop {
        let n = match tokio::time::timeout_at(deadline, stream.peek(&mut buf)).await {
            Ok(r) => r?,
            Err(_) => return Ok(relay(&buf[..seen])),
        };
        if n == 0 {
            // Peek reports 0 only at the end of the stream.
            return Ok(if seen == 0 { FirstBytes::Closed } else { relay(&buf[..seen]) });
        }
        seen = n;
        match classify(&buf[..n]) {
            Sniffed::NeedMore => {}
            sniffed => return Ok(FirstBytes::Decided(First { sniffed, http: looks_like_http(&buf[..n]) })),
        }
        // A peek returns at once while bytes are waiting; pause so an
        // incomplete prefix does not spin.
        if Instant::now() + PEEK_PAUSE >= deadline {
            return Ok(relay(&buf[..n]));
        }
        tokio::time::sleep(PEEK_PAUSE).await;
    }
}

/// The answer to an assign request, as a complete HTTP/1.1 response.
pub fn response(node: Option<(u64, SocketAddr)>) -> Vec<u8> {
    let (status, body) = match node {
        Some((id, addr)) => (
            "200 OK",
            serde_json::json!({"node": id, "url": format!("http://{addr}"), "ws": format!("ws://{addr}/ws")}),
        ),
        None => (
            "503 Service Unavailable",
            serde_json::json!({"error": {"code": "unavailable", "message": "no node available"}}),
        ),
    };
    let body = body.to_string();
    format!(
        "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\ncache-control: no-store\r\naccess-control-allow-origin: *\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

/// Reads the request head (bounded), writes `answer` and closes.
pub async fn answer(stream: &mut TcpStream, answer: &[u8], wait: Duration) -> std::io::Result<()> {
    let read_head = async {
        // Read into the heap: a buffer on this future's stack would make
        // every client task larger, relayed ones too.
        let mut head = Vec::with_capacity(1024);
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < MAX_HEAD {
            head.reserve(1024);
            if stream.read_buf(&mut head).await? == 0 {
                break;
            }
        }
        std::io::Result::Ok(())
    };
    // A head that is too large or too slow still gets its answer.
    let _ = tokio::time::timeout(wait, read_head).await;
    stream.write_all(answer).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_bytes() {
        let cases: [(&str, Sniffed); 12] = [
            ("GET /assign HTTP/1.1\r\n", Sniffed::Assign),
            ("GET /assign?strategy=x HTTP/1.1\r\n", Sniffed::Assign),
            ("GET /assign ", Sniffed::Assign),
            ("GET /assign", Sniffed::NeedMore),
            ("GET /as", Sniffed::NeedMore),
            ("G", Sniffed::NeedMore),
            ("", Sniffed::NeedMore),
            ("GET /assignment HTTP/1.1\r\n", Sniffed::Relay),
            ("GET /assign/x HTTP/1.1\r\n", Sniffed::Relay),
            ("GET /ws HTTP/1.1\r\n", Sniffed::Relay),
            ("POST /assign HTTP/1.1\r\n", Sniffed::Relay),
            ("hello\n", Sniffed::Relay),
        ];
        for (first, expected) in cases {
            assert_eq!(classify(first.as_bytes()), expected, "{first:?}");
        }
    }

    #[test]
    fn http_looking_starts() {
        for (first, expected) in [
            ("GET /ws", true),
            ("POST /api", true),
            ("OPTIONS *", true),
            ("GE", false),
            ("hello", false),
            ("G ", false),
        ] {
            assert_eq!(looks_like_http(first.as_bytes()), expected, "{first:?}");
        }
    }

    #[test]
    fn answers() {
        let addr = SocketAddr::from(([127, 0, 0, 1], 7102));
        let text = String::from_utf8(response(Some((2, addr)))).expect("text");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head");
        assert!(head.starts_with("HTTP/1.1 200 OK\r\n"), "{head}");
        assert!(head.contains(&format!("content-length: {}", body.len())), "{head}");
        let v: serde_json::Value = serde_json::from_str(body).expect("json");
        assert_eq!(v, serde_json::json!({"node": 2, "url": "http://127.0.0.1:7102", "ws": "ws://127.0.0.1:7102/ws"}));
        let none = String::from_utf8(response(None)).expect("text");
        assert!(none.starts_with("HTTP/1.1 503 "), "{none}");
        assert!(none.ends_with(r#"{"error":{"code":"unavailable","message":"no node available"}}"#), "{none}");
    }
}
