//! What the `soak` scenario watches: a server process's resident memory (`VmRSS` in
//! `/proc/PID/status`) and its data directory's size, sampled every few seconds, and the
//! verdict on the series.
//!
//! # Why these checks
//! A leak or a record kept forever shows as RSS that keeps climbing under a steady load; a
//! cache filling up shows as a climb that levels off. So the judgement looks only at the second
//! half of the run (the first is warm-up: caches, pools and the documents' working set fill)
//! and asks that every sample there stay within ±[`RSS_BAND`] of that half's median. The data
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
    pub fn start(process: Process, data_dir: Option<PathBuf>, every: Duration) -> Sampler {
        let samples: Rc<RefCell<Vec<Sample>>> = Rc::default();
        let into = samples.clone();
        let started = Instant::now();
        let handle = actix_rt::spawn(async move {
            loop {
                if let Some(rss_kib) = process.rss_kib() {
                    into.borrow_mut().push(Sample {
                        secs: started.elapsed().as_secs_f64(),
                        rss_kib,
                        data_bytes: data_dir.as_deref().map(dir_bytes),
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

/// RSS over the second half of the run (from `half` seconds) within ±[`RSS_BAND`] of its
/// median. Needs at least 3 samples there.
pub fn rss_flat(samples: &[Sample], half: f64) -> Check {
    let second = after(samples, half);
    let name = "RSS flat over the second half";
    if second.len() < 3 {
        return Check {
            name: name.into(),
            ok: false,
            detail: format!("{} samples in the second half; need 3", second.len()),
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

/// The series as printed lines: seconds, RSS MiB, data directory MiB, eight to a line.
pub fn format_series(samples: &[Sample]) -> String {
    let mut out = String::from("series (s: RSS MiB / data MiB):\n");
    for chunk in samples.chunks(8) {
        let line: Vec<String> = chunk
            .iter()
            .map(|s| {
                let data = s
                    .data_bytes
                    .map_or("-".to_string(), |b| format!("{:.0}", b as f64 / 1048576.0));
                format!("{:>4.0}: {:>5.1}/{data:<4}", s.secs, mib(s.rss_kib))
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
            })
            .collect()
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
