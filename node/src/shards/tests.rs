//! The shard's log storage and state machine under openraft's storage
//! suite, and the state machine's own rules: seqs, dedup, deletes, drops,
//! snapshots that survive the shard going on.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::TypeConfigExt;
use tempfile::TempDir;

use super::machine::ShardStateMachine;
use super::types::ShardTypes;
use crate::raft::Flusher;
use crate::raft::LogStore;
use crate::raft::Space;
use crate::rooms::RoomLog;
use crate::storage;
use crate::storage::EngineKind;

struct Builder(EngineKind);

fn err(e: impl std::error::Error + 'static) -> StorageError<ShardTypes> {
    StorageError::read(ShardTypes::err_from_error(&e))
}

impl StoreBuilder<ShardTypes, LogStore<ShardTypes>, ShardStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore<ShardTypes>, ShardStateMachine), StorageError<ShardTypes>> {
        let dir = tempfile::tempdir().map_err(err)?;
        let raft = storage::open(self.0, &dir.path().join("raft.db")).map_err(err)?;
        let rooms = storage::open(self.0, &dir.path().join("rooms.db")).map_err(err)?;
        let log = LogStore::<ShardTypes>::new(raft.clone(), Space::shard(7), Flusher::start(raft).map_err(err)?);
        let room_log = Arc::new(RoomLog::new(rooms.clone()));
        let sm =
            ShardStateMachine::open(7, rooms, room_log, dir.path().join("snapshots"), Arc::new(|_| {})).map_err(err)?;
        Ok((dir, log, sm))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_redb() {
    Suite::test_all(Builder(EngineKind::Redb)).await.expect("openraft storage suite on redb");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance_sled() {
    Suite::test_all(Builder(EngineKind::Sled)).await.expect("openraft storage suite on sled");
}

mod machine {
    use std::sync::Arc;

    use openraft::RaftSnapshotBuilder;
    use openraft::entry::RaftEntry;
    use openraft::storage::RaftStateMachine;
    use openraft::testing::log_id;
    use parking_lot::Mutex;
    use tempfile::TempDir;

    use crate::rooms::Published;
    use crate::rooms::RoomLog;
    use crate::shards::machine::ShardStateMachine;
    use crate::shards::types::Entry;
    use crate::shards::types::OpResult;
    use crate::shards::types::ShardBatch;
    use crate::shards::types::ShardOp;
    use crate::shards::types::ShardResults;
    use crate::shards::types::ShardTypes;
    use crate::storage;
    use crate::storage::EngineKind;

    const SHARD: u32 = 3;

    struct Replica {
        sm: ShardStateMachine,
        log: Arc<RoomLog>,
        published: Arc<Mutex<Vec<Published>>>,
        next: u64,
        _dir: TempDir,
    }

    fn replica() -> Replica {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = storage::open(EngineKind::Redb, &dir.path().join("rooms.db")).expect("store");
        let log = Arc::new(RoomLog::new(store.clone()));
        let published: Arc<Mutex<Vec<Published>>> = Arc::default();
        let sink = published.clone();
        let sm = ShardStateMachine::open(
            SHARD,
            store,
            log.clone(),
            dir.path().join("snap"),
            Arc::new(move |p| sink.lock().push(p)),
        )
        .expect("state machine");
        Replica { sm, log, published, next: 1, _dir: dir }
    }

    fn send(room_key: u64, from: &str, body: &str, client_id: &str) -> ShardOp {
        ShardOp::Send {
            room_key,
            room: format!("r{room_key}"),
            from: from.into(),
            body: body.into(),
            client_id: client_id.into(),
        }
    }

    impl Replica {
        /// Applies one entry per batch; answers each batch's results.
        async fn apply(&mut self, batches: Vec<(u64, Vec<ShardOp>)>) -> Vec<ShardResults> {
            let mut entries = Vec::new();
            for (ts, ops) in batches {
                entries.push(Entry::new_normal(
                    log_id::<ShardTypes>(1, 1, self.next),
                    ShardBatch { shard: SHARD, ts, ops },
                ));
                self.next += 1;
            }
            self.sm.apply_entries(entries).await.expect("apply")
        }

        fn seqs(&self, room_key: u64) -> Vec<(u64, Option<String>)> {
            self.log.after(room_key, 0, 10_000).expect("read").into_iter().map(|m| (m.seq, m.stored.body)).collect()
        }
    }

    #[tokio::test]
    async fn seqs_are_gapless_per_room_and_repeats_answer_the_original() {
        let mut r = replica();
        let results = r
            .apply(vec![
                (100, vec![send(1, "ann", "a", "c1"), send(2, "bob", "b", "c1"), send(1, "ann", "a2", "c2")]),
                (200, vec![send(1, "ann", "again", "c1"), send(1, "bob", "x", "c1")]),
            ])
            .await;
        assert_eq!(
            results[0].0,
            vec![
                OpResult::Stored { seq: 1, ts: 100 },
                OpResult::Stored { seq: 1, ts: 100 },
                OpResult::Stored { seq: 2, ts: 100 }
            ]
        );
        assert_eq!(results[1].0, vec![OpResult::Duplicate { seq: 1, ts: 100 }, OpResult::Stored { seq: 3, ts: 200 }]);
        assert_eq!(r.seqs(1), vec![(1, Some("a".into())), (2, Some("a2".into())), (3, Some("x".into()))]);
        assert_eq!(r.log.last_seq(1).expect("seq"), 3);
        assert_eq!(r.published.lock().len(), 4, "one event per stored message, none for the repeat");
        // A repeat within one batch is a duplicate too.
        let results = r.apply(vec![(300, vec![send(2, "bob", "y", "k"), send(2, "bob", "y", "k")])]).await;
        assert_eq!(results[0].0, vec![OpResult::Stored { seq: 2, ts: 300 }, OpResult::Duplicate { seq: 2, ts: 300 }]);
    }

    #[tokio::test]
    async fn deletes_follow_the_sender_or_moderator_rule_and_drops_forget_the_room() {
        let mut r = replica();
        r.apply(vec![(1, vec![send(1, "ann", "a", "c1"), send(1, "bob", "b", "c1")])]).await;
        let del = |seq, actor: &str, moderator| ShardOp::Delete {
            room_key: 1,
            room: "r1".into(),
            seq,
            actor: actor.into(),
            moderator,
        };
        let results = r
            .apply(vec![(
                2,
                vec![del(1, "bob", false), del(1, "ann", false), del(2, "mod", true), del(9, "ann", true)],
            )])
            .await;
        assert_eq!(
            results[0].0,
            vec![
                OpResult::Forbidden,
                OpResult::Deleted { sender: "ann".into() },
                OpResult::Deleted { sender: "bob".into() },
                OpResult::NotFound
            ]
        );
        assert_eq!(r.seqs(1), vec![(1, None), (2, None)], "seqs stay, bodies go");
        r.apply(vec![(3, vec![ShardOp::Drop { room_key: 1 }])]).await;
        assert!(r.seqs(1).is_empty());
        let results = r.apply(vec![(4, vec![send(1, "ann", "new life", "c1")])]).await;
        assert_eq!(
            results[0].0,
            vec![OpResult::Stored { seq: 1, ts: 4 }],
            "a dropped room starts over, dedup forgotten"
        );
    }

    #[tokio::test]
    async fn a_snapshot_taken_while_the_shard_goes_on_installs_to_the_same_state() {
        let mut a = replica();
        let mut batches = Vec::new();
        for i in 0..30u64 {
            batches.push((i, vec![send(1 + i % 3, "ann", &format!("m{i}"), &format!("c{i}"))]));
        }
        a.apply(batches).await;
        let mut builder = a.sm.get_snapshot_builder().await;
        // The shard goes on before the snapshot is written: a new message, a
        // deletion of an old one.
        let later = vec![
            (40, vec![send(1, "bob", "after", "late")]),
            (
                41,
                vec![ShardOp::Delete { room_key: 2, room: "r2".into(), seq: 1, actor: "ann".into(), moderator: false }],
            ),
        ];
        a.apply(later.clone()).await;
        let snapshot = builder.build_snapshot().await.expect("build");
        assert_eq!(snapshot.meta.last_log_id.map(|id| id.index), Some(30));

        let mut b = replica();
        b.sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
        assert_eq!(b.seqs(1).len(), 10, "room 1 as of the capture: the later message is not in it");
        // Replaying what came after the snapshot gives the same state.
        b.next = 31;
        let replayed = b.apply(later).await;
        assert_eq!(replayed[0].0, vec![OpResult::Stored { seq: 11, ts: 40 }]);
        for room in 1..=3 {
            assert_eq!(a.seqs(room), b.seqs(room), "room {room}");
        }
        // The installed snapshot is the replica's current one.
        let current = b.sm.get_current_snapshot().await.expect("read").expect("a snapshot");
        assert_eq!(current.meta.last_log_id.map(|id| id.index), Some(30));
        assert!(!b.published.lock().is_empty(), "local subscribers hear of what the snapshot brought");
    }
}
