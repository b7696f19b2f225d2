//! Group commit: one flusher thread turns many concurrent writes into one sled flush.
//!
//! A writer stores its records, then calls [`GroupCommit::durable`], which resolves once a
//! flush that *started after the call* has finished: by then the writer's records are on disk.
//! While one flush runs, every request that arrives joins the next one, so N concurrent writers
//! cost about two flushes, not N. The flush blocks a dedicated thread, never an async arbiter.

use std::sync::{Arc, Condvar, Mutex};
use std::thread;

use tokio::sync::watch;

use crate::error::{Error, Result};
use crate::store::Store;

#[derive(Default)]
struct Requests {
    /// Number of the newest request.
    requested: u64,
    stop: bool,
}

/// Outcome of the latest flush: the request number it covered, and its error if it failed.
#[derive(Clone, Debug, Default)]
struct Flushed {
    covered: u64,
    failed: Option<String>,
    flushes: u64,
}

struct Shared {
    requests: Mutex<Requests>,
    wake: Condvar,
}

/// The flusher; clones share one thread. The thread stops when the last clone is dropped.
#[derive(Clone)]
pub struct GroupCommit {
    shared: Arc<Shared>,
    flushed: watch::Receiver<Flushed>,
    _stopper: Arc<Stopper>,
}

struct Stopper(Arc<Shared>);

impl Drop for Stopper {
    fn drop(&mut self) {
        if let Ok(mut r) = self.0.requests.lock() {
            r.stop = true;
        }
        self.0.wake.notify_all();
    }
}

impl GroupCommit {
    /// Starts the flusher thread for `store`.
    pub fn start(store: Store) -> Result<GroupCommit> {
        let shared = Arc::new(Shared { requests: Mutex::default(), wake: Condvar::new() });
        let (tx, rx) = watch::channel(Flushed::default());
        let thread_shared = shared.clone();
        thread::Builder::new()
            .name("replicate-flusher".into())
            .spawn(move || flusher_loop(store, thread_shared, tx))
            .map_err(|e| Error::Internal(format!("cannot start flusher thread: {e}")))?;
        Ok(GroupCommit { shared: shared.clone(), flushed: rx, _stopper: Arc::new(Stopper(shared)) })
    }

    /// Resolves once everything written before this call is on disk.
    ///
    /// # Errors
    /// [`Error::Storage`] if the flush that covered this request failed.
    pub async fn durable(&self) -> Result<()> {
        let ticket = {
            let mut r = self.shared.requests.lock().map_err(|_| poisoned())?;
            r.requested += 1;
            r.requested
        };
        self.shared.wake.notify_one();
        let mut rx = self.flushed.clone();
        let done = rx
            .wait_for(|f| f.covered >= ticket)
            .await
            .map_err(|_| Error::Storage("flusher thread stopped".into()))?;
        match &done.failed {
            Some(e) => Err(Error::Storage(format!("flush failed: {e}"))),
            None => Ok(()),
        }
    }

    /// Flushes completed since start.
    pub fn flushes(&self) -> u64 {
        self.flushed.borrow().flushes
    }
}

fn poisoned() -> Error {
    Error::Internal("flusher lock poisoned".into())
}

fn flusher_loop(store: Store, shared: Arc<Shared>, tx: watch::Sender<Flushed>) {
    let mut covered = 0u64;
    let mut flushes = 0u64;
    loop {
        let target = {
            let Ok(mut r) = shared.requests.lock() else { return };
            while r.requested == covered && !r.stop {
                r = match shared.wake.wait(r) {
                    Ok(r) => r,
                    Err(_) => return,
                };
            }
            if r.requested == covered && r.stop {
                return;
            }
            r.requested
        };
        let failed = store.flush().err().map(|e| e.to_string());
        if let Some(e) = &failed {
            tracing::error!(error = %e, "flush failed");
        }
        covered = target;
        flushes += 1;
        tx.send_replace(Flushed { covered, failed, flushes });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn concurrent_requests_share_flushes() {
        let store = Store::temporary().unwrap();
        let gc = GroupCommit::start(store).unwrap();
        let waits = (0..200).map(|_| {
            let gc = gc.clone();
            async move { gc.durable().await }
        });
        for r in futures::future::join_all(waits).await {
            r.unwrap();
        }
        assert!(gc.flushes() >= 1);
        assert!(gc.flushes() < 200, "200 concurrent requests took {} flushes", gc.flushes());
    }
}
