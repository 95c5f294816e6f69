use super::*;

fn put(room_key: u64, seq: u64, body: &str) -> Change {
    // Later seqs are newer; of equal seqs, the higher room.
    Change::Put { room_key, seq, ts: seq * 10 + room_key, body: body.into() }
}

/// A shard's content for a re-index that must not happen.
fn nothing() -> Source {
    Box::new(|_: &mut dyn FnMut(Change)| Err(io::Error::other("no re-index expected")))
}

fn found(index: &SearchIndex, rooms: &[u64], q: &str) -> Vec<(u64, u64)> {
    let words = index.words(q).expect("words");
    index.search(rooms, &words, 100).expect("search").into_iter().map(|h| (h.room_key, h.seq)).collect()
}

#[tokio::test]
async fn finds_all_words_newest_first_in_the_rooms_asked_only() {
    let dir = tempfile::tempdir().expect("dir");
    let index = SearchIndex::open(dir.path()).expect("open");
    let changes =
        vec![put(1, 1, "The quick brown fox"), put(1, 2, "a QUICK reply"), put(2, 1, "quick fox in another room")];
    index.apply(0, changes, "m1".into(), nothing);
    index.refresh().await.expect("refresh");
    assert_eq!(found(&index, &[1], "quick"), vec![(1, 2), (1, 1)]);
    assert_eq!(found(&index, &[1], "quick fox"), vec![(1, 1)]);
    assert_eq!(found(&index, &[1, 2], "Fox"), vec![(2, 1), (1, 1)]);
    assert_eq!(found(&index, &[3], "fox"), Vec::<(u64, u64)>::new());
    assert_eq!(found(&index, &[1], "fo"), Vec::<(u64, u64)>::new(), "whole words only");
}

#[tokio::test]
async fn edits_deletions_and_drops_are_reflected() {
    let dir = tempfile::tempdir().expect("dir");
    let index = SearchIndex::open(dir.path()).expect("open");
    index.apply(
        0,
        vec![put(1, 1, "old words"), put(1, 2, "keep me"), put(2, 1, "other room words")],
        "m1".into(),
        nothing,
    );
    index.apply(
        0,
        vec![
            Change::Edit { room_key: 1, seq: 1, ts: 11, body: "new text".into() },
            Change::Remove { room_key: 1, seq: 2 },
            Change::DropRoom { room_key: 2 },
        ],
        "m2".into(),
        nothing,
    );
    index.refresh().await.expect("refresh");
    assert!(found(&index, &[1, 2], "old").is_empty(), "an edit replaces the old words");
    assert_eq!(found(&index, &[1], "new"), vec![(1, 1)]);
    assert!(found(&index, &[1], "keep").is_empty(), "a deleted message is gone");
    assert!(found(&index, &[2], "words").is_empty(), "a dropped room is gone");
    assert_eq!(index.documents(), 1);
}

#[tokio::test]
async fn marks_survive_a_reopen_and_a_reindex_replaces_a_shard() {
    let dir = tempfile::tempdir().expect("dir");
    {
        let index = SearchIndex::open(dir.path()).expect("open");
        index.apply(3, vec![put(1, 1, "kept across restarts")], "m7".into(), nothing);
        index.apply(4, vec![put(9, 1, "another shard")], "m2".into(), nothing);
        index.refresh().await.expect("refresh");
    }
    let index = SearchIndex::open(dir.path()).expect("reopen");
    assert_eq!(index.mark(3).as_deref(), Some("m7"));
    assert_eq!(found(&index, &[1], "restarts"), vec![(1, 1)]);
    // The shard's content, read again: message 1 is gone, 2 is new.
    let source: Source = Box::new(|sink: &mut dyn FnMut(Change)| {
        sink(put(1, 2, "read again"));
        Ok(())
    });
    index.reindex(3, "m9".into(), source);
    index.refresh().await.expect("refresh");
    assert!(found(&index, &[1], "restarts").is_empty());
    assert_eq!(found(&index, &[1], "again"), vec![(1, 2)]);
    assert_eq!(found(&index, &[9], "shard"), vec![(9, 1)], "another shard's part stays");
    assert_eq!(index.mark(3).as_deref(), Some("m9"));
}

#[tokio::test]
async fn an_unreadable_index_is_made_anew() {
    let dir = tempfile::tempdir().expect("dir");
    std::fs::write(dir.path().join("meta.json"), b"not json").expect("write");
    let index = SearchIndex::open(dir.path()).expect("open");
    assert_eq!(index.mark(0), None, "no shard is marked, so each indexes again");
    index.apply(0, vec![put(1, 1, "fresh")], "m1".into(), nothing);
    index.refresh().await.expect("refresh");
    assert_eq!(found(&index, &[1], "fresh"), vec![(1, 1)]);
}

#[tokio::test]
async fn a_search_of_many_rooms_finds_only_theirs() {
    let dir = tempfile::tempdir().expect("dir");
    let index = SearchIndex::open(dir.path()).expect("open");
    let rooms = ROOMS_AS_TERMS as u64 * 3;
    index.apply(0, (0..rooms).map(|r| put(r, 1, "common words")).collect(), "m1".into(), nothing);
    index.refresh().await.expect("refresh");
    // Every other room: more than the term-set limit, so rooms are checked per message.
    let asked: Vec<u64> = (0..rooms).filter(|r| r % 2 == 1).collect();
    assert!(asked.len() > ROOMS_AS_TERMS);
    let words = index.words("common").expect("words");
    let hits = index.search(&asked, &words, 10).expect("search");
    let newest: Vec<(u64, u64)> = asked.iter().rev().take(10).map(|r| (*r, 1)).collect();
    assert_eq!(hits.iter().map(|h| (h.room_key, h.seq)).collect::<Vec<_>>(), newest);
}

#[tokio::test]
async fn a_full_queue_makes_the_shard_be_indexed_again_from_its_store() {
    let dir = tempfile::tempdir().expect("dir");
    let index = SearchIndex::open(dir.path()).expect("open");
    index.queue.limit.store(CHANGE_BYTES * 2, Ordering::SeqCst);
    // Within the limit: queued as it is.
    index.apply(1, vec![put(5, 1, "queued words")], "a1".into(), nothing);
    index.refresh().await.expect("refresh");
    // Past it: not queued; the shard's part is read again from its store,
    // which holds every message the apply wrote (and the ones before).
    let store: Source = Box::new(|sink: &mut dyn FnMut(Change)| {
        sink(put(1, 1, "stored before"));
        sink(put(1, 2, "stored by the apply"));
        sink(put(1, 3, "stored by a later apply"));
        Ok(())
    });
    let big = vec![put(1, 2, "stored by the apply"), put(1, 9, "a change the store does not hold")];
    index.apply(0, big, "b2".into(), || store);
    index.refresh().await.expect("refresh");
    assert_eq!(found(&index, &[1], "stored"), vec![(1, 3), (1, 2), (1, 1)]);
    assert!(found(&index, &[1], "change").is_empty(), "the dropped apply's own changes are not what counts");
    assert_eq!(found(&index, &[5], "queued"), vec![(5, 1)], "another shard's part stays");
    assert_eq!(index.queue.bytes.load(Ordering::SeqCst), 0, "the queue is empty again");
    assert!(index.queue.behind.lock().is_empty(), "the re-index started, so the shard queues again");
    index.apply(0, vec![put(1, 4, "after")], "b3".into(), nothing);
    index.refresh().await.expect("refresh");
    assert_eq!(found(&index, &[1], "after"), vec![(1, 4)]);
    assert_eq!(index.mark(0).as_deref(), Some("b3"));
}

#[tokio::test]
async fn applies_after_a_reindex_add_only_what_it_did_not_read() {
    let dir = tempfile::tempdir().expect("dir");
    let index = SearchIndex::open(dir.path()).expect("open");
    // The store held messages 1-3 of room 1 and 1 of room 2 when the
    // re-index read it; applies queued after it repeat some of them.
    let store: Source = Box::new(|sink: &mut dyn FnMut(Change)| {
        for seq in 1..=3 {
            sink(put(1, seq, "read words"));
        }
        sink(put(2, 1, "read words"));
        Ok(())
    });
    index.reindex(0, "r1".into(), store);
    index.apply(
        0,
        vec![put(1, 2, "read words"), put(1, 3, "read words"), put(1, 4, "read words")],
        "r2".into(),
        nothing,
    );
    // A dropped room's seqs start again: nothing of it is taken as read.
    index.apply(0, vec![Change::DropRoom { room_key: 2 }, put(2, 1, "read words anew")], "r3".into(), nothing);
    index.refresh().await.expect("refresh");
    assert_eq!(found(&index, &[1], "read"), vec![(1, 4), (1, 3), (1, 2), (1, 1)], "each message once");
    assert_eq!(found(&index, &[2], "anew"), vec![(2, 1)]);
    assert_eq!(index.documents(), 5);
}
