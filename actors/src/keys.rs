//! Key encoding for the single sled tree that holds everything.
//!
//! Every key starts with a one-byte [`Tag`] naming the record kind, then the collection name
//! (length-prefixed, so no name is a prefix of another), then the fields of that kind. Numbers
//! are big-endian `u64`, so byte order is numeric order and a range scan over a prefix walks
//! seqs in ascending order.
//!
//! All records live in one tree so that one `apply_batch` can change several kinds of record
//! atomically (sled batches are atomic for readers and for crash recovery; multi-tree
//! transactions are slower).

/// The kind of record a key names. The byte values are part of the on-disk format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tag {
    /// `Meta` + name → store-wide metadata (the format version).
    Meta = 0x00,
    /// `Collection` + c → persisted high-water seq of the collection.
    Collection = b'C',
    /// `Delta` + c + seq → one stored update.
    Delta = b'D',
    /// `DocDelta` + c + doc + seq → byte length of that delta (per-document index).
    DocDelta = b'I',
    /// `Snapshot` + c + doc → the document's compacted snapshot.
    Snapshot = b'S',
    /// `DocStats` + c + doc → retained bytes / count and compaction watermark.
    DocStats = b'T',
    /// `Watermark` + c + watermark seq + doc → () (documents by highest deleted seq). Format 1
    /// only: still read, for the deltas deleted before format 2; no longer written.
    Watermark = b'W',
    /// `DeletedSeqs` + c + bucket start seq + doc → the seqs of that document compaction
    /// deleted within that bucket, as runs (see [`crate::paging`]): where stream pages need
    /// snapshots.
    DeletedSeqs = b'B',
    /// `Peer` + c + peer → acknowledgement state.
    Peer = b'P',
    /// `OpId` + c + op id → seq (format 1, before op ids were scoped by document; no longer
    /// written or read).
    OpId = b'O',
    /// `OpRecord` + c + doc + op id → seq, hash of the bytes, created_at of that operation.
    OpRecord = b'R',
    /// `OpExpiry` + c + created_at + doc + op id → () (op records by age, for expiry).
    OpExpiry = b'E',
    /// `Quarantine` + c + doc + seq → why that stored update is left out of merges.
    Quarantine = b'Q',
}

/// Appends a length-prefixed string (u32 big-endian length, then the bytes).
fn push_str(key: &mut Vec<u8>, s: &str) {
    key.extend_from_slice(&(s.len() as u32).to_be_bytes());
    key.extend_from_slice(s.as_bytes());
}

/// The prefix shared by every key of `tag` within `collection`.
pub fn prefix(tag: Tag, collection: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(5 + collection.len() + 24);
    key.push(tag as u8);
    push_str(&mut key, collection);
    key
}

/// The key of the format-version record.
pub fn format_version() -> Vec<u8> {
    vec![Tag::Meta as u8, b'v']
}

pub fn collection(c: &str) -> Vec<u8> {
    prefix(Tag::Collection, c)
}

pub fn delta(c: &str, seq: u64) -> Vec<u8> {
    let mut key = prefix(Tag::Delta, c);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Prefix of the per-document delta index of one document.
pub fn doc_delta_prefix(c: &str, doc: &str) -> Vec<u8> {
    let mut key = prefix(Tag::DocDelta, c);
    push_str(&mut key, doc);
    key
}

pub fn doc_delta(c: &str, doc: &str, seq: u64) -> Vec<u8> {
    let mut key = doc_delta_prefix(c, doc);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

pub fn snapshot(c: &str, doc: &str) -> Vec<u8> {
    let mut key = prefix(Tag::Snapshot, c);
    push_str(&mut key, doc);
    key
}

pub fn doc_stats(c: &str, doc: &str) -> Vec<u8> {
    let mut key = prefix(Tag::DocStats, c);
    push_str(&mut key, doc);
    key
}

pub fn watermark(c: &str, seq: u64, doc: &str) -> Vec<u8> {
    let mut key = prefix(Tag::Watermark, c);
    key.extend_from_slice(&seq.to_be_bytes());
    push_str(&mut key, doc);
    key
}

/// The key of one entry of the deleted-seq index: `start` is the first seq of its bucket.
pub fn deleted_seqs(c: &str, start: u64, doc: &str) -> Vec<u8> {
    let mut key = prefix(Tag::DeletedSeqs, c);
    key.extend_from_slice(&start.to_be_bytes());
    push_str(&mut key, doc);
    key
}

/// Prefix of the store-wide records of the bucket sizes deleted-seq entries were written with.
pub fn deleted_span_prefix() -> Vec<u8> {
    vec![Tag::Meta as u8, b'b']
}

/// The record that some deleted-seq entry spans up to `seqs` seqs (its value is empty; the
/// largest such key is what readers need).
pub fn deleted_span(seqs: u64) -> Vec<u8> {
    let mut key = deleted_span_prefix();
    key.extend_from_slice(&seqs.to_be_bytes());
    key
}

pub fn peer(c: &str, peer: &str) -> Vec<u8> {
    let mut key = prefix(Tag::Peer, c);
    push_str(&mut key, peer);
    key
}

pub fn op_id(c: &str, op: &str) -> Vec<u8> {
    let mut key = prefix(Tag::OpId, c);
    push_str(&mut key, op);
    key
}

/// Prefix of one document's op records.
pub fn op_record(c: &str, doc: &str, op: &str) -> Vec<u8> {
    let mut key = prefix(Tag::OpRecord, c);
    push_str(&mut key, doc);
    push_str(&mut key, op);
    key
}

pub fn op_expiry(c: &str, created_at: u64, doc: &str, op: &str) -> Vec<u8> {
    let mut key = prefix(Tag::OpExpiry, c);
    key.extend_from_slice(&created_at.to_be_bytes());
    push_str(&mut key, doc);
    push_str(&mut key, op);
    key
}

/// Prefix of one document's quarantine records.
pub fn quarantine_prefix(c: &str, doc: &str) -> Vec<u8> {
    let mut key = prefix(Tag::Quarantine, c);
    push_str(&mut key, doc);
    key
}

pub fn quarantine(c: &str, doc: &str, seq: u64) -> Vec<u8> {
    let mut key = quarantine_prefix(c, doc);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// Reads a big-endian u64 at `at`, if the key is long enough.
pub fn read_u64(key: &[u8], at: usize) -> Option<u64> {
    let bytes: [u8; 8] = key.get(at..at + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

/// Reads a length-prefixed string at `at`; returns it and the offset after it.
pub fn read_str(key: &[u8], at: usize) -> Option<(String, usize)> {
    let len_bytes: [u8; 4] = key.get(at..at + 4)?.try_into().ok()?;
    let len = u32::from_be_bytes(len_bytes) as usize;
    let bytes = key.get(at + 4..at + 4 + len)?;
    Some((String::from_utf8(bytes.to_vec()).ok()?, at + 4 + len))
}

/// The seq at the end of a `Delta` or `DocDelta` key.
pub fn trailing_seq(key: &[u8]) -> Option<u64> {
    key.len().checked_sub(8).and_then(|at| read_u64(key, at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn collection_prefixes_do_not_nest() {
        // "ab" must not be a prefix of "abc"'s keys, or a scan of one would read the other.
        let ab = prefix(Tag::Delta, "ab");
        assert!(!delta("abc", 1).starts_with(&ab));
        assert!(delta("ab", 1).starts_with(&ab));
    }

    #[test]
    fn watermark_key_round_trips() {
        let key = watermark("c", 42, "doc-1");
        let base = prefix(Tag::Watermark, "c").len();
        assert_eq!(read_u64(&key, base), Some(42));
        assert_eq!(
            read_str(&key, base + 8),
            Some(("doc-1".to_string(), key.len()))
        );
    }

    proptest! {
        #[test]
        fn delta_keys_sort_by_seq(a in any::<u64>(), b in any::<u64>(), c in ".{0,20}") {
            prop_assert_eq!(a.cmp(&b), delta(&c, a).cmp(&delta(&c, b)));
            prop_assert_eq!(trailing_seq(&delta(&c, a)), Some(a));
        }

        #[test]
        fn doc_delta_keys_sort_by_seq(a in any::<u64>(), b in any::<u64>(), d in ".{0,20}") {
            prop_assert_eq!(a.cmp(&b), doc_delta("c", &d, a).cmp(&doc_delta("c", &d, b)));
            prop_assert!(doc_delta("c", &d, a).starts_with(&doc_delta_prefix("c", &d)));
        }

        #[test]
        fn watermark_keys_sort_by_seq(a in any::<u64>(), b in any::<u64>(), d in ".{0,8}", e in ".{0,8}") {
            if a != b {
                prop_assert_eq!(a.cmp(&b), watermark("c", a, &d).cmp(&watermark("c", b, &e)));
            }
        }

        #[test]
        fn deleted_seqs_keys_sort_by_bucket(a in any::<u64>(), b in any::<u64>(), d in ".{0,8}", e in ".{0,8}") {
            if a != b {
                prop_assert_eq!(a.cmp(&b), deleted_seqs("c", a, &d).cmp(&deleted_seqs("c", b, &e)));
            }
            let key = deleted_seqs("c", a, &d);
            let base = prefix(Tag::DeletedSeqs, "c").len();
            prop_assert_eq!(read_u64(&key, base), Some(a));
            prop_assert_eq!(read_str(&key, base + 8), Some((d, key.len())));
            prop_assert_eq!(a.cmp(&b), deleted_span(a).cmp(&deleted_span(b)));
            prop_assert!(!deleted_span(a).starts_with(&format_version()));
        }

        #[test]
        fn op_keys_do_not_collide(d1 in ".{0,8}", o1 in ".{0,8}", d2 in ".{0,8}", o2 in ".{0,8}") {
            // Length prefixes keep ("ab","c") apart from ("a","bc").
            prop_assert_eq!(d1 == d2 && o1 == o2, op_record("c", &d1, &o1) == op_record("c", &d2, &o2));
        }

        #[test]
        fn op_expiry_keys_sort_by_age(a in any::<u64>(), b in any::<u64>(), d in ".{0,8}") {
            if a != b {
                prop_assert_eq!(a.cmp(&b), op_expiry("c", a, &d, "x").cmp(&op_expiry("c", b, &d, "y")));
            }
        }

        #[test]
        fn strings_round_trip(s in ".{0,40}") {
            let key = peer("coll", &s);
            let base = prefix(Tag::Peer, "coll").len();
            prop_assert_eq!(read_str(&key, base), Some((s, key.len())));
        }
    }
}
