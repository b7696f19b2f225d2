//! The collection actor: one per collection and process.
//!
//! On an engine owned by this process (sled) it is the only writer of its seqs: it assigns
//! seq = previous + 1 from its own counter (persisted in the same batch as the delta it
//! numbers), stores the write, and answers once the group commit has made it durable. On an
//! engine several nodes share ([`crate::store::Engine::numbers_appends`]: PostgreSQL) the
//! commit numbers the write instead, and the actor answers the seq the commit gave; heads
//! committed by other nodes reach it as [`HeadMoved`] (and by polling while readers wait).
//! Readers only ever see seqs up to `durable`, so a seq a reader saw can never be lost in a
//! crash and issued again. Stream pages, acks and compaction applies also run here, so each
//! sees a consistent view of the collection.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

mod batch;
mod state;

pub use batch::AppendBatch;

use crate::clock;
use crate::compaction;
use crate::compactor;
use crate::crdt::{self, DocState, Merged, YjsLimits};
use crate::doc_counters::{self, DocCounters};
use crate::error::{Error, Result};
use crate::paging::{self, DeletedEntry, PageBounds, PageSource};
use crate::peers::PeerTable;
use crate::registry::Shared;
use state::{CollectionState, Numbered};

use crate::store::{
    Batch, CompactionGuard, CompactionWrite, DeletedEntries, DeltaRecord, DocStats, OpWrite,
    Outcome, PeerRecord, SnapshotRecord, Store,
};
use crate::types::{
    Change, CollectionStats, CompactRequest, Compacted, OperationType, StreamPage, Write, Written,
};

/// How often an actor checks whether it has been idle long enough to stop.
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(5);
/// How often an actor on a shared engine reads its head while readers wait, in case a
/// notification of another node's commit was lost.
const HEAD_CHECK_EVERY: Duration = Duration::from_secs(1);
/// Counter reads for auto-compaction running at once per collection (shared engines).
const MAX_COUNTER_READS: usize = 64;
/// Expired op ids forgotten per sweep round (one store read and one commit).
const SWEEP_BATCH: usize = 1_000;
/// Largest mailbox capacity an actor asks actix for. actix counts mailbox capacity and
/// addresses in one word, so a capacity near `usize::MAX` (an embedder's "no limit" for
/// `Config::max_in_flight`) overflows on the next `Addr::clone` and panics in the caller.
/// Admission (`Config::max_in_flight`, checked before each send) is what bounds the queue; past
/// this many queued messages a sender only waits, within its ask timeout.
const MAX_MAILBOX: usize = 1 << 20;
/// A cached document weighing this many times what a rebuild after its compaction would is
/// dropped from the cache (see [`CollectionActor::shed_outgrown`]).
const OUTGROWN_RATIO: u64 = 2;
/// ... unless it weighs less than this: rebuilding small documents saves nothing.
const OUTGROWN_FLOOR: u64 = 64 * 1024;
/// Least time between two rechecks of one document's refused writes (see
/// [`CollectionActor::may_recheck`]).
const RECHECK_EVERY_MS: u64 = 1_000;
/// Documents whose last recheck an actor remembers (forgotten all at once past it).
const MAX_RECHECKS_TRACKED: usize = 1_024;
/// Attempts of a compaction that another node's compaction of the same document superseded.
const COMPACTION_ATTEMPTS: u32 = 4;

/// What [`paging::walk`] reads for one page, from the store (see [`read_page_at`] for the order).
struct StorePages<'a> {
    store: &'a Store,
    collection: &'a str,
    /// The deleted-seq index from the look-back start; `None` when no entry was ever written.
    entries: Option<DeletedEntries>,
}

impl PageSource for StorePages<'_> {
    type Snapshot = SnapshotRecord;

    fn next_entry(&mut self) -> Result<Option<DeletedEntry>> {
        self.entries.as_mut().and_then(Iterator::next).transpose()
    }

    fn snapshot(&mut self, doc: &str) -> Result<Option<(SnapshotRecord, usize)>> {
        let snapshot = self.store.snapshot(self.collection, doc)?;
        Ok(snapshot.map(|s| {
            let size = s.bytes.len();
            (s, size)
        }))
    }

    fn legacy_owners(&mut self, seq: u64) -> Result<Vec<String>> {
        let owners =
            self.store
                .compacted_after(self.collection, seq.saturating_sub(1), usize::MAX)?;
        Ok(owners.into_iter().map(|(_, doc)| doc).collect())
    }
}

pub struct CollectionActor {
    name: String,
    /// Identifies this incarnation in the registry, so a stopping actor removes only itself.
    id: u64,
    shared: Arc<Shared>,
    /// Requests the handle has admitted for this collection and not yet answered.
    in_flight: Arc<AtomicUsize>,
    /// Seqs, document counters and pending op ids (see [`state`]).
    state: CollectionState,
    peers: PeerTable,
    /// Per document, the writes waiting for the running check of that document (whose entry
    /// is present while it runs, or while a write batch holds the document: see
    /// [`batch`]). One document's writes are checked one group at a time, each against the
    /// state the previous ones left.
    checking: HashMap<String, VecDeque<Queued>>,
    /// Write batches (`AppendBatch`) whose parts are being checked.
    batches: HashMap<u64, batch::PendingBatch>,
    next_batch: u64,
    /// Per document, the compaction waiting behind the running one (whose entry is present
    /// while it runs; later requests join the waiting one). Compactions of one document run one
    /// after another, each reading what the previous one committed, so none can lose another's
    /// snapshot.
    compactions: HashMap<String, Option<QueuedCompaction>>,
    stats: CollectionStats,
    last_activity: u64,
    stopped: bool,
    /// Whether the engine numbers appends (several nodes share it; see the module docs).
    numbering: bool,
    /// A periodic head read is running (at most one at a time).
    head_check_running: bool,
    /// A sweep of expired op ids is running (the actor does not stop before it commits).
    sweep_running: bool,
    /// Documents whose counters are being read off this thread for auto-compaction.
    counter_reads: HashSet<String>,
    /// Per document, when a refusal last sent its writes to be checked again against a
    /// rebuild (shared engines; see [`Self::may_recheck`]).
    rechecked_at: HashMap<String, u64>,
}

impl CollectionActor {
    /// Loads the collection's counters and peers from the store.
    ///
    /// # Errors
    /// [`Error::Storage`] if the store cannot be read.
    pub(crate) fn load(
        name: String,
        id: u64,
        shared: Arc<Shared>,
        in_flight: Arc<AtomicUsize>,
    ) -> Result<Self> {
        let loaded = shared.store.load_collection(&name, LARGEST_TRACKED)?;
        let docs = DocCounters::new(
            loaded.documents,
            loaded.retained_bytes,
            loaded.largest,
            shared.config.doc_counters_cached,
            LARGEST_TRACKED,
        );
        let now = shared.clock.now_millis();
        Ok(CollectionActor {
            stats: CollectionStats {
                collection: name.clone(),
                ..Default::default()
            },
            name,
            id,
            in_flight,
            // Everything on disk at load time was either flushed before a restart or written by
            // a previous incarnation in this process that stopped with nothing pending.
            state: CollectionState::new(loaded.high_water, docs),
            peers: PeerTable::from_records(loaded.peers),
            checking: HashMap::new(),
            batches: HashMap::new(),
            next_batch: 0,
            compactions: HashMap::new(),
            last_activity: now,
            stopped: false,
            numbering: shared.store.numbers_appends(),
            head_check_running: false,
            counter_reads: HashSet::new(),
            rechecked_at: HashMap::new(),
            sweep_running: false,
            shared,
        })
    }

    fn touch(&mut self) -> Result<()> {
        if self.stopped {
            return Err(Error::Relocated);
        }
        self.last_activity = self.shared.clock.now_millis();
        Ok(())
    }

    /// Records `doc`'s new counters, changed by a write marked `dirty` (see
    /// [`DocCounters::set`]).
    fn set_doc_stats(&mut self, doc: &str, new: DocStats, dirty: u64) -> Result<()> {
        self.state
            .docs
            .set(&self.shared.store, &self.name, doc, new, dirty)
    }

    fn mark_durable(&mut self, seq: u64) {
        self.state.mark_durable(seq);
    }

    /// Runs `read` on a read worker when the engine has them (a shared engine: a database
    /// round trip must not hold up this actor, nor the other actors of its arbiter), else
    /// where the future is polled (sled: a local read).
    fn read_off_thread<T, F>(&self, read: F) -> impl std::future::Future<Output = Result<T>>
    where
        T: Send + 'static,
        F: FnOnce(&Store, &str) -> Result<T> + Send + 'static,
    {
        let (store, name) = (self.shared.store.clone(), self.name.clone());
        let readers = self.shared.read_workers.clone();
        async move {
            match readers {
                Some(readers) => readers.run(move || read(&store, &name)).await?,
                None => read(&store, &name),
            }
        }
    }

    /// On a shared engine: the head in the store, read off this thread. Take it in with
    /// [`Self::head_moved`].
    fn read_head(&self) -> impl std::future::Future<Output = Result<u64>> + 'static {
        self.read_off_thread(|store, name| store.head(name))
    }

    /// A head committed by another node: everything up to it is committed, and the documents
    /// built here may lack what it added.
    fn head_moved(&mut self, head: u64) {
        if head > self.state.durable() {
            self.shared.docs.forget_collection(&self.name);
            self.mark_durable(head);
        }
    }

    /// The document with the most retained bytes, if above `threshold`.
    fn compaction_hint(&self, threshold: u64) -> Option<String> {
        self.state
            .docs
            .largest()
            .filter(|(bytes, _)| *bytes > threshold)
            .map(|(_, d)| d.to_string())
    }

    fn snapshot_stats(&self) -> CollectionStats {
        CollectionStats {
            assigned_seq: self.state.assigned(),
            durable_seq: self.state.durable(),
            waiters: self.state.waiters() as u64,
            documents: self.state.docs.documents(),
            retained_bytes: self.state.docs.retained_bytes(),
            peers: self.peers.len() as u64,
            ..self.stats.clone()
        }
    }

    /// The head a page from `cursor` reads up to, on an engine this process owns.
    ///
    /// # Errors
    /// [`Error::CursorAhead`] when `cursor` is above it.
    fn page_head(&self, cursor: u64) -> Result<u64> {
        let head = self.state.durable();
        if cursor > head {
            return Err(Error::CursorAhead { cursor, head });
        }
        Ok(head)
    }

    /// A page read up to `head`, with the compaction hint of now.
    fn page(
        &mut self,
        (changes, cursor): (Vec<Change>, u64),
        head: u64,
        threshold: u64,
    ) -> StreamPage {
        self.stats.stream_pages += 1;
        StreamPage {
            changes,
            cursor,
            has_more: cursor < head,
            compact: self.compaction_hint(threshold),
        }
    }

    /// Queues a compaction of `doc` once it passes the size threshold (if enabled and none is
    /// queued or running for it already).
    fn auto_compact(&mut self, doc: &str, ctx: &mut Context<Self>) {
        // Off by default: then no counters are read (a store read on a miss).
        if !self.shared.config.auto_compact || self.compactions.contains_key(doc) {
            return;
        }
        let threshold = self.shared.config.size_threshold;
        let stats = match self.state.docs.peek(doc) {
            Some(stats) => stats,
            None if self.numbering => return self.read_counters_then_auto_compact(doc, ctx),
            None => match self.state.docs.get(&self.shared.store, &self.name, doc) {
                Ok(stats) => stats,
                Err(_) => return,
            },
        };
        if stats.retained_bytes <= threshold {
            return;
        }
        let (tx, _) = oneshot::channel();
        let timeout = clock::millis(self.shared.config.peer_timeout);
        self.enqueue_compaction(doc.to_string(), timeout, tx, ctx);
    }

    /// On a shared engine, `doc`'s counters are not in memory: reads them on a read worker
    /// (a database round trip must not hold up this actor), takes them in and decides then.
    /// At most [`MAX_COUNTER_READS`] run at once; past that the decision waits for the
    /// document's next write.
    fn read_counters_then_auto_compact(&mut self, doc: &str, ctx: &mut Context<Self>) {
        if self.counter_reads.len() >= MAX_COUNTER_READS || !self.counter_reads.insert(doc.into()) {
            return;
        }
        let doc = doc.to_string();
        let job_doc = doc.clone();
        let read = self.read_off_thread(move |store, name| store.doc_stats(name, &job_doc));
        ctx.spawn(read.into_actor(self).map(move |stored, act, ctx| {
            act.counter_reads.remove(&doc);
            match stored {
                Ok(stored) => {
                    act.state.docs.insert_read(&doc, stored);
                    act.auto_compact(&doc, ctx);
                }
                Err(e) => {
                    tracing::debug!(collection = %act.name, error = %e, "counters read failed")
                }
            }
        }));
    }

    /// Sweeps, then stops if quiet for the idle timeout (after the sweep's commit: the actor
    /// does not stop while that runs, and a collection's last sweep is the one before it stops).
    fn check_idle(&mut self, ctx: &mut Context<Self>) {
        self.sweep(ctx);
    }

    /// Whether a refusal of `doc`'s writes by its cached document may send them to be checked
    /// again against a rebuild (see [`Self::finish_check`]), and if so notes it: at most once
    /// per [`RECHECK_EVERY_MS`] per document, so a client sending refused writes on purpose
    /// costs at most one rebuild a second per document, not one per request.
    fn may_recheck(&mut self, doc: &str) -> bool {
        let now = self.shared.clock.now_millis();
        if let Some(at) = self.rechecked_at.get(doc) {
            if now.saturating_sub(*at) < RECHECK_EVERY_MS {
                return false;
            }
        }
        if self.rechecked_at.len() >= MAX_RECHECKS_TRACKED {
            self.rechecked_at.clear();
        }
        self.rechecked_at.insert(doc.to_string(), now);
        self.stats.rechecks += 1;
        true
    }

    /// Stops this actor if it has nothing in flight and no traffic for `min_idle_ms`.
    fn stop_if_quiet(&mut self, min_idle_ms: u64, ctx: &mut Context<Self>) {
        let now = self.shared.clock.now_millis();
        let idle_for = now.saturating_sub(self.last_activity);
        let quiet = self.in_flight.load(Ordering::SeqCst) == 0
            && self.state.settled()
            && self.stats.pending_writes == 0
            && self.compactions.is_empty()
            && !self.sweep_running
            && self.checking.is_empty()
            && self.state.waiters() == 0;
        if quiet && idle_for >= min_idle_ms && self.shared.evict(&self.name, self.id) {
            tracing::debug!(collection = %self.name, "stopping quiet collection actor");
            // Its built documents are as cold as it is: a later write rebuilds them, and
            // until then their memory serves collections in use (issue 13: 100,000
            // collections touched and left idle must not hold a full cache of them).
            self.shared.docs.forget_collection(&self.name);
            self.stopped = true;
            ctx.stop();
        }
    }

    /// Forgets expired op ids and long-gone peers, a bounded batch at a time, then stops the
    /// actor if it is quiet. The expired op ids are listed off this thread (see
    /// [`Self::read_off_thread`]); one sweep runs at a time. A full batch is followed by
    /// another round at once, not at the next idle check: op ids then expire as fast as they
    /// are written, however fast that is (one batch per check capped expiry at 200 a second
    /// per collection, so a busier collection's op records grew without bound).
    fn sweep(&mut self, ctx: &mut Context<Self>) {
        if self.sweep_running {
            return;
        }
        self.sweep_running = true;
        let now = self.shared.clock.now_millis();
        let ttl = clock::millis(self.shared.config.op_id_ttl);
        let mut write = Batch::default();
        let retention = clock::millis(self.shared.config.peer_retention);
        for peer in self.peers.forget_unseen(now, retention) {
            self.stats.forgotten_peers += 1;
            let unseen_since = now.saturating_sub(retention);
            write.extend(Batch::forget_peer(&self.name, &peer, unseen_since));
        }
        let expired = self.read_off_thread(move |store, name| {
            store.ops_before(name, now.saturating_sub(ttl), SWEEP_BATCH)
        });
        ctx.spawn(expired.into_actor(self).then(move |expired, act, _| {
            let mut full = false;
            match expired {
                Ok(expired) => {
                    full = expired.len() >= SWEEP_BATCH;
                    act.stats.expired_op_ids += expired.len() as u64;
                    write.extend(Batch::forget_ops(&act.name, &expired));
                }
                Err(e) => tracing::warn!(collection = %act.name, error = %e, "op id sweep failed"),
            }
            let round = (!write.is_empty()).then(|| act.shared.commit.submit(write));
            async move {
                match round {
                    Some(round) => round.await.is_ok(),
                    None => true,
                }
            }
            .into_actor(act)
            .map(move |committed, act, ctx| {
                act.sweep_running = false;
                if full && committed && !act.stopped {
                    return act.sweep(ctx);
                }
                let idle = clock::millis(act.shared.config.idle_timeout);
                act.stop_if_quiet(idle, ctx);
            })
        }));
    }
}

/// Stop if quiet, whatever the idle time (the registry is over its cap of live actors).
#[derive(Message)]
#[rtype(result = "()")]
pub struct StopIfQuiet;

impl Handler<StopIfQuiet> for CollectionActor {
    type Result = ();

    fn handle(&mut self, _: StopIfQuiet, ctx: &mut Self::Context) {
        self.stop_if_quiet(0, ctx);
    }
}

impl Actor for CollectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.shared.config.max_in_flight.clamp(16, MAX_MAILBOX));
        let every = IDLE_CHECK_EVERY.min(
            self.shared
                .config
                .idle_timeout
                .max(Duration::from_millis(10)),
        );
        ctx.run_interval(every, |act, ctx| act.check_idle(ctx));
        if self.numbering {
            ctx.run_interval(HEAD_CHECK_EVERY, |act, ctx| {
                // Waiters hold receivers of the durable seq: only then is a late head noticed.
                if act.state.waiters() == 0 || act.head_check_running {
                    return;
                }
                act.head_check_running = true;
                ctx.spawn(act.read_head().into_actor(act).map(|head, act, _| {
                    act.head_check_running = false;
                    match head {
                        Ok(head) => act.head_moved(head),
                        Err(e) => {
                            tracing::warn!(collection = %act.name, error = %e, "head check failed")
                        }
                    }
                }));
            });
        }
    }
}

/// A head another node committed (see the module docs).
#[derive(Message)]
#[rtype(result = "()")]
pub struct HeadMoved {
    pub head: u64,
}

impl Handler<HeadMoved> for CollectionActor {
    type Result = ();

    fn handle(&mut self, msg: HeadMoved, _: &mut Self::Context) {
        self.head_moved(msg.head);
    }
}

/// Store one write (the handle checked names and the size cap; the bytes are checked here,
/// against the document's current state, on a worker thread).
#[derive(Message)]
#[rtype(result = "Result<Written>")]
pub struct Append {
    pub operation: OperationType,
    pub write: Write,
}

/// What waits in a document's check queue.
enum Queued {
    /// A write of its own (`Append`).
    One(QueuedWrite),
    /// A write batch's writes of this document, checked together and alone.
    Part(batch::Part),
}

/// A write waiting for its document's check, or being checked.
struct QueuedWrite {
    operation: OperationType,
    write: Write,
    hash: u64,
    answer: oneshot::Sender<Result<Written>>,
    /// Refused once by a cached document on a shared engine and queued again to be checked
    /// against a rebuild (see [`CollectionActor::finish_check`]); refused again, it is refused.
    rechecked: bool,
}

/// Most writes of one document checked in one worker job.
const CHECK_BATCH: usize = 256;
/// Documents with the most retained bytes a collection actor tracks for the compaction hint.
const LARGEST_TRACKED: usize = 1024;

/// What a check job answers: the document's state to keep (if still good), one outcome per
/// write (`None`: not checked, queue it again), and stored updates a rebuild left out.
struct Checked {
    state: Option<DocState>,
    outcomes: Vec<Option<Result<()>>>,
    quarantined: Vec<(u64, String)>,
    /// Per refused write, the seq the store already holds it under (same op id and bytes):
    /// a retry of a stored write the check refused (see [`CollectionActor::check_job`]).
    stored: Vec<Option<u64>>,
    /// The writes were checked against the cached state, not a rebuild made by this job.
    from_cache: bool,
}

/// The answer to an op id used again for other bytes of `doc` (first used by `seq`).
fn op_conflict(op: &str, doc: &str, seq: u64) -> Error {
    Error::Conflict(format!(
        "opId {op:?} was already used for other bytes of document {doc:?} (seq {seq}); use a \
         new opId for a new write"
    ))
}

/// A stable hash of a write's bytes, remembered with its op id (SipHash with fixed keys: the
/// same on every node and after a restart).
fn hash_bytes(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x7265_706c_6963_6174, 0x6f70_6964_6861_7368);
    bytes.hash(&mut h);
    h.finish()
}

impl Handler<Append> for CollectionActor {
    type Result = ResponseFuture<Result<Written>>;

    fn handle(&mut self, msg: Append, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.touch() {
            return Box::pin(async move { Err(e) });
        }
        let hash = hash_bytes(&msg.write.bytes);
        match self.known_op(&msg.write, hash) {
            Ok(Some(seq)) => {
                self.stats.duplicate_writes += 1;
                if self.numbering {
                    // Read from the store: committed, by this node or another.
                    self.head_moved(seq);
                }
                return self.answer_duplicate(seq);
            }
            Ok(None) => {}
            Err(e) => return Box::pin(async move { Err(e) }),
        }
        let (tx, rx) = oneshot::channel();
        let doc = msg.write.document_id.clone();
        let queued = QueuedWrite {
            operation: msg.operation,
            write: msg.write,
            hash,
            answer: tx,
            rechecked: false,
        };
        self.enqueue_check(doc, Queued::One(queued), ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(Error::Internal("write was dropped".into())))
        })
    }
}

impl CollectionActor {
    /// Queues `queued` behind `doc`'s running check, or checks it now if none runs.
    fn enqueue_check(&mut self, doc: String, queued: Queued, ctx: &mut Context<Self>) {
        match self.checking.get_mut(&doc) {
            Some(waiting) => waiting.push_back(queued),
            None => {
                self.checking.insert(doc.clone(), VecDeque::from([queued]));
                self.next_check(doc, ctx);
            }
        }
    }

    /// The seq an earlier write with this op id got, if it was the same write.
    ///
    /// # Errors
    /// [`Error::Conflict`] when the op id was used for other bytes.
    fn known_op(&self, write: &Write, hash: u64) -> Result<Option<u64>> {
        let Some(op) = &write.op_id else {
            return Ok(None);
        };
        let record = match self.state.pending_op(&write.document_id, op) {
            Some((seq, hash)) => Some((seq, hash)),
            // The commit settles op ids on a shared engine (another node may be writing the
            // same one right now): no read here, which would cost a round trip per write.
            None if self.numbering => None,
            None => self
                .shared
                .store
                .op_record(&self.name, &write.document_id, op)?
                .filter(|r| {
                    let age = self.shared.clock.now_millis().saturating_sub(r.created_at);
                    age <= clock::millis(self.shared.config.op_id_ttl)
                })
                // A record above the durable head that no pending write holds is from a round
                // whose flush failed (applied, never durable; writes stop until restart): the
                // retry goes the normal way and gets that failure at once. Answered as a
                // duplicate it waited for a durable head that never came (30 s, then 504).
                .filter(|r| r.seq <= self.state.durable())
                .map(|r| (r.seq, r.hash)),
        };
        match record {
            Some((seq, h)) if h == hash => Ok(Some(seq)),
            Some((seq, _)) => Err(op_conflict(op, &write.document_id, seq)),
            None => Ok(None),
        }
    }

    /// Answers a duplicate once the write it repeats is on disk.
    fn answer_duplicate(&self, seq: u64) -> ResponseFuture<Result<Written>> {
        let mut durable = self.state.subscribe();
        Box::pin(async move {
            durable
                .wait_for(|d| *d >= seq)
                .await
                .map_err(|_| Error::Relocated)?;
            Ok(Written {
                seq,
                duplicate: true,
            })
        })
    }

    /// Checks `batch` (writes of `doc`, in arrival order) against the document's state on a
    /// worker thread, then numbers and stores the accepted ones in that order.
    fn start_check(&mut self, doc: String, batch: Vec<QueuedWrite>, ctx: &mut Context<Self>) {
        let bytes: Vec<Vec<u8>> = batch.iter().map(|q| q.write.bytes.clone()).collect();
        let ops = batch
            .iter()
            .map(|q| q.write.op_id.clone().map(|op| (op, q.hash)))
            .collect();
        let work = self.check_job(&doc, bytes, ops);
        ctx.spawn(work.into_actor(self).map(move |checked, act, ctx| {
            act.finish_check(doc, batch, checked, ctx);
        }));
    }

    /// The worker job that checks `bytes` (writes of `doc`, in order, with their op ids and
    /// hashes) against the document's cached state, or a rebuild once everything numbered
    /// before is in the store.
    ///
    /// On a shared engine the actor reads no op id before the check (the commit settles
    /// them), so a retry of a stored write can reach the check, which may refuse it (an update
    /// still waiting for its dependencies is "already held"). For each refused write with an
    /// op id, the job then reads the op id: held with the same bytes, it answers as the
    /// duplicate it is. One read per refusal, off the actor's thread.
    fn check_job(
        &mut self,
        doc: &str,
        bytes: Vec<Vec<u8>>,
        ops: Vec<Option<(String, u64)>>,
    ) -> impl std::future::Future<Output = Result<Checked>> + 'static {
        let ops = if self.numbering { ops } else { Vec::new() };
        let cached = self.shared.docs.take(&self.name, doc);
        // A rebuild reads the store: everything numbered before must be in it first.
        let settle = cached.is_none().then(|| self.shared.commit.durable());
        let store = self.shared.store.clone();
        let limits = self.shared.config.yjs;
        let workers = self.shared.workers.clone();
        let name = self.name.clone();
        let doc = doc.to_string();
        async move {
            if let Some(settle) = settle {
                settle.await?;
            }
            workers
                .run(move || {
                    let mut checked = check_writes(&store, &name, &doc, cached, &bytes, &limits)?;
                    checked.stored = stored_retries(&store, &name, &doc, &checked, &ops)?;
                    Ok(checked)
                })
                .await?
        }
    }

    fn finish_check(
        &mut self,
        doc: String,
        batch: Vec<QueuedWrite>,
        checked: Result<Checked>,
        ctx: &mut Context<Self>,
    ) {
        let checked = match checked {
            Ok(c) => c,
            Err(e) => {
                for q in batch {
                    let _ = q.answer.send(Err(e.clone()));
                }
                return self.next_check(doc, ctx);
            }
        };
        // On a shared engine a cached document may lack what another node wrote since it was
        // built: this node hears of those commits late (a notification) or not at all until
        // its next read (one lost, or its own commit moving the head past them), and until
        // then a write depending on them is refused ("the delete set names an id the document
        // does not have"). Such a refusal is not trusted: the document is dropped and the
        // write checked once more against a rebuild from the store.
        let refused = |i: usize, q: &QueuedWrite, outcome: &Option<Result<()>>| {
            matches!(outcome, Some(Err(_)))
                && checked.stored.get(i).copied().flatten().is_none()
                && !q.rechecked
        };
        let recheck = self.numbering
            && checked.from_cache
            && batch
                .iter()
                .zip(&checked.outcomes)
                .enumerate()
                .any(|(i, (q, outcome))| refused(i, q, outcome))
            && self.may_recheck(&doc);
        if recheck {
            self.shared.docs.forget(&self.name, &doc);
        } else if let Some(state) = checked.state {
            self.shared.docs.put(&self.name, &doc, state);
        }
        self.quarantine(&doc, &checked.quarantined);
        let mut again = Vec::new();
        for (i, (mut q, outcome)) in batch.into_iter().zip(checked.outcomes).enumerate() {
            if recheck && refused(i, &q, &outcome) {
                q.rechecked = true;
                again.push(q);
                continue;
            }
            match outcome {
                None => again.push(q),
                Some(Err(e)) => match checked.stored.get(i).copied().flatten() {
                    Some(seq) => {
                        self.head_moved(seq);
                        self.stats.duplicate_writes += 1;
                        let _ = q.answer.send(Ok(Written {
                            seq,
                            duplicate: true,
                        }));
                    }
                    None => {
                        self.stats.rejected_writes += 1;
                        let _ = q.answer.send(Err(e));
                    }
                },
                Some(Ok(())) => self.store_write(q, ctx),
            }
        }
        if !again.is_empty() {
            let waiting = self.checking.entry(doc.clone()).or_default();
            for q in again.into_iter().rev() {
                waiting.push_front(Queued::One(q));
            }
        }
        self.next_check(doc, ctx);
    }

    /// Starts the check of what waits first for `doc`: a write batch's part alone, or up to
    /// [`CHECK_BATCH`] writes of their own; forgets the queue when nothing waits.
    fn next_check(&mut self, doc: String, ctx: &mut Context<Self>) {
        let Some(waiting) = self.checking.get_mut(&doc) else {
            return;
        };
        if let Some(Queued::Part(_)) = waiting.front() {
            if let Some(Queued::Part(part)) = waiting.pop_front() {
                self.start_part_check(doc, part, ctx);
            }
            return;
        }
        let mut ones = Vec::new();
        while ones.len() < CHECK_BATCH {
            match waiting.pop_front() {
                Some(Queued::One(q)) => ones.push(q),
                Some(part) => {
                    waiting.push_front(part);
                    break;
                }
                None => break,
            }
        }
        if ones.is_empty() {
            self.checking.remove(&doc);
            return;
        }
        self.start_check(doc, ones, ctx);
    }

    /// Persists quarantine records of stored updates a rebuild left out.
    fn quarantine(&mut self, doc: &str, parts: &[(u64, String)]) {
        if parts.is_empty() {
            return;
        }
        let mut write = Batch::default();
        for (seq, reason) in parts {
            write.extend(Batch::quarantine(&self.name, doc, *seq, reason));
        }
        self.stats.quarantined_updates += parts.len() as u64;
        // Best effort: a lost record only means the next rebuild finds the same part again.
        drop(self.shared.commit.submit(write));
    }

    /// Numbers an accepted write, queues it for commit and answers once it is durable.
    fn store_write(&mut self, q: QueuedWrite, ctx: &mut Context<Self>) {
        if self.numbering {
            return self.store_numbered_write(q, ctx);
        }
        // Another write with the same op id may have been numbered while this one was checked.
        match self.known_op(&q.write, q.hash) {
            Ok(Some(seq)) => {
                self.stats.duplicate_writes += 1;
                let answer = self.answer_duplicate(seq);
                ctx.spawn(
                    async move {
                        let _ = q.answer.send(answer.await);
                    }
                    .into_actor(self),
                );
                return;
            }
            Ok(None) => {}
            Err(e) => {
                let _ = q.answer.send(Err(e));
                return;
            }
        }
        let (seq, prepared) = match self.append(q.operation, q.write, q.hash, ctx) {
            Ok(appended) => appended,
            Err(e) => {
                let _ = q.answer.send(Err(e));
                return;
            }
        };
        // `submit` queues now, so commit order is seq order.
        let round = self.shared.commit.submit(prepared);
        let answer = q.answer;
        ctx.spawn(round.into_actor(self).map(move |res, act, _| {
            act.stats.pending_writes -= 1;
            act.state.committed(seq, seq, res.is_ok());
            let _ = answer.send(res.map(|()| Written {
                seq,
                duplicate: false,
            }));
        }));
    }

    /// [`Self::store_write`] on a shared engine: the commit numbers the write (or finds its op
    /// id used, by this node or another) and the answer is what it did.
    fn store_numbered_write(&mut self, q: QueuedWrite, ctx: &mut Context<Self>) {
        let QueuedWrite {
            operation,
            write,
            hash,
            answer,
            rechecked: _,
        } = q;
        let (prepared, doc, len, op_id) = self.numbered_append(operation, write, hash);
        let round = self.shared.commit.submit_outcomes(prepared);
        self.stats.pending_writes += 1;
        ctx.spawn(round.into_actor(self).map(move |res, act, ctx| {
            act.stats.pending_writes -= 1;
            let written = match res.map(|mut o| o.pop()) {
                Ok(outcome) => act.settle_numbered(outcome, &doc, len, hash, op_id, ctx),
                Err(e) => {
                    // The checked state holds the write the store lacks.
                    act.shared.docs.forget(&act.name, &doc);
                    Err(e)
                }
            };
            let _ = answer.send(written);
        }));
    }

    /// An accepted write prepared for a shared engine, which numbers it and counts the
    /// document's bytes itself; with its document, length and op id.
    fn numbered_append(
        &self,
        operation: OperationType,
        write: Write,
        hash: u64,
    ) -> (Batch, String, u64, Option<String>) {
        let len = write.bytes.len() as u64;
        let (record, op_id) = self.delta_record(operation, write);
        let op = op_id.as_deref().map(|op_id| OpWrite { op_id, hash });
        let prepared = Batch::append(&self.name, 0, &record, &DocStats::default(), op);
        (prepared, record.document_id, len, op_id)
    }

    /// What a shared engine's commit did with one append of `doc` (`len` bytes, `hash`, with
    /// `op_id`): the seq it gave, or the earlier write its op id names.
    fn settle_numbered(
        &mut self,
        outcome: Option<Outcome>,
        doc: &str,
        len: u64,
        hash: u64,
        op_id: Option<String>,
        ctx: &mut Context<Self>,
    ) -> Result<Written> {
        match outcome {
            Some(Outcome::Stored(seq)) => {
                self.mark_durable(seq);
                self.stats.appends += 1;
                self.stats.appended_bytes += len;
                self.state.docs.add_counted(doc, len);
                self.auto_compact(doc, ctx);
                Ok(Written {
                    seq,
                    duplicate: false,
                })
            }
            Some(Outcome::Duplicate(first)) => {
                self.head_moved(first.seq);
                self.stats.duplicate_writes += 1;
                if first.hash == hash {
                    Ok(Written {
                        seq: first.seq,
                        duplicate: true,
                    })
                } else {
                    Err(op_conflict(&op_id.unwrap_or_default(), doc, first.seq))
                }
            }
            other => Err(Error::Internal(format!(
                "the store answered {other:?} for an append"
            ))),
        }
    }

    /// The record an accepted write is stored as (created now), and its op id.
    fn delta_record(
        &self,
        operation: OperationType,
        write: Write,
    ) -> (DeltaRecord, Option<String>) {
        let record = DeltaRecord {
            document_id: write.document_id,
            operation,
            bytes: write.bytes,
            created_at: self.shared.clock.now_millis(),
        };
        (record, write.op_id)
    }

    /// Assigns the next seq to an accepted write and prepares it.
    fn append(
        &mut self,
        operation: OperationType,
        write: Write,
        hash: u64,
        ctx: &mut Context<Self>,
    ) -> Result<(u64, Batch)> {
        let len = write.bytes.len() as u64;
        let (record, op_id) = self.delta_record(operation, write);
        let op = op_id.as_deref().map(|op_id| (op_id, hash));
        let Numbered { seq, stats } =
            self.state
                .number(&self.shared.store, &self.name, &record.document_id, len, op)?;
        let op = op_id.as_deref().map(|op_id| OpWrite { op_id, hash });
        let prepared = Batch::append(&self.name, seq, &record, &stats, op);
        self.stats.appends += 1;
        self.stats.appended_bytes += len;
        self.stats.pending_writes += 1;
        self.auto_compact(&record.document_id, ctx);
        Ok((seq, prepared))
    }
}

/// For each write `checked` refused that has an op id in `ops`, the seq the store holds it
/// under if it holds that op id with the same bytes (empty `ops`: nothing to look up).
fn stored_retries(
    store: &Store,
    c: &str,
    doc: &str,
    checked: &Checked,
    ops: &[Option<(String, u64)>],
) -> Result<Vec<Option<u64>>> {
    let mut stored = vec![None; checked.outcomes.len()];
    for (i, outcome) in checked.outcomes.iter().enumerate() {
        let (Some(Err(_)), Some(Some((op, hash)))) = (outcome, ops.get(i)) else {
            continue;
        };
        stored[i] = store
            .op_record(c, doc, op)?
            .filter(|r| r.hash == *hash)
            .map(|r| r.seq);
    }
    Ok(stored)
}

/// The check job: rebuilds the document's state if it is not cached (or its cost calls for a
/// fresh measure), then applies each write in order, each within the write budget.
fn check_writes(
    store: &Store,
    c: &str,
    doc: &str,
    cached: Option<DocState>,
    writes: &[Vec<u8>],
    limits: &YjsLimits,
) -> Result<Checked> {
    let mut quarantined = Vec::new();
    let mut from_cache = true;
    let mut state = match cached {
        // Measured over its budget by a rebuild: refused below without another rebuild, so a
        // write to such a document costs nothing.
        Some(state) if state.built_cost() > limits.doc_budget => state,
        Some(state) if state.cost() <= limits.doc_budget => state,
        // Writes since the last rebuild pushed the estimate over: measure again.
        _ => {
            let built = build_doc(store, c, doc, limits)?;
            quarantined = built.quarantined;
            from_cache = false;
            built.state
        }
    };
    let mut outcomes: Vec<Option<Result<()>>> = Vec::with_capacity(writes.len());
    if state.built_cost() > limits.doc_budget {
        let error = Error::YjsLimit {
            field: "crdtBytes",
            reason: format!(
                "document {doc:?} costs {} ms of CPU to rebuild, over its budget of {} ms; \
                 it takes no more writes",
                state.built_cost().as_millis(),
                limits.doc_budget.as_millis()
            ),
        };
        outcomes.extend(writes.iter().map(|_| Some(Err(error.clone()))));
        return Ok(Checked {
            state: Some(state),
            outcomes,
            quarantined,
            stored: Vec::new(),
            from_cache,
        });
    }
    for bytes in writes {
        match state.apply("crdtBytes", bytes, limits, limits.write_budget) {
            Ok(()) => outcomes.push(Some(Ok(()))),
            Err(refused) if refused.poisoned => {
                // The state is no longer the stored one: drop it; the writes after this one
                // are checked again against a rebuild.
                outcomes.push(Some(Err(refused.error)));
                outcomes.resize_with(writes.len(), || None);
                return Ok(Checked {
                    state: None,
                    outcomes,
                    quarantined,
                    stored: Vec::new(),
                    from_cache,
                });
            }
            Err(refused) => outcomes.push(Some(Err(refused.error))),
        }
    }
    Ok(Checked {
        state: Some(state),
        outcomes,
        quarantined,
        stored: Vec::new(),
        from_cache,
    })
}

/// One stream page from `cursor`: at most `limit` deltas within about
/// `Config::max_page_bytes` (the budget plus the first change), cut by [`paging::walk`]:
/// the snapshots of the documents whose deleted deltas lie in (cursor, page cursor], then
/// the retained deltas of that range in seq order.
///
/// # Invariants
/// - Invariant 3, per document: every seq up to the page's cursor is a delta of the page
///   or a seq compaction deleted whose document's snapshot is in the page. The deleted-seq
///   index says exactly which document each deleted seq belonged to, so a page may stop at
///   any seq, and the next page, read from the answered cursor alone, carries on: the
///   contract stays stateless. (Cutting the old list of documents compacted past the
///   cursor was wrong: such a document lacks deltas anywhere below its highest deleted seq,
///   so no cut of the list made a safe cursor; the concurrent model test caught it.)
/// - Bounded: the page holds at most the budget plus one change and always moves when the
///   cursor is below the head (only deltas deleted before store format 2 can push a page
///   past its budget; see [`paging`]).
/// - Read order. Compactions commit on the committer thread while this runs, each as one
///   atomic batch that deletes some deltas of one document, writes its snapshot holding
///   them and the index entries of the deleted seqs. This reads (1) the window's retained
///   deltas, then (2) the largest bucket size, then (3) the index entries, lazily as the
///   walk reaches deleted seqs, then (4) each snapshot after the entry that named it.
///   Every seq up to the head was committed before (1). A seq of the window missing from
///   (1) was deleted by a batch committed before (1); (2) and (3) start after (1), so they
///   see that batch's bucket record and entry (entries are never removed), and (4) sees
///   that batch's snapshot or a later one, which merges it. A delta deleted after (1) is
///   sent as the delta (1) read: the walk goes by (1), and an entry for a seq (1) holds
///   adds no snapshot. Reading the index or a snapshot before the deltas would let a batch
///   land in between and leave a deleted delta with neither (the review test
///   `stream_page_read_during_a_compaction_commit_skips_nothing` caught that order).
///
/// Answers the page's changes and its cursor.
fn read_page_at(
    store: &Store,
    c: &str,
    cursor: u64,
    head: u64,
    limit: usize,
    max_bytes: usize,
) -> Result<(Vec<Change>, u64)> {
    // (1)
    let (deltas, more) = store.deltas_after(c, cursor, head, limit, max_bytes)?;
    let window_end = match deltas.last() {
        Some((seq, _)) if more => *seq,
        _ => head,
    };
    // (2); (3) and (4) as the walk asks.
    let span = store.deleted_span()?;
    let mut source = StorePages {
        store,
        collection: c,
        entries: (span > 0)
            .then(|| store.deleted_entries(c, cursor.saturating_add(2).saturating_sub(span))),
    };
    let live = deltas
        .into_iter()
        .map(|(seq, d)| (seq, d.bytes.len(), d))
        .collect();
    let bounds = PageBounds {
        cursor,
        window_end,
        limit,
        max_bytes,
        max_runs: paging::MAX_RUNS_PER_PAGE,
    };
    let walked = paging::walk(&bounds, live, &mut source)?;
    let mut changes = Vec::with_capacity(walked.snapshots.len() + walked.deltas.len());
    changes.extend(walked.snapshots.into_iter().map(|(doc, s)| Change {
        document_id: doc,
        seq: s.snapshot_seq,
        bytes: s.bytes,
        operation: OperationType::Snapshot,
    }));
    changes.extend(walked.deltas.into_iter().map(|(seq, d)| Change {
        document_id: d.document_id,
        seq,
        bytes: d.bytes,
        operation: d.operation,
    }));
    Ok((changes, walked.cursor))
}

/// Rebuilds one document from the store (see [`compactor::load_document`]).
fn build_doc(store: &Store, c: &str, doc: &str, limits: &YjsLimits) -> Result<crdt::Built> {
    compactor::load_document(store, c, doc, u64::MAX, limits).map(|l| l.built)
}

/// Read one stream page; also hands out a receiver of the durable seq for waiting.
#[derive(Message)]
#[rtype(result = "Result<(StreamPage, watch::Receiver<u64>)>")]
pub struct ReadPage {
    pub cursor: u64,
    pub limit: usize,
    pub size_threshold: u64,
}

impl Handler<ReadPage> for CollectionActor {
    type Result = ResponseActFuture<Self, Result<(StreamPage, watch::Receiver<u64>)>>;

    /// On sled the page is read here (microseconds). On a networked engine it is read on the
    /// read workers, so the database's round trips hold up no other message of this actor
    /// (nor the other actors of its arbiter); the head is taken here first, so the page is
    /// what it would have been here, unless the cursor is above it: another node may have
    /// committed past what this one heard of, so the job reads the head from the store first.
    fn handle(&mut self, msg: ReadPage, _: &mut Self::Context) -> Self::Result {
        let ReadPage {
            cursor,
            limit,
            size_threshold,
        } = msg;
        let rx = self.state.subscribe();
        if let Err(e) = self.touch() {
            return Box::pin(fut::ready(Err(e)));
        }
        let Some(readers) = self.shared.read_workers.clone() else {
            let head = match self.page_head(cursor) {
                Ok(head) => head,
                Err(e) => return Box::pin(fut::ready(Err(e))),
            };
            let max_bytes = self.shared.config.max_page_bytes;
            let read = read_page_at(
                &self.shared.store,
                &self.name,
                cursor,
                head,
                limit,
                max_bytes,
            );
            let page = read.map(|read| (self.page(read, head, size_threshold), rx));
            return Box::pin(fut::ready(page));
        };
        let (store, name) = (self.shared.store.clone(), self.name.clone());
        let max_bytes = self.shared.config.max_page_bytes;
        let known = self.state.durable();
        let job = async move {
            readers
                .run(move || {
                    // A reader at or past what this node knows asks the store: another node
                    // may have committed since, and its notification may be late or lost (a
                    // reader polling without `waitMs` would otherwise never see those writes
                    // until this node committed again).
                    let head = if cursor >= known {
                        store.head(&name)?.max(known)
                    } else {
                        known
                    };
                    if cursor > head {
                        return Err(Error::CursorAhead { cursor, head });
                    }
                    let read = read_page_at(&store, &name, cursor, head, limit, max_bytes)?;
                    Ok((read, head))
                })
                .await?
        };
        Box::pin(job.into_actor(self).map(move |read, act, _| {
            let (read, head) = read?;
            act.head_moved(head);
            Ok((act.page(read, head, size_threshold), rx))
        }))
    }
}

/// Record a peer's acknowledgement.
#[derive(Message)]
#[rtype(result = "Result<u64>")]
pub struct Ack {
    pub peer_id: String,
    pub synced_seq: u64,
}

impl Handler<Ack> for CollectionActor {
    type Result = ResponseActFuture<Self, Result<u64>>;

    /// On sled, acks are stored here without waiting for a flush: losing one in a crash only
    /// makes compaction more conservative (the peer's older ack holds back more deltas). On a
    /// shared engine the ack goes through group commit and is answered once committed: the
    /// commit waits for the collection's row lock, which another node's commit may hold, and
    /// this actor's other messages must not wait with it. Compactions on every node read it
    /// from the database (see `store::postgres`), so it must be there before it is answered.
    fn handle(&mut self, msg: Ack, _: &mut Self::Context) -> Self::Result {
        if self.numbering && msg.synced_seq > self.state.durable() {
            // Another node may have committed past what this one heard of: read the head
            // (off this thread) before judging the ack.
            let head = self.read_head();
            return Box::pin(head.into_actor(self).then(move |head, act, _| {
                match head {
                    Ok(head) => act.head_moved(head),
                    Err(e) => return Box::pin(fut::ready(Err(e))) as Self::Result,
                }
                act.store_ack(msg)
            }));
        }
        self.store_ack(msg)
    }
}

impl CollectionActor {
    /// Records an ack in memory and in the store (see [`Handler<Ack>`]).
    fn store_ack(&mut self, msg: Ack) -> ResponseActFuture<Self, Result<u64>> {
        let record = match self.record_ack(&msg) {
            Ok(record) => record,
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        self.stats.acks += 1;
        if !self.numbering {
            let stored = self
                .shared
                .store
                .put_peer(&self.name, &msg.peer_id, &record);
            return Box::pin(fut::ready(stored.map(|()| record.synced_seq)));
        }
        let round =
            self.shared
                .commit
                .submit_outcomes(Batch::put_peer(&self.name, &msg.peer_id, &record));
        Box::pin(round.into_actor(self).map(move |stored, act, _| {
            // The store keeps the highest ack of the peer from any node: answer that one.
            match stored?.pop() {
                Some(Outcome::PeerSynced(synced)) => {
                    act.peers.learn_synced(&msg.peer_id, synced);
                    Ok(synced.max(record.synced_seq))
                }
                _ => Ok(record.synced_seq),
            }
        }))
    }
}

impl CollectionActor {
    /// Checks an ack against the peer limit and the head, and records it in memory.
    fn record_ack(&mut self, msg: &Ack) -> Result<PeerRecord> {
        self.touch()?;
        let now = self.shared.clock.now_millis();
        let max = self.shared.config.max_peers_per_collection;
        if !self.peers.contains(&msg.peer_id) && self.peers.len() >= max {
            return Err(Error::Overloaded {
                collection: format!("{} (peer limit {max} reached)", self.name),
                in_flight: self.peers.len(),
            });
        }
        self.peers
            .ack(&msg.peer_id, msg.synced_seq, self.state.durable(), now)
    }
}

/// The durable head seq (for recovery and state answers).
#[derive(Message)]
#[rtype(result = "Result<u64>")]
pub struct Head;

impl Handler<Head> for CollectionActor {
    type Result = Result<u64>;

    fn handle(&mut self, _: Head, _: &mut Self::Context) -> Self::Result {
        self.touch()?;
        Ok(self.state.durable())
    }
}

/// Observable state.
#[derive(Message)]
#[rtype(result = "Result<CollectionStats>")]
pub struct GetState;

impl Handler<GetState> for CollectionActor {
    type Result = Result<CollectionStats>;

    fn handle(&mut self, _: GetState, _: &mut Self::Context) -> Self::Result {
        if self.stopped {
            return Err(Error::Relocated);
        }
        Ok(self.snapshot_stats())
    }
}

/// Compact one document (the handle validated the request).
#[derive(Message)]
#[rtype(result = "Result<Compacted>")]
pub struct Compact {
    pub request: CompactRequest,
    pub peer_timeout_ms: u64,
}

/// The compaction of one document that waits for the running one: later requests join it
/// (at most one waits per document), since it merges everything stored when it starts.
pub struct QueuedCompaction {
    /// The longest peer timeout asked for: deleting less is always safe for every joiner.
    peer_timeout_ms: u64,
    answers: Vec<oneshot::Sender<Result<Compacted>>>,
    /// Runs of this compaction so far that another node's compaction superseded.
    superseded: u32,
}

impl Handler<Compact> for CollectionActor {
    type Result = ResponseFuture<Result<Compacted>>;

    fn handle(&mut self, msg: Compact, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.touch() {
            return Box::pin(async move { Err(e) });
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue_compaction(msg.request.document_id, msg.peer_timeout_ms, tx, ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(Error::Internal("compaction was dropped".into())))
        })
    }
}

/// What a compaction job answers: the merged document, the deltas merged into it (seq,
/// length) and the stored updates the merge left out.
struct MergedDoc {
    /// The document's compaction generation, read before its content.
    read_generation: u64,
    /// The document's counters in that same read (`None`: never written).
    stored: Option<DocStats>,
    merged: Merged,
    merged_deltas: Vec<(u64, u64)>,
    quarantined: Vec<(u64, String)>,
    empty: bool,
    /// What a document built from the merged snapshot alone would weigh
    /// ([`crdt::rebuilt_weight`]; see [`CollectionActor::shed_outgrown`]).
    snapshot_weight: u64,
}

impl CollectionActor {
    fn enqueue_compaction(
        &mut self,
        doc: String,
        peer_timeout_ms: u64,
        answer: oneshot::Sender<Result<Compacted>>,
        ctx: &mut Context<Self>,
    ) {
        match self.compactions.get_mut(&doc) {
            Some(Some(waiting)) => {
                waiting.peer_timeout_ms = waiting.peer_timeout_ms.max(peer_timeout_ms);
                waiting.answers.push(answer);
            }
            Some(slot) => {
                *slot = Some(QueuedCompaction {
                    peer_timeout_ms,
                    answers: vec![answer],
                    superseded: 0,
                })
            }
            None => {
                self.compactions.insert(doc.clone(), None);
                let job = QueuedCompaction {
                    peer_timeout_ms,
                    answers: vec![answer],
                    superseded: 0,
                };
                self.run_compaction(doc, job, ctx);
            }
        }
    }

    /// Starts the waiting compaction of `doc`, or marks the document idle.
    fn next_compaction(&mut self, doc: String, ctx: &mut Context<Self>) {
        match self.compactions.get_mut(&doc).and_then(Option::take) {
            Some(next) => self.run_compaction(doc, next, ctx),
            None => {
                self.compactions.remove(&doc);
            }
        }
    }

    /// One compaction: read and merge on a worker thread, then plan and queue the write here
    /// against the acks of that moment, and answer once committed. The future runs in this
    /// actor's context, so it finishes (and the next one starts) even if the callers stop
    /// waiting.
    ///
    /// A client's `snapshotBytes` is not merged: the server's content comes only from updates
    /// it has sequenced (a client snapshot could otherwise add, change or erase content that
    /// streaming peers never hear of).
    fn run_compaction(&mut self, doc: String, job: QueuedCompaction, ctx: &mut Context<Self>) {
        let store = self.shared.store.clone();
        let limits = self.shared.config.yjs;
        let name = self.name.clone();
        let job_doc = doc.clone();
        let upto = self.state.durable();
        let workers = self.shared.workers.clone();
        let merge = async move {
            workers
                .run(move || merge_document(&store, &name, &job_doc, upto, &limits))
                .await?
        };
        let QueuedCompaction {
            peer_timeout_ms,
            answers,
            superseded,
        } = job;
        let work = merge.into_actor(self).then(move |merged, act, _| {
            let mut snapshot_weight = None;
            let planned = merged.and_then(|m| {
                snapshot_weight = Some(m.snapshot_weight);
                act.quarantine(&doc, &m.quarantined);
                if m.empty {
                    let nothing = Compacted {
                        removed: 0,
                        retained: 0,
                        snapshot_seq: 0,
                    };
                    return Ok((nothing, None, Vec::new()));
                }
                act.plan_compaction(&doc, m, peer_timeout_ms)
                    .map(|(c, p, planned)| (c, Some(p), planned))
            });
            let commit = planned.map(|(compacted, prepared, planned)| {
                (
                    compacted,
                    prepared.map(|p| act.shared.commit.submit_outcomes(p)),
                    planned,
                )
            });
            async move {
                let (mut compacted, round, planned) = commit?;
                let mut held_back = HeldBack::default();
                if let Some(round) = round {
                    match round.await?.pop() {
                        Some(Outcome::Compacted { deleted }) => {
                            // Fewer when an ack the store knows of and this node does not
                            // (made on another node) held some back.
                            held_back = HeldBack::of(&planned, &deleted);
                            compacted.removed = deleted.len() as u64;
                            compacted.retained += held_back.count;
                        }
                        Some(Outcome::Superseded) => return Ok(None),
                        other => {
                            return Err(Error::Internal(format!(
                                "the store answered {other:?} for a compaction"
                            )))
                        }
                    }
                }
                Ok(Some((compacted, held_back)))
            }
            .into_actor(act)
            .map(
                move |result: Result<Option<(Compacted, HeldBack)>>, act, ctx| {
                    if let Ok(Some((_, held))) = &result {
                        // The counters were set from the plan: add back what the commit kept.
                        act.state.docs.add_retained(&doc, held.count, held.bytes);
                        act.stats.deltas_removed =
                            act.stats.deltas_removed.saturating_sub(held.count);
                    }
                    // Its counters are in the store now (or the store failed for good).
                    act.state.docs.settle(&doc);
                    let result = match result.map(|r| r.map(|(compacted, _)| compacted)) {
                        Ok(Some(compacted)) => {
                            if let Some(weight) = snapshot_weight {
                                act.shed_outgrown(&doc, weight, compacted.retained);
                            }
                            Ok(compacted)
                        }
                        Ok(None) if superseded + 1 < COMPACTION_ATTEMPTS => {
                            // Another node compacted the document after this one read it: read
                            // and merge again, ahead of any compaction waiting.
                            let again = QueuedCompaction {
                                peer_timeout_ms,
                                answers,
                                superseded: superseded + 1,
                            };
                            return act.run_compaction(doc, again, ctx);
                        }
                        Ok(None) => Err(Error::Conflict(format!(
                            "document {doc:?} kept being compacted by other nodes; retry"
                        ))),
                        Err(e) => Err(e),
                    };
                    for answer in answers {
                        let _ = answer.send(result.clone());
                    }
                    act.next_compaction(doc, ctx);
                },
            )
        });
        ctx.spawn(work);
    }

    /// Plans the deletions against the current acks, updates the in-memory counters and
    /// answers the outcome and the write to commit.
    ///
    /// Also answers the planned deletions as (seq, byte length), for [`HeldBack::of`].
    fn plan_compaction(
        &mut self,
        doc: &str,
        mut merged: MergedDoc,
        peer_timeout_ms: u64,
    ) -> Result<(Compacted, Batch, Deletions)> {
        let previous = if self.numbering {
            // Another node may have changed them: the store's, read with the generation on
            // the worker (a compaction since then supersedes this one at commit, and the
            // commit recounts appends made since).
            merged.stored.unwrap_or_default()
        } else {
            self.state.docs.get(&self.shared.store, &self.name, doc)?
        };
        let now = self.shared.clock.now_millis();
        let min_active = self.peers.min_active_synced(now, peer_timeout_ms);
        let plan = compaction::plan(&merged.merged_deltas, previous, min_active);
        let merged_deltas = std::mem::take(&mut merged.merged_deltas);
        let guard = self.numbering.then_some(CompactionGuard {
            read_generation: merged.read_generation,
            // The first millisecond counted as active, by the rule of `Peers::is_active`
            // (seen less than the timeout ago): the commit counts the same peers as the plan.
            active_since: now.saturating_add(1).saturating_sub(peer_timeout_ms),
        });
        let stored = merged.stored;
        let merged = merged.merged;
        let snapshot = SnapshotRecord {
            bytes: merged.update,
            state_vector: merged.state_vector,
            snapshot_seq: plan.snapshot_seq,
            created_at: now,
        };
        // The engine extends the document's deleted-seq index entries when it commits: safe,
        // since this document's previous compaction has committed and the next waits for it.
        let prepared = Batch::compaction(
            &self.name,
            &CompactionWrite {
                document_id: doc,
                snapshot: &snapshot,
                deleted: &plan.delete,
                stats: plan.stats,
                bucket_seqs: self.shared.config.page_bucket_seqs,
                guard,
            },
        );
        if self.numbering {
            // No store read on this thread: the worker's read stands in for a miss.
            self.state
                .docs
                .set_read(doc, stored, plan.stats, doc_counters::IN_FLIGHT);
        } else {
            self.set_doc_stats(doc, plan.stats, doc_counters::IN_FLIGHT)?;
        }
        self.stats.compactions += 1;
        self.stats.deltas_removed += plan.delete.len() as u64;
        let compacted = Compacted {
            removed: plan.delete.len() as u64,
            retained: plan.stats.retained_count,
            snapshot_seq: plan.snapshot_seq,
        };
        let planned = merged_deltas
            .iter()
            .copied()
            .filter(|(seq, _)| plan.delete.binary_search(seq).is_ok())
            .collect();
        Ok((compacted, prepared, planned))
    }
}

/// A compaction's planned deletions: (seq, byte length), ascending.
type Deletions = Vec<(u64, u64)>;

/// Deltas a compaction planned to delete and its commit kept: on a shared store the commit
/// checks the acks again, and an ack made on another node holds back deltas this node's plan
/// (and the counters it set from the plan) counted as gone.
#[derive(Debug, Default, Clone, Copy)]
struct HeldBack {
    count: u64,
    bytes: u64,
}

impl HeldBack {
    /// The `planned` deletions (seq, byte length) that are not in `deleted` (ascending).
    fn of(planned: &[(u64, u64)], deleted: &[u64]) -> HeldBack {
        planned
            .iter()
            .filter(|(seq, _)| deleted.binary_search(seq).is_err())
            .fold(HeldBack::default(), |held, (_, len)| HeldBack {
                count: held.count + 1,
                bytes: held.bytes + len,
            })
    }
}

impl CollectionActor {
    /// After a compaction of `doc`: forgets its cached state if that weighs over
    /// [`OUTGROWN_RATIO`] times what a rebuild would (the new snapshot, `snapshot_weight`, plus
    /// the `retained` deltas a rebuild applies again) and over [`OUTGROWN_FLOOR`], so the next
    /// write is checked against a rebuild.
    ///
    /// Why: a cached state's weight (the cache's estimate of its heap) adds every write's
    /// structs and never subtracts, while Yjs collects removed content in memory as it goes:
    /// a document whose encoded state stays flat (blocks replaced whole) claims ever more of
    /// the cache (21× what it holds after 2,000 such writes, `tests/doc_memory.rs`) until it
    /// is evicted, and it pushes out documents in use on the way. Shed here, it is rebuilt
    /// and weighed again on its next write, cheaply (a fresh snapshot and few deltas), at
    /// most once per compaction. A document whose deltas a slow peer holds back is not shed:
    /// its rebuild would weigh as much.
    fn shed_outgrown(&mut self, doc: &str, snapshot_weight: u64, retained: u64) {
        let retained_bytes = self.state.docs.peek(doc).map_or(0, |s| s.retained_bytes);
        let rebuilt = snapshot_weight
            .saturating_add(retained_bytes)
            .saturating_add(crdt::STRUCT_WEIGHT.saturating_mul(retained));
        let limit = rebuilt.saturating_mul(OUTGROWN_RATIO).max(OUTGROWN_FLOOR);
        if self.shared.docs.shed_if_heavier(&self.name, doc, limit) {
            self.stats.shed_documents += 1;
        }
    }
}

/// The compaction job: the document through `upto`, merged (see
/// [`compactor::load_document`]).
fn merge_document(
    store: &Store,
    c: &str,
    doc: &str,
    upto: u64,
    limits: &YjsLimits,
) -> Result<MergedDoc> {
    let stored = store.doc_stats(c, doc)?;
    let loaded = compactor::load_document(store, c, doc, upto, limits)?;
    let merged = loaded.built.state.encode();
    Ok(MergedDoc {
        snapshot_weight: crdt::rebuilt_weight(&merged.update),
        read_generation: stored.map_or(0, |s| s.generation),
        stored,
        merged,
        merged_deltas: loaded.merged,
        quarantined: loaded.built.quarantined,
        empty: loaded.empty,
    })
}
