//! Adversarial review of compaction and the peer tracker, driven by hostile or stale clients.
//!
//! A proptest schedule mixes writes (two writers per document that never see each other),
//! peers that stream, ack (exactly, backwards, ahead of the head, ahead of what they hold),
//! vanish past the peer timeout and come back, compactions with client `snapshotBytes` and
//! `stateVector` (stale, partial, forged, of another document, garbage, empty, oversized) and
//! every kind of `peerTimeout` (0, 1, the default, just at the clock step, u64::MAX ms,
//! `Duration::MAX`), and groups of these run at once.
//!
//! Checked after every step:
//! - a bad compaction request is refused with the right error and changes nothing;
//! - a sequential compaction deletes exactly the deltas below the lowest ack of the active
//!   peers (all of them when none is active), answers that count, and its `snapshotSeq`;
//! - a concurrent one deletes nothing at or above the lowest ack of the peers active when
//!   the group started;
//! - a fresh reader from 0, every peer from its own (possibly stale) cursor and a per-document
//!   recovery end with exactly the content of the answered writes: nothing lost, nothing
//!   invented by a client snapshot.
//!
//! It holds PostgreSQL to the same rule as sled. The review found two ways PostgreSQL did
//! not keep it (pinned by the deterministic tests below): its commit counted a peer seen
//! exactly `peerTimeout` ago as active, and a compaction's answer (`retained`) and the actor's
//! counters were the plan's, not what the commit kept.

mod common;

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::Duration;

use common::*;
use futures::future::join_all;
use proptest::prelude::*;
use replicate_actors::{CompactRequest, Config, Error, ManualClock, Replicate};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{ReadTxn, StateVector, Transact, Update};

const C: &str = "revcompact";
const DOCS: usize = 3;
const WRITERS: usize = 2;
const PEERS: usize = 3;
const MAX_UPDATE: usize = 64 * 1024;
const TIMEOUT_MS: u64 = 60_000;

#[derive(Debug, Clone, Copy)]
enum Snap {
    None,
    Garbage,
    Empty,
    Forged,
    Stale,
    OtherDoc,
    Huge,
}

#[derive(Debug, Clone, Copy)]
enum Sv {
    None,
    Garbage,
    Empty,
    Foreign,
    Huge,
}

#[derive(Debug, Clone, Copy)]
enum Timeout {
    Default,
    Zero,
    One,
    Exact,
    MaxMillis,
    DurationMax,
}

impl Timeout {
    fn duration(self) -> Option<Duration> {
        match self {
            Timeout::Default => None,
            Timeout::Zero => Some(Duration::ZERO),
            Timeout::One => Some(Duration::from_millis(1)),
            Timeout::Exact => Some(Duration::from_millis(TIMEOUT_MS)),
            Timeout::MaxMillis => Some(Duration::from_millis(u64::MAX)),
            Timeout::DurationMax => Some(Duration::MAX),
        }
    }

    fn millis(self) -> u64 {
        match self {
            Timeout::Default | Timeout::Exact => TIMEOUT_MS,
            Timeout::Zero => 0,
            Timeout::One => 1,
            Timeout::MaxMillis | Timeout::DurationMax => u64::MAX,
        }
    }
}

#[derive(Debug, Clone)]
enum Op {
    Write {
        doc: usize,
        writer: usize,
        text: String,
        delete: bool,
    },
    Sync {
        peer: usize,
        limit: usize,
    },
    /// kind: 0 its cursor, 1 backwards, 2 above the head (refused), 3 ahead of what it holds.
    Ack {
        peer: usize,
        kind: u8,
        k: u64,
    },
    Advance(u64),
    Compact {
        doc: usize,
        snap: Snap,
        sv: Sv,
        timeout: Timeout,
    },
    FreshRead {
        limit: usize,
    },
    /// Run these at once.
    Together(Vec<Op>),
}

fn snap() -> impl Strategy<Value = Snap> {
    prop_oneof![
        4 => Just(Snap::None),
        1 => Just(Snap::Garbage),
        1 => Just(Snap::Empty),
        2 => Just(Snap::Forged),
        2 => Just(Snap::Stale),
        2 => Just(Snap::OtherDoc),
        1 => Just(Snap::Huge),
    ]
}

fn sv() -> impl Strategy<Value = Sv> {
    prop_oneof![
        4 => Just(Sv::None),
        1 => Just(Sv::Garbage),
        1 => Just(Sv::Empty),
        2 => Just(Sv::Foreign),
        1 => Just(Sv::Huge),
    ]
}

fn timeout() -> impl Strategy<Value = Timeout> {
    prop_oneof![
        3 => Just(Timeout::Default),
        2 => Just(Timeout::Zero),
        1 => Just(Timeout::One),
        2 => Just(Timeout::Exact),
        1 => Just(Timeout::MaxMillis),
        1 => Just(Timeout::DurationMax),
    ]
}

fn simple_op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..DOCS, 0..WRITERS, "[a-z]{1,4}", proptest::bool::weighted(0.15))
            .prop_map(|(doc, writer, text, delete)| Op::Write { doc, writer, text, delete }),
        3 => (0..PEERS, 1usize..6).prop_map(|(peer, limit)| Op::Sync { peer, limit }),
        4 => (0..PEERS, 0u8..4, 0u64..4).prop_map(|(peer, kind, k)| Op::Ack { peer, kind, k }),
        2 => prop_oneof![
            Just(0u64), Just(1), Just(TIMEOUT_MS - 1), Just(TIMEOUT_MS), Just(TIMEOUT_MS + 1),
            Just(3 * TIMEOUT_MS)
        ].prop_map(Op::Advance),
        4 => (0..DOCS, snap(), sv(), timeout())
            .prop_map(|(doc, snap, sv, timeout)| Op::Compact { doc, snap, sv, timeout }),
        1 => (1usize..8).prop_map(|limit| Op::FreshRead { limit }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => simple_op(),
        2 => proptest::collection::vec(simple_op(), 2..7).prop_map(Op::Together),
    ]
}

fn doc_name(d: usize) -> String {
    format!("doc-{d}")
}

struct Model {
    clock: ManualClock,
    /// Every answered write: seq → (document, update).
    log: BTreeMap<u64, (String, Vec<u8>)>,
    /// Deltas still stored, as far as the model knows: seq → document.
    live: BTreeMap<u64, String>,
    /// peer → (synced, last seen).
    acks: HashMap<String, (u64, u64)>,
    writers: Vec<Vec<Replica>>,
    peers: Vec<Peer>,
    /// A stale snapshot per document (its first writes), if any.
    stale: HashMap<usize, Vec<u8>>,
    postgres: bool,
}

impl Model {
    fn head(&self) -> u64 {
        self.log.keys().next_back().copied().unwrap_or(0)
    }

    fn expected(&self, doc: &str) -> Replica {
        let r = Replica::new(999_999);
        for (d, u) in self.log.values() {
            if d == doc {
                r.apply(u);
            }
        }
        r
    }

    fn min_active(&self, timeout_ms: u64) -> Option<u64> {
        let now = self.clock.now_millis_for_test();
        self.acks
            .values()
            .filter(|(_, seen)| now.saturating_sub(*seen) < timeout_ms)
            .map(|(s, _)| *s)
            .min()
    }

    fn doc_full_state(&self, d: usize) -> Vec<u8> {
        self.expected(&doc_name(d)).full_state()
    }

    fn request(&self, doc: usize, snap: Snap, sv: Sv, timeout: Timeout) -> CompactRequest {
        let other = (doc + 1) % DOCS;
        let snapshot = match snap {
            Snap::None => None,
            Snap::Garbage => Some(vec![0xff, 0xff, 0xff, 0x01, 0x02]),
            Snap::Empty => Some(Vec::new()),
            Snap::Forged => {
                // Valid Yjs that no writer ever sent: content from another client, plus the
                // document's own content so it looks like a newer snapshot.
                let evil = Replica::new(7_777_777 + doc as u64);
                evil.apply(&self.doc_full_state(doc));
                evil.append("EVIL");
                evil.delete_front(2);
                Some(evil.full_state())
            }
            Snap::Stale => Some(
                self.stale
                    .get(&doc)
                    .cloned()
                    .unwrap_or_else(|| Replica::new(5).full_state()),
            ),
            Snap::OtherDoc => Some(self.doc_full_state(other)),
            Snap::Huge => Some(vec![0u8; MAX_UPDATE + 1]),
        };
        let state_vector = match sv {
            Sv::None => None,
            Sv::Garbage => Some(vec![0xff, 0xff, 0xff]),
            Sv::Empty => Some(Vec::new()),
            Sv::Foreign => Some(self.expected(&doc_name(other)).state_vector()),
            // A state vector that claims a million clients.
            Sv::Huge => Some(vec![0xc0, 0x84, 0x3d]),
        };
        CompactRequest {
            document_id: doc_name(doc),
            snapshot,
            state_vector,
            peer_timeout: timeout.duration(),
        }
    }
}

trait NowForTest {
    fn now_millis_for_test(&self) -> u64;
}

impl NowForTest for ManualClock {
    fn now_millis_for_test(&self) -> u64 {
        use replicate_actors::Clock;
        self.now_millis()
    }
}

/// Whether the request carries input the server must refuse.
fn is_bad(req: &CompactRequest) -> bool {
    let bad_snap = req
        .snapshot
        .as_ref()
        .is_some_and(|s| s.is_empty() || s.len() > MAX_UPDATE || s[0] == 0xff);
    let bad_sv = req
        .state_vector
        .as_ref()
        .is_some_and(|s| s.first() == Some(&0xff) || s.first() == Some(&0xc0));
    bad_snap || bad_sv
}

/// Every delta seq a fresh reader from 0 gets, and its replicas.
async fn fresh_read(r: &Replicate, limit: usize) -> (BTreeSet<u64>, Peer) {
    let mut p = Peer::new("fresh", 100_000);
    let seen = p.sync(r, C, limit).await;
    let set: BTreeSet<u64> = seen.iter().copied().collect();
    assert_eq!(set.len(), seen.len(), "a delta came twice: {seen:?}");
    (set, p)
}

fn check_holds(model: &Model, peer: &mut Peer, what: &str) {
    for d in 0..DOCS {
        let name = doc_name(d);
        let expected = model.expected(&name);
        let got = peer.replica(&name);
        assert!(
            got.contains(&expected),
            "{what}: {name} lacks answered writes: has {:?}, expected {:?}",
            got.sv(),
            expected.sv()
        );
        assert!(
            expected.contains(got),
            "{what}: {name} holds content no write sent: has {:?}, expected {:?}",
            got.sv(),
            expected.sv()
        );
        assert_eq!(got.text(), expected.text(), "{what}: {name} text");
    }
}

async fn check_recovery(r: &Replicate, model: &Model, what: &str) {
    let empty = StateVector::default().encode_v1();
    for d in 0..DOCS {
        let name = doc_name(d);
        let got = r
            .recovery(C, &empty, Some(&name))
            .await
            .expect("recovery answers");
        let replica = Replica::new(888_888);
        if !got.update.is_empty() {
            replica.apply(&got.update);
        }
        let expected = model.expected(&name);
        assert!(
            replica.contains(&expected) && expected.contains(&replica),
            "{what}: recovery of {name}: {:?} vs expected {:?}",
            replica.sv(),
            expected.sv()
        );
        assert_eq!(
            replica.text(),
            expected.text(),
            "{what}: recovery text {name}"
        );
    }
}

/// The live deltas the store serves from 0.
async fn live_now(r: &Replicate) -> BTreeSet<u64> {
    fresh_read(r, 1000).await.0
}

/// What one operation did, for the checks after a group.
enum Done {
    Nothing,
    Wrote(u64, String, Vec<u8>),
    Acked(String, u64),
    Compacted {
        doc: String,
        timeout_ms: u64,
        removed: u64,
    },
}

/// Runs `op` against `r` without touching the model (for groups run at once).
async fn run_one(
    r: &Replicate,
    op: &Op,
    update: Option<Vec<u8>>,
    req: Option<CompactRequest>,
    ack: Option<(String, u64)>,
) -> Done {
    match op {
        Op::Write { doc, delete, .. } => {
            let bytes = update.expect("update");
            let name = doc_name(*doc);
            let w = write(&name, bytes.clone());
            let answer = if *delete {
                r.delete(C, w).await
            } else {
                r.update(C, w).await
            };
            let written = answer.expect("an honest write is answered");
            Done::Wrote(written.seq, name, bytes)
        }
        Op::Ack { .. } => {
            let (peer, seq) = ack.expect("ack");
            match r.ack(C, &peer, seq).await {
                Ok(_) => Done::Acked(peer, seq),
                Err(Error::AckAhead { .. }) => Done::Nothing,
                Err(e) => panic!("ack {peer} {seq}: {e:?}"),
            }
        }
        Op::Compact { timeout, .. } => {
            let req = req.expect("request");
            let doc = req.document_id.clone();
            let bad = is_bad(&req);
            let req_empty_sv = req.state_vector.as_ref().is_some_and(Vec::is_empty);
            match r.compact(C, req).await {
                Ok(c) => {
                    assert!(!bad, "a bad compaction request was accepted");
                    Done::Compacted {
                        doc,
                        timeout_ms: timeout.millis(),
                        removed: c.removed,
                    }
                }
                Err(e) => {
                    let empty_sv = req_empty_sv;
                    assert!(bad || empty_sv, "compaction of {doc} failed: {e:?}");
                    Done::Nothing
                }
            }
        }
        Op::FreshRead { limit } => {
            // Concurrent with writes: only its own consistency is checked (Peer::sync).
            let mut p = Peer::new("fresh-group", 200_000);
            p.sync(r, C, *limit).await;
            Done::Nothing
        }
        _ => Done::Nothing,
    }
}

async fn step(r: &Replicate, m: &mut Model, op: Op) {
    match op {
        Op::Write {
            doc,
            writer,
            text,
            delete,
        } => {
            let w = &m.writers[doc][writer];
            let bytes = if delete {
                w.delete_front(1)
            } else {
                w.append(&text)
            };
            let name = doc_name(doc);
            let written = if delete {
                r.delete(C, write(&name, bytes.clone())).await
            } else {
                r.update(C, write(&name, bytes.clone())).await
            }
            .expect("an honest write is answered");
            assert_eq!(written.seq, m.head() + 1, "seq gap");
            m.log.insert(written.seq, (name.clone(), bytes));
            m.live.insert(written.seq, name.clone());
            if !m.stale.contains_key(&doc) {
                m.stale.insert(doc, m.expected(&name).full_state());
            }
        }
        Op::Sync { peer, limit } => {
            let mut p = std::mem::replace(&mut m.peers[peer], Peer::new("tmp", 0));
            p.sync(r, C, limit).await;
            assert_eq!(p.cursor, m.head());
            check_holds(m, &mut p, &format!("peer {peer} after sync"));
            m.peers[peer] = p;
        }
        Op::Ack { peer, kind, k } => {
            let id = m.peers[peer].id.clone();
            let cursor = m.peers[peer].cursor;
            let head = m.head();
            let seq = match kind {
                0 => cursor,
                1 => cursor.saturating_sub(k + 1),
                2 => head + 1 + k,
                _ => (cursor + k + 1).min(head),
            };
            let answer = r.ack(C, &id, seq).await;
            if seq > head {
                assert!(
                    matches!(answer, Err(Error::AckAhead { .. })),
                    "ack {seq} above head {head}: {answer:?}"
                );
            } else {
                let now = m.clock.now_millis_for_test();
                let e = m.acks.entry(id.clone()).or_insert((0, 0));
                e.0 = e.0.max(seq);
                e.1 = e.1.max(now);
                assert_eq!(answer.expect("ack answers"), e.0, "ack of {id}");
            }
        }
        Op::Advance(ms) => m.clock.advance(ms),
        Op::Compact {
            doc,
            snap,
            sv,
            timeout,
        } => {
            let req = m.request(doc, snap, sv, timeout);
            let bad = is_bad(&req);
            let name = doc_name(doc);
            let before = live_now(r).await;
            assert_eq!(
                before,
                m.live.keys().copied().collect(),
                "live before compaction"
            );
            let answer = r.compact(C, req.clone()).await;
            if bad || (matches!(sv, Sv::Empty) && answer.is_err()) {
                // (An empty state vector may be refused: it is not a v1 state vector.)
                match &answer {
                    Err(Error::InvalidYjs { .. }) | Err(Error::TooLarge { .. }) => {}
                    other => panic!("bad request {snap:?}/{sv:?} answered {other:?}"),
                }
                assert_eq!(
                    live_now(r).await,
                    before,
                    "a refused compaction deleted deltas"
                );
                return;
            }
            let got = answer.unwrap_or_else(|e| panic!("compaction {snap:?}/{sv:?}: {e:?}"));
            let min = m.min_active(timeout.millis());
            let doc_live: Vec<u64> = m
                .live
                .iter()
                .filter(|(_, d)| **d == name)
                .map(|(s, _)| *s)
                .collect();
            let deletable: Vec<u64> = doc_live
                .iter()
                .copied()
                .filter(|s| min.is_none_or(|min| *s < min))
                .collect();
            let after = live_now(r).await;
            let actually: Vec<u64> = before.difference(&after).copied().collect();
            assert_eq!(
                actually, deletable,
                "compaction of {name} (timeout {timeout:?}, min active {min:?}, acks {:?}, now {}) \
                 deleted {actually:?}, the rule allows exactly {deletable:?}",
                m.acks,
                m.clock.now_millis_for_test()
            );
            assert_eq!(got.removed, actually.len() as u64, "removed count");
            assert_eq!(
                got.retained,
                (doc_live.len() - actually.len()) as u64,
                "retained count"
            );
            let last_write = m
                .log
                .iter()
                .filter(|(_, (d, _))| *d == name)
                .map(|(s, _)| *s)
                .next_back()
                .unwrap_or(0);
            assert_eq!(got.snapshot_seq, last_write, "snapshotSeq");
            for s in &actually {
                m.live.remove(s);
            }
        }
        Op::FreshRead { limit } => {
            let (seen, mut p) = fresh_read(r, limit).await;
            assert_eq!(
                seen,
                m.live.keys().copied().collect(),
                "fresh reader's deltas"
            );
            check_holds(m, &mut p, "fresh reader");
        }
        Op::Together(ops) => {
            // Prepare every input from the model first, then run them all at once.
            let now = m.clock.now_millis_for_test();
            let mut prepared = Vec::new();
            let mut bound: HashMap<u64, Option<u64>> = HashMap::new();
            for op in &ops {
                let mut update = None;
                let mut req = None;
                let mut ack = None;
                match op {
                    Op::Write {
                        doc,
                        writer,
                        text,
                        delete,
                    } => {
                        let w = &m.writers[*doc][*writer];
                        update = Some(if *delete {
                            w.delete_front(1)
                        } else {
                            w.append(text)
                        });
                    }
                    Op::Ack { peer, kind, k } => {
                        let cursor = m.peers[*peer].cursor;
                        let head = m.head();
                        let seq = match kind {
                            0 => cursor,
                            1 => cursor.saturating_sub(k + 1),
                            2 => head + 1 + k,
                            _ => (cursor + k + 1).min(head),
                        };
                        ack = Some((m.peers[*peer].id.clone(), seq));
                    }
                    Op::Compact {
                        doc,
                        snap,
                        sv,
                        timeout,
                    } => {
                        req = Some(m.request(*doc, *snap, *sv, *timeout));
                        bound.insert(timeout.millis(), None);
                    }
                    _ => {}
                }
                prepared.push((op.clone(), update, req, ack));
            }
            // Peers active at the start stay active (the clock stands still); their acks may
            // rise during the group, peers that come back may hold back more: the loosest
            // correct rule is the lowest final ack over the peers active at the start.
            let active_at_start: HashMap<u64, Vec<String>> = bound
                .keys()
                .map(|t| {
                    let ids = m
                        .acks
                        .iter()
                        .filter(|(_, (_, seen))| now.saturating_sub(*seen) < *t)
                        .map(|(id, _)| id.clone())
                        .collect();
                    (*t, ids)
                })
                .collect();
            let before = live_now(r).await;
            let runs = prepared
                .into_iter()
                .map(
                    |(op, update, req, ack)| async move { run_one(r, &op, update, req, ack).await },
                );
            let done = join_all(runs).await;
            let mut compacted = Vec::new();
            for d in done {
                match d {
                    Done::Wrote(seq, name, bytes) => {
                        m.log.insert(seq, (name.clone(), bytes));
                        m.live.insert(seq, name);
                    }
                    Done::Acked(peer, seq) => {
                        let e = m.acks.entry(peer).or_insert((0, 0));
                        e.0 = e.0.max(seq);
                        e.1 = e.1.max(now);
                    }
                    Done::Compacted {
                        doc,
                        timeout_ms,
                        removed,
                    } => compacted.push((doc, timeout_ms, removed)),
                    Done::Nothing => {}
                }
            }
            for (t, ids) in &active_at_start {
                bound.insert(*t, ids.iter().map(|id| m.acks[id].0).min());
            }
            // Seqs are gap-free.
            let seqs: Vec<u64> = m.log.keys().copied().collect();
            assert_eq!(seqs, (1..=seqs.len() as u64).collect::<Vec<_>>(), "seq gap");
            let after = live_now(r).await;
            let gone: Vec<u64> = m
                .live
                .keys()
                .copied()
                .filter(|s| !after.contains(s))
                .collect();
            assert!(
                after.iter().all(|s| m.live.contains_key(s)),
                "an unknown delta appeared"
            );
            for s in &gone {
                let doc = &m.live[s];
                // Some compaction of this document, under its peer timeout, must allow it.
                let allowed = compacted.iter().any(|(d, t, _)| {
                    d == doc && bound.get(t).copied().flatten().is_none_or(|min| *s < min)
                });
                assert!(
                    allowed,
                    "delta {s} of {doc} was deleted at or above the lowest active ack \
                     (bounds {bound:?}, compactions {compacted:?}, before {before:?})"
                );
            }
            for s in &gone {
                m.live.remove(s);
            }
            for d in 0..DOCS {
                let name = doc_name(d);
                if !m.stale.contains_key(&d) && m.log.values().any(|(n, _)| *n == name) {
                    m.stale.insert(d, m.expected(&name).full_state());
                }
            }
        }
    }
}

async fn run(ops: Vec<Op>, postgres: bool) {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut config: Config = config(dir.path());
    config.peer_timeout = Duration::from_millis(TIMEOUT_MS);
    config.max_update_bytes = MAX_UPDATE;
    config.max_page_bytes = 300;
    config.page_bucket_seqs = 4;
    let r = open_with(config, &clock).await;
    let mut m = Model {
        clock: clock.clone(),
        log: BTreeMap::new(),
        live: BTreeMap::new(),
        acks: HashMap::new(),
        writers: (0..DOCS)
            .map(|d| {
                (0..WRITERS)
                    .map(|w| Replica::new(1_000 + (d * WRITERS + w) as u64))
                    .collect()
            })
            .collect(),
        peers: (0..PEERS)
            .map(|p| Peer::new(&format!("peer-{p}"), 10_000 + 100 * p as u64))
            .collect(),
        stale: HashMap::new(),
        postgres,
    };
    for op in ops {
        step(&r, &mut m, op).await;
    }
    // Every peer, from whatever cursor it holds (some far behind compaction), catches up.
    for i in 0..PEERS {
        let mut p = std::mem::replace(&mut m.peers[i], Peer::new("tmp", 0));
        p.sync(&r, C, 3).await;
        check_holds(&m, &mut p, &format!("peer {i} at the end"));
        m.peers[i] = p;
    }
    let (seen, mut p) = fresh_read(&r, 2).await;
    assert_eq!(
        seen,
        m.live.keys().copied().collect(),
        "fresh reader's deltas at the end"
    );
    check_holds(&m, &mut p, "fresh reader at the end");
    check_recovery(&r, &m, "end").await;
    let _ = m.postgres;
    r.close(Duration::from_secs(5)).await.unwrap();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 96, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_compactions_and_acks_lose_nothing(ops in proptest::collection::vec(op(), 5..60)) {
        actix::System::new().block_on(run(ops, false));
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn hostile_compactions_and_acks_lose_nothing_on_postgres(ops in proptest::collection::vec(op(), 5..60)) {
        if common::use_postgres("hostile_compactions_and_acks_lose_nothing_on_postgres") {
            actix::System::new().block_on(run(ops, true));
        }
    }
}

/// A valid client snapshot that claims content no writer sent must not reach any reader, and
/// the answer must not pretend it merged it.
#[actix_rt::test]
async fn a_forged_client_snapshot_adds_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let r = open(dir.path(), &clock).await;
    let w = Replica::new(1);
    let a = w.append("hello");
    r.insert(C, write("d", a.clone())).await.unwrap();
    let evil = Replica::new(2);
    evil.apply(&a);
    evil.append(" EVIL");
    let mut req = CompactRequest::document("d");
    req.snapshot = Some(evil.full_state());
    req.state_vector = Some(evil.state_vector());
    let c = r
        .compact(C, req)
        .await
        .expect("a valid snapshot is accepted (and ignored)");
    assert_eq!((c.removed, c.snapshot_seq), (1, 1));
    let mut p = Peer::new("p", 50);
    p.sync(&r, C, 10).await;
    assert_eq!(p.replica("d").text(), "hello");
    let rec = r
        .recovery(C, &StateVector::default().encode_v1(), Some("d"))
        .await
        .unwrap();
    let doc = yrs::Doc::new();
    doc.transact_mut()
        .apply_update(Update::decode_v1(&rec.update).unwrap())
        .unwrap();
    let sv = doc.transact().state_vector();
    assert_eq!(
        sv.get(&yrs::block::ClientID::new(2)),
        0,
        "the forged client's content reached the snapshot"
    );
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// A peer that acks, vanishes past the peer timeout, lets compaction delete what it had not
/// read, then comes back with its old cursor and an old ack, gets the snapshot.
#[actix_rt::test]
async fn a_peer_back_after_the_timeout_gets_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let r = open(dir.path(), &clock).await;
    let w = Replica::new(1);
    let mut slow = Peer::new("slow", 50);
    r.insert(C, write("d", w.append("a"))).await.unwrap();
    slow.sync(&r, C, 10).await;
    slow.ack(&r, C).await;
    for s in ["b", "c", "d"] {
        r.update(C, write("d", w.append(s))).await.unwrap();
    }
    // Held back while the slow peer is active.
    let c = r.compact(C, CompactRequest::document("d")).await.unwrap();
    assert_eq!(c.removed, 0, "seq 1 is the slow peer's ack: kept");
    clock.advance(PEER_TIMEOUT.as_millis() as u64);
    let c = r.compact(C, CompactRequest::document("d")).await.unwrap();
    assert_eq!(c.removed, 4);
    // Back with an ack below what was deleted: accepted, and it holds back nothing now gone.
    assert_eq!(r.ack(C, "slow", 1).await.unwrap(), 1);
    slow.sync(&r, C, 1).await;
    assert_eq!(slow.replica("d").text(), "abcd");
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// Many peer ids: past the per-collection limit a new peer is refused (503), known peers still
/// ack, and compaction still works.
#[actix_rt::test]
async fn peers_past_the_limit_are_refused_and_known_ones_still_ack() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let mut cfg = config(dir.path());
    cfg.max_peers_per_collection = 50;
    let r = open_with(cfg, &clock).await;
    let w = Replica::new(1);
    r.insert(C, write("d", w.append("a"))).await.unwrap();
    for i in 0..50 {
        r.ack(C, &format!("p{i}"), 1).await.unwrap();
    }
    let refused = r.ack(C, "p-new", 1).await;
    assert!(
        matches!(refused, Err(Error::Overloaded { .. })),
        "{refused:?}"
    );
    assert_eq!(r.ack(C, "p7", 0).await.unwrap(), 1, "acks never go back");
    let stats = r.collection_stats(C).await.unwrap();
    assert_eq!(stats.peers, 50);
    r.update(C, write("d", w.append("b"))).await.unwrap();
    let c = r.compact(C, CompactRequest::document("d")).await.unwrap();
    assert_eq!(c.removed, 0, "every peer acked only seq 1");
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// Writes, acks and compactions of one document racing, many rounds: nothing answered is ever
/// missing for a reader from 0 nor for a reader holding an old cursor.
#[actix_rt::test]
async fn compactions_racing_writes_and_acks_lose_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let r = open(dir.path(), &clock).await;
    let writers: Vec<Replica> = (0..4).map(|i| Replica::new(10 + i)).collect();
    let expected = Replica::new(99);
    let mut old = Peer::new("old", 500);
    for round in 0..30u64 {
        let writes = writers.iter().enumerate().map(|(i, w)| {
            let bytes = w.append(&format!("{round}-{i};"));
            let r = &r;
            async move {
                r.update(C, write("d", bytes.clone())).await.expect("write");
                bytes
            }
        });
        let compacts = (0..3).map(|k| {
            let r = &r;
            async move {
                let mut req = CompactRequest::document("d");
                req.peer_timeout = Some(Duration::from_millis(k * 30_000));
                r.compact(C, req).await.expect("compaction")
            }
        });
        let acks = (0..3).map(|k| {
            let r = &r;
            async move {
                let _ = r.ack(C, &format!("a{k}"), round * 4 / (k + 1)).await;
            }
        });
        let (ws, _, _) = futures::join!(join_all(writes), join_all(compacts), join_all(acks));
        for b in ws {
            expected.apply(&b);
        }
        clock.advance(20_000);
        if round % 7 == 0 {
            old.sync(&r, C, 2).await;
        }
        let (_, mut fresh) = fresh_read(&r, 3).await;
        let got = fresh.replica("d");
        assert!(
            got.contains(&expected),
            "round {round}: a fresh reader lacks writes"
        );
        assert_eq!(got.text(), expected.text());
    }
    old.sync(&r, C, 2).await;
    assert!(old.replica("d").contains(&expected));
    assert_eq!(old.replica("d").text(), expected.text());
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// A handle on `dir` holding four writes to `d` (seqs 1–4) and peer `p`'s ack of 2, made at
/// the clock's current millisecond.
async fn four_writes_and_an_ack_of_2(dir: &std::path::Path) -> Replicate {
    let clock = ManualClock::new(1_000_000);
    let r = open(dir, &clock).await;
    let w = Replica::new(1);
    for s in ["a", "b", "c", "d"] {
        r.update(C, write("d", w.append(s))).await.unwrap();
    }
    r.ack(C, "p", 2).await.unwrap();
    r
}

/// A peer seen exactly `peerTimeout` ago (or, with `peerTimeout: 0`, in this very
/// millisecond): one engine calls it inactive and the other active, so the same request
/// deletes different deltas on sled and on PostgreSQL.
async fn peer_timeout_boundary_is_the_same_on_every_engine() {
    let dir = tempfile::tempdir().unwrap();
    let r = four_writes_and_an_ack_of_2(dir.path()).await;
    // Same millisecond, peerTimeout 0: "seen within 0 ms" holds for no peer.
    let mut req = CompactRequest::document("d");
    req.peer_timeout = Some(Duration::ZERO);
    let c = r.compact(C, req).await.unwrap();
    let live = live_now(&r).await;
    assert_eq!(
        (c.removed, live.len()),
        (4, 0),
        "peerTimeout 0 with the only peer seen at this millisecond: {c:?}, still stored {live:?}"
    );
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// When the commit keeps deltas the plan meant to delete (an active peer the actor did not
/// count), the answer and the actor's counters must say what is still stored.
async fn retained_is_what_the_commit_kept() {
    let dir = tempfile::tempdir().unwrap();
    let r = four_writes_and_an_ack_of_2(dir.path()).await;
    let mut req = CompactRequest::document("d");
    req.peer_timeout = Some(Duration::ZERO);
    let c = r.compact(C, req).await.unwrap();
    let live = live_now(&r).await;
    let stats = r.collection_stats(C).await.unwrap();
    let page = r
        .stream(
            C,
            replicate_actors::StreamRequest {
                size_threshold: Some(0),
                ..replicate_actors::StreamRequest::after(4)
            },
        )
        .await
        .unwrap();
    let problems = [
        (c.removed + c.retained != 4).then(|| format!("removed + retained != 4: {c:?}")),
        (c.retained != live.len() as u64)
            .then(|| format!("answer {c:?}, but still stored: {live:?}")),
        (!live.is_empty() && stats.retained_bytes == 0)
            .then(|| format!("counters say nothing retained: {stats:?}")),
        (!live.is_empty() && page.compact.as_deref() != Some("d")).then(|| {
            format!(
                "sizeThreshold 0 hint is {:?} with deltas {live:?} stored",
                page.compact
            )
        }),
    ];
    let problems: Vec<String> = problems.into_iter().flatten().collect();
    assert!(problems.is_empty(), "{problems:#?}");
    r.close(Duration::from_secs(5)).await.unwrap();
}

/// Two nodes on one database: a peer acks on node B; node A (which never heard of it)
/// compacts. The commit keeps the peer's deltas; A's answer and counters must say so.
#[actix_rt::test]
async fn an_ack_on_another_node_holds_back_and_is_reported_on_postgres() {
    if !common::use_postgres("an_ack_on_another_node_holds_back_and_is_reported_on_postgres") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let a = open(dir.path(), &clock).await;
    let b = open(dir.path(), &clock).await;
    let w = Replica::new(1);
    for s in ["a", "b", "c", "d"] {
        a.update(C, write("d", w.append(s))).await.unwrap();
    }
    b.ack(C, "p", 2).await.unwrap();
    let c = a.compact(C, CompactRequest::document("d")).await.unwrap();
    let live = live_now(&a).await;
    assert_eq!(
        live.iter().copied().collect::<Vec<_>>(),
        vec![2, 3, 4],
        "the ack on B holds back"
    );
    let stats = a.collection_stats(C).await.unwrap();
    let page = a
        .stream(
            C,
            replicate_actors::StreamRequest {
                size_threshold: Some(0),
                ..replicate_actors::StreamRequest::after(4)
            },
        )
        .await
        .unwrap();
    let problems = [
        ((c.removed, c.retained) != (1, 3)).then(|| format!("answer {c:?}, 3 still stored")),
        (stats.retained_bytes == 0).then(|| format!("A's counters: nothing retained: {stats:?}")),
        (page.compact.as_deref() != Some("d"))
            .then(|| format!("sizeThreshold 0 hint on A is {:?}", page.compact)),
    ];
    let problems: Vec<String> = problems.into_iter().flatten().collect();
    assert!(problems.is_empty(), "{problems:#?}");
    a.close(Duration::from_secs(5)).await.unwrap();
    b.close(Duration::from_secs(5)).await.unwrap();
}

on_every_engine!(
    peer_timeout_boundary_is_the_same_on_every_engine,
    retained_is_what_the_commit_kept,
);

/// Two nodes on one database: acks never go back. A peer acks 3 on A, 4 on B, then (a late,
/// out-of-order retry) 2 on A: its lastSyncedSeq is 4 wherever it asks, and after a restart.
#[actix_rt::test]
async fn acks_never_go_back_across_nodes_on_postgres() {
    if !common::use_postgres("acks_never_go_back_across_nodes_on_postgres") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let clock = ManualClock::new(1_000_000);
    let a = open(dir.path(), &clock).await;
    let b = open(dir.path(), &clock).await;
    let w = Replica::new(1);
    for s in ["a", "b", "c", "d"] {
        a.update(C, write("d", w.append(s))).await.unwrap();
    }
    assert_eq!(a.ack(C, "p", 3).await.unwrap(), 3);
    assert_eq!(b.ack(C, "p", 4).await.unwrap(), 4);
    let late = a.ack(C, "p", 2).await.unwrap();
    a.close(Duration::from_secs(5)).await.unwrap();
    b.close(Duration::from_secs(5)).await.unwrap();
    let c = open(dir.path(), &clock).await;
    let after_restart = c.ack(C, "p", 0).await.unwrap();
    c.close(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        (late, after_restart),
        (4, 4),
        "the peer acked 4 on B; A answered {late} to a late ack of 2, and the store holds \
         {after_restart}"
    );
}
