//! `fanout`: [`WRITERS`] writers push `--rate` writes a second between them over [`DOCS`]
//! documents while M subscribers follow every document from the start, in thirds: long-poll
//! (`stream`), SSE (`events`) and websocket (y-websocket, one socket per document, see
//! [`crate::ws`]). Several writers, so the writer is not what limits the rate.
//!
//! Measures push→delivery latency per kind of subscriber: from the moment a writer starts a
//! push to the moment the subscriber has received and parsed the change. Subscribers apply
//! what they received once they stop ([`Peer::defer_applies`], and see [`crate::ws`]): 200
//! subscribers' yrs applies on the load generator's one thread were what limited the run,
//! not the service. The checks are on the applied replicas, as before. Long-poll and SSE changes carry their
//! seq, matched to the push answered that seq; websocket updates carry none and are matched
//! by the edit key every write sets (see [`crate::ws`]).
//!
//! A prober pushes, every [`PROBE_EVERY`], an edit the service must refuse (maps nested past
//! its limit, under an edit key of their own): content no subscriber may ever hold.
//!
//! Verdict, beyond every scenario's checks (which include every subscriber converging with
//! the server, websocket ones too):
//! - every long-poll and SSE subscriber reached the head;
//! - every websocket subscriber received every answered write;
//! - durable before delivery: every write a websocket subscriber held is, in the collection's
//!   log read from seq 0 at the end, the delta of the seq its push was answered. A delivery may
//!   race the push's HTTP answer, so the order of the two is not judged; what fails is a
//!   socket holding content the log lacks (broadcast of a write that was never committed) or
//!   a write whose push was not answered;
//! - every probe was refused, and no subscriber and no delta of the log holds one.
//!
//! Floor: the same workload through the in-process actors (no HTTP: the SSE and websocket
//! thirds long-poll the actors), for the latency ratios.

use std::collections::{HashMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_rt::task::JoinHandle;
use anyhow::{bail, Result};
use replicate_actors::OperationType;
use serde_json::json;

use super::common::{join, join_peers, spawn_reader, with_latency_floors, Latency, Run, Writes};
use super::{doc_names, params, write_loop, writers, Ctx, ReadStyle, Target};
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::peer::{Peer, Replica, SentUpdates};
use crate::report::Report;
use crate::verify::{self, Check, Ledger, Verdict};
use crate::ws::{self, Expected, Follow, WsSubscriber};

/// Writers sharing `--rate`.
pub const WRITERS: usize = 8;
/// Documents written and followed (each websocket subscriber holds a socket per document).
pub const DOCS: usize = 4;
/// How often the prober pushes an edit that must be refused.
pub const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Nesting of a probe's maps: past the service's default limit of 64.
pub const PROBE_DEPTH: u32 = 100;

const PUSH: &str = "push";
const POLL: &str = "stream (long-poll)";
const SSE: &str = "events (SSE)";
const WS: &str = "websocket (connect+sync)";
const DELIVERY_POLL: &str = "delivery: push→long-poll";
const DELIVERY_SSE: &str = "delivery: push→SSE";
const DELIVERY_WS: &str = "delivery: push→websocket";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    with_latency_floors(
        ctx,
        |b, d, s| async move { workload(ctx, &b, d, s).await },
        &[DELIVERY_POLL, DELIVERY_SSE, DELIVERY_WS],
        &[Latency::P50, Latency::P99],
        "same writers, rate and subscribers, no HTTP",
    )
    .await
}

async fn workload(
    ctx: &Ctx,
    backend: &Backend,
    duration: Duration,
    suffix: &str,
) -> Result<Report> {
    let metrics = Metrics::new();
    let name = format!("fanout{suffix}");
    let c = ctx.collection(&name);
    let docs = Rc::new(doc_names(DOCS));
    let ledger = Ledger::default();
    let target = Target::default();
    let expected = Expected::default();
    let mut run = Run::start(name, backend, &metrics, &[PUSH, POLL, SSE, WS]);
    let follow = Rc::new(Follow {
        collection: c.clone(),
        docs: docs.clone(),
        expected: expected.clone(),
        deadline: run.started + duration + ctx.drain(),
        synced: Rc::default(),
        metrics: metrics.clone(),
        op: WS,
        sent: SentUpdates::default(),
    });
    let subscribers = Subscribers::start(ctx, backend, &target, &follow);
    subscribers.listening(&follow).await;

    let deadline = Instant::now() + duration;
    let per_writer = ctx.opts.rate / WRITERS as f64;
    let writes = Writes::new(&docs, &ledger, deadline, PUSH).rate(per_writer);
    let writing = writers(ctx, backend, &c, 0, WRITERS, &metrics)
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            p.sent = Some(follow.sent.clone());
            actix_rt::spawn(write_loop(p, writes.staggered(i, WRITERS)))
        })
        .collect();
    let prober = ctx.peer(50, &c, backend, &metrics);
    let probing = actix_rt::spawn(probe_loop(prober, docs.clone(), deadline));
    join_peers(writing).await?;
    let probes = join(probing, "prober").await?;
    target.set(ledger.head());
    expected.set(ledger.keys_by_doc());
    let done = subscribers.join().await?;
    run.stop();

    done.sample(&ledger, &metrics);
    let verdict = done.verdict(ctx, backend, &c, &ledger, &probes).await;
    let early = done.before_answer(&ledger);
    let p = params(&[
        ("subscribers", json!(ctx.opts.subscribers)),
        ("websocket", json!(done.sockets.len())),
        ("writers", json!(WRITERS)),
        ("rate", json!(ctx.opts.rate)),
        ("documents", json!(DOCS)),
        ("refusedProbes", json!(probes.len())),
    ]);
    let mut report = run.report(p, verdict);
    report.notes.extend(early);
    Ok(report)
}

/// How a subscriber follows the collection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Poll,
    Sse,
    Ws,
}

impl Kind {
    /// Subscriber `i`'s kind: thirds, interleaved.
    fn of(i: usize) -> Kind {
        match i % 3 {
            0 => Kind::Poll,
            1 => Kind::Sse,
            _ => Kind::Ws,
        }
    }

    /// How a reader of this kind reads in-process (no HTTP: SSE and websocket long-poll).
    fn style(self) -> ReadStyle {
        match self {
            Kind::Poll => ReadStyle::long_poll(),
            Kind::Sse | Kind::Ws => ReadStyle::sse(),
        }
    }

    fn op(self) -> &'static str {
        match self {
            Kind::Poll => POLL,
            Kind::Sse => SSE,
            Kind::Ws => WS,
        }
    }

    fn delivery(self) -> &'static str {
        match self {
            Kind::Poll => DELIVERY_POLL,
            Kind::Sse => DELIVERY_SSE,
            Kind::Ws => DELIVERY_WS,
        }
    }
}

/// The subscribers while they run.
struct Subscribers {
    /// Long-poll and SSE readers (and, in-process, the websocket third).
    readers: Vec<(Kind, JoinHandle<Peer>)>,
    sockets: Vec<JoinHandle<WsSubscriber>>,
}

/// The subscribers once stopped.
struct Done {
    readers: Vec<(Kind, Peer)>,
    sockets: Vec<WsSubscriber>,
}

impl Subscribers {
    /// Starts `--subscribers` peers in thirds (see [`Kind::of`]); over HTTP the websocket
    /// third opens its sockets, in-process it long-polls the actors.
    fn start(ctx: &Ctx, backend: &Backend, target: &Target, follow: &Rc<Follow>) -> Subscribers {
        let mut readers = Vec::new();
        let mut sockets = Vec::new();
        for i in 0..ctx.opts.subscribers {
            let mut p = ctx.peer(100 + i as u64, &follow.collection, backend, &follow.metrics);
            p.track_receipts = true;
            p.defer_applies = true;
            let kind = Kind::of(i);
            match (kind, p.backend().clone()) {
                (Kind::Ws, Backend::Http(http)) => {
                    sockets.push(actix_rt::spawn(ws::subscribe(p, http, follow.clone())));
                }
                (kind, _) => {
                    let reader = spawn_reader(p, kind.style(), target, follow.deadline, kind.op());
                    readers.push((kind, reader));
                }
            }
        }
        Subscribers { readers, sockets }
    }

    /// Waits (up to 10 s) until every websocket has synced once, then 300 ms more for the
    /// long polls and event streams to be open: writes start once everybody listens.
    async fn listening(&self, follow: &Follow) {
        let sockets = self.sockets.len() * follow.docs.len();
        let until = Instant::now() + Duration::from_secs(10);
        while follow.synced.get() < sockets && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Waits for every subscriber to stop.
    ///
    /// # Errors
    /// If a subscriber's task failed.
    async fn join(self) -> Result<Done> {
        let mut readers = Vec::with_capacity(self.readers.len());
        for (kind, handle) in self.readers {
            let mut peer = join(handle, "subscriber").await?;
            peer.apply_deferred()?;
            readers.push((kind, peer));
        }
        let mut sockets = Vec::with_capacity(self.sockets.len());
        for handle in self.sockets {
            sockets.push(join(handle, "websocket subscriber").await?);
        }
        Ok(Done { readers, sockets })
    }
}

impl Done {
    /// Every peer, websocket subscribers included.
    fn peers(&self) -> Vec<&Peer> {
        let readers = self.readers.iter().map(|(_, p)| p);
        readers
            .chain(self.sockets.iter().map(|s| &s.peer))
            .collect()
    }

    /// Samples push→delivery latency per kind: by seq for readers, by edit key for sockets.
    fn sample(&self, ledger: &Ledger, metrics: &Metrics) {
        let started = ledger.started_by_seq();
        for (kind, p) in &self.readers {
            for (seq, at) in &p.seen.receipts {
                if let Some(t0) = started.get(seq) {
                    metrics.sample(kind.delivery(), micros(*at, *t0));
                }
            }
        }
        let by_key = ledger.by_key();
        for s in &self.sockets {
            for r in &s.receipts {
                if let Some(w) = by_key.get(&r.key) {
                    metrics.sample(DELIVERY_WS, micros(r.at, w.started));
                }
            }
        }
    }

    /// How many websocket deliveries came before their push's answer, as a note: the
    /// service answers a write once it is durable and broadcasts it from the log, so the two
    /// race, and neither order says anything is wrong (none when there are no sockets).
    fn before_answer(&self, ledger: &Ledger) -> Option<String> {
        if self.sockets.is_empty() {
            return None;
        }
        let by_key = ledger.by_key();
        let receipts = self.sockets.iter().flat_map(|s| &s.receipts);
        let (mut early, mut all) = (0usize, 0usize);
        for r in receipts {
            if let Some(w) = by_key.get(&r.key) {
                all += 1;
                early += usize::from(r.at < w.answered);
            }
        }
        Some(format!(
            "websocket: {early} of {all} deliveries came before the writer had its answer"
        ))
    }

    async fn verdict(
        &self,
        ctx: &Ctx,
        backend: &Backend,
        c: &str,
        ledger: &Ledger,
        probes: &[Probe],
    ) -> Verdict {
        let mut verdict = Verdict::default();
        let readers: Vec<&Peer> = self.readers.iter().map(|(_, p)| p).collect();
        let head = ledger.head();
        verdict.checks.push(verify::reached_head(
            "long-poll and SSE subscriber",
            &readers,
            head,
            &[],
        ));
        // Websocket subscribers have no seqs to cover; they converge like every peer.
        verdict
            .checks
            .push(verify::seqs_contiguous(ledger, 0, "writers"));
        verdict
            .checks
            .push(verify::readers_covered(&readers, ledger));
        let converged = verify::converged(backend, c, &self.peers(), ledger).await;
        verdict.checks.extend(converged);
        if !self.sockets.is_empty() {
            verdict.checks.push(received_all(&self.sockets, ledger));
        }
        let until = Instant::now() + ctx.drain();
        match durable_log(backend, c, until).await {
            Ok(log) => {
                if !self.sockets.is_empty() {
                    verdict
                        .checks
                        .push(durable_before_delivery(&self.sockets, ledger, &log));
                }
                verdict
                    .checks
                    .push(probes_refused(probes, &self.peers(), &log));
            }
            Err(e) => verdict.check("the log read from seq 0", false, format!("{e:#}")),
        }
        verdict
    }
}

fn micros(at: Instant, started: Instant) -> u64 {
    at.saturating_duration_since(started).as_micros() as u64
}

/// Every websocket subscriber received every answered write.
fn received_all(sockets: &[WsSubscriber], ledger: &Ledger) -> Check {
    let writes = ledger.writes();
    let mut short = Vec::new();
    for s in sockets {
        let held: HashSet<&str> = s.receipts.iter().map(|r| r.key.as_str()).collect();
        let missing = writes.iter().filter(|w| !held.contains(w.key.as_str()));
        let missing: Vec<&str> = missing.map(|w| w.key.as_str()).collect();
        if let Some(first) = missing.first() {
            short.push(format!(
                "{} lacks {} (e.g. {first})",
                s.peer.name,
                missing.len()
            ));
        }
    }
    let receipts: usize = sockets.iter().map(|s| s.receipts.len()).sum();
    let reconnects: u64 = sockets.iter().map(|s| s.reconnects).sum();
    Check {
        name: "every websocket subscriber received every answered write".into(),
        ok: short.is_empty() && !writes.is_empty(),
        detail: match short.first() {
            Some(first) => format!("{} of {} short; first: {first}", short.len(), sockets.len()),
            None => format!(
                "{} subscribers × {} writes: {receipts} receipts, {reconnects} reconnects",
                sockets.len(),
                writes.len()
            ),
        },
    }
}

/// Every write a websocket subscriber held is in `log` (edit key → seq of its delta) at the
/// seq its push was answered, and every answered write is there too.
fn durable_before_delivery(
    sockets: &[WsSubscriber],
    ledger: &Ledger,
    log: &HashMap<String, u64>,
) -> Check {
    let answered = ledger.by_key();
    let mut wrong = Vec::new();
    for w in answered.values() {
        if log.get(&w.key) != Some(&w.seq) {
            wrong.push(format!(
                "{} answered seq {} is not that delta",
                w.key, w.seq
            ));
        }
    }
    let mut delivered = 0usize;
    for s in sockets {
        for r in &s.receipts {
            delivered += 1;
            let why = match (log.get(&r.key), answered.get(&r.key)) {
                (None, _) => "is in no delta of the log",
                (Some(_), None) => "was never answered to its writer",
                (Some(seq), Some(w)) if *seq != w.seq => "sits at another seq than answered",
                _ => continue,
            };
            wrong.push(format!("{} held {} which {why}", s.peer.name, r.key));
        }
    }
    Check {
        name: "durable before delivery (websocket: every held write is its answered delta)".into(),
        ok: wrong.is_empty() && delivered > 0,
        detail: match wrong.first() {
            Some(first) => format!("{} wrong; first: {first}", wrong.len()),
            None => format!(
                "{delivered} deliveries, each an answered write at its seq in the log of {} deltas",
                log.len()
            ),
        },
    }
}

/// Every probe was refused, and no peer's replica and no delta of `log` holds one.
fn probes_refused(probes: &[Probe], peers: &[&Peer], log: &HashMap<String, u64>) -> Check {
    let stored: Vec<&Probe> = probes.iter().filter(|p| p.answer.is_ok()).collect();
    let in_log = probes.iter().filter(|p| log.contains_key(&p.key)).count();
    let held = probes
        .iter()
        .flat_map(|probe| peers.iter().map(move |peer| (probe, peer)))
        .filter(|(probe, peer)| {
            let mut docs = peer.documents();
            docs.any(|d| peer.replica(d).is_some_and(|r| r.has_key(&probe.key)))
        })
        .count();
    let refusal = probes.iter().find_map(|p| p.answer.as_ref().err());
    Check {
        name: "refused edits reach nobody (probes)".into(),
        ok: !probes.is_empty() && stored.is_empty() && in_log == 0 && held == 0,
        detail: format!(
            "{} probes: {} stored, {in_log} in the log, {held} held by a subscriber; refusal: {}",
            probes.len(),
            stored.len(),
            refusal.map_or("none", String::as_str)
        ),
    }
}

/// Reads the collection's whole log from seq 0 (no compaction runs in `fanout`: every
/// delta is there) and answers, for each edit key, the seq of the delta that holds it.
///
/// # Errors
/// A failed page, a delta that does not apply, or `until` passing first.
async fn durable_log(backend: &Backend, c: &str, until: Instant) -> Result<HashMap<String, u64>> {
    let mut replicas: HashMap<String, Replica> = HashMap::new();
    let mut keys = HashMap::new();
    let mut cursor = 0;
    loop {
        if Instant::now() >= until {
            bail!("the log read stopped at seq {cursor} when its time ran out");
        }
        let page = backend.stream(c, cursor, 1000, Duration::ZERO).await?;
        for change in &page.changes {
            let replica = replicas
                .entry(change.document_id.clone())
                .or_insert_with(Replica::empty);
            for key in replica.apply_keys(&change.bytes)? {
                keys.insert(key, change.seq);
            }
        }
        if page.changes.is_empty() && !page.has_more {
            return Ok(keys);
        }
        cursor = cursor.max(page.cursor);
    }
}

/// One edit the service must refuse, and what it answered.
struct Probe {
    key: String,
    /// The seq if it was stored (wrong), or the refusal.
    answer: Result<u64, String>,
}

/// Pushes an edit the service must refuse (see [`Peer::refused_edit`]) at once and then
/// every [`PROBE_EVERY`] until `deadline`, to each document in turn.
async fn probe_loop(mut peer: Peer, docs: Rc<Vec<String>>, deadline: Instant) -> Vec<Probe> {
    let mut probes = Vec::new();
    loop {
        let doc = &docs[probes.len() % docs.len()];
        let (update, key) = peer.refused_edit(PROBE_DEPTH);
        let answer = peer
            .backend()
            .write(&peer.collection, OperationType::Update, doc, &update, None)
            .await
            .map_err(|e| format!("{e:#}"));
        probes.push(Probe { key, answer });
        if Instant::now() + PROBE_EVERY >= deadline {
            return probes;
        }
        tokio::time::sleep(PROBE_EVERY).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ws::Receipt;

    fn socket(keys: &[&str]) -> WsSubscriber {
        let at = Instant::now();
        WsSubscriber {
            peer: Peer::new(1, "c", Backend::Offline, Metrics::new(), 1),
            receipts: keys
                .iter()
                .map(|k| Receipt {
                    key: k.to_string(),
                    at,
                })
                .collect(),
            reconnects: 0,
        }
    }

    #[test]
    fn websocket_checks_fail_when_they_should() {
        let ledger = Ledger::default();
        ledger.record(1, "d", "a", Instant::now());
        ledger.record(2, "d", "b", Instant::now());
        let log: HashMap<String, u64> = [("a".to_string(), 1), ("b".to_string(), 2)].into();
        let good = [socket(&["a", "b"])];
        assert!(received_all(&good, &ledger).ok);
        assert!(durable_before_delivery(&good, &ledger, &log).ok);
        // A write that never reached a socket.
        assert!(!received_all(&[socket(&["a"])], &ledger).ok);
        // Content the log lacks; a write never answered; a delta at another seq.
        // (keys a socket held, the log as key → seq)
        type Case<'a> = (&'a [&'a str], &'a [(&'a str, u64)]);
        let cases: [Case; 3] = [
            (&["a", "b", "x"], &[("a", 1), ("b", 2)]),
            (&["a", "b", "x"], &[("a", 1), ("b", 2), ("x", 3)]),
            (&["a", "b"], &[("a", 2), ("b", 1)]),
        ];
        for (held, log) in cases {
            let log = log.iter().map(|(k, s)| (k.to_string(), *s)).collect();
            assert!(
                !durable_before_delivery(&[socket(held)], &ledger, &log).ok,
                "{held:?}"
            );
        }
        // No deliveries at all proves nothing.
        assert!(!durable_before_delivery(&[socket(&[])], &ledger, &log).ok);
    }

    #[test]
    fn a_stored_or_held_probe_fails() {
        let refused = |key: &str| Probe {
            key: key.into(),
            answer: Err("422".into()),
        };
        let log = HashMap::new();
        assert!(probes_refused(&[refused("p")], &[], &log).ok);
        assert!(!probes_refused(&[], &[], &log).ok);
        let stored = Probe {
            key: "p".into(),
            answer: Ok(3),
        };
        assert!(!probes_refused(&[stored], &[], &log).ok);
        let in_log: HashMap<String, u64> = [("p".to_string(), 3)].into();
        assert!(!probes_refused(&[refused("p")], &[], &in_log).ok);
        // A subscriber holding a probe's content.
        let mut prober = Peer::new(2, "c", Backend::Offline, Metrics::new(), 1);
        let (update, key) = prober.refused_edit(3);
        let mut reader = Peer::new(3, "c", Backend::Offline, Metrics::new(), 1);
        reader.know("d").apply(&update).unwrap();
        assert!(!probes_refused(&[refused(&key)], &[&reader], &log).ok);
    }
}
