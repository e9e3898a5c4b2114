//! The two ways in (both end at CPL3 in `user_main`), and what the boot loader handed over.
//!
//! * `linux_entry64` (load address + 0x200, the ELF entry): the 64-bit Linux boot protocol,
//!   long mode on, RSI = `boot_params`. This is where a bzImage's 64-bit entry sits.
//! * `pvh_entry32` (load address, named by the PVH ELF note): 32-bit protected mode, paging
//!   off, EBX = `hvm_start_info`. It enables long mode with the guest's page tables and joins
//!   the 64-bit path.
//!
//! CPL0 is emulated an instruction at a time on our KVM, so the 64-bit path prints the boot line
//! first, then does only what needs CPL0 (`cpu::cpu_init_cpl0`) and `iretq`s to CPL3.

use core::arch::global_asm;

use crate::cpu;

/// The boot-timer device (Firecracker's address): a 1-byte write of 123 tells squib that the
/// guest is up.
const BOOT_TIMER: u64 = 0xc000_0000;
const BOOT_TIMER_MAGIC: u8 = 123;

/// `hvm_start_info.magic`.
const PVH_MAGIC: u32 = 0x336e_c578;
/// `boot_params.hdr.cmd_line_ptr` (and the high half, `ext_cmd_line_ptr`).
const BOOT_PARAMS_CMD_LINE_PTR: u64 = 0x228;
const BOOT_PARAMS_EXT_CMD_LINE_PTR: u64 = 0x0c8;
/// `hvm_start_info.cmdline_paddr`.
const PVH_CMDLINE_PADDR: u64 = 24;
/// Sizes of `boot_params` and of `hvm_start_info` (version 1).
const BOOT_PARAMS_BYTES: u64 = 4096;
const PVH_START_INFO_BYTES: u64 = 56;
/// Longest command line read (the Linux boot protocol's limit is below this).
const CMDLINE_MAX: usize = 64 * 1024;
/// Boot structures must lie in RAM below the MMIO gap.
const LOW_RAM_END: u64 = 0xc000_0000;

global_asm!(
    r#"
    .pushsection .note.Xen, "a", @note
    .balign 4
    .long 4, 4, 18          /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
    .asciz "Xen"
    .long pvh_entry32
    .popsection

    .pushsection .text.boot, "ax"
    .code32
    .globl pvh_entry32
pvh_entry32:
    movl %ebx, %esi                 /* hvm_start_info */
    movl ${cr4}, %eax
    movl %eax, %cr4
    movl $guest_pml4, %eax
    movl %eax, %cr3
    movl $0xc0000080, %ecx          /* EFER.LME */
    rdmsr
    orl $0x100, %eax
    wrmsr
    movl %cr0, %eax                 /* PG | PE: long mode, still running 32-bit code */
    orl $0x80000001, %eax
    movl %eax, %cr0
    lgdt gdt_pointer              /* 32-bit lgdt reads the low half of the base */
    ljmp ${kernel_cs}, $pvh_entry64

    .code64
pvh_entry64:
    movl %esi, %esi                 /* the high halves are undefined after 32-bit code */
    movl ${entry_pvh}, %edi
    jmp common64

    .org 0x200, 0x90
    .globl linux_entry64
linux_entry64:
    movl ${entry_linux}, %edi       /* RSI = boot_params */
common64:
    leaq banner(%rip), %rcx
    movl $(banner_end - banner), %r8d
    movw ${com1}, %dx
1:  movb (%rcx), %al
    outb %al, %dx
    incq %rcx
    decl %r8d
    jnz 1b

    movq $cpl0_stack_top, %rsp
    call cpu_init_cpl0              /* preserves RDI, RSI */
    pushq ${user_ds}
    pushq $user_stack_top
    pushq $0x202                    /* IF: interrupts on, set here since CPL3 cannot sti */
    pushq ${user_cs}
    pushq $user_entry
    iretq
    .popsection

    .text
user_entry:
    movl ${boot_timer}, %eax        /* first thing at CPL3 */
    movb ${boot_timer_magic}, (%rax)
    movq %rdi, %r12
    movq %rsi, %r13
    movl $__bss_start, %edi         /* clear .bss: a bzImage wrapper would not */
    movl $__bss_end, %ecx
    subl %edi, %ecx
    xorl %eax, %eax
    rep stosb
    movq %r12, %rdi
    movq %r13, %rsi
    call {user_main}
    ud2

    .pushsection .rodata
banner:                             /* the first line on the console, before any set-up */
    .ascii "squib-test-guest: boot\n"
banner_end:
    .popsection

    .pushsection .stacks, "aw", @nobits
    .balign 16
    .skip 16384
    .globl cpl0_stack_top           /* TSS.RSP0: exceptions and interrupts from CPL3 */
cpl0_stack_top:
    .skip 65536
user_stack_top:
    .popsection
    "#,
    cr4 = const cpu::CR4_PAE,
    kernel_cs = const cpu::KERNEL_CS,
    user_cs = const cpu::USER_CS | 3,
    user_ds = const cpu::USER_DS | 3,
    entry_pvh = const ENTRY_PVH,
    entry_linux = const ENTRY_LINUX,
    com1 = const crate::port::COM1,
    boot_timer = const BOOT_TIMER,
    boot_timer_magic = const BOOT_TIMER_MAGIC,
    user_main = sym crate::user_main,
    options(att_syntax)
);

/// Which entry ran; passed from the entry code to `user_main` in EDI.
const ENTRY_LINUX: u32 = 0;
const ENTRY_PVH: u32 = 1;

/// What the boot loader handed over, by protocol.
#[derive(Debug, Clone, Copy)]
pub enum BootInfo {
    /// 64-bit Linux boot protocol: the `boot_params` ("zero page") address.
    Linux { boot_params: u64 },
    /// PVH: the `hvm_start_info` address.
    Pvh { start_info: u64 },
}

/// A boot structure the guest cannot use.
#[derive(Debug, Clone, Copy)]
pub enum BootError {
    UnknownEntry(u32),
    OutsideLowRam { what: &'static str, address: u64 },
    BadPvhMagic(u32),
    UnterminatedCommandLine,
    CommandLineNotUtf8,
}

impl core::fmt::Display for BootError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::UnknownEntry(entry) => write!(f, "unknown boot entry {entry}"),
            Self::OutsideLowRam { what, address } => {
                write!(f, "{what} at {address:#x} is outside low RAM")
            }
            Self::BadPvhMagic(magic) => {
                write!(f, "hvm_start_info magic is {magic:#x}, not {PVH_MAGIC:#x}")
            }
            Self::UnterminatedCommandLine => {
                write!(f, "command line has no NUL within {CMDLINE_MAX} bytes")
            }
            Self::CommandLineNotUtf8 => write!(f, "command line is not UTF-8"),
        }
    }
}

impl BootInfo {
    /// Interprets the registers the entry code passed on.
    pub fn from_entry(entry: u32, info: u64) -> Result<Self, BootError> {
        match entry {
            ENTRY_LINUX => Ok(Self::Linux {
                boot_params: low_ram("boot_params", info, BOOT_PARAMS_BYTES)?,
            }),
            ENTRY_PVH => {
                let start_info = low_ram("hvm_start_info", info, PVH_START_INFO_BYTES)?;
                let magic = read_u32(start_info);
                if magic != PVH_MAGIC {
                    return Err(BootError::BadPvhMagic(magic));
                }
                Ok(Self::Pvh { start_info })
            }
            other => Err(BootError::UnknownEntry(other)),
        }
    }

    /// Which protocol booted the guest, for the log.
    pub fn protocol(&self) -> &'static str {
        match self {
            Self::Linux { .. } => "linux64",
            Self::Pvh { .. } => "pvh",
        }
    }

    /// The kernel command line (empty when the loader gave none).
    pub fn command_line(&self) -> Result<&'static str, BootError> {
        let address = match *self {
            Self::Linux { boot_params } => {
                let low = u64::from(read_u32(boot_params + BOOT_PARAMS_CMD_LINE_PTR));
                let high = u64::from(read_u32(boot_params + BOOT_PARAMS_EXT_CMD_LINE_PTR));
                high << 32 | low
            }
            Self::Pvh { start_info } => {
                let low = u64::from(read_u32(start_info + PVH_CMDLINE_PADDR));
                let high = u64::from(read_u32(start_info + PVH_CMDLINE_PADDR + 4));
                high << 32 | low
            }
        };
        if address == 0 {
            return Ok("");
        }
        let start = low_ram("command line", address, 1)?;
        let available = usize::try_from(LOW_RAM_END - start).unwrap_or(usize::MAX);
        // SAFETY: `low_ram` checked that the range starts in the identity-mapped low RAM, and it
        // is clipped to end there; nothing writes the command line while the guest runs.
        let bytes =
            unsafe { core::slice::from_raw_parts(start as *const u8, available.min(CMDLINE_MAX)) };
        let length = bytes
            .iter()
            .position(|&byte| byte == 0)
            .ok_or(BootError::UnterminatedCommandLine)?;
        core::str::from_utf8(&bytes[..length]).map_err(|_| BootError::CommandLineNotUtf8)
    }
}

/// Checks that `bytes` bytes at `address` lie in low RAM (identity-mapped, below the MMIO gap).
fn low_ram(what: &'static str, address: u64, bytes: u64) -> Result<u64, BootError> {
    match address.checked_add(bytes) {
        Some(end) if address != 0 && end <= LOW_RAM_END => Ok(address),
        _ => Err(BootError::OutsideLowRam { what, address }),
    }
}

/// Reads a boot-structure field; the structure was checked by `low_ram` to lie in low RAM.
fn read_u32(address: u64) -> u32 {
    // SAFETY: callers pass field addresses inside a boot structure whose whole size `low_ram`
    // validated to lie in identity-mapped low RAM; unaligned reads are fine on x86.
    unsafe { core::ptr::read_unaligned(address as *const u32) }
}
