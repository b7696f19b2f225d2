//! The seed scenarios (8.3–8.5): compaction keeps content, respects slow active peers, and a
//! peer idle past the timeout still converges — per document.

#[macro_use]
mod common;

use common::*;
use replicate_actors::{CompactRequest, ManualClock, OperationType, StreamRequest};

const C: &str = "todos";

/// 8.3: after compaction, snapshot + retained deltas applied to a fresh doc equal the state
/// before; the stored bytes shrink when content was deleted.
async fn compaction_preserves_state_and_shrinks_deleted_content() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let author = Replica::new(1);
    for i in 0..200 {
        r.update(
            C,
            write(
                "d",
                author.append(&format!("line {i} with some padding text\n")),
            ),
        )
        .await
        .unwrap();
    }
    r.update(C, write("d", author.delete_front(4000)))
        .await
        .unwrap();
    let before = author.text();
    let bytes_before = r.collection_stats(C).await.unwrap().retained_bytes;

    let out = r.compact(C, CompactRequest::document("d")).await.unwrap();
    assert_eq!(out.removed, 201, "no active peer: every merged delta goes");
    assert_eq!(out.retained, 0);
    assert_eq!(out.snapshot_seq, 201);

    let mut fresh = Peer::new("fresh", 100);
    fresh.sync(&r, C, 100).await;
    assert_eq!(fresh.replica("d").text(), before);
    let page = r.stream(C, StreamRequest::after(0)).await.unwrap();
    let snapshot_len: usize = page
        .changes
        .iter()
        .filter(|c| c.operation == OperationType::Snapshot)
        .map(|c| c.bytes.len())
        .sum();
    assert!(
        snapshot_len < bytes_before as usize / 2,
        "snapshot {snapshot_len} B vs {bytes_before} B of deltas"
    );
    assert_eq!(r.collection_stats(C).await.unwrap().retained_bytes, 0);
}

/// 8.4: P acked 10, Q acked 1,000; compaction keeps every delta ≥ P's ack while P is active,
/// and P streaming from 10 gets every update.
async fn slow_active_peer_holds_back_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let author = Replica::new(1);
    for i in 0..1_000 {
        r.update(C, write("d", author.append(&format!("{i},"))))
            .await
            .unwrap();
    }
    let mut p = Peer::new("P", 100);
    p.cursor = 0;
    // P has synced through 10.
    let page = r
        .stream(
            C,
            StreamRequest {
                limit: 10,
                ..StreamRequest::after(0)
            },
        )
        .await
        .unwrap();
    for ch in &page.changes {
        p.replica("d").apply(&ch.bytes);
    }
    p.cursor = page.cursor;
    assert_eq!(p.cursor, 10);
    p.ack(&r, C).await;
    r.ack(C, "Q", 1_000).await.unwrap();
    clock.advance(1_000);

    let out = r.compact(C, CompactRequest::document("d")).await.unwrap();
    assert_eq!(out.removed, 9, "only seqs 1..=9 are below P's ack of 10");
    assert_eq!(out.retained, 991);
    let left = r
        .stream(
            C,
            StreamRequest {
                limit: 1000,
                ..StreamRequest::after(9)
            },
        )
        .await
        .unwrap();
    let first = left
        .changes
        .iter()
        .find(|c| c.operation != OperationType::Snapshot)
        .unwrap();
    assert_eq!(first.seq, 10, "no delta at or above P's ack was deleted");

    let seen = p.sync(&r, C, 100).await;
    assert_eq!(
        seen,
        (11..=1_000).collect::<Vec<_>>(),
        "P gets every later delta, in order"
    );
    assert_eq!(p.replica("d").text(), author.text());
}

/// 8.5: a peer idle past the timeout; compaction deletes deltas above its cursor; it streams
/// from its old cursor and converges — also when another document keeps an older delta (so
/// "cursor < oldest delta in the collection" would wrongly say nothing is missing).
async fn idle_peer_converges_through_the_snapshot_per_document() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let other = Replica::new(2);
    let author = Replica::new(1);
    // seq 1: an old delta of another document that is never compacted.
    r.insert(C, write("other", other.append("keep me")))
        .await
        .unwrap();
    for i in 0..20 {
        r.update(C, write("d", author.append(&format!("{i};"))))
            .await
            .unwrap();
    }
    let mut idle = Peer::new("idle", 100);
    let page = r
        .stream(
            C,
            StreamRequest {
                limit: 5,
                ..StreamRequest::after(0)
            },
        )
        .await
        .unwrap();
    for ch in &page.changes {
        idle.replica(&ch.document_id).apply(&ch.bytes);
    }
    idle.cursor = page.cursor;
    assert_eq!(idle.cursor, 5);
    idle.ack(&r, C).await;

    let mut active = Peer::new("active", 200);
    active.sync(&r, C, 100).await;
    active.ack(&r, C).await;
    // The idle peer times out; the active one keeps acking.
    clock.advance(PEER_TIMEOUT.as_millis() as u64 + 1);
    active.ack(&r, C).await;

    let out = r.compact(C, CompactRequest::document("d")).await.unwrap();
    // Seqs 2..=20 go; 21 stays because the active peer acked exactly 21 (only seq < ack goes).
    assert_eq!(
        (out.removed, out.retained),
        (19, 1),
        "the idle peer no longer holds anything back"
    );
    let oldest = r.stream(C, StreamRequest::after(0)).await.unwrap();
    assert!(
        oldest
            .changes
            .iter()
            .any(|c| c.seq == 1 && c.operation == OperationType::Insert),
        "the other document's delta stays"
    );

    let page = r
        .stream(C, StreamRequest::after(idle.cursor))
        .await
        .unwrap();
    assert_eq!(
        page.changes[0].operation,
        OperationType::Snapshot,
        "the gap is filled by the snapshot"
    );
    assert_eq!(page.changes[0].document_id, "d");
    idle.sync(&r, C, 100).await;
    assert_eq!(idle.cursor, 21);
    assert_eq!(idle.replica("d").text(), author.text());
    assert_eq!(idle.replica("other").text(), "keep me");
}

/// A stale client snapshot cannot remove content: the merge keeps every delta.
async fn stale_client_snapshot_cannot_remove_content() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let author = Replica::new(1);
    r.insert(C, write("d", author.append("old ")))
        .await
        .unwrap();
    let stale = author.full_state();
    let stale_sv = author.state_vector();
    r.update(C, write("d", author.append("new"))).await.unwrap();
    let req = CompactRequest {
        snapshot: Some(stale),
        state_vector: Some(stale_sv),
        ..CompactRequest::document("d")
    };
    r.compact(C, req).await.unwrap();
    let mut fresh = Peer::new("fresh", 100);
    fresh.sync(&r, C, 100).await;
    assert_eq!(fresh.replica("d").text(), "old new");
}

/// Repeated compactions keep everything and move the snapshot seq forward.
async fn repeated_compaction_accumulates() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let author = Replica::new(1);
    let mut last = 0;
    for round in 0..5 {
        for i in 0..10 {
            r.update(C, write("d", author.append(&format!("{round}.{i} "))))
                .await
                .unwrap();
        }
        let out = r.compact(C, CompactRequest::document("d")).await.unwrap();
        assert!(out.snapshot_seq > last);
        last = out.snapshot_seq;
    }
    let mut fresh = Peer::new("fresh", 100);
    fresh.sync(&r, C, 7).await;
    assert_eq!(fresh.replica("d").text(), author.text());
    assert_eq!(fresh.cursor, 50);
    // Recovery from an empty state vector gives the same document.
    let rec = r
        .recovery(C, &Replica::new(9).state_vector(), Some("d"))
        .await
        .unwrap();
    let check = Replica::new(9);
    check.apply(&rec.update);
    assert_eq!(check.text(), author.text());
    assert_eq!(rec.cursor, 50);
}

on_every_engine!(
    compaction_preserves_state_and_shrinks_deleted_content,
    slow_active_peer_holds_back_compaction,
    idle_peer_converges_through_the_snapshot_per_document,
    stale_client_snapshot_cannot_remove_content,
    repeated_compaction_accumulates,
);
