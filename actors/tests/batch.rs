//! Write batches ([`Replicate::write_batch`]) on every engine: each write checked on its own,
//! the accepted ones stored in one commit with consecutive seqs in request order, op ids
//! idempotent within and across batches, a poisoning write refused without losing its
//! neighbours, and batches that stay contiguous while single writers and other batches race
//! them. A proptest drives random batches against a model of what each write should get.

#[macro_use]
mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use futures::future::join_all;
use proptest::prelude::*;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replicate_actors::{
    craft, Change, Error, ManualClock, OperationType, Replicate, StreamRequest, Write, Written,
    MAX_BATCH_WRITES,
};

const C: &str = "batch";

fn op_write(doc: &str, bytes: Vec<u8>, op: Option<&str>) -> Write {
    Write {
        document_id: doc.to_string(),
        bytes,
        op_id: op.map(str::to_string),
    }
}

fn updates(writes: Vec<Write>) -> Vec<(OperationType, Write)> {
    writes
        .into_iter()
        .map(|w| (OperationType::Update, w))
        .collect()
}

/// Every delta of the collection, in seq order.
async fn log(r: &Replicate, c: &str) -> Vec<Change> {
    let mut cursor = 0;
    let mut all = Vec::new();
    loop {
        let page = r
            .stream(
                c,
                StreamRequest {
                    limit: 1000,
                    ..StreamRequest::after(cursor)
                },
            )
            .await
            .expect("stream answers");
        all.extend(page.changes);
        cursor = page.cursor;
        if !page.has_more {
            return all;
        }
    }
}

fn seq_of(result: &replicate_actors::Result<Written>) -> u64 {
    match result {
        Ok(w) => w.seq,
        Err(e) => panic!("expected a seq, got {e}"),
    }
}

fn code(result: &replicate_actors::Result<Written>) -> &'static str {
    match result {
        Ok(w) => panic!("expected a refusal, got {w:?}"),
        Err(e) => e.code(),
    }
}

async fn accepted_writes_get_consecutive_seqs_in_request_order_and_refusals_store_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let (a, b) = (Replica::new(1), Replica::new(2));
    // One single write first, so the batch does not start at 1.
    r.update(C, write("a", a.append("0"))).await.unwrap();
    let writes = vec![
        (OperationType::Insert, write("a", a.append("1"))),
        (OperationType::Update, write("b", b.append("x"))),
        (OperationType::Update, write("a", vec![0xff, 0xff, 0xff])),
        (OperationType::Update, write("bad/name\u{0}", b.append("?"))),
        (OperationType::Snapshot, write("b", b.append("!"))),
        (OperationType::Delete, write("a", a.delete_front(1))),
        (OperationType::Update, write("b", b.append("y"))),
    ];
    let sent: Vec<Vec<u8>> = writes.iter().map(|(_, w)| w.bytes.clone()).collect();
    let results = r.write_batch(C, writes).await.unwrap();
    assert_eq!(results.len(), 7);
    assert_eq!(
        [0, 1, 5, 6].map(|i| seq_of(&results[i])),
        [2, 3, 4, 5],
        "accepted writes get consecutive seqs in request order: {results:?}"
    );
    assert_eq!(code(&results[2]), "invalid_yjs");
    assert_eq!(code(&results[3]), "invalid_name");
    assert_eq!(code(&results[4]), "invalid_argument");
    let log = log(&r, C).await;
    let stored: Vec<(u64, &str, OperationType, &[u8])> = log
        .iter()
        .map(|ch| (ch.seq, ch.document_id.as_str(), ch.operation, &ch.bytes[..]))
        .collect();
    assert_eq!(stored.len(), 5, "refused writes stored nothing: {stored:?}");
    assert_eq!(
        stored[1..],
        [
            (2, "a", OperationType::Insert, &sent[0][..]),
            (3, "b", OperationType::Update, &sent[1][..]),
            (4, "a", OperationType::Delete, &sent[5][..]),
            (5, "b", OperationType::Update, &sent[6][..]),
        ]
    );
    // A write after the batch continues the count.
    let next = r.update(C, write("b", b.append("z"))).await.unwrap();
    assert_eq!(next.seq, 6);
}

async fn writes_of_one_document_in_a_batch_may_depend_on_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let editors: Vec<Replica> = (1..=3).map(Replica::new).collect();
    let mut writes = Vec::new();
    // Each edit builds on the one before it (same client), across three documents.
    for round in 0..20 {
        for (i, e) in editors.iter().enumerate() {
            writes.push(write(&format!("doc-{i}"), e.append(&format!("{round},"))));
        }
    }
    let results = r.write_batch(C, updates(writes)).await.unwrap();
    let seqs: Vec<u64> = results.iter().map(seq_of).collect();
    assert_eq!(seqs, (1..=60).collect::<Vec<_>>());
    let mut reader = Peer::new("reader", 100);
    reader.sync(&r, C, 7).await;
    for (i, e) in editors.iter().enumerate() {
        assert_eq!(reader.replica(&format!("doc-{i}")).text(), e.text());
    }
}

async fn a_poisoning_write_is_refused_and_its_neighbours_are_still_checked_and_stored() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let mut config = config(dir.path());
    config.yjs.write_budget = Duration::from_millis(30);
    let r = open_with(config, &clock).await;
    let a = Replica::new(1);
    let before = a.append("before ");
    let after = a.append("after");
    let writes = vec![
        write("doc", before),
        // Cut off part way by the CPU budget: the checked state is spoiled.
        write("doc", craft::quadratic(8000)),
        // Depends on the first write, which the store does not hold yet.
        write("doc", after),
        write("other", Replica::new(2).append("o")),
    ];
    let results = r.write_batch(C, updates(writes)).await.unwrap();
    assert_eq!(code(&results[1]), "yjs_limit", "{results:?}");
    assert_eq!(
        [0, 2, 3].map(|i| seq_of(&results[i])),
        [1, 2, 3],
        "{results:?}"
    );
    let mut reader = Peer::new("reader", 100);
    reader.sync(&r, C, 100).await;
    assert_eq!(reader.replica("doc").text(), "before after");
    // The document takes further writes, checked against what is stored.
    let more = r.update(C, write("doc", a.append("!"))).await.unwrap();
    assert_eq!(more.seq, 4);
    reader.sync(&r, C, 100).await;
    assert_eq!(reader.replica("doc").text(), "before after!");
}

async fn op_ids_are_idempotent_within_and_across_batches() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let a = Replica::new(1);
    let (u1, u2, u3) = (a.append("1"), a.append("2"), a.append("3"));
    let earlier = r
        .update(C, op_write("d", u1.clone(), Some("op-1")))
        .await
        .unwrap();
    let batch = vec![
        op_write("d", u1.clone(), Some("op-1")), // an earlier single write
        op_write("d", u2.clone(), Some("op-2")),
        op_write("d", u2.clone(), Some("op-2")), // repeated in the batch
        op_write("d", u3.clone(), Some("op-2")), // same op id, other bytes
        op_write("e", Replica::new(2).append("e"), Some("op-2")), // op ids are per document
        op_write("d", u3.clone(), Some("op-3")),
    ];
    let first = r.write_batch(C, updates(batch.clone())).await.unwrap();
    let dup = |seq| {
        Ok::<_, Error>(Written {
            seq,
            duplicate: true,
        })
    };
    let new = |seq| {
        Ok::<_, Error>(Written {
            seq,
            duplicate: false,
        })
    };
    assert_eq!(first[0], dup(earlier.seq));
    assert_eq!(first[1], new(2));
    assert_eq!(first[2], dup(2));
    assert_eq!(code(&first[3]), "conflict");
    assert_eq!(first[4], new(3));
    assert_eq!(first[5], new(4));
    // The whole batch again (a client that lost the answer): nothing new is stored.
    let again = r.write_batch(C, updates(batch.clone())).await.unwrap();
    assert_eq!(again[0], dup(1));
    assert_eq!(again[1], dup(2));
    assert_eq!(again[2], dup(2));
    assert_eq!(code(&again[3]), "conflict");
    assert_eq!(again[4], dup(3));
    assert_eq!(again[5], dup(4));
    assert_eq!(log(&r, C).await.len(), 4);
}

async fn batches_racing_single_writers_stay_contiguous_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    const TASKS: u64 = 8;
    let tasks = (0..TASKS).map(|t| {
        let r = r.clone();
        async move {
            let mut rng = StdRng::seed_from_u64(t);
            // One editor per document: each edit builds on that document's previous one.
            let editors: Vec<Replica> = (0..3).map(|d| Replica::new(10 * t + d + 1)).collect();
            // (seqs of one request, whether it was a batch)
            let mut sent = Vec::new();
            for round in 0..12 {
                let d = rng.gen_range(0..3);
                let (doc, editor) = (format!("doc-{d}"), &editors[d]);
                if t % 2 == 0 {
                    let n = rng.gen_range(1..=40);
                    let writes = (0..n)
                        .map(|i| write(&doc, editor.append(&format!("{t}.{round}.{i} "))))
                        .collect();
                    let results = r.write_batch(C, updates(writes)).await.unwrap();
                    sent.push((results.iter().map(seq_of).collect::<Vec<_>>(), true));
                } else {
                    let w = write(&doc, editor.append(&format!("{t}.{round} ")));
                    sent.push((vec![r.update(C, w).await.unwrap().seq], false));
                }
            }
            (editors, sent)
        }
    });
    let done = join_all(tasks).await;
    let mut all: Vec<u64> = Vec::new();
    for (_, sent) in &done {
        for (seqs, batch) in sent {
            if *batch {
                let first = seqs[0];
                assert_eq!(
                    *seqs,
                    (first..first + seqs.len() as u64).collect::<Vec<_>>(),
                    "a batch's seqs are consecutive"
                );
            }
            all.extend(seqs);
        }
    }
    all.sort_unstable();
    let total = all.len() as u64;
    assert_eq!(all, (1..=total).collect::<Vec<_>>(), "seqs are 1..=N");
    // Every editor's text reached every document it wrote to, in its order.
    let mut reader = Peer::new("reader", 1000);
    let seen = reader.sync(&r, C, 13).await;
    assert_eq!(seen, (1..=total).collect::<Vec<_>>());
    for (editors, _) in &done {
        for (d, editor) in editors.iter().enumerate() {
            let text = reader.replica(&format!("doc-{d}")).text();
            for piece in editor.text().split_whitespace() {
                assert!(text.contains(piece), "{piece} was lost from doc-{d}");
            }
        }
    }
}

async fn a_batch_outside_its_bounds_is_refused_whole() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let empty = r.write_batch(C, Vec::new()).await;
    assert!(
        matches!(empty, Err(Error::InvalidArgument { .. })),
        "{empty:?}"
    );
    let a = Replica::new(1);
    let over: Vec<Write> = (0..=MAX_BATCH_WRITES)
        .map(|i| write("d", a.append(&i.to_string())))
        .collect();
    let over = r.write_batch(C, updates(over)).await;
    assert!(
        matches!(over, Err(Error::InvalidArgument { .. })),
        "{over:?}"
    );
    let bad_collection = r
        .write_batch("no/such\u{0}", updates(vec![write("d", a.append("x"))]))
        .await;
    assert!(
        matches!(bad_collection, Err(Error::InvalidName { .. })),
        "{bad_collection:?}"
    );
    let exactly: Vec<Write> = (0..MAX_BATCH_WRITES)
        .map(|i| write("d", a.append(&i.to_string())))
        .collect();
    let results = r.write_batch(C, updates(exactly)).await.unwrap();
    assert_eq!(
        seq_of(&results[MAX_BATCH_WRITES - 1]),
        MAX_BATCH_WRITES as u64
    );
    assert_eq!(log(&r, C).await.len(), MAX_BATCH_WRITES);
}

async fn an_answered_batch_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let a = Replica::new(1);
    let writes: Vec<Write> = (0..50)
        .map(|i| op_write("d", a.append(&format!("{i} ")), Some(&format!("op-{i}"))))
        .collect();
    {
        let r = open(dir.path(), &clock).await;
        let results = r.write_batch(C, updates(writes.clone())).await.unwrap();
        assert_eq!(seq_of(&results[49]), 50);
        r.close(Duration::from_secs(5)).await.unwrap();
    }
    let r = open(dir.path(), &clock).await;
    let mut reader = Peer::new("reader", 100);
    reader.sync(&r, C, 100).await;
    assert_eq!(reader.replica("d").text(), a.text());
    // Retried after the restart: duplicates, nothing new.
    let again = r.write_batch(C, updates(writes)).await.unwrap();
    assert!(again.iter().all(|w| matches!(
        w,
        Ok(Written {
            duplicate: true,
            ..
        })
    )));
    let next = r.update(C, write("d", a.append("more"))).await.unwrap();
    assert_eq!(next.seq, 51);
}

/// A retry of a stored write whose update still waits for its dependencies: yrs would refuse
/// to hold it twice, so the check refuses it; the op id says it is the same write.
async fn a_retried_write_still_waiting_for_its_dependencies_is_a_duplicate() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let a = Replica::new(1);
    let _missing = a.append("first ");
    let waiting = a.append("second");
    let w = op_write("d", waiting, Some("op-w"));
    let first = r.update(C, w.clone()).await.unwrap();
    assert!(!first.duplicate);
    let again = r.update(C, w.clone()).await.unwrap();
    assert_eq!((again.seq, again.duplicate), (first.seq, true));
    let in_batch = r.write_batch(C, updates(vec![w])).await.unwrap();
    assert_eq!(
        in_batch[0],
        Ok(Written {
            seq: first.seq,
            duplicate: true
        })
    );
    assert_eq!(log(&r, C).await.len(), 1, "stored once");
}

on_every_engine!(
    accepted_writes_get_consecutive_seqs_in_request_order_and_refusals_store_nothing,
    writes_of_one_document_in_a_batch_may_depend_on_each_other,
    a_poisoning_write_is_refused_and_its_neighbours_are_still_checked_and_stored,
    op_ids_are_idempotent_within_and_across_batches,
    batches_racing_single_writers_stay_contiguous_and_nothing_is_lost,
    a_batch_outside_its_bounds_is_refused_whole,
    an_answered_batch_survives_a_restart,
    a_retried_write_still_waiting_for_its_dependencies_is_a_duplicate,
);

/// What one generated write is.
#[derive(Debug, Clone)]
enum Gen {
    /// The next edit of editor `e` on document `d`, with a new op id if `op`.
    Edit { e: usize, d: usize, op: bool },
    /// Bytes that are no Yjs update.
    Garbage { d: usize },
    /// The exact bytes and op id of an earlier write of this case, again.
    Repeat { back: usize },
    /// An earlier write's document and op id with other (good, independent) bytes.
    Reuse { back: usize },
}

fn gen_write() -> impl Strategy<Value = Gen> {
    prop_oneof![
        6 => (0..3usize, 0..3usize, any::<bool>())
            .prop_map(|(e, d, op)| Gen::Edit { e, d, op }),
        1 => (0..3usize).prop_map(|d| Gen::Garbage { d }),
        1 => (0..8usize).prop_map(|back| Gen::Repeat { back }),
        1 => (0..8usize).prop_map(|back| Gen::Reuse { back }),
    ]
}

/// Runs the batches and checks every answer against the model: the log is the accepted
/// writes in order; an op id answers its first write's seq, or a conflict for other bytes.
async fn run_model(batches: Vec<Vec<Gen>>) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let editors: Vec<Vec<Replica>> = (0..3)
        .map(|e| (0..3).map(|d| Replica::new(10 * e + d + 1)).collect())
        .collect();
    // Model: stored (doc, bytes) in seq order; op id → (seq, bytes).
    let mut stored: Vec<(String, Vec<u8>)> = Vec::new();
    let mut ops: HashMap<(String, String), (u64, Vec<u8>)> = HashMap::new();
    let mut sent: Vec<Write> = Vec::new();
    let mut fresh = 0u64;
    for batch in batches {
        let mut writes = Vec::new();
        for g in batch {
            let w = match g {
                Gen::Edit { e, d, op } => {
                    fresh += 1;
                    let op = op.then(|| format!("op{fresh}"));
                    op_write(
                        &format!("d{d}"),
                        editors[e][d].append(&format!("e{e}.")),
                        op.as_deref(),
                    )
                }
                Gen::Garbage { d } => write(&format!("d{d}"), vec![9, 9, 9]),
                Gen::Repeat { back } => match sent.iter().rev().nth(back) {
                    Some(w) => w.clone(),
                    None => continue,
                },
                Gen::Reuse { back } => match sent.iter().rev().nth(back) {
                    Some(w) if w.op_id.is_some() => {
                        fresh += 1;
                        let bytes = Replica::new(1000 + fresh).append("r");
                        op_write(&w.document_id, bytes, w.op_id.as_deref())
                    }
                    _ => continue,
                },
            };
            sent.push(w.clone());
            writes.push(w);
        }
        if writes.is_empty() {
            continue;
        }
        let results = r.write_batch(C, updates(writes.clone())).await.unwrap();
        for (w, got) in writes.iter().zip(&results) {
            let key = w.op_id.clone().map(|op| (w.document_id.clone(), op));
            let known = key.as_ref().and_then(|k| ops.get(k));
            match (known, got) {
                (Some((seq, bytes)), Ok(written)) => {
                    assert_eq!(bytes, &w.bytes, "same op id, other bytes accepted");
                    assert_eq!((written.seq, written.duplicate), (*seq, true));
                }
                (Some((_, bytes)), Err(e)) => {
                    assert_ne!(bytes, &w.bytes, "a true repeat refused: {e}");
                    assert_eq!(e.code(), "conflict");
                }
                (None, Ok(written)) => {
                    assert!(!written.duplicate, "{written:?} for a new write");
                    stored.push((w.document_id.clone(), w.bytes.clone()));
                    assert_eq!(written.seq, stored.len() as u64, "seqs in request order");
                    if let Some(k) = key {
                        ops.insert(k, (written.seq, w.bytes.clone()));
                    }
                }
                (None, Err(e)) => {
                    // Only garbage is refused (a repeat of a write without op id is a new
                    // write, applied again harmlessly).
                    assert_eq!(w.bytes, vec![9, 9, 9], "a good write refused: {e}");
                    assert_eq!(e.code(), "invalid_yjs");
                }
            }
        }
    }
    let log = log(&r, C).await;
    let got: Vec<(String, Vec<u8>)> = log
        .into_iter()
        .map(|ch| (ch.document_id, ch.bytes))
        .collect();
    assert_eq!(got, stored, "the log is the accepted writes in order");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    #[test]
    fn batches_match_the_model(
        batches in prop::collection::vec(prop::collection::vec(gen_write(), 1..12), 1..6)
    ) {
        actix::System::new().block_on(run_model(batches));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, ..ProptestConfig::default() })]

    #[test]
    fn batches_match_the_model_on_postgres(
        batches in prop::collection::vec(prop::collection::vec(gen_write(), 1..12), 1..6)
    ) {
        if common::use_postgres("batches_match_the_model_on_postgres") {
            actix::System::new().block_on(run_model(batches));
        }
    }
}
