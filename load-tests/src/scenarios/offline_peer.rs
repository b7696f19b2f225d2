//! `offline-peer`: peers sync for a while, then go idle past the peer timeout while writes and
//! compaction go on (compact requests carry a small `peerTimeout`, so the idle peers stop
//! holding deltas back and compaction deletes what they have not seen). Then they come back:
//! half stream from their old cursor (they must be sent snapshots), half recover with their
//! state vectors first. All must converge, and nothing may be lost.
//!
//! Floor: a returning peer's recovery of one document against raw yrs build+diff of that
//! document's deltas for the same state vector.

use std::rc::Rc;
use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::common::{
    join, join_peers, recovery_floor, spawn_reader, time_recovery, write_all, Run, Writes,
};
use super::{compact_loop, compaction_floor, doc_names, params, writers, Ctx, ReadStyle, Target};
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::Report;
use crate::verify::{Ledger, Verdict};

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
    let c = ctx.collection("offline-peer");
    let docs = Rc::new(doc_names(8));
    let ledger = Ledger::default();
    let mut run = Run::start(
        "offline-peer".into(),
        backend,
        &metrics,
        &[PUSH, ONLINE, "compact"],
    );
    let deadline = run.started + ctx.opts.duration;
    let hard_deadline = deadline + ctx.drain();

    // One peer stays online and acks, so compaction has an active reader to respect.
    let target = Target::default();
    let mut online = ctx.peer(100, &c, backend, &metrics);
    online.capture = Some(("doc-0".into(), Vec::new()));
    let online = spawn_reader(online, ReadStyle::acking(), &target, hard_deadline, ONLINE);
    // The offline peers sync (and ack) for the first third, then go quiet.
    let quiet_at = run.started + ctx.opts.duration / 3;
    let offline: Vec<_> = (0..OFFLINE as u64)
        .map(|i| {
            let mut p = ctx.peer(200 + i, &c, backend, &metrics);
            p.know_all(&docs);
            spawn_reader(p, ReadStyle::acking(), &Target::default(), quiet_at, ONLINE)
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
    let writes = Writes::new(&docs, &ledger, deadline, PUSH)
        .rate(50.0)
        .with_deletes();
    let head = write_all(writers(ctx, backend, &c, 0, 4, &metrics), &writes).await?;
    target.set(head);
    let runs = join(compactor, "compactor").await?;
    let mut offline = join_peers(offline).await?;
    let old_cursors: Vec<u64> = offline.iter().map(|p| p.cursor).collect();

    // Everyone comes back at once: even ones stream from the old cursor, odd ones recover.
    let sv_doc0 = offline[1]
        .replica("doc-0")
        .map(|r| r.state_vector())
        .unwrap_or_default();
    let returning: Vec<_> = offline
        .drain(..)
        .enumerate()
        .map(|(i, mut p)| {
            actix_rt::spawn(async move {
                let r = if i % 2 == 0 {
                    p.catch_up(head, hard_deadline, RETURN_STREAM).await
                } else {
                    p.recover_and_catch_up(head, hard_deadline, RETURN_RECOVER, RETURN_REST)
                        .await
                };
                (p, r)
            })
        })
        .collect();
    let mut back = Vec::new();
    let mut failures = Vec::new();
    for h in returning {
        let (p, r) = join(h, "returning peer").await?;
        if let Err(e) = r {
            failures.push(format!("{e:#}"));
        }
        back.push(p);
    }
    time_recovery(backend, &c, "doc-0", &sv_doc0, DOC0, &metrics).await;
    let online = join(online, "online peer").await?;
    run.stop();

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
        .standard(backend, &c, &all, &ledger, "writers")
        .await;
    let p = params(&[
        ("offlinePeers", json!(OFFLINE)),
        ("peerTimeoutMs", json!(PEER_TIMEOUT.as_millis() as u64)),
        ("documents", json!(8)),
    ]);
    let mut report = run.report(p, verdict);
    if !ctx.opts.no_floors {
        if let Some((_, updates)) = &online.capture {
            if !sv_doc0.is_empty() {
                report.floors.push(recovery_floor(
                    &metrics,
                    DOC0,
                    updates,
                    &sv_doc0,
                    &format!(
                        "doc-0, {} deltas, a returning peer's state vector",
                        updates.len()
                    ),
                )?);
            }
        }
        report
            .floors
            .extend(compaction_floor(&runs, 4, ctx.opts.seed));
    }
    Ok(report)
}
