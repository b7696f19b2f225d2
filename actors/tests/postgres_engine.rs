//! The PostgreSQL engine's commits, driven at the engine where an interleaving or a failure
//! can be made to happen every time (issue 9).
//!
//! # A failed commit leaves nothing behind
//! Appends commit in two pipelined round trips with a transaction begun by hand
//! (`commit::commit_appends`): a failure must roll it back before the connection serves
//! anything else, and store nothing of the failed writes.
//!
//! # The compaction generation guard
//! Two nodes may compact one document at once. Each merges what it read, and the one that
//! read earlier may commit last: without a check its snapshot (lacking what the other merged
//! and deleted) would replace the newer one, and those updates would be gone for good. The
//! engine refuses a compaction whose document was compacted after its read
//! (`Outcome::Superseded`; the actor then reads and merges again). The tests here drive that
//! interleaving at the engine, where it can be made to happen every time.
//!
//! # A commit whose answer was lost
//! A connection that breaks after `COMMIT` was sent may have committed: the engine asks the
//! database (`store::postgres::settle`). A proxy that cuts exactly that answer makes it
//! happen every time.
//!
//! Needs `REPLICATE_TEST_POSTGRES`; skipped loudly without it, failed under `CI=true`.

mod common;

use common::*;
use replicate_actors::store::{
    Batch, CompactionGuard, CompactionWrite, DeltaRecord, DocStats, Outcome, SnapshotRecord,
};
use replicate_actors::{OperationType, Store};
use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

const C: &str = "guarded";
const DOC: &str = "d";

fn open_postgres(test: &str) -> Option<(tempfile::TempDir, Store)> {
    if !use_postgres(test) {
        return None;
    }
    let dir = tempfile::tempdir().expect("temp dir");
    let store = open_store(&config(dir.path())).expect("open the PostgreSQL store");
    Some((dir, store))
}

/// A store on a fresh schema with one connection, so every commit reuses the one before's.
fn open_single_connection(test: &str) -> Option<(String, String, Store)> {
    if !use_postgres(test) {
        return None;
    }
    let url = std::env::var("REPLICATE_TEST_POSTGRES").expect("url");
    let schema = format!(
        "t_single_{}_{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .expect("clock")
            .subsec_nanos()
    );
    let options = replicate_actors::store::postgres::PostgresOptions {
        schema: schema.clone(),
        pool_size: 1,
    };
    let store = Store::postgres(&url, &options).expect("open the PostgreSQL store");
    Some((url, schema, store))
}

/// A store on a fresh schema with one connection as a role of its own whose lock waits time
/// out after 200 ms (so a lock held elsewhere fails a commit's first round trip).
fn open_impatient(test: &str) -> Option<(String, String, String, Store)> {
    if !use_postgres(test) {
        return None;
    }
    let url = std::env::var("REPLICATE_TEST_POSTGRES").expect("url");
    let role = format!("t_impatient_{}", std::process::id());
    execute(
        &url,
        &format!(
            "DROP ROLE IF EXISTS {role}; CREATE ROLE {role} LOGIN SUPERUSER; \
             ALTER ROLE {role} SET lock_timeout = '200ms'"
        ),
    );
    // postgres://USER@HOST… → postgres://ROLE@HOST…
    let (scheme, rest) = url.split_once("://").expect("a postgres:// url");
    let host = rest.split_once('@').map_or(rest, |(_, h)| h);
    let role_url = format!("{scheme}://{role}@{host}");
    let schema = format!("t_impatient_{}", std::process::id());
    let options = replicate_actors::store::postgres::PostgresOptions {
        schema: schema.clone(),
        pool_size: 1,
    };
    let store = Store::postgres(&role_url, &options).expect("open the PostgreSQL store");
    Some((url, role, schema, store))
}

/// Runs `sql` on a connection of its own (the test's hand on the database).
fn execute(url: &str, sql: &str) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client.batch_execute(sql).await.expect(sql);
    });
}

fn append_with_op(store: &Store, bytes: &[u8], op: &str) -> replicate_actors::Result<Outcome> {
    let delta = DeltaRecord {
        document_id: DOC.into(),
        operation: OperationType::Update,
        bytes: bytes.to_vec(),
        created_at: 1,
    };
    let op = replicate_actors::store::OpWrite { op_id: op, hash: 9 };
    let batch = Batch::append(C, 0, &delta, &DocStats::default(), Some(op));
    let mut outcomes = store.commit(&[batch])?;
    Ok(outcomes
        .pop()
        .and_then(|mut o| o.pop())
        .expect("one outcome"))
}

/// An append whose insert fails (a row already holds its seq: planted by hand) fails whole:
/// no op id, no counters, no head move; the one connection, rolled back, serves the next
/// commit, which takes that seq once the row is gone.
#[test]
fn a_failed_append_commit_stores_nothing_and_the_connection_serves_the_next() {
    let Some((url, schema, store)) = open_single_connection("a_failed_append_commit") else {
        return;
    };
    let writer = Replica::new(9);
    let first = writer.append("kept ");
    assert_eq!(
        append_with_op(&store, &first, "op-1").unwrap(),
        Outcome::Stored(1)
    );
    execute(
        &url,
        &format!(
            "INSERT INTO {schema}.deltas (collection, seq, document_id, operation, bytes, \
             created_at) VALUES ('{C}', 2, 'planted', 1, '\\x00', 1)"
        ),
    );
    let second = writer.append("lost");
    let failed = append_with_op(&store, &second, "op-2");
    assert!(failed.is_err(), "the insert of seq 2 must fail: {failed:?}");
    assert_eq!(store.head(C).unwrap(), 1, "the head did not move");
    assert!(
        store.op_record(C, DOC, "op-2").unwrap().is_none(),
        "the failed write's op id is not stored"
    );
    let stats = store.doc_stats(C, DOC).unwrap().expect("counters");
    assert_eq!(stats.retained_count, 1, "the failed write is not counted");
    execute(
        &url,
        &format!("DELETE FROM {schema}.deltas WHERE document_id = 'planted'"),
    );
    assert_eq!(
        append_with_op(&store, &second, "op-2").unwrap(),
        Outcome::Stored(2)
    );
    assert_eq!(
        append_with_op(&store, &second, "op-2").unwrap(),
        Outcome::Duplicate(replicate_actors::store::OpRecord {
            seq: 2,
            hash: 9,
            created_at: 1
        })
    );
    let seqs: Vec<u64> = store
        .all_deltas(C, u64::MAX)
        .unwrap()
        .iter()
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(seqs, vec![1, 2]);
    drop(store);
    execute(&url, &format!("DROP SCHEMA {schema} CASCADE"));
}

/// Appends `updates` to `DOC`, answering their seqs (the engine numbers them).
fn append_all(store: &Store, updates: &[Vec<u8>]) -> Vec<u64> {
    updates
        .iter()
        .map(|bytes| {
            let delta = DeltaRecord {
                document_id: DOC.into(),
                operation: OperationType::Update,
                bytes: bytes.clone(),
                created_at: 1,
            };
            let batch = Batch::append(C, 0, &delta, &DocStats::default(), None);
            match store
                .commit(&[batch])
                .expect("append")
                .pop()
                .and_then(|mut o| o.pop())
            {
                Some(Outcome::Stored(seq)) => seq,
                other => panic!("append answered {other:?}"),
            }
        })
        .collect()
}

/// A compaction of `DOC` into `snapshot` (merging through `upto`), deleting `deleted`, as
/// planned by a node that read the document at `read_generation`.
fn compact(
    store: &Store,
    snapshot: &Replica,
    upto: u64,
    deleted: &[u64],
    read_generation: u64,
) -> Outcome {
    let record = SnapshotRecord {
        bytes: snapshot.full_state(),
        state_vector: snapshot.state_vector(),
        snapshot_seq: upto,
        created_at: 2,
    };
    let batch = Batch::compaction(
        C,
        &CompactionWrite {
            document_id: DOC,
            snapshot: &record,
            deleted,
            stats: DocStats::default(),
            bucket_seqs: 16,
            guard: Some(CompactionGuard {
                read_generation,
                // No peer is active: nothing is held back by an ack.
                active_since: u64::MAX,
            }),
        },
    );
    let mut outcomes = store.commit(&[batch]).expect("compaction commit");
    outcomes
        .pop()
        .and_then(|mut o| o.pop())
        .expect("one outcome")
}

fn generation(store: &Store) -> u64 {
    store
        .doc_stats(C, DOC)
        .expect("doc stats")
        .map_or(0, |s| s.generation)
}

/// Node A reads the document (updates 1–2), node B reads it later (1–3), compacts and
/// deletes all three; then A's compaction arrives. It must be refused, and B's snapshot (the
/// only place update 3 still lives) must stay.
#[test]
fn a_compaction_read_before_another_compaction_committed_is_superseded() {
    let Some((_dir, store)) = open_postgres("a_compaction_read_before_another_compaction") else {
        return;
    };
    let writer = Replica::new(7);
    let updates: Vec<Vec<u8>> = ["one ", "two ", "three"]
        .iter()
        .map(|s| writer.append(s))
        .collect();
    let seqs = append_all(&store, &updates);
    assert_eq!(seqs, vec![1, 2, 3]);

    // A reads generation 0 and merges updates 1 and 2.
    let read_by_a = generation(&store);
    let merged_by_a = Replica::new(100);
    merged_by_a.apply(&updates[0]);
    merged_by_a.apply(&updates[1]);
    // B reads generation 0 too, merges all three and commits first.
    let read_by_b = generation(&store);
    let merged_by_b = Replica::new(101);
    for u in &updates {
        merged_by_b.apply(u);
    }
    assert_eq!(
        compact(&store, &merged_by_b, 3, &[1, 2, 3], read_by_b),
        Outcome::Compacted {
            deleted: vec![1, 2, 3]
        }
    );
    assert_eq!(generation(&store), read_by_b + 1);

    // A commits last, with what it read before B's commit.
    assert_eq!(
        compact(&store, &merged_by_a, 2, &[1, 2], read_by_a),
        Outcome::Superseded,
        "a compaction planned on a generation another node moved past must be refused"
    );
    let kept = store
        .snapshot(C, DOC)
        .expect("read the snapshot")
        .expect("B's snapshot");
    let restored = Replica::new(102);
    restored.apply(&kept.bytes);
    assert_eq!(
        restored.text(),
        "one two three",
        "update 3 lives only in B's snapshot"
    );
    assert_eq!(kept.snapshot_seq, 3);
    assert_eq!(
        generation(&store),
        read_by_b + 1,
        "the refused one moved nothing"
    );
}

/// The control: a compaction planned on the current generation commits (the guard refuses
/// only what another compaction overtook), and moves the generation on.
#[test]
fn a_compaction_read_at_the_current_generation_commits() {
    let Some((_dir, store)) = open_postgres("a_compaction_read_at_the_current_generation") else {
        return;
    };
    let writer = Replica::new(8);
    let updates: Vec<Vec<u8>> = ["a", "b"].iter().map(|s| writer.append(s)).collect();
    append_all(&store, &updates);
    let merged = Replica::new(200);
    for u in &updates {
        merged.apply(u);
    }
    for round in 0..3 {
        let read = generation(&store);
        assert_eq!(read, round);
        let deleted: &[u64] = if round == 0 { &[1, 2] } else { &[] };
        assert_eq!(
            compact(&store, &merged, 2, deleted, read),
            Outcome::Compacted {
                deleted: deleted.to_vec()
            }
        );
    }
    assert_eq!(generation(&store), 3);
}

/// An append commit that fails in its first round trip (the collection's row lock times out:
/// another transaction holds it) never sent its COMMIT: the transaction it began must be
/// rolled back before its connection, the only one, serves the next commit.
#[test]
fn an_append_commit_failing_before_its_commit_is_rolled_back() {
    let Some((url, role, schema, store)) = open_impatient("an_append_commit_failing_before") else {
        return;
    };
    let writer = Replica::new(10);
    assert_eq!(
        append_with_op(&store, &writer.append("a"), "op-1").unwrap(),
        Outcome::Stored(1)
    );
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let holder = rt.block_on(async {
        let (client, connection) = tokio_postgres::connect(&url, tokio_postgres::NoTls)
            .await
            .expect("connect");
        tokio::spawn(connection);
        client
            .batch_execute(&format!(
                "BEGIN; SELECT head FROM {schema}.collections WHERE collection = '{C}' FOR UPDATE"
            ))
            .await
            .expect("hold the collection's row");
        client
    });
    let blocked = append_with_op(&store, &writer.append("b"), "op-2");
    assert!(blocked.is_err(), "the lock wait must time out: {blocked:?}");
    rt.block_on(async { holder.batch_execute("ROLLBACK").await.expect("release") });
    assert_eq!(
        append_with_op(&store, &writer.append("c"), "op-3").unwrap(),
        Outcome::Stored(2),
        "the connection left its failed transaction"
    );
    assert!(store.op_record(C, DOC, "op-2").unwrap().is_none());
    drop(store);
    execute(
        &url,
        &format!("DROP SCHEMA {schema} CASCADE; DROP ROLE {role}"),
    );
}

/// A TCP proxy in front of PostgreSQL that, while armed, cuts the connection carrying a
/// `COMMIT`'s answer: the server committed, the engine never hears so. It reads the server's
/// messages (a type byte and a length each, after the startup reply which has the same shape
/// with `NoTls`) and forwards all others untouched.
struct CommitCutter {
    url: String,
    armed: Arc<AtomicUsize>,
    cut: Arc<AtomicUsize>,
}

impl CommitCutter {
    fn start(url: &str) -> CommitCutter {
        // postgres://USER@HOST:PORT/DB… → the upstream address, and the URL through the proxy.
        let (scheme, rest) = url.split_once("://").expect("a postgres:// url");
        let (user, rest) = rest.split_once('@').expect("a user in the url");
        let (upstream, path) = rest.split_once('/').expect("a database in the url");
        let upstream: SocketAddr = upstream.parse().expect("HOST:PORT as an address");
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind the proxy");
        let proxy_url = format!(
            "{scheme}://{user}@{}/{path}",
            listener.local_addr().expect("proxy address")
        );
        let (armed, cut) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
        let (a, c) = (armed.clone(), cut.clone());
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let (to_server, from_client) = (
                    server.try_clone().expect("clone"),
                    client.try_clone().expect("clone"),
                );
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut &from_client, &mut &to_server);
                    let _ = to_server.shutdown(Shutdown::Both);
                });
                let (a, c) = (a.clone(), c.clone());
                std::thread::spawn(move || relay_answers(server, client, &a, &c));
            }
        });
        CommitCutter {
            url: proxy_url,
            armed,
            cut,
        }
    }

    /// Cuts the next `n` connections that carry a COMMIT's answer.
    fn arm(&self, n: usize) {
        self.armed.store(n, Ordering::SeqCst);
    }

    fn cuts(&self) -> usize {
        self.cut.load(Ordering::SeqCst)
    }
}

fn relay_answers(server: TcpStream, mut client: TcpStream, armed: &AtomicUsize, cut: &AtomicUsize) {
    let mut from_server = std::io::BufReader::new(&server);
    loop {
        let mut head = [0u8; 5];
        if from_server.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
        let mut body = vec![0u8; len.saturating_sub(4)];
        if from_server.read_exact(&mut body).is_err() {
            break;
        }
        let commit_answer = head[0] == b'C' && body == b"COMMIT\0";
        if commit_answer
            && armed
                .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                .is_ok()
        {
            cut.fetch_add(1, Ordering::SeqCst);
            break;
        }
        if client.write_all(&head).is_err() || client.write_all(&body).is_err() {
            break;
        }
    }
    let _ = client.shutdown(Shutdown::Both);
    let _ = server.shutdown(Shutdown::Both);
}

/// A store on a fresh schema reached through a [`CommitCutter`].
fn open_behind_cutter(test: &str) -> Option<(String, String, CommitCutter, Store)> {
    if !use_postgres(test) {
        return None;
    }
    let url = std::env::var("REPLICATE_TEST_POSTGRES").expect("url");
    let cutter = CommitCutter::start(&url);
    let schema = format!("t_cut_{}_{}", std::process::id(), test.len());
    let options = replicate_actors::store::postgres::PostgresOptions {
        schema: schema.clone(),
        pool_size: 2,
    };
    let store = Store::postgres(&cutter.url, &options).expect("open the PostgreSQL store");
    Some((url, schema, cutter, store))
}

/// An append whose COMMIT went through but whose answer was lost with the connection (a
/// database restart, a failover) is answered as stored, with its seq: the engine asks the
/// database what became of the transaction. Answering "nothing stored" (what a lost
/// connection means for every other statement) would refuse a write that is in the log,
/// and its retry without an op id would store it twice.
#[test]
fn an_append_whose_commit_answer_was_lost_is_answered_by_what_the_database_did() {
    let Some((url, schema, cutter, store)) = open_behind_cutter("lost_append_commit") else {
        return;
    };
    let writer = Replica::new(11);
    assert_eq!(
        append_with_op(&store, &writer.append("a"), "op-1").unwrap(),
        Outcome::Stored(1)
    );
    cutter.arm(1);
    let second = writer.append("b");
    assert_eq!(
        append_with_op(&store, &second, "op-2").unwrap(),
        Outcome::Stored(2),
        "the commit went through: its write is answered as stored"
    );
    assert_eq!(cutter.cuts(), 1, "the COMMIT's answer was cut");
    assert_eq!(store.head(C).unwrap(), 2);
    assert_eq!(
        append_with_op(&store, &second, "op-2").unwrap(),
        Outcome::Duplicate(replicate_actors::store::OpRecord {
            seq: 2,
            hash: 9,
            created_at: 1
        }),
        "a retry of the write finds it stored"
    );
    assert_eq!(
        append_with_op(&store, &writer.append("c"), "op-3").unwrap(),
        Outcome::Stored(3),
        "the pool reconnected"
    );
    drop(store);
    execute(&url, &format!("DROP SCHEMA {schema} CASCADE"));
}

/// The same for a commit that is not appends alone (an append and a peer's ack: the general
/// transaction, whose COMMIT is its own statement).
#[test]
fn a_mixed_commit_whose_answer_was_lost_is_answered_by_what_the_database_did() {
    let Some((url, schema, cutter, store)) = open_behind_cutter("lost_mixed_commit") else {
        return;
    };
    let writer = Replica::new(12);
    assert_eq!(
        append_with_op(&store, &writer.append("a"), "op-1").unwrap(),
        Outcome::Stored(1)
    );
    let delta = DeltaRecord {
        document_id: DOC.into(),
        operation: OperationType::Update,
        bytes: writer.append("b"),
        created_at: 1,
    };
    let op = replicate_actors::store::OpWrite {
        op_id: "op-2",
        hash: 9,
    };
    let mut batch = Batch::append(C, 0, &delta, &DocStats::default(), Some(op));
    batch.extend(Batch::put_peer(
        C,
        "p",
        &replicate_actors::store::PeerRecord {
            synced_seq: 1,
            last_seen_at: 1,
        },
    ));
    cutter.arm(1);
    let outcomes = store
        .commit(&[batch])
        .expect("answered by what the database did");
    assert_eq!(cutter.cuts(), 1, "the COMMIT's answer was cut");
    assert_eq!(outcomes[0][0], Outcome::Stored(2));
    assert_eq!(store.head(C).unwrap(), 2);
    assert_eq!(
        store.op_record(C, DOC, "op-2").unwrap().map(|r| r.seq),
        Some(2)
    );
    drop(store);
    execute(&url, &format!("DROP SCHEMA {schema} CASCADE"));
}
