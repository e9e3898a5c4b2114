//! virtio-blk: the device frontend and the engines that move its data.

pub mod backend;
mod device;
pub mod engine;
mod executor;
mod handle;
mod io_pool;
mod metrics;
mod poll;
mod request;
mod worker;

pub use device::{
    BlockConfig, BlockDevice, BlockError, BlockLimits, CacheType, DRIVE_SERIAL_LEN, QUEUE_SIZE,
    SEG_MAX,
};
pub use handle::{BlockHandle, SwapError};
pub use metrics::{BlockMetrics, BlockMetricsSnapshot};
