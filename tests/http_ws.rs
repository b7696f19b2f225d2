//! The y-websocket endpoint against the real server, byte by byte: a blocking WebSocket client
//! over `TcpStream` (so tests send frames no real client would) speaking y-protocols with
//! yrs's own message types.
//!
//! - hostile frames (truncated, oversized, unknown types, text, an update failing
//!   validation) close the connection with a code and reason, store nothing, and the server
//!   keeps serving;
//! - a client that stops reading is dropped as a slow consumer while its queue stays within
//!   its bounds (messages and bytes; repeated step 1 requests included);
//! - awareness messages are bounded in entries and handled in linear time;
//! - a server restart mid-session converges once the clients reconnect;
//! - a socket whose token expires is closed with 4401 at the token's `exp`.

mod common;

use std::io::{self, BufReader, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{raw_ws, Peer, TestServer};
use replicate::auth::jwt::{self, MintRequest};
use replicate::auth::{AuthSettings, KeyFiles, Right};
use replicate::ws::WsSettings;
use replicate::ServerSettings;
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, MapPrelim, MapRef, ReadTxn, StateVector, Transact, WriteTxn};

const TEXT: &str = "content";

/// What a read of the socket gave.
#[derive(Debug)]
enum Got {
    Binary(Vec<u8>),
    Close(u16, String),
    /// The connection ended without a close frame.
    Eof,
}

/// A minimal blocking WebSocket client (RFC 6455, client frames masked).
struct RawWs {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
}

impl RawWs {
    fn connect(addr: SocketAddr, path: &str) -> RawWs {
        let (reader, writer) = raw_ws::upgrade(addr, path);
        reader
            .get_ref()
            .set_read_timeout(Some(Duration::from_secs(30)))
            .expect("timeout");
        RawWs { reader, writer }
    }

    fn frame(&mut self, opcode: u8, fin: bool, payload: &[u8]) -> io::Result<()> {
        self.writer
            .write_all(&raw_ws::client_frame(opcode, fin, payload))
    }

    fn binary(&mut self, payload: &[u8]) {
        self.frame(raw_ws::BINARY, true, payload).expect("send");
    }

    fn send(&mut self, message: Message) {
        self.binary(&message.encode_v1());
    }

    /// The next data or close frame; pings are answered.
    fn recv(&mut self) -> Got {
        loop {
            let Ok((opcode, payload)) = raw_ws::read_frame(&mut self.reader) else {
                return Got::Eof;
            };
            match opcode {
                raw_ws::BINARY => return Got::Binary(payload),
                raw_ws::CLOSE => {
                    let code = payload
                        .get(..2)
                        .map(|c| u16::from_be_bytes([c[0], c[1]]))
                        .unwrap_or(1005);
                    let reason = String::from_utf8_lossy(payload.get(2..).unwrap_or_default());
                    return Got::Close(code, reason.into_owned());
                }
                raw_ws::PING => {
                    let _ = self.frame(raw_ws::PONG, true, &payload);
                }
                _ => {}
            }
        }
    }

    /// Reads the server's first message, which must be its sync step 1 (`what` names the
    /// case in the panic).
    fn step1_first(&mut self, what: &str) {
        match self.recv() {
            Got::Binary(frame) => assert!(matches!(
                decode(&frame),
                Message::Sync(SyncMessage::SyncStep1(_))
            )),
            other => panic!("{what}: no step 1 first: {other:?}"),
        }
    }

    /// Reads until the server closes; answers its close code and reason.
    fn closed(&mut self) -> (u16, String) {
        loop {
            match self.recv() {
                Got::Binary(_) => continue,
                Got::Close(code, reason) => return (code, reason),
                Got::Eof => panic!("the connection ended without a close frame"),
            }
        }
    }
}

fn decode(frame: &[u8]) -> Message {
    Message::decode_v1(frame).expect("the server sends y-protocols messages")
}

/// A y-websocket-like client: a yrs doc synced over a [`RawWs`].
struct WsPeer {
    ws: RawWs,
    peer: Peer,
}

impl WsPeer {
    /// Connects and syncs both ways: answers the server's step 1 with what the server lacks,
    /// and applies the server's step 2 to its own step 1.
    fn join(addr: SocketAddr, c: &str, doc: &str, peer: Peer) -> WsPeer {
        let mut me = WsPeer {
            ws: RawWs::connect(addr, &format!("/v1/{c}/ws/{doc}")),
            peer,
        };
        let sv = me.peer.doc.transact().state_vector();
        me.ws.send(Message::Sync(SyncMessage::SyncStep1(sv)));
        let mut answered = false;
        let mut synced = false;
        while !(answered && synced) {
            match me.ws.recv() {
                Got::Binary(frame) => match decode(&frame) {
                    Message::Sync(SyncMessage::SyncStep1(sv)) => {
                        let diff = me.peer.doc.transact().encode_state_as_update_v1(&sv);
                        me.ws.send(Message::Sync(SyncMessage::SyncStep2(diff)));
                        answered = true;
                    }
                    Message::Sync(SyncMessage::SyncStep2(u)) => {
                        me.peer.apply(&u);
                        synced = true;
                    }
                    Message::Sync(SyncMessage::Update(u)) => me.peer.apply(&u),
                    _ => {}
                },
                other => panic!("closed while syncing: {other:?}"),
            }
        }
        me
    }

    fn edit(&mut self, s: &str) {
        let update = self.peer.append(TEXT, s);
        self.ws.send(Message::Sync(SyncMessage::Update(update)));
    }

    /// Applies what arrives until the text is `expected`.
    fn wait_for_text(&mut self, expected: &str) {
        self.wait_for(TEXT, expected);
    }

    /// Applies what arrives until text root `root` is `expected`.
    fn wait_for(&mut self, root: &str, expected: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.peer.text(root) != expected {
            assert!(
                Instant::now() < deadline,
                "{root} stayed {:?}",
                self.peer.text(root)
            );
            match self.ws.recv() {
                Got::Binary(frame) => {
                    if let Message::Sync(SyncMessage::Update(u) | SyncMessage::SyncStep2(u)) =
                        decode(&frame)
                    {
                        self.peer.apply(&u);
                    }
                }
                other => panic!("closed while waiting: {other:?}"),
            }
        }
    }
}

/// An update nesting maps 80 deep: valid Yjs, past the default depth limit of 64.
fn too_deep() -> Vec<u8> {
    let doc = Doc::with_client_id(9);
    let mut txn = doc.transact_mut();
    let mut map: MapRef = txn.get_or_insert_map("root");
    for _ in 0..80 {
        map = yrs::Map::insert(&map, &mut txn, "k", MapPrelim::default());
    }
    txn.encode_state_as_update_v1(&StateVector::default())
}

fn sync_update(bytes: Vec<u8>) -> Vec<u8> {
    Message::Sync(SyncMessage::Update(bytes)).encode_v1()
}

fn ws_settings(tweak: impl FnOnce(&mut WsSettings)) -> ServerSettings {
    let mut settings = ServerSettings::default();
    tweak(&mut settings.ws);
    settings
}

#[test]
fn hostile_frames_close_with_a_reason_and_store_nothing() {
    const MAX: usize = 64 * 1024;
    let ts = TestServer::start_with(|_| {}, ws_settings(|ws| ws.max_message_bytes = MAX));
    let c = "hostile";
    let big = vec![0u8; MAX + 1];
    let junk = sync_update(vec![1, 2, 3, 4, 5]);
    let deep = sync_update(too_deep());
    // (what, frames as (opcode, fin, payload), close code, reason contains)
    type Case<'a> = (&'a str, Vec<(u8, bool, &'a [u8])>, u16, &'a str);
    let cases: Vec<Case> = vec![
        (
            "truncated",
            vec![(2, true, &[0, 1, 50, 1, 2])],
            4400,
            "truncated",
        ),
        (
            "unknown type",
            vec![(2, true, &[9])],
            4400,
            "unknown message type 9",
        ),
        (
            "unknown sync type",
            vec![(2, true, &[0, 7, 0])],
            4400,
            "unknown sync message type 7",
        ),
        (
            "auth from a client",
            vec![(2, true, &[2, 0])],
            4400,
            "server only",
        ),
        ("empty", vec![(2, true, &[])], 4400, "empty frame"),
        ("text", vec![(1, true, b"hello")], 4400, "text frame"),
        (
            "oversized",
            vec![(2, true, &big)],
            4413,
            "message over 65536 bytes",
        ),
        (
            "oversized in continuations",
            vec![
                (2, false, &big[..MAX / 2 + 1]),
                (0, true, &big[..MAX / 2 + 1]),
            ],
            4413,
            "message over",
        ),
        (
            "update that is not Yjs",
            vec![(2, true, &junk)],
            4422,
            "invalid_yjs",
        ),
        (
            "update nested too deep",
            vec![(2, true, &deep)],
            4422,
            "yjs_limit",
        ),
    ];
    for (what, frames, code, reason) in cases {
        let mut ws = RawWs::connect(ts.client.addr, &format!("/v1/{c}/ws/doc"));
        ws.step1_first(what);
        for (opcode, fin, payload) in frames {
            // The server may close before a large frame is fully written.
            let _ = ws.frame(opcode, fin, payload);
        }
        let (got_code, got_reason) = ws.closed();
        assert_eq!(got_code, code, "{what}: {got_reason}");
        assert!(
            got_reason.contains(reason),
            "{what}: {got_reason:?} lacks {reason:?}"
        );
    }
    let (changes, head) = ts.client.stream_all(c, 0);
    assert_eq!((changes.len(), head), (0, 0), "nothing was stored");
    // The server keeps serving: a good client still writes.
    let mut good = WsPeer::join(ts.client.addr, c, "doc", Peer::new(1));
    good.edit("fine");
    let mut other = WsPeer::join(ts.client.addr, c, "doc", Peer::new(2));
    other.wait_for_text("fine");
    assert_eq!(ts.client.stream_all(c, 0).1, 1);
}

/// Sums the values of a Prometheus metric (every label set) in `/metrics`.
fn metric(ts: &TestServer, name: &str) -> f64 {
    ts.client
        .get("/metrics")
        .text()
        .lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[test]
fn a_slow_consumer_is_dropped_and_its_queue_stays_bounded() {
    const QUEUE: usize = 4;
    const WRITES: usize = 400;
    let ts = TestServer::start_with(|_| {}, ws_settings(|ws| ws.send_queue = QUEUE));
    let c = "slow";
    let slow_before = metric(&ts, replicate::ws::METRIC_SLOW_CONSUMERS);
    // Syncs, then never reads again.
    let mut slow = WsPeer::join(ts.client.addr, c, "doc", Peer::new(1));
    let writer = Peer::new(2);
    let chunk = "x".repeat(32 * 1024);
    let mut most_queued = 0f64;
    for i in 0..WRITES {
        ts.client
            .write(c, "update", "doc", &writer.append(TEXT, &chunk));
        if i % 25 == 0 {
            most_queued = most_queued.max(metric(&ts, replicate::ws::METRIC_QUEUED_BYTES));
        }
    }
    // The queue never held more than its bound of these updates (plus other tests' small
    // messages: the gauge is process-wide).
    let bound = (QUEUE * (chunk.len() + 64)) as f64 + 256.0 * 1024.0;
    assert!(
        most_queued <= bound,
        "{most_queued} bytes queued, bound {bound}"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while metric(&ts, replicate::ws::METRIC_SLOW_CONSUMERS) <= slow_before {
        assert!(
            Instant::now() < deadline,
            "the slow consumer was never dropped"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // Reading again, it finds fewer updates than were written, then the end.
    let mut updates = 0;
    while let Got::Binary(_) = slow.ws.recv() {
        updates += 1;
    }
    assert!(
        updates < WRITES,
        "got all {updates} updates: it was not dropped"
    );
    // It resyncs on reconnect.
    let mut again = WsPeer::join(ts.client.addr, c, "doc", slow.peer);
    assert_eq!(again.peer.text(TEXT).len(), WRITES * chunk.len());
    again.edit("!");
    let fresh = WsPeer::join(ts.client.addr, c, "doc", Peer::new(3));
    assert!(fresh.peer.text(TEXT).len() >= WRITES * chunk.len());
}

/// Found in review: a client (`read` is enough) sending one 1,200-byte frame of 300 sync step 1
/// requests (empty state vector: answer with the whole document) and never reading pinned
/// 300 copies of a 1 MiB document (255 MiB) behind a queue bounded only in messages. The queue
/// is bounded in bytes too: it holds at most its byte bound (or one message larger than it),
/// and the client is dropped as a slow consumer.
#[test]
fn repeated_step1_requests_are_bounded_in_bytes() {
    const DOC: usize = 1 << 20;
    const QUEUE_BYTES: usize = 4 << 20;
    let ts = TestServer::start_with(|_| {}, ws_settings(|ws| ws.send_queue_bytes = QUEUE_BYTES));
    let writer = Peer::new(1);
    ts.client.write(
        "amp",
        "insert",
        "doc",
        &writer.append(TEXT, &"x".repeat(DOC)),
    );
    let slow_before = metric(&ts, replicate::ws::METRIC_SLOW_CONSUMERS);
    let mut ws = RawWs::connect(ts.client.addr, "/v1/amp/ws/doc");
    let step1_empty: [u8; 4] = [0, 0, 1, 0];
    ws.binary(&step1_empty.repeat(300));
    let mut most = 0f64;
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(2) {
        most = most.max(metric(&ts, replicate::ws::METRIC_QUEUED_BYTES));
        std::thread::sleep(Duration::from_millis(50));
    }
    // The gauge is process-wide: other tests' small messages get some slack.
    let bound = (QUEUE_BYTES + DOC + 256 * 1024) as f64;
    assert!(most <= bound, "{most} bytes queued, bound {bound}");
    assert!(metric(&ts, replicate::ws::METRIC_SLOW_CONSUMERS) > slow_before);
    // Reading again, it finds fewer answers than it asked for, then the end (a 1013 close
    // frame, or none when the socket was still full past the close's grace).
    let mut answers = 0;
    let end = loop {
        match ws.recv() {
            Got::Binary(_) => answers += 1,
            other => break other,
        }
    };
    assert!(answers < 300, "all {answers} answers arrived");
    assert!(matches!(end, Got::Close(1013, _) | Got::Eof), "{end:?}");
}

/// An awareness message of `n` new states (ids from `first`) and as many removals of ids nobody
/// announced.
fn crowded_awareness(first: u64, n: u64) -> Vec<u8> {
    use yrs::sync::awareness::AwarenessUpdateEntry;
    let entry = |clock, json: &str| AwarenessUpdateEntry {
        clock,
        json: json.into(),
    };
    let clients = (0..n)
        .map(|i| (yrs::ClientID::new(first + i), entry(1, "{}")))
        .chain((0..n).map(|i| (yrs::ClientID::new(first + n + i), entry(1, "null"))))
        .collect();
    Message::Awareness(yrs::sync::AwarenessUpdate { clients }).encode_v1()
}

/// Found in review: one awareness message of 100,000 entries (850 KB) took 33 s of an HTTP
/// worker under the room's lock, as each new id counted the table. Entries per message are
/// bounded (16,384; over it the connection closes with 4400) and each costs O(1): a message
/// at the bound is handled, and the sender still owns at most 8 ids.
#[test]
fn crowded_awareness_messages_are_bounded_and_handled() {
    let ts = TestServer::start();
    let mut over = RawWs::connect(ts.client.addr, "/v1/aw/ws/doc");
    over.binary(&crowded_awareness(1, 8_193));
    let (code, reason) = over.closed();
    assert_eq!(code, 4400, "{reason}");
    assert!(
        reason.contains("awareness update of 16386 entries"),
        "{reason}"
    );

    let mut at = RawWs::connect(ts.client.addr, "/v1/aw/ws/doc");
    at.binary(&crowded_awareness(1_000_000, 8_192));
    // query-awareness: answered with the live states once the message above is handled.
    at.binary(&[3]);
    let states = loop {
        match at.recv() {
            Got::Binary(frame) => {
                if let Message::Awareness(update) = decode(&frame) {
                    if !update.clients.is_empty() && update.clients.len() <= 8 {
                        break update;
                    }
                }
            }
            other => panic!("no awareness answer: {other:?}"),
        }
    };
    assert_eq!(states.clients.len(), 8);
}

#[test]
fn a_server_restart_mid_session_converges_after_reconnect() {
    let mut ts = TestServer::start();
    let c = "restart";
    let mut a = WsPeer::join(ts.client.addr, c, "doc", Peer::new(1));
    let mut b = WsPeer::join(ts.client.addr, c, "doc", Peer::new(2));
    a.edit("one ");
    b.wait_for_text("one ");
    ts.stop();
    // Both are told the server is going away (or simply lose the connection). Updates
    // broadcast before the stop (the room echoes `a`'s own edit back to it too) may still be
    // unread ahead of the close.
    for p in [&mut a, &mut b] {
        loop {
            match p.ws.recv() {
                Got::Close(code, _) => {
                    assert_eq!(code, 1001);
                    break;
                }
                Got::Eof => break,
                Got::Binary(frame) => match decode(&frame) {
                    Message::Sync(SyncMessage::Update(_)) | Message::Awareness(_) => {}
                    other => panic!("unexpected message {other:?}"),
                },
            }
        }
    }
    // Edits made while the server is down.
    let _ = a.peer.append(TEXT, "two ");
    let _ = b.peer.append("other", "three");
    let server = common::restart_in_thread(&ts.dir.path().join("data"));
    let mut a = WsPeer::join(server.addr, c, "doc", a.peer);
    let mut b = WsPeer::join(server.addr, c, "doc", b.peer);
    // Each offline edit reaches the other through the store.
    b.wait_for_text("one two ");
    a.wait_for("other", "three");
    let fresh = WsPeer::join(server.addr, c, "doc", Peer::new(3));
    assert_eq!(fresh.peer.text(TEXT), "one two ");
    assert_eq!(fresh.peer.text("other"), "three");
    server.shutdown().expect("graceful shutdown");
}

/// Milliseconds since the epoch, as the server's clock reads them.
fn now_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock after 1970")
        .as_millis() as u64
}

#[test]
fn a_socket_is_closed_with_4401_when_its_token_expires() {
    const SECRET: &[u8] = b"replicate-ws-expiry-secret-0123456789";
    let keys = tempfile::tempdir().expect("temp dir");
    let secret_file = keys.path().join("secret");
    std::fs::write(&secret_file, SECRET).expect("secret");
    let settings = ServerSettings {
        auth: AuthSettings {
            keys: KeyFiles {
                secret_file: Some(secret_file),
                ..KeyFiles::default()
            },
            allow_anonymous: false,
        },
        ..ServerSettings::default()
    };
    let ts = TestServer::start_with(|_| {}, settings);
    let issued = now_millis();
    let grants = [("expiry".to_string(), Right::Write)];
    let request = MintRequest {
        subject: "alice",
        grants: &grants,
        ttl: Duration::from_secs(2),
        issuer: None,
        audience: None,
    };
    let token = jwt::mint(SECRET, &request, issued).expect("token");
    // `exp` is whole seconds: 1–2 s from now.
    let exp_millis = (issued / 1000 + 2) * 1000;
    let mut ws = RawWs::connect(ts.client.addr, &format!("/v1/expiry/ws/doc?token={token}"));
    ws.step1_first("expiring token");
    // Still open and serving before expiry: an edit goes through.
    ws.send(Message::Sync(SyncMessage::Update(
        Peer::new(1).append(TEXT, "hi"),
    )));
    let (code, reason) = ws.closed();
    let closed_at = now_millis();
    assert_eq!(code, 4401, "{reason}");
    assert!(reason.contains("expired"), "{reason}");
    assert!(
        closed_at >= exp_millis,
        "closed {} ms before exp",
        exp_millis - closed_at
    );
    assert!(
        closed_at < exp_millis + 1500,
        "closed {} ms after exp",
        closed_at - exp_millis
    );
    let valid = jwt::mint(SECRET, &request, now_millis()).expect("token");
    let bearer = format!("Bearer {valid}");
    let page = ts.client.request(
        "GET",
        "/v1/expiry/stream?cursor=0",
        &[("authorization", &bearer)],
        b"",
    );
    let changes = page.json()["changes"].as_array().map_or(0, Vec::len);
    assert_eq!(changes, 1, "the edit made before expiry was stored");
}
