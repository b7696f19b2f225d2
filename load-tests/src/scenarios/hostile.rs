//! `hostile`: honest peers at work while attackers send every class of issue 7 at the same
//! server. Two phases on one server, each on its own collection: first *quiet* (honest peers
//! only), then *attacked* (the same honest workload, plus attackers). The report compares the
//! honest p99 push and push→delivery latencies of the two phases and judges both phases'
//! honest correctness like every other scenario.
//!
//! The honest workload is a small `mixed`: writers with the odd delete over a few documents,
//! long-poll (acking) and SSE subscribers that record when each change arrives, and compaction
//! every second. The attackers, each one request at a time, as fast as answered:
//!
//! - deep chains ([`craft::nested_maps`]): 10,000 nested maps with the root deleted (422), the
//!   same chain without the delete (422) followed by the root delete alone, and a 60-deep chain
//!   followed by its root delete (both accepted: within the depth bound);
//! - the quadratic update ([`craft::quadratic`] over [`craft::quadratic_base`]): 422;
//! - invalid-parent pairs ([`craft::invalid_parent_pair`]): 200 then 422, a new document each;
//! - op ids: honest writers' *next* op ids (guessed from the ones already answered) used first
//!   on the attacker's own documents (stored, not taken for retries), answered op ids reused on
//!   another document (stored) and on their own document with other bytes (409);
//! - client snapshots on the honest documents' compactions: a delete set covering everything,
//!   or other text at stored ids (ignored: the verdict shows every honest edit still there);
//! - junk `crdtBytes`, malformed JSON and base64 (4xx), made-up HTTP methods (4xx), GETs of
//!   random collection names (200, and no actor started: `/stats` `liveCollections` must not
//!   grow), and request bodies trickled in over about a second (stored when they arrive).
//!
//! Attacks go to the honest collection (on documents of their own), so they share its actor,
//! its stream and its compactions. With several `--target`s the honest peers are spread over
//! them while the attackers, `/healthz`, `/stats` and compactions go to the first node only:
//! "started no actor" and "server alive" are that node's. Everything the server accepts from them is in the
//! attackers' ledger: the collection's seqs must still be contiguous over honest + attack
//! writes, and every honest reader must apply every change the server streams.
//!
//! Verdict: CORRECT when every honest check of both phases holds, every attack got the answer
//! its class should get (never a 5xx, a hang or a crash), and the attacked phase's honest p99
//! push and delivery latencies are within 3× of the quiet phase's (judged in full runs; with
//! `--quick`, what CI runs, the ratio is reported but not judged: it is a speed figure).

use std::cell::{Cell, RefCell};
use std::collections::{BTreeMap, HashSet};
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_rt::task::JoinHandle;
use anyhow::{anyhow, bail, Result};
use awc::http::Method;
use base64::engine::general_purpose::STANDARD as B64;
use base64::Engine as _;
use rand::rngs::StdRng;
use rand::{Rng, RngCore};
use replicate::wire::{CompactBody, WriteBody};
use replicate_actors::craft;
use serde_json::{json, Value};
use yrs::updates::decoder::Decode;
use yrs::{ReadTxn, Transact, Update};

use super::common::{join, join_peers, spawn_reader, write_all, Run, Writes};
use super::{compact_loop, doc_names, params, writers, CompactionRun, Ctx, ReadStyle, Target};
use crate::auth::Credentials;
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::Report;
use crate::verify::{self, Check, Ledger, Verdict};

/// Honest p99 in the attacked phase may be at most this many times the quiet phase's.
const MAX_SLOWDOWN: f64 = 3.0;

/// One phase's operation names.
struct Phase {
    name: &'static str,
    push: &'static str,
    poll: &'static str,
    sse: &'static str,
    delivery: &'static str,
    healthz: &'static str,
}

static QUIET: Phase = Phase {
    name: "quiet",
    push: "push (quiet)",
    poll: "stream (quiet)",
    sse: "events (quiet)",
    delivery: "delivery (quiet)",
    healthz: "healthz (quiet)",
};

static ATTACKED: Phase = Phase {
    name: "attacked",
    push: "push (attacked)",
    poll: "stream (attacked)",
    sse: "events (attacked)",
    delivery: "delivery (attacked)",
    healthz: "healthz (attacked)",
};

const DEEP: &str = "attack: 10k chain, root deleted";
const SPLIT: &str = "attack: 10k chain, then delete";
const SHALLOW: &str = "attack: 60 chain, then delete";
const QUADRATIC: &str = "attack: quadratic update";
const PAIR: &str = "attack: invalid-parent pair";
const OP_PREEMPT: &str = "attack: opId guessed ahead";
const OP_OTHER_DOC: &str = "attack: opId on other doc";
const OP_OTHER_BYTES: &str = "attack: opId, other bytes";
const SNAPSHOT: &str = "attack: client snapshot";
const JUNK: &str = "attack: junk bytes/JSON";
const METHOD: &str = "attack: made-up method";
const UNKNOWN: &str = "attack: GET unknown coll.";
const SLOW: &str = "attack: slow body";

/// Every attack class, for the "each class ran" check.
const ATTACKS: &[&str] = &[
    DEEP,
    SPLIT,
    SHALLOW,
    QUADRATIC,
    PAIR,
    OP_PREEMPT,
    OP_OTHER_DOC,
    OP_OTHER_BYTES,
    SNAPSHOT,
    JUNK,
    METHOD,
    UNKNOWN,
    SLOW,
];

const PROGRESS: &[&str] = &[QUIET.push, ATTACKED.push, QUADRATIC, DEEP, UNKNOWN];

/// Sizes of the honest workload.
struct Sizes {
    writers: usize,
    rate: f64,
    subscribers: usize,
    docs: usize,
}

impl Sizes {
    fn of(ctx: &Ctx) -> Sizes {
        if ctx.opts.quick {
            Sizes {
                writers: 6,
                rate: 25.0,
                subscribers: 8,
                docs: 16,
            }
        } else {
            Sizes {
                writers: 8,
                rate: 20.0,
                subscribers: 24,
                docs: 32,
            }
        }
    }
}

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let base = match (&ctx.backend, &ctx.targets) {
        (Backend::Http(_), Some(targets)) => targets.first(),
        _ => bail!("hostile runs over HTTP only"),
    };
    let raw = Raw::new(base, ctx.credentials.as_ref());
    let metrics = Metrics::new();
    let sizes = Sizes::of(ctx);
    let mut run = Run::start("hostile".into(), &ctx.backend, &metrics, PROGRESS);

    // Quiet: honest peers only.
    let quiet_c = ctx.collection("hostile-quiet");
    let quiet_ledger = Ledger::default();
    let no_attacks = Ledger::default();
    let quiet = honest(
        ctx,
        &raw,
        &quiet_c,
        &QUIET,
        &metrics,
        &sizes,
        &quiet_ledger,
        &no_attacks,
        |_| Vec::new(),
    )
    .await?;

    // Attacked: the same, with every attacker running on the same collection.
    let live_before = raw.live_collections().await;
    let c = ctx.collection("hostile-attacked");
    let ledger = Ledger::default();
    let attack_ledger = Ledger::default();
    let attackers = Attackers {
        raw: raw.clone(),
        c: c.clone(),
        metrics: metrics.clone(),
        ledger: attack_ledger.clone(),
        honest: ledger.clone(),
        unexpected: Rc::new(RefCell::new(Vec::new())),
        next_doc: Rc::new(Cell::new(0)),
        quadratic_doc: Rc::new(RefCell::new(None)),
        unknown_gets: Rc::new(Cell::new(0)),
        run_id: ctx.collection("x"),
    };
    let spawn_attackers = {
        let a = attackers.clone();
        let seed = ctx.opts.seed;
        move |deadline: Instant| a.spawn_all(deadline, seed)
    };
    let attacked = honest(
        ctx,
        &raw,
        &c,
        &ATTACKED,
        &metrics,
        &sizes,
        &ledger,
        &attack_ledger,
        spawn_attackers,
    )
    .await?;
    run.stop();
    let after = attackers.after_checks(live_before).await;

    // The verdict.
    let mut verdict = Verdict::default();
    verdict.merge(phase_verdict(ctx, &quiet_c, &QUIET, &quiet, &quiet_ledger, &no_attacks).await);
    verdict.merge(phase_verdict(ctx, &c, &ATTACKED, &attacked, &ledger, &attack_ledger).await);
    attackers.checks(&mut verdict);
    verdict.checks.extend(after);
    for phase in [&QUIET, &ATTACKED] {
        let stats = metrics.snapshot();
        let h = stats.get(phase.healthz);
        verdict.check(
            &format!("{}: /healthz answered every time", phase.name),
            h.is_some_and(|s| s.errors == 0 && s.count > 0),
            h.map_or("no samples".into(), |s| {
                let (p, max) = s.latency.percentiles(&[99.0]);
                format!(
                    "{} answers, {} errors, p99 {:.1} ms, max {:.1} ms",
                    s.count,
                    s.errors,
                    p[0] as f64 / 1000.0,
                    max as f64 / 1000.0
                )
            }),
        );
    }
    // A latency ratio is a speed figure: `--quick` (what CI runs, on a shared machine, with
    // few samples) reports it without judging it; a full run judges it.
    let slowdown = slowdown(&metrics, !ctx.opts.quick);
    println!("\n[hostile] {}", slowdown.detail);
    verdict.checks.push(slowdown);

    let p = params(&[
        ("writers", json!(sizes.writers)),
        ("rate", json!(sizes.rate)),
        ("subscribers", json!(sizes.subscribers)),
        ("documents", json!(sizes.docs)),
        ("phase_seconds", json!(phase_duration(ctx).as_secs_f64())),
        ("attackers", json!(ATTACKS.len())),
    ]);
    Ok(run.report(p, verdict))
}

/// How long each phase writes: the scenario's duration, at least 5 s with `--quick` (a p99
/// of fewer writes is one stall of a shared machine).
fn phase_duration(ctx: &Ctx) -> Duration {
    if ctx.opts.quick {
        ctx.opts.duration.max(Duration::from_secs(5))
    } else {
        ctx.opts.duration
    }
}

/// What one phase's honest peers did.
struct Honest {
    peers: Vec<Peer>,
    compactions: Vec<CompactionRun>,
    head: u64,
}

/// One phase of honest work on collection `c`: readers from seq 0, compaction every second,
/// writers for the scenario's duration. `attack` starts the attackers, given the writers'
/// deadline; they are joined before the readers' target is set, so the readers also read
/// everything the server accepted from them (`attacks`).
#[allow(clippy::too_many_arguments)]
async fn honest(
    ctx: &Ctx,
    raw: &Raw,
    c: &str,
    phase: &'static Phase,
    metrics: &Metrics,
    sizes: &Sizes,
    ledger: &Ledger,
    attacks: &Ledger,
    attack: impl FnOnce(Instant) -> Vec<JoinHandle<()>>,
) -> Result<Honest> {
    let backend = &ctx.backend;
    let docs = Rc::new(doc_names(sizes.docs));
    let target = Target::default();
    let started = Instant::now();
    let hard_deadline = started + phase_duration(ctx) + ctx.drain();
    let readers: Vec<_> = (0..sizes.subscribers)
        .map(|i| {
            let mut p = ctx.peer(100 + i as u64, c, backend, metrics);
            p.track_receipts = true;
            let (style, op) = if i % 2 == 0 {
                (ReadStyle::acking(), phase.poll)
            } else {
                (ReadStyle::sse(), phase.sse)
            };
            spawn_reader(p, style, &target, hard_deadline, op)
        })
        .collect();
    // Let every subscriber connect before the first write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let deadline = Instant::now() + phase_duration(ctx);
    let health = actix_rt::spawn(health_loop(raw.clone(), metrics.clone(), phase, deadline));
    let attackers = attack(deadline);
    let compactor = actix_rt::spawn(compact_loop(
        backend.clone(),
        c.to_string(),
        docs.clone(),
        Duration::from_secs(1),
        Some(Duration::from_secs(2)),
        deadline,
        metrics.clone(),
    ));
    let writes = Writes::new(&docs, ledger, deadline, phase.push)
        .rate(sizes.rate)
        .with_deletes();
    write_all(writers(ctx, backend, c, 0, sizes.writers, metrics), &writes).await?;
    for a in attackers {
        join(a, "attacker").await?;
    }
    let head = ledger.head().max(attacks.head());
    target.set(head);
    let compactions = join(compactor, "compactor").await?;
    join(health, "health poller").await?;
    let peers = join_peers(readers).await?;

    // Push→delivery latency of the honest writes, as in `fanout`.
    let started_at = ledger.started_by_seq();
    for p in &peers {
        for (seq, at) in &p.seen.receipts {
            if let Some(t0) = started_at.get(seq) {
                metrics.sample(
                    phase.delivery,
                    at.saturating_duration_since(*t0).as_micros() as u64,
                );
            }
        }
    }
    Ok(Honest {
        peers,
        compactions,
        head,
    })
}

/// `/healthz` every 100 ms until `deadline`, timed as the phase's healthz op.
async fn health_loop(raw: Raw, metrics: Metrics, phase: &'static Phase, deadline: Instant) {
    while Instant::now() < deadline {
        let t = Instant::now();
        match raw.request(Method::GET, "/healthz", None).await {
            Ok(a) if a.status == 200 => metrics.record(phase.healthz, t.elapsed()),
            Ok(a) => metrics.error(phase.healthz, &anyhow!("{} {}", a.status, a.text())),
            Err(e) => metrics.error(phase.healthz, &e),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The honest checks of one phase, named after it. `attacks` holds what the server accepted
/// from attackers in the same collection: the seqs of both together must be contiguous, and
/// readers must have seen all of them.
async fn phase_verdict(
    ctx: &Ctx,
    c: &str,
    phase: &Phase,
    honest: &Honest,
    ledger: &Ledger,
    attacks: &Ledger,
) -> Verdict {
    let all = Ledger::default();
    for w in ledger.writes().into_iter().chain(attacks.writes()) {
        all.record(w.seq, &w.doc, &w.key, w.started);
    }
    let refs: Vec<&Peer> = honest.peers.iter().collect();
    let mut checks = vec![
        verify::reached_head("honest peer", &refs, honest.head, &[]),
        verify::seqs_contiguous(&all, 0, "honest writers + accepted attacks"),
        verify::readers_covered(&refs, &all),
    ];
    checks.extend(verify::converged(&ctx.backend, c, &refs, ledger).await);
    let removed: u64 = honest.compactions.iter().map(|r| r.removed).sum();
    checks.push(Check {
        name: "compaction ran".into(),
        ok: !honest.compactions.is_empty(),
        detail: format!(
            "{} compactions removed {removed} deltas",
            honest.compactions.len()
        ),
    });
    let mut v = Verdict::default();
    for mut check in checks {
        check.name = format!("{}: {}", phase.name, check.name);
        v.checks.push(check);
    }
    v
}

/// The p99 of `op` in milliseconds, and how many samples it has.
fn p99(metrics: &Metrics, op: &str) -> (f64, u64) {
    metrics.snapshot().get(op).map_or((0.0, 0), |s| {
        (
            s.latency.percentiles(&[99.0]).0[0] as f64 / 1000.0,
            s.latency.len(),
        )
    })
}

/// Honest p99 push and delivery latency, attacked vs quiet, within [`MAX_SLOWDOWN`]; with
/// `judged` false the ratio is only reported.
fn slowdown(metrics: &Metrics, judged: bool) -> Check {
    let mut ok = true;
    let mut parts = Vec::new();
    for (what, quiet, attacked) in [
        ("push", QUIET.push, ATTACKED.push),
        ("delivery", QUIET.delivery, ATTACKED.delivery),
    ] {
        let (q, qn) = p99(metrics, quiet);
        let (a, an) = p99(metrics, attacked);
        let ratio = if q > 0.0 { a / q } else { f64::INFINITY };
        ok &= qn > 0 && an > 0 && ratio <= MAX_SLOWDOWN;
        parts.push(format!(
            "{what} p99 {a:.2} ms attacked vs {q:.2} ms quiet = {ratio:.2}x ({an} / {qn} samples)"
        ));
    }
    let name = if judged {
        format!("honest p99 under attack within {MAX_SLOWDOWN}x of the quiet run")
    } else {
        format!("honest p99 under attack vs the quiet run (reported, not judged in --quick; limit {MAX_SLOWDOWN}x)")
    };
    Check {
        name,
        ok: ok || !judged,
        detail: parts.join("; "),
    }
}

// ---- raw HTTP, for what the peers' client never sends ----

/// An HTTP client that sends anything and answers status and body, whatever they are.
#[derive(Clone)]
struct Raw {
    client: awc::Client,
    base: Rc<str>,
    /// `Authorization` value, when the service wants a token.
    authorization: Option<Rc<str>>,
}

/// An answer: status and body.
struct Answer {
    status: u16,
    body: Vec<u8>,
}

impl Answer {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or(Value::Null)
    }
    fn code(&self) -> String {
        self.json()
            .pointer("/error/code")
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    }
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned()
    }
    /// The seq of a write answered 200 that stored something (not a duplicate).
    fn stored_seq(&self) -> Option<u64> {
        let v = self.json();
        (self.status == 200 && v["duplicate"] != true)
            .then(|| v["seq"].as_u64())
            .flatten()
    }
}

impl Raw {
    fn new(base: &str, credentials: Option<&Credentials>) -> Raw {
        let connector = awc::Connector::new()
            .limit(0)
            .timeout(Duration::from_secs(10))
            .conn_keep_alive(Duration::from_secs(2));
        Raw {
            client: awc::Client::builder()
                .connector(connector)
                .timeout(Duration::from_secs(60))
                .finish(),
            base: base.into(),
            authorization: credentials.map(|c| c.header().into()),
        }
    }

    /// `req` with the run's token, if any: attackers are clients with a valid token (an
    /// unauthenticated one is refused before its body is read).
    fn authorized(&self, req: awc::ClientRequest) -> awc::ClientRequest {
        match &self.authorization {
            Some(a) => req.insert_header(("authorization", &**a)),
            None => req,
        }
    }

    async fn request(&self, method: Method, path: &str, body: Option<Vec<u8>>) -> Result<Answer> {
        let url = format!("{}{path}", self.base);
        let req = self.authorized(self.client.request(method.clone(), &url));
        let sent = match body {
            Some(b) => {
                req.insert_header(("content-type", "application/json"))
                    .send_body(b)
                    .await
            }
            None => req.send().await,
        };
        let mut res = sent.map_err(|e| anyhow!("{method} {url}: {e}"))?;
        let body = res
            .body()
            .limit(64 * 1024 * 1024)
            .await
            .map_err(|e| anyhow!("{method} {url}: body: {e}"))?;
        Ok(Answer {
            status: res.status().as_u16(),
            body: body.to_vec(),
        })
    }

    async fn post(&self, path: &str, body: &Value) -> Result<Answer> {
        self.request(Method::POST, path, Some(body.to_string().into_bytes()))
            .await
    }

    async fn write(
        &self,
        c: &str,
        op: &str,
        doc: &str,
        bytes: &[u8],
        op_id: Option<&str>,
    ) -> Result<Answer> {
        self.post(&format!("/v1/{c}/{op}"), &write_body(doc, bytes, op_id))
            .await
    }

    /// `liveCollections` of `/stats` (None if it cannot be read).
    async fn live_collections(&self) -> Option<u64> {
        let a = self.request(Method::GET, "/stats", None).await.ok()?;
        a.json()["liveCollections"].as_u64()
    }
}

/// A write body as the wire types write it (`crdt_bytes` may be anything, for the junk attacks).
fn wire_write(doc: &str, crdt_bytes: String, op_id: Option<&str>) -> Value {
    json!(WriteBody {
        document_id: doc.to_string(),
        crdt_bytes,
        op_id: op_id.map(str::to_string),
    })
}

fn write_body(doc: &str, bytes: &[u8], op_id: Option<&str>) -> Value {
    wire_write(doc, B64.encode(bytes), op_id)
}

// ---- the attackers ----

/// What every attacker shares.
#[derive(Clone)]
struct Attackers {
    raw: Raw,
    /// The honest collection they attack.
    c: String,
    metrics: Metrics,
    /// Writes the server accepted from attackers (with a seq).
    ledger: Ledger,
    /// The honest writers' answered writes (their op ids, their documents).
    honest: Ledger,
    /// Answers that were not what the attack's class should get.
    unexpected: Rc<RefCell<Vec<String>>>,
    next_doc: Rc<Cell<u64>>,
    /// The document the quadratic attack aims at, once its base is stored.
    quadratic_doc: Rc<RefCell<Option<String>>>,
    unknown_gets: Rc<Cell<u64>>,
    /// Unique to this run, for collection names nobody uses.
    run_id: String,
}

/// An attack loop's body: one round of its class.
type Round = fn(Attackers, StdRng) -> std::pin::Pin<Box<dyn std::future::Future<Output = StdRng>>>;

impl Attackers {
    /// Starts one task per class, each sending one request at a time until `deadline`.
    fn spawn_all(&self, deadline: Instant, seed: u64) -> Vec<JoinHandle<()>> {
        // One request at a time per class; the cheap ones paced to at most ~100 rounds a
        // second each (a flood of cheap requests measures CPU share, not the defences).
        let paced = Duration::from_millis(10);
        let classes: &[(Round, Duration)] = &[
            (|a, r| Box::pin(a.deep(r)), paced),
            (|a, r| Box::pin(a.quadratic(r)), Duration::ZERO),
            (|a, r| Box::pin(a.pair(r)), paced),
            (|a, r| Box::pin(a.op_ids(r)), Duration::from_millis(50)),
            (|a, r| Box::pin(a.snapshot(r)), paced),
            (|a, r| Box::pin(a.junk(r)), paced),
            (|a, r| Box::pin(a.methods(r)), paced),
            (|a, r| Box::pin(a.unknown(r)), paced),
            (|a, r| Box::pin(a.slow(r)), Duration::ZERO),
            (|a, r| Box::pin(a.slow(r)), Duration::ZERO),
        ];
        classes
            .iter()
            .enumerate()
            .map(|(i, (round, pause))| {
                let (a, round, pause) = (self.clone(), *round, *pause);
                let mut rng =
                    <StdRng as rand::SeedableRng>::seed_from_u64(seed ^ (0xA77A_C000 + i as u64));
                actix_rt::spawn(async move {
                    for _ in 0..10_000_000u64 {
                        if Instant::now() >= deadline {
                            break;
                        }
                        rng = round(a.clone(), rng).await;
                        if !pause.is_zero() {
                            tokio::time::sleep(pause).await;
                        }
                    }
                })
            })
            .collect()
    }

    fn doc(&self, class: &str) -> String {
        let n = self.next_doc.get();
        self.next_doc.set(n + 1);
        format!("attack-{class}-{n}")
    }

    /// Records `answer` to a request of class `op` sent at `t`: timed if `expected`, an error
    /// (and an unexpected answer) if not. A write it stored goes into the attackers' ledger.
    fn judge(
        &self,
        op: &str,
        t: Instant,
        doc: &str,
        answer: Result<Answer>,
        expected: impl Fn(&Answer) -> bool,
    ) -> Option<Answer> {
        match answer {
            Ok(a) => {
                if let Some(seq) = a.stored_seq() {
                    self.ledger.record(seq, doc, "", t);
                }
                if expected(&a) {
                    self.metrics.record(op, t.elapsed());
                } else {
                    let e = anyhow!("unexpected {} {}", a.status, a.text());
                    self.unexpected.borrow_mut().push(format!("{op}: {e}"));
                    self.metrics.error(op, &e);
                }
                Some(a)
            }
            Err(e) => {
                self.unexpected.borrow_mut().push(format!("{op}: {e:#}"));
                self.metrics.error(op, &e);
                None
            }
        }
    }

    async fn send(
        &self,
        op: &str,
        route: &str,
        doc: &str,
        bytes: &[u8],
        op_id: Option<&str>,
        expected: impl Fn(&Answer) -> bool,
    ) -> Option<Answer> {
        let t = Instant::now();
        let a = self.raw.write(&self.c, route, doc, bytes, op_id).await;
        self.judge(op, t, doc, a, expected)
    }

    /// Item 1: nesting without bound.
    async fn deep(self, rng: StdRng) -> StdRng {
        let doc = self.doc("deep");
        self.send(
            DEEP,
            "insert",
            &doc,
            &craft::nested_maps(7, 10_000, true),
            None,
            yjs_limit,
        )
        .await;
        // The chain, then its root delete in another write (what used to persist).
        self.send(
            SPLIT,
            "insert",
            &doc,
            &craft::nested_maps(7, 10_000, false),
            None,
            yjs_limit,
        )
        .await;
        // Deleting ids the document does not hold: stored (a pending delete) or refused.
        self.send(SPLIT, "update", &doc, &craft::delete(7, 0, 1), None, |a| {
            a.status == 200 || yjs_limit(a)
        })
        .await;
        // Within the bound: stored, root delete too.
        let doc = self.doc("shallow");
        self.send(
            SHALLOW,
            "insert",
            &doc,
            &craft::nested_maps(7, 60, false),
            None,
            ok,
        )
        .await;
        self.send(SHALLOW, "update", &doc, &craft::delete(7, 0, 1), None, ok)
            .await;
        rng
    }

    /// Item 2: super-linear integration. The base once per document, then the attack.
    async fn quadratic(self, rng: StdRng) -> StdRng {
        thread_local! {
            static BYTES: (Vec<u8>, Vec<u8>) = (craft::quadratic_base(8_000), craft::quadratic(8_000));
        }
        let (base, attack) = BYTES.with(|b| b.clone());
        let known = self.quadratic_doc.borrow().clone();
        let doc = match known {
            Some(doc) => doc,
            None => {
                let doc = self.doc("quadratic");
                if let Some(a) = self.send(QUADRATIC, "insert", &doc, &base, None, ok).await {
                    if a.status == 200 {
                        *self.quadratic_doc.borrow_mut() = Some(doc.clone());
                    }
                }
                doc
            }
        };
        for _ in 0..4 {
            self.send(QUADRATIC, "update", &doc, &attack, None, yjs_limit)
                .await;
        }
        rng
    }

    /// Item 4: two writes that each apply alone but not together.
    async fn pair(self, rng: StdRng) -> StdRng {
        let (child, parent) = craft::invalid_parent_pair();
        let doc = self.doc("pair");
        self.send(PAIR, "insert", &doc, &child, None, ok).await;
        self.send(PAIR, "update", &doc, &parent, None, yjs_limit)
            .await;
        rng
    }

    /// Item 5: op ids of other writers, guessed ahead and reused.
    async fn op_ids(self, mut rng: StdRng) -> StdRng {
        let writes = self.honest.writes();
        if writes.is_empty() {
            return rng;
        }
        // Honest op ids look like "peer-3.17:42": guess each writer's next few.
        let mut latest: BTreeMap<String, u64> = BTreeMap::new();
        for w in &writes {
            if let Some((prefix, n)) = w.key.rsplit_once(':') {
                if let Ok(n) = n.parse::<u64>() {
                    let e = latest.entry(prefix.to_string()).or_default();
                    *e = (*e).max(n);
                }
            }
        }
        for (prefix, n) in latest {
            let guess = format!("{prefix}:{}", n + rng.gen_range(1..4u64));
            let doc = self.doc("op");
            self.send(
                OP_PREEMPT,
                "insert",
                &doc,
                &craft::text(5, 0, "guessed"),
                Some(&guess),
                fresh,
            )
            .await;
        }
        // An answered op id: on another document it is another write; on its own document
        // with other bytes it is refused.
        let w = &writes[rng.gen_range(0..writes.len())];
        let doc = self.doc("op");
        self.send(
            OP_OTHER_DOC,
            "insert",
            &doc,
            &craft::text(5, 0, "reused"),
            Some(&w.key),
            fresh,
        )
        .await;
        self.send(
            OP_OTHER_BYTES,
            "update",
            &w.doc,
            &craft::text(5, 0, "other bytes"),
            Some(&w.key),
            |a| a.status == 409 && a.code() == "conflict",
        )
        .await;
        rng
    }

    /// Item 3: client snapshots that would erase or rewrite an honest document.
    async fn snapshot(self, mut rng: StdRng) -> StdRng {
        let writes = self.honest.writes();
        if writes.is_empty() {
            return rng;
        }
        let doc = writes[rng.gen_range(0..writes.len())].doc.clone();
        let t = Instant::now();
        let state = self
            .raw
            .post(
                &format!("/v1/{}/recovery", self.c),
                &json!({ "stateVector": B64.encode([0u8]), "documentId": doc }),
            )
            .await;
        let Some(state) = self.judge(SNAPSHOT, t, &doc, state, |a| a.status == 200) else {
            return rng;
        };
        let diff = state.json()["diff"]
            .as_str()
            .and_then(|s| B64.decode(s).ok())
            .unwrap_or_default();
        let clients: Vec<(u64, u32)> = match Update::decode_v1(&diff) {
            Ok(u) => {
                let d = yrs::Doc::new();
                let mut txn = d.transact_mut();
                let _ = txn.apply_update(u);
                txn.state_vector()
                    .iter()
                    .map(|(c, n)| (c.get(), *n))
                    .collect()
            }
            Err(_) => Vec::new(),
        };
        let Some(&(first, _)) = clients.first() else {
            return rng;
        };
        let snapshot = if rng.gen_bool(0.5) {
            // Delete everything the document holds.
            let deletes: Vec<(u64, u32, u32)> =
                clients.iter().map(|(c, n)| (*c, 0, (*n).max(1))).collect();
            craft::update(&[], &deletes)
        } else {
            // Other text at a stored id.
            craft::text(first, 0, "REWRITTEN")
        };
        let t = Instant::now();
        let a = self
            .raw
            .post(
                &format!("/v1/{}/compact", self.c),
                &json!(CompactBody {
                    document_id: doc.clone(),
                    snapshot_bytes: Some(B64.encode(&snapshot)),
                    state_vector: None,
                    peer_timeout: None,
                }),
            )
            .await;
        // Ignored (200) or refused (4xx); what it must not do shows in the honest verdict.
        self.judge(SNAPSHOT, t, &doc, a, |a| {
            a.status == 200 || (400..500).contains(&a.status)
        });
        rng
    }

    /// Item 5 of the README's bad input: junk where a Yjs update, JSON or base64 should be.
    async fn junk(self, mut rng: StdRng) -> StdRng {
        let doc = self.doc("junk");
        let mut bytes = vec![0u8; rng.gen_range(1..200)];
        rng.fill_bytes(&mut bytes);
        // Random bytes are, very rarely, a valid update: then it is stored, which is fine.
        self.send(JUNK, "update", &doc, &bytes, None, |a| {
            a.status == 200 || (400..500).contains(&a.status)
        })
        .await;
        let path = format!("/v1/{}/insert", self.c);
        let bad_bodies: [Vec<u8>; 3] = [
            b"{\"documentId\":".to_vec(),
            wire_write(&doc, "not base64!".into(), None)
                .to_string()
                .into_bytes(),
            bytes,
        ];
        for body in bad_bodies {
            let t = Instant::now();
            let a = self.raw.request(Method::POST, &path, Some(body)).await;
            self.judge(JUNK, t, &doc, a, |a| a.status == 400);
        }
        rng
    }

    /// Item 6: made-up HTTP methods (each a new name).
    async fn methods(self, mut rng: StdRng) -> StdRng {
        let name = format!("X{:08X}", rng.gen::<u32>());
        let method = Method::from_bytes(name.as_bytes()).expect("a valid token");
        let path = format!("/v1/{}/insert", self.c);
        let t = Instant::now();
        let a = self.raw.request(method, &path, None).await;
        self.judge(METHOD, t, "", a, |a| (400..500).contains(&a.status));
        rng
    }

    /// Item 6: reads of collections that do not exist.
    async fn unknown(self, mut rng: StdRng) -> StdRng {
        let name = format!("nobody-{}-{:016x}", self.run_id, rng.gen::<u64>());
        for route in ["stream?cursor=0", "state"] {
            let t = Instant::now();
            let a = self
                .raw
                .request(Method::GET, &format!("/v1/{name}/{route}"), None)
                .await;
            self.judge(UNKNOWN, t, "", a, |a| a.status == 200);
            self.unknown_gets.set(self.unknown_gets.get() + 1);
        }
        rng
    }

    /// Item 6: a write whose body trickles in over about a second.
    async fn slow(self, rng: StdRng) -> StdRng {
        let doc = self.doc("slow");
        let body = write_body(&doc, &craft::text(5, 0, "slow"), None)
            .to_string()
            .into_bytes();
        let chunks: Vec<Vec<u8>> = body.chunks(8).map(<[u8]>::to_vec).collect();
        let pause = Duration::from_millis(1000 / chunks.len().max(1) as u64);
        let stream = futures::stream::unfold(chunks.into_iter(), move |mut rest| async move {
            let chunk = rest.next()?;
            tokio::time::sleep(pause).await;
            Some((Ok::<_, std::io::Error>(chunk.into()), rest))
        });
        let url = format!("{}/v1/{}/insert", self.raw.base, self.c);
        let t = Instant::now();
        let a = async {
            let mut res = self
                .raw
                .authorized(self.raw.client.post(&url))
                .insert_header(("content-type", "application/json"))
                .send_stream(stream)
                .await
                .map_err(|e| anyhow!("POST {url} (slow): {e}"))?;
            let body = res
                .body()
                .await
                .map_err(|e| anyhow!("POST {url} (slow): body: {e}"))?;
            Ok(Answer {
                status: res.status().as_u16(),
                body: body.to_vec(),
            })
        }
        .await;
        self.judge(SLOW, t, &doc, a, ok);
        rng
    }

    /// What the attack phase leaves behind: a live server whose attacked documents all read,
    /// and no actor for any of the unknown collections read.
    async fn after_checks(&self, live_before: Option<u64>) -> Vec<Check> {
        let mut checks = Vec::new();
        let health = self.raw.request(Method::GET, "/healthz", None).await;
        checks.push(Check {
            name: "attacked: server alive after the attacks".into(),
            ok: health.as_ref().is_ok_and(|a| a.status == 200),
            detail: match &health {
                Ok(a) => format!("/healthz {}", a.status),
                Err(e) => format!("{e:#}"),
            },
        });
        // Every document an attacker touched reads (recovery), and so does the collection.
        let docs: HashSet<String> = self.ledger.writes().into_iter().map(|w| w.doc).collect();
        let mut failures = Vec::new();
        let mut slowest = Duration::ZERO;
        for doc in &docs {
            let t = Instant::now();
            let a = self
                .raw
                .post(
                    &format!("/v1/{}/recovery", self.c),
                    &json!({ "stateVector": B64.encode([0u8]), "documentId": doc }),
                )
                .await;
            slowest = slowest.max(t.elapsed());
            match a {
                Ok(a) if a.status == 200 => {}
                Ok(a) => failures.push(format!("{doc}: {} {}", a.status, a.text())),
                Err(e) => failures.push(format!("{doc}: {e:#}")),
            }
        }
        let t = Instant::now();
        match self
            .raw
            .request(Method::GET, &format!("/v1/{}/state", self.c), None)
            .await
        {
            Ok(a) if a.status == 200 => {}
            // The attacks write several documents with one Yjs client id, which no single
            // merged update can hold: the clear answer is 409 (per-document recovery above
            // still reads every one of them).
            Ok(a) if a.status == 409 && a.json()["error"]["code"] == "conflict" => {}
            Ok(a) => failures.push(format!("state: {} {}", a.status, a.text())),
            Err(e) => failures.push(format!("state: {e:#}")),
        }
        let state_took = t.elapsed();
        checks.push(Check {
            name: "attacked: every attacked document and the collection read".into(),
            ok: failures.is_empty() && !docs.is_empty(),
            detail: failures.first().cloned().unwrap_or_else(|| {
                format!(
                    "{} documents recovered (slowest {:.1} ms), /state {:.1} ms",
                    docs.len(),
                    slowest.as_secs_f64() * 1000.0,
                    state_took.as_secs_f64() * 1000.0
                )
            }),
        });
        let live_after = self.raw.live_collections().await;
        let gets = self.unknown_gets.get();
        checks.push(Check {
            name: "attacked: reads of unknown collections started no actor".into(),
            // The attacked collection itself is new; a little slack for other users of a
            // `--target` server.
            ok: matches!((live_before, live_after), (Some(b), Some(a)) if a <= b + 3) && gets > 0,
            detail: format!(
                "liveCollections {live_before:?} -> {live_after:?} after {gets} GETs of unknown collections"
            ),
        });
        checks
    }

    /// Every class ran and got only the answers it should.
    fn checks(&self, verdict: &mut Verdict) {
        let stats = self.metrics.snapshot();
        let missing: Vec<&str> = ATTACKS
            .iter()
            .filter(|op| stats.get(**op).is_none_or(|s| s.count == 0))
            .copied()
            .collect();
        let sent: u64 = ATTACKS
            .iter()
            .filter_map(|op| stats.get(*op))
            .map(|s| s.count + s.errors)
            .sum();
        verdict.check(
            "attacked: every attack class ran",
            missing.is_empty(),
            if missing.is_empty() {
                format!("{} classes, {sent} requests", ATTACKS.len())
            } else {
                format!("never answered as expected: {}", missing.join(", "))
            },
        );
        let unexpected = self.unexpected.borrow();
        verdict.check(
            "attacked: every attack got its class's answer (4xx or ignored, never 5xx)",
            unexpected.is_empty(),
            match unexpected.first() {
                None => format!(
                    "{sent} attack requests; {} stored (accepted by design)",
                    self.ledger.len()
                ),
                Some(first) => format!("{} unexpected; first: {first}", unexpected.len()),
            },
        );
    }
}

fn ok(a: &Answer) -> bool {
    a.status == 200
}

fn yjs_limit(a: &Answer) -> bool {
    a.status == 422 && a.code() == "yjs_limit"
}

/// Stored as a new write (not taken for someone else's retry).
fn fresh(a: &Answer) -> bool {
    a.status == 200 && a.json()["duplicate"] == false
}
