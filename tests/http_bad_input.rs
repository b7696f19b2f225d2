//! Bad input over HTTP: a table of malformed requests, each answered with its documented 4xx
//! and error code, after which nothing was stored and the server still serves; and a property
//! test posting random bodies and queries to every route: never a 5xx, never a dropped
//! connection.

mod common;

use common::{b64, Client, Peer, Resp, TestServer};
use proptest::prelude::*;
use replicate::ServerSettings;
use serde_json::{json, Value};

/// The collection the table writes to; it holds exactly one valid write throughout.
const C: &str = "bad";
const MAX_UPDATE_BYTES: usize = 64 * 1024;
const BODY_LIMIT: usize = 1024 * 1024;

fn server() -> TestServer {
    let settings = ServerSettings {
        body_limit: BODY_LIMIT,
        ..ServerSettings::default()
    };
    TestServer::start_with(|c| c.max_update_bytes = MAX_UPDATE_BYTES, settings)
}

/// A request of the table: method, path, body.
struct Case {
    what: &'static str,
    method: &'static str,
    path: String,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    status: u16,
    code: &'static str,
}

fn post(
    what: &'static str,
    route: &str,
    body: impl Into<Vec<u8>>,
    status: u16,
    code: &'static str,
) -> Case {
    Case {
        what,
        method: "POST",
        path: format!("/v1/{C}/{route}"),
        body: body.into(),
        headers: vec![],
        status,
        code,
    }
}

fn post_json(
    what: &'static str,
    route: &str,
    body: Value,
    status: u16,
    code: &'static str,
) -> Case {
    post(what, route, body.to_string(), status, code)
}

fn get(what: &'static str, path: String, status: u16, code: &'static str) -> Case {
    Case {
        what,
        method: "GET",
        path,
        body: vec![],
        headers: vec![],
        status,
        code,
    }
}

fn percent_encode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

fn write_body(doc: &str, bytes: &str) -> Value {
    json!({ "documentId": doc, "crdtBytes": bytes })
}

fn cases(valid_update: &str) -> Vec<Case> {
    let long_name = "n".repeat(10 * 1024);
    let not_yjs = b64(b"hello, this is not a Yjs update");
    let mut cases = Vec::new();
    for route in ["insert", "update", "delete"] {
        cases.extend([
            post(
                "truncated JSON",
                route,
                r#"{"documentId":"d","#,
                400,
                "invalid_json",
            ),
            post("not JSON", route, "documentId=d", 400, "invalid_json"),
            post("empty body", route, "", 400, "invalid_json"),
            post("JSON array", route, "[1,2]", 400, "invalid_json"),
            post_json(
                "missing crdtBytes",
                route,
                json!({ "documentId": "d" }),
                400,
                "invalid_json",
            ),
            post_json(
                "missing documentId",
                route,
                json!({ "crdtBytes": valid_update }),
                400,
                "invalid_json",
            ),
            post_json(
                "crdtBytes is a number",
                route,
                json!({ "documentId": "d", "crdtBytes": 5 }),
                400,
                "invalid_json",
            ),
            post_json(
                "documentId is null",
                route,
                json!({ "documentId": null, "crdtBytes": valid_update }),
                400,
                "invalid_json",
            ),
            post_json(
                "base64 with junk",
                route,
                write_body("d", "!!!not base64!!!"),
                400,
                "invalid_base64",
            ),
            post_json(
                "unpadded base64",
                route,
                write_body("d", "AAA"),
                400,
                "invalid_base64",
            ),
            post_json(
                "url-safe base64",
                route,
                write_body("d", "-_-_"),
                400,
                "invalid_base64",
            ),
            post_json(
                "bytes that are not Yjs",
                route,
                write_body("d", &not_yjs),
                422,
                "invalid_yjs",
            ),
            post_json(
                "empty bytes",
                route,
                write_body("d", ""),
                422,
                "invalid_yjs",
            ),
            post_json(
                "0xff bytes",
                route,
                write_body("d", &b64(&[0xff; 16])),
                422,
                "invalid_yjs",
            ),
            post_json(
                "huge declared counts",
                route,
                write_body("d", &b64(&[0xff, 0xff, 0xff, 0xff, 0x0f, 1])),
                422,
                "invalid_yjs",
            ),
            post_json(
                "update over max_update_bytes",
                route,
                write_body("d", &b64(&vec![0; MAX_UPDATE_BYTES + 1])),
                413,
                "too_large",
            ),
            post_json(
                "empty documentId",
                route,
                write_body("", valid_update),
                400,
                "invalid_name",
            ),
            post_json(
                "10 KB documentId",
                route,
                write_body(&long_name, valid_update),
                400,
                "invalid_name",
            ),
            post_json(
                "control char in documentId",
                route,
                write_body("a\u{1}b", valid_update),
                400,
                "invalid_name",
            ),
            post_json(
                "empty opId",
                route,
                json!({ "documentId": "d", "crdtBytes": valid_update, "opId": "" }),
                400,
                "invalid_name",
            ),
        ]);
    }
    let write = write_body("d", valid_update).to_string();
    cases.extend([
        Case {
            path: "/v1//insert".into(),
            ..post(
                "empty collection",
                "insert",
                write.clone(),
                400,
                "invalid_name",
            )
        },
        Case {
            path: format!("/v1/{long_name}/insert"),
            ..post(
                "10 KB collection",
                "insert",
                write.clone(),
                400,
                "invalid_name",
            )
        },
        Case {
            path: "/v1/a%0Ab/insert".into(),
            ..post(
                "newline in collection",
                "insert",
                write.clone(),
                400,
                "invalid_name",
            )
        },
        Case {
            path: "/v1/a%FFb/insert".into(),
            ..post(
                "invalid UTF-8 collection",
                "insert",
                write.clone(),
                400,
                "invalid_name",
            )
        },
        post(
            "40 MB body",
            "insert",
            vec![b' '; 40 * 1024 * 1024],
            413,
            "too_large",
        ),
        post(
            "body over the limit",
            "insert",
            format!(
                r#"{{"documentId":"d","crdtBytes":"{}"}}"#,
                "A".repeat(BODY_LIMIT)
            ),
            413,
            "too_large",
        ),
    ]);
    let stream = |q: &str| format!("/v1/{C}/stream?{q}");
    for (param, value, code) in [
        ("cursor", "-1", "invalid_argument"),
        ("cursor", "abc", "invalid_argument"),
        ("cursor", "1.5", "invalid_argument"),
        ("cursor", "99999999999999999999999999", "invalid_argument"),
        ("cursor", "0x10", "invalid_argument"),
        ("limit", "0", "invalid_argument"),
        ("limit", "1001", "invalid_argument"),
        ("limit", "-5", "invalid_argument"),
        ("limit", "ten", "invalid_argument"),
        ("limit", "18446744073709551616", "invalid_argument"),
        ("waitMs", "-1", "invalid_argument"),
        ("waitMs", "soon", "invalid_argument"),
        ("sizeThreshold", "-1", "invalid_argument"),
    ] {
        cases.push(get(
            "bad stream number",
            stream(&format!("{param}={value}")),
            400,
            code,
        ));
        if param == "cursor" {
            cases.push(get(
                "bad events cursor",
                format!("/v1/{C}/events?cursor={value}"),
                400,
                code,
            ));
        }
    }
    cases.extend([
        get(
            "repeated cursor",
            stream("cursor=0&cursor=1"),
            400,
            "invalid_query",
        ),
        get("cursor above head", stream("cursor=2"), 422, "cursor_ahead"),
        get(
            "events cursor above head",
            format!("/v1/{C}/events?cursor=2"),
            422,
            "cursor_ahead",
        ),
        get(
            "stream on an empty name",
            "/v1//stream".into(),
            400,
            "invalid_name",
        ),
        get(
            "state on a 10 KB name",
            format!("/v1/{long_name}/state"),
            400,
            "invalid_name",
        ),
        get(
            "events on a control-char name",
            format!("/v1/{}/events", percent_encode("a\u{7}")),
            400,
            "invalid_name",
        ),
        Case {
            headers: vec![("Last-Event-ID", "seven".into())],
            ..get(
                "non-numeric Last-Event-ID",
                format!("/v1/{C}/events"),
                400,
                "invalid_argument",
            )
        },
        Case {
            headers: vec![("Last-Event-ID", "-3".into())],
            ..get(
                "negative Last-Event-ID",
                format!("/v1/{C}/events"),
                400,
                "invalid_argument",
            )
        },
    ]);
    for (what, body, status, code) in [
        (
            "negative syncedSeq",
            json!({ "peerId": "p", "syncedSeq": -1 }),
            400,
            "invalid_argument",
        ),
        (
            "fractional syncedSeq",
            json!({ "peerId": "p", "syncedSeq": 1.5 }),
            400,
            "invalid_argument",
        ),
        (
            "huge syncedSeq",
            json!({ "peerId": "p", "syncedSeq": 1e30 }),
            400,
            "invalid_argument",
        ),
        (
            "string syncedSeq",
            json!({ "peerId": "p", "syncedSeq": "1" }),
            400,
            "invalid_json",
        ),
        (
            "missing syncedSeq",
            json!({ "peerId": "p" }),
            400,
            "invalid_json",
        ),
        (
            "missing peerId",
            json!({ "syncedSeq": 1 }),
            400,
            "invalid_json",
        ),
        (
            "empty peerId",
            json!({ "peerId": "", "syncedSeq": 1 }),
            400,
            "invalid_name",
        ),
        (
            "syncedSeq above head",
            json!({ "peerId": "p", "syncedSeq": 2 }),
            422,
            "ack_ahead",
        ),
    ] {
        cases.push(post_json(what, "ack", body, status, code));
    }
    cases.push(post(
        "ack with 2^64 syncedSeq",
        "ack",
        r#"{"peerId":"p","syncedSeq":18446744073709551616}"#,
        400,
        "invalid_argument",
    ));
    for (what, body, status, code) in [
        ("compact without documentId", json!({}), 400, "invalid_json"),
        (
            "compact empty documentId",
            json!({ "documentId": "" }),
            400,
            "invalid_name",
        ),
        (
            "snapshotBytes bad base64",
            json!({ "documentId": "d", "snapshotBytes": "%%%" }),
            400,
            "invalid_base64",
        ),
        (
            "snapshotBytes not Yjs",
            json!({ "documentId": "d", "snapshotBytes": not_yjs }),
            422,
            "invalid_yjs",
        ),
        (
            "stateVector bad base64",
            json!({ "documentId": "d", "stateVector": "A" }),
            400,
            "invalid_base64",
        ),
        (
            "stateVector malformed",
            json!({ "documentId": "d", "stateVector": b64(&[5, 1]) }),
            422,
            "invalid_yjs",
        ),
        (
            "negative peerTimeout",
            json!({ "documentId": "d", "peerTimeout": -1 }),
            400,
            "invalid_argument",
        ),
        (
            "fractional peerTimeout",
            json!({ "documentId": "d", "peerTimeout": 0.5 }),
            400,
            "invalid_argument",
        ),
    ] {
        cases.push(post_json(what, "compact", body, status, code));
    }
    for (what, body, status, code) in [
        (
            "recovery without stateVector",
            json!({}),
            400,
            "invalid_json",
        ),
        (
            "recovery stateVector bad base64",
            json!({ "stateVector": "***" }),
            400,
            "invalid_base64",
        ),
        (
            "recovery stateVector truncated",
            json!({ "stateVector": b64(&[1]) }),
            422,
            "invalid_yjs",
        ),
        (
            "recovery stateVector 0xff",
            json!({ "stateVector": b64(&[0xff; 12]) }),
            422,
            "invalid_yjs",
        ),
        (
            "recovery stateVector huge count",
            json!({ "stateVector": b64(&[0xff, 0xff, 0xff, 0xff, 0x0f]) }),
            422,
            "invalid_yjs",
        ),
        (
            "recovery empty documentId",
            json!({ "stateVector": "AA==", "documentId": "" }),
            400,
            "invalid_name",
        ),
    ] {
        cases.push(post_json(what, "recovery", body, status, code));
    }
    cases
}

fn send(client: &Client, case: &Case) -> Resp {
    let mut headers: Vec<(&str, &str)> =
        case.headers.iter().map(|(k, v)| (*k, v.as_str())).collect();
    if case.method == "POST" {
        headers.push(("Content-Type", "application/json"));
    }
    client.request(case.method, &case.path, &headers, &case.body)
}

/// What must not change: the collection's one write, and no other collection exists.
fn assert_nothing_stored(client: &Client, first: &Value) {
    let page = client.ok_get(&format!("/v1/{C}/stream?cursor=0"));
    assert_eq!(
        page["changes"],
        json!([first]),
        "the bad requests stored something: {page}"
    );
    let stats = client.ok_get(&format!("/v1/{C}/stats"));
    assert_eq!(
        (stats["appends"].as_u64(), stats["durableSeq"].as_u64()),
        (Some(1), Some(1)),
        "{stats}"
    );
    assert_eq!(stats["peers"], 0, "a rejected ack recorded a peer: {stats}");
    let all = client.ok_get("/stats");
    let names: Vec<&str> = all["collections"]
        .as_array()
        .expect("collections")
        .iter()
        .filter_map(|c| c["collection"].as_str())
        .collect();
    assert_eq!(
        names,
        vec![C],
        "a rejected request started a collection: {all}"
    );
}

#[test]
fn bad_input_table_answers_4xx_and_stores_nothing() {
    let server = server();
    let client = server.client;
    let peer = Peer::new(1);
    let valid = b64(&peer.append("d", "x"));
    assert_eq!(client.write(C, "insert", "d", &common::unb64(&valid)), 1);
    let first = client.ok_get(&format!("/v1/{C}/stream?cursor=0"))["changes"][0].clone();

    let mut failures = Vec::new();
    for case in cases(&b64(&peer.append("d", "y"))) {
        let r = send(&client, &case);
        let code = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .and_then(|v| v["error"]["code"].as_str().map(str::to_string));
        let message_ok = serde_json::from_slice::<Value>(&r.body)
            .ok()
            .is_some_and(|v| {
                v["error"]["message"]
                    .as_str()
                    .is_some_and(|m| !m.is_empty())
            });
        if r.status != case.status || code.as_deref() != Some(case.code) || !message_ok {
            failures.push(format!(
                "{} {} ({}): expected {} {}, got {} {}",
                case.method,
                &case.path[..case.path.len().min(60)],
                case.what,
                case.status,
                case.code,
                r.status,
                r.text()
            ));
        }
        assert_eq!(
            client.get("/healthz").status,
            200,
            "server stopped serving after {}",
            case.what
        );
    }
    assert!(
        failures.is_empty(),
        "{} cases failed:\n{}",
        failures.len(),
        failures.join("\n")
    );
    assert_nothing_stored(&client, &first);

    // And it still takes good writes, numbered right after the last good one.
    assert_eq!(client.write(C, "update", "d", &peer.append("d", "z")), 2);
}

/// A JSON value of arbitrary shape, with the field names the routes read.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_map(|f| json!(f)),
        Just(json!(u64::MAX)),
        ".{0,40}".prop_map(Value::String),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(|b| Value::String(b64(&b))),
        prop_oneof![Just("AAA="), Just("AA=="), Just("AQ=="), Just("")]
            .prop_map(|s| Value::String(s.into())),
    ];
    leaf.prop_recursive(2, 16, 4, |inner| {
        let fields = prop_oneof![
            Just("documentId"),
            Just("crdtBytes"),
            Just("opId"),
            Just("peerId"),
            Just("syncedSeq"),
            Just("snapshotBytes"),
            Just("stateVector"),
            Just("peerTimeout"),
            Just("other"),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(fields.prop_map(str::to_string), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A request body: JSON-ish or raw bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        prop::collection::vec(any::<u8>(), 0..256),
        ".{0,80}".prop_map(String::into_bytes),
    ]
}

/// A query string built from the names the routes read and arbitrary values.
fn query() -> impl Strategy<Value = String> {
    let name = prop_oneof![
        prop::sample::select(&["cursor", "limit", "sizeThreshold", "waitMs", "x"][..])
            .prop_map(str::to_string),
        "[a-z%=&]{0,6}",
    ];
    let value = prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        (0u64..3).prop_map(|n| n.to_string()),
        "[ -~]{0,12}".prop_map(|s| percent_encode(&s)),
        "%[0-9A-F]{2}",
    ];
    prop::collection::vec((name, value), 0..4).prop_map(|pairs| {
        pairs
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join("&")
    })
}

fn collection() -> impl Strategy<Value = String> {
    prop_oneof![4 => Just(C.to_string()), 1 => ".{0,20}".prop_map(|s| percent_encode(&s)), 1 => "%[0-9A-F]{2}"]
}

const POST_ROUTES: &[&str] = &["insert", "update", "delete", "ack", "compact", "recovery"];
const GET_ROUTES: &[&str] = &["stream", "state", "events", "stats"];

proptest! {
    #![proptest_config(ProptestConfig { cases: 192, failure_persistence: None, ..ProptestConfig::default() })]

    /// Random bodies to every POST route and random queries to every GET route: always an
    /// answer, never a 5xx, and errors always have the error shape.
    #[test]
    fn random_requests_never_get_a_5xx(
        post_route in prop::sample::select(POST_ROUTES),
        get_route in prop::sample::select(GET_ROUTES),
        c in collection(),
        body in body(),
        q in query(),
    ) {
        let client = fuzz_client();
        let r = client.try_request("POST", &format!("/v1/{c}/{post_route}"), &[("Content-Type", "application/json")], &body)
            .map_err(|e| TestCaseError::fail(format!("POST {post_route}: no answer: {e}")))?;
        check(&r, &format!("POST /v1/{c}/{post_route} {}", String::from_utf8_lossy(&body)))?;

        // `events` would stream forever on success: ask it only for the head of the answer.
        let path = format!("/v1/{c}/{get_route}?{q}");
        let r = if get_route == "events" {
            let sse = client.events(&path, None);
            Resp { status: sse.status, headers: sse.headers.clone(), body: Vec::new() }
        } else {
            client.try_request("GET", &path, &[], b"").map_err(|e| TestCaseError::fail(format!("GET {path}: no answer: {e}")))?
        };
        if get_route == "events" {
            prop_assert!(r.status < 500, "GET {path}: {}", r.status);
        } else {
            check(&r, &format!("GET {path}"))?;
        }
    }
}

fn check(r: &Resp, what: &str) -> Result<(), TestCaseError> {
    prop_assert!(r.status < 500, "{what}: {} {}", r.status, r.text());
    if r.status >= 400 {
        let v: Value = serde_json::from_slice(&r.body).map_err(|e| {
            TestCaseError::fail(format!("{what}: non-JSON error ({e}): {}", r.text()))
        })?;
        prop_assert!(
            v["error"]["code"].is_string() && v["error"]["message"].is_string(),
            "{what}: {v}"
        );
    }
    Ok(())
}

/// One server for every proptest case (the cases share it, as real traffic would).
fn fuzz_client() -> Client {
    use std::sync::OnceLock;
    static SERVER: OnceLock<(Client, std::sync::Mutex<TestServer>)> = OnceLock::new();
    SERVER
        .get_or_init(|| {
            let s = server();
            let client = s.client;
            client.write(C, "insert", "d", &Peer::new(1).append("d", "x"));
            (client, std::sync::Mutex::new(s))
        })
        .0
}

#[test]
fn server_still_serves_after_random_requests() {
    // Runs in the same process as the property test; whichever order, the server answers.
    let client = fuzz_client();
    assert_eq!(client.get("/healthz").status, 200);
    let before = client.ok_get(&format!("/v1/{C}/stream?cursor=0"))["cursor"]
        .as_u64()
        .expect("cursor");
    let seq = client.write(C, "update", "d", &Peer::new(99).append("d", "still here"));
    assert!(seq > before);
}
