//! `HookedDisk`: a [`MemDisk`] whose every operation passes through a test's [`DiskHook`] — a
//! disk that is slow, one that holds requests at a gate, one whose io_uring file is a pipe —
//! so that a test writes only what its disk does differently, not a whole `BlockBackend`.

use std::fmt::Debug;

use super::MemDisk;
use crate::GuestMemory;
use crate::block::backend::{BackendError, BlockBackend, Segment, UringTarget};

/// One operation on its way to the disk.
#[derive(Clone, Copy, Debug)]
pub enum DiskAccess<'a> {
    /// Bytes at `offset` into guest memory.
    Read {
        /// Guest memory the segments are in.
        mem: &'a GuestMemory,
        /// Where the bytes go.
        segments: &'a [Segment],
        /// The disk offset.
        offset: u64,
    },
    /// Bytes from guest memory to `offset`.
    Write {
        /// Guest memory the segments are in.
        mem: &'a GuestMemory,
        /// Where the bytes come from.
        segments: &'a [Segment],
        /// The disk offset.
        offset: u64,
    },
    /// A flush.
    Flush,
    /// A discard of `len` bytes at `offset`.
    Discard {
        /// The disk offset.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// Zeroes written over `len` bytes at `offset`.
    WriteZeroes {
        /// The disk offset.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
}

/// What a test's disk does besides storing bytes. Every method has the plain disk's answer.
pub trait DiskHook: Debug + Send + Sync {
    /// Runs `io` (the operation on the [`MemDisk`]) for `access`: the hook may wait before it,
    /// record after it, or fail instead of running it.
    fn around(
        &self,
        access: DiskAccess<'_>,
        io: &mut dyn FnMut() -> Result<(), BackendError>,
    ) -> Result<(), BackendError> {
        let _ = access;
        io()
    }

    /// See [`BlockBackend::concurrent_io`].
    fn concurrent_io(&self) -> usize {
        1
    }

    /// See [`BlockBackend::uring_target`].
    fn uring_target(&self) -> Option<UringTarget<'_>> {
        None
    }
}

/// A [`MemDisk`] with a [`DiskHook`] around every operation.
#[derive(Debug)]
pub struct HookedDisk<H> {
    disk: MemDisk,
    hook: H,
}

impl<H: DiskHook> HookedDisk<H> {
    /// `disk` behind `hook`.
    pub fn new(disk: MemDisk, hook: H) -> Self {
        Self { disk, hook }
    }

    /// The disk's bytes and counters.
    pub fn disk(&self) -> &MemDisk {
        &self.disk
    }

    /// The hook, for the test to inspect or steer.
    pub fn hook(&self) -> &H {
        &self.hook
    }
}

impl<H: DiskHook> BlockBackend for HookedDisk<H> {
    fn size(&self) -> u64 {
        self.disk.size()
    }

    fn is_read_only(&self) -> bool {
        self.disk.is_read_only()
    }

    fn read_vectored_at(
        &self,
        mem: &GuestMemory,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), BackendError> {
        let access = DiskAccess::Read {
            mem,
            segments,
            offset,
        };
        self.hook.around(access, &mut || {
            self.disk.read_vectored_at(mem, segments, offset)
        })
    }

    fn write_vectored_at(
        &self,
        mem: &GuestMemory,
        segments: &[Segment],
        offset: u64,
    ) -> Result<(), BackendError> {
        let access = DiskAccess::Write {
            mem,
            segments,
            offset,
        };
        self.hook.around(access, &mut || {
            self.disk.write_vectored_at(mem, segments, offset)
        })
    }

    fn flush(&self) -> Result<(), BackendError> {
        self.hook
            .around(DiskAccess::Flush, &mut || self.disk.flush())
    }

    fn discard(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.hook
            .around(DiskAccess::Discard { offset, len }, &mut || {
                self.disk.discard(offset, len)
            })
    }

    fn write_zeroes(&self, offset: u64, len: u64) -> Result<(), BackendError> {
        self.hook
            .around(DiskAccess::WriteZeroes { offset, len }, &mut || {
                self.disk.write_zeroes(offset, len)
            })
    }

    fn concurrent_io(&self) -> usize {
        self.hook.concurrent_io()
    }

    fn uring_target(&self) -> Option<UringTarget<'_>> {
        self.hook.uring_target()
    }
}
