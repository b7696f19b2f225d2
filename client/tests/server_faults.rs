//! The client against a server that crashes, a server that compacted what it has not seen,
//! a server whose data was wiped, and two clients editing the same documents offline.

mod common;

use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;

/// Two clients sync in the background while the server is SIGKILLed and restarted on the
/// same data: edits made meanwhile survive, and both end with every edit.
#[test]
fn server_sigkilled_and_restarted_while_clients_sync() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(&dir.path().join("data"));
    let c = "notes";
    let nets = [Flaky::new(&server.url()), Flaky::new(&server.url())];
    let clients: Vec<_> = nets
        .iter()
        .enumerate()
        .map(|(i, net)| open(&dir.path().join(format!("{i}.sqlite")), net))
        .collect();
    for client in &clients {
        client.collection(c).expect("collection");
        client.start_sync();
    }
    let mut expected = [String::new(), String::new()];
    for round in 0..60 {
        for (i, client) in clients.iter().enumerate() {
            let piece = format!("c{i}r{round};");
            append(client, c, &format!("doc{i}"), &piece);
            append(client, c, "both", &piece);
            expected[i].push_str(&piece);
        }
        if round == 20 {
            server.kill();
        }
        if round == 40 {
            server.restart();
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    eventually("both clients converge", Duration::from_secs(60), || {
        clients.iter().all(|client| {
            client
                .status()
                .map(|s| s.iter().all(|(_, s)| s.pending == 0 && s.online))
                .unwrap_or(false)
        }) && clients.iter().all(|client| {
            (0..2).all(|i| text(client, c, &format!("doc{i}")) == expected[i])
                && text(client, c, "both") == text(&clients[0], c, "both")
        })
    });
    let both = text(&clients[0], c, "both");
    for piece in expected.iter().flat_map(|e| e.split_terminator(';')) {
        assert!(
            both.contains(&format!("{piece};")),
            "{piece} lost from 'both'"
        );
    }
    assert_eq!(
        head(server.addr, c),
        240,
        "every edit stored once, none twice"
    );
}

/// Two clients edit the same documents offline, then reconnect: both converge and keep
/// every edit.
#[test]
fn offline_edits_to_the_same_documents_converge() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&dir.path().join("data"));
    let c = "todos";
    let (na, nb) = (Flaky::new(&server.url()), Flaky::new(&server.url()));
    let a = open(&dir.path().join("a.sqlite"), &na);
    let b = open(&dir.path().join("b.sqlite"), &nb);
    b.collection(c).expect("collection");
    append(&a, c, "x", "base;");
    settle(&a);
    settle(&b);
    assert_eq!(text(&b, c, "x"), "base;");
    na.set_offline(true);
    nb.set_offline(true);
    for i in 0..30 {
        append(&a, c, "x", &format!("a{i};"));
        append(&b, c, "x", &format!("b{i};"));
        append(&a, c, "y", &format!("a{i};"));
        append(&b, c, "y", &format!("b{i};"));
    }
    assert!(a.sync_once().is_err() && b.sync_once().is_err());
    na.set_offline(false);
    nb.set_offline(false);
    settle(&a);
    settle(&b);
    settle(&a);
    for doc in ["x", "y"] {
        let (ta, tb) = (text(&a, c, doc), text(&b, c, doc));
        assert_eq!(ta, tb, "{doc} diverged");
        for i in 0..30 {
            assert!(ta.contains(&format!("a{i};")) && ta.contains(&format!("b{i};")));
        }
    }
    assert_eq!(head(server.addr, c), 121);
}

/// A client far behind a collection the server compacted (every delta it has not seen
/// deleted) gets the documents' snapshots and converges.
#[test]
fn a_client_far_behind_a_compacted_collection_gets_snapshots() {
    let dir = tempfile::tempdir().expect("temp dir");
    let server = Server::start(&dir.path().join("data"));
    let c = "docs";
    let (na, nb) = (Flaky::new(&server.url()), Flaky::new(&server.url()));
    let a = open(&dir.path().join("a.sqlite"), &na);
    let b = open(&dir.path().join("b.sqlite"), &nb);
    a.collection(c).expect("collection");
    append(&b, c, "d0", "start;");
    settle(&b);
    settle(&a);
    let before = na.changes_received.load(Ordering::SeqCst);
    for i in 0..300 {
        append(&b, c, &format!("d{}", i % 3), &format!("e{i};"));
    }
    settle(&b);
    for d in 0..3 {
        compact_all(server.addr, c, &format!("d{d}"));
    }
    settle(&a);
    let received = na.changes_received.load(Ordering::SeqCst) - before;
    assert!(
        received < 20,
        "expected a few snapshots, not the 300 deleted deltas; got {received} changes"
    );
    for d in 0..3 {
        let doc = format!("d{d}");
        assert_eq!(text(&a, c, &doc), text(&b, c, &doc), "{doc}");
        assert!(text(&a, c, &doc).contains(&format!("e{};", 297 + d)));
    }
    assert_eq!(
        a.collection(c)
            .and_then(|c| c.status())
            .expect("status")
            .last_synced_seq,
        301
    );
}

/// The server is restarted on an empty data directory: each client's cursor is now ahead
/// of it (`cursor_ahead`); they push their whole state back and converge, losing nothing,
/// edits made offline included.
#[test]
fn clients_recover_from_a_wiped_server() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(&dir.path().join("data"));
    let c = "todos";
    let (na, nb) = (Flaky::new(&server.url()), Flaky::new(&server.url()));
    let a = open(&dir.path().join("a.sqlite"), &na);
    let b = open(&dir.path().join("b.sqlite"), &nb);
    for i in 0..40 {
        append(&a, c, "p", &format!("a{i};"));
        append(&b, c, "q", &format!("b{i};"));
    }
    settle(&a);
    settle(&b);
    settle(&a);
    na.set_offline(true);
    append(&a, c, "p", "offline;");
    append(&a, c, "r", "new-doc;");
    server.restart_on(&dir.path().join("fresh-data"));
    assert_eq!(head(server.addr, c), 0, "the server lost everything");
    na.set_offline(false);
    settle(&a);
    settle(&b);
    settle(&a);
    for doc in ["p", "q", "r"] {
        assert_eq!(text(&a, c, doc), text(&b, c, doc), "{doc}");
    }
    let p = text(&b, c, "p");
    assert!(p.contains("a39;") && p.contains("offline;"), "{p}");
    assert!(text(&a, c, "q").contains("b39;"));
    assert_eq!(text(&b, c, "r"), "new-doc;");
}

/// The server is wiped and another client refills it past this client's cursor before this
/// one reconnects: no `cursor_ahead` then, but the change at its last seq is another one, so
/// it still notices, pushes its state back and streams from 0.
#[test]
fn a_wiped_server_refilled_past_the_cursor_is_noticed() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut server = Server::start(&dir.path().join("data"));
    let c = "todos";
    let na = Flaky::new(&server.url());
    let a = open(&dir.path().join("a.sqlite"), &na);
    for i in 0..10 {
        append(&a, c, "p", &format!("a{i};"));
    }
    settle(&a);
    assert_eq!(
        a.collection(c)
            .and_then(|c| c.status())
            .expect("status")
            .last_synced_seq,
        10
    );
    na.set_offline(true);
    append(&a, c, "p", "offline;");
    assert!(a.sync_once().is_err(), "A notices it is offline");
    server.restart_on(&dir.path().join("fresh-data"));
    let nc = Flaky::new(&server.url());
    let fresh = open(&dir.path().join("c.sqlite"), &nc);
    for i in 0..30 {
        append(&fresh, c, "z", &format!("c{i};"));
    }
    settle(&fresh);
    assert_eq!(head(server.addr, c), 30, "refilled past A's cursor");
    na.set_offline(false);
    settle(&a);
    settle(&fresh);
    let expected_z: String = (0..30).map(|i| format!("c{i};")).collect();
    assert_eq!(
        text(&a, c, "z"),
        expected_z,
        "A missed the refilled changes below its cursor"
    );
    let p = text(&fresh, c, "p");
    assert!(
        p.contains("a0;") && p.contains("a9;") && p.contains("offline;"),
        "{p}"
    );
    assert_eq!(text(&a, c, "p"), p);
}

/// A corrupt file and another application's SQLite file are refused with a clear error.
#[test]
fn corrupt_or_foreign_files_are_refused_clearly() {
    let dir = tempfile::tempdir().expect("temp dir");
    let garbage = dir.path().join("garbage.sqlite");
    std::fs::write(&garbage, vec![0x5a; 8192]).expect("write");
    let err = replicate_client::Client::open(&garbage, "http://127.0.0.1:9", None)
        .expect_err("garbage refused");
    assert!(
        matches!(err, replicate_client::Error::Corrupt { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("not a readable SQLite database"),
        "{err}"
    );

    // A real database of ours whose pages were overwritten in the middle.
    let damaged = dir.path().join("damaged.sqlite");
    {
        let net = Flaky::new("http://127.0.0.1:9");
        net.set_offline(true);
        let client = open(&damaged, &net);
        for i in 0..200 {
            append(&client, "c", &format!("d{i}"), &"x".repeat(500));
        }
    }
    let mut bytes = std::fs::read(&damaged).expect("read");
    let wal = damaged.with_extension("sqlite-wal");
    assert!(!wal.exists() || std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0) == 0);
    let len = bytes.len();
    for b in &mut bytes[len / 2..len / 2 + 8192] {
        *b = 0xa5;
    }
    std::fs::write(&damaged, bytes).expect("write");
    let err = replicate_client::Client::open(&damaged, "http://127.0.0.1:9", None)
        .expect_err("damaged refused");
    assert!(
        matches!(err, replicate_client::Error::Corrupt { .. }),
        "{err:?}"
    );

    let foreign = dir.path().join("foreign.sqlite");
    {
        let conn = rusqlite::Connection::open(&foreign).expect("open");
        conn.execute_batch("CREATE TABLE contacts (name TEXT); INSERT INTO contacts VALUES ('x');")
            .expect("foreign schema");
    }
    let err = replicate_client::Client::open(&foreign, "http://127.0.0.1:9", None)
        .expect_err("foreign refused");
    assert!(
        matches!(err, replicate_client::Error::Foreign { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains("another application"), "{err}");
}
