//! Randomized: several clients with their own SQLite files make random edits, go offline and
//! back, restart from their files and sync, while the server compacts documents away under
//! them (every peer treated as inactive). At the end, all online, every client must equal the
//! reference (the merge of every client's state) and hold every edit ever made.
//!
//! Half the cases run every client with background sync on as well (its puller on the event
//! stream, `Pull::Sse`): they must then converge by background sync alone, with the event
//! streams in use.

mod common;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use replicate_client::{Client, SyncOptions};
use yrs::{GetString, Map, ReadTxn, Text, Transact};

const CLIENTS: usize = 3;
const DOCS: usize = 3;

#[derive(Debug, Clone)]
enum Op {
    /// Client inserts a fresh token at the start or the end of a document's text, and sets a
    /// map key named after it.
    Edit {
        client: usize,
        doc: usize,
        at_end: bool,
    },
    Offline(usize),
    Online(usize),
    /// Drop the client and open it again from its file.
    Restart(usize),
    Sync(usize),
    /// The server compacts a document with every peer inactive (deletes every delta).
    Compact(usize),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (0..CLIENTS, 0..DOCS, any::<bool>())
            .prop_map(|(client, doc, at_end)| Op::Edit { client, doc, at_end }),
        1 => (0..CLIENTS).prop_map(Op::Offline),
        1 => (0..CLIENTS).prop_map(Op::Online),
        1 => (0..CLIENTS).prop_map(Op::Restart),
        3 => (0..CLIENTS).prop_map(Op::Sync),
        1 => (0..DOCS).prop_map(Op::Compact),
    ]
}

fn options() -> SyncOptions {
    SyncOptions {
        fsync_edits: false,
        ..common::options()
    }
}

struct Peer {
    path: PathBuf,
    net: Arc<Flaky>,
    client: Option<Client>,
}

impl Peer {
    fn client(&self) -> &Client {
        self.client.as_ref().expect("open")
    }
}

fn doc_name(d: usize) -> String {
    format!("d{d}")
}

/// (text, map keys) of a document as a client holds it.
fn content(client: &Client, c: &str, d: usize) -> (String, BTreeSet<String>) {
    let doc = client
        .collection(c)
        .and_then(|c| c.doc(&doc_name(d)))
        .expect("doc");
    let text = doc.doc().get_or_insert_text("body");
    let map = doc.doc().get_or_insert_map("keys");
    let txn = doc.doc().transact();
    (
        text.get_string(&txn),
        map.keys(&txn).map(str::to_string).collect(),
    )
}

/// The whole state of a client's document as one update.
fn state(client: &Client, c: &str, d: usize) -> Vec<u8> {
    let doc = client
        .collection(c)
        .and_then(|c| c.doc(&doc_name(d)))
        .expect("doc");
    let txn = doc.doc().transact();
    txn.encode_state_as_update_v1(&yrs::StateVector::default())
}

/// Opens a client on `path` in collection `c`, syncing in the background if `background`.
fn open_peer(path: &std::path::Path, net: &Arc<Flaky>, c: &str, background: bool) -> Client {
    init_tracing();
    let client = Client::open_with_transport(path, net.clone(), options()).expect("open");
    client.collection(c).expect("collection");
    if background {
        client.start_sync();
    }
    client
}

/// Waits until background sync alone brought every client to the server's head with
/// nothing pending.
fn converge_in_background(server: &Server, c: &str, peers: &[Peer]) {
    let status = |p: &Peer| p.client().collection(c).and_then(|col| col.status());
    // Queues first: once every one is empty no write is left to come, so the head read
    // after it is final (read before, it could miss a push still in flight).
    eventually(
        "background pushes are done",
        Duration::from_secs(60),
        || {
            peers
                .iter()
                .all(|p| status(p).is_ok_and(|s| s.pending == 0))
        },
    );
    let head = head(server.addr, c);
    eventually(
        "background pulls reach the head",
        Duration::from_secs(60),
        || {
            peers
                .iter()
                .all(|p| status(p).is_ok_and(|s| s.last_synced_seq == head))
        },
    );
    let streams: usize = peers
        .iter()
        .map(|p| p.net.sse.connections.load(Ordering::SeqCst))
        .sum();
    assert!(streams > 0, "background sync used the event stream");
}

fn run_case(server: &Server, case: usize, background: bool, ops: &[Op]) {
    let dir = tempfile::tempdir().expect("dir");
    let c = format!("model-{case}");
    let mut peers: Vec<Peer> = (0..CLIENTS)
        .map(|i| {
            let path = dir.path().join(format!("{i}.sqlite"));
            let net = Flaky::new(&server.url());
            let client = open_peer(&path, &net, &c, background);
            Peer {
                path,
                net,
                client: Some(client),
            }
        })
        .collect();
    let mut tokens: Vec<BTreeSet<String>> = vec![BTreeSet::new(); DOCS];
    for (k, op) in ops.iter().enumerate() {
        match op {
            Op::Edit {
                client,
                doc,
                at_end,
            } => {
                let token = format!("<{client}.{k}>");
                let d = peers[*client]
                    .client()
                    .collection(&c)
                    .and_then(|col| col.doc(&doc_name(*doc)))
                    .expect("doc");
                let text = d.doc().get_or_insert_text("body");
                let map = d.doc().get_or_insert_map("keys");
                d.edit(|txn| {
                    let at = if *at_end { text.len(txn) } else { 0 };
                    text.insert(txn, at, &token);
                    map.insert(txn, token.clone(), k as i64);
                })
                .expect("edit saved");
                tokens[*doc].insert(token);
            }
            Op::Offline(i) => peers[*i].net.set_offline(true),
            Op::Online(i) => peers[*i].net.set_offline(false),
            Op::Restart(i) => {
                let p = &mut peers[*i];
                drop(p.client.take());
                p.client = Some(open_peer(&p.path, &p.net, &c, background));
            }
            Op::Sync(i) => {
                let online = !peers[*i].net.offline.load(Ordering::SeqCst);
                let r = peers[*i].client().sync_once();
                assert_eq!(
                    r.is_ok(),
                    online,
                    "sync of client {i} (online: {online}): {r:?}"
                );
            }
            Op::Compact(d) => compact_all(server.addr, &c, &doc_name(*d)),
        }
    }
    for p in &peers {
        p.net.set_offline(false);
    }
    if background {
        converge_in_background(server, &c, &peers);
    } else {
        for _ in 0..2 {
            for p in &peers {
                settle(p.client());
            }
        }
    }
    for (d, doc_tokens) in tokens.iter().enumerate() {
        // The reference: every client's state merged.
        let reference = yrs::Doc::new();
        {
            let mut txn = reference.transact_mut();
            for p in &peers {
                let update = state(p.client(), &c, d);
                txn.apply_update(
                    yrs::updates::decoder::Decode::decode_v1(&update).expect("decodes"),
                )
                .expect("applies");
            }
        }
        let ref_text = {
            let t = reference.get_or_insert_text("body");
            let txn = reference.transact();
            t.get_string(&txn)
        };
        for (i, p) in peers.iter().enumerate() {
            let (text, keys) = content(p.client(), &c, d);
            assert_eq!(
                text, ref_text,
                "client {i}, doc {d}: differs from the reference"
            );
            assert_eq!(&keys, doc_tokens, "client {i}, doc {d}: map keys");
            for t in doc_tokens {
                assert!(
                    text.contains(t.as_str()),
                    "client {i}, doc {d}: edit {t} lost"
                );
            }
            assert_eq!(
                p.client()
                    .collection(&c)
                    .and_then(|c| c.status())
                    .map(|s| s.pending)
                    .ok(),
                Some(0)
            );
        }
    }
}

#[test]
fn random_clients_offline_restarts_and_compactions_converge() {
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(&dir.path().join("data"));
    let cases: u32 = std::env::var("CLIENT_MODEL_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(12);
    let mut runner = TestRunner::new(Config {
        cases,
        max_shrink_iters: 64,
        failure_persistence: None,
        ..Config::default()
    });
    let counter = std::sync::atomic::AtomicUsize::new(0);
    runner
        .run(
            &(any::<bool>(), prop::collection::vec(op(), 1..40)),
            |(background, ops)| {
                let case = counter.fetch_add(1, Ordering::SeqCst);
                run_case(&server, case, background, &ops);
                Ok(())
            },
        )
        .unwrap_or_else(|e| panic!("{e}"));
}
