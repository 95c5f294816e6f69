//! Storage conformance (openraft's suite, both engines), a one-node group
//! that restarts, and restart from a snapshot with the log purged.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use std::time::Instant;

use openraft::RaftLogReader;
use openraft::StorageError;
use openraft::storage::RaftLogStorage;
use openraft::testing::log::StoreBuilder;
use openraft::testing::log::Suite;
use openraft::type_config::TypeConfigExt;
use palaver_protocol::UserRole;
use palaver_protocol::Visibility;
use parking_lot::Mutex;
use tempfile::TempDir;

use super::*;
use crate::meta::MetaCommand;
use crate::meta::MetaEffect;
use crate::meta::MetaOk;
use crate::storage;
use crate::storage::Batch;
use crate::storage::EngineKind;
use crate::storage::Store;
use crate::storage::WriteThread;

const WAIT: Duration = Duration::from_secs(20);

fn open_store(kind: EngineKind, dir: &Path) -> Store {
    storage::open(kind, &dir.join("raft.db")).expect("open store")
}

struct Builder(EngineKind);

impl StoreBuilder<TypeConfig, LogStore<TypeConfig>, MetaStateMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore<TypeConfig>, MetaStateMachine), StorageError<TypeConfig>> {
        let dir = tempfile::tempdir().map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let store = open_store(self.0, dir.path());
        let writer = WriteThread::start(store.clone(), "raft-store")
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
        let log = LogStore::<TypeConfig>::new(store.clone(), Space::meta(), writer);
        let sm = MetaStateMachine::open(store, Arc::new(|_| {}))
            .map_err(|e| StorageError::read(TypeConfig::err_from_error(&e)))?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn corrupt_log_entry_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(EngineKind::Redb, dir.path());
    let mut batch = Batch::new();
    batch.put("raft_log", 1u64.to_be_bytes().to_vec(), vec![0xff, 0xff, 0xff]);
    batch.put("raft_state", b"vote".to_vec(), vec![0xff]);
    store.write(batch).expect("write");
    let mut log = LogStore::<TypeConfig>::new(
        store.clone(),
        Space::meta(),
        WriteThread::start(store.clone(), "raft-store").expect("write thread"),
    );
    assert!(log.try_get_log_entries(0..10).await.is_err());
    assert!(log.get_log_state().await.is_err());
    assert!(log.read_vote().await.is_err());
    let mut bad = Batch::new();
    bad.put("raft_snapshot", b"meta".to_vec(), vec![1, 2, 3]);
    bad.put("raft_snapshot", b"data".to_vec(), vec![4, 5, 6]);
    store.write(bad).expect("write");
    assert!(MetaStateMachine::open(store, Arc::new(|_| {})).is_err());
}

fn one_node(snapshot_every: u64) -> RaftSettings {
    let node = PeerNode { client_addr: "127.0.0.1:7001".into(), peer_addr: "127.0.0.1:7101".into() };
    let mut s = RaftSettings::new(1, node.clone(), BTreeMap::from([(1, node)]));
    s.heartbeat_interval = Duration::from_millis(50);
    s.election_timeout = (Duration::from_millis(200), Duration::from_millis(400));
    s.snapshot_every = snapshot_every;
    s.logs_kept_after_snapshot = 0;
    s
}

type Effects = Arc<Mutex<Vec<MetaEffect>>>;

fn sink() -> (EffectSink, Effects) {
    let seen: Effects = Arc::default();
    let s = seen.clone();
    (Arc::new(move |effects| s.lock().extend(effects)), seen)
}

async fn start(settings: RaftSettings, store: Store) -> (Consensus, Effects) {
    let (effects, seen) = sink();
    let c = Consensus::start(settings, store, NoPeers, effects).await.expect("start consensus");
    assert_eq!(c.wait_for_leader(WAIT).await.expect("leader"), 1);
    (c, seen)
}

/// Shuts down and waits until nothing else holds the store, so the file can
/// be opened again.
async fn stop(c: Consensus, store: Store) {
    c.shutdown().await;
    drop(c);
    let deadline = Instant::now() + WAIT;
    while Arc::strong_count(&store) > 1 {
        assert!(Instant::now() < deadline, "the raft store is still in use after shutdown");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn register(name: &str) -> MetaCommand {
    MetaCommand::Register { username: name.into(), password_hash: format!("hash-of-{name}") }
}

fn create_room(actor: &str, room: &str) -> MetaCommand {
    MetaCommand::CreateRoom {
        actor: actor.into(),
        room: room.into(),
        title: format!("Room {room}"),
        visibility: Visibility::Public,
        owner_node: 1,
    }
}

async fn propose_and_restart(kind: EngineKind) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(kind, dir.path());
    let (c, seen) = start(one_node(5000), store.clone()).await;

    let reply = c.propose(1_000, register("alice")).await.expect("propose");
    assert_eq!(reply, Ok(MetaOk::Registered(UserRole::Admin)));
    let reply = c.propose(1_001, create_room("alice", "lobby")).await.expect("propose");
    assert!(matches!(reply, Ok(MetaOk::Room(ref info)) if info.id == "lobby"), "{reply:?}");
    // A refusal by the state machine is an answer, not a consensus failure.
    let reply = c.propose(1_002, register("alice")).await.expect("propose");
    assert!(reply.is_err());
    // Effects reach the sink before the proposer's answer.
    let token = [7u8; 32];
    let login =
        MetaCommand::Login { username: "alice".into(), token_hash: token, expires_at: u64::MAX, idle_ms: u64::MAX };
    c.propose(1_003, login).await.expect("propose").expect("login");
    c.propose(1_004, MetaCommand::Logout { token_hash: token }).await.expect("propose").expect("logout");
    assert!(seen.lock().contains(&MetaEffect::SessionEnded { token_hash: token }));
    {
        let state = c.state();
        assert!(state.users.contains_key("alice"));
        assert_eq!(state.rooms["lobby"].info.owner, "alice");
    }
    let m = c.metrics();
    assert_eq!((m.node_id, m.current_leader, m.role), (1, Some(1), openraft::ServerState::Leader));
    assert_eq!(m.members.keys().copied().collect::<Vec<_>>(), vec![1]);
    let before = c.state().clone();
    stop(c, store).await;

    // Same file, new process state: the log is re-applied up to the saved
    // committed index before `start` returns, before any leader is elected.
    let store = open_store(kind, dir.path());
    let (effects, _) = sink();
    let c = Consensus::start(one_node(5000), store.clone(), NoPeers, effects).await.expect("restart");
    assert_eq!(*c.state(), before);
    assert_eq!(c.wait_for_leader(WAIT).await.expect("leader"), 1);
    let reply = c.propose(2_000, create_room("alice", "second")).await.expect("propose after restart");
    assert!(matches!(reply, Ok(MetaOk::Room(_))), "{reply:?}");
    assert_eq!(c.state().next_room_key, 2);
    stop(c, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_propose_and_restart_redb() {
    propose_and_restart(EngineKind::Redb).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_propose_and_restart_sled() {
    propose_and_restart(EngineKind::Sled).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_from_snapshot_with_purged_log() {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(EngineKind::Redb, dir.path());
    let (c, _) = start(one_node(4), store.clone()).await;
    c.propose(1, register("alice")).await.expect("propose").expect("register");
    for i in 0..10 {
        c.propose(10 + i, create_room("alice", &format!("room{i}"))).await.expect("propose").expect("create");
    }
    // Entries: membership (index 0), blank (1), the 11 commands (2..=12);
    // a snapshot every 4 logs, keeping none of the snapshotted ones.
    let m = c
        .raft()
        .wait(Some(WAIT))
        .metrics(
            |m| m.snapshot.is_some_and(|s| s.index >= 8) && m.purged == m.snapshot,
            "snapshot taken and log purged",
        )
        .await
        .expect("snapshot taken and log purged");
    let snapshot_index = m.snapshot.map(|s| s.index).expect("snapshot");
    let before = c.state().clone();
    stop(c, store).await;

    let store = open_store(EngineKind::Redb, dir.path());
    let mut log = LogStore::<TypeConfig>::new(
        store.clone(),
        Space::meta(),
        WriteThread::start(store.clone(), "raft-store").expect("write thread"),
    );
    let state = log.get_log_state().await.expect("log state");
    let purged = state.last_purged_log_id.expect("purged").index;
    assert_eq!(purged, snapshot_index);
    assert!(log.try_get_log_entries(0..=purged).await.expect("read").is_empty());
    let rest = log.try_get_log_entries(0..).await.expect("read");
    assert_eq!(rest.first().map(|e| e.log_id.index), Some(purged + 1).filter(|i| *i <= 12));
    drop(log);

    // The snapshot alone: register at index 2, room k at index 3 + k.
    let (effects, _) = sink();
    let mut sm = MetaStateMachine::open(store.clone(), effects).expect("open sm");
    let (applied, membership) = openraft::storage::RaftStateMachine::applied_state(&mut sm).await.expect("applied");
    assert_eq!(applied.map(|a| a.index), Some(snapshot_index));
    assert_eq!(membership.voter_ids().collect::<Vec<_>>(), vec![1]);
    assert_eq!(sm.state().read().rooms.len() as u64, snapshot_index - 2);
    assert!(sm.state().read().users.contains_key("alice"));
    drop(sm);

    let (c, _) = start(one_node(4), store.clone()).await;
    assert_eq!(*c.state(), before);
    assert_eq!(c.state().rooms.len(), 10);
    c.propose(100, create_room("alice", "after")).await.expect("propose").expect("create after restart");
    stop(c, store).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_leader_proposals_are_refused() {
    let a = PeerNode { client_addr: "127.0.0.1:7001".into(), peer_addr: "127.0.0.1:7101".into() };
    let b = PeerNode { client_addr: "127.0.0.1:7002".into(), peer_addr: "127.0.0.1:7102".into() };
    let members = BTreeMap::from([(1, a.clone()), (2, b.clone())]);
    let mut settings = one_node(5000);
    settings.members = members.clone();

    // Node 2 is not the smallest id: it waits for node 1 and never initialises.
    let dir2 = tempfile::tempdir().expect("tempdir");
    let store2 = open_store(EngineKind::Sled, dir2.path());
    let s2 = RaftSettings { node_id: 2, node: b, ..settings.clone() };
    let (effects, _) = sink();
    let c2 = Consensus::start(s2, store2.clone(), NoPeers, effects).await.expect("start node 2");
    let err = c2.propose(1, register("bob")).await.expect_err("no leader");
    assert!(matches!(err, ConsensusError::NotLeader { leader: None }), "{err}");
    assert!(c2.metrics().members.is_empty());

    // Node 1 initialises the two-node group but cannot reach node 2: it never
    // wins an election, and says so.
    let dir1 = tempfile::tempdir().expect("tempdir");
    let store1 = open_store(EngineKind::Redb, dir1.path());
    let (effects, _) = sink();
    let c1 = Consensus::start(settings, store1.clone(), NoPeers, effects).await.expect("start node 1");
    let err = c1.wait_for_leader(Duration::from_millis(1500)).await.expect_err("no quorum");
    assert!(matches!(err, ConsensusError::Unavailable(_)), "{err}");
    assert_eq!(c1.metrics().members, members);
    let err = c1.propose(1, register("alice")).await.expect_err("not leader");
    assert!(matches!(err, ConsensusError::NotLeader { .. }), "{err}");
    stop(c1, store1).await;
    stop(c2, store2).await;
}
