//! Real clients no one here wrote: `tests/js/interop.mjs` drives the server with the `yjs` npm
//! package (two peers converge; a third applies the recovery diff and the state). The server
//! runs in this process; the script runs under `node`.
//!
//! It runs twice: anonymously, and with authentication on (a token in `Authorization`, and in
//! `?token=` for the event stream as a browser's `EventSource` must send it).
//!
//! Installs the locked `yjs` with `npm ci` on first run (so `cargo test --workspace` works from
//! a fresh clone); if that fails the test fails and says so rather than skipping.

use std::path::Path;
use std::process::Command;

use std::time::Duration;

use replicate::auth::{jwt, AuthSettings, KeyFiles, Right};
use replicate::ServerSettings;
use replicate_actors::{Clock, Config, SystemClock};

/// Runs interop.mjs against `server` on `collection`, with `token` if given.
fn interop(js: &Path, server: &replicate::RunningServer, collection: &str, token: Option<&str>) {
    let output = Command::new("node")
        .arg(js.join("interop.mjs"))
        .arg(server.base_url())
        .arg(collection)
        .args(token)
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
        "interop.mjs failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(
        stdout.contains("checks passed"),
        "interop.mjs did not finish:\n{stdout}\n{stderr}"
    );
}

fn js_dir() -> std::path::PathBuf {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !js.join("node_modules/yjs").is_dir() {
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
    interop(&js, &server, "js-interop", None);
    server.shutdown().expect("graceful shutdown");
}

/// The same clients with authentication on: a minted token in `Authorization` for every call
/// and in `?token=` for the event stream (what a browser's `EventSource` can send).
#[test]
fn yjs_clients_work_with_a_token() {
    let js = js_dir();
    let dir = tempfile::tempdir().expect("temp dir");
    let secret = dir.path().join("secret");
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
    let server = replicate::spawn_in_thread(Config::new(dir.path().join("data")), settings)
        .expect("server starts");
    let grants = [("js-auth".to_string(), Right::Admin)];
    let token = jwt::mint(
        &jwt::secret_from_file(&secret).expect("secret"),
        &jwt::MintRequest {
            subject: "interop",
            grants: &grants,
            ttl: Duration::from_secs(600),
            issuer: None,
            audience: None,
        },
        SystemClock.now_millis(),
    )
    .expect("token");
    interop(&js, &server, "js-auth", Some(&token));
    server.shutdown().expect("graceful shutdown");
}
