//! A virtio-blk driver (virtio 1.2 §5.2) over virtio-mmio, initialised the way Linux does it.

use core::fmt;
use core::sync::atomic::{Ordering, fence};

use crate::cmdline::{Completion, MmioDevice};
use crate::dma::DmaBuf;
use crate::interrupts;
use crate::time::Deadline;
use crate::virtio_init::{self, InitError};
use crate::virtio_mmio::{INTERRUPT_USED_BUFFER, Transport, status};
use crate::virtqueue::{QueueError, Segment, SplitQueue};

pub const SECTOR_BYTES: usize = 512;
/// GET_ID answers with up to 20 bytes.
pub const ID_BYTES: usize = 20;

const DEVICE_ID_BLOCK: u32 = 2;

/// Feature bits (virtio 1.2 §5.2.3, §6).
pub mod feature {
    pub const SEG_MAX: u64 = 1 << 2;
    pub const RO: u64 = 1 << 5;
    pub const BLK_SIZE: u64 = 1 << 6;
    pub const FLUSH: u64 = 1 << 9;
    pub const EVENT_IDX: u64 = 1 << 29;
    pub const VERSION_1: u64 = 1 << 32;
}
/// What this driver accepts when offered.
const ACCEPTED: u64 = feature::VERSION_1
    | feature::RO
    | feature::FLUSH
    | feature::BLK_SIZE
    | feature::SEG_MAX
    | feature::EVENT_IDX;

// Config space offsets.
const CONFIG_CAPACITY: u64 = 0;
const CONFIG_SEG_MAX: u64 = 12;
const CONFIG_BLK_SIZE: u64 = 20;

const HEADER_BYTES: usize = 16;

/// A request type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read,
    Write,
    Flush,
    GetId,
}

impl Op {
    fn code(self) -> u32 {
        match self {
            Self::Read => 0,
            Self::Write => 1,
            Self::Flush => 4,
            Self::GetId => 8,
        }
    }

    /// Whether the device writes the data buffers (rather than reading them).
    fn device_writes(self) -> bool {
        matches!(self, Self::Read | Self::GetId)
    }
}

/// A request's status byte.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Ok,
    IoErr,
    Unsupported,
    Invalid(u8),
}

impl Status {
    fn from_byte(byte: u8) -> Self {
        match byte {
            0 => Self::Ok,
            1 => Self::IoErr,
            2 => Self::Unsupported,
            other => Self::Invalid(other),
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Ok => f.write_str("OK"),
            Self::IoErr => f.write_str("IOERR"),
            Self::Unsupported => f.write_str("UNSUPP"),
            Self::Invalid(byte) => write!(f, "invalid status byte {byte:#x}"),
        }
    }
}

/// A finished request: the head descriptor it was submitted as, and its status.
#[derive(Debug, Clone, Copy)]
pub struct Done {
    pub tag: u16,
    pub status: Status,
}

/// Why a request could not be carried out.
#[derive(Debug, Clone, Copy)]
pub enum RequestError {
    Queue(QueueError),
    TooManySegments { segments: usize, seg_max: u32 },
    TimedOut { in_flight: usize },
    NoInterrupt { gsi: u32 },
    Unexpected { expected: u16, got: u16 },
}

impl From<QueueError> for RequestError {
    fn from(error: QueueError) -> Self {
        Self::Queue(error)
    }
}

impl fmt::Display for RequestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Queue(error) => error.fmt(f),
            Self::TooManySegments { segments, seg_max } => {
                write!(
                    f,
                    "{segments} data segments exceed the device's seg_max {seg_max}"
                )
            }
            Self::TimedOut { in_flight } => {
                write!(f, "timed out with {in_flight} request(s) in flight")
            }
            Self::NoInterrupt { gsi } => write!(f, "no interrupt on GSI {gsi}"),
            Self::Unexpected { expected, got } => {
                write!(
                    f,
                    "completion for request {got} while waiting for {expected}"
                )
            }
        }
    }
}

/// An initialised virtio-blk device with queue 0 running.
#[derive(Debug)]
pub struct BlockDevice {
    pub base: u64,
    pub gsi: u32,
    pub vector: u8,
    transport: Transport,
    queue: SplitQueue,
    features: u64,
    capacity: u64,
    /// `seg_max` from config space, read once at init: a config read is three MMIO exits
    /// (generation, field, generation), far too dear for the per-request path.
    seg_max: Option<u32>,
    /// Request headers and status bytes, indexed by head descriptor.
    headers: DmaBuf,
    statuses: DmaBuf,
    in_flight: usize,
}

impl BlockDevice {
    /// Brings the device up (virtio 1.2 §3.1.1) and routes its interrupt.
    pub fn init(device: &MmioDevice) -> Result<Self, InitError> {
        let (transport, features) = virtio_init::negotiate(device, DEVICE_ID_BLOCK, ACCEPTED)?;
        let queue = virtio_init::setup_queue(&transport, 0, features)?;
        let size = queue.size();
        let headers =
            DmaBuf::new(HEADER_BYTES * usize::from(size), 16).map_err(InitError::NoMemory)?;
        let statuses = DmaBuf::new(usize::from(size), 1).map_err(InitError::NoMemory)?;
        let vector = virtio_init::driver_ok(&transport, device.gsi)?;
        let capacity = transport.config_u64(CONFIG_CAPACITY);
        let seg_max =
            (features & feature::SEG_MAX != 0).then(|| transport.config_u32(CONFIG_SEG_MAX));
        let mut device = Self {
            base: device.base,
            gsi: device.gsi,
            vector,
            transport,
            queue,
            features,
            capacity,
            seg_max,
            headers,
            statuses,
            in_flight: 0,
        };
        device.set_completion(Completion::Poll);
        Ok(device)
    }

    /// Resets the device and brings it up again with the same features on the same queue memory,
    /// as a driver does on rebinding. Every request in flight is forgotten.
    pub fn restart(&mut self) -> Result<(), InitError> {
        let transport = &self.transport;
        if !transport.reset() {
            return Err(InitError::ResetTimedOut);
        }
        transport.add_status(status::ACKNOWLEDGE);
        transport.add_status(status::DRIVER);
        transport.set_driver_features(self.features);
        transport.add_status(status::FEATURES_OK);
        if transport.status() & status::FEATURES_OK == 0 {
            return Err(InitError::FeaturesRejected {
                accepted: self.features,
            });
        }
        self.queue.clear();
        transport.select_queue(0);
        transport.enable_queue(
            self.queue.size(),
            self.queue.desc_addr(),
            self.queue.avail_addr(),
            self.queue.used_addr(),
        );
        transport.add_status(status::DRIVER_OK);
        let device_status = transport.status();
        if device_status & (status::DEVICE_NEEDS_RESET | status::FAILED) != 0 {
            return Err(InitError::DeviceFailed {
                status: device_status,
            });
        }
        self.in_flight = 0;
        Ok(())
    }

    /// The negotiated features.
    pub fn features(&self) -> u64 {
        self.features
    }

    pub fn has(&self, feature: u64) -> bool {
        self.features & feature != 0
    }

    /// Capacity in 512-byte sectors (read from config space at init).
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Re-reads the capacity from config space.
    pub fn read_capacity(&self) -> u64 {
        self.transport.config_u64(CONFIG_CAPACITY)
    }

    pub fn queue_size(&self) -> u16 {
        self.queue.size()
    }

    /// Data segments per request the device accepts (`None` if it sets no limit), as read at
    /// init.
    pub fn seg_max(&self) -> Option<u32> {
        self.seg_max
    }

    pub fn blk_size(&self) -> Option<u32> {
        self.has(feature::BLK_SIZE)
            .then(|| self.transport.config_u32(CONFIG_BLK_SIZE))
    }

    /// Requests that fit in the queue at once (header, one data segment, status each).
    pub fn max_in_flight(&self) -> usize {
        usize::from(self.queue.size()) / 3
    }

    /// Chooses how completions are noticed: interrupts on or suppressed.
    pub fn set_completion(&mut self, completion: Completion) {
        match completion {
            Completion::Poll => self.queue.disable_interrupts(),
            Completion::Interrupt => {
                self.queue.enable_interrupts();
            }
        }
    }

    /// Queues a request (not yet notified; see `notify`). `data` are its data segments.
    pub fn submit(&mut self, op: Op, sector: u64, data: &[Segment]) -> Result<u16, RequestError> {
        const MAX_SEGMENTS: usize = 16;
        if let Some(seg_max) = self.seg_max().filter(|&max| data.len() > max as usize) {
            return Err(RequestError::TooManySegments {
                segments: data.len(),
                seg_max,
            });
        }
        if data.len() > MAX_SEGMENTS {
            return Err(RequestError::TooManySegments {
                segments: data.len(),
                seg_max: MAX_SEGMENTS as u32,
            });
        }
        // Header and status live in per-descriptor slots; which slot is only known once the
        // queue picks the head, so the chain is built with placeholders and the head's slots
        // are filled before the device is notified (it cannot look before then).
        let mut chain = [Segment {
            addr: 0,
            len: 0,
            device_writes: false,
        }; MAX_SEGMENTS + 2];
        let count = data.len() + 2;
        chain[1..=data.len()].copy_from_slice(data);
        let writes = op.device_writes();
        for segment in &mut chain[1..=data.len()] {
            segment.device_writes = writes;
        }
        let head = self.peek_head();
        chain[0] = Segment {
            addr: self.headers.addr_at(HEADER_BYTES * usize::from(head)),
            len: HEADER_BYTES as u32,
            device_writes: false,
        };
        chain[count - 1] = Segment {
            addr: self.statuses.addr_at(usize::from(head)),
            len: 1,
            device_writes: true,
        };
        let header =
            &mut self.headers.as_mut_slice()[HEADER_BYTES * usize::from(head)..][..HEADER_BYTES];
        header[0..4].copy_from_slice(&op.code().to_le_bytes());
        header[4..8].fill(0);
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        // A status the device never writes must not read as OK.
        self.statuses.as_mut_slice()[usize::from(head)] = 0xff;
        let added = self.queue.add(&chain[..count])?;
        debug_assert_eq!(added, head);
        self.in_flight += 1;
        Ok(head)
    }

    /// Tells the device about queued requests, unless it said it does not need telling.
    pub fn notify(&mut self) {
        if self.queue.should_notify() {
            self.transport.notify(0);
        }
    }

    /// Collects one finished request, if there is one.
    pub fn poll(&mut self) -> Result<Option<Done>, RequestError> {
        let Some(used) = self.queue.pop_used()? else {
            return Ok(None);
        };
        self.in_flight -= 1;
        fence(Ordering::Acquire);
        let status = Status::from_byte(self.statuses.as_slice()[usize::from(used.head)]);
        Ok(Some(Done {
            tag: used.head,
            status,
        }))
    }

    /// Waits for the next finished request, by spinning on the used ring or by interrupt.
    pub fn wait(&mut self, how: Completion) -> Result<Done, RequestError> {
        let deadline = Deadline::standard();
        loop {
            if how == Completion::Interrupt {
                // Acknowledge first: a completion after this raises a fresh interrupt even
                // where the line is level-triggered, and the ones before are found below.
                self.acknowledge_interrupt();
            }
            if let Some(done) = self.poll()? {
                return Ok(done);
            }
            if deadline.passed() {
                return Err(RequestError::TimedOut {
                    in_flight: self.in_flight,
                });
            }
            if how == Completion::Interrupt && self.queue.enable_interrupts() {
                interrupts::wait(self.gsi, deadline)
                    .map_err(|error| RequestError::NoInterrupt { gsi: error.gsi })?;
            }
        }
    }

    /// Submits one request, notifies, and waits for it.
    pub fn run(
        &mut self,
        op: Op,
        sector: u64,
        data: &[Segment],
        how: Completion,
    ) -> Result<Status, RequestError> {
        let tag = self.submit(op, sector, data)?;
        self.notify();
        let done = self.wait(how)?;
        if done.tag != tag {
            return Err(RequestError::Unexpected {
                expected: tag,
                got: done.tag,
            });
        }
        Ok(done.status)
    }

    /// Reads and acknowledges InterruptStatus; returns the bits that were set.
    pub fn acknowledge_interrupt(&self) -> u32 {
        let bits = self.transport.interrupt_status();
        if bits != 0 {
            self.transport.acknowledge_interrupt(bits);
        }
        bits
    }

    /// Whether the device flagged a used buffer in InterruptStatus.
    pub fn used_buffer_flagged(bits: u32) -> bool {
        bits & INTERRUPT_USED_BUFFER != 0
    }

    /// The head descriptor the next `add` will use.
    fn peek_head(&self) -> u16 {
        self.queue.next_head()
    }
}

/// A data segment of `len` bytes at `offset` in `buf`.
pub fn segment(buf: &DmaBuf, offset: usize, len: usize) -> Segment {
    assert!(
        offset + len <= buf.len(),
        "segment {offset}+{len} outside a {}-byte buffer",
        buf.len()
    );
    Segment {
        addr: buf.addr_at(offset),
        len: len as u32,
        device_writes: false,
    }
}
