//! `reconnect-storm`: M peers (default 200) that last synced at different old cursors all
//! reconnect at the same moment while writes go on: three quarters long-poll, one quarter SSE.
//! Measures reconnect→caught-up time per peer and the stream pages under the storm.
//!
//! The peers' old state is built cheaply: one template peer per cohort streams to the cohort's
//! cursor (½, ⅝, ¾ or ⅞ of the filled log) and the others copy its documents. (Peers further
//! behind make the run measure the load generator's own yrs applies, not the service: 200
//! peers × tens of thousands of deltas each is millions of applies on one client thread.)
//!
//! Floor: the same storm through the in-process actors (no HTTP).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{
    actor_floor, doc_names, fill, join_peers, params, read_loop, row, write_loop, writers, Ctx,
    ReadStyle, Target,
};
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::{Floor, Progress, Report};
use crate::verify::{self, Ledger, Verdict};

const DOCS: usize = 16;
const COHORTS: u64 = 4;
const PUSH: &str = "push (during storm)";
const POLL: &str = "stream (storm, long-poll)";
const SSE: &str = "events (storm, SSE)";
const CAUGHT_UP: &str = "reconnect→caught up";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = workload(ctx, &ctx.backend, ctx.opts.duration, "").await?;
    if let Some(floor) = actor_floor(ctx, |b| async move {
        workload(ctx, &b, ctx.floor_duration(), "-floor").await
    })
    .await
    {
        for (what, m, f) in [
            (
                "p50",
                row(&report, CAUGHT_UP).map_or(0.0, |r| r.p50_ms),
                row(&floor, CAUGHT_UP).map_or(0.0, |r| r.p50_ms),
            ),
            (
                "max",
                row(&report, CAUGHT_UP).map_or(0.0, |r| r.max_ms),
                row(&floor, CAUGHT_UP).map_or(0.0, |r| r.max_ms),
            ),
        ] {
            report.floors.push(Floor::cost(
                &format!("reconnect→caught up {what} vs in-process actor"),
                m,
                f,
                "ms",
                "same storm, no HTTP",
            ));
        }
    }
    Ok(report)
}

async fn workload(
    ctx: &Ctx,
    backend: &Backend,
    duration: Duration,
    suffix: &str,
) -> Result<Report> {
    let m = ctx.opts.subscribers;
    let metrics = Metrics::new();
    let c = ctx.collection(&format!("reconnect-storm{suffix}"));
    let docs = Rc::new(doc_names(DOCS));
    let n = if ctx.opts.quick { 4_000 } else { 20_000 };
    let fill_metrics = Metrics::new();
    let ledger = fill(
        ctx,
        backend,
        &c,
        docs.clone(),
        n,
        &fill_metrics,
        Instant::now() + Duration::from_secs(300),
    )
    .await?;
    let filled = ledger.head();

    // Old state: one template per cohort, copied to the cohort's peers.
    let mut templates = Vec::new();
    for k in 0..COHORTS {
        let mut t = Peer::new(90 + k, &c, backend.clone(), Metrics::new(), ctx.opts.seed);
        for d in docs.iter() {
            t.know(d);
        }
        t.sync_to(filled * (COHORTS + k) / (2 * COHORTS), "template")
            .await?;
        templates.push(t);
    }
    let mut peers = Vec::new();
    for i in 0..m {
        let mut p = Peer::new(
            1000 + i as u64,
            &c,
            backend.clone(),
            metrics.clone(),
            ctx.opts.seed,
        );
        p.copy_state_from(&templates[i % COHORTS as usize])?;
        peers.push(p);
    }

    let wire_before = backend.wire_bytes();
    let started = Instant::now();
    let deadline = started + duration;
    let hard_deadline = deadline + ctx.drain();
    let _progress = Progress::start(
        format!("reconnect-storm{suffix} {}", backend.label()),
        metrics.clone(),
        &[CAUGHT_UP, POLL, SSE, PUSH],
    );
    let live = Ledger::default();
    let target = Target::default();
    let writer_handles: Vec<_> = writers(ctx, backend, &c, 10, 2, &metrics)
        .into_iter()
        .map(|p| {
            actix_rt::spawn(write_loop(
                p,
                docs.clone(),
                live.clone(),
                deadline,
                Some(20.0),
                false,
                PUSH,
            ))
        })
        .collect();
    // The storm: every peer at once.
    let storm: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            let (target, metrics) = (target.clone(), metrics.clone());
            let sse = i % 4 == 3;
            actix_rt::spawn(async move {
                let t = Instant::now();
                let reached = if sse {
                    match p.backend().events(&p.collection, p.cursor).await {
                        Ok(mut events) => {
                            p.follow(&mut events, Some(filled), hard_deadline, SSE)
                                .await
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    p.catch_up(filled, hard_deadline, POLL).await
                };
                match reached {
                    Ok(()) => metrics.record(CAUGHT_UP, t.elapsed()),
                    Err(e) => metrics.error(CAUGHT_UP, &e),
                }
                let style = if sse {
                    ReadStyle::sse()
                } else {
                    ReadStyle::long_poll()
                };
                read_loop(
                    p,
                    style,
                    target,
                    hard_deadline,
                    if sse { SSE } else { POLL },
                    metrics,
                )
                .await
            })
        })
        .collect();
    join_peers(writer_handles).await?;
    let head = live.head().max(filled);
    target.set(head);
    let peers = join_peers(storm).await?;
    let seconds = started.elapsed().as_secs_f64();
    let wire = backend.wire_bytes() - wire_before;
    drop(_progress);

    // The ledger of everything: the fill and the live writes.
    for w in live.writes() {
        ledger.record(w.seq, &w.doc, &w.key, w.started);
    }
    let mut verdict = Verdict::default();
    let behind = peers.iter().filter(|p| p.cursor < head).count();
    verdict.check(
        "every peer reached the head",
        behind == 0,
        format!("{behind} of {m} behind head {head}"),
    );
    let refs: Vec<&Peer> = peers.iter().collect();
    verdict
        .checks
        .push(verify::seqs_contiguous(&ledger, 0, "fill + live writers"));
    verdict.checks.push(verify::readers_covered(&refs, &ledger));
    verdict
        .checks
        .extend(verify::converged(backend, &c, &refs, &ledger).await);
    let p = params(&[
        ("peers", json!(m)),
        ("filled", json!(filled)),
        ("sse", json!(m / 4)),
        ("liveWriters", json!(2)),
    ]);
    let mut report = Report::new(
        &format!("reconnect-storm{suffix}"),
        backend.label(),
        p,
        &metrics,
        seconds,
        wire,
    );
    report.ok = verdict.ok();
    report.verdict = verdict;
    Ok(report)
}
