//! The virtio-blk device: its configuration, the features it offers, its configuration space
//! (virtio 1.2 §5.2.4) and activation, which hands the queue to a worker thread.

use std::io;
use std::sync::Arc;

use tracing::debug;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;

use super::backend::{BlockBackend, SECTOR_SIZE};
use super::handle::{BlockHandle, Shared};
use super::worker::{Worker, WorkerHandle};
use crate::device::{ActivateError, Activation, COMMON_FEATURES, VirtioDevice};
use crate::rate_limiter::{RateLimiter, RateLimiterError, RateLimiterSpec};

/// Descriptors per queue the device supports.
pub const QUEUE_SIZE: u16 = 256;
/// Data descriptors per request (`seg_max`): a chain also needs a header and a status descriptor.
pub const SEG_MAX: usize = QUEUE_SIZE as usize - 2;
/// Bytes of the GET_ID answer (`VIRTIO_BLK_ID_BYTES`).
pub const DRIVE_SERIAL_LEN: usize = 20;

pub(crate) const FEATURE_RO: u64 = 1 << VIRTIO_BLK_F_RO;
pub(crate) const FEATURE_FLUSH: u64 = 1 << VIRTIO_BLK_F_FLUSH;
pub(crate) const FEATURE_DISCARD: u64 = 1 << VIRTIO_BLK_F_DISCARD;
pub(crate) const FEATURE_WRITE_ZEROES: u64 = 1 << VIRTIO_BLK_F_WRITE_ZEROES;
const FEATURE_SEG_MAX: u64 = 1 << VIRTIO_BLK_F_SEG_MAX;
const FEATURE_BLK_SIZE: u64 = 1 << VIRTIO_BLK_F_BLK_SIZE;

/// How the guest's writes reach the disk.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CacheType {
    /// FLUSH is not offered; the host decides when data reaches the disk.
    #[default]
    Unsafe,
    /// FLUSH is offered and forwarded to the backend.
    Writeback,
}

/// Per-request limits advertised in configuration space and enforced on every request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLimits {
    /// Longest DISCARD range, in sectors.
    pub max_discard_sectors: u32,
    /// Longest WRITE_ZEROES range, in sectors.
    pub max_write_zeroes_sectors: u32,
}

impl Default for BlockLimits {
    fn default() -> Self {
        // 2 GiB per range: large enough that Linux rarely splits, small enough that one request
        // cannot occupy the worker for long.
        Self {
            max_discard_sectors: 1 << 22,
            max_write_zeroes_sectors: 1 << 22,
        }
    }
}

/// How the VMM configures one drive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockConfig {
    /// The API's `drive_id`; its first 20 bytes are the GET_ID serial.
    pub drive_id: String,
    /// Whether FLUSH is offered.
    pub cache_type: CacheType,
    /// Request limits.
    pub limits: BlockLimits,
    /// I/O throttling (Firecracker's `rate_limiter`); `None` does not limit.
    pub rate_limiter: Option<RateLimiterSpec>,
}

impl BlockConfig {
    /// A drive with default limits and no throttling.
    pub fn new(drive_id: impl Into<String>, cache_type: CacheType) -> Self {
        Self {
            drive_id: drive_id.into(),
            cache_type,
            limits: BlockLimits::default(),
            rate_limiter: None,
        }
    }
}

/// Why a block device could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// GET_ID would answer with nothing.
    #[error("the drive id is empty")]
    EmptyDriveId,
    /// A zero limit would forbid every request of that type while advertising support for it.
    #[error("{0} must be at least 1 sector")]
    ZeroLimit(&'static str),
    /// A token bucket that cannot be represented.
    #[error("rate limiter: {0}")]
    RateLimiter(#[from] RateLimiterError),
    /// The host refused an eventfd or a timerfd.
    #[error("cannot create the device's event or timer fd: {0}")]
    Host(#[source] io::Error),
}

/// The GET_ID answer: the drive id's first 20 bytes, NUL-padded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DriveSerial([u8; DRIVE_SERIAL_LEN]);

impl DriveSerial {
    fn new(drive_id: &str) -> Self {
        let mut serial = [0; DRIVE_SERIAL_LEN];
        let len = drive_id.len().min(DRIVE_SERIAL_LEN);
        serial[..len].copy_from_slice(&drive_id.as_bytes()[..len]);
        Self(serial)
    }

    pub(crate) fn as_bytes(&self) -> &[u8; DRIVE_SERIAL_LEN] {
        &self.0
    }
}

/// What the driver accepted that changes how requests are served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Negotiated {
    pub(crate) flush: bool,
    pub(crate) discard: bool,
    pub(crate) write_zeroes: bool,
}

/// The settings a worker serves requests with.
#[derive(Clone, Copy, Debug)]
pub(crate) struct ServeConfig {
    pub(crate) serial: DriveSerial,
    pub(crate) limits: BlockLimits,
    pub(crate) negotiated: Negotiated,
}

/// A virtio-blk device.
#[derive(Debug)]
pub struct BlockDevice {
    shared: Arc<Shared>,
    serial: DriveSerial,
    limits: BlockLimits,
    offered_features: u64,
    worker: Option<WorkerHandle>,
}

impl BlockDevice {
    /// A block device serving `backend`. Nothing runs until the driver activates it.
    pub fn new(backend: Arc<dyn BlockBackend>, config: BlockConfig) -> Result<Self, BlockError> {
        if config.drive_id.is_empty() {
            return Err(BlockError::EmptyDriveId);
        }
        if config.limits.max_discard_sectors == 0 {
            return Err(BlockError::ZeroLimit("max_discard_sectors"));
        }
        if config.limits.max_write_zeroes_sectors == 0 {
            return Err(BlockError::ZeroLimit("max_write_zeroes_sectors"));
        }
        let read_only = backend.is_read_only();
        let mut offered_features = COMMON_FEATURES | FEATURE_SEG_MAX | FEATURE_BLK_SIZE;
        if read_only {
            offered_features |= FEATURE_RO;
        } else {
            offered_features |= FEATURE_DISCARD | FEATURE_WRITE_ZEROES;
        }
        if config.cache_type == CacheType::Writeback {
            offered_features |= FEATURE_FLUSH;
        }
        let limiter = match config.rate_limiter {
            Some(spec) => {
                spec.validate()?;
                Some(RateLimiter::from_spec(spec).map_err(BlockError::Host)?)
            }
            None => None,
        };
        let shared = Shared::new(backend, limiter).map_err(BlockError::Host)?;
        Ok(Self {
            shared: Arc::new(shared),
            serial: DriveSerial::new(&config.drive_id),
            limits: config.limits,
            offered_features,
            worker: None,
        })
    }

    /// A handle for the API thread: backend swap, rate-limiter updates and metrics.
    pub fn handle(&self) -> BlockHandle {
        BlockHandle::new(Arc::clone(&self.shared))
    }

    /// Whether a worker is serving the queue.
    pub fn is_active(&self) -> bool {
        self.worker.is_some()
    }

    /// `struct virtio_blk_config` up to and including `write_zeroes_may_unmap` (virtio 1.2
    /// §5.2.4), little endian. Fields for features we do not offer read 0.
    fn config_space(&self) -> [u8; CONFIG_SPACE_LEN] {
        let mut space = [0u8; CONFIG_SPACE_LEN];
        let mut put = |offset: usize, bytes: &[u8]| {
            space[offset..offset + bytes.len()].copy_from_slice(bytes);
        };
        put(0, &(self.shared.capacity() / SECTOR_SIZE).to_le_bytes()); // capacity
        // 8: size_max (not offered)
        put(
            12,
            &u32::try_from(SEG_MAX).unwrap_or(u32::MAX).to_le_bytes(),
        ); // seg_max
        // 16: geometry (not offered)
        put(
            20,
            &u32::try_from(SECTOR_SIZE).unwrap_or(u32::MAX).to_le_bytes(),
        ); // blk_size
        // 24: topology (not offered); 32: writeback (CONFIG_WCE not offered)
        put(34, &1u16.to_le_bytes()); // num_queues
        put(36, &self.limits.max_discard_sectors.to_le_bytes());
        put(40, &1u32.to_le_bytes()); // max_discard_seg
        put(44, &1u32.to_le_bytes()); // discard_sector_alignment
        put(48, &self.limits.max_write_zeroes_sectors.to_le_bytes());
        put(52, &1u32.to_le_bytes()); // max_write_zeroes_seg
        // 56: write_zeroes_may_unmap = 0
        space
    }
}

const CONFIG_SPACE_LEN: usize = 60;

impl VirtioDevice for BlockDevice {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn offered_features(&self) -> u64 {
        self.offered_features
    }

    fn read_config(&self, offset: u64, data: &mut [u8]) {
        data.fill(0);
        let space = self.config_space();
        let Some(start) = usize::try_from(offset).ok().filter(|&s| s < space.len()) else {
            debug!(
                offset,
                len = data.len(),
                "read past the virtio-blk config space"
            );
            return;
        };
        let len = data.len().min(space.len() - start);
        data[..len].copy_from_slice(&space[start..start + len]);
    }

    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // The only writable field is `writeback`, which needs CONFIG_WCE, which we do not offer.
        debug!(
            offset,
            len = data.len(),
            "write to read-only virtio-blk config space ignored"
        );
    }

    fn config_generation(&self) -> u32 {
        self.shared.config_generation()
    }

    fn activate(&mut self, activation: Activation) -> Result<(), ActivateError> {
        if self.worker.is_some() {
            return Err(ActivateError::AlreadyActive);
        }
        let Activation {
            mem,
            queues,
            queue_events,
            interrupt,
            acked_features,
        } = activation;
        let got = queues.len().min(queue_events.len());
        let (Some(queue), Some(queue_event), 1) = (
            queues.into_iter().next(),
            queue_events.into_iter().next(),
            got,
        ) else {
            return Err(ActivateError::QueueCount { expected: 1, got });
        };
        let serve = ServeConfig {
            serial: self.serial,
            limits: self.limits,
            negotiated: Negotiated {
                flush: acked_features & FEATURE_FLUSH != 0,
                discard: acked_features & FEATURE_DISCARD != 0,
                write_zeroes: acked_features & FEATURE_WRITE_ZEROES != 0,
            },
        };
        self.shared.set_interrupt(Some(Arc::clone(&interrupt)));
        let worker = Worker::new(
            mem,
            queue,
            queue_event,
            interrupt,
            Arc::clone(&self.shared),
            serve,
        );
        match WorkerHandle::spawn(worker) {
            Ok(handle) => {
                self.worker = Some(handle);
                Ok(())
            }
            Err(error) => {
                self.shared.set_interrupt(None);
                Err(ActivateError::Host(error))
            }
        }
    }

    fn reset(&mut self) {
        // Dropping the handle stops and joins the worker.
        self.worker = None;
        self.shared.set_interrupt(None);
    }
}
