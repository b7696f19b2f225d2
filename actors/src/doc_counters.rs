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

use std::collections::{BTreeMap, BTreeSet, HashMap};

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
    /// The retained bytes each document in `largest` is ranked with.
    ranked: HashMap<String, u64>,
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
            ranked: HashMap::new(),
            largest_cap: largest_cap.max(1),
            documents,
            retained_bytes,
            durable: 0,
        };
        for (doc, stats) in largest {
            counters.rank(&doc, stats.retained_bytes);
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
        let stats = self.entry(Some(store), c, doc)?.stats;
        self.evict();
        Ok(stats)
    }

    /// Everything up to `seq` is committed: counters last changed by those appends may go.
    pub fn mark_durable(&mut self, seq: u64) {
        self.durable = self.durable.max(seq);
    }

    /// `doc`'s counters if they are in memory (no store read), most recently used now.
    pub fn peek(&mut self, doc: &str) -> Option<DocStats> {
        self.entries.contains_key(doc).then(|| self.touch(doc))
    }

    /// Takes in `doc`'s counters as the store answered them off this thread (`None`: never
    /// written), unless they are in memory already (those are as new or newer).
    pub fn insert_read(&mut self, doc: &str, stored: Option<DocStats>) -> DocStats {
        let stats = match self.entries.contains_key(doc) {
            true => self.touch(doc),
            false => self.insert(doc, stored),
        };
        self.evict();
        stats
    }

    /// [`Self::set`] with `doc`'s old counters as read off this thread (used only when they
    /// are not in memory): no store read here.
    pub fn set_read(&mut self, doc: &str, stored: Option<DocStats>, new: DocStats, dirty: u64) {
        if !self.entries.contains_key(doc) {
            self.insert(doc, stored);
        }
        // Cannot read the store now: the entry is in memory.
        let _ = self.change(None, "", doc, new, dirty);
    }

    /// Marks `doc`'s entry (present) most recently used; answers its counters.
    fn touch(&mut self, doc: &str) -> DocStats {
        self.tick += 1;
        let tick = self.tick;
        match self.entries.get_mut(doc) {
            Some(e) => {
                self.order.remove(&e.tick);
                e.tick = tick;
                self.order.insert(tick, doc.to_string());
                e.stats
            }
            None => DocStats::default(),
        }
    }

    /// Adds `doc`'s entry (absent) from the store's answer, most recently used.
    fn insert(&mut self, doc: &str, stored: Option<DocStats>) -> DocStats {
        self.tick += 1;
        let stats = stored.unwrap_or_default();
        self.entries.insert(
            doc.to_string(),
            Entry {
                stats,
                exists: stored.is_some(),
                tick: self.tick,
                dirty: 0,
            },
        );
        self.order.insert(self.tick, doc.to_string());
        // The store's answer is better than any estimate `add_counted` ranked it with.
        self.rank(doc, stats.retained_bytes);
        stats
    }

    /// `doc`'s entry, most recently used now; read from `store` if not in memory (with no
    /// store given, an absent entry is a document never written).
    fn entry(&mut self, store: Option<&Store>, c: &str, doc: &str) -> Result<&mut Entry> {
        if self.entries.contains_key(doc) {
            self.touch(doc);
        } else {
            let stored = match store {
                Some(store) => store.doc_stats(c, doc)?,
                None => None,
            };
            self.insert(doc, stored);
        }
        self.entries
            .get_mut(doc)
            .ok_or_else(|| crate::error::Error::Internal("counters entry vanished".into()))
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
        self.change(Some(store), c, doc, new, dirty)
    }

    /// [`Self::set`], reading the old counters from `store` if given and needed.
    fn change(
        &mut self,
        store: Option<&Store>,
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
        self.rank(doc, new.retained_bytes);
        self.evict();
        Ok(())
    }

    /// Adds an append the store already counted (an engine that counts in its commit, see
    /// `Engine::numbers_appends`): to `doc`'s entry if it is in memory (one read later from the
    /// store includes it already), and to the totals.
    ///
    /// A document whose counters are not in memory is still ranked for the compaction hint:
    /// from its ranked bytes if it is among the largest, else from this append alone (a lower
    /// bound, which only makes the hint less eager).
    pub fn add_counted(&mut self, doc: &str, bytes: u64) {
        self.add_retained(doc, 1, bytes);
    }

    /// Adds `count` retained deltas of `bytes` in all to `doc` as [`Self::add_counted`] adds
    /// one: deltas the store holds that the counters in memory do not (a compaction's commit
    /// kept some its plan counted as deleted).
    pub fn add_retained(&mut self, doc: &str, count: u64, bytes: u64) {
        if count == 0 {
            return;
        }
        self.retained_bytes = self.retained_bytes.saturating_add(bytes);
        let new = match self.entries.get_mut(doc) {
            Some(e) => {
                e.stats.retained_bytes += bytes;
                e.stats.retained_count += count;
                e.stats.retained_bytes
            }
            None => self.ranked.get(doc).copied().unwrap_or(0) + bytes,
        };
        self.rank(doc, new);
    }

    /// Marks `doc`'s counters committed (a compaction's commit answered).
    pub fn settle(&mut self, doc: &str) {
        // (An append since the compaction marked it with its own seq: that one decides.)
        if let Some(e) = self.entries.get_mut(doc).filter(|e| e.dirty == IN_FLIGHT) {
            e.dirty = 0;
        }
    }

    /// Ranks `doc` at `new` retained bytes among the largest (kept to `largest_cap`).
    fn rank(&mut self, doc: &str, new: u64) {
        if let Some(old) = self.ranked.remove(doc) {
            self.largest.remove(&(old, doc.to_string()));
        }
        if new > 0 {
            self.largest.insert((new, doc.to_string()));
            self.ranked.insert(doc.to_string(), new);
        }
        while self.largest.len() > self.largest_cap {
            if let Some((_, gone)) = self.largest.pop_first() {
                self.ranked.remove(&gone);
            }
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
    fn appends_counted_by_the_store_rank_documents_not_in_memory() {
        // A shared engine counts appends itself: documents written since load have no entry.
        let mut counters = DocCounters::new(1, 40, vec![("old".into(), stats(40))], 4, 2);
        counters.add_counted("new", 30);
        assert_eq!(counters.largest(), Some((40, "old")));
        counters.add_counted("new", 30);
        assert_eq!(counters.largest(), Some((60, "new")));
        assert_eq!(counters.retained_bytes(), 100);
        // Its counters read later replace the estimate, and a compaction's take over.
        let read = DocStats {
            retained_bytes: 70,
            ..stats(70)
        };
        counters.set_read("new", Some(read), stats(5), IN_FLIGHT);
        assert_eq!(counters.largest(), Some((40, "old")));
        assert_eq!(counters.peek("new"), Some(stats(5)));
        // Out of the top list, a document's estimate starts again from its next append.
        counters.add_counted("third", 50);
        counters.add_counted("fourth", 45);
        assert_eq!(counters.largest.len(), 2);
        assert_eq!(counters.ranked.len(), 2);
        assert_eq!(counters.largest(), Some((50, "third")));
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
