//! `append`: N writers (default 64) push real updates as fast as they are answered, first all
//! into one collection (the hot case: one actor numbers every write), then spread over 16.
//!
//! Floors: raw sled inserts with one flush per group of N (group commit with nothing around
//! it), and the same workload through the in-process actors (no HTTP).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{actor_floor, doc_names, join_peers, params, row, write_loop, writers, Ctx};
use crate::backend::Backend;
use crate::floors;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::{Floor, Progress, Report};
use crate::verify::{self, Ledger, Verdict};

const DOCS: usize = 16;
const COLLECTIONS: usize = 16;
const ONE: &str = "push (1 collection)";
const MANY: &str = "push (16 collections)";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = workload(ctx, &ctx.backend, ctx.opts.duration, true, "").await?;
    let one = row(&report, ONE).map_or(0.0, |r| r.per_sec);
    if !ctx.opts.no_floors {
        let avg =
            report.raw_update_bytes as f64 / row(&report, ONE).map_or(1, |r| r.count.max(1)) as f64;
        let updates = floors::sample_updates(2000, 8, ctx.opts.seed);
        let floor_time =
            (ctx.opts.duration / 4).clamp(Duration::from_millis(500), Duration::from_secs(5));
        let sled = floors::sled_append(&updates, ctx.opts.writers, floor_time, 5_000_000)?;
        report.floors.push(Floor::rate(
            "appends/s vs raw sled insert+group flush",
            one,
            sled,
            "appends/s",
            &format!(
                "one flush per {} inserts of ~{avg:.0}-byte updates, no index/counters/HTTP",
                ctx.opts.writers
            ),
        ));
        if let Some(floor) = actor_floor(ctx, |b| async move {
            workload(ctx, &b, ctx.floor_duration(), false, "-floor").await
        })
        .await
        {
            let actor = row(&floor, ONE).map_or(0.0, |r| r.per_sec);
            report.floors.push(Floor::rate(
                "appends/s vs in-process actor call",
                one,
                actor,
                "appends/s",
                "same writers, no HTTP",
            ));
            let (p50, a50) = (
                row(&report, ONE).map_or(0.0, |r| r.p50_ms),
                row(&floor, ONE).map_or(0.0, |r| r.p50_ms),
            );
            report.floors.push(Floor::cost(
                "append p50 latency vs in-process actor call",
                p50,
                a50,
                "ms",
                "same writers, no HTTP",
            ));
        }
    }
    Ok(report)
}

async fn workload(
    ctx: &Ctx,
    backend: &Backend,
    duration: Duration,
    with_many: bool,
    suffix: &str,
) -> Result<Report> {
    let n = ctx.opts.writers;
    let metrics = Metrics::new();
    let wire_before = backend.wire_bytes();
    let docs = Rc::new(doc_names(DOCS));
    let started = Instant::now();
    let _progress = Progress::start(
        format!("append{suffix} {}", backend.label()),
        metrics.clone(),
        &[ONE, MANY],
    );

    // Phase 1: every writer into one collection.
    let phase = if with_many { duration / 2 } else { duration };
    let one = ctx.collection(&format!("append-one{suffix}"));
    let ledger_one = Ledger::default();
    let deadline = Instant::now() + phase;
    let handles: Vec<_> = writers(ctx, backend, &one, 0, n, &metrics)
        .into_iter()
        .map(|p| {
            actix_rt::spawn(write_loop(
                p,
                docs.clone(),
                ledger_one.clone(),
                deadline,
                None,
                false,
                ONE,
            ))
        })
        .collect();
    join_peers(handles).await?;

    // Phase 2: writer i into collection i % 16.
    let mut many = Vec::new();
    if with_many {
        let deadline = Instant::now() + phase;
        let names: Vec<String> = (0..COLLECTIONS)
            .map(|i| ctx.collection(&format!("append-many{i}{suffix}")))
            .collect();
        let ledgers: Vec<Ledger> = (0..COLLECTIONS).map(|_| Ledger::default()).collect();
        let mut handles = Vec::new();
        for i in 0..n {
            let k = i % COLLECTIONS;
            let p = Peer::new(
                1000 + i as u64,
                &names[k],
                backend.clone(),
                metrics.clone(),
                ctx.opts.seed,
            );
            handles.push(actix_rt::spawn(write_loop(
                p,
                docs.clone(),
                ledgers[k].clone(),
                deadline,
                None,
                false,
                MANY,
            )));
        }
        join_peers(handles).await?;
        many = names.into_iter().zip(ledgers).collect();
    }
    let seconds = started.elapsed().as_secs_f64();
    let wire = backend.wire_bytes() - wire_before;
    drop(_progress);

    // Verdict: untimed. Fresh readers stream each collection from 0 and must match the server.
    let mut verdict = Verdict::default();
    let deadline = Instant::now() + ctx.drain();
    let mut readers = Vec::new();
    for i in 0..2 {
        let mut r = Peer::new(
            5000 + i,
            &one,
            backend.clone(),
            Metrics::new(),
            ctx.opts.seed,
        );
        if let Err(e) = r.catch_up(ledger_one.head(), deadline, "verify").await {
            verdict.check("verifier caught up", false, format!("{e:#}"));
        }
        readers.push(r);
    }
    let refs: Vec<&Peer> = readers.iter().collect();
    verdict
        .checks
        .push(verify::seqs_contiguous(&ledger_one, 0, "1 collection"));
    verdict
        .checks
        .push(verify::readers_covered(&refs, &ledger_one));
    verdict
        .checks
        .extend(verify::converged(backend, &one, &refs, &ledger_one).await);
    if !many.is_empty() {
        let (mut contiguous, mut converged, mut lost) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (c, ledger)) in many.iter().enumerate() {
            contiguous.push(verify::seqs_contiguous(ledger, 0, c));
            let mut r = Peer::new(
                6000 + i as u64,
                c,
                backend.clone(),
                Metrics::new(),
                ctx.opts.seed,
            );
            if let Err(e) = r.catch_up(ledger.head(), deadline, "verify").await {
                verdict.check("verifier caught up", false, format!("{e:#}"));
            }
            let mut checks = verify::converged(backend, c, &[&r], ledger)
                .await
                .into_iter();
            converged.extend(checks.next());
            lost.extend(checks.next());
        }
        verdict.checks.push(verify::combine(
            "seqs contiguous (16 collections)",
            contiguous,
        ));
        verdict
            .checks
            .push(verify::combine("converged (16 collections)", converged));
        verdict
            .checks
            .push(verify::combine("nothing lost (16 collections)", lost));
    }
    let p = params(&[
        ("writers", json!(n)),
        ("documents", json!(DOCS)),
        (
            "collections",
            json!(if with_many { 1 + COLLECTIONS } else { 1 }),
        ),
    ]);
    let mut report = Report::new(
        &format!("append{suffix}"),
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
