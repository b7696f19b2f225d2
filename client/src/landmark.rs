//! Noticing a server whose data was reset even after it was refilled past this client's
//! cursor. `cursor_ahead` only catches a reset while the server's head is below the cursor;
//! once other clients have written past it, seqs up to the cursor name other changes than
//! the ones this client applied. So the client remembers the last delta it applied (its seq,
//! document and a digest of its bytes) and, on each (re)connection, reads that one seq back:
//! a different change there means the server is not the one the cursor came from.

use crate::wire::{Change, Operation};

/// The last delta a client applied: what seq `seq` must still be on the same server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Landmark {
    /// Its seq.
    pub seq: u64,
    /// FNV-1a of its bytes.
    pub digest: u64,
    /// Its document.
    pub document_id: String,
}

/// FNV-1a, 64 bits: enough to tell two updates apart (not a defence against forgery).
fn fnv1a(bytes: &[u8]) -> u64 {
    bytes.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

impl Landmark {
    /// The landmark of a delta (`None` for a snapshot, whose seq is not a single change).
    pub fn of(change: &Change) -> Option<Landmark> {
        (change.operation != Operation::Snapshot).then(|| Landmark {
            seq: change.seq,
            digest: fnv1a(&change.bytes),
            document_id: change.document_id.clone(),
        })
    }

    /// The stored form: `seq digest documentId`.
    pub fn encode(&self) -> String {
        format!("{} {:016x} {}", self.seq, self.digest, self.document_id)
    }

    /// Parses [`Landmark::encode`]'s form.
    pub fn decode(s: &str) -> Option<Landmark> {
        let mut parts = s.splitn(3, ' ');
        Some(Landmark {
            seq: parts.next()?.parse().ok()?,
            digest: u64::from_str_radix(parts.next()?, 16).ok()?,
            document_id: parts.next()?.to_string(),
        })
    }

    /// What the server answers at this seq now says about it: `Some(true)` the same change,
    /// `Some(false)` another one (the server was reset), `None` cannot tell (compacted into
    /// a snapshot).
    pub fn matches(&self, changes: &[Change]) -> Option<bool> {
        let delta = changes
            .iter()
            .find(|c| c.operation != Operation::Snapshot && c.seq == self.seq)?;
        Some(Landmark::of(delta).as_ref() == Some(self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn change(seq: u64, doc: &str, bytes: &[u8], operation: Operation) -> Change {
        Change {
            document_id: doc.into(),
            seq,
            bytes: bytes.to_vec(),
            operation,
        }
    }

    #[test]
    fn round_trip_and_matching() {
        let c = change(7, "a doc with spaces", &[1, 2, 3], Operation::Update);
        let l = Landmark::of(&c).unwrap_or_else(|| panic!("a delta has a landmark"));
        assert_eq!(Landmark::decode(&l.encode()), Some(l.clone()));
        assert_eq!(l.matches(std::slice::from_ref(&c)), Some(true));
        let other = change(7, "a doc with spaces", &[1, 2, 4], Operation::Update);
        assert_eq!(l.matches(&[other]), Some(false));
        let elsewhere = change(7, "b", &[1, 2, 3], Operation::Insert);
        assert_eq!(l.matches(&[elsewhere]), Some(false));
        let snapshot = change(9, "a doc with spaces", &[1, 2, 3], Operation::Snapshot);
        assert_eq!(l.matches(std::slice::from_ref(&snapshot)), None);
        assert!(Landmark::of(&snapshot).is_none());
        assert_eq!(Landmark::decode("garbage"), None);
    }
}
