//! x86_64: the memory map and the CPU state a guest boots with.

pub mod boot_params;
pub mod cpuid;
pub mod gdt;
pub mod lapic;
pub mod layout;
pub mod msr;
pub mod paging;
pub mod regs;
