//! `fanout`: one writer at a set rate, M subscribers (half long-poll, half SSE) following the
//! collection from seq 0. Measures push→delivery latency: from the moment the writer starts a
//! push to the moment a subscriber holds the change.
//!
//! Floor: the same workload through the in-process actors (no HTTP; the SSE half long-polls).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{
    actor_floor, doc_names, join_peers, params, read_loop, row, write_loop, Ctx, ReadStyle, Target,
};
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::{Floor, Progress, Report};
use crate::verify::{self, Ledger, Verdict};

const PUSH: &str = "push";
const POLL: &str = "stream (long-poll)";
const SSE: &str = "events (SSE)";
const DELIVERY_POLL: &str = "delivery: push→long-poll";
const DELIVERY_SSE: &str = "delivery: push→SSE";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = workload(ctx, &ctx.backend, ctx.opts.duration, "").await?;
    if let Some(floor) = actor_floor(ctx, |b| async move {
        workload(ctx, &b, ctx.floor_duration(), "-floor").await
    })
    .await
    {
        for op in [DELIVERY_POLL, DELIVERY_SSE] {
            let (m, f) = (
                row(&report, op).map_or(0.0, |r| r.p50_ms),
                row(&floor, op).map_or(0.0, |r| r.p50_ms),
            );
            report.floors.push(Floor::cost(
                &format!("{op} p50 vs in-process actor"),
                m,
                f,
                "ms",
                "same rate and subscribers, no HTTP",
            ));
            let (m, f) = (
                row(&report, op).map_or(0.0, |r| r.p99_ms),
                row(&floor, op).map_or(0.0, |r| r.p99_ms),
            );
            report.floors.push(Floor::cost(
                &format!("{op} p99 vs in-process actor"),
                m,
                f,
                "ms",
                "same rate and subscribers, no HTTP",
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
    let wire_before = backend.wire_bytes();
    let c = ctx.collection(&format!("fanout{suffix}"));
    let docs = Rc::new(doc_names(4));
    let ledger = Ledger::default();
    let target = Target::default();
    let started = Instant::now();
    let hard_deadline = started + duration + ctx.drain();
    let _progress = Progress::start(
        format!("fanout{suffix} {}", backend.label()),
        metrics.clone(),
        &[PUSH, POLL, SSE],
    );

    let mut subscribers = Vec::new();
    for i in 0..m {
        let mut p = Peer::new(
            100 + i as u64,
            &c,
            backend.clone(),
            metrics.clone(),
            ctx.opts.seed,
        );
        p.track_receipts = true;
        let (style, op) = if i % 2 == 0 {
            (ReadStyle::long_poll(), POLL)
        } else {
            (ReadStyle::sse(), SSE)
        };
        subscribers.push(actix_rt::spawn(read_loop(
            p,
            style,
            target.clone(),
            hard_deadline,
            op,
            metrics.clone(),
        )));
    }
    // Let every subscriber connect before the first write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writer = Peer::new(0, &c, backend.clone(), metrics.clone(), ctx.opts.seed);
    let deadline = Instant::now() + duration;
    let writer = actix_rt::spawn(write_loop(
        writer,
        docs,
        ledger.clone(),
        deadline,
        Some(ctx.opts.rate),
        false,
        PUSH,
    ));
    let _writer = writer
        .await
        .map_err(|e| anyhow::anyhow!("writer task: {e}"))?;
    target.set(ledger.head());
    let subscribers = join_peers(subscribers).await?;
    let seconds = started.elapsed().as_secs_f64();
    let wire = backend.wire_bytes() - wire_before;
    drop(_progress);

    let started_at = ledger.started_by_seq();
    for (i, p) in subscribers.iter().enumerate() {
        let op = if i % 2 == 0 {
            DELIVERY_POLL
        } else {
            DELIVERY_SSE
        };
        for (seq, at) in &p.seen.receipts {
            if let Some(t0) = started_at.get(seq) {
                metrics.sample(op, at.saturating_duration_since(*t0).as_micros() as u64);
            }
        }
    }

    let mut verdict = Verdict::default();
    let behind = subscribers
        .iter()
        .filter(|p| p.cursor < ledger.head())
        .count();
    verdict.check(
        "every subscriber reached the head",
        behind == 0,
        format!("{behind} of {m} behind head {}", ledger.head()),
    );
    let refs: Vec<&Peer> = subscribers.iter().collect();
    verdict
        .checks
        .push(verify::seqs_contiguous(&ledger, 0, "writer"));
    verdict.checks.push(verify::readers_covered(&refs, &ledger));
    verdict
        .checks
        .extend(verify::converged(backend, &c, &refs, &ledger).await);
    let p = params(&[
        ("subscribers", json!(m)),
        ("rate", json!(ctx.opts.rate)),
        ("sse", json!(m / 2)),
    ]);
    let mut report = Report::new(
        &format!("fanout{suffix}"),
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
