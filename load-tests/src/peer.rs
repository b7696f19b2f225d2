//! A peer: what a real client of the service does, written once and used by every scenario.
//!
//! A peer keeps one yrs document per `documentId` it knows, makes edits (text inserts and
//! deletes, map sets), pushes each edit's update with an `opId` (retrying the same opId after an
//! error, as the contract allows), streams changes after its cursor (long-poll or the SSE feed),
//! applies them — snapshots included — acks, and recovers with its state vectors.
//!
//! A document is a map of blocks (`"blocks"`: each a Y.Text, like the paragraphs of a block
//! editor) and a map of edit keys (`"meta"`). A peer types into its own current block — text
//! inserts and deletes at random positions — and starts a new block after [`BLOCK_EDITS`] edits.
//! So the client's own cost per edit stays flat however long the document grows (yrs finds a
//! text position by walking the items from the start of the text), and a long fill measures the
//! service rather than the load generator.
//!
//! Every edit sets a map key unique to it (`"{peer}:{n}"`), so "nothing lost" is checkable: the
//! key of every answered write must be in every converged replica. What the peer received is
//! logged in [`Seen`] for the ordering and coverage checks in [`crate::verify`].
//!
//! # Steady documents
//! Those documents grow for good (every edit adds text and a key), so a long run's memory grows
//! with its data. A [`Peer::steady`] peer (the `soak`'s writers) makes documents that stop
//! growing: each block is a Y.Map holding its text and the keys of the edits made in it, and a
//! peer keeps [`STEADY_BLOCKS`] of them per document, each new block replacing the oldest. A
//! replaced block is deleted whole with everything in it, so Yjs garbage-collects its content
//! into a few ranges. Its keys are gone by design: "nothing lost" then checks the keys of each
//! peer's live blocks ([`present_keys`]); the checks by seq still cover every write.

use std::cell::RefCell;
use std::collections::{BTreeMap, HashMap};
use std::rc::Rc;
use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use replicate_actors::OperationType;
use yrs::types::EntryChange;
use yrs::updates::decoder::Decode;
use yrs::updates::encoder::Encode;
use yrs::{
    Doc, Map, MapPrelim, MapRef, Observable, Out, ReadTxn, StateVector, Text, TextPrelim, TextRef,
    Transact, Update,
};

use crate::backend::{Backend, Change, Events};
use crate::metrics::{timed, Metrics};
use crate::verify::Ledger;

/// Numbers every peer made in this process, so edit keys (and opIds) never repeat even when
/// two scenarios reuse a peer index.
static INSTANCES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// yrs client ids reserved per peer: one per document it edits. Client ids are unique per
/// peer instance (two peers sharing one would have their edits taken for each other's and
/// dropped), and stay below 2^32 as JavaScript Yjs expects.
const DOCS_PER_PEER: u64 = 256;

/// Edits a peer makes to one block of a document before it starts a new one (about a
/// paragraph of text, ~100–300 yrs items).
pub const BLOCK_EDITS: u32 = 64;
/// Blocks a steady peer keeps per document (see the module docs).
pub const STEADY_BLOCKS: u64 = 2;

/// How many times a push is retried (with the same opId) before it counts as failed.
const PUSH_ATTEMPTS: u32 = 8;

/// One document as a peer holds it.
pub struct Replica {
    doc: Doc,
    blocks: MapRef,
    map: MapRef,
    /// The block this peer is typing into and how many edits it has had.
    block: Option<(TextRef, u32)>,
    /// A steady peer's block (see the module docs), and how many it started.
    steady: Option<SteadyBlock>,
    steady_started: u64,
}

/// The edit key of every update the writers pushed, by the update's bytes: a websocket
/// subscriber names the write a delivered update carries without applying it, since the
/// service stores and broadcasts an update's bytes as pushed. (An update not found here, such
/// as a resync's diff, is applied to learn its keys.)
#[derive(Clone, Default)]
pub struct SentUpdates(Rc<RefCell<HashMap<u64, String>>>);

impl SentUpdates {
    pub fn note(&self, update: &[u8], key: &str) {
        self.0
            .borrow_mut()
            .insert(bytes_hash(update), key.to_string());
    }

    /// The key of the write whose update is `update`, if one was noted.
    pub fn key_of(&self, update: &[u8]) -> Option<String> {
        self.0.borrow().get(&bytes_hash(update)).cloned()
    }
}

fn bytes_hash(bytes: &[u8]) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    bytes.hash(&mut h);
    h.finish()
}

/// A steady peer's current block: a map of its text and its edits' keys.
struct SteadyBlock {
    map: MapRef,
    text: TextRef,
    edits: u32,
    ordinal: u64,
}

/// A steady edit key (`"{peer}:{n}@{block ordinal}"`) split into its peer and block ordinal.
fn steady_key(key: &str) -> Option<(&str, u64)> {
    let (rest, ordinal) = key.split_once('@')?;
    let (prefix, _) = rest.rsplit_once(':')?;
    Some((prefix, ordinal.parse().ok()?))
}

/// Where a steady peer's block `ordinal` lives in the blocks map.
fn steady_slot(prefix: &str, ordinal: u64) -> String {
    format!("{prefix}:b{}", ordinal % STEADY_BLOCKS)
}

/// The keys of `keys` (one document's answered writes) a converged replica must hold: all of
/// them, except that a steady peer's keys count only in its [`STEADY_BLOCKS`] newest blocks.
pub fn present_keys(keys: &[String]) -> Vec<&String> {
    let mut newest: HashMap<&str, u64> = HashMap::new();
    for (prefix, ordinal) in keys.iter().filter_map(|k| steady_key(k)) {
        let e = newest.entry(prefix).or_default();
        *e = (*e).max(ordinal);
    }
    keys.iter()
        .filter(|k| match steady_key(k) {
            Some((prefix, ordinal)) => newest
                .get(prefix)
                .is_some_and(|newest| ordinal + STEADY_BLOCKS > *newest),
            None => true,
        })
        .collect()
}

/// A value's content with map entries sorted (yrs renders maps in hash order).
fn render<T: ReadTxn>(value: Out, txn: &T) -> String {
    match value {
        Out::YMap(map) => {
            let mut entries: Vec<String> = map
                .iter(txn)
                .map(|(k, v)| format!("{k}:{}", render(v, txn)))
                .collect();
            entries.sort();
            format!("{{{}}}", entries.join(","))
        }
        other => other.to_string(txn),
    }
}

impl Replica {
    fn new(client_id: u64) -> Replica {
        let doc = Doc::with_client_id(client_id);
        let blocks = doc.get_or_insert_map("blocks");
        let map = doc.get_or_insert_map("meta");
        Replica {
            doc,
            blocks,
            map,
            block: None,
            steady: None,
            steady_started: 0,
        }
    }

    /// A replica holding nothing, for reading (its client id never edits).
    pub fn empty() -> Replica {
        Replica::new(0x7fff_fff0)
    }

    /// A replica built from one update (e.g. the server's full state of a document).
    pub fn from_update(update: &[u8]) -> Result<Replica> {
        let r = Replica::empty();
        r.apply(update)?;
        Ok(r)
    }

    pub fn apply(&self, update: &[u8]) -> Result<()> {
        self.apply_all(std::iter::once(update))
    }

    /// Applies `updates` in order in one transaction: what a client does with a page, and
    /// several times cheaper than a transaction each (yrs's commit, gc and observer pass run
    /// once).
    pub fn apply_all<'a>(&self, updates: impl IntoIterator<Item = &'a [u8]>) -> Result<()> {
        let mut txn = self.doc.transact_mut();
        for update in updates {
            let update = Update::decode_v1(update).context("update does not decode")?;
            txn.apply_update(update).context("update does not apply")?;
        }
        Ok(())
    }

    /// Applies `update` and answers the edit keys it added (see [`Replica::apply_all_keys`]).
    ///
    /// # Errors
    /// An update that does not decode or apply.
    pub fn apply_keys(&self, update: &[u8]) -> Result<Vec<String>> {
        self.apply_all_keys(std::iter::once(update))
    }

    /// Applies `updates` in one transaction (as [`Replica::apply_all`]) and answers the edit
    /// keys they added: which writes delivered updates carry, for a feed whose messages name
    /// no seq (y-websocket). The keys come from yrs's event for the edit-key map, so the cost
    /// is the updates', not the document's; an update still waiting for what it depends on
    /// yields its key once that arrives.
    ///
    /// # Errors
    /// An update that does not decode or apply.
    pub fn apply_all_keys<'a>(
        &self,
        updates: impl IntoIterator<Item = &'a [u8]>,
    ) -> Result<Vec<String>> {
        const OBSERVER: &str = "apply_keys";
        let added = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let sink = added.clone();
        self.map.observe(OBSERVER, move |txn, event| {
            let mut sink = sink.lock().unwrap_or_else(|p| p.into_inner());
            for (key, change) in event.keys(txn) {
                if matches!(change, EntryChange::Inserted(_)) {
                    sink.push(key.to_string());
                }
            }
        });
        let applied = self.apply_all(updates);
        self.map.unobserve(OBSERVER);
        applied?;
        let keys = std::mem::take(&mut *added.lock().unwrap_or_else(|p| p.into_inner()));
        Ok(keys)
    }

    pub fn state_vector(&self) -> Vec<u8> {
        self.doc.transact().state_vector().encode_v1()
    }

    /// What a holder of `sv` lacks, as one v1 update (a y-websocket step 2).
    pub fn diff(&self, sv: &StateVector) -> Vec<u8> {
        self.doc.transact().encode_state_as_update_v1(sv)
    }

    /// The document's content (the blocks' texts, then the edit keys, each sorted by key):
    /// equal digests, equal docs.
    pub fn digest(&self) -> String {
        let txn = self.doc.transact();
        let mut out = String::new();
        for map in [&self.blocks, &self.map] {
            let mut entries: Vec<(String, String)> = map
                .iter(&txn)
                .map(|(k, v)| (k.to_string(), render(v, &txn)))
                .collect();
            entries.sort();
            for (k, v) in entries {
                out.push_str(&format!("|{k}={v}"));
            }
            out.push('#');
        }
        out
    }

    /// The whole document as one v1 update.
    pub fn encode_state(&self) -> Vec<u8> {
        self.doc
            .transact()
            .encode_state_as_update_v1(&StateVector::default())
    }

    /// Whether the edit of `key` is here: in the edit-key map, or a steady edit in its block.
    pub fn has_key(&self, key: &str) -> bool {
        let txn = self.doc.transact();
        match steady_key(key) {
            Some((prefix, ordinal)) => match self.blocks.get(&txn, &steady_slot(prefix, ordinal)) {
                Some(Out::YMap(block)) => block.contains_key(&txn, key),
                _ => false,
            },
            None => self.map.contains_key(&txn, key),
        }
    }

    pub fn key_count(&self) -> u32 {
        self.map.len(&self.doc.transact())
    }

    /// Whether some update is still waiting for what it depends on.
    pub fn has_pending(&self) -> bool {
        let txn = self.doc.transact();
        txn.store().pending_update().is_some() || txn.store().pending_ds().is_some()
    }
}

/// What a peer received, for the verdict.
#[derive(Debug, Default)]
pub struct Seen {
    /// The cursor the peer started streaming from.
    pub start_cursor: u64,
    /// Delta seqs applied, in the order received.
    pub deltas: Vec<u64>,
    /// (document, snapshotSeq) of every snapshot applied.
    pub snapshots: Vec<(String, u64)>,
    /// Seqs ≤ this are covered by a recovery diff of every document.
    pub recovered_through: u64,
    /// A delta that arrived with a seq not above the previous one, or above the page cursor.
    pub order_violations: u64,
    /// Receipt time of each delta seq (only when asked for, for push→delivery latency).
    pub receipts: Vec<(u64, Instant)>,
}

/// A client of one collection.
pub struct Peer {
    pub name: String,
    /// Process-wide instance number (part of every edit key and opId).
    instance: u64,
    pub collection: String,
    backend: Backend,
    metrics: Metrics,
    docs: BTreeMap<String, Replica>,
    /// Base of this peer's yrs client ids: each document gets its own (`base + n`).
    client_base: u64,
    pub cursor: u64,
    rng: StdRng,
    edits: u64,
    /// Make documents that stop growing (see the module docs).
    pub steady: bool,
    pub seen: Seen,
    /// Record receipt times of deltas (fan-out latency).
    pub track_receipts: bool,
    /// Keep received changes to apply later ([`Peer::apply_deferred`]) instead of applying
    /// each page as it comes: a fan-out subscriber then costs the load generator's one thread
    /// a parse per delivery, not a yrs apply, so what is timed is the service's delivery.
    pub defer_applies: bool,
    deferred: BTreeMap<String, Vec<Vec<u8>>>,
    /// Where this peer notes each update it pushes (see [`SentUpdates`]).
    pub sent: Option<SentUpdates>,
    /// Keep the bytes of every change received for this document (input for the yrs floors).
    pub capture: Option<(String, Vec<Vec<u8>>)>,
}

impl Peer {
    /// A peer named after `index` (its peerId); yrs client ids come from its process-wide
    /// instance number.
    pub fn new(
        index: u64,
        collection: &str,
        backend: Backend,
        metrics: Metrics,
        seed: u64,
    ) -> Peer {
        let instance = INSTANCES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        Peer {
            name: format!("peer-{index}"),
            instance,
            collection: collection.to_string(),
            backend,
            metrics,
            docs: BTreeMap::new(),
            client_base: 1 + instance * DOCS_PER_PEER,
            cursor: 0,
            rng: StdRng::seed_from_u64(seed ^ index.wrapping_mul(0x9E37_79B9_7F4A_7C15)),
            edits: 0,
            steady: false,
            seen: Seen::default(),
            track_receipts: false,
            defer_applies: false,
            deferred: BTreeMap::new(),
            sent: None,
            capture: None,
        }
    }

    /// The peer's seeded random source (scenarios draw their choices from it).
    pub fn rng(&mut self) -> &mut StdRng {
        &mut self.rng
    }

    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Starts tracking a document (a client knows the documents it has locally).
    pub fn know(&mut self, doc: &str) -> &Replica {
        let next = self.client_base + self.docs.len() as u64;
        self.docs
            .entry(doc.to_string())
            .or_insert_with(|| Replica::new(next))
    }

    /// Starts tracking every document of `docs`.
    pub fn know_all(&mut self, docs: &[String]) {
        for d in docs {
            self.know(d);
        }
    }

    pub fn replica(&self, doc: &str) -> Option<&Replica> {
        self.docs.get(doc)
    }

    pub fn documents(&self) -> impl Iterator<Item = &String> {
        self.docs.keys()
    }

    /// Makes one random edit to `doc` — a text insert or delete at a random position of this
    /// peer's current block, starting a new block every [`BLOCK_EDITS`] edits — and returns its
    /// update and its unique key.
    pub fn edit(&mut self, doc: &str) -> (Vec<u8>, String) {
        if self.steady {
            return self.steady_edit(doc);
        }
        let key = format!("{}.{}:{}", self.name, self.instance, self.edits);
        self.edits += 1;
        let choice = self.rng.gen_range(0..10u32);
        let token_len = self.rng.gen_range(4..24usize);
        let salt: u32 = self.rng.gen();
        let mut token = format!("[{key}:{salt:08x}]");
        token.truncate(token_len.max(key.len() + 2));
        self.know(doc);
        let rng = &mut self.rng;
        let replica = self.docs.get_mut(doc).expect("known above");
        let mut txn = replica.doc.transact_mut();
        match &mut replica.block {
            Some((text, edits)) if *edits < BLOCK_EDITS => {
                *edits += 1;
                let len = text.len(&txn);
                if choice < 2 && len > 16 {
                    let n = rng.gen_range(1..=8);
                    let at = rng.gen_range(0..=len - n);
                    text.remove_range(&mut txn, at, n);
                } else {
                    let at = rng.gen_range(0..=len);
                    text.insert(&mut txn, at, &token);
                }
            }
            block => {
                // A new block, named by its first edit, starts with that edit's text.
                let text = replica
                    .blocks
                    .insert(&mut txn, key.clone(), TextPrelim::new(token));
                *block = Some((text, 1));
            }
        }
        replica.map.insert(&mut txn, key.clone(), self.edits as i64);
        (txn.encode_update_v1(), key)
    }

    /// [`Peer::edit`] for a steady peer: the text edit goes into its current block, which
    /// also records the edit's key; after [`BLOCK_EDITS`] edits a new block replaces its
    /// oldest (see the module docs).
    fn steady_edit(&mut self, doc: &str) -> (Vec<u8>, String) {
        let n = self.edits;
        self.edits += 1;
        let choice = self.rng.gen_range(0..10u32);
        let token_len = self.rng.gen_range(4..24usize);
        let salt: u32 = self.rng.gen();
        let prefix = format!("{}.{}", self.name, self.instance);
        self.know(doc);
        let rng = &mut self.rng;
        let replica = self.docs.get_mut(doc).expect("known above");
        let mut txn = replica.doc.transact_mut();
        let mut block = match replica.steady.take() {
            Some(block) if block.edits < BLOCK_EDITS => block,
            _ => {
                let ordinal = replica.steady_started;
                replica.steady_started += 1;
                let slot = steady_slot(&prefix, ordinal);
                let map = replica.blocks.insert(&mut txn, slot, MapPrelim::default());
                let text = map.insert(&mut txn, "text", TextPrelim::new(""));
                SteadyBlock {
                    map,
                    text,
                    edits: 0,
                    ordinal,
                }
            }
        };
        let key = format!("{prefix}:{n}@{}", block.ordinal);
        let mut token = format!("[{key}:{salt:08x}]");
        token.truncate(token_len.max(key.len() + 2));
        let len = block.text.len(&txn);
        if choice < 2 && len > 16 {
            let cut = rng.gen_range(1..=8);
            let at = rng.gen_range(0..=len - cut);
            block.text.remove_range(&mut txn, at, cut);
        } else {
            let at = rng.gen_range(0..=len);
            block.text.insert(&mut txn, at, &token);
        }
        block.map.insert(&mut txn, key.clone(), n as i64);
        block.edits += 1;
        let update = txn.encode_update_v1();
        drop(txn);
        replica.steady = Some(block);
        (update, key)
    }

    /// An edit the service must refuse: a fresh edit key (named as [`Peer::edit`] names
    /// them) set to maps nested `depth` deep — valid Yjs, past the service's nesting limit
    /// when `depth` exceeds it. Its key is content no reader may ever hold. Made with the
    /// peer's last reserved client id, apart from its real edits.
    pub fn refused_edit(&mut self, depth: u32) -> (Vec<u8>, String) {
        let key = format!("{}.{}:refused-{}", self.name, self.instance, self.edits);
        self.edits += 1;
        let doc = Doc::with_client_id(self.client_base + DOCS_PER_PEER - 1);
        let meta = doc.get_or_insert_map("meta");
        let mut txn = doc.transact_mut();
        let mut map = meta.insert(&mut txn, key.clone(), MapPrelim::default());
        for _ in 0..depth {
            map = map.insert(&mut txn, "k", MapPrelim::default());
        }
        (txn.encode_update_v1(), key)
    }

    /// Edits `doc` and pushes the update as `op`, retrying with the same opId on errors.
    /// Records the write in `ledger` once answered.
    ///
    /// # Errors
    /// The last error, after [`PUSH_ATTEMPTS`] attempts.
    pub async fn push(
        &mut self,
        doc: &str,
        op: OperationType,
        op_name: &str,
        ledger: &Ledger,
    ) -> Result<u64> {
        let (update, key) = self.edit(doc);
        if let Some(sent) = &self.sent {
            sent.note(&update, &key);
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        let mut last = None;
        for _ in 0..PUSH_ATTEMPTS {
            let attempt = Instant::now();
            match self
                .backend
                .write(&self.collection, op, doc, &update, Some(&key))
                .await
            {
                Ok(seq) => {
                    self.metrics.record(op_name, attempt.elapsed());
                    self.metrics.raw(op_name, update.len());
                    ledger.record(seq, doc, &key, started);
                    return Ok(seq);
                }
                Err(e) => {
                    self.metrics.error(op_name, &e);
                    last = Some(e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Makes `n` edits of documents picked from `docs` and pushes them in one `batch`
    /// request, retrying the whole batch with the same op ids on errors. Records each stored
    /// write in `ledger` once answered (a refused write counts as an error); answers the
    /// stored writes' seqs in request order.
    ///
    /// # Errors
    /// The last error, after [`PUSH_ATTEMPTS`] attempts.
    pub async fn push_batch(
        &mut self,
        docs: &[String],
        n: usize,
        op_name: &str,
        ledger: &Ledger,
    ) -> Result<Vec<u64>> {
        let mut writes = Vec::with_capacity(n);
        for _ in 0..n {
            let doc = docs[self.rng.gen_range(0..docs.len())].clone();
            let (update, key) = self.edit(&doc);
            writes.push((OperationType::Update, doc, update, key));
        }
        let started = Instant::now();
        let mut backoff = Duration::from_millis(10);
        let mut last = None;
        for _ in 0..PUSH_ATTEMPTS {
            let attempt = Instant::now();
            match self.backend.write_batch(&self.collection, &writes).await {
                Ok(results) => {
                    self.metrics.record(op_name, attempt.elapsed());
                    self.metrics.items(op_name, n as u64);
                    let mut seqs = Vec::with_capacity(n);
                    for ((_, doc, update, key), result) in writes.iter().zip(results) {
                        self.metrics.raw(op_name, update.len());
                        match result {
                            Ok(seq) => {
                                ledger.record(seq, doc, key, started);
                                seqs.push(seq);
                            }
                            Err(e) => self.metrics.error(op_name, &e),
                        }
                    }
                    return Ok(seqs);
                }
                Err(e) => {
                    self.metrics.error(op_name, &e);
                    last = Some(e);
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_millis(500));
                }
            }
        }
        Err(last.expect("at least one attempt"))
    }

    /// Applies one received change. Snapshots merge like any update (Yjs merges are
    /// idempotent); deltas must come in increasing seq order.
    pub fn apply(&mut self, change: &Change, op_name: &str) -> Result<()> {
        self.apply_page(std::slice::from_ref(change), op_name)
    }

    /// Applies changes received together (a page): each document's in one transaction, in
    /// the order received, then records each as [`Peer::apply`] does.
    ///
    /// # Errors
    /// An update that does not decode or apply (naming the page's first seq of that document).
    pub fn apply_page(&mut self, changes: &[Change], op_name: &str) -> Result<()> {
        let mut by_doc: BTreeMap<&str, Vec<&Change>> = BTreeMap::new();
        for change in changes {
            by_doc.entry(&change.document_id).or_default().push(change);
        }
        if self.defer_applies {
            for (doc, group) in by_doc {
                let kept = self.deferred.entry(doc.to_string()).or_default();
                kept.extend(group.iter().map(|c| c.bytes.clone()));
            }
            for change in changes {
                self.note(change, op_name);
            }
            return Ok(());
        }
        for (doc, group) in by_doc {
            let next = self.client_base + self.docs.len() as u64;
            let replica = self
                .docs
                .entry(doc.to_string())
                .or_insert_with(|| Replica::new(next));
            replica
                .apply_all(group.iter().map(|c| c.bytes.as_slice()))
                .with_context(|| format!("seqs from {} of {doc}", group[0].seq))?;
        }
        for change in changes {
            self.note(change, op_name);
        }
        Ok(())
    }

    /// Applies what [`Peer::defer_applies`] kept, each document's in one transaction.
    ///
    /// # Errors
    /// An update that does not decode or apply.
    pub fn apply_deferred(&mut self) -> Result<()> {
        for (doc, updates) in std::mem::take(&mut self.deferred) {
            self.know(&doc)
                .apply_all(updates.iter().map(Vec::as_slice))
                .with_context(|| format!("deferred changes of {doc}"))?;
        }
        Ok(())
    }

    /// Records an applied change: bytes, capture, and what [`Seen`] checks.
    fn note(&mut self, change: &Change, op_name: &str) {
        self.metrics.raw(op_name, change.bytes.len());
        if let Some((doc, kept)) = &mut self.capture {
            if *doc == change.document_id {
                kept.push(change.bytes.clone());
            }
        }
        if change.operation == OperationType::Snapshot {
            self.seen
                .snapshots
                .push((change.document_id.clone(), change.seq));
        } else {
            if self
                .seen
                .deltas
                .last()
                .is_some_and(|last| *last >= change.seq)
                || change.seq <= self.seen.start_cursor
            {
                self.seen.order_violations += 1;
            }
            self.seen.deltas.push(change.seq);
            if self.track_receipts {
                self.seen.receipts.push((change.seq, Instant::now()));
            }
        }
    }

    /// Takes over `other`'s documents and cursor, as if this peer had synced to the same point
    /// (cheap: one update per document).
    ///
    /// # Errors
    /// If a document's state does not apply.
    pub fn copy_state_from(&mut self, other: &Peer) -> Result<()> {
        for (doc, replica) in &other.docs {
            let state = replica.encode_state();
            self.know(doc).apply(&state)?;
        }
        self.start_at(other.cursor);
        Ok(())
    }

    /// Pulls pages until the cursor is exactly `at` (no compaction running: pages end on
    /// deltas).
    ///
    /// # Errors
    /// As [`Peer::pull`].
    pub async fn sync_to(&mut self, at: u64, op_name: &str) -> Result<()> {
        for _ in 0..at {
            if self.cursor >= at {
                break;
            }
            let limit = (at - self.cursor).min(1000) as usize;
            self.pull(limit, Duration::ZERO, op_name).await?;
        }
        Ok(())
    }

    /// Sets where streaming starts (a new peer: 0; a returning one: its old cursor).
    pub fn start_at(&mut self, cursor: u64) {
        self.cursor = cursor;
        self.seen.start_cursor = cursor;
    }

    /// One stream request; applies the page and moves the cursor. Answers (changes, hasMore).
    ///
    /// # Errors
    /// A failed request or a change that does not apply.
    pub async fn pull(
        &mut self,
        limit: usize,
        wait: Duration,
        op_name: &str,
    ) -> Result<(usize, bool)> {
        let page = timed(
            &self.metrics,
            op_name,
            self.backend
                .stream(&self.collection, self.cursor, limit, wait),
        )
        .await?;
        self.apply_page(&page.changes, op_name)?;
        for change in &page.changes {
            if change.operation != OperationType::Snapshot && change.seq > page.cursor {
                self.seen.order_violations += 1;
            }
        }
        self.metrics.items(op_name, page.changes.len() as u64);
        if page.cursor < self.cursor {
            self.seen.order_violations += 1;
        }
        self.cursor = self.cursor.max(page.cursor);
        Ok((page.changes.len(), page.has_more))
    }

    /// Pulls pages until the cursor reaches `head` (or `deadline` passes).
    ///
    /// # Errors
    /// As [`Peer::pull`], or if the deadline passes first.
    pub async fn catch_up(&mut self, head: u64, deadline: Instant, op_name: &str) -> Result<()> {
        while self.cursor < head {
            if Instant::now() >= deadline {
                anyhow::bail!(
                    "{}: catch-up stopped at {} of {head} when its time ran out",
                    self.name,
                    self.cursor
                );
            }
            self.pull(1000, Duration::ZERO, op_name).await?;
        }
        Ok(())
    }

    /// Follows the SSE or binary feed (a long-poll loop in-process) from the cursor, applying
    /// what arrived together as one batch, until the cursor reaches `head` or `deadline`
    /// passes.
    ///
    /// # Errors
    /// A failed feed or a change that does not apply.
    pub async fn follow(
        &mut self,
        events: &mut Events,
        head: Option<u64>,
        deadline: Instant,
        op_name: &str,
    ) -> Result<()> {
        while head.is_none_or(|h| self.cursor < h) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            let batch = events
                .next_batch(left.min(Duration::from_millis(250)), FEED_BATCH)
                .await?;
            self.apply_page(&batch, op_name)?;
            self.metrics.items(op_name, batch.len() as u64);
            for change in &batch {
                if change.operation != OperationType::Snapshot {
                    self.cursor = self.cursor.max(change.seq);
                }
            }
        }
        Ok(())
    }

    /// Recovers every known document (see [`Peer::recover`], timed as `recover_op`), then
    /// pulls the rest up to `head` (as `stream_op`): how a returning peer catches up.
    ///
    /// # Errors
    /// As [`Peer::recover`] and [`Peer::catch_up`].
    pub async fn recover_and_catch_up(
        &mut self,
        head: u64,
        deadline: Instant,
        recover_op: &str,
        stream_op: &str,
    ) -> Result<()> {
        self.recover(recover_op).await?;
        self.catch_up(head, deadline, stream_op).await
    }

    /// Acknowledges the cursor.
    pub async fn ack(&mut self) -> Result<u64> {
        let cursor = self.cursor;
        timed(
            &self.metrics,
            "ack",
            self.backend.ack(&self.collection, &self.name, cursor),
        )
        .await
    }

    /// Recovers every known document with its state vector and moves the cursor to the lowest
    /// recovery cursor: each document now holds everything up to its own, higher or equal, one.
    ///
    /// # Errors
    /// A failed request or a diff that does not apply.
    pub async fn recover(&mut self, op_name: &str) -> Result<()> {
        let docs: Vec<String> = self.docs.keys().cloned().collect();
        let mut through = u64::MAX;
        for doc in docs {
            let sv = self.docs[&doc].state_vector();
            let state = timed(
                &self.metrics,
                op_name,
                self.backend.recovery(&self.collection, &sv, Some(&doc)),
            )
            .await?;
            self.docs[&doc].apply(&state.update)?;
            self.metrics.raw(op_name, state.update.len());
            through = through.min(state.cursor);
        }
        if through != u64::MAX && through > self.cursor {
            self.cursor = through;
            self.seen.recovered_through = self.seen.recovered_through.max(through);
        }
        Ok(())
    }
}

/// Most changes a feed follower applies together (in one transaction per document): all it
/// has received, up to this. Larger transactions cost yrs less per change (its commit, gc and
/// observer pass run once per transaction); measured on `catchup`'s 1,000,000 deltas with no
/// server, batches of 10,000 apply ~1.25x faster than batches of 1,000.
pub const FEED_BATCH: usize = 10_000;

/// The empty state vector (a peer that has nothing), as v1 bytes.
pub fn empty_state_vector() -> Vec<u8> {
    StateVector::default().encode_v1()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn edits_stay_in_bounded_blocks_and_converge() {
        let mut a = Peer::new(1, "c", Backend::Offline, Metrics::new(), 7);
        let mut b = Peer::new(2, "c", Backend::Offline, Metrics::new(), 7);
        let reader = Replica::new(0x7fff_fff1);
        let mut keys = Vec::new();
        for i in 0..(3 * BLOCK_EDITS + 5) {
            let p = if i % 3 == 0 { &mut b } else { &mut a };
            let (update, key) = p.edit("doc");
            reader.apply(&update).unwrap();
            keys.push(key);
        }
        // a made 2/3 of the edits: its current block holds at most BLOCK_EDITS of them.
        let replica = a.replica("doc").unwrap();
        let blocks = replica.blocks.len(&replica.doc.transact());
        assert!(
            blocks >= 2,
            "a new block every {BLOCK_EDITS} edits, got {blocks}"
        );
        let (text, edits) = replica.block.as_ref().unwrap();
        assert!(*edits <= BLOCK_EDITS);
        assert!(text.len(&replica.doc.transact()) <= BLOCK_EDITS * 24);
        // The reader holds every edit; the blocks merge into one document.
        assert!(keys.iter().all(|k| reader.has_key(k)));
        assert!(!reader.has_pending());
        assert_eq!(merged_state(&[&a, &b]).digest(), reader.digest());
        assert_eq!(reader.key_count() as usize, keys.len());
    }

    /// The peers' replicas of "doc" merged into one.
    fn merged_state(peers: &[&Peer]) -> Replica {
        let merged = Replica::new(0x7fff_fff2);
        for p in peers {
            merged
                .apply(&p.replica("doc").unwrap().encode_state())
                .unwrap();
        }
        merged
    }

    /// A steady peer's documents stop growing: after ten times as many edits the encoded
    /// state is about the same size (it grows by a few bytes per replaced block), and a
    /// reader holds exactly the live blocks' keys.
    #[test]
    fn steady_documents_stop_growing_and_keep_their_newest_keys() {
        let mut a = Peer::new(1, "c", Backend::Offline, Metrics::new(), 7);
        let mut b = Peer::new(2, "c", Backend::Offline, Metrics::new(), 7);
        a.steady = true;
        b.steady = true;
        let reader = Replica::new(0x7fff_fff1);
        let mut keys = Vec::new();
        let mut size_at = |edits: u32, reader: &Replica, keys: &mut Vec<String>| {
            while (keys.len() as u32) < edits {
                let p = if keys.len().is_multiple_of(3) {
                    &mut b
                } else {
                    &mut a
                };
                let (update, key) = p.edit("doc");
                reader.apply(&update).unwrap();
                keys.push(key);
            }
            reader.encode_state().len()
        };
        let early = size_at(10 * BLOCK_EDITS, &reader, &mut keys);
        let late = size_at(100 * BLOCK_EDITS, &reader, &mut keys);
        assert!(
            late < early * 3 / 2,
            "{early} bytes after {} edits, {late} after {}",
            10 * BLOCK_EDITS,
            100 * BLOCK_EDITS
        );
        let present = present_keys(&keys);
        let most = 2 * (STEADY_BLOCKS as usize) * BLOCK_EDITS as usize;
        assert!(present.len() <= most, "{}", present.len());
        assert!(present.iter().all(|k| reader.has_key(k)));
        let gone = keys.iter().filter(|k| !reader.has_key(k)).count();
        assert_eq!(
            gone,
            keys.len() - present.len(),
            "older blocks were replaced"
        );
        assert!(!reader.has_pending());
        assert_eq!(merged_state(&[&a, &b]).digest(), reader.digest());
    }

    /// A peer that defers its applies records the same receipts and, once it applies what
    /// it kept, holds what a peer applying each page holds.
    #[test]
    fn deferred_applies_end_where_page_applies_do() {
        let mut writer = Peer::new(1, "c", Backend::Offline, Metrics::new(), 7);
        let changes: Vec<Change> = (1..=200u64)
            .map(|seq| {
                let doc = if seq % 2 == 0 { "a" } else { "b" };
                Change {
                    document_id: doc.to_string(),
                    seq,
                    bytes: writer.edit(doc).0,
                    operation: OperationType::Update,
                }
            })
            .collect();
        let mut eager = Peer::new(2, "c", Backend::Offline, Metrics::new(), 7);
        let mut lazy = Peer::new(3, "c", Backend::Offline, Metrics::new(), 7);
        lazy.defer_applies = true;
        for page in changes.chunks(7) {
            eager.apply_page(page, "t").unwrap();
            lazy.apply_page(page, "t").unwrap();
        }
        assert!(lazy.replica("a").is_none(), "nothing applied yet");
        assert_eq!(lazy.seen.deltas, eager.seen.deltas);
        lazy.apply_deferred().unwrap();
        for doc in ["a", "b"] {
            let want = writer.replica(doc).unwrap().digest();
            assert_eq!(eager.replica(doc).unwrap().digest(), want);
            assert_eq!(lazy.replica(doc).unwrap().digest(), want);
        }
    }

    #[test]
    fn applying_names_the_edit_keys_an_update_adds() {
        let mut a = Peer::new(1, "c", Backend::Offline, Metrics::new(), 7);
        let reader = Replica::empty();
        let (first, k1) = a.edit("doc");
        let (second, k2) = a.edit("doc");
        // Out of order: the second waits for the first, and names its key once it applies.
        assert_eq!(reader.apply_keys(&second).unwrap(), Vec::<String>::new());
        let mut both = reader.apply_keys(&first).unwrap();
        both.sort();
        assert_eq!(both, {
            let mut k = vec![k1, k2];
            k.sort();
            k
        });
        // Again: nothing new.
        assert!(reader.apply_keys(&first).unwrap().is_empty());
        let (probe, key) = a.refused_edit(3);
        assert_eq!(reader.apply_keys(&probe).unwrap(), vec![key]);
        assert!(reader.apply_keys(&[1, 2, 3]).is_err());
    }
}
