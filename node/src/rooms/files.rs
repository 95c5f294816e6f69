//! The attachment files of one node: `<data>/attachments/<sha256 hex>`,
//! written through a temporary file in `tmp/` (fsynced, then renamed), so a
//! file under its final name is always whole. A file goes when no row of
//! tree [`super::attachments::FILE_USES`] names its content any more; one
//! that arrived for an upload whose row is not applied yet is pinned, so a
//! removal racing with that upload keeps it.

use std::collections::HashMap;
use std::io;
use std::ops::Bound;
use std::path::Path;
use std::path::PathBuf;
use std::time::Duration;
use std::time::Instant;

use parking_lot::Mutex;

use super::attachments::FILE_USES;
use super::attachments::Sha;
use crate::storage::Order;
use crate::storage::Store;

/// How long a received file stays pinned at most when its row never comes
/// (the upload failed after the bytes arrived).
const PIN_FOR: Duration = Duration::from_secs(3600);

/// A content a row of this node names and this node lacks (its copy did
/// not arrive with the upload, or the row came with a snapshot).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// The room whose row names it (its shard's replicas have it).
    pub room: String,
    /// The content.
    pub sha: Sha,
    /// Its length.
    pub size: u64,
}

/// A node's attachment files.
#[derive(Debug)]
pub struct Files {
    dir: PathBuf,
    tmp: PathBuf,
    pins: Mutex<HashMap<Sha, Instant>>,
    /// Where [`Files::want`] sends, once the node listens.
    wants: Mutex<Option<tokio::sync::mpsc::UnboundedSender<Wanted>>>,
}

impl Files {
    /// The files under `dir` (made if missing); temporary files left by a
    /// stop go.
    pub fn open(dir: PathBuf) -> io::Result<Self> {
        let tmp = dir.join("tmp");
        if tmp.exists() {
            std::fs::remove_dir_all(&tmp)?;
        }
        std::fs::create_dir_all(&tmp)?;
        Ok(Self { dir, tmp, pins: Mutex::new(HashMap::new()), wants: Mutex::new(None) })
    }

    /// The contents wanted from now on ([`Files::want`]), for the task that
    /// fetches them from other replicas.
    pub fn wanted(&self) -> tokio::sync::mpsc::UnboundedReceiver<Wanted> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.wants.lock() = Some(tx);
        rx
    }

    /// Asks for a content a row names, unless this node has it.
    pub fn want(&self, wanted: Wanted) {
        if self.has(&wanted.sha) {
            return;
        }
        if let Some(tx) = self.wants.lock().as_ref() {
            let _ = tx.send(wanted);
        }
    }

    /// Where the content with this hash is kept.
    pub fn path(&self, sha: &Sha) -> PathBuf {
        self.dir.join(hex::encode(sha))
    }

    /// Whether this node holds the content.
    pub fn has(&self, sha: &Sha) -> bool {
        self.path(sha).is_file()
    }

    /// A new temporary file to write an arriving content into.
    pub async fn temp(&self) -> io::Result<(TempFile, tokio::fs::File)> {
        let path = self.tmp.join(format!("{:016x}", rand::random::<u64>()));
        let file = tokio::fs::File::create(&path).await?;
        Ok((TempFile { path: Some(path) }, file))
    }

    /// Makes a written and synced temporary file the content `sha`, pinned
    /// until its row is applied ([`Files::unpin`]).
    pub async fn keep(&self, mut tmp: TempFile, sha: &Sha) -> io::Result<()> {
        let Some(from) = tmp.path.take() else { return Err(io::Error::other("a temporary file kept twice")) };
        self.pins.lock().insert(*sha, Instant::now());
        tokio::fs::rename(&from, self.path(sha)).await?;
        // The rename itself must survive a power cut.
        let dir = self.dir.clone();
        tokio::task::spawn_blocking(move || std::fs::File::open(dir)?.sync_all()).await.map_err(io::Error::other)?
    }

    /// The content's row is applied here: its file goes by the rows from now on.
    pub fn unpin(&self, sha: &Sha) {
        self.pins.lock().remove(sha);
    }

    /// Removes the files of these contents that no row names any more (and
    /// that are not pinned). Runs blocking store reads: call from a
    /// blocking context or where the caller already reads the store.
    pub fn collect(&self, store: &Store, shas: &[Sha]) {
        let now = Instant::now();
        for sha in shas {
            let pinned = {
                let mut pins = self.pins.lock();
                pins.retain(|_, at| now.duration_since(*at) < PIN_FOR);
                pins.contains_key(sha)
            };
            if pinned {
                continue;
            }
            // Every use key is the sha and 24 more bytes.
            let end = [&sha[..], &[0xff; 24]].concat();
            let used =
                store.range(FILE_USES, Bound::Included(&sha[..]), Bound::Included(&end[..]), Order::Ascending, 1);
            match used {
                Ok(rows) if rows.iter().any(|(k, _)| k.starts_with(sha)) => {}
                Ok(_) => match std::fs::remove_file(self.path(sha)) {
                    Ok(()) => tracing::debug!(sha = %hex::encode(sha), "an attachment file no room names is removed"),
                    Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                    Err(e) => tracing::warn!(sha = %hex::encode(sha), error = %e, "cannot remove an attachment file"),
                },
                Err(e) => tracing::warn!(error = %e, "cannot read attachment uses; the file stays"),
            }
        }
    }

    /// Removes every file no row names (those left by a shard that moved
    /// away, or by a removal a stop interrupted). Not at start: the store
    /// may trail the shards' logs until they replayed what a crash lost,
    /// and a row not replayed yet would cost its file.
    pub fn sweep(&self, store: &Store) -> io::Result<()> {
        let mut shas = Vec::new();
        for entry in std::fs::read_dir(&self.dir)?.flatten() {
            let mut sha = [0u8; 32];
            if hex::decode_to_slice(entry.file_name().to_string_lossy().as_bytes(), &mut sha).is_ok() {
                shas.push(sha);
            }
        }
        self.collect(store, &shas);
        Ok(())
    }

    /// Asks for every content a row names and this node lacks ([`Files::want`]).
    pub fn scrub(&self, store: &Store) -> io::Result<()> {
        let rows = store
            .range(super::attachments::ATTACHMENTS, Bound::Unbounded, Bound::Unbounded, Order::Ascending, usize::MAX)
            .map_err(io::Error::other)?;
        for (_, value) in rows {
            if let Ok(row) = super::attachments::decode(&value)
                && row.live()
            {
                self.want(Wanted { room: row.room, sha: row.sha, size: row.size });
            }
        }
        Ok(())
    }

    /// The directory (for tests).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// A temporary file, removed when dropped unless kept.
#[derive(Debug)]
pub struct TempFile {
    path: Option<PathBuf>,
}

impl TempFile {
    /// Where it is (empty once kept).
    pub fn path(&self) -> &Path {
        self.path.as_deref().unwrap_or(Path::new(""))
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rooms::attachments;
    use crate::storage;
    use crate::storage::Batch;
    use crate::storage::EngineKind;

    async fn write(files: &Files, sha: &Sha) {
        let (tmp, mut f) = files.temp().await.expect("temp");
        tokio::io::AsyncWriteExt::write_all(&mut f, b"x").await.expect("write");
        drop(f);
        files.keep(tmp, sha).await.expect("keep");
    }

    /// A file goes once no use names it and it is not pinned; a sweep
    /// takes every unnamed file; a scrub asks for the live rows' missing ones.
    #[tokio::test]
    async fn attachment_files_follow_their_uses() {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = storage::open(EngineKind::Redb, &dir.path().join("rooms.db")).expect("store");
        let files = Files::open(dir.path().join("attachments")).expect("files");
        let (used, pinned, loose) = ([1u8; 32], [2u8; 32], [3u8; 32]);
        for sha in [&used, &pinned, &loose] {
            write(&files, sha).await;
        }
        let mut batch = Batch::new();
        batch.put(FILE_USES, attachments::use_key(&used, 7, &[9; 16]), Vec::new());
        store.write(batch).expect("write");
        files.unpin(&used);
        files.unpin(&loose);
        files.collect(&store, &[used, pinned, loose]);
        assert!(files.has(&used), "named by a use");
        assert!(files.has(&pinned), "pinned: its row is on its way");
        assert!(!files.has(&loose), "named by nothing");
        files.unpin(&pinned);
        files.sweep(&store).expect("sweep");
        assert!((files.has(&used), files.has(&pinned)) == (true, false), "a sweep takes what no use names");

        let mut wanted = files.wanted();
        let row = |sha: Sha, retired_by: Option<u64>| attachments::StoredAttachment {
            sha,
            name: "n".into(),
            mime: "text/plain".into(),
            size: 1,
            uploader: "ann".into(),
            room: "lobby".into(),
            carriers: Vec::new(),
            retired_by,
        };
        let mut batch = Batch::new();
        for (id, sha, retired) in [(1u8, used, None), (2, [4; 32], None), (3, [5; 32], Some(1))] {
            batch.put(attachments::ATTACHMENTS, attachments::attachment_key(7, &[id; 16]).to_vec(), {
                attachments::encode(&row(sha, retired))
            });
        }
        store.write(batch).expect("write");
        files.scrub(&store).expect("scrub");
        let w = wanted.try_recv().expect("one wanted");
        assert_eq!((w.room.as_str(), w.sha, w.size), ("lobby", [4; 32], 1));
        assert!(wanted.try_recv().is_err(), "held, or retired: not wanted");
    }
}
