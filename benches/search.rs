//! The `search` scenario: `--search-messages` messages of made-up text
//! (words drawn from a Zipf-like vocabulary, so some words are in a large
//! share of messages and most in few) sent into `--search-rooms` public
//! rooms of a 3-node cluster, then `GET /api/search` (every room) and `GET
//! /api/rooms/{room}/search` timed one after the other for a rare word, a
//! common word and two words, plus the index's size on disk.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use anyhow::Context;
use anyhow::Result;
use anyhow::bail;
use futures_util::SinkExt;
use futures_util::StreamExt;
use palaver_protocol::Command;
use palaver_protocol::Done;
use palaver_protocol::Reply;
use tokio::sync::Semaphore;
use tokio_tungstenite::tungstenite::Message;

use crate::Results;
use crate::harness;
use crate::harness::CpuMeter;
use crate::harness::Dial;
use crate::harness::ms;

/// Distinct words the messages are made of.
const VOCABULARY: usize = 20_000;
/// Words per message.
const WORDS: usize = 8;
/// Sends in flight per sender.
const WINDOW: u64 = 32;
/// Longest the load may take before the run gives up.
const LOAD_LIMIT: Duration = Duration::from_secs(3_600);

/// What the scenario is asked to do.
pub struct SearchRun {
    pub messages: u64,
    pub rooms: usize,
    pub queries: usize,
    pub senders: usize,
}

/// A deterministic generator (xorshift64*), so every run sends the same text.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Word `rank` of the vocabulary: syllables spelling the rank, so words are
/// pronounceable and distinct.
fn word(rank: usize) -> String {
    const SYLLABLES: [&str; 16] =
        ["ka", "lo", "mi", "ne", "ru", "sa", "to", "vi", "ze", "po", "la", "de", "fu", "go", "hi", "ju"];
    let mut n = rank + 16;
    let mut w = String::new();
    while n > 0 {
        w.push_str(SYLLABLES[n % 16]);
        n /= 16;
    }
    w
}

/// Draws ranks with probability ∝ 1 / (rank + 1).
struct Zipf {
    cumulative: Vec<f64>,
}

impl Zipf {
    fn new(n: usize) -> Self {
        let mut total = 0.0;
        let cumulative = (0..n)
            .map(|r| {
                total += 1.0 / (r as f64 + 1.0);
                total
            })
            .collect::<Vec<_>>();
        let cumulative = cumulative.into_iter().map(|c| c / total).collect();
        Self { cumulative }
    }

    fn draw(&self, rng: &mut Rng) -> usize {
        let u = rng.unit();
        self.cumulative.partition_point(|c| *c < u).min(self.cumulative.len() - 1)
    }
}

pub async fn search(run: &SearchRun, res: &mut Results) -> Result<()> {
    let nodes = harness::palaver_cluster(3, "search").await?;
    let names: Vec<String> = (0..run.rooms).map(|r| format!("sr-{r}")).collect();
    let api = harness::Api::new(&nodes[0].addr);
    let tokens = api.users("sr", run.senders).await?;
    let gate = Arc::new(Semaphore::new(16));
    let mut tasks = Vec::new();
    for (r, room) in names.iter().enumerate() {
        let (api, gate, room, owner) = (api.clone(), gate.clone(), room.clone(), tokens[r % run.senders].clone());
        tasks.push(tokio::spawn(async move {
            let _permit = gate.acquire().await?;
            api.room(&room, &owner, &[]).await
        }));
    }
    for t in tasks {
        t.await??;
    }
    eprintln!("  sending {} messages into {} rooms from {} senders", run.messages, run.rooms, run.senders);
    let meter = CpuMeter::start();
    let started = Instant::now();
    let per_sender = run.messages.div_ceil(run.senders as u64);
    let zipf = Arc::new(Zipf::new(VOCABULARY));
    let mut tasks = Vec::new();
    for (i, token) in tokens.iter().enumerate() {
        let ws = harness::dial(&nodes[i % nodes.len()].addr, "/ws", Some(token), Dial::default()).await?;
        let (rooms, senders, zipf) = (run.rooms, run.senders, zipf.clone());
        tasks.push(tokio::spawn(async move {
            let (mut tx, mut rx) = ws.split();
            let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (i as u64 + 1));
            let (mut sent, mut answered) = (0u64, 0u64);
            // Sender i owns rooms i, i + senders, …: the room owner may always send.
            let own = (rooms - i.min(rooms)).div_ceil(senders).max(1);
            while answered < per_sender {
                while sent < per_sender && sent - answered < WINDOW {
                    let body = (0..WORDS).map(|_| word(zipf.draw(&mut rng))).collect::<Vec<_>>().join(" ");
                    let room = format!("sr-{}", i + senders * (sent as usize % own));
                    let send = Command::Send {
                        room,
                        body,
                        client_id: format!("s{i}-{sent}"),
                        reply_to: None,
                        attachments: Vec::new(),
                    };
                    tx.send(harness::palaver_frame(sent, send)).await?;
                    sent += 1;
                }
                let msg = tokio::time::timeout(Duration::from_secs(60), rx.next()).await.context("answer timed out")?;
                let t = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    // The server's keep-alive pings (tungstenite answers them).
                    Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                    other => bail!("socket ended: {other:?}"),
                };
                match serde_json::from_str::<Reply<Done>>(&t) {
                    Ok(Reply::Ok { .. }) => answered += 1,
                    Ok(Reply::Error { .. }) => bail!("send failed: {t}"),
                    Err(_) => {}
                }
            }
            anyhow::Ok(answered)
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += tokio::time::timeout(LOAD_LIMIT, t).await.context("the load took too long")???;
    }
    let load_secs = started.elapsed().as_secs_f64();
    let sc = format!("search, {} messages in {} rooms, 3 nodes", total, run.rooms);
    res.push(&sc, "palaver-cluster", "answered sends/s while loading", total as f64 / load_secs, "/s", &meter);

    // The first search waits until every node's index took the load.
    let searcher = harness::Api::new(&nodes[1].addr);
    let reader = tokens[0].clone();
    let indexed = Instant::now();
    get(&searcher, "/api/search?q=kalo&limit=1", &reader).await?;
    res.push(
        &sc,
        "palaver-cluster",
        "first search after the load (index catching up)",
        ms_since(indexed),
        "ms",
        &meter,
    );

    let mut rng = Rng(7);
    let zipf = Zipf::new(VOCABULARY);
    type Query = Box<dyn Fn(&mut Rng) -> String>;
    let kinds: [(&str, Query); 3] = [
        ("rare word", Box::new(|rng: &mut Rng| word(5_000 + (rng.next() % 10_000) as usize))),
        ("common word", Box::new(|rng: &mut Rng| word((rng.next() % 10) as usize))),
        ("two words", Box::new(move |rng: &mut Rng| format!("{} {}", word(zipf.draw(rng)), word(zipf.draw(rng))))),
    ];
    for (kind, q) in &kinds {
        for (scope, room) in [("every room", None), ("one room", Some(()))] {
            let meter = CpuMeter::start();
            let mut h = harness::histogram();
            let mut hits = 0usize;
            for _ in 0..run.queries {
                let text = q(&mut rng);
                let path = match room {
                    None => format!("/api/search?q={}&limit=20", text.replace(' ', "+")),
                    Some(()) => {
                        let r = rng.next() as usize % run.rooms;
                        format!("/api/rooms/sr-{r}/search?q={}&limit=20", text.replace(' ', "+"))
                    }
                };
                let t0 = Instant::now();
                let found = get(&searcher, &path, &reader).await?;
                h.saturating_record(t0.elapsed().as_micros() as u64);
                hits += found;
            }
            let label = format!("{kind}, {scope}");
            res.push(&sc, "palaver-cluster", &format!("search p50 ({label})"), ms(&h, 0.5), "ms", &meter);
            res.push(&sc, "palaver-cluster", &format!("search p99 ({label})"), ms(&h, 0.99), "ms", &meter);
            res.push(
                &sc,
                "palaver-cluster",
                &format!("results per search ({label})"),
                hits as f64 / run.queries as f64,
                "",
                &meter,
            );
        }
    }
    match nodes[0].root().and_then(|root| find_dir(root, "node-1")) {
        Some(node) => {
            let index = dir_bytes(&node.join("search"))?;
            let millions = total as f64 / 1e6;
            let mib = |bytes: u64| bytes as f64 / millions / (1024.0 * 1024.0);
            res.push(&sc, "node 1", "search index size per 1M messages", mib(index), "MiB", &meter);
            let rest = dir_bytes(&node)?.saturating_sub(index);
            res.push(&sc, "node 1", "the node's other data per 1M messages", mib(rest), "MiB", &meter);
        }
        None => res.note("search: node 1's data folder was not found; no index size".into()),
    }
    Ok(())
}

/// The first folder named `name` under `dir`, depth first.
fn find_dir(dir: &Path, name: &str) -> Option<std::path::PathBuf> {
    for entry in std::fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        if path.is_dir() {
            if entry.file_name() == name {
                return Some(path);
            }
            if let Some(found) = find_dir(&path, name) {
                return Some(found);
            }
        }
    }
    None
}

fn ms_since(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

/// GETs a search; answers how many messages it found.
async fn get(api: &harness::Api, path: &str, token: &str) -> Result<usize> {
    let found: Vec<serde_json::Value> = api.get(path, token).await?;
    Ok(found.len())
}

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &Path) -> Result<u64> {
    let mut total = 0;
    for entry in std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let meta = entry.metadata()?;
        total += if meta.is_dir() { dir_bytes(&entry.path())? } else { meta.len() };
    }
    Ok(total)
}
