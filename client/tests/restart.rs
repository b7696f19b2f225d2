//! A client restarted from its SQLite file resumes at its cursor (no re-download) and pushes
//! each pending edit exactly once, also when it was stopped after the server stored a push
//! whose answer never arrived.

mod common;

use std::sync::atomic::Ordering;

use common::*;

#[test]
fn restart_resumes_at_the_cursor_and_pushes_each_pending_edit_once() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&dir.path().join("data"));
    let c = "todos";

    // B writes 60 edits; A syncs them all.
    let b_net = Flaky::new(&server.url());
    let b = open(&dir.path().join("b.sqlite"), &b_net);
    for i in 0..60 {
        append(&b, c, "shared", &format!("b{i};"));
    }
    settle(&b);
    let a_path = dir.path().join("a.sqlite");
    let a_net = Flaky::new(&server.url());
    let a = open(&a_path, &a_net);
    a.collection(c).expect("collection");
    settle(&a);
    let cursor_before = a
        .collection(c)
        .and_then(|c| c.status())
        .expect("status")
        .last_synced_seq;
    assert_eq!(cursor_before, 60);
    assert_eq!(a_net.changes_received.load(Ordering::SeqCst), 60);

    // A edits offline, then its process goes away with 25 edits queued.
    a_net.set_offline(true);
    for i in 0..25 {
        append(&a, c, "mine", &format!("a{i};"));
    }
    assert!(a.sync_once().is_err(), "offline sync fails");
    assert_eq!(
        a.collection(c)
            .and_then(|c| c.status())
            .expect("status")
            .pending,
        25
    );
    drop(a);

    // Restarted, A pushes; the server stores the push but its answer is lost; A is stopped.
    let a_net = Flaky::new(&server.url());
    a_net.lose_answers.store(1, Ordering::SeqCst);
    let a = open(&a_path, &a_net);
    assert_eq!(
        a.collection(c)
            .and_then(|c| c.status())
            .expect("status")
            .pending,
        25
    );
    assert!(a.sync_once().is_err(), "the lost answer fails the round");
    assert!(
        head(server.addr, c) > 60,
        "the server stored the push whose answer was lost"
    );
    drop(a);

    // Restarted again: everything goes, each edit once, and nothing old is downloaded again.
    let a_net = Flaky::new(&server.url());
    let a = open(&a_path, &a_net);
    let col = a.collection(c).expect("collection");
    assert_eq!(
        col.status().expect("status").last_synced_seq,
        60,
        "cursor persisted"
    );
    settle(&a);
    let status = col.status().expect("status");
    assert_eq!(status.pending, 0);
    assert_eq!(head(server.addr, c), 85, "25 edits stored exactly once");
    assert_eq!(status.last_synced_seq, 85);
    assert_eq!(
        a_net.changes_received.load(Ordering::SeqCst),
        26,
        "only A's own 25 writes come back, plus seq 60 read back once to check the server is \
         the same; the 60 below the cursor are not downloaded again"
    );
    assert_eq!(
        a_net.batches_answered.load(Ordering::SeqCst),
        1,
        "the 25 queued edits went in one batch"
    );
    assert_eq!(a_net.single_writes.load(Ordering::SeqCst), 0);
    let expected: String = (0..25).map(|i| format!("a{i};")).collect();
    assert_eq!(text(&a, c, "mine"), expected);
    settle(&b);
    assert_eq!(text(&b, c, "mine"), expected);
    assert_eq!(text(&a, c, "shared"), text(&b, c, "shared"));
}
