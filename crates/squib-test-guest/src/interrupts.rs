//! The IDT, its entry stubs, and the two things an interrupt can mean here.
//!
//! * A device interrupt (vector `IRQ_VECTOR_BASE + gsi`): the CPL0 stub sets the GSI's bit in
//!   `IRQ_PENDING`, writes the LAPIC EOI and returns: about ten emulated instructions. CPL3
//!   spins on the bit (`wait`), acknowledges the device and does the rest natively.
//! * Anything else (an exception, a stray vector): report it and fail the run.
//!
//! The stubs are 16 bytes apart from a 4 KiB-aligned base, so the IDT is assembled into the
//! image with offsets the linker script splits (`ISR_STUBS_LOW`, `ISR_STUBS_HIGH`).

use core::arch::{asm, global_asm};
use core::fmt;
use core::sync::atomic::{AtomicU32, Ordering};

use crate::time::Deadline;
use crate::{cpu, report};

/// Vector of GSI `n` is `IRQ_VECTOR_BASE + n`; the IOAPIC has 24 pins.
pub const IRQ_VECTOR_BASE: u8 = 0x30;
pub const IRQ_LINES: u32 = 24;
/// The LAPIC's spurious-interrupt vector: ignored, no EOI.
pub const SPURIOUS_VECTOR: u8 = 0xff;
/// LAPIC end-of-interrupt register.
const LAPIC_EOI: u32 = 0xfee0_00b0;

/// Bit `n` set: GSI `n` interrupted since CPL3 last took the bit.
static IRQ_PENDING: AtomicU32 = AtomicU32::new(0);

global_asm!(
    r#"
    .pushsection .text.isr, "ax"
    .balign 4096
    .globl isr_stubs
isr_stubs:
    .set vector, 0
    .rept 256
    .balign 16
    /* vectors where the CPU pushes an error code; the others push a 0 to match */
    .if !((vector == 8) || ((vector >= 10) && (vector <= 14)) || (vector == 17) || (vector == 21) || (vector == 29) || (vector == 30))
    pushq $0
    .endif
    pushq $vector
    jmp isr_common
    .set vector, vector + 1
    .endr
    .balign 16
    .globl isr_stubs_end
isr_stubs_end:

    /* Stack: vector, error code, then the CPU's RIP, CS, RFLAGS, RSP, SS. */
isr_common:
    cmpq ${spurious}, (%rsp)
    je 2f
    cmpq ${irq_base}, (%rsp)
    jb 1f
    cmpq ${irq_end}, (%rsp)
    jae 1f
    pushq %rax
    movq 8(%rsp), %rax
    subl ${irq_base}, %eax
    lock btsl %eax, {pending}(%rip)
    movl ${eoi}, %eax
    movl $0, (%rax)
    popq %rax
2:  addq $16, %rsp
    iretq
1:  movq %rsp, %rdi
    andq $-16, %rsp
    call {exception}
    ud2
    .popsection

    .pushsection .data.idt, "aw"
    .balign 16
idt:
    .set vector, 0
    .rept 256
    .word ISR_STUBS_LOW + 16 * vector
    .word {kernel_cs}
    .byte 0, 0x8e                   /* present, DPL 0, 64-bit interrupt gate (IF cleared) */
    .word ISR_STUBS_HIGH
    .long 0, 0
    .set vector, vector + 1
    .endr
idt_end:
    .balign 8
    .globl idt_pointer
idt_pointer:
    .word idt_end - idt - 1
    .quad idt
    .popsection
    "#,
    spurious = const SPURIOUS_VECTOR,
    irq_base = const IRQ_VECTOR_BASE,
    irq_end = const IRQ_VECTOR_BASE as u32 + IRQ_LINES,
    pending = sym IRQ_PENDING,
    eoi = const LAPIC_EOI,
    exception = sym exception,
    kernel_cs = const cpu::KERNEL_CS,
    options(att_syntax)
);

/// What the stubs and the CPU pushed.
#[repr(C)]
#[derive(Debug)]
struct ExceptionFrame {
    vector: u64,
    error_code: u64,
    rip: u64,
    cs: u64,
    rflags: u64,
    rsp: u64,
    ss: u64,
}

impl fmt::Display for ExceptionFrame {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "unexpected {} (vector {})",
            vector_name(self.vector),
            self.vector
        )?;
        write!(f, " at rip {:#x} cpl {}", self.rip, self.cs & 3)?;
        write!(
            f,
            ", error code {:#x}, rsp {:#x}",
            self.error_code, self.rsp
        )?;
        if self.vector == 14 {
            write!(f, ", cr2 {:#x}", read_cr2())?;
        }
        Ok(())
    }
}

/// Runs at CPL0 for every vector that is neither a device interrupt nor spurious.
extern "C" fn exception(frame: &ExceptionFrame) -> ! {
    report::abort(format_args!("{frame}"))
}

fn vector_name(vector: u64) -> &'static str {
    const NAMES: [&str; 22] = [
        "#DE divide error",
        "#DB debug",
        "NMI",
        "#BP breakpoint",
        "#OF overflow",
        "#BR bound range",
        "#UD invalid opcode",
        "#NM device not available",
        "#DF double fault",
        "coprocessor segment overrun",
        "#TS invalid TSS",
        "#NP segment not present",
        "#SS stack fault",
        "#GP general protection",
        "#PF page fault",
        "reserved exception",
        "#MF x87 error",
        "#AC alignment check",
        "#MC machine check",
        "#XM SIMD error",
        "#VE virtualization exception",
        "#CP control protection",
    ];
    match usize::try_from(vector) {
        Ok(index) if index < NAMES.len() => NAMES[index],
        _ if vector < 32 => "reserved exception",
        _ => "interrupt",
    }
}

fn read_cr2() -> u64 {
    let value: u64;
    // SAFETY: reading CR2 has no side effects; this runs at CPL0 (in the exception handler).
    unsafe { asm!("mov {}, cr2", out(reg) value, options(nomem, nostack, preserves_flags)) };
    value
}

/// The vector device interrupts on `gsi` arrive at.
pub fn vector_for(gsi: u32) -> Option<u8> {
    (gsi < IRQ_LINES).then(|| IRQ_VECTOR_BASE + gsi as u8)
}

/// Forgets any interrupt already seen on `gsi`.
pub fn clear(gsi: u32) {
    IRQ_PENDING.fetch_and(!(1 << gsi), Ordering::SeqCst);
}

/// Takes the pending bit of `gsi`: true if it interrupted since the last take or clear.
pub fn take(gsi: u32) -> bool {
    IRQ_PENDING.fetch_and(!(1 << gsi), Ordering::SeqCst) & (1 << gsi) != 0
}

/// The device interrupt did not come in time.
#[derive(Debug, Clone, Copy)]
pub struct NoInterrupt {
    pub gsi: u32,
}

/// Spins at CPL3 (interrupts enabled since the `iretq`) until `gsi` interrupts.
pub fn wait(gsi: u32, deadline: Deadline) -> Result<(), NoInterrupt> {
    while !take(gsi) {
        if deadline.passed() {
            return Err(NoInterrupt { gsi });
        }
        core::hint::spin_loop();
    }
    Ok(())
}
