//! Prometheus metrics (via the `metrics` facade) and the per-request middleware that opens a
//! tracing span and records latency.
//!
//! The recorder is process-global: the first server in a process installs it and later ones
//! (tests start many) share it. If the embedding application installed its own recorder first,
//! `/metrics` says so instead of answering numbers.

use std::sync::OnceLock;
use std::time::Instant;

use actix_web::body::MessageBody;
use actix_web::dev::{ServiceRequest, ServiceResponse};
use actix_web::http::Method;
use actix_web::middleware::Next;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use replicate_actors::ServiceStats;
use tracing::Instrument;

pub const HTTP_REQUESTS: &str = "replicate_http_requests_total";
pub const HTTP_DURATION: &str = "replicate_http_request_duration_seconds";
pub const ERRORS: &str = "replicate_http_errors_total";
pub const APPENDS: &str = "replicate_appends_total";
pub const APPENDED_BYTES: &str = "replicate_appended_bytes_total";
pub const DUPLICATE_WRITES: &str = "replicate_duplicate_writes_total";
pub const STREAM_REQUESTS: &str = "replicate_stream_requests_total";
pub const STREAM_CHANGES: &str = "replicate_stream_changes_total";
pub const WAITERS: &str = "replicate_stream_waiters";
pub const SSE_SUBSCRIBERS: &str = "replicate_sse_subscribers";
pub const ACKS: &str = "replicate_acks_total";
pub const COMPACTIONS: &str = "replicate_compactions_total";
pub const DELTAS_REMOVED: &str = "replicate_compaction_deltas_removed_total";
pub const LIVE_COLLECTIONS: &str = "replicate_live_collections";
pub const FLUSHES: &str = "replicate_flushes_total";
pub const ACTOR_WAITERS: &str = "replicate_actor_waiters";
pub const PENDING_WRITES: &str = "replicate_pending_writes";
pub const STORAGE_FAILED: &str = "replicate_storage_failed";
pub const DOC_CACHE_BYTES: &str = "replicate_doc_cache_bytes";
pub const DOC_CACHE_DOCUMENTS: &str = "replicate_doc_cache_documents";
pub const DOC_CACHE_CAPACITY: &str = "replicate_doc_cache_capacity_bytes";
pub const STATE_CACHE_BYTES: &str = "replicate_state_cache_bytes";
pub const STATE_CACHE_CAPACITY: &str = "replicate_state_cache_capacity_bytes";
pub const STORE_CACHE_CAPACITY: &str = "replicate_store_cache_capacity_bytes";
pub const RESIDENT_BYTES: &str = "replicate_process_resident_bytes";

/// Latency buckets in seconds: 0.5 ms to 60 s (long polls wait up to a minute).
const BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the Prometheus recorder once per process; `None` if another recorder was there.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(HTTP_DURATION.to_string()), BUCKETS)
                .ok()?;
            match builder.install_recorder() {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(e) => {
                    tracing::warn!(error = %e, "a metrics recorder is already installed; /metrics will be empty");
                    None
                }
            }
        })
        .clone()
}

fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram, Unit};
    describe_counter!(HTTP_REQUESTS, "HTTP requests answered, by route and status");
    describe_histogram!(
        HTTP_DURATION,
        Unit::Seconds,
        "Time to answer an HTTP request (to the headers for SSE), by route"
    );
    describe_counter!(ERRORS, "Error answers, by error code");
    describe_counter!(APPENDS, "Writes stored, by operation type");
    describe_counter!(APPENDED_BYTES, Unit::Bytes, "Update bytes stored");
    describe_counter!(
        DUPLICATE_WRITES,
        "Writes answered from an earlier opId, storing nothing"
    );
    describe_counter!(STREAM_REQUESTS, "stream pages served (long-poll and SSE)");
    describe_counter!(
        STREAM_CHANGES,
        "Changes sent in stream pages and SSE events"
    );
    describe_gauge!(WAITERS, "Long-poll stream requests currently waiting");
    describe_gauge!(SSE_SUBSCRIBERS, "Open Server-Sent Events streams");
    describe_counter!(ACKS, "Acknowledgements recorded");
    describe_counter!(COMPACTIONS, "Compactions run through the API");
    describe_counter!(
        DELTAS_REMOVED,
        "Deltas deleted by compactions run through the API"
    );
    describe_gauge!(LIVE_COLLECTIONS, "Collection actors running");
    describe_counter!(FLUSHES, "Group-commit flushes of the store");
    describe_gauge!(
        ACTOR_WAITERS,
        "Readers waiting on collection actors for a commit"
    );
    describe_gauge!(
        PENDING_WRITES,
        "Writes assigned a seq and waiting for their flush"
    );
    describe_gauge!(
        DOC_CACHE_BYTES,
        Unit::Bytes,
        "Estimated heap of the documents kept built to check writes against"
    );
    describe_gauge!(
        DOC_CACHE_DOCUMENTS,
        "Documents kept built to check writes against"
    );
    describe_gauge!(
        DOC_CACHE_CAPACITY,
        Unit::Bytes,
        "Bound of the document cache (--doc-cache-bytes)"
    );
    describe_gauge!(
        STATE_CACHE_BYTES,
        Unit::Bytes,
        "Merged whole-collection states kept for state and recovery"
    );
    describe_gauge!(
        STATE_CACHE_CAPACITY,
        Unit::Bytes,
        "Bound of the state cache (--state-cache-bytes)"
    );
    describe_gauge!(
        STORE_CACHE_CAPACITY,
        Unit::Bytes,
        "Bound of sled's page cache (--cache-bytes; 0 on PostgreSQL)"
    );
    describe_gauge!(
        RESIDENT_BYTES,
        Unit::Bytes,
        "Resident memory of the process (VmRSS; Linux only)"
    );
    describe_gauge!(
        STORAGE_FAILED,
        "1 once a commit failed (disk full, I/O error): no writes until restart; /healthz says why"
    );
}

/// Renders the metrics, after refreshing the gauges read from the actors' stats and whether
/// storage has failed.
pub fn render(handle: &PrometheusHandle, stats: &ServiceStats, storage_failed: bool) -> String {
    metrics::gauge!(STORAGE_FAILED).set(if storage_failed { 1.0 } else { 0.0 });
    metrics::gauge!(LIVE_COLLECTIONS).set(stats.live_collections as f64);
    metrics::counter!(FLUSHES).absolute(stats.flushes);
    metrics::gauge!(ACTOR_WAITERS)
        .set(stats.collections.iter().map(|c| c.waiters).sum::<u64>() as f64);
    metrics::gauge!(PENDING_WRITES).set(
        stats
            .collections
            .iter()
            .map(|c| c.pending_writes)
            .sum::<u64>() as f64,
    );
    let caches = &stats.caches;
    metrics::gauge!(DOC_CACHE_BYTES).set(caches.doc_cache_bytes as f64);
    metrics::gauge!(DOC_CACHE_DOCUMENTS).set(caches.doc_cache_documents as f64);
    metrics::gauge!(DOC_CACHE_CAPACITY).set(caches.doc_cache_capacity as f64);
    metrics::gauge!(STATE_CACHE_BYTES).set(caches.state_cache_bytes as f64);
    metrics::gauge!(STATE_CACHE_CAPACITY).set(caches.state_cache_capacity as f64);
    metrics::gauge!(STORE_CACHE_CAPACITY).set(caches.store_cache_capacity as f64);
    if let Some(bytes) = resident_bytes() {
        metrics::gauge!(RESIDENT_BYTES).set(bytes as f64);
    }
    handle.run_upkeep();
    handle.render()
}

/// This process's resident memory (`VmRSS` of `/proc/self/status`), where Linux gives it.
fn resident_bytes() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Increments a gauge while alive; decrements it when dropped, however the request ends.
pub struct GaugeGuard(&'static str);

impl GaugeGuard {
    pub fn new(name: &'static str) -> Self {
        metrics::gauge!(name).increment(1.0);
        GaugeGuard(name)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        metrics::gauge!(self.0).decrement(1.0);
    }
}

/// The route pattern as a label: `/v1/{c}/insert` (the collection segment's regex dropped).
/// Never the raw path: label values must come from a fixed set, or every distinct path a
/// client sends would add a series to `/metrics` for good.
fn route_label(pattern: Option<String>) -> String {
    pattern.map_or_else(
        || "unmatched".to_string(),
        |p| p.replace("{c:[^/]*}", "{c}"),
    )
}

/// The HTTP method as a label: the standard methods by name, anything else `other`. HTTP
/// lets a client send any token as a method (`FOO`, or 30 KB of letters), and a label per
/// made-up method would grow `/metrics` and the recorder's memory without bound.
pub fn method_label(method: &Method) -> &'static str {
    match *method {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Middleware: a tracing span per request, and the request count and latency per route
/// pattern (`/v1/{c}/insert`, not the concrete path), method and status. Every label value
/// comes from a fixed set (see [`route_label`], [`method_label`]), never from the client.
pub async fn observe(
    req: ServiceRequest,
    next: Next<impl MessageBody + 'static>,
) -> Result<ServiceResponse<impl MessageBody + 'static>, actix_web::Error> {
    let started = Instant::now();
    let method = method_label(req.method());
    let span = tracing::info_span!(
        "request",
        method,
        path = %req.path(),
        status = tracing::field::Empty,
        millis = tracing::field::Empty,
    );
    let result = next.call(req).instrument(span.clone()).await;
    let elapsed = started.elapsed();
    let (route, status) = match &result {
        Ok(res) => (
            route_label(res.request().match_pattern()),
            res.status().as_u16(),
        ),
        Err(e) => (
            "unmatched".into(),
            e.as_response_error().status_code().as_u16(),
        ),
    };
    span.record("status", status);
    span.record("millis", elapsed.as_secs_f64() * 1000.0);
    span.in_scope(|| tracing::debug!(route = %route, "answered"));
    metrics::counter!(HTTP_REQUESTS, "route" => route.clone(), "method" => method, "status" => status.to_string()).increment(1);
    metrics::histogram!(HTTP_DURATION, "route" => route).record(elapsed.as_secs_f64());
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_values_come_from_a_fixed_set() {
        let cases: &[(&str, &str)] = &[
            ("GET", "GET"),
            ("POST", "POST"),
            ("PUT", "PUT"),
            ("DELETE", "DELETE"),
            ("PATCH", "PATCH"),
            ("HEAD", "HEAD"),
            ("OPTIONS", "OPTIONS"),
            ("CONNECT", "other"),
            ("TRACE", "other"),
            ("get", "other"),
            ("FOO", "other"),
            ("QUERY", "other"),
        ];
        for (raw, label) in cases {
            let method = Method::from_bytes(raw.as_bytes()).expect("a token is a method");
            assert_eq!(method_label(&method), *label, "{raw}");
        }
        let long = Method::from_bytes("X".repeat(30_000).as_bytes()).expect("long token");
        assert_eq!(method_label(&long), "other");

        assert_eq!(route_label(None), "unmatched");
        assert_eq!(
            route_label(Some("/v1/{c:[^/]*}/insert".into())),
            "/v1/{c}/insert"
        );
    }
}
