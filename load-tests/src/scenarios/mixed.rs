//! `mixed`: a realistic blend on one collection. Eight writers at 20 writes/s each (inserts,
//! updates, the odd delete) over 32 documents; subscribers on long-poll and SSE; one slow
//! acker; compaction every second with a 2 s peer timeout; four peers that drop off after a
//! third of the run and come back at the end with recovery; one peer that joins from seq 0
//! halfway through.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{
    compact_loop, doc_names, join_peers, params, read_loop, write_loop, writers, Ctx, ReadStyle,
    Target,
};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::{Progress, Report};
use crate::verify::{self, Ledger, Verdict};

const PUSH: &str = "push";
const POLL: &str = "stream (long-poll)";
const SSE: &str = "events (SSE)";
const SLOW: &str = "stream (slow)";
const RETURN: &str = "recovery (returning)";
const LATE: &str = "stream (late joiner)";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let backend = &ctx.backend;
    let metrics = Metrics::new();
    let wire_before = backend.wire_bytes();
    let c = ctx.collection("mixed");
    let docs = Rc::new(doc_names(32));
    let ledger = Ledger::default();
    let target = Target::default();
    let subscribers = if ctx.opts.quick { 16 } else { 40 };
    let started = Instant::now();
    let deadline = started + ctx.opts.duration;
    let hard_deadline = deadline + ctx.drain();
    let _progress = Progress::start(
        format!("mixed {}", backend.label()),
        metrics.clone(),
        &[PUSH, POLL, SSE, "compact"],
    );

    let mut readers = Vec::new();
    for i in 0..subscribers {
        let p = Peer::new(
            100 + i as u64,
            &c,
            backend.clone(),
            metrics.clone(),
            ctx.opts.seed,
        );
        let (style, op) = if i % 2 == 0 {
            (
                ReadStyle {
                    ack: true,
                    ..ReadStyle::long_poll()
                },
                POLL,
            )
        } else {
            (ReadStyle::sse(), SSE)
        };
        readers.push(actix_rt::spawn(read_loop(
            p,
            style,
            target.clone(),
            hard_deadline,
            op,
            metrics.clone(),
        )));
    }
    let slow = Peer::new(99, &c, backend.clone(), metrics.clone(), ctx.opts.seed);
    let slow_style = ReadStyle {
        ack: true,
        limit: 50,
        pause: Duration::from_millis(200),
        sse: false,
    };
    let slow = actix_rt::spawn(read_loop(
        slow,
        slow_style,
        Target::default(),
        deadline,
        SLOW,
        metrics.clone(),
    ));
    let quiet_at = started + ctx.opts.duration / 3;
    let dropping: Vec<_> = (0..4u64)
        .map(|i| {
            let mut p = Peer::new(300 + i, &c, backend.clone(), metrics.clone(), ctx.opts.seed);
            for d in docs.iter() {
                p.know(d);
            }
            let style = ReadStyle {
                ack: true,
                ..ReadStyle::long_poll()
            };
            actix_rt::spawn(read_loop(
                p,
                style,
                Target::default(),
                quiet_at,
                POLL,
                metrics.clone(),
            ))
        })
        .collect();
    let compactor = actix_rt::spawn(compact_loop(
        backend.clone(),
        c.clone(),
        docs.clone(),
        Duration::from_secs(1),
        Some(Duration::from_secs(2)),
        deadline,
        metrics.clone(),
    ));
    let late = {
        let (p, target, metrics) = (
            Peer::new(400, &c, backend.clone(), metrics.clone(), ctx.opts.seed),
            target.clone(),
            metrics.clone(),
        );
        let join_at = started + ctx.opts.duration / 2;
        actix_rt::spawn(async move {
            tokio::time::sleep_until(join_at.into()).await;
            read_loop(
                p,
                ReadStyle::long_poll(),
                target,
                hard_deadline,
                LATE,
                metrics,
            )
            .await
        })
    };
    let handles: Vec<_> = writers(ctx, backend, &c, 0, 8, &metrics)
        .into_iter()
        .map(|p| {
            actix_rt::spawn(write_loop(
                p,
                docs.clone(),
                ledger.clone(),
                deadline,
                Some(20.0),
                true,
                PUSH,
            ))
        })
        .collect();
    join_peers(handles).await?;
    let head = ledger.head();
    target.set(head);
    let runs = compactor
        .await
        .map_err(|e| anyhow::anyhow!("compactor task: {e}"))?;
    let mut slow = slow.await.map_err(|e| anyhow::anyhow!("slow task: {e}"))?;
    let mut errors = Vec::new();
    if let Err(e) = slow.catch_up(head, hard_deadline, SLOW).await {
        errors.push(format!("{e:#}"));
    }
    let mut returning = join_peers(dropping).await?;
    for p in &mut returning {
        let r = match p.recover(RETURN).await {
            Ok(()) => p.catch_up(head, hard_deadline, POLL).await,
            Err(e) => Err(e),
        };
        if let Err(e) = r {
            errors.push(format!("{e:#}"));
        }
    }
    let mut all = join_peers(readers).await?;
    all.push(
        late.await
            .map_err(|e| anyhow::anyhow!("late joiner task: {e}"))?,
    );
    all.push(slow);
    all.extend(returning);
    let seconds = started.elapsed().as_secs_f64();
    let wire = backend.wire_bytes() - wire_before;
    drop(_progress);

    let mut verdict = Verdict::default();
    let behind = all.iter().filter(|p| p.cursor < head).count();
    verdict.check(
        "every peer reached the head",
        behind == 0 && errors.is_empty(),
        errors
            .first()
            .cloned()
            .unwrap_or_else(|| format!("{behind} of {} behind head {head}", all.len())),
    );
    let removed: u64 = runs.iter().map(|r| r.removed).sum();
    verdict.check(
        "compaction ran",
        !runs.is_empty(),
        format!("{} compactions removed {removed} deltas", runs.len()),
    );
    let refs: Vec<&Peer> = all.iter().collect();
    verdict
        .checks
        .push(verify::seqs_contiguous(&ledger, 0, "writers"));
    verdict.checks.push(verify::readers_covered(&refs, &ledger));
    verdict
        .checks
        .extend(verify::converged(backend, &c, &refs, &ledger).await);
    let p = params(&[
        ("writers", json!(8)),
        ("subscribers", json!(subscribers)),
        ("documents", json!(32)),
    ]);
    let mut report = Report::new("mixed", backend.label(), p, &metrics, seconds, wire);
    if !ctx.opts.no_floors {
        report
            .floors
            .extend(super::compaction_floor(&runs, 8, ctx.opts.seed));
    }
    report.ok = verdict.ok();
    report.verdict = verdict;
    Ok(report)
}
