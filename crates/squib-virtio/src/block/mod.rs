//! virtio-blk: the device frontend and the engines that move its data.

pub mod backend;
mod config;
mod device;
mod drive_state;
pub mod engine;
mod executor;
mod handler;
mod io_pool;
mod metrics;
mod request;

pub use config::{
    BlockConfig, BlockError, BlockLimits, CacheType, DRIVE_SERIAL_LEN, QUEUE_SIZE, SEG_MAX,
};
pub use device::{BlockDevice, BlockState};
pub use drive_state::{BlockHandle, SwapError};
pub use metrics::{BlockMetrics, BlockMetricsSnapshot};
