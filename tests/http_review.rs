//! Review tests over HTTP: concurrent compact calls (what peers following the `compact` hint
//! do) and percent-encoded collection names.

mod common;

use common::{b64, unb64, Peer, TestServer};
use serde_json::json;

/// Every peer streaming sees the same `compact` hint and may call compact for that document
/// at the same time. Each call must answer 200 with the contract's fields, not 409.
#[test]
fn concurrent_compact_calls_for_one_document_all_answer_200() {
    let server = TestServer::start();
    let client = server.client;
    let writer = Peer::new(1);
    for i in 0..20 {
        client.write(
            "todos",
            "update",
            "d",
            &writer.append("d", &format!("{i};")),
        );
    }
    let threads: Vec<_> = (0..16)
        .map(|_| {
            std::thread::spawn(move || {
                client.post_json("/v1/todos/compact", &json!({ "documentId": "d" }))
            })
        })
        .collect();
    let answers: Vec<_> = threads
        .into_iter()
        .map(|t| t.join().expect("client thread"))
        .collect();
    let failed: Vec<_> = answers
        .iter()
        .filter(|r| r.status != 200)
        .map(|r| (r.status, r.text()))
        .collect();
    assert!(
        failed.is_empty(),
        "{} of 16 concurrent compact calls failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    for r in &answers {
        let v = r.json();
        assert_eq!(v["success"], true, "{v}");
        assert!(v["removed"].is_u64() && v["retained"].is_u64() && v["snapshotSeq"].is_u64());
    }
    let (changes, cursor) = client.stream_all("todos", 0);
    assert_eq!(cursor, 20);
    let reader = Peer::new(2);
    for c in &changes {
        reader.apply(&unb64(c["crdtBytes"].as_str().expect("crdtBytes")));
    }
    assert_eq!(reader.text("d"), writer.text("d"));
}

/// Percent-encoded names are decoded once: `caf%C3%A9` is `café`, `a%2Fb` is `a/b` (not the
/// collection `a`), and `%25` is a literal `%`. Each is its own collection with its own seqs.
#[test]
fn percent_encoded_collection_names_are_distinct_collections() {
    let server = TestServer::start();
    let client = server.client;
    let peer = Peer::new(1);
    let names = ["caf%C3%A9", "a%2Fb", "a", "a%252Fb", "%F0%9F%98%80"];
    for (i, name) in names.iter().enumerate() {
        for n in 0..=i {
            let seq = client.write(name, "insert", "d", &peer.append("d", "x"));
            assert_eq!(seq, n as u64 + 1, "{name}");
        }
    }
    for (i, name) in names.iter().enumerate() {
        let page = client.ok_get(&format!("/v1/{name}/stream?cursor=0"));
        assert_eq!(
            page["changes"].as_array().map(Vec::len),
            Some(i + 1),
            "{name}: {page}"
        );
        assert_eq!(page["cursor"], i as u64 + 1, "{name}");
        let state = client.ok_get(&format!("/v1/{name}/state"));
        assert_eq!(state["cursor"], i as u64 + 1, "{name}");
    }
    // A name that is not UTF-8 once decoded is a JSON 400, and stores nothing.
    let r = client.post_json(
        "/v1/a%FF/insert",
        &json!({ "documentId": "d", "crdtBytes": b64(&peer.append("d", "y")) }),
    );
    assert_eq!(
        (r.status, r.error_code()),
        (400, "invalid_name".to_string())
    );
}
