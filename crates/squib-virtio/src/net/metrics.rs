//! Per-device virtio-net counters with Firecracker's `net` field names, written by the worker
//! with relaxed atomic adds and read from any thread as a [`NetMetricsSnapshot`].

use std::sync::atomic::{AtomicU64, Ordering};

macro_rules! net_metrics {
    ($($(#[doc = $doc:literal])* $name:ident,)*) => {
        /// Live counters of one virtio-net device.
        #[derive(Debug, Default)]
        pub struct NetMetrics {
            $($name: AtomicU64,)*
        }

        /// A point-in-time copy of [`NetMetrics`] (each counter monotonic; a snapshot taken
        /// while frames move may mix adjacent instants).
        #[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
        pub struct NetMetricsSnapshot {
            $($(#[doc = $doc])* pub $name: u64,)*
        }

        impl NetMetrics {
            /// Reads every counter.
            pub fn snapshot(&self) -> NetMetricsSnapshot {
                NetMetricsSnapshot {
                    $($name: self.$name.load(Ordering::Relaxed),)*
                }
            }
        }

        impl NetMetricsSnapshot {
            /// `(firecracker_field_name, value)` for every counter, in declaration order.
            pub fn fields(&self) -> [(&'static str, u64); net_metrics!(@count $($name)*)] {
                [$((stringify!($name), self.$name),)*]
            }

            /// What each counter gained since `before` (the metrics file writes deltas).
            pub fn since(&self, before: &Self) -> Self {
                Self {
                    $($name: self.$name.saturating_sub(before.$name),)*
                }
            }

            /// The field-wise sum, for the aggregate `net` metric over every interface.
            pub fn add(&self, other: &Self) -> Self {
                Self {
                    $($name: self.$name.saturating_add(other.$name),)*
                }
            }
        }
    };
    (@count $($name:ident)*) => { 0 $(+ { let _ = stringify!($name); 1 })* };
}

net_metrics! {
    /// Activations that failed.
    activate_fails,
    /// Writes to configuration space (ignored: it is read-only).
    cfg_fails,
    /// Rx frames the driver had posted no buffer for when they arrived (they wait in the TAP).
    no_rx_avail_buffer,
    /// Times the rx queue was kicked.
    rx_queue_event_count,
    /// Times the TAP became readable.
    rx_tap_event_count,
    /// Times the rx rate limiter stopped receiving.
    rx_rate_limiter_throttled,
    /// Times the rx limiter's timer resumed receiving.
    rx_event_rate_limiter_count,
    /// Bytes delivered to the guest (headers excluded).
    rx_bytes_count,
    /// Frames delivered to the guest.
    rx_packets_count,
    /// Frames dropped: larger than the buffers the driver posted, or shorter than a header.
    rx_fails,
    /// Rx chains returned unused because the driver built them wrong (readable descriptors,
    /// outside guest memory, too short for the header).
    rx_malformed_buffers,
    /// Failed TAP reads other than "nothing queued".
    tap_read_fails,
    /// Failed TAP writes (the frame is dropped).
    tap_write_fails,
    /// Times the tx queue was kicked.
    tx_queue_event_count,
    /// Times the tx rate limiter stopped sending.
    tx_rate_limiter_throttled,
    /// Times the tx limiter's timer resumed sending.
    tx_rate_limiter_event_count,
    /// Bytes sent (headers excluded).
    tx_bytes_count,
    /// Frames sent.
    tx_packets_count,
    /// Frames dropped because the TAP refused them.
    tx_fails,
    /// Tx chains dropped because the driver built them wrong (device-writable descriptors,
    /// shorter than a header, longer than the largest frame, outside guest memory).
    tx_malformed_frames,
}

impl NetMetrics {
    pub(crate) fn inc(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, value: u64) {
        counter.fetch_add(value, Ordering::Relaxed);
    }
}

/// Counter accessors for the worker (the fields are private to keep the names in one place).
impl NetMetrics {
    pub(crate) fn rx_delivered(&self, bytes: u64) {
        Self::inc(&self.rx_packets_count);
        Self::add(&self.rx_bytes_count, bytes);
    }
    pub(crate) fn tx_sent(&self, bytes: u64) {
        Self::inc(&self.tx_packets_count);
        Self::add(&self.tx_bytes_count, bytes);
    }
    pub(crate) fn counter(&self, which: Counter) -> &AtomicU64 {
        match which {
            Counter::ActivateFails => &self.activate_fails,
            Counter::CfgFails => &self.cfg_fails,
            Counter::NoRxAvailBuffer => &self.no_rx_avail_buffer,
            Counter::RxQueueEvent => &self.rx_queue_event_count,
            Counter::RxTapEvent => &self.rx_tap_event_count,
            Counter::RxThrottled => &self.rx_rate_limiter_throttled,
            Counter::RxLimiterEvent => &self.rx_event_rate_limiter_count,
            Counter::RxFails => &self.rx_fails,
            Counter::RxMalformed => &self.rx_malformed_buffers,
            Counter::TapReadFails => &self.tap_read_fails,
            Counter::TapWriteFails => &self.tap_write_fails,
            Counter::TxQueueEvent => &self.tx_queue_event_count,
            Counter::TxThrottled => &self.tx_rate_limiter_throttled,
            Counter::TxLimiterEvent => &self.tx_rate_limiter_event_count,
            Counter::TxFails => &self.tx_fails,
            Counter::TxMalformed => &self.tx_malformed_frames,
        }
    }
    pub(crate) fn count(&self, which: Counter) {
        Self::inc(self.counter(which));
    }
}

/// The event counters the worker bumps by one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Counter {
    ActivateFails,
    CfgFails,
    NoRxAvailBuffer,
    RxQueueEvent,
    RxTapEvent,
    RxThrottled,
    RxLimiterEvent,
    RxFails,
    RxMalformed,
    TapReadFails,
    TapWriteFails,
    TxQueueEvent,
    TxThrottled,
    TxLimiterEvent,
    TxFails,
    TxMalformed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_carry_firecracker_names_and_sum() {
        let m = NetMetrics::default();
        m.rx_delivered(100);
        m.count(Counter::TxMalformed);
        let s = m.snapshot();
        let fields = s.fields();
        assert!(fields.contains(&("rx_bytes_count", 100)));
        assert!(fields.contains(&("rx_packets_count", 1)));
        assert!(fields.contains(&("tx_malformed_frames", 1)));
        assert_eq!(s.add(&s).rx_bytes_count, 200);
    }
}
