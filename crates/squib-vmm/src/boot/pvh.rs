//! PVH boot: the 32-bit entry Xen defined and Linux, QEMU and Firecracker use for direct boot.
//!
//! An ELF kernel that carries the `XEN_ELFNOTE_PHYS32_ENTRY` note (linux-loader reports it as
//! `pvh_boot_cap`) can be entered in flat 32-bit protected mode with paging off and EBX pointing
//! at an `hvm_start_info`, which carries the command line, the memory map, the initrd (as a
//! module) and the RSDP. The kernel builds its own page tables, so squib's need not exist.

use std::str::FromStr;

use kvm_bindings::{kvm_regs, kvm_segment, kvm_sregs};
use linux_loader::configurator::pvh::PvhBootConfigurator;
use linux_loader::configurator::{BootConfigurator, BootParams};
use linux_loader::loader::bootparam::boot_e820_entry;
use linux_loader::loader::elf::start_info::{
    hvm_memmap_table_entry, hvm_modlist_entry, hvm_start_info,
};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};

/// `hvm_start_info` goes here (56 bytes) …
pub const START_INFO_ADDR: GuestAddress = GuestAddress(0x6000);
/// … the initrd's module entry here (32 bytes) …
const MODLIST_ADDR: GuestAddress = GuestAddress(0x6040);
/// … and the memory map here, up to the zero page at 0x7000.
const MEMMAP_ADDR: GuestAddress = GuestAddress(0x6080);
/// Memory-map entries that fit between `MEMMAP_ADDR` and 0x7000 (24 bytes each).
pub const MAX_MEMMAP_ENTRIES: usize = (0x7000 - 0x6080) / 24;

/// The boot GDT's address (shared with the 64-bit path, which writes its own table there).
pub const GDT_ADDR: GuestAddress = GuestAddress(0x500);
/// Flat 32-bit segments: null, code 0x08, data 0x10, TSS 0x18 (what KVM needs in TR).
const GDT: [u64; 4] = [
    0,
    gdt_entry(0xc09b, 0, 0xffff_ffff),
    gdt_entry(0xc093, 0, 0xffff_ffff),
    gdt_entry(0x008b, 0, 0x67),
];
const CODE_SELECTOR: u16 = 0x08;
const DATA_SELECTOR: u16 = 0x10;
const TSS_SELECTOR: u16 = 0x18;

const XEN_HVM_START_MAGIC: u32 = 0x336e_c578;
/// `hvm_start_info` version 1 has the memory map fields.
const START_INFO_VERSION: u32 = 1;
const X86_CR0_PE: u64 = 1 << 0;
const X86_CR0_ET: u64 = 1 << 4;

/// Which entry squib uses for an ELF kernel.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum BootProtocol {
    /// PVH when the kernel has the note, else the 64-bit Linux boot protocol (as Firecracker).
    #[default]
    Auto,
    /// PVH; refused for a kernel without the note.
    Pvh,
    /// The 64-bit Linux boot protocol, even when the kernel could do PVH.
    Linux64,
}

impl FromStr for BootProtocol {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "auto" => Ok(Self::Auto),
            "pvh" => Ok(Self::Pvh),
            "linux64" => Ok(Self::Linux64),
            other => Err(format!(
                "unknown boot protocol `{other}` (expected auto, pvh or linux64)"
            )),
        }
    }
}

/// Why a PVH boot could not be set up.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum PvhError {
    /// `--boot-protocol pvh` for a kernel without the PVH note.
    #[error(
        "the kernel has no PVH entry point (XEN_ELFNOTE_PHYS32_ENTRY); use --boot-protocol auto or linux64"
    )]
    NoPvhEntry,
    /// The PVH entry point must be reachable from 32-bit code.
    #[error("the kernel's PVH entry point {0:#x} is above 4 GiB")]
    EntryAbove4G(u64),
    /// More memory-map entries than fit below the zero page.
    #[error("{0} memory map entries are more than the {MAX_MEMMAP_ENTRIES} PVH boot supports")]
    MemoryMapTooLong(usize),
    /// linux-loader could not write the structures.
    #[error("cannot write the PVH start info: {0}")]
    Write(String),
}

/// What the PVH start info tells the kernel.
#[derive(Clone, Copy, Debug)]
pub struct PvhBootInfo<'a> {
    /// Guest RAM and reserved ranges, in e820 terms.
    pub memory_map: &'a [boot_e820_entry],
    /// Where the NUL-terminated command line is.
    pub cmdline_addr: GuestAddress,
    /// Where the RSDP is, when squib built ACPI tables.
    pub rsdp_addr: Option<GuestAddress>,
    /// The initrd's address and size, if any.
    pub initrd: Option<(GuestAddress, u64)>,
}

/// Decides whether an ELF kernel boots through PVH: `Some(entry)` for PVH, `None` for 64-bit.
/// `pvh_entry` is the kernel's PVH entry point (linux-loader's `pvh_boot_cap`), if it has one.
pub fn choose_entry(
    protocol: BootProtocol,
    pvh_entry: Option<GuestAddress>,
) -> Result<Option<GuestAddress>, PvhError> {
    let chosen = match (protocol, pvh_entry) {
        (BootProtocol::Linux64, _) => None,
        (BootProtocol::Auto, entry) => entry,
        (BootProtocol::Pvh, Some(entry)) => Some(entry),
        (BootProtocol::Pvh, None) => return Err(PvhError::NoPvhEntry),
    };
    match chosen {
        Some(entry) if entry.0 > u64::from(u32::MAX) => Err(PvhError::EntryAbove4G(entry.0)),
        other => Ok(other),
    }
}

/// Writes `hvm_start_info`, its module list and memory map, and the 32-bit GDT; returns the
/// start info's address (the entry's EBX).
pub fn write_start_info<M: GuestMemoryBackend>(
    mem: &M,
    info: &PvhBootInfo<'_>,
) -> Result<GuestAddress, PvhError> {
    if info.memory_map.len() > MAX_MEMMAP_ENTRIES {
        return Err(PvhError::MemoryMapTooLong(info.memory_map.len()));
    }
    let memmap: Vec<hvm_memmap_table_entry> = info
        .memory_map
        .iter()
        .map(|e| hvm_memmap_table_entry {
            addr: e.addr,
            size: e.size,
            type_: e.r#type,
            reserved: 0,
        })
        .collect();
    let mut start_info = hvm_start_info {
        magic: XEN_HVM_START_MAGIC,
        version: START_INFO_VERSION,
        cmdline_paddr: info.cmdline_addr.0,
        rsdp_paddr: info.rsdp_addr.map_or(0, |a| a.0),
        memmap_paddr: MEMMAP_ADDR.0,
        // Bounded by MAX_MEMMAP_ENTRIES above.
        memmap_entries: memmap.len() as u32,
        ..Default::default()
    };
    let mut params = BootParams::new(&start_info, START_INFO_ADDR);
    if let Some((addr, size)) = info.initrd {
        start_info.nr_modules = 1;
        start_info.modlist_paddr = MODLIST_ADDR.0;
        params = BootParams::new(&start_info, START_INFO_ADDR);
        let module = hvm_modlist_entry {
            paddr: addr.0,
            size,
            cmdline_paddr: 0,
            reserved: 0,
        };
        params.set_modules(&[module], MODLIST_ADDR);
    }
    params.set_sections(&memmap, MEMMAP_ADDR);
    PvhBootConfigurator::write_bootparams(&params, mem)
        .map_err(|e| PvhError::Write(e.to_string()))?;

    let gdt: Vec<u8> = GDT.iter().flat_map(|e| e.to_le_bytes()).collect();
    mem.write_slice(&gdt, GDT_ADDR)
        .map_err(|e| PvhError::Write(format!("GDT: {e}")))?;
    Ok(START_INFO_ADDR)
}

/// General registers at the PVH entry: EIP = entry, EBX = start info, interrupts off.
pub fn entry_regs(entry: GuestAddress, start_info: GuestAddress) -> kvm_regs {
    kvm_regs {
        rip: entry.0,
        rbx: start_info.0,
        rflags: 0x2,
        ..Default::default()
    }
}

/// Puts `sregs` (the vCPU's current ones, so the APIC base survives) into flat 32-bit protected
/// mode: CR0.PE, paging off, no long mode, segments from `GDT` at `GDT_ADDR`.
pub fn set_entry_sregs(sregs: &mut kvm_sregs) {
    sregs.cs = segment(GDT[1], CODE_SELECTOR);
    let data = segment(GDT[2], DATA_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = segment(GDT[3], TSS_SELECTOR);
    sregs.gdt.base = GDT_ADDR.0;
    sregs.gdt.limit = (GDT.len() * 8 - 1) as u16;
    sregs.idt.base = 0;
    sregs.idt.limit = 0;
    sregs.cr0 = X86_CR0_PE | X86_CR0_ET;
    sregs.cr3 = 0;
    sregs.cr4 = 0;
    sregs.efer = 0;
}

/// A GDT descriptor from the access/flags word (`0xc09b` style), base and limit.
const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// The hidden part of a segment register, as the CPU would load it from `descriptor`.
fn segment(descriptor: u64, selector: u16) -> kvm_segment {
    let bit = |n: u32| ((descriptor >> n) & 1) as u8;
    let granular = bit(55) == 1;
    let raw_limit = ((descriptor & 0xffff) | ((descriptor >> 32) & 0xf_0000)) as u32;
    kvm_segment {
        base: ((descriptor >> 16) & 0xff_ffff) | ((descriptor >> 32) & 0xff00_0000),
        limit: if granular {
            (raw_limit << 12) | 0xfff
        } else {
            raw_limit
        },
        selector,
        type_: ((descriptor >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((descriptor >> 45) & 0x3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g: bit(55),
        avl: bit(52),
        unusable: 0,
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestMemoryMmap;

    fn mem() -> GuestMemoryMmap {
        GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 16 << 20)]).unwrap()
    }

    fn e820(addr: u64, size: u64, r#type: u32) -> boot_e820_entry {
        boot_e820_entry { addr, size, r#type }
    }

    #[test]
    fn auto_prefers_pvh_and_the_user_can_force_either_way() {
        let pvh = Some(GuestAddress(0x100_0f00));
        assert_eq!(choose_entry(BootProtocol::Auto, pvh), Ok(pvh));
        assert_eq!(choose_entry(BootProtocol::Auto, None), Ok(None));
        assert_eq!(choose_entry(BootProtocol::Linux64, pvh), Ok(None));
        assert_eq!(choose_entry(BootProtocol::Pvh, pvh), Ok(pvh));
        assert_eq!(
            choose_entry(BootProtocol::Pvh, None),
            Err(PvhError::NoPvhEntry)
        );
        let high = Some(GuestAddress(1 << 32));
        assert_eq!(
            choose_entry(BootProtocol::Auto, high),
            Err(PvhError::EntryAbove4G(1 << 32))
        );
        assert_eq!("pvh".parse(), Ok(BootProtocol::Pvh));
        assert!("elf".parse::<BootProtocol>().unwrap_err().contains("`elf`"));
    }

    #[test]
    fn start_info_carries_cmdline_memory_map_initrd_and_rsdp() {
        let mem = mem();
        let map = [
            e820(0, 0x9fc00, 1),
            e820(0xe0000, 0x20000, 2),
            e820(0x10_0000, 0xf0_0000, 1),
        ];
        let info = PvhBootInfo {
            memory_map: &map,
            cmdline_addr: GuestAddress(0x2_0000),
            rsdp_addr: Some(GuestAddress(0xe_0000)),
            initrd: Some((GuestAddress(0x80_0000), 0x1234)),
        };
        let at = write_start_info(&mem, &info).unwrap();
        let si: hvm_start_info = mem.read_obj(at).unwrap();
        assert_eq!((si.magic, si.version), (XEN_HVM_START_MAGIC, 1));
        assert_eq!(si.cmdline_paddr, 0x2_0000);
        assert_eq!(si.rsdp_paddr, 0xe_0000);
        assert_eq!((si.nr_modules, si.memmap_entries), (1, 3));
        let module: hvm_modlist_entry = mem.read_obj(GuestAddress(si.modlist_paddr)).unwrap();
        assert_eq!((module.paddr, module.size), (0x80_0000, 0x1234));
        for (i, want) in map.iter().enumerate() {
            let addr = GuestAddress(si.memmap_paddr + 24 * i as u64);
            let got: hvm_memmap_table_entry = mem.read_obj(addr).unwrap();
            assert_eq!(
                (got.addr, got.size, got.type_),
                (want.addr, want.size, want.r#type)
            );
        }
        assert!(
            si.memmap_paddr + 24 * 3 <= 0x7000,
            "the map stays below the zero page"
        );
    }

    #[test]
    fn without_initrd_or_acpi_the_fields_are_zero() {
        let mem = mem();
        let map = [e820(0, 0x9fc00, 1)];
        let info = PvhBootInfo {
            memory_map: &map,
            cmdline_addr: GuestAddress(0x2_0000),
            rsdp_addr: None,
            initrd: None,
        };
        let si: hvm_start_info = mem
            .read_obj(write_start_info(&mem, &info).unwrap())
            .unwrap();
        assert_eq!((si.nr_modules, si.modlist_paddr, si.rsdp_paddr), (0, 0, 0));
    }

    #[test]
    fn an_overlong_memory_map_is_refused() {
        let map = vec![e820(0, 0x1000, 1); MAX_MEMMAP_ENTRIES + 1];
        let info = PvhBootInfo {
            memory_map: &map,
            cmdline_addr: GuestAddress(0x2_0000),
            rsdp_addr: None,
            initrd: None,
        };
        assert_eq!(
            write_start_info(&mem(), &info),
            Err(PvhError::MemoryMapTooLong(MAX_MEMMAP_ENTRIES + 1))
        );
    }

    #[test]
    fn entry_state_is_flat_32_bit_protected_mode() {
        let regs = entry_regs(GuestAddress(0x100_0f00), START_INFO_ADDR);
        assert_eq!((regs.rip, regs.rbx, regs.rflags), (0x100_0f00, 0x6000, 2));
        let mut sregs = kvm_sregs {
            apic_base: 0xfee0_0900,
            efer: 0x500,
            ..Default::default()
        };
        set_entry_sregs(&mut sregs);
        assert_eq!(sregs.cr0 & 1, 1, "protected mode");
        assert_eq!(sregs.cr0 & (1 << 31), 0, "paging off");
        assert_eq!(sregs.efer, 0, "no long mode");
        assert_eq!(sregs.apic_base, 0xfee0_0900, "left alone");
        let cs = sregs.cs;
        assert_eq!((cs.base, cs.limit, cs.selector), (0, 0xffff_ffff, 0x08));
        assert_eq!(
            (cs.type_, cs.db, cs.l, cs.g, cs.s, cs.present),
            (0xb, 1, 0, 1, 1, 1)
        );
        let ds = sregs.ds;
        assert_eq!(
            (ds.limit, ds.selector, ds.type_, ds.db),
            (0xffff_ffff, 0x10, 0x3, 1)
        );
        let tr = sregs.tr;
        assert_eq!(
            (tr.selector, tr.type_, tr.s, tr.limit),
            (0x18, 0xb, 0, 0x67)
        );
    }

    #[test]
    fn the_gdt_in_memory_matches_the_loaded_segments() {
        let mem = mem();
        let map = [e820(0, 0x9fc00, 1)];
        let info = PvhBootInfo {
            memory_map: &map,
            cmdline_addr: GuestAddress(0x2_0000),
            rsdp_addr: None,
            initrd: None,
        };
        write_start_info(&mem, &info).unwrap();
        let code: u64 = mem.read_obj(GuestAddress(GDT_ADDR.0 + 8)).unwrap();
        assert_eq!(code, 0x00cf_9b00_0000_ffff);
        let data: u64 = mem.read_obj(GuestAddress(GDT_ADDR.0 + 16)).unwrap();
        assert_eq!(data, 0x00cf_9300_0000_ffff);
    }
}
