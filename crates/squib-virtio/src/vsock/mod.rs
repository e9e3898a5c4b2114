//! virtio-vsock in Firecracker's hybrid design: guest AF_VSOCK streams relayed to host Unix
//! sockets (see [`handler`] for the protocol both ways).

mod connection;
mod device;
mod handler;
mod metrics;
mod packet;

pub use device::{QUEUE_SIZE, VsockConfig, VsockDevice, VsockError, VsockHandle, VsockState};
pub use handler::MAX_CONNECTIONS;
pub use metrics::{VsockMetrics, VsockMetricsSnapshot};
