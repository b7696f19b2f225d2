//! `slow-peer`: compaction under load while one peer reads and acks slowly. Eight writers push
//! into four documents, four fast readers follow and ack every page, one slow reader takes
//! small pages with a pause, and every document is compacted twice a second. Compaction must
//! hold back every delta the slow (still active) peer has not acknowledged: no active peer is
//! ever sent a snapshot, and nothing is lost. At the end the slow peer catches up at full speed
//! and a fresh peer reads the compacted collection from seq 0.
//!
//! Floor: the largest compaction against raw yrs apply+encode of as many deltas.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::common::{join, join_peers, read_from_zero, spawn_reader, write_all, Run, Writes};
use super::{compact_loop, compaction_floor, doc_names, params, writers, Ctx, ReadStyle, Target};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::Report;
use crate::verify::{Ledger, Verdict};

const WRITERS: usize = 8;
const PUSH: &str = "push";
const FAST: &str = "stream (fast readers)";
const SLOW: &str = "stream (slow reader)";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let backend = &ctx.backend;
    let metrics = Metrics::new();
    let c = ctx.collection("slow-peer");
    let docs = Rc::new(doc_names(4));
    let ledger = Ledger::default();
    let target = Target::default();
    let mut run = Run::start(
        "slow-peer".into(),
        backend,
        &metrics,
        &[PUSH, FAST, SLOW, "compact"],
    );
    let deadline = run.started + ctx.opts.duration;
    let hard_deadline = deadline + ctx.drain();

    let fast: Vec<_> = (0..4u64)
        .map(|i| {
            let p = ctx.peer(100 + i, &c, backend, &metrics);
            spawn_reader(p, ReadStyle::acking(), &target, hard_deadline, FAST)
        })
        .collect();
    // The slow reader stays slow until the writers stop, then catches up at full speed.
    let slow = spawn_reader(
        ctx.peer(99, &c, backend, &metrics),
        ReadStyle::slow(20, Duration::from_millis(100)),
        &Target::default(),
        deadline,
        SLOW,
    );
    let compactor = actix_rt::spawn(compact_loop(
        backend.clone(),
        c.clone(),
        docs.clone(),
        Duration::from_millis(500),
        None,
        deadline,
        metrics.clone(),
    ));
    let writes = Writes::new(&docs, &ledger, deadline, PUSH).rate(100.0);
    let head = write_all(writers(ctx, backend, &c, 0, WRITERS, &metrics), &writes).await?;
    target.set(head);
    let runs = join(compactor, "compactor").await?;
    let mut slow = join(slow, "slow reader").await?;
    let slow_behind = head.saturating_sub(slow.cursor);
    let slow_snapshots_while_slow = slow.seen.snapshots.len();
    let caught = slow.catch_up(head, hard_deadline, SLOW).await;
    let fast = join_peers(fast).await?;
    run.stop();

    let mut verdict = Verdict::default();
    let removed: u64 = runs.iter().map(|r| r.removed).sum();
    verdict.check(
        "compaction ran under load",
        !runs.is_empty(),
        format!("{} compactions removed {removed} deltas; slow peer was {slow_behind} behind when writes stopped", runs.len()),
    );
    verdict.result("slow peer caught up", &caught, format!("to {head}"));
    let snapshots_to_active: usize =
        fast.iter().map(|p| p.seen.snapshots.len()).sum::<usize>() + slow_snapshots_while_slow;
    verdict.check(
        "no active peer needed a snapshot (compaction respected every ack)",
        snapshots_to_active == 0,
        format!("{snapshots_to_active} snapshots sent to active peers"),
    );
    let (fresh, r) =
        read_from_zero(ctx, backend, &c, 200, head, Instant::now() + ctx.drain()).await;
    verdict.result(
        "fresh peer read the compacted collection",
        &r,
        format!(
            "{} snapshots, {} deltas",
            fresh.seen.snapshots.len(),
            fresh.seen.deltas.len()
        ),
    );
    let mut all: Vec<&Peer> = fast.iter().collect();
    all.push(&slow);
    all.push(&fresh);
    verdict
        .standard(backend, &c, &all, &ledger, "writers")
        .await;
    let p = params(&[
        ("writers", json!(WRITERS)),
        ("fastReaders", json!(4)),
        ("compactEveryMs", json!(500)),
    ]);
    let mut report = run.report(p, verdict);
    if !ctx.opts.no_floors {
        report
            .floors
            .extend(compaction_floor(&runs, WRITERS as u64, ctx.opts.seed));
    }
    Ok(report)
}
