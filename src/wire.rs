//! The JSON of the wire contract (v1): request bodies, answers, and the parsers that turn wire
//! values (base64 strings, JSON numbers, query strings) into typed values with errors a client
//! can act on. Field names follow the Convex component (camelCase); bytes are standard padded
//! base64.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use replicate_actors::{Change, StreamPage};
use serde::{Deserialize, Serialize};
use serde_json::Number;
use utoipa::ToSchema;

use crate::error::ApiError;

/// Body of `insert`, `update` and `delete`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WriteBody {
    #[schema(value_type = Name)]
    pub document_id: String,
    /// One Yjs v1 update; at most `--max-update-bytes` (default 8 MiB) once decoded.
    #[schema(value_type = Base64)]
    pub crdt_bytes: String,
    /// An idempotency key: the same `opId` again answers the first write's `seq` with
    /// `duplicate: true` and stores nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Name>)]
    pub op_id: Option<String>,
}

/// Answer of `insert`, `update` and `delete`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WriteAnswer {
    pub success: bool,
    pub seq: u64,
    /// True when an `opId` was seen before: `seq` is the first write's and nothing was stored.
    pub duplicate: bool,
}

/// Body of `batch`: writes of one collection, stored in one commit.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({"writes": [
    {"op": "insert", "documentId": "doc-1", "crdtBytes": "AQEBAAQBB2NvbnRlbnQCaGkA", "opId": "client-1:op-1"},
    {"op": "update", "documentId": "doc-2", "crdtBytes": "AQEBAAQBB2NvbnRlbnQCaGkA"}
]}))]
pub struct BatchBody {
    /// 1 to 1000 writes; the accepted ones get consecutive seqs in this order.
    #[schema(min_items = 1, max_items = 1000)]
    pub writes: Vec<BatchWrite>,
}

/// One write of a batch: what `insert`, `update` or `delete` takes, and which of them.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct BatchWrite {
    pub op: WriteOp,
    #[serde(flatten)]
    pub write: WriteBody,
}

/// The operation of a batch write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum WriteOp {
    Insert,
    Update,
    Delete,
}

/// Answer of `batch`: one result per write, in the request's order.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[schema(example = json!({"results": [
    {"seq": 41, "duplicate": false},
    {"error": {"code": "invalid_yjs", "message": "crdtBytes is not a Yjs v1 update: …"}}
]}))]
pub struct BatchAnswer {
    pub results: Vec<BatchResult>,
}

/// What became of one write of a batch.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(untagged)]
pub enum BatchResult {
    /// Stored with `seq` (or a repeated `opId`: `duplicate: true`, the first write's seq).
    Stored { seq: u64, duplicate: bool },
    /// Refused, with the code and message the single-write route would answer; nothing of
    /// it was stored.
    Refused { error: BatchError },
}

/// Why one write of a batch was refused.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
pub struct BatchError {
    /// A code of the error table (`invalid_yjs`, `yjs_limit`, `too_large`, `conflict`, …).
    pub code: String,
    pub message: String,
}

/// Body of `ack`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AckBody {
    /// With authentication on, the token's `sub` or `sub:` followed by anything.
    #[schema(value_type = Name)]
    pub peer_id: String,
    /// The highest seq this peer has applied; not above the collection's head (422). Written
    /// as an integer: `3.0` or `3e0` is 400 `invalid_argument`.
    #[schema(value_type = u64, minimum = 0)]
    pub synced_seq: Number,
}

/// Answer of `ack`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AckAnswer {
    pub last_synced_seq: u64,
}

/// Body of `compact`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompactBody {
    #[schema(value_type = Name)]
    pub document_id: String,
    /// A client's snapshot of the document (a Yjs v1 update); needs `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Base64>)]
    pub snapshot_bytes: Option<String>,
    /// The state vector `snapshotBytes` corresponds to (Yjs v1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Base64>)]
    pub state_vector: Option<String>,
    /// Milliseconds: peers not seen for this long no longer hold back compaction; needs
    /// `admin`. Written as an integer: `1.0` or `1e3` is 400 `invalid_argument`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<u64>, minimum = 0)]
    pub peer_timeout: Option<Number>,
}

/// Answer of `compact`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CompactAnswer {
    pub success: bool,
    pub removed: u64,
    pub retained: u64,
    pub snapshot_seq: u64,
}

/// Body of `recovery`.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryBody {
    /// The peer's Yjs v1 state vector.
    #[schema(value_type = Base64)]
    pub state_vector: String,
    /// One document; without it, the whole collection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Name>)]
    pub document_id: Option<String>,
}

/// Answer of `recovery`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct RecoveryAnswer {
    /// A Yjs v1 update: what the peer misses.
    #[schema(value_type = Base64)]
    pub diff: String,
    pub cursor: u64,
}

/// Answer of `state`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StateAnswer {
    /// The whole collection merged into one Yjs v1 update.
    #[schema(value_type = Base64)]
    pub crdt_bytes: String,
    pub cursor: u64,
}

/// One change, in `stream` answers and as the `data:` of an SSE event.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct WireChange {
    #[schema(value_type = Name)]
    pub document_id: String,
    pub seq: u64,
    /// A Yjs v1 update.
    #[schema(value_type = Base64)]
    pub crdt_bytes: String,
    /// `insert`, `update`, `delete` or `snapshot`.
    #[schema(value_type = OperationType)]
    pub operation_type: String,
}

impl From<&Change> for WireChange {
    fn from(c: &Change) -> Self {
        WireChange {
            document_id: c.document_id.clone(),
            seq: c.seq,
            crdt_bytes: encode(&c.bytes),
            operation_type: c.operation.as_str().to_string(),
        }
    }
}

impl WireChange {
    /// The change a client applies: bytes decoded, operation parsed (the other half of
    /// `From<&Change>`, for clients of this contract such as the load tool).
    ///
    /// # Errors
    /// 400 `invalid_base64` for bytes that are not base64, `invalid_argument` for an unknown
    /// `operationType`.
    pub fn into_change(self) -> Result<Change, ApiError> {
        let operation = match self.operation_type.as_str() {
            "insert" => replicate_actors::OperationType::Insert,
            "update" => replicate_actors::OperationType::Update,
            "delete" => replicate_actors::OperationType::Delete,
            "snapshot" => replicate_actors::OperationType::Snapshot,
            other => return Err(ApiError::invalid_argument("operationType", other)),
        };
        Ok(Change {
            bytes: decode("crdtBytes", &self.crdt_bytes)?,
            document_id: self.document_id,
            seq: self.seq,
            operation,
        })
    }
}

/// Answer of `stream`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct StreamAnswer {
    /// Snapshots first (`operationType: "snapshot"`), then deltas in seq order.
    pub changes: Vec<WireChange>,
    /// Once every change is applied, the peer holds every update with seq ≤ `cursor`.
    pub cursor: u64,
    /// Ask again right away.
    pub has_more: bool,
    /// A document whose retained delta bytes exceed `sizeThreshold`, or `null`.
    #[schema(value_type = Option<Name>)]
    pub compact: Option<String>,
}

impl From<&StreamPage> for StreamAnswer {
    fn from(p: &StreamPage) -> Self {
        StreamAnswer {
            changes: p.changes.iter().map(WireChange::from).collect(),
            cursor: p.cursor,
            has_more: p.has_more,
            compact: p.compact.clone(),
        }
    }
}

/// A name: a collection, `documentId`, `peerId` or `opId` (the names rule in README.md): 1 to
/// 256 bytes of UTF-8, no control characters and no invisible formatting characters. The
/// pattern excludes the characters; the byte length is checked by the server (400
/// `invalid_name`), `maxLength` counts characters. Only a schema: names travel as strings.
#[derive(ToSchema)]
#[schema(
    value_type = String,
    min_length = 1,
    max_length = 256,
    pattern = r"^[^\u0000-\u001F\u007F-\u009F\u200B-\u200F\u2028-\u202E\u2066-\u2069\uFEFF]+$",
    example = "doc-1"
)]
pub struct Name(pub String);

/// Bytes as standard padded base64 (RFC 4648 §4) of standard Yjs v1 encoding, canonical: the
/// unused bits before `=` padding are zero (`AAA=`, not `AAB=`). Only a schema: bytes travel
/// as strings, decoded by [`decode`].
#[derive(ToSchema)]
#[schema(
    value_type = String,
    content_encoding = "base64",
    pattern = r"^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/][AQgw]==|[A-Za-z0-9+/]{2}[AEIMQUYcgkosw048]=)?$",
    example = "AQEBAAQBB2NvbnRlbnQCaGkA"
)]
pub struct Base64(pub String);

/// What a change is: written by `insert`, `update` or `delete`, or a `snapshot` of a document
/// whose deltas compaction deleted.
#[derive(ToSchema)]
#[schema(rename_all = "lowercase")]
pub enum OperationType {
    Insert,
    Update,
    Delete,
    Snapshot,
}

/// The query of `GET /v1/{c}/stream`. Only a schema: the handler parses the pairs with
/// [`crate::routes::stream::parse`] (an empty value means the default; unknown parameters are
/// ignored; a repeated one is 400 `invalid_query`).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct StreamQuery {
    /// Changes after this seq (default 0); above the collection's head is 422
    /// `cursor_ahead`.
    #[param(minimum = 0)]
    pub cursor: Option<u64>,
    /// At most this many deltas (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Retained delta bytes of a document above which `compact` names it (default
    /// 5,000,000).
    #[param(rename = "sizeThreshold", minimum = 0)]
    pub size_threshold: Option<u64>,
    /// With nothing new, long-poll this many milliseconds for a commit (capped at 60 s, and
    /// at the token's expiry).
    #[param(rename = "waitMs", minimum = 0)]
    pub wait_ms: Option<u64>,
}

/// The query of `GET /v1/{c}/events`. Only a schema (see [`crate::routes::events::parse`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct EventsQuery {
    /// Events after this seq (default 0); `Last-Event-ID` takes precedence.
    #[param(minimum = 0)]
    pub cursor: Option<u64>,
}

/// The collection in a `/v1/{c}/…` path, percent-encoded (`a%2Fb` is the collection `a/b`;
/// encoding that does not decode to UTF-8 is 400 `invalid_name`). Only a schema (see
/// [`crate::routes::Collection`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct CollectionPath {
    /// The collection (the names rule).
    #[param(value_type = Name)]
    pub c: String,
}

/// The path of `GET /v1/{c}/ws/{documentId}`. Only a schema.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
#[allow(dead_code)]
pub struct DocumentPath {
    /// The collection (the names rule).
    #[param(value_type = Name)]
    pub c: String,
    /// The document (the names rule), percent-encoded like the collection.
    #[param(rename = "documentId", value_type = Name)]
    pub document_id: String,
}

/// Standard padded base64.
pub fn encode(bytes: &[u8]) -> String {
    STANDARD.encode(bytes)
}

/// Decodes standard padded base64 from field `field`.
///
/// # Errors
/// 400 `invalid_base64` naming the field and what is wrong.
pub fn decode(field: &str, value: &str) -> Result<Vec<u8>, ApiError> {
    STANDARD.decode(value).map_err(|e| {
        ApiError::bad_request(
            "invalid_base64",
            format!("{field} is not standard padded base64: {e}"),
        )
    })
}

/// A JSON number that must be a non-negative integer fitting in u64, written as one: digits
/// only, no sign, fraction or exponent. `1.0`, `1e3` and `-0` have integer values but are
/// refused rather than guessed at (JavaScript's `JSON.stringify` never writes them for an
/// integer), each with a message that says what to send instead.
///
/// # Errors
/// 400 `invalid_argument` for negative, fractional, too large, or integer values written as
/// floats.
pub fn json_u64(field: &str, n: &Number) -> Result<u64, ApiError> {
    if let Some(v) = n.as_u64() {
        return Ok(v);
    }
    // Not a u64: a negative integer, or a number serde_json read as a float (it had a
    // fraction, an exponent, was `-0`, or was too large for an integer).
    let reason = match (n.as_i64(), n.as_f64()) {
        (Some(_), _) => format!("must not be negative, got {n}"),
        (None, Some(v)) if v.fract() != 0.0 => {
            format!("must be a whole number, got {n}")
        }
        (None, Some(v)) if v < 0.0 => format!("must not be negative, got {n}"),
        // 2^64 and above: u64::MAX itself parses as an integer, so any float this large is over.
        (None, Some(v)) if v >= u64::MAX as f64 => {
            format!("must be at most {}, got {n}", u64::MAX)
        }
        _ => format!(
            "must be a non-negative integer written without a sign, fraction or exponent \
             (like 1, not 1.0 or -0), got {n}"
        ),
    };
    Err(ApiError::invalid_argument(field, reason))
}

/// A query-string number: decimal digits only, fitting in u64.
///
/// # Errors
/// 400 `invalid_argument` for empty, negative, non-numeric or too large values.
pub fn query_u64(field: &str, value: &str) -> Result<u64, ApiError> {
    let shown: String = value.chars().take(40).collect();
    if value.is_empty() {
        return Err(ApiError::invalid_argument(
            field,
            "must not be empty; expected a non-negative integer",
        ));
    }
    if value.starts_with('-') {
        return Err(ApiError::invalid_argument(
            field,
            format!("must not be negative, got {shown:?}"),
        ));
    }
    if !value.bytes().all(|b| b.is_ascii_digit()) {
        return Err(ApiError::invalid_argument(
            field,
            format!("must be a non-negative integer, got {shown:?}"),
        ));
    }
    value.parse::<u64>().map_err(|_| {
        ApiError::invalid_argument(
            field,
            format!("must be at most {}, got {shown:?}", u64::MAX),
        )
    })
}

/// Percent-decodes a URL path segment into UTF-8. Unlike actix's lossy decoding, bytes that
/// are not UTF-8 are refused rather than replaced, so a name is never silently changed. A `%`
/// not followed by two hex digits is kept as it is.
///
/// # Errors
/// 400 `invalid_name` when the decoded bytes are not UTF-8.
pub fn path_segment(field: &str, raw: &str) -> Result<String, ApiError> {
    let bytes = raw.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (
            bytes[i],
            bytes.get(i + 1).copied().and_then(hex),
            bytes.get(i + 2).copied().and_then(hex),
        ) {
            (b'%', Some(hi), Some(lo)) => {
                out.push((hi * 16 + lo) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).map_err(|_| {
        ApiError::bad_request(
            "invalid_name",
            format!("invalid {field}: is not UTF-8 once percent-decoded"),
        )
    })
}

/// Looks up `name` in parsed query pairs; a repeated parameter is an error rather than a guess.
///
/// # Errors
/// 400 `invalid_query` when `name` appears more than once.
pub fn query_param<'a>(
    pairs: &'a [(String, String)],
    name: &str,
) -> Result<Option<&'a str>, ApiError> {
    let mut found = pairs
        .iter()
        .filter(|(k, _)| k == name)
        .map(|(_, v)| v.as_str());
    let first = found.next();
    if found.next().is_some() {
        return Err(ApiError::bad_request(
            "invalid_query",
            format!("query parameter {name} is given more than once"),
        ));
    }
    Ok(first)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_u64_table() {
        let cases: &[(&str, Option<u64>)] = &[
            ("0", Some(0)),
            ("42", Some(42)),
            ("18446744073709551615", Some(u64::MAX)),
            ("18446744073709551616", None),
            ("99999999999999999999999999", None),
            ("-1", None),
            ("+1", None),
            ("1.5", None),
            ("abc", None),
            ("", None),
            (" 1", None),
        ];
        for (v, expected) in cases {
            assert_eq!(query_u64("cursor", v).ok(), *expected, "{v:?}");
        }
    }

    #[test]
    fn json_u64_table() {
        // (JSON text, value, a phrase the error message must hold)
        let cases: &[(&str, Option<u64>, &str)] = &[
            ("0", Some(0), ""),
            ("7", Some(7), ""),
            ("18446744073709551615", Some(u64::MAX), ""),
            ("-1", None, "must not be negative"),
            ("-9223372036854775808", None, "must not be negative"),
            ("-1e30", None, "must not be negative"),
            ("-0.5", None, "must be a whole number"),
            ("1.5", None, "must be a whole number"),
            ("1e-3", None, "must be a whole number"),
            ("1e30", None, "must be at most 18446744073709551615"),
            (
                "18446744073709551616",
                None,
                "must be at most 18446744073709551615",
            ),
            (
                "18446744073709551615.0",
                None,
                "must be at most 18446744073709551615",
            ),
            (
                "-0",
                None,
                "must be a non-negative integer written without a sign",
            ),
            (
                "-0.0",
                None,
                "must be a non-negative integer written without a sign",
            ),
            (
                "1.0",
                None,
                "must be a non-negative integer written without a sign",
            ),
            (
                "0.0",
                None,
                "must be a non-negative integer written without a sign",
            ),
            (
                "1e3",
                None,
                "must be a non-negative integer written without a sign",
            ),
            (
                "1E2",
                None,
                "must be a non-negative integer written without a sign",
            ),
        ];
        for (v, expected, phrase) in cases {
            let n: Number = serde_json::from_str(v).expect("test number parses");
            match json_u64("syncedSeq", &n) {
                Ok(got) => assert_eq!(Some(got), *expected, "{v}"),
                Err(e) => {
                    assert_eq!(*expected, None, "{v}: {e}");
                    assert_eq!(e.status.as_u16(), 400, "{v}");
                    assert_eq!(e.code, "invalid_argument", "{v}");
                    assert!(e.message.contains("syncedSeq"), "{v}: {}", e.message);
                    assert!(e.message.contains(phrase), "{v}: {}", e.message);
                }
            }
        }
    }

    #[test]
    fn path_segment_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("todos", Some("todos")),
            ("a%20b", Some("a b")),
            ("a%2Fb", Some("a/b")),
            ("%C3%A9", Some("é")),
            ("100%", Some("100%")),
            ("%zz", Some("%zz")),
            ("a%0Ab", Some("a\nb")),
            ("a%FFb", None),
            ("%C3", None),
        ];
        for (raw, expected) in cases {
            assert_eq!(
                path_segment("collection", raw).ok().as_deref(),
                *expected,
                "{raw}"
            );
        }
    }

    #[test]
    fn base64_is_standard_padded() {
        assert_eq!(decode("x", "AAA=").ok(), Some(vec![0, 0]));
        assert!(decode("x", "AAA").is_err());
        assert!(decode("x", "AA-_").is_err());
        assert!(decode("x", "not base64!").is_err());
        assert_eq!(encode(&[0, 0]), "AAA=");
    }
}
