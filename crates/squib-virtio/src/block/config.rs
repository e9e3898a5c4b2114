//! What configures a virtio-blk device: the VMM's [`BlockConfig`], the limits it advertises, the
//! features it offers, and the settings a worker serves requests with once the driver negotiated.

use std::io;

use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};

use crate::rate_limiter::{RateLimiterError, RateLimiterSpec};

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
pub(crate) const FEATURE_SEG_MAX: u64 = 1 << VIRTIO_BLK_F_SEG_MAX;
pub(crate) const FEATURE_BLK_SIZE: u64 = 1 << VIRTIO_BLK_F_BLK_SIZE;

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
    pub(crate) fn new(drive_id: &str) -> Self {
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
