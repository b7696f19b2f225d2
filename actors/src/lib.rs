//! replicate-actors: a durable, gap-free log of Yjs updates with peer tracking, safe
//! compaction and recovery, as actix actors you can embed in your own actix application.
//!
//! # Layout
//! - [`runtime`]: [`Replicate`], the handle: starts everything and exposes typed async calls.
//! - `registry`: the live collection actors by name, and the state they share.
//! - [`collection`]: the collection actor, one per collection and process: it numbers its
//!   writes on sled; on a store several nodes share, the commit numbers them.
//! - [`peers`]: the peer tracker (acks, activity, min synced seq), owned by the collection actor.
//! - [`compaction`]: the pure compaction plan (which deltas may go, new counters).
//! - [`compactor`]: a `SyncArbiter` actor for merges and diffs, off the async threads.
//! - [`durability`]: group commit, one flusher thread batching concurrent writes into one flush.
//! - [`store`]: every record behind the `Engine` trait: [`store::sled`] embedded (with
//!   [`keys`], its key encoding), [`store::postgres`] for several nodes.
//! - [`paging`]: bounded stream pages: the index of where compaction deleted deltas, and the
//!   walk that cuts a page with it (pure; the collection actor reads the store for it).
//! - [`crdt`]: the only user of yrs: validation, merge, state vectors, diffs; [`precheck`]: a
//!   bounds check of the v1 layout that runs before yrs sees untrusted bytes.
//! - [`clock`], [`config`], [`names`], [`error`], [`types`]: injected time, settings, the naming
//!   rule, the typed error, the public request/answer types.
//!
//! # Invariants
//! 1. Seqs of a collection are 1, 2, 3, … in commit order, never reused (not after compaction
//!    deleted the newest deltas, not after a restart): the counter is persisted with each write.
//! 2. A write is answered only once flushed; readers only see flushed seqs.
//! 3. A stream page carries the snapshot of every document whose deleted deltas lie between
//!    the reader's cursor and the page's cursor; pages stay within the byte budget plus one
//!    change, so a page's cursor may stop short of the head ([`paging`]).
//! 4. A snapshot merges the previous snapshot, any client snapshot and every merged delta;
//!    deltas are deleted only below the lowest ack of the active peers.
//! 5. Invalid input is rejected before anything is stored.
//!
//! # Embedding
//! ```no_run
//! use replicate_actors::{Config, Replicate, Write};
//!
//! actix::System::new().block_on(async {
//!     let replicate = Replicate::open(Config::new("./data")).expect("store opens");
//!     let update = vec![0, 0]; // an (empty) Yjs v1 update
//!     let write = Write { document_id: "doc-1".into(), bytes: update, op_id: None };
//!     let written = replicate.insert("todos", write).await.expect("stored");
//!     assert_eq!(written.seq, 1);
//! });
//! ```

pub mod clock;
pub mod collection;
pub mod compaction;
pub mod compactor;
pub mod config;
pub mod craft;
pub mod crdt;
pub mod doc_cache;
pub mod doc_counters;
pub mod durability;
pub mod error;
pub mod keys;
pub mod names;
pub mod paging;
pub mod peers;
pub use replicate_precheck as precheck;
pub(crate) mod registry;
pub mod runtime;
pub mod shape;
pub mod store;
pub mod types;
pub mod workers;

pub use clock::{Clock, ManualClock, SystemClock};
pub use config::Config;
pub use error::{Error, Result};
pub use runtime::Replicate;
pub use store::Store;
pub use types::*;
