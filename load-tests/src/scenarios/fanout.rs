//! `fanout`: one writer at a set rate, M subscribers (half long-poll, half SSE) following the
//! collection from seq 0. Measures push→delivery latency: from the moment the writer starts a
//! push to the moment a subscriber holds the change.
//!
//! Floor: the same workload through the in-process actors (no HTTP; the SSE half long-polls).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::common::{join, join_peers, spawn_reader, with_latency_floors, Latency, Run, Writes};
use super::{doc_names, params, write_loop, Ctx, ReadStyle, Target};
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::Report;
use crate::verify::{self, Ledger, Verdict};

const PUSH: &str = "push";
const POLL: &str = "stream (long-poll)";
const SSE: &str = "events (SSE)";
const DELIVERY_POLL: &str = "delivery: push→long-poll";
const DELIVERY_SSE: &str = "delivery: push→SSE";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    with_latency_floors(
        ctx,
        |b, d, s| async move { workload(ctx, &b, d, s).await },
        &[DELIVERY_POLL, DELIVERY_SSE],
        &[Latency::P50, Latency::P99],
        "same rate and subscribers, no HTTP",
    )
    .await
}

async fn workload(
    ctx: &Ctx,
    backend: &Backend,
    duration: Duration,
    suffix: &str,
) -> Result<Report> {
    let m = ctx.opts.subscribers;
    let metrics = Metrics::new();
    let c = ctx.collection(&format!("fanout{suffix}"));
    let docs = Rc::new(doc_names(4));
    let ledger = Ledger::default();
    let target = Target::default();
    let mut run = Run::start(
        format!("fanout{suffix}"),
        backend,
        &metrics,
        &[PUSH, POLL, SSE],
    );
    let hard_deadline = run.started + duration + ctx.drain();

    let subscribers: Vec<_> = (0..m)
        .map(|i| {
            let mut p = ctx.peer(100 + i as u64, &c, backend, &metrics);
            p.track_receipts = true;
            let (style, op) = if i % 2 == 0 {
                (ReadStyle::long_poll(), POLL)
            } else {
                (ReadStyle::sse(), SSE)
            };
            spawn_reader(p, style, &target, hard_deadline, op)
        })
        .collect();
    // Let every subscriber connect before the first write.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let writes = Writes::new(&docs, &ledger, Instant::now() + duration, PUSH).rate(ctx.opts.rate);
    let writer = ctx.peer(0, &c, backend, &metrics);
    join(actix_rt::spawn(write_loop(writer, writes)), "writer").await?;
    target.set(ledger.head());
    let subscribers = join_peers(subscribers).await?;
    run.stop();

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
    let refs: Vec<&Peer> = subscribers.iter().collect();
    verdict.checks.push(verify::reached_head(
        "subscriber",
        &refs,
        ledger.head(),
        &[],
    ));
    verdict
        .standard(backend, &c, &refs, &ledger, "writer")
        .await;
    let p = params(&[
        ("subscribers", json!(m)),
        ("rate", json!(ctx.opts.rate)),
        ("sse", json!(m / 2)),
    ]);
    Ok(run.report(p, verdict))
}
