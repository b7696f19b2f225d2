//! Adversarial review of `state` and `recovery` (per document and collection-wide) while the
//! collection is under load: a client that takes `state` (or recovery with its state vector)
//! and then streams everything after the returned cursor must hold every answered write, and
//! the cursor must never claim more than the bytes hold. Plus bad and hostile input to both.
//!
//! Every test runs on sled, and on PostgreSQL when `REPLICATE_TEST_POSTGRES` is set.

mod common;

use std::cell::RefCell;
use std::rc::Rc;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use replicate_actors::{
    CompactRequest, Config, Error, ManualClock, OperationType, Replicate, StreamRequest,
};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

const C: &str = "rsr";

/// A writer of one document: its own client id, its own root text (named after the document,
/// so a collection-wide merge keeps documents apart).
struct Writer {
    doc: Doc,
    root: String,
}

impl Writer {
    fn new(client: u64, root: &str) -> Self {
        Writer {
            doc: Doc::with_client_id(client),
            root: root.to_string(),
        }
    }

    fn append(&self, s: &str) -> Vec<u8> {
        let text = self.doc.get_or_insert_text(self.root.as_str());
        let mut txn = self.doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, s);
        txn.encode_update_v1()
    }

    /// Inserts each char of `s` at position 0 in one transaction: one struct per char.
    fn prepend_chars(&self, s: &str) -> Vec<u8> {
        let text = self.doc.get_or_insert_text(self.root.as_str());
        let before = self.doc.transact().state_vector();
        {
            let mut txn = self.doc.transact_mut();
            for ch in s.chars() {
                text.insert(&mut txn, 0, &ch.to_string());
            }
        }
        self.doc.transact().encode_diff_v1(&before)
    }

    /// Deletes up to `n` chars at the front; `None` if there is nothing to delete.
    fn delete_front(&self, n: u32) -> Option<Vec<u8>> {
        let text = self.doc.get_or_insert_text(self.root.as_str());
        let mut txn = self.doc.transact_mut();
        let n = n.min(text.len(&txn));
        if n == 0 {
            return None;
        }
        text.remove_range(&mut txn, 0, n);
        Some(txn.encode_update_v1())
    }

    fn text(&self) -> String {
        text_of(&self.doc, &self.root)
    }
}

fn text_of(doc: &Doc, root: &str) -> String {
    let text = doc.get_or_insert_text(root);
    let s = text.get_string(&doc.transact());
    s
}

fn apply(doc: &Doc, update: &[u8]) {
    let update = Update::decode_v1(update).expect("the server sent a valid update");
    doc.transact_mut()
        .apply_update(update)
        .expect("the update applies");
}

fn sv_of(doc: &Doc) -> Vec<u8> {
    doc.transact().state_vector().encode_v1()
}

async fn head(r: &Replicate) -> u64 {
    r.collection_stats(C).await.expect("stats").durable_seq
}

/// Streams from `cursor` until `has_more` is false, applying the changes of `only` (every
/// document if `None`) to `doc`; answers the final cursor.
async fn stream_into(r: &Replicate, doc: &Doc, mut cursor: u64, only: Option<&str>) -> u64 {
    loop {
        let page = r
            .stream(
                C,
                StreamRequest {
                    limit: 7,
                    ..StreamRequest::after(cursor)
                },
            )
            .await
            .expect("stream answers");
        assert!(page.cursor >= cursor, "cursor went back");
        for ch in &page.changes {
            if only.is_none_or(|d| d == ch.document_id) {
                apply(doc, &ch.bytes);
            }
        }
        cursor = page.cursor;
        if !page.has_more {
            return cursor;
        }
    }
}

// ---------------------------------------------------------------------------------------
// 1. Collection-wide state with causally incomplete (pending) updates in several documents.
// ---------------------------------------------------------------------------------------

/// Each document may hold up to `max_pending` waiting items, and writes are checked per
/// document. `state` merges every document into ONE document, where the waiting items of all
/// documents add up: past the per-document limit, the merge quarantines a stored update, and
/// `state` silently leaves out answered writes while claiming the head as its cursor.
async fn state_holds_pending_updates_of_several_documents() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let r = open(dir.path(), &clock).await;
    let a = Writer::new(11, "a");
    let b = Writer::new(12, "b");
    // The first write of each writer is held back: what follows waits for it.
    let a_first = a.append("x");
    let b_first = b.append("y");
    let many: String = std::iter::repeat_n('k', 600).collect();
    let a_rest = a.prepend_chars(&many);
    let b_rest = b.prepend_chars(&many);
    r.update(C, write("a", a_rest))
        .await
        .expect("a: 600 waiting items are within the limit");
    r.update(C, write("b", b_rest))
        .await
        .expect("b: 600 waiting items are within the limit");
    r.update(C, write("a", a_first))
        .await
        .expect("a's gap filled");
    let last = r
        .update(C, write("b", b_first))
        .await
        .expect("b's gap filled")
        .seq;

    // Each document alone is whole.
    for w in [&a, &b] {
        let fresh = Doc::with_client_id(900);
        let rec = r
            .recovery(C, &sv_of(&fresh), Some(&w.root))
            .await
            .expect("recovery");
        apply(&fresh, &rec.update);
        assert_eq!(text_of(&fresh, &w.root), w.text(), "recovery of {}", w.root);
    }

    let state = r.state(C).await.expect("state");
    assert_eq!(state.cursor, last);
    let held = Doc::with_client_id(901);
    apply(&held, &state.update);
    let end = stream_into(&r, &held, state.cursor, None).await;
    assert_eq!(end, last);
    for w in [&a, &b] {
        assert_eq!(
            text_of(&held, &w.root).len(),
            w.text().len(),
            "state (cursor {}) + stream lost writes of document {}",
            state.cursor,
            w.root
        );
    }
    // Collection-wide recovery from nothing: the same.
    let fresh = Doc::with_client_id(902);
    let rec = r.recovery(C, &sv_of(&fresh), None).await.expect("recovery");
    apply(&fresh, &rec.update);
    stream_into(&r, &fresh, rec.cursor, None).await;
    for w in [&a, &b] {
        assert_eq!(
            text_of(&fresh, &w.root).len(),
            w.text().len(),
            "collection recovery (cursor {}) + stream lost writes of document {}",
            rec.cursor,
            w.root
        );
    }
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// Yjs client ids are random per document session (32 bits in the JS `yjs` package), and
/// some apps set them per user, so two documents of a collection sharing one is to be
/// expected. One update cannot hold both (their structs have the same ids), so `state` and
/// collection-wide recovery refuse with `Conflict` rather than answer bytes that lose one
/// document while the cursor claims it; per-document recovery still answers each whole.
async fn state_holds_documents_whose_writers_share_a_client_id() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let r = open(dir.path(), &clock).await;
    let a = Writer::new(4242, "a");
    let b = Writer::new(4242, "b");
    r.update(C, write("a", a.append("alpha"))).await.unwrap();
    r.update(C, write("b", b.append("beta"))).await.unwrap();
    match r.state(C).await {
        Err(Error::Conflict(reason)) => assert!(reason.contains("4242"), "{reason}"),
        other => panic!("state of documents sharing a client id: {other:?}"),
    }
    match r.recovery(C, &[0], None).await {
        Err(Error::Conflict(_)) => {}
        other => panic!("collection-wide recovery of the same: {other:?}"),
    }
    for w in [&a, &b] {
        let rec = r.recovery(C, &[0], Some(&w.root)).await.unwrap();
        let held = Doc::with_client_id(903);
        apply(&held, &rec.update);
        stream_into(&r, &held, rec.cursor, Some(&w.root)).await;
        assert_eq!(text_of(&held, &w.root), w.text(), "document {}", w.root);
    }
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// A reader that recovers (or takes `state`) while a document's update still waits for its
/// dependency, then streams the write that fills the gap, must end whole: the answer carries
/// the waiting update, since the cursor says it holds it.
async fn recovery_and_state_carry_waiting_updates() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let r = open(dir.path(), &clock).await;
    let a = Writer::new(13, "a");
    let first = a.append("x");
    let rest = a.prepend_chars("waiting");
    r.update(C, write("a", rest))
        .await
        .expect("a waiting update is accepted");
    let by_doc = Doc::with_client_id(904);
    let rec = r.recovery(C, &[0], Some("a")).await.unwrap();
    apply(&by_doc, &rec.update);
    let by_state = Doc::with_client_id(905);
    let st = r.state(C).await.unwrap();
    apply(&by_state, &st.update);
    let by_all = Doc::with_client_id(906);
    let all = r.recovery(C, &[0], None).await.unwrap();
    apply(&by_all, &all.update);
    r.update(C, write("a", first)).await.unwrap();
    for (what, doc, cursor) in [
        ("document recovery", &by_doc, rec.cursor),
        ("state", &by_state, st.cursor),
        ("collection recovery", &by_all, all.cursor),
    ] {
        stream_into(&r, doc, cursor, None).await;
        assert_eq!(
            text_of(doc, "a"),
            a.text(),
            "{what} (cursor {cursor}) + stream"
        );
    }
    r.close(Duration::from_secs(5)).await.unwrap();
}

// ---------------------------------------------------------------------------------------
// 2. Bad and hostile input: a clear 4xx-class error, nothing changes, nothing panics.
// ---------------------------------------------------------------------------------------

fn is_client_error(e: &Error) -> bool {
    matches!(
        e,
        Error::InvalidName { .. }
            | Error::InvalidArgument { .. }
            | Error::InvalidYjs { .. }
            | Error::YjsLimit { .. }
            | Error::TooLarge { .. }
    )
}

fn varint(mut n: u64, out: &mut Vec<u8>) {
    loop {
        let b = (n & 0x7f) as u8;
        n >>= 7;
        if n == 0 {
            out.push(b);
            return;
        }
        out.push(b | 0x80);
    }
}

async fn bad_recovery_input_is_refused_and_changes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let r = open(dir.path(), &clock).await;
    let w = Writer::new(21, "d");
    for i in 0..5 {
        r.update(C, write("d", w.append(&format!("w{i}"))))
            .await
            .unwrap();
    }
    r.compact(C, CompactRequest::document("d")).await.unwrap();
    r.update(C, write("d", w.append("tail"))).await.unwrap();
    let before_head = head(&r).await;
    let before_state = r.state(C).await.unwrap();

    let mut bad: Vec<(&str, Vec<u8>)> = vec![
        ("truncated varint", vec![0x80]),
        ("count without entries", vec![5]),
        ("count of 2^35", vec![0xff, 0xff, 0xff, 0xff, 0x7f]),
        ("client without clock", vec![1, 7]),
        (
            "overlong varint",
            vec![
                1, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, 1,
            ],
        ),
        ("junk", b"not a state vector at all".to_vec()),
        ("trailing bytes", vec![0, 0, 0, 0]),
    ];
    // A huge count with few entries.
    let mut huge_count = Vec::new();
    varint(u64::from(u32::MAX), &mut huge_count);
    huge_count.extend([1, 1]);
    bad.push(("count 2^32-1, one entry", huge_count));
    for (what, sv) in &bad {
        for doc in [None, Some("d"), Some("unknown")] {
            match r.recovery(C, sv, doc).await {
                Err(e) => assert!(is_client_error(&e), "{what} ({doc:?}): not a 4xx: {e:?}"),
                Ok(a) => {
                    // Trailing bytes may be tolerated by the decoder; then the answer must
                    // still be a valid update.
                    let _ = Update::decode_v1(&a.update)
                        .unwrap_or_else(|e| panic!("{what}: answer does not decode: {e}"));
                    assert!(
                        *what == "trailing bytes",
                        "{what} ({doc:?}) accepted as a state vector: {sv:?}"
                    );
                }
            }
        }
    }
    // Bad names.
    for doc in ["", "a\u{0}b", "x\u{202e}y"] {
        let e = r.recovery(C, &[0], Some(doc)).await.unwrap_err();
        assert!(is_client_error(&e), "documentId {doc:?}: {e:?}");
    }
    for c in ["", "c\u{7}", "\u{200b}"] {
        let e = r.recovery(c, &[0], None).await.unwrap_err();
        assert!(is_client_error(&e), "collection {c:?}: {e:?}");
        let e = r.state(c).await.unwrap_err();
        assert!(is_client_error(&e), "collection {c:?}: {e:?}");
    }

    // Valid but hostile state vectors: many clients, clocks at the maximum. They must answer
    // (a diff against a vector claiming more is just smaller), not panic.
    let mut many = Vec::new();
    varint(50_000, &mut many);
    for client in 0..50_000u64 {
        varint(client * 7919 + 1, &mut many);
        varint(u64::from(u32::MAX), &mut many);
    }
    let mut maxed = Vec::new();
    varint(2, &mut maxed);
    varint(u64::MAX >> 11, &mut maxed);
    varint(u64::from(u32::MAX), &mut maxed);
    varint(21, &mut maxed);
    varint(u64::from(u32::MAX), &mut maxed);
    for (what, sv) in [("50k clients", many), ("max clocks", maxed)] {
        for doc in [None, Some("d")] {
            match r.recovery(C, &sv, doc).await {
                Ok(a) => {
                    let held = Doc::with_client_id(77);
                    apply(&held, &a.update);
                    assert!(a.cursor <= head(&r).await, "{what}: cursor above head");
                }
                Err(e) => assert!(is_client_error(&e), "{what} ({doc:?}): {e:?}"),
            }
        }
    }

    // Unknown collections and documents: nothing is created.
    let none = r.recovery("never-written", &[0], None).await.unwrap();
    assert_eq!(none.cursor, 0);
    let none = r.recovery("never-written", &[0], Some("d")).await.unwrap();
    assert_eq!(none.cursor, 0);
    let none = r.state("never-written").await.unwrap();
    assert_eq!(none.cursor, 0);
    let stats = r.collection_stats("never-written").await.unwrap();
    assert_eq!(stats.durable_seq, 0);
    let unknown = r.recovery(C, &[0], Some("no-such-doc")).await.unwrap();
    let held = Doc::with_client_id(78);
    apply(&held, &unknown.update);
    assert_eq!(
        held.transact().state_vector(),
        StateVector::default(),
        "an unknown document holds nothing"
    );

    // Nothing changed.
    assert_eq!(head(&r).await, before_head);
    let after_state = r.state(C).await.unwrap();
    assert_eq!(after_state, before_state);
    let fresh = Doc::with_client_id(79);
    let rec = r.recovery(C, &[0], Some("d")).await.unwrap();
    apply(&fresh, &rec.update);
    assert_eq!(text_of(&fresh, "d"), w.text());
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// Recovery and state of a document whose last write was a `delete` (and then compacted):
/// the document is still readable and whole; recovery with the deleter's own vector is
/// empty-ish and valid.
async fn deleted_documents_recover_whole() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let r = open(dir.path(), &clock).await;
    let w = Writer::new(31, "gone");
    r.insert(C, write("gone", w.append("hello world")))
        .await
        .unwrap();
    let del = w.delete_front(5).unwrap();
    r.delete(C, write("gone", del)).await.unwrap();
    for round in 0..2 {
        let fresh = Doc::with_client_id(80);
        let rec = r.recovery(C, &[0], Some("gone")).await.unwrap();
        apply(&fresh, &rec.update);
        assert_eq!(text_of(&fresh, "gone"), w.text(), "round {round}");
        let st = r.state(C).await.unwrap();
        let held = Doc::with_client_id(81);
        apply(&held, &st.update);
        assert_eq!(text_of(&held, "gone"), w.text(), "round {round}");
        let own = r.recovery(C, &sv_of(&w.doc), Some("gone")).await.unwrap();
        apply(&w.doc, &own.update);
        r.compact(
            C,
            CompactRequest {
                peer_timeout: Some(Duration::ZERO),
                ..CompactRequest::document("gone")
            },
        )
        .await
        .unwrap();
    }
    r.close(Duration::from_secs(5)).await.unwrap();
}

on_every_engine!(
    state_holds_pending_updates_of_several_documents,
    state_holds_documents_whose_writers_share_a_client_id,
    recovery_and_state_carry_waiting_updates,
    bad_recovery_input_is_refused_and_changes_nothing,
    deleted_documents_recover_whole,
);

// ---------------------------------------------------------------------------------------
// 3. The invariant under load, as random schedules: writers (single and batch, insert /
//    update / delete), compactions (with and without a client snapshot, peers active or
//    timed out), an acking peer and a laggard, a tiny doc cache and state cache, actor
//    relocation; readers that take `state` / recovery and stream after its cursor.
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone)]
enum Edit {
    Append(String),
    Delete(u32),
}

#[derive(Debug, Clone)]
enum Step {
    One(Edit, u8),
    Batch(Vec<(Edit, u8)>),
}

#[derive(Debug, Clone, Copy)]
enum ReadKind {
    State,
    RecoverAll,
    RecoverDoc(usize),
}

#[derive(Debug, Clone)]
struct Compaction {
    doc: usize,
    timeout_ms: Option<u64>,
    with_snapshot: bool,
    advance_ms: u64,
}

#[derive(Debug, Clone)]
struct Schedule {
    docs: Vec<Vec<Step>>,
    reads: Vec<ReadKind>,
    compactions: Vec<Compaction>,
    small_doc_cache: bool,
    small_state_cache: bool,
    churn: bool,
    laggard: bool,
    max_page_bytes: usize,
    bucket: u64,
}

fn edit() -> impl Strategy<Value = Edit> {
    prop_oneof![
        3 => "[a-z]{1,6}".prop_map(Edit::Append),
        1 => (1u32..4).prop_map(Edit::Delete),
    ]
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        3 => (edit(), 0u8..3).prop_map(|(e, r)| Step::One(e, r)),
        1 => prop::collection::vec((edit(), 0u8..3), 1..5).prop_map(Step::Batch),
    ]
}

fn schedule() -> impl Strategy<Value = Schedule> {
    (1usize..=3)
        .prop_flat_map(|n| {
            (
                prop::collection::vec(prop::collection::vec(step(), 3..12), n..=n),
                prop::collection::vec(
                    prop_oneof![
                        Just(ReadKind::State),
                        Just(ReadKind::RecoverAll),
                        (0..n).prop_map(ReadKind::RecoverDoc),
                    ],
                    2..7,
                ),
                prop::collection::vec(
                    (
                        0..n,
                        prop_oneof![Just(None), Just(Some(0u64)), (1u64..200).prop_map(Some)],
                        any::<bool>(),
                        0u64..100,
                    )
                        .prop_map(
                            |(doc, timeout_ms, with_snapshot, advance_ms)| Compaction {
                                doc,
                                timeout_ms,
                                with_snapshot,
                                advance_ms,
                            },
                        ),
                    1..6,
                ),
                (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
                (
                    prop_oneof![Just(64usize), Just(512), Just(1 << 20)],
                    1u64..9,
                ),
            )
        })
        .prop_map(
            |(docs, reads, compactions, (sd, ss, churn, laggard), (max_page_bytes, bucket))| {
                Schedule {
                    docs,
                    reads,
                    compactions,
                    small_doc_cache: sd,
                    small_state_cache: ss,
                    churn,
                    laggard,
                    max_page_bytes,
                    bucket,
                }
            },
        )
}

fn route(r: u8) -> OperationType {
    match r {
        0 => OperationType::Insert,
        1 => OperationType::Update,
        _ => OperationType::Delete,
    }
}

fn doc_name(d: usize) -> String {
    format!("doc-{d}")
}

/// (seq, the writer's text after the write) per answered write, in order, per document.
type History = Rc<RefCell<Vec<Vec<(u64, String)>>>>;

/// What one reader round saw.
#[derive(Debug)]
struct Round {
    kind: ReadKind,
    /// Writes of each document answered before the call was made.
    answered: Vec<usize>,
    cursor: u64,
    /// Text of each document right after applying the answer (before streaming).
    at_cursor: Vec<String>,
    end: u64,
    /// Text of each document after streaming from `cursor` to `end`.
    at_end: Vec<String>,
}

/// Whether `text` is the text after some write j of `history` with j ≥ `at_least` (j = 0:
/// before any write).
fn holds(history: &[(u64, String)], text: &str, at_least: usize) -> bool {
    (at_least..=history.len()).any(|j| {
        let t = if j == 0 {
            ""
        } else {
            history[j - 1].1.as_str()
        };
        t == text
    })
}

fn written_through(history: &[(u64, String)], cursor: u64) -> usize {
    history.iter().filter(|(s, _)| *s <= cursor).count()
}

fn text_by_name(doc: &Doc, d: usize) -> String {
    text_of(doc, &doc_name(d))
}

async fn run_schedule(s: Schedule) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut cfg: Config = config(dir.path());
    cfg.max_page_bytes = s.max_page_bytes;
    cfg.page_bucket_seqs = s.bucket;
    cfg.doc_counters_cached = 1;
    if s.small_doc_cache {
        cfg.doc_cache_bytes = 1;
    }
    if s.small_state_cache {
        cfg.state_cache_bytes = 1;
    }
    if s.churn {
        cfg.max_live_collections = 1;
    }
    let r = open_with(cfg, &clock).await;
    let n = s.docs.len();
    let writers: Rc<Vec<Writer>> = Rc::new(
        (0..n)
            .map(|d| Writer::new(1_000 + d as u64, &doc_name(d)))
            .collect(),
    );
    let history: History = Rc::new(RefCell::new(vec![Vec::new(); n]));
    let writers_done = Rc::new(RefCell::new(0usize));

    if s.laggard {
        r.ack(C, "laggard", 0).await.unwrap();
    }

    let writer_tasks: Vec<_> = s
        .docs
        .iter()
        .enumerate()
        .map(|(d, steps)| {
            let (r, writers, history, done, steps) = (
                r.clone(),
                writers.clone(),
                history.clone(),
                writers_done.clone(),
                steps.clone(),
            );
            actix_rt::spawn(async move {
                let w = &writers[d];
                let name = doc_name(d);
                let make = |e: &Edit| match e {
                    Edit::Append(t) => Some(w.append(t)),
                    Edit::Delete(k) => w.delete_front(*k),
                };
                for step in steps {
                    match step {
                        Step::One(e, rt) => {
                            let Some(bytes) = make(&e) else { continue };
                            let text = w.text();
                            let seq = r
                                .write(C, route(rt), write(&name, bytes))
                                .await
                                .expect("write answers")
                                .seq;
                            history.borrow_mut()[d].push((seq, text));
                        }
                        Step::Batch(es) => {
                            let mut writes = Vec::new();
                            let mut texts = Vec::new();
                            for (e, rt) in &es {
                                if let Some(bytes) = make(e) {
                                    writes.push((route(*rt), write(&name, bytes)));
                                    texts.push(w.text());
                                }
                            }
                            if writes.is_empty() {
                                continue;
                            }
                            let answers = r.write_batch(C, writes).await.expect("batch answers");
                            for (a, text) in answers.into_iter().zip(texts) {
                                let seq = a.expect("batch write accepted").seq;
                                history.borrow_mut()[d].push((seq, text));
                            }
                        }
                    }
                    actix_rt::task::yield_now().await;
                }
                *done.borrow_mut() += 1;
            })
        })
        .collect();

    let all_written = {
        let done = writers_done.clone();
        move || *done.borrow() == n
    };

    let compactor = {
        let (r, writers, clock, comps, all_written) = (
            r.clone(),
            writers.clone(),
            clock.clone(),
            s.compactions.clone(),
            all_written.clone(),
        );
        actix_rt::spawn(async move {
            let mut rounds = 0;
            while rounds < 2 || !all_written() {
                rounds += 1;
                for c in &comps {
                    clock.advance(c.advance_ms);
                    let mut req = CompactRequest::document(doc_name(c.doc));
                    req.peer_timeout = c.timeout_ms.map(Duration::from_millis);
                    if c.with_snapshot {
                        req.snapshot = Some(
                            writers[c.doc]
                                .doc
                                .transact()
                                .encode_state_as_update_v1(&StateVector::default()),
                        );
                    }
                    match r.compact(C, req).await {
                        Ok(_) | Err(Error::Conflict(_)) => {}
                        Err(e) => panic!("compaction failed: {e:?}"),
                    }
                    actix_rt::task::yield_now().await;
                }
            }
        })
    };

    let acker = {
        let (r, all_written) = (r.clone(), all_written.clone());
        actix_rt::spawn(async move {
            let mut cursor = 0;
            while !all_written() {
                let page = r
                    .stream(
                        C,
                        StreamRequest {
                            limit: 5,
                            wait: Duration::from_millis(3),
                            ..StreamRequest::after(cursor)
                        },
                    )
                    .await
                    .expect("stream");
                cursor = page.cursor;
                r.ack(C, "acker", cursor).await.expect("ack");
            }
        })
    };

    let churner = s.churn.then(|| {
        let (r, all_written) = (r.clone(), all_written.clone());
        actix_rt::spawn(async move {
            let w = Writer::new(77_777, "o");
            let mut i = 0;
            while !all_written() {
                i += 1;
                r.update("other", write("o", w.append("z")))
                    .await
                    .expect("other collection write");
                if i % 3 == 0 {
                    let _ = r.state("other").await.expect("other state");
                }
                actix_rt::task::yield_now().await;
            }
        })
    });

    let reader = {
        let (r, history, reads, all_written) = (
            r.clone(),
            history.clone(),
            s.reads.clone(),
            all_written.clone(),
        );
        actix_rt::spawn(async move {
            let mut rounds: Vec<Round> = Vec::new();
            let all_doc = Doc::with_client_id(5_000);
            let doc_docs: Vec<Doc> = (0..n)
                .map(|d| Doc::with_client_id(6_000 + d as u64))
                .collect();
            let mut i = 0;
            // At least one pass over the reads, and on until the writers are done, then one
            // more pass.
            let mut after_done = 0;
            while after_done < reads.len() {
                if all_written() {
                    after_done += 1;
                }
                let kind = reads[i % reads.len()];
                i += 1;
                let answered: Vec<usize> = history.borrow().iter().map(Vec::len).collect();
                let fresh;
                let (doc, only, at) = match kind {
                    ReadKind::State => {
                        let at = r.state(C).await.expect("state answers");
                        fresh = Doc::with_client_id(7_000 + i as u64);
                        (&fresh, None, at)
                    }
                    ReadKind::RecoverAll => {
                        let at = r
                            .recovery(C, &sv_of(&all_doc), None)
                            .await
                            .expect("collection recovery answers");
                        (&all_doc, None, at)
                    }
                    ReadKind::RecoverDoc(d) => {
                        let name = doc_name(d);
                        let at = r
                            .recovery(C, &sv_of(&doc_docs[d]), Some(&name))
                            .await
                            .expect("document recovery answers");
                        (&doc_docs[d], Some(d), at)
                    }
                };
                apply(doc, &at.update);
                let at_cursor = (0..n).map(|d| text_by_name(doc, d)).collect();
                let only_name = only.map(doc_name);
                let end = stream_into(&r, doc, at.cursor, only_name.as_deref()).await;
                let at_end = (0..n).map(|d| text_by_name(doc, d)).collect();
                rounds.push(Round {
                    kind,
                    answered,
                    cursor: at.cursor,
                    at_cursor,
                    end,
                    at_end,
                });
                actix_rt::task::yield_now().await;
            }
            rounds
        })
    };

    for t in writer_tasks {
        t.await.unwrap();
    }
    compactor.await.unwrap();
    acker.await.unwrap();
    if let Some(c) = churner {
        c.await.unwrap();
    }
    let rounds = reader.await.unwrap();

    let history = history.borrow().clone();
    if std::env::var("REVIEW_DEBUG").is_ok() {
        let moved = rounds.iter().filter(|r| r.end > r.cursor).count();
        let total: usize = history.iter().map(Vec::len).sum();
        eprintln!(
            "rounds {} (streamed past the cursor: {moved}), writes {total}",
            rounds.len()
        );
    }
    for (k, round) in rounds.iter().enumerate() {
        let docs: Vec<usize> = match round.kind {
            ReadKind::RecoverDoc(d) => vec![d],
            _ => (0..n).collect(),
        };
        for d in docs {
            let h = &history[d];
            let through = written_through(h, round.cursor);
            assert!(
                holds(h, &round.at_cursor[d], through),
                "round {k} {:?}: the answer claims cursor {} (through write {through} of doc-{d}) \
                 but holds {:?}; history {:?}",
                round.kind,
                round.cursor,
                round.at_cursor[d],
                h
            );
            let need = written_through(h, round.end).max(round.answered[d]);
            assert!(
                holds(h, &round.at_end[d], need),
                "round {k} {:?}: cursor {} then streamed to {}: doc-{d} needs write {need} \
                 (answered before: {}) but holds {:?}; history {:?}",
                round.kind,
                round.cursor,
                round.end,
                round.answered[d],
                round.at_end[d],
                h
            );
        }
    }

    // Finally, quiet: state and every document's recovery hold exactly the writers' texts.
    let st = r.state(C).await.unwrap();
    let held = Doc::with_client_id(8_000);
    apply(&held, &st.update);
    stream_into(&r, &held, st.cursor, None).await;
    for (d, w) in writers.iter().enumerate() {
        assert_eq!(text_by_name(&held, d), w.text(), "final state of doc-{d}");
        let fresh = Doc::with_client_id(8_001);
        let rec = r.recovery(C, &[0], Some(&doc_name(d))).await.unwrap();
        apply(&fresh, &rec.update);
        assert_eq!(
            text_by_name(&fresh, d),
            w.text(),
            "final recovery of doc-{d}"
        );
    }
    r.close(Duration::from_secs(5)).await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn state_or_recovery_then_stream_holds_every_answered_write(s in schedule()) {
        actix::System::new().block_on(run_schedule(s));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 12, ..ProptestConfig::default() })]
    #[test]
    fn state_or_recovery_then_stream_holds_every_answered_write_on_postgres(s in schedule()) {
        if common::use_postgres("state_or_recovery_then_stream_holds_every_answered_write_on_postgres") {
            actix::System::new().block_on(run_schedule(s));
        }
    }
}
