//! A randomized model test: K peers edit documents with yrs, stream, ack, go idle, compact
//! (with and without stale client snapshots) and restart the store, in random order. Besides
//! three hot documents, up to 30 cold ones are written round robin (their seqs interleave in
//! every bucket of the deleted-seq index) and compacted together, with tiny byte budgets and
//! tiny index buckets, so many documents are compacted past a reader's cursor.
//!
//! Checked after every page: it holds at most the byte budget plus one change and at most
//! `limit` deltas, it moves when it says there is more, cursors never go back, delta seqs
//! arrive in order within (cursor, new cursor], and the reader then holds every update with
//! seq ≤ its cursor. Compaction never deletes a delta at or above the lowest ack of the active
//! peers. Readers starting from random cursors (holding exactly the updates up to them) reach
//! exactly the full state. At the end every peer syncs and equals a reference doc holding every
//! edit, and recovery/state agree with it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use replicate_actors::{
    CompactRequest, ManualClock, OperationType, Replicate, StreamPage, StreamRequest,
};
use yrs::updates::decoder::Decode;
use yrs::{StateVector, Update};

const PEERS: usize = 3;
const DOCS: usize = 3;
/// Cold documents (see the module docs).
const MANY: usize = 30;
const C: &str = "model";

#[derive(Debug, Clone)]
enum Op {
    Edit {
        peer: usize,
        doc: usize,
        text: String,
        delete: bool,
    },
    Sync {
        peer: usize,
        limit: usize,
    },
    Ack {
        peer: usize,
    },
    Advance {
        millis: u64,
    },
    Compact {
        doc: usize,
        snapshot_from: Option<usize>,
        short_timeout: bool,
    },
    /// `peer` appends to cold documents 0..count, round robin, `rounds` times.
    Spread {
        peer: usize,
        count: usize,
        rounds: usize,
    },
    /// Compacts every document written so far.
    CompactAll {
        short_timeout: bool,
    },
    /// A reader holding exactly the updates up to `at_percent` of the log pages to the head.
    Fresh {
        at_percent: u64,
        limit: usize,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PEERS, 0..DOCS, "[a-z]{1,4}", any::<bool>()).prop_map(|(peer, doc, text, d)| Op::Edit { peer, doc, delete: d && text.len() % 3 == 0, text }),
        4 => (0..PEERS, 1usize..6).prop_map(|(peer, limit)| Op::Sync { peer, limit }),
        3 => (0..PEERS).prop_map(|peer| Op::Ack { peer }),
        2 => prop_oneof![Just(1_000u64), Just(PEER_TIMEOUT.as_millis() as u64 + 1)].prop_map(|millis| Op::Advance { millis }),
        3 => (0..DOCS, proptest::option::of(0..PEERS), any::<bool>()).prop_map(|(doc, snapshot_from, short_timeout)| Op::Compact { doc, snapshot_from, short_timeout }),
        1 => (0..PEERS, 10..=MANY, 1usize..3).prop_map(|(peer, count, rounds)| Op::Spread { peer, count, rounds }),
        1 => any::<bool>().prop_map(|short_timeout| Op::CompactAll { short_timeout }),
        2 => (0u64..=100, 1usize..6).prop_map(|(at_percent, limit)| Op::Fresh { at_percent, limit }),
        1 => Just(Op::Restart),
    ]
}

fn doc_name(d: usize) -> String {
    format!("doc-{d}")
}

fn cold_name(d: usize) -> String {
    format!("many-{d}")
}

struct Model {
    log: Vec<(u64, String, Vec<u8>)>,
    /// The state vector of each logged update (same index as `log`).
    svs: Vec<StateVector>,
    reference: HashMap<String, Replica>,
    /// Per peer: (synced seq, last seen) as the server should hold it.
    acks: HashMap<usize, (u64, u64)>,
}

impl Model {
    /// A replica holding exactly the logged updates of `doc` with seq ≤ `upto`.
    fn expected(&self, doc: &str, upto: u64) -> Replica {
        let r = Replica::new(900_001);
        for (seq, d, bytes) in &self.log {
            if *seq <= upto && d == doc {
                r.apply(bytes);
            }
        }
        r
    }

    /// Per document, the state vector of its logged updates with seq ≤ `upto`.
    fn expected_svs(&self, upto: u64) -> HashMap<&str, StateVector> {
        let mut out: HashMap<&str, StateVector> = HashMap::new();
        for ((seq, doc, _), sv) in self.log.iter().zip(&self.svs) {
            if *seq <= upto {
                out.entry(doc.as_str()).or_default().merge(sv.clone());
            }
        }
        out
    }

    /// Asserts that `peer` holds every logged update with seq ≤ `cursor`.
    fn check_holds(&self, peer: &mut Peer, cursor: u64, what: &str) {
        for (doc, expected) in self.expected_svs(cursor) {
            let held = peer.replica(doc).sv();
            assert!(
                expected
                    .iter()
                    .all(|(client, clock)| held.get(client) >= *clock),
                "{} at cursor {cursor} misses updates of {doc} ({what})",
                peer.id
            );
        }
    }

    fn log_write(&mut self, seq: u64, name: String, update: Vec<u8>) {
        assert_eq!(seq, self.log.len() as u64 + 1, "seqs are 1, 2, 3, …");
        self.reference
            .entry(name.clone())
            .or_insert_with(|| Replica::new(900_003))
            .apply(&update);
        let sv = Update::decode_v1(&update)
            .expect("own update")
            .state_vector();
        self.svs.push(sv);
        self.log.push((seq, name, update));
    }

    fn min_active(&self, now: u64, timeout: u64) -> Option<u64> {
        self.acks
            .values()
            .filter(|(_, seen)| now.saturating_sub(*seen) < timeout)
            .map(|(s, _)| *s)
            .min()
    }
}

async fn all_deltas_after(r: &Replicate, after: u64) -> Vec<u64> {
    let mut cursor = after;
    let mut seqs = Vec::new();
    loop {
        let page = r
            .stream(
                C,
                StreamRequest {
                    limit: 1000,
                    ..StreamRequest::after(cursor)
                },
            )
            .await
            .unwrap();
        seqs.extend(
            page.changes
                .iter()
                .filter(|c| c.operation != OperationType::Snapshot)
                .map(|c| c.seq),
        );
        assert!(
            !page.has_more || page.cursor > cursor,
            "page from {cursor} has more but did not move"
        );
        cursor = page.cursor;
        if !page.has_more {
            return seqs;
        }
    }
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

/// Streams `peer` to the head, checking every page (see the module docs); answers the seqs of
/// the deltas received.
async fn sync_checked(
    peer: &mut Peer,
    r: &Replicate,
    limit: usize,
    budget: usize,
    model: &Model,
) -> Vec<u64> {
    let mut seen = Vec::new();
    let mut pages = 0usize;
    loop {
        let from = peer.cursor;
        let page = r
            .stream(
                C,
                StreamRequest {
                    limit,
                    ..StreamRequest::after(from)
                },
            )
            .await
            .expect("stream answers");
        pages += 1;
        assert!(pages <= 10 * model.log.len() + 10, "paging does not end");
        assert!(
            page.cursor >= from,
            "cursor went back: {from} -> {}",
            page.cursor
        );
        check_bounded(&page, from, limit, budget);
        for change in &page.changes {
            if change.operation != OperationType::Snapshot {
                assert!(
                    change.seq > from && change.seq <= page.cursor,
                    "delta {} outside ({from}, {}]",
                    change.seq,
                    page.cursor
                );
                seen.push(change.seq);
            }
            peer.replica(&change.document_id).apply(&change.bytes);
        }
        peer.cursor = page.cursor;
        model.check_holds(peer, page.cursor, &format!("page from {from}"));
        if !page.has_more {
            return seen;
        }
    }
}

/// Compacts `docs` one after another and checks no delta at or above the lowest active ack
/// went.
async fn compact_checked(
    r: &Replicate,
    model: &Model,
    clock: &ManualClock,
    peers: &mut [Peer],
    docs: &[String],
    snapshot_from: Option<usize>,
    short_timeout: bool,
) {
    let timeout = if short_timeout {
        Duration::from_millis(500)
    } else {
        PEER_TIMEOUT
    };
    let min_active = model.min_active(clock.now_millis_for_test(), timeout.as_millis() as u64);
    let before = all_deltas_after(r, 0).await;
    for name in docs {
        let snapshot = snapshot_from.map(|p| peers[p].replica(name).full_state());
        let state_vector = snapshot_from.map(|p| peers[p].replica(name).state_vector());
        let req = CompactRequest {
            document_id: name.clone(),
            snapshot,
            state_vector,
            peer_timeout: Some(timeout),
        };
        r.compact(C, req).await.unwrap();
    }
    let after = all_deltas_after(r, 0).await;
    for seq in before {
        let (_, d, _) = &model.log[seq as usize - 1];
        let may_go = docs.contains(d) && min_active.is_none_or(|min| seq < min);
        assert!(
            may_go || after.contains(&seq),
            "delta {seq} of {d} was deleted (min active ack {min_active:?})"
        );
    }
}

async fn run(ops: Vec<Op>, max_page_bytes: usize, bucket: u64) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut config = config(dir.path());
    // Tiny byte budgets make every page carry a single change; tiny buckets make pages cross
    // bucket boundaries of the deleted-seq index.
    config.max_page_bytes = max_page_bytes;
    config.page_bucket_seqs = bucket;
    // Two documents' counters in memory: the rest come back from the store.
    config.doc_counters_cached = 2;
    let mut r = open_with(config.clone(), &clock).await;
    let mut peers: Vec<Peer> = (0..PEERS)
        .map(|p| Peer::new(&format!("peer-{p}"), 1 + 100 * p as u64))
        .collect();
    let mut model = Model {
        log: Vec::new(),
        svs: Vec::new(),
        reference: HashMap::new(),
        acks: HashMap::new(),
    };

    for op in ops {
        match op {
            Op::Edit {
                peer,
                doc,
                text,
                delete,
            } => {
                let name = doc_name(doc);
                let replica = peers[peer].replica(&name);
                let update = if delete {
                    replica.delete_front(1)
                } else {
                    replica.append(&text)
                };
                let seq = r.update(C, write(&name, update.clone())).await.unwrap().seq;
                model.log_write(seq, name, update);
            }
            Op::Spread {
                peer,
                count,
                rounds,
            } => {
                for round in 0..rounds {
                    for d in 0..count {
                        let name = cold_name(d);
                        let update = peers[peer].replica(&name).append(&format!("{round}."));
                        let seq = r.update(C, write(&name, update.clone())).await.unwrap().seq;
                        model.log_write(seq, name, update);
                    }
                }
            }
            Op::Sync { peer, limit } => {
                let seen = sync_checked(&mut peers[peer], &r, limit, max_page_bytes, &model).await;
                assert!(
                    seen.windows(2).all(|w| w[0] < w[1]),
                    "deltas out of order: {seen:?}"
                );
            }
            Op::Fresh { at_percent, limit } => {
                let head = model.log.len() as u64;
                let start = head * at_percent / 100;
                let mut reader = Peer::new("fresh", 700_000);
                for name in model.reference.keys() {
                    let held = model.expected(name, start).full_state();
                    reader.replica(name).apply(&held);
                }
                reader.cursor = start;
                sync_checked(&mut reader, &r, limit, max_page_bytes, &model).await;
                assert_eq!(reader.cursor, head);
                for (name, reference) in &model.reference {
                    let held = reader.replica(name);
                    assert_eq!(
                        held.text(),
                        reference.text(),
                        "reader from {start} on {name}"
                    );
                    assert!(
                        held.contains(reference) && reference.contains(held),
                        "reader from {start} holds other updates of {name} than the log"
                    );
                }
            }
            Op::Ack { peer } => {
                let p = &peers[peer];
                let acked = p.ack(&r, C).await;
                // Also before the first write: the ack registers the peer, which then holds
                // back compaction (the saved case `Ack, Edit, Compact` checks it).
                let entry = model.acks.entry(peer).or_insert((0, 0));
                entry.0 = entry.0.max(p.cursor);
                entry.1 = clock.now_millis_for_test();
                assert_eq!(acked, entry.0);
            }
            Op::Advance { millis } => clock.advance(millis),
            Op::Compact {
                doc,
                snapshot_from,
                short_timeout,
            } => {
                let docs = [doc_name(doc)];
                compact_checked(
                    &r,
                    &model,
                    &clock,
                    &mut peers,
                    &docs,
                    snapshot_from,
                    short_timeout,
                )
                .await;
            }
            Op::CompactAll { short_timeout } => {
                let mut docs: Vec<String> = model.reference.keys().cloned().collect();
                docs.sort();
                compact_checked(&r, &model, &clock, &mut peers, &docs, None, short_timeout).await;
            }
            Op::Restart => {
                r.close(Duration::from_secs(5)).await.unwrap();
                r = open_with(config.clone(), &clock).await;
            }
        }
    }

    // Everyone syncs and converges on the reference.
    for p in &mut peers {
        sync_checked(p, &r, 4, max_page_bytes, &model).await;
        assert_eq!(p.cursor, model.log.len() as u64);
        for (name, reference) in &model.reference {
            assert_eq!(
                p.replica(name).text(),
                reference.text(),
                "{} diverged on {name}",
                p.id
            );
            assert!(p.replica(name).contains(reference));
        }
    }
    for (name, reference) in &model.reference {
        let fresh = Replica::new(900_002);
        let rec = r
            .recovery(C, &fresh.state_vector(), Some(name))
            .await
            .unwrap();
        fresh.apply(&rec.update);
        assert_eq!(fresh.text(), reference.text(), "recovery of {name}");
        assert_eq!(rec.cursor, model.log.len() as u64);
        // A peer that is behind recovers just the difference.
        let behind = model.expected(name, model.log.len() as u64 / 2);
        let rec = r
            .recovery(C, &behind.state_vector(), Some(name))
            .await
            .unwrap();
        behind.apply(&rec.update);
        assert_eq!(behind.text(), reference.text(), "diff recovery of {name}");
    }
    let state = r.state(C).await.unwrap();
    assert_eq!(state.cursor, model.log.len() as u64);
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// Clock reads for the model, through the public trait.
trait NowForTest {
    fn now_millis_for_test(&self) -> u64;
}

impl NowForTest for ManualClock {
    fn now_millis_for_test(&self) -> u64 {
        replicate_actors::Clock::now_millis(self)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn peers_converge_and_nothing_is_lost(
        ops in proptest::collection::vec(op(), 1..60),
        max_page_bytes in prop_oneof![Just(1usize), Just(64), Just(16 << 20)],
        bucket in prop_oneof![Just(1u64), Just(4), Just(16), Just(1024)],
    ) {
        actix::System::new().block_on(run(ops, max_page_bytes, bucket));
    }
}

proptest! {
    // Each case migrates a fresh schema: fewer cases than on sled, the same model.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn peers_converge_and_nothing_is_lost_on_postgres(
        ops in proptest::collection::vec(op(), 1..60),
        max_page_bytes in prop_oneof![Just(1usize), Just(64), Just(16 << 20)],
        bucket in prop_oneof![Just(1u64), Just(4), Just(16), Just(1024)],
    ) {
        if common::use_postgres("peers_converge_and_nothing_is_lost_on_postgres") {
            actix::System::new().block_on(run(ops, max_page_bytes, bucket));
        }
    }
}

/// Pages `reader` from its cursor to the head with `limit`, checking each page against
/// `budget` and, when a log is given, that the reader then holds every logged update up to
/// the page's cursor. Answers the number of pages.
async fn page_to_head(
    r: &Replicate,
    reader: &mut Peer,
    limit: usize,
    budget: Option<usize>,
    log: &[(u64, String, Vec<u8>)],
) -> usize {
    let mut pages = 0;
    loop {
        let from = reader.cursor;
        let page = r
            .stream(
                C,
                StreamRequest {
                    limit,
                    ..StreamRequest::after(from)
                },
            )
            .await
            .expect("stream answers");
        pages += 1;
        assert!(page.cursor >= from);
        if let Some(budget) = budget {
            check_bounded(&page, from, limit, budget);
        }
        for change in &page.changes {
            reader.replica(&change.document_id).apply(&change.bytes);
        }
        reader.cursor = page.cursor;
        let mut expected: HashMap<&str, StateVector> = HashMap::new();
        for (_, doc, bytes) in log.iter().filter(|(seq, _, _)| *seq <= page.cursor) {
            let sv = Update::decode_v1(bytes).expect("own update").state_vector();
            expected.entry(doc.as_str()).or_default().merge(sv);
        }
        for (doc, want) in expected {
            let held = reader.replica(doc).sv();
            assert!(
                want.iter()
                    .all(|(client, clock)| held.get(client) >= *clock),
                "reader at cursor {} misses updates of {doc} (page from {from})",
                page.cursor
            );
        }
        if !page.has_more {
            return pages;
        }
        assert!(page.cursor > from, "page from {from} did not move");
    }
}

#[test]
fn many_compacted_documents_page_within_the_budget_on_postgres() {
    if common::use_postgres("many_compacted_documents_page_within_the_budget_on_postgres") {
        many_compacted_documents_page_within_the_budget();
    }
}

/// Issue 7, item 6: 100 compacted documents of 16 KB used to make one 1.6 MB page from
/// cursor 0 even with `limit=1`; now each page holds at most the budget plus one snapshot, and
/// paging on reaches the head with every document whole.
#[test]
fn many_compacted_documents_page_within_the_budget() {
    actix::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let mut config = config(dir.path());
        config.max_page_bytes = 64 * 1024;
        config.page_bucket_seqs = 64;
        let r = open_with(config, &clock).await;
        let writers: Vec<Replica> = (0..100).map(|d| Replica::new(1 + d)).collect();
        let chunk = "x".repeat(4096);
        let mut log = Vec::new();
        for _ in 0..4 {
            for (d, w) in writers.iter().enumerate() {
                let update = w.append(&chunk);
                let seq = r.update(C, write(&cold_name(d), update.clone())).await;
                log.push((seq.unwrap().seq, cold_name(d), update));
            }
        }
        for d in 0..100 {
            let done = r.compact(C, CompactRequest::document(cold_name(d))).await;
            assert_eq!(done.unwrap().removed, 4, "no peer holds anything back");
        }
        let first = r
            .stream(
                C,
                StreamRequest {
                    limit: 1,
                    ..StreamRequest::after(0)
                },
            )
            .await
            .unwrap();
        let bytes: usize = first.changes.iter().map(|c| c.bytes.len()).sum();
        assert!(bytes <= 64 * 1024 + 17 * 1024, "first page {bytes} B");
        assert!(first.has_more && first.cursor > 0);
        let mut reader = Peer::new("reader", 5_000);
        let pages = page_to_head(&r, &mut reader, 1, Some(64 * 1024), &log).await;
        assert_eq!(reader.cursor, 400);
        assert!(pages >= 20, "1.6 MB of snapshots in {pages} pages");
        for (d, w) in writers.iter().enumerate() {
            assert_eq!(reader.replica(&cold_name(d)).text(), w.text());
        }
        r.close(Duration::from_secs(5)).await.unwrap();
    });
}

/// A store written before the deleted-seq index (format 1: compaction recorded only each
/// document's highest deleted seq) opens, and its pages still carry what readers need, while
/// compactions made after the upgrade use the index.
#[test]
fn a_format_1_store_still_serves_complete_pages() {
    actix::System::new().block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let clock = ManualClock::new(1_000_000);
        let mut config = config(dir.path());
        config.max_page_bytes = 1;
        config.page_bucket_seqs = 4;
        let writers: Vec<Replica> = (0..10).map(|d| Replica::new(1 + d)).collect();
        let mut log = Vec::new();
        let r = open_with(config.clone(), &clock).await;
        for round in 0..3 {
            for (d, w) in writers.iter().enumerate() {
                let update = w.append(&format!("{round}{d}."));
                let seq = r.update(C, write(&cold_name(d), update.clone())).await;
                log.push((seq.unwrap().seq, cold_name(d), update));
            }
        }
        for d in 0..5 {
            r.compact(C, CompactRequest::document(cold_name(d)))
                .await
                .unwrap();
        }
        r.close(Duration::from_secs(5)).await.unwrap();
        // Rewrite what those compactions recorded the way format 1 did.
        {
            let db = open_sled(dir.path()).await;
            let prefix =
                replicate_actors::keys::prefix(replicate_actors::keys::Tag::DeletedSeqs, C);
            let mut highest: HashMap<String, u64> = HashMap::new();
            for entry in db.scan_prefix(&prefix) {
                let (k, v) = entry.unwrap();
                let start = replicate_actors::keys::read_u64(&k, prefix.len()).unwrap();
                let (doc, _) = replicate_actors::keys::read_str(&k, prefix.len() + 8).unwrap();
                let runs = replicate_actors::paging::decode_runs(start, &v).unwrap();
                let top = highest.entry(doc).or_default();
                *top = (*top).max(runs.last().unwrap().1);
                db.remove(k).unwrap();
            }
            assert_eq!(highest.len(), 5);
            for (doc, seq) in highest {
                db.insert(replicate_actors::keys::watermark(C, seq, &doc), Vec::new())
                    .unwrap();
            }
            for entry in db.scan_prefix(replicate_actors::keys::deleted_span_prefix()) {
                db.remove(entry.unwrap().0).unwrap();
            }
            db.insert(
                replicate_actors::keys::format_version(),
                &1u32.to_be_bytes(),
            )
            .unwrap();
            db.flush().unwrap();
        }
        let r = open_with(config, &clock).await;
        for d in 5..10 {
            r.compact(C, CompactRequest::document(cold_name(d)))
                .await
                .unwrap();
        }
        for start in [0, 3, 11, 17, 29, 30] {
            let mut reader = Peer::new("reader", 5_000);
            for (seq, doc, bytes) in &log {
                if *seq <= start {
                    reader.replica(doc).apply(bytes);
                }
            }
            reader.cursor = start;
            page_to_head(&r, &mut reader, 2, None, &log).await;
            assert_eq!(reader.cursor, 30);
            for (d, w) in writers.iter().enumerate() {
                assert_eq!(
                    reader.replica(&cold_name(d)).text(),
                    w.text(),
                    "from {start}"
                );
            }
        }
        r.close(Duration::from_secs(5)).await.unwrap();
    });
}

/// Opens the sled directory itself, retrying while the closed store releases its lock.
async fn open_sled(dir: &std::path::Path) -> sled::Db {
    for _ in 0..200 {
        if let Ok(db) = sled::open(dir) {
            return db;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("sled did not reopen");
}
