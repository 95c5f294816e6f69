//! HTTP answers compressed on request (docs/protocol.md §8 "Wire"): gzip,
//! br and zstd above a size threshold; never event streams, attachment
//! downloads, small answers, or clients that did not ask.

use std::io::Read;

use anyhow::Context;
use anyhow::Result;
use palaver_client::Visibility;
use palaver_testkit::Node;

/// `GET path` with `Accept-Encoding: encoding` (if any) and the token:
/// (status, Content-Encoding, Vary, body bytes as sent).
async fn get(node: &Node, token: &str, path: &str, encoding: Option<&str>) -> Result<(u16, String, String, Vec<u8>)> {
    let mut req = reqwest::Client::new().get(format!("http://{}{path}", node.addr())).bearer_auth(token);
    if let Some(e) = encoding {
        req = req.header("accept-encoding", e);
    }
    let r = req.send().await.with_context(|| format!("GET {path}"))?;
    let header = |name: &str| r.headers().get(name).and_then(|v| v.to_str().ok()).unwrap_or_default().to_string();
    let (status, encoding, vary) = (r.status().as_u16(), header("content-encoding"), header("vary"));
    Ok((status, encoding, vary, r.bytes().await?.to_vec()))
}

#[tokio::test]
async fn large_answers_are_compressed_as_the_client_asks_and_nothing_else_is() -> Result<()> {
    let node = Node::start().await?;
    let ann = node.user("ann").await?;
    ann.http.create_room("talk", "Talk", Visibility::Public).await?;
    for i in 0..60 {
        ann.http
            .post_message("talk", &format!("message number {i}, about the weather again"), &format!("c{i}"))
            .await?;
    }
    let path = "/api/rooms/talk/messages?limit=100";
    let (status, encoding, _, plain) = get(&node, &ann.token, path, None).await?;
    assert_eq!((status, encoding.as_str()), (200, ""), "no Accept-Encoding, no compression");
    let history: serde_json::Value = serde_json::from_slice(&plain)?;
    assert_eq!(history.as_array().map(Vec::len), Some(60));

    let (status, encoding, vary, gz) = get(&node, &ann.token, path, Some("gzip")).await?;
    assert_eq!((status, encoding.as_str()), (200, "gzip"));
    assert!(vary.to_ascii_lowercase().contains("accept-encoding"), "Vary: {vary}");
    let mut inflated = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice()).read_to_end(&mut inflated).context("gunzip")?;
    assert_eq!(inflated, plain, "the gzip body is the plain answer");
    assert!(gz.len() * 3 < plain.len(), "chat history compresses: {} → {} bytes", plain.len(), gz.len());
    for (asked, expect) in [("br", "br"), ("zstd", "zstd"), ("br;q=0.5, zstd;q=1.0", "zstd"), ("identity", "")] {
        let (status, encoding, _, body) = get(&node, &ann.token, path, Some(asked)).await?;
        assert_eq!((status, encoding.as_str()), (200, expect), "Accept-Encoding: {asked}");
        if !expect.is_empty() {
            assert!(body.len() < plain.len(), "{asked}: {} bytes of {}", body.len(), plain.len());
        }
    }

    // Small answers, event streams and downloads go as they are.
    let (_, encoding, _, _) = get(&node, &ann.token, "/api/me", Some("gzip")).await?;
    assert_eq!(encoding, "", "a small answer");
    let file: Vec<u8> = b"plain text that would compress very well ".repeat(200);
    let made = ann.http.upload("talk", "notes.txt", "text/plain", file.clone()).await?;
    let (status, encoding, _, body) =
        get(&node, &ann.token, &format!("/api/attachments/{}", made.id), Some("gzip")).await?;
    assert_eq!((status, encoding.as_str(), body.len()), (200, "", file.len()), "a download");
    let ticket = ann.http.ticket().await?;
    let sse = reqwest::Client::new()
        .get(format!("http://{}/sse?rooms=talk&ticket={ticket}", node.addr()))
        .header("accept-encoding", "gzip")
        .send()
        .await?;
    assert_eq!(sse.status().as_u16(), 200);
    assert!(sse.headers().get("content-encoding").is_none(), "an event stream: {:?}", sse.headers());
    Ok(())
}
