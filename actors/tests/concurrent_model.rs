//! The model test's concurrent sibling: writers, compactions (some with stale client
//! snapshots), acks and streaming peers run at the same time, interleaved differently in every
//! case. The sequential model cannot see races between a stream read and a compaction commit;
//! this one can (it is the schedule that found one in review).
//!
//! Each peer records, after every page, its cursor and its state per document; once all tasks
//! end the log is complete, and every recorded state must hold every logged update of its
//! document with seq ≤ the recorded cursor. At the end every peer converges.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use replicate_actors::{CompactRequest, ManualClock, OperationType, StreamRequest};

const C: &str = "concurrent";
const DOCS: usize = 3;

type Log = Rc<RefCell<Vec<(u64, String, Vec<u8>)>>>;
/// (cursor, per-document full state, what the pages so far carried) after each page.
type Observations = Vec<(u64, HashMap<String, Vec<u8>>, String)>;

#[derive(Debug, Clone)]
struct Schedule {
    writers: Vec<Vec<(usize, String)>>,
    compactions: Vec<(usize, bool, u8)>,
    limits: Vec<usize>,
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        proptest::collection::vec(
            proptest::collection::vec((0..DOCS, "[a-z]{1,3}"), 5..25),
            1..4,
        ),
        proptest::collection::vec((0..DOCS, any::<bool>(), 0u8..4), 1..12),
        proptest::collection::vec(1usize..5, 1..3),
    )
        .prop_map(|(writers, compactions, limits)| Schedule {
            writers,
            compactions,
            limits,
        })
}

async fn run(s: Schedule) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let r = open(dir.path(), &clock).await;
    let log: Log = Rc::default();
    let done = Rc::new(RefCell::new(false));
    let total: usize = s.writers.iter().map(Vec::len).sum();

    let writers: Vec<_> = s
        .writers
        .iter()
        .enumerate()
        .map(|(w, edits)| {
            let (r, log, edits) = (r.clone(), log.clone(), edits.clone());
            actix_rt::spawn(async move {
                let replicas: Vec<Replica> = (0..DOCS)
                    .map(|d| Replica::new(1 + (w * DOCS + d) as u64))
                    .collect();
                for (doc, text) in edits {
                    let update = replicas[doc].append(&text);
                    let name = format!("doc-{doc}");
                    let seq = r.update(C, write(&name, update.clone())).await.unwrap().seq;
                    log.borrow_mut().push((seq, name, update));
                    actix_rt::task::yield_now().await;
                }
            })
        })
        .collect();

    let writers_done = Rc::new(RefCell::new(false));
    // Compactions cycle through the schedule until the writers are done, so they keep
    // committing while pages are read.
    let compactor = {
        let (r, compactions, clock, writers_done) = (
            r.clone(),
            s.compactions.clone(),
            clock.clone(),
            writers_done.clone(),
        );
        actix_rt::spawn(async move {
            let stale = Replica::new(900_000);
            let mut rounds = 0;
            while rounds == 0 || !*writers_done.borrow() {
                rounds += 1;
                for (doc, with_snapshot, pause) in &compactions {
                    for _ in 0..*pause {
                        actix_rt::task::yield_now().await;
                    }
                    let mut req = CompactRequest::document(format!("doc-{doc}"));
                    if *with_snapshot {
                        // A client snapshot that knows nothing: it must not remove content.
                        req.snapshot = Some(stale.full_state());
                    }
                    clock.advance(10);
                    r.compact(C, req).await.unwrap();
                }
            }
        })
    };

    // Fresh readers start from cursor 0 again and again, never acking: they are the ones
    // compaction runs past, so their pages must carry snapshots.
    let fresh: Vec<_> = s
        .limits
        .iter()
        .enumerate()
        .map(|(p, &limit)| {
            let (r, writers_done) = (r.clone(), writers_done.clone());
            actix_rt::spawn(async move {
                let mut seen: Observations = Vec::new();
                let mut round = 0u64;
                while !*writers_done.borrow() {
                    round += 1;
                    let mut peer =
                        Peer::new(&format!("fresh{p}"), 10_000 + 1_000 * p as u64 + round);
                    let mut trail = String::new();
                    loop {
                        let page = r
                            .stream(
                                C,
                                StreamRequest {
                                    limit,
                                    ..StreamRequest::after(peer.cursor)
                                },
                            )
                            .await
                            .unwrap();
                        for ch in &page.changes {
                            peer.replica(&ch.document_id).apply(&ch.bytes);
                            let op = ch.operation.as_str();
                            trail.push_str(&format!("{op}:{}@{} ", ch.document_id, ch.seq));
                        }
                        peer.cursor = page.cursor;
                        trail.push_str(&format!("| cursor {} ", page.cursor));
                        let states = peer
                            .docs
                            .iter()
                            .map(|(d, rep)| (d.clone(), rep.full_state()))
                            .collect();
                        seen.push((peer.cursor, states, trail.clone()));
                        if !page.has_more {
                            break;
                        }
                    }
                }
                seen
            })
        })
        .collect();

    let peers: Vec<_> = s
        .limits
        .iter()
        .enumerate()
        .map(|(p, &limit)| {
            let (r, done) = (r.clone(), done.clone());
            actix_rt::spawn(async move {
                let mut peer = Peer::new(&format!("p{p}"), 500 + 100 * p as u64);
                let mut seen: Observations = Vec::new();
                loop {
                    let finished = *done.borrow();
                    let req = StreamRequest {
                        limit,
                        wait: Duration::from_millis(5),
                        ..StreamRequest::after(peer.cursor)
                    };
                    let page = r.stream(C, req).await.unwrap();
                    for ch in &page.changes {
                        if ch.operation != OperationType::Snapshot {
                            assert!(ch.seq > peer.cursor && ch.seq <= page.cursor);
                        }
                        peer.replica(&ch.document_id).apply(&ch.bytes);
                    }
                    assert!(page.cursor >= peer.cursor);
                    peer.cursor = page.cursor;
                    let states = peer
                        .docs
                        .iter()
                        .map(|(d, rep)| (d.clone(), rep.full_state()))
                        .collect();
                    seen.push((peer.cursor, states, String::new()));
                    // Ack sometimes, so compaction is held back by some peers some of the time.
                    if page.cursor % 3 == 0 {
                        r.ack(C, &peer.id, peer.cursor).await.unwrap();
                    }
                    if finished && !page.has_more {
                        return (peer, seen);
                    }
                }
            })
        })
        .collect();

    for w in writers {
        w.await.unwrap();
    }
    *writers_done.borrow_mut() = true;
    compactor.await.unwrap();
    let mut fresh_seen = Vec::new();
    for f in fresh {
        fresh_seen.extend(f.await.unwrap());
    }
    *done.borrow_mut() = true;
    let mut results = Vec::new();
    for p in peers {
        results.push(p.await.unwrap());
    }

    let log: Vec<(u64, String, Vec<u8>)> = log.borrow().clone();
    let mut seqs: Vec<u64> = log.iter().map(|(s, _, _)| *s).collect();
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=total as u64).collect::<Vec<_>>(),
        "seqs are exactly 1..=N"
    );
    let expected = |doc: &str, upto: u64| {
        let rep = Replica::new(900_001);
        for (seq, d, bytes) in log.iter() {
            if *seq <= upto && d == doc {
                rep.apply(bytes);
            }
        }
        rep
    };
    for (cursor, states, trail) in &fresh_seen {
        for d in 0..DOCS {
            let name = format!("doc-{d}");
            let held = Replica::new(900_003);
            if let Some(state) = states.get(&name) {
                held.apply(state);
            }
            assert!(
                held.contains(&expected(&name, *cursor)),
                "a fresh reader at cursor {cursor} missed updates of {name}; pages: {trail}; log: {:?}",
                log.iter().map(|(s, d, _)| (*s, d.as_str())).collect::<Vec<_>>()
            );
        }
    }
    for (peer, seen) in &results {
        for (cursor, states, _) in seen {
            for d in 0..DOCS {
                let name = format!("doc-{d}");
                let held = Replica::new(900_002);
                if let Some(state) = states.get(&name) {
                    held.apply(state);
                }
                assert!(
                    held.contains(&expected(&name, *cursor)),
                    "{} at cursor {cursor} missed updates of {name}",
                    peer.id
                );
            }
        }
        assert_eq!(peer.cursor, total as u64);
        for d in 0..DOCS {
            let name = format!("doc-{d}");
            let held = peer.docs.get(&name).map(Replica::text).unwrap_or_default();
            assert_eq!(
                held,
                expected(&name, u64::MAX).text(),
                "{} diverged on {name}",
                peer.id
            );
        }
    }
    r.close(Duration::from_secs(5)).await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_peers_writers_and_compactions_lose_nothing(s in schedule()) {
        actix::System::new().block_on(run(s));
    }
}
