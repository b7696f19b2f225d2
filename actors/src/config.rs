//! The crate's configuration: a plain struct. This crate reads no flags or environment; the
//! binary (or the embedding application) fills it in.

use std::path::PathBuf;
use std::time::Duration;

use crate::crdt::YjsLimits;

/// Settings for [`crate::Replicate`]. `Config::new(dir)` gives the defaults listed per field.
#[derive(Debug, Clone)]
pub struct Config {
    /// The sled directory (unused when `postgres` is set).
    pub data_dir: PathBuf,
    /// A PostgreSQL database to store everything in instead of sled: a `postgres://` URL
    /// (default none: sled in `data_dir`).
    pub postgres: Option<String>,
    /// Schema and pool size for `postgres`.
    pub postgres_options: crate::store::postgres::PostgresOptions,
    /// Largest accepted update or client snapshot, in bytes (default 8 MiB).
    pub max_update_bytes: usize,
    /// A peer not seen for this long is inactive and no longer holds back compaction
    /// (default 10 minutes).
    pub peer_timeout: Duration,
    /// Retained delta bytes of one document above which `stream` hints `compact`
    /// (default 5,000,000).
    pub size_threshold: u64,
    /// Compact a document automatically once its retained bytes pass `size_threshold`
    /// (default off).
    pub auto_compact: bool,
    /// A collection actor with no traffic, waiters or work for this long stops and frees its
    /// memory (default 5 minutes).
    pub idle_timeout: Duration,
    /// Requests allowed in flight per collection before new ones get
    /// [`crate::Error::Overloaded`] (default 4096; `usize::MAX` for no limit: the actor's
    /// mailbox capacity is capped on its own, see `collection::MAX_MAILBOX`).
    pub max_in_flight: usize,
    /// How long to wait for an actor's answer before [`crate::Error::Timeout`] (default 30 s).
    pub ask_timeout: Duration,
    /// Threads that run merges, recovery diffs and other blocking CRDT work (default 2).
    pub compactor_threads: usize,
    /// Arbiters (threads) the collection actors are spread over (default 1).
    pub collection_arbiters: usize,
    /// Longest long-poll wait a caller may ask for (default 60 s).
    pub max_wait: Duration,
    /// Bound of sled's page cache in bytes (default 64 MiB). sled counts what it caches
    /// loosely, so resident memory for it can exceed this somewhat; see README *Memory*.
    pub cache_bytes: u64,
    /// Cap on the update bytes of one stream page (default 16 MiB): a page holds at most this
    /// plus one change (one snapshot or delta: the first, so every page moves), except for
    /// deltas deleted before store format 2 (see [`crate::paging`]).
    pub max_page_bytes: usize,
    /// Seqs per bucket of the index of deleted deltas that cuts stream pages (default 1,024;
    /// 1 to [`crate::paging::MAX_BUCKET_SEQS`]). A compaction writes one small record per
    /// bucket its deleted deltas fall in; a page reads the records of up to about two buckets
    /// before its first step. Changing it on an existing store is safe: readers look back over
    /// the largest bucket ever written.
    pub page_bucket_seqs: u64,
    /// Bounds on "valid but hostile" Yjs updates: nesting, counts, CPU budgets (see
    /// [`YjsLimits`] for the defaults).
    pub yjs: YjsLimits,
    /// Estimated heap ([`crate::crdt::DocState::weight`]) of the documents kept built in
    /// memory to check writes against (default 64 MiB); least recently used go first.
    pub doc_cache_bytes: u64,
    /// Bytes of merged whole-collection states kept for repeated `state` and recovery calls at
    /// the same head (default 64 MiB).
    pub state_cache_bytes: usize,
    /// How long an op id is remembered for retries (default 7 days).
    pub op_id_ttl: Duration,
    /// Jobs that may wait for a worker thread before callers get 503 (default 1024).
    pub worker_queue: usize,
    /// Longest a whole-collection `state` or recovery may take before 504 (default 30 s).
    pub state_timeout: Duration,
    /// Long-poll and SSE waiters allowed on one collection at once (default 1,000); more get
    /// 503 `overloaded`.
    pub max_waiters_per_collection: usize,
    /// Long-poll and SSE waiters allowed in total (default 10,000).
    pub max_waiters: usize,
    /// Collection actors kept live at once (default 10,000); past it the least recently used
    /// quiet one stops (its state is all in the store).
    pub max_live_collections: usize,
    /// A peer not seen for this long is forgotten (default 30 days): it no longer holds back
    /// anything and its record would otherwise be kept forever.
    pub peer_retention: Duration,
    /// Peers one collection tracks at most (default 10,000); acks of new peers past it get
    /// 503 `overloaded` until old ones are forgotten.
    pub max_peers_per_collection: usize,
    /// Documents whose counters one collection actor keeps in memory (default 10,000); the
    /// others' are read from the store when needed.
    pub doc_counters_cached: usize,
}

impl Config {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Config {
            data_dir: data_dir.into(),
            postgres: None,
            postgres_options: Default::default(),
            max_update_bytes: 8 * 1024 * 1024,
            peer_timeout: Duration::from_secs(600),
            size_threshold: 5_000_000,
            auto_compact: false,
            idle_timeout: Duration::from_secs(300),
            max_in_flight: 4096,
            ask_timeout: Duration::from_secs(30),
            compactor_threads: 2,
            collection_arbiters: 1,
            max_wait: Duration::from_secs(60),
            cache_bytes: 64 * 1024 * 1024,
            max_page_bytes: 16 * 1024 * 1024,
            page_bucket_seqs: 1024,
            yjs: YjsLimits::default(),
            doc_cache_bytes: 64 * 1024 * 1024,
            state_cache_bytes: 64 * 1024 * 1024,
            op_id_ttl: Duration::from_secs(7 * 24 * 3600),
            worker_queue: 1024,
            state_timeout: Duration::from_secs(30),
            max_waiters_per_collection: 1_000,
            max_waiters: 10_000,
            max_live_collections: 10_000,
            peer_retention: Duration::from_secs(30 * 24 * 3600),
            max_peers_per_collection: 10_000,
            doc_counters_cached: 10_000,
        }
    }
}
