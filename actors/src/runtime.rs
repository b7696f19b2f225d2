//! The embedding handle, [`Replicate`]: opens the store, starts the flusher and the compactor,
//! starts collection actors on demand, and turns each public call into validated messages.
//!
//! # Admission and timeouts
//! Each collection admits at most `Config::max_in_flight` requests at once (more get
//! [`Error::Overloaded`], i.e. 503) and each ask waits at most `Config::ask_timeout`
//! ([`Error::Timeout`], 504). Long-poll waits hold no admission slot.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use actix::dev::ToEnvelope;
use actix::prelude::*;

use crate::clock::{self, Clock, SystemClock};
use crate::collection::{
    Ack, Append, AppendBatch, CollectionActor, Compact, GetState, Head, ReadPage,
};
use crate::compactor::{self, StateCache};
use crate::config::Config;
use crate::crdt;
use crate::doc_cache::DocCache;
use crate::durability::GroupCommit;
use crate::error::{Error, Result};
use crate::names;
use crate::registry::{Live, Registry, Shared};
use crate::store::Store;
use crate::types::*;
use crate::workers::Workers;

/// Threads reading stream pages on a networked engine: they mostly wait on the database.
const READ_THREADS: usize = 4;

/// How many times a request is retried on a fresh actor after the old one stopped.
const RELOCATE_RETRIES: usize = 3;

/// Heads of other nodes' commits queued for the thread that hands them to actors; more are
/// dropped (a dropped one only delays its readers until their own head check).
const HEADS_QUEUE: usize = 4096;

/// Heads other nodes commit (on an engine several nodes share) wake this node's readers. The
/// engine calls back from its own runtime, which must never wait on the registry lock (a
/// thread holding it may be waiting on that runtime: seen here as a deadlock), so the callback
/// only queues, and a thread of its own takes the lock.
fn watch_heads(shared: &Arc<Shared>) -> Result<()> {
    let (tx, rx) = std::sync::mpsc::sync_channel::<(String, u64)>(HEADS_QUEUE);
    let weak = Arc::downgrade(shared);
    std::thread::Builder::new()
        .name("replicate-heads".into())
        .spawn(move || {
            // Ends when the engine drops the callback (and with it the sender).
            while let Ok((c, head)) = rx.recv() {
                match weak.upgrade() {
                    Some(shared) => shared.registry.head_moved(&c, head),
                    None => return,
                }
            }
        })
        .map_err(|e| Error::Internal(format!("cannot start the heads thread: {e}")))?;
    shared
        .store
        .watch_heads(Arc::new(move |c: &str, head: u64| {
            let _ = tx.try_send((c.to_string(), head));
        }))
}

/// The running actors; clone it freely (clones share everything).
///
/// # Runtime requirements
/// Create it inside a running actix `System` (for example in `#[actix_web::main]` or
/// `System::new().block_on`): outside one, [`Replicate::open`] and [`Replicate::start`] answer
/// [`Error::Internal`]. Await its calls inside a tokio runtime with its timer enabled (the
/// actix `System`, or a tokio runtime of your own built with `enable_all`): awaited anywhere
/// else (`futures::executor::block_on` on a plain thread, say) they answer
/// [`Error::Internal`], since their timeouts need tokio's timer.
///
/// Start one handle per [`Store`] and clone it: a second [`Replicate::start`] on the same
/// store (or a clone of it) is refused while the first runs.
#[derive(Clone)]
pub struct Replicate {
    shared: Arc<Shared>,
    /// The arbiter threads themselves, joined by [`Replicate::close`].
    threads: Arc<Mutex<Vec<Arbiter>>>,
    shutting_down: Arc<AtomicBool>,
    /// Set by [`Self::close`]: the actors and their threads are gone, so every call answers
    /// [`Error::ShuttingDown`] at once (it used to retry loading actors onto stopped arbiters
    /// and answer `Relocated`).
    closed: Arc<AtomicBool>,
    waiters: Arc<Waiters>,
}

/// Decrements an admission counter when the request ends, however it ends.
struct Admitted(Arc<AtomicUsize>);

impl Drop for Admitted {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

impl Replicate {
    /// Opens the store `config` names ([`Store::for_config`]: sled in `config.data_dir`, or
    /// PostgreSQL) and starts the actors, with the system clock.
    ///
    /// # Errors
    /// [`Error::Storage`] if the store cannot be opened; [`Error::Internal`] outside an actix
    /// `System`.
    pub fn open(config: Config) -> Result<Replicate> {
        // Before the store opens, so a misuse leaves the directory alone.
        in_actix_system()?;
        let store = Store::for_config(&config)?;
        Self::start(config, store, Arc::new(SystemClock))
    }

    /// Starts the actors on an already open store with the given clock (tests pass a
    /// [`crate::ManualClock`]).
    ///
    /// # Errors
    /// [`Error::Internal`] outside an actix `System` or if a thread cannot be started;
    /// [`Error::Storage`] if another running handle was started on `store` (or a clone of it).
    pub fn start(config: Config, store: Store, clock: Arc<dyn Clock>) -> Result<Replicate> {
        in_actix_system()?;
        let claim = store.claim()?;
        let commit = GroupCommit::start(store.clone())?;
        let workers = Workers::start("crdt", config.compactor_threads, config.worker_queue)?;
        let config_waiters = (config.max_waiters_per_collection, config.max_waiters);
        let config_max_live = config.max_live_collections;
        let state_workers = Workers::start("state", 1, 16)?;
        let recovery_workers = Workers::start("recovery", 1, 64)?;
        let read_workers = store
            .numbers_appends()
            .then(|| Workers::start("read", READ_THREADS, config.worker_queue))
            .transpose()?;
        let threads: Vec<Arbiter> = (0..config.collection_arbiters.max(1))
            .map(|_| Arbiter::new())
            .collect();
        let arbiters = threads.iter().map(Arbiter::handle).collect();
        let shared = Arc::new(Shared {
            store,
            claim,
            commit,
            clock,
            docs: DocCache::new(config.doc_cache_bytes),
            states: StateCache::new(config.state_cache_bytes),
            config,
            workers,
            state_workers,
            recovery_workers,
            read_workers,
            registry: Registry::new(arbiters, config_max_live),
        });
        watch_heads(&shared)?;
        Ok(Replicate {
            shared,
            threads: Arc::new(Mutex::new(threads)),
            shutting_down: Arc::default(),
            closed: Arc::default(),
            waiters: Arc::new(Waiters::new(config_waiters.0, config_waiters.1)),
        })
    }

    /// The failure that stopped group commit, if a commit failed since start (sticky until
    /// restart: see [`crate::durability`]).
    pub fn storage_failure(&self) -> Option<crate::durability::StorageFailure> {
        self.shared.commit.failure()
    }

    /// Whether a failed commit stops every later write until restart (sled), or only fails
    /// its own round (an engine that numbers writes itself: see [`crate::durability`]).
    pub fn storage_failures_are_sticky(&self) -> bool {
        !self.shared.store.numbers_appends()
    }

    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The collection's actor and admission counter, starting the actor if needed.
    fn actor(&self, c: &str) -> Result<Live> {
        self.shared.registry.actor(&self.shared, c)
    }

    /// Sends `msg` (rebuilt by `make` on a retry) to collection `c`'s actor, with admission
    /// control, the ask timeout and retries after an idle stop.
    async fn ask<M, F>(&self, c: &str, make: F) -> Result<M::Result>
    where
        M: Message + Send + 'static,
        M::Result: Send,
        CollectionActor: Handler<M>,
        <CollectionActor as Actor>::Context: ToEnvelope<CollectionActor, M>,
        F: Fn() -> M,
    {
        in_tokio_runtime()?;
        if self.closed.load(Ordering::SeqCst) {
            return Err(Error::ShuttingDown);
        }
        for _ in 0..RELOCATE_RETRIES {
            let (addr, in_flight) = self.actor(c)?;
            let now = in_flight.fetch_add(1, Ordering::SeqCst) + 1;
            let _admitted = Admitted(in_flight);
            if now > self.shared.config.max_in_flight {
                return Err(Error::Overloaded {
                    collection: c.to_string(),
                    in_flight: now - 1,
                });
            }
            match addr
                .send(make())
                .timeout(self.shared.config.ask_timeout)
                .await
            {
                Ok(answer) => return Ok(answer),
                Err(MailboxError::Timeout) => {
                    return Err(Error::Timeout {
                        what: "collection actor",
                        millis: clock::millis(self.shared.config.ask_timeout),
                    })
                }
                Err(MailboxError::Closed) => continue,
            }
        }
        Err(Error::Relocated)
    }

    /// [`Self::ask`] for messages answering `Result<T>`, retrying [`Error::Relocated`].
    async fn call<M, T, F>(&self, c: &str, make: F) -> Result<T>
    where
        M: Message<Result = Result<T>> + Send + 'static,
        T: Send + 'static,
        CollectionActor: Handler<M>,
        <CollectionActor as Actor>::Context: ToEnvelope<CollectionActor, M>,
        F: Fn() -> M,
    {
        for _ in 0..RELOCATE_RETRIES {
            match self.ask(c, &make).await? {
                Err(Error::Relocated) => continue,
                other => return other,
            }
        }
        Err(Error::Relocated)
    }

    /// Whether collection `c` was ever written (or has a live actor). Reads of a collection
    /// that does not exist answer from this without starting an actor, so made-up names cost
    /// one store lookup, not an actor each.
    fn exists(&self, c: &str) -> Result<bool> {
        let live = self.shared.registry.contains(c);
        Ok(live || self.shared.store.collection_exists(c)?)
    }

    fn check_open(&self) -> Result<()> {
        if self.shutting_down.load(Ordering::SeqCst) {
            Err(Error::ShuttingDown)
        } else {
            Ok(())
        }
    }

    /// Stores a write and answers its seq once it is on disk.
    ///
    /// # Errors
    /// [`Error::InvalidName`], [`Error::TooLarge`] or [`Error::InvalidYjs`] for bad input (nothing
    /// is stored); [`Error::Storage`] if the write or its flush failed.
    pub async fn write(&self, c: &str, operation: OperationType, write: Write) -> Result<Written> {
        self.check_open()?;
        names::validate("collection", c)?;
        self.check_write(operation, &write)?;
        self.call(c, || Append {
            operation,
            write: write.clone(),
        })
        .await
    }

    /// Stores several writes of collection `c` in one commit: each is checked on its own
    /// (one result per write, in order), and the accepted ones get consecutive seqs in the
    /// order given, answered once on disk.
    ///
    /// # Errors
    /// For the whole batch: [`Error::InvalidArgument`] for no writes or more than
    /// [`MAX_BATCH_WRITES`], [`Error::InvalidName`] for the collection, and a storage error
    /// when the commit failed (nothing of the batch was stored).
    pub async fn write_batch(
        &self,
        c: &str,
        writes: Vec<(OperationType, Write)>,
    ) -> Result<Vec<Result<Written>>> {
        self.check_open()?;
        names::validate("collection", c)?;
        if writes.is_empty() || writes.len() > MAX_BATCH_WRITES {
            return Err(Error::InvalidArgument {
                field: "writes",
                reason: format!(
                    "must hold 1 to {MAX_BATCH_WRITES} writes, got {}",
                    writes.len()
                ),
            });
        }
        let mut answers: Vec<Option<Result<Written>>> = Vec::with_capacity(writes.len());
        let mut valid = Vec::with_capacity(writes.len());
        for (operation, write) in writes {
            match self.check_write(operation, &write) {
                Ok(()) => {
                    answers.push(None);
                    valid.push((operation, write));
                }
                Err(e) => answers.push(Some(Err(e))),
            }
        }
        let mut checked = if valid.is_empty() {
            Vec::new()
        } else {
            self.call(c, || AppendBatch {
                writes: valid.clone(),
            })
            .await?
        }
        .into_iter();
        Ok(answers
            .into_iter()
            .map(|a| {
                a.or_else(|| checked.next())
                    .unwrap_or_else(|| Err(Error::Internal("a batch answer is missing".into())))
            })
            .collect())
    }

    /// The checks of a write that need no actor: names, operation and size.
    fn check_write(&self, operation: OperationType, write: &Write) -> Result<()> {
        names::validate("documentId", &write.document_id)?;
        if let Some(op) = &write.op_id {
            names::validate("opId", op)?;
        }
        if operation == OperationType::Snapshot {
            return Err(Error::InvalidArgument {
                field: "operationType",
                reason: "snapshot is not a write".into(),
            });
        }
        crdt::check_size(
            "crdtBytes",
            &write.bytes,
            self.shared.config.max_update_bytes,
        )
    }

    pub async fn insert(&self, c: &str, write: Write) -> Result<Written> {
        self.write(c, OperationType::Insert, write).await
    }

    pub async fn update(&self, c: &str, write: Write) -> Result<Written> {
        self.write(c, OperationType::Update, write).await
    }

    pub async fn delete(&self, c: &str, write: Write) -> Result<Written> {
        self.write(c, OperationType::Delete, write).await
    }

    /// One page of changes after `req.cursor`; with `req.wait` and nothing new, waits for a
    /// commit (or the end of the wait) first.
    ///
    /// # Errors
    /// [`Error::InvalidArgument`] for a limit outside 1..=1000; [`Error::CursorAhead`] for a
    /// cursor above the collection's head.
    pub async fn stream(&self, c: &str, req: StreamRequest) -> Result<StreamPage> {
        names::validate("collection", c)?;
        if req.limit == 0 || req.limit > MAX_STREAM_LIMIT {
            return Err(Error::InvalidArgument {
                field: "limit",
                reason: format!(
                    "must be between 1 and {MAX_STREAM_LIMIT}, got {}",
                    req.limit
                ),
            });
        }
        let threshold = req
            .size_threshold
            .unwrap_or(self.shared.config.size_threshold);
        let read = || ReadPage {
            cursor: req.cursor,
            limit: req.limit,
            size_threshold: threshold,
        };
        // A waiter on a collection not written yet needs its actor (to hear the first commit);
        // waiters are capped, so only a read without a wait is answered from the store alone.
        if req.wait.is_zero() && !self.exists(c)? {
            return empty_page(req.cursor);
        }
        let (page, mut durable) = self.call(c, read).await?;
        let wait = req.wait.min(self.shared.config.max_wait);
        if !page.changes.is_empty()
            || page.has_more
            || wait.is_zero()
            || self.shutting_down.load(Ordering::SeqCst)
        {
            return Ok(page);
        }
        let _waiting = self.waiters.admit(c)?;
        let cursor = req.cursor;
        let committed = tokio::time::timeout(wait, durable.wait_for(|head| *head > cursor))
            .await
            .is_ok_and(|r| r.is_ok());
        drop(durable);
        if committed {
            self.call(c, read).await.map(|(page, _)| page)
        } else {
            // Timed out, or the actor stopped (it only stops with no waiters, so this is rare).
            Ok(page)
        }
    }

    /// Records that `peer_id` has synced collection `c` through `synced_seq`; answers the
    /// peer's highest acknowledged seq.
    ///
    /// # Errors
    /// [`Error::AckAhead`] if `synced_seq` is above the collection's current seq.
    pub async fn ack(&self, c: &str, peer_id: &str, synced_seq: u64) -> Result<u64> {
        self.check_open()?;
        names::validate("collection", c)?;
        names::validate("peerId", peer_id)?;
        // An ack registers the peer even before the first write (it then holds back
        // compaction), so it goes to the actor; peers per collection and live actors are capped.
        self.call(c, || Ack {
            peer_id: peer_id.to_string(),
            synced_seq,
        })
        .await
    }

    /// Compacts one document: merges its snapshot, the client's snapshot and its retained
    /// deltas into a new snapshot, then deletes the merged deltas every active peer has
    /// acknowledged.
    ///
    /// # Errors
    /// [`Error::InvalidYjs`] / [`Error::TooLarge`] for a bad client snapshot or state vector.
    pub async fn compact(&self, c: &str, req: CompactRequest) -> Result<Compacted> {
        self.check_open()?;
        names::validate("collection", c)?;
        names::validate("documentId", &req.document_id)?;
        if let Some(s) = &req.snapshot {
            // Checked so junk is still a 4xx, then ignored: see `CollectionActor::run_compaction`.
            crdt::check_size("snapshotBytes", s, self.shared.config.max_update_bytes)?;
            crdt::check_layout("snapshotBytes", s)?;
        }
        if let Some(sv) = &req.state_vector {
            crdt::validate_state_vector("stateVector", sv)?;
        }
        let peer_timeout_ms =
            clock::millis(req.peer_timeout.unwrap_or(self.shared.config.peer_timeout));
        self.call(c, || Compact {
            request: req.clone(),
            peer_timeout_ms,
        })
        .await
    }

    /// The diff a peer with `state_vector` needs to hold the collection (or one document of
    /// it) through the returned cursor.
    ///
    /// # Errors
    /// [`Error::InvalidYjs`] for a state vector that does not decode.
    pub async fn recovery(
        &self,
        c: &str,
        state_vector: &[u8],
        document_id: Option<&str>,
    ) -> Result<StateAt> {
        names::validate("collection", c)?;
        if let Some(d) = document_id {
            names::validate("documentId", d)?;
        }
        crdt::validate_state_vector("stateVector", state_vector)?;
        self.state_through(c, state_vector.to_vec(), document_id.map(str::to_string))
            .await
    }

    /// The whole collection merged into one v1 update, with the cursor it corresponds to.
    pub async fn state(&self, c: &str) -> Result<StateAt> {
        names::validate("collection", c)?;
        self.state_through(c, Vec::new(), None).await
    }

    async fn state_through(
        &self,
        c: &str,
        state_vector: Vec<u8>,
        document_id: Option<String>,
    ) -> Result<StateAt> {
        if !self.exists(c)? {
            return Ok(StateAt {
                update: crdt::EMPTY_UPDATE.to_vec(),
                cursor: 0,
            });
        }
        let cursor = self.call(c, || Head).await?;
        let shared = self.shared.clone();
        let name = c.to_string();
        let limits = self.shared.config.yjs;
        let update = match document_id {
            Some(doc) => {
                let job = move || {
                    compactor::recover_document(&shared.store, &name, &doc, &state_vector, &limits)
                };
                // Its own pool: writes are never checked behind a costly recovery.
                let timeout = self.shared.config.state_timeout;
                tokio::time::timeout(timeout, self.shared.recovery_workers.run(job))
                    .await
                    .map_err(|_| Error::Timeout {
                        what: "document recovery",
                        millis: clock::millis(timeout),
                    })???
            }
            None => {
                let cached = self.shared.states.get(c, cursor);
                let job = move || -> Result<Vec<u8>> {
                    let merged = match cached {
                        Some(m) => m,
                        None => {
                            let m =
                                compactor::merge_collection(&shared.store, &name, cursor, &limits)?;
                            let m = Arc::new(m);
                            shared.states.put(&name, cursor, m.clone());
                            m
                        }
                    };
                    crdt::diff_update(&merged, &state_vector)
                };
                let timeout = self.shared.config.state_timeout;
                tokio::time::timeout(timeout, self.shared.state_workers.run(job))
                    .await
                    .map_err(|_| Error::Timeout {
                        what: "whole-collection state",
                        millis: clock::millis(timeout),
                    })???
            }
        };
        Ok(StateAt { update, cursor })
    }

    /// Observable state of one collection.
    pub async fn collection_stats(&self, c: &str) -> Result<CollectionStats> {
        names::validate("collection", c)?;
        if !self.exists(c)? {
            return Ok(CollectionStats {
                collection: c.to_string(),
                ..CollectionStats::default()
            });
        }
        self.call(c, || GetState).await
    }

    /// Observable state of every live collection actor.
    pub async fn stats(&self) -> ServiceStats {
        // Outside a runtime the asks' timeouts would panic: no collections are listed then.
        let addrs = match in_tokio_runtime() {
            Ok(()) => self.shared.registry.addrs(),
            Err(_) => Vec::new(),
        };
        let mut collections = Vec::with_capacity(addrs.len());
        for addr in addrs {
            if let Ok(Ok(s)) = addr
                .send(GetState)
                .timeout(self.shared.config.ask_timeout)
                .await
            {
                collections.push(s);
            }
        }
        collections.sort_by(|a, b| a.collection.cmp(&b.collection));
        ServiceStats {
            live_collections: collections.len() as u64,
            flushes: self.shared.commit.rounds(),
            collections,
            caches: self.cache_stats(),
        }
    }

    /// What the caches hold and their bounds (cheap: no actor is asked).
    pub fn cache_stats(&self) -> CacheStats {
        let (docs, doc_bytes) = self.shared.docs.size();
        let (_, state_bytes) = self.shared.states.size();
        let sled = self.shared.config.postgres.is_none();
        CacheStats {
            doc_cache_documents: docs as u64,
            doc_cache_bytes: doc_bytes,
            doc_cache_capacity: self.shared.docs.capacity(),
            state_cache_bytes: state_bytes,
            state_cache_capacity: self.shared.states.capacity(),
            store_cache_capacity: if sled {
                self.shared.config.cache_bytes
            } else {
                0
            },
        }
    }

    /// Stops taking writes, waits (up to `grace`) for admitted requests to finish, then flushes.
    ///
    /// # Errors
    /// [`Error::Storage`] if the final flush fails.
    pub async fn shutdown(&self, grace: Duration) -> Result<()> {
        self.shutting_down.store(true, Ordering::SeqCst);
        // tokio's timer panics outside a runtime; a plain thread may block instead.
        let blocking = in_tokio_runtime().is_err();
        // `None`: a grace too long to add to now (`Duration::MAX`, "wait for them all").
        let deadline = tokio::time::Instant::now().checked_add(grace);
        loop {
            let busy = self.shared.registry.in_flight();
            if busy == 0 || deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                break;
            }
            if blocking {
                std::thread::sleep(Duration::from_millis(10));
            } else {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        self.shared.commit.durable().await
    }

    /// [`Self::shutdown`], then stops the collection actors and the committer and waits for
    /// their threads, so the store is released once the last clone of this handle is dropped
    /// (a restart in the same process can then reopen the directory at once), and the
    /// [`Store`] may be started on again.
    ///
    /// # Errors
    /// As [`Self::shutdown`].
    pub async fn close(self, grace: Duration) -> Result<()> {
        let flushed = self.shutdown(grace).await;
        self.closed.store(true, Ordering::SeqCst);
        self.shared.registry.clear();
        let threads = match self.threads.lock() {
            Ok(mut t) => std::mem::take(&mut *t),
            Err(_) => Vec::new(),
        };
        for arbiter in threads {
            arbiter.stop();
            let _ = arbiter.join();
        }
        // The committer thread holds a clone of the store: without this join, sled's lock on
        // the directory outlived `close` and an immediate reopen failed.
        self.shared.commit.stop();
        self.shared.claim.release();
        flushed
    }
}

/// Answers an error outside an actix `System`, where starting arbiters and actors panics.
fn in_actix_system() -> Result<()> {
    match System::try_current() {
        Some(_) => Ok(()),
        None => Err(Error::Internal(
            "Replicate must be started inside a running actix System (e.g. \
             `actix::System::new().block_on` or `#[actix_web::main]`)"
                .into(),
        )),
    }
}

/// Answers an error outside a tokio runtime, where a call's timeout (tokio's timer) panics.
fn in_tokio_runtime() -> Result<()> {
    match tokio::runtime::Handle::try_current() {
        Ok(_) => Ok(()),
        Err(_) => Err(Error::Internal(
            "Replicate's calls must be awaited inside a tokio runtime with its timer enabled \
             (the actix System, or a runtime built with `enable_all`)"
                .into(),
        )),
    }
}

/// The page for a collection that was never written.
fn empty_page(cursor: u64) -> Result<StreamPage> {
    if cursor > 0 {
        return Err(Error::CursorAhead { cursor, head: 0 });
    }
    Ok(StreamPage {
        changes: Vec::new(),
        cursor: 0,
        has_more: false,
        compact: None,
    })
}

/// Long-poll and SSE waiters, capped per collection and in total.
#[derive(Default)]
struct Waiters {
    per_collection: Mutex<HashMap<String, usize>>,
    total: AtomicUsize,
    max_per_collection: usize,
    max_total: usize,
}

/// One admitted waiter; leaving frees its place.
struct Waiting<'a> {
    waiters: &'a Waiters,
    collection: String,
}

impl Waiters {
    fn new(max_per_collection: usize, max_total: usize) -> Self {
        Waiters {
            max_per_collection,
            max_total,
            ..Waiters::default()
        }
    }

    /// Admits one more waiter on `c`.
    ///
    /// # Errors
    /// [`Error::Overloaded`] past either cap.
    fn admit(&self, c: &str) -> Result<Waiting<'_>> {
        let mut map = self
            .per_collection
            .lock()
            .map_err(|_| Error::Internal("waiters lock poisoned".into()))?;
        let here = map.get(c).copied().unwrap_or(0);
        let total = self.total.load(Ordering::SeqCst);
        if here >= self.max_per_collection || total >= self.max_total {
            return Err(Error::Overloaded {
                collection: c.to_string(),
                in_flight: here.max(total),
            });
        }
        *map.entry(c.to_string()).or_default() += 1;
        self.total.fetch_add(1, Ordering::SeqCst);
        Ok(Waiting {
            waiters: self,
            collection: c.to_string(),
        })
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.waiters.total.fetch_sub(1, Ordering::SeqCst);
        if let Ok(mut map) = self.waiters.per_collection.lock() {
            if let Some(n) = map.get_mut(&self.collection) {
                *n -= 1;
                if *n == 0 {
                    map.remove(&self.collection);
                }
            }
        }
    }
}
