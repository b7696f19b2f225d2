//! A wake-up signal between the threads that make edits and the pusher: a counter and a
//! condition variable, so no wake-up is lost between "checked the queue" and "went to sleep".

use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Counts wake-ups; [`Signal::wait`] returns once the count moved past what the caller saw.
#[derive(Default)]
pub struct Signal {
    count: Mutex<u64>,
    cv: Condvar,
}

impl Signal {
    /// The current count (take it before checking for work).
    pub fn seen(&self) -> u64 {
        *self.count.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Wakes every waiter.
    pub fn notify(&self) {
        let mut n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        *n += 1;
        self.cv.notify_all();
    }

    /// Sleeps until the count differs from `seen` or `timeout` passes.
    pub fn wait(&self, seen: u64, timeout: Duration) {
        let n = self.count.lock().unwrap_or_else(|p| p.into_inner());
        let _ = self
            .cv
            .wait_timeout_while(n, timeout, |n| *n == seen)
            .map(|(g, _)| drop(g));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_notify_before_the_wait_is_not_lost() {
        let s = Signal::default();
        let seen = s.seen();
        s.notify();
        let t = std::time::Instant::now();
        s.wait(seen, Duration::from_secs(10));
        assert!(t.elapsed() < Duration::from_secs(5));
    }

    #[test]
    fn wait_wakes_on_notify_from_another_thread() {
        let s = Arc::new(Signal::default());
        let seen = s.seen();
        let s2 = s.clone();
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            s2.notify();
        });
        s.wait(seen, Duration::from_secs(10));
        assert_ne!(s.seen(), seen);
        let _ = h.join();
    }
}
