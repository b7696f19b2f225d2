//! Restart: reopening the store continues every collection above every seq ever issued (also
//! after compaction deleted the newest deltas), with snapshots, peers and counters intact.

#[macro_use]
mod common;

use std::time::Duration;

use common::*;
use replicate_actors::{CompactRequest, ManualClock, StreamRequest};

const GRACE: Duration = Duration::from_secs(5);

async fn seq_continues_after_restart_even_when_newest_deltas_were_compacted() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let author = Replica::new(1);
    {
        let r = open(dir.path(), &clock).await;
        for i in 0..10 {
            r.update("c", write("d", author.append(&format!("{i} "))))
                .await
                .unwrap();
        }
        r.ack("c", "p", 4).await.unwrap();
        clock.advance(PEER_TIMEOUT.as_millis() as u64 + 1);
        // No active peer: compaction deletes every delta, including the newest (seq 10).
        let out = r.compact("c", CompactRequest::document("d")).await.unwrap();
        assert_eq!((out.removed, out.retained, out.snapshot_seq), (10, 0, 10));
        r.close(GRACE).await.unwrap();
    }
    let r = open(dir.path(), &clock).await;
    let stats = r.collection_stats("c").await.unwrap();
    assert_eq!(stats.durable_seq, 10);
    assert_eq!(stats.peers, 1);
    assert_eq!(stats.retained_bytes, 0);
    let next = r
        .update("c", write("d", author.append("after")))
        .await
        .unwrap();
    assert_eq!(next.seq, 11, "never 1, never a reused seq");
    // The old ack survived: an ack below it keeps the maximum.
    assert_eq!(r.ack("c", "p", 2).await.unwrap(), 4);
    let mut fresh = Peer::new("fresh", 50);
    fresh.sync(&r, "c", 100).await;
    assert_eq!(
        fresh.replica("d").text(),
        author.text(),
        "the snapshot survived the restart"
    );
    r.close(GRACE).await.unwrap();
}

async fn answered_writes_survive_repeated_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let author = Replica::new(1);
    let mut answered = Vec::new();
    for life in 0..3 {
        let r = open(dir.path(), &clock).await;
        for i in 0..20 {
            let w = r
                .update("c", write("d", author.append(&format!("{life}.{i} "))))
                .await
                .unwrap();
            answered.push(w.seq);
        }
        r.close(GRACE).await.unwrap();
    }
    assert_eq!(answered, (1..=60).collect::<Vec<_>>());
    let r = open(dir.path(), &clock).await;
    let page = r
        .stream(
            "c",
            StreamRequest {
                limit: 1000,
                ..StreamRequest::after(0)
            },
        )
        .await
        .unwrap();
    assert_eq!(page.changes.len(), 60);
    let check = Replica::new(2);
    for ch in &page.changes {
        check.apply(&ch.bytes);
    }
    assert_eq!(check.text(), author.text());
    r.close(GRACE).await.unwrap();
}

on_every_engine!(
    seq_continues_after_restart_even_when_newest_deltas_were_compacted,
    answered_writes_survive_repeated_restarts,
);
