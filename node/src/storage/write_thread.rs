//! One thread that writes a store for many writers: the batches queued
//! while it was busy go into one transaction, and the flushes queued
//! meanwhile share one fsync. Every Raft group of a node writes its log
//! (and every shard its state machine) through one of these, so a round of
//! many shards costs one transaction and one fsync instead of one each.
//!
//! Order: a batch is written after every batch queued before it, and a
//! flush covers every batch queued before it.

use std::sync::mpsc;

use tokio::sync::oneshot;

use super::Batch;
use super::Store;

/// Called once a flush is done (or failed).
pub type FlushDone = Box<dyn FnOnce(Result<(), String>) + Send>;

enum Job {
    Write(Batch, oneshot::Sender<Result<(), String>>),
    Flush(FlushDone),
}

/// A handle to the write thread of one store (clones share the thread).
#[derive(Clone)]
pub struct WriteThread(mpsc::Sender<Job>);

impl WriteThread {
    /// Starts the thread, named `name`; it ends when the last handle is dropped.
    pub fn start(store: Store, name: &str) -> std::io::Result<Self> {
        let (tx, rx) = mpsc::channel::<Job>();
        std::thread::Builder::new().name(name.into()).spawn(move || {
            while let Ok(first) = rx.recv() {
                let mut combined = Batch::new();
                let mut written = Vec::new();
                let mut flushes = Vec::new();
                for job in std::iter::once(first).chain(rx.try_iter()) {
                    match job {
                        Job::Write(batch, done) => {
                            combined.ops.extend(batch.ops);
                            written.push(done);
                        }
                        Job::Flush(done) => flushes.push(done),
                    }
                }
                let flushing = !flushes.is_empty();
                let wrote = (!written.is_empty()).then(|| {
                    // With a flush queued, one durable commit instead of a
                    // commit and then an empty durable one: a Raft append
                    // queues its entries and their flush together.
                    let result = if flushing { store.write_durable(combined) } else { store.write(combined) };
                    let result = result.map_err(|e| e.to_string());
                    for done in written {
                        let _ = done.send(result.clone());
                    }
                    result
                });
                if flushing {
                    // Every write queued before these flushes is in the store
                    // now. With nothing left to cover, the engine's flush
                    // costs no fsync (a heartbeat's empty append).
                    let result = wrote.unwrap_or_else(|| store.flush().map_err(|e| e.to_string()));
                    for done in flushes {
                        done(result.clone());
                    }
                }
            }
        })?;
        Ok(Self(tx))
    }

    /// Writes `batch` atomically (with whatever else is queued); answers
    /// once it is readable, not yet durable.
    pub async fn write(&self, batch: Batch) -> std::io::Result<()> {
        if batch.is_empty() {
            return Ok(());
        }
        let (done, written) = oneshot::channel();
        self.0.send(Job::Write(batch, done)).map_err(|_| gone())?;
        written.await.map_err(|_| gone())?.map_err(std::io::Error::other)
    }

    /// Writes `batch` like [`WriteThread::write`] and calls `durable` once
    /// it is durable. Queued together, the two usually cost one durable
    /// commit.
    pub async fn write_and_flush(&self, batch: Batch, durable: FlushDone) -> std::io::Result<()> {
        if batch.is_empty() {
            self.after_next_flush(durable);
            return Ok(());
        }
        let (done, written) = oneshot::channel();
        if self.0.send(Job::Write(batch, done)).is_err() {
            durable(Err("the store's write thread is gone".into()));
            return Err(gone());
        }
        self.after_next_flush(durable);
        written.await.map_err(|_| gone())?.map_err(std::io::Error::other)
    }

    /// Calls `done` once every batch queued so far is durable.
    pub fn after_next_flush(&self, done: FlushDone) {
        if let Err(mpsc::SendError(Job::Flush(done))) = self.0.send(Job::Flush(done)) {
            done(Err("the store's write thread is gone".into()));
        }
    }
}

fn gone() -> std::io::Error {
    std::io::Error::other("the store's write thread is gone")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::EngineKind;

    fn put(value: u8) -> Batch {
        let mut b = Batch::new();
        b.put("t", b"k".to_vec(), vec![value]);
        b
    }

    #[tokio::test]
    async fn batches_land_in_queue_order_and_a_flush_comes_after_them() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = crate::storage::open(EngineKind::Redb, &dir.path().join("s.redb")).expect("store");
        let writer = WriteThread::start(store.clone(), "test-writes").expect("thread");
        // Queued in this order (join! polls left to right): the later put wins.
        let (a, b, c) = tokio::join!(writer.write(put(1)), writer.write(put(2)), writer.write(Batch::new()));
        a.expect("first");
        b.expect("second");
        c.expect("an empty batch is a no-op");
        assert_eq!(store.get("t", b"k").expect("read"), Some(vec![2]));
        let (done, flushed) = oneshot::channel();
        writer.after_next_flush(Box::new(move |r| {
            let _ = done.send(r);
        }));
        assert_eq!(flushed.await.expect("called"), Ok(()));
    }
}
