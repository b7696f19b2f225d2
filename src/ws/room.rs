//! One document's websocket room: its connections, its doc (see [`super::doc`]), its
//! awareness table, and the follower task that carries the document's committed changes
//! (from websocket clients and HTTP writers alike) to every connection.
//!
//! # The follower
//! The room starts from the document's recovery (its whole state and the collection's
//! durable head as cursor), then long-polls the collection's stream from that cursor, the
//! same commit notification `stream` and `events` wait on. Each page's changes of this
//! document are applied to the doc, then broadcast as update messages, in seq order; other
//! documents' changes only move the cursor. A write made through one of the room's own
//! connections is not sent back to it (see [`Room::note_origin`]) — best effort: when the
//! follower delivers the seq before the write's answer reaches the connection, the writer
//! gets its own update back, which Yjs applies as a no-op.
//!
//! # Invariants
//! - A change is applied to the doc before it is broadcast, and a connection is registered
//!   before it is answered a diff: whatever it joined after, either the diff or a broadcast
//!   carries it (possibly both: Yjs applies updates idempotently).
//! - Broadcasting never waits: a connection whose bounded queue is full is closed as a slow
//!   consumer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix_web::http::StatusCode;
use actix_web::web::Bytes;
use replicate_actors::{Change, OperationType, Replicate, StreamRequest, MAX_STREAM_LIMIT};
use tokio::sync::{watch, OnceCell};
use yrs::sync::AwarenessUpdate;
use yrs::StateVector;

use super::awareness::{AwarenessTable, ConnId};
use super::close::{Close, Closer};
use super::doc::RoomDoc;
use super::outbox::{Outbox, Refused};
use super::{protocol, WsStats};
use crate::error::ApiError;
use crate::routes::until_shutdown;

/// How long one follower long poll waits before asking again.
const FOLLOW_WAIT: Duration = Duration::from_secs(15);
/// Pause after a transient stream error (overloaded, timeout) before the follower retries.
const RETRY_AFTER: Duration = Duration::from_millis(500);
/// Writes remembered as "sent by this connection" while the follower has not reached them;
/// past it the writer just gets its own update back (harmless).
const MAX_ORIGINS: usize = 4096;
/// The empty state vector (no clients), what a peer holding nothing sends.
const EMPTY_STATE_VECTOR: [u8; 1] = [0];

/// How the room reaches one connection.
pub struct Link {
    pub tx: Outbox,
    pub closer: Closer,
}

#[derive(Default)]
struct Members {
    conns: HashMap<ConnId, Link>,
    awareness: AwarenessTable,
    /// seq → the connection that wrote it, for seqs the follower has not broadcast yet.
    origins: HashMap<u64, ConnId>,
    /// The highest seq the follower has broadcast (or skipped as another document's).
    cursor: u64,
}

/// The websocket state of one document.
pub struct Room {
    pub collection: String,
    pub document: String,
    doc: OnceCell<Arc<Mutex<RoomDoc>>>,
    members: Mutex<Members>,
    stop: watch::Sender<bool>,
    /// Set when the follower failed for good: the hub replaces the room on the next join.
    dead: AtomicBool,
    /// Connections joined or joining; changed only under the hub's lock.
    pub(super) users: AtomicUsize,
    stats: Arc<WsStats>,
}

impl Room {
    pub fn new(collection: &str, document: &str, stats: Arc<WsStats>) -> Room {
        Room {
            collection: collection.to_string(),
            document: document.to_string(),
            doc: OnceCell::new(),
            members: Mutex::default(),
            stop: watch::channel(false).0,
            dead: AtomicBool::new(false),
            users: AtomicUsize::new(0),
            stats,
        }
    }

    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }

    /// Builds the doc from the document's recovery and starts the follower, once; later
    /// callers wait for the first.
    ///
    /// # Errors
    /// What the recovery answered (a bad name is 400, overload 503), or 500 when the stored
    /// state does not apply.
    pub async fn load(
        self: &Arc<Self>,
        replicate: &Replicate,
        shutdown: &watch::Receiver<bool>,
    ) -> Result<(), ApiError> {
        self.doc
            .get_or_try_init(|| async {
                let state = replicate
                    .recovery(&self.collection, &EMPTY_STATE_VECTOR, Some(&self.document))
                    .await?;
                let doc = blocking(move || RoomDoc::from_update(&state.update)).await?;
                let doc = Arc::new(Mutex::new(doc));
                self.lock().cursor = state.cursor;
                let follower = Follower {
                    room: self.clone(),
                    doc: doc.clone(),
                    replicate: replicate.clone(),
                    shutdown: shutdown.clone(),
                    stop: self.stop.subscribe(),
                };
                actix_web::rt::spawn(follower.run(state.cursor));
                Ok(doc)
            })
            .await
            .map(|_| ())
    }

    /// Stops the follower (the last connection left).
    pub fn stop(&self) {
        self.stop.send_replace(true);
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Members> {
        self.members
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn register(&self, id: ConnId, link: Link) {
        self.lock().conns.insert(id, link);
    }

    /// Removes a connection and clears the awareness ids it announced for everyone else.
    pub fn unregister(&self, id: ConnId) {
        let mut members = self.lock();
        members.conns.remove(&id);
        if let Some(removed) = members.awareness.remove_owned_by(id) {
            self.broadcast(&members, protocol::awareness(removed), None);
        }
        members.origins.retain(|_, conn| *conn != id);
    }

    /// Applies an awareness update from `conn` and relays what changed to every connection,
    /// the sender included (y-websocket's liveness check counts its own renewals coming back).
    pub fn awareness(&self, conn: ConnId, update: AwarenessUpdate) {
        let mut members = self.lock();
        if let Some(changed) = members.awareness.apply(conn, update) {
            self.broadcast(&members, protocol::awareness(changed), None);
        }
    }

    /// Every live awareness state, encoded, if there is any.
    pub fn awareness_now(&self) -> Option<Bytes> {
        self.lock().awareness.current().map(protocol::awareness)
    }

    /// Records that `conn` wrote `seq`, so the follower does not echo it back.
    pub fn note_origin(&self, seq: u64, conn: ConnId) {
        let mut members = self.lock();
        if seq > members.cursor && members.origins.len() < MAX_ORIGINS {
            members.origins.insert(seq, conn);
        }
    }

    pub async fn state_vector(&self) -> Result<StateVector, ApiError> {
        let doc = self.loaded()?;
        blocking(move || lock_doc(&doc).state_vector()).await
    }

    /// What a client with `sv` lacks (its step 2).
    pub async fn diff(&self, sv: StateVector) -> Result<Vec<u8>, ApiError> {
        let doc = self.loaded()?;
        blocking(move || lock_doc(&doc).diff(&sv)).await
    }

    /// See [`RoomDoc::adds_nothing`]; `false` when unsure.
    pub async fn adds_nothing(&self, update: Vec<u8>) -> bool {
        let Ok(doc) = self.loaded() else {
            return false;
        };
        blocking(move || Ok(lock_doc(&doc).adds_nothing(&update)))
            .await
            .unwrap_or(false)
    }

    fn loaded(&self) -> Result<Arc<Mutex<RoomDoc>>, ApiError> {
        self.doc
            .get()
            .cloned()
            .ok_or_else(|| internal("room used before it loaded"))
    }

    /// Queues `bytes` for every connection but `except`; a full queue closes its connection.
    fn broadcast(&self, members: &Members, bytes: Bytes, except: Option<ConnId>) {
        for (id, link) in &members.conns {
            if Some(*id) == except {
                continue;
            }
            match link.tx.push(bytes.clone()) {
                Ok(()) => {}
                Err(Refused::Full) => {
                    if link.closer.reason().is_none() {
                        self.stats.slow_consumer();
                    }
                    link.closer.close(Close::slow_consumer());
                }
                Err(Refused::Closed) => {}
            }
        }
    }

    /// Broadcasts the page's changes of this document, already applied to the doc, and moves
    /// the cursor to `cursor`.
    fn deliver(&self, changes: Vec<Change>, cursor: u64) {
        let mut members = self.lock();
        for change in changes {
            // A snapshot's seq is the highest it holds, which may be one connection's own
            // write, but it also holds others' deleted writes: it goes to every connection.
            // (Taken as that connection's own, its writer never got those writes: found in
            // review, `http_lost_updates`.)
            let origin = match change.operation {
                OperationType::Snapshot => None,
                _ => members.origins.remove(&change.seq),
            };
            self.broadcast(&members, protocol::update(change.bytes), origin);
        }
        members.cursor = members.cursor.max(cursor);
        let cursor = members.cursor;
        members.origins.retain(|seq, _| *seq > cursor);
    }

    /// The follower failed for good: every connection is closed with `close`.
    fn fail(&self, close: Close) {
        self.dead.store(true, Ordering::SeqCst);
        for link in self.lock().conns.values() {
            link.closer.close(close.clone());
        }
    }
}

/// The task that follows the collection's stream for one room.
struct Follower {
    room: Arc<Room>,
    doc: Arc<Mutex<RoomDoc>>,
    replicate: Replicate,
    shutdown: watch::Receiver<bool>,
    stop: watch::Receiver<bool>,
}

impl Follower {
    async fn run(mut self, mut cursor: u64) {
        let room = self.room.clone();
        loop {
            let req = StreamRequest {
                cursor,
                limit: MAX_STREAM_LIMIT,
                size_threshold: None,
                wait: FOLLOW_WAIT,
            };
            let read = self.replicate.stream(&room.collection, req);
            let page = tokio::select! {
                _ = self.stop.wait_for(|stop| *stop) => return,
                page = until_shutdown(self.shutdown.clone(), read) => match page {
                    Some(page) => page,
                    None => return,
                },
            };
            let page = match page {
                Ok(page) => page,
                Err(e) => {
                    let e = ApiError::from(e);
                    if matches!(
                        e.status,
                        StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT
                    ) {
                        tokio::time::sleep(RETRY_AFTER).await;
                        continue;
                    }
                    tracing::warn!(collection = %room.collection, code = e.code, "websocket room stops: {}", e.message);
                    room.fail(Close::from(e));
                    return;
                }
            };
            let mine: Vec<Change> = page
                .changes
                .into_iter()
                .filter(|c| c.document_id == room.document)
                .collect();
            let mine = if mine.is_empty() {
                mine
            } else {
                let doc = self.doc.clone();
                let applied = blocking(move || {
                    let doc = lock_doc(&doc);
                    for change in &mine {
                        doc.apply(&change.bytes)?;
                    }
                    Ok(mine)
                })
                .await;
                match applied {
                    Ok(mine) => mine,
                    Err(e) => {
                        tracing::error!(collection = %room.collection, "websocket room stops: {}", e.message);
                        room.fail(Close::new(
                            1011,
                            "the document's stored state could not be applied",
                        ));
                        return;
                    }
                }
            };
            room.deliver(mine, page.cursor);
            cursor = cursor.max(page.cursor);
        }
    }
}

fn lock_doc(doc: &Mutex<RoomDoc>) -> std::sync::MutexGuard<'_, RoomDoc> {
    doc.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn internal(message: impl Into<String>) -> ApiError {
    ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", message)
}

/// Runs yrs work off the async worker: a large document's diff or apply can take a while.
async fn blocking<T: Send + 'static>(
    job: impl FnOnce() -> Result<T, String> + Send + 'static,
) -> Result<T, ApiError> {
    actix_web::rt::task::spawn_blocking(job)
        .await
        .map_err(|e| internal(format!("document task failed: {e}")))?
        .map_err(internal)
}
