//! The y-protocols messages y-websocket speaks, with yrs's own `sync` types.
//!
//! A message is `[type varUint, body]`: `0` sync (`0` step 1 with a state vector, `1` step 2
//! and `2` update with a Yjs v1 update), `1` awareness (an encoded awareness update), `3`
//! query-awareness (no body). A frame may hold several messages one after another (yrs's
//! `MessageReader` shape); y-websocket sends one per frame.
//!
//! # Invariants
//! - Untrusted bytes reach yrs's decoders only after [`check_message`] has walked them:
//!   every declared count fits the bytes that follow (yrs reserves memory from counts), every
//!   length lies inside the frame, and the type is one a client may send. A truncated message
//!   is an error here, where yrs's `MessageReader` would silently stop at it.
//! - Awareness states are JSON of at most [`MAX_AWARENESS_STATE_BYTES`]: every relayed state
//!   parses, so one client cannot break the others' `JSON.parse`.

use actix_web::web::Bytes;
use yrs::encoding::read::{Cursor, Read};
use yrs::sync::{AwarenessUpdate, Message, SyncMessage};
use yrs::updates::decoder::{Decode, DecoderV1};
use yrs::updates::encoder::Encode;
use yrs::StateVector;

/// Largest awareness state (its JSON) one client id may publish.
pub const MAX_AWARENESS_STATE_BYTES: usize = 32 * 1024;

/// Most entries one awareness message may hold. A provider sends its own state, or echoes
/// every state it knows (one per client in the room; rooms are bounded by the server's
/// websocket connections, 10,000 by default); more is refused before anything is decoded.
pub const MAX_AWARENESS_ENTRIES: u64 = 16 * 1024;

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Incoming {
    /// The client's state vector: answer with step 2.
    SyncStep1(StateVector),
    /// What the client holds that the server's step 1 lacked.
    SyncStep2(Vec<u8>),
    /// A local edit of the client.
    Update(Vec<u8>),
    Awareness(AwarenessUpdate),
    QueryAwareness,
}

/// Decodes every message of a binary frame.
///
/// # Errors
/// Why the frame is refused: empty, truncated, an unknown or server-only message type, a
/// count larger than its bytes, an awareness state that is not JSON or is too large.
pub fn decode(frame: &[u8]) -> Result<Vec<Incoming>, String> {
    if frame.is_empty() {
        return Err("empty frame".into());
    }
    let mut out = Vec::new();
    let mut at = 0;
    while at < frame.len() {
        let mut cursor = Cursor::new(&frame[at..]);
        check_message(&mut cursor)?;
        let end = at + cursor.next;
        let one = &frame[at..end];
        let mut decoder = DecoderV1::new(Cursor::new(one));
        let message = Message::decode(&mut decoder).map_err(|e| e.to_string())?;
        out.push(incoming(message)?);
        at = end;
    }
    Ok(out)
}

/// Walks one message, checking lengths and counts without allocating from them.
fn check_message(cursor: &mut Cursor) -> Result<(), String> {
    let tag: u64 = read_var(cursor, "message type")?;
    match tag {
        0 => {
            let sub: u64 = read_var(cursor, "sync message type")?;
            let body = read_buf(cursor, "sync message")?;
            match sub {
                // A state vector entry is a client id and a clock: two varints.
                0 => check_count(body, 2, "state vector").map(drop),
                1 | 2 => Ok(()),
                other => Err(format!("unknown sync message type {other}")),
            }
        }
        // An awareness entry: client id, clock, JSON string length (three varints at least).
        1 => {
            let body = read_buf(cursor, "awareness update")?;
            let count = check_count(body, 3, "awareness update")?;
            if count > MAX_AWARENESS_ENTRIES {
                return Err(format!(
                    "awareness update of {count} entries, over {MAX_AWARENESS_ENTRIES}"
                ));
            }
            Ok(())
        }
        2 => Err("auth messages are sent by the server only".into()),
        3 => Ok(()),
        other => Err(format!("unknown message type {other}")),
    }
}

fn read_var(cursor: &mut Cursor, what: &str) -> Result<u64, String> {
    cursor
        .read_var::<u64>()
        .map_err(|_| format!("truncated {what}"))
}

fn read_buf<'a>(cursor: &mut Cursor<'a>, what: &str) -> Result<&'a [u8], String> {
    let len = read_var(cursor, what)?;
    let start = cursor.next;
    let end = usize::try_from(len)
        .ok()
        .and_then(|len| start.checked_add(len))
        .filter(|end| *end <= cursor.buf.len())
        .ok_or_else(|| format!("truncated {what}: {len} bytes declared"))?;
    cursor.next = end;
    Ok(&cursor.buf[start..end])
}

/// Checks that the count `body` starts with could fit (each entry takes at least `min`
/// bytes); answers it.
fn check_count(body: &[u8], min: usize, what: &str) -> Result<u64, String> {
    let mut cursor = Cursor::new(body);
    let count = read_var(&mut cursor, what)?;
    let room = (body.len() - cursor.next) / min;
    if count > room as u64 {
        return Err(format!(
            "{what} declares {count} entries in {} bytes",
            body.len()
        ));
    }
    Ok(count)
}

fn incoming(message: Message) -> Result<Incoming, String> {
    Ok(match message {
        Message::Sync(SyncMessage::SyncStep1(sv)) => Incoming::SyncStep1(sv),
        Message::Sync(SyncMessage::SyncStep2(update)) => Incoming::SyncStep2(update),
        Message::Sync(SyncMessage::Update(update)) => Incoming::Update(update),
        Message::Awareness(update) => {
            for entry in update.clients.values() {
                if entry.json.len() > MAX_AWARENESS_STATE_BYTES {
                    return Err(format!(
                        "awareness state over {MAX_AWARENESS_STATE_BYTES} bytes"
                    ));
                }
                serde_json::from_str::<serde::de::IgnoredAny>(&entry.json)
                    .map_err(|e| format!("awareness state is not JSON: {e}"))?;
            }
            Incoming::Awareness(update)
        }
        Message::AwarenessQuery => Incoming::QueryAwareness,
        // `check_message` let neither through.
        Message::Auth(_) | Message::Custom(..) => return Err("unexpected message type".into()),
    })
}

fn encode(message: Message) -> Bytes {
    Bytes::from(message.encode_v1())
}

/// The server's sync step 1: its state vector of the document.
pub fn step1(sv: StateVector) -> Bytes {
    encode(Message::Sync(SyncMessage::SyncStep1(sv)))
}

/// The answer to a client's step 1: what it lacks.
pub fn step2(update: Vec<u8>) -> Bytes {
    encode(Message::Sync(SyncMessage::SyncStep2(update)))
}

/// A change of the document, broadcast.
pub fn update(update: Vec<u8>) -> Bytes {
    encode(Message::Sync(SyncMessage::Update(update)))
}

pub fn awareness(update: AwarenessUpdate) -> Bytes {
    encode(Message::Awareness(update))
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use yrs::sync::awareness::AwarenessUpdateEntry;
    use yrs::ClientID;

    use super::*;

    fn awareness_update(json: &str) -> AwarenessUpdate {
        AwarenessUpdate {
            clients: HashMap::from([(
                ClientID::new(7),
                AwarenessUpdateEntry {
                    clock: 1,
                    json: json.into(),
                },
            )]),
        }
    }

    #[test]
    fn what_we_encode_decodes() {
        let frames = [
            (
                step1(StateVector::default()),
                Incoming::SyncStep1(StateVector::default()),
            ),
            (step2(vec![0, 0]), Incoming::SyncStep2(vec![0, 0])),
            (update(vec![0, 0]), Incoming::Update(vec![0, 0])),
            (
                awareness(awareness_update("{\"a\":1}")),
                Incoming::Awareness(awareness_update("{\"a\":1}")),
            ),
            (Bytes::from_static(&[3]), Incoming::QueryAwareness),
        ];
        for (frame, expected) in frames {
            assert_eq!(decode(&frame), Ok(vec![expected]));
        }
        let two = [update(vec![0, 0]).to_vec(), vec![3]].concat();
        assert_eq!(
            decode(&two),
            Ok(vec![Incoming::Update(vec![0, 0]), Incoming::QueryAwareness])
        );
    }

    #[test]
    fn bad_frames_are_refused_with_a_reason() {
        let mut huge_sv = vec![0, 0, 5];
        huge_sv.extend([0xff, 0xff, 0xff, 0xff, 0x0f]); // ~4 billion entries in 4 bytes
        let mut huge_awareness = vec![1, 4];
        huge_awareness.extend([0xff, 0xff, 0xff, 0x0f]);
        let bad_json = awareness(awareness_update("{not json")).to_vec();
        let crowd = awareness(AwarenessUpdate {
            clients: (0..=MAX_AWARENESS_ENTRIES)
                .map(|id| {
                    let entry = AwarenessUpdateEntry {
                        clock: 1,
                        json: "null".into(),
                    };
                    (ClientID::new(id), entry)
                })
                .collect(),
        })
        .to_vec();
        let big_json = format!("\"{}\"", "x".repeat(MAX_AWARENESS_STATE_BYTES));
        let big = awareness(awareness_update(&big_json)).to_vec();
        let cases: &[(&[u8], &str)] = &[
            (&[], "empty"),
            (&[0], "truncated sync message type"),
            (&[0, 1, 50, 1, 2], "truncated sync message"),
            (&[0, 9, 0], "unknown sync message type 9"),
            (&[9], "unknown message type 9"),
            (&[2, 0], "server only"),
            (&huge_sv, "state vector declares"),
            (&huge_awareness, "awareness update declares"),
            (&bad_json, "not JSON"),
            (&crowd, "awareness update of 16385 entries, over 16384"),
            (&big, "awareness state over"),
            (&[0xff, 0xff, 0xff], "truncated message type"),
        ];
        for (frame, why) in cases {
            let err = decode(frame).expect_err(why);
            assert!(err.contains(why), "{frame:?}: {err} (expected {why})");
        }
        // A good message followed by a truncated one is refused as a whole.
        let tail = [update(vec![0, 0]).to_vec(), vec![0, 2, 9]].concat();
        assert!(decode(&tail).is_err());
    }
}
