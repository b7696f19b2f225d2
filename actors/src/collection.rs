//! The collection actor: one per collection, the only writer of its seqs.
//!
//! It assigns seq = previous + 1 from its own counter (persisted in the same batch as the
//! delta it numbers), stores the write, and answers once the group commit has made it durable.
//! Readers only ever see seqs up to `durable`, so a seq a reader saw can never be lost in a
//! crash and issued again. Stream pages, acks and compaction applies also run here, so each
//! sees a consistent view of the collection.

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use tokio::sync::{oneshot, watch};

use crate::compaction;
use crate::compactor::Merge;
use crate::crdt::Merged;
use crate::error::{Error, Result};
use crate::peers::PeerTable;
use crate::runtime::Shared;
use crate::store::{CompactionWrite, DeltaRecord, DocStats, PreparedWrite, SnapshotRecord, Store};
use crate::types::{
    Change, CollectionStats, CompactRequest, Compacted, OperationType, StreamPage, Write, Written,
};

/// How often an actor checks whether it has been idle long enough to stop.
const IDLE_CHECK_EVERY: Duration = Duration::from_secs(5);

pub struct CollectionActor {
    name: String,
    /// Identifies this incarnation in the registry, so a stopping actor removes only itself.
    id: u64,
    shared: Arc<Shared>,
    /// Requests the handle has admitted for this collection and not yet answered.
    in_flight: Arc<AtomicUsize>,
    assigned: u64,
    durable: u64,
    durable_tx: watch::Sender<u64>,
    docs: HashMap<String, DocStats>,
    /// (retained bytes, document) for the compaction hint without a scan.
    by_size: BTreeSet<(u64, String)>,
    peers: PeerTable,
    /// Op ids of writes queued for commit but not yet on disk (the store cannot answer for them).
    pending_ops: HashMap<String, u64>,
    /// Per document, the compactions waiting behind the running one (whose entry is present
    /// while it runs). Compactions of one document run one after another, each reading what
    /// the previous one committed, so none can lose another's snapshot.
    compactions: HashMap<String, VecDeque<QueuedCompaction>>,
    stats: CollectionStats,
    last_activity: u64,
    stopped: bool,
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
        let loaded = shared.store.load_collection(&name)?;
        let by_size = loaded
            .docs
            .iter()
            .map(|(d, s)| (s.retained_bytes, d.clone()))
            .collect();
        let now = shared.clock.now_millis();
        Ok(CollectionActor {
            stats: CollectionStats {
                collection: name.clone(),
                ..Default::default()
            },
            name,
            id,
            in_flight,
            assigned: loaded.high_water,
            // Everything on disk at load time was either flushed before a restart or written by
            // a previous incarnation in this process that stopped with nothing pending.
            durable: loaded.high_water,
            durable_tx: watch::channel(loaded.high_water).0,
            docs: loaded.docs.into_iter().collect(),
            by_size,
            peers: PeerTable::from_records(loaded.peers),
            pending_ops: HashMap::new(),
            compactions: HashMap::new(),
            last_activity: now,
            stopped: false,
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

    fn set_doc_stats(&mut self, doc: &str, new: DocStats) {
        if let Some(old) = self.docs.insert(doc.to_string(), new) {
            self.by_size.remove(&(old.retained_bytes, doc.to_string()));
        }
        self.by_size.insert((new.retained_bytes, doc.to_string()));
    }

    fn mark_durable(&mut self, seq: u64) {
        if seq > self.durable {
            self.durable = seq;
            self.durable_tx.send_replace(seq);
        }
    }

    /// The document with the most retained bytes, if above `threshold`.
    fn compaction_hint(&self, threshold: u64) -> Option<String> {
        self.by_size
            .last()
            .filter(|(bytes, _)| *bytes > threshold)
            .map(|(_, d)| d.clone())
    }

    fn snapshot_stats(&self) -> CollectionStats {
        CollectionStats {
            assigned_seq: self.assigned,
            durable_seq: self.durable,
            waiters: self.durable_tx.receiver_count() as u64,
            documents: self.docs.len() as u64,
            retained_bytes: self.docs.values().map(|d| d.retained_bytes).sum(),
            peers: self.peers.len() as u64,
            ..self.stats.clone()
        }
    }

    /// One stream page: the snapshot of *every* document compacted past `cursor`, then up to
    /// `limit` deltas in seq order within about `Config::max_page_bytes` (at least one delta
    /// when there is one, so every page makes progress).
    ///
    /// # Invariants
    /// - Snapshots are never cut by `limit`: a document compacted past the cursor lacks deleted
    ///   deltas anywhere in (cursor, its watermark], not only at the watermark, so no cursor
    ///   above the request's would be safe while one such snapshot is left out, and repeating
    ///   the request would return the same page forever. (A cut at "next watermark − 1" was
    ///   tried and the concurrent model test showed a reader skipping updates.)
    /// - Deltas are read *before* the watermarks and snapshots. Compactions commit on the
    ///   committer thread concurrently with this read, each as one atomic batch that deletes
    ///   deltas and writes the snapshot holding them; a delta missing from the first read was
    ///   deleted by a batch the second read sees, so its snapshot is in the page.
    fn read_page(&mut self, cursor: u64, limit: usize, threshold: u64) -> Result<StreamPage> {
        let head = self.durable;
        if cursor > head {
            return Err(Error::CursorAhead { cursor, head });
        }
        let store = &self.shared.store;
        let (deltas, more_deltas) = store.deltas_after(
            &self.name,
            cursor,
            head,
            limit,
            self.shared.config.max_page_bytes,
        )?;
        let mut changes = Vec::with_capacity(deltas.len());
        for (_, doc) in store.compacted_after(&self.name, cursor, usize::MAX)? {
            if let Some(s) = store.snapshot(&self.name, &doc)? {
                changes.push(Change {
                    document_id: doc,
                    seq: s.snapshot_seq,
                    bytes: s.bytes,
                    operation: OperationType::Snapshot,
                });
            }
        }
        let new_cursor = if more_deltas {
            deltas.last().map(|(s, _)| *s).unwrap_or(cursor)
        } else {
            head
        };
        changes.extend(deltas.into_iter().map(|(seq, d)| Change {
            document_id: d.document_id,
            seq,
            bytes: d.bytes,
            operation: d.operation,
        }));
        self.stats.stream_pages += 1;
        Ok(StreamPage {
            changes,
            cursor: new_cursor,
            has_more: more_deltas,
            compact: self.compaction_hint(threshold),
        })
    }

    /// Queues a compaction of `doc` once it passes the size threshold (if enabled and none is
    /// queued or running for it already).
    fn auto_compact(&mut self, doc: &str, ctx: &mut Context<Self>) {
        let over = self
            .docs
            .get(doc)
            .is_some_and(|s| s.retained_bytes > self.shared.config.size_threshold);
        if !self.shared.config.auto_compact || !over || self.compactions.contains_key(doc) {
            return;
        }
        let (tx, _) = oneshot::channel();
        let req = CompactRequest::document(doc);
        let timeout = self.shared.config.peer_timeout.as_millis() as u64;
        self.enqueue_compaction(req, timeout, tx, ctx);
    }

    fn check_idle(&mut self, ctx: &mut Context<Self>) {
        let now = self.shared.clock.now_millis();
        let idle_for = now.saturating_sub(self.last_activity);
        let quiet = self.in_flight.load(Ordering::SeqCst) == 0
            && self.assigned == self.durable
            && self.compactions.is_empty()
            && self.durable_tx.receiver_count() == 0;
        if quiet
            && idle_for >= self.shared.config.idle_timeout.as_millis() as u64
            && self.shared.evict(&self.name, self.id)
        {
            tracing::debug!(collection = %self.name, "stopping idle collection actor");
            self.stopped = true;
            ctx.stop();
        }
    }
}

impl Actor for CollectionActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.shared.config.max_in_flight.max(16));
        let every = IDLE_CHECK_EVERY.min(
            self.shared
                .config
                .idle_timeout
                .max(Duration::from_millis(10)),
        );
        ctx.run_interval(every, |act, ctx| act.check_idle(ctx));
    }
}

/// Store one validated write (the handle validated names and bytes).
#[derive(Message)]
#[rtype(result = "Result<Written>")]
pub struct Append {
    pub operation: OperationType,
    pub write: Write,
}

impl Handler<Append> for CollectionActor {
    type Result = ResponseActFuture<Self, Result<Written>>;

    fn handle(&mut self, msg: Append, ctx: &mut Self::Context) -> Self::Result {
        let op_id = msg.write.op_id.clone();
        let (seq, committed) = match self.append(msg, ctx) {
            Ok(Appended::Duplicate(seq)) if seq <= self.durable => {
                return Box::pin(fut::ready(Ok(Written {
                    seq,
                    duplicate: true,
                })));
            }
            // A duplicate still queued waits for the round that holds the original.
            Ok(Appended::Duplicate(seq)) => (seq, None),
            Ok(Appended::New(seq, prepared)) => (seq, Some(prepared)),
            Err(e) => return Box::pin(fut::ready(Err(e))),
        };
        let duplicate = committed.is_none();
        // `submit` queues now, so commit order is seq order.
        let round = self.shared.commit.submit(committed.unwrap_or_default());
        Box::pin(round.into_actor(self).map(move |res, act, _| {
            if !duplicate {
                act.stats.pending_writes -= 1;
                if let Some(op) = op_id {
                    act.pending_ops.remove(&op);
                }
            }
            res?;
            act.mark_durable(seq);
            Ok(Written { seq, duplicate })
        }))
    }
}

/// What [`CollectionActor::append`] did with a write.
enum Appended {
    /// A new seq and the write to commit.
    New(u64, PreparedWrite),
    /// The op id was seen before, with this seq.
    Duplicate(u64),
}

impl CollectionActor {
    /// Assigns the next seq to a write and prepares it (or finds the seq of its op id).
    fn append(&mut self, msg: Append, ctx: &mut Context<Self>) -> Result<Appended> {
        self.touch()?;
        let write = msg.write;
        if let Some(op) = &write.op_id {
            let known = match self.pending_ops.get(op) {
                Some(seq) => Some(*seq),
                None => self.shared.store.op_seq(&self.name, op)?,
            };
            if let Some(seq) = known {
                self.stats.duplicate_writes += 1;
                return Ok(Appended::Duplicate(seq));
            }
        }
        let seq = self.assigned + 1;
        let mut stats = self
            .docs
            .get(&write.document_id)
            .copied()
            .unwrap_or_default();
        let len = write.bytes.len() as u64;
        stats.retained_bytes += len;
        stats.retained_count += 1;
        let record = DeltaRecord {
            document_id: write.document_id,
            operation: msg.operation,
            bytes: write.bytes,
            created_at: self.shared.clock.now_millis(),
        };
        let prepared =
            Store::prepare_append(&self.name, seq, &record, &stats, write.op_id.as_deref())?;
        self.assigned = seq;
        if let Some(op) = write.op_id {
            self.pending_ops.insert(op, seq);
        }
        self.set_doc_stats(&record.document_id, stats);
        self.stats.appends += 1;
        self.stats.appended_bytes += len;
        self.stats.pending_writes += 1;
        self.auto_compact(&record.document_id, ctx);
        Ok(Appended::New(seq, prepared))
    }
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
    type Result = Result<(StreamPage, watch::Receiver<u64>)>;

    fn handle(&mut self, msg: ReadPage, _: &mut Self::Context) -> Self::Result {
        self.touch()?;
        let page = self.read_page(msg.cursor, msg.limit, msg.size_threshold)?;
        Ok((page, self.durable_tx.subscribe()))
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
    type Result = Result<u64>;

    /// Acks are stored without waiting for a flush: losing one in a crash only makes
    /// compaction more conservative (the peer's older ack holds back more deltas).
    fn handle(&mut self, msg: Ack, _: &mut Self::Context) -> Self::Result {
        self.touch()?;
        let now = self.shared.clock.now_millis();
        let record = self
            .peers
            .ack(&msg.peer_id, msg.synced_seq, self.durable, now)?;
        self.shared
            .store
            .put_peer(&self.name, &msg.peer_id, &record)?;
        self.stats.acks += 1;
        Ok(record.synced_seq)
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
        Ok(self.durable)
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

/// A compaction request waiting for its document's turn.
pub struct QueuedCompaction {
    request: CompactRequest,
    peer_timeout_ms: u64,
    answer: oneshot::Sender<Result<Compacted>>,
}

impl Handler<Compact> for CollectionActor {
    type Result = ResponseFuture<Result<Compacted>>;

    fn handle(&mut self, msg: Compact, ctx: &mut Self::Context) -> Self::Result {
        if let Err(e) = self.touch() {
            return Box::pin(async move { Err(e) });
        }
        let (tx, rx) = oneshot::channel();
        self.enqueue_compaction(msg.request, msg.peer_timeout_ms, tx, ctx);
        Box::pin(async move {
            rx.await
                .unwrap_or_else(|_| Err(Error::Internal("compaction was dropped".into())))
        })
    }
}

impl CollectionActor {
    fn enqueue_compaction(
        &mut self,
        request: CompactRequest,
        peer_timeout_ms: u64,
        answer: oneshot::Sender<Result<Compacted>>,
        ctx: &mut Context<Self>,
    ) {
        let doc = request.document_id.clone();
        let queued = QueuedCompaction {
            request,
            peer_timeout_ms,
            answer,
        };
        match self.compactions.get_mut(&doc) {
            Some(waiting) => waiting.push_back(queued),
            None => {
                self.compactions.insert(doc, VecDeque::new());
                self.run_compaction(queued, ctx);
            }
        }
    }

    /// Starts the next queued compaction of `doc`, or marks the document idle.
    fn next_compaction(&mut self, doc: &str, ctx: &mut Context<Self>) {
        match self.compactions.get_mut(doc).and_then(VecDeque::pop_front) {
            Some(next) => self.run_compaction(next, ctx),
            None => {
                self.compactions.remove(doc);
            }
        }
    }

    /// One compaction: read the input here, merge on the compactor's threads, then plan and
    /// queue the write here against the acks of that moment, and answer once committed. The
    /// future runs in this actor's context, so it finishes (and the next one starts) even if
    /// the caller stops waiting.
    fn run_compaction(&mut self, job: QueuedCompaction, ctx: &mut Context<Self>) {
        let doc = job.request.document_id.clone();
        let input = match self.read_compaction_input(&doc) {
            Ok(input) => input,
            Err(e) => {
                let _ = job.answer.send(Err(e));
                return self.next_compaction(&doc, ctx);
            }
        };
        if input.snapshot.is_none() && input.deltas.is_empty() && job.request.snapshot.is_none() {
            let _ = job.answer.send(Ok(Compacted {
                removed: 0,
                retained: 0,
                snapshot_seq: 0,
            }));
            return self.next_compaction(&doc, ctx);
        }
        let merged_deltas: Vec<(u64, u64)> = input
            .deltas
            .iter()
            .map(|(s, b)| (*s, b.len() as u64))
            .collect();
        let mut parts: Vec<Vec<u8>> = Vec::with_capacity(input.deltas.len() + 2);
        parts.extend(input.snapshot);
        parts.extend(job.request.snapshot);
        parts.extend(input.deltas.into_iter().map(|(_, b)| b));
        let merge = self.shared.compactor.send(Merge { parts });
        let QueuedCompaction {
            peer_timeout_ms,
            answer,
            ..
        } = job;
        let work = async move {
            merge
                .await
                .map_err(|e| Error::Internal(format!("compactor unavailable: {e}")))?
        }
        .into_actor(self)
        .then(move |merged, act, _| {
            let planned = merged.and_then(|merged| {
                act.plan_compaction(&doc, merged, &merged_deltas, peer_timeout_ms)
            });
            let commit = planned
                .map(|(compacted, prepared)| (compacted, act.shared.commit.submit(prepared)));
            async move {
                let (compacted, round) = commit?;
                round.await.map(|()| compacted)
            }
            .into_actor(act)
            .map(move |result, act, ctx| {
                let _ = answer.send(result);
                act.next_compaction(&doc, ctx);
            })
        });
        ctx.spawn(work);
    }

    /// Reads the document's durable deltas, then its snapshot: what a compaction merges.
    fn read_compaction_input(&mut self, doc: &str) -> Result<CompactionInput> {
        let store = &self.shared.store;
        let stats = self.docs.get(doc).copied().unwrap_or_default();
        let deltas = store.doc_deltas(&self.name, doc, self.durable)?;
        let snapshot = if stats.has_snapshot {
            store.snapshot(&self.name, doc)?.map(|s| s.bytes)
        } else {
            None
        };
        Ok(CompactionInput { snapshot, deltas })
    }

    /// Plans the deletions against the current acks, updates the in-memory counters and
    /// answers the outcome and the write to commit.
    fn plan_compaction(
        &mut self,
        doc: &str,
        merged: Merged,
        merged_deltas: &[(u64, u64)],
        peer_timeout_ms: u64,
    ) -> Result<(Compacted, PreparedWrite)> {
        let previous = self.docs.get(doc).copied().unwrap_or_default();
        let now = self.shared.clock.now_millis();
        let min_active = self.peers.min_active_synced(now, peer_timeout_ms);
        let plan = compaction::plan(merged_deltas, previous, min_active);
        let snapshot = SnapshotRecord {
            bytes: merged.update,
            state_vector: merged.state_vector,
            snapshot_seq: plan.snapshot_seq,
            created_at: now,
        };
        let prepared = Store::prepare_compaction(
            &self.name,
            &CompactionWrite {
                document_id: doc,
                snapshot: &snapshot,
                deleted: &plan.delete,
                stats: plan.stats,
                old_watermark: previous.watermark,
            },
        )?;
        self.set_doc_stats(doc, plan.stats);
        self.stats.compactions += 1;
        self.stats.deltas_removed += plan.delete.len() as u64;
        let compacted = Compacted {
            removed: plan.delete.len() as u64,
            retained: plan.stats.retained_count,
            snapshot_seq: plan.snapshot_seq,
        };
        Ok((compacted, prepared))
    }
}

/// What a compaction merges: the stored snapshot and the retained durable deltas.
struct CompactionInput {
    snapshot: Option<Vec<u8>>,
    deltas: Vec<(u64, Vec<u8>)>,
}
