//! x86 port I/O. At CPL3 only the ports the TSS I/O bitmap opens work (see `cpu`).

use core::arch::asm;

/// COM1's data register (the 16550 the VMM connects to its stdout).
pub const COM1: u16 = 0x3f8;
/// The i8042 command port: writing 0xfe resets the CPU, which squib treats as power-off.
pub const I8042_COMMAND: u16 = 0x64;
/// QEMU-compatible `isa-debug-exit`: writing `v` ends the VMM with status `(v << 1) | 1`.
pub const DEBUG_EXIT: u16 = 0x501;

/// Writes one byte to an I/O port.
pub fn outb(port: u16, value: u8) {
    // SAFETY: port output touches no memory; the ports this guest writes (serial, i8042, debug
    // exit, 8259 masks) change device state only. At CPL3 a port outside the TSS bitmap raises
    // #GP, which the exception handler reports as a failure.
    unsafe {
        asm!("out dx, al", in("dx") port, in("al") value, options(nomem, nostack, preserves_flags))
    }
}
