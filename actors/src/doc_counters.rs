//! The per-document counters ([`DocStats`]) of one collection, bounded in memory.
//!
//! # Why
//! A collection may hold millions of documents; keeping every document's counters in the
//! actor (as it once did) grows memory with documents ever written. Here only the recently
//! used ones stay (least recently used out, past `cap`); the rest are read back from the store
//! when a write or compaction needs them. What needs every document — the totals in stats and
//! the largest documents for the compaction hint — is kept as running sums and a bounded
//! top list.
//!
//! # Invariants
//! - An entry whose latest counters are not yet committed is never evicted (the store would
//!   answer the older ones): the caller says which entries are still in flight.
//! - `documents` and `retained_bytes` equal the sums over every document in the store, given
//!   they started so ([`DocCounters::new`]) and every change goes through [`DocCounters::set`].

use std::collections::{hash_map, BTreeMap, BTreeSet, HashMap};

use crate::error::Result;
use crate::store::{DocStats, Store};

struct Entry {
    stats: DocStats,
    /// Whether the document has counters in the store (or a write on the way there).
    exists: bool,
    tick: u64,
    /// Seq of the last append that changed it; `u64::MAX` while a compaction's counters wait
    /// for their commit.
    dirty: u64,
}

/// See the module docs.
pub struct DocCounters {
    entries: HashMap<String, Entry>,
    order: BTreeMap<u64, String>,
    tick: u64,
    cap: usize,
    /// (retained bytes, document) of the documents with the most retained bytes.
    largest: BTreeSet<(u64, String)>,
    largest_cap: usize,
    documents: u64,
    retained_bytes: u64,
    /// Appends up to this seq are committed.
    durable: u64,
}

/// Dirty mark for counters a compaction planned and has not committed yet.
pub const IN_FLIGHT: u64 = u64::MAX;

impl DocCounters {
    /// Counters starting from the store's totals and its largest documents.
    pub fn new(
        documents: u64,
        retained_bytes: u64,
        largest: Vec<(String, DocStats)>,
        cap: usize,
        largest_cap: usize,
    ) -> Self {
        let mut counters = DocCounters {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            cap: cap.max(1),
            largest: BTreeSet::new(),
            largest_cap: largest_cap.max(1),
            documents,
            retained_bytes,
            durable: 0,
        };
        for (doc, stats) in largest {
            counters.rank(&doc, 0, stats.retained_bytes);
        }
        counters
    }

    pub fn documents(&self) -> u64 {
        self.documents
    }

    pub fn retained_bytes(&self) -> u64 {
        self.retained_bytes
    }

    /// Counters held in memory now.
    pub fn cached(&self) -> usize {
        self.entries.len()
    }

    /// The document with the most retained bytes that this knows of.
    pub fn largest(&self) -> Option<(u64, &str)> {
        self.largest.last().map(|(b, d)| (*b, d.as_str()))
    }

    /// `doc`'s counters (default for a document never written), reading the store if they
    /// are not in memory.
    ///
    /// # Errors
    /// What the store answers.
    pub fn get(&mut self, store: &Store, c: &str, doc: &str) -> Result<DocStats> {
        let stats = self.entry(store, c, doc)?.stats;
        self.evict();
        Ok(stats)
    }

    /// Everything up to `seq` is committed: counters last changed by those appends may go.
    pub fn mark_durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
    }

    /// `doc`'s entry, most recently used now; read from the store if not in memory.
    fn entry(&mut self, store: &Store, c: &str, doc: &str) -> Result<&mut Entry> {
        self.tick += 1;
        let tick = self.tick;
        let e = match self.entries.entry(doc.to_string()) {
            hash_map::Entry::Occupied(o) => {
                self.order.remove(&o.get().tick);
                o.into_mut()
            }
            hash_map::Entry::Vacant(v) => {
                let stored = store.doc_stats(c, doc)?;
                v.insert(Entry {
                    stats: stored.unwrap_or_default(),
                    exists: stored.is_some(),
                    tick,
                    dirty: 0,
                })
            }
        };
        e.tick = tick;
        self.order.insert(tick, doc.to_string());
        Ok(e)
    }

    /// Records `doc`'s new counters, changed by a write marked `dirty` (an append's seq, or
    /// [`IN_FLIGHT`] for a compaction), then evicts what is past the cap and committed.
    ///
    /// # Errors
    /// What the store answers when `doc`'s old counters must be read.
    pub fn set(
        &mut self,
        store: &Store,
        c: &str,
        doc: &str,
        new: DocStats,
        dirty: u64,
    ) -> Result<()> {
        let e = self.entry(store, c, doc)?;
        let (old, existed) = (e.stats, e.exists);
        e.stats = new;
        e.exists = true;
        e.dirty = dirty;
        if !existed {
            self.documents += 1;
        }
        self.retained_bytes = self
            .retained_bytes
            .saturating_sub(old.retained_bytes)
            .saturating_add(new.retained_bytes);
        self.rank(doc, old.retained_bytes, new.retained_bytes);
        self.evict();
        Ok(())
    }

    /// Adds an append the store already counted (an engine that counts in its commit, see
    /// `Engine::numbers_appends`): to `doc`'s entry if it is in memory (one read later from the
    /// store includes it already), and to the totals.
    pub fn add_counted(&mut self, doc: &str, bytes: u64) {
        self.retained_bytes = self.retained_bytes.saturating_add(bytes);
        let Some(e) = self.entries.get_mut(doc) else {
            return;
        };
        let old = e.stats.retained_bytes;
        e.stats.retained_bytes += bytes;
        e.stats.retained_count += 1;
        let new = e.stats.retained_bytes;
        self.rank(doc, old, new);
    }

    /// Marks `doc`'s counters committed (a compaction's commit answered).
    pub fn settle(&mut self, doc: &str) {
        // (An append since the compaction marked it with its own seq: that one decides.)
        if let Some(e) = self.entries.get_mut(doc).filter(|e| e.dirty == IN_FLIGHT) {
            e.dirty = 0;
        }
    }

    fn rank(&mut self, doc: &str, old: u64, new: u64) {
        self.largest.remove(&(old, doc.to_string()));
        if new > 0 {
            self.largest.insert((new, doc.to_string()));
        }
        while self.largest.len() > self.largest_cap {
            self.largest.pop_first();
        }
    }

    /// Evicts the least recently used entries past the cap, skipping (a bounded number of)
    /// entries whose last change is not committed.
    fn evict(&mut self) {
        const MAX_SKIPS: usize = 64;
        let mut skipped = 0;
        let mut cursor = 0;
        while self.entries.len() > self.cap && skipped < MAX_SKIPS {
            let Some((&tick, doc)) = self.order.range(cursor..).next() else {
                break;
            };
            let doc = doc.clone();
            cursor = tick + 1;
            let dirty = self.entries.get(&doc).map_or(0, |e| e.dirty);
            if dirty <= self.durable {
                self.order.remove(&tick);
                self.entries.remove(&doc);
            } else {
                skipped += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Batch, DeltaRecord};
    use crate::types::OperationType;

    fn stats(retained_bytes: u64) -> DocStats {
        DocStats {
            retained_bytes,
            retained_count: 1,
            ..DocStats::default()
        }
    }

    fn store_with(docs: &[(&str, u64)]) -> Store {
        let store = Store::temporary().unwrap();
        for (i, (doc, bytes)) in docs.iter().enumerate() {
            let delta = DeltaRecord {
                document_id: doc.to_string(),
                operation: OperationType::Update,
                bytes: vec![0; *bytes as usize],
                created_at: 1,
            };
            store
                .commit(&[Batch::append(
                    "c",
                    i as u64 + 1,
                    &delta,
                    &stats(*bytes),
                    None,
                )])
                .unwrap();
        }
        store
    }

    #[test]
    fn totals_hold_across_evictions_and_reads_back() {
        let store = store_with(&[("a", 10), ("b", 20), ("c", 30)]);
        let loaded = store.load_collection("c", 2).unwrap();
        assert_eq!((loaded.documents, loaded.retained_bytes), (3, 60));
        assert_eq!(loaded.largest.len(), 2);
        let mut counters = DocCounters::new(3, 60, loaded.largest, 2, 2);
        counters.mark_durable(u64::MAX - 1);
        assert_eq!(counters.largest(), Some((30, "c")));
        // Changes to known documents move the totals; a new document counts once.
        counters.set(&store, "c", "a", stats(15), 4).unwrap();
        counters.set(&store, "c", "d", stats(5), 5).unwrap();
        counters.set(&store, "c", "d", stats(7), 6).unwrap();
        assert_eq!((counters.documents(), counters.retained_bytes()), (4, 72));
        // Never more than the cap in memory, and what was evicted is read back from the store.
        counters.get(&store, "c", "b").unwrap();
        counters.get(&store, "c", "c").unwrap();
        assert!(counters.cached() <= 2, "{}", counters.cached());
        assert_eq!(counters.get(&store, "c", "b").unwrap(), stats(20));
        assert_eq!(
            counters.get(&store, "c", "never").unwrap(),
            DocStats::default()
        );
    }

    #[test]
    fn unsettled_counters_are_not_evicted() {
        let store = store_with(&[]);
        let mut counters = DocCounters::new(0, 0, Vec::new(), 1, 8);
        // Seqs 1..=3 not yet durable: none may go (the store still has older counters).
        for (seq, doc) in [(1, "a"), (2, "b"), (3, "c")] {
            counters.set(&store, "c", doc, stats(seq), seq).unwrap();
        }
        assert_eq!(counters.cached(), 3);
        assert_eq!(counters.get(&store, "c", "a").unwrap(), stats(1));
        counters.mark_durable(3);
        // A compaction's counters stay until settled.
        counters.set(&store, "c", "a", stats(0), IN_FLIGHT).unwrap();
        assert_eq!(counters.get(&store, "c", "a").unwrap(), stats(0));
        assert_eq!(counters.documents(), 3);
        counters.settle("a");
        counters.set(&store, "c", "e", stats(9), 4).unwrap();
        assert_eq!(counters.cached(), 1);
        // The largest list forgets documents with nothing retained.
        assert_eq!(counters.largest(), Some((9, "e")));
    }

    #[test]
    fn largest_documents_are_bounded() {
        let store = store_with(&[]);
        let mut counters = DocCounters::new(0, 0, Vec::new(), 100, 3);
        counters.mark_durable(100);
        for i in 1..=10u64 {
            counters
                .set(&store, "c", &format!("d{i}"), stats(i), i)
                .unwrap();
        }
        assert_eq!(counters.largest(), Some((10, "d10")));
        assert_eq!(counters.largest.len(), 3);
    }
}
