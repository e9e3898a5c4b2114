//! A virtio-net driver (virtio 1.2 §5.1) over virtio-mmio, deliberately minimal and strict: it
//! accepts VERSION_1 and MAC only — neither MRG_RXBUF nor any offload — so, as the spec allows
//! (§5.1.6.3.1), it posts receive buffers of exactly 1526 bytes (12-byte header + 1514-byte
//! frame) and checks that a full-size frame arrives in one of them with `num_buffers` = 1.

use core::fmt;

use crate::dma::{DmaBuf, OutOfDmaMemory};
use crate::time::Deadline;
use crate::virtio_mmio::{Transport, TransportError, status};
use crate::virtqueue::{MAX_SIZE, QueueError, Segment, SplitQueue};

const DEVICE_ID_NET: u32 = 1;
const FEATURE_MAC: u64 = 1 << 5;
const FEATURE_VERSION_1: u64 = 1 << 32;

/// `struct virtio_net_hdr_v1`.
pub const HEADER_BYTES: usize = 12;
/// The largest Ethernet frame without offloads (1500-byte MTU).
pub const MAX_FRAME: usize = 1514;
/// The receive buffer size the spec allows for this feature set, and no more.
pub const RX_BUFFER: usize = HEADER_BYTES + MAX_FRAME;
/// Receive buffers kept posted (at least the 64 datagrams in flight plus stray frames).
pub const RX_BUFFERS: usize = 128;
/// Transmit buffers (frames in flight).
pub const TX_BUFFERS: usize = 128;

const RX: u32 = 0;
const TX: u32 = 1;

#[derive(Debug, Clone, Copy)]
pub enum NetError {
    Transport(TransportError),
    NotNet(u32),
    ResetTimedOut,
    NoVersion1 { offered: u64 },
    FeaturesRejected,
    QueueMissing(u32),
    NoMemory(OutOfDmaMemory),
    DeviceFailed { status: u32 },
    Queue(QueueError),
    TimedOut(&'static str),
    FrameTooLong(usize),
    BadNumBuffers(u16),
    TxFull,
}

impl From<QueueError> for NetError {
    fn from(error: QueueError) -> Self {
        Self::Queue(error)
    }
}

impl fmt::Display for NetError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(error) => error.fmt(f),
            Self::NotNet(id) => write!(f, "device id {id}, not {DEVICE_ID_NET} (network)"),
            Self::ResetTimedOut => f.write_str("status did not read back 0 after reset"),
            Self::NoVersion1 { offered } => {
                write!(f, "VIRTIO_F_VERSION_1 not offered (features {offered:#x})")
            }
            Self::FeaturesRejected => f.write_str("FEATURES_OK did not stick"),
            Self::QueueMissing(index) => write!(f, "queue {index} has QueueNumMax 0"),
            Self::NoMemory(error) => error.fmt(f),
            Self::DeviceFailed { status } => write!(f, "device status {status:#x} after DRIVER_OK"),
            Self::Queue(error) => error.fmt(f),
            Self::TimedOut(what) => write!(f, "timed out waiting for {what}"),
            Self::FrameTooLong(len) => write!(f, "used length {len} exceeds the 1526-byte buffer"),
            Self::BadNumBuffers(n) => write!(f, "num_buffers is {n}, expected 1"),
            Self::TxFull => f.write_str("no free transmit buffer"),
        }
    }
}

/// A received frame: which rx buffer holds it and its length (header excluded).
#[derive(Debug, Clone, Copy)]
pub struct Received {
    slot: usize,
    pub len: usize,
    /// The used length the device reported (header included).
    pub used_len: u32,
}

#[derive(Debug)]
pub struct NetDevice {
    transport: Transport,
    rx: SplitQueue,
    tx: SplitQueue,
    rx_bufs: DmaBuf,
    tx_bufs: DmaBuf,
    /// rx buffer slot of each head descriptor in flight.
    rx_slot_of: [u16; MAX_SIZE as usize],
    tx_in_flight: usize,
    pub mac: [u8; 6],
    /// Whether a `num_buffers` other than 1 fails a receive. The checks insist (virtio 1.2
    /// §5.1.6.4: "the device MUST set num_buffers to 1" without MRG_RXBUF); the benchmark
    /// tolerates 0, which QEMU writes, so that it can compare with QEMU at all.
    pub strict_num_buffers: bool,
}

impl NetDevice {
    /// Brings the device up with both queues ready and no receive buffer posted yet.
    pub fn init(base: u64, size: u64) -> Result<Self, NetError> {
        let transport = Transport::probe(base, size).map_err(NetError::Transport)?;
        match transport.device_id() {
            DEVICE_ID_NET => {}
            other => return Err(NetError::NotNet(other)),
        }
        if !transport.reset() {
            return Err(NetError::ResetTimedOut);
        }
        transport.add_status(status::ACKNOWLEDGE);
        transport.add_status(status::DRIVER);
        let offered = transport.device_features();
        if offered & FEATURE_VERSION_1 == 0 {
            transport.add_status(status::FAILED);
            return Err(NetError::NoVersion1 { offered });
        }
        let features = offered & (FEATURE_VERSION_1 | FEATURE_MAC);
        transport.set_driver_features(features);
        transport.add_status(status::FEATURES_OK);
        if transport.status() & status::FEATURES_OK == 0 {
            transport.add_status(status::FAILED);
            return Err(NetError::FeaturesRejected);
        }
        let mut queues = [None, None];
        for (index, slot) in [RX, TX].into_iter().zip(&mut queues) {
            transport.select_queue(index);
            let max = transport.queue_max_size();
            if max == 0 {
                return Err(NetError::QueueMissing(index));
            }
            let size = 1u16 << max.min(u32::from(MAX_SIZE)).ilog2();
            let mut queue = SplitQueue::new(size, false).map_err(NetError::NoMemory)?;
            // The driver polls its used rings: interrupts would only cost exits.
            queue.disable_interrupts();
            transport.enable_queue(size, queue.desc_addr(), queue.avail_addr(), queue.used_addr());
            *slot = Some(queue);
        }
        let [Some(rx), Some(tx)] = queues else {
            return Err(NetError::QueueMissing(RX));
        };
        let mut mac = [0u8; 6];
        if features & FEATURE_MAC != 0 {
            let low = transport.config_u32(0).to_le_bytes();
            let high = transport.config_u32(4).to_le_bytes();
            mac[..4].copy_from_slice(&low);
            mac[4..].copy_from_slice(&high[..2]);
        }
        let rx_bufs = DmaBuf::new(RX_BUFFER * RX_BUFFERS, 64).map_err(NetError::NoMemory)?;
        let tx_bufs = DmaBuf::new(RX_BUFFER * TX_BUFFERS, 64).map_err(NetError::NoMemory)?;
        transport.add_status(status::DRIVER_OK);
        let device_status = transport.status();
        if device_status & (status::DEVICE_NEEDS_RESET | status::FAILED) != 0 {
            return Err(NetError::DeviceFailed {
                status: device_status,
            });
        }
        Ok(Self {
            transport,
            rx,
            tx,
            rx_bufs,
            tx_bufs,
            rx_slot_of: [0; MAX_SIZE as usize],
            tx_in_flight: 0,
            mac,
            strict_num_buffers: true,
        })
    }

    /// Posts every receive buffer and notifies the device.
    pub fn post_rx_buffers(&mut self) -> Result<(), NetError> {
        for slot in 0..RX_BUFFERS.min(usize::from(self.rx.size())) {
            self.post_rx(slot)?;
        }
        self.transport.notify(RX);
        Ok(())
    }

    fn post_rx(&mut self, slot: usize) -> Result<(), NetError> {
        let head = self.rx.add(&[Segment {
            addr: self.rx_bufs.addr_at(slot * RX_BUFFER),
            len: RX_BUFFER as u32,
            device_writes: true,
        }])?;
        self.rx_slot_of[usize::from(head)] = slot as u16;
        Ok(())
    }

    /// Queues `frame` (an Ethernet frame) behind a zero header; notifies the device.
    pub fn send(&mut self, frame: &[u8]) -> Result<(), NetError> {
        self.reap_tx()?;
        let deadline = Deadline::standard();
        while self.tx_in_flight >= TX_BUFFERS.min(usize::from(self.tx.size())) {
            if deadline.passed() {
                return Err(NetError::TxFull);
            }
            self.reap_tx()?;
        }
        let head = self.tx.next_head();
        let slot = usize::from(head) % TX_BUFFERS;
        let len = HEADER_BYTES + frame.len();
        let buf = &mut self.tx_bufs.as_mut_slice()[slot * RX_BUFFER..slot * RX_BUFFER + len];
        buf[..HEADER_BYTES].fill(0);
        buf[HEADER_BYTES..].copy_from_slice(frame);
        let addr = self.tx_bufs.addr_at(slot * RX_BUFFER);
        self.tx.add(&[Segment {
            addr,
            len: len as u32,
            device_writes: false,
        }])?;
        self.tx_in_flight += 1;
        if self.tx.should_notify() {
            self.transport.notify(TX);
        }
        Ok(())
    }

    /// Frees the transmit buffers the device is done with.
    pub fn reap_tx(&mut self) -> Result<(), NetError> {
        while self.tx.pop_used()?.is_some() {
            self.tx_in_flight -= 1;
        }
        Ok(())
    }

    /// Waits until every queued frame was sent.
    pub fn flush_tx(&mut self) -> Result<(), NetError> {
        let deadline = Deadline::standard();
        while self.tx_in_flight > 0 {
            if deadline.passed() {
                return Err(NetError::TimedOut("transmit completions"));
            }
            self.reap_tx()?;
        }
        Ok(())
    }

    /// The next received frame (polling), or `None` at `deadline`.
    pub fn receive(&mut self, deadline: Deadline) -> Result<Option<Received>, NetError> {
        loop {
            if let Some(used) = self.rx.pop_used()? {
                let slot = usize::from(self.rx_slot_of[usize::from(used.head)]);
                let len = used.len as usize;
                if len > RX_BUFFER {
                    return Err(NetError::FrameTooLong(len));
                }
                let buf = &self.rx_bufs.as_slice()[slot * RX_BUFFER..];
                let num_buffers = u16::from_le_bytes([buf[10], buf[11]]);
                if num_buffers != 1 && (self.strict_num_buffers || num_buffers > 1) {
                    return Err(NetError::BadNumBuffers(num_buffers));
                }
                return Ok(Some(Received {
                    slot,
                    len: len.saturating_sub(HEADER_BYTES),
                    used_len: used.len,
                }));
            }
            if deadline.passed() {
                return Ok(None);
            }
        }
    }

    /// A received frame's bytes.
    pub fn frame(&self, received: &Received) -> &[u8] {
        let start = received.slot * RX_BUFFER + HEADER_BYTES;
        &self.rx_bufs.as_slice()[start..start + received.len]
    }

    /// Gives a received frame's buffer back to the device.
    pub fn recycle(&mut self, received: Received) -> Result<(), NetError> {
        self.post_rx(received.slot)?;
        if self.rx.should_notify() {
            self.transport.notify(RX);
        }
        Ok(())
    }
}
