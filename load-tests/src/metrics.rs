//! Latency samples, counts, errors and bytes, per operation name. Everything runs on one
//! thread (the client's actix system), so the recorder is shared through `Rc<RefCell<_>>`.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::time::{Duration, Instant};

/// Most samples kept per operation; past it, reservoir sampling keeps a uniform subset so
/// percentiles stay honest while memory stays bounded.
const MAX_SAMPLES: usize = 1_000_000;
/// Distinct error messages kept per operation, for the report.
const MAX_ERROR_MESSAGES: usize = 3;

/// Latency samples in microseconds.
#[derive(Debug, Clone)]
pub struct Samples {
    values: Vec<u64>,
    seen: u64,
    max: u64,
    rng: u64,
}

impl Default for Samples {
    fn default() -> Self {
        Samples {
            values: Vec::new(),
            seen: 0,
            max: 0,
            rng: 0x9E37_79B9_7F4A_7C15,
        }
    }
}

impl Samples {
    pub fn push(&mut self, micros: u64) {
        self.seen += 1;
        self.max = self.max.max(micros);
        if self.values.len() < MAX_SAMPLES {
            self.values.push(micros);
            return;
        }
        // xorshift64: deterministic, good enough to pick reservoir slots.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let slot = self.rng % self.seen;
        if (slot as usize) < MAX_SAMPLES {
            self.values[slot as usize] = micros;
        }
    }

    pub fn len(&self) -> u64 {
        self.seen
    }

    pub fn is_empty(&self) -> bool {
        self.seen == 0
    }

    /// Percentiles `ps` (0..=100) in microseconds, plus the exact maximum.
    pub fn percentiles(&self, ps: &[f64]) -> (Vec<u64>, u64) {
        let mut sorted = self.values.clone();
        sorted.sort_unstable();
        let at = |p: f64| {
            if sorted.is_empty() {
                return 0;
            }
            let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
            sorted[rank.clamp(1, sorted.len()) - 1]
        };
        (ps.iter().map(|p| at(*p)).collect(), self.max)
    }
}

/// Counters of one operation.
#[derive(Debug, Clone, Default)]
pub struct OpStats {
    pub latency: Samples,
    /// Completed operations (a failed one counts in `errors` only).
    pub count: u64,
    pub errors: u64,
    pub error_messages: Vec<String>,
    /// Yjs update bytes the operation carried (pushed or delivered).
    pub raw_bytes: u64,
    /// Items the operation moved (changes in a page, deltas merged), when it is not one.
    pub items: u64,
    /// Latency samples that are not operations (push→delivery): no rate.
    pub samples_only: bool,
    /// When the first recorded operation started and the last one ended: rates are over this.
    pub first_start: Option<Instant>,
    pub last_end: Option<Instant>,
}

impl OpStats {
    /// Seconds between the first start and the last end (at least 1 ms).
    pub fn active_secs(&self) -> f64 {
        match (self.first_start, self.last_end) {
            (Some(a), Some(b)) => b.saturating_duration_since(a).as_secs_f64().max(0.001),
            _ => 0.001,
        }
    }
}

#[derive(Debug)]
struct Recorder {
    ops: BTreeMap<String, OpStats>,
    started: Instant,
}

/// A shared recorder; clones record into the same place.
#[derive(Debug, Clone)]
pub struct Metrics(Rc<RefCell<Recorder>>);

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        Metrics(Rc::new(RefCell::new(Recorder {
            ops: BTreeMap::new(),
            started: Instant::now(),
        })))
    }

    /// Restarts the clock the rates are computed over.
    pub fn restart(&self) {
        self.0.borrow_mut().started = Instant::now();
    }

    pub fn elapsed(&self) -> Duration {
        self.0.borrow().started.elapsed()
    }

    fn with<R>(&self, op: &str, f: impl FnOnce(&mut OpStats) -> R) -> R {
        let mut r = self.0.borrow_mut();
        if !r.ops.contains_key(op) {
            r.ops.insert(op.to_string(), OpStats::default());
        }
        f(r.ops.get_mut(op).expect("inserted above"))
    }

    /// One completed operation that took `took`.
    pub fn record(&self, op: &str, took: Duration) {
        let now = Instant::now();
        self.with(op, |s| {
            s.count += 1;
            s.latency.push(took.as_micros() as u64);
            let start = now.checked_sub(took).unwrap_or(now);
            s.first_start = Some(s.first_start.map_or(start, |f| f.min(start)));
            s.last_end = Some(now);
        });
    }

    /// A latency sample that is not itself an operation (e.g. push→delivery).
    pub fn sample(&self, op: &str, micros: u64) {
        let now = Instant::now();
        self.with(op, |s| {
            s.count += 1;
            s.samples_only = true;
            s.latency.push(micros);
            s.first_start = Some(s.first_start.unwrap_or(now));
            s.last_end = Some(now);
        });
    }

    pub fn error(&self, op: &str, e: &anyhow::Error) {
        self.with(op, |s| {
            s.errors += 1;
            let msg = format!("{e:#}");
            if s.error_messages.len() < MAX_ERROR_MESSAGES && !s.error_messages.contains(&msg) {
                s.error_messages.push(msg);
            }
        });
    }

    pub fn raw(&self, op: &str, bytes: usize) {
        self.with(op, |s| s.raw_bytes += bytes as u64);
    }

    pub fn items(&self, op: &str, n: u64) {
        let now = Instant::now();
        self.with(op, |s| {
            s.items += n;
            s.first_start = Some(s.first_start.unwrap_or(now));
            s.last_end = Some(now);
        });
    }

    pub fn count(&self, op: &str) -> u64 {
        self.0.borrow().ops.get(op).map_or(0, |s| s.count)
    }

    pub fn errors(&self) -> u64 {
        self.0.borrow().ops.values().map(|s| s.errors).sum()
    }

    pub fn raw_bytes(&self) -> u64 {
        self.0.borrow().ops.values().map(|s| s.raw_bytes).sum()
    }

    /// The fastest completed `op`, in milliseconds (0 if none).
    pub fn best_ms(&self, op: &str) -> f64 {
        self.0
            .borrow()
            .ops
            .get(op)
            .map_or(0.0, |s| s.latency.percentiles(&[0.0]).0[0] as f64 / 1000.0)
    }

    /// A copy of every operation's counters, by name.
    pub fn snapshot(&self) -> BTreeMap<String, OpStats> {
        self.0.borrow().ops.clone()
    }
}

/// Times `fut`, recording it under `op` (or its error).
pub async fn timed<T>(
    metrics: &Metrics,
    op: &str,
    fut: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let start = Instant::now();
    let out = fut.await;
    match &out {
        Ok(_) => metrics.record(op, start.elapsed()),
        Err(e) => metrics.error(op, e),
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_of_one_to_hundred() {
        let mut s = Samples::default();
        for v in 1..=100 {
            s.push(v);
        }
        let (p, max) = s.percentiles(&[50.0, 95.0, 99.0, 100.0]);
        assert_eq!(p, vec![50, 95, 99, 100]);
        assert_eq!(max, 100);
        assert_eq!(Samples::default().percentiles(&[50.0]).0, vec![0]);
    }
}
