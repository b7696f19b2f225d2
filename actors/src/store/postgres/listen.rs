//! Heads committed by other nodes, heard through `LISTEN`.
//!
//! Every commit that moves a head sends `pg_notify(channel, "<node> <head> <collection>")`
//! (see [`super::commit`]); PostgreSQL delivers it to listeners when the transaction commits.
//! One connection per engine listens and hands other nodes' heads to the listener callback.
//! Notifications are a shortcut, not the truth: one lost while the connection is down only
//! delays a waiter until its own re-check of the head (the collection actor polls while it has
//! waiters), so the connection is simply re-opened after a pause.

use std::time::Duration;

use futures::StreamExt;
use tokio::sync::mpsc;
use tokio_postgres::{AsyncMessage, NoTls};

use crate::store::HeadListener;

/// Pause before listening again after the connection failed.
const RETRY: Duration = Duration::from_secs(1);
/// Notifications queued between the connection and the callback; more are dropped (a dropped
/// one only delays, see the module docs).
const QUEUE: usize = 4096;

/// Listens on `channel` for as long as `runtime` runs, calling `on_head` for heads committed
/// by nodes other than `node`.
pub(super) fn spawn(
    runtime: &tokio::runtime::Handle,
    config: tokio_postgres::Config,
    channel: String,
    node: u64,
    on_head: HeadListener,
) {
    runtime.spawn(async move {
        loop {
            if let Err(e) = listen(&config, &channel, node, &on_head).await {
                tracing::warn!("postgres head notifications interrupted: {e}; listening again");
            }
            tokio::time::sleep(RETRY).await;
        }
    });
}

/// One connection's worth of listening; returns when it ends.
async fn listen(
    config: &tokio_postgres::Config,
    channel: &str,
    node: u64,
    on_head: &HeadListener,
) -> Result<(), tokio_postgres::Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    let (tx, mut rx) = mpsc::channel(QUEUE);
    // The connection must be polled for the LISTEN to be answered, and then for every
    // notification; its messages go to the loop below.
    let driver = tokio::spawn(async move {
        let mut messages = futures::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.try_send(n.payload().to_string());
                }
                Ok(_) => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    });
    client.batch_execute(&format!("LISTEN {channel}")).await?;
    while let Some(payload) = rx.recv().await {
        if let Some((from, head, collection)) = parse(&payload) {
            if from != node {
                on_head(collection, head);
            }
        }
    }
    drop(client);
    match driver.await {
        Ok(result) => result,
        Err(_) => Ok(()),
    }
}

/// Reads `"<node hex> <head> <collection>"`.
fn parse(payload: &str) -> Option<(u64, u64, &str)> {
    let mut parts = payload.splitn(3, ' ');
    let node = u64::from_str_radix(parts.next()?, 16).ok()?;
    let head = parts.next()?.parse().ok()?;
    let collection = parts.next()?;
    Some((node, head, collection))
}

#[cfg(test)]
mod tests {
    use super::parse;

    #[test]
    fn payloads_parse_or_are_ignored() {
        assert_eq!(parse("00000000000000ff 42 todos"), Some((255, 42, "todos")));
        assert_eq!(parse("ff 1 a b"), Some((255, 1, "a b")));
        for bad in ["", "ff", "ff 1", "zz 1 c", "ff x c", "ff -1 c"] {
            assert_eq!(parse(bad), None, "{bad:?}");
        }
    }
}
