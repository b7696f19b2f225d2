//! Shared helpers for the actor tests: a store in a temp dir, a manual clock, and peers that
//! hold real yrs documents.
#![allow(dead_code)]

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use replicate_actors::{
    Config, ManualClock, OperationType, Replicate, Store, StreamRequest, Write,
};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, GetString, ReadTxn, StateVector, Text, Transact, Update};

pub const PEER_TIMEOUT: Duration = Duration::from_secs(60);

pub fn config(dir: &Path) -> Config {
    let mut config = Config::new(dir);
    config.peer_timeout = PEER_TIMEOUT;
    config.cache_bytes = 16 * 1024 * 1024;
    config
}

/// Opens the store in `dir` (retrying while a previous incarnation releases its lock) and
/// starts the actors with `clock`.
pub async fn open_with(config: Config, clock: &ManualClock) -> Replicate {
    let mut last = None;
    for _ in 0..200 {
        match Store::open(&config.data_dir, config.cache_bytes) {
            Ok(store) => {
                return Replicate::start(config, store, Arc::new(clock.clone()))
                    .expect("actors start")
            }
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("store did not reopen: {last:?}");
}

pub async fn open(dir: &Path, clock: &ManualClock) -> Replicate {
    open_with(config(dir), clock).await
}

pub fn write(doc: &str, bytes: Vec<u8>) -> Write {
    Write {
        document_id: doc.to_string(),
        bytes,
        op_id: None,
    }
}

/// A document replica with its own client id; edits append text.
pub struct Replica {
    pub doc: Doc,
}

impl Replica {
    pub fn new(client_id: u64) -> Self {
        Replica {
            doc: Doc::with_client_id(client_id),
        }
    }

    /// Appends `s` to the text and answers the update.
    pub fn append(&self, s: &str) -> Vec<u8> {
        let text = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        let len = text.len(&txn);
        text.insert(&mut txn, len, s);
        txn.encode_update_v1()
    }

    /// Deletes the first `n` characters (if there are that many) and answers the update.
    pub fn delete_front(&self, n: u32) -> Vec<u8> {
        let text = self.doc.get_or_insert_text("t");
        let mut txn = self.doc.transact_mut();
        let n = n.min(text.len(&txn));
        text.remove_range(&mut txn, 0, n);
        txn.encode_update_v1()
    }

    pub fn apply(&self, update: &[u8]) {
        let update = Update::decode_v1(update).expect("server sent a valid update");
        self.doc
            .transact_mut()
            .apply_update(update)
            .expect("update applies");
    }

    pub fn text(&self) -> String {
        let text = self.doc.get_or_insert_text("t");
        let s = text.get_string(&self.doc.transact());
        s
    }

    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    pub fn sv(&self) -> StateVector {
        self.doc.transact().state_vector()
    }

    pub fn full_state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// Whether every update `other` holds is also held here.
    pub fn contains(&self, other: &Replica) -> bool {
        let mine = self.sv();
        let theirs = other.sv();
        theirs
            .iter()
            .all(|(client, clock)| mine.get(client) >= *clock)
    }
}

/// A peer: one replica per document and a cursor.
pub struct Peer {
    pub id: String,
    pub client_base: u64,
    pub cursor: u64,
    pub docs: HashMap<String, Replica>,
}

impl Peer {
    pub fn new(id: &str, client_base: u64) -> Self {
        Peer {
            id: id.to_string(),
            client_base,
            cursor: 0,
            docs: HashMap::new(),
        }
    }

    pub fn replica(&mut self, doc: &str) -> &Replica {
        let next = self.client_base + self.docs.len() as u64;
        self.docs
            .entry(doc.to_string())
            .or_insert_with(|| Replica::new(next))
    }

    /// Streams pages of `limit` until caught up; answers the seqs of the deltas received.
    pub async fn sync(&mut self, r: &Replicate, c: &str, limit: usize) -> Vec<u64> {
        let mut seen = Vec::new();
        loop {
            let page = r
                .stream(
                    c,
                    StreamRequest {
                        limit,
                        ..StreamRequest::after(self.cursor)
                    },
                )
                .await
                .expect("stream answers");
            assert!(
                page.cursor >= self.cursor,
                "cursor went back: {} -> {}",
                self.cursor,
                page.cursor
            );
            for change in &page.changes {
                if change.operation != OperationType::Snapshot {
                    assert!(
                        change.seq > self.cursor && change.seq <= page.cursor,
                        "delta {} outside ({}, {}]",
                        change.seq,
                        self.cursor,
                        page.cursor
                    );
                    seen.push(change.seq);
                }
                self.replica(&change.document_id).apply(&change.bytes);
            }
            self.cursor = page.cursor;
            if !page.has_more {
                return seen;
            }
        }
    }

    pub async fn ack(&self, r: &Replicate, c: &str) -> u64 {
        r.ack(c, &self.id, self.cursor).await.expect("ack answers")
    }
}
