//! The crate's one error type. Every fallible public call answers [`Error`]; the variants say
//! what failed (the local database, the server, the network, bad bytes), so an app can tell
//! "show an offline badge" from "this file is not ours".

use std::path::PathBuf;

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The file exists but is not a SQLite database, or SQLite reports it damaged.
    #[error("{path} is not a readable SQLite database (corrupt or not SQLite): {detail}")]
    Corrupt {
        /// The database file.
        path: PathBuf,
        /// What SQLite said.
        detail: String,
    },
    /// A SQLite database that belongs to another application (its `application_id` or its
    /// tables are not ours); it is left untouched.
    #[error("{path} is a SQLite database of another application ({detail}); refusing to use it")]
    Foreign {
        /// The database file.
        path: PathBuf,
        /// Why it is not ours.
        detail: String,
    },
    /// A database written by a newer version of this crate.
    #[error(
        "{path} has schema version {found}; this replicate-client understands up to {supported}"
    )]
    SchemaTooNew {
        /// The database file.
        path: PathBuf,
        /// The `user_version` found.
        found: i64,
        /// The newest version this build knows.
        supported: i64,
    },
    /// Any other SQLite failure (disk full, I/O error, locked by another process).
    #[error("local database: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// Bytes that do not decode as a Yjs v1 update or state vector.
    #[error("invalid Yjs bytes: {0}")]
    InvalidYjs(String),
    /// A name the server would refuse (empty, over 256 bytes, control characters).
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The name given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The server answered with an error (`{"error":{"code","message"}}`).
    #[error("server answered {status} {code}: {message}")]
    Server {
        /// HTTP status.
        status: u16,
        /// The error code (`unauthenticated`, `cursor_ahead`, …).
        code: String,
        /// The server's message.
        message: String,
    },
    /// The server could not be reached, or the connection broke (the client is offline).
    #[error("network: {0}")]
    Network(String),
    /// The server answered something that is not the wire contract.
    #[error("unexpected answer from the server: {0}")]
    Protocol(String),
    /// The server or the transport does not offer a route (no `events` route, a proxy that
    /// does not stream, a transport without streaming): the client falls back to another.
    #[error("not supported: {0}")]
    Unsupported(String),
    /// The client was closed.
    #[error("the client is closed")]
    Closed,
}

impl Error {
    /// True for failures worth retrying later with the same requests: the network, 5xx, 408,
    /// 429. False for the server's verdict on the request itself (4xx).
    pub fn is_transient(&self) -> bool {
        match self {
            Error::Network(_) => true,
            Error::Server { status, .. } => *status >= 500 || *status == 408 || *status == 429,
            _ => false,
        }
    }

    /// The server's error code, if this is a server error.
    pub fn code(&self) -> Option<&str> {
        match self {
            Error::Server { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;
