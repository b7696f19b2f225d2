//! Hostile Yjs updates against `crdt::DocState` (issue 7, "Yjs safety").
//!
//! - A structure-aware generator ([`script`], [`strategy`]) of v1 updates written byte by byte
//!   ([`wire`]): items with origins / right origins / parents by id that exist or not, chains
//!   of nested types, GC and skip ranges, delete sets (also of chain roots), parts of known
//!   ids sent again, many clients, honest yrs peers' edits mixed in, replays and bit flips;
//!   sequences of several updates to one document, checked by [`harness::run`].
//! - Regression tests for items 1, 2 and 4 of the issue. The ones that would crash the process
//!   on the old behaviour (a stack overflow aborts) run their body in a child process, so a
//!   regression fails the test instead of killing the test binary; `control_*` tests show the
//!   same inputs do crash / break plain yrs, so these tests cannot pass vacuously.
//! - `bug_*` tests: reproducers of holes found in the defence while it was written (see each
//!   test's doc); each asserts what must hold, so it fails while the hole is open.
//!
//! The property and the coverage test run generated cases in a child process (yrs can be made
//! to crash), which leaves the case it is on in a temp file and shows it if it crashes.
//! Knobs: `HOSTILE_YJS_CASES` (default 96), `HOSTILE_YJS_AVOID` (see `script::avoid` and
//! `harness::Checks::from_env`: keep generating past a known open hole).

mod hostile_yjs {
    pub mod harness;
    pub mod script;
    pub mod strategy;
    pub mod wire;
}

use std::process::{Command, Output};
use std::time::Duration;

use hostile_yjs::harness::{self, Checks};
use hostile_yjs::script::{self, Script};
use hostile_yjs::wire::{self, id, Block, Content, Item, Parent, Section, Update};
use proptest::prelude::*;
use replicate_actors::crdt::{thread_cpu, DocState, YjsLimits};
use replicate_actors::shape::ShapeLimits;
use replicate_actors::Error;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, Transact};

/// A budget no update in the properties gets near: refusals there must come from the rules,
/// not from how busy the machine is.
const NO_BUDGET: Duration = Duration::from_secs(30);

fn small_limits() -> YjsLimits {
    YjsLimits {
        max_structs: 300,
        max_clients: 12,
        max_delete_ranges: 40,
        shape: ShapeLimits {
            max_depth: 6,
            max_pending: 6,
        },
        ..YjsLimits::default()
    }
}

fn code(e: &Error) -> &'static str {
    e.code()
}

// ---------------------------------------------------------------------------------------------
// Child processes: a body that may abort (stack overflow) runs in a copy of this test binary.

const CHILD_VAR: &str = "HOSTILE_YJS_CHILD";

/// Runs `body` in a child process running only the test `name` (this one); answers its output
/// in the parent, `None` in the child.
fn in_child(name: &str, body: impl FnOnce()) -> Option<Output> {
    if std::env::var(CHILD_VAR).as_deref() == Ok(name) {
        body();
        return None;
    }
    let out = Command::new(std::env::current_exe().expect("test binary path"))
        .args([name, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, name)
        .env("HOSTILE_YJS_LOG", log_path(name))
        .output()
        .expect("child test process runs");
    Some(out)
}

/// Where a child running generated cases leaves the case it is on (see [`check`]).
fn log_path(name: &str) -> std::path::PathBuf {
    std::env::temp_dir().join(format!("hostile_yjs-{}-{name}.case", std::process::id()))
}

/// Fails with the child's output, and the case it was on if it crashed.
fn assert_generated_cases_passed(name: &str, out: &Output) {
    // What the child printed (statistics, timings), for `--nocapture` runs.
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if !line.starts_with("test ") && !line.starts_with("running ") && !line.is_empty() {
            println!("{line}");
        }
    }
    let case = std::fs::read_to_string(log_path(name)).unwrap_or_default();
    let _ = std::fs::remove_file(log_path(name));
    if !out.status.success() && out.status.code().is_none() {
        panic!(
            "the process crashed on a generated case (replay it with `check`):\n{case}\n{}",
            describe(out)
        );
    }
    assert_child_passed(out);
}

fn describe(out: &Output) -> String {
    use std::os::unix::process::ExitStatusExt;
    let stderr = String::from_utf8_lossy(&out.stderr);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let tail = |s: &str| {
        let lines: Vec<&str> = s.lines().collect();
        lines[lines.len().saturating_sub(80)..].join("\n")
    };
    // proptest's reason comes before its (long) minimal input.
    let reason: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("Test failed"))
        .collect();
    format!(
        "status {:?} (signal {:?})\n{}\n--- stdout tail\n{}\n--- stderr tail\n{}",
        out.status.code(),
        out.status.signal(),
        reason.join("\n"),
        tail(&stdout),
        tail(&stderr)
    )
}

fn assert_child_passed(out: &Output) {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("1 passed"),
        "the child process failed or crashed: {}",
        describe(out)
    );
}

fn assert_child_crashed(out: &Output) {
    assert!(
        !out.status.success(),
        "expected the child to crash: {}",
        describe(out)
    );
}

/// Runs `f` on a thread with the default 2 MiB stack (what actix and most pools use).
fn on_small_stack<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    std::thread::Builder::new()
        .stack_size(2 << 20)
        .spawn(f)
        .expect("thread starts")
        .join()
        .expect("thread did not panic")
}

// ---------------------------------------------------------------------------------------------
// The property.

/// Cases per run: 96 (a few seconds in debug), or `HOSTILE_YJS_CASES`.
fn cases() -> u32 {
    std::env::var("HOSTILE_YJS_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(96)
}

/// Sequences from the generator, with default limits or small ones that the generator can
/// reach (depth 6, 6 pending items, 12 clients, 300 structs per update).
fn check(ops: &[script::Op], small: bool) -> Result<harness::Outcome, TestCaseError> {
    // A crash (abort, SIGSEGV) takes proptest with it: `HOSTILE_YJS_LOG=path` leaves the case
    // being run in `path` to replay.
    if let Ok(path) = std::env::var("HOSTILE_YJS_LOG") {
        std::fs::write(path, format!("small={small}\n{ops:?}\n")).unwrap();
    }
    let updates = Script::updates(ops);
    let limits = if small {
        small_limits()
    } else {
        YjsLimits::default()
    };
    harness::run(&updates, &limits, NO_BUDGET, Checks::from_env()).map_err(TestCaseError::fail)
}

/// For any sequence of hostile updates to one document, applied one by one (rebuilding
/// from the accepted ones when a refusal poisons the state): nothing panics or crashes; the
/// model's depth stays within the limit and never under the real nesting of the doc (a plain
/// yrs doc fed the same chunks); a clean refusal changes nothing; the accepted updates
/// rebuild, quarantining nothing, into the same content as the live state; the live state's
/// own encoding (what compaction stores) is accepted by a fresh state and keeps everything
/// the doc has integrated; a peer applying the accepted updates whole gets the same content
/// as the server. Runs in a child process: yrs can be made to crash (SIGSEGV, stack
/// overflow), which would take the whole test binary down.
#[test]
fn hostile_sequences_keep_the_invariants() {
    const NAME: &str = "hostile_sequences_keep_the_invariants";
    let Some(out) = in_child(NAME, || {
        let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig {
            cases: cases(),
            max_shrink_iters: 4000,
            failure_persistence: None,
            ..ProptestConfig::default()
        });
        let result = runner.run(
            &(hostile_yjs::strategy::ops(), any::<bool>()),
            |(ops, small)| check(&ops, small).map(drop),
        );
        if let Err(e) = result {
            panic!("{e}");
        }
    }) else {
        return;
    };
    assert_generated_cases_passed(NAME, &out);
}

/// The generator is not vacuous: over a fixed set of its cases, updates are accepted and
/// refused for each reason the defence has, states get poisoned and rebuilt, types nest, and
/// documents end up with content.
#[test]
fn generator_reaches_every_outcome() {
    const NAME: &str = "generator_reaches_every_outcome";
    let Some(out) = in_child(NAME, generator_coverage) else {
        return;
    };
    assert_generated_cases_passed(NAME, &out);
}

fn generator_coverage() {
    use proptest::strategy::ValueTree;
    use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};
    let mut runner = TestRunner::new_with_rng(
        Config::default(),
        TestRng::from_seed(RngAlgorithm::ChaCha, &[7; 32]),
    );
    let strategy = hostile_yjs::strategy::ops();
    let mut total = harness::Outcome::default();
    let mut with_content = 0;
    let mut failures = Vec::new();
    for case in 0..160 {
        let ops = strategy.new_tree(&mut runner).unwrap().current();
        let small = case % 2 == 0;
        if let Ok(path) = std::env::var("HOSTILE_YJS_LOG") {
            std::fs::write(path, format!("small={small}\n{ops:?}\n")).unwrap();
        }
        let updates = Script::updates(&ops);
        let limits = if small {
            small_limits()
        } else {
            YjsLimits::default()
        };
        let mut o = harness::Outcome::default();
        let run = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            harness::run_into(&mut o, &updates, &limits, NO_BUDGET, Checks::from_env())
        }))
        .unwrap_or_else(|_| Err("panicked".to_string()));
        total.accepted += o.accepted;
        total.refused += o.refused;
        total.poisoned += o.poisoned;
        total.model_depth = total.model_depth.max(o.model_depth);
        total.real_depth = total.real_depth.max(o.real_depth);
        for (k, v) in o.reasons {
            *total.reasons.entry(k).or_default() += v;
        }
        with_content += usize::from(o.has_content);
        if let Err(e) = run {
            failures.push(e);
        }
    }
    println!("generator outcomes: {total:#?}\ncases with content: {with_content}");
    for f in failures.iter().take(3) {
        println!("invariant broken: {f}");
    }
    let has = |needle: &str| total.reasons.keys().any(|k| k.contains(needle));
    assert!(total.accepted > 200, "{total:?}");
    assert!(with_content > 40, "{with_content}");
    assert!(total.poisoned > 0, "no case poisoned a state: {total:?}");
    assert!(total.real_depth >= 6, "{total:?}");
    assert!(has("would nest"), "no TooDeep refusal: {:?}", total.reasons);
    assert!(
        has("holds no shared type"),
        "no InvalidParent refusal: {:?}",
        total.reasons
    );
    assert!(
        has("would wait"),
        "no TooManyPending refusal: {:?}",
        total.reasons
    );
    assert!(
        has("invalid_yjs"),
        "no invalid_yjs refusal: {:?}",
        total.reasons
    );
    // Broken invariants are the property's business (`hostile_sequences_keep_the_invariants`);
    // here they are only counted.
    println!("{} of 160 cases broke an invariant", failures.len());
}

// ---------------------------------------------------------------------------------------------
// Item 1: the chain of 10,000 nested maps, then a delete of its root.

const CHAIN: u32 = 10_000;

/// `n` nested maps from client 1, map i the parent (by id) of map i+1; the first in root "m".
fn chain_sections(n: u32) -> Vec<Section> {
    let items = (0..n)
        .map(|i| {
            if i == 0 {
                Item::root("m", Content::map())
            } else {
                Item::child_of(id(1, i - 1), Content::map())
            }
        })
        .collect();
    vec![Section::items(1, 0, items)]
}

fn chain_and_delete() -> Vec<u8> {
    Update::new(chain_sections(CHAIN))
        .deleting(1, 0, 1)
        .encode()
}

fn chain_only() -> Vec<u8> {
    Update::new(chain_sections(CHAIN)).encode()
}

fn delete_root_only() -> Vec<u8> {
    Update::default().deleting(1, 0, 1).encode()
}

fn assert_usable(state: &DocState) {
    let merged = state.encode();
    let doc = Doc::new();
    doc.transact_mut()
        .apply_update(yrs::Update::decode_v1(&merged.update).unwrap())
        .unwrap();
    // And it still takes an honest write.
    let mut again = DocState::new();
    let limits = YjsLimits::default();
    again
        .apply("snapshot", &merged.update, &limits, NO_BUDGET)
        .unwrap();
    let honest = script::honest_edit(&Doc::with_client_id(77), 0, 1);
    again
        .apply("crdtBytes", &honest, &limits, NO_BUDGET)
        .unwrap();
}

/// Plain yrs, fed the one-update chain (what the old validation did against an empty doc),
/// overflows a 2 MiB stack: the input below is a real crash.
#[test]
fn control_plain_yrs_overflows_on_the_deep_chain() {
    let Some(out) = in_child("control_plain_yrs_overflows_on_the_deep_chain", || {
        on_small_stack(|| {
            let doc = Doc::new();
            let u = yrs::Update::decode_v1(&chain_and_delete()).unwrap();
            let _ = doc.transact_mut().apply_update(u);
        });
    }) else {
        return;
    };
    assert_child_crashed(&out);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("overflowed its stack"),
        "{}",
        describe(&out)
    );
}

#[test]
fn deep_chain_in_one_update_is_refused_and_quarantined() {
    let Some(out) = in_child(
        "deep_chain_in_one_update_is_refused_and_quarantined",
        || {
            on_small_stack(|| {
                let limits = YjsLimits::default();
                let bytes = chain_and_delete();
                println!("one update: {} bytes", bytes.len());
                let mut state = DocState::new();
                let before = state.encode();
                let refused = state
                    .apply("crdtBytes", &bytes, &limits, limits.write_budget)
                    .expect_err("the chain is refused");
                assert_eq!(code(&refused.error), "yjs_limit", "{}", refused.error);
                assert!(!refused.poisoned, "refused before yrs saw it");
                assert_eq!(state.encode(), before);
                // Stored before the fix: a rebuild quarantines it instead of crashing.
                let honest = script::honest_edit(&Doc::with_client_id(5), 0, 1);
                let parts = [(1u64, honest.as_slice()), (2, bytes.as_slice())];
                let built = DocState::build(parts.iter().copied(), &limits);
                let seqs: Vec<u64> = built.quarantined.iter().map(|(s, _)| *s).collect();
                assert_eq!(seqs, vec![2], "{:?}", built.quarantined);
                assert_usable(&built.state);
            });
        },
    ) else {
        return;
    };
    assert_child_passed(&out);
}

#[test]
fn deep_chain_split_across_two_updates_is_refused_and_quarantined() {
    let Some(out) = in_child(
        "deep_chain_split_across_two_updates_is_refused_and_quarantined",
        || {
            on_small_stack(|| {
                let limits = YjsLimits::default();
                let chain = chain_only();
                let delete = delete_root_only();
                let mut state = DocState::new();
                let refused = state
                    .apply("crdtBytes", &chain, &limits, limits.write_budget)
                    .expect_err("the chain is refused");
                assert_eq!(code(&refused.error), "yjs_limit", "{}", refused.error);
                assert!(!refused.poisoned);
                // The delete alone names nothing the document has: refused too (yrs would keep
                // it pending forever).
                let refused = state
                    .apply("crdtBytes", &delete, &limits, limits.write_budget)
                    .expect_err("a delete of unknown ids is refused");
                assert_eq!(code(&refused.error), "yjs_limit", "{}", refused.error);
                // The chain in links of 100 maps per write: refused once it passes the depth.
                let mut state = DocState::new();
                let mut refused_at = None;
                for k in 0..(CHAIN / 100) {
                    let items = (k * 100..(k + 1) * 100)
                        .map(|i| {
                            if i == 0 {
                                Item::root("m", Content::map())
                            } else {
                                Item::child_of(id(1, i - 1), Content::map())
                            }
                        })
                        .collect();
                    let link = Update::new(vec![Section::items(1, k * 100, items)]).encode();
                    if let Err(r) = state.apply("crdtBytes", &link, &limits, limits.write_budget) {
                        assert_eq!(code(&r.error), "yjs_limit", "{}", r.error);
                        refused_at.get_or_insert(k);
                    }
                }
                assert_eq!(refused_at, Some(0), "the first link already nests 100 deep");
                assert!(state.depth() <= limits.shape.max_depth);
                // Both stored before the fix (chain first, delete second): quarantined, no
                // overflow, in either order.
                for parts in [
                    vec![(1u64, chain.as_slice()), (2, delete.as_slice())],
                    vec![(1u64, delete.as_slice()), (2, chain.as_slice())],
                ] {
                    let built = DocState::build(parts.iter().copied(), &limits);
                    let mut seqs: Vec<u64> = built.quarantined.iter().map(|(s, _)| *s).collect();
                    seqs.sort_unstable();
                    // The chain (too deep) and the delete (of ids that never made it in).
                    assert_eq!(seqs, vec![1, 2], "{:?}", built.quarantined);
                    assert_usable(&built.state);
                }
            });
        },
    ) else {
        return;
    };
    assert_child_passed(&out);
}

// ---------------------------------------------------------------------------------------------
// Item 4: a parent given by id, then an item that is that id and holds no type.

fn parent_by_id_write() -> Vec<u8> {
    Update::new(vec![Section::items(
        1,
        0,
        vec![Item::child_of(id(9, 0), Content::str("a"))],
    )])
    .encode()
}

fn string_that_is_the_parent() -> Vec<u8> {
    Update::new(vec![Section::items(
        9,
        0,
        vec![Item::root("t", Content::str("b"))],
    )])
    .encode()
}

/// Each write applies alone in plain yrs; together they fail every later merge.
#[test]
fn control_plain_yrs_fails_on_the_two_writes() {
    for w in [parent_by_id_write(), string_that_is_the_parent()] {
        Doc::new()
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(&w).unwrap())
            .expect("each write alone applies");
    }
    let doc = Doc::new();
    let mut txn = doc.transact_mut();
    txn.apply_update(yrs::Update::decode_v1(&parent_by_id_write()).unwrap())
        .unwrap();
    let err = txn
        .apply_update(yrs::Update::decode_v1(&string_that_is_the_parent()).unwrap())
        .expect_err("together they fail");
    assert!(err.to_string().contains("9"), "{err}");
}

#[test]
fn string_item_that_is_a_parent_is_refused_and_quarantined() {
    let limits = YjsLimits::default();
    let w1 = parent_by_id_write();
    let w2 = string_that_is_the_parent();
    let mut state = DocState::new();
    state
        .apply("crdtBytes", &w1, &limits, limits.write_budget)
        .expect("write 1 waits for (9,0)");
    let before = state.encode();
    let refused = state
        .apply("crdtBytes", &w2, &limits, limits.write_budget)
        .expect_err("write 2 would break the document");
    assert_eq!(code(&refused.error), "yjs_limit", "{}", refused.error);
    assert!(!refused.poisoned);
    assert_eq!(state.encode(), before);
    // The other order: the string first, then the item naming it as parent.
    let mut state = DocState::new();
    state
        .apply("crdtBytes", &w2, &limits, limits.write_budget)
        .unwrap();
    let refused = state
        .apply("crdtBytes", &w1, &limits, limits.write_budget)
        .expect_err("a string cannot be a parent");
    assert_eq!(code(&refused.error), "yjs_limit", "{}", refused.error);
    // Both stored before the fix: one is quarantined and the document works.
    for (parts, bad) in [
        ([(1u64, w1.as_slice()), (2, w2.as_slice())], 2),
        ([(1u64, w2.as_slice()), (2, w1.as_slice())], 2),
    ] {
        let built = DocState::build(parts.iter().copied(), &limits);
        let seqs: Vec<u64> = built.quarantined.iter().map(|(s, _)| *s).collect();
        assert_eq!(seqs, vec![bad], "{:?}", built.quarantined);
        assert_usable(&built.state);
        // And the rebuilt document merges again, as often as asked.
        let snapshot = built.state.encode().update;
        let again = DocState::build([(0u64, snapshot.as_slice())], &limits);
        assert!(again.quarantined.is_empty(), "{:?}", again.quarantined);
    }
}

// ---------------------------------------------------------------------------------------------
// Item 2: the quadratic update.

/// A base string of n+1 characters from client 1, then n one-character items, each from its
/// own client, all with left origin (1,0) and right origin (1,i+1).
fn quadratic_update(n: u32) -> Vec<u8> {
    let base: String = std::iter::repeat_n('x', n as usize + 1).collect();
    let mut sections = vec![Section::items(
        1,
        0,
        vec![Item::root("t", Content::Str(base))],
    )];
    for i in 0..n {
        sections.push(Section::items(
            10_000 + u64::from(i),
            0,
            vec![Item::between(
                Some(id(1, 0)),
                Some(id(1, i + 1)),
                Content::str("y"),
            )],
        ));
    }
    Update::new(sections).encode()
}

#[test]
fn quadratic_update_is_refused_within_its_budget() {
    let limits = YjsLimits::default();
    let budget = Duration::from_millis(100);
    let bytes = quadratic_update(8000);
    let mut state = DocState::new();
    let started = thread_cpu();
    let refused = state
        .apply("crdtBytes", &bytes, &limits, budget)
        .expect_err("n = 8000 costs far more than 100 ms");
    let spent = thread_cpu() - started;
    println!(
        "quadratic update: {} bytes, refused after {:?} of thread CPU (budget {:?}): {}",
        bytes.len(),
        spent,
        budget,
        refused.error
    );
    assert_eq!(code(&refused.error), "yjs_limit", "{}", refused.error);
    assert!(
        refused.error.to_string().contains("budget"),
        "{}",
        refused.error
    );
    assert!(refused.poisoned, "it was cut off part way");
    assert!(
        spent < budget * 4,
        "spent {spent:?} for a budget of {budget:?}"
    );
    // Stored before the fix, a rebuild under a merge budget quarantines it, also within
    // a bounded time.
    let merge = YjsLimits {
        merge_budget: budget,
        ..limits
    };
    let started = thread_cpu();
    let built = DocState::build([(1u64, bytes.as_slice())], &merge);
    let spent = thread_cpu() - started;
    println!("rebuild with it stored: {spent:?}");
    assert_eq!(built.quarantined.len(), 1);
    assert!(spent < budget * 5, "{spent:?}");
}

/// How plain yrs costs grow with n (run with `--ignored --nocapture`, best with `--release`).
#[test]
#[ignore = "a measurement of plain yrs (30 s+, prints timings, asserts nothing); run with --ignored"]
fn measure_plain_yrs_quadratic() {
    for n in [500, 1000, 2000, 4000] {
        let bytes = quadratic_update(n);
        let doc = Doc::new();
        let started = thread_cpu();
        doc.transact_mut()
            .apply_update(yrs::Update::decode_v1(&bytes).unwrap())
            .unwrap();
        println!("n = {n}: {:?}", thread_cpu() - started);
    }
}

// ---------------------------------------------------------------------------------------------
// Holes found in the defence. Each test asserts what must hold; they fail until fixed.

/// Applies `updates` to a fresh state under `limits` and answers it with whether each was
/// accepted.
struct Applied {
    state: DocState,
    accepted: Vec<bool>,
    updates: Vec<Vec<u8>>,
}

fn apply_all(updates: &[Vec<u8>], limits: &YjsLimits) -> Applied {
    let mut state = DocState::new();
    let mut accepted = Vec::new();
    for u in updates {
        accepted.push(state.apply("crdtBytes", u, limits, NO_BUDGET).is_ok());
    }
    Applied {
        state,
        accepted,
        updates: updates.to_vec(),
    }
}

/// The document the accepted updates really build (a plain yrs doc fed the same chunks as
/// the state) nests within the limit.
fn assert_depth_bounded(applied: &Applied, limits: &YjsLimits) {
    let state = &applied.state;
    let kept: Vec<Vec<u8>> = applied
        .updates
        .iter()
        .zip(&applied.accepted)
        .filter(|(_, a)| **a)
        .map(|(u, _)| u.clone())
        .collect();
    let real = harness::Mirror::of(&kept).depth().unwrap();
    assert!(
        real <= limits.shape.max_depth,
        "accepted updates nest shared types {real} deep; the model says {} (max_depth {})",
        state.depth(),
        limits.shape.max_depth
    );
}

/// Bug A: a struct whose first ids are already known, sent again with other placement.
/// yrs (`Update::exclude` → `Block::splice`) integrates only the new tail, and gives it the
/// origin `(client, first new clock - 1)`: it lands in the container of the known id before
/// it. `shape` records the tail in the container the struct names (its origin's). So a type
/// placed after the tail is, for the model, at depth 1 while it is really nested under
/// whatever the known ids live in; repeated, the depth bound never holds.
///
/// Per link (client 3 makes the maps, client 100+i the string, O = (2,0) a root string):
/// `C_i` (a map after `(100+i-1, 3)`, or at the root), `h` maps each in the previous, then
/// `(100+i, 0) "ab"` in the last map, then `(100+i, 0) "abcd"` after O.
fn splice_links(links: u32, h: u32) -> Vec<Vec<u8>> {
    let mut updates = vec![Update::new(vec![Section::items(
        2,
        0,
        vec![Item::root("r", Content::str("o"))],
    )])
    .encode()];
    let mut clock = 0;
    for i in 0..links {
        let c = if i == 0 {
            Item::root("r", Content::map())
        } else {
            Item::after(id(100 + u64::from(i) - 1, 3), Content::map())
        };
        let mut maps = vec![c];
        for j in 0..h {
            maps.push(Item::child_of(id(3, clock + j), Content::map()));
        }
        let last = id(3, clock + h);
        clock += h + 1;
        let k = 100 + u64::from(i);
        updates.push(
            Update::new(vec![
                Section::items(3, clock - h - 1, maps),
                Section::items(k, 0, vec![Item::child_of(last, Content::str("ab"))]),
            ])
            .encode(),
        );
        updates.push(
            Update::new(vec![Section::items(
                k,
                0,
                vec![Item::after(id(2, 0), Content::str("abcd"))],
            )])
            .encode(),
        );
    }
    updates
}

#[test]
fn bug_partly_known_struct_is_reparented_by_yrs() {
    let limits = small_limits(); // max_depth 6
    let applied = apply_all(&splice_links(4, 3), &limits);
    println!("accepted: {:?}", applied.accepted);
    assert_depth_bounded(&applied, &limits);
}

/// Bug A at full size: ~10,000 levels through default limits, then a delete of the root.
/// Crashes the process (stack overflow) while the bug is there.
#[test]
fn bug_partly_known_struct_deep_chain_crashes() {
    let Some(out) = in_child("bug_partly_known_struct_deep_chain_crashes", || {
        on_small_stack(|| {
            let limits = YjsLimits::default();
            let mut updates = splice_links(165, 60);
            updates.push(Update::default().deleting(3, 0, 1).encode());
            let applied = apply_all(&updates, &limits);
            let accepted = &applied.accepted;
            println!(
                "accepted: {}/{}",
                accepted.iter().filter(|a| **a).count(),
                accepted.len()
            );
            assert_depth_bounded(&applied, &limits);
        });
    }) else {
        return;
    };
    assert_child_passed(&out);
}

/// Bug B: `precheck` reads a name buffer after type ref 5 (XmlHook, as Yjs does); yrs 0.28
/// reads none (`TypeRef::decode`). The chunk handed to yrs then holds structs the model never
/// saw: here the "name" is a whole map item (info 0x27: parent "r", key, type ref 1) that yrs
/// integrates at (5,1), which the model records as GC. Everything under (5,1) is "dead" for
/// the model and never depth-checked.
fn hook_smuggling(depth: u32) -> Vec<Vec<u8>> {
    // yrs's view of the "name" buffer: info 0x27 (parent written, key, type), parent info 1
    // and root name "r", key of 34 bytes, type ref 1 (map): 39 bytes after the info byte,
    // and 39 = 0x27 is also the buffer's length byte precheck reads.
    let mut rest = vec![1, 1, b'r', 34];
    rest.extend_from_slice("k".repeat(34).as_bytes());
    rest.push(1);
    assert_eq!(rest.len(), 0x27);
    let mut raw = vec![wire::XML_HOOK, 0x27];
    raw.extend_from_slice(&rest);
    let hook = Item::root("r", Content::Raw(7, raw));
    let first = Update::new(vec![Section::new(
        5,
        0,
        vec![Block::Item(hook), Block::Gc(1)],
    )])
    .encode();
    let chain = (0..depth)
        .map(|i| {
            let parent = if i == 0 { id(5, 1) } else { id(6, i - 1) };
            Item::child_of(parent, Content::map())
        })
        .collect();
    vec![
        first,
        Update::new(vec![Section::items(6, 0, chain)]).encode(),
    ]
}

#[test]
fn bug_xml_hook_layout_differs_from_yrs() {
    let limits = small_limits();
    let updates = hook_smuggling(20);
    println!(
        "precheck sees: {:?}",
        replicate_actors::precheck::scan_update(&updates[0]).map(|l| l
            .structs
            .iter()
            .map(|s| (s.id, s.kind))
            .collect::<Vec<_>>())
    );
    let applied = apply_all(&updates, &limits);
    let (state, accepted) = (&applied.state, &applied.accepted);
    println!("accepted: {accepted:?}, model depth {}", state.depth());
    assert_depth_bounded(&applied, &limits);
}

/// Bug C: the parent-info var-uint. `precheck` reads it as a u64 and takes anything but 1 as
/// "parent by id"; yrs reads a u32 with wrapping shifts, so 2^32 + 1 (bytes 81 80 80 80 10)
/// is 1 for yrs: a root name. Here the model thinks the map's parent is (1,2) — deleted
/// content, so the map and everything under it is dead — while yrs makes it a root-level
/// map named "\u{2}" and nests the chain under it.
fn parent_info_smuggling(depth: u32) -> Vec<Vec<u8>> {
    let deleted = Update::new(vec![Section::items(
        1,
        0,
        vec![Item::root("r", Content::Deleted(5))],
    )])
    .encode();
    let mut raw_parent = match script::parent_info_wrapping_to_one() {
        Parent::Raw(b) => b,
        _ => unreachable!(),
    };
    raw_parent.extend_from_slice(&[1, 2]); // precheck: id (1, 2); yrs: the string "\u{2}"
    let map = Item {
        origin: None,
        right_origin: None,
        parent: Parent::Raw(raw_parent),
        parent_sub: None,
        content: Content::map(),
    };
    let mut chain = vec![map];
    for i in 1..depth {
        chain.push(Item::child_of(id(5, i - 1), Content::map()));
    }
    vec![
        deleted,
        Update::new(vec![Section::items(5, 0, chain)]).encode(),
    ]
}

#[test]
fn bug_parent_info_wraps_in_yrs() {
    let limits = small_limits();
    let applied = apply_all(&parent_info_smuggling(20), &limits);
    let (state, accepted) = (&applied.state, &applied.accepted);
    println!("accepted: {accepted:?}, model depth {}", state.depth());
    assert_depth_bounded(&applied, &limits);
}

/// Bug D: `DocShape::stage` re-queues an old pending item when the id it waits for arrives,
/// but when it then waits for a second id that arrives later in the same update, it is put
/// in `rewait` only, not in the update's `waiting` map: it is never woken, stays pending in
/// the model forever (a leaked `max_pending` slot) and is never depth-checked, while yrs
/// integrates it. Here P = (5,0), a map between X = (7,0) and Y = (8,1), where X lives in the
/// deepest allowed container: P really nests one past the limit.
fn pending_rewait(max_depth: u32) -> Vec<Vec<u8>> {
    // Maps (3,0)..(3,d-2): the last makes containers max_depth deep.
    let chain = (0..max_depth - 1)
        .map(|i| {
            if i == 0 {
                Item::root("r", Content::map())
            } else {
                Item::child_of(id(3, i - 1), Content::map())
            }
        })
        .collect();
    let deepest = id(3, max_depth - 2);
    let p = Item::between(Some(id(7, 0)), Some(id(8, 1)), Content::map());
    vec![
        Update::new(vec![Section::items(3, 0, chain)]).encode(),
        Update::new(vec![Section::items(5, 0, vec![p])]).encode(),
        Update::new(vec![
            Section::items(
                8,
                0,
                vec![
                    Item::after(id(7, 0), Content::str("z")),
                    Item::after(id(8, 0), Content::str("y")),
                ],
            ),
            Section::items(7, 0, vec![Item::child_of(deepest, Content::str("x"))]),
        ])
        .encode(),
    ]
}

#[test]
fn bug_pending_item_woken_twice_in_one_update_is_never_checked() {
    let limits = small_limits();
    let applied = apply_all(&pending_rewait(limits.shape.max_depth), &limits);
    let (state, accepted) = (&applied.state, &applied.accepted);
    println!("accepted: {accepted:?}, model depth {}", state.depth());
    assert_depth_bounded(&applied, &limits);
}

/// Bug E: `DocState::build` holds every stored part, also a compaction snapshot (seq 0), to
/// the per-update bounds (`max_structs`, `max_clients`, `max_delete_ranges`). A document that
/// grew within the limits one write at a time (here 4 writes from 4 clients, with
/// `max_clients` 3; by default: 10,001 clients, or 200,001 structs or delete ranges over its
/// life) gets a snapshot that a rebuild quarantines — the document loses all its content.
#[test]
fn bug_snapshot_of_an_accepted_document_is_quarantined() {
    let limits = YjsLimits {
        max_clients: 3,
        ..YjsLimits::default()
    };
    let mut state = DocState::new();
    for client in 1..=4 {
        let u = Update::new(vec![Section::items(
            client,
            0,
            vec![Item::root("t", Content::str("w"))],
        )])
        .encode();
        state.apply("crdtBytes", &u, &limits, NO_BUDGET).unwrap();
    }
    let snapshot = state.encode().update;
    let built = DocState::build([(0u64, snapshot.as_slice())], &limits);
    assert!(
        built.quarantined.is_empty(),
        "the snapshot of an accepted document is quarantined: {:?}",
        built.quarantined
    );
}

/// Bug H: yrs integrates a client section's blocks in order and, once one of them waits for
/// a missing id, leaves every later block of that section pending too (`BlockPicker`); the
/// model resolves each struct on its own. So the model records ids yrs does not have — here a
/// GC range at (2,1), behind an item at (2,0) that waits for (9,9) — and when a later update
/// brings a different struct for those ids (a root map at (2,1)), yrs integrates it (the id
/// is not in its store) while the model keeps "GC": everything under the map is dead for the
/// model and never depth-checked. (The same mismatch lets a compaction snapshot differ from
/// the model: yrs's merge of pending updates keeps other versions of such ids.)
fn pending_section_tail(depth: u32) -> Vec<Vec<u8>> {
    let waiting = Item::after(id(9, 9), Content::str("w"));
    let chain = (0..depth)
        .map(|i| {
            let parent = if i == 0 { id(2, 1) } else { id(3, i - 1) };
            Item::child_of(parent, Content::map())
        })
        .collect();
    vec![
        Update::new(vec![Section::new(
            2,
            0,
            vec![Block::Item(waiting), Block::Gc(1)],
        )])
        .encode(),
        Update::new(vec![Section::items(
            2,
            1,
            vec![Item::root("r", Content::map())],
        )])
        .encode(),
        Update::new(vec![Section::items(3, 0, chain)]).encode(),
    ]
}

#[test]
fn bug_blocks_behind_a_pending_block_are_recorded_by_the_model() {
    let limits = small_limits();
    let applied = apply_all(&pending_section_tail(20), &limits);
    let (state, accepted) = (&applied.state, &applied.accepted);
    println!("accepted: {accepted:?}, model depth {}", state.depth());
    assert_depth_bounded(&applied, &limits);
}

/// Bug G: two sections for one client in one update. The state applies section by section
/// (its chunks), so the first wins; a yrs peer decodes both into one list and integrates the
/// second over the first (`BlockStore::push` "replaces an integrated skip" — here an
/// integrated item, which is then freed while still linked); Yjs (JS) keeps only the last
/// section. The server's `/state` and its peers disagree about what (1,0) is.
fn duplicate_sections() -> Vec<u8> {
    Update::new(vec![
        Section::items(1, 0, vec![Item::root("t", Content::map())]),
        Section::items(1, 0, vec![Item::root("t", Content::str("a"))]),
    ])
    .encode()
}

#[test]
fn bug_two_sections_of_one_client_diverge_from_peers() {
    let limits = YjsLimits::default();
    let u = duplicate_sections();
    let mut state = DocState::new();
    let accepted = state.apply("crdtBytes", &u, &limits, NO_BUDGET).is_ok();
    if !accepted {
        return; // refusing such updates is a fix
    }
    let server = harness::content_of_update(&state.encode().update).unwrap();
    let peer = Doc::new();
    peer.transact_mut()
        .apply_update(yrs::Update::decode_v1(&u).unwrap())
        .unwrap();
    let peer = harness::content_of_doc(&peer).unwrap();
    assert_eq!(
        server.units, peer.units,
        "the server and a peer that applied the same accepted update differ"
    );
}

/// Bug "json": content ref 2 (JSON). yrs 0.28 reads `count + 1` strings but writes `count`
/// then `count` strings (`ItemContent::encode`), so it cannot read its own encoding of a
/// JSON item back (precheck follows the reading side). An accepted JSON item makes the
/// state's encoding — `/state`, the compaction snapshot — unreadable (the snapshot is
/// quarantined on the next rebuild: the document's content is lost); with a JSON item
/// pending, `DocState::encode` itself panics (yrs `merge_pending_v1` unwraps the failed
/// re-decode), outside any `catch_unwind`, on every read of the document.
fn json_item() -> Vec<u8> {
    Update::new(vec![Section::items(
        1,
        0,
        vec![Item::root("t", Content::Json(vec!["1".into()]))],
    )])
    .encode()
}

#[test]
fn bug_json_content_makes_the_state_unreadable() {
    let limits = YjsLimits::default();
    let mut state = DocState::new();
    if state
        .apply("crdtBytes", &json_item(), &limits, NO_BUDGET)
        .is_err()
    {
        return; // refusing JSON content is a fix
    }
    let snapshot = state.encode().update;
    let built = DocState::build([(0u64, snapshot.as_slice())], &limits);
    assert!(
        built.quarantined.is_empty(),
        "the snapshot of the accepted document is quarantined: {:?}",
        built.quarantined
    );
}

#[test]
fn bug_json_content_pending_makes_encode_panic() {
    let limits = YjsLimits::default();
    let pending = Update::new(vec![Section::items(
        1,
        0,
        vec![Item::child_of(id(9, 9), Content::Json(vec!["1".into()]))],
    )])
    .encode();
    let mut state = DocState::new();
    if state
        .apply("crdtBytes", &pending, &limits, NO_BUDGET)
        .is_err()
    {
        return;
    }
    let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| state.encode()));
    assert!(
        encoded.is_ok(),
        "DocState::encode panics on an accepted document"
    );
}

/// Bug I: the state's encoding (yrs `encode_state_as_update_v1`) merges pending structs in
/// front of integrated ones. yrs integrates a block whose own client's earlier clocks are
/// missing (leaving a skip); the encoding puts the pending earlier block first, and a doc
/// built from it (after compaction, or a new peer from `/state`) leaves everything after it
/// in that client's section pending: content the live doc shows is gone from the snapshot.
fn pending_then_integrated() -> Vec<Vec<u8>> {
    vec![
        Update::new(vec![Section::items(
            300,
            0,
            vec![Item::child_of(id(1, 0), Content::str("p"))],
        )])
        .encode(),
        Update::new(vec![Section::items(
            300,
            1,
            vec![Item::root("t", Content::str("hello"))],
        )])
        .encode(),
    ]
}

#[test]
fn bug_snapshot_loses_content_integrated_out_of_order() {
    use yrs::{ReadTxn, StateVector};
    let limits = YjsLimits::default();
    let updates = pending_then_integrated();
    let applied = apply_all(&updates, &limits);
    if !applied.accepted.iter().all(|a| *a) {
        // Refusing to integrate past a waiting id of the same client is the fix: the second
        // update is refused, and what was accepted is consistent (the sequence property test
        // checks snapshots in general).
        assert_eq!(applied.accepted, vec![true, false]);
        return;
    }
    let live = harness::Mirror::of(&updates);
    let had = harness::content_of_update(&live.integrated()).unwrap();
    let fresh = Doc::new();
    fresh
        .transact_mut()
        .apply_update(yrs::Update::decode_v1(&applied.state.encode().update).unwrap())
        .unwrap();
    let kept =
        harness::content_of_update(&fresh.transact().encode_diff_v1(&StateVector::default()))
            .unwrap();
    assert_eq!(
        had.units, kept.units,
        "a doc built from the snapshot lost integrated content"
    );
}

/// Bug "uaf": yrs `Update::exclude` (trimming the ids a doc already has from an incoming
/// struct) splits the struct and drops the known parts while the other parts still point at
/// them (`Item::splice` links `right`/`left`); `missing_dependency` then reads the freed
/// neighbour (update.rs:474): a use-after-free, SIGSEGV in this test. Reached through
/// `DocState::apply` with two small updates: (300,0..3) GC and (300,5..8) "xyz" after (300,0);
/// then (300,0..12) "abcdefghijkl" after (300,2) — a struct whose middle is known.
fn partly_known_middle() -> Vec<Vec<u8>> {
    vec![
        Update::new(vec![
            Section::new(300, 0, vec![Block::Gc(3)]),
            Section::items(300, 5, vec![Item::after(id(300, 0), Content::str("xyz"))]),
        ])
        .encode(),
        Update::new(vec![Section::items(
            300,
            0,
            vec![Item::after(id(300, 2), Content::str("abcdefghijkl"))],
        )])
        .encode(),
    ]
}

#[test]
fn bug_partly_known_struct_use_after_free_in_yrs() {
    let Some(out) = in_child("bug_partly_known_struct_use_after_free_in_yrs", || {
        let limits = YjsLimits::default();
        let applied = apply_all(&partly_known_middle(), &limits);
        println!("accepted: {:?}", applied.accepted);
    }) else {
        return;
    };
    assert_child_passed(&out);
}

/// Bug "client": yrs `ClientID::new` keeps 53 bits (`debug_assert!` in debug builds, masked
/// off in release), `precheck` and `shape` take client ids as u64. In release, client
/// 2^53 + 5 is client 5 for yrs and another client for the model (the same "known id"
/// mismatch as bug A, with the same way around the depth bound); in debug the assert panics
/// inside yrs and the update is refused only by the panic fallback. Client ids past 53 bits
/// must be refused by the precheck.
#[test]
fn bug_client_ids_past_53_bits_reach_yrs() {
    let limits = YjsLimits::default();
    let u = Update::new(vec![Section::items(
        (1 << 53) + 5,
        0,
        vec![Item::root("t", Content::str("a"))],
    )])
    .encode();
    let mut state = DocState::new();
    match state.apply("crdtBytes", &u, &limits, NO_BUDGET) {
        Ok(()) => panic!("a client id past 53 bits was accepted (yrs aliases it to client 5)"),
        Err(r) => assert!(
            !r.error.to_string().contains("panicked"),
            "refused only because yrs panicked: {}",
            r.error
        ),
    }
}

/// Bug J: two different structs for one id while both wait for missing content. The model
/// keeps both pending (a pending item records no ids); yrs keeps one in its pending update,
/// and which one depends on how the update reached it: the state (chunked) and a peer
/// applying the same accepted bytes whole keep different versions of (1,0). Once (300,0)
/// arrives, the server's and the peer's documents differ for good.
fn pending_duplicates() -> Vec<Vec<u8>> {
    vec![
        Update::new(vec![Section::items(
            1,
            0,
            vec![Item::child_of(id(300, 0), Content::array())],
        )])
        .encode(),
        Update::new(vec![
            Section::items(1, 0, vec![Item::child_of(id(1, 0), Content::str("a"))]),
            Section::items(
                2,
                0,
                vec![Item::child_of(id(1, 0), Content::Binary(vec![0]))],
            ),
        ])
        .deleting(1, 0, 1)
        .encode(),
        Update::new(vec![Section::items(
            300,
            0,
            vec![Item::root("t", Content::map())],
        )])
        .encode(),
    ]
}

#[test]
fn bug_pending_duplicates_diverge_from_peers() {
    let limits = YjsLimits::default();
    let updates = pending_duplicates();
    let applied = apply_all(&updates, &limits);
    println!("accepted: {:?}", applied.accepted);
    let kept: Vec<Vec<u8>> = updates
        .iter()
        .zip(&applied.accepted)
        .filter(|(_, a)| **a)
        .map(|(u, _)| u.clone())
        .collect();
    let server = harness::content_of_update(&applied.state.encode().update).unwrap();
    let peer = Doc::new();
    for u in &kept {
        let _ = peer
            .transact_mut()
            .apply_update(yrs::Update::decode_v1(u).unwrap());
    }
    let peer = harness::content_of_doc(&peer).unwrap();
    assert_eq!(
        server.units, peer.units,
        "the server and a peer that applied the same accepted updates differ"
    );
}

/// Whether a plain yrs doc fed `updates` keeps what it integrated when rebuilt from its own
/// encoding (what a compaction snapshot or `/state` gives a new peer).
fn plain_yrs_snapshot_keeps_content(updates: &[Vec<u8>]) -> bool {
    let live = harness::Mirror::of(updates);
    let snapshot = live
        .doc
        .transact()
        .encode_state_as_update_v1(&yrs::StateVector::default());
    let rebuilt = harness::Mirror::of(&[snapshot]);
    harness::content_of_update(&live.integrated()).unwrap()
        == harness::content_of_update(&rebuilt.integrated()).unwrap()
}

/// Runs `updates` through the property's checks and answers the refusals' messages.
fn refusals_with_all_checks(updates: &[Vec<u8>]) -> Vec<String> {
    let outcome = harness::run(updates, &YjsLimits::default(), NO_BUDGET, Checks::default())
        .unwrap_or_else(|e| panic!("an invariant broke: {e}"));
    outcome.reasons.into_keys().collect()
}

/// Bug "long map entry": a map entry holding two values (one item, `Any` of length 2, under a
/// key), split by an item of another client placed after its first value. The live doc keeps
/// the first value alive next to the second (yrs deletes only the value just left of a new
/// one); a doc rebuilt from the encoding deletes it: peers given a snapshot diverge.
fn long_map_entry() -> Vec<Vec<u8>> {
    vec![Update::new(vec![
        Section::items(9, 0, vec![Item::after(id(300, 0), Content::str("x"))]),
        Section::items(
            300,
            0,
            vec![Item::root(
                "t",
                Content::Any(vec![wire::Any::Int(1), wire::Any::Int(2)]),
            )
            .with_key("k0")],
        ),
    ])
    .encode()]
}

#[test]
fn control_plain_yrs_snapshot_loses_a_long_map_entry() {
    assert!(!plain_yrs_snapshot_keeps_content(&long_map_entry()));
}

#[test]
fn bug_long_map_entry_makes_snapshots_diverge() {
    let reasons = refusals_with_all_checks(&long_map_entry());
    assert!(
        reasons
            .iter()
            .any(|r| r.contains("holds more than one value")),
        "{reasons:?}"
    );
}

/// Bug "forward reference" (found by the property with the snapshot check): client 1 sends
/// clock 1 (a root type) alone, which yrs integrates behind a skip; then clocks 0..2, a string
/// whose parent is the type at clock 1. yrs integrates it, but the document's encoding lists
/// clock 0 (which needs clock 1) first: a doc rebuilt from it integrates neither. An item may
/// depend only on ids of its own client that come before it.
fn forward_reference() -> Vec<Vec<u8>> {
    use script::{Gen, Op, Pick, Place};
    Script::updates(&[
        Op::Item {
            client: 84,
            place: Place::Root(0),
            content: Gen::Embed(0),
        },
        Op::Delete {
            pick: Pick::Known(0),
            len: 145,
        },
        Op::Replay(0),
        Op::Item {
            client: 126,
            place: Place::Root(0),
            content: Gen::Type(186),
        },
        Op::Cut,
        Op::Resend {
            pick: Pick::Known(31176),
            extra: 42,
            place: Place::Parent(Pick::Known(853)),
        },
        Op::Cut,
    ])
}

#[test]
fn control_plain_yrs_snapshot_loses_a_forward_reference() {
    // The last two updates: the type at clock 1, then clocks 0..2 naming it as parent.
    let updates = forward_reference();
    assert_eq!(updates.len(), 4);
    assert!(!plain_yrs_snapshot_keeps_content(&updates[2..]));
}

#[test]
fn bug_forward_reference_makes_snapshots_lose_content() {
    let reasons = refusals_with_all_checks(&forward_reference());
    assert!(
        reasons.iter().any(|r| r.contains("of its own client")),
        "{reasons:?}"
    );
}

/// Bug "past a waiting block" (found by the property with the snapshot check): one update
/// holds a 64-deep chain of types of client 1 whose link at clock 52 names a parent that does
/// not exist, then a sub-document at the root (clock 66). In one update yrs keeps clocks
/// 52..67 waiting; applied in chunks (for the CPU budget) the chunk with clock 66 is integrated
/// past the waiting ones behind a skip, and a doc rebuilt from the encoding (waiting blocks
/// first) leaves it waiting: content gone from the snapshot. The model and yrs must agree on
/// what waits, or the update is refused.
fn integrated_past_a_waiting_block() -> Vec<Vec<u8>> {
    use script::{Gen, Op, Pick, Place};
    Script::updates(&[
        Op::Skip { client: 0, len: 0 },
        Op::Skip { client: 0, len: 0 },
        Op::Chain {
            client: 30,
            place: Place::Root(0),
            depth: 243,
            type_ref: 0,
            one_client_each: false,
        },
        Op::Item {
            client: 156,
            place: Place::Root(0),
            content: Gen::Doc(0),
        },
        Op::Corrupt { at: 7956, xor: 1 },
        Op::Chain {
            client: 214,
            place: Place::Parent(Pick::Known(0)),
            depth: 180,
            type_ref: 0,
            one_client_each: false,
        },
        Op::DeleteChainRoot,
    ])
}

#[test]
fn bug_chunks_integrated_past_a_waiting_block_leave_the_snapshot() {
    let reasons = refusals_with_all_checks(&integrated_past_a_waiting_block());
    assert!(
        reasons.iter().any(|r| r.contains("cannot check")),
        "{reasons:?}"
    );
}
