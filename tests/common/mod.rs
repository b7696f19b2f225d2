//! Shared helpers for the end-to-end tests: a tiny blocking HTTP/1.1 client over `TcpStream`
//! (so tests control every byte, including bodies no real client would send), an SSE reader,
//! test servers on port 0 with a temporary data directory, and yrs helpers.

#![allow(dead_code)] // each test binary uses a different subset

pub mod raw_ws;

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use replicate::{RunningServer, ServerSettings};
use replicate_actors::{Config, ManualClock};
use serde_json::Value;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

/// Generous: only there so a broken server fails a test instead of hanging it.
pub const IO_TIMEOUT: Duration = Duration::from_secs(120);

pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    STANDARD
        .decode(s)
        .expect("server sends standard padded base64")
}

/// An HTTP answer.
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl Resp {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }

    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("body is not JSON ({e}): {}", self.text()))
    }

    /// `error.code` of an error answer, checking the error shape on the way.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let code = v["error"]["code"]
            .as_str()
            .unwrap_or_else(|| panic!("no error.code in {v}"));
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "no error.message in {v}"
        );
        code.to_string()
    }
}

/// A blocking client: one connection per request (`Connection: close`).
#[derive(Debug, Clone, Copy)]
pub struct Client {
    pub addr: SocketAddr,
}

fn invalid(msg: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, msg.into())
}

/// Reads a status line and headers.
fn read_head(reader: &mut impl BufRead) -> io::Result<(u16, Vec<(String, String)>)> {
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let status = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| invalid(format!("bad status line {line:?}")))?;
    let mut headers = Vec::new();
    loop {
        line.clear();
        if reader.read_line(&mut line)? == 0 {
            return Err(invalid("connection closed in headers"));
        }
        let l = line.trim_end();
        if l.is_empty() {
            return Ok((status, headers));
        }
        if let Some((k, v)) = l.split_once(':') {
            headers.push((k.trim().to_string(), v.trim().to_string()));
        }
    }
}

/// Reads one chunk of a chunked body; `None` at the last chunk.
fn read_chunk(reader: &mut impl BufRead) -> io::Result<Option<Vec<u8>>> {
    let mut line = String::new();
    if reader.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed in chunked body",
        ));
    }
    let size = usize::from_str_radix(line.trim().split(';').next().unwrap_or(""), 16)
        .map_err(|_| invalid(format!("bad chunk size {line:?}")))?;
    let mut chunk = vec![0; size];
    reader.read_exact(&mut chunk)?;
    let mut crlf = [0; 2];
    reader.read_exact(&mut crlf)?;
    Ok((size > 0).then_some(chunk))
}

impl Client {
    fn connect(&self) -> io::Result<TcpStream> {
        let stream = TcpStream::connect(self.addr)?;
        stream.set_read_timeout(Some(IO_TIMEOUT))?;
        stream.set_write_timeout(Some(IO_TIMEOUT))?;
        Ok(stream)
    }

    /// Sends one request. The body is written on another thread, so a server that answers
    /// before reading it all (413) is still heard.
    pub fn try_request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> io::Result<Resp> {
        let stream = self.connect()?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n",
            self.addr
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        if !body.is_empty() || method == "POST" {
            head.push_str(&format!("Content-Length: {}\r\n", body.len()));
        }
        head.push_str("\r\n");
        let mut writer = stream.try_clone()?;
        let mut out = head.into_bytes();
        let big = body.len() > 64 * 1024;
        let sender = if big {
            writer.write_all(&out)?;
            let body = body.to_vec();
            Some(std::thread::spawn(move || {
                // Errors are expected when the server answers early and closes.
                let _ = writer.write_all(&body);
            }))
        } else {
            out.extend_from_slice(body);
            writer.write_all(&out)?;
            None
        };
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader)?;
        let chunked = headers
            .iter()
            .any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
        let length = headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.parse::<usize>().ok());
        let mut body = Vec::new();
        if chunked {
            while let Some(chunk) = read_chunk(&mut reader)? {
                body.extend_from_slice(&chunk);
            }
        } else if let Some(n) = length {
            body.resize(n, 0);
            reader.read_exact(&mut body)?;
        } else {
            reader.read_to_end(&mut body)?;
        }
        drop(reader);
        if let Some(sender) = sender {
            let _ = sender.join();
        }
        Ok(Resp {
            status,
            headers,
            body,
        })
    }

    pub fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Resp {
        self.try_request(method, path, headers, body)
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    pub fn get(&self, path: &str) -> Resp {
        self.request("GET", path, &[], b"")
    }

    pub fn post(&self, path: &str, body: &[u8]) -> Resp {
        self.request("POST", path, &[("Content-Type", "application/json")], body)
    }

    pub fn post_json(&self, path: &str, body: &Value) -> Resp {
        self.post(path, body.to_string().as_bytes())
    }

    /// POSTs and expects 200, answering the JSON.
    pub fn ok(&self, path: &str, body: &Value) -> Value {
        let r = self.post_json(path, body);
        assert_eq!(r.status, 200, "POST {path} {body}: {}", r.text());
        r.json()
    }

    /// GETs and expects 200, answering the JSON.
    pub fn ok_get(&self, path: &str) -> Value {
        let r = self.get(path);
        assert_eq!(r.status, 200, "GET {path}: {}", r.text());
        r.json()
    }

    /// Inserts (or updates, deletes: `op`) and answers the seq.
    pub fn write(&self, c: &str, op: &str, doc: &str, bytes: &[u8]) -> u64 {
        let v = self.ok(
            &format!("/v1/{c}/{op}"),
            &serde_json::json!({ "documentId": doc, "crdtBytes": b64(bytes) }),
        );
        assert_eq!(v["success"], true, "{v}");
        v["seq"].as_u64().expect("seq is a number")
    }

    /// Reads every change after `cursor`, page by page; answers them and the final cursor.
    pub fn stream_all(&self, c: &str, mut cursor: u64) -> (Vec<Value>, u64) {
        let mut changes = Vec::new();
        loop {
            let page = self.ok_get(&format!("/v1/{c}/stream?cursor={cursor}&limit=1000"));
            changes.extend(
                page["changes"]
                    .as_array()
                    .expect("changes array")
                    .iter()
                    .cloned(),
            );
            cursor = page["cursor"].as_u64().expect("cursor");
            if page["hasMore"] != true {
                return (changes, cursor);
            }
        }
    }

    /// Opens an SSE stream.
    pub fn events(&self, path: &str, last_event_id: Option<u64>) -> SseReader {
        let id = last_event_id.map(|id| id.to_string());
        let mut headers = vec![("Accept", "text/event-stream")];
        if let Some(id) = &id {
            headers.push(("Last-Event-ID", id.as_str()));
        }
        let body = self.open_chunked(path, &headers);
        SseReader {
            status: body.status,
            headers: body.headers,
            reader: body.reader,
            buffer: String::new(),
            last_id: last_event_id,
        }
    }

    /// Sends a GET and reads the answer's head, leaving a streaming body to read chunk by chunk.
    pub fn open_chunked(&self, path: &str, headers: &[(&str, &str)]) -> ChunkedBody {
        let stream = self.connect().expect("connect");
        let mut head = format!("GET {path} HTTP/1.1\r\nHost: {}\r\n", self.addr);
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        (&stream).write_all(head.as_bytes()).expect("send");
        let mut reader = BufReader::new(stream);
        let (status, headers) = read_head(&mut reader).expect("streaming head");
        ChunkedBody {
            status,
            headers,
            reader,
        }
    }
}

/// A streaming (chunked) answer whose head has been read.
pub struct ChunkedBody {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
}

impl ChunkedBody {
    /// The next chunk, `None` at the end of the body.
    pub fn next_chunk(&mut self) -> io::Result<Option<Vec<u8>>> {
        read_chunk(&mut self.reader)
    }

    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One SSE block: an event, an id-only block, or a comment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SseBlock {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: Option<String>,
    pub comment: bool,
}

/// Reads SSE blocks from a chunked response, tracking the last id like `EventSource` does.
pub struct SseReader {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    reader: BufReader<TcpStream>,
    buffer: String,
    /// The last id seen (the `Last-Event-ID` to resume with).
    pub last_id: Option<u64>,
}

impl SseReader {
    pub fn next_block(&mut self) -> io::Result<Option<SseBlock>> {
        loop {
            if let Some(end) = self.buffer.find("\n\n") {
                let raw: String = self.buffer.drain(..end + 2).collect();
                let mut block = SseBlock::default();
                for line in raw.lines() {
                    if line.starts_with(':') {
                        block.comment = true;
                    } else if let Some((field, value)) = line.split_once(':') {
                        let value = value.strip_prefix(' ').unwrap_or(value).to_string();
                        match field {
                            "id" => block.id = Some(value),
                            "event" => block.event = Some(value),
                            "data" => block.data = Some(value),
                            _ => {}
                        }
                    }
                }
                if let Some(id) = &block.id {
                    self.last_id = Some(
                        id.parse()
                            .map_err(|_| invalid(format!("non-numeric id {id}")))?,
                    );
                }
                return Ok(Some(block));
            }
            match read_chunk(&mut self.reader)? {
                Some(chunk) => self
                    .buffer
                    .push_str(&String::from_utf8(chunk).map_err(|_| invalid("non-UTF-8 SSE"))?),
                None => return Ok(None),
            }
        }
    }

    /// The next event carrying data (skipping comments and id-only blocks).
    pub fn next_event(&mut self) -> SseBlock {
        loop {
            match self.next_block().expect("SSE read") {
                Some(b) if b.data.is_some() => return b,
                Some(_) => continue,
                None => panic!("SSE stream ended"),
            }
        }
    }
}

/// A server on 127.0.0.1:0 over a temporary data directory, stopped on drop.
pub struct TestServer {
    pub server: Option<RunningServer>,
    pub client: Client,
    pub clock: Option<ManualClock>,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub fn start() -> Self {
        Self::start_with(|_| {}, ServerSettings::default())
    }

    pub fn start_with(tweak: impl FnOnce(&mut Config), settings: ServerSettings) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::new(dir.path().join("data"));
        tweak(&mut config);
        let server = replicate::spawn_in_thread(config, settings).expect("server starts");
        TestServer {
            client: Client { addr: server.addr },
            server: Some(server),
            clock: None,
            dir,
        }
    }

    /// With a [`ManualClock`] starting at `start_millis`.
    pub fn start_with_clock(tweak: impl FnOnce(&mut Config), start_millis: u64) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::new(dir.path().join("data"));
        tweak(&mut config);
        let clock = ManualClock::new(start_millis);
        let server = replicate::spawn_in_thread_with_clock(
            config,
            ServerSettings::default(),
            Arc::new(clock.clone()),
        )
        .expect("server starts");
        TestServer {
            client: Client { addr: server.addr },
            server: Some(server),
            clock: Some(clock),
            dir,
        }
    }

    pub fn stop(&mut self) {
        if let Some(s) = self.server.take() {
            s.shutdown().expect("graceful shutdown");
        }
    }
}

/// Starts a server on `data_dir` in this process, retrying while the previous server's
/// background threads release the store's lock.
pub fn restart_in_thread(data_dir: &std::path::Path) -> RunningServer {
    let mut last = None;
    for _ in 0..400 {
        match replicate::spawn_in_thread(Config::new(data_dir), ServerSettings::default()) {
            Ok(server) => return server,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!("store did not reopen: {last:?}");
}

/// A yrs peer editing one text root per document name.
pub struct Peer {
    pub doc: Doc,
}

impl Peer {
    pub fn new(client_id: u64) -> Self {
        Peer {
            doc: Doc::with_client_id(client_id),
        }
    }

    /// Appends `s` to text root `root`; answers the v1 update of that edit.
    pub fn append(&self, root: &str, s: &str) -> Vec<u8> {
        let text = self.doc.get_or_insert_text(root);
        let mut txn = self.doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, s);
        txn.encode_update_v1()
    }

    pub fn apply(&self, update: &[u8]) {
        let update = Update::decode_v1(update).expect("server bytes decode as a v1 update");
        self.doc
            .transact_mut()
            .apply_update(update)
            .expect("update applies");
    }

    pub fn text(&self, root: &str) -> String {
        let text = self.doc.get_or_insert_text(root);
        let txn = self.doc.transact();
        text.get_string(&txn)
    }

    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    pub fn full_update(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }
}

/// The PostgreSQL URL for tests that need one (`REPLICATE_TEST_POSTGRES`; `eval "$(bash
/// .ci/postgres.sh start)"` starts a throwaway server). Without it the test says loudly that it
/// was skipped and answers `None`; under `CI=true` it fails instead.
pub fn postgres_url(test: &str) -> Option<String> {
    match std::env::var("REPLICATE_TEST_POSTGRES") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("{test}: REPLICATE_TEST_POSTGRES is not set; CI must start PostgreSQL")
        }
        _ => {
            eprintln!(
                "SKIPPED {test}: REPLICATE_TEST_POSTGRES is not set \
                 (run `eval \"$(bash .ci/postgres.sh start)\"` first)"
            );
            None
        }
    }
}

/// A schema name no other test uses.
pub fn fresh_schema(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{prefix}_{}_{nanos:x}", std::process::id())
}

/// Starts the `replicate-server` binary on a free loopback port with `args` and answers it
/// with the address it printed. Its stderr is drained for its whole life.
pub fn spawn_server(args: &[&str]) -> (std::process::Child, SocketAddr) {
    use std::process::{Command, Stdio};
    let mut child = Command::new(env!("CARGO_BIN_EXE_replicate-server"))
        .args(["--bind", "127.0.0.1:0"])
        .args(args)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("replicate-server starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            // Echo what looks like a crash, so a failing test shows why.
            if line.contains("panic") || line.contains("overflow") || line.contains("abort") {
                eprintln!("replicate-server: {line}");
            }
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\u{1b}')
                    .collect();
                if let Some(tx) = tx.take() {
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("printed address parses"));
                }
            }
        }
    });
    let addr = rx
        .recv_timeout(IO_TIMEOUT)
        .expect("server printed its address");
    (child, addr)
}
