//! The boot page tables: an identity map of the first 1 GiB with 2 MiB pages.

use vm_memory::{Bytes, GuestMemoryError};

use super::layout::{PD_START, PDPT_START, PML4_START};
use crate::GuestMemory;

const PRESENT_WRITABLE: u64 = 0b11;
const PAGE_SIZE_2M: u64 = 1 << 7;

/// Writes the PML4, PDPT and PD; returns the value for CR3.
pub fn write_identity_map(mem: &GuestMemory) -> Result<u64, GuestMemoryError> {
    mem.write_obj(PDPT_START.0 | PRESENT_WRITABLE, PML4_START)?;
    mem.write_obj(PD_START.0 | PRESENT_WRITABLE, PDPT_START)?;
    let mut pd = [0u8; 512 * 8];
    for (i, entry) in pd.chunks_exact_mut(8).enumerate() {
        entry
            .copy_from_slice(&(((i as u64) << 21) | PAGE_SIZE_2M | PRESENT_WRITABLE).to_le_bytes());
    }
    mem.write_slice(&pd, PD_START)?;
    Ok(PML4_START.0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn maps_the_first_gigabyte_one_to_one() {
        let mem =
            squib_host::guest_memory::anonymous(&[(GuestAddress(0), 0x10_0000)], false).unwrap();
        assert_eq!(write_identity_map(&mem).unwrap(), 0x9000);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x9000)).unwrap(), 0xa003);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0xa000)).unwrap(), 0xb003);
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0xb000)).unwrap(), 0x83);
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0xb000 + 511 * 8)).unwrap(),
            (511 << 21) | 0x83
        );
    }

    #[test]
    fn too_little_memory_is_an_error() {
        let mem = squib_host::guest_memory::anonymous(&[(GuestAddress(0), 0xa000)], false).unwrap();
        assert!(write_identity_map(&mem).is_err());
    }
}
