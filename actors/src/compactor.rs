//! Whole-document and whole-collection reads that need CRDT work (recovery diffs and the
//! merged collection state), as plain functions run on worker threads
//! ([`crate::workers::Workers`]), never on an actor's arbiter or an HTTP worker.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::crdt::{Built, DocState, YjsLimits};
use crate::error::Result;
use crate::store::Store;

/// One document rebuilt from the store, and what went into it.
pub struct LoadedDoc {
    pub built: Built,
    /// (seq, byte length) of the deltas merged in, quarantined ones left out.
    pub merged: Vec<(u64, u64)>,
    /// Whether the document had neither a snapshot nor deltas.
    pub empty: bool,
}

/// Rebuilds document `doc` from its snapshot and its retained deltas with seq ≤ `upto`,
/// leaving out the updates quarantined before (and quarantining any that fail now).
///
/// Reads deltas first and the snapshot second: a compaction that deletes a delta between the
/// two reads wrote the snapshot holding it in the same atomic batch, so the second read sees
/// it.
pub fn load_document(
    store: &Store,
    c: &str,
    doc: &str,
    upto: u64,
    limits: &YjsLimits,
) -> Result<LoadedDoc> {
    let skip = store.quarantined(c, doc)?;
    let deltas: Vec<(u64, Vec<u8>)> = store
        .doc_deltas(c, doc, upto)?
        .into_iter()
        .filter(|(seq, _)| !skip.contains(seq))
        .collect();
    let snapshot = store.snapshot(c, doc)?;
    let empty = snapshot.is_none() && deltas.is_empty();
    let mut parts: Vec<(u64, &[u8])> = Vec::with_capacity(deltas.len() + 1);
    if let Some(s) = snapshot.as_ref().filter(|_| !skip.contains(&0)) {
        parts.push((0, &s.bytes));
    }
    parts.extend(deltas.iter().map(|(seq, b)| (*seq, b.as_slice())));
    let built = DocState::build(parts.iter().copied(), limits);
    let merged = deltas
        .iter()
        .filter(|(seq, _)| !built.quarantined.iter().any(|(q, _)| q == seq))
        .map(|(seq, b)| (*seq, b.len() as u64))
        .collect();
    Ok(LoadedDoc {
        built,
        merged,
        empty,
    })
}

/// The state of one document, as a diff against `state_vector` (the whole state if empty).
pub fn recover_document(
    store: &Store,
    c: &str,
    doc: &str,
    state_vector: &[u8],
    limits: &YjsLimits,
) -> Result<Vec<u8>> {
    load_document(store, c, doc, u64::MAX, limits)?
        .built
        .state
        .diff(state_vector)
}

/// The whole collection through seq `upto`, merged into one v1 update.
pub fn merge_collection(store: &Store, c: &str, upto: u64, limits: &YjsLimits) -> Result<Vec<u8>> {
    let deltas = store.all_deltas(c, upto)?;
    let snapshots = store.snapshots(c)?;
    let mut parts: Vec<(u64, &[u8])> = Vec::with_capacity(deltas.len() + snapshots.len());
    parts.extend(deltas.iter().map(|(seq, d)| (*seq, d.bytes.as_slice())));
    parts.extend(snapshots.iter().map(|(_, s)| (0, s.bytes.as_slice())));
    Ok(DocState::build(parts.iter().copied(), limits)
        .state
        .encode()
        .update)
}

type MergedAt = (u64, Arc<Vec<u8>>);

/// The last merged state of each collection, keyed by the seq it corresponds to, so repeated
/// `state` and recovery calls at the same head cost one merge. Bounded by total bytes.
pub struct StateCache {
    /// Collection → (head seq, merged state).
    inner: Mutex<HashMap<String, MergedAt>>,
    max_bytes: usize,
}

impl StateCache {
    pub fn new(max_bytes: usize) -> Self {
        StateCache {
            inner: Mutex::default(),
            max_bytes,
        }
    }

    /// (collections, bytes) held.
    pub fn size(&self) -> (usize, u64) {
        self.inner
            .lock()
            .map(|i| (i.len(), i.values().map(|(_, s)| s.len() as u64).sum()))
            .unwrap_or_default()
    }

    /// The bound in bytes.
    pub fn capacity(&self) -> u64 {
        self.max_bytes as u64
    }

    /// The merged state of `c` at `head`, if cached.
    pub fn get(&self, c: &str, head: u64) -> Option<Arc<Vec<u8>>> {
        let inner = self.inner.lock().ok()?;
        inner
            .get(c)
            .filter(|(h, _)| *h == head)
            .map(|(_, s)| s.clone())
    }

    /// Remembers the merged state of `c` at `head`; forgets others while over the bound.
    pub fn put(&self, c: &str, head: u64, state: Arc<Vec<u8>>) {
        let Ok(mut inner) = self.inner.lock() else {
            return;
        };
        if state.len() > self.max_bytes {
            inner.remove(c);
            return;
        }
        inner.insert(c.to_string(), (head, state));
        let mut total: usize = inner.values().map(|(_, s)| s.len()).sum();
        while total > self.max_bytes {
            let Some(other) = inner.keys().find(|k| k.as_str() != c).cloned() else {
                break;
            };
            if let Some((_, s)) = inner.remove(&other) {
                total -= s.len();
            }
        }
    }
}
