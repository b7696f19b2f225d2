//! The PostgreSQL engine: every record in a few tables of one schema, each commit one
//! transaction.
//!
//! # Driver
//! `tokio-postgres` with a `deadpool-postgres` pool: the async driver pipelines a commit's
//! statements on one connection, and the pool is the small, well-kept one built for it (sqlx
//! would add its own runtime layer and compile-time query machinery we do not use). The engine
//! owns a two-thread tokio runtime for its connections; the blocking [`Engine`] calls hand their
//! work to it and wait, so they work from any thread (an actor's, a worker's, the committer's)
//! without entering another runtime.
//!
//! # Durability
//! A commit returns once PostgreSQL committed the transaction with `synchronous_commit = on`
//! (set on every connection), so [`Engine::flush`] has nothing left to do.
//!
//! # Several nodes
//! Several processes ("nodes") may serve one schema at once. Each commit numbers its appends
//! from the locked head of their collection (`commit.rs` says why that keeps seqs gap-free and
//! unique), settles op ids across nodes, counts documents' bytes in the database, and checks
//! compactions against acks and compactions committed elsewhere. Other nodes hear of new heads
//! through `LISTEN`/`NOTIFY` (`listen.rs`).
//!
//! Tables live in their own schema (`replicate` unless configured), created and migrated on
//! open (`schema.rs`).

mod commit;
mod listen;
mod schema;
mod settle;

use std::future::Future;

use deadpool_postgres::{Manager, ManagerConfig, Object, Pool, RecyclingMethod};
use tokio_postgres::types::ToSql;
use tokio_postgres::{NoTls, Row};

use super::{
    Batch, DeletedEntries, DeltaRecord, DocStats, Engine, HeadListener, LoadedCollection, OpRecord,
    Outcome, PeerRecord, SnapshotRecord,
};
use crate::error::{Error, Result};
use crate::paging::{self, DeletedEntry};
use crate::types::OperationType;

/// Attempts of a commit that PostgreSQL aborted for a deadlock or a serialization failure
/// (the transaction changed nothing, so it is simply run again).
const COMMIT_ATTEMPTS: usize = 5;
/// Longest wait for a pooled connection, or for a new one to connect.
const POOL_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// Rows a lazy read fetches per round trip.
const CHUNK_ROWS: i64 = 512;

/// How to reach and lay out the database.
#[derive(Debug, Clone)]
pub struct PostgresOptions {
    /// Schema holding the tables (created if missing): a lowercase SQL identifier.
    pub schema: String,
    /// Connections in the pool.
    pub pool_size: usize,
}

impl Default for PostgresOptions {
    fn default() -> Self {
        PostgresOptions {
            schema: "replicate".into(),
            pool_size: 8,
        }
    }
}

/// The PostgreSQL engine; see the module docs.
pub struct PostgresEngine {
    pool: Pool,
    schema: String,
    /// Connection settings, for the notification listener's own connection.
    config: tokio_postgres::Config,
    /// This process in head notifications (random per open).
    node: u64,
    /// Runs the connections; shut down without blocking on drop (which may happen on an async
    /// thread).
    runtime: Option<tokio::runtime::Runtime>,
}

fn pg_error(e: tokio_postgres::Error) -> Error {
    let reason = pg_reason(&e);
    if connection_lost(&e) {
        Error::Unreachable { reason }
    } else {
        Error::Storage(reason)
    }
}

/// The driver's error with its source, which holds the server's message (e.g. a full disk):
/// `{:#}` is not implemented.
fn pg_reason(e: &tokio_postgres::Error) -> String {
    match std::error::Error::source(e) {
        Some(source) => format!("postgres: {e}: {source}"),
        None => format!("postgres: {e}"),
    }
}

/// Whether `e` is a lost connection (closed, an I/O error, or the server ending it: SQLSTATE
/// class 08 or 57P), not the store's answer. A statement lost so changed nothing and is worth
/// a retry; a lost `COMMIT` may have committed (see `settle`).
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    e.is_closed()
        || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        || e.code()
            .is_some_and(|c| c.code().starts_with("08") || c.code().starts_with("57P"))
}

fn pool_error(e: deadpool_postgres::PoolError) -> Error {
    Error::Unreachable {
        reason: format!("postgres pool: {e}"),
    }
}

fn corrupt(what: &str) -> Error {
    Error::Storage(format!("corrupt {what} in postgres"))
}

/// Stored numbers are `bigint`: seqs, counters and millis fit; a hash is stored bit for bit.
fn int(v: u64) -> i64 {
    v as i64
}

fn uint(v: i64) -> u64 {
    v as u64
}

fn operation_code(op: OperationType) -> i16 {
    match op {
        OperationType::Insert => 0,
        OperationType::Update => 1,
        OperationType::Delete => 2,
        OperationType::Snapshot => 3,
    }
}

fn operation_from(code: i16) -> Result<OperationType> {
    Ok(match code {
        0 => OperationType::Insert,
        1 => OperationType::Update,
        2 => OperationType::Delete,
        3 => OperationType::Snapshot,
        _ => return Err(corrupt("operation code")),
    })
}

/// Whether `s` is safe to splice into SQL as a schema name.
fn valid_schema(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
        && s.chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl PostgresEngine {
    /// Connects to `url` (a `postgres://` URL or `key=value` string), creates the schema and
    /// applies missing migrations.
    ///
    /// # Errors
    /// [`Error::Storage`] for a bad URL or schema name, or if the database cannot be reached
    /// or migrated, or holds a newer schema.
    pub fn open(url: &str, options: &PostgresOptions) -> Result<PostgresEngine> {
        if !valid_schema(&options.schema) {
            return Err(Error::Storage(format!(
                "postgres schema {:?} must be a lowercase identifier (a-z, 0-9, _; at most 63)",
                options.schema
            )));
        }
        let mut config: tokio_postgres::Config = url
            .parse()
            .map_err(|e| Error::Storage(format!("bad postgres URL: {e}")))?;
        config.options(format!(
            "-c search_path={} -c synchronous_commit=on",
            options.schema
        ));
        if config.get_application_name().is_none() {
            config.application_name("replicate");
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("replicate-postgres")
            .enable_all()
            .build()
            .map_err(|e| Error::Internal(format!("cannot start the postgres runtime: {e}")))?;
        let manager = Manager::from_config(
            config.clone(),
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager)
            .max_size(options.pool_size.max(1))
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(POOL_WAIT))
            .create_timeout(Some(POOL_WAIT))
            .build()
            .map_err(|e| Error::Storage(format!("postgres pool: {e}")))?;
        let engine = PostgresEngine {
            pool,
            schema: options.schema.clone(),
            config,
            node: random_node_id(),
            runtime: Some(runtime),
        };
        let schema = engine.schema.clone();
        engine.with(move |client| async move { schema::migrate(client, &schema).await })?;
        Ok(engine)
    }

    /// Runs `work` on the engine's runtime and waits for it.
    fn run<T, F>(&self, work: F) -> Result<T>
    where
        T: Send + 'static,
        F: Future<Output = Result<T>> + Send + 'static,
    {
        let Some(runtime) = &self.runtime else {
            return Err(Error::Internal("postgres engine is shut down".into()));
        };
        wait_for(runtime.handle(), work)
    }

    /// Runs `f` with a pooled connection on the engine's runtime and waits for it.
    fn with<T, F, Fut>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce(Object) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T>> + Send,
    {
        let pool = self.pool.clone();
        self.run(async move {
            let client = pool
                .get()
                .await
                .map_err(|e| Error::Storage(format!("postgres pool: {e} ({:?})", pool.status())))?;
            f(client).await
        })
    }

    /// Queries `sql` with `params` and answers the rows (the statement is prepared once per
    /// connection).
    fn rows(&self, sql: &'static str, params: Params) -> Result<Vec<Row>> {
        self.with(move |client| async move {
            let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
            client.query(&stmt, &params.refs()).await.map_err(pg_error)
        })
    }
}

/// Runs `work` on `runtime` and blocks this thread until it answers.
///
/// The answer comes back on a std channel, not by polling the task's `JoinHandle`: a caller on
/// another runtime's thread (an actor's) would poll that handle under its own runtime's
/// cooperative budget, and once the budget ran out the wake-up would be deferred to that
/// runtime, which this blocked thread is running: a deadlock (seen here).
fn wait_for<T, F>(runtime: &tokio::runtime::Handle, work: F) -> Result<T>
where
    T: Send + 'static,
    F: Future<Output = Result<T>> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    runtime.spawn(async move {
        let _ = tx.send(work.await);
    });
    rx.recv()
        .map_err(|_| Error::Internal("postgres task ended without an answer".into()))?
}

/// A node id for head notifications: random enough that two processes never share one.
fn random_node_id() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    h.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos()),
    );
    h.finish()
}

/// A pooled connection for commits. [`commit::commit_appends`] runs its transaction by hand
/// (no `Transaction` guard to roll it back when dropped): after an error it is rolled back
/// here, and a connection that may still be inside a transaction (the rollback failed, or the
/// commit's future was dropped halfway) is closed rather than given back to the pool, where
/// its next user would run inside that transaction.
struct Connection {
    client: Option<Object>,
    maybe_in_transaction: bool,
}

impl Connection {
    fn new(client: Object) -> Connection {
        Connection {
            client: Some(client),
            maybe_in_transaction: false,
        }
    }

    fn client(&mut self) -> std::result::Result<&mut Object, Failure> {
        self.client.as_mut().ok_or_else(|| {
            Failure::Other(Error::Unreachable {
                reason: "the postgres connection was closed".into(),
            })
        })
    }

    /// [`commit::commit_appends`] on this connection; rolled back when it fails.
    async fn commit_appends(
        &mut self,
        batches: &[Batch],
        channel: &str,
        node: u64,
    ) -> std::result::Result<Vec<Vec<Outcome>>, Failure> {
        self.maybe_in_transaction = true;
        let client = self.client()?;
        let result = commit::commit_appends(&*client, batches, channel, node).await;
        let settled = match &result {
            Ok(_) => true,
            Err(_) => client.batch_execute("ROLLBACK").await.is_ok(),
        };
        if settled {
            self.maybe_in_transaction = false;
        } else {
            self.discard();
        }
        result
    }

    /// Closes the connection instead of giving it back to the pool.
    fn discard(&mut self) {
        if let Some(client) = self.client.take() {
            drop(Object::take(client));
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        if self.maybe_in_transaction {
            self.discard();
        }
    }
}

/// Why a commit attempt failed: the database's error (maybe worth another attempt), ours, or
/// a lost connection after `COMMIT` was sent (see `settle`).
enum Failure {
    Db(tokio_postgres::Error),
    Other(Error),
    /// The connection broke after transaction `xid`'s `COMMIT` was sent: it may have
    /// committed, and then `outcomes` is what it did.
    Unanswered {
        error: tokio_postgres::Error,
        xid: String,
        outcomes: Vec<Vec<Outcome>>,
    },
}

impl From<tokio_postgres::Error> for Failure {
    fn from(e: tokio_postgres::Error) -> Self {
        Failure::Db(e)
    }
}

impl Failure {
    /// Whether PostgreSQL rolled the attempt back for a reason that another attempt may not
    /// meet (a deadlock, a serialization failure).
    fn retryable(&self) -> bool {
        use tokio_postgres::error::SqlState;
        matches!(self, Failure::Db(e) if e.code() == Some(&SqlState::T_R_DEADLOCK_DETECTED)
            || e.code() == Some(&SqlState::T_R_SERIALIZATION_FAILURE))
    }

    /// The failure of a commit whose `COMMIT` was the statement that failed (or was sent
    /// with it): unanswered if the connection was lost.
    fn at_commit(self, xid: &str, outcomes: Vec<Vec<Outcome>>) -> Failure {
        match self {
            Failure::Db(error) if connection_lost(&error) => Failure::Unanswered {
                error,
                xid: xid.to_owned(),
                outcomes,
            },
            other => other,
        }
    }

    fn into_error(self) -> Error {
        match self {
            Failure::Db(e) | Failure::Unanswered { error: e, .. } => pg_error(e),
            Failure::Other(e) => e,
        }
    }
}

impl Drop for PostgresEngine {
    fn drop(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// Owned query parameters, so a query can move to the engine's runtime.
struct Params(Vec<Box<dyn ToSql + Sync + Send>>);

impl Params {
    fn refs(&self) -> Vec<&(dyn ToSql + Sync)> {
        self.0
            .iter()
            .map(|p| p.as_ref() as &(dyn ToSql + Sync))
            .collect()
    }
}

macro_rules! params {
    ($($p:expr),* $(,)?) => {
        Params(vec![$(Box::new($p) as Box<dyn ToSql + Sync + Send>),*])
    };
}

fn delta_from(row: &Row) -> Result<(u64, DeltaRecord)> {
    Ok((
        uint(row.get("seq")),
        DeltaRecord {
            document_id: row.get("document_id"),
            operation: operation_from(row.get("operation"))?,
            bytes: row.get("bytes"),
            created_at: uint(row.get("created_at")),
        },
    ))
}

fn stats_from(row: &Row) -> DocStats {
    DocStats {
        retained_bytes: uint(row.get("retained_bytes")),
        retained_count: uint(row.get("retained_count")),
        watermark: uint(row.get("watermark")),
        generation: uint(row.get("generation")),
        has_snapshot: row.get("has_snapshot"),
        snapshot_seq: uint(row.get("snapshot_seq")),
    }
}

fn snapshot_from(row: &Row) -> SnapshotRecord {
    SnapshotRecord {
        bytes: row.get("bytes"),
        state_vector: row.get("state_vector"),
        snapshot_seq: uint(row.get("snapshot_seq")),
        created_at: uint(row.get("created_at")),
    }
}

/// The notification channel of a schema's heads (the schema is a checked identifier).
fn heads_channel(schema: &str) -> String {
    format!("{schema}_heads")
}

const STATS_COLUMNS: &str =
    "document_id, retained_bytes, retained_count, watermark, generation, has_snapshot, snapshot_seq";

impl Engine for PostgresEngine {
    /// Applies the batches in one transaction (see `commit.rs`), again if PostgreSQL aborted
    /// it for a deadlock or a serialization failure.
    fn commit(&self, batches: &[Batch]) -> Result<Vec<Vec<Outcome>>> {
        if batches.iter().all(Batch::is_empty) {
            return Ok(batches.iter().map(|_| Vec::new()).collect());
        }
        let batches = batches.to_vec();
        let channel = heads_channel(&self.schema);
        let node = self.node;
        let appends_only = commit::appends_only(&batches);
        let pool = self.pool.clone();
        self.with(move |client| async move {
            let mut client = Connection::new(client);
            let mut attempt = 1;
            loop {
                let result = match appends_only {
                    true => client.commit_appends(&batches, &channel, node).await,
                    false => match client
                        .client()
                        .map_err(Failure::into_error)?
                        .transaction()
                        .await
                    {
                        Ok(tx) => commit::commit(tx, &batches, &channel, node).await,
                        Err(e) => Err(Failure::Db(e)),
                    },
                };
                match result {
                    Ok(outcomes) => return Ok(outcomes),
                    Err(Failure::Unanswered {
                        error,
                        xid,
                        outcomes,
                    }) => {
                        drop(client);
                        tracing::warn!(%xid, error = %pg_reason(&error), "postgres commit unanswered; asking what became of it");
                        return match settle::fate(&pool, &xid, settle::SETTLE_FOR).await {
                            settle::Fate::Committed => Ok(outcomes),
                            settle::Fate::RolledBack => Err(pg_error(error)),
                            settle::Fate::Unknown(why) => Err(settle::unknown(&error, why)),
                        };
                    }
                    Err(f) if f.retryable() && attempt < COMMIT_ATTEMPTS => {
                        tracing::info!(attempt, "postgres commit rolled back; trying again");
                        attempt += 1;
                    }
                    Err(f) => return Err(f.into_error()),
                }
            }
        })
    }

    fn numbers_appends(&self) -> bool {
        true
    }

    fn head(&self, c: &str) -> Result<u64> {
        let rows = self.rows(
            "SELECT head FROM collections WHERE collection = $1",
            params![c.to_string()],
        )?;
        Ok(rows.first().map_or(0, |r| uint(r.get(0))))
    }

    fn watch_heads(&self, on_head: HeadListener) -> Result<()> {
        let Some(runtime) = &self.runtime else {
            return Err(Error::Internal("postgres engine is shut down".into()));
        };
        listen::spawn(
            runtime.handle(),
            self.config.clone(),
            heads_channel(&self.schema),
            self.node,
            on_head,
        );
        Ok(())
    }

    fn flush(&self) -> Result<()> {
        Ok(())
    }

    fn collection_exists(&self, c: &str) -> Result<bool> {
        let rows = self.rows(
            "SELECT 1 FROM collections WHERE collection = $1",
            params![c.to_string()],
        )?;
        Ok(!rows.is_empty())
    }

    fn load_collection(&self, c: &str, largest: usize) -> Result<LoadedCollection> {
        let c = c.to_string();
        let largest = int(largest as u64).max(0);
        self.with(move |client| async move {
            let head = client
                .query_opt("SELECT head FROM collections WHERE collection = $1", &[&c])
                .await
                .map_err(pg_error)?
                .map(|r| uint(r.get(0)))
                .unwrap_or(0);
            let totals = client
                .query_one(
                    "SELECT count(*), coalesce(sum(retained_bytes), 0)::bigint
                     FROM documents WHERE collection = $1",
                    &[&c],
                )
                .await
                .map_err(pg_error)?;
            let top = client
                .query(
                    &format!(
                        "SELECT {STATS_COLUMNS} FROM documents WHERE collection = $1
                         ORDER BY retained_bytes DESC, document_id DESC LIMIT $2"
                    ),
                    &[&c, &largest],
                )
                .await
                .map_err(pg_error)?;
            let peers = client
                .query(
                    "SELECT peer, synced_seq, last_seen_at FROM peers WHERE collection = $1",
                    &[&c],
                )
                .await
                .map_err(pg_error)?;
            Ok(LoadedCollection {
                high_water: head,
                documents: uint(totals.get(0)),
                retained_bytes: uint(totals.get(1)),
                largest: top
                    .iter()
                    .map(|r| (r.get("document_id"), stats_from(r)))
                    .collect(),
                peers: peers
                    .iter()
                    .map(|r| {
                        (
                            r.get(0),
                            PeerRecord {
                                synced_seq: uint(r.get(1)),
                                last_seen_at: uint(r.get(2)),
                            },
                        )
                    })
                    .collect(),
            })
        })
    }

    fn doc_stats(&self, c: &str, doc: &str) -> Result<Option<DocStats>> {
        let rows = self.rows(
            "SELECT document_id, retained_bytes, retained_count, watermark, generation,
                    has_snapshot, snapshot_seq
             FROM documents WHERE collection = $1 AND document_id = $2",
            params![c.to_string(), doc.to_string()],
        )?;
        Ok(rows.first().map(stats_from))
    }

    fn op_record(&self, c: &str, doc: &str, op: &str) -> Result<Option<OpRecord>> {
        let rows = self.rows(
            "SELECT seq, hash, created_at FROM op_ids
             WHERE collection = $1 AND document_id = $2 AND op_id = $3",
            params![c.to_string(), doc.to_string(), op.to_string()],
        )?;
        Ok(rows.first().map(|r| OpRecord {
            seq: uint(r.get(0)),
            hash: uint(r.get(1)),
            created_at: uint(r.get(2)),
        }))
    }

    fn ops_before(&self, c: &str, before: u64, limit: usize) -> Result<Vec<(u64, String, String)>> {
        let rows = self.rows(
            "SELECT created_at, document_id, op_id FROM op_ids
             WHERE collection = $1 AND created_at < $2
             ORDER BY created_at, document_id, op_id LIMIT $3",
            params![
                c.to_string(),
                int(before.min(i64::MAX as u64)),
                int(limit as u64).max(0)
            ],
        )?;
        Ok(rows
            .iter()
            .map(|r| (uint(r.get(0)), r.get(1), r.get(2)))
            .collect())
    }

    fn quarantined(&self, c: &str, doc: &str) -> Result<Vec<u64>> {
        let rows = self.rows(
            "SELECT seq FROM quarantine WHERE collection = $1 AND document_id = $2 ORDER BY seq",
            params![c.to_string(), doc.to_string()],
        )?;
        Ok(rows.iter().map(|r| uint(r.get(0))).collect())
    }

    fn deltas_after(
        &self,
        c: &str,
        after: u64,
        upto: u64,
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(u64, DeltaRecord)>, bool)> {
        if after >= upto {
            return Ok((Vec::new(), false));
        }
        let c = c.to_string();
        let upto = int(upto.min(i64::MAX as u64));
        self.with(move |client| async move {
            let stmt = client
                .prepare_cached(
                    "SELECT seq, document_id, operation, bytes, created_at FROM deltas
                     WHERE collection = $1 AND seq > $2 AND seq <= $3 ORDER BY seq LIMIT $4",
                )
                .await
                .map_err(pg_error)?;
            let mut out: Vec<(u64, DeltaRecord)> = Vec::new();
            let mut bytes = 0usize;
            let mut from = int(after);
            loop {
                // One more than still fits, to know whether more were left out.
                let want = (limit - out.len())
                    .saturating_add(1)
                    .min(CHUNK_ROWS as usize) as i64;
                let rows = client
                    .query(&stmt, &[&c, &from, &upto, &want])
                    .await
                    .map_err(pg_error)?;
                let fetched = rows.len() as i64;
                for row in &rows {
                    let (seq, delta) = delta_from(row)?;
                    let size = delta.bytes.len() + delta.document_id.len();
                    if out.len() == limit
                        || (!out.is_empty() && bytes.saturating_add(size) > max_bytes)
                    {
                        return Ok((out, true));
                    }
                    bytes = bytes.saturating_add(size);
                    from = int(seq);
                    out.push((seq, delta));
                }
                if fetched < want {
                    return Ok((out, false));
                }
            }
        })
    }

    fn doc_delta_seqs(&self, c: &str, doc: &str, upto: u64) -> Result<Vec<u64>> {
        let rows = self.rows(
            "SELECT seq FROM deltas WHERE collection = $1 AND document_id = $2 AND seq <= $3
             ORDER BY seq",
            params![
                c.to_string(),
                doc.to_string(),
                int(upto.min(i64::MAX as u64))
            ],
        )?;
        Ok(rows.iter().map(|r| uint(r.get(0))).collect())
    }

    fn doc_deltas(&self, c: &str, doc: &str, upto: u64) -> Result<Vec<(u64, Vec<u8>)>> {
        let rows = self.rows(
            "SELECT seq, bytes FROM deltas WHERE collection = $1 AND document_id = $2
             AND seq <= $3 ORDER BY seq",
            params![
                c.to_string(),
                doc.to_string(),
                int(upto.min(i64::MAX as u64))
            ],
        )?;
        Ok(rows.iter().map(|r| (uint(r.get(0)), r.get(1))).collect())
    }

    fn snapshot(&self, c: &str, doc: &str) -> Result<Option<SnapshotRecord>> {
        let rows = self.rows(
            "SELECT bytes, state_vector, snapshot_seq, created_at FROM snapshots
             WHERE collection = $1 AND document_id = $2",
            params![c.to_string(), doc.to_string()],
        )?;
        Ok(rows.first().map(snapshot_from))
    }

    fn snapshots(&self, c: &str) -> Result<Vec<(String, SnapshotRecord)>> {
        let rows = self.rows(
            "SELECT document_id, bytes, state_vector, snapshot_seq, created_at FROM snapshots
             WHERE collection = $1 ORDER BY document_id",
            params![c.to_string()],
        )?;
        Ok(rows
            .iter()
            .map(|r| (r.get("document_id"), snapshot_from(r)))
            .collect())
    }

    /// Always empty: format-1 watermarks are a sled legacy; this engine has the index from
    /// its first version.
    fn compacted_after(&self, _: &str, _: u64, _: usize) -> Result<Vec<(u64, String)>> {
        Ok(Vec::new())
    }

    fn deleted_span(&self) -> Result<u64> {
        let rows = self.rows(
            "SELECT coalesce(max(span), 0)::bigint FROM deleted_spans",
            params![],
        )?;
        Ok(rows.first().map(|r| uint(r.get(0))).unwrap_or(0))
    }

    fn deleted_entries(&self, c: &str, from: u64) -> DeletedEntries {
        Box::new(PostgresDeletedEntries {
            pool: self.pool.clone(),
            runtime: self.runtime.as_ref().map(|r| r.handle().clone()),
            collection: c.to_string(),
            next: (int(from.min(i64::MAX as u64)), String::new(), true),
            buffer: std::collections::VecDeque::new(),
            done: false,
        })
    }

    fn size_on_disk(&self) -> Result<u64> {
        let schema = self.schema.clone();
        self.with(move |client| async move {
            let row = client
                .query_one(
                    "SELECT coalesce(sum(pg_total_relation_size(c.oid)), 0)::bigint
                     FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
                     WHERE n.nspname = $1 AND c.relkind IN ('r', 'm')",
                    &[&schema],
                )
                .await
                .map_err(pg_error)?;
            Ok(uint(row.get(0)))
        })
    }
}

/// The deleted-seq index of one collection, fetched a chunk at a time in key order.
struct PostgresDeletedEntries {
    pool: Pool,
    runtime: Option<tokio::runtime::Handle>,
    collection: String,
    /// Key to continue from: (bucket, document, whether that key itself is included).
    next: (i64, String, bool),
    buffer: std::collections::VecDeque<DeletedEntry>,
    done: bool,
}

impl PostgresDeletedEntries {
    fn fetch(&mut self) -> Result<()> {
        let Some(runtime) = &self.runtime else {
            return Err(Error::Internal("postgres engine is shut down".into()));
        };
        let pool = self.pool.clone();
        let c = self.collection.clone();
        let (bucket, doc, inclusive) = self.next.clone();
        let rows = wait_for(runtime, async move {
            let client = pool.get().await.map_err(pool_error)?;
            let sql = if inclusive {
                "SELECT bucket, document_id, runs FROM deleted_seqs
                 WHERE collection = $1 AND (bucket, document_id) >= ($2, $3)
                 ORDER BY bucket, document_id LIMIT $4"
            } else {
                "SELECT bucket, document_id, runs FROM deleted_seqs
                 WHERE collection = $1 AND (bucket, document_id) > ($2, $3)
                 ORDER BY bucket, document_id LIMIT $4"
            };
            let stmt = client.prepare_cached(sql).await.map_err(pg_error)?;
            client
                .query(&stmt, &[&c, &bucket, &doc, &CHUNK_ROWS])
                .await
                .map_err(pg_error)
        })?;
        if (rows.len() as i64) < CHUNK_ROWS {
            self.done = true;
        }
        for row in rows {
            let start = uint(row.get(0));
            let doc: String = row.get(1);
            let runs = paging::decode_runs(start, row.get::<_, &[u8]>(2))
                .ok_or_else(|| corrupt("deleted seqs entry"))?;
            self.next = (int(start), doc.clone(), false);
            self.buffer.push_back(DeletedEntry { start, doc, runs });
        }
        Ok(())
    }
}

impl Iterator for PostgresDeletedEntries {
    type Item = Result<DeletedEntry>;

    fn next(&mut self) -> Option<Result<DeletedEntry>> {
        if self.buffer.is_empty() && !self.done {
            if let Err(e) = self.fetch() {
                self.done = true;
                return Some(Err(e));
            }
        }
        self.buffer.pop_front().map(Ok)
    }
}
