//! Group commit: one committer thread applies every queued write as one sled batch, then
//! flushes once, then answers them all.
//!
//! Why one thread does both: sled's flush contends with concurrent writers (measured here: a
//! writer racing a flushing thread managed ~12k batches/s with stalls up to 127 ms, while one
//! thread that inserts a batch and then flushes reaches ~185k inserts/s). So writes are queued,
//! not applied by the actors, and the committer alternates apply → flush → answer. While one
//! flush runs, new writes queue up and go together in the next round: N concurrent writers cost
//! about two rounds, not N.
//!
//! # Failure
//! On an engine where the collection actors number writes (sled), a failed apply or flush is
//! sticky: every later commit fails too, until restart. Seqs are assigned before commit, so
//! letting a later write land after an earlier one failed would leave a gap in the log;
//! stopping all writes is the only answer that keeps invariant 1. On an engine that numbers
//! writes in its own commit (PostgreSQL, see `Engine::numbers_appends`), a failed commit
//! changed nothing and took no seq, so only that round's writes fail: the next round tries
//! again (a database restart or a dropped connection is then an outage, not a dead node).
//!
//! The failure is loud: [`GroupCommit::failure`] answers it (a [`StorageFailure`], `Full` for
//! a full disk, `Failed` otherwise; on a numbering engine until a commit succeeds again) for
//! health checks and metrics, and every refused write gets [`Error::StorageFull`] or
//! [`Error::StorageFailed`], whose messages say what the operator must do.

use std::sync::{Arc, Condvar, Mutex};
use std::thread::{self, JoinHandle};

use tokio::sync::watch;

use tokio::sync::oneshot;

use crate::error::{Error, Result};
use crate::store::{Batch, Outcome, Store};

/// Where a write's answer goes: what the commit did with each of its mutations, or why it
/// failed.
type Answer = oneshot::Sender<Result<Vec<Outcome>>>;

#[derive(Default)]
struct Queue {
    writes: Vec<Batch>,
    /// One per write.
    answers: Vec<Answer>,
    stop: bool,
}

/// What the latest round left: its failure if it failed (on a sticky committer: the first
/// failure, for good), and the rounds so far.
#[derive(Clone, Debug, Default)]
struct Round {
    failed: Option<StorageFailure>,
    rounds: u64,
}

/// Why group commit stopped taking writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageFailureKind {
    /// The disk (or the user's quota) is full: free space, then restart.
    Full,
    /// Any other failure to write or flush: check the data directory and its disk, then
    /// restart.
    Failed,
}

/// The sticky failure of group commit: its kind and the store's error message.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct StorageFailure {
    pub kind: StorageFailureKind,
    /// The store's own message, e.g. `IO error: No space left on device (os error 28)`.
    pub reason: String,
    /// Whether every later write fails too until restart (sled), or only this round's (an
    /// engine that numbers writes itself).
    #[serde(default = "sticky_by_default")]
    pub sticky: bool,
}

fn sticky_by_default() -> bool {
    true
}

impl StorageFailure {
    /// Classifies a failed commit by its message. The store answers its errors as text
    /// ([`Error::Storage`] holds sled's message, whose I/O errors end in `(os error N)`), so
    /// the kind is read from the text: ENOSPC (28) and EDQUOT (122 on Linux), or their
    /// messages, or Rust's own `StorageFull`/`QuotaExceeded` wording, mean `Full`.
    pub fn classify(reason: impl Into<String>) -> Self {
        const FULL: &[&str] = &[
            "(os error 28)",
            "no space left on device",
            "(os error 122)",
            "disk quota exceeded",
            "no storage space",
            "filesystem quota exceeded",
        ];
        let reason = reason.into();
        let lower = reason.to_lowercase();
        let kind = if FULL.iter().any(|m| lower.contains(m)) {
            StorageFailureKind::Full
        } else {
            StorageFailureKind::Failed
        };
        StorageFailure {
            kind,
            reason,
            sticky: true,
        }
    }

    /// The error a write refused because of this failure answers.
    pub fn error(&self) -> Error {
        let reason = self.reason.clone();
        if !self.sticky {
            return Error::CommitFailed { reason };
        }
        match self.kind {
            StorageFailureKind::Full => Error::StorageFull { reason },
            StorageFailureKind::Failed => Error::StorageFailed { reason },
        }
    }
}

struct Shared {
    queue: Mutex<Queue>,
    wake: Condvar,
}

/// The committer; clones share one thread, which stops when the last clone is dropped or
/// [`GroupCommit::stop`] is called.
#[derive(Clone)]
pub struct GroupCommit {
    shared: Arc<Shared>,
    rounds: watch::Receiver<Round>,
    _stopper: Arc<Stopper>,
    /// The committer thread, taken by the first [`GroupCommit::stop`] to join it: the thread
    /// holds the store, which (sled) keeps its directory locked until the thread is gone.
    thread: Arc<Mutex<Option<JoinHandle<()>>>>,
}

struct Stopper(Arc<Shared>);

impl Drop for Stopper {
    fn drop(&mut self) {
        if let Ok(mut q) = self.0.queue.lock() {
            q.stop = true;
        }
        self.0.wake.notify_all();
    }
}

impl GroupCommit {
    /// Starts the committer thread for `store` (sticky on failure unless the store numbers
    /// appends itself: see the module docs).
    ///
    /// # Errors
    /// [`Error::Internal`] if the thread cannot be started.
    pub fn start(store: Store) -> Result<GroupCommit> {
        let sticky = !store.numbers_appends();
        Self::start_with(
            move |writes| {
                let outcomes = store.commit(writes)?;
                store.flush()?;
                Ok(outcomes)
            },
            sticky,
        )
    }

    /// Starts the committer thread over `commit`, which must apply `writes` in order and make
    /// them durable (tests pass one that fails).
    fn start_with<C>(commit: C, sticky: bool) -> Result<GroupCommit>
    where
        C: FnMut(&[Batch]) -> Result<Vec<Vec<Outcome>>> + Send + 'static,
    {
        let shared = Arc::new(Shared {
            queue: Mutex::default(),
            wake: Condvar::new(),
        });
        let (tx, rx) = watch::channel(Round::default());
        let thread_shared = shared.clone();
        let thread = thread::Builder::new()
            .name("replicate-commit".into())
            .spawn(move || committer_loop(commit, sticky, thread_shared, tx))
            .map_err(|e| Error::Internal(format!("cannot start committer thread: {e}")))?;
        Ok(GroupCommit {
            shared: shared.clone(),
            rounds: rx,
            _stopper: Arc::new(Stopper(shared)),
            thread: Arc::new(Mutex::new(Some(thread))),
        })
    }

    /// Stops the committer once everything queued is committed, and waits for its thread to
    /// end, so the store it holds is released (dropping the last clone only asks it to stop).
    /// Later writes are refused with [`Error::ShuttingDown`]. Blocks for at most the round in
    /// progress; later calls return at once.
    pub fn stop(&self) {
        if let Ok(mut q) = self.shared.queue.lock() {
            q.stop = true;
        }
        self.shared.wake.notify_all();
        let thread = self
            .thread
            .lock()
            .map(|mut t| t.take())
            .unwrap_or_else(|e| e.into_inner().take());
        if let Some(thread) = thread {
            // A panic in the committer already failed its writers; nothing more to report.
            let _ = thread.join();
        }
    }

    /// Queues `write`; the returned future resolves once it (and everything queued or written
    /// before it) is on disk. The write is queued when this is called, not when it is polled,
    /// so callers' order is commit order.
    pub fn submit(&self, write: Batch) -> impl std::future::Future<Output = Result<()>> + 'static {
        let outcomes = self.submit_outcomes(write);
        async move { outcomes.await.map(drop) }
    }

    /// [`Self::submit`], answering what the commit did with each of the write's mutations
    /// (the seqs an engine that numbers appends gave them, say).
    pub fn submit_outcomes(
        &self,
        write: Batch,
    ) -> impl std::future::Future<Output = Result<Vec<Outcome>>> + 'static {
        let (tx, rx) = oneshot::channel();
        let queued = self.enqueue(write, tx);
        async move {
            queued?;
            rx.await
                .map_err(|_| Error::Storage("committer thread stopped".into()))?
        }
    }

    /// Resolves once everything written or queued before this call is on disk (an empty
    /// [`Self::submit`]).
    pub fn durable(&self) -> impl std::future::Future<Output = Result<()>> + 'static {
        self.submit(Batch::default())
    }

    fn enqueue(&self, write: Batch, answer: Answer) -> Result<()> {
        {
            let mut q = self
                .shared
                .queue
                .lock()
                .map_err(|_| Error::Internal("commit queue lock poisoned".into()))?;
            if q.stop {
                // Nobody would answer it. Everything queued before the stop was committed, so
                // an empty write (`durable`) is answered as that last round went.
                let answer_now = match self.failure() {
                    Some(failure) if write.is_empty() => Err(failure.error()),
                    None if write.is_empty() => Ok(Vec::new()),
                    _ => Err(Error::ShuttingDown),
                };
                let _ = answer.send(answer_now);
                return Ok(());
            }
            q.writes.push(write);
            q.answers.push(answer);
        }
        self.shared.wake.notify_one();
        Ok(())
    }

    /// Commit rounds (apply + flush) completed since start.
    pub fn rounds(&self) -> u64 {
        self.rounds.borrow().rounds
    }

    /// The failure that stopped group commit, if a commit has failed since start (it stays
    /// until restart; on a committer that is not sticky, until a commit succeeds again).
    /// Cheap: reads the latest round, takes no lock the committer holds.
    pub fn failure(&self) -> Option<StorageFailure> {
        self.rounds.borrow().failed.clone()
    }
}

fn committer_loop<C>(mut commit: C, sticky: bool, shared: Arc<Shared>, tx: watch::Sender<Round>)
where
    C: FnMut(&[Batch]) -> Result<Vec<Vec<Outcome>>>,
{
    let mut round = Round::default();
    loop {
        let (writes, answers) = {
            let Ok(mut q) = shared.queue.lock() else {
                return;
            };
            while q.writes.is_empty() && !q.stop {
                q = match shared.wake.wait(q) {
                    Ok(q) => q,
                    Err(_) => return,
                };
            }
            if q.writes.is_empty() {
                return; // stopping, nothing left
            }
            (
                std::mem::take(&mut q.writes),
                std::mem::take(&mut q.answers),
            )
        };
        let result = match &round.failed {
            Some(failure) if sticky => Err((failure.clone(), None)),
            _ => commit(&writes).map_err(|e| (failed(&e, sticky), Some(e))),
        };
        // The round's state first, so a writer that hears of its failure sees it in `failure`.
        round.failed = result.as_ref().err().map(|(failure, _)| failure.clone());
        round.rounds += 1;
        tx.send_replace(round.clone());
        match result {
            Ok(outcomes) => {
                // An engine answering too few outcomes drops the rest: those writers get an error.
                for (answer, outcome) in answers.into_iter().zip(outcomes) {
                    let _ = answer.send(Ok(outcome));
                }
            }
            Err((failure, cause)) => {
                // A commit that may have stored its writes says so; other failures stored
                // nothing (see `StorageFailure::error`).
                let error = match cause {
                    Some(e @ Error::CommitUnknown { .. }) => e,
                    _ => failure.error(),
                };
                for answer in answers {
                    let _ = answer.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Classifies and logs a failed commit.
fn failed(e: &Error, sticky: bool) -> StorageFailure {
    let failure = StorageFailure {
        sticky,
        ..StorageFailure::classify(match e {
            Error::Storage(message) => message.clone(),
            other => other.to_string(),
        })
    };
    let todo = match failure.kind {
        StorageFailureKind::Full => "free disk space, then restart replicate",
        StorageFailureKind::Failed => {
            "check the data directory and its disk, then restart replicate"
        }
    };
    if sticky {
        tracing::error!(
            error = %e,
            kind = ?failure.kind,
            "commit failed; refusing every write until restart ({todo}); nothing \
             answered before was lost"
        );
    } else {
        tracing::error!(
            error = %e,
            kind = ?failure.kind,
            "commit failed; its writes are refused and changed nothing; the next commit \
             tries again"
        );
    }
    failure
}

#[cfg(test)]
mod tests {
    use super::*;

    #[actix_rt::test]
    async fn stop_commits_what_was_queued_joins_the_thread_and_refuses_later_writes() {
        let held = Arc::new(());
        let in_thread = held.clone();
        let gc = GroupCommit::start_with(
            move |writes| {
                let _ = &in_thread;
                Ok(writes.iter().map(|_| Vec::new()).collect())
            },
            true,
        )
        .unwrap();
        let queued = gc.submit(Batch::put_peer("c", "p", &Default::default()));
        gc.stop();
        queued.await.unwrap();
        // The thread is gone, and with it what its commit held (the store, in `start`).
        assert_eq!(Arc::strong_count(&held), 1);
        let late = gc.submit(Batch::put_peer("c", "p", &Default::default()));
        assert_eq!(late.await, Err(Error::ShuttingDown));
        gc.durable().await.unwrap();
        gc.stop(); // a second stop returns at once
    }

    #[actix_rt::test]
    async fn concurrent_requests_share_rounds() {
        let store = Store::temporary().unwrap();
        let gc = GroupCommit::start(store).unwrap();
        let waits: Vec<_> = (0..200).map(|_| gc.durable()).collect();
        for r in futures::future::join_all(waits).await {
            r.unwrap();
        }
        assert!(gc.rounds() >= 1);
        assert!(
            gc.rounds() < 200,
            "200 queued requests took {} rounds",
            gc.rounds()
        );
    }

    #[test]
    fn failure_kind_table() {
        use StorageFailureKind::{Failed, Full};
        let cases: &[(&str, StorageFailureKind)] = &[
            ("IO error: No space left on device (os error 28)", Full),
            ("io error: no space left on device", Full),
            ("IO error: Disk quota exceeded (os error 122)", Full),
            ("no storage space", Full),
            ("filesystem quota exceeded", Full),
            ("IO error: Input/output error (os error 5)", Failed),
            ("IO error: Read-only file system (os error 30)", Failed),
            ("IO error: (os error 280)", Failed),
            ("Corruption { at: DiskPtr }", Failed),
            ("", Failed),
        ];
        for (reason, kind) in cases {
            let failure = StorageFailure::classify(*reason);
            assert_eq!(failure.kind, *kind, "{reason}");
            assert_eq!(failure.reason, *reason);
            let code = failure.error().code();
            match kind {
                Full => assert_eq!(code, "storage_full", "{reason}"),
                Failed => assert_eq!(code, "storage_failed", "{reason}"),
            }
        }
    }

    /// A commit that fails (here: the third round, with ENOSPC) fails its writers with the
    /// classified error, stays failed for every later write without calling the store again,
    /// and is readable through [`GroupCommit::failure`]; rounds before it stay answered.
    #[actix_rt::test]
    async fn a_failed_commit_is_sticky_and_visible() {
        let calls = Arc::new(Mutex::new(0u32));
        let counted = calls.clone();
        let gc = GroupCommit::start_with(
            move |_| {
                let mut n = counted.lock().expect("test lock");
                *n += 1;
                if *n >= 3 {
                    Err(Error::Storage(
                        "IO error: No space left on device (os error 28)".into(),
                    ))
                } else {
                    Ok(vec![Vec::new()])
                }
            },
            true,
        )
        .unwrap();
        assert_eq!(gc.failure(), None);
        gc.submit(Batch::default()).await.unwrap();
        gc.submit(Batch::default()).await.unwrap();
        assert_eq!(gc.failure(), None, "answered rounds leave no failure");

        let err = gc.submit(Batch::default()).await.unwrap_err();
        assert_eq!(err.code(), "storage_full");
        assert!(err.to_string().contains("free"), "{err}");
        let failure = gc.failure().expect("the failure is visible");
        assert_eq!(failure.kind, StorageFailureKind::Full);
        assert_eq!(
            failure.reason,
            "IO error: No space left on device (os error 28)"
        );

        for _ in 0..3 {
            let again = gc.durable().await.unwrap_err();
            assert_eq!(again, err, "sticky: the same error every time");
        }
        assert_eq!(
            *calls.lock().expect("test lock"),
            3,
            "no commit is tried after the failure"
        );
    }

    #[actix_rt::test]
    async fn other_failures_are_storage_failed() {
        let gc = GroupCommit::start_with(
            |_| {
                Err(Error::Storage(
                    "IO error: Input/output error (os error 5)".into(),
                ))
            },
            true,
        )
        .unwrap();
        let err = gc.durable().await.unwrap_err();
        assert_eq!(err.code(), "storage_failed");
        assert!(err.to_string().contains("data directory"), "{err}");
        assert_eq!(
            gc.failure().map(|f| f.kind),
            Some(StorageFailureKind::Failed)
        );
    }

    /// On an engine that numbers writes itself, a failed round fails only its own writes: the
    /// next round commits, and the failure clears once one does.
    #[actix_rt::test]
    async fn a_failed_round_of_a_numbering_engine_fails_only_its_writes() {
        let calls = Arc::new(Mutex::new(0u32));
        let counted = calls.clone();
        let gc = GroupCommit::start_with(
            move |writes| {
                let mut n = counted.lock().expect("test lock");
                *n += 1;
                if *n == 2 {
                    Err(Error::Storage("postgres: connection reset".into()))
                } else {
                    Ok(writes.iter().map(|_| Vec::new()).collect())
                }
            },
            false,
        )
        .unwrap();
        gc.durable().await.unwrap();
        let err = gc.durable().await.unwrap_err();
        assert_eq!(err.code(), "storage_failed");
        assert!(
            err.to_string().contains("the next commit tries again"),
            "no restart advice for a failure that is not sticky: {err}"
        );
        assert_eq!(
            gc.failure().map(|f| f.kind),
            Some(StorageFailureKind::Failed)
        );
        gc.durable().await.unwrap();
        assert_eq!(
            gc.failure(),
            None,
            "a commit that succeeds clears the failure"
        );
        assert_eq!(*calls.lock().expect("test lock"), 3);
    }
}
