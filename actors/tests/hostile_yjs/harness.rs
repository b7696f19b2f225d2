//! The checks every sequence of (hostile) updates to one document must pass, shared by the
//! proptest in `tests/hostile_yjs.rs` and the cargo-fuzz target (`fuzz/fuzz_targets/doc_state.rs`
//! includes this file with `#[path]`).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Duration;

use replicate_actors::crdt::{DocState, YjsLimits};
use replicate_actors::Error;
use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use super::wire::{nesting_depth, parse_v1, units, Id, Unit};

/// What happened to one sequence.
#[derive(Debug, Default, Clone)]
pub struct Outcome {
    pub accepted: usize,
    pub refused: usize,
    /// Refusals by error code and a short reason.
    pub reasons: BTreeMap<String, usize>,
    pub poisoned: usize,
    /// Deepest nesting the state's model reported.
    pub model_depth: u32,
    /// Deepest nesting of the live document's own encoding.
    pub real_depth: u32,
    /// Whether the final document holds any visible content.
    pub has_content: bool,
}

/// Which checks to run.
#[derive(Debug, Clone, Copy)]
pub struct Checks {
    /// Also apply the accepted updates, whole and in order, to a plain yrs doc (what a peer
    /// that streams them does) and compare it with the server's state.
    pub peer_view: bool,
    /// Check that a doc built from the state's encoding keeps what the doc has integrated.
    pub snapshot_keeps: bool,
}

impl Default for Checks {
    fn default() -> Self {
        Checks {
            peer_view: true,
            snapshot_keeps: true,
        }
    }
}

impl Checks {
    /// All checks, less those `HOSTILE_YJS_AVOID` names (`peer`, `snapshot`).
    pub fn from_env() -> Checks {
        let avoid = |w: &str| {
            std::env::var("HOSTILE_YJS_AVOID").is_ok_and(|v| v.split(',').any(|x| x.trim() == w))
        };
        Checks {
            peer_view: !avoid("peer"),
            snapshot_keeps: !avoid("snapshot"),
        }
    }
}

/// A document's content in a form two docs can be compared by: every clock unit of its own
/// encoding (see [`units`]) and its delete set. (yrs's read API is not used: reading a root
/// as an array hangs yrs 0.28 on some strings.)
pub struct Content {
    pub units: BTreeMap<Id, Unit>,
    pub deletes: yrs::IdSet,
}

impl PartialEq for Content {
    fn eq(&self, other: &Self) -> bool {
        self.units == other.units
            && self.deletes.diff(&other.deletes).is_empty()
            && other.deletes.diff(&self.deletes).is_empty()
    }
}

impl std::fmt::Debug for Content {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Content")
            .field("units", &self.units)
            .field("deletes", &self.deletes)
            .finish()
    }
}

/// The first difference between two contents, for messages.
fn first_difference(a: &Content, b: &Content) -> String {
    for (id, u) in &a.units {
        match b.units.get(id) {
            None => return format!("{id:?} only in the first: {u:?}"),
            Some(v) if v != u => return format!("{id:?}: {u:?} vs {v:?}"),
            _ => {}
        }
    }
    if let Some((id, v)) = b.units.iter().find(|(id, _)| !a.units.contains_key(id)) {
        return format!("{id:?} only in the second: {v:?}");
    }
    format!("delete sets: {:?} vs {:?}", a.deletes, b.deletes)
}

/// The content of a document's own encoding; `Err` if yrs cannot read it back.
pub fn content_of_update(update: &[u8]) -> Result<Content, String> {
    let structs =
        parse_v1(update).map_err(|e| format!("a document's own encoding does not parse: {e}"))?;
    let deletes = Update::decode_v1(update)
        .map_err(|e| format!("yrs cannot decode a document's own encoding: {e}"))?
        .delete_set()
        .clone();
    Ok(Content {
        units: units(&structs),
        deletes,
    })
}

pub fn content_of_doc(doc: &Doc) -> Result<Content, String> {
    content_of_update(
        &doc.transact()
            .encode_state_as_update_v1(&StateVector::default()),
    )
}

fn has_content(c: &Content) -> bool {
    c.units.iter().any(|(id, u)| {
        matches!(u, Unit::Item { content, .. } if *content != 1)
            && !c
                .deletes
                .contains(&yrs::ID::new(yrs::ClientID::new(id.client), id.clock))
    })
}

/// Real nesting of a state as its encoding shows it (every id once), computed independently
/// of the model in `shape`. (The encoding merges yrs's pending structs over integrated ones,
/// so it can hide what the doc holds: [`Mirror::depth`] is exact.)
pub fn real_depth(state: &DocState) -> Result<u32, String> {
    let update = state.encode().update;
    let structs =
        parse_v1(&update).map_err(|e| format!("a document's own encoding does not parse: {e}"))?;
    Ok(nesting_depth(&structs))
}

/// The v1 updates, each a few structs of one client section (then the delete set), that
/// `crdt::DocState::apply` integrates one after another — rewritten here from the public
/// layout so a plain yrs doc can mirror exactly what the server's doc holds.
pub fn chunks(bytes: &[u8]) -> Option<Vec<Vec<u8>>> {
    const CHUNK: usize = 32;
    let layout = replicate_actors::precheck::scan_update(bytes).ok()?;
    let mut out = Vec::new();
    for section in &layout.sections {
        let idx: Vec<usize> = section.structs.clone().collect();
        for c in idx.chunks(CHUNK) {
            let first = &layout.structs[c[0]];
            let last = &layout.structs[c[c.len() - 1]];
            let mut w = super::wire::Writer::default();
            w.var(1);
            w.var(c.len() as u64);
            w.var(section.client);
            w.var(u64::from(first.id.clock));
            w.out
                .extend_from_slice(&bytes[first.bytes.start..last.bytes.end]);
            w.out.push(0);
            out.push(w.out);
        }
    }
    if layout.delete_ranges > 0 {
        let mut d = vec![0];
        d.extend_from_slice(&bytes[layout.delete_set_at..]);
        out.push(d);
    }
    Some(out)
}

/// A plain yrs doc fed the same chunks as the server's state, to read what it really holds
/// (`encode_diff_v1` leaves pending structs out, unlike the state's encoding).
pub struct Mirror {
    pub doc: Doc,
}

impl Mirror {
    pub fn new() -> Mirror {
        Mirror { doc: Doc::new() }
    }

    pub fn of(accepted: &[Vec<u8>]) -> Mirror {
        let m = Mirror::new();
        for u in accepted {
            m.apply(u);
        }
        m
    }

    pub fn apply(&self, bytes: &[u8]) {
        let Some(chunks) = chunks(bytes) else { return };
        let mut txn = self.doc.transact_mut();
        for c in chunks {
            let Ok(u) = Update::decode_v1(&c) else { return };
            if txn.apply_update(u).is_err() {
                return;
            }
        }
    }

    /// What is integrated (not pending).
    pub fn integrated(&self) -> Vec<u8> {
        self.doc.transact().encode_diff_v1(&StateVector::default())
    }

    pub fn depth(&self) -> Result<u32, String> {
        let structs = parse_v1(&self.integrated())
            .map_err(|e| format!("the doc's integrated content does not parse: {e}"))?;
        Ok(nesting_depth(&structs))
    }
}

impl Default for Mirror {
    fn default() -> Self {
        Mirror::new()
    }
}

fn short(e: &Error) -> String {
    let s = e.to_string();
    // Keep the reason's words, not its numbers, so counts group.
    let words: String = s
        .split_whitespace()
        .filter(|w| !w.chars().any(|c| c.is_ascii_digit()))
        .take(16)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{}: {}", e.code(), words)
}

/// Applies `updates` one by one to one [`DocState`] (rebuilding from the accepted ones when a
/// refusal poisons it) and checks the invariants; `Err` says which one broke.
pub fn run(
    updates: &[Vec<u8>],
    limits: &YjsLimits,
    budget: Duration,
    checks: Checks,
) -> Result<Outcome, String> {
    let mut out = Outcome::default();
    run_into(&mut out, updates, limits, budget, checks)?;
    Ok(out)
}

/// [`run`], counting into `out` as it goes (so a caller still has the counts when a check
/// fails).
pub fn run_into(
    out: &mut Outcome,
    updates: &[Vec<u8>],
    limits: &YjsLimits,
    budget: Duration,
    checks: Checks,
) -> Result<(), String> {
    let mut state = DocState::new();
    let mut mirror = Mirror::new();
    let mut accepted: Vec<Vec<u8>> = Vec::new();
    for (i, u) in updates.iter().enumerate() {
        let before = state.encode();
        let depth_before = state.depth();
        match state.apply("crdtBytes", u, limits, budget) {
            Ok(()) => {
                accepted.push(u.clone());
                mirror.apply(u);
                out.accepted += 1;
            }
            Err(refused) => {
                out.refused += 1;
                *out.reasons.entry(short(&refused.error)).or_default() += 1;
                if !matches!(
                    refused.error,
                    Error::InvalidYjs { .. } | Error::YjsLimit { .. } | Error::TooLarge { .. }
                ) {
                    return Err(format!(
                        "update {i}: unexpected error kind {:?}",
                        refused.error
                    ));
                }
                if refused.poisoned {
                    out.poisoned += 1;
                    let built = DocState::build(
                        accepted
                            .iter()
                            .enumerate()
                            .map(|(s, b)| (s as u64 + 1, b.as_slice())),
                        limits,
                    );
                    if !built.quarantined.is_empty() {
                        return Err(format!(
                            "update {i} poisoned the state; rebuilding from the accepted updates \
                             quarantined {:?}",
                            built.quarantined
                        ));
                    }
                    state = built.state;
                    mirror = Mirror::of(&accepted);
                } else {
                    // (Compared by content: yrs writes sub-document options in hash order.)
                    if content_of_update(&state.encode().update)?
                        != content_of_update(&before.update)?
                    {
                        return Err(format!(
                            "update {i} was refused without `poisoned` ({}) but changed the doc",
                            refused.error
                        ));
                    }
                    if state.depth() != depth_before {
                        return Err(format!(
                            "update {i} was refused without `poisoned` but changed the depth"
                        ));
                    }
                }
            }
        }
        let model = state.depth();
        if model > limits.shape.max_depth {
            return Err(format!(
                "after update {i}: depth {model} > max_depth {}",
                limits.shape.max_depth
            ));
        }
        let real = mirror
            .depth()
            .map_err(|e| format!("after update {i}: {e}"))?;
        if real > model || real > limits.shape.max_depth {
            return Err(format!(
                "after update {i}: the document really nests {real} deep; the model says {model} \
                 (max_depth {})",
                limits.shape.max_depth
            ));
        }
        out.model_depth = out.model_depth.max(model);
        out.real_depth = out.real_depth.max(real);
    }
    // The accepted updates, rebuilt, give the live state.
    let built = DocState::build(
        accepted
            .iter()
            .enumerate()
            .map(|(s, b)| (s as u64 + 1, b.as_slice())),
        limits,
    );
    if !built.quarantined.is_empty() {
        return Err(format!(
            "rebuilding the accepted updates quarantined {:?}",
            built.quarantined
        ));
    }
    let live_update = state.encode().update;
    let live = content_of_update(&live_update)?;
    // The mirror holds what the state holds (checks the mirror).
    let mirrored = content_of_doc(&mirror.doc)?;
    if mirrored != live {
        return Err(format!(
            "the mirror differs from the state (harness bug?): {}",
            first_difference(&live, &mirrored)
        ));
    }
    // What compaction stores (the state's encoding) keeps everything the doc has integrated.
    if checks.snapshot_keeps {
        let fresh = Doc::new();
        let snapshot = Update::decode_v1(&live_update).map_err(|e| e.to_string())?;
        fresh
            .transact_mut()
            .apply_update(snapshot)
            .map_err(|e| format!("the state's encoding does not apply to a fresh doc: {e}"))?;
        let kept = content_of_update(&fresh.transact().encode_diff_v1(&StateVector::default()))?;
        let had = content_of_update(&mirror.integrated())?;
        for (id, unit) in &had.units {
            if kept.units.get(id) != Some(unit) {
                return Err(format!(
                    "the state's encoding (a compaction snapshot) loses integrated content at \
                     {id:?}: the doc has {unit:?}, a doc built from the snapshot has {:?}",
                    kept.units.get(id)
                ));
            }
        }
    }
    let rebuilt = content_of_update(&built.state.encode().update)?;
    if live != rebuilt {
        return Err(format!(
            "the rebuilt state differs from the live one: {}",
            first_difference(&live, &rebuilt)
        ));
    }
    // A snapshot of the state (what compaction stores, then rebuilds from as seq 0) is
    // itself accepted by a rebuild.
    let from_snapshot = DocState::build([(0u64, live_update.as_slice())], limits);
    if !from_snapshot.quarantined.is_empty() {
        return Err(format!(
            "a rebuild from the live state's own encoding (a compaction snapshot) quarantines it: {:?}",
            from_snapshot.quarantined
        ));
    }
    out.has_content = has_content(&live);
    if checks.peer_view {
        // A peer applies the stored bytes whole, in order.
        let peer = Doc::new();
        for (i, u) in accepted.iter().enumerate() {
            let applied = catch_unwind(AssertUnwindSafe(|| {
                let update = Update::decode_v1(u).map_err(|e| e.to_string())?;
                peer.transact_mut()
                    .apply_update(update)
                    .map_err(|e| e.to_string())
            }));
            match applied {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return Err(format!("a peer cannot apply accepted update {i}: {e}")),
                Err(_) => return Err(format!("a peer panics applying accepted update {i}")),
            }
        }
        let peer_content = content_of_doc(&peer)?;
        if peer_content != live {
            return Err(format!(
                "a peer that applied the accepted updates differs from the server: {}",
                first_difference(&live, &peer_content)
            ));
        }
    }
    Ok(())
}
