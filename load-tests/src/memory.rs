//! What the `soak` scenario watches: a server process's resident memory (`VmRSS` in
//! `/proc/PID/status`) and its data directory's size, sampled every few seconds, and the
//! verdict on the series.
//!
//! # Why these checks
//! A leak or a record kept forever shows as RSS that keeps climbing under a steady load; a
//! cache filling up shows as a climb that levels off. So the judgement looks only at the second
//! half of the run (the first is warm-up: caches, pools and the documents' working set fill)
//! and asks that every sample there stay within ±[`RSS_BAND`] of that half's median.
//!
//! The warm-up ends when the server's bounded caches are full, which may be after the
//! midpoint: under `mixed` the documents grow for good, and the document cache (64 MiB of
//! them by default) fills at ~7 minutes of a 10-minute run. Each sample also reads how full
//! that cache is (`/metrics`), and the judged window starts at the later of the midpoint and
//! the first sample with the cache ≥ [`CACHE_FULL`] of its bound — but only if that leaves at
//! least [`MIN_WINDOW`] of the run to judge; otherwise it starts at the midpoint, strictly, as
//! if nothing were known (see [`steady_from`]). The data
//! directory is judged the same way but more loosely: sled appends and reclaims whole segments,
//! so its size saws; what must not happen is a second half far above the first.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::verify::Check;

/// RSS over the second half may stray this far (as a fraction) from that half's median.
pub const RSS_BAND: f64 = 0.10;

/// The data directory's largest size in the second half may be at most this many times its
/// largest in the first (sled's segments saw up and down; unbounded growth does not level off).
pub const DISK_GROWTH: f64 = 2.0;

/// A cache this full (bytes ÷ bound) counts as full: the warm-up is over.
pub const CACHE_FULL: f64 = 0.9;

/// The least part of the run the RSS check judges when the warm-up ends after the midpoint.
pub const MIN_WINDOW: f64 = 0.25;

/// Where a sampled server answers `/metrics` (and the token it needs, if any).
#[derive(Debug, Clone)]
pub struct MetricsProbe {
    pub base_url: String,
    pub token: Option<String>,
}

impl MetricsProbe {
    /// How full the document cache is (bytes ÷ capacity), if the server answers.
    async fn doc_cache_fill(&self, client: &awc::Client) -> Option<f64> {
        let mut request = client.get(format!("{}/metrics", self.base_url));
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        let mut answer = request.send().await.ok()?;
        if !answer.status().is_success() {
            return None;
        }
        let body = answer.body().limit(4 << 20).await.ok()?;
        doc_cache_fill(std::str::from_utf8(&body).ok()?)
    }
}

/// The document cache's fill (bytes ÷ capacity) from a Prometheus text exposition.
fn doc_cache_fill(metrics: &str) -> Option<f64> {
    let gauge = |name: &str| {
        metrics.lines().find_map(|line| {
            let (key, value) = line.split_once(' ')?;
            (key == name).then(|| value.trim().parse::<f64>().ok())?
        })
    };
    let bytes = gauge("replicate_doc_cache_bytes")?;
    let capacity = gauge("replicate_doc_cache_capacity_bytes")?;
    (capacity > 0.0).then(|| bytes / capacity)
}

/// Whose memory is sampled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Process {
    /// This process (`/proc/self`).
    Myself,
    /// Another process on this machine.
    Pid(u32),
}

impl Process {
    fn status_path(self) -> PathBuf {
        match self {
            Process::Myself => PathBuf::from("/proc/self/status"),
            Process::Pid(pid) => PathBuf::from(format!("/proc/{pid}/status")),
        }
    }

    /// The process's resident set in KiB, if it can be read (Linux only; `None` once the
    /// process is gone).
    pub fn rss_kib(self) -> Option<u64> {
        let status = std::fs::read_to_string(self.status_path()).ok()?;
        vm_rss_kib(&status)
    }
}

/// `VmRSS` of a `/proc/PID/status` text, in KiB.
fn vm_rss_kib(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Bytes of the regular files under `dir` (what sled's segments and snapshots take), 0 if it
/// cannot be read. Symlinks are not followed.
pub fn dir_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|e| match e.file_type() {
            Ok(t) if t.is_dir() => dir_bytes(&e.path()),
            Ok(t) if t.is_file() => e.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// One sample.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Sample {
    /// Seconds since sampling started.
    pub secs: f64,
    pub rss_kib: u64,
    /// The data directory's size, when the run knows where it is.
    pub data_bytes: Option<u64>,
    /// How full the server's document cache was (bytes ÷ bound), when it answered.
    pub doc_cache_fill: Option<f64>,
}

/// Samples a process every `every` until stopped, on the current actix arbiter.
pub struct Sampler {
    samples: Rc<RefCell<Vec<Sample>>>,
    handle: actix_rt::task::JoinHandle<()>,
    started: Instant,
}

impl Sampler {
    /// Starts sampling `process` (and `data_dir`'s size, if given) at once and then every
    /// `every`. A sample the process cannot give (it exited) is skipped.
    /// With `probe`, each sample also reads how full the server's document cache is.
    pub fn start(
        process: Process,
        data_dir: Option<PathBuf>,
        every: Duration,
        probe: Option<MetricsProbe>,
    ) -> Sampler {
        let samples: Rc<RefCell<Vec<Sample>>> = Rc::default();
        let into = samples.clone();
        let started = Instant::now();
        let client = awc::Client::builder()
            .timeout(Duration::from_secs(5))
            .finish();
        let handle = actix_rt::spawn(async move {
            loop {
                let fill = match &probe {
                    Some(probe) => probe.doc_cache_fill(&client).await,
                    None => None,
                };
                if let Some(rss_kib) = process.rss_kib() {
                    into.borrow_mut().push(Sample {
                        secs: started.elapsed().as_secs_f64(),
                        rss_kib,
                        data_bytes: data_dir.as_deref().map(dir_bytes),
                        doc_cache_fill: fill,
                    });
                }
                tokio::time::sleep(every).await;
            }
        });
        Sampler {
            samples,
            handle,
            started,
        }
    }

    /// Takes one last sample and answers the series.
    pub fn stop(self, process: Process, data_dir: Option<&Path>) -> Vec<Sample> {
        self.handle.abort();
        let mut samples = self.samples.take();
        if let Some(rss_kib) = process.rss_kib() {
            samples.push(Sample {
                secs: self.started.elapsed().as_secs_f64(),
                rss_kib,
                data_bytes: data_dir.map(dir_bytes),
                doc_cache_fill: None,
            });
        }
        samples
    }
}

/// The samples taken at or after `from` seconds.
fn after(samples: &[Sample], from: f64) -> Vec<Sample> {
    samples.iter().filter(|s| s.secs >= from).copied().collect()
}

/// The samples taken while the load ran (up to `secs`): after it the verdict's own reads
/// (whole-collection states, every peer's catch-up) are not the steady state being judged.
pub fn during(samples: &[Sample], secs: f64) -> Vec<Sample> {
    samples.iter().filter(|s| s.secs <= secs).copied().collect()
}

fn median(values: &mut [u64]) -> u64 {
    values.sort_unstable();
    values.get(values.len() / 2).copied().unwrap_or(0)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Where the steady state starts in a run of `secs` seconds: the later of the midpoint and the
/// first sample whose document cache is full, if at least [`MIN_WINDOW`] of the run is left
/// after it; else the midpoint. Answers the start and why.
pub fn steady_from(samples: &[Sample], secs: f64) -> (f64, String) {
    let half = secs / 2.0;
    let full = samples
        .iter()
        .find(|s| s.doc_cache_fill.is_some_and(|f| f >= CACHE_FULL))
        .map(|s| s.secs);
    match full {
        None if samples.iter().all(|s| s.doc_cache_fill.is_none()) => {
            (half, "the midpoint (cache fill not read)".into())
        }
        None => (
            half,
            "the midpoint (the document cache never filled)".into(),
        ),
        Some(t) if t <= half => (
            half,
            format!("the midpoint (document cache full at {t:.0} s)"),
        ),
        Some(t) if secs - t >= MIN_WINDOW * secs => (
            t,
            format!("{t:.0} s, when the document cache was full (after the midpoint)"),
        ),
        Some(t) => (
            half,
            format!(
                "the midpoint: the document cache was full only at {t:.0} s, leaving under {:.0} % \
                 of the run",
                MIN_WINDOW * 100.0
            ),
        ),
    }
}

/// RSS from `from` seconds (the steady state: see [`steady_from`]) within ±[`RSS_BAND`] of
/// its median. Needs at least 3 samples there.
pub fn rss_flat(samples: &[Sample], from: f64) -> Check {
    let half = from;
    let second = after(samples, half);
    let name = "RSS flat once warm (the second half, or after the caches filled)";
    if second.len() < 3 {
        return Check {
            name: name.into(),
            ok: false,
            detail: format!("{} samples from {half:.0} s; need 3", second.len()),
        };
    }
    let mut rss: Vec<u64> = second.iter().map(|s| s.rss_kib).collect();
    let med = median(&mut rss);
    let (lo, hi) = (rss[0], rss[rss.len() - 1]);
    let band = |v: u64| (v as f64 - med as f64) / med.max(1) as f64;
    let worst = band(lo).abs().max(band(hi).abs());
    Check {
        name: name.into(),
        ok: worst <= RSS_BAND,
        detail: format!(
            "{} samples from {half:.0} s: {:.1}–{:.1} MiB around a median of {:.1} MiB \
             ({:+.1} % / {:+.1} %; allowed ±{:.0} %)",
            second.len(),
            mib(lo),
            mib(hi),
            mib(med),
            band(lo) * 100.0,
            band(hi) * 100.0,
            RSS_BAND * 100.0
        ),
    }
}

/// The data directory's largest size from `half` seconds at most [`DISK_GROWTH`] times its
/// largest before (after the first sample: the directory starts empty).
pub fn disk_bounded(samples: &[Sample], half: f64) -> Option<Check> {
    let sizes: Vec<(f64, u64)> = samples
        .iter()
        .filter_map(|s| s.data_bytes.map(|b| (s.secs, b)))
        .collect();
    if sizes.len() < 4 {
        return None;
    }
    let first = sizes
        .iter()
        .filter(|(t, _)| *t < half)
        .map(|(_, b)| *b)
        .max()?;
    let second = sizes
        .iter()
        .filter(|(t, _)| *t >= half)
        .map(|(_, b)| *b)
        .max()?;
    let growth = second as f64 / first.max(1) as f64;
    Some(Check {
        name: "data directory bounded".into(),
        ok: growth <= DISK_GROWTH,
        detail: format!(
            "largest {:.1} MiB in the first half, {:.1} MiB in the second ({growth:.2}×; \
             allowed {DISK_GROWTH}×)",
            first as f64 / 1048576.0,
            second as f64 / 1048576.0
        ),
    })
}

/// The series as printed lines: seconds, RSS MiB, data directory MiB, document cache fill,
/// eight to a line.
pub fn format_series(samples: &[Sample]) -> String {
    let mut out = String::from("series (s: RSS MiB / data MiB / document cache full %):\n");
    for chunk in samples.chunks(8) {
        let line: Vec<String> = chunk
            .iter()
            .map(|s| {
                let data = s
                    .data_bytes
                    .map_or("-".to_string(), |b| format!("{:.0}", b as f64 / 1048576.0));
                let fill = s
                    .doc_cache_fill
                    .map_or("-".to_string(), |f| format!("{:.0}", f * 100.0));
                format!("{:>4.0}: {:>5.1}/{data}/{fill:<3}", s.secs, mib(s.rss_kib))
            })
            .collect();
        out.push_str(&format!("  {}\n", line.join(" ")));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn series(rss_mib: &[u64]) -> Vec<Sample> {
        rss_mib
            .iter()
            .enumerate()
            .map(|(i, m)| Sample {
                secs: i as f64 * 10.0,
                rss_kib: m * 1024,
                data_bytes: Some(m * 1_000_000),
                doc_cache_fill: None,
            })
            .collect()
    }

    #[test]
    fn the_steady_state_starts_when_the_cache_is_full_if_enough_run_is_left() {
        let mut run = series(&[10, 20, 30, 40, 50, 60, 70, 80, 80, 81, 80, 79]);
        // Not read: the midpoint.
        assert_eq!(steady_from(&run, 120.0).0, 60.0);
        // Full at 80 s of 120 (a third left): from there, and flat.
        for (i, s) in run.iter_mut().enumerate() {
            s.doc_cache_fill = Some(if i >= 8 { 0.95 } else { i as f64 / 10.0 });
        }
        let (from, _) = steady_from(&run, 120.0);
        assert_eq!(from, 80.0);
        assert!(rss_flat(&run, from).ok, "{}", rss_flat(&run, from).detail);
        // Judged from the midpoint, the same run still climbs.
        assert!(!rss_flat(&run, 60.0).ok);
        // A climb after the cache is full still fails.
        let mut leak = series(&[10, 20, 30, 40, 50, 60, 70, 80, 90, 100, 110, 120]);
        for (i, s) in leak.iter_mut().enumerate() {
            s.doc_cache_fill = Some(if i >= 8 { 0.95 } else { 0.5 });
        }
        assert!(!rss_flat(&leak, steady_from(&leak, 120.0).0).ok);
        // Full too late (under a quarter of the run left): the midpoint, strictly.
        for (i, s) in run.iter_mut().enumerate() {
            s.doc_cache_fill = Some(if i >= 11 { 0.95 } else { 0.5 });
        }
        assert_eq!(steady_from(&run, 120.0).0, 60.0);
        // Full before the midpoint: the midpoint.
        for s in run.iter_mut() {
            s.doc_cache_fill = Some(1.0);
        }
        assert_eq!(steady_from(&run, 120.0).0, 60.0);
    }

    #[test]
    fn the_cache_fill_is_read_from_the_metrics_text() {
        let text = "# TYPE replicate_doc_cache_bytes gauge\nreplicate_doc_cache_bytes 50\n\
                    replicate_doc_cache_bytes_total 9\nreplicate_doc_cache_capacity_bytes 200\n";
        assert_eq!(doc_cache_fill(text), Some(0.25));
        assert_eq!(doc_cache_fill("replicate_doc_cache_bytes 5\n"), None);
        assert_eq!(
            doc_cache_fill("replicate_doc_cache_bytes 5\nreplicate_doc_cache_capacity_bytes 0\n"),
            None
        );
    }

    #[test]
    fn vm_rss_is_read_from_a_status_text() {
        let status = "Name:\tx\nVmPeak:\t  9999 kB\nVmRSS:\t   12345 kB\nThreads:\t4\n";
        assert_eq!(vm_rss_kib(status), Some(12345));
        assert_eq!(vm_rss_kib("Name:\tx\n"), None);
        assert!(Process::Myself.rss_kib().is_some_and(|k| k > 0));
    }

    #[test]
    fn flat_after_warm_up_passes_and_a_steady_climb_fails() {
        // Warm-up from 10 to 40, then flat around 40.
        let flat = series(&[10, 20, 30, 38, 40, 41, 39, 40, 42, 40]);
        assert!(rss_flat(&flat, 50.0).ok, "{}", rss_flat(&flat, 50.0).detail);
        // The series: ~1 MiB every 15 s, never levelling off.
        let climb = series(&[11, 16, 19, 22, 25, 30, 33, 38, 43, 47, 50, 56, 60, 62]);
        assert!(!rss_flat(&climb, 70.0).ok);
        // Too few samples to judge.
        assert!(!rss_flat(&series(&[10, 10, 10]), 20.0).ok);
    }

    #[test]
    fn disk_judges_the_second_half_against_the_first() {
        let sawing = series(&[1, 20, 35, 25, 40, 30, 45, 28]);
        assert!(disk_bounded(&sawing, 40.0).is_some_and(|c| c.ok));
        let growing = series(&[1, 10, 20, 30, 40, 50, 60, 80]);
        assert!(disk_bounded(&growing, 40.0).is_some_and(|c| !c.ok));
        assert!(disk_bounded(&series(&[1, 2]), 10.0).is_none());
    }

    #[test]
    fn dir_bytes_counts_nested_files() -> std::io::Result<()> {
        let dir = tempfile::tempdir()?;
        std::fs::write(dir.path().join("a"), [0u8; 100])?;
        std::fs::create_dir(dir.path().join("sub"))?;
        std::fs::write(dir.path().join("sub").join("b"), [0u8; 50])?;
        assert_eq!(dir_bytes(dir.path()), 150);
        assert_eq!(dir_bytes(&dir.path().join("missing")), 0);
        Ok(())
    }
}
