//! virtio-rng counters under Firecracker's `entropy` metric names.

use crate::counters::device_counters;

device_counters!(
    /// Live counters of one entropy device.
    RngMetrics,
    /// A point-in-time copy of [`RngMetrics`]; the field names are Firecracker's.
    RngMetricsSnapshot,
    {
        /// Activations that failed.
        activate_fails,
        /// Requests refused because the guest built them wrong (a device-readable buffer,
        /// memory outside the guest's).
        entropy_event_fails,
        /// Requests served.
        entropy_event_count,
        /// Random bytes written into guest buffers.
        entropy_bytes,
        /// `getrandom` failures (the request completes with the bytes filled so far).
        host_rng_fails,
        /// Times the rate limiter stopped the queue.
        entropy_rate_limiter_throttled,
        /// Rate-limiter timer expiries handled.
        rate_limiter_event_count,
    }
);
