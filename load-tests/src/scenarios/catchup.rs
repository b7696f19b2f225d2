//! `catchup`: a collection is filled with many deltas (default 1,000,000), then peers that have
//! nothing catch up to the head, one at a time so each has the machine: by long-poll pages of
//! 1000, by the SSE feed, and by recovery (a state-vector diff per document) followed by
//! streaming what is left.
//!
//! Floors: the long-poll catch-up through the in-process actors (on a smaller fill), and raw
//! yrs build+diff of one document's deltas against the recovery of that document.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{actor_floor, doc_names, fill, params, row, Ctx};
use crate::backend::Backend;
use crate::floors;
use crate::metrics::{timed, Metrics};
use crate::peer::{empty_state_vector, Peer};
use crate::report::{Floor, Progress, Report};
use crate::verify::{self, Verdict};

const DOCS: usize = 16;
const PAGES: &str = "catch-up: stream page (1000)";
const SSE: &str = "catch-up: SSE";
const RECOVER: &str = "catch-up: recovery (per doc)";
const RECOVER_REST: &str = "catch-up: stream after recovery";
const WHOLE_POLL: &str = "time to head: long-poll";
const WHOLE_SSE: &str = "time to head: SSE";
const WHOLE_RECOVERY: &str = "time to head: recovery+stream";
const DOC0_RECOVERY: &str = "recovery of doc-0 (empty SV)";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = workload(ctx, &ctx.backend, ctx.opts.deltas, true, "").await?;
    let floor_deltas = ctx
        .opts
        .deltas
        .min(if ctx.opts.quick { 5_000 } else { 100_000 });
    if let Some(floor) = actor_floor(ctx, |b| async move {
        workload(ctx, &b, floor_deltas, false, "-floor").await
    })
    .await
    {
        let m = row(&report, PAGES)
            .and_then(|r| r.items_per_sec)
            .unwrap_or(0.0);
        let f = row(&floor, PAGES)
            .and_then(|r| r.items_per_sec)
            .unwrap_or(0.0);
        report.floors.push(Floor::rate(
            "catch-up deltas/s vs in-process actor",
            m,
            f,
            "deltas/s",
            &format!("pages of 1000 incl. the client's yrs applies; floor fill {floor_deltas} deltas, no HTTP"),
        ));
        let (m, f) = (
            row(&report, PAGES).map_or(0.0, |r| r.p50_ms),
            row(&floor, PAGES).map_or(0.0, |r| r.p50_ms),
        );
        report.floors.push(Floor::cost(
            "stream page (1000) p50 vs in-process actor",
            m,
            f,
            "ms",
            "the request alone: O(page), not O(collection)",
        ));
    }
    Ok(report)
}

async fn workload(
    ctx: &Ctx,
    backend: &Backend,
    n: u64,
    all_ways: bool,
    suffix: &str,
) -> Result<Report> {
    let metrics = Metrics::new();
    let c = ctx.collection(&format!("catchup{suffix}"));
    let docs = Rc::new(doc_names(DOCS));
    let fill_metrics = Metrics::new();
    let fill_deadline = Instant::now() + Duration::from_secs(if ctx.opts.quick { 60 } else { 900 });
    let fill_started = Instant::now();
    let progress = Progress::start(
        format!("catchup{suffix} fill {}", backend.label()),
        fill_metrics.clone(),
        &["fill"],
    );
    let ledger = fill(
        ctx,
        backend,
        &c,
        docs.clone(),
        n,
        &fill_metrics,
        fill_deadline,
    )
    .await?;
    drop(progress);
    let head = ledger.head();
    eprintln!(
        "[catchup{suffix}] filled {head} deltas in {:.1} s",
        fill_started.elapsed().as_secs_f64()
    );

    let wire_before = backend.wire_bytes();
    let started = Instant::now();
    let deadline = started + ctx.drain() * 4;
    let _progress = Progress::start(
        format!("catchup{suffix} {}", backend.label()),
        metrics.clone(),
        &[PAGES, SSE, RECOVER],
    );
    let mut verdict = Verdict::default();
    let mut peers = Vec::new();

    let mut poller = Peer::new(1, &c, backend.clone(), metrics.clone(), ctx.opts.seed);
    poller.capture = Some(("doc-0".into(), Vec::new()));
    let t = Instant::now();
    let r = poller.catch_up(head, deadline, PAGES).await;
    verdict.check(
        "long-poll peer reached the head",
        r.is_ok(),
        r.err()
            .map_or(format!("{head} deltas"), |e| format!("{e:#}")),
    );
    metrics.record(WHOLE_POLL, t.elapsed());
    peers.push(poller);

    if all_ways {
        let mut sse = Peer::new(2, &c, backend.clone(), metrics.clone(), ctx.opts.seed);
        let t = Instant::now();
        let mut events = backend.events(&c, 0).await?;
        sse.follow(&mut events, Some(head), deadline, SSE).await?;
        drop(events);
        verdict.check(
            "SSE peer reached the head",
            sse.cursor >= head,
            format!("cursor {} of {head}", sse.cursor),
        );
        metrics.record(WHOLE_SSE, t.elapsed());
        peers.push(sse);

        let mut recovering = Peer::new(3, &c, backend.clone(), metrics.clone(), ctx.opts.seed);
        for d in docs.iter() {
            recovering.know(d);
        }
        let t = Instant::now();
        recovering.recover(RECOVER).await?;
        let r = recovering.catch_up(head, deadline, RECOVER_REST).await;
        verdict.check(
            "recovering peer reached the head",
            r.is_ok(),
            r.err()
                .map_or(format!("{head} deltas"), |e| format!("{e:#}")),
        );
        metrics.record(WHOLE_RECOVERY, t.elapsed());
        peers.push(recovering);

        for _ in 0..3 {
            let _ = timed(
                &metrics,
                DOC0_RECOVERY,
                backend.recovery(&c, &empty_state_vector(), Some("doc-0")),
            )
            .await;
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let wire = backend.wire_bytes() - wire_before;
    drop(_progress);

    let refs: Vec<&Peer> = peers.iter().collect();
    verdict
        .checks
        .push(verify::seqs_contiguous(&ledger, 0, "fill"));
    verdict.checks.push(verify::readers_covered(&refs, &ledger));
    verdict
        .checks
        .extend(verify::converged(backend, &c, &refs, &ledger).await);
    let p = params(&[("deltas", json!(head)), ("documents", json!(DOCS))]);
    let mut report = Report::new(
        &format!("catchup{suffix}"),
        backend.label(),
        p,
        &metrics,
        seconds,
        wire,
    );
    if all_ways && !ctx.opts.no_floors {
        if let Some((_, updates)) = &peers[0].capture {
            let raw = floors::yrs_diff(updates, &empty_state_vector(), 3)? * 1000.0;
            let best = metrics
                .snapshot()
                .get(DOC0_RECOVERY)
                .map_or(0.0, |s| s.latency.percentiles(&[0.0]).0[0] as f64 / 1000.0);
            report.floors.push(Floor::cost(
                "recovery of one document vs raw yrs build+diff",
                best,
                raw,
                "ms",
                &format!("doc-0: {} deltas; best of 3 each", updates.len()),
            ));
        }
    }
    report.ok = verdict.ok();
    report.verdict = verdict;
    Ok(report)
}
