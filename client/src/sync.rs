//! The sync loop: push the pending queue in batches, pull stream pages (or, in the
//! background, events: `follow`) into SQLite, ack, follow the server's compaction hint,
//! recover, back off. [`Syncer`] holds one client's shared state; its steps are called by
//! [`Syncer::sync_once`] (apps that drive sync) and by the background threads of
//! `Syncer::spawn_puller` / `Syncer::spawn_pusher`.
//!
//! # Invariants
//! - A page's changes (or a group of events) and its cursor are stored in one SQLite
//!   transaction (`Syncer::store_changes`), before they are applied to live documents and
//!   before the cursor is acked: the server never hears "synced up to N" for something not
//!   on disk.
//! - A pending write leaves the queue only when the server answered it (a seq, or a
//!   duplicate of a stored opId), or refused it for good (a per-write 4xx error, moved to
//!   `rejected` and logged). Everything else — network errors, lost answers, 5xx, 401/403 —
//!   leaves it queued, to be sent again with the same opId.
//! - After [`Syncer::close`] returns, no thread of this client writes SQLite again.

mod follow;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::crdt;
use crate::doc::LiveDocs;
use crate::error::{Error, Result};
use crate::ids;
use crate::landmark::Landmark;
use crate::signal::Signal;
use crate::store::{IncomingChange, PendingWrite, Store};
use crate::transport::Transport;
use crate::wire::{BatchResult, Change, ErrorBody};

/// Tuning of the sync loop. The defaults suit an app on a phone or a desktop.
#[derive(Debug, Clone)]
pub struct SyncOptions {
    /// Peer id to ack as. Default: persisted per database, `sub:<random>` when the token has
    /// a `sub` claim (the server requires that with authentication on), else
    /// `replicate-client:<random>`.
    pub peer_id: Option<String>,
    /// fsync every local edit (SQLite `synchronous = FULL`, the default): an edit survives a
    /// power cut once the call that made it returned. `false` (`NORMAL`) keeps it safe from a
    /// crash of the app but not of the machine, and saves an fsync per edit.
    pub fsync_edits: bool,
    /// Changes per stream page (1..=1000), and at most per group of events stored in one
    /// transaction.
    pub page_limit: u32,
    /// Writes per batch (1..=1000).
    pub batch_max_writes: usize,
    /// Update bytes per batch (base64 grows them by a third; keep well under the server's
    /// 16 MiB body limit).
    pub batch_max_bytes: usize,
    /// How the background puller hears of new changes (the default: the event stream, with
    /// long polls as the fallback). [`Syncer::sync_once`] always reads pages.
    pub pull: Pull,
    /// How long a background long poll waits on the server for news.
    pub long_poll: Duration,
    /// How long the event stream may stay silent before the connection counts as dead (the
    /// server sends a keepalive every 15 s by default, so three of them).
    pub sse_idle_timeout: Duration,
    /// After the event stream proved unusable (no route, not an event stream, connections
    /// that break before saying anything), how long to long-poll before trying it again.
    pub sse_retry: Duration,
    /// Least time between two acks of one collection.
    pub ack_interval: Duration,
    /// Least time between two compaction requests for one document.
    pub compact_hint_interval: Duration,
    /// Unmerged updates a document may have locally before they are merged into its snapshot.
    pub local_compaction_threshold: u64,
    /// First wait after an error; doubled on each further error.
    pub backoff_min: Duration,
    /// Longest wait between attempts.
    pub backoff_max: Duration,
}

impl Default for SyncOptions {
    fn default() -> Self {
        SyncOptions {
            peer_id: None,
            fsync_edits: true,
            page_limit: 1000,
            batch_max_writes: 1000,
            batch_max_bytes: 4 << 20,
            pull: Pull::Sse,
            long_poll: Duration::from_secs(20),
            sse_idle_timeout: Duration::from_secs(45),
            sse_retry: Duration::from_secs(300),
            ack_interval: Duration::from_secs(1),
            compact_hint_interval: Duration::from_secs(60),
            local_compaction_threshold: 100,
            backoff_min: Duration::from_millis(250),
            backoff_max: Duration::from_secs(30),
        }
    }
}

/// How the background puller follows the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Pull {
    /// Follow `GET /v1/{c}/events` (Server-Sent Events): changes arrive as they commit over
    /// one connection. Falls back to [`Pull::LongPoll`] while the server or a proxy does not
    /// serve it, and tries again after [`SyncOptions::sse_retry`].
    #[default]
    Sse,
    /// Long-poll `GET /v1/{c}/stream` only.
    LongPoll,
}

/// What one [`Syncer::sync_once`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SyncReport {
    /// Changes applied from the server.
    pub pulled: usize,
    /// Local writes the server acknowledged.
    pub pushed: usize,
    /// Local writes refused for good (see [`crate::Collection::rejected`]).
    pub rejected: usize,
    /// The stored cursor afterwards.
    pub cursor: u64,
    /// Writes still queued.
    pub pending: u64,
}

/// What the app can show about a collection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The last request to the server succeeded.
    pub online: bool,
    /// Local writes the server has not acknowledged yet.
    pub pending: u64,
    /// The stored cursor: every change up to this seq is applied locally.
    pub last_synced_seq: u64,
    /// Local writes the server refused for good.
    pub rejected: u64,
    /// The last error, while offline or failing.
    pub last_error: Option<String>,
}

/// In-memory state of one collection's sync.
#[derive(Default)]
struct CollectionState {
    online: bool,
    last_error: Option<String>,
    /// (seq, when) of the last ack the server took.
    last_ack: Option<(u64, Instant)>,
    compact_hints: HashMap<String, Instant>,
    recovered: bool,
    pulled_once: bool,
    /// When the server was last checked to be the one the cursor came from (see
    /// [`Landmark`]); cleared by any failed pull (a reconnection).
    verified_at: Option<Instant>,
}

/// Serializes pulls and pushes of one collection (background and `sync_once`).
#[derive(Default)]
struct CollectionLocks {
    pull: Mutex<()>,
    push: Mutex<()>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often a connected client reads its landmark back anyway: a server can be reset and
/// refilled between two requests without the client ever seeing an error.
const VERIFY_INTERVAL: Duration = Duration::from_secs(30);

/// Per-write error codes that say "try again later", not "this write is wrong".
fn is_transient_code(code: &str) -> bool {
    matches!(
        code,
        "overloaded"
            | "unavailable"
            | "shutting_down"
            | "storage_failed"
            | "storage_full"
            | "storage"
            | "internal"
            | "timeout"
            | "request_timeout"
            | "unauthenticated"
            | "forbidden"
    )
}

/// One client's sync state, shared by its handles and threads.
pub struct Syncer {
    pub(crate) store: Arc<Store>,
    pub(crate) live: LiveDocs,
    pub(crate) pushed: Arc<Signal>,
    transport: Arc<dyn Transport>,
    options: SyncOptions,
    peer_id: String,
    states: Mutex<HashMap<String, CollectionState>>,
    locks: Mutex<HashMap<String, Arc<CollectionLocks>>>,
    /// True while the client is open; held during every SQLite write of the sync loop.
    open: Mutex<bool>,
    stopping: AtomicBool,
    /// Ends the backoff waits of the background threads: on close, and when retrying is
    /// worth it now ([`Syncer::retry_now`]).
    wake: Signal,
    /// The server has no batch route (404): push with single writes.
    single_writes: AtomicBool,
}

impl Syncer {
    /// A syncer over `store` and `transport`.
    pub(crate) fn new(
        store: Arc<Store>,
        transport: Arc<dyn Transport>,
        options: SyncOptions,
        peer_id: String,
    ) -> Syncer {
        Syncer {
            store,
            live: LiveDocs::default(),
            pushed: Arc::new(Signal::default()),
            transport,
            options,
            peer_id,
            states: Mutex::new(HashMap::new()),
            locks: Mutex::new(HashMap::new()),
            open: Mutex::new(true),
            stopping: AtomicBool::new(false),
            wake: Signal::default(),
            single_writes: AtomicBool::new(false),
        }
    }

    /// The local compaction threshold.
    pub(crate) fn compact_threshold(&self) -> u64 {
        self.options.local_compaction_threshold
    }

    /// The peer id acks are sent as.
    pub fn peer_id(&self) -> &str {
        &self.peer_id
    }

    fn locks(&self, collection: &str) -> Arc<CollectionLocks> {
        lock(&self.locks)
            .entry(collection.to_string())
            .or_default()
            .clone()
    }

    fn with_state<R>(&self, collection: &str, f: impl FnOnce(&mut CollectionState) -> R) -> R {
        f(lock(&self.states)
            .entry(collection.to_string())
            .or_default())
    }

    /// Holds the client open for a write; `None` once closed.
    fn gate(&self) -> Result<MutexGuard<'_, bool>> {
        let g = lock(&self.open);
        if *g {
            Ok(g)
        } else {
            Err(Error::Closed)
        }
    }

    fn note(&self, collection: &str, outcome: Result<(), &Error>) {
        self.with_state(collection, |s| match outcome {
            Ok(()) => {
                s.online = true;
                s.last_error = None;
            }
            Err(e) => {
                if matches!(e, Error::Network(_)) || e.is_transient() {
                    s.online = false;
                }
                s.last_error = Some(e.to_string());
            }
        });
    }

    /// Stops the background threads and closes the gate: after this returns no thread of
    /// this client writes SQLite (a request in flight finishes and its answer is dropped;
    /// the writes it carried stay queued and go again with their opIds).
    pub fn close(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        *lock(&self.open) = false;
        self.wake.notify();
        self.pushed.notify();
    }

    /// Wakes the background threads from their backoff so they try again at once (a fresh
    /// token was set: waiting up to `backoff_max` for it would only delay sync).
    pub(crate) fn retry_now(&self) {
        self.wake.notify();
        self.pushed.notify();
    }

    fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// The collection's status for the app.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn status(&self, collection: &str) -> Result<Status> {
        let (online, last_error) =
            self.with_state(collection, |s| (s.online, s.last_error.clone()));
        Ok(Status {
            online,
            pending: self.store.pending_count(collection)?,
            last_synced_seq: self.store.cursor(collection)?,
            rejected: self.store.rejected(collection)?.len() as u64,
            last_error,
        })
    }

    /// One full round: pull what is new, push the queue, pull again (so the cursor covers
    /// the writes just pushed) and ack.
    ///
    /// # Errors
    /// The first failure (the queue and the cursor stay as they were for what did not
    /// complete; calling again resumes).
    pub fn sync_once(&self, collection: &str) -> Result<SyncReport> {
        let _span = tracing::info_span!("replicate_sync_once", collection).entered();
        let mut report = SyncReport::default();
        report.pulled += self.pull(collection, 0)?;
        let (pushed, rejected) = self.push(collection)?;
        report.pushed = pushed;
        report.rejected = rejected;
        if pushed > 0 {
            report.pulled += self.pull(collection, 0)?;
        }
        self.ack(collection, true)?;
        report.cursor = self.store.cursor(collection)?;
        report.pending = self.store.pending_count(collection)?;
        Ok(report)
    }

    /// On the first pull of a collection this client never synced: for each document held
    /// locally (made offline, or restored from a copy), asks the server what it misses
    /// (recovery by state vector) before streaming, so the app sees the server's state of
    /// its own documents first.
    fn recover_on_first_open(&self, collection: &str) -> Result<()> {
        if self.with_state(collection, |s| s.recovered) {
            return Ok(());
        }
        if !self.store.has_synced(collection)? {
            for document_id in self.store.documents(collection)? {
                let parts = self.store.load_document(collection, &document_id)?;
                let sv = match crdt::state_vector(parts.iter().map(Vec::as_slice)) {
                    Ok(sv) => sv,
                    Err(e) => {
                        // One damaged document must not stop the collection from syncing.
                        tracing::error!(collection, document = %document_id, error = %e, "stored document does not decode; not recovered");
                        continue;
                    }
                };
                let (diff, _) = self.transport.recovery(collection, &document_id, &sv)?;
                if crdt::is_empty_update(&diff) || crdt::decode(&diff).is_err() {
                    continue;
                }
                let _gate = self.gate()?;
                self.store.store_updates(
                    collection,
                    &[IncomingChange {
                        document_id: document_id.clone(),
                        bytes: diff.clone(),
                    }],
                )?;
                self.live.apply(collection, &[(document_id, diff)]);
            }
        }
        self.with_state(collection, |s| s.recovered = true);
        Ok(())
    }

    /// The server answered `cursor_ahead` (it holds fewer seqs than this client has seen) or
    /// holds another change where this client's last one was: its data was reset. Queues every document's whole local state (fresh opIds) and
    /// restarts the stream from 0, so nothing this client holds is lost and everything the
    /// reset server got since comes in.
    fn server_reset(&self, collection: &str) -> Result<()> {
        let locks = self.locks(collection);
        let _push = lock(&locks.push);
        let _gate = self.gate()?;
        let queued = self.store.requeue_everything(collection, ids::op_id)?;
        tracing::warn!(
            collection,
            documents = queued,
            "the server does not hold the changes this client's cursor covers (its data was \
             reset): pushing the whole local state again and streaming from 0"
        );
        self.with_state(collection, |s| s.last_ack = None);
        self.pushed.notify();
        Ok(())
    }

    /// Pulls pages until the server has no more; the first waits up to `wait_ms` for news.
    /// Answers how many changes were applied.
    ///
    /// # Errors
    /// The server or the network failed (what was stored stays stored).
    pub fn pull(&self, collection: &str, wait_ms: u64) -> Result<usize> {
        let _span = tracing::debug_span!("replicate_pull", collection, wait_ms).entered();
        let locks = self.locks(collection);
        let _pull = lock(&locks.pull);
        let result = self.pull_locked(collection, wait_ms);
        self.pulled(collection, &result);
        result
    }

    /// Records how a pull (a long poll or a session on the event feed) ended.
    fn pulled(&self, collection: &str, result: &Result<usize>) {
        self.note(collection, result.as_ref().map(|_| ()));
        if result.is_ok() {
            self.with_state(collection, |s| s.pulled_once = true);
            self.pushed.notify();
        } else {
            // Whatever comes back after an outage may be another server: check again.
            self.with_state(collection, |s| s.verified_at = None);
        }
    }

    /// Reads back the last delta this client applied: if the server now holds another
    /// change at that seq, its data was reset (and refilled past the cursor, or the stream
    /// would have answered `cursor_ahead`).
    fn verify_server(&self, collection: &str) -> Result<()> {
        let now = Instant::now();
        let fresh = self.with_state(collection, |s| {
            s.verified_at
                .is_some_and(|at| now.duration_since(at) < VERIFY_INTERVAL)
        });
        if fresh {
            return Ok(());
        }
        let cursor = self.store.cursor(collection)?;
        if let Some(landmark) = self.store.landmark(collection)? {
            if landmark.seq >= 1 && landmark.seq <= cursor {
                match self.transport.stream(collection, landmark.seq - 1, 1, 0) {
                    Ok(page) => {
                        if landmark.matches(&page.changes) == Some(false) {
                            self.server_reset(collection)?;
                        } else if let Some(document_id) = page.compact {
                            // The event feed carries no compaction hint: this read-back,
                            // at least every VERIFY_INTERVAL, is where a client following
                            // it hears of one.
                            self.compact_hint(collection, &document_id);
                        }
                    }
                    // The stream below says so again and resets.
                    Err(e) if e.code() == Some("cursor_ahead") => {}
                    Err(e) => return Err(e),
                }
            }
        }
        self.with_state(collection, |s| s.verified_at = Some(now));
        Ok(())
    }

    fn pull_locked(&self, collection: &str, mut wait_ms: u64) -> Result<usize> {
        self.recover_on_first_open(collection)?;
        self.verify_server(collection)?;
        let mut applied = 0;
        let mut reset = false;
        loop {
            let cursor = self.store.cursor(collection)?;
            let page = match self.transport.stream(
                collection,
                cursor,
                self.options.page_limit.clamp(1, 1000),
                wait_ms,
            ) {
                Ok(page) => page,
                Err(e) if e.code() == Some("cursor_ahead") && !reset => {
                    self.server_reset(collection)?;
                    reset = true;
                    continue;
                }
                Err(e) => return Err(e),
            };
            check_page_cursor(cursor, page.cursor, page.has_more)?;
            let stored = self.store_changes(collection, page.changes, page.cursor)?;
            applied += stored;
            tracing::debug!(
                collection,
                cursor = page.cursor,
                changes = stored,
                "page applied"
            );
            if let Some(document_id) = page.compact {
                self.compact_hint(collection, &document_id);
            }
            if !page.has_more {
                return Ok(applied);
            }
            wait_ms = 0;
        }
    }

    /// Stores `changes` and the `cursor` they bring the collection to in one SQLite
    /// transaction, then applies them to the live documents and compacts the documents they
    /// touched. The one way pulled changes (a long-poll page or a group of events) go in.
    /// Answers how many were stored. The caller holds the collection's pull lock.
    ///
    /// # Errors
    /// A SQLite failure (nothing stored, the cursor unmoved) or [`Error::Closed`].
    fn store_changes(&self, collection: &str, incoming: Vec<Change>, cursor: u64) -> Result<usize> {
        let landmark = incoming.iter().rev().find_map(Landmark::of);
        let mut changes = Vec::with_capacity(incoming.len());
        for change in incoming {
            if let Err(e) = crdt::decode(&change.bytes) {
                // The server validates every write; bytes it sends that do not decode
                // would wedge local compaction, so they are skipped, loudly.
                tracing::error!(collection, seq = change.seq, document = %change.document_id, error = %e, "undecodable change skipped");
                continue;
            }
            changes.push(IncomingChange {
                document_id: change.document_id,
                bytes: change.bytes,
            });
        }
        let _gate = self.gate()?;
        self.store
            .apply_page(collection, &changes, cursor, landmark.as_ref())?;
        let live: Vec<(String, Vec<u8>)> = changes
            .iter()
            .map(|c| (c.document_id.clone(), c.bytes.clone()))
            .collect();
        self.live.apply(collection, &live);
        let mut touched: Vec<&str> = changes.iter().map(|c| c.document_id.as_str()).collect();
        touched.sort_unstable();
        touched.dedup();
        for document_id in touched {
            if let Err(e) = self.store.compact_document(
                collection,
                document_id,
                self.options.local_compaction_threshold,
            ) {
                tracing::warn!(collection, document_id, error = %e, "local compaction failed");
            }
        }
        Ok(changes.len())
    }

    /// Asks the server to compact a document it named in a page, at most once per
    /// `compact_hint_interval`. Failures are logged, not fatal (a read-only token gets 403).
    fn compact_hint(&self, collection: &str, document_id: &str) {
        let now = Instant::now();
        let due = self.with_state(collection, |s| {
            let due = s
                .compact_hints
                .get(document_id)
                .is_none_or(|at| now.duration_since(*at) >= self.options.compact_hint_interval);
            if due {
                s.compact_hints.insert(document_id.to_string(), now);
            }
            due
        });
        if !due {
            return;
        }
        match self.transport.compact(collection, document_id) {
            Ok(()) => tracing::info!(collection, document_id, "compacted on the server's hint"),
            Err(e) => {
                tracing::warn!(collection, document_id, error = %e, "compaction hint not followed")
            }
        }
    }

    /// Pushes the whole queue of `collection`. Answers (acknowledged, rejected).
    ///
    /// # Errors
    /// A failure that leaves writes queued (network, 5xx, auth).
    pub fn push(&self, collection: &str) -> Result<(usize, usize)> {
        let _span = tracing::debug_span!("replicate_push", collection).entered();
        let locks = self.locks(collection);
        let _push = lock(&locks.push);
        let result = self.push_locked(collection);
        self.note(collection, result.as_ref().map(|_| ()));
        result
    }

    fn push_locked(&self, collection: &str) -> Result<(usize, usize)> {
        let mut max = self.options.batch_max_writes.clamp(1, 1000);
        let (mut acked, mut rejected) = (0, 0);
        loop {
            if self.is_stopping() {
                return Err(Error::Closed);
            }
            let batch = self
                .store
                .pending_batch(collection, max, self.options.batch_max_bytes)?;
            if batch.is_empty() {
                return Ok((acked, rejected));
            }
            if self.single_writes.load(Ordering::Relaxed) {
                let (a, r) = self.push_single(collection, &batch)?;
                acked += a;
                rejected += r;
                continue;
            }
            let results = match self.transport.batch(collection, &batch) {
                Ok(results) => results,
                Err(Error::Server { status: 404, .. }) => {
                    tracing::warn!(
                        collection,
                        "the server has no batch route: pushing one write per request"
                    );
                    self.single_writes.store(true, Ordering::Relaxed);
                    continue;
                }
                Err(Error::Server { status: 413, .. }) if max > 1 => {
                    max = (max / 2).max(1);
                    continue;
                }
                Err(Error::Server {
                    status: 413,
                    code,
                    message,
                }) => {
                    // One write alone is over the body limit: it can never go.
                    self.reject(collection, &batch[0], &ErrorBody { code, message })?;
                    rejected += 1;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if results.len() != batch.len() {
                return Err(Error::Protocol(format!(
                    "{} results for {} writes",
                    results.len(),
                    batch.len()
                )));
            }
            let (a, r, retry) = self.settle(collection, &batch, &results)?;
            tracing::debug!(
                collection,
                writes = batch.len(),
                acked = a,
                rejected = r,
                "batch answered"
            );
            acked += a;
            rejected += r;
            if let Some(e) = retry {
                return Err(Error::Server {
                    status: 503,
                    code: e.code,
                    message: e.message,
                });
            }
        }
    }

    /// Applies a batch's results to the queue. Answers (acked, rejected, a transient error
    /// that left some writes queued).
    fn settle(
        &self,
        collection: &str,
        batch: &[PendingWrite],
        results: &[BatchResult],
    ) -> Result<(usize, usize, Option<ErrorBody>)> {
        let mut done = Vec::new();
        let mut rejected = 0;
        let mut retry = None;
        let _gate = self.gate()?;
        for (write, result) in batch.iter().zip(results) {
            match result {
                BatchResult::Accepted(a) => {
                    tracing::trace!(collection, op_id = %write.op_id, seq = a.seq, duplicate = a.duplicate, "write acknowledged");
                    done.push(write.id);
                }
                BatchResult::Refused { error } if is_transient_code(&error.code) => {
                    retry.get_or_insert_with(|| error.clone());
                }
                BatchResult::Refused { error } => {
                    self.reject_locked(collection, write, error)?;
                    rejected += 1;
                }
            }
        }
        self.store.remove_pending(&done)?;
        Ok((done.len(), rejected, retry))
    }

    fn reject(&self, collection: &str, write: &PendingWrite, error: &ErrorBody) -> Result<()> {
        let _gate = self.gate()?;
        self.reject_locked(collection, write, error)
    }

    fn reject_locked(
        &self,
        collection: &str,
        write: &PendingWrite,
        error: &ErrorBody,
    ) -> Result<()> {
        tracing::warn!(
            collection,
            document = %write.document_id,
            op_id = %write.op_id,
            code = %error.code,
            message = %error.message,
            "the server refused a local write for good; it is dropped from the queue (see Collection::rejected)"
        );
        self.store
            .reject_pending(write.id, &error.code, &error.message)
    }

    /// The fallback for servers without the batch route: one request per write, same opIds.
    fn push_single(&self, collection: &str, batch: &[PendingWrite]) -> Result<(usize, usize)> {
        let (mut acked, mut rejected) = (0, 0);
        for write in batch {
            match self.transport.write(collection, write) {
                Ok(_) => {
                    let _gate = self.gate()?;
                    self.store.remove_pending(&[write.id])?;
                    acked += 1;
                }
                Err(Error::Server {
                    status,
                    code,
                    message,
                }) if (400..500).contains(&status) && !is_transient_code(&code) => {
                    self.reject(collection, write, &ErrorBody { code, message })?;
                    rejected += 1;
                }
                Err(e) => return Err(e),
            }
        }
        Ok((acked, rejected))
    }

    /// Acks the stored cursor if it moved, at most once per `ack_interval` unless `force`.
    ///
    /// # Errors
    /// The ack failed for a reason other than the server being behind (`ack_ahead`).
    pub fn ack(&self, collection: &str, force: bool) -> Result<()> {
        let cursor = self.store.cursor(collection)?;
        if cursor == 0 {
            return Ok(());
        }
        let now = Instant::now();
        let due = self.with_state(collection, |s| match s.last_ack {
            None => true,
            Some((seq, at)) => {
                seq != cursor && (force || now.duration_since(at) >= self.options.ack_interval)
            }
        });
        if !due {
            return Ok(());
        }
        match self.transport.ack(collection, &self.peer_id, cursor) {
            Ok(_) => {
                self.with_state(collection, |s| s.last_ack = Some((cursor, now)));
                Ok(())
            }
            Err(e) if e.code() == Some("ack_ahead") => {
                tracing::debug!(
                    collection,
                    cursor,
                    "ack ahead of the server; the next pull recovers"
                );
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// The wait before the next attempt after `failures` consecutive errors (doubling, with
    /// up to 25 % jitter so many clients do not retry in step).
    fn backoff(&self, failures: u32) -> Duration {
        let base = self
            .options
            .backoff_min
            .saturating_mul(1u32 << failures.min(16))
            .min(self.options.backoff_max);
        let jitter = rand::Rng::gen_range(&mut rand::thread_rng(), 0.0..0.25);
        base.mul_f64(1.0 + jitter)
    }

    /// Starts the background puller of `collection`: follows the event feed (or long polls
    /// while it is unusable, or with [`Pull::LongPoll`]), applies, acks; backs off on errors.
    pub(crate) fn spawn_puller(self: &Arc<Self>, collection: String) {
        let this = self.clone();
        let wait_ms = u64::try_from(self.options.long_poll.as_millis()).unwrap_or(u64::MAX);
        let spawned = std::thread::Builder::new()
            .name(format!("replicate-pull-{collection}"))
            .spawn(move || {
                let span = tracing::info_span!("replicate_pull", collection = %collection, peer = %this.peer_id);
                let _enter = span.enter();
                let mut failures = 0u32;
                let mut sse = follow::SseGate::new(this.options.pull == Pull::Sse);
                while !this.is_stopping() {
                    let seen = this.wake.seen();
                    // The first pull is a page read that does not wait: it runs recovery,
                    // catches up in big pages, and lets the pusher start right after it.
                    let pulled_once = this.with_state(&collection, |s| s.pulled_once);
                    let outcome = if pulled_once && sse.usable(Instant::now()) {
                        this.follow(&collection, &mut sse)
                    } else {
                        this.pull(&collection, if pulled_once { wait_ms } else { 0 })
                    };
                    match outcome {
                        Ok(_) => {
                            failures = 0;
                            if let Err(e) = this.ack(&collection, false) {
                                tracing::debug!(error = %e, "ack failed");
                            }
                        }
                        Err(Error::Closed) => return,
                        Err(e) => {
                            let wait = this.backoff(failures);
                            failures = failures.saturating_add(1);
                            tracing::info!(error = %e, retry_in_ms = wait.as_millis() as u64, "pull failed");
                            this.wake.wait(seen, wait);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the pull thread");
        }
    }

    /// Starts the background pusher for `collections` (read on every round, so collections
    /// opened later are pushed too): wakes on every local edit, pushes each collection whose
    /// first pull of this process is done (so a server reset is noticed before pushing into
    /// it), backs off on errors.
    pub(crate) fn spawn_pusher(self: &Arc<Self>, collections: Arc<Mutex<Vec<String>>>) {
        let this = self.clone();
        let spawned = std::thread::Builder::new()
            .name("replicate-push".into())
            .spawn(move || {
                let span = tracing::info_span!("replicate_push");
                let _enter = span.enter();
                let mut failures = 0u32;
                while !this.is_stopping() {
                    let seen = this.pushed.seen();
                    let names = lock(&collections).clone();
                    let mut error = None;
                    for c in &names {
                        if !this.with_state(c, |s| s.pulled_once) {
                            continue;
                        }
                        match this.push(c) {
                            Ok(_) => {}
                            Err(Error::Closed) => return,
                            Err(e) => error = Some(e),
                        }
                    }
                    match error {
                        None => {
                            failures = 0;
                            this.pushed.wait(seen, Duration::from_secs(5));
                        }
                        Some(e) => {
                            let wait = this.backoff(failures);
                            failures = failures.saturating_add(1);
                            tracing::info!(error = %e, retry_in_ms = wait.as_millis() as u64, "push failed");
                            let stop_seen = this.wake.seen();
                            this.wake.wait(stop_seen, wait);
                        }
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::error!(error = %e, "could not start the push thread");
        }
    }
}

/// A page (or a group of events) answered from `asked` must not move the cursor back, and a
/// page saying more is ready must move it forward. An honest server never does either (a
/// server that lost its data answers `cursor_ahead` instead); a hostile or broken one made the
/// stored cursor go back (downloading and storing the same changes again) or the pull loop ask
/// for the same page forever.
///
/// # Errors
/// [`Error::Protocol`] naming both cursors.
pub(crate) fn check_page_cursor(asked: u64, answered: u64, has_more: bool) -> Result<()> {
    if answered < asked || (has_more && answered == asked) {
        return Err(Error::Protocol(format!(
            "the page from cursor {asked} answered cursor {answered} (hasMore {has_more})"
        )));
    }
    Ok(())
}
