//! virtio-net (virtio 1.2 §5.1) on a TAP backend: one receive and one transmit queue.
//!
//! [`NetDevice`] describes the device (features, the MAC in configuration space) and at DRIVER_OK
//! hands its queues to a worker thread running a [`handler`] that moves frames between the
//! queues and a [`backend::NetBackend`] (a TAP in production), straight between the backend's
//! descriptor and guest memory.

pub mod backend;
mod device;
mod handle;
pub(crate) mod handler;
mod header;
mod metrics;
mod ring_timer;
mod tap_ring;

pub use device::{
    MacAddr, NetConfig, NetDevice, NetError, NetState, QUEUE_SIZE, RX_BUFFER_MIN,
    RX_BUFFER_MIN_OFFLOADS,
};
pub use handle::NetHandle;
pub use header::VNET_HDR_LEN;
pub use metrics::{NetMetrics, NetMetricsSnapshot};
