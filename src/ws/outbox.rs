//! One connection's outbound queue, bounded in messages and in bytes.
//!
//! # Why bytes too
//! A message count alone does not bound memory: a 4-byte sync step 1 is answered with the
//! whole document, so a client sending 300 of them and never reading pinned 300 copies of a
//! 1 MiB document (255 MiB) behind a 256-message queue. The byte bound is checked before a
//! message is queued; a message is always taken into an empty queue whatever its size, so a
//! document larger than the bound can still be sent, one copy at a time. A connection past
//! either bound is closed as a slow consumer (it resyncs on reconnect).

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use actix_web::web::Bytes;
use tokio::sync::mpsc;

use super::WsStats;

/// Why a message was not queued.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    /// Past the message or byte bound: the connection is too slow.
    Full,
    /// The writer is gone (the connection is closing).
    Closed,
}

/// The sending side, shared by the connection's reader and its room.
#[derive(Clone)]
pub struct Outbox {
    tx: mpsc::Sender<Bytes>,
    queued: Arc<AtomicUsize>,
    max_bytes: usize,
    stats: Arc<WsStats>,
}

/// The receiving side, the connection's writer.
pub struct Inbox {
    rx: mpsc::Receiver<Bytes>,
    queued: Arc<AtomicUsize>,
    stats: Arc<WsStats>,
}

/// A queue of at most `messages` messages and `max_bytes` bytes (see the module docs).
pub fn outbox(messages: usize, max_bytes: usize, stats: Arc<WsStats>) -> (Outbox, Inbox) {
    let (tx, rx) = mpsc::channel(messages.max(1));
    let queued = Arc::new(AtomicUsize::new(0));
    let inbox = Inbox {
        rx,
        queued: queued.clone(),
        stats: stats.clone(),
    };
    let outbox = Outbox {
        tx,
        queued,
        max_bytes,
        stats,
    };
    (outbox, inbox)
}

impl Outbox {
    /// Queues `bytes`.
    ///
    /// # Errors
    /// [`Refused::Full`] past a bound, [`Refused::Closed`] when the writer is gone.
    pub fn push(&self, bytes: Bytes) -> Result<(), Refused> {
        let len = bytes.len();
        let before = self.queued.fetch_add(len, Ordering::AcqRel);
        if before > 0 && before.saturating_add(len) > self.max_bytes {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return Err(Refused::Full);
        }
        match self.tx.try_send(bytes) {
            Ok(()) => {
                self.stats.queued(len as i64);
                Ok(())
            }
            Err(e) => {
                self.queued.fetch_sub(len, Ordering::AcqRel);
                match e {
                    mpsc::error::TrySendError::Full(_) => Err(Refused::Full),
                    mpsc::error::TrySendError::Closed(_) => Err(Refused::Closed),
                }
            }
        }
    }
}

impl Inbox {
    /// The next message, once queued; `None` when every sender is gone.
    pub async fn recv(&mut self) -> Option<Bytes> {
        let bytes = self.rx.recv().await?;
        self.taken(&bytes);
        Some(bytes)
    }

    /// Stops taking messages and drops what is queued.
    pub fn close(&mut self) {
        self.rx.close();
        while let Ok(bytes) = self.rx.try_recv() {
            self.taken(&bytes);
        }
    }

    fn taken(&self, bytes: &Bytes) {
        self.queued.fetch_sub(bytes.len(), Ordering::AcqRel);
        self.stats.queued(-(bytes.len() as i64));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bytes(n: usize) -> Bytes {
        Bytes::from(vec![0u8; n])
    }

    #[actix_web::test]
    async fn bounds_messages_and_bytes_but_always_takes_one_message() {
        let stats = Arc::new(WsStats::default());
        let (out, mut inbox) = outbox(3, 100, stats.clone());
        // Larger than the byte bound, into an empty queue: taken.
        assert_eq!(out.push(bytes(500)), Ok(()));
        // Anything more is past the bytes.
        assert_eq!(out.push(bytes(1)), Err(Refused::Full));
        assert_eq!(inbox.recv().await.map(|b| b.len()), Some(500));
        // Within the bytes, up to the message bound.
        for _ in 0..3 {
            assert_eq!(out.push(bytes(30)), Ok(()));
        }
        assert_eq!(out.push(bytes(1)), Err(Refused::Full));
        assert_eq!(stats.queued_bytes.load(Ordering::Relaxed), 90);
        inbox.close();
        assert_eq!(stats.queued_bytes.load(Ordering::Relaxed), 0);
        assert_eq!(out.push(bytes(1)), Err(Refused::Closed));
        assert_eq!(out.queued.load(Ordering::Relaxed), 0);
    }
}
