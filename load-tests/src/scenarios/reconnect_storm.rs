//! `reconnect-storm`: M peers (default 200) that last synced at different old cursors all
//! reconnect at the same moment while writes go on: three quarters long-poll, one quarter SSE.
//! Measures reconnect→caught-up time per peer and the stream pages under the storm.
//!
//! The peers' old state is built cheaply: one template peer per cohort streams to the cohort's
//! cursor (½, ⅝, ¾ or ⅞ of the filled log) and the others copy its documents. (Peers further
//! behind make the run measure the load generator's own yrs applies, not the service: 200
//! peers × tens of thousands of deltas each is millions of applies on one client thread.)
//!
//! Floor: the same storm through the in-process actors (no HTTP).

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::common::{join_peers, spawn_writers, with_latency_floors, Latency, Run, Writes};
use super::{doc_names, fill, params, read_loop, writers, Ctx, ReadStyle, Target};
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::Report;
use crate::verify::{self, Ledger, Verdict};

const DOCS: usize = 16;
const COHORTS: u64 = 4;
const PUSH: &str = "push (during storm)";
const POLL: &str = "stream (storm, long-poll)";
const SSE: &str = "events (storm, SSE)";
const CAUGHT_UP: &str = "reconnect→caught up";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    with_latency_floors(
        ctx,
        |b, d, s| async move { workload(ctx, &b, d, s).await },
        &[CAUGHT_UP],
        &[Latency::P50, Latency::Max],
        "same storm, no HTTP",
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
    let c = ctx.collection(&format!("reconnect-storm{suffix}"));
    let docs = Rc::new(doc_names(DOCS));
    let n = if ctx.opts.quick { 4_000 } else { 20_000 };
    let label = format!("reconnect-storm{suffix}");
    let ledger = fill(ctx, backend, &c, &docs, n, Duration::from_secs(300), &label)
        .await?
        .ledger;
    let filled = ledger.head();

    // Old state: one template per cohort, copied to the cohort's peers.
    let mut templates = Vec::new();
    for k in 0..COHORTS {
        let mut t = ctx.peer(90 + k, &c, backend, &Metrics::new());
        t.know_all(&docs);
        t.sync_to(filled * (COHORTS + k) / (2 * COHORTS), "template")
            .await?;
        templates.push(t);
    }
    let mut peers = Vec::new();
    for i in 0..m {
        let mut p = ctx.peer(1000 + i as u64, &c, backend, &metrics);
        p.copy_state_from(&templates[i % COHORTS as usize])?;
        peers.push(p);
    }

    let mut run = Run::start(label, backend, &metrics, &[CAUGHT_UP, POLL, SSE, PUSH]);
    let deadline = run.started + duration;
    let hard_deadline = deadline + ctx.drain();
    let live = Ledger::default();
    let target = Target::default();
    let writes = Writes::new(&docs, &live, deadline, PUSH).rate(20.0);
    let writer_handles = spawn_writers(writers(ctx, backend, &c, 10, 2, &metrics), &writes);
    // The storm: every peer at once.
    let storm: Vec<_> = peers
        .into_iter()
        .enumerate()
        .map(|(i, mut p)| {
            let (target, metrics) = (target.clone(), metrics.clone());
            let sse = i % 4 == 3;
            actix_rt::spawn(async move {
                let t = Instant::now();
                let reached = if sse {
                    match p.backend().events(&p.collection, p.cursor).await {
                        Ok(mut events) => {
                            p.follow(&mut events, Some(filled), hard_deadline, SSE)
                                .await
                        }
                        Err(e) => Err(e),
                    }
                } else {
                    p.catch_up(filled, hard_deadline, POLL).await
                };
                match reached {
                    Ok(()) => metrics.record(CAUGHT_UP, t.elapsed()),
                    Err(e) => metrics.error(CAUGHT_UP, &e),
                }
                let (style, op) = if sse {
                    (ReadStyle::sse(), SSE)
                } else {
                    (ReadStyle::long_poll(), POLL)
                };
                read_loop(p, style, target, hard_deadline, op).await
            })
        })
        .collect();
    join_peers(writer_handles).await?;
    let head = live.head().max(filled);
    target.set(head);
    let peers = join_peers(storm).await?;
    run.stop();

    // The ledger of everything: the fill and the live writes.
    for w in live.writes() {
        ledger.record(w.seq, &w.doc, &w.key, w.started);
    }
    let mut verdict = Verdict::default();
    let refs: Vec<&Peer> = peers.iter().collect();
    verdict
        .checks
        .push(verify::reached_head("peer", &refs, head, &[]));
    verdict
        .standard(backend, &c, &refs, &ledger, "fill + live writers")
        .await;
    let p = params(&[
        ("peers", json!(m)),
        ("filled", json!(filled)),
        ("sse", json!(m / 4)),
        ("liveWriters", json!(2)),
    ]);
    Ok(run.report(p, verdict))
}
