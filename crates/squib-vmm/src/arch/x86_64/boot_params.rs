//! The Linux zero page (`boot_params`): e820 map, command line, initrd.

use linux_loader::configurator::linux::LinuxBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};

use super::layout::{EBDA_START, HIMEM_START, RAM_64BIT_START, ZERO_PAGE_START, low_ram_end};
use crate::GuestMemory;

/// e820 type of usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type of reserved memory.
pub const E820_RESERVED: u32 = 2;

const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
/// "Undefined" boot loader id: squib has none assigned.
const KERNEL_LOADER_OTHER: u8 = 0xff;
/// The kernel may relocate itself to any 16 MiB boundary.
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;

/// One e820 map entry.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct E820Entry {
    /// First byte.
    pub addr: u64,
    /// Length in bytes.
    pub size: u64,
    /// [`E820_RAM`] or [`E820_RESERVED`].
    pub kind: u32,
}

/// The e820 map for `mem_bytes` of RAM: conventional memory below the EBDA, RAM from 1 MiB to
/// the MMIO gap, and RAM above 4 GiB. The EBDA and BIOS area (MP table, ACPI RSDP) are left
/// out, as on a PC.
pub fn e820_map(mem_bytes: u64) -> Vec<E820Entry> {
    let mut map = vec![E820Entry {
        addr: 0,
        size: EBDA_START,
        kind: E820_RAM,
    }];
    let low_end = low_ram_end(mem_bytes);
    if low_end > HIMEM_START.0 {
        map.push(E820Entry {
            addr: HIMEM_START.0,
            size: low_end - HIMEM_START.0,
            kind: E820_RAM,
        });
    }
    if mem_bytes > low_end {
        map.push(E820Entry {
            addr: RAM_64BIT_START,
            size: mem_bytes - low_end,
            kind: E820_RAM,
        });
    }
    map
}

/// What the zero page points the kernel at.
#[derive(Clone, Debug)]
pub struct ZeroPage<'a> {
    /// Command line address and length (without the NUL).
    pub cmdline: (u64, u32),
    /// Initrd address and length, if any.
    pub initrd: Option<(u32, u32)>,
    /// The memory map.
    pub e820: &'a [E820Entry],
    /// The ACPI RSDP (`acpi_rsdp_addr`), when squib built ACPI tables.
    pub acpi_rsdp: Option<u64>,
}

/// Why the zero page could not be written.
#[derive(Debug, thiserror::Error)]
pub enum ZeroPageError {
    /// More e820 entries than the zero page holds.
    #[error("{0} e820 entries do not fit the zero page (at most 128)")]
    TooManyE820Entries(usize),
    /// The command line must sit below 4 GiB.
    #[error("the command line at {0:#x} is above 4 GiB")]
    CmdlineTooHigh(u64),
    /// Guest memory refused the write.
    #[error("cannot write the zero page: {0}")]
    Write(#[from] linux_loader::configurator::Error),
}

/// Fills a `boot_params` and writes it at [`ZERO_PAGE_START`].
pub fn write_zero_page(mem: &GuestMemory, page: &ZeroPage<'_>) -> Result<(), ZeroPageError> {
    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;
    params.hdr.cmd_line_ptr =
        u32::try_from(page.cmdline.0).map_err(|_| ZeroPageError::CmdlineTooHigh(page.cmdline.0))?;
    params.hdr.cmdline_size = page.cmdline.1;
    if let Some((addr, size)) = page.initrd {
        params.hdr.ramdisk_image = addr;
        params.hdr.ramdisk_size = size;
    }
    params.acpi_rsdp_addr = page.acpi_rsdp.unwrap_or(0);
    if page.e820.len() > params.e820_table.len() {
        return Err(ZeroPageError::TooManyE820Entries(page.e820.len()));
    }
    for (slot, entry) in params.e820_table.iter_mut().zip(page.e820) {
        *slot = boot_e820_entry {
            addr: entry.addr,
            size: entry.size,
            r#type: entry.kind,
        };
    }
    // Fits: checked against the table's length (128) above.
    params.e820_entries = page.e820.len() as u8;
    let params = BootParams::new(&params, ZERO_PAGE_START);
    LinuxBootConfigurator::write_bootparams(&params, mem)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestAddress};

    #[test]
    fn e820_for_small_ram() {
        assert_eq!(
            e820_map(128 << 20),
            vec![
                E820Entry {
                    addr: 0,
                    size: 0x9_fc00,
                    kind: E820_RAM
                },
                E820Entry {
                    addr: 0x10_0000,
                    size: (128 << 20) - 0x10_0000,
                    kind: E820_RAM
                },
            ]
        );
    }

    #[test]
    fn e820_splits_around_the_gap() {
        let map = e820_map(4 << 30);
        assert_eq!(map.len(), 3);
        assert_eq!(map[1].addr + map[1].size, 0xc000_0000);
        assert_eq!(
            map[2],
            E820Entry {
                addr: 1 << 32,
                size: (4 << 30) - 0xc000_0000,
                kind: E820_RAM
            }
        );
    }

    #[test]
    fn zero_page_fields_are_where_the_kernel_reads_them() {
        let mem =
            squib_host::guest_memory::anonymous(&[(GuestAddress(0), 0x10_0000)], false).unwrap();
        let e820 = e820_map(64 << 20);
        let page = ZeroPage {
            cmdline: (0x2_0000, 42),
            initrd: Some((0x3f0_0000, 0x1000)),
            e820: &e820,
            acpi_rsdp: Some(0xe_0000),
        };
        write_zero_page(&mem, &page).unwrap();
        let at = |offset: u64| GuestAddress(0x7000 + offset);
        assert_eq!(mem.read_obj::<u16>(at(0x1fe)).unwrap(), 0xaa55);
        assert_eq!(mem.read_obj::<u32>(at(0x202)).unwrap(), 0x5372_6448);
        assert_eq!(mem.read_obj::<u32>(at(0x228)).unwrap(), 0x2_0000);
        assert_eq!(mem.read_obj::<u32>(at(0x238)).unwrap(), 42);
        assert_eq!(mem.read_obj::<u32>(at(0x218)).unwrap(), 0x3f0_0000);
        assert_eq!(mem.read_obj::<u32>(at(0x21c)).unwrap(), 0x1000);
        assert_eq!(mem.read_obj::<u8>(at(0x1e8)).unwrap(), 2);
        assert_eq!(
            mem.read_obj::<u64>(at(0x70)).unwrap(),
            0xe_0000,
            "acpi_rsdp_addr"
        );
        assert_eq!(mem.read_obj::<u64>(at(0x2d0 + 20)).unwrap(), 0x10_0000);
    }
}
