//! Time as an injected dependency: peer timeouts are decided against `Clock::now_millis`, so
//! tests advance a [`ManualClock`] instead of sleeping.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Wall-clock milliseconds since the Unix epoch.
pub trait Clock: Send + Sync + 'static {
    fn now_millis(&self) -> u64;
}

/// The real clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_millis(&self) -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(millis)
            .unwrap_or(0)
    }
}

/// `d` in whole milliseconds, saturating at `u64::MAX`. Durations from `Config` or from clients
/// may mean "forever" (`Duration::MAX`, or seconds near `u64::MAX`); `as_millis() as u64` would
/// wrap those to a tiny value (a peer timeout of ~585 million years became 384 ms), so every
/// such conversion goes through here.
pub fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// A clock that moves only when told to; clones share the same time.
#[derive(Debug, Default, Clone)]
pub struct ManualClock(Arc<AtomicU64>);

impl ManualClock {
    pub fn new(start_millis: u64) -> Self {
        ManualClock(Arc::new(AtomicU64::new(start_millis)))
    }

    pub fn advance(&self, millis: u64) {
        self.0.fetch_add(millis, Ordering::SeqCst);
    }

    pub fn set(&self, millis: u64) {
        self.0.store(millis, Ordering::SeqCst);
    }
}

impl Clock for ManualClock {
    fn now_millis(&self) -> u64 {
        self.0.load(Ordering::SeqCst)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis_saturates_instead_of_wrapping() {
        let cases = [
            (Duration::ZERO, 0),
            (Duration::from_millis(1_500), 1_500),
            (Duration::from_secs(u64::MAX / 1000), u64::MAX / 1000 * 1000),
            (Duration::from_secs(u64::MAX / 1000 + 1), u64::MAX),
            (Duration::MAX, u64::MAX),
        ];
        for (d, want) in cases {
            assert_eq!(millis(d), want, "{d:?}");
        }
    }
}
