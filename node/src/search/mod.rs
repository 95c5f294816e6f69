//! Full-text search of the room logs this node holds: one tantivy index per
//! node, beside the room-log store, fed by the shards' state machines as
//! they apply (a new message, an edit, a deletion, a dropped room).
//!
//! The index is a cache of the room logs, never the record: each shard's
//! part carries the log id it was fed up to (in the index's commit
//! payload), and a shard whose mark differs from its state machine's when
//! the machine opens is indexed again from its room logs. So a node that
//! crashed, lost the index or installed a snapshot catches up by itself.
//!
//! Writes go to one indexing thread through a queue, so an apply never
//! waits for tantivy. Commits are made now and then, and on demand by a
//! search ([`SearchIndex::refresh`]), which thus sees everything applied
//! before it asked.

mod query;

use std::collections::BTreeMap;
use std::io;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::sync::atomic::AtomicUsize;
use std::sync::atomic::Ordering;
use std::sync::mpsc;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;
pub use query::MAX_QUERY_CHARS;
pub use query::MAX_QUERY_WORDS;
pub use query::QueryError;
use rustc_hash::FxHashMap;
use rustc_hash::FxHashSet;
use tantivy::Index;
use tantivy::IndexReader;
use tantivy::IndexWriter;
use tantivy::ReloadPolicy;
use tantivy::TantivyDocument;
use tantivy::Term;
use tantivy::collector::FilterCollector;
use tantivy::collector::TopDocs;
use tantivy::query::BooleanQuery;
use tantivy::query::Occur;
use tantivy::query::Query;
use tantivy::query::TermQuery;
use tantivy::query::TermSetQuery;
use tantivy::schema::Field;
use tantivy::schema::IndexRecordOption;
use tantivy::schema::Schema;
use tantivy::schema::TextFieldIndexing;
use tantivy::schema::TextOptions;

/// The shape of the index; a directory written with another is rebuilt.
const SCHEMA_VERSION: u32 = 1;
/// How often the indexing thread commits what it was given.
const COMMIT_EVERY: Duration = Duration::from_secs(1);
/// The indexing thread's memory budget (tantivy flushes a segment past it).
/// tantivy's least (15 MB) cost a quarter of the sends/s of a one-room flood
/// on three nodes (`-- durable`: 7,337-7,585/s against 10,091/s): more,
/// smaller segments to write and merge.
const WRITER_BYTES: usize = 32 * 1024 * 1024;
/// The most message bytes waiting for the indexing thread. Past it a
/// shard's changes are not queued: its part of the index is made again from
/// its room logs instead (the index is a cache of them), so a thread that
/// falls behind (a shard indexed again, a flood of long messages) never
/// holds more than this.
const MAX_QUEUED_BYTES: usize = 16 * 1024 * 1024;
/// What a queued change counts for besides its text.
const CHANGE_BYTES: usize = 64;
/// How long a search waits for what was applied before it to be searchable.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(15);
/// Most rooms a search names as index terms. Past it, the rooms are
/// checked per matching message instead: a term set costs a pass over every
/// message of its rooms (6 ms for 1,000 rooms of 1,000 messages, whatever
/// the words), a check only over the messages holding the words.
const ROOMS_AS_TERMS: usize = 64;
/// The tokenizer's name in the index.
const TOKENIZER: &str = "words";

/// Why the index could not do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    /// tantivy failed.
    #[error("search index: {0}")]
    Index(#[from] tantivy::TantivyError),
    /// The index directory could not be used.
    #[error("search index directory {path}: {source}")]
    Dir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The indexing thread stopped, or is behind by more than a search waits.
    #[error("the search index is not ready: {0}")]
    NotReady(String),
}

/// A change to what the index holds, as a shard applied it.
#[derive(Debug, Clone)]
pub enum Change {
    /// A new message's text.
    Put {
        /// Room log key.
        room_key: u64,
        /// Its seq.
        seq: u64,
        /// When it was sent.
        ts: u64,
        /// The text.
        body: String,
    },
    /// A message's text, edited.
    Edit {
        /// Room log key.
        room_key: u64,
        /// Its seq.
        seq: u64,
        /// When it was sent.
        ts: u64,
        /// The new text.
        body: String,
    },
    /// A message is gone (deleted or expired).
    Remove {
        /// Room log key.
        room_key: u64,
        /// Its seq.
        seq: u64,
    },
    /// A room's log is gone.
    DropRoom {
        /// Room log key.
        room_key: u64,
    },
}

impl Change {
    /// What the change holds in the queue to the indexing thread.
    fn queued_bytes(&self) -> usize {
        match self {
            Change::Put { body, .. } | Change::Edit { body, .. } => CHANGE_BYTES + body.len(),
            Change::Remove { .. } | Change::DropRoom { .. } => CHANGE_BYTES,
        }
    }
}

/// Feeds a shard's whole content to the index: called with a sink it gives
/// every stored message to, as [`Change::Put`]s.
pub type Source = Box<dyn FnOnce(&mut dyn FnMut(Change)) -> io::Result<()> + Send>;

/// A message found: its room and seq (its content is read from the room log).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hit {
    /// Room log key.
    pub room_key: u64,
    /// The message's seq.
    pub seq: u64,
    /// When it was sent.
    pub ts: u64,
}

/// The index's fields.
#[derive(Clone, Copy)]
struct Fields {
    body: Field,
    room: Field,
    shard: Field,
    id: Field,
    seq: Field,
    ts: Field,
}

impl Fields {
    fn schema() -> (Schema, Fields) {
        let mut b = Schema::builder();
        let indexing = TextFieldIndexing::default().set_tokenizer(TOKENIZER).set_index_option(IndexRecordOption::Basic);
        let body = b.add_text_field("body", TextOptions::default().set_indexing_options(indexing));
        let room = b.add_u64_field("room", tantivy::schema::INDEXED | tantivy::schema::FAST);
        let shard = b.add_u64_field("shard", tantivy::schema::INDEXED);
        let id = b.add_bytes_field("id", tantivy::schema::INDEXED);
        let seq = b.add_u64_field("seq", tantivy::schema::FAST);
        let ts = b.add_u64_field("ts", tantivy::schema::FAST);
        (b.build(), Fields { body, room, shard, id, seq, ts })
    }

    fn id(&self, room_key: u64, seq: u64) -> Term {
        Term::from_field_bytes(self.id, &id_bytes(room_key, seq))
    }
}

/// A message's unique key in the index: room key and seq, big-endian.
fn id_bytes(room_key: u64, seq: u64) -> [u8; 16] {
    let mut bytes = [0u8; 16];
    bytes[..8].copy_from_slice(&room_key.to_be_bytes());
    bytes[8..].copy_from_slice(&seq.to_be_bytes());
    bytes
}

/// What the index's commit payload records.
#[derive(Debug, Default, serde::Serialize, serde::Deserialize)]
struct Payload {
    version: u32,
    /// Per shard, the mark of the last apply it holds.
    marks: BTreeMap<u32, String>,
}

/// Work for the indexing thread.
enum Job {
    /// Changes of one apply, counting `bytes` of the queue.
    Apply {
        shard: u32,
        changes: Vec<Change>,
        mark: String,
        bytes: usize,
    },
    Reindex {
        shard: u32,
        mark: String,
        source: Source,
    },
    Commit,
}

/// The queue's bookkeeping, shared with the indexing thread.
#[derive(Default)]
struct Queue {
    /// Bytes of the `Apply` jobs not yet done.
    bytes: AtomicUsize,
    /// The most `bytes` may reach ([`MAX_QUEUED_BYTES`] but in tests).
    limit: AtomicUsize,
    /// Shards whose changes are dropped until their queued re-index starts.
    behind: Mutex<FxHashSet<u32>>,
}

/// The node's search index.
pub struct SearchIndex {
    fields: Fields,
    reader: IndexReader,
    jobs: Mutex<mpsc::Sender<(u64, Job)>>,
    /// Per shard, the mark of the last job sent.
    sent_marks: Mutex<BTreeMap<u32, String>>,
    /// Jobs sent, numbered from 1.
    sent: AtomicU64,
    /// The last job whose changes a committed and reloaded reader shows.
    visible: tokio::sync::watch::Receiver<u64>,
    /// Serializes searches' waits, so concurrent ones share one commit.
    refreshing: tokio::sync::Mutex<()>,
    queue: Arc<Queue>,
    /// The indexing thread, joined on drop so the index's lock is free after.
    thread: Option<std::thread::JoinHandle<()>>,
}

impl std::fmt::Debug for SearchIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SearchIndex").field("sent", &self.sent.load(Ordering::Relaxed)).finish()
    }
}

impl SearchIndex {
    /// Opens the index in `dir`, or makes an empty one there when it is
    /// missing, unreadable or of another shape (shards then index again).
    pub fn open(dir: &Path) -> Result<Arc<Self>, SearchError> {
        let dir_err = |source| SearchError::Dir { path: dir.to_path_buf(), source };
        std::fs::create_dir_all(dir).map_err(dir_err)?;
        let (schema, fields) = Fields::schema();
        let (index, payload) = match open_existing(dir, &schema) {
            Ok(found) => found,
            Err(why) => {
                tracing::info!(dir = %dir.display(), why, "search index made anew; shards index again as they open");
                std::fs::remove_dir_all(dir).map_err(dir_err)?;
                std::fs::create_dir_all(dir).map_err(dir_err)?;
                (Index::create_in_dir(dir, schema)?, Payload { version: SCHEMA_VERSION, ..Payload::default() })
            }
        };
        query::register(&index);
        let reader = index.reader_builder().reload_policy(ReloadPolicy::Manual).try_into()?;
        let (tx, rx) = mpsc::channel();
        let (visible_tx, visible) = tokio::sync::watch::channel(0);
        let queue = Arc::new(Queue { limit: AtomicUsize::new(MAX_QUEUED_BYTES), ..Queue::default() });
        let (started_tx, started) = mpsc::sync_channel(1);
        let indexer_queue = queue.clone();
        let indexer_reader = reader.clone();
        let marks = payload.marks.clone();
        let thread = std::thread::Builder::new()
            .name("search-index".into())
            .spawn(move || {
                // Indexing may lag (search waits for it, and an overfull
                // queue re-indexes later); delivering messages may not. The
                // writer's own threads, started below, inherit the priority.
                crate::background::lower_priority("search index");
                let writer: IndexWriter<TantivyDocument> = match index.writer_with_num_threads(1, WRITER_BYTES) {
                    Ok(writer) => writer,
                    Err(e) => {
                        let _ = started_tx.send(Err(e));
                        return;
                    }
                };
                let _ = started_tx.send(Ok(()));
                let indexer = Indexer {
                    queue: indexer_queue,
                    fields,
                    writer,
                    reader: indexer_reader,
                    payload: Payload { version: SCHEMA_VERSION, marks },
                    done: 0,
                    dirty: false,
                    visible: visible_tx,
                    read_upto: FxHashMap::default(),
                };
                indexer.run(rx)
            })
            .map_err(dir_err)?;
        match started.recv() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(e.into()),
            Err(_) => {
                return Err(SearchError::Dir {
                    path: dir.to_path_buf(),
                    source: std::io::Error::other("the indexing thread ended at start"),
                });
            }
        }
        Ok(Arc::new(Self {
            fields,
            reader,
            jobs: Mutex::new(tx),
            sent_marks: Mutex::new(payload.marks),
            sent: AtomicU64::new(0),
            visible,
            refreshing: tokio::sync::Mutex::new(()),
            queue,
            thread: Some(thread),
        }))
    }

    fn send(&self, job: Job) {
        let jobs = self.jobs.lock();
        let n = self.sent.fetch_add(1, Ordering::SeqCst) + 1;
        if jobs.send((n, job)).is_err() {
            tracing::error!("the search indexing thread is gone; search answers will miss new messages");
        }
    }

    /// The mark shard `shard`'s part of the index was last given.
    pub fn mark(&self, shard: u32) -> Option<String> {
        self.sent_marks.lock().get(&shard).cloned()
    }

    /// Records what an apply of shard `shard` changed, up to `mark`. When
    /// the queue is full, the shard's part is made again from `source`
    /// (called at once; it reads the store when the thread gets to it)
    /// instead, and its changes are dropped until then: the apply wrote
    /// them to the store first, so the re-index reads them.
    pub fn apply(&self, shard: u32, changes: Vec<Change>, mark: String, source: impl FnOnce() -> Source) {
        let bytes: usize = changes.iter().map(Change::queued_bytes).sum();
        let mut behind = self.queue.behind.lock();
        self.sent_marks.lock().insert(shard, mark.clone());
        if behind.contains(&shard) {
            return;
        }
        let queued = self.queue.bytes.load(Ordering::SeqCst);
        if queued + bytes > self.queue.limit.load(Ordering::SeqCst) {
            tracing::warn!(
                shard,
                queued_bytes = queued,
                "search index: the indexing thread is behind; the shard's part is to be made again"
            );
            behind.insert(shard);
            self.send(Job::Reindex { shard, mark, source: source() });
            return;
        }
        self.queue.bytes.fetch_add(bytes, Ordering::SeqCst);
        self.send(Job::Apply { shard, changes, mark, bytes });
    }

    /// Replaces shard `shard`'s part of the index with what `source` gives,
    /// which is its content as of `mark`.
    pub fn reindex(&self, shard: u32, mark: String, source: Source) {
        // Said once it is done (with the count): a new index does this for
        // every shard, and an empty shard's is not news.
        tracing::debug!(shard, "search index: the shard's part is made again from its room logs");
        self.sent_marks.lock().insert(shard, mark.clone());
        self.send(Job::Reindex { shard, mark, source });
    }

    /// Waits until every change given before the call is searchable.
    pub async fn refresh(&self) -> Result<(), SearchError> {
        let target = self.sent.load(Ordering::SeqCst);
        let mut visible = self.visible.clone();
        if *visible.borrow() >= target {
            return Ok(());
        }
        let _one = self.refreshing.lock().await;
        if *visible.borrow() >= target {
            return Ok(());
        }
        self.send(Job::Commit);
        match tokio::time::timeout(REFRESH_TIMEOUT, visible.wait_for(|v| *v >= target)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(_)) => Err(SearchError::NotReady("the indexing thread stopped".into())),
            Err(_) => Err(SearchError::NotReady(format!(
                "still indexing after {} s (a shard is being indexed again)",
                REFRESH_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The newest `limit` messages of `rooms` holding every word of
    /// `words`, newest first. Blocking: call it off the async threads.
    pub fn search(&self, rooms: &[u64], words: &[String], limit: usize) -> Result<Vec<Hit>, SearchError> {
        if rooms.is_empty() || words.is_empty() || limit == 0 {
            return Ok(Vec::new());
        }
        let f = self.fields;
        let mut clauses: Vec<(Occur, Box<dyn Query>)> = words
            .iter()
            .map(|w| {
                let term = Term::from_field_text(f.body, w);
                (Occur::Must, Box::new(TermQuery::new(term, IndexRecordOption::Basic)) as Box<dyn Query>)
            })
            .collect();
        let searcher = self.reader.searcher();
        let top = TopDocs::with_limit(limit).order_by_u64_field("ts", tantivy::Order::Desc);
        let found = if rooms.len() <= ROOMS_AS_TERMS {
            let in_rooms = TermSetQuery::new(rooms.iter().map(|r| Term::from_field_u64(f.room, *r)));
            clauses.push((Occur::Must, Box::new(in_rooms)));
            searcher.search(&BooleanQuery::new(clauses), &top)?
        } else {
            let rooms: Arc<FxHashSet<u64>> = Arc::new(rooms.iter().copied().collect());
            let in_rooms = FilterCollector::new("room".to_string(), move |room: u64| rooms.contains(&room), top);
            searcher.search(&BooleanQuery::new(clauses), &in_rooms)?
        };
        let mut hits = Vec::with_capacity(found.len());
        for (ts, address) in found {
            let segment = searcher.segment_reader(address.segment_ord);
            let room = segment.fast_fields().u64("room")?.first(address.doc_id);
            let seq = segment.fast_fields().u64("seq")?.first(address.doc_id);
            if let (Some(room_key), Some(seq)) = (room, seq) {
                hits.push(Hit { room_key, seq, ts: ts.unwrap_or(0) });
            }
        }
        Ok(hits)
    }

    /// The words of a query as the index has them (lower-cased Unicode
    /// words), or why the query is refused.
    pub fn words(&self, q: &str) -> Result<Vec<String>, QueryError> {
        query::words(q)
    }

    /// Documents in the index as last committed (for tests and benches).
    pub fn documents(&self) -> u64 {
        self.reader.searcher().num_docs()
    }

    /// Whether the last committed index holds a document of message
    /// (room, seq) (for tests).
    pub fn holds(&self, room_key: u64, seq: u64) -> bool {
        let query = TermQuery::new(self.fields.id(room_key, seq), IndexRecordOption::Basic);
        self.reader.searcher().search(&query, &tantivy::collector::Count).is_ok_and(|n| n > 0)
    }
}

/// Opens the index in `dir` if it is there, readable and of this shape.
fn open_existing(dir: &Path, schema: &Schema) -> Result<(Index, Payload), String> {
    if !dir.join("meta.json").exists() {
        return Err("no index yet".into());
    }
    let index = Index::open_in_dir(dir).map_err(|e| e.to_string())?;
    if index.schema() != *schema {
        return Err("written with another schema".into());
    }
    let metas = index.load_metas().map_err(|e| e.to_string())?;
    let payload: Payload = match metas.payload {
        Some(p) => serde_json::from_str(&p).map_err(|e| format!("unreadable commit payload: {e}"))?,
        None => Payload { version: SCHEMA_VERSION, ..Payload::default() },
    };
    if payload.version != SCHEMA_VERSION {
        return Err(format!("schema version {} (this build writes {SCHEMA_VERSION})", payload.version));
    }
    Ok((index, payload))
}

/// The indexing thread's state.
struct Indexer {
    fields: Fields,
    writer: IndexWriter<TantivyDocument>,
    reader: IndexReader,
    /// What the next commit records.
    payload: Payload,
    queue: Arc<Queue>,
    /// The last job done.
    done: u64,
    /// Changes made since the last commit.
    dirty: bool,
    visible: tokio::sync::watch::Sender<u64>,
    /// Per shard indexed again, per room, the last seq the re-index read.
    /// Applies queued after a re-index may repeat messages it read already
    /// (they were in the store when it read); those are skipped, so a new
    /// message costs no delete (which cost a third of a one-room flood's
    /// CPU: every delete is looked up in every segment).
    read_upto: FxHashMap<u32, FxHashMap<u64, u64>>,
}

impl Indexer {
    fn run(mut self, jobs: mpsc::Receiver<(u64, Job)>) {
        let mut last_commit = Instant::now();
        loop {
            match jobs.recv_timeout(COMMIT_EVERY) {
                Ok((n, job)) => {
                    let asked = matches!(job, Job::Commit);
                    self.run_job(job);
                    self.done = n;
                    // A search waits: take what else is queued, then commit.
                    if asked {
                        while let Ok((n, job)) = jobs.try_recv() {
                            self.run_job(job);
                            self.done = n;
                        }
                        self.commit();
                        last_commit = Instant::now();
                    }
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    self.commit();
                    return;
                }
            }
            if last_commit.elapsed() >= COMMIT_EVERY {
                self.commit();
                last_commit = Instant::now();
            }
        }
    }

    fn run_job(&mut self, job: Job) {
        match job {
            Job::Apply { shard, changes, mark, bytes } => {
                for change in changes {
                    self.apply_change(shard, change);
                }
                self.queue.bytes.fetch_sub(bytes, Ordering::SeqCst);
                self.payload.marks.insert(shard, mark);
                self.dirty = true;
            }
            Job::Reindex { shard, mark, source } => {
                // Before the store is read: an apply from now on is queued
                // (after this job); one dropped before wrote the store first.
                self.queue.behind.lock().remove(&shard);
                self.writer.delete_term(Term::from_field_u64(self.fields.shard, u64::from(shard)));
                let mut added = 0u64;
                let mut read = FxHashMap::default();
                let fed = source(&mut |change| {
                    added += 1;
                    if let Change::Put { room_key, seq, .. } = &change {
                        let last = read.entry(*room_key).or_insert(0);
                        *last = (*last).max(*seq);
                    }
                    self.change(shard, change);
                });
                self.read_upto.insert(shard, read);
                match fed {
                    Ok(()) => {
                        if added > 0 {
                            tracing::info!(shard, messages = added, "search index: the shard's part is made again");
                        } else {
                            tracing::debug!(shard, "search index: the shard's part is made again, empty");
                        }
                        self.payload.marks.insert(shard, mark);
                    }
                    Err(e) => {
                        // Without its mark, the shard is indexed again when it next opens.
                        tracing::error!(shard, error = %e, "search index: the shard's room logs could not be read");
                        self.payload.marks.remove(&shard);
                    }
                }
                self.dirty = true;
            }
            Job::Commit => {}
        }
    }

    /// An applied change; one a re-index of the shard read already is
    /// skipped.
    fn apply_change(&mut self, shard: u32, change: Change) {
        if let Some(read) = self.read_upto.get_mut(&shard) {
            match &change {
                Change::Put { room_key, seq, .. } => match read.get(room_key) {
                    Some(last) if seq <= last => return,
                    // A room's seqs only grow: none of its next puts was read.
                    Some(_) => {
                        read.remove(room_key);
                    }
                    None => {}
                },
                Change::DropRoom { room_key } => {
                    read.remove(room_key);
                }
                Change::Edit { .. } | Change::Remove { .. } => {}
            }
            if read.is_empty() {
                self.read_upto.remove(&shard);
            }
        }
        self.change(shard, change);
    }

    fn change(&mut self, shard: u32, change: Change) {
        let f = self.fields;
        match change {
            Change::Put { room_key, seq, ts, body } => self.add(shard, room_key, seq, ts, &body),
            Change::Edit { room_key, seq, ts, body } => {
                self.writer.delete_term(f.id(room_key, seq));
                self.add(shard, room_key, seq, ts, &body);
            }
            Change::Remove { room_key, seq } => {
                self.writer.delete_term(f.id(room_key, seq));
            }
            Change::DropRoom { room_key } => {
                self.writer.delete_term(Term::from_field_u64(f.room, room_key));
            }
        }
    }

    fn add(&mut self, shard: u32, room_key: u64, seq: u64, ts: u64, body: &str) {
        let f = self.fields;
        let mut doc = TantivyDocument::new();
        doc.add_text(f.body, body);
        doc.add_u64(f.room, room_key);
        doc.add_u64(f.shard, u64::from(shard));
        doc.add_bytes(f.id, &id_bytes(room_key, seq));
        doc.add_u64(f.seq, seq);
        doc.add_u64(f.ts, ts);
        if let Err(e) = self.writer.add_document(doc) {
            tracing::error!(error = %e, "search index: a message could not be added");
        }
    }

    fn commit(&mut self) {
        if !self.dirty {
            self.visible.send_replace(self.done);
            return;
        }
        let payload = match serde_json::to_string(&self.payload) {
            Ok(p) => p,
            Err(e) => {
                tracing::error!(error = %e, "search index: the commit payload could not be written");
                return;
            }
        };
        let committed = self.writer.prepare_commit().and_then(|mut prepared| {
            prepared.set_payload(&payload);
            prepared.commit()
        });
        match committed.and_then(|_| self.reader.reload()) {
            Ok(()) => {
                self.dirty = false;
                self.visible.send_replace(self.done);
            }
            Err(e) => tracing::error!(error = %e, "search index: commit failed; retrying at the next"),
        }
    }
}

impl Drop for SearchIndex {
    fn drop(&mut self) {
        // Closing the queue makes the thread commit and stop.
        let (tx, _) = mpsc::channel();
        drop(std::mem::replace(&mut *self.jobs.lock(), tx));
        if let Some(thread) = self.thread.take()
            && thread.join().is_err()
        {
            tracing::error!("the search indexing thread panicked");
        }
    }
}

#[cfg(test)]
mod tests;
