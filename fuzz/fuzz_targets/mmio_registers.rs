//! The virtio-mmio transport as a hostile guest drives it: any sequence of reads and writes of
//! any width at any offset of the slot (registers and config space), with guest memory holding
//! fuzz bytes where the rings are, so a DRIVER_OK that gets through activates the device on
//! garbage rings. Nothing may panic; the identification registers never change; a reset always
//! brings Status back to 0.
#![no_main]
#![forbid(unsafe_code)]

use std::sync::Arc;

use libfuzzer_sys::arbitrary::{Result, Unstructured};
use libfuzzer_sys::fuzz_target;
use squib_virtio::block::{BlockConfig, BlockDevice, CacheType};
use squib_virtio::mmio::{MMIO_MAGIC, reg};
use squib_virtio::testing::{GuestDriver, MemDisk};
use vm_memory::GuestAddress;

const GUEST_MEM: usize = 64 * 1024;

fn run(u: &mut Unstructured) -> Result<()> {
    let disk = Arc::new(MemDisk::new(16 * 1024));
    let read_only = u.arbitrary()?;
    let disk = if read_only {
        Arc::new(MemDisk::with_contents(disk.contents(), true))
    } else {
        disk
    };
    let Ok(device) = BlockDevice::new(disk, BlockConfig::new("fuzz", CacheType::Writeback)) else {
        return Ok(());
    };
    let mut d = GuestDriver::new(Box::new(device), GUEST_MEM);
    // Ring memory: fuzz bytes at a few fuzz-chosen places.
    for _ in 0..u.int_in_range(0..=4)? {
        let at: u64 = u.int_in_range(0..=GUEST_MEM as u64 - 64)?;
        let bytes: [u8; 64] = u.arbitrary()?;
        d.write_bytes(GuestAddress(at), &bytes);
    }
    for _ in 0..u.int_in_range(0..=64)? {
        // Mostly real registers, sometimes anything in the slot.
        let offset: u64 = if u.ratio(7, 8)? {
            u64::from(u.int_in_range(0u8..=0x43)?) * 4
        } else {
            u.int_in_range(0..=0xfff)?
        };
        let width = [4usize, 4, 4, 1, 2, 8][usize::from(u.int_in_range(0u8..=5)?)];
        if u.arbitrary()? {
            let value: u64 = match offset {
                // Status: mostly the bits of the init sequence.
                reg::STATUS if u.ratio(3, 4)? => u64::from(u.int_in_range(0u8..=0x0f)?),
                reg::QUEUE_NUM if u.ratio(3, 4)? => 1 << u.int_in_range(0..=9)?,
                _ => u.arbitrary()?,
            };
            let bytes = value.to_le_bytes();
            d.transport().write(offset, &bytes[..width]);
        } else {
            let mut data = [0u8; 8];
            d.transport().read(offset, &mut data[..width]);
        }
        assert_eq!(d.read_reg(reg::MAGIC_VALUE), MMIO_MAGIC);
        assert_eq!(d.read_reg(reg::VERSION), 2);
        assert_eq!(d.read_reg(reg::DEVICE_ID), 2);
    }
    d.write_reg(reg::STATUS, 0);
    assert_eq!(d.read_reg(reg::STATUS), 0, "reset left status bits set");
    Ok(())
}

fuzz_target!(|data: &[u8]| {
    let mut u = Unstructured::new(data);
    let _ = run(&mut u);
});
