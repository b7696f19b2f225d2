//! The binary form of `stream` and `events` (`Accept: application/vnd.replicate.changes`):
//! a binary page is the JSON page of the same cursor, change for change, across compaction
//! (snapshots in the page), `limit` and byte budgets; `Accept` values that do not select it
//! get the JSON answer; the binary feed delivers existing and new writes and heartbeats.

mod common;

use std::time::Duration;

use common::{unb64, Client, Peer, TestServer};
use replicate::wire_binary::{self, Decoder, Record, MEDIA_TYPE};
use replicate::ServerSettings;
use replicate_actors::{Change, OperationType, StreamPage};
use serde_json::{json, Value};

/// The JSON page as the actors' type, so it compares with the decoded binary one.
fn from_json(page: &Value) -> StreamPage {
    let changes = page["changes"]
        .as_array()
        .expect("changes")
        .iter()
        .map(|c| Change {
            document_id: c["documentId"].as_str().expect("documentId").to_string(),
            seq: c["seq"].as_u64().expect("seq"),
            bytes: unb64(c["crdtBytes"].as_str().expect("crdtBytes")),
            operation: serde_json::from_value::<OperationType>(c["operationType"].clone())
                .expect("operationType"),
        })
        .collect();
    StreamPage {
        changes,
        cursor: page["cursor"].as_u64().expect("cursor"),
        has_more: page["hasMore"].as_bool().expect("hasMore"),
        compact: page["compact"].as_str().map(str::to_string),
    }
}

/// GETs `path` as binary; checks the content type and decodes the page.
fn binary_page(client: &Client, path: &str) -> StreamPage {
    let res = client.request("GET", path, &[("Accept", MEDIA_TYPE)], b"");
    assert_eq!(res.status, 200, "{path}: {}", res.text());
    assert_eq!(res.header("content-type"), Some(MEDIA_TYPE), "{path}");
    let vary = res.header("vary").unwrap_or("");
    assert!(
        vary.split(',')
            .any(|v| v.trim().eq_ignore_ascii_case("accept")),
        "{path}: Vary {vary:?}"
    );
    wire_binary::decode_page(&res.body).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// Many documents, interleaved writes, some documents compacted (so pages from early
/// cursors carry snapshots), tiny buckets and a small byte budget (so pages stop early).
fn compacted_collection(client: &Client, c: &str) -> u64 {
    let peers: Vec<Peer> = (0..6).map(|i| Peer::new(10 + i)).collect();
    let mut head = 0;
    for round in 0..8 {
        for (i, p) in peers.iter().enumerate() {
            let doc = format!("doc-{i}");
            let op = if round == 0 { "insert" } else { "update" };
            head = client.write(c, op, &doc, &p.append(&doc, &format!("{round}:{i} ")));
        }
        if round == 3 || round == 6 {
            for doc in ["doc-1", "doc-4"] {
                client.ok(&format!("/v1/{c}/compact"), &json!({ "documentId": doc }));
            }
        }
    }
    head
}

#[test]
fn binary_page_equals_json_page_for_every_cursor_limit_and_budget() {
    let server = TestServer::start_with(
        |config| {
            config.max_page_bytes = 700;
            config.page_bucket_seqs = 4;
        },
        ServerSettings::default(),
    );
    let client = server.client;
    let head = compacted_collection(&client, "bin");
    let (mut snapshots, mut more, mut compact) = (0, 0, 0);
    for cursor in 0..=head {
        for query in [
            "limit=1",
            "limit=3",
            "limit=1000",
            "limit=1000&sizeThreshold=1",
        ] {
            let path = format!("/v1/bin/stream?cursor={cursor}&{query}");
            let json = from_json(&client.ok_get(&path));
            let binary = binary_page(&client, &path);
            assert_eq!(binary, json, "{path}");
            snapshots += json
                .changes
                .iter()
                .filter(|c| c.operation == OperationType::Snapshot)
                .count();
            more += usize::from(json.has_more);
            compact += usize::from(json.compact.is_some());
        }
    }
    // The comparison covered what it claims to: snapshots, budget-cut pages, compact hints.
    assert!(snapshots > 0, "no page carried a snapshot");
    assert!(more > 0, "no page was cut by limit or byte budget");
    assert!(compact > 0, "no page named a document to compact");

    // Paging by binary alone reaches the head and rebuilds every document.
    let (mut cursor, reader) = (0, Peer::new(99));
    let mut pages = 0;
    loop {
        let page = binary_page(&client, &format!("/v1/bin/stream?cursor={cursor}"));
        for change in &page.changes {
            reader.apply(&change.bytes);
        }
        cursor = page.cursor;
        pages += 1;
        if !page.has_more {
            break;
        }
        assert!(pages < 1000, "paging does not end");
    }
    assert_eq!(cursor, head);
    let state = client.ok_get("/v1/bin/state");
    let whole = Peer::new(98);
    whole.apply(&unb64(state["crdtBytes"].as_str().expect("crdtBytes")));
    for i in 0..6 {
        let doc = format!("doc-{i}");
        assert_eq!(reader.text(&doc), whole.text(&doc), "{doc}");
    }
}

#[test]
fn accept_values_that_do_not_select_binary_get_json() {
    let server = TestServer::start();
    let client = server.client;
    client.write("acc", "insert", "d", &Peer::new(1).append("d", "hello"));
    let json = client.ok_get("/v1/acc/stream?cursor=0");
    let cases = [
        "",
        "*/*",
        "application/json",
        "text/event-stream",
        "application/vnd.replicate.changes;v=2",
        "application/vnd.replicate.changes;q=0",
        "application/vnd.replicate.changes;q=nonsense",
        "application/json, application/vnd.replicate.changes;q=0.1",
        ";;,,=",
        "application/vnd.replicate.changesX",
    ];
    for accept in cases {
        let headers: &[(&str, &str)] = if accept.is_empty() {
            &[]
        } else {
            &[("Accept", accept)]
        };
        let res = client.request("GET", "/v1/acc/stream?cursor=0", headers, b"");
        assert_eq!(res.status, 200, "{accept:?}");
        assert_eq!(
            res.header("content-type"),
            Some("application/json"),
            "{accept:?}"
        );
        assert_eq!(res.json(), json, "{accept:?}");
    }
    // A bad query is still a JSON 400 when binary was asked for.
    let res = client.request(
        "GET",
        "/v1/acc/stream?limit=0",
        &[("Accept", MEDIA_TYPE)],
        b"",
    );
    assert_eq!(res.status, 400);
    assert_eq!(res.error_code(), "invalid_argument");
}

/// Appends `"{i},"` to `doc` of `c` for each `i` of `range`, one `op` write each.
fn type_into(client: &Client, c: &str, op: &str, writer: &Peer, range: std::ops::Range<u32>) {
    for i in range {
        client.write(c, op, "doc", &writer.append("doc", &format!("{i},")));
    }
}

/// Opens the binary feed at `path`; checks its status and content type.
fn open_binary_feed(client: &Client, path: &str) -> (common::ChunkedBody, Decoder) {
    let feed = client.open_chunked(path, &[("Accept", MEDIA_TYPE)]);
    assert_eq!(feed.status, 200, "{path}");
    assert_eq!(feed.header("content-type"), Some(MEDIA_TYPE), "{path}");
    (feed, Decoder::new(1 << 20))
}

/// Reads the binary feed until `want` changes arrived (and the PAGE that announced the last
/// of them is complete); answers them and the cursor of the last complete page.
fn read_changes(
    feed: &mut common::ChunkedBody,
    decoder: &mut Decoder,
    want: usize,
) -> (Vec<Change>, u64) {
    let (mut changes, mut cursor, mut owed) = (Vec::new(), 0, 0u32);
    loop {
        while let Some(record) = decoder.next_record().expect("feed decodes") {
            match record {
                Record::Page(head) => {
                    assert_eq!(owed, 0, "a PAGE before the previous page's changes");
                    owed = head.count;
                    cursor = head.cursor;
                }
                Record::Change(c) => {
                    owed = owed
                        .checked_sub(1)
                        .expect("a CHANGE the PAGE did not announce");
                    changes.push(c);
                }
                Record::Error(e) => panic!("feed error: {e}"),
            }
            if owed == 0 && changes.len() >= want {
                return (changes, cursor);
            }
        }
        let chunk = feed.next_chunk().expect("feed read").expect("feed ended");
        decoder.push(&chunk);
    }
}

#[test]
fn binary_feed_delivers_backlog_then_new_writes_then_heartbeats() {
    let settings = ServerSettings {
        sse_heartbeat: Duration::from_millis(200),
        ..ServerSettings::default()
    };
    let server = TestServer::start_with(|_| {}, settings);
    let client = server.client;
    let writer = Peer::new(1);
    let reader = Peer::new(2);
    type_into(&client, "feed", "insert", &writer, 0..5);
    let (mut feed, mut decoder) = open_binary_feed(&client, "/v1/feed/events?cursor=2");

    // The backlog after the cursor, then live writes, each once and in seq order.
    let (backlog, cursor) = read_changes(&mut feed, &mut decoder, 3);
    assert_eq!(backlog.iter().map(|c| c.seq).collect::<Vec<_>>(), [3, 4, 5]);
    assert_eq!(cursor, 5);
    type_into(&client, "feed", "update", &writer, 5..9);
    let (live, cursor) = read_changes(&mut feed, &mut decoder, 4);
    assert_eq!(live.iter().map(|c| c.seq).collect::<Vec<_>>(), [6, 7, 8, 9]);
    assert!(live.iter().all(|c| c.operation == OperationType::Update));
    assert_eq!(cursor, 9);

    // The same bytes as the JSON stream: applied after the first two, they rebuild the text.
    for c in client.stream_all("feed", 0).0.iter().take(2) {
        reader.apply(&unb64(c["crdtBytes"].as_str().expect("crdtBytes")));
    }
    for c in backlog.iter().chain(&live) {
        reader.apply(&c.bytes);
    }
    assert_eq!(reader.text("doc"), writer.text("doc"));

    // Idle: an empty PAGE repeating the cursor, nothing else.
    loop {
        match decoder.next_record().expect("feed decodes") {
            Some(Record::Page(head)) => {
                assert_eq!((head.count, head.cursor, head.has_more), (0, 9, false));
                break;
            }
            Some(other) => panic!("idle feed sent {other:?}"),
            None => decoder.push(&feed.next_chunk().expect("read").expect("feed ended")),
        }
    }
}

#[test]
fn binary_feed_after_compaction_starts_with_the_snapshot() {
    let server = TestServer::start();
    let client = server.client;
    let writer = Peer::new(1);
    type_into(&client, "gap", "insert", &writer, 0..4);
    // No active peer: every delta goes, a reader at cursor 1 must get the snapshot.
    client.ok("/v1/gap/compact", &json!({ "documentId": "doc" }));
    let (mut feed, mut decoder) = open_binary_feed(&client, "/v1/gap/events?cursor=1");
    let (changes, cursor) = read_changes(&mut feed, &mut decoder, 1);
    assert_eq!(changes[0].operation, OperationType::Snapshot);
    assert_eq!(cursor, 4);
    let reader = Peer::new(2);
    for c in &changes {
        reader.apply(&c.bytes);
    }
    assert_eq!(reader.text("doc"), writer.text("doc"));
}
