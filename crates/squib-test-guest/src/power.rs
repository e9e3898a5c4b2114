//! Ending the run: the VMM's exit status carries the verdict.

use core::hint::spin_loop;

use crate::port;

/// Powers off through an i8042 CPU reset: squib exits with status 0.
pub fn reset() -> ! {
    port::outb(port::I8042_COMMAND, 0xfe);
    halt()
}

/// Ends the run through the debug-exit port: squib and QEMU exit with `(code << 1) | 1`.
pub fn debug_exit(code: u8) -> ! {
    port::outb(port::DEBUG_EXIT, code);
    halt()
}

/// Waits for the VMM to act on an exit request (`hlt` is not allowed at CPL3).
fn halt() -> ! {
    loop {
        spin_loop();
    }
}
