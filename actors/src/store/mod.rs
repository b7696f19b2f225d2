//! The durable store: every record of every collection, behind the [`Engine`] trait.
//!
//! The actors see only this module's records, [`Batch`]es of [`Mutation`]s and the [`Store`]
//! handle; key layouts and engine types stay inside an engine ([`sled`] is the embedded one).
//! Each [`Engine::commit`] of a list of batches is atomic (after a crash, all of it or none)
//! but not durable until [`Engine::flush`]: the group-commit flusher
//! ([`crate::durability`]) decides when that happens.
//!
//! Reads are blocking calls; the collection actors make them on worker threads where they
//! may take long (merges), and on their own thread only for point reads and bounded pages.

pub mod postgres;
pub mod sled;

use std::ops::Deref;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::paging::DeletedEntry;
use crate::types::OperationType;

/// One stored update.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeltaRecord {
    pub document_id: String,
    pub operation: OperationType,
    pub bytes: Vec<u8>,
    pub created_at: u64,
}

/// A document's compacted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub bytes: Vec<u8>,
    pub state_vector: Vec<u8>,
    /// Highest seq of the document's deltas merged into this snapshot.
    pub snapshot_seq: u64,
    pub created_at: u64,
}

/// Running counters of one document, kept so no request has to scan.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DocStats {
    pub retained_bytes: u64,
    pub retained_count: u64,
    /// Highest seq of this document that compaction deleted (0: none).
    pub watermark: u64,
    /// Compactions applied to this document.
    pub generation: u64,
    /// Whether a snapshot is stored.
    pub has_snapshot: bool,
    /// Highest seq the stored snapshot includes (0: none).
    pub snapshot_seq: u64,
}

/// Acknowledgement state of one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerRecord {
    pub synced_seq: u64,
    pub last_seen_at: u64,
}

/// What an op id was first used for: its seq, a hash of its bytes and when it was written.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpRecord {
    pub seq: u64,
    pub hash: u64,
    pub created_at: u64,
}

/// A write's op id with what it answers to, for [`Batch::append`].
#[derive(Debug, Clone, Copy)]
pub struct OpWrite<'a> {
    pub op_id: &'a str,
    pub hash: u64,
}

/// What a collection actor starts from: its head, totals over its documents' counters, the
/// documents with the most retained bytes, and its peers (bounded by the peer limit).
#[derive(Debug, Default)]
pub struct LoadedCollection {
    pub high_water: u64,
    /// Documents with counters.
    pub documents: u64,
    /// Sum of the documents' retained bytes.
    pub retained_bytes: u64,
    /// Up to the asked number of documents with the most retained bytes (any order).
    pub largest: Vec<(String, DocStats)>,
    pub peers: Vec<(String, PeerRecord)>,
}

/// What a compaction checks when several nodes share the store (see [`Mutation::Compaction`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CompactionGuard {
    pub read_generation: u64,
    /// Peers seen at or after this millisecond are active (as the plan counted them).
    pub active_since: u64,
}

/// What one compaction writes (see [`Batch::compaction`]).
#[derive(Debug)]
pub struct CompactionWrite<'a> {
    pub document_id: &'a str,
    pub snapshot: &'a SnapshotRecord,
    pub deleted: &'a [u64],
    pub stats: DocStats,
    /// Seqs per bucket of the deleted-seq index (`Config::page_bucket_seqs`).
    pub bucket_seqs: u64,
    pub guard: Option<CompactionGuard>,
}

/// What a commit did with one mutation, in the order of the batch's mutations.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// An append, stored at this seq (the one it carried, unless the engine numbers appends:
    /// see [`Engine::numbers_appends`]).
    Stored(u64),
    /// An append not stored: its op id already names this earlier write (stored by another
    /// node; only engines that number appends answer this).
    Duplicate(OpRecord),
    /// A compaction, applied: it deleted these seqs (fewer than planned when an engine shared
    /// by several nodes found an acknowledgement made elsewhere that holds some back).
    Compacted { deleted: Vec<u64> },
    /// A compaction not applied: the document was compacted elsewhere after this one read it,
    /// so its snapshot may lack what that one merged.
    Superseded,
    /// An acknowledgement, stored: the peer's synced seq the store now holds, which an ack
    /// made on another node may have put above this one (only shared engines answer this).
    PeerSynced(u64),
    /// Any other mutation, applied.
    Applied,
}

/// One change to the store. A [`Batch`] of them is applied all-or-nothing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mutation {
    /// A new delta, with its document's new counters, the collection's new high-water seq
    /// (`seq`) and the op id it answers to.
    Append {
        collection: String,
        seq: u64,
        delta: DeltaRecord,
        stats: DocStats,
        op: Option<(String, u64)>,
    },
    /// A compaction: the new snapshot, the deleted deltas, the counters and the deleted-seq
    /// index entries (see [`crate::paging`]; an engine merges them with what it holds).
    Compaction {
        collection: String,
        document_id: String,
        snapshot: SnapshotRecord,
        deleted: Vec<u64>,
        stats: DocStats,
        bucket_seqs: u64,
        /// For engines shared by several nodes: the document's compaction generation when
        /// the merge read it (the compaction is [`Outcome::Superseded`] if it moved since),
        /// and the time before which an acknowledgement no longer holds deltas back
        /// (`now − peer timeout`).
        guard: Option<CompactionGuard>,
    },
    PutPeer {
        collection: String,
        peer: String,
        record: PeerRecord,
    },
    /// Forgets a peer not seen since `unseen_since` (millis); an engine several nodes share
    /// keeps it if another node has seen it since.
    ForgetPeer {
        collection: String,
        peer: String,
        unseen_since: u64,
    },
    /// Op ids listed by [`Engine::ops_before`]: (created_at, document, op id).
    ForgetOps {
        collection: String,
        ops: Vec<(u64, String, String)>,
    },
    /// Marks stored update `seq` of `document_id` as left out of merges, with why.
    Quarantine {
        collection: String,
        document_id: String,
        seq: u64,
        reason: String,
    },
}

/// Mutations committed together, in order (a later write of the same record wins).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Batch {
    pub mutations: Vec<Mutation>,
}

impl Batch {
    fn one(m: Mutation) -> Batch {
        Batch { mutations: vec![m] }
    }

    pub fn is_empty(&self) -> bool {
        self.mutations.is_empty()
    }

    /// Appends `other`'s mutations after these.
    pub fn extend(&mut self, other: Batch) {
        self.mutations.extend(other.mutations);
    }

    /// One delta with the document's new counters, the collection's new high-water seq and
    /// the op id.
    pub fn append(
        c: &str,
        seq: u64,
        delta: &DeltaRecord,
        stats: &DocStats,
        op: Option<OpWrite<'_>>,
    ) -> Batch {
        Batch::one(Mutation::Append {
            collection: c.to_string(),
            seq,
            delta: delta.clone(),
            stats: *stats,
            op: op.map(|o| (o.op_id.to_string(), o.hash)),
        })
    }

    /// A compaction, applied as one atomic batch (a reader or a crash sees all of it or none).
    /// Stream pages rely on that: a delta is gone only where its index entry and its
    /// document's snapshot are (see `collection::read_page_at`). The engine merges the
    /// index entries with the document's current ones when it commits: the caller must not
    /// commit another compaction of the same document in the same commit.
    pub fn compaction(c: &str, w: &CompactionWrite<'_>) -> Batch {
        Batch::one(Mutation::Compaction {
            collection: c.to_string(),
            document_id: w.document_id.to_string(),
            snapshot: w.snapshot.clone(),
            deleted: w.deleted.to_vec(),
            stats: w.stats,
            bucket_seqs: w.bucket_seqs,
            guard: w.guard,
        })
    }

    pub fn put_peer(c: &str, peer: &str, record: &PeerRecord) -> Batch {
        Batch::one(Mutation::PutPeer {
            collection: c.to_string(),
            peer: peer.to_string(),
            record: *record,
        })
    }

    pub fn forget_peer(c: &str, peer: &str, unseen_since: u64) -> Batch {
        Batch::one(Mutation::ForgetPeer {
            collection: c.to_string(),
            peer: peer.to_string(),
            unseen_since,
        })
    }

    pub fn forget_ops(c: &str, ops: &[(u64, String, String)]) -> Batch {
        Batch::one(Mutation::ForgetOps {
            collection: c.to_string(),
            ops: ops.to_vec(),
        })
    }

    pub fn quarantine(c: &str, doc: &str, seq: u64, reason: &str) -> Batch {
        Batch::one(Mutation::Quarantine {
            collection: c.to_string(),
            document_id: doc.to_string(),
            seq,
            reason: reason.to_string(),
        })
    }
}

/// Called with (collection, head) when another process commits (see [`Engine::watch_heads`]).
pub type HeadListener = Arc<dyn Fn(&str, u64) + Send + Sync>;

/// The deleted-seq index of one collection from a bucket start on, ascending; lazy.
pub type DeletedEntries = Box<dyn Iterator<Item = Result<DeletedEntry>> + Send>;

/// A storage engine. Every method may block; none may panic on bad stored data (answer
/// [`crate::Error::Storage`]).
pub trait Engine: Send + Sync + 'static {
    /// Applies `batches` in order as one atomic write (not yet durable), answering one
    /// [`Outcome`] per mutation of each batch.
    fn commit(&self, batches: &[Batch]) -> Result<Vec<Vec<Outcome>>>;

    /// Whether this engine numbers appends itself, in its commit (several nodes share it):
    /// the seq an [`Mutation::Append`] carries is then ignored, and each collection's appends
    /// get the next seqs of its head in commit order. Engines owned by one process answer
    /// false: the collection actor numbers.
    fn numbers_appends(&self) -> bool {
        false
    }

    /// A collection's head: its highest seq ever committed (0: none).
    fn head(&self, c: &str) -> Result<u64> {
        Ok(self.load_collection(c, 0)?.high_water)
    }

    /// Asks to hear of heads committed by other processes: `on_head(collection, head)` is
    /// called from an engine thread, promptly but not reliably (callers also re-check
    /// [`Engine::head`]). Engines owned by one process never call it.
    fn watch_heads(&self, on_head: HeadListener) -> Result<()> {
        let _ = on_head;
        Ok(())
    }

    /// Makes every commit so far durable.
    fn flush(&self) -> Result<()>;

    /// Whether collection `c` has ever been written.
    fn collection_exists(&self, c: &str) -> Result<bool>;

    /// A collection's high-water seq, counter totals, its `largest` documents by retained
    /// bytes, and its peers.
    fn load_collection(&self, c: &str, largest: usize) -> Result<LoadedCollection>;

    /// One document's counters, if it has any.
    fn doc_stats(&self, c: &str, doc: &str) -> Result<Option<DocStats>>;

    /// What op id `op` of document `doc` was first used for, if it is remembered.
    fn op_record(&self, c: &str, doc: &str, op: &str) -> Result<Option<OpRecord>>;

    /// Up to `limit` op ids written before `before` (millis), oldest first, as
    /// (created_at, document, op id).
    fn ops_before(&self, c: &str, before: u64, limit: usize) -> Result<Vec<(u64, String, String)>>;

    /// Seqs of one document's stored updates that merges leave out.
    fn quarantined(&self, c: &str, doc: &str) -> Result<Vec<u64>>;

    /// Deltas with `after < seq <= upto` in seq order: at most `limit`, and no more once their
    /// bytes would pass `max_bytes` (but always the first one). Also answers whether more
    /// deltas were left out.
    fn deltas_after(
        &self,
        c: &str,
        after: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(u64, DeltaRecord)>, bool)>;

    /// Seqs of one document's retained deltas with seq ≤ `upto`, in order.
    fn doc_delta_seqs(&self, c: &str, doc: &str, upto: u64) -> Result<Vec<u64>>;

    /// One document's retained deltas with seq ≤ `upto`, in seq order. A delta deleted between
    /// the index read and its own read is skipped: the snapshot that replaced it was written in
    /// the same batch, so a caller that reads the snapshot afterwards still sees its content.
    fn doc_deltas(&self, c: &str, doc: &str, upto: u64) -> Result<Vec<(u64, Vec<u8>)>>;

    fn snapshot(&self, c: &str, doc: &str) -> Result<Option<SnapshotRecord>>;

    /// Every snapshot of the collection, with its document id.
    fn snapshots(&self, c: &str) -> Result<Vec<(String, SnapshotRecord)>>;

    /// Up to `limit` documents whose format-1 compaction watermark (highest deleted seq) is
    /// above `after`, by watermark (deletions made before the deleted-seq index existed).
    fn compacted_after(&self, c: &str, after: u64, limit: usize) -> Result<Vec<(u64, String)>>;

    /// The largest bucket, in seqs, any deleted-seq entry was written with (0: no entries).
    fn deleted_span(&self) -> Result<u64>;

    /// The deleted-seq index of collection `c` from bucket start `from` on.
    fn deleted_entries(&self, c: &str, from: u64) -> DeletedEntries;

    /// Bytes the engine holds on disk.
    fn size_on_disk(&self) -> Result<u64>;
}

/// A handle to the open store; clones share it.
///
/// # Invariants
/// At most one running [`crate::Replicate`] uses a `Store` and its clones: each handle runs
/// its own collection actors, which number writes from the head they loaded, so two handles
/// on one sled store would hand out the same seq and the later write would overwrite the
/// earlier, answered one. [`crate::Replicate::start`] claims the store ([`Store::claim`]) and
/// refuses one already claimed. Nodes sharing a PostgreSQL database each open a `Store` of
/// their own, so they do not claim each other's.
#[derive(Clone)]
pub struct Store {
    engine: Arc<dyn Engine>,
    /// Whether a running handle owns this store; shared by its clones.
    owned: Arc<AtomicBool>,
}

impl Deref for Store {
    type Target = dyn Engine;

    fn deref(&self) -> &Self::Target {
        &*self.engine
    }
}

/// A running handle's ownership of a [`Store`]; released when dropped (or by
/// [`Claim::release`]), after which the store may be started on again.
#[derive(Debug)]
pub(crate) struct Claim {
    owned: Arc<AtomicBool>,
    /// Whether this claim still holds the store (a release is done once).
    held: AtomicBool,
}

impl Claim {
    /// Gives the store up; later calls do nothing.
    pub(crate) fn release(&self) {
        if self.held.swap(false, Ordering::SeqCst) {
            self.owned.store(false, Ordering::SeqCst);
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.release();
    }
}

impl Store {
    /// A store over any engine.
    pub fn from_engine(engine: impl Engine) -> Store {
        Store {
            engine: Arc::new(engine),
            owned: Arc::default(),
        }
    }

    /// Claims this store (and its clones) for one running handle: see the type's invariants.
    ///
    /// # Errors
    /// [`Error::Storage`] if a running handle already owns it.
    pub(crate) fn claim(&self) -> Result<Claim> {
        if self.owned.swap(true, Ordering::SeqCst) {
            return Err(Error::Storage(
                "this Store already has a running Replicate handle; clone that handle instead of \
                 starting a second one (two handles on one store would issue the same seqs)"
                    .into(),
            ));
        }
        Ok(Claim {
            owned: self.owned.clone(),
            held: AtomicBool::new(true),
        })
    }

    /// Opens (or creates) the embedded sled store in `dir`.
    ///
    /// # Errors
    /// [`crate::Error::Storage`] if sled cannot open the directory or it holds another format
    /// version.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<Store> {
        Ok(Store::from_engine(sled::SledEngine::open(
            dir,
            cache_bytes,
        )?))
    }

    /// Opens the store `config` names: PostgreSQL if `config.postgres` is set, else sled in
    /// `config.data_dir`.
    ///
    /// # Errors
    /// As [`Store::open`] or [`Store::postgres`].
    pub fn for_config(config: &crate::Config) -> Result<Store> {
        match &config.postgres {
            Some(url) => Store::postgres(url, &config.postgres_options),
            None => Store::open(&config.data_dir, config.cache_bytes),
        }
    }

    /// Opens the PostgreSQL store at `url` (see [`postgres`]).
    ///
    /// # Errors
    /// See [`postgres::PostgresEngine::open`].
    pub fn postgres(url: &str, options: &postgres::PostgresOptions) -> Result<Store> {
        Ok(Store::from_engine(postgres::PostgresEngine::open(
            url, options,
        )?))
    }

    /// Whether `spec` names a PostgreSQL database rather than a sled directory.
    pub fn is_postgres_url(spec: &str) -> bool {
        spec.starts_with("postgres://") || spec.starts_with("postgresql://")
    }

    /// A sled store in a temporary directory, deleted on drop (for tests and benchmarks).
    pub fn temporary() -> Result<Store> {
        Ok(Store::from_engine(sled::SledEngine::temporary()?))
    }

    /// Commits one append (tests and tools; the actors go through group commit).
    pub fn append(
        &self,
        c: &str,
        seq: u64,
        delta: &DeltaRecord,
        stats: &DocStats,
        op: Option<OpWrite<'_>>,
    ) -> Result<()> {
        self.commit(&[Batch::append(c, seq, delta, stats, op)])
            .map(drop)
    }

    /// Commits a compaction (tests and tools).
    pub fn apply_compaction(&self, c: &str, w: &CompactionWrite<'_>) -> Result<()> {
        self.commit(&[Batch::compaction(c, w)]).map(drop)
    }

    /// Stores a peer's record without waiting for a flush.
    pub fn put_peer(&self, c: &str, peer: &str, record: &PeerRecord) -> Result<()> {
        self.commit(&[Batch::put_peer(c, peer, record)]).map(drop)
    }

    /// Every retained delta of the collection with seq ≤ `upto`, in seq order.
    pub fn all_deltas(&self, c: &str, upto: u64) -> Result<Vec<(u64, DeltaRecord)>> {
        Ok(self.deltas_after(c, 0, upto, usize::MAX, usize::MAX)?.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_store_is_claimed_once_across_its_clones_until_released() {
        let store = Store::temporary().unwrap();
        let other = Store::temporary().unwrap();
        let claim = store.claim().unwrap();
        assert!(matches!(store.clone().claim(), Err(Error::Storage(_))));
        // Another store (another node's, say) is not claimed by this one.
        drop(other.claim().unwrap());
        claim.release();
        let again = store.clone().claim().unwrap();
        drop(claim); // an old claim, released already, frees nothing
        assert!(store.claim().is_err());
        drop(again);
        store.claim().unwrap();
    }
}
