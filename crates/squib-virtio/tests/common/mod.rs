//! Shared set-up for the integration tests: a block device on an in-memory disk, activated by
//! the simulated guest driver.
#![allow(dead_code)] // each test binary uses a different subset

use std::sync::Arc;

use squib_virtio::block::backend::BlockBackend;
use squib_virtio::block::{BlockConfig, BlockDevice, BlockHandle, CacheType};
use squib_virtio::device::{FEATURE_EVENT_IDX, FEATURE_VERSION_1};
use squib_virtio::testing::{GuestDriver, MemDisk};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_BLK_SIZE, VIRTIO_BLK_F_DISCARD, VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO,
    VIRTIO_BLK_F_SEG_MAX, VIRTIO_BLK_F_WRITE_ZEROES,
};

pub const MIB: usize = 1 << 20;
pub const DISK_SIZE: usize = 4 * MIB;
pub const GUEST_MEM: usize = 16 * MIB;
pub const DRIVE_ID: &str = "rootfs";

pub const F_RO: u64 = 1 << VIRTIO_BLK_F_RO;
pub const F_FLUSH: u64 = 1 << VIRTIO_BLK_F_FLUSH;
pub const F_DISCARD: u64 = 1 << VIRTIO_BLK_F_DISCARD;
pub const F_WRITE_ZEROES: u64 = 1 << VIRTIO_BLK_F_WRITE_ZEROES;
pub const F_SEG_MAX: u64 = 1 << VIRTIO_BLK_F_SEG_MAX;
pub const F_BLK_SIZE: u64 = 1 << VIRTIO_BLK_F_BLK_SIZE;
pub const F_EVENT_IDX: u64 = FEATURE_EVENT_IDX;
pub const F_VERSION_1: u64 = FEATURE_VERSION_1;
/// `VIRTIO_F_INDIRECT_DESC` (bit 28).
pub const F_INDIRECT: u64 = 1 << 28;

/// Every feature a read-write writeback device offers, except VIRTIO_F_INDIRECT_DESC ([`F_INDIRECT`]),
/// which tests of indirect tables negotiate themselves.
pub const ALL_RW: u64 =
    F_VERSION_1 | F_EVENT_IDX | F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_DISCARD | F_WRITE_ZEROES;

pub struct Rig {
    pub driver: GuestDriver,
    pub disk: Arc<MemDisk>,
    pub handle: BlockHandle,
}

/// A device on `disk`, activated with `features`.
pub fn rig_with(disk: Arc<MemDisk>, cache: CacheType, features: u64) -> Rig {
    let device = BlockDevice::new(disk.clone(), BlockConfig::new(DRIVE_ID, cache)).unwrap();
    let handle = device.handle();
    let driver = GuestDriver::activated(Box::new(device), GUEST_MEM, features);
    Rig {
        driver,
        disk,
        handle,
    }
}

/// A writeback device on a 4 MiB patterned disk, every feature accepted.
pub fn rig() -> Rig {
    rig_with(
        Arc::new(MemDisk::with_contents(pattern(DISK_SIZE), false)),
        CacheType::Writeback,
        ALL_RW,
    )
}

/// A device with an arbitrary backend, activated with `features`.
pub fn driver_for(backend: Arc<dyn BlockBackend>, cache: CacheType, features: u64) -> GuestDriver {
    let device = BlockDevice::new(backend, BlockConfig::new(DRIVE_ID, cache)).unwrap();
    GuestDriver::activated(Box::new(device), GUEST_MEM, features)
}

/// Bytes that differ from sector to sector and within a sector.
pub fn pattern(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i / 512 * 7 + i) as u8).collect()
}
