//! `soak`: the `mixed` workload for a long time (default 10 minutes, 25 s with `--quick`),
//! its writers making steady documents (they stop growing: see [`crate::peer`]; `mixed`'s own
//! grow with every edit, so their memory rightly grows with them), while the server's
//! resident memory and data directory are sampled every few seconds
//! ([`crate::memory`]). CORRECT needs `mixed`'s checks, RSS flat within ±10 % over the second
//! half of the load (samples after it, while the verdict reads, are printed, not judged), and
//! a data directory that stops growing while compaction keeps up. With `--quick` the memory
//! checks are printed, not judged: 25 s is mostly warm-up. The child server remembers op ids
//! for a tenth of the run, not 7 days (see [`OP_ID_TTL_DIVISOR`]).
//!
//! Which process is sampled:
//! - without `--target`: a child process running the same server code (see [`crate::child`]
//!   for why not this one);
//! - with `--target`: the `--server-pid` given (and `--server-data`'s size, if given). Without
//!   `--server-pid` nothing is sampled and memory is reported as not judged.

use std::time::Duration;

use anyhow::Result;
use serde_json::json;

use super::{mixed, Ctx};
use crate::backend::{Backend, Http};
use crate::child::ChildServer;
use crate::memory::{self, Process, Sampler};
use crate::report::Report;
use crate::targets::Targets;

/// Samples per run, about: the interval is the duration over this, between 1 and 15 s.
const SAMPLES: u32 = 40;

/// The child server remembers op ids for the run's duration over this (the default is 7 days).
/// Records kept for a TTL grow the store (and sled's memory with it) until the TTL passes,
/// then level off at rate × TTL; a soak shorter than the TTL sees only their growth and
/// cannot tell a bound from a leak. With a tenth of the run, they reach their steady count
/// early and the second half judges it; the sweep must also keep up with the writes.
const OP_ID_TTL_DIVISOR: u32 = 10;

/// The interval between samples for a run of `duration`.
fn every(duration: Duration) -> Duration {
    (duration / SAMPLES).clamp(Duration::from_secs(1), Duration::from_secs(15))
}

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let mut opts = ctx.opts.clone();
    opts.duration = ctx.opts.soak;
    let child;
    let mut op_id_ttl = None;
    let (soak, process, data) = if ctx.opts.remote {
        let soak = Ctx::new(opts, ctx.backend.clone(), ctx.floor_config.clone())
            .with_credentials(ctx.credentials.clone());
        let soak = match &ctx.targets {
            Some(t) => soak.with_targets(t),
            None => soak,
        };
        let process = ctx.opts.server_pid.map(Process::Pid);
        (soak, process, ctx.opts.server_data.clone())
    } else {
        let ttl = (ctx.opts.soak / OP_ID_TTL_DIVISOR).max(Duration::from_secs(1));
        child = ChildServer::start(ttl)?;
        op_id_ttl = Some(ttl);
        let targets = Targets::one(&child.url);
        let backend = Backend::Http(Http::new(targets.clone()));
        let soak = Ctx::new(opts, backend, ctx.floor_config.clone()).with_targets(&targets);
        (
            soak,
            Some(Process::Pid(child.pid)),
            Some(child.data.clone()),
        )
    };
    let duration = soak.opts.duration;
    let probe = soak.targets.as_ref().map(|t| memory::MetricsProbe {
        base_url: t.first().to_string(),
        token: soak.credentials.as_ref().map(|c| c.token.clone()),
    });
    let sampler = process.map(|p| Sampler::start(p, data.clone(), every(duration), probe));

    let mut report = mixed::run_named(&soak, "soak", true).await?;

    let half = duration.as_secs_f64() / 2.0;
    let mut params = report.params.clone();
    if let Some(obj) = params.as_object_mut() {
        obj.insert("duration_s".into(), json!(duration.as_secs_f64()));
        if let Some(ttl) = op_id_ttl {
            obj.insert("op_id_ttl_s".into(), json!(ttl.as_secs()));
        }
        obj.insert(
            "sampled".into(),
            json!(match process {
                Some(Process::Pid(pid)) if !ctx.opts.remote => format!("child server pid {pid}"),
                Some(Process::Pid(pid)) => format!("--server-pid {pid}"),
                Some(Process::Myself) => "this process".to_string(),
                None => "nothing (no --server-pid)".to_string(),
            }),
        );
    }
    report.params = params;
    report.notes.push(match op_id_ttl {
        Some(ttl) => format!(
            "the server remembers op ids for {} s (a tenth of the run; the default is 7 days), \
             so they reach their steady count within the run",
            ttl.as_secs()
        ),
        None => format!(
            "op ids are remembered for what the server was given: start it with \
             --op-id-ttl-secs {} or less, or they grow the store through the whole run",
            (duration / OP_ID_TTL_DIVISOR).as_secs().max(1)
        ),
    });
    match (sampler, process) {
        (Some(sampler), Some(process)) => {
            let samples = sampler.stop(process, data.as_deref());
            let load = memory::during(&samples, duration.as_secs_f64());
            let (from, why) = memory::steady_from(&load, duration.as_secs_f64());
            report.notes.push(format!("RSS judged from {why}"));
            let mut checks = vec![memory::rss_flat(&load, from)];
            checks.extend(memory::disk_bounded(&load, half));
            for check in checks {
                if ctx.opts.quick {
                    // 25 s is mostly warm-up (the caches fill for minutes): reported, not
                    // judged, so a busy CI machine cannot fail a run on it.
                    let verdict = if check.ok { "within" } else { "outside" };
                    report.notes.push(format!(
                        "not judged with --quick: {}: {verdict} the bound: {}",
                        check.name, check.detail
                    ));
                } else {
                    report.verdict.checks.push(check);
                }
            }
            report.notes.push(memory::format_series(&samples));
            report.samples = samples;
        }
        _ => report.notes.push(
            "memory not sampled: with --target, give --server-pid (and --server-data)".into(),
        ),
    }
    report.ok = report.verdict.ok();
    Ok(report)
}
