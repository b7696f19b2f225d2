//! Issue 7, items 1–5, against the real `replicate-server` binary (an attack that crashes the
//! process must not take the test runner with it): hostile-but-valid Yjs updates built by
//! [`replicate_actors::craft`], client snapshots that would rewrite history, op ids reused
//! across documents, and reads of collections that do not exist.
//!
//! Every test checks, besides the status it expects, that the process is still running and
//! serving (`alive`) and that the reads an attack used to break (`/state`, recovery, compact)
//! answer 200 afterwards.
//!
//! The tests take one lock and so run one at a time: the timing checks of item 2 (an answer
//! within seconds, `/healthz` prompt while the attack is checked) must not share the machine's
//! two cores with the other tests' servers.
//!
//! `REPLICATE_HOSTILE_BIN=path/to/replicate-server` runs them against another build: against
//! the build before the defences (commit 1a6d389's parent) every test of items 1–5 fails.
//! The two tests at the end reproduce problems found while writing these (per-document recovery
//! starving write checks; deletes of ids a document lacks piling up): both fixed since.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use common::{b64, unb64, Client, Resp};
use replicate_actors::craft::{self, Item, ItemContent, ParentRef};
use serde_json::{json, Value};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Transact, Update};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The server process, killed on drop (also when an assertion fails).
struct Server {
    child: Child,
    client: Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    /// Starts the binary on port 0 over `data`.
    fn start(data: &Path) -> Server {
        // REPLICATE_HOSTILE_BIN runs these tests against another build (e.g. one from before
        // the defences, to see each test fail).
        let bin = std::env::var_os("REPLICATE_HOSTILE_BIN")
            .unwrap_or_else(|| env!("CARGO_BIN_EXE_replicate-server").into());
        let mut child = Command::new(bin)
            .args(["--bind", "127.0.0.1:0", "--data"])
            .arg(data)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("replicate-server starts");
        let stderr = child.stderr.take().expect("stderr piped");
        let (tx, rx) = mpsc::channel();
        // Keep draining stderr for the process's whole life (a full pipe would block it);
        // echo what looks like a crash so a failing test shows why.
        std::thread::spawn(move || {
            let mut tx = Some(tx);
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if line.contains("overflow") || line.contains("panic") || line.contains("abort") {
                    eprintln!("replicate-server: {line}");
                }
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\u{1b}')
                        .collect();
                    if let Some(tx) = tx.take() {
                        let _ = tx.send(addr.parse::<SocketAddr>().expect("address parses"));
                    }
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(60))
            .expect("server printed its address");
        Server {
            child,
            client: Client { addr },
        }
    }

    /// The process is running and `/healthz` answers 200.
    fn assert_alive(&mut self, after: &str) {
        let exited = self.child.try_wait().expect("try_wait");
        assert!(
            exited.is_none(),
            "replicate-server exited after {after}: {exited:?}"
        );
        let r = self
            .client
            .try_request("GET", "/healthz", &[], b"")
            .unwrap_or_else(|e| panic!("/healthz after {after}: {e}"));
        assert_eq!(r.status, 200, "/healthz after {after}: {}", r.text());
    }
}

/// A fresh data directory and a server on it.
fn fresh() -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    (Server::start(&dir.path().join("data")), dir)
}

/// POSTs one write; answers the raw response.
fn write(c: &Client, coll: &str, op: &str, doc: &str, bytes: &[u8], op_id: Option<&str>) -> Resp {
    let mut body = json!({ "documentId": doc, "crdtBytes": b64(bytes) });
    if let Some(id) = op_id {
        body["opId"] = json!(id);
    }
    c.post_json(&format!("/v1/{coll}/{op}"), &body)
}

/// Expects a write to be answered 200; answers its JSON.
fn accepted(r: &Resp, what: &str) -> Value {
    assert_eq!(r.status, 200, "{what}: {}", r.text());
    let v = r.json();
    assert_eq!(v["success"], true, "{what}: {v}");
    v
}

/// Expects 422 `yjs_limit`.
fn refused_yjs(r: &Resp, what: &str) {
    assert_eq!(r.status, 422, "{what}: {}", r.text());
    assert_eq!(r.error_code(), "yjs_limit", "{what}: {}", r.text());
}

/// `/state` of the collection: 200, the bytes decode and apply with yrs; answers the text of
/// root "t" and the cursor.
fn state_text(c: &Client, coll: &str) -> (String, u64) {
    let v = c.ok_get(&format!("/v1/{coll}/state"));
    let bytes = unb64(v["crdtBytes"].as_str().expect("crdtBytes"));
    (text_of(&bytes), v["cursor"].as_u64().expect("cursor"))
}

/// The text of root "t" in one v1 update.
fn text_of(update: &[u8]) -> String {
    let doc = Doc::new();
    let text = doc.get_or_insert_text("t");
    let u = Update::decode_v1(update).expect("server bytes decode as a v1 update");
    doc.transact_mut().apply_update(u).expect("applies");
    let txn = doc.transact();
    text.get_string(&txn)
}

/// Recovery of `doc` (or the whole collection) from an empty state vector: 200; answers the
/// diff's text of root "t".
fn recovery_text(c: &Client, coll: &str, doc: Option<&str>) -> String {
    let mut body = json!({ "stateVector": b64(&[0]) });
    if let Some(d) = doc {
        body["documentId"] = json!(d);
    }
    let v = c.ok(&format!("/v1/{coll}/recovery"), &body);
    text_of(&unb64(v["diff"].as_str().expect("diff")))
}

/// Compacts `doc` (no peers: every delta goes); answers the JSON.
fn compact(c: &Client, coll: &str, doc: &str) -> Value {
    c.ok(
        &format!("/v1/{coll}/compact"),
        &json!({ "documentId": doc }),
    )
}

/// `/state`, recovery (document and collection) and compaction of `doc` all answer 200, and
/// the process lives through them.
fn reads_work(s: &mut Server, coll: &str, doc: &str, after: &str) {
    let c = s.client;
    state_text(&c, coll);
    recovery_text(&c, coll, Some(doc));
    recovery_text(&c, coll, None);
    compact(&c, coll, doc);
    state_text(&c, coll);
    recovery_text(&c, coll, Some(doc));
    s.assert_alive(after);
}

fn chain_part(client: u64, from: u32, to: u32) -> Vec<u8> {
    craft::nested_maps_part(client, from, to)
}

fn quadratic_part(from: u32, to: u32) -> Vec<u8> {
    craft::quadratic_part(from, to)
}

// ---- item 1: nested types without bound ----

#[test]
fn a_deep_chain_deleting_its_root_in_one_write_is_refused() {
    let _serial = serial();
    let (mut s, _dir) = fresh();
    let c = s.client;
    let chain = craft::nested_maps(7, 10_000, true);
    refused_yjs(
        &write(&c, "deep", "insert", "doc", &chain, None),
        "10,000-deep chain with its root deleted",
    );
    s.assert_alive("a 10,000-deep chain with its root deleted");
    // Nothing was stored.
    let (changes, head) = c.stream_all("deep", 0);
    assert!(changes.is_empty() && head == 0, "{changes:?} {head}");
    reads_work(&mut s, "deep", "doc", "reads after the refused chain");
}

#[test]
fn a_chain_within_the_depth_bound_can_have_its_root_deleted() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut s = Server::start(&data);
    let c = s.client;
    accepted(
        &write(
            &c,
            "shallow",
            "insert",
            "doc",
            &craft::nested_maps(7, 60, false),
            None,
        ),
        "60-deep chain",
    );
    accepted(
        &write(
            &c,
            "shallow",
            "update",
            "doc",
            &craft::delete(7, 0, 1),
            None,
        ),
        "deleting the 60-deep chain's root",
    );
    s.assert_alive("deleting a 60-deep chain's root");
    reads_work(
        &mut s,
        "shallow",
        "doc",
        "reads of the deleted 60-deep chain",
    );
    let (changes, head) = c.stream_all("shallow", 0);
    assert_eq!(head, 2, "{changes:?}");
    // Also on a fresh process (the document is rebuilt from the store).
    drop(s);
    let mut s = Server::start(&data);
    reads_work(&mut s, "shallow", "doc", "reads after a restart");
}

#[test]
fn nesting_is_bounded_across_writes() {
    let _serial = serial();
    let (mut s, _dir) = fresh();
    let c = s.client;
    refused_yjs(
        &write(
            &c,
            "across",
            "insert",
            "doc",
            &craft::nested_maps(7, 100, false),
            None,
        ),
        "100-deep chain in one write",
    );
    accepted(
        &write(
            &c,
            "across",
            "insert",
            "doc",
            &craft::nested_maps(7, 60, false),
            None,
        ),
        "60-deep chain",
    );
    // 60 + 10: each write alone is shallow, together they pass 64.
    refused_yjs(
        &write(&c, "across", "update", "doc", &chain_part(7, 60, 70), None),
        "extending a 60-deep chain by 10",
    );
    // Extending within the bound still works.
    accepted(
        &write(&c, "across", "update", "doc", &chain_part(7, 60, 62), None),
        "extending a 60-deep chain by 2",
    );
    s.assert_alive("chains across writes");
    reads_work(
        &mut s,
        "across",
        "doc",
        "reads of a chain built over writes",
    );
}

#[test]
fn a_deep_chain_then_its_root_delete_in_a_second_write_leaves_the_store_readable() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut s = Server::start(&data);
    let c = s.client;
    refused_yjs(
        &write(
            &c,
            "split",
            "insert",
            "doc",
            &craft::nested_maps(7, 10_000, false),
            None,
        ),
        "10,000-deep chain without the delete",
    );
    s.assert_alive("the 10,000-deep chain");
    // The delete of the (refused) chain's root: whatever it is answered, no 5xx and no crash.
    let r = write(&c, "split", "update", "doc", &craft::delete(7, 0, 1), None);
    assert!(
        r.status == 200 || r.status == 422,
        "root delete: {} {}",
        r.status,
        r.text()
    );
    s.assert_alive("the root delete");
    reads_work(&mut s, "split", "doc", "reads after the split chain");
    // And after a restart on the same store.
    drop(s);
    let mut s = Server::start(&data);
    reads_work(&mut s, "split", "doc", "reads after a restart");
}

#[test]
fn a_chain_sent_back_to_front_cannot_pass_the_depth_bound() {
    let _serial = serial();
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut s = Server::start(&data);
    let c = s.client;
    // The tail first: its items wait for parents the document does not have yet.
    let r = write(&c, "rev", "insert", "doc", &chain_part(7, 60, 900), None);
    assert!(
        r.status == 200 || (r.status == 422 && r.error_code() == "yjs_limit"),
        "the chain's tail: {} {}",
        r.status,
        r.text()
    );
    // The head is 60 deep alone, but with the waiting tail it would make a chain 900 deep.
    refused_yjs(
        &write(&c, "rev", "update", "doc", &chain_part(7, 0, 60), None),
        "the head of a chain whose tail waits",
    );
    // Its root deleted too (what used to overflow the stack), in one more write.
    let r = write(&c, "rev", "update", "doc", &craft::delete(7, 0, 1), None);
    assert!(
        r.status == 200 || r.status == 422,
        "root delete: {} {}",
        r.status,
        r.text()
    );
    s.assert_alive("a chain sent back to front");
    reads_work(
        &mut s,
        "rev",
        "doc",
        "reads after a chain sent back to front",
    );
    drop(s);
    let mut s = Server::start(&data);
    reads_work(&mut s, "rev", "doc", "reads after a restart");
}

// ---- item 2: super-linear CPU ----

#[test]
fn the_quadratic_update_is_refused_quickly_and_the_server_stays_responsive() {
    let _serial = serial();
    let (mut s, _dir) = fresh();
    let c = s.client;
    const N: u32 = 8_000;
    accepted(
        &write(&c, "quad", "insert", "doc", &craft::quadratic_base(N), None),
        "the base text",
    );
    let attack = craft::quadratic(N);
    // More attacks at once than the server has HTTP workers (2): an attack checked on an HTTP
    // worker would freeze it.
    let attackers: Vec<_> = (0..3)
        .map(|_| {
            let attack = attack.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                let r = write(&c, "quad", "update", "doc", &attack, None);
                (r, t.elapsed())
            })
        })
        .collect();
    // While they are checked, /healthz answers promptly, every time.
    let mut health = Vec::new();
    while attackers.iter().any(|a| !a.is_finished()) {
        let t = Instant::now();
        let r = c.get("/healthz");
        health.push((r.status, t.elapsed()));
        std::thread::sleep(Duration::from_millis(50));
    }
    for a in attackers {
        let (r, took) = a.join().expect("attacker thread");
        refused_yjs(&r, "the quadratic update");
        assert!(
            took < Duration::from_secs(5),
            "the quadratic update took {took:?} to be refused"
        );
    }
    assert!(!health.is_empty());
    let slowest = health.iter().map(|(_, t)| *t).max().expect("one sample");
    assert!(
        health.iter().all(|(st, _)| *st == 200),
        "/healthz during the attack: {health:?}"
    );
    assert!(
        slowest < Duration::from_secs(1),
        "/healthz took {slowest:?} during the attack ({} samples)",
        health.len()
    );
    // Nothing stored; reading the document stays fast.
    let t = Instant::now();
    let (text, cursor) = state_text(&c, "quad");
    assert!(
        t.elapsed() < Duration::from_secs(1),
        "/state took {:?}",
        t.elapsed()
    );
    assert_eq!(cursor, 1);
    assert_eq!(text, "a".repeat(N as usize + 1));
    s.assert_alive("the quadratic updates");
}

#[test]
fn the_quadratic_update_spread_over_writes_is_stopped_and_reads_stay_bounded() {
    let _serial = serial();
    let (mut s, _dir) = fresh();
    let c = s.client;
    // The attack of `craft::quadratic`, 100 items per write: each write alone is cheap, but
    // each costs more than the last, and the document as a whole grows quadratically.
    const N: u32 = 4_000;
    const CHUNK: u32 = 100;
    accepted(
        &write(
            &c,
            "spread",
            "insert",
            "doc",
            &craft::quadratic_base(N),
            None,
        ),
        "the base text",
    );
    let mut stopped_at = None;
    for k in 0..N / CHUNK {
        let t = Instant::now();
        let r = write(
            &c,
            "spread",
            "update",
            "doc",
            &quadratic_part(k * CHUNK, (k + 1) * CHUNK),
            None,
        );
        assert!(
            t.elapsed() < Duration::from_secs(5),
            "write {k} took {:?}",
            t.elapsed()
        );
        if r.status != 200 {
            refused_yjs(&r, "a part of the spread quadratic attack");
            stopped_at = Some(k);
            break;
        }
    }
    assert!(
        stopped_at.is_some(),
        "all {N} items of the quadratic attack were accepted"
    );
    // What was accepted stays cheap enough to read (the document's rebuild is budgeted).
    for _ in 0..2 {
        let t = Instant::now();
        state_text(&c, "spread");
        recovery_text(&c, "spread", Some("doc"));
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "state + recovery took {:?}",
            t.elapsed()
        );
    }
    reads_work(&mut s, "spread", "doc", "reads after the spread attack");
}

// ---- item 3: client snapshots ----

#[test]
fn a_client_snapshot_cannot_change_remove_or_add_content() {
    let _serial = serial();
    let (mut s, _dir) = fresh();
    let c = s.client;
    accepted(
        &write(
            &c,
            "snap",
            "insert",
            "doc",
            &craft::text(1, 0, "hello"),
            None,
        ),
        "hello",
    );
    accepted(
        &write(
            &c,
            "snap",
            "update",
            "doc",
            &craft::text(1, 5, "world"),
            None,
        ),
        "world",
    );
    let (before, cursor) = state_text(&c, "snap");
    assert!(
        before.contains("hello") && before.contains("world"),
        "{before}"
    );
    let hostile: [(&str, Vec<u8>); 4] = [
        ("other text at the same ids", craft::text(1, 0, "HACKS")),
        ("only a delete set", craft::delete(1, 0, 10)),
        ("extra content", craft::text(2, 0, "extra")),
        (
            "all three",
            craft::update(
                &[(
                    3,
                    0,
                    vec![Item {
                        origin: None,
                        right_origin: None,
                        parent: ParentRef::Root("t".into()),
                        parent_sub: None,
                        content: ItemContent::Text("more".into()),
                    }],
                )],
                &[(1, 0, 10)],
            ),
        ),
    ];
    for (what, snapshot) in &hostile {
        let r = c.post_json(
            "/v1/snap/compact",
            &json!({ "documentId": "doc", "snapshotBytes": b64(snapshot) }),
        );
        assert!(
            r.status == 200 || (400..500).contains(&r.status),
            "compact with a client snapshot of {what}: {} {}",
            r.status,
            r.text()
        );
        let (after, after_cursor) = state_text(&c, "snap");
        assert_eq!(after, before, "/state after a client snapshot of {what}");
        assert_eq!(after_cursor, cursor);
        assert_eq!(
            recovery_text(&c, "snap", Some("doc")),
            before,
            "recovery after a client snapshot of {what}"
        );
        // A new peer reading from 0 gets the same (from the stored snapshot, now).
        let (changes, _) = c.stream_all("snap", 0);
        let peer = common::Peer::new(99);
        for ch in &changes {
            peer.apply(&unb64(ch["crdtBytes"].as_str().expect("crdtBytes")));
        }
        assert_eq!(peer.text("t"), before, "a new peer after {what}");
    }
    // With a state vector claiming more than the server has, too.
    let r = c.post_json(
        "/v1/snap/compact",
        &json!({
            "documentId": "doc",
            "snapshotBytes": b64(&craft::text(1, 0, "HACKS")),
            "stateVector": b64(&[1, 1, 50]),
        }),
    );
    assert!(
        r.status == 200 || (400..500).contains(&r.status),
        "{}",
        r.text()
    );
    assert_eq!(state_text(&c, "snap").0, before);
    s.assert_alive("client snapshots");
}

// ---- item 4: writes that break the document together ----

#[test]
fn an_item_whose_parent_is_later_a_string_is_refused() {
    let _serial = serial();
    let (mut s, _dir) = fresh();
    let c = s.client;
    let (child, parent) = craft::invalid_parent_pair();
    accepted(
        &write(&c, "pair", "insert", "doc", &child, None),
        "the child of 9#0",
    );
    refused_yjs(
        &write(&c, "pair", "update", "doc", &parent, None),
        "a string that is 9#0",
    );
    s.assert_alive("the invalid-parent pair");
    reads_work(&mut s, "pair", "doc", "reads after the invalid-parent pair");
    // The document still takes honest writes, and reads show them.
    accepted(
        &write(
            &c,
            "pair",
            "update",
            "doc",
            &craft::text(5, 0, "fine"),
            None,
        ),
        "an honest write after the pair",
    );
    assert!(state_text(&c, "pair").0.contains("fine"));
    reads_work(&mut s, "pair", "doc", "reads after an honest write");

    // The other order: the string first, then an item claiming it as its parent.
    accepted(
        &write(&c, "pair2", "insert", "doc", &parent, None),
        "a string at 9#0",
    );
    refused_yjs(
        &write(&c, "pair2", "update", "doc", &child, None),
        "a child of the string 9#0",
    );
    reads_work(
        &mut s,
        "pair2",
        "doc",
        "reads after the pair in the other order",
    );
    assert_eq!(state_text(&c, "pair2").0, "not a type");
}

// ---- item 5: op ids ----

#[test]
fn op_ids_are_scoped_to_their_document_and_their_bytes() {
    let _serial = serial();
    let (mut s, _dir) = fresh();
    let c = s.client;
    let a_bytes = craft::text(1, 0, "from a");
    let b_bytes = craft::text(2, 0, "from b");
    let a = accepted(
        &write(&c, "ops", "insert", "doc-a", &a_bytes, Some("op-1")),
        "A's write",
    );
    let b = accepted(
        &write(&c, "ops", "insert", "doc-b", &b_bytes, Some("op-1")),
        "B's write with A's op id",
    );
    assert_eq!(a["duplicate"], false, "{a}");
    assert_eq!(
        b["duplicate"], false,
        "B's write taken for a retry of A's: {b}"
    );
    let (seq_a, seq_b) = (a["seq"].as_u64().unwrap(), b["seq"].as_u64().unwrap());
    assert_ne!(seq_a, seq_b);
    // Both are stored.
    let (text, cursor) = state_text(&c, "ops");
    assert!(text.contains("from a") && text.contains("from b"), "{text}");
    assert_eq!(cursor, 2);
    assert_eq!(recovery_text(&c, "ops", Some("doc-b")), "from b");
    let (changes, _) = c.stream_all("ops", 0);
    let docs: Vec<&str> = changes
        .iter()
        .map(|ch| ch["documentId"].as_str().unwrap())
        .collect();
    assert_eq!(docs, ["doc-a", "doc-b"]);

    // A retry (same document, same bytes) answers the first seq and stores nothing.
    let retry = accepted(
        &write(&c, "ops", "insert", "doc-a", &a_bytes, Some("op-1")),
        "A's retry",
    );
    assert_eq!(retry["duplicate"], true, "{retry}");
    assert_eq!(retry["seq"].as_u64(), Some(seq_a));
    let retry_b = accepted(
        &write(&c, "ops", "insert", "doc-b", &b_bytes, Some("op-1")),
        "B's retry",
    );
    assert_eq!(retry_b["duplicate"], true, "{retry_b}");
    assert_eq!(retry_b["seq"].as_u64(), Some(seq_b));
    // The same op id on the same document with other bytes: 409.
    let r = write(
        &c,
        "ops",
        "update",
        "doc-a",
        &craft::text(1, 6, "!"),
        Some("op-1"),
    );
    assert_eq!(r.status, 409, "{}", r.text());
    assert_eq!(r.error_code(), "conflict");
    // Nothing more was stored.
    let (text_after, cursor_after) = state_text(&c, "ops");
    assert_eq!((text_after, cursor_after), (text, 2));
    s.assert_alive("op id reuse");
}

// ---- unknown collections ----

#[test]
fn reading_collections_that_do_not_exist_starts_no_actor() {
    let _serial = serial();
    let (mut s, _dir) = fresh();
    let c = s.client;
    // One real collection, so the count is not trivially 0.
    accepted(
        &write(&c, "real", "insert", "doc", &craft::text(1, 0, "x"), None),
        "a real write",
    );
    let live = |c: &Client| -> (u64, usize) {
        let r = c.get("/stats");
        assert_eq!(r.status, 200, "{}", r.text());
        let v = r.json();
        (
            v["liveCollections"].as_u64().expect("liveCollections"),
            r.body.len(),
        )
    };
    let (before, size_before) = live(&c);
    const NAMES: usize = 1_000;
    let threads: Vec<_> = (0..4)
        .map(|t| {
            std::thread::spawn(move || {
                for i in (t..NAMES).step_by(4) {
                    let name =
                        format!("nothing-{i:04}-{:08x}", (i as u64).wrapping_mul(2654435761));
                    for route in ["stream", "state"] {
                        let r = c.get(&format!("/v1/{name}/{route}"));
                        assert_eq!(r.status, 200, "GET /v1/{name}/{route}: {}", r.text());
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("reader thread");
    }
    let (after, size_after) = live(&c);
    assert!(
        after <= before + 1,
        "{} GETs of unknown collections: liveCollections {before} -> {after}",
        2 * NAMES
    );
    assert!(
        size_after < size_before + 4096,
        "/stats grew from {size_before} to {size_after} bytes"
    );
    s.assert_alive("reads of unknown collections");
}

// ---- known open problem (ignored: fails today) ----

/// FAILS TODAY (reported, not fixed here). A document is accepted write by write until it
/// costs its whole rebuild budget (`doc_budget`, 2 s of CPU); after that every recovery of it
/// rebuilds it again (nothing is cached) on the same two-thread worker pool that checks every
/// write of every collection. Two clients looping `recovery` of that one document (a ~60-byte
/// request each) keep both workers busy, and every write anywhere waits behind them: on the
/// release binary an unrelated collection's writes went from ~1 ms to 13 s (p50) with four
/// such loops.
///
/// Run: `cargo test -p replicate --test http_hostile -- --ignored --nocapture`
/// (`REPLICATE_HOSTILE_BIN=target/release/replicate-server` for the release build).
#[test]
fn recovery_of_an_expensive_document_does_not_starve_other_writes() {
    let _serial = serial();
    let (mut s, _dir) = fresh();
    let c = s.client;
    const BASE: u32 = 40_000;
    accepted(
        &write(
            &c,
            "heavy",
            "insert",
            "doc",
            &craft::quadratic_base(BASE),
            None,
        ),
        "the base text",
    );
    // Accepted write by write until the document's rebuild passes its budget: each write
    // within its own CPU budget (smaller writes when one is refused for its own cost).
    let (mut from, mut chunk) = (0, 200);
    while chunk > 0 && from + chunk <= BASE {
        let r = write(
            &c,
            "heavy",
            "update",
            "doc",
            &quadratic_part(from, from + chunk),
            None,
        );
        if r.status == 200 {
            from += chunk;
            continue;
        }
        refused_yjs(&r, "a write of the spread attack");
        if r.text().contains("to rebuild") {
            break; // the document is at its budget
        }
        chunk /= 2;
    }
    eprintln!("{from} quadratic items accepted");
    let recover = move || {
        let t = Instant::now();
        let r = c.post_json(
            "/v1/heavy/recovery",
            &json!({ "stateVector": b64(&[0]), "documentId": "doc" }),
        );
        assert_eq!(r.status, 200, "{}", r.text());
        t.elapsed()
    };
    eprintln!("one recovery of the heavy document: {:?}", recover());
    // Two clients loop recovery of it (as many as the server has CRDT workers).
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let loops: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    recover();
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut slowest = Duration::ZERO;
    for i in 0..5u32 {
        let t = Instant::now();
        accepted(
            &write(
                &c,
                "bystander",
                "insert",
                "doc",
                &craft::text(42, 2 * i, "ab"),
                None,
            ),
            "a bystander's write",
        );
        slowest = slowest.max(t.elapsed());
    }
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    for l in loops {
        l.join().expect("recovery loop");
    }
    s.assert_alive("recovery loops");
    assert!(
        slowest < Duration::from_secs(1),
        "a write to another collection took {slowest:?} while two clients looped recovery \
         of one expensive document"
    );
}

/// FAILS TODAY (reported, not fixed here). Items that wait for a missing parent or origin are
/// bounded per document (`max_pending`), but delete ranges that name ids the document does
/// not hold are not: each is kept, waiting, and carried by every later merge. Anyone who may
/// write a document can attach hundreds of thousands of them (a few 100,000-range writes,
/// each within its own CPU budget); from then on every write to that document, every
/// recovery and every compaction pays for them, and every peer that recovers it downloads
/// them (megabytes for a document holding five characters).
///
/// Run: `cargo test -p replicate --test http_hostile -- --ignored --nocapture`
#[test]
fn delete_ranges_for_missing_ids_do_not_make_a_document_expensive() {
    let _serial = serial();
    let (mut s, _dir) = fresh();
    let c = s.client;
    accepted(
        &write(
            &c,
            "dangling",
            "insert",
            "doc",
            &craft::text(1, 0, "hello"),
            None,
        ),
        "hello",
    );
    // Writes of one-id ranges of clients the document has never seen, each within its own
    // CPU budget (smaller ones after a write is refused for its own cost).
    let (mut ranges, mut per_write, mut next_client) = (0u64, 100_000u64, 10_000u64);
    for _ in 0..100 {
        if per_write < 1_000 || ranges >= 2_000_000 {
            break;
        }
        let deletes: Vec<(u64, u32, u32)> =
            (0..per_write).map(|i| (next_client + i, 5, 1)).collect();
        next_client += per_write;
        let r = write(
            &c,
            "dangling",
            "update",
            "doc",
            &craft::update(&[], &deletes),
            None,
        );
        if r.status == 200 {
            ranges += per_write;
        } else {
            refused_yjs(&r, "delete ranges for missing ids");
            per_write /= 2;
        }
    }
    eprintln!("{ranges} delete ranges for missing ids accepted");
    // An honest client keeps typing into the document, before and after a compaction
    // (which does not remove them: they are part of the document's state now).
    let mut honest = Vec::new();
    let mut clock = 0;
    let mut type_some = |honest: &mut Vec<(u16, Duration, String)>| {
        for _ in 0..3 {
            let t = Instant::now();
            let r = write(
                &c,
                "dangling",
                "update",
                "doc",
                &craft::text(2, clock, "x"),
                None,
            );
            if r.status == 200 {
                clock += 1;
            }
            honest.push((r.status, t.elapsed(), r.text()));
        }
    };
    type_some(&mut honest);
    let compacted = c.post_json("/v1/dangling/compact", &json!({ "documentId": "doc" }));
    eprintln!("compaction: {} {}", compacted.status, compacted.text());
    type_some(&mut honest);
    eprintln!("honest one-character writes to it: {honest:?}");
    let t = Instant::now();
    let r = c.post_json(
        "/v1/dangling/recovery",
        &json!({ "stateVector": b64(&[0]), "documentId": "doc" }),
    );
    let recovery = t.elapsed();
    assert_eq!(r.status, 200, "{}", r.text());
    let diff = unb64(r.json()["diff"].as_str().expect("diff"));
    assert!(text_of(&diff).starts_with("hello") || text_of(&diff).ends_with("hello"));
    eprintln!(
        "recovery of a document of a few characters: {recovery:?}, {} bytes",
        diff.len()
    );
    s.assert_alive("dangling delete ranges");
    assert!(
        honest
            .iter()
            .all(|(status, took, _)| *status == 200 && *took < Duration::from_millis(250)),
        "honest one-character writes to the document: {honest:?}"
    );
    assert!(
        diff.len() < 1024 * 1024 && recovery < Duration::from_secs(1),
        "recovery of a document of a few characters: {} bytes in {recovery:?}",
        diff.len()
    );
}
