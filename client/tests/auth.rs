//! The client against a server with authentication on: it acks as `sub:<random>` (the peer
//! rule), a token without the write grant leaves the edits queued (403 is not a verdict on
//! the writes), and a fresh token set with `Client::set_token` lets them go.

mod common;

use common::*;
use replicate_client::{Client, SyncOptions};

#[test]
fn acks_as_its_subject_and_keeps_edits_queued_without_the_write_grant() {
    init_tracing();
    let dir = tempfile::tempdir().expect("dir");
    let (server, secret) = start_with_auth(dir.path());
    let reader = mint(&secret, "alice", "todos=read", "1h");
    let writer = mint(&secret, "alice", "todos=write", "1h");
    let options = SyncOptions {
        fsync_edits: false,
        ..options()
    };
    let client = Client::open_with(
        dir.path().join("a.sqlite"),
        &server.url(),
        Some(&reader),
        options,
    )
    .expect("opens");
    assert!(
        client.peer_id().starts_with("alice:"),
        "{}",
        client.peer_id()
    );
    for i in 0..5 {
        append(&client, "todos", "d", &format!("{i};"));
    }
    let err = client.sync_once().expect_err("a reader cannot push");
    assert_eq!(err.code(), Some("forbidden"), "{err:?}");
    let col = client.collection("todos").expect("collection");
    let status = col.status().expect("status");
    assert_eq!(
        (status.pending, status.rejected),
        (5, 0),
        "403 drops nothing"
    );
    assert!(status.last_error.is_some_and(|e| e.contains("forbidden")));

    client.set_token(Some(&writer));
    let report = col.sync_once().expect("the writer pushes");
    assert_eq!((report.pushed, report.pending, report.cursor), (5, 0, 5));
    // The ack went through as alice:<random> (a peer id of another principal would be 403).
    let status = col.status().expect("status");
    assert!(status.online && status.last_error.is_none(), "{status:?}");
}
