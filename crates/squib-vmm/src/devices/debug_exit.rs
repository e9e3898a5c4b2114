//! QEMU-compatible `isa-debug-exit` at port `0x501`: writing `v` ends squib with status
//! `(v << 1) | 1`, so a test guest can report failure with a code.

use super::bus::BusDevice;
use crate::exit::{ExitReason, ExitSender};

/// The debug-exit port.
#[derive(Debug)]
pub struct DebugExit(ExitSender);

impl DebugExit {
    /// A port that asks `exit` to stop the VM.
    pub fn new(exit: ExitSender) -> Self {
        Self(exit)
    }
}

impl BusDevice for DebugExit {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0xff);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        // Like QEMU's, any width is accepted; the status is the first byte.
        if let (0, Some(&value)) = (offset, data.first()) {
            self.0.request(ExitReason::DebugExit(value));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_requests_exit_with_its_value() {
        let (tx, rx) = std::sync::mpsc::channel();
        let mut port = DebugExit::new(ExitSender::new(tx));
        port.write(0, &[3]);
        assert_eq!(rx.try_recv(), Ok(ExitReason::DebugExit(3)));
        assert_eq!(ExitReason::DebugExit(3).status(), 7);
    }
}
