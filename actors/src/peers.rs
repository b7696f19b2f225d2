//! The peer tracker: per peer, the highest seq it has synced and when it was last seen.
//!
//! A plain struct owned by the collection actor, so an ack is checked against the same head
//! seq, and a compaction plan sees the same acks, as the writes they race with: no cross-actor
//! message can fall between them. Time comes in as `now` (milliseconds).

use std::collections::HashMap;

use crate::error::{Error, Result};
use crate::store::PeerRecord;

#[derive(Debug, Default)]
pub struct PeerTable {
    peers: HashMap<String, PeerRecord>,
}

impl PeerTable {
    pub fn from_records(records: impl IntoIterator<Item = (String, PeerRecord)>) -> Self {
        PeerTable {
            peers: records.into_iter().collect(),
        }
    }

    /// Records that `peer` has synced through `synced`, seen at `now`. Keeps the larger of the
    /// old and new seq (acks may arrive out of order) and returns the updated record.
    ///
    /// # Errors
    /// [`Error::AckAhead`] when `synced` is above `head`, the collection's current seq.
    pub fn ack(&mut self, peer: &str, synced: u64, head: u64, now: u64) -> Result<PeerRecord> {
        if synced > head {
            return Err(Error::AckAhead { synced, head });
        }
        let record = self.peers.entry(peer.to_string()).or_default();
        record.synced_seq = record.synced_seq.max(synced);
        record.last_seen_at = record.last_seen_at.max(now);
        Ok(*record)
    }

    /// Raises `peer`'s synced seq to `synced` if it is lower: an ack the store holds that this
    /// node did not see (made on another node sharing the store).
    pub fn learn_synced(&mut self, peer: &str, synced: u64) {
        if let Some(record) = self.peers.get_mut(peer) {
            record.synced_seq = record.synced_seq.max(synced);
        }
    }

    /// Whether a peer last seen at `seen` is active at `now`.
    fn is_active(seen: u64, now: u64, timeout_ms: u64) -> bool {
        now.saturating_sub(seen) < timeout_ms
    }

    /// The lowest synced seq over peers seen within `timeout_ms` of `now`; `None` if no peer is
    /// active (compaction may then delete every delta it merged).
    pub fn min_active_synced(&self, now: u64, timeout_ms: u64) -> Option<u64> {
        self.peers
            .values()
            .filter(|p| Self::is_active(p.last_seen_at, now, timeout_ms))
            .map(|p| p.synced_seq)
            .min()
    }

    /// Forgets peers not seen for `retention_ms` before `now`; answers their names.
    pub fn forget_unseen(&mut self, now: u64, retention_ms: u64) -> Vec<String> {
        let gone: Vec<String> = self
            .peers
            .iter()
            .filter(|(_, p)| now.saturating_sub(p.last_seen_at) >= retention_ms)
            .map(|(name, _)| name.clone())
            .collect();
        for name in &gone {
            self.peers.remove(name);
        }
        gone
    }

    /// Whether `peer` is known.
    pub fn contains(&self, peer: &str) -> bool {
        self.peers.contains_key(peer)
    }

    pub fn len(&self) -> usize {
        self.peers.len()
    }

    pub fn is_empty(&self) -> bool {
        self.peers.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unseen_peers_are_forgotten() {
        let mut t = PeerTable::default();
        t.ack("old", 1, 10, 100).unwrap();
        t.ack("new", 1, 10, 900).unwrap();
        // (now, retention) → forgotten
        assert!(t.forget_unseen(1000, 901).is_empty());
        assert_eq!(t.forget_unseen(1000, 900), vec!["old".to_string()]);
        assert!(!t.contains("old") && t.contains("new"));
    }

    #[test]
    fn ack_keeps_the_maximum_and_rejects_the_future() {
        let mut t = PeerTable::default();
        assert_eq!(t.ack("p", 5, 10, 100).unwrap().synced_seq, 5);
        assert_eq!(
            t.ack("p", 3, 10, 200).unwrap(),
            PeerRecord {
                synced_seq: 5,
                last_seen_at: 200
            }
        );
        assert_eq!(
            t.ack("p", 11, 10, 300),
            Err(Error::AckAhead {
                synced: 11,
                head: 10
            })
        );
        assert_eq!(t.ack("p", 10, 10, 300).unwrap().synced_seq, 10);
    }

    #[test]
    fn min_active_synced_table() {
        // (peers as (synced, last_seen), now, timeout, expected)
        type Case = (&'static [(u64, u64)], u64, u64, Option<u64>);
        let cases: &[Case] = &[
            (&[], 1000, 100, None),
            (&[(10, 950)], 1000, 100, Some(10)),
            (&[(10, 900)], 1000, 100, None), // seen exactly `timeout` ago: inactive
            (&[(10, 901), (1000, 990)], 1000, 100, Some(10)),
            (&[(10, 100), (1000, 990)], 1000, 100, Some(1000)), // the slow one timed out
            (&[(7, 0), (3, 0)], 0, 1, Some(3)),
        ];
        for (peers, now, timeout, expected) in cases {
            let t = PeerTable::from_records(peers.iter().enumerate().map(|(i, (s, seen))| {
                (
                    format!("p{i}"),
                    PeerRecord {
                        synced_seq: *s,
                        last_seen_at: *seen,
                    },
                )
            }));
            assert_eq!(
                t.min_active_synced(*now, *timeout),
                *expected,
                "{peers:?} at {now}"
            );
        }
    }
}
