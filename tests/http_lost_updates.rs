//! Lost updates across surfaces working at the same time — y-websocket clients
//! (whose room follows the collection stream), HTTP single and batch writes, `compact` with
//! and without an acking peer, late-joining websocket clients, and a long-poll reader.
//!
//! Every write is a `Y.Map` entry of its own key (so every write is valid on its own and a
//! missing one is visible by key). At the end every websocket client, a late joiner, the
//! `stream` reader and `/state` must hold every key whose write was answered (HTTP) or sent
//! on a connection that stayed open (websocket).
//!
//! The room's follower long-polls the stream; to let compactions overtake it (as a busy
//! server would), some cases cap long-poll waiters at one and hold that slot on another
//! collection: the follower's waits are then refused (503) and it re-reads every 500 ms.

mod common;

use std::collections::BTreeSet;
use std::io::{BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use common::{b64, raw_ws, unb64, Client, TestServer};
use proptest::prelude::*;
use replicate::ServerSettings;
use serde_json::json;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, Map, ReadTxn, StateVector, Transact, Update};

const ROOT: &str = "m";

/// A yrs doc whose writes are map entries of unique keys.
#[derive(Clone)]
struct MapPeer(Arc<Mutex<Doc>>);

impl MapPeer {
    fn new(client_id: u64) -> Self {
        MapPeer(Arc::new(Mutex::new(Doc::with_client_id(client_id))))
    }

    fn set(&self, key: &str) -> Vec<u8> {
        let doc = self.0.lock().unwrap();
        let map = doc.get_or_insert_map(ROOT);
        let mut txn = doc.transact_mut();
        map.insert(&mut txn, key, key.to_string());
        txn.encode_update_v1()
    }

    fn apply(&self, update: &[u8]) {
        let doc = self.0.lock().unwrap();
        let update = Update::decode_v1(update).expect("server bytes decode");
        doc.transact_mut().apply_update(update).expect("applies");
    }

    fn keys(&self) -> BTreeSet<String> {
        let doc = self.0.lock().unwrap();
        let map = doc.get_or_insert_map(ROOT);
        let txn = doc.transact();
        map.keys(&txn).map(str::to_string).collect()
    }

    fn state_vector(&self) -> StateVector {
        self.0.lock().unwrap().transact().state_vector()
    }

    fn diff(&self, sv: &StateVector) -> Vec<u8> {
        self.0
            .lock()
            .unwrap()
            .transact()
            .encode_state_as_update_v1(sv)
    }
}

/// The smallest y-websocket client: a writer half, and a reader thread answering the server's
/// step 1 and applying every step 2 and update to the peer's doc.
struct Ws {
    peer: MapPeer,
    writer: Arc<Mutex<TcpStream>>,
    reader: Option<JoinHandle<Option<(u16, String)>>>,
    synced: Arc<Mutex<bool>>,
}

fn frame(writer: &Mutex<TcpStream>, payload: &[u8]) {
    let out = raw_ws::client_frame(raw_ws::BINARY, true, payload);
    let _ = writer.lock().unwrap().write_all(&out);
}

fn send(writer: &Mutex<TcpStream>, m: Message) {
    frame(writer, &m.encode_v1());
}

impl Ws {
    fn join(addr: SocketAddr, c: &str, doc: &str, peer: MapPeer) -> Ws {
        let (reader, writer) = raw_ws::upgrade(addr, &format!("/v1/{c}/ws/{doc}"));
        let writer = Arc::new(Mutex::new(writer));
        let synced = Arc::new(Mutex::new(false));
        send(
            &writer,
            Message::Sync(SyncMessage::SyncStep1(peer.state_vector())),
        );
        let (p, w, s) = (peer.clone(), writer.clone(), synced.clone());
        let handle = std::thread::spawn(move || read_loop(reader, p, w, s));
        let ws = Ws {
            peer,
            writer,
            reader: Some(handle),
            synced,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !*ws.synced.lock().unwrap() {
            assert!(Instant::now() < deadline, "no step 2 from the server");
            std::thread::sleep(Duration::from_millis(2));
        }
        ws
    }

    /// Sends an edit; answers its key.
    fn edit(&self, key: &str) {
        let u = self.peer.set(key);
        send(&self.writer, Message::Sync(SyncMessage::Update(u)));
    }

    /// Waits until the peer holds `keys` (or the time ends); answers what is missing.
    fn missing_after(&self, keys: &BTreeSet<String>, wait: Duration) -> BTreeSet<String> {
        let deadline = Instant::now() + wait;
        loop {
            let missing: BTreeSet<String> = keys.difference(&self.peer.keys()).cloned().collect();
            if missing.is_empty() || Instant::now() > deadline {
                return missing;
            }
            if self.reader.as_ref().is_some_and(|h| h.is_finished()) {
                return missing;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn close(mut self) -> Option<(u16, String)> {
        let _ = self
            .writer
            .lock()
            .unwrap()
            .shutdown(std::net::Shutdown::Both);
        self.reader.take().and_then(|h| h.join().ok()).flatten()
    }
}

/// Answers the close code and reason if the server closed the connection.
fn read_loop(
    mut reader: BufReader<TcpStream>,
    peer: MapPeer,
    writer: Arc<Mutex<TcpStream>>,
    synced: Arc<Mutex<bool>>,
) -> Option<(u16, String)> {
    loop {
        let (opcode, payload) = raw_ws::read_frame(&mut reader).ok()?;
        match opcode {
            raw_ws::BINARY => match Message::decode_v1(&payload).expect("y-protocols message") {
                Message::Sync(SyncMessage::SyncStep1(sv)) => {
                    let diff = peer.diff(&sv);
                    send(&writer, Message::Sync(SyncMessage::SyncStep2(diff)));
                }
                Message::Sync(SyncMessage::SyncStep2(u)) => {
                    peer.apply(&u);
                    *synced.lock().unwrap() = true;
                }
                Message::Sync(SyncMessage::Update(u)) => peer.apply(&u),
                _ => {}
            },
            raw_ws::CLOSE => {
                let code = payload
                    .get(..2)
                    .map_or(1005, |c| u16::from_be_bytes([c[0], c[1]]));
                let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                return Some((code, reason.into_owned()));
            }
            raw_ws::PING => {
                let out = raw_ws::client_frame(raw_ws::PONG, true, &payload);
                let _ = writer.lock().unwrap().write_all(&out);
            }
            _ => {}
        }
    }
}

/// Holds the server's only long-poll waiter slot on another collection, so every room
/// follower's wait is refused and it re-reads every 500 ms (a follower that lags behind).
fn hold_the_waiter_slot(client: &Client) -> JoinHandle<()> {
    let client = Client { addr: client.addr };
    // The collection must exist for nothing; a long poll on it waits up to max_wait.
    let h = std::thread::spawn(move || {
        let r = client.get("/v1/slot-holder/stream?cursor=0&waitMs=60000");
        assert_eq!(
            r.status,
            200,
            "the holder did not get the slot: {}",
            r.text()
        );
    });
    std::thread::sleep(Duration::from_millis(200));
    h
}

fn stalled_settings() -> (impl FnOnce(&mut replicate_actors::Config), ServerSettings) {
    (
        |c: &mut replicate_actors::Config| {
            c.max_waiters = 1;
            c.max_wait = Duration::from_secs(60);
        },
        ServerSettings::default(),
    )
}

fn http_update(client: &Client, c: &str, doc: &str, bytes: &[u8]) -> u64 {
    client.write(c, "update", doc, bytes)
}

fn head(client: &Client, c: &str) -> u64 {
    client.ok_get(&format!("/v1/{c}/stats"))["durableSeq"]
        .as_u64()
        .expect("durable seq in stats")
}

fn wait_head(client: &Client, c: &str, at_least: u64) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while head(client, c) < at_least {
        assert!(Instant::now() < deadline, "head stayed below {at_least}");
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The bug in one schedule: websocket client `b` writes the newest delta of the document
/// (seq S); an HTTP write X (seq S−1) and a compaction of the document land before the
/// room's follower reads them. The follower's next page carries the document's snapshot
/// with seq = S, the seq `b` wrote, and the room skips `b` for it as the "origin" of seq S:
/// `b` never receives X, while `c` does.
#[test]
fn ws_writer_gets_the_snapshot_that_carries_its_own_newest_write() {
    let (tweak, settings) = stalled_settings();
    let ts = TestServer::start_with(tweak, settings);
    let client = &ts.client;
    let c = "snap-origin";
    let d = "doc";
    let http = MapPeer::new(100);
    // The collection exists before the holder takes the slot.
    http_update(client, c, d, &http.set("seed"));
    let holder = hold_the_waiter_slot(client);
    let b = Ws::join(client.addr, c, d, MapPeer::new(1));
    let other = Ws::join(client.addr, c, d, MapPeer::new(2));
    let mut expected: BTreeSet<String> = BTreeSet::from(["seed".to_string()]);
    for round in 0..4 {
        let x = format!("http-{round}");
        let seq_x = http_update(client, c, d, &http.set(&x));
        expected.insert(x);
        let y = format!("ws-{round}");
        b.edit(&y);
        expected.insert(y);
        wait_head(client, c, seq_x + 1);
        let r = client.ok(&format!("/v1/{c}/compact"), &json!({ "documentId": d }));
        assert_eq!(r["snapshotSeq"], seq_x + 1, "{r}");
    }
    let missing_other = other.missing_after(&expected, Duration::from_secs(5));
    let missing_b = b.missing_after(&expected, Duration::from_secs(5));
    assert!(
        missing_other.is_empty(),
        "the other client misses {missing_other:?}"
    );
    assert!(
        missing_b.is_empty(),
        "the websocket writer never received {missing_b:?} (answered HTTP writes)"
    );
    drop(holder);
    b.close();
    other.close();
}

/// One step of a random schedule. Documents: 0 = "a" (has websocket clients), 1 = "b".
#[derive(Debug, Clone)]
enum Op {
    /// An HTTP `update` of the document.
    Http(u8),
    /// One `batch` request with writes of these documents, in order.
    Batch(Vec<u8>),
    /// An edit from websocket client `n % clients`.
    WsEdit(u8),
    /// Peer `p` acks the long-poll reader's cursor, then the document is compacted
    /// (`zero_timeout`: with `peerTimeout: 0`, so no peer holds anything back).
    Compact {
        doc: u8,
        ack: Option<u8>,
        zero_timeout: bool,
    },
    /// A websocket client joins document "a".
    Join,
    /// The long-poll reader reads one page (waitMs=0) and applies it.
    Page,
    Pause(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..2).prop_map(Op::Http),
        2 => prop::collection::vec(0u8..2, 1..5).prop_map(Op::Batch),
        4 => any::<u8>().prop_map(Op::WsEdit),
        3 => ((0u8..2), prop::option::of(0u8..2), any::<bool>())
            .prop_map(|(doc, ack, zero_timeout)| Op::Compact { doc, ack, zero_timeout }),
        1 => Just(Op::Join),
        2 => Just(Op::Page),
        1 => (0u8..60).prop_map(Op::Pause),
    ]
}

const DOCS: [&str; 2] = ["a", "b"];

/// A reader of the collection that applies every change to its document's peer.
struct Reader {
    peers: [MapPeer; 2],
    cursor: u64,
}

impl Reader {
    fn new(id: u64) -> Reader {
        Reader {
            peers: [MapPeer::new(id), MapPeer::new(id + 1)],
            cursor: 0,
        }
    }

    fn apply(&self, change: &serde_json::Value) {
        let doc = change["documentId"].as_str().expect("documentId");
        let i = DOCS.iter().position(|d| *d == doc).expect("known document");
        self.peers[i].apply(&unb64(change["crdtBytes"].as_str().expect("bytes")));
    }

    fn page(&mut self, client: &Client, c: &str) -> bool {
        let page = client.ok_get(&format!("/v1/{c}/stream?cursor={}&limit=3", self.cursor));
        for change in page["changes"].as_array().expect("changes") {
            self.apply(change);
        }
        let next = page["cursor"].as_u64().expect("cursor");
        assert!(next >= self.cursor, "cursor went back: {page}");
        self.cursor = next;
        page["hasMore"] == true
    }
}

/// An SSE reader that reconnects with `Last-Event-ID` every few events, until its copy of
/// "b" holds `stop`.
fn sse_reader(client: Client, c: String, stop: String) -> JoinHandle<Reader> {
    std::thread::spawn(move || {
        let reader = Reader::new(500);
        let mut last: Option<u64> = None;
        'outer: loop {
            let path = format!("/v1/{c}/events?cursor=0");
            let mut sse = client.events(&path, last);
            assert_eq!(sse.status, 200);
            let mut events = 0;
            while let Some(block) = sse.next_block().expect("SSE read") {
                if let Some(data) = &block.data {
                    assert!(block.event.is_none(), "SSE error event: {data}");
                    reader.apply(&serde_json::from_str(data).expect("change JSON"));
                    events += 1;
                }
                last = sse.last_id;
                if reader.peers[1].keys().contains(&stop) {
                    break 'outer;
                }
                if events >= 7 {
                    continue 'outer;
                }
            }
        }
        reader
    })
}

fn run_schedule(ops: &[Op], stalled: bool) -> Result<(), TestCaseError> {
    let ts = if stalled {
        let (tweak, settings) = stalled_settings();
        TestServer::start_with(tweak, settings)
    } else {
        TestServer::start()
    };
    let client = &ts.client;
    let c = "mixed";
    let http = [MapPeer::new(100), MapPeer::new(101)];
    let batcher = [MapPeer::new(200), MapPeer::new(201)];
    let mut expected: [BTreeSet<String>; 2] = Default::default();
    let mut n = 0u32;
    let mut key = |doc: usize, what: &str| {
        n += 1;
        format!("{}-{what}-{n}", DOCS[doc])
    };
    let k = key(0, "seed");
    http_update(client, c, DOCS[0], &http[0].set(&k));
    expected[0].insert(k);
    let _holder = stalled.then(|| hold_the_waiter_slot(client));
    let stop = "b-stop".to_string();
    let sse = (!stalled).then(|| sse_reader(Client { addr: client.addr }, c.into(), stop.clone()));
    let mut clients = vec![Ws::join(client.addr, c, DOCS[0], MapPeer::new(1))];
    let mut reader = Reader::new(300);
    for op in ops {
        match op {
            Op::Http(d) => {
                let d = *d as usize;
                let k = key(d, "http");
                http_update(client, c, DOCS[d], &http[d].set(&k));
                expected[d].insert(k);
            }
            Op::Batch(docs) => {
                let mut writes = Vec::new();
                let mut keys = Vec::new();
                for d in docs {
                    let d = *d as usize;
                    let k = key(d, "batch");
                    writes.push(json!({"op": "update", "documentId": DOCS[d],
                        "crdtBytes": b64(&batcher[d].set(&k))}));
                    keys.push((d, k));
                }
                let r = client.ok(&format!("/v1/{c}/batch"), &json!({ "writes": writes }));
                for (i, (d, k)) in keys.into_iter().enumerate() {
                    prop_assert!(r["results"][i]["seq"].is_u64(), "batch write refused: {r}");
                    expected[d].insert(k);
                }
            }
            Op::WsEdit(i) => {
                let ws = &clients[*i as usize % clients.len()];
                let k = key(0, "ws");
                let before = head(client, c);
                ws.edit(&k);
                expected[0].insert(k);
                // Stored before the next step (websocket writes have no answer).
                wait_head(client, c, before + 1);
            }
            Op::Compact {
                doc,
                ack,
                zero_timeout,
            } => {
                if let Some(p) = ack {
                    client.ok(
                        &format!("/v1/{c}/ack"),
                        &json!({"peerId": format!("p{p}"), "syncedSeq": reader.cursor}),
                    );
                }
                let mut body = json!({ "documentId": DOCS[*doc as usize] });
                if *zero_timeout {
                    body["peerTimeout"] = json!(0);
                }
                client.ok(&format!("/v1/{c}/compact"), &body);
            }
            Op::Join => {
                let id = 1 + clients.len() as u64;
                clients.push(Ws::join(client.addr, c, DOCS[0], MapPeer::new(id)));
            }
            Op::Page => {
                reader.page(client, c);
            }
            Op::Pause(ms) => std::thread::sleep(Duration::from_millis(u64::from(*ms))),
        }
    }
    // Everything written reaches every websocket client, a late joiner, the long-poll
    // reader, the SSE reader and `/state`.
    let late = Ws::join(client.addr, c, DOCS[0], MapPeer::new(90));
    for (i, ws) in clients.iter().chain([&late]).enumerate() {
        let missing = ws.missing_after(&expected[0], Duration::from_secs(8));
        prop_assert!(
            missing.is_empty(),
            "websocket client {i} misses {missing:?}"
        );
    }
    let k = stop.clone();
    http_update(client, c, DOCS[1], &http[1].set(&k));
    expected[1].insert(k);
    while reader.page(client, c) {}
    for (want, peer) in expected.iter().zip(&reader.peers) {
        let missing: Vec<_> = want.difference(&peer.keys()).cloned().collect();
        prop_assert!(missing.is_empty(), "the stream reader misses {missing:?}");
    }
    if let Some(sse) = sse {
        let sse = sse.join().expect("SSE reader");
        for (want, peer) in expected.iter().zip(&sse.peers) {
            let missing: Vec<_> = want.difference(&peer.keys()).cloned().collect();
            prop_assert!(missing.is_empty(), "the SSE reader misses {missing:?}");
        }
    }
    let state = client.ok_get(&format!("/v1/{c}/state"));
    let all = MapPeer::new(999);
    all.apply(&unb64(state["crdtBytes"].as_str().expect("bytes")));
    let union: BTreeSet<String> = expected[0].union(&expected[1]).cloned().collect();
    let missing: Vec<_> = union.difference(&all.keys()).cloned().collect();
    prop_assert!(missing.is_empty(), "/state misses {missing:?}");
    for ws in clients {
        ws.close();
    }
    late.close();
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("REVIEW_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(6),
        max_shrink_iters: 4,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    /// Random schedules of HTTP, batch and websocket writes, compactions with and without an
    /// acking peer, late websocket joins and long-poll pages, with the rooms' follower either
    /// keeping up or lagging (re-reading every 500 ms), and an SSE reader reconnecting by
    /// `Last-Event-ID`: every reader ends with every write.
    #[test]
    fn every_surface_ends_with_every_write(
        ops in prop::collection::vec(op(), 8..28),
        stalled in any::<bool>(),
    ) {
        run_schedule(&ops, stalled)?;
    }
}
