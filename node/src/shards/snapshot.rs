//! Shard snapshots as files: a header, then per room its id and last seq,
//! its messages up to that seq and the dedup entries pointing at them; each
//! record length-prefixed postcard. A snapshot is built while the shard goes
//! on applying, from the rooms and last seqs captured when it was asked for
//! (a later deletion may already show in it: replaying that deletion over
//! it changes nothing), so building never stalls the shard and never holds
//! the shard in memory; sending and installing stream the file.
//!
//! Installing is restartable: the file is kept and named in tree
//! `shard_installing` before the shard's old rooms are touched, and a shard
//! found with that mark when it opens finishes the install first.

use std::collections::HashSet;
use std::fs::File;
use std::io;
use std::io::BufReader;
use std::io::BufWriter;
use std::io::Read;
use std::io::Write;
use std::ops::Bound;
use std::path::Path;
use std::path::PathBuf;
use std::sync::Arc;

use parking_lot::Mutex;
use serde::Deserialize;
use serde::Serialize;

use super::machine::Applied;
use super::machine::Lease;
use super::machine::SHARD_APPLIED;
use super::machine::SHARD_ROOMS;
use super::machine::drop_room;
use super::machine::shard_room_key;
use super::placement::ShardId;
use super::types::ShardTypes;
use super::types::SnapshotMeta;
use crate::raft::types::decode;
use crate::raft::types::encode;
use crate::raft::types::io_err;
use crate::rooms::StoredMessage;
use crate::rooms::attachments;
use crate::rooms::attachments::AttachmentId;
use crate::rooms::record;
use crate::rooms::seen::SeenFilter;
use crate::rooms::stored_last;
use crate::storage::Batch;
use crate::storage::Order;
use crate::storage::Store;

/// Tree of each shard's newest snapshot: key shard, value (meta, file name).
const SHARD_SNAPSHOT: &str = "shard_snapshot";
/// Tree of installs under way: key shard, value (meta, file name).
const SHARD_INSTALLING: &str = "shard_installing";
/// The file format's version.
const VERSION: u32 = 1;
/// Largest record accepted from a file (a message is at most a few KiB).
const MAX_RECORD: usize = 1 << 20;
/// Store operations per write while installing.
const INSTALL_BATCH: usize = 2_000;
/// Rows read per store scan while building.
const SCAN: usize = 1_000;

/// One record of a snapshot file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum Record {
    Header {
        version: u32,
        shard: ShardId,
    },
    Room {
        room_key: u64,
        room: String,
        last: u64,
    },
    /// A message in the second record format (files written before
    /// attachments); [`Record::Stored`] since.
    Message {
        room_key: u64,
        seq: u64,
        message: record::SecondFormat,
    },
    Dedup {
        key: Vec<u8>,
        seq: u64,
    },
    End,
    /// A message as its store record (any format [`record::decode`] reads).
    Stored {
        room_key: u64,
        seq: u64,
        record: Vec<u8>,
    },
    /// An attachment row of the room ([`attachments::encode`]).
    Attachment {
        room_key: u64,
        id: AttachmentId,
        row: Vec<u8>,
    },
}

/// A snapshot's data: a file on this node.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
}

impl SnapshotFile {
    /// A snapshot file that exists.
    pub fn open(path: PathBuf) -> io::Result<Self> {
        std::fs::metadata(&path)?;
        Ok(Self { path })
    }

    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A new, empty file for a snapshot arriving from the leader.
    pub fn incoming(dir: &Path, shard: ShardId) -> io::Result<(Self, File)> {
        let path = dir.join(format!("shard-{shard}-incoming-{}.snap", rand::random::<u64>()));
        let file = File::create(&path)?;
        Ok((Self { path }, file))
    }
}

fn write_record(out: &mut impl Write, record: &Record) -> io::Result<()> {
    let bytes = encode("snapshot record", record)?;
    let len = u32::try_from(bytes.len()).map_err(|_| io::Error::other("snapshot record over 4 GiB"))?;
    out.write_all(&len.to_le_bytes())?;
    out.write_all(&bytes)
}

fn read_record(input: &mut impl Read) -> io::Result<Record> {
    let mut len = [0u8; 4];
    input.read_exact(&mut len)?;
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_RECORD {
        return Err(io::Error::new(io::ErrorKind::InvalidData, format!("snapshot record of {len} bytes")));
    }
    let mut bytes = vec![0u8; len];
    input.read_exact(&mut bytes)?;
    decode("snapshot file", &bytes)
}

/// A committed index names one state of the shard, so it names the file.
fn file_name(shard: ShardId, meta: &SnapshotMeta) -> String {
    format!("shard-{shard}-{}.snap", meta.last_log_id.map_or(0, |id| id.index))
}

/// The newest snapshot of `shard`, if its file is still there.
pub fn load_current(store: &Store, shard: ShardId, dir: &Path) -> io::Result<Option<(SnapshotMeta, PathBuf)>> {
    let Some(bytes) = store.get(SHARD_SNAPSHOT, &shard.to_be_bytes()).map_err(io_err)? else { return Ok(None) };
    let (meta, name): (SnapshotMeta, String) = decode(SHARD_SNAPSHOT, &bytes)?;
    let path = dir.join(name);
    Ok(path.exists().then_some((meta, path)))
}

/// The rooms `shard` holds: (room key, room id).
pub(crate) fn rooms_of(store: &Store, shard: ShardId) -> io::Result<Vec<(u64, String)>> {
    let start = shard_room_key(shard, 0);
    let end = shard_room_key(shard, u64::MAX);
    let rows = store
        .range(SHARD_ROOMS, Bound::Included(&start[..]), Bound::Included(&end[..]), Order::Ascending, usize::MAX)
        .map_err(io_err)?;
    rows.into_iter()
        .map(|(k, v)| {
            let room_key =
                k.get(4..12).and_then(|b| b.try_into().ok()).map(u64::from_be_bytes).ok_or_else(|| {
                    io::Error::new(io::ErrorKind::InvalidData, "shard_rooms: key of the wrong length")
                })?;
            let room = String::from_utf8(v).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            Ok((room_key, room))
        })
        .collect()
}

/// What a snapshot is built from, captured when openraft asked for it.
pub struct Job {
    shard: ShardId,
    store: Store,
    dir: PathBuf,
    meta: SnapshotMeta,
    rooms: Vec<(u64, String, u64)>,
    current: Arc<Mutex<Option<(SnapshotMeta, PathBuf)>>>,
    /// The state machine's lease, held until the file is written.
    _lease: Option<Lease>,
}

/// Builds one snapshot (see the module's doc).
pub struct Builder {
    job: io::Result<Job>,
}

impl Builder {
    /// Captures the shard's rooms and their last seqs now, as of `meta`.
    pub fn new(
        shard: ShardId,
        store: Store,
        dir: PathBuf,
        meta: SnapshotMeta,
        current: Arc<Mutex<Option<(SnapshotMeta, PathBuf)>>>,
        lease: Option<Lease>,
    ) -> Self {
        let rooms = rooms_of(&store, shard).and_then(|rooms| {
            rooms.into_iter().map(|(key, room)| Ok((key, room, stored_last(&store, key).map_err(io_err)?))).collect()
        });
        Self { job: rooms.map(|rooms| Job { shard, store, dir, meta, rooms, current, _lease: lease }) }
    }

    /// The job, once.
    pub fn take(&mut self) -> io::Result<Job> {
        std::mem::replace(&mut self.job, Err(io::Error::other("snapshot already built")))
    }
}

impl Job {
    /// Writes the file, makes the shard's state durable, and records the
    /// snapshot as the shard's newest.
    pub fn build(self) -> io::Result<openraft::type_config::alias::SnapshotOf<ShardTypes, SnapshotFile>> {
        let name = file_name(self.shard, &self.meta);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut out = BufWriter::new(File::create(&tmp)?);
        write_record(&mut out, &Record::Header { version: VERSION, shard: self.shard })?;
        for (room_key, room, last) in &self.rooms {
            write_record(&mut out, &Record::Room { room_key: *room_key, room: room.clone(), last: *last })?;
            let mut from = 1u64;
            while from <= *last {
                let (start, end) = (record::message_key(*room_key, from), record::message_key(*room_key, *last));
                let rows = self
                    .store
                    .range(
                        record::MESSAGES,
                        Bound::Included(&start[..]),
                        Bound::Included(&end[..]),
                        Order::Ascending,
                        SCAN,
                    )
                    .map_err(io_err)?;
                let Some((last_key, _)) = rows.last() else { break };
                from = record::parse_message_key(last_key).map_or(u64::MAX, |(_, s)| s.saturating_add(1));
                for (k, v) in rows {
                    let seq = record::parse_message_key(&k).map_or(0, |(_, s)| s);
                    // Refused here rather than in the install of a replica.
                    record::decode(&v).map_err(io_err)?;
                    write_record(&mut out, &Record::Stored { room_key: *room_key, seq, record: v })?;
                }
            }
            let (start, end) = (record::room_prefix(*room_key), record::room_end(*room_key));
            for (key, row) in attachments::room_rows(&self.store, *room_key).map_err(io_err)? {
                if let Some((_, id)) = attachments::parse_attachment_key(&key) {
                    write_record(&mut out, &Record::Attachment { room_key: *room_key, id, row })?;
                }
            }
            let dedup = self
                .store
                .range(
                    record::DEDUP,
                    Bound::Included(&start[..]),
                    Bound::Excluded(&end[..]),
                    Order::Ascending,
                    usize::MAX,
                )
                .map_err(io_err)?;
            for (key, v) in dedup {
                let seq = record::decode_seq(&v).map_err(io_err)?;
                // A dedup entry of a later message would make its replay a no-op.
                if seq <= *last {
                    write_record(&mut out, &Record::Dedup { key, seq })?;
                }
            }
        }
        write_record(&mut out, &Record::End)?;
        let file = out.into_inner().map_err(|e| e.into_error())?;
        file.sync_all()?;
        let path = self.dir.join(&name);
        std::fs::rename(&tmp, &path)?;
        // The state this snapshot stands for must outlive the log it lets
        // Raft purge.
        self.store.flush().map_err(io_err)?;
        set_current(&self.store, self.shard, &self.dir, &self.meta, &name)?;
        *self.current.lock() = Some((self.meta.clone(), path.clone()));
        Ok(openraft::type_config::alias::SnapshotOf::<ShardTypes, SnapshotFile> {
            meta: self.meta,
            snapshot: SnapshotFile { path },
        })
    }
}

/// Records `name` as the shard's newest snapshot and removes its older files.
fn set_current(store: &Store, shard: ShardId, dir: &Path, meta: &SnapshotMeta, name: &str) -> io::Result<()> {
    let mut batch = Batch::new();
    batch.put(SHARD_SNAPSHOT, shard.to_be_bytes().to_vec(), encode("snapshot meta", &(meta, name))?);
    store.write_durable(batch).map_err(io_err)?;
    let prefix = format!("shard-{shard}-");
    for entry in std::fs::read_dir(dir)?.flatten() {
        let other = entry.file_name().to_string_lossy().into_owned();
        if other.starts_with(&prefix) && other != name && !other.contains("incoming") {
            let _ = std::fs::remove_file(entry.path());
        }
    }
    Ok(())
}

/// Removes the shard's snapshot records and files (its copy here goes).
pub fn discard(store: &Store, shard: ShardId, dir: &Path) -> io::Result<()> {
    let mut batch = Batch::new();
    batch.delete(SHARD_SNAPSHOT, shard.to_be_bytes().to_vec());
    batch.delete(SHARD_INSTALLING, shard.to_be_bytes().to_vec());
    store.write_durable(batch).map_err(io_err)?;
    let prefix = format!("shard-{shard}-");
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                if entry.file_name().to_string_lossy().starts_with(&prefix) {
                    std::fs::remove_file(entry.path())?;
                }
            }
            Ok(())
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// Replaces the shard's rooms with the snapshot's; answers the rooms it
/// holds now as (room key, room id, last seq). Each dedup key written is
/// added to `dedup_filter` first.
pub fn install(
    store: &Store,
    shard: ShardId,
    dir: &Path,
    meta: &SnapshotMeta,
    file: SnapshotFile,
    dedup_filter: &SeenFilter,
) -> io::Result<Vec<(u64, String, u64)>> {
    let name = file_name(shard, meta);
    let path = dir.join(&name);
    if file.path != path {
        std::fs::rename(&file.path, &path)?;
    }
    let mut mark = Batch::new();
    mark.put(SHARD_INSTALLING, shard.to_be_bytes().to_vec(), encode("install mark", &(meta, &name))?);
    store.write_durable(mark).map_err(io_err)?;
    let rooms = replace_rooms(store, shard, &path, dedup_filter)?;
    let mut done = Batch::new();
    let applied = Applied { last: meta.last_log_id, membership: meta.last_membership.clone() };
    done.put(SHARD_APPLIED, shard.to_be_bytes().to_vec(), encode("shard applied state", &applied)?);
    done.delete(SHARD_INSTALLING, shard.to_be_bytes().to_vec());
    store.write_durable(done).map_err(io_err)?;
    set_current(store, shard, dir, meta, &name)?;
    Ok(rooms)
}

/// Finishes an install a crash interrupted, if there is one.
pub fn resume_install(store: &Store, shard: ShardId, dir: &Path, dedup_filter: &SeenFilter) -> io::Result<()> {
    let Some(bytes) = store.get(SHARD_INSTALLING, &shard.to_be_bytes()).map_err(io_err)? else { return Ok(()) };
    let (meta, name): (SnapshotMeta, String) = decode(SHARD_INSTALLING, &bytes)?;
    tracing::warn!(shard, snapshot = %name, "finishing a snapshot install a stop interrupted");
    install(store, shard, dir, &meta, SnapshotFile::open(dir.join(name))?, dedup_filter).map(|_| ())
}

fn replace_rooms(
    store: &Store,
    shard: ShardId,
    path: &Path,
    dedup_filter: &SeenFilter,
) -> io::Result<Vec<(u64, String, u64)>> {
    let mut input = BufReader::new(File::open(path)?);
    match read_record(&mut input)? {
        Record::Header { version: VERSION, shard: s } if s == shard => {}
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("not a version {VERSION} snapshot of shard {shard}: {other:?}"),
            ));
        }
    }
    let mut batch = Batch::new();
    for (room_key, _) in rooms_of(store, shard)? {
        // Files no room names any more go at the node's next start (sweep).
        drop_room(store, &mut batch, shard, room_key)?;
    }
    let mut rooms = Vec::new();
    let mut seen = HashSet::new();
    loop {
        if batch.ops.len() >= INSTALL_BATCH {
            store.write(std::mem::take(&mut batch)).map_err(io_err)?;
        }
        match read_record(&mut input)? {
            Record::Header { .. } => return Err(io::Error::new(io::ErrorKind::InvalidData, "a second header")),
            Record::Room { room_key, room, last } => {
                if !seen.insert(room_key) {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, format!("room {room_key} twice")));
                }
                batch.put(SHARD_ROOMS, shard_room_key(shard, room_key).to_vec(), room.as_bytes().to_vec());
                batch.put(record::COMMITTED, record::room_prefix(room_key).to_vec(), last.to_be_bytes().to_vec());
                rooms.push((room_key, room, last));
            }
            Record::Message { room_key, seq, message } => {
                let message = StoredMessage::from(message);
                batch.put(record::MESSAGES, record::message_key(room_key, seq).to_vec(), record::encode(&message));
            }
            Record::Stored { room_key, seq, record: bytes } => {
                record::decode(&bytes).map_err(io_err)?;
                batch.put(record::MESSAGES, record::message_key(room_key, seq).to_vec(), bytes);
            }
            Record::Attachment { room_key, id, row } => {
                let decoded = attachments::decode(&row).map_err(io_err)?;
                batch.put(attachments::ATTACHMENTS, attachments::attachment_key(room_key, &id).to_vec(), row);
                // A tombstone names no file.
                if decoded.live() {
                    batch.put(attachments::FILE_USES, attachments::use_key(&decoded.sha, room_key, &id), Vec::new());
                }
            }
            Record::Dedup { key, seq } => {
                dedup_filter.insert(&key);
                batch.put(record::DEDUP, key, seq.to_be_bytes().to_vec());
            }
            Record::End => break,
        }
    }
    store.write(batch).map_err(io_err)?;
    Ok(rooms)
}
