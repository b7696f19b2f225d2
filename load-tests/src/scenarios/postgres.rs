//! `postgres`: the PostgreSQL engine (issue 9). Runs only with a database: `--postgres URL`,
//! or env `REPLICATE_LOAD_POSTGRES`, or `REPLICATE_TEST_POSTGRES` (what CI sets). Without one
//! it is reported as skipped and passes — except under `CI=true`, where CI must have started
//! PostgreSQL, so a missing URL is a wrong verdict.
//!
//! - **Engine**: in-process actors on the PostgreSQL engine in a fresh schema
//!   (`load_<pid>_<nanos>`; the engine serves one schema per process), N writers (default 64)
//!   pushing real Yjs edits (the scenarios' peers) into one collection as fast as they are
//!   answered, for the scenario's duration. Reported: appends/s, Yjs bytes/s, and the group
//!   commit's rounds (one transaction each) and mean batch.
//! - **Floor**, same run, same database: the very rows the engine stored (read back from its
//!   `deltas` table: same count, same bytes) INSERTed raw into a plain table in a second fresh
//!   schema, with `unnest` arrays, the engine's mean group-commit batch per transaction, one
//!   transaction at a time on one connection (as the engine's single committer), with
//!   `synchronous_commit = on` (as the engine's connections). See
//!   [`crate::floors::postgres_insert`].
//!
//! - **Second floor**: the same actors and workload on a fresh sled store, in the same run:
//!   what of the gap is the engine, and what the write path every engine shares.
//!
//! The target — the engine's append rate ≥ 0.5× the floor — is reported next to the
//! ratio, never judged: the verdict checks only correctness (seqs exactly 1..=N, the engine's
//! table holding exactly those rows, a fresh reader streaming from 0 covering every seq and
//! converging with the server, every answered edit present, a clean close). Both schemas are
//! dropped at the end, after the engine is closed.
//!
//! It measures the engine in-process, so `--target` (one or several) does not apply to it:
//! several nodes on PostgreSQL are what the other scenarios exercise with `--target A,B`.

use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context as _, Result};
use replicate_actors::store::postgres::PostgresOptions;
use replicate_actors::Replicate;
use serde_json::json;

use super::common::{read_from_zero, write_all, Run, Writes};
use super::{doc_names, params, writers, Ctx};
use crate::backend::Backend;
use crate::floors::{self, PgInserted, PgRow};
use crate::metrics::Metrics;
use crate::report::{Floor, Report};
use crate::verify::{Ledger, Verdict};

/// The target: engine appends/s ≥ this × the raw INSERT floor's rows/s.
pub const TARGET: f64 = 0.5;

const DOCS: usize = 16;
const PUSH: &str = "push (postgres)";

/// How to give the scenario a database.
const HOW: &str = "pass --postgres postgres://USER@HOST:PORT/DB, or set REPLICATE_LOAD_POSTGRES \
                   (or REPLICATE_TEST_POSTGRES)";

fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// The report of a run without a database: skipped and passing, or wrong under `CI=true`.
fn skipped() -> Report {
    let ci = in_ci();
    let why = if ci {
        format!("no PostgreSQL URL, and CI=true: CI must start PostgreSQL ({HOW})")
    } else {
        format!("no PostgreSQL URL; to run it, {HOW}")
    };
    eprintln!("[postgres] skipped: {why}");
    let mut report = Report::new(
        "postgres",
        "none",
        params(&[("skipped", json!(true))]),
        &Metrics::new(),
        0.0,
        0,
    );
    let mut verdict = Verdict::default();
    verdict.check(
        "a PostgreSQL database to run against",
        !ci,
        if ci {
            "missing under CI=true".to_string()
        } else {
            "none given: skipped (not a failure outside CI)".to_string()
        },
    );
    report.ok = verdict.ok();
    report.verdict = verdict;
    report.skipped = Some(why);
    report
}

/// A schema name unique to this run: lowercase, digits and `_`, far below 63 characters.
fn fresh_schema() -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("load_{}_{nanos}", std::process::id())
}

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let Some(url) = ctx.opts.postgres.clone() else {
        return Ok(skipped());
    };
    let schema = fresh_schema();
    let floor_schema = format!("{schema}_floor");
    let dir = tempfile::tempdir()?;
    let mut config = ctx.floor_config.clone();
    config.data_dir = dir.path().join("unused");
    config.postgres = Some(url.clone());
    config.postgres_options = PostgresOptions {
        schema: schema.clone(),
        ..Default::default()
    };
    eprintln!("[postgres] engine in schema {schema}, floor in {floor_schema}");
    let replicate = match Replicate::open(config) {
        Ok(r) => r,
        Err(e) => {
            // Migrations may have created the schema before the failure.
            drop_schemas(&url, &[&schema]).await;
            return Err(anyhow::Error::from(e))
                .with_context(|| format!("the PostgreSQL engine did not open (schema {schema})"));
        }
    };
    let measured = measure(ctx, &url, &replicate, &schema, &floor_schema).await;
    let closed = replicate.close(Duration::from_secs(10)).await;
    drop_schemas(&url, &[&schema, &floor_schema]).await;
    let mut report = measured?;
    report.verdict.result(
        "the engine closed cleanly (final commit)",
        &closed.map_err(anyhow::Error::from),
        "ok".into(),
    );
    report.ok = report.verdict.ok();
    Ok(report)
}

/// Drops the run's schemas; a failure only prints (it says nothing about the engine).
async fn drop_schemas(url: &str, schemas: &[&str]) {
    let dropped = async {
        let client = floors::pg_connect(url).await?;
        for s in schemas {
            client
                .batch_execute(&format!("DROP SCHEMA IF EXISTS {s} CASCADE"))
                .await
                .with_context(|| format!("DROP SCHEMA {s}"))?;
        }
        anyhow::Ok(())
    }
    .await;
    if let Err(e) = dropped {
        eprintln!(
            "[postgres] could not drop schema(s) {}: {e:#}",
            schemas.join(", ")
        );
    }
}

async fn measure(
    ctx: &Ctx,
    url: &str,
    replicate: &Replicate,
    schema: &str,
    floor_schema: &str,
) -> Result<Report> {
    let backend = Backend::Actor(replicate.clone());
    let n = ctx.opts.writers;
    let metrics = Metrics::new();
    let docs = Rc::new(doc_names(DOCS));
    let c = ctx.collection("postgres");
    let ledger = Ledger::default();

    // The engine: every writer into one collection.
    let rounds_before = replicate.stats().await.flushes;
    let mut run = Run::start("postgres".into(), &backend, &metrics, &[PUSH]);
    let started = Instant::now();
    let writes = Writes::new(&docs, &ledger, started + ctx.opts.duration, PUSH);
    write_all(writers(ctx, &backend, &c, 0, n, &metrics), &writes).await?;
    let seconds = started.elapsed().as_secs_f64();
    run.stop();
    let rounds = replicate.stats().await.flushes - rounds_before;
    let appends = ledger.len() as u64;
    let pushed_bytes = metrics.raw_bytes();
    let engine_rate = appends as f64 / seconds;
    let engine_bytes = pushed_bytes as f64 / seconds;
    let mean_batch = appends as f64 / rounds.max(1) as f64;

    // Verdict (untimed): a fresh reader streams from 0; the standard checks.
    let mut verdict = Verdict::default();
    let head = ledger.head();
    let (reader, caught) =
        read_from_zero(ctx, &backend, &c, 5000, head, Instant::now() + ctx.drain()).await;
    verdict.result(
        "a fresh reader streamed from 0 to the head",
        &caught,
        format!("head {head}"),
    );
    verdict
        .standard(&backend, &c, &[&reader], &ledger, "writers")
        .await;

    // What the engine stored, straight from its table: a check, and the floor's input.
    let mut client = floors::pg_connect(url).await?;
    let rows: Vec<PgRow> = client
        .query(
            &format!(
                "SELECT collection, seq, document_id, bytes FROM {schema}.deltas
                 ORDER BY collection, seq"
            ),
            &[],
        )
        .await
        .context("read back the engine's deltas")?
        .iter()
        .map(|r| PgRow {
            collection: r.get(0),
            seq: r.get(1),
            document_id: r.get(2),
            bytes: r.get(3),
        })
        .collect();
    let stored_bytes: u64 = rows.iter().map(|r| r.bytes.len() as u64).sum();
    let exact = rows.len() as u64 == appends
        && rows
            .iter()
            .enumerate()
            .all(|(i, r)| r.collection == c && r.seq == i as i64 + 1);
    verdict.check(
        "the engine's deltas table holds exactly seqs 1..=N of the collection",
        exact,
        format!(
            "{} rows ({stored_bytes} bytes) for {appends} answered writes ({pushed_bytes} bytes pushed)",
            rows.len()
        ),
    );

    // The floor: the same rows, raw, in batches of the engine's mean group commit.
    let batch = (mean_batch.round() as usize).clamp(1, 100_000);
    let mut floor = None;
    if !ctx.opts.no_floors && !rows.is_empty() {
        let time = (ctx.opts.duration * 2).max(Duration::from_secs(5));
        match floors::postgres_insert(&mut client, floor_schema, &rows, batch, time).await {
            Ok(done) => floor = Some(done),
            Err(e) => eprintln!("[postgres] raw INSERT floor failed: {e:#}"),
        }
    }
    drop(client);
    // The second floor: the same actors and workload on the embedded engine (sled), which
    // shows what of the gap is the engine and what the write path every engine shares.
    let on_sled = match ctx.opts.no_floors {
        true => None,
        false => match same_actors_on_sled(ctx).await {
            Ok(rate) => Some(rate),
            Err(e) => {
                eprintln!("[postgres] the same workload on sled failed: {e:#}");
                None
            }
        },
    };

    let ms_per_round = seconds * 1000.0 / rounds.max(1) as f64;
    let f = floor.unwrap_or_default();
    let ratio = if f.rows > 0 {
        engine_rate / f.rows_per_sec()
    } else {
        0.0
    };
    eprintln!(
        "[postgres] engine {appends} appends in {seconds:.1} s = {engine_rate:.0}/s ({:.2} MB/s), \
         {rounds} commit rounds (mean batch {mean_batch:.1}, one per {ms_per_round:.2} ms); \
         floor {} rows in {} txns of {batch} in {:.2} s = {:.0} rows/s; ratio {ratio:.2} (target ≥ {TARGET})",
        engine_bytes / 1e6,
        f.rows,
        f.transactions,
        f.seconds,
        f.rows_per_sec(),
    );
    let p = params(&[
        ("writers", json!(n)),
        ("documents", json!(DOCS)),
        ("collections", json!(1)),
        ("schema", json!(schema)),
        ("appends", json!(appends)),
        ("appendsPerSec", json!(engine_rate)),
        ("bytesPerSec", json!(engine_bytes)),
        ("commitRounds", json!(rounds)),
        ("meanBatch", json!(mean_batch)),
        ("msPerRound", json!(ms_per_round)),
        ("floorBatch", json!(batch)),
        ("floor", floor_json(floor.as_ref())),
        ("ratio", json!(ratio)),
        ("target", json!(TARGET)),
    ]);
    let mut report = run.report(p, verdict);
    report.backend = "actor on postgres".into();
    if let Some(f) = floor {
        let met = if ratio >= TARGET { "met" } else { "missed" };
        report.floors.push(Floor::rate(
            "appends/s vs raw batched INSERT (same db)",
            engine_rate,
            f.rows_per_sec(),
            "appends/s",
            &format!(
                "target ≥ {TARGET}×: {met}; floor: the engine's {} rows, {} txns of {batch} \
                 (its mean group commit), one connection, synchronous_commit=on",
                f.rows, f.transactions
            ),
        ));
        report.floors.push(Floor::rate(
            "Yjs bytes/s vs raw batched INSERT (same db)",
            engine_bytes,
            f.bytes_per_sec(),
            "bytes/s",
            &format!(
                "the same bytes; engine: a commit round every {:.2} ms of the run, floor: {:.2} ms per txn",
                ms_per_round,
                f.seconds * 1000.0 / f.transactions.max(1) as f64
            ),
        ));
    }
    if let Some(sled_rate) = on_sled {
        report.floors.push(Floor::rate(
            "appends/s vs the same actors on sled (in-process)",
            engine_rate,
            sled_rate,
            "appends/s",
            "same writers, documents, edits and duration; everything but the engine is shared \
             (the Yjs checks, the actor, the group commit)",
        ));
    }
    Ok(report)
}

/// Appends per second of the same workload through the same actors on a fresh sled store.
async fn same_actors_on_sled(ctx: &Ctx) -> Result<f64> {
    let dir = tempfile::tempdir()?;
    let mut config = ctx.floor_config.clone();
    config.data_dir = dir.path().to_path_buf();
    config.postgres = None;
    let replicate = Replicate::open(config)?;
    let backend = Backend::Actor(replicate.clone());
    let metrics = Metrics::new();
    let docs = Rc::new(doc_names(DOCS));
    let c = ctx.collection("postgres-on-sled");
    let ledger = Ledger::default();
    let started = Instant::now();
    let writes = Writes::new(&docs, &ledger, started + ctx.opts.duration, PUSH);
    let n = ctx.opts.writers;
    write_all(writers(ctx, &backend, &c, 0, n, &metrics), &writes).await?;
    let rate = ledger.len() as f64 / started.elapsed().as_secs_f64();
    replicate.close(Duration::from_secs(10)).await?;
    Ok(rate)
}

fn floor_json(f: Option<&PgInserted>) -> serde_json::Value {
    match f {
        Some(f) => json!({
            "rows": f.rows,
            "bytes": f.bytes,
            "transactions": f.transactions,
            "seconds": f.seconds,
            "rowsPerSec": f.rows_per_sec(),
            "bytesPerSec": f.bytes_per_sec(),
        }),
        None => serde_json::Value::Null,
    }
}
