//! The document cache's bound ([`replicate_actors::doc_cache`]) is only as good as the weight
//! each built document claims ([`DocState::weight`]). Issue 13 found it claiming the update
//! bytes applied, about 1/15 of what a built yrs document holds for small edits, so a 64 MiB
//! bound let ~1 GB of documents stay in memory. This test counts the heap a built document
//! really holds (a counting global allocator, this test binary only) and fails if the weight
//! claims less than that, or wildly more (an over-claim evicts documents needlessly).
//!
//! Allocation counts are deterministic for a given sequence of updates, so this is exact, not
//! timing-dependent; it runs single-threaded (one test in this binary).

mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicI64, Ordering};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replicate_actors::crdt::{DocState, YjsLimits};
use yrs::updates::decoder::Decode;
use yrs::{Doc, Map, ReadTxn, StateVector, Text, TextPrelim, Transact, Update};

struct Counting;

static LIVE: AtomicI64 = AtomicI64::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as i64, Ordering::SeqCst);
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as i64, Ordering::SeqCst);
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as i64 - layout.size() as i64, Ordering::SeqCst);
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

fn live() -> i64 {
    LIVE.load(Ordering::SeqCst)
}

/// Edits like the load generator's: a few characters typed or deleted at a random place in the
/// writer's current block (a new block every 64 edits), and a map key unique to the edit.
fn edits(n: usize, seed: u64) -> Vec<Vec<u8>> {
    let mut rng = StdRng::seed_from_u64(seed);
    let doc = Doc::with_client_id(7);
    let blocks = doc.get_or_insert_map("blocks");
    let meta = doc.get_or_insert_map("meta");
    let mut block = None;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let before = doc.transact().state_vector();
        {
            let mut txn = doc.transact_mut();
            if i % 64 == 0 {
                block = Some(blocks.insert(&mut txn, format!("b{i}"), TextPrelim::new("")));
            }
            if let Some(text) = &block {
                let len = text.len(&txn);
                if len > 8 && rng.gen_ratio(1, 4) {
                    let at = rng.gen_range(0..len - 2);
                    text.remove_range(&mut txn, at, 2);
                } else {
                    let at = rng.gen_range(0..=len);
                    let chunk: String = (0..rng.gen_range(1..8))
                        .map(|_| rng.gen_range(b'a'..=b'z') as char)
                        .collect();
                    text.insert(&mut txn, at, &chunk);
                }
            }
            meta.insert(&mut txn, format!("7:{i}"), i as i64);
        }
        out.push(doc.transact().encode_diff_v1(&before));
    }
    out
}

/// One update holding everything `updates` hold (what a compaction snapshot is).
fn merged(updates: &[Vec<u8>]) -> Vec<u8> {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for u in updates {
            let update = Update::decode_v1(u).expect("valid update");
            txn.apply_update(update).expect("applies");
        }
    }
    let txn = doc.transact();
    txn.encode_state_as_update_v1(&StateVector::default())
}

/// (heap the state holds, its weight) after applying `updates` one by one, as writes are
/// checked, or as one build from them.
fn measure(updates: &[Vec<u8>], one_by_one: bool) -> (u64, u64) {
    let limits = YjsLimits::default();
    let before = live();
    let state = if one_by_one {
        let mut state = DocState::new();
        for u in updates {
            state
                .apply("crdtBytes", u, &limits, std::time::Duration::from_secs(10))
                .expect("a valid edit applies");
        }
        state
    } else {
        let parts: Vec<(u64, &[u8])> = updates.iter().map(|u| (0, u.as_slice())).collect();
        DocState::build(parts, &limits).state
    };
    let held = (live() - before).max(0) as u64;
    let weight = state.weight();
    drop(state);
    (held, weight)
}

#[test]
fn a_built_document_weighs_at_least_the_memory_it_holds() {
    for n in [1usize, 200, 2_000] {
        let updates = edits(n, n as u64);
        let bytes: usize = updates.iter().map(Vec::len).sum();
        let snapshot = merged(&updates);
        for (label, parts, one_by_one) in [
            ("edits applied one by one", updates.clone(), true),
            ("built from a snapshot", vec![snapshot.clone()], false),
        ] {
            let (held, weight) = measure(&parts, one_by_one);
            let ratio = weight as f64 / held.max(1) as f64;
            println!(
                "{n} edits ({bytes} update bytes, snapshot {} bytes), {label}: holds {held} \
                 bytes, weighs {weight} ({ratio:.2}×)",
                snapshot.len()
            );
            assert!(
                weight >= held,
                "{n} edits, {label}: weighs {weight} but holds {held} bytes"
            );
            assert!(
                ratio <= 4.0,
                "{n} edits, {label}: weighs {weight}, {ratio:.1}× the {held} bytes it holds"
            );
        }
    }
    a_document_of_replaced_blocks_weighs_far_less_once_rebuilt();
}

/// Why a compaction sheds an outgrown cached document (`CollectionActor::shed_outgrown`): a
/// document that integrated block-replacing edits one by one holds no more heap than one
/// rebuilt from their snapshot (yrs collects the removed blocks in memory too), but its weight
/// adds every edit's structs and never subtracts, so it claims many times what it holds; the
/// snapshot's estimate ([`replicate_actors::crdt::rebuilt_weight`]) claims at least what the
/// rebuild holds. (Called from the test above: one test per binary, as the heap count is
/// global.)
fn a_document_of_replaced_blocks_weighs_far_less_once_rebuilt() {
    let (_, updates) = common::block_edits(2_000);
    let snapshot = merged(&updates);
    let (cached, cached_weight) = measure(&updates, true);
    let (rebuilt, rebuilt_weight) = measure(std::slice::from_ref(&snapshot), false);
    let estimate = replicate_actors::crdt::rebuilt_weight(&snapshot);
    println!(
        "2,000 block edits (snapshot {} bytes): one by one holds {cached} bytes (weighs \
         {cached_weight}); rebuilt holds {rebuilt} (weighs {rebuilt_weight}, estimated \
         {estimate})",
        snapshot.len()
    );
    assert!(cached_weight >= cached && rebuilt_weight >= rebuilt);
    assert!(estimate >= rebuilt, "estimated {estimate} < held {rebuilt}");
    // What shedding corrects: the cached state claims over 4× its rebuild's estimate.
    assert!(
        cached_weight > 4 * estimate,
        "cached weighs {cached_weight}, rebuild estimated {estimate}"
    );
}
