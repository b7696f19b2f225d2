//! The seed flow over HTTP against a real server, plus the operator routes, CORS and long
//! polls. Peers are yrs documents; convergence is checked by content.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::{b64, unb64, Client, Peer, TestServer};
use replicate::ServerSettings;
use serde_json::{json, Value};

/// Applies every change of a stream answer to `peer`; answers the (seq, operationType) list.
fn apply_changes(peer: &Peer, changes: &[Value]) -> Vec<(u64, String)> {
    changes
        .iter()
        .map(|c| {
            peer.apply(&unb64(c["crdtBytes"].as_str().expect("crdtBytes")));
            (
                c["seq"].as_u64().expect("seq"),
                c["operationType"]
                    .as_str()
                    .expect("operationType")
                    .to_string(),
            )
        })
        .collect()
}

fn stream(client: &Client, query: &str) -> Value {
    client.ok_get(&format!("/v1/todos/stream?{query}"))
}

#[test]
fn seed_flow_insert_stream_ack_compact_recover_state() {
    // Peers time out after 60 s of (manual) clock time.
    let server =
        TestServer::start_with_clock(|c| c.peer_timeout = Duration::from_secs(60), 1_000_000);
    let clock = server.clock.clone().expect("manual clock");
    let client = server.client;

    // Two writers, one document each (text root named after the document).
    let alice = Peer::new(1);
    let bob = Peer::new(2);
    let alice_first = alice.append("a", "hello");
    assert_eq!(client.write("todos", "insert", "a", &alice_first), 1);
    assert_eq!(
        client.write("todos", "update", "a", &alice.append("a", " world")),
        2
    );
    assert_eq!(
        client.write("todos", "insert", "b", &bob.append("b", "groceries")),
        3
    );
    assert_eq!(
        client.write("todos", "update", "a", &alice.append("a", "!")),
        4
    );

    // opId makes a retried write idempotent.
    let retry = json!({ "documentId": "b", "crdtBytes": b64(&bob.append("b", ": milk")), "opId": "bob-op-1" });
    let first = client.ok("/v1/todos/update", &retry);
    let again = client.ok("/v1/todos/update", &retry);
    assert_eq!(
        (first["seq"].as_u64(), first["duplicate"].as_bool()),
        (Some(5), Some(false))
    );
    assert_eq!(
        (again["seq"].as_u64(), again["duplicate"].as_bool()),
        (Some(5), Some(true))
    );

    // A fast peer reads everything in seq order and acks.
    let fast = Peer::new(10);
    let page = stream(&client, "cursor=0");
    let seqs = apply_changes(&fast, page["changes"].as_array().expect("changes"));
    assert_eq!(
        seqs.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![1, 2, 3, 4, 5]
    );
    assert_eq!(seqs[0].1, "insert");
    assert_eq!(seqs[1].1, "update");
    assert_eq!(
        (page["cursor"].as_u64(), page["hasMore"].as_bool()),
        (Some(5), Some(false))
    );
    assert!(page["compact"].is_null());
    assert_eq!(fast.text("a"), "hello world!");
    assert_eq!(fast.text("b"), "groceries: milk");
    assert_eq!(
        client.ok(
            "/v1/todos/ack",
            &json!({ "peerId": "fast", "syncedSeq": 5 })
        )["lastSyncedSeq"],
        5
    );

    // A slow peer reads one change (limit=1) and acks it.
    let slow = Peer::new(11);
    let page = stream(&client, "cursor=0&limit=1");
    apply_changes(&slow, page["changes"].as_array().expect("changes"));
    assert_eq!(
        (page["cursor"].as_u64(), page["hasMore"].as_bool()),
        (Some(1), Some(true))
    );
    assert_eq!(
        client.ok(
            "/v1/todos/ack",
            &json!({ "peerId": "slow", "syncedSeq": 1 })
        )["lastSyncedSeq"],
        1
    );
    // Acks never go backwards; an ack above the head is refused.
    assert_eq!(
        client.ok(
            "/v1/todos/ack",
            &json!({ "peerId": "fast", "syncedSeq": 2 })
        )["lastSyncedSeq"],
        5
    );
    let ahead = client.post_json(
        "/v1/todos/ack",
        &json!({ "peerId": "fast", "syncedSeq": 6 }),
    );
    assert_eq!(
        (ahead.status, ahead.error_code()),
        (422, "ack_ahead".to_string())
    );

    // The compaction hint names a document over sizeThreshold.
    assert_eq!(stream(&client, "cursor=5&sizeThreshold=1")["compact"], "a");

    // Compaction while the slow peer is active: it holds back every delta (seq >= 1).
    let compacted = client.ok("/v1/todos/compact", &json!({ "documentId": "a" }));
    assert_eq!(
        compacted,
        json!({ "success": true, "removed": 0, "retained": 3, "snapshotSeq": 4 })
    );

    // The slow peer goes quiet past the timeout; the fast one stays active. Deltas 1, 2 and 4
    // of document a are below the fast peer's ack (5) and go.
    clock.advance(61_000);
    client.ok(
        "/v1/todos/ack",
        &json!({ "peerId": "fast", "syncedSeq": 5 }),
    );
    let compacted = client.ok("/v1/todos/compact", &json!({ "documentId": "a" }));
    assert_eq!(
        compacted,
        json!({ "success": true, "removed": 3, "retained": 0, "snapshotSeq": 4 })
    );

    // The slow peer comes back at its cursor: deltas 2 and 4 are gone, so its page starts
    // with document a's snapshot, then the deltas of b.
    let page = stream(&client, "cursor=1");
    let changes = page["changes"].as_array().expect("changes");
    let got = apply_changes(&slow, changes);
    assert_eq!(got[0], (4, "snapshot".to_string()), "{page}");
    assert_eq!(changes[0]["documentId"], "a");
    assert_eq!(
        got[1..].iter().map(|(s, _)| *s).collect::<Vec<_>>(),
        vec![3, 5]
    );
    assert_eq!(page["cursor"], 5);
    assert_eq!(slow.text("a"), "hello world!");
    assert_eq!(slow.text("b"), "groceries: milk");

    // Recovery: a peer holding only the first write asks for what it misses of document a.
    let partial = Peer::new(12);
    partial.apply(&alice_first);
    let recovery = client.ok(
        "/v1/todos/recovery",
        &json!({ "stateVector": b64(&partial.state_vector()), "documentId": "a" }),
    );
    assert_eq!(recovery["cursor"], 5);
    partial.apply(&unb64(recovery["diff"].as_str().expect("diff")));
    assert_eq!(partial.text("a"), "hello world!");
    assert_eq!(
        partial.text("b"),
        "",
        "a document's recovery carries only that document"
    );

    // Whole-collection recovery from an empty state vector, and the state route, both converge.
    let empty = Peer::new(13);
    let recovery = client.ok(
        "/v1/todos/recovery",
        &json!({ "stateVector": b64(&empty.state_vector()) }),
    );
    empty.apply(&unb64(recovery["diff"].as_str().expect("diff")));
    assert_eq!(
        (empty.text("a").as_str(), empty.text("b").as_str()),
        ("hello world!", "groceries: milk")
    );

    let state = client.ok_get("/v1/todos/state");
    assert_eq!(state["cursor"], 5);
    let fresh = Peer::new(14);
    fresh.apply(&unb64(state["crdtBytes"].as_str().expect("crdtBytes")));
    assert_eq!(
        (fresh.text("a").as_str(), fresh.text("b").as_str()),
        ("hello world!", "groceries: milk")
    );

    // Seqs go on after compaction deleted deltas; nothing is reused.
    assert_eq!(
        client.write("todos", "delete", "b", &bob.append("b", ".")),
        6
    );
    let stats = client.ok_get("/v1/todos/stats");
    assert_eq!(
        (stats["durableSeq"].as_u64(), stats["peers"].as_u64()),
        (Some(6), Some(2))
    );
}

#[test]
fn long_poll_answers_when_a_write_commits() {
    let server = TestServer::start();
    let client = server.client;
    let writer = Peer::new(1);
    client.write("lp", "insert", "d", &writer.append("d", "x"));
    let poll = std::thread::spawn(move || client.ok_get("/v1/lp/stream?cursor=1&waitMs=60000"));
    client.write("lp", "update", "d", &writer.append("d", "y"));
    let page = poll.join().expect("poller");
    assert_eq!(page["changes"][0]["seq"], 2, "{page}");
    assert_eq!(page["cursor"], 2);
    // With nothing new and no wait, the answer is an empty page at the same cursor.
    let page = client.ok_get("/v1/lp/stream?cursor=2");
    assert_eq!(
        page,
        json!({ "changes": [], "cursor": 2, "hasMore": false, "compact": null })
    );
}

#[test]
fn operator_routes_and_json_errors_for_unknown_routes() {
    let server = TestServer::start();
    let client = server.client;
    assert_eq!(client.ok_get("/healthz")["status"], "ok");
    client.write("ops", "insert", "d", &Peer::new(1).append("d", "x"));
    client.ok_get("/v1/ops/stream?cursor=0");

    let metrics = client.get("/metrics");
    assert_eq!(metrics.status, 200);
    let text = metrics.text();
    for name in [
        "replicate_appends_total",
        "replicate_appended_bytes_total",
        "replicate_stream_requests_total",
        "replicate_http_request_duration_seconds_bucket",
        "replicate_http_requests_total",
        "replicate_live_collections",
    ] {
        assert!(text.contains(name), "{name} missing from /metrics:\n{text}");
    }
    assert!(text.contains(r#"route="/v1/{c}/insert""#), "{text}");

    let stats = client.ok_get("/stats");
    let names: HashSet<&str> = stats["collections"]
        .as_array()
        .expect("collections")
        .iter()
        .filter_map(|c| c["collection"].as_str())
        .collect();
    assert!(names.contains("ops"), "{stats}");

    let missing = client.get("/v2/nothing");
    assert_eq!(
        (missing.status, missing.error_code()),
        (404, "not_found".to_string())
    );
    let wrong = client.request("DELETE", "/v1/ops/state", &[], b"");
    assert_eq!(
        (wrong.status, wrong.error_code()),
        (405, "method_not_allowed".to_string())
    );
    let wrong = client.get("/v1/ops/insert");
    assert_eq!(
        (wrong.status, wrong.error_code()),
        (405, "method_not_allowed".to_string())
    );
}

#[test]
fn cors_allows_configured_origins_only() {
    let settings = ServerSettings {
        cors_origins: vec!["https://app.example.com".into()],
        ..ServerSettings::default()
    };
    let server = TestServer::start_with(|_| {}, settings);
    let client = server.client;
    let preflight = |origin: &str| {
        client.request(
            "OPTIONS",
            "/v1/c/insert",
            &[
                ("Origin", origin),
                ("Access-Control-Request-Method", "POST"),
                ("Access-Control-Request-Headers", "content-type"),
            ],
            b"",
        )
    };
    let allowed = preflight("https://app.example.com");
    assert_eq!(allowed.status, 200, "{}", allowed.text());
    assert_eq!(
        allowed.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );
    let refused = preflight("https://evil.example.com");
    assert_ne!(
        refused.header("access-control-allow-origin"),
        Some("https://evil.example.com")
    );

    // Error answers carry CORS headers too, so a browser can read them.
    let r = client.request(
        "GET",
        "/v1/c/stream?cursor=-1",
        &[("Origin", "https://app.example.com")],
        b"",
    );
    assert_eq!(r.status, 400);
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("https://app.example.com")
    );

    // The default allows any origin.
    let open = TestServer::start();
    let r = open.client.request(
        "GET",
        "/healthz",
        &[("Origin", "http://localhost:5173")],
        b"",
    );
    assert_eq!(
        r.header("access-control-allow-origin"),
        Some("http://localhost:5173")
    );
}

#[test]
fn graceful_stop_keeps_every_answered_write() {
    let mut server = TestServer::start();
    let client = server.client;
    let peer = Peer::new(7);
    let seqs: Vec<u64> = (0..20)
        .map(|i| client.write("g", "insert", "d", &peer.append("d", &i.to_string())))
        .collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
    server.stop();
    let restarted = common::restart_in_thread(&server.dir.path().join("data"));
    let client = Client {
        addr: restarted.addr,
    };
    let (changes, cursor) = client.stream_all("g", 0);
    assert_eq!((changes.len(), cursor), (20, 20));
    assert_eq!(client.write("g", "insert", "d", &peer.append("d", "x")), 21);
    restarted.shutdown().expect("graceful shutdown");
}
