//! virtio-blk: the device frontend and the engines that move its data.

pub mod backend;
pub mod engine;
