//! A room's awareness table: the latest state of every awareness client id, which connection
//! announced it, and what to relay. Pure: no sockets, no yrs documents.
//!
//! The rules are y-protocols' own (`applyAwarenessUpdate`): an entry wins when its clock is
//! newer, or equal with a `null` state removing a live one. Only entries that won are relayed,
//! so the echo every y-websocket client sends back of others' states (same clock) goes
//! nowhere. The connection whose update *added* a client id owns it; when that connection
//! closes, its ids are removed for everyone (a `null` state one clock later).
//!
//! # Invariants
//! - At most [`MAX_IDS_PER_CONNECTION`] live ids per connection and [`MAX_TOMBSTONES`]
//!   removed ids per room are kept: a client cannot grow the table without bound.

use std::collections::HashMap;
use std::sync::Arc;

use yrs::sync::awareness::AwarenessUpdateEntry;
use yrs::sync::AwarenessUpdate;
use yrs::ClientID;

/// Connection ids, unique per hub.
pub type ConnId = u64;

/// Awareness client ids one connection may own at once (a provider uses one).
pub const MAX_IDS_PER_CONNECTION: usize = 8;
/// Removed ids remembered (for their clocks) before they are forgotten.
pub const MAX_TOMBSTONES: usize = 1024;

const NULL: &str = "null";

#[derive(Debug, Clone)]
struct Entry {
    clock: u32,
    /// `None` once removed (a tombstone keeping the clock).
    json: Option<Arc<str>>,
    owner: Option<ConnId>,
}

/// The awareness states of one room.
///
/// Every entry change goes through [`Self::put`], which keeps the counts beside the entries,
/// so each entry of an update costs O(1) (amortized over tombstone pruning): counting by scan
/// made one 850 KB message of 100,000 entries take 33 s of a worker thread.
#[derive(Debug, Default)]
pub struct AwarenessTable {
    entries: HashMap<ClientID, Entry>,
    /// Live ids per owning connection.
    owned: HashMap<ConnId, usize>,
    /// Entries that are tombstones.
    tombstones: usize,
}

impl AwarenessTable {
    /// Applies `update` sent by `conn`; answers the entries to relay (those that won), or
    /// `None` when nothing changed.
    pub fn apply(&mut self, conn: ConnId, update: AwarenessUpdate) -> Option<AwarenessUpdate> {
        let mut changed = HashMap::new();
        for (id, incoming) in update.clients {
            let removing = &*incoming.json == NULL;
            let current = self
                .entries
                .get(&id)
                .map(|e| (e.clock, e.json.is_some(), e.owner));
            let (live, owner) = match current {
                None => (false, None),
                Some((clock, live, owner)) => {
                    let wins =
                        clock < incoming.clock || (clock == incoming.clock && removing && live);
                    if !wins {
                        continue;
                    }
                    (live, owner)
                }
            };
            let owner = if removing {
                None
            } else if live {
                owner
            } else if self.owned_by(conn) >= MAX_IDS_PER_CONNECTION {
                continue;
            } else {
                Some(conn)
            };
            let json = (!removing).then(|| incoming.json.clone());
            self.put(
                id,
                Entry {
                    clock: incoming.clock,
                    json,
                    owner,
                },
            );
            // Removing what nobody sees only records the clock.
            if live || !removing {
                changed.insert(id, incoming);
            }
        }
        (!changed.is_empty()).then_some(AwarenessUpdate { clients: changed })
    }

    /// Every live state, for a connection that just joined or asked (query-awareness).
    pub fn current(&self) -> Option<AwarenessUpdate> {
        let clients: HashMap<_, _> = self
            .entries
            .iter()
            .filter_map(|(id, e)| {
                let json = e.json.clone()?;
                Some((
                    *id,
                    AwarenessUpdateEntry {
                        clock: e.clock,
                        json,
                    },
                ))
            })
            .collect();
        (!clients.is_empty()).then_some(AwarenessUpdate { clients })
    }

    /// Removes the live ids `conn` owns; answers the removal to relay to everyone else.
    pub fn remove_owned_by(&mut self, conn: ConnId) -> Option<AwarenessUpdate> {
        if self.owned_by(conn) == 0 {
            return None;
        }
        let ids: Vec<(ClientID, u32)> = self
            .entries
            .iter()
            .filter(|(_, e)| e.owner == Some(conn) && e.json.is_some())
            .map(|(id, e)| (*id, e.clock.wrapping_add(1)))
            .collect();
        let mut removed = HashMap::new();
        for (id, clock) in ids {
            self.put(
                id,
                Entry {
                    clock,
                    json: None,
                    owner: None,
                },
            );
            removed.insert(
                id,
                AwarenessUpdateEntry {
                    clock,
                    json: NULL.into(),
                },
            );
        }
        (!removed.is_empty()).then_some(AwarenessUpdate { clients: removed })
    }

    fn owned_by(&self, conn: ConnId) -> usize {
        self.owned.get(&conn).copied().unwrap_or(0)
    }

    /// Sets `id`'s entry, keeping the counts, and forgets the tombstones once past
    /// [`MAX_TOMBSTONES`].
    fn put(&mut self, id: ClientID, entry: Entry) {
        self.count(&entry, true);
        if let Some(old) = self.entries.insert(id, entry) {
            self.count(&old, false);
        }
        if self.tombstones > MAX_TOMBSTONES {
            self.entries.retain(|_, e| e.json.is_some());
            self.tombstones = 0;
        }
    }

    /// Counts `entry` in (`add`) or out of the live-ids-per-owner and tombstone counts.
    fn count(&mut self, entry: &Entry, add: bool) {
        match (&entry.json, entry.owner) {
            (None, _) if add => self.tombstones += 1,
            (None, _) => self.tombstones = self.tombstones.saturating_sub(1),
            (Some(_), Some(owner)) => {
                let n = self.owned.entry(owner).or_default();
                if add {
                    *n += 1;
                } else {
                    *n = n.saturating_sub(1);
                    if *n == 0 {
                        self.owned.remove(&owner);
                    }
                }
            }
            (Some(_), None) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn update(entries: &[(u64, u32, &str)]) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: entries
                .iter()
                .map(|(id, clock, json)| {
                    (
                        ClientID::new(*id),
                        AwarenessUpdateEntry {
                            clock: *clock,
                            json: (*json).into(),
                        },
                    )
                })
                .collect(),
        }
    }

    fn relayed(u: Option<AwarenessUpdate>) -> Vec<(u64, u32, String)> {
        let mut v: Vec<_> = u
            .map(|u| {
                u.clients
                    .into_iter()
                    .map(|(id, e)| (id.get(), e.clock, e.json.to_string()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort();
        v
    }

    #[test]
    fn newer_clocks_win_and_echoes_go_nowhere() {
        let mut t = AwarenessTable::default();
        // (conn, update, relayed)
        type Entries<'a> = &'a [(u64, u32, &'a str)];
        let steps: &[(ConnId, Entries, Entries)] = &[
            (1, &[(10, 0, "{\"a\":1}")], &[(10, 0, "{\"a\":1}")]),
            // conn 2 echoes conn 1's state: same clock, nothing relayed
            (2, &[(10, 0, "{\"a\":1}")], &[]),
            (1, &[(10, 1, "{\"a\":2}")], &[(10, 1, "{\"a\":2}")]),
            // an older clock loses
            (1, &[(10, 0, "{\"a\":3}")], &[]),
            // equal clock with null removes a live state
            (1, &[(10, 1, "null")], &[(10, 1, "null")]),
            // removing it again relays nothing
            (1, &[(10, 1, "null")], &[]),
            // re-added later
            (2, &[(10, 2, "{}")], &[(10, 2, "{}")]),
        ];
        for (i, (conn, u, expected)) in steps.iter().enumerate() {
            let got = relayed(t.apply(*conn, update(u)));
            let want: Vec<_> = expected
                .iter()
                .map(|(a, b, c)| (*a, *b, c.to_string()))
                .collect();
            assert_eq!(got, want, "step {i}");
        }
        assert_eq!(relayed(t.current()), vec![(10, 2, "{}".to_string())]);
    }

    #[test]
    fn a_closing_connection_removes_only_the_ids_it_added() {
        let mut t = AwarenessTable::default();
        t.apply(1, update(&[(10, 0, "{}")]));
        t.apply(2, update(&[(20, 5, "{}"), (10, 0, "{}")]));
        assert_eq!(
            relayed(t.remove_owned_by(1)),
            vec![(10, 1, "null".to_string())]
        );
        assert_eq!(relayed(t.current()), vec![(20, 5, "{}".to_string())]);
        assert_eq!(t.remove_owned_by(1), None);
        assert_eq!(
            relayed(t.remove_owned_by(2)),
            vec![(20, 6, "null".to_string())]
        );
        assert_eq!(t.current(), None);
    }

    /// The counts [`AwarenessTable::put`] keeps, recounted by scanning the entries.
    fn recount(t: &AwarenessTable) -> (HashMap<ConnId, usize>, usize) {
        let mut owned = HashMap::new();
        let mut tombstones = 0;
        for e in t.entries.values() {
            match (&e.json, e.owner) {
                (None, _) => tombstones += 1,
                (Some(_), Some(owner)) => *owned.entry(owner).or_default() += 1,
                (Some(_), None) => {}
            }
        }
        (owned, tombstones)
    }

    proptest::proptest! {
        /// Whatever connections send and whichever close, the counts kept beside the entries
        /// are the entries' own, and the bounds hold.
        #[test]
        fn kept_counts_match_the_entries(
            steps in proptest::collection::vec(
                (0u64..4, proptest::collection::vec((0u64..40, 0u32..4, proptest::bool::ANY), 0..12), proptest::bool::weighted(0.1)),
                1..80,
            )
        ) {
            let mut t = AwarenessTable::default();
            for (conn, entries, close) in steps {
                if close {
                    t.remove_owned_by(conn);
                } else {
                    let entries: Vec<(u64, u32, &str)> = entries
                        .iter()
                        .map(|(id, clock, live)| (*id, *clock, if *live { "{}" } else { "null" }))
                        .collect();
                    t.apply(conn, update(&entries));
                }
                let (owned, tombstones) = recount(&t);
                proptest::prop_assert_eq!(&owned, &t.owned);
                proptest::prop_assert_eq!(tombstones, t.tombstones);
                proptest::prop_assert!(owned.values().all(|n| *n <= MAX_IDS_PER_CONNECTION));
                proptest::prop_assert!(tombstones <= MAX_TOMBSTONES);
            }
        }
    }

    /// One message of 8,000 removals of unknown ids and 8,000 new states (what took 33 s of a
    /// worker thread per 100,000 entries when each new id counted the table): the table keeps
    /// its bounds and its counts.
    #[test]
    fn a_crowded_message_keeps_the_bounds() {
        let mut t = AwarenessTable::default();
        let removals = (0..8_000).map(|i| (1_000_000 + i, 1, "null"));
        let states = (0..8_000).map(|i| (5_000_000 + i, 1, "{}"));
        let entries: Vec<(u64, u32, &str)> = removals.chain(states).collect();
        let relayed_ids = relayed(t.apply(1, update(&entries))).len();
        assert_eq!(relayed_ids, MAX_IDS_PER_CONNECTION);
        assert!(t.tombstones <= MAX_TOMBSTONES);
        assert_eq!(recount(&t), (t.owned.clone(), t.tombstones));
        assert_eq!(t.entries.len(), t.tombstones + MAX_IDS_PER_CONNECTION);
    }

    #[test]
    fn ids_per_connection_and_tombstones_are_bounded() {
        let mut t = AwarenessTable::default();
        let many: Vec<(u64, u32, &str)> = (0..100).map(|i| (i, 0, "{}")).collect();
        let relayed_ids = relayed(t.apply(1, update(&many))).len();
        assert_eq!(relayed_ids, MAX_IDS_PER_CONNECTION);
        for i in 0..(MAX_TOMBSTONES as u64 + 10) {
            t.apply(2, update(&[(1000 + i, 0, "null")]));
        }
        assert!(t.entries.len() <= MAX_TOMBSTONES + MAX_IDS_PER_CONNECTION + 1);
    }
}
