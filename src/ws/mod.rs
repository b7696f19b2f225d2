//! The y-websocket endpoint, `GET /v1/{c}/ws/{documentId}`: stock Yjs providers
//! (`y-websocket`'s `WebsocketProvider`, and anything speaking the same y-protocols messages)
//! sync one document over a WebSocket, with writes sequenced like HTTP writes.
//!
//! # Layout
//! - [`protocol`]: the y-protocols messages, decoded with bounds checked before yrs sees a
//!   declared count, and encoded with yrs's own `sync` types.
//! - [`doc`]: the room's copy of the document (a yrs `Doc`): state vector, step-2 diffs, and
//!   whether a client's update adds anything.
//! - [`awareness`]: the room's awareness table (pure): which client ids each connection
//!   announced, what to relay, what to clear when a connection closes.
//! - [`room`]: one document's connections, its doc and awareness, and the follower task that
//!   reads the collection's stream and broadcasts that document's changes.
//! - [`hub`]: the rooms of a server, created on the first join and dropped with the last
//!   connection; the connection and room limits.
//! - [`connection`]: one socket: its reader (client messages → writes, replies) and its writer
//!   (pings, close frames), joined by its [`outbox`]: the outbound queue, bounded in messages
//!   and bytes.
//! - [`close`]: why a connection closes, as a WebSocket close code and reason.
//!
//! yrs is used by [`protocol`] and [`doc`] only.
//!
//! # Invariants
//! - A client update reaches other connections only through the store: it is appended as an
//!   `update` delta (seq assigned, on disk) and the room's follower broadcasts it from the
//!   collection's stream, so websocket, `stream` and `events` readers see one order, and
//!   nothing is broadcast that a crash could lose.
//! - The state vector a room announces never claims more than the store holds (the room's doc
//!   only ever applies what the stream delivered), so a client never withholds an edit the
//!   server lacks.
//! - Every queue is bounded: a connection whose outbound queue is full is closed (it resyncs
//!   on reconnect); frames, awareness states and the numbers of rooms and connections have
//!   limits.

use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::time::Duration;

pub mod awareness;
pub mod close;
pub mod connection;
pub mod doc;
pub mod hub;
pub mod outbox;
pub mod protocol;
pub mod room;

pub use hub::Hub;

/// Open websocket connections (gauge).
pub const METRIC_CONNECTIONS: &str = "replicate_ws_connections";
/// Documents with at least one websocket connection (gauge).
pub const METRIC_ROOMS: &str = "replicate_ws_rooms";
/// Bytes waiting in websocket outbound queues (gauge).
pub const METRIC_QUEUED_BYTES: &str = "replicate_ws_queued_bytes";
/// Connections closed because their outbound queue was full (counter).
pub const METRIC_SLOW_CONSUMERS: &str = "replicate_ws_slow_consumers_total";

/// Limits and timers of the websocket endpoint. `WsSettings::default()` gives the defaults
/// listed per field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WsSettings {
    /// Open websocket connections per server (default 10,000); past it the upgrade is
    /// answered 503 `overloaded`.
    pub max_connections: usize,
    /// Documents with open websocket connections (default 1,000); past it a connection to
    /// another document is answered 503 `overloaded`. Each room keeps the document built in
    /// memory and holds one long-poll waiter slot of its collection.
    pub max_rooms: usize,
    /// Largest message a client may send, after joining continuation frames (default 8 MiB +
    /// 1 KiB: the largest update plus its header). Past it the connection closes with 4413.
    pub max_message_bytes: usize,
    /// Messages waiting to be written to one connection (default 256). A connection whose
    /// queue is full when a message is broadcast is closed with 1013 (it resyncs when it
    /// reconnects) instead of growing memory.
    pub send_queue: usize,
    /// Bytes waiting to be written to one connection (default 16 MiB; a message larger than
    /// that is still taken into an empty queue): past it, as past `send_queue`, the
    /// connection is closed with 1013. Without it a client asking sync step 1 again and again
    /// pinned a copy of the document per request (see [`outbox`]).
    pub send_queue_bytes: usize,
    /// How often the server pings (default 15 s). A connection that sent nothing, not even a
    /// pong, for two intervals is closed.
    pub ping_interval: Duration,
}

impl Default for WsSettings {
    fn default() -> Self {
        WsSettings {
            max_connections: 10_000,
            max_rooms: 1_000,
            max_message_bytes: 8 * 1024 * 1024 + 1024,
            send_queue: 256,
            send_queue_bytes: 16 * 1024 * 1024,
            ping_interval: Duration::from_secs(15),
        }
    }
}

/// Observable counters of a [`Hub`] (also exported as the `replicate_ws_*` metrics).
#[derive(Debug, Default)]
pub struct WsStats {
    pub connections: AtomicI64,
    pub rooms: AtomicI64,
    pub queued_bytes: AtomicI64,
    pub slow_consumers: AtomicU64,
}

impl WsStats {
    fn connections(&self, delta: i64) {
        self.connections.fetch_add(delta, Ordering::Relaxed);
        ::metrics::gauge!(METRIC_CONNECTIONS).increment(delta as f64);
    }

    fn rooms(&self, delta: i64) {
        self.rooms.fetch_add(delta, Ordering::Relaxed);
        ::metrics::gauge!(METRIC_ROOMS).increment(delta as f64);
    }

    fn queued(&self, delta: i64) {
        self.queued_bytes.fetch_add(delta, Ordering::Relaxed);
        ::metrics::gauge!(METRIC_QUEUED_BYTES).increment(delta as f64);
    }

    fn slow_consumer(&self) {
        self.slow_consumers.fetch_add(1, Ordering::Relaxed);
        ::metrics::counter!(METRIC_SLOW_CONSUMERS).increment(1);
    }
}
