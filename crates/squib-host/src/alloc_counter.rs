//! A global allocator that counts heap allocations, so benchmarks can show that a hot path
//! (e.g. one virtio-blk request) does not allocate.
//!
//! Install it in a bench or test binary with
//! `#[global_allocator] static ALLOC: CountingAllocator = CountingAllocator::new();`
//! and read [`allocations`] before and after the code under test. The count covers every thread.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicU64, Ordering};

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

/// The system allocator, counting every `alloc`, `alloc_zeroed` and `realloc`.
#[derive(Debug, Default)]
pub struct CountingAllocator {
    _private: (),
}

impl CountingAllocator {
    /// The allocator, for a `#[global_allocator]` static.
    pub const fn new() -> Self {
        Self { _private: () }
    }
}

/// Heap allocations (including reallocations) made through [`CountingAllocator`] so far, by any
/// thread. Always 0 when it is not the global allocator.
pub fn allocations() -> u64 {
    ALLOCATIONS.load(Ordering::Relaxed)
}

// SAFETY: every method forwards its arguments unchanged to `System`, which upholds the
// `GlobalAlloc` contract; the only addition is a relaxed atomic increment, which neither
// allocates nor unwinds, so the forwarded calls see exactly the caller's layout and pointers.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller guarantees `layout` has a non-zero size (GlobalAlloc::alloc's
        // contract), which is all System::alloc requires.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: same contract as `alloc`, passed through unchanged.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: the caller guarantees `ptr` came from this allocator with `layout`; every
        // pointer this allocator hands out came from `System` with that same layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the caller guarantees `ptr` was allocated here (hence by `System`) with
        // `layout`, and that `new_size` is non-zero and does not overflow when rounded to
        // `layout.align()`: exactly System::realloc's requirements.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_allocations_made_through_it() {
        let allocator = CountingAllocator::new();
        let layout = Layout::from_size_align(64, 8).unwrap();
        let before = allocations();
        // SAFETY: a non-zero-size layout; the pointer is checked and freed with the same layout.
        unsafe {
            let ptr = allocator.alloc(layout);
            assert!(!ptr.is_null());
            let ptr = allocator.realloc(ptr, layout, 128);
            assert!(!ptr.is_null());
            allocator.dealloc(ptr, Layout::from_size_align(128, 8).unwrap());
        }
        // Other test threads may not allocate through it (it is not the global allocator).
        assert_eq!(allocations() - before, 2);
    }
}
