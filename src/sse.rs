//! Server-Sent Events: the body of `GET /v1/{c}/events`, a loop of long-poll stream pages
//! written as events.
//!
//! # Event ids and resuming
//! A client resumes by sending the last `id:` it saw as `Last-Event-ID` (browsers'
//! `EventSource` does this by itself). An id must therefore always be a cursor from which
//! nothing is missing:
//! - a delta event has `id:` = its seq. Deltas are sent in seq order, after the page's
//!   snapshots, so a client holding everything up to that event holds every update ≤ seq;
//! - a snapshot event (sent when compaction deleted deltas past the client's cursor) has
//!   `id:` = the cursor the page was read from, not the snapshot's seq: the snapshot's seq can
//!   lie beyond deltas of other documents that have not been sent yet, so resuming there could
//!   skip them. Resuming at the page's start sends the snapshot again, which Yjs applies
//!   idempotently;
//! - when a page's cursor is past the id of its last event (its newest deltas were compacted
//!   into a snapshot), an id-only block `id: <cursor>` follows. `EventSource` records it as the
//!   last event id without firing an event.
//!
//! So a reconnect sees no gap; it can see a snapshot twice, never a delta twice.
//!
//! While idle, a `: keepalive` comment goes out every heartbeat, which also lets the server
//! notice a client that disconnected: actix does not watch the socket while a streaming body
//! is pending, so a gone client is seen when a write fails, within about two heartbeats. On shutdown the stream ends; on an error mid-stream an
//! `event: error` with the usual error JSON is sent and the stream ends (the client reconnects).
//!
//! A stream opened with a token that expires ends when it expires, with an `event: error` whose
//! code is `unauthenticated`: no wait runs past the expiry, so the event goes out at it, not a
//! heartbeat later. The client reconnects with a fresh token and resumes by `Last-Event-ID`.
//!
//! # The binary feed
//! The same loop writes [`FeedFormat::Binary`] when the client asked for it: the records of
//! [`crate::wire_binary`] (a PAGE and its CHANGEs per page, an empty PAGE as the heartbeat, an
//! ERROR record where SSE sends `event: error`); on shutdown the body just ends. Its resume
//! point is simpler than SSE ids: the cursor of the last PAGE whose changes were applied.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::time::Duration;

use actix_web::web::Bytes;
use futures::{Stream, StreamExt};
use replicate_actors::{OperationType, Replicate, StreamPage, StreamRequest, MAX_STREAM_LIMIT};
use tokio::sync::watch;
use tokio::time::Instant;

use crate::auth::Rejection;
use crate::error::ApiError;
use crate::metrics::{self, GaugeGuard};
use crate::routes::until_shutdown;
use crate::wire::WireChange;
use crate::wire_binary;

/// How a feed is written: Server-Sent Events (the default) or binary records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FeedFormat {
    Sse,
    Binary,
}

impl FeedFormat {
    /// What a page read from `from` is written as.
    ///
    /// # Errors
    /// A page the binary layout cannot carry (see [`wire_binary::write_page`]).
    fn page(self, from: u64, page: &StreamPage) -> Result<Bytes, ApiError> {
        Ok(match self {
            FeedFormat::Sse => {
                let text = encode_page(from, page);
                Bytes::from(if text.is_empty() {
                    KEEPALIVE.to_string()
                } else {
                    text
                })
            }
            FeedFormat::Binary => {
                let mut out = Vec::new();
                wire_binary::write_page(&mut out, page)?;
                Bytes::from(out)
            }
        })
    }

    fn error(self, e: ApiError) -> Bytes {
        match self {
            FeedFormat::Sse => Bytes::from(error_event(e)),
            FeedFormat::Binary => Bytes::from(wire_binary::error_record(&e)),
        }
    }

    /// The last chunk on shutdown, if the format has one.
    fn shutdown(self) -> Option<Bytes> {
        match self {
            FeedFormat::Sse => Some(Bytes::from_static(b": replicate is shutting down\n\n")),
            FeedFormat::Binary => None,
        }
    }
}

/// The comment sent while idle.
pub const KEEPALIVE: &str = ": keepalive\n\n";

/// Writes `page`, read from cursor `from`, as events; answers the text (empty for an empty
/// page that moves nothing). See the module docs for the ids.
pub fn encode_page(from: u64, page: &StreamPage) -> String {
    let mut out = String::new();
    let mut last_id = from;
    for change in &page.changes {
        let id = if change.operation == OperationType::Snapshot {
            from
        } else {
            change.seq
        };
        let data = match serde_json::to_string(&WireChange::from(change)) {
            Ok(data) => data,
            // Strings and numbers always serialize; keep the id rule intact if not.
            Err(e) => {
                tracing::error!(error = %e, "could not serialize a change");
                break;
            }
        };
        let _ = write!(out, "id: {id}\ndata: {data}\n\n");
        last_id = id;
    }
    if page.cursor > last_id {
        let _ = write!(out, "id: {}\n\n", page.cursor);
    }
    out
}

/// An error as a final event.
fn error_event(e: ApiError) -> String {
    let body = serde_json::json!({ "error": { "code": e.code, "message": e.message } });
    format!("event: error\ndata: {body}\n\n")
}

struct Subscription {
    replicate: Replicate,
    collection: String,
    cursor: u64,
    /// The first page, read before the response started (so its errors got a status).
    first: Option<StreamPage>,
    heartbeat: Duration,
    shutdown: watch::Receiver<bool>,
    /// When the subscriber's credential expires; `None` if it does not.
    expires: Option<Instant>,
    format: FeedFormat,
    done: bool,
    _subscribed: GaugeGuard,
}

impl Subscription {
    /// The next chunk of the body, or `None` when the stream ends.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        let page = match self.first.take() {
            Some(page) => Ok(page),
            None => {
                let wait = match self.expires {
                    Some(at) => {
                        let now = Instant::now();
                        if now >= at {
                            self.done = true;
                            return Some(self.format.error(Rejection::Expired.into()));
                        }
                        self.heartbeat.min(at - now)
                    }
                    None => self.heartbeat,
                };
                let req = StreamRequest {
                    cursor: self.cursor,
                    limit: MAX_STREAM_LIMIT,
                    size_threshold: None,
                    wait,
                };
                match until_shutdown(
                    self.shutdown.clone(),
                    self.replicate.stream(&self.collection, req),
                )
                .await
                {
                    Some(page) => page,
                    None => {
                        self.done = true;
                        return self.format.shutdown();
                    }
                }
            }
        };
        match page {
            Ok(page) => {
                ::metrics::counter!(metrics::STREAM_REQUESTS).increment(1);
                ::metrics::counter!(metrics::STREAM_CHANGES).increment(page.changes.len() as u64);
                match self.format.page(self.cursor, &page) {
                    Ok(chunk) => {
                        self.cursor = self.cursor.max(page.cursor);
                        Some(chunk)
                    }
                    Err(e) => {
                        self.done = true;
                        Some(self.format.error(e))
                    }
                }
            }
            Err(e) => {
                self.done = true;
                Some(self.format.error(e.into()))
            }
        }
    }
}

/// The event stream for `collection` from `cursor`, starting with `first` (the page at
/// `cursor`, already read), ending at `expires` if given, written as `format` (a binary feed
/// starts with the preamble). Dropping it (the client went away) cancels any wait in progress.
#[allow(clippy::too_many_arguments)]
pub fn events(
    replicate: Replicate,
    collection: String,
    cursor: u64,
    first: StreamPage,
    heartbeat: Duration,
    shutdown: watch::Receiver<bool>,
    expires: Option<Instant>,
    format: FeedFormat,
) -> impl Stream<Item = Result<Bytes, Infallible>> {
    let sub = Subscription {
        replicate,
        collection,
        cursor,
        first: Some(first),
        heartbeat,
        shutdown,
        expires,
        format,
        done: false,
        _subscribed: GaugeGuard::new(metrics::SSE_SUBSCRIBERS),
    };
    let preamble =
        (format == FeedFormat::Binary).then(|| Ok(Bytes::from_static(&wire_binary::PREAMBLE)));
    let pages = futures::stream::unfold(sub, |mut sub| async move {
        let chunk = sub.next_chunk().await?;
        Some((Ok(chunk), sub))
    });
    futures::stream::iter(preamble).chain(pages)
}

#[cfg(test)]
mod tests {
    use replicate_actors::Change;

    use super::*;

    fn change(seq: u64, operation: OperationType) -> Change {
        Change {
            document_id: "d".into(),
            seq,
            bytes: vec![0, 0],
            operation,
        }
    }

    fn ids(text: &str) -> Vec<u64> {
        text.lines()
            .filter_map(|l| l.strip_prefix("id: "))
            .map(|v| v.parse().expect("numeric id"))
            .collect()
    }

    /// (page read from, changes as (seq, operation), page cursor, expected ids)
    type IdCase = (u64, &'static [(u64, OperationType)], u64, &'static [u64]);

    #[test]
    fn ids_are_resume_points() {
        let cases: &[IdCase] = &[
            (
                0,
                &[(1, OperationType::Insert), (2, OperationType::Update)],
                2,
                &[1, 2],
            ),
            // a snapshot whose seq (9) is past undelivered deltas: its id stays at the page start
            (
                3,
                &[
                    (9, OperationType::Snapshot),
                    (4, OperationType::Insert),
                    (5, OperationType::Update),
                ],
                5,
                &[3, 4, 5],
            ),
            // newest deltas compacted: an id-only block carries the page cursor
            (3, &[(9, OperationType::Snapshot)], 9, &[3, 9]),
            (3, &[(4, OperationType::Insert)], 6, &[4, 6]),
            (7, &[], 7, &[]),
        ];
        for (from, changes, cursor, expected) in cases {
            let page = StreamPage {
                changes: changes.iter().map(|(s, o)| change(*s, *o)).collect(),
                cursor: *cursor,
                has_more: false,
                compact: None,
            };
            assert_eq!(
                ids(&encode_page(*from, &page)),
                *expected,
                "from {from}: {changes:?}"
            );
        }
    }
}
