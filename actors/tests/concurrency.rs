//! Invariant 1 under concurrency: 64 concurrent writers get exactly seqs 1..=64N, and readers
//! streaming at the same time never see a gap or a seq twice.

#[macro_use]
mod common;

use std::collections::HashSet;

use common::*;
use futures::future::join_all;
use replicate_actors::{ManualClock, OperationType, StreamRequest, Write};

const WRITERS: usize = 64;
const PER_WRITER: usize = 40;

async fn concurrent_writers_get_contiguous_seqs_and_streamers_see_no_gap() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let total = (WRITERS * PER_WRITER) as u64;

    let writers = (0..WRITERS).map(|w| {
        let r = r.clone();
        async move {
            let replica = Replica::new(w as u64 + 1);
            let mut seqs = Vec::new();
            for i in 0..PER_WRITER {
                let bytes = replica.append(&format!("w{w}-{i} "));
                let written = r
                    .update(
                        "c",
                        Write {
                            document_id: format!("doc-{}", w % 8),
                            bytes,
                            op_id: None,
                        },
                    )
                    .await
                    .unwrap();
                seqs.push(written.seq);
            }
            seqs
        }
    });
    let streamers = (0..4).map(|s| {
        let r = r.clone();
        async move {
            let mut cursor = 0;
            let mut seen = Vec::new();
            while cursor < total {
                let req = StreamRequest {
                    limit: 1 + s * 13,
                    wait: std::time::Duration::from_millis(200),
                    ..StreamRequest::after(cursor)
                };
                let page = r.stream("c", req).await.unwrap();
                for ch in &page.changes {
                    assert_ne!(ch.operation, OperationType::Snapshot);
                    seen.push(ch.seq);
                }
                cursor = page.cursor;
            }
            seen
        }
    });
    let (written, streamed) = futures::join!(join_all(writers), join_all(streamers));

    let mut all: Vec<u64> = written.into_iter().flatten().collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=total).collect::<Vec<_>>(),
        "seqs are exactly 1..=64N"
    );
    for seen in streamed {
        assert_eq!(
            seen,
            (1..=total).collect::<Vec<_>>(),
            "a streamer saw a gap, a repeat or disorder"
        );
    }
    let stats = r.collection_stats("c").await.unwrap();
    assert_eq!(
        (stats.assigned_seq, stats.durable_seq, stats.pending_writes),
        (total, total, 0)
    );
}

/// Many collections at once keep independent counters.
async fn collections_have_independent_sequences() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let jobs = (0..32).map(|i| {
        let r = r.clone();
        async move {
            let replica = Replica::new(i + 1);
            let c = format!("c{}", i % 4);
            let mut seqs = HashSet::new();
            for _ in 0..10 {
                seqs.insert(
                    r.insert(&c, write("d", replica.append("x")))
                        .await
                        .unwrap()
                        .seq,
                );
            }
            (c, seqs)
        }
    });
    let results = join_all(jobs).await;
    for c in ["c0", "c1", "c2", "c3"] {
        let mut seqs: Vec<u64> = results
            .iter()
            .filter(|(name, _)| name == c)
            .flat_map(|(_, s)| s.iter().copied())
            .collect();
        seqs.sort_unstable();
        assert_eq!(seqs, (1..=80).collect::<Vec<_>>(), "{c}");
    }
}

on_every_engine!(
    concurrent_writers_get_contiguous_seqs_and_streamers_see_no_gap,
    collections_have_independent_sequences,
);
