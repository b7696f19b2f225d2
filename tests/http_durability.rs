//! Durability of the real binary: writers push while the `replicate-server` process is killed
//! with SIGKILL; after a restart on the same directory every answered seq is readable with its
//! bytes, seqs are gap-free, and new writes get higher seqs. Then SIGTERM stops it gracefully.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{b64, unb64, Client, Peer};
use serde_json::json;

const WRITERS: u64 = 4;
/// Writes answered before the kill (at least; writers keep going until it lands).
const ANSWERED_BEFORE_KILL: usize = 200;

/// Starts the binary on port 0 and answers it with the address it printed.
fn start(data: &Path) -> (Child, SocketAddr) {
    let data = data.to_str().expect("a UTF-8 temp path");
    common::spawn_server(&["--data", data])
}

/// An answered write: its document and bytes.
type Answered = BTreeMap<u64, (String, Vec<u8>)>;

#[test]
fn sigkill_loses_no_answered_write_and_seqs_continue() {
    let dir = tempfile::tempdir().expect("temp dir");
    let data = dir.path().join("data");
    let (mut child, addr) = start(&data);
    let client = Client { addr };

    let answered = Arc::new(Mutex::new(Answered::new()));
    let count = Arc::new(AtomicUsize::new(0));
    let killed = Arc::new(AtomicBool::new(false));
    let writers: Vec<_> = (0..WRITERS)
        .map(|w| {
            let (answered, count, killed) = (answered.clone(), count.clone(), killed.clone());
            std::thread::spawn(move || {
                let peer = Peer::new(100 + w);
                let doc = format!("doc-{w}");
                // Bounded: the kill comes long before this many writes.
                for i in 0..100_000u64 {
                    let bytes = peer.append(&doc, &format!("{i};"));
                    let body = json!({ "documentId": doc, "crdtBytes": b64(&bytes) }).to_string();
                    match client.try_request(
                        "POST",
                        "/v1/kill/insert",
                        &[("Content-Type", "application/json")],
                        body.as_bytes(),
                    ) {
                        Ok(r) if r.status == 200 => {
                            let seq = r.json()["seq"].as_u64().expect("seq");
                            answered
                                .lock()
                                .expect("lock")
                                .insert(seq, (doc.clone(), bytes));
                            count.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => panic!("write refused before the kill: {} {}", r.status, r.text()),
                        Err(_) if killed.load(Ordering::SeqCst) => return,
                        Err(e) => panic!("write failed before the kill: {e}"),
                    }
                }
            })
        })
        .collect();

    while count.load(Ordering::SeqCst) < ANSWERED_BEFORE_KILL {
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    killed.store(true, Ordering::SeqCst);
    child.kill().expect("SIGKILL"); // std's kill is SIGKILL on Unix
    child.wait().expect("reaped");
    for w in writers {
        w.join().expect("writer thread");
    }
    let answered = std::mem::take(&mut *answered.lock().expect("lock"));
    assert!(answered.len() >= ANSWERED_BEFORE_KILL);

    let (mut child, addr) = start(&data);
    let client = Client { addr };
    let (changes, head) = client.stream_all("kill", 0);
    let stored: BTreeMap<u64, (String, Vec<u8>)> = changes
        .iter()
        .map(|c| {
            let seq = c["seq"].as_u64().expect("seq");
            (
                seq,
                (
                    c["documentId"].as_str().expect("documentId").to_string(),
                    unb64(c["crdtBytes"].as_str().expect("bytes")),
                ),
            )
        })
        .collect();
    // Gap-free: every seq up to the head is there, once.
    assert_eq!(stored.len() as u64, head, "seqs are not 1..={head}");
    assert_eq!(
        stored.keys().copied().collect::<Vec<_>>(),
        (1..=head).collect::<Vec<_>>()
    );
    let max_answered = *answered.keys().last().expect("some writes");
    assert!(
        head >= max_answered,
        "answered seq {max_answered} is above the head {head} after restart"
    );
    for (seq, expected) in &answered {
        assert_eq!(
            stored.get(seq),
            Some(expected),
            "answered seq {seq} lost or changed"
        );
    }

    // New writes continue above every seq ever answered.
    let seq = client.write(
        "kill",
        "insert",
        "after",
        &Peer::new(999).append("after", "x"),
    );
    assert_eq!(seq, head + 1);

    // SIGTERM: graceful stop, exit status 0.
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .expect("kill -TERM");
    assert!(status.success());
    let exit = child.wait().expect("reaped");
    assert!(exit.success(), "graceful shutdown exited with {exit}");
}
