//! The compaction plan, as pure functions: which of a document's deltas may be deleted, and
//! what the document's counters become. The actor reads, the compactor merges, and
//! [`crate::store::Store::apply_compaction`] writes the outcome in one batch.
//!
//! # Invariants
//! - Only deltas that were merged into the new snapshot are deleted.
//! - Only deltas with seq < the minimum synced seq over active peers are deleted (all merged
//!   deltas when no peer is active).

use crate::store::DocStats;

/// What a compaction of one document will do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// Seqs to delete (ascending).
    pub delete: Vec<u64>,
    /// Highest seq the new snapshot includes.
    pub snapshot_seq: u64,
    /// The document's counters after the compaction.
    pub stats: DocStats,
}

/// Plans the deletion of `merged` deltas (seq, byte length; ascending), all of which are in
/// the new snapshot, given the previous counters and `min_active` (see module docs).
pub fn plan(merged: &[(u64, u64)], previous: DocStats, min_active: Option<u64>) -> Plan {
    let delete_below = min_active.unwrap_or(u64::MAX);
    let deleted: Vec<(u64, u64)> = merged
        .iter()
        .copied()
        .filter(|(seq, _)| *seq < delete_below)
        .collect();
    let removed_bytes: u64 = deleted.iter().map(|(_, len)| len).sum();
    let snapshot_seq = merged
        .last()
        .map(|(s, _)| *s)
        .unwrap_or(0)
        .max(previous.snapshot_seq);
    let watermark = deleted
        .last()
        .map(|(s, _)| *s)
        .unwrap_or(0)
        .max(previous.watermark);
    Plan {
        delete: deleted.iter().map(|(s, _)| *s).collect(),
        snapshot_seq,
        stats: DocStats {
            retained_bytes: previous.retained_bytes.saturating_sub(removed_bytes),
            retained_count: previous.retained_count.saturating_sub(deleted.len() as u64),
            watermark,
            generation: previous.generation + 1,
            has_snapshot: true,
            snapshot_seq,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(bytes: u64, count: u64, watermark: u64) -> DocStats {
        DocStats {
            retained_bytes: bytes,
            retained_count: count,
            watermark,
            ..DocStats::default()
        }
    }

    #[test]
    fn plan_table() {
        let merged = [(2, 10), (5, 20), (9, 30)];
        // (min_active, deleted, retained_bytes, retained_count, watermark)
        type Case = (Option<u64>, &'static [u64], u64, u64, u64);
        let cases: &[Case] = &[
            (None, &[2, 5, 9], 0, 0, 9),
            (Some(100), &[2, 5, 9], 0, 0, 9),
            (Some(9), &[2, 5], 30, 1, 5), // seq == min ack is kept
            (Some(5), &[2], 50, 2, 2),
            (Some(2), &[], 60, 3, 1), // nothing deleted: old watermark kept
            (Some(0), &[], 60, 3, 1),
        ];
        for (min_active, deleted, bytes, count, watermark) in cases {
            let p = plan(&merged, stats(60, 3, 1), *min_active);
            assert_eq!(p.delete, *deleted, "{min_active:?}");
            assert_eq!(
                (
                    p.stats.retained_bytes,
                    p.stats.retained_count,
                    p.stats.watermark
                ),
                (*bytes, *count, *watermark)
            );
            assert_eq!(p.snapshot_seq, 9);
            assert!(p.stats.has_snapshot);
            assert_eq!(p.stats.generation, 1);
        }
    }

    #[test]
    fn snapshot_seq_never_goes_back() {
        let with_snapshot = |s| DocStats {
            snapshot_seq: s,
            has_snapshot: true,
            ..stats(1, 1, 0)
        };
        assert_eq!(plan(&[], with_snapshot(7), None).snapshot_seq, 7);
        assert_eq!(plan(&[(3, 1)], with_snapshot(7), None).snapshot_seq, 7);
        assert_eq!(
            plan(&[(9, 1)], with_snapshot(7), None).stats.snapshot_seq,
            9
        );
    }
}
