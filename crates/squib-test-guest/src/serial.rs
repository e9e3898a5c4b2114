//! Output on COM1, one `out` per byte. The VMM's UART is always ready to transmit, so the line
//! status register is not polled: each poll would be another ~25 µs exit at CPL3.

use core::fmt;

use crate::port;

/// The serial console; stateless, so any code (CPL0 exception handlers included) can use it.
#[derive(Debug, Clone, Copy)]
pub struct Com1;

impl fmt::Write for Com1 {
    fn write_str(&mut self, text: &str) -> fmt::Result {
        text.bytes().for_each(|byte| port::outb(port::COM1, byte));
        Ok(())
    }
}

/// Prints formatted text followed by a newline on COM1.
macro_rules! println {
    ($($arg:tt)*) => {{
        use core::fmt::Write as _;
        // Writing to COM1 cannot fail.
        let _ = writeln!($crate::serial::Com1, $($arg)*);
    }};
}
pub(crate) use println;
