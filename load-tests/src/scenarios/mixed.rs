//! `mixed`: a realistic blend on one collection. Eight writers at 20 writes/s each (inserts,
//! updates, the odd delete) over 32 documents; subscribers on long-poll and SSE; one slow
//! acker; compaction every second with a 2 s peer timeout; four peers that drop off after a
//! third of the run and come back at the end with recovery; one peer that joins from seq 0
//! halfway through.

use std::rc::Rc;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::common::{join, join_peers, spawn_reader, write_all, Run, Writes};
use super::{compact_loop, compaction_floor, doc_names, params, writers, Ctx, ReadStyle, Target};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::Report;
use crate::verify::{self, Ledger, Verdict};

const PUSH: &str = "push";
const POLL: &str = "stream (long-poll)";
const SSE: &str = "events (SSE)";
const SLOW: &str = "stream (slow)";
const RETURN: &str = "recovery (returning)";
const LATE: &str = "stream (late joiner)";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    run_named(ctx, "mixed", false).await
}

/// The workload under another scenario's `name` (its report and collection): `soak` runs it
/// for longer, with `steady` documents (they stop growing, so memory can level off), while it
/// samples the server's memory.
pub async fn run_named(ctx: &Ctx, name: &str, steady: bool) -> Result<Report> {
    let backend = &ctx.backend;
    let metrics = Metrics::new();
    let c = ctx.collection(name);
    let docs = Rc::new(doc_names(32));
    let ledger = Ledger::default();
    let target = Target::default();
    let subscribers = if ctx.opts.quick { 16 } else { 40 };
    let mut run = Run::start(
        name.into(),
        backend,
        &metrics,
        &[PUSH, POLL, SSE, "compact"],
    );
    let deadline = run.started + ctx.opts.duration;
    let hard_deadline = deadline + ctx.drain();

    let readers: Vec<_> = (0..subscribers)
        .map(|i| {
            let p = ctx.peer(100 + i as u64, &c, backend, &metrics);
            let (style, op) = if i % 2 == 0 {
                (ReadStyle::acking(), POLL)
            } else {
                (ReadStyle::sse(), SSE)
            };
            spawn_reader(p, style, &target, hard_deadline, op)
        })
        .collect();
    let slow = spawn_reader(
        ctx.peer(99, &c, backend, &metrics),
        ReadStyle::slow(50, Duration::from_millis(200)),
        &Target::default(),
        deadline,
        SLOW,
    );
    let quiet_at = run.started + ctx.opts.duration / 3;
    let dropping: Vec<_> = (0..4u64)
        .map(|i| {
            let mut p = ctx.peer(300 + i, &c, backend, &metrics);
            p.know_all(&docs);
            spawn_reader(p, ReadStyle::acking(), &Target::default(), quiet_at, POLL)
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
        let (p, target) = (ctx.peer(400, &c, backend, &metrics), target.clone());
        let join_at = run.started + ctx.opts.duration / 2;
        actix_rt::spawn(async move {
            tokio::time::sleep_until(join_at.into()).await;
            super::read_loop(p, ReadStyle::long_poll(), target, hard_deadline, LATE).await
        })
    };
    let writes = Writes::new(&docs, &ledger, deadline, PUSH)
        .rate(20.0)
        .with_deletes();
    let writes = if steady { writes.steady() } else { writes };
    let head = write_all(writers(ctx, backend, &c, 0, 8, &metrics), &writes).await?;
    target.set(head);
    let runs = join(compactor, "compactor").await?;
    let mut slow = join(slow, "slow reader").await?;
    let mut errors = Vec::new();
    if let Err(e) = slow.catch_up(head, hard_deadline, SLOW).await {
        errors.push(format!("{e:#}"));
    }
    let mut returning = join_peers(dropping).await?;
    for p in &mut returning {
        if let Err(e) = p
            .recover_and_catch_up(head, hard_deadline, RETURN, POLL)
            .await
        {
            errors.push(format!("{e:#}"));
        }
    }
    let mut all = join_peers(readers).await?;
    all.push(join(late, "late joiner").await?);
    all.push(slow);
    all.extend(returning);
    run.stop();

    let mut verdict = Verdict::default();
    let refs: Vec<&Peer> = all.iter().collect();
    verdict
        .checks
        .push(verify::reached_head("peer", &refs, head, &errors));
    let removed: u64 = runs.iter().map(|r| r.removed).sum();
    verdict.check(
        "compaction ran",
        !runs.is_empty(),
        format!("{} compactions removed {removed} deltas", runs.len()),
    );
    verdict
        .standard(backend, &c, &refs, &ledger, "writers")
        .await;
    let p = params(&[
        ("writers", json!(8)),
        ("subscribers", json!(subscribers)),
        ("documents", json!(32)),
    ]);
    let mut report = run.report(p, verdict);
    if !ctx.opts.no_floors {
        report
            .floors
            .extend(compaction_floor(&runs, 8, ctx.opts.seed));
    }
    Ok(report)
}
