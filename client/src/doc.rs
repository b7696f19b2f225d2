//! Document handles: a yrs `Doc` the app edits and observes, whose local edits are written to
//! SQLite (and queued for the server) inside the transaction commit that made them, and the
//! registry of live handles the sync loop applies remote changes to.
//!
//! # Invariants
//! - A local edit (any transaction whose origin is not [`REMOTE_ORIGIN`]) is in SQLite, with
//!   its opId in the pending queue, before the commit of that transaction returns. If SQLite
//!   fails, the update is kept in memory, retried on the next edit or [`Document::flush`],
//!   and the error is answered by [`Document::edit`] / [`Document::flush`].
//! - Remote changes are committed to SQLite first and applied to live handles after, never
//!   while a lock of this crate is held, so an app holding a transaction cannot deadlock sync.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use yrs::{Doc, Origin, Transact, TransactionMut};

use crate::crdt;
use crate::error::{Error, Result};
use crate::ids;
use crate::signal::Signal;
use crate::store::Store;

/// The origin of transactions that apply server changes; local persistence skips them.
pub const REMOTE_ORIGIN: &str = "replicate-client/remote";

/// Local updates that could not be written yet, and the last error.
#[derive(Default)]
struct Unsaved {
    updates: Vec<Vec<u8>>,
    error: Option<Error>,
}

/// What the update observer needs to persist a local edit.
struct Persist {
    store: Arc<Store>,
    pushed: Arc<Signal>,
    collection: String,
    document_id: String,
    /// Local compaction threshold (unmerged updates per document).
    compact_threshold: u64,
    unsaved: Mutex<Unsaved>,
}

impl Persist {
    fn lock(&self) -> std::sync::MutexGuard<'_, Unsaved> {
        self.unsaved.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Writes `update` (after anything still unsaved, in order).
    fn save(&self, update: Option<Vec<u8>>) {
        let mut unsaved = self.lock();
        unsaved.updates.extend(update);
        while let Some(first) = unsaved.updates.first() {
            match self.store.record_local(
                &self.collection,
                &self.document_id,
                first,
                &ids::op_id(),
                false,
            ) {
                Ok(()) => {
                    unsaved.updates.remove(0);
                }
                Err(e) => {
                    tracing::error!(
                        collection = %self.collection,
                        document = %self.document_id,
                        error = %e,
                        "a local edit could not be saved; it stays in memory and is retried"
                    );
                    unsaved.error = Some(e);
                    return;
                }
            }
        }
        drop(unsaved);
        self.pushed.notify();
        // Offline, no page ever arrives to trigger local compaction; a long editing session
        // must not grow the document's rows without bound.
        let (c, d) = (&self.collection, &self.document_id);
        let over = self
            .store
            .update_count(c, d)
            .is_ok_and(|n| n > self.compact_threshold);
        if over {
            if let Err(e) = self.store.compact_document(c, d, self.compact_threshold) {
                tracing::warn!(collection = %c, document = %d, error = %e, "local compaction failed");
            }
        }
    }
}

/// The shared part of a document handle.
pub(crate) struct DocInner {
    doc: Doc,
    persist: Arc<Persist>,
}

/// A document of a collection: a yrs [`Doc`] kept in step with SQLite and the server.
///
/// Edit it with [`Document::edit`] (or any transaction on [`Document::doc`]); observe it with
/// yrs's own observers on [`Document::doc`]. Handles are cheap clones of one shared document:
/// [`crate::Collection::doc`] answers the same one while any handle is alive.
#[derive(Clone)]
pub struct Document {
    inner: Arc<DocInner>,
}

impl std::fmt::Debug for Document {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Document")
            .field("collection", &self.inner.persist.collection)
            .field("id", &self.inner.persist.document_id)
            .finish()
    }
}

impl Document {
    /// The document id.
    pub fn id(&self) -> &str {
        &self.inner.persist.document_id
    }

    /// The yrs document. Transactions on it are persisted when they commit (see
    /// [`Document::edit`] for a form that answers storage errors).
    pub fn doc(&self) -> &Doc {
        &self.inner.doc
    }

    /// Runs `f` in a write transaction; when it commits, the edit is in SQLite and queued for
    /// the server.
    ///
    /// # Errors
    /// The edit could not be saved (it stays in memory and is retried on the next edit or
    /// [`Document::flush`]).
    pub fn edit<R>(&self, f: impl FnOnce(&mut TransactionMut<'_>) -> R) -> Result<R> {
        let r = {
            let mut txn = self.inner.doc.transact_mut();
            f(&mut txn)
        };
        self.take_error().map_or(Ok(r), Err)
    }

    /// Retries saving local edits that failed to save.
    ///
    /// # Errors
    /// They still cannot be saved.
    pub fn flush(&self) -> Result<()> {
        self.inner.persist.save(None);
        self.take_error().map_or(Ok(()), Err)
    }

    /// Edits saved in memory only, because SQLite failed.
    pub fn unsaved(&self) -> usize {
        self.inner.persist.lock().updates.len()
    }

    /// Marks the document deleted on the server (a `delete` write carrying no content
    /// change: Yjs documents have no deletion, the operation type tells other clients).
    ///
    /// # Errors
    /// It could not be saved.
    pub fn delete(&self) -> Result<()> {
        let p = &self.inner.persist;
        p.store
            .record_local(&p.collection, &p.document_id, &[0, 0], &ids::op_id(), true)?;
        p.pushed.notify();
        Ok(())
    }

    fn take_error(&self) -> Option<Error> {
        self.inner.persist.lock().error.take()
    }

    /// Applies a server update (not persisted again: the caller stored it).
    fn apply_remote(&self, bytes: &[u8]) -> Result<()> {
        let mut txn = self.inner.doc.transact_mut_with(REMOTE_ORIGIN);
        crdt::apply(&mut txn, bytes)
    }
}

/// The live handles of one client, by (collection, document id).
#[derive(Default)]
pub(crate) struct LiveDocs {
    docs: Mutex<HashMap<(String, String), Weak<DocInner>>>,
}

impl LiveDocs {
    /// The live handle of a document, or a new one built from SQLite.
    ///
    /// Loading happens under the registry lock and sync applies after its commit, so a handle
    /// never misses a change: either it was registered before the sync looked (and gets the
    /// change applied) or it read SQLite after the commit.
    pub fn open(
        &self,
        store: &Arc<Store>,
        pushed: &Arc<Signal>,
        compact_threshold: u64,
        collection: &str,
        document_id: &str,
    ) -> Result<Document> {
        let mut docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
        let key = (collection.to_string(), document_id.to_string());
        if let Some(inner) = docs.get(&key).and_then(Weak::upgrade) {
            return Ok(Document { inner });
        }
        let parts = store.load_document(collection, document_id)?;
        let doc = Doc::with_client_id(ids::yrs_client_id());
        {
            let mut txn = doc.transact_mut_with(REMOTE_ORIGIN);
            for part in &parts {
                crdt::apply(&mut txn, part)?;
            }
        }
        let persist = Arc::new(Persist {
            store: store.clone(),
            pushed: pushed.clone(),
            collection: collection.to_string(),
            document_id: document_id.to_string(),
            compact_threshold,
            unsaved: Mutex::new(Unsaved::default()),
        });
        let observer = persist.clone();
        let remote = Origin::from(REMOTE_ORIGIN);
        doc.observe_update_v1("replicate-client/persist", move |txn, event| {
            if txn.origin() == Some(&remote) || crdt::is_empty_update(&event.update) {
                return;
            }
            observer.save(Some(event.update.clone()));
        })
        .map_err(|e| Error::Protocol(format!("could not observe the document: {e}")))?;
        let inner = Arc::new(DocInner { doc, persist });
        docs.retain(|_, w| w.strong_count() > 0);
        docs.insert(key, Arc::downgrade(&inner));
        Ok(Document { inner })
    }

    /// Applies stored remote changes to the live handles of their documents.
    pub fn apply(&self, collection: &str, changes: &[(String, Vec<u8>)]) {
        let targets: Vec<(Document, &[u8])> = {
            let docs = self.docs.lock().unwrap_or_else(|p| p.into_inner());
            changes
                .iter()
                .filter_map(|(id, bytes)| {
                    let inner = docs
                        .get(&(collection.to_string(), id.clone()))
                        .and_then(Weak::upgrade)?;
                    Some((Document { inner }, bytes.as_slice()))
                })
                .collect()
        };
        for (doc, bytes) in targets {
            if let Err(e) = doc.apply_remote(bytes) {
                tracing::warn!(collection, document = doc.id(), error = %e, "remote change not applied");
            }
        }
    }
}
