//! virtio-blk requests as a guest builds them: a 16-byte header, data, a 1-byte status.

use std::iter::once;

use vm_memory::{Bytes, GuestAddress};

use super::driver::{Buf, GuestDriver};

/// The value [`BlockSlot::submit`] leaves in the status byte, so a test can tell whether the
/// device wrote it.
pub const STATUS_UNTOUCHED: u8 = 0xff;

/// Header and status memory for one in-flight request, reusable once the request completed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockSlot {
    /// Where the 16-byte header lives.
    pub header: GuestAddress,
    /// Where the status byte lives.
    pub status: GuestAddress,
}

impl BlockSlot {
    /// Allocates header and status memory.
    pub fn alloc(driver: &mut GuestDriver) -> Self {
        Self {
            header: driver.alloc(16),
            status: driver.alloc(1),
        }
    }

    /// Writes the header, resets the status byte and queues `header, data..., status`.
    /// Returns the head descriptor index (call [`GuestDriver::kick`] to publish).
    pub fn submit(
        &self,
        driver: &mut GuestDriver,
        request_type: u32,
        sector: u64,
        data: &[Buf],
    ) -> u16 {
        self.write_header(driver, request_type, sector);
        driver
            .mem()
            .write_obj(STATUS_UNTOUCHED, self.status)
            .unwrap();
        driver.add_chain(
            once(Buf::readable(self.header, 16))
                .chain(data.iter().copied())
                .chain(once(Buf::writable(self.status, 1))),
        )
    }

    /// Writes `struct virtio_blk_outhdr`.
    pub fn write_header(&self, driver: &GuestDriver, request_type: u32, sector: u64) {
        let mut header = [0u8; 16];
        header[0..4].copy_from_slice(&request_type.to_le_bytes());
        header[8..16].copy_from_slice(&sector.to_le_bytes());
        driver.mem().write_slice(&header, self.header).unwrap();
    }

    /// The status byte.
    pub fn status(&self, driver: &GuestDriver) -> u8 {
        driver.mem().read_obj(self.status).unwrap()
    }
}

/// `struct virtio_blk_discard_write_zeroes`.
pub fn range_bytes(sector: u64, num_sectors: u32, flags: u32) -> [u8; 16] {
    let mut raw = [0u8; 16];
    raw[0..8].copy_from_slice(&sector.to_le_bytes());
    raw[8..12].copy_from_slice(&num_sectors.to_le_bytes());
    raw[12..16].copy_from_slice(&flags.to_le_bytes());
    raw
}
