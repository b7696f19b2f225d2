//! The scenarios, one file each, and what they share: the run context ([`Ctx`]), the
//! writer/reader loops built from [`crate::peer::Peer`], and (in [`common`]) the timed run, the
//! tasks and the floor comparisons.
//!
//! With several `--target`s, peers are spread over them round-robin ([`Ctx::peer`]), so writes
//! on one node must reach readers on another; the verdict reads the server through the first.
//!
//! Every loop is bounded twice: by its deadline and by a count. Readers stop once they reach
//! the writers' final head, or when their drain time runs out (which the verdict then reports).

pub mod append;
pub mod catchup;
pub mod common;
pub mod fanout;
pub mod hostile;
pub mod mixed;
pub mod offline_peer;
pub mod postgres;
pub mod reconnect_storm;
pub mod slow_peer;
pub mod soak;
pub mod storage;

use std::cell::Cell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::Result;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replicate_actors::{Config, OperationType, Replicate};
use serde_json::Value;

use crate::auth::Credentials;
use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::peer::Peer;
use crate::report::Report;
use crate::targets::Targets;
use crate::verify::Ledger;
use common::{join_peers, spawn_writers, Writes};

/// Every scenario's name, in the order `all` runs them.
pub const ALL: &[&str] = &[
    "append",
    "fanout",
    "catchup",
    "slow-peer",
    "offline-peer",
    "reconnect-storm",
    "mixed",
    "soak",
    "hostile",
    "storage",
    "postgres",
];

/// Options shared by the scenarios (each uses the ones that apply to it).
#[derive(Debug, Clone)]
pub struct Options {
    pub quick: bool,
    pub seed: u64,
    /// The timed part of a scenario.
    pub duration: Duration,
    /// Writers for `append` (default 64).
    pub writers: usize,
    /// Subscribers for `fanout` and peers for `reconnect-storm` (default 200).
    pub subscribers: usize,
    /// Writes per second of the `fanout` writers together.
    pub rate: f64,
    /// How far behind the `catchup` peer is, in deltas.
    pub deltas: u64,
    /// Skip the floor measurements.
    pub no_floors: bool,
    /// The PostgreSQL database `postgres` runs against (none: that scenario is skipped).
    pub postgres: Option<String>,
    /// How long `soak` runs (default 10 minutes, 25 s with `--quick`, or `--duration`).
    pub soak: Duration,
    /// Whether the service is someone else's (`--target`) rather than started by this run.
    pub remote: bool,
    /// The `--target` server's process, whose memory `soak` samples.
    pub server_pid: Option<u32>,
    /// The `--target` server's data directory, whose size `soak` samples.
    pub server_data: Option<std::path::PathBuf>,
}

/// What a scenario runs against.
pub struct Ctx {
    pub opts: Options,
    /// The service under test.
    pub backend: Backend,
    /// The config the in-process floors start their own actors with.
    pub floor_config: Config,
    /// The servers when the service is reached over HTTP: peer `i` talks to
    /// `targets.for_peer(i)` (see [`Ctx::peer`]); everything else (the verdict's reads of the
    /// server, compactions, `hostile`'s raw requests) goes to the first.
    pub targets: Option<Targets>,
    /// The token requests carry, if the service wants one.
    pub credentials: Option<Credentials>,
    /// The in-process server's own actors (none with `--target`): a floor on the very data
    /// the service holds (see `catchup`).
    pub service_actors: Option<Replicate>,
    run_id: String,
    floor_actor: std::cell::RefCell<Option<(Replicate, tempfile::TempDir)>>,
}

impl Ctx {
    pub fn new(opts: Options, backend: Backend, floor_config: Config) -> Ctx {
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        Ctx {
            run_id: format!("{}-{}", opts.seed, millis % 1_000_000_000),
            opts,
            backend,
            floor_config,
            targets: None,
            credentials: None,
            service_actors: None,
            floor_actor: Default::default(),
        }
    }

    /// Records the servers (see [`Ctx::targets`]).
    pub fn with_targets(self, targets: &Targets) -> Ctx {
        Ctx {
            targets: Some(targets.clone()),
            ..self
        }
    }

    /// Records the in-process server's actors (see [`Ctx::service_actors`]).
    pub fn with_service_actors(self, service_actors: Option<Replicate>) -> Ctx {
        Ctx {
            service_actors,
            ..self
        }
    }

    /// How many servers the peers are spread over (1 in-process).
    pub fn target_count(&self) -> usize {
        self.targets.as_ref().map_or(1, Targets::len)
    }

    /// Records the token requests carry (see [`Ctx::credentials`]).
    pub fn with_credentials(self, credentials: Option<Credentials>) -> Ctx {
        Ctx {
            credentials,
            ..self
        }
    }

    /// Peer `index` of collection `c` (its choices seeded from `--seed`), talking to target
    /// `index % n` when `backend` is HTTP over several.
    pub fn peer(&self, index: u64, c: &str, backend: &Backend, metrics: &Metrics) -> Peer {
        Peer::new(
            index,
            c,
            backend.for_peer(index),
            metrics.clone(),
            self.opts.seed,
        )
    }

    /// A collection name unique to this run (so `--target` can point at a used server).
    pub fn collection(&self, name: &str) -> String {
        format!("load-{name}-{}", self.run_id)
    }

    pub fn rng(&self, salt: u64) -> StdRng {
        StdRng::seed_from_u64(self.opts.seed ^ salt.wrapping_mul(0x2545_F491_4F6C_DD1D))
    }

    /// The in-process actors (no HTTP) the HTTP figures are compared with, started on first use
    /// on their own temporary directory.
    ///
    /// # Errors
    /// If the store cannot be opened.
    pub fn actor_backend(&self) -> Result<Backend> {
        let mut slot = self.floor_actor.borrow_mut();
        if slot.is_none() {
            let dir = tempfile::tempdir()?;
            let mut config = self.floor_config.clone();
            config.data_dir = dir.path().join("floor");
            let r = Replicate::open(config)?;
            *slot = Some((r, dir));
        }
        Ok(Backend::Actor(slot.as_ref().expect("set above").0.clone()))
    }

    /// How long readers may take to drain after the writers stop.
    pub fn drain(&self) -> Duration {
        if self.opts.quick {
            Duration::from_secs(30)
        } else {
            Duration::from_secs(120)
        }
    }

    /// A shorter run of the same workload for an in-process floor.
    pub fn floor_duration(&self) -> Duration {
        (self.opts.duration / 2).max(Duration::from_secs(1))
    }
}

/// The documents a scenario writes to.
pub fn doc_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("doc-{i}")).collect()
}

/// A writer loop: pushes edits to random documents of `writes.docs` until its deadline (or its
/// budget, or 100M writes), at most `writes.rate` per second if given. Inserts first, then
/// updates, with an occasional delete when `writes.deletes` is set. Answers the peer back.
pub async fn write_loop(mut peer: Peer, writes: Writes) -> Peer {
    peer.steady = writes.steady;
    let mut next_at = writes.start.unwrap_or_else(Instant::now);
    let mut written = std::collections::HashSet::new();
    for _ in 0..100_000_000u64 {
        if Instant::now() >= writes.deadline {
            break;
        }
        if let Some(budget) = &writes.budget {
            if budget.get() == 0 {
                break;
            }
            budget.set(budget.get() - 1);
        }
        if let Some(rate) = writes.rate {
            next_at += Duration::from_secs_f64(1.0 / rate);
            let now = Instant::now();
            if next_at > now {
                tokio::time::sleep(next_at - now).await;
            } else if now - next_at > Duration::from_secs(1) {
                next_at = now; // fell behind: do not burst to catch up
            }
        }
        let docs = &writes.docs;
        let doc = &docs[peer.rng().gen_range(0..docs.len())];
        let op = if written.insert(doc.clone()) {
            OperationType::Insert
        } else if writes.deletes && peer.rng().gen_ratio(1, 50) {
            OperationType::Delete
        } else {
            OperationType::Update
        };
        // A push that fails all its retries is counted in the errors; the verdict then shows
        // whether anything was lost.
        let _ = peer.push(doc, op, writes.op, &writes.ledger).await;
    }
    peer
}

/// The writers' final head, published once they have all stopped.
#[derive(Clone, Default)]
pub struct Target(Rc<Cell<Option<u64>>>);

impl Target {
    pub fn set(&self, head: u64) {
        self.0.set(Some(head));
    }
    pub fn get(&self) -> Option<u64> {
        self.0.get()
    }
    fn reached(&self, cursor: u64) -> bool {
        self.get().is_some_and(|t| cursor >= t)
    }
}

/// How a reader follows the collection.
#[derive(Clone, Copy, Debug)]
pub struct ReadStyle {
    /// SSE feed instead of long-poll.
    pub sse: bool,
    pub limit: usize,
    /// Ack after every page (long-poll) or every `ack_every` changes (SSE).
    pub ack: bool,
    /// Pause between pages (a slow peer).
    pub pause: Duration,
}

impl ReadStyle {
    pub fn long_poll() -> Self {
        ReadStyle {
            sse: false,
            limit: 1000,
            ack: false,
            pause: Duration::ZERO,
        }
    }
    pub fn sse() -> Self {
        ReadStyle {
            sse: true,
            ..Self::long_poll()
        }
    }
    /// Long-poll, acking after every page.
    pub fn acking() -> Self {
        ReadStyle {
            ack: true,
            ..Self::long_poll()
        }
    }
    /// Long-poll pages of `limit`, acked, with `pause` between them.
    pub fn slow(limit: usize, pause: Duration) -> Self {
        ReadStyle {
            limit,
            pause,
            ..Self::acking()
        }
    }
}

/// A reader loop: follows the collection until `target` is reached or `hard_deadline`
/// passes. Errors are recorded (in the peer's metrics) and retried after a pause (a reconnect,
/// for SSE).
pub async fn read_loop(
    mut peer: Peer,
    style: ReadStyle,
    target: Target,
    hard_deadline: Instant,
    op_name: &'static str,
) -> Peer {
    let metrics = peer.metrics().clone();
    let wait = Duration::from_millis(1000);
    let mut events = None;
    for _ in 0..10_000_000u64 {
        if target.reached(peer.cursor) || Instant::now() >= hard_deadline {
            break;
        }
        let result = if style.sse {
            if events.is_none() {
                match peer.backend().events(&peer.collection, peer.cursor).await {
                    Ok(e) => events = Some(e),
                    Err(e) => {
                        metrics.error(op_name, &e);
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            let feed = events.as_mut().expect("opened above");
            let until = (Instant::now() + wait).min(hard_deadline);
            peer.follow(feed, target.get(), until, op_name).await
        } else {
            peer.pull(style.limit, wait, op_name).await.map(|_| ())
        };
        match result {
            Ok(()) => {
                if style.ack && peer.cursor > 0 {
                    let _ = peer.ack().await;
                }
                if !style.pause.is_zero() {
                    tokio::time::sleep(style.pause).await;
                }
            }
            Err(e) => {
                metrics.error(op_name, &e);
                events = None;
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
    peer
}

/// Starts `n` writer peers numbered from `first`.
pub fn writers(
    ctx: &Ctx,
    backend: &Backend,
    collection: &str,
    first: u64,
    n: usize,
    metrics: &Metrics,
) -> Vec<Peer> {
    (0..n as u64)
        .map(|i| ctx.peer(first + i, collection, backend, metrics))
        .collect()
}

/// Runs `f` over the in-process actors unless floors are off; `None` if off or it failed.
pub async fn actor_floor<F, Fut>(ctx: &Ctx, f: F) -> Option<Report>
where
    F: FnOnce(Backend) -> Fut,
    Fut: std::future::Future<Output = Result<Report>>,
{
    if ctx.opts.no_floors {
        return None;
    }
    let backend = match ctx.actor_backend() {
        Ok(b) => b,
        Err(e) => {
            eprintln!("floor: in-process actors did not start: {e:#}");
            return None;
        }
    };
    match f(backend).await {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!("floor: in-process run failed: {e:#}");
            None
        }
    }
}

/// Parameters as JSON for the report.
pub fn params(pairs: &[(&str, Value)]) -> Value {
    Value::Object(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

/// A filled collection: every write answered, and how long the fill took.
pub struct Filled {
    pub ledger: Ledger,
    pub seconds: f64,
}

/// Fills collection `c` with `n` writes by up to 64 concurrent peers over `docs`, as fast as
/// they are answered (for at most `within`), with a progress line labelled `label`.
///
/// # Errors
/// If a writer task failed.
pub async fn fill(
    ctx: &Ctx,
    backend: &Backend,
    c: &str,
    docs: &Rc<Vec<String>>,
    n: u64,
    within: Duration,
    label: &str,
) -> Result<Filled> {
    let metrics = Metrics::new();
    let started = Instant::now();
    let progress = crate::report::Progress::start(
        format!("{label} fill {}", backend.label()),
        metrics.clone(),
        &["fill"],
    );
    let ledger = Ledger::default();
    let writes = Writes::new(docs, &ledger, started + within, "fill").at_most(n);
    join_peers(spawn_writers(
        writers(ctx, backend, c, 0, ctx.opts.writers.min(64), &metrics),
        &writes,
    ))
    .await?;
    drop(progress);
    let seconds = started.elapsed().as_secs_f64();
    eprintln!(
        "[{label}] filled {} deltas in {seconds:.1} s ({:.0}/s)",
        ledger.head(),
        ledger.len() as f64 / seconds
    );
    Ok(Filled { ledger, seconds })
}

/// One compaction as measured: its latency and about how many deltas it merged.
#[derive(Debug, Clone, Copy)]
pub struct CompactionRun {
    pub millis: f64,
    pub merged: u64,
    pub removed: u64,
}

/// Compacts every document of `docs` every `every` until `deadline`, with `peer_timeout` if
/// given. Answers every compaction done.
pub async fn compact_loop(
    backend: Backend,
    c: String,
    docs: Rc<Vec<String>>,
    every: Duration,
    peer_timeout: Option<Duration>,
    deadline: Instant,
    metrics: Metrics,
) -> Vec<CompactionRun> {
    let mut runs = Vec::new();
    for _ in 0..1_000_000u64 {
        tokio::time::sleep(every).await;
        if Instant::now() >= deadline {
            break;
        }
        for doc in docs.iter() {
            let t = Instant::now();
            match crate::metrics::timed(&metrics, "compact", backend.compact(&c, doc, peer_timeout))
                .await
            {
                Ok(done) => {
                    // Retained counts deltas kept after the merge (merged but held back, or newer).
                    let merged = done.removed + done.retained;
                    metrics.items("compact", merged);
                    runs.push(CompactionRun {
                        millis: t.elapsed().as_secs_f64() * 1000.0,
                        merged,
                        removed: done.removed,
                    });
                }
                Err(_) => continue,
            }
        }
    }
    runs
}

/// Floor for compaction: the largest compaction measured against raw yrs apply+encode of as
/// many realistic deltas.
pub fn compaction_floor(
    runs: &[CompactionRun],
    writers: u64,
    seed: u64,
) -> Option<crate::report::Floor> {
    let big = runs.iter().max_by_key(|r| r.merged)?;
    if big.merged == 0 {
        return None;
    }
    let updates = crate::floors::sample_updates(big.merged as usize, writers, seed);
    let raw = crate::floors::yrs_merge(&updates, 3).ok()? * 1000.0;
    Some(crate::report::Floor::cost(
        "largest compaction vs raw yrs apply+encode",
        big.millis,
        raw,
        "ms",
        &format!(
            "{} deltas merged ({} removed); floor: best of 3 on as many generated deltas",
            big.merged, big.removed
        ),
    ))
}
