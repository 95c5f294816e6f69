//! The metadata state machine: applies committed [`MetaRequest`]s to the
//! shared [`MetaState`], answers every entry, and keeps snapshots.
//!
//! The state itself lives in memory (it is small); what is durable is the Raft
//! log, the committed log id (see [`super::LogStore`]) and the latest
//! snapshot. On open the stored snapshot (if any) is loaded, and openraft then
//! re-applies the log from the snapshot up to the saved committed index.
//!
//! Snapshot layout (tree `raft_snapshot`, written in one durable batch):
//! - `meta`: postcard of `(last log id, last membership)`;
//! - `data`: the snapshot bytes, postcard of `SnapshotFile { version,
//!   last_applied, membership, state }`: self-describing, so a peer that
//!   receives the bytes can check them against the meta it was sent.
//!
//! [`MetaRequest`]: crate::meta::MetaRequest

use std::fmt::Debug;
use std::io;
use std::sync::Arc;

use futures_util::Stream;
use futures_util::TryStreamExt;
use openraft::EntryPayload;
use openraft::OptionalSend;
use openraft::RaftSnapshotBuilder;
use openraft::storage::EntryResponder;
use openraft::storage::RaftStateMachine;
use parking_lot::Mutex;
use parking_lot::RwLock;
use serde::Deserialize;
use serde::Serialize;

use super::types::LogId;
use super::types::Snapshot;
use super::types::SnapshotData;
use super::types::SnapshotMeta;
use super::types::StoredMembership;
use super::types::TypeConfig;
use super::types::blocking;
use super::types::decode;
use super::types::encode;
use super::types::io_err;
use crate::meta::MetaEffect;
use crate::meta::MetaOk;
use crate::meta::MetaState;
use crate::meta::MetaStateV1;
use crate::meta::MetaStateV2;
use crate::meta::MetaStateV3;
use crate::storage::Batch;
use crate::storage::Store;

/// Tree holding the current snapshot.
const SNAPSHOT: &str = "raft_snapshot";
const KEY_META: &[u8] = b"meta";
const KEY_DATA: &[u8] = b"data";
/// Bumped when [`SnapshotFile`] changes shape.
const SNAPSHOT_VERSION: u8 = 4;

/// Receives the effects of applied commands (close sockets, member events).
///
/// Called on the state machine's task after the state's write lock is
/// released, once per applied entry that produced effects, before that
/// entry's proposer gets its answer. It must not block: hand the effects to a
/// channel or spawn. Entries re-applied on restart deliver their effects
/// again, so consumers must tolerate repeats; installing a snapshot from the
/// leader delivers none (the state is replaced wholesale).
pub type EffectSink = Arc<dyn Fn(Vec<MetaEffect>) + Send + Sync>;

/// The snapshot bytes.
#[derive(Serialize, Deserialize)]
struct SnapshotFile<S> {
    version: u8,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: S,
}

/// The stored meta: `(last log id, last membership)`.
type StoredMeta = (Option<LogId>, StoredMembership);

/// Reads the current snapshot (meta and bytes) from the store.
fn load_snapshot(store: &Store) -> io::Result<Option<Snapshot>> {
    let meta = store.get(SNAPSHOT, KEY_META).map_err(io_err)?;
    let data = store.get(SNAPSHOT, KEY_DATA).map_err(io_err)?;
    match (meta, data) {
        (Some(meta), Some(data)) => {
            let (last_log_id, last_membership): StoredMeta = decode(SNAPSHOT, &meta)?;
            Ok(Some(Snapshot { meta: SnapshotMeta { last_log_id, last_membership }, snapshot: data }))
        }
        (None, None) => Ok(None),
        _ => Err(io::Error::new(io::ErrorKind::InvalidData, "raft_snapshot holds only half a snapshot")),
    }
}

/// Decodes snapshot bytes and checks them against their meta.
fn decode_snapshot(meta: &SnapshotMeta, data: &[u8]) -> io::Result<MetaState> {
    // Format 1 (before the layout) is read and converted; postcard puts the
    // version byte first.
    let (last_applied, membership, state) = match data.first() {
        Some(1) => {
            let file: SnapshotFile<MetaStateV1> = decode(SNAPSHOT, data)?;
            (file.last_applied, file.membership, MetaState::from(file.state))
        }
        Some(2) => {
            let file: SnapshotFile<MetaStateV2> = decode(SNAPSHOT, data)?;
            (file.last_applied, file.membership, MetaState::from(file.state))
        }
        Some(3) => {
            let file: SnapshotFile<MetaStateV3> = decode(SNAPSHOT, data)?;
            (file.last_applied, file.membership, MetaState::from(file.state))
        }
        Some(&SNAPSHOT_VERSION) => {
            let file: SnapshotFile<MetaState> = decode(SNAPSHOT, data)?;
            (file.last_applied, file.membership, file.state)
        }
        other => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("snapshot format {other:?} is not 1 to {SNAPSHOT_VERSION}"),
            ));
        }
    };
    if last_applied != meta.last_log_id || membership != meta.last_membership {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "snapshot data does not match its meta"));
    }
    Ok(state)
}

/// Stores `snapshot` durably as the current one. Unless `replace`, an older
/// snapshot never overwrites a newer one (a build may finish after an install).
///
/// `lock` serialises every snapshot write of this store.
fn save_snapshot(store: &Store, lock: &Mutex<()>, snapshot: &Snapshot, replace: bool) -> io::Result<()> {
    let _guard = lock.lock();
    if !replace && let Some(bytes) = store.get(SNAPSHOT, KEY_META).map_err(io_err)? {
        let (current, _): StoredMeta = decode(SNAPSHOT, &bytes)?;
        if current >= snapshot.meta.last_log_id {
            return Ok(());
        }
    }
    let meta: StoredMeta = (snapshot.meta.last_log_id, snapshot.meta.last_membership.clone());
    let mut batch = Batch::new();
    batch.put(SNAPSHOT, KEY_META, encode("snapshot meta", &meta)?);
    batch.put(SNAPSHOT, KEY_DATA, snapshot.snapshot.clone());
    store.write_durable(batch).map_err(io_err)
}

/// The metadata state machine openraft drives.
pub struct MetaStateMachine {
    state: Arc<RwLock<MetaState>>,
    /// The last applied index, readable at once by the node (openraft's
    /// metrics report it a moment later).
    applied_index: Arc<AppliedIndex>,
    last_applied: Option<LogId>,
    membership: StoredMembership,
    store: Store,
    snapshot_lock: Arc<Mutex<()>>,
    effects: EffectSink,
}

impl Debug for MetaStateMachine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MetaStateMachine")
            .field("last_applied", &self.last_applied)
            .field("membership", &self.membership)
            .finish_non_exhaustive()
    }
}

impl MetaStateMachine {
    /// Opens the state machine over `store`, starting from the stored
    /// snapshot if there is one (else from the empty state).
    pub fn open(store: Store, effects: EffectSink) -> io::Result<Self> {
        let (state, last_applied, membership) = match load_snapshot(&store)? {
            Some(snap) => {
                let state = decode_snapshot(&snap.meta, &snap.snapshot)?;
                (state, snap.meta.last_log_id, snap.meta.last_membership)
            }
            None => (MetaState::default(), None, StoredMembership::default()),
        };
        Ok(Self {
            state: Arc::new(RwLock::new(state)),
            applied_index: Arc::new(AppliedIndex::new(last_applied.map_or(0, |id| id.index))),
            last_applied,
            membership,
            store,
            snapshot_lock: Arc::new(Mutex::new(())),
            effects,
        })
    }

    /// The shared state, for local reads.
    pub fn state(&self) -> Arc<RwLock<MetaState>> {
        self.state.clone()
    }

    /// The last applied index, shared.
    pub fn applied_index(&self) -> Arc<AppliedIndex> {
        self.applied_index.clone()
    }
}

/// The last applied log index: read at once, and awaited by requests that
/// must see a given write (openraft's metrics report it a moment later).
#[derive(Debug, Default)]
pub struct AppliedIndex {
    index: std::sync::atomic::AtomicU64,
    raised: tokio::sync::Notify,
}

impl AppliedIndex {
    /// Starts at `index`.
    pub fn new(index: u64) -> Self {
        Self { index: std::sync::atomic::AtomicU64::new(index), raised: tokio::sync::Notify::new() }
    }

    /// The index now.
    pub fn get(&self) -> u64 {
        self.index.load(std::sync::atomic::Ordering::Acquire)
    }

    fn set(&self, index: u64) {
        self.index.store(index, std::sync::atomic::Ordering::Release);
        self.raised.notify_waiters();
    }

    /// Waits until the index reaches `index`; false after `timeout`.
    pub async fn wait_for(&self, index: u64, timeout: std::time::Duration) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            // Registered before the check, so a raise between the two still wakes us.
            let raised = self.raised.notified();
            tokio::pin!(raised);
            raised.as_mut().enable();
            if self.get() >= index {
                return true;
            }
            if tokio::time::timeout_at(deadline, raised).await.is_err() {
                return false;
            }
        }
    }
}

/// Builds one snapshot from a view taken when it was requested.
pub struct MetaSnapshotBuilder {
    /// The snapshot, encoded when the builder was made (so later applies do
    /// not change it); an encoding failure is reported by `build_snapshot`.
    snapshot: io::Result<Snapshot>,
    store: Store,
    snapshot_lock: Arc<Mutex<()>>,
}

impl RaftSnapshotBuilder<TypeConfig> for MetaSnapshotBuilder {
    type SnapshotData = SnapshotData;

    async fn build_snapshot(&mut self) -> Result<Snapshot, io::Error> {
        let snapshot = std::mem::replace(&mut self.snapshot, Err(io::Error::other("snapshot already built")))?;
        let store = self.store.clone();
        let lock = self.snapshot_lock.clone();
        blocking(move || {
            save_snapshot(&store, &lock, &snapshot, false)?;
            Ok(snapshot)
        })
        .await
    }
}

impl RaftStateMachine<TypeConfig> for MetaStateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = MetaSnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), io::Error> {
        Ok((self.last_applied, self.membership.clone()))
    }

    async fn apply<Strm>(&mut self, mut entries: Strm) -> Result<(), io::Error>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        while let Some((entry, responder)) = entries.try_next().await? {
            let mut effects = Vec::new();
            let reply = match &entry.payload {
                EntryPayload::Normal(req) => {
                    let mut state = self.state.write();
                    state.apply(req, &mut effects)
                }
                EntryPayload::Membership(m) => {
                    self.membership = StoredMembership::new(Some(entry.log_id), m.clone());
                    Ok(MetaOk::Done)
                }
                EntryPayload::Blank => Ok(MetaOk::Done),
            };
            self.last_applied = Some(entry.log_id);
            self.applied_index.set(entry.log_id.index);
            if !effects.is_empty() {
                (self.effects)(effects);
            }
            // Every entry is answered, blank and membership ones too, or
            // `client_write` would never return.
            if let Some(responder) = responder {
                responder.send(reply);
            }
        }
        Ok(())
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        let state = self.state.read();
        let file = SnapshotFile {
            version: SNAPSHOT_VERSION,
            last_applied: self.last_applied,
            membership: self.membership.clone(),
            state: &*state,
        };
        let snapshot = encode("snapshot", &file).map(|data| Snapshot {
            meta: SnapshotMeta { last_log_id: self.last_applied, last_membership: self.membership.clone() },
            snapshot: data,
        });
        drop(state);
        MetaSnapshotBuilder { snapshot, store: self.store.clone(), snapshot_lock: self.snapshot_lock.clone() }
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> Result<(), io::Error> {
        let state = decode_snapshot(meta, &snapshot)?;
        let snapshot = Snapshot { meta: meta.clone(), snapshot };
        let store = self.store.clone();
        let lock = self.snapshot_lock.clone();
        blocking(move || save_snapshot(&store, &lock, &snapshot, true)).await?;
        *self.state.write() = state;
        self.last_applied = meta.last_log_id;
        self.applied_index.set(meta.last_log_id.map_or(0, |id| id.index));
        self.membership = meta.last_membership.clone();
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, io::Error> {
        let store = self.store.clone();
        let lock = self.snapshot_lock.clone();
        blocking(move || {
            let _guard = lock.lock();
            load_snapshot(&store)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::collections::BTreeSet;

    use super::*;
    use crate::meta::User;
    use palaver_protocol::UserRole;

    #[test]
    fn a_format_1_snapshot_of_an_earlier_version_still_loads() {
        let users = BTreeMap::from([(
            "ann".to_string(),
            User { password_hash: "h".into(), role: UserRole::Admin, created_at: 5 },
        )]);
        let v1_state = (
            users.clone(),
            BTreeMap::<TokenHashAlias, crate::meta::Session>::new(),
            BTreeMap::<TokenHashAlias, crate::meta::Ticket>::new(),
            BTreeMap::<String, crate::meta::Room>::new(),
            7u64,
            BTreeSet::from([2u64]),
        );
        let meta = SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default() };
        let bytes = postcard::to_stdvec(&(1u8, None::<LogId>, StoredMembership::default(), v1_state)).expect("encode");
        let state = decode_snapshot(&meta, &bytes).expect("a format 1 snapshot decodes");
        assert_eq!((state.users, state.next_room_key, state.draining), (users, 7, BTreeSet::from([2])));
        assert!(!state.layout.is_set());
        let mut bad = bytes.clone();
        bad[0] = 9;
        assert!(decode_snapshot(&meta, &bad).is_err(), "an unknown format is an error, not a panic");
    }

    #[test]
    fn a_format_2_snapshot_loads_with_no_retention_set() {
        let v2_state = (
            BTreeMap::<String, User>::new(),
            BTreeMap::<TokenHashAlias, crate::meta::Session>::new(),
            BTreeMap::<TokenHashAlias, crate::meta::Ticket>::new(),
            BTreeMap::<String, crate::meta::Room>::new(),
            11u64,
            BTreeSet::<u64>::new(),
            crate::meta::Layout::default(),
        );
        let meta = SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default() };
        let bytes = postcard::to_stdvec(&(2u8, None::<LogId>, StoredMembership::default(), v2_state)).expect("encode");
        let state = decode_snapshot(&meta, &bytes).expect("a format 2 snapshot decodes");
        assert_eq!(state.next_room_key, 11);
        assert!(state.retention.is_empty());
    }

    #[test]
    fn a_format_3_snapshot_loads_with_no_account_administration() {
        let v3_state = (
            BTreeMap::<String, User>::new(),
            BTreeMap::<TokenHashAlias, crate::meta::Session>::new(),
            BTreeMap::<TokenHashAlias, crate::meta::Ticket>::new(),
            BTreeMap::<String, crate::meta::Room>::new(),
            13u64,
            BTreeSet::<u64>::new(),
            crate::meta::Layout::default(),
            BTreeMap::from([("r".to_string(), 3u32)]),
        );
        let meta = SnapshotMeta { last_log_id: None, last_membership: StoredMembership::default() };
        let bytes = postcard::to_stdvec(&(3u8, None::<LogId>, StoredMembership::default(), v3_state)).expect("encode");
        let state = decode_snapshot(&meta, &bytes).expect("a format 3 snapshot decodes");
        assert_eq!((state.next_room_key, state.retention.get("r")), (13, Some(&3)));
        assert!(state.accounts.disabled.is_empty() && state.accounts.invites.is_empty());
    }

    type TokenHashAlias = crate::meta::TokenHash;
}
