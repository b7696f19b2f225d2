//! The compactor: CPU-heavy CRDT work (merging a document's updates into a snapshot, building
//! recovery diffs and whole-collection state) on its own threads (a `SyncArbiter`), so a long
//! merge never stalls the arbiter that runs collection actors or HTTP handlers.

use actix::prelude::*;

use crate::crdt::{self, Merged};
use crate::error::Result;
use crate::store::Store;

pub struct Compactor {
    store: Store,
}

impl Compactor {
    pub fn new(store: Store) -> Self {
        Compactor { store }
    }
}

impl Actor for Compactor {
    type Context = SyncContext<Self>;
}

/// Merge these v1 updates (in order) into one snapshot.
#[derive(Message)]
#[rtype(result = "Result<Merged>")]
pub struct Merge {
    pub parts: Vec<Vec<u8>>,
}

impl Handler<Merge> for Compactor {
    type Result = Result<Merged>;

    fn handle(&mut self, msg: Merge, _: &mut Self::Context) -> Self::Result {
        crdt::merge(msg.parts.iter().map(Vec::as_slice))
    }
}

/// The state of a collection (or one document of it) through seq `upto`, as a diff against
/// `state_vector` (the whole state if empty).
#[derive(Message)]
#[rtype(result = "Result<Vec<u8>>")]
pub struct Recover {
    pub collection: String,
    pub document_id: Option<String>,
    pub upto: u64,
    pub state_vector: Vec<u8>,
}

impl Handler<Recover> for Compactor {
    type Result = Result<Vec<u8>>;

    /// Reads deltas first and snapshots second: a compaction that deletes a delta between the
    /// two reads wrote the snapshot holding it in the same atomic batch, so the second read
    /// sees it. Nothing with seq ≤ `upto` can be missed.
    fn handle(&mut self, msg: Recover, _: &mut Self::Context) -> Self::Result {
        let c = &msg.collection;
        let mut parts: Vec<Vec<u8>> = Vec::new();
        match &msg.document_id {
            Some(doc) => {
                parts.extend(
                    self.store
                        .doc_deltas(c, doc, msg.upto)?
                        .into_iter()
                        .map(|(_, b)| b),
                );
                parts.extend(self.store.snapshot(c, doc)?.map(|s| s.bytes));
            }
            None => {
                parts.extend(
                    self.store
                        .all_deltas(c, msg.upto)?
                        .into_iter()
                        .map(|(_, d)| d.bytes),
                );
                parts.extend(self.store.snapshots(c)?.into_iter().map(|(_, s)| s.bytes));
            }
        }
        crdt::diff(parts.iter().map(Vec::as_slice), &msg.state_vector)
    }
}
