//! Per-client records and queues have limits (issue: hostile clients): op ids per document with
//! a hash of their bytes and an expiry, waiters per collection, peers per collection, live
//! collection actors, reads of collections that were never written, and the stored attacks
//! (see `replicate_actors::craft`) that must be refused against the document's current state.

mod common;

use std::time::Duration;

use common::*;
use replicate_actors::{craft, Error, ManualClock, StreamRequest, Write};

fn op_write(doc: &str, bytes: Vec<u8>, op: &str) -> Write {
    Write {
        document_id: doc.into(),
        bytes,
        op_id: Some(op.into()),
    }
}

#[actix_rt::test]
async fn op_ids_are_per_document_remember_their_bytes_and_expire() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut config = config(dir.path());
    config.op_id_ttl = Duration::from_secs(60);
    let r = open_with(config, &clock).await;
    let a = Replica::new(1);
    let b = Replica::new(2);
    let wa = op_write("doc-a", a.append("A"), "op-1");
    // Another client's write to another document with the same op id is a new write.
    let first = r.insert("c", wa.clone()).await.unwrap();
    let other = r
        .insert("c", op_write("doc-b", b.append("B"), "op-1"))
        .await
        .unwrap();
    assert_eq!((first.seq, other.seq, other.duplicate), (1, 2, false));
    // The same write again: the first seq.
    let again = r.insert("c", wa.clone()).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (1, true));
    // The same op id with other bytes: 409.
    let reused = r
        .insert("c", op_write("doc-a", a.append("X"), "op-1"))
        .await;
    assert!(matches!(reused, Err(Error::Conflict(_))), "{reused:?}");
    // Past the expiry the op id is forgotten: the same write is stored again.
    clock.advance(61_000);
    let later = r.insert("c", wa).await.unwrap();
    // The refused write took no seq.
    assert_eq!((later.seq, later.duplicate), (3, false));
    let stats = r.collection_stats("c").await.unwrap();
    assert_eq!(stats.duplicate_writes, 1);
}

on_every_engine!(
    expired_op_ids_are_swept_from_the_store,
    op_ids_expire_as_fast_as_they_are_written
);

/// The op-id sweep deletes expired op ids from the store (off the actor's thread) and keeps
/// live ones; on PostgreSQL it is what makes an expired op id free again.
async fn expired_op_ids_are_swept_from_the_store() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut config = config(dir.path());
    config.op_id_ttl = Duration::from_secs(60);
    // The sweep runs with the idle check, every `idle_timeout` when that is under 5 s.
    config.idle_timeout = Duration::from_millis(20);
    let r = open_with(config.clone(), &clock).await;
    let a = Replica::new(1);
    r.insert("c", op_write("d", a.append("A"), "op-1"))
        .await
        .unwrap();
    clock.advance(61_000);
    // A write now: op-2 is live, and the actor is not idle by the (stopped) clock.
    r.insert("c", op_write("d", a.append("B"), "op-2"))
        .await
        .unwrap();
    let mut swept = false;
    for _ in 0..500 {
        if r.collection_stats("c").await.unwrap().expired_op_ids >= 1 {
            swept = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(swept, "the sweep never forgot the expired op id");
    // Its commit is answered before the count shows; close and look in the store itself.
    r.close(Duration::from_secs(2)).await.unwrap();
    // sled releases its directory lock a moment after the last handle goes.
    let mut store = open_store(&config);
    for _ in 0..200 {
        if store.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
        store = open_store(&config);
    }
    let store = store.unwrap();
    assert!(store.op_record("c", "d", "op-1").unwrap().is_none());
    assert!(store.op_record("c", "d", "op-2").unwrap().is_some());
}

/// A collection that writes op ids faster than one sweep batch per idle check (1,000 every
/// 5 s) still has them all forgotten once expired: a full sweep batch is followed by another
/// round at once. Before, one batch per check left a busy collection's op records growing
/// without bound; here that would take until the next check, 3 s later.
async fn op_ids_expire_as_fast_as_they_are_written() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut config = config(dir.path());
    config.op_id_ttl = Duration::from_secs(60);
    // The sweep runs with the idle check, every `idle_timeout` when that is under 5 s.
    config.idle_timeout = Duration::from_secs(3);
    let r = open_with(config, &clock).await;
    let a = Replica::new(1);
    const WRITES: u64 = 2_500;
    let mut writes = Vec::new();
    for i in 0..WRITES {
        let write = op_write("d", a.append("x"), &format!("op-{i}"));
        writes.push((replicate_actors::OperationType::Update, write));
        if writes.len() == 500 {
            for answer in r
                .write_batch("c", std::mem::take(&mut writes))
                .await
                .unwrap()
            {
                answer.unwrap();
            }
        }
    }
    clock.advance(61_000);
    // A write now keeps the actor from being idle by the (stopped) clock.
    r.insert("c", op_write("d", a.append("B"), "live"))
        .await
        .unwrap();
    // The first round comes with the next idle check (within 3 s) ...
    let started = std::time::Instant::now();
    while r.collection_stats("c").await.unwrap().expired_op_ids == 0 {
        assert!(started.elapsed() < Duration::from_secs(10), "no sweep ran");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // ... and the rest follow it, well before the check after that.
    let first = std::time::Instant::now();
    let mut expired = 0;
    while first.elapsed() < Duration::from_secs(2) {
        expired = r.collection_stats("c").await.unwrap().expired_op_ids;
        if expired >= WRITES {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(
        expired, WRITES,
        "expired op ids 2 s after the first sweep round"
    );
}

/// The content of root map "m" of a v1 update, as JSON.
fn map_of(update: &[u8]) -> yrs::Any {
    use yrs::types::ToJson;
    use yrs::updates::decoder::Decode;
    use yrs::Transact;
    let doc = yrs::Doc::new();
    let map = doc.get_or_insert_map("m");
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(update).unwrap())
        .unwrap();
    let txn = doc.transact();
    map.to_json(&txn)
}

/// A document of replaced blocks stays small encoded, but its built state in the document cache
/// keeps an item per write; a compaction that finds the cached state over twice
/// what a rebuild from the new snapshot would hold sheds it (issue 13: such documents filled
/// the cache and held memory), and the next write is checked against a rebuild. A document
/// whose deltas an active peer holds back is kept: its rebuild would apply them all again.
#[actix_rt::test]
async fn a_cached_document_that_outgrew_its_snapshot_is_rebuilt_after_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open_with(config(dir.path()), &clock).await;
    async fn write_all(r: &replicate_actors::Replicate, doc: &str, updates: &[Vec<u8>]) {
        for chunk in updates.chunks(500) {
            let writes = chunk
                .iter()
                .map(|u| {
                    (
                        replicate_actors::OperationType::Update,
                        write(doc, u.clone()),
                    )
                })
                .collect();
            for answer in r.write_batch("c", writes).await.unwrap() {
                answer.unwrap();
            }
        }
    }
    let (writer, updates) = block_edits(2_001);
    let (last, first) = updates.split_last().unwrap();
    write_all(&r, "m", first).await;
    let outgrown = r.cache_stats().doc_cache_bytes;
    let compacted = r
        .compact("c", replicate_actors::CompactRequest::document("m"))
        .await
        .unwrap();
    assert_eq!(compacted.removed, 2_000);
    assert_eq!(r.collection_stats("c").await.unwrap().shed_documents, 1);
    // The next write is checked against the rebuild, and the document is whole.
    r.update("c", write("m", last.clone())).await.unwrap();
    let rebuilt = r.cache_stats().doc_cache_bytes;
    assert!(
        rebuilt > 0 && rebuilt * 4 < outgrown,
        "cached before the compaction {outgrown} B, rebuilt {rebuilt} B"
    );
    let state = r.recovery("c", &[0], Some("m")).await.unwrap();
    let expected = {
        use yrs::{ReadTxn, Transact};
        writer
            .transact()
            .encode_state_as_update_v1(&yrs::StateVector::default())
    };
    assert_eq!(map_of(&state.update), map_of(&expected));
    assert!(matches!(map_of(&state.update), yrs::Any::Map(m) if m.len() == 2));

    // An active peer at the head holds back every delta of "h": its compaction removes none,
    // and the cached state is what a rebuild would hold.
    let head = r.collection_stats("c").await.unwrap().durable_seq;
    r.ack("c", "slow", head).await.unwrap();
    let (_, held) = block_edits(2_000);
    write_all(&r, "h", &held).await;
    let compacted = r
        .compact("c", replicate_actors::CompactRequest::document("h"))
        .await
        .unwrap();
    assert_eq!((compacted.removed, compacted.retained), (0, 2_000));
    assert_eq!(r.collection_stats("c").await.unwrap().shed_documents, 1);
}

#[actix_rt::test]
async fn waiters_are_capped_per_collection() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut config = config(dir.path());
    config.max_waiters_per_collection = 2;
    let r = open_with(config, &clock).await;
    let long_poll = || StreamRequest {
        wait: Duration::from_secs(10),
        ..StreamRequest::after(0)
    };
    let parked: Vec<_> = (0..2)
        .map(|_| {
            let r = r.clone();
            actix::spawn(async move { r.stream("c", long_poll()).await })
        })
        .collect();
    for _ in 0..400 {
        if r.collection_stats("c").await.unwrap().waiters == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let third = r.stream("c", long_poll()).await;
    assert!(matches!(third, Err(Error::Overloaded { .. })), "{third:?}");
    // Another collection has its own places.
    r.insert("other", write("d", Replica::new(3).append("x")))
        .await
        .unwrap();
    r.insert("c", write("d", Replica::new(1).append("wake")))
        .await
        .unwrap();
    for p in parked {
        assert_eq!(p.await.unwrap().unwrap().changes.len(), 1);
    }
    // Places are given back.
    r.insert("c", write("d", Replica::new(2).append("more")))
        .await
        .unwrap();
    let page = r.stream("c", long_poll()).await.unwrap();
    assert_eq!(page.changes.len(), 2);
}

#[actix_rt::test]
async fn peers_are_capped_and_forgotten_when_long_unseen() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut config = config(dir.path());
    config.max_peers_per_collection = 3;
    config.peer_retention = Duration::from_secs(100);
    config.idle_timeout = Duration::from_millis(50);
    let r = open_with(config, &clock).await;
    r.insert("c", write("d", Replica::new(1).append("x")))
        .await
        .unwrap();
    for p in ["p1", "p2", "p3"] {
        r.ack("c", p, 1).await.unwrap();
    }
    let fourth = r.ack("c", "p4", 1).await;
    assert!(
        matches!(fourth, Err(Error::Overloaded { .. })),
        "{fourth:?}"
    );
    // A known peer still acks.
    assert_eq!(r.ack("c", "p1", 1).await.unwrap(), 1);
    // Long unseen peers are forgotten by the periodic sweep; then new peers fit.
    clock.advance(101_000);
    let mut admitted = false;
    for _ in 0..400 {
        if r.ack("c", "p4", 1).await.is_ok() {
            admitted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(admitted, "long-unseen peers were never forgotten");
    assert_eq!(r.collection_stats("c").await.unwrap().peers, 1);
}

#[actix_rt::test]
async fn reads_of_unknown_collections_start_no_actor_and_live_actors_are_capped() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut config = config(dir.path());
    config.max_live_collections = 5;
    let r = open_with(config, &clock).await;
    for i in 0..200 {
        let c = format!("nobody-{i}");
        let page = r.stream(&c, StreamRequest::after(0)).await.unwrap();
        assert!(page.changes.is_empty() && page.cursor == 0);
        assert_eq!(r.state(&c).await.unwrap().cursor, 0);
        assert!(matches!(
            r.stream(&c, StreamRequest::after(1)).await,
            Err(Error::CursorAhead { .. })
        ));
    }
    assert_eq!(r.stats().await.live_collections, 0);
    // Writes start actors; past the cap the least recently used quiet ones stop.
    for i in 0..30 {
        r.insert(&format!("c{i}"), write("d", Replica::new(1).append("x")))
            .await
            .unwrap();
    }
    let mut live = u64::MAX;
    // (Up to 10 s: stops are asynchronous and CI machines are busy.)
    for _ in 0..1000 {
        live = r.stats().await.live_collections;
        if live <= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(live <= 6, "{live} live collection actors, cap 5");
    // A stopped collection still answers with everything it stored.
    let page = r.stream("c0", StreamRequest::after(0)).await.unwrap();
    assert_eq!(page.changes.len(), 1);
}

#[actix_rt::test]
async fn writes_are_checked_against_the_documents_current_state() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    // Each half of the pair is fine alone; together they would break every merge.
    let (child, parent) = craft::invalid_parent_pair();
    r.insert("c", write("d", child)).await.unwrap();
    let refused = r.update("c", write("d", parent.clone())).await;
    assert!(
        matches!(&refused, Err(e) if e.code() == "yjs_limit"),
        "{refused:?}"
    );
    // The same bytes go into another document, which holds no such child.
    r.insert("c", write("other", parent)).await.unwrap();
    // Nesting is bounded across writes: a 60-deep chain, then 10 more levels under it.
    r.insert("c", write("deep", craft::nested_maps(7, 60, false)))
        .await
        .unwrap();
    let more: Vec<craft::Item> = (60..70)
        .map(|i| craft::Item {
            origin: None,
            right_origin: None,
            parent: craft::ParentRef::Id(craft::ItemId {
                client: 7,
                clock: i - 1,
            }),
            parent_sub: Some("k".into()),
            content: craft::ItemContent::Map,
        })
        .collect();
    let deeper = r
        .update("c", write("deep", craft::update(&[(7, 60, more)], &[])))
        .await;
    assert!(matches!(&deeper, Err(e) if e.code() == "yjs_limit"));
    // Deleting the accepted chain's root is fine, and every read of the document works.
    r.update("c", write("deep", craft::delete(7, 0, 1)))
        .await
        .unwrap();
    for doc in ["d", "deep", "other"] {
        r.compact("c", replicate_actors::CompactRequest::document(doc))
            .await
            .unwrap();
        r.recovery("c", &[0], Some(doc)).await.unwrap();
    }
    r.state("c").await.unwrap();
    let stats = r.collection_stats("c").await.unwrap();
    assert_eq!((stats.rejected_writes, stats.quarantined_updates), (2, 0));
}

/// Document counters are kept in memory only for the recently used documents
/// (`doc_counters_cached`); the totals in stats stay exact as documents are written, evicted,
/// read back and compacted, and equal what a restart computes from the store.
#[actix_rt::test]
async fn document_counters_are_bounded_and_totals_stay_exact() {
    use replicate_actors::CompactRequest;
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut config = config(dir.path());
    config.doc_counters_cached = 3;
    let r = open_with(config.clone(), &clock).await;
    let mut written = 0u64;
    for round in 0..3 {
        for d in 0..20 {
            let bytes = Replica::new(1 + d + 100 * round).append("x");
            written += bytes.len() as u64;
            r.insert("c", write(&format!("doc-{d}"), bytes))
                .await
                .unwrap();
        }
    }
    let stats = r.collection_stats("c").await.unwrap();
    assert_eq!((stats.documents, stats.retained_bytes), (20, written));
    // Compact half the documents (no peers: every delta may go).
    let mut removed = 0;
    for d in (0..20).step_by(2) {
        let c = r
            .compact("c", CompactRequest::document(format!("doc-{d}")))
            .await
            .unwrap();
        removed += c.removed;
    }
    assert_eq!(removed, 30);
    let after = r.collection_stats("c").await.unwrap();
    assert_eq!(after.documents, 20);
    assert!(after.retained_bytes < written);
    r.close(Duration::from_secs(5)).await.unwrap();
    let r = open_with(config, &clock).await;
    let reloaded = r.collection_stats("c").await.unwrap();
    assert_eq!(
        (reloaded.documents, reloaded.retained_bytes),
        (after.documents, after.retained_bytes),
        "running totals differ from the store's"
    );
    // Writes to evicted documents keep counting from the stored counters.
    r.insert("c", write("doc-1", Replica::new(999).append("y")))
        .await
        .unwrap();
    assert_eq!(r.collection_stats("c").await.unwrap().documents, 20);
}
