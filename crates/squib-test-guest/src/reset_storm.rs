//! `guest.mode=reset-storm`: a driver that keeps its device busy and resets it in the middle,
//! forever. Each round fills the first disk's queue with 64 KiB reads, notifies, and at once
//! writes 0 to Status and brings the device up again: the device must give up the requests it
//! holds within one request. The host stops or pauses squib meanwhile and times it; the guest
//! never ends by itself.

use crate::cmdline::Options;
use crate::dma::DmaBuf;
use crate::report;
use crate::serial::println;
use crate::virtio_blk::{BlockDevice, Op, segment};

const READ_BYTES: usize = 64 * 1024;

pub fn run(options: &Options) -> ! {
    let Some(device) = options.devices().next() else {
        report::abort(format_args!("reset-storm: no disk on the command line"));
    };
    let mut disk = match BlockDevice::init(device) {
        Ok(disk) => disk,
        Err(error) => report::abort(format_args!("reset-storm: init: {error}")),
    };
    // Every read lands in the same buffer: the data does not matter, the device's work does.
    let buffer = match DmaBuf::new(READ_BYTES, 4096) {
        Ok(buffer) => buffer,
        Err(error) => report::abort(format_args!("reset-storm: {error}")),
    };
    let sectors = (READ_BYTES / crate::virtio_blk::SECTOR_BYTES) as u64;
    let last_start = disk.capacity().saturating_sub(sectors);
    let mut round = 0u64;
    loop {
        for request in 0..disk.max_in_flight() as u64 {
            let sector = (request * sectors) % (last_start + 1);
            if let Err(error) = disk.submit(Op::Read, sector, &[segment(&buffer, 0, READ_BYTES)]) {
                report::abort(format_args!("reset-storm: submit: {error}"));
            }
        }
        disk.notify();
        if let Err(error) = disk.restart() {
            report::abort(format_args!("reset-storm: restart: {error}"));
        }
        round += 1;
        if round == 1 {
            println!("STORM running");
        }
    }
}
