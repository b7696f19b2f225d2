//! A y-websocket subscriber: what a Yjs editor's `WebsocketProvider` does, in Rust, for the
//! `fanout` scenario. One socket per document (`GET /v1/{c}/ws/{doc}?token=`, over awc), the
//! y-protocols handshake with yrs's own `sync` messages (the server's step 1 answered with a
//! step 2, our own step 1 answered by the server's step 2), then every `update` message
//! applied to the peer's replica of the document. Pings are answered; a socket that closes or
//! fails is opened again, and its resync (our state vector, the server's diff) brings what
//! was missed.
//!
//! # Matching deliveries to writes
//! Websocket messages carry no seq. Every edit of a [`Peer`] sets a map key unique to it (see
//! [`crate::peer`]), so applying a delivered update and reading which keys it added
//! ([`Replica::apply_all_keys`](crate::peer::Replica::apply_all_keys), yrs's map event)
//! names the writes it holds. Each key is logged as a [`Receipt`] with the time the replica
//! held it; the scenario looks the key up among the writers' pushes. Frames that arrived
//! together are applied in one transaction (as an SSE reader applies a batch), and a resync's
//! step 2 may hold many keys: each gets that one receipt time.
//!
//! That apply is the costly part, though, and 200 subscribers' applies on the load
//! generator's one thread were what limited the fan-out run. So an `update` message whose
//! bytes a writer noted ([`SentUpdates`]: the service broadcasts an update's bytes as pushed)
//! is timed on arrival and kept, to be applied in one go when the socket's work is done (or
//! before anything that needs the replica current: a step 1 to answer, an update not noted).
//! The checks are unchanged: every key held, replicas identical to the server at the end.

use std::cell::{Cell, OnceCell, RefCell};
use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context as _, Result};
use awc::ws::{Frame, Message as WsMessage};
use futures::{FutureExt as _, Sink, SinkExt as _, StreamExt as _};
use yrs::sync::{Message, SyncMessage};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::StateVector;

use crate::backend::Http;
use crate::metrics::Metrics;
use crate::peer::{Peer, SentUpdates};

/// How long a socket waits for a frame before it looks again at whether it is done.
const TICK: Duration = Duration::from_millis(250);
/// Most frames taken from a socket at once: what arrived together is applied in one
/// transaction, as SSE and long-poll readers apply a batch or a page.
const MAX_BATCH: usize = 256;
/// Pause before a failed socket is opened again.
const RECONNECT_AFTER: Duration = Duration::from_millis(100);

/// One write a subscriber came to hold: its edit key and when.
#[derive(Debug, Clone)]
pub struct Receipt {
    pub key: String,
    pub at: Instant,
}

/// A websocket subscriber once it stopped: its replicas (in `peer`) and what it received.
pub struct WsSubscriber {
    pub peer: Peer,
    /// Every edit key received, in the order held.
    pub receipts: Vec<Receipt>,
    /// Sockets that closed or failed and were opened again.
    pub reconnects: u64,
}

/// The edit keys, per document, a subscriber must hold before it stops: set once by the
/// scenario when its writers are done (until then subscribers keep following).
#[derive(Clone, Default)]
pub struct Expected(Rc<OnceCell<HashMap<String, Vec<String>>>>);

impl Expected {
    /// Publishes the keys; a second call changes nothing.
    pub fn set(&self, keys: HashMap<String, Vec<String>>) {
        let _ = self.0.set(keys);
    }

    fn of(&self, doc: &str) -> Option<&[String]> {
        self.0
            .get()
            .map(|all| all.get(doc).map_or(&[][..], Vec::as_slice))
    }
}

/// What every subscriber's sockets share.
pub struct Follow {
    pub collection: String,
    pub docs: Rc<Vec<String>>,
    pub expected: Expected,
    /// Stop here even if keys are missing (the verdict then says so).
    pub deadline: Instant,
    /// Counts sockets through their first sync, so the scenario can start writing once
    /// every subscriber is listening.
    pub synced: Rc<Cell<usize>>,
    pub metrics: Metrics,
    /// The operation the handshakes are timed as and errors counted under.
    pub op: &'static str,
    /// The writers' updates by bytes (see the module docs).
    pub sent: SentUpdates,
}

/// One subscriber while it runs: the peer whose replicas its sockets update.
struct Subscriber<'a> {
    follow: &'a Follow,
    /// The client of the peer's server.
    http: Http,
    peer: RefCell<Peer>,
    receipts: RefCell<Vec<Receipt>>,
    reconnects: Cell<u64>,
    /// Updates held but not yet applied, per document (see the module docs).
    deferred: RefCell<HashMap<String, Vec<Vec<u8>>>>,
}

/// Follows every document of `follow.docs` over its own socket (through `http`, the peer's
/// server) until each holds its expected keys or the deadline passes. Answers the peer and
/// what it received.
pub async fn subscribe(peer: Peer, http: Http, follow: Rc<Follow>) -> WsSubscriber {
    let sub = Subscriber {
        follow: &follow,
        http,
        peer: RefCell::new(peer),
        receipts: RefCell::default(),
        reconnects: Cell::new(0),
        deferred: RefCell::default(),
    };
    futures::future::join_all(follow.docs.iter().map(|doc| sub.follow_doc(doc))).await;
    for doc in follow.docs.iter() {
        if let Err(e) = sub.catch_up(doc) {
            follow.metrics.error(follow.op, &e);
        }
    }
    WsSubscriber {
        peer: sub.peer.into_inner(),
        receipts: sub.receipts.into_inner(),
        reconnects: sub.reconnects.get(),
    }
}

/// One document's progress, kept across reconnects.
#[derive(Default)]
struct DocProgress {
    held: HashSet<String>,
    /// Expected keys not yet held, once the expectation is known.
    missing: Option<HashSet<String>>,
    /// Whether this document's socket has synced once (counted in [`Follow::synced`]).
    synced: bool,
}

impl DocProgress {
    fn hold(&mut self, key: &str) {
        if let Some(missing) = &mut self.missing {
            missing.remove(key);
        }
        self.held.insert(key.to_string());
    }

    /// Whether every expected key is held (false while the expectation is unknown).
    fn done(&mut self, expected: Option<&[String]>) -> bool {
        if self.missing.is_none() {
            if let Some(keys) = expected {
                let missing = keys.iter().filter(|k| !self.held.contains(*k));
                self.missing = Some(missing.cloned().collect());
            }
        }
        self.missing.as_ref().is_some_and(HashSet::is_empty)
    }
}

impl Subscriber<'_> {
    /// Keeps a socket to `doc` open (reopening it after a failure) until done or too late.
    async fn follow_doc(&self, doc: &str) {
        let f = self.follow;
        let mut progress = DocProgress::default();
        while Instant::now() < f.deadline {
            match self.session(doc, &mut progress).await {
                Ok(()) => break,
                Err(e) => {
                    f.metrics.error(f.op, &e);
                    self.reconnects.set(self.reconnects.get() + 1);
                    tokio::time::sleep(RECONNECT_AFTER).await;
                }
            }
        }
    }

    /// One socket's life: connect, sync, apply updates until done (`Ok`) or it fails.
    async fn session(&self, doc: &str, progress: &mut DocProgress) -> Result<()> {
        let f = self.follow;
        let started = Instant::now();
        let (_, mut socket) = self
            .http
            .websocket(&f.collection, doc)
            .connect()
            .await
            .map_err(|e| anyhow!("websocket {doc}: connect: {e}"))?;
        let sv = self.peer.borrow_mut().know(doc).state_vector();
        let sv = StateVector::decode_v1(&sv).context("own state vector")?;
        send(&mut socket, binary(SyncMessage::SyncStep1(sv))).await?;
        loop {
            if progress.done(f.expected.of(doc)) {
                let _ = socket.send(WsMessage::Close(None)).await;
                return Ok(());
            }
            let left = f.deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Ok(());
            }
            let first = match tokio::time::timeout(left.min(TICK), socket.next()).await {
                Err(_) => continue,
                Ok(None) => bail!("websocket {doc}: ended without a close frame"),
                Ok(Some(frame)) => frame.map_err(|e| anyhow!("websocket {doc}: {e}"))?,
            };
            let mut batch = Batch::default();
            self.frame(doc, first, &mut batch)?;
            // What else has arrived, taken without waiting (an ended socket shows next time).
            while batch.frames < MAX_BATCH {
                match socket.next().now_or_never() {
                    Some(Some(frame)) => {
                        let frame = frame.map_err(|e| anyhow!("websocket {doc}: {e}"))?;
                        self.frame(doc, frame, &mut batch)?;
                    }
                    _ => break,
                }
            }
            for reply in batch.replies {
                send(&mut socket, reply).await?;
            }
            self.hold(doc, &batch.updates, progress)?;
            if batch.step2 && !progress.synced {
                progress.synced = true;
                f.synced.set(f.synced.get() + 1);
                f.metrics.record(f.op, started.elapsed());
            }
        }
    }

    /// Takes one frame into `batch`: replies to a step 1 (our step 2) and a ping, updates
    /// to apply from a step 2 or an update message.
    ///
    /// # Errors
    /// A close frame, a frame y-websocket does not send, a message that does not decode.
    fn frame(&self, doc: &str, frame: Frame, batch: &mut Batch) -> Result<()> {
        batch.frames += 1;
        let bytes = match frame {
            Frame::Binary(bytes) => bytes,
            Frame::Ping(bytes) => {
                batch.replies.push(WsMessage::Pong(bytes));
                return Ok(());
            }
            Frame::Pong(_) => return Ok(()),
            Frame::Close(reason) => bail!("websocket {doc}: closed by the server: {reason:?}"),
            Frame::Text(_) | Frame::Continuation(_) => {
                bail!("websocket {doc}: a frame y-websocket does not send")
            }
        };
        self.http.wire.add_received(bytes.len());
        let message = Message::decode_v1(&bytes)
            .with_context(|| format!("websocket {doc}: not a y-protocols message"))?;
        match message {
            Message::Sync(SyncMessage::SyncStep1(sv)) => {
                self.catch_up(doc)?;
                let diff = self.peer.borrow_mut().know(doc).diff(&sv);
                batch.replies.push(binary(SyncMessage::SyncStep2(diff)));
            }
            Message::Sync(SyncMessage::SyncStep2(update)) => {
                batch.step2 = true;
                batch.updates.push(update);
            }
            Message::Sync(SyncMessage::Update(update)) => batch.updates.push(update),
            // Awareness and the rest: nothing a subscriber holds.
            _ => {}
        }
        Ok(())
    }

    /// Applies `updates` to the replica of `doc` in one transaction and logs the keys they
    /// added as received now.
    ///
    /// # Errors
    /// An update that does not decode or apply.
    fn hold(&self, doc: &str, updates: &[Vec<u8>], progress: &mut DocProgress) -> Result<()> {
        if updates.is_empty() {
            return Ok(());
        }
        let f = self.follow;
        let noted: Option<Vec<String>> = updates.iter().map(|u| f.sent.key_of(u)).collect();
        let keys = match noted {
            // Every one a writer's update: timed now, applied later.
            Some(keys) => {
                let mut deferred = self.deferred.borrow_mut();
                deferred
                    .entry(doc.to_string())
                    .or_default()
                    .extend(updates.iter().cloned());
                keys
            }
            None => {
                self.catch_up(doc)?;
                self.peer
                    .borrow_mut()
                    .know(doc)
                    .apply_all_keys(updates.iter().map(Vec::as_slice))
                    .with_context(|| format!("websocket {doc}: update does not apply"))?
            }
        };
        let at = Instant::now();
        f.metrics.raw(f.op, updates.iter().map(Vec::len).sum());
        f.metrics.items(f.op, keys.len() as u64);
        let mut receipts = self.receipts.borrow_mut();
        for key in keys {
            progress.hold(&key);
            receipts.push(Receipt { key, at });
        }
        Ok(())
    }
}

impl Subscriber<'_> {
    /// Applies the updates of `doc` held but not applied yet, in one transaction.
    ///
    /// # Errors
    /// An update that does not decode or apply.
    fn catch_up(&self, doc: &str) -> Result<()> {
        let Some(updates) = self.deferred.borrow_mut().remove(doc) else {
            return Ok(());
        };
        self.peer
            .borrow_mut()
            .know(doc)
            .apply_all(updates.iter().map(Vec::as_slice))
            .with_context(|| format!("websocket {doc}: update does not apply"))
    }
}

/// What a run of frames taken together asks for.
#[derive(Default)]
struct Batch {
    frames: usize,
    /// Messages to send back (step 2, pong), in order.
    replies: Vec<WsMessage>,
    /// Updates to apply, in order.
    updates: Vec<Vec<u8>>,
    /// A step 2 was among them: the socket has synced.
    step2: bool,
}

/// A sync message as a binary frame.
fn binary(message: SyncMessage) -> WsMessage {
    WsMessage::Binary(Message::Sync(message).encode_v1().into())
}

async fn send<S>(socket: &mut S, message: WsMessage) -> Result<()>
where
    S: Sink<WsMessage> + Unpin,
    S::Error: std::fmt::Display,
{
    socket
        .send(message)
        .await
        .map_err(|e| anyhow!("websocket send: {e}"))
}
