//! Asking a node: `GET /healthz` and `GET /api/cluster/members` (with the
//! ops token, which nodes require there) over a fresh TCP connection,
//! HTTP/1.1 with `Connection: close`. No PROXY header: a node takes these
//! connections for what they are, the balancer's own.
//!
//! A tiny client on purpose: one request, a bounded answer, one timeout
//! for all of it. The parsing is a pure function, tested without sockets;
//! what the answers mean is decided in `health` and `table`.

use std::net::SocketAddr;
use std::time::Duration;

use serde::Deserialize;
use tokio::io::AsyncReadExt;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::config::OpsToken;
use crate::health::Probe;
use crate::health::classify;
use crate::table::Member;

/// Largest answer read from a node (a member list of hundreds of nodes fits).
const MAX_ANSWER: usize = 256 * 1024;

/// Why a request to a node got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// The node did not answer within the timeout.
    #[error("no answer within {0:?}")]
    Timeout(Duration),
    /// Connecting, writing or reading failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The answer is not HTTP/1.x as expected.
    #[error("malformed answer: {0}")]
    Malformed(&'static str),
    /// The answer is larger than the balancer reads.
    #[error("answer larger than {MAX_ANSWER} bytes")]
    TooLarge,
    /// The node refused the member list: the ops token is missing or wrong.
    #[error("status {0}: the node wants the cluster's ops token ([security] ops_token or PALAVER_OPS_TOKEN)")]
    Refused(u16),
    /// The member list is not the expected JSON.
    #[error("unreadable member list: {0}")]
    Members(String),
}

/// `GET path` on `addr`, with `Authorization: Bearer <bearer>` if given;
/// answers the status and body.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    bearer: Option<&OpsToken>,
    timeout: Duration,
) -> Result<(u16, Vec<u8>), ProbeError> {
    tokio::time::timeout(timeout, get_inner(addr, path, bearer)).await.map_err(|_| ProbeError::Timeout(timeout))?
}

async fn get_inner(addr: SocketAddr, path: &str, bearer: Option<&OpsToken>) -> Result<(u16, Vec<u8>), ProbeError> {
    let mut stream = TcpStream::connect(addr).await?;
    stream.set_nodelay(true)?;
    let auth = bearer.map(|t| format!("Authorization: Bearer {}\r\n", t.expose())).unwrap_or_default();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: palaver-balancer\r\nAccept: application/json\r\n{auth}Connection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_ANSWER {
            return Err(ProbeError::TooLarge);
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        buf.extend_from_slice(&chunk[..n]);
        if let Some(answer) = parse_response(&buf, n == 0)? {
            return Ok(answer);
        }
    }
}

/// One health check of the node at `addr`.
pub async fn health(addr: SocketAddr, timeout: Duration) -> Probe {
    match get(addr, "/healthz", None, timeout).await {
        Ok((status, body)) => classify(status, &body),
        Err(e) => Probe::Failed(e.to_string()),
    }
}

/// One entry of `/api/cluster/members`, as the node writes it.
#[derive(Deserialize)]
struct MemberWire {
    id: u64,
    address: String,
    #[serde(default)]
    weight: Option<u32>,
    #[serde(default)]
    state: Option<String>,
    #[serde(default)]
    connections: Option<u64>,
}

/// The member list of the node at `addr`, asked with the ops token.
/// Entries whose address does not resolve are skipped (and logged).
pub async fn members(addr: SocketAddr, token: Option<&OpsToken>, timeout: Duration) -> Result<Vec<Member>, ProbeError> {
    let (status, body) = get(addr, "/api/cluster/members", token, timeout).await?;
    if status == 401 || status == 403 {
        return Err(ProbeError::Refused(status));
    }
    if status != 200 {
        return Err(ProbeError::Members(format!("status {status}")));
    }
    let wire: Vec<MemberWire> = serde_json::from_slice(&body).map_err(|e| ProbeError::Members(e.to_string()))?;
    let mut list = Vec::with_capacity(wire.len());
    for m in wire {
        let resolved = match m.address.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(_) => match tokio::time::timeout(timeout, tokio::net::lookup_host(m.address.as_str())).await {
                Ok(Ok(mut addrs)) => addrs.next(),
                _ => None,
            },
        };
        let Some(addr) = resolved else {
            tracing::warn!(node = m.id, address = %m.address, "member address does not resolve; skipped");
            continue;
        };
        list.push(Member {
            id: m.id,
            addr,
            weight: m.weight,
            draining: m.state.as_deref() == Some("draining"),
            connections: m.connections,
        });
    }
    Ok(list)
}

/// Reads an HTTP/1.x answer from `buf`: `None` while more bytes are
/// needed, the status and body once complete. `eof`: the peer closed.
pub fn parse_response(buf: &[u8], eof: bool) -> Result<Option<(u16, Vec<u8>)>, ProbeError> {
    let Some(head_end) = find(buf, b"\r\n\r\n") else {
        return if eof { Err(ProbeError::Malformed("closed before the end of the head")) } else { Ok(None) };
    };
    let head = std::str::from_utf8(&buf[..head_end]).map_err(|_| ProbeError::Malformed("head is not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    if !parts.next().is_some_and(|v| v.starts_with("HTTP/1.")) {
        return Err(ProbeError::Malformed("not an HTTP/1.x status line"));
    }
    let status: u16 =
        parts.next().and_then(|s| s.parse().ok()).ok_or(ProbeError::Malformed("status is not a number"))?;
    let mut length = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else { continue };
        let value = value.trim();
        if name.eq_ignore_ascii_case("content-length") {
            length = Some(value.parse::<usize>().map_err(|_| ProbeError::Malformed("bad content-length"))?);
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = value.to_ascii_lowercase().contains("chunked");
        }
    }
    let body = &buf[head_end + 4..];
    if chunked {
        return match dechunk(body)? {
            Some(b) => Ok(Some((status, b))),
            None if eof => Err(ProbeError::Malformed("closed inside a chunked body")),
            None => Ok(None),
        };
    }
    match length {
        Some(n) if body.len() >= n => Ok(Some((status, body[..n].to_vec()))),
        Some(_) if eof => Err(ProbeError::Malformed("closed before the end of the body")),
        Some(_) => Ok(None),
        None if eof => Ok(Some((status, body.to_vec()))),
        None => Ok(None),
    }
}

/// Decodes a complete chunked body, or `None` if it is not complete yet.
fn dechunk(mut rest: &[u8]) -> Result<Option<Vec<u8>>, ProbeError> {
    let mut out = Vec::new();
    loop {
        let Some(line_end) = find(rest, b"\r\n") else { return Ok(None) };
        let line = std::str::from_utf8(&rest[..line_end]).map_err(|_| ProbeError::Malformed("bad chunk size"))?;
        let size_text = line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size_text, 16).map_err(|_| ProbeError::Malformed("bad chunk size"))?;
        rest = &rest[line_end + 2..];
        if size == 0 {
            return Ok(Some(out));
        }
        if size > MAX_ANSWER {
            return Err(ProbeError::TooLarge);
        }
        if rest.len() < size + 2 {
            return Ok(None);
        }
        out.extend_from_slice(&rest[..size]);
        rest = &rest[size + 2..];
    }
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Parses `text`; `Ok(None)` is written as status 0.
    fn check(text: &str, eof: bool, expected: Result<(u16, &str), &str>) {
        let got = parse_response(text.as_bytes(), eof);
        let got = match got {
            Ok(Some((s, b))) => Ok((s, String::from_utf8(b).expect("utf-8 body"))),
            Ok(None) => Ok((0, String::new())),
            Err(e) => Err(e.to_string()),
        };
        let expected = expected.map(|(s, b)| (s, b.to_string())).map_err(str::to_string);
        match (&got, &expected) {
            (Err(g), Err(e)) => assert!(g.contains(e.as_str()), "{text:?}: {g} should mention {e}"),
            _ => assert_eq!(got, expected, "{text:?} eof={eof}"),
        }
    }

    #[test]
    fn answers() {
        let ok = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 7\r\n\r\n";
        check(&format!("{ok}{{\"a\":1}}"), false, Ok((200, "{\"a\":1}")));
        check(&format!("{ok}{{\"a\""), false, Ok((0, "")));
        check(&format!("{ok}{{\"a\""), true, Err("before the end of the body"));
        check("HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n\r\n", false, Ok((503, "")));
        check("HTTP/1.0 200 OK\r\n\r\nuntil close", false, Ok((0, "")));
        check("HTTP/1.0 200 OK\r\n\r\nuntil close", true, Ok((200, "until close")));
        check("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nab", false, Ok((0, "")));
        check(
            "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n4\r\nabcd\r\n3;x=y\r\nefg\r\n0\r\n\r\n",
            false,
            Ok((200, "abcdefg")),
        );
        check("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", false, Err("bad chunk size"));
        check("HTTP/1.1 200 OK\r\nContent", false, Ok((0, "")));
        check("HTTP/1.1 200 OK\r\nContent", true, Err("closed before the end of the head"));
        check("SSH-2.0-OpenSSH\r\n\r\n", false, Err("not an HTTP/1.x status line"));
        check("HTTP/1.1 abc OK\r\n\r\n", false, Err("status is not a number"));
        check("HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", false, Err("bad content-length"));
    }

    #[tokio::test]
    async fn a_closed_port_is_a_failed_probe() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        assert!(matches!(health(addr, Duration::from_secs(5)).await, Probe::Failed(_)));
    }
}
