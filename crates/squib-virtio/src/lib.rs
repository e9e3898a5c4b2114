//! virtio for squib: the virtio-mmio transport, split virtqueues and the virtio-blk device.
//!
//! This crate holds no `unsafe` (I-CRATE-2): guest memory is reached only through `vm-memory`'s
//! safe API, and the one host boundary the block engines need (vectored positioned I/O into guest
//! memory) lives in `squib-host`.
#![forbid(unsafe_code)]

pub mod block;
pub mod rate_limiter;

pub use block::engine::{AsyncFileBackend, SyncFileBackend};

/// Guest memory as squib maps it: anonymous or file-backed mmaps, no dirty bitmap.
pub type GuestMemory = vm_memory::GuestMemoryMmap<()>;
