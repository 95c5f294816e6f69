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
use crate::raft::LogStore;
use crate::raft::Space;
use crate::rooms::RoomLog;
use crate::storage;
use crate::storage::EngineKind;
use crate::storage::WriteThread;

struct Builder(EngineKind);

fn err(e: impl std::error::Error + 'static) -> StorageError<ShardTypes> {
    StorageError::read(ShardTypes::err_from_error(&e))
}

impl StoreBuilder<ShardTypes, LogStore<ShardTypes>, ShardStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore<ShardTypes>, ShardStateMachine), StorageError<ShardTypes>> {
        let dir = tempfile::tempdir().map_err(err)?;
        let raft = storage::open(self.0, &dir.path().join("raft.db")).map_err(err)?;
        let rooms = storage::open(self.0, &dir.path().join("rooms.db")).map_err(err)?;
        let log = LogStore::<ShardTypes>::new(
            raft.clone(),
            Space::shard(7),
            WriteThread::start(raft, "raft-store").map_err(err)?,
        );
        let room_log = Arc::new(RoomLog::new(rooms.clone()));
        let writer = WriteThread::start(rooms.clone(), "rooms-store").map_err(err)?;
        let sm =
            ShardStateMachine::open(7, None, rooms, writer, room_log, dir.path().join("snapshots"), Arc::new(|_| {}))
                .map_err(err)?;
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
    use crate::rooms::attachments;
    use crate::rooms::attachments::AttachmentId;
    use crate::rooms::attachments::Sha;
    use crate::rooms::attachments::StoredAttachment;
    use crate::rooms::files::Files;
    use crate::shards::machine::SHARD_ROOMS;
    use crate::shards::machine::ShardStateMachine;
    use crate::shards::machine::shard_room_key;
    use crate::shards::types::Entry;
    use crate::shards::types::OpResult;
    use crate::shards::types::ShardBatch;
    use crate::shards::types::ShardOp;
    use crate::shards::types::ShardResults;
    use crate::shards::types::ShardTypes;
    use crate::storage;
    use crate::storage::EngineKind;
    use crate::storage::WriteThread;

    const SHARD: u32 = 3;

    struct Replica {
        sm: ShardStateMachine,
        log: Arc<RoomLog>,
        published: Arc<Mutex<Vec<Published>>>,
        files: Arc<Files>,
        next: u64,
        _dir: TempDir,
    }

    /// A room log over `store` whose dedup filter is filled from it, so
    /// that lookups trust the filter as a running node's do.
    fn filled_log(store: &storage::Store) -> Arc<RoomLog> {
        let log = Arc::new(RoomLog::new(store.clone()));
        log.fill_seen().expect("filter thread");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        while !log.seen().is_ready() {
            assert!(std::time::Instant::now() < deadline, "the dedup filter was not filled within 60 s");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        log
    }

    fn replica() -> Replica {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = storage::open(EngineKind::Redb, &dir.path().join("rooms.db")).expect("store");
        let log = filled_log(&store);
        let published: Arc<Mutex<Vec<Published>>> = Arc::default();
        let sink = published.clone();
        let writer = WriteThread::start(store.clone(), "rooms-store").expect("write thread");
        let sm = ShardStateMachine::open(
            SHARD,
            None,
            store,
            writer,
            log.clone(),
            dir.path().join("snap"),
            Arc::new(move |p| sink.lock().push(p)),
        )
        .expect("state machine");
        let files = Arc::new(Files::open(dir.path().join("attachments")).expect("files"));
        let sm = sm.with_files(Some(files.clone()));
        Replica { sm, log, published, files, next: 1, _dir: dir }
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

        /// Opens the state machine afresh over the same store, as a
        /// restart does.
        fn reopen(&mut self) {
            let store = self.log.store().clone();
            self.sm = ShardStateMachine::open(
                SHARD,
                None,
                store.clone(),
                WriteThread::start(store, "rooms-store").expect("write thread"),
                self.log.clone(),
                self._dir.path().join("snap"),
                Arc::new(|_| {}),
            )
            .expect("reopen");
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
    async fn expiry_removes_the_oldest_messages_and_seqs_are_never_given_again() {
        let mut r = replica();
        r.apply(vec![
            (100, vec![send(1, "ann", "a", "c1"), send(1, "ann", "b", "c2")]),
            (200, vec![send(1, "ann", "c", "c3")]),
        ])
        .await;
        let expire = |before_ts| ShardOp::Expire { room_key: 1, room: "r1".into(), before_ts };
        let results = r.apply(vec![(300, vec![expire(150)])]).await;
        assert_eq!(results[0].0, vec![OpResult::Expired { count: 2, through_seq: 2 }]);
        assert_eq!(r.seqs(1), vec![(3, Some("c".into()))]);
        let results = r.apply(vec![(300, vec![expire(150), expire(250)])]).await;
        assert_eq!(
            results[0].0,
            vec![OpResult::Expired { count: 0, through_seq: 0 }, OpResult::Expired { count: 1, through_seq: 3 }]
        );
        assert!(r.seqs(1).is_empty());
        // A state machine opened afresh over the same store (a restart)
        // goes on after the last seq, though no message is left to show it.
        r.reopen();
        let results = r.apply(vec![(400, vec![send(1, "ann", "d", "c4")])]).await;
        assert_eq!(results[0].0, vec![OpResult::Stored { seq: 4, ts: 400 }]);
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

    fn post(room_key: u64, from: &str, body: &str, client_id: &str, reply_to: Option<u64>) -> ShardOp {
        ShardOp::Post {
            room_key,
            room: format!("r{room_key}"),
            from: from.into(),
            body: body.into(),
            client_id: client_id.into(),
            reply_to,
        }
    }

    fn edit(seq: u64, actor: &str, body: &str) -> ShardOp {
        ShardOp::Edit { room_key: 1, room: "r1".into(), seq, actor: actor.into(), body: body.into() }
    }

    fn react(seq: u64, actor: &str, emoji: &str, on: bool) -> ShardOp {
        ShardOp::React { room_key: 1, room: "r1".into(), seq, actor: actor.into(), emoji: emoji.into(), on }
    }

    /// A reply names a message of its room that exists (a deleted one
    /// still holds its place); one that does not is refused and takes no seq.
    #[tokio::test]
    async fn a_reply_must_name_a_message_of_its_room() {
        let mut r = replica();
        let results = r
            .apply(vec![(
                1,
                vec![
                    post(1, "ann", "q", "c1", None),
                    post(1, "bob", "a", "c1", Some(1)),
                    post(1, "bob", "bad", "c2", Some(3)),
                    post(1, "bob", "zero", "c3", Some(0)),
                    post(2, "bob", "other room", "c1", Some(2)),
                ],
            )])
            .await;
        assert_eq!(
            results[0].0,
            vec![
                OpResult::Stored { seq: 1, ts: 1 },
                OpResult::Stored { seq: 2, ts: 1 },
                OpResult::NoSuchReply,
                OpResult::NoSuchReply,
                OpResult::NoSuchReply,
            ]
        );
        let stored = r.log.get_stored(1, 2).expect("read").expect("there");
        assert_eq!(stored.stored.reply_to, Some(1));
        assert_eq!(r.log.last_seq(1).expect("seq"), 2, "a refused reply takes no seq");
    }

    /// Only the sender edits, never a deleted message; the entry's ts is the
    /// edit's time, and the old text comes back for the audit.
    #[tokio::test]
    async fn edits_are_the_senders_and_keep_the_old_text() {
        let mut r = replica();
        r.apply(vec![(1, vec![send(1, "ann", "helo", "c1"), send(1, "bob", "b", "c1")])]).await;
        let del = ShardOp::Delete { room_key: 1, room: "r1".into(), seq: 2, actor: "bob".into(), moderator: false };
        r.apply(vec![(2, vec![del])]).await;
        r.published.lock().clear();
        let results = r
            .apply(vec![(
                5,
                vec![edit(1, "bob", "hijack"), edit(1, "ann", "hello"), edit(2, "bob", "x"), edit(7, "ann", "x")],
            )])
            .await;
        match &results[0].0[..] {
            [OpResult::Forbidden, OpResult::Edited { message, old_body }, OpResult::NotFound, OpResult::NotFound] => {
                assert_eq!(old_body, "helo");
                assert_eq!(
                    (message.seq, message.stored.body.as_deref(), message.stored.edited_at),
                    (1, Some("hello"), Some(5))
                );
            }
            other => panic!("unexpected results {other:?}"),
        }
        let stored = r.log.get_stored(1, 1).expect("read").expect("there");
        assert_eq!(
            (stored.stored.body.as_deref(), stored.stored.edited_at, stored.stored.ts),
            (Some("hello"), Some(5), 1)
        );
        let published = r.published.lock();
        assert!(
            matches!(&published[..], [Published::Edited { seq: 1, body, edited_at: 5, .. }] if body == "hello"),
            "one edited event: {published:?}"
        );
    }

    /// Reactions: one per (user, emoji), taken back by the same user, at
    /// most MAX_REACTIONS different emoji, none on a deleted message, and
    /// a deletion takes them with the body.
    #[tokio::test]
    async fn reactions_count_each_user_once_and_are_bounded() {
        use crate::shards::machine::MAX_REACTIONS;
        let mut r = replica();
        r.apply(vec![(1, vec![send(1, "ann", "a", "c1")])]).await;
        let results = r
            .apply(vec![(
                2,
                vec![
                    react(1, "bob", "👍", true),
                    react(1, "bob", "👍", true),
                    react(1, "cy", "👍", true),
                    react(1, "ann", "🎉", true),
                    react(1, "cy", "👍", false),
                    react(1, "cy", "👍", false),
                    react(9, "cy", "👍", true),
                ],
            )])
            .await;
        assert_eq!(
            results[0].0,
            vec![
                OpResult::Reacted { changed: true },
                OpResult::Reacted { changed: false },
                OpResult::Reacted { changed: true },
                OpResult::Reacted { changed: true },
                OpResult::Reacted { changed: true },
                OpResult::Reacted { changed: false },
                OpResult::NotFound,
            ]
        );
        let stored = r.log.get_stored(1, 1).expect("read").expect("there").stored;
        let view: Vec<(&str, Vec<&str>)> =
            stored.reactions.iter().map(|x| (x.emoji.as_str(), x.users.iter().map(String::as_str).collect())).collect();
        assert_eq!(view, vec![("👍", vec!["bob"]), ("🎉", vec!["ann"])]);
        let events = r.published.lock().iter().filter(|p| matches!(p, Published::Reaction { .. })).count();
        assert_eq!(events, 4, "an event per change, none for a no-op");
        // Fill up to the bound with new emoji, then one more.
        let more: Vec<ShardOp> = (0..MAX_REACTIONS).map(|i| react(1, "bob", &format!(":e{i}:"), true)).collect();
        let results = r.apply(vec![(3, more)]).await;
        let full = results[0].0.iter().filter(|x| **x == OpResult::TooManyReactions).count();
        assert_eq!(full, 2, "2 already there, so the last 2 of {MAX_REACTIONS} new ones do not fit");
        let results = r.apply(vec![(4, vec![react(1, "cy", "🎉", true)])]).await;
        assert_eq!(results[0].0, vec![OpResult::Reacted { changed: true }], "an emoji already there still takes users");
        let del = ShardOp::Delete { room_key: 1, room: "r1".into(), seq: 1, actor: "ann".into(), moderator: false };
        r.apply(vec![(5, vec![del])]).await;
        assert!(r.log.get_stored(1, 1).expect("read").expect("there").stored.reactions.is_empty());
        let results = r.apply(vec![(6, vec![react(1, "cy", "👍", true)])]).await;
        assert_eq!(results[0].0, vec![OpResult::NotFound], "no reaction on a deleted message");
    }

    /// A room's committed seq and its place in the shard are written once
    /// per apply: what a drop within the same apply did must stand, and a
    /// send after a drop must undo it.
    #[tokio::test]
    async fn a_drop_and_sends_within_one_apply_leave_the_right_rooms_listed() {
        let mut r = replica();
        r.apply(vec![(1, vec![send(2, "ann", "a", "c1")])]).await;
        let results = r
            .apply(vec![
                (2, vec![send(1, "ann", "a", "c1"), send(1, "ann", "b", "c2")]),
                (3, vec![ShardOp::Drop { room_key: 1 }, ShardOp::Drop { room_key: 2 }]),
                (
                    4,
                    vec![
                        send(2, "ann", "again", "c1"),
                        ShardOp::Delete {
                            room_key: 1,
                            room: "r1".into(),
                            seq: 1,
                            actor: "ann".into(),
                            moderator: true,
                        },
                    ],
                ),
            ])
            .await;
        assert_eq!(
            results[2].0,
            vec![OpResult::Stored { seq: 1, ts: 4 }, OpResult::NotFound],
            "after a drop in the same apply: a new message, not a repeat; nothing left to delete"
        );
        let store = r.log.store().clone();
        let listed = |room_key| store.get(SHARD_ROOMS, &shard_room_key(SHARD, room_key)).expect("read").is_some();
        // A fresh reader: what the store says, not what the cache does.
        let stored = RoomLog::new(store.clone());
        assert!(!listed(1), "a room dropped after its sends is gone from the shard");
        assert_eq!(stored.last_seq(1).expect("seq"), 0);
        assert!(listed(2), "a room given a message after its drop is listed again");
        assert_eq!(stored.last_seq(2).expect("seq"), 1);
        assert_eq!(r.seqs(2), vec![(1, Some("again".into()))], "numbered anew, not a repeat of the dropped c1");
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
        // A send the snapshot brought, retried: the dedup filter learned
        // its key in the install, so it is answered, not stored again.
        let retried = b.apply(vec![(50, vec![send(1, "ann", "m0", "c0")])]).await;
        assert_eq!(retried[0].0, vec![OpResult::Duplicate { seq: 1, ts: 0 }]);
    }

    /// After a restart the dedup filter starts empty and is filled from the
    /// store: a send retried across the restart is still answered with its
    /// first seq, and a new one is stored.
    #[tokio::test]
    async fn a_send_retried_after_a_restart_is_a_duplicate_once_the_filter_is_filled() {
        let mut r = replica();
        let mut batches = Vec::new();
        for i in 0..50u64 {
            batches.push((i, vec![send(1 + i % 5, "ann", "hi", &format!("c{i}"))]));
        }
        r.apply(batches).await;
        // A restart: the room log (and its filter) made anew too.
        r.log = filled_log(r.log.store());
        r.reopen();
        let results = r.apply(vec![(60, vec![send(3, "ann", "hi", "c7"), send(3, "ann", "new", "c50")])]).await;
        assert_eq!(results[0].0, vec![OpResult::Duplicate { seq: 2, ts: 7 }, OpResult::Stored { seq: 11, ts: 60 }]);
        // Stored after the filter was filled, retried in a later entry.
        let results = r.apply(vec![(70, vec![send(3, "ann", "new", "c50")])]).await;
        assert_eq!(results[0].0, vec![OpResult::Duplicate { seq: 11, ts: 60 }]);
    }
    fn attach(room_key: u64, id: AttachmentId, sha: Sha) -> ShardOp {
        ShardOp::Attach {
            room_key,
            room: format!("r{room_key}"),
            id,
            sha,
            name: format!("f{}.png", id[0]),
            mime: "image/png".into(),
            size: 3,
            uploader: "ann".into(),
        }
    }

    fn post_with(room_key: u64, client_id: &str, ids: &[AttachmentId]) -> ShardOp {
        ShardOp::PostWith {
            room_key,
            room: format!("r{room_key}"),
            from: "ann".into(),
            body: "see".into(),
            client_id: client_id.into(),
            reply_to: None,
            attachments: ids.to_vec(),
        }
    }

    fn delete(room_key: u64, seq: u64) -> ShardOp {
        ShardOp::Delete { room_key, room: format!("r{room_key}"), seq, actor: "ann".into(), moderator: false }
    }

    impl Replica {
        fn row(&self, room_key: u64, id: &AttachmentId) -> Option<StoredAttachment> {
            let key = attachments::attachment_key(room_key, id);
            let bytes = self.log.store().get(attachments::ATTACHMENTS, &key).expect("read")?;
            Some(attachments::decode(&bytes).expect("row"))
        }

        /// Writes a content's file as an arriving copy does (pinned).
        async fn file(&self, sha: &Sha) {
            let (tmp, mut f) = self.files.temp().await.expect("temp");
            tokio::io::AsyncWriteExt::write_all(&mut f, b"abc").await.expect("write");
            drop(f);
            self.files.keep(tmp, sha).await.expect("keep");
        }

        /// Waits (up to a generous deadline) until the content's file is
        /// there or gone as `want` says; answers whether it got there.
        async fn file_becomes(&self, sha: &Sha, want: bool) -> bool {
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
            while self.files.has(sha) != want {
                if std::time::Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
            }
            true
        }
    }

    /// A send names attachments recorded in its own room only; the message
    /// shows each (id, name, type, size); a refused send takes no seq; an
    /// upload recorded again changes nothing.
    #[tokio::test]
    async fn attachments_of_another_room_or_unknown_are_refused() {
        let mut r = replica();
        let (a, b, unknown) = ([1u8; 16], [2u8; 16], [9u8; 16]);
        let results = r
            .apply(vec![(
                5,
                vec![
                    attach(1, a, [7; 32]),
                    attach(2, b, [8; 32]),
                    post_with(1, "c1", &[a]),
                    post_with(1, "c2", &[b]),
                    post_with(1, "c3", &[a, unknown]),
                    attach(1, a, [7; 32]),
                ],
            )])
            .await;
        assert_eq!(
            results[0].0,
            vec![
                OpResult::Attached,
                OpResult::Attached,
                OpResult::Stored { seq: 1, ts: 5 },
                OpResult::NoSuchAttachment,
                OpResult::NoSuchAttachment,
                OpResult::Attached,
            ]
        );
        assert_eq!(r.log.last_seq(1).expect("seq"), 1, "a refused send takes no seq");
        let m = r.log.get_stored(1, 1).expect("read").expect("there");
        assert_eq!(m.stored.attachments.len(), 1);
        let shown = &m.stored.attachments[0];
        assert_eq!(
            (shown.id.as_str(), shown.name.as_str(), shown.mime.as_str(), shown.size),
            (attachments::public_id("r1", &a).as_str(), "f1.png", "image/png", 3)
        );
        assert_eq!(r.row(1, &a).map(|row| row.carriers), Some(vec![1]), "recorded again: still message 1 carries it");
        assert_eq!(r.row(2, &b).map(|row| row.carriers), Some(vec![]));
        // Sends of a later apply see the rows in the store, not only in this apply.
        let later = r.apply(vec![(6, vec![post_with(2, "c1", &[b]), post_with(2, "c2", &[a])])]).await;
        assert_eq!(later[0].0, vec![OpResult::Stored { seq: 1, ts: 6 }, OpResult::NoSuchAttachment]);
    }

    /// A row goes with the last message that carries it, and all of a
    /// room's with the room; a file goes once no row names its content (the
    /// same content in another room keeps it).
    #[tokio::test]
    async fn attachments_go_with_their_last_message_and_their_room() {
        let mut r = replica();
        let (a, b, c) = ([1u8; 16], [2u8; 16], [3u8; 16]);
        let (shared, own) = ([7u8; 32], [8u8; 32]);
        r.file(&shared).await;
        r.file(&own).await;
        r.apply(vec![(
            1,
            vec![
                attach(1, a, shared),
                attach(1, b, own),
                attach(2, c, shared),
                post_with(1, "c1", &[a]),
                post_with(1, "c2", &[a, b]),
            ],
        )])
        .await;
        assert_eq!(r.row(1, &a).map(|row| row.carriers), Some(vec![1, 2]));
        r.apply(vec![(2, vec![delete(1, 1)])]).await;
        assert_eq!(r.row(1, &a).map(|row| row.carriers), Some(vec![2]), "another message still carries it");
        assert!(r.log.get_stored(1, 1).expect("read").expect("there").stored.attachments.is_empty());
        r.apply(vec![(3, vec![delete(1, 2)])]).await;
        let retired = |r: &Replica, id| r.row(1, id).and_then(|row| row.retired_by);
        assert_eq!((retired(&r, &a), retired(&r, &b)), (Some(2), Some(2)), "the last message carrying them is deleted");
        assert!(r.file_becomes(&own, false).await, "no row names that content: its file goes");
        assert!(r.files.has(&shared), "room 2 still names that content");
        let refused = r.apply(vec![(4, vec![post_with(1, "c3", &[a])])]).await;
        assert_eq!(refused[0].0, vec![OpResult::NoSuchAttachment], "a retired attachment cannot be sent again");
        // Uploaded again, it is live again.
        r.file(&own).await;
        let again = r.apply(vec![(5, vec![attach(1, b, own), post_with(1, "c4", &[b])])]).await;
        assert_eq!(again[0].0, vec![OpResult::Attached, OpResult::Stored { seq: 3, ts: 5 }]);
        assert_eq!(r.row(1, &b).map(|row| (row.retired_by, row.carriers)), Some((None, vec![3])));
        r.apply(vec![(6, vec![ShardOp::Drop { room_key: 2 }])]).await;
        assert_eq!(r.row(2, &c), None);
        assert!(r.file_becomes(&shared, false).await, "the room that named it last is dropped");
        assert!(r.files.has(&own), "a live attachment keeps its file");
    }

    /// An expired message releases its attachments as a deletion does: the
    /// attachment it alone carried is retired and its file goes.
    #[tokio::test]
    async fn an_expired_message_releases_its_attachments() {
        let mut r = replica();
        let (old, kept) = ([4u8; 16], [6u8; 16]);
        let (old_sha, kept_sha) = ([9u8; 32], [10u8; 32]);
        r.file(&old_sha).await;
        r.file(&kept_sha).await;
        r.apply(vec![(10, vec![attach(1, old, old_sha), attach(1, kept, kept_sha), post_with(1, "c1", &[old, kept])])])
            .await;
        r.apply(vec![(50, vec![post_with(1, "c2", &[kept])])]).await;
        let expired =
            r.apply(vec![(60, vec![ShardOp::Expire { room_key: 1, room: "r1".into(), before_ts: 20 }])]).await;
        assert_eq!(expired[0].0, vec![OpResult::Expired { count: 1, through_seq: 1 }]);
        assert_eq!(r.row(1, &old).and_then(|row| row.retired_by), Some(1), "its only carrier expired");
        assert_eq!(r.row(1, &kept).map(|row| (row.retired_by, row.carriers)), Some((None, vec![2])));
        assert!(r.file_becomes(&old_sha, false).await, "no row names that content: its file goes");
        assert!(r.files.has(&kept_sha), "a live attachment keeps its file");
    }

    /// Snapshots are fuzzy: one built after a send and the deletion that
    /// retired its attachment holds the retired row but not the message.
    /// Replaying the send over it must store it as the first time (a refusal
    /// would number the room's next messages differently on this replica).
    #[tokio::test]
    async fn a_send_replayed_over_a_later_snapshot_is_stored_as_the_first_time() {
        let mut a = replica();
        let x = [5u8; 16];
        a.apply(vec![(1, vec![attach(1, x, [5; 32])])]).await;
        let mut builder = a.sm.get_snapshot_builder().await;
        let later = vec![(2, vec![post_with(1, "c1", &[x])]), (3, vec![delete(1, 1)])];
        let first = a.apply(later.clone()).await;
        let snapshot = builder.build_snapshot().await.expect("build");
        assert_eq!(a.row(1, &x).and_then(|row| row.retired_by), Some(1), "built after the deletion");

        let mut b = replica();
        b.sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
        b.next = 2;
        let replayed = b.apply(later).await;
        assert_eq!(replayed, first, "the same results as the first time");
        assert_eq!(b.seqs(1), a.seqs(1));
        assert_eq!(b.row(1, &x), a.row(1, &x));
        let next = vec![(4, vec![post_with(1, "c2", &[x]), post(1, "ann", "plain", "c3", None)])];
        let (on_a, on_b) = (a.apply(next.clone()).await, b.apply(next).await);
        assert_eq!(on_a, on_b);
        assert_eq!(on_a[0].0, vec![OpResult::NoSuchAttachment, OpResult::Stored { seq: 2, ts: 4 }]);
    }

    /// A snapshot carries the rooms' attachment rows: a replica that
    /// installs it accepts sends that name them.
    #[tokio::test]
    async fn attachments_travel_in_snapshots() {
        let mut a = replica();
        let id = [4u8; 16];
        a.apply(vec![(1, vec![attach(1, id, [5; 32]), attach(3, [6; 16], [6; 32]), post_with(1, "c1", &[id])])]).await;
        let mut builder = a.sm.get_snapshot_builder().await;
        let snapshot = builder.build_snapshot().await.expect("build");
        let mut b = replica();
        b.sm.install_snapshot(&snapshot.meta, snapshot.snapshot).await.expect("install");
        assert_eq!(b.row(1, &id), a.row(1, &id));
        assert!(b.row(3, &[6; 16]).is_some(), "a room with an upload and no message yet");
        assert_eq!(b.log.get_stored(1, 1).expect("read").expect("there").stored.attachments.len(), 1);
        b.next = 2;
        let results = b.apply(vec![(2, vec![post_with(1, "c2", &[id])])]).await;
        assert_eq!(results[0].0, vec![OpResult::Stored { seq: 2, ts: 2 }]);
    }
}

mod groups {
    //! Shard groups of real hosts over QUIC on 127.0.0.1: replication,
    //! leader loss, a new replica catching up from a snapshot, a replica set
    //! changed while writes go on.

    use std::collections::BTreeMap;
    use std::net::SocketAddr;
    use std::sync::Arc;
    use std::sync::OnceLock;
    use std::time::Duration;
    use std::time::Instant;

    use futures_util::FutureExt;
    use futures_util::future::BoxFuture;
    use openraft::async_runtime::watch::WatchReceiver;
    use quinn::RecvStream;
    use quinn::SendStream;
    use tempfile::TempDir;

    use crate::peer::Channel;
    use crate::peer::ClusterCa;
    use crate::peer::NodeIdentity;
    use crate::peer::PeerEndpoint;
    use crate::peer::PeerHandler;
    use crate::peer::PeerSettings;
    use crate::peer::codec::decode;
    use crate::peer::codec::encode;
    use crate::peer::generate_cluster;
    use crate::raft::PeerNode;
    use crate::rooms::RoomLog;
    use crate::shards::host::HostParts;
    use crate::shards::host::ShardHost;
    use crate::shards::host::ShardRaft;
    use crate::shards::host::ShardSettings;
    use crate::shards::network::ShardCall;
    use crate::shards::network::ShardRpcs;
    use crate::shards::network::serve_stream;
    use crate::shards::quiet::QuietSettings;
    use crate::shards::types::OpResult;
    use crate::shards::types::ShardBatch;
    use crate::shards::types::ShardOp;
    use crate::storage;
    use crate::storage::EngineKind;
    use crate::storage::WriteThread;

    const WAIT: Duration = Duration::from_secs(30);
    const SHARD: u32 = 5;

    /// Routes the shard channel to the host once it exists.
    #[derive(Default)]
    struct Route(OnceLock<Arc<ShardHost>>);

    impl PeerHandler for Route {
        fn request(&self, _from: u64, channel: Channel, body: Vec<u8>) -> BoxFuture<'static, Result<Vec<u8>, String>> {
            let host = self.0.get().cloned();
            async move {
                let host = host.ok_or("starting")?;
                if channel != Channel::Shards {
                    return Err("only shards here".into());
                }
                let call: ShardCall = decode(&body)?;
                Ok(encode(&host.call(call).await))
            }
            .boxed()
        }

        fn stream(&self, _from: u64, _channel: Channel, recv: RecvStream, send: SendStream) -> BoxFuture<'static, ()> {
            let host = self.0.get().cloned();
            async move {
                if let Some(host) = host {
                    serve_stream(&host, recv, send).await;
                }
            }
            .boxed()
        }
    }

    struct Member {
        host: Arc<ShardHost>,
        log: Arc<RoomLog>,
        endpoint: PeerEndpoint,
        dir: TempDir,
    }

    fn settings() -> ShardSettings {
        ShardSettings {
            heartbeat: Duration::from_millis(100),
            election: (Duration::from_millis(500), Duration::from_millis(1000)),
            snapshot_every: 20,
            keep_after_snapshot: 5,
            pre_vote: true,
        }
    }

    fn member(id: u64, identity: &NodeIdentity) -> Member {
        member_quieting(id, identity, None)
    }

    fn member_quieting(id: u64, identity: &NodeIdentity, quiet: Option<QuietSettings>) -> Member {
        let dir = tempfile::tempdir().expect("tempdir");
        let raft_store = storage::open(EngineKind::Redb, &dir.path().join("raft.db")).expect("raft store");
        let rooms = storage::open(EngineKind::Redb, &dir.path().join("rooms.db")).expect("rooms store");
        let log = Arc::new(RoomLog::new(rooms.clone()));
        let route = Arc::new(Route::default());
        let addr: SocketAddr = "127.0.0.1:0".parse().expect("address");
        let endpoint = PeerEndpoint::bind(id, addr, identity, PeerSettings::default(), route.clone()).expect("bind");
        let host = ShardHost::new(HostParts {
            files: None,
            me: id,
            raft_store: raft_store.clone(),
            writer: WriteThread::start(raft_store, "raft-store").expect("write thread"),
            rooms_writer: WriteThread::start(rooms.clone(), "rooms-store").expect("write thread"),
            rooms,
            log: log.clone(),
            snapshots: dir.path().join("snapshots"),
            publish: Arc::new(|_| {}),
            endpoint: Some(endpoint.clone()),
            settings: settings(),
            shard_count: None,
            discard_after: Duration::ZERO,
            search: None,
            quiet,
        });
        let _ = route.0.set(host.clone());
        Member { host, log, endpoint, dir }
    }

    fn node(m: &Member) -> PeerNode {
        PeerNode { client_addr: String::new(), peer_addr: m.endpoint.local_addr().to_string() }
    }

    fn introduce(members: &[&Member]) {
        let map: BTreeMap<u64, SocketAddr> =
            members.iter().map(|m| (m.endpoint.node_id(), m.endpoint.local_addr())).collect();
        for m in members {
            m.endpoint.set_peers(map.clone());
        }
    }

    /// One node on its own: its member and the membership that makes it
    /// a group's only voter (the CA is kept for the test's length).
    fn alone() -> (ClusterCa, Member, BTreeMap<u64, PeerNode>) {
        let (ca, ids) = generate_cluster(&[1]).expect("certs");
        let m = member(ids[0].0, &ids[0].1);
        introduce(&[&m]);
        let members = [(m.host.me(), node(&m))].into();
        (ca, m, members)
    }

    async fn leader(members: &[&Member]) -> ShardRaft {
        leader_of(members, SHARD).await
    }

    async fn leader_of(members: &[&Member], shard: u32) -> ShardRaft {
        let deadline = Instant::now() + WAIT;
        loop {
            for m in members {
                if let Some(raft) = m.host.get(shard)
                    && raft.metrics().borrow_watched().current_leader == Some(m.host.me())
                {
                    return raft;
                }
            }
            assert!(Instant::now() < deadline, "no shard leader within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends `n` messages through whichever member leads, retrying (with
    /// the same client_id, as a client would) while leadership moves.
    async fn write(members: &[&Member], from: u64, n: u64) -> Vec<u64> {
        write_to(members, SHARD, 1, from, n).await
    }

    /// [`write`] to room `room_key` of shard `shard`.
    async fn write_to(members: &[&Member], shard: u32, room_key: u64, from: u64, n: u64) -> Vec<u64> {
        let mut seqs = Vec::new();
        for i in from..from + n {
            let op = ShardOp::Send {
                room_key,
                room: format!("r{room_key}"),
                from: "ann".into(),
                body: format!("m{i}"),
                client_id: format!("c{i}"),
            };
            let deadline = Instant::now() + WAIT;
            let answer = loop {
                let raft = leader_of(members, shard).await;
                // As the batcher does: a quiet leader renews its lease first.
                if let Some(m) = members.iter().find(|m| {
                    m.host.get(shard).is_some_and(|r| r.metrics().borrow_watched().current_leader == Some(m.host.me()))
                }) {
                    m.host.ready_to_write(shard, &raft).await;
                }
                match raft.client_write(ShardBatch { shard, ts: i, ops: vec![op.clone()] }).await {
                    Ok(answer) => break answer,
                    Err(e) => {
                        assert!(Instant::now() < deadline, "write {i} failed until the deadline: {e}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            match answer.data.0.first() {
                Some(OpResult::Stored { seq, .. } | OpResult::Duplicate { seq, .. }) => seqs.push(*seq),
                other => panic!("unexpected result {other:?}"),
            }
        }
        seqs
    }

    async fn same_log(members: &[&Member], last: u64) {
        let deadline = Instant::now() + WAIT;
        loop {
            let logs: Vec<Vec<(u64, Option<String>)>> = members
                .iter()
                .map(|m| m.log.after(1, 0, 10_000).expect("read").into_iter().map(|x| (x.seq, x.stored.body)).collect())
                .collect();
            let done = logs.iter().all(|l| l.len() as u64 == last && *l == logs[0]);
            if done {
                assert!(logs[0].iter().enumerate().all(|(i, (seq, _))| *seq == i as u64 + 1), "gapless");
                return;
            }
            assert!(Instant::now() < deadline, "replicas differ: {:?}", logs.iter().map(Vec::len).collect::<Vec<_>>());
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A leader's append stream to a node that holds no group for the shard
    /// ends at once with an error (the replication retries later), and never
    /// waits for an answer that cannot come.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_append_stream_to_a_node_without_the_group_is_refused() {
        use futures_util::StreamExt;
        use openraft::RaftNetworkFactory;
        use openraft::RaftNetworkV2;
        use openraft::network::RPCOption;
        use openraft::raft::AppendEntriesRequest;

        use crate::shards::network::ShardNetwork;
        use crate::shards::types::Vote;

        let (_ca, ids) = generate_cluster(&[1, 2]).expect("certs");
        let (a, b) = (member(ids[0].0, &ids[0].1), member(ids[1].0, &ids[1].1));
        introduce(&[&a, &b]);
        let mut factory = ShardNetwork { endpoint: Some(a.endpoint.clone()), shard: SHARD };
        let mut client = factory.new_client(b.host.me(), &node(&b)).await;
        let request = AppendEntriesRequest::<crate::shards::types::ShardTypes> {
            vote: Vote::new(1, a.host.me()),
            prev_log_id: None,
            leader_commit: None,
            entries: Vec::new(),
        };
        let requests = futures_util::stream::iter([request]);
        let option = RPCOption::new(Duration::from_secs(1));
        let answers = tokio::time::timeout(WAIT, async {
            let answers = client.stream_append(requests, option).await.expect("the stream opens");
            answers.collect::<Vec<_>>().await
        })
        .await
        .expect("the stream ends");
        assert_eq!(answers.len(), 1, "one answer, then the end: {answers:?}");
        let refused = answers[0].as_ref().expect_err("no group there");
        assert!(refused.to_string().contains("no group for shard"), "{refused}");
    }

    /// A group closed and opened again at once: the new state machine
    /// starts only after the old one (which openraft does not wait for) is
    /// gone, so the seqs go on from where the old one left them.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shard_reopened_at_once_numbers_on_from_its_last_seq() {
        let (_ca, m, alone) = alone();
        for round in 0..3u64 {
            m.host.open(SHARD, Some(alone.clone())).await.expect("open");
            assert!(!m.host.lease_free(SHARD), "an open group's state machine holds the lease");
            let from = round * 25;
            assert_eq!(write(&[&m], from, 25).await, (from + 1..=from + 25).collect::<Vec<u64>>(), "round {round}");
            m.host.close(SHARD).await;
        }
        let deadline = Instant::now() + WAIT;
        while !m.host.lease_free(SHARD) {
            assert!(Instant::now() < deadline, "the closed group's state machine was never dropped");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        same_log(&[&m], 75).await;
    }

    /// Sends queued on a shard's leader after its group was closed and
    /// opened again go to the open group: a batcher left on the closed
    /// instance (whose metrics still say it leads) answered every send
    /// `unavailable` for as long as the node led the shard.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn sends_reach_a_reopened_group_not_the_closed_one() {
        let (_ca, m, alone) = alone();
        let shards = crate::service::Shards::new(m.host.clone(), SHARD + 1, 1);
        let op = |i: u64| ShardOp::Send {
            room_key: 1,
            room: "r1".into(),
            from: "ann".into(),
            body: format!("m{i}"),
            client_id: format!("c{i}"),
        };
        let mut next = 0;
        for round in 0..2 {
            m.host.open(SHARD, Some(alone.clone())).await.expect("open");
            let raft = leader(&[&m]).await;
            // Within a few tries (a batcher on a closed instance answers
            // once, then gives way), a send is stored.
            let deadline = Instant::now() + WAIT;
            let stored = loop {
                let wait = shards.enqueue(SHARD, raft.clone(), op(next)).await.expect("queued");
                match wait.await {
                    Ok(Ok(OpResult::Stored { seq, .. })) => break seq,
                    other => {
                        assert!(Instant::now() < deadline, "round {round}: no send stored: {other:?}");
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                }
            };
            next += 1;
            assert_eq!(stored, next, "round {round}");
            m.host.close(SHARD).await;
        }
    }

    /// A shard that moved away is retired: once due, its copy here goes
    /// (log, vote, rows, applied state, snapshot files) while another
    /// shard's stays; opened again, it is a new, empty member.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_retired_shard_leaves_no_copy_and_the_others_keep_theirs() {
        const OTHER: u32 = SHARD + 1;
        let (_ca, m, alone) = alone();
        m.host.open(SHARD, Some(alone.clone())).await.expect("open");
        m.host.open(OTHER, Some(alone.clone())).await.expect("open other");
        // Past `snapshot_every`: a snapshot file is written.
        assert_eq!(write_to(&[&m], SHARD, 1, 0, 30).await.len(), 30);
        assert_eq!(write_to(&[&m], OTHER, 2, 0, 10).await, (1..=10).collect::<Vec<u64>>());
        let files = |shard: u32| {
            std::fs::read_dir(m.dir.path().join("snapshots"))
                .map(|d| {
                    d.flatten()
                        .filter(|e| e.file_name().to_string_lossy().starts_with(&format!("shard-{shard}-")))
                        .count()
                })
                .unwrap_or(0)
        };
        let deadline = Instant::now() + WAIT;
        while files(SHARD) == 0 {
            assert!(Instant::now() < deadline, "no snapshot of shard {SHARD} written");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }

        m.host.retire(SHARD).await;
        let deadline = Instant::now() + WAIT;
        let done = loop {
            let done = m.host.discard_due().await;
            if !done.is_empty() {
                break done;
            }
            assert!(Instant::now() < deadline, "the retired shard was never discarded");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        assert_eq!(done, vec![(SHARD, 1)]);
        let fresh = RoomLog::new(m.log.store().clone());
        assert_eq!(fresh.last_seq(1).expect("seq"), 0, "the retired shard's room is gone");
        assert!(m.log.after(1, 0, 100).expect("read").is_empty());
        assert_eq!(files(SHARD), 0, "its snapshot files are gone");
        assert_eq!(m.log.after(2, 0, 100).expect("read").len(), 10, "the other shard keeps its room");

        // Opened again, without members: nothing of the old group is left.
        let raft = m.host.open(SHARD, None).await.expect("reopen");
        assert!(!raft.is_initialized().await.expect("state"), "a discarded group starts empty");
        assert_eq!(write_to(&[&m], OTHER, 2, 10, 5).await, (11..=15).collect::<Vec<u64>>());
        m.host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_shard_replicates_survives_its_leader_and_takes_a_new_replica_from_a_snapshot() {
        let (_ca, ids) = generate_cluster(&[1, 2, 3, 4]).expect("certs");
        let ms: Vec<Member> = ids.iter().map(|(id, identity)| member(*id, identity)).collect();
        let all: Vec<&Member> = ms.iter().collect();
        introduce(&all);
        let first: BTreeMap<u64, PeerNode> = ms[..3].iter().map(|m| (m.host.me(), node(m))).collect();
        for (i, m) in ms[..3].iter().enumerate() {
            m.host.open(SHARD, (i == 0).then(|| first.clone())).await.expect("open");
        }
        let three = [&ms[0], &ms[1], &ms[2]];
        let raft = leader(&three).await;
        assert_eq!(write(&three, 0, 30).await, (1..=30).collect::<Vec<u64>>(), "gapless seqs from the leader");
        same_log(&three, 30).await;

        // The leader goes; another takes over and the seqs go on.
        let old = raft.metrics().borrow_watched().current_leader.expect("a leader");
        let gone = ms.iter().position(|m| m.host.me() == old).expect("leader is a member");
        ms[gone].host.close(SHARD).await;
        let rest: Vec<&Member> = ms[..3].iter().filter(|m| m.host.me() != old).collect();
        assert_eq!(write(&rest, 30, 10).await, (31..=40).collect::<Vec<u64>>());
        let raft = leader(&rest).await;
        same_log(&rest, 40).await;

        // A fourth node joins: it catches up (the log was purged past a
        // snapshot, so from the snapshot) and replaces the lost one.
        ms[3].host.open(SHARD, None).await.expect("open the new replica");
        raft.add_learner(4, node(&ms[3]), true).await.expect("add learner");
        let voters: std::collections::BTreeSet<u64> = rest.iter().map(|m| m.host.me()).chain([4]).collect();
        raft.change_membership(voters, false).await.expect("change membership");
        assert_eq!(write(&[rest[0], rest[1], &ms[3]], 40, 5).await, (41..=45).collect::<Vec<u64>>());
        same_log(&[rest[0], rest[1], &ms[3]], 45).await;
        for m in &ms {
            m.host.shutdown().await;
        }
    }

    async fn wait_until(what: &str, done: impl Fn() -> bool) {
        let deadline = Instant::now() + WAIT;
        while !done() {
            assert!(Instant::now() < deadline, "{what} within {WAIT:?}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// An idle shard goes quiet on its three replicas (no heartbeats),
    /// takes writes and hands its leadership on while quiet, and elects a
    /// new leader when its leader's group goes.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_idle_shard_goes_quiet_and_still_writes_moves_and_elects() {
        let quiet = QuietSettings {
            after: Duration::from_millis(300),
            grace: Duration::from_millis(500),
            every: Duration::from_millis(100),
        };
        let (_ca, ids) = generate_cluster(&[1, 2, 3]).expect("certs");
        let ms: Vec<Member> = ids.iter().map(|(id, identity)| member_quieting(*id, identity, Some(quiet))).collect();
        let all: Vec<&Member> = ms.iter().collect();
        introduce(&all);
        let first: BTreeMap<u64, PeerNode> = ms.iter().map(|m| (m.host.me(), node(m))).collect();
        for (i, m) in ms.iter().enumerate() {
            m.host.open(SHARD, (i == 0).then(|| first.clone())).await.expect("open");
        }
        // Quiet on every replica, the leader included (a group just opened
        // is held quiet too, but its leader only once every voter agreed).
        let quiet_everywhere = |members: &[&Member]| {
            members.iter().all(|m| m.host.is_quiet(SHARD))
                && members.iter().any(|m| {
                    m.host.get(SHARD).is_some_and(|r| r.metrics().borrow_watched().current_leader == Some(m.host.me()))
                })
        };
        assert_eq!(write(&all, 0, 5).await, (1..=5).collect::<Vec<u64>>());
        wait_until("quiet on every replica", || quiet_everywhere(&all)).await;

        // No heartbeat goes out while quiet: the leader's last
        // acknowledgements from its followers grow old.
        let raft = leader(&all).await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        if quiet_everywhere(&all) {
            let m = raft.metrics().borrow_watched().clone();
            let acks = m.heartbeat.expect("a leader's heartbeat metrics");
            for (id, at) in acks.iter().filter(|(id, _)| **id != m.id) {
                let age = at.as_ref().map(|at| openraft::Instant::elapsed(&**at));
                assert!(age.is_none_or(|a| a >= Duration::from_millis(500)), "node {id} acked {age:?} ago while quiet");
            }
        }

        // A write to the quiet shard is answered, and wakes it.
        assert_eq!(write(&all, 5, 1).await, vec![6]);
        wait_until("awake after a write", || all.iter().all(|m| !m.host.is_quiet(SHARD))).await;
        wait_until("quiet again", || quiet_everywhere(&all)).await;

        // Leadership handed on while quiet.
        let old = raft.metrics().borrow_watched().current_leader.expect("a leader");
        let to = ms.iter().map(|m| m.host.me()).find(|id| *id != old).expect("another node");
        raft.trigger().transfer_leader(to).await.expect("transfer");
        let target = ms.iter().find(|m| m.host.me() == to).expect("target");
        wait_until("the target leads", || {
            target.host.get(SHARD).is_some_and(|r| r.metrics().borrow_watched().current_leader == Some(to))
        })
        .await;
        assert_eq!(write(&all, 6, 2).await, vec![7, 8]);

        // The leader's group goes once the shard is quiet again: the
        // others elect and go on.
        wait_until("quiet under the new leader", || quiet_everywhere(&all)).await;
        target.host.close(SHARD).await;
        let rest: Vec<&Member> = ms.iter().filter(|m| m.host.me() != to).collect();
        assert_eq!(write(&rest, 8, 3).await, vec![9, 10, 11]);
        same_log(&rest, 11).await;
        for m in &ms {
            m.host.shutdown().await;
        }
    }
}
