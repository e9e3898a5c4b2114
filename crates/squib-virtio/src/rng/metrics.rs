//! virtio-rng counters under Firecracker's `entropy` metric names, written by the worker with
//! relaxed atomic adds and read from any thread as an [`RngMetricsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

/// Live counters of one entropy device.
#[derive(Debug, Default)]
pub struct RngMetrics {
    activate_fails: AtomicU64,
    entropy_event_fails: AtomicU64,
    entropy_event_count: AtomicU64,
    entropy_bytes: AtomicU64,
    host_rng_fails: AtomicU64,
    entropy_rate_limiter_throttled: AtomicU64,
    rate_limiter_event_count: AtomicU64,
}

/// A point-in-time copy of [`RngMetrics`]; the field names are Firecracker's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RngMetricsSnapshot {
    /// Activations that failed.
    pub activate_fails: u64,
    /// Requests refused because the guest built them wrong (a device-readable buffer, memory
    /// outside the guest's).
    pub entropy_event_fails: u64,
    /// Requests served.
    pub entropy_event_count: u64,
    /// Random bytes written into guest buffers.
    pub entropy_bytes: u64,
    /// `getrandom` failures (the request completes with the bytes filled so far).
    pub host_rng_fails: u64,
    /// Times the rate limiter stopped the queue.
    pub entropy_rate_limiter_throttled: u64,
    /// Rate-limiter timer expiries handled.
    pub rate_limiter_event_count: u64,
}

macro_rules! counters {
    ($($name:ident),* $(,)?) => {
        impl RngMetrics {
            $(
                pub(crate) fn $name(&self, n: u64) {
                    self.$name.fetch_add(n, Ordering::Relaxed);
                }
            )*

            /// Reads every counter.
            pub fn snapshot(&self) -> RngMetricsSnapshot {
                RngMetricsSnapshot { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters!(
    activate_fails,
    entropy_event_fails,
    entropy_event_count,
    entropy_bytes,
    host_rng_fails,
    entropy_rate_limiter_throttled,
    rate_limiter_event_count,
);
