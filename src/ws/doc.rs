//! A room's copy of its document: a yrs `Doc` holding what the collection's stream delivered
//! for that document, so the room can announce its state vector, answer step 1 with a diff,
//! and tell a client's step 2 that adds nothing from one that does, without a store read per
//! connection.
//!
//! # Invariants
//! - Only updates the store accepted are applied (the snapshot the room started from, then
//!   stream changes in seq order), so the state vector never claims more than the store holds.
//! - A client's bytes are decoded only after [`replicate_actors::crdt::check_layout`], the
//!   bounds walk the actors run before yrs sees untrusted bytes.
//! - yrs is called under `catch_unwind`: data stored before today's checks may still make it
//!   panic, and that must close a room, not a worker thread.

use std::panic::{catch_unwind, AssertUnwindSafe};

use yrs::updates::decoder::Decode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

/// The document as the room knows it.
pub struct RoomDoc {
    doc: Doc,
}

impl RoomDoc {
    /// A document holding `update` (the recovery of the whole document).
    ///
    /// # Errors
    /// Why the stored state could not be applied.
    pub fn from_update(update: &[u8]) -> Result<RoomDoc, String> {
        let room = RoomDoc { doc: Doc::new() };
        room.apply(update)?;
        Ok(room)
    }

    /// Applies a stored update (a delta or a snapshot from the stream).
    ///
    /// # Errors
    /// Why it did not decode or apply; the room should then be closed, since its state no
    /// longer follows the store.
    pub fn apply(&self, update: &[u8]) -> Result<(), String> {
        let update = Update::decode_v1(update).map_err(|e| e.to_string())?;
        let applied = catch_unwind(AssertUnwindSafe(|| {
            let mut txn = self
                .doc
                .try_transact_mut()
                .map_err(|e| format!("document busy: {e}"))?;
            txn.apply_update(update).map_err(|e| e.to_string())
        }));
        applied.unwrap_or_else(|_| Err("yrs panicked applying a stored update".into()))
    }

    pub fn state_vector(&self) -> Result<StateVector, String> {
        self.read(|txn| txn.state_vector())
    }

    /// What a peer with `sv` lacks.
    pub fn diff(&self, sv: &StateVector) -> Result<Vec<u8>, String> {
        self.read(|txn| txn.encode_state_as_update_v1(sv))
    }

    /// Whether `update` adds nothing to this document: every struct lies below its state
    /// vector and every deletion is already deleted. A y-websocket client's step 2 always
    /// carries its whole delete set, so without this every reconnect would store one.
    /// Answers `false` when unsure (bytes that do not pass the layout check, a panic): the
    /// write path then validates them and refuses what is bad.
    pub fn adds_nothing(&self, update: &[u8]) -> bool {
        if replicate_actors::crdt::check_layout("update", update).is_err() {
            return false;
        }
        let Ok(update) = Update::decode_v1(update) else {
            return false;
        };
        self.read(|txn| {
            let sv = txn.state_vector();
            let inserts = update.insertions(true);
            let new_structs = inserts
                .iter()
                .any(|(client, ranges)| ranges.iter().any(|r| r.end > sv.get(client)));
            if new_structs {
                return false;
            }
            let deletes = update.delete_set();
            if deletes.is_empty() {
                return true;
            }
            let known = txn.snapshot().delete_set;
            deletes
                .client_ids()
                .all(|client| match (deletes.get(&client), known.get(&client)) {
                    (Some(mine), Some(known)) => mine.subset_of(known),
                    (Some(mine), None) => mine.is_empty(),
                    (None, _) => true,
                })
        })
        .unwrap_or(false)
    }

    fn read<T>(&self, f: impl FnOnce(&yrs::Transaction) -> T) -> Result<T, String> {
        catch_unwind(AssertUnwindSafe(|| {
            let txn = self
                .doc
                .try_transact()
                .map_err(|e| format!("document busy: {e}"))?;
            Ok(f(&txn))
        }))
        .unwrap_or_else(|_| Err("yrs panicked reading the document".into()))
    }
}

#[cfg(test)]
mod tests {
    use yrs::{GetString, Text};

    use super::*;

    fn edit(doc: &Doc, f: impl FnOnce(&mut yrs::TransactionMut, &yrs::TextRef)) -> Vec<u8> {
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        f(&mut txn, &text);
        txn.encode_update_v1()
    }

    #[test]
    fn step_two_that_only_repeats_known_content_adds_nothing() {
        let client = Doc::with_client_id(1);
        let insert = edit(&client, |txn, t| t.insert(txn, 0, "hello"));
        let delete = edit(&client, |txn, t| t.remove_range(txn, 0, 2));
        let room = RoomDoc::from_update(&insert).expect("applies");
        // The client's step 2 against the room's state vector: the delete is new.
        let sv = room.state_vector().expect("sv");
        let step2 = client.transact().encode_state_as_update_v1(&sv);
        assert!(!room.adds_nothing(&step2));
        room.apply(&delete).expect("applies");
        let sv = room.state_vector().expect("sv");
        let step2 = client.transact().encode_state_as_update_v1(&sv);
        assert_ne!(step2, vec![0, 0], "Yjs step 2 carries the whole delete set");
        assert!(room.adds_nothing(&step2));
        assert!(room.adds_nothing(&[0, 0]));
        // A new insert is something.
        let more = edit(&client, |txn, t| t.insert(txn, 0, "x"));
        assert!(!room.adds_nothing(&more));
        // Bytes that are not an update are "unsure": the write path refuses them.
        assert!(!room.adds_nothing(&[9, 9, 9]));
        // The room's diff rebuilds the text.
        let peer = Doc::with_client_id(2);
        let diff = room.diff(&StateVector::default()).expect("diff");
        peer.transact_mut()
            .apply_update(Update::decode_v1(&diff).expect("decodes"))
            .expect("applies");
        let text = peer.get_or_insert_text("t");
        assert_eq!(text.get_string(&peer.transact()), "llo");
    }
}
