//! `catchup`: a collection is filled with many deltas (default 1,000,000), then peers that have
//! nothing catch up to the head, one at a time so each has the machine: by long-poll pages of
//! 1000, by the SSE feed, by both again in the binary form (`Accept:
//! application/vnd.replicate.changes`), and by recovery (a state-vector diff per document)
//! followed by streaming what is left. Each peer applies what arrived together (a page) in one
//! yrs transaction per document, as a client would.
//!
//! Floors: pages of 1000 from the in-process server's own actors on the same collection (no
//! HTTP; the page and deltas/s targets are judged against it), the long-poll catch-up through
//! separate in-process actors (on a smaller fill: the fill's floor), and raw yrs build+diff of
//! one document's deltas against the recovery of that document.
//!
//! With several `--target`s the fill's writers and the catching-up peers are spread over them
//! (peer i on target i mod n); the timed recovery of doc-0 asks the first.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::common::{figure, latencies_vs_actor, recovery_floor, time_recovery, Latency, Run};
use super::{actor_floor, doc_names, fill, params, Ctx};
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::peer::{empty_state_vector, Peer, FEED_BATCH};
use crate::report::{Floor, Report};
use crate::verify::Verdict;

const DOCS: usize = 16;
const PAGES: &str = "catch-up: stream page (1000)";
const SSE: &str = "catch-up: SSE";
const PAGES_BIN: &str = "catch-up: binary page (1000)";
const FEED_BIN: &str = "catch-up: binary feed";
const WHOLE_POLL_BIN: &str = "time to head: binary long-poll";
const WHOLE_FEED_BIN: &str = "time to head: binary feed";
const RECOVER: &str = "catch-up: recovery (per doc)";
const RECOVER_REST: &str = "catch-up: stream after recovery";
const WHOLE_POLL: &str = "time to head: long-poll";
const WHOLE_SSE: &str = "time to head: SSE";
const WHOLE_RECOVERY: &str = "time to head: recovery+stream";
const DOC0_RECOVERY: &str = "recovery of doc-0 (empty SV)";
/// The same deltas applied by a fresh peer with no server and no wire (the apply floor).
const APPLY_ONLY: &str = "applies alone, no server (floor)";
/// The same collection read through the server's own actors (no HTTP).
const PAGES_SAME: &str = "catch-up: in-process page (1000), same collection";
const WHOLE_SAME: &str = "time to head: in-process pages, same collection";

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
        let fill_rate = |r: &Report| {
            let p = &r.params;
            p["deltas"].as_f64().unwrap_or(0.0) / p["fillSeconds"].as_f64().unwrap_or(f64::MAX)
        };
        report.floors.push(Floor::rate(
            "fill appends/s vs in-process actor",
            fill_rate(&report),
            fill_rate(&floor),
            "appends/s",
            &format!(
                "{} writers as fast as answered; floor fills {floor_deltas} deltas, no HTTP",
                ctx.opts.writers.min(64)
            ),
        ));
        let deltas_per_sec = |r: &Report| figure(r, PAGES, |row| row.items_per_sec.unwrap_or(0.0));
        report.floors.push(Floor::rate(
            "catch-up deltas/s vs in-process actor",
            deltas_per_sec(&report),
            deltas_per_sec(&floor),
            "deltas/s",
            &format!("pages of 1000 incl. the client's yrs applies; floor fill {floor_deltas} deltas, no HTTP"),
        ));
        latencies_vs_actor(
            &mut report,
            &floor,
            &[PAGES],
            &[Latency::P50],
            "the request alone: O(page), not O(collection)",
        );
    }
    same_collection_floors(&mut report);
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
    let within = Duration::from_secs(if ctx.opts.quick { 60 } else { 900 });
    let filled = fill(
        ctx,
        backend,
        &c,
        &docs,
        n,
        within,
        &format!("catchup{suffix}"),
    )
    .await?;
    let (ledger, fill_secs) = (filled.ledger, filled.seconds);
    let head = ledger.head();

    let mut run = Run::start(
        format!("catchup{suffix}"),
        backend,
        &metrics,
        &[PAGES, PAGES_BIN, SSE, FEED_BIN, RECOVER, PAGES_SAME],
    );
    let deadline = run.started + ctx.drain() * 4;
    let mut verdict = Verdict::default();
    let mut peers = Vec::new();

    let mut poller = ctx.peer(1, &c, backend, &metrics);
    poller.capture = Some(("doc-0".into(), Vec::new()));
    let t = Instant::now();
    let r = poller.catch_up(head, deadline, PAGES).await;
    verdict.result(
        "long-poll peer reached the head",
        &r,
        format!("{head} deltas"),
    );
    metrics.record(WHOLE_POLL, t.elapsed());
    peers.push(poller);
    let mut to_head = vec![(WHOLE_POLL, t.elapsed())];
    let mut applies = None;

    if all_ways {
        let binary = backend.with_binary_wire();
        let mut poller = ctx.peer(4, &c, &binary, &metrics);
        let t = Instant::now();
        let r = poller.catch_up(head, deadline, PAGES_BIN).await;
        verdict.result(
            "binary long-poll peer reached the head",
            &r,
            format!("{head} deltas"),
        );
        metrics.record(WHOLE_POLL_BIN, t.elapsed());
        to_head.push((WHOLE_POLL_BIN, t.elapsed()));
        peers.push(poller);

        let feeds = [
            (5, &binary, FEED_BIN, WHOLE_FEED_BIN, "binary feed"),
            (2, backend, SSE, WHOLE_SSE, "SSE"),
        ];
        for (index, way, op, whole, name) in feeds {
            let (peer, took) =
                follow_to_head(ctx, index, &c, way, &metrics, head, deadline, op).await?;
            verdict.check(
                &format!("{name} peer reached the head"),
                peer.cursor >= head,
                format!("cursor {} of {head}", peer.cursor),
            );
            metrics.record(whole, took);
            to_head.push((whole, took));
            peers.push(peer);
        }

        // Right after the feeds, so it meets the heap they met (measured last, after every
        // peer's replicas, it swung between 194,000 and 320,000 deltas/s across two runs).
        if !ctx.opts.no_floors {
            applies = Some(apply_floor(ctx, backend, &c, head, &metrics).await?);
        }

        let mut recovering = ctx.peer(3, &c, backend, &metrics);
        recovering.know_all(&docs);
        let t = Instant::now();
        let r = recovering
            .recover_and_catch_up(head, deadline, RECOVER, RECOVER_REST)
            .await;
        verdict.result(
            "recovering peer reached the head",
            &r,
            format!("{head} deltas"),
        );
        metrics.record(WHOLE_RECOVERY, t.elapsed());
        to_head.push((WHOLE_RECOVERY, t.elapsed()));
        peers.push(recovering);

        // The floor on the very data: the server's own actors, no HTTP (in-process only).
        if let (Some(actors), "") = (&ctx.service_actors, suffix) {
            let local = Backend::Actor(actors.clone());
            let mut reader = ctx.peer(6, &c, &local, &metrics);
            let t = Instant::now();
            let r = reader.catch_up(head, deadline, PAGES_SAME).await;
            verdict.result(
                "in-process peer (same collection) reached the head",
                &r,
                format!("{head} deltas"),
            );
            metrics.record(WHOLE_SAME, t.elapsed());
            to_head.push((WHOLE_SAME, t.elapsed()));
            peers.push(reader);
        }

        time_recovery(
            backend,
            &c,
            "doc-0",
            &empty_state_vector(),
            DOC0_RECOVERY,
            &metrics,
        )
        .await;
    }
    run.stop();

    let refs: Vec<&Peer> = peers.iter().collect();
    verdict.standard(backend, &c, &refs, &ledger, "fill").await;
    // Deltas per second from nothing to the head, each way (target: ≥ 300,000/s by the
    // fastest, in full runs).
    let rates: serde_json::Map<String, serde_json::Value> = to_head
        .iter()
        .map(|(way, took)| {
            let way = way.trim_start_matches("time to head: ").to_string();
            (way, json!((head as f64 / took.as_secs_f64()).round()))
        })
        .collect();
    let p = params(&[
        ("deltas", json!(head)),
        ("documents", json!(DOCS)),
        ("fillSeconds", json!(fill_secs)),
        ("toHeadDeltasPerSec", json!(rates)),
    ]);
    let mut report = run.report(p, verdict);
    if let Some(applies) = applies {
        let (way, took) = to_head
            .iter()
            .filter(|(way, _)| *way != WHOLE_SAME)
            .min_by_key(|(_, took)| *took)
            .copied()
            .unwrap_or((WHOLE_POLL, Duration::MAX));
        report.floors.push(Floor::rate(
            &format!("{} deltas/s vs the client's applies alone", way.trim_start_matches("time to head: ")),
            head as f64 / took.as_secs_f64(),
            head as f64 / applies.as_secs_f64(),
            "deltas/s",
            &format!(
                "the fastest way to the head vs the same {head} deltas applied by the same client code \
                 with no server and no wire (batches of {FEED_BATCH}, one transaction per document), \
                 measured right after the feeds"
            ),
        ));
    }
    if all_ways && !ctx.opts.no_floors {
        if let Some((_, updates)) = &peers[0].capture {
            report.floors.push(recovery_floor(
                &metrics,
                DOC0_RECOVERY,
                updates,
                &empty_state_vector(),
                &format!("doc-0: {} deltas", updates.len()),
            )?);
        }
    }
    Ok(report)
}

/// The HTTP ways against the server's own actors reading the same collection (targets:
/// a binary page ≥ 0.5× the in-process page; the fastest way ≥ 300,000 deltas/s). Nothing
/// when the in-process read did not run (`--target`).
fn same_collection_floors(report: &mut Report) {
    let in_process = figure(report, PAGES_SAME, |r| Latency::P50.of(r));
    if in_process == 0.0 {
        return;
    }
    for way in [PAGES_BIN, PAGES] {
        let page = figure(report, way, |r| Latency::P50.of(r));
        report.floors.push(Floor::cost(
            &format!("{way} p50 vs in-process page"),
            page,
            in_process,
            "ms",
            "same collection, the server's own actors; request + decode, no applies; target ratio >= 0.5",
        ));
    }
    let rate = |op: &str| figure(report, op, |r| r.items_per_sec.unwrap_or(0.0));
    let fastest = [PAGES_BIN, PAGES, FEED_BIN, SSE]
        .into_iter()
        .map(|op| (op, rate(op)))
        .fold(
            ("", 0.0),
            |best, next| if next.1 > best.1 { next } else { best },
        );
    report.floors.push(Floor::rate(
        &format!("{} deltas/s vs in-process pages", fastest.0),
        fastest.1,
        rate(PAGES_SAME),
        "deltas/s",
        "the fastest HTTP way, incl. the client's yrs applies, vs pages of 1000 from the server's own actors on the same collection; target 300,000/s",
    ));
}

/// The floor every way to the head is bounded by: the deltas up to `head` (read untimed,
/// through the server's own actors when in-process) applied by a fresh peer in batches of
/// [`FEED_BATCH`], as a feed follower applies them, with no server and no wire. Answers how
/// long the applies took.
///
/// # Errors
/// A failed read or a change that does not apply.
async fn apply_floor(
    ctx: &Ctx,
    backend: &Backend,
    c: &str,
    head: u64,
    metrics: &Metrics,
) -> Result<Duration> {
    let source = match &ctx.service_actors {
        Some(actors) => Backend::Actor(actors.clone()),
        None => backend.clone(),
    };
    let mut changes = Vec::with_capacity(head as usize);
    let mut cursor = 0;
    while cursor < head {
        let page = source.stream(c, cursor, 1000, Duration::ZERO).await?;
        if page.cursor <= cursor {
            anyhow::bail!("reading the deltas for the apply floor stalled at {cursor}");
        }
        cursor = page.cursor;
        changes.extend(page.changes);
    }
    // Its own metrics: its bytes were not on any wire.
    let mut peer = Peer::new(7, c, Backend::Offline, Metrics::new(), 7);
    let t = Instant::now();
    for batch in changes.chunks(FEED_BATCH) {
        peer.apply_page(batch, APPLY_ONLY)?;
    }
    let took = t.elapsed();
    metrics.record(APPLY_ONLY, took);
    Ok(took)
}

/// A peer with nothing follows `backend`'s feed (SSE or binary) from 0 to `head`, timed as
/// `op`; answers it and how long it took.
///
/// # Errors
/// If the feed does not open or a change does not apply.
#[allow(clippy::too_many_arguments)]
async fn follow_to_head(
    ctx: &Ctx,
    index: u64,
    c: &str,
    backend: &Backend,
    metrics: &Metrics,
    head: u64,
    deadline: Instant,
    op: &str,
) -> Result<(Peer, Duration)> {
    let mut peer = ctx.peer(index, c, backend, metrics);
    let t = Instant::now();
    let mut events = peer.backend().events(c, 0).await?;
    peer.follow(&mut events, Some(head), deadline, op).await?;
    Ok((peer, t.elapsed()))
}
