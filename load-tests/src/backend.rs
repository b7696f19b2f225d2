//! How a peer reaches the service: over HTTP (the wire contract, v1) or by calling the actors
//! in-process ([`replicate_actors::Replicate`], no HTTP). Both speak the same small vocabulary
//! ([`Backend`]), so a scenario runs unchanged against either; the in-process run is the floor
//! the HTTP run is measured against.
//!
//! HTTP body bytes are counted in both directions ([`WireCounters`]), and the payloads of
//! websocket frames received ([`crate::ws`]); headers are not.
//!
//! An HTTP client reads `stream` and `events` as JSON/SSE (the default) or in the binary form
//! of [`replicate::wire_binary`] ([`Backend::with_binary_wire`]), so a scenario can report
//! both.

use std::cell::Cell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use futures::{FutureExt, Stream, StreamExt};
use replicate::wire::{
    AckAnswer, AckBody, BatchAnswer, BatchBody, BatchResult, BatchWrite, CompactAnswer,
    CompactBody, RecoveryAnswer, RecoveryBody, StreamAnswer, WireChange, WriteAnswer, WriteBody,
    WriteOp,
};
use replicate::wire_binary::{self, Decoder, Record};
use replicate_actors::{CompactRequest, OperationType, Replicate, StreamRequest, Write};
use serde::de::DeserializeOwned;
use serde::Serialize;
use serde_json::Value;

use crate::auth::Credentials;
use crate::targets::Targets;

/// One change as a peer sees it: the actors' own type, whichever backend delivered it.
pub use replicate_actors::Change;

/// One stream page.
#[derive(Debug, Clone, Default)]
pub struct Page {
    pub changes: Vec<Change>,
    pub cursor: u64,
    pub has_more: bool,
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, Default)]
pub struct Compacted {
    pub removed: u64,
    pub retained: u64,
    pub snapshot_seq: u64,
}

/// A v1 update and the cursor it corresponds to (recovery and state answers).
#[derive(Debug, Clone, Default)]
pub struct StateAt {
    pub update: Vec<u8>,
    pub cursor: u64,
}

/// Body bytes sent and received over HTTP, shared by every clone of a client.
#[derive(Debug, Clone, Default)]
pub struct WireCounters {
    pub sent: Rc<Cell<u64>>,
    pub received: Rc<Cell<u64>>,
}

impl WireCounters {
    pub fn total(&self) -> u64 {
        self.sent.get() + self.received.get()
    }
    fn add_sent(&self, n: usize) {
        self.sent.set(self.sent.get() + n as u64);
    }
    pub fn add_received(&self, n: usize) {
        self.received.set(self.received.get() + n as u64);
    }
}

/// An HTTP client for one server of the run's [`Targets`], speaking the wire contract.
#[derive(Clone)]
pub struct Http {
    client: awc::Client,
    /// The server this client talks to: one of `targets`.
    base: Rc<str>,
    targets: Rc<Targets>,
    pub wire: WireCounters,
    /// Sent as `Authorization: Bearer` on every request when the server wants a token.
    credentials: Option<Rc<Credentials>>,
    /// Read `stream` and `events` in the binary form instead of JSON/SSE.
    binary: bool,
}

/// Longest answer body accepted (a catch-up page of 1000 changes, a whole-document state).
const MAX_BODY: usize = 256 * 1024 * 1024;

impl Http {
    /// A client for the first of `targets` ([`Http::for_peer`] picks another), with no
    /// connection limit: a scenario holds one connection per long-polling subscriber.
    pub fn new(targets: Targets) -> Http {
        // Pooled connections idle for 2 s are dropped: the server closes idle keep-alive
        // connections after 5 s, and reusing one it has just closed fails the request.
        let connector = awc::Connector::new()
            .limit(0)
            .timeout(Duration::from_secs(10))
            .conn_keep_alive(Duration::from_secs(2));
        let client = awc::Client::builder()
            .connector(connector)
            .timeout(Duration::from_secs(60))
            .finish();
        Http {
            client,
            base: targets.first().into(),
            targets: Rc::new(targets),
            wire: WireCounters::default(),
            credentials: None,
            binary: false,
        }
    }

    /// This client, sending `credentials` with every request (and acking as the token's
    /// subject's devices).
    pub fn with_credentials(self, credentials: Option<Credentials>) -> Http {
        Http {
            credentials: credentials.map(Rc::new),
            ..self
        }
    }

    /// This client talking to the target of peer `i` (see [`Targets::for_peer`]); connection
    /// pool, wire counters and token stay shared.
    pub fn for_peer(&self, i: u64) -> Http {
        Http {
            base: self.targets.for_peer(i).into(),
            ..self.clone()
        }
    }

    /// `req` with the token, if any.
    fn authorized(&self, req: awc::ClientRequest) -> awc::ClientRequest {
        match &self.credentials {
            Some(c) => req.insert_header(("authorization", c.header())),
            None => req,
        }
    }

    /// The peer id `peer` acks as: itself, or with a token one of its subject's devices.
    fn peer_id(&self, peer: &str) -> String {
        match &self.credentials {
            Some(c) => c.peer_id(peer),
            None => peer.to_string(),
        }
    }

    fn url(&self, c: &str, route: &str) -> String {
        format!("{}/v1/{}/{}", self.base, c, route)
    }

    /// POSTs `body` (a wire type of `replicate::wire`) and reads the answer as `A`.
    async fn post<B: Serialize, A: DeserializeOwned>(&self, url: &str, body: &B) -> Result<A> {
        let body = serde_json::to_vec(body)?;
        self.wire.add_sent(body.len());
        let mut res = self
            .authorized(self.client.post(url))
            .insert_header(("content-type", "application/json"))
            .send_body(body)
            .await
            .map_err(|e| anyhow!("POST {url}: {e}"))?;
        let bytes = res
            .body()
            .limit(MAX_BODY)
            .await
            .map_err(|e| anyhow!("POST {url}: body: {e}"))?;
        self.wire.add_received(bytes.len());
        let answer = decode_answer(res.status(), &bytes, url)?;
        serde_json::from_value(answer).with_context(|| format!("POST {url}: answer"))
    }

    async fn get(&self, url: &str, timeout: Duration) -> Result<Value> {
        let (status, bytes) = self.get_raw(url, timeout, "application/json").await?;
        decode_answer(status, &bytes, url)
    }

    /// A GET answer's status and body, as `accept` asked for.
    async fn get_raw(
        &self,
        url: &str,
        timeout: Duration,
        accept: &str,
    ) -> Result<(awc::http::StatusCode, bytes::Bytes)> {
        let mut res = self
            .authorized(self.client.get(url))
            .insert_header(("accept", accept))
            .timeout(timeout)
            .send()
            .await
            .map_err(|e| anyhow!("GET {url}: {e}"))?;
        let bytes = res
            .body()
            .limit(MAX_BODY)
            .await
            .map_err(|e| anyhow!("GET {url}: body: {e}"))?;
        self.wire.add_received(bytes.len());
        Ok((res.status(), bytes))
    }

    /// The upgrade request of `doc`'s y-websocket endpoint, with the token as `?token=` (how
    /// a browser, which cannot set headers on a WebSocket, sends it), accepting frames as
    /// large as any answer body.
    pub fn websocket(&self, c: &str, doc: &str) -> awc::ws::WebsocketsRequest {
        let mut url = self.url(c, &format!("ws/{doc}"));
        if let Some(credentials) = &self.credentials {
            url.push_str("?token=");
            url.push_str(&credentials.token);
        }
        self.client.ws(url).max_frame_size(MAX_BODY)
    }

    /// `GET /healthz` answers 200.
    pub async fn healthy(&self) -> bool {
        let url = format!("{}/healthz", self.base);
        matches!(self.client.get(url).send().await, Ok(r) if r.status().is_success())
    }
}

fn decode_answer(status: awc::http::StatusCode, bytes: &[u8], url: &str) -> Result<Value> {
    let value: Value = serde_json::from_slice(bytes).with_context(|| {
        format!(
            "{url}: {status}: answer is not JSON: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        )
    })?;
    if !status.is_success() {
        let code = value
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("?");
        let message = value
            .pointer("/error/message")
            .and_then(Value::as_str)
            .unwrap_or("?");
        bail!("{url}: {status} {code}: {message}");
    }
    Ok(value)
}

fn b64(bytes: &[u8]) -> String {
    B64.encode(bytes)
}

/// A wire change as the load tool applies it.
fn into_change(change: WireChange) -> Result<Change> {
    change
        .into_change()
        .map_err(|e| anyhow!("change: {}: {}", e.code, e.message))
}

/// The body of `insert`, `update` and `delete` (and of a batch write).
fn write_body(doc: &str, bytes: &[u8], op_id: Option<String>) -> WriteBody {
    WriteBody {
        document_id: doc.to_string(),
        crdt_bytes: b64(bytes),
        op_id,
    }
}

/// The service, over HTTP or in-process.
#[derive(Clone)]
pub enum Backend {
    Http(Http),
    Actor(Replicate),
    /// No service: a peer that only edits (the floors' update generator). Every call fails.
    Offline,
}

impl Backend {
    pub fn label(&self) -> &'static str {
        match self {
            Backend::Http(_) => "http",
            Backend::Actor(_) => "actor",
            Backend::Offline => "offline",
        }
    }

    /// The backend peer `i` uses: over HTTP, the client of its target (see
    /// [`Targets::for_peer`]); in-process, this one.
    pub fn for_peer(&self, i: u64) -> Backend {
        match self {
            Backend::Http(h) => Backend::Http(h.for_peer(i)),
            other => other.clone(),
        }
    }

    /// This backend reading `stream` and `events` in the binary form (in-process: unchanged,
    /// there is no wire).
    pub fn with_binary_wire(&self) -> Backend {
        match self {
            Backend::Http(h) => Backend::Http(Http {
                binary: true,
                ..h.clone()
            }),
            other => other.clone(),
        }
    }

    /// Whether `stream` and `events` are read in the binary form.
    pub fn binary_wire(&self) -> bool {
        matches!(self, Backend::Http(h) if h.binary)
    }

    /// HTTP body bytes so far (0 in-process).
    pub fn wire_bytes(&self) -> u64 {
        match self {
            Backend::Http(h) => h.wire.total(),
            Backend::Actor(_) | Backend::Offline => 0,
        }
    }

    /// Stores one write; answers its seq.
    pub async fn write(
        &self,
        c: &str,
        op: OperationType,
        doc: &str,
        bytes: &[u8],
        op_id: Option<&str>,
    ) -> Result<u64> {
        match self {
            Backend::Http(h) => {
                let body = write_body(doc, bytes, op_id.map(str::to_string));
                let answer: WriteAnswer = h.post(&h.url(c, op.as_str()), &body).await?;
                Ok(answer.seq)
            }
            Backend::Offline => bail!("offline"),
            Backend::Actor(r) => {
                let write = Write {
                    document_id: doc.to_string(),
                    bytes: bytes.to_vec(),
                    op_id: op_id.map(str::to_string),
                };
                Ok(r.write(c, op, write).await?.seq)
            }
        }
    }

    /// Stores `writes` (operation, document, update, op id) in one `batch` request; answers
    /// each write's seq or its refusal, in order.
    pub async fn write_batch(
        &self,
        c: &str,
        writes: &[(OperationType, String, Vec<u8>, String)],
    ) -> Result<Vec<Result<u64>>> {
        match self {
            Backend::Http(h) => {
                let writes = writes
                    .iter()
                    .map(|(op, doc, bytes, op_id)| {
                        let op = match op {
                            OperationType::Insert => Ok(WriteOp::Insert),
                            OperationType::Update => Ok(WriteOp::Update),
                            OperationType::Delete => Ok(WriteOp::Delete),
                            OperationType::Snapshot => Err(anyhow!("a snapshot is not a write")),
                        }?;
                        let write = write_body(doc, bytes, Some(op_id.clone()));
                        Ok(BatchWrite { op, write })
                    })
                    .collect::<Result<_>>()?;
                let answer: BatchAnswer = h.post(&h.url(c, "batch"), &BatchBody { writes }).await?;
                Ok(answer
                    .results
                    .into_iter()
                    .map(|r| match r {
                        BatchResult::Stored { seq, .. } => Ok(seq),
                        BatchResult::Refused { error } => Err(anyhow!(
                            "batch write refused: {}: {}",
                            error.code,
                            error.message
                        )),
                    })
                    .collect())
            }
            Backend::Offline => bail!("offline"),
            Backend::Actor(r) => {
                let writes = writes
                    .iter()
                    .map(|(op, doc, bytes, op_id)| {
                        let write = Write {
                            document_id: doc.clone(),
                            bytes: bytes.clone(),
                            op_id: Some(op_id.clone()),
                        };
                        (*op, write)
                    })
                    .collect();
                Ok(r.write_batch(c, writes)
                    .await?
                    .into_iter()
                    .map(|w| w.map(|w| w.seq).map_err(anyhow::Error::from))
                    .collect())
            }
        }
    }

    /// One stream page after `cursor`; waits up to `wait` for a commit when there is nothing new.
    pub async fn stream(&self, c: &str, cursor: u64, limit: usize, wait: Duration) -> Result<Page> {
        match self {
            Backend::Http(h) => {
                let url = format!(
                    "{}?cursor={cursor}&limit={limit}&waitMs={}",
                    h.url(c, "stream"),
                    wait.as_millis()
                );
                let timeout = wait + Duration::from_secs(30);
                if h.binary {
                    let (status, body) = h.get_raw(&url, timeout, wire_binary::MEDIA_TYPE).await?;
                    if !status.is_success() {
                        decode_answer(status, &body, &url)?;
                    }
                    let page = wire_binary::decode_page(&body)
                        .with_context(|| format!("{url}: binary page"))?;
                    return Ok(Page {
                        changes: page.changes,
                        cursor: page.cursor,
                        has_more: page.has_more,
                    });
                }
                let answer = h.get(&url, timeout).await?;
                let page: StreamAnswer = serde_json::from_value(answer).context("stream answer")?;
                Ok(Page {
                    changes: page
                        .changes
                        .into_iter()
                        .map(into_change)
                        .collect::<Result<_>>()?,
                    cursor: page.cursor,
                    has_more: page.has_more,
                })
            }
            Backend::Offline => bail!("offline"),
            Backend::Actor(r) => {
                let req = StreamRequest {
                    cursor,
                    limit,
                    size_threshold: None,
                    wait,
                };
                let page = r.stream(c, req).await?;
                Ok(Page {
                    changes: page
                        .changes
                        .into_iter()
                        .map(|ch| Change {
                            document_id: ch.document_id,
                            seq: ch.seq,
                            bytes: ch.bytes,
                            operation: ch.operation,
                        })
                        .collect(),
                    cursor: page.cursor,
                    has_more: page.has_more,
                })
            }
        }
    }

    /// Records that `peer` has synced through `synced`.
    pub async fn ack(&self, c: &str, peer: &str, synced: u64) -> Result<u64> {
        match self {
            Backend::Http(h) => {
                let body = AckBody {
                    peer_id: h.peer_id(peer),
                    synced_seq: synced.into(),
                };
                let answer: AckAnswer = h.post(&h.url(c, "ack"), &body).await?;
                Ok(answer.last_synced_seq)
            }
            Backend::Offline => bail!("offline"),
            Backend::Actor(r) => Ok(r.ack(c, peer, synced).await?),
        }
    }

    /// Compacts one document; peers not seen within `peer_timeout` do not hold it back.
    pub async fn compact(
        &self,
        c: &str,
        doc: &str,
        peer_timeout: Option<Duration>,
    ) -> Result<Compacted> {
        match self {
            Backend::Http(h) => {
                let body = CompactBody {
                    document_id: doc.to_string(),
                    snapshot_bytes: None,
                    state_vector: None,
                    peer_timeout: peer_timeout.map(|t| (t.as_millis() as u64).into()),
                };
                let a: CompactAnswer = h.post(&h.url(c, "compact"), &body).await?;
                Ok(Compacted {
                    removed: a.removed,
                    retained: a.retained,
                    snapshot_seq: a.snapshot_seq,
                })
            }
            Backend::Offline => bail!("offline"),
            Backend::Actor(r) => {
                let req = CompactRequest {
                    peer_timeout,
                    ..CompactRequest::document(doc)
                };
                let done = r.compact(c, req).await?;
                Ok(Compacted {
                    removed: done.removed,
                    retained: done.retained,
                    snapshot_seq: done.snapshot_seq,
                })
            }
        }
    }

    /// What a peer holding `state_vector` lacks of `doc` (or of the whole collection).
    pub async fn recovery(
        &self,
        c: &str,
        state_vector: &[u8],
        doc: Option<&str>,
    ) -> Result<StateAt> {
        match self {
            Backend::Http(h) => {
                let body = RecoveryBody {
                    state_vector: b64(state_vector),
                    document_id: doc.map(str::to_string),
                };
                let a: RecoveryAnswer = h.post(&h.url(c, "recovery"), &body).await?;
                Ok(StateAt {
                    update: B64.decode(&a.diff).context("recovery diff is not base64")?,
                    cursor: a.cursor,
                })
            }
            Backend::Offline => bail!("offline"),
            Backend::Actor(r) => {
                let s = r.recovery(c, state_vector, doc).await?;
                Ok(StateAt {
                    update: s.update,
                    cursor: s.cursor,
                })
            }
        }
    }

    /// Opens a change feed from `cursor`: SSE over HTTP, a long-poll loop in-process.
    pub async fn events(&self, c: &str, cursor: u64) -> Result<Events> {
        match self {
            Backend::Http(h) => {
                let url = format!("{}?cursor={cursor}", h.url(c, "events"));
                let accept = if h.binary {
                    wire_binary::MEDIA_TYPE
                } else {
                    "text/event-stream"
                };
                let res = h
                    .authorized(h.client.get(&url))
                    .insert_header(("accept", accept))
                    .timeout(Duration::from_secs(3600))
                    .send()
                    .await
                    .map_err(|e| anyhow!("GET {url}: {e}"))?;
                if !res.status().is_success() {
                    bail!("GET {url}: {}", res.status());
                }
                let body: SseBody = Box::pin(res.map(|chunk| chunk.map(|b| b.to_vec())));
                if h.binary {
                    return Ok(Events::Binary {
                        body,
                        decoder: Decoder::new(MAX_BODY),
                        wire: h.wire.clone(),
                    });
                }
                Ok(Events::Sse {
                    body,
                    buf: Vec::new(),
                    at: 0,
                    wire: h.wire.clone(),
                })
            }
            Backend::Offline => bail!("offline"),
            Backend::Actor(_) => Ok(Events::Poll {
                backend: self.clone(),
                collection: c.to_string(),
                cursor,
                ready: VecDeque::new(),
            }),
        }
    }
}

/// An SSE response body, chunk by chunk.
type SseBody = Pin<Box<dyn Stream<Item = std::result::Result<Vec<u8>, awc::error::PayloadError>>>>;

/// A change feed: one change at a time, in seq order (snapshots first where the service sends
/// them).
pub enum Events {
    Sse {
        body: SseBody,
        buf: Vec<u8>,
        /// Where the next event starts in `buf`.
        at: usize,
        wire: WireCounters,
    },
    /// The binary feed: PAGE records are skipped (a peer's cursor follows the deltas it
    /// applies, as with SSE), CHANGE records are the changes.
    Binary {
        body: SseBody,
        decoder: Decoder,
        wire: WireCounters,
    },
    Poll {
        backend: Backend,
        collection: String,
        cursor: u64,
        ready: VecDeque<Change>,
    },
}

impl Events {
    /// A change already received and buffered, without waiting for more bytes.
    fn buffered(&mut self) -> Result<Option<Change>> {
        match self {
            Events::Sse { buf, at, .. } => {
                while let Some(event) = take_event(buf, at) {
                    if let Some(data) = event {
                        let change: WireChange =
                            serde_json::from_str(&data).context("SSE data is not a change")?;
                        return into_change(change).map(Some);
                    }
                }
                Ok(None)
            }
            Events::Binary { decoder, .. } => loop {
                match decoder.next_record().context("binary feed")? {
                    Some(Record::Change(change)) => return Ok(Some(change)),
                    Some(Record::Page(_)) => continue,
                    Some(Record::Error(e)) => bail!("binary feed ended with {e}"),
                    None => return Ok(None),
                }
            },
            Events::Poll { ready, .. } => Ok(ready.pop_front()),
        }
    }

    /// Adds a received body chunk to what [`Events::buffered`] takes changes from.
    fn absorb(&mut self, chunk: &[u8]) {
        match self {
            Events::Sse { buf, at, .. } => {
                // Drop what was consumed before appending, so the buffer stays one event plus
                // the chunks received and taking an event never moves the rest.
                buf.drain(..*at);
                *at = 0;
                buf.extend(chunk.iter().copied().filter(|b| *b != b'\r'));
            }
            Events::Binary { decoder, .. } => decoder.push(chunk),
            Events::Poll { .. } => {}
        }
    }

    /// The next change, or `None` when `wait` passes first (or the feed ended).
    pub async fn next(&mut self, wait: Duration) -> Result<Option<Change>> {
        loop {
            if let Some(change) = self.buffered()? {
                return Ok(Some(change));
            }
            match self {
                Events::Sse { body, wire, .. } | Events::Binary { body, wire, .. } => {
                    let Some(chunk) = next_chunk(body, wire, wait).await? else {
                        return Ok(None);
                    };
                    self.absorb(&chunk);
                }
                Events::Poll {
                    backend,
                    collection,
                    cursor,
                    ready,
                } => {
                    let page = backend.stream(collection, *cursor, 1000, wait).await?;
                    *cursor = page.cursor;
                    ready.extend(page.changes);
                    return Ok(ready.pop_front());
                }
            }
        }
    }

    /// The next change and every other one already received (at most `max`), so a client can
    /// apply what arrived together in one go; empty when `wait` passes first.
    pub async fn next_batch(&mut self, wait: Duration, max: usize) -> Result<Vec<Change>> {
        let mut batch: Vec<Change> = self.next(wait).await?.into_iter().collect();
        while batch.len() < max {
            match self.buffered()? {
                Some(change) => batch.push(change),
                None if self.take_ready_chunk()? => {}
                None => break,
            }
        }
        Ok(batch)
    }

    /// Moves a body chunk that has already arrived into the buffer, without waiting: answers
    /// whether there was one. So a batch holds everything received, not just one chunk's
    /// worth (a chunk is a few dozen changes; a client applies fewer, larger transactions).
    fn take_ready_chunk(&mut self) -> Result<bool> {
        let (body, wire) = match self {
            Events::Sse { body, wire, .. } | Events::Binary { body, wire, .. } => (body, wire),
            Events::Poll { .. } => return Ok(false),
        };
        let Some(Some(chunk)) = body.next().now_or_never() else {
            return Ok(false);
        };
        let chunk = chunk.map_err(|e| anyhow!("feed body: {e}"))?;
        wire.add_received(chunk.len());
        self.absorb(&chunk);
        Ok(true)
    }
}

/// The next chunk of a feed body, counted; `None` when `wait` passes or the body ends.
async fn next_chunk(
    body: &mut SseBody,
    wire: &WireCounters,
    wait: Duration,
) -> Result<Option<Vec<u8>>> {
    match tokio::time::timeout(wait, body.next()).await {
        Err(_) | Ok(None) => Ok(None),
        Ok(Some(chunk)) => {
            let chunk = chunk.map_err(|e| anyhow!("feed body: {e}"))?;
            wire.add_received(chunk.len());
            Ok(Some(chunk))
        }
    }
}

/// Takes one complete SSE event from `buf` at `at` (moving `at` past it): `Some(Some(data))`
/// for an event with data, `Some(None)` for one without (a comment or keep-alive), `None` if
/// none is complete. Carriage returns were dropped on the way in, so `\r\n` line ends work too.
fn take_event(buf: &[u8], at: &mut usize) -> Option<Option<String>> {
    let rest = &buf[*at..];
    let end = rest.windows(2).position(|w| w == b"\n\n")?;
    *at += end + 2;
    let text = String::from_utf8_lossy(&rest[..end + 2]);
    let mut data: Option<String> = None;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("data:") {
            let rest = rest.strip_prefix(' ').unwrap_or(rest);
            match &mut data {
                Some(d) => {
                    d.push('\n');
                    d.push_str(rest);
                }
                None => data = Some(rest.to_string()),
            }
        }
    }
    Some(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sse_events_are_split_on_blank_lines() {
        let mut buf = b": keep-alive\n\nid: 3\ndata: {\"a\":1}\n\nid: 4\ndata: {".to_vec();
        let mut at = 0;
        assert_eq!(take_event(&buf, &mut at), Some(None));
        assert_eq!(
            take_event(&buf, &mut at),
            Some(Some("{\"a\":1}".to_string()))
        );
        assert_eq!(take_event(&buf, &mut at), None);
        buf.extend_from_slice(b"}\n\n");
        assert_eq!(take_event(&buf, &mut at), Some(Some("{".to_string() + "}")));
        assert_eq!(at, buf.len());
    }
}
