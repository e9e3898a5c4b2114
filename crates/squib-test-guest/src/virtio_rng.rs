//! A virtio-rng driver (virtio 1.2 §5.4): one queue of device-writable buffers, polled.

use core::fmt;

use crate::cmdline::MmioDevice;
use crate::dma::DmaBuf;
use crate::time::Deadline;
use crate::virtio_init::{self, FEATURE_VERSION_1, InitError};
use crate::virtio_mmio::Transport;
use crate::virtqueue::{QueueError, Segment, SplitQueue};

pub const DEVICE_ID_RNG: u32 = 4;

/// Why a read failed.
#[derive(Debug, Clone, Copy)]
pub enum ReadError {
    Queue(QueueError),
    TimedOut,
    Unexpected { expected: u16, got: u16 },
}

impl fmt::Display for ReadError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Queue(error) => error.fmt(f),
            Self::TimedOut => f.write_str("timed out waiting for random bytes"),
            Self::Unexpected { expected, got } => {
                write!(f, "completion for request {got} while waiting for {expected}")
            }
        }
    }
}

/// An initialised entropy device.
#[derive(Debug)]
pub struct RngDevice {
    pub base: u64,
    pub gsi: u32,
    transport: Transport,
    queue: SplitQueue,
}

impl RngDevice {
    pub fn init(device: &MmioDevice) -> Result<Self, InitError> {
        let (transport, features) =
            virtio_init::negotiate(device, DEVICE_ID_RNG, FEATURE_VERSION_1)?;
        let mut queue = virtio_init::setup_queue(&transport, 0, features)?;
        virtio_init::driver_ok(&transport, device.gsi)?;
        queue.disable_interrupts();
        Ok(Self {
            base: device.base,
            gsi: device.gsi,
            transport,
            queue,
        })
    }

    /// Asks for `len` random bytes into `buf` and waits for them; returns how many came.
    pub fn read(&mut self, buf: &DmaBuf, len: u32) -> Result<u32, ReadError> {
        let head = self
            .queue
            .add(&[Segment {
                addr: buf.addr(),
                len,
                device_writes: true,
            }])
            .map_err(ReadError::Queue)?;
        if self.queue.should_notify() {
            self.transport.notify(0);
        }
        let deadline = Deadline::standard();
        loop {
            if let Some(used) = self.queue.pop_used().map_err(ReadError::Queue)? {
                if used.head != head {
                    return Err(ReadError::Unexpected {
                        expected: head,
                        got: used.head,
                    });
                }
                return Ok(used.len);
            }
            if deadline.passed() {
                return Err(ReadError::TimedOut);
            }
            core::hint::spin_loop();
        }
    }
}
