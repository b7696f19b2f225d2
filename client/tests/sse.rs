//! The background puller on the event stream (`GET /v1/{c}/events`, Server-Sent Events),
//! against the real server: edits arrive live without long polls; every change is on disk
//! with its cursor before the app sees it, so a restart resumes without downloading again;
//! without the route it falls back to long polls; an expired token ends the stream and a
//! fresh one (what `Client::set_token` sets) resumes it, still on the event stream.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::*;
use replicate_client::{Client, SyncOptions};
use yrs::{GetString, Observable};

const WAIT: Duration = Duration::from_secs(20);

fn cursor(client: &Client, c: &str) -> u64 {
    client
        .collection(c)
        .and_then(|col| col.status())
        .map(|s| s.last_synced_seq)
        .unwrap_or(0)
}

/// Opens a client through `net` and starts background sync; answers once its puller is
/// on the event stream.
fn following(path: &std::path::Path, net: &Arc<Flaky>, c: &str) -> Client {
    following_with(path, net, c, options())
}

/// [`following`] with other options.
fn following_with(
    path: &std::path::Path,
    net: &Arc<Flaky>,
    c: &str,
    options: SyncOptions,
) -> Client {
    init_tracing();
    let client = Client::open_with_transport(path, net.clone(), options).expect("opens");
    client.collection(c).expect("collection");
    client.start_sync();
    eventually("the event stream is open", WAIT, || {
        net.sse.connections.load(Ordering::SeqCst) >= 1
    });
    client
}

#[test]
fn a_background_client_receives_edits_live_over_the_event_stream() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(&dir.path().join("data"));
    let c = "live";
    let a_net = Flaky::new(&server.url());
    let a = following(&dir.path().join("a.sqlite"), &a_net, c);
    let b = open(&dir.path().join("b.sqlite"), &Flaky::new(&server.url()));

    let mut latencies = Vec::new();
    for i in 0..20 {
        let piece = format!("b{i};");
        append(&b, c, "doc", &piece);
        let pushed = Instant::now();
        b.sync_once().expect("B pushes");
        eventually("A has B's edit", WAIT, || {
            text(&a, c, "doc").contains(&piece)
        });
        latencies.push(pushed.elapsed());
    }
    assert_eq!(
        a_net.sse.changes.load(Ordering::SeqCst),
        20,
        "every edit came over the event stream"
    );
    assert_eq!(
        a_net.long_polls.load(Ordering::SeqCst),
        0,
        "no long poll while the event stream works"
    );
    assert_eq!(
        a_net.sse.connections.load(Ordering::SeqCst),
        1,
        "one connection"
    );
    eventually("A acks what it holds", WAIT, || cursor(&a, c) == 20);
    latencies.sort();
    eprintln!(
        "B's sync_once started → edit visible at A: median {:?}, max {:?}",
        latencies[latencies.len() / 2],
        latencies[latencies.len() - 1]
    );
}

#[test]
fn events_are_on_disk_with_their_cursor_before_they_are_applied_and_a_restart_resumes_there() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(&dir.path().join("data"));
    let c = "disk";
    let a_path = dir.path().join("a.sqlite");
    let a_net = Flaky::new(&server.url());
    let a = following(&a_path, &a_net, c);

    // Every time A's live document changes, note (edits visible, cursor on disk).
    let seen: Arc<Mutex<Vec<(usize, u64)>>> = Arc::default();
    let col = a.collection(c).expect("collection");
    let doc = col.doc("doc").expect("doc");
    let body = doc.doc().get_or_insert_text("body");
    {
        let seen = seen.clone();
        let col = col.clone();
        let body2 = body.clone();
        body.observe("sse-test", move |txn, _| {
            let visible = body2.get_string(txn).matches(';').count();
            let on_disk = col.status().map(|s| s.last_synced_seq).unwrap_or(0);
            seen.lock()
                .unwrap_or_else(|p| p.into_inner())
                .push((visible, on_disk));
        });
    }

    // B writes 30 edits, each its own seq (1..=30), in several pushes.
    let b = open(&dir.path().join("b.sqlite"), &Flaky::new(&server.url()));
    for i in 0..30 {
        append(&b, c, "doc", &format!("b{i};"));
        if i % 7 == 6 {
            b.sync_once().expect("B pushes");
        }
    }
    settle(&b);
    eventually("A stored all 30", WAIT, || cursor(&a, c) == 30);
    eventually("A applied all 30", WAIT, || {
        text(&a, c, "doc").matches(';').count() == 30
    });
    {
        let seen = seen.lock().unwrap_or_else(|p| p.into_inner());
        assert!(!seen.is_empty(), "the observer ran");
        for (visible, on_disk) in seen.iter() {
            assert!(
                *on_disk >= *visible as u64,
                "an edit was applied before its cursor was stored: {visible} visible, cursor \
                 {on_disk} ({seen:?})"
            );
        }
    }
    assert_eq!(a_net.sse.changes.load(Ordering::SeqCst), 30);
    body.unobserve("sse-test");
    drop(doc);
    drop(a);

    // Restarted, A follows again from its cursor: B's next edit comes, nothing old does.
    let a_net = Flaky::new(&server.url());
    let a = following(&a_path, &a_net, c);
    assert_eq!(cursor(&a, c), 30, "the cursor was on disk");
    append(&b, c, "doc", "after;");
    settle(&b);
    eventually("A has the new edit", WAIT, || {
        text(&a, c, "doc").ends_with("after;")
    });
    assert_eq!(
        a_net.sse.changes.load(Ordering::SeqCst),
        1,
        "only the new edit came over the event stream"
    );
    assert!(
        a_net.changes_received.load(Ordering::SeqCst) <= 1,
        "stream pages brought at most the landmark read-back (seq 30), not the 30 old edits"
    );
    assert_eq!(text(&a, c, "doc"), text(&b, c, "doc"));
}

/// The server is restarted on an empty data directory under a client that follows it: on
/// reconnecting, the event stream answers `cursor_ahead`; the client pushes its whole state
/// back and follows again from 0, still on the event stream.
#[test]
fn a_follower_recovers_from_a_wiped_server_on_the_event_stream() {
    let dir = tempfile::tempdir().expect("dir");
    let mut server = Server::start(&dir.path().join("data"));
    let c = "wiped";
    let a_net = Flaky::new(&server.url());
    let a = following(&dir.path().join("a.sqlite"), &a_net, c);
    for i in 0..10 {
        append(&a, c, "p", &format!("a{i};"));
    }
    eventually("A's edits are stored and back", WAIT, || {
        cursor(&a, c) == 10
    });
    server.restart_on(&dir.path().join("fresh-data"));
    eventually("A pushed its state to the wiped server", WAIT, || {
        head(server.addr, c) > 0
            && a.collection(c)
                .and_then(|col| col.status())
                .is_ok_and(|s| s.pending == 0)
    });
    let b = open(&dir.path().join("b.sqlite"), &Flaky::new(&server.url()));
    b.collection(c).expect("collection");
    settle(&b);
    let expected: String = (0..10).map(|i| format!("a{i};")).collect();
    assert_eq!(text(&b, c, "p"), expected, "nothing A held was lost");
    let long_polls = a_net.long_polls.load(Ordering::SeqCst);
    append(&b, c, "q", "from-b;");
    settle(&b);
    eventually("A follows the new server", WAIT, || {
        text(&a, c, "q") == "from-b;"
    });
    assert_eq!(
        a_net.long_polls.load(Ordering::SeqCst),
        long_polls,
        "still on the event stream"
    );
    assert!(a_net.sse.connections.load(Ordering::SeqCst) >= 2);
}

/// A reverse proxy in front of the server that answers 404 to every `events` request (an
/// older server, or a gateway that does not route it) and passes the rest through, one
/// request per connection.
struct NoEventsProxy {
    addr: SocketAddr,
    refused: Arc<AtomicUsize>,
}

impl NoEventsProxy {
    fn start(upstream: SocketAddr) -> NoEventsProxy {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let refused = Arc::new(AtomicUsize::new(0));
        let counter = refused.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().map_while(Result::ok) {
                let counter = counter.clone();
                std::thread::spawn(move || {
                    let _ = NoEventsProxy::serve(conn, upstream, &counter);
                });
            }
        });
        NoEventsProxy { addr, refused }
    }

    fn serve(
        client: TcpStream,
        upstream: SocketAddr,
        refused: &AtomicUsize,
    ) -> std::io::Result<()> {
        let mut reader = BufReader::new(client.try_clone()?);
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line)? == 0 {
                return Ok(());
            }
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_string());
        }
        let mut client = client;
        let path = head
            .first()
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or("");
        if path.contains("/events") {
            refused.fetch_add(1, Ordering::SeqCst);
            return client.write_all(
                b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            );
        }
        let length: usize = head
            .iter()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse().ok())
            .unwrap_or(0);
        let mut body = vec![0; length];
        reader.read_exact(&mut body)?;
        let mut up = TcpStream::connect(upstream)?;
        let mut out = String::new();
        for line in head
            .iter()
            .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        {
            out.push_str(line);
            out.push_str("\r\n");
        }
        out.push_str("Connection: close\r\n\r\n");
        up.write_all(out.as_bytes())?;
        up.write_all(&body)?;
        let mut answer = Vec::new();
        up.read_to_end(&mut answer)?;
        client.write_all(&answer)
    }
}

#[test]
fn without_the_events_route_it_long_polls() {
    init_tracing();
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(&dir.path().join("data"));
    let proxy = NoEventsProxy::start(server.addr);
    let c = "fallback";
    let a = Client::open_with(
        dir.path().join("a.sqlite"),
        &format!("http://{}", proxy.addr),
        None,
        options(),
    )
    .expect("opens");
    a.collection(c).expect("collection");
    a.start_sync();
    eventually("A tried the event stream", WAIT, || {
        proxy.refused.load(Ordering::SeqCst) >= 1
    });
    let b = open(&dir.path().join("b.sqlite"), &Flaky::new(&server.url()));
    for i in 0..5 {
        let piece = format!("b{i};");
        append(&b, c, "doc", &piece);
        settle(&b);
        eventually("A has B's edit by long poll", WAIT, || {
            text(&a, c, "doc").contains(&piece)
        });
    }
    let status = a.collection(c).and_then(|c| c.status()).expect("status");
    assert!(status.online, "{status:?}");
    assert_eq!(status.last_synced_seq, 5);
    assert_eq!(
        proxy.refused.load(Ordering::SeqCst),
        1,
        "after a 404 the client long-polls and does not ask again before sse_retry"
    );
}

#[test]
fn an_expired_token_ends_the_stream_and_a_fresh_one_resumes_it() {
    init_tracing();
    let dir = tempfile::tempdir().expect("dir");
    let (server, secret) = start_with_auth(dir.path());
    let c = "todos";
    let a_net = Flaky::with_token(&server.url(), &mint(&secret, "alice", "todos=write", "3s"));
    // A long backoff: a fresh token must not wait for it.
    let slow_retry = SyncOptions {
        backoff_min: Duration::from_secs(8),
        backoff_max: Duration::from_secs(30),
        ..options()
    };
    let a = following_with(&dir.path().join("a.sqlite"), &a_net, c, slow_retry);
    let b_token = mint(&secret, "bob", "todos=write", "1h");
    let b = Client::open_with(
        dir.path().join("b.sqlite"),
        &server.url(),
        Some(&b_token),
        options(),
    )
    .expect("opens");
    append(&b, c, "doc", "before;");
    settle(&b);
    eventually("A follows", WAIT, || text(&a, c, "doc") == "before;");

    let error = || {
        a.collection(c)
            .and_then(|col| col.status())
            .ok()
            .and_then(|s| s.last_error)
            .unwrap_or_default()
    };
    eventually("the expiry is reported", WAIT, || {
        error().contains("unauthenticated")
    });
    append(&b, c, "doc", "after;");
    settle(&b);
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(
        text(&a, c, "doc"),
        "before;",
        "nothing comes with an expired token"
    );

    a_net.set_token(&mint(&secret, "alice", "todos=write", "1h"));
    // A client on its own transport: the token lives there, this only ends the backoff.
    a.set_token(None);
    eventually(
        "A follows again with the fresh token, before its backoff ends",
        Duration::from_secs(4),
        || text(&a, c, "doc") == "before;after;",
    );
    eventually("A is online again", WAIT, || error().is_empty());
    assert_eq!(
        a_net.sse.changes.load(Ordering::SeqCst),
        2,
        "both edits came over event streams"
    );
    assert_eq!(
        a_net.long_polls.load(Ordering::SeqCst),
        0,
        "auth errors are no reason to give up the event stream"
    );
    assert!(a_net.sse.connections.load(Ordering::SeqCst) >= 2);
}
