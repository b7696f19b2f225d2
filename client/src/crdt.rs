//! Every use of yrs's encoding API lives here (decode, merge, state vector, diff), so a yrs
//! upgrade touches this file and `doc.rs` (which hands the app its `yrs::Doc`) only.

use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::error::{Error, Result};

/// The client id used for scratch documents that only merge and never edit.
const SCRATCH_CLIENT: u64 = 1;

/// Decodes a Yjs v1 update, after the same layout check the server runs on what clients send
/// (`replicate-precheck`): yrs decodes nested values recursively and trusts declared counts,
/// so bytes from a hostile or broken server could otherwise overflow this process's stack
/// (which aborts it: nothing catches that) or reserve gigabytes, and yrs asserts client ids
/// fit 53 bits (a panic in debug builds). A panic left in yrs's decoder is caught too.
///
/// # Errors
/// [`Error::InvalidYjs`] if the bytes are not one.
pub fn decode(bytes: &[u8]) -> Result<Update> {
    replicate_precheck::check_update(bytes).map_err(|r| Error::InvalidYjs(r.to_string()))?;
    std::panic::catch_unwind(|| Update::decode_v1(bytes))
        .map_err(|_| Error::InvalidYjs("the decoder panicked".into()))?
        .map_err(|e| Error::InvalidYjs(e.to_string()))
}

/// Applies `bytes` (a v1 update) to `txn`.
///
/// # Errors
/// [`Error::InvalidYjs`] if they do not decode or do not integrate.
pub fn apply(txn: &mut yrs::TransactionMut<'_>, bytes: &[u8]) -> Result<()> {
    let update = decode(bytes)?;
    txn.apply_update(update)
        .map_err(|e| Error::InvalidYjs(e.to_string()))
}

/// What merging a document's stored updates produced.
pub enum Merged {
    /// One update holding everything, deleted content garbage-collected.
    Complete(Vec<u8>),
    /// Some updates wait for others not held yet (a gap); merging now would drop them, so the
    /// caller keeps the parts as they are.
    Incomplete,
}

/// Merges updates by applying them to a fresh garbage-collected yrs document and encoding its
/// state: unlike a byte-level merge, content deleted by a later update really goes (only a
/// tombstone of its ids stays).
///
/// # Errors
/// [`Error::InvalidYjs`] if a part does not decode.
pub fn merge<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Result<Merged> {
    let doc = Doc::with_client_id(SCRATCH_CLIENT);
    {
        let mut txn = doc.transact_mut();
        for part in parts {
            apply(&mut txn, part)?;
        }
    }
    let txn = doc.transact();
    if txn.has_missing_updates() {
        return Ok(Merged::Incomplete);
    }
    Ok(Merged::Complete(
        txn.encode_state_as_update_v1(&StateVector::default()),
    ))
}

/// Merges updates byte-wise (no document is built): keeps structs still waiting for missing
/// dependencies, which [`merge`] cannot.
///
/// # Errors
/// [`Error::InvalidYjs`] if a part does not decode.
pub fn merge_bytes<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>> {
    yrs::merge_updates_v1(parts).map_err(|e| Error::InvalidYjs(e.to_string()))
}

/// The v1 state vector of a document built from `parts`.
///
/// # Errors
/// [`Error::InvalidYjs`] if a part does not decode.
pub fn state_vector<'a>(parts: impl IntoIterator<Item = &'a [u8]>) -> Result<Vec<u8>> {
    let doc = Doc::with_client_id(SCRATCH_CLIENT);
    {
        let mut txn = doc.transact_mut();
        for part in parts {
            apply(&mut txn, part)?;
        }
    }
    let sv = doc.transact().state_vector().encode_v1();
    Ok(sv)
}

/// The state vector of a live document.
pub fn doc_state_vector(doc: &Doc) -> Vec<u8> {
    doc.transact().state_vector().encode_v1()
}

/// A live document's whole state as one update.
pub fn doc_state(doc: &Doc) -> Vec<u8> {
    doc.transact()
        .encode_state_as_update_v1(&StateVector::default())
}

/// True if `bytes` is an update that carries nothing (no structs, no deletes), such as the
/// `AAA=` a transaction that changed nothing produces.
pub fn is_empty_update(bytes: &[u8]) -> bool {
    bytes == [0, 0]
}

#[cfg(test)]
mod tests {
    use super::*;
    use yrs::{GetString, Text};

    fn edit(doc: &Doc, f: impl FnOnce(&mut yrs::TransactionMut<'_>, &yrs::TextRef)) -> Vec<u8> {
        let text = doc.get_or_insert_text("t");
        let mut txn = doc.transact_mut();
        f(&mut txn, &text);
        txn.encode_update_v1()
    }

    fn text_of(update: &[u8]) -> String {
        let doc = Doc::new();
        let text = doc.get_or_insert_text("t");
        apply(&mut doc.transact_mut(), update).unwrap_or_else(|e| panic!("{e}"));
        let txn = doc.transact();
        text.get_string(&txn)
    }

    #[test]
    fn merge_drops_deleted_content() {
        let doc = Doc::with_client_id(7);
        let secret = "a secret that was deleted".repeat(20);
        let a = edit(&doc, |txn, t| t.insert(txn, 0, &secret));
        let b = edit(&doc, |txn, t| t.remove_range(txn, 0, secret.len() as u32));
        let c = edit(&doc, |txn, t| t.insert(txn, 0, "kept"));
        let Ok(Merged::Complete(merged)) = merge([&a[..], &b[..], &c[..]]) else {
            panic!("merge failed");
        };
        assert_eq!(text_of(&merged), "kept");
        assert!(
            merged.len() < secret.len() / 4,
            "deleted text still in {} bytes",
            merged.len()
        );
    }

    #[test]
    fn merge_with_a_gap_is_incomplete() {
        let doc = Doc::with_client_id(7);
        let _a = edit(&doc, |txn, t| t.insert(txn, 0, "first"));
        let b = edit(&doc, |txn, t| t.insert(txn, 5, " second"));
        assert!(matches!(merge([&b[..]]), Ok(Merged::Incomplete)));
    }

    #[test]
    fn junk_is_invalid_yjs() {
        assert!(matches!(
            decode(&[0xff, 0xff, 0xff]),
            Err(Error::InvalidYjs(_))
        ));
    }
}
