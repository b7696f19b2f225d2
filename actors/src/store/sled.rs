//! The embedded engine: every record of every collection in one sled tree (see
//! [`crate::keys`]); each commit is one atomic `apply_batch`, which sled also recovers
//! atomically after a crash.

use std::mem::ManuallyDrop;
use std::path::Path;
use std::sync::{Mutex, MutexGuard, PoisonError};

use serde::{de::DeserializeOwned, Serialize};

use super::{
    Batch, DeletedEntries, DeltaRecord, DocStats, Engine, LoadedCollection, Mutation, OpRecord,
    Outcome, SnapshotRecord,
};
use crate::error::{Error, Result};
use crate::keys::{self, Tag};
use crate::paging::{self, DeletedEntry};

/// Current on-disk format; bump when a record or key layout changes.
///
/// Format 2 added the deleted-seq index (`Tag::DeletedSeqs`) and stopped writing the
/// `Tag::Watermark` records; a format-1 store is upgraded on open by recording the new version
/// (its watermarks stay valid and are still read, see [`crate::paging`]). A binary that knows
/// only format 1 refuses a format-2 store, since it would not read the new index.
pub const FORMAT_VERSION: u32 = 2;

/// The sled engine; see the module docs.
pub struct SledEngine {
    /// Dropped in turn by [`SledEngine`]'s `Drop` (see [`TURNS`]).
    db: ManuallyDrop<sled::Db>,
}

/// Makes the applies and flushes of every sled database in the process take turns.
///
/// Why: sled 0.34 guards all its databases in a process with one reader-writer lock (its
/// `concurrency_control`), which prefers writers: once an `apply_batch` waits for it, no new
/// reader gets it. A flush holds it as a reader while it waits for its database's log to be
/// written, which needs that database's flusher thread to take it as a reader too. So a flush
/// in one database (or the flush that dropping one does) and an `apply_batch` in another
/// deadlock. Seen in the load tool, which drops one scenario's stores while the next commits:
/// every thread parked, the process idle for good. Within one database the committer applies
/// and flushes on one thread, one after the other, so only processes with several databases
/// (tests, tools, embedders opening several stores) meet it; for one database the lock is
/// never contended.
static TURNS: Mutex<()> = Mutex::new(());

fn turn() -> MutexGuard<'static, ()> {
    TURNS.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Runs `f` in turn (see [`TURNS`]).
fn turn_while<T>(f: impl FnOnce() -> T) -> T {
    let _turn = turn();
    f()
}

impl Drop for SledEngine {
    /// Drops the database (which flushes it) in turn (see [`TURNS`]).
    fn drop(&mut self) {
        let _turn = turn();
        // SAFETY: `db` is dropped here once, and nothing uses it after: `self` is being
        // dropped.
        unsafe { ManuallyDrop::drop(&mut self.db) };
    }
}

fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>> {
    Ok(bincode::serialize(value)?)
}

fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T> {
    Ok(bincode::deserialize(bytes)?)
}

impl SledEngine {
    /// Opens (or creates) the store in `dir`.
    ///
    /// # Errors
    /// [`Error::Storage`] if sled cannot open the directory or it holds another format version.
    pub fn open(dir: &Path, cache_bytes: u64) -> Result<SledEngine> {
        let db = sled::Config::new()
            .path(dir)
            .cache_capacity(cache_bytes)
            .open()?;
        let store = SledEngine {
            db: ManuallyDrop::new(db),
        };
        store.check_format()?;
        Ok(store)
    }

    /// A store in a temporary directory, deleted on drop (for tests and benchmarks).
    pub fn temporary() -> Result<SledEngine> {
        let db = sled::Config::new().temporary(true).open()?;
        let store = SledEngine {
            db: ManuallyDrop::new(db),
        };
        store.check_format()?;
        Ok(store)
    }

    fn check_format(&self) -> Result<()> {
        let key = keys::format_version();
        match self.db.get(&key)? {
            None => {
                self.db.insert(key, &FORMAT_VERSION.to_be_bytes())?;
                let _turn = turn();
                self.db.flush()?;
                Ok(())
            }
            Some(v) if v.as_ref() == FORMAT_VERSION.to_be_bytes() => Ok(()),
            Some(v) if v.as_ref() == 1u32.to_be_bytes() => {
                // Nothing to rewrite: format-1 watermarks are read as they are.
                tracing::info!("upgrading the store from format 1 to {FORMAT_VERSION}");
                self.db.insert(key, &FORMAT_VERSION.to_be_bytes())?;
                let _turn = turn();
                self.db.flush()?;
                Ok(())
            }
            Some(v) => Err(Error::Storage(format!(
                "store format {:?} is not the supported format {FORMAT_VERSION}",
                v.as_ref()
            ))),
        }
    }

    fn get<T: DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>> {
        self.db.get(key)?.map(|v| decode(&v)).transpose()
    }

    /// The key writes of one mutation. A compaction reads the document's deleted-seq index
    /// entries (through `written`, what this commit wrote before it) and merges into them.
    fn key_ops(
        &self,
        m: &Mutation,
        written: &std::collections::HashMap<Vec<u8>, Option<Vec<u8>>>,
        ops: &mut Vec<(Vec<u8>, Option<Vec<u8>>)>,
    ) -> Result<()> {
        match m {
            Mutation::Append {
                collection: c,
                seq,
                delta,
                stats,
                op,
            } => {
                let seq = *seq;
                ops.push((keys::delta(c, seq), Some(encode(delta)?)));
                ops.push((
                    keys::doc_delta(c, &delta.document_id, seq),
                    Some((delta.bytes.len() as u64).to_be_bytes().to_vec()),
                ));
                ops.push((keys::doc_stats(c, &delta.document_id), Some(encode(stats)?)));
                ops.push((keys::collection(c), Some(encode(&seq)?)));
                if let Some((op_id, hash)) = op {
                    let record = OpRecord {
                        seq,
                        hash: *hash,
                        created_at: delta.created_at,
                    };
                    let doc = &delta.document_id;
                    ops.push((keys::op_record(c, doc, op_id), Some(encode(&record)?)));
                    ops.push((
                        keys::op_expiry(c, delta.created_at, doc, op_id),
                        Some(Vec::new()),
                    ));
                }
            }
            Mutation::Compaction {
                collection: c,
                document_id,
                snapshot,
                deleted,
                stats,
                bucket_seqs,
                guard: _,
            } => {
                ops.push((keys::snapshot(c, document_id), Some(encode(snapshot)?)));
                for &seq in deleted {
                    ops.push((keys::delta(c, seq), None));
                    ops.push((keys::doc_delta(c, document_id, seq), None));
                }
                ops.push((keys::doc_stats(c, document_id), Some(encode(stats)?)));
                let bucket = (*bucket_seqs).clamp(1, paging::MAX_BUCKET_SEQS);
                let buckets = paging::bucket_runs(deleted, bucket);
                if !buckets.is_empty() {
                    ops.push((keys::deleted_span(bucket), Some(Vec::new())));
                }
                for (start, runs) in buckets {
                    let key = keys::deleted_seqs(c, start, document_id);
                    let old = match written.get(&key) {
                        Some(v) => v.clone(),
                        None => self.db.get(&key)?.map(|v| v.to_vec()),
                    };
                    let runs = match old {
                        Some(old) => {
                            let old = paging::decode_runs(start, &old)
                                .ok_or_else(|| corrupt("deleted seqs entry"))?;
                            paging::merge_runs(&old, &runs)
                        }
                        None => runs,
                    };
                    ops.push((key, Some(paging::encode_runs(start, &runs))));
                }
            }
            Mutation::PutPeer {
                collection: c,
                peer,
                record,
            } => ops.push((keys::peer(c, peer), Some(encode(record)?))),
            Mutation::ForgetPeer {
                collection: c,
                peer,
                unseen_since: _,
            } => ops.push((keys::peer(c, peer), None)),
            Mutation::ForgetOps {
                collection: c,
                ops: forget,
            } => {
                for (at, doc, op) in forget {
                    ops.push((keys::op_record(c, doc, op), None));
                    ops.push((keys::op_expiry(c, *at, doc, op), None));
                }
            }
            Mutation::Quarantine {
                collection: c,
                document_id,
                seq,
                reason,
            } => ops.push((
                keys::quarantine(c, document_id, *seq),
                Some(reason.as_bytes().to_vec()),
            )),
        }
        Ok(())
    }
}

impl Engine for SledEngine {
    /// Applies the batches as one sled batch, in order (a later write of the same key wins,
    /// as if applied one by one).
    fn commit(&self, batches: &[Batch]) -> Result<Vec<Vec<Outcome>>> {
        let mut written = std::collections::HashMap::new();
        let mut batch = sled::Batch::default();
        let mut ops = Vec::new();
        for m in batches.iter().flat_map(|b| &b.mutations) {
            ops.clear();
            self.key_ops(m, &written, &mut ops)?;
            for (k, v) in ops.drain(..) {
                match &v {
                    Some(v) => batch.insert(k.as_slice(), v.as_slice()),
                    None => batch.remove(k.as_slice()),
                }
                if k.first() == Some(&(Tag::DeletedSeqs as u8)) {
                    written.insert(k, v);
                }
            }
        }
        turn_while(|| self.db.apply_batch(batch))?;
        Ok(batches
            .iter()
            .map(|b| b.mutations.iter().map(outcome_of).collect())
            .collect())
    }

    fn flush(&self) -> Result<()> {
        turn_while(|| self.db.flush())?;
        Ok(())
    }

    fn collection_exists(&self, c: &str) -> Result<bool> {
        Ok(self.db.contains_key(keys::collection(c))?)
    }

    fn load_collection(&self, c: &str, largest: usize) -> Result<LoadedCollection> {
        let persisted: u64 = self.get(&keys::collection(c))?.unwrap_or(0);
        let newest = match self.db.scan_prefix(keys::prefix(Tag::Delta, c)).next_back() {
            Some(entry) => keys::trailing_seq(&entry?.0).unwrap_or(0),
            None => 0,
        };
        let mut loaded = LoadedCollection {
            high_water: persisted.max(newest),
            ..Default::default()
        };
        // One pass over the counters, holding only the largest documents.
        let mut top: std::collections::BTreeSet<(u64, String, DocStats)> = Default::default();
        let stats_prefix = keys::prefix(Tag::DocStats, c);
        for entry in self.db.scan_prefix(&stats_prefix) {
            let (k, v) = entry?;
            let (doc, _) =
                keys::read_str(&k, stats_prefix.len()).ok_or_else(|| corrupt("doc stats key"))?;
            let stats: DocStats = decode(&v)?;
            loaded.documents += 1;
            loaded.retained_bytes += stats.retained_bytes;
            if largest > 0 {
                top.insert((stats.retained_bytes, doc, stats));
                if top.len() > largest {
                    top.pop_first();
                }
            }
        }
        loaded.largest = top.into_iter().map(|(_, d, s)| (d, s)).collect();
        let peer_prefix = keys::prefix(Tag::Peer, c);
        for entry in self.db.scan_prefix(&peer_prefix) {
            let (k, v) = entry?;
            let (peer, _) =
                keys::read_str(&k, peer_prefix.len()).ok_or_else(|| corrupt("peer key"))?;
            loaded.peers.push((peer, decode(&v)?));
        }
        Ok(loaded)
    }

    fn doc_stats(&self, c: &str, doc: &str) -> Result<Option<DocStats>> {
        self.get(&keys::doc_stats(c, doc))
    }

    fn op_record(&self, c: &str, doc: &str, op: &str) -> Result<Option<OpRecord>> {
        self.get(&keys::op_record(c, doc, op))
    }

    fn ops_before(&self, c: &str, before: u64, limit: usize) -> Result<Vec<(u64, String, String)>> {
        let p = keys::prefix(Tag::OpExpiry, c);
        let mut out = Vec::new();
        for entry in self
            .db
            .range(p.clone()..keys::op_expiry(c, before, "", ""))
            .take(limit)
        {
            let (k, _) = entry?;
            let at = keys::read_u64(&k, p.len()).ok_or_else(|| corrupt("op expiry key"))?;
            let (doc, next) =
                keys::read_str(&k, p.len() + 8).ok_or_else(|| corrupt("op expiry key"))?;
            let (op, _) = keys::read_str(&k, next).ok_or_else(|| corrupt("op expiry key"))?;
            out.push((at, doc, op));
        }
        Ok(out)
    }

    fn quarantined(&self, c: &str, doc: &str) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix(keys::quarantine_prefix(c, doc)) {
            let (k, _) = entry?;
            out.push(keys::trailing_seq(&k).ok_or_else(|| corrupt("quarantine key"))?);
        }
        Ok(out)
    }

    fn deltas_after(
        &self,
        c: &str,
        after: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(u64, DeltaRecord)>, bool)> {
        let mut out = Vec::new();
        if after >= upto {
            return Ok((out, false));
        }
        let mut bytes = 0usize;
        for entry in self
            .db
            .range(keys::delta(c, after + 1)..=keys::delta(c, upto))
        {
            let (k, v) = entry?;
            if out.len() == limit || (!out.is_empty() && bytes.saturating_add(v.len()) > max_bytes)
            {
                return Ok((out, true));
            }
            bytes = bytes.saturating_add(v.len());
            let seq = keys::trailing_seq(&k).ok_or_else(|| corrupt("delta key"))?;
            out.push((seq, decode(&v)?));
        }
        Ok((out, false))
    }

    fn doc_delta_seqs(&self, c: &str, doc: &str, upto: u64) -> Result<Vec<u64>> {
        let mut out = Vec::new();
        for entry in self.db.scan_prefix(keys::doc_delta_prefix(c, doc)) {
            let (k, _) = entry?;
            let seq = keys::trailing_seq(&k).ok_or_else(|| corrupt("doc delta key"))?;
            if seq > upto {
                break;
            }
            out.push(seq);
        }
        Ok(out)
    }

    fn doc_deltas(&self, c: &str, doc: &str, upto: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let mut out = Vec::new();
        for seq in self.doc_delta_seqs(c, doc, upto)? {
            if let Some(d) = self.get::<DeltaRecord>(&keys::delta(c, seq))? {
                out.push((seq, d.bytes));
            }
        }
        Ok(out)
    }

    fn snapshot(&self, c: &str, doc: &str) -> Result<Option<SnapshotRecord>> {
        self.get(&keys::snapshot(c, doc))
    }

    fn snapshots(&self, c: &str) -> Result<Vec<(String, SnapshotRecord)>> {
        let p = keys::prefix(Tag::Snapshot, c);
        let mut out = Vec::new();
        for entry in self.db.scan_prefix(&p) {
            let (k, v) = entry?;
            let (doc, _) = keys::read_str(&k, p.len()).ok_or_else(|| corrupt("snapshot key"))?;
            out.push((doc, decode(&v)?));
        }
        Ok(out)
    }

    fn compacted_after(&self, c: &str, after: u64, limit: usize) -> Result<Vec<(u64, String)>> {
        let p = keys::prefix(Tag::Watermark, c);
        let start = keys::watermark(c, after.saturating_add(1), "");
        let mut out = Vec::new();
        if after == u64::MAX {
            return Ok(out);
        }
        for entry in self.db.range(start..).take(limit) {
            let (k, _) = entry?;
            if !k.starts_with(&p) {
                break;
            }
            let seq = keys::read_u64(&k, p.len()).ok_or_else(|| corrupt("watermark key"))?;
            let (doc, _) =
                keys::read_str(&k, p.len() + 8).ok_or_else(|| corrupt("watermark key"))?;
            out.push((seq, doc));
        }
        Ok(out)
    }

    fn deleted_span(&self) -> Result<u64> {
        match self.db.scan_prefix(keys::deleted_span_prefix()).next_back() {
            Some(entry) => {
                let (k, _) = entry?;
                keys::read_u64(&k, keys::deleted_span_prefix().len())
                    .ok_or_else(|| corrupt("deleted span key"))
            }
            None => Ok(0),
        }
    }

    fn deleted_entries(&self, c: &str, from: u64) -> DeletedEntries {
        let prefix = keys::prefix(Tag::DeletedSeqs, c);
        let mut start = prefix.clone();
        start.extend_from_slice(&from.to_be_bytes());
        Box::new(SledDeletedEntries {
            iter: self.db.range(start..),
            prefix,
        })
    }

    fn size_on_disk(&self) -> Result<u64> {
        Ok(self.db.size_on_disk()?)
    }
}

/// What a committed mutation did: exactly what it said (one process owns the store).
fn outcome_of(m: &Mutation) -> Outcome {
    match m {
        Mutation::Append { seq, .. } => Outcome::Stored(*seq),
        Mutation::Compaction { deleted, .. } => Outcome::Compacted {
            deleted: deleted.clone(),
        },
        _ => Outcome::Applied,
    }
}

fn corrupt(what: &str) -> Error {
    Error::Storage(format!("corrupt {what}"))
}

/// Iterator over the deleted-seq index of one collection (see [`Engine::deleted_entries`]).
struct SledDeletedEntries {
    iter: sled::Iter,
    prefix: Vec<u8>,
}

impl Iterator for SledDeletedEntries {
    type Item = Result<DeletedEntry>;

    fn next(&mut self) -> Option<Result<DeletedEntry>> {
        let (k, v) = match self.iter.next()? {
            Ok(kv) => kv,
            Err(e) => return Some(Err(e.into())),
        };
        if !k.starts_with(&self.prefix) {
            return None;
        }
        let entry = (|| {
            let start = keys::read_u64(&k, self.prefix.len())?;
            let (doc, _) = keys::read_str(&k, self.prefix.len() + 8)?;
            let runs = paging::decode_runs(start, &v)?;
            Some(DeletedEntry { start, doc, runs })
        })();
        Some(entry.ok_or_else(|| corrupt("deleted seqs entry")))
    }
}

#[cfg(test)]
mod tests {
    use super::super::{CompactionWrite, Store};
    use super::*;
    use crate::types::OperationType;

    fn delta(doc: &str, bytes: &[u8]) -> DeltaRecord {
        DeltaRecord {
            document_id: doc.into(),
            operation: OperationType::Update,
            bytes: bytes.to_vec(),
            created_at: 1,
        }
    }

    #[test]
    fn append_then_read_back_in_order() {
        let store = Store::temporary().unwrap();
        for seq in 1..=5 {
            let doc = if seq % 2 == 0 { "even" } else { "odd" };
            store
                .append(
                    "c",
                    seq,
                    &delta(doc, &[seq as u8]),
                    &DocStats::default(),
                    None,
                )
                .unwrap();
        }
        let (page, more) = store.deltas_after("c", 1, 4, 10, usize::MAX).unwrap();
        assert_eq!(
            page.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![2, 3, 4]
        );
        assert!(!more);
        let (page, more) = store.deltas_after("c", 0, 5, 2, usize::MAX).unwrap();
        assert_eq!((page.len(), more), (2, true));
        // A byte budget smaller than one delta still yields that one delta.
        let (page, more) = store.deltas_after("c", 0, 5, 10, 1).unwrap();
        assert_eq!((page.len(), more), (1, true));
        assert_eq!(store.doc_delta_seqs("c", "odd", 10).unwrap(), vec![1, 3, 5]);
        assert_eq!(store.load_collection("c", 0).unwrap().high_water, 5);
        assert!(store
            .deltas_after("other", 0, 10, 10, usize::MAX)
            .unwrap()
            .0
            .is_empty());
    }

    #[test]
    fn compaction_write_records_deleted_seqs_by_bucket() {
        let store = Store::temporary().unwrap();
        for seq in 1..=20 {
            let doc = if seq % 3 == 0 { "e" } else { "d" };
            store
                .append("c", seq, &delta(doc, &[1]), &DocStats::default(), None)
                .unwrap();
        }
        assert_eq!(store.deleted_span().unwrap(), 0);
        let snap = SnapshotRecord {
            bytes: vec![0, 0],
            state_vector: vec![0],
            snapshot_seq: 11,
            created_at: 0,
        };
        let w = CompactionWrite {
            document_id: "d",
            snapshot: &snap,
            deleted: &[1, 2, 4, 5, 7, 8, 10, 11],
            stats: DocStats::default(),
            bucket_seqs: 8,
            guard: None,
        };
        store.apply_compaction("c", &w).unwrap();
        let entries = |from| {
            store
                .deleted_entries("c", from)
                .map(|e| e.unwrap())
                .map(|e| (e.start, e.doc, e.runs))
                .collect::<Vec<_>>()
        };
        assert_eq!(
            entries(0),
            vec![
                (0, "d".to_string(), vec![(1, 2), (4, 5), (7, 7)]),
                (8, "d".to_string(), vec![(8, 8), (10, 11)]),
            ]
        );
        assert_eq!(entries(1).len(), 1);
        assert_eq!(store.deleted_span().unwrap(), 8);
        // A later compaction of the same document merges into its entry of the bucket.
        let w = CompactionWrite {
            deleted: &[13, 14],
            ..w
        };
        store.apply_compaction("c", &w).unwrap();
        assert_eq!(
            entries(1),
            vec![(8, "d".to_string(), vec![(8, 8), (10, 11), (13, 14)])]
        );
        // A bigger bucket is recorded.
        let w = CompactionWrite {
            deleted: &[3, 6],
            document_id: "e",
            bucket_seqs: 32,
            ..w
        };
        store.apply_compaction("c", &w).unwrap();
        assert_eq!(store.deleted_span().unwrap(), 32);
        assert_eq!(entries(0)[1], (0, "e".to_string(), vec![(3, 3), (6, 6)]));
        assert!(store.deleted_entries("other", 0).next().is_none());
        // No watermark records any more.
        assert!(store.compacted_after("c", 0, 10).unwrap().is_empty());
        // High water survives deleting the newest delta.
        let w = CompactionWrite {
            deleted: &[16, 17, 19, 20],
            document_id: "d",
            ..w
        };
        store.apply_compaction("c", &w).unwrap();
        assert_eq!(store.load_collection("c", 0).unwrap().high_water, 20);
    }

    /// Opens the store in `dir`, retrying while the last one's background thread still holds
    /// sled's lock (released a moment after the drop); any other error is answered.
    fn reopen(dir: &std::path::Path) -> Result<SledEngine> {
        for _ in 0..200 {
            match SledEngine::open(dir, 1 << 20) {
                Err(Error::Storage(e)) if !e.contains("format") => {
                    std::thread::sleep(std::time::Duration::from_millis(25))
                }
                other => return other,
            }
        }
        SledEngine::open(dir, 1 << 20)
    }

    #[test]
    fn a_format_1_store_opens_and_keeps_its_watermarks() {
        let dir = tempfile::tempdir().unwrap();
        {
            let store = SledEngine::open(dir.path(), 1 << 20).unwrap();
            store
                .db
                .insert(keys::format_version(), &1u32.to_be_bytes())
                .unwrap();
            store
                .db
                .insert(keys::watermark("c", 7, "d"), Vec::new())
                .unwrap();
            store.flush().unwrap();
        }
        let store = reopen(dir.path()).unwrap();
        assert_eq!(
            store
                .db
                .get(keys::format_version())
                .unwrap()
                .unwrap()
                .as_ref(),
            FORMAT_VERSION.to_be_bytes()
        );
        assert_eq!(
            store.compacted_after("c", 6, 10).unwrap(),
            vec![(7, "d".to_string())]
        );
        drop(store);
        let store = reopen(dir.path()).unwrap();
        store
            .db
            .insert(keys::format_version(), &9u32.to_be_bytes())
            .unwrap();
        store.flush().unwrap();
        drop(store);
        let refused = reopen(dir.path()).err().map(|e| e.to_string());
        assert!(
            refused.as_deref().is_some_and(|e| e.contains("format")),
            "{refused:?}"
        );
    }
}

#[cfg(test)]
mod turns {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use crate::store::{Batch, DeltaRecord, DocStats, Store};
    use crate::types::OperationType;

    fn delta() -> DeltaRecord {
        DeltaRecord {
            document_id: "d".into(),
            operation: OperationType::Update,
            bytes: vec![7u8; 8192],
            created_at: 0,
        }
    }

    /// Several sled databases in one process: one commits and flushes without pause while
    /// others are opened, written and dropped (each drop flushes), in turns (see [`super::TURNS`]);
    /// a watchdog fails the test instead of hanging. The deadlock the turns prevent was seen
    /// once in the load tool (a 290 MB store dropped while another committed; all threads
    /// parked in sled's lock, stacks in the closing note); this schedule did not reproduce it
    /// without the turns in three runs, so it checks that the turns themselves never block
    /// (a drop or flush waiting on a turn its own thread holds) under the same churn.
    #[test]
    fn databases_dropped_while_another_commits_do_not_deadlock() {
        let stop = Arc::new(AtomicBool::new(false));
        let commits = Arc::new(AtomicU64::new(0));
        let busy = {
            let (stop, commits) = (stop.clone(), commits.clone());
            std::thread::spawn(move || {
                let store = Store::temporary().unwrap();
                let mut seq = 0;
                while !stop.load(Ordering::Relaxed) {
                    seq += 1;
                    let batch = Batch::append("c", seq, &delta(), &DocStats::default(), None);
                    store.commit(&[batch]).unwrap();
                    store.flush().unwrap();
                    commits.fetch_add(1, Ordering::Relaxed);
                }
            })
        };
        let churn = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut dropped = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let store = Store::temporary().unwrap();
                    for seq in 1..=400 {
                        let batch = Batch::append("c", seq, &delta(), &DocStats::default(), None);
                        store.commit(&[batch]).unwrap();
                    }
                    drop(store);
                    dropped += 1;
                }
                dropped
            })
        };
        let started = Instant::now();
        let mut last = (0, Instant::now());
        while started.elapsed() < Duration::from_secs(3) {
            std::thread::sleep(Duration::from_millis(50));
            let now = commits.load(Ordering::Relaxed);
            if now != last.0 {
                last = (now, Instant::now());
            }
            assert!(
                last.1.elapsed() < Duration::from_secs(5),
                "no commit for 5 s: deadlocked after {now} commits"
            );
        }
        stop.store(true, Ordering::Relaxed);
        let until = Instant::now() + Duration::from_secs(10);
        while !(busy.is_finished() && churn.is_finished()) {
            assert!(
                Instant::now() < until,
                "a thread never finished: deadlocked"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        busy.join().unwrap();
        assert!(churn.join().unwrap() > 0);
    }
}
