//! Aligned bounce buffers for cache-bypassing I/O, recycled through a small pool.
//!
//! `O_DIRECT` needs buffers aligned to the device's memory alignment. Alignment comes without
//! `unsafe` by over-allocating a `Vec<u8>` and using its aligned sub-slice; the pool keeps a few
//! buffers so the steady state allocates nothing.

use std::sync::{Mutex, PoisonError};

/// Bytes one bounce window covers: bigger requests are moved window by window, so a guest's
/// request size never decides how much host memory is allocated.
const WINDOW: usize = 128 * 1024;
/// Buffers kept for reuse: bounds what the pool holds (at most `MAX_POOLED * WINDOW` bytes) while
/// covering the engine's I/O threads.
const MAX_POOLED: usize = 8;

/// A heap buffer whose usable part starts at an aligned address.
#[derive(Debug)]
pub(super) struct AlignedBuf {
    storage: Vec<u8>,
    start: usize,
    len: usize,
}

impl AlignedBuf {
    /// `len` zeroed bytes starting at a multiple of `align` (a power of two).
    fn new(len: usize, align: usize) -> Self {
        let storage = vec![0u8; len + align - 1];
        // For byte pointers `align_offset` is exact at run time, and < `align`.
        let start = storage.as_ptr().align_offset(align);
        Self {
            storage,
            start,
            len,
        }
    }

    /// The aligned bytes.
    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.storage[self.start..self.start + self.len]
    }
}

/// Recycled [`AlignedBuf`]s of one size and alignment.
#[derive(Debug)]
pub(super) struct BouncePool {
    free: Mutex<Vec<AlignedBuf>>,
    capacity: usize,
    align: usize,
}

impl BouncePool {
    /// A pool of buffers aligned to `align` and holding a whole number of `unit`s (both powers of
    /// two), at least one unit and about [`WINDOW`] bytes.
    pub(super) fn new(align: usize, unit: usize) -> Self {
        Self {
            free: Mutex::new(Vec::new()),
            capacity: WINDOW.max(unit).next_multiple_of(unit),
            align: align.max(unit),
        }
    }

    /// Bytes in every buffer.
    pub(super) fn capacity(&self) -> usize {
        self.capacity
    }

    /// A buffer for the caller's exclusive use, returned to the pool when dropped. Its contents
    /// are whatever the last user left.
    pub(super) fn take(&self) -> PooledBuf<'_> {
        let recycled = self.lock().pop();
        let buf = recycled.unwrap_or_else(|| AlignedBuf::new(self.capacity, self.align));
        PooledBuf {
            pool: self,
            buf: Some(buf),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<AlignedBuf>> {
        // A panic elsewhere cannot leave a Vec of buffers inconsistent.
        self.free.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A buffer on loan from a [`BouncePool`].
#[derive(Debug)]
pub(super) struct PooledBuf<'p> {
    pool: &'p BouncePool,
    /// Always `Some` until dropped.
    buf: Option<AlignedBuf>,
}

impl PooledBuf<'_> {
    /// The buffer's aligned bytes ([`BouncePool::capacity`] of them).
    pub(super) fn as_mut_slice(&mut self) -> &mut [u8] {
        match &mut self.buf {
            Some(buf) => buf.as_mut_slice(),
            None => &mut [],
        }
    }
}

impl Drop for PooledBuf<'_> {
    fn drop(&mut self) {
        if let Some(buf) = self.buf.take() {
            let mut free = self.pool.lock();
            if free.len() < MAX_POOLED {
                free.push(buf);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_aligned_and_recycled() {
        let pool = BouncePool::new(4096, 512);
        assert_eq!(pool.capacity(), WINDOW);
        let first_addr = {
            let mut buf = pool.take();
            let bytes = buf.as_mut_slice();
            assert_eq!(bytes.len(), WINDOW);
            assert_eq!(bytes.as_ptr() as usize % 4096, 0);
            bytes.as_ptr() as usize
        };
        // The same buffer comes back: no allocation in the steady state.
        let mut again = pool.take();
        assert_eq!(again.as_mut_slice().as_ptr() as usize, first_addr);
    }

    #[test]
    fn pool_keeps_a_bounded_number() {
        let pool = BouncePool::new(512, 512);
        let loans: Vec<_> = (0..MAX_POOLED + 3).map(|_| pool.take()).collect();
        drop(loans);
        assert_eq!(pool.lock().len(), MAX_POOLED);
    }

    #[test]
    fn large_units_round_the_window_up() {
        let pool = BouncePool::new(512, 1 << 20);
        assert_eq!(pool.capacity(), 1 << 20);
    }
}
