//! Criterion micro-benchmarks of the hot pure paths: no sockets, no store,
//! no threads.
//!
//! ```text
//! cargo bench --bench micro                 # everything, about a minute
//! cargo bench --bench micro -- wire/        # one group (a regex on the names)
//! ```
//!
//! Groups:
//! - `pick`: one pick of each balancer strategy among 3 and 100 nodes.
//! - `event`: encoding a `message` event's JSON once, and what each further
//!   delivery of it costs (a reference-count bump, never a re-encode).
//! - `wire`: postcard encode/decode of a shard's Raft entry (`ShardBatch`)
//!   of 1, 64 and 256 sends, and of a frame of 64 sends forwarded to a
//!   shard's leader.
//!
//! Times are short on purpose (2-core machine): 300 ms warm-up, 1.5 s of
//! measurement, 30 samples per benchmark.

use std::hint::black_box;
use std::sync::Arc;
use std::time::Duration;

use criterion::BenchmarkId;
use criterion::Criterion;
use criterion::Throughput;
use criterion::criterion_group;
use criterion::criterion_main;
use palaver_balancer::Strategy;
use palaver_balancer::select::Candidate;
use palaver_balancer::select::selector;
use palaver_node::cluster::wire::ForwardedSend;
use palaver_node::hub::Event;
use palaver_node::peer::codec::decode;
use palaver_node::peer::codec::encode;
use palaver_node::protocol::message_event;
use palaver_node::rooms::Message;
use palaver_node::rooms::StoredMessage;
use palaver_node::shards::types::ShardBatch;
use palaver_node::shards::types::ShardOp;

/// A typical chat line is about this long.
const SHORT_BODY: usize = 100;
/// A long paste.
const LONG_BODY: usize = 4096;

/// `len` bytes of plain ASCII text, words and spaces.
fn body(len: usize) -> String {
    "the quick brown fox jumps over the lazy dog ".chars().cycle().take(len).collect()
}

/// A stored message as the log writer makes it.
fn stored(i: u64, body_len: usize) -> StoredMessage {
    StoredMessage {
        from: "annabelle".into(),
        body: Some(body(body_len)),
        ts: 1_795_000_000_000 + i,
        client_id: format!("c-7f3a9e12-{i:08}"),
        epoch: 3,
        ..StoredMessage::default()
    }
}

/// `n` nodes with ids 1..=n, weights 1..=5 and uneven connection counts.
fn candidates(n: u64) -> Vec<Candidate> {
    (1..=n)
        .map(|id| Candidate { id, weight: 1 + (id % 5) as u32, active: (id * 37) % 50 + 10, eligible: true })
        .collect()
}

/// One pick per iteration, with the strategy's memory carried over as in the
/// balancer (the candidate list is rebuilt by the caller, not here).
fn pick(c: &mut Criterion) {
    let mut group = c.benchmark_group("pick");
    for strategy in [Strategy::RoundRobin, Strategy::Weighted, Strategy::LeastConnections] {
        for n in [3, 100] {
            let list = candidates(n);
            let mut s = selector(strategy);
            group.bench_with_input(BenchmarkId::new(strategy.to_string(), n), &list, |b, list| {
                b.iter(|| s.pick(black_box(list)));
            });
        }
    }
    group.finish();
}

/// Encoding once per committed message, then sharing per delivery.
fn event(c: &mut Criterion) {
    let mut group = c.benchmark_group("event");
    let room: Arc<str> = Arc::from("general");
    for len in [SHORT_BODY, LONG_BODY] {
        let message = Message { seq: 123_456, stored: stored(1, len) };
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_with_input(BenchmarkId::new("encode", len), &message, |b, m| {
            b.iter(|| message_event(black_box(&room), black_box(m)));
        });
        let json = message_event(&room, &message);
        let event = Arc::new(Event {
            room_key: 7,
            room: room.clone(),
            seq: message.seq,
            json: json.into(),
            deflated: std::sync::OnceLock::new(),
            except: None,
            relay: palaver_node::hub::Relay::Watchers,
        });
        group.throughput(Throughput::Elements(1));
        // What the hub does per listener: one more handle on the same event.
        group.bench_with_input(BenchmarkId::new("deliver-arc-event", len), &event, |b, e| {
            b.iter(|| Arc::clone(black_box(e)));
        });
        // What a connection's writer does per frame: the JSON handle, no copy.
        group.bench_with_input(BenchmarkId::new("deliver-utf8bytes", len), &event, |b, e| {
            b.iter(|| black_box(e).json.clone());
        });
        // The one compression of an event for permessage-deflate sockets
        // (the body here repeats, so it compresses better than chat does).
        group.bench_with_input(BenchmarkId::new("deflate", len), &event, |b, e| {
            b.iter(|| palaver_node::api::ws_compress::deflate_message(black_box(e.json.as_bytes()), 15));
        });
    }
    group.finish();
}

/// A shard's Raft entry of `n` sends of `SHORT_BODY`-byte bodies over 4 rooms.
fn batch(n: u64) -> ShardBatch {
    let ops = (0..n)
        .map(|i| {
            let room_key = 1 + i % 4;
            ShardOp::Send {
                room_key,
                room: format!("room-{room_key}"),
                from: format!("user-{}", i % 50),
                body: "x".repeat(SHORT_BODY),
                client_id: format!("c-{i}"),
            }
        })
        .collect();
    ShardBatch { shard: 3, ts: 1_764_000_000_000, ops }
}

/// A shard's log entry as the leader proposes it and each replica decodes
/// it, and a frame of sends forwarded to the leader.
fn wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire");
    for n in [1, 64, 256] {
        let b = batch(n);
        let bytes = encode(&b);
        group.throughput(Throughput::Elements(n));
        group.bench_with_input(BenchmarkId::new("encode-entry", n), &b, |bench, b| {
            bench.iter(|| encode(black_box(b)));
        });
        group.bench_with_input(BenchmarkId::new("decode-entry", n), &bytes, |bench, bytes| {
            bench.iter(|| decode::<ShardBatch>(black_box(bytes)).expect("an entry decodes"));
        });
    }
    let sends: Vec<ForwardedSend> = (0..64)
        .map(|i| ForwardedSend {
            id: i,
            from: format!("user-{}", i % 50),
            room: "room-1".into(),
            body: "x".repeat(100),
            client_id: format!("c-{i}"),
            applied: 4_242,
            relayed: false,
            reply_to: None,
            attachments: Vec::new(),
        })
        .collect();
    let bytes = encode(&sends);
    group.throughput(Throughput::Elements(sends.len() as u64));
    group.bench_with_input(BenchmarkId::new("encode-forwarded", sends.len()), &sends, |bench, s| {
        bench.iter(|| encode(black_box(s)));
    });
    group.bench_with_input(BenchmarkId::new("decode-forwarded", sends.len()), &bytes, |bench, bytes| {
        bench.iter(|| decode::<Vec<ForwardedSend>>(black_box(bytes)).expect("a forwarded frame decodes"));
    });
    group.finish();
}

/// Short runs: the whole file takes about a minute on 2 cores.
fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1_500))
        .sample_size(30)
}

criterion_group! {
    name = micro;
    config = config();
    targets = pick, event, wire
}
criterion_main!(micro);
