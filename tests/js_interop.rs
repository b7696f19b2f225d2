//! Real clients no one here wrote: `tests/js/interop.mjs` drives the server with the `yjs` npm
//! package (two peers converge; a third applies the recovery diff and the state). The server
//! runs in this process; the script runs under `node`.
//!
//! It runs twice: anonymously, and with authentication on (a token in `Authorization`, and in
//! `?token=` for the event stream as a browser's `EventSource` must send it).
//!
//! `tests/js/websocket.mjs` drives the websocket endpoint with stock `y-websocket` providers
//! (the `ws` package as Node 20's WebSocket), anonymously and with a write and a read token.
//!
//! Installs the locked `yjs` with `npm ci` on first run (so `cargo test --workspace` works from
//! a fresh clone); if that fails the test fails and says so rather than skipping.

use std::path::Path;
use std::process::Command;

use std::time::Duration;

use replicate::auth::{jwt, AuthSettings, KeyFiles, Right};
use replicate::ServerSettings;
use replicate_actors::{Clock, Config, SystemClock};

/// Runs `script` under node against `server` on `collection` with `args`; it must exit 0 and
/// print "checks passed" (interop.mjs: `[token]`; websocket.mjs: `[write-token read-token]`).
fn run_script(
    js: &Path,
    script: &str,
    server: &replicate::RunningServer,
    collection: &str,
    args: &[&str],
) {
    let output = Command::new("node")
        .arg(js.join(script))
        .arg(server.base_url())
        .arg(collection)
        .args(args)
        .current_dir(js)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run node ({e}): install node >= 20 and run `npm ci` in tests/js")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    println!("{stdout}");
    assert!(
        output.status.success(),
        "{script} failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("checks passed"),
        "{script} did not finish:\n{stdout}\n{stderr}"
    );
}

/// A server with authentication on (an HS256 secret in `dir`), and the secret to mint with.
fn auth_server(dir: &Path) -> (replicate::RunningServer, Vec<u8>) {
    let secret = dir.join("secret");
    std::fs::write(&secret, b"interop-secret-0123456789abcdef-0123\n").expect("secret");
    let settings = ServerSettings {
        auth: AuthSettings {
            keys: KeyFiles {
                secret_file: Some(secret.clone()),
                ..KeyFiles::default()
            },
            allow_anonymous: false,
        },
        ..ServerSettings::default()
    };
    let server =
        replicate::spawn_in_thread(Config::new(dir.join("data")), settings).expect("server starts");
    (server, jwt::secret_from_file(&secret).expect("secret"))
}

/// A token for `subject` with `right` on `collection`, valid for ten minutes.
fn mint(key: &[u8], subject: &str, collection: &str, right: Right) -> String {
    let grants = [(collection.to_string(), right)];
    let request = jwt::MintRequest {
        subject,
        grants: &grants,
        ttl: Duration::from_secs(600),
        issuer: None,
        audience: None,
    };
    jwt::mint(key, &request, SystemClock.now_millis()).expect("token")
}

fn js_dir() -> std::path::PathBuf {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !js.join("node_modules/y-websocket").is_dir() || !js.join("node_modules/ws").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&js)
            .status()
            .expect("npm runs (node >= 20 with npm is needed for this test)");
        assert!(status.success(), "`npm ci` in tests/js failed: {status}");
    }
    js
}

#[test]
fn yjs_clients_converge_and_recover_through_the_server() {
    let js = js_dir();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = replicate::spawn_in_thread(
        Config::new(dir.path().join("data")),
        ServerSettings::default(),
    )
    .expect("server starts");
    run_script(&js, "interop.mjs", &server, "js-interop", &[]);
    server.shutdown().expect("graceful shutdown");
}

/// The same clients with authentication on: a minted token in `Authorization` for every call
/// and in `?token=` for the event stream (what a browser's `EventSource` can send).
#[test]
fn yjs_clients_work_with_a_token() {
    let js = js_dir();
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, key) = auth_server(dir.path());
    let token = mint(&key, "interop", "js-auth", Right::Admin);
    run_script(&js, "interop.mjs", &server, "js-auth", &[&token]);
    server.shutdown().expect("graceful shutdown");
}

/// Stock y-websocket providers against `/v1/{c}/ws/{documentId}` (issue 10), anonymously.
#[test]
fn y_websocket_providers_sync_through_the_server() {
    let js = js_dir();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = replicate::spawn_in_thread(
        Config::new(dir.path().join("data")),
        ServerSettings::default(),
    )
    .expect("server starts");
    run_script(&js, "websocket.mjs", &server, "js-ws", &[]);
    server.shutdown().expect("graceful shutdown");
}

/// The same with authentication on: tokens as y-websocket's `params`, and a `read` grant
/// that may sync but not write.
#[test]
fn y_websocket_providers_carry_tokens_and_readers_cannot_write() {
    let js = js_dir();
    let dir = tempfile::tempdir().expect("temp dir");
    let (server, key) = auth_server(dir.path());
    let writer = mint(&key, "writer", "js-ws-auth", Right::Write);
    let reader = mint(&key, "reader", "js-ws-auth", Right::Read);
    run_script(
        &js,
        "websocket.mjs",
        &server,
        "js-ws-auth",
        &[&writer, &reader],
    );
    server.shutdown().expect("graceful shutdown");
}
