//! One websocket connection: a reader task (client messages → replies, writes, awareness)
//! and a writer task (the bounded outbound queue → the socket, pings, the close frame).
//!
//! # Invariants
//! - A client's updates are handled one at a time, in the order sent: each is validated and
//!   made durable by the same call an HTTP write makes before the next is read.
//! - A client update is stored only if it adds something: an empty update, or a step 2 that
//!   only repeats what the room holds, stores nothing. A `read` grant's update that would
//!   add something closes the connection (4403) and stores nothing.
//! - Whoever closes first (reader, writer, room, shutdown, token expiry) sets the one reason
//!   both tasks stop on; the writer sends it as the close frame.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use actix_web::web::Bytes;
use actix_ws::{AggregatedMessage, AggregatedMessageStream, ProtocolError, Session};
use replicate_actors::{OperationType, Replicate, Write};
use tokio::sync::watch;
use tokio::time::{Duration, Instant};

use super::close::{Close, Closer};
use super::hub::Member;
use super::outbox::{Inbox, Outbox, Refused};
use super::protocol::{self, Incoming};
use super::WsStats;
use crate::error::ApiError;
use crate::metrics;

/// The empty update: what a client with nothing new sends as its step 2.
const EMPTY_UPDATE: [u8; 2] = [0, 0];
/// How long the close frame may take to go out before the socket is simply dropped.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

/// What a connection's reader needs.
pub struct Connection {
    pub member: Member,
    pub replicate: Replicate,
    /// Whether the token grants `write` on the collection.
    pub can_write: bool,
    pub tx: Outbox,
    pub closer: Closer,
    /// When the token expires, if it does.
    pub expires: Option<Instant>,
    pub shutdown: watch::Receiver<bool>,
    pub stats: Arc<WsStats>,
    /// [`super::WsSettings::max_message_bytes`], for the close reason.
    pub max_message_bytes: usize,
}

/// Starts both tasks of a connection whose upgrade was answered.
pub fn spawn(
    conn: Connection,
    rx: Inbox,
    session: Session,
    stream: AggregatedMessageStream,
    ping_interval: Duration,
) {
    let seen = Arc::new(Seen::default());
    let writer = Writer {
        session: session.clone(),
        rx,
        closer: conn.closer.clone(),
        seen: seen.clone(),
        ping_interval,
    };
    actix_web::rt::spawn(writer.run());
    actix_web::rt::spawn(conn.read(session, stream, seen));
}

/// When the client last sent anything (a ping's answer included), in ms since `start`.
struct Seen {
    start: Instant,
    at_ms: AtomicU64,
}

impl Default for Seen {
    fn default() -> Self {
        Seen {
            start: Instant::now(),
            at_ms: AtomicU64::new(0),
        }
    }
}

impl Seen {
    fn now(&self) {
        let ms = self.start.elapsed().as_millis() as u64;
        self.at_ms.store(ms, Ordering::Relaxed);
    }

    fn idle(&self) -> Duration {
        let at = Duration::from_millis(self.at_ms.load(Ordering::Relaxed));
        self.start.elapsed().saturating_sub(at)
    }
}

impl Connection {
    /// Queues `bytes` for this connection.
    ///
    /// # Errors
    /// [`Close::slow_consumer`] when its queue is full (in messages or bytes).
    pub fn send(&self, bytes: Bytes) -> Result<(), Close> {
        match self.tx.push(bytes) {
            Ok(()) => Ok(()),
            Err(Refused::Full) => {
                self.stats.slow_consumer();
                Err(Close::slow_consumer())
            }
            Err(Refused::Closed) => Err(Close::new(1000, "")),
        }
    }

    async fn read(
        self,
        mut session: Session,
        mut stream: AggregatedMessageStream,
        seen: Arc<Seen>,
    ) {
        let mut shutdown = self.shutdown.clone();
        let expiry = async {
            match self.expires {
                Some(at) => tokio::time::sleep_until(at).await,
                None => std::future::pending().await,
            }
        };
        tokio::pin!(expiry);
        loop {
            let close = tokio::select! {
                biased;
                _ = self.closer.closed() => break,
                _ = shutdown.wait_for(|stop| *stop) => Some(Close::shutting_down()),
                _ = &mut expiry => Some(Close::expired()),
                message = stream.recv() => match message {
                    None => Some(Close::new(1000, "")),
                    Some(Ok(message)) => {
                        seen.now();
                        self.handle(message, &mut session).await.err()
                    }
                    Some(Err(e)) => Some(self.protocol_error(e)),
                },
            };
            if let Some(close) = close {
                self.closer.close(close);
                break;
            }
        }
        // Leaving the room (dropping `self.member`) clears this connection's awareness.
    }

    fn protocol_error(&self, e: ProtocolError) -> Close {
        match e {
            ProtocolError::Overflow => Close::too_large(self.max_message_bytes),
            // actix-ws reports continuations past their cap only as this I/O error.
            ProtocolError::Io(e) if e.to_string().contains("maximum continuation size") => {
                Close::too_large(self.max_message_bytes)
            }
            e => Close::bad_message(e),
        }
    }

    async fn handle(&self, message: AggregatedMessage, session: &mut Session) -> Result<(), Close> {
        match message {
            AggregatedMessage::Binary(frame) => {
                for incoming in protocol::decode(&frame).map_err(Close::bad_message)? {
                    self.incoming(incoming).await?;
                }
                Ok(())
            }
            AggregatedMessage::Text(_) => Err(Close::bad_message(
                "text frame: y-protocols messages are binary",
            )),
            AggregatedMessage::Ping(bytes) => {
                let _ = session.pong(&bytes).await;
                Ok(())
            }
            AggregatedMessage::Pong(_) => Ok(()),
            AggregatedMessage::Close(_) => Err(Close::new(1000, "")),
        }
    }

    async fn incoming(&self, incoming: Incoming) -> Result<(), Close> {
        let room = &self.member.room;
        match incoming {
            Incoming::SyncStep1(sv) => {
                let diff = room.diff(sv).await.map_err(Close::from)?;
                self.send(protocol::step2(diff))
            }
            Incoming::SyncStep2(update) => self.write(update, true).await,
            Incoming::Update(update) => self.write(update, false).await,
            Incoming::Awareness(update) => {
                room.awareness(self.member.id, update);
                Ok(())
            }
            Incoming::QueryAwareness => match room.awareness_now() {
                Some(states) => self.send(states),
                None => Ok(()),
            },
        }
    }

    /// Stores a client's update as an `update` delta of the document, unless it adds nothing.
    /// The follower broadcasts it once it is durable.
    async fn write(&self, update: Vec<u8>, step2: bool) -> Result<(), Close> {
        if update == EMPTY_UPDATE {
            return Ok(());
        }
        let room = &self.member.room;
        // Step 2 repeats the delete set every time; a reader's update must add nothing.
        if (step2 || !self.can_write) && room.adds_nothing(update.clone()).await {
            return Ok(());
        }
        if !self.can_write {
            return Err(Close::read_only(&room.collection));
        }
        let size = update.len() as u64;
        let write = Write {
            document_id: room.document.clone(),
            bytes: update,
            op_id: None,
        };
        let written = self
            .replicate
            .write(&room.collection, OperationType::Update, write)
            .await
            .map_err(|e| Close::from(ApiError::from(e)))?;
        ::metrics::counter!(metrics::APPENDS, "operation" => OperationType::Update.as_str())
            .increment(1);
        ::metrics::counter!(metrics::APPENDED_BYTES).increment(size);
        room.note_origin(written.seq, self.member.id);
        Ok(())
    }
}

/// The writing half: drains the queue into the socket, pings, and sends the close frame.
struct Writer {
    session: Session,
    rx: Inbox,
    closer: Closer,
    seen: Arc<Seen>,
    ping_interval: Duration,
}

impl Writer {
    async fn run(mut self) {
        let mut ping = tokio::time::interval(self.ping_interval);
        ping.tick().await;
        loop {
            tokio::select! {
                biased;
                _ = self.closer.closed() => break,
                bytes = self.rx.recv() => {
                    let Some(bytes) = bytes else { break };
                    let sent = tokio::select! {
                        biased;
                        _ = self.closer.closed() => break,
                        sent = self.session.binary(bytes) => sent,
                    };
                    if sent.is_err() {
                        break;
                    }
                }
                _ = ping.tick() => {
                    if self.seen.idle() > self.ping_interval * 2 {
                        self.closer.close(Close::unresponsive());
                        continue;
                    }
                    let sent = tokio::select! {
                        biased;
                        _ = self.closer.closed() => break,
                        sent = self.session.ping(b"") => sent,
                    };
                    if sent.is_err() {
                        break;
                    }
                }
            }
        }
        self.closer.close(Close::new(1000, ""));
        // Closed first, so nothing arrives after the drain.
        self.rx.close();
        if let Some(close) = self.closer.reason() {
            let frame = self.session.close(Some(close.frame()));
            let _ = tokio::time::timeout(CLOSE_GRACE, frame).await;
        }
    }
}
