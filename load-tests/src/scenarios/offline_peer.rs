//! `offline-peer`: peers sync for a while, then go idle past the peer timeout while writes and
//! compaction go on (compact requests carry a small `peerTimeout`, so the idle peers stop
//! holding deltas back and compaction deletes what they have not seen). Then they come back:
//! half stream from their old cursor (they must be sent snapshots), half recover with their
//! state vectors first. All must converge, and nothing may be lost.
//!
//! Floor: a returning peer's recovery of one document against raw yrs build+diff of that
//! document's deltas for the same state vector.

use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde_json::json;

use super::{
    compact_loop, doc_names, join_peers, params, read_loop, write_loop, writers, Ctx, ReadStyle,
    Target,
};
use crate::floors;
use crate::metrics::{timed, Metrics};
use crate::peer::Peer;
use crate::report::{Floor, Progress, Report};
use crate::verify::{self, Ledger, Verdict};

const OFFLINE: usize = 8;
const PEER_TIMEOUT: Duration = Duration::from_millis(500);
const PUSH: &str = "push";
const ONLINE: &str = "stream (online)";
const RETURN_STREAM: &str = "return: stream from old cursor";
const RETURN_RECOVER: &str = "return: recovery (per doc)";
const RETURN_REST: &str = "return: stream after recovery";
const DOC0: &str = "return: recovery of doc-0";

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let backend = &ctx.backend;
    let metrics = Metrics::new();
    let wire_before = backend.wire_bytes();
    let c = ctx.collection("offline-peer");
    let docs = Rc::new(doc_names(8));
    let ledger = Ledger::default();
    let started = Instant::now();
    let deadline = started + ctx.opts.duration;
    let hard_deadline = deadline + ctx.drain();
    let _progress = Progress::start(
        format!("offline-peer {}", backend.label()),
        metrics.clone(),
        &[PUSH, ONLINE, "compact"],
    );

    // One peer stays online and acks, so compaction has an active reader to respect.
    let target = Target::default();
    let mut online = Peer::new(100, &c, backend.clone(), metrics.clone(), ctx.opts.seed);
    online.capture = Some(("doc-0".into(), Vec::new()));
    let online_style = ReadStyle {
        ack: true,
        ..ReadStyle::long_poll()
    };
    let online = actix_rt::spawn(read_loop(
        online,
        online_style,
        target.clone(),
        hard_deadline,
        ONLINE,
        metrics.clone(),
    ));
    // The offline peers sync (and ack) for the first third, then go quiet.
    let quiet_at = started + ctx.opts.duration / 3;
    let offline: Vec<_> = (0..OFFLINE as u64)
        .map(|i| {
            let mut p = Peer::new(200 + i, &c, backend.clone(), metrics.clone(), ctx.opts.seed);
            for d in docs.iter() {
                p.know(d);
            }
            actix_rt::spawn(read_loop(
                p,
                online_style,
                Target::default(),
                quiet_at,
                ONLINE,
                metrics.clone(),
            ))
        })
        .collect();
    let compactor = actix_rt::spawn(compact_loop(
        backend.clone(),
        c.clone(),
        docs.clone(),
        Duration::from_millis(400),
        Some(PEER_TIMEOUT),
        deadline,
        metrics.clone(),
    ));
    let handles: Vec<_> = writers(ctx, backend, &c, 0, 4, &metrics)
        .into_iter()
        .map(|p| {
            actix_rt::spawn(write_loop(
                p,
                docs.clone(),
                ledger.clone(),
                deadline,
                Some(50.0),
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
    let mut offline = join_peers(offline).await?;
    let old_cursors: Vec<u64> = offline.iter().map(|p| p.cursor).collect();

    // Everyone comes back at once: even ones stream from the old cursor, odd ones recover.
    let sv_doc0 = offline[1]
        .replica("doc-0")
        .map(|r| r.state_vector())
        .unwrap_or_default();
    let mut returning = Vec::new();
    for (i, mut p) in offline.drain(..).enumerate() {
        returning.push(actix_rt::spawn(async move {
            let r = if i % 2 == 0 {
                p.catch_up(head, hard_deadline, RETURN_STREAM).await
            } else {
                match p.recover(RETURN_RECOVER).await {
                    Ok(()) => p.catch_up(head, hard_deadline, RETURN_REST).await,
                    Err(e) => Err(e),
                }
            };
            (p, r)
        }));
    }
    let mut back = Vec::new();
    let mut failures = Vec::new();
    for h in returning {
        let (p, r) = h
            .await
            .map_err(|e| anyhow::anyhow!("returning peer task: {e}"))?;
        if let Err(e) = r {
            failures.push(format!("{e:#}"));
        }
        back.push(p);
    }
    for _ in 0..3 {
        let _ = timed(
            &metrics,
            DOC0,
            backend.recovery(&c, &sv_doc0, Some("doc-0")),
        )
        .await;
    }
    let online = online
        .await
        .map_err(|e| anyhow::anyhow!("online peer task: {e}"))?;
    let seconds = started.elapsed().as_secs_f64();
    let wire = backend.wire_bytes() - wire_before;
    drop(_progress);

    let mut verdict = Verdict::default();
    let removed: u64 = runs.iter().map(|r| r.removed).sum();
    let min_old = old_cursors.iter().min().copied().unwrap_or(0);
    verdict.check(
        "compaction deleted past the idle peers",
        removed > 0,
        format!(
            "{} compactions removed {removed} deltas; idle peers' cursors {min_old}..; head {head}",
            runs.len()
        ),
    );
    verdict.check(
        "every returning peer reached the head",
        failures.is_empty(),
        failures
            .first()
            .cloned()
            .unwrap_or_else(|| format!("{OFFLINE} peers")),
    );
    let snapshots: usize = back.iter().step_by(2).map(|p| p.seen.snapshots.len()).sum();
    verdict.check(
        "returning streamers were sent snapshots for what was deleted",
        snapshots > 0 || removed == 0,
        format!(
            "{snapshots} snapshots to {} streamers",
            back.len().div_ceil(2)
        ),
    );
    let mut all: Vec<&Peer> = back.iter().collect();
    all.push(&online);
    verdict
        .checks
        .push(verify::seqs_contiguous(&ledger, 0, "writers"));
    verdict.checks.push(verify::readers_covered(&all, &ledger));
    verdict
        .checks
        .extend(verify::converged(backend, &c, &all, &ledger).await);
    let p = params(&[
        ("offlinePeers", json!(OFFLINE)),
        ("peerTimeoutMs", json!(PEER_TIMEOUT.as_millis() as u64)),
        ("documents", json!(8)),
    ]);
    let mut report = Report::new("offline-peer", backend.label(), p, &metrics, seconds, wire);
    if !ctx.opts.no_floors {
        if let Some((_, updates)) = &online.capture {
            if !sv_doc0.is_empty() {
                let raw = floors::yrs_diff(updates, &sv_doc0, 3)? * 1000.0;
                let best = metrics
                    .snapshot()
                    .get(DOC0)
                    .map_or(0.0, |s| s.latency.percentiles(&[0.0]).0[0] as f64 / 1000.0);
                report.floors.push(Floor::cost(
                    "recovery of one document vs raw yrs build+diff",
                    best,
                    raw,
                    "ms",
                    &format!(
                        "doc-0, {} deltas, a returning peer's state vector; best of 3",
                        updates.len()
                    ),
                ));
            }
        }
        report
            .floors
            .extend(super::compaction_floor(&runs, 4, ctx.opts.seed));
    }
    report.ok = verdict.ok();
    report.verdict = verdict;
    Ok(report)
}
