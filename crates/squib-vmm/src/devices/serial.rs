//! COM1: a 16550 UART (vm-superio) whose output goes to squib's stdout and whose input comes
//! from squib's stdin. Output passes through a bounded [`ConsoleBuffer`] drained by a thread of
//! its own, so a guest printing to a stdout nobody reads loses output (counted) instead of
//! stalling its vCPU.

use std::collections::VecDeque;
use std::io::{self, Read, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, OnceLock, PoisonError};
use std::time::Duration;

use vm_superio::Serial;
use vm_superio::serial::{NoEvents, SerialState};

use super::bus::BusDevice;
use super::irq::IrqLine;

/// Where guest output goes.
pub type SerialOutput = Box<dyn Write + Send>;

/// How long the stdin forwarder waits for the guest to drain a full receive FIFO.
const FIFO_FULL_BACKOFF: Duration = Duration::from_millis(5);

/// vm-superio's `SerialState` (which has no serde), as a snapshot stores it.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[allow(missing_docs)]
pub struct UartState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
}

/// A saved UART whose receive FIFO holds more bytes than a 16550's.
#[derive(Debug, thiserror::Error)]
#[error("saved serial state holds {0} input bytes, more than the UART's FIFO")]
pub struct UartStateError(usize);

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

    /// A UART in the state a snapshot saved (see [`SerialDevice::save`]).
    pub fn from_state(
        irq: IrqLine,
        out: SerialOutput,
        state: &UartState,
    ) -> Result<Self, UartStateError> {
        let state = SerialState {
            baud_divisor_low: state.baud_divisor_low,
            baud_divisor_high: state.baud_divisor_high,
            interrupt_enable: state.interrupt_enable,
            interrupt_identification: state.interrupt_identification,
            line_control: state.line_control,
            line_status: state.line_status,
            modem_control: state.modem_control,
            modem_status: state.modem_status,
            scratch: state.scratch,
            in_buffer: state.in_buffer.clone(),
        };
        Serial::from_state(&state, irq, NoEvents, out)
            .map(Self)
            .map_err(|_| UartStateError(state.in_buffer.len()))
    }

    /// The UART's registers and receive FIFO, for a snapshot.
    pub fn save(&self) -> UartState {
        let s = self.0.state();
        UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
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

/// Guest output bytes a full console buffer dropped since the process started.
static DROPPED_OUTPUT: AtomicU64 = AtomicU64::new(0);

/// Bytes of guest output held for a console that does not keep up.
pub const CONSOLE_BUFFER: usize = 64 << 10;

/// Guest output bytes dropped because the console did not keep up (`uart.missed_write_count`).
pub fn dropped_output_bytes() -> u64 {
    DROPPED_OUTPUT.load(Ordering::Relaxed)
}

#[derive(Debug, Default)]
struct Pending {
    bytes: VecDeque<u8>,
    /// The writer thread holds bytes it took and has not finished writing.
    writing: bool,
}

/// A bounded buffer between the UART (on a vCPU thread) and a console writer that may block (a
/// full pipe, a stopped terminal): a thread of its own does the blocking writes, and when the
/// buffer is full new output is dropped and counted rather than stalling the vCPU.
#[derive(Debug)]
pub struct ConsoleBuffer {
    pending: Mutex<Pending>,
    ready: Condvar,
    drained: Condvar,
    capacity: usize,
}

impl ConsoleBuffer {
    /// A buffer of `capacity` bytes whose thread writes to `out`.
    pub fn spawn(out: impl Write + Send + 'static, capacity: usize) -> io::Result<Arc<Self>> {
        let buffer = Arc::new(Self {
            pending: Mutex::new(Pending::default()),
            ready: Condvar::new(),
            drained: Condvar::new(),
            capacity,
        });
        let shared = Arc::clone(&buffer);
        std::thread::Builder::new()
            .name("serial-out".into())
            .stack_size(64 << 10)
            .spawn(move || {
                crate::seccomp::enter_or_exit(crate::seccomp::ThreadKind::Vmm);
                shared.write_loop(out)
            })?;
        Ok(buffer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Queues `buf`; what does not fit is dropped and counted. Never waits for the writer.
    pub fn push(&self, buf: &[u8]) {
        let mut pending = self.lock();
        let room = self.capacity.saturating_sub(pending.bytes.len());
        let taken = room.min(buf.len());
        pending.bytes.extend(&buf[..taken]);
        drop(pending);
        if taken < buf.len() {
            DROPPED_OUTPUT.fetch_add((buf.len() - taken) as u64, Ordering::Relaxed);
        }
        if taken > 0 {
            self.ready.notify_one();
        }
    }

    /// Waits up to `timeout` for everything queued to be written (before the process exits).
    pub fn drain(&self, timeout: Duration) {
        let pending = self.lock();
        let _ = self
            .drained
            .wait_timeout_while(pending, timeout, |p| !p.bytes.is_empty() || p.writing);
    }

    fn write_loop(&self, mut out: impl Write) {
        loop {
            let mut pending = self.lock();
            while pending.bytes.is_empty() {
                pending = self
                    .ready
                    .wait(pending)
                    .unwrap_or_else(PoisonError::into_inner);
            }
            let chunk: Vec<u8> = pending.bytes.drain(..).collect();
            pending.writing = true;
            drop(pending);
            // A console that fails loses its output; the guest never notices.
            let _ = out.write_all(&chunk).and_then(|()| out.flush());
            self.lock().writing = false;
            self.drained.notify_all();
        }
    }
}

/// The process's console buffer over stdout, started with the first guest output or by
/// [`start_stdout_writer`].
static STDOUT: OnceLock<Option<Arc<ConsoleBuffer>>> = OnceLock::new();

fn stdout_buffer() -> Option<&'static Arc<ConsoleBuffer>> {
    STDOUT
        .get_or_init(
            || match ConsoleBuffer::spawn(io::stdout(), CONSOLE_BUFFER) {
                Ok(buffer) => Some(buffer),
                Err(err) => {
                    tracing::warn!("no console output thread, guest output is dropped: {err}");
                    None
                }
            },
        )
        .as_ref()
}

/// Starts the stdout writer thread now rather than at the guest's first output, which would
/// otherwise wait for the thread's creation and its seccomp filter.
pub fn start_stdout_writer() {
    let _ = stdout_buffer();
}

/// Writes what the guest printed so far to stdout, waiting at most `timeout`: call it before
/// the process exits.
pub fn flush_stdout(timeout: Duration) {
    if let Some(buffer) = STDOUT.get().and_then(Option::as_ref) {
        buffer.drain(timeout);
    }
}

/// Guest output to stdout through the process's [`ConsoleBuffer`], so a stdout that is a full
/// pipe never blocks the vCPU.
#[derive(Debug)]
pub struct Stdout;

impl Write for Stdout {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match stdout_buffer() {
            Some(buffer) => buffer.push(buf),
            None => {
                DROPPED_OUTPUT.fetch_add(buf.len() as u64, Ordering::Relaxed);
            }
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
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

    /// A stdout that is a full pipe nobody reads: the guest's output must not block the vCPU.
    #[test]
    fn output_to_a_full_pipe_is_dropped_and_counted_not_blocking() {
        let (reader, writer) = io::pipe().unwrap();
        let console = ConsoleBuffer::spawn(writer, 4096).unwrap();
        let (done_tx, done_rx) = std::sync::mpsc::channel();
        let before = dropped_output_bytes();
        let vcpu = std::thread::spawn(move || {
            let out: SerialOutput = Box::new(ConsoleWriter(console));
            let mut serial = SerialDevice::new(IrqLine::new().unwrap(), out);
            // Far more than the pipe (64 KiB) and the buffer hold.
            for _ in 0..(1 << 20) {
                serial.write(0, b"x");
            }
            done_tx.send(()).unwrap();
        });
        assert!(
            done_rx.recv_timeout(Duration::from_secs(20)).is_ok(),
            "the vCPU blocked on a full stdout"
        );
        vcpu.join().unwrap();
        assert!(dropped_output_bytes() - before > (1 << 20) - 128 * 1024);
        drop(reader);
    }

    /// Owns the buffer for the test's `SerialOutput`.
    struct ConsoleWriter(Arc<ConsoleBuffer>);

    impl Write for ConsoleWriter {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.0.push(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
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
