//! Real clients no one here wrote: `tests/js/interop.mjs` drives the server with the `yjs` npm
//! package (two peers converge; a third applies the recovery diff and the state). The server
//! runs in this process; the script runs under `node`.
//!
//! Installs the locked `yjs` with `npm ci` on first run (so `cargo test --workspace` works from
//! a fresh clone); if that fails the test fails and says so rather than skipping.

use std::path::Path;
use std::process::Command;

use replicate::ServerSettings;
use replicate_actors::Config;

#[test]
fn yjs_clients_converge_and_recover_through_the_server() {
    let js = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/js");
    if !js.join("node_modules/yjs").is_dir() {
        let status = Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&js)
            .status()
            .expect("npm runs (node >= 20 with npm is needed for this test)");
        assert!(status.success(), "`npm ci` in tests/js failed: {status}");
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let server = replicate::spawn_in_thread(
        Config::new(dir.path().join("data")),
        ServerSettings::default(),
    )
    .expect("server starts");
    let output = Command::new("node")
        .arg(js.join("interop.mjs"))
        .arg(server.base_url())
        .arg("js-interop")
        .current_dir(&js)
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
    server.shutdown().expect("graceful shutdown");
}
