//! An application that embeds replicate's HTTP front in its own actix-web server and
//! authenticates with its own credentials instead of JWTs: a table of API keys sent in an
//! `X-Api-Key` header, each naming a principal and its grants.
//!
//! Everything else — which route needs which right, peers acking only as themselves, event
//! streams — is the front's, unchanged: an [`Authenticate`] only says who is calling.
//!
//! ```sh
//! cargo run --example api_keys          # serves on 127.0.0.1:8080 with ./data-api-keys
//! curl -H 'X-Api-Key: alice-key' http://127.0.0.1:8080/v1/todos/state
//! ```
//! `cargo test --example api_keys` runs its test.

use std::collections::HashMap;
use std::net::TcpListener;
use std::sync::Arc;

use actix_web::dev::RequestHead;
use actix_web::{App, HttpServer};
use replicate::auth::{Auth, Authenticate, Grants, Principal, Rejection, Right};
use replicate::{AppState, ServerSettings};
use replicate_actors::{Config, Replicate};
use tokio::sync::watch;

/// API key → the principal it authenticates. A real application would look keys up in its
/// database (quickly, from a cache: this runs on every request, on a worker thread).
struct ApiKeys(HashMap<String, Principal>);

impl ApiKeys {
    fn demo() -> ApiKeys {
        let principal = |sub: &str, grants: &[(&str, Right)]| Principal {
            subject: Some(sub.to_string()),
            grants: Grants::new(grants.iter().copied()).expect("few grants"),
            // API keys do not expire; event streams then run until the client leaves.
            expires_at_millis: None,
        };
        ApiKeys(HashMap::from([
            (
                "alice-key".to_string(),
                principal("alice", &[("todos", Right::Write)]),
            ),
            (
                "viewer-key".to_string(),
                principal("viewer", &[("todos", Right::Read)]),
            ),
            (
                "ops-key".to_string(),
                principal("ops", &[("*", Right::Admin)]),
            ),
        ]))
    }
}

impl Authenticate for ApiKeys {
    fn authenticate(&self, head: &RequestHead) -> Result<Principal, Rejection> {
        let key = head
            .headers()
            .get("x-api-key")
            .ok_or(Rejection::Missing)?
            .to_str()
            .map_err(|_| Rejection::Invalid)?;
        self.0.get(key).cloned().ok_or(Rejection::Invalid)
    }
}

/// Starts the front on `listener` with the API-key table; answers the server to await.
fn serve(listener: TcpListener, data: &std::path::Path) -> std::io::Result<actix_web::dev::Server> {
    let replicate = Replicate::open(Config::new(data)).map_err(std::io::Error::other)?;
    // Shutdown is the application's business here; the front only needs to be told.
    let (_stop, stopping) = watch::channel(false);
    let state = AppState::new(
        replicate,
        ServerSettings::default(),
        stopping,
        Auth::new(Arc::new(ApiKeys::demo())),
    );
    Ok(
        HttpServer::new(move || App::new().configure(|cfg| replicate::configure(cfg, &state)))
            .workers(1)
            .listen(listener)?
            .run(),
    )
}

#[actix_web::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:8080")?;
    println!("serving on http://127.0.0.1:8080 (keys: alice-key, viewer-key, ops-key)");
    serve(listener, std::path::Path::new("./data-api-keys"))?.await
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn api_keys_authenticate_and_grants_authorize() {
        actix::System::new().block_on(async {
            let dir = tempfile::tempdir().expect("temp dir");
            let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
            let base = format!("http://{}", listener.local_addr().expect("addr"));
            let server = serve(listener, &dir.path().join("data")).expect("serves");
            let handle = server.handle();
            actix_web::rt::spawn(server);
            let client = awc::Client::default();
            let status = |method: &str, path: &str, key: Option<&str>, body: serde_json::Value| {
                let mut req = match method {
                    "GET" => client.get(format!("{base}{path}")),
                    _ => client.post(format!("{base}{path}")),
                };
                if let Some(key) = key {
                    req = req.insert_header(("x-api-key", key));
                }
                async move {
                    let res = if body.is_null() {
                        req.send().await
                    } else {
                        req.send_json(&body).await
                    };
                    res.expect("answered").status().as_u16()
                }
            };
            let write = json!({ "documentId": "d", "crdtBytes": "AAA=" });
            let cases = [
                ("GET", "/v1/todos/state", None, json!(null), 401),
                ("GET", "/v1/todos/state", Some("stolen"), json!(null), 401),
                (
                    "GET",
                    "/v1/todos/state",
                    Some("viewer-key"),
                    json!(null),
                    200,
                ),
                (
                    "POST",
                    "/v1/todos/update",
                    Some("viewer-key"),
                    write.clone(),
                    403,
                ),
                (
                    "POST",
                    "/v1/todos/update",
                    Some("alice-key"),
                    write.clone(),
                    200,
                ),
                ("POST", "/v1/notes/update", Some("alice-key"), write, 403),
                (
                    "POST",
                    "/v1/todos/ack",
                    Some("alice-key"),
                    json!({ "peerId": "alice:laptop", "syncedSeq": 0 }),
                    200,
                ),
                (
                    "POST",
                    "/v1/todos/ack",
                    Some("alice-key"),
                    json!({ "peerId": "viewer", "syncedSeq": 0 }),
                    403,
                ),
                ("GET", "/stats", Some("alice-key"), json!(null), 403),
                ("GET", "/stats", Some("ops-key"), json!(null), 200),
                ("GET", "/healthz", None, json!(null), 200),
            ];
            for (method, path, key, body, want) in cases {
                let got = status(method, path, key, body).await;
                assert_eq!(got, want, "{method} {path} with {key:?}");
            }
            handle.stop(true).await;
        });
    }
}
