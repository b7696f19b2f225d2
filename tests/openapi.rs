//! The OpenAPI document (issue 12): what `GET /openapi.json` serves is the committed
//! `docs/openapi.json`, it describes exactly the routes the server mounts, and the findings
//! schemathesis (`.ci/schemathesis.sh`) made stay fixed.

mod common;

use std::collections::BTreeSet;

use common::TestServer;
use serde_json::Value;

const REGENERATE: &str =
    "regenerate it with `cargo run --bin replicate-server -- openapi > docs/openapi.json` \
     and commit the result";

fn committed() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/docs/openapi.json");
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("docs/openapi.json cannot be read ({e}); {REGENERATE}"))
}

#[test]
fn served_document_is_the_committed_one() {
    let server = TestServer::start();
    let served = server.client.get("/openapi.json");
    assert_eq!(served.status, 200, "{}", served.text());
    assert_eq!(
        served.header("content-type"),
        Some("application/json"),
        "content type"
    );
    let served = served.text();
    // Same bytes as the library builds and the `openapi` subcommand prints.
    assert_eq!(served, replicate::openapi::json());
    if served != committed() {
        panic!("docs/openapi.json differs from the document the server serves; {REGENERATE}");
    }
}

#[test]
fn document_is_public_even_with_authentication_on() {
    // `/openapi.json` is open like `/healthz`: Access::Open in the route table.
    let spec = replicate::routes::routes()
        .into_iter()
        .find(|r| r.path == "/openapi.json")
        .expect("/openapi.json is mounted");
    assert_eq!(spec.method, "GET");
    assert_eq!(spec.access, replicate::auth::extract::Access::Open);
}

#[test]
fn document_describes_exactly_the_mounted_routes() {
    let doc: Value = serde_json::from_str(replicate::openapi::json()).expect("JSON");
    assert_eq!(doc["openapi"], "3.1.0");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .expect("paths")
        .iter()
        .flat_map(|(path, item)| {
            item.as_object()
                .expect("path item")
                .keys()
                .map(move |method| (method.to_uppercase(), path.clone()))
        })
        .collect();
    let mounted: BTreeSet<(String, String)> = replicate::routes::routes()
        .into_iter()
        .map(|r| (r.method.to_string(), r.path.to_string()))
        .collect();
    assert_eq!(documented, mounted, "document and route table differ");

    // Every guarded operation declares the bearer / token schemes and its 401; open ones none.
    for spec in replicate::routes::routes() {
        let op = &doc["paths"][spec.path][spec.method.to_lowercase()];
        let open = spec.access == replicate::auth::extract::Access::Open;
        let security = &op["security"];
        if open {
            assert!(
                security.is_null() || security == &serde_json::json!([{}]),
                "{} {}: {security}",
                spec.method,
                spec.path
            );
        } else {
            assert_eq!(
                security,
                &serde_json::json!([{"bearer": []}, {"token": []}]),
                "{} {}",
                spec.method,
                spec.path
            );
            assert!(op["responses"]["401"].is_object(), "{}", spec.path);
        }
        assert!(op["responses"]["405"].is_object(), "{}", spec.path);
    }
    let limit = doc["paths"]["/v1/{c}/stream"]["get"]["parameters"]
        .as_array()
        .expect("parameters")
        .iter()
        .find(|p| p["name"] == "limit")
        .expect("limit");
    assert_eq!(
        (&limit["schema"]["minimum"], &limit["schema"]["maximum"]),
        (&Value::from(1), &Value::from(1000))
    );
    let name = &doc["components"]["schemas"]["Name"];
    assert_eq!(
        (&name["minLength"], &name["maxLength"]),
        (&Value::from(1), &Value::from(256))
    );
}

/// Finding: 405 answers had no `Allow` header (RFC 9110 §15.5.6: a 405 MUST name the
/// methods the target supports). Every path serves one method; the 405 names it.
#[test]
fn method_not_allowed_names_the_allowed_method() {
    let server = TestServer::start();
    for (method, path, allowed) in [
        ("DELETE", "/v1/todos/state", "GET"),
        ("GET", "/v1/todos/insert", "POST"),
        ("PUT", "/healthz", "GET"),
        ("POST", "/openapi.json", "GET"),
        ("TRACE", "/v1/todos/ws/doc-1", "GET"),
    ] {
        let res = server.client.request(method, path, &[], b"");
        assert_eq!(
            (res.status, res.error_code()),
            (405, "method_not_allowed".to_string()),
            "{method} {path}"
        );
        assert_eq!(res.header("allow"), Some(allowed), "{method} {path}");
    }
    // A rejected request stores nothing.
    let state = server.client.ok_get("/v1/todos/state");
    assert_eq!(state["cursor"], 0, "{state}");
}
