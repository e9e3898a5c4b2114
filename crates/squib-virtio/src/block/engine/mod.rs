//! The file engines behind a virtio-blk device: `SyncFileBackend`, `AsyncFileBackend` and
//! `UringFileBackend`.
//!
//! Both implement [`BlockBackend`](super::backend::BlockBackend) over a raw disk image file (or
//! block device) and are interchangeable behind `Arc<dyn BlockBackend>`:
//! - [`SyncFileBackend`] serialises every request through one `Mutex<File>`: simple, and the
//!   baseline the benchmark compares against.
//! - [`AsyncFileBackend`] issues lockless positioned I/O on one shared descriptor, straight into
//!   guest memory, and handles cache bypass (`O_DIRECT`) alignment with a bounce-buffer pool.
//! - [`UringFileBackend`] is that engine with an io_uring: the device worker submits its requests
//!   straight from guest memory to the kernel (the `uring` module is that executor), no I/O
//!   threads.

mod async_file;
mod bounce;
mod disk;
mod rmw_lock;
mod segments;
mod sync_file;
pub(crate) mod uring;
mod uring_file;

pub use async_file::AsyncFileBackend;
pub use sync_file::SyncFileBackend;
pub use uring_file::{DEFAULT_RING_SLOTS, UringFileBackend, UringOptions};

#[cfg(test)]
mod tests;
