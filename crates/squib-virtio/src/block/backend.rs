//! The `BlockBackend` trait: what the virtio-blk frontend needs from a disk engine.
//!
//! A backend moves data between the disk and guest memory directly: the frontend hands it the
//! request's guest-memory segments, already validated against guest memory, and the backend does
//! positioned (vectored where there are several segments) I/O into them. No request allocates a
//! buffer the size of its payload.

use std::fmt::Debug;
use std::fs::File;
use std::io;

use squib_host::block_io::DirectIoAlignment;

use vm_memory::GuestAddress;

use crate::GuestMemory;

/// The unit of every virtio-blk offset and length.
pub const SECTOR_SIZE: u64 = 512;

/// One contiguous piece of guest memory that a request reads into or writes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Segment {
    /// Guest-physical start address.
    pub addr: GuestAddress,
    /// Length in bytes.
    pub len: u32,
}

/// Why a backend could not carry out an operation.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// A write, discard or write-zeroes reached a read-only disk.
    #[error("the disk is read-only")]
    ReadOnly,
    /// The byte range does not lie inside the disk.
    #[error("bytes {offset:#x}..{offset:#x}+{len:#x} lie outside the disk ({size:#x} bytes)")]
    OutOfRange {
        /// First byte of the range.
        offset: u64,
        /// Length of the range.
        len: u64,
        /// Disk size in bytes.
        size: u64,
    },
    /// A segment is not backed by guest memory.
    #[error("guest memory {addr:#x}+{len:#x} is not mapped")]
    GuestMemory {
        /// Guest-physical address of the segment.
        addr: u64,
        /// Length of the segment.
        len: u32,
    },
    /// The host call failed.
    #[error("host I/O error: {0}")]
    Io(#[from] io::Error),
}

/// A disk engine behind a virtio-blk device.
///
/// Implementations are shared as `Arc<dyn BlockBackend>` between the device's I/O threads, so
/// every method takes `&self`.
pub trait BlockBackend: Send + Sync + Debug {
    /// Capacity in bytes: always a whole number of 512-byte sectors (a trailing partial sector of
    /// the underlying file is not exposed).
    fn size(&self) -> u64;

    /// Whether writes, discards and write-zeroes are refused.
    fn is_read_only(&self) -> bool;

    /// Fills `segments`, in order, with the disk's bytes starting at `offset`.
    fn read_vectored_at(
        &self,
        mem: &GuestMemory,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), BackendError>;

    /// Writes the bytes of `segments`, in order, to the disk starting at `offset`.
    fn write_vectored_at(
        &self,
        mem: &GuestMemory,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), BackendError>;

    /// Makes every completed write durable.
    fn flush(&self) -> Result<(), BackendError>;

    /// Deallocates `len` bytes at `offset`; later reads of the range return zeroes.
    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError>;

    /// Writes `len` zero bytes at `offset`.
    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError>;

    /// How many requests the device should keep in flight on this backend at once, each on an
    /// I/O thread of its own. 1, the default, executes requests one after the other on the
    /// device's worker: ideal where a request costs about as much CPU as handing it to another
    /// thread would (page-cached files, memory). A backend whose requests mostly wait for a disk
    /// returns more.
    fn concurrent_io(&self) -> usize {
        1
    }

    /// The file an io_uring may move this backend's data to and from directly, bypassing the
    /// methods above for reads, writes, flushes, discards and write-zeroes that it can take as
    /// they are (the others, and any that fail or come up short there, still go through them).
    /// `None`, the default: the backend only runs its own methods.
    fn uring_target(&self) -> Option<UringTarget<'_>> {
        None
    }
}

/// What the io_uring executor needs to submit a backend's requests itself.
#[derive(Clone, Copy, Debug)]
pub struct UringTarget<'a> {
    /// The disk file; the ring registers a duplicate of its descriptor.
    pub file: &'a File,
    /// The alignment direct I/O needs when the file bypasses the page cache; requests that miss
    /// it go through the backend's methods (which bounce them).
    pub direct: Option<DirectIoAlignment>,
    /// Requests the ring keeps in flight (its slots).
    pub slots: u16,
    /// Register guest memory as fixed buffers (pinned by the kernel) when the kernel allows.
    pub fixed_buffers: bool,
    /// Test hook: behave as a kernel without io_uring would (the ring's setup fails with
    /// `ENOSYS`), so the device's fallback can be exercised on any host.
    pub simulate_unavailable: bool,
}
