//! The crate's typed error. Each variant names what failed; the HTTP front maps each one to a
//! status (client mistakes are 4xx, overload 503, timeouts 504, storage 500).

/// Everything the actors can answer instead of a result.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum Error {
    /// A collection, document or peer name breaks the naming rule.
    #[error("invalid {field}: {reason}")]
    InvalidName { field: &'static str, reason: String },
    /// A numeric or structural argument is out of range.
    #[error("invalid {field}: {reason}")]
    InvalidArgument { field: &'static str, reason: String },
    /// Bytes that should be a Yjs v1 update (or state vector) do not decode as one.
    #[error("{field} is not a valid Yjs v1 {kind}: {reason}")]
    InvalidYjs {
        field: &'static str,
        kind: &'static str,
        reason: String,
    },
    /// A Yjs update decodes but is past a bound: type nesting, struct/client/delete-range
    /// counts, items waiting for missing content, or its CPU budget ("valid but hostile").
    #[error("{field} is refused: {reason}")]
    YjsLimit { field: &'static str, reason: String },
    /// A write reuses an op id with other bytes or another document.
    #[error("{0}")]
    Conflict(String),
    /// An update is larger than the configured cap.
    #[error("{field} is {size} bytes, over the limit of {max} bytes")]
    TooLarge {
        field: &'static str,
        size: usize,
        max: usize,
    },
    /// An ack names a seq the collection has not issued yet.
    #[error("syncedSeq {synced} is above the collection's current seq {head}")]
    AckAhead { synced: u64, head: u64 },
    /// A stream cursor is above every seq the collection has issued.
    #[error("cursor {cursor} is above the collection's current seq {head}")]
    CursorAhead { cursor: u64, head: u64 },
    /// Too many requests are queued for one collection; retry later.
    #[error("collection {collection} is overloaded ({in_flight} requests in flight); retry later")]
    Overloaded {
        collection: String,
        in_flight: usize,
    },
    /// An actor did not answer within the ask timeout.
    #[error("{what} did not answer within {millis} ms")]
    Timeout { what: &'static str, millis: u64 },
    /// The service is shutting down and takes no new work.
    #[error("replicate is shutting down")]
    ShuttingDown,
    /// The store failed to read, write or flush.
    #[error("storage error: {0}")]
    Storage(String),
    /// A commit failed because the disk holding the store is full (ENOSPC, or a quota). Group
    /// commit stops taking writes (see `durability`): every later write gets this until
    /// restart, and so may reads (sled answers its first I/O error to every later call).
    /// Nothing answered before was lost.
    #[error(
        "the disk holding the store is full ({reason}): free disk space, then restart \
         replicate; until then the store refuses writes, and may refuse reads; nothing answered \
         before was lost"
    )]
    StorageFull { reason: String },
    /// A commit failed for another reason (an I/O error, a broken data directory). Group commit
    /// stops taking writes (see `durability`): every later write gets this until restart.
    /// Nothing answered before was lost.
    #[error(
        "the store failed to commit ({reason}): check the data directory and its disk, then \
         restart replicate; until then the store refuses writes, and may refuse reads; nothing \
         answered before was lost"
    )]
    StorageFailed { reason: String },
    /// A commit failed on a store that numbers writes itself (PostgreSQL): this write was not
    /// stored and took no seq, and the next commit tries again (see `durability`).
    #[error(
        "the store failed to commit this write ({reason}); nothing of it was stored and no \
         seq was taken; retry (the next commit tries again)"
    )]
    CommitFailed { reason: String },
    /// A commit's answer was lost with its connection (PostgreSQL) and the database could not
    /// be asked in time whether it committed: the write may be stored. Retrying with the same
    /// opId stores it at most once (see `store::postgres::settle`).
    #[error(
        "the store's answer to this write's commit was lost ({reason}), so it may or may not \
         have been stored; retry with the same opId, which stores it at most once"
    )]
    CommitUnknown { reason: String },
    /// The store could not be reached (a networked store's connection failed or was cut);
    /// the request changed nothing. Worth retrying: the pool reconnects.
    #[error("the store could not be reached ({reason}); nothing was changed; retry")]
    Unreachable { reason: String },
    /// The collection's actor stopped (idle) while the request was queued; the handle retries
    /// on a fresh actor, so callers only see this if that keeps happening.
    #[error("collection actor is restarting; retry")]
    Relocated,
    /// A bug or an unexpected state; the request changed nothing it reports.
    #[error("internal error: {0}")]
    Internal(String),
}

impl Error {
    /// A short stable code for clients (`{"error":{"code"}}` on the wire).
    pub fn code(&self) -> &'static str {
        match self {
            Error::InvalidName { .. } => "invalid_name",
            Error::InvalidArgument { .. } => "invalid_argument",
            Error::InvalidYjs { .. } => "invalid_yjs",
            Error::TooLarge { .. } => "too_large",
            Error::YjsLimit { .. } => "yjs_limit",
            Error::Conflict(_) => "conflict",
            Error::AckAhead { .. } => "ack_ahead",
            Error::CursorAhead { .. } => "cursor_ahead",
            Error::Overloaded { .. } => "overloaded",
            Error::Timeout { .. } => "timeout",
            Error::ShuttingDown => "shutting_down",
            Error::Storage(_) => "storage",
            Error::Relocated | Error::Unreachable { .. } => "unavailable",
            Error::Internal(_) => "internal",
            Error::StorageFull { .. } => "storage_full",
            Error::StorageFailed { .. }
            | Error::CommitFailed { .. }
            | Error::CommitUnknown { .. } => "storage_failed",
        }
    }
}

impl From<sled::Error> for Error {
    fn from(e: sled::Error) -> Self {
        Error::Storage(e.to_string())
    }
}

impl From<bincode::Error> for Error {
    fn from(e: bincode::Error) -> Self {
        Error::Storage(format!("corrupt record: {e}"))
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
