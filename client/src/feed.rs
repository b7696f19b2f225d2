//! The server's event feed (`GET /v1/{c}/events`) read as changes: the frames of
//! [`crate::sse`] given the meaning the wire contract gives them. Nothing here does I/O of
//! its own or touches SQLite.
//!
//! What the server sends (see its `sse.rs`):
//! - one event per change, `data:` the change object of a `stream` page, `id:` a cursor from
//!   which nothing is missing once this event is held (a delta's seq; for a snapshot, the
//!   cursor its page was read from);
//! - an id-only block when a page's cursor is past its last event (its newest deltas were
//!   compacted into a snapshot sent before);
//! - `: keepalive` comments while idle (every 15 s by default);
//! - `event: error` with the usual error JSON, after which the stream ends (`unauthenticated`
//!   when the token expires).
//!
//! The feed carries no compaction hint (`compact` of a page); see `Syncer::verify_server`.

use std::io::Read;

use crate::error::{Error, Result};
use crate::sse::{Frame, SseError, SseReader};
use crate::wire::{Change, ChangeJson, ErrorEnvelope};

/// Largest line or event read: the same bound as a whole long-poll answer, since one event
/// can carry a snapshot as large as a page.
pub const MAX_EVENT_BYTES: usize = 64 << 20;

/// One item of the feed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FeedItem {
    /// A change, with the cursor a client holding it (and everything before it) may store.
    Change {
        /// The change.
        change: Change,
        /// The resume point after it.
        resume: u64,
    },
    /// The resume point moved without a change (compacted deltas).
    Resume(u64),
    /// A keepalive: the connection is alive and nothing is new.
    Heartbeat,
}

/// A live feed of changes. Blocking: each call runs on the caller's thread.
pub trait ChangeFeed: Send {
    /// The next item, waiting for the network as long as it takes (the transport's idle
    /// timeout bounds that); `None` once the server ended the stream.
    ///
    /// # Errors
    /// [`Error::Network`] (connection lost, idle timeout), [`Error::Server`] for an error
    /// event (e.g. 401 `unauthenticated` when the token expired), [`Error::Protocol`] for
    /// something that is not the contract (an oversized event, bad JSON).
    fn next_item(&mut self) -> Result<Option<FeedItem>>;

    /// The next item among what already arrived, without waiting: `None` if the next one is
    /// still on the network. The sync loop groups these into one SQLite transaction.
    ///
    /// # Errors
    /// As [`ChangeFeed::next_item`].
    fn ready_item(&mut self) -> Result<Option<FeedItem>>;
}

/// [`ChangeFeed`] over a `text/event-stream` body.
pub struct SseFeed<R> {
    reader: SseReader<R>,
    /// The resume point of events that carry no id (the server always sends one; this keeps
    /// a missing id from ever moving the cursor).
    start: u64,
}

impl<R: Read + Send> SseFeed<R> {
    /// The feed of a body requested from `start`, refusing events over [`MAX_EVENT_BYTES`].
    pub fn new(body: R, start: u64) -> SseFeed<R> {
        SseFeed::with_limit(body, start, MAX_EVENT_BYTES)
    }

    /// [`SseFeed::new`] with another event size limit.
    pub fn with_limit(body: R, start: u64, limit: usize) -> SseFeed<R> {
        SseFeed {
            reader: SseReader::new(body, limit),
            start,
        }
    }

    fn resume(&self, id: &str) -> Result<u64> {
        if id.is_empty() {
            return Ok(self.start);
        }
        id.trim()
            .parse()
            .map_err(|_| Error::Protocol(format!("event id {id:?} is not a cursor")))
    }

    /// What a frame means; `None` for frames of no interest (events of unknown types).
    fn interpret(&self, frame: Frame) -> Result<Option<FeedItem>> {
        match frame {
            Frame::Comment => Ok(Some(FeedItem::Heartbeat)),
            Frame::Id(id) => Ok(Some(FeedItem::Resume(self.resume(&id)?))),
            Frame::Event(e) if e.event == "message" => {
                let json: ChangeJson = serde_json::from_str(&e.data)
                    .map_err(|err| Error::Protocol(format!("event is not a change: {err}")))?;
                Ok(Some(FeedItem::Change {
                    change: Change::try_from(json)?,
                    resume: self.resume(&e.id)?,
                }))
            }
            Frame::Event(e) if e.event == "error" => {
                let env: ErrorEnvelope = serde_json::from_str(&e.data)
                    .map_err(|err| Error::Protocol(format!("error event: {err}")))?;
                Err(Error::Server {
                    status: status_of(&env.error.code),
                    code: env.error.code,
                    message: env.error.message,
                })
            }
            Frame::Event(e) => {
                tracing::debug!(event = %e.event, "event of an unknown type ignored");
                Ok(None)
            }
        }
    }

    fn pull(&mut self, wait: bool) -> Result<Option<FeedItem>> {
        loop {
            let frame = if wait {
                self.reader.next_frame()
            } else {
                self.reader.buffered_frame()
            };
            let Some(frame) = frame.map_err(from_sse)? else {
                return Ok(None);
            };
            if let Some(item) = self.interpret(frame)? {
                return Ok(Some(item));
            }
        }
    }
}

impl<R: Read + Send> ChangeFeed for SseFeed<R> {
    fn next_item(&mut self) -> Result<Option<FeedItem>> {
        self.pull(true)
    }

    fn ready_item(&mut self) -> Result<Option<FeedItem>> {
        self.pull(false)
    }
}

fn from_sse(e: SseError) -> Error {
    match e {
        SseError::Io(e) => Error::Network(format!("event stream: {e}")),
        e @ SseError::TooLarge { .. } => Error::Protocol(e.to_string()),
    }
}

/// The HTTP status an error event's code would have had as an answer, so the sync loop
/// treats it as it treats that answer (401/403: auth, back off; 422 `cursor_ahead`: reset;
/// anything else: the server's trouble, retry later).
fn status_of(code: &str) -> u16 {
    match code {
        "unauthenticated" => 401,
        "forbidden" => 403,
        "cursor_ahead" => 422,
        _ => 503,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Operation;

    fn items(text: &str, start: u64) -> Vec<Result<FeedItem>> {
        let mut feed = SseFeed::new(text.as_bytes(), start);
        std::iter::from_fn(|| feed.next_item().transpose()).collect()
    }

    #[test]
    fn changes_ids_keepalives_and_errors() {
        let text = "id: 3\ndata: {\"documentId\":\"d\",\"seq\":9,\"crdtBytes\":\"AAA=\",\"operationType\":\"snapshot\"}\n\n\
                    id: 4\ndata: {\"documentId\":\"d\",\"seq\":4,\"crdtBytes\":\"AAA=\",\"operationType\":\"update\"}\n\n\
                    id: 9\n\n: keepalive\n\nevent: poke\ndata: x\n\n\
                    event: error\ndata: {\"error\":{\"code\":\"unauthenticated\",\"message\":\"expired\"}}\n\n";
        let got = items(text, 3);
        assert_eq!(got.len(), 5, "{got:?}");
        match &got[0] {
            Ok(FeedItem::Change { change, resume }) => {
                assert_eq!(
                    (change.seq, change.operation, *resume),
                    (9, Operation::Snapshot, 3)
                );
                assert_eq!(change.bytes, vec![0, 0]);
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(&got[1], Ok(FeedItem::Change { resume: 4, .. })));
        assert!(matches!(&got[2], Ok(FeedItem::Resume(9))));
        assert!(matches!(&got[3], Ok(FeedItem::Heartbeat)));
        match &got[4] {
            Err(e @ Error::Server { status: 401, .. }) => {
                assert_eq!(e.code(), Some("unauthenticated"))
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_change_without_an_id_resumes_at_the_start() {
        let text =
            "data: {\"documentId\":\"d\",\"seq\":8,\"crdtBytes\":\"AAA=\",\"operationType\":\"update\"}\n\n";
        assert!(matches!(
            items(text, 5).as_slice(),
            [Ok(FeedItem::Change { resume: 5, .. })]
        ));
    }

    #[test]
    fn bad_events_are_protocol_errors() {
        for text in [
            "data: not json\n\n",
            "id: x\ndata: {\"documentId\":\"d\",\"seq\":8,\"crdtBytes\":\"AAA=\",\"operationType\":\"update\"}\n\n",
            "data: {\"documentId\":\"d\",\"seq\":8,\"crdtBytes\":\"!!\",\"operationType\":\"update\"}\n\n",
            "event: error\ndata: {}\n\n",
        ] {
            assert!(
                matches!(items(text, 0).as_slice(), [Err(Error::Protocol(_))]),
                "{text}"
            );
        }
        let mut big = SseFeed::with_limit("data: 0123456789abcdef\n\n".as_bytes(), 0, 8);
        assert!(matches!(big.next_item(), Err(Error::Protocol(_))));
    }
}
