//! `UringFileBackend`: a disk file served through an io_uring by the device worker.

use std::fs::File;
use std::io;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};

use super::async_file::AsyncFileBackend;
use super::disk;
use crate::GuestMemory;
use crate::block::backend::{BackendError, BlockBackend, Segment, UringTarget};

/// Requests the ring keeps in flight: above the deepest queue a guest benchmark drives (QD 32)
/// with room for bursts; each slot costs its iovec array (`SEG_MAX` iovecs, 4 KiB).
pub const DEFAULT_RING_SLOTS: u16 = 64;

/// How the device's io_uring is set up for this disk.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct UringOptions {
    /// Requests in flight at once; more wait on the virtqueue (back-pressure).
    pub slots: u16,
    /// Register guest memory as fixed buffers. This pins (and so faults in) all of guest memory
    /// for the device's life, charged to `RLIMIT_MEMLOCK` without `CAP_IPC_LOCK`; refused
    /// registrations fall back to vectored I/O. Default: only for cache-bypassing files, where
    /// it spares the kernel pinning the pages of every request.
    pub fixed_buffers: Option<bool>,
    /// Behave as a kernel without io_uring (for tests of the fallback).
    pub simulate_unavailable: bool,
}

impl Default for UringOptions {
    fn default() -> Self {
        Self {
            slots: DEFAULT_RING_SLOTS,
            fixed_buffers: None,
            simulate_unavailable: false,
        }
    }
}

/// A raw disk image (or block device) whose reads, writes, flushes, discards and write-zeroes
/// the device worker submits to an io_uring straight from guest memory: no I/O threads, one
/// `io_uring_enter` per batch, completions through an eventfd in the worker's epoll set.
///
/// It is an [`AsyncFileBackend`] underneath: requests the ring cannot take as they are (direct
/// I/O that needs a bounce buffer, a segment crossing guest memory regions), and ones that fail
/// or come up short on the ring, run through that engine's synchronous methods, with its
/// fallbacks (bounced unaligned direct I/O, zero-writing where `fallocate` is unsupported). Where
/// the kernel refuses an io_uring the device falls back to that engine entirely (I/O threads
/// with cache bypass, the worker itself without) and says so in its log.
#[derive(Debug)]
pub struct UringFileBackend {
    file: AsyncFileBackend,
    options: UringOptions,
    /// Requests served by the synchronous methods rather than the ring.
    off_ring: AtomicU64,
}

impl UringFileBackend {
    /// Opens `path` (`O_RDONLY` when `read_only`).
    ///
    /// # Errors
    /// [`io::Error`] if the file cannot be opened or measured.
    pub fn open(path: &Path, read_only: bool) -> io::Result<Self> {
        Self::from_file(disk::open(path, read_only)?, read_only)
    }

    /// Wraps an already-open file (after [`squib_host::block_io::set_f_nocache`] for cache
    /// bypass).
    ///
    /// # Errors
    /// As [`AsyncFileBackend::from_file`].
    pub fn from_file(file: File, read_only: bool) -> io::Result<Self> {
        Ok(Self {
            file: AsyncFileBackend::from_file(file, read_only)?,
            options: UringOptions::default(),
            off_ring: AtomicU64::new(0),
        })
    }

    /// Replaces the ring options.
    #[must_use]
    pub fn with_options(mut self, options: UringOptions) -> Self {
        self.options = options;
        self
    }

    /// Whether the descriptor bypasses the page cache (`O_DIRECT`).
    pub fn is_direct(&self) -> bool {
        self.file.is_direct()
    }

    /// Requests served through the synchronous methods instead of the ring: the ones the ring
    /// cannot take as they are, the retries of failed or short ones, and all of them when the
    /// kernel refused the ring.
    pub fn requests_off_ring(&self) -> u64 {
        self.off_ring.load(Ordering::Relaxed)
    }

    fn off_ring(&self) -> &AsyncFileBackend {
        self.off_ring.fetch_add(1, Ordering::Relaxed);
        &self.file
    }
}

impl BlockBackend for UringFileBackend {
    fn size(&self) -> u64 {
        self.file.size()
    }

    fn is_read_only(&self) -> bool {
        self.file.is_read_only()
    }

    fn read_vectored_at(
        &self,
        mem: &GuestMemory,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), BackendError> {
        self.off_ring().read_vectored_at(mem, segments, offset)
    }

    fn write_vectored_at(
        &self,
        mem: &GuestMemory,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), BackendError> {
        self.off_ring().write_vectored_at(mem, segments, offset)
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.off_ring().flush()
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.off_ring().discard(offset, len)
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.off_ring().write_zeroes(offset, len)
    }

    /// What the fallback without io_uring keeps in flight (see [`AsyncFileBackend`]).
    fn concurrent_io(&self) -> usize {
        self.file.concurrent_io()
    }

    fn uring_target(&self) -> Option<UringTarget<'_>> {
        let direct = self.file.direct_alignment();
        Some(UringTarget {
            file: self.file.file(),
            direct,
            slots: self.options.slots,
            fixed_buffers: self.options.fixed_buffers.unwrap_or(direct.is_some()),
            simulate_unavailable: self.options.simulate_unavailable,
        })
    }
}
