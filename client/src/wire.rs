//! The JSON bodies of the wire contract the client sends and reads (see the server's README:
//! field names follow the Convex component; bytes are standard padded base64), and their
//! decoded forms. Nothing here does I/O.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Standard padded base64, as the server takes and sends bytes.
pub fn b64(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes a base64 field of an answer.
///
/// # Errors
/// [`Error::Protocol`] if the server sent something that is not base64.
pub fn unb64(field: &str, s: &str) -> Result<Vec<u8>> {
    STANDARD
        .decode(s)
        .map_err(|e| Error::Protocol(format!("{field} is not base64: {e}")))
}

/// `{"error":{"code","message"}}`.
#[derive(Debug, Clone, Deserialize, Serialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// Stable error code.
    pub code: String,
    /// What to fix.
    pub message: String,
}

/// The envelope of every error answer.
#[derive(Debug, Deserialize)]
pub struct ErrorEnvelope {
    /// The error.
    pub error: ErrorBody,
}

/// One write of a batch (and the body of a single write, without `op`).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct WriteBody<'a> {
    /// `insert`, `update` or `delete` (batch only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub op: Option<&'a str>,
    /// The document.
    pub document_id: &'a str,
    /// The update, base64.
    pub crdt_bytes: String,
    /// Idempotency key.
    pub op_id: &'a str,
}

/// `POST /v1/{c}/batch` body.
#[derive(Debug, Serialize)]
pub struct BatchBody<'a> {
    /// The writes, in queue order.
    pub writes: Vec<WriteBody<'a>>,
}

/// An accepted write.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
pub struct Accepted {
    /// The seq the server gave it (the first one, for a duplicate).
    pub seq: u64,
    /// True when the opId was seen before and nothing new was stored.
    #[serde(default)]
    pub duplicate: bool,
}

/// One result of a batch, in request order.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum BatchResult {
    /// Stored (or a duplicate of a stored write).
    Accepted(Accepted),
    /// Refused; nothing stored for this write.
    Refused {
        /// Why.
        error: ErrorBody,
    },
}

/// `POST /v1/{c}/batch` answer.
#[derive(Debug, Deserialize)]
pub struct BatchAnswer {
    /// One per write, in request order.
    pub results: Vec<BatchResult>,
}

/// A change of a stream page (or an SSE event's `data`) as sent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ChangeJson {
    document_id: String,
    seq: u64,
    crdt_bytes: String,
    operation_type: String,
}

/// `GET /v1/{c}/stream` answer as sent.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PageJson {
    changes: Vec<ChangeJson>,
    cursor: u64,
    has_more: bool,
    #[serde(default)]
    compact: Option<String>,
}

/// What a change is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Operation {
    /// A first write of a document.
    Insert,
    /// A later write.
    Update,
    /// A delete (still a Yjs update).
    Delete,
    /// A document's compacted state (replaces deltas compaction removed).
    Snapshot,
}

/// A change of a stream page, decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The document.
    pub document_id: String,
    /// Its seq (a snapshot's: the snapshot's seq).
    pub seq: u64,
    /// Yjs v1 bytes.
    pub bytes: Vec<u8>,
    /// What it is.
    pub operation: Operation,
}

/// A stream page, decoded.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Page {
    /// Snapshots first, then deltas in seq order.
    pub changes: Vec<Change>,
    /// The cursor to record once every change is applied.
    pub cursor: u64,
    /// Another page is ready.
    pub has_more: bool,
    /// A document the server would like compacted.
    pub compact: Option<String>,
}

/// The same change object is a stream page's element and an SSE event's `data`.
impl TryFrom<ChangeJson> for Change {
    type Error = Error;

    fn try_from(c: ChangeJson) -> Result<Change> {
        let operation = match c.operation_type.as_str() {
            "insert" => Operation::Insert,
            "update" => Operation::Update,
            "delete" => Operation::Delete,
            "snapshot" => Operation::Snapshot,
            other => return Err(Error::Protocol(format!("unknown operationType {other:?}"))),
        };
        Ok(Change {
            bytes: unb64("crdtBytes", &c.crdt_bytes)?,
            document_id: c.document_id,
            seq: c.seq,
            operation,
        })
    }
}

impl TryFrom<PageJson> for Page {
    type Error = Error;

    fn try_from(p: PageJson) -> Result<Page> {
        let changes = p
            .changes
            .into_iter()
            .map(Change::try_from)
            .collect::<Result<Vec<_>>>()?;
        Ok(Page {
            changes,
            cursor: p.cursor,
            has_more: p.has_more,
            compact: p.compact,
        })
    }
}

/// `POST /v1/{c}/ack` body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AckBody<'a> {
    /// This client's persisted peer id.
    pub peer_id: &'a str,
    /// The highest seq applied and stored.
    pub synced_seq: u64,
}

/// `POST /v1/{c}/ack` answer.
#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AckAnswer {
    /// What the server now holds for this peer.
    pub last_synced_seq: u64,
}

/// `POST /v1/{c}/compact` body (the write-grant form: no snapshot, no peer timeout).
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CompactBody<'a> {
    /// The document to compact.
    pub document_id: &'a str,
}

/// `POST /v1/{c}/recovery` body.
#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryBody<'a> {
    /// Base64 state vector of what the client holds.
    pub state_vector: String,
    /// The document.
    pub document_id: &'a str,
}

/// `POST /v1/{c}/recovery` answer.
#[derive(Debug, Deserialize)]
pub struct RecoveryAnswer {
    /// Base64 update of what the client misses.
    pub diff: String,
    /// The collection's head when the diff was made.
    pub cursor: u64,
}

/// A single write's answer (`insert`/`update`/`delete`).
#[derive(Debug, Deserialize)]
pub struct WriteAnswer {
    /// The seq.
    pub seq: u64,
    /// A duplicate opId.
    #[serde(default)]
    pub duplicate: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_results_decode_both_shapes() {
        let a: BatchAnswer = serde_json::from_str(
            r#"{"results":[{"seq":5,"duplicate":false},{"error":{"code":"invalid_yjs","message":"no"}},{"seq":6,"duplicate":true}]}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            a.results[0],
            BatchResult::Accepted(Accepted {
                seq: 5,
                duplicate: false
            })
        );
        assert!(
            matches!(&a.results[1], BatchResult::Refused { error } if error.code == "invalid_yjs")
        );
        assert_eq!(
            a.results[2],
            BatchResult::Accepted(Accepted {
                seq: 6,
                duplicate: true
            })
        );
    }

    #[test]
    fn page_decodes_and_rejects_unknown_operations() {
        let p: PageJson = serde_json::from_str(
            r#"{"changes":[{"documentId":"d","seq":3,"crdtBytes":"AAA=","operationType":"snapshot"}],"cursor":9,"hasMore":true,"compact":null}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let p = Page::try_from(p).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(p.changes[0].operation, Operation::Snapshot);
        assert_eq!(p.changes[0].bytes, vec![0, 0]);
        assert_eq!((p.cursor, p.has_more), (9, true));
        let bad: PageJson = serde_json::from_str(
            r#"{"changes":[{"documentId":"d","seq":3,"crdtBytes":"AAA=","operationType":"poke"}],"cursor":9,"hasMore":false}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(Page::try_from(bad).is_err());
    }

    #[test]
    fn write_body_field_names() {
        let w = WriteBody {
            op: Some("update"),
            document_id: "d",
            crdt_bytes: b64(&[0, 0]),
            op_id: "o",
        };
        assert_eq!(
            serde_json::to_string(&w).unwrap_or_default(),
            r#"{"op":"update","documentId":"d","crdtBytes":"AAA=","opId":"o"}"#
        );
    }
}
