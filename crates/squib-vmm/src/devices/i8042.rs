//! A minimal i8042 keyboard controller: enough for Linux's driver to probe it, for the guest to
//! reset the machine (`0xfe` to port `0x64` stops squib with status 0), and for the host to
//! inject Ctrl-Alt-Del (which Linux turns into a reboot, hence a reset).
//!
//! Offsets are relative to port `0x60`: 0 is the data port, 4 the status/command port.

use std::collections::VecDeque;

use super::bus::BusDevice;
use super::irq::IrqLine;
use crate::exit::{ExitReason, ExitSender};

const DATA_OFFSET: u64 = 0;
const COMMAND_OFFSET: u64 = 4;

// Controller commands (written to the command port).
const CMD_READ_CTR: u8 = 0x20;
const CMD_WRITE_CTR: u8 = 0x60;
const CMD_SELF_TEST: u8 = 0xaa;
const CMD_KBD_TEST: u8 = 0xab;
const CMD_READ_OUTP: u8 = 0xd0;
const CMD_WRITE_OUTP: u8 = 0xd1;
const CMD_RESET_CPU: u8 = 0xfe;

// Status register bits.
const SB_OUT_DATA_AVAIL: u8 = 0x01;
const SB_SYSTEM_FLAG: u8 = 0x04;
const SB_LAST_WAS_COMMAND: u8 = 0x08;
const SB_KBD_ENABLED: u8 = 0x10;

// Control register bits.
const CB_KBD_INT: u8 = 0x01;
const CB_SYSTEM_FLAG: u8 = 0x04;

// Replies.
const SELF_TEST_OK: u8 = 0x55;
const KBD_TEST_OK: u8 = 0x00;
const KBD_ACK: u8 = 0xfa;
const KBD_RESET_OK: u8 = 0xaa;
const KBD_CMD_RESET: u8 = 0xff;

/// Scancodes (set 2, as Firecracker sends them) for Ctrl, Alt and Del; each key is pressed,
/// then all are released.
const CTRL_ALT_DEL_PRESS: [&[u8]; 3] = [&[0x14], &[0x11], &[0xe0, 0x71]];
const CTRL_ALT_DEL_RELEASE: [&[u8]; 3] = [&[0xe0, 0xf0, 0x71], &[0xf0, 0x11], &[0xf0, 0x14]];

/// Bytes the controller can hold for the guest; more are dropped (a real one holds one).
const BUFFER_CAPACITY: usize = 16;

/// The i8042's guest-visible state, as a snapshot stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct I8042State {
    status: u8,
    control: u8,
    output_port: u8,
    pending_command: Option<u8>,
    buffer: Vec<u8>,
}

/// The i8042 controller.
#[derive(Debug)]
pub struct I8042 {
    status: u8,
    control: u8,
    output_port: u8,
    /// The command whose data byte the next data-port write carries.
    pending_command: Option<u8>,
    buffer: VecDeque<u8>,
    irq: IrqLine,
    exit: ExitSender,
}

impl I8042 {
    /// A controller raising `irq` (GSI 1) and asking `exit` to stop the VM on reset.
    pub fn new(irq: IrqLine, exit: ExitSender) -> Self {
        Self {
            status: SB_SYSTEM_FLAG | SB_KBD_ENABLED,
            control: CB_KBD_INT | CB_SYSTEM_FLAG,
            output_port: 0,
            pending_command: None,
            buffer: VecDeque::with_capacity(BUFFER_CAPACITY),
            irq,
            exit,
        }
    }

    /// The keyboard interrupt line, to register as an irqfd.
    pub fn irq(&self) -> &IrqLine {
        &self.irq
    }

    /// The controller's registers and pending bytes, for a snapshot.
    pub fn save(&self) -> I8042State {
        I8042State {
            status: self.status,
            control: self.control,
            output_port: self.output_port,
            pending_command: self.pending_command,
            buffer: self.buffer.iter().copied().collect(),
        }
    }

    /// Takes the registers and pending bytes of a snapshot (at most the buffer's capacity).
    pub fn restore(&mut self, state: &I8042State) {
        self.status = state.status;
        self.control = state.control;
        self.output_port = state.output_port;
        self.pending_command = state.pending_command;
        self.buffer = state.buffer.iter().copied().take(BUFFER_CAPACITY).collect();
    }

    /// Presses and releases Ctrl-Alt-Del.
    pub fn send_ctrl_alt_del(&mut self) {
        for bytes in CTRL_ALT_DEL_PRESS.iter().chain(CTRL_ALT_DEL_RELEASE.iter()) {
            for &byte in *bytes {
                self.push(byte);
            }
        }
        self.interrupt();
    }

    fn push(&mut self, byte: u8) {
        if self.buffer.len() < BUFFER_CAPACITY {
            self.buffer.push_back(byte);
        }
        self.status |= SB_OUT_DATA_AVAIL;
    }

    fn interrupt(&self) {
        if self.control & CB_KBD_INT != 0
            && !self.buffer.is_empty()
            && let Err(err) = vm_superio::Trigger::trigger(&self.irq)
        {
            tracing::warn!("i8042 interrupt lost: {err}");
        }
    }

    fn command(&mut self, command: u8) {
        self.status |= SB_LAST_WAS_COMMAND;
        match command {
            CMD_READ_CTR => self.push(self.control),
            CMD_WRITE_CTR | CMD_WRITE_OUTP => self.pending_command = Some(command),
            CMD_READ_OUTP => self.push(self.output_port),
            CMD_SELF_TEST => self.push(SELF_TEST_OK),
            CMD_KBD_TEST => self.push(KBD_TEST_OK),
            CMD_RESET_CPU => self.exit.request(ExitReason::I8042Reset),
            _ => {}
        }
    }

    fn data(&mut self, value: u8) {
        self.status &= !SB_LAST_WAS_COMMAND;
        match self.pending_command.take() {
            Some(CMD_WRITE_CTR) => self.control = value,
            Some(CMD_WRITE_OUTP) => self.output_port = value,
            // A byte for the keyboard itself: acknowledge it (and report a reset as passed).
            _ => {
                self.push(KBD_ACK);
                if value == KBD_CMD_RESET {
                    self.push(KBD_RESET_OK);
                }
                self.interrupt();
            }
        }
    }

    fn read_data(&mut self) -> u8 {
        let byte = self.buffer.pop_front().unwrap_or(0);
        if self.buffer.is_empty() {
            self.status &= !SB_OUT_DATA_AVAIL;
        } else {
            self.interrupt();
        }
        byte
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        let value = match (offset, data.len()) {
            (DATA_OFFSET, 1) => self.read_data(),
            (COMMAND_OFFSET, 1) => self.status,
            _ => 0xff,
        };
        data.fill(value);
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        match (offset, data) {
            (DATA_OFFSET, [value]) => self.data(*value),
            (COMMAND_OFFSET, [value]) => self.command(*value),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;

    fn device() -> (I8042, mpsc::Receiver<ExitReason>) {
        let (tx, rx) = mpsc::channel();
        (I8042::new(IrqLine::new().unwrap(), ExitSender::new(tx)), rx)
    }

    fn read(dev: &mut I8042, offset: u64) -> u8 {
        let mut byte = [0u8];
        dev.read(offset, &mut byte);
        byte[0]
    }

    #[test]
    fn reset_command_stops_the_vm() {
        let (mut dev, rx) = device();
        dev.write(COMMAND_OFFSET, &[CMD_RESET_CPU]);
        assert_eq!(rx.try_recv(), Ok(ExitReason::I8042Reset));
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert!(rx.try_recv().is_err());
    }

    #[test]
    fn control_register_round_trips_and_self_test_passes() {
        let (mut dev, _rx) = device();
        dev.write(COMMAND_OFFSET, &[CMD_WRITE_CTR]);
        dev.write(DATA_OFFSET, &[0x47]);
        dev.write(COMMAND_OFFSET, &[CMD_READ_CTR]);
        assert_ne!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_DATA_AVAIL, 0);
        assert_eq!(read(&mut dev, DATA_OFFSET), 0x47);
        assert_eq!(read(&mut dev, COMMAND_OFFSET) & SB_OUT_DATA_AVAIL, 0);
        dev.write(COMMAND_OFFSET, &[CMD_SELF_TEST]);
        assert_eq!(read(&mut dev, DATA_OFFSET), SELF_TEST_OK);
    }

    #[test]
    fn ctrl_alt_del_queues_scancodes_and_interrupts() {
        let (mut dev, _rx) = device();
        dev.send_ctrl_alt_del();
        assert_eq!(dev.irq().event().read().unwrap(), 1);
        let mut codes = Vec::new();
        while read(&mut dev, COMMAND_OFFSET) & SB_OUT_DATA_AVAIL != 0 {
            codes.push(read(&mut dev, DATA_OFFSET));
        }
        assert_eq!(
            codes,
            [
                0x14, 0x11, 0xe0, 0x71, 0xe0, 0xf0, 0x71, 0xf0, 0x11, 0xf0, 0x14
            ]
        );
    }

    #[test]
    fn keyboard_reset_is_acknowledged() {
        let (mut dev, _rx) = device();
        dev.write(DATA_OFFSET, &[KBD_CMD_RESET]);
        assert_eq!(read(&mut dev, DATA_OFFSET), KBD_ACK);
        assert_eq!(read(&mut dev, DATA_OFFSET), KBD_RESET_OK);
        let mut word = [0u8; 2];
        dev.read(DATA_OFFSET, &mut word);
        assert_eq!(word, [0xff, 0xff]);
    }
}
