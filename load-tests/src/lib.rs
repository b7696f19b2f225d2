//! replicate-load: bundled load scenarios for replicate, measuring throughput, latency and
//! correctness against floors measured in the same run.
//!
//! # Layout
//! - [`auth`]: the run's bearer token (given or minted) and the measured cost of verifying it.
//! - [`backend`]: how a peer reaches the service — the HTTP wire contract (awc) or the actors
//!   in-process — behind one vocabulary, with wire-byte counters.
//! - [`peer`]: the reusable client: yrs documents, edits, pushes with opIds, streaming
//!   (long-poll and SSE), snapshots, acks, recovery.
//! - [`scenarios`]: one file per scenario plus the shared writer/reader loops.
//! - [`floors`]: raw sled, raw yrs and raw PostgreSQL baselines.
//! - [`ws`]: the y-websocket subscriber (awc + yrs's `sync` messages), one socket per
//!   document, and which writes (by edit key) it received when.
//! - [`verify`]: the correctness verdict (contiguous seqs, coverage, convergence, nothing lost).
//! - [`metrics`], [`report`]: latency samples and counters; the table, JSON and progress line.
//! - [`memory`]: a server process's RSS and data directory over time, and `soak`'s verdict on
//!   them; [`child`]: the server in a child process of this binary, measured alone.
//! - [`server`]: the in-process server (the real service on a temp dir, port 0) or `--target`.
//! - [`targets`]: `--target URL1,URL2,…`, and which of them each peer talks to.

pub mod auth;
pub mod backend;
pub mod child;
pub mod floors;
pub mod memory;
pub mod metrics;
pub mod peer;
pub mod report;
pub mod scenarios;
pub mod server;
pub mod targets;
pub mod verify;
pub mod ws;
