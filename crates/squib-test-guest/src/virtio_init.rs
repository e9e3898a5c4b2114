//! Bringing a virtio-mmio device up the way Linux does (virtio 1.2 §3.1.1), shared by every
//! driver: reset, ACKNOWLEDGE, DRIVER, feature negotiation, FEATURES_OK, queues, interrupt
//! routing, DRIVER_OK.

use core::fmt;

use crate::apic;
use crate::cmdline::MmioDevice;
use crate::dma::OutOfDmaMemory;
use crate::virtio_mmio::{Transport, TransportError, status};
use crate::virtqueue::{MAX_SIZE, SplitQueue};

/// VIRTIO_F_VERSION_1.
pub const FEATURE_VERSION_1: u64 = 1 << 32;
/// VIRTIO_RING_F_EVENT_IDX.
pub const FEATURE_EVENT_IDX: u64 = 1 << 29;

/// Why a device could not be brought up.
#[derive(Debug, Clone, Copy)]
pub enum InitError {
    Transport(TransportError),
    WrongDevice { expected: u32, got: u32 },
    ResetTimedOut,
    NoVersion1 { offered: u64 },
    FeaturesRejected { accepted: u64 },
    QueueMissing { index: u32 },
    QueueAlreadyReady { index: u32 },
    NoMemory(OutOfDmaMemory),
    Irq(apic::NoSuchPin),
    DeviceFailed { status: u32 },
}

impl fmt::Display for InitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Transport(error) => error.fmt(f),
            Self::WrongDevice { expected, got } => {
                write!(f, "device id {got}, not {expected}")
            }
            Self::ResetTimedOut => f.write_str("status did not read back 0 after reset"),
            Self::NoVersion1 { offered } => {
                write!(f, "VIRTIO_F_VERSION_1 not offered (features {offered:#x})")
            }
            Self::FeaturesRejected { accepted } => {
                write!(f, "FEATURES_OK did not stick after accepting {accepted:#x}")
            }
            Self::QueueMissing { index } => write!(f, "queue {index} has QueueNumMax 0"),
            Self::QueueAlreadyReady { index } => {
                write!(f, "queue {index} is ready before set-up")
            }
            Self::NoMemory(error) => error.fmt(f),
            Self::Irq(error) => error.fmt(f),
            Self::DeviceFailed { status } => {
                write!(
                    f,
                    "device status {status:#x} after DRIVER_OK (needs reset or failed)"
                )
            }
        }
    }
}

/// The device id at `device`, if its registers are a virtio-mmio version 2 block.
pub fn device_id(device: &MmioDevice) -> Result<u32, TransportError> {
    Transport::probe(device.base, device.size).map(|t| t.device_id())
}

/// Probes, resets and negotiates: accepts `accepted & offered` (VERSION_1 required), sets
/// FEATURES_OK and checks it stuck. Returns the transport and the negotiated features.
pub fn negotiate(
    device: &MmioDevice,
    expected_id: u32,
    accepted: u64,
) -> Result<(Transport, u64), InitError> {
    let transport = Transport::probe(device.base, device.size).map_err(InitError::Transport)?;
    let got = transport.device_id();
    if got != expected_id {
        return Err(InitError::WrongDevice {
            expected: expected_id,
            got,
        });
    }
    if !transport.reset() {
        return Err(InitError::ResetTimedOut);
    }
    transport.add_status(status::ACKNOWLEDGE);
    transport.add_status(status::DRIVER);
    let offered = transport.device_features();
    if offered & FEATURE_VERSION_1 == 0 {
        transport.add_status(status::FAILED);
        return Err(InitError::NoVersion1 { offered });
    }
    let features = offered & accepted;
    transport.set_driver_features(features);
    transport.add_status(status::FEATURES_OK);
    if transport.status() & status::FEATURES_OK == 0 {
        transport.add_status(status::FAILED);
        return Err(InitError::FeaturesRejected { accepted: features });
    }
    Ok((transport, features))
}

/// Sets up queue `index` at the largest power of two the device and the driver both allow.
pub fn setup_queue(
    transport: &Transport,
    index: u32,
    features: u64,
) -> Result<SplitQueue, InitError> {
    transport.select_queue(index);
    if transport.queue_ready() {
        return Err(InitError::QueueAlreadyReady { index });
    }
    let max = transport.queue_max_size();
    if max == 0 {
        return Err(InitError::QueueMissing { index });
    }
    let size = 1u16 << max.min(u32::from(MAX_SIZE)).ilog2();
    let queue =
        SplitQueue::new(size, features & FEATURE_EVENT_IDX != 0).map_err(InitError::NoMemory)?;
    transport.enable_queue(
        size,
        queue.desc_addr(),
        queue.avail_addr(),
        queue.used_addr(),
    );
    Ok(queue)
}

/// Routes the device's interrupt and sets DRIVER_OK; returns the interrupt vector.
pub fn driver_ok(transport: &Transport, gsi: u32) -> Result<u8, InitError> {
    apic::enable_local_apic();
    let vector = apic::route(gsi).map_err(InitError::Irq)?;
    transport.add_status(status::DRIVER_OK);
    let device_status = transport.status();
    if device_status & (status::DEVICE_NEEDS_RESET | status::FAILED) != 0 {
        return Err(InitError::DeviceFailed {
            status: device_status,
        });
    }
    Ok(vector)
}
