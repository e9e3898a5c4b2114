//! The `Hal` the third-party driver asks of its host: DMA pages and address translation. This
//! guest identity-maps its RAM and the MMIO window, so physical and virtual addresses are equal
//! and sharing a buffer is just naming its address.

use core::ptr::NonNull;

use virtio_drivers::{BufferDirection, Hal, PhysAddr};

use crate::dma::DmaBuf;

const PAGE_BYTES: usize = 4096;

#[derive(Debug)]
pub struct GuestHal;

// SAFETY: `dma_alloc` returns zeroed, page-aligned RAM from the DMA arena that nothing else uses
// (`DmaBuf::into_raw`), at an address that is both physical and virtual (identity map); shared
// buffers are guest RAM or stacks, likewise identity-mapped, and need no bouncing.
unsafe impl Hal for GuestHal {
    fn dma_alloc(pages: usize, _direction: BufferDirection) -> (PhysAddr, NonNull<u8>) {
        let allocated = pages
            .checked_mul(PAGE_BYTES)
            .and_then(|len| DmaBuf::new(len, PAGE_BYTES).ok())
            .map(DmaBuf::into_raw)
            .and_then(|addr| Some((addr, NonNull::new(addr as *mut u8)?)));
        // The driver treats physical address 0 as "allocation failed".
        allocated.unwrap_or((0, NonNull::dangling()))
    }

    unsafe fn dma_dealloc(_paddr: PhysAddr, _vaddr: NonNull<u8>, _pages: usize) -> i32 {
        // The arena never frees; the pages stay unused for the rest of the run.
        0
    }

    unsafe fn mmio_phys_to_virt(paddr: PhysAddr, _size: usize) -> NonNull<u8> {
        NonNull::new(paddr as *mut u8).expect("the driver maps an MMIO region at address 0")
    }

    unsafe fn share(buffer: NonNull<[u8]>, _direction: BufferDirection) -> PhysAddr {
        buffer.cast::<u8>().as_ptr() as PhysAddr
    }

    unsafe fn unshare(_paddr: PhysAddr, _buffer: NonNull<[u8]>, _direction: BufferDirection) {}
}
