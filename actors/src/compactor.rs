//! Whole-document and whole-collection reads that need CRDT work (recovery diffs and the
//! merged collection state), as plain functions run on worker threads
//! ([`crate::workers::Workers`]), never on an actor's arbiter or an HTTP worker.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use crate::crdt::{self, Built, DocState, YjsLimits};
use crate::error::{Error, Result};
use crate::store::{SnapshotRecord, Store};

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
///
/// Deltas at or below the snapshot's `snapshot_seq` are inside it (a compaction merges every
/// delta of the document through that seq, and keeps the ones an active peer has not
/// acknowledged): they are not applied again, unless the snapshot itself is left out. Applying
/// them was a no-op that cost a decode and an integration check each, so a peer holding back
/// 10,000 deltas made every rebuild, compaction and recovery of the document pay for 10,000.
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
    let snapshot = snapshot.filter(|_| !skip.contains(&0));
    let parts: Vec<(u64, &[u8])> = deltas.iter().map(|(s, b)| (*s, b.as_slice())).collect();
    let built = build_document(snapshot.as_ref(), &parts, limits);
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

/// Builds one document from its snapshot and its retained `deltas` (ascending, quarantined
/// ones already left out): the snapshot first, then only the deltas above its
/// `snapshot_seq` (see [`load_document`]); if the snapshot fails, from every delta instead.
fn build_document(
    snapshot: Option<&SnapshotRecord>,
    deltas: &[(u64, &[u8])],
    limits: &YjsLimits,
) -> Built {
    let inside = snapshot.map_or(0, |s| s.snapshot_seq);
    let parts = |inside: u64| {
        snapshot
            .map(|s| (0, s.bytes.as_slice()))
            .into_iter()
            .chain(deltas.iter().copied().filter(move |(seq, _)| *seq > inside))
    };
    let built = DocState::build(parts(inside), limits);
    if inside > 0 && built.quarantined.iter().any(|(seq, _)| *seq == 0) {
        // The snapshot failed now: what it held must come from the deltas after all.
        return DocState::build(parts(0), limits);
    }
    built
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
///
/// Each document is built on its own, exactly as [`load_document`] builds it for a
/// per-document recovery (its snapshot, then its deltas above `snapshot_seq`, under the
/// per-document limits its writes were checked with), and the documents' encoded states are
/// then merged as updates. Building the whole collection as one Yjs document instead lost
/// answered writes while the answer still claimed the head as its cursor: the per-document
/// limits then applied to the sum of all documents (two documents' waiting structs together
/// went past the pending bound, and one document's update was left out), and an earlier
/// version applied retained deltas before the snapshots they wait on.
///
/// Deltas are read before the snapshots, as in [`load_document`], so a compaction in between
/// only moves content into a snapshot this read sees.
///
/// # Errors
/// [`Error::Conflict`] when two documents were written by the same Yjs client id: one update
/// cannot hold both (their structs have the same ids, so one document's would be taken for
/// the other's and dropped). Yjs picks client ids at random per document, so this is rare
/// unless an app sets them itself; per-document recovery and the stream are unaffected.
pub fn merge_collection(store: &Store, c: &str, upto: u64, limits: &YjsLimits) -> Result<Vec<u8>> {
    let deltas = store.all_deltas(c, upto)?;
    let snapshots = store.snapshots(c)?;
    let mut docs: BTreeMap<&str, StoredDoc> = BTreeMap::new();
    for (doc, snapshot) in &snapshots {
        docs.entry(doc.as_str()).or_default().0 = Some(snapshot);
    }
    for (seq, d) in &deltas {
        let entry = docs.entry(d.document_id.as_str()).or_default();
        entry.1.push((*seq, d.bytes.as_slice()));
    }
    let mut writers = ClientOwners::default();
    let mut updates = Vec::with_capacity(docs.len());
    for (doc, (snapshot, parts)) in docs {
        let skip = store.quarantined(c, doc)?;
        let snapshot = snapshot.filter(|_| !skip.contains(&0));
        let parts: Vec<(u64, &[u8])> = parts
            .into_iter()
            .filter(|(seq, _)| !skip.contains(seq))
            .collect();
        let state = build_document(snapshot, &parts, limits).state.encode();
        writers.claim(doc, &state.state_vector)?;
        updates.push(state.update);
    }
    crdt::merge_disjoint(&updates)
}

/// One document as read from the store: its snapshot, and its retained deltas (seq, bytes).
type StoredDoc<'a> = (Option<&'a SnapshotRecord>, Vec<(u64, &'a [u8])>);

/// Which document each Yjs client id wrote, to refuse merging two documents that share one.
#[derive(Default)]
struct ClientOwners<'a> {
    owners: HashMap<yrs::ClientID, &'a str>,
}

impl<'a> ClientOwners<'a> {
    /// Records the clients of `doc`'s v1 `state_vector`.
    ///
    /// # Errors
    /// [`Error::Conflict`] for a client already recorded for another document.
    fn claim(&mut self, doc: &'a str, state_vector: &[u8]) -> Result<()> {
        let sv = crdt::decode_state_vector("stateVector", state_vector)?;
        for (client, _) in sv.iter() {
            match self.owners.insert(*client, doc) {
                Some(other) if other != doc => {
                    return Err(Error::Conflict(format!(
                        "documents {other:?} and {doc:?} were both written by Yjs client id \
                         {client}, so the collection cannot be merged into one update without \
                         losing writes; recover each document with its documentId, or stream \
                         from cursor 0"
                    )))
                }
                _ => {}
            }
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use yrs::updates::decoder::Decode;
    use yrs::{GetString, ReadTxn, Text, Transact};

    use super::*;
    use crate::store::{CompactionWrite, DeltaRecord, DocStats, SnapshotRecord};
    use crate::types::OperationType;

    /// Stores `bytes` at `seq` as a delta of document "d", unchecked (as data stored before a
    /// check existed would be).
    fn put(store: &Store, seq: u64, bytes: Vec<u8>) {
        let delta = DeltaRecord {
            document_id: "d".into(),
            operation: OperationType::Update,
            bytes,
            created_at: 0,
        };
        store
            .append("c", seq, &delta, &DocStats::default(), None)
            .unwrap();
    }

    fn snapshot(store: &Store, bytes: Vec<u8>, snapshot_seq: u64) {
        let record = SnapshotRecord {
            bytes,
            state_vector: vec![0],
            snapshot_seq,
            created_at: 0,
        };
        let write = CompactionWrite {
            document_id: "d",
            snapshot: &record,
            deleted: &[],
            stats: DocStats::default(),
            bucket_seqs: 1024,
            guard: None,
        };
        store.apply_compaction("c", &write).unwrap();
    }

    fn text(loaded: &LoadedDoc) -> String {
        let doc = yrs::Doc::new();
        let update = loaded.built.state.encode().update;
        let decoded = yrs::Update::decode_v1(&update).unwrap();
        doc.transact_mut().apply_update(decoded).unwrap();
        let t = doc.get_or_insert_text("t");
        let txn = doc.transact();
        t.get_string(&txn)
    }

    /// Deltas a peer still holds below the snapshot's seq are inside the snapshot: a rebuild
    /// does not apply them again (the junk delta at seq 2, inside the snapshot's range, would
    /// be quarantined if it were applied); when the snapshot itself fails, the deltas carry
    /// the document.
    #[test]
    fn deltas_inside_the_snapshot_are_not_applied_again() {
        let limits = YjsLimits::default();
        let writer = yrs::Doc::with_client_id(1);
        let t = writer.get_or_insert_text("t");
        let mut updates = Vec::new();
        for s in ["a", "b", "c"] {
            let before = writer.transact().state_vector();
            let len = t.len(&writer.transact());
            t.insert(&mut writer.transact_mut(), len, s);
            updates.push(writer.transact().encode_diff_v1(&before));
        }
        let junk = vec![1, 2, 3];
        let inside_snapshot = {
            let doc = yrs::Doc::new();
            for u in &updates[..2] {
                let decoded = yrs::Update::decode_v1(u).unwrap();
                doc.transact_mut().apply_update(decoded).unwrap();
            }
            let txn = doc.transact();
            txn.encode_state_as_update_v1(&yrs::StateVector::default())
        };

        let store = Store::temporary().unwrap();
        put(&store, 1, updates[0].clone());
        put(&store, 2, junk.clone());
        put(&store, 3, updates[1].clone());
        put(&store, 4, updates[2].clone());
        snapshot(&store, inside_snapshot, 3);
        let loaded = load_document(&store, "c", "d", u64::MAX, &limits).unwrap();
        assert!(
            loaded.built.quarantined.is_empty(),
            "{:?}",
            loaded.built.quarantined
        );
        assert_eq!(text(&loaded), "abc");
        let merged: Vec<u64> = loaded.merged.iter().map(|(seq, _)| *seq).collect();
        assert_eq!(merged, vec![1, 2, 3, 4]);

        // A snapshot that fails now: rebuilt from every delta (the junk one quarantined).
        let store = Store::temporary().unwrap();
        put(&store, 1, updates[0].clone());
        put(&store, 2, junk);
        put(&store, 3, updates[1].clone());
        put(&store, 4, updates[2].clone());
        snapshot(&store, vec![9, 9, 9], 3);
        let loaded = load_document(&store, "c", "d", u64::MAX, &limits).unwrap();
        let quarantined: Vec<u64> = loaded.built.quarantined.iter().map(|(s, _)| *s).collect();
        assert_eq!(quarantined, vec![0, 2]);
        assert_eq!(text(&loaded), "abc");
    }
}
