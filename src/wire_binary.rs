//! The binary form of `stream` and `events` (wire v2 addition, issue 10): the same changes as
//! the JSON answer, as length-prefixed records of raw bytes, chosen by
//! `Accept: application/vnd.replicate.changes`.
//!
//! Why: a profile of catch-up showed the JSON page costing the client more than the server
//! (parsing JSON, then base64, then copying each change), and base64 makes the body a third
//! larger. Here a change is its bytes as stored, so encoding is one copy and decoding is a
//! bounds check and one copy.
//!
//! # Layout (version 1; every integer big-endian)
//! ```text
//! body      = preamble record*
//! preamble  = "RPLC" (52 50 4C 43) version:u8 (= 1)
//! record    = len:u32 kind:u8 payload      len counts kind + payload, so len ≥ 1
//! PAGE   (kind 1) = cursor:u64 count:u32 flags:u8 [compactLen:u16 compact:UTF-8]
//!                   flags bit 0 = hasMore, bit 1 = compact present (then compactLen+compact
//!                   follow); other bits are 0
//! CHANGE (kind 2) = seq:u64 op:u8 docLen:u16 documentId:UTF-8 crdtBytes (the rest of the record)
//!                   op: 0 insert, 1 update, 2 delete, 3 snapshot
//! ERROR  (kind 3) = UTF-8 JSON {"error":{"code","message"}}, the last record of a feed
//! ```
//! A PAGE record is followed by exactly `count` CHANGE records, in the order of the JSON
//! `changes` array (snapshots first, then deltas in seq order). A client that has applied
//! them may record `cursor`: the same rule as the JSON page's `cursor`.
//! - `stream` answers the preamble, one PAGE and its CHANGEs.
//! - `events` answers a streaming (chunked) body: the preamble, then a PAGE with its CHANGEs
//!   per page read, a PAGE with count 0 as the idle heartbeat (it repeats the cursor), and an
//!   ERROR record before the body ends on an error or an expired token. A client resumes
//!   with `?cursor=` set to the last PAGE cursor whose changes it applied.
//!
//! Decoders skip records of unknown kinds and bytes after the known fields of a PAGE, so later
//! versions can add both without a new version byte; anything else changes the version.
//!
//! # Negotiation
//! [`wants_binary`]: the binary form is sent when `Accept` names
//! `application/vnd.replicate.changes` (with no `v` parameter or `v=1`) with a quality above 0
//! and not below that of `application/json`. Anything else, including an unparsable or
//! unknown `Accept`, gets the JSON answer (never 406): JSON stays the default, and the
//! answer's `Content-Type` always says which form was sent.

use actix_web::http::header::{HeaderMap, ACCEPT};
use replicate_actors::{Change, OperationType, StreamPage};

use crate::error::ApiError;

/// The media type of the binary form.
pub const MEDIA_TYPE: &str = "application/vnd.replicate.changes";
/// The preamble every binary body starts with: magic and version.
pub const PREAMBLE: [u8; 5] = [b'R', b'P', b'L', b'C', VERSION];
/// The layout version this module writes and reads.
pub const VERSION: u8 = 1;

const KIND_PAGE: u8 = 1;
const KIND_CHANGE: u8 = 2;
const KIND_ERROR: u8 = 3;
const FLAG_HAS_MORE: u8 = 1;
const FLAG_COMPACT: u8 = 2;

/// `Accept` media ranges looked at, at most: the header is client input.
const MAX_ACCEPT_RANGES: usize = 32;

/// Whether the request's `Accept` selects the binary form (see the module docs).
pub fn wants_binary(headers: &HeaderMap) -> bool {
    let mut binary_q = 0.0f32;
    let mut json_q = 0.0f32;
    let ranges = headers
        .get_all(ACCEPT)
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .take(MAX_ACCEPT_RANGES);
    for range in ranges {
        let mut parts = range.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let (mut q, mut version_ok) = (1.0f32, true);
        for param in parts {
            let (name, value) = param.split_once('=').unwrap_or((param, ""));
            match name.trim().to_ascii_lowercase().as_str() {
                "q" => q = value.trim().parse().unwrap_or(0.0),
                "v" => version_ok = value.trim() == "1",
                _ => {}
            }
        }
        if !(0.0..=1.0).contains(&q) {
            q = 0.0;
        }
        if media.eq_ignore_ascii_case(MEDIA_TYPE) && version_ok {
            binary_q = binary_q.max(q);
        } else if media.eq_ignore_ascii_case("application/json") {
            json_q = json_q.max(q);
        }
    }
    binary_q > 0.0 && binary_q >= json_q
}

fn op_code(op: OperationType) -> u8 {
    match op {
        OperationType::Insert => 0,
        OperationType::Update => 1,
        OperationType::Delete => 2,
        OperationType::Snapshot => 3,
    }
}

fn op_from_code(code: u8) -> Option<OperationType> {
    Some(match code {
        0 => OperationType::Insert,
        1 => OperationType::Update,
        2 => OperationType::Delete,
        3 => OperationType::Snapshot,
        _ => return None,
    })
}

/// A record's length field for a payload of `payload` bytes.
///
/// # Errors
/// 500 `internal` if the record would not fit the u32 length (a change over 4 GiB, which the
/// body and snapshot limits rule out).
fn record_len(payload: usize) -> Result<u32, ApiError> {
    u32::try_from(payload + 1).map_err(|_| unencodable("a change is over 4 GiB"))
}

/// The 500 for a page the layout cannot carry; the client can still ask for JSON.
fn unencodable(what: &str) -> ApiError {
    ApiError::new(
        actix_web::http::StatusCode::INTERNAL_SERVER_ERROR,
        "internal",
        format!("{what}, too large for the binary form; ask for JSON"),
    )
}

/// Bytes one change takes as a record.
fn change_size(c: &Change) -> usize {
    4 + 1 + 8 + 1 + 2 + c.document_id.len() + c.bytes.len()
}

/// Appends `page` as a PAGE record and its CHANGE records (no preamble: a feed writes it once).
///
/// # Errors
/// 500 (see [`unencodable`]) for a change over 4 GiB or a document id over 65,535 bytes:
/// neither can happen with the actors' limits (names are at most 256 bytes).
pub fn write_page(out: &mut Vec<u8>, page: &StreamPage) -> Result<(), ApiError> {
    let too_long = || unencodable("a document id is over 65,535 bytes");
    out.reserve(32 + page.changes.iter().map(change_size).sum::<usize>());
    let count = u32::try_from(page.changes.len())
        .map_err(|_| unencodable("a page is over 2^32 changes"))?;
    let compact = page.compact.as_deref().map(str::as_bytes);
    let compact_len = match compact {
        Some(c) => Some(u16::try_from(c.len()).map_err(|_| too_long())?),
        None => None,
    };
    let flags = if page.has_more { FLAG_HAS_MORE } else { 0 }
        | if compact.is_some() { FLAG_COMPACT } else { 0 };
    let payload = 8 + 4 + 1 + compact.map_or(0, |c| 2 + c.len());
    out.extend_from_slice(&record_len(payload)?.to_be_bytes());
    out.push(KIND_PAGE);
    out.extend_from_slice(&page.cursor.to_be_bytes());
    out.extend_from_slice(&count.to_be_bytes());
    out.push(flags);
    if let (Some(c), Some(len)) = (compact, compact_len) {
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(c);
    }
    for c in &page.changes {
        let doc = c.document_id.as_bytes();
        let doc_len = u16::try_from(doc.len()).map_err(|_| too_long())?;
        out.extend_from_slice(&record_len(8 + 1 + 2 + doc.len() + c.bytes.len())?.to_be_bytes());
        out.push(KIND_CHANGE);
        out.extend_from_slice(&c.seq.to_be_bytes());
        out.push(op_code(c.operation));
        out.extend_from_slice(&doc_len.to_be_bytes());
        out.extend_from_slice(doc);
        out.extend_from_slice(&c.bytes);
    }
    Ok(())
}

/// The whole `stream` answer: preamble, PAGE, CHANGEs.
///
/// # Errors
/// As [`write_page`].
pub fn encode_page(page: &StreamPage) -> Result<Vec<u8>, ApiError> {
    let mut out = PREAMBLE.to_vec();
    write_page(&mut out, page)?;
    Ok(out)
}

/// An empty PAGE at `cursor`: the feed's heartbeat.
pub fn heartbeat(cursor: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(18);
    let empty = StreamPage {
        changes: Vec::new(),
        cursor,
        has_more: false,
        compact: None,
    };
    // An empty page without compact always fits.
    let _ = write_page(&mut out, &empty);
    out
}

/// An ERROR record carrying `e` as the usual error JSON.
pub fn error_record(e: &ApiError) -> Vec<u8> {
    let body = serde_json::json!({ "error": { "code": e.code, "message": e.message } });
    let json = body.to_string();
    let mut out = Vec::with_capacity(5 + json.len());
    // Error messages are short; saturate rather than fail on an absurd one.
    let len = u32::try_from(json.len() + 1).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.push(KIND_ERROR);
    out.extend_from_slice(&json.as_bytes()[..(len - 1) as usize]);
    out
}

/// Why bytes did not decode as the binary form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    #[error("not a replicate binary body (bad magic)")]
    Magic,
    #[error("binary layout version {0} is not supported (this decoder reads {VERSION})")]
    Version(u8),
    #[error("record of {len} bytes is over the limit of {limit}")]
    TooLarge { len: usize, limit: usize },
    #[error("malformed {0} record")]
    Malformed(&'static str),
    #[error("unknown operation code {0}")]
    Operation(u8),
    #[error("body ends inside a record")]
    Truncated,
    #[error("page announced {expected} changes, body holds {got}")]
    Count { expected: u32, got: u32 },
    #[error("CHANGE record outside a page")]
    Unexpected,
}

/// A PAGE record: what follows it and where the client may then be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PageHead {
    pub cursor: u64,
    pub count: u32,
    pub has_more: bool,
    pub compact: Option<String>,
}

/// One decoded record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record {
    Page(PageHead),
    Change(Change),
    /// The error JSON of an ERROR record.
    Error(String),
}

/// Reads big-endian fields off the front of a record's payload.
struct Fields<'a>(&'a [u8], &'static str);

impl<'a> Fields<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        if self.0.len() < n {
            return Err(DecodeError::Malformed(self.1));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let mut a = [0; N];
        a.copy_from_slice(self.take(N)?);
        Ok(a)
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.array::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        self.array().map(u16::from_be_bytes)
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        self.array().map(u32::from_be_bytes)
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        self.array().map(u64::from_be_bytes)
    }
    fn text(&mut self, n: usize) -> Result<String, DecodeError> {
        let kind = self.1;
        String::from_utf8(self.take(n)?.to_vec()).map_err(|_| DecodeError::Malformed(kind))
    }
}

/// Decodes one record's kind and payload; `None` for a kind this version does not know.
fn decode_record(kind: u8, payload: &[u8]) -> Result<Option<Record>, DecodeError> {
    Ok(Some(match kind {
        KIND_PAGE => {
            let mut f = Fields(payload, "PAGE");
            let cursor = f.u64()?;
            let count = f.u32()?;
            let flags = f.u8()?;
            let compact = if flags & FLAG_COMPACT != 0 {
                let n = f.u16()? as usize;
                Some(f.text(n)?)
            } else {
                None
            };
            Record::Page(PageHead {
                cursor,
                count,
                has_more: flags & FLAG_HAS_MORE != 0,
                compact,
            })
        }
        KIND_CHANGE => {
            let mut f = Fields(payload, "CHANGE");
            let seq = f.u64()?;
            let code = f.u8()?;
            let operation = op_from_code(code).ok_or(DecodeError::Operation(code))?;
            let n = f.u16()? as usize;
            let document_id = f.text(n)?;
            Record::Change(Change {
                document_id,
                seq,
                bytes: f.0.to_vec(),
                operation,
            })
        }
        KIND_ERROR => Record::Error(String::from_utf8_lossy(payload).into_owned()),
        _ => return Ok(None),
    }))
}

/// An incremental decoder for a binary body that arrives in chunks (the `events` feed):
/// [`Decoder::push`] bytes, then take [`Decoder::next_record`] records until it answers `None`.
///
/// # Invariants
/// It holds at most one record plus one chunk: a record longer than the limit is an error
/// rather than a reason to buffer.
#[derive(Debug)]
pub struct Decoder {
    buf: Vec<u8>,
    /// Read position in `buf` (consumed bytes are dropped on the next push).
    at: usize,
    preamble_seen: bool,
    max_record: usize,
}

impl Decoder {
    /// A decoder refusing records longer than `max_record` bytes.
    pub fn new(max_record: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            at: 0,
            preamble_seen: false,
            max_record,
        }
    }

    pub fn push(&mut self, chunk: &[u8]) {
        if self.at > 0 {
            self.buf.drain(..self.at);
            self.at = 0;
        }
        self.buf.extend_from_slice(chunk);
    }

    /// Whether bytes are left over that do not make a whole record yet.
    pub fn has_partial(&self) -> bool {
        self.at < self.buf.len()
    }

    /// The next complete record, or `None` until more bytes are pushed. Unknown kinds are
    /// skipped.
    ///
    /// # Errors
    /// A bad preamble, an over-long record or a malformed one; the decoder is then unusable.
    pub fn next_record(&mut self) -> Result<Option<Record>, DecodeError> {
        loop {
            let rest = &self.buf[self.at..];
            if !self.preamble_seen {
                if rest.len() < PREAMBLE.len() {
                    return Ok(None);
                }
                if rest[..4] != PREAMBLE[..4] {
                    return Err(DecodeError::Magic);
                }
                if rest[4] != VERSION {
                    return Err(DecodeError::Version(rest[4]));
                }
                self.preamble_seen = true;
                self.at += PREAMBLE.len();
                continue;
            }
            let Some(len) = rest.get(..4) else {
                return Ok(None);
            };
            let len = u32::from_be_bytes([len[0], len[1], len[2], len[3]]) as usize;
            if len == 0 {
                return Err(DecodeError::Malformed("empty"));
            }
            if len > self.max_record {
                return Err(DecodeError::TooLarge {
                    len,
                    limit: self.max_record,
                });
            }
            let Some(record) = rest.get(4..4 + len) else {
                return Ok(None);
            };
            let decoded = decode_record(record[0], &record[1..])?;
            self.at += 4 + len;
            if let Some(record) = decoded {
                return Ok(Some(record));
            }
        }
    }
}

/// A whole `stream` answer, decoded into the page it stands for.
///
/// # Errors
/// As [`Decoder::next_record`]; also a missing PAGE, a CHANGE count that does not match, a
/// truncated body, or an ERROR record.
pub fn decode_page(body: &[u8]) -> Result<StreamPage, DecodeError> {
    let mut d = Decoder::new(body.len());
    d.push(body);
    let head = match d.next_record()? {
        Some(Record::Page(head)) => head,
        Some(_) => return Err(DecodeError::Unexpected),
        None => return Err(DecodeError::Truncated),
    };
    // Bounded by the body: a count larger than the records present fails below.
    let mut changes = Vec::with_capacity((head.count as usize).min(body.len() / 16));
    while let Some(record) = d.next_record()? {
        match record {
            Record::Change(c) => changes.push(c),
            _ => return Err(DecodeError::Unexpected),
        }
    }
    if d.has_partial() {
        return Err(DecodeError::Truncated);
    }
    if changes.len() != head.count as usize {
        return Err(DecodeError::Count {
            expected: head.count,
            got: changes.len() as u32,
        });
    }
    Ok(StreamPage {
        changes,
        cursor: head.cursor,
        has_more: head.has_more,
        compact: head.compact,
    })
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    fn page(compact: Option<&str>) -> StreamPage {
        let change = |seq, op, doc: &str, bytes: &[u8]| Change {
            document_id: doc.into(),
            seq,
            bytes: bytes.to_vec(),
            operation: op,
        };
        StreamPage {
            changes: vec![
                change(9, OperationType::Snapshot, "é", &[1, 2, 3]),
                change(4, OperationType::Insert, "a", &[]),
                change(5, OperationType::Update, "b", &[0; 300]),
                change(6, OperationType::Delete, "a", &[7]),
            ],
            cursor: 6,
            has_more: true,
            compact: compact.map(str::to_string),
        }
    }

    #[test]
    fn pages_round_trip() {
        for p in [page(None), page(Some("big-doc")), empty()] {
            let bytes = encode_page(&p).unwrap();
            assert_eq!(decode_page(&bytes).unwrap(), p);
        }
    }

    #[test]
    fn exact_bytes_of_a_small_page() {
        let p = StreamPage {
            changes: vec![Change {
                document_id: "d".into(),
                seq: 258,
                bytes: vec![0xAA],
                operation: OperationType::Update,
            }],
            cursor: 258,
            has_more: false,
            compact: Some("x".into()),
        };
        #[rustfmt::skip]
        let expected = [
            b'R', b'P', b'L', b'C', 1,
            0, 0, 0, 17, 1, 0, 0, 0, 0, 0, 0, 1, 2, 0, 0, 0, 1, 2, 0, 1, b'x',
            0, 0, 0, 14, 2, 0, 0, 0, 0, 0, 0, 1, 2, 1, 0, 1, b'd', 0xAA,
        ];
        assert_eq!(encode_page(&p).unwrap(), expected);
    }

    #[test]
    fn every_truncation_fails_cleanly() {
        let bytes = encode_page(&page(Some("c"))).unwrap();
        for n in 0..bytes.len() {
            assert!(decode_page(&bytes[..n]).is_err(), "prefix of {n} bytes");
        }
    }

    #[test]
    fn hostile_bodies_are_errors() {
        let good = encode_page(&page(None)).unwrap();
        let mut bad_magic = good.clone();
        bad_magic[0] = b'X';
        let mut bad_version = good.clone();
        bad_version[4] = 9;
        let mut huge = PREAMBLE.to_vec();
        huge.extend_from_slice(&u32::MAX.to_be_bytes());
        let mut bad_op = good.clone();
        // The first CHANGE's op byte: preamble 5, PAGE 4+14, CHANGE len 4, kind 1, seq 8.
        bad_op[5 + 18 + 4 + 1 + 8] = 77;
        let cases: Vec<(Vec<u8>, DecodeError)> = vec![
            (bad_magic, DecodeError::Magic),
            (bad_version, DecodeError::Version(9)),
            (
                huge,
                DecodeError::TooLarge {
                    len: u32::MAX as usize,
                    limit: 9,
                },
            ),
            (bad_op, DecodeError::Operation(77)),
        ];
        for (body, expected) in cases {
            assert_eq!(decode_page(&body).unwrap_err(), expected);
        }
    }

    #[test]
    fn feeds_decode_chunk_by_chunk_and_skip_unknown_kinds() {
        let mut feed = PREAMBLE.to_vec();
        write_page(&mut feed, &page(None)).unwrap();
        feed.extend_from_slice(&[0, 0, 0, 3, 99, 1, 2]); // a future kind
        feed.extend(heartbeat(6));
        feed.extend(error_record(&ApiError::bad_request("x", "y")));
        let mut d = Decoder::new(1 << 20);
        let mut records = Vec::new();
        for byte in &feed {
            d.push(std::slice::from_ref(byte));
            while let Some(r) = d.next_record().unwrap() {
                records.push(r);
            }
        }
        assert_eq!(records.len(), 1 + 4 + 1 + 1);
        assert!(matches!(&records[0], Record::Page(h) if h.count == 4 && h.has_more));
        assert!(matches!(&records[5], Record::Page(h) if h.count == 0 && h.cursor == 6));
        assert!(matches!(&records[6], Record::Error(e) if e.contains("\"code\":\"x\"")));
    }

    #[test]
    fn accept_negotiation() {
        let cases: &[(&[&str], bool)] = &[
            (&[], false),
            (&["application/json"], false),
            (&["*/*"], false),
            (&["application/vnd.replicate.changes"], true),
            (&["Application/VND.replicate.changes; v=1"], true),
            (&["application/vnd.replicate.changes;v=2"], false),
            (&["application/vnd.replicate.changes;q=0"], false),
            (&["application/vnd.replicate.changes;q=abc"], false),
            (&["application/vnd.replicate.changes;q=7"], false),
            (
                &["application/json;q=0.5, application/vnd.replicate.changes"],
                true,
            ),
            (
                &["application/json, application/vnd.replicate.changes;q=0.5"],
                false,
            ),
            (&["text/html", "application/vnd.replicate.changes"], true),
            (&[";;;,,,=;q="], false),
        ];
        for (values, expected) in cases {
            let mut headers = HeaderMap::new();
            for v in *values {
                headers.append(ACCEPT, HeaderValue::from_str(v).unwrap());
            }
            assert_eq!(wants_binary(&headers), *expected, "{values:?}");
        }
    }

    fn empty() -> StreamPage {
        StreamPage {
            changes: Vec::new(),
            cursor: 0,
            has_more: false,
            compact: None,
        }
    }
}

/// A body in the binary form (`preamble record*`, README.md). Only a schema.
#[derive(utoipa::ToSchema)]
#[schema(
    value_type = String,
    format = Binary,
    content_media_type = "application/vnd.replicate.changes"
)]
#[allow(dead_code)]
pub struct BinaryChanges(Vec<u8>);
