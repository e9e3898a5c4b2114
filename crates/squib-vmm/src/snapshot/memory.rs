//! Guest memory in and out of the memory file.
//!
//! The file holds the RAM regions back to back (`MemoryRegionState::file_offset`), each page at
//! its own offset, so it can be mapped straight back. Writing skips pages that were never
//! touched (a `Full` snapshot) or not written since the last snapshot (a `Diff`): the file stays
//! sparse, and creating it costs what the guest used, not what it was given.

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::Path;

use kvm_ioctls::VmFd;
use squib_host::guest_memory::{self, GuestRegion};
use vm_memory::{FileOffset, GuestAddress, GuestMemoryBackend};

use super::SnapshotError;
use super::state::MemoryRegionState;
use crate::GuestMemory;

/// Guest pages (and KVM's dirty-log granule).
pub const PAGE_SIZE: u64 = 4096;
/// `/proc/self/pagemap` entry bits: page present in RAM, page swapped out.
const PAGEMAP_PRESENT: u64 = 1 << 63;
const PAGEMAP_SWAPPED: u64 = 1 << 62;

fn io(what: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> SnapshotError {
    let path = path.to_owned();
    move |source| SnapshotError::Io { what, path, source }
}

/// Runs of set bits in `pages` (one bool per page), as (first page, page count).
fn runs(pages: impl Iterator<Item = bool>) -> Vec<(u64, u64)> {
    let mut out: Vec<(u64, u64)> = Vec::new();
    for (index, used) in pages.enumerate() {
        if !used {
            continue;
        }
        let index = index as u64;
        match out.last_mut() {
            Some((start, count)) if *start + *count == index => *count += 1,
            _ => out.push((index, 1)),
        }
    }
    out
}

/// The pages of `[host_addr, host_addr + len)` that the process ever touched (present in RAM or
/// swapped out), from `/proc/self/pagemap`: a page the guest never used has no entry.
fn touched_pages(host_addr: u64, len: u64) -> Result<Vec<(u64, u64)>, SnapshotError> {
    let path = Path::new("/proc/self/pagemap");
    let file = File::open(path).map_err(io("open", path))?;
    let pages = len / PAGE_SIZE;
    let mut entries = vec![0u8; 8 * 4096];
    let mut touched = Vec::with_capacity(pages as usize);
    let mut done = 0;
    while done < pages {
        let batch = (pages - done).min(4096);
        let bytes = &mut entries[..(batch * 8) as usize];
        file.read_exact_at(bytes, (host_addr / PAGE_SIZE + done) * 8)
            .map_err(io("read", path))?;
        touched.extend(bytes.chunks_exact(8).map(|e| {
            let mut b = [0u8; 8];
            b.copy_from_slice(e);
            u64::from_le_bytes(b) & (PAGEMAP_PRESENT | PAGEMAP_SWAPPED) != 0
        }));
        done += batch;
    }
    Ok(runs(touched.into_iter()))
}

/// The pages of KVM slot `slot` (`len` bytes) written since the last call (KVM's dirty log,
/// which this call also clears).
fn dirty_pages(vm: &VmFd, slot: u32, len: u64) -> Result<Vec<(u64, u64)>, SnapshotError> {
    let bitmap = vm
        .get_dirty_log(slot, len as usize)
        .map_err(|source| SnapshotError::Kvm {
            op: "GET_DIRTY_LOG",
            source,
        })?;
    let pages = len / PAGE_SIZE;
    Ok(runs(
        (0..pages).map(|p| bitmap[(p / 64) as usize] & (1 << (p % 64)) != 0),
    ))
}

/// What backs guest memory, which decides where an untouched page's contents are.
#[derive(Debug)]
pub enum MemoryBacking {
    /// Booted: anonymous memory, an untouched page is zero.
    Anonymous,
    /// Loaded with the `File` backend: an untouched page still holds the memory file's data.
    File(File),
    /// Loaded with the `Uffd` backend: an untouched page is still with the handler.
    Uffd(UffdBackend),
}

/// Pages of a region of `pages` pages that are set in either run list.
fn union(pages: u64, a: &[(u64, u64)], b: &[(u64, u64)]) -> Vec<(u64, u64)> {
    let mut set = vec![false; pages as usize];
    for &(first, count) in a.iter().chain(b) {
        let end = (first + count).min(pages);
        for page in first.min(end)..end {
            set[page as usize] = true;
        }
    }
    runs(set.into_iter())
}

/// The pages of a region (`state`) that hold data in the memory file it was loaded from.
fn file_pages(file: &File, state: &MemoryRegionState) -> Result<Vec<(u64, u64)>, SnapshotError> {
    let ranges = squib_host::sparse::data_ranges(file).map_err(|source| SnapshotError::Io {
        what: "scan the loaded memory file",
        path: std::path::PathBuf::from("(memory file)"),
        source,
    })?;
    let (start, end) = (state.file_offset, state.file_offset + state.size);
    Ok(ranges
        .into_iter()
        .filter_map(|(s, e)| {
            let (s, e) = (s.max(start), e.min(end));
            (s < e).then(|| {
                let first = (s - start) / PAGE_SIZE;
                let last = (e - start).div_ceil(PAGE_SIZE);
                (first, last - first)
            })
        })
        .collect())
}

/// Which pages a snapshot writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pages {
    /// Every page the guest ever touched.
    Touched,
    /// Pages written since the last snapshot: by the vCPUs (KVM's dirty log; slots must log
    /// dirty pages) or by the devices (the regions' dirty bitmaps).
    Dirty,
}

/// The pages of region `slot` written since the last call, by the vCPUs or the devices; both
/// records are cleared.
fn written_pages(
    vm: &VmFd,
    slot: u32,
    region: &GuestRegion,
    len: u64,
) -> Result<Vec<(u64, u64)>, SnapshotError> {
    let by_vcpus = dirty_pages(vm, slot, len)?;
    let by_devices = guest_memory::take_dirty_pages(region);
    Ok(union(len / PAGE_SIZE, &by_vcpus, &by_devices))
}

/// Writes guest memory to a new sparse file at `path`; returns the bytes written. With
/// `track_dirty` a `Touched` snapshot also clears the dirty records (KVM's log and the
/// devices' bitmaps), so the next `Dirty` one holds only what changed after it.
pub fn write(
    vm: &VmFd,
    mem: &GuestMemory,
    backing: &MemoryBacking,
    layout: &[MemoryRegionState],
    path: &Path,
    pages: Pages,
    track_dirty: bool,
) -> Result<u64, SnapshotError> {
    let file = File::create(path).map_err(io("create the memory file", path))?;
    let total: u64 = layout.iter().map(|r| r.size).sum();
    file.set_len(total)
        .map_err(io("size the memory file", path))?;
    let mut written = 0;
    for (slot, (region, state)) in mem.iter().zip(layout).enumerate() {
        let runs = match pages {
            Pages::Touched => {
                if track_dirty {
                    written_pages(vm, slot as u32, region, state.size)?;
                }
                let touched = touched_pages(region.as_ptr() as u64, state.size)?;
                let count = state.size / PAGE_SIZE;
                match backing {
                    MemoryBacking::Anonymous => touched,
                    // Untouched pages live in the loaded file: write them too.
                    MemoryBacking::File(file) => union(count, &touched, &file_pages(file, state)?),
                    // Untouched pages are with the handler: reading them fetches them.
                    MemoryBacking::Uffd(_) => vec![(0, count)],
                }
            }
            Pages::Dirty => written_pages(vm, slot as u32, region, state.size)?,
        };
        for (first, count) in runs {
            let offset = first * PAGE_SIZE;
            let len = count * PAGE_SIZE;
            let slice = mem
                .get_slice(GuestAddress(state.guest_addr + offset), len as usize)
                .map_err(|e| SnapshotError::Invalid(format!("guest memory: {e}")))?;
            squib_host::guest_io::write_all_volatile_at(
                &file,
                &[slice],
                state.file_offset + offset,
            )
            .map_err(io("write the memory file", path))?;
            written += len;
        }
    }
    file.sync_data().map_err(io("sync the memory file", path))?;
    Ok(written)
}

/// Maps the memory file at `path` as guest RAM, `MAP_PRIVATE`: pages are read in on first
/// touch and the guest's writes stay in this process (copy-on-write), so loading costs the
/// same whatever the memory size and several clones can share one file. With `track_dirty`
/// the regions carry dirty bitmaps (for later Diff snapshots).
pub fn map_file(
    path: &Path,
    layout: &[MemoryRegionState],
    track_dirty: bool,
) -> Result<(GuestMemory, MemoryBacking), SnapshotError> {
    let file = File::open(path).map_err(io("open the memory file", path))?;
    let len = file
        .metadata()
        .map_err(io("stat the memory file", path))?
        .len();
    let needed: u64 = layout.iter().map(|r| r.size).sum();
    if len != needed {
        return Err(SnapshotError::MemoryFileSize {
            path: path.to_owned(),
            expected: needed,
            found: len,
        });
    }
    let backing = MemoryBacking::File(
        file.try_clone()
            .map_err(io("duplicate the descriptor of", path))?,
    );
    let file = std::sync::Arc::new(file);
    let mut regions = Vec::with_capacity(layout.len());
    for state in layout {
        let mapping = guest_memory::mapping_builder(state.size as usize, track_dirty)
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .with_file_offset(FileOffset::from_arc(file.clone(), state.file_offset))
            .build()
            .map_err(|e| SnapshotError::Map(e.to_string()))?;
        let region = GuestRegion::new(mapping, GuestAddress(state.guest_addr))
            .ok_or_else(|| SnapshotError::Map("region overflows the address space".into()))?;
        regions.push(region);
    }
    let mem = GuestMemory::from_regions(regions).map_err(|e| SnapshotError::Map(e.to_string()))?;
    Ok((mem, backing))
}

/// One region as Firecracker describes it to a page-fault handler (`GuestRegionUffdMapping`):
/// the handler finds the bytes for `[base_host_virt_addr, + size)` at `offset` in the memory
/// file. Firecracker sends the page size in bytes under both names.
#[derive(Debug, serde::Serialize)]
struct UffdMapping {
    base_host_virt_addr: u64,
    size: u64,
    offset: u64,
    page_size: u64,
    page_size_kib: u64,
}

/// The link to a page-fault handler, kept as long as the VM lives: the userfaultfd (so that a
/// handler that dies leaves faults waiting, never zero-filled) and the connection (whose close
/// tells the handler the VMM is gone).
#[derive(Debug)]
pub struct UffdBackend {
    _uffd: squib_host::uffd::Userfaultfd,
    _connection: std::os::unix::net::UnixStream,
}

/// Anonymous guest RAM for `layout` registered with a new userfaultfd, which is handed with
/// the regions' mappings to the page-fault handler listening at `socket` (Firecracker's
/// handshake: one JSON array and the descriptor, `SCM_RIGHTS`). Every page then comes from the
/// handler on first touch. With `track_dirty` the regions carry dirty bitmaps.
pub fn uffd_backed(
    layout: &[MemoryRegionState],
    socket: &Path,
    track_dirty: bool,
) -> Result<(GuestMemory, MemoryBacking), SnapshotError> {
    let ranges: Vec<(GuestAddress, usize)> = layout
        .iter()
        .map(|r| (GuestAddress(r.guest_addr), r.size as usize))
        .collect();
    let mem = guest_memory::anonymous(&ranges, track_dirty)
        .map_err(|e| SnapshotError::Map(e.to_string()))?;
    let uffd =
        squib_host::uffd::Userfaultfd::new().map_err(io("create a userfaultfd for", socket))?;
    let mut mappings = Vec::with_capacity(layout.len());
    for (region, state) in mem.iter().zip(layout) {
        let base = region.as_ptr() as u64;
        uffd.register(base, state.size)
            .map_err(io("register guest memory on the userfaultfd for", socket))?;
        mappings.push(UffdMapping {
            base_host_virt_addr: base,
            size: state.size,
            offset: state.file_offset,
            page_size: PAGE_SIZE,
            page_size_kib: PAGE_SIZE,
        });
    }
    let message = serde_json::to_vec(&mappings).map_err(SnapshotError::Encode)?;
    let stream = std::os::unix::net::UnixStream::connect(socket)
        .map_err(io("connect to the page-fault handler at", socket))?;
    squib_host::uffd::send(&stream, &message, &uffd)
        .map_err(io("hand the userfaultfd to the handler at", socket))?;
    Ok((
        mem,
        MemoryBacking::Uffd(UffdBackend {
            _uffd: uffd,
            _connection: stream,
        }),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runs_group_consecutive_pages() {
        let bits = [true, true, false, true, false, false, true, true, true];
        assert_eq!(runs(bits.into_iter()), vec![(0, 2), (3, 1), (6, 3)]);
        assert!(runs([false; 4].into_iter()).is_empty());
    }

    #[test]
    fn union_merges_overlapping_runs() {
        assert_eq!(
            union(10, &[(0, 2), (5, 1)], &[(1, 3), (9, 4)]),
            vec![(0, 4), (5, 1), (9, 1)]
        );
    }

    #[test]
    fn touched_pages_sees_only_written_pages() {
        let mem =
            squib_host::guest_memory::anonymous(&[(GuestAddress(0), 64 << 12)], false).unwrap();
        vm_memory::Bytes::write_obj(&mem, 1u8, GuestAddress(3 << 12)).unwrap();
        vm_memory::Bytes::write_obj(&mem, 1u8, GuestAddress((4 << 12) + 7)).unwrap();
        vm_memory::Bytes::write_obj(&mem, 1u8, GuestAddress(40 << 12)).unwrap();
        let region = mem.iter().next().unwrap();
        let runs = touched_pages(region.as_ptr() as u64, 64 << 12).unwrap();
        assert_eq!(runs, vec![(3, 2), (40, 1)]);
    }
}
