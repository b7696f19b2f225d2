//! Helpers for the client's integration tests: the real `replicate-server` binary as a child
//! process (SIGKILL, restart on the same port and data directory, wipe), a transport that can
//! be switched offline or made to lose answers, and yrs helpers.
//!
//! The server binary lives in another package of the workspace, so `CARGO_BIN_EXE_…` is not
//! available here. [`server_binary`] builds it once per test process with the cargo that runs
//! the tests, into the same target directory (fresh after `cargo test --workspace`, so it
//! only checks; after `cargo test -p replicate-client` alone the first run builds the
//! workspace's tests), or takes `REPLICATE_SERVER_BIN`.

#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use replicate_client::feed::{ChangeFeed, FeedItem};
use replicate_client::store::PendingWrite;
use replicate_client::wire::{Accepted, BatchResult, Page};
use replicate_client::{Client, Error, HttpTransport, Result, SyncOptions, Transport};
use yrs::{GetString, Text, Transact};

/// The `replicate-server` binary, built if needed (once per test process).
pub fn server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        if let Ok(p) = std::env::var("REPLICATE_SERVER_BIN") {
            return PathBuf::from(p);
        }
        // <target>/<profile>/deps/<this test> → <target>/<profile>
        let exe = std::env::current_exe().expect("test executable path");
        let profile_dir = exe
            .parent()
            .and_then(Path::parent)
            .expect("test executable sits in <target>/<profile>/deps")
            .to_path_buf();
        let target_dir = profile_dir.parent().expect("target dir").to_path_buf();
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("client/ sits in the workspace")
            .to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        // `--workspace --tests` resolves features exactly as `cargo test --workspace` does, so
        // after it (CI) this only checks freshness and leaves the root package's binary as
        // it was; `-p replicate` alone would build a second variant with other features.
        cmd.args(["build", "-q", "--workspace", "--tests"])
            .current_dir(&workspace)
            .env("CARGO_TARGET_DIR", &target_dir);
        if profile_dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let status = cmd.status().expect("cargo runs");
        assert!(status.success(), "building replicate-server failed");
        let bin = profile_dir.join(format!("replicate-server{}", std::env::consts::EXE_SUFFIX));
        assert!(bin.exists(), "{} missing after the build", bin.display());
        bin
    })
    .clone()
}

/// The real server as a child process on a fixed loopback port and data directory.
pub struct Server {
    child: Option<Child>,
    pub addr: SocketAddr,
    pub data: PathBuf,
    extra: Vec<String>,
}

fn spawn(bind: &str, data: &Path, extra: &[String]) -> Option<(Child, SocketAddr)> {
    let mut child = Command::new(server_binary())
        .args(["--bind", bind, "--data"])
        .arg(data)
        .args(extra)
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("replicate-server starts");
    let stderr = child.stderr.take().expect("stderr piped");
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut tx = Some(tx);
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("panic") {
                eprintln!("replicate-server: {line}");
            }
            if let Some(rest) = line.split("listening on http://").nth(1) {
                let addr: String = rest
                    .chars()
                    .take_while(|c| !c.is_whitespace() && *c != '"' && *c != '\u{1b}')
                    .collect();
                if let (Some(tx), Ok(addr)) = (tx.take(), addr.parse::<SocketAddr>()) {
                    let _ = tx.send(addr);
                }
            }
        }
    });
    match rx.recv_timeout(Duration::from_secs(60)) {
        Ok(addr) => Some((child, addr)),
        Err(_) => {
            let _ = child.kill();
            let _ = child.wait();
            None
        }
    }
}

impl Server {
    /// Starts on a free port over `data`.
    pub fn start(data: &Path) -> Server {
        Server::start_with(data, &[])
    }

    /// Starts with extra flags.
    pub fn start_with(data: &Path, extra: &[&str]) -> Server {
        let extra: Vec<String> = extra.iter().map(|s| s.to_string()).collect();
        let (child, addr) = spawn("127.0.0.1:0", data, &extra).expect("server starts");
        Server {
            child: Some(child),
            addr,
            data: data.to_path_buf(),
            extra,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// SIGKILL, no shutdown: what a crash does.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port (clients keep their URL), over `data`.
    pub fn restart_on(&mut self, data: &Path) {
        self.kill();
        self.data = data.to_path_buf();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some((child, addr)) = spawn(&self.addr.to_string(), data, &self.extra) {
                assert_eq!(addr, self.addr);
                self.child = Some(child);
                return;
            }
            assert!(
                Instant::now() < deadline,
                "server did not restart on {}",
                self.addr
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Restarts over the same data directory.
    pub fn restart(&mut self) {
        let data = self.data.clone();
        self.restart_on(&data);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Test tuning: short long polls (so closing is quick), small pages, eager local compaction.
pub fn options() -> SyncOptions {
    SyncOptions {
        long_poll: Duration::from_millis(300),
        page_limit: 50,
        local_compaction_threshold: 20,
        backoff_min: Duration::from_millis(20),
        backoff_max: Duration::from_millis(200),
        ack_interval: Duration::from_millis(10),
        ..SyncOptions::default()
    }
}

/// A transport around the real one that can be switched offline (every call fails as the
/// network would; an open event stream fails at its next item), can lose the answers of the
/// next batches after the server handled them, and counts what went through.
pub struct Flaky {
    inner: HttpTransport,
    pub offline: Arc<AtomicBool>,
    /// Batches whose answer is dropped after the server stored them.
    pub lose_answers: AtomicUsize,
    pub batches: AtomicUsize,
    /// Batches the server answered (200).
    pub batches_answered: AtomicUsize,
    /// Writes sent one per request (the fallback without the batch route).
    pub single_writes: AtomicUsize,
    pub writes_sent: AtomicUsize,
    /// Changes received in stream pages (long polls and read-backs).
    pub changes_received: AtomicUsize,
    /// Stream requests that waited for news (background long polls).
    pub long_polls: AtomicUsize,
    /// Event streams opened, and changes received on them.
    pub sse: Arc<SseCounts>,
}

/// What went through the event streams of a [`Flaky`].
#[derive(Default)]
pub struct SseCounts {
    pub connections: AtomicUsize,
    pub changes: AtomicUsize,
}

/// An event stream of a [`Flaky`]: counts changes, fails once the transport is offline.
struct CountedFeed {
    inner: Box<dyn ChangeFeed>,
    offline: Arc<AtomicBool>,
    counts: Arc<SseCounts>,
}

impl CountedFeed {
    fn count(&self, item: Result<Option<FeedItem>>) -> Result<Option<FeedItem>> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(Error::Network("offline (test)".into()));
        }
        if let Ok(Some(FeedItem::Change { .. })) = &item {
            self.counts.changes.fetch_add(1, Ordering::SeqCst);
        }
        item
    }
}

impl ChangeFeed for CountedFeed {
    fn next_item(&mut self) -> Result<Option<FeedItem>> {
        let item = self.inner.next_item();
        self.count(item)
    }
    fn ready_item(&mut self) -> Result<Option<FeedItem>> {
        let item = self.inner.ready_item();
        self.count(item)
    }
}

impl Flaky {
    pub fn new(url: &str) -> Arc<Flaky> {
        Arc::new(Flaky {
            inner: HttpTransport::new(url, None),
            offline: Arc::new(AtomicBool::new(false)),
            lose_answers: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
            batches_answered: AtomicUsize::new(0),
            single_writes: AtomicUsize::new(0),
            writes_sent: AtomicUsize::new(0),
            changes_received: AtomicUsize::new(0),
            long_polls: AtomicUsize::new(0),
            sse: Arc::default(),
        })
    }

    /// Through the real transport with a bearer token.
    pub fn with_token(url: &str, token: &str) -> Arc<Flaky> {
        let flaky = Flaky::new(url);
        flaky.set_token(token);
        flaky
    }

    /// Replaces the bearer token (what `Client::set_token` does for its own transport).
    pub fn set_token(&self, token: &str) {
        self.inner.set_token(Some(token.to_string()));
    }

    pub fn set_offline(&self, offline: bool) {
        self.offline.store(offline, Ordering::SeqCst);
    }

    fn check(&self) -> Result<()> {
        if self.offline.load(Ordering::SeqCst) {
            Err(Error::Network("offline (test)".into()))
        } else {
            Ok(())
        }
    }

    fn lose(&self) -> bool {
        self.lose_answers
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_ok()
    }
}

impl Transport for Flaky {
    fn batch(&self, c: &str, writes: &[PendingWrite]) -> Result<Vec<BatchResult>> {
        self.check()?;
        self.batches.fetch_add(1, Ordering::SeqCst);
        self.writes_sent.fetch_add(writes.len(), Ordering::SeqCst);
        let r = self.inner.batch(c, writes)?;
        self.batches_answered.fetch_add(1, Ordering::SeqCst);
        if self.lose() {
            return Err(Error::Network("answer lost (test)".into()));
        }
        Ok(r)
    }
    fn write(&self, c: &str, w: &PendingWrite) -> Result<Accepted> {
        self.check()?;
        self.writes_sent.fetch_add(1, Ordering::SeqCst);
        self.single_writes.fetch_add(1, Ordering::SeqCst);
        let r = self.inner.write(c, w)?;
        if self.lose() {
            return Err(Error::Network("answer lost (test)".into()));
        }
        Ok(r)
    }
    fn stream(&self, c: &str, cursor: u64, limit: u32, wait_ms: u64) -> Result<Page> {
        self.check()?;
        if wait_ms > 0 {
            self.long_polls.fetch_add(1, Ordering::SeqCst);
        }
        let p = self.inner.stream(c, cursor, limit, wait_ms)?;
        self.changes_received
            .fetch_add(p.changes.len(), Ordering::SeqCst);
        Ok(p)
    }
    fn events(&self, c: &str, cursor: u64, idle: Duration) -> Result<Box<dyn ChangeFeed>> {
        self.check()?;
        let inner = self.inner.events(c, cursor, idle)?;
        self.sse.connections.fetch_add(1, Ordering::SeqCst);
        Ok(Box::new(CountedFeed {
            inner,
            offline: self.offline.clone(),
            counts: self.sse.clone(),
        }))
    }
    fn ack(&self, c: &str, peer: &str, seq: u64) -> Result<u64> {
        self.check()?;
        self.inner.ack(c, peer, seq)
    }
    fn compact(&self, c: &str, d: &str) -> Result<()> {
        self.check()?;
        self.inner.compact(c, d)
    }
    fn recovery(&self, c: &str, d: &str, sv: &[u8]) -> Result<(Vec<u8>, u64)> {
        self.check()?;
        self.inner.recovery(c, d, sv)
    }
}

/// Logs of the client under test, shown with a failing test's output (`RUST_LOG` filters).
pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "replicate_client=info".into()),
        )
        .with_test_writer()
        .try_init();
}

/// Opens a client on `path` through `flaky`.
pub fn open(path: &Path, flaky: &Arc<Flaky>) -> Client {
    init_tracing();
    Client::open_with_transport(path, flaky.clone(), options()).expect("client opens")
}

/// Appends `s` to the text `body` of `doc` in `collection`.
pub fn append(client: &Client, collection: &str, doc: &str, s: &str) {
    let d = client
        .collection(collection)
        .and_then(|c| c.doc(doc))
        .expect("document opens");
    let text = d.doc().get_or_insert_text("body");
    d.edit(|txn| {
        let len = text.len(txn);
        text.insert(txn, len, s);
    })
    .expect("edit saved");
}

/// The text `body` of a document.
pub fn text(client: &Client, collection: &str, doc: &str) -> String {
    let d = client
        .collection(collection)
        .and_then(|c| c.doc(doc))
        .expect("document opens");
    let text = d.doc().get_or_insert_text("body");
    let txn = d.doc().transact();
    text.get_string(&txn)
}

/// Syncs until a round moves nothing and nothing is pending (bounded).
pub fn settle(client: &Client) {
    for _ in 0..50 {
        let reports = client.sync_once().expect("sync succeeds");
        if reports
            .iter()
            .all(|r| r.pulled == 0 && r.pushed == 0 && r.pending == 0)
        {
            return;
        }
    }
    panic!("sync did not settle");
}

/// Polls `f` until it holds (bounded).
pub fn eventually(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A tiny blocking HTTP call to the server for checks and admin actions (compaction with
/// `peerTimeout`), independent of the client under test.
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).ok();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).expect("send");
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read");
    let text = String::from_utf8_lossy(&raw);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("status line");
    let body = text.split("\r\n\r\n").nth(1).unwrap_or("");
    // Chunked bodies: keep the JSON object between the first '{' and the last '}'.
    let json = match (body.find('{'), body.rfind('}')) {
        (Some(a), Some(b)) if b >= a => serde_json::from_str(&body[a..=b]).unwrap_or_default(),
        _ => serde_json::Value::Null,
    };
    (status, json)
}

/// The server's head seq of a collection (its `state` cursor).
pub fn head(addr: SocketAddr, collection: &str) -> u64 {
    let (status, v) = http(addr, "GET", &format!("/v1/{collection}/state"), "");
    assert_eq!(status, 200, "{v}");
    v["cursor"].as_u64().expect("cursor")
}

/// Compacts a document on the server with every peer treated as inactive, so every delta
/// goes into the snapshot (what an operator's compaction of an idle collection does).
pub fn compact_all(addr: SocketAddr, collection: &str, doc: &str) {
    let (status, v) = http(
        addr,
        "POST",
        &format!("/v1/{collection}/compact"),
        &format!(r#"{{"documentId":"{doc}","peerTimeout":0}}"#),
    );
    assert_eq!(status, 200, "{v}");
}

/// A server over `dir/data` with authentication on, its secret in `dir/secret`; answers
/// the server and the secret file (for [`mint`]).
pub fn start_with_auth(dir: &Path) -> (Server, PathBuf) {
    let secret = dir.join("secret");
    std::fs::write(&secret, "a-test-secret-of-enough-length-0123456789\n").expect("secret");
    let secret_arg = secret.display().to_string();
    let server = Server::start_with(&dir.join("data"), &["--auth-secret-file", &secret_arg]);
    (server, secret)
}

/// A bearer token from the server binary's `token` command, signed with the secret in
/// `secret`, valid for `ttl` (`3s`, `1h`).
pub fn mint(secret: &Path, sub: &str, grant: &str, ttl: &str) -> String {
    let out = Command::new(server_binary())
        .args(["token", "--secret-file"])
        .arg(secret)
        .args(["--sub", sub, "--grant", grant, "--ttl", ttl])
        .output()
        .expect("token minted");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .expect("utf-8")
        .trim()
        .to_string()
}
