//! The background puller on the event feed (`GET /v1/{c}/events`, Server-Sent Events):
//! one connection from the stored cursor, changes stored as they arrive, and the decision
//! of when the feed is not worth using (then the puller long-polls).
//!
//! # Invariants
//! - Events are stored in groups: everything that already arrived (up to
//!   [`SyncOptions::page_limit`] changes or [`GROUP_BYTES`]), with the resume id of the last
//!   one, in one SQLite transaction through `Syncer::store_changes`, the path long-poll
//!   pages take. The stored cursor is always an id the server sent after every change it
//!   covers, so it never runs ahead of what is on disk.
//! - A group is stored only if the stored cursor is still the one this connection started
//!   from or last stored: if anything else moved it (`sync_once`, a reset), the connection
//!   is dropped and a new one starts from the stored cursor.
//! - The feed carries no `compact` hint; the landmark read-back (`verify_server`), done on
//!   connecting and at least every 30 s while events or keepalives arrive, brings it.
//!
//! [`SyncOptions::page_limit`]: super::SyncOptions::page_limit

use std::time::{Duration, Instant};

use super::{lock, Syncer};
use crate::error::{Error, Result};
use crate::feed::{ChangeFeed, FeedItem};
use crate::wire::Change;

/// Update bytes stored in one transaction at most (a group ends early past it).
pub(super) const GROUP_BYTES: usize = 4 << 20;

/// Connections in a row that broke before the server said anything (not even a keepalive,
/// which it sends at once) after which the feed counts as unusable: a proxy that buffers the
/// body, or one that cuts long requests.
const SILENT_FAILURES_BEFORE_FALLBACK: u32 = 2;

/// Whether the event feed is worth trying now. Pure state, time passed in.
#[derive(Debug)]
pub(super) struct SseGate {
    enabled: bool,
    /// Long-poll until then.
    off_until: Option<Instant>,
    silent_failures: u32,
}

impl SseGate {
    /// A gate for a puller configured to use the feed (`enabled`) or not.
    pub(super) fn new(enabled: bool) -> SseGate {
        SseGate {
            enabled,
            off_until: None,
            silent_failures: 0,
        }
    }

    /// Whether to follow the feed (rather than long-poll) at `now`.
    pub(super) fn usable(&self, now: Instant) -> bool {
        self.enabled && self.off_until.is_none_or(|until| now >= until)
    }

    /// The feed is not served: long-poll for `retry`.
    fn fall_back(&mut self, now: Instant, retry: Duration, why: &Error) {
        tracing::warn!(error = %why, retry_in_s = retry.as_secs(), "the event stream is unusable: long polling instead");
        self.off_until = Some(now + retry);
        self.silent_failures = 0;
    }

    /// A connection attempt ended with an error. Only a stream that opened and then broke
    /// before the server said anything counts against the feed: failures before it opened
    /// (offline, 401, 5xx) would fail a long poll just the same.
    fn ended(&mut self, progress: Progress, now: Instant, retry: Duration, why: &Error) {
        match progress {
            Progress::Connecting => {}
            Progress::Heard => self.silent_failures = 0,
            Progress::Opened => {
                self.silent_failures += 1;
                if self.silent_failures >= SILENT_FAILURES_BEFORE_FALLBACK {
                    self.fall_back(now, retry, why);
                }
            }
        }
    }
}

/// How far a connection to the feed got.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Progress {
    /// Not open yet (checks before it, or the request itself).
    Connecting,
    /// The server answered an event stream, and has said nothing on it yet.
    Opened,
    /// Something (an event, a keepalive) arrived.
    Heard,
}

/// Changes that arrived together, and the resume id after the last item.
#[derive(Debug, Default)]
struct Group {
    changes: Vec<Change>,
    /// `None` when nothing but keepalives came.
    resume: Option<u64>,
}

/// Starts a group with `first` and adds what already arrived, within the bounds. An error
/// after some items is answered beside them, so what arrived before it is still stored.
fn gather(
    first: FeedItem,
    feed: &mut dyn ChangeFeed,
    max_changes: usize,
    max_bytes: usize,
) -> (Group, Option<Error>) {
    let mut group = Group::default();
    let mut bytes = 0;
    let mut next = Some(first);
    while let Some(item) = next {
        match item {
            FeedItem::Change { change, resume } => {
                bytes += change.bytes.len();
                group.changes.push(change);
                group.resume = Some(resume);
            }
            FeedItem::Resume(resume) => group.resume = Some(resume),
            FeedItem::Heartbeat => {}
        }
        if group.changes.len() >= max_changes || bytes >= max_bytes {
            break;
        }
        next = match feed.ready_item() {
            Ok(item) => item,
            Err(e) => return (group, Some(e)),
        };
    }
    (group, None)
}

impl Syncer {
    /// One connection to the event feed, until it ends: stores what arrives, acks, checks the
    /// server now and then. Answers the changes stored; `Ok` also when the puller should
    /// simply go on (the feed is unusable and the gate now says so, or the cursor was moved
    /// by something else and a new connection must start from it).
    ///
    /// # Errors
    /// The network, the server (an `unauthenticated` error event when the token expired: the
    /// next connection uses the token set by then), SQLite, [`Error::Closed`].
    pub(super) fn follow(&self, collection: &str, gate: &mut SseGate) -> Result<usize> {
        let _span = tracing::debug_span!("replicate_follow", collection).entered();
        let mut progress = Progress::Connecting;
        let mut applied = 0;
        let result = self.follow_connection(collection, &mut progress, &mut applied);
        let now = Instant::now();
        let retry = self.options.sse_retry;
        let result = match result {
            Err(e @ Error::Unsupported(_)) => {
                gate.fall_back(now, retry, &e);
                Ok(applied)
            }
            Err(Error::Closed) => return Err(Error::Closed),
            Err(e) => {
                gate.ended(progress, now, retry, &e);
                Err(e)
            }
            Ok(n) => Ok(n),
        };
        self.pulled(collection, &result);
        result
    }

    fn follow_connection(
        &self,
        collection: &str,
        progress: &mut Progress,
        applied: &mut usize,
    ) -> Result<usize> {
        let locks = self.locks(collection);
        let mut cursor = {
            let _pull = lock(&locks.pull);
            self.recover_on_first_open(collection)?;
            self.verify_server(collection)?;
            self.store.cursor(collection)?
        };
        let idle = self.options.sse_idle_timeout;
        let mut feed = match self.transport.events(collection, cursor, idle) {
            Ok(feed) => feed,
            Err(e) if e.code() == Some("cursor_ahead") => {
                let _pull = lock(&locks.pull);
                self.server_reset(collection)?;
                return Ok(0);
            }
            Err(e) => return Err(e),
        };
        *progress = Progress::Opened;
        tracing::debug!(cursor, "following the event stream");
        self.note(collection, Ok(()));
        let max_changes = usize::try_from(self.options.page_limit.clamp(1, 1000)).unwrap_or(1000);
        loop {
            let Some(first) = feed.next_item()? else {
                return Err(Error::Network("the server ended the event stream".into()));
            };
            *progress = Progress::Heard;
            if self.is_stopping() {
                return Err(Error::Closed);
            }
            let (group, error) = gather(first, feed.as_mut(), max_changes, GROUP_BYTES);
            if let Some(resume) = group.resume {
                super::check_page_cursor(cursor, resume, false)?;
                let _pull = lock(&locks.pull);
                if self.store.cursor(collection)? != cursor {
                    tracing::debug!("the cursor moved under the event stream; reconnecting");
                    return Ok(*applied);
                }
                let count = group.changes.len();
                *applied += self.store_changes(collection, group.changes, resume)?;
                tracing::debug!(cursor = resume, changes = count, "events stored");
                cursor = resume;
            }
            if let Some(e) = error {
                return Err(e);
            }
            // Keepalives come here too, so a quiet collection still acks its last group and
            // reads its landmark back on time.
            if let Err(e) = self.ack(collection, false) {
                tracing::debug!(error = %e, "ack failed");
            }
            let _pull = lock(&locks.pull);
            self.verify_server(collection)?;
            if self.store.cursor(collection)? != cursor {
                // A reset server (read back just now) or a `sync_once` moved the cursor:
                // start again from it.
                return Ok(*applied);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::SseFeed;

    #[test]
    fn the_gate_falls_back_and_tries_again() {
        let t0 = Instant::now();
        let retry = Duration::from_secs(300);
        let e = Error::Network("x".into());
        let mut gate = SseGate::new(true);
        assert!(gate.usable(t0));
        // a connection that said something does not count, nor one that never opened;
        // silent ones do, two in a row
        gate.ended(Progress::Opened, t0, retry, &e);
        gate.ended(Progress::Heard, t0, retry, &e);
        gate.ended(Progress::Opened, t0, retry, &e);
        for _ in 0..5 {
            gate.ended(Progress::Connecting, t0, retry, &e);
        }
        assert!(gate.usable(t0), "one silent failure after a good one");
        gate.ended(Progress::Opened, t0, retry, &e);
        assert!(!gate.usable(t0), "two silent failures in a row");
        assert!(!gate.usable(t0 + retry - Duration::from_secs(1)));
        assert!(gate.usable(t0 + retry), "tried again after the retry time");
        // an unsupported route falls back at once
        let mut gate = SseGate::new(true);
        gate.fall_back(t0, retry, &Error::Unsupported("404".into()));
        assert!(!gate.usable(t0));
        assert!(!SseGate::new(false).usable(t0), "long poll chosen");
    }

    fn change_event(seq: u64) -> String {
        format!(
            "id: {seq}\ndata: {{\"documentId\":\"d\",\"seq\":{seq},\"crdtBytes\":\"AAA=\",\"operationType\":\"update\"}}\n\n"
        )
    }

    #[test]
    fn groups_take_what_arrived_within_bounds_and_keep_items_before_an_error() {
        let mut text: String = (1..=5).map(change_event).collect();
        text.push_str(": keepalive\n\nid: 9\n\n");
        let mut feed = SseFeed::new(text.as_bytes(), 0);
        let first = feed.next_item().ok().flatten();
        let first = first.unwrap_or_else(|| panic!("an item"));
        // count bound
        let (g, e) = gather(first, &mut feed, 3, 1 << 20);
        assert!(e.is_none());
        let seqs: Vec<u64> = g.changes.iter().map(|c| c.seq).collect();
        assert_eq!((seqs, g.resume), (vec![1, 2, 3], Some(3)));
        // the rest, the keepalive and the id-only block
        let first = feed.next_item().ok().flatten();
        let first = first.unwrap_or_else(|| panic!("an item"));
        let (g, e) = gather(first, &mut feed, 100, 1 << 20);
        assert!(e.is_none());
        assert_eq!((g.changes.len(), g.resume), (2, Some(9)));
        // an error after a change: the change is kept
        let text = format!(
            "{}event: error\ndata: {{\"error\":{{\"code\":\"unauthenticated\",\"message\":\"m\"}}}}\n\n",
            change_event(4)
        );
        let mut feed = SseFeed::new(text.as_bytes(), 3);
        let first = feed.next_item().ok().flatten();
        let first = first.unwrap_or_else(|| panic!("an item"));
        let (g, e) = gather(first, &mut feed, 100, 1 << 20);
        assert_eq!((g.changes.len(), g.resume), (1, Some(4)));
        assert_eq!(e.as_ref().and_then(Error::code), Some("unauthenticated"));
    }
}
