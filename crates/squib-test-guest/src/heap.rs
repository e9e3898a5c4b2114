//! The global allocator, for the third-party driver only (indirect descriptor tables, network
//! buffers, vsock connections; this guest's own code never allocates). A bump allocator over a region of the DMA arena, so
//! everything it hands out is identity-mapped RAM a device may read. Freeing the most recent
//! allocation gives its bytes back, and freeing the last live one starts over, so the crate's
//! allocate-per-request pattern (a table boxed, used, freed) runs in constant memory.
//!
//! One CPU, and the CPL0 interrupt handlers never allocate, so the atomics only need to be
//! consistent with themselves. Before `init` every allocation fails (null).

use core::alloc::{GlobalAlloc, Layout};
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use crate::dma::{DmaBuf, OutOfDmaMemory};

/// Enough for a queue's worth of indirect tables many times over.
const HEAP_BYTES: usize = 256 * 1024;

#[global_allocator]
static HEAP: BumpHeap = BumpHeap {
    start: AtomicU64::new(0),
    next: AtomicU64::new(0),
    live: AtomicUsize::new(0),
};

/// Takes the heap's region from the DMA arena. Later calls do nothing.
pub fn init() -> Result<(), OutOfDmaMemory> {
    if HEAP.start.load(Ordering::Relaxed) != 0 {
        return Ok(());
    }
    let start = DmaBuf::new(HEAP_BYTES, 4096)?.into_raw();
    HEAP.next.store(start, Ordering::Relaxed);
    HEAP.start.store(start, Ordering::Relaxed);
    Ok(())
}

struct BumpHeap {
    /// The region is `start..start + HEAP_BYTES`; 0 until `init`.
    start: AtomicU64,
    /// The first free byte.
    next: AtomicU64,
    /// Allocations not yet freed.
    live: AtomicUsize,
}

// SAFETY: `alloc` hands out disjoint ranges of a region owned by the heap alone (taken from the
// arena with `into_raw`), each aligned as asked and inside the region; a range is handed out
// again only once it is free: every allocation has been freed (`live` back to 0), or it was the
// most recent allocation and has been freed (`next` moves back to its start).
unsafe impl GlobalAlloc for BumpHeap {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let start = self.start.load(Ordering::Relaxed);
        if start == 0 {
            return core::ptr::null_mut();
        }
        let end = start + HEAP_BYTES as u64;
        let mut addr = 0;
        let bumped = self
            .next
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |next| {
                addr = next.next_multiple_of(layout.align() as u64);
                addr.checked_add(layout.size() as u64)
                    .filter(|&after| after <= end)
            });
        if bumped.is_err() {
            return core::ptr::null_mut();
        }
        self.live.fetch_add(1, Ordering::Relaxed);
        addr as *mut u8
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        if self.live.fetch_sub(1, Ordering::Relaxed) == 1 {
            self.next
                .store(self.start.load(Ordering::Relaxed), Ordering::Relaxed);
            return;
        }
        // The most recent allocation: its bytes are free again (the alignment gap stays used).
        let end = ptr as u64 + layout.size() as u64;
        let _ = self
            .next
            .compare_exchange(end, ptr as u64, Ordering::Relaxed, Ordering::Relaxed);
    }
}
