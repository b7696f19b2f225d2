//! A bounded pool of worker threads for blocking work: CRDT checks and merges, store reads.
//!
//! # Why not a `SyncArbiter`
//! yrs recurses on nested content; its depth is bounded by [`crate::shape`], and these threads
//! get a large explicit stack on top as a second line of defence (a stack overflow aborts the
//! process, it cannot be caught). The queue is bounded: past it a caller gets
//! [`Error::Overloaded`] (503) at once instead of queueing without limit, and an abandoned job
//! (its caller timed out) still runs to the end but holds no caller.

use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Arc, Mutex};
use std::thread;

use tokio::sync::oneshot;

use crate::error::{Error, Result};

type Job = Box<dyn FnOnce() + Send + 'static>;

/// Stack of each worker thread: far more than a bounded-depth merge needs.
pub const WORKER_STACK_BYTES: usize = 64 * 1024 * 1024;

/// A pool of worker threads; clones share it. Threads stop when the last clone is dropped.
#[derive(Clone)]
pub struct Workers {
    name: &'static str,
    queue: SyncSender<Job>,
}

impl Workers {
    /// Starts `threads` workers named `name` that take jobs from a queue of `capacity`.
    ///
    /// # Errors
    /// [`Error::Internal`] if a thread cannot be started.
    pub fn start(name: &'static str, threads: usize, capacity: usize) -> Result<Workers> {
        let (tx, rx) = sync_channel::<Job>(capacity.max(1));
        let rx = Arc::new(Mutex::new(rx));
        for i in 0..threads.max(1) {
            let rx = rx.clone();
            thread::Builder::new()
                .name(format!("replicate-{name}-{i}"))
                .stack_size(WORKER_STACK_BYTES)
                .spawn(move || work(&rx))
                .map_err(|e| Error::Internal(format!("cannot start {name} worker: {e}")))?;
        }
        Ok(Workers { name, queue: tx })
    }

    /// Runs `f` on a worker and answers its result.
    ///
    /// # Errors
    /// [`Error::Overloaded`] when the queue is full (nothing was run); [`Error::Internal`] if
    /// the pool stopped or `f` panicked.
    pub async fn run<T, F>(&self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        let (tx, rx) = oneshot::channel();
        let job: Job = Box::new(move || {
            let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
            let _ = tx.send(out);
        });
        match self.queue.try_send(job) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Error::Overloaded {
                    collection: format!("({} workers)", self.name),
                    in_flight: 0,
                })
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Internal(format!("{} workers stopped", self.name)))
            }
        }
        match rx.await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(_)) => Err(Error::Internal(format!("a {} job panicked", self.name))),
            Err(_) => Err(Error::Internal(format!("{} workers stopped", self.name))),
        }
    }
}

impl Workers {
    /// [`Self::run`] taking `self` by value, for spawning.
    pub async fn run_owned<T, F>(self, f: F) -> Result<T>
    where
        T: Send + 'static,
        F: FnOnce() -> T + Send + 'static,
    {
        self.run(f).await
    }
}

fn work(rx: &Mutex<Receiver<Job>>) {
    loop {
        let job = match rx.lock() {
            Ok(rx) => rx.recv(),
            Err(_) => return,
        };
        match job {
            Ok(job) => job(),
            Err(_) => return, // every sender is gone
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn runs_jobs_and_refuses_past_capacity() {
        let pool = Workers::start("test", 1, 1).unwrap();
        assert_eq!(pool.run(|| 2 + 2).await.unwrap(), 4);
        // Block the only worker, fill the queue, then one more is refused at once.
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let busy = tokio::spawn(pool.clone().run_owned(move || release_rx.recv().ok()));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let queued = tokio::spawn(pool.clone().run_owned(|| 1));
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(matches!(
            pool.run(|| 0).await,
            Err(Error::Overloaded { .. })
        ));
        release_tx.send(()).unwrap();
        assert!(busy.await.unwrap().is_ok());
        assert_eq!(queued.await.unwrap().unwrap(), 1);
        // A panicking job is an error, not a dead pool.
        assert!(pool.run(|| -> () { panic!("boom") }).await.is_err());
        assert_eq!(pool.run(|| 7).await.unwrap(), 7);
    }

    #[test]
    fn workers_have_a_deep_stack() {
        fn depth(n: u32) -> u32 {
            let pad = [n as u8; 512];
            if n == 0 {
                u32::from(pad[0])
            } else {
                depth(n - 1) + u32::from(std::hint::black_box(pad)[1] & 1)
            }
        }
        let pool = Workers::start("stack", 1, 1).unwrap();
        // ~20,000 frames of > 512 bytes: far past a default 2 MiB thread stack.
        let out = actix_rt::System::new().block_on(pool.run(|| depth(20_000)));
        assert!(out.is_ok());
    }
}
