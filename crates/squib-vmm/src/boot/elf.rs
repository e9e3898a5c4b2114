//! Loading an ELF `vmlinux` (or any ELF64 guest) at its physical addresses.

use std::fs::File;

use linux_loader::loader::elf::{Elf, PvhBootCapability};
use linux_loader::loader::{Error as LoaderError, KernelLoader};
use vm_memory::GuestAddress;

use crate::GuestMemory;
use crate::arch::x86_64::layout::HIMEM_START;

/// Where the kernel landed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LoadedKernel {
    /// The ELF entry point (64-bit Linux boot protocol).
    pub entry: GuestAddress,
    /// First byte after the highest loaded segment.
    pub end: u64,
    /// The PVH entry point, when the ELF carries the PVH note.
    pub pvh_entry: Option<GuestAddress>,
}

/// Loads the ELF `kernel` into `mem`. Segments must lie at or above 1 MiB and inside RAM;
/// linux-loader checks both, as well as every header field.
pub fn load(mem: &GuestMemory, kernel: &mut File) -> Result<LoadedKernel, LoaderError> {
    let result = Elf::load(mem, None, kernel, Some(HIMEM_START))?;
    let pvh_entry = match result.pvh_boot_cap {
        PvhBootCapability::PvhEntryPresent(entry) => Some(entry),
        _ => None,
    };
    Ok(LoadedKernel {
        entry: result.kernel_load,
        end: result.kernel_end,
        pvh_entry,
    })
}
