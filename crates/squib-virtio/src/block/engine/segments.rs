//! A request's guest-memory segments, validated once and then walked as `VolatileSlice`s.

use std::io;

use squib_host::block_io::DirectIoAlignment;
use squib_host::guest_io::IOVECS_PER_CALL;
use squib_host::guest_memory::empty_slice;
use vm_memory::GuestMemoryBackend;

use crate::block::backend::{BackendError, Segment};
use crate::{GuestMemory, GuestSlice};

/// The segments of one request, each checked to lie in guest memory, and their total length.
#[derive(Debug)]
pub(super) struct GuestSegments<'a> {
    mem: &'a GuestMemory,
    segments: &'a [Segment],
    len: u64,
}

impl<'a> GuestSegments<'a> {
    /// Checks every segment against `mem` before any byte moves, so a request with a bad segment
    /// fails without touching the disk.
    pub(super) fn new(mem: &'a GuestMemory, segments: &'a [Segment]) -> Result<Self, BackendError> {
        let mut len: u64 = 0;
        for segment in segments {
            if !mem.check_range(segment.addr, segment.len as usize) {
                return Err(unmapped(segment));
            }
            // A u64 cannot overflow summing u32s from a slice that fits in memory.
            len += u64::from(segment.len);
        }
        Ok(Self { mem, segments, len })
    }

    /// Total bytes of the request.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The request's memory as host slices, in order (a segment spanning two memory regions
    /// yields two).
    fn slices(&self) -> impl Iterator<Item = Result<GuestSlice<'a>, BackendError>> + use<'a> {
        let mem = self.mem;
        self.segments.iter().flat_map(move |segment| {
            mem.get_slices(segment.addr, segment.len as usize)
                .map(move |slice| slice.map_err(|_| unmapped(segment)))
        })
    }

    /// Runs `io` on the slices in batches of at most [`IOVECS_PER_CALL`], gathered on the stack;
    /// `io` also gets the batch's byte offset inside the request.
    pub(super) fn for_each_batch(
        &self,
        mut io: impl FnMut(&[GuestSlice<'a>], u64) -> io::Result<()>,
    ) -> Result<(), BackendError> {
        // The common request, one segment in one memory region, needs no batch.
        if let [segment] = self.segments
            && let Ok(slice) = self.mem.get_slice(segment.addr, segment.len as usize)
        {
            return Ok(io(&[slice], 0)?);
        }
        let mut batch = [empty_slice(); IOVECS_PER_CALL];
        let mut count = 0;
        let mut batch_start = 0;
        let mut batch_len = 0;
        for slice in self.slices() {
            if count == IOVECS_PER_CALL {
                io(&batch, batch_start)?;
                batch_start += batch_len;
                (count, batch_len) = (0, 0);
            }
            let slice = slice?;
            batch_len += slice.len() as u64;
            batch[count] = slice;
            count += 1;
        }
        if count > 0 {
            io(&batch[..count], batch_start)?;
        }
        Ok(())
    }

    /// Whether every slice may be used for cache-bypassing I/O as is: its host address aligned to
    /// `align.memory()` and its length a multiple of `align.offset()`.
    pub(super) fn is_aligned(&self, align: DirectIoAlignment) -> Result<bool, BackendError> {
        for slice in self.slices() {
            let slice = slice?;
            let addr = slice.ptr_guard().as_ptr() as usize;
            if !addr.is_multiple_of(align.memory()) || !slice.len().is_multiple_of(align.offset()) {
                return Ok(false);
            }
        }
        Ok(true)
    }

    /// Copies the request's bytes `at..at + dst.len()` out of guest memory into `dst`.
    pub(super) fn copy_out(&self, at: u64, dst: &mut [u8]) -> Result<(), BackendError> {
        self.walk(at, dst.len(), |slice, range| {
            slice.copy_to(&mut dst[range]);
        })
    }

    /// Copies `src` into the request's bytes `at..at + src.len()` of guest memory.
    pub(super) fn copy_in(&self, at: u64, src: &[u8]) -> Result<(), BackendError> {
        self.walk(at, src.len(), |slice, range| {
            slice.copy_from(&src[range]);
        })
    }

    /// Calls `visit` with each piece of guest memory holding the request's bytes `at..at + len`
    /// and the range of `0..len` that piece corresponds to.
    fn walk(
        &self,
        at: u64,
        len: usize,
        mut visit: impl FnMut(GuestSlice<'a>, std::ops::Range<usize>),
    ) -> Result<(), BackendError> {
        let end = at + len as u64;
        let mut position = 0u64;
        for slice in self.slices() {
            let slice = slice?;
            let slice_end = position + slice.len() as u64;
            let start = at.max(position);
            let stop = end.min(slice_end);
            if start < stop {
                // Both fit in usize: they lie inside this slice and inside `0..len`.
                let within = (start - position) as usize;
                let count = (stop - start) as usize;
                let piece = slice
                    .subslice(within, count)
                    .map_err(|e| BackendError::Io(io::Error::other(e)))?;
                let into = (start - at) as usize;
                visit(piece, into..into + count);
            }
            if slice_end >= end {
                break;
            }
            position = slice_end;
        }
        Ok(())
    }
}

fn unmapped(segment: &Segment) -> BackendError {
    BackendError::GuestMemory {
        addr: segment.addr.0,
        len: segment.len,
    }
}
