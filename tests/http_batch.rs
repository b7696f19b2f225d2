//! `POST /v1/{c}/batch` against the real server: one result per write in order, consecutive
//! seqs for the accepted ones, each bad write refused on its own with the code the single-write
//! route gives, and the whole request refused (nothing stored) when the batch itself is bad.

mod common;

use common::{b64, Peer, TestServer};
use replicate::ServerSettings;
use serde_json::{json, Value};

const C: &str = "batched";

fn batch(ts: &TestServer, writes: Value) -> common::Resp {
    ts.client
        .post_json(&format!("/v1/{C}/batch"), &json!({ "writes": writes }))
}

#[test]
fn results_come_in_order_with_consecutive_seqs_and_bad_writes_refused_alone() {
    let ts = TestServer::start();
    let (a, b) = (Peer::new(1), Peer::new(2));
    let first = ts.client.write(C, "update", "a", &a.append("t", "0"));
    assert_eq!(first, 1);
    let one = a.append("t", "1");
    let two = b.append("t", "x");
    let three = a.append("t", "2");
    let resp = batch(
        &ts,
        json!([
            { "op": "insert", "documentId": "a", "crdtBytes": b64(&one), "opId": "o-1" },
            { "op": "update", "documentId": "b", "crdtBytes": "not base64!" },
            { "op": "update", "documentId": "b", "crdtBytes": b64(&two) },
            { "op": "update", "documentId": "", "crdtBytes": b64(&two) },
            { "op": "update", "documentId": "b", "crdtBytes": b64(&[0xff, 0xff, 0xff]) },
            { "op": "delete", "documentId": "a", "crdtBytes": b64(&three) },
            { "op": "insert", "documentId": "a", "crdtBytes": b64(&one), "opId": "o-1" },
        ]),
    );
    assert_eq!(resp.status, 200, "{}", resp.text());
    let results = resp.json()["results"].clone();
    let codes: Vec<Value> = results
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["error"]["code"].clone())
        .collect();
    assert_eq!(
        codes,
        [
            Value::Null,
            json!("invalid_base64"),
            Value::Null,
            json!("invalid_name"),
            json!("invalid_yjs"),
            Value::Null,
            Value::Null
        ],
        "{results}"
    );
    for i in [1, 3, 4] {
        assert!(
            results[i]["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{results}"
        );
    }
    assert_eq!(results[0], json!({ "seq": 2, "duplicate": false }));
    assert_eq!(results[2], json!({ "seq": 3, "duplicate": false }));
    assert_eq!(results[5], json!({ "seq": 4, "duplicate": false }));
    assert_eq!(results[6], json!({ "seq": 2, "duplicate": true }));
    let (changes, head) = ts.client.stream_all(C, 0);
    assert_eq!(head, 4);
    let ops: Vec<(&str, &str)> = changes
        .iter()
        .map(|c| {
            (
                c["documentId"].as_str().unwrap(),
                c["operationType"].as_str().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        ops,
        [
            ("a", "update"),
            ("a", "insert"),
            ("b", "update"),
            ("a", "delete")
        ]
    );
}

#[test]
fn a_bad_batch_is_refused_whole_and_stores_nothing() {
    let ts = TestServer::start_with(
        |_| {},
        ServerSettings {
            body_limit: 64 * 1024,
            ..ServerSettings::default()
        },
    );
    let p = Peer::new(1);
    let good = |i: usize| json!({ "op": "update", "documentId": "d", "crdtBytes": b64(&p.append("t", &i.to_string())) });
    let cases: Vec<(&str, Value, u16, &str)> = vec![
        (
            "no writes",
            json!({ "writes": [] }),
            400,
            "invalid_argument",
        ),
        (
            "1,001 writes",
            json!({ "writes": (0..1001).map(|_| json!({ "op": "update", "documentId": "d", "crdtBytes": "AAA=" })).collect::<Vec<_>>() }),
            400,
            "invalid_argument",
        ),
        ("no writes field", json!({}), 400, "invalid_json"),
        (
            "an unknown op",
            json!({ "writes": [{ "op": "snapshot", "documentId": "d", "crdtBytes": "AAA=" }] }),
            400,
            "invalid_json",
        ),
        (
            "a write without bytes",
            json!({ "writes": [good(0), { "op": "update", "documentId": "d" }] }),
            400,
            "invalid_json",
        ),
        (
            "over the body limit",
            json!({ "writes": [{ "op": "update", "documentId": "d", "crdtBytes": b64(&vec![0u8; 80 * 1024]) }] }),
            413,
            "too_large",
        ),
    ];
    for (what, body, status, code) in cases {
        let resp = ts.client.post_json(&format!("/v1/{C}/batch"), &body);
        assert_eq!(resp.status, status, "{what}: {}", resp.text());
        assert_eq!(resp.error_code(), code, "{what}");
    }
    let (changes, head) = ts.client.stream_all(C, 0);
    assert_eq!((changes.len(), head), (0, 0), "nothing was stored");
    // Exactly 1,000 is fine.
    let writes: Vec<Value> = (0..1000)
        .map(|_| json!({ "op": "update", "documentId": "d", "crdtBytes": "AAA=" }))
        .collect();
    let resp = batch(&ts, json!(writes));
    assert_eq!(resp.status, 200, "{}", resp.text());
    let results = resp.json()["results"].as_array().unwrap().clone();
    assert_eq!(results.len(), 1000);
    assert_eq!(results[999], json!({ "seq": 1000, "duplicate": false }));
}
