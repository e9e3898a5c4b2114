//! virtio-rng (Firecracker's entropy device): random bytes from the host kernel straight into
//! the guest's buffers, optionally throttled by a rate limiter.

mod device;
mod handler;
mod metrics;

pub use device::{QUEUE_SIZE, RngConfig, RngDevice, RngError};
pub use metrics::{RngMetrics, RngMetricsSnapshot};
