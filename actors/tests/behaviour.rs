//! The collection actor's other promises: op-id idempotency, long-poll waiting, the compaction
//! hint, automatic compaction, idle eviction, and the observable state.

mod common;

use std::time::Duration;

use common::*;
use replicate_actors::{ManualClock, StreamRequest, Write};

#[actix_rt::test]
async fn retried_op_id_answers_the_first_seq_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let a = Replica::new(1);
    let w = Write {
        document_id: "d".into(),
        bytes: a.append("once"),
        op_id: Some("op-1".into()),
    };
    let first = r.insert("c", w.clone()).await.unwrap();
    let other = r.insert("c", write("d", a.append("!"))).await.unwrap();
    let again = r.insert("c", w).await.unwrap();
    assert_eq!((first.seq, first.duplicate), (1, false));
    assert_eq!(other.seq, 2);
    assert_eq!((again.seq, again.duplicate), (1, true));
    let stats = r.collection_stats("c").await.unwrap();
    assert_eq!(
        (stats.assigned_seq, stats.appends, stats.duplicate_writes),
        (2, 2, 1)
    );
    // Op ids are per collection.
    let elsewhere = Write {
        document_id: "d".into(),
        bytes: a.append("?"),
        op_id: Some("op-1".into()),
    };
    assert_eq!(r.insert("other", elsewhere).await.unwrap().seq, 1);
}

#[actix_rt::test]
async fn long_poll_answers_when_a_change_commits() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    // Nothing new and a short wait: an empty page at the same cursor.
    let empty = r
        .stream(
            "c",
            StreamRequest {
                wait: Duration::from_millis(20),
                ..StreamRequest::after(0)
            },
        )
        .await
        .unwrap();
    assert!(empty.changes.is_empty() && !empty.has_more && empty.cursor == 0);

    let waiters: Vec<_> = (0..200)
        .map(|_| {
            let r = r.clone();
            actix::spawn(async move {
                r.stream(
                    "c",
                    StreamRequest {
                        wait: Duration::from_secs(20),
                        ..StreamRequest::after(0)
                    },
                )
                .await
            })
        })
        .collect();
    // Wait until all 200 are parked, observed through the actor's state.
    for _ in 0..500 {
        if r.collection_stats("c").await.unwrap().waiters == 200 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(r.collection_stats("c").await.unwrap().waiters, 200);
    r.insert("c", write("d", Replica::new(1).append("wake")))
        .await
        .unwrap();
    for w in waiters {
        let page = w.await.unwrap().unwrap();
        assert_eq!(page.changes.len(), 1);
        assert_eq!(page.cursor, 1);
    }
    assert_eq!(r.collection_stats("c").await.unwrap().waiters, 0);
}

on_every_engine!(compaction_hint_and_automatic_compaction);

/// On PostgreSQL the reopened node holds no counters for "big": automatic compaction reads
/// them off the actor's thread before it decides.
async fn compaction_hint_and_automatic_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let a = Replica::new(1);
    for _ in 0..10 {
        r.update("c", write("big", a.append(&"x".repeat(100))))
            .await
            .unwrap();
    }
    r.update("c", write("small", Replica::new(2).append("y")))
        .await
        .unwrap();
    let hint = |t| StreamRequest {
        size_threshold: Some(t),
        ..StreamRequest::after(0)
    };
    assert_eq!(
        r.stream("c", hint(500)).await.unwrap().compact.as_deref(),
        Some("big")
    );
    assert_eq!(r.stream("c", hint(1_000_000)).await.unwrap().compact, None);
    r.close(Duration::from_secs(1)).await.unwrap();

    // With automatic compaction on, passing the threshold compacts without being asked.
    let mut config = config(dir.path());
    config.auto_compact = true;
    config.size_threshold = 2_000;
    let r = open_with(config, &clock).await;
    for _ in 0..20 {
        r.update("c", write("big", a.append(&"x".repeat(100))))
            .await
            .unwrap();
    }
    let mut compacted = false;
    for _ in 0..400 {
        let stats = r.collection_stats("c").await.unwrap();
        if stats.compactions > 0 && stats.deltas_removed > 0 {
            compacted = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(compacted, "automatic compaction never ran");
    let mut fresh = Peer::new("fresh", 10);
    fresh.sync(&r, "c", 100).await;
    assert_eq!(fresh.replica("big").text(), a.text());
}

#[actix_rt::test]
async fn idle_collections_stop_and_restart_with_their_counter() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut config = config(dir.path());
    config.idle_timeout = Duration::from_millis(20);
    let r = open_with(config, &clock).await;
    let a = Replica::new(1);
    r.insert("c", write("d", a.append("1"))).await.unwrap();
    assert_eq!(r.stats().await.live_collections, 1);
    clock.advance(1_000);
    let mut stopped = false;
    for _ in 0..200 {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if r.stats().await.live_collections == 0 {
            stopped = true;
            break;
        }
    }
    assert!(stopped, "an idle collection actor kept running");
    assert_eq!(
        r.insert("c", write("d", a.append("2"))).await.unwrap().seq,
        2
    );
    assert_eq!(r.stats().await.live_collections, 1);
}
