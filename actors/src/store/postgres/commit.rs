//! One commit: a transaction that locks the rows of the collections it touches, numbers its
//! appends from their heads, applies every mutation in order and announces the new heads.
//!
//! # Why this keeps seqs gap-free across nodes
//! The first statements lock each touched collection's row (`FOR UPDATE`, in name order, so two
//! nodes' commits never wait for each other in a cycle). Appends take the next seqs of the
//! locked head, and the new head is written before commit; the lock is held until then. So a
//! commit's seqs follow every seq committed before it, two commits never share a seq, and when
//! any reader sees head `h`, every seq up to `h` is committed (invariant 1 and 2 on several
//! nodes). An acknowledgement takes the same lock, so a compaction, which reads the acks
//! under it, decides on every ack committed before it and none can slip in until it commits.
//!
//! # Two round trips for appends
//! A commit of appends alone (every write's commit) is [`commit_appends`]: `BEGIN`, the lock
//! and the op-id lookup go in one pipeline (one connection runs them in order, so the lookup
//! runs under the lock), then every write and `COMMIT` in a second. Round trips, not
//! statements, are what a commit costs on a busy machine.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use deadpool_postgres::{GenericClient, Transaction};
use tokio_postgres::types::ToSql;
use tokio_postgres::{Row, Statement};

use super::{int, operation_code, settle, uint, Failure};
use crate::paging;
use crate::store::{Batch, CompactionGuard, DeltaRecord, Mutation, OpRecord, Outcome};

type Tx<'a> = Transaction<'a>;
type Result<T> = std::result::Result<T, Failure>;
/// Heads of the locked collections.
type Heads = BTreeMap<String, u64>;

/// Creates the rows of collections that get appends (`$1`).
const CREATE_COLLECTIONS: &str = "INSERT INTO collections (collection, head)
     SELECT c, 0 FROM unnest($1::text[]) AS c ORDER BY c
     ON CONFLICT (collection) DO NOTHING";
/// Locks the rows of the collections `$1`, in name order, answering their heads.
const LOCK_COLLECTIONS: &str = "SELECT collection, head FROM collections
     WHERE collection = ANY($1::text[]) ORDER BY collection FOR UPDATE";
/// The stored op ids among (`$1` collection, `$2` document, `$3` op id), by 1-based index.
///
/// One index probe per op id: `LATERAL … LIMIT 1` keeps the planner from turning it into a
/// join over the whole table, which it did for a plain `unnest` join and an
/// `UPDATE … FROM unnest` (5 ms a commit, growing with the table).
const LOOKUP_OP_IDS: &str = "SELECT u.i, s.seq, s.hash, s.created_at
     FROM unnest($1::text[], $2::text[], $3::text[]) WITH ORDINALITY AS u(c, d, o, i)
     CROSS JOIN LATERAL (
         SELECT seq, hash, created_at FROM op_ids
         WHERE collection = u.c AND document_id = u.d AND op_id = u.o
         LIMIT 1
     ) AS s";

/// The statements that write appends and announce heads, prepared before they are sent: a
/// pipeline must not wait for a prepare halfway (the statements after it, `COMMIT` among
/// them, would be sent ahead of the one that waits).
struct AppendStatements {
    deltas: Statement,
    counters: Statement,
    op_ids: Statement,
    heads: Statement,
    notify: Statement,
}

impl AppendStatements {
    /// Prepares them on `client` (a round trip each only the first time per connection).
    async fn prepare<C: GenericClient>(client: &C) -> Result<AppendStatements> {
        Ok(AppendStatements {
            deltas: client.prepare_cached(INSERT_DELTAS).await?,
            counters: client.prepare_cached(ADD_TO_COUNTERS).await?,
            op_ids: client.prepare_cached(INSERT_OP_IDS).await?,
            heads: client.prepare_cached(UPDATE_HEADS).await?,
            notify: client.prepare_cached(NOTIFY_HEADS).await?,
        })
    }
}

const INSERT_DELTAS: &str =
    "INSERT INTO deltas (collection, seq, document_id, operation, bytes, created_at)
             SELECT * FROM unnest($1::text[], $2::bigint[], $3::text[], $4::smallint[],
                                  $5::bytea[], $6::bigint[])";
/// Adds appends to their documents' counters, in the database (another node may have changed
/// them since this one read them).
const ADD_TO_COUNTERS: &str =
    "INSERT INTO documents (collection, document_id, retained_bytes, retained_count,
                                    watermark, generation, has_snapshot, snapshot_seq)
             SELECT c, d, b, n, 0, 0, false, 0
             FROM unnest($1::text[], $2::text[], $3::bigint[], $4::bigint[]) AS u(c, d, b, n)
             ON CONFLICT (collection, document_id) DO UPDATE
             SET retained_bytes = documents.retained_bytes + EXCLUDED.retained_bytes,
                 retained_count = documents.retained_count + EXCLUDED.retained_count";
const INSERT_OP_IDS: &str =
    "INSERT INTO op_ids (collection, document_id, op_id, seq, hash, created_at)
             SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::bigint[],
                                  $5::bigint[], $6::bigint[])";
/// Index lookups by `= ANY`, whatever plan the connection cached (a join with `unnest` may
/// become a scan of every collection's row once the plan is generic).
const UPDATE_HEADS: &str = "UPDATE collections
     SET head = ($2::bigint[])[array_position($1::text[], collection::text)]
     WHERE collection = ANY($1::text[])";
/// Tells every node's listener of a new head: `node head collection` per payload.
const NOTIFY_HEADS: &str = "SELECT pg_notify($1, p) FROM unnest($2::text[]) AS p";

/// Applies `batches` in one transaction (see the module docs) and answers one outcome per
/// mutation. `channel` is the notification channel; `node` identifies this process in it.
pub(super) async fn commit(
    tx: Tx<'_>,
    batches: &[Batch],
    channel: &str,
    node: u64,
) -> Result<Vec<Vec<Outcome>>> {
    let (mut heads, xid) = futures::try_join!(lock_collections(&tx, batches), current_xact(&tx))?;
    let before = heads.clone();
    let stmts = AppendStatements::prepare(&tx).await?;
    let mut outcomes: Vec<Vec<Outcome>> = batches
        .iter()
        .map(|b| vec![Outcome::Applied; b.mutations.len()])
        .collect();
    let mut run = Vec::new();
    for (b, batch) in batches.iter().enumerate() {
        for (m, mutation) in batch.mutations.iter().enumerate() {
            if let Mutation::Append { .. } = mutation {
                run.push(((b, m), mutation));
                continue;
            }
            let appends = std::mem::take(&mut run);
            write_appends(&tx, &stmts, &appends, &mut heads, &mut outcomes).await?;
            outcomes[b][m] = write_one(&tx, mutation).await?;
        }
    }
    write_appends(&tx, &stmts, &run, &mut heads, &mut outcomes).await?;
    announce_heads(&tx, &stmts, &before, &heads, channel, node).await?;
    match tx.commit().await {
        Ok(()) => Ok(outcomes),
        Err(e) => Err(Failure::from(e).at_commit(&xid, outcomes)),
    }
}

/// This transaction's id (see `settle`).
async fn current_xact<C: GenericClient>(client: &C) -> Result<String> {
    let stmt = client.prepare_cached(settle::CURRENT_XACT).await?;
    Ok(client.query_one(&stmt, &[]).await?.get(0))
}

/// Whether every mutation of `batches` is an append (then [`commit_appends`] applies them).
pub(super) fn appends_only(batches: &[Batch]) -> bool {
    batches
        .iter()
        .flat_map(|b| &b.mutations)
        .all(|m| matches!(m, Mutation::Append { .. }))
}

/// [`commit`] for batches of appends alone, in two round trips on `client`, which must be in
/// no transaction. It begins one and ends it with `COMMIT` when this answers `Ok`; on an
/// error the transaction may still be open (or aborted): the caller rolls it back, or does not
/// give the connection back.
pub(super) async fn commit_appends<C: GenericClient>(
    client: &C,
    batches: &[Batch],
    channel: &str,
    node: u64,
) -> Result<Vec<Vec<Outcome>>> {
    let run: Vec<((usize, usize), &Mutation)> = batches
        .iter()
        .enumerate()
        .flat_map(|(b, batch)| {
            batch
                .mutations
                .iter()
                .enumerate()
                .map(move |(m, mutation)| ((b, m), mutation))
        })
        .collect();
    let appends: Vec<Append<'_>> = run.iter().filter_map(|(_, m)| Append::of(m)).collect();
    let names: Vec<&str> = appends
        .iter()
        .map(|a| a.collection)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let (mut fates, claims) = claim_op_ids(&appends);
    let begin = client.prepare_cached("BEGIN").await?;
    let create = client.prepare_cached(CREATE_COLLECTIONS).await?;
    let lock = client.prepare_cached(LOCK_COLLECTIONS).await?;
    let lookup = client.prepare_cached(LOOKUP_OP_IDS).await?;
    let commit = client.prepare_cached("COMMIT").await?;
    let xact = client.prepare_cached(settle::CURRENT_XACT).await?;
    let stmts = AppendStatements::prepare(client).await?;
    let (c, d, o) = op_id_keys(&appends, &claims);
    // Round trip 1: sent in this order (the driver sends a request when its future is first
    // polled, and `try_join!` polls in order), so the lookup runs under the lock.
    let names_param: [&(dyn ToSql + Sync); 1] = [&names];
    let (_, xid, _, locked, known) = futures::try_join!(
        client.execute(&begin, &[]),
        async { Ok(client.query_one(&xact, &[]).await?.get::<_, String>(0)) },
        client.execute(&create, &names_param),
        client.query(&lock, &names_param),
        async {
            match claims.is_empty() {
                true => Ok(Vec::new()),
                false => client.query(&lookup, &[&c, &d, &o]).await,
            }
        },
    )?;
    let mut heads: Heads = locked.iter().map(|r| (r.get(0), uint(r.get(1)))).collect();
    let before = heads.clone();
    take_known_op_ids(&known, &claims, &mut fates)?;
    let mut outcomes: Vec<Vec<Outcome>> = batches
        .iter()
        .map(|b| vec![Outcome::Applied; b.mutations.len()])
        .collect();
    let (seqs, new) = number_appends(&run, &appends, &mut fates, &mut heads, &mut outcomes);
    // Round trip 2: every write, then COMMIT, in this order (each future sends on its first
    // poll: everything is prepared). A failed statement aborts the transaction and its error
    // fails this call; the COMMIT behind it then only ends the aborted transaction. A lost
    // connection here may have lost only the COMMIT's answer (see `settle`).
    let written = futures::try_join!(
        insert_deltas(client, &stmts, &appends, &seqs, &new),
        add_to_counters(client, &stmts, &appends, &new),
        insert_op_ids(client, &stmts, &appends, &seqs, &new),
        announce_heads(client, &stmts, &before, &heads, channel, node),
        async { Ok(client.execute(&commit, &[]).await?) },
    );
    match written {
        Ok(_) => Ok(outcomes),
        Err(f) => Err(f.at_commit(&xid, outcomes)),
    }
}

/// Writes the heads that moved and notifies every node of them.
async fn announce_heads<C: GenericClient>(
    client: &C,
    stmts: &AppendStatements,
    before: &Heads,
    heads: &Heads,
    channel: &str,
    node: u64,
) -> Result<()> {
    let moved: Vec<(&String, &u64)> = heads
        .iter()
        .filter(|(c, h)| before.get(*c) != Some(*h))
        .collect();
    if moved.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = moved.iter().map(|(c, _)| c.as_str()).collect();
    let values: Vec<i64> = moved.iter().map(|(_, h)| int(**h)).collect();
    let payloads: Vec<String> = moved
        .iter()
        .map(|(c, h)| format!("{node:016x} {h} {c}"))
        .collect();
    let (update_params, notify_params): ([&(dyn ToSql + Sync); 2], [&(dyn ToSql + Sync); 2]) =
        ([&names, &values], [&channel, &payloads]);
    futures::try_join!(
        client.execute(&stmts.heads, &update_params),
        client.execute(&stmts.notify, &notify_params),
    )?;
    Ok(())
}

/// Creates the rows of collections that get appends, then locks the rows of every collection
/// the batches append to, compact or acknowledge in, in name order; answers their heads.
async fn lock_collections(tx: &Tx<'_>, batches: &[Batch]) -> Result<Heads> {
    let mut appended = BTreeSet::new();
    let mut touched = BTreeSet::new();
    for m in batches.iter().flat_map(|b| &b.mutations) {
        match m {
            Mutation::Append { collection, .. } => {
                appended.insert(collection.as_str());
                touched.insert(collection.as_str());
            }
            Mutation::Compaction { collection, .. } | Mutation::PutPeer { collection, .. } => {
                touched.insert(collection.as_str());
            }
            _ => {}
        }
    }
    if touched.is_empty() {
        return Ok(BTreeMap::new());
    }
    let created: Vec<&str> = appended.into_iter().collect();
    let names: Vec<&str> = touched.into_iter().collect();
    let create = tx.prepare_cached(CREATE_COLLECTIONS).await?;
    let lock = tx.prepare_cached(LOCK_COLLECTIONS).await?;
    // One round trip: the driver sends both in this order (it sends a request when its future
    // is first polled, and `try_join!` polls in order); the server runs them in that order.
    let (create_params, lock_params): ([&(dyn ToSql + Sync); 1], [&(dyn ToSql + Sync); 1]) =
        ([&created], [&names]);
    let (_, rows) = futures::try_join!(
        tx.execute(&create, &create_params),
        tx.query(&lock, &lock_params)
    )?;
    Ok(rows.iter().map(|r| (r.get(0), uint(r.get(1)))).collect())
}

/// What became of one append of a run before numbering.
#[derive(Clone, Copy)]
enum Fate {
    New,
    /// Its op id is stored already (by an earlier commit, here or on another node).
    Known(OpRecord),
    /// Its op id is the one of an earlier append in this run (index).
    SameAs(usize),
}

/// Writes a run of appends: settles op ids, numbers the new appends from the locked heads,
/// and writes deltas, counters and op ids with one statement per table.
async fn write_appends(
    tx: &Tx<'_>,
    stmts: &AppendStatements,
    run: &[((usize, usize), &Mutation)],
    heads: &mut Heads,
    outcomes: &mut [Vec<Outcome>],
) -> Result<()> {
    if run.is_empty() {
        return Ok(());
    }
    let appends: Vec<Append<'_>> = run.iter().filter_map(|(_, m)| Append::of(m)).collect();
    let (mut fates, claims) = claim_op_ids(&appends);
    if !claims.is_empty() {
        let lookup = tx.prepare_cached(LOOKUP_OP_IDS).await?;
        let (c, d, o) = op_id_keys(&appends, &claims);
        let known = tx.query(&lookup, &[&c, &d, &o]).await?;
        take_known_op_ids(&known, &claims, &mut fates)?;
    }
    let (seqs, new) = number_appends(run, &appends, &mut fates, heads, outcomes);
    // Independent statements: polled together, the driver pipelines them on the connection.
    futures::try_join!(
        insert_deltas(tx, stmts, &appends, &seqs, &new),
        add_to_counters(tx, stmts, &appends, &new),
        insert_op_ids(tx, stmts, &appends, &seqs, &new),
    )?;
    Ok(())
}

/// Numbers the new appends of `run` from the locked `heads` and records every append's
/// outcome; answers each append's seq (0 unless new) and the indexes of the new ones.
fn number_appends(
    run: &[((usize, usize), &Mutation)],
    appends: &[Append<'_>],
    fates: &mut [Fate],
    heads: &mut Heads,
    outcomes: &mut [Vec<Outcome>],
) -> (Vec<u64>, Vec<usize>) {
    let mut seqs = vec![0u64; appends.len()];
    for (i, a) in appends.iter().enumerate() {
        if let Fate::New = fates[i] {
            let head = heads.entry(a.collection.to_string()).or_default();
            *head += 1;
            seqs[i] = *head;
        }
    }
    // An append with the op id of an earlier one in the run answers what that one got.
    for i in 0..appends.len() {
        if let Fate::SameAs(first) = fates[i] {
            fates[i] = match fates[first] {
                Fate::Known(record) => Fate::Known(record),
                _ => Fate::Known(OpRecord {
                    seq: seqs[first],
                    hash: appends[first].op.map_or(0, |(_, h)| h),
                    created_at: appends[first].delta.created_at,
                }),
            };
        }
    }
    for (i, ((b, m), _)) in run.iter().enumerate() {
        outcomes[*b][*m] = match fates[i] {
            Fate::Known(record) => Outcome::Duplicate(record),
            _ => Outcome::Stored(seqs[i]),
        };
    }
    let new = (0..appends.len())
        .filter(|&i| matches!(fates[i], Fate::New))
        .collect();
    (seqs, new)
}

/// One append's fields.
struct Append<'a> {
    collection: &'a str,
    delta: &'a DeltaRecord,
    op: Option<(&'a str, u64)>,
}

impl<'a> Append<'a> {
    fn of(m: &'a Mutation) -> Option<Append<'a>> {
        match m {
            Mutation::Append {
                collection,
                delta,
                op,
                ..
            } => Some(Append {
                collection,
                delta,
                op: op.as_ref().map(|(o, h)| (o.as_str(), *h)),
            }),
            _ => None,
        }
    }
}

/// The op ids of a run to look up (indexes into `appends`, first use of each), with every
/// append's fate so far: an op id used twice in the run makes the later append a duplicate.
///
/// A lookup, then a plain insert once numbered ([`insert_op_ids`]), is race-free: op ids are
/// written only by commits that append to their collection, and every such commit holds the
/// collection's row lock (taken first) until it commits.
fn claim_op_ids(appends: &[Append<'_>]) -> (Vec<Fate>, Vec<usize>) {
    let mut fates = vec![Fate::New; appends.len()];
    let mut first: HashMap<(&str, &str, &str), usize> = HashMap::new();
    let mut claims = Vec::new();
    for (i, a) in appends.iter().enumerate() {
        let Some((op, _)) = a.op else { continue };
        match first.entry((a.collection, &a.delta.document_id, op)) {
            std::collections::hash_map::Entry::Occupied(o) => fates[i] = Fate::SameAs(*o.get()),
            std::collections::hash_map::Entry::Vacant(v) => {
                v.insert(i);
                claims.push(i);
            }
        }
    }
    (fates, claims)
}

/// The parameters of [`LOOKUP_OP_IDS`] for `claims`.
#[allow(clippy::type_complexity)]
fn op_id_keys<'a>(
    appends: &[Append<'a>],
    claims: &[usize],
) -> (Vec<&'a str>, Vec<&'a str>, Vec<&'a str>) {
    let c = claims.iter().map(|&i| appends[i].collection).collect();
    let d = claims
        .iter()
        .map(|&i| appends[i].delta.document_id.as_str())
        .collect();
    let o = claims
        .iter()
        .map(|&i| appends[i].op.map_or("", |(o, _)| o))
        .collect();
    (c, d, o)
}

/// Marks the appends whose op ids [`LOOKUP_OP_IDS`] found (`rows`) as duplicates of them.
fn take_known_op_ids(rows: &[Row], claims: &[usize], fates: &mut [Fate]) -> Result<()> {
    for row in rows {
        let claim = usize::try_from(row.get::<_, i64>(0) - 1)
            .ok()
            .and_then(|k| claims.get(k).copied())
            .ok_or_else(|| Failure::Other(super::corrupt("op id lookup row")))?;
        fates[claim] = Fate::Known(OpRecord {
            seq: uint(row.get(1)),
            hash: uint(row.get(2)),
            created_at: uint(row.get(3)),
        });
    }
    Ok(())
}

async fn insert_deltas<C: GenericClient>(
    tx: &C,
    stmts: &AppendStatements,
    appends: &[Append<'_>],
    seqs: &[u64],
    new: &[usize],
) -> Result<()> {
    if new.is_empty() {
        return Ok(());
    }
    let c: Vec<&str> = new.iter().map(|&i| appends[i].collection).collect();
    let s: Vec<i64> = new.iter().map(|&i| int(seqs[i])).collect();
    let d: Vec<&str> = new
        .iter()
        .map(|&i| appends[i].delta.document_id.as_str())
        .collect();
    let o: Vec<i16> = new
        .iter()
        .map(|&i| operation_code(appends[i].delta.operation))
        .collect();
    let b: Vec<&[u8]> = new
        .iter()
        .map(|&i| appends[i].delta.bytes.as_slice())
        .collect();
    let t: Vec<i64> = new
        .iter()
        .map(|&i| int(appends[i].delta.created_at))
        .collect();
    tx.execute(&stmts.deltas, &[&c, &s, &d, &o, &b, &t]).await?;
    Ok(())
}

/// Adds the new appends to their documents' counters, in the database (another node may have
/// changed them since this one read them).
async fn add_to_counters<C: GenericClient>(
    tx: &C,
    stmts: &AppendStatements,
    appends: &[Append<'_>],
    new: &[usize],
) -> Result<()> {
    let mut sums: BTreeMap<(&str, &str), (i64, i64)> = BTreeMap::new();
    for &i in new {
        let a = &appends[i];
        let e = sums
            .entry((a.collection, a.delta.document_id.as_str()))
            .or_default();
        e.0 += a.delta.bytes.len() as i64;
        e.1 += 1;
    }
    if sums.is_empty() {
        return Ok(());
    }
    let c: Vec<&str> = sums.keys().map(|(c, _)| *c).collect();
    let d: Vec<&str> = sums.keys().map(|(_, d)| *d).collect();
    let bytes: Vec<i64> = sums.values().map(|v| v.0).collect();
    let count: Vec<i64> = sums.values().map(|v| v.1).collect();
    tx.execute(&stmts.counters, &[&c, &d, &bytes, &count])
        .await?;
    Ok(())
}

/// Stores the op ids of the new appends with the seqs they got (none of them is stored: see
/// [`settle_op_ids`]; a row that is would fail the commit rather than be overwritten).
async fn insert_op_ids<C: GenericClient>(
    tx: &C,
    stmts: &AppendStatements,
    appends: &[Append<'_>],
    seqs: &[u64],
    new: &[usize],
) -> Result<()> {
    let with_op: Vec<(usize, &str, u64)> = new
        .iter()
        .filter_map(|&i| appends[i].op.map(|(op, hash)| (i, op, hash)))
        .collect();
    if with_op.is_empty() {
        return Ok(());
    }
    let c: Vec<&str> = with_op
        .iter()
        .map(|&(i, ..)| appends[i].collection)
        .collect();
    let d: Vec<&str> = with_op
        .iter()
        .map(|&(i, ..)| appends[i].delta.document_id.as_str())
        .collect();
    let o: Vec<&str> = with_op.iter().map(|&(_, op, _)| op).collect();
    let s: Vec<i64> = with_op.iter().map(|&(i, ..)| int(seqs[i])).collect();
    let h: Vec<i64> = with_op.iter().map(|&(_, _, hash)| int(hash)).collect();
    let t: Vec<i64> = with_op
        .iter()
        .map(|&(i, ..)| int(appends[i].delta.created_at))
        .collect();
    tx.execute(&stmts.op_ids, &[&c, &d, &o, &s, &h, &t]).await?;
    Ok(())
}

/// Applies one mutation other than an append.
async fn write_one(tx: &Tx<'_>, m: &Mutation) -> Result<Outcome> {
    match m {
        Mutation::Append { .. } => Err(Failure::Other(crate::Error::Internal(
            "an append outside a run".into(),
        ))),
        Mutation::Compaction {
            collection,
            document_id,
            snapshot,
            deleted,
            bucket_seqs,
            guard,
            ..
        } => {
            compaction(
                tx,
                Compaction {
                    c: collection,
                    doc: document_id,
                    snapshot,
                    deleted,
                    bucket_seqs: *bucket_seqs,
                    guard: *guard,
                },
            )
            .await
        }
        Mutation::PutPeer {
            collection,
            peer,
            record,
        } => {
            // Another node may hold a later ack of this peer than this one's memory: an ack
            // never moves back (nor does the time it was seen).
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO peers (collection, peer, synced_seq, last_seen_at)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (collection, peer) DO UPDATE
                     SET synced_seq = GREATEST(peers.synced_seq, EXCLUDED.synced_seq),
                         last_seen_at = GREATEST(peers.last_seen_at, EXCLUDED.last_seen_at)
                     RETURNING synced_seq",
                )
                .await?;
            let row = tx
                .query_one(
                    &stmt,
                    &[
                        collection,
                        peer,
                        &int(record.synced_seq),
                        &int(record.last_seen_at),
                    ],
                )
                .await?;
            Ok(Outcome::PeerSynced(uint(row.get(0))))
        }
        Mutation::ForgetPeer {
            collection,
            peer,
            unseen_since,
        } => {
            // Another node may have seen the peer since this one last did.
            let stmt = tx
                .prepare_cached(
                    "DELETE FROM peers WHERE collection = $1 AND peer = $2 AND last_seen_at < $3",
                )
                .await?;
            tx.execute(&stmt, &[collection, peer, &int(*unseen_since)])
                .await?;
            Ok(Outcome::Applied)
        }
        Mutation::ForgetOps { collection, ops } => {
            let docs: Vec<&str> = ops.iter().map(|(_, d, _)| d.as_str()).collect();
            let ids: Vec<&str> = ops.iter().map(|(_, _, o)| o.as_str()).collect();
            let stmt = tx
                .prepare_cached(
                    "DELETE FROM op_ids o USING unnest($2::text[], $3::text[]) AS f(d, i)
                     WHERE o.collection = $1 AND o.document_id = f.d AND o.op_id = f.i",
                )
                .await?;
            // Planned for these keys, every time: a plan the connection cached while the
            // table was small joins over all of it once it is not (measured: 72 ms at
            // 300,000 op ids, growing; with this, 0.2 ms). A sweep is rare; planning is cheap.
            tx.batch_execute("SET LOCAL plan_cache_mode = force_custom_plan")
                .await?;
            tx.execute(&stmt, &[collection, &docs, &ids]).await?;
            Ok(Outcome::Applied)
        }
        Mutation::Quarantine {
            collection,
            document_id,
            seq,
            reason,
        } => {
            let stmt = tx
                .prepare_cached(
                    "INSERT INTO quarantine (collection, document_id, seq, reason)
                     VALUES ($1, $2, $3, $4)
                     ON CONFLICT (collection, document_id, seq) DO UPDATE
                     SET reason = EXCLUDED.reason",
                )
                .await?;
            tx.execute(&stmt, &[collection, document_id, &int(*seq), reason])
                .await?;
            Ok(Outcome::Applied)
        }
    }
}

struct Compaction<'a> {
    c: &'a String,
    doc: &'a String,
    snapshot: &'a crate::store::SnapshotRecord,
    deleted: &'a [u64],
    bucket_seqs: u64,
    guard: Option<CompactionGuard>,
}

/// A compaction: checked against its guard (the collection's row is locked, so no ack commits
/// meanwhile), then the snapshot, the deletions, the counters recounted from what is left, and
/// the deleted-seq index.
async fn compaction(tx: &Tx<'_>, w: Compaction<'_>) -> Result<Outcome> {
    let (c, doc) = (w.c, w.doc);
    let stmt = tx
        .prepare_cached(
            "SELECT generation FROM documents WHERE collection = $1 AND document_id = $2
             FOR UPDATE",
        )
        .await?;
    let generation = tx
        .query_opt(&stmt, &[c, doc])
        .await?
        .map_or(0, |r| uint(r.get(0)));
    let mut deleted = w.deleted.to_vec();
    if let Some(guard) = w.guard {
        if generation != guard.read_generation {
            return Ok(Outcome::Superseded);
        }
        let stmt = tx
            .prepare_cached(
                "SELECT min(synced_seq) FROM peers WHERE collection = $1 AND last_seen_at >= $2",
            )
            .await?;
        let min_active: Option<i64> = tx
            .query_one(&stmt, &[c, &int(guard.active_since)])
            .await?
            .get(0);
        if let Some(min) = min_active {
            // As the plan: a delta at or above an active peer's ack stays.
            deleted.retain(|&s| s < uint(min));
        }
    }
    let s = w.snapshot;
    let stmt = tx
        .prepare_cached(
            "INSERT INTO snapshots (collection, document_id, bytes, state_vector, snapshot_seq,
                                    created_at)
             VALUES ($1, $2, $3, $4, $5, $6)
             ON CONFLICT (collection, document_id) DO UPDATE
             SET bytes = EXCLUDED.bytes, state_vector = EXCLUDED.state_vector,
                 snapshot_seq = EXCLUDED.snapshot_seq, created_at = EXCLUDED.created_at",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            c,
            doc,
            &s.bytes,
            &s.state_vector,
            &int(s.snapshot_seq),
            &int(s.created_at),
        ],
    )
    .await?;
    let seqs: Vec<i64> = deleted.iter().map(|&s| int(s)).collect();
    let stmt = tx
        .prepare_cached("DELETE FROM deltas WHERE collection = $1 AND seq = ANY($2::bigint[])")
        .await?;
    tx.execute(&stmt, &[c, &seqs]).await?;
    let watermark = deleted.iter().copied().max().unwrap_or(0);
    let stmt = tx
        .prepare_cached(
            "INSERT INTO documents (collection, document_id, retained_bytes, retained_count,
                                    watermark, generation, has_snapshot, snapshot_seq)
             SELECT $1, $2, coalesce(sum(length(bytes)), 0)::bigint, count(*), $3::bigint,
                    $4::bigint + 1, true, $5::bigint
             FROM deltas WHERE collection = $1 AND document_id = $2
             ON CONFLICT (collection, document_id) DO UPDATE
             SET retained_bytes = EXCLUDED.retained_bytes,
                 retained_count = EXCLUDED.retained_count,
                 watermark = GREATEST(documents.watermark, EXCLUDED.watermark),
                 generation = EXCLUDED.generation, has_snapshot = true,
                 snapshot_seq = GREATEST(documents.snapshot_seq, EXCLUDED.snapshot_seq)",
        )
        .await?;
    tx.execute(
        &stmt,
        &[
            c,
            doc,
            &int(watermark),
            &int(generation),
            &int(s.snapshot_seq),
        ],
    )
    .await?;
    write_deleted_index(tx, c, doc, &deleted, w.bucket_seqs).await?;
    Ok(Outcome::Compacted { deleted })
}

/// Merges deleted seqs into the document's deleted-seq index entries (see [`paging`]).
async fn write_deleted_index(
    tx: &Tx<'_>,
    c: &str,
    doc: &str,
    deleted: &[u64],
    bucket_seqs: u64,
) -> Result<()> {
    let bucket = bucket_seqs.clamp(1, paging::MAX_BUCKET_SEQS);
    let buckets = paging::bucket_runs(deleted, bucket);
    if buckets.is_empty() {
        return Ok(());
    }
    let stmt = tx
        .prepare_cached("INSERT INTO deleted_spans (span) VALUES ($1) ON CONFLICT DO NOTHING")
        .await?;
    tx.execute(&stmt, &[&int(bucket)]).await?;
    let read = tx
        .prepare_cached(
            "SELECT runs FROM deleted_seqs
             WHERE collection = $1 AND bucket = $2 AND document_id = $3",
        )
        .await?;
    let write = tx
        .prepare_cached(
            "INSERT INTO deleted_seqs (collection, bucket, document_id, runs)
             VALUES ($1, $2, $3, $4)
             ON CONFLICT (collection, bucket, document_id) DO UPDATE SET runs = EXCLUDED.runs",
        )
        .await?;
    for (start, runs) in buckets {
        let old = tx.query_opt(&read, &[&c, &int(start), &doc]).await?;
        let runs = match old {
            Some(row) => {
                let old = paging::decode_runs(start, row.get::<_, &[u8]>(0))
                    .ok_or_else(|| Failure::Other(super::corrupt("deleted seqs entry")))?;
                paging::merge_runs(&old, &runs)
            }
            None => runs,
        };
        let encoded = paging::encode_runs(start, &runs);
        tx.execute(&write, &[&c, &int(start), &doc, &encoded])
            .await?;
    }
    Ok(())
}
