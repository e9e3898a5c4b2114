//! virtio-vsock counters under Firecracker's `vsock` metric names. As in Firecracker, `rx` is
//! towards the guest (the device's receive queue) and `tx` from it.

use crate::counters::device_counters;

device_counters!(
    /// Live counters of one vsock device.
    VsockMetrics,
    /// A point-in-time copy of [`VsockMetrics`]; the field names are Firecracker's.
    VsockMetricsSnapshot,
    {
        /// Activations that failed.
        activate_fails,
        /// Configuration-space writes (the space is read-only).
        cfg_fails,
        /// rx chains of the wrong shape (completed empty).
        rx_queue_event_fails,
        /// tx chains dropped: wrong shape, bad header, unknown CIDs, lengths past the buffer.
        tx_queue_event_fails,
        /// Event-queue chains of the wrong shape.
        ev_queue_event_fails,
        /// Failures accepting host connections on the listening socket.
        muxer_event_fails,
        /// Host-socket errors that killed a connection.
        conn_event_fails,
        /// rx queue notifications handled.
        rx_queue_event_count,
        /// tx queue notifications handled.
        tx_queue_event_count,
        /// Payload bytes delivered to the guest.
        rx_bytes_count,
        /// Payload bytes received from the guest.
        tx_bytes_count,
        /// Packets delivered to the guest.
        rx_packets_count,
        /// Packets received from the guest.
        tx_packets_count,
        /// Connections established (either side initiating).
        conns_added,
        /// Connections reset by the device (errors, refusals, protocol violations).
        conns_killed,
        /// Connections closed in an orderly way.
        conns_removed,
        /// Resets for dead connections the guest never got because the queue was full.
        killq_resync,
        /// Failed writes of buffered guest data to a host socket.
        tx_flush_fails,
        /// Failed writes of guest data to a host socket.
        tx_write_fails,
        /// Failed reads from a host socket.
        rx_read_fails,
    }
);
