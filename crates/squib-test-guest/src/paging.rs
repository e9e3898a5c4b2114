//! The guest's page tables: an identity map of the first 4 GiB with 2 MiB pages, all of it
//! user-accessible (CPL3 does the work and touches RAM, the boot structures and the MMIO
//! window). Assembled into the image so CPL0 only loads CR3.

use core::arch::global_asm;

/// Start of the 32-bit MMIO gap (virtio-mmio, boot timer, IOAPIC, LAPIC): mapped uncached.
pub const MMIO_WINDOW_START: u64 = 0xc000_0000;

const PRESENT: u64 = 1;
const WRITABLE: u64 = 1 << 1;
const USER: u64 = 1 << 2;
const WRITE_THROUGH: u64 = 1 << 3;
const CACHE_DISABLE: u64 = 1 << 4;
const HUGE: u64 = 1 << 7;

const TABLE: u64 = PRESENT | WRITABLE | USER;
const RAM: u64 = TABLE | HUGE;
const MMIO: u64 = RAM | WRITE_THROUGH | CACHE_DISABLE;

global_asm!(
    r#"
    .pushsection .data.page_tables, "aw"
    .balign 4096
    .globl guest_pml4
guest_pml4:
    .quad guest_pdpt + {table}
    .fill 511, 8, 0
guest_pdpt:
    .quad guest_pd + {table}, guest_pd + 0x1000 + {table}
    .quad guest_pd + 0x2000 + {table}, guest_pd + 0x3000 + {table}
    .fill 508, 8, 0
guest_pd:                           /* four page directories, 2048 entries, 4 GiB */
    .set address, 0
    .rept 2048
    .if address < {mmio_start}
    .quad address + {ram}
    .else
    .quad address + {mmio}
    .endif
    .set address, address + 0x200000
    .endr
    .popsection
    "#,
    table = const TABLE,
    ram = const RAM,
    mmio = const MMIO,
    mmio_start = const MMIO_WINDOW_START,
    options(att_syntax)
);
