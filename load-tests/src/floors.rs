//! The floors: the same work with replicate taken away, measured in the same run.
//!
//! - [`sled_append`]: raw sled inserts, one flush per group of concurrent writers — what
//!   durable, group-committed appends cost on this disk with nothing else around them.
//! - [`yrs_merge`]: raw yrs apply + encode of a document's deltas — the core of a compaction.
//! - [`yrs_diff`]: raw yrs build + diff against a state vector — the core of a recovery.
//! - [`postgres_insert`]: raw batched INSERTs into a plain PostgreSQL table, one transaction
//!   per batch — what durable appends cost in that database with no engine around them.
//!
//! (The fourth floor, the in-process actor call, is a scenario run over
//! [`crate::backend::Backend::Actor`]; see [`crate::scenarios::actor_floor`].)

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{Doc, ReadTxn, StateVector, Transact, Update};

use crate::backend::Backend;
use crate::metrics::Metrics;
use crate::peer::Peer;

/// Realistic updates: `n` edits by `writers` peers to one document (as the scenarios make).
pub fn sample_updates(n: usize, writers: u64, seed: u64) -> Vec<Vec<u8>> {
    let mut peers: Vec<Peer> = (0..writers.max(1))
        .map(|i| Peer::new(10_000 + i, "floor", Backend::Offline, Metrics::new(), seed))
        .collect();
    let k = peers.len();
    (0..n).map(|i| peers[i % k].edit("doc").0).collect()
}

/// Appends per second of raw sled: `group` inserts (key = big-endian seq, value = an update)
/// then one flush, repeated for `time` (at most `max` appends).
///
/// # Errors
/// If sled fails.
pub fn sled_append(updates: &[Vec<u8>], group: usize, time: Duration, max: u64) -> Result<f64> {
    let db = sled::Config::new().temporary(true).open()?;
    let group = group.max(1);
    let started = Instant::now();
    let mut seq: u64 = 0;
    while started.elapsed() < time && seq < max {
        for _ in 0..group {
            seq += 1;
            db.insert(
                seq.to_be_bytes(),
                updates[seq as usize % updates.len()].as_slice(),
            )?;
        }
        db.flush()?;
    }
    Ok(seq as f64 / started.elapsed().as_secs_f64())
}

fn build(updates: &[Vec<u8>]) -> Result<Doc> {
    let doc = Doc::new();
    {
        let mut txn = doc.transact_mut();
        for u in updates {
            txn.apply_update(Update::decode_v1(u)?)?;
        }
    }
    Ok(doc)
}

/// Seconds to merge `updates` into one snapshot with raw yrs (apply each to a fresh doc, encode
/// its state and state vector): the best of `rounds`.
///
/// # Errors
/// If an update does not decode or apply.
pub fn yrs_merge(updates: &[Vec<u8>], rounds: usize) -> Result<f64> {
    let mut best = f64::MAX;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        let doc = build(updates)?;
        let txn = doc.transact();
        let snapshot = txn.encode_state_as_update_v1(&StateVector::default());
        let sv = txn.state_vector().encode_v1();
        std::hint::black_box((snapshot, sv));
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// Seconds to build a document from `updates` and encode what a peer with `state_vector`
/// lacks, with raw yrs: the best of `rounds`.
///
/// # Errors
/// If an update or the state vector does not decode.
pub fn yrs_diff(updates: &[Vec<u8>], state_vector: &[u8], rounds: usize) -> Result<f64> {
    let sv = StateVector::decode_v1(state_vector)?;
    let mut best = f64::MAX;
    for _ in 0..rounds.max(1) {
        let t = Instant::now();
        let doc = build(updates)?;
        let diff = doc.transact().encode_state_as_update_v1(&sv);
        std::hint::black_box(diff);
        best = best.min(t.elapsed().as_secs_f64());
    }
    Ok(best)
}

/// One row of the PostgreSQL floor: what the engine stored for one append.
#[derive(Debug, Clone)]
pub struct PgRow {
    pub collection: String,
    pub seq: i64,
    pub document_id: String,
    pub bytes: Vec<u8>,
}

/// What [`postgres_insert`] did in its timed part.
#[derive(Debug, Clone, Copy, Default)]
pub struct PgInserted {
    pub rows: u64,
    pub bytes: u64,
    pub transactions: u64,
    pub seconds: f64,
}

impl PgInserted {
    pub fn rows_per_sec(&self) -> f64 {
        self.rows as f64 / self.seconds.max(1e-9)
    }

    pub fn bytes_per_sec(&self) -> f64 {
        self.bytes as f64 / self.seconds.max(1e-9)
    }
}

/// Connects to the PostgreSQL at `url` with `synchronous_commit = on` (as the engine's own
/// connections), the connection driven by a task on this thread's runtime.
///
/// # Errors
/// If the URL does not parse or the server cannot be reached.
pub async fn pg_connect(url: &str) -> Result<tokio_postgres::Client> {
    let mut config: tokio_postgres::Config = url.parse().context("bad PostgreSQL URL")?;
    config.options("-c synchronous_commit=on");
    config.application_name("replicate-load");
    let (client, connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .context("cannot connect to PostgreSQL")?;
    actix_rt::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("replicate-load: PostgreSQL connection ended: {e}");
        }
    });
    Ok(client)
}

/// Rows per second of raw PostgreSQL: creates `schema` (it must not exist) with one plain table
/// `deltas (collection, seq, document_id, bytes, PRIMARY KEY (collection, seq))` (text columns
/// `COLLATE "C"`, as the engine's), then INSERTs `rows` in order, `batch` rows per transaction
/// through one `unnest` statement each, one transaction at a time on one connection, for at
/// most `time`. The arrays are built before the clock starts.
///
/// # Errors
/// If PostgreSQL fails.
pub async fn postgres_insert(
    client: &mut tokio_postgres::Client,
    schema: &str,
    rows: &[PgRow],
    batch: usize,
    time: Duration,
) -> Result<PgInserted> {
    client
        .batch_execute(&format!(
            r#"CREATE SCHEMA {schema};
               CREATE TABLE {schema}.deltas (
                   collection text COLLATE "C" NOT NULL,
                   seq bigint NOT NULL,
                   document_id text COLLATE "C" NOT NULL,
                   bytes bytea NOT NULL,
                   PRIMARY KEY (collection, seq)
               );"#
        ))
        .await
        .context("create the floor's table")?;
    let stmt = client
        .prepare(&format!(
            "INSERT INTO {schema}.deltas (collection, seq, document_id, bytes)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::bytea[])"
        ))
        .await
        .context("prepare the floor's INSERT")?;
    type Arrays<'a> = (Vec<&'a str>, Vec<i64>, Vec<&'a str>, Vec<&'a [u8]>);
    let batches: Vec<Arrays> = rows
        .chunks(batch.max(1))
        .map(|chunk| {
            (
                chunk.iter().map(|r| r.collection.as_str()).collect(),
                chunk.iter().map(|r| r.seq).collect(),
                chunk.iter().map(|r| r.document_id.as_str()).collect(),
                chunk.iter().map(|r| r.bytes.as_slice()).collect(),
            )
        })
        .collect();
    let mut done = PgInserted::default();
    let started = Instant::now();
    for (c, seq, doc, bytes) in &batches {
        if started.elapsed() >= time {
            break;
        }
        let tx = client.transaction().await?;
        tx.execute(&stmt, &[c, seq, doc, bytes])
            .await
            .context("floor INSERT")?;
        tx.commit().await.context("floor COMMIT")?;
        done.rows += seq.len() as u64;
        done.bytes += bytes.iter().map(|b| b.len() as u64).sum::<u64>();
        done.transactions += 1;
    }
    done.seconds = started.elapsed().as_secs_f64();
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn floors_run_on_sample_updates() {
        let updates = sample_updates(200, 4, 1);
        assert!(sled_append(&updates, 8, Duration::from_millis(50), 64).unwrap() > 0.0);
        assert!(yrs_merge(&updates, 1).unwrap() > 0.0);
        assert!(yrs_diff(&updates, &crate::peer::empty_state_vector(), 1).unwrap() > 0.0);
    }
}
