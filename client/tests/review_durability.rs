//! Adversarial review: the client's own durability and bounds as an app uses it. Edits made
//! offline and the app killed (SIGKILL of a real child process, or a drop between a push and
//! its answer, or between a pull and the stored cursor), retries after lost answers, 5xx,
//! server restarts and compactions mid-sync, two clients on one file, many threads, and how
//! big the local file grows. The invariants: every edit the app was told is saved ends up on
//! the server exactly once (one delta each: the server's head counts them), every replica
//! converges, and no saved edit is lost by a restart.

mod common;

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{append, eventually, head, http, init_tracing, Server};
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use replicate_client::feed::ChangeFeed;
use replicate_client::store::{PendingWrite, Store};
use replicate_client::wire::{Accepted, BatchResult, Page};
use replicate_client::{Client, Error, HttpTransport, Result, SyncOptions, Transport};
use yrs::{GetString, Text, Transact};

// ---------------------------------------------------------------------------------------
// A transport with scripted faults around the real one.
// ---------------------------------------------------------------------------------------

/// Faults, each consumed by the next call it applies to:
/// - `lose_push`: the server handles the push, its answer is lost (network error);
/// - `fail_5xx`: the next calls of any kind fail with 503 before reaching the server;
/// - `lose_pull`: the server answers a stream page, the answer is lost before the client
///   stores it (a crash between the pull and the stored cursor, seen from the file).
struct Faulty {
    inner: HttpTransport,
    offline: std::sync::atomic::AtomicBool,
    lose_push: AtomicUsize,
    fail_5xx: AtomicUsize,
    lose_pull: AtomicUsize,
}

impl Faulty {
    fn new(url: &str) -> Arc<Faulty> {
        Arc::new(Faulty {
            inner: HttpTransport::new(url, None),
            offline: std::sync::atomic::AtomicBool::new(false),
            lose_push: AtomicUsize::new(0),
            fail_5xx: AtomicUsize::new(0),
            lose_pull: AtomicUsize::new(0),
        })
    }

    fn take(n: &AtomicUsize) -> bool {
        n.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |v| v.checked_sub(1))
            .is_ok()
    }

    fn before(&self) -> Result<()> {
        if self.offline.load(Ordering::SeqCst) {
            return Err(Error::Network("offline (review)".into()));
        }
        if Faulty::take(&self.fail_5xx) {
            return Err(Error::Server {
                status: 503,
                code: "unavailable".into(),
                message: "scripted 503 (review)".into(),
            });
        }
        Ok(())
    }
}

impl Transport for Faulty {
    fn batch(&self, c: &str, writes: &[PendingWrite]) -> Result<Vec<BatchResult>> {
        self.before()?;
        let r = self.inner.batch(c, writes)?;
        if Faulty::take(&self.lose_push) {
            return Err(Error::Network("answer lost (review)".into()));
        }
        Ok(r)
    }
    fn write(&self, c: &str, w: &PendingWrite) -> Result<Accepted> {
        self.before()?;
        let r = self.inner.write(c, w)?;
        if Faulty::take(&self.lose_push) {
            return Err(Error::Network("answer lost (review)".into()));
        }
        Ok(r)
    }
    fn stream(&self, c: &str, cursor: u64, limit: u32, wait_ms: u64) -> Result<Page> {
        self.before()?;
        let p = self.inner.stream(c, cursor, limit, wait_ms)?;
        if Faulty::take(&self.lose_pull) {
            return Err(Error::Network("page lost (review)".into()));
        }
        Ok(p)
    }
    fn events(&self, c: &str, cursor: u64, idle: Duration) -> Result<Box<dyn ChangeFeed>> {
        self.before()?;
        self.inner.events(c, cursor, idle)
    }
    fn ack(&self, c: &str, peer: &str, seq: u64) -> Result<u64> {
        self.before()?;
        self.inner.ack(c, peer, seq)
    }
    fn compact(&self, c: &str, d: &str) -> Result<()> {
        self.before()?;
        self.inner.compact(c, d)
    }
    fn recovery(&self, c: &str, d: &str, sv: &[u8]) -> Result<(Vec<u8>, u64)> {
        self.before()?;
        self.inner.recovery(c, d, sv)
    }
}

// ---------------------------------------------------------------------------------------
// Helpers.
// ---------------------------------------------------------------------------------------

fn opts() -> SyncOptions {
    SyncOptions {
        fsync_edits: false,
        ..common::options()
    }
}

/// The text `body` of a document.
fn body(client: &Client, c: &str, d: &str) -> String {
    let doc = client.collection(c).and_then(|c| c.doc(d)).expect("doc");
    let text = doc.doc().get_or_insert_text("body");
    let txn = doc.doc().transact();
    text.get_string(&txn)
}

/// Every `<token>` in `s`, with how often it occurs.
fn tokens(s: &str) -> BTreeMap<String, usize> {
    let mut out = BTreeMap::new();
    for part in s.split('<').skip(1) {
        let tok = part.split('>').next().unwrap_or("").to_string();
        *out.entry(tok).or_insert(0) += 1;
    }
    out
}

/// `sync_once` until a round moves nothing and nothing is pending (bounded), failing on an
/// error only if it persists.
fn settle(client: &Client) {
    let mut errors = 0;
    for _ in 0..100 {
        match client.sync_once() {
            Ok(reports) => {
                if reports
                    .iter()
                    .all(|r| r.pulled == 0 && r.pushed == 0 && r.pending == 0)
                {
                    return;
                }
            }
            Err(e) => {
                errors += 1;
                assert!(errors < 20, "sync keeps failing: {e}");
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
    panic!("sync did not settle");
}

/// Reads the server's view of `docs` through a brand-new client on a fresh file.
fn server_view(dir: &Path, url: &str, c: &str, docs: &[String]) -> BTreeMap<String, String> {
    let path = dir.join(format!("probe-{}.sqlite", rand_suffix()));
    let probe = Client::open_with_transport(&path, Arc::new(HttpTransport::new(url, None)), opts())
        .expect("probe opens");
    probe.collection(c).expect("collection");
    settle(&probe);
    docs.iter()
        .map(|d| (d.clone(), body(&probe, c, d)))
        .collect()
}

fn rand_suffix() -> u64 {
    static N: AtomicUsize = AtomicUsize::new(0);
    (std::process::id() as u64) << 20 | N.fetch_add(1, Ordering::SeqCst) as u64
}

/// Checks that every token in `expected` is on the server exactly once, that nothing else is,
/// and that the server stored exactly one delta per edit (`head`).
fn check_exactly_once(
    server: &Server,
    dir: &Path,
    c: &str,
    docs: &[String],
    expected: &[String],
    may_also_contain: &[String],
) -> BTreeMap<String, String> {
    let view = server_view(dir, &server.url(), c, docs);
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    for text in view.values() {
        for (t, n) in tokens(text) {
            *seen.entry(t).or_insert(0) += n;
        }
    }
    for t in expected {
        assert_eq!(
            seen.get(t).copied(),
            Some(1),
            "edit <{t}> must be on the server exactly once; server view {view:?}"
        );
    }
    for (t, n) in &seen {
        assert!(
            *n == 1 && (expected.contains(t) || may_also_contain.contains(t)),
            "token <{t}> x{n} on the server was never made, or is there twice"
        );
    }
    let h = head(server.addr, c);
    assert_eq!(
        h as usize,
        seen.len(),
        "the server stored {h} deltas for {} edits: an edit was stored more than once \
         (or one is missing)",
        seen.len()
    );
    view
}

/// Compacts a document with every peer inactive (a document the server does not hold yet
/// is fine).
fn compact(addr: std::net::SocketAddr, c: &str, d: &str) {
    let (status, v) = http(
        addr,
        "POST",
        &format!("/v1/{c}/compact"),
        &format!(r#"{{"documentId":"{d}","peerTimeout":0}}"#),
    );
    assert!(status == 200 || status == 404, "compact: {status} {v}");
}

fn server() -> (tempfile::TempDir, Server) {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&dir.path().join("data"));
    (dir, server)
}

// ---------------------------------------------------------------------------------------
// 1. A proptest schedule: one app client with lost answers, 5xx, lost pages, offline spells,
//    drops without close, server SIGKILL + restart and full compactions, beside a second
//    client editing the same documents. Exactly once, and convergence.
// ---------------------------------------------------------------------------------------

const DOCS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// The app client appends a fresh token to a document.
    Edit(usize),
    /// The other client appends a fresh token and syncs.
    Other(usize),
    LosePush,
    Fail5xx(usize),
    LosePull,
    Offline(bool),
    Sync,
    /// Drop the app client without close, open it again from its file.
    Restart,
    /// Compact a document on the server with every peer inactive.
    Compact(usize),
    /// SIGKILL the server and start it again on its data.
    ServerRestart,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        8 => (0..DOCS).prop_map(Op::Edit),
        2 => (0..DOCS).prop_map(Op::Other),
        2 => Just(Op::LosePush),
        1 => (1..4usize).prop_map(Op::Fail5xx),
        1 => Just(Op::LosePull),
        1 => any::<bool>().prop_map(Op::Offline),
        4 => Just(Op::Sync),
        2 => Just(Op::Restart),
        1 => (0..DOCS).prop_map(Op::Compact),
        1 => Just(Op::ServerRestart),
    ]
}

fn run_schedule(server: &mut Server, dir: &Path, case: usize, ops: &[Op]) {
    let c = format!("sched{case}");
    let docs: Vec<String> = (0..DOCS).map(|d| format!("d{d}")).collect();
    let a_path = dir.join(format!("a{case}.sqlite"));
    let b_path = dir.join(format!("b{case}.sqlite"));
    let url = server.url();
    let mut a_net = Faulty::new(&url);
    let mut a = Some(Client::open_with_transport(&a_path, a_net.clone(), opts()).expect("a"));
    a.as_ref().unwrap().collection(&c).expect("collection");
    let b = Client::open_with_transport(&b_path, Arc::new(HttpTransport::new(&url, None)), opts())
        .expect("b");
    b.collection(&c).expect("collection");
    let mut made = Vec::new();
    for (i, op) in ops.iter().enumerate() {
        let a_ref = a.as_ref().unwrap();
        match op {
            Op::Edit(d) => {
                let t = format!("a{i}");
                append(a_ref, &c, &docs[*d], &format!("<{t}>"));
                made.push(t);
            }
            Op::Other(d) => {
                let t = format!("b{i}");
                append(&b, &c, &docs[*d], &format!("<{t}>"));
                made.push(t);
                settle(&b);
            }
            Op::LosePush => {
                a_net.lose_push.fetch_add(1, Ordering::SeqCst);
            }
            Op::Fail5xx(n) => {
                a_net.fail_5xx.fetch_add(*n, Ordering::SeqCst);
            }
            Op::LosePull => {
                a_net.lose_pull.fetch_add(1, Ordering::SeqCst);
            }
            Op::Offline(off) => a_net.offline.store(*off, Ordering::SeqCst),
            Op::Sync => {
                let _ = a_ref.sync_once();
            }
            Op::Restart => {
                drop(a.take());
                let offline = a_net.offline.load(Ordering::SeqCst);
                a_net = Faulty::new(&url);
                a_net.offline.store(offline, Ordering::SeqCst);
                a = Some(Client::open_with_transport(&a_path, a_net.clone(), opts()).expect("a"));
                a.as_ref().unwrap().collection(&c).expect("collection");
            }
            Op::Compact(d) => compact(server.addr, &c, &docs[*d]),
            Op::ServerRestart => server.restart(),
        }
    }
    // Everyone online, no more faults.
    a_net.offline.store(false, Ordering::SeqCst);
    a_net.lose_push.store(0, Ordering::SeqCst);
    a_net.fail_5xx.store(0, Ordering::SeqCst);
    a_net.lose_pull.store(0, Ordering::SeqCst);
    let a = a.take().unwrap();
    settle(&a);
    settle(&b);
    let status = a.collection(&c).and_then(|c| c.status()).expect("status");
    assert_eq!(status.pending, 0);
    assert_eq!(
        status.rejected,
        0,
        "{:?}",
        a.collection(&c).unwrap().rejected()
    );
    let view = check_exactly_once(server, dir, &c, &docs, &made, &[]);
    for d in &docs {
        assert_eq!(body(&a, &c, d), view[d], "the app client converged on {d}");
        assert_eq!(
            body(&b, &c, d),
            view[d],
            "the other client converged on {d}"
        );
    }
    // A restart of the settled client changes nothing and sends nothing again.
    drop(a);
    let a = Client::open_with_transport(&a_path, Faulty::new(&url), opts()).expect("a");
    a.collection(&c).expect("collection");
    let h = head(server.addr, &c);
    settle(&a);
    assert_eq!(head(server.addr, &c), h, "a restart re-sent something");
    for d in &docs {
        assert_eq!(body(&a, &c, d), view[d]);
    }
}

#[test]
fn schedule_of_lost_answers_restarts_and_compactions_stores_each_edit_once() {
    let (dir, mut server) = server();
    let cases: u32 = std::env::var("REVIEW_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut runner = TestRunner::new(Config {
        cases,
        failure_persistence: None,
        max_shrink_iters: 40,
        ..Config::default()
    });
    let case = AtomicUsize::new(0);
    let server_cell = Mutex::new(&mut server);
    let result = runner.run(&proptest::collection::vec(op(), 5..40), |ops| {
        let n = case.fetch_add(1, Ordering::SeqCst);
        let mut s = server_cell.lock().unwrap();
        run_schedule(&mut s, dir.path(), n, &ops);
        Ok(())
    });
    if let Err(e) = result {
        panic!("{e}");
    }
}

// ---------------------------------------------------------------------------------------
// 2. The app SIGKILLed at random moments while it edits with background sync on; restarted
//    from its file each time. Every edit it was told is saved must reach the server once.
// ---------------------------------------------------------------------------------------

/// The app run as a child process by `sigkilled_app_*` (does nothing on its own).
#[test]
fn child_app_process() {
    let (Ok(db), Ok(url), Ok(start)) = (
        std::env::var("REVIEW_CHILD_DB"),
        std::env::var("REVIEW_CHILD_URL"),
        std::env::var("REVIEW_CHILD_START"),
    ) else {
        return;
    };
    let start: usize = start.parse().expect("start");
    let client = Client::open_with(&db, &url, None, opts()).expect("child opens");
    client.start_sync();
    let col = client.collection("crash").expect("collection");
    let docs: Vec<_> = (0..3)
        .map(|d| col.doc(&format!("d{d}")).expect("doc"))
        .collect();
    let stdout = std::io::stdout();
    for i in start.. {
        let d = &docs[i % 3];
        let text = d.doc().get_or_insert_text("body");
        let r = d.edit(|txn| {
            let len = text.len(txn);
            text.insert(txn, len, &format!("<k{i}>"));
        });
        let mut out = stdout.lock();
        match r {
            Ok(()) => writeln!(out, "saved {i}").ok(),
            Err(e) => writeln!(out, "failed {i} {e}").ok(),
        };
        out.flush().ok();
        if i % 7 == 0 {
            std::thread::sleep(Duration::from_millis(3));
        }
    }
}

#[test]
fn sigkilled_app_loses_no_saved_edit_and_sends_each_once() {
    let (dir, mut server) = server();
    let db = dir.path().join("app.sqlite");
    let exe = std::env::current_exe().expect("exe");
    let mut saved: Vec<String> = Vec::new();
    let mut attempted: Vec<String> = Vec::new();
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64 ^ u64::from(std::process::id());
    let mut next = |m: u64| {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state % m
    };
    for round in 0..6usize {
        if round == 3 {
            server.restart();
        }
        let mut child = Command::new(&exe)
            .args([
                "--exact",
                "child_app_process",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env("REVIEW_CHILD_DB", &db)
            .env("REVIEW_CHILD_URL", server.url())
            .env("REVIEW_CHILD_START", (round * 1_000_000).to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("child starts");
        let stdout = child.stdout.take().expect("stdout");
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let reader = {
            let lines = lines.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(stdout)
                    .lines()
                    .map_while(std::result::Result::ok)
                {
                    lines.lock().unwrap().push(line);
                }
            })
        };
        // Let it edit (and its background sync push and pull) for a random while, then
        // kill it where it stands.
        let wait = 400 + next(1200);
        std::thread::sleep(Duration::from_millis(wait));
        child.kill().expect("SIGKILL");
        child.wait().ok();
        reader.join().ok();
        let lines = lines.lock().unwrap().clone();
        let mut n = 0;
        for l in &lines {
            // libtest may print "test child_app_process ... " before the first line.
            if let Some(i) = l.split("saved ").nth(1) {
                saved.push(format!("k{i}"));
                n += 1;
            }
            if let Some(rest) = l.split("failed ").nth(1) {
                panic!("an edit failed to save in the child: {rest}");
            }
        }
        assert!(n > 0, "round {round}: the child saved nothing ({lines:?})");
        // Edits begun but not reported (killed mid-commit) may or may not be on disk.
        let last = lines
            .iter()
            .filter_map(|l| l.split("saved ").nth(1))
            .filter_map(|i| i.parse::<usize>().ok())
            .max()
            .unwrap_or(round * 1_000_000);
        attempted.push(format!("k{}", last + 1));
    }
    // Restarted one last time: sync to the end.
    let app = Client::open_with(&db, &server.url(), None, opts()).expect("app opens");
    app.collection("crash").expect("collection");
    settle(&app);
    let docs: Vec<String> = (0..3).map(|d| format!("d{d}")).collect();
    let view = check_exactly_once(&server, dir.path(), "crash", &docs, &saved, &attempted);
    eprintln!(
        "{} edits reported saved over 6 kills; server head {}",
        saved.len(),
        head(server.addr, "crash")
    );
    for d in &docs {
        assert_eq!(body(&app, "crash", d), view[d]);
    }
}

// ---------------------------------------------------------------------------------------
// 3. Two clients on one file (what the README calls harmless), a document handle outliving
//    its client (documented as still saving), and threads editing through both.
// ---------------------------------------------------------------------------------------

#[test]
fn two_clients_on_one_file_edit_from_threads_without_failures_or_duplicates() {
    let (dir, server) = server();
    let c = "two";
    let path = dir.path().join("shared.sqlite");
    let a = Arc::new(Client::open_with(&path, &server.url(), None, opts()).expect("a"));
    let b = Arc::new(Client::open_with(&path, &server.url(), None, opts()).expect("b"));
    a.collection(c).expect("collection");
    b.collection(c).expect("collection");
    a.start_sync();
    b.start_sync();
    let failures = Arc::new(Mutex::new(Vec::<String>::new()));
    let mut handles = Vec::new();
    const THREADS: usize = 4;
    const EDITS: usize = 60;
    for t in 0..THREADS {
        let client = if t % 2 == 0 { a.clone() } else { b.clone() };
        let failures = failures.clone();
        handles.push(std::thread::spawn(move || {
            let col = client.collection(c).expect("collection");
            let own = col.doc(&format!("t{t}")).expect("doc");
            let shared = col.doc("shared").expect("doc");
            for i in 0..EDITS {
                let d = if i % 2 == 0 { &own } else { &shared };
                let text = d.doc().get_or_insert_text("body");
                if let Err(e) = d.edit(|txn| {
                    let len = text.len(txn);
                    text.insert(txn, len, &format!("<t{t}e{i}>"));
                }) {
                    failures.lock().unwrap().push(format!("t{t}e{i}: {e}"));
                }
            }
            // Whatever failed to save is retried now; from here on it must be saved.
            let mut tries = 0;
            while own.flush().is_err() || shared.flush().is_err() {
                tries += 1;
                assert!(tries < 100, "edits could never be saved");
                std::thread::sleep(Duration::from_millis(20));
            }
            assert_eq!(own.unsaved() + shared.unsaved(), 0);
        }));
    }
    for h in handles {
        h.join().expect("editor thread");
    }
    let failures = failures.lock().unwrap().clone();
    let made: Vec<String> = (0..THREADS)
        .flat_map(|t| (0..EDITS).map(move |i| format!("t{t}e{i}")))
        .collect();
    // A stale handle: its client is gone, its edits must still be saved to the file.
    let stale = a
        .collection(c)
        .and_then(|col| col.doc("stale"))
        .expect("doc");
    drop(a);
    drop(b);
    let text = stale.doc().get_or_insert_text("body");
    stale
        .edit(|txn| text.push(txn, "<stale1>"))
        .expect("a handle outliving its client still saves");
    // The next client on the file pushes it, while the stale handle keeps editing.
    let c2 = Client::open_with(&path, &server.url(), None, opts()).expect("c2");
    c2.collection(c).expect("collection");
    c2.start_sync();
    stale
        .edit(|txn| text.push(txn, "<stale2>"))
        .expect("a handle outliving its client still saves beside the next client");
    let mut made = made;
    made.push("stale1".into());
    made.push("stale2".into());
    eventually("the queue drains", Duration::from_secs(30), || {
        c2.collection(c)
            .and_then(|col| col.status())
            .is_ok_and(|s| s.pending == 0)
    });
    c2.close();
    drop(c2);
    let mut docs: Vec<String> = (0..THREADS).map(|t| format!("t{t}")).collect();
    docs.push("shared".into());
    docs.push("stale".into());
    check_exactly_once(&server, dir.path(), c, &docs, &made, &[]);
    assert!(
        failures.is_empty(),
        "{} of {} edits through two clients on one file answered an error \
         (the README calls two clients on a file harmless), e.g. {:?}",
        failures.len(),
        made.len(),
        &failures[..failures.len().min(3)]
    );
}

/// Second connection on the file writing in a tight loop (what a second client, or a stale
/// handle of a dropped client, does): an edit on the first must not fail.
#[test]
fn an_edit_does_not_fail_while_another_connection_writes_the_file() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("f.sqlite");
    // Nobody listens there: everything stays local.
    let client = Client::open_with_transport(
        &path,
        Arc::new(HttpTransport::new("http://127.0.0.1:9", None)),
        opts(),
    )
    .expect("opens");
    let doc = client
        .collection("c")
        .and_then(|c| c.doc("d"))
        .expect("doc");
    let other = Store::open_with(&path, false).expect("second connection");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                other.kv_set("noise", &n.to_string()).expect("other writes");
                n += 1;
            }
            n
        })
    };
    let text = doc.doc().get_or_insert_text("body");
    let mut failed = Vec::new();
    for i in 0..300 {
        if let Err(e) = doc.edit(|txn| text.push(txn, &format!("<{i}>"))) {
            failed.push(format!("{i}: {e}"));
        }
    }
    stop.store(true, Ordering::SeqCst);
    let writes = writer.join().expect("writer");
    assert!(
        failed.is_empty(),
        "{} of 300 edits failed to save while another connection wrote the file \
         ({writes} writes): {:?}",
        failed.len(),
        &failed[..failed.len().min(3)]
    );
}

// ---------------------------------------------------------------------------------------
// 4. Many threads through one client, background sync on, restart in the middle.
// ---------------------------------------------------------------------------------------

#[test]
fn many_threads_on_one_client_then_restart_every_edit_once() {
    let (dir, server) = server();
    let c = "threads";
    let path = dir.path().join("t.sqlite");
    let client = Arc::new(Client::open_with(&path, &server.url(), None, opts()).expect("opens"));
    client.collection(c).expect("collection");
    client.start_sync();
    const THREADS: usize = 6;
    const EDITS: usize = 80;
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let client = client.clone();
            std::thread::spawn(move || {
                let col = client.collection(c).expect("collection");
                for i in 0..EDITS {
                    // Handles are opened and dropped all the time, across threads.
                    let d = col.doc(&format!("d{}", (t + i) % 3)).expect("doc");
                    let text = d.doc().get_or_insert_text("body");
                    d.edit(|txn| {
                        let len = text.len(txn);
                        text.insert(txn, len, &format!("<t{t}e{i}>"));
                    })
                    .expect("saved");
                    if i % 10 == 0 {
                        let _ = client.sync_once();
                    }
                }
            })
        })
        .collect();
    for h in handles {
        h.join().expect("thread");
    }
    // Dropped without close while the background threads may be mid-request.
    drop(client);
    let client = Client::open_with(&path, &server.url(), None, opts()).expect("reopens");
    client.collection(c).expect("collection");
    settle(&client);
    let made: Vec<String> = (0..THREADS)
        .flat_map(|t| (0..EDITS).map(move |i| format!("t{t}e{i}")))
        .collect();
    let docs: Vec<String> = (0..3).map(|d| format!("d{d}")).collect();
    let view = check_exactly_once(&server, dir.path(), c, &docs, &made, &[]);
    for d in &docs {
        assert_eq!(body(&client, c, d), view[d]);
    }
}

// ---------------------------------------------------------------------------------------
// 5. A retry after a lost answer, once the server forgot the opId (its TTL).
// ---------------------------------------------------------------------------------------

/// Exactly-once storage holds within the server's op-id TTL (`--op-id-ttl-secs`, 7 days by
/// default), as the README says: a client offline longer than that retries a write whose
/// answer it lost, and the server stores it again. The content stays right: the duplicate is
/// the same Yjs update, which every reader applies as a no-op.
#[test]
fn a_retry_after_the_op_id_ttl_stores_a_duplicate_that_changes_nothing() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(&dir.path().join("data"), &["--op-id-ttl-secs", "1"]);
    let c = "ttl";
    let net = Faulty::new(&server.url());
    let path = dir.path().join("a.sqlite");
    let a = Client::open_with_transport(&path, net.clone(), opts()).expect("a");
    a.collection(c).expect("collection");
    append(&a, c, "d", "<x>");
    net.lose_push.store(1, Ordering::SeqCst);
    assert!(a.sync_once().is_err(), "the answer was lost");
    assert_eq!(head(server.addr, c), 1, "the server stored it");
    // The app stays closed (offline) longer than the server remembers opIds.
    drop(a);
    std::thread::sleep(Duration::from_millis(2500));
    let a = Client::open_with_transport(&path, Faulty::new(&server.url()), opts()).expect("a");
    a.collection(c).expect("collection");
    settle(&a);
    assert_eq!(body(&a, c, "d"), "<x>");
    assert_eq!(
        head(server.addr, c),
        2,
        "past the TTL the retry is stored again"
    );
    let fresh = Client::open_with_transport(
        dir.path().join("fresh.sqlite"),
        Faulty::new(&server.url()),
        opts(),
    )
    .expect("fresh");
    fresh.collection(c).expect("collection");
    settle(&fresh);
    assert_eq!(body(&fresh, c, "d"), "<x>", "the duplicate changes nothing");
}

// ---------------------------------------------------------------------------------------
// 6. Bounds of the local file: a long offline session.
// ---------------------------------------------------------------------------------------

#[test]
fn long_offline_session_keeps_local_rows_bounded_and_drains() {
    let (dir, server) = server();
    let c = "bounds";
    let path = dir.path().join("b.sqlite");
    let net = Faulty::new(&server.url());
    net.offline.store(true, Ordering::SeqCst);
    let options = opts();
    let threshold = options.local_compaction_threshold;
    let a = Client::open_with_transport(&path, net.clone(), options).expect("a");
    let col = a.collection(c).expect("collection");
    let doc = col.doc("d").expect("doc");
    let text = doc.doc().get_or_insert_text("body");
    const EDITS: usize = 2000;
    for i in 0..EDITS {
        doc.edit(|txn| {
            // Type and delete: the content stays small, the history does not.
            text.push(txn, "ab");
            if i % 2 == 1 {
                text.remove_range(txn, 0, 2);
            }
        })
        .expect("saved");
    }
    let probe = Store::open_with(&path, false).expect("probe");
    let rows = probe.update_count(c, "d").expect("count");
    assert!(
        rows <= threshold + 1,
        "{rows} unmerged updates for one document (threshold {threshold})"
    );
    let pending = probe.pending_count(c).expect("pending");
    eprintln!(
        "after {EDITS} offline edits: {pending} pending rows, {rows} unmerged updates, \
         file {} bytes",
        std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0)
            + std::fs::metadata(path.with_extension("sqlite-wal"))
                .map(|m| m.len())
                .unwrap_or(0)
    );
    assert_eq!(pending, EDITS as u64, "one queued write per edit");
    net.offline.store(false, Ordering::SeqCst);
    settle(&a);
    assert_eq!(probe.pending_count(c).expect("pending"), 0);
    assert!(probe.update_count(c, "d").expect("count") <= threshold + 1);
    assert_eq!(head(server.addr, c), EDITS as u64);
}

// ---------------------------------------------------------------------------------------
// 7. What `edit` answers is about that edit: threads editing one document while saves fail
//    now and then (another connection holds the file). An edit answered `Ok` must be in the
//    file, whatever the other threads' saves did.
// ---------------------------------------------------------------------------------------

#[test]
fn an_edit_answered_ok_is_in_the_file_even_when_other_threads_saves_fail() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("f.sqlite");
    let client = Client::open_with_transport(
        &path,
        Arc::new(HttpTransport::new("http://127.0.0.1:9", None)),
        SyncOptions {
            // No local compaction in the way: every saved edit is one row.
            local_compaction_threshold: u64::MAX,
            ..opts()
        },
    )
    .expect("opens");
    let doc = client
        .collection("c")
        .and_then(|c| c.doc("d"))
        .expect("doc");
    let other = Store::open_with(&path, false).expect("second connection");
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut n = 0u64;
            while !stop.load(Ordering::SeqCst) {
                let _ = other.kv_set("noise", &n.to_string());
                n += 1;
            }
        })
    };
    const THREADS: usize = 4;
    const EDITS: usize = 400;
    let answered_ok: Vec<Vec<String>> = (0..THREADS)
        .map(|t| {
            let doc = doc.clone();
            std::thread::spawn(move || {
                let text = doc.doc().get_or_insert_text("body");
                let mut ok = Vec::new();
                for i in 0..EDITS {
                    let tok = format!("t{t}e{i}");
                    if doc.edit(|txn| text.push(txn, &format!("<{tok}>"))).is_ok() {
                        ok.push(tok);
                    }
                }
                ok
            })
        })
        .collect::<Vec<_>>()
        .into_iter()
        .map(|h| h.join().expect("thread"))
        .collect();
    stop.store(true, Ordering::SeqCst);
    writer.join().ok();
    let unsaved = doc.unsaved();
    // What a restart would find: the file, read by a new connection (no flush).
    let probe = Store::open_with(&path, false).expect("probe");
    let parts = probe.load_document("c", "d").expect("load");
    let rebuilt = yrs::Doc::new();
    {
        use yrs::updates::decoder::Decode;
        let mut txn = rebuilt.transact_mut();
        for p in &parts {
            txn.apply_update(yrs::Update::decode_v1(p).expect("decodes"))
                .expect("applies");
        }
    }
    let text = rebuilt.get_or_insert_text("body");
    let on_disk = tokens(&text.get_string(&rebuilt.transact()));
    let ok_total: usize = answered_ok.iter().map(Vec::len).sum();
    let lost: Vec<&String> = answered_ok
        .iter()
        .flatten()
        .filter(|t| !on_disk.contains_key(*t))
        .collect();
    eprintln!(
        "{ok_total} of {} edits answered Ok, {unsaved} held in memory only",
        THREADS * EDITS
    );
    assert!(
        lost.is_empty(),
        "{} edits answered Ok are not in the file (a restart now loses them): {:?}",
        lost.len(),
        &lost[..lost.len().min(5)]
    );
}

// ---------------------------------------------------------------------------------------
// 8. After the server refused one write for good (too large), the app keeps typing in that
//    document. Those later edits are answered with a seq (not rejected, nothing pending):
//    they must be visible to other clients, and other clients' files must stay bounded.
// ---------------------------------------------------------------------------------------

#[test]
#[ignore = "known, open: a refused write leaves the local replica ahead of the server and later \
            edits that build on it never reach other clients (client/README.md, Push); the \
            client has to mark the document diverged and reload it"]
fn edits_after_a_rejected_write_reach_other_clients_and_keep_their_files_bounded() {
    init_tracing();
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start_with(&dir.path().join("data"), &["--max-update-bytes", "400"]);
    let c = "poison";
    let url = server.url();
    let x = Client::open_with_transport(
        dir.path().join("x.sqlite"),
        Arc::new(HttpTransport::new(&url, None)),
        opts(),
    )
    .expect("x");
    append(&x, c, "d", "<first>");
    settle(&x);
    // One paste over the server's update limit: refused for good, listed as rejected.
    append(&x, c, "d", &"P".repeat(600));
    settle(&x);
    let col = x.collection(c).expect("collection");
    assert_eq!(
        col.rejected().expect("rejected").len(),
        1,
        "the paste is refused"
    );
    // The app goes on typing at the end of the document.
    const LATER: usize = 60;
    for i in 0..LATER {
        append(&x, c, "d", &format!("<later{i}>"));
    }
    settle(&x);
    let status = col.status().expect("status");
    assert_eq!(status.pending, 0);
    assert_eq!(
        status.rejected, 1,
        "only the paste was refused: the later edits were all answered with a seq"
    );
    let y_path = dir.path().join("y.sqlite");
    let y = Client::open_with_transport(&y_path, Arc::new(HttpTransport::new(&url, None)), opts())
        .expect("y");
    y.collection(c).expect("collection");
    settle(&y);
    let threshold = opts().local_compaction_threshold;
    let rows = Store::open_with(&y_path, false)
        .and_then(|s| s.update_count(c, "d"))
        .expect("rows");
    let seen = tokens(&body(&y, c, "d"));
    let missing: Vec<usize> = (0..LATER)
        .filter(|i| !seen.contains_key(&format!("later{i}")))
        .collect();
    eprintln!(
        "y holds {} of {LATER} later edits; y's unmerged rows for the document: {rows}",
        LATER - missing.len()
    );
    let mut problems = Vec::new();
    if !missing.is_empty() {
        problems.push(format!(
            "{} of {LATER} edits the server answered with a seq (x reports them synced, none \
             rejected) never appear at another client: they depend on the refused paste",
            missing.len()
        ));
    }
    if rows > threshold + 1 {
        problems.push(format!(
            "another client's unmerged rows for the document grew to {rows} (threshold \
             {threshold}): its local compaction is deferred for good (a gap)"
        ));
    }
    assert!(problems.is_empty(), "{problems:#?}");
}
