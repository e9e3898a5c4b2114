//! Register state at the 64-bit Linux boot protocol's entry: long mode, paging on with the
//! identity map, flat segments from the boot GDT, RSI at the zero page.

use kvm_bindings::{kvm_fpu, kvm_regs, kvm_sregs};
use vm_memory::{Bytes, GuestMemoryError};

use super::gdt::{self, BOOT_GDT, CODE_SELECTOR, DATA_SELECTOR, TSS_SELECTOR};
use super::layout::{BOOT_GDT_START, BOOT_IDT_START, BOOT_STACK_POINTER, ZERO_PAGE_START};
use crate::GuestMemory;

const X86_CR0_PE: u64 = 1;
const X86_CR0_PG: u64 = 1 << 31;
const X86_CR4_PAE: u64 = 1 << 5;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// RFLAGS bit 1 is reserved and always set; everything else (IF included) is clear.
const RFLAGS_RESERVED: u64 = 0x2;
/// x87 control word and MXCSR at reset.
const FPU_CONTROL_WORD: u16 = 0x37f;
const MXCSR_DEFAULT: u32 = 0x1f80;

/// Writes the boot GDT and an empty IDT.
pub fn write_descriptor_tables(mem: &GuestMemory) -> Result<(), GuestMemoryError> {
    mem.write_obj(BOOT_GDT, BOOT_GDT_START)?;
    mem.write_obj(0u64, BOOT_IDT_START)
}

/// General registers: RIP at the kernel entry, RSI at the zero page, the boot stack.
pub fn boot_regs(entry: u64) -> kvm_regs {
    kvm_regs {
        rflags: RFLAGS_RESERVED,
        rip: entry,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: ZERO_PAGE_START.0,
        ..Default::default()
    }
}

/// Special registers: `sregs` (as KVM reset them) switched to long mode with paging at `cr3`.
pub fn long_mode_sregs(mut sregs: kvm_sregs, cr3: u64) -> kvm_sregs {
    sregs.gdt.base = BOOT_GDT_START.0;
    sregs.gdt.limit = (std::mem::size_of_val(&BOOT_GDT) - 1) as u16;
    sregs.idt.base = BOOT_IDT_START.0;
    sregs.idt.limit = (std::mem::size_of::<u64>() - 1) as u16;

    let data = gdt::segment(BOOT_GDT[2], DATA_SELECTOR);
    sregs.cs = gdt::segment(BOOT_GDT[1], CODE_SELECTOR);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.tr = gdt::segment(BOOT_GDT[3], TSS_SELECTOR);

    sregs.cr3 = cr3;
    sregs.cr4 |= X86_CR4_PAE;
    sregs.cr0 |= X86_CR0_PE | X86_CR0_PG;
    sregs.efer |= EFER_LME | EFER_LMA;
    sregs
}

/// FPU state at reset.
pub fn boot_fpu() -> kvm_fpu {
    kvm_fpu {
        fcw: FPU_CONTROL_WORD,
        mxcsr: MXCSR_DEFAULT,
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::GuestAddress;

    #[test]
    fn entry_registers_follow_the_boot_protocol() {
        let regs = boot_regs(0x100_0000);
        assert_eq!(
            (regs.rip, regs.rsi, regs.rsp, regs.rflags),
            (0x100_0000, 0x7000, 0x8ff0, 2)
        );
    }

    #[test]
    fn sregs_enter_long_mode_with_paging() {
        let sregs = long_mode_sregs(kvm_sregs::default(), 0x9000);
        assert_eq!(sregs.cr3, 0x9000);
        assert_ne!(sregs.cr0 & X86_CR0_PG, 0);
        assert_ne!(sregs.cr0 & X86_CR0_PE, 0);
        assert_ne!(sregs.cr4 & X86_CR4_PAE, 0);
        assert_eq!(sregs.efer & (EFER_LME | EFER_LMA), EFER_LME | EFER_LMA);
        assert_eq!((sregs.cs.selector, sregs.cs.l), (0x08, 1));
        assert_eq!(
            (sregs.ss.selector, sregs.ds.selector, sregs.tr.selector),
            (0x10, 0x10, 0x18)
        );
        assert_eq!((sregs.gdt.base, sregs.gdt.limit), (0x500, 31));
        assert_eq!((sregs.idt.base, sregs.idt.limit), (0x520, 7));
    }

    #[test]
    fn descriptor_tables_land_at_their_addresses() {
        let mem = squib_host::guest_memory::anonymous(&[(GuestAddress(0), 0x1000)], false).unwrap();
        write_descriptor_tables(&mem).unwrap();
        assert_eq!(
            mem.read_obj::<u64>(GuestAddress(0x508)).unwrap(),
            BOOT_GDT[1]
        );
        assert_eq!(mem.read_obj::<u64>(GuestAddress(0x520)).unwrap(), 0);
    }
}
