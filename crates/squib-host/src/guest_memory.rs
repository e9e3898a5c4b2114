//! squib's guest memory type, which every boundary that touches guest memory shares: mmaps
//! with an optional page-level dirty bitmap (vm-memory's `AtomicBitmap`), as Firecracker does.
//!
//! With `track_dirty_pages` each region carries a bitmap, and every write through vm-memory's
//! accessors (`write_slice`, `write_obj`, `VolatileSlice::copy_from`, `read_volatile` from a
//! file or socket) marks its pages: the devices' writes into guest memory, which KVM's dirty
//! log does not see. Writers that bypass the accessors (raw host addresses handed to
//! `preadv(2)` or io_uring: [`crate::guest_io`], [`crate::uring`]) mark the pages themselves.
//! Without tracking the bitmap is `None` and marking costs one branch. The one `unsafe` here
//! builds an empty slice ([`empty_slice`]).

use vm_memory::bitmap::{AtomicBitmap, BS, Bitmap};
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryRegion, VolatileSlice};

/// A region's dirty bitmap, present only when dirty pages are tracked.
pub type GuestBitmap = Option<AtomicBitmap>;
/// Guest memory as squib maps it: anonymous or file-backed mmaps.
pub type GuestMemory = vm_memory::GuestMemoryMmap<GuestBitmap>;
/// One region of [`GuestMemory`].
pub type GuestRegion = vm_memory::GuestRegionMmap<GuestBitmap>;
/// A region's mapping.
pub type GuestMapping = vm_memory::MmapRegion<GuestBitmap>;
/// A slice of guest memory, as the accessors hand them out.
pub type GuestSlice<'a> = VolatileSlice<'a, BS<'a, GuestBitmap>>;

/// Dirty-page bookkeeping granularity (the host page).
pub const PAGE_SIZE: usize = 4096;

/// Why guest memory could not be built.
#[derive(Debug, thiserror::Error)]
pub enum GuestMemoryError {
    /// The mapping failed.
    #[error("cannot map guest memory: {0}")]
    Map(#[from] vm_memory::mmap::MmapRegionError),
    /// The regions overlap or overflow.
    #[error("invalid guest memory layout: {0}")]
    Layout(#[from] vm_memory::GuestRegionCollectionError),
    /// A region overflows the address space.
    #[error("a guest memory region overflows the address space")]
    Overflow,
}

/// A new, empty bitmap for `len` bytes when `track` (else `None`).
pub fn bitmap(len: usize, track: bool) -> GuestBitmap {
    track.then(|| {
        AtomicBitmap::new(
            len,
            std::num::NonZeroUsize::new(PAGE_SIZE).unwrap_or(std::num::NonZeroUsize::MIN),
        )
    })
}

/// A builder for a `len`-byte region's mapping, with a dirty bitmap when `track`.
pub fn mapping_builder(len: usize, track: bool) -> MmapRegionBuilder<GuestBitmap> {
    MmapRegionBuilder::new_with_bitmap(len, bitmap(len, track))
}

/// Private anonymous guest RAM for `ranges` (nothing is touched), tracking dirty pages if
/// `track`.
pub fn anonymous(
    ranges: &[(GuestAddress, usize)],
    track: bool,
) -> Result<GuestMemory, GuestMemoryError> {
    let mut regions = Vec::with_capacity(ranges.len());
    for &(addr, len) in ranges {
        let mapping = mapping_builder(len, track)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_ANONYMOUS | libc::MAP_NORESERVE | libc::MAP_PRIVATE)
            .build()?;
        regions.push(GuestRegion::new(mapping, addr).ok_or(GuestMemoryError::Overflow)?);
    }
    Ok(GuestMemory::from_regions(regions)?)
}

/// An empty slice, to initialise the fixed arrays of slices the devices gather requests into
/// (a `VolatileSlice` with a bitmap has no safe constructor).
pub fn empty_slice() -> GuestSlice<'static> {
    // SAFETY: the slice is zero bytes long, so no byte at the (dangling, non-null, aligned)
    // address is ever read or written, whatever its lifetime; it has no bitmap and no mapping.
    unsafe { VolatileSlice::with_bitmap(std::ptr::NonNull::dangling().as_ptr(), 0, None, None) }
}

/// Marks `slice`'s pages dirty: for writers that reach guest memory through a raw host address
/// rather than vm-memory's accessors.
pub fn mark_dirty(slice: &GuestSlice<'_>) {
    slice.bitmap().mark_dirty(0, slice.len());
}

/// The pages of `region` marked dirty since the last call, as runs of (first page, count);
/// the bitmap is cleared. Empty when the region does not track dirty pages.
pub fn take_dirty_pages(region: &GuestRegion) -> Vec<(u64, u64)> {
    // The mapping's own bitmap (the region trait's `bitmap()` is a slice view without it).
    let Some(bitmap) = std::ops::Deref::deref(region).bitmap() else {
        return Vec::new();
    };
    let pages = region.len().div_ceil(PAGE_SIZE as u64);
    let words = bitmap.get_and_reset();
    let mut runs: Vec<(u64, u64)> = Vec::new();
    for page in 0..pages {
        let (word, bit) = ((page / 64) as usize, page % 64);
        if words.get(word).is_some_and(|w| w & (1 << bit) != 0) {
            match runs.last_mut() {
                Some((first, count)) if *first + *count == page => *count += 1,
                _ => runs.push((page, 1)),
            }
        }
    }
    runs
}

/// Clears `mem`'s dirty bitmaps (after a snapshot that saved every page).
pub fn clear_dirty_pages(mem: &GuestMemory) {
    for region in mem.iter() {
        if let Some(bitmap) = std::ops::Deref::deref(region).bitmap() {
            bitmap.reset();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn accessor_writes_mark_pages_only_when_tracking() {
        let ranges = [
            (GuestAddress(0), 64 * PAGE_SIZE),
            (GuestAddress(1 << 20), 8 * PAGE_SIZE),
        ];
        let mem = anonymous(&ranges, true).unwrap();
        mem.write_obj(1u8, GuestAddress(3 * PAGE_SIZE as u64))
            .unwrap();
        mem.write_slice(&[1u8; 2], GuestAddress(5 * PAGE_SIZE as u64 - 1))
            .unwrap();
        let _ = mem
            .read_obj::<u8>(GuestAddress(40 * PAGE_SIZE as u64))
            .unwrap();
        mark_dirty(&mem.get_slice(GuestAddress((1 << 20) + 4096), 10).unwrap());
        let regions: Vec<_> = mem.iter().collect();
        // Page 3, then pages 4 and 5 (a write across their boundary); reads mark nothing.
        assert_eq!(take_dirty_pages(regions[0]), vec![(3, 3)]);
        assert_eq!(take_dirty_pages(regions[1]), vec![(1, 1)]);
        assert!(take_dirty_pages(regions[0]).is_empty(), "taking clears");
        let untracked = anonymous(&ranges, false).unwrap();
        untracked.write_obj(1u8, GuestAddress(0)).unwrap();
        assert!(take_dirty_pages(untracked.iter().next().unwrap()).is_empty());
    }
}
