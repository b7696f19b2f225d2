//! The tables, as numbered migrations applied on open.
//!
//! A schema's version is how many migrations it has had. [`migrate`] applies the missing ones
//! in one transaction under a transaction-scoped advisory lock, so several nodes starting at
//! once against one database migrate it once; a database migrated by a newer binary is
//! refused. Text keys use the "C" collation: byte order, the same on every server, like sled's.

use deadpool_postgres::Object;

use super::pg_error;
use crate::error::{Error, Result};

/// Advisory lock key taken while migrating: one migration at a time per database.
const MIGRATION_LOCK: i64 = 0x7265_706c_6d69_6772;

/// Migrations in order; the schema's version is how many of them were applied.
pub(super) const MIGRATIONS: &[&str] = &[r#"
CREATE TABLE collections (
    collection text COLLATE "C" PRIMARY KEY,
    head bigint NOT NULL
);
CREATE TABLE deltas (
    collection text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    document_id text COLLATE "C" NOT NULL,
    operation smallint NOT NULL,
    bytes bytea NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (collection, seq)
);
CREATE INDEX deltas_by_document ON deltas (collection, document_id, seq);
CREATE TABLE documents (
    collection text COLLATE "C" NOT NULL,
    document_id text COLLATE "C" NOT NULL,
    retained_bytes bigint NOT NULL,
    retained_count bigint NOT NULL,
    watermark bigint NOT NULL,
    generation bigint NOT NULL,
    has_snapshot boolean NOT NULL,
    snapshot_seq bigint NOT NULL,
    PRIMARY KEY (collection, document_id)
);
CREATE TABLE snapshots (
    collection text COLLATE "C" NOT NULL,
    document_id text COLLATE "C" NOT NULL,
    bytes bytea NOT NULL,
    state_vector bytea NOT NULL,
    snapshot_seq bigint NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (collection, document_id)
);
CREATE TABLE peers (
    collection text COLLATE "C" NOT NULL,
    peer text COLLATE "C" NOT NULL,
    synced_seq bigint NOT NULL,
    last_seen_at bigint NOT NULL,
    PRIMARY KEY (collection, peer)
);
CREATE TABLE op_ids (
    collection text COLLATE "C" NOT NULL,
    document_id text COLLATE "C" NOT NULL,
    op_id text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    hash bigint NOT NULL,
    created_at bigint NOT NULL,
    PRIMARY KEY (collection, document_id, op_id)
);
CREATE INDEX op_ids_by_age ON op_ids (collection, created_at, document_id, op_id);
CREATE TABLE quarantine (
    collection text COLLATE "C" NOT NULL,
    document_id text COLLATE "C" NOT NULL,
    seq bigint NOT NULL,
    reason text NOT NULL,
    PRIMARY KEY (collection, document_id, seq)
);
CREATE TABLE deleted_seqs (
    collection text COLLATE "C" NOT NULL,
    bucket bigint NOT NULL,
    document_id text COLLATE "C" NOT NULL,
    runs bytea NOT NULL,
    PRIMARY KEY (collection, bucket, document_id)
);
CREATE TABLE deleted_spans (
    span bigint PRIMARY KEY
);
"#];

/// Creates `schema` if missing and applies the migrations it lacks.
///
/// # Errors
/// [`Error::Storage`] if the database refuses, or holds a newer version than this binary knows.
pub(super) async fn migrate(mut client: Object, schema: &str) -> Result<()> {
    let tx = client.transaction().await.map_err(pg_error)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(pg_error)?;
    tx.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.meta (key text PRIMARY KEY, value bigint NOT NULL);"
    ))
    .await
    .map_err(pg_error)?;
    let version: i64 = tx
        .query_opt(
            &format!("SELECT value FROM {schema}.meta WHERE key = 'schema_version'"),
            &[],
        )
        .await
        .map_err(pg_error)?
        .map(|r| r.get(0))
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i64;
    if version > known {
        return Err(Error::Storage(format!(
            "postgres schema {schema:?} is at version {version}, newer than this \
             binary's {known}: run a newer replicate"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(version as usize) {
        tracing::info!(schema, version = i + 1, "applying postgres migration");
        tx.batch_execute(sql).await.map_err(pg_error)?;
    }
    tx.execute(
        &format!(
            "INSERT INTO {schema}.meta (key, value) VALUES ('schema_version', $1)
             ON CONFLICT (key) DO UPDATE SET value = EXCLUDED.value"
        ),
        &[&known],
    )
    .await
    .map_err(pg_error)?;
    tx.commit().await.map_err(pg_error)
}
