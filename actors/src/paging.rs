//! Bounded stream pages: the index of deleted seqs, and the walk that cuts a page with it.
//!
//! # The problem
//! A page read from cursor `c` may answer a cursor `p > c` only if it carries everything in
//! `(c, p]`: the retained deltas, and for every delta compaction deleted there, the snapshot of
//! that delta's document. Carrying the snapshot of every document compacted past `c` is
//! unbounded (400 compacted documents of 64 KB made one 34 MB page); cutting that list anywhere
//! without knowing *where* each document's deleted deltas were claims cursors past missing data.
//!
//! # The index
//! One entry per (bucket of `Config::page_bucket_seqs` seqs, document) in which compaction
//! deleted deltas: key (collection, the bucket's first seq, document), value the exact deleted
//! seqs of that document in that bucket as runs of consecutive seqs ([`encode_runs`]). Each
//! compaction merges its deleted seqs into the entries of the buckets they fall in, in its own
//! atomic batch (see `Batch::compaction`; one document's compactions run one after
//! another, so the read-merge-write of its entries has no rival). A delta is deleted once, so
//! every deleted seq is in exactly one entry, and the entries say exactly whose snapshot each
//! gap in the log needs. An entry spans one bucket, so the entries that can hold seq `s` start
//! in `(s − span, s]`: a reader finds them with a bounded look-back, never a scan of the
//! collection. A document compacted past several buckets has an entry in each, and its
//! snapshot may go out in several pages (Yjs applies it idempotently). Entries are never
//! removed: a reader starting from cursor 0 may need any of them. Cost: a key and a few bytes
//! per (bucket, document) — one byte for a document's contiguous run — and about two bytes per
//! deleted seq at worst, when documents' writes interleave one by one.
//!
//! Deltas deleted before this index existed (store format 1) are known only by their
//! document's highest deleted seq (the legacy watermark): a seq that no entry records is one of
//! those, and the page carries every document whose legacy watermark is at or above it. Those
//! pages are as large as pages were before; pages of deletions made since are bounded.
//!
//! # The walk
//! [`walk`] goes up the seqs from the cursor. A retained delta is added as is; a deleted seq
//! adds its owner's snapshot (once per page), and a run of the same owner's deleted seqs costs
//! nothing more. Each step adds at most one change, and a step is taken only while the page
//! stays within the byte budget and the delta limit, except the first, so every page makes
//! progress and holds at most the budget plus one change (one snapshot or one delta). The page's cursor
//! is the last seq walked; every seq up to it is covered by a delta or a snapshot in the page.
//!
//! This module is pure: the store and the read order live with the caller
//! (`collection::read_page_at`), behind [`PageSource`].

use std::collections::{BTreeMap, HashMap};

use crate::error::Result;

/// Largest bucket, in seqs, that the index is written with: bounds what a page loads before
/// its first step (the entries of about two buckets).
pub const MAX_BUCKET_SEQS: u64 = 1 << 16;

/// Most index runs a page loads after its first step: bounds the work of a page that walks a
/// long stretch of deleted seqs whose snapshots it already holds.
pub const MAX_RUNS_PER_PAGE: usize = 1 << 16;

/// The deleted seqs of one document within one bucket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeletedEntry {
    /// The bucket's first seq (the key); every run is at or above it.
    pub start: u64,
    pub doc: String,
    /// Inclusive runs `(first, last)` of consecutive deleted seqs: ascending, disjoint, not
    /// adjacent, never empty.
    pub runs: Vec<(u64, u64)>,
}

/// Appends `seq` (at or above every seq in `runs`) to ascending runs.
fn push_seq(runs: &mut Vec<(u64, u64)>, seq: u64) {
    match runs.last_mut() {
        Some((_, last)) if *last >= seq => {}
        Some((_, last)) if *last + 1 == seq => *last = seq,
        _ => runs.push((seq, seq)),
    }
}

/// Splits deleted seqs into (bucket start, runs) per bucket of `bucket_seqs` seqs (bucket `k`
/// holds seqs `k·b ..= k·b + b − 1`), in bucket order.
pub fn bucket_runs(deleted: &[u64], bucket_seqs: u64) -> Vec<(u64, Vec<(u64, u64)>)> {
    let b = bucket_seqs.max(1);
    let mut seqs = deleted.to_vec();
    seqs.sort_unstable();
    let mut out: Vec<(u64, Vec<(u64, u64)>)> = Vec::new();
    for seq in seqs {
        let start = seq - seq % b;
        match out.last_mut() {
            Some((s, runs)) if *s == start => push_seq(runs, seq),
            _ => out.push((start, vec![(seq, seq)])),
        }
    }
    out
}

/// The union of two run lists, as runs (ascending, disjoint, not adjacent).
pub fn merge_runs(a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut all: Vec<(u64, u64)> = a.iter().chain(b).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u64, u64)> = Vec::with_capacity(all.len());
    for (first, last) in all {
        match out.last_mut() {
            Some((_, l)) if first <= l.saturating_add(1) => *l = (*l).max(last),
            _ => out.push((first, last)),
        }
    }
    out
}

fn push_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn read_varint(bytes: &[u8], at: &mut usize) -> Option<u64> {
    let mut v = 0u64;
    for shift in (0..64).step_by(7) {
        let b = *bytes.get(*at)?;
        *at += 1;
        v |= u64::from(b & 0x7f).checked_shl(shift)?;
        if b & 0x80 == 0 {
            return Some(v);
        }
    }
    None
}

/// Encodes an entry's runs relative to its bucket start, which the key holds: per run, LEB128
/// varints of its distance from the previous run (`first₀ − start`, then
/// `firstᵢ − lastᵢ₋₁ − 2`) and `lastᵢ − firstᵢ`. A run near the bucket start costs two bytes.
pub fn encode_runs(start: u64, runs: &[(u64, u64)]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 * runs.len());
    let mut prev: Option<u64> = None;
    for &(first, last) in runs {
        let gap = match prev {
            Some(p) => first.saturating_sub(p).saturating_sub(2),
            None => first.saturating_sub(start),
        };
        push_varint(&mut out, gap);
        push_varint(&mut out, last.saturating_sub(first));
        prev = Some(last);
    }
    out
}

/// Decodes what [`encode_runs`] wrote for an entry starting at `start`; `None` if the bytes
/// are not such an encoding.
pub fn decode_runs(start: u64, bytes: &[u8]) -> Option<Vec<(u64, u64)>> {
    let mut at = 0;
    let mut runs = Vec::new();
    let mut next = start;
    while at < bytes.len() {
        let first = next.checked_add(read_varint(bytes, &mut at)?)?;
        let last = first.checked_add(read_varint(bytes, &mut at)?)?;
        runs.push((first, last));
        next = last.checked_add(2)?;
    }
    (!runs.is_empty()).then_some(runs)
}

/// What the walk reads from the store. The caller decides the read order (see
/// `collection::read_page_at`); the walk asks for index entries before the snapshots they
/// name.
pub trait PageSource {
    type Snapshot;
    /// The next index entry by ascending bucket start, starting at the look-back from the
    /// cursor (start ≥ cursor + 2 − the largest bucket written).
    fn next_entry(&mut self) -> Result<Option<DeletedEntry>>;
    /// A document's snapshot and its size in bytes.
    fn snapshot(&mut self, doc: &str) -> Result<Option<(Self::Snapshot, usize)>>;
    /// Documents whose legacy (format 1) watermark is at or above `seq`.
    fn legacy_owners(&mut self, seq: u64) -> Result<Vec<String>>;
}

/// The limits of one page.
#[derive(Debug, Clone, Copy)]
pub struct PageBounds {
    pub cursor: u64,
    /// Last seq the delta read covered: the head, or the last delta read when it left more.
    pub window_end: u64,
    /// Most deltas in the page (snapshots count against the byte budget only).
    pub limit: usize,
    /// Byte budget of the page's update bytes.
    pub max_bytes: usize,
    /// Most index runs loaded after the first step.
    pub max_runs: usize,
}

/// A page as the walk cut it: snapshots first (each covers deltas anywhere up to the cursor),
/// then the deltas in seq order.
#[derive(Debug)]
pub struct Walked<S, D> {
    pub snapshots: Vec<(String, S)>,
    pub deltas: Vec<(u64, D)>,
    /// The highest seq the reader may record.
    pub cursor: u64,
    /// Whether the page carries snapshots for format-1 deletions (not bounded by the budget).
    pub legacy: bool,
}

/// Cuts one page from `bounds.cursor`: walks `live` (the retained deltas of the window, as
/// (seq, size, delta), ascending) and the deleted seqs between them (see the module docs).
///
/// # Invariants
/// - Every seq in `(cursor, answered cursor]` is a delta of the page, or a deleted seq whose
///   owner's snapshot is in the page (provided `live` and the entries were read in the order
///   `read_page_at` documents).
/// - The answered cursor is above `bounds.cursor` whenever the window is not empty.
/// - Apart from format-1 owners, the page's bytes are at most `max_bytes` plus its first
///   change; it holds at most `limit` deltas, and at least one change when it moves.
///
/// # Errors
/// Whatever the source answers.
pub fn walk<S, D, P>(
    bounds: &PageBounds,
    live: Vec<(u64, usize, D)>,
    source: &mut P,
) -> Result<Walked<S, D>>
where
    P: PageSource<Snapshot = S>,
{
    let c = bounds.cursor;
    let mut page = Walked {
        snapshots: Vec::new(),
        deltas: Vec::new(),
        cursor: c,
        legacy: false,
    };
    let mut bytes = 0usize;
    // May `size` more bytes with `deltas` more deltas join the page? Always on the first step.
    let fits = |page: &Walked<S, D>, bytes: usize, deltas: usize, size: usize| {
        page.cursor == c
            || (page.deltas.len() + deltas <= bounds.limit
                && bytes.saturating_add(size) <= bounds.max_bytes)
    };
    let mut live = live.into_iter().peekable();
    // Documents named by loaded entries, and whether their snapshot is in the page.
    let mut docs: Vec<(String, bool)> = Vec::new();
    let mut doc_ids: HashMap<String, usize> = HashMap::new();
    // Loaded runs not yet behind the walk: first seq → (last seq, document).
    let mut runs: BTreeMap<u64, (u64, usize)> = BTreeMap::new();
    let mut next: Option<DeletedEntry> = None;
    let mut exhausted = false;
    let mut loaded_runs = 0usize;
    let mut legacy_done = false;

    'walk: while page.cursor < bounds.window_end {
        let s = page.cursor + 1;
        // Deltas left behind (not ascending input) are skipped rather than sent twice.
        while live.next_if(|(seq, _, _)| *seq < s).is_some() {}
        if let Some((seq, size, _)) = live.peek() {
            if *seq == s {
                if !fits(&page, bytes, 1, *size) {
                    break;
                }
                if let Some((seq, size, delta)) = live.next() {
                    bytes = bytes.saturating_add(size);
                    page.deltas.push((seq, delta));
                    page.cursor = seq;
                }
                continue;
            }
        }
        // `s` was deleted: load every entry that can hold it (bucket start ≤ s).
        loop {
            if next.is_none() && !exhausted {
                next = source.next_entry()?;
                exhausted = next.is_none();
            }
            match next.take() {
                Some(entry) if entry.start <= s => {
                    if page.cursor > c && loaded_runs + entry.runs.len() > bounds.max_runs {
                        break 'walk;
                    }
                    loaded_runs += entry.runs.len();
                    let id = *doc_ids.entry(entry.doc.clone()).or_insert_with(|| {
                        docs.push((entry.doc, false));
                        docs.len() - 1
                    });
                    for (first, last) in entry.runs {
                        if last >= s {
                            runs.insert(first.max(s), (last, id));
                        }
                    }
                }
                other => {
                    next = other;
                    break;
                }
            }
        }
        // Runs are disjoint, so ordered by their last seq too: drop those behind the walk.
        while let Some(entry) = runs.first_entry() {
            if entry.get().0 >= s {
                break;
            }
            entry.remove();
        }
        let next_live = live.peek().map_or(u64::MAX, |(seq, _, _)| *seq);
        let mut end = bounds.window_end.min(next_live - 1);
        let owner = runs
            .range(..=s)
            .next_back()
            .map(|(_, &(last, id))| (last, id))
            .filter(|(last, _)| *last >= s);
        match owner {
            Some((last, id)) => {
                if !docs[id].1 {
                    match source.snapshot(&docs[id].0)? {
                        Some((snapshot, size)) => {
                            if !fits(&page, bytes, 0, size) {
                                break;
                            }
                            bytes = bytes.saturating_add(size);
                            page.snapshots.push((docs[id].0.clone(), snapshot));
                        }
                        None => tracing::warn!(
                            doc = %docs[id].0,
                            seq = s,
                            "a deleted delta's document has no snapshot"
                        ),
                    }
                    docs[id].1 = true;
                }
                end = end.min(last);
            }
            None => {
                // No entry holds `s`: deleted before format 2. The stretch up to the next
                // recorded or retained seq is too; its owners are among the documents whose
                // legacy watermark is ≥ s, all of which come in this page (once).
                let next_run = runs.range(s + 1..).next().map_or(u64::MAX, |(f, _)| *f);
                let next_entry = next.as_ref().map_or(u64::MAX, |e| e.start);
                end = end.min(next_run - 1).min(next_entry - 1);
                if !legacy_done {
                    let mut group = Vec::new();
                    let mut size = 0usize;
                    for doc in source.legacy_owners(s)? {
                        let included = doc_ids.get(&doc).is_some_and(|&id| docs[id].1);
                        if !included {
                            if let Some((snapshot, n)) = source.snapshot(&doc)? {
                                size = size.saturating_add(n);
                                group.push((doc, snapshot));
                            }
                        }
                    }
                    if !fits(&page, bytes, 0, size) {
                        break;
                    }
                    bytes = bytes.saturating_add(size);
                    page.legacy |= !group.is_empty();
                    for (doc, snapshot) in group {
                        match doc_ids.get(&doc) {
                            Some(&id) => docs[id].1 = true,
                            None => {
                                doc_ids.insert(doc.clone(), docs.len());
                                docs.push((doc.clone(), true));
                            }
                        }
                        page.snapshots.push((doc, snapshot));
                    }
                    legacy_done = true;
                }
            }
        }
        page.cursor = end;
    }
    Ok(page)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::{BTreeSet, HashSet};

    #[test]
    fn runs_split_by_bucket_merge_and_round_trip() {
        let deleted = [9, 3, 4, 5, 7, 8, 10, 16, 17, 40, 5];
        let buckets = bucket_runs(&deleted, 8);
        assert_eq!(
            buckets,
            vec![
                (0, vec![(3, 5), (7, 7)]),
                (8, vec![(8, 10)]),
                (16, vec![(16, 17)]),
                (40, vec![(40, 40)]),
            ]
        );
        for (start, runs) in &buckets {
            let bytes = encode_runs(*start, runs);
            assert_eq!(decode_runs(*start, &bytes).as_ref(), Some(runs));
        }
        // A contiguous run at the bucket start is two bytes.
        assert_eq!(encode_runs(8, &[(8, 10)]), vec![0, 2]);
        assert_eq!(decode_runs(1, &[]), None);
        assert_eq!(decode_runs(1, &[1]), None);
        assert_eq!(decode_runs(u64::MAX, &[1, 0]), None);
        assert_eq!(
            merge_runs(&[(3, 5), (9, 9)], &[(6, 6), (8, 8), (12, 13)]),
            vec![(3, 6), (8, 9), (12, 13)]
        );
    }

    /// A store in memory: which seqs are retained, which document owns each deleted seq, and
    /// how deletions were recorded.
    #[derive(Default)]
    struct Fake {
        /// Index entries by bucket start.
        entries: Vec<DeletedEntry>,
        /// Document → legacy watermark.
        legacy: BTreeMap<String, u64>,
        snapshot_size: HashMap<String, usize>,
        /// Look-back start, for `next_entry`.
        from: usize,
        span: u64,
    }

    impl Fake {
        fn start(&mut self, cursor: u64) {
            let start = (cursor + 2).saturating_sub(self.span);
            self.entries
                .sort_by(|a, b| (a.start, &a.doc).cmp(&(b.start, &b.doc)));
            self.from = self.entries.partition_point(|e| e.start < start);
        }
    }

    impl PageSource for Fake {
        type Snapshot = String;

        fn next_entry(&mut self) -> Result<Option<DeletedEntry>> {
            let e = self.entries.get(self.from).cloned();
            self.from += 1;
            Ok(e)
        }

        fn snapshot(&mut self, doc: &str) -> Result<Option<(String, usize)>> {
            Ok(self.snapshot_size.get(doc).map(|&n| (doc.to_string(), n)))
        }

        fn legacy_owners(&mut self, seq: u64) -> Result<Vec<String>> {
            Ok(self
                .legacy
                .iter()
                .filter(|(_, &w)| w >= seq)
                .map(|(d, _)| d.clone())
                .collect())
        }
    }

    /// A log of `owners.len()` seqs (owner of seq i+1 = owners[i]); `rounds` compactions, each
    /// (document, delete below) recorded with `bucket` seqs per bucket; the first `legacy`
    /// rounds as format 1 (watermark only).
    struct Log {
        owners: Vec<usize>,
        deleted: BTreeSet<u64>,
        fake: Fake,
    }

    fn build(owners: Vec<usize>, rounds: &[(usize, u64)], legacy: usize, bucket: u64) -> Log {
        let mut fake = Fake {
            span: bucket,
            ..Fake::default()
        };
        let mut deleted = BTreeSet::new();
        for (i, &(doc, below)) in rounds.iter().enumerate() {
            let seqs: Vec<u64> = (1..=owners.len() as u64)
                .filter(|&s| owners[s as usize - 1] == doc && s < below && !deleted.contains(&s))
                .collect();
            if seqs.is_empty() {
                continue;
            }
            deleted.extend(seqs.iter().copied());
            let name = format!("d{doc}");
            fake.snapshot_size.insert(name.clone(), 10 + doc);
            if i < legacy {
                let w = fake.legacy.entry(name).or_default();
                *w = (*w).max(*seqs.last().unwrap());
            } else {
                for (start, runs) in bucket_runs(&seqs, bucket) {
                    // One entry per (bucket, document), merged like `Batch::compaction`.
                    match fake
                        .entries
                        .iter_mut()
                        .find(|e| e.start == start && e.doc == name)
                    {
                        Some(e) => e.runs = merge_runs(&e.runs, &runs),
                        None => fake.entries.push(DeletedEntry {
                            start,
                            doc: name.clone(),
                            runs,
                        }),
                    }
                }
            }
        }
        Log {
            owners,
            deleted,
            fake,
        }
    }

    /// Pages from `cursor` to the head; checks each page covers what it claims and is bounded.
    fn page_through(log: &mut Log, mut cursor: u64, limit: usize, max_bytes: usize) {
        let head = log.owners.len() as u64;
        let mut pages = 0;
        while cursor < head {
            pages += 1;
            assert!(pages <= 10 * head + 10, "no progress");
            log.fake.start(cursor);
            // The delta read stops after `limit` deltas, like `Store::deltas_after`.
            let mut live: Vec<(u64, usize, u64)> = (cursor + 1..=head)
                .filter(|s| !log.deleted.contains(s))
                .map(|s| (s, 3, s))
                .collect();
            let window_end = match live.get(limit) {
                Some(_) => {
                    live.truncate(limit);
                    live[limit - 1].0
                }
                None => head,
            };
            let bounds = PageBounds {
                cursor,
                window_end,
                limit,
                max_bytes,
                max_runs: MAX_RUNS_PER_PAGE,
            };
            let page = walk(&bounds, live, &mut log.fake).unwrap();
            assert!(page.cursor > cursor, "page from {cursor} made no progress");
            let snaps: HashSet<&str> = page.snapshots.iter().map(|(d, _)| d.as_str()).collect();
            assert_eq!(
                snaps.len(),
                page.snapshots.len(),
                "a snapshot twice in one page"
            );
            let deltas: HashSet<u64> = page.deltas.iter().map(|(s, _)| *s).collect();
            for s in cursor + 1..=page.cursor {
                let owner = format!("d{}", log.owners[s as usize - 1]);
                if log.deleted.contains(&s) {
                    assert!(snaps.contains(owner.as_str()), "seq {s} of {owner} skipped");
                } else {
                    assert!(deltas.contains(&s), "delta {s} skipped");
                }
            }
            assert!(page
                .deltas
                .iter()
                .all(|(s, _)| *s > cursor && *s <= page.cursor));
            let sizes: Vec<usize> = page
                .snapshots
                .iter()
                .map(|(d, _)| log.fake.snapshot_size[d])
                .chain(page.deltas.iter().map(|_| 3))
                .collect();
            let total: usize = sizes.iter().sum();
            let largest = sizes.iter().copied().max().unwrap_or(0);
            if !page.legacy {
                assert!(
                    total - largest <= max_bytes,
                    "page of {total} B over {max_bytes} B plus one change ({largest} B)"
                );
                assert!(page.deltas.len() <= limit);
            }
            cursor = page.cursor;
        }
    }

    #[test]
    fn many_documents_in_one_bucket_come_one_page_at_a_time() {
        // 40 documents written round robin twice, all compacted: every bucket of 16 seqs holds
        // 16 documents' deleted deltas; a page may carry only one snapshot.
        let owners: Vec<usize> = (0..80).map(|i| i % 40).collect();
        let rounds: Vec<(usize, u64)> = (0..40).map(|d| (d, u64::MAX)).collect();
        let mut log = build(owners, &rounds, 0, 16);
        log.fake.start(0);
        let bounds = PageBounds {
            cursor: 0,
            window_end: 80,
            limit: 100,
            max_bytes: 1,
            max_runs: MAX_RUNS_PER_PAGE,
        };
        let page = walk(&bounds, Vec::<(u64, usize, ())>::new(), &mut log.fake).unwrap();
        assert_eq!(page.snapshots.len(), 1);
        assert_eq!((page.cursor, page.snapshots[0].0.as_str()), (1, "d0"));
        for cursor in [0, 7, 15, 16, 39, 40, 41, 79] {
            page_through(&mut log, cursor, 100, 1);
            page_through(&mut log, cursor, 3, 64);
        }
    }

    #[test]
    fn a_documents_run_of_deleted_seqs_is_crossed_in_one_step() {
        // d0 owns 1..=50 (deleted), d1 owns 51..=60 (retained): one snapshot, then 3 deltas.
        let owners: Vec<usize> = (0..60).map(|i| usize::from(i >= 50)).collect();
        let mut log = build(owners, &[(0, u64::MAX)], 0, 8);
        log.fake.start(0);
        let live: Vec<(u64, usize, u64)> = (51..=60).map(|s| (s, 3, s)).collect();
        let bounds = PageBounds {
            cursor: 0,
            window_end: 60,
            limit: 3,
            max_bytes: 1 << 20,
            max_runs: MAX_RUNS_PER_PAGE,
        };
        let page = walk(&bounds, live, &mut log.fake).unwrap();
        assert_eq!(page.snapshots.len(), 1);
        assert_eq!(
            page.deltas.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![51, 52, 53],
            "the limit counts deltas"
        );
        assert_eq!(page.cursor, 53);
    }

    #[test]
    fn format_1_deletions_bring_their_documents_at_once() {
        // d0..d4 compacted as format 1 (watermarks only), then d5 with the index.
        let owners: Vec<usize> = (0..30).map(|i| i % 6).collect();
        let rounds: Vec<(usize, u64)> = (0..6).map(|d| (d, 25)).collect();
        let mut log = build(owners, &rounds, 5, 4);
        log.fake.start(0);
        let bounds = PageBounds {
            cursor: 0,
            window_end: 30,
            limit: 1,
            max_bytes: 1,
            max_runs: MAX_RUNS_PER_PAGE,
        };
        let page = walk(&bounds, Vec::<(u64, usize, ())>::new(), &mut log.fake).unwrap();
        assert!(page.legacy);
        assert_eq!(page.snapshots.len(), 5, "every legacy owner, in one page");
        page_through(&mut log, 0, 1, 1);
        page_through(&mut log, 12, 2, 30);
    }

    #[test]
    fn the_run_cap_stops_a_page_after_its_first_step() {
        // One document owns every other seq, another the rest; both compacted. A page that
        // may load only 8 runs stops early but moves.
        let owners: Vec<usize> = (0..64).map(|i| i % 2).collect();
        let mut log = build(owners, &[(0, u64::MAX), (1, u64::MAX)], 0, 8);
        log.fake.start(0);
        let bounds = PageBounds {
            cursor: 0,
            window_end: 64,
            limit: 1000,
            max_bytes: 1 << 20,
            max_runs: 8,
        };
        let page = walk(&bounds, Vec::<(u64, usize, ())>::new(), &mut log.fake).unwrap();
        assert!(page.cursor > 0 && page.cursor < 64, "{}", page.cursor);
        assert_eq!(page.snapshots.len(), 2);
    }

    proptest! {
        #[test]
        fn pages_cover_every_seq_and_stay_bounded(
            owners in proptest::collection::vec(0usize..8, 1..120),
            rounds in proptest::collection::vec((0usize..8, 0u64..130), 0..12),
            legacy in 0usize..3,
            bucket in 1u64..20,
            cursor_at in 0.0f64..1.0,
            limit in 1usize..6,
            max_bytes in prop_oneof![Just(1usize), Just(20), Just(1 << 20)],
        ) {
            let n = owners.len() as u64;
            let mut log = build(owners, &rounds, legacy, bucket);
            let cursor = ((n as f64) * cursor_at) as u64;
            page_through(&mut log, cursor, limit, max_bytes);
            page_through(&mut log, 0, limit, max_bytes);
        }
    }
}
