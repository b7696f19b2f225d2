//! The pieces every scenario is built from, written once: the timed part of a run ([`Run`]),
//! what writers push ([`Writes`]) and the tasks that push and read, and the comparisons with
//! the in-process floor run.

use std::cell::Cell;
use std::future::Future;
use std::rc::Rc;
use std::time::{Duration, Instant};

use actix_rt::task::JoinHandle;
use anyhow::Result;
use serde_json::Value;

use super::{actor_floor, read_loop, write_loop, Ctx, ReadStyle, Target};
use crate::backend::Backend;
use crate::floors;
use crate::metrics::{timed, Metrics};
use crate::peer::Peer;
use crate::report::{Floor, OpRow, Progress, Report};
use crate::verify::{Ledger, Verdict};

/// The timed part of a scenario: its clock, its wire bytes and its progress line.
pub struct Run {
    /// The scenario's name in the report (`fanout`, `fanout-floor`, ...).
    pub name: String,
    pub metrics: Metrics,
    pub started: Instant,
    backend: Backend,
    wire_before: u64,
    progress: Option<Progress>,
    /// Seconds and wire bytes of the timed part, once stopped.
    stopped: Option<(f64, u64)>,
}

impl Run {
    /// Starts the clock, the wire count and a progress line showing `ops`.
    pub fn start(
        name: String,
        backend: &Backend,
        metrics: &Metrics,
        ops: &'static [&'static str],
    ) -> Run {
        let progress = Progress::start(format!("{name} {}", backend.label()), metrics.clone(), ops);
        Run {
            name,
            metrics: metrics.clone(),
            started: Instant::now(),
            wire_before: backend.wire_bytes(),
            backend: backend.clone(),
            progress: Some(progress),
            stopped: None,
        }
    }

    /// Ends the timed part: what follows (the verdict) is not counted in its time or bytes.
    pub fn stop(&mut self) {
        if self.stopped.is_none() {
            self.stopped = Some((
                self.started.elapsed().as_secs_f64(),
                self.backend.wire_bytes() - self.wire_before,
            ));
            self.progress = None;
        }
    }

    /// The report of the run, judged by `verdict` (stops the run if it is still going).
    pub fn report(mut self, params: Value, verdict: Verdict) -> Report {
        self.stop();
        let (seconds, wire) = self.stopped.expect("stopped above");
        let mut report = Report::new(
            &self.name,
            self.backend.label(),
            params,
            &self.metrics,
            seconds,
            wire,
        );
        report.ok = verdict.ok();
        report.verdict = verdict;
        report
    }
}

/// What a group of writers pushes: to which documents, into which ledger, until when, how fast.
#[derive(Clone)]
pub struct Writes {
    pub docs: Rc<Vec<String>>,
    pub ledger: Ledger,
    pub deadline: Instant,
    /// At most this many pushes a second per writer (none: as fast as answered).
    pub rate: Option<f64>,
    /// An occasional delete (1 in 50) among the updates.
    pub deletes: bool,
    /// Pushes left for all the writers together (none: until the deadline).
    pub budget: Option<Rc<Cell<u64>>>,
    /// Where a rated writer's schedule starts (none: now); see [`Writes::staggered`].
    pub start: Option<Instant>,
    /// The writers make documents that stop growing ([`crate::peer::Peer::steady`]).
    pub steady: bool,
    pub op: &'static str,
}

impl Writes {
    /// As fast as answered, no deletes, until `deadline`.
    pub fn new(
        docs: &Rc<Vec<String>>,
        ledger: &Ledger,
        deadline: Instant,
        op: &'static str,
    ) -> Self {
        Writes {
            docs: docs.clone(),
            ledger: ledger.clone(),
            deadline,
            rate: None,
            deletes: false,
            budget: None,
            start: None,
            steady: false,
            op,
        }
    }

    /// Documents that stop growing (a long run whose memory must level off).
    pub fn steady(self) -> Self {
        Writes {
            steady: true,
            ..self
        }
    }

    pub fn rate(self, per_sec: f64) -> Self {
        Writes {
            rate: Some(per_sec),
            ..self
        }
    }

    pub fn with_deletes(self) -> Self {
        Writes {
            deletes: true,
            ..self
        }
    }

    /// The same writes for writer `i` of `n`, whose schedule starts `i / n` of a period
    /// late: rated writers started together would otherwise push in bursts of `n` at once,
    /// and a burst's deliveries queue behind each other in every subscriber.
    pub fn staggered(&self, i: usize, n: usize) -> Self {
        let period = self.rate.map_or(0.0, |r| 1.0 / r);
        let offset = Duration::from_secs_f64(period * i as f64 / n.max(1) as f64);
        Writes {
            start: Some(Instant::now() + offset),
            ..self.clone()
        }
    }

    /// Stops the writers once they have pushed `n` writes between them.
    pub fn at_most(self, n: u64) -> Self {
        Writes {
            budget: Some(Rc::new(Cell::new(n))),
            ..self
        }
    }
}

/// Starts one [`write_loop`] task per peer.
pub fn spawn_writers(peers: Vec<Peer>, writes: &Writes) -> Vec<JoinHandle<Peer>> {
    peers
        .into_iter()
        .map(|p| actix_rt::spawn(write_loop(p, writes.clone())))
        .collect()
}

/// Runs the writers to the end of `writes` and answers the head they reached.
///
/// # Errors
/// If a writer task failed.
pub async fn write_all(peers: Vec<Peer>, writes: &Writes) -> Result<u64> {
    join_peers(spawn_writers(peers, writes)).await?;
    Ok(writes.ledger.head())
}

/// Starts a [`read_loop`] task.
pub fn spawn_reader(
    peer: Peer,
    style: ReadStyle,
    target: &Target,
    until: Instant,
    op: &'static str,
) -> JoinHandle<Peer> {
    actix_rt::spawn(read_loop(peer, style, target.clone(), until, op))
}

/// Waits for a task; `what` names it in the error.
///
/// # Errors
/// If the task panicked or was cancelled.
pub async fn join<T>(handle: JoinHandle<T>, what: &str) -> Result<T> {
    handle
        .await
        .map_err(|e| anyhow::anyhow!("{what} task failed: {e}"))
}

/// Joins tasks that answer peers.
///
/// # Errors
/// If a task failed.
pub async fn join_peers(handles: Vec<JoinHandle<Peer>>) -> Result<Vec<Peer>> {
    let mut out = Vec::with_capacity(handles.len());
    for h in handles {
        out.push(join(h, "peer").await?);
    }
    Ok(out)
}

/// A peer (with its own metrics) that reads `c` from seq 0 to `head`, for the verdict.
pub async fn read_from_zero(
    ctx: &Ctx,
    backend: &Backend,
    c: &str,
    index: u64,
    head: u64,
    until: Instant,
) -> (Peer, Result<()>) {
    let mut p = ctx.peer(index, c, backend, &Metrics::new());
    let r = p.catch_up(head, until, "verify").await;
    (p, r)
}

/// A latency figure of an operation's row.
#[derive(Debug, Clone, Copy)]
pub enum Latency {
    P50,
    P99,
    Max,
}

impl Latency {
    pub fn of(self, row: &OpRow) -> f64 {
        match self {
            Latency::P50 => row.p50_ms,
            Latency::P99 => row.p99_ms,
            Latency::Max => row.max_ms,
        }
    }

    fn label(self) -> &'static str {
        match self {
            Latency::P50 => "p50",
            Latency::P99 => "p99",
            Latency::Max => "max",
        }
    }
}

/// A figure of `op` in `report`, 0 if the op has no row.
pub fn figure(report: &Report, op: &str, of: impl Fn(&OpRow) -> f64) -> f64 {
    report.ops.iter().find(|r| r.op == op).map_or(0.0, of)
}

/// Runs `workload` (given a backend, a duration and a name suffix) against the service for the
/// scenario's duration, then, unless floors are off, against the in-process actors for the
/// floor duration (suffix `-floor`). Answers both reports.
///
/// # Errors
/// If the run against the service fails (a failed floor run is only reported).
pub async fn with_actor_floor<'a, F, Fut>(
    ctx: &'a Ctx,
    workload: F,
) -> Result<(Report, Option<Report>)>
where
    F: Fn(Backend, Duration, &'static str) -> Fut,
    Fut: Future<Output = Result<Report>> + 'a,
{
    let report = workload(ctx.backend.clone(), ctx.opts.duration, "").await?;
    let floor = actor_floor(ctx, |b| workload(b, ctx.floor_duration(), "-floor")).await;
    Ok((report, floor))
}

/// [`with_actor_floor`], then `ops`' `latencies` compared with the floor run's (see
/// [`latencies_vs_actor`]). Answers the service's report.
///
/// # Errors
/// As [`with_actor_floor`].
pub async fn with_latency_floors<'a, F, Fut>(
    ctx: &'a Ctx,
    workload: F,
    ops: &[&str],
    latencies: &[Latency],
    note: &str,
) -> Result<Report>
where
    F: Fn(Backend, Duration, &'static str) -> Fut,
    Fut: Future<Output = Result<Report>> + 'a,
{
    let (mut report, floor) = with_actor_floor(ctx, workload).await?;
    if let Some(floor) = floor {
        latencies_vs_actor(&mut report, &floor, ops, latencies, note);
    }
    Ok(report)
}

/// Each of `ops`' `latencies` in `report` against the same in the in-process `floor` run, as
/// floors named "`op` p50 vs in-process actor".
pub fn latencies_vs_actor(
    report: &mut Report,
    floor: &Report,
    ops: &[&str],
    latencies: &[Latency],
    note: &str,
) {
    for op in ops {
        for latency in latencies {
            let f = Floor::cost(
                &format!("{op} {} vs in-process actor", latency.label()),
                figure(report, op, |r| latency.of(r)),
                figure(floor, op, |r| latency.of(r)),
                "ms",
                note,
            );
            report.floors.push(f);
        }
    }
}

/// Recovers `doc` for a peer holding `state_vector` three times, timed as `op`: the best of
/// them is what [`recovery_floor`] compares.
pub async fn time_recovery(
    backend: &Backend,
    c: &str,
    doc: &str,
    state_vector: &[u8],
    op: &str,
    metrics: &Metrics,
) {
    for _ in 0..3 {
        let _ = timed(metrics, op, backend.recovery(c, state_vector, Some(doc))).await;
    }
}

/// Floor: the best recovery timed as `op` against raw yrs build + diff of `updates` (the
/// document's deltas) for the same state vector, best of 3 each.
///
/// # Errors
/// If an update or the state vector does not decode.
pub fn recovery_floor(
    metrics: &Metrics,
    op: &str,
    updates: &[Vec<u8>],
    state_vector: &[u8],
    note: &str,
) -> Result<Floor> {
    let raw = floors::yrs_diff(updates, state_vector, 3)? * 1000.0;
    Ok(Floor::cost(
        "recovery of one document vs raw yrs build+diff",
        metrics.best_ms(op),
        raw,
        "ms",
        &format!("{note}; best of 3 each"),
    ))
}
