//! Memory shared with devices: a bump arena after the image (`__dma_start`..`__dma_end` in the
//! linker script). Guest-physical and virtual addresses are equal (identity map), so an
//! allocation's address is what a device is given. Allocations live for the whole run.

use core::fmt;
use core::sync::atomic::{AtomicU64, Ordering};

unsafe extern "C" {
    // Linker-script symbols; only their addresses are used.
    static __dma_start: u8;
    static __dma_end: u8;
}

/// Bytes handed out so far.
static USED: AtomicU64 = AtomicU64::new(0);

/// The arena is exhausted.
#[derive(Debug, Clone, Copy)]
pub struct OutOfDmaMemory {
    pub requested: usize,
}

impl fmt::Display for OutOfDmaMemory {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "DMA arena exhausted ({} bytes requested)",
            self.requested
        )
    }
}

/// A zeroed, exclusively owned region of the arena.
///
/// Invariant: `[addr, addr + len)` lies in the arena and overlaps no other `DmaBuf`. The guest
/// touches it only through this value; a device writes it only while a request naming it is in
/// flight, and the driver orders those writes with fences around submission and completion.
#[derive(Debug)]
pub struct DmaBuf {
    addr: u64,
    len: usize,
}

impl DmaBuf {
    /// Allocates `len` zeroed bytes aligned to `align` (a power of two).
    pub fn new(len: usize, align: usize) -> Result<Self, OutOfDmaMemory> {
        let start = (&raw const __dma_start) as u64;
        let end = (&raw const __dma_end) as u64;
        let error = OutOfDmaMemory { requested: len };
        let mut addr = 0;
        USED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |used| {
            addr = (start + used).next_multiple_of(align as u64);
            let next = addr.checked_add(len as u64).filter(|&next| next <= end)?;
            Some(next - start)
        })
        .map_err(|_| error)?;
        let mut buf = Self { addr, len };
        buf.as_mut_slice().fill(0);
        Ok(buf)
    }

    /// Gives up the typed handle and returns the region's address: the region stays allocated
    /// (the arena never frees) and the caller becomes its only user. For code that manages
    /// memory itself (the third-party driver's `Hal` and the heap).
    pub fn into_raw(self) -> u64 {
        self.addr
    }

    /// The guest-physical address devices use.
    pub fn addr(&self) -> u64 {
        self.addr
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: by the type's invariant the range is mapped RAM owned by this value alone.
        unsafe { core::slice::from_raw_parts(self.addr as *const u8, self.len) }
    }

    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: as in `as_slice`, and `&mut self` makes the borrow exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.addr as *mut u8, self.len) }
    }

    /// The guest-physical address of byte `offset`.
    ///
    /// Panics if `offset` is out of bounds: handing a device memory outside the buffer would
    /// be a driver bug.
    pub fn addr_at(&self, offset: usize) -> u64 {
        assert!(
            offset <= self.len,
            "offset {offset} outside a {}-byte DMA buffer",
            self.len
        );
        self.addr + offset as u64
    }
}
