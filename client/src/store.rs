//! The local SQLite database: the only module that speaks SQL.
//!
//! What it holds, per collection and document:
//! - `snapshots`: one merged Yjs update per document (local compaction writes it);
//! - `updates`: updates not merged into the snapshot yet, local and remote, in arrival order;
//! - `pending`: local updates the server has not acknowledged, each with the `opId` it is
//!   pushed with (the same on every retry, so a lost answer never makes a duplicate);
//! - `rejected`: local updates the server refused for good (a 4xx per-write error), kept so an
//!   app can show them;
//! - `kv`: the stream cursor per collection and the persisted peer id.
//!
//! # Invariants
//! - A local edit is written to `updates` and `pending` in one transaction, committed before
//!   [`Store::record_local`] returns.
//! - A stream page's changes and the cursor that covers them are written in one transaction
//!   ([`Store::apply_page`]): the cursor never runs ahead of what is on disk.
//! - The file is ours: `application_id` is [`APPLICATION_ID`] and `user_version` the schema
//!   version; anything else is refused before a single write.

use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard};

use rusqlite::{
    params, Connection, ErrorCode, OptionalExtension, Transaction, TransactionBehavior,
};

use crate::crdt::{self, Merged};
use crate::error::{Error, Result};
use crate::landmark::Landmark;

/// `PRAGMA application_id` of our files: "RPLC" as a big-endian i32.
pub const APPLICATION_ID: i32 = 0x5250_4c43;

/// The schema version this build writes (`PRAGMA user_version`).
pub const SCHEMA_VERSION: i64 = 1;

const SCHEMA_V1: &str = "
CREATE TABLE kv (key TEXT PRIMARY KEY NOT NULL, value TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE snapshots (
    collection TEXT NOT NULL, document_id TEXT NOT NULL, bytes BLOB NOT NULL,
    PRIMARY KEY (collection, document_id)) WITHOUT ROWID;
CREATE TABLE updates (
    id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL,
    document_id TEXT NOT NULL, bytes BLOB NOT NULL);
CREATE INDEX updates_by_document ON updates (collection, document_id, id);
CREATE TABLE pending (
    id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL,
    document_id TEXT NOT NULL, op TEXT NOT NULL, bytes BLOB NOT NULL,
    op_id TEXT NOT NULL UNIQUE);
CREATE INDEX pending_by_collection ON pending (collection, id);
CREATE TABLE rejected (
    id INTEGER PRIMARY KEY AUTOINCREMENT, collection TEXT NOT NULL,
    document_id TEXT NOT NULL, op TEXT NOT NULL, bytes BLOB NOT NULL, op_id TEXT NOT NULL,
    code TEXT NOT NULL, message TEXT NOT NULL);
";

/// A local write waiting for the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PendingWrite {
    /// Row id: the queue order.
    pub id: i64,
    /// The document.
    pub document_id: String,
    /// `insert`, `update` or `delete`.
    pub op: String,
    /// The Yjs v1 update.
    pub bytes: Vec<u8>,
    /// The idempotency key sent with every attempt.
    pub op_id: String,
}

/// A local write the server refused for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RejectedWrite {
    /// The document.
    pub document_id: String,
    /// `insert`, `update` or `delete`.
    pub op: String,
    /// The opId it was sent with.
    pub op_id: String,
    /// The server's error code (`invalid_yjs`, `too_large`, …).
    pub code: String,
    /// The server's message.
    pub message: String,
}

/// One change of a stream page, as stored.
#[derive(Debug, Clone)]
pub struct IncomingChange {
    /// The document.
    pub document_id: String,
    /// Its Yjs v1 bytes (a delta or a snapshot).
    pub bytes: Vec<u8>,
}

/// The local database. Cheap calls, each its own short transaction; one connection behind a
/// mutex (SQLite serializes writers anyway).
pub struct Store {
    conn: Mutex<Connection>,
    path: PathBuf,
}

fn kv_cursor(collection: &str) -> String {
    format!("cursor/{collection}")
}

fn kv_landmark(collection: &str) -> String {
    format!("landmark/{collection}")
}

fn kv_epoch(collection: &str) -> String {
    format!("synced/{collection}")
}

/// Whether a SQLite error means "this file is damaged or not a database".
fn is_corruption(e: &rusqlite::Error) -> bool {
    matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::NotADatabase | ErrorCode::DatabaseCorrupt)
    )
}

impl Store {
    /// Opens (or creates) the database at `path`, checking it is ours.
    ///
    /// # Errors
    /// [`Error::Corrupt`] for a file SQLite cannot read, [`Error::Foreign`] for another
    /// application's database, [`Error::SchemaTooNew`] for a newer schema, [`Error::Sqlite`]
    /// for anything else (permissions, a full disk).
    pub fn open(path: &Path) -> Result<Store> {
        Store::open_with(path, true)
    }

    /// [`Store::open`]; `fsync_commits: false` sets `synchronous = NORMAL`: a commit then
    /// survives a crash of the process but not of the machine (WAL), and costs no fsync.
    ///
    /// # Errors
    /// As [`Store::open`].
    pub fn open_with(path: &Path, fsync_commits: bool) -> Result<Store> {
        let corrupt = |e: rusqlite::Error| -> Error {
            if is_corruption(&e) {
                Error::Corrupt {
                    path: path.to_path_buf(),
                    detail: e.to_string(),
                }
            } else {
                Error::Sqlite(e)
            }
        };
        let mut conn = Connection::open(path).map_err(corrupt)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(corrupt)?;
        // The first read of the header: a file that is not SQLite fails here.
        let app_id: i32 = conn
            .query_row("PRAGMA application_id", [], |r| r.get(0))
            .map_err(corrupt)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(corrupt)?;
        let tables: i64 = conn
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type = 'table'",
                [],
                |r| r.get(0),
            )
            .map_err(corrupt)?;
        if app_id == 0 && version == 0 && tables == 0 {
            let txn = write_transaction(&mut conn).map_err(corrupt)?;
            txn.execute_batch(SCHEMA_V1).map_err(corrupt)?;
            txn.execute_batch(&format!(
                "PRAGMA application_id = {APPLICATION_ID}; PRAGMA user_version = {SCHEMA_VERSION};"
            ))
            .map_err(corrupt)?;
            txn.commit().map_err(corrupt)?;
        } else if app_id != APPLICATION_ID {
            return Err(Error::Foreign {
                path: path.to_path_buf(),
                detail: format!(
                    "application_id {app_id:#x}, user_version {version}, {tables} tables"
                ),
            });
        } else if version > SCHEMA_VERSION {
            return Err(Error::SchemaTooNew {
                path: path.to_path_buf(),
                found: version,
                supported: SCHEMA_VERSION,
            });
        } else if version < 1 {
            return Err(Error::Foreign {
                path: path.to_path_buf(),
                detail: format!("our application_id but schema version {version}"),
            });
        }
        // A damaged page inside an otherwise valid file: say so now rather than at the first
        // read that reaches it.
        let check: String = conn
            .query_row("PRAGMA quick_check(1)", [], |r| r.get(0))
            .map_err(corrupt)?;
        if check != "ok" {
            return Err(Error::Corrupt {
                path: path.to_path_buf(),
                detail: check,
            });
        }
        // WAL: readers do not block the writer. synchronous=FULL: a committed edit survives a
        // power cut too, not only a process crash.
        let _mode: String = conn
            .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
            .map_err(corrupt)?;
        let sync = if fsync_commits { "FULL" } else { "NORMAL" };
        conn.execute_batch(&format!("PRAGMA synchronous = {sync};"))
            .map_err(corrupt)?;
        Ok(Store {
            conn: Mutex::new(conn),
            path: path.to_path_buf(),
        })
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn conn(&self) -> MutexGuard<'_, Connection> {
        // A panic while holding the lock cannot leave SQLite half-written (transactions roll
        // back on drop), so a poisoned lock is safe to keep using.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Reads a key of the key-value table.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn kv_get(&self, key: &str) -> Result<Option<String>> {
        Ok(self
            .conn()
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()?)
    }

    /// Writes a key of the key-value table.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn kv_set(&self, key: &str, value: &str) -> Result<()> {
        kv_put(&self.conn(), key, value)
    }

    /// The persisted value of `key`, created with `make` on first use.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn kv_get_or_init(&self, key: &str, make: impl FnOnce() -> String) -> Result<String> {
        let conn = self.conn();
        let found: Option<String> = conn
            .query_row("SELECT value FROM kv WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        if let Some(v) = found {
            return Ok(v);
        }
        let v = make();
        kv_put(&conn, key, &v)?;
        Ok(v)
    }

    /// The stream cursor of `collection` (0 before the first page).
    ///
    /// # Errors
    /// A SQLite failure, or a stored value that is not a number.
    pub fn cursor(&self, collection: &str) -> Result<u64> {
        match self.kv_get(&kv_cursor(collection))? {
            None => Ok(0),
            Some(v) => v
                .parse()
                .map_err(|_| Error::Protocol(format!("stored cursor {v:?} is not a number"))),
        }
    }

    /// The last delta applied from the server (see [`Landmark`]).
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn landmark(&self, collection: &str) -> Result<Option<Landmark>> {
        Ok(self
            .kv_get(&kv_landmark(collection))?
            .as_deref()
            .and_then(Landmark::decode))
    }

    /// Whether this collection has been synced with the server since the database was made
    /// (recovery on first open keys off this).
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn has_synced(&self, collection: &str) -> Result<bool> {
        Ok(self.kv_get(&kv_epoch(collection))?.is_some())
    }

    /// Marks `collection` as synced (see [`Store::has_synced`]).
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn mark_synced(&self, collection: &str) -> Result<()> {
        self.kv_set(&kv_epoch(collection), "1")
    }

    /// Collections this database has synced or has writes queued for, sorted.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn known_collections(&self) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare(
            "SELECT substr(key, 8) FROM kv WHERE key LIKE 'synced/%' \
             UNION SELECT collection FROM pending ORDER BY 1",
        )?;
        let rows = stmt.query_map([], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<String>, _>>()?)
    }

    /// Everything stored for a document, snapshot first, then its updates in order.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn load_document(&self, collection: &str, document_id: &str) -> Result<Vec<Vec<u8>>> {
        let conn = self.conn();
        load_parts(&conn, collection, document_id).map(|(parts, _)| parts)
    }

    /// Records a local edit: its update goes into the document's updates and into the pending
    /// queue with `op_id`, in one transaction. The op is `insert` for the first state of a
    /// document this database holds, `update` otherwise (or `delete` if `delete`).
    ///
    /// # Errors
    /// A SQLite failure; nothing is stored then.
    pub fn record_local(
        &self,
        collection: &str,
        document_id: &str,
        bytes: &[u8],
        op_id: &str,
        delete: bool,
    ) -> Result<()> {
        let mut conn = self.conn();
        let txn = write_transaction(&mut conn)?;
        let op = if delete {
            "delete"
        } else if document_exists(&txn, collection, document_id)? {
            "update"
        } else {
            "insert"
        };
        txn.execute(
            "INSERT INTO updates (collection, document_id, bytes) VALUES (?1, ?2, ?3)",
            params![collection, document_id, bytes],
        )?;
        txn.execute(
            "INSERT INTO pending (collection, document_id, op, bytes, op_id) \
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![collection, document_id, op, bytes, op_id],
        )?;
        txn.commit()?;
        Ok(())
    }

    /// Stores a stream page: every change as an update of its document, and the page's cursor,
    /// in one transaction.
    ///
    /// # Errors
    /// A SQLite failure; nothing of the page is stored then.
    pub fn apply_page(
        &self,
        collection: &str,
        changes: &[IncomingChange],
        cursor: u64,
        landmark: Option<&Landmark>,
    ) -> Result<()> {
        let mut conn = self.conn();
        let txn = write_transaction(&mut conn)?;
        {
            let mut insert = txn.prepare_cached(
                "INSERT INTO updates (collection, document_id, bytes) VALUES (?1, ?2, ?3)",
            )?;
            for change in changes {
                insert.execute(params![collection, change.document_id, change.bytes])?;
            }
        }
        kv_put(&txn, &kv_cursor(collection), &cursor.to_string())?;
        kv_put(&txn, &kv_epoch(collection), "1")?;
        if let Some(l) = landmark {
            kv_put(&txn, &kv_landmark(collection), &l.encode())?;
        }
        txn.commit()?;
        Ok(())
    }

    /// Stores updates for documents without moving the cursor (a recovery diff).
    ///
    /// # Errors
    /// A SQLite failure; nothing is stored then.
    pub fn store_updates(&self, collection: &str, changes: &[IncomingChange]) -> Result<()> {
        let mut conn = self.conn();
        let txn = write_transaction(&mut conn)?;
        for change in changes {
            txn.execute(
                "INSERT INTO updates (collection, document_id, bytes) VALUES (?1, ?2, ?3)",
                params![collection, change.document_id, change.bytes],
            )?;
        }
        txn.commit()?;
        Ok(())
    }

    /// The oldest pending writes of `collection`: at most `max_count`, and no more than
    /// `max_bytes` of updates (but always at least one, so a large write still goes).
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn pending_batch(
        &self,
        collection: &str,
        max_count: usize,
        max_bytes: usize,
    ) -> Result<Vec<PendingWrite>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT id, document_id, op, bytes, op_id FROM pending \
             WHERE collection = ?1 ORDER BY id LIMIT ?2",
        )?;
        let rows = stmt.query_map(
            params![collection, i64::try_from(max_count).unwrap_or(i64::MAX)],
            |r| {
                Ok(PendingWrite {
                    id: r.get(0)?,
                    document_id: r.get(1)?,
                    op: r.get(2)?,
                    bytes: r.get(3)?,
                    op_id: r.get(4)?,
                })
            },
        )?;
        let mut out = Vec::new();
        let mut bytes = 0usize;
        for row in rows {
            let w = row?;
            bytes += w.bytes.len();
            if !out.is_empty() && bytes > max_bytes {
                break;
            }
            out.push(w);
        }
        Ok(out)
    }

    /// Removes acknowledged writes from the queue.
    ///
    /// # Errors
    /// A SQLite failure; the writes stay queued (and are resent with their opIds).
    pub fn remove_pending(&self, ids: &[i64]) -> Result<()> {
        let mut conn = self.conn();
        let txn = write_transaction(&mut conn)?;
        {
            let mut del = txn.prepare_cached("DELETE FROM pending WHERE id = ?1")?;
            for id in ids {
                del.execute([id])?;
            }
        }
        txn.commit()?;
        Ok(())
    }

    /// Moves a write the server refused for good from the queue to `rejected`.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn reject_pending(&self, id: i64, code: &str, message: &str) -> Result<()> {
        let mut conn = self.conn();
        let txn = write_transaction(&mut conn)?;
        txn.execute(
            "INSERT INTO rejected (collection, document_id, op, bytes, op_id, code, message) \
             SELECT collection, document_id, op, bytes, op_id, ?2, ?3 FROM pending WHERE id = ?1",
            params![id, code, message],
        )?;
        txn.execute("DELETE FROM pending WHERE id = ?1", [id])?;
        txn.commit()?;
        Ok(())
    }

    /// How many local writes of `collection` wait for the server.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn pending_count(&self, collection: &str) -> Result<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM pending WHERE collection = ?1",
            [collection],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// The writes of `collection` the server refused for good, oldest first.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn rejected(&self, collection: &str) -> Result<Vec<RejectedWrite>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT document_id, op, op_id, code, message FROM rejected \
             WHERE collection = ?1 ORDER BY id",
        )?;
        let rows = stmt.query_map([collection], |r| {
            Ok(RejectedWrite {
                document_id: r.get(0)?,
                op: r.get(1)?,
                op_id: r.get(2)?,
                code: r.get(3)?,
                message: r.get(4)?,
            })
        })?;
        Ok(rows.collect::<Result<Vec<_>, _>>()?)
    }

    /// Every document of `collection` this database holds, sorted.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn documents(&self, collection: &str) -> Result<Vec<String>> {
        let conn = self.conn();
        let mut stmt = conn.prepare_cached(
            "SELECT document_id FROM snapshots WHERE collection = ?1 \
             UNION SELECT document_id FROM updates WHERE collection = ?1 ORDER BY 1",
        )?;
        let rows = stmt.query_map([collection], |r| r.get(0))?;
        Ok(rows.collect::<Result<Vec<String>, _>>()?)
    }

    /// How many unmerged updates a document has.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn update_count(&self, collection: &str, document_id: &str) -> Result<u64> {
        let n: i64 = self.conn().query_row(
            "SELECT count(*) FROM updates WHERE collection = ?1 AND document_id = ?2",
            params![collection, document_id],
            |r| r.get(0),
        )?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    /// Local compaction: if the document has more than `threshold` unmerged updates, merges
    /// them and its snapshot on a yrs document (deleted content goes) into a new snapshot and
    /// deletes the merged updates, in one transaction. Pending writes are not touched: they
    /// still go to the server as they were made. Answers whether it compacted.
    ///
    /// # Errors
    /// A SQLite failure, or stored bytes that do not decode (then nothing changes).
    pub fn compact_document(
        &self,
        collection: &str,
        document_id: &str,
        threshold: u64,
    ) -> Result<bool> {
        let mut conn = self.conn();
        let txn = write_transaction(&mut conn)?;
        let (parts, last_id) = load_parts(&txn, collection, document_id)?;
        let updates = parts.len().saturating_sub(1) as u64;
        if updates <= threshold {
            return Ok(false);
        }
        let Some(last_id) = last_id else {
            return Ok(false);
        };
        let merged = match crdt::merge(parts.iter().map(Vec::as_slice))? {
            Merged::Complete(m) => m,
            Merged::Incomplete => {
                tracing::debug!(collection, document_id, "compaction deferred: a gap");
                return Ok(false);
            }
        };
        txn.execute(
            "INSERT INTO snapshots (collection, document_id, bytes) VALUES (?1, ?2, ?3) \
             ON CONFLICT (collection, document_id) DO UPDATE SET bytes = excluded.bytes",
            params![collection, document_id, merged],
        )?;
        txn.execute(
            "DELETE FROM updates WHERE collection = ?1 AND document_id = ?2 AND id <= ?3",
            params![collection, document_id, last_id],
        )?;
        txn.commit()?;
        Ok(true)
    }

    /// After the server lost its data (`cursor_ahead`): queues each document's whole local
    /// state as a write with a fresh opId (so the server gets back everything this client
    /// holds, its own edits and others'), drops the writes already queued (the full states
    /// contain them) and resets the cursor to 0, in one transaction. Answers how many
    /// documents were queued.
    ///
    /// # Errors
    /// A SQLite failure or undecodable stored bytes; nothing changes then.
    pub fn requeue_everything(
        &self,
        collection: &str,
        mut new_op_id: impl FnMut() -> String,
    ) -> Result<usize> {
        let mut conn = self.conn();
        let txn = write_transaction(&mut conn)?;
        let docs: Vec<String> = {
            let mut stmt = txn.prepare(
                "SELECT document_id FROM snapshots WHERE collection = ?1 \
                 UNION SELECT document_id FROM updates WHERE collection = ?1 ORDER BY 1",
            )?;
            let rows = stmt.query_map([collection], |r| r.get(0))?;
            rows.collect::<Result<_, _>>()?
        };
        txn.execute("DELETE FROM pending WHERE collection = ?1", [collection])?;
        let mut queued = 0;
        for doc in &docs {
            let (parts, _) = load_parts(&txn, collection, doc)?;
            // The whole state, pending structs included: a byte-level merge keeps them.
            let state = crdt::merge_bytes(parts.iter().map(Vec::as_slice))?;
            if crdt::is_empty_update(&state) {
                continue;
            }
            txn.execute(
                "INSERT INTO pending (collection, document_id, op, bytes, op_id) \
                 VALUES (?1, ?2, 'update', ?3, ?4)",
                params![collection, doc, state, new_op_id()],
            )?;
            queued += 1;
        }
        kv_put(&txn, &kv_cursor(collection), "0")?;
        txn.execute("DELETE FROM kv WHERE key = ?1", [kv_landmark(collection)])?;
        txn.commit()?;
        Ok(queued)
    }
}

fn kv_put(conn: &Connection, key: &str, value: &str) -> Result<()> {
    conn.execute(
        "INSERT INTO kv (key, value) VALUES (?1, ?2) \
         ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        params![key, value],
    )?;
    Ok(())
}

fn document_exists(txn: &Transaction<'_>, collection: &str, document_id: &str) -> Result<bool> {
    let found: Option<i64> = txn
        .query_row(
            "SELECT 1 FROM snapshots WHERE collection = ?1 AND document_id = ?2 \
             UNION ALL SELECT 1 FROM updates WHERE collection = ?1 AND document_id = ?2 LIMIT 1",
            params![collection, document_id],
            |r| r.get(0),
        )
        .optional()?;
    Ok(found.is_some())
}

/// A document's snapshot (if any) then its updates, and the id of the last update.
fn load_parts(
    conn: &Connection,
    collection: &str,
    document_id: &str,
) -> Result<(Vec<Vec<u8>>, Option<i64>)> {
    let mut parts = Vec::new();
    let snapshot: Option<Vec<u8>> = conn
        .query_row(
            "SELECT bytes FROM snapshots WHERE collection = ?1 AND document_id = ?2",
            params![collection, document_id],
            |r| r.get(0),
        )
        .optional()?;
    parts.extend(snapshot);
    let mut stmt = conn.prepare_cached(
        "SELECT id, bytes FROM updates WHERE collection = ?1 AND document_id = ?2 ORDER BY id",
    )?;
    let rows = stmt.query_map(params![collection, document_id], |r| {
        Ok((r.get::<_, i64>(0)?, r.get::<_, Vec<u8>>(1)?))
    })?;
    let mut last = None;
    for row in rows {
        let (id, bytes) = row?;
        last = Some(id);
        parts.push(bytes);
    }
    Ok((parts, last))
}

/// A transaction that takes the write lock when it begins (`BEGIN IMMEDIATE`). Every
/// transaction here writes, most after a read: a deferred one upgrades to a writer at its first
/// write, and in WAL mode SQLite answers that upgrade `SQLITE_BUSY` at once, without the busy
/// timeout, whenever another connection (another client on the file, or a document handle
/// that outlived its client) holds the lock. Taking the lock first lets the busy timeout wait.
fn write_transaction(conn: &mut Connection) -> rusqlite::Result<Transaction<'_>> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("c.sqlite");
        (dir, path)
    }

    #[test]
    fn reopen_keeps_queue_cursor_and_kv() {
        let (_dir, path) = temp();
        {
            let s = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
            s.record_local("c", "d", &[0, 0], "op-1", false)
                .unwrap_or_else(|e| panic!("{e}"));
            s.apply_page("c", &[], 42, None)
                .unwrap_or_else(|e| panic!("{e}"));
            s.kv_set("peer", "p").unwrap_or_else(|e| panic!("{e}"));
        }
        let s = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.cursor("c").ok(), Some(42));
        assert_eq!(s.kv_get("peer").ok().flatten().as_deref(), Some("p"));
        let batch = s
            .pending_batch("c", 10, 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(batch.len(), 1);
        assert_eq!(batch[0].op, "insert");
        assert_eq!(batch[0].op_id, "op-1");
        s.record_local("c", "d", &[0, 0], "op-2", false)
            .unwrap_or_else(|e| panic!("{e}"));
        let batch = s
            .pending_batch("c", 10, 1 << 20)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(batch[1].op, "update", "a document already held is updated");
        s.remove_pending(&[batch[0].id])
            .unwrap_or_else(|e| panic!("{e}"));
        s.reject_pending(batch[1].id, "invalid_yjs", "bad")
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(s.pending_count("c").ok(), Some(0));
        let rejected = s.rejected("c").unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(rejected.len(), 1);
        assert_eq!(rejected[0].op_id, "op-2");
    }

    #[test]
    fn pending_batch_respects_byte_budget_but_always_moves() {
        let (_dir, path) = temp();
        let s = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        for i in 0..5 {
            s.record_local("c", "d", &[7; 100], &format!("op-{i}"), false)
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert_eq!(s.pending_batch("c", 10, 250).map(|b| b.len()).ok(), Some(2));
        assert_eq!(s.pending_batch("c", 10, 10).map(|b| b.len()).ok(), Some(1));
        assert_eq!(
            s.pending_batch("c", 3, 1 << 20).map(|b| b.len()).ok(),
            Some(3)
        );
    }

    #[test]
    fn a_duplicate_op_id_stores_nothing() {
        let (_dir, path) = temp();
        let s = Store::open(&path).unwrap_or_else(|e| panic!("{e}"));
        s.record_local("c", "d", &[0, 0], "op-1", false)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.record_local("c", "d", &[0, 0], "op-1", false).is_err());
        assert_eq!(s.load_document("c", "d").map(|p| p.len()).ok(), Some(1));
    }

    #[test]
    fn text_file_is_corrupt_and_foreign_database_is_refused() {
        let (dir, path) = temp();
        std::fs::write(
            &path,
            b"this is not a database, just some text\n".repeat(200),
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(Store::open(&path), Err(Error::Corrupt { .. })));

        let foreign = dir.path().join("foreign.sqlite");
        {
            let c = Connection::open(&foreign).unwrap_or_else(|e| panic!("{e}"));
            c.execute_batch("CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT)")
                .unwrap_or_else(|e| panic!("{e}"));
        }
        let err = Store::open(&foreign).err();
        assert!(matches!(err, Some(Error::Foreign { .. })), "{err:?}");
        // Left untouched: the other application's table is still there, none of ours.
        let c = Connection::open(&foreign).unwrap_or_else(|e| panic!("{e}"));
        let n: i64 = c
            .query_row(
                "SELECT count(*) FROM sqlite_master WHERE type='table'",
                [],
                |r| r.get(0),
            )
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(n, 1);

        let newer = dir.path().join("newer.sqlite");
        drop(Store::open(&newer).unwrap_or_else(|e| panic!("{e}")));
        {
            let c = Connection::open(&newer).unwrap_or_else(|e| panic!("{e}"));
            c.execute_batch("PRAGMA user_version = 99")
                .unwrap_or_else(|e| panic!("{e}"));
        }
        assert!(matches!(
            Store::open(&newer),
            Err(Error::SchemaTooNew { found: 99, .. })
        ));
    }
}
