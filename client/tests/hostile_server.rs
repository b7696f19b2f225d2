//! The client facing a hostile or broken server (found in review). A [`Transport`] fake answers what a
//! broken server could send (HttpTransport turns the same JSON into the same `Page`s and
//! bytes): a page that claims more but does not move, a page whose cursor is below the
//! request's, change bytes that decode as Yjs but are hostile.
//!
//! Each test asserts the correct behaviour, so it fails while the bug is there.

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use replicate_client::feed::ChangeFeed;
use replicate_client::store::PendingWrite;
use replicate_client::wire::{Accepted, BatchResult, Change, Operation, Page};
use replicate_client::{Client, Error, Result, SyncOptions, Transport};

/// Stream calls after which the fake gives up (so a looping client ends the test instead of
/// hanging it).
const GIVE_UP_AFTER: usize = 500;

type Answer = dyn Fn(u64, usize) -> Result<Page> + Send + Sync;

/// A server that answers `stream` with `answer(cursor, call number)`; everything else is a
/// quiet success.
struct Hostile {
    answer: Box<Answer>,
    stream_calls: AtomicUsize,
    cursors: Mutex<Vec<u64>>,
}

impl Hostile {
    fn new(answer: impl Fn(u64, usize) -> Result<Page> + Send + Sync + 'static) -> Arc<Hostile> {
        Arc::new(Hostile {
            answer: Box::new(answer),
            stream_calls: AtomicUsize::new(0),
            cursors: Mutex::new(Vec::new()),
        })
    }
}

impl Transport for Hostile {
    fn batch(&self, _c: &str, writes: &[PendingWrite]) -> Result<Vec<BatchResult>> {
        Ok(writes
            .iter()
            .enumerate()
            .map(|(i, _)| {
                BatchResult::Accepted(Accepted {
                    seq: i as u64 + 1,
                    duplicate: false,
                })
            })
            .collect())
    }

    fn write(&self, _c: &str, _w: &PendingWrite) -> Result<Accepted> {
        Ok(Accepted {
            seq: 1,
            duplicate: false,
        })
    }

    fn stream(&self, _c: &str, cursor: u64, _limit: u32, _wait_ms: u64) -> Result<Page> {
        let n = self.stream_calls.fetch_add(1, Ordering::SeqCst);
        self.cursors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(cursor);
        if n >= GIVE_UP_AFTER {
            return Err(Error::Network("the fake gave up".into()));
        }
        (self.answer)(cursor, n)
    }

    fn events(&self, _c: &str, _cursor: u64, _idle: Duration) -> Result<Box<dyn ChangeFeed>> {
        Err(Error::Unsupported("fake".into()))
    }

    fn ack(&self, _c: &str, _peer: &str, seq: u64) -> Result<u64> {
        Ok(seq)
    }

    fn compact(&self, _c: &str, _d: &str) -> Result<()> {
        Ok(())
    }

    fn recovery(&self, _c: &str, _d: &str, _sv: &[u8]) -> Result<(Vec<u8>, u64)> {
        Ok((vec![0, 0], 0))
    }
}

fn open(path: &Path, fake: &Arc<Hostile>) -> Client {
    let options = SyncOptions {
        fsync_edits: false,
        ..SyncOptions::default()
    };
    Client::open_with_transport(path, fake.clone(), options).expect("opens")
}

/// A real insert of `s` by client `client`.
fn text_update(client: u64, s: &str) -> Vec<u8> {
    use yrs::{Doc, Text, Transact};
    let doc = Doc::with_client_id(client);
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, s);
    txn.encode_update_v1()
}

fn change(seq: u64, bytes: Vec<u8>) -> Change {
    Change {
        document_id: "d".into(),
        seq,
        bytes,
        operation: Operation::Update,
    }
}

/// A page that says `hasMore: true` but does not move the cursor (a broken server, or a
/// proxy replaying one cached answer): the client must not ask again forever.
#[test]
fn a_page_with_has_more_that_does_not_advance_is_not_asked_for_forever() {
    let dir = tempfile::tempdir().expect("dir");
    let fake = Hostile::new(|cursor, _| {
        Ok(Page {
            changes: Vec::new(),
            cursor,
            has_more: true,
            compact: None,
        })
    });
    let client = open(&dir.path().join("a.sqlite"), &fake);
    let c = client.collection("c").expect("collection");
    let outcome = c.sync_once();
    let calls = fake.stream_calls.load(Ordering::SeqCst);
    assert!(
        calls <= 3,
        "sync_once asked for the same non-advancing page {calls} times (stopped only by the \
         fake giving up: {outcome:?})"
    );
}

/// A page whose cursor is below the one asked for is not the contract (a page's cursor is
/// never below the request's): taking it moves the stored cursor backwards (and with
/// `hasMore: true` the client downloads and stores the same changes again, forever: see the
/// test above).
#[test]
fn a_page_cursor_below_the_request_is_refused_and_the_stored_cursor_never_goes_back() {
    let dir = tempfile::tempdir().expect("dir");
    let first = text_update(7, "a");
    let fake = Hostile::new(move |cursor, n| {
        if n == 0 {
            // An honest first page: seq 1, cursor 1.
            assert_eq!(cursor, 0);
            return Ok(Page {
                changes: vec![change(1, first.clone())],
                cursor: 1,
                has_more: false,
                compact: None,
            });
        }
        // Then: the same change again, the cursor back at 0.
        Ok(Page {
            changes: vec![change(1, first.clone())],
            cursor: 0,
            has_more: false,
            compact: None,
        })
    });
    let client = open(&dir.path().join("b.sqlite"), &fake);
    let c = client.collection("c").expect("collection");
    let report = c.sync_once().expect("the honest page syncs");
    assert_eq!(report.cursor, 1);
    let outcome = c.sync_once();
    let calls = fake.stream_calls.load(Ordering::SeqCst);
    let stored = c.status().expect("status").last_synced_seq;
    assert_eq!(
        stored, 1,
        "the stored cursor went back from 1 to {stored} on a page below the request \
         ({calls} stream calls; sync_once answered {outcome:?})"
    );
}

/// An update that decodes nests `Any` arrays 100,000 deep: yrs decodes `Any` recursively,
/// so decoding it overflows the stack, which aborts the process (no `catch_unwind` can stop
/// it). The server refuses such bytes before yrs sees them (`precheck`, `MAX_ANY_DEPTH`); the
/// client decodes every change a server sends with yrs directly (`crdt::decode` in
/// `Syncer::store_changes`). The check runs in a child process, so the abort fails this test
/// rather than taking the test runner down.
#[test]
fn deeply_nested_change_bytes_from_the_server_do_not_crash_the_client() {
    const CHILD: &str = "REVIEW_HOSTILE_DEEP_CHILD";
    let name = "deeply_nested_change_bytes_from_the_server_do_not_crash_the_client";
    if std::env::var_os(CHILD).is_some() {
        let dir = tempfile::tempdir().expect("dir");
        // One client section, one struct (client 1, clock 0, info 8 = Any content, parent
        // the root "t"), one Any value: 100,000 arrays of one element each, then undefined;
        // an empty delete set.
        let mut deep = vec![1, 1, 1, 0, 8, 1, 1, b't', 1];
        deep.extend(std::iter::repeat_n([117u8, 1], 100_000).flatten());
        deep.extend([127, 0]);
        let fake = Hostile::new(move |cursor, _| {
            Ok(Page {
                changes: if cursor == 0 {
                    vec![change(1, deep.clone())]
                } else {
                    Vec::new()
                },
                cursor: 1,
                has_more: false,
                compact: None,
            })
        });
        let client = open(&dir.path().join("c.sqlite"), &fake);
        let c = client.collection("c").expect("collection");
        // Either outcome is fine (skipped as undecodable, or an error): not a crash.
        let outcome = c.sync_once();
        println!("child outcome: {outcome:?}");
        return;
    }
    let exe = std::env::current_exe().expect("test executable");
    let out = std::process::Command::new(exe)
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .output()
        .expect("child runs");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr.lines().rev().take(5).collect::<Vec<_>>().join(" | ");
    assert!(
        out.status.success(),
        "the client process died on a change the server sent: {:?}; stderr: {tail}",
        out.status
    );
}

/// Client ids past 53 bits: yrs's `ClientID::new` has a `debug_assert!` for them (in release
/// it masks the id, aliasing another client). The server refuses them in its precheck
/// (`actors/tests/hostile_yjs.rs`, bug "client"); the client hands server bytes to yrs as
/// they come, so in a debug build a change from client 2^53 + 5 panics the thread that
/// called `sync_once` (the app's own).
#[test]
fn a_change_from_a_client_id_past_53_bits_does_not_panic_sync_once() {
    let dir = tempfile::tempdir().expect("dir");
    let mut bytes = vec![1, 1];
    let mut client_id: u64 = (1 << 53) + 5;
    while client_id >= 0x80 {
        bytes.push((client_id as u8) | 0x80);
        client_id >>= 7;
    }
    bytes.push(client_id as u8);
    // clock 0; info 4 (string content), parent the root "t"; "a"; empty delete set
    bytes.extend([0, 4, 1, 1, b't', 1, b'a', 0]);
    let fake = Hostile::new(move |cursor, _| {
        Ok(Page {
            changes: if cursor == 0 {
                vec![change(1, bytes.clone())]
            } else {
                Vec::new()
            },
            cursor: 1,
            has_more: false,
            compact: None,
        })
    });
    let client = open(&dir.path().join("d.sqlite"), &fake);
    let c = client.collection("c").expect("collection");
    let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| c.sync_once()));
    assert!(
        run.is_ok(),
        "sync_once panicked on a change from a client id past 53 bits"
    );
}
