//! Placing the initrd: page-aligned, at the top of RAM below the MMIO gap.

use std::fs::File;

use vm_memory::{Bytes, GuestAddress};

use crate::GuestMemory;

const PAGE_SIZE: u64 = 0x1000;

/// Why the initrd could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum InitrdError {
    /// The file could not be inspected.
    #[error("cannot read the initrd: {0}")]
    Io(#[from] std::io::Error),
    /// It does not fit between the kernel and the top of low RAM.
    #[error(
        "the initrd ({size} bytes) does not fit between the kernel (ends at {kernel_end:#x}) and \
         the top of low RAM ({ram_end:#x}): give the VM more memory"
    )]
    TooLarge {
        /// Initrd size.
        size: u64,
        /// End of the kernel image.
        kernel_end: u64,
        /// End of RAM below the MMIO gap.
        ram_end: u64,
    },
    /// Copying it into guest memory failed.
    #[error("cannot copy the initrd into guest memory: {0}")]
    Copy(#[from] vm_memory::GuestMemoryError),
}

/// Where the initrd of `size` bytes goes, or why it cannot.
pub fn placement(size: u64, kernel_end: u64, ram_end: u64) -> Result<u64, InitrdError> {
    let too_large = InitrdError::TooLarge {
        size,
        kernel_end,
        ram_end,
    };
    let start = ram_end.checked_sub(size).ok_or(too_large)? & !(PAGE_SIZE - 1);
    // The initrd address is a 32-bit field of the zero page; low RAM ends below 4 GiB.
    if start < kernel_end || size > u64::from(u32::MAX) {
        return Err(InitrdError::TooLarge {
            size,
            kernel_end,
            ram_end,
        });
    }
    Ok(start)
}

/// Copies `initrd` into `mem` below `ram_end`; returns its address and size.
pub fn load(
    mem: &GuestMemory,
    initrd: &mut File,
    kernel_end: u64,
    ram_end: u64,
) -> Result<(u32, u32), InitrdError> {
    let size = initrd.metadata()?.len();
    let start = placement(size, kernel_end, ram_end)?;
    // `placement` bounds both below 4 GiB.
    let len = size as usize;
    mem.read_exact_volatile_from(GuestAddress(start), initrd, len)?;
    Ok((start as u32, size as u32))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initrd_sits_page_aligned_at_the_top() {
        assert_eq!(
            placement(0x1800, 0x20_0000, 0x800_0000).unwrap(),
            0x7ff_e000
        );
        assert_eq!(
            placement(0x1000, 0x20_0000, 0x800_0000).unwrap(),
            0x7ff_f000
        );
    }

    #[test]
    fn initrd_overlapping_the_kernel_is_refused() {
        assert!(placement(0x800_0000, 0x20_0000, 0x800_0000).is_err());
        assert!(placement(u64::MAX, 0, 0x800_0000).is_err());
    }

    #[test]
    fn initrd_bytes_are_copied() {
        use std::io::Write;
        let mem =
            squib_host::guest_memory::anonymous(&[(GuestAddress(0), 0x40_0000)], false).unwrap();
        let mut file = tempfile::tempfile().unwrap();
        file.write_all(b"initrd!").unwrap();
        use std::io::Seek;
        file.rewind().unwrap();
        let (addr, size) = load(&mem, &mut file, 0x20_0000, 0x40_0000).unwrap();
        assert_eq!((addr, size), (0x3f_f000, 7));
        let mut buf = [0u8; 7];
        mem.read_slice(&mut buf, GuestAddress(0x3f_f000)).unwrap();
        assert_eq!(&buf, b"initrd!");
    }
}
