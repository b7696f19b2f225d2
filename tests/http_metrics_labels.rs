//! `/metrics` label values come from a fixed set, never from the client: 300 requests with
//! distinct made-up methods (some 8 KB long) on distinct paths leave `/metrics` the same size
//! (every made-up method is `other`, every unknown path `unmatched`).
//!
//! Its own test binary: the metrics recorder is process-wide, and other tests' requests would
//! add series while this one measures.

mod common;

use std::collections::BTreeSet;

use common::TestServer;

/// The distinct values of label `label` in the Prometheus text.
fn label_values(text: &str, label: &str) -> BTreeSet<String> {
    let key = format!("{label}=\"");
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .flat_map(|l| {
            l.match_indices(&key)
                .filter_map(|(at, _)| {
                    let rest = &l[at + key.len()..];
                    rest.find('"').map(|end| rest[..end].to_string())
                })
                .collect::<Vec<_>>()
        })
        .collect()
}

/// `/metrics` without the sample values (they change as requests are counted).
fn series(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.is_empty())
        .map(|l| l.rsplit_once(' ').map_or(l, |(name, _)| name).to_string())
        .collect()
}

#[test]
fn made_up_methods_and_paths_add_no_series() {
    let ts = TestServer::start();
    let c = ts.client;
    let made_up = |i: usize| {
        if i.is_multiple_of(10) {
            format!("X{i}{}", "Y".repeat(8 * 1024))
        } else {
            format!("MADEUP{i}")
        }
    };
    // Warm up: one made-up method on a route and off any route, one unknown path, so the
    // `other` and `unmatched` series exist before measuring.
    for path in ["/healthz", "/v1/c/insert", "/nope"] {
        let r = c.request(&made_up(1), path, &[], b"");
        assert!(r.status >= 400, "{}", r.status);
    }
    assert_eq!(c.get("/nope-0").status, 404);
    // A first scrape, so the scrape's own series exist too.
    assert_eq!(c.get("/metrics").status, 200);
    let before = c.get("/metrics").text();

    for i in 0..300 {
        let path = match i % 3 {
            0 => "/healthz".to_string(),
            1 => "/v1/c/insert".to_string(),
            _ => format!("/nope-{i}"),
        };
        let r = c.request(&made_up(i + 2), &path, &[], b"");
        assert!(r.status >= 400, "{} {path}: {}", r.status, r.text());
        assert_eq!(c.get(&format!("/nope-{i}")).status, 404);
    }
    let after = c.get("/metrics").text();

    let methods = label_values(&after, "method");
    let allowed: BTreeSet<String> = [
        "GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "other",
    ]
    .iter()
    .map(|m| m.to_string())
    .collect();
    let shown: Vec<&str> = methods
        .iter()
        .take(8)
        .map(|m| &m[..m.len().min(40)])
        .collect();
    assert!(
        methods.is_subset(&allowed),
        "{} method labels, e.g. {shown:?}",
        methods.len()
    );
    assert!(
        methods.contains("other"),
        "made-up methods count as other: {methods:?}"
    );
    let routes = label_values(&after, "route");
    assert!(
        routes
            .iter()
            .all(|r| r == "unmatched" || r.starts_with('/') && !r.contains("nope")),
        "route labels: {routes:?}"
    );
    assert!(
        !after.contains("MADEUP") && !after.contains("YYYY"),
        "a client's method reached /metrics"
    );

    let new: Vec<_> = series(&after)
        .difference(&series(&before))
        .cloned()
        .collect();
    assert!(
        new.is_empty(),
        "300 made-up requests added series: {new:#?}"
    );
    // Same series, only counts changed: the text grew by a few digits, not by a line per request.
    assert!(
        after.len() < before.len() + 2_000,
        "/metrics grew from {} to {} bytes",
        before.len(),
        after.len()
    );
}
