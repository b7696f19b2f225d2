//! An offline-first client for replicate: yrs documents the app edits and observes, kept in a
//! local SQLite file and synced with a replicate server when it can be reached.
//!
//! ```no_run
//! use yrs::{GetString, Text};
//! # fn main() -> Result<(), replicate_client::Error> {
//! let client = replicate_client::Client::open("notes.sqlite", "http://127.0.0.1:8080", None)?;
//! let notes = client.collection("notes")?;
//! let doc = notes.doc("shopping")?;
//! let text = doc.doc().get_or_insert_text("body");
//! doc.edit(|txn| text.push(txn, "milk\n"))?; // on disk and queued when this returns
//! client.start_sync();                       // or call client.sync_once() yourself
//! # Ok(()) }
//! ```
//!
//! # Layout
//! - [`store`]: the SQLite file (snapshots, updates, the pending queue, the key-value table),
//!   schema versioning and local compaction. The only module with SQL.
//! - [`crdt`]: decode, merge, state vectors; the only module using yrs's encoding API.
//! - [`doc`]: document handles, persistence of local edits at commit, the registry of live
//!   handles remote changes are applied to.
//! - [`wire`]: the JSON bodies of the server's wire contract.
//! - [`transport`]: the [`Transport`] trait and its HTTP implementation.
//! - [`sse`]: `text/event-stream` framing over a blocking reader (bounded, linear-time).
//! - [`feed`]: the server's event feed read as changes and resume points.
//! - [`sync`]: push, pull (long polls, and the event feed in `sync::follow`), ack,
//!   compaction hints, recovery, backoff, background threads.
//! - [`landmark`]: the last delta applied, read back on reconnection to notice a server
//!   whose data was reset and refilled past the cursor.
//! - `signal`, `ids`: a wake-up signal; random ids.
//! - [`error`]: the one error type.

pub mod crdt;
pub mod doc;
pub mod error;
pub mod feed;
mod ids;
pub mod landmark;
mod signal;
pub mod sse;
pub mod store;
pub mod sync;
pub mod transport;
pub mod wire;

use std::path::Path;
use std::sync::{Arc, Mutex};

pub use doc::Document;
pub use error::{Error, Result};
pub use store::RejectedWrite;
pub use sync::{Pull, Status, SyncOptions, SyncReport};
pub use transport::{HttpTransport, Transport};

use store::Store;
use sync::Syncer;

/// Checks the server's naming rule (1 to 256 bytes of UTF-8, no control characters), so a
/// bad name fails at once rather than at every push.
fn check_name(name: &str) -> Result<()> {
    let reason = if name.is_empty() {
        "empty"
    } else if name.len() > 256 {
        "longer than 256 bytes"
    } else if name.chars().any(|c| {
        c.is_control()
            || matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}' | '\u{FEFF}' | '\u{2028}' | '\u{2029}')
    }) {
        "holds a control or invisible formatting character"
    } else {
        return Ok(());
    };
    Err(Error::InvalidName {
        name: name.to_string(),
        reason,
    })
}

/// A client: one SQLite file, one server. Cheap to share behind an `Arc`; its collections
/// and documents are handles into it. Dropping it stops its background sync.
pub struct Client {
    syncer: Arc<Syncer>,
    /// The HTTP transport, when the client made it (so the token can be replaced).
    http: Option<Arc<HttpTransport>>,
    collections: Arc<Mutex<Vec<String>>>,
    background: Mutex<bool>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("path", &self.syncer.store.path())
            .field("peer_id", &self.syncer.peer_id())
            .finish()
    }
}

impl Client {
    /// Opens (or creates) the SQLite file at `sqlite_path` and talks to the server at
    /// `base_url` with `token` (a bearer JWT; `None` for an anonymous server). Nothing is
    /// sent until [`Client::sync_once`] or [`Client::start_sync`].
    ///
    /// # Errors
    /// The file is corrupt, another application's, or of a newer schema (see [`Error`]).
    pub fn open(
        sqlite_path: impl AsRef<Path>,
        base_url: &str,
        token: Option<&str>,
    ) -> Result<Client> {
        Client::open_with(sqlite_path, base_url, token, SyncOptions::default())
    }

    /// [`Client::open`] with tuning.
    ///
    /// # Errors
    /// As [`Client::open`].
    pub fn open_with(
        sqlite_path: impl AsRef<Path>,
        base_url: &str,
        token: Option<&str>,
        options: SyncOptions,
    ) -> Result<Client> {
        let subject = token.and_then(ids::jwt_subject);
        let http = Arc::new(HttpTransport::new(base_url, token.map(str::to_string)));
        let mut client = Client::open_inner(sqlite_path.as_ref(), http.clone(), options, subject)?;
        client.http = Some(http);
        Ok(client)
    }

    /// Opens with a transport of the app's own (another HTTP stack, a test double).
    ///
    /// # Errors
    /// As [`Client::open`].
    pub fn open_with_transport(
        sqlite_path: impl AsRef<Path>,
        transport: Arc<dyn Transport>,
        options: SyncOptions,
    ) -> Result<Client> {
        Client::open_inner(sqlite_path.as_ref(), transport, options, None)
    }

    fn open_inner(
        path: &Path,
        transport: Arc<dyn Transport>,
        options: SyncOptions,
        subject: Option<String>,
    ) -> Result<Client> {
        let store = Arc::new(Store::open_with(path, options.fsync_edits)?);
        let suffix = store.kv_get_or_init("peer_suffix", ids::peer_suffix)?;
        let peer_id = match (&options.peer_id, subject) {
            (Some(p), _) => p.clone(),
            (None, Some(sub)) => format!("{sub}:{suffix}"),
            (None, None) => format!("replicate-client:{suffix}"),
        };
        check_name(&peer_id)?;
        // Collections synced before or with writes queued keep syncing after a restart,
        // whether or not the app opens them again.
        let known = store.known_collections()?;
        tracing::debug!(path = %path.display(), peer_id, collections = ?known, "client opened");
        Ok(Client {
            syncer: Arc::new(Syncer::new(store, transport, options, peer_id)),
            http: None,
            collections: Arc::new(Mutex::new(known)),
            background: Mutex::new(false),
        })
    }

    /// Replaces the bearer token (tokens expire: on 401 `unauthenticated` in
    /// [`Status::last_error`], or when the event stream ended with it, get a fresh one and
    /// set it; queued writes then go and the puller reconnects, at once rather than after
    /// its backoff). For a client opened with [`Client::open_with_transport`] it only wakes
    /// the background threads (the app's transport holds its own token).
    pub fn set_token(&self, token: Option<&str>) {
        if let Some(http) = &self.http {
            http.set_token(token.map(str::to_string));
        }
        self.syncer.retry_now();
    }

    /// The peer id this client acks as (persisted in the file).
    pub fn peer_id(&self) -> &str {
        self.syncer.peer_id()
    }

    /// A collection; it joins background sync (if started) and [`Client::sync_once`].
    ///
    /// # Errors
    /// [`Error::InvalidName`].
    pub fn collection(&self, name: &str) -> Result<Collection> {
        check_name(name)?;
        let mut names = self.collections.lock().unwrap_or_else(|p| p.into_inner());
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
            if *self.background.lock().unwrap_or_else(|p| p.into_inner()) {
                self.syncer.spawn_puller(name.to_string());
            }
        }
        Ok(Collection {
            syncer: self.syncer.clone(),
            name: name.to_string(),
        })
    }

    fn names(&self) -> Vec<String> {
        self.collections
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// One sync round of every collection opened so far (see [`Collection::sync_once`]).
    ///
    /// # Errors
    /// The first collection that failed; the others were still tried.
    pub fn sync_once(&self) -> Result<Vec<SyncReport>> {
        let mut reports = Vec::new();
        let mut first_error = None;
        for name in self.names() {
            match self.syncer.sync_once(&name) {
                Ok(r) => reports.push(r),
                Err(e) => {
                    first_error.get_or_insert(e);
                }
            }
        }
        first_error.map_or(Ok(reports), Err)
    }

    /// Starts syncing in the background: a puller per collection (following the event
    /// stream, or long polling; see [`SyncOptions::pull`]) and one pusher
    /// woken by every local edit. They retry with backoff while the server is unreachable and
    /// stop when the client is closed or dropped. Calling it again does nothing.
    pub fn start_sync(&self) {
        let mut started = self.background.lock().unwrap_or_else(|p| p.into_inner());
        if *started {
            return;
        }
        *started = true;
        for name in self.names() {
            self.syncer.spawn_puller(name);
        }
        self.syncer.spawn_pusher(self.collections.clone());
    }

    /// The status of every collection opened so far, by name.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn status(&self) -> Result<Vec<(String, Status)>> {
        self.names()
            .into_iter()
            .map(|n| self.syncer.status(&n).map(|s| (n, s)))
            .collect()
    }

    /// Stops background sync; after this returns the sync loop writes nothing more to the
    /// file (an answer still in flight is dropped: its writes stay queued with their opIds).
    /// Document handles stay usable: their edits are still saved and queued, and go to the
    /// server with the next client opened on the file.
    pub fn close(&self) {
        self.syncer.close();
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.syncer.close();
    }
}

/// A collection of documents.
#[derive(Clone)]
pub struct Collection {
    syncer: Arc<Syncer>,
    name: String,
}

impl std::fmt::Debug for Collection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Collection")
            .field("name", &self.name)
            .finish()
    }
}

impl Collection {
    /// The collection's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The document `id`, built from what the file holds (empty if nothing yet). While a
    /// handle is alive every call answers the same shared document.
    ///
    /// # Errors
    /// [`Error::InvalidName`], a SQLite failure, or stored bytes that do not decode.
    pub fn doc(&self, id: &str) -> Result<Document> {
        check_name(id)?;
        self.syncer.live.open(
            &self.syncer.store,
            &self.syncer.pushed,
            self.syncer.compact_threshold(),
            &self.name,
            id,
        )
    }

    /// The ids of the documents the file holds, sorted.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn documents(&self) -> Result<Vec<String>> {
        self.syncer.store.documents(&self.name)
    }

    /// One sync round: pull what is new, push the queue in batches, pull again, ack.
    ///
    /// # Errors
    /// The server or the network failed; call again later (nothing is lost).
    pub fn sync_once(&self) -> Result<SyncReport> {
        self.syncer.sync_once(&self.name)
    }

    /// What the app can show: online, pending writes, last synced seq, rejected writes.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn status(&self) -> Result<Status> {
        self.syncer.status(&self.name)
    }

    /// Local writes the server refused for good (a per-write 4xx error), oldest first.
    ///
    /// # Errors
    /// A SQLite failure.
    pub fn rejected(&self) -> Result<Vec<RejectedWrite>> {
        self.syncer.store.rejected(&self.name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_server_rule() {
        assert!(check_name("todos").is_ok());
        assert!(check_name("a/b").is_ok());
        assert!(check_name("").is_err());
        assert!(check_name(&"x".repeat(257)).is_err());
        assert!(check_name("a\u{202E}b").is_err());
        assert!(check_name("a\nb").is_err());
    }
}
