//! Palaver client: speaks the client protocol (docs/protocol.md, version 1) over
//! HTTP, WebSocket, Server-Sent Events and long polling.
//!
//! # Layout
//! - [`Http`]: accounts, rooms and every room action of §2–§3, typed; plus a
//!   raw [`Http::request`] escape hatch for odd inputs, [`Http::poll`], and
//!   [`Http::history_page`] with the cursor of a page cut at the byte cap.
//! - [`Ws`]: one WebSocket (§5). Commands get increasing ids and each call
//!   waits for the reply carrying its id; server events are buffered in
//!   order for [`Ws::next_event`] / [`Ws::wait_for`]. Nothing reads the
//!   socket behind the caller's back, so a `Ws` that is not called is a
//!   slow consumer, which tests rely on.
//! - [`Sse`]: an incremental `text/event-stream` reader (§6).
//! - [`ResilientClient`]: a WebSocket session that outlives its
//!   connections: reconnects with backoff and jitter, re-authenticates,
//!   re-subscribes with `since`, resends unanswered sends with the same
//!   `client_id`, and hands messages over in seq order without duplicates;
//!   it also carries typing notices.
//! - [`Error`]: one error type keeping the HTTP status, the protocol `code`
//!   and `retry_after_ms`, and the WebSocket close code.
//!
//! The client knows only the wire protocol, as `palaver_protocol` defines
//! it (most of the types here are that crate's, re-exported): nothing
//! about how a node stores or routes anything, and no TLS.
//!
//! ```no_run
//! # async fn demo() -> palaver_client::Result<()> {
//! use std::time::Duration;
//! use palaver_client::{Http, Visibility, Ws};
//!
//! let http = Http::new("127.0.0.1:8080")?;
//! http.register("ann", "correct horse").await?;
//! let login = http.login("ann", "correct horse").await?;
//! let ann = http.with_token(&login.token);
//! ann.create_room("lobby", "Lobby", Visibility::Public).await?;
//!
//! let mut ws = Ws::connect_auth("127.0.0.1:8080", &login.token).await?;
//! ws.subscribe("lobby", Some(0)).await?;
//! let ack = ws.send("lobby", "hello", "m1").await?;
//! let mine = ws.messages_through("lobby", ack.seq, Duration::from_secs(5)).await?;
//! assert_eq!(mine.last().map(|m| m.seq), Some(ack.seq));
//! match ann.join("nowhere").await {
//!     Err(e) => assert_eq!(e.code(), "not_found"),
//!     Ok(_) => unreachable!(),
//! }
//! # Ok(())
//! # }
//! ```

mod error;
mod http;
mod resilient;
mod sse;
mod types;
mod ws;

pub use error::Error;
pub use error::Result;
pub use http::Download;
pub use http::HistoryPage;
pub use http::Http;
pub use http::Method;
pub use http::Raw;
pub use resilient::ClientEvent;
pub use resilient::ClientEvents;
pub use resilient::ClientStats;
pub use resilient::Order;
pub use resilient::ResilientClient;
pub use resilient::ResilientOptions;
pub use resilient::Sent;
pub use resilient::assigned_node;
pub use resilient::backoff;
pub use resilient::order;
pub use sse::Sse;
pub use sse::SseEvent;
pub use sse::SseOptions;
pub use types::Attachment;
pub use types::AuditEntry;
pub use types::Event;
pub use types::Login;
pub use types::Me;
pub use types::Member;
pub use types::Message;
pub use types::PollAnswer;
pub use types::Receipt;
pub use types::Room;
pub use types::SendAck;
pub use types::Visibility;
pub use ws::History;
pub use ws::Ws;
pub use ws::WsOptions;
