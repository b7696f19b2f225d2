//! A randomized model test: K peers edit documents with yrs, stream, ack, go idle, compact
//! (with and without stale client snapshots) and restart the store, in random order.
//!
//! Checked after every step: cursors never go back, delta seqs arrive in order within
//! (cursor, new cursor], a synced peer holds every update with seq ≤ its cursor, compaction
//! never deletes a delta at or above the lowest ack of the active peers. At the end every peer
//! syncs and equals a reference doc holding every edit, and recovery/state agree with it.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use replicate_actors::{CompactRequest, ManualClock, OperationType, Replicate, StreamRequest};

const PEERS: usize = 3;
const DOCS: usize = 3;
const C: &str = "model";

#[derive(Debug, Clone)]
enum Op {
    Edit {
        peer: usize,
        doc: usize,
        text: String,
        delete: bool,
    },
    Sync {
        peer: usize,
        limit: usize,
    },
    Ack {
        peer: usize,
    },
    Advance {
        millis: u64,
    },
    Compact {
        doc: usize,
        snapshot_from: Option<usize>,
        short_timeout: bool,
    },
    Restart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..PEERS, 0..DOCS, "[a-z]{1,4}", any::<bool>()).prop_map(|(peer, doc, text, d)| Op::Edit { peer, doc, delete: d && text.len() % 3 == 0, text }),
        4 => (0..PEERS, 1usize..6).prop_map(|(peer, limit)| Op::Sync { peer, limit }),
        3 => (0..PEERS).prop_map(|peer| Op::Ack { peer }),
        2 => prop_oneof![Just(1_000u64), Just(PEER_TIMEOUT.as_millis() as u64 + 1)].prop_map(|millis| Op::Advance { millis }),
        3 => (0..DOCS, proptest::option::of(0..PEERS), any::<bool>()).prop_map(|(doc, snapshot_from, short_timeout)| Op::Compact { doc, snapshot_from, short_timeout }),
        1 => Just(Op::Restart),
    ]
}

fn doc_name(d: usize) -> String {
    format!("doc-{d}")
}

struct Model {
    log: Vec<(u64, String, Vec<u8>)>,
    reference: HashMap<String, Replica>,
    /// Per peer: (synced seq, last seen) as the server should hold it.
    acks: HashMap<usize, (u64, u64)>,
}

impl Model {
    /// A replica holding exactly the logged updates of `doc` with seq ≤ `upto`.
    fn expected(&self, doc: &str, upto: u64) -> Replica {
        let r = Replica::new(900_001);
        for (seq, d, bytes) in &self.log {
            if *seq <= upto && d == doc {
                r.apply(bytes);
            }
        }
        r
    }

    fn min_active(&self, now: u64, timeout: u64) -> Option<u64> {
        self.acks
            .values()
            .filter(|(_, seen)| now.saturating_sub(*seen) < timeout)
            .map(|(s, _)| *s)
            .min()
    }
}

async fn all_deltas_after(r: &Replicate, after: u64) -> Vec<u64> {
    let mut cursor = after;
    let mut seqs = Vec::new();
    loop {
        let page = r
            .stream(
                C,
                StreamRequest {
                    limit: 1000,
                    ..StreamRequest::after(cursor)
                },
            )
            .await
            .unwrap();
        seqs.extend(
            page.changes
                .iter()
                .filter(|c| c.operation != OperationType::Snapshot)
                .map(|c| c.seq),
        );
        cursor = page.cursor;
        if !page.has_more {
            return seqs;
        }
    }
}

async fn run(ops: Vec<Op>, max_page_bytes: usize) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut config = config(dir.path());
    // Tiny byte budgets make every page carry a single delta next to its snapshots.
    config.max_page_bytes = max_page_bytes;
    let mut r = open_with(config.clone(), &clock).await;
    let mut peers: Vec<Peer> = (0..PEERS)
        .map(|p| Peer::new(&format!("peer-{p}"), 1 + 100 * p as u64))
        .collect();
    let mut model = Model {
        log: Vec::new(),
        reference: HashMap::new(),
        acks: HashMap::new(),
    };

    for op in ops {
        match op {
            Op::Edit {
                peer,
                doc,
                text,
                delete,
            } => {
                let name = doc_name(doc);
                let replica = peers[peer].replica(&name);
                let update = if delete {
                    replica.delete_front(1)
                } else {
                    replica.append(&text)
                };
                let seq = r.update(C, write(&name, update.clone())).await.unwrap().seq;
                assert_eq!(seq, model.log.len() as u64 + 1, "seqs are 1, 2, 3, …");
                model
                    .reference
                    .entry(name.clone())
                    .or_insert_with(|| Replica::new(900_003))
                    .apply(&update);
                model.log.push((seq, name, update));
            }
            Op::Sync { peer, limit } => {
                let seen = peers[peer].sync(&r, C, limit).await;
                assert!(
                    seen.windows(2).all(|w| w[0] < w[1]),
                    "deltas out of order: {seen:?}"
                );
                let p = &mut peers[peer];
                for d in 0..DOCS {
                    let name = doc_name(d);
                    let expected = model.expected(&name, p.cursor);
                    let cursor = p.cursor;
                    assert!(
                        p.replica(&name).contains(&expected),
                        "{} at cursor {cursor} misses updates of {name}",
                        p.id
                    );
                }
            }
            Op::Ack { peer } => {
                let p = &peers[peer];
                let acked = p.ack(&r, C).await;
                let entry = model.acks.entry(peer).or_insert((0, 0));
                entry.0 = entry.0.max(p.cursor);
                entry.1 = clock.now_millis_for_test();
                assert_eq!(acked, entry.0);
            }
            Op::Advance { millis } => clock.advance(millis),
            Op::Compact {
                doc,
                snapshot_from,
                short_timeout,
            } => {
                let name = doc_name(doc);
                let timeout = if short_timeout {
                    Duration::from_millis(500)
                } else {
                    PEER_TIMEOUT
                };
                let snapshot = snapshot_from.map(|p| peers[p].replica(&name).full_state());
                let state_vector = snapshot_from.map(|p| peers[p].replica(&name).state_vector());
                let req = CompactRequest {
                    document_id: name.clone(),
                    snapshot,
                    state_vector,
                    peer_timeout: Some(timeout),
                };
                let min_active =
                    model.min_active(clock.now_millis_for_test(), timeout.as_millis() as u64);
                let before = all_deltas_after(&r, 0).await;
                r.compact(C, req).await.unwrap();
                let after = all_deltas_after(&r, 0).await;
                for seq in before {
                    let (_, d, _) = &model.log[seq as usize - 1];
                    let may_go = *d == name && min_active.is_none_or(|min| seq < min);
                    assert!(
                        may_go || after.contains(&seq),
                        "delta {seq} of {d} was deleted (min active ack {min_active:?})"
                    );
                }
            }
            Op::Restart => {
                r.close(Duration::from_secs(5)).await.unwrap();
                r = open_with(config.clone(), &clock).await;
            }
        }
    }

    // Everyone syncs and converges on the reference.
    for p in &mut peers {
        p.sync(&r, C, 4).await;
        assert_eq!(p.cursor, model.log.len() as u64);
        for (name, reference) in &model.reference {
            assert_eq!(
                p.replica(name).text(),
                reference.text(),
                "{} diverged on {name}",
                p.id
            );
            assert!(p.replica(name).contains(reference));
        }
    }
    for (name, reference) in &model.reference {
        let fresh = Replica::new(900_002);
        let rec = r
            .recovery(C, &fresh.state_vector(), Some(name))
            .await
            .unwrap();
        fresh.apply(&rec.update);
        assert_eq!(fresh.text(), reference.text(), "recovery of {name}");
        assert_eq!(rec.cursor, model.log.len() as u64);
        // A peer that is behind recovers just the difference.
        let behind = model.expected(name, model.log.len() as u64 / 2);
        let rec = r
            .recovery(C, &behind.state_vector(), Some(name))
            .await
            .unwrap();
        behind.apply(&rec.update);
        assert_eq!(behind.text(), reference.text(), "diff recovery of {name}");
    }
    let state = r.state(C).await.unwrap();
    assert_eq!(state.cursor, model.log.len() as u64);
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// Clock reads for the model, through the public trait.
trait NowForTest {
    fn now_millis_for_test(&self) -> u64;
}

impl NowForTest for ManualClock {
    fn now_millis_for_test(&self) -> u64 {
        replicate_actors::Clock::now_millis(self)
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn peers_converge_and_nothing_is_lost(
        ops in proptest::collection::vec(op(), 1..60),
        max_page_bytes in prop_oneof![Just(1usize), Just(64), Just(16 << 20)],
    ) {
        actix::System::new().block_on(run(ops, max_page_bytes));
    }
}
