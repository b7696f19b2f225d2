//! The model test's concurrent sibling: writers, compactions (some with stale client
//! snapshots), acks and streaming peers run at the same time, interleaved differently in every
//! case. The sequential model cannot see races between a stream read and a compaction commit;
//! this one can (it is the schedule that found one in review).
//!
//! Each peer records, after every page, its cursor and its state per document; once all tasks
//! end the log is complete, and every recorded state must hold every logged update of its
//! document with seq ≤ the recorded cursor. At the end every peer converges.
//!
//! Pages are cut with tiny byte budgets and tiny buckets of the deleted-seq index while up to
//! 24 documents are compacted (some rounds compact all of them), so readers page through many
//! snapshots while compactions commit; every page must hold at most the budget plus one change.
//! Fresh readers start from cursor 0 or from a random cursor (holding exactly the updates up
//! to it, rebuilt from the complete log afterwards) and must reach exactly the full state.

mod common;

use std::cell::RefCell;
use std::collections::HashMap;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use replicate_actors::{CompactRequest, ManualClock, OperationType, StreamPage, StreamRequest};
use yrs::updates::decoder::Decode;
use yrs::{StateVector, Update};

const C: &str = "concurrent";
const DOCS: usize = 24;

type Log = Rc<RefCell<Vec<(u64, String, Vec<u8>)>>>;
/// (cursor, per-document state vector) after each page.
type Observations = Vec<(u64, HashMap<String, StateVector>)>;
/// A fresh reader's round: its start cursor and, per page, (changes as (document, bytes), the
/// page's cursor).
type Round = (u64, Vec<(Vec<(String, Vec<u8>)>, u64)>);

#[derive(Debug, Clone)]
struct Schedule {
    writers: Vec<Vec<(usize, String)>>,
    /// (document, or `DOCS` for all of them; with a stale client snapshot; pause).
    compactions: Vec<(usize, bool, u8)>,
    limits: Vec<usize>,
    max_page_bytes: usize,
    bucket: u64,
    /// Start cursors of fresh readers, as a percentage of the seqs logged when they start
    /// (`None`: from 0).
    starts: Vec<Option<u64>>,
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (
        proptest::collection::vec(
            proptest::collection::vec((0..DOCS, "[a-z]{1,3}"), 5..25),
            1..4,
        ),
        proptest::collection::vec((0..=DOCS, any::<bool>(), 0u8..4), 1..12),
        proptest::collection::vec(1usize..5, 1..3),
        prop_oneof![Just(1usize), Just(48), Just(16 << 20)],
        prop_oneof![Just(1u64), Just(3), Just(8), Just(1024)],
        proptest::collection::vec(proptest::option::of(0u64..=100), 4),
    )
        .prop_map(
            |(writers, compactions, limits, max_page_bytes, bucket, starts)| Schedule {
                writers,
                compactions,
                limits,
                max_page_bytes,
                bucket,
                starts,
            },
        )
}

/// Asserts what every page must be: at most the budget plus one change (its largest), at most
/// `limit` deltas, and moving when it says there is more.
fn check_bounded(page: &StreamPage, from: u64, limit: usize, budget: usize) {
    let sizes: Vec<usize> = page.changes.iter().map(|c| c.bytes.len()).collect();
    let total: usize = sizes.iter().sum();
    let largest = sizes.iter().copied().max().unwrap_or(0);
    assert!(
        total - largest <= budget,
        "page from {from}: {total} B in {} changes, over the budget of {budget} B plus one \
         change ({largest} B)",
        sizes.len()
    );
    let deltas = page
        .changes
        .iter()
        .filter(|c| c.operation != OperationType::Snapshot)
        .count();
    assert!(
        deltas <= limit,
        "page from {from}: {deltas} deltas, limit {limit}"
    );
    assert!(
        !page.has_more || page.cursor > from,
        "page from {from} has more but did not move"
    );
}

fn sv_holds(held: &StateVector, expected: &StateVector) -> bool {
    expected
        .iter()
        .all(|(client, clock)| held.get(client) >= *clock)
}

async fn run(s: Schedule) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut config = config(dir.path());
    config.max_page_bytes = s.max_page_bytes;
    config.page_bucket_seqs = s.bucket;
    // Two documents' counters in memory: the rest come back from the store.
    config.doc_counters_cached = 2;
    let budget = s.max_page_bytes;
    let r = open_with(config, &clock).await;
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
                for &(doc, with_snapshot, pause) in &compactions {
                    let docs = if doc == DOCS { 0..DOCS } else { doc..doc + 1 };
                    for doc in docs {
                        for _ in 0..pause {
                            actix_rt::task::yield_now().await;
                        }
                        let mut req = CompactRequest::document(format!("doc-{doc}"));
                        if with_snapshot {
                            // A client snapshot that knows nothing: it must not remove content.
                            req.snapshot = Some(stale.full_state());
                        }
                        clock.advance(10);
                        r.compact(C, req).await.unwrap();
                    }
                }
            }
        })
    };

    // Fresh readers start again and again, never acking: they are the ones compaction runs
    // past, so their pages must carry snapshots. Some start from 0, some from a random cursor
    // at or below the highest seq logged so far, holding exactly the updates up to it (known
    // only once the log is complete: the pages are recorded and replayed then).
    let fresh: Vec<_> = s
        .limits
        .iter()
        .enumerate()
        .map(|(p, &limit)| {
            let (r, writers_done, log, starts) = (
                r.clone(),
                writers_done.clone(),
                log.clone(),
                s.starts.clone(),
            );
            actix_rt::spawn(async move {
                let mut rounds: Vec<Round> = Vec::new();
                while !*writers_done.borrow() {
                    let start = match starts[(rounds.len() + p) % starts.len()] {
                        None => 0,
                        Some(percent) => {
                            let top = log.borrow().iter().map(|(s, _, _)| *s).max().unwrap_or(0);
                            top * percent / 100
                        }
                    };
                    let mut cursor = start;
                    let mut pages = Vec::new();
                    loop {
                        let page = r
                            .stream(
                                C,
                                StreamRequest {
                                    limit,
                                    ..StreamRequest::after(cursor)
                                },
                            )
                            .await
                            .unwrap();
                        check_bounded(&page, cursor, limit, budget);
                        let changes = page
                            .changes
                            .iter()
                            .map(|ch| {
                                let op = ch.operation.as_str();
                                let tag = format!("{op}:{}@{}", ch.document_id, ch.seq);
                                (tag, ch.bytes.clone())
                            })
                            .collect();
                        pages.push((changes, page.cursor));
                        cursor = page.cursor;
                        if !page.has_more {
                            break;
                        }
                    }
                    rounds.push((start, pages));
                }
                rounds
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
                    check_bounded(&page, peer.cursor, limit, budget);
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
                        .map(|(d, rep)| (d.clone(), rep.sv()))
                        .collect();
                    seen.push((peer.cursor, states));
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
        fresh_seen.push(f.await.unwrap());
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
    let svs: Vec<StateVector> = log
        .iter()
        .map(|(_, _, bytes)| Update::decode_v1(bytes).expect("own update").state_vector())
        .collect();
    // Per document, the state vector of its logged updates with seq ≤ `upto`.
    let expected_svs = |upto: u64| {
        let mut out: HashMap<&str, StateVector> = HashMap::new();
        for ((seq, d, _), sv) in log.iter().zip(&svs) {
            if *seq <= upto {
                out.entry(d.as_str()).or_default().merge(sv.clone());
            }
        }
        out
    };
    let expected = |doc: &str, upto: u64| {
        let rep = Replica::new(900_001);
        for (seq, d, bytes) in log.iter() {
            if *seq <= upto && d == doc {
                rep.apply(bytes);
            }
        }
        rep
    };
    let order = || {
        log.iter()
            .map(|(s, d, _)| (*s, d.as_str()))
            .collect::<Vec<_>>()
    };
    for (p, rounds) in fresh_seen.iter().enumerate() {
        for (start, pages) in rounds {
            let mut reader = Peer::new(&format!("fresh{p}"), 10_000);
            for d in 0..DOCS {
                let name = format!("doc-{d}");
                reader
                    .replica(&name)
                    .apply(&expected(&name, *start).full_state());
            }
            let mut trail = String::new();
            for (changes, cursor) in pages {
                for (tag, bytes) in changes {
                    let doc = tag.split(['@', ':']).nth(1).expect("tagged");
                    reader.replica(doc).apply(bytes);
                    trail.push_str(tag);
                    trail.push(' ');
                }
                trail.push_str(&format!("| cursor {cursor} "));
                for (doc, want) in expected_svs(*cursor) {
                    assert!(
                        sv_holds(&reader.replica(doc).sv(), &want),
                        "a fresh reader from {start} at cursor {cursor} missed updates of \
                         {doc}; pages: {trail}; log: {:?}",
                        order()
                    );
                }
            }
            // A round that ended at the head holds exactly the full state there.
            if pages.last().map(|(_, c)| *c) == Some(total as u64) {
                for d in 0..DOCS {
                    let name = format!("doc-{d}");
                    let full = expected(&name, u64::MAX);
                    let held = reader.replica(&name);
                    assert_eq!(held.text(), full.text(), "reader from {start} on {name}");
                    assert!(held.contains(&full) && full.contains(held));
                }
            }
        }
    }
    for (peer, seen) in &results {
        for (cursor, states) in seen {
            for (doc, want) in expected_svs(*cursor) {
                let held = states.get(doc).cloned().unwrap_or_default();
                assert!(
                    sv_holds(&held, &want),
                    "{} at cursor {cursor} missed updates of {doc}",
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

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_peers_writers_and_compactions_lose_nothing_on_postgres(s in schedule()) {
        if common::use_postgres("concurrent_peers_writers_and_compactions_lose_nothing_on_postgres") {
            actix::System::new().block_on(run(s));
        }
    }
}
