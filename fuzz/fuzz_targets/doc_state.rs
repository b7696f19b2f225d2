//! Fuzzes `replicate_actors::crdt::DocState` — the entry point every write and every merge of
//! stored updates goes through — with sequences of updates to one document.
//!
//! The input's first byte picks how the rest becomes updates:
//! - even: structure-aware, decoded into the ops of the hostile-update generator
//!   (`actors/tests/hostile_yjs/script.rs`: items with origins / parents by id that exist or
//!   not, nested-type chains, GC and skip ranges, delete sets, partly known ids, honest yrs
//!   edits, replays, bit flips) and run into v1 updates;
//! - odd: raw, split into several updates at length prefixes (one byte each).
//!
//! Each sequence is applied in order to one `DocState` (rebuilt from the accepted updates
//! when a refusal poisons it) and checked like the proptest does
//! (`actors/tests/hostile_yjs/harness.rs`): no panic or crash, depth within the bound and not
//! under the doc's real nesting, clean refusals change nothing, the accepted updates rebuild
//! into the same content without quarantine, the state's own encoding is accepted and keeps
//! what the doc holds, peers applying the accepted bytes agree with the server.
//!
//! `HOSTILE_YJS_AVOID` (see `script::avoid`) steers the generator away from known holes.

#![no_main]

use std::time::Duration;

use libfuzzer_sys::fuzz_target;
use replicate_actors::crdt::YjsLimits;
use replicate_actors::shape::ShapeLimits;

#[path = "../../actors/tests/hostile_yjs/harness.rs"]
mod harness;
#[path = "../../actors/tests/hostile_yjs/script.rs"]
mod script;
#[path = "../../actors/tests/hostile_yjs/wire.rs"]
mod wire;

fn raw_updates(data: &[u8]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < data.len() && out.len() < 16 {
        let n = data[at] as usize;
        at += 1;
        let end = (at + n).min(data.len());
        out.push(data[at..end].to_vec());
        at = end;
    }
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let updates = if mode % 2 == 0 {
        script::Script::updates(&script::ops_from_bytes(rest))
    } else {
        raw_updates(rest)
    };
    let limits = if mode & 2 == 0 {
        YjsLimits::default()
    } else {
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
    };
    let checks = harness::Checks::from_env();
    if let Err(broken) = harness::run(&updates, &limits, Duration::from_secs(30), checks) {
        panic!("invariant broken: {broken}\nupdates: {updates:?}");
    }
});
