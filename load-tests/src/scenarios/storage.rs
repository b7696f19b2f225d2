//! `storage`: what the store keeps on disk for what is live. Two measurements, each on its own
//! fresh store (in-process actors on a temporary directory, so the directory holds nothing
//! else; with `--target` too, one or several, since a remote disk cannot be measured):
//!
//! - **mixed edits**: 64 writers push N deltas (100,000; 4,000 with `--quick`) across 64
//!   documents, the edits every scenario makes (text inserts/deletes in bounded blocks plus a
//!   map key per edit);
//! - **typing**: 16 typists each type into their own document, 32,000 small text edits in all
//!   (2,000 with `--quick`): 1–4 characters at a time at a cursor, a backspace now and then,
//!   sometimes a jump elsewhere, like a person typing.
//!
//! For each: bytes on disk (the data directory's files) ÷ live bytes (snapshots' bytes and
//! state vectors + the retained deltas' Yjs bytes, from the collection stats) after the fill;
//! then a peer streams to the head and acks, every document is compacted until nothing is
//! retained, the store is flushed, and the ratio is taken again right away and after a wait
//! (sled reclaims segments asynchronously; the smallest size seen is reported). The issue's
//! targets (beyond a fixed 8 MiB for the engine's own files: ≤ 4× before compaction, ≤ 3×
//! after) are reported next to the figures, never judged: the verdict checks only correctness
//! (contiguous seqs, every delta compacted away, a fresh reader and the acking peer identical
//! to the server, every answered edit present; each typist's text equal to the server's).

use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _, Result};
use rand::rngs::StdRng;
use rand::Rng;
use replicate_actors::{OperationType, Replicate, Store, SystemClock};
use serde_json::{json, Value};
use yrs::updates::decoder::Decode;
use yrs::{Doc, GetString, Text, TextRef, Transact, Update};

use super::common::{join, read_from_zero, Run};
use super::{doc_names, fill, params, Ctx};
use crate::backend::Backend;
use crate::metrics::{timed, Metrics};
use crate::peer::empty_state_vector;
use crate::report::{Floor, Report};
use crate::verify::{seqs_contiguous, Ledger, Verdict};

/// The engine's own files, not counted against the targets (the allowance).
pub const ENGINE_ALLOWANCE: u64 = 8 << 20;
/// Disk ÷ live beyond [`ENGINE_ALLOWANCE`] the issue asks for before compaction.
pub const TARGET_BEFORE: f64 = 4.0;
/// The same after compacting everything.
pub const TARGET_AFTER: f64 = 3.0;

const TYPE: &str = "push (typing)";
const COMPACT: &str = "compact";
const TYPISTS: usize = 16;
/// Client ids of the typists (below 2^32, far above the peers').
const TYPIST_CLIENTS: u64 = 0x4000_0000;

/// Sizes of a store's directory.
#[derive(Debug, Clone, Copy, Default)]
pub struct Sizes {
    /// Sum of the files' lengths.
    pub disk: u64,
    /// Blocks the files occupy (`du`).
    pub allocated: u64,
    /// What sled itself reports (`size_on_disk`).
    pub sled: u64,
    pub files: u64,
}

/// Files' lengths, allocated bytes and count under `path`.
///
/// # Errors
/// If the directory cannot be read.
pub fn dir_sizes(path: &Path) -> Result<(u64, u64, u64)> {
    let mut out = (0, 0, 0);
    let mut dirs = vec![path.to_path_buf()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).with_context(|| dir.display().to_string())? {
            let entry = entry?;
            // A file sled removes while we walk is simply not counted.
            let Ok(meta) = entry.metadata() else { continue };
            if meta.is_dir() {
                dirs.push(entry.path());
            } else {
                out.0 += meta.len();
                out.1 += allocated(&meta);
                out.2 += 1;
            }
        }
    }
    Ok(out)
}

#[cfg(unix)]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    use std::os::unix::fs::MetadataExt;
    meta.blocks() * 512
}

#[cfg(not(unix))]
fn allocated(meta: &std::fs::Metadata) -> u64 {
    meta.len()
}

/// One fresh store with actors on it.
struct Engine {
    replicate: Replicate,
    store: Store,
    path: PathBuf,
    _dir: tempfile::TempDir,
}

impl Engine {
    fn open(ctx: &Ctx) -> Result<Engine> {
        let dir = tempfile::tempdir()?;
        let mut config = ctx.floor_config.clone();
        config.data_dir = dir.path().join("data");
        let store = Store::open(&config.data_dir, config.cache_bytes)?;
        let path = config.data_dir.clone();
        let replicate = Replicate::start(config, store.clone(), Arc::new(SystemClock))?;
        Ok(Engine {
            replicate,
            store,
            path,
            _dir: dir,
        })
    }

    fn backend(&self) -> Backend {
        Backend::Actor(self.replicate.clone())
    }

    fn sizes(&self) -> Result<Sizes> {
        let (disk, allocated, files) = dir_sizes(&self.path)?;
        Ok(Sizes {
            disk,
            allocated,
            sled: self.store.size_on_disk()?,
            files,
        })
    }

    /// Live bytes of collection `c`: (retained delta bytes, snapshot bytes, snapshots).
    async fn live(&self, c: &str) -> Result<(u64, u64, usize)> {
        let retained = self.replicate.collection_stats(c).await?.retained_bytes;
        let snapshots = self.store.snapshots(c)?;
        let bytes = snapshots
            .iter()
            .map(|(_, s)| (s.bytes.len() + s.state_vector.len()) as u64)
            .sum();
        Ok((retained, bytes, snapshots.len()))
    }

    /// Flushes (off this thread: it blocks).
    async fn flush(&self) -> Result<()> {
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| anyhow!("flush task: {e}"))??;
        Ok(())
    }

    /// Sizes after a flush, then the smallest directory seen while waiting `wait` (sled
    /// cleans segments on its flusher thread, twice a second).
    async fn settle(&self, wait: Duration) -> Result<(Sizes, Sizes)> {
        self.flush().await?;
        let now = self.sizes()?;
        let mut least = now;
        let until = Instant::now() + wait;
        while Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(250)).await;
            self.flush().await?;
            let s = self.sizes()?;
            if s.disk < least.disk {
                least = s;
            }
        }
        Ok((now, least))
    }

    async fn close(self) {
        let _ = self.replicate.close(Duration::from_secs(10)).await;
    }
}

/// A person typing into one document: short inserts at a cursor, now and then a backspace or
/// a jump to another place.
struct Typist {
    doc: Doc,
    text: TextRef,
    cursor: u32,
    rng: StdRng,
}

impl Typist {
    fn new(client: u64, rng: StdRng) -> Typist {
        let doc = Doc::with_client_id(client);
        let text = doc.get_or_insert_text("t");
        Typist {
            doc,
            text,
            cursor: 0,
            rng,
        }
    }

    fn edit(&mut self) -> Vec<u8> {
        const WORDS: &[u8] = b"etaoin shrdlu cmfwyp vbgkqjxz ETAOIN .,";
        let mut txn = self.doc.transact_mut();
        let len = self.text.len(&txn);
        let roll = self.rng.gen_range(0..100u32);
        if roll < 10 && self.cursor > 0 {
            self.text.remove_range(&mut txn, self.cursor - 1, 1);
            self.cursor -= 1;
        } else {
            if roll >= 97 {
                self.cursor = self.rng.gen_range(0..=len);
            }
            let n = self.rng.gen_range(1..=4);
            let s: String = (0..n)
                .map(|_| WORDS[self.rng.gen_range(0..WORDS.len())] as char)
                .collect();
            self.text.insert(&mut txn, self.cursor, &s);
            self.cursor += n;
        }
        txn.encode_update_v1()
    }

    fn content(&self) -> String {
        self.text.get_string(&self.doc.transact())
    }
}

/// Types `edits` edits into `doc`, pushing each as it is made (retrying with its opId).
async fn type_into(
    mut typist: Typist,
    backend: Backend,
    c: String,
    doc: String,
    edits: usize,
    ledger: Ledger,
    metrics: Metrics,
) -> (Typist, Option<String>) {
    for i in 0..edits {
        let update = typist.edit();
        let op_id = format!("{doc}:{i}");
        let op = if i == 0 {
            OperationType::Insert
        } else {
            OperationType::Update
        };
        let started = Instant::now();
        let mut answered = None;
        let mut last = None;
        for attempt in 0..5u32 {
            match timed(
                &metrics,
                TYPE,
                backend.write(&c, op, &doc, &update, Some(&op_id)),
            )
            .await
            {
                Ok(seq) => {
                    answered = Some(seq);
                    break;
                }
                Err(e) => {
                    last = Some(format!("{e:#}"));
                    tokio::time::sleep(Duration::from_millis(10 << attempt)).await;
                }
            }
        }
        match answered {
            Some(seq) => {
                metrics.raw(TYPE, update.len());
                ledger.record(seq, &doc, &op_id, started);
            }
            // The rest of this typist's edits would depend on the lost one.
            None => return (typist, last),
        }
    }
    (typist, None)
}

/// Compacts every document until a round removes nothing more; answers the deltas removed,
/// the deltas still retained (the acked head's own delta stays: compaction deletes only below
/// every active peer's ack) and the failures.
async fn compact_all(
    backend: &Backend,
    c: &str,
    docs: &[String],
    metrics: &Metrics,
) -> (u64, u64, Vec<String>) {
    let (mut removed, mut retained) = (0, 0);
    let mut failures = Vec::new();
    for doc in docs {
        for round in 0..8 {
            match timed(metrics, COMPACT, backend.compact(c, doc, None)).await {
                Ok(done) => {
                    metrics.items(COMPACT, done.removed);
                    removed += done.removed;
                    if done.retained == 0 || done.removed == 0 {
                        retained += done.retained;
                        break;
                    }
                    if round == 7 {
                        failures.push(format!("{doc}: {} deltas still retained", done.retained));
                    }
                }
                Err(e) => {
                    failures.push(format!("{doc}: {e:#}"));
                    break;
                }
            }
        }
    }
    (removed, retained, failures)
}

/// One measurement's figures.
#[derive(Debug, Default)]
struct Measured {
    label: &'static str,
    deltas: u64,
    documents: usize,
    yjs_bytes: u64,
    live_before: u64,
    before: Sizes,
    live_after: u64,
    snapshots: usize,
    after_flush: Sizes,
    after_wait: Sizes,
    wait: Duration,
    fill_secs: f64,
    compact_secs: f64,
}

/// Disk beyond the engine's allowance ÷ live.
fn excess(disk: u64, live: u64) -> f64 {
    disk.saturating_sub(ENGINE_ALLOWANCE) as f64 / live.max(1) as f64
}

fn mb(b: u64) -> f64 {
    b as f64 / 1e6
}

impl Measured {
    fn floors(&self) -> Vec<Floor> {
        let one = |when: &str, disk: Sizes, live: u64, target: f64| {
            let beyond = excess(disk.disk, live);
            Floor::rate(
                &format!("{}: disk ÷ live, {when}", self.label),
                mb(disk.disk),
                mb(live),
                "MB",
                &format!(
                    "beyond 8 MiB {beyond:.1}× (target ≤ {target}×: {}); du {:.1} MB, sled {:.1} MB, {} files; lower is better",
                    if beyond <= target { "met" } else { "missed" },
                    mb(disk.allocated),
                    mb(disk.sled),
                    disk.files
                ),
            )
        };
        vec![
            one(
                &format!("{} deltas, before compaction", self.deltas),
                self.before,
                self.live_before,
                TARGET_BEFORE,
            ),
            one(
                "after compacting all, flush",
                self.after_flush,
                self.live_after,
                TARGET_AFTER,
            ),
            one(
                &format!("after compaction + {:.0} s", self.wait.as_secs_f64()),
                self.after_wait,
                self.live_after,
                TARGET_AFTER,
            ),
        ]
    }

    fn json(&self) -> Value {
        let sizes = |s: Sizes| json!({ "disk": s.disk, "allocated": s.allocated, "sled": s.sled, "files": s.files });
        json!({
            "deltas": self.deltas,
            "documents": self.documents,
            "yjsBytes": self.yjs_bytes,
            "liveBefore": self.live_before,
            "before": sizes(self.before),
            "ratioBefore": self.before.disk as f64 / self.live_before.max(1) as f64,
            "excessRatioBefore": excess(self.before.disk, self.live_before),
            "liveAfter": self.live_after,
            "snapshots": self.snapshots,
            "afterFlush": sizes(self.after_flush),
            "afterWait": sizes(self.after_wait),
            "waitSecs": self.wait.as_secs_f64(),
            "ratioAfter": self.after_wait.disk as f64 / self.live_after.max(1) as f64,
            "excessRatioAfter": excess(self.after_wait.disk, self.live_after),
            "fillSecs": self.fill_secs,
            "compactSecs": self.compact_secs,
        })
    }

    fn print(&self) {
        eprintln!(
            "[storage] {}: {} deltas ({:.2} MB Yjs) in {} docs: before {:.1} MB on disk / {:.2} MB live = {:.1}x ({:.1}x beyond 8 MiB); \
             after compaction {:.1} MB (flush) -> {:.1} MB ({:.0} s) / {:.2} MB live = {:.1}x ({:.1}x beyond 8 MiB)",
            self.label,
            self.deltas,
            mb(self.yjs_bytes),
            self.documents,
            mb(self.before.disk),
            mb(self.live_before),
            self.before.disk as f64 / self.live_before.max(1) as f64,
            excess(self.before.disk, self.live_before),
            mb(self.after_flush.disk),
            mb(self.after_wait.disk),
            self.wait.as_secs_f64(),
            mb(self.live_after),
            self.after_wait.disk as f64 / self.live_after.max(1) as f64,
            excess(self.after_wait.disk, self.live_after),
        );
    }
}

/// The part after a fill: sizes before, an acking peer at the head, compaction of everything,
/// sizes after. Adds its checks to `verdict` (prefixed by the measurement's label).
async fn compact_and_measure(
    ctx: &Ctx,
    engine: &Engine,
    c: &str,
    docs: &[String],
    m: &mut Measured,
    metrics: &Metrics,
    verdict: &mut Verdict,
) -> Result<crate::peer::Peer> {
    let backend = engine.backend();
    let (_, before) = engine.settle(Duration::ZERO).await?;
    m.before = before;
    let (retained, snap, _) = engine.live(c).await?;
    m.live_before = retained + snap;
    m.yjs_bytes = retained;

    // Every peer has acked the head, so compaction may delete everything.
    let head = engine.replicate.collection_stats(c).await?.durable_seq;
    let mut acker = ctx.peer(900, c, &backend, &Metrics::new());
    let caught = acker
        .catch_up(head, Instant::now() + ctx.drain(), "stream")
        .await;
    let acked = match caught {
        Ok(()) => acker.ack().await.map(|_| ()),
        Err(e) => Err(e),
    };
    verdict.result(
        &format!("{}: a peer reached the head and acked", m.label),
        &acked,
        format!("head {head}"),
    );

    let started = Instant::now();
    let (removed, kept, failures) = compact_all(&backend, c, docs, metrics).await;
    m.compact_secs = started.elapsed().as_secs_f64();
    m.wait = if ctx.opts.quick {
        Duration::from_millis(1500)
    } else {
        Duration::from_secs(5)
    };
    let (flushed, least) = engine.settle(m.wait).await?;
    m.after_flush = flushed;
    m.after_wait = least;
    let (retained, snap, snapshots) = engine.live(c).await?;
    m.live_after = retained + snap;
    m.snapshots = snapshots;
    verdict.check(
        &format!(
            "{}: compaction removed every delta below the ack (the head's stays)",
            m.label
        ),
        failures.is_empty() && kept <= 1 && removed + kept == m.deltas,
        match failures.first() {
            Some(f) => f.clone(),
            None => format!(
                "{removed} of {} removed, {kept} retained ({retained} bytes), {snapshots} snapshots",
                m.deltas
            ),
        },
    );
    Ok(acker)
}

/// Measurement 1: the scenarios' mixed edits across many documents.
async fn mixed_edits(
    ctx: &Ctx,
    engine: Engine,
    metrics: &Metrics,
    verdict: &mut Verdict,
) -> Result<Measured> {
    let backend = engine.backend();
    let (n, ndocs) = if ctx.opts.quick {
        (4_000u64, 16)
    } else {
        (100_000, 64)
    };
    let c = ctx.collection("storage-mixed");
    let docs = Rc::new(doc_names(ndocs));
    let mut m = Measured {
        label: "mixed edits",
        documents: ndocs,
        ..Default::default()
    };
    let started = Instant::now();
    let filled = fill(
        ctx,
        &backend,
        &c,
        &docs,
        n,
        Duration::from_secs(900),
        "storage",
    )
    .await?;
    m.fill_secs = started.elapsed().as_secs_f64();
    m.deltas = filled.ledger.len() as u64;
    let acker = compact_and_measure(ctx, &engine, &c, &docs, &mut m, metrics, verdict).await?;
    verdict.check(
        "mixed edits: every write answered",
        m.deltas == n,
        format!("{} of {n}", m.deltas),
    );
    let head = filled.ledger.head();
    let (fresh, r) =
        read_from_zero(ctx, &backend, &c, 901, head, Instant::now() + ctx.drain()).await;
    verdict.result(
        "mixed edits: a fresh peer read the compacted collection",
        &r,
        format!("{} snapshots", fresh.seen.snapshots.len()),
    );
    let mut standard = Verdict::default();
    standard
        .standard(&backend, &c, &[&acker, &fresh], &filled.ledger, "writers")
        .await;
    for mut check in standard.checks {
        check.name = format!("mixed edits: {}", check.name);
        verdict.checks.push(check);
    }
    engine.close().await;
    Ok(m)
}

/// Measurement 2: 32,000 small text edits, typed.
async fn typing(
    ctx: &Ctx,
    engine: Engine,
    metrics: &Metrics,
    verdict: &mut Verdict,
) -> Result<Measured> {
    let backend = engine.backend();
    let total = if ctx.opts.quick { 2_000 } else { 32_000 };
    let c = ctx.collection("storage-typing");
    let docs = doc_names(TYPISTS);
    let ledger = Ledger::default();
    let mut m = Measured {
        label: "typing",
        documents: TYPISTS,
        ..Default::default()
    };
    let started = Instant::now();
    let tasks: Vec<_> = docs
        .iter()
        .enumerate()
        .map(|(i, doc)| {
            let typist = Typist::new(TYPIST_CLIENTS + i as u64, ctx.rng(0x7e57 + i as u64));
            actix_rt::spawn(type_into(
                typist,
                backend.clone(),
                c.clone(),
                doc.clone(),
                total / TYPISTS,
                ledger.clone(),
                metrics.clone(),
            ))
        })
        .collect();
    let mut typists = Vec::new();
    let mut failures = Vec::new();
    for t in tasks {
        let (typist, failed) = join(t, "typist").await?;
        failures.extend(failed);
        typists.push(typist);
    }
    m.fill_secs = started.elapsed().as_secs_f64();
    m.deltas = ledger.len() as u64;
    eprintln!(
        "[storage] typed {} edits in {:.1} s ({:.0}/s)",
        m.deltas,
        m.fill_secs,
        m.deltas as f64 / m.fill_secs
    );
    verdict.check(
        "typing: every edit answered",
        failures.is_empty() && m.deltas == (total / TYPISTS * TYPISTS) as u64,
        failures
            .first()
            .cloned()
            .unwrap_or_else(|| format!("{} edits", m.deltas)),
    );
    let c2 = c.clone();
    compact_and_measure(ctx, &engine, &c2, &docs, &mut m, metrics, verdict).await?;
    verdict.checks.push({
        let mut check = seqs_contiguous(&ledger, 0, "typists");
        check.name = format!("typing: {}", check.name);
        check
    });
    let mut differ = Vec::new();
    for (doc, typist) in docs.iter().zip(&typists) {
        let state = backend
            .recovery(&c, &empty_state_vector(), Some(doc))
            .await?;
        let server = Doc::new();
        let text = server.get_or_insert_text("t");
        server
            .transact_mut()
            .apply_update(Update::decode_v1(&state.update)?)?;
        if text.get_string(&server.transact()) != typist.content() {
            differ.push(doc.clone());
        }
    }
    verdict.check(
        "typing: every typist's text equals the server's (after compaction)",
        differ.is_empty(),
        if differ.is_empty() {
            format!("{} documents identical", docs.len())
        } else {
            format!("{} differ, first {}", differ.len(), differ[0])
        },
    );
    engine.close().await;
    Ok(m)
}

pub async fn run(ctx: &Ctx) -> Result<Report> {
    let metrics = Metrics::new();
    let engine = Engine::open(ctx)?;
    let mut run = Run::start(
        "storage".into(),
        &engine.backend(),
        &metrics,
        &[TYPE, COMPACT],
    );
    let mut verdict = Verdict::default();
    let mixed = mixed_edits(ctx, engine, &metrics, &mut verdict).await?;
    mixed.print();
    let typed = typing(ctx, Engine::open(ctx)?, &metrics, &mut verdict).await?;
    typed.print();
    run.stop();
    let p = params(&[
        ("engineAllowanceBytes", json!(ENGINE_ALLOWANCE)),
        ("targetBefore", json!(TARGET_BEFORE)),
        ("targetAfter", json!(TARGET_AFTER)),
        ("mixedEdits", mixed.json()),
        ("typing", typed.json()),
    ]);
    let mut report = run.report(p, verdict);
    report.floors.extend(mixed.floors());
    report.floors.extend(typed.floors());
    Ok(report)
}
