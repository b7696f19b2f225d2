//! Server-Sent Events: a subscriber sees every change in seq order, disconnects, and resumes
//! with `Last-Event-ID` without a gap or a duplicate; after a compaction it gets the snapshot
//! and an id it can resume from.

mod common;

use common::{unb64, Client, Peer, SseReader, TestServer};
use serde_json::{json, Value};

fn data(block: &common::SseBlock) -> Value {
    serde_json::from_str(block.data.as_deref().expect("data")).expect("data is JSON")
}

/// Reads `n` events, checking each one's id is its seq; applies them to `peer`.
fn read_deltas(sse: &mut SseReader, peer: &Peer, n: usize) -> Vec<u64> {
    (0..n)
        .map(|_| {
            let event = sse.next_event();
            let change = data(&event);
            let seq = change["seq"].as_u64().expect("seq");
            assert_eq!(
                event.id.as_deref(),
                Some(seq.to_string().as_str()),
                "{change}"
            );
            assert_ne!(change["operationType"], "snapshot");
            peer.apply(&unb64(change["crdtBytes"].as_str().expect("crdtBytes")));
            seq
        })
        .collect()
}

#[test]
fn subscriber_sees_every_change_in_order_and_resumes_without_gap_or_duplicate() {
    let server = TestServer::start();
    let client: Client = server.client;
    let writer = Peer::new(1);
    let reader = Peer::new(2);
    let write = |s: &str| client.write("live", "insert", "doc", &writer.append("doc", s));

    for i in 0..5 {
        write(&format!("{i},"));
    }
    let mut sse = client.events("/v1/live/events?cursor=0", None);
    assert_eq!(sse.status, 200);
    let content_type = sse
        .headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| v.clone());
    assert_eq!(content_type.as_deref(), Some("text/event-stream"));
    assert_eq!(read_deltas(&mut sse, &reader, 5), vec![1, 2, 3, 4, 5]);

    // Changes committed while connected are pushed.
    for i in 5..10 {
        write(&format!("{i},"));
    }
    assert_eq!(read_deltas(&mut sse, &reader, 5), vec![6, 7, 8, 9, 10]);
    let resume_at = sse.last_id.expect("an id was seen");
    assert_eq!(resume_at, 10);
    drop(sse);

    // Missed while disconnected.
    for i in 10..15 {
        write(&format!("{i},"));
    }
    // The reconnect names the original cursor too, as EventSource does; Last-Event-ID wins.
    let mut sse = client.events("/v1/live/events?cursor=0", Some(resume_at));
    assert_eq!(read_deltas(&mut sse, &reader, 5), vec![11, 12, 13, 14, 15]);
    // Nothing else is pending: the next event is the next write, not a repeat.
    write("15");
    assert_eq!(read_deltas(&mut sse, &reader, 1), vec![16]);
    assert_eq!(reader.text("doc"), writer.text("doc"));

    // A second subscriber from the middle sees the same order.
    let other = Peer::new(3);
    other.apply(&unb64(
        client.ok("/v1/live/recovery", &json!({ "stateVector": "AA==" }))["diff"]
            .as_str()
            .expect("diff"),
    ));
    let mut sse = client.events("/v1/live/events?cursor=12", None);
    assert_eq!(read_deltas(&mut sse, &other, 4), vec![13, 14, 15, 16]);
}

#[test]
fn after_compaction_the_snapshot_comes_with_a_safe_resume_id() {
    let server = TestServer::start();
    let client = server.client;
    let writer = Peer::new(1);
    let first = writer.append("doc", "a");
    client.write("gap", "update", "doc", &first);
    for s in ["b", "c"] {
        client.write("gap", "update", "doc", &writer.append("doc", s));
    }
    // No peer is active, so compaction deletes every delta: a reader at cursor 1 has a gap.
    let done = client.ok("/v1/gap/compact", &json!({ "documentId": "doc" }));
    assert_eq!(done["removed"], 3, "{done}");

    let reader = Peer::new(2);
    reader.apply(&first);
    let mut sse = client.events("/v1/gap/events?cursor=1", None);
    let event = sse.next_event();
    let change = data(&event);
    assert_eq!(
        (change["operationType"].as_str(), change["seq"].as_u64()),
        (Some("snapshot"), Some(3)),
        "{change}"
    );
    // The snapshot's id is the page's starting cursor, never past undelivered changes ...
    assert_eq!(event.id.as_deref(), Some("1"));
    reader.apply(&unb64(change["crdtBytes"].as_str().expect("crdtBytes")));
    assert_eq!(reader.text("doc"), "abc");
    // ... and the page's cursor follows as an id-only block.
    let block = sse.next_block().expect("read").expect("block");
    assert_eq!(
        (block.id.as_deref(), block.data.as_deref()),
        (Some("3"), None),
        "{block:?}"
    );
    assert_eq!(sse.last_id, Some(3));
    drop(sse);

    // Resuming there sends no snapshot again, just what comes next.
    client.write("gap", "update", "doc", &writer.append("doc", "d"));
    let mut sse = client.events("/v1/gap/events", Some(3));
    let event = sse.next_event();
    let change = data(&event);
    assert_eq!(
        (event.id.as_deref(), change["operationType"].as_str()),
        (Some("4"), Some("update")),
        "{change}"
    );
    reader.apply(&unb64(change["crdtBytes"].as_str().expect("crdtBytes")));
    assert_eq!(reader.text("doc"), "abcd");
}

#[test]
fn events_rejects_bad_cursors_with_json_errors() {
    let server = TestServer::start();
    let client = server.client;
    let r = client.get("/v1/none/events?cursor=5");
    assert_eq!(
        (r.status, r.error_code()),
        (422, "cursor_ahead".to_string())
    );
    let r = client.request("GET", "/v1/none/events", &[("Last-Event-ID", "x1")], b"");
    assert_eq!(
        (r.status, r.error_code()),
        (400, "invalid_argument".to_string())
    );
}
