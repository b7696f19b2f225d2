//! A commit whose answer was lost: its `COMMIT` was sent, then the connection broke (the
//! server was restarted or ended the backend, a failover, a network cut) before the answer
//! came back. The transaction may have committed or not, and answering "nothing was stored"
//! would be wrong half the time: a client told so may write again what is already there,
//! and an answered-as-failed write would still appear in the log (caught by
//! `http_two_nodes::a_node_whose_database_connections_drop_recovers_without_a_restart`).
//!
//! So every commit reads its transaction id first (`pg_current_xact_id()`, pipelined with
//! its first statements), and a lost answer is settled on another connection with
//! `pg_xact_status`, which PostgreSQL keeps for exactly this. "in progress" means the old
//! backend has not finished ending yet: ask again until it has.

use std::time::Duration;

use deadpool_postgres::Pool;

use super::{pg_error, pg_reason, pool_error};
use crate::error::{Error, Result};

/// Reads the transaction's id (assigning one), as text: `xid8` has no driver type.
pub(super) const CURRENT_XACT: &str = "SELECT pg_current_xact_id()::text";
/// The fate of transaction `$1` (text): committed, aborted or in progress.
const XACT_STATUS: &str = "SELECT pg_xact_status($1::text::xid8)";
/// How long a lost commit is asked about before its outcome is reported unknown.
pub(super) const SETTLE_FOR: Duration = Duration::from_secs(10);
/// Pause between two questions.
const ASK_EVERY: Duration = Duration::from_millis(20);

/// What became of a transaction whose `COMMIT` answer was lost.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Fate {
    Committed,
    /// Aborted: it changed nothing.
    RolledBack,
    /// The database could not tell within the time (unreachable, or still in progress).
    Unknown(String),
}

/// Asks the database what became of transaction `xid`, again until it can tell or `within`
/// has passed.
pub(super) async fn fate(pool: &Pool, xid: &str, within: Duration) -> Fate {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        let last = match status(pool, xid).await {
            Ok(Some(s)) if s == "committed" => return Fate::Committed,
            Ok(Some(s)) if s == "aborted" => return Fate::RolledBack,
            Ok(Some(s)) => format!("transaction {xid} is {s}"),
            Ok(None) => format!("transaction {xid} is too old to look up"),
            Err(e) => format!("looking up transaction {xid}: {e}"),
        };
        if tokio::time::Instant::now() >= deadline {
            return Fate::Unknown(last);
        }
        tokio::time::sleep(ASK_EVERY).await;
    }
}

async fn status(pool: &Pool, xid: &str) -> Result<Option<String>> {
    let client = pool.get().await.map_err(pool_error)?;
    let stmt = client.prepare_cached(XACT_STATUS).await.map_err(pg_error)?;
    let row = client.query_one(&stmt, &[&xid]).await.map_err(pg_error)?;
    Ok(row.get(0))
}

/// The error a write whose commit's fate is unknown answers.
pub(super) fn unknown(lost: &tokio_postgres::Error, why: String) -> Error {
    Error::CommitUnknown {
        reason: format!("{}; {why}", pg_reason(lost)),
    }
}

#[cfg(test)]
mod tests {
    use deadpool_postgres::{Manager, ManagerConfig, RecyclingMethod};

    use super::*;

    /// A pool on `REPLICATE_TEST_POSTGRES` (skipped without it, failed under `CI=true`).
    fn pool(test: &str) -> Option<Pool> {
        let url = match std::env::var("REPLICATE_TEST_POSTGRES") {
            Ok(url) if !url.is_empty() => url,
            _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
                panic!("{test}: REPLICATE_TEST_POSTGRES is not set; CI must start PostgreSQL")
            }
            _ => {
                eprintln!("SKIPPED {test}: REPLICATE_TEST_POSTGRES is not set");
                return None;
            }
        };
        let config: tokio_postgres::Config = url.parse().expect("url");
        let manager = Manager::from_config(
            config,
            tokio_postgres::NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        Some(Pool::builder(manager).max_size(2).build().expect("pool"))
    }

    /// Begins a transaction on a connection of its own and answers its id with the connection.
    async fn begun(pool: &Pool) -> (deadpool_postgres::Object, String) {
        let client = pool.get().await.expect("connection");
        client.batch_execute("BEGIN").await.expect("begin");
        let xid: String = client
            .query_one(CURRENT_XACT, &[])
            .await
            .expect("xid")
            .get(0);
        (client, xid)
    }

    #[tokio::test]
    async fn a_transaction_is_looked_up_as_committed_rolled_back_or_unknown() {
        let Some(pool) = pool("settle_fates") else {
            return;
        };
        let (client, committed) = begun(&pool).await;
        client.batch_execute("COMMIT").await.expect("commit");
        drop(client);
        let (client, aborted) = begun(&pool).await;
        client.batch_execute("ROLLBACK").await.expect("rollback");
        drop(client);
        assert_eq!(fate(&pool, &committed, SETTLE_FOR).await, Fate::Committed);
        assert_eq!(fate(&pool, &aborted, SETTLE_FOR).await, Fate::RolledBack);
        // Still open: asked until the time is up, then unknown (and says why).
        let (open, running) = begun(&pool).await;
        match fate(&pool, &running, Duration::from_millis(100)).await {
            Fate::Unknown(why) => assert!(why.contains("in progress"), "{why}"),
            other => panic!("an open transaction is not settled: {other:?}"),
        }
        // It ends while being asked about: the answer follows it.
        let asking = fate(&pool, &running, SETTLE_FOR);
        let ending = async {
            tokio::time::sleep(Duration::from_millis(100)).await;
            open.batch_execute("COMMIT").await.expect("commit");
        };
        let (settled, ()) = futures::join!(asking, ending);
        assert_eq!(settled, Fate::Committed);
    }
}
