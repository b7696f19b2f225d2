//! The floors: the same work with replicate taken away, measured in the same run.
//!
//! - [`sled_append`]: raw sled inserts, one flush per group of concurrent writers — what
//!   durable, group-committed appends cost on this disk with nothing else around them.
//! - [`yrs_merge`]: raw yrs apply + encode of a document's deltas — the core of a compaction.
//! - [`yrs_diff`]: raw yrs build + diff against a state vector — the core of a recovery.
//!
//! (The fourth floor, the in-process actor call, is a scenario run over
//! [`crate::backend::Backend::Actor`]; see [`crate::scenarios::actor_floor`].)

use std::time::{Duration, Instant};

use anyhow::Result;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::peer::Peer;

/// Realistic updates: `n` edits by `writers` peers to one document (as the scenarios make).
pub fn sample_updates(n: usize, writers: u64, seed: u64) -> Vec<Vec<u8>> {
    let mut peers: Vec<Peer> = (0..writers.max(1))
        .map(|i| Peer::new(10_000 + i, "floor", Backend::Offline, Metrics::new(), seed))
        .collect();
    let k = peers.len();
    (0..n).map(|i| peers[i % k].edit("doc").0).collect()
}

/// Appends per second of raw sled: `group` inserts (key = big-endian seq, value = an update)
/// then one flush, repeated for `time` (at most `max` appends).
///
/// # Errors
/// If sled fails.
pub fn sled_append(updates: &[Vec<u8>], group: usize, time: Duration, max: u64) -> Result<f64> {
    let db = sled::Config::new().temporary(true).open()?;
    let group = group.max(1);
    let started = Instant::now();
    let mut seq: u64 = 0;
    while started.elapsed() < time && seq < max {
        for _ in 0..group {
            seq += 1;
            db.insert(
                seq.to_be_bytes(),
                updates[seq as usize % updates.len()].as_slice(),
            )?;
        }
        db.flush()?;
    }
    Ok(seq as f64 / started.elapsed().as_secs_f64())
}

fn build(updates: &[Vec<u8>]) -> Result<Doc> {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for u in updates {
            txn.apply_update(Update::decode_v1(u)?)?;
        }
    }
    Ok(doc)
}

/// Seconds to merge `updates` into one snapshot with raw yrs (apply each to a fresh doc, encode
/// its state and state vector): the best of `rounds`.
///
/// # Errors
/// If an update does not decode or apply.
pub fn yrs_merge(updates: &[Vec<u8>], rounds: usize) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        let doc = build(updates)?;
        let txn = doc.transact();
        let snapshot = txn.encode_state_as_update_v1(&StateVector::default());
        let sv = txn.state_vector().encode_v1();
        std::hint::black_box((snapshot, sv));
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Seconds to build a document from `updates` and encode what a peer with `state_vector`
/// lacks, with raw yrs: the best of `rounds`.
///
/// # Errors
/// If an update or the state vector does not decode.
pub fn yrs_diff(updates: &[Vec<u8>], state_vector: &[u8], rounds: usize) -> Result<f64> {
    let sv = StateVector::decode_v1(state_vector)?;
    let mut best = f64::MAX;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        let doc = build(updates)?;
        let diff = doc.transact().encode_state_as_update_v1(&sv);
        std::hint::black_box(diff);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_run_on_sample_updates() {
        let updates = sample_updates(200, 4, 1);
        assert!(sled_append(&updates, 8, Duration::from_millis(50), 64).unwrap() > 0.0);
        assert!(yrs_merge(&updates, 1).unwrap() > 0.0);
        assert!(yrs_diff(&updates, &crate::peer::empty_state_vector(), 1).unwrap() > 0.0);
    }
}
