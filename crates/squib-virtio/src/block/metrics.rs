//! Per-device virtio-blk counters: written by the worker with relaxed atomic adds (no locks on
//! the request path), read from any thread as a [`BlockMetricsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Live counters of one virtio-blk device.
#[derive(Debug, Default)]
pub struct BlockMetrics {
    reads: AtomicU64,
    writes: AtomicU64,
    flushes: AtomicU64,
    discards: AtomicU64,
    write_zeroes: AtomicU64,
    get_ids: AtomicU64,
    read_bytes: AtomicU64,
    written_bytes: AtomicU64,
    invalid_requests: AtomicU64,
    io_errors: AtomicU64,
    latency_total_ns: AtomicU64,
    latency_max_ns: AtomicU64,
    rate_limiter_throttled: AtomicU64,
}

/// A point-in-time copy of [`BlockMetrics`]. Counters are read one by one, so a snapshot taken
/// while requests complete may mix adjacent instants; each counter is monotonic.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlockMetricsSnapshot {
    /// Completed IN requests.
    pub reads: u64,
    /// Completed OUT requests.
    pub writes: u64,
    /// Completed FLUSH requests.
    pub flushes: u64,
    /// Completed DISCARD requests.
    pub discards: u64,
    /// Completed WRITE_ZEROES requests.
    pub write_zeroes: u64,
    /// Completed GET_ID requests.
    pub get_ids: u64,
    /// Bytes read from the disk into guest memory.
    pub read_bytes: u64,
    /// Bytes written from guest memory to the disk.
    pub written_bytes: u64,
    /// Requests refused because the guest built them wrong (IOERR/UNSUPP without touching the disk).
    pub invalid_requests: u64,
    /// Requests the backend failed (IOERR).
    pub io_errors: u64,
    /// Sum of the backend time of every successful request, in nanoseconds.
    pub latency_total_ns: u64,
    /// The longest backend time of one request, in nanoseconds.
    pub latency_max_ns: u64,
    /// Times the rate limiter stopped the queue (one per wait, however many requests it holds).
    pub rate_limiter_throttled: u64,
}

/// The operation a completed request performed, for counting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Completed {
    Read { bytes: u64 },
    Write { bytes: u64 },
    Flush,
    Discard,
    WriteZeroes,
    GetId,
}

impl BlockMetrics {
    pub(crate) fn record_success(&self, op: Completed, latency: Duration) {
        let counter = match op {
            Completed::Read { bytes } => {
                self.read_bytes.fetch_add(bytes, Ordering::Relaxed);
                &self.reads
            }
            Completed::Write { bytes } => {
                self.written_bytes.fetch_add(bytes, Ordering::Relaxed);
                &self.writes
            }
            Completed::Flush => &self.flushes,
            Completed::Discard => &self.discards,
            Completed::WriteZeroes => &self.write_zeroes,
            Completed::GetId => &self.get_ids,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        let ns = u64::try_from(latency.as_nanos()).unwrap_or(u64::MAX);
        self.latency_total_ns.fetch_add(ns, Ordering::Relaxed);
        self.latency_max_ns.fetch_max(ns, Ordering::Relaxed);
    }

    pub(crate) fn record_invalid(&self) {
        self.invalid_requests.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_io_error(&self) {
        self.io_errors.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn record_throttled(&self) {
        self.rate_limiter_throttled.fetch_add(1, Ordering::Relaxed);
    }

    /// Reads every counter.
    pub fn snapshot(&self) -> BlockMetricsSnapshot {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        BlockMetricsSnapshot {
            reads: get(&self.reads),
            writes: get(&self.writes),
            flushes: get(&self.flushes),
            discards: get(&self.discards),
            write_zeroes: get(&self.write_zeroes),
            get_ids: get(&self.get_ids),
            read_bytes: get(&self.read_bytes),
            written_bytes: get(&self.written_bytes),
            invalid_requests: get(&self.invalid_requests),
            io_errors: get(&self.io_errors),
            latency_total_ns: get(&self.latency_total_ns),
            latency_max_ns: get(&self.latency_max_ns),
            rate_limiter_throttled: get(&self.rate_limiter_throttled),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_bytes_and_tracks_latency_max() {
        let m = BlockMetrics::default();
        m.record_success(Completed::Read { bytes: 4096 }, Duration::from_micros(3));
        m.record_success(Completed::Write { bytes: 512 }, Duration::from_micros(7));
        m.record_invalid();
        m.record_throttled();
        let s = m.snapshot();
        assert_eq!(
            (s.reads, s.writes, s.read_bytes, s.written_bytes),
            (1, 1, 4096, 512)
        );
        assert_eq!(s.invalid_requests, 1);
        assert_eq!(s.latency_total_ns, 10_000);
        assert_eq!(s.latency_max_ns, 7_000);
        assert_eq!(s.rate_limiter_throttled, 1);
    }
}
