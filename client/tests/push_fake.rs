//! The push logic against an in-memory fake of the server's batch contract: batch sizes,
//! lost answers, per-write errors (permanent and transient), a server without the batch route,
//! a batch over the body limit. The same logic runs against the real server in the other
//! tests; the fake makes each failure exact. Also one thing of the pull side only a fake
//! can pin down: a client on the event stream hears the compaction hint through its
//! read-back.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use replicate_client::feed::{ChangeFeed, SseFeed};
use replicate_client::store::{PendingWrite, Store};
use replicate_client::wire::{self, Accepted, BatchResult, Change, ErrorBody, Operation, Page};
use replicate_client::{Client, Error, Result, SyncOptions, Transport};
use yrs::updates::decoder::Decode;
use yrs::{Text, Transact};

#[derive(Default)]
struct FakeState {
    /// (seq, document, bytes, op)
    log: Vec<(u64, String, Vec<u8>, String)>,
    op_ids: HashMap<String, (u64, Vec<u8>)>,
    batch_sizes: Vec<usize>,
    single_writes: usize,
    /// Answers to drop after storing.
    lose: usize,
    no_batch: bool,
    /// Batches larger than this get 413.
    max_writes: Option<usize>,
    /// opIds answered `overloaded` once.
    overloaded_once: HashSet<String>,
    acks: Vec<u64>,
    /// What recovery answers, and the documents it was asked for.
    recovery_diff: Option<Vec<u8>>,
    recovered: Vec<String>,
    /// The compaction hint, sent only in one-change pages (the landmark read-back): the
    /// event stream carries none, and the pages a client catches up with get none here.
    hint: Option<String>,
    compacted: Vec<String>,
    events_opened: usize,
}

#[derive(Default)]
struct Fake {
    s: Mutex<FakeState>,
}

fn refused(code: &str, message: &str) -> BatchResult {
    BatchResult::Refused {
        error: ErrorBody {
            code: code.into(),
            message: message.into(),
        },
    }
}

impl FakeState {
    /// The single-write contract: validate, dedupe by opId, sequence.
    fn write(&mut self, w: &PendingWrite) -> BatchResult {
        if self.overloaded_once.remove(&w.op_id) {
            return refused("overloaded", "busy");
        }
        if let Some((seq, bytes)) = self.op_ids.get(&w.op_id) {
            return if *bytes == w.bytes {
                BatchResult::Accepted(Accepted {
                    seq: *seq,
                    duplicate: true,
                })
            } else {
                refused("conflict", "opId reused with other bytes")
            };
        }
        if yrs::Update::decode_v1(&w.bytes).is_err() {
            return refused("invalid_yjs", "not a Yjs update");
        }
        let seq = self.log.len() as u64 + 1;
        self.log
            .push((seq, w.document_id.clone(), w.bytes.clone(), w.op.clone()));
        self.op_ids.insert(w.op_id.clone(), (seq, w.bytes.clone()));
        BatchResult::Accepted(Accepted {
            seq,
            duplicate: false,
        })
    }

    fn lose_one(&mut self) -> bool {
        if self.lose > 0 {
            self.lose -= 1;
            true
        } else {
            false
        }
    }
}

fn server_error(status: u16, code: &str) -> Error {
    Error::Server {
        status,
        code: code.into(),
        message: "fake".into(),
    }
}

impl Transport for Fake {
    fn batch(&self, _c: &str, writes: &[PendingWrite]) -> Result<Vec<BatchResult>> {
        let mut s = self.s.lock().unwrap_or_else(|p| p.into_inner());
        if s.no_batch {
            return Err(server_error(404, "not_found"));
        }
        if writes.is_empty() || writes.len() > 1000 {
            return Err(server_error(400, "invalid_argument"));
        }
        if s.max_writes.is_some_and(|m| writes.len() > m) {
            return Err(server_error(413, "too_large"));
        }
        s.batch_sizes.push(writes.len());
        let results = writes.iter().map(|w| s.write(w)).collect();
        if s.lose_one() {
            return Err(Error::Network("answer lost".into()));
        }
        Ok(results)
    }

    fn write(&self, _c: &str, w: &PendingWrite) -> Result<Accepted> {
        let mut s = self.s.lock().unwrap_or_else(|p| p.into_inner());
        s.single_writes += 1;
        let r = s.write(w);
        if s.lose_one() {
            return Err(Error::Network("answer lost".into()));
        }
        match r {
            BatchResult::Accepted(a) => Ok(a),
            BatchResult::Refused { error } => Err(Error::Server {
                status: if error.code == "overloaded" { 503 } else { 422 },
                code: error.code,
                message: error.message,
            }),
        }
    }

    fn stream(&self, _c: &str, cursor: u64, limit: u32, _wait_ms: u64) -> Result<Page> {
        let s = self.s.lock().unwrap_or_else(|p| p.into_inner());
        let head = s.log.len() as u64;
        if cursor > head {
            return Err(server_error(422, "cursor_ahead"));
        }
        let changes: Vec<Change> = s
            .log
            .iter()
            .filter(|e| e.0 > cursor)
            .take(limit as usize)
            .map(|(seq, d, b, op)| Change {
                document_id: d.clone(),
                seq: *seq,
                bytes: b.clone(),
                operation: if op == "insert" {
                    Operation::Insert
                } else {
                    Operation::Update
                },
            })
            .collect();
        let to = changes.last().map_or(cursor, |c| c.seq);
        Ok(Page {
            changes,
            cursor: to,
            has_more: to < head,
            compact: s.hint.clone().filter(|_| limit == 1),
        })
    }

    /// A keepalive, one event per change after `cursor`, then the end of the stream.
    fn events(&self, _c: &str, cursor: u64, _idle: Duration) -> Result<Box<dyn ChangeFeed>> {
        let mut s = self.s.lock().unwrap_or_else(|p| p.into_inner());
        s.events_opened += 1;
        let mut text = String::from(": keepalive\n\n");
        for (seq, d, b, op) in s.log.iter().filter(|e| e.0 > cursor) {
            let data = serde_json::json!({
                "documentId": d, "seq": seq, "crdtBytes": wire::b64(b), "operationType": op,
            });
            text.push_str(&format!("id: {seq}\ndata: {data}\n\n"));
        }
        Ok(Box::new(SseFeed::new(std::io::Cursor::new(text), cursor)))
    }

    fn ack(&self, _c: &str, _peer: &str, seq: u64) -> Result<u64> {
        let mut s = self.s.lock().unwrap_or_else(|p| p.into_inner());
        s.acks.push(seq);
        Ok(seq)
    }

    fn compact(&self, _c: &str, d: &str) -> Result<()> {
        let mut s = self.s.lock().unwrap_or_else(|p| p.into_inner());
        s.compacted.push(d.to_string());
        Ok(())
    }

    fn recovery(&self, _c: &str, d: &str, _sv: &[u8]) -> Result<(Vec<u8>, u64)> {
        let mut s = self.s.lock().unwrap_or_else(|p| p.into_inner());
        s.recovered.push(d.to_string());
        let diff = s.recovery_diff.clone().unwrap_or_else(|| vec![0, 0]);
        Ok((diff, s.log.len() as u64))
    }
}

fn client(path: &Path, fake: &Arc<Fake>) -> Client {
    let options = SyncOptions {
        fsync_edits: false,
        ..SyncOptions::default()
    };
    Client::open_with_transport(path, fake.clone(), options).expect("opens")
}

fn edits(client: &Client, n: usize) {
    let d = client
        .collection("c")
        .and_then(|c| c.doc("d"))
        .expect("document");
    let text = d.doc().get_or_insert_text("t");
    for i in 0..n {
        d.edit(|txn| text.push(txn, &format!("{i},")))
            .expect("saved");
    }
}

fn with<R>(fake: &Fake, f: impl FnOnce(&mut FakeState) -> R) -> R {
    f(&mut fake.s.lock().unwrap_or_else(|p| p.into_inner()))
}

#[test]
fn pushes_the_queue_in_batches_of_at_most_1000() {
    let dir = tempfile::tempdir().expect("dir");
    let fake = Arc::new(Fake::default());
    let c = client(&dir.path().join("a.sqlite"), &fake);
    edits(&c, 2500);
    let report = c.collection("c").and_then(|c| c.sync_once()).expect("sync");
    assert_eq!(report.pushed, 2500);
    assert_eq!(report.pending, 0);
    assert_eq!(report.cursor, 2500);
    with(&fake, |s| {
        assert_eq!(s.batch_sizes, vec![1000, 1000, 500]);
        assert_eq!(s.log.len(), 2500);
        assert_eq!(
            s.log[0].3, "insert",
            "the first write of a new document is an insert"
        );
        assert!(s.log[1..].iter().all(|e| e.3 == "update"));
        assert_eq!(s.acks.last(), Some(&2500), "acked after applying");
    });
}

#[test]
fn a_lost_answer_is_retried_with_the_same_op_ids_and_stored_once() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("a.sqlite");
    let fake = Arc::new(Fake::default());
    {
        let c = client(&path, &fake);
        edits(&c, 30);
        with(&fake, |s| s.lose = 1);
        let e = c.sync_once().expect_err("the answer was lost");
        assert!(matches!(e, Error::Network(_)), "{e:?}");
        assert_eq!(
            with(&fake, |s| s.log.len()),
            30,
            "the server stored the batch"
        );
        assert_eq!(
            c.collection("c")
                .and_then(|c| c.status())
                .map(|s| s.pending)
                .ok(),
            Some(30)
        );
    } // the process "dies" here, before hearing the answer
    let c = client(&path, &fake);
    let report = c.collection("c").and_then(|c| c.sync_once()).expect("sync");
    assert_eq!(report.pending, 0);
    with(&fake, |s| {
        assert_eq!(s.log.len(), 30, "nothing stored twice");
        assert_eq!(s.batch_sizes, vec![30, 30], "the same 30 writes went again");
    });
}

#[test]
fn permanent_per_write_errors_are_dropped_and_exposed_transient_ones_stay_queued() {
    let dir = tempfile::tempdir().expect("dir");
    let path = dir.path().join("a.sqlite");
    let fake = Arc::new(Fake::default());
    let c = client(&path, &fake);
    edits(&c, 1);
    {
        // A write whose bytes the server will refuse, queued as a local edit would be.
        let store = Store::open(&path).expect("store");
        store
            .record_local("c", "junk", &[0xff, 0xff, 0xff], "bad-op", false)
            .expect("queued");
        store
            .record_local("c", "e", &[0, 0], "busy-op", false)
            .expect("queued");
    }
    with(&fake, |s| {
        s.overloaded_once.insert("busy-op".into());
    });
    let col = c.collection("c").expect("collection");
    let e = col
        .sync_once()
        .expect_err("a transient per-write error fails the round");
    assert!(e.is_transient(), "{e:?}");
    let status = col.status().expect("status");
    assert_eq!((status.pending, status.rejected), (1, 1));
    let rejected = col.rejected().expect("rejected");
    assert_eq!(rejected[0].op_id, "bad-op");
    assert_eq!(rejected[0].code, "invalid_yjs");
    let report = col.sync_once().expect("second round");
    assert_eq!((report.pushed, report.pending), (1, 0));
    assert_eq!(with(&fake, |s| s.log.len()), 2);
}

#[test]
fn without_the_batch_route_it_pushes_single_writes_with_the_same_op_ids() {
    let dir = tempfile::tempdir().expect("dir");
    let fake = Arc::new(Fake::default());
    with(&fake, |s| {
        s.no_batch = true;
        s.lose = 1;
    });
    let c = client(&dir.path().join("a.sqlite"), &fake);
    edits(&c, 10);
    assert!(c.sync_once().is_err(), "the first answer was lost");
    let report = c.collection("c").and_then(|c| c.sync_once()).expect("sync");
    assert_eq!(report.pending, 0);
    with(&fake, |s| {
        assert_eq!(s.log.len(), 10);
        assert_eq!(s.single_writes, 11, "one write went twice, stored once");
        assert!(s.batch_sizes.is_empty());
    });
}

#[test]
fn a_batch_over_the_body_limit_is_split() {
    let dir = tempfile::tempdir().expect("dir");
    let fake = Arc::new(Fake::default());
    with(&fake, |s| s.max_writes = Some(300));
    let c = client(&dir.path().join("a.sqlite"), &fake);
    edits(&c, 1000);
    let report = c.collection("c").and_then(|c| c.sync_once()).expect("sync");
    assert_eq!(report.pending, 0);
    with(&fake, |s| {
        assert_eq!(s.log.len(), 1000);
        assert!(
            s.batch_sizes.iter().all(|n| *n <= 300),
            "{:?}",
            s.batch_sizes
        );
    });
}

#[test]
fn two_clients_converge_through_the_fake() {
    let dir = tempfile::tempdir().expect("dir");
    let fake = Arc::new(Fake::default());
    let a = client(&dir.path().join("a.sqlite"), &fake);
    let b = client(&dir.path().join("b.sqlite"), &fake);
    edits(&a, 5);
    edits(&b, 7);
    for c in [&a, &b, &a] {
        c.sync_once().expect("sync");
    }
    let read = |c: &Client| {
        let d = c.collection("c").and_then(|c| c.doc("d")).expect("doc");
        let t = d.doc().get_or_insert_text("t");
        let txn = d.doc().transact();
        yrs::GetString::get_string(&t, &txn)
    };
    assert_eq!(read(&a), read(&b));
    assert_eq!(read(&a).matches(',').count(), 12);
}

#[test]
fn the_first_sync_recovers_documents_made_offline_and_later_ones_do_not() {
    let dir = tempfile::tempdir().expect("dir");
    let fake = Arc::new(Fake::default());
    let server_side = {
        let doc = yrs::Doc::with_client_id(99);
        let t = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        t.push(&mut txn, "from-server,");
        txn.encode_update_v1()
    };
    with(&fake, |s| s.recovery_diff = Some(server_side));
    let path = dir.path().join("a.sqlite");
    let c = client(&path, &fake);
    edits(&c, 2);
    c.sync_once().expect("sync");
    let d = c.collection("c").and_then(|c| c.doc("d")).expect("doc");
    let t = d.doc().get_or_insert_text("t");
    let body = {
        let txn = d.doc().transact();
        yrs::GetString::get_string(&t, &txn)
    };
    assert!(
        body.contains("from-server,") && body.contains("0,1,"),
        "{body}"
    );
    assert_eq!(with(&fake, |s| s.recovered.clone()), vec!["d".to_string()]);
    drop((d, c));
    // Reopened, the collection has synced before: it streams from its cursor, no recovery.
    let c = client(&path, &fake);
    c.sync_once().expect("sync");
    assert_eq!(with(&fake, |s| s.recovered.len()), 1);
}

#[test]
fn a_client_on_the_event_stream_hears_the_compaction_hint_through_its_read_back() {
    let dir = tempfile::tempdir().expect("dir");
    let fake = Arc::new(Fake::default());
    let writer = client(&dir.path().join("w.sqlite"), &fake);
    edits(&writer, 3);
    writer.sync_once().expect("sync");
    with(&fake, |s| s.hint = Some("d".into()));
    let options = SyncOptions {
        fsync_edits: false,
        backoff_min: Duration::from_millis(10),
        backoff_max: Duration::from_millis(50),
        ..SyncOptions::default()
    };
    let follower = Client::open_with_transport(dir.path().join("f.sqlite"), fake.clone(), options)
        .expect("opens");
    follower.collection("c").expect("collection");
    follower.start_sync();
    // Each stream the fake serves ends after its events: the reconnection reads the
    // landmark back, and that page carries the hint.
    let deadline = Instant::now() + Duration::from_secs(10);
    while with(&fake, |s| s.compacted.is_empty()) {
        assert!(Instant::now() < deadline, "the hint was not followed");
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(with(&fake, |s| s.compacted.clone()), vec!["d".to_string()]);
    assert!(with(&fake, |s| s.events_opened) >= 2);
    follower.close();
}
