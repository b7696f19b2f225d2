//! Crashes and restarts (found sound in review, kept as a regression test) of the real `replicate-server` binary on the default sled store
//! while write batches, op-id single writes, websocket edits, compactions (deleting, with
//! `peerTimeout: 0`, or keeping what a peer acked) and a long-poll reader are all in flight.
//!
//! Each case runs a few cycles on one data directory; each cycle starts the binary, lets the
//! traffic run for a random time, then stops it with SIGKILL or SIGTERM (random), and restarts
//! it. After each restart, and at the end, it checks:
//! - every answered write (batch or single) is there: its delta at its seq with its bytes, or
//!   its content inside its document (compacted); no two answered writes share a seq, across
//!   every restart; the head is at least every answered seq;
//! - every answered op id retried answers `duplicate: true` with its first seq; a write whose
//!   answer was lost (in flight at the crash, or refused with 503 on shutdown) retried with the
//!   same op ids answers a duplicate of what is stored or a fresh seq above the head;
//! - a new write after a restart gets head + 1;
//! - the long-poll reader, keeping its cursor across the restart, ends with exactly the
//!   content of a fresh read from cursor 0 (it skipped nothing), and no delta it saw changed
//!   its bytes (no seq reused);
//! - a fresh read from 0 holds the same content as `recovery` of each document (a compaction
//!   is wholly applied or not at all);
//! - the websocket writer, reconnecting after the restart, gets every edit it made into the
//!   store (its unanswered edits are resent by its sync step 2);
//! - SIGTERM exits 0, and every request it answered with 200 is durable.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write as _;
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{b64, raw_ws, unb64, Client, Peer};
use proptest::prelude::*;
use serde_json::{json, Value};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact};

const C: &str = "crash";
const DOCS: [&str; 3] = ["d0", "d1", "d2"];
const WS_DOC: &str = "dws";

fn start(data: &Path) -> (Child, Client) {
    let (child, addr) = common::spawn_server(&["--data", data.to_str().expect("UTF-8 path")]);
    (child, Client { addr })
}

/// One write the test sent: its op id, document, text root, token and bytes.
#[derive(Clone, Debug)]
struct Sent {
    op: String,
    doc: String,
    root: String,
    token: String,
    bytes: Vec<u8>,
    /// `update` or `insert`.
    kind: &'static str,
}

#[derive(Default)]
struct Log {
    /// Answered writes: seq → write.
    answered: BTreeMap<u64, Sent>,
    /// Writes whose answer never came (or came as a 503 on shutdown), in send order.
    unknown: Vec<(Vec<Sent>, bool)>,
}

fn batch_body(writes: &[Sent]) -> Value {
    let writes: Vec<Value> = writes
        .iter()
        .map(|w| {
            json!({"op": w.kind, "documentId": w.doc, "crdtBytes": b64(&w.bytes), "opId": w.op})
        })
        .collect();
    json!({ "writes": writes })
}

/// What a write request came back with.
enum Outcome {
    /// seq and duplicate, per write.
    Answered(Vec<(u64, bool)>),
    /// No answer, or a clean refusal on shutdown: the outcome is unknown.
    Unknown,
}

/// Sends `writes` as one batch (or, if `single`, the one write on its route).
fn send(client: &Client, writes: &[Sent], single: bool, stopping: bool) -> Outcome {
    let (path, body) = if single {
        let w = &writes[0];
        (
            format!("/v1/{C}/{}", w.kind),
            json!({"documentId": w.doc, "crdtBytes": b64(&w.bytes), "opId": w.op}),
        )
    } else {
        (format!("/v1/{C}/batch"), batch_body(writes))
    };
    let r = match client.try_request(
        "POST",
        &path,
        &[("Content-Type", "application/json")],
        body.to_string().as_bytes(),
    ) {
        Ok(r) => r,
        Err(_) if stopping => return Outcome::Unknown,
        Err(e) => panic!("write failed before the stop: {e}"),
    };
    if r.status == 503 && stopping {
        let code = r.error_code();
        assert!(
            ["shutting_down", "unavailable"].contains(&code.as_str()),
            "a write refused on shutdown with {code}: {}",
            r.text()
        );
        return Outcome::Unknown;
    }
    assert_eq!(r.status, 200, "POST {path}: {}", r.text());
    let v = r.json();
    if single {
        Outcome::Answered(vec![(
            v["seq"].as_u64().expect("seq"),
            v["duplicate"].as_bool().expect("duplicate"),
        )])
    } else {
        Outcome::Answered(
            v["results"]
                .as_array()
                .expect("results")
                .iter()
                .map(|x| {
                    let seq = x["seq"]
                        .as_u64()
                        .unwrap_or_else(|| panic!("a batch write refused: {x}"));
                    (seq, x["duplicate"].as_bool().expect("duplicate"))
                })
                .collect(),
        )
    }
}

/// A writer over HTTP: batches (or single writes) of its own peers, one per document.
fn writer(
    client: Client,
    cycle: usize,
    w: usize,
    single: bool,
    stop: Arc<AtomicBool>,
    log: Arc<Mutex<Log>>,
    seed: u64,
) -> JoinHandle<()> {
    std::thread::spawn(move || {
        let peers: Vec<Peer> = (0..DOCS.len())
            .map(|d| Peer::new(10_000 + (cycle as u64) * 100 + (w as u64) * 10 + d as u64))
            .collect();
        let root = format!("w{cycle}_{w}");
        let mut rng = seed;
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let mut n = 0u64;
        while !stop.load(Ordering::SeqCst) {
            let size = if single { 1 } else { 1 + (next() % 8) as usize };
            let writes: Vec<Sent> = (0..size)
                .map(|_| {
                    n += 1;
                    let d = (next() % DOCS.len() as u64) as usize;
                    let token = format!("<{cycle}.{w}.{n}>");
                    Sent {
                        op: format!("op-{cycle}-{w}-{n}"),
                        doc: DOCS[d].to_string(),
                        root: root.clone(),
                        bytes: peers[d].append(&root, &token),
                        token,
                        kind: if n == 1 { "insert" } else { "update" },
                    }
                })
                .collect();
            match send(&client, &writes, single, true) {
                Outcome::Answered(results) => {
                    let mut log = log.lock().expect("lock");
                    for (w, (seq, duplicate)) in writes.into_iter().zip(results) {
                        assert!(!duplicate, "a first write answered as a duplicate");
                        if let Some(old) = log.answered.insert(seq, w.clone()) {
                            panic!("seq {seq} answered twice: {old:?} and {w:?}");
                        }
                    }
                }
                Outcome::Unknown => {
                    // Checked after the restart: retried with the same op ids.
                    log.lock().expect("lock").unknown.push((writes, single));
                    return;
                }
            }
        }
    })
}

/// A long-poll reader: per document a yrs doc, the cursor, and every delta it saw.
struct Reader {
    docs: HashMap<String, Peer>,
    cursor: u64,
    seen: BTreeMap<u64, (String, Vec<u8>)>,
}

impl Reader {
    fn new() -> Self {
        Reader {
            docs: HashMap::new(),
            cursor: 0,
            seen: BTreeMap::new(),
        }
    }

    /// Reads one page (waiting up to `wait_ms`); `None` if the server did not answer.
    fn page(&mut self, client: &Client, limit: u64, wait_ms: u64) -> Option<bool> {
        let r = client
            .try_request(
                "GET",
                &format!(
                    "/v1/{C}/stream?cursor={}&limit={limit}&waitMs={wait_ms}",
                    self.cursor
                ),
                &[],
                b"",
            )
            .ok()?;
        if r.status == 503 {
            return None;
        }
        assert_eq!(r.status, 200, "stream from {}: {}", self.cursor, r.text());
        let page = r.json();
        for ch in page["changes"].as_array().expect("changes") {
            let doc = ch["documentId"].as_str().expect("documentId").to_string();
            let bytes = unb64(ch["crdtBytes"].as_str().expect("bytes"));
            let seq = ch["seq"].as_u64().expect("seq");
            if ch["operationType"] != "snapshot" {
                if let Some((d, b)) = self.seen.get(&seq) {
                    assert!(
                        d == &doc && b == &bytes,
                        "seq {seq} read again with other content (reused?)"
                    );
                }
                self.seen.insert(seq, (doc.clone(), bytes.clone()));
            }
            self.docs
                .entry(doc)
                .or_insert_with(|| Peer::new(1))
                .apply(&bytes);
        }
        let cursor = page["cursor"].as_u64().expect("cursor");
        assert!(cursor >= self.cursor, "cursor went back");
        self.cursor = cursor;
        Some(page["hasMore"] == true)
    }

    /// Reads to the head.
    fn catch_up(&mut self, client: &Client) {
        while self.page(client, 1000, 0).expect("server answers") {}
    }
}

fn reader_thread(
    client: Client,
    mut reader: Reader,
    stop: Arc<AtomicBool>,
    limit: u64,
    ack: bool,
) -> JoinHandle<Reader> {
    std::thread::spawn(move || {
        while !stop.load(Ordering::SeqCst) {
            if reader.page(&client, limit, 200).is_none() {
                break;
            }
            if ack && reader.cursor > 0 {
                let _ = client.try_request(
                    "POST",
                    &format!("/v1/{C}/ack"),
                    &[("Content-Type", "application/json")],
                    json!({"peerId": "reader", "syncedSeq": reader.cursor})
                        .to_string()
                        .as_bytes(),
                );
            }
        }
        reader
    })
}

/// An SSE reader: per document a yrs doc and the last event id (its resume point).
#[derive(Default)]
struct SseState {
    docs: HashMap<String, Peer>,
    last_id: Option<u64>,
}

impl SseState {
    /// Reads events from the stream until it ends, fails, or `last_id` reaches `until`.
    fn follow(&mut self, client: &Client, until: Option<u64>) {
        if until.is_some_and(|u| self.last_id.unwrap_or(0) >= u) {
            return;
        }
        let Ok(Ok(mut sse)) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            Ok::<_, ()>(client.events(&format!("/v1/{C}/events"), self.last_id))
        })) else {
            assert!(until.is_none(), "events did not open after restart");
            return;
        };
        assert_eq!(sse.status, 200, "events from {:?}", self.last_id);
        loop {
            let block = match sse.next_block() {
                Ok(Some(b)) => b,
                Ok(None) | Err(_) => {
                    assert!(until.is_none(), "events ended before the head");
                    return;
                }
            };
            assert_ne!(block.event.as_deref(), Some("error"), "{block:?}");
            if let Some(data) = &block.data {
                let ch: Value = serde_json::from_str(data).expect("event JSON");
                let doc = ch["documentId"].as_str().expect("documentId").to_string();
                self.docs
                    .entry(doc)
                    .or_insert_with(|| Peer::new(3))
                    .apply(&unb64(ch["crdtBytes"].as_str().expect("bytes")));
            }
            if block.id.is_some() {
                // Recorded only after its event was applied, as EventSource does.
                self.last_id = sse.last_id;
            }
            if until.is_some_and(|u| self.last_id.unwrap_or(0) >= u) {
                return;
            }
        }
    }
}

fn sse_thread(client: Client, mut state: SseState) -> JoinHandle<SseState> {
    std::thread::spawn(move || {
        state.follow(&client, None);
        state
    })
}

fn compactor(
    client: Client,
    stop: Arc<AtomicBool>,
    zero_timeout: bool,
    seed: u64,
) -> JoinHandle<u64> {
    std::thread::spawn(move || {
        let mut done = 0;
        let mut i = seed;
        while !stop.load(Ordering::SeqCst) {
            i += 1;
            let doc = if i % 4 == 3 {
                WS_DOC
            } else {
                DOCS[(i % 3) as usize]
            };
            let mut body = json!({ "documentId": doc });
            if zero_timeout {
                body["peerTimeout"] = json!(0);
            }
            match client.try_request(
                "POST",
                &format!("/v1/{C}/compact"),
                &[("Content-Type", "application/json")],
                body.to_string().as_bytes(),
            ) {
                Ok(r) if r.status == 200 => done += 1,
                Ok(r) if r.status == 503 => break,
                Ok(r) => panic!("compact {doc}: {} {}", r.status, r.text()),
                Err(_) => break,
            }
            std::thread::sleep(Duration::from_millis(15));
        }
        done
    })
}

/// A minimal y-websocket client over a blocking socket (client frames masked).
struct Ws {
    writer: Arc<Mutex<TcpStream>>,
    peer: Arc<Mutex<Peer>>,
    reads: Option<JoinHandle<()>>,
}

fn ws_frame(writer: &Mutex<TcpStream>, opcode: u8, payload: &[u8]) -> std::io::Result<()> {
    let frame = raw_ws::client_frame(opcode, true, payload);
    writer.lock().expect("lock").write_all(&frame)
}

impl Ws {
    fn connect(addr: SocketAddr, peer: Arc<Mutex<Peer>>) -> Ws {
        let (mut reader, w) = raw_ws::upgrade(addr, &format!("/v1/{C}/ws/{WS_DOC}"));
        let writer = Arc::new(Mutex::new(w));
        let sv = peer.lock().expect("lock").doc.transact().state_vector();
        ws_frame(
            &writer,
            raw_ws::BINARY,
            &Message::Sync(SyncMessage::SyncStep1(sv)).encode_v1(),
        )
        .expect("step 1");
        let (rw, rp) = (writer.clone(), peer.clone());
        let reads = std::thread::spawn(move || {
            // Answers the server's step 1 with what it lacks; applies what it sends.
            loop {
                let Ok((opcode, payload)) = raw_ws::read_frame(&mut reader) else {
                    return;
                };
                match opcode {
                    raw_ws::BINARY => match Message::decode_v1(&payload) {
                        Ok(Message::Sync(SyncMessage::SyncStep1(sv))) => {
                            let diff = rp.lock().expect("lock").doc.transact().encode_diff_v1(&sv);
                            let m = Message::Sync(SyncMessage::SyncStep2(diff)).encode_v1();
                            if ws_frame(&rw, raw_ws::BINARY, &m).is_err() {
                                return;
                            }
                        }
                        Ok(Message::Sync(SyncMessage::SyncStep2(u) | SyncMessage::Update(u))) => {
                            rp.lock().expect("lock").apply(&u)
                        }
                        _ => {}
                    },
                    raw_ws::CLOSE => return,
                    raw_ws::PING if ws_frame(&rw, raw_ws::PONG, &payload).is_err() => return,
                    _ => {}
                }
            }
        });
        Ws {
            writer,
            peer,
            reads: Some(reads),
        }
    }

    fn edit(&self, root: &str, token: &str) -> std::io::Result<()> {
        let u = self.peer.lock().expect("lock").append(root, token);
        ws_frame(
            &self.writer,
            raw_ws::BINARY,
            &Message::Sync(SyncMessage::Update(u)).encode_v1(),
        )
    }

    fn close(mut self) {
        let _ = ws_frame(&self.writer, raw_ws::CLOSE, &1000u16.to_be_bytes());
        let _ = self
            .writer
            .lock()
            .expect("lock")
            .shutdown(std::net::Shutdown::Both);
        if let Some(r) = self.reads.take() {
            let _ = r.join();
        }
    }
}

/// Edits the websocket document until `stop`; answers the tokens it sent.
fn ws_writer(
    addr: SocketAddr,
    peer: Arc<Mutex<Peer>>,
    cycle: usize,
    stop: Arc<AtomicBool>,
) -> JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let ws = Ws::connect(addr, peer);
        let mut tokens = Vec::new();
        let mut n = 0;
        while !stop.load(Ordering::SeqCst) {
            n += 1;
            let token = format!("<ws{cycle}.{n}>");
            if ws.edit("ws", &token).is_err() {
                break;
            }
            tokens.push(token);
            std::thread::sleep(Duration::from_millis(8));
        }
        ws.close();
        tokens
    })
}

/// Every document's content from a fresh read from cursor 0.
fn fresh_read(client: &Client) -> Reader {
    let mut r = Reader::new();
    r.catch_up(client);
    r
}

/// The content of `doc` by `recovery` from an empty state vector.
fn recovered(client: &Client, doc: &str) -> Peer {
    let v = client.ok(
        &format!("/v1/{C}/recovery"),
        &json!({"stateVector": b64(&StateVector::default().encode_v1()), "documentId": doc}),
    );
    let p = Peer::new(2);
    p.apply(&unb64(v["diff"].as_str().expect("diff")));
    p
}

fn head(client: &Client) -> u64 {
    client.ok_get(&format!("/v1/{C}/state"))["cursor"]
        .as_u64()
        .expect("cursor")
}

fn text_of(r: &Reader, doc: &str, root: &str) -> String {
    r.docs.get(doc).map(|p| p.text(root)).unwrap_or_default()
}

/// Checks everything answered so far against a running server; retries unknown writes.
fn check_after_restart(
    client: &Client,
    log: &mut Log,
    reader: &mut Reader,
    roots: &BTreeSet<String>,
    ws_tokens: &[String],
    ws_peer: &Arc<Mutex<Peer>>,
    sse: &mut SseState,
) {
    let at_restart = head(client);
    let max_answered = log.answered.keys().last().copied().unwrap_or(0);
    assert!(
        at_restart >= max_answered,
        "answered seq {max_answered} is above the head {at_restart} after restart"
    );
    let fresh = fresh_read(client);
    assert_eq!(fresh.cursor, at_restart);
    // Answered writes: at their seq with their bytes, or inside their document.
    for (seq, w) in &log.answered {
        if let Some((doc, bytes)) = fresh.seen.get(seq) {
            assert!(
                doc == &w.doc && bytes == &w.bytes,
                "answered seq {seq} ({}) now holds other content",
                w.op
            );
        }
        assert!(
            text_of(&fresh, &w.doc, &w.root).contains(&w.token),
            "answered write {} (seq {seq}) lost: {} lacks {}",
            w.op,
            w.doc,
            w.token
        );
    }
    // Deltas the reader saw before the crash are unchanged where they still exist.
    for (seq, (doc, bytes)) in &reader.seen {
        if let Some((d, b)) = fresh.seen.get(seq) {
            assert!(d == doc && b == bytes, "seq {seq} was reused after restart");
        }
        assert!(
            *seq <= at_restart,
            "reader saw seq {seq} above the head {at_restart}"
        );
    }
    // Answered op ids retried: duplicates with their first seq.
    for (seq, w) in log.answered.iter().step_by(3) {
        match send(client, std::slice::from_ref(w), true, false) {
            Outcome::Answered(r) => assert_eq!(
                r[0],
                (*seq, true),
                "retry of answered {} after restart",
                w.op
            ),
            Outcome::Unknown => unreachable!(),
        }
    }
    // Unknown writes retried with the same op ids: stored once, or now.
    for (writes, single) in std::mem::take(&mut log.unknown) {
        match send(client, &writes, single, false) {
            Outcome::Answered(results) => {
                for (w, (seq, duplicate)) in writes.into_iter().zip(results) {
                    if duplicate {
                        assert!(seq <= at_restart, "{} duplicate of seq {seq}", w.op);
                        if let Some((d, b)) = fresh.seen.get(&seq) {
                            assert!(d == &w.doc && b == &w.bytes, "{} duplicate of other", w.op);
                        }
                    } else {
                        assert!(seq > at_restart, "{} stored again at old seq {seq}", w.op);
                    }
                    if let Some(old) = log.answered.insert(seq, w.clone()) {
                        assert!(
                            duplicate && old.op == w.op,
                            "seq {seq} answered for {} and {}",
                            old.op,
                            w.op
                        );
                    }
                }
            }
            Outcome::Unknown => unreachable!(),
        }
    }
    // The reader resumes at its old cursor and ends with exactly a fresh read's content.
    reader.catch_up(client);
    let fresh = fresh_read(client);
    assert_eq!(reader.cursor, fresh.cursor);
    for doc in DOCS.iter().chain([&WS_DOC]) {
        let rec = recovered(client, doc);
        for root in roots.iter().map(String::as_str).chain(["ws"]) {
            let f = text_of(&fresh, doc, root);
            assert_eq!(
                text_of(reader, doc, root),
                f,
                "the reader kept its cursor across the restart and differs in {doc}/{root}"
            );
            assert_eq!(
                rec.text(root),
                f,
                "recovery and stream differ in {doc}/{root}"
            );
        }
    }
    // The SSE reader resumes by Last-Event-ID and ends with a fresh read's content.
    sse.follow(client, Some(fresh.cursor));
    for doc in DOCS.iter().chain([&WS_DOC]) {
        for root in roots.iter().map(String::as_str).chain(["ws"]) {
            let got = sse.docs.get(*doc).map(|p| p.text(root)).unwrap_or_default();
            assert_eq!(
                got,
                text_of(&fresh, doc, root),
                "the SSE reader resumed across the restart and differs in {doc}/{root}"
            );
        }
    }
    // The websocket writer reconnects: every edit it made reaches the store.
    let ws = Ws::connect(client.addr, ws_peer.clone());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let text = recovered(client, WS_DOC).text("ws");
        let missing: Vec<_> = ws_tokens.iter().filter(|t| !text.contains(*t)).collect();
        if missing.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "websocket edits missing after reconnect: {missing:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    ws.close();
    // A new write goes at head + 1.
    let h = head(client);
    let p = Peer::new(900_000 + h);
    let seq = client.write(C, "insert", "after", &p.append("t", "x"));
    assert_eq!(seq, h + 1, "a write after restart");
}

#[derive(Debug, Clone)]
struct Cycle {
    run_ms: u64,
    sigterm: bool,
    zero_timeout: bool,
    reader_limit: u64,
    ack: bool,
}

fn cycle() -> impl Strategy<Value = Cycle> {
    (
        100u64..1500,
        prop::bool::weighted(0.3),
        any::<bool>(),
        1u64..20,
        any::<bool>(),
    )
        .prop_map(|(run_ms, sigterm, zero_timeout, reader_limit, ack)| Cycle {
            run_ms,
            sigterm,
            zero_timeout,
            reader_limit,
            ack,
        })
}

fn run(cycles: &[Cycle], seed: u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let mut log = Log::default();
    let mut reader = Reader::new();
    let mut roots = BTreeSet::new();
    let ws_peer = Arc::new(Mutex::new(Peer::new(777)));
    let mut ws_tokens = Vec::new();
    let mut sse = SseState::default();
    for (i, cy) in cycles.iter().enumerate() {
        let (mut child, client) = start(&data);
        if i > 0 {
            check_after_restart(
                &client,
                &mut log,
                &mut reader,
                &roots,
                &ws_tokens,
                &ws_peer,
                &mut sse,
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let log_arc = Arc::new(Mutex::new(std::mem::take(&mut log)));
        let mut writers = Vec::new();
        for w in 0..3 {
            roots.insert(format!("w{i}_{w}"));
            writers.push(writer(
                client,
                i,
                w,
                w == 2,
                stop.clone(),
                log_arc.clone(),
                seed.wrapping_mul(31).wrapping_add((i * 7 + w) as u64) | 1,
            ));
        }
        let reads = reader_thread(
            client,
            std::mem::replace(&mut reader, Reader::new()),
            stop.clone(),
            cy.reader_limit,
            cy.ack,
        );
        let compacts = compactor(client, stop.clone(), cy.zero_timeout, seed + i as u64);
        let ws = ws_writer(client.addr, ws_peer.clone(), i, stop.clone());
        let events = sse_thread(client, std::mem::take(&mut sse));
        std::thread::sleep(Duration::from_millis(cy.run_ms));
        if cy.sigterm {
            let status = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status()
                .expect("kill -TERM");
            assert!(status.success());
            let until = Instant::now() + Duration::from_secs(30);
            let exit = loop {
                if let Some(exit) = child.try_wait().expect("wait") {
                    break exit;
                }
                assert!(Instant::now() < until, "SIGTERM: still running after 30 s");
                std::thread::sleep(Duration::from_millis(20));
            };
            stop.store(true, Ordering::SeqCst);
            assert!(exit.success(), "graceful shutdown exited with {exit}");
        } else {
            stop.store(true, Ordering::SeqCst);
            child.kill().expect("SIGKILL");
            child.wait().expect("reaped");
        }
        for w in writers {
            w.join().expect("writer");
        }
        reader = reads.join().expect("reader");
        let compactions = compacts.join().expect("compactor");
        sse = events.join().expect("SSE reader");
        let ws_sent = ws.join().expect("websocket writer");
        log = Arc::try_unwrap(log_arc)
            .ok()
            .expect("writers done")
            .into_inner()
            .expect("lock");
        eprintln!(
            "cycle {i}: answered {} (max seq {:?}), in flight {}, compactions {compactions}, \
             websocket edits {}, reader cursor {}, SSE id {:?}",
            log.answered.len(),
            log.answered.keys().last(),
            log.unknown.len(),
            ws_sent.len(),
            reader.cursor,
            sse.last_id
        );
        ws_tokens.extend(ws_sent);
    }
    let (mut child, client) = start(&data);
    check_after_restart(
        &client,
        &mut log,
        &mut reader,
        &roots,
        &ws_tokens,
        &ws_peer,
        &mut sse,
    );
    assert!(!log.answered.is_empty());
    child.kill().expect("SIGKILL");
    child.wait().expect("reaped");
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("REVIEW_CRASH_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(3),
        max_shrink_iters: 0,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// See the module docs.
    #[test]
    fn crashes_and_restarts_mid_traffic_keep_every_promise(
        cycles in prop::collection::vec(cycle(), 2..4),
        seed in any::<u64>(),
    ) {
        eprintln!("schedule: {cycles:?} seed {seed}");
        run(&cycles, seed);
    }
}
