//! The public request and answer types of the actors, shared by the HTTP front and embedders.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// What a change does to its document. `Snapshot` only appears in stream answers: it stands for
/// a document's compacted state, sent when compaction deleted deltas a reader has not seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OperationType {
    Insert,
    Update,
    Delete,
    Snapshot,
}

impl OperationType {
    pub fn as_str(self) -> &'static str {
        match self {
            OperationType::Insert => "insert",
            OperationType::Update => "update",
            OperationType::Delete => "delete",
            OperationType::Snapshot => "snapshot",
        }
    }
}

/// One write: a Yjs v1 update to one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Write {
    pub document_id: String,
    /// A Yjs v1 update.
    pub bytes: Vec<u8>,
    /// Client operation id: the same id again answers the first seq and stores nothing.
    pub op_id: Option<String>,
}

/// The answer to a write, given only once the write is on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Written {
    pub seq: u64,
    /// True when this answered a retried op id and stored nothing new.
    pub duplicate: bool,
}

/// A stream request: changes after `cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamRequest {
    pub cursor: u64,
    /// Deltas per page, 1..=[`MAX_STREAM_LIMIT`].
    pub limit: usize,
    /// Retained bytes above which a document is named in [`StreamPage::compact`];
    /// `None` uses the configured threshold.
    pub size_threshold: Option<u64>,
    /// With nothing new, wait this long for a commit (capped by `Config::max_wait`).
    pub wait: Duration,
}

/// Default page size for a stream.
pub const DEFAULT_STREAM_LIMIT: usize = 100;
/// Largest page size for a stream.
pub const MAX_STREAM_LIMIT: usize = 1000;
/// Most writes in one write batch ([`crate::Replicate::write_batch`]).
pub const MAX_BATCH_WRITES: usize = 1000;

impl StreamRequest {
    pub fn after(cursor: u64) -> Self {
        StreamRequest {
            cursor,
            limit: DEFAULT_STREAM_LIMIT,
            size_threshold: None,
            wait: Duration::ZERO,
        }
    }
}

/// One change in a stream answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub document_id: String,
    /// The delta's seq, or for a snapshot the highest seq it includes.
    pub seq: u64,
    pub bytes: Vec<u8>,
    pub operation: OperationType,
}

/// A stream answer.
///
/// # Invariants
/// A reader that applies every change and then records `cursor` holds every update with
/// seq ≤ `cursor`: snapshots come first for each document whose deleted deltas reach past the
/// request's cursor, then deltas in seq order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamPage {
    pub changes: Vec<Change>,
    pub cursor: u64,
    pub has_more: bool,
    /// A document whose retained delta bytes exceed the threshold, if any.
    pub compact: Option<String>,
}

/// A compaction request for one document.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompactRequest {
    pub document_id: String,
    /// A client's snapshot of the document (a v1 update), merged in; never trusted to be complete.
    pub snapshot: Option<Vec<u8>>,
    /// The client's state vector for that snapshot; validated, then superseded by the merged one.
    pub state_vector: Option<Vec<u8>>,
    /// Overrides `Config::peer_timeout` for deciding which peers are active.
    pub peer_timeout: Option<Duration>,
}

impl CompactRequest {
    pub fn document(document_id: impl Into<String>) -> Self {
        CompactRequest {
            document_id: document_id.into(),
            snapshot: None,
            state_vector: None,
            peer_timeout: None,
        }
    }
}

/// What a compaction did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compacted {
    /// Deltas deleted.
    pub removed: u64,
    /// Deltas of the document still stored.
    pub retained: u64,
    /// Highest seq the document's snapshot includes (0 if there is none).
    pub snapshot_seq: u64,
}

/// The answer to a recovery or state request: a v1 update and the cursor it corresponds to.
/// A peer that applies `update` holds every update with seq ≤ `cursor`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateAt {
    pub update: Vec<u8>,
    pub cursor: u64,
}

/// Observable state of one collection actor, for tests and operators.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CollectionStats {
    pub collection: String,
    /// Highest seq assigned (may not be on disk yet).
    pub assigned_seq: u64,
    /// Highest seq on disk; readers see up to here.
    pub durable_seq: u64,
    /// Writes assigned a seq and waiting for their flush.
    pub pending_writes: u64,
    /// Long-poll and SSE readers waiting for a commit.
    pub waiters: u64,
    pub appends: u64,
    pub appended_bytes: u64,
    pub duplicate_writes: u64,
    pub rejected_writes: u64,
    /// Stored updates left out of merges because they failed or went past their budget.
    pub quarantined_updates: u64,
    /// Op ids forgotten after `Config::op_id_ttl`.
    pub expired_op_ids: u64,
    /// Built documents dropped from the document cache after a compaction because they had
    /// outgrown what a rebuild holds (rebuilt from the new snapshot on their next write).
    pub shed_documents: u64,
    /// Refused writes checked once more against a rebuild from a shared store (PostgreSQL),
    /// at most one a second per document.
    pub rechecks: u64,
    /// Peers forgotten after `Config::peer_retention` unseen.
    pub forgotten_peers: u64,
    pub stream_pages: u64,
    pub acks: u64,
    pub compactions: u64,
    pub deltas_removed: u64,
    /// Documents with retained deltas or a snapshot.
    pub documents: u64,
    /// Sum of retained delta bytes over the collection's documents.
    pub retained_bytes: u64,
    pub peers: u64,
}

/// Observable state of the whole service.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ServiceStats {
    pub live_collections: u64,
    pub flushes: u64,
    pub collections: Vec<CollectionStats>,
    /// What the caches hold and their bounds.
    #[serde(default)]
    pub caches: CacheStats,
}

/// The service's caches: what each holds now and its bound, in bytes (issue 13: each cache has
/// an explicit size, and shows it).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CacheStats {
    /// Documents kept built to check writes against, and their estimated heap
    /// ([`crate::crdt::DocState::weight`]), against `Config::doc_cache_bytes`.
    pub doc_cache_documents: u64,
    pub doc_cache_bytes: u64,
    pub doc_cache_capacity: u64,
    /// Merged whole-collection states kept for `state` and recovery, against
    /// `Config::state_cache_bytes`.
    pub state_cache_bytes: u64,
    pub state_cache_capacity: u64,
    /// The sled page cache's bound (`Config::cache_bytes`; sled does not report its fill; 0 on
    /// PostgreSQL, which caches in the database).
    pub store_cache_capacity: u64,
}
