//! `append`: N writers (default 64) push real updates as fast as they are answered, first all
//! into one collection (the hot case: one actor numbers every write), then spread over 16,
//! then into one collection again in `batch` requests of [`BATCH`] updates each (an app
//! coming back online with queued edits).
//!
//! Floors: raw sled inserts with one flush per group of N (group commit with nothing around
//! it), and the same workload through the in-process actors (no HTTP), batches included.
//!
//! Authentication: with a token (the default in-process server verifies one on every
//! request), the cost of verification is measured in the same run, two ways: one verification
//! of the run's token by the server's own verifier, timed over 20,000 calls and set against a
//! push's p50; and the one-collection phase again against a second, anonymous in-process
//! server, for the p50 and throughput with and without auth (not applicable with several
//! `--target`s: one in-process server is no comparison for them, so it is skipped).
//!
//! With several `--target`s the writers are spread over them (writer i on target i mod n):
//! every node's writes share the collection's one numbering.

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::common::{
    figure, join_peers, latencies_vs_actor, read_from_zero, spawn_writers, write_all, Latency, Run,
    Writes,
};
use super::{actor_floor, doc_names, params, writers, Ctx};
use crate::auth::{self, Credentials};
use crate::backend::{Backend, Http};
use crate::floors;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::{Floor, Report};
use crate::server::Server;
use crate::verify::{self, Ledger, Verdict};

const DOCS: usize = 16;
const COLLECTIONS: usize = 16;
const ONE: &str = "push (1 collection)";
const MANY: &str = "push (16 collections)";
const BATCHED: &str = "push batch of 100 (1 collection)";
/// Updates per `batch` request.
const BATCH: usize = 100;

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let mut report = workload(ctx, &ctx.backend, ctx.opts.duration, true, "").await?;
    let one = figure(&report, ONE, |r| r.per_sec);
    if !ctx.opts.no_floors {
        // Every push of both phases is in the raw bytes.
        let pushes =
            figure(&report, ONE, |r| r.count as f64) + figure(&report, MANY, |r| r.count as f64);
        let avg = report.raw_update_bytes as f64 / pushes.max(1.0);
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
            report.floors.push(Floor::rate(
                "appends/s vs in-process actor call",
                one,
                figure(&floor, ONE, |r| r.per_sec),
                "appends/s",
                "same writers, no HTTP",
            ));
            report.floors.push(Floor::rate(
                "updates/s in batches of 100 vs in-process actor",
                figure(&report, BATCHED, |r| r.items_per_sec.unwrap_or(0.0)),
                figure(&floor, BATCHED, |r| r.items_per_sec.unwrap_or(0.0)),
                "updates/s",
                "same writers and batches, no HTTP",
            ));
            latencies_vs_actor(
                &mut report,
                &floor,
                &[ONE],
                &[Latency::P50],
                "same writers, no HTTP",
            );
        }
        if let Some(creds) = &ctx.credentials {
            auth_cost(ctx, creds, &mut report).await;
        }
    }
    Ok(report)
}

/// Verifications timed to measure one.
const VERIFICATIONS: u32 = 20_000;

/// Adds the cost of token verification to `report` (see the module docs). Failures only
/// print: they say nothing about replicate's correctness.
async fn auth_cost(ctx: &Ctx, creds: &Credentials, report: &mut Report) {
    let dir = match tempfile::tempdir() {
        Ok(dir) => dir,
        Err(e) => return eprintln!("append: no temp dir for the auth cost: {e}"),
    };
    let verify = match auth::verification_cost(creds, dir.path(), VERIFICATIONS) {
        Ok(Some(d)) => d,
        Ok(None) => {
            return eprintln!(
                "append: token verification not timed (the secret of --target is unknown)"
            )
        }
        Err(e) => return eprintln!("append: token verification not timed: {e:#}"),
    };
    let verify_ms = verify.as_secs_f64() * 1000.0;
    let p50 = figure(report, ONE, |r| r.p50_ms);
    report.floors.push(Floor::cost(
        "push p50 vs the same less one token verification",
        p50,
        (p50 - verify_ms).max(0.0),
        "ms",
        &format!(
            "one HS256 verification = {:.1} µs (mean of {VERIFICATIONS}, the server's verifier)",
            verify.as_secs_f64() * 1e6
        ),
    ));
    if ctx.target_count() > 1 {
        return eprintln!(
            "append: auth vs anonymous not applicable with {} targets",
            ctx.target_count()
        );
    }
    let anonymous = match Server::in_process(ctx.floor_config.clone(), false) {
        Ok(server) => server,
        Err(e) => return eprintln!("append: anonymous server did not start: {e:#}"),
    };
    let backend = Backend::Http(Http::new(anonymous.targets.clone()));
    let phase = ctx.opts.duration / 2;
    match workload(ctx, &backend, phase, false, "-anonymous").await {
        Ok(without) => {
            let note = "1 collection, same writers and phase length, same run; a second in-process server without keys";
            report.floors.push(Floor::cost(
                "push p50 with auth vs anonymous",
                p50,
                figure(&without, ONE, |r| r.p50_ms),
                "ms",
                note,
            ));
            report.floors.push(Floor::rate(
                "appends/s with auth vs anonymous",
                figure(report, ONE, |r| r.per_sec),
                figure(&without, ONE, |r| r.per_sec),
                "appends/s",
                note,
            ));
        }
        Err(e) => eprintln!("append: anonymous comparison did not run: {e:#}"),
    }
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
    let docs = Rc::new(doc_names(DOCS));
    let mut run = Run::start(
        format!("append{suffix}"),
        backend,
        &metrics,
        &[ONE, MANY, BATCHED],
    );

    // Phase 1: every writer into one collection.
    let phase = if with_many {
        duration / 3
    } else {
        duration / 2
    };
    let one = ctx.collection(&format!("append-one{suffix}"));
    let ledger_one = Ledger::default();
    let writes = Writes::new(&docs, &ledger_one, Instant::now() + phase, ONE);
    write_all(writers(ctx, backend, &one, 0, n, &metrics), &writes).await?;

    // Phase 2: writer i into collection i % 16.
    let mut many = Vec::new();
    if with_many {
        let deadline = Instant::now() + phase;
        let mut handles = Vec::new();
        for k in 0..COLLECTIONS {
            let c = ctx.collection(&format!("append-many{k}{suffix}"));
            let ledger = Ledger::default();
            let peers = (k..n)
                .step_by(COLLECTIONS)
                .map(|i| ctx.peer(1000 + i as u64, &c, backend, &metrics))
                .collect();
            handles.extend(spawn_writers(
                peers,
                &Writes::new(&docs, &ledger, deadline, MANY),
            ));
            many.push((c, ledger));
        }
        join_peers(handles).await?;
    }

    // Phase 3: every writer into one collection, in batches.
    let batched = ctx.collection(&format!("append-batched{suffix}"));
    let ledger_batched = Ledger::default();
    let split = Rc::new(Cell::new(0u64));
    let deadline = Instant::now() + phase;
    let handles: Vec<_> = writers(ctx, backend, &batched, 2000, n, &metrics)
        .into_iter()
        .map(|p| {
            let job = batch_loop(
                p,
                docs.clone(),
                deadline,
                ledger_batched.clone(),
                split.clone(),
            );
            actix_rt::spawn(job)
        })
        .collect();
    join_peers(handles).await?;
    run.stop();

    // Verdict: untimed. Fresh readers stream each collection from 0 and must match the server.
    let mut verdict = Verdict::default();
    let deadline = Instant::now() + ctx.drain();
    let mut readers = Vec::new();
    for i in 0..2 {
        let (r, caught) =
            read_from_zero(ctx, backend, &one, 5000 + i, ledger_one.head(), deadline).await;
        if caught.is_err() {
            verdict.result("verifier caught up", &caught, String::new());
        }
        readers.push(r);
    }
    let refs: Vec<&Peer> = readers.iter().collect();
    verdict
        .standard(backend, &one, &refs, &ledger_one, "1 collection")
        .await;
    let (r, caught) = read_from_zero(
        ctx,
        backend,
        &batched,
        7000,
        ledger_batched.head(),
        deadline,
    )
    .await;
    if caught.is_err() {
        verdict.result("verifier caught up", &caught, String::new());
    }
    verdict
        .standard(backend, &batched, &[&r], &ledger_batched, "batches")
        .await;
    verdict.check(
        "each batch's seqs consecutive",
        split.get() == 0,
        format!("{} batches with a gap", split.get()),
    );
    if !many.is_empty() {
        let (mut contiguous, mut converged, mut lost) = (Vec::new(), Vec::new(), Vec::new());
        for (i, (c, ledger)) in many.iter().enumerate() {
            contiguous.push(verify::seqs_contiguous(ledger, 0, c));
            let (r, caught) =
                read_from_zero(ctx, backend, c, 6000 + i as u64, ledger.head(), deadline).await;
            if caught.is_err() {
                verdict.result("verifier caught up", &caught, String::new());
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
        ("batch", json!(BATCH)),
        ("documents", json!(DOCS)),
        (
            "collections",
            json!(if with_many { 1 + COLLECTIONS } else { 1 }),
        ),
    ]);
    Ok(run.report(p, verdict))
}

/// Pushes batches of [`BATCH`] until `deadline`, counting in `split` the batches whose
/// stored writes did not get consecutive seqs.
async fn batch_loop(
    mut peer: Peer,
    docs: Rc<Vec<String>>,
    deadline: Instant,
    ledger: Ledger,
    split: Rc<Cell<u64>>,
) -> Peer {
    while Instant::now() < deadline {
        // A batch that fails all its retries is counted in the errors; the verdict then
        // shows whether anything was lost.
        if let Ok(seqs) = peer.push_batch(&docs, BATCH, BATCHED, &ledger).await {
            if seqs.windows(2).any(|w| w[1] != w[0] + 1) {
                split.set(split.get() + 1);
            }
        }
    }
    peer
}
