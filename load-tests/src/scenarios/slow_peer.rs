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

use super::{
    compact_loop, compaction_floor, doc_names, join_peers, params, read_loop, write_loop, writers,
    Ctx, ReadStyle, Target,
};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::{Progress, Report};
use crate::verify::{self, Ledger, Verdict};

const WRITERS: usize = 8;
const PUSH: &str = "push";
const FAST: &str = "stream (fast readers)";
const SLOW: &str = "stream (slow reader)";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let backend = &ctx.backend;
    let metrics = Metrics::new();
    let wire_before = backend.wire_bytes();
    let c = ctx.collection("slow-peer");
    let docs = Rc::new(doc_names(4));
    let ledger = Ledger::default();
    let target = Target::default();
    let started = Instant::now();
    let deadline = started + ctx.opts.duration;
    let hard_deadline = deadline + ctx.drain();
    let _progress = Progress::start(
        format!("slow-peer {}", backend.label()),
        metrics.clone(),
        &[PUSH, FAST, SLOW, "compact"],
    );

    let fast: Vec<_> = (0..4u64)
        .map(|i| {
            let p = Peer::new(100 + i, &c, backend.clone(), metrics.clone(), ctx.opts.seed);
            let style = ReadStyle {
                ack: true,
                ..ReadStyle::long_poll()
            };
            actix_rt::spawn(read_loop(
                p,
                style,
                target.clone(),
                hard_deadline,
                FAST,
                metrics.clone(),
            ))
        })
        .collect();
    let slow = Peer::new(99, &c, backend.clone(), metrics.clone(), ctx.opts.seed);
    let slow_style = ReadStyle {
        ack: true,
        limit: 20,
        pause: Duration::from_millis(100),
        sse: false,
    };
    // The slow reader stays slow until the writers stop, then catches up at full speed.
    let slow = actix_rt::spawn(read_loop(
        slow,
        slow_style,
        Target::default(),
        deadline,
        SLOW,
        metrics.clone(),
    ));
    let compactor = actix_rt::spawn(compact_loop(
        backend.clone(),
        c.clone(),
        docs.clone(),
        Duration::from_millis(500),
        None,
        deadline,
        metrics.clone(),
    ));
    let handles: Vec<_> = writers(ctx, backend, &c, 0, WRITERS, &metrics)
        .into_iter()
        .map(|p| {
            actix_rt::spawn(write_loop(
                p,
                docs.clone(),
                ledger.clone(),
                deadline,
                Some(100.0),
                false,
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
    let mut slow = slow
        .await
        .map_err(|e| anyhow::anyhow!("slow reader task: {e}"))?;
    let slow_behind = head.saturating_sub(slow.cursor);
    let slow_snapshots_while_slow = slow.seen.snapshots.len();
    let caught = slow.catch_up(head, hard_deadline, SLOW).await;
    let fast = join_peers(fast).await?;
    let seconds = started.elapsed().as_secs_f64();
    let wire = backend.wire_bytes() - wire_before;
    drop(_progress);

    let mut verdict = Verdict::default();
    let removed: u64 = runs.iter().map(|r| r.removed).sum();
    verdict.check(
        "compaction ran under load",
        !runs.is_empty(),
        format!("{} compactions removed {removed} deltas; slow peer was {slow_behind} behind when writes stopped", runs.len()),
    );
    verdict.check(
        "slow peer caught up",
        caught.is_ok(),
        caught
            .err()
            .map_or(format!("to {head}"), |e| format!("{e:#}")),
    );
    let snapshots_to_active: usize =
        fast.iter().map(|p| p.seen.snapshots.len()).sum::<usize>() + slow_snapshots_while_slow;
    verdict.check(
        "no active peer needed a snapshot (compaction respected every ack)",
        snapshots_to_active == 0,
        format!("{snapshots_to_active} snapshots sent to active peers"),
    );
    let mut fresh = Peer::new(200, &c, backend.clone(), Metrics::new(), ctx.opts.seed);
    let r = fresh
        .catch_up(head, Instant::now() + ctx.drain(), "verify")
        .await;
    verdict.check(
        "fresh peer read the compacted collection",
        r.is_ok(),
        r.err().map_or(
            format!(
                "{} snapshots, {} deltas",
                fresh.seen.snapshots.len(),
                fresh.seen.deltas.len()
            ),
            |e| format!("{e:#}"),
        ),
    );
    let mut all: Vec<&Peer> = fast.iter().collect();
    all.push(&slow);
    all.push(&fresh);
    verdict
        .checks
        .push(verify::seqs_contiguous(&ledger, 0, "writers"));
    verdict.checks.push(verify::readers_covered(&all, &ledger));
    verdict
        .checks
        .extend(verify::converged(backend, &c, &all, &ledger).await);
    let p = params(&[
        ("writers", json!(WRITERS)),
        ("fastReaders", json!(4)),
        ("compactEveryMs", json!(500)),
    ]);
    let mut report = Report::new("slow-peer", backend.label(), p, &metrics, seconds, wire);
    if !ctx.opts.no_floors {
        report
            .floors
            .extend(compaction_floor(&runs, WRITERS as u64, ctx.opts.seed));
    }
    report.ok = verdict.ok();
    report.verdict = verdict;
    Ok(report)
}
