//! The front's transport limits, each just below and just above it, over raw TCP so the test
//! controls every byte and every pause: request-head timeout, body timeout, linger after a
//! refused body, keep-alive, write timeout (a client that stops reading its answer). After
//! each, the server still serves other clients. Also over HTTP: `syncedSeq` written as a
//! float, and names holding bidi or zero-width characters.
//!
//! Timeouts here are short (hundreds of milliseconds to a second) and the margins wide (2×
//! and more), so a slow machine makes a test slower, not flaky. actix-web's own timers (head,
//! keep-alive, linger) start from a clock it refreshes every 500 ms, so they may fire up to
//! 0.5 s early: their lower bounds allow for that.

mod common;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::thread::sleep;
use std::time::{Duration, Instant};

use common::{b64, Peer, TestServer};
use replicate::ServerSettings;
use serde_json::{json, Value};

const MS: fn(u64) -> Duration = Duration::from_millis;

fn server(settings: ServerSettings) -> TestServer {
    TestServer::start_with(|_| {}, settings)
}

fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect(addr).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .expect("read timeout");
    stream
        .set_write_timeout(Some(Duration::from_secs(30)))
        .expect("write timeout");
    stream
}

/// One answer read off a keep-alive connection: status, headers, body (by Content-Length).
#[derive(Debug)]
struct Answer {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_answer(reader: &mut impl BufRead) -> io::Result<Answer> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed"));
    }
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, line.clone()))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        reader.read_line(&mut line)?;
        let l = line.trim_end();
        if l.is_empty() {
            break;
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
    let length = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok(Answer {
        status,
        headers,
        body,
    })
}

/// Whether the peer closed (EOF or reset) within the stream's read timeout.
fn closed(stream: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return true,
            Ok(_) => continue,
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return false
            }
            Err(_) => return true,
        }
    }
}

fn assert_serving(addr: SocketAddr) {
    let mut s = connect(addr);
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .expect("send");
    let answer = read_answer(&mut BufReader::new(s)).expect("healthz answer");
    assert_eq!(answer.status, 200, "the server still serves");
}

const HEALTHZ_HEAD: &[u8] = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n";

#[test]
fn request_head_must_arrive_within_client_request_timeout() {
    let ts = server(ServerSettings {
        client_request_timeout: MS(1000),
        ..ServerSettings::default()
    });
    let addr = ts.client.addr;

    // Below: the head comes in two parts, 300 ms apart, and is answered.
    let mut s = connect(addr);
    s.write_all(&HEALTHZ_HEAD[..10]).expect("send");
    sleep(MS(300));
    s.write_all(&HEALTHZ_HEAD[10..]).expect("send");
    let answer = read_answer(&mut BufReader::new(s.try_clone().expect("clone"))).expect("answer");
    assert_eq!(answer.status, 200);

    // Above: the head never ends; 408 and the connection closes, within about the timeout.
    let mut s = connect(addr);
    let started = Instant::now();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\n")
        .expect("send");
    let answer = read_answer(&mut BufReader::new(s.try_clone().expect("clone"))).expect("408");
    let waited = started.elapsed();
    assert_eq!(answer.status, 408);
    assert!(
        waited >= MS(400),
        "answered after {waited:?}, before the timeout"
    );
    assert!(waited < MS(5000), "answered after {waited:?}");
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(closed(&mut s), "the connection closes after the 408");
    assert_serving(addr);
}

fn insert_head(c: &str, length: usize) -> String {
    format!(
        "POST /v1/{c}/insert HTTP/1.1\r\nHost: t\r\nContent-Type: application/json\r\n\
         Content-Length: {length}\r\n\r\n"
    )
}

#[test]
fn body_must_arrive_within_body_timeout() {
    let ts = server(ServerSettings {
        body_timeout: MS(1000),
        client_disconnect_timeout: MS(200),
        ..ServerSettings::default()
    });
    let addr = ts.client.addr;
    let peer = Peer::new(1);
    let body = json!({ "documentId": "d", "crdtBytes": b64(&peer.append("d", "hello")) })
        .to_string()
        .into_bytes();

    // Below: the body comes in two halves, 400 ms apart, and is stored.
    let mut s = connect(addr);
    s.write_all(insert_head("slow", body.len()).as_bytes())
        .expect("send");
    let half = body.len() / 2;
    s.write_all(&body[..half]).expect("send");
    sleep(MS(400));
    s.write_all(&body[half..]).expect("send");
    let answer = read_answer(&mut BufReader::new(s.try_clone().expect("clone"))).expect("answer");
    assert_eq!(
        answer.status,
        200,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    assert_eq!(answer.json()["seq"], 1);

    // Above: Content-Length 1,000,000, then a few bytes every 100 ms for ever. The answer is
    // 408 `request_timeout` within about the timeout, although bytes keep coming (a trickle
    // that always has a piece ready must not postpone the deadline).
    let mut s = connect(addr);
    let started = Instant::now();
    s.write_all(insert_head("slow", 1_000_000).as_bytes())
        .expect("send");
    let mut writer = s.try_clone().expect("clone");
    let trickle = std::thread::spawn(move || {
        let _ = writer.write_all(b"{\"documentId\":\"d\",\"crdtBytes\":\"");
        for _ in 0..100 {
            if writer.write_all(b"AAAA").is_err() {
                return;
            }
            sleep(MS(100));
        }
    });
    // Meanwhile others are served.
    assert_serving(addr);
    let answer = read_answer(&mut BufReader::new(s.try_clone().expect("clone"))).expect("408");
    let waited = started.elapsed();
    assert_eq!(
        answer.status,
        408,
        "{}",
        String::from_utf8_lossy(&answer.body)
    );
    let v = answer.json();
    assert_eq!(v["error"]["code"], "request_timeout", "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("1000 ms")),
        "{v}"
    );
    assert!(
        waited >= MS(900),
        "answered after {waited:?}, before the timeout"
    );
    assert!(waited < MS(5000), "answered after {waited:?}");
    // The rest of the body is not waited for: the connection closes, though bytes keep coming.
    s.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    assert!(closed(&mut s), "the connection closes after the 408");
    let _ = trickle.join();

    // Nothing of the refused body was stored; the server serves on.
    let page = ts.client.ok_get("/v1/slow/stream");
    assert_eq!(page["cursor"], 1, "{page}");
    assert_serving(addr);
}

/// After a refused body the server lingers `client_disconnect_timeout` for the client to
/// close, discarding what it sends, then drops the connection.
#[test]
fn refused_body_lingers_client_disconnect_timeout() {
    let ts = server(ServerSettings {
        body_timeout: MS(300),
        client_disconnect_timeout: MS(3000),
        ..ServerSettings::default()
    });
    let mut s = connect(ts.client.addr);
    s.write_all(insert_head("linger", 1_000_000).as_bytes())
        .expect("send");
    s.write_all(b"{").expect("send");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let answer = read_answer(&mut reader).expect("408");
    assert_eq!(answer.status, 408);
    let answered = Instant::now();
    // Below: 1 s into the 3 s linger, the connection is still open and takes bytes.
    s.set_read_timeout(Some(MS(1000))).expect("timeout");
    s.write_all(&[b'A'; 1024])
        .expect("still open while lingering");
    assert!(!closed(&mut s), "closed 1 s into a 3 s linger");
    // Above: by 3 s plus margin it is closed, though the client never closes its side.
    s.set_read_timeout(Some(MS(5000))).expect("timeout");
    assert!(closed(&mut s), "still open after the linger");
    let lingered = answered.elapsed();
    assert!(lingered >= MS(2500), "closed after {lingered:?}");
    assert!(lingered < MS(7000), "closed after {lingered:?}");
    assert_serving(ts.client.addr);
}

#[test]
fn idle_connections_close_after_keep_alive() {
    let ts = server(ServerSettings {
        keep_alive: MS(1000),
        ..ServerSettings::default()
    });
    let mut s = connect(ts.client.addr);
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    s.write_all(HEALTHZ_HEAD).expect("send");
    assert_eq!(read_answer(&mut reader).expect("first").status, 200);
    // Below: 300 ms idle, the same connection serves the next request.
    sleep(MS(300));
    s.write_all(HEALTHZ_HEAD).expect("send");
    assert_eq!(read_answer(&mut reader).expect("second").status, 200);
    // Above: idle past the keep-alive, the server closes it.
    let idle = Instant::now();
    s.set_read_timeout(Some(MS(5000))).expect("timeout");
    assert!(
        closed(&mut s),
        "an idle connection stays open past keep-alive"
    );
    let waited = idle.elapsed();
    assert!(waited >= MS(400), "closed after {waited:?}");
    assert!(waited < MS(5000), "closed after {waited:?}");

    // Keep-alive 0: every answer closes its connection.
    let ts = server(ServerSettings {
        keep_alive: Duration::ZERO,
        ..ServerSettings::default()
    });
    let mut s = connect(ts.client.addr);
    s.write_all(HEALTHZ_HEAD).expect("send");
    let mut reader = BufReader::new(s.try_clone().expect("clone"));
    let answer = read_answer(&mut reader).expect("answer");
    assert_eq!(answer.status, 200);
    assert_eq!(answer.header("connection"), Some("close"));
    s.set_read_timeout(Some(MS(3000))).expect("timeout");
    assert!(closed(&mut s));
}

/// A collection whose `/state` answer is about `mib` MiB of JSON.
fn big_state(ts: &TestServer, c: &str, mib: usize) {
    let peer = Peer::new(7);
    let piece = "x".repeat(1024 * 1024);
    for i in 0..mib {
        let bytes = peer.append("big", &piece);
        let seq = ts.client.write(c, "insert", &format!("doc-{i}"), &bytes);
        assert_eq!(seq, i as u64 + 1);
    }
}

/// A client that asks for a large answer and never reads it is reset once its receive window
/// stayed closed for about `write_timeout`, so the answer does not sit in memory; a client
/// that reads with pauses shorter than the timeout gets the whole answer.
#[test]
fn a_client_that_stops_reading_is_reset_after_write_timeout() {
    let ts = server(ServerSettings {
        write_timeout: MS(1000),
        ..ServerSettings::default()
    });
    let addr = ts.client.addr;
    // 24 MiB of base64 text: more than the kernel buffers of both ends hold.
    big_state(&ts, "big", 18);
    let full = ts.client.get("/v1/big/state");
    assert_eq!(full.status, 200);
    let full_len = full.body.len();
    assert!(full_len > 20 * 1024 * 1024, "{full_len}");

    let request = b"GET /v1/big/state HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";

    // Below: read 1 MiB, pause 300 ms, and so on: the whole answer arrives.
    let mut s = connect(addr);
    s.write_all(request).expect("send");
    let mut got = 0usize;
    let mut buf = vec![0u8; 1024 * 1024];
    loop {
        let mut piece = 0;
        while piece < buf.len() {
            match s.read(&mut buf[piece..]) {
                Ok(0) => break,
                Ok(n) => piece += n,
                Err(e) => panic!("slow reader lost its answer after {got} bytes: {e}"),
            }
        }
        got += piece;
        if piece < buf.len() {
            break;
        }
        sleep(MS(300));
    }
    assert!(got > full_len, "slow reader got {got} of {full_len} bytes");

    // Above: ask, never read for 6 s (the kernel resets within about 1-2 s of the window
    // closing), then read: the connection was reset before the answer was all sent.
    let mut s = connect(addr);
    s.write_all(request).expect("send");
    sleep(MS(6000));
    s.set_read_timeout(Some(MS(5000))).expect("timeout");
    let mut got = 0usize;
    let outcome = loop {
        match s.read(&mut buf) {
            Ok(0) => break "eof",
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::ConnectionReset => break "reset",
            Err(e) => panic!("after {got} bytes: {e}"),
        }
    };
    assert!(
        got < full_len,
        "a client that stopped reading still got the whole answer ({got} bytes, {outcome})"
    );
    assert_serving(addr);
}

/// `syncedSeq` must be a JSON integer: `-0`, `1.0` and `1e0` are refused with a message that
/// says so (not "must be at most 18446744073709551615"); nothing is recorded.
#[test]
fn synced_seq_must_be_written_as_an_integer() {
    let ts = TestServer::start();
    let peer = Peer::new(3);
    ts.client
        .write("acks", "insert", "d", &peer.append("d", "a"));
    ts.client
        .write("acks", "insert", "d", &peer.append("d", "b"));
    let cases: &[(&str, u16, &str)] = &[
        (
            "-0",
            400,
            "must be a non-negative integer written without a sign",
        ),
        (
            "-0.0",
            400,
            "must be a non-negative integer written without a sign",
        ),
        (
            "0.0",
            400,
            "must be a non-negative integer written without a sign",
        ),
        (
            "1.0",
            400,
            "must be a non-negative integer written without a sign",
        ),
        (
            "1e0",
            400,
            "must be a non-negative integer written without a sign",
        ),
        ("1.5", 400, "must be a whole number"),
        ("-1", 400, "must not be negative"),
        ("-1.0", 400, "must not be negative"),
        (
            "18446744073709551616",
            400,
            "must be at most 18446744073709551615",
        ),
        ("0", 200, ""),
        ("1", 200, ""),
        ("2", 200, ""),
        ("3", 422, "above the collection's current seq"),
    ];
    for (synced, status, phrase) in cases {
        let body = format!(r#"{{"peerId":"p","syncedSeq":{synced}}}"#);
        let r = ts.client.post("/v1/acks/ack", body.as_bytes());
        assert_eq!(r.status, *status, "syncedSeq {synced}: {}", r.text());
        if *status == 400 {
            assert_eq!(r.error_code(), "invalid_argument", "{synced}");
            let message = r.json()["error"]["message"]
                .as_str()
                .unwrap_or("")
                .to_string();
            assert!(message.contains("syncedSeq"), "{synced}: {message}");
            assert!(message.contains(phrase), "{synced}: {message}");
        } else if *status == 422 {
            assert!(r.text().contains(phrase), "{synced}: {}", r.text());
        }
    }
    // Only the three accepted acks were recorded.
    let stats = ts.client.ok_get("/v1/acks/stats");
    assert_eq!(stats["acks"], 3, "{stats}");
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// Names holding bidi overrides or isolates, zero-width characters or line separators are
/// refused as `invalid_name` in every field, and nothing is stored.
#[test]
fn names_with_invisible_formatting_characters_are_refused() {
    let ts = TestServer::start();
    let peer = Peer::new(4);
    let update = b64(&peer.append("d", "x"));
    let spoofers = [
        '\u{202A}', '\u{202E}', '\u{2066}', '\u{2069}', '\u{200B}', '\u{200D}', '\u{200F}',
        '\u{FEFF}', '\u{2028}',
    ];
    for ch in spoofers {
        let bad = format!("admin{ch}txt");
        let cases: Vec<(String, String)> = vec![
            (
                format!("/v1/{}/insert", percent_encode(&bad)),
                json!({ "documentId": "d", "crdtBytes": update }).to_string(),
            ),
            (
                "/v1/names/insert".into(),
                json!({ "documentId": bad, "crdtBytes": update }).to_string(),
            ),
            (
                "/v1/names/insert".into(),
                json!({ "documentId": "d", "crdtBytes": update, "opId": bad }).to_string(),
            ),
            (
                "/v1/names/ack".into(),
                json!({ "peerId": bad, "syncedSeq": 0 }).to_string(),
            ),
        ];
        for (path, body) in cases {
            let r = ts.client.post(&path, body.as_bytes());
            assert_eq!(
                r.status,
                400,
                "U+{:04X} {path} {body}: {}",
                ch as u32,
                r.text()
            );
            assert_eq!(r.error_code(), "invalid_name", "U+{:04X} {path}", ch as u32);
            assert!(
                r.text().contains(&format!("U+{:04X}", ch as u32)),
                "the message names the character: {}",
                r.text()
            );
        }
        let r = ts
            .client
            .get(&format!("/v1/{}/stream", percent_encode(&bad)));
        assert_eq!(r.status, 400, "{}", r.text());
        assert_eq!(r.error_code(), "invalid_name");
    }
    // Nothing was stored; a clean name next to them works.
    let page = ts.client.ok_get("/v1/names/stream");
    assert_eq!(page["cursor"], 0, "{page}");
    assert_eq!(
        ts.client
            .write("names", "insert", "admin-txt", &peer.full_update()),
        1
    );
}

/// Past `max_connections` (per worker) the server stops accepting: a further connection waits,
/// unanswered, until one closes; then it is served.
#[test]
fn connections_past_max_connections_wait_for_one_to_close() {
    let ts = server(ServerSettings {
        workers: 1,
        max_connections: 2,
        keep_alive: Duration::from_secs(60),
        ..ServerSettings::default()
    });
    let addr = ts.client.addr;
    // Below: two keep-alive connections, both served (and held open).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(addr);
        s.write_all(HEALTHZ_HEAD).expect("send");
        let mut reader = BufReader::new(s.try_clone().expect("clone"));
        assert_eq!(read_answer(&mut reader).expect("answer").status, 200);
        held.push(s);
    }
    // Above: a third is not served while both are open.
    let mut third = connect(addr);
    third.write_all(HEALTHZ_HEAD).expect("send");
    third.set_read_timeout(Some(MS(1500))).expect("timeout");
    let mut reader = BufReader::new(third.try_clone().expect("clone"));
    match read_answer(&mut reader) {
        Err(e)
            if matches!(
                e.kind(),
                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
            ) => {}
        other => panic!("a third connection was served past the limit: {other:?}"),
    }
    // One closes: the waiting one is accepted and answered.
    drop(held.pop());
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let answer = read_answer(&mut reader).expect("served once a connection closed");
    assert_eq!(answer.status, 200);
}

/// `--body-limit` and the stream `limit`, at and just past their edges.
#[test]
fn body_limit_and_stream_limit_edges() {
    const LIMIT: usize = 64 * 1024;
    let ts = server(ServerSettings {
        body_limit: LIMIT,
        ..ServerSettings::default()
    });
    let peer = Peer::new(5);
    let json = json!({ "documentId": "d", "crdtBytes": b64(&peer.append("d", "edge")) })
        .to_string()
        .into_bytes();
    // JSON allows trailing whitespace: pad a valid body to exactly the limit, then one more.
    let padded = |len: usize| {
        let mut body = json.clone();
        body.resize(len, b' ');
        body
    };
    let r = ts.client.post("/v1/edges/insert", &padded(LIMIT));
    assert_eq!(r.status, 200, "a body of exactly the limit: {}", r.text());
    let r = ts.client.post("/v1/edges/insert", &padded(LIMIT + 1));
    assert_eq!(r.status, 413, "{}", r.text());
    assert_eq!(r.error_code(), "too_large");

    for (limit, status) in [(0, 400), (1, 200), (1000, 200), (1001, 400)] {
        let r = ts.client.get(&format!("/v1/edges/stream?limit={limit}"));
        assert_eq!(r.status, status, "limit={limit}: {}", r.text());
    }
    assert_eq!(ts.client.ok_get("/v1/edges/stream")["cursor"], 1);
}
