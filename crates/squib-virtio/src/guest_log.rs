//! The one rate limit on log lines a guest can trigger.
//!
//! A guest controls how often it writes a bad register, submits a broken chain or makes the
//! backend fail, so every log line it can cause goes through [`guest_warn!`](crate::guest_warn):
//! at most [`BURST`] lines per [`PERIOD`] are written, the rest are counted. The next line
//! written carries `suppressed`, the count dropped since the previous one, and
//! [`suppressed_total`] feeds the metrics (`logger.missed_log_count`, Firecracker's field).
//!
//! One limiter per process: squib runs one microVM per process, so the guest is the single source
//! of these lines whichever device it pokes, and one budget bounds them all.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

/// Lines written per [`PERIOD`] at most.
pub const BURST: u32 = 10;
/// The window the burst refills over.
pub const PERIOD: Duration = Duration::from_secs(5);

/// What the limiter decided for one line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Write the line; `suppressed` lines were dropped since the last one written.
    Log {
        /// Lines dropped since the previous written line.
        suppressed: u64,
    },
    /// Drop the line (it is counted).
    Suppress,
}

#[derive(Debug)]
struct Window {
    start: Option<Instant>,
    written: u32,
    suppressed_since_last: u64,
}

/// A fixed-window limiter: [`BURST`] lines per [`PERIOD`] (the window restarts with the first
/// line after it ends).
#[derive(Debug)]
pub struct GuestLogLimiter {
    window: Mutex<Window>,
    suppressed_total: AtomicU64,
    burst: u32,
    period: Duration,
}

impl GuestLogLimiter {
    /// A limiter writing `burst` lines per `period`.
    pub const fn new(burst: u32, period: Duration) -> Self {
        Self {
            window: Mutex::new(Window {
                start: None,
                written: 0,
                suppressed_since_last: 0,
            }),
            suppressed_total: AtomicU64::new(0),
            burst,
            period,
        }
    }

    /// Decides for one line at `now`.
    pub fn check(&self, now: Instant) -> Verdict {
        let mut w = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let expired = w
            .start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.period);
        if expired {
            w.start = Some(now);
            w.written = 0;
        }
        if w.written < self.burst {
            w.written += 1;
            let suppressed = std::mem::take(&mut w.suppressed_since_last);
            Verdict::Log { suppressed }
        } else {
            w.suppressed_since_last = w.suppressed_since_last.saturating_add(1);
            self.suppressed_total.fetch_add(1, Ordering::Relaxed);
            Verdict::Suppress
        }
    }

    /// Lines dropped since the limiter was made.
    pub fn suppressed_total(&self) -> u64 {
        self.suppressed_total.load(Ordering::Relaxed)
    }
}

static LIMITER: GuestLogLimiter = GuestLogLimiter::new(BURST, PERIOD);

/// The process-wide decision for one guest-triggered line; use [`guest_warn!`](crate::guest_warn).
pub fn check() -> Verdict {
    LIMITER.check(Instant::now())
}

/// Guest-triggered lines dropped by this process so far.
pub fn suppressed_total() -> u64 {
    LIMITER.suppressed_total()
}

/// `tracing::warn!` for a line the guest can trigger at will: rate-limited by
/// [`guest_log`](crate::guest_log), with a `suppressed` field counting the lines dropped before it.
#[macro_export]
macro_rules! guest_warn {
    ($($arg:tt)+) => {
        if let $crate::guest_log::Verdict::Log { suppressed } = $crate::guest_log::check() {
            ::tracing::warn!(suppressed, $($arg)+);
        }
    };
}

/// `tracing::error!` for a line the guest can trigger at will; see [`guest_warn!`](crate::guest_warn).
#[macro_export]
macro_rules! guest_error {
    ($($arg:tt)+) => {
        if let $crate::guest_log::Verdict::Log { suppressed } = $crate::guest_log::check() {
            ::tracing::error!(suppressed, $($arg)+);
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bursts_then_counts_then_refills() {
        let l = GuestLogLimiter::new(3, Duration::from_secs(1));
        let t0 = Instant::now();
        for _ in 0..3 {
            assert_eq!(l.check(t0), Verdict::Log { suppressed: 0 });
        }
        for _ in 0..1000 {
            assert_eq!(l.check(t0 + Duration::from_millis(500)), Verdict::Suppress);
        }
        assert_eq!(l.suppressed_total(), 1000);
        let later = t0 + Duration::from_secs(1);
        assert_eq!(l.check(later), Verdict::Log { suppressed: 1000 });
        assert_eq!(l.check(later), Verdict::Log { suppressed: 0 });
        assert_eq!(l.suppressed_total(), 1000);
    }
}
