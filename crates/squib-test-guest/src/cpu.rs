//! Descriptor tables and the CPL0 set-up.
//!
//! Every table is assembled into the image, complete, so CPL0 (emulated at ~1 µs an
//! instruction on our KVM) only loads registers. Addresses that a descriptor splits into
//! fields (the TSS base) are split by the linker script (`TSS_BASE_*`).

use core::arch::global_asm;

pub const KERNEL_CS: u16 = 0x08;
pub const KERNEL_DS: u16 = 0x10;
pub const USER_DS: u16 = 0x18;
pub const USER_CS: u16 = 0x20;
pub const TSS_SELECTOR: u16 = 0x28;

/// CR4 with only PAE: no SMEP/SMAP, because every page is a user page (CPL3 does the work).
pub const CR4_PAE: u32 = 1 << 5;

global_asm!(
    r#"
    .pushsection .data.cpu, "aw"
    .balign 16
gdt:
    .quad 0                         /* null */
    .quad 0x00af9b000000ffff        /* 0x08 kernel code, 64-bit */
    .quad 0x00cf93000000ffff        /* 0x10 kernel data */
    .quad 0x00cff3000000ffff        /* 0x18 user data, DPL 3 */
    .quad 0x00affb000000ffff        /* 0x20 user code, 64-bit, DPL 3 */
    .word tss_end - tss - 1         /* 0x28 64-bit TSS, available */
    .word TSS_BASE_0_15
    .byte TSS_BASE_16_23, 0x89, 0x00, TSS_BASE_24_31
    .long 0, 0                      /* base 63:32 (the image is below 4 GiB) */
gdt_end:

    .balign 8
    .globl gdt_pointer
gdt_pointer:
    .word gdt_end - gdt - 1
    .quad gdt

    .balign 16
    .globl tss
tss:
    .long 0
    .quad cpl0_stack_top            /* RSP0: where CPL3 exceptions and interrupts land */
    .quad 0, 0, 0                   /* RSP1, RSP2, reserved */
    .quad 0, 0, 0, 0, 0, 0, 0       /* IST1-7 */
    .quad 0
    .word 0
    .word io_bitmap - tss
    /* I/O permission bitmap: a clear bit lets CPL3 use the port (IOPL is ignored at CPL3
       here). Open: i8042 0x60-0x64, COM1 0x3f8-0x3ff, debug-exit 0x501. */
io_bitmap:
    .fill 0x60 / 8, 1, 0xff
    .byte 0xe0                      /* 0x60-0x64 */
    .fill (0x3f8 - 0x68) / 8, 1, 0xff
    .byte 0x00                      /* 0x3f8-0x3ff */
    .fill (0x500 - 0x400) / 8, 1, 0xff
    .byte 0xfd                      /* 0x501 */
    .byte 0xff                      /* the bitmap's required terminator */
tss_end:
    .popsection

    /* CPL0, long mode, RSP valid. Clobbers RAX only. */
    .text
    .globl cpu_init_cpl0
cpu_init_cpl0:
    movl ${cr4}, %eax
    movq %rax, %cr4
    movl $guest_pml4, %eax
    movq %rax, %cr3
    lgdt gdt_pointer(%rip)
    pushq ${kernel_cs}              /* reload CS from the new GDT */
    leaq 1f(%rip), %rax
    pushq %rax
    lretq
1:  movl ${kernel_ds}, %eax
    movl %eax, %ds
    movl %eax, %es
    movl %eax, %ss
    xorl %eax, %eax
    movl %eax, %fs
    movl %eax, %gs
    movw ${tss_selector}, %ax
    ltr %ax
    lidt idt_pointer(%rip)
    movb $0xff, %al                 /* mask both 8259s: devices come through the IOAPIC */
    outb %al, $0x21
    outb %al, $0xa1
    ret
    "#,
    cr4 = const CR4_PAE,
    kernel_cs = const KERNEL_CS,
    kernel_ds = const KERNEL_DS,
    tss_selector = const TSS_SELECTOR,
    options(att_syntax)
);
