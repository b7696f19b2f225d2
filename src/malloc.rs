//! glibc malloc tuning for a long-running server (issue 13).
//!
//! # Why
//! Under the 10-minute `soak`, heaptrack put the live heap well below the resident set: glibc
//! gives each thread that allocates its own arena (up to 8 per core), and the threads here —
//! HTTP workers, collection arbiters, CRDT workers that build whole documents for merges, sled's
//! flusher and io threads — each keep the memory they freed. Capping the arenas (fewer, shared
//! heaps to reuse freed blocks from) and trimming them now and then (returning freed pages to
//! the kernel) keeps the resident set near the live heap. mimalloc was measured too and held
//! more (README *Memory* has the side-by-side series).
//!
//! Elsewhere than Linux with glibc this does nothing.

use std::time::Duration;

/// glibc malloc settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MallocTuning {
    /// Most malloc arenas (0: glibc's default of 8 per core). The environment variable
    /// `MALLOC_ARENA_MAX`, when set, wins.
    pub arenas: usize,
    /// How often freed memory is handed back to the kernel with `malloc_trim` (zero: never).
    pub trim_every: Duration,
}

impl Default for MallocTuning {
    fn default() -> Self {
        MallocTuning {
            arenas: 2,
            trim_every: Duration::from_secs(10),
        }
    }
}

/// Applies `tuning`: call once, early in `main`, before other threads allocate. Starts the
/// trimming thread if asked; a failure to start it is logged and ignored.
pub fn tune(tuning: MallocTuning) {
    imp::set_arenas(tuning.arenas);
    if tuning.trim_every.is_zero() {
        return;
    }
    let every = tuning.trim_every;
    let started = std::thread::Builder::new()
        .name("replicate-trim".into())
        .spawn(move || loop {
            std::thread::sleep(every);
            imp::trim();
        });
    if let Err(e) = started {
        tracing::warn!(error = %e, "cannot start the malloc trim thread");
    }
}

#[cfg(all(target_os = "linux", target_env = "gnu"))]
mod imp {
    pub fn set_arenas(arenas: usize) {
        if arenas == 0 || std::env::var_os("MALLOC_ARENA_MAX").is_some() {
            return;
        }
        let n = i32::try_from(arenas).unwrap_or(i32::MAX);
        // SAFETY: mallopt only changes malloc's parameters; it is safe to call at any time.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, n);
        }
    }

    pub fn trim() {
        // SAFETY: malloc_trim takes malloc's own locks; it only releases free memory.
        unsafe {
            libc::malloc_trim(0);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
mod imp {
    pub fn set_arenas(_: usize) {}
    pub fn trim() {}
}
