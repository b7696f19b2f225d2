//! Adversarial review of the embedding API (`replicate_actors::Replicate` used from another
//! actix app): misuse and edge cases of the public handle and `Config`, as an embedder hits
//! them. Every test here is a check that can fail.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use replicate_actors::{
    CompactRequest, Config, Error, ManualClock, OperationType, Replicate, Store, StreamRequest,
    SystemClock, Write,
};

/// Every change of `c` from cursor 0, paging to the head: (seq → document) of the deltas and
/// the final cursor. Panics on a gap or a page that goes backwards.
async fn all_deltas(r: &Replicate, c: &str) -> (BTreeMap<u64, (String, Vec<u8>)>, u64) {
    let mut cursor = 0;
    let mut out = BTreeMap::new();
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
        assert!(page.cursor >= cursor);
        for ch in page.changes {
            if ch.operation != OperationType::Snapshot {
                out.insert(ch.seq, (ch.document_id, ch.bytes));
            }
        }
        cursor = page.cursor;
        if !page.has_more {
            return (out, cursor);
        }
    }
}

/// Invariant 1 through the embedding API: `Replicate::start` takes any `Store`, and `Store` is
/// `Clone`, so nothing stops an embedder from starting two handles on one open store (two
/// actix apps in one process, or a handle per test sharing a fixture). Each handle has its own
/// registry, so each runs its own actor for the same collection: both number from the same
/// head, hand out the same seq, and sled's `Append` overwrites the first answered write.
#[actix_rt::test]
async fn two_handles_started_on_one_store_never_issue_a_seq_twice() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path(), 8 * 1024 * 1024).unwrap();
    let cfg = config(dir.path());
    let a = Replicate::start(cfg.clone(), store.clone(), Arc::new(SystemClock));
    let b = Replicate::start(cfg, store, Arc::new(SystemClock));
    let (a, b) = match (a, b) {
        (Ok(a), Ok(b)) => (a, b),
        // Refusing the second start is a fine answer to this misuse.
        _ => return,
    };
    let (x, y) = (Replica::new(1), Replica::new(2));
    // Each handle's actor loads the head when it starts: `a`'s at 0, `b`'s after `a`'s write.
    let mut answered = Vec::new();
    for (h, rep, doc) in [(&a, &x, "x"), (&b, &y, "y"), (&a, &x, "x"), (&b, &y, "y")] {
        if let Ok(w) = h.insert("c", write(doc, rep.append("+"))).await {
            answered.push((w.seq, doc));
        }
    }
    a.close(Duration::from_secs(5)).await.unwrap();
    b.close(Duration::from_secs(5)).await.unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let (deltas, _) = all_deltas(&r, "c").await;
    r.close(Duration::from_secs(5)).await.unwrap();
    let mut seqs: Vec<u64> = answered.iter().map(|(s, _)| *s).collect();
    seqs.sort_unstable();
    seqs.dedup();
    assert_eq!(
        seqs.len(),
        answered.len(),
        "two answered writes of one collection got the same seq: {answered:?}"
    );
    for (seq, doc) in &answered {
        assert_eq!(
            deltas.get(seq).map(|(d, _)| d.as_str()),
            Some(*doc),
            "answered write {seq} of {doc} was lost; answered {answered:?}"
        );
    }
}

/// Two `Replicate::open` on one data directory: the second must be an error (sled owns its
/// directory), never a panic; once the first is closed, a reopen works and numbering goes on.
#[actix_rt::test]
async fn a_second_open_of_one_directory_is_an_error_and_close_releases_it() {
    let dir = tempfile::tempdir().unwrap();
    let first = Replicate::open(config(dir.path())).expect("first open");
    let w = first
        .insert("c", write("d", Replica::new(1).append("a")))
        .await
        .unwrap();
    assert_eq!(w.seq, 1);
    match Replicate::open(config(dir.path())) {
        Err(Error::Storage(_)) => {}
        Err(e) => panic!("second open: unexpected error {e:?}"),
        Ok(_) => panic!("a second handle opened a directory the first still owns"),
    }
    first.close(Duration::from_secs(5)).await.unwrap();
    let clock = ManualClock::new(1_000);
    let again = open(dir.path(), &clock).await;
    let w = again
        .insert("c", write("d", Replica::new(2).append("b")))
        .await
        .unwrap();
    assert_eq!(w.seq, 2);
    again.close(Duration::from_secs(5)).await.unwrap();
}

/// `Replicate::open` outside an actix System (a plain `main`, a tokio runtime, a test without
/// `#[actix_rt::test]`): the crate promises no public call panics, so this should be an error.
#[test]
fn open_outside_an_actix_system_is_an_error_not_a_panic() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = config(dir.path());
    let outcome = std::thread::spawn(move || {
        std::panic::catch_unwind(move || Replicate::open(cfg).map(drop)).is_ok()
    })
    .join()
    .unwrap();
    assert!(
        outcome,
        "Replicate::open panicked outside an actix System instead of answering an error"
    );
}

/// A handle made in an actix app and handed to code that is not in it (a plain thread using
/// `futures::executor::block_on`, as a sync library or a GUI thread would): the call must
/// answer (a result or an error), not panic.
#[test]
fn calls_from_a_thread_outside_any_runtime_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let sys = actix_rt::System::new();
    let r = sys.block_on(async { Replicate::open(config(dir.path())).unwrap() });
    let r2 = r.clone();
    let panicked = std::thread::spawn(move || {
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            futures::executor::block_on(r2.insert("c", write("d", Replica::new(1).append("x"))))
        }))
        .is_err()
    })
    .join()
    .unwrap();
    sys.block_on(async move { r.close(Duration::from_secs(5)).await.unwrap() });
    assert!(
        !panicked,
        "Replicate::insert panicked when awaited outside a tokio/actix runtime"
    );
}

/// The same from a tokio runtime of the embedder's own (not actix): writes land and are
/// durable, with contiguous seqs.
#[test]
fn calls_from_a_separate_tokio_runtime_work() {
    let dir = tempfile::tempdir().unwrap();
    let sys = actix_rt::System::new();
    let r = sys.block_on(async { Replicate::open(config(dir.path())).unwrap() });
    let r2 = r.clone();
    let seqs = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let mut tasks = Vec::new();
            for i in 0..20u64 {
                let r = r2.clone();
                tasks.push(tokio::spawn(async move {
                    let rep = Replica::new(100 + i);
                    r.insert("c", write(&format!("d{i}"), rep.append("x")))
                        .await
                        .map(|w| w.seq)
                }));
            }
            let mut seqs = Vec::new();
            for t in tasks {
                seqs.push(t.await.unwrap().expect("write from a tokio runtime"));
            }
            seqs
        })
    })
    .join()
    .unwrap();
    let mut sorted = seqs.clone();
    sorted.sort_unstable();
    assert_eq!(sorted, (1..=20).collect::<Vec<_>>());
    sys.block_on(async move { r.close(Duration::from_secs(5)).await.unwrap() });
}

/// After `shutdown` and after `close`, every public call answers (an error or a value) without
/// panicking or hanging, and writes are refused; what was answered before is still there
/// after a reopen.
#[actix_rt::test]
async fn every_call_after_close_answers_without_panic_or_hang() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let rep = Replica::new(1);
    for i in 0..5 {
        r.insert("c", write("d", rep.append(&i.to_string())))
            .await
            .unwrap();
    }
    let clone = r.clone();
    r.shutdown(Duration::from_millis(100)).await.unwrap();
    assert!(matches!(
        clone.insert("c", write("d", rep.append("late"))).await,
        Err(Error::ShuttingDown)
    ));
    clone.close(Duration::from_millis(100)).await.unwrap();
    // A second clone made before close, still held by (say) an HTTP worker.
    let held = r;
    let deadline = Duration::from_secs(10);
    let calls = async {
        assert!(held.insert("c", write("d", rep.append("x"))).await.is_err());
        assert!(held
            .write_batch(
                "c",
                vec![(OperationType::Update, write("d", rep.append("y")))]
            )
            .await
            .is_err());
        // Reads of a closed handle say so, rather than `Relocated` after retries.
        assert!(matches!(
            held.stream("c", StreamRequest::after(0)).await,
            Err(Error::ShuttingDown)
        ));
        assert!(matches!(
            held.collection_stats("c").await,
            Err(Error::ShuttingDown)
        ));
        let _ = held
            .stream(
                "c",
                StreamRequest {
                    wait: Duration::from_secs(1),
                    ..StreamRequest::after(5)
                },
            )
            .await;
        let _ = held.ack("c", "p", 1).await;
        let _ = held.compact("c", CompactRequest::document("d")).await;
        let _ = held.recovery("c", &[0], None).await;
        let _ = held.recovery("c", &[0], Some("d")).await;
        let _ = held.state("c").await;
        let _ = held.collection_stats("c").await;
        let _ = held.stats().await;
        let _ = held.cache_stats();
        let _ = held.shutdown(Duration::ZERO).await;
    };
    tokio::time::timeout(deadline, calls)
        .await
        .expect("a call on a closed handle hung");
    drop(held);
    let r = open(dir.path(), &clock).await;
    let (deltas, cursor) = all_deltas(&r, "c").await;
    assert_eq!(cursor, 5);
    assert_eq!(
        deltas.keys().copied().collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// Public calls on odd but valid names, and on invalid ones, through the Rust API: no panic,
/// invalid names refused with `InvalidName`, valid ones round-trip and stay apart.
#[actix_rt::test]
async fn odd_names_through_the_rust_api() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let max = "é".repeat(128); // 256 bytes
    let valid = [
        "a",
        "/",
        "..",
        "a/b",
        " ",
        "x\u{00A0}y",
        "\u{1F600}",
        max.as_str(),
        "c\u{0}".trim_end_matches('\0'),
    ];
    let invalid = [
        "",
        "\0",
        "a\nb",
        "a\u{202E}b",
        "\u{FEFF}",
        &"x".repeat(257),
        &"é".repeat(129),
    ];
    for (i, c) in valid.iter().enumerate() {
        let rep = Replica::new(10 + i as u64);
        let w = r
            .insert(c, write(c, rep.append("v")))
            .await
            .unwrap_or_else(|e| panic!("{c:?}: {e}"));
        assert_eq!(w.seq, 1, "{c:?} shares numbering with another collection");
        assert_eq!(r.ack(c, c, 1).await.unwrap(), 1);
        let (deltas, cursor) = all_deltas(&r, c).await;
        assert_eq!((deltas.len(), cursor), (1, 1), "{c:?}");
        r.compact(c, CompactRequest::document(*c)).await.unwrap();
        r.recovery(c, &[0], Some(c)).await.unwrap();
    }
    for bad in invalid {
        let good = Replica::new(99).append("z");
        let e = r.insert(bad, write("d", good.clone())).await.unwrap_err();
        assert_eq!(e.code(), "invalid_name", "{bad:?}");
        let e = r.insert("ok", write(bad, good.clone())).await.unwrap_err();
        assert_eq!(e.code(), "invalid_name", "{bad:?}");
        let e = r
            .insert(
                "ok",
                Write {
                    document_id: "d".into(),
                    bytes: good,
                    op_id: Some(bad.to_string()),
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_name", "{bad:?}");
        assert_eq!(
            r.ack("ok", bad, 0).await.unwrap_err().code(),
            "invalid_name"
        );
        assert!(r.stream(bad, StreamRequest::after(0)).await.is_err());
        assert!(r.state(bad).await.is_err());
        assert!(r.collection_stats(bad).await.is_err());
        assert!(r.recovery("ok", &[0], Some(bad)).await.is_err());
        assert!(r
            .compact("ok", CompactRequest::document(bad))
            .await
            .is_err());
    }
    // Nothing of the refused writes reached "ok".
    assert_eq!(r.collection_stats("ok").await.unwrap().assigned_seq, 0);
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// Numeric edges of the public request types: no panic, clear errors.
#[actix_rt::test]
async fn numeric_edges_of_requests() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000);
    let r = open(dir.path(), &clock).await;
    let rep = Replica::new(1);
    r.insert("c", write("d", rep.append("a"))).await.unwrap();
    for cursor in [2, u64::MAX / 2, u64::MAX] {
        let e = r
            .stream("c", StreamRequest::after(cursor))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::CursorAhead { .. }), "{e:?}");
        let e = r
            .stream("never", StreamRequest::after(cursor))
            .await
            .unwrap_err();
        assert!(matches!(e, Error::CursorAhead { .. }), "{e:?}");
    }
    for limit in [0, 1001, usize::MAX] {
        let e = r
            .stream(
                "c",
                StreamRequest {
                    limit,
                    ..StreamRequest::after(0)
                },
            )
            .await
            .unwrap_err();
        assert_eq!(e.code(), "invalid_argument");
    }
    for t in [Some(0), Some(u64::MAX), None] {
        r.stream(
            "c",
            StreamRequest {
                size_threshold: t,
                wait: Duration::MAX,
                ..StreamRequest::after(0)
            },
        )
        .await
        .unwrap();
    }
    assert!(matches!(
        r.ack("c", "p", u64::MAX).await,
        Err(Error::AckAhead { .. })
    ));
    assert!(matches!(
        r.ack("never-written", "p", 1).await,
        Err(Error::AckAhead { .. })
    ));
    assert_eq!(r.ack("c", "p", 0).await.unwrap(), 0);
    for pt in [Duration::ZERO, Duration::MAX, Duration::from_secs(u64::MAX)] {
        let req = CompactRequest {
            peer_timeout: Some(pt),
            ..CompactRequest::document("d")
        };
        r.compact("c", req).await.unwrap();
    }
    // Empty, huge-declared and junk state vectors.
    for sv in [
        &[][..],
        &[0xff; 10][..],
        &[1, 0xff, 0xff, 0xff, 0xff, 0x0f, 1][..],
    ] {
        let _ = r.recovery("c", sv, None).await;
        let _ = r.recovery("c", sv, Some("d")).await;
    }
    // Batches: empty and one past the cap are refused as a whole.
    assert!(r.write_batch("c", Vec::new()).await.is_err());
    let many = (0..1001)
        .map(|_| (OperationType::Update, write("d", vec![0, 0])))
        .collect();
    assert!(r.write_batch("c", many).await.is_err());
    // Snapshot is not a write.
    assert!(r
        .write("c", OperationType::Snapshot, write("d", rep.append("s")))
        .await
        .is_err());
    let (deltas, cursor) = all_deltas(&r, "c").await;
    assert_eq!(cursor, 1);
    assert!(deltas.len() <= 1);
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// A peer whose timeout is "practically forever" must hold back compaction. `peer_timeout` is
/// turned into milliseconds with `as u64`, which wraps: 18,446,744,073,709,552 s (about 585
/// million years) becomes 384 ms, so a peer seen a second ago counts as gone and compaction
/// deletes deltas it has not acknowledged.
#[actix_rt::test]
async fn a_huge_peer_timeout_does_not_wrap_to_a_tiny_one() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let r = open(dir.path(), &clock).await;
    let rep = Replica::new(1);
    for _ in 0..4 {
        r.insert("c", write("d", rep.append("a"))).await.unwrap();
    }
    assert_eq!(r.ack("c", "slow", 1).await.unwrap(), 1);
    clock.advance(1_000);
    let forever = Duration::from_secs(u64::MAX / 1000 + 1);
    let done = r
        .compact(
            "c",
            CompactRequest {
                peer_timeout: Some(forever),
                ..CompactRequest::document("d")
            },
        )
        .await
        .unwrap();
    assert_eq!(
        done.removed, 0,
        "deltas 2..4 were deleted though peer `slow` (acked 1, seen 1 s ago) is active"
    );
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// Writes racing idle stops and LRU evictions, sent from several arbiters at once, with
/// `idle_timeout` zero and one live actor allowed: every answered write has its own seq, seqs
/// are contiguous per collection, and everything answered is there after a reopen.
#[actix_rt::test]
async fn writes_from_several_arbiters_across_constant_actor_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.idle_timeout = Duration::ZERO;
    cfg.max_live_collections = 1;
    cfg.collection_arbiters = 3;
    let clock = ManualClock::new(1_000);
    let r = open_with(cfg, &clock).await;
    let arbiters: Vec<actix_rt::Arbiter> = (0..3).map(|_| actix_rt::Arbiter::new()).collect();
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let colls = ["a", "b", "c", "d"];
    for (i, arb) in arbiters.iter().enumerate() {
        for (j, c) in colls.iter().enumerate() {
            let (r, tx) = (r.clone(), tx.clone());
            let c = c.to_string();
            let client = 1 + (i * 10 + j) as u64;
            arb.spawn_fn(move || {
                actix_rt::spawn(async move {
                    let rep = Replica::new(client);
                    let doc = format!("doc{client}");
                    for k in 0..25 {
                        let res = r
                            .insert(&c, write(&doc, rep.append(&format!("{k},"))))
                            .await;
                        let _ = tx.send((c.clone(), doc.clone(), res));
                        if k % 5 == 0 {
                            actix_rt::time::sleep(Duration::from_millis(12)).await;
                        }
                    }
                });
            });
        }
    }
    drop(tx);
    let mut answered: BTreeMap<String, BTreeMap<u64, String>> = BTreeMap::new();
    let mut errors = Vec::new();
    while let Some((c, doc, res)) = rx.recv().await {
        match res {
            Ok(w) => {
                let prev = answered.entry(c.clone()).or_default().insert(w.seq, doc);
                assert!(prev.is_none(), "{c}: seq {} answered twice", w.seq);
            }
            Err(e) => errors.push(format!("{c}: {e}")),
        }
    }
    for a in arbiters {
        a.stop();
        let _ = a.join();
    }
    r.close(Duration::from_secs(5)).await.unwrap();
    let r = open(dir.path(), &clock).await;
    for c in colls {
        let (deltas, cursor) = all_deltas(&r, c).await;
        let seqs: Vec<u64> = deltas.keys().copied().collect();
        assert_eq!(
            seqs,
            (1..=cursor).collect::<Vec<_>>(),
            "{c}: gap in the log"
        );
        for (seq, doc) in answered.get(c).into_iter().flatten() {
            assert_eq!(
                deltas.get(seq).map(|(d, _)| d),
                Some(doc),
                "{c}: answered seq {seq} of {doc} lost or overwritten"
            );
        }
    }
    assert!(
        errors.is_empty(),
        "writes failed: {:?}",
        &errors[..errors.len().min(5)]
    );
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// One step of a random embedder schedule.
#[derive(Debug, Clone)]
enum Step {
    Write { c: usize, doc: usize },
    Batch { c: usize, docs: Vec<usize> },
    Ack { c: usize, peer: usize },
    Compact { c: usize, doc: usize },
    Stream { c: usize, limit: usize },
    State { c: usize },
    Advance(u64),
    Reopen,
    Sleep(u64),
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (0..3usize, 0..3usize).prop_map(|(c, doc)| Step::Write { c, doc }),
        2 => (0..3usize, proptest::collection::vec(0..3usize, 1..5))
            .prop_map(|(c, docs)| Step::Batch { c, docs }),
        2 => (0..3usize, 0..2usize).prop_map(|(c, peer)| Step::Ack { c, peer }),
        2 => (0..3usize, 0..3usize).prop_map(|(c, doc)| Step::Compact { c, doc }),
        2 => (0..3usize, 1..4usize).prop_map(|(c, limit)| Step::Stream { c, limit }),
        1 => (0..3usize).prop_map(|c| Step::State { c }),
        1 => (0..200_000u64).prop_map(Step::Advance),
        1 => Just(Step::Reopen),
        1 => (0..30u64).prop_map(Step::Sleep),
    ]
}

/// Edge values for the `Config` fields an embedder sets.
#[derive(Debug, Clone)]
struct Edges {
    idle_ms: u64,
    max_live: usize,
    arbiters: usize,
    page_bytes: usize,
    bucket: u64,
    doc_cache: u64,
    state_cache: usize,
    counters: usize,
    max_peers: usize,
    auto_compact: bool,
    size_threshold: u64,
    compactor_threads: usize,
    worker_queue: usize,
    op_ttl_ms: u64,
    retention_ms: u64,
}

fn edges() -> impl Strategy<Value = Edges> {
    (
        (
            prop_oneof![Just(0u64), Just(1), Just(20), Just(300_000)],
            prop_oneof![Just(0usize), Just(1), Just(2), Just(10_000)],
            0..4usize,
            prop_oneof![Just(0usize), Just(1), Just(64), Just(usize::MAX)],
            prop_oneof![Just(0u64), Just(1), Just(2), Just(u64::MAX)],
            prop_oneof![Just(0u64), Just(1), Just(u64::MAX)],
            prop_oneof![Just(0usize), Just(usize::MAX)],
            prop_oneof![Just(0usize), Just(1), Just(10_000)],
        ),
        (
            prop_oneof![Just(0usize), Just(1), Just(10_000)],
            any::<bool>(),
            prop_oneof![Just(0u64), Just(1), Just(u64::MAX)],
            0..3usize,
            prop_oneof![Just(8usize), Just(1024)],
            prop_oneof![Just(0u64), Just(1), Just(u64::MAX / 2)],
            prop_oneof![Just(0u64), Just(1), Just(u64::MAX / 2)],
        ),
    )
        .prop_map(
            |(
                (idle_ms, max_live, arbiters, page_bytes, bucket, doc_cache, state_cache, counters),
                (
                    max_peers,
                    auto_compact,
                    size_threshold,
                    compactor_threads,
                    worker_queue,
                    op_ttl_ms,
                    retention_ms,
                ),
            )| Edges {
                idle_ms,
                max_live,
                arbiters,
                page_bytes,
                bucket,
                doc_cache,
                state_cache,
                counters,
                max_peers,
                auto_compact,
                size_threshold,
                compactor_threads,
                worker_queue,
                op_ttl_ms,
                retention_ms,
            },
        )
}

fn apply_edges(cfg: &mut Config, e: &Edges) {
    cfg.idle_timeout = Duration::from_millis(e.idle_ms);
    cfg.max_live_collections = e.max_live;
    cfg.collection_arbiters = e.arbiters;
    cfg.max_page_bytes = e.page_bytes;
    cfg.page_bucket_seqs = e.bucket;
    cfg.doc_cache_bytes = e.doc_cache;
    cfg.state_cache_bytes = e.state_cache;
    cfg.doc_counters_cached = e.counters;
    cfg.max_peers_per_collection = e.max_peers;
    cfg.auto_compact = e.auto_compact;
    cfg.size_threshold = e.size_threshold;
    cfg.compactor_threads = e.compactor_threads;
    cfg.worker_queue = e.worker_queue;
    cfg.op_id_ttl = Duration::from_millis(e.op_ttl_ms);
    cfg.peer_retention = Duration::from_millis(e.retention_ms);
}

/// Runs a random schedule under edge configs. Every answered write keeps its seq across
/// reopens; every collection's log is gap-free; snapshots + deltas from cursor 0 hold every
/// answered write's content; no call panics.
async fn run_schedule(edges: Edges, steps: Vec<Step>) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    apply_edges(&mut cfg, &edges);
    let clock = ManualClock::new(1_000_000);
    let mut r = open_with(cfg.clone(), &clock).await;
    let colls = ["c0", "c1", "c2"];
    // One writer replica per (collection, doc), so every write is a fresh, valid update.
    let mut writers: BTreeMap<(usize, usize), Replica> = BTreeMap::new();
    let mut answered: BTreeMap<usize, BTreeMap<u64, usize>> = BTreeMap::new();
    let mut next_client = 1u64;
    let mut n = 0u32;
    for s in steps {
        match s {
            Step::Write { c, doc } => {
                let w = writers.entry((c, doc)).or_insert_with(|| {
                    next_client += 1;
                    Replica::new(next_client)
                });
                n += 1;
                let bytes = w.append(&format!("{n},"));
                let got = r.insert(colls[c], write(&format!("d{doc}"), bytes)).await;
                let got = got.unwrap_or_else(|e| panic!("write refused: {e}"));
                assert!(answered
                    .entry(c)
                    .or_default()
                    .insert(got.seq, doc)
                    .is_none());
            }
            Step::Batch { c, docs } => {
                let mut writes = Vec::new();
                for &doc in &docs {
                    let w = writers.entry((c, doc)).or_insert_with(|| {
                        next_client += 1;
                        Replica::new(next_client)
                    });
                    n += 1;
                    writes.push((
                        OperationType::Update,
                        write(&format!("d{doc}"), w.append(&format!("{n},"))),
                    ));
                }
                let got = r.write_batch(colls[c], writes).await.expect("batch");
                for (res, doc) in got.into_iter().zip(docs) {
                    let w = res.unwrap_or_else(|e| panic!("batch write refused: {e}"));
                    assert!(answered.entry(c).or_default().insert(w.seq, doc).is_none());
                }
            }
            Step::Ack { c, peer } => {
                let head = answered
                    .get(&c)
                    .and_then(|m| m.keys().last().copied())
                    .unwrap_or(0);
                match r.ack(colls[c], &format!("p{peer}"), head).await {
                    Ok(_) | Err(Error::Overloaded { .. }) => {}
                    Err(e) => panic!("ack: {e}"),
                }
            }
            Step::Compact { c, doc } => {
                r.compact(colls[c], CompactRequest::document(format!("d{doc}")))
                    .await
                    .expect("compact");
            }
            Step::Stream { c, limit } => {
                let _ = r
                    .stream(
                        colls[c],
                        StreamRequest {
                            limit,
                            ..StreamRequest::after(0)
                        },
                    )
                    .await
                    .expect("stream");
            }
            Step::State { c } => {
                r.state(colls[c]).await.expect("state");
            }
            Step::Advance(ms) => clock.advance(ms),
            Step::Sleep(ms) => actix_rt::time::sleep(Duration::from_millis(ms)).await,
            Step::Reopen => {
                r.close(Duration::from_secs(5)).await.expect("close");
                r = open_with(cfg.clone(), &clock).await;
            }
        }
    }
    for (c, name) in colls.iter().enumerate() {
        let want = answered.remove(&c).unwrap_or_default();
        let head = want.keys().last().copied().unwrap_or(0);
        // Through a fresh peer: every document's content from cursor 0.
        let mut peer = Peer::new("check", 1_000_000);
        let limit = 3;
        peer.sync(&r, name, limit).await;
        assert_eq!(
            peer.cursor, head,
            "{name}: head moved from the answered writes"
        );
        let stats = r.collection_stats(name).await.unwrap();
        assert_eq!(stats.durable_seq, head, "{name}");
        for ((wc, doc), w) in &writers {
            if *wc != c {
                continue;
            }
            let got = peer.replica(&format!("d{doc}")).text();
            assert_eq!(got, w.text(), "{name}/d{doc}: content differs");
        }
        // Seqs answered were exactly 1..=head.
        assert_eq!(
            want.keys().copied().collect::<Vec<_>>(),
            (1..=head).collect::<Vec<_>>(),
            "{name}: answered seqs not contiguous"
        );
    }
    r.close(Duration::from_secs(5)).await.expect("close");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn random_schedules_under_edge_configs(
        e in edges(),
        steps in proptest::collection::vec(step(), 1..40),
    ) {
        actix_rt::System::new().block_on(run_schedule(e, steps));
    }
}

/// What one concurrent task of [`run_concurrent`] does.
#[derive(Debug, Clone)]
enum Task {
    /// Sequential writes of one (collection, document), from its own replica.
    Writer {
        c: usize,
        writes: usize,
        batch: bool,
    },
    /// Compactions of one document, with acks of a peer at the head before some of them.
    Compactor {
        c: usize,
        doc: usize,
        rounds: usize,
        ack: bool,
    },
    /// Long polls from the head (they hold the actor) and plain pages.
    Reader {
        c: usize,
        polls: usize,
        wait_ms: u64,
    },
    /// Whole-state and recovery reads.
    Stater { c: usize, rounds: usize },
}

fn task() -> impl Strategy<Value = Task> {
    prop_oneof![
        4 => (0..2usize, 1..12usize, any::<bool>())
            .prop_map(|(c, writes, batch)| Task::Writer { c, writes, batch }),
        2 => (0..2usize, 0..4usize, 1..5usize, any::<bool>())
            .prop_map(|(c, doc, rounds, ack)| Task::Compactor { c, doc, rounds, ack }),
        2 => (0..2usize, 1..4usize, 0..40u64)
            .prop_map(|(c, polls, wait_ms)| Task::Reader { c, polls, wait_ms }),
        1 => (0..2usize, 1..3usize).prop_map(|(c, rounds)| Task::Stater { c, rounds }),
    ]
}

/// Tasks running at once on one handle with actors that stop as soon as they are quiet (and
/// at most one live), spread over several arbiters: every answered seq is unique, each
/// collection's answered seqs are 1..=head, and a fresh peer from cursor 0 (tiny pages)
/// rebuilds every writer's text exactly.
async fn run_concurrent(tasks: Vec<Task>, max_live: usize, arbiters: usize, page_bytes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.idle_timeout = Duration::ZERO;
    cfg.max_live_collections = max_live;
    cfg.collection_arbiters = arbiters;
    cfg.max_page_bytes = page_bytes;
    cfg.page_bucket_seqs = 2;
    let clock = ManualClock::new(1_000_000);
    let r = open_with(cfg, &clock).await;
    let colls = ["k0", "k1"];
    let mut handles = Vec::new();
    for (i, t) in tasks.into_iter().enumerate() {
        let r = r.clone();
        let clock = clock.clone();
        handles.push(actix_rt::spawn(async move {
            let mut answered: Vec<(usize, u64, String)> = Vec::new();
            let mut written: Option<(usize, String, String)> = None;
            match t {
                Task::Writer { c, writes, batch } => {
                    let rep = Replica::new(10 + i as u64);
                    let doc = format!("d{}", i % 4);
                    // A writer of its own per task: documents are shared, replicas are not.
                    for k in 0..writes {
                        let bytes = rep.append(&format!("{i}.{k},"));
                        let res = if batch {
                            r.write_batch(
                                colls[c],
                                vec![(OperationType::Update, write(&doc, bytes))],
                            )
                            .await
                            .map(|mut v| v.remove(0))
                            .and_then(|x| x)
                        } else {
                            r.update(colls[c], write(&doc, bytes)).await
                        };
                        let w = res.unwrap_or_else(|e| panic!("write refused: {e}"));
                        answered.push((c, w.seq, doc.clone()));
                    }
                    written = Some((c, doc, rep.text()));
                }
                Task::Compactor {
                    c,
                    doc,
                    rounds,
                    ack,
                } => {
                    for _ in 0..rounds {
                        if ack {
                            let head = r.collection_stats(colls[c]).await.unwrap().durable_seq;
                            r.ack(colls[c], &format!("p{i}"), head).await.unwrap();
                        }
                        r.compact(colls[c], CompactRequest::document(format!("d{doc}")))
                            .await
                            .unwrap_or_else(|e| panic!("compact: {e}"));
                        clock.advance(30_000);
                        actix_rt::time::sleep(Duration::from_millis(3)).await;
                    }
                }
                Task::Reader { c, polls, wait_ms } => {
                    for _ in 0..polls {
                        let head = r.collection_stats(colls[c]).await.unwrap().durable_seq;
                        let page = r
                            .stream(
                                colls[c],
                                StreamRequest {
                                    wait: Duration::from_millis(wait_ms),
                                    ..StreamRequest::after(head)
                                },
                            )
                            .await;
                        match page {
                            Ok(p) => assert!(p.cursor >= head),
                            // The head moved on between the two calls: fine, never a panic.
                            Err(Error::CursorAhead { .. }) => panic!("cursor {head} ahead"),
                            Err(e) => panic!("stream: {e}"),
                        }
                    }
                }
                Task::Stater { c, rounds } => {
                    for _ in 0..rounds {
                        r.state(colls[c])
                            .await
                            .unwrap_or_else(|e| panic!("state: {e}"));
                        r.recovery(colls[c], &[0], Some("d0"))
                            .await
                            .unwrap_or_else(|e| panic!("recovery: {e}"));
                    }
                }
            }
            (answered, written)
        }));
    }
    let mut answered: BTreeMap<usize, BTreeMap<u64, String>> = BTreeMap::new();
    let mut texts: Vec<(usize, String, String)> = Vec::new();
    for h in handles {
        let (a, w) = h.await.expect("task panicked");
        for (c, seq, doc) in a {
            assert!(
                answered.entry(c).or_default().insert(seq, doc).is_none(),
                "{}: seq {seq} answered twice",
                colls[c]
            );
        }
        texts.extend(w);
    }
    for (c, name) in colls.iter().enumerate() {
        let want = answered.remove(&c).unwrap_or_default();
        let head = want.keys().last().copied().unwrap_or(0);
        assert_eq!(
            want.keys().copied().collect::<Vec<_>>(),
            (1..=head).collect::<Vec<_>>(),
            "{name}: answered seqs not contiguous"
        );
        let mut peer = Peer::new("check", 1_000_000);
        peer.sync(&r, name, 2).await;
        assert_eq!(peer.cursor, head, "{name}");
        for (wc, doc, text) in &texts {
            if *wc != c {
                continue;
            }
            // Several writers may share a document: each one's text must be in it.
            let got = peer.replica(doc).text();
            for part in text.split(',').filter(|p| !p.is_empty()) {
                assert!(
                    got.contains(part),
                    "{name}/{doc}: {part:?} missing from {got:?}"
                );
            }
        }
    }
    r.close(Duration::from_secs(5)).await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 16, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn concurrent_tasks_across_actor_stops(
        tasks in proptest::collection::vec(task(), 1..10),
        max_live in 1..3usize,
        arbiters in 1..4usize,
        page_bytes in prop_oneof![Just(0usize), Just(40), Just(1 << 20)],
    ) {
        actix_rt::System::new().block_on(run_concurrent(tasks, max_live, arbiters, page_bytes));
    }
}

/// `close` says the store is released once the last clone is dropped, so a restart in the
/// same process can reopen the directory: an embedder that closes, drops and calls
/// `Replicate::open` again right away (no retry loop, unlike the test helpers) must get a
/// handle, every time.
#[actix_rt::test]
async fn reopen_right_after_close_and_drop_succeeds() {
    let dir = tempfile::tempdir().unwrap();
    let mut failures = Vec::new();
    let mut expected = 0u64;
    let mut r = Replicate::open(config(dir.path())).expect("first open");
    for round in 0..30u64 {
        let rep = Replica::new(round + 1);
        let w = r.insert("c", write("d", rep.append("x"))).await.unwrap();
        expected += 1;
        assert_eq!(w.seq, expected);
        r.close(Duration::from_secs(5)).await.unwrap();
        r = loop {
            match Replicate::open(config(dir.path())) {
                Ok(r) => break r,
                Err(e) => {
                    failures.push(format!("round {round}: {e}"));
                    actix_rt::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
    }
    r.close(Duration::from_secs(5)).await.unwrap();
    assert!(
        failures.is_empty(),
        "{} immediate reopens after close failed, e.g. {:?}",
        failures.len(),
        &failures[..failures.len().min(3)]
    );
}

/// Every `Duration` field of `Config` at `Duration::MAX` (what an embedder writes for "never"),
/// and the size fields at their extremes: no call panics, a long poll still wakes on a commit,
/// writes stay numbered and readable.
#[actix_rt::test]
async fn config_durations_at_max_do_not_panic() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.ask_timeout = Duration::MAX;
    cfg.state_timeout = Duration::MAX;
    cfg.max_wait = Duration::MAX;
    cfg.idle_timeout = Duration::MAX;
    cfg.peer_timeout = Duration::MAX;
    cfg.op_id_ttl = Duration::MAX;
    cfg.peer_retention = Duration::MAX;
    cfg.max_update_bytes = usize::MAX;
    cfg.max_waiters = usize::MAX;
    cfg.max_waiters_per_collection = usize::MAX;
    let clock = ManualClock::new(u64::MAX / 2);
    let r = open_with(cfg, &clock).await;
    let rep = Replica::new(1);
    let op = |n: &str| Write {
        document_id: "d".into(),
        bytes: rep.append(n),
        op_id: Some(format!("op-{n}")),
    };
    assert_eq!(r.insert("c", op("1")).await.unwrap().seq, 1);
    let poller = {
        let r = r.clone();
        actix_rt::spawn(async move {
            r.stream(
                "c",
                StreamRequest {
                    wait: Duration::MAX,
                    ..StreamRequest::after(1)
                },
            )
            .await
        })
    };
    actix_rt::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(r.update("c", op("2")).await.unwrap().seq, 2);
    let page = tokio::time::timeout(Duration::from_secs(10), poller)
        .await
        .expect("long poll woke")
        .unwrap()
        .unwrap();
    assert_eq!(page.cursor, 2);
    assert_eq!(r.ack("c", "p", 2).await.unwrap(), 2);
    clock.advance(u64::MAX / 4);
    r.compact("c", CompactRequest::document("d")).await.unwrap();
    r.state("c").await.unwrap();
    r.recovery("c", &[0], Some("d")).await.unwrap();
    let (_, cursor) = all_deltas(&r, "c").await;
    assert_eq!(cursor, 2);
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// `max_in_flight: usize::MAX` (an embedder's "no limit"): the collection actor sets its
/// mailbox capacity to it, past actix's channel maximum, so the next `Addr::clone` (in the
/// registry, under its lock) overflows and panics in the caller. The panic poisons the
/// registry lock, and from then on every call on the handle, for every collection, answers
/// `Internal("registry lock poisoned")`.
#[actix_rt::test]
async fn an_unlimited_max_in_flight_neither_panics_nor_wedges_the_handle() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(dir.path());
    cfg.max_in_flight = usize::MAX;
    let clock = ManualClock::new(1_000);
    let r = open_with(cfg, &clock).await;
    let mut outcomes = Vec::new();
    for (i, c) in ["a", "b", "a", "c"].into_iter().enumerate() {
        let r = r.clone();
        let rep = Replica::new(1 + i as u64);
        // Each call on a task of its own, so a panic in the call is seen as one.
        let out =
            actix_rt::spawn(
                async move { r.insert(c, write(&format!("d{i}"), rep.append("x"))).await },
            )
            .await;
        outcomes.push(match out {
            Ok(Ok(w)) => format!("{c}: seq {}", w.seq),
            Ok(Err(e)) => format!("{c}: error {e}"),
            Err(_) => format!("{c}: PANICKED"),
        });
        actix_rt::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        outcomes,
        vec!["a: seq 1", "b: seq 1", "a: seq 2", "c: seq 1"],
        "writes under max_in_flight = usize::MAX"
    );
    r.close(Duration::from_secs(5)).await.unwrap();
}
