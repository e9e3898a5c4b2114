//! virtio for squib: the virtio-mmio transport, split virtqueues and the virtio-blk device.
//!
//! This crate holds no `unsafe` (I-CRATE-2): guest memory is reached only through `vm-memory`'s
//! safe API, and the one host boundary the block engines need (vectored positioned I/O into guest
//! memory) lives in `squib-host`.
//!
//! The pieces, from the guest inward: [`mmio::MmioTransport`] decodes register accesses and runs
//! the device status state machine; it drives a [`device::VirtioDevice`] such as
//! [`block::BlockDevice`], which at activation hands its [`queue::VirtQueue`]s to the shared
//! [`runtime`]: a worker thread running the device's handler, which serves requests (on a
//! [`block::backend::BlockBackend`] for virtio-blk) and signals the
//! [`interrupt::VirtioInterrupt`]. [`persist`] is what a snapshot records of all of it.
#![forbid(unsafe_code)]

pub mod block;
mod counters;
pub mod device;
pub mod guest_log;
pub mod interrupt;
pub mod mmio;
pub mod net;
pub mod persist;
pub mod queue;
pub mod rate_limiter;
pub mod rng;
pub mod runtime;
#[cfg(feature = "test-util")]
pub mod testing;
pub mod threads;
pub mod vsock;

pub use block::engine::{AsyncFileBackend, SyncFileBackend};

/// Guest memory as squib maps it: mmaps with a dirty bitmap when dirty pages are tracked (see
/// `squib_host::guest_memory`).
pub use squib_host::guest_memory::{GuestMemory, GuestSlice};
