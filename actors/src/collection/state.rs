//! The plain state of one collection: its seq counters, its documents' counters and the op
//! ids of writes numbered but not yet committed.
//!
//! # Why apart from the actor
//! These are the rules invariants 1 and 2 rest on (a seq is given once, in order, and readers
//! see only what is committed). Here they are plain methods the collection actor feeds with
//! what its messages, the store and the commits answer, so they are tested with tables, with
//! no actor, timer or commit thread in the way.
//!
//! # Invariants
//! - `durable ≤ assigned`; both only grow.
//! - An op id is pending from the moment its write is numbered until that write's commit
//!   answers (either way): while pending, the store cannot answer for it, so this does.

use std::collections::{BTreeMap, HashMap};

use tokio::sync::watch;

use crate::doc_counters::DocCounters;
use crate::error::Result;
use crate::store::{DocStats, Store};

/// A write numbered by [`CollectionState::number`]: its seq and its document's new counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Numbered {
    pub seq: u64,
    pub stats: DocStats,
}

/// See the module docs.
pub(crate) struct CollectionState {
    assigned: u64,
    durable: u64,
    /// Tells waiting readers the durable seq.
    durable_tx: watch::Sender<u64>,
    pub(super) docs: DocCounters,
    /// (document, op id) → (seq, bytes hash) of numbered writes not yet committed.
    pending_ops: HashMap<(String, String), (u64, u64)>,
    /// The same op ids by seq, so a commit forgets its own in one range.
    pending_by_seq: BTreeMap<u64, (String, String)>,
}

impl CollectionState {
    /// The state of a collection whose store holds everything up to `high_water`.
    pub fn new(high_water: u64, mut docs: DocCounters) -> Self {
        docs.mark_durable(high_water);
        CollectionState {
            assigned: high_water,
            durable: high_water,
            durable_tx: watch::channel(high_water).0,
            docs,
            pending_ops: HashMap::new(),
            pending_by_seq: BTreeMap::new(),
        }
    }

    /// The last seq given to a write.
    pub fn assigned(&self) -> u64 {
        self.assigned
    }

    /// Every seq up to this one is committed: the head readers may see.
    pub fn durable(&self) -> u64 {
        self.durable
    }

    /// A receiver of every new durable seq (a waiting reader).
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.durable_tx.subscribe()
    }

    /// Readers waiting for the durable seq to move.
    pub fn waiters(&self) -> usize {
        self.durable_tx.receiver_count()
    }

    /// No numbered write waits for its commit.
    pub fn settled(&self) -> bool {
        self.assigned == self.durable
    }

    /// Everything up to `seq` is committed (here, or by another node on a shared engine).
    /// Answers whether the durable seq moved.
    pub fn mark_durable(&mut self, seq: u64) -> bool {
        if seq <= self.durable {
            return false;
        }
        self.durable = seq;
        self.assigned = self.assigned.max(seq);
        self.docs.mark_durable(seq);
        self.durable_tx.send_replace(seq);
        true
    }

    /// The seq and bytes hash of the numbered, uncommitted write with this op id.
    pub fn pending_op(&self, doc: &str, op: &str) -> Option<(u64, u64)> {
        self.pending_ops
            .get(&(doc.to_string(), op.to_string()))
            .copied()
    }

    /// Gives an accepted write of `doc` (`len` bytes, op id and bytes hash) the next seq and
    /// counts it in the document's counters (read from `store` on a miss). Nothing changes
    /// when that read fails.
    ///
    /// # Errors
    /// What the store answers for the counters.
    pub fn number(
        &mut self,
        store: &Store,
        c: &str,
        doc: &str,
        len: u64,
        op: Option<(&str, u64)>,
    ) -> Result<Numbered> {
        let seq = self.assigned + 1;
        let mut stats = self.docs.get(store, c, doc)?;
        stats.retained_bytes += len;
        stats.retained_count += 1;
        // Cannot fail now: the counters were just read into memory.
        self.docs.set(store, c, doc, stats, seq)?;
        self.assigned = seq;
        if let Some((op, hash)) = op {
            let key = (doc.to_string(), op.to_string());
            self.pending_by_seq.insert(seq, key.clone());
            self.pending_ops.insert(key, (seq, hash));
        }
        Ok(Numbered { seq, stats })
    }

    /// The commit of the writes numbered `first..=last` answered: their op ids are the
    /// store's to answer from now on (or, if it failed, no one's: a failed commit on an
    /// engine this process numbers is sticky). On success they are durable.
    pub fn committed(&mut self, first: u64, last: u64, ok: bool) {
        let later = self.pending_by_seq.split_off(&(last + 1));
        let done = std::mem::replace(&mut self.pending_by_seq, later);
        for (seq, key) in done.range(first..) {
            if self.pending_ops.get(key).is_some_and(|(s, _)| s == seq) {
                self.pending_ops.remove(key);
            }
        }
        // Entries below `first` were not this commit's: keep them.
        for (seq, key) in done.range(..first) {
            self.pending_by_seq.insert(*seq, key.clone());
        }
        if ok {
            self.mark_durable(last);
        }
    }

    /// Op ids of numbered writes not yet committed.
    #[cfg(test)]
    fn pending(&self) -> usize {
        debug_assert_eq!(self.pending_ops.len(), self.pending_by_seq.len());
        self.pending_ops.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const C: &str = "c";

    fn state(high_water: u64) -> (Store, CollectionState) {
        let store = Store::temporary().unwrap();
        let docs = DocCounters::new(0, 0, Vec::new(), 2, 8);
        (store, CollectionState::new(high_water, docs))
    }

    /// One step of a table, and what the state holds after it.
    enum Step {
        /// Number a write of (document, length, op id).
        Number(&'static str, u64, Option<&'static str>),
        /// A commit of first..=last answered (ok or failed).
        Commit(u64, u64, bool),
        /// Another node's head (or a flush) reached this seq.
        Durable(u64),
    }

    /// (steps, then (assigned, durable, pending op ids, settled)).
    fn run(high_water: u64, steps: &[Step]) -> (CollectionState, Vec<u64>) {
        let (store, mut s) = state(high_water);
        let mut seqs = Vec::new();
        for step in steps {
            match step {
                Step::Number(doc, len, op) => {
                    let n = s.number(&store, C, doc, *len, op.map(|o| (o, 7))).unwrap();
                    seqs.push(n.seq);
                }
                Step::Commit(first, last, ok) => s.committed(*first, *last, *ok),
                Step::Durable(seq) => {
                    s.mark_durable(*seq);
                }
            }
        }
        (s, seqs)
    }

    #[test]
    fn seqs_durability_and_pending_op_ids_follow_the_table() {
        use Step::*;
        #[allow(clippy::type_complexity)]
        let table: Vec<(u64, Vec<Step>, Vec<u64>, (u64, u64, usize, bool))> = vec![
            // Fresh collection: seqs 1, 2, 3 in order; nothing durable until committed.
            (
                0,
                vec![
                    Number("a", 5, Some("x")),
                    Number("b", 5, None),
                    Number("a", 1, Some("y")),
                ],
                vec![1, 2, 3],
                (3, 0, 2, false),
            ),
            // One commit of all three: durable, op ids the store's.
            (
                0,
                vec![
                    Number("a", 5, Some("x")),
                    Number("b", 5, None),
                    Number("a", 1, Some("y")),
                    Commit(1, 3, true),
                ],
                vec![1, 2, 3],
                (3, 3, 0, true),
            ),
            // Two rounds: the first commit forgets only its own op ids.
            (
                10,
                vec![
                    Number("a", 1, Some("x")),
                    Number("a", 1, Some("y")),
                    Commit(11, 11, true),
                ],
                vec![11, 12],
                (12, 11, 1, false),
            ),
            // A failed commit forgets its op ids but moves nothing durable.
            (
                4,
                vec![Number("a", 1, Some("x")), Commit(5, 5, false)],
                vec![5],
                (5, 4, 0, false),
            ),
            // Another node's head past everything: numbering goes on after it.
            (
                2,
                vec![Durable(9), Number("a", 1, None)],
                vec![10],
                (10, 9, 0, false),
            ),
            // A durable seq going back is ignored.
            (
                0,
                vec![
                    Number("a", 1, None),
                    Number("a", 1, None),
                    Commit(1, 2, true),
                    Durable(1),
                ],
                vec![1, 2],
                (2, 2, 0, true),
            ),
        ];
        for (i, (high_water, steps, want_seqs, (assigned, durable, pending, settled))) in
            table.into_iter().enumerate()
        {
            let (s, seqs) = run(high_water, &steps);
            assert_eq!(seqs, want_seqs, "row {i}: seqs");
            assert_eq!(s.assigned(), assigned, "row {i}: assigned");
            assert_eq!(s.durable(), durable, "row {i}: durable");
            assert_eq!(s.pending(), pending, "row {i}: pending op ids");
            assert_eq!(s.settled(), settled, "row {i}: settled");
        }
    }

    #[test]
    fn a_pending_op_id_answers_its_seq_and_hash_until_committed() {
        let (store, mut s) = state(0);
        s.number(&store, C, "a", 3, Some(("op", 42))).unwrap();
        s.number(&store, C, "b", 3, Some(("op", 43))).unwrap();
        assert_eq!(s.pending_op("a", "op"), Some((1, 42)));
        assert_eq!(
            s.pending_op("b", "op"),
            Some((2, 43)),
            "op ids are per document"
        );
        assert_eq!(s.pending_op("a", "other"), None);
        s.committed(1, 1, true);
        assert_eq!(s.pending_op("a", "op"), None);
        assert_eq!(s.pending_op("b", "op"), Some((2, 43)));
    }

    #[test]
    fn counters_count_each_numbered_write() {
        let (store, mut s) = state(0);
        let first = s.number(&store, C, "a", 10, None).unwrap();
        let second = s.number(&store, C, "a", 5, None).unwrap();
        assert_eq!(
            (first.stats.retained_bytes, first.stats.retained_count),
            (10, 1)
        );
        assert_eq!(
            (second.stats.retained_bytes, second.stats.retained_count),
            (15, 2)
        );
        s.number(&store, C, "b", 1, None).unwrap();
        assert_eq!((s.docs.documents(), s.docs.retained_bytes()), (2, 16));
    }

    #[test]
    fn readers_hear_each_durable_seq() {
        let (store, mut s) = state(0);
        let mut reader = s.subscribe();
        assert_eq!(s.waiters(), 1);
        s.number(&store, C, "a", 1, None).unwrap();
        assert!(!reader.has_changed().unwrap(), "numbered is not durable");
        s.committed(1, 1, true);
        assert!(reader.has_changed().unwrap());
        assert_eq!(*reader.borrow_and_update(), 1);
        assert!(!s.mark_durable(1), "no move, no wake");
        assert!(!reader.has_changed().unwrap());
    }
}
