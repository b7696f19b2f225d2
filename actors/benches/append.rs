//! Durable appends/s through the collection actor with 64 concurrent writers, next to the raw
//! sled floor measured in the same run: the same records inserted by one thread with one flush
//! per batch of 64 (what perfect group commit would cost, with no actors, validation or
//! indexes). Prints both and their ratio; asserts nothing about speed.
//!
//! `cargo bench -p replicate-actors --bench append` (set `APPEND_SECONDS` to change the length).

use std::sync::Arc;
use std::time::{Duration, Instant};

use replicate_actors::{Config, ManualClock, Replicate, Store, Write};

const WRITERS: usize = 64;

/// A realistic small update: a 20-character text insert by one client.
fn update(client: u64, i: u64) -> Vec<u8> {
    use yrs::{Doc, Text, Transact};
    let doc = Doc::with_client_id(client);
    let text = doc.get_or_insert_text("t");
    let mut txn = doc.transact_mut();
    text.insert(&mut txn, 0, &format!("edit number {i:>8}"));
    txn.encode_update_v1()
}

fn raw_sled_floor(seconds: f64, payload: &[u8]) -> f64 {
    let dir = tempfile::tempdir().expect("temp dir");
    let db = sled::open(dir.path()).expect("sled opens");
    let start = Instant::now();
    let mut n: u64 = 0;
    while start.elapsed().as_secs_f64() < seconds {
        for _ in 0..WRITERS {
            n += 1;
            db.insert(n.to_be_bytes(), payload).expect("insert");
        }
        db.flush().expect("flush");
    }
    n as f64 / start.elapsed().as_secs_f64()
}

/// `n` successive edits by one client: each appends 20 characters to its own text, so every
/// write is new content the server must check against the document and integrate.
fn edits(client: u64, n: usize) -> Vec<Vec<u8>> {
    use yrs::{Doc, Text, Transact};
    let doc = Doc::with_client_id(client);
    let text = doc.get_or_insert_text("t");
    let mut len = 0;
    (0..n)
        .map(|i| {
            let mut txn = doc.transact_mut();
            let edit = format!("edit number {i:>8}");
            text.insert(&mut txn, len, &edit);
            len += edit.len() as u32;
            txn.encode_update_v1()
        })
        .collect()
}

/// What each writer sends: the same bytes every time (checked, integrated once) or distinct
/// successive edits.
#[derive(Clone)]
enum Payload {
    Same(Vec<u8>),
    Edits(Arc<Vec<Vec<Vec<u8>>>>),
}

fn actor_appends(seconds: f64, payload: Payload) -> (f64, u64) {
    let dir = tempfile::tempdir().expect("temp dir");
    actix::System::new().block_on(async move {
        let store = Store::open(dir.path(), 256 << 20).expect("store opens");
        let r = Replicate::start(
            Config::new(dir.path()),
            store,
            Arc::new(ManualClock::new(0)),
        )
        .expect("starts");
        let deadline = Instant::now() + Duration::from_secs_f64(seconds);
        let start = Instant::now();
        let writers = (0..WRITERS).map(|w| {
            let r = r.clone();
            let payload = payload.clone();
            async move {
                let mut n = 0u64;
                while Instant::now() < deadline {
                    let bytes = match &payload {
                        Payload::Same(b) => b.clone(),
                        Payload::Edits(all) => match all[w].get(n as usize) {
                            Some(b) => b.clone(),
                            None => break,
                        },
                    };
                    let write = Write {
                        document_id: format!("doc-{}", w % 16),
                        bytes,
                        op_id: None,
                    };
                    r.update("bench", write).await.expect("append");
                    n += 1;
                }
                n
            }
        });
        let total: u64 = futures::future::join_all(writers).await.into_iter().sum();
        let rate = total as f64 / start.elapsed().as_secs_f64();
        let flushes = r.stats().await.flushes;
        r.close(Duration::from_secs(5)).await.expect("close");
        (rate, total / flushes.max(1))
    })
}

fn main() {
    let seconds: f64 = std::env::var("APPEND_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5.0);
    let payload = update(1, 1);
    let floor = raw_sled_floor(seconds, &payload);
    let (actor, per_flush) = actor_appends(seconds, Payload::Same(payload.clone()));
    let per_writer = (seconds * 4_000.0) as usize;
    let all: Vec<Vec<Vec<u8>>> = (0..WRITERS)
        .map(|w| edits(w as u64 + 1, per_writer))
        .collect();
    let (fresh, fresh_per_flush) = actor_appends(seconds, Payload::Edits(Arc::new(all)));
    println!("update size:                       {} bytes", payload.len());
    println!("raw sled, flush per {WRITERS} inserts:    {floor:>10.0} appends/s (floor)");
    println!("collection actor, {WRITERS} writers, same bytes:     {actor:>10.0} appends/s ({per_flush} writes per flush)");
    println!("collection actor, {WRITERS} writers, new edits:      {fresh:>10.0} appends/s ({fresh_per_flush} writes per flush)");
    println!("ratio actor / floor (same bytes): {:>10.2}", actor / floor);
    println!("ratio actor / floor (new edits):  {:>10.2}", fresh / floor);
}
