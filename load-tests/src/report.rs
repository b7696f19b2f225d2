//! A scenario's results: the table printed at the end, the same as JSON for `--out`, and the
//! live progress line printed while it runs.

use std::io::{IsTerminal, Write as _};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::Value;

use crate::metrics::Metrics;
use crate::verify::Verdict;

/// One operation's row.
#[derive(Debug, Clone, Serialize)]
pub struct OpRow {
    pub op: String,
    pub count: u64,
    /// Over the operation's active time (first start to last end), not the whole scenario.
    pub per_sec: f64,
    /// Items moved per second (changes streamed, deltas merged) where an op moves many.
    pub items_per_sec: Option<f64>,
    pub p50_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
    pub errors: u64,
    pub error_messages: Vec<String>,
}

/// A figure measured next to the floor it is compared with, from the same run.
#[derive(Debug, Clone, Serialize)]
pub struct Floor {
    pub name: String,
    /// What replicate achieved.
    pub measured: f64,
    /// The same work with the layer(s) in question taken away.
    pub floor: f64,
    pub unit: String,
    /// `measured / floor` for rates (1.0 = as fast as the floor); `floor / measured` for
    /// latencies, so that in both cases 1.0 is the floor and smaller is slower.
    pub ratio: f64,
    pub note: String,
}

impl Floor {
    /// A rate (higher is better): ratio = measured / floor.
    pub fn rate(name: &str, measured: f64, floor: f64, unit: &str, note: &str) -> Floor {
        Floor {
            name: name.into(),
            measured,
            floor,
            unit: unit.into(),
            ratio: ratio(measured, floor),
            note: note.into(),
        }
    }

    /// A cost (lower is better): ratio = floor / measured.
    pub fn cost(name: &str, measured: f64, floor: f64, unit: &str, note: &str) -> Floor {
        Floor {
            name: name.into(),
            measured,
            floor,
            unit: unit.into(),
            ratio: ratio(floor, measured),
            note: note.into(),
        }
    }
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 {
        a / b
    } else {
        0.0
    }
}

/// Everything one scenario reports.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub scenario: String,
    pub backend: String,
    pub seconds: f64,
    pub params: Value,
    pub ops: Vec<OpRow>,
    /// HTTP body bytes, both directions (headers excluded).
    pub wire_bytes: u64,
    /// Yjs update bytes pushed and delivered.
    pub raw_update_bytes: u64,
    pub floors: Vec<Floor>,
    pub verdict: Verdict,
    pub ok: bool,
    /// Why the scenario did not run (e.g. `postgres` without a database URL).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
    /// Lines printed after the table (e.g. `soak`'s memory series).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// The server's memory and data directory over the run (`soak`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub samples: Vec<crate::memory::Sample>,
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

impl Report {
    /// Builds the report from the metrics (rates over `seconds`).
    pub fn new(
        scenario: &str,
        backend: &str,
        params: Value,
        metrics: &Metrics,
        seconds: f64,
        wire_bytes: u64,
    ) -> Report {
        let ops = metrics
            .snapshot()
            .into_iter()
            .map(|(op, s)| {
                let (p, max) = s.latency.percentiles(&[50.0, 95.0, 99.0]);
                OpRow {
                    op,
                    count: s.count,
                    per_sec: if s.samples_only {
                        0.0
                    } else {
                        s.count as f64 / s.active_secs()
                    },
                    items_per_sec: (s.items > 0).then(|| s.items as f64 / s.active_secs()),
                    p50_ms: ms(p[0]),
                    p95_ms: ms(p[1]),
                    p99_ms: ms(p[2]),
                    max_ms: ms(max),
                    errors: s.errors,
                    error_messages: s.error_messages,
                }
            })
            .collect();
        Report {
            scenario: scenario.into(),
            backend: backend.into(),
            seconds,
            params,
            ops,
            wire_bytes,
            raw_update_bytes: metrics.raw_bytes(),
            floors: Vec::new(),
            verdict: Verdict::default(),
            ok: false,
            skipped: None,
            notes: Vec::new(),
            samples: Vec::new(),
        }
    }

    /// Prints the table, the floors and the verdict.
    pub fn print(&self) {
        let mut out = String::new();
        out.push_str(&format!(
            "\n== {} ({}, {:.1} s) {}\n",
            self.scenario, self.backend, self.seconds, self.params
        ));
        match &self.skipped {
            Some(why) => out.push_str(&format!("SKIPPED: {why}\n")),
            None => self.table(&mut out),
        }
        for note in &self.notes {
            out.push_str(note);
            if !note.ends_with('\n') {
                out.push('\n');
            }
        }
        for f in &self.floors {
            out.push_str(&format!(
                "floor  {:<44} {:>12.1} vs {:>12.1} {:<10} ratio {:.3}  ({})\n",
                f.name, f.measured, f.floor, f.unit, f.ratio, f.note
            ));
        }
        for c in &self.verdict.checks {
            out.push_str(&format!(
                "check  [{}] {}: {}\n",
                if c.ok { "ok" } else { "FAIL" },
                c.name,
                c.detail
            ));
        }
        out.push_str(&format!(
            "verdict: {}\n",
            if self.ok { "CORRECT" } else { "WRONG" }
        ));
        print!("{out}");
        let _ = std::io::stdout().flush();
    }

    /// The operations' rows and the byte counts.
    fn table(&self, out: &mut String) {
        out.push_str(&format!(
            "{:<30} {:>9} {:>10} {:>11} {:>9} {:>9} {:>9} {:>9} {:>6}\n",
            "operation",
            "count",
            "ops/s",
            "items/s",
            "p50 ms",
            "p95 ms",
            "p99 ms",
            "max ms",
            "errors"
        ));
        for r in &self.ops {
            out.push_str(&format!(
                "{:<30} {:>9} {:>10} {:>11} {:>9.2} {:>9.2} {:>9.2} {:>9.2} {:>6}\n",
                r.op,
                r.count,
                if r.per_sec > 0.0 {
                    format!("{:.1}", r.per_sec)
                } else {
                    "-".into()
                },
                r.items_per_sec
                    .map_or("-".to_string(), |v| format!("{v:.0}")),
                r.p50_ms,
                r.p95_ms,
                r.p99_ms,
                r.max_ms,
                r.errors
            ));
            for m in &r.error_messages {
                out.push_str(&format!("    error: {m}\n"));
            }
        }
        let wire_ratio = if self.raw_update_bytes > 0 {
            self.wire_bytes as f64 / self.raw_update_bytes as f64
        } else {
            0.0
        };
        out.push_str(&format!(
            "bytes: {} on the wire (HTTP bodies, websocket payloads) vs {} raw Yjs update bytes = {:.2}x\n",
            self.wire_bytes, self.raw_update_bytes, wire_ratio
        ));
    }
}

/// Prints a progress line about once a second until dropped: in place on a terminal, one line
/// every few seconds otherwise (CI logs).
pub struct Progress {
    handle: Option<actix_rt::task::JoinHandle<()>>,
}

impl Progress {
    pub fn start(label: String, metrics: Metrics, ops: &'static [&'static str]) -> Progress {
        let tty = std::io::stderr().is_terminal();
        let every = if tty {
            Duration::from_millis(500)
        } else {
            Duration::from_secs(3)
        };
        let started = Instant::now();
        let handle = actix_rt::spawn(async move {
            loop {
                tokio::time::sleep(every).await;
                let secs = started.elapsed().as_secs_f64();
                let mut line = format!("[{label}] {secs:5.1}s");
                for op in ops {
                    let n = metrics.count(op);
                    line.push_str(&format!("  {op}={n} ({:.0}/s)", n as f64 / secs));
                }
                line.push_str(&format!("  errors={}", metrics.errors()));
                if tty {
                    eprint!("\r{line:<120}");
                } else {
                    eprintln!("{line}");
                }
            }
        });
        Progress {
            handle: Some(handle),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        if let Some(h) = self.handle.take() {
            h.abort();
            if std::io::stderr().is_terminal() {
                eprintln!();
            }
        }
    }
}
