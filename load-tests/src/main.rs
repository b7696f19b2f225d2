//! `replicate-load`: runs the bundled load scenarios against an in-process server (default) or
//! `--target URL[,URL…]` (peers spread over them), prints a table per scenario and a correctness verdict, and exits non-zero if
//! any verdict is wrong (never because of speed).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Result};
use clap::Parser;
use replicate_actors::Config;
use replicate_load::auth::Credentials;
use replicate_load::backend::{Backend, Http};
use replicate_load::report::Report;
use replicate_load::scenarios::{self, Ctx, Options, ALL};
use replicate_load::server::Server;
use replicate_load::targets::Targets;

#[derive(Parser, Debug)]
#[command(
    name = "replicate-load",
    about = "Load scenarios for replicate: throughput, latency, correctness"
)]
struct Args {
    /// append, fanout, catchup, slow-peer, offline-peer, reconnect-storm, mixed, soak,
    /// hostile, storage, postgres; several joined by commas (e.g. storage,postgres); or all
    /// (the default).
    #[arg(long, default_value = "all")]
    scenario: String,
    /// Base URL of a running server (e.g. http://127.0.0.1:8080), or several, comma-separated
    /// (e.g. two nodes on one PostgreSQL: http://127.0.0.1:8081,http://127.0.0.1:8082): peer i
    /// talks to the (i mod n)-th, the verdict and compactions to the first. Default: start one
    /// in-process on a temporary directory and port 0.
    #[arg(long)]
    target: Option<Targets>,
    /// Bearer token for every --target (admin on `*`, or on `load-*`; peers ack as `<sub>:<peer>`).
    /// Mint one with `replicate-server token --secret-file F --sub load --grant '*=admin'`.
    #[arg(long, env = "REPLICATE_LOAD_TOKEN", requires = "target")]
    token: Option<String>,
    /// Run the in-process server anonymously (default: authentication on, a token minted for
    /// the run).
    #[arg(long, conflicts_with = "target")]
    no_auth: bool,
    /// A few seconds per scenario with small sizes; fails only on a wrong verdict.
    #[arg(long)]
    quick: bool,
    /// Seed for every random choice (documents, edits, cursors), for repeatable runs.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Seconds of load per scenario (default 20, or 3 with --quick; `soak`: 600, or 25 with
    /// --quick).
    #[arg(long)]
    duration: Option<f64>,
    /// With --target: the server's process id, whose RSS `soak` samples (`/proc/PID/status`).
    #[arg(long, requires = "target")]
    server_pid: Option<u32>,
    /// With --target: the server's data directory, whose size `soak` samples.
    #[arg(long, requires = "target")]
    server_data: Option<PathBuf>,
    /// Internal: serve on this sled directory as `soak`'s child server (see `child.rs`).
    #[arg(long, hide = true)]
    serve_child: Option<PathBuf>,
    /// Internal: how long the child server remembers op ids (see `soak`).
    #[arg(long, hide = true, default_value_t = 7 * 24 * 3600)]
    child_op_id_ttl_secs: u64,
    /// Concurrent writers in `append`.
    #[arg(long, default_value_t = 64)]
    writers: usize,
    /// Subscribers in `fanout`, peers in `reconnect-storm` (default 200, or 50 with --quick).
    #[arg(long)]
    subscribers: Option<usize>,
    /// Writes per second of the `fanout` writers together (default 200, or 40 with --quick).
    #[arg(long)]
    rate: Option<f64>,
    /// How far behind the `catchup` peer is (default 1,000,000, or 20,000 with --quick).
    #[arg(long)]
    deltas: Option<u64>,
    /// Document cache of the in-process server and floors, in bytes (default: the server's,
    /// 64 MiB). `catchup`'s 1,000,000 deltas make 16 documents of ~40 MB built each: with the
    /// default the cache holds one or two, every write to another rebuilds it, and the fill
    /// slows from ~11,000 to a few hundred writes a second.
    #[arg(long)]
    doc_cache_bytes: Option<u64>,
    /// Write the reports as JSON to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Skip the floor measurements.
    #[arg(long)]
    no_floors: bool,
    /// PostgreSQL database for the `postgres` scenario (a `postgres://` URL; default: env
    /// REPLICATE_TEST_POSTGRES). Each run uses fresh schemas and drops them. Without one the
    /// scenario is skipped (a failure under CI=true).
    #[arg(long, env = "REPLICATE_LOAD_POSTGRES")]
    postgres: Option<String>,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(dir) = &args.serve_child {
        let op_id_ttl = Duration::from_secs(args.child_op_id_ttl_secs.max(1));
        return match replicate_load::child::serve(dir, op_id_ttl) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("replicate-load: {e:#}");
                ExitCode::from(2)
            }
        };
    }
    match actix_rt::System::new().block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            eprintln!("replicate-load: at least one verdict is WRONG");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("replicate-load: {e:#}");
            ExitCode::from(2)
        }
    }
}

async fn run(args: Args) -> Result<bool> {
    let names: Vec<&str> = if args.scenario == "all" {
        ALL.to_vec()
    } else {
        // One, or several comma-separated, run in the order given (one run: one report).
        let mut names = Vec::new();
        for wanted in args.scenario.split(',').map(str::trim) {
            match ALL.iter().find(|n| **n == wanted) {
                Some(n) => names.push(*n),
                None => bail!(
                    "unknown scenario {wanted:?}; one of {}, several joined by commas, or all",
                    ALL.join(", ")
                ),
            }
        }
        names
    };
    let opts = Options {
        quick: args.quick,
        seed: args.seed,
        duration: Duration::from_secs_f64(
            args.duration
                .unwrap_or(if args.quick { 3.0 } else { 20.0 })
                .clamp(0.5, 3600.0),
        ),
        writers: args.writers.clamp(1, 4096),
        subscribers: args
            .subscribers
            .unwrap_or(if args.quick { 50 } else { 200 })
            .clamp(1, 10_000),
        rate: args
            .rate
            .unwrap_or(if args.quick { 40.0 } else { 200.0 })
            .clamp(0.1, 100_000.0),
        deltas: args
            .deltas
            .unwrap_or(if args.quick { 20_000 } else { 1_000_000 })
            .clamp(10, 100_000_000),
        no_floors: args.no_floors,
        postgres: args
            .postgres
            .clone()
            .or_else(|| std::env::var("REPLICATE_TEST_POSTGRES").ok())
            .filter(|url| !url.trim().is_empty()),
        soak: Duration::from_secs_f64(
            args.duration
                // 25 s with --quick, so the whole scenario (child start, drain, verdict) stays
                // within the 30 s CI gives it.
                .unwrap_or(if args.quick { 25.0 } else { 600.0 })
                .clamp(0.5, 24.0 * 3600.0),
        ),
        remote: args.target.is_some(),
        server_pid: args.server_pid,
        server_data: args.server_data.clone(),
    };
    let mut config = Config::new("unused");
    if let Some(bytes) = args.doc_cache_bytes {
        config.doc_cache_bytes = bytes;
    }
    let server = match &args.target {
        Some(targets) => Server::remote(targets.clone()),
        None => Server::in_process(config.clone(), !args.no_auth)?,
    };
    let credentials = match &args.token {
        Some(token) => Some(Credentials::given(token)?),
        None => server.credentials.clone(),
    };
    let http = Http::new(server.targets.clone()).with_credentials(credentials.clone());
    server.wait_healthy(&http, Duration::from_secs(10)).await?;
    eprintln!(
        "replicate-load: {} against {} (seed {}, {})",
        names.join(", "),
        server.targets,
        opts.seed,
        if credentials.is_some() {
            "with a token"
        } else {
            "anonymous"
        }
    );
    let ctx = Ctx::new(opts, Backend::Http(http), config)
        .with_targets(&server.targets)
        .with_credentials(credentials)
        .with_service_actors(server.service_actors());

    let mut reports: Vec<Report> = Vec::new();
    let mut all_ok = true;
    for name in names {
        let result = match name {
            "append" => scenarios::append::run(&ctx).await,
            "fanout" => scenarios::fanout::run(&ctx).await,
            "catchup" => scenarios::catchup::run(&ctx).await,
            "slow-peer" => scenarios::slow_peer::run(&ctx).await,
            "offline-peer" => scenarios::offline_peer::run(&ctx).await,
            "reconnect-storm" => scenarios::reconnect_storm::run(&ctx).await,
            "mixed" => scenarios::mixed::run(&ctx).await,
            "soak" => scenarios::soak::run(&ctx).await,
            "hostile" => scenarios::hostile::run(&ctx).await,
            "storage" => scenarios::storage::run(&ctx).await,
            "postgres" => scenarios::postgres::run(&ctx).await,
            _ => unreachable!("names come from ALL"),
        };
        match result {
            Ok(report) => {
                report.print();
                all_ok &= report.ok;
                reports.push(report);
            }
            Err(e) => {
                println!("\n== {name}: did not run to the end: {e:#}\nverdict: WRONG");
                all_ok = false;
            }
        }
    }
    if let Some(path) = &args.out {
        std::fs::write(path, serde_json::to_vec_pretty(&reports)?)?;
        eprintln!("replicate-load: wrote {}", path.display());
    }
    println!(
        "\nreplicate-load: {} scenario(s), overall verdict {}",
        reports.len(),
        if all_ok { "CORRECT" } else { "WRONG" }
    );
    Ok(all_ok)
}
