//! COM1: a 16550 UART (vm-superio) whose output goes to squib's stdout and whose input comes
//! from squib's stdin.

use std::io::{self, Read, Write};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use vm_superio::Serial;
use vm_superio::serial::NoEvents;

use super::bus::BusDevice;
use super::irq::IrqLine;

/// Where guest output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// How long the stdin forwarder waits for the guest to drain a full receive FIFO.
const FIFO_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// The UART on the PIO bus.
pub struct SerialDevice(Serial<IrqLine, NoEvents, SerialOutput>);

impl std::fmt::Debug for SerialDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SerialDevice").finish_non_exhaustive()
    }
}

impl SerialDevice {
    /// A UART raising `irq` and writing guest output to `out`.
    pub fn new(irq: IrqLine, out: SerialOutput) -> Self {
        Self(Serial::new(irq, out))
    }

    /// The interrupt line, to register as an irqfd.
    pub fn irq(&self) -> &IrqLine {
        self.0.interrupt_evt()
    }

    /// Queues host input for the guest; returns how many bytes fitted in the receive FIFO.
    pub fn enqueue_input(&mut self, input: &[u8]) -> usize {
        match self.0.enqueue_raw_bytes(input) {
            Ok(count) => count,
            Err(vm_superio::serial::Error::FullFifo) => 0,
            Err(err) => {
                tracing::warn!("serial input dropped: {err:?}");
                input.len()
            }
        }
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        match (u8::try_from(offset), data) {
            (Ok(offset), [byte]) => *byte = self.0.read(offset),
            (_, data) => data.fill(0xff),
        }
    }

    fn write(&mut self, offset: u64, data: &[u8]) {
        if let (Ok(offset), [byte]) = (u8::try_from(offset), data)
            && let Err(err) = self.0.write(offset, *byte)
        {
            tracing::debug!("serial write failed: {err:?}");
        }
    }
}

/// Guest output to stdout, flushed at every byte so that prompts without a newline show.
#[derive(Debug)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut out = io::stdout().lock();
        out.write_all(buf)?;
        out.flush()?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        io::stdout().flush()
    }
}

/// Forwards `input` (squib's stdin) to the UART until end of file, on its own small thread.
pub fn spawn_input_forwarder(
    serial: Arc<Mutex<SerialDevice>>,
    mut input: impl Read + Send + 'static,
) -> io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("serial-in".into())
        .stack_size(64 << 10)
        .spawn(move || {
            crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Vmm);
            let mut buf = [0u8; 64];
            loop {
                let len = match input.read(&mut buf) {
                    Ok(0) => return,
                    Ok(len) => len,
                    Err(err) if err.kind() == io::ErrorKind::Interrupted => continue,
                    Err(err) => {
                        tracing::warn!("stopped forwarding stdin to the guest: {err}");
                        return;
                    }
                };
                let mut pending = &buf[..len];
                while !pending.is_empty() {
                    let taken = serial
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .enqueue_input(pending);
                    pending = &pending[taken..];
                    if taken == 0 {
                        std::thread::sleep(FIFO_FULL_BACKOFF);
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Default)]
    struct Capture(Arc<Mutex<Vec<u8>>>);

    impl Write for Capture {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn guest_output_reaches_the_writer_and_input_the_guest() {
        let out = Capture::default();
        let mut serial = SerialDevice::new(IrqLine::new().unwrap(), Box::new(out.clone()));
        serial.write(0, b"h");
        serial.write(0, b"i");
        assert_eq!(&*out.0.lock().unwrap(), b"hi");

        assert_eq!(serial.enqueue_input(b"ok"), 2);
        let mut byte = [0u8];
        serial.read(5, &mut byte);
        assert_eq!(byte[0] & 1, 1, "LSR data-ready");
        serial.read(0, &mut byte);
        assert_eq!(byte, *b"o");
    }

    #[test]
    fn wide_or_far_accesses_are_ignored() {
        let out = Capture::default();
        let mut serial = SerialDevice::new(IrqLine::new().unwrap(), Box::new(out.clone()));
        serial.write(0, b"ab");
        serial.write(1 << 40, b"a");
        let mut word = [0u8; 2];
        serial.read(0, &mut word);
        assert_eq!(word, [0xff, 0xff]);
        assert!(out.0.lock().unwrap().is_empty());
    }

    #[test]
    fn input_forwarder_waits_for_room_in_the_fifo() {
        let serial = Arc::new(Mutex::new(SerialDevice::new(
            IrqLine::new().unwrap(),
            Box::new(io::sink()),
        )));
        let input: Vec<u8> = (0..100u8).collect();
        let thread = spawn_input_forwarder(serial.clone(), io::Cursor::new(input.clone())).unwrap();
        let mut received = Vec::new();
        while received.len() < input.len() {
            let mut byte = [0u8];
            let mut lsr = [0u8];
            serial.lock().unwrap().read(5, &mut lsr);
            if lsr[0] & 1 == 1 {
                serial.lock().unwrap().read(0, &mut byte);
                received.push(byte[0]);
            } else {
                std::thread::yield_now();
            }
        }
        thread.join().unwrap();
        assert_eq!(received, input);
    }
}
