//! replicate: the HTTP front of the replicate sync backend, an actix-web service over the
//! actors of [`replicate_actors`].
//!
//! # Layout
//! - [`auth`]: who may do what: the [`auth::Authenticate`] trait, the JWT verifier, grants,
//!   and the per-route extractors every route declares its access with.
//! - [`server`]: [`run`] (serve on a listener until a shutdown future resolves),
//!   [`spawn_in_thread`] / [`RunningServer`] (a whole server on its own thread).
//! - [`routes`]: [`configure`] mounts one module per route; each parses its input once
//!   (`parse`) and makes one call on [`replicate_actors::Replicate`]. [`AppState`] is what
//!   handlers share.
//! - [`wire`]: the JSON of the wire contract (camelCase, standard padded base64) and the
//!   parsers for base64, JSON numbers and query numbers.
//! - [`wire_binary`]: the binary form of `stream` and `events` (length-prefixed records of raw
//!   bytes, chosen by `Accept`): its byte layout, encoder, decoder and negotiation.
//! - [`error`]: [`ApiError`], the one `ResponseError`: status mapping and the
//!   `{"error":{"code","message"}}` body, also for actix's own extractor errors.
//! - [`sse`]: the Server-Sent Events body and its resume-safe event ids.
//! - [`ws`]: the y-websocket endpoint: rooms per document, the y-protocols messages, and
//!   connections with bounded queues.
//! - [`health`]: storage health: `/healthz` and the `replicate_storage_failed` gauge turn
//!   loud once a commit failed.
//! - [`limits`]: transport limits: the request-body deadline middleware and the write timeout
//!   set on each connection.
//! - [`metrics`]: the Prometheus recorder, metric names, and the per-request middleware
//!   (tracing span, latency histogram).
//! - [`openapi`]: the OpenAPI 3.1 document of every route, derived from the wire types and
//!   the handlers' annotations; served at `/openapi.json` and committed as `docs/openapi.json`.
//! - [`settings`]: [`ServerSettings`], the front's plain configuration.
//!
//! The binary `replicate-server` (`src/main.rs`) is the only place that reads flags and
//! environment.
//!
//! # Invariants
//! - Every route declares the access it needs through one extractor ([`auth::extract`]);
//!   a route that answers without checking it answers 500 instead.
//! - No handler unwraps anything a client sent: every bad input is an [`ApiError`] 4xx, and
//!   nothing is stored for it (validation happens before the one actor call).
//! - An SSE event id is always a cursor a client may resume from without a gap.

pub mod auth;
pub mod error;
pub mod health;
pub mod limits;
pub mod malloc;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod settings;
pub mod sse;
pub mod wire;
pub mod wire_binary;
pub mod ws;

pub use error::ApiError;
pub use routes::{configure, AppState};
pub use server::{run, run_with_auth, spawn_in_thread, spawn_in_thread_with_clock, RunningServer};
pub use settings::ServerSettings;
